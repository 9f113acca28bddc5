"""Learning-rate schedules: pure functions `step -> learning rate`.

Every factory here validates its arguments when called and returns a function of
one argument, the step count (an int, or the int32 count inside an optimizer's
state; it may be traced under `jit`/`vmap`). The function returns a scalar
array of JAX's default float dtype (float64 under `jax_enable_x64`, else
float32). Steps before 0 are treated as 0; steps past the end of a schedule
keep its final value. Any optimizer accepts one of these wherever it accepts a
float learning rate, and evaluates it at the step count held in its state.

Notation: t is the step, η(t) the value returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from fdl import _validate as V
from fdl.optim.base import Schedule, default_float, public_names


def _nonnegative(fn: str, name: str, value: Any) -> float:
    return float(V.finite_real(fn, name, value, minimum=0.0))


def _positive(fn: str, name: str, value: Any) -> float:
    return float(V.finite_real(fn, name, value, minimum=0.0, strict=True))


def _finite(fn: str, name: str, value: Any) -> float:
    return float(V.finite_real(fn, name, value))


_int_at_least = V.int_at_least


def _t(step: Any) -> jax.Array:
    """The step as a default-float scalar, clipped below at 0."""
    return jnp.maximum(jnp.asarray(step).astype(default_float()), 0.0)


def constant_schedule(value: float) -> Schedule:
    """η(t) = `value` for every t."""
    value = _nonnegative("constant_schedule", "value", value)

    def schedule(step: Any) -> jax.Array:
        return jnp.full(jnp.shape(step), value, default_float())

    return schedule


def piecewise_constant_schedule(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """A step function: η(t) = values[i] for boundaries[i−1] <= t < boundaries[i].

    With boundaries b_0 < b_1 < … < b_{n−1} (ints >= 0) and n+1 values:
    η(t) = values[0] for t < b_0, values[i] for b_{i−1} <= t < b_i, and
    values[n] for t >= b_{n−1}.
    Example: `piecewise_constant_schedule([1000, 2000], [0.1, 0.01, 0.001])`.
    """
    fn = "piecewise_constant_schedule"
    boundaries = [_int_at_least(fn, f"boundaries[{i}]", b, 0) for i, b in enumerate(boundaries)]
    values = [_nonnegative(fn, f"values[{i}]", v) for i, v in enumerate(values)]
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"{fn}: values must have one more entry than boundaries, got "
            f"{len(boundaries)} boundaries and {len(values)} values"
        )
    if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
        raise ValueError(f"{fn}: boundaries must be strictly increasing, got {boundaries!r}")

    def schedule(step: Any) -> jax.Array:
        step = jnp.asarray(step)
        index = sum((step >= b).astype(jnp.int32) for b in boundaries) if boundaries else 0
        return jnp.asarray(values, default_float())[index]

    return schedule


def exponential_decay_schedule(
    init_value: float, decay_rate: float, transition_steps: int, *, staircase: bool = False
) -> Schedule:
    """η(t) = init_value · decay_rate^(t / T), T = `transition_steps`.

    With `staircase=True` the exponent is ⌊t / T⌋, so the rate drops in steps
    every T steps. `decay_rate` < 1 decays, > 1 grows.
    """
    fn = "exponential_decay_schedule"
    init_value = _nonnegative(fn, "init_value", init_value)
    decay_rate = _positive(fn, "decay_rate", decay_rate)
    transition_steps = _int_at_least(fn, "transition_steps", transition_steps, 1)
    if not isinstance(staircase, bool):
        raise TypeError(f"{fn}: staircase must be True or False, got {staircase!r}")

    def schedule(step: Any) -> jax.Array:
        exponent = _t(step) / transition_steps
        if staircase:
            exponent = jnp.floor(exponent)
        return init_value * decay_rate**exponent

    return schedule


def polynomial_schedule(
    init_value: float,
    end_value: float,
    transition_steps: int,
    power: float = 1.0,
    *,
    transition_begin: int = 0,
) -> Schedule:
    """Polynomial interpolation from `init_value` to `end_value`.

    With s = clip(t − t₀, 0, T), t₀ = `transition_begin`, T = `transition_steps`,
    p = `power`:  η(t) = (init_value − end_value) · (1 − s/T)^p + end_value.
    η is `init_value` for t <= t₀ and `end_value` for t >= t₀ + T.
    """
    fn = "polynomial_schedule"
    init_value = _nonnegative(fn, "init_value", init_value)
    end_value = _nonnegative(fn, "end_value", end_value)
    transition_steps = _int_at_least(fn, "transition_steps", transition_steps, 1)
    power = _positive(fn, "power", power)
    transition_begin = _int_at_least(fn, "transition_begin", transition_begin, 0)

    def schedule(step: Any) -> jax.Array:
        s = jnp.clip(_t(step) - transition_begin, 0.0, transition_steps)
        return (init_value - end_value) * (1.0 - s / transition_steps) ** power + end_value

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, *, transition_begin: int = 0
) -> Schedule:
    """Linear interpolation: `polynomial_schedule` with power 1.

    η(t) = init_value + (end_value − init_value) · s/T, s = clip(t − t₀, 0, T).
    With init_value < end_value this is a linear warm-up.
    """
    for name, v in (("init_value", init_value), ("end_value", end_value)):
        _nonnegative("linear_schedule", name, v)
    _int_at_least("linear_schedule", "transition_steps", transition_steps, 1)
    _int_at_least("linear_schedule", "transition_begin", transition_begin, 0)
    return polynomial_schedule(
        init_value, end_value, transition_steps, 1.0, transition_begin=transition_begin
    )


def _cosine(start: float, end: float, fraction: jax.Array) -> jax.Array:
    """Half a cosine from `start` (fraction 0) to `end` (fraction 1)."""
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(math.pi * fraction))


def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Cosine annealing (SGDR without restarts).

    η(t) = init_value · ((1 − α) · ½(1 + cos(π · min(t, T)/T)) + α),
    T = `decay_steps`, α = `alpha` ∈ [0, 1] the final value as a fraction of
    `init_value`.

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with
    Warm Restarts", 2017.
    """
    fn = "cosine_decay_schedule"
    init_value = _nonnegative(fn, "init_value", init_value)
    decay_steps = _int_at_least(fn, "decay_steps", decay_steps, 1)
    alpha = _finite(fn, "alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{fn}: alpha must be in [0, 1], got {alpha!r}")

    def schedule(step: Any) -> jax.Array:
        fraction = jnp.minimum(_t(step), decay_steps) / decay_steps
        return _cosine(init_value, alpha * init_value, fraction)

    return schedule


def warmup_cosine_decay_schedule(
    peak_value: float,
    warmup_steps: int,
    total_steps: int,
    *,
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> Schedule:
    """Linear warm-up to `peak_value`, then cosine decay to `end_value`.

    With W = `warmup_steps`, N = `total_steps` (warm-up included, N > W):
      t <= W:  η(t) = init_value + (peak_value − init_value) · t/W
      t >  W:  η(t) = end_value + (peak_value − end_value) · ½(1 + cos(π s/(N − W))),
               s = min(t − W, N − W)

    References: Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet
    in 1 Hour", 2017 (warm-up); Loshchilov & Hutter, "SGDR", 2017 (cosine).
    """
    fn = "warmup_cosine_decay_schedule"
    peak_value = _nonnegative(fn, "peak_value", peak_value)
    warmup_steps = _int_at_least(fn, "warmup_steps", warmup_steps, 0)
    total_steps = _int_at_least(fn, "total_steps", total_steps, 1)
    init_value = _nonnegative(fn, "init_value", init_value)
    end_value = _nonnegative(fn, "end_value", end_value)
    if total_steps <= warmup_steps:
        raise ValueError(
            f"{fn}: total_steps must be greater than warmup_steps ({warmup_steps}), "
            f"got {total_steps!r}"
        )
    decay_steps = total_steps - warmup_steps

    def schedule(step: Any) -> jax.Array:
        t = _t(step)
        fraction = jnp.minimum(t - warmup_steps, decay_steps) / decay_steps
        cosine = _cosine(peak_value, end_value, fraction)
        if warmup_steps == 0:
            return cosine
        warmup = init_value + (peak_value - init_value) * t / warmup_steps
        return jnp.where(t <= warmup_steps, warmup, cosine)

    return schedule


def one_cycle_schedule(
    peak_value: float,
    total_steps: int,
    *,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
) -> Schedule:
    """The 1cycle policy: up from η₀ to `peak_value`, then down far below η₀.

    η₀ = peak_value / div_factor, η_end = η₀ / final_div_factor,
    U = int(pct_start · total_steps) steps up, N = `total_steps`:
      t <= U:  η(t) = anneal(η₀, peak_value, t/U)
      t >  U:  η(t) = anneal(peak_value, η_end, min(t − U, N − U)/(N − U))
    where anneal(a, b, f) = b + (a − b)·½(1 + cos(πf)) for `anneal_strategy="cos"`
    and a + (b − a)·f for `"linear"`. (Only the learning rate cycles; the
    paper's inverse momentum cycle is not part of a schedule.)

    References: Smith & Topin, "Super-Convergence: Very Fast Training of Neural
    Networks Using Large Learning Rates", 2017.
    """
    fn = "one_cycle_schedule"
    peak_value = _nonnegative(fn, "peak_value", peak_value)
    total_steps = _int_at_least(fn, "total_steps", total_steps, 2)
    pct_start = _finite(fn, "pct_start", pct_start)
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"{fn}: pct_start must be in (0, 1), got {pct_start!r}")
    div_factor = _positive(fn, "div_factor", div_factor)
    final_div_factor = _positive(fn, "final_div_factor", final_div_factor)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(
            f"{fn}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}"
        )
    up_steps = int(pct_start * total_steps)
    if not 1 <= up_steps < total_steps:
        raise ValueError(
            f"{fn}: pct_start * total_steps must give between 1 and total_steps - 1 "
            f"warm-up steps, got pct_start={pct_start!r}, total_steps={total_steps!r}"
        )
    initial = peak_value / div_factor
    final = initial / final_div_factor
    down_steps = total_steps - up_steps

    def anneal(a: float, b: float, fraction: jax.Array) -> jax.Array:
        if anneal_strategy == "cos":
            return _cosine(a, b, fraction)
        return a + (b - a) * fraction

    def schedule(step: Any) -> jax.Array:
        t = _t(step)
        up = anneal(initial, peak_value, jnp.minimum(t, up_steps) / up_steps)
        down = anneal(peak_value, final, jnp.clip(t - up_steps, 0.0, down_steps) / down_steps)
        return jnp.where(t <= up_steps, up, down)

    return schedule


__all__ = public_names(globals(), __name__)
