r"""One transform per optimization method: the moving averages each method keeps.

Each `scale_by_*` (and `trace`) turns gradients into a *descent direction* $d_t$;
`scale_by_learning_rate` then makes the step $u_t = −η_t d_t$. The named
optimizers in `fdl.optim.optimizers` are these chained.

Conventions for every docstring below (stated once here):

* $g_t$ is the gradient at step $t = 1, 2, …$, one leaf of the grads; every
  symbol other than the scalars ($β$, $ε$, $μ$, $ρ$) has the shape of that leaf,
  and the operations on them ($g²$, $√·$, $/$, $\max$, $|·|$, $\operatorname{sign}$)
  are element-wise. Each method is written for one array (a `step` taking its
  state fields by name and closing over the hyperparameters) and lifted to
  pytrees by `fdl.optim.base.lift`.
* $t − 1$ is the `count` held in the state before the update (for the bias
  corrections $1 − β^t$).
* Moving averages start at zero ($m_0 = v_0 = … = 0$) unless a docstring says
  so. One step of an exponential moving average is `ema`:
  $$ \operatorname{EMA}(a, x; β) = β a + (1 − β) x $$
* State dtype: accumulators are float32 for 16-bit params (bfloat16, float16)
  and the params' dtype otherwise; arithmetic happens in that dtype and $d_t$ is
  returned in the dtype of the grads.
* A hyperparameter may be a Python float or a scalar JAX array (possibly traced,
  as `inject_hyperparams` passes it); only a Python 0 switches state off
  (`trace`'s velocity), because an array may change between steps.
* Each factory validates its hyperparameters; built inside a named optimizer
  (`adam`, `sgd`, …) its messages carry that optimizer's name (`label`).
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
    increment,
    is_static_zero,
    label,
    lift,
    public_names,
    step_number,
    zero_count,
    zeros_acc,
)


def ema(average: Any, x: Any, decay: Any) -> Any:
    r"""$\operatorname{EMA}(a, x; β) = β a + (1 − β) x$: one step of an exponential moving average."""
    return decay * average + (1 - decay) * x


def bias_correction(decay: Any, t: jax.Array) -> jax.Array:
    r"""$1 − β^t$, the mass an EMA started at zero has after $t$ steps.

    Computed as $−\operatorname{expm1}(t \log β)$ with $\log β$ taken in double
    precision for a Python $β$: the direct $1 − β^t$ in float32 cancels
    ($β₂ = 0.999$ rounds to 0.99900001, an error of 1.3e-5 relative to $1 − β₂$);
    this keeps float32's relative precision.
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
      velocity: pytree like params, $v$ (accumulator dtype); None when momentum is a Python 0.
    """

    velocity: Any


def trace(momentum: float, *, nesterov: bool = False) -> Optimizer:
    r"""Heavy-ball momentum in the accumulation form (a trace of past gradients).

    $μ$ = `momentum` $∈ [0, 1)$, $v$ = velocity (shape of $g$):

    $$ v_t = μ v_{t−1} + g_t $$
    $$ d_t = v_t \quad \text{(nesterov=False)}, \qquad d_t = g_t + μ v_t \quad \text{(nesterov=True)} $$

    $v$ is the sum $Σ_k μ^{t−k} g_k$, an exponential moving average of the
    gradients scaled by $1/(1 − μ)$ (see `scale_by_ema_momentum` for the
    normalised form). Sutskever et al. write
    $v_t = μ v_{t−1} − η ∇f(θ_{t−1} + μ v_{t−1})$; for a constant $η$ that is
    this recursion with $v$ scaled by $−η$, and the look-ahead becomes the
    $g_t + μ v_t$ correction (Bengio et al.'s rewriting), which evaluates the
    gradient at $θ$ itself. With $μ$ a Python 0, $d_t = g_t$ and no velocity is
    stored.

    References: Polyak, "Some methods of speeding up the convergence of iteration
    methods", 1964; Sutskever, Martens, Dahl & Hinton, "On the importance of
    initialization and momentum in deep learning", 2013; Bengio,
    Boulanger-Lewandowski & Pascanu, "Advances in optimizing recurrent networks", 2013.
    """
    fn = label("trace")
    momentum, nesterov = check_hyperparams(fn, momentum=momentum, nesterov=nesterov)
    if nesterov and is_static_zero(momentum):
        raise ValueError(f"{fn}: nesterov=True needs momentum > 0, got momentum={momentum!r}")
    keep = not is_static_zero(momentum)

    def init(params: Params) -> TraceState:
        check_float(fn, params, "parameter")
        return TraceState(zeros_acc(params) if keep else None)

    def step(g, velocity):
        v = momentum * velocity + g
        return (g + momentum * v if nesterov else v), {"velocity": v}

    def update(grads: Updates, state: TraceState, params: Params = None):
        check_state(fn, state, TraceState)
        if not keep:
            check_float(fn, grads, "gradient")
            return grads, state
        d, new = lift(fn, step, grads, state._asdict())
        return d, TraceState(**new)

    return Optimizer(init, update)


class ScaleByEmaMomentumState(NamedTuple):
    """State of `scale_by_ema_momentum`.

    Fields:
      velocity: pytree like params, $v$ = EMA of $g$ (accumulator dtype).
    """

    velocity: Any


def scale_by_ema_momentum(beta: float = 0.9) -> Optimizer:
    r"""Momentum as an exponential moving average of the gradients.

    $β$ = `beta` $∈ [0, 1)$, $v$ = velocity (shape of $g$):

    $$ v_t = \operatorname{EMA}(v_{t−1}, g_t; β) = β v_{t−1} + (1 − β) g_t, \qquad d_t = v_t $$

    With $w = v/(1 − β)$, $w_t = β w_{t−1} + g_t$: this is `trace(β)` with the
    directions scaled by $1 − β$. No bias correction (early steps are damped by
    $1 − β^t$).

    References: Ng, "Gradient descent with momentum", Improving Deep Neural
    Networks (deeplearning.ai), 2017; Polyak, 1964.
    """
    fn = label("scale_by_ema_momentum")
    (beta,) = check_hyperparams(fn, beta=beta)

    def init(params: Params) -> ScaleByEmaMomentumState:
        check_float(fn, params, "parameter")
        return ScaleByEmaMomentumState(zeros_acc(params))

    def step(g, velocity):
        v = ema(velocity, g, beta)
        return v, {"velocity": v}

    def update(grads: Updates, state: ScaleByEmaMomentumState, params: Params = None):
        check_state(fn, state, ScaleByEmaMomentumState)
        d, new = lift(fn, step, grads, state._asdict())
        return d, ScaleByEmaMomentumState(**new)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Adaptive scaling by the gradients' magnitude
# --------------------------------------------------------------------------


class ScaleByAdagradState(NamedTuple):
    """State of `scale_by_adagrad`.

    Fields:
      sum_of_squares: pytree like params, $G$ (accumulator dtype).
    """

    sum_of_squares: Any


def scale_by_adagrad(initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> Optimizer:
    r"""Adagrad: divide by the root of the running *sum* of squared gradients.

    $G_0$ = `initial_accumulator_value` (every element), $ε$ = `eps` $> 0$
    (outside the root):

    $$ G_t = G_{t−1} + g_t², \qquad d_t = g_t / (√G_t + ε) $$

    $G$ is an unnormalised average with no decay, so the effective step shrinks
    like $1/√t$; RMSProp and Adadelta replace the sum by a moving average.

    References: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", 2011.
    """
    fn = label("scale_by_adagrad")
    initial, eps = check_hyperparams(fn, initial_accumulator_value=initial_accumulator_value, eps=eps)

    def init(params: Params) -> ScaleByAdagradState:
        check_float(fn, params, "parameter")
        return ScaleByAdagradState(zeros_acc(params, initial))

    def step(g, sum_of_squares):
        big_g = sum_of_squares + g * g
        return g / (jnp.sqrt(big_g) + eps), {"sum_of_squares": big_g}

    def update(grads: Updates, state: ScaleByAdagradState, params: Params = None):
        check_state(fn, state, ScaleByAdagradState)
        d, new = lift(fn, step, grads, state._asdict())
        return d, ScaleByAdagradState(**new)

    return Optimizer(init, update)


class ScaleByAdadeltaState(NamedTuple):
    """State of `scale_by_adadelta`.

    Fields:
      mean_square_grad:  pytree like params, $E[g²]$ (accumulator dtype).
      mean_square_delta: pytree like params, $E[d²]$ (accumulator dtype).
    """

    mean_square_grad: Any
    mean_square_delta: Any


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> Optimizer:
    r"""Adadelta: moving averages of squared gradients *and* squared steps.

    $ρ$ = `rho` $∈ [0, 1)$, $ε$ = `eps` $> 0$ (inside both square roots):

    $$ E[g²]_t = \operatorname{EMA}(E[g²]_{t−1}, g_t²; ρ) $$
    $$ d_t = \frac{√(E[d²]_{t−1} + ε)}{√(E[g²]_t + ε)} g_t $$
    $$ E[d²]_t = \operatorname{EMA}(E[d²]_{t−1}, d_t²; ρ) $$

    The ratio of the two root-mean-squares gives the step the units of $θ$. The
    paper's step $Δ_t$ is $−d_t$ (with $η = 1$, `adadelta`'s default).

    References: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """
    fn = label("scale_by_adadelta")
    rho, eps = check_hyperparams(fn, rho=rho, eps=eps)

    def init(params: Params) -> ScaleByAdadeltaState:
        check_float(fn, params, "parameter")
        return ScaleByAdadeltaState(zeros_acc(params), zeros_acc(params))

    def step(g, mean_square_grad, mean_square_delta):
        sq_g = ema(mean_square_grad, g * g, rho)
        d = (jnp.sqrt(mean_square_delta + eps) / jnp.sqrt(sq_g + eps)) * g
        return d, {"mean_square_grad": sq_g, "mean_square_delta": ema(mean_square_delta, d * d, rho)}

    def update(grads: Updates, state: ScaleByAdadeltaState, params: Params = None):
        check_state(fn, state, ScaleByAdadeltaState)
        d, new = lift(fn, step, grads, state._asdict())
        return d, ScaleByAdadeltaState(**new)

    return Optimizer(init, update)


class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms`.

    Fields:
      nu:        pytree like params, $ν$ = EMA of $g²$ (accumulator dtype).
      mean_grad: pytree like params, $m̄$ = EMA of $g$ (accumulator dtype); None unless centered.
    """

    nu: Any
    mean_grad: Any


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, *, centered: bool = False) -> Optimizer:
    r"""RMSProp's scaling: divide by a moving root-mean-square of recent gradients.

    $ρ$ = `decay` $∈ [0, 1)$, $ε$ = `eps` $> 0$:

    $$ ν_t = \operatorname{EMA}(ν_{t−1}, g_t²; ρ), \qquad d_t = g_t / (√s_t + ε) $$
    $$ s_t = ν_t \quad \text{(centered=False)}, \qquad s_t = \max(ν_t − m̄_t², 0), \; m̄_t = \operatorname{EMA}(m̄_{t−1}, g_t; ρ) \quad \text{(centered=True)} $$

    $ε$ sits *outside* the square root, added to $√s_t$ (as in Adam and PyTorch;
    TensorFlow puts it inside, $√(s_t + ε)$). The centered form divides by an
    estimate of the gradient's standard deviation instead of its RMS.

    References: Tieleman & Hinton, "Lecture 6.5 — RMSProp: Divide the gradient by
    a running average of its recent magnitude", COURSERA: Neural Networks for
    Machine Learning, 2012; Graves, "Generating Sequences With Recurrent Neural
    Networks", 2013 (centered form).
    """
    fn = label("scale_by_rms")
    decay, eps, centered = check_hyperparams(fn, decay=decay, eps=eps, centered=centered)

    def init(params: Params) -> ScaleByRmsState:
        check_float(fn, params, "parameter")
        return ScaleByRmsState(zeros_acc(params), zeros_acc(params) if centered else None)

    def step(g, nu, mean_grad):
        nu = ema(nu, g * g, decay)
        if centered:
            mean_grad = ema(mean_grad, g, decay)
            # ν − m̄² ≥ 0 in exact arithmetic; rounding can dip below zero.
            s = jnp.maximum(nu - mean_grad * mean_grad, 0.0)
        else:
            s = nu
        return g / (jnp.sqrt(s) + eps), {"nu": nu, "mean_grad": mean_grad}

    def update(grads: Updates, state: ScaleByRmsState, params: Params = None):
        check_state(fn, state, ScaleByRmsState)
        check_optional(fn, state, "mean_grad", centered, "centered")
        d, new = lift(fn, step, grads, state._asdict())
        return d, ScaleByRmsState(**new)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Adam and its family
# --------------------------------------------------------------------------


class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`.

    Fields:
      count:  int32[], updates so far ($t − 1$ during the next update).
      mu:     pytree like params, $m$ = EMA of $g$ (accumulator dtype).
      nu:     pytree like params, $v$ = EMA of $g²$ (accumulator dtype).
      nu_max: pytree like params, $v_{max}$ = running max of $v$ (accumulator dtype);
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
    r"""Adam's scaling: momentum (EMA of $g$) over RMS (EMA of $g²$), both bias-corrected.

    $β₁$ = `b1` $∈ [0, 1)$, $β₂$ = `b2` $∈ [0, 1)$, $ε$ = `eps` $> 0$ (outside the
    square root):

    $$ m_t = \operatorname{EMA}(m_{t−1}, g_t; β₁), \qquad v_t = \operatorname{EMA}(v_{t−1}, g_t²; β₂) $$
    $$ m̂_t = \frac{m_t}{1 − β₁^t} \quad \text{(nesterov=False)}, \qquad m̂_t = \frac{β₁ m_t}{1 − β₁^{t+1}} + \frac{(1 − β₁) g_t}{1 − β₁^t} \quad \text{(nesterov=True: NAdam)} $$
    $$ v̂_t = \frac{v_t}{1 − β₂^t} \quad \text{(amsgrad=False)}, \qquad v̂_t = \frac{v^{max}_t}{1 − β₂^t}, \; v^{max}_t = \max(v^{max}_{t−1}, v_t) \quad \text{(amsgrad=True: AMSGrad)} $$
    $$ d_t = m̂_t / (√v̂_t + ε) $$

    The corrections undo the bias of averages started at zero, so the first
    direction is $d_1 = g_1/(|g_1| + ε) ≈ \operatorname{sign}(g_1)$. NAdam's $m̂$
    mixes the next step's bias-corrected momentum with the current gradient
    (Nesterov's look-ahead applied to the EMA); Dozat's momentum schedule $μ_t$
    is held constant at $β₁$ (as in Keras's default). AMSGrad's denominator never
    shrinks; the paper has no bias correction, and like PyTorch we keep Adam's,
    applied after the max so the max is over the raw EMA as in the paper.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015;
    Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop, 2016;
    Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", 2018.
    """
    fn = label("scale_by_adam")
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
        c1, c2, c1_next = bias_correction(b1, t), bias_correction(b2, t), bias_correction(b1, t + 1)

        def step(g, mu, nu, nu_max):
            mu, nu = ema(mu, g, b1), ema(nu, g * g, b2)
            if amsgrad:
                nu_max = jnp.maximum(nu_max, nu)
            m_hat = b1 * mu / c1_next + (1 - b1) * g / c1 if nesterov else mu / c1
            v_hat = (nu_max if amsgrad else nu) / c2
            return m_hat / (jnp.sqrt(v_hat) + eps), {"mu": mu, "nu": nu, "nu_max": nu_max}

        d, new = lift(fn, step, grads, {"mu": state.mu, "nu": state.nu, "nu_max": state.nu_max})
        return d, ScaleByAdamState(increment(state.count), **new)

    return Optimizer(init, update)


class ScaleByAdamaxState(NamedTuple):
    """State of `scale_by_adamax`.

    Fields:
      count:    int32[], updates so far ($t − 1$ during the next update).
      mu:       pytree like params, $m$ = EMA of $g$ (accumulator dtype).
      inf_norm: pytree like params, $u^∞$ = decaying max of $|g|$ (accumulator dtype).
    """

    count: jax.Array
    mu: Any
    inf_norm: Any


def scale_by_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    r"""Adamax's scaling: Adam with the EMA of $g²$ replaced by an exponentially weighted ∞-norm.

    $β₁$ = `b1`, $β₂$ = `b2` $∈ [0, 1)$, $ε$ = `eps` $> 0$:

    $$ m_t = \operatorname{EMA}(m_{t−1}, g_t; β₁), \qquad u^∞_t = \max(β₂ u^∞_{t−1}, |g_t|) $$
    $$ d_t = \frac{m_t / (1 − β₁^t)}{u^∞_t + ε} $$

    $u^∞$ is the limit $p → ∞$ of $(\text{EMA of } |g|^p)^{1/p}$; it needs no bias
    correction. $ε$ is not in the paper; it keeps $0/0$ away where $g$ has always
    been 0.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015
    (Section 7.1).
    """
    fn = label("scale_by_adamax")
    b1, b2, eps = check_hyperparams(fn, b1=b1, b2=b2, eps=eps)

    def init(params: Params) -> ScaleByAdamaxState:
        check_float(fn, params, "parameter")
        return ScaleByAdamaxState(zero_count(), zeros_acc(params), zeros_acc(params))

    def update(grads: Updates, state: ScaleByAdamaxState, params: Params = None):
        check_state(fn, state, ScaleByAdamaxState)
        c1 = bias_correction(b1, step_number(state.count))

        def step(g, mu, inf_norm):
            mu = ema(mu, g, b1)
            inf_norm = jnp.maximum(b2 * inf_norm, jnp.abs(g))
            return (mu / c1) / (inf_norm + eps), {"mu": mu, "inf_norm": inf_norm}

        d, new = lift(fn, step, grads, {"mu": state.mu, "inf_norm": state.inf_norm})
        return d, ScaleByAdamaxState(increment(state.count), **new)

    return Optimizer(init, update)


class ScaleByRadamState(NamedTuple):
    """State of `scale_by_radam`.

    Fields:
      count: int32[], updates so far ($t − 1$ during the next update).
      mu:    pytree like params, $m$ = EMA of $g$ (accumulator dtype).
      nu:    pytree like params, $v$ = EMA of $g²$ (accumulator dtype).
    """

    count: jax.Array
    mu: Any
    nu: Any


def scale_by_radam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, threshold: float = 5.0
) -> Optimizer:
    r"""Rectified Adam's scaling: Adam's adaptive step only once its variance is tractable.

    $β₁$ = `b1`, $β₂$ = `b2` $∈ [0, 1)$, $ε$ = `eps` $> 0$, $ρ_{thr}$ = `threshold`:

    $$ m_t = \operatorname{EMA}(m_{t−1}, g_t; β₁), \qquad v_t = \operatorname{EMA}(v_{t−1}, g_t²; β₂), \qquad m̂_t = m_t / (1 − β₁^t) $$
    $$ ρ_∞ = \frac{2}{1 − β₂} − 1, \qquad ρ_t = ρ_∞ − \frac{2 t β₂^t}{1 − β₂^t} $$
    $$ r_t = \sqrt{\frac{(ρ_t − 4)(ρ_t − 2) ρ_∞}{(ρ_∞ − 4)(ρ_∞ − 2) ρ_t}} $$
    $$ d_t = r_t \frac{m̂_t}{√(v_t / (1 − β₂^t)) + ε} \quad (ρ_t > ρ_{thr}), \qquad d_t = m̂_t \quad \text{(otherwise)} $$

    $ρ_t$ is the length of the simple moving average that the EMA $v_t$
    approximates; while it is short the variance of the adaptive step is
    large (unbounded for $ρ_t ≤ 4$), so RAdam takes momentum-SGD steps, then
    rectifies Adam's step by $r_t → 1$. The paper switches at $ρ_t > 4$;
    `threshold` = 5 follows PyTorch's and optax's implementations.

    References: Liu, Jiang, He, Chen, Liu, Gao & Han, "On the Variance of the
    Adaptive Learning Rate and Beyond", 2020.
    """
    fn = label("scale_by_radam")
    b1, b2, eps, threshold = check_hyperparams(fn, b1=b1, b2=b2, eps=eps, threshold=threshold)

    def init(params: Params) -> ScaleByRadamState:
        check_float(fn, params, "parameter")
        return ScaleByRadamState(zero_count(), zeros_acc(params), zeros_acc(params))

    def update(grads: Updates, state: ScaleByRadamState, params: Params = None):
        check_state(fn, state, ScaleByRadamState)
        t = step_number(state.count)
        c1, c2 = bias_correction(b1, t), bias_correction(b2, t)
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho = rho_inf - 2.0 * t * (1.0 - c2) / c2
        ratio = (rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)
        rectified = rho > threshold
        r = jnp.sqrt(jnp.where(rectified, ratio, 1.0))

        def step(g, mu, nu):
            mu, nu = ema(mu, g, b1), ema(nu, g * g, b2)
            m_hat = mu / c1
            d = jnp.where(rectified, r * m_hat / (jnp.sqrt(nu / c2) + eps), m_hat)
            return d, {"mu": mu, "nu": nu}

        d, new = lift(fn, step, grads, {"mu": state.mu, "nu": state.nu})
        return d, ScaleByRadamState(increment(state.count), **new)

    return Optimizer(init, update)


class ScaleByBeliefState(NamedTuple):
    """State of `scale_by_belief`.

    Fields:
      count: int32[], updates so far ($t − 1$ during the next update).
      mu:    pytree like params, $m$ = EMA of $g$ (accumulator dtype).
      nu:    pytree like params, $s$ = EMA of $(g − m)²$ plus $ε$ (accumulator dtype).
    """

    count: jax.Array
    mu: Any
    nu: Any


def scale_by_belief(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16) -> Optimizer:
    r"""AdaBelief's scaling: Adam with $g²$ replaced by the squared surprise $(g − m)²$.

    $β₁$ = `b1`, $β₂$ = `b2` $∈ [0, 1)$, $ε$ = `eps` $> 0$ (added to $s$ every
    step, and outside the square root):

    $$ m_t = \operatorname{EMA}(m_{t−1}, g_t; β₁), \qquad s_t = \operatorname{EMA}(s_{t−1}, (g_t − m_t)²; β₂) + ε $$
    $$ d_t = \frac{m_t / (1 − β₁^t)}{√(s_t / (1 − β₂^t)) + ε} $$

    $s$ is an EMA of how far the gradient falls from its prediction $m$ (the
    "belief"): where gradients agree with the momentum the step is large, where
    they scatter it is small. With $g_t = m_t$ throughout, $s$ holds only the
    added $ε$s.

    References: Zhuang, Tang, Ding, Tatikonda, Dvornek, Papademetris & Duncan,
    "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
    Gradients", 2020.
    """
    fn = label("scale_by_belief")
    b1, b2, eps = check_hyperparams(fn, b1=b1, b2=b2, eps=eps)

    def init(params: Params) -> ScaleByBeliefState:
        check_float(fn, params, "parameter")
        return ScaleByBeliefState(zero_count(), zeros_acc(params), zeros_acc(params))

    def update(grads: Updates, state: ScaleByBeliefState, params: Params = None):
        check_state(fn, state, ScaleByBeliefState)
        t = step_number(state.count)
        c1, c2 = bias_correction(b1, t), bias_correction(b2, t)

        def step(g, mu, nu):
            mu = ema(mu, g, b1)
            nu = ema(nu, (g - mu) * (g - mu), b2) + eps
            return (mu / c1) / (jnp.sqrt(nu / c2) + eps), {"mu": mu, "nu": nu}

        d, new = lift(fn, step, grads, {"mu": state.mu, "nu": state.nu})
        return d, ScaleByBeliefState(increment(state.count), **new)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Lion
# --------------------------------------------------------------------------


class ScaleByLionState(NamedTuple):
    """State of `scale_by_lion`.

    Fields:
      mu: pytree like params, $m$ = EMA of $g$ with rate $β₂$ (accumulator dtype).
    """

    mu: Any


def scale_by_lion(b1: float = 0.9, b2: float = 0.99) -> Optimizer:
    r"""Lion's scaling: the sign of an interpolation between momentum and gradient.

    $β₁$ = `b1`, $β₂$ = `b2` $∈ [0, 1)$:

    $$ d_t = \operatorname{sign}(\operatorname{EMA}(m_{t−1}, g_t; β₁)), \qquad m_t = \operatorname{EMA}(m_{t−1}, g_t; β₂) $$

    Every element of $d$ is $±1$ (or 0); $m$ is an EMA of $g$ that the direction
    reads with a different rate ($β₁$) than it is stored with ($β₂$).

    References: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """
    fn = label("scale_by_lion")
    b1, b2 = check_hyperparams(fn, b1=b1, b2=b2)

    def init(params: Params) -> ScaleByLionState:
        check_float(fn, params, "parameter")
        return ScaleByLionState(zeros_acc(params))

    def step(g, mu):
        return jnp.sign(ema(mu, g, b1)), {"mu": ema(mu, g, b2)}

    def update(grads: Updates, state: ScaleByLionState, params: Params = None):
        check_state(fn, state, ScaleByLionState)
        d, new = lift(fn, step, grads, state._asdict())
        return d, ScaleByLionState(**new)

    return Optimizer(init, update)


__all__ = public_names(globals(), __name__)
