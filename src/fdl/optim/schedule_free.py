r"""Schedule-Free AdamW: averaging in place of a learning-rate schedule.

The notation is that of `fdl.optim.methods`. Three sequences share one shape:
$z$ (the base, SGD-like iterate), $x$ (its weighted average: the parameters to
*evaluate*) and $y$ (the interpolation where gradients are taken: the
parameters to *train*, i.e. the params the optimizer updates).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl import _validate as V
from fdl.optim.base import (
    Optimizer,
    Params,
    ScalarOrSchedule,
    Updates,
    acc_dtype,
    chain,
    check_float,
    check_hyperparams,
    check_like,
    check_state,
    default_float,
    increment,
    label,
    learning_rate_at,
    public_names,
    require_params,
    step_number,
    zero_count,
    zeros_acc,
)
from fdl.optim.methods import bias_correction, ema
from fdl.optim.registry import register


class ScheduleFreeState(NamedTuple):
    """State of `scale_by_schedule_free_adamw`.

    Fields:
      count:      int32[], updates so far ($t − 1$ during the next update).
      z:          pytree like params, $z$, the base iterate (accumulator dtype).
      x:          pytree like params, $x$, the average: the parameters to evaluate.
      nu:         pytree like params, $v$ = EMA of $g²$ (accumulator dtype).
      lr_max:     float[], $γ^{max}_t$, the largest step size so far.
      weight_sum: float[], $Σ_{i ≤ t} (γ^{max}_i)^p$.
    """

    count: jax.Array
    z: Any
    x: Any
    nu: Any
    lr_max: jax.Array
    weight_sum: jax.Array


def scale_by_schedule_free_adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    warmup_steps: int = 0,
    weight_lr_power: float = 2.0,
) -> Optimizer:
    r"""Schedule-Free AdamW as one transform (it needs the learning rate inside its averages).

    $η_t$ = `learning_rate`, $β₁$ = `b1`, $β₂$ = `b2`, $ε$ = `eps`,
    $λ$ = `weight_decay`, $W$ = `warmup_steps`, $p$ = `weight_lr_power`;
    $y_t$ = the params passed to `update`, $z_1 = x_1 = y_1 = θ_0$:

    $$ v_t = \operatorname{EMA}(v_{t−1}, g_t²; β₂), \qquad γ_t = η_t \min(1, t/W) \sqrt{1 − β₂^t}, \qquad γ^{max}_t = \max_{i ≤ t} γ_i $$
    $$ z_{t+1} = z_t − γ_t \left( g_t / (√v_t + ε) + λ y_t \right) $$
    $$ c_{t+1} = (γ^{max}_t)^p / Σ_{i ≤ t} (γ^{max}_i)^p, \qquad x_{t+1} = (1 − c_{t+1}) x_t + c_{t+1} z_{t+1} $$
    $$ y_{t+1} = (1 − β₁) z_{t+1} + β₁ x_{t+1}, \qquad u_t = y_{t+1} − y_t $$

    ($\min(1, t/W) = 1$ when $W = 0$.) Gradients are taken at $y$ (the params);
    **evaluate and serve with $x$**, `schedule_free_eval_params(state)`: $x$ is
    the average the method's guarantees are about, and $y$ (the params) is not.
    With a constant $η$ the averaging does what a decaying schedule would, so
    no schedule or stopping time needs to be chosen in advance. `update` needs
    `params`. The reference implementation stores $z$ only and recovers
    $x = (y − (1 − β₁) z)/β₁$; we keep $x$ explicitly (one more copy of the
    parameters) so that it is exact for every $β₁$.

    References: Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road
    Less Scheduled", 2024.
    """
    fn = label("scale_by_schedule_free_adamw")
    b1, b2, eps, weight_decay = check_hyperparams(
        fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
    )
    (learning_rate,) = check_hyperparams(fn, learning_rate=learning_rate)
    warmup = V.int_at_least(fn, "warmup_steps", warmup_steps, 0)
    power = V.finite_real(fn, "weight_lr_power", weight_lr_power, minimum=0.0)

    def init(params: Params) -> ScheduleFreeState:
        check_float(fn, params, "parameter")
        copy = jax.tree.map(lambda p: jnp.asarray(p, acc_dtype(p)), params)
        zero = jnp.zeros([], default_float())
        return ScheduleFreeState(zero_count(), copy, copy, zeros_acc(params), zero, zero)

    def update(grads: Updates, state: ScheduleFreeState, params: Params = None):
        check_state(fn, state, ScheduleFreeState)
        check_float(fn, grads, "gradient")
        require_params(fn, params)
        check_like(fn, grads, state.z, "the state's z")
        t = step_number(state.count)
        warm = jnp.minimum(1.0, t / warmup) if warmup else 1.0
        lr = learning_rate_at(learning_rate, state.count, fn) * warm * jnp.sqrt(bias_correction(b2, t))
        lr_max = jnp.maximum(state.lr_max, lr)
        weight = lr_max**power
        weight_sum = state.weight_sum + weight
        c = jnp.where(weight_sum > 0, weight / jnp.where(weight_sum > 0, weight_sum, 1.0), 0.0)

        def one(g, y, z, x, nu):
            dt = z.dtype
            g, y = g.astype(dt), y.astype(dt)
            nu_new = ema(nu, g * g, b2)
            z_new = z - lr * (g / (jnp.sqrt(nu_new) + eps) + weight_decay * y)
            x_new = (1 - c) * x + c * z_new
            y_new = (1 - b1) * z_new + b1 * x_new
            return (y_new - y), z_new.astype(dt), x_new.astype(dt), nu_new.astype(nu.dtype)

        leaves, treedef = jax.tree.flatten(grads)
        columns = [treedef.flatten_up_to(tree) for tree in (params, state.z, state.x, state.nu)]
        rows = [one(g, *others) for g, *others in zip(leaves, *columns)]
        updates = treedef.unflatten([u.astype(g.dtype) for (u, *_), g in zip(rows, leaves)])
        z, x, nu = (treedef.unflatten([row[i] for row in rows]) for i in (1, 2, 3))
        return updates, ScheduleFreeState(
            increment(state.count), z, x, nu, lr_max.astype(state.lr_max.dtype),
            weight_sum.astype(state.weight_sum.dtype),
        )

    return Optimizer(init, update)


@register
def schedule_free_adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    warmup_steps: int = 0,
    weight_lr_power: float = 2.0,
) -> Optimizer:
    r"""Schedule-Free AdamW: train at $y$, evaluate at the average $x$; no schedule needed.

    The equations are `scale_by_schedule_free_adamw`'s; the update moves the
    params from $y_t$ to $y_{t+1}$. **For evaluation and inference use
    `schedule_free_eval_params(state)`** (the average $x$), not the params.
    `chain(scale_by_schedule_free_adamw(η, β₁, β₂, ε, λ, warmup_steps=W))`.

    References: Defazio et al., "The Road Less Scheduled", 2024.
    """
    return chain(scale_by_schedule_free_adamw(
        learning_rate, b1, b2, eps, weight_decay, warmup_steps=warmup_steps,
        weight_lr_power=weight_lr_power,
    ))


def schedule_free_eval_params(state: Any) -> Params:
    """The parameters to evaluate with: $x$ from the `ScheduleFreeState` inside `state`.

    `state` is the state of `schedule_free_adamw` or of any chain or wrapper
    holding exactly one `scale_by_schedule_free_adamw`. The leaves are in the
    accumulator dtype (float32 for 16-bit params).
    """
    found = _find(state)
    if len(found) != 1:
        raise ValueError(
            "schedule_free_eval_params: state must hold exactly one ScheduleFreeState "
            f"(from schedule_free_adamw), found {len(found)} in a {type(state).__name__}"
        )
    return found[0].x


def _find(state: Any) -> list:
    if isinstance(state, ScheduleFreeState):
        return [state]
    if isinstance(state, dict):
        children = list(state.values())
    elif isinstance(state, tuple | list):
        children = list(state)
    else:
        return []
    return [s for child in children for s in _find(child)]


__all__ = public_names(globals(), __name__)
