"""conv2d, conv1d and the pools: forward against lax, closed-form gradients,
configurations beyond the registry examples, and validation messages.

tests/test_primitives.py runs every registered example through fdl.check; here
are the geometries and expectations that table does not reach.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import fdl
from fdl import check
from fdl.ops import avg_pool2d, conv1d, conv2d, global_avg_pool, max_pool2d
from conftest import normal

pytestmark = pytest.mark.x64  # float64 rules and closed forms to 1e-10


def _lax_conv(x, w, b, stride, padding, dilation):
    nd = x.ndim - 2
    pair = lambda a: (a,) * nd if isinstance(a, int) else tuple(a)
    spec = ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NWC", "WIO", "NWC")
    y = lax.conv_general_dilated(x, w, pair(stride), padding, rhs_dilation=pair(dilation),
                                 dimension_numbers=spec)
    return y + b.reshape((1,) * (nd + 1) + b.shape)


# (x shape, w shape, stride, padding, dilation): stride 2, dilation 2, every kind of
# padding, non-square images and kernels, batch 1, one channel, unread trailing pixels
CONV2D_CASES = [
    ((2, 5, 5, 3), (3, 3, 3, 4), 1, "SAME", 1),
    ((1, 7, 4, 1), (2, 3, 1, 1), 2, "SAME", 1),
    ((2, 6, 7, 2), (3, 2, 2, 3), (2, 3), "VALID", 1),
    ((1, 8, 6, 2), (3, 3, 2, 1), 1, "VALID", 2),
    ((2, 7, 5, 1), (2, 2, 1, 2), 3, "VALID", 1),                 # rows 6 and col 4 unread
    ((1, 5, 6, 2), (2, 3, 2, 2), (1, 2), ((3, 4), (0, 5)), 1),   # padding beyond the kernel
    ((1, 9, 7, 1), (3, 2, 1, 3), 2, "SAME", (2, 3)),
]


# k_h·k_w·C_in above the im2col limit: the kernel gradient takes the per-offset path
WIDE_CASES = [
    ((2, 6, 5, 16), (3, 3, 16, 3), 1, "SAME", 1),
    ((1, 9, 8, 15), (3, 4, 15, 2), 2, ((1, 2), (0, 3)), 1),
    ((2, 9, 9, 40), (2, 2, 40, 2), (2, 1), "VALID", 2),
]


@pytest.mark.parametrize("xs, ws, stride, padding, dilation", WIDE_CASES)
def test_conv2d_rule_on_the_per_offset_kernel_gradient_path(xs, ws, stride, padding, dilation):
    from fdl.ops.conv import _IM2COL_MAX_K
    assert ws[0] * ws[1] * ws[2] > _IM2COL_MAX_K
    x, w, b = normal(6, *xs), normal(7, *ws), normal(8, ws[-1])
    report = check.vjp(conv2d, x, w, b, stride, padding, dilation, jit=True)
    report.raise_if_failed()
    assert report.worst("autodiff") <= 1e-10


@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONV2D_CASES + WIDE_CASES)
def test_both_kernel_gradient_forms_equal_jax_transpose(xs, ws, stride, padding, dilation):
    """∂L/∂W as matmuls (im2col or per offset; CPU) and as the correlation of X with G
    (other backends) both equal JAX's own transpose of the convolution."""
    from fdl.ops.conv import _conv2d_kernel_grad, _conv2d_kernel_grad_correlation, _geometry
    x, w = normal(9, *xs), normal(10, *ws)
    s, d, pads = _geometry(x.shape, w.shape, stride, padding, dilation)
    y, vjp = jax.vjp(lambda w: lax.conv_general_dilated(
        x, w, s, pads, rhs_dilation=d, dimension_numbers=("NHWC", "HWIO", "NHWC")), w)
    g = normal(11, *y.shape)
    (reference,) = vjp(g)  # JAX's own transpose of the convolution
    np.testing.assert_allclose(_conv2d_kernel_grad(x, g, s, d, pads, ws[:2]), reference,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_conv2d_kernel_grad_correlation(x, g, s, d, pads, ws[:2]),
                               reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONV2D_CASES)
def test_conv2d_forward_matches_lax(xs, ws, stride, padding, dilation):
    x, w, b = normal(0, *xs), normal(1, *ws), normal(2, ws[-1])
    y = conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    np.testing.assert_allclose(y, _lax_conv(x, w, b, stride, padding, dilation), rtol=1e-13,
                               atol=1e-13)
    if padding == "SAME":
        s = (stride,) * 2 if isinstance(stride, int) else stride
        assert y.shape[1:3] == (-(-xs[1] // s[0]), -(-xs[2] // s[1]))


@pytest.mark.parametrize("xs, ws, stride, padding, dilation",
                         [CONV2D_CASES[i] for i in (1, 4, 5, 6)])  # not in the registry
def test_conv2d_rule_beyond_the_registry(xs, ws, stride, padding, dilation):
    x, w, b = normal(3, *xs), normal(4, *ws), normal(5, ws[-1])
    report = check.vjp(conv2d, x, w, b, stride, padding, dilation, jit=True)
    report.raise_if_failed()
    assert report.worst("finite differences") <= 1e-8


def test_conv2d_gradients_in_closed_form():
    """1×1 kernel, stride 1: Y = X W + b per pixel, so the conv is `linear` on pixels."""
    x, w, b = normal(6, 2, 3, 4, 3), normal(7, 1, 1, 3, 2), normal(8, 2)
    g = normal(9, 2, 3, 4, 2)
    pullback = lambda x, w, b, g: jax.vjp(lambda x, w, b: conv2d(x, w, b, padding="VALID"),
                                           x, w, b)[1](g)
    dx, dw, db = jax.jit(pullback)(x, w, b, g)
    x, w, g = np.asarray(x), np.asarray(w), np.asarray(g)
    np.testing.assert_allclose(dx, g @ w[0, 0].T, rtol=1e-12)
    np.testing.assert_allclose(dw[0, 0], x.reshape(-1, 3).T @ g.reshape(-1, 2), rtol=1e-12)
    np.testing.assert_allclose(db, g.sum(axis=(0, 1, 2)), rtol=1e-12)


CONV1D_CASES = [
    ((2, 9, 3), (3, 3, 4), 1, "SAME", 1),
    ((1, 11, 1), (4, 1, 2), 2, "SAME", 1),
    ((2, 10, 2), (3, 2, 1), 3, "VALID", 2),
    ((1, 6, 2), (2, 2, 2), 1, ((3, 2),), 1),
]


@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONV1D_CASES)
def test_conv1d_forward_matches_lax(xs, ws, stride, padding, dilation):
    x, w, b = normal(10, *xs), normal(11, *ws), normal(12, ws[-1])
    y = conv1d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    np.testing.assert_allclose(y, _lax_conv(x, w, b, stride, padding, dilation), rtol=1e-13,
                               atol=1e-13)


@pytest.mark.parametrize("xs, ws, stride, padding, dilation",
                         [CONV1D_CASES[i] for i in (1, 3)])  # not in the registry
def test_conv1d_rule_beyond_the_registry(xs, ws, stride, padding, dilation):
    x, w, b = normal(10, *xs), normal(11, *ws), normal(12, ws[-1])
    check.vjp(conv1d, x, w, b, stride, padding, dilation, jit=True).raise_if_failed()


def test_conv2d_vmap_of_grad_gives_per_example_kernel_gradients():
    x, w, b = normal(13, 3, 1, 5, 4, 2), normal(14, 3, 3, 2, 2), normal(15, 2)
    loss = lambda x, w: jnp.sum(conv2d(x, w, b, 2, "SAME") ** 2)
    per_example = jax.jit(jax.vmap(jax.grad(loss, argnums=1), in_axes=(0, None)))(x, w)
    grad = jax.jit(jax.grad(loss, argnums=1))
    for i in range(3):
        np.testing.assert_allclose(per_example[i], grad(x[i], w), rtol=1e-12)


def test_forward_mode_runs_the_tangent_rule_in_either_mode():
    x, w, b = normal(16, 1, 4, 4, 1), normal(17, 2, 2, 1, 1), normal(18, 1)
    f = lambda x: conv2d(x, w, b)
    _, t = jax.jvp(f, (x,), (x,))  # the hand tangent rule: dY = dX ⋆ W
    with fdl.gradient_mode("autodiff"):
        _, t_auto = jax.jvp(f, (x,), (x,))
    np.testing.assert_allclose(t, conv2d(x, w, jnp.zeros(1)), rtol=1e-12)
    np.testing.assert_allclose(t_auto, conv2d(x, w, jnp.zeros(1)), rtol=1e-12)


X4 = jnp.ones((1, 5, 5, 3))
W4 = jnp.ones((3, 3, 3, 2))
B4 = jnp.ones(2)


@pytest.mark.parametrize(
    "fn, args, kwargs, error, match",
    [
        (conv2d, (jnp.ones((5, 5, 3)), W4, B4), {}, ValueError,
         r"conv2d: x must have 4 dimension\(s\) \(N×H×W×C_in\), got shape \(5, 5, 3\)"),
        (conv2d, (X4, jnp.ones((3, 3, 3)), B4), {}, ValueError,
         r"conv2d: w must have 4 dimension"),
        (conv2d, (X4, jnp.ones((3, 3, 4, 2)), B4), {}, ValueError,
         r"conv2d: x has C_in = 3 .* but w has C_in = 4 .*; the last dimension of x must "
         r"equal the third of w"),
        (conv2d, (X4, W4, jnp.ones(3)), {}, ValueError,
         r"conv2d: b must have shape \(2,\) \(C_out\) for w \(3, 3, 3, 2\), got \(3,\)"),
        (conv2d, (X4.astype(jnp.int32), W4, B4), {}, TypeError,
         r"conv2d: x must be a floating-point array, got dtype int32"),
        (conv2d, (X4, W4, B4), {"padding": "same"}, ValueError,
         r"conv2d: padding must be 'SAME', 'VALID' .* got 'same'; did you mean 'SAME'\?"),
        (conv2d, (X4, W4, B4), {"padding": "FULL"}, ValueError,
         r"conv2d: padding must be .*'FULL'"),
        (conv2d, (X4, W4, B4), {"padding": (1, 1)}, ValueError,
         r"conv2d: explicit padding must be 2 pair\(s\) of non-negative ints"),
        (conv2d, (X4, W4, B4), {"stride": 0}, ValueError,
         r"conv2d: stride must be a positive int or a sequence of 2 such ints .* got 0"),
        (conv2d, (X4, W4, B4), {"dilation": (1, 2, 3)}, ValueError,
         r"conv2d: dilation must be"),
        (conv2d, (X4, jnp.ones((3, 6, 3, 2)), B4), {"padding": "VALID"}, ValueError,
         r"conv2d: along W the dilated kernel spans 6 but the padded input has only 5"),
        (conv2d, (X4, W4, B4), {"padding": "VALID", "dilation": 3}, ValueError,
         r"conv2d: along H the dilated kernel spans 7"),
        (conv1d, (jnp.ones((1, 5, 3)), jnp.ones((3, 2, 2)), B4), {}, ValueError,
         r"conv1d: x has C_in = 3 \(shape \(1, 5, 3\)\) but w has C_in = 2"),
        (conv1d, (jnp.ones((1, 5, 3)), jnp.ones((3, 3, 2)), B4), {"padding": ((1, 1), (1, 1))},
         ValueError, r"conv1d: explicit padding must be 1 pair"),
    ],
)
def test_conv_validation(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


# --------------------------------------------------------------------------- #
# pools
# --------------------------------------------------------------------------- #


def test_avg_pool_valid_non_overlapping_gradient_is_one_over_window_area():
    x = normal(20, 2, 7, 8, 3)  # row 6 and nothing else left over for a 2×4 window
    grad = jax.jit(jax.grad(lambda x: jnp.sum(avg_pool2d(x, (2, 4)))))(x)
    expected = np.zeros(x.shape)
    expected[:, :6, :8, :] = 1 / 8
    np.testing.assert_allclose(grad, expected, rtol=1e-15)


def test_avg_pool_same_excludes_padding_from_the_count():
    x = jnp.full((1, 5, 5, 2), 3.0)
    y = avg_pool2d(x, 3, 1, "SAME")
    np.testing.assert_allclose(y, 3.0, rtol=1e-15)  # a constant stays constant at borders
    # gradient of the sum: pixel p receives Σ over windows containing it of 1/count
    grad = jax.jit(jax.grad(lambda x: jnp.sum(avg_pool2d(x, 3, 1, "SAME"))))(x)
    per_axis = np.array([1 / 2 + 1 / 3, 1 / 2 + 2 / 3, 1.0, 1 / 2 + 2 / 3, 1 / 2 + 1 / 3])
    np.testing.assert_allclose(grad[0, :, :, 0], np.outer(per_axis, per_axis), rtol=1e-13)


def test_avg_pool_forward_matches_numpy():
    x = np.asarray(normal(21, 2, 6, 5, 2))
    y = avg_pool2d(jnp.asarray(x), (3, 2), (2, 2), ((1, 0), (0, 1)))
    xp = np.pad(x, ((0, 0), (1, 0), (0, 1), (0, 0)), constant_values=np.nan)
    ref = np.stack([np.stack([np.nanmean(xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 2], axis=(1, 2))
                              for j in range(3)], 1) for i in range(3)], 1)
    np.testing.assert_allclose(y, ref, rtol=1e-13)


def test_max_pool_forward_and_gradient_route_to_the_arg_max():
    x = np.asarray(normal(22, 2, 6, 6, 3))
    y = max_pool2d(jnp.asarray(x), 2)
    blocks = x.reshape(2, 3, 2, 3, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(2, 3, 3, 3, 4)
    np.testing.assert_array_equal(y, blocks.max(-1))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(max_pool2d(x, 2))))(jnp.asarray(x))
    is_max = x == np.repeat(np.repeat(np.asarray(y), 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(grad, is_max.astype(float))


def test_max_pool_ties_go_to_the_first_maximum_like_autodiff():
    """A constant image ties everywhere: each window's cotangent goes to its top-left
    pixel, and JAX's autodiff of lax.reduce_window (the reference) agrees."""
    x = jnp.ones((1, 5, 5, 1))
    for kwargs in [dict(window=2), dict(window=3, stride=1, padding="SAME"),
                   dict(window=(3, 2), stride=2, padding="VALID")]:
        out = jax.eval_shape(lambda x: max_pool2d(x, **kwargs), x)
        weights = jnp.arange(1.0, 1 + np.prod(out.shape)).reshape(out.shape)
        grad = jax.jit(jax.grad(lambda x: jnp.sum(max_pool2d(x, **kwargs) * weights)))
        manual = grad(x)
        with fdl.gradient_mode("autodiff"):
            reference = grad(x)
        np.testing.assert_array_equal(manual, reference)
    top_left = np.zeros((5, 5))
    top_left[0:4:2, 0:4:2] = 1
    grad = jax.jit(jax.grad(lambda x: jnp.sum(max_pool2d(x, 2))))(x)
    np.testing.assert_array_equal(grad[0, :, :, 0], top_left)


@pytest.mark.parametrize(
    "pool, xs, window, stride, padding",
    [
        (max_pool2d, (1, 12, 12, 1), 12, None, "VALID"),        # 144-pixel window: int32 arg-max
        (max_pool2d, (2, 5, 6, 2), (2, 3), 1, "VALID"),
        (avg_pool2d, (1, 7, 5, 2), 3, 3, "SAME"),
        (avg_pool2d, (1, 5, 5, 1), 2, 2, ((1, 1), (0, 1))),
    ],
)
def test_pool_rules_beyond_the_registry(pool, xs, window, stride, padding):
    size = int(np.prod(xs))  # distinct, well-separated values: the max is differentiable
    x = jnp.asarray((np.random.default_rng(size).permutation(size).reshape(xs) - size / 2) / 20)
    report = check.vjp(pool, x, window, stride, padding, jit=True, max_fd_elements=160)
    report.raise_if_failed()


def test_global_avg_pool_closed_form():
    x = normal(23, 2, 3, 4, 5)
    np.testing.assert_allclose(global_avg_pool(x), x.mean(axis=(1, 2)), rtol=1e-14)
    g = normal(24, 2, 5)
    dx = jax.jit(lambda x, g: jax.vjp(global_avg_pool, x)[1](g)[0])(x, g)
    np.testing.assert_allclose(dx, np.broadcast_to(g[:, None, None, :] / 12, x.shape),
                               rtol=1e-14)


@pytest.mark.parametrize(
    "pool, args, kwargs, error, match",
    [
        (max_pool2d, (jnp.ones((1, 3, 3, 1)), 4), {}, ValueError,
         r"max_pool2d: along H the window spans 4 but the padded input has only 3 \(input 3, "
         r"padding \(0, 0\)\); use padding='SAME', a smaller window, or a larger input"),
        (avg_pool2d, (jnp.ones((1, 6, 3, 1)), (2, 4)), {}, ValueError,
         r"avg_pool2d: along W the window spans 4 but the padded input has only 3"),
        (max_pool2d, (jnp.ones((1, 4, 4, 1)), 2), {"padding": ((2, 0), (0, 0))}, ValueError,
         r"max_pool2d: padding \(2, 0\) along H must be smaller than the window \(2\)"),
        (max_pool2d, (jnp.ones((4, 4, 1)), 2), {}, ValueError,
         r"max_pool2d: x must have 4 dimension\(s\) \(N×H×W×C\), got shape \(4, 4, 1\)"),
        (avg_pool2d, (jnp.ones((1, 4, 4, 1), jnp.int32), 2), {}, TypeError,
         r"avg_pool2d: x must be a floating-point array, got dtype int32"),
        (max_pool2d, (jnp.ones((1, 4, 4, 1)), 0), {}, ValueError,
         r"max_pool2d: window must be a positive int .* got 0"),
        (avg_pool2d, (jnp.ones((1, 4, 4, 1)), 2), {"stride": (1, 1, 1)}, ValueError,
         r"avg_pool2d: stride must be a positive int or a sequence of 2"),
        (avg_pool2d, (jnp.ones((1, 4, 4, 1)), 2), {"padding": "valid"}, ValueError,
         r"did you mean 'VALID'"),
        (global_avg_pool, (jnp.ones((2, 3)),), {}, ValueError,
         r"global_avg_pool: x must have 4 dimension\(s\) \(N×H×W×C\), got shape \(2, 3\)"),
    ],
)
def test_pool_validation(pool, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        pool(*args, **kwargs)
