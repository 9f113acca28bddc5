"""Convolutions $Y = X ⋆ W + b$ (cross-correlation, as in every DL library).

Layout: images are NHWC ($X ∈ ℝ^{N×H×W×C_in}$), kernels HWIO
($W ∈ ℝ^{k_h×k_w×C_in×C_out}$), bias $b ∈ ℝ^{C_out}$; 1-D signals are NWC
with WIO kernels. `stride` $s$ and `dilation` $d$ are an int or one per
spatial axis; `padding` is `"SAME"`, `"VALID"` or explicit
`((top, bottom), (left, right))`.

Geometry of one spatial axis (used by the pools too). Input length $n$, kernel
length $k$, dilated kernel extent $k_d = d(k − 1) + 1$, padding `(lo, hi)`.
Output length

    $o = ⌊(n + lo + hi − k_d)/s⌋ + 1$.

`"VALID"` is $lo = hi = 0$. `"SAME"` (XLA/TensorFlow convention) asks for
$o = ⌈n/s⌉$ and pads the minimum total $t = max((o − 1)s + k_d − n, 0)$,
split $lo = ⌊t/2⌋$, $hi = t − lo$ (the odd element goes at the end).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fdl import _validate as v
from fdl.primitive import Example, gaussian, primitive

__all__ = ["conv1d", "conv2d"]

Padding = str | Sequence[Sequence[int]]

_NHWC = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------- #
# Geometry, shared with fdl.ops.pool
# --------------------------------------------------------------------------- #


def as_tuple(value: Any, n: int) -> tuple[int, ...]:
    """An int, or a sequence of $n$ ints, as a tuple of $n$ ints (already validated)."""
    if isinstance(value, (int, jnp.integer)):
        return (int(value),) * n
    return tuple(int(e) for e in value)


def explicit_padding(padding: Padding, sizes: Sequence[int], extents: Sequence[int],
                     strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """`(lo, hi)` per spatial axis for input `sizes`, dilated window `extents`
    and `strides` (see the module docstring for the `"SAME"` rule)."""
    if isinstance(padding, str):
        if padding == "VALID":
            return tuple((0, 0) for _ in sizes)
        pads = []
        for n, k, s in zip(sizes, extents, strides):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def output_size(n: int, extent: int, stride: int, lo: int, hi: int) -> int:
    """$o = ⌊(n + lo + hi − k_d)/s⌋ + 1$ (≤ 0 when the window does not fit)."""
    return (n + lo + hi - extent) // stride + 1


# --------------------------------------------------------------------------- #
# conv2d
# --------------------------------------------------------------------------- #


def _geometry(x_shape, w_shape, stride, padding, dilation):
    """Strides, dilations and explicit `(lo, hi)` pads of the two spatial axes."""
    s, d = as_tuple(stride, 2), as_tuple(dilation, 2)
    extents = [di * (k - 1) + 1 for di, k in zip(d, w_shape[:2])]
    return s, d, explicit_padding(padding, x_shape[1:3], extents, s)


def conv2d(x: jax.Array, w: jax.Array, b: jax.Array, stride: int | Sequence[int] = 1,
           padding: Padding = "SAME", dilation: int | Sequence[int] = 1,
           groups: int = 1) -> jax.Array:
    r"""2-D convolution (cross-correlation) `Y = X ⋆ W + b`, NHWC/HWIO.

    Shapes: `X ∈ ℝ^{N×H×W×C_in}`, `W ∈ ℝ^{k_h×k_w×C_in×C_out}`, `b ∈ ℝ^{C_out}`,
    `Y ∈ ℝ^{N×o_h×o_w×C_out}`; `stride`, `padding`, `dilation` static (see the
    module docstring for `o` and the `"SAME"` rule).

    Forward, one spatial axis written out (the other is identical), with
    `X` zero outside `[0, n)`:

        `Y[ν, i, c'] = Σ_{j, c} X[ν, s·i + d·j − lo, c] · W[j, c, c'] + b[c']`.

    Derivation (`G = ∂L/∂Y`, same shape as `Y`).

    * Bias: `∂Y[ν,i,c']/∂b[c'] = 1` ⇒ `∂L/∂b = Σ_{ν,i} G[ν,i,:]` (sum over N, H, W).
    * Kernel: `∂L/∂W[j,c,c'] = Σ_{ν,i} X[ν, s·i + d·j − lo, c] G[ν,i,c']` — the
      *correlation of the input with the output gradient*. For a fixed offset `j`
      it is a matrix product: the slice `S_j[(ν,i), c] = X[ν, s·i + d·j − lo, c]`
      (`N·o × C_in`) against `G` (`N·o × C_out`), `∂L/∂W[j] = S_jᵀ G`; computed
      that way (or, for small `k·C_in`, as one product of the stacked slices, the
      "im2col" matrix) — see `_conv2d_kernel_grad`.
    * Input: `∂L/∂X[ν,p,c] = Σ_{i,j,c' : s·i + d·j − lo = p} G[ν,i,c'] W[j,c,c']`.
      Dilate `G` by the stride (`s − 1` zeros between elements:
      `G_s[s·i] = G[i]`, length `s(o − 1) + 1`); then the constraint becomes
      `∂L/∂X[p] = Σ_j G_s[p + lo − d·j] W[j]`, and with the flipped kernel
      `W̃[j] = W[k − 1 − j]`, `∂L/∂X[p] = Σ_j G_s[p + lo − d(k − 1) + d·j] W̃[j]`:
      a stride-1 correlation of `G_s` with `W̃` (dilation `d`; channels
      transposed, `W̃[j, c', c]`) after padding `G_s` by
      `lo' = d(k − 1) − lo` below and `hi' = n + lo − s(o − 1) − 1` above, so that
      exactly `n` outputs come out (`lo' + s(o − 1) + 1 + hi' − d(k − 1) = n`).
      This is the *transposed convolution*; `lhs_dilation = s` does the dilation.

    Groups (`groups` $= G$, static, dividing $C_{in}$ and $C_{out}$): the channels
    split into $G$ consecutive blocks and block $g$ of the output sees only block $g$
    of the input, $W ∈ ℝ^{k_h×k_w×(C_{in}/G)×C_{out}}$ (output channel $c'$ in block
    $⌊c' G/C_{out}⌋$); $G = C_{in}$ is a depthwise convolution. The forward is $G$
    independent convolutions side by side, so each formula above holds block by
    block: $∂L/∂W$ pairs input block $g$ with output block $g$ (one batched matrix
    product per kernel offset, the blocks as the batch), and $∂L/∂X$ is the grouped
    transposed convolution, its kernel $W̃$ regrouped to $k_h×k_w×(C_{out}/G)×C_{in}$.

    Residuals: `X` and `W` (`b` and `Y` are not needed).

    Tangent: `Y` is bilinear in `(X, W)` and affine in `b`, so by the product rule
    `dY = dX ⋆ W + X ⋆ dW + db` — two forward correlations with the same stride,
    padding and dilation (`N×o_h×o_w×C_out` each) and `db` broadcast over `N, o_h, o_w`.
    """
    s, d, pads = _geometry(x.shape, w.shape, stride, padding, dilation)
    y = lax.conv_general_dilated(x, w, s, pads, rhs_dilation=d, dimension_numbers=_NHWC,
                                 feature_group_count=groups)
    return y + b.reshape(1, 1, 1, -1)


def _conv2d_save(x, w, b, stride, padding, dilation, groups, y):
    return x, w


def _transposed_kernel(w, groups):
    """$W̃$: the kernel flipped in space and transposed in channels, per group:
    $k_h×k_w×(C_in/G)×C_out$ → $k_h×k_w×(C_out/G)×C_in$."""
    kh, kw, c_in_g, c_out = w.shape
    w = jnp.flip(w, axis=(0, 1)).reshape(kh, kw, c_in_g, groups, c_out // groups)
    return jnp.transpose(w, (0, 1, 4, 3, 2)).reshape(kh, kw, c_out // groups, groups * c_in_g)


def _conv2d_backward(stride, padding, dilation, groups, residuals, g):
    x, w = residuals
    s, d, pads = _geometry(x.shape, w.shape, stride, padding, dilation)
    k, n, o = w.shape[:2], x.shape[1:3], g.shape[1:3]
    # ∂L/∂X: transposed convolution of G with the flipped, channel-transposed kernel.
    pads_dx = [(di * (ki - 1) - lo, ni + lo - si * (oi - 1) - 1)
               for si, di, ki, ni, oi, (lo, _) in zip(s, d, k, n, o, pads)]
    dx = lax.conv_general_dilated(g, _transposed_kernel(w, groups), (1, 1), pads_dx,
                                  lhs_dilation=s, rhs_dilation=d, dimension_numbers=_NHWC,
                                  feature_group_count=groups)
    return dx, _conv2d_kernel_grad(x, g, s, d, pads, k, groups), jnp.sum(g, axis=(0, 1, 2))


# ∂L/∂W with K = k_h·k_w·C_in at most this: one matmul over all patches (im2col);
# above it, one matmul per kernel offset (the patch matrix would be K/C_in times X).
_IM2COL_MAX_K = 128


def _conv2d_kernel_grad(x, g, s, d, pads, k, groups=1):
    """`∂L/∂W[j,c,c'] = Σ_{ν,i} X_p[ν, s·i + d·j, c] G[ν,i,c']` (`X_p`: `X` padded by
    the forward's `lo`) as matrix products instead of a convolution.

    For each kernel offset `j = (j_h, j_w)` the strided slice `S_j = X_p[:, d·j + s·i, :]`
    (`i` over the `o_h×o_w` outputs) is an `M×C_in` matrix, `M = N·o_h·o_w`, and
    `∂L/∂W[j] = S_jᵀ G` with `G` as `M×C_out`: the same FLOPs as the correlation, but
    a plain matmul, which XLA:CPU runs much faster than the correlation form (`C_in` as
    batch, `N` contracted, a kernel as large as the image;
    `_conv2d_kernel_grad_correlation`; figures in BENCHMARKS.md, CNN row); other
    backends keep that form. Small
    `K = k_h·k_w·C_in` (first layers): stack the slices into the `M×K` patch
    matrix ("im2col") and do one product; otherwise one `C_in×M · M×C_out` product per
    offset, so no patch matrix is ever materialised. With `groups` $G > 1$ the products
    are batched over the blocks (`_grouped_kernel_grad`).
    """
    if groups > 1:
        return _grouped_kernel_grad(x, g, s, d, pads, k, groups)
    if jax.default_backend() != "cpu":  # GPU/TPU: the vendor's kernel-gradient convolution
        return _conv2d_kernel_grad_correlation(x, g, s, d, pads, k)
    n_batch, c_in, c_out = x.shape[0], x.shape[3], g.shape[3]
    o = g.shape[1:3]
    xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))  # pads are ≥ 0
    slices = []
    for jh in range(k[0]):
        for jw in range(k[1]):
            start = (0, d[0] * jh, d[1] * jw, 0)
            stop = (n_batch, start[1] + s[0] * (o[0] - 1) + 1, start[2] + s[1] * (o[1] - 1) + 1,
                    c_in)
            slices.append(lax.slice(xp, start, stop, (1, s[0], s[1], 1)))
    g2 = g.reshape(-1, c_out)
    contract_rows = (((0,), (0,)), ((), ()))  # Aᵀ·B without materialising Aᵀ
    if k[0] * k[1] * c_in <= _IM2COL_MAX_K:
        patches = jnp.stack(slices, axis=3).reshape(-1, k[0] * k[1] * c_in)
        dw = lax.dot_general(patches, g2, contract_rows)
    else:
        dw = jnp.stack([lax.dot_general(sl.reshape(-1, c_in), g2, contract_rows)
                        for sl in slices])
    return dw.reshape(k[0], k[1], c_in, c_out)


def _offset_slices(x, s, d, pads, k, o):
    """$S_j = X_p[:, d·j + s·i, :]$ for each kernel offset $j$, row-major."""
    xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))  # pads are ≥ 0
    return [lax.slice(xp, (0, d[0] * jh, d[1] * jw, 0),
                      (x.shape[0], d[0] * jh + s[0] * (o[0] - 1) + 1,
                       d[1] * jw + s[1] * (o[1] - 1) + 1, x.shape[3]), (1, s[0], s[1], 1))
            for jh in range(k[0]) for jw in range(k[1])]


def _grouped_kernel_grad(x, g, s, d, pads, k, groups):
    """`∂L/∂W[j, c, g·C_out/G + c'] = Σ_m S_j[m, g·C_in/G + c] G[m, g·C_out/G + c']`:
    per offset, one matrix product batched over the $G$ blocks (input block $g$ with
    output block $g$ only)."""
    c_in_g, c_out_g = x.shape[3] // groups, g.shape[3] // groups
    g3 = g.reshape(-1, groups, c_out_g)
    batched = (((0,), (0,)), ((1,), (1,)))  # contract the rows, batch the blocks
    dw = jnp.stack([lax.dot_general(sl.reshape(-1, groups, c_in_g), g3, batched)
                    for sl in _offset_slices(x, s, d, pads, k, g.shape[1:3])])  # kk×G×Ci×Co
    return jnp.transpose(dw, (0, 2, 1, 3)).reshape(k[0], k[1], c_in_g, groups * c_out_g)


def _conv2d_kernel_grad_correlation(x, g, s, d, pads, k):
    """The same $∂L/∂W$ as one convolution: $X$ correlated with $G$, $C_in$ as the
    batch, $N$ contracted, $G$ as the kernel (window stride $d$, kernel dilation
    $s$, padding `lo` below and above just enough for $k$ outputs,
    $hi' = s(o − 1) + d(k − 1) + 1 − n − lo$; negative crops input the forward never
    read). What cuDNN and TPUs are built for; used off the CPU."""
    n, o = x.shape[1:3], g.shape[1:3]
    pads_dw = [(lo, si * (oi - 1) + di * (ki - 1) + 1 - ni - lo)
               for si, di, ki, ni, oi, (lo, _) in zip(s, d, k, n, o, pads)]
    return lax.conv_general_dilated(x, g, d, pads_dw, rhs_dilation=s,
                                    dimension_numbers=("CHWN", "IHWO", "HWNC"))


def _check_conv(fn, x, w, stride, padding, dilation, axes, groups=1):
    """The static arguments, the channels against `groups`, and the dilated kernel fits
    the padded input along each spatial axis (`axes`: `"HW"` or `"W"`); the shapes are
    the spec's."""
    nd = len(axes)
    kernel = "HWIO" if nd == 2 else "WIO"
    g = v.positive_int(fn, "groups", groups)
    if g == 1 and x.shape[-1] != w.shape[-2]:
        which = "third" if nd == 2 else "second"
        raise ValueError(
            f"{fn}: x has C_in = {x.shape[-1]} (shape {tuple(x.shape)}) but w has C_in = "
            f"{w.shape[-2]} (shape {tuple(w.shape)}); the last dimension of x must equal the "
            f"{which} of w")
    if x.shape[-1] != g * w.shape[-2]:
        fix = (f"w's I axis must be C_in/groups = {x.shape[-1] // g}" if x.shape[-1] % g == 0
               else f"groups must divide C_in = {x.shape[-1]}")
        raise ValueError(
            f"{fn}: x has C_in = {x.shape[-1]} channels (shape {tuple(x.shape)}) but w "
            f"(shape {tuple(w.shape)}, {kernel}) reads {w.shape[-2]} per group × groups={g} "
            f"= {g * w.shape[-2]}; {fix}")
    if w.shape[-1] % g:
        raise ValueError(
            f"{fn}: groups={g} must divide C_out = {w.shape[-1]} (the O axis of w, shape "
            f"{tuple(w.shape)}): each group writes C_out/groups channels")
    s = v.positive_ints(fn, "stride", stride, nd)
    d = v.positive_ints(fn, "dilation", dilation, nd)
    v.padding(fn, padding, nd)
    extents = [di * (k - 1) + 1 for di, k in zip(d, w.shape[:nd])]
    pads = explicit_padding(padding, x.shape[1:-1], extents, s)
    for axis, n, e, si, pad in zip(axes, x.shape[1:-1], extents, s, pads):
        v.window_output_size(fn, axis, n, e, si, pad, "dilated kernel")


def _conv2d_validate(x, w, b, stride, padding, dilation, groups):
    _check_conv("conv2d", x, w, stride, padding, dilation, "HW", groups)


def _conv2d_tangent(stride, padding, dilation, groups, residuals, t):
    x, w = residuals
    dx, dw, db = t
    return (conv2d.forward(dx, w, db, stride, padding, dilation, groups)
            + conv2d.forward(x, dw, jnp.zeros_like(db), stride, padding, dilation, groups))


conv2d = primitive(
    conv2d, _conv2d_backward, save=_conv2d_save,
    static=("stride", "padding", "dilation", "groups"),
    spec=v.shapes("conv2d", x="N×H×W×C_in", w="k_h×k_w×C_g×C_out: C_g = C_in/groups",
                  b="C_out"),
    validate=_conv2d_validate,
    tangent=_conv2d_tangent, examples=[
        Example((gaussian(2, 5, 5, 3), gaussian(3, 3, 3, 4), gaussian(4), 1, "SAME", 1)),
        Example((gaussian(2, 6, 5, 2), gaussian(3, 2, 2, 3), gaussian(3), 2, "VALID", 1)),
        Example((gaussian(1, 7, 6, 2), gaussian(2, 3, 2, 2), gaussian(2), (2, 1), ((1, 2), (0, 3)),
                 (1, 2))),
        Example((gaussian(2, 6, 6, 1), gaussian(3, 3, 1, 1), gaussian(1), 1, "SAME", 2)),
        Example((gaussian(2, 5, 4, 4), gaussian(3, 2, 2, 6), gaussian(6), (2, 1), "SAME", 1, 2)),
        Example((gaussian(1, 5, 5, 3), gaussian(3, 3, 1, 3), gaussian(3), 1, "VALID", 1, 3)),
    ],
)


# --------------------------------------------------------------------------- #
# conv1d: conv2d with H = 1
# --------------------------------------------------------------------------- #


def _as_2d(stride, padding, dilation):
    """The conv2d arguments of a conv1d call: a unit H axis in front of W."""
    pad2 = padding if isinstance(padding, str) else ((0, 0),) + tuple(
        (int(lo), int(hi)) for lo, hi in padding)
    return (1, as_tuple(stride, 1)[0]), pad2, (1, as_tuple(dilation, 1)[0])


def conv1d(x: jax.Array, w: jax.Array, b: jax.Array, stride: int | Sequence[int] = 1,
           padding: Padding = "SAME", dilation: int | Sequence[int] = 1,
           groups: int = 1) -> jax.Array:
    r"""1-D convolution (cross-correlation) `Y = X ⋆ W + b`, NWC/WIO.

    Shapes: `X ∈ ℝ^{N×L×C_in}`, `W ∈ ℝ^{k×C_in×C_out}`, `b ∈ ℝ^{C_out}`,
    `Y ∈ ℝ^{N×o×C_out}`; `padding` is `"SAME"`, `"VALID"` or `((lo, hi),)`.

    It is `conv2d` on `X` reshaped to `N×1×L×C_in` with the kernel
    `1×k×C_in×C_out` (a unit H axis with stride, dilation 1 and no padding), so
    the derivation is conv2d's along the W axis alone:

    * `∂L/∂b = Σ_{ν,i} G[ν,i,:]`;
    * `∂L/∂W[j,c,c'] = Σ_{ν,i} X[ν, s·i + d·j − lo, c] G[ν,i,c']`;
    * `∂L/∂X` = the transposed convolution of `G` (dilated by `s`, padded
      `d(k − 1) − lo` below and `n + lo − s(o − 1) − 1` above) with the flipped,
      channel-transposed kernel.

    `groups` as conv2d's ($W ∈ ℝ^{k×(C_{in}/G)×C_{out}}$; $G = C_{in}$: depthwise).

    The backward is conv2d's backward on the reshaped residuals. Residuals: `X`, `W`.

    Tangent: as conv2d's, `dY = dX ⋆ W + X ⋆ dW + db` (`N×o×C_out`).
    """
    s2, pad2, d2 = _as_2d(stride, padding, dilation)
    return conv2d.forward(x[:, None], w[None], b, s2, pad2, d2, groups)[:, 0]


def _conv1d_backward(stride, padding, dilation, groups, residuals, g):
    x, w = residuals
    s2, pad2, d2 = _as_2d(stride, padding, dilation)
    dx, dw, db = _conv2d_backward(s2, pad2, d2, groups, (x[:, None], w[None]), g[:, None])
    return dx[:, 0], dw[0], db


def _conv1d_validate(x, w, b, stride, padding, dilation, groups):
    _check_conv("conv1d", x, w, stride, padding, dilation, "W", groups)


def _conv1d_tangent(stride, padding, dilation, groups, residuals, t):
    x, w = residuals
    dx, dw, db = t
    return (conv1d.forward(dx, w, db, stride, padding, dilation, groups)
            + conv1d.forward(x, dw, jnp.zeros_like(db), stride, padding, dilation, groups))


conv1d = primitive(
    conv1d, _conv1d_backward, save=_conv2d_save,
    static=("stride", "padding", "dilation", "groups"),
    spec=v.shapes("conv1d", x="N×W×C_in", w="k_w×C_g×C_out: C_g = C_in/groups", b="C_out"),
    validate=_conv1d_validate,
    tangent=_conv1d_tangent, examples=[
        Example((gaussian(2, 9, 3), gaussian(3, 3, 4), gaussian(4), 1, "SAME", 1)),
        Example((gaussian(3, 10, 2), gaussian(4, 2, 3), gaussian(3), 2, "VALID", 2)),
        Example((gaussian(1, 7, 1), gaussian(2, 1, 1), gaussian(1), 3, ((2, 1),), 1)),
        Example((gaussian(2, 8, 4), gaussian(3, 1, 4), gaussian(4), 1, "SAME", 2, 4)),
    ],
)
