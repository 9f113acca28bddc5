"""Sequence layers: pooling over the valid steps and the sinusoidal position encoding.

Thin `Layer` wrappers over `fdl.ops.sequence_mean`, `sequence_max`, `sequence_last` and
`fdl.ops.sinusoidal`, whose primitives carry the derivations. Batch-first:
$x ∈ ℝ^{N×T×d}$, `input_shape = (T, d)`. `apply` takes `lengths=` (ints in $[1, T]$,
one per sequence; an extension of the protocol that combinators do not pass): padded
steps are not read and get zero gradient.

A transformer classifier is `TransformerEncoderBlock`s, then `SequencePool("mean")`,
then `Dense(classes)`.
"""

from __future__ import annotations

from typing import Any

import jax

from fdl import _validate as v
from fdl import ops
from fdl.layers.base import Layer, Shape

__all__ = ["POOLINGS", "SequencePool", "SinusoidalEncoding"]

POOLINGS = {"mean": ops.sequence_mean, "max": ops.sequence_max, "last": ops.sequence_last}
"""The poolings by name: $N×T×d → N×d$."""


def SequencePool(kind: str = "mean") -> Layer:
    """Pool a batch of sequences over time, within each sequence's length.

    `kind`: `"mean"` ($y = (1/ℓ) Σ_{t<ℓ} x_t$), `"max"` (feature by feature over the
    valid steps) or `"last"` ($y = x_{ℓ−1}$, the last valid step). `input_shape = (T, d)`
    → `(d,)`; no params. `apply(params, state, x, *, lengths=None)`.
    """
    fn = "SequencePool"
    if kind not in POOLINGS:
        raise ValueError(f"{fn}: kind must be one of {tuple(POOLINGS)}, got {kind!r}")

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict, dict]:
        _, d = v.input_shape(fn, input_shape, "(T, d) (steps, features)", rank=2)
        return (d,), {}, {}

    def apply(params: dict, state: dict, x: jax.Array, *, key: jax.Array | None = None,
              train: bool = False, lengths: jax.Array | None = None) -> tuple[jax.Array, dict]:
        return POOLINGS[kind](x, lengths), state

    return Layer(init, apply, f"sequence_{kind}_pool")


def SinusoidalEncoding(*, offset: int = 0, base: float = 10000.0) -> Layer:
    """Add the sinusoidal position table (`fdl.ops.sinusoidal`): $Y = X + P$.

    `input_shape = (T, d)`, kept; no params. `offset` is the position of the first step
    (continuing a sequence), `base` the longest period's scale.
    """
    fn = "SinusoidalEncoding"
    if not v.is_int(offset) or offset < 0:
        raise ValueError(f"{fn}: offset must be an int ≥ 0, got {offset!r}")
    v.finite_number(fn, "base", base, low=1, low_inclusive=False)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict, dict]:
        return v.input_shape(fn, input_shape, "(T, d) (steps, features)", rank=2), {}, {}

    def apply(params: dict, state: dict, x: Any, *, key: jax.Array | None = None,
              train: bool = False) -> tuple[jax.Array, dict]:
        return ops.sinusoidal(x, offset, base), state

    return Layer(init, apply, "sinusoidal_encoding")
