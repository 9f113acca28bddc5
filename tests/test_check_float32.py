"""fdl.check in JAX's default configuration (float32, x64 off), where users run it.

The planted-bug tests of test_check.py, in float32: a transposed ∂L/∂W, a missing
1/N, one flipped element and a small relative error must fail, with the worst
element located; the correct rules must pass, finite differences included (taken
in float32 here). Data is drawn with numpy inside the tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check
from fdl.primitive import primitive

pytestmark = pytest.mark.float32


def _normal(seed: int, *shape: int, scale: float = 1.0) -> jax.Array:
    rng = np.random.default_rng(2000 + seed)
    return jnp.asarray(scale * rng.standard_normal(shape), dtype=jnp.float32)


def matmul(x, w):
    """`Y = XW`: `∂L/∂X = G Wᵀ`, `∂L/∂W = Xᵀ G`."""
    return x @ w


def _matmul(name, perturb_dw=lambda dw: dw):
    def backward(residuals, g):
        x, w = residuals
        return g @ w.T, perturb_dw(x.T @ g)
    return primitive(matmul, backward, save=lambda x, w, y: (x, w), name=name, register=False)


RIGHT = _matmul("matmul")
TRANSPOSED_DW = _matmul("matmul_transposed_dw", lambda dw: dw.T)
SIGN_FLIP = _matmul("matmul_sign_flip", lambda dw: dw.at[1, 2].multiply(-1.0))


def test_x64_is_off_and_the_report_says_float32_throughout():
    assert not jax.config.jax_enable_x64
    report = check.vjp(RIGHT, _normal(0, 5, 3), _normal(1, 3, 4)).raise_if_failed()
    assert report.title.endswith("[float32; finite differences in float32]")
    assert all(r.dtype == "float32" and r.rtol == 1e-5 for r in report.rows)
    fd_rows = [r for r in report.rows if r.against == "finite differences"]
    assert len(fd_rows) == 2 and all(r.step > 0 and r.atol > 0 for r in fd_rows)
    assert report.worst("autodiff") < 1e-6 and report.worst("finite differences") < 1e-3
    assert "step" in str(report).splitlines()[1]


@pytest.mark.parametrize("jit", [False, True])
def test_transposed_weight_gradient_fails(jit):
    x = _normal(0, 5, 3)
    square = check.vjp(TRANSPOSED_DW, x, _normal(2, 3, 3), jit=jit)
    assert {(r.name, r.against) for r in square.failures} == {
        ("w", "autodiff"), ("w", "finite differences")}
    row = square.failures[0]
    assert row.index[0] != row.index[1]
    assert row.problem == "hint: the value is the reference transposed"
    wide = check.vjp(TRANSPOSED_DW, x, _normal(1, 3, 4), jit=jit)
    assert {r.problem for r in wide.failures} == {
        "shape (4, 3) but the reference has shape (3, 4) (transposed?)"}


def test_one_flipped_element_is_located_by_both_references():
    report = check.vjp(SIGN_FLIP, _normal(0, 5, 3), _normal(2, 3, 3))
    assert [(r.name, r.against, r.index) for r in report.failures] == [
        ("w", "autodiff", (1, 2)), ("w", "finite differences", (1, 2))]
    assert "w vs autodiff FAILED: worst element (1, 2)" in str(report)


def test_missing_one_over_n():
    def mean_square(pred, target):
        """`L = (1/n) Σ (p − t)²`: `∂L/∂p = (2/n)(p − t)`."""
        return jnp.mean((pred - target) ** 2)

    p = primitive(mean_square, lambda r, g: (2 * g * r, -2 * g * r),
                  save=lambda a, b, y: a - b, register=False)
    report = check.vjp(p, _normal(3, 4, 5), _normal(4, 4, 5))
    assert len(report.failures) == 4  # both arguments, both references
    assert all("20 × the reference" in r.problem for r in report.failures
               if r.against == "autodiff")


# A dense layer under softmax cross-entropy: the case the module docs quote.
_RNG = np.random.default_rng(0)
X = jnp.asarray(_RNG.standard_normal((16, 8)), jnp.float32)
Y = jnp.asarray(_RNG.integers(0, 5, 16))
W = jnp.asarray(_RNG.standard_normal((8, 5)) * 0.3, jnp.float32)


def _dense_loss(w, b):
    return fdl.losses.softmax_cross_entropy(fdl.ops.linear(X, w, b), Y)


def _dense_grad(w, b):
    g = (jax.nn.softmax(X @ w + b[None]) - jax.nn.one_hot(Y, 5)) / X.shape[0]
    return X.T @ g, jnp.sum(g, axis=0)


def _off_by(rel):
    def wrong(w, b):
        gw, gb = _dense_grad(w, b)
        i = jnp.unravel_index(jnp.argmax(jnp.abs(gw)), gw.shape)
        return gw.at[i].multiply(1 + rel), gb
    return wrong


def test_small_relative_error_threshold_in_float32():
    """The documented threshold: 1.5e-4 relative in ∂L/∂W's largest element fails at
    that element, 1e-4 passes, and so does the correct gradient."""
    w, b = W, jnp.zeros(5, jnp.float32)
    check.grad(_dense_loss, _dense_grad, w, b).raise_if_failed()
    worst = tuple(int(i) for i in np.unravel_index(
        np.argmax(np.abs(np.asarray(_dense_grad(w, b)[0]))), (8, 5)))
    assert check.grad(_dense_loss, _off_by(1e-4), w, b).passed
    failed = check.grad(_dense_loss, _off_by(1.5e-4), w, b).failures
    assert [(r.name, r.against, r.index) for r in failed] == [("w", "autodiff", worst)]
    assert failed[0].problem == ""  # one wrong element is not "a constant factor"
    coarse = check.grad(_dense_loss, _off_by(1e-3), w, b).failures
    assert [(r.against, r.index) for r in coarse] == [
        ("autodiff", worst), ("finite differences", worst)]


def test_jacobian_in_float32():
    m = _normal(8, 4, 4)
    f = lambda x: jnp.tanh(m @ x)  # noqa: E731
    jac = lambda x: (1 - jnp.tanh(m @ x) ** 2)[:, None] * m  # noqa: E731
    x = _normal(9, 4)
    check.jacobian(f, jac, x).raise_if_failed()
    bad = check.jacobian(f, lambda x: jac(x).at[2, 1].add(1e-2), x)
    assert [r.index for r in bad.failures] == [(2, 1), (2, 1)]


def test_half_precision_arguments_are_differenced_in_float32():
    x = _normal(0, 5, 3).astype(jnp.bfloat16)
    w = _normal(1, 3, 4).astype(jnp.bfloat16)
    report = check.vjp(RIGHT, x, w).raise_if_failed()
    assert report.title.endswith("[bfloat16; finite differences in float32]")
    assert {r.rtol for r in report.rows} == {2e-2}


def test_large_leaf_along_directions_in_float32():
    x, w = _normal(10, 20, 16), _normal(11, 16, 17)
    report = check.vjp(RIGHT, x, w, directions=3).raise_if_failed()
    rows = [r for r in report.rows if r.against == "finite differences"]
    assert [r.name for r in rows] == ["x (gradient and 2 random directions)",
                                      "w (gradient and 2 random directions)"]
    assert all(r.shape == (3,) for r in rows)


# --------------------------------------------------------------------------- #
# The CLI's default model: MLP 64-512-10, relu, dropout 0.3
# --------------------------------------------------------------------------- #


def _default_model_check(key_seed=0):
    from fdl import layers, losses, optim
    from fdl.train import Trainer

    model = layers.mlp([512], 10, activation="relu", dropout=0.3)
    trainer = Trainer(model, optim.adam(1e-3), loss=losses.softmax_cross_entropy)
    ts = trainer.init(jax.random.key(key_seed), (64,))
    x = _normal(12, 32, 64)
    y = jnp.asarray(np.random.default_rng(13).integers(0, 10, 32))
    key = jax.random.key(5)  # dropout on, with a fixed mask
    return check.model(lambda p: trainer.loss_fn(p, ts.model_state, x, y, key=key,
                                                 train=True)[0], ts.params)


def test_default_cli_model_passes_in_float32():
    report = _default_model_check().raise_if_failed()
    assert report.title.endswith("[float32; finite differences in float32]")
    assert len(report.rows) == 8  # two dense layers' w and b, two references each
    assert report.worst("finite differences") < 1e-2


def test_default_cli_model_with_a_wrong_rule_fails_at_the_planted_element(monkeypatch):
    linear = fdl.ops.linear

    def backward(residuals, g):
        x, w = residuals
        dw = x.T @ g
        return g @ w.T, dw.at[3, 7].multiply(-1.0), jnp.sum(g, axis=0)

    wrong = primitive(linear.forward, backward, save=lambda x, w, b, y: (x, w),
                      register=False)
    monkeypatch.setattr(fdl.ops, "linear", wrong)
    report = _default_model_check()
    assert not report.passed
    names = {r.name for r in report.failures if r.against == "autodiff"}
    assert names <= {"params['dense_1']['w']", "params['dense_4']['w']"} and names
    for row in report.failures:
        if row.against == "autodiff":
            assert row.index == (3, 7)
            assert row.value == pytest.approx(-row.reference, rel=1e-5)
