"""Bisection of a failing `fdl.check.model`: the report names the first primitive on
the model's path (walking back from the loss) whose hand-written rule diverges from
autodiff, with its layer path, the argument, the element and both values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal

import fdl
from fdl import check, layers, losses
from fdl.check.bisect import Divergence
from fdl.primitive import primitive
from fdl.recording import layer_path


# --- planted bugs --------------------------------------------------------------------

def scaled_tanh(x: jax.Array) -> jax.Array:
    """`y = 2 tanh(x)`, so `∂L/∂x = 2 (1 − tanh²x) ∂L/∂y`."""
    return 2.0 * jnp.tanh(x)


def _scaled_tanh_missing_factor(residuals, g):
    (x,), _ = residuals
    return ((1.0 - jnp.tanh(x) ** 2) * g,)  # the factor 2 is missing


def _scaled_tanh_right(residuals, g):
    (x,), _ = residuals
    return (2.0 * (1.0 - jnp.tanh(x) ** 2) * g,)


def cube(x: jax.Array) -> jax.Array:
    """`y = x³`, so `∂L/∂x = 3x² ∂L/∂y`."""
    return x ** 3


def affine(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """`Y = XW + b`: `∂L/∂X = G Wᵀ`, `∂L/∂W = Xᵀ G`, `∂L/∂b = 1ᵀ G`."""
    return x @ w + b[None, :]


def _affine_bwd_w_doubled(residuals, g):
    x, w = residuals
    return g @ w.T, 2.0 * (x.T @ g), jnp.sum(g, axis=0)  # ∂L/∂W twice too large


BAD_TANH = primitive(scaled_tanh, _scaled_tanh_missing_factor, register=False)
GOOD_TANH = primitive(scaled_tanh, _scaled_tanh_right, register=False)
BAD_CUBE = primitive(cube, lambda residuals, g: (2.0 * residuals ** 2 * g,),
                     save=lambda x, y: x, register=False)
BAD_AFFINE = primitive(affine, _affine_bwd_w_doubled, save=lambda x, w, b, y: (x, w),
                       register=False)


def _activation(name: str, p) -> layers.Layer:
    return layers.stateless(name, p)


def _bad_dense(features: int) -> layers.Layer:
    def init(key, shape):
        return shape[:-1] + (features,), {"w": normal(7, shape[-1], features, scale=0.5),
                                          "b": normal(8, features, scale=0.1)}
    return layers.stateless("bad_dense", lambda p, x: BAD_AFFINE(x, p["w"], p["b"]), init=init)


def _model_and_batch(*middle: layers.Layer):
    """Dense → middle… → Dense → softmax cross-entropy, on a batch of 4."""
    dtype = jnp.result_type(float)
    model = layers.serial(layers.Dense(5, dtype=dtype), *middle, layers.Dense(3, dtype=dtype))
    _, params, state = model.init(jax.random.key(0), (6,))
    x, labels = normal(1, 4, 6), jnp.array([0, 1, 2, 1])

    def loss(p, x, labels):
        logits, _ = model.apply(p, state, x)
        return losses.softmax_cross_entropy(logits, labels)

    return model, params, state, loss, x, labels


def _autodiff_cotangent_of_stanh_input(params, x, labels):
    """∂L/∂h at the input `h` of the scaled tanh in Dense → Tanh → stanh → Dense, by
    plain JAX autodiff (no fdl primitive)."""
    p0, p3 = params["dense_0"], params["dense_3"]
    h = jnp.tanh(x @ p0["w"] + p0["b"][None, :])

    def rest(h):
        logits = (2.0 * jnp.tanh(h)) @ p3["w"] + p3["b"][None, :]
        log_p = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))

    return np.asarray(jax.grad(rest)(h))


# --- the tests -----------------------------------------------------------------------

@pytest.mark.x64
def test_names_the_wrong_activation_its_layer_element_and_values():
    model, params, state, loss, x, labels = _model_and_batch(
        layers.Tanh(), _activation("stanh", BAD_TANH))

    report = check.model(loss, params, x, labels)

    assert not report.passed
    d = report.divergence
    assert isinstance(d, Divergence)
    assert (d.primitive, d.path, d.call, d.argument) == ("scaled_tanh", ("serial", "stanh_2"), 2,
                                                         "x")
    # the activation's input cotangent, by autodiff alone; its rule gives half of it
    reference = _autodiff_cotangent_of_stanh_input(params, x, labels)
    worst = np.unravel_index(np.argmax(np.abs(reference)), reference.shape)
    assert d.index == tuple(int(i) for i in worst)
    np.testing.assert_allclose(d.autodiff, reference[worst], rtol=1e-12)
    np.testing.assert_allclose(d.manual, reference[worst] / 2, rtol=1e-12)
    assert d.rel_error == pytest.approx(0.5, rel=1e-9)
    assert d.incoming_error < 1e-13
    at = "(" + ", ".join(map(str, d.index)) + ")"
    assert f"first divergence: serial/stanh_2 → scaled_tanh, ∂L/∂x at {at}: manual " \
        f"{d.manual:.10g}, autodiff {d.autodiff:.10g}" in str(report)
    assert "0.5 × autodiff (a constant factor)" in str(report)


@pytest.mark.x64
def test_a_correct_model_has_no_divergence_line():
    model, params, state, loss, x, labels = _model_and_batch(
        layers.Tanh(), _activation("stanh", GOOD_TANH))
    report = check.model(loss, params, x, labels).raise_if_failed()
    assert report.divergence is None
    assert "first divergence" not in str(report)


@pytest.mark.x64
def test_two_wrong_rules_name_the_one_nearest_the_loss():
    model, params, state, loss, x, labels = _model_and_batch(
        _activation("cube", BAD_CUBE), layers.Dense(4, dtype=jnp.float64),
        _activation("stanh", BAD_TANH))
    d = check.model(loss, params, x, labels, finite_differences=False).divergence
    assert (d.primitive, d.path, d.argument) == ("scaled_tanh", ("serial", "stanh_3"), "x")
    # with the nearer one right, the farther one is named
    model, params, state, loss, x, labels = _model_and_batch(
        _activation("cube", BAD_CUBE), layers.Dense(4, dtype=jnp.float64),
        _activation("stanh", GOOD_TANH))
    d = check.model(loss, params, x, labels, finite_differences=False).divergence
    assert (d.primitive, d.path, d.argument) == ("cube", ("serial", "cube_1"), "x")
    np.testing.assert_allclose(d.manual, 2 / 3 * d.autodiff, rtol=1e-12)


@pytest.mark.x64
def test_a_wrong_parameter_cotangent_is_named_by_argument_inside_nested_serials():
    inner = layers.serial(layers.Tanh(), _bad_dense(4), name="block")
    model, params, state, loss, x, labels = _model_and_batch(inner)
    report = check.model(loss, params, x, labels, finite_differences=False)
    d = report.divergence
    assert (d.primitive, d.path, d.argument) == ("affine", ("serial", "block_1", "bad_dense_1"),
                                                 "w")
    np.testing.assert_allclose(d.manual, 2 * d.autodiff, rtol=1e-12)
    assert "serial/block_1/bad_dense_1 → affine, ∂L/∂w at (" in str(report)


@pytest.mark.float32
def test_bisection_in_float32():
    model, params, state, loss, x, labels = _model_and_batch(
        layers.Tanh(), _activation("stanh", BAD_TANH), layers.Dense(4))
    assert x.dtype == jnp.float32
    report = check.model(loss, params, x, labels, finite_differences=False)
    d = report.divergence
    assert (d.primitive, d.path, d.argument) == ("scaled_tanh", ("serial", "stanh_2"), "x")
    assert d.manual == pytest.approx(d.autodiff / 2, rel=1e-5)
    assert "first divergence: serial/stanh_2 → scaled_tanh" in str(report)


@pytest.mark.float32
def test_layer_path_is_kept_only_while_recording():
    seen = []
    probe = layers.stateless("probe", lambda x: (seen.append(layer_path()), x)[1])
    model = layers.serial(layers.Tanh(), probe)
    model.apply({"tanh_0": {}, "probe_1": {}}, {"tanh_0": {}, "probe_1": {}}, jnp.ones((2, 3)))
    assert seen == [()]


@pytest.mark.x64
def test_a_wrong_rule_inside_a_loop_is_not_isolated_and_the_report_says_why():
    def loss(p, xs):
        def step(h, x):
            h = BAD_TANH(fdl.ops.linear(jnp.concatenate([h, x], -1), p["w"], p["b"]))
            return h, h
        h, _ = jax.lax.scan(step, jnp.zeros((2, 3)), xs)
        return jnp.sum(h ** 2)

    params = {"w": normal(0, 5, 3, scale=0.3), "b": jnp.zeros(3)}
    report = check.model(loss, params, normal(1, 4, 2, 2), finite_differences=False)
    assert not report.passed and report.divergence is None
    assert "first divergence: not located: no call receives an agreeing cotangent" in str(report)
    assert "the call nearest the loss that sends a diverging cotangent is scaled_tanh (∂L/∂x" \
        in str(report)
