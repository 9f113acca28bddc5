"""Tests for the named optimizers in `fdl.optim`.

The reference for every optimizer is an independent, step-by-step NumPy
evaluation of the equations in its docstring (`REFERENCES` below: plain loops,
float64, no fdl code). Closed-form expectations come from hand computations.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

pytestmark = pytest.mark.x64  # trajectories and closed forms compared in float64

# ---------------------------------------------------------------------------
# NumPy references, written from the docstrings (one leaf, element-wise).
# Each is (init(θ) -> state dict, step(g, θ, state, t, η) -> (u, state)).
# ---------------------------------------------------------------------------


class Ref(NamedTuple):
    init: object
    step: object


def ref_sgd(momentum=0.0, nesterov=False):
    def step(g, p, s, t, eta):
        if momentum == 0.0:
            return -eta * g, s
        v = momentum * s["v"] + g
        d = g + momentum * v if nesterov else v
        return -eta * d, {"v": v}

    return Ref(lambda p: {"v": np.zeros_like(p)}, step)


def ref_ema_momentum(beta):
    def step(g, p, s, t, eta):
        v = beta * s["v"] + (1 - beta) * g
        return -eta * v, {"v": v}

    return Ref(lambda p: {"v": np.zeros_like(p)}, step)


def ref_adagrad(initial, eps):
    def step(g, p, s, t, eta):
        G = s["G"] + g**2
        return -eta * g / (np.sqrt(G) + eps), {"G": G}

    return Ref(lambda p: {"G": np.full_like(p, initial)}, step)


def ref_adadelta(rho, eps):
    def step(g, p, s, t, eta):
        Eg = rho * s["Eg"] + (1 - rho) * g**2
        delta = -(np.sqrt(s["Ed"] + eps) / np.sqrt(Eg + eps)) * g
        Ed = rho * s["Ed"] + (1 - rho) * delta**2
        return eta * delta, {"Eg": Eg, "Ed": Ed}

    return Ref(lambda p: {"Eg": np.zeros_like(p), "Ed": np.zeros_like(p)}, step)


def ref_rmsprop(decay, eps, centered, momentum):
    def step(g, p, s, t, eta):
        nu = decay * s["nu"] + (1 - decay) * g**2
        mbar = decay * s["mbar"] + (1 - decay) * g
        sq = np.maximum(nu - mbar**2, 0.0) if centered else nu
        d = g / (np.sqrt(sq) + eps)
        b = momentum * s["b"] + d
        u = -eta * b if momentum > 0 else -eta * d
        return u, {"nu": nu, "mbar": mbar, "b": b}

    return Ref(lambda p: {k: np.zeros_like(p) for k in ("nu", "mbar", "b")}, step)


def ref_adam(b1, b2, eps, weight_decay=0.0):
    def step(g, p, s, t, eta):
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return -eta * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p), {"m": m, "v": v}

    return Ref(lambda p: {"m": np.zeros_like(p), "v": np.zeros_like(p)}, step)


def ref_adamax(b1, b2, eps):
    def step(g, p, s, t, eta):
        m = b1 * s["m"] + (1 - b1) * g
        u_inf = np.maximum(b2 * s["u"], np.abs(g))
        return -(eta / (1 - b1**t)) * m / (u_inf + eps), {"m": m, "u": u_inf}

    return Ref(lambda p: {"m": np.zeros_like(p), "u": np.zeros_like(p)}, step)


def ref_nadam(b1, b2, eps):
    def step(g, p, s, t, eta):
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g**2
        m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return -eta * m_hat / (np.sqrt(v_hat) + eps), {"m": m, "v": v}

    return Ref(lambda p: {"m": np.zeros_like(p), "v": np.zeros_like(p)}, step)


def ref_amsgrad(b1, b2, eps):
    def step(g, p, s, t, eta):
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g**2
        vmax = np.maximum(s["vmax"], v)
        m_hat = m / (1 - b1**t)
        vmax_hat = vmax / (1 - b2**t)
        return -eta * m_hat / (np.sqrt(vmax_hat) + eps), {"m": m, "v": v, "vmax": vmax}

    return Ref(lambda p: {k: np.zeros_like(p) for k in ("m", "v", "vmax")}, step)


def ref_lion(b1, b2, weight_decay):
    def step(g, p, s, t, eta):
        c = b1 * s["m"] + (1 - b1) * g
        u = -eta * (np.sign(c) + weight_decay * p)
        m = b2 * s["m"] + (1 - b2) * g
        return u, {"m": m}

    return Ref(lambda p: {"m": np.zeros_like(p)}, step)


def no_decay_on_vectors(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


# (id, build(learning_rate) -> Optimizer, reference, leaves the reference skips weight decay on)
CASES = [
    ("sgd", lambda lr: optim.sgd(lr), ref_sgd()),
    ("sgd_momentum", lambda lr: optim.sgd(lr, momentum=0.8), ref_sgd(0.8)),
    ("sgd_nesterov", lambda lr: optim.sgd(lr, momentum=0.7, nesterov=True), ref_sgd(0.7, True)),
    ("ema_momentum", lambda lr: optim.ema_momentum(lr, beta=0.85), ref_ema_momentum(0.85)),
    ("adagrad", lambda lr: optim.adagrad(lr, initial_accumulator_value=0.1, eps=1e-7), ref_adagrad(0.1, 1e-7)),
    ("adadelta", lambda lr: optim.adadelta(lr, rho=0.8, eps=1e-5), ref_adadelta(0.8, 1e-5)),
    ("rmsprop", lambda lr: optim.rmsprop(lr, decay=0.8, eps=1e-6), ref_rmsprop(0.8, 1e-6, False, 0.0)),
    (
        "rmsprop_centered_momentum",
        lambda lr: optim.rmsprop(lr, decay=0.9, eps=1e-6, centered=True, momentum=0.5),
        ref_rmsprop(0.9, 1e-6, True, 0.5),
    ),
    ("adam", lambda lr: optim.adam(lr, b1=0.8, b2=0.95, eps=1e-6), ref_adam(0.8, 0.95, 1e-6)),
    (
        "adamw",
        lambda lr: optim.adamw(lr, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.3, mask=no_decay_on_vectors),
        ref_adam(0.8, 0.95, 1e-6, weight_decay=0.3),
    ),
    ("adamax", lambda lr: optim.adamax(lr, b1=0.8, b2=0.95, eps=1e-6), ref_adamax(0.8, 0.95, 1e-6)),
    ("nadam", lambda lr: optim.nadam(lr, b1=0.8, b2=0.95, eps=1e-6), ref_nadam(0.8, 0.95, 1e-6)),
    ("amsgrad", lambda lr: optim.amsgrad(lr, b1=0.8, b2=0.95, eps=1e-6), ref_amsgrad(0.8, 0.95, 1e-6)),
    (
        "lion",
        lambda lr: optim.lion(lr, b1=0.8, b2=0.95, weight_decay=0.3, mask=no_decay_on_vectors),
        ref_lion(0.8, 0.95, 0.3),
    ),
]
CASE_IDS = [c[0] for c in CASES]
BUILDERS = {name: build for name, build, _ in CASES}
ALL_OPTIMIZER_NAMES = sorted(optim.OPTIMIZERS)


# The optimizers whose trajectories tests/test_optim_recent.py checks the same way.
RECENT = {"radam", "adabelief", "lamb", "lars", "adafactor", "muon", "schedule_free_adamw"}


def test_cases_cover_every_optimizer():
    covered = {name.split("_")[0] if name.startswith(("sgd", "rmsprop")) else name for name in CASE_IDS}
    assert covered | RECENT == set(ALL_OPTIMIZER_NAMES) and not covered & RECENT


# ---------------------------------------------------------------------------
# Fixtures: a small two-leaf problem
# ---------------------------------------------------------------------------


def make_params(dtype=jnp.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 4)), dtype),
        "b": jnp.asarray(rng.normal(size=(5,)), dtype),
    }


def make_grads(n, dtype=jnp.float64, seed=1):
    rng = np.random.default_rng(seed)
    return [
        {"w": jnp.asarray(rng.normal(size=(3, 4)), dtype), "b": jnp.asarray(rng.normal(size=(5,)), dtype)}
        for _ in range(n)
    ]


def np_warmup_cosine(peak, warmup, total):
    def lr(step):
        if step <= warmup:
            return peak * step / warmup
        frac = min(step - warmup, total - warmup) / (total - warmup)
        return peak * 0.5 * (1 + math.cos(math.pi * frac))

    return lr


LEARNING_RATES = {
    "constant": (0.03, lambda step: 0.03),
    "warmup_cosine": (optim.warmup_cosine_decay_schedule(0.03, 10, 80), np_warmup_cosine(0.03, 10, 80)),
}


def run_library(opt, params, grads_seq):
    state = opt.init(params)
    trajectory = []
    for g in grads_seq:
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, state


def run_reference(ref, params, grads_seq, lr_fn, decays=lambda name: True):
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    states = {k: ref.init(v) for k, v in p.items()}
    trajectory = []
    for i, g in enumerate(grads_seq):
        t, eta = i + 1, lr_fn(i)
        for k in p:
            step = ref.step
            u, states[k] = step(np.asarray(g[k], np.float64), p[k] if decays(k) else 0.0 * p[k], states[k], t, eta)
            p[k] = p[k] + u
        trajectory.append({k: v.copy() for k, v in p.items()})
    return trajectory


# ---------------------------------------------------------------------------
# 100-step trajectories equal the docstring equations (float64)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("lr_kind", sorted(LEARNING_RATES))
@pytest.mark.parametrize("name, build, ref", CASES, ids=CASE_IDS)
def test_trajectory_matches_docstring_equations(name, build, ref, lr_kind):
    lr, lr_fn = LEARNING_RATES[lr_kind]
    params, grads_seq = make_params(), make_grads(100)
    got, _ = run_library(build(lr), params, grads_seq)
    # adamw/lion decay only the matrix (mask skips the vector); the reference
    # applies the decay term to θ, so pass θ = 0 for the masked-out leaf.
    want = run_reference(ref, params, grads_seq, lr_fn, decays=lambda k: k == "w")
    for step, (g_params, w_params) in enumerate(zip(got, want)):
        for k in w_params:
            np.testing.assert_allclose(
                np.asarray(g_params[k]), w_params[k], rtol=1e-10, atol=1e-12,
                err_msg=f"{name}: leaf {k!r} differs after step {step + 1}",
            )


# ---------------------------------------------------------------------------
# Closed-form expectations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, build, factor",
    [
        ("adam", lambda: optim.adam(0.1, eps=1e-8), 1.0),
        ("adamw", lambda: optim.adamw(0.1, eps=1e-8, weight_decay=0.0), 1.0),
        ("amsgrad", lambda: optim.amsgrad(0.1, eps=1e-8), 1.0),
        ("adamax", lambda: optim.adamax(0.1, eps=1e-8), 1.0),
        ("lion", lambda: optim.lion(0.1), 1.0),
        # m̂_1 = β₁(1 − β₁)g/(1 − β₁²) + g = (1 + β₁/(1 + β₁)) g
        ("nadam", lambda: optim.nadam(0.1, b1=0.9, eps=1e-8), 1.0 + 0.9 / 1.9),
    ],
)
def test_first_step_is_minus_lr_sign_g(name, build, factor):
    params, (g,) = make_params(), make_grads(1)
    updates, _ = build().update(g, build().init(params), params)
    for k in g:
        expected = -0.1 * factor * np.sign(np.asarray(g[k]))
        # exact up to ε: |u + η sign g| <= η ε / |g|
        np.testing.assert_allclose(np.asarray(updates[k]), expected, rtol=0, atol=0.1 * factor * 1e-8 / 1e-3)
        assert np.all(np.abs(np.asarray(updates[k])) <= 0.1 * factor)


def test_adam_first_step_exact_with_eps():
    params, (g,) = make_params(), make_grads(1)
    opt = optim.adam(0.1, eps=0.5)
    updates, _ = opt.update(g, opt.init(params), params)
    for k in g:
        gk = np.asarray(g[k])
        np.testing.assert_allclose(np.asarray(updates[k]), -0.1 * gk / (np.abs(gk) + 0.5), rtol=1e-14)


def test_rmsprop_adagrad_adadelta_first_steps():
    params, (g,) = make_params(), make_grads(1)
    gw = np.asarray(g["w"])
    u, _ = optim.rmsprop(0.1, decay=0.9, eps=1e-3).update(g, optim.rmsprop(0.1).init(params))
    np.testing.assert_allclose(np.asarray(u["w"]), -0.1 * gw / (math.sqrt(0.1) * np.abs(gw) + 1e-3), rtol=1e-13)
    u, _ = optim.adagrad(0.1, eps=1e-3).update(g, optim.adagrad(0.1).init(params))
    np.testing.assert_allclose(np.asarray(u["w"]), -0.1 * gw / (np.abs(gw) + 1e-3), rtol=1e-13)
    u, _ = optim.adadelta(1.0, rho=0.9, eps=1e-6).update(g, optim.adadelta().init(params))
    expected = -math.sqrt(1e-6) / np.sqrt(0.1 * gw**2 + 1e-6) * gw
    np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=1e-13)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_on_constant_gradient_is_a_geometric_series(nesterov):
    eta, mu = 0.1, 0.9
    g = {"x": jnp.asarray([1.0, -2.0, 0.5])}
    theta0 = {"x": jnp.zeros(3)}
    opt = optim.sgd(eta, momentum=mu, nesterov=nesterov)
    state, theta = opt.init(theta0), theta0
    displacement = 0.0
    for t in range(1, 31):
        updates, state = opt.update(g, state, theta)
        theta = optim.apply_updates(theta, updates)
        v_t = (1 - mu**t) / (1 - mu)  # Σ_{k<t} μ^k
        np.testing.assert_allclose(np.asarray(state.states[0].velocity["x"]), v_t * np.asarray(g["x"]), rtol=1e-13)
        step = v_t if not nesterov else 1 + mu * v_t
        displacement += step
        np.testing.assert_allclose(np.asarray(updates["x"]), -eta * step * np.asarray(g["x"]), rtol=1e-13)
    if not nesterov:  # Σ_{t=1}^T (1 − μ^t)/(1 − μ) = (T − μ(1 − μ^T)/(1 − μ))/(1 − μ)
        T = 30
        closed = (T - mu * (1 - mu**T) / (1 - mu)) / (1 - mu)
        np.testing.assert_allclose(np.asarray(theta["x"]), -eta * closed * np.asarray(g["x"]), rtol=1e-12)


def test_ema_momentum_on_constant_gradient():
    beta, eta = 0.9, 0.1
    g = {"x": jnp.asarray([1.0, -3.0])}
    opt = optim.ema_momentum(eta, beta=beta)
    state = opt.init(g)
    for t in range(1, 21):
        updates, state = opt.update(g, state)
        np.testing.assert_allclose(np.asarray(updates["x"]), -eta * (1 - beta**t) * np.asarray(g["x"]), rtol=1e-13)


def test_gradient_descent_on_quadratic_contracts_at_analytic_rate():
    # f(θ) = ½ Σ a_i θ_i², ∇f = a ⊙ θ, so θ_t = (1 − η a)^t ⊙ θ_0.
    a = jnp.asarray([0.5, 2.0, 3.0, 6.0])
    eta = 0.3
    theta0 = jnp.asarray([1.0, -1.0, 2.0, 0.1])
    opt = optim.sgd(eta)
    theta, state = theta0, opt.init(theta0)
    for _ in range(25):
        updates, state = opt.update(a * theta, state, theta)
        theta = optim.apply_updates(theta, updates)
    expected = (1 - eta * np.asarray(a)) ** 25 * np.asarray(theta0)
    np.testing.assert_allclose(np.asarray(theta), expected, rtol=1e-11, atol=1e-300)


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99])
def test_the_two_momentum_forms_coincide_after_rescaling(beta):
    params, grads_seq = make_params(), make_grads(50)
    schedule = optim.cosine_decay_schedule(0.05, 50)
    ema, _ = run_library(optim.ema_momentum(schedule, beta=beta), params, grads_seq)
    acc, _ = run_library(optim.sgd(lambda t: (1 - beta) * schedule(t), momentum=beta), params, grads_seq)
    for a, b in zip(ema, acc):
        for k in a:
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-12, atol=1e-14)


def test_adamw_without_decay_is_adam_and_decay_is_decoupled():
    params, grads_seq = make_params(), make_grads(10)
    a, _ = run_library(optim.adam(0.01), params, grads_seq)
    w, _ = run_library(optim.adamw(0.01, weight_decay=0.0), params, grads_seq)
    for x, y in zip(a, w):
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))
    # Decoupled: with g = 0 the Adam direction is 0, the update is exactly −η λ θ.
    zeros = jax.tree.map(jnp.zeros_like, params)
    opt = optim.adamw(0.01, weight_decay=0.5)
    u, _ = opt.update(zeros, opt.init(params), params)
    for k in params:
        np.testing.assert_allclose(np.asarray(u[k]), -0.01 * 0.5 * np.asarray(params[k]), rtol=1e-15)


def test_lion_steps_have_magnitude_lr():
    params, grads_seq = make_params(), make_grads(5)
    opt = optim.lion(0.02)
    state = opt.init(params)
    for g in grads_seq:
        u, state = opt.update(g, state, params)
        for k in u:
            np.testing.assert_allclose(np.abs(np.asarray(u[k])), 0.02, rtol=1e-15)


# ---------------------------------------------------------------------------
# Convergence on a quadratic and on the Rosenbrock function
# ---------------------------------------------------------------------------

STEPS = 10_000
CONVERGENCE = {
    "sgd": lambda: optim.sgd(1e-3, momentum=0.9),
    "sgd_nesterov": lambda: optim.sgd(1e-3, momentum=0.9, nesterov=True),
    "ema_momentum": lambda: optim.ema_momentum(1e-2, beta=0.9),
    "adagrad": lambda: optim.adagrad(1.0),
    "adadelta": lambda: optim.adadelta(optim.cosine_decay_schedule(1.0, STEPS), rho=0.95),
    "rmsprop": lambda: optim.rmsprop(optim.cosine_decay_schedule(1e-2, STEPS)),
    "rmsprop_centered_momentum": lambda: optim.rmsprop(
        optim.cosine_decay_schedule(1e-3, STEPS), centered=True, momentum=0.9
    ),
    "adam": lambda: optim.adam(optim.cosine_decay_schedule(2e-2, STEPS)),
    "adamw": lambda: optim.adamw(optim.cosine_decay_schedule(2e-2, STEPS), weight_decay=0.0),
    "adamax": lambda: optim.adamax(optim.cosine_decay_schedule(1e-1, STEPS)),
    "nadam": lambda: optim.nadam(optim.cosine_decay_schedule(2e-2, STEPS)),
    "amsgrad": lambda: optim.amsgrad(optim.cosine_decay_schedule(1e-1, STEPS)),
    "lion": lambda: optim.lion(optim.cosine_decay_schedule(3e-3, STEPS)),
    # RAdam's first five steps are momentum SGD, too long for Rosenbrock's gradient (~200) at 2e-2
    "radam": lambda: optim.radam(
        lambda t: jnp.where(t < 5, 1e-4, optim.cosine_decay_schedule(2e-2, STEPS)(t))
    ),
    "adabelief": lambda: optim.adabelief(optim.cosine_decay_schedule(2e-2, STEPS), eps=1e-12),
    "lamb": lambda: optim.lamb(optim.cosine_decay_schedule(2e-2, STEPS)),
    "lars": lambda: optim.lars(optim.cosine_decay_schedule(1.0, STEPS), trust_coefficient=0.01),
    "adafactor": lambda: optim.adafactor(optim.cosine_decay_schedule(2e-2, STEPS), multiply_by_parameter_scale=False),
    "muon": lambda: optim.muon(optim.cosine_decay_schedule(2e-2, STEPS)),  # scalars: all Adam
    "schedule_free_adamw": lambda: optim.schedule_free_adamw(optim.cosine_decay_schedule(2e-2, STEPS)),
}


def rosenbrock(p):
    return (1.0 - p["x"]) ** 2 + 100.0 * (p["y"] - p["x"] ** 2) ** 2


def quadratic(p):
    return 0.5 * (p["x"] ** 2 + 10.0 * p["y"] ** 2)


def minimise(opt, f, p0):
    @jax.jit
    def run(p):
        def body(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(f)(p), s, p)
            return (optim.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), None, length=STEPS)
        return p

    return run(p0)


def test_convergence_table_covers_every_optimizer():
    assert {k.split("_")[0] if k.startswith(("sgd", "rmsprop")) else k for k in CONVERGENCE} == set(
        ALL_OPTIMIZER_NAMES
    )


@pytest.mark.parametrize("name", sorted(CONVERGENCE))
def test_converges_on_quadratic_and_rosenbrock(name):
    p = minimise(CONVERGENCE[name](), quadratic, {"x": jnp.asarray(1.0), "y": jnp.asarray(-1.0)})
    assert abs(float(p["x"])) < 1e-6 and abs(float(p["y"])) < 1e-6, (name, p)
    # LAMB's step on a scalar leaf is −η|θ| sign(r): multiplicative, it cannot change θ's sign,
    # so it starts on the minimum's side of x = 0.
    x0 = 1.2 if name == "lamb" else -1.2
    p = minimise(CONVERGENCE[name](), rosenbrock, {"x": jnp.asarray(x0), "y": jnp.asarray(1.0)})
    assert abs(float(p["x"]) - 1.0) < 2e-2 and abs(float(p["y"]) - 1.0) < 4e-2, (name, p)
