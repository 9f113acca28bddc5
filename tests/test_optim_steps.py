"""Optimizers that need more than one gradient per step or act on the loss: SAM (and
sam_step), L-BFGS with its line search (lbfgs_step), dynamic loss scaling. References
are NumPy transcriptions of the docstrings (float64)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

# ---------------------------------------------------------------------------
# SAM
# ---------------------------------------------------------------------------

A = np.array([[3.0, 0.5, 0.0, 0.2], [0.5, 2.0, 0.3, 0.0], [0.0, 0.3, 1.0, 0.1], [0.2, 0.0, 0.1, 0.5]])
B = np.array([1.0, -2.0, 0.5, 0.3])


def quartic(p):
    """½ xᵀAx − bᵀx + ¼ Σ x⁴: curvature that changes, so the perturbed gradient differs."""
    x = p["x"]
    return 0.5 * x @ (jnp.asarray(A) @ x) - jnp.asarray(B) @ x + 0.25 * jnp.sum(x**4)


def np_quartic_grad(x):
    return A @ x - B + x**3


@pytest.mark.x64
def test_sam_trajectory_matches_its_equations():
    rho, eta, mu = 0.1, 0.05, 0.9
    opt = optim.sam(optim.sgd(eta, momentum=mu), rho)
    p = {"x": jnp.asarray([1.0, -1.0, 0.5, 2.0])}
    state = opt.init(p)
    x, v = np.asarray(p["x"]), np.zeros(4)
    step = jax.jit(lambda p, s: optim.sam_step(opt, quartic, p, s))
    for _ in range(40):
        p, state, loss = step(p, state)
        g = np_quartic_grad(x)
        g_sam = np_quartic_grad(x + rho * g / np.linalg.norm(g))
        v = mu * v + g_sam
        x = x - eta * v
        np.testing.assert_allclose(np.asarray(p["x"]), x, rtol=1e-10, atol=1e-12)
    assert int(state.count) == 80 and int(state.inner_state.count) == 40


@pytest.mark.x64
def test_sam_ascent_call_moves_to_the_worst_point_and_descent_returns():
    opt = optim.sam(optim.sgd(0.1), 0.2)
    p = {"x": jnp.asarray([1.0, -1.0, 0.5, 2.0])}
    state = opt.init(p)
    g = jax.grad(quartic)(p)
    u, state = opt.update(g, state, p)
    gx = np.asarray(g["x"])
    np.testing.assert_allclose(np.asarray(u["x"]), 0.2 * gx / np.linalg.norm(gx), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(state.origin["x"]), np.asarray(p["x"]))
    assert int(state.inner_state.count) == 0  # the inner optimizer has not moved
    perturbed = optim.apply_updates(p, u)
    u, state = opt.update(jax.grad(quartic)(perturbed), state, perturbed)
    after = optim.apply_updates(perturbed, u)
    expected = np.asarray(p["x"]) - 0.1 * np.asarray(jax.grad(quartic)(perturbed)["x"])
    np.testing.assert_allclose(np.asarray(after["x"]), expected, rtol=1e-12)


@pytest.mark.float32
def test_sam_step_jits_once_in_float32():
    opt = optim.sam(optim.adam(0.05), 0.05)
    step = jax.jit(lambda p, s: optim.sam_step(opt, quartic, p, s))
    p = {"x": jnp.asarray([1.0, -1.0, 0.5, 2.0], jnp.float32)}
    state = opt.init(p)
    start = float(quartic(p))
    for _ in range(100):
        p, state, loss = step(p, state)
    assert p["x"].dtype == jnp.float32 and step._cache_size() == 1
    assert float(quartic(p)) < start - 1.0
    with pytest.raises(ValueError, match=re.escape("sam: rho must be a finite number > 0, got 0.0")):
        optim.sam(optim.adam(0.1), 0.0)


# ---------------------------------------------------------------------------
# L-BFGS
# ---------------------------------------------------------------------------


def rosenbrock(p):
    x = p["x"]
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def np_rosenbrock(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


def np_rosenbrock_grad(x):
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return g


def np_lbfgs(x, iterations, m, c1=1e-4, c2=0.9, max_tries=30, curvature_eps=1e-10):
    """Two-loop recursion and the Wolfe bisection line search, as the docstrings state them."""
    pairs, prev, out = [], None, []
    for _ in range(iterations):
        f, g = np_rosenbrock(x), np_rosenbrock_grad(x)
        if prev is not None:
            s, y = x - prev[0], g - prev[1]
            if s @ y > curvature_eps * np.linalg.norm(s) * np.linalg.norm(y):
                pairs = (pairs + [(s, y)])[-m:]
        q, alphas = g.copy(), []
        for s, y in reversed(pairs):
            a = (s @ q) / (y @ s)
            q -= a * y
            alphas.append(a)
        r = q * ((pairs[-1][0] @ pairs[-1][1]) / (pairs[-1][1] @ pairs[-1][1]) if pairs else 1.0)
        for (s, y), a in zip(pairs, reversed(alphas)):
            r += (a - (y @ r) / (y @ s)) * s
        u = -r
        step, lo, hi, tries = 1.0, 0.0, np.inf, 0
        while tries < max_tries:
            decrease = np_rosenbrock(x + step * u) <= f + c1 * step * (g @ u)
            curvature = np_rosenbrock_grad(x + step * u) @ u >= c2 * (g @ u)
            if decrease and curvature:
                break
            if not decrease:
                hi = step
            else:
                lo = step
            step = 2.0 * step if np.isinf(hi) else 0.5 * (lo + hi)
            tries += 1
        prev = (x, g)
        x = x + step * u
        out.append(x.copy())
    return out


@pytest.mark.x64
@pytest.mark.parametrize("m", [1, 3, pytest.param(10, marks=pytest.mark.slow)])  # m = 10: reaches_rosenbrocks_minimum
def test_lbfgs_trajectory_matches_its_equations(m):
    x0 = np.array([-1.2, 1.0, -0.5, 0.8, 1.3])
    want = np_lbfgs(x0, 25, m)
    opt = optim.lbfgs(m)
    step = jax.jit(lambda p, s: optim.lbfgs_step(opt, rosenbrock, p, s))
    p = {"x": jnp.asarray(x0)}
    state = opt.init(p)
    for k in range(25):
        p, state, value = step(p, state)
        np.testing.assert_allclose(np.asarray(p["x"]), want[k], rtol=1e-9, atol=1e-11,
                                   err_msg=f"iteration {k + 1}")


@pytest.mark.x64
def test_lbfgs_reaches_rosenbrocks_minimum():
    opt = optim.lbfgs(10)
    step = jax.jit(lambda p, s: optim.lbfgs_step(opt, rosenbrock, p, s))
    p = {"x": jnp.asarray([-1.2, 1.0])}
    state = opt.init(p)
    for _ in range(100):
        p, state, value = step(p, state)
    np.testing.assert_allclose(np.asarray(p["x"]), [1.0, 1.0], atol=1e-8)
    assert step._cache_size() == 1


@pytest.mark.x64
@pytest.mark.slow  # compiles for half a minute; the trajectory tests pin every step
def test_lbfgs_is_newton_on_a_quadratic_after_enough_pairs():
    # f = ½ xᵀAx − bᵀx in 4 dimensions: with exact line searches BFGS ends in n steps; with
    # Armijo steps, after the pairs span the space the minimiser is reached to round-off
    def f(p):
        return 0.5 * p["x"] @ (jnp.asarray(A) @ p["x"]) - jnp.asarray(B) @ p["x"]

    opt = optim.lbfgs(10)
    step = jax.jit(lambda p, s: optim.lbfgs_step(opt, f, p, s))
    p = {"x": jnp.zeros(4)}
    state = opt.init(p)
    for _ in range(30):
        p, state, _ = step(p, state)
    np.testing.assert_allclose(np.asarray(p["x"]), np.linalg.solve(A, B), rtol=1e-10)


# ---------------------------------------------------------------------------
# Dynamic loss scaling
# ---------------------------------------------------------------------------


@pytest.mark.float32
def test_overflowing_step_is_skipped_and_the_scale_backs_off():
    opt = optim.dynamic_loss_scale(optim.sgd(0.1, momentum=0.9), 2.0**10, growth_interval=3)
    p = {"w": jnp.ones(3, jnp.float16)}
    state = opt.init(p)
    g = {"w": jnp.asarray([2.0**10, -2.0**11, 2.0**9], jnp.float16)}  # = S · (1, −2, 0.5)
    u, state = opt.update(g, state, p)
    np.testing.assert_array_equal(np.asarray(u["w"], np.float32), -0.1 * np.array([1.0, -2.0, 0.5], np.float32).astype(np.float16))
    velocity = np.asarray(state.inner_state.states[0].velocity["w"])
    bad = {"w": jnp.asarray([jnp.inf, 1.0, 1.0], jnp.float16)}
    u, state = opt.update(bad, state, p)
    assert np.all(np.asarray(u["w"]) == 0) and u["w"].dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(state.inner_state.states[0].velocity["w"]), velocity)
    assert (float(state.scale), int(state.good_steps), int(state.skipped)) == (2.0**9, 0, 1)
    for n in (1, 2):
        _, state = opt.update(g, state, p)
        assert (float(state.scale), int(state.good_steps)) == (2.0**9, n)
    _, state = opt.update(g, state, p)  # the third good step in a row grows the scale
    assert (float(state.scale), int(state.good_steps), int(state.skipped)) == (2.0**10, 0, 1)


@pytest.mark.float32
def test_loss_scaling_rescues_float16_gradients_that_underflow():
    x = jnp.full(3, 1e-4, jnp.float16)

    def loss(w):
        return jnp.sum(w * x) * jnp.float16(1e-4)  # ∂L/∂w = 1e-8: below float16's smallest subnormal

    w = jnp.ones(3, jnp.float16)
    assert np.all(np.asarray(jax.grad(loss)(w)) == 0)  # lost without scaling
    opt = optim.dynamic_loss_scale(optim.sgd(1.0))
    state = opt.init(w)
    grads = jax.grad(lambda w: optim.scale_loss(loss(w), state))(w)
    assert grads.dtype == jnp.float16 and np.all(np.asarray(grads) > 0)
    unscaled = np.asarray(grads, np.float32) / 2.0**15
    np.testing.assert_allclose(unscaled, 1e-8, rtol=2e-3)
    u, state = opt.update(grads, state, w)
    # the update is formed from the float32 unscaled gradient, then rounded to float16 (zero here:
    # 1e-8 is below float16's range, which is why a float32 master copy of the weights is kept)
    assert u.dtype == jnp.float16 and int(state.skipped) == 0


@pytest.mark.float32
def test_loss_scaling_with_float32_master_weights_applies_the_small_step():
    opt = optim.dynamic_loss_scale(optim.sgd(1.0))
    master = {"w": jnp.ones(2, jnp.float32)}
    state = opt.init(master)
    scaled = {"w": jnp.asarray([2.0**15 * 1e-8, 2.0**15 * 2e-8], jnp.float16)}  # fp16 grads of S·L
    u, state = opt.update(jax.tree.map(lambda g: g.astype(jnp.float32), scaled), state, master)
    np.testing.assert_allclose(np.asarray(u["w"]), [-1e-8, -2e-8], rtol=2e-3)


@pytest.mark.parametrize("call, error, message", [
    (lambda: optim.dynamic_loss_scale(optim.sgd(0.1), backoff_factor=1.0), ValueError,
     "dynamic_loss_scale: backoff_factor must be in (0, 1), got 1.0"),
    (lambda: optim.dynamic_loss_scale(optim.sgd(0.1), growth_interval=0), ValueError,
     "dynamic_loss_scale: growth_interval must be an int >= 1, got 0"),
    (lambda: optim.scale_loss(1.0, optim.sgd(0.1).init({})), TypeError,
     "scale_loss: state must be the DynamicLossScaleState"),
    (lambda: optim.lbfgs(0), ValueError, "scale_by_lbfgs: memory_size must be an int >= 1, got 0"),
])
@pytest.mark.float32
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()
