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

from typing import Any

import jax.numpy as jnp

from fdl.optim.base import Optimizer, ScalarOrSchedule, chain, public_names
from fdl.optim.blocks import (
    clip_by_block_rms,
    scale_by_factored_rms,
    scale_by_param_block_rms,
    scale_by_trust_ratio,
)
from fdl.optim.methods import (
    scale_by_adadelta,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_adamax,
    scale_by_belief,
    scale_by_ema_momentum,
    scale_by_lion,
    scale_by_radam,
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


@register
def radam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    threshold: float = 5.0,
) -> Optimizer:
    r"""RAdam: Adam whose adaptive step is switched on and rectified as its variance settles.

    $η_t$ = `learning_rate`, $β₁$ = `b1`, $β₂$ = `b2`, $ε$ = `eps`,
    $ρ_{thr}$ = `threshold` (see `scale_by_radam` for $ρ_t$ and $r_t$):

    $$ m̂_t = m_t / (1 − β₁^t), \qquad v̂_t = v_t / (1 − β₂^t) $$
    $$ u_t = −η_t r_t m̂_t / (√v̂_t + ε) \quad (ρ_t > ρ_{thr}), \qquad u_t = −η_t m̂_t \quad \text{(otherwise)} $$

    With the defaults the first five steps are momentum SGD, which replaces
    Adam's warm-up. `chain(scale_by_radam(β₁, β₂, ε, threshold=ρ_thr),
    scale_by_learning_rate(η))`.

    References: Liu et al., "On the Variance of the Adaptive Learning Rate and
    Beyond", 2020.
    """
    return chain(
        scale_by_radam(b1, b2, eps, threshold=threshold), scale_by_learning_rate(learning_rate)
    )


@register
def adabelief(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16
) -> Optimizer:
    r"""AdaBelief: Adam that divides by the spread of the gradient around its EMA.

    $η_t$ = `learning_rate`, $β₁$ = `b1`, $β₂$ = `b2` $∈ [0, 1)$, $ε$ = `eps` $> 0$:

    $$ m_t = β₁ m_{t−1} + (1 − β₁) g_t, \qquad s_t = β₂ s_{t−1} + (1 − β₂)(g_t − m_t)² + ε $$
    $$ u_t = −η_t \frac{m_t / (1 − β₁^t)}{√(s_t / (1 − β₂^t)) + ε} $$

    `chain(scale_by_belief(β₁, β₂, ε), scale_by_learning_rate(η))`.

    References: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the
    Belief in Observed Gradients", 2020.
    """
    return chain(scale_by_belief(b1, b2, eps), scale_by_learning_rate(learning_rate))


@register
def lamb(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    mask: Mask = None,
) -> Optimizer:
    r"""LAMB: AdamW's direction, rescaled per layer to the layer's norm (a trust ratio).

    $η_t$ = `learning_rate`, $β₁$ = `b1`, $β₂$ = `b2`, $ε$ = `eps`,
    $λ$ = `weight_decay`; for each leaf (layer) $θ$:

    $$ r_t = \frac{m_t / (1 − β₁^t)}{√(v_t / (1 − β₂^t)) + ε} + λ θ_{t−1} $$
    $$ u_t = −η_t \frac{‖θ_{t−1}‖}{‖r_t‖} r_t \qquad (\text{ratio } 1 \text{ where either norm is } 0) $$

    with $m$, $v$ Adam's moments. Every layer moves by $η_t ‖θ‖$, so one
    learning rate suits layers of very different gradient scales (batches of
    tens of thousands). `mask` selects the leaves that decay.
    `chain(scale_by_adam(β₁, β₂, ε), add_decayed_weights(λ, mask),
    scale_by_trust_ratio(), scale_by_learning_rate(η))`.

    References: You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel,
    Keutzer & Hsieh, "Large Batch Optimization for Deep Learning: Training BERT
    in 76 minutes", 2020.
    """
    return chain(
        scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(), scale_by_learning_rate(learning_rate),
    )


@register
def lars(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    *,
    nesterov: bool = False,
    mask: Mask = None,
) -> Optimizer:
    r"""LARS: SGD with momentum on gradients rescaled per layer by a trust ratio.

    $η_t$ = `learning_rate`, $μ$ = `momentum`, $λ$ = `weight_decay`,
    $c$ = `trust_coefficient`, $ε$ = `eps` $≥ 0$; for each leaf (layer) $θ$:

    $$ a_t = g_t + λ θ_{t−1}, \qquad a'_t = \frac{c ‖θ_{t−1}‖}{‖a_t‖ + ε} a_t \quad (\text{ratio } 1 \text{ where either norm is } 0) $$
    $$ v_t = μ v_{t−1} + a'_t, \qquad u_t = −η_t v_t $$

    (with `nesterov=True`, $u_t = −η_t (a'_t + μ v_t)$). The paper's local
    learning rate is $c‖θ‖/(‖g‖ + λ‖θ‖)$; we divide by $‖g + λθ‖$ instead (as
    optax does), which is the same where $g$ and $θ$ are aligned and never
    larger. `mask` selects the leaves that decay *and* are rescaled (commonly
    all but biases and normalisation scales).
    `chain(add_decayed_weights(λ, mask), scale_by_trust_ratio(c, ε, mask=mask),
    trace(μ, nesterov=…), scale_by_learning_rate(η))`.

    References: You, Gitman & Ginsburg, "Large Batch Training of Convolutional
    Networks", 2017.
    """
    return chain(
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(trust_coefficient, eps, mask=mask),
        trace(momentum, nesterov=nesterov), scale_by_learning_rate(learning_rate),
    )


def _relative_step(count: Any) -> Any:
    r"""Adafactor's $ρ_t = \min(10^{−2}, 1/√t)$ at `count` $= t − 1$."""
    return jnp.minimum(1e-2, 1.0 / jnp.sqrt(count + 1.0))


@register
def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    decay_exponent: float = 0.8,
    eps: float = 1e-30,
    clipping_threshold: float = 1.0,
    min_scale: float = 1e-3,
    weight_decay: float = 0.0,
    *,
    b1: float | None = None,
    multiply_by_parameter_scale: bool = True,
    min_dim_size_to_factor: int = 128,
    mask: Mask = None,
) -> Optimizer:
    r"""Adafactor: factored second moments, update clipping and a relative step size.

    $ρ_t$ = `learning_rate`, or $\min(10^{−2}, 1/√t)$ when it is None (the
    paper's relative step); $d$ = `clipping_threshold`, $ε₂$ = `min_scale`,
    $λ$ = `weight_decay`, $β₁$ = `b1` (None: no momentum):

    $$ U_t = g_t / √V̂_t \quad \text{(factored for matrices, see } \texttt{scale\_by\_factored\_rms}\text{)} $$
    $$ Û_t = U_t / \max(1, \operatorname{RMS}(U_t)/d), \qquad M_t = β₁ M_{t−1} + (1 − β₁) Û_t \quad (\text{else } M_t = Û_t) $$
    $$ α_t = \max(ε₂, \operatorname{RMS}(θ_{t−1})) \, ρ_t \quad \text{(multiply\_by\_parameter\_scale)}, \qquad α_t = ρ_t \quad \text{(otherwise)} $$
    $$ u_t = −α_t M_t − ρ_t λ θ_{t−1} $$

    RMS is over each leaf. Second moments of an $n×m$ matrix cost $n + m$
    numbers, not $nm$. `chain(scale_by_factored_rms(c, ε₁,
    min_dim_size_to_factor), clip_by_block_rms(d), [scale_by_ema_momentum(β₁)],
    [scale_by_param_block_rms(ε₂)], add_decayed_weights(λ, mask),
    scale_by_learning_rate(ρ))`.

    References: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with
    Sublinear Memory Cost", 2018.
    """
    return chain(
        scale_by_factored_rms(decay_exponent, eps, min_dim_size_to_factor),
        clip_by_block_rms(clipping_threshold),
        *([] if b1 is None else [scale_by_ema_momentum(b1)]),
        *([scale_by_param_block_rms(min_scale)] if multiply_by_parameter_scale else []),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(_relative_step if learning_rate is None else learning_rate),
    )


__all__ = public_names(globals(), __name__)
