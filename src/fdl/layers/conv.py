"""Convolution and pooling layers: Conv2D, Conv1D, MaxPool2D, AvgPool2D, GlobalAvgPool.

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

__all__ = ["AvgPool2D", "Conv1D", "Conv2D", "GlobalAvgPool", "MaxPool2D"]


def _output_sizes(fn: str, sizes, extents, strides, padding, axes: str) -> tuple[int, ...]:
    """Spatial output sizes, or a `ValueError` naming the axis where the window does
    not fit."""
    pads = explicit_padding(padding, sizes, extents, strides)
    return tuple(v.window_output_size(fn, axis, n, e, s, pad)
                 for axis, n, e, s, pad in zip(axes, sizes, extents, strides, pads))


def _conv(fn: str, nd: int, features: int, kernel_size: Any, stride: Any, padding: Padding,
          dilation: Any, w_init: str | Initializer, b_init: str | Initializer,
          dtype: Any) -> Layer:
    layout = "HWC" if nd == 2 else "LC"
    v.positive_int(fn, "features", features)
    k = v.positive_ints(fn, "kernel_size", kernel_size, nd)
    s = v.positive_ints(fn, "stride", stride, nd)
    d = v.positive_ints(fn, "dilation", dilation, nd)
    v.padding(fn, padding, nd)
    w_init, b_init = get_initializer(w_init), get_initializer(b_init)
    op = ops.conv2d if nd == 2 else ops.conv1d
    ghost_op = ghost.ghost_conv2d if nd == 2 else ghost.ghost_conv1d  # with a probe

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict]:
        shape = v.input_shape(fn, input_shape, f"({', '.join(layout)})", rank=len(layout))
        extents = [di * (ki - 1) + 1 for di, ki in zip(d, k)]
        out = _output_sizes(fn, shape[:-1], extents, s, padding, layout[:-1])
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (*k, shape[-1], features), dtype),
                  "b": b_init(kb, (features,), dtype)}
        return out + (features,), params

    def apply(params: dict, x: jax.Array) -> jax.Array:
        c_in = params["w"].shape[-2]
        if jnp.ndim(x) != nd + 2 or jnp.shape(x)[-1] != c_in:
            raise ValueError(
                f"{fn}: input has shape {tuple(jnp.shape(x))} but the layer was built for "
                f"(batch, {', '.join(layout[:-1])}, {c_in}) in N{layout} layout — check the "
                "input_shape passed to init")
        if has_probe(params):  # a probe: per-example gradient norms asked for
            return ghost_op(x, params["w"], params["b"], params[PROBE], s, padding, d)
        return op(x, params["w"], params["b"], s, padding, d)

    return stateless(fn.lower(), apply, init=init)


def Conv2D(features: int, kernel_size: int | Sequence[int], *,
           stride: int | Sequence[int] = 1, padding: Padding = "SAME",
           dilation: int | Sequence[int] = 1, w_init: str | Initializer = "glorot_uniform",
           b_init: str | Initializer = "zeros", dtype: Any = jnp.float32) -> Layer:
    """2-D convolution layer (`fdl.ops.conv2d`), NHWC images, HWIO kernel.

    `init(key, (H, W, C_in))` → `(o_h, o_w, features)`; params
    `{"w": (k_h, k_w, C_in, features), "b": (features,)}`. `padding` is
    `"SAME"` (default: `o = ⌈n/s⌉`), `"VALID"` or `((top, bottom), (left,
    right))`; `stride`, `dilation` and `kernel_size` an int or a pair. The
    initialisers see the HWIO fans (`fan_in = k_h k_w C_in`).
    """
    return _conv("Conv2D", 2, features, kernel_size, stride, padding, dilation, w_init,
                 b_init, dtype)


def Conv1D(features: int, kernel_size: int | Sequence[int], *,
           stride: int | Sequence[int] = 1, padding: Padding = "SAME",
           dilation: int | Sequence[int] = 1, w_init: str | Initializer = "glorot_uniform",
           b_init: str | Initializer = "zeros", dtype: Any = jnp.float32) -> Layer:
    """1-D convolution layer (`fdl.ops.conv1d`), NWC signals, WIO kernel.

    `init(key, (L, C_in))` → `(o, features)`; params
    `{"w": (k, C_in, features), "b": (features,)}`; `padding` is `"SAME"`,
    `"VALID"` or `((lo, hi),)`.
    """
    return _conv("Conv1D", 1, features, kernel_size, stride, padding, dilation, w_init,
                 b_init, dtype)


def _pool(fn: str, name: str, op, window: Any, stride: Any, padding: Padding) -> Layer:
    k = v.positive_ints(fn, "window", window, 2)
    s = k if stride is None else v.positive_ints(fn, "stride", stride, 2)
    v.padding(fn, padding, 2)
    if not isinstance(padding, str):
        for axis, ki, pad in zip("HW", k, padding):
            v.padding_within_window(fn, axis, pad, ki)

    def output_shape(input_shape: Shape) -> Shape:
        shape = v.input_shape(fn, input_shape, "(H, W, C)", rank=3)
        return _output_sizes(fn, shape[:2], k, s, padding, "HW") + shape[2:]

    def pool(x: jax.Array) -> jax.Array:
        if jnp.ndim(x) != 4:
            raise ValueError(
                f"{fn}: input must be a batch of NHWC images (4 dimensions), got shape "
                f"{tuple(jnp.shape(x))}")
        return op(x, k, s, padding)

    return stateless(name, pool, output_shape)


def MaxPool2D(window: int | Sequence[int], stride: int | Sequence[int] | None = None,
              padding: Padding = "VALID") -> Layer:
    """Max pooling over `window` (`fdl.ops.max_pool2d`), NHWC.

    `stride` defaults to `window` (non-overlapping). `init(key, (H, W, C))` →
    `(o_h, o_w, C)`. The gradient goes to each window's first maximum.
    """
    return _pool("MaxPool2D", "max_pool2d", ops.max_pool2d, window, stride, padding)


def AvgPool2D(window: int | Sequence[int], stride: int | Sequence[int] | None = None,
              padding: Padding = "VALID") -> Layer:
    """Average pooling over `window` (`fdl.ops.avg_pool2d`), NHWC.

    `stride` defaults to `window`. With `"SAME"` or explicit padding, padded
    pixels are left out of each window's average.
    """
    return _pool("AvgPool2D", "avg_pool2d", ops.avg_pool2d, window, stride, padding)


def GlobalAvgPool() -> Layer:
    """Mean over all pixels (`fdl.ops.global_avg_pool`): NHWC → NC.

    `init(key, (H, W, C))` → `(C,)`.
    """
    return stateless("global_avg_pool", ops.global_avg_pool,
                     lambda shape: v.input_shape("GlobalAvgPool", shape, "(H, W, C)", rank=3)[2:])
