"""Every script in ``examples/`` runs in a quick mode under a test that checks its claims.

``examples/mlp_digits.py`` is run here as a user runs it: a fresh interpreter, no
``JAX_*`` settings (float32), from the command line with ``--quick``. The gallery
(``examples/NN_*.py``) is tested in ``tests/test_gallery*.py``; the last test here
fails when a script in ``examples/`` is named by no test at all.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

import fdl
from conftest import ROOT, run_python
from fdl.cli import main

EXAMPLES = ROOT / "examples"


def _number_after(label: str, text: str) -> float:
    match = re.search(rf"^{re.escape(label)} (\S+)$", text, re.M)
    assert match, f"no line '{label} <number>' in:\n{text}"
    return float(match.group(1))


@pytest.mark.float32
def test_mlp_digits_quick_checks_gradients_trains_to_95_percent_and_restores(tmp_path):
    """The docstring's claims: the whole-model gradient check passes in float32, the
    held-out accuracy after ``--quick``'s 10 epochs is at least 95%, and the saved
    checkpoint restores a state with the same accuracy."""
    proc = run_python([str(EXAMPLES / "mlp_digits.py"), "--quick", "--out", str(tmp_path)],
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^passed: \d+ comparisons", out, re.M), out
    assert "epoch  10 " in out
    accuracy = _number_after("test accuracy", out)
    assert accuracy >= 0.95, out
    path = tmp_path / "mlp_digits.npz"
    assert path.is_file()
    assert _number_after(f"saved {path} - restored state's test accuracy", out) == accuracy
    # `fdl train` continues it: the same layer names, the settings in its metadata
    code = main(["train", "--resume", str(path), "--epochs", "11", "--quiet"])
    assert code == 0
    assert fdl.io.load_metadata(path)["epoch"] == 11
    assert main(["train", "--resume", str(path), "--epochs", "12", "--optimizer", "sgd"]) == 2


@pytest.mark.float32
def test_mlp_digits_writes_into_runs_by_default_and_its_help_is_whole_sentences(tmp_path):
    module = _load_mlp_digits()
    args = module.parse([])
    assert args.out == "runs" and args.epochs == 40
    proc = run_python([str(EXAMPLES / "mlp_digits.py"), "--help"], cwd=tmp_path)
    assert proc.returncode == 0
    description = proc.stdout.split("\n\n")[1]
    assert " ".join(description.split()) == ("The whole fdl pipeline in one file: data, model, "
                                             "gradient check, training, evaluation, checkpoint.")
    assert "(default runs, created if missing)" in " ".join(proc.stdout.split())


def _load_mlp_digits():
    spec = importlib.util.spec_from_file_location("mlp_digits", EXAMPLES / "mlp_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.float32
def test_mlp_digits_flags_change_the_model_and_the_check_still_passes(tmp_path):
    """The course's questions (add a layer, swap ReLU for tanh) run through ``main``."""
    module = _load_mlp_digits()
    r = module.main(["--hidden", "64,32", "--activation", "tanh", "--epochs", "2",
                     "--out", str(tmp_path)])
    assert r["check_passed"] and r["epochs"] == 2 and len(r["train_loss"]) == 2
    assert r["train_loss"][1] < r["train_loss"][0]
    assert r["restored_test_accuracy"] == r["test_accuracy"] > 0.5


def test_every_example_is_run_by_some_test():
    scripts = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
    assert "mlp_digits.py" in {p.name for p in scripts}
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py"))
    untested = [p.name for p in scripts
                if f'"{p.stem}"' not in tests and f'"{p.stem}.py"' not in tests]
    assert not untested, f"examples with no test (name them in a tests/test_*.py): {untested}"
