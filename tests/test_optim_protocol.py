"""The optimizer protocol: state structure and dtypes, jit without recompilation,
vmap, hyperparameters in the state (inject_hyperparams), validation at
construction, interoperability."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

pytestmark = pytest.mark.x64  # trajectories and closed forms compared in float64

NAMES = sorted(optim.OPTIMIZERS)


def build(name, learning_rate=0.01, **options):
    """Every optimizer with all optional state switched on."""
    extra = {
        "sgd": {"momentum": 0.9, "nesterov": True},
        "rmsprop": {"centered": True, "momentum": 0.5},
        "adamw": {"weight_decay": 0.1},
        "lion": {"weight_decay": 0.1},
        "lamb": {"weight_decay": 0.1},
        "lars": {"weight_decay": 0.1, "nesterov": True},
        "adafactor": {"b1": 0.9, "weight_decay": 0.1, "min_dim_size_to_factor": 2},
        "muon": {"weight_decay": 0.1},
        "schedule_free_adamw": {"weight_decay": 0.1, "warmup_steps": 2},
    }.get(name, {})
    return optim.get_optimizer(name, learning_rate=learning_rate, **(extra | options))


def params_of(dtype):
    return {
        "dense": {"w": jnp.full((3, 2), 0.5, dtype), "b": jnp.zeros((2,), dtype)},
        "scale": [jnp.asarray(1.5, dtype)],
    }


def grads_of(dtype, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), dtype), params_of(dtype))


# ---------------------------------------------------------------------------
# State structure
# ---------------------------------------------------------------------------


def inner_states(state):
    """The per-transform states of a named optimizer's ChainState."""
    assert isinstance(state, optim.ChainState)
    return state.states


@pytest.mark.parametrize("name", NAMES)
def test_state_is_a_chain_of_one_named_state_per_transform(name):
    opt = build(name)
    params = params_of(jnp.float64)
    state = opt.init(params)
    assert isinstance(state, optim.ChainState) and state._fields == ("count", "states")
    assert state.count.dtype == jnp.int32 and state.count.shape == ()
    for inner in inner_states(state):
        assert type(inner).__name__.endswith("State") and hasattr(inner, "_fields")
    for leaf in jax.tree.leaves(state):
        assert isinstance(leaf, jax.Array)


def test_named_optimizers_are_short_chains_of_the_methods():
    params = params_of(jnp.float64)
    kinds = {name: [type(s) for s in build(name).init(params).states] for name in NAMES}
    lr, decay = optim.ScaleByLearningRateState, optim.AddDecayedWeightsState
    assert kinds == {
        "sgd": [optim.TraceState, lr],
        "ema_momentum": [optim.ScaleByEmaMomentumState, lr],
        "adagrad": [optim.ScaleByAdagradState, lr],
        "adadelta": [optim.ScaleByAdadeltaState, lr],
        "rmsprop": [optim.ScaleByRmsState, optim.TraceState, lr],
        "adam": [optim.ScaleByAdamState, lr],
        "adamw": [optim.ScaleByAdamState, decay, lr],
        "adamax": [optim.ScaleByAdamaxState, lr],
        "nadam": [optim.ScaleByAdamState, lr],
        "amsgrad": [optim.ScaleByAdamState, lr],
        "lion": [optim.ScaleByLionState, decay, lr],
        "radam": [optim.ScaleByRadamState, lr],
        "adabelief": [optim.ScaleByBeliefState, lr],
        "lamb": [optim.ScaleByAdamState, decay, optim.ScaleByTrustRatioState, lr],
        "lars": [decay, optim.ScaleByTrustRatioState, optim.TraceState, lr],
        "adafactor": [optim.ScaleByFactoredRmsState, optim.ClipByBlockRmsState, optim.ScaleByEmaMomentumState,
                      optim.ScaleByParamBlockRmsState, decay, lr],
        "muon": [optim.PartitionState],
        "schedule_free_adamw": [optim.ScheduleFreeState],
    }


@pytest.mark.parametrize("name", NAMES)
def test_state_structure_is_preserved_by_update(name):
    opt = build(name)
    params = params_of(jnp.float64)
    state0 = opt.init(params)
    state = state0
    for i in range(3):
        _, state = opt.update(grads_of(jnp.float64, i), state, params)
    assert type(state) is type(state0)
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    for a, b in zip(jax.tree.leaves(state0), jax.tree.leaves(state)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert int(state.count) == 3


def test_optional_state_is_none_when_switched_off():
    params = params_of(jnp.float64)
    assert optim.sgd(0.1).init(params).states[0].velocity is None
    s = optim.rmsprop(0.1).init(params)
    assert s.states[0].mean_grad is None and s.states[1].velocity is None
    _, s = optim.rmsprop(0.1).update(params, s)
    assert s.states[0].mean_grad is None and s.states[1].velocity is None
    assert optim.adam(0.1).init(params).states[0].nu_max is None
    assert optim.amsgrad(0.1).init(params).states[0].nu_max is not None


# ---------------------------------------------------------------------------
# Dtypes: float32, float64, bfloat16 params
# ---------------------------------------------------------------------------

ACCUMULATOR = {jnp.float32: jnp.float32, jnp.float64: jnp.float64, jnp.bfloat16: jnp.float32}
# Distance from the float64 run after 3 steps, relative to the learning rate.
TOLERANCE = {jnp.float32: 1e-4, jnp.float64: 1e-12, jnp.bfloat16: 0.2}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_dtypes(name, dtype):
    def run(dt):
        opt = build(name, learning_rate=0.1)
        params = params_of(dt)
        state = opt.init(params)
        for i in range(3):
            updates, state = opt.update(grads_of(dt, i), state, params)
            for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
                assert u.dtype == p.dtype  # updates take the grads' dtype
            params = optim.apply_updates(params, updates)
        return params, state

    params, state = run(dtype)
    for p in jax.tree.leaves(params):
        assert p.dtype == dtype and bool(jnp.all(jnp.isfinite(p)))
    for leaf in jax.tree.leaves(moments(state)):
        assert leaf.dtype == ACCUMULATOR[dtype]
    reference, _ = run(jnp.float64)
    for p, r in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(p, np.float64), np.asarray(r), atol=0.1 * TOLERANCE[dtype], rtol=0)


SCALARS = {"count", "lr_max", "weight_sum"}  # step counts and schedule-free's step-size sums


def moments(state):
    """The per-parameter accumulators in a (nested) optimizer state."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return [moments(getattr(state, f)) for f in state._fields if f not in SCALARS]
    if isinstance(state, (tuple, list)):
        return [moments(s) for s in state]
    if isinstance(state, dict):
        return [moments(s) for s in state.values()]
    return state


def test_apply_updates_keeps_param_dtype_and_rounds_once():
    params = {"a": jnp.asarray([1.0], jnp.bfloat16), "b": jnp.asarray([1.0], jnp.float32)}
    updates = {"a": jnp.asarray([2.0**-9 + 2.0**-10], jnp.float32), "b": jnp.asarray([0.5], jnp.float64)}
    out = optim.apply_updates(params, updates)
    assert out["a"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32
    # the sum 1.0029296875 is formed in float32, then rounded once to bfloat16
    assert float(out["a"][0]) == float(jnp.asarray(1.0029296875, jnp.bfloat16)) == 1.0
    assert float(out["b"][0]) == 1.5


def test_init_rejects_integer_params():
    message = "adam: every parameter must be a float array, but the leaf at ['n'] has dtype int32"
    with pytest.raises(TypeError, match=re.escape(message)):
        optim.adam(0.1).init({"n": jnp.zeros(2, jnp.int32)})


# ---------------------------------------------------------------------------
# jit: no recompilation on the second step; vmap
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_jitted_step_does_not_recompile(name):
    opt = build(name, learning_rate=optim.warmup_cosine_decay_schedule(0.1, 2, 10))
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)  # Python side effect: runs only while tracing
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state

    params = params_of(jnp.float32)
    state = opt.init(params)
    for i in range(3):
        params, state = step(params, state, grads_of(jnp.float32, i))
    assert len(traces) == 1
    assert step._cache_size() == 1
    assert int(state.count) == 3


def test_vmap_over_independent_problems_matches_separate_runs():
    opt = optim.adam(0.05)
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *[grads_of(jnp.float64, s) for s in range(3)])
    grads = [jax.tree.map(lambda *xs: jnp.stack(xs), *[grads_of(jnp.float64, 10 * s + i) for s in range(3)]) for i in range(4)]

    state = jax.vmap(opt.init)(batch)
    params = batch
    for g in grads:
        updates, state = jax.vmap(opt.update)(g, state, params)
        params = optim.apply_updates(params, updates)

    for s in range(3):
        p = jax.tree.map(lambda x: x[s], batch)
        st = opt.init(p)
        for g in grads:
            u, st = opt.update(jax.tree.map(lambda x: x[s], g), st, p)
            p = optim.apply_updates(p, u)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b[s]), rtol=1e-14)


# ---------------------------------------------------------------------------
# Hyperparameters in the state: inject_hyperparams and set_hyperparams
# ---------------------------------------------------------------------------


def injected(name, learning_rate=0.01, **options):
    """`build`, with the hyperparameters injected into the state."""
    extra = {
        "sgd": {"momentum": 0.9, "nesterov": True},
        "rmsprop": {"centered": True, "momentum": 0.5},
        "adamw": {"weight_decay": 0.1},
        "lion": {"weight_decay": 0.1},
        "lamb": {"weight_decay": 0.1},
        "lars": {"weight_decay": 0.1, "nesterov": True},
        "adafactor": {"b1": 0.9, "weight_decay": 0.1, "min_dim_size_to_factor": 2},
        "muon": {"weight_decay": 0.1},
        "schedule_free_adamw": {"weight_decay": 0.1, "warmup_steps": 2},
    }.get(name, {})
    return optim.inject_hyperparams(optim.OPTIMIZERS[name])(learning_rate=learning_rate, **(extra | options))


@pytest.mark.parametrize("name", NAMES)
def test_current_learning_rate_is_readable_from_state(name):
    schedule = optim.linear_schedule(0.1, 0.0, 4)
    opt = injected(name, learning_rate=schedule)
    params = params_of(jnp.float64)
    state = opt.init(params)
    assert isinstance(state, optim.InjectHyperparamsState)
    for i in range(6):
        np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), float(schedule(i)), rtol=1e-15)
        assert int(state.count) == i
        _, state = opt.update(grads_of(jnp.float64, i), state, params)


def test_hyperparameters_are_readable_from_state():
    s = optim.inject_hyperparams(optim.adamw)(3e-4, b1=0.8, b2=0.99, eps=1e-7, weight_decay=0.05).init(
        params_of(jnp.float64)
    )
    got = {k: float(v) for k, v in s.hyperparams.items()}
    assert got == {"learning_rate": 3e-4, "b1": 0.8, "b2": 0.99, "eps": 1e-7, "weight_decay": 0.05}
    s = optim.inject_hyperparams(optim.rmsprop)(0.1, decay=0.95, momentum=0.3).init(params_of(jnp.float64))
    assert {k: float(v) for k, v in s.hyperparams.items()} == {
        "learning_rate": 0.1, "decay": 0.95, "eps": 1e-8, "momentum": 0.3
    }
    for v in s.hyperparams.values():
        assert v.dtype == jnp.float64 and v.shape == ()  # the default float dtype (x64 on)


def test_named_optimizer_state_says_how_to_get_hyperparams():
    state = optim.adam(0.1).init(params_of(jnp.float64))
    with pytest.raises(AttributeError, match=re.escape("build the optimizer with fdl.optim.inject_hyperparams")):
        state.hyperparams


@pytest.mark.parametrize("lr_kind", ["constant", "schedule"])
@pytest.mark.parametrize("name", NAMES)
def test_injected_optimizer_takes_the_same_steps(name, lr_kind):
    lr = 0.05 if lr_kind == "constant" else optim.warmup_cosine_decay_schedule(0.05, 2, 8)
    plain, inj = build(name, learning_rate=lr), injected(name, learning_rate=lr)
    params = params_of(jnp.float64)
    s1, s2 = plain.init(params), inj.init(params)
    for i in range(5):
        u1, s1 = plain.update(grads_of(jnp.float64, i), s1, params)
        u2, s2 = inj.update(grads_of(jnp.float64, i), s2, params)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14, atol=1e-300)
    assert jax.tree.structure(s2.inner_state) == jax.tree.structure(s1)


def counting_step(opt):
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)  # Python side effect: runs only while tracing
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, updates

    return step, traces


@pytest.mark.float32
def test_set_hyperparams_takes_effect_without_recompiling():
    opt = optim.inject_hyperparams(optim.sgd)(learning_rate=0.1, momentum=0.0)
    step, traces = counting_step(opt)
    params = params_of(jnp.float32)
    state = opt.init(params)
    g = grads_of(jnp.float32, 0)
    params, state, u = step(params, state, g)
    np.testing.assert_allclose(np.asarray(u["dense"]["w"]), -0.1 * np.asarray(g["dense"]["w"]), rtol=1e-6)
    state = optim.set_hyperparams(state, learning_rate=0.02)
    assert state.hyperparams["learning_rate"].dtype == jnp.float32
    params, state, u = step(params, state, g)
    np.testing.assert_allclose(np.asarray(u["dense"]["w"]), -0.02 * np.asarray(g["dense"]["w"]), rtol=1e-6)
    # momentum was injected as an array, so the velocity is kept and switching it on works
    state = optim.set_hyperparams(state, momentum=0.5)
    params, state, u = step(params, state, g)
    velocity = state.inner_state.states[0].velocity["dense"]["w"]
    # v_1 = v_2 = g with momentum 0, then v_3 = 0.5 v_2 + g
    np.testing.assert_allclose(np.asarray(velocity), 1.5 * np.asarray(g["dense"]["w"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u["dense"]["w"]), -0.02 * np.asarray(velocity), rtol=1e-6)
    assert len(traces) == 1 and step._cache_size() == 1
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.02)


@pytest.mark.float32
def test_scheduled_hyperparameter_is_evaluated_from_the_count_in_a_jitted_step():
    schedule = optim.exponential_decay_schedule(0.1, 0.5, 1)
    opt = optim.inject_hyperparams(optim.adam)(learning_rate=schedule, b1=0.9)
    step, traces = counting_step(opt)
    params = params_of(jnp.float32)
    state = opt.init(params)
    for t in range(4):
        assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1 * 0.5**t)
        params, state, u = step(params, state, grads_of(jnp.float32, 0))
        # the same gradient every step: Adam's direction is sign(g) up to eps
        np.testing.assert_allclose(np.abs(np.asarray(u["scale"][0])), 0.1 * 0.5**t, rtol=1e-5)
    state = optim.set_hyperparams(state, learning_rate=1.0)  # overrides one step only
    params, state, u = step(params, state, grads_of(jnp.float32, 0))
    np.testing.assert_allclose(np.abs(np.asarray(u["scale"][0])), 1.0, rtol=1e-5)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1 * 0.5**5)
    assert len(traces) == 1 and step._cache_size() == 1


@pytest.mark.float32
@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s: optim.set_hyperparams(s, lr=0.1), ValueError,
         "set_hyperparams: this optimizer has no hyperparameter 'lr'; its hyperparameters are "
         "['learning_rate', 'b1', 'b2', 'eps']"),
        (lambda s: optim.set_hyperparams(s, b1=1.5), ValueError, "set_hyperparams: b1 must be in [0, 1), got 1.5"),
        (lambda s: optim.set_hyperparams(s, learning_rate=-1.0), ValueError,
         "set_hyperparams: learning_rate must be a finite number >= 0"),
        (lambda s: optim.set_hyperparams(s, learning_rate="fast"), TypeError,
         "set_hyperparams: learning_rate must be a real number, got 'fast'"),
        (lambda s: optim.set_hyperparams(s, learning_rate=lambda t: 0.1), TypeError,
         "set_hyperparams: learning_rate must be a number, got the callable"),
        (lambda s: optim.set_hyperparams(s.inner_state, learning_rate=0.1), TypeError,
         "set_hyperparams: state must be an InjectHyperparamsState, from an optimizer built with "
         "fdl.optim.inject_hyperparams"),
    ],
)
def test_set_hyperparams_errors(call, error, message):
    state = optim.inject_hyperparams(optim.adam)(1e-3).init(params_of(jnp.float32))
    with pytest.raises(error, match=re.escape(message)):
        call(state)


@pytest.mark.float32
def test_inject_hyperparams_validates_with_the_factorys_words():
    with pytest.raises(ValueError, match=re.escape("adam: b2 must be in [0, 1), got 1.0")):
        optim.inject_hyperparams(optim.adam)(1e-3, b2=1.0)
    with pytest.raises(TypeError, match=re.escape("inject_hyperparams(adam): got an unexpected keyword argument 'beta1'")):
        optim.inject_hyperparams(optim.adam)(1e-3, beta1=0.9)
    with pytest.raises(TypeError, match=re.escape("inject_hyperparams: factory must be a function returning an Optimizer")):
        optim.inject_hyperparams("adam")
    opt = optim.inject_hyperparams(optim.adam)(1e-3)
    params = params_of(jnp.float32)
    with pytest.raises(TypeError, match=re.escape(
        "inject_hyperparams(adam): state must be the InjectHyperparamsState made by this optimizer's init, got ChainState"
    )):
        opt.update(params, optim.adam(1e-3).init(params), params)


@pytest.mark.float32
def test_inject_hyperparams_keeps_mask_static_and_wraps_transforms():
    params = params_of(jnp.float32)
    opt = optim.inject_hyperparams(optim.adamw)(0.1, weight_decay=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    state = opt.init(params)
    assert set(state.hyperparams) == {"learning_rate", "b1", "b2", "eps", "weight_decay"}
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, _ = opt.update(zeros, state, params)
    np.testing.assert_allclose(np.asarray(u["dense"]["w"]), -0.1 * 0.5 * 0.5, rtol=1e-6)
    assert np.all(np.asarray(u["dense"]["b"]) == 0) and np.all(np.asarray(u["scale"][0]) == 0)
    clip = optim.inject_hyperparams(optim.clip_by_global_norm)(max_norm=1.0)
    s = clip.init(params)
    s = optim.set_hyperparams(s, max_norm=0.5)
    out, _ = clip.update(grads_of(jnp.float32, 1), s)
    np.testing.assert_allclose(float(optim.global_norm(out)), 0.5, rtol=1e-6)


# ---------------------------------------------------------------------------
# Interoperability: the JAX-ecosystem shape of a gradient transformation
# ---------------------------------------------------------------------------


def generic_training_loop(tx, params, grads_seq):
    """Written against the ecosystem protocol only: tx.init, tx.update(g, s, p), p + u."""
    init_fn, update_fn = tx  # a two-field NamedTuple unpacks
    opt_state = init_fn(params)
    for g in grads_seq:
        updates, opt_state = update_fn(g, opt_state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params


def test_drops_into_code_written_for_the_protocol():
    params = params_of(jnp.float64)
    grads = [grads_of(jnp.float64, i) for i in range(3)]
    assert optim.Optimizer._fields == ("init", "update")
    out = generic_training_loop(optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1)), params, grads)
    # the same steps written out: clip each gradient to norm 1, then Adam's first three directions
    adam, state, expected = optim.adam(0.1), None, params
    state = adam.init(params)
    for g in grads:
        norm = float(optim.global_norm(g))
        u, state = adam.update(jax.tree.map(lambda x: x * min(1.0, 1.0 / norm), g), state, params)
        expected = jax.tree.map(lambda p, d: p + d, expected, u)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14)
    # update also takes params by keyword, and defaults it to None
    opt = optim.adam(0.1)
    by_position, _ = opt.update(grads[0], opt.init(params), params)
    for other in (opt.update(grads[0], opt.init(params), params=params)[0], opt.update(grads[0], opt.init(params))[0]):
        for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(by_position)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------
# Validation at construction
# ---------------------------------------------------------------------------

BETAS = {
    "sgd": ["momentum"],
    "ema_momentum": ["beta"],
    "adagrad": [],
    "adadelta": ["rho"],
    "rmsprop": ["decay", "momentum"],
    "adam": ["b1", "b2"],
    "adamw": ["b1", "b2"],
    "adamax": ["b1", "b2"],
    "nadam": ["b1", "b2"],
    "amsgrad": ["b1", "b2"],
    "lion": ["b1", "b2"],
    "radam": ["b1", "b2"],
    "adabelief": ["b1", "b2"],
    "lamb": ["b1", "b2"],
    "lars": ["momentum"],
    "adafactor": [],
    "muon": ["momentum", "adam_b1", "adam_b2"],
    "schedule_free_adamw": ["b1", "b2"],
}
EPS = [n for n in NAMES if n not in ("sgd", "ema_momentum", "lion", "lars")]  # lars: eps >= 0


def test_validation_tables_cover_every_optimizer():
    assert set(BETAS) == set(NAMES)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", NAMES)
def test_bad_learning_rate(name, value):
    message = (
        f"{name}: learning_rate must be a finite number >= 0 or a schedule "
        f"(step -> learning rate), got {value!r}"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        optim.OPTIMIZERS[name](learning_rate=value)


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
@pytest.mark.parametrize("name, arg", [(n, a) for n in NAMES for a in BETAS[n]])
def test_beta_outside_unit_interval(name, arg, value):
    with pytest.raises(ValueError, match=re.escape(f"{name}: {arg} must be in [0, 1), got {value!r}")):
        optim.OPTIMIZERS[name](0.1, **{arg: value})


@pytest.mark.parametrize("value", [0.0, -1e-8, float("inf")])
@pytest.mark.parametrize("name", EPS)
def test_eps_must_be_positive(name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name}: eps must be a finite number > 0, got {value!r}")):
        optim.OPTIMIZERS[name](0.1, eps=value)


@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_negative_weight_decay(name):
    with pytest.raises(ValueError, match=re.escape(f"{name}: weight_decay must be a finite number >= 0, got -0.1")):
        optim.OPTIMIZERS[name](0.1, weight_decay=-0.1)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: optim.sgd(0.1, nesterov=True), ValueError, "sgd: nesterov=True needs momentum > 0, got momentum=0.0"),
        (lambda: optim.sgd(0.1, momentum=0.9, nesterov=1), TypeError, "sgd: nesterov must be True or False, got 1"),
        (lambda: optim.rmsprop(0.1, centered="yes"), TypeError, "rmsprop: centered must be True or False, got 'yes'"),
        (lambda: optim.adam("0.1"), TypeError, "adam: learning_rate must be a real number, got '0.1'"),
        (lambda: optim.adam(True), TypeError, "adam: learning_rate must be a real number, got True"),
        (lambda: optim.adagrad(0.1, initial_accumulator_value=-1.0), ValueError,
         "adagrad: initial_accumulator_value must be a finite number >= 0, got -1.0"),
        (lambda: optim.get_optimizer("adamm"), ValueError, "get_optimizer: unknown optimizer 'adamm'; choose one of"),
        (lambda: optim.get_optimizer("adam", learning_rate=0.1, beta1=0.9), ValueError,
         "get_optimizer: adam has no option 'beta1'; its options are ['learning_rate', 'b1', 'b2', 'eps']"),
        (lambda: optim.get_optimizer("sgd", learning_rate=-1.0), ValueError, "sgd: learning_rate must be"),
    ],
)
def test_bad_options(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_get_optimizer_builds_the_named_optimizer():
    opt = optim.get_optimizer("adam", learning_rate=0.1, b2=0.9)
    params = params_of(jnp.float64)
    state = opt.init(params)
    assert isinstance(state.states[0], optim.ScaleByAdamState)
    g = [grads_of(jnp.float64, i) for i in range(2)]
    def run(o):
        s = o.init(params)
        for gi in g:
            u, s = o.update(gi, s, params)
        return u["dense"]["w"]
    np.testing.assert_array_equal(np.asarray(run(opt)), np.asarray(run(optim.adam(0.1, b2=0.9))))
    assert not np.allclose(np.asarray(run(opt)), np.asarray(run(optim.adam(0.1))))


def test_weight_decay_needs_params_in_update():
    opt = optim.adamw(0.1, weight_decay=0.1)
    params = params_of(jnp.float64)
    with pytest.raises(ValueError, match=re.escape("adamw: weight_decay=0.1 needs the params; call update(grads, state, params)")):
        opt.update(params, opt.init(params))


def test_schedule_must_return_a_scalar():
    with pytest.raises(ValueError, match=re.escape("sgd: the learning-rate schedule must return a scalar, got shape (2,)")):
        optim.sgd(lambda step: jnp.ones(2))


@pytest.mark.float32
def test_inject_hyperparams_keeps_int_arguments_static():
    """Sizes, periods and iteration counts (annotated `int`) shape the program: not injected."""
    params = params_of(jnp.float32)
    s = optim.inject_hyperparams(optim.muon)(0.02, ns_steps=3).init(params)
    assert set(s.hyperparams) == {"learning_rate", "momentum", "weight_decay", "eps", "adam_b1", "adam_b2",
                                  "adam_eps"}
    s = optim.inject_hyperparams(optim.schedule_free_adamw)(0.01, warmup_steps=4).init(params)
    assert set(s.hyperparams) == {"learning_rate", "b1", "b2", "eps", "weight_decay", "weight_lr_power"}
