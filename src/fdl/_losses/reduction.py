"""The reduction every loss ends with, and its cotangent.

A loss computes one value $ℓ_n$ per example and reduces them with `reduction`
(static): `"mean"` $L = (1/n) Σ_n ℓ_n$, `"sum"` $L = Σ_n ℓ_n$, or `"none"` (the
$ℓ_n$ themselves). With output cotangent $g$, each $ℓ_n$ receives $g/n$, $g$ or
$g_n$.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v

REDUCTIONS = ("mean", "sum", "none")


def reduce(values: jax.Array, reduction: str) -> jax.Array:
    """$ℓ$ reduced: mean, sum, or as is."""
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    return values


def per_example(g: jax.Array, shape: tuple, reduction: str) -> jax.Array:
    """The cotangent of each $ℓ_n$, broadcast to `shape`."""
    if reduction == "none":
        return g
    n = int(np.prod(shape)) if reduction == "mean" else 1
    return jnp.broadcast_to(g / n, shape)


def check_reduction(fn: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_probabilities(fn: str, targets: jax.Array) -> None:
    """Where the values are known, binary targets must lie in $[0, 1]$ (and be finite)."""
    if v.is_concrete(targets) and targets.size:
        t = np.asarray(targets)
        bad = (t < 0) | (t > 1) | ~np.isfinite(t)
        if bad.any():
            i = v.first_index(bad)
            raise ValueError(f"{fn}: targets must be in [0, 1], got {t[i]} at index {i}")
