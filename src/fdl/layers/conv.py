"""Convolution and pooling layers: Conv1D/2D/3D (grouped and depthwise with `groups`),
ConvTranspose1D/2D, MaxPool2D, AvgPool2D, GlobalAvgPool, GlobalMaxPool, AdaptiveAvgPool2D.

Thin `Layer` wrappers over `fdl.ops.conv` and
`fdl.ops.pool`, whose primitives carry the derivations. Batch-first, images
NHWC, kernels HWIO: `init(key, (H, W, C))` (no batch axis) and
`apply(params, state, x)` with `x ∈ ℝ^{N×H×W×C}`; 1-D signals are NWC
(`init(key, (L, C))`). All are stateless (`state == {}`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl import ops
from fdl.ops import ghost
from fdl.layers.base import PROBE, Layer, Shape, has_probe, stateless
from fdl.layers.initializers import Initializer, get_initializer
from fdl.ops.conv import Padding, explicit_padding
from fdl.ops.conv_transpose import transpose_crops
from fdl.ops.pad import PAD_MODES

__all__ = ["AdaptiveAvgPool2D", "AvgPool2D", "Conv1D", "Conv2D", "Conv3D", "ConvTranspose1D",
           "ConvTranspose2D", "GlobalAvgPool", "GlobalMaxPool", "MaxPool2D"]


def _output_sizes(fn: str, sizes, extents, strides, padding, axes: str) -> tuple[int, ...]:
    """Spatial output sizes, or a `ValueError` naming the axis where the window does
    not fit."""
    pads = explicit_padding(padding, sizes, extents, strides)
    return tuple(v.window_output_size(fn, axis, n, e, s, pad)
                 for axis, n, e, s, pad in zip(axes, sizes, extents, strides, pads))


_LAYOUTS = {1: "LC", 2: "HWC", 3: "DHWC"}


def _conv(fn: str, nd: int, features: int, kernel_size: Any, stride: Any, padding: Padding,
          dilation: Any, w_init: str | Initializer, b_init: str | Initializer,
          dtype: Any, groups: int = 1, transpose: bool = False) -> Layer:
    layout = _LAYOUTS[nd]
    v.positive_int(fn, "features", features)
    g = v.positive_int(fn, "groups", groups)
    if features % g:
        raise ValueError(f"{fn}: groups={g} must divide features={features} (each group "
                         "writes features/groups channels)")
    k = v.positive_ints(fn, "kernel_size", kernel_size, nd)
    s = v.positive_ints(fn, "stride", stride, nd)
    d = v.positive_ints(fn, "dilation", dilation, nd)
    border = padding if isinstance(padding, str) and padding in PAD_MODES else None
    if border is not None and transpose:
        raise ValueError(f"{fn}: padding={padding!r} is for convolutions; a transposed "
                         "convolution's padding crops its output ('SAME', 'VALID' or pairs)")
    if border is not None:  # "SAME" geometry, the border filled by fdl.ops.pad
        padding = "SAME"
    v.padding(fn, padding, nd)
    w_init, b_init = get_initializer(w_init), get_initializer(b_init)
    if transpose:
        op = ops.conv_transpose2d if nd == 2 else ops.conv_transpose1d
    else:
        op = {1: ops.conv1d, 2: ops.conv2d, 3: ops.conv3d}[nd]
    ghost_op = {1: ghost.ghost_conv1d, 2: ghost.ghost_conv2d}.get(nd)  # with a probe
    plain = transpose or nd == 3  # no groups argument, no ghost

    extents = [di * (ki - 1) + 1 for di, ki in zip(d, k)]

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict]:
        shape = v.input_shape(fn, input_shape, f"({', '.join(layout)})", rank=len(layout))
        if shape[-1] % g:
            raise ValueError(f"{fn}: groups={g} must divide the input's {shape[-1]} channels "
                             f"(input_shape {shape})")
        if transpose:
            crops = transpose_crops(padding, shape[:-1], extents, s)
            out = tuple(si * (n - 1) + e - lo - hi
                        for n, e, si, (lo, hi) in zip(shape[:-1], extents, s, crops))
            if min(out) < 1:
                raise ValueError(f"{fn}: padding {padding!r} crops every output along some "
                                 f"axis for input_shape {shape}")
        else:
            out = _output_sizes(fn, shape[:-1], extents, s, padding, layout[:-1])
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (*k, shape[-1] // g, features), dtype),
                  "b": b_init(kb, (features,), dtype)}
        return out + (features,), params

    def apply(params: dict, x: jax.Array) -> jax.Array:
        c_in = params["w"].shape[-2] * g
        if jnp.ndim(x) != nd + 2 or jnp.shape(x)[-1] != c_in:
            raise ValueError(
                f"{fn}: input has shape {tuple(jnp.shape(x))} but the layer was built for "
                f"(batch, {', '.join(layout[:-1])}, {c_in}) in N{layout} layout — check the "
                "input_shape passed to init")
        conv_padding = padding
        if border is not None:
            pads = explicit_padding("SAME", jnp.shape(x)[1:-1], extents, s)
            x = ops.pad(x, ((0, 0), *pads, (0, 0)), border)
            conv_padding = "VALID"
        if plain:
            if has_probe(params):
                raise ValueError(f"{fn}: per-example gradient norms (a probe) are not "
                                 "available for this layer; use vmap of grad instead")
            return op(x, params["w"], params["b"], s, conv_padding, d)
        if has_probe(params):  # a probe: per-example gradient norms asked for
            return ghost_op(x, params["w"], params["b"], params[PROBE], s, conv_padding, d, g)
        return op(x, params["w"], params["b"], s, conv_padding, d, g)

    return stateless(fn.lower(), apply, init=init)


def Conv2D(features: int, kernel_size: int | Sequence[int], *,
           stride: int | Sequence[int] = 1, padding: Padding = "SAME",
           dilation: int | Sequence[int] = 1, groups: int = 1,
           w_init: str | Initializer = "glorot_uniform",
           b_init: str | Initializer = "zeros", dtype: Any = jnp.float32) -> Layer:
    """2-D convolution layer (`fdl.ops.conv2d`), NHWC images, HWIO kernel.

    `init(key, (H, W, C_in))` → `(o_h, o_w, features)`; params
    `{"w": (k_h, k_w, C_in, features), "b": (features,)}`. `padding` is
    `"SAME"` (default: `o = ⌈n/s⌉`), `"VALID"` or `((top, bottom), (left,
    right))`; `stride`, `dilation` and `kernel_size` an int or a pair. The
    initialisers see the HWIO fans (`fan_in = k_h k_w C_in/groups`). `padding="reflect"`
    or `"circular"` keeps `"SAME"`'s geometry but fills the border by reflection or
    wrap-around (`fdl.ops.pad`, then a `"VALID"` convolution; Conv1D and Conv3D too).
    `groups` $G$
    splits the channels into $G$ blocks convolved separately (kernel
    `(k_h, k_w, C_in/G, features)`); `groups=C_in` is a depthwise convolution.
    """
    return _conv("Conv2D", 2, features, kernel_size, stride, padding, dilation, w_init,
                 b_init, dtype, groups)


def Conv1D(features: int, kernel_size: int | Sequence[int], *,
           stride: int | Sequence[int] = 1, padding: Padding = "SAME",
           dilation: int | Sequence[int] = 1, groups: int = 1,
           w_init: str | Initializer = "glorot_uniform",
           b_init: str | Initializer = "zeros", dtype: Any = jnp.float32) -> Layer:
    """1-D convolution layer (`fdl.ops.conv1d`), NWC signals, WIO kernel.

    `init(key, (L, C_in))` → `(o, features)`; params
    `{"w": (k, C_in, features), "b": (features,)}`; `padding` is `"SAME"`,
    `"VALID"` or `((lo, hi),)`; `groups` as Conv2D's (kernel `(k, C_in/groups, features)`).
    """
    return _conv("Conv1D", 1, features, kernel_size, stride, padding, dilation, w_init,
                 b_init, dtype, groups)


def Conv3D(features: int, kernel_size: int | Sequence[int], *,
           stride: int | Sequence[int] = 1, padding: Padding = "SAME",
           dilation: int | Sequence[int] = 1, w_init: str | Initializer = "glorot_uniform",
           b_init: str | Initializer = "zeros", dtype: Any = jnp.float32) -> Layer:
    """3-D convolution layer (`fdl.ops.conv3d`), NDHWC volumes, DHWIO kernel.

    `init(key, (D, H, W, C_in))` → `(o_d, o_h, o_w, features)`; params
    `{"w": (k_d, k_h, k_w, C_in, features), "b": (features,)}`; `padding` is `"SAME"`,
    `"VALID"` or three `(lo, hi)` pairs.
    """
    return _conv("Conv3D", 3, features, kernel_size, stride, padding, dilation, w_init,
                 b_init, dtype)


def ConvTranspose2D(features: int, kernel_size: int | Sequence[int], *,
                    stride: int | Sequence[int] = 1, padding: Padding = "SAME",
                    dilation: int | Sequence[int] = 1,
                    w_init: str | Initializer = "glorot_uniform",
                    b_init: str | Initializer = "zeros", dtype: Any = jnp.float32) -> Layer:
    """2-D transposed convolution layer (`fdl.ops.conv_transpose2d`), NHWC, HWIO kernel.

    The adjoint of Conv2D's map: `init(key, (h, w, C_in))` → `(o_h, o_w, features)` with
    `o = s(n − 1) + d(k − 1) + 1 − lo − hi`; `"SAME"` gives `o = s·n` (upsampling by the
    stride), `"VALID"` crops nothing, explicit pairs crop `(lo, hi)`. Params
    `{"w": (k_h, k_w, C_in, features), "b": (features,)}`.
    """
    return _conv("ConvTranspose2D", 2, features, kernel_size, stride, padding, dilation,
                 w_init, b_init, dtype, transpose=True)


def ConvTranspose1D(features: int, kernel_size: int | Sequence[int], *,
                    stride: int | Sequence[int] = 1, padding: Padding = "SAME",
                    dilation: int | Sequence[int] = 1,
                    w_init: str | Initializer = "glorot_uniform",
                    b_init: str | Initializer = "zeros", dtype: Any = jnp.float32) -> Layer:
    """1-D transposed convolution layer (`fdl.ops.conv_transpose1d`), NWC, WIO kernel.

    `init(key, (L, C_in))` → `(o, features)`, `o = s(L − 1) + d(k − 1) + 1 − lo − hi`
    (`"SAME"`: `o = s·L`).
    """
    return _conv("ConvTranspose1D", 1, features, kernel_size, stride, padding, dilation,
                 w_init, b_init, dtype, transpose=True)


def _pool(fn: str, name: str, op, window: Any, stride: Any, padding: Padding,
          dilation: Any = 1) -> Layer:
    k = v.positive_ints(fn, "window", window, 2)
    s = k if stride is None else v.positive_ints(fn, "stride", stride, 2)
    d = v.positive_ints(fn, "dilation", dilation, 2)
    extents = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    v.padding(fn, padding, 2)
    if not isinstance(padding, str):
        for axis, e, pad in zip("HW", extents, padding):
            v.padding_within_window(fn, axis, pad, e)

    def output_shape(input_shape: Shape) -> Shape:
        shape = v.input_shape(fn, input_shape, "(H, W, C)", rank=3)
        return _output_sizes(fn, shape[:2], extents, s, padding, "HW") + shape[2:]

    def pool(x: jax.Array) -> jax.Array:
        if jnp.ndim(x) != 4:
            raise ValueError(
                f"{fn}: input must be a batch of NHWC images (4 dimensions), got shape "
                f"{tuple(jnp.shape(x))}")
        return op(x, k, s, padding, d)

    return stateless(name, pool, output_shape)


def MaxPool2D(window: int | Sequence[int], stride: int | Sequence[int] | None = None,
              padding: Padding = "VALID", dilation: int | Sequence[int] = 1) -> Layer:
    """Max pooling over `window` (`fdl.ops.max_pool2d`), NHWC.

    `stride` defaults to `window` (non-overlapping); `dilation` spaces the window's
    taps. `init(key, (H, W, C))` → `(o_h, o_w, C)`. The gradient goes to each window's
    first maximum.
    """
    return _pool("MaxPool2D", "max_pool2d", ops.max_pool2d, window, stride, padding, dilation)


def AvgPool2D(window: int | Sequence[int], stride: int | Sequence[int] | None = None,
              padding: Padding = "VALID", dilation: int | Sequence[int] = 1) -> Layer:
    """Average pooling over `window` (`fdl.ops.avg_pool2d`), NHWC.

    `stride` defaults to `window`; `dilation` spaces the window's taps. With `"SAME"`
    or explicit padding, padded pixels are left out of each window's average.
    """
    return _pool("AvgPool2D", "avg_pool2d", ops.avg_pool2d, window, stride, padding, dilation)


def GlobalAvgPool() -> Layer:
    """Mean over all pixels (`fdl.ops.global_avg_pool`): NHWC → NC.

    `init(key, (H, W, C))` → `(C,)`.
    """
    return stateless("global_avg_pool", ops.global_avg_pool,
                     lambda shape: v.input_shape("GlobalAvgPool", shape, "(H, W, C)", rank=3)[2:])


def GlobalMaxPool() -> Layer:
    """Max over all pixels (`fdl.ops.global_max_pool`): NHWC → NC.

    `init(key, (H, W, C))` → `(C,)`; the gradient goes to each channel's first maximum.
    """
    return stateless("global_max_pool", ops.global_max_pool,
                     lambda shape: v.input_shape("GlobalMaxPool", shape, "(H, W, C)", rank=3)[2:])


def AdaptiveAvgPool2D(output_size: int | Sequence[int]) -> Layer:
    """Average pooling to a fixed `(o_h, o_w)` (`fdl.ops.adaptive_avg_pool2d`), NHWC.

    `init(key, (H, W, C))` → `(o_h, o_w, C)` for any `H ≥ o_h`, `W ≥ o_w`: output
    `(i, j)` averages rows `⌊iH/o_h⌋ … ⌈(i + 1)H/o_h⌉ − 1` and likewise columns.
    """
    fn = "AdaptiveAvgPool2D"
    o = v.positive_ints(fn, "output_size", output_size, 2)

    def output_shape(input_shape: Shape) -> Shape:
        shape = v.input_shape(fn, input_shape, "(H, W, C)", rank=3)
        for axis, n, oi in zip("HW", shape[:2], o):
            if oi > n:
                raise ValueError(f"{fn}: output_size {oi} along {axis} exceeds the input's {n}")
        return o + shape[2:]

    return stateless("adaptive_avg_pool2d", lambda x: ops.adaptive_avg_pool2d(x, o), output_shape)
