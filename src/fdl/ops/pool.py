"""Pooling over NHWC images: max, average, and global average.

A window of $k_h×k_w$ pixels slides with `stride` (default: the window, i.e.
non-overlapping) over each channel separately; `padding` is `"VALID"`
(default), `"SAME"` or explicit `((top, bottom), (left, right))` with each
side smaller than the window. `dilation` $d$ (default 1) spaces the window's taps
$d$ pixels apart, so it spans $k_d = d(k − 1) + 1$. The output geometry is conv's (see
`fdl.ops.conv`): $o = ⌊(n + lo + hi − k_d)/s⌋ + 1$ per spatial axis, and
`"SAME"` gives $o = ⌈n/s⌉$.

Every backward below has the same shape: each output pixel $(i_h, i_w)$ hands
its cotangent back to the `k_h k_w` input pixels of its window
$(s_h i_h + d_h a − lo_h, s_w i_w + d_w b − lo_w)$, $0 ≤ a < k_h$, $0 ≤ b < k_w$,
with a weight (1 for the arg-max and 0 elsewhere; `1/count` for the average);
contributions of overlapping windows add up, and those landing in the padding
are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fdl import _validate as v
from fdl._samplers import _cast
from fdl.ops.conv import Padding, as_tuple, explicit_padding, output_size
from fdl.primitive import Example, gaussian, primitive

__all__ = ["avg_pool2d", "global_avg_pool", "max_pool2d"]


def _geometry(shape, window, stride, padding, dilation=1):
    """Window, strides and explicit `(lo, hi)` pads of the two spatial axes (the pads
    for the dilated extents)."""
    k, d = as_tuple(window, 2), as_tuple(dilation, 2)
    s = k if stride is None else as_tuple(stride, 2)
    return k, s, explicit_padding(padding, shape[1:3], _extents(k, d), s)


def _extents(k, d):
    """$k_d = d(k − 1) + 1$ per axis."""
    return tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))


def _seen(xp, a, b, s, d, o):
    """The pixels at window offset $(a, b)$ of every window: `xp[:, d·a + s·i, …]`."""
    return xp[:, d[0] * a:d[0] * a + s[0] * (o[0] - 1) + 1:s[0],
              d[1] * b:d[1] * b + s[1] * (o[1] - 1) + 1:s[1], :]


def _shape_of(x: jax.Array) -> jax.Array:
    """A zero-size array that carries $x$'s shape into the backward for free
    (residuals must be arrays; the spatial size is not recoverable from the output
    when the windows leave trailing pixels unread)."""
    return jnp.zeros(x.shape[:-1] + (0,), jnp.int8)


def _windows_back(pieces, shape, k, s, pads, o, d=(1, 1)):
    """$∂L/∂X$ from per-offset contributions: `pieces(a, b)` ($N×o_h×o_w×C$) is
    what each window sends to its pixel at offset $(a, b)$. Each is dilated by the
    stride and shifted by the offset (one `lax.pad`), summed, and the padding cut off."""
    padded = [n + lo + hi for n, (lo, hi) in zip(shape[1:3], pads)]
    total = None
    for a in range(k[0]):
        for b in range(k[1]):
            config = [(0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)]
            for axis, off in ((1, d[0] * a), (2, d[1] * b)):
                span = s[axis - 1] * (o[axis - 1] - 1) + 1
                config[axis] = (off, padded[axis - 1] - off - span, s[axis - 1] - 1)
            piece = pieces(a, b)
            part = lax.pad(piece, jnp.zeros((), piece.dtype), config)
            total = part if total is None else total + part
    (lo_h, _), (lo_w, _) = pads
    return total[:, lo_h:lo_h + shape[1], lo_w:lo_w + shape[2], :]


# --------------------------------------------------------------------------- #
# max pooling
# --------------------------------------------------------------------------- #


def max_pool2d(x: jax.Array, window: int | Sequence[int],
               stride: int | Sequence[int] | None = None,
               padding: Padding = "VALID", dilation: int | Sequence[int] = 1) -> jax.Array:
    r"""Max pooling $Y[ν,i,c] = max_{(a,b) ∈ window} X̄[ν, s·i + (a,b) − lo, c]$, NHWC.

    Shapes: $X ∈ ℝ^{N×H×W×C}$ → $Y ∈ ℝ^{N×o_h×o_w×C}$; `window`, `stride`
    (default `window`), `padding`, `dilation` static. $X̄$ is $X$ padded with $−∞$, so
    padding never wins. With dilation $d$ the offsets $(a, b)$ below read
    $(d_h a, d_w b)$; nothing else changes.

    Derivation. Within one window the max is locally the value of one element,
    the arg-max `(a*, b*)`: $∂Y[ν,i,c]/∂X[ν,p,c] = 1$ if $p$ is that element
    and 0 otherwise (where the max is unique the function is differentiable; at ties
    it is not, and we pick a subgradient). Hence

    $$ ∂L/∂X[ν,p,c] = Σ_{windows i whose arg-max is p} G[ν,i,c] $$

    each output's cotangent is routed to its window's arg-max, and summed where
    overlapping windows share an arg-max.

    Ties: the gradient goes to the *first* maximum in row-major order within the
    window (smallest $a$, then smallest $b$). This is what JAX's autodiff of
    `lax.reduce_window` max does on CPU (tested); the registered examples have
    distinct values, so the checks do not depend on it.

    Residuals: the arg-max offset $a*·k_w + b*$ of every output (int8 for windows up
    to 127 pixels), and $X$'s shape — not $X$ or $Y$.

    Tangent: each output moves with its window's arg-max,
    $dY[ν,i,c] = dX̄[ν, s·i + (a*, b*) − lo, c]$ ($N×o_h×o_w×C$; $dX̄$ is `dX` padded
    with zeros), read from the saved arg-max offsets.
    """
    k, s, pads = _geometry(x.shape, window, stride, padding, dilation)
    d = as_tuple(dilation, 2)
    if d != (1, 1):  # JAX cannot differentiate a dilated reduce_window max: the max of the
        # k_h·k_w offset slices instead, the same numbers
        xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
        o = [output_size(n, e, si, lo, hi)
             for n, e, si, (lo, hi) in zip(x.shape[1:3], _extents(k, d), s, pads)]
        return jnp.max(jnp.stack([_seen(xp, a, b, s, d, o) for a in range(k[0])
                                  for b in range(k[1])]), axis=0)
    # a numpy (concrete) init value: lax recognises the max monoid, which JAX differentiates
    return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, *k, 1), (1, *s, 1),
                             ((0, 0), *pads, (0, 0)))


def _max_pool2d_save(x, window, stride, padding, dilation, y):
    k, s, pads = _geometry(x.shape, window, stride, padding, dilation)
    d = as_tuple(dilation, 2)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    o = y.shape[1:3]
    argmax = jnp.full(y.shape, k[0] * k[1], jnp.int8 if k[0] * k[1] < 128 else jnp.int32)
    for a in reversed(range(k[0])):  # reversed: the first maximum is written last
        for b in reversed(range(k[1])):
            seen = _seen(xp, a, b, s, d, o)
            argmax = jnp.where(seen == y, jnp.asarray(a * k[1] + b, argmax.dtype), argmax)
    return argmax, _shape_of(x)


def _max_pool2d_backward(window, stride, padding, dilation, residuals, g):
    argmax, shape_of_x = residuals
    shape = shape_of_x.shape[:-1] + g.shape[-1:]
    k, s, pads = _geometry(shape, window, stride, padding, dilation)
    zero = jnp.zeros_like(g)
    dx = _windows_back(lambda a, b: jnp.where(argmax == a * k[1] + b, g, zero),
                       shape, k, s, pads, g.shape[1:3], as_tuple(dilation, 2))
    return (dx,)


def _check_pool(fn, x, window, stride, padding, dilation=1):
    """The static arguments, and every window fits the padded input (shapes: the spec's)."""
    k = v.positive_ints(fn, "window", window, 2)
    if stride is not None:
        v.positive_ints(fn, "stride", stride, 2)
    v.padding(fn, padding, 2)
    d = v.positive_ints(fn, "dilation", dilation, 2)
    k, s, pads = _geometry(x.shape, window, stride, padding, dilation)
    for axis, n, e, si, pad in zip("HW", x.shape[1:3], _extents(k, d), s, pads):
        v.padding_within_window(fn, axis, pad, e)
        v.window_output_size(fn, axis, n, e, si, pad)


def _max_pool2d_validate(x, window, stride, padding, dilation):
    _check_pool("max_pool2d", x, window, stride, padding, dilation)


def _distinct(*shape: int, spread: float = 4.0):
    """Example sampler: a random permutation of evenly spaced values in
    $[−spread/2, spread/2)$ — no ties, and neighbours far apart compared with the
    finite-difference step, so the max is differentiable and stays put."""
    size = int(np.prod(shape))

    def sample(rng, dtype):
        ranks = rng.permutation(size).reshape(shape)
        return _cast((ranks - size / 2) * (spread / size), dtype)

    return sample


def _max_pool2d_tangent(window, stride, padding, dilation, residuals, t):
    argmax, _ = residuals
    (dx,) = t
    k, s, pads = _geometry(dx.shape, window, stride, padding, dilation)
    d = as_tuple(dilation, 2)
    dxp = jnp.pad(dx, ((0, 0), *pads, (0, 0)))
    o = argmax.shape[1:3]
    dy = jnp.zeros(argmax.shape, dx.dtype)
    for a in range(k[0]):
        for b in range(k[1]):
            dy = jnp.where(argmax == a * k[1] + b, _seen(dxp, a, b, s, d, o), dy)
    return dy


def _max_pool2d_switches(x, window, stride, padding, dilation):
    """Switches: each window's arg-max offset, which moves where $∂Y/∂X$ jumps."""
    y = max_pool2d.forward(x, window, stride, padding, dilation)
    return _max_pool2d_save(x, window, stride, padding, dilation, y)[0]


max_pool2d = primitive(
    max_pool2d, _max_pool2d_backward, save=_max_pool2d_save,
    static=("window", "stride", "padding", "dilation"),
    spec=v.shapes("max_pool2d", x="N×H×W×C"),
    validate=_max_pool2d_validate,
    switches=_max_pool2d_switches,
    tangent=_max_pool2d_tangent, examples=[
        Example((_distinct(2, 4, 4, 3), 2, None, "VALID")),
        Example((_distinct(2, 5, 5, 2), 3, 1, "SAME")),  # overlapping windows
        Example((_distinct(1, 5, 7, 2), (2, 3), (2, 2), ((1, 0), (1, 2)))),
        Example((_distinct(3, 5, 4, 1), (3, 2), (2, 1), "VALID")),
        Example((_distinct(1, 6, 7, 2), 2, 1, "SAME", (2, 3))),  # dilated windows
    ],
)


# --------------------------------------------------------------------------- #
# average pooling
# --------------------------------------------------------------------------- #


def _counts(shape, k, s, pads, dtype, d=(1, 1)) -> jax.Array:
    """$1×o_h×o_w×1$: how many real (unpadded) pixels each window covers — the
    product of the per-axis counts of taps $s·i − lo + d·j$ ($0 ≤ j < k$) inside
    $[0, n)$ (at least 1: a dilated window whose taps all miss the image averages
    nothing and gives 0). Plain numpy on static shapes: a constant of the program."""
    per_axis = []
    for n, ki, si, di, (lo, hi) in zip(shape[1:3], k, s, d, pads):
        start = si * np.arange(output_size(n, di * (ki - 1) + 1, si, lo, hi)) - lo
        taps = start[:, None] + di * np.arange(ki)[None, :]
        per_axis.append(np.maximum(((taps >= 0) & (taps < n)).sum(axis=1), 1))
    return jnp.asarray(np.outer(*per_axis)[None, :, :, None], dtype)


def avg_pool2d(x: jax.Array, window: int | Sequence[int],
               stride: int | Sequence[int] | None = None,
               padding: Padding = "VALID", dilation: int | Sequence[int] = 1) -> jax.Array:
    r"""Average pooling $Y[ν,i,c] = (1/m_i) Σ_{(a,b) ∈ window} X[ν, s·i + (a,b) − lo, c]$, NHWC.

    Shapes: $X ∈ ℝ^{N×H×W×C}$ → $Y ∈ ℝ^{N×o_h×o_w×C}$; `window`, `stride`
    (default `window`), `padding`, `dilation` static (offsets $(d_h a, d_w b)$).

    Padding: $m_i$ counts only the *real* pixels of window $i$; padded pixels
    are left out of both the sum and the count (TensorFlow's `"SAME"` average
    pooling, PyTorch's `count_include_pad=False`), so a constant image pools to
    the same constant at the borders. With `"VALID"`, $m_i = k_h k_w$ everywhere.

    Derivation: $Y$ is linear in $X$ with $∂Y[ν,i,c]/∂X[ν,p,c] = 1/m_i$ for
    each real pixel $p$ in window $i$, so

    $$ ∂L/∂X[ν,p,c] = Σ_{windows i ∋ p} G[ν,i,c] / m_i $$

    each cotangent is spread evenly over its window (for non-overlapping
    `"VALID"` windows every pixel covered gets `G/(k_h k_w)`; pixels no window
    reads get 0).

    Residuals: $X$'s shape only (the counts are constants of the shapes).

    Tangent: $Y$ is linear in $X$, so $dY = avg_pool2d(dX)$ (same window, stride,
    padding and counts; $N×o_h×o_w×C$).
    """
    k, s, pads = _geometry(x.shape, window, stride, padding, dilation)
    d = as_tuple(dilation, 2)
    sums = lax.reduce_window(x, np.array(0, x.dtype), lax.add, (1, *k, 1), (1, *s, 1),
                             ((0, 0), *pads, (0, 0)), window_dilation=(1, *d, 1))
    return sums / _counts(x.shape, k, s, pads, x.dtype, d)


def _avg_pool2d_save(x, window, stride, padding, dilation, y):
    return _shape_of(x)


def _avg_pool2d_backward(window, stride, padding, dilation, shape_of_x, g):
    shape = shape_of_x.shape[:-1] + g.shape[-1:]
    k, s, pads = _geometry(shape, window, stride, padding, dilation)
    d = as_tuple(dilation, 2)
    share = g / _counts(shape, k, s, pads, g.dtype, d)
    return (_windows_back(lambda a, b: share, shape, k, s, pads, g.shape[1:3], d),)


def _avg_pool2d_validate(x, window, stride, padding, dilation):
    _check_pool("avg_pool2d", x, window, stride, padding, dilation)


def _avg_pool2d_tangent(window, stride, padding, dilation, shape_of_x, t):
    (dx,) = t
    return avg_pool2d.forward(dx, window, stride, padding, dilation)


avg_pool2d = primitive(
    avg_pool2d, _avg_pool2d_backward, save=_avg_pool2d_save,
    static=("window", "stride", "padding", "dilation"),
    spec=v.shapes("avg_pool2d", x="N×H×W×C"),
    validate=_avg_pool2d_validate,
    tangent=_avg_pool2d_tangent, examples=[
        Example((gaussian(2, 4, 4, 3), 2, None, "VALID")),
        Example((gaussian(2, 5, 5, 2), 3, 2, "SAME")),  # overlapping, partial border windows
        Example((gaussian(1, 5, 7, 2), (2, 3), (1, 2), ((1, 1), (0, 2)))),
        Example((gaussian(1, 7, 6, 2), 2, 1, ((2, 1), (0, 0)), (3, 2))),  # dilated windows
    ],
)


# --------------------------------------------------------------------------- #
# global average pooling
# --------------------------------------------------------------------------- #


def global_avg_pool(x: jax.Array) -> jax.Array:
    r"""Global average pooling $Y[ν,c] = (1/HW) Σ_{h,w} X[ν,h,w,c]$: NHWC → NC.

    Derivation: $∂Y[ν,c]/∂X[ν,h,w,c] = 1/(HW)$, so $∂L/∂X[ν,h,w,c] = G[ν,c]/(HW)$
    — $G ∈ ℝ^{N×C}$ broadcast over the $H×W$ pixels.

    Residuals: $X$'s shape only.

    Tangent: linear, $dY[ν,c] = (1/HW) Σ_{h,w} dX[ν,h,w,c]$ ($N×C$).
    """
    return jnp.mean(x, axis=(1, 2))


def _global_avg_pool_save(x, y):
    return _shape_of(x)


def _global_avg_pool_backward(shape_of_x, g):
    n, h, w = shape_of_x.shape[:3]
    return (jnp.broadcast_to((g / (h * w))[:, None, None, :], (n, h, w, g.shape[-1])),)


def _global_avg_pool_tangent(shape_of_x, t):
    (dx,) = t
    return jnp.mean(dx, axis=(1, 2))


global_avg_pool = primitive(
    global_avg_pool, _global_avg_pool_backward, save=_global_avg_pool_save,
    spec=v.shapes("global_avg_pool", x="N×H×W×C"),
    tangent=_global_avg_pool_tangent,
    examples=[Example((gaussian(2, 3, 4, 5),)), Example((gaussian(1, 1, 1, 2),)),
              Example((gaussian(3, 5, 2, 1),))],
)
