"""Wrappers around an optimizer: lookahead, partition/masked/freeze, apply_if_finite,
ema_params, and gradient accumulation equal to one big batch. References are NumPy
transcriptions of the docstrings (float64) or the wrapped optimizer run by hand."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

pytestmark = pytest.mark.x64  # closest marker wins: the float32 tests below run in float32


def params_of(seed=0):
    rng = np.random.default_rng(seed)
    return {"dense": {"w": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=(4,)))},
            "norm": {"scale": jnp.asarray(rng.normal(size=(4,)))}}


def grads_seq(n, seed=1):
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params_of()) for _ in range(n)]


def run(opt, params, grads):
    state, out = opt.init(params), []
    for g in grads:
        u, state = opt.update(g, state, params)
        params = optim.apply_updates(params, u)
        out.append(params)
    return out, state


def assert_close(a, b, rtol=1e-12, atol=1e-14):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Lookahead
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k, alpha", [(5, 0.5), (1, 0.8), (3, 1.0)])
def test_lookahead_trajectory_matches_its_equations(k, alpha):
    eta, mu = 0.05, 0.9
    params, grads = params_of(), grads_seq(40)
    got, state = run(optim.lookahead(optim.sgd(eta, momentum=mu), k, alpha), params, grads)
    theta = {key: np.asarray(v) for key, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    slow = dict(theta)
    velocity = {key: np.zeros_like(v) for key, v in theta.items()}
    for t, g in enumerate(grads, start=1):
        flat = dict(jax.tree_util.tree_flatten_with_path(g)[0])
        for key in theta:
            velocity[key] = mu * velocity[key] + np.asarray(flat[key])
            fast = theta[key] - eta * velocity[key]
            if t % k == 0:
                slow[key] = slow[key] + alpha * (fast - slow[key])
                theta[key] = slow[key]
            else:
                theta[key] = fast
        mine = dict(jax.tree_util.tree_flatten_with_path(got[t - 1])[0])
        for key in theta:
            np.testing.assert_allclose(np.asarray(mine[key]), theta[key], rtol=1e-11, atol=1e-13)
    for key, leaf in jax.tree_util.tree_flatten_with_path(state.slow)[0]:
        np.testing.assert_allclose(np.asarray(leaf), slow[key], rtol=1e-12)


def test_lookahead_errors():
    p = params_of()
    with pytest.raises(ValueError, match=re.escape("lookahead: slow_step_size must be in (0, 1], got 1.5")):
        optim.lookahead(optim.sgd(0.1), 5, 1.5)
    with pytest.raises(ValueError, match=re.escape("lookahead: sync_period must be an int >= 1, got 0")):
        optim.lookahead(optim.sgd(0.1), 0)
    with pytest.raises(TypeError, match=re.escape("lookahead: optimizer must be an Optimizer")):
        optim.lookahead("sgd")
    opt = optim.lookahead(optim.adam(0.1))
    with pytest.raises(ValueError, match=re.escape("lookahead: update needs the params")):
        opt.update(p, opt.init(p))


# ---------------------------------------------------------------------------
# partition, masked, freeze
# ---------------------------------------------------------------------------

NO_DECAY = optim.by_path(lambda path, x: "rest" if x.ndim < 2 or "norm" in path else "decay")


def test_by_path_labels_each_leaf_from_its_path():
    assert NO_DECAY(params_of()) == {"dense": {"w": "decay", "b": "rest"}, "norm": {"scale": "rest"}}


def test_partition_runs_each_group_on_its_own():
    params, grads = params_of(), grads_seq(20)
    opt = optim.partition({"decay": optim.adamw(0.01, weight_decay=0.5), "rest": optim.sgd(0.1, momentum=0.9)},
                          NO_DECAY)
    got, state = run(opt, params, grads)
    assert set(state.inner_states) == {"decay", "rest"}
    # the same steps, each optimizer on its group's leaves alone (a list in leaf order: b, w, scale)
    w, _ = run(optim.adamw(0.01, weight_decay=0.5), [params["dense"]["w"]], [[g["dense"]["w"]] for g in grads])
    rest, _ = run(optim.sgd(0.1, momentum=0.9), [params["dense"]["b"], params["norm"]["scale"]],
                  [[g["dense"]["b"], g["norm"]["scale"]] for g in grads])
    for t in range(20):
        np.testing.assert_allclose(np.asarray(got[t]["dense"]["w"]), np.asarray(w[t][0]), rtol=1e-14)
        np.testing.assert_allclose(np.asarray(got[t]["dense"]["b"]), np.asarray(rest[t][0]), rtol=1e-14)
        np.testing.assert_allclose(np.asarray(got[t]["norm"]["scale"]), np.asarray(rest[t][1]), rtol=1e-14)


def test_partition_errors_name_the_leaf():
    p = params_of()
    opt = optim.partition({"decay": optim.adam(0.1)}, NO_DECAY)
    with pytest.raises(ValueError, match=re.escape(
        "partition: the leaf at ['dense']['b'] has label 'rest', which names no transform; the transforms are ['decay']"
    )):
        opt.init(p)
    with pytest.raises(ValueError, match=re.escape("partition: labels must have the structure of the params")):
        optim.partition({"a": optim.adam(0.1)}, {"dense": "a"}).init(p)
    with pytest.raises(TypeError, match=re.escape("partition: transforms['a'] must be an Optimizer")):
        optim.partition({"a": 3}, NO_DECAY)


def test_masked_passes_the_other_gradients_through():
    params, grads = params_of(), grads_seq(3)
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    decay = optim.masked(optim.add_decayed_weights(0.3), mask)
    state = decay.init(params)
    for g in grads:
        u, state = decay.update(g, state, params)
        np.testing.assert_allclose(np.asarray(u["dense"]["w"]), np.asarray(g["dense"]["w"] + 0.3 * params["dense"]["w"]),
                                   rtol=1e-15)
        np.testing.assert_array_equal(np.asarray(u["dense"]["b"]), np.asarray(g["dense"]["b"]))
        np.testing.assert_array_equal(np.asarray(u["norm"]["scale"]), np.asarray(g["norm"]["scale"]))
    # as the last-but-one link of a chain it is add_decayed_weights' own mask
    a, _ = run(optim.chain(optim.scale_by_adam(), decay, optim.scale_by_learning_rate(0.01)), params, grads)
    b, _ = run(optim.adamw(0.01, weight_decay=0.3, mask=mask), params, grads)
    assert_close(a[-1], b[-1], rtol=1e-14)


def test_freeze_never_moves_the_frozen_leaves():
    params, grads = params_of(), grads_seq(10)
    opt = optim.freeze(optim.adam(0.05), {"dense": {"w": False, "b": True}, "norm": {"scale": True}})
    got, state = run(opt, params, grads)
    ref, _ = run(optim.adam(0.05), [params["dense"]["w"]], [[g["dense"]["w"]] for g in grads])
    for t in range(10):
        np.testing.assert_array_equal(np.asarray(got[t]["dense"]["b"]), np.asarray(params["dense"]["b"]))
        np.testing.assert_array_equal(np.asarray(got[t]["norm"]["scale"]), np.asarray(params["norm"]["scale"]))
        np.testing.assert_allclose(np.asarray(got[t]["dense"]["w"]), np.asarray(ref[t][0]), rtol=1e-14)
    assert state.inner_states["frozen"] == optim.SetToZeroState()


# ---------------------------------------------------------------------------
# apply_if_finite
# ---------------------------------------------------------------------------


@pytest.mark.float32
def test_apply_if_finite_skips_and_counts_non_finite_steps():
    p = {"x": jnp.asarray([1.0, 2.0])}
    good, bad = {"x": jnp.asarray([0.5, -1.0])}, {"x": jnp.asarray([jnp.nan, 1.0])}
    opt = optim.apply_if_finite(optim.sgd(0.1, momentum=0.9), max_consecutive_errors=2)
    step = jax.jit(opt.update)
    state = opt.init(p)
    u, state = step(good, state, p)
    velocity = np.asarray(state.inner_state.states[0].velocity["x"])
    np.testing.assert_allclose(np.asarray(u["x"]), [-0.05, 0.1], rtol=1e-6)
    for n in (1, 2):  # skipped: zero update, inner state untouched
        u, state = step(bad, state, p)
        np.testing.assert_array_equal(np.asarray(u["x"]), [0.0, 0.0])
        np.testing.assert_array_equal(np.asarray(state.inner_state.states[0].velocity["x"]), velocity)
        assert (int(state.notfinite_count), bool(state.last_finite), int(state.total_notfinite)) == (n, False, n)
    u, state = step(bad, state, p)  # a third in a row is more than 2: applied, the NaN shows
    assert np.isnan(np.asarray(u["x"])[0]) and int(state.notfinite_count) == 3
    u, state = step(good, state, p)
    assert (int(state.notfinite_count), bool(state.last_finite), int(state.total_notfinite)) == (0, True, 3)
    assert step._cache_size() == 1


# ---------------------------------------------------------------------------
# EMA of the parameters
# ---------------------------------------------------------------------------


def test_ema_params_average_matches_its_equation():
    beta = 0.9
    params, grads = params_of(), grads_seq(30)
    got, state = run(optim.ema_params(optim.adam(0.05), beta), params, grads)
    plain, _ = run(optim.adam(0.05), params, grads)
    assert_close(got[-1], plain[-1], rtol=0, atol=0)  # the updates are the optimizer's
    average = jax.tree.map(np.asarray, params)
    for theta in plain:
        average = jax.tree.map(lambda a, t: beta * a + (1 - beta) * np.asarray(t), average, theta)
    assert_close(state.ema, average, rtol=1e-12)


@pytest.mark.float32
def test_ema_params_keeps_float32_averages_of_bfloat16_params():
    p = {"x": jnp.ones(3, jnp.bfloat16)}
    opt = optim.ema_params(optim.sgd(0.1), 0.5)
    state = opt.init(p)
    u, state = opt.update({"x": jnp.ones(3, jnp.bfloat16)}, state, p)
    assert state.ema["x"].dtype == jnp.float32
    # the update −0.1 arrives rounded to bfloat16; the average is formed in float32
    step = float(jnp.asarray(-0.1, jnp.bfloat16))
    np.testing.assert_allclose(np.asarray(state.ema["x"]), 0.5 + 0.5 * (1.0 + step), rtol=1e-7)


# ---------------------------------------------------------------------------
# Gradient accumulation equals one big batch
# ---------------------------------------------------------------------------


def test_accumulate_gradients_equals_one_big_batch():
    """k micro-batches of equal size, accumulated, take the steps of their union."""
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(48, 5))), jnp.asarray(rng.normal(size=(48, 2)))
    params = {"w": jnp.asarray(rng.normal(size=(5, 2))), "b": jnp.zeros(2)}

    def loss(p, xb, yb):
        return jnp.mean((xb @ p["w"] + p["b"][None, :] - yb) ** 2)

    k, big = 4, 12  # 4 big batches of 12, each as 4 micro-batches of 3
    acc, plain = optim.accumulate_gradients(optim.adam(0.05), k), optim.adam(0.05)
    pa, sa = params, acc.init(params)
    pb, sb = params, plain.init(params)
    for start in range(0, 48, big):
        for m in range(start, start + big, big // k):
            u, sa = acc.update(jax.grad(loss)(pa, x[m:m + big // k], y[m:m + big // k]), sa, pa)
            pa = optim.apply_updates(pa, u)
        u, sb = plain.update(jax.grad(loss)(pb, x[start:start + big], y[start:start + big]), sb, pb)
        pb = optim.apply_updates(pb, u)
        assert_close(pa, pb, rtol=1e-12)
    assert int(sa.inner_state.count) == 4


# ---------------------------------------------------------------------------
# Every wrapper, schedule and step helper in float32, as users run them
# ---------------------------------------------------------------------------

F32_CASES = {
    "lookahead": lambda: optim.lookahead(optim.adam(0.05), 2),
    "partition": lambda: optim.partition({"decay": optim.adamw(0.05), "rest": optim.sgd(0.05)}, NO_DECAY),
    "masked": lambda: optim.chain(optim.masked(optim.add_decayed_weights(0.1), {"dense": {"w": True, "b": False},
                                                                                   "norm": {"scale": False}}),
                                  optim.sgd(0.05)),
    "freeze": lambda: optim.freeze(optim.lion(0.01), {"dense": {"w": False, "b": True}, "norm": {"scale": True}}),
    "ema_params": lambda: optim.ema_params(optim.radam(0.05), 0.9),
    "sgdr": lambda: optim.adabelief(optim.sgdr_schedule(0.05, 2, period_mult=2)),
    "join": lambda: optim.lamb(optim.join_schedules([optim.constant_schedule(0.01), optim.sgdr_schedule(0.05, 2)], [1])),
    "reduce_on_plateau": lambda: optim.reduce_on_plateau(optim.adafactor(0.05, min_dim_size_to_factor=2), patience=0),
    "loss_scale": lambda: optim.dynamic_loss_scale(optim.muon(0.05), 4.0),
    "schedule_free": lambda: optim.schedule_free_adamw(0.05, warmup_steps=2),
    "lars": lambda: optim.lars(0.05, trust_coefficient=0.5),
}


@pytest.mark.float32
@pytest.mark.parametrize("name", sorted(F32_CASES))
def test_runs_jitted_in_float32_like_float64(name):
    def run():
        opt = F32_CASES[name]()
        step = jax.jit(opt.update)
        params, state = params_of(), opt.init(params_of())
        for g in grads_seq(4):
            u, state = step(g, state, params)
            params = optim.apply_updates(params, u)
            if name == "reduce_on_plateau":
                state = optim.observe_metric(state, 1.0)  # no improvement: the scale drops each time
        return params, step

    params, step = run()
    assert step._cache_size() == 1
    for p in jax.tree.leaves(params):
        assert p.dtype == jnp.float32
    with jax.enable_x64(True):
        reference, _ = run()
    for p, r in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        assert r.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(p, np.float64), np.asarray(r), rtol=2e-5, atol=2e-6)


@pytest.mark.float32
def test_lbfgs_and_sam_steps_and_orthogonalize_in_float32():
    def f(p):
        return jnp.sum((p["x"] - jnp.arange(3.0)) ** 2) + jnp.sum(p["x"] ** 4)

    opt = optim.lbfgs(5)
    p, state = {"x": jnp.zeros(3, jnp.float32)}, opt.init({"x": jnp.zeros(3, jnp.float32)})
    step = jax.jit(lambda p, s: optim.lbfgs_step(opt, f, p, s))
    for _ in range(20):
        p, state, value = step(p, state)
    assert p["x"].dtype == jnp.float32 and step._cache_size() == 1
    np.testing.assert_allclose(np.asarray(jax.grad(f)(p)["x"]), 0.0, atol=1e-4)
    x = optim.orthogonalize(jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32))
    assert x.dtype == jnp.float32
    assert np.all(np.abs(np.linalg.svd(np.asarray(x), compute_uv=False) - 1.0) < 0.35)
