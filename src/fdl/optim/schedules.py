"""Learning-rate schedules: pure functions `step -> learning rate`.

Every factory here validates its arguments when called and returns a function of
one argument, the step count (an int, or the int32 count inside an optimizer's
state; it may be traced under `jit`/`vmap`). The function returns a scalar
array of JAX's default float dtype (float64 under `jax_enable_x64`, else
float32). Steps before 0 are treated as 0; steps past the end of a schedule
keep its final value. Any optimizer accepts one of these wherever it accepts a
float learning rate, and evaluates it at the step count held in its state.

Notation: $t$ is the step, $η(t)$ the value returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl import _validate as V
from fdl.optim.base import Optimizer, Schedule, check_optimizer, default_float, public_names


def _nonnegative(fn: str, name: str, value: Any) -> float:
    return float(V.finite_real(fn, name, value, minimum=0.0))


def _positive(fn: str, name: str, value: Any) -> float:
    return float(V.finite_real(fn, name, value, minimum=0.0, strict=True))


def _finite(fn: str, name: str, value: Any) -> float:
    return float(V.finite_real(fn, name, value))


_int_at_least = V.int_at_least


def _check_pieces(fn: str, boundaries: list[int], pieces: int, what: str) -> None:
    """n strictly increasing boundaries separate n + 1 pieces (values or schedules)."""
    if pieces != len(boundaries) + 1:
        raise ValueError(
            f"{fn}: {what} must have one more entry than boundaries, got "
            f"{len(boundaries)} boundaries and {pieces} {what}"
        )
    if any(b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])):
        raise ValueError(f"{fn}: boundaries must be strictly increasing, got {boundaries!r}")


def _t(step: Any) -> jax.Array:
    """The step as a default-float scalar, clipped below at 0."""
    return jnp.maximum(jnp.asarray(step).astype(default_float()), 0.0)


def constant_schedule(value: float) -> Schedule:
    """$η(t)$ = `value` for every $t$."""
    value = _nonnegative("constant_schedule", "value", value)

    def schedule(step: Any) -> jax.Array:
        return jnp.full(jnp.shape(step), value, default_float())

    return schedule


def piecewise_constant_schedule(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """A step function: $η(t) = v_i$ for $b_{i−1} ≤ t < b_i$.

    With boundaries $b_0 < b_1 < … < b_{n−1}$ (ints $≥ 0$) and $n + 1$ values
    $v_0, …, v_n$: $η(t) = v_0$ for $t < b_0$, $v_i$ for $b_{i−1} ≤ t < b_i$, and
    $v_n$ for $t ≥ b_{n−1}$.
    Example: `piecewise_constant_schedule([1000, 2000], [0.1, 0.01, 0.001])`.
    """
    fn = "piecewise_constant_schedule"
    boundaries = [_int_at_least(fn, f"boundaries[{i}]", b, 0) for i, b in enumerate(boundaries)]
    values = [_nonnegative(fn, f"values[{i}]", v) for i, v in enumerate(values)]
    _check_pieces(fn, boundaries, len(values), "values")

    def schedule(step: Any) -> jax.Array:
        step = jnp.asarray(step)
        index = sum((step >= b).astype(jnp.int32) for b in boundaries) if boundaries else 0
        return jnp.asarray(values, default_float())[index]

    return schedule


def exponential_decay_schedule(
    init_value: float, decay_rate: float, transition_steps: int, *, staircase: bool = False
) -> Schedule:
    r"""$η(t) = η_0 \, r^{t/T}$, $η_0$ = `init_value`, $r$ = `decay_rate`, $T$ = `transition_steps`.

    With `staircase=True` the exponent is $⌊t/T⌋$, so the rate drops in steps
    every $T$ steps. $r < 1$ decays, $r > 1$ grows.
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
    r"""Polynomial interpolation from `init_value` to `end_value`.

    With $s = \operatorname{clip}(t − t_0, 0, T)$, $t_0$ = `transition_begin`,
    $T$ = `transition_steps`, $p$ = `power`, $η_0$ = `init_value`, $η_1$ = `end_value`:

    $$ η(t) = (η_0 − η_1)(1 − s/T)^p + η_1 $$

    so $η = η_0$ for $t ≤ t_0$ and $η_1$ for $t ≥ t_0 + T$.
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
    r"""Linear interpolation: `polynomial_schedule` with power 1.

    $η(t) = η_0 + (η_1 − η_0) s/T$ with $s = \operatorname{clip}(t − t_0, 0, T)$
    ($η_0$ = `init_value`, $η_1$ = `end_value`). With $η_0 < η_1$ this is a
    linear warm-up.
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
    r"""Cosine annealing (SGDR without restarts).

    $$ η(t) = η_0 \left( (1 − α) \, ½ \left(1 + \cos(π \min(t, T)/T)\right) + α \right) $$

    $η_0$ = `init_value`, $T$ = `decay_steps`, $α$ = `alpha` $∈ [0, 1]$ the
    final value as a fraction of $η_0$.

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
    r"""Linear warm-up to `peak_value`, then cosine decay to `end_value`.

    With $W$ = `warmup_steps`, $N$ = `total_steps` (warm-up included, $N > W$),
    $η_0$ = `init_value`, $\hat η$ = `peak_value`, $η_1$ = `end_value`:

    $$ η(t) = η_0 + (\hat η − η_0) t/W \qquad (t ≤ W) $$
    $$ η(t) = η_1 + (\hat η − η_1) \, ½ \left(1 + \cos(π s/(N − W))\right), \quad s = \min(t − W, N − W) \qquad (t > W) $$

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
    r"""The 1cycle policy: up from η₀ to `peak_value`, then down far below η₀.

    $\hat η$ = `peak_value`, $η_0 = \hat η$ / `div_factor`,
    $η_{end} = η_0$ / `final_div_factor`, $U$ = `int(pct_start · total_steps)`
    steps up, $N$ = `total_steps`:

    $$ η(t) = A(η_0, \hat η, t/U) \qquad (t ≤ U) $$
    $$ η(t) = A(\hat η, η_{end}, \min(t − U, N − U)/(N − U)) \qquad (t > U) $$

    where $A(a, b, f) = b + (a − b) \, ½ (1 + \cos(πf))$ for
    `anneal_strategy="cos"` and $a + (b − a) f$ for `"linear"`. (Only the
    learning rate cycles; the paper's inverse momentum cycle is not part of a
    schedule.)

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


def sgdr_schedule(
    init_value: float, first_period: int, *, period_mult: int = 1, alpha: float = 0.0
) -> Schedule:
    r"""Cosine annealing with warm restarts (SGDR).

    $η_0$ = `init_value`, $T_0$ = `first_period`, $m$ = `period_mult` (an int
    $≥ 1$), $α$ = `alpha` $∈ [0, 1]$. Period $i = 0, 1, …$ lasts $T_i = T_0 m^i$
    steps and starts at $s_i = T_0 (m^i − 1)/(m − 1)$ ($s_i = i T_0$ for
    $m = 1$); for $s_i ≤ t < s_{i+1}$:

    $$ η(t) = η_0 \left( α + (1 − α) \, ½ \left(1 + \cos(π (t − s_i)/T_i)\right) \right) $$

    so the rate restarts at $η_0$ at every $s_i$ and decays towards $α η_0$.

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with
    Warm Restarts", 2017.
    """
    fn = "sgdr_schedule"
    init_value = _nonnegative(fn, "init_value", init_value)
    first_period = _int_at_least(fn, "first_period", first_period, 1)
    period_mult = _int_at_least(fn, "period_mult", period_mult, 1)
    alpha = _finite(fn, "alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{fn}: alpha must be in [0, 1], got {alpha!r}")
    starts, periods = [0], [first_period]  # every restart an int32 step count can reach
    while period_mult > 1 and starts[-1] + periods[-1] < 2**31:
        starts.append(starts[-1] + periods[-1])
        periods.append(periods[-1] * period_mult)

    def schedule(step: Any) -> jax.Array:
        t = _t(step)
        if period_mult == 1:
            index = jnp.floor(t / first_period)
            start, period = index * first_period, float(first_period)
        else:
            index = sum((t >= b).astype(jnp.int32) for b in starts[1:])
            start = jnp.asarray(starts, default_float())[index]
            period = jnp.asarray(periods, default_float())[index]
        return _cosine(init_value, alpha * init_value, (t - start) / period)

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    r"""One schedule after another: schedule $i$ runs from boundary $b_{i−1}$, on its own clock.

    With boundaries $b_0 < … < b_{n−1}$ (ints $≥ 0$, $b_{−1} = 0$) and $n + 1$
    schedules $η_0, …, η_n$:

    $$ η(t) = η_i(t − b_{i−1}) \qquad b_{i−1} ≤ t < b_i $$

    E.g. a linear warm-up then SGDR:
    `join_schedules([linear_schedule(0, 0.1, 500), sgdr_schedule(0.1, 1000)], [500])`.
    """
    fn = "join_schedules"
    schedules = list(schedules)
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"{fn}: schedules[{i}] must be a schedule (step -> value), got {s!r}")
    boundaries = [_int_at_least(fn, f"boundaries[{i}]", b, 0) for i, b in enumerate(boundaries)]
    _check_pieces(fn, boundaries, len(schedules), "schedules")

    def schedule(step: Any) -> jax.Array:
        step = jnp.asarray(step)
        value = schedules[0](step)
        for b, s in zip(boundaries, schedules[1:]):
            value = jnp.where(step >= b, s(step - b), value)
        return jnp.asarray(value, default_float())

    return schedule


# --------------------------------------------------------------------------
# A schedule driven by a metric
# --------------------------------------------------------------------------


class ReduceOnPlateauState(NamedTuple):
    """State of `reduce_on_plateau`.

    Fields:
      scale:         float[], $s$, the factor the updates are multiplied by (starts at 1).
      best:          float[], the best metric reported (starts at +∞).
      bad_steps:     int32[], reports since the last improvement.
      cooldown_left: int32[], reports left before bad ones count again.
      settings:      dict of scalars: `factor`, `patience`, `threshold`, `cooldown`,
                     `min_scale`, as built (read by `observe_metric`).
      inner_state:   the wrapped optimizer's state.
    """

    scale: jax.Array
    best: jax.Array
    bad_steps: jax.Array
    cooldown_left: jax.Array
    settings: dict
    inner_state: Any


def reduce_on_plateau(
    optimizer: Optimizer,
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    cooldown: int = 0,
    min_scale: float = 0.0,
) -> Optimizer:
    r"""Scale `optimizer`'s updates down by `factor` when a metric stops improving.

    The updates are $s \, u_t$. $s$ changes only when a metric (e.g. the
    validation loss; lower is better) is reported with
    `state = observe_metric(state, value)`. With $f$ = `factor` $∈ (0, 1)$,
    $p$ = `patience`, $τ$ = `threshold` (relative), $c$ = `cooldown`,
    $s_{min}$ = `min_scale`, each reported value $y$ does, in order:

    $$ y < \text{best} · (1 − τ) \;⇒\; \text{best} ← y, \; \text{bad} ← 0, \qquad \text{otherwise bad} ← \text{bad} + 1 $$
    $$ \text{cooldown} > 0 \;⇒\; \text{cooldown} ← \text{cooldown} − 1, \; \text{bad} ← 0 $$
    $$ \text{bad} > p \;⇒\; s ← \max(f s, s_{min}), \; \text{bad} ← 0, \; \text{cooldown} ← c $$

    This is PyTorch's `ReduceLROnPlateau` (mode "min", relative threshold),
    with its counters in the state.
    """
    fn = "reduce_on_plateau"
    check_optimizer(fn, optimizer)
    factor = _positive(fn, "factor", factor)
    if factor >= 1.0:
        raise ValueError(f"{fn}: factor must be in (0, 1), got {factor!r}")
    settings = {
        "factor": factor,
        "patience": _int_at_least(fn, "patience", patience, 0),
        "threshold": _nonnegative(fn, "threshold", threshold),
        "cooldown": _int_at_least(fn, "cooldown", cooldown, 0),
        "min_scale": _nonnegative(fn, "min_scale", min_scale),
    }

    def init(params: Any) -> ReduceOnPlateauState:
        zero, real = jnp.zeros([], jnp.int32), default_float()
        fixed = {k: jnp.asarray(v, jnp.int32 if isinstance(v, int) else real) for k, v in settings.items()}
        return ReduceOnPlateauState(
            jnp.ones([], real), jnp.full([], jnp.inf, real), zero, zero, fixed, optimizer.init(params)
        )

    def update(grads: Any, state: ReduceOnPlateauState, params: Any = None):
        _check_plateau_state(fn, state)
        updates, inner = optimizer.update(grads, state.inner_state, params)
        updates = jax.tree.map(lambda u: (u * state.scale).astype(u.dtype), updates)
        return updates, state._replace(inner_state=inner)

    return Optimizer(init, update)


def observe_metric(state: ReduceOnPlateauState, value: Any) -> ReduceOnPlateauState:
    """Report a metric (lower is better) to a `reduce_on_plateau` state; return the new state.

    A pure function of scalars: it may run inside `jit`. A NaN metric counts as
    no improvement.
    """
    fn = "observe_metric"
    _check_plateau_state(fn, state)
    if jnp.shape(value) != ():
        raise ValueError(f"{fn}: value must be a scalar metric, got shape {jnp.shape(value)}")
    k = state.settings
    value = jnp.asarray(value, state.best.dtype)
    better = value < state.best * (1 - k["threshold"])
    best = jnp.where(better, value, state.best)
    bad = jnp.where(better, 0, state.bad_steps + 1)
    cooling = state.cooldown_left > 0
    cooldown = jnp.where(cooling, state.cooldown_left - 1, state.cooldown_left)
    bad = jnp.where(cooling, 0, bad)
    reduce = bad > k["patience"]
    scale = jnp.where(reduce, jnp.maximum(state.scale * k["factor"], k["min_scale"]), state.scale)
    return state._replace(
        scale=scale.astype(state.scale.dtype), best=best,
        bad_steps=jnp.where(reduce, 0, bad).astype(jnp.int32),
        cooldown_left=jnp.where(reduce, k["cooldown"], cooldown).astype(jnp.int32),
    )


def _check_plateau_state(fn: str, state: Any) -> None:
    if not isinstance(state, ReduceOnPlateauState):
        raise TypeError(
            f"{fn}: state must be the ReduceOnPlateauState made by reduce_on_plateau(...).init(params), "
            f"got {type(state).__name__}"
        )


__all__ = public_names(globals(), __name__)
