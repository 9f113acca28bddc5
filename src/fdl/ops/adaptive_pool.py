"""Pooling to a given output size: adaptive average pooling, and global max pooling.

Layout NHWC (`X ∈ ℝ^{N×H×W×C}`), each channel pooled separately.

Adaptive bins (PyTorch's `AdaptiveAvgPool2d` rule), along an axis of length $n$ pooled
to $o$ outputs: bin $i$ covers $[⌊i n/o⌋, ⌈(i + 1) n/o⌉)$. The bins tile the axis;
they overlap by one position where $o$ does not divide $n$, and are the
non-overlapping windows $n/o$ wide where it does.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v
from fdl._samplers import _cast
from fdl.primitive import Example, gaussian, primitive

__all__ = ["adaptive_avg_pool2d", "adaptive_bins", "global_max_pool"]


def adaptive_bins(n: int, o: int) -> list[tuple[int, int]]:
    """`[start, end)` of each of the $o$ adaptive bins of an axis of length $n$."""
    return [(i * n // o, -(-(i + 1) * n // o)) for i in range(o)]


def _averaging(n: int, o: int, dtype) -> jax.Array:
    """$A ∈ ℝ^{o×n}$, $A[i, p] = 1/|\\mathrm{bin}_i|$ for $p$ in bin $i$, else 0 (a constant)."""
    a = np.zeros((o, n))
    for i, (lo, hi) in enumerate(adaptive_bins(n, o)):
        a[i, lo:hi] = 1 / (hi - lo)
    return jnp.asarray(a, dtype)


def _sizes(output_size) -> tuple[int, int]:
    if v.is_int(output_size):
        return (int(output_size),) * 2
    return tuple(int(o) for o in output_size)


# --------------------------------------------------------------------------- #
# adaptive average pooling
# --------------------------------------------------------------------------- #


def adaptive_avg_pool2d(x: jax.Array, output_size: int | Sequence[int]) -> jax.Array:
    r"""Average pooling to a fixed `output_size` $(o_h, o_w)$, whatever $H×W$ is, NHWC.

    Shapes: $X ∈ ℝ^{N×H×W×C}$ → $Y ∈ ℝ^{N×o_h×o_w×C}$; `output_size` static (an int
    for a square). Output $(i, j)$ is the mean of its bins' rectangle (module
    docstring). Written as two averaging matrices,
    $A_h ∈ ℝ^{o_h×H}$ and $A_w ∈ ℝ^{o_w×W}$ with $A[i, p] = 1/|\mathrm{bin}_i|$ on bin $i$:

    $$ Y[ν, :, :, c] = A_h\, X[ν, :, :, c]\, A_wᵀ. $$

    Derivation: $Y$ is linear in $X$, and the adjoint of $X ↦ A_h X A_wᵀ$ is
    $G ↦ A_hᵀ G A_w$, so $∂L/∂X[ν,:,:,c] = A_hᵀ\, G[ν,:,:,c]\, A_w$: each output's
    cotangent is spread evenly over its bin, summed where bins overlap.
    ($o = 1$ is global average pooling; $o$ dividing $n$ is `avg_pool2d` with window
    and stride $n/o$.)

    Residuals: none but $X$'s shape (the matrices are constants of the shapes).

    Tangent: linear, $dY = A_h\, dX\, A_wᵀ$ per example and channel.
    """
    o = _sizes(output_size)
    a_h, a_w = (_averaging(n, oi, x.dtype) for n, oi in zip(x.shape[1:3], o))
    return jnp.einsum("ih,jw,nhwc->nijc", a_h, a_w, x)


def _shape_of(x):
    return jnp.zeros(x.shape[:-1] + (0,), jnp.int8)


def _adaptive_save(x, output_size, y):
    return _shape_of(x)


def _adaptive_backward(output_size, shape_of_x, g):
    a_h, a_w = (_averaging(n, oi, g.dtype) for n, oi in zip(shape_of_x.shape[1:3], g.shape[1:3]))
    return (jnp.einsum("ih,jw,nijc->nhwc", a_h, a_w, g),)


def _adaptive_tangent(output_size, shape_of_x, t):
    (dx,) = t
    return adaptive_avg_pool2d.forward(dx, output_size)


def _adaptive_validate(x, output_size):
    fn = "adaptive_avg_pool2d"
    o = v.positive_ints(fn, "output_size", output_size, 2)
    for axis, n, oi in zip("HW", x.shape[1:3], o):
        if oi > n:
            raise ValueError(
                f"{fn}: output_size {oi} along {axis} exceeds the input's {n} (x of shape "
                f"{tuple(x.shape)}); each output needs at least one input position")


adaptive_avg_pool2d = primitive(
    adaptive_avg_pool2d, _adaptive_backward, save=_adaptive_save, static=("output_size",),
    spec=v.shapes("adaptive_avg_pool2d", x="N×H×W×C"), validate=_adaptive_validate,
    tangent=_adaptive_tangent, examples=[
        Example((gaussian(2, 5, 7, 3), (2, 3))),   # overlapping bins
        Example((gaussian(1, 6, 4, 2), 2)),        # o divides n: plain windows
        Example((gaussian(2, 3, 3, 1), 1)),        # global average
    ],
)


# --------------------------------------------------------------------------- #
# global max pooling
# --------------------------------------------------------------------------- #


def global_max_pool(x: jax.Array) -> jax.Array:
    r"""Global max pooling $Y[ν,c] = \max_{h,w} X[ν,h,w,c]$: NHWC → NC.

    Derivation: locally the max is the value at its arg-max $p^*(ν,c)$ (the first
    maximum in row-major $(h, w)$ order at ties, where the function is not
    differentiable and this picks a subgradient), so
    $∂Y[ν,c]/∂X[ν,p,c] = [p = p^*(ν,c)]$ and
    $∂L/∂X[ν,p,c] = G[ν,c]\,[p = p^*(ν,c)]$: each cotangent goes to its arg-max.
    The arg-max is declared as the primitive's `switches` (the derivative jumps where
    it changes).

    Residuals: the arg-max $p^* ∈ \{0…HW−1\}^{N×C}$ (int32) and $X$'s shape.

    Tangent: $dY[ν,c] = dX[ν, p^*(ν,c), c]$ ($N×C$).
    """
    return jnp.max(x, axis=(1, 2))


def _argmax(x):
    return jnp.argmax(x.reshape(x.shape[0], -1, x.shape[-1]), axis=1).astype(jnp.int32)


def _gmax_save(x, y):
    return _argmax(x), _shape_of(x)


def _gmax_backward(residuals, g):
    argmax, shape_of_x = residuals
    n, h, w = shape_of_x.shape[:3]
    hit = jnp.arange(h * w, dtype=jnp.int32)[None, :, None] == argmax[:, None, :]
    return ((hit * g[:, None, :]).reshape(n, h, w, g.shape[-1]),)


def _gmax_tangent(residuals, t):
    argmax, _ = residuals
    (dx,) = t
    flat = dx.reshape(dx.shape[0], -1, dx.shape[-1])
    return jnp.take_along_axis(flat, argmax[:, None, :], axis=1)[:, 0]


def _distinct(*shape: int):
    """Example sampler: a permutation of evenly spaced values (no ties, well apart)."""
    size = int(np.prod(shape))

    def sample(rng, dtype):
        ranks = np.random.default_rng(rng).permutation(size).reshape(shape)
        return _cast((ranks - size / 2) * (4.0 / size), dtype)

    return sample


global_max_pool = primitive(
    global_max_pool, _gmax_backward, save=_gmax_save,
    spec=v.shapes("global_max_pool", x="N×H×W×C"), switches=_argmax,
    tangent=_gmax_tangent, examples=[
        Example((_distinct(2, 3, 4, 5),)), Example((_distinct(3, 2, 2, 1),)),
    ],
)
