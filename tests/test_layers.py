"""fdl.layers: the protocol, core layers, combinators and initialisers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import layers as L
from fdl.layers import initializers as I

KEY = jax.random.key(0)


def test_dense_shapes_and_forward_equal_xw_plus_b():
    layer = L.Dense(4)
    out_shape, params, state = layer.init(KEY, (3,))
    assert out_shape == (4,) and state == {}
    assert params["w"].shape == (3, 4) and params["b"].shape == (4,)
    x = jax.random.normal(KEY, (5, 3), jnp.float32)
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(y, x @ params["w"] + params["b"][None], rtol=1e-6)


def test_dense_rejects_wrong_feature_count_with_clear_message():
    layer = L.Dense(4)
    _, params, state = layer.init(KEY, (784,))
    with pytest.raises(ValueError, match=r"783 features\) but the layer was built for 784"):
        layer.apply(params, state, jnp.ones((2, 783)))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_dense_rejects_bad_features(bad):
    with pytest.raises(ValueError, match="features must be a positive int"):
        L.Dense(bad)


def test_serial_names_params_and_threads_shapes():
    model = L.serial(L.Flatten(), L.Dense(8), L.Relu(), L.Dense(3))
    out_shape, params, state = model.init(KEY, (2, 4))
    assert out_shape == (3,)
    assert set(params) == {"flatten_0", "dense_1", "relu_2", "dense_3"}
    assert params["dense_1"]["w"].shape == (8, 8)
    y, _ = model.apply(params, state, jnp.ones((6, 2, 4)))
    assert y.shape == (6, 3)


def test_serial_rejects_factory_instead_of_layer():
    with pytest.raises(TypeError, match=r"did you pass the factory.*Relu\(\)"):
        L.serial(L.Dense(3), L.Relu)


def test_parallel_concat_sum_tuple():
    a, b = L.Dense(2), L.Dense(3)
    shape, params, state = L.parallel(a, b).init(KEY, (4,))
    assert shape == (5,)
    x = jnp.ones((7, 4))
    y, _ = L.parallel(a, b).apply(params, state, x)
    assert y.shape == (7, 5)
    ya, _ = a.apply(params["dense_0"], {}, x)
    np.testing.assert_allclose(y[:, :2], ya)
    shape, params, state = L.parallel(L.Dense(3), L.Dense(3), combine="sum").init(KEY, (4,))
    assert shape == (3,)
    shape, _, _ = L.parallel(L.Dense(3), L.Dense(2), combine="tuple").init(KEY, (4,))
    assert shape == ((3,), (2,))
    with pytest.raises(ValueError, match="branch output shapes differ"):
        L.parallel(L.Dense(3), L.Dense(2), combine="sum").init(KEY, (4,))
    with pytest.raises(ValueError, match="combine must be one of"):
        L.parallel(L.Dense(3), combine="max")


def test_residual_adds_input_and_checks_shape():
    inner = L.Dense(4)
    layer = L.residual(inner)
    _, params, state = layer.init(KEY, (4,))
    x = jax.random.normal(KEY, (3, 4))
    y, _ = layer.apply(params, state, x)
    fx, _ = inner.apply(params, state, x)
    np.testing.assert_allclose(y, x + fx)
    with pytest.raises(ValueError, match="needs the same shape in and out"):
        L.residual(L.Dense(5)).init(KEY, (4,))


def test_dropout_is_identity_in_eval_and_needs_key_in_training():
    layer = L.Dropout(0.5)
    x = jnp.ones((4, 10))
    y, _ = layer.apply({}, {}, x, train=False)
    assert y is x
    with pytest.raises(ValueError, match="train=True needs a PRNG key"):
        layer.apply({}, {}, x, train=True)
    y, _ = layer.apply({}, {}, jnp.ones((200, 50)), key=KEY, train=True)
    kept = np.asarray(y != 0)
    assert 0.45 < kept.mean() < 0.55  # rate is the DROP probability
    np.testing.assert_allclose(np.asarray(y)[kept], 2.0)  # inverted scaling 1/(1-rate)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_rejects_bad_rate(rate):
    with pytest.raises(ValueError, match=r"rate \(the drop probability\) must be in \[0, 1\)"):
        L.Dropout(rate)


def test_activation_lookup():
    assert L.get_activation("tanh").name == "tanh"
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        L.get_activation("swishy")


def test_mlp_builder():
    model = L.mlp([16, 8], 3, activation="tanh")
    shape, params, _ = model.init(KEY, (4, 4))
    assert shape == (3,)
    assert [params[k]["w"].shape for k in sorted(params) if "dense" in k] == [(16, 16), (16, 8), (8, 3)]
    with pytest.raises(ValueError, match="hidden\\[1\\] must be a positive int"):
        L.mlp([4, 0], 3)


def test_layers_jit_and_gradient_modes_agree():
    """A serial model's gradient: manual rules vs autodiff, both under jit."""
    model = L.serial(L.Dense(6, dtype=jnp.float64), L.Tanh(), L.Dense(4, dtype=jnp.float64),
                     L.Gelu(), L.Dense(3, dtype=jnp.float64))
    _, params, state = model.init(KEY, (5,))
    x = jax.random.normal(KEY, (7, 5), jnp.float64)
    y = jnp.arange(7) % 3

    def loss(p):
        out, _ = model.apply(p, state, x)
        return fdl.losses.softmax_cross_entropy(out, y)

    fdl.check.model(loss, params, finite_differences=False).raise_if_failed()


# ----------------------------------------------------------------------------- initialisers

@pytest.mark.parametrize("name,var", [
    ("glorot_uniform", lambda fi, fo: 2 / (fi + fo)),
    ("glorot_normal", lambda fi, fo: 2 / (fi + fo)),
    ("he_uniform", lambda fi, fo: 2 / fi),
    ("he_normal", lambda fi, fo: 2 / fi),
    ("lecun_uniform", lambda fi, fo: 1 / fi),
    ("lecun_normal", lambda fi, fo: 1 / fi),
])
def test_initializer_variance_matches_its_formula(name, var):
    fan_in, fan_out = 400, 300
    w = I.get_initializer(name)(KEY, (fan_in, fan_out), jnp.float64)
    expected = var(fan_in, fan_out)
    assert abs(float(jnp.var(w)) / expected - 1) < 0.02
    assert abs(float(jnp.mean(w))) < 0.01 * math.sqrt(expected) * 10


def test_conv_kernel_fans_count_the_receptive_field():
    assert I.fans((3, 3, 16, 32)) == (3 * 3 * 16, 3 * 3 * 32)


def test_orthogonal_has_orthonormal_columns():
    w = I.orthogonal()(KEY, (64, 32), jnp.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(32), atol=1e-5)
    w = I.orthogonal(gain=2.0)(KEY, (16, 40), jnp.float64)
    np.testing.assert_allclose(w @ w.T, 4 * np.eye(16), atol=1e-5)


def test_zeros_and_unknown_initializer():
    assert not jnp.any(I.zeros()(KEY, (3, 2)))
    with pytest.raises(ValueError, match="unknown initializer 'xavier'"):
        I.get_initializer("xavier")
