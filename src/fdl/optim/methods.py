"""One transform per optimization method: the moving averages each method keeps.

Each `scale_by_*` (and `trace`) turns gradients into a *descent direction* d_t;
`scale_by_learning_rate` then makes the step u_t = −η_t d_t. The named
optimizers in `fdl.optim.optimizers` are these chained.

Conventions for every docstring below (stated once here):

* g_t is the gradient at step t = 1, 2, …, one leaf of the grads; every symbol
  other than the scalars (β, ε, μ, ρ) has the shape of that leaf, and the
  operations on them (g², √, /, max, |·|, sign) are element-wise. Each method is
  written for one array and lifted to pytrees by `fdl.optim.base.lift`.
* t − 1 is the `count` held in the state before the update (for the bias
  corrections 1 − β^t).
* Moving averages start at zero (m_0 = v_0 = … = 0) unless a docstring says so.
  One step of an exponential moving average is `ema`:
  EMA(a, x; β) = β a + (1 − β) x.
* State dtype: accumulators are float32 for 16-bit params (bfloat16, float16)
  and the params' dtype otherwise; arithmetic happens in that dtype and d_t is
  returned in the dtype of the grads.
* A hyperparameter may be a Python float or a scalar JAX array (possibly traced,
  as `inject_hyperparams` passes it); only a Python 0 switches state off
  (`trace`'s velocity), because an array may change between steps.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl.optim.base import (
    Optimizer,
    Params,
    Updates,
    check_float,
    check_hyperparams,
    check_optional,
    check_state,
    is_static_zero,
    lift,
    step_number,
    increment,
    zero_count,
    zeros_acc,
)


def ema(average: Any, x: Any, decay: Any) -> Any:
    """EMA(a, x; β) = β a + (1 − β) x: one step of an exponential moving average."""
    return decay * average + (1 - decay) * x


def bias_correction(decay: Any, t: jax.Array) -> jax.Array:
    """1 − β^t, the mass an EMA started at zero has after t steps.

    Computed as −expm1(t log β) with log β taken in double precision for a Python
    β: the direct 1 − β^t in float32 cancels (β₂ = 0.999 rounds to 0.99900001, an
    error of 1.3e-5 relative to 1 − β₂), this keeps float32's relative precision.
    """
    if isinstance(decay, float):
        if decay == 0.0:
            return jnp.ones_like(t)
        return -jnp.expm1(t * math.log(decay))
    return -jnp.expm1(t * jnp.log(decay))


# --------------------------------------------------------------------------
# Momentum
# --------------------------------------------------------------------------


class TraceState(NamedTuple):
    """State of `trace`.

    Fields:
      velocity: pytree like params, v (accumulator dtype); None when momentum is a Python 0.
    """

    velocity: Any


def trace(momentum: float, *, nesterov: bool = False) -> Optimizer:
    """Heavy-ball momentum in the accumulation form (a trace of past gradients).

    μ = `momentum` ∈ [0, 1), v = velocity (shape of g):

        v_t = μ v_{t−1} + g_t
        d_t = v_t                        (nesterov=False)
        d_t = g_t + μ v_t                (nesterov=True)

    v is the sum Σ_k μ^{t−k} g_k, an exponential moving average of the gradients
    scaled by 1/(1 − μ) (see `scale_by_ema_momentum` for the normalised form).
    Sutskever et al. write v_t = μ v_{t−1} − η ∇f(θ_{t−1} + μ v_{t−1}); for a
    constant η that is this recursion with v scaled by −η, and the look-ahead
    becomes the g_t + μ v_t correction (Bengio et al.'s rewriting), which
    evaluates the gradient at θ itself. With μ a Python 0, d_t = g_t and no
    velocity is stored.

    References: Polyak, "Some methods of speeding up the convergence of iteration
    methods", 1964; Sutskever, Martens, Dahl & Hinton, "On the importance of
    initialization and momentum in deep learning", 2013; Bengio,
    Boulanger-Lewandowski & Pascanu, "Advances in optimizing recurrent networks", 2013.
    """
    fn = "trace"
    momentum, nesterov = check_hyperparams(fn, momentum=momentum, nesterov=nesterov)
    if nesterov and is_static_zero(momentum):
        raise ValueError(f"{fn}: nesterov=True needs momentum > 0, got momentum={momentum!r}")
    keep = not is_static_zero(momentum)

    def init(params: Params) -> TraceState:
        check_float(fn, params, "parameter")
        return TraceState(zeros_acc(params) if keep else None)

    def update(grads: Updates, state: TraceState, params: Params = None):
        check_state(fn, state, TraceState)
        if not keep:
            check_float(fn, grads, "gradient")
            return grads, state

        def step(g, v, mu):
            v = mu * v + g
            return (g + mu * v if nesterov else v), v

        d, new = lift(fn, step, grads, {"velocity": state.velocity}, scalars=(momentum,))
        return d, TraceState(**new)

    return Optimizer(init, update)


class ScaleByEmaMomentumState(NamedTuple):
    """State of `scale_by_ema_momentum`.

    Fields:
      velocity: pytree like params, v = EMA of g (accumulator dtype).
    """

    velocity: Any


def scale_by_ema_momentum(beta: float = 0.9) -> Optimizer:
    """Momentum as an exponential moving average of the gradients.

    β = `beta` ∈ [0, 1), v = velocity (shape of g):

        v_t = EMA(v_{t−1}, g_t; β) = β v_{t−1} + (1 − β) g_t
        d_t = v_t

    With w = v/(1 − β), w_t = β w_{t−1} + g_t: this is `trace(β)` with the
    directions scaled by 1 − β. No bias correction (early steps are damped by 1 − β^t).

    References: Ng, "Gradient descent with momentum", Improving Deep Neural
    Networks (deeplearning.ai), 2017; Polyak, 1964.
    """
    fn = "scale_by_ema_momentum"
    (beta,) = check_hyperparams(fn, beta=beta)

    def init(params: Params) -> ScaleByEmaMomentumState:
        check_float(fn, params, "parameter")
        return ScaleByEmaMomentumState(zeros_acc(params))

    def update(grads: Updates, state: ScaleByEmaMomentumState, params: Params = None):
        check_state(fn, state, ScaleByEmaMomentumState)

        def step(g, v, beta):
            v = ema(v, g, beta)
            return v, v

        d, new = lift(fn, step, grads, {"velocity": state.velocity}, scalars=(beta,))
        return d, ScaleByEmaMomentumState(**new)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Adaptive scaling by the gradients' magnitude
# --------------------------------------------------------------------------


class ScaleByAdagradState(NamedTuple):
    """State of `scale_by_adagrad`.

    Fields:
      sum_of_squares: pytree like params, G (accumulator dtype).
    """

    sum_of_squares: Any


def scale_by_adagrad(initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> Optimizer:
    """Adagrad: divide by the root of the running *sum* of squared gradients.

    G_0 = `initial_accumulator_value` (every element), ε = `eps` > 0 (outside the root):

        G_t = G_{t−1} + g_t²
        d_t = g_t / (√G_t + ε)

    G is an unnormalised average with no decay, so the effective step shrinks
    like 1/√t; RMSProp and Adadelta replace the sum by a moving average.

    References: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", 2011.
    """
    fn = "scale_by_adagrad"
    initial, eps = check_hyperparams(fn, initial_accumulator_value=initial_accumulator_value, eps=eps)

    def init(params: Params) -> ScaleByAdagradState:
        check_float(fn, params, "parameter")
        return ScaleByAdagradState(zeros_acc(params, initial))

    def update(grads: Updates, state: ScaleByAdagradState, params: Params = None):
        check_state(fn, state, ScaleByAdagradState)

        def step(g, big_g, eps):
            big_g = big_g + g * g
            return g / (jnp.sqrt(big_g) + eps), big_g

        d, new = lift(fn, step, grads, {"sum_of_squares": state.sum_of_squares}, scalars=(eps,))
        return d, ScaleByAdagradState(**new)

    return Optimizer(init, update)


class ScaleByAdadeltaState(NamedTuple):
    """State of `scale_by_adadelta`.

    Fields:
      mean_square_grad:  pytree like params, E[g²] (accumulator dtype).
      mean_square_delta: pytree like params, E[d²] (accumulator dtype).
    """

    mean_square_grad: Any
    mean_square_delta: Any


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> Optimizer:
    """Adadelta: moving averages of squared gradients *and* squared steps.

    ρ = `rho` ∈ [0, 1), ε = `eps` > 0 (inside both square roots):

        E[g²]_t = EMA(E[g²]_{t−1}, g_t²; ρ)
        d_t     = (√(E[d²]_{t−1} + ε) / √(E[g²]_t + ε)) g_t
        E[d²]_t = EMA(E[d²]_{t−1}, d_t²; ρ)

    The ratio of the two root-mean-squares gives the step the units of θ. The
    paper's step Δ_t is −d_t (with η = 1, `adadelta`'s default).

    References: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """
    fn = "scale_by_adadelta"
    rho, eps = check_hyperparams(fn, rho=rho, eps=eps)

    def init(params: Params) -> ScaleByAdadeltaState:
        check_float(fn, params, "parameter")
        return ScaleByAdadeltaState(zeros_acc(params), zeros_acc(params))

    def update(grads: Updates, state: ScaleByAdadeltaState, params: Params = None):
        check_state(fn, state, ScaleByAdadeltaState)

        def step(g, sq_g, sq_d, rho, eps):
            sq_g = ema(sq_g, g * g, rho)
            d = (jnp.sqrt(sq_d + eps) / jnp.sqrt(sq_g + eps)) * g
            return d, sq_g, ema(sq_d, d * d, rho)

        trees = {"mean_square_grad": state.mean_square_grad,
                 "mean_square_delta": state.mean_square_delta}
        d, new = lift(fn, step, grads, trees, scalars=(rho, eps))
        return d, ScaleByAdadeltaState(**new)

    return Optimizer(init, update)


class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms`.

    Fields:
      nu:        pytree like params, ν = EMA of g² (accumulator dtype).
      mean_grad: pytree like params, m̄ = EMA of g (accumulator dtype); None unless centered.
    """

    nu: Any
    mean_grad: Any


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, *, centered: bool = False) -> Optimizer:
    """RMSProp's scaling: divide by a moving root-mean-square of recent gradients.

    ρ = `decay` ∈ [0, 1), ε = `eps` > 0:

        ν_t = EMA(ν_{t−1}, g_t²; ρ)
        m̄_t = EMA(m̄_{t−1}, g_t; ρ)                  (centered=True only)
        s_t = ν_t                                   (centered=False)
        s_t = max(ν_t − m̄_t², 0)                    (centered=True)
        d_t = g_t / (√s_t + ε)

    ε sits *outside* the square root, added to √s_t (as in Adam and PyTorch;
    TensorFlow puts it inside, √(s_t + ε)). The centered form divides by an
    estimate of the gradient's standard deviation instead of its RMS.

    References: Tieleman & Hinton, "Lecture 6.5 — RMSProp: Divide the gradient by
    a running average of its recent magnitude", COURSERA: Neural Networks for
    Machine Learning, 2012; Graves, "Generating Sequences With Recurrent Neural
    Networks", 2013 (centered form).
    """
    fn = "scale_by_rms"
    decay, eps, centered = check_hyperparams(fn, decay=decay, eps=eps, centered=centered)

    def init(params: Params) -> ScaleByRmsState:
        check_float(fn, params, "parameter")
        return ScaleByRmsState(zeros_acc(params), zeros_acc(params) if centered else None)

    def update(grads: Updates, state: ScaleByRmsState, params: Params = None):
        check_state(fn, state, ScaleByRmsState)
        check_optional(fn, state, "mean_grad", centered, "centered")

        def step(g, nu, *rest):
            *mbar, decay, eps = rest
            nu = ema(nu, g * g, decay)
            if centered:
                mbar = [ema(mbar[0], g, decay)]
                # ν − m̄² ≥ 0 in exact arithmetic; rounding can dip below zero.
                s = jnp.maximum(nu - mbar[0] * mbar[0], 0.0)
            else:
                s = nu
            return g / (jnp.sqrt(s) + eps), nu, *mbar

        trees = {"nu": state.nu} | ({"mean_grad": state.mean_grad} if centered else {})
        d, new = lift(fn, step, grads, trees, scalars=(decay, eps))
        return d, ScaleByRmsState(new["nu"], new.get("mean_grad"))

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Adam and its family
# --------------------------------------------------------------------------


class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`.

    Fields:
      count:  int32[], updates so far (t − 1 during the next update).
      mu:     pytree like params, m = EMA of g (accumulator dtype).
      nu:     pytree like params, v = EMA of g² (accumulator dtype).
      nu_max: pytree like params, v_max = running max of v (accumulator dtype);
              None unless amsgrad.
    """

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    nesterov: bool = False,
    amsgrad: bool = False,
) -> Optimizer:
    """Adam's scaling: momentum (EMA of g) over RMS (EMA of g²), both bias-corrected.

    β₁ = `b1` ∈ [0, 1), β₂ = `b2` ∈ [0, 1), ε = `eps` > 0 (outside the square root):

        m_t = EMA(m_{t−1}, g_t; β₁)
        v_t = EMA(v_{t−1}, g_t²; β₂)
        m̂_t = m_t / (1 − β₁^t)                                    (nesterov=False)
        m̂_t = β₁ m_t / (1 − β₁^{t+1}) + (1 − β₁) g_t / (1 − β₁^t)   (nesterov=True: NAdam)
        v̂_t = v_t / (1 − β₂^t)                                    (amsgrad=False)
        vmax_t = max(vmax_{t−1}, v_t),  v̂_t = vmax_t / (1 − β₂^t)   (amsgrad=True: AMSGrad)
        d_t = m̂_t / (√v̂_t + ε)

    The corrections undo the bias of averages started at zero, so the first
    direction is d_1 = g_1/(|g_1| + ε) ≈ sign(g_1). NAdam's m̂ mixes the next
    step's bias-corrected momentum with the current gradient (Nesterov's
    look-ahead applied to the EMA); Dozat's momentum schedule μ_t is held
    constant at β₁ (as in Keras's default). AMSGrad's denominator never shrinks;
    the paper has no bias correction, and like PyTorch we keep Adam's, applied
    after the max so the max is over the raw EMA as in the paper.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015;
    Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop, 2016;
    Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", 2018.
    """
    fn = "scale_by_adam"
    b1, b2, eps, nesterov, amsgrad = check_hyperparams(
        fn, b1=b1, b2=b2, eps=eps, nesterov=nesterov, amsgrad=amsgrad
    )

    def init(params: Params) -> ScaleByAdamState:
        check_float(fn, params, "parameter")
        nu_max = zeros_acc(params) if amsgrad else None
        return ScaleByAdamState(zero_count(), zeros_acc(params), zeros_acc(params), nu_max)

    def update(grads: Updates, state: ScaleByAdamState, params: Params = None):
        check_state(fn, state, ScaleByAdamState)
        check_optional(fn, state, "nu_max", amsgrad, "amsgrad")
        t = step_number(state.count)
        corrections = (
            bias_correction(b1, t), bias_correction(b2, t), bias_correction(b1, t + 1)
        )

        def step(g, m, v, *rest):
            *v_max, b1, b2, eps, c1, c2, c1_next = rest
            m, v = ema(m, g, b1), ema(v, g * g, b2)
            if amsgrad:
                v_max = [jnp.maximum(v_max[0], v)]
            m_hat = b1 * m / c1_next + (1 - b1) * g / c1 if nesterov else m / c1
            v_hat = (v_max[0] if amsgrad else v) / c2
            return m_hat / (jnp.sqrt(v_hat) + eps), m, v, *v_max

        trees = {"mu": state.mu, "nu": state.nu} | ({"nu_max": state.nu_max} if amsgrad else {})
        d, new = lift(fn, step, grads, trees, scalars=(b1, b2, eps, *corrections))
        return d, ScaleByAdamState(increment(state.count), new["mu"], new["nu"], new.get("nu_max"))

    return Optimizer(init, update)


class ScaleByAdamaxState(NamedTuple):
    """State of `scale_by_adamax`.

    Fields:
      count:    int32[], updates so far (t − 1 during the next update).
      mu:       pytree like params, m = EMA of g (accumulator dtype).
      inf_norm: pytree like params, u∞ = decaying max of |g| (accumulator dtype).
    """

    count: jax.Array
    mu: Any
    inf_norm: Any


def scale_by_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adamax's scaling: Adam with the EMA of g² replaced by an exponentially weighted ∞-norm.

    β₁ = `b1`, β₂ = `b2` ∈ [0, 1), ε = `eps` > 0:

        m_t  = EMA(m_{t−1}, g_t; β₁)
        u∞_t = max(β₂ u∞_{t−1}, |g_t|)
        d_t  = (m_t / (1 − β₁^t)) / (u∞_t + ε)

    u∞ is the limit p → ∞ of (EMA of |g|^p)^{1/p}; it needs no bias correction.
    ε is not in the paper; it keeps 0/0 away where g has always been 0.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015
    (Section 7.1).
    """
    fn = "scale_by_adamax"
    b1, b2, eps = check_hyperparams(fn, b1=b1, b2=b2, eps=eps)

    def init(params: Params) -> ScaleByAdamaxState:
        check_float(fn, params, "parameter")
        return ScaleByAdamaxState(zero_count(), zeros_acc(params), zeros_acc(params))

    def update(grads: Updates, state: ScaleByAdamaxState, params: Params = None):
        check_state(fn, state, ScaleByAdamaxState)
        c1 = bias_correction(b1, step_number(state.count))

        def step(g, m, u_inf, b1, b2, eps, c1):
            m = ema(m, g, b1)
            u_inf = jnp.maximum(b2 * u_inf, jnp.abs(g))
            return (m / c1) / (u_inf + eps), m, u_inf

        trees = {"mu": state.mu, "inf_norm": state.inf_norm}
        d, new = lift(fn, step, grads, trees, scalars=(b1, b2, eps, c1))
        return d, ScaleByAdamaxState(increment(state.count), **new)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Lion
# --------------------------------------------------------------------------


class ScaleByLionState(NamedTuple):
    """State of `scale_by_lion`.

    Fields:
      mu: pytree like params, m = EMA of g with rate β₂ (accumulator dtype).
    """

    mu: Any


def scale_by_lion(b1: float = 0.9, b2: float = 0.99) -> Optimizer:
    """Lion's scaling: the sign of an interpolation between momentum and gradient.

    β₁ = `b1`, β₂ = `b2` ∈ [0, 1):

        d_t = sign(EMA(m_{t−1}, g_t; β₁))
        m_t = EMA(m_{t−1}, g_t; β₂)

    Every element of d is ±1 (or 0); m is an EMA of g that the direction reads
    with a different rate (β₁) than it is stored with (β₂).

    References: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """
    fn = "scale_by_lion"
    b1, b2 = check_hyperparams(fn, b1=b1, b2=b2)

    def init(params: Params) -> ScaleByLionState:
        check_float(fn, params, "parameter")
        return ScaleByLionState(zeros_acc(params))

    def update(grads: Updates, state: ScaleByLionState, params: Params = None):
        check_state(fn, state, ScaleByLionState)

        def step(g, m, b1, b2):
            return jnp.sign(ema(m, g, b1)), ema(m, g, b2)

        d, new = lift(fn, step, grads, {"mu": state.mu}, scalars=(b1, b2))
        return d, ScaleByLionState(**new)

    return Optimizer(init, update)


__all__ = [
    "ema",
    "bias_correction",
    "TraceState",
    "trace",
    "ScaleByEmaMomentumState",
    "scale_by_ema_momentum",
    "ScaleByAdagradState",
    "scale_by_adagrad",
    "ScaleByAdadeltaState",
    "scale_by_adadelta",
    "ScaleByRmsState",
    "scale_by_rms",
    "ScaleByAdamState",
    "scale_by_adam",
    "ScaleByAdamaxState",
    "scale_by_adamax",
    "ScaleByLionState",
    "scale_by_lion",
]
