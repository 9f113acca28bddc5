r"""L-BFGS: a quasi-Newton direction from the last $m$ steps, and a backtracking line search.

The notation is that of `fdl.optim.methods`, with the inner product of two
pytrees $⟨a, b⟩ = Σ_{\text{leaves}} Σ_{\text{elements}} a b$ (parameters are
treated as one vector), $θ_k$ the params and $g_k = ∇f(θ_k)$ at iteration $k$.
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
    chain,
    check_float,
    check_like,
    check_state,
    default_float,
    increment,
    label,
    public_names,
    require_params,
    zero_count,
)
from fdl.optim.transforms import scale_by_learning_rate


def _dot(a: Any, b: Any) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class ScaleByLbfgsState(NamedTuple):
    """State of `scale_by_lbfgs`.

    Fields:
      count:       int32[], updates so far ($k$ during the next update).
      prev_params: pytree like params, $θ_{k−1}$ (accumulator dtype).
      prev_grads:  pytree like params, $g_{k−1}$ (accumulator dtype).
      s:           pytree, each leaf `(m, *leaf.shape)`: the last $m$ steps $s_i$ (ring buffer).
      y:           pytree like `s`: the gradient changes $y_i$.
      rho:         float[m], $ρ_i = 1/⟨y_i, s_i⟩$ (0 in an empty slot).
      stored:      int32[], pairs stored so far (the ring position is `stored mod m`).
    """

    count: jax.Array
    prev_params: Any
    prev_grads: Any
    s: Any
    y: Any
    rho: jax.Array
    stored: jax.Array


def scale_by_lbfgs(memory_size: int = 10, *, curvature_eps: float = 1e-10) -> Optimizer:
    r"""The L-BFGS direction $d_k = H_k g_k$ (the two-loop recursion over the last $m$ pairs).

    $m$ = `memory_size`. At iteration $k ≥ 1$ the pair $s = θ_k − θ_{k−1}$,
    $y = g_k − g_{k−1}$ is stored when $⟨y, s⟩ > $ `curvature_eps` $·‖y‖ ‖s‖$
    (so $H_k$ stays positive definite), replacing the oldest of $m$. Then, with
    $q = g_k$ and the stored pairs from newest to oldest:

    $$ α_i = ρ_i ⟨s_i, q⟩, \qquad q ← q − α_i y_i, \qquad ρ_i = 1/⟨y_i, s_i⟩ $$
    $$ r = γ q, \qquad γ = ⟨s, y⟩/⟨y, y⟩ \text{ of the newest pair (1 if none)} $$
    $$ \text{oldest to newest:} \quad β_i = ρ_i ⟨y_i, r⟩, \qquad r ← r + (α_i − β_i) s_i $$
    $$ d_k = r $$

    $H_k$ is the BFGS inverse-Hessian approximation built from $γ I$ by the
    $m$ updates, applied without forming it: $O(mn)$ work and memory. The first
    direction is $d_0 = g_0$. `update` needs `params`. Chain it with
    `scale_by_learning_rate` (`lbfgs` does) and choose the step length with a
    line search (`lbfgs_step`).

    References: Nocedal, "Updating Quasi-Newton Matrices with Limited
    Storage", 1980; Liu & Nocedal, "On the limited memory BFGS method for large
    scale optimization", 1989; Nocedal & Wright, "Numerical Optimization",
    2006 (Algorithm 7.4).
    """
    fn = label("scale_by_lbfgs")
    m = V.int_at_least(fn, "memory_size", memory_size, 1)
    curvature_eps = V.finite_real(fn, "curvature_eps", curvature_eps, minimum=0.0)

    def init(params: Params) -> ScaleByLbfgsState:
        check_float(fn, params, "parameter")
        copy = jax.tree.map(lambda p: jnp.asarray(p, acc_dtype(p)), params)
        memory = jax.tree.map(lambda p: jnp.zeros((m, *jnp.shape(p)), acc_dtype(p)), params)
        zeros = jax.tree.map(jnp.zeros_like, copy)
        rho = jnp.zeros((m,), default_float())
        return ScaleByLbfgsState(zero_count(), copy, zeros, memory, memory, rho, zero_count())

    def update(grads: Updates, state: ScaleByLbfgsState, params: Params = None):
        check_state(fn, state, ScaleByLbfgsState)
        check_float(fn, grads, "gradient")
        require_params(fn, params)
        check_like(fn, grads, state.prev_params, "the state's prev_params")
        g = jax.tree.map(lambda x, o: x.astype(o.dtype), grads, state.prev_params)
        p = jax.tree.map(lambda x, o: x.astype(o.dtype), params, state.prev_params)
        s = jax.tree.map(jnp.subtract, p, state.prev_params)
        y = jax.tree.map(jnp.subtract, g, state.prev_grads)
        sy = _dot(s, y)
        keep = (state.count > 0) & (sy > curvature_eps * jnp.sqrt(_dot(s, s) * _dot(y, y)))
        state = state._replace(**_remember(state, s, y, keep, sy))
        r = _two_loop(g, state)
        direction = jax.tree.map(lambda d, x: d.astype(x.dtype), r, grads)
        return direction, state._replace(count=increment(state.count), prev_params=p, prev_grads=g)

    return Optimizer(init, update)


def _remember(state: ScaleByLbfgsState, s: Any, y: Any, keep: jax.Array, sy: jax.Array) -> dict:
    """The ring buffer with the pair $(s, y)$ written over the oldest one, where `keep`."""
    slot = state.stored % state.rho.shape[0]

    def put(mem: jax.Array, v: jax.Array) -> jax.Array:
        return jnp.where(keep, mem.at[slot].set(v), mem)

    return {
        "s": jax.tree.map(put, state.s, s),
        "y": jax.tree.map(put, state.y, y),
        "rho": jnp.where(keep, state.rho.at[slot].set(1.0 / jnp.where(keep, sy, 1.0)), state.rho),
        "stored": jnp.where(keep, state.stored + 1, state.stored).astype(jnp.int32),
    }


def _two_loop(g: Any, state: ScaleByLbfgsState) -> Any:
    """$r = H g$ by the two-loop recursion over the stored pairs (`scale_by_lbfgs`'s equations)."""
    m, rho, stored = state.rho.shape[0], state.rho, state.stored

    def pair(i):
        return jax.tree.map(lambda mem: mem[i], state.s), jax.tree.map(lambda mem: mem[i], state.y)

    def newest_first(j, carry):  # empty slots have ρ = 0 and change nothing
        q, alphas = carry
        i = (stored - 1 - j) % m
        s_i, y_i = pair(i)
        alpha = rho[i] * _dot(s_i, q)
        q = jax.tree.map(lambda a, b: a - alpha.astype(a.dtype) * b, q, y_i)
        return q, alphas.at[i].set(alpha)

    def oldest_first(j, r):
        i = (stored + j) % m
        s_i, y_i = pair(i)
        beta = rho[i] * _dot(y_i, r)
        return jax.tree.map(lambda a, b: a + (alphas[i] - beta).astype(a.dtype) * b, r, s_i)

    q, alphas = jax.lax.fori_loop(0, m, newest_first, (g, jnp.zeros_like(rho)))
    s_new, y_new = pair((stored - 1) % m)
    yy = _dot(y_new, y_new)
    gamma = jnp.where(stored > 0, _dot(s_new, y_new) / jnp.where(stored > 0, yy, 1.0), 1.0)
    return jax.lax.fori_loop(0, m, oldest_first, jax.tree.map(lambda a: a * gamma.astype(a.dtype), q))


def lbfgs_step(
    optimizer: Optimizer,
    fun: Callable[..., jax.Array],
    params: Params,
    state: Any,
    *args: Any,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_linesearch_steps: int = 30,
) -> tuple[Params, Any, jax.Array]:
    r"""One L-BFGS iteration on `fun(params, *args)` with a (weak) Wolfe line search.

    With $u$ = the optimizer's update ($u = −d_k$ for `lbfgs`),
    $φ(a) = f(θ_k + a u)$ and $0 < c₁ < c₂ < 1$ (`c1`, `c2`), the step length
    $a$ satisfies the Wolfe conditions

    $$ φ(a) ≤ φ(0) + c₁ a φ'(0) \quad \text{(sufficient decrease)}, \qquad φ'(a) ≥ c₂ φ'(0) \quad \text{(curvature)} $$

    found by bracketing and bisection (Lewis & Overton): start at $a = 1$ with
    the bracket $[lo, hi] = [0, ∞)$; if the decrease fails (or $φ(a)$ is NaN),
    $hi ← a$; else if the curvature fails, $lo ← a$; then
    $a ← (lo + hi)/2$, or $a ← 2a$ while $hi = ∞$; at most
    `max_linesearch_steps` tries (the last $a$ is taken if none passes). The
    curvature condition makes $⟨y, s⟩ ≥ (c₂ − 1) a φ'(0) > 0$, so every pair is
    usable and $H_k$ stays positive definite. $θ_{k+1} = θ_k + a u$. Returns
    `(new_params, new_state, f(θ_k))`. Pure and jittable (a `lax.while_loop`);
    each try evaluates `fun` and its gradient.

    References: Nocedal & Wright, "Numerical Optimization", 2006 (Section 3.1);
    Lewis & Overton, "Nonsmooth optimization via quasi-Newton methods", 2013.
    """
    value, grads = jax.value_and_grad(fun)(params, *args)
    updates, state = optimizer.update(grads, state, params)
    slope = _dot(grads, updates)

    def moved(a):
        return jax.tree.map(lambda p, u: (p + a.astype(p.dtype) * u).astype(p.dtype), params, updates)

    def trial(a):
        f, g = jax.value_and_grad(fun)(moved(a), *args)
        return f, _dot(g, updates)

    def verdict(a, f, d):
        decrease = f <= value + c1 * a * slope  # False for a NaN value
        return decrease, d >= c2 * slope

    def searching(carry):
        a, _, _, f, d, i = carry
        decrease, curvature = verdict(a, f, d)
        return ~(decrease & curvature) & (i < max_linesearch_steps)

    def bisect(carry):
        a, lo, hi, f, d, i = carry
        decrease, _ = verdict(a, f, d)
        hi = jnp.where(decrease, hi, a)
        lo = jnp.where(decrease, a, lo)
        a = jnp.where(jnp.isinf(hi), 2.0 * a, 0.5 * (lo + hi))
        return (a, lo, hi, *trial(a), i + 1)

    one = jnp.ones([], jnp.result_type(value))
    start = (one, 0.0 * one, jnp.inf * one, *trial(one), 0)
    a = jax.lax.while_loop(searching, bisect, start)[0]
    return moved(a), state, value


def lbfgs(memory_size: int = 10, *, curvature_eps: float = 1e-10) -> Optimizer:
    r"""L-BFGS's update $u_k = −d_k = −H_k g_k$, for `lbfgs_step` to scale by a line search.

    `chain(scale_by_lbfgs(m), scale_by_learning_rate(1.0))`; the equations are
    `scale_by_lbfgs`'s. Use it with `lbfgs_step(opt, f, params, state, …)`, which
    needs the loss function (for the line search), not just its gradient: it is
    for full-batch, deterministic problems.

    References: Liu & Nocedal, "On the limited memory BFGS method for large
    scale optimization", 1989.
    """
    return chain(scale_by_lbfgs(memory_size, curvature_eps=curvature_eps), scale_by_learning_rate(1.0))


__all__ = public_names(globals(), __name__)
