"""The optimizer protocol: state structure and dtypes, jit without recompilation,
vmap, readable hyperparameters, validation at construction, interoperability."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

NAMES = sorted(optim.OPTIMIZERS)


def build(name, learning_rate=0.01, **options):
    """Every optimizer with all optional state switched on."""
    extra = {
        "sgd": {"momentum": 0.9, "nesterov": True},
        "rmsprop": {"centered": True, "momentum": 0.5},
        "adamw": {"weight_decay": 0.1},
        "lion": {"weight_decay": 0.1},
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


@pytest.mark.parametrize("name", NAMES)
def test_state_is_a_named_tuple_with_count_and_hyperparams(name):
    opt = build(name)
    params = params_of(jnp.float64)
    state = opt.init(params)
    assert type(state).__name__.endswith("State") and type(state) is not tuple
    assert state._fields[0] == "count" and state._fields[-1] == "hyperparams"
    assert state.count.dtype == jnp.int32 and state.count.shape == ()
    assert "learning_rate" in state.hyperparams
    for leaf in jax.tree.leaves(state):
        assert isinstance(leaf, jax.Array)


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
    assert optim.sgd(0.1).init(params).velocity is None
    s = optim.rmsprop(0.1).init(params)
    assert s.mean_grad is None and s.velocity is None
    _, s = optim.rmsprop(0.1).update(params, s)
    assert s.mean_grad is None and s.velocity is None


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
    moments = [getattr(state, f) for f in state._fields if f not in ("count", "hyperparams")]
    for leaf in jax.tree.leaves(moments):
        assert leaf.dtype == ACCUMULATOR[dtype]
    for v in state.hyperparams.values():
        assert v.dtype == jnp.float64  # the default float dtype (x64 is on in tests)
    reference, _ = run(jnp.float64)
    for p, r in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(p, np.float64), np.asarray(r), atol=0.1 * TOLERANCE[dtype], rtol=0)


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
# Hyperparameters and the current learning rate are readable from the state
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_current_learning_rate_is_readable_from_state(name):
    schedule = optim.linear_schedule(0.1, 0.0, 4)
    opt = build(name, learning_rate=schedule)
    params = params_of(jnp.float64)
    state = opt.init(params)
    for i in range(6):
        np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), float(schedule(i)), rtol=1e-15)
        assert int(state.count) == i
        _, state = opt.update(grads_of(jnp.float64, i), state, params)


def test_hyperparameters_are_readable_from_state():
    s = optim.adamw(3e-4, b1=0.8, b2=0.99, eps=1e-7, weight_decay=0.05).init(params_of(jnp.float64))
    got = {k: float(v) for k, v in s.hyperparams.items()}
    assert got == {"learning_rate": 3e-4, "b1": 0.8, "b2": 0.99, "eps": 1e-7, "weight_decay": 0.05}
    s = optim.rmsprop(0.1, decay=0.95, momentum=0.3).init(params_of(jnp.float64))
    assert {k: float(v) for k, v in s.hyperparams.items()} == {
        "learning_rate": 0.1, "decay": 0.95, "eps": 1e-8, "momentum": 0.3
    }


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
    assert jax.tree.structure(out) == jax.tree.structure(params)
    # update also takes params by keyword, and defaults it to None
    opt = optim.adam(0.1)
    opt.update(grads[0], opt.init(params), params=params)
    opt.update(grads[0], opt.init(params))


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
}
EPS = [n for n in NAMES if n not in ("sgd", "ema_momentum", "lion")]


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
    state = opt.init(params_of(jnp.float64))
    assert isinstance(state, optim.AdamState) and math.isclose(float(state.hyperparams["b2"]), 0.9)


def test_weight_decay_needs_params_in_update():
    opt = optim.adamw(0.1, weight_decay=0.1)
    params = params_of(jnp.float64)
    with pytest.raises(ValueError, match=re.escape("adamw: weight_decay=0.1 needs the params; call update(grads, state, params)")):
        opt.update(params, opt.init(params))


def test_schedule_must_return_a_scalar():
    opt = optim.sgd(lambda step: jnp.ones(2))
    params = params_of(jnp.float64)
    with pytest.raises(ValueError, match=re.escape("sgd: the learning-rate schedule must return a scalar, got shape (2,)")):
        opt.init(params)
