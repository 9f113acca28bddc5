"""Variable-length sequences: length masks and pooling over the valid steps.

Layout is batch-first: $X ∈ ℝ^{…×T×d}$ (time second to last, features last; $…$
the batch axes, usually $N$), with `lengths` $ℓ$ (an int in $[1, T]$ per sequence):
steps $t < ℓ$ are real, steps $t ≥ ℓ$ are padding. `lengths=None` means every
sequence is full ($ℓ = T$). The mask is $m_t = [t < ℓ]$ (`sequence_mask`).

The three poolings $…×T×d → …×d$ read only the valid steps; padded steps get
**zero gradient** whatever their values (even NaN or ∞, which do not reach the output):

* `sequence_mean`: $y = (1/ℓ) Σ_{t<ℓ} x_t$;
* `sequence_max`: $y_k = max_{t<ℓ} x_{t,k}$ (non-smooth: it declares the argmax as
  its switch, so `fdl.check` does not take finite differences across a tie);
* `sequence_last`: $y = x_{ℓ−1}$, the last valid step (a recurrent encoder's summary).

`lengths` are integers: no cotangent. Bad lengths (a float, the wrong shape, or,
where the values are known, one outside `[1, T]`) raise a `ValueError`/`TypeError`
naming the function (`check_lengths`, shared with the recurrent layers and attention).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fdl import _validate as v
from fdl._samplers import _cast
from fdl.primitive import Example, gaussian, primitive

__all__ = ["check_lengths", "padding_mask", "reverse_sequences", "sequence_last", "sequence_mask",
           "sequence_max", "sequence_mean"]


def check_lengths(fn: str, lengths: Any, batch_shape: tuple, steps: int,
                  name: str = "lengths") -> None:
    """`lengths` must be None or an integer array of shape `batch_shape` with values
    in `[1, steps]` (checked where the values are concrete)."""
    if lengths is None:
        return
    if not hasattr(lengths, "shape") or not hasattr(lengths, "dtype"):
        raise TypeError(f"{fn}: {name} must be an integer array of shape {batch_shape} (one "
                        f"length per sequence) or None, got {type(lengths).__name__}; e.g. "
                        f"jnp.array([3, 5], jnp.int32)")
    if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
        raise TypeError(f"{fn}: {name} must be an integer array (the number of valid steps "
                        f"of each sequence), got dtype {jnp.result_type(lengths)}; cast it, "
                        f"e.g. {name}.astype(jnp.int32)")
    if tuple(lengths.shape) != tuple(batch_shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(batch_shape)} (one length per "
                         f"sequence of the batch-first input), got {tuple(lengths.shape)}")
    if v.is_concrete(lengths) and lengths.size:
        a = np.asarray(lengths)
        bad = (a < 1) | (a > steps)
        if bad.any():
            i = v.first_index(bad)
            raise ValueError(f"{fn}: every {name} entry must be in [1, T] = [1, {steps}] "
                             f"(T the padded length), got {a[i]} at index {i}; an empty "
                             "sequence has no valid step: drop it from the batch")


def sequence_mask(lengths: jax.Array | None, steps: int,
                  batch_shape: tuple = ()) -> jax.Array:
    """The boolean mask $m ∈ {0,1}^{…×T}$, $m[…, t] = t < lengths[…]$ (all True,
    of shape `batch_shape + (T,)`, when `lengths` is None)."""
    if lengths is None:
        return jnp.ones(tuple(batch_shape) + (steps,), bool)
    t = lax.broadcasted_iota(jnp.int32, tuple(lengths.shape) + (steps,), lengths.ndim)
    return t < jnp.expand_dims(lengths, -1).astype(jnp.int32)


def _mask3(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """The mask broadcast to $x$'s shape $…×T×d$."""
    m = sequence_mask(lengths, x.shape[-2], x.shape[:-2])
    return jnp.broadcast_to(jnp.expand_dims(m, -1), x.shape)


def _lengths_col(lengths: jax.Array | None, batch_shape: tuple, steps: int,
                 dtype: Any) -> jax.Array:
    """$ℓ$ as a float column $…×1$ ($T$ everywhere when `lengths` is None)."""
    if lengths is None:
        return jnp.full(tuple(batch_shape) + (1,), steps, dtype)
    return jnp.expand_dims(lengths, -1).astype(dtype)


def _spec(fn: str) -> v.Shapes:
    return v.shapes(fn, x="…×T×d, batch-first: time second to last",
                    lengths="optional int …, one length per sequence")


def _validate(fn: str):
    def check(x, lengths):  # the values, once the spec has checked shapes and dtypes
        check_lengths(fn, lengths, tuple(x.shape[:-2]), x.shape[-2])
    return check


def _lengths_sampler(*batch: int, steps: int):
    """Example lengths in `[1, T]`, the first one `1` and the last $T$ (the edges)."""
    def sample(rng, dtype):
        a = np.asarray(rng.integers(1, steps + 1, batch)).reshape(-1)
        a[0], a[-1] = 1, steps
        return _cast(a.reshape(batch), np.int32)
    return sample


def _examples() -> list[Example]:
    return [Example((gaussian(3, 5, 4), _lengths_sampler(3, steps=5))),
            Example((gaussian(2, 3, 4, 2), _lengths_sampler(2, 3, steps=4))),
            Example((gaussian(2, 4, 3), None))]


# --------------------------------------------------------------------------- #
# Mean
# --------------------------------------------------------------------------- #


def sequence_mean(x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    r"""Mean over the valid steps: $y = (1/ℓ) Σ_{t<ℓ} x_t$.

    Shapes: $X ∈ ℝ^{…×T×d}$, $ℓ$ = `lengths` (ints in $[1, T]$, one per sequence) (None: $T$),
    $Y ∈ ℝ^{…×d}$.

    Derivation: $y = (1/ℓ) Σ_t m_t x_t$ with the constant mask $m_t = [t < ℓ]$, so
    $∂y_k/∂x_{t,k'} = δ_{kk'} m_t/ℓ$ and

        $∂L/∂x_t = (m_t/ℓ) g$   ($g = ∂L/∂y ∈ ℝ^{…×d}$, broadcast over $t$):

    padded steps get exactly zero.

    Residuals: `lengths` (and $T$ from the cotangent's context: the shape of $x$,
    carried as a zero-size array).

    Tangent: $dy = (1/ℓ) Σ_{t<ℓ} dx_t$.
    """
    total = jnp.sum(jnp.where(_mask3(x, lengths), x, jnp.zeros_like(x)), axis=-2)
    return total / _lengths_col(lengths, x.shape[:-2], x.shape[-2], x.dtype)


def _shape_carrier(x: jax.Array) -> jax.Array:
    """A zero-size array whose shape carries $T$ (residuals must be arrays)."""
    return jnp.zeros((x.shape[-2], 0), jnp.int8)


def _mean_save(x, lengths, y):
    return lengths, _shape_carrier(x)


def _broadcast_over_time(g: jax.Array, steps: int) -> jax.Array:
    return jnp.broadcast_to(jnp.expand_dims(g, -2), g.shape[:-1] + (steps, g.shape[-1]))


def _mean_backward(residuals, g):
    lengths, carrier = residuals
    steps = carrier.shape[0]
    gx = _broadcast_over_time(g / _lengths_col(lengths, g.shape[:-1], steps, g.dtype), steps)
    return jnp.where(_mask3(gx, lengths), gx, jnp.zeros_like(gx)), None


def _mean_tangent(residuals, t):
    lengths, _ = residuals
    dx, _ = t
    return sequence_mean.forward(dx, lengths)


sequence_mean = primitive(
    sequence_mean, _mean_backward, save=_mean_save, spec=_spec("sequence_mean"),
    validate=_validate("sequence_mean"),
    tangent=_mean_tangent, examples=_examples())


# --------------------------------------------------------------------------- #
# Max
# --------------------------------------------------------------------------- #


def _argmax(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """$a ∈ {0…T−1}^{…×d}$: the first valid step holding each feature's maximum."""
    masked = jnp.where(_mask3(x, lengths), x, jnp.full_like(x, -jnp.inf))
    return jnp.argmax(masked, axis=-2).astype(jnp.int32)


def sequence_max(x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    r"""Max over the valid steps, feature by feature: $y_k = max_{t<ℓ} x_{t,k}$.

    Shapes: $X ∈ ℝ^{…×T×d}$, $ℓ$ = `lengths` (ints in $[1, T]$, one per sequence) (None: $T$),
    $Y ∈ ℝ^{…×d}$.

    Derivation: where the maximum is attained at one step $a_k = argmax_{t<ℓ} x_{t,k}$,
    $y_k = x_{a_k,k}$ locally, so $∂y_k/∂x_{t,k'} = δ_{kk'} [t = a_k]$ and

        $∂L/∂x_{t,k} = g_k [t = a_k]$   ($g ∈ ℝ^{…×d}$):

    the gradient is routed to the winning step only (the first one, on a tie: a
    subgradient); padded steps never win. The derivative jumps where $a$ changes,
    so $a$ is this primitive's switch (`switches=`).

    Residuals: $a ∈ ℤ^{…×d}$ (int32) and $T$ (a zero-size array's shape).

    Tangent: $dy_k = dx_{a_k,k}$, a gather at the argmax.
    """
    masked = jnp.where(_mask3(x, lengths), x, jnp.full_like(x, -jnp.inf))
    return jnp.max(masked, axis=-2)


def _max_fwd(x, lengths):
    a = _argmax(x, lengths)
    y = jnp.take_along_axis(x, jnp.expand_dims(a, -2), axis=-2)[..., 0, :]
    return y, (a, _shape_carrier(x))


def _max_backward(residuals, g):
    a, carrier = residuals
    steps = carrier.shape[0]
    shape = g.shape[:-1] + (steps, g.shape[-1])
    hit = lax.broadcasted_iota(jnp.int32, shape, len(shape) - 2) == jnp.expand_dims(a, -2)
    return jnp.where(hit, _broadcast_over_time(g, steps), jnp.zeros(shape, g.dtype)), None


def _max_tangent(residuals, t):
    a, _ = residuals
    dx, _ = t
    return jnp.take_along_axis(dx, jnp.expand_dims(a, -2), axis=-2)[..., 0, :]


sequence_max = primitive(
    sequence_max, _max_backward, fwd=_max_fwd, spec=_spec("sequence_max"),
    validate=_validate("sequence_max"),
    tangent=_max_tangent, switches=lambda x, lengths: _argmax(x, lengths),
    examples=_examples())


# --------------------------------------------------------------------------- #
# Last valid step
# --------------------------------------------------------------------------- #


def _last_index(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """$ℓ − 1$ as an int32 index array $…×1×1$ (for `take_along_axis` on $…×T×d$)."""
    if lengths is None:
        idx = jnp.full(x.shape[:-2], x.shape[-2] - 1, jnp.int32)
    else:
        idx = lengths.astype(jnp.int32) - 1
    return idx.reshape(idx.shape + (1, 1))


def sequence_last(x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    r"""The last valid step of each sequence: $y = x_{ℓ−1}$.

    Shapes: $X ∈ ℝ^{…×T×d}$, $ℓ$ = `lengths` (ints in $[1, T]$, one per sequence) (None: $T$, the
    last step), $Y ∈ ℝ^{…×d}$.

    Derivation: a selection, $y = Σ_t [t = ℓ−1] x_t$, linear in $X$, so

        $∂L/∂x_t = [t = ℓ−1] g$   ($g ∈ ℝ^{…×d}$):

    the cotangent lands on step $ℓ−1$ and every other step, padding included, gets zero.

    Residuals: `lengths` and $T$ (a zero-size array's shape).

    Tangent: $dy = dx_{ℓ−1}$.
    """
    return jnp.take_along_axis(x, _last_index(x, lengths), axis=-2)[..., 0, :]


def _last_save(x, lengths, y):
    return lengths, _shape_carrier(x)


def _last_backward(residuals, g):
    lengths, carrier = residuals
    steps = carrier.shape[0]
    gx = _broadcast_over_time(g, steps)
    hit = lax.broadcasted_iota(jnp.int32, gx.shape, gx.ndim - 2) == _last_index(gx, lengths)
    return jnp.where(hit, gx, jnp.zeros_like(gx)), None


def _last_tangent(residuals, t):
    lengths, _ = residuals
    dx, _ = t
    return sequence_last.forward(dx, lengths)


sequence_last = primitive(
    sequence_last, _last_backward, save=_last_save, spec=_spec("sequence_last"),
    validate=_validate("sequence_last"),
    tangent=_last_tangent, examples=_examples())


# --------------------------------------------------------------------------- #
# Reversal within each length (a packed sequence's backward direction)
# --------------------------------------------------------------------------- #


def reverse_sequences(x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    r"""Reverse each sequence within its own length: $y_t = x_{ℓ−1−t}$ for $t < ℓ$,
    $y_t = x_t$ for $t ≥ ℓ$ (padding stays where it is).

    $X ∈ ℝ^{…×T×d}$, $ℓ$ = `lengths` (ints in $[1, T]$, one per sequence) (None: $T$, a plain flip of the
    time axis). It is its own inverse. Running a recurrence forward over
    `reverse_sequences(x, ℓ)` and reversing its outputs back is the backward direction
    of a packed sequence: each sequence starts from its own last step, not from the
    padding. Not a primitive: a permutation of the steps (a gather), whose VJP is the
    inverse permutation, i.e. the same reversal, which JAX applies.
    """
    if lengths is None:
        return jnp.flip(x, axis=-2)
    steps = x.shape[-2]
    shape = tuple(lengths.shape) + (steps,)
    t = lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)
    ell = jnp.expand_dims(lengths.astype(jnp.int32), -1)
    index = jnp.where(t < ell, ell - 1 - t, t)
    return jnp.take_along_axis(x, jnp.expand_dims(index, -1), axis=-2)


def padding_mask(lengths: jax.Array | None, kv_lengths: jax.Array | None, steps: int,
                 kv_steps: int) -> jax.Array | None:
    """The attention mask $…×T×S$ of padded batches: query $t$ of a sequence of length
    $ℓ$ and key $s$ of a source of length $ℓ'$ attend iff $t < ℓ$ and $s < ℓ'$
    (`lengths` masks queries, `kv_lengths` keys; either may be None; both None: None).
    A padded query's row is all False, so attention gives it zero weights."""
    if lengths is None and kv_lengths is None:
        return None
    out = None
    if kv_lengths is not None:
        out = sequence_mask(kv_lengths, kv_steps)[..., None, :]
    if lengths is not None:
        rows = sequence_mask(lengths, steps)[..., :, None]
        out = rows if out is None else rows & out
    shape = jnp.broadcast_shapes(out.shape[:-2], out.shape[:-2]) + (steps, kv_steps)
    return jnp.broadcast_to(out, shape)
