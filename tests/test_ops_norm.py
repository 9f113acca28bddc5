"""batch_norm, batch_norm_inference, layer_norm, rms_norm: closed-form properties,
configurations beyond the registry examples, and validation messages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check
from fdl.ops import batch_norm, batch_norm_inference, layer_norm, rms_norm
from conftest import normal

pytestmark = pytest.mark.x64  # float64 rules and closed forms to 1e-10


def test_batch_norm_standardises_each_channel_and_returns_the_batch_statistics():
    x = normal(0, 4, 3, 5, 2, scale=3.0, loc=2.0)  # NHWC: statistics over N, H, W
    y, mean, var = batch_norm(x, jnp.ones(2), jnp.zeros(2), 1e-12)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-13)
    np.testing.assert_allclose(jnp.var(y, axis=(0, 1, 2)), 1.0, rtol=1e-10)
    np.testing.assert_allclose(mean, jnp.mean(x, axis=(0, 1, 2)), rtol=1e-13)
    np.testing.assert_allclose(var, jnp.var(x, axis=(0, 1, 2)), rtol=1e-13)
    gamma, beta = jnp.array([2.0, 0.5]), jnp.array([-1.0, 3.0])
    y2, _, _ = batch_norm(x, gamma, beta, 1e-12)
    np.testing.assert_allclose(y2, y * gamma.reshape(1, 1, 1, 2) + beta.reshape(1, 1, 1, 2),
                               rtol=1e-12)


def test_batch_norm_gradient_is_orthogonal_to_shift_and_scale_of_each_channel():
    """y is invariant to x → a·x + b per channel, so ∂L/∂x (through y only) sums to
    zero over each channel and is orthogonal to x̂ there."""
    x, g = normal(1, 6, 3, scale=2.0), normal(2, 6, 3)
    f = lambda x: batch_norm(x, jnp.ones(3) * 1.5, jnp.zeros(3), 1e-12)[0]
    (dx,) = jax.jit(lambda x, g: jax.vjp(f, x)[1](g))(x, g)
    xhat = (x - x.mean(0, keepdims=True)) / x.std(0, keepdims=True)
    np.testing.assert_allclose(dx.sum(0), 0.0, atol=1e-10)
    np.testing.assert_allclose((dx * xhat).sum(0), 0.0, atol=1e-10)


def test_batch_norm_statistics_outputs_have_their_own_gradient():
    """A loss that reads only the returned mean and variance: ∂L/∂x = g_μ/m + 2g_v(x − μ)/m."""
    x = normal(3, 5, 2)
    g_mean, g_var = jnp.array([1.0, -2.0]), jnp.array([0.5, 3.0])
    loss = lambda x: jnp.sum(batch_norm(x, jnp.ones(2), jnp.zeros(2))[1] * g_mean) + \
        jnp.sum(batch_norm(x, jnp.ones(2), jnp.zeros(2))[2] * g_var)
    grad = jax.jit(jax.grad(loss))(x)
    centred = x - x.mean(0, keepdims=True)
    expected = (g_mean.reshape(1, 2) + 2 * g_var.reshape(1, 2) * centred) / 5
    np.testing.assert_allclose(grad, expected, rtol=1e-12)


def test_batch_norm_inference_with_the_batch_statistics_equals_training_mode():
    x = normal(4, 7, 3)
    gamma, beta = normal(5, 3), normal(6, 3)
    y, mean, var = batch_norm(x, gamma, beta, 1e-3)
    np.testing.assert_allclose(batch_norm_inference(x, gamma, beta, mean, var, 1e-3), y,
                               rtol=1e-12)
    # …but its input gradient is the plain per-channel scale γ/σ (no batch coupling)
    (dx,) = jax.jit(lambda x: jax.vjp(
        lambda x: batch_norm_inference(x, gamma, beta, mean, var, 1e-3), x)[1](
            jnp.ones_like(x)))(x)
    np.testing.assert_allclose(dx, jnp.broadcast_to(gamma / jnp.sqrt(var + 1e-3), x.shape),
                               rtol=1e-12)


def test_layer_norm_standardises_each_row_and_its_gradient_is_invariant():
    x = normal(7, 3, 4, 6, scale=5.0, loc=-3.0)
    y = layer_norm(x, jnp.ones(6), jnp.zeros(6), 1e-12)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-13)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-10)
    g = normal(8, 3, 4, 6)
    (dx,) = jax.jit(lambda x, g: jax.vjp(
        lambda x: layer_norm(x, jnp.ones(6), jnp.zeros(6), 1e-12), x)[1](g))(x, g)
    xhat = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    np.testing.assert_allclose(dx.sum(-1), 0.0, atol=1e-10)
    np.testing.assert_allclose((dx * xhat).sum(-1), 0.0, atol=1e-10)


def test_rms_norm_output_has_unit_rms_and_gradient_orthogonal_to_x():
    x = normal(9, 5, 8, scale=4.0)
    y = rms_norm(x, jnp.ones(8), 1e-12)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(y * y, axis=-1)), 1.0, rtol=1e-12)
    g = normal(10, 5, 8)
    (dx,) = jax.jit(lambda x, g: jax.vjp(lambda x: rms_norm(x, jnp.ones(8) * 2, 1e-12), x)[1](
        g))(x, g)
    np.testing.assert_allclose((dx * x).sum(-1), 0.0, atol=1e-11)  # invariant to x → a·x


@pytest.mark.parametrize(
    "prim, args, fd_rtol",
    [   # arguments built in the test, in its precision (float64)
        # a large offset: the centred forward and residuals stay accurate (autodiff at
        # 1e-10; the finite-difference step grows with |x|, so that check is looser)
        (layer_norm, lambda: (normal(11, 3, 5, loc=100.0), normal(12, 5), normal(13, 5), 1e-5),
         1e-4),
        (batch_norm, lambda: (normal(14, 3, 2, 2, 3, loc=50.0), normal(15, 3), normal(16, 3),
                              1e-5), 1e-4),
        (rms_norm, lambda: (normal(20, 2, 2, 9), normal(21, 9), 1e-2), None),
        (batch_norm_inference, lambda: (normal(22, 4, 2), normal(23, 2), normal(24, 2),
                                        normal(25, 2), jnp.array([0.5, 2.0]), 1e-2), None),
    ],
)
def test_norm_rules_beyond_the_registry(prim, args, fd_rtol):
    report = check.vjp(prim, *args(), jit=True, fd_rtol=fd_rtol).raise_if_failed()
    assert report.worst("autodiff") <= 1e-10


def test_forward_mode_runs_the_tangent_rule_in_either_mode():
    x = normal(23, 4, 3)
    f = lambda x: layer_norm(x, jnp.ones(3), jnp.zeros(3), 1e-12)
    _, t = jax.jvp(f, (x,), (x,))  # the hand tangent rule
    with fdl.gradient_mode("autodiff"):
        _, t_auto = jax.jvp(f, (x,), (x,))
    # y is scale-invariant: the tangent along x is 0 in both modes
    np.testing.assert_allclose(t, 0.0, atol=1e-9)
    np.testing.assert_allclose(t_auto, 0.0, atol=1e-9)


X = jnp.ones((4, 3))
C3 = jnp.ones(3)


@pytest.mark.parametrize(
    "fn, args, error, match",
    [
        (batch_norm, (jnp.ones(3), C3, C3), ValueError,
         r"batch_norm: x must have at least 2 dimension\(s\) \(N×…×C, channels last\), "
         r"got shape \(3,\)"),
        (batch_norm, (X, jnp.ones(4), C3), ValueError,
         r"batch_norm: gamma must have shape \(3,\) \(C: one per channel\) for x \(4, 3\), "
         r"got \(4,\)"),
        (batch_norm, (X, C3, jnp.ones((1, 3))), ValueError,
         r"batch_norm: beta must have 1 dimension\(s\) \(C: one per channel\), got shape \(1, 3\)"),
        (batch_norm, (X, C3, C3, 0.0), ValueError, r"batch_norm: eps must be > 0, got 0.0"),
        (batch_norm, (jnp.ones((1, 3)), C3, C3), ValueError,
         r"batch_norm: batch statistics need more than one value per channel"),
        (batch_norm, (X.astype(jnp.int32), C3, C3), TypeError,
         r"batch_norm: x must be a floating-point array, got dtype int32"),
        (batch_norm_inference, (X, C3, C3, C3, -C3), ValueError,
         r"batch_norm_inference: var must be ≥ 0"),
        (batch_norm_inference, (X, C3, C3, jnp.ones(2), C3), ValueError,
         r"batch_norm_inference: mean must have shape \(3,\)"),
        (layer_norm, (X, jnp.ones(4), C3), ValueError,
         r"layer_norm: gamma must have shape \(3,\) \(d: one per feature\) for x \(4, 3\)"),
        (layer_norm, (X, C3, C3, float("inf")), ValueError, r"layer_norm: eps must be finite"),
        (rms_norm, (X, C3, -1e-6), ValueError, r"rms_norm: eps must be > 0"),
        (rms_norm, (X, jnp.ones(3, jnp.int32)), TypeError,
         r"rms_norm: gamma must be a floating-point array"),
    ],
)
def test_norm_validation(fn, args, error, match):
    with pytest.raises(error, match=match):
        fn(*args)
