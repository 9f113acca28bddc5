"""Gradient transforms: clipping, weight decay, chain, learning-rate scaling,
gradient accumulation."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

pytestmark = pytest.mark.x64  # trajectories and closed forms compared in float64


def tree(seed, scale=1.0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(scale * rng.normal(size=(3, 2)), dtype),
        "b": jnp.asarray(scale * rng.normal(size=(2,)), dtype),
    }


def assert_trees_close(a, b, rtol=1e-13, atol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------


def test_global_norm():
    g = {"a": jnp.asarray([3.0]), "b": [jnp.asarray([[4.0, 12.0]])]}
    assert float(optim.global_norm(g)) == 13.0


def test_clip_by_global_norm_rescales_to_max_norm():
    g = {"a": jnp.asarray([3.0]), "b": jnp.asarray([[4.0]])}
    clip = optim.clip_by_global_norm(1.0)
    out, state = clip.update(g, clip.init(g))
    np.testing.assert_allclose(np.asarray(out["a"]), [0.6], rtol=1e-15)
    np.testing.assert_allclose(np.asarray(out["b"]), [[0.8]], rtol=1e-15)
    assert state == optim.ClipByGlobalNormState()


def test_clip_by_global_norm_passes_small_and_zero_gradients_through():
    clip = optim.clip_by_global_norm(10.0)
    g = tree(0)
    out, _ = clip.update(g, clip.init(g))
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(g)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    zeros = jax.tree.map(jnp.zeros_like, g)
    out, _ = optim.clip_by_global_norm(1e-3).update(zeros, clip.init(g))
    for x in jax.tree.leaves(out):
        assert np.all(np.asarray(x) == 0.0)


def test_clip_by_global_norm_keeps_dtype_and_direction():
    g = tree(1, scale=100.0, dtype=jnp.bfloat16)
    clip = optim.clip_by_global_norm(1.0)
    out, _ = clip.update(g, clip.init(g))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))
    np.testing.assert_allclose(float(optim.global_norm(out)), 1.0, rtol=1e-2)
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(g)):
        assert np.all(np.sign(np.asarray(x, np.float32)) == np.sign(np.asarray(y, np.float32)))


def test_clip_by_value():
    g = {"x": jnp.asarray([-2.0, -0.1, 0.3, 5.0])}
    clip = optim.clip_by_value(-0.5, 1.0)
    out, state = clip.update(g, clip.init(g))
    np.testing.assert_array_equal(np.asarray(out["x"]), [-0.5, -0.1, 0.3, 1.0])
    assert state == optim.ClipByValueState()


# ---------------------------------------------------------------------------
# Weight decay
# ---------------------------------------------------------------------------


def test_add_decayed_weights():
    g, p = tree(0), tree(1)
    wd = optim.add_decayed_weights(0.1)
    out, _ = wd.update(g, wd.init(p), p)
    assert_trees_close(out, jax.tree.map(lambda a, b: a + 0.1 * b, g, p), rtol=1e-15)


@pytest.mark.parametrize(
    "mask",
    [{"w": True, "b": False}, lambda params: jax.tree.map(lambda x: x.ndim > 1, params)],
    ids=["pytree", "function"],
)
def test_add_decayed_weights_mask_skips_biases(mask):
    g, p = tree(0), tree(1)
    wd = optim.add_decayed_weights(0.1, mask=mask)
    out, _ = wd.update(g, wd.init(p), p)
    np.testing.assert_allclose(np.asarray(out["w"]), np.asarray(g["w"] + 0.1 * p["w"]), rtol=1e-15)
    np.testing.assert_array_equal(np.asarray(out["b"]), np.asarray(g["b"]))


def test_weight_decay_mask_errors():
    p = tree(0)
    with pytest.raises(ValueError, match=re.escape("add_decayed_weights: mask must have the structure of the params")):
        optim.add_decayed_weights(0.1, mask={"w": True}).init(p)
    with pytest.raises(TypeError, match=re.escape("add_decayed_weights: mask leaves must be Python bools")):
        optim.add_decayed_weights(0.1, mask={"w": True, "b": 1}).init(p)
    with pytest.raises(ValueError, match=re.escape("adamw: mask must have the structure of the params")):
        optim.adamw(0.1, mask=[True]).init(p)
    wd = optim.add_decayed_weights(0.1)
    with pytest.raises(ValueError, match=re.escape(
        "add_decayed_weights: weight_decay=0.1 needs the params; call update(grads, state, params)"
    )):
        wd.update(p, wd.init(p))


# ---------------------------------------------------------------------------
# chain and scale_by_learning_rate
# ---------------------------------------------------------------------------


def test_chain_of_weight_decay_and_sgd_is_l2_regularised_sgd():
    g, p = tree(0), tree(1)
    opt = optim.chain(optim.add_decayed_weights(0.01), optim.sgd(0.1))
    state = opt.init(p)
    assert isinstance(state, optim.ChainState)
    assert isinstance(state.states[0], optim.AddDecayedWeightsState)
    assert isinstance(state.states[1], optim.ChainState)  # sgd is itself a chain
    out, state = opt.update(g, state, p)
    assert_trees_close(out, jax.tree.map(lambda a, b: -0.1 * (a + 0.01 * b), g, p), rtol=1e-15)
    assert int(state.count) == 1 and int(state.states[1].count) == 1


def test_chain_clip_then_adam_equals_adam_on_clipped_gradients():
    p = tree(0)
    grads = [tree(s, scale=10.0) for s in range(1, 5)]
    chained = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1))
    adam, clip = optim.adam(0.1), optim.clip_by_global_norm(1.0)
    cs, a_s, c_s = chained.init(p), adam.init(p), clip.init(p)
    for g in grads:
        u1, cs = chained.update(g, cs, p)
        clipped, c_s = clip.update(g, c_s, p)
        u2, a_s = adam.update(clipped, a_s, p)
        assert_trees_close(u1, u2, rtol=0)


def test_chain_of_nothing_is_identity_and_rejects_non_optimizers():
    g = tree(0)
    out, state = optim.chain().update(g, optim.chain().init(g))
    assert_trees_close(out, g, rtol=0)
    with pytest.raises(TypeError, match=re.escape("chain: argument 1 must be an Optimizer")):
        optim.chain(optim.sgd(0.1), lambda g: g)


def test_scale_by_learning_rate_with_schedule():
    schedule = optim.exponential_decay_schedule(0.1, 0.5, 1)
    opt = optim.scale_by_learning_rate(schedule)
    g = tree(0)
    state = opt.init(g)
    for t in range(3):
        assert int(state.count) == t
        out, state = opt.update(g, state)
        assert_trees_close(out, jax.tree.map(lambda x: -0.1 * 0.5**t * x, g), rtol=1e-15)


# ---------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------


def test_accumulate_gradients_steps_once_per_k_on_the_mean():
    k = 3
    p = tree(0)
    grads = [tree(s) for s in range(1, 7)]
    acc, adam = optim.accumulate_gradients(optim.adam(0.1), k), optim.adam(0.1)
    state, a_state = acc.init(p), adam.init(p)
    for i, g in enumerate(grads):
        updates, state = acc.update(g, state, p)
        if (i + 1) % k:
            for u in jax.tree.leaves(updates):
                assert np.all(np.asarray(u) == 0.0)
        else:
            group = grads[i + 1 - k : i + 1]
            mean = jax.tree.map(lambda *xs: sum(xs) / k, *group)
            expected, a_state = adam.update(mean, a_state, p)
            assert_trees_close(updates, expected, rtol=1e-12)
            for s in jax.tree.leaves(state.grad_sum):
                assert np.all(np.asarray(s) == 0.0)
    assert int(state.count) == 6 and int(state.micro_step) == 0
    assert int(state.inner_state.count) == 2


def test_accumulate_every_step_is_the_inner_optimizer():
    p = tree(0)
    acc, sgd = optim.accumulate_gradients(optim.sgd(0.1, momentum=0.9), 1), optim.sgd(0.1, momentum=0.9)
    s1, s2 = acc.init(p), sgd.init(p)
    for seed in range(3):
        u1, s1 = acc.update(tree(seed), s1, p)
        u2, s2 = sgd.update(tree(seed), s2, p)
        assert_trees_close(u1, u2, rtol=1e-14)  # the cond branch is compiled: ulp-level reassociation


def test_accumulate_and_chain_jit_without_recompilation():
    opt = optim.accumulate_gradients(
        optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.cosine_decay_schedule(0.1, 10))), 2
    )
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state

    p = tree(0, dtype=jnp.float32)
    state = opt.init(p)
    eager_p, eager_state = p, state
    for seed in range(4):
        g = tree(seed + 1, dtype=jnp.float32)
        p, state = step(p, state, g)
        u, eager_state = opt.update(g, eager_state, eager_p)
        eager_p = optim.apply_updates(eager_p, u)
    assert len(traces) == 1 and step._cache_size() == 1
    assert_trees_close(p, eager_p, rtol=1e-6)
    assert int(state.inner_state.count) == 2


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: optim.clip_by_global_norm(0.0), ValueError, "clip_by_global_norm: max_norm must be a finite number > 0, got 0.0"),
        (lambda: optim.clip_by_global_norm(float("nan")), ValueError, "clip_by_global_norm: max_norm must be a finite number > 0, got nan"),
        (lambda: optim.clip_by_value(1.0, -1.0), ValueError, "clip_by_value: max_value must be >= min_value (1.0), got -1.0"),
        (lambda: optim.clip_by_value(-float("inf"), 1.0), ValueError, "clip_by_value: min_value must be a finite number, got -inf"),
        (lambda: optim.add_decayed_weights(-1e-4), ValueError, "add_decayed_weights: weight_decay must be a finite number >= 0, got -0.0001"),
        (lambda: optim.scale_by_learning_rate(-1.0), ValueError, "scale_by_learning_rate: learning_rate must be a finite number >= 0"),
        (lambda: optim.accumulate_gradients(optim.sgd(0.1), 0), ValueError, "accumulate_gradients: every_k must be an int >= 1, got 0"),
        (lambda: optim.accumulate_gradients(optim.sgd(0.1), 2.0), TypeError, "accumulate_gradients: every_k must be an int, got 2.0"),
        (lambda: optim.accumulate_gradients("adam", 2), TypeError, "accumulate_gradients: optimizer must be an Optimizer"),
    ],
)
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()
