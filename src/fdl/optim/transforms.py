"""Gradient transforms that are not a method of their own: the learning-rate step,
weight decay, clipping and gradient accumulation, to `chain` around a method.

Each factory validates its arguments and returns an `Optimizer(init, update)`
with one state class of its own (`ScaleByLearningRateState`, …). Returned updates
have the dtype of the incoming grads; arithmetic on 16-bit leaves is done in
float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as V
from fdl.optim.base import (
    Optimizer,
    Params,
    PerLeaf,
    ScalarOrSchedule,
    Updates,
    acc_dtype,
    check_float,
    check_hyperparams,
    check_like,
    check_optimizer,
    check_schedule,
    check_state,
    increment,
    is_static_zero,
    label,
    learning_rate_at,
    lift,
    public_names,
    zero_count,
    zeros_acc,
)

Mask = Any
"""A pytree of Python bools with the structure of the params (True = transform
this leaf), or a function `params -> such a pytree`."""


# --------------------------------------------------------------------------
# Scaling by the learning rate
# --------------------------------------------------------------------------


class ScaleByLearningRateState(NamedTuple):
    """State of `scale_by_learning_rate`.

    Fields:
      count: int32[], calls to `update` so far (the step a schedule is evaluated at).
    """

    count: jax.Array


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> Optimizer:
    r"""$u_t = −η_t d_t$: turn a descent direction into a step.

    $η_t$ = `learning_rate`: a float, or a schedule (see `fdl.optim.schedules`)
    evaluated once per update at the step count $t − 1$ held in the state (so a
    schedule's step 0 is the first update). Ends every named optimizer's chain,
    e.g. plain SGD with gradient clipping is
    `chain(clip_by_global_norm(1.0), scale_by_learning_rate(0.1))`.
    """
    fn = label("scale_by_learning_rate")
    (learning_rate,) = check_hyperparams(fn, learning_rate=learning_rate)

    def init(params: Params) -> ScaleByLearningRateState:
        check_schedule(fn, learning_rate)
        return ScaleByLearningRateState(zero_count())

    def update(grads: Updates, state: ScaleByLearningRateState, params: Params = None):
        check_state(fn, state, ScaleByLearningRateState)
        lr = learning_rate_at(learning_rate, state.count, fn)
        updates, _ = lift(fn, lambda g: -lr * g, grads)
        return updates, ScaleByLearningRateState(increment(state.count))

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Weight decay
# --------------------------------------------------------------------------


class AddDecayedWeightsState(NamedTuple):
    """State of `add_decayed_weights` (it keeps nothing)."""


def _resolve_mask(fn: str, mask: Mask, params: Params) -> list[bool] | None:
    """The mask as a flat list of bools aligned with `params`' leaves (None: all True)."""
    if mask is None:
        return None
    tree = mask(params) if callable(mask) else mask
    p_struct, m_struct = jax.tree.structure(params), jax.tree.structure(tree)
    if p_struct != m_struct:
        raise ValueError(
            f"{fn}: mask must have the structure of the params, got mask {m_struct} "
            f"for params {p_struct}"
        )
    flags = jax.tree.leaves(tree)
    for f in flags:
        if not isinstance(f, bool | np.bool_):
            raise TypeError(
                f"{fn}: mask leaves must be Python bools (decided when tracing), got {f!r}"
            )
    return [bool(f) for f in flags]


def add_decayed_weights(weight_decay: float, mask: Mask = None) -> Optimizer:
    r"""$u = g + λθ$: add an L2 penalty's gradient ($λ$ = `weight_decay`, $θ$ = params).

    Placed before an optimizer this is coupled L2 regularisation (the penalty's
    gradient goes through the optimizer's scaling); placed after a method's
    direction and before `scale_by_learning_rate` it is decoupled weight decay
    (`adamw`, `lion`): then $u_t = −η_t (d_t + λ θ_{t−1})$, so $λ$ is relative to
    the whole $η_t$ (as in PyTorch; the paper multiplies $λθ$ by the schedule
    multiplier only).

    `mask` selects which leaves decay: a pytree of bools shaped like the params,
    or a function of the params returning one; e.g. to skip biases and other
    vectors, `mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)`.
    `update` needs `params` unless $λ$ is a Python 0 (then it passes $g$ through).
    """
    fn = label("add_decayed_weights")
    (weight_decay,) = check_hyperparams(fn, weight_decay=weight_decay)

    def init(params: Params) -> AddDecayedWeightsState:
        _resolve_mask(fn, mask, params)  # fail at init on a mismatched mask
        return AddDecayedWeightsState()

    def update(grads: Updates, state: AddDecayedWeightsState, params: Params = None):
        check_state(fn, state, AddDecayedWeightsState)
        if is_static_zero(weight_decay):
            check_float(fn, grads, "gradient")
            return grads, state
        if params is None:
            raise ValueError(
                f"{fn}: weight_decay={weight_decay!r} needs the params; "
                "call update(grads, state, params)"
            )
        flags = _resolve_mask(fn, mask, params)
        flags = PerLeaf([True] * len(jax.tree.leaves(grads)) if flags is None else flags)

        def step(g, params, decays):
            return g + weight_decay * params if decays else g

        updates, _ = lift(fn, step, grads, read={"params": params, "decays": flags})
        return updates, state

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Clipping
# --------------------------------------------------------------------------


class ClipByGlobalNormState(NamedTuple):
    """State of `clip_by_global_norm` (it keeps nothing)."""


def global_norm(tree: Updates) -> jax.Array:
    r"""$‖g‖ = \sqrt{Σ_{\text{leaves}} Σ_{\text{elements}} g²}$, accumulated in float32 or wider."""
    squares = [jnp.sum(jnp.square(g.astype(acc_dtype(g)))) for g in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(squares)) if squares else jnp.zeros([], jnp.float32)


def clip_by_global_norm(max_norm: float) -> Optimizer:
    r"""$u = g · \min(1, c/‖g‖)$: rescale all leaves together so the global norm is $≤ c$.

    $‖g‖$ is the 2-norm of all gradient elements of all leaves taken as one
    vector; $c$ = `max_norm`. The direction is unchanged; gradients already
    inside the ball pass through untouched.

    References: Pascanu, Mikolov & Bengio, "On the difficulty of training
    recurrent neural networks", 2013.
    """
    fn = label("clip_by_global_norm")
    (max_norm,) = check_hyperparams(fn, max_norm=max_norm)

    def init(params: Params) -> ClipByGlobalNormState:
        return ClipByGlobalNormState()

    def update(grads: Updates, state: ClipByGlobalNormState, params: Params = None):
        check_state(fn, state, ClipByGlobalNormState)
        check_float(fn, grads, "gradient")
        norm = global_norm(grads)
        factor = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1), 1)
        updates, _ = lift(fn, lambda g: g * factor, grads)
        return updates, state

    return Optimizer(init, update)


class ClipByValueState(NamedTuple):
    """State of `clip_by_value` (it keeps nothing)."""


def clip_by_value(min_value: float, max_value: float) -> Optimizer:
    r"""$u = \operatorname{clip}(g, a, b)$ element by element, $a$ = `min_value`, $b$ = `max_value`.

    For symmetric clipping at c, `clip_by_value(-c, c)`.
    """
    fn = label("clip_by_value")
    min_value = V.finite_real(fn, "min_value", min_value)
    max_value = V.finite_real(fn, "max_value", max_value)
    if V.is_concrete(min_value) and V.is_concrete(max_value) and min_value > max_value:
        raise ValueError(
            f"{fn}: max_value must be >= min_value ({min_value!r}), got {max_value!r}"
        )

    def init(params: Params) -> ClipByValueState:
        return ClipByValueState()

    def update(grads: Updates, state: ClipByValueState, params: Params = None):
        check_state(fn, state, ClipByValueState)
        updates, _ = lift(fn, lambda g: jnp.clip(g, min_value, max_value), grads)
        return updates, state

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Gradient accumulation
# --------------------------------------------------------------------------


class AccumulateGradientsState(NamedTuple):
    """State of `accumulate_gradients`.

    Fields:
      count:       int32[], calls to `update` (micro-steps) so far.
      micro_step:  int32[] in [0, k), position inside the current group of k.
      grad_sum:    pytree like params, sum of this group's gradients so far
                   (float32 for 16-bit params, else the params' dtype).
      inner_state: the wrapped optimizer's state (its count advances once per k).
    """

    count: jax.Array
    micro_step: jax.Array
    grad_sum: Any
    inner_state: Any


def accumulate_gradients(optimizer: Optimizer, every_k: int) -> Optimizer:
    """Apply `optimizer` once every k calls, to the mean of the k gradients.

    With $k$ = `every_k`, calls $i = 1 … k−1$ of a group return zero updates and
    add their gradient to the running sum; call $k$ returns
    `optimizer.update(`$(g_1 + … + g_k)/k$`, …)` and clears the sum. With
    micro-batches of equal size this equals one step on their union (a $k$ times
    larger batch), using $1/k$ of the memory (the `MultiSteps` of other
    libraries). The wrapped optimizer's count and schedules advance once per group.
    """
    fn = label("accumulate_gradients")
    check_optimizer(fn, optimizer)
    every_k = V.int_at_least(fn, "every_k", every_k, 1)

    def init(params: Params) -> AccumulateGradientsState:
        return AccumulateGradientsState(
            count=zero_count(),
            micro_step=zero_count(),
            grad_sum=zeros_acc(params),
            inner_state=optimizer.init(params),
        )

    # The two branches are built once, here, and take everything as operands, so
    # that `lax.cond` traces and compiles them once even when called eagerly.
    def step(operands: tuple) -> tuple:
        grads, grad_sum, inner_state, params = operands
        mean = jax.tree.map(lambda s, g: (s / every_k).astype(g.dtype), grad_sum, grads)
        updates, inner_state = optimizer.update(mean, inner_state, params)
        return updates, inner_state, jax.tree.map(jnp.zeros_like, grad_sum)

    def wait(operands: tuple) -> tuple:
        _, grad_sum, inner_state, _ = operands
        shapes = jax.eval_shape(step, operands)[0]
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return zeros, inner_state, grad_sum

    def update(grads: Updates, state: AccumulateGradientsState, params: Params = None):
        check_state(fn, state, AccumulateGradientsState)
        check_float(fn, grads, "gradient")
        check_like(fn, grads, state.grad_sum, "the state's grad_sum")
        grad_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), state.grad_sum, grads)
        is_last = state.micro_step == every_k - 1
        updates, inner, grad_sum = jax.lax.cond(
            is_last, step, wait, (grads, grad_sum, state.inner_state, params)
        )
        new_state = AccumulateGradientsState(
            count=increment(state.count),
            micro_step=jnp.where(is_last, 0, state.micro_step + 1).astype(jnp.int32),
            grad_sum=grad_sum,
            inner_state=inner,
        )
        return updates, new_state

    return Optimizer(init, update)


__all__ = public_names(globals(), __name__)
