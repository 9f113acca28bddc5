"""The optimizers added for issue #21 (RAdam, AdaBelief, LAMB, LARS, Adafactor, …):
each trajectory equals an independent NumPy evaluation of its docstring equations
(plain loops, float64, no fdl code) over many steps; optional comparisons with optax
where it is installed."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

pytestmark = pytest.mark.x64


class Ref(NamedTuple):
    init: object  # θ (one leaf) -> state dict
    step: object  # (g, θ, state, t, η) -> (u, state)


def rms(x):
    return math.sqrt(float(np.mean(x * x)))


def ref_radam(b1, b2, eps, threshold):
    rho_inf = 2 / (1 - b2) - 1

    def step(g, p, s, t, eta):
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > threshold:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            d = r * m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
        else:
            d = m_hat
        return -eta * d, {"m": m, "v": v}

    return Ref(lambda p: {"m": np.zeros_like(p), "v": np.zeros_like(p)}, step)


def ref_adabelief(b1, b2, eps):
    def step(g, p, s, t, eta):
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["s"] + (1 - b2) * (g - m) ** 2 + eps
        d = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        return -eta * d, {"m": m, "s": v}

    return Ref(lambda p: {"m": np.zeros_like(p), "s": np.zeros_like(p)}, step)


def trust(c, p, a, eps):
    pn, an = np.linalg.norm(p), np.linalg.norm(a)
    return 1.0 if pn == 0 or an == 0 else c * pn / (an + eps)


def ref_lamb(b1, b2, eps, lam):
    def step(g, p, s, t, eta):
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g**2
        r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + lam * p
        return -eta * trust(1.0, p, r, 0.0) * r, {"m": m, "v": v}

    return Ref(lambda p: {"m": np.zeros_like(p), "v": np.zeros_like(p)}, step)


def ref_lars(mu, lam, c, eps, nesterov):
    def step(g, p, s, t, eta):
        a = g + lam * p
        a = trust(c, p, a, eps) * a
        v = mu * s["v"] + a
        return -eta * (a + mu * v if nesterov else v), {"v": v}

    return Ref(lambda p: {"v": np.zeros_like(p)}, step)


def ref_adafactor(c, eps1, d, eps2, lam, b1, min_dim, relative):
    def factored(p):
        return p.ndim >= 2 and min(p.shape[-2:]) >= min_dim

    def init(p):
        if factored(p):
            return {"R": np.zeros(p.shape[:-1]), "C": np.zeros(p.shape[:-2] + p.shape[-1:]), "M": np.zeros_like(p)}
        return {"V": np.zeros_like(p), "M": np.zeros_like(p)}

    def step(g, p, s, t, eta):
        beta = 1 - t ** (-c)
        sq = g**2 + eps1
        s = dict(s)
        if factored(p):
            s["R"] = beta * s["R"] + (1 - beta) * sq.mean(axis=-1)
            s["C"] = beta * s["C"] + (1 - beta) * sq.mean(axis=-2)
            v_hat = s["R"][..., :, None] * s["C"][..., None, :] / s["R"].mean(axis=-1)[..., None, None]
        else:
            s["V"] = beta * s["V"] + (1 - beta) * sq
            v_hat = s["V"]
        u = g / np.sqrt(v_hat)
        u_hat = u / max(1.0, rms(u) / d)
        s["M"] = b1 * s["M"] + (1 - b1) * u_hat if b1 is not None else u_hat
        rho = min(1e-2, 1 / math.sqrt(t)) if relative else eta
        alpha = rho if eps2 is None else max(eps2, rms(p)) * rho
        return -alpha * s["M"] - rho * lam * p, s

    return Ref(init, step)


def np_orthogonalize(m, steps, eps):
    a, b, c = 3.4445, -4.7750, 2.0315
    transpose = m.shape[0] > m.shape[1]
    x = m.T if transpose else m
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transpose else x


def ref_muon(mu, lam, nesterov, steps, eps, adam_lr_factor):
    """Muon for matrices, Adam (β₁ = 0.9, β₂ = 0.999, ε = 1e-8) for the other leaves."""

    def step(g, p, s, t, eta):
        if p.ndim == 2:
            buf = mu * s["buf"] + (1 - mu) * g
            m = (1 - mu) * g + mu * buf if nesterov else buf
            d = np_orthogonalize(m, steps, eps) * math.sqrt(max(1.0, p.shape[1] / p.shape[0]))
            return -eta * (d + lam * p), {**s, "buf": buf}
        m = 0.9 * s["m"] + 0.1 * g
        v = 0.999 * s["v"] + 0.001 * g**2
        d = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        return -eta * adam_lr_factor * (d + lam * p), {**s, "m": m, "v": v}

    return Ref(lambda p: {k: np.zeros_like(p) for k in ("buf", "m", "v")}, step)


def ref_schedule_free(b1, b2, eps, lam, warmup, power):
    def init(p):
        return {"z": p.copy(), "x": p.copy(), "v": np.zeros_like(p), "lr_max": 0.0, "wsum": 0.0}

    def step(g, y, s, t, eta):
        v = b2 * s["v"] + (1 - b2) * g**2
        gamma = eta * (min(1.0, t / warmup) if warmup else 1.0) * math.sqrt(1 - b2**t)
        lr_max = max(s["lr_max"], gamma)
        wsum = s["wsum"] + lr_max**power
        c = lr_max**power / wsum if wsum > 0 else 0.0
        z = s["z"] - gamma * (g / (np.sqrt(v) + eps) + lam * y)
        x = (1 - c) * s["x"] + c * z
        y_next = (1 - b1) * z + b1 * x
        return y_next - y, {"z": z, "x": x, "v": v, "lr_max": lr_max, "wsum": wsum}

    return Ref(init, step)


# (id, build(learning_rate) -> Optimizer, reference)
CASES = [
    ("radam", lambda lr: optim.radam(lr, b1=0.8, b2=0.95, eps=1e-6), ref_radam(0.8, 0.95, 1e-6, 5.0)),
    ("radam_threshold", lambda lr: optim.radam(lr, b2=0.99, threshold=8.0), ref_radam(0.9, 0.99, 1e-8, 8.0)),
    ("adabelief", lambda lr: optim.adabelief(lr, b1=0.8, b2=0.95, eps=1e-10), ref_adabelief(0.8, 0.95, 1e-10)),
    ("lamb", lambda lr: optim.lamb(lr, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1), ref_lamb(0.8, 0.95, 1e-6, 0.1)),
    ("lars", lambda lr: optim.lars(lr, momentum=0.8, weight_decay=0.1, trust_coefficient=0.02, eps=1e-9),
     ref_lars(0.8, 0.1, 0.02, 1e-9, False)),
    ("lars_nesterov", lambda lr: optim.lars(lr, momentum=0.7, trust_coefficient=0.5, nesterov=True),
     ref_lars(0.7, 0.0, 0.5, 0.0, True)),
    ("adafactor", lambda lr: optim.adafactor(lr, weight_decay=0.1, min_dim_size_to_factor=4),
     ref_adafactor(0.8, 1e-30, 1.0, 1e-3, 0.1, None, 4, False)),
    ("adafactor_momentum_unscaled",
     lambda lr: optim.adafactor(lr, clipping_threshold=0.5, b1=0.9, multiply_by_parameter_scale=False,
                                decay_exponent=0.7, eps=1e-20, min_dim_size_to_factor=4),
     ref_adafactor(0.7, 1e-20, 0.5, None, 0.0, 0.9, 4, False)),
    ("adafactor_relative_step", lambda lr: optim.adafactor(None, min_dim_size_to_factor=4, eps=1e-20),
     ref_adafactor(0.8, 1e-20, 1.0, 1e-3, 0.0, None, 4, True)),
    ("muon", lambda lr: optim.muon(lr, momentum=0.9, weight_decay=0.1), ref_muon(0.9, 0.1, True, 5, 1e-7, 1.0)),
    ("muon_plain_momentum",
     lambda lr: optim.muon(lr, nesterov=False, ns_steps=3, adam_learning_rate=lambda t: 0.5 * (
         optim.warmup_cosine_decay_schedule(0.03, 10, 80)(t) if callable(lr) else lr)),
     ref_muon(0.95, 0.0, False, 3, 1e-7, 0.5)),
    ("schedule_free_adamw", lambda lr: optim.schedule_free_adamw(lr, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1),
     ref_schedule_free(0.8, 0.95, 1e-6, 0.1, 0, 2.0)),
    ("schedule_free_adamw_warmup", lambda lr: optim.schedule_free_adamw(lr, warmup_steps=7, weight_lr_power=1.0),
     ref_schedule_free(0.9, 0.999, 1e-8, 0.0, 7, 1.0)),
]
NAMES = {"radam", "adabelief", "lamb", "lars", "adafactor", "muon", "schedule_free_adamw"}


def case_name(case_id):
    return next(n for n in sorted(NAMES, key=len, reverse=True) if case_id.startswith(n))


def test_cases_cover_the_recent_optimizers():
    assert {case_name(c[0]) for c in CASES} == NAMES
    assert NAMES <= set(optim.OPTIMIZERS)


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    # a stack of two 4×5 matrices (factored by Adafactor with min_dim 4), a matrix, a vector
    return {"w": jnp.asarray(rng.normal(size=(2, 4, 5))), "m": jnp.asarray(rng.normal(size=(6, 4))),
            "b": jnp.asarray(rng.normal(size=(5,)))}


def make_grads(n, seed=1):
    rng = np.random.default_rng(seed)
    return [{"w": jnp.asarray(rng.normal(size=(2, 4, 5))), "m": jnp.asarray(rng.normal(size=(6, 4))),
             "b": jnp.asarray(0.1 * rng.normal(size=(5,)))} for _ in range(n)]


def warmup_cosine(step):
    if step <= 10:
        return 0.03 * step / 10
    return 0.03 * 0.5 * (1 + math.cos(math.pi * min(step - 10, 70) / 70))


LEARNING_RATES = {
    "constant": (0.03, lambda step: 0.03),
    "warmup_cosine": (optim.warmup_cosine_decay_schedule(0.03, 10, 80), warmup_cosine),
}


def run_library(opt, params, grads_seq):
    state, out = opt.init(params), []
    for g in grads_seq:
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
        out.append(params)
    return out


def run_reference(ref, params, grads_seq, lr_fn):
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    states = {k: ref.init(v) for k, v in p.items()}
    out = []
    for i, g in enumerate(grads_seq):
        for k in p:
            u, states[k] = ref.step(np.asarray(g[k]), p[k], states[k], i + 1, lr_fn(i))
            p[k] = p[k] + u
        out.append({k: v.copy() for k, v in p.items()})
    return out


@pytest.mark.parametrize("lr_kind", sorted(LEARNING_RATES))
@pytest.mark.parametrize("name, build, ref", CASES, ids=[c[0] for c in CASES])
def test_trajectory_matches_docstring_equations(name, build, ref, lr_kind):
    lr, lr_fn = LEARNING_RATES[lr_kind]
    params, grads_seq = make_params(), make_grads(100)
    got = run_library(build(lr), params, grads_seq)
    want = run_reference(ref, params, grads_seq, lr_fn)
    for step, (a, b) in enumerate(zip(got, want)):
        for k in b:
            np.testing.assert_allclose(np.asarray(a[k]), b[k], rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name}: leaf {k!r} differs after step {step + 1}")


def test_radam_takes_momentum_steps_until_the_variance_is_tractable():
    # with β₂ = 0.999: ρ_1..ρ_5 = 1, 2, 3, 4, 5 (≤ 5), ρ_6 > 5; u_t = −η m̂_t while ρ_t ≤ 5
    g = {"x": jnp.asarray([0.5, -2.0])}
    opt = optim.radam(0.1)
    state = opt.init(g)
    for t in range(1, 7):
        u, state = opt.update(g, state)
        if t <= 5:
            np.testing.assert_allclose(np.asarray(u["x"]), -0.1 * np.asarray(g["x"]), rtol=1e-12)
        else:
            assert not np.allclose(np.asarray(u["x"]), -0.1 * np.asarray(g["x"]))


def test_trust_ratio_moves_every_layer_by_lr_times_its_norm():
    params, (g,) = make_params(), make_grads(1)
    opt = optim.lamb(0.01)
    u, _ = opt.update(g, opt.init(params), params)
    for k in params:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(u[k])), 0.01 * np.linalg.norm(np.asarray(params[k])),
                                   rtol=1e-12)
    # a zero parameter (or a zero direction) leaves the direction unscaled
    zero = {"w": jnp.zeros((2, 2)), "b": jnp.ones(2)}
    t = optim.scale_by_trust_ratio()
    d, _ = t.update({"w": jnp.full((2, 2), 3.0), "b": jnp.zeros(2)}, t.init(zero), zero)
    np.testing.assert_array_equal(np.asarray(d["w"]), 3.0)
    np.testing.assert_array_equal(np.asarray(d["b"]), 0.0)


def test_adafactor_keeps_row_and_column_averages_for_matrices():
    params = {"w": jnp.zeros((3, 200, 130)), "b": jnp.zeros(130), "small": jnp.zeros((3, 4))}
    s = optim.adafactor().init(params).states[0]
    assert s.v_row["w"].shape == (3, 200) and s.v_col["w"].shape == (3, 130) and s.v["w"].shape == (1,)
    assert s.v["b"].shape == (130,) and s.v["small"].shape == (3, 4) and s.v_row["small"].shape == (1,)


def test_adafactor_first_step_of_a_rank_one_square_is_exact():
    # g² = a bᵀ (rank one, ε₁ → 0): V̂_1 = R Cᵀ / mean R = g² exactly, so U_1 = sign(g)
    a, b = np.array([1.0, 4.0, 9.0]), np.array([0.25, 1.0, 4.0, 16.0])
    g = np.sqrt(np.outer(a, b)) * np.array([1.0, -1.0, 1.0])[:, None]
    t = optim.scale_by_factored_rms(eps=1e-30, min_dim_size_to_factor=3)
    d, _ = t.update({"w": jnp.asarray(g)}, t.init({"w": jnp.asarray(g)}))
    np.testing.assert_allclose(np.asarray(d["w"]), np.sign(g), rtol=1e-12)


@pytest.mark.parametrize("call, error, message", [
    (lambda: optim.lars(0.1, trust_coefficient=0.0), ValueError,
     "lars: trust_coefficient must be a finite number > 0, got 0.0"),
    (lambda: optim.lars(0.1, eps=-1.0), ValueError, "lars: eps must be a finite number >= 0, got -1.0"),
    (lambda: optim.adafactor(clipping_threshold=0.0), ValueError,
     "adafactor: threshold must be a finite number > 0, got 0.0"),
    (lambda: optim.adafactor(min_dim_size_to_factor=0), ValueError,
     "adafactor: min_dim_size_to_factor must be an int >= 1, got 0"),
    (lambda: optim.adafactor(b1=1.0), ValueError, "adafactor: beta must be in [0, 1), got 1.0"),
    (lambda: optim.radam(0.1, b2=1.2), ValueError, "radam: b2 must be in [0, 1), got 1.2"),
])
def test_bad_arguments_name_the_optimizer(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_factored_state_of_another_shape_names_the_leaf():
    t = optim.scale_by_factored_rms(min_dim_size_to_factor=4)
    state = t.init({"w": jnp.zeros((4, 6))})
    with pytest.raises(ValueError, match=re.escape(
        "scale_by_factored_rms: the gradient at ['w'] has shape (6, 4), so the state's (v_row, v_col, v) "
        "should have shapes ((6,), (4,), (1,)), got ((4,), (6,), (1,))"
    )):
        t.update({"w": jnp.zeros((6, 4))}, state)


def test_trust_ratio_needs_the_params():
    p = make_params()
    opt = optim.lamb(0.1)
    with pytest.raises(ValueError, match="lamb: the trust ratio needs the params; call update"):
        opt.update(p, opt.init(p))


# ---------------------------------------------------------------------------
# Optional: the same trajectories as optax's implementations
# ---------------------------------------------------------------------------

OPTAX_CASES = [
    ("radam", lambda lr: optim.radam(lr, b1=0.8, b2=0.95, eps=1e-6),
     lambda optax, lr: optax.radam(lr, b1=0.8, b2=0.95, eps=1e-6)),
    ("adabelief", lambda lr: optim.adabelief(lr, b1=0.8, b2=0.95, eps=1e-10),
     lambda optax, lr: optax.adabelief(lr, b1=0.8, b2=0.95, eps=1e-10, eps_root=1e-10)),
    ("lamb", lambda lr: optim.lamb(lr, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1),
     lambda optax, lr: optax.lamb(lr, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1)),
    ("lars", lambda lr: optim.lars(lr, momentum=0.8, weight_decay=0.1, trust_coefficient=0.02, eps=1e-9),
     lambda optax, lr: optax.lars(lr, weight_decay=0.1, trust_coefficient=0.02, eps=1e-9, momentum=0.8)),
    ("adafactor", lambda lr: optim.adafactor(lr, min_dim_size_to_factor=4),
     lambda optax, lr: optax.adafactor(lr, min_dim_size_to_factor=4)),
]


@pytest.mark.slow  # optax as a second reference; the NumPy trajectories above run by default
@pytest.mark.parametrize("name, ours, theirs", OPTAX_CASES, ids=[c[0] for c in OPTAX_CASES])
def test_matches_optax(name, ours, theirs):
    optax = pytest.importorskip("optax")
    params, grads_seq = make_params(), make_grads(50)
    got = run_library(ours(0.03), params, grads_seq)
    # optax computes Adafactor's β̂_t = 1 − t^(−0.8) in float32 (relative error ~1e-8 in every step of
    # size ~η = 0.03): ~1e-7 after 50 steps, against differences of order η for a wrong equation
    rtol, atol = (0.0, 1e-6) if name == "adafactor" else (1e-9, 1e-12)
    tx, p = theirs(optax, 0.03), params
    state, update = tx.init(p), jax.jit(tx.update)
    for step, g in enumerate(grads_seq):
        u, state = update(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, u)
        for k in p:
            np.testing.assert_allclose(np.asarray(got[step][k]), np.asarray(p[k]), rtol=rtol, atol=atol,
                                       err_msg=f"{name}: leaf {k!r} differs from optax after step {step + 1}")


def test_muon_messages_name_muons_own_arguments():
    with pytest.raises(ValueError, match=re.escape("muon: adam_b1 must be in [0, 1), got 1.0")):
        optim.muon(0.1, adam_b1=1.0)
    with pytest.raises(ValueError, match=re.escape("muon: adam_learning_rate must be a finite number >= 0")):
        optim.muon(0.1, adam_learning_rate=-1.0)
    with pytest.raises(ValueError, match=re.escape("muon: eps must be a finite number > 0, got 0.0")):
        optim.muon(0.1, eps=0.0)
    p = make_params()
    opt = optim.muon(0.1, labels={"w": "muon", "m": "muon", "b": "adam"})
    with pytest.raises(ValueError, match=re.escape(
        "muon: Muon orthogonalises matrices, but the leaf at ['w'] has shape (2, 4, 5); give the other "
        "leaves another optimizer (muon's labels do)"
    )):
        opt.update(p, opt.init(p), p)


def test_orthogonalize_makes_the_singular_values_near_one_and_keeps_the_vectors():
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    v, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    sigma = np.array([3.0, 1.0, 0.5, 0.2, 0.05])
    m = u[:, :5] @ np.diag(sigma) @ v.T  # 8×5: the tall case, orthogonalised through its transpose
    x = np.asarray(optim.orthogonalize(jnp.asarray(m), 5))
    s = np.linalg.svd(x, compute_uv=False)
    assert np.all((s > 0.6) & (s < 1.25)), s
    # the same singular vectors: Uᵀ X V is diagonal
    inner = u[:, :5].T @ x @ v
    np.testing.assert_allclose(inner - np.diag(np.diag(inner)), 0.0, atol=1e-12)
    assert np.all(np.diag(inner) > 0)
    np.testing.assert_allclose(np.sort(np.diag(inner)), np.sort(s), rtol=1e-12)


def test_schedule_free_evaluates_at_the_average():
    params, grads_seq = make_params(), make_grads(30)
    opt = optim.schedule_free_adamw(0.05, b1=0.9)
    state = opt.init(params)
    p = params
    for g in grads_seq:
        u, state = opt.update(g, state, p)
        p = optim.apply_updates(p, u)
    x, z = optim.schedule_free_eval_params(state), state.states[0].z
    for k in p:  # y = (1 − β₁) z + β₁ x, and x ≠ y
        np.testing.assert_allclose(np.asarray(p[k]), 0.1 * np.asarray(z[k]) + 0.9 * np.asarray(x[k]), rtol=1e-12)
        assert not np.allclose(np.asarray(p[k]), np.asarray(x[k]))
    wrapped = optim.ema_params(opt, 0.9).init(params)
    assert optim.schedule_free_eval_params(wrapped) is not None
    with pytest.raises(ValueError, match=re.escape(
        "schedule_free_eval_params: state must hold exactly one ScheduleFreeState (from schedule_free_adamw), "
        "found 0 in a ChainState"
    )):
        optim.schedule_free_eval_params(optim.adam(0.1).init(params))
