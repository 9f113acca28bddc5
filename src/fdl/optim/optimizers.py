"""The named optimizers: each is a short chain of a method and the learning-rate step.

The notation is that of `fdl.optim.methods` (g_t the gradient at step t, d_t a
method's direction, element-wise operations), plus: η_t is the learning rate
applied at step t (the float given, or `schedule(count)` with `count = t − 1`),
θ the parameter, and u_t the update returned; `apply_updates` sets
θ_t = θ_{t−1} + u_t. Every named optimizer's state is a `ChainState` holding its
transforms' states in order, e.g. `adam(…).init(params).states` is
`(ScaleByAdamState, ScaleByLearningRateState)`.

`update` checks its inputs at trace time: float grads, grads shaped like the
params (leaf path and both shapes on a mismatch), and a state made by this
optimizer's `init` (a `TypeError` naming both optimizers otherwise).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fdl.optim.base import (
    ChainState,
    ForeignStateError,
    Optimizer,
    Params,
    ScalarOrSchedule,
    Updates,
    chain,
    check_float,
    check_hyperparams,
    check_like,
    is_static_zero,
)
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
from fdl.optim.transforms import Mask, add_decayed_weights, resolve_mask, scale_by_learning_rate


def named_chain(name: str, *transforms: Optimizer, mask: Mask = None) -> Optimizer:
    """`chain(*transforms)` whose `init` and `update` check their inputs under `name`.

    `init` checks that the params are float arrays (and the weight-decay `mask`
    fits them); `update` checks the grads against the params and turns a state
    from another optimizer into a `TypeError` that names both optimizers.
    """
    inner = chain(*transforms)

    def init(params: Params) -> ChainState:
        check_float(name, params, "parameter")
        resolve_mask(name, mask, params)
        return inner.init(params)

    def update(grads: Updates, state: ChainState, params: Params = None):
        check_float(name, grads, "gradient")
        if params is not None:
            check_like(name, grads, params, "the params")
        try:
            return inner.update(grads, state, params)
        except ForeignStateError as error:
            raise TypeError(_foreign_state_message(name, inner, state)) from error

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Gradient descent and momentum
# --------------------------------------------------------------------------


def sgd(
    learning_rate: ScalarOrSchedule, momentum: float = 0.0, *, nesterov: bool = False
) -> Optimizer:
    """Stochastic gradient descent, with momentum in the accumulation form.

    η_t = `learning_rate`, μ = `momentum` ∈ [0, 1), v = velocity (shape of θ):

        v_t = μ v_{t−1} + g_t
        u_t = −η_t v_t                       (nesterov=False)
        u_t = −η_t (g_t + μ v_t)             (nesterov=True)

    With μ = 0 this is plain gradient descent, u_t = −η_t g_t, and no velocity
    is stored. `chain(trace(μ, nesterov=…), scale_by_learning_rate(η))`; see
    `trace` for the relation to Sutskever et al.'s form.

    References: Polyak, "Some methods of speeding up the convergence of iteration
    methods", 1964; Sutskever, Martens, Dahl & Hinton, "On the importance of
    initialization and momentum in deep learning", 2013.
    """
    fn = "sgd"
    lr, momentum, nesterov = check_hyperparams(
        fn, learning_rate=learning_rate, momentum=momentum, nesterov=nesterov
    )
    if nesterov and is_static_zero(momentum):
        raise ValueError(f"{fn}: nesterov=True needs momentum > 0, got momentum={momentum!r}")
    return named_chain(fn, trace(momentum, nesterov=nesterov), scale_by_learning_rate(lr))


def ema_momentum(learning_rate: ScalarOrSchedule, beta: float = 0.9) -> Optimizer:
    """Gradient descent with momentum as an exponential moving average of gradients.

    η_t = `learning_rate`, β = `beta` ∈ [0, 1), v = velocity (shape of θ):

        v_t = β v_{t−1} + (1 − β) g_t
        u_t = −η_t v_t

    With w = v/(1 − β), w_t = β w_{t−1} + g_t and u_t = −η_t (1 − β) w_t, so
    `ema_momentum(η, beta=β)` takes exactly the steps of
    `sgd(η·(1 − β), momentum=β)`: the same method, the learning rate rescaled
    by 1 − β. `chain(scale_by_ema_momentum(β), scale_by_learning_rate(η))`.

    References: Ng, "Gradient descent with momentum", Improving Deep Neural
    Networks (deeplearning.ai), 2017; Polyak, 1964.
    """
    fn = "ema_momentum"
    lr, beta = check_hyperparams(fn, learning_rate=learning_rate, beta=beta)
    return named_chain(fn, scale_by_ema_momentum(beta), scale_by_learning_rate(lr))


# --------------------------------------------------------------------------
# Adaptive methods
# --------------------------------------------------------------------------


def adagrad(
    learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.0, eps: float = 1e-10
) -> Optimizer:
    """Adagrad: divide by the root of the running *sum* of squared gradients.

    η_t = `learning_rate`, G_0 = `initial_accumulator_value` (every element),
    ε = `eps` > 0 (outside the square root):

        G_t = G_{t−1} + g_t²
        u_t = −η_t g_t / (√G_t + ε)

    `chain(scale_by_adagrad(G_0, ε), scale_by_learning_rate(η))`.

    References: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", 2011.
    """
    fn = "adagrad"
    lr, initial, eps = check_hyperparams(
        fn, learning_rate=learning_rate, initial_accumulator_value=initial_accumulator_value,
        eps=eps,
    )
    return named_chain(fn, scale_by_adagrad(initial, eps), scale_by_learning_rate(lr))


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

    `chain(scale_by_adadelta(ρ, ε), scale_by_learning_rate(η))`.

    References: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.
    """
    fn = "adadelta"
    lr, rho, eps = check_hyperparams(fn, learning_rate=learning_rate, rho=rho, eps=eps)
    return named_chain(fn, scale_by_adadelta(rho, eps), scale_by_learning_rate(lr))


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

    `chain(scale_by_rms(ρ, ε, centered=…), trace(μ), scale_by_learning_rate(η))`:
    the momentum is `trace` applied to RMSProp's direction.

    References: Tieleman & Hinton, "Lecture 6.5 — RMSProp", COURSERA: Neural
    Networks for Machine Learning, 2012; Graves, "Generating Sequences With
    Recurrent Neural Networks", 2013 (centered form and momentum).
    """
    fn = "rmsprop"
    lr, decay, eps, centered, momentum = check_hyperparams(
        fn, learning_rate=learning_rate, decay=decay, eps=eps, centered=centered,
        momentum=momentum,
    )
    return named_chain(
        fn, scale_by_rms(decay, eps, centered=centered), trace(momentum),
        scale_by_learning_rate(lr),
    )


# --------------------------------------------------------------------------
# Adam and its family
# --------------------------------------------------------------------------

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

    The first step is u_1 = −η_1 g_1/(|g_1| + ε) ≈ −η_1 sign(g_1).
    `chain(scale_by_adam(β₁, β₂, ε), scale_by_learning_rate(η))`.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015.
    """
    fn = "adam"
    lr, b1, b2, eps = check_hyperparams(fn, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    return named_chain(fn, scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))


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
    (unlike adding λθ to g, i.e. L2 regularisation). `mask` selects the leaves
    that decay (see `add_decayed_weights`). `update` needs `params` when λ > 0.
    `chain(scale_by_adam(β₁, β₂, ε), add_decayed_weights(λ, mask), scale_by_learning_rate(η))`.

    References: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """
    fn = "adamw"
    lr, b1, b2, eps, weight_decay = check_hyperparams(
        fn, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
    )
    return named_chain(
        fn, scale_by_adam(b1, b2, eps), _decay(fn, weight_decay, mask),
        scale_by_learning_rate(lr), mask=mask,
    )


def adamax(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> Optimizer:
    """Adamax: Adam with the EMA of g² replaced by an exponentially weighted ∞-norm.

    η_t = `learning_rate` (the paper suggests 0.002), β₁ = `b1`, β₂ = `b2` ∈ [0, 1),
    ε = `eps` > 0:

        m_t  = β₁ m_{t−1} + (1 − β₁) g_t
        u∞_t = max(β₂ u∞_{t−1}, |g_t|)
        u_t  = −(η_t / (1 − β₁^t)) m_t / (u∞_t + ε)

    `chain(scale_by_adamax(β₁, β₂, ε), scale_by_learning_rate(η))`.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015
    (Section 7.1).
    """
    fn = "adamax"
    lr, b1, b2, eps = check_hyperparams(fn, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    return named_chain(fn, scale_by_adamax(b1, b2, eps), scale_by_learning_rate(lr))


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

    `chain(scale_by_adam(β₁, β₂, ε, nesterov=True), scale_by_learning_rate(η))`.

    References: Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop, 2016.
    """
    fn = "nadam"
    lr, b1, b2, eps = check_hyperparams(fn, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    return named_chain(fn, scale_by_adam(b1, b2, eps, nesterov=True), scale_by_learning_rate(lr))


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

    `chain(scale_by_adam(β₁, β₂, ε, amsgrad=True), scale_by_learning_rate(η))`.

    References: Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", 2018.
    """
    fn = "amsgrad"
    lr, b1, b2, eps = check_hyperparams(fn, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    return named_chain(fn, scale_by_adam(b1, b2, eps, amsgrad=True), scale_by_learning_rate(lr))


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

    Every element moves by exactly η_t (before decay). `mask` selects the leaves
    that decay, as in `adamw`.
    `chain(scale_by_lion(β₁, β₂), add_decayed_weights(λ, mask), scale_by_learning_rate(η))`.

    References: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """
    fn = "lion"
    lr, b1, b2, weight_decay = check_hyperparams(
        fn, learning_rate=learning_rate, b1=b1, b2=b2, weight_decay=weight_decay
    )
    return named_chain(
        fn, scale_by_lion(b1, b2), _decay(fn, weight_decay, mask), scale_by_learning_rate(lr),
        mask=mask,
    )


def _decay(fn: str, weight_decay: Any, mask: Mask) -> Optimizer:
    """`add_decayed_weights`, whose missing-params error names the optimizer `fn`."""
    inner = add_decayed_weights(weight_decay, mask)

    def update(grads: Updates, state: Any, params: Params = None):
        if params is None and not is_static_zero(weight_decay):
            raise ValueError(
                f"{fn}: weight_decay={weight_decay!r} needs the params; "
                "call update(grads, state, params)"
            )
        return inner.update(grads, state, params)

    return Optimizer(inner.init, update)


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


# --------------------------------------------------------------------------
# Naming the optimizer a foreign state came from
# --------------------------------------------------------------------------


def _kinds(state: Any) -> tuple:
    """The state's types: `(ChainState, ScaleByAdamState, …)`, or `(type,)` for another state."""
    if isinstance(state, ChainState):
        return (ChainState, *(type(s) for s in state.states))
    return (type(state),)


def _parts(state: Any) -> str:
    """A state's shape in words: `ChainState(ScaleByAdamState(count, mu, nu), …)`."""
    def one(s: Any) -> str:
        fields = getattr(s, "_fields", None)
        if fields is None:
            return type(s).__name__
        return f"{type(s).__name__}({', '.join(f for f in fields if getattr(s, f) is not None)})"

    if isinstance(state, ChainState):
        return f"ChainState({', '.join(one(s) for s in state.states)})"
    return one(state)


@functools.cache
def _named_states() -> dict[str, Any]:
    """Each named optimizer's state at its default settings, as shapes only."""
    probe = {"x": jax.ShapeDtypeStruct((1,), jnp.float32)}
    return {name: jax.eval_shape(f(0.1).init, probe) for name, f in OPTIMIZERS.items()}


def _foreign_state_message(name: str, inner: Optimizer, state: Any) -> str:
    """Which optimizer `state` came from (by its parts, else its types); what `name` expects."""
    named = _named_states()
    expected = _parts(named[name] if name in named else jax.eval_shape(inner.init, {}))
    given = _parts(state)
    others = {n: s for n, s in named.items() if n != name}
    owners = [n for n, s in others.items() if _parts(s) == given] or [
        n for n, s in others.items() if _kinds(s) == _kinds(state)
    ]
    if owners:
        source = f"the state of {' or '.join(owners)}"
    else:
        source = f"a state of type {type(state).__name__}"
    return (
        f"{name}: update was given {source}, not a state made by {name}(...).init: "
        f"expected {expected}, got {given}; initialise the state with the optimizer "
        f"that updates it (a checkpoint saved with another optimizer cannot be resumed "
        f"with {name})"
    )


__all__ = [
    "named_chain",
    "sgd",
    "ema_momentum",
    "adagrad",
    "adadelta",
    "rmsprop",
    "adam",
    "adamw",
    "adamax",
    "nadam",
    "amsgrad",
    "lion",
    "OPTIMIZERS",
    "get_optimizer",
]
