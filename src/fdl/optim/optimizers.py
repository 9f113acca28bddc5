"""The named optimizers, each written as the moving averages it keeps.

Conventions for every docstring below (stated once here):

* g_t is the gradient at step t = 1, 2, …; θ the parameter; every symbol other
  than the scalars η, β, ε, λ, μ, ρ has the shape of the parameter leaf it
  belongs to (the optimizer treats each leaf, and each element, independently);
  operations on them (g², √, /, max, sign) are element-wise.
* η_t is the learning rate applied at step t: the float given, or
  `schedule(count)` where `count = t − 1` is the step count held in the state
  before the update (so a schedule's step 0 is the first update).
* u_t is the update returned; `apply_updates` then sets θ_t = θ_{t−1} + u_t.
* Moving averages start at zero (m_0 = v_0 = … = 0) unless a docstring says so.
* State dtype: accumulators are float32 for 16-bit params (bfloat16, float16)
  and the params' dtype otherwise; arithmetic is done in that dtype and u_t is
  cast to the dtype of the grads.
* Each state holds `count` (int32[], updates so far, saturating at 2³¹−1) and
  `hyperparams` (dict of scalar arrays in JAX's default float dtype): the
  numeric hyperparameters by argument name, and "learning_rate", the η that the
  *next* update will apply, i.e. η(count). They are a record for reading; the
  update uses the values the optimizer was built with.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl.optim.base import (
    Optimizer,
    Params,
    ScalarOrSchedule,
    Updates,
    acc_dtype,
    check_bool,
    check_float_params,
    check_learning_rate,
    check_nonnegative,
    check_positive,
    check_unit_interval,
    default_float,
    increment,
    learning_rate_at,
    scalar,
    zero_count,
    zeros_acc,
)
from fdl.optim.transforms import Mask, resolve_mask

# --------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------


class _PerLeaf:
    """A list already aligned with the flattened leaves of the grads (e.g. mask flags)."""

    def __init__(self, items: list) -> None:
        self.items = list(items)


def _leafwise(step: Callable, grads: Updates, *trees: Any, n_out: int) -> tuple:
    """Run `step(g, *leaves) -> (u, *new_leaves)` on every leaf and unzip the results.

    `trees` are pytrees with the structure of `grads`, or `_PerLeaf` lists.
    """
    g_leaves, treedef = jax.tree.flatten(grads)
    columns = [t.items if isinstance(t, _PerLeaf) else treedef.flatten_up_to(t) for t in trees]
    rows = [step(g, *args) for g, *args in zip(g_leaves, *columns)]
    return tuple(treedef.unflatten([row[i] for row in rows]) for i in range(n_out))


def _nones(grads: Updates) -> _PerLeaf:
    """A `_PerLeaf` of None, for a state field that is switched off."""
    return _PerLeaf([None] * len(jax.tree.leaves(grads)))


def _hyperparams(
    learning_rate: ScalarOrSchedule, count: jax.Array, fn: str, **others: float
) -> dict:
    """The readable record: η(count) and the other numeric hyperparameters."""
    return {"learning_rate": learning_rate_at(learning_rate, count, fn)} | {
        k: scalar(v) for k, v in others.items()
    }


def _next(state: Any, learning_rate: ScalarOrSchedule, fn: str) -> tuple[jax.Array, dict]:
    """The incremented count and the hyperparams record with η(new count)."""
    count = increment(state.count)
    hyper = dict(state.hyperparams)
    hyper["learning_rate"] = learning_rate_at(learning_rate, count, fn)
    return count, hyper


def _step_number(count: jax.Array) -> jax.Array:
    """t = count + 1 as a default-float scalar, for bias corrections β^t."""
    return (count + 1).astype(default_float())


def _decay_flags(fn: str, weight_decay: float, mask: Mask, grads: Updates, params: Params) -> tuple:
    """(θ per leaf, decay flag per leaf) for decoupled weight decay, as `_PerLeaf`s."""
    g_leaves, treedef = jax.tree.flatten(grads)
    n = len(g_leaves)
    if weight_decay == 0.0:
        return _PerLeaf([None] * n), _PerLeaf([False] * n)
    if params is None:
        raise ValueError(
            f"{fn}: weight_decay={weight_decay!r} needs the params; "
            "call update(grads, state, params)"
        )
    flags = resolve_mask(fn, mask, params)
    return _PerLeaf(treedef.flatten_up_to(params)), _PerLeaf([True] * n if flags is None else flags)


def _learning_rate_and_step(
    state: Any, learning_rate: ScalarOrSchedule, fn: str
) -> tuple[jax.Array, jax.Array]:
    """(η_t, t) for the update about to be made: η(count) and count + 1."""
    return learning_rate_at(learning_rate, state.count, fn), _step_number(state.count)


# --------------------------------------------------------------------------
# SGD with momentum (accumulation form)
# --------------------------------------------------------------------------


class SGDState(NamedTuple):
    """State of `sgd`.

    Fields:
      count:       int32[], updates so far.
      velocity:    pytree like params, v (accumulator dtype); None when momentum == 0.
      hyperparams: {"learning_rate", "momentum"} as default-float scalars.
    """

    count: jax.Array
    velocity: Any
    hyperparams: dict


def sgd(
    learning_rate: ScalarOrSchedule, momentum: float = 0.0, *, nesterov: bool = False
) -> Optimizer:
    """Stochastic gradient descent, with momentum in the accumulation form.

    η_t = `learning_rate`, μ = `momentum` ∈ [0, 1), v = velocity (shape of θ):

        v_t = μ v_{t−1} + g_t
        u_t = −η_t v_t                       (nesterov=False)
        u_t = −η_t (g_t + μ v_t)             (nesterov=True)

    With μ = 0 this is plain gradient descent, u_t = −η_t g_t, and no velocity
    is stored. v is the sum Σ_k μ^{t−k} g_k, an exponential moving average of the
    gradients scaled by 1/(1 − μ); see `ema_momentum` for the normalised form.
    Sutskever et al. write v_t = μ v_{t−1} − η ∇f(θ_{t−1} + μ v_{t−1}); for a
    constant η that is this recursion with v scaled by −η, and the Nesterov
    look-ahead becomes the g_t + μ v_t correction (Bengio et al.'s rewriting),
    which evaluates the gradient at θ itself.

    References: Polyak, "Some methods of speeding up the convergence of iteration
    methods", 1964; Sutskever, Martens, Dahl & Hinton, "On the importance of
    initialization and momentum in deep learning", 2013; Bengio,
    Boulanger-Lewandowski & Pascanu, "Advances in optimizing recurrent networks", 2013.
    """
    fn = "sgd"
    learning_rate = check_learning_rate(fn, learning_rate)
    momentum = check_unit_interval(fn, "momentum", momentum)
    nesterov = check_bool(fn, "nesterov", nesterov)
    if nesterov and momentum == 0.0:
        raise ValueError(f"{fn}: nesterov=True needs momentum > 0, got momentum={momentum!r}")

    def init(params: Params) -> SGDState:
        check_float_params(fn, params)
        velocity = zeros_acc(params) if momentum > 0.0 else None
        hyper = _hyperparams(learning_rate, zero_count(), fn, momentum=momentum)
        return SGDState(zero_count(), velocity, hyper)

    def update(grads: Updates, state: SGDState, params: Params = None):
        lr = learning_rate_at(learning_rate, state.count, fn)
        if momentum == 0.0:
            updates = jax.tree.map(
                lambda g: (-lr.astype(acc_dtype(g)) * g.astype(acc_dtype(g))).astype(g.dtype), grads
            )
            velocity = None
        else:

            def step(g, v):
                gd = g.astype(v.dtype)
                v = momentum * v + gd
                direction = gd + momentum * v if nesterov else v
                return (-lr.astype(v.dtype) * direction).astype(g.dtype), v

            updates, velocity = _leafwise(step, grads, state.velocity, n_out=2)
        count, hyper = _next(state, learning_rate, fn)
        return updates, SGDState(count, velocity, hyper)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Momentum as an exponential moving average (the normalised form)
# --------------------------------------------------------------------------


class EMAMomentumState(NamedTuple):
    """State of `ema_momentum`.

    Fields:
      count:       int32[], updates so far.
      velocity:    pytree like params, v (accumulator dtype).
      hyperparams: {"learning_rate", "beta"} as default-float scalars.
    """

    count: jax.Array
    velocity: Any
    hyperparams: dict


def ema_momentum(learning_rate: ScalarOrSchedule, beta: float = 0.9) -> Optimizer:
    """Gradient descent with momentum as an exponential moving average of gradients.

    η_t = `learning_rate`, β = `beta` ∈ [0, 1), v = velocity (shape of θ):

        v_t = β v_{t−1} + (1 − β) g_t
        u_t = −η_t v_t

    Relation to `sgd`'s accumulation form: with w = v/(1 − β),
    w_t = β w_{t−1} + g_t and u_t = −η_t (1 − β) w_t, so
    `ema_momentum(η, beta=β)` takes exactly the steps of
    `sgd(η·(1 − β), momentum=β)`: the same method, the learning rate rescaled
    by 1 − β. No bias correction is applied (early steps are damped by 1 − β^t).

    References: Ng, "Gradient descent with momentum", Improving Deep Neural
    Networks (deeplearning.ai), 2017; Polyak, 1964.
    """
    fn = "ema_momentum"
    learning_rate = check_learning_rate(fn, learning_rate)
    beta = check_unit_interval(fn, "beta", beta)

    def init(params: Params) -> EMAMomentumState:
        check_float_params(fn, params)
        hyper = _hyperparams(learning_rate, zero_count(), fn, beta=beta)
        return EMAMomentumState(zero_count(), zeros_acc(params), hyper)

    def update(grads: Updates, state: EMAMomentumState, params: Params = None):
        lr = learning_rate_at(learning_rate, state.count, fn)

        def step(g, v):
            v = beta * v + (1.0 - beta) * g.astype(v.dtype)
            return (-lr.astype(v.dtype) * v).astype(g.dtype), v

        updates, velocity = _leafwise(step, grads, state.velocity, n_out=2)
        count, hyper = _next(state, learning_rate, fn)
        return updates, EMAMomentumState(count, velocity, hyper)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Adagrad
# --------------------------------------------------------------------------


class AdagradState(NamedTuple):
    """State of `adagrad`.

    Fields:
      count:          int32[], updates so far.
      sum_of_squares: pytree like params, G (accumulator dtype).
      hyperparams:    {"learning_rate", "initial_accumulator_value", "eps"}.
    """

    count: jax.Array
    sum_of_squares: Any
    hyperparams: dict


def adagrad(
    learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.0, eps: float = 1e-10
) -> Optimizer:
    """Adagrad: divide by the root of the running *sum* of squared gradients.

    η_t = `learning_rate`, G_0 = `initial_accumulator_value` (every element),
    ε = `eps` > 0 (outside the square root):

        G_t = G_{t−1} + g_t²
        u_t = −η_t g_t / (√G_t + ε)

    G is an unnormalised average with no decay, so the effective step shrinks
    like 1/√t; RMSProp and Adadelta replace the sum by a moving average.

    References: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", 2011.
    """
    fn = "adagrad"
    learning_rate = check_learning_rate(fn, learning_rate)
    initial = check_nonnegative(fn, "initial_accumulator_value", initial_accumulator_value)
    eps = check_positive(fn, "eps", eps)

    def init(params: Params) -> AdagradState:
        check_float_params(fn, params)
        acc = jax.tree.map(lambda z: jnp.full_like(z, initial), zeros_acc(params))
        hyper = _hyperparams(
            learning_rate, zero_count(), fn, initial_accumulator_value=initial, eps=eps
        )
        return AdagradState(zero_count(), acc, hyper)

    def update(grads: Updates, state: AdagradState, params: Params = None):
        lr = learning_rate_at(learning_rate, state.count, fn)

        def step(g, big_g):
            gd = g.astype(big_g.dtype)
            big_g = big_g + gd * gd
            return (-lr.astype(gd.dtype) * gd / (jnp.sqrt(big_g) + eps)).astype(g.dtype), big_g

        updates, acc = _leafwise(step, grads, state.sum_of_squares, n_out=2)
        count, hyper = _next(state, learning_rate, fn)
        return updates, AdagradState(count, acc, hyper)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Adadelta
# --------------------------------------------------------------------------


class AdadeltaState(NamedTuple):
    """State of `adadelta`.

    Fields:
      count:             int32[], updates so far.
      mean_square_grad:  pytree like params, E[g²] (accumulator dtype).
      mean_square_delta: pytree like params, E[Δ²] (accumulator dtype).
      hyperparams:       {"learning_rate", "rho", "eps"}.
    """

    count: jax.Array
    mean_square_grad: Any
    mean_square_delta: Any
    hyperparams: dict


def adadelta(
    learning_rate: ScalarOrSchedule = 1.0, rho: float = 0.9, eps: float = 1e-6
) -> Optimizer:
    """Adadelta: moving averages of squared gradients *and* squared steps.

    η_t = `learning_rate` (1.0 in the paper), ρ = `rho` ∈ [0, 1), ε = `eps` > 0
    (inside both square roots):

        E[g²]_t = ρ E[g²]_{t−1} + (1 − ρ) g_t²
        Δ_t     = −(√(E[Δ²]_{t−1} + ε) / √(E[g²]_t + ε)) g_t
        E[Δ²]_t = ρ E[Δ²]_{t−1} + (1 − ρ) Δ_t²
        u_t     = η_t Δ_t

    The ratio of the two root-mean-squares gives the step the units of θ.

    References: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """
    fn = "adadelta"
    learning_rate = check_learning_rate(fn, learning_rate)
    rho = check_unit_interval(fn, "rho", rho)
    eps = check_positive(fn, "eps", eps)

    def init(params: Params) -> AdadeltaState:
        check_float_params(fn, params)
        hyper = _hyperparams(learning_rate, zero_count(), fn, rho=rho, eps=eps)
        return AdadeltaState(zero_count(), zeros_acc(params), zeros_acc(params), hyper)

    def update(grads: Updates, state: AdadeltaState, params: Params = None):
        lr = learning_rate_at(learning_rate, state.count, fn)

        def step(g, sq_g, sq_d):
            gd = g.astype(sq_g.dtype)
            sq_g = rho * sq_g + (1.0 - rho) * gd * gd
            delta = -(jnp.sqrt(sq_d + eps) / jnp.sqrt(sq_g + eps)) * gd
            sq_d = rho * sq_d + (1.0 - rho) * delta * delta
            return (lr.astype(gd.dtype) * delta).astype(g.dtype), sq_g, sq_d

        updates, sq_g, sq_d = _leafwise(
            step, grads, state.mean_square_grad, state.mean_square_delta, n_out=3
        )
        count, hyper = _next(state, learning_rate, fn)
        return updates, AdadeltaState(count, sq_g, sq_d, hyper)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# RMSProp
# --------------------------------------------------------------------------


class RMSPropState(NamedTuple):
    """State of `rmsprop`.

    Fields:
      count:       int32[], updates so far.
      nu:          pytree like params, ν = EMA of g² (accumulator dtype).
      mean_grad:   pytree like params, m̄ = EMA of g (accumulator dtype); None unless centered.
      velocity:    pytree like params, b (accumulator dtype); None when momentum == 0.
      hyperparams: {"learning_rate", "decay", "eps", "momentum"}.
    """

    count: jax.Array
    nu: Any
    mean_grad: Any
    velocity: Any
    hyperparams: dict


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    *,
    centered: bool = False,
    momentum: float = 0.0,
) -> Optimizer:
    """RMSProp: divide the gradient by a moving root-mean-square of recent gradients.

    η_t = `learning_rate`, ρ = `decay` ∈ [0, 1), ε = `eps` > 0, μ = `momentum` ∈ [0, 1):

        ν_t = ρ ν_{t−1} + (1 − ρ) g_t²
        m̄_t = ρ m̄_{t−1} + (1 − ρ) g_t                 (centered=True only)
        s_t = ν_t                                      (centered=False)
        s_t = max(ν_t − m̄_t², 0)                       (centered=True)
        d_t = g_t / (√s_t + ε)
        b_t = μ b_{t−1} + d_t,   u_t = −η_t b_t          (momentum > 0)
        u_t = −η_t d_t                                   (momentum = 0)

    ε sits *outside* the square root, added to √s_t (as in Adam and PyTorch;
    TensorFlow puts it inside, √(s_t + ε)). The centered form divides by an
    estimate of the gradient's standard deviation instead of its RMS.

    References: Tieleman & Hinton, "Lecture 6.5 — RMSProp: Divide the gradient by
    a running average of its recent magnitude", COURSERA: Neural Networks for
    Machine Learning, 2012; Graves, "Generating Sequences With Recurrent Neural
    Networks", 2013 (centered form and momentum).
    """
    fn = "rmsprop"
    learning_rate = check_learning_rate(fn, learning_rate)
    decay = check_unit_interval(fn, "decay", decay)
    eps = check_positive(fn, "eps", eps)
    centered = check_bool(fn, "centered", centered)
    momentum = check_unit_interval(fn, "momentum", momentum)

    def init(params: Params) -> RMSPropState:
        check_float_params(fn, params)
        return RMSPropState(
            count=zero_count(),
            nu=zeros_acc(params),
            mean_grad=zeros_acc(params) if centered else None,
            velocity=zeros_acc(params) if momentum > 0.0 else None,
            hyperparams=_hyperparams(
                learning_rate, zero_count(), fn, decay=decay, eps=eps, momentum=momentum
            ),
        )

    def update(grads: Updates, state: RMSPropState, params: Params = None):
        lr = learning_rate_at(learning_rate, state.count, fn)
        mean_grad = state.mean_grad if centered else _nones(grads)
        velocity = state.velocity if momentum > 0.0 else _nones(grads)

        def step(g, nu, mbar, b):
            gd = g.astype(nu.dtype)
            nu = decay * nu + (1.0 - decay) * gd * gd
            if centered:
                mbar = decay * mbar + (1.0 - decay) * gd
                # ν − m̄² ≥ 0 in exact arithmetic; rounding can dip below zero.
                s = jnp.maximum(nu - mbar * mbar, 0.0)
            else:
                s = nu
            d = gd / (jnp.sqrt(s) + eps)
            if momentum > 0.0:
                b = momentum * b + d
                d = b
            return (-lr.astype(gd.dtype) * d).astype(g.dtype), nu, mbar, b

        updates, nu, mbar, b = _leafwise(step, grads, state.nu, mean_grad, velocity, n_out=4)
        count, hyper = _next(state, learning_rate, fn)
        mbar = mbar if centered else None
        b = b if momentum > 0.0 else None
        return updates, RMSPropState(count, nu, mbar, b, hyper)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Adam and its family
# --------------------------------------------------------------------------


def _check_adam_args(fn: str, learning_rate: Any, b1: Any, b2: Any, eps: Any) -> tuple:
    return (
        check_learning_rate(fn, learning_rate),
        check_unit_interval(fn, "b1", b1),
        check_unit_interval(fn, "b2", b2),
        check_positive(fn, "eps", eps),
    )


def _adam_moments(g: jax.Array, m: jax.Array, v: jax.Array, b1: float, b2: float) -> tuple:
    """m_t = β₁ m + (1 − β₁) g,  v_t = β₂ v + (1 − β₂) g², in the state dtype."""
    gd = g.astype(m.dtype)
    return gd, b1 * m + (1.0 - b1) * gd, b2 * v + (1.0 - b2) * gd * gd


class AdamState(NamedTuple):
    """State of `adam`.

    Fields:
      count:       int32[], updates so far (t − 1 during the next update).
      mu:          pytree like params, m = EMA of g (accumulator dtype).
      nu:          pytree like params, v = EMA of g² (accumulator dtype).
      hyperparams: {"learning_rate", "b1", "b2", "eps"}.
    """

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict


def adam(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    """Adam: momentum (EMA of g) over RMSProp (EMA of g²), both bias-corrected.

    η_t = `learning_rate`, β₁ = `b1` ∈ [0, 1), β₂ = `b2` ∈ [0, 1), ε = `eps` > 0
    (outside the square root):

        m_t = β₁ m_{t−1} + (1 − β₁) g_t
        v_t = β₂ v_{t−1} + (1 − β₂) g_t²
        m̂_t = m_t / (1 − β₁^t)
        v̂_t = v_t / (1 − β₂^t)
        u_t = −η_t m̂_t / (√v̂_t + ε)

    The corrections undo the bias of averages started at zero, so the first step
    is u_1 = −η_1 g_1/(|g_1| + ε) ≈ −η_1 sign(g_1).

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015.
    """
    fn = "adam"
    learning_rate, b1, b2, eps = _check_adam_args(fn, learning_rate, b1, b2, eps)

    def init(params: Params) -> AdamState:
        check_float_params(fn, params)
        hyper = _hyperparams(learning_rate, zero_count(), fn, b1=b1, b2=b2, eps=eps)
        return AdamState(zero_count(), zeros_acc(params), zeros_acc(params), hyper)

    def update(grads: Updates, state: AdamState, params: Params = None):
        lr, t = _learning_rate_and_step(state, learning_rate, fn)

        def step(g, m, v):
            _, m, v = _adam_moments(g, m, v, b1, b2)
            m_hat = m / (1.0 - b1**t).astype(m.dtype)
            v_hat = v / (1.0 - b2**t).astype(v.dtype)
            return (-lr.astype(m.dtype) * (m_hat / (jnp.sqrt(v_hat) + eps))).astype(g.dtype), m, v

        updates, mu, nu = _leafwise(step, grads, state.mu, state.nu, n_out=3)
        count, hyper = _next(state, learning_rate, fn)
        return updates, AdamState(count, mu, nu, hyper)

    return Optimizer(init, update)


class AdamWState(NamedTuple):
    """State of `adamw`.

    Fields:
      count:       int32[], updates so far.
      mu:          pytree like params, m = EMA of g (accumulator dtype).
      nu:          pytree like params, v = EMA of g² (accumulator dtype).
      hyperparams: {"learning_rate", "b1", "b2", "eps", "weight_decay"}.
    """

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    *,
    mask: Mask = None,
) -> Optimizer:
    """AdamW: Adam with weight decay decoupled from the gradient.

    η_t = `learning_rate`, β₁ = `b1`, β₂ = `b2`, ε = `eps` as in `adam`,
    λ = `weight_decay` >= 0, θ_{t−1} = the params passed to `update`:

        m_t = β₁ m_{t−1} + (1 − β₁) g_t
        v_t = β₂ v_{t−1} + (1 − β₂) g_t²
        m̂_t = m_t / (1 − β₁^t)
        v̂_t = v_t / (1 − β₂^t)
        u_t = −η_t (m̂_t / (√v̂_t + ε) + λ θ_{t−1})

    The decay λθ bypasses the moving averages, so it is not rescaled by √v̂
    (unlike adding λθ to g, i.e. L2 regularisation). `mask` (a pytree of bools
    like params, or a function of params returning one) selects the leaves that
    decay, e.g. `mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)` skips
    biases. `update` needs `params` when λ > 0.

    References: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """
    fn = "adamw"
    learning_rate, b1, b2, eps = _check_adam_args(fn, learning_rate, b1, b2, eps)
    weight_decay = check_nonnegative(fn, "weight_decay", weight_decay)

    def init(params: Params) -> AdamWState:
        check_float_params(fn, params)
        resolve_mask(fn, mask, params)
        hyper = _hyperparams(
            learning_rate, zero_count(), fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
        )
        return AdamWState(zero_count(), zeros_acc(params), zeros_acc(params), hyper)

    def update(grads: Updates, state: AdamWState, params: Params = None):
        lr, t = _learning_rate_and_step(state, learning_rate, fn)
        theta, flags = _decay_flags(fn, weight_decay, mask, grads, params)

        def step(g, m, v, p, decays):
            _, m, v = _adam_moments(g, m, v, b1, b2)
            m_hat = m / (1.0 - b1**t).astype(m.dtype)
            v_hat = v / (1.0 - b2**t).astype(v.dtype)
            direction = m_hat / (jnp.sqrt(v_hat) + eps)
            if decays:
                # The paper multiplies λθ by the schedule multiplier only; like
                # PyTorch we multiply by the whole η_t, so λ is relative to it.
                direction = direction + weight_decay * p.astype(m.dtype)
            return (-lr.astype(m.dtype) * direction).astype(g.dtype), m, v

        updates, mu, nu = _leafwise(step, grads, state.mu, state.nu, theta, flags, n_out=3)
        count, hyper = _next(state, learning_rate, fn)
        return updates, AdamWState(count, mu, nu, hyper)

    return Optimizer(init, update)


class AdamaxState(NamedTuple):
    """State of `adamax`.

    Fields:
      count:       int32[], updates so far.
      mu:          pytree like params, m = EMA of g (accumulator dtype).
      inf_norm:    pytree like params, u∞ = decaying max of |g| (accumulator dtype).
      hyperparams: {"learning_rate", "b1", "b2", "eps"}.
    """

    count: jax.Array
    mu: Any
    inf_norm: Any
    hyperparams: dict


def adamax(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    """Adamax: Adam with the EMA of g² replaced by an exponentially weighted ∞-norm.

    η_t = `learning_rate` (the paper suggests 0.002), β₁ = `b1`, β₂ = `b2` ∈ [0, 1),
    ε = `eps` > 0:

        m_t  = β₁ m_{t−1} + (1 − β₁) g_t
        u∞_t = max(β₂ u∞_{t−1}, |g_t|)
        u_t  = −(η_t / (1 − β₁^t)) m_t / (u∞_t + ε)

    u∞ is the limit p → ∞ of (EMA of |g|^p)^{1/p}; it needs no bias correction.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015
    (Section 7.1).
    """
    fn = "adamax"
    learning_rate, b1, b2, eps = _check_adam_args(fn, learning_rate, b1, b2, eps)

    def init(params: Params) -> AdamaxState:
        check_float_params(fn, params)
        hyper = _hyperparams(learning_rate, zero_count(), fn, b1=b1, b2=b2, eps=eps)
        return AdamaxState(zero_count(), zeros_acc(params), zeros_acc(params), hyper)

    def update(grads: Updates, state: AdamaxState, params: Params = None):
        lr, t = _learning_rate_and_step(state, learning_rate, fn)

        def step(g, m, u_inf):
            gd = g.astype(m.dtype)
            m = b1 * m + (1.0 - b1) * gd
            u_inf = jnp.maximum(b2 * u_inf, jnp.abs(gd))
            # ε is not in the paper; it keeps 0/0 away where g has always been 0.
            scale = (lr / (1.0 - b1**t)).astype(m.dtype)
            return (-scale * m / (u_inf + eps)).astype(g.dtype), m, u_inf

        updates, mu, inf_norm = _leafwise(step, grads, state.mu, state.inf_norm, n_out=3)
        count, hyper = _next(state, learning_rate, fn)
        return updates, AdamaxState(count, mu, inf_norm, hyper)

    return Optimizer(init, update)


class NAdamState(NamedTuple):
    """State of `nadam`.

    Fields:
      count:       int32[], updates so far.
      mu:          pytree like params, m = EMA of g (accumulator dtype).
      nu:          pytree like params, v = EMA of g² (accumulator dtype).
      hyperparams: {"learning_rate", "b1", "b2", "eps"}.
    """

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict


def nadam(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    """NAdam: Adam with Nesterov momentum (the look-ahead folded into m̂).

    η_t = `learning_rate`, β₁ = `b1`, β₂ = `b2` ∈ [0, 1), ε = `eps` > 0:

        m_t = β₁ m_{t−1} + (1 − β₁) g_t
        v_t = β₂ v_{t−1} + (1 − β₂) g_t²
        m̂_t = β₁ m_t / (1 − β₁^{t+1}) + (1 − β₁) g_t / (1 − β₁^t)
        v̂_t = v_t / (1 − β₂^t)
        u_t = −η_t m̂_t / (√v̂_t + ε)

    m̂_t mixes the next step's bias-corrected momentum with the current gradient,
    which is Nesterov's look-ahead applied to the EMA.

    References: Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop, 2016.
    """
    fn = "nadam"
    learning_rate, b1, b2, eps = _check_adam_args(fn, learning_rate, b1, b2, eps)

    def init(params: Params) -> NAdamState:
        check_float_params(fn, params)
        hyper = _hyperparams(learning_rate, zero_count(), fn, b1=b1, b2=b2, eps=eps)
        return NAdamState(zero_count(), zeros_acc(params), zeros_acc(params), hyper)

    def update(grads: Updates, state: NAdamState, params: Params = None):
        lr, t = _learning_rate_and_step(state, learning_rate, fn)

        def step(g, m, v):
            # Dozat's momentum schedule μ_t is held constant at β₁ (as in Keras's default).
            gd, m, v = _adam_moments(g, m, v, b1, b2)
            m_hat = b1 * m / (1.0 - b1 ** (t + 1)).astype(m.dtype) + (1.0 - b1) * gd / (
                1.0 - b1**t
            ).astype(m.dtype)
            v_hat = v / (1.0 - b2**t).astype(v.dtype)
            return (-lr.astype(m.dtype) * m_hat / (jnp.sqrt(v_hat) + eps)).astype(g.dtype), m, v

        updates, mu, nu = _leafwise(step, grads, state.mu, state.nu, n_out=3)
        count, hyper = _next(state, learning_rate, fn)
        return updates, NAdamState(count, mu, nu, hyper)

    return Optimizer(init, update)


class AMSGradState(NamedTuple):
    """State of `amsgrad`.

    Fields:
      count:       int32[], updates so far.
      mu:          pytree like params, m = EMA of g (accumulator dtype).
      nu:          pytree like params, v = EMA of g² (accumulator dtype).
      nu_max:      pytree like params, v_max = running max of v (accumulator dtype).
      hyperparams: {"learning_rate", "b1", "b2", "eps"}.
    """

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any
    hyperparams: dict


def amsgrad(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    """AMSGrad: Adam whose denominator never shrinks (a running max of the EMA of g²).

    η_t = `learning_rate`, β₁ = `b1`, β₂ = `b2` ∈ [0, 1), ε = `eps` > 0:

        m_t     = β₁ m_{t−1} + (1 − β₁) g_t
        v_t     = β₂ v_{t−1} + (1 − β₂) g_t²
        vmax_t  = max(vmax_{t−1}, v_t)
        m̂_t     = m_t / (1 − β₁^t)
        v̂max_t  = vmax_t / (1 − β₂^t)
        u_t     = −η_t m̂_t / (√v̂max_t + ε)

    References: Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", 2018.
    """
    fn = "amsgrad"
    learning_rate, b1, b2, eps = _check_adam_args(fn, learning_rate, b1, b2, eps)

    def init(params: Params) -> AMSGradState:
        check_float_params(fn, params)
        hyper = _hyperparams(learning_rate, zero_count(), fn, b1=b1, b2=b2, eps=eps)
        m, v, v_max = zeros_acc(params), zeros_acc(params), zeros_acc(params)
        return AMSGradState(zero_count(), m, v, v_max, hyper)

    def update(grads: Updates, state: AMSGradState, params: Params = None):
        lr, t = _learning_rate_and_step(state, learning_rate, fn)

        def step(g, m, v, v_max):
            _, m, v = _adam_moments(g, m, v, b1, b2)
            v_max = jnp.maximum(v_max, v)
            # The paper has no bias correction; we keep Adam's (as PyTorch does),
            # applied after the max so the max is over the raw EMA as in the paper.
            m_hat = m / (1.0 - b1**t).astype(m.dtype)
            v_hat = v_max / (1.0 - b2**t).astype(m.dtype)
            u = -lr.astype(m.dtype) * m_hat / (jnp.sqrt(v_hat) + eps)
            return u.astype(g.dtype), m, v, v_max

        updates, mu, nu, nu_max = _leafwise(step, grads, state.mu, state.nu, state.nu_max, n_out=4)
        count, hyper = _next(state, learning_rate, fn)
        return updates, AMSGradState(count, mu, nu, nu_max, hyper)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Lion
# --------------------------------------------------------------------------


class LionState(NamedTuple):
    """State of `lion`.

    Fields:
      count:       int32[], updates so far.
      mu:          pytree like params, m = EMA of g with rate β₂ (accumulator dtype).
      hyperparams: {"learning_rate", "b1", "b2", "weight_decay"}.
    """

    count: jax.Array
    mu: Any
    hyperparams: dict


def lion(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 0.0,
    *,
    mask: Mask = None,
) -> Optimizer:
    """Lion: the sign of an interpolation between momentum and gradient.

    η_t = `learning_rate` (typically 3–10× smaller than Adam's), β₁ = `b1`,
    β₂ = `b2` ∈ [0, 1), λ = `weight_decay` >= 0 (decoupled, as in AdamW),
    θ_{t−1} = the params passed to `update`:

        c_t = β₁ m_{t−1} + (1 − β₁) g_t
        u_t = −η_t (sign(c_t) + λ θ_{t−1})
        m_t = β₂ m_{t−1} + (1 − β₂) g_t

    Every element moves by exactly η_t (before decay); m is an EMA of g that the
    step reads with a different rate (β₁) than it is stored with (β₂).
    `mask` selects the leaves that decay, as in `adamw`.

    References: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """
    fn = "lion"
    learning_rate = check_learning_rate(fn, learning_rate)
    b1 = check_unit_interval(fn, "b1", b1)
    b2 = check_unit_interval(fn, "b2", b2)
    weight_decay = check_nonnegative(fn, "weight_decay", weight_decay)

    def init(params: Params) -> LionState:
        check_float_params(fn, params)
        resolve_mask(fn, mask, params)
        hyper = _hyperparams(
            learning_rate, zero_count(), fn, b1=b1, b2=b2, weight_decay=weight_decay
        )
        return LionState(zero_count(), zeros_acc(params), hyper)

    def update(grads: Updates, state: LionState, params: Params = None):
        lr = learning_rate_at(learning_rate, state.count, fn)
        theta, flags = _decay_flags(fn, weight_decay, mask, grads, params)

        def step(g, m, p, decays):
            gd = g.astype(m.dtype)
            direction = jnp.sign(b1 * m + (1.0 - b1) * gd)
            if decays:
                direction = direction + weight_decay * p.astype(m.dtype)
            m = b2 * m + (1.0 - b2) * gd
            return (-lr.astype(m.dtype) * direction).astype(g.dtype), m

        updates, mu = _leafwise(step, grads, state.mu, theta, flags, n_out=2)
        count, hyper = _next(state, learning_rate, fn)
        return updates, LionState(count, mu, hyper)

    return Optimizer(init, update)




# --------------------------------------------------------------------------
# Lookup by name (for configuration files and command lines)
# --------------------------------------------------------------------------

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": sgd,
    "ema_momentum": ema_momentum,
    "adagrad": adagrad,
    "adadelta": adadelta,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
    "adamax": adamax,
    "nadam": nadam,
    "amsgrad": amsgrad,
    "lion": lion,
}


def get_optimizer(name: str, **options: Any) -> Optimizer:
    """Build the optimizer called `name` with keyword `options`.

    `get_optimizer("adam", learning_rate=1e-3, b2=0.99)` is `adam(1e-3, b2=0.99)`.
    An unknown name or an option the optimizer does not take raises ValueError
    listing what is accepted (rather than a bare TypeError from the call).
    """
    if name not in OPTIMIZERS:
        raise ValueError(
            f"get_optimizer: unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}"
        )
    factory = OPTIMIZERS[name]
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"get_optimizer: {name} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {accepted}"
        )
    return factory(**options)


__all__ = [
    "SGDState",
    "sgd",
    "EMAMomentumState",
    "ema_momentum",
    "AdagradState",
    "adagrad",
    "AdadeltaState",
    "adadelta",
    "RMSPropState",
    "rmsprop",
    "AdamState",
    "adam",
    "AdamWState",
    "adamw",
    "AdamaxState",
    "adamax",
    "NAdamState",
    "nadam",
    "AMSGradState",
    "amsgrad",
    "LionState",
    "lion",
    "OPTIMIZERS",
    "get_optimizer",
]
