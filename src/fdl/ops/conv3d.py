"""3-D convolution $Y = X ⋆ W + b$ over volumes (video, medical scans).

Layout: NDHWC volumes ($X ∈ ℝ^{N×D×H×W×C_in}$), DHWIO kernels
($W ∈ ℝ^{k_d×k_h×k_w×C_in×C_out}$), bias $b ∈ ℝ^{C_out}$. `stride`, `dilation`: an
int or one per spatial axis; `padding`: `"SAME"`, `"VALID"` or three `(lo, hi)` pairs.
The geometry of each axis is `fdl.ops.conv`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from fdl import _validate as v
from fdl.ops.conv import Padding, as_tuple, explicit_padding
from fdl.primitive import Example, gaussian, primitive

__all__ = ["conv3d"]

_NDHWC = ("NDHWC", "DHWIO", "NDHWC")


def _geometry(x_shape, w_shape, stride, padding, dilation):
    s, d = as_tuple(stride, 3), as_tuple(dilation, 3)
    extents = [di * (k - 1) + 1 for di, k in zip(d, w_shape[:3])]
    return s, d, explicit_padding(padding, x_shape[1:4], extents, s)


def conv3d(x: jax.Array, w: jax.Array, b: jax.Array, stride: int | Sequence[int] = 1,
           padding: Padding = "SAME", dilation: int | Sequence[int] = 1) -> jax.Array:
    r"""3-D convolution (cross-correlation) $Y = X ⋆ W + b$, NDHWC/DHWIO.

    Shapes: $X ∈ ℝ^{N×D×H×W×C_{in}}$, $W ∈ ℝ^{k_d×k_h×k_w×C_{in}×C_{out}}$,
    $b ∈ ℝ^{C_{out}}$, $Y ∈ ℝ^{N×o_d×o_h×o_w×C_{out}}$, $o = ⌊(n + lo + hi − k_d)/s⌋ + 1$
    per axis ($k_d = d(k − 1) + 1$); `stride`, `padding`, `dilation` static.

    Forward, with $i$, $j$, $p$ multi-indices over the three spatial axes ($X$ zero
    outside the volume): $Y[ν,i,c'] = Σ_{j,c} X[ν, s·i + d·j − lo, c]\, W[j,c,c'] + b[c']$.

    Derivation ($G = ∂L/∂Y$) — `conv2d`'s, with one more spatial axis:

    * $∂L/∂b = Σ_{ν,i} G[ν,i,:]$;
    * $∂L/∂W[j,c,c'] = Σ_{ν,i} X[ν, s·i + d·j − lo, c]\, G[ν,i,c']$: the correlation
      of $X$ with $G$ ($C_{in}$ as the batch, $N$ contracted, window stride $d$, kernel
      dilation $s$);
    * $∂L/∂X[ν,p,c] = Σ_{i,j,c' : s·i + d·j − lo = p} G[ν,i,c']\, W[j,c,c']$: the
      transposed convolution — $G$ dilated by $s$, padded $d(k − 1) − lo$ below and
      $n + lo − s(o − 1) − 1$ above, correlated with the flipped, channel-transposed
      kernel at dilation $d$.

    Residuals: $X$ and $W$.

    Tangent: bilinear in $(X, W)$, affine in $b$: $dY = dX ⋆ W + X ⋆ dW + db$.
    """
    s, d, pads = _geometry(x.shape, w.shape, stride, padding, dilation)
    y = lax.conv_general_dilated(x, w, s, pads, rhs_dilation=d, dimension_numbers=_NDHWC)
    return y + b.reshape(1, 1, 1, 1, -1)


def _save(x, w, b, stride, padding, dilation, y):
    return x, w


def _backward(stride, padding, dilation, residuals, g):
    x, w = residuals
    s, d, pads = _geometry(x.shape, w.shape, stride, padding, dilation)
    k, n, o = w.shape[:3], x.shape[1:4], g.shape[1:4]
    pads_dx = [(di * (ki - 1) - lo, ni + lo - si * (oi - 1) - 1)
               for si, di, ki, ni, oi, (lo, _) in zip(s, d, k, n, o, pads)]
    w_flipped = jnp.swapaxes(jnp.flip(w, axis=(0, 1, 2)), 3, 4)
    dx = lax.conv_general_dilated(g, w_flipped, (1, 1, 1), pads_dx, lhs_dilation=s,
                                  rhs_dilation=d, dimension_numbers=_NDHWC)
    pads_dw = [(lo, si * (oi - 1) + di * (ki - 1) + 1 - ni - lo)
               for si, di, ki, ni, oi, (lo, _) in zip(s, d, k, n, o, pads)]
    dw = lax.conv_general_dilated(x, g, d, pads_dw, rhs_dilation=s,
                                  dimension_numbers=("CDHWN", "IDHWO", "DHWNC"))
    return dx, dw, jnp.sum(g, axis=(0, 1, 2, 3))


def _validate(x, w, b, stride, padding, dilation):
    fn = "conv3d"
    s = v.positive_ints(fn, "stride", stride, 3)
    d = v.positive_ints(fn, "dilation", dilation, 3)
    v.padding(fn, padding, 3)
    extents = [di * (k - 1) + 1 for di, k in zip(d, w.shape[:3])]
    pads = explicit_padding(padding, x.shape[1:4], extents, s)
    for axis, n, e, si, pad in zip("DHW", x.shape[1:4], extents, s, pads):
        v.window_output_size(fn, axis, n, e, si, pad, "dilated kernel")


def _tangent(stride, padding, dilation, residuals, t):
    x, w = residuals
    dx, dw, db = t
    return (conv3d.forward(dx, w, db, stride, padding, dilation)
            + conv3d.forward(x, dw, jnp.zeros_like(db), stride, padding, dilation))


conv3d = primitive(
    conv3d, _backward, save=_save, static=("stride", "padding", "dilation"),
    spec=v.shapes("conv3d", x="N×D×H×W×C_in", w="k_d×k_h×k_w×C_in×C_out", b="C_out"),
    validate=_validate, tangent=_tangent, examples=[
        # small: the finite differences evaluate the forward with a batch of kernels, a
        # grouped 3-D convolution that XLA:CPU runs in time quadratic in the batch
        Example((gaussian(1, 3, 3, 2, 2), gaussian(2, 2, 1, 2, 2), gaussian(2), 1, "SAME", 1)),
        Example((gaussian(1, 5, 3, 4, 1), gaussian(2, 2, 2, 1, 1), gaussian(1), (2, 1, 2),
                 ((1, 0), (0, 1), (1, 1)), (1, 2, 1))),
    ],
)
