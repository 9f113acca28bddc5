"""Transposed convolution, 3-D convolution, adaptive average and global max pooling:
each against an independent evaluation of its definition (the adjoint identity, direct
numpy loops), and their validation messages.

tests/test_primitives.py and tests/test_jvp.py run the registered examples through
fdl.check (rule vs autodiff vs finite differences, tangent, adjointness).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl import check
from fdl.ops import (adaptive_avg_pool2d, conv2d, conv3d, conv_transpose1d, conv_transpose2d,
                     global_max_pool)
from fdl.ops.conv_transpose import transpose_crops
from conftest import normal


def _scatter_numpy(x, w, b, s, d, crops):
    """Transposed convolution by its definition: every input pixel scatters X[i]·W[j]
    to s·i + d·j − lo, then the crops."""
    n, h, wd, _ = x.shape
    kh, kw, _, c_out = w.shape
    full = (s[0] * (h - 1) + d[0] * (kh - 1) + 1, s[1] * (wd - 1) + d[1] * (kw - 1) + 1)
    (lo_h, hi_h), (lo_w, hi_w) = crops
    out_h, out_w = full[0] - lo_h - hi_h, full[1] - lo_w - hi_w
    z = np.zeros((n, out_h, out_w, c_out)) + b
    for i, j, a, c in itertools.product(range(h), range(wd), range(kh), range(kw)):
        p, q = s[0] * i + d[0] * a - lo_h, s[1] * j + d[1] * c - lo_w
        if 0 <= p < out_h and 0 <= q < out_w:
            z[:, p, q, :] += x[:, i, j, :] @ w[a, c]
    return z


# (x shape, w shape, stride, padding, dilation)
TRANSPOSE_CASES = [
    ((2, 3, 3, 2), (3, 3, 2, 4), (2, 2), "SAME", (1, 1)),
    ((1, 4, 2, 3), (2, 3, 3, 2), (1, 2), "VALID", (1, 1)),
    ((1, 3, 4, 1), (3, 2, 1, 2), (2, 3), ((1, 2), (0, 1)), (2, 1)),
    ((2, 2, 3, 1), (1, 2, 1, 1), (3, 3), "SAME", (1, 1)),   # k_d < s: hi < 0, zeros appended
]


@pytest.mark.x64
@pytest.mark.parametrize("xs, ws, s, padding, d", TRANSPOSE_CASES)
def test_conv_transpose2d_is_the_scatter_and_the_adjoint_of_conv2d(xs, ws, s, padding, d):
    x, w, b = normal(0, *xs), normal(1, *ws), normal(2, ws[-1])
    z = conv_transpose2d(x, w, b, s, padding, d)
    extents = [di * (k - 1) + 1 for di, k in zip(d, ws[:2])]
    crops = transpose_crops(padding, xs[1:3], extents, s)
    np.testing.assert_allclose(z, _scatter_numpy(np.asarray(x), np.asarray(w), np.asarray(b),
                                                 s, d, crops), rtol=1e-12, atol=1e-12)
    if padding == "SAME":
        assert z.shape[1:3] == (s[0] * xs[1], s[1] * xs[2])
    # ⟨conv(y, Wᵀ), x⟩ = ⟨y, conv_transpose(x, W)⟩ (bias 0), conv padded by the crops
    y = normal(3, *z.shape)
    if min(hi for _, hi in crops) >= 0:
        zero = jnp.zeros((ws[2],))
        lhs = jnp.vdot(conv2d(y, jnp.swapaxes(w, 2, 3), zero, s, crops, d), x)
        rhs = jnp.vdot(y, conv_transpose2d(x, w, jnp.zeros((ws[3],)), s, padding, d))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.x64
@pytest.mark.parametrize("xs, ws, s, padding, d", TRANSPOSE_CASES)
def test_conv_transpose2d_input_gradient_is_the_forward_convolution(xs, ws, s, padding, d):
    """∂L/∂X = conv2d(G, Wᵀ) with the crops as padding; the backward calls it."""
    x, w, b = normal(4, *xs), normal(5, *ws), normal(6, ws[-1])
    z, vjp = jax.vjp(lambda x: conv_transpose2d(x, w, b, s, padding, d), x)
    g = normal(7, *z.shape)
    (dx,) = vjp(g)
    extents = [di * (k - 1) + 1 for di, k in zip(d, ws[:2])]
    crops = transpose_crops(padding, xs[1:3], extents, s)
    keep = [z.shape[1 + a] + min(crops[a][1], 0) for a in range(2)]
    pads = tuple((lo, max(hi, 0)) for lo, hi in crops)
    expected = conv2d(g[:, :keep[0], :keep[1]], jnp.swapaxes(w, 2, 3), jnp.zeros((ws[2],)), s,
                      pads, d)
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)
    check.vjp(conv_transpose2d, x, w, b, s, padding, d).raise_if_failed()
    check.jvp(conv_transpose2d, x, w, b, s, padding, d).raise_if_failed()


@pytest.mark.x64
def test_conv_transpose1d_is_the_2d_one_on_a_unit_axis():
    x, w, b = normal(8, 2, 5, 3), normal(9, 3, 3, 2), normal(10, 2)
    z = conv_transpose1d(x, w, b, 2, ((1, 0),), 2)
    z2 = conv_transpose2d(x[:, None], w[None], b, (1, 2), ((0, 0), (1, 0)), (1, 2))[:, 0]
    np.testing.assert_allclose(z, z2, rtol=1e-13)
    assert z.shape == (2, 2 * 4 + 2 * 2 + 1 - 1, 2)


@pytest.mark.float32
def test_conv_transpose_float32_and_messages():
    x, w, b = normal(11, 1, 3, 3, 2), normal(12, 2, 2, 2, 3), normal(13, 3)
    assert conv_transpose2d(x, w, b, 2).shape == (1, 6, 6, 3)
    assert conv_transpose2d(x, w, b, 2).dtype == jnp.float32
    with pytest.raises(ValueError, match="conv_transpose2d: padding must be 'SAME', 'VALID'"):
        conv_transpose2d(x, w, b, 2, "same")
    with pytest.raises(ValueError, match="conv_transpose2d: x has C_in = 2 .* but w has C_in = 3"):
        conv_transpose2d(x, normal(0, 2, 2, 3, 3), b)
    with pytest.raises(ValueError, match="conv_transpose2d: along H the transposed convolution "
                                         "writes 4 positions but padding crops 4"):
        conv_transpose2d(x, w, b, 1, ((2, 2), (0, 0)))
    with pytest.raises(ValueError, match="conv_transpose1d: stride must be a positive int"):
        conv_transpose1d(x[:, 0], w[0], b, 0)


# --------------------------------------------------------------------------- #


def _conv3d_numpy(x, w, b, s, pads, d):
    n, dd, hh, ww, _ = x.shape
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    k = w.shape[:3]
    o = [(xp.shape[1 + a] - (d[a] * (k[a] - 1) + 1)) // s[a] + 1 for a in range(3)]
    y = np.zeros((n, *o, w.shape[-1])) + b
    for i in itertools.product(*map(range, o)):
        for j in itertools.product(*map(range, k)):
            p = tuple(s[a] * i[a] + d[a] * j[a] for a in range(3))
            y[(slice(None), *i)] += xp[(slice(None), *p)] @ w[j]
    return y


@pytest.mark.x64
def test_conv3d_is_its_definition_and_checks():
    x, w, b = normal(14, 2, 4, 3, 5, 2), normal(15, 2, 2, 3, 2, 3), normal(16, 3)
    s, pads, d = (2, 1, 1), ((1, 0), (0, 1), (1, 1)), (1, 1, 2)
    np.testing.assert_allclose(conv3d(x, w, b, s, pads, d),
                               _conv3d_numpy(*map(np.asarray, (x, w, b)), s, pads, d),
                               rtol=1e-12, atol=1e-12)
    assert conv3d(x, w, b).shape == (2, 4, 3, 5, 3)
    # the rule (no finite differences: a batch of kernels is slow on XLA:CPU for 3-D)
    check.vjp(conv3d, x, w, b, s, pads, d, finite_differences=False).raise_if_failed()
    with pytest.raises(ValueError, match="conv3d: along D the dilated kernel spans 5"):
        conv3d(x, w, b, 1, "VALID", (4, 1, 1))


# --------------------------------------------------------------------------- #


def _adaptive_numpy(x, o):
    n, h, w, c = x.shape
    y = np.zeros((n, *o, c))
    for i, j in itertools.product(range(o[0]), range(o[1])):
        h0, h1 = (i * h) // o[0], -(-((i + 1) * h) // o[0])
        w0, w1 = (j * w) // o[1], -(-((j + 1) * w) // o[1])
        y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return y


@pytest.mark.x64
@pytest.mark.parametrize("shape, o", [((2, 7, 5, 3), (3, 2)), ((1, 6, 6, 2), (3, 3)),
                                      ((1, 4, 5, 1), (1, 1)), ((1, 5, 4, 2), (5, 4))])
def test_adaptive_avg_pool2d_is_the_mean_over_its_bins(shape, o):
    x = normal(17, *shape)
    y = adaptive_avg_pool2d(x, o)
    np.testing.assert_allclose(y, _adaptive_numpy(np.asarray(x), o), rtol=1e-12)
    g = normal(18, *y.shape)
    (dx,) = jax.vjp(lambda x: adaptive_avg_pool2d(x, o), x)[1](g)
    # adjointness with the numpy definition: ⟨A(x'), g⟩ = ⟨x', Aᵀg⟩ for a fresh x'
    x2 = normal(19, *shape)
    np.testing.assert_allclose(np.vdot(_adaptive_numpy(np.asarray(x2), o), g),
                               jnp.vdot(x2, dx), rtol=1e-12)


@pytest.mark.float32
def test_adaptive_and_global_max_pool_float32_and_messages():
    x = normal(20, 2, 4, 6, 3)
    assert adaptive_avg_pool2d(x, 2).shape == (2, 2, 2, 3)
    np.testing.assert_allclose(global_max_pool(x), np.asarray(x).max(axis=(1, 2)))
    with pytest.raises(ValueError, match="adaptive_avg_pool2d: output_size 5 along H exceeds"):
        adaptive_avg_pool2d(x, (5, 2))
    with pytest.raises(ValueError, match="adaptive_avg_pool2d: output_size must be a positive"):
        adaptive_avg_pool2d(x, 0)
    with pytest.raises(ValueError, match="global_max_pool: x must have 4 dimension"):
        global_max_pool(x[0])


@pytest.mark.x64
def test_global_max_pool_routes_each_cotangent_to_its_argmax():
    x = normal(21, 2, 3, 4, 5)
    g = normal(22, 2, 5)
    (dx,) = jax.vjp(global_max_pool, x)[1](g)
    xf = np.asarray(x).reshape(2, 12, 5)
    expected = np.zeros_like(xf)
    for n, c in itertools.product(range(2), range(5)):
        expected[n, xf[n, :, c].argmax(), c] = g[n, c]
    np.testing.assert_array_equal(dx, expected.reshape(x.shape))
    sw = global_max_pool.switches(x)
    np.testing.assert_array_equal(sw, xf.argmax(axis=1))
    dy = jax.jvp(global_max_pool, (x,), (g[:, None, None, :] * jnp.ones_like(x),))[1]
    np.testing.assert_allclose(dy, g, rtol=1e-14)


# --------------------------------------------------------------------------- #
# grouped and depthwise convolution
# --------------------------------------------------------------------------- #


@pytest.mark.x64
@pytest.mark.parametrize("c_in, c_out, groups, stride, padding", [
    (4, 6, 2, (2, 1), "SAME"), (3, 3, 3, 1, "VALID"), (6, 4, 2, 1, ((1, 0), (2, 1)))])
def test_grouped_conv2d_is_per_group_convolutions_side_by_side(c_in, c_out, groups, stride,
                                                               padding):
    from fdl.ops import conv2d
    x, w, b = normal(30, 2, 5, 6, c_in), normal(31, 3, 2, c_in // groups, c_out), normal(32, c_out)
    y = conv2d(x, w, b, stride, padding, 1, groups)
    ci, co = c_in // groups, c_out // groups
    parts = [conv2d(x[..., g * ci:(g + 1) * ci], w[..., g * co:(g + 1) * co],
                    b[g * co:(g + 1) * co], stride, padding, 1) for g in range(groups)]
    np.testing.assert_allclose(y, jnp.concatenate(parts, axis=-1), rtol=1e-12, atol=1e-12)
    # gradients too: the grouped rule against the per-group rules
    gy = normal(33, *y.shape)
    dx, dw, db = jax.vjp(lambda x, w, b: conv2d(x, w, b, stride, padding, 1, groups), x, w, b)[1](gy)
    for g in range(groups):
        sl_x, sl_w = slice(g * ci, (g + 1) * ci), slice(g * co, (g + 1) * co)
        pdx, pdw, _ = jax.vjp(lambda x, w, b: conv2d(x, w, b, stride, padding, 1),
                              x[..., sl_x], w[..., sl_w], b[sl_w])[1](gy[..., sl_w])
        np.testing.assert_allclose(dx[..., sl_x], pdx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw[..., sl_w], pdw, rtol=1e-12, atol=1e-12)
    check.vjp(conv2d, x, w, b, stride, padding, 1, groups).raise_if_failed()
    check.jvp(conv2d, x, w, b, stride, padding, 1, groups).raise_if_failed()


@pytest.mark.x64
def test_depthwise_conv1d_filters_each_channel_alone():
    from fdl.ops import conv1d
    x, w, b = normal(34, 2, 7, 3), normal(35, 3, 1, 3), normal(36, 3)
    y = conv1d(x, w, b, 1, "VALID", 1, 3)
    xn, wn = np.asarray(x), np.asarray(w)
    expected = np.stack([sum(xn[:, j:j + 5, c] * wn[j, 0, c] for j in range(3)) for c in range(3)],
                        axis=-1) + np.asarray(b)
    np.testing.assert_allclose(y, expected, rtol=1e-12)


@pytest.mark.float32
def test_grouped_conv_messages():
    from fdl.ops import conv1d, conv2d
    x = normal(37, 1, 4, 4, 4)
    assert conv2d(x, normal(38, 3, 3, 2, 6), jnp.zeros(6), groups=2).shape == (1, 4, 4, 6)
    with pytest.raises(ValueError, match=r"conv2d: x has C_in = 4 channels .* reads 4 per group "
                                         r"× groups=2 = 8; w's I axis must be C_in/groups = 2"):
        conv2d(x, normal(38, 3, 3, 4, 6), jnp.zeros(6), groups=2)
    with pytest.raises(ValueError, match="conv2d: x has C_in = 4 .* groups must divide C_in = 4"):
        conv2d(x, normal(38, 3, 3, 1, 6), jnp.zeros(6), groups=3)
    with pytest.raises(ValueError, match="conv2d: groups=2 must divide C_out = 5"):
        conv2d(x, normal(38, 3, 3, 2, 5), jnp.zeros(5), groups=2)
    with pytest.raises(ValueError, match="conv1d: groups must be a positive int, got 0"):
        conv1d(x[:, 0], normal(38, 3, 4, 4), jnp.zeros(4), groups=0)


# --------------------------------------------------------------------------- #
# dilated pooling
# --------------------------------------------------------------------------- #


def _pool_numpy(x, k, s, pads, d, reduce):
    """Pooling by its definition: taps s·i + d·j − lo inside the image only."""
    n, h, w, c = x.shape
    (lo_h, hi_h), (lo_w, hi_w) = pads
    o = [(h + lo_h + hi_h - (d[0] * (k[0] - 1) + 1)) // s[0] + 1,
         (w + lo_w + hi_w - (d[1] * (k[1] - 1) + 1)) // s[1] + 1]
    y = np.zeros((n, *o, c))
    for i, j in itertools.product(range(o[0]), range(o[1])):
        taps = [x[:, p, q] for a in range(k[0]) for b in range(k[1])
                for p, q in [(s[0] * i + d[0] * a - lo_h, s[1] * j + d[1] * b - lo_w)]
                if 0 <= p < h and 0 <= q < w]
        y[:, i, j] = reduce(np.stack(taps), axis=0)
    return y


@pytest.mark.x64
@pytest.mark.parametrize("k, s, pads, d", [((2, 2), (1, 1), ((0, 0), (0, 0)), (2, 3)),
                                           ((3, 2), (2, 1), ((2, 1), (1, 1)), (2, 2))])
def test_dilated_pools_are_their_definition(k, s, pads, d):
    from fdl.ops import avg_pool2d, max_pool2d
    x = normal(40, 2, 7, 8, 2)
    np.testing.assert_allclose(max_pool2d(x, k, s, pads, d),
                               _pool_numpy(np.asarray(x), k, s, pads, d, np.max), rtol=1e-14)
    np.testing.assert_allclose(avg_pool2d(x, k, s, pads, d),
                               _pool_numpy(np.asarray(x), k, s, pads, d, np.mean), rtol=1e-12)
    check.vjp(avg_pool2d, x, k, s, pads, d).raise_if_failed()
    check.jvp(max_pool2d, x, k, s, pads, d, finite_differences=False).raise_if_failed()


@pytest.mark.float32
def test_dilated_pool_messages():
    from fdl.ops import max_pool2d
    x = normal(41, 1, 4, 4, 1)
    assert max_pool2d(x, 2, 1, "VALID", 2).shape == (1, 2, 2, 1)
    with pytest.raises(ValueError, match="max_pool2d: dilation must be a positive int"):
        max_pool2d(x, 2, 1, "VALID", 0)
    with pytest.raises(ValueError, match="max_pool2d: along H the window spans 5"):
        max_pool2d(x, 2, 1, "VALID", 4)


# --------------------------------------------------------------------------- #
# reflect and circular padding
# --------------------------------------------------------------------------- #


@pytest.mark.x64
@pytest.mark.parametrize("mode, np_mode", [("reflect", "reflect"), ("circular", "wrap")])
def test_pad_is_numpys_and_its_backward_is_the_adjoint(mode, np_mode):
    from fdl.ops import pad
    x = normal(50, 2, 5, 4, 3)
    pads = ((0, 0), (3, 2), (1, 3), (0, 0))
    y = pad(x, pads, mode)
    np.testing.assert_array_equal(y, np.pad(np.asarray(x), pads, mode=np_mode))
    g = normal(51, *y.shape)
    (dx,) = jax.vjp(lambda x: pad(x, pads, mode), x)[1](g)
    x2 = normal(52, *x.shape)  # ⟨P x', g⟩ = ⟨x', Pᵀ g⟩ with numpy's P
    np.testing.assert_allclose(np.vdot(np.pad(np.asarray(x2), pads, mode=np_mode), g),
                               jnp.vdot(x2, dx), rtol=1e-12)
    check.vjp(pad, x, pads, mode).raise_if_failed()


@pytest.mark.float32
def test_conv_layer_with_reflect_padding_is_pad_then_valid_and_messages():
    from fdl import layers
    from fdl.ops import conv2d, pad
    layer = layers.Conv2D(3, 3, padding="reflect")
    shape, p, _ = layer.init(jax.random.key(0), (5, 6, 2))
    assert shape == (5, 6, 3)
    x = normal(53, 2, 5, 6, 2)
    y, _ = layer.apply(p, {}, x)
    expected = conv2d(pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), "reflect"), p["w"], p["b"], 1,
                      "VALID")
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert layers.Conv1D(2, 4, padding="circular").init(jax.random.key(0), (7, 1))[0] == (7, 2)
    with pytest.raises(ValueError, match="pad: mode must be one of"):
        pad(x, ((0, 0),) * 4, "edge")
    with pytest.raises(ValueError, match=r"pad: reflect padding of axis 1 by \(5, 0\) exceeds"):
        pad(x, ((0, 0), (5, 0), (0, 0), (0, 0)), "reflect")
    with pytest.raises(ValueError, match="ConvTranspose2D: padding='reflect' is for convolutions"):
        layers.ConvTranspose2D(3, 3, padding="reflect")
