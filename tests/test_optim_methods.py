"""The per-method transforms (`fdl.optim.methods`) on their own: first directions in
closed form, jitted, in float32 (the public entry points as users run them); and
their compositions in float64."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

G = np.array([[0.5, -2.0], [1e-3, 3.0]])
THETA = np.array([[1.0, -1.0], [0.25, 2.0]])


def adam_first(g, eps, factor=1.0):
    return factor * g / (np.abs(g) + eps)


# (id, transform, first direction d_1 from zero state as a function of g, θ)
FIRST_DIRECTIONS = [
    ("trace", lambda: optim.trace(0.9), lambda g, p: g),
    ("trace_nesterov", lambda: optim.trace(0.9, nesterov=True), lambda g, p: 1.9 * g),
    ("trace_zero", lambda: optim.trace(0.0), lambda g, p: g),
    ("ema_momentum", lambda: optim.scale_by_ema_momentum(0.8), lambda g, p: 0.2 * g),
    ("adagrad", lambda: optim.scale_by_adagrad(0.5, eps=1e-3), lambda g, p: g / (np.sqrt(0.5 + g**2) + 1e-3)),
    ("adadelta", lambda: optim.scale_by_adadelta(0.9, eps=1e-4),
     lambda g, p: math.sqrt(1e-4) / np.sqrt(0.1 * g**2 + 1e-4) * g),
    ("rms", lambda: optim.scale_by_rms(0.9, eps=1e-3), lambda g, p: g / (math.sqrt(0.1) * np.abs(g) + 1e-3)),
    ("rms_centered", lambda: optim.scale_by_rms(0.9, eps=1e-3, centered=True),
     lambda g, p: g / (math.sqrt(0.9 * 0.1) * np.abs(g) + 1e-3)),
    ("adam", lambda: optim.scale_by_adam(eps=1e-3), lambda g, p: adam_first(g, 1e-3)),
    ("amsgrad", lambda: optim.scale_by_adam(eps=1e-3, amsgrad=True), lambda g, p: adam_first(g, 1e-3)),
    # m̂_1 = β₁(1 − β₁)g/(1 − β₁²) + g = (1 + β₁/(1 + β₁)) g
    ("nadam", lambda: optim.scale_by_adam(0.9, eps=1e-3, nesterov=True), lambda g, p: adam_first(g, 1e-3, 1 + 0.9 / 1.9)),
    ("nadam_amsgrad", lambda: optim.scale_by_adam(0.9, eps=1e-3, nesterov=True, amsgrad=True),
     lambda g, p: adam_first(g, 1e-3, 1 + 0.9 / 1.9)),
    ("adamax", lambda: optim.scale_by_adamax(eps=1e-3), lambda g, p: adam_first(g, 1e-3)),
    ("lion", lambda: optim.scale_by_lion(), lambda g, p: np.sign(g)),
    ("learning_rate", lambda: optim.scale_by_learning_rate(0.3), lambda g, p: -0.3 * g),
    ("decayed_weights", lambda: optim.add_decayed_weights(0.1), lambda g, p: g + 0.1 * p),
    ("clip_by_value", lambda: optim.clip_by_value(-1.0, 1.0), lambda g, p: np.clip(g, -1.0, 1.0)),
    ("clip_by_global_norm", lambda: optim.clip_by_global_norm(1.0), lambda g, p: g / np.linalg.norm(g)),
]


@pytest.mark.float32
@pytest.mark.parametrize("name, build, first", FIRST_DIRECTIONS, ids=[c[0] for c in FIRST_DIRECTIONS])
def test_first_direction_in_closed_form_float32_jitted(name, build, first):
    t = build()
    g, p = {"x": jnp.asarray(G, jnp.float32)}, {"x": jnp.asarray(THETA, jnp.float32)}
    state = t.init(p)
    d, new_state = jax.jit(t.update)(g, state, p)
    assert d["x"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(d["x"]), first(G, THETA), rtol=2e-6, atol=1e-7)
    assert type(new_state) is type(state)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)


def test_ema_is_one_step_of_a_moving_average():
    assert optim.methods.ema(2.0, 4.0, 0.75) == 0.75 * 2.0 + 0.25 * 4.0


@pytest.mark.float32
@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_named_optimizers_minimise_a_quadratic_in_float32(name):
    options = {"lars": {"trust_coefficient": 1.0}}.get(name, {})  # steps of η‖θ‖, not 0.001 η‖θ‖
    opt = optim.OPTIMIZERS[name](0.05 if name != "adadelta" else 1.0, **options)
    steps = 2000 if name == "adadelta" else 200  # Adadelta's first steps are about √ε
    target = jnp.asarray([1.0, -2.0, 0.5], jnp.float32)

    def loss(p):
        return 0.5 * jnp.sum((p["x"] - target) ** 2)

    @jax.jit
    def run(p):
        def body(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optim.apply_updates(p, u), s), None

        return jax.lax.scan(body, (p, opt.init(p)), None, length=steps)[0][0]

    p0 = {"x": jnp.zeros(3, jnp.float32)}
    p = run(p0)
    assert p["x"].dtype == jnp.float32
    assert float(loss(p)) < 0.2 * float(loss(p0)), (name, p)


@pytest.mark.x64
def test_composed_methods_build_new_optimizers():
    """An optimizer the library does not name: RMSProp's scaling with Nesterov momentum and
    decoupled weight decay, checked against its equations written out."""
    rho, eps, mu, lam, eta = 0.9, 1e-6, 0.8, 0.1, 0.01
    opt = optim.chain(
        optim.scale_by_rms(rho, eps), optim.trace(mu, nesterov=True),
        optim.add_decayed_weights(lam), optim.scale_by_learning_rate(eta),
    )
    rng = np.random.default_rng(0)
    theta = rng.normal(size=4)
    p = {"x": jnp.asarray(theta)}
    state, nu, v = opt.init(p), np.zeros(4), np.zeros(4)
    for _ in range(20):
        g = rng.normal(size=4)
        u, state = opt.update({"x": jnp.asarray(g)}, state, p)
        nu = rho * nu + (1 - rho) * g**2
        d = g / (np.sqrt(nu) + eps)
        v = mu * v + d
        expected = -eta * ((d + mu * v) + lam * theta)
        np.testing.assert_allclose(np.asarray(u["x"]), expected, rtol=1e-12)
        p = optim.apply_updates(p, u)
        theta = theta + expected
