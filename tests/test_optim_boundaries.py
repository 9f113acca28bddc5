"""Optimizer boundaries (issue #11 item 5): what `update` and `apply_updates` say when
given non-float gradients, mismatched structures or shapes, or another optimizer's
state. Every check runs in Python at trace time, in float32 (what users run)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import fdl.optim as optim

pytestmark = pytest.mark.float32


def params():
    return {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_integer_gradients_are_rejected_with_the_leaf_path(name):
    opt = optim.OPTIMIZERS[name](0.1)
    p = params()
    grads = {"w": jnp.ones((3, 2), jnp.int32), "b": jnp.zeros(2)}
    message = f"{name}: every gradient must be a float array, but the leaf at ['w'] has dtype int32"
    with pytest.raises(TypeError, match=re.escape(message)):
        opt.update(grads, opt.init(p), p)
    with pytest.raises(TypeError, match=re.escape(message)):  # params not passed
        opt.update(grads, opt.init(p))


@pytest.mark.parametrize(
    "grads, message",
    [
        ({"w": jnp.ones((3, 2))},
         "adam: the grads and the params differ in structure: there is a leaf at ['b'] in the "
         "params but not in the grads"),
        ({"w": jnp.ones((3, 2)), "b": jnp.zeros(2), "extra": jnp.zeros(1)},
         "adam: the grads and the params differ in structure: there is a leaf at ['extra'] in "
         "the grads but not in the params"),
        ({"w": jnp.ones((2, 3)), "b": jnp.zeros(2)},
         "adam: the gradient at ['w'] has shape (2, 3), but in the params it is (3, 2)"),
    ],
    ids=["missing", "extra", "shape"],
)
def test_grads_that_do_not_match_the_params_name_the_leaf(grads, message):
    opt, p = optim.adam(0.1), params()
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.update(grads, opt.init(p), p)


@pytest.mark.parametrize(
    "grads, message",
    [
        ({"w": jnp.ones((3, 2))},
         "adam: the grads and the state's mu differ in structure: there is a leaf at "
         "['b'] in the state's mu but not in the grads"),
        ({"w": jnp.ones((2, 3)), "b": jnp.zeros(2)},
         "adam: the gradient at ['w'] has shape (2, 3), but in the state's mu it is (3, 2)"),
    ],
    ids=["structure", "shape"],
)
def test_grads_that_do_not_match_the_state_name_the_leaf(grads, message):
    opt, p = optim.adam(0.1), params()
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.update(grads, opt.init(p))  # no params: compared with the state instead


@pytest.mark.parametrize(
    "name, other, given",
    [
        ("adam", lambda: optim.sgd(0.1, momentum=0.9), "the state of sgd"),
        ("sgd", lambda: optim.adam(0.1), "the state of adam or nadam"),
        ("adam", lambda: optim.amsgrad(0.1), "the state of amsgrad"),
        ("adamw", lambda: optim.lion(0.1), "the state of lion"),
        ("rmsprop", lambda: optim.adagrad(0.1), "the state of adagrad"),
    ],
)
def test_another_optimizers_state_names_both_optimizers(name, other, given):
    opt, p = optim.OPTIMIZERS[name](0.1), params()
    message = f"{name}: update was given {given}, not a state made by {name}(...).init: expected ChainState("
    with pytest.raises(TypeError, match=re.escape(message)):
        opt.update(p, other().init(p), p)


def test_foreign_state_message_shows_both_layouts():
    p = params()
    with pytest.raises(TypeError) as info:
        optim.adam(0.1).update(p, optim.sgd(0.1, momentum=0.9).init(p), p)
    assert str(info.value) == (
        "adam: update was given the state of sgd, not a state made by adam(...).init: expected "
        "ChainState(ScaleByAdamState(count, mu, nu), ScaleByLearningRateState(count)), got "
        "ChainState(TraceState(velocity), ScaleByLearningRateState(count)); initialise the state "
        "with the optimizer that updates it (a checkpoint saved with another optimizer cannot be "
        "resumed with adam)"
    )


def test_a_state_that_is_not_an_optimizer_state():
    p = params()
    with pytest.raises(TypeError, match=re.escape("lion: update was given a state of type dict, not a state made by lion(...).init")):
        optim.lion(0.1).update(p, {"mu": p}, p)


def test_transforms_recognise_each_others_states():
    p = params()
    with pytest.raises(TypeError, match=re.escape(
        "scale_by_lion: state must be the ScaleByLionState made by scale_by_lion(...).init(params), got ScaleByAdamState"
    )):
        optim.scale_by_lion().update(p, optim.scale_by_adam().init(p))
    with pytest.raises(TypeError, match=re.escape("chain: state must be the ChainState made by chain(...).init(params), got tuple")):
        optim.chain(optim.trace(0.9)).update(p, (optim.trace(0.9).init(p),))
    with pytest.raises(TypeError, match=re.escape("chain: state holds 1 inner states but the chain has 2 transforms")):
        optim.chain(optim.trace(0.9), optim.scale_by_learning_rate(0.1)).update(p, optim.chain(optim.trace(0.9)).init(p))


def test_checks_run_at_trace_time_under_jit():
    opt, p = optim.adam(0.1), params()

    @jax.jit
    def step(grads, state):
        return opt.update(grads, state, p)

    with pytest.raises(TypeError, match=re.escape("adam: every gradient must be a float array, but the leaf at ['b'] has dtype int32")):
        step({"w": jnp.ones((3, 2)), "b": jnp.zeros(2, jnp.int32)}, opt.init(p))
    with pytest.raises(TypeError, match=re.escape("adam: update was given the state of sgd")):
        step(p, optim.sgd(0.1, momentum=0.5).init(p))
    # the checks add nothing to the compiled step: its program is that of the bare chain
    bare = optim.chain(optim.scale_by_adam(), optim.scale_by_learning_rate(0.1))
    checked = jax.make_jaxpr(lambda g, s: opt.update(g, s, p))(p, opt.init(p))
    unchecked = jax.make_jaxpr(lambda g, s: bare.update(g, s, p))(p, bare.init(p))
    assert str(checked) == str(unchecked)


def test_apply_updates_names_the_leaf():
    p = params()
    with pytest.raises(ValueError, match=re.escape(
        "apply_updates: the updates and the params differ in structure: there is a leaf at ['b'] in the params but not in the updates"
    )):
        optim.apply_updates(p, {"w": p["w"]})
    with pytest.raises(ValueError, match=re.escape("apply_updates: the update at ['b'] has shape (3,), but in the params it is (2,)")):
        optim.apply_updates(p, {"w": p["w"], "b": jnp.zeros(3)})


def test_optional_state_switched_by_settings_is_checked():
    p = params()
    with pytest.raises(TypeError, match=re.escape(
        "scale_by_rms: the state has mean_grad, but this transform was built with centered=False"
    )):
        optim.scale_by_rms().update(p, optim.scale_by_rms(centered=True).init(p))


def test_accumulate_gradients_checks_its_grads():
    opt, p = optim.accumulate_gradients(optim.adam(0.1), 2), params()
    with pytest.raises(TypeError, match=re.escape("accumulate_gradients: every gradient must be a float array, but the leaf at ['w'] has dtype int32")):
        opt.update({"w": jnp.ones((3, 2), jnp.int32), "b": jnp.zeros(2)}, opt.init(p), p)
    with pytest.raises(ValueError, match=re.escape("accumulate_gradients: the gradient at ['w'] has shape (2, 3), but in the state's grad_sum it is (3, 2)")):
        opt.update({"w": jnp.ones((2, 3)), "b": jnp.zeros(2)}, opt.init(p), p)


@pytest.mark.parametrize("old", ["AdamState", "SGDState", "LionState", "NoSuchState"])
def test_removed_state_names_are_gone(old):
    with pytest.raises(AttributeError, match=re.escape(f"module 'fdl.optim' has no attribute '{old}'")):
        getattr(optim, old)


def test_named_chain_gives_a_users_optimizer_the_same_checks():
    mine = optim.named_chain("rms_nesterov", optim.scale_by_rms(), optim.trace(0.9, nesterov=True),
                             optim.scale_by_learning_rate(0.01))
    p = params()
    state = mine.init(p)
    with pytest.raises(ValueError, match=re.escape("rms_nesterov: the gradient at ['w'] has shape (2, 3), but in the params it is (3, 2)")):
        mine.update({"w": jnp.ones((2, 3)), "b": jnp.zeros(2)}, state, p)
    with pytest.raises(TypeError, match=re.escape(
        "rms_nesterov: update was given the state of adam or nadam, not a state made by rms_nesterov(...).init: "
        "expected ChainState(ScaleByRmsState(nu), TraceState(velocity), ScaleByLearningRateState(count))"
    )):
        mine.update(p, optim.adam(0.1).init(p), p)
    with pytest.raises(TypeError, match=re.escape("rms_nesterov: every parameter must be a float array, but the leaf at ['n'] has dtype int32")):
        mine.init({"n": jnp.zeros(2, jnp.int32)})
