"""Transposed convolutions `Z = X ⋆ᵀ W + b`, 1-D and 2-D: the adjoint of a convolution.

Layout: NHWC inputs (`X ∈ ℝ^{N×h×w×C_in}`), kernels HWIO in the transposed
convolution's own sense (`W ∈ ℝ^{k_h×k_w×C_in×C_out}`: `C_in` is what it reads,
`C_out` what it writes), bias `b ∈ ℝ^{C_out}`; 1-D signals are NWC with WIO kernels.

Geometry of one spatial axis. Each input position $i$ scatters $X[i] W[j]$ to the
output position $p = s·i + d·j − lo$ ($0 ≤ j < k$). Before cropping the output spans
$s(n − 1) + k_d$ positions ($k_d = d(k − 1) + 1$, the dilated kernel extent); `padding`
crops $lo$ at the start and $hi$ at the end:

$$ n_{out} = s(n − 1) + k_d − lo − hi. $$

`"VALID"`: $lo = hi = 0$ (nothing cropped). `"SAME"`: $n_{out} = s·n$, with $lo$ the
`"SAME"` padding of the convolution that maps $s·n$ positions back to $n$
($t = \\max(k_d − s, 0)$, $lo = ⌊t/2⌋$) and $hi = s(n − 1) + k_d − lo − s·n$ (negative
when $k_d < s$: the last positions then receive nothing and are zero). Explicit
`((lo, hi), …)` crops, each ≥ 0 (PyTorch's `padding=p, output_padding=q` is
`(p, p − q)`).

With these conventions the transposed convolution *is* the adjoint, for the inner
product $⟨A, B⟩ = Σ A ⊙ B$, of `conv2d` in its input: for `conv2d` with the same
stride, dilation and padding $(lo, hi)$ and kernel $W^⊤ = $ `swapaxes(W, 2, 3)`
($k_h×k_w×C_{out}×C_{in}$),

$$ ⟨\\mathrm{conv2d}(Y, W^⊤), X⟩ = ⟨Y, \\mathrm{conv\\_transpose2d}(X, W)⟩ \\quad
   (Y ∈ ℝ^{N×n_{out}×…×C_{out}}, X ∈ ℝ^{N×n×…×C_{in}}). $$

References: Dumoulin & Visin, "A guide to convolution arithmetic for deep learning",
2016; Zeiler et al., "Deconvolutional Networks", 2010.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from fdl import _validate as v
from fdl.ops.conv import Padding, _conv2d_kernel_grad, as_tuple, conv2d, explicit_padding
from fdl.primitive import Example, gaussian, primitive

__all__ = ["conv_transpose1d", "conv_transpose2d", "transpose_crops"]

_NHWC = ("NHWC", "HWIO", "NHWC")


def transpose_crops(padding: Padding, sizes: Sequence[int], extents: Sequence[int],
                    strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """`(lo, hi)` crops per spatial axis of a transposed convolution whose input has
    `sizes`, dilated kernel `extents` and `strides` (module docstring; `hi` may be
    negative for `"SAME"`: zeros appended)."""
    if isinstance(padding, str):
        if padding == "VALID":
            return tuple((0, 0) for _ in sizes)
        crops = []
        for n, e, s in zip(sizes, extents, strides):
            (lo, _), = explicit_padding("SAME", (s * n,), (e,), (s,))
            crops.append((lo, s * (n - 1) + e - lo - s * n))
        return tuple(crops)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _geometry(x_shape, w_shape, stride, padding, dilation):
    s, d = as_tuple(stride, 2), as_tuple(dilation, 2)
    extents = [di * (k - 1) + 1 for di, k in zip(d, w_shape[:2])]
    return s, d, extents, transpose_crops(padding, x_shape[1:3], extents, s)


# --------------------------------------------------------------------------- #
# conv_transpose2d
# --------------------------------------------------------------------------- #


def conv_transpose2d(x: jax.Array, w: jax.Array, b: jax.Array,
                     stride: int | Sequence[int] = 1, padding: Padding = "SAME",
                     dilation: int | Sequence[int] = 1) -> jax.Array:
    r"""2-D transposed convolution $Z = X ⋆ᵀ W + b$ (the adjoint of `conv2d`), NHWC/HWIO.

    Shapes: $X ∈ ℝ^{N×n_h×n_w×C_{in}}$, $W ∈ ℝ^{k_h×k_w×C_{in}×C_{out}}$,
    $b ∈ ℝ^{C_{out}}$, $Z ∈ ℝ^{N×o_h×o_w×C_{out}}$ with
    $o = s(n − 1) + d(k − 1) + 1 − lo − hi$ per axis; `stride` $s$, `padding`
    (crops, see the module docstring) and `dilation` $d$ static.

    Forward, one spatial axis written out: every input pixel scatters,

    $$ Z[ν, p, c'] = Σ_{i, j, c \,:\, s·i + d·j − lo = p} X[ν, i, c]\, W[j, c, c'] + b[c']. $$

    Computed as a stride-1 correlation of $X$ dilated by $s$ ($s − 1$ zeros between
    elements) with the flipped kernel $W̃[j] = W[k − 1 − j]$, padded $d(k − 1) − lo$ below and
    $d(k − 1) − hi$ above (negative pads crop).

    Derivation ($G = ∂L/∂Z ∈ ℝ^{N×o_h×o_w×C_{out}}$):

    * Bias: $∂L/∂b = Σ_{ν, p} G[ν, p, :]$ (sum over $N$, $o_h$, $o_w$).
    * Input: $Z$ is linear in $X$ and each $X[ν,i,c]$ reaches the outputs
      $p = s·i + d·j − lo$ with weight $W[j,c,c']$, so
      $∂L/∂X[ν,i,c] = Σ_{j,c'} G[ν, s·i + d·j − lo, c']\, W[j,c,c']$
      ($G$ zero outside $[0, o)$). This is exactly the *forward convolution*
      `conv2d` of $G$ with the channel-transposed kernel $W^⊤ = $ `swapaxes(W, 2, 3)`
      ($k_h×k_w×C_{out}×C_{in}$), stride $s$, dilation $d$, padding $(lo, hi)$: it
      returns $N×n_h×n_w×C_{in}$ because $⌊(o + lo + hi − k_d)/s⌋ + 1 = n$. The
      backward calls `conv2d`'s forward (for a negative $hi$ the last $−hi$ rows of
      $G$, which no input reaches, are dropped and $hi$ taken as 0).
    * Kernel: $∂L/∂W[j,c,c'] = Σ_{ν,i} X[ν,i,c]\, G[ν, s·i + d·j − lo, c']$ — the
      kernel gradient of that same `conv2d` (input $G$, output cotangent $X$),
      transposed in its channels: `conv2d`'s matrix-product kernel gradient.

    Residuals: $X$ and $W$.

    Tangent: $Z$ is bilinear in $(X, W)$ and affine in $b$:
    $dZ = dX ⋆ᵀ W + X ⋆ᵀ dW + db$ ($N×o_h×o_w×C_{out}$).
    """
    s, d, extents, crops = _geometry(x.shape, w.shape, stride, padding, dilation)
    # dilate and pad X in one lax.pad (interior s − 1 zeros; negative edges crop), then a
    # plain correlation: XLA:CPU runs a convolution with lhs_dilation very slowly once its
    # kernel is batched (vmap over kernels, as the finite-difference checks do)
    config = [(0, 0, 0)] + [(e - 1 - lo, e - 1 - hi, si - 1)
                            for e, (lo, hi), si in zip(extents, crops, s)] + [(0, 0, 0)]
    xd = lax.pad(x, jnp.zeros((), x.dtype), config)
    z = lax.conv_general_dilated(xd, jnp.flip(w, axis=(0, 1)), (1, 1), "VALID",
                                 rhs_dilation=d, dimension_numbers=_NHWC)
    return z + b.reshape(1, 1, 1, -1)


def _conv_transpose2d_save(x, w, b, stride, padding, dilation, z):
    return x, w


def _conv_transpose2d_backward(stride, padding, dilation, residuals, g):
    x, w = residuals
    s, d, _, crops = _geometry(x.shape, w.shape, stride, padding, dilation)
    # hi < 0: the last −hi positions of Z no input reaches (zeros); their cotangents
    # reach nothing either, so drop them and read G with padding (lo, 0)
    extra = [max(-hi, 0) for _, hi in crops]
    g_ext = lax.pad(g, jnp.zeros((), g.dtype), [(0, 0, 0), (0, -extra[0], 0),
                                                  (0, -extra[1], 0), (0, 0, 0)])
    pads = tuple((lo, hi + e) for (lo, hi), e in zip(crops, extra))
    w_t = jnp.swapaxes(w, 2, 3)
    dx = conv2d.forward(g_ext, w_t, jnp.zeros((w.shape[2],), g.dtype), s, pads, d)
    dw = _conv2d_kernel_grad(g_ext, x, s, d, pads, w.shape[:2])  # k×k×C_out×C_in
    return dx, jnp.swapaxes(dw, 2, 3), jnp.sum(g, axis=(0, 1, 2))


def _check_transpose(fn, x, w, stride, padding, dilation, axes):
    """The static arguments, and the crops leave at least one output along each spatial
    axis (`axes`: `"HW"` or `"W"`); the shapes are the spec's."""
    nd = len(axes)
    s = v.positive_ints(fn, "stride", stride, nd)
    d = v.positive_ints(fn, "dilation", dilation, nd)
    v.padding(fn, padding, nd)
    extents = [di * (k - 1) + 1 for di, k in zip(d, w.shape[:nd])]
    crops = transpose_crops(padding, x.shape[1:-1], extents, s)
    for axis, n, e, si, (lo, hi) in zip(axes, x.shape[1:-1], extents, s, crops):
        full = si * (n - 1) + e
        if full - lo - hi < 1:
            raise ValueError(
                f"{fn}: along {axis} the transposed convolution writes {full} positions but "
                f"padding crops {lo + hi} of them ({(lo, hi)}); crop less")


def _conv_transpose2d_validate(x, w, b, stride, padding, dilation):
    _check_transpose("conv_transpose2d", x, w, stride, padding, dilation, "HW")


def _conv_transpose2d_tangent(stride, padding, dilation, residuals, t):
    x, w = residuals
    dx, dw, db = t
    return (conv_transpose2d.forward(dx, w, db, stride, padding, dilation)
            + conv_transpose2d.forward(x, dw, jnp.zeros_like(db), stride, padding, dilation))


conv_transpose2d = primitive(
    conv_transpose2d, _conv_transpose2d_backward, save=_conv_transpose2d_save,
    static=("stride", "padding", "dilation"),
    spec=v.shapes("conv_transpose2d", x="N×H×W×C_in", w="k_h×k_w×C_in×C_out", b="C_out"),
    validate=_conv_transpose2d_validate,
    tangent=_conv_transpose2d_tangent, examples=[
        Example((gaussian(2, 3, 3, 3), gaussian(3, 3, 3, 4), gaussian(4), 2, "SAME", 1)),
        Example((gaussian(2, 3, 2, 2), gaussian(2, 3, 2, 3), gaussian(3), (2, 1), "VALID", 1)),
        Example((gaussian(1, 4, 3, 2), gaussian(3, 2, 2, 2), gaussian(2), (2, 3), ((1, 0), (2, 1)),
                 (1, 2))),
        Example((gaussian(1, 3, 3, 1), gaussian(1, 1, 1, 2), gaussian(2), 3, "SAME", 1)),  # hi < 0
    ],
)


# --------------------------------------------------------------------------- #
# conv_transpose1d: conv_transpose2d with a unit H axis
# --------------------------------------------------------------------------- #


def _as_2d(stride, padding, dilation):
    pad2 = padding if isinstance(padding, str) else ((0, 0),) + tuple(
        (int(lo), int(hi)) for lo, hi in padding)
    return (1, as_tuple(stride, 1)[0]), pad2, (1, as_tuple(dilation, 1)[0])


def conv_transpose1d(x: jax.Array, w: jax.Array, b: jax.Array,
                     stride: int | Sequence[int] = 1, padding: Padding = "SAME",
                     dilation: int | Sequence[int] = 1) -> jax.Array:
    r"""1-D transposed convolution $Z = X ⋆ᵀ W + b$ (the adjoint of `conv1d`), NWC/WIO.

    Shapes: $X ∈ ℝ^{N×n×C_{in}}$, $W ∈ ℝ^{k×C_{in}×C_{out}}$, $b ∈ ℝ^{C_{out}}$,
    $Z ∈ ℝ^{N×o×C_{out}}$, $o = s(n − 1) + d(k − 1) + 1 − lo − hi$; `padding` is
    `"SAME"` ($o = s·n$), `"VALID"` or `((lo, hi),)` crops.

    It is `conv_transpose2d` with a unit H axis, so the derivation is that one along
    W alone ($G = ∂L/∂Z$):

    * $∂L/∂b = Σ_{ν,p} G[ν,p,:]$;
    * $∂L/∂X[ν,i,c] = Σ_{j,c'} G[ν, s·i + d·j − lo, c'] W[j,c,c']$ — the forward
      `conv1d` of $G$ with the kernel $W^⊤$ ($k×C_{out}×C_{in}$), stride $s$,
      dilation $d$, padding $(lo, hi)$;
    * $∂L/∂W[j,c,c'] = Σ_{ν,i} X[ν,i,c] G[ν, s·i + d·j − lo, c']$.

    Residuals: $X$, $W$. Tangent: $dZ = dX ⋆ᵀ W + X ⋆ᵀ dW + db$ ($N×o×C_{out}$).
    """
    s2, pad2, d2 = _as_2d(stride, padding, dilation)
    return conv_transpose2d.forward(x[:, None], w[None], b, s2, pad2, d2)[:, 0]


def _conv_transpose1d_backward(stride, padding, dilation, residuals, g):
    x, w = residuals
    s2, pad2, d2 = _as_2d(stride, padding, dilation)
    dx, dw, db = _conv_transpose2d_backward(s2, pad2, d2, (x[:, None], w[None]), g[:, None])
    return dx[:, 0], dw[0], db


def _conv_transpose1d_validate(x, w, b, stride, padding, dilation):
    _check_transpose("conv_transpose1d", x, w, stride, padding, dilation, "W")


def _conv_transpose1d_tangent(stride, padding, dilation, residuals, t):
    x, w = residuals
    dx, dw, db = t
    return (conv_transpose1d.forward(dx, w, db, stride, padding, dilation)
            + conv_transpose1d.forward(x, dw, jnp.zeros_like(db), stride, padding, dilation))


conv_transpose1d = primitive(
    conv_transpose1d, _conv_transpose1d_backward, save=_conv_transpose2d_save,
    static=("stride", "padding", "dilation"),
    spec=v.shapes("conv_transpose1d", x="N×W×C_in", w="k_w×C_in×C_out", b="C_out"),
    validate=_conv_transpose1d_validate,
    tangent=_conv_transpose1d_tangent, examples=[
        Example((gaussian(2, 5, 3), gaussian(3, 3, 2), gaussian(2), 2, "SAME", 1)),
        Example((gaussian(1, 4, 2), gaussian(4, 2, 3), gaussian(3), 3, ((2, 1),), 2)),
    ],
)
