"""Second order on the hand-written rules: `fdl.check.hvp`, `fdl.hvp`, and forward mode
(`jvp`, `jacfwd`, `hessian`) of whole models agreeing with autodiff mode."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from conftest import normal
from fdl import check, layers
from fdl.primitive import primitive

# --------------------------------------------------------------------------- #
# Models: the digits MLP, a small CNN, a small attention model
# --------------------------------------------------------------------------- #


def _digits(n):
    ds = fdl.data.load_digits(flatten=True)
    return jnp.asarray(ds.x_train[:n], jnp.float64), jnp.asarray(ds.y_train[:n])


def _mlp():
    x, y = _digits(12)
    model = layers.serial(layers.Dense(6, dtype=jnp.float64), layers.Tanh(),
                          layers.Dense(10, dtype=jnp.float64))
    _, params, state = model.init(jax.random.key(0), x.shape[1:])
    return model, params, state, x, y


def _cnn():
    x, y = _digits(4)
    x = x.reshape(-1, 8, 8, 1)
    model = layers.serial(layers.Conv2D(3, 3, dtype=jnp.float64), layers.Relu(),
                          layers.MaxPool2D(2), layers.Flatten(),
                          layers.Dense(10, dtype=jnp.float64))
    _, params, state = model.init(jax.random.key(1), x.shape[1:])
    return model, params, state, x, y


def _attention():
    rng = np.random.default_rng(3)
    x = normal(rng, 2, 5, 4)
    y = jnp.asarray(rng.integers(0, 3, (2, 5)), jnp.int32)
    attend = layers.MultiHeadAttention(2, 4, dtype=jnp.float64)
    _, p_att, _ = attend.init(jax.random.key(2), ((5, 4), (5, 4)))
    head = layers.Dense(3, dtype=jnp.float64)
    _, p_head, _ = head.init(jax.random.key(3), (5, 4))
    params = {"attend": p_att, "head": p_head}

    def loss(params, x, y):
        h, _ = attend.apply(params["attend"], {}, (x, x))
        z, _ = head.apply(params["head"], {}, fdl.ops.layer_norm(h + x, jnp.ones(4),
                                                                 jnp.zeros(4)))
        return fdl.losses.softmax_cross_entropy(z, y)

    return loss, params, x, y


def _model_loss(model, state):
    def loss(params, x, y):
        z, _ = model.apply(params, state, x)
        return fdl.losses.softmax_cross_entropy(z, y)
    return loss


def _models():
    model, params, state, x, y = _mlp()
    out = {"digits MLP": (_model_loss(model, state), params, x, y)}
    model, params, state, x, y = _cnn()
    out["CNN"] = (_model_loss(model, state), params, x, y)
    out["attention"] = _attention()
    return out


def _close(a, b, rtol=1e-10):
    """Each result (a pytree) to `rtol` relative to its largest element: a block that
    is zero in exact arithmetic (a key bias moves no softmax) holds only roundoff."""
    for part_a, part_b in zip(a, b):
        leaves = jax.tree_util.tree_leaves(part_b)
        scale = max(float(np.max(np.abs(r), initial=0.0)) for r in leaves)
        for m, r in zip(jax.tree_util.tree_leaves(part_a), leaves):
            np.testing.assert_allclose(m, r, rtol=rtol, atol=rtol * scale)


@pytest.mark.x64
@pytest.mark.parametrize("name", ["digits MLP", "CNN", "attention"])
def test_forward_mode_of_a_model_runs_and_agrees_with_autodiff(name):
    """jvp, jacfwd and hessian of a whole model in manual mode (hand rules) equal
    autodiff mode to 1e-10 relative, float64."""
    loss, params, x, y = _models()[name]
    v = jax.tree_util.tree_map(lambda p: jnp.asarray(
        np.random.default_rng(5).standard_normal(p.shape)), params)
    paths, tree = jax.tree_util.tree_flatten_with_path(params)
    at = next(i for i, (path, _) in enumerate(paths) if "w" in jax.tree_util.keystr(path))
    first = paths[at][1]

    def with_weight(w):
        leaves = [leaf for _, leaf in paths]
        leaves[at] = w
        return jax.tree_util.tree_unflatten(tree, leaves)

    def run():
        jvp = jax.jvp(lambda p: loss(p, x, y), (params,), (v,))[1]
        jac = jax.jacfwd(lambda x0: loss(params, x0, y))(x)
        hess = jax.hessian(lambda w: loss(with_weight(w), x, y))(first)
        return jvp, jac, hess, fdl.hvp(loss, params, v, x, y)

    manual = jax.jit(run)()
    with fdl.gradient_mode("autodiff"):
        reference = jax.jit(run)()
    _close(manual, reference)


# --------------------------------------------------------------------------- #
# fdl.check.hvp and fdl.hvp
# --------------------------------------------------------------------------- #


@pytest.mark.x64
def test_check_hvp_passes_on_a_model():
    loss, params, x, y = _models()["digits MLP"]
    report = check.hvp(loss, params, x, y).raise_if_failed()
    assert any("(H v)[params" in r.name for r in report.rows)
    assert {r.against for r in report.rows} == {"autodiff", "finite differences"}


@pytest.mark.float32
def test_check_hvp_and_fdl_hvp_in_float32():
    w, x = normal(0, 4, 3), normal(1, 6, 4)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    loss = lambda w, x: fdl.losses.softmax_cross_entropy(  # noqa: E731
        fdl.ops.tanh(fdl.ops.linear(x, w, jnp.zeros(3))), y)
    check.hvp(loss, w, x).raise_if_failed()
    hv = fdl.hvp(loss, w, jnp.ones_like(w), x)
    assert hv.dtype == jnp.float32 and hv.shape == w.shape


@pytest.mark.x64
def test_fdl_hvp_equals_the_hessian_times_v():
    loss, params, x, y = _models()["digits MLP"]
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v = np.random.default_rng(9).standard_normal(flat.shape)
    hessian = jax.hessian(lambda f: loss(unravel(f), x, y))(flat)
    hv = fdl.hvp(loss, params, unravel(jnp.asarray(v)), x, y)
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(hv)[0], hessian @ v,
                               rtol=1e-10, atol=1e-12)


def test_fdl_hvp_rejects_a_direction_of_another_shape():
    params = {"w": jnp.ones((2, 3))}
    with pytest.raises(TypeError, match="hvp: v must have the structure of params"):
        fdl.hvp(lambda p: jnp.sum(p["w"]), params, [jnp.ones((2, 3))])
    with pytest.raises(ValueError, match=r"hvp: v's leaf 0 has shape \(3, 2\) but params' has "
                                         r"shape \(2, 3\)"):
        fdl.hvp(lambda p: jnp.sum(p["w"]), params, {"w": jnp.ones((3, 2))})


# --------------------------------------------------------------------------- #
# Planted bugs
# --------------------------------------------------------------------------- #


def _tanh(x):
    """`y = tanh(x)`: `dy = (1 − y²) dx`, `∂L/∂x = (1 − y²) g`."""
    return jnp.tanh(x)


def _tanh_tangent(y, t):
    return (1 - y * y) * t[0]


def _loss(prim):
    return lambda x: jnp.sum(jnp.sin(prim(x)) * x)


X = np.array([0.3, -0.8, 1.2, 0.5])


@pytest.mark.x64
def test_a_wrong_first_order_rule_is_caught_by_hvp():
    wrong = primitive(_tanh, lambda y, g: (g * (1 - y),), save=lambda x, y: y,
                      tangent=_tanh_tangent, register=False)
    assert not check.vjp(wrong, X).passed
    report = check.hvp(_loss(wrong), X)
    assert not report.passed
    assert {r.against for r in report.rows if not r.passed} == {"autodiff",
                                                                 "finite differences"}


@pytest.mark.x64
def test_a_rule_right_at_first_order_but_wrong_in_its_derivative_is_caught_by_hvp_only():
    """The backward treats its residual `y` as a constant (`stop_gradient`): its value
    is right, so `vjp`, `jvp` and adjointness pass, but its derivative misses
    `∂(1 − y²)/∂x = −2y(1 − y²)`, which forward over reverse differentiates."""
    frozen = primitive(_tanh, lambda y, g: (g * (1 - jax.lax.stop_gradient(y) ** 2),),
                       save=lambda x, y: y, tangent=_tanh_tangent, register=False)
    assert check.vjp(frozen, X).passed
    assert check.jvp(frozen, X).passed
    assert check.adjoint(frozen, X).passed
    report = check.hvp(_loss(frozen), X)
    assert not report.passed, str(report)
    right = primitive(_tanh, lambda y, g: (g * (1 - y * y),), save=lambda x, y: y,
                      tangent=_tanh_tangent, register=False)
    check.hvp(_loss(right), X).raise_if_failed()
