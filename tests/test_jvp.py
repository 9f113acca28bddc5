"""Tangent (forward-mode) rules: the mechanism, every registered primitive's check,
and planted bugs that each check must catch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from conftest import normal
from fdl import check
from fdl.primitive import primitive, registry

# --------------------------------------------------------------------------- #
# A small primitive whose rules record when they run: y = tanh(x W) · scale
# --------------------------------------------------------------------------- #

CALLS: list[str] = []


def _dense_tanh(x, w, ids, scale):
    """`y = s·tanh(xW)`; `ids` is an integer argument (no tangent)."""
    return scale * jnp.tanh(x @ w)


def _save(x, w, ids, scale, y):
    return x, w, jnp.tanh(x @ w)


def _backward(scale, res, g):
    CALLS.append("backward")
    x, w, t = res
    gz = g * scale * (1 - t * t)
    return gz @ w.T, x.T @ gz, None


def _tangent(scale, res, tangents):
    CALLS.append("tangent")
    x, w, t = res
    dx, dw, dids = tangents
    assert dids is None
    return scale * (1 - t * t) * (dx @ w + x @ dw)


DENSE = primitive(_dense_tanh, _backward, save=_save, static=("scale",), tangent=_tangent,
                  register=False)


def _loss(prim):
    return lambda x, w: jnp.sum(prim(x, w, jnp.arange(3), 2.0) ** 2)


def _transforms():
    return {
        "grad": lambda L: jax.grad(L, (0, 1)),
        "jit grad": lambda L: jax.jit(jax.grad(L, (0, 1))),
        "jvp": lambda L: lambda x, w: jax.jvp(L, (x, w), (x, w))[1],
        "jit jvp": lambda L: jax.jit(lambda x, w: jax.jvp(L, (x, w), (x, w))[1]),
        "jacfwd": lambda L: jax.jacfwd(L, (0, 1)),
        "jacrev": lambda L: jax.jacrev(L, (0, 1)),
        "hessian": lambda L: jax.hessian(L, (0, 1)),
        "jacfwd of jacfwd": lambda L: jax.jacfwd(jax.jacfwd(L, (0, 1)), (0, 1)),
        "linearize": lambda L: lambda x, w: jax.linearize(L, x, w)[1](x, w),
        "vmap of grad": lambda L: jax.vmap(jax.grad(L, (0, 1)), (None, 0)),
        "grad of vmap": lambda L: jax.grad(lambda x, w: jnp.sum(jax.vmap(L, (None, 0))(x, w)),
                                           (0, 1)),
        "grad of vmap of vmap": lambda L: jax.grad(
            lambda x, w: jnp.sum(jax.vmap(jax.vmap(L, (0, None)), (None, 0))(x, w)), (0, 1)),
    }


@pytest.mark.x64
@pytest.mark.parametrize("name", list(_transforms()))
def test_every_transformation_agrees_with_autodiff_of_the_forward(name):
    x, w = normal(0, 3, 4), normal(1, 4, 2)
    if "vmap" in name:
        w = jnp.stack([w, 2 * w])
    if "vmap of vmap" in name:
        x = x[:, None, :]
    transform = _transforms()[name]
    CALLS.clear()
    got = transform(_loss(DENSE))(x, w)
    ran = set(CALLS)
    want = transform(_loss(DENSE.forward))(x, w)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    reverse = {"grad", "jit grad", "jacrev", "hessian", "vmap of grad", "grad of vmap",
               "grad of vmap of vmap"}
    if name in reverse:  # reverse mode runs the hand-written backward (by transposition)
        assert "backward" in ran
    else:
        assert "backward" not in ran


@pytest.mark.x64
def test_grad_runs_the_backward_and_jvp_the_tangent_rule():
    """A wrong backward shows in grad only, a wrong tangent in jvp only: each direction
    runs its own hand-written rule."""
    wrong_back = primitive(_dense_tanh, lambda s, r, g: tuple(
        None if c is None else 2 * c for c in _backward(s, r, g)), save=_save,
        static=("scale",), tangent=_tangent, register=False)
    wrong_tan = primitive(_dense_tanh, _backward, save=_save, static=("scale",),
                          tangent=lambda s, r, t: 3 * _tangent(s, r, t), register=False)
    x, w = normal(0, 3, 4), normal(1, 4, 2)
    grad = lambda p: jax.grad(_loss(p), (0, 1))(x, w)  # noqa: E731
    jvp = lambda p: jax.jvp(_loss(p), (x, w), (x, w))[1]  # noqa: E731
    np.testing.assert_allclose(grad(wrong_back)[1], 2 * grad(DENSE)[1], rtol=1e-12)
    np.testing.assert_allclose(grad(wrong_tan)[1], grad(DENSE)[1], rtol=1e-12)
    np.testing.assert_allclose(jvp(wrong_tan), 3 * jvp(DENSE), rtol=1e-12)
    np.testing.assert_allclose(jvp(wrong_back), jvp(DENSE), rtol=1e-12)


@pytest.mark.x64
def test_autodiff_mode_differentiates_the_forward_and_is_a_separate_jit_trace():
    wrong_tan = primitive(_dense_tanh, _backward, save=_save, static=("scale",),
                          tangent=lambda s, r, t: 3 * _tangent(s, r, t), register=False)
    x, w = normal(0, 3, 4), normal(1, 4, 2)
    f = jax.jit(lambda x, w: jax.jvp(_loss(wrong_tan), (x, w), (x, w))[1])
    manual = f(x, w)
    with fdl.gradient_mode("autodiff"):
        auto = f(x, w)
    right = jax.jvp(_loss(DENSE.forward), (x, w), (x, w))[1]
    np.testing.assert_allclose(auto, right, rtol=1e-12)
    np.testing.assert_allclose(manual, 3 * right, rtol=1e-12)


# --------------------------------------------------------------------------- #
# Every registered primitive: tangent rule and adjointness
# --------------------------------------------------------------------------- #


def test_every_registered_primitive_has_a_tangent_rule():
    assert [n for n, p in registry().items() if p.tangent is None] == []


@pytest.mark.x64
@pytest.mark.parametrize("name", sorted(registry()))
def test_registered_tangent_rules_and_adjointness_float64(name):
    for i, (_, tangent, adjoint) in enumerate(
            check.examples(registry()[name], checks=("jvp", "adjoint"))):
        assert tangent.passed, f"example {i}\n{tangent}"
        assert adjoint.passed, f"example {i}\n{adjoint}"
        assert tangent.worst("autodiff") <= 1e-10


@pytest.mark.float32
@pytest.mark.parametrize("name", ["linear", "softmax_cross_entropy", "lstm_cell", "conv2d"])
def test_registered_tangent_rules_in_float32(name):
    for _, tangent, adjoint in check.examples(registry()[name], dtype=jnp.float32,
                                              checks=("jvp", "adjoint")):
        assert tangent.passed, str(tangent)
        assert adjoint.passed, str(adjoint)


@pytest.mark.float32
def test_check_jvp_and_adjoint_on_user_arguments_in_float32():
    x, w, b = normal(0, 5, 3), normal(1, 3, 4), normal(2, 4)
    report = check.jvp(fdl.ops.linear, x, w, b).raise_if_failed()
    assert report.rows[0].dtype == "float32"
    check.adjoint(fdl.ops.linear, x, w, b).raise_if_failed()


# --------------------------------------------------------------------------- #
# Planted bugs: each check catches what it should
# --------------------------------------------------------------------------- #


def _cube(x):
    """`y = x³`: `dy = 3x² dx`, `∂L/∂x = 3x² g`."""
    return x ** 3


def _cube_prim(backward_factor, tangent_factor):
    return primitive(_cube, lambda x, g: (backward_factor * x * x * g,),
                     save=lambda x, y: x,
                     tangent=lambda x, t: tangent_factor * x * x * t[0], register=False)


X = np.array([0.5, -1.0, 2.0, 1.5])


@pytest.mark.x64
def test_a_wrong_tangent_is_caught_by_jvp_and_by_adjointness_with_a_right_backward():
    wrong = _cube_prim(3, 2)
    jvp = check.jvp(wrong, X)
    assert not jvp.passed
    assert {r.against for r in jvp.rows if not r.passed} == {"autodiff", "finite differences"}
    assert "hint: the value is 0.666667 × the reference" in str(jvp)
    assert not check.adjoint(wrong, X).passed
    assert check.vjp(wrong, X).passed  # the backward is right


@pytest.mark.x64
def test_a_wrong_backward_is_caught_by_adjointness_with_a_right_tangent():
    wrong = _cube_prim(2, 3)
    assert check.jvp(wrong, X).passed
    assert not check.adjoint(wrong, X).passed
    assert not check.vjp(wrong, X).passed


@pytest.mark.x64
def test_rules_that_agree_only_with_each_other_pass_adjointness_and_fail_the_others():
    """Adjointness compares the two hand rules with each other; a consistent pair of
    wrong rules needs the autodiff and finite-difference checks."""
    wrong = _cube_prim(2, 2)
    assert check.adjoint(wrong, X).passed
    assert not check.jvp(wrong, X).passed
    assert not check.vjp(wrong, X).passed


@pytest.mark.x64
def test_check_jvp_on_a_model_function_compares_the_modes():
    params, x = {"w": normal(0, 4, 3), "b": normal(1, 3)}, normal(2, 6, 4)

    def model(params, x):
        return fdl.ops.softmax(fdl.ops.tanh(fdl.ops.linear(x, params["w"], params["b"])))

    report = check.jvp(model, params, x).raise_if_failed()
    assert "manual vs autodiff mode" in report.title


def test_a_primitive_without_a_tangent_rule_has_no_forward_report():
    reverse_only = primitive(_cube, lambda x, g: (3 * x * x * g,), save=lambda x, y: x,
                             register=False)
    report = check.jvp(reverse_only, X)
    assert not report.passed and "no tangent rule" in report.title
