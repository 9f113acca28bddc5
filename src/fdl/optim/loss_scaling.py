r"""Dynamic loss scaling for float16 training: scale, unscale, skip on overflow, grow.

float16 has 5 exponent bits: gradients below about $6 × 10^{−8}$ round to zero
and above 65504 overflow. Multiplying the loss by $S$ multiplies every gradient
by $S$ (the chain rule is linear), which lifts small gradients into range; the
optimizer divides by $S$ again in float32 before using them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl import _validate as V
from fdl.optim.base import (
    Optimizer,
    Params,
    Updates,
    acc_dtype,
    check_float,
    check_optimizer,
    check_state,
    label,
    public_names,
)


class DynamicLossScaleState(NamedTuple):
    """State of `dynamic_loss_scale` (save it in checkpoints: the scale is learnt).

    Fields:
      scale:       float32[], $S$, the current loss scale.
      good_steps:  int32[], finite steps since the scale last changed.
      skipped:     int32[], steps skipped for an overflow since init.
      inner_state: the wrapped optimizer's state (unchanged by a skipped step).
    """

    scale: jax.Array
    good_steps: jax.Array
    skipped: jax.Array
    inner_state: Any


def dynamic_loss_scale(
    optimizer: Optimizer,
    init_scale: float = 2.0**15,
    *,
    growth_interval: int = 2000,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    min_scale: float = 1.0,
) -> Optimizer:
    r"""Wrap `optimizer` to take the gradients of a scaled loss $S · L$ (`scale_loss`).

    $S_0$ = `init_scale`, $N$ = `growth_interval`, $γ$ = `growth_factor` $> 1$,
    $β$ = `backoff_factor` $∈ (0, 1)$, $S_{min}$ = `min_scale`; the grads given
    to `update` are $G = ∇(S L)$:

    $$ g = G / S \quad \text{(in float32 or wider)} $$
    $$ g \text{ all finite:} \quad u = \operatorname{opt}(g), \quad n ← n + 1, \quad n = N ⇒ S ← γ S, \; n ← 0 $$
    $$ \text{otherwise (overflow):} \quad u = 0, \text{ inner state unchanged}, \quad S ← \max(β S, S_{min}), \; n ← 0 $$

    An overflowing step is skipped, not applied, and the scale backs off until
    the gradients fit; after $N$ good steps in a row it tries a larger one.
    Powers of two (the defaults) make scaling and unscaling exact. The updates
    have the dtype of the grads.

    References: Micikevicius et al., "Mixed Precision Training", 2018.
    """
    fn = label("dynamic_loss_scale")
    check_optimizer(fn, optimizer)
    init_scale = V.finite_real(fn, "init_scale", init_scale, minimum=0.0, strict=True)
    interval = V.int_at_least(fn, "growth_interval", growth_interval, 1)
    growth = V.finite_real(fn, "growth_factor", growth_factor, minimum=1.0, strict=True)
    backoff = V.finite_real(fn, "backoff_factor", backoff_factor, minimum=0.0, strict=True)
    if backoff >= 1.0:
        raise ValueError(f"{fn}: backoff_factor must be in (0, 1), got {backoff!r}")
    min_scale = V.finite_real(fn, "min_scale", min_scale, minimum=0.0, strict=True)

    def init(params: Params) -> DynamicLossScaleState:
        zero = jnp.zeros([], jnp.int32)
        return DynamicLossScaleState(
            jnp.asarray(init_scale, jnp.float32), zero, zero, optimizer.init(params)
        )

    def update(grads: Updates, state: DynamicLossScaleState, params: Params = None):
        check_state(fn, state, DynamicLossScaleState)
        check_float(fn, grads, "gradient")
        unscaled = jax.tree.map(lambda g: g.astype(acc_dtype(g)) / state.scale, grads)
        finite = jnp.asarray(True)
        for g in jax.tree.leaves(unscaled):
            finite = finite & jnp.all(jnp.isfinite(g))
        updates, inner = optimizer.update(unscaled, state.inner_state, params)
        updates = jax.tree.map(
            lambda u, g: jnp.where(finite, u, jnp.zeros_like(u)).astype(g.dtype), updates, grads
        )
        inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner, state.inner_state)
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= interval
        scale = jnp.where(
            finite, jnp.where(grow, state.scale * growth, state.scale),
            jnp.maximum(state.scale * backoff, min_scale),
        )
        return updates, DynamicLossScaleState(
            scale.astype(jnp.float32), jnp.where(grow, 0, good).astype(jnp.int32),
            jnp.where(finite, state.skipped, state.skipped + 1).astype(jnp.int32), inner,
        )

    return Optimizer(init, update)


def scale_loss(loss: jax.Array, state: DynamicLossScaleState) -> jax.Array:
    """$S · L$: the loss to differentiate, in the loss's dtype (`state` from `dynamic_loss_scale`)."""
    if not isinstance(state, DynamicLossScaleState):
        raise TypeError(
            "scale_loss: state must be the DynamicLossScaleState made by "
            f"dynamic_loss_scale(...).init(params), got {type(state).__name__}"
        )
    return loss * state.scale.astype(jnp.result_type(loss))


__all__ = public_names(globals(), __name__)
