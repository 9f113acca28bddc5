r"""Sharpness-aware minimisation: step to the worst point nearby, descend with its gradient.

The notation is that of `fdl.optim.methods`; $‖g‖$ is the global norm over all
leaves (`global_norm`), $L$ the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl import _validate as V
from fdl.optim.base import (
    Optimizer,
    Params,
    Updates,
    acc_dtype,
    apply_updates,
    check_float,
    check_like,
    check_optimizer,
    check_state,
    increment,
    label,
    public_names,
    require_params,
    zero_count,
)
from fdl.optim.transforms import global_norm


class SamState(NamedTuple):
    """State of `sam`.

    Fields:
      count:       int32[], calls to `update` so far (even: the next is an ascent).
      origin:      pytree like params, $θ_t$, saved by the ascent for the descent
                   (accumulator dtype).
      inner_state: the wrapped optimizer's state (advanced by descents only).
    """

    count: jax.Array
    origin: Any
    inner_state: Any


def sam(optimizer: Optimizer, rho: float = 0.05, *, eps: float = 1e-12) -> Optimizer:
    r"""SAM: the two-gradient step as a transform whose calls alternate ascent and descent.

    $ρ$ = `rho` $> 0$ (the neighbourhood's radius), $ε$ = `eps`; `optimizer`'s
    update is written $\operatorname{opt}(g; θ)$. Step $t$ takes two calls:

    $$ \text{ascent (call } 2t − 1\text{, gradient } g = ∇L(θ_t)\text{):} \quad ε̂_t = ρ \, g / (‖g‖ + ε), \qquad u = ε̂_t $$
    $$ \text{descent (call } 2t\text{, gradient } g^{SAM} = ∇L(θ_t + ε̂_t)\text{):} \quad u = θ_t + \operatorname{opt}(g^{SAM}; θ_t) − (θ_t + ε̂_t) $$

    so after both calls $θ_{t+1} = θ_t + \operatorname{opt}(∇L(θ_t + ε̂_t); θ_t)$:
    the optimizer descends with the gradient at the (first-order) worst point of
    the ball $‖ε‖ ≤ ρ$, which favours flat minima. `update` needs `params`;
    `sam_step` runs both calls with one loss function.

    References: Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware
    Minimization for Efficiently Improving Generalization", 2021.
    """
    fn = label("sam")
    check_optimizer(fn, optimizer)
    rho = V.finite_real(fn, "rho", rho, minimum=0.0, strict=True)
    eps = V.finite_real(fn, "eps", eps, minimum=0.0)

    def init(params: Params) -> SamState:
        check_float(fn, params, "parameter")
        origin = jax.tree.map(lambda p: jnp.asarray(p, acc_dtype(p)), params)
        return SamState(zero_count(), origin, optimizer.init(params))

    def update(grads: Updates, state: SamState, params: Params = None):
        check_state(fn, state, SamState)
        check_float(fn, grads, "gradient")
        require_params(fn, params)
        check_like(fn, grads, state.origin, "the state's origin")
        ascent = state.count % 2 == 0
        factor = rho / (global_norm(grads) + eps)
        origin_params = jax.tree.map(lambda o, p: o.astype(p.dtype), state.origin, params)
        inner_u, inner = optimizer.update(grads, state.inner_state, origin_params)

        def one(g, p, o, u):
            dt = o.dtype
            up = g.astype(dt) * factor.astype(dt)
            down = o + u.astype(dt) - p.astype(dt)
            return jnp.where(ascent, up, down).astype(g.dtype)

        updates = jax.tree.map(one, grads, params, state.origin, inner_u)
        origin = jax.tree.map(
            lambda o, p: jnp.where(ascent, p.astype(o.dtype), o), state.origin, params
        )
        inner = jax.tree.map(lambda new, old: jnp.where(ascent, old, new), inner, state.inner_state)
        return updates, SamState(increment(state.count), origin, inner)

    return Optimizer(init, update)


def sam_step(
    optimizer: Optimizer,
    loss_fn: Callable[..., jax.Array],
    params: Params,
    state: SamState,
    *args: Any,
) -> tuple[Params, SamState, jax.Array]:
    r"""One SAM step: both gradients of `loss_fn(params, *args)` and both calls of a `sam` optimizer.

    Returns `(new_params, new_state, loss)` with `loss` $= L(θ_t)$, the value at
    the params given. Pure: it can be jitted, e.g.
    `jax.jit(lambda p, s, x, y: sam_step(opt, loss, p, s, x, y))`.
    """
    loss, grads = jax.value_and_grad(loss_fn)(params, *args)
    updates, state = optimizer.update(grads, state, params)
    perturbed = apply_updates(params, updates)
    grads = jax.grad(loss_fn)(perturbed, *args)
    updates, state = optimizer.update(grads, state, perturbed)
    return apply_updates(perturbed, updates), state, loss


__all__ = public_names(globals(), __name__)
