"""The registry of named optimizers: one `@register` makes an optimizer known to
`get_optimizer` (and so the command line and checkpoints) and to the recogniser of
foreign states; its transforms validate the hyperparameters in its name."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim
from fdl.optim import base, registry

pytestmark = pytest.mark.float32


@pytest.fixture
def rms_descent():
    """A new optimizer registered for one test: RMSProp's scaling, then the learning rate."""

    def rms_descent(learning_rate, decay=0.9):
        """RMSProp's direction times −η."""
        return optim.chain(optim.scale_by_rms(decay), optim.scale_by_learning_rate(learning_rate))

    built = optim.register(rms_descent)
    yield built
    del optim.OPTIMIZERS["rms_descent"]
    registry._layout.cache_clear()


def params():
    return {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([0.25, -1.0])}


def test_one_registration_makes_an_optimizer_known(rms_descent):
    assert optim.OPTIMIZERS["rms_descent"] is rms_descent
    assert rms_descent.__doc__ == "RMSProp's direction times −η."
    opt = optim.get_optimizer("rms_descent", learning_rate=0.1, decay=0.5)
    p = params()
    u, state = opt.update(p, opt.init(p), p)
    # first step: ν = (1 − ρ) g², d = g / (√ν + ε), u = −η d
    for k in p:
        g = np.asarray(p[k])
        np.testing.assert_allclose(np.asarray(u[k]), -0.1 * g / (np.sqrt(0.5 * g * g) + 1e-8), rtol=1e-6)
    assert [type(s) for s in state.states] == [optim.ScaleByRmsState, optim.ScaleByLearningRateState]
    with pytest.raises(ValueError, match=re.escape(
        "get_optimizer: rms_descent has no option 'momentum'; its options are ['learning_rate', 'decay']"
    )):
        optim.get_optimizer("rms_descent", learning_rate=0.1, momentum=0.9)


def test_a_registered_optimizers_transforms_speak_in_its_name(rms_descent):
    with pytest.raises(ValueError, match=re.escape("rms_descent: decay must be in [0, 1), got 1.0")):
        rms_descent(0.1, decay=1.0)
    with pytest.raises(ValueError, match=re.escape("rms_descent: learning_rate must be a finite number >= 0")):
        rms_descent(-0.1)
    p = params()
    with pytest.raises(TypeError, match=re.escape(
        "rms_descent: every gradient must be a float array, but the leaf at ['b'] has dtype int32"
    )):
        rms_descent(0.1).update({"w": p["w"], "b": jnp.zeros(2, jnp.int32)}, rms_descent(0.1).init(p), p)


def test_the_recogniser_knows_a_registered_optimizers_state(rms_descent):
    p = params()
    with pytest.raises(TypeError, match=re.escape(
        "adam: update was given the state of rms_descent, not a state made by adam(...).init: "
        "expected ChainState(ScaleByAdamState(count, mu, nu), ScaleByLearningRateState(count)), "
        "got ChainState(ScaleByRmsState(nu), ScaleByLearningRateState(count))"
    )):
        optim.adam(0.1).update(p, rms_descent(0.1).init(p), p)
    with pytest.raises(TypeError, match=re.escape(
        "rms_descent: update was given the state of adam or nadam, not a state made by rms_descent(...).init"
    )):
        rms_descent(0.1).update(p, optim.adam(0.1).init(p), p)


def test_the_name_applies_only_while_the_optimizer_is_built():
    with pytest.raises(ValueError, match=re.escape("adam: b1 must be in [0, 1), got 2.0")):
        optim.adam(0.1, b1=2.0)
    # after a failed and a successful build, a transform built alone speaks in its own name
    optim.adam(0.1)
    with pytest.raises(ValueError, match=re.escape("scale_by_adam: b1 must be in [0, 1), got 2.0")):
        optim.scale_by_adam(b1=2.0)
    with optim.base.naming("mine"):
        with pytest.raises(ValueError, match=re.escape("mine: eps must be a finite number > 0, got 0.0")):
            optim.scale_by_rms(eps=0.0)
    assert optim.base.label("scale_by_rms") == "scale_by_rms"


def test_registered_names_are_the_named_optimizers():
    assert list(optim.OPTIMIZERS) == [
        "sgd", "ema_momentum", "adagrad", "adadelta", "rmsprop", "adam", "adamw", "adamax",
        "nadam", "amsgrad", "lion", "radam", "adabelief", "lamb", "lars", "adafactor",
        "muon", "schedule_free_adamw",
    ]


# ---------------------------------------------------------------------------
# Adding an optimizer: one method (a transform), one chain, one registration
# ---------------------------------------------------------------------------


class ScaleBySignumState(NamedTuple):
    """State of `scale_by_signum`: `mu`, the EMA of g (pytree like params)."""

    mu: Any


def scale_by_signum(beta=0.9):
    """Signum's direction: $m_t = β m_{t−1} + (1 − β) g_t$, $d_t = \\operatorname{sign}(m_t)$."""
    fn = base.label("scale_by_signum")
    (beta,) = base.check_hyperparams(fn, beta=beta)  # the one check of beta

    def step(g, mu):  # one array; the state field by name, beta closed over
        mu = beta * mu + (1 - beta) * g
        return jnp.sign(mu), {"mu": mu}

    def init(params):
        return ScaleBySignumState(base.zeros_acc(params))

    def update(grads, state, params=None):
        base.check_state(fn, state, ScaleBySignumState)
        d, new = base.lift(fn, step, grads, state._asdict())
        return d, ScaleBySignumState(**new)

    return optim.Optimizer(init, update)


@pytest.fixture
def signum():
    def signum(learning_rate, beta=0.9):
        """Signum: the sign of the momentum."""
        return optim.chain(scale_by_signum(beta), optim.scale_by_learning_rate(learning_rate))

    yield optim.register(signum)
    del optim.OPTIMIZERS["signum"]
    registry._layout.cache_clear()


def test_a_new_method_plus_a_chain_is_a_named_optimizer(signum):
    p = params()
    grads = [jax.tree.map(lambda x, s=s: jnp.cos(x * (s + 1)), p) for s in range(6)]
    opt = optim.get_optimizer("signum", learning_rate=0.01, beta=0.5)
    state, mu, theta = opt.init(p), jax.tree.map(np.zeros_like, p), jax.tree.map(np.asarray, p)
    for g in grads:
        u, state = opt.update(g, state, p)
        mu = jax.tree.map(lambda m, x: 0.5 * m + 0.5 * np.asarray(x), mu, g)
        for k in p:
            np.testing.assert_allclose(np.asarray(u[k]), -0.01 * np.sign(mu[k]), rtol=1e-6)
    with pytest.raises(ValueError, match=re.escape("signum: beta must be in [0, 1), got 1.0")):
        optim.get_optimizer("signum", learning_rate=0.01, beta=1.0)
    with pytest.raises(TypeError, match=re.escape("adam: update was given the state of signum")):
        optim.adam(0.1).update(p, signum(0.1).init(p), p)
    injected = optim.inject_hyperparams(signum)(0.01, beta=0.5).init(p)
    assert set(injected.hyperparams) == {"learning_rate", "beta"}
