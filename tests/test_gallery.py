"""The gallery (examples/NN_*.py): each example run in quick mode, asserting its claim.

Each example is ``main(argv) -> dict``; the tests call it with ``--quick`` and check
the numbers it returns against what the example says it shows, not only that it ran.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    """Import ``examples/<name>.py`` as a module (its sibling ``_gallery`` importable)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"gallery_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, tmp_path: Path, *extra: str) -> dict:
    return load(name).main(["--quick", "--out", str(tmp_path), *extra])


def _figure_written(results: dict) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        assert results["figure"] is None
    else:
        assert results["figure"] is not None and os.path.getsize(results["figure"]) > 1000


# 1. A single neuron -------------------------------------------------------- #

@pytest.mark.float32
def test_single_neuron_gradient_checks_and_training_separates_0_from_1(tmp_path):
    r = run("01_single_neuron", tmp_path)
    assert r["check_passed"]
    assert r["train_loss"][-1] < 0.2 * r["train_loss"][0]
    assert np.all(np.diff(r["train_loss"]) <= 0)  # gradient descent with a small step
    assert r["test_accuracy"] >= 0.98
    _figure_written(r)


@pytest.mark.float32
def test_single_neuron_hand_gradient_equals_autodiff():
    m = load("01_single_neuron")
    x_train, y_train, _, _ = m.zeros_and_ones()
    x, y = jnp.asarray(x_train[:50]), jnp.asarray(y_train[:50])
    w = 0.1 * jax.random.normal(jax.random.key(1), (64,), jnp.float32)
    b = jnp.asarray(0.3, jnp.float32)
    mine = m.my_grad(w, b, x, y)
    ref = jax.grad(m.loss, argnums=(0, 1))(w, b, x, y)
    np.testing.assert_allclose(mine[0], ref[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mine[1], ref[1], rtol=1e-5, atol=1e-7)


# 7. The matrix calculus reference ------------------------------------------ #

@pytest.mark.x64
def test_matrix_calculus_every_identity_holds_to_1e_10(tmp_path):
    r = run("07_matrix_calculus", tmp_path)
    assert len(r["identities"]) >= 15
    for row in r["identities"]:
        assert row["passed"], row
        assert row["autodiff"] <= 1e-10, row
        assert row["finite_differences"] <= 1e-8, row
    _figure_written(r)


@pytest.mark.x64
def test_matrix_calculus_a_wrong_formula_is_caught():
    import fdl

    m = load("07_matrix_calculus")
    row = next(i for i in m.identities(jax.random.key(0)) if i.name == "w * x")
    wrong = lambda w, x: (jnp.diag(w), jnp.diag(x))  # the two diagonals swapped
    report = fdl.check.jacobian(row.f, wrong, *row.args)
    assert not report.passed
    assert report.worst("autodiff") > 0.1


# 3. Optimizers are moving averages ----------------------------------------- #

@pytest.mark.float32
def test_optimizers_are_the_moving_averages_written_by_hand(tmp_path):
    r = run("03_optimizers", tmp_path)
    assert len(r["hand_vs_fdl"]) == 10
    for (problem, name), diff in r["hand_vs_fdl"].items():
        assert diff < 1e-5, (problem, name, diff)
    # the two momentum forms are one method once η' = η / (1 − β)
    assert r["momentum_forms_diff"] < 1e-5
    # across the narrow valley, momentum gets further than plain gradient descent
    assert r["final"][("quadratic", "momentum (sum)")] < 0.5 * r["final"][("quadratic", "SGD")]
    assert r["final"][("Rosenbrock", "Adam")] < r["final"][("Rosenbrock", "SGD")]
    for name, curve in r["digits"].items():
        assert curve[-1] < 0.8 * curve[0], name
    _figure_written(r)


# 6. Boltzmann machines and an RBM ------------------------------------------ #

@pytest.mark.float32
def test_rbm_rule_verified_and_training_lowers_reconstruction_error(tmp_path):
    r = run("06_rbm", tmp_path)
    assert r["check_passed"]  # (a) data term = autodiff of the free energy
    e = r["cd_error"]  # (b) CD-k approaches the exact gradient
    assert e[1] > e[3] > e[10], e
    assert e[50] < 0.25 * e[1], e
    rec = r["history"]["reconstruction"]
    assert rec[-1] < 0.8 * rec[0], rec
    assert r["filters"].shape == (64, 32)
    _figure_written(r)


# 2. Depth and activation --------------------------------------------------- #

@pytest.mark.float32
def test_depth_and_activation_a_hidden_layer_beats_the_single_layer(tmp_path):
    r = run("02_depth_and_activation", tmp_path)
    final = r["final"]
    single = final.pop("single layer tanh(Ax+b)")
    assert len(final) == 3
    for name, err in final.items():
        assert err < 0.1, (name, err)
        assert err < 0.5 * single, (name, err, single)
    for name, c in r["curves"].items():
        assert c.shape == (3, len(r["steps"]))
        assert c[:, -1].mean() < c[:, 0].mean(), name  # E(T) falls
    _figure_written(r)


# 4. Batch normalisation across learning rates ------------------------------ #

@pytest.mark.float32
def test_batch_norm_trains_at_learning_rates_where_the_plain_network_diverges(tmp_path):
    r = run("04_batch_norm", tmp_path)
    lrs = r["lrs"]
    trained = {n: np.isfinite(l) & (l < 0.5) for n, l in r["losses"].items()}
    top = {n: lrs[t].max() for n, t in trained.items()}
    assert top["with batch norm"] >= 5 * top["without"], top
    both = r["diverged"]["without"] & trained["with batch norm"]
    assert both.any()  # a rate that breaks the plain network trains the normalised one
    assert r["diverged"]["without"][-1] and not r["diverged"]["without"][0]
    _figure_written(r)


# 5. Luong attention --------------------------------------------------------- #

@pytest.mark.float32
def test_luong_attention_reverses_sequences_and_aligns_anti_diagonally(tmp_path):
    r = run("05_luong_attention", tmp_path)
    g = r["runs"]["general"]
    assert g["token_accuracy"] > 0.95, g["token_accuracy"]  # greedy decoding, unseen data
    assert g["anti_diagonal_weight"] > 0.7, g["anti_diagonal_weight"]
    assert g["attention"].shape == (r["length"], r["length"])
    np.testing.assert_allclose(g["attention"].sum(-1), 1.0, rtol=1e-5)
    _figure_written(r)


# 8. Per-example gradients --------------------------------------------------- #

@pytest.mark.float32
def test_per_example_gradients_agree_and_clipping_bounds_each_norm(tmp_path):
    r = run("08_per_example_gradients", tmp_path)
    assert r["vmap_vs_loop"] < 1e-5
    assert r["ghost_vs_vmap"] < 1e-4
    assert r["dp_vs_clipped_mean"] < 1e-5
    c = r["clip_norm"]
    assert np.all(r["clipped_norms"] <= c * (1 + 1e-5))
    unclipped = r["norms"] <= c
    np.testing.assert_allclose(r["clipped_norms"][unclipped], r["norms"][unclipped], rtol=1e-5)
    assert len(r["times"]["vmap of grad"]) == len(r["sizes"])
    _figure_written(r)


# 9. A CNN and its first-layer filters -------------------------------------- #

@pytest.mark.float32
def test_cnn_learns_digits_and_its_filters_move_from_their_initial_values(tmp_path):
    r = run("09_cnn_filters", tmp_path)
    assert r["test_accuracy"] >= 0.9, r["history"]
    losses = [h["train_loss"] for h in r["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert r["filters"].shape == (5, 5, 16)
    assert r["filter_change"] > 0.3
    _figure_written(r)


# The shared helper ---------------------------------------------------------- #

@pytest.mark.float32
def test_without_matplotlib_the_figure_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    load("01_single_neuron")  # puts examples/ on sys.path
    import _gallery

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    args = _gallery.parse("doc", ["--quick", "--out", str(tmp_path)])
    assert _gallery.save_figure(args, "x.png", lambda plt: None) is None
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "x.png").exists()


@pytest.mark.float32
def test_quick_and_full_are_exclusive():
    load("01_single_neuron")
    import _gallery

    with pytest.raises(SystemExit):
        _gallery.parse("doc", ["--quick", "--full"])
    assert _gallery.pick(_gallery.parse("doc", ["--full"]), 1, 2, 3) == 3


@pytest.mark.float32
def test_figures_go_to_runs_by_default_not_the_current_directory(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    load("01_single_neuron")
    import _gallery

    monkeypatch.chdir(tmp_path)
    args = _gallery.parse("A title.\n\nMore text.", [])
    assert args.out == "runs"

    def draw(plt):
        fig, _ = plt.subplots(figsize=(1, 1))
        return fig

    assert _gallery.save_figure(args, "x.png", draw) == os.path.join("runs", "x.png")
    assert os.listdir(tmp_path) == ["runs"] and os.listdir(tmp_path / "runs") == ["x.png"]
    assert capsys.readouterr().out == "wrote runs/x.png\n"


@pytest.mark.float32
def test_the_help_describes_the_example_in_whole_sentences(capsys):
    load("01_single_neuron")
    import _gallery

    with pytest.raises(SystemExit):
        _gallery.parse("A title: with a colon,\nwrapped over lines.\n\nDetails.", ["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "A title: with a colon, wrapped over lines. options:" in help_text
    assert "(default runs, created if missing)" in help_text
