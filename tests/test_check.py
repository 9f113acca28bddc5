"""fdl.check must catch wrong derivations and say precisely where.

Every test here feeds the checker a deliberately wrong rule, gradient or Jacobian
(built with ``primitive(..., register=False)`` so the registry stays clean) and
asserts on the report's contents: which row failed, at which index, with which
values, and that the readable table says so. The correct versions must pass, and
a perturbation at roundoff level (1e-13 relative) must pass too, so the tolerance
is tight but not absurd.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check
from fdl.primitive import primitive

pytestmark = pytest.mark.x64  # float64 checks; the float32 ones are in test_check_float32.py


def _normal(seed: int, *shape: int) -> np.ndarray:
    """Test data as float64 numpy arrays: no XLA compilation per shape, and float64
    whatever the precision at import (the checks take them as float64 under x64)."""
    return np.random.default_rng(1000 + seed).standard_normal(shape)


# --------------------------------------------------------------------------- #
# Deliberately wrong primitives: Y = XW with a hand-written backward
# --------------------------------------------------------------------------- #


def matmul(x, w):
    """``Y = XW``: ``∂L/∂X = G Wᵀ``, ``∂L/∂W = Xᵀ G``."""
    return x @ w


def _save_xw(x, w, y):
    return x, w


def _matmul_rule(perturb_dw=lambda dw: dw, perturb_dx=lambda dx: dx):
    def backward(residuals, g):
        x, w = residuals
        return perturb_dx(g @ w.T), perturb_dw(x.T @ g)
    return backward


def _matmul(name, **perturb):
    return primitive(matmul, _matmul_rule(**perturb), save=_save_xw, name=name, register=False)


RIGHT = _matmul("matmul")
TRANSPOSED_DW = _matmul("matmul_transposed_dw", perturb_dw=lambda dw: dw.T)
SIGN_FLIP = _matmul("matmul_sign_flip", perturb_dw=lambda dw: dw.at[1, 2].multiply(-1.0))
REL_1E6 = _matmul("matmul_rel_1e-6", perturb_dw=lambda dw: dw.at[2, 0].multiply(1 + 1e-6))
REL_1E13 = _matmul("matmul_rel_1e-13", perturb_dw=lambda dw: dw.at[2, 0].multiply(1 + 1e-13))
WRONG_DTYPE = _matmul("matmul_float32_dw", perturb_dw=lambda dw: dw.astype(jnp.float32))

X = _normal(0, 5, 3)
W_SQUARE = _normal(1, 3, 3)
W_WIDE = _normal(2, 3, 4)


def test_correct_rule_passes_with_tight_errors():
    report = check.vjp(RIGHT, X, W_WIDE).raise_if_failed()
    assert [(r.name, r.against) for r in report.rows] == [
        ("x", "autodiff"), ("x", "finite differences"),
        ("w", "autodiff"), ("w", "finite differences")]
    assert report.worst("autodiff") <= 1e-14
    assert report.worst("finite differences") <= 1e-9
    assert all(r.dtype == "float64" and r.rtol in (1e-10, 1e-8) for r in report.rows)
    assert bool(report) and report.failures == []
    assert "passed: 4 comparisons" in str(report)


@pytest.mark.parametrize("jit", [False, True])
def test_transposed_square_weight_gradient_fails_at_w_only(jit):
    report = check.vjp(TRANSPOSED_DW, X, W_SQUARE, jit=jit)
    assert not report.passed
    assert {(r.name, r.against) for r in report.failures} == {
        ("w", "autodiff"), ("w", "finite differences")}
    row = report.failures[0]
    assert (row.name, row.against) == ("w", "autodiff")
    i, j = row.index
    assert i != j  # the diagonal of a transpose is right
    assert row.problem == "hint: the value is the reference transposed"
    text = str(report)
    assert "FAIL" in text and "w vs autodiff FAILED" in text and f"({i}, {j})" in text


@pytest.mark.parametrize("jit", [False, True])
def test_transposed_rectangular_weight_gradient_reports_the_shapes(jit):
    """JAX itself refuses a cotangent of the wrong shape; the check reports it as a
    failing row naming both shapes, instead of raising an XLA/JAX error."""
    report = check.vjp(TRANSPOSED_DW, X, W_WIDE, jit=jit)
    assert not report.passed
    failed = {(r.name, r.against): r for r in report.failures}
    assert set(failed) == {("w", "autodiff"), ("w", "finite differences")}
    row = failed["w", "autodiff"]
    assert row.shape == (4, 3) and row.index is None
    assert row.problem == "shape (4, 3) but the reference has shape (3, 4) (transposed?)"
    assert [r.passed for r in report.rows if r.name == "x"] == [True, True]
    assert "shape (4, 3) but the reference has shape (3, 4) (transposed?)" in str(report)


def test_a_backward_that_crashes_is_not_swallowed():
    def broken(residuals, g):
        raise RuntimeError("the rule itself is broken")

    p = primitive(matmul, broken, save=_save_xw, register=False)
    with pytest.raises(RuntimeError, match="the rule itself is broken"):
        check.vjp(p, X, W_WIDE)


@pytest.mark.parametrize("jit", [False, True])
def test_sign_error_in_one_element_is_pointed_at(jit):
    report = check.vjp(SIGN_FLIP, X, W_SQUARE, jit=jit)
    assert not report.passed
    row = report.failures[0]
    assert (row.name, row.against, row.index) == ("w", "autodiff", (1, 2))
    assert row.value == pytest.approx(-row.reference, rel=1e-12)
    fd_row = report.failures[1]
    assert (fd_row.name, fd_row.against, fd_row.index) == ("w", "finite differences", (1, 2))
    assert len(report.failures) == 2
    text = str(report)
    assert "w vs autodiff FAILED: worst element (1, 2)" in text
    assert text.count("FAIL") >= 3  # two table rows and the summary line


def test_one_element_off_by_1e6_relative_fails_in_float64_at_that_element():
    report = check.vjp(REL_1E6, X, W_SQUARE)
    assert not report.passed
    row = report.failures[0]
    assert (row.name, row.against, row.index) == ("w", "autodiff", (2, 0))
    assert 1e-8 < row.max_rel <= 1e-6  # leaf-wise: the error over the leaf's largest value
    assert (row.value - row.reference) / row.reference == pytest.approx(1e-6, rel=1e-4)
    fd = [r for r in report.failures if r.against == "finite differences"]
    assert [(r.name, r.index) for r in fd] == [("w", (2, 0))]
    with pytest.raises(check.CheckFailed, match=r"w vs autodiff FAILED: worst element \(2, 0\)"):
        report.raise_if_failed()


def test_one_element_off_by_1e13_relative_passes():
    """Roundoff-level differences must pass: the tolerance is tight, not absurd."""
    report = check.vjp(REL_1E13, X, W_SQUARE).raise_if_failed()
    assert report.worst("autodiff") < 1e-12


def test_missing_one_over_n_in_a_mean_loss():
    def mean_square(pred, target):
        """``L = (1/n) Σ (p − t)²``: ``∂L/∂p = (2/n)(p − t)``."""
        return jnp.mean((pred - target) ** 2)

    def forgot_n(residuals, g):
        r = residuals
        return 2 * g * r, -2 * g * r  # should be divided by n = r.size

    p = primitive(mean_square, forgot_n, save=lambda a, b, y: a - b, register=False)
    pred, target = _normal(3, 4, 5), _normal(4, 4, 5)
    report = check.vjp(p, pred, target)
    assert {r.name for r in report.failures} == {"pred", "target"}
    assert all(not r.passed for r in report.rows)
    for row in report.failures:
        assert row.value / row.reference == pytest.approx(20, rel=1e-9)  # n = 20
        assert "20 × the reference" in row.problem
    assert "hint: the value is 20 × the reference" in str(report)


def test_float32_cotangent_for_float64_argument_fails_on_dtype():
    """custom_vjp lets a float32 cotangent through for a float64 argument; the check
    must not then judge it at float32 accuracy."""
    report = check.vjp(WRONG_DTYPE, X, W_SQUARE)
    row = report.failures[0]
    assert (row.name, row.against, row.dtype) == ("w", "autodiff", "float32")
    assert row.problem == "dtype float32 but the argument is float64"
    assert row.rtol == 1e-10  # the argument's tolerance, not float32's


def test_float32_check_uses_float32_tolerances_and_catches_1e3_errors():
    x, w = X.astype(jnp.float32), W_SQUARE.astype(jnp.float32)
    report = check.vjp(RIGHT, x, w).raise_if_failed()
    assert all(r.dtype == "float32" for r in report.rows)
    assert {r.rtol for r in report.rows} == {1e-5}
    assert "[float32; finite differences in float64]" in report.title  # x64 is on here
    bad = _matmul("matmul_rel_1e-3", perturb_dw=lambda dw: dw.at[0, 1].multiply(1 + 1e-3))
    failed = check.vjp(bad, x, w).failures
    assert [(r.name, r.index) for r in failed] == [("w", (0, 1)), ("w", (0, 1))]


def test_composite_function_manual_vs_autodiff_mode():
    def two_layers(x, w1, w2):
        return fdl.ops.tanh(SIGN_FLIP(fdl.ops.tanh(RIGHT(x, w1)), w2))

    report = check.vjp(two_layers, X, W_SQUARE, _normal(5, 3, 3))
    assert "manual vs autodiff mode" in report.title
    failed = {(r.name, r.against) for r in report.failures}
    assert ("w2", "autodiff") in failed
    assert all(r.passed for r in report.rows if r.name in ("x", "w1"))
    assert report.failures[0].index == (1, 2)

    def fine(x, w1):
        return fdl.ops.tanh(fdl.ops.linear(x, w1, jnp.zeros(3)))

    check.vjp(fine, X, W_SQUARE, jit=True).raise_if_failed()


def test_large_leaves_are_checked_along_random_directions():
    x, w = _normal(6, 20, 16), _normal(7, 16, 17)  # 320 and 272 elements > 256
    report = check.vjp(RIGHT, x, w, directions=3, jit=True).raise_if_failed()
    assert [r.name for r in report.rows if r.against == "finite differences"] == [
        "x (gradient and 2 random directions)", "w (gradient and 2 random directions)"]
    assert report.rows[1].shape == (3,)
    bad = check.vjp(SIGN_FLIP, x, w, directions=3, jit=True)
    assert {r.name for r in bad.failures} == {"w", "w (gradient and 2 random directions)"}


# --------------------------------------------------------------------------- #
# check.grad: a user's gradient
# --------------------------------------------------------------------------- #

A = _normal(8, 6, 4)


def loss(w):
    return jnp.sum(jnp.tanh(A @ w) ** 2)


def right_grad(w):
    t = jnp.tanh(A @ w)
    return A.T @ (2 * t * (1 - t * t))


def test_grad_correct_passes_and_missing_chain_factor_fails():
    w = _normal(9, 4, 3)
    report = check.grad(loss, right_grad, w).raise_if_failed()
    assert [r.name for r in report.rows] == ["w", "w"]
    assert "right_grad vs autodiff of loss" in report.title

    def forgot_tanh_derivative(w):
        return A.T @ (2 * jnp.tanh(A @ w))

    bad = check.grad(loss, forgot_tanh_derivative, w)
    assert [(r.name, r.against) for r in bad.failures] == [
        ("w", "autodiff"), ("w", "finite differences")]
    assert "forgot_tanh_derivative" in str(bad)


def test_grad_sign_error_in_one_element():
    w = _normal(10, 4, 3)
    report = check.grad(loss, lambda w: right_grad(w).at[3, 1].multiply(-1.0), w, jit=True)
    assert [(r.name, r.index) for r in report.failures] == [("w", (3, 1)), ("w", (3, 1))]


def test_grad_with_dict_params_and_several_arguments():
    params = {"w": _normal(11, 4, 3), "b": _normal(12, 3)}
    x = _normal(13, 5, 4)

    def f(params, x):
        return jnp.sum(jnp.sin(x @ params["w"] + params["b"][None]))

    def my_grad(params, x):
        c = jnp.cos(x @ params["w"] + params["b"][None])
        return {"w": x.T @ c, "b": jnp.sum(c, axis=0)}, c @ params["w"].T

    report = check.grad(f, my_grad, params, x).raise_if_failed()
    assert [r.name for r in report.rows if r.against == "autodiff"] == [
        "params['b']", "params['w']", "x"]

    def wrong_bias(params, x):
        g, gx = my_grad(params, x)
        return {"w": g["w"], "b": 2 * g["b"]}, gx

    bad = check.grad(f, wrong_bias, params, x)
    assert {r.name for r in bad.failures} == {"params['b']"}
    assert "params['b']" in str(bad) and "FAIL" in str(bad)


def test_grad_rejects_wrong_structure_and_nonscalar_f():
    params = {"w": _normal(11, 4, 3)}
    with pytest.raises(TypeError, match="result for argument 'params' has structure"):
        check.grad(lambda params: jnp.sum(params["w"]), lambda params: params["w"], params)
    with pytest.raises(TypeError, match=r"one entry per argument \(2\), got Array"):
        check.grad(lambda a, b: jnp.sum(a * b), lambda a, b: jnp.asarray(a), A, A)
    with pytest.raises(ValueError, match=r"f must return a scalar, got \(6, 4\)"):
        check.grad(lambda a: a * 2, lambda a: a, A)


def test_grad_wrong_shape_is_reported():
    w = _normal(9, 4, 3)
    report = check.grad(loss, lambda w: right_grad(w).T, w)
    assert [r.problem for r in report.failures] == [
        "shape (3, 4) but the reference has shape (4, 3) (transposed?)"] * 2


def test_grad_of_python_float_argument():
    report = check.grad(lambda s: jnp.sin(s) * 3.0, lambda s: 3.0 * jnp.cos(s), 0.7)
    assert report.passed and [r.name for r in report.rows] == ["s", "s"]


def test_grad_zero_gradient_with_roundoff_passes():
    """Σ softmax(x) = 1 for all x: the true gradient is 0; autodiff's is roundoff."""
    x = _normal(14, 7)
    report = check.grad(lambda x: jnp.sum(jax.nn.softmax(x)), jnp.zeros_like, x)
    report.raise_if_failed()


# --------------------------------------------------------------------------- #
# check.jacobian
# --------------------------------------------------------------------------- #

M = _normal(15, 4, 4)


def tanh_map(x):
    return jnp.tanh(M @ x)


def tanh_map_jacobian(x):
    return (1 - jnp.tanh(M @ x) ** 2)[:, None] * M


def test_jacobian_of_a_vector_function():
    x = _normal(16, 4)
    report = check.jacobian(tanh_map, tanh_map_jacobian, x).raise_if_failed()
    assert [(r.name, r.against, r.shape) for r in report.rows] == [
        ("x", "autodiff", (4, 4)), ("x", "finite differences", (4, 4))]


def test_jacobian_transposed_and_one_wrong_element():
    x = _normal(16, 4)
    bad = check.jacobian(tanh_map, lambda x: tanh_map_jacobian(x).T, x)
    assert [r.name for r in bad.failures] == ["x", "x"]
    assert "transposed" in bad.failures[0].problem
    one = check.jacobian(tanh_map, lambda x: tanh_map_jacobian(x).at[2, 1].add(1e-5), x)
    assert [r.index for r in one.failures] == [(2, 1), (2, 1)]


def test_jacobian_several_arguments_and_integer_argument():
    def f(x, w, n):
        return jnp.sin(x @ w) * n

    def jac(x, w, n):  # y_ij = n sin(Σ_k x_ik w_kj), c = n cos(x w)
        c = jnp.cos(x @ w) * n
        jx = jnp.einsum("ij,ia,bj->ijab", c, jnp.eye(2), w)  # ∂y_ij/∂x_ab = c_ij δ_ia w_bj
        jw = jnp.einsum("ij,ia,jb->ijab", c, x, jnp.eye(3))  # ∂y_ij/∂w_ab = c_ij x_ia δ_jb
        return jx, jw, None

    x, w = _normal(17, 2, 4), _normal(18, 4, 3)
    report = check.jacobian(f, jac, x, w, 3, jit=True)
    assert [r.name for r in report.rows] == ["x", "x", "w", "w"]
    assert report.rows[0].shape == (2, 3, 2, 4)
    report.raise_if_failed()


def test_jacobian_large_argument_uses_directions():
    x = _normal(19, 300)
    f = lambda x: jnp.sin(x[:5]) * jnp.sum(x ** 2)

    def jac(x):
        s = jnp.sum(x ** 2)
        j = jnp.zeros((5, 300)).at[jnp.arange(5), jnp.arange(5)].set(jnp.cos(x[:5]) * s)
        return j + jnp.sin(x[:5])[:, None] * 2 * x[None]

    report = check.jacobian(f, jac, x, jit=True).raise_if_failed()
    assert [r.name for r in report.rows] == ["x", "x (4 random directions)"]
    assert report.rows[1].shape == (4, 5)
    bad = check.jacobian(f, lambda x: jac(x).at[1, 200].add(0.5), x, jit=True)
    assert {r.name for r in bad.failures} == {"x", "x (4 random directions)"}
    assert bad.failures[0].index == (1, 200)


def test_jacobian_rejects_pytree_arguments():
    with pytest.raises(TypeError, match="argument 'p' must be an array, got dict"):
        check.jacobian(lambda p: p["a"], lambda p: p, {"a": A})


# --------------------------------------------------------------------------- #
# check.model
# --------------------------------------------------------------------------- #


def _linear_dw_sign(x, w, b):
    return x @ w + b[None]


def _bad_linear_backward(residuals, g):
    x, w = residuals
    dw = (x.T @ g).at[0, 1].multiply(-1.0)  # ∂L/∂W wrong in one element; ∂L/∂X right
    return g @ w.T, dw, jnp.sum(g, axis=0)


BAD_LINEAR = primitive(_linear_dw_sign, _bad_linear_backward,
                       save=lambda x, w, b, y: (x, w), register=False)


def _mlp_params():
    return {"hidden": {"w": _normal(20, 4, 5), "b": _normal(21, 5)},
            "out": {"w": _normal(22, 5, 3), "b": _normal(23, 3)}}


def _mlp_loss(linear_out):
    def mlp_loss(params, x, y):
        h = fdl.ops.tanh(fdl.ops.linear(x, params["hidden"]["w"], params["hidden"]["b"]))
        z = linear_out(h, params["out"]["w"], params["out"]["b"])
        return fdl.losses.softmax_cross_entropy(z, y)
    return mlp_loss


def test_model_passes_for_correct_rules_and_fails_at_the_wrong_leaf():
    x = _normal(24, 6, 4)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    good = check.model(_mlp_loss(fdl.ops.linear), _mlp_params(), x, y).raise_if_failed()
    names = [r.name for r in good.rows]
    assert names[0] == "params['hidden']['b']" and "params['out']['w']" in names
    assert "params['out']['w'] (gradient and 1 random direction)" in names

    bad = check.model(_mlp_loss(BAD_LINEAR), _mlp_params(), x, y)
    assert not bad.passed
    assert {r.name for r in bad.failures} == {"params['out']['w']",
                                              "params['out']['w'] (gradient and 1 random direction)"}
    assert bad.failures[0].index == (0, 1)
    assert "params['out']['w'] vs autodiff FAILED: worst element (0, 1)" in str(bad)


def test_model_rejects_nonscalar_loss():
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar, got \(3,\)"):
        check.model(lambda p: p["w"] * 2, {"w": jnp.ones(3)})


# --------------------------------------------------------------------------- #
# compare, reports, tolerances
# --------------------------------------------------------------------------- #


def test_compare_zero_reference():
    assert check.compare("z", "autodiff", np.zeros(3), np.zeros(3)).passed
    row = check.compare("z", "autodiff", np.array([0.0, 1e-3, 0.0]), np.zeros(3))
    assert not row.passed and row.index == (1,) and row.max_rel == np.inf
    assert row.max_abs == pytest.approx(1e-3)


def test_compare_nan_in_value():
    row = check.compare("g", "autodiff", np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert not row.passed and row.index == (1,)
    assert row.problem == "non-finite value nan at (1,) where the reference is finite"
    assert "non-finite value nan at (1,)" in row.describe()


def test_compare_nan_or_inf_in_both_agrees_and_nan_reference_fails():
    both = check.compare("g", "autodiff", np.array([np.nan, np.inf, 1.0]),
                         np.array([np.nan, np.inf, 1.0]))
    assert both.passed
    ref_nan = check.compare("g", "autodiff", np.array([0.5, 1.0]), np.array([np.nan, 1.0]))
    assert not ref_nan.passed and "the reference is nan at (0,)" in ref_nan.problem


def test_compare_empty_and_shape_mismatch():
    empty = check.compare("e", "autodiff", np.zeros((0, 3)), np.zeros((0, 3)))
    assert empty.passed and empty.index is None and empty.shape == (0, 3)
    mismatch = check.compare("m", "autodiff", np.zeros((2, 3)), np.zeros((3, 2)))
    assert not mismatch.passed and "(transposed?)" in mismatch.problem
    other = check.compare("m", "autodiff", np.zeros((6,)), np.zeros((3, 2)))
    assert other.problem == "shape (6,) but the reference has shape (3, 2)"


def test_compare_tolerance_semantics():
    r = np.array([1.0, 1e-6, -2.0])
    # 1e-6 absolute error on the small element is within atol = rtol·max|r|
    ok = check.compare("v", "autodiff", r + np.array([0, 1e-11, 0]), r)
    assert ok.passed and ok.atol == pytest.approx(2e-10)
    bad = check.compare("v", "autodiff", r + np.array([0, 1e-9, 0]), r)
    assert not bad.passed and bad.index == (1,)
    loose = check.compare("v", "finite differences", r + np.array([0, 1e-9, 0]), r, rtol=1e-8)
    assert loose.passed and loose.rtol == 1e-8
    per_element = check.compare("v", "finite differences", r + np.array([0, 1e-9, 0]), r,
                                atol=np.array([0.0, 2e-9, 0.0]), step=np.array([1.0, 0.5, 2.0]))
    assert per_element.passed and per_element.atol == 2e-9 and per_element.step == 0.5
    assert check.compare("v", "x", r, r, rtol=0.5, atol=0.0).atol == 0.0


def test_report_without_rows_does_not_pass():
    report = check.vjp(fdl.ops.relu.forward, jnp.arange(3))  # integer: nothing to compare
    assert report.rows == [] and not report.passed and not bool(report)
    assert "nothing was compared" in str(report)
    with pytest.raises(check.CheckFailed, match="no differentiable float arguments"):
        report.raise_if_failed()
    assert np.isnan(report.worst())


def test_raise_if_failed_message_is_the_table():
    report = check.vjp(SIGN_FLIP, X, W_SQUARE)
    with pytest.raises(check.CheckFailed) as info:
        report.raise_if_failed()
    message = str(info.value)
    assert message == str(report)
    assert message.splitlines()[0].startswith("fdl.check.vjp: matmul_sign_flip")
    assert "max rel err" in message and "worst at" in message and "(1, 2)" in message
    assert isinstance(info.value, AssertionError)
    assert check.vjp(RIGHT, X, W_SQUARE).raise_if_failed().passed


def test_tolerance_defaults():
    assert check.tolerance(jnp.float64) == 1e-10
    # against finite differences the dtype's part only: each element's estimated
    # finite-difference error is added to it
    assert check.tolerance(jnp.float64, "finite differences") == 1e-10
    assert check.tolerance(jnp.float32) == 1e-5
    assert check.tolerance(jnp.bfloat16) == 2e-2
    with pytest.raises(ValueError, match="no default for dtype int32"):
        check.tolerance(jnp.int32)


def test_argument_names():
    report = check.vjp(lambda *xs: fdl.ops.tanh(xs[0]) * xs[1], _normal(1, 3), _normal(2, 3))
    assert [r.name for r in report.rows if r.against == "autodiff"] == ["xs[0]", "xs[1]"]

    def f(x, *rest):
        return fdl.ops.tanh(x) * rest[0]

    report = check.vjp(f, _normal(1, 3), _normal(2, 3))
    assert [r.name for r in report.rows if r.against == "autodiff"] == ["x", "rest[0]"]


def test_key_makes_the_cotangent_reproducible():
    a = check.vjp(RIGHT, X, W_SQUARE, key=jax.random.key(3), finite_differences=False)
    b = check.vjp(RIGHT, X, W_SQUARE, key=jax.random.key(3), finite_differences=False)
    c = check.vjp(RIGHT, X, W_SQUARE, key=jax.random.PRNGKey(4), finite_differences=False)
    assert [r.reference for r in a.rows] == [r.reference for r in b.rows]
    assert [r.reference for r in a.rows] != [r.reference for r in c.rows]
    assert a.passed and c.passed


def test_a_tangent_rule_is_traced_once_per_shapes_and_settings():
    """JAX asks a tangent primitive for its output shapes at every bind; the rule is
    traced for that once per operand shapes, parameters and JAX settings — a new shape
    or x64 traces it again (a stale float32 answer under x64 would hide the rule's
    float64 output, which JAX must refuse)."""
    calls = []

    def tangent(x, t):
        calls.append(tuple(x.shape))
        return 2 * x * t[0] + jnp.zeros(x.shape)  # default dtype: float64 under x64

    square = primitive(lambda x: x * x, lambda x, g: (2 * x * g,), save=lambda x, y: x,
                       tangent=tangent, register=False, name="square_traced_once")
    f = lambda x: jax.jvp(square.manual, (x,), (x,))[1]  # noqa: E731
    x = np.ones(3, np.float32)
    with jax.enable_x64(False):
        first = jax.make_jaxpr(f)(x)
        second = jax.make_jaxpr(f)(x)
        assert calls == [(3,)]
        assert str(first) == str(second)
        jax.make_jaxpr(f)(np.ones(4, np.float32))
        assert calls == [(3,), (4,)]
    with jax.enable_x64(True), pytest.raises(TypeError, match="float64"):
        jax.make_jaxpr(f)(x)
    assert calls == [(3,), (4,), (3,)]
