"""The layers over the new primitives: grouped/3-D/transposed convolutions, global max and
adaptive pooling, group/instance norm, weight and spectral normalisation wrappers —
shapes from init, outputs equal to the primitives they wrap, state, and messages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl import layers, ops
from conftest import normal

KEY = jax.random.key(0)


@pytest.mark.float32
@pytest.mark.parametrize("layer, in_shape, out_shape", [
    (layers.Conv2D(6, 3, groups=2), (5, 5, 4), (5, 5, 6)),
    (layers.Conv2D(4, 3, groups=4), (5, 5, 4), (5, 5, 4)),           # depthwise
    (layers.Conv1D(4, 2, groups=2, padding="VALID"), (7, 2), (6, 4)),
    (layers.Conv3D(3, 2, stride=2), (4, 4, 6, 2), (2, 2, 3, 3)),
    (layers.ConvTranspose2D(3, 3, stride=2), (4, 5, 2), (8, 10, 3)),
    (layers.ConvTranspose2D(3, (2, 3), stride=2, padding="VALID"), (4, 5, 2), (8, 11, 3)),
    (layers.ConvTranspose1D(2, 4, stride=3), (5, 3), (15, 2)),
    (layers.GlobalMaxPool(), (3, 4, 5), (5,)),
    (layers.MaxPool2D(2, 1, dilation=2), (5, 6, 1), (3, 4, 1)),
    (layers.AvgPool2D(2, 2, "SAME", dilation=(2, 1)), (5, 6, 1), (3, 3, 1)),
    (layers.AdaptiveAvgPool2D((2, 3)), (5, 7, 2), (2, 3, 2)),
    (layers.GroupNorm(2), (3, 3, 4), (3, 3, 4)),
    (layers.InstanceNorm(), (3, 3, 4), (3, 3, 4)),
])
def test_new_layers_shapes_from_init_match_apply(layer, in_shape, out_shape):
    shape, params, state = layer.init(KEY, in_shape)
    assert tuple(shape) == out_shape
    y, new_state = layer.apply(params, state, normal(0, 2, *in_shape))
    assert y.shape == (2, *out_shape) and y.dtype == jnp.float32
    assert new_state == state


@pytest.mark.float32
def test_conv_layers_apply_their_primitive():
    x = normal(1, 2, 5, 5, 4)
    _, p, _ = layers.Conv2D(6, 3, groups=2).init(KEY, (5, 5, 4))
    assert p["w"].shape == (3, 3, 2, 6)
    y, _ = layers.Conv2D(6, 3, groups=2).apply(p, {}, x)
    np.testing.assert_array_equal(y, ops.conv2d(x, p["w"], p["b"], 1, "SAME", 1, 2))
    _, p, _ = layers.ConvTranspose2D(3, 3, stride=2).init(KEY, (5, 5, 4))
    y, _ = layers.ConvTranspose2D(3, 3, stride=2).apply(p, {}, x)
    np.testing.assert_array_equal(y, ops.conv_transpose2d(x, p["w"], p["b"], 2, "SAME", 1))


@pytest.mark.float32
def test_weight_norm_wraps_a_dense_layer_and_starts_at_its_function():
    dense = layers.Dense(3)
    wn = layers.WeightNorm(dense)
    _, p_dense, _ = dense.init(KEY, (4,))
    _, p, state = wn.init(KEY, (4,))
    assert set(p) == {"w", "b"} and set(p["w"]) == {"v", "g"}
    x = normal(2, 5, 4)
    y, _ = wn.apply(p, state, x)
    np.testing.assert_allclose(y, dense.apply(p_dense, {}, x)[0], rtol=1e-5, atol=1e-6)
    # doubling g doubles the weight, whatever v's length
    p2 = {**p, "w": {"v": 3 * p["w"]["v"], "g": 2 * p["w"]["g"]}}
    y2, _ = wn.apply(p2, state, x)
    np.testing.assert_allclose(y2 - p["b"][None], 2 * (y - p["b"][None]), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda p: jnp.sum(wn.apply(p, state, x)[0] ** 2))(p)
    assert grads["w"]["v"].shape == (4, 3) and grads["w"]["g"].shape == (3,)
    with pytest.raises(ValueError, match="WeightNorm: the wrapped layer 'dense' has no "
                                         "parameter 'kernel'"):
        layers.WeightNorm(dense, param="kernel").init(KEY, (4,))


@pytest.mark.float32
def test_spectral_norm_state_is_the_power_iteration_and_bounds_the_weight():
    conv = layers.Conv2D(3, 2)
    sn = layers.SpectralNorm(conv, steps=1)
    _, p, state = sn.init(KEY, (4, 4, 2))
    assert state["u"].shape == (2 * 2 * 2,) and state["layer"] == {}
    x = normal(3, 2, 4, 4, 2)
    for _ in range(60):  # training steps advance u
        _, state = sn.apply(p, state, x, train=True)
    w = np.asarray(p["w"]).reshape(8, 3)
    sigma = np.linalg.svd(w, compute_uv=False)[0]
    y, same = sn.apply(p, state, x)  # inference: u unchanged
    np.testing.assert_array_equal(same["u"], state["u"])
    expected, _ = conv.apply({**p, "w": p["w"] / sigma}, {}, x)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    g = jax.grad(lambda p: jnp.sum(sn.apply(p, state, x, train=True)[0]))(p)
    assert g["w"].shape == p["w"].shape and bool(jnp.all(jnp.isfinite(g["w"])))


@pytest.mark.float32
def test_new_layer_messages():
    with pytest.raises(ValueError, match="Conv2D: groups=4 must divide features=6"):
        layers.Conv2D(6, 3, groups=4)
    with pytest.raises(ValueError, match="Conv2D: groups=2 must divide the input's 3 channels"):
        layers.Conv2D(4, 3, groups=2).init(KEY, (5, 5, 3))
    with pytest.raises(ValueError, match="GroupNorm: groups=3 must divide the 4 channels"):
        layers.GroupNorm(3).init(KEY, (2, 2, 4))
    with pytest.raises(ValueError, match="AdaptiveAvgPool2D: output_size 6 along H exceeds"):
        layers.AdaptiveAvgPool2D(6).init(KEY, (5, 7, 2))
    with pytest.raises(ValueError, match="SpectralNorm: steps must be a positive int"):
        layers.SpectralNorm(layers.Dense(2), steps=0)
    with pytest.raises(TypeError, match="WeightNorm: layer must be a Layer"):
        layers.WeightNorm(layers.Dense)
