"""Optional: fdl's wrappers, schedules and recent optimizers take the same steps as optax's
implementations of the same equations (skipped where optax is not installed; it is not a
dependency of fdl or of its tests). The primary references are the NumPy transcriptions in
tests/test_optim_*.py; these tests only say that the two libraries agree.

Not compared, because optax computes something else: Schedule-Free AdamW (optax divides
by the bias-corrected √v̂ + ε and weights the average by η, where the reference
implementation, and fdl, scale η by √(1 − β₂^t) and weight by that step size; its warm-up
starts one step later), L-BFGS (optax's zoom line search for the strong Wolfe conditions,
fdl's bisection for the weak ones), SAM and Lookahead (different calling conventions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

optax = pytest.importorskip("optax")
# second references, after the NumPy ones: in CI's slow step (test_muon alone compiles for a minute)
pytestmark = [pytest.mark.x64, pytest.mark.slow]


def params_of(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(4, 6))), "v": jnp.asarray(rng.normal(size=(6, 3))),
            "b": jnp.asarray(rng.normal(size=(5,)))}


def grads_seq(n, seed=1):
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params_of()) for _ in range(n)]


def trajectory(tx, params, grads):
    state, out, update = tx.init(params), [], jax.jit(tx.update)
    for g in grads:
        u, state = update(g, state, params)
        params = jax.tree.map(lambda p, d: p + d, params, u)
        out.append(params)
    return out


def assert_same(ours, theirs, rtol=1e-10, atol=1e-12):
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for k in a:
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=rtol, atol=atol,
                                       err_msg=f"leaf {k!r} after step {step + 1}")


def test_accumulate_gradients_is_multisteps():
    p, g = params_of(), grads_seq(12)
    ours = trajectory(optim.accumulate_gradients(optim.adam(0.05), 3), p, g)
    theirs = trajectory(optax.MultiSteps(optax.adam(0.05), 3, accumulator_dtype=jnp.float64), p, g)
    assert_same(ours, theirs)


def test_apply_if_finite():
    p, g = params_of(), grads_seq(8)
    g[2] = jax.tree.map(lambda x: x.at[0].set(jnp.nan), g[2])
    g[5] = jax.tree.map(lambda x: x.at[0].set(jnp.inf), g[5])
    ours = trajectory(optim.apply_if_finite(optim.adam(0.05), 2), p, g)
    theirs = trajectory(optax.apply_if_finite(optax.adam(0.05), 2), p, g)
    assert_same(ours, theirs)


def test_partition_is_multi_transform():
    p, g = params_of(), grads_seq(10)
    labels = lambda params: jax.tree.map(lambda x: "decay" if x.ndim == 2 else "rest", params)  # noqa: E731
    ours = trajectory(optim.partition({"decay": optim.adamw(0.01, weight_decay=0.1),
                                       "rest": optim.sgd(0.1, momentum=0.9)}, labels), p, g)
    theirs = trajectory(optax.multi_transform({"decay": optax.adamw(0.01, weight_decay=0.1),
                                               "rest": optax.sgd(0.1, momentum=0.9)}, labels), p, g)
    assert_same(ours, theirs)


def test_join_schedules():
    ours = optim.join_schedules([optim.linear_schedule(0.0, 1.0, 4), optim.cosine_decay_schedule(1.0, 10)], [4])
    theirs = optax.join_schedules([optax.linear_schedule(0.0, 1.0, 4), optax.cosine_decay_schedule(1.0, 10)], [4])
    for t in range(20):
        np.testing.assert_allclose(float(ours(t)), float(theirs(t)), rtol=1e-12, atol=1e-15)


def test_muon():
    from optax import contrib

    # without Nesterov: optax's nesterov=True also turns the Adam of the other leaves into NAdam
    p, g = params_of(), grads_seq(20)
    # ε = 1e-30: optax keeps the momentum as a sum and fdl as an EMA, so a larger ε would weigh
    # differently against their norms (1/(1 − β) apart)
    ours = trajectory(optim.muon(0.02, momentum=0.95, eps=1e-30, adam_eps=1e-30, adam_learning_rate=0.003,
                                 nesterov=False), p, g)
    theirs = trajectory(contrib.muon(0.02, beta=0.95, eps=1e-30, adam_learning_rate=0.003, nesterov=False), p, g)
    assert_same(ours, theirs, rtol=1e-9, atol=1e-11)
