"""Padding by reflection or wrap-around: the borders a convolution sees when it should
not see zeros (`Conv2D(padding="reflect")`, `padding="circular"`).

Why a primitive of its own and not a `padding=` mode of `conv2d`: XLA pads with
constants only (inside the convolution, for free); a reflected or wrapped border is
a copy of slices of the input (cheap: `jnp.pad` concatenates reversed or wrapped slices,
no arithmetic), after which the convolution runs with `"VALID"`. The two maps compose,
so each keeps one derivation: the convolution's, and this one's adjoint below. The conv
layers (`fdl.layers.Conv1D/Conv2D`) do exactly that composition.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl.primitive import Example, gaussian, primitive

__all__ = ["pad", "PAD_MODES"]

PAD_MODES = ("reflect", "circular")
_JNP_MODE = {"reflect": "reflect", "circular": "wrap"}


def _pairs(pads) -> tuple[tuple[int, int], ...]:
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def pad(x: jax.Array, pads: Sequence[Sequence[int]], mode: str = "reflect") -> jax.Array:
    r"""Pad every axis of $X$ by `pads[a] = (lo, hi)` with reflected or wrapped values.

    Shapes: $X ∈ ℝ^{n_1×…×n_r}$, `pads` one `(lo, hi)` per axis (static, ≥ 0; `(0, 0)` for
    the batch and channel axes), $Y ∈ ℝ^{(n_1 + lo_1 + hi_1)×…}$; `mode` static. Along one
    axis of length $n$, with $Y[lo + t] = X[t]$ for $0 ≤ t < n$:

    * `"reflect"` (mirror without repeating the edge; $lo, hi ≤ n − 1$):
      $Y[lo − 1 − t] = X[t + 1]$ and $Y[lo + n + t] = X[n − 2 − t]$;
    * `"circular"` (wrap around; $lo, hi ≤ n$): $Y[lo − 1 − t] = X[n − 1 − t]$ and
      $Y[lo + n + t] = X[t]$.

    Derivation. $Y = P X$ is linear, each $Y$ entry a copy of one $X$ entry, so the
    adjoint sums: $∂L/∂X[t] = Σ_{p : Y[p] \text{ copies } X[t]} G[p]$. Along one axis:
    the centre $G[lo : lo + n]$, plus the low border folded back onto the entries it
    copied (reflect: $G[0:lo]$ reversed onto $X[1 : lo + 1]$; circular: onto
    $X[n − lo : n]$) and the high border likewise (reflect: $G[lo + n:]$ reversed onto
    $X[n − 1 − hi : n − 1]$; circular: onto $X[0 : hi]$). The map is a product of one
    map per axis, so the backward folds axis by axis.

    Residuals: none ($X$'s shape is the output's minus the pads).

    Tangent: linear, $dY = P\, dX$ (`pad` of $dX$, same pads and mode).
    """
    return jnp.pad(x, _pairs(pads), mode=_JNP_MODE[mode])


def _save(x, pads, mode, y):
    return ()


def _fold(g, axis, lo, hi, mode):
    """The adjoint of padding one axis: `g` (length `n + lo + hi` on `axis`) → length `n`."""
    n = g.shape[axis] - lo - hi
    take = lambda a, b: jax.lax.slice_in_dim(g, a, b, axis=axis)  # noqa: E731
    dx = take(lo, lo + n)
    if lo:
        low = take(0, lo)
        if mode == "reflect":
            dx = _add_at(dx, axis, 1, jnp.flip(low, axis))
        else:
            dx = _add_at(dx, axis, n - lo, low)
    if hi:
        high = take(lo + n, lo + n + hi)
        if mode == "reflect":
            dx = _add_at(dx, axis, n - 1 - hi, jnp.flip(high, axis))
        else:
            dx = _add_at(dx, axis, 0, high)
    return dx


def _add_at(a, axis, start, b):
    """`a` with `b` added to the slice starting at `start` along `axis`."""
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + b.shape[axis])
    return a.at[tuple(index)].add(b)


def _backward(pads, mode, residuals, g):
    for axis, (lo, hi) in enumerate(_pairs(pads)):
        g = _fold(g, axis, lo, hi, mode)
    return (g,)


def _tangent(pads, mode, residuals, t):
    (dx,) = t
    return pad.forward(dx, pads, mode)


def _validate(x, pads, mode):
    fn = "pad"
    v.floating(fn, "x", x)
    if mode not in PAD_MODES:
        raise ValueError(f"{fn}: mode must be one of {PAD_MODES}, got {mode!r} (zero padding is "
                         "the convolutions' own padding=)")
    ok = (isinstance(pads, (tuple, list)) and len(pads) == x.ndim
          and all(isinstance(p, (tuple, list)) and len(p) == 2
                  and all(v.is_int(e) and e >= 0 for e in p) for p in pads))
    if not ok:
        raise ValueError(f"{fn}: pads must be {x.ndim} pairs (lo, hi) of ints ≥ 0, one per axis "
                         f"of x (shape {tuple(x.shape)}), got {pads!r}")
    limit = (lambda n: n - 1) if mode == "reflect" else (lambda n: n)
    for axis, (n, (lo, hi)) in enumerate(zip(x.shape, _pairs(pads))):
        if max(lo, hi) > limit(n):
            raise ValueError(
                f"{fn}: {mode} padding of axis {axis} by {(lo, hi)} exceeds what its {n} "
                f"entries provide (at most {limit(n)} a side); pad less or use zero padding")


pad = primitive(
    pad, _backward, save=_save, static=("pads", "mode"), validate=_validate,
    tangent=_tangent, examples=[
        Example((gaussian(2, 5, 4, 3), ((0, 0), (2, 1), (1, 3), (0, 0)), "reflect")),
        Example((gaussian(2, 5, 4, 3), ((0, 0), (2, 5), (4, 1), (0, 0)), "circular")),
        Example((gaussian(3, 6, 2), ((0, 0), (3, 2), (0, 0)), "reflect")),
    ],
)
