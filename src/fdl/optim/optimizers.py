r"""The named optimizers: each is a short chain of a method and the learning-rate step.

The notation is that of `fdl.optim.methods` ($g_t$ the gradient at step $t$,
$d_t$ a method's direction, element-wise operations), plus: $η_t$ is the
learning rate applied at step $t$ (the float given, or `schedule(count)` with
`count` $= t − 1$), $θ$ the parameter, and $u_t$ the update returned;
`apply_updates` sets $θ_t = θ_{t−1} + u_t$. Every named optimizer's state is a
`ChainState` holding its transforms' states in order, e.g.
`adam(…).init(params).states` is `(ScaleByAdamState, ScaleByLearningRateState)`.

Each factory is registered (`fdl.optim.registry.register`): its transforms
validate the hyperparameters in the optimizer's name, and `update` checks its
inputs at trace time: float grads, grads shaped like the params (leaf path and
both shapes on a mismatch), and a state made by this optimizer's `init` (a
`TypeError` naming both optimizers otherwise).
"""

from __future__ import annotations

from fdl.optim.base import Optimizer, ScalarOrSchedule, chain, public_names
from fdl.optim.methods import (
    scale_by_adadelta,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_adamax,
    scale_by_ema_momentum,
    scale_by_lion,
    scale_by_rms,
    trace,
)
from fdl.optim.registry import register
from fdl.optim.transforms import Mask, add_decayed_weights, scale_by_learning_rate

# --------------------------------------------------------------------------
# Gradient descent and momentum
# --------------------------------------------------------------------------


@register
def sgd(
    learning_rate: ScalarOrSchedule, momentum: float = 0.0, *, nesterov: bool = False
) -> Optimizer:
    r"""Stochastic gradient descent, with momentum in the accumulation form.

    $η_t$ = `learning_rate`, $μ$ = `momentum` $∈ [0, 1)$, $v$ = velocity (shape of $θ$):

    $$ v_t = μ v_{t−1} + g_t $$
    $$ u_t = −η_t v_t \quad \text{(nesterov=False)}, \qquad u_t = −η_t (g_t + μ v_t) \quad \text{(nesterov=True)} $$

    With $μ = 0$ this is plain gradient descent, $u_t = −η_t g_t$, and no
    velocity is stored. `chain(trace(μ, nesterov=…), scale_by_learning_rate(η))`;
    see `trace` for the relation to Sutskever et al.'s form.

    References: Polyak, "Some methods of speeding up the convergence of iteration
    methods", 1964; Sutskever, Martens, Dahl & Hinton, "On the importance of
    initialization and momentum in deep learning", 2013.
    """
    return chain(trace(momentum, nesterov=nesterov), scale_by_learning_rate(learning_rate))


@register
def ema_momentum(learning_rate: ScalarOrSchedule, beta: float = 0.9) -> Optimizer:
    r"""Gradient descent with momentum as an exponential moving average of gradients.

    $η_t$ = `learning_rate`, $β$ = `beta` $∈ [0, 1)$, $v$ = velocity (shape of $θ$):

    $$ v_t = β v_{t−1} + (1 − β) g_t, \qquad u_t = −η_t v_t $$

    With $w = v/(1 − β)$, $w_t = β w_{t−1} + g_t$ and $u_t = −η_t (1 − β) w_t$, so
    `ema_momentum(η, beta=β)` takes exactly the steps of
    `sgd(η·(1 − β), momentum=β)`: the same method, the learning rate rescaled
    by $1 − β$. `chain(scale_by_ema_momentum(β), scale_by_learning_rate(η))`.

    References: Ng, "Gradient descent with momentum", Improving Deep Neural
    Networks (deeplearning.ai), 2017; Polyak, 1964.
    """
    return chain(scale_by_ema_momentum(beta), scale_by_learning_rate(learning_rate))


# --------------------------------------------------------------------------
# Adaptive methods
# --------------------------------------------------------------------------


@register
def adagrad(
    learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.0, eps: float = 1e-10
) -> Optimizer:
    r"""Adagrad: divide by the root of the running *sum* of squared gradients.

    $η_t$ = `learning_rate`, $G_0$ = `initial_accumulator_value` (every element),
    $ε$ = `eps` $> 0$ (outside the square root):

    $$ G_t = G_{t−1} + g_t², \qquad u_t = −η_t g_t / (√G_t + ε) $$

    `chain(scale_by_adagrad(G_0, ε), scale_by_learning_rate(η))`.

    References: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", 2011.
    """
    return chain(
        scale_by_adagrad(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate)
    )


@register
def adadelta(
    learning_rate: ScalarOrSchedule = 1.0, rho: float = 0.9, eps: float = 1e-6
) -> Optimizer:
    r"""Adadelta: moving averages of squared gradients *and* squared steps.

    $η_t$ = `learning_rate` (1 in the paper), $ρ$ = `rho` $∈ [0, 1)$, $ε$ = `eps`
    $> 0$ (inside both square roots):

    $$ E[g²]_t = ρ E[g²]_{t−1} + (1 − ρ) g_t² $$
    $$ Δ_t = −\frac{√(E[Δ²]_{t−1} + ε)}{√(E[g²]_t + ε)} g_t, \qquad E[Δ²]_t = ρ E[Δ²]_{t−1} + (1 − ρ) Δ_t² $$
    $$ u_t = η_t Δ_t $$

    `chain(scale_by_adadelta(ρ, ε), scale_by_learning_rate(η))`.

    References: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """
    return chain(scale_by_adadelta(rho, eps), scale_by_learning_rate(learning_rate))


@register
def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    *,
    centered: bool = False,
    momentum: float = 0.0,
) -> Optimizer:
    r"""RMSProp: divide the gradient by a moving root-mean-square of recent gradients.

    $η_t$ = `learning_rate`, $ρ$ = `decay` $∈ [0, 1)$, $ε$ = `eps` $> 0$,
    $μ$ = `momentum` $∈ [0, 1)$:

    $$ ν_t = ρ ν_{t−1} + (1 − ρ) g_t², \qquad m̄_t = ρ m̄_{t−1} + (1 − ρ) g_t \quad \text{(centered only)} $$
    $$ s_t = ν_t \quad \text{(centered=False)}, \qquad s_t = \max(ν_t − m̄_t², 0) \quad \text{(centered=True)} $$
    $$ d_t = g_t / (√s_t + ε) $$
    $$ b_t = μ b_{t−1} + d_t, \; u_t = −η_t b_t \quad (μ > 0), \qquad u_t = −η_t d_t \quad (μ = 0) $$

    `chain(scale_by_rms(ρ, ε, centered=…), trace(μ), scale_by_learning_rate(η))`:
    the momentum is `trace` applied to RMSProp's direction.

    References: Tieleman & Hinton, "Lecture 6.5 — RMSProp", COURSERA: Neural
    Networks for Machine Learning, 2012; Graves, "Generating Sequences With
    Recurrent Neural Networks", 2013 (centered form and momentum).
    """
    return chain(
        scale_by_rms(decay, eps, centered=centered), trace(momentum),
        scale_by_learning_rate(learning_rate),
    )


# --------------------------------------------------------------------------
# Adam and its family
# --------------------------------------------------------------------------


@register
def adam(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    r"""Adam: momentum (EMA of $g$) over RMSProp (EMA of $g²$), both bias-corrected.

    $η_t$ = `learning_rate`, $β₁$ = `b1` $∈ [0, 1)$, $β₂$ = `b2` $∈ [0, 1)$,
    $ε$ = `eps` $> 0$ (outside the square root):

    $$ m_t = β₁ m_{t−1} + (1 − β₁) g_t, \qquad v_t = β₂ v_{t−1} + (1 − β₂) g_t² $$
    $$ m̂_t = m_t / (1 − β₁^t), \qquad v̂_t = v_t / (1 − β₂^t) $$
    $$ u_t = −η_t m̂_t / (√v̂_t + ε) $$

    The first step is $u_1 = −η_1 g_1/(|g_1| + ε) ≈ −η_1 \operatorname{sign}(g_1)$.
    `chain(scale_by_adam(β₁, β₂, ε), scale_by_learning_rate(η))`.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015.
    """
    return chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(learning_rate))


@register
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    *,
    mask: Mask = None,
) -> Optimizer:
    r"""AdamW: Adam with weight decay decoupled from the gradient.

    $η_t$ = `learning_rate`, $β₁$ = `b1`, $β₂$ = `b2`, $ε$ = `eps` as in `adam`,
    $λ$ = `weight_decay` $≥ 0$, $θ_{t−1}$ = the params passed to `update`:

    $$ m_t = β₁ m_{t−1} + (1 − β₁) g_t, \qquad v_t = β₂ v_{t−1} + (1 − β₂) g_t² $$
    $$ m̂_t = m_t / (1 − β₁^t), \qquad v̂_t = v_t / (1 − β₂^t) $$
    $$ u_t = −η_t \left( m̂_t / (√v̂_t + ε) + λ θ_{t−1} \right) $$

    The decay $λθ$ bypasses the moving averages, so it is not rescaled by $√v̂$
    (unlike adding $λθ$ to $g$, i.e. L2 regularisation). `mask` selects the
    leaves that decay (see `add_decayed_weights`). `update` needs `params` when
    $λ > 0$. `chain(scale_by_adam(β₁, β₂, ε), add_decayed_weights(λ, mask),
    scale_by_learning_rate(η))`.

    References: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """
    return chain(
        scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@register
def adamax(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    r"""Adamax: Adam with the EMA of $g²$ replaced by an exponentially weighted ∞-norm.

    $η_t$ = `learning_rate` (the paper suggests 0.002), $β₁$ = `b1`, $β₂$ = `b2`
    $∈ [0, 1)$, $ε$ = `eps` $> 0$:

    $$ m_t = β₁ m_{t−1} + (1 − β₁) g_t, \qquad u^∞_t = \max(β₂ u^∞_{t−1}, |g_t|) $$
    $$ u_t = −\frac{η_t}{1 − β₁^t} \, \frac{m_t}{u^∞_t + ε} $$

    `chain(scale_by_adamax(β₁, β₂, ε), scale_by_learning_rate(η))`.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015
    (Section 7.1).
    """
    return chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))


@register
def nadam(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    r"""NAdam: Adam with Nesterov momentum (the look-ahead folded into $m̂$).

    $η_t$ = `learning_rate`, $β₁$ = `b1`, $β₂$ = `b2` $∈ [0, 1)$, $ε$ = `eps` $> 0$:

    $$ m_t = β₁ m_{t−1} + (1 − β₁) g_t, \qquad v_t = β₂ v_{t−1} + (1 − β₂) g_t² $$
    $$ m̂_t = \frac{β₁ m_t}{1 − β₁^{t+1}} + \frac{(1 − β₁) g_t}{1 − β₁^t}, \qquad v̂_t = v_t / (1 − β₂^t) $$
    $$ u_t = −η_t m̂_t / (√v̂_t + ε) $$

    `chain(scale_by_adam(β₁, β₂, ε, nesterov=True), scale_by_learning_rate(η))`.

    References: Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop, 2016.
    """
    return chain(scale_by_adam(b1, b2, eps, nesterov=True), scale_by_learning_rate(learning_rate))


@register
def amsgrad(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    r"""AMSGrad: Adam whose denominator never shrinks (a running max of the EMA of $g²$).

    $η_t$ = `learning_rate`, $β₁$ = `b1`, $β₂$ = `b2` $∈ [0, 1)$, $ε$ = `eps` $> 0$:

    $$ m_t = β₁ m_{t−1} + (1 − β₁) g_t, \qquad v_t = β₂ v_{t−1} + (1 − β₂) g_t² $$
    $$ v^{max}_t = \max(v^{max}_{t−1}, v_t) $$
    $$ u_t = −η_t \frac{m_t / (1 − β₁^t)}{√(v^{max}_t / (1 − β₂^t)) + ε} $$

    `chain(scale_by_adam(β₁, β₂, ε, amsgrad=True), scale_by_learning_rate(η))`.

    References: Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", 2018.
    """
    return chain(scale_by_adam(b1, b2, eps, amsgrad=True), scale_by_learning_rate(learning_rate))


@register
def lion(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 0.0,
    *,
    mask: Mask = None,
) -> Optimizer:
    r"""Lion: the sign of an interpolation between momentum and gradient.

    $η_t$ = `learning_rate` (typically 3–10× smaller than Adam's), $β₁$ = `b1`,
    $β₂$ = `b2` $∈ [0, 1)$, $λ$ = `weight_decay` $≥ 0$ (decoupled, as in AdamW),
    $θ_{t−1}$ = the params passed to `update`:

    $$ c_t = β₁ m_{t−1} + (1 − β₁) g_t $$
    $$ u_t = −η_t \left( \operatorname{sign}(c_t) + λ θ_{t−1} \right), \qquad m_t = β₂ m_{t−1} + (1 − β₂) g_t $$

    Every element moves by exactly $η_t$ (before decay). `mask` selects the
    leaves that decay, as in `adamw`. `chain(scale_by_lion(β₁, β₂),
    add_decayed_weights(λ, mask), scale_by_learning_rate(η))`.

    References: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """
    return chain(
        scale_by_lion(b1, b2), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


__all__ = public_names(globals(), __name__)
