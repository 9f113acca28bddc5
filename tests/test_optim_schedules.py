"""Learning-rate schedules: values against NumPy transcriptions of the
docstring formulas, behaviour under jit/vmap, validation."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.optim as optim

pytestmark = pytest.mark.x64  # trajectories and closed forms compared in float64


def np_cosine(a, b, f):
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * f))


def np_one_cycle(peak, total, pct, div, final_div, strategy):
    up = int(pct * total)
    lo, end = peak / div, peak / div / final_div

    def anneal(a, b, f):
        return np_cosine(a, b, f) if strategy == "cos" else a + (b - a) * f

    def lr(t):
        if t <= up:
            return anneal(lo, peak, t / up)
        return anneal(peak, end, min(t - up, total - up) / (total - up))

    return lr


# (id, schedule, reference(t) for t >= 0)
TABLE = [
    ("constant", optim.constant_schedule(0.3), lambda t: 0.3),
    (
        "piecewise",
        optim.piecewise_constant_schedule([3, 7], [1.0, 0.1, 0.01]),
        lambda t: 1.0 if t < 3 else (0.1 if t < 7 else 0.01),
    ),
    ("exponential", optim.exponential_decay_schedule(2.0, 0.5, 4), lambda t: 2.0 * 0.5 ** (t / 4)),
    (
        "exponential_staircase",
        optim.exponential_decay_schedule(2.0, 0.5, 4, staircase=True),
        lambda t: 2.0 * 0.5 ** (t // 4),
    ),
    (
        "polynomial",
        optim.polynomial_schedule(1.0, 0.1, 10, power=2.0, transition_begin=2),
        lambda t: (1.0 - 0.1) * (1 - min(max(t - 2, 0), 10) / 10) ** 2 + 0.1,
    ),
    ("linear_warmup", optim.linear_schedule(0.0, 0.5, 5), lambda t: 0.5 * min(t, 5) / 5),
    ("linear_decay", optim.linear_schedule(1.0, 0.0, 8), lambda t: 1.0 - min(t, 8) / 8),
    (
        "cosine",
        optim.cosine_decay_schedule(1.0, 10, alpha=0.1),
        lambda t: (1 - 0.1) * 0.5 * (1 + math.cos(math.pi * min(t, 10) / 10)) + 0.1,
    ),
    (
        "warmup_cosine",
        optim.warmup_cosine_decay_schedule(1.0, 4, 12, init_value=0.1, end_value=0.01),
        lambda t: 0.1 + 0.9 * t / 4 if t <= 4 else np_cosine(1.0, 0.01, min(t - 4, 8) / 8),
    ),
    (
        "warmup_cosine_no_warmup",
        optim.warmup_cosine_decay_schedule(1.0, 0, 10),
        lambda t: np_cosine(1.0, 0.0, min(t, 10) / 10),
    ),
    (
        "one_cycle_cos",
        optim.one_cycle_schedule(1.0, 20),
        np_one_cycle(1.0, 20, 0.3, 25.0, 1e4, "cos"),
    ),
    (
        "one_cycle_linear",
        optim.one_cycle_schedule(0.5, 10, pct_start=0.5, div_factor=10.0, final_div_factor=100.0, anneal_strategy="linear"),
        np_one_cycle(0.5, 10, 0.5, 10.0, 100.0, "linear"),
    ),
]


def np_sgdr(init, t0, mult, alpha):
    def lr(t):
        start, period = 0, t0
        while t >= start + period:
            start, period = start + period, period * mult
        return np_cosine(init, alpha * init, (t - start) / period)

    return lr


def np_join(t):
    # linear warm-up 0 -> 1 over 4 steps until step 4, then exponential decay on its own clock
    # until 10, then a constant
    if t < 4:
        return 1.0 * min(t, 4) / 4
    if t < 10:
        return 2.0 * 0.5 ** ((t - 4) / 2)
    return 0.05


TABLE += [
    ("sgdr", optim.sgdr_schedule(1.0, 5, alpha=0.1), np_sgdr(1.0, 5, 1, 0.1)),
    ("sgdr_doubling", optim.sgdr_schedule(0.5, 3, period_mult=2), np_sgdr(0.5, 3, 2, 0.0)),
    ("join", optim.join_schedules(
        [optim.linear_schedule(0.0, 1.0, 4), optim.exponential_decay_schedule(2.0, 0.5, 2),
         optim.constant_schedule(0.05)], [4, 10]), np_join),
]
IDS = [row[0] for row in TABLE]
STEPS = range(0, 25)


@pytest.mark.parametrize("name, schedule, reference", TABLE, ids=IDS)
def test_values_match_formula(name, schedule, reference):
    got = np.asarray(jax.vmap(schedule)(jnp.arange(25, dtype=jnp.int32)))
    want = np.asarray([reference(t) for t in STEPS])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    # eager scalar calls agree with the vmapped ones, and return default-float scalars
    for t in (0, 5, 24):
        value = schedule(t)
        assert value.shape == () and value.dtype == jnp.float64
        np.testing.assert_allclose(float(value), want[t], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name, schedule, reference", TABLE, ids=IDS)
def test_jit_and_negative_steps(name, schedule, reference):
    jitted = jax.jit(schedule)
    np.testing.assert_allclose(float(jitted(jnp.asarray(3, jnp.int32))), reference(3), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(float(schedule(-5)), reference(0), rtol=1e-13, atol=1e-15)


def test_landmarks():
    wc = optim.warmup_cosine_decay_schedule(0.1, 10, 100)
    assert float(wc(0)) == 0.0 and float(wc(10)) == pytest.approx(0.1, rel=1e-15)
    assert float(wc(100)) == pytest.approx(0.0, abs=1e-17) and float(wc(10_000)) == pytest.approx(0.0, abs=1e-17)
    oc = optim.one_cycle_schedule(1.0, 100, pct_start=0.25, div_factor=20.0, final_div_factor=50.0)
    assert float(oc(0)) == pytest.approx(0.05) and float(oc(25)) == pytest.approx(1.0)
    assert float(oc(100)) == pytest.approx(0.05 / 50) and float(oc(1000)) == pytest.approx(0.05 / 50)
    pc = optim.piecewise_constant_schedule([], [0.2])
    assert float(pc(0)) == 0.2 and float(pc(10**6)) == 0.2


def test_float32_default_dtype_when_x64_is_off():
    schedule = optim.cosine_decay_schedule(1.0, 10)
    with jax.enable_x64(False):
        assert schedule(jnp.asarray(3, jnp.int32)).dtype == jnp.float32


def test_sgdr_restarts_at_the_period_starts():
    s = optim.sgdr_schedule(1.0, 3, period_mult=2, alpha=0.0)
    # periods 3, 6, 12: restarts at 0, 3, 9, 21
    assert [float(s(t)) for t in (0, 3, 9, 21)] == [1.0, 1.0, 1.0, 1.0]
    assert float(s(2)) == pytest.approx(0.25) and float(s(6)) == pytest.approx(0.5)
    # far past the last restart an int32 count can reach, still a value in [0, 1]
    assert 0.0 <= float(s(jnp.asarray(2**31 - 1, jnp.int32))) <= 1.0


def plateau_reference(values, factor, patience, threshold, cooldown, min_scale):
    """PyTorch's ReduceLROnPlateau (mode min, relative threshold), transcribed."""
    scale, best, bad, cool, out = 1.0, math.inf, 0, 0, []
    for y in values:
        if y < best * (1 - threshold):
            best, bad = y, 0
        else:
            bad += 1
        if cool > 0:
            cool, bad = cool - 1, 0
        if bad > patience:
            scale, bad, cool = max(scale * factor, min_scale), 0, cooldown
        out.append(scale)
    return out


def test_reduce_on_plateau_follows_the_metric():
    values = [5.0, 4.0, 4.0, 3.9999, 4.1, 4.2, 3.0, 3.0, 3.0, 3.0, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]
    settings = dict(factor=0.5, patience=2, threshold=1e-3, cooldown=1, min_scale=0.1)
    opt = optim.reduce_on_plateau(optim.sgd(0.1), **settings)
    g = {"x": jnp.asarray([1.0, -2.0])}
    state = opt.init(g)
    observe = jax.jit(optim.observe_metric)
    for y, want in zip(values, plateau_reference(values, **settings)):
        state = observe(state, y)
        assert float(state.scale) == want
        u, state = opt.update(g, state)
        np.testing.assert_allclose(np.asarray(u["x"]), -0.1 * want * np.asarray(g["x"]), rtol=1e-15)
    assert float(state.scale) == 0.125 and observe._cache_size() == 1
    with pytest.raises(TypeError, match=re.escape("observe_metric: state must be the ReduceOnPlateauState")):
        optim.observe_metric(optim.sgd(0.1).init(g), 1.0)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: optim.sgdr_schedule(1.0, 0), ValueError, "sgdr_schedule: first_period must be an int >= 1, got 0"),
        (lambda: optim.sgdr_schedule(1.0, 5, period_mult=1.5), TypeError, "sgdr_schedule: period_mult must be an int, got 1.5"),
        (lambda: optim.join_schedules([optim.constant_schedule(1.0)], [3]), ValueError,
         "join_schedules: schedules must have one more entry than boundaries, got 1 boundaries and 1 schedules"),
        (lambda: optim.join_schedules([optim.constant_schedule(1.0), 0.1], [3]), TypeError,
         "join_schedules: schedules[1] must be a schedule (step -> value), got 0.1"),
        (lambda: optim.reduce_on_plateau(optim.sgd(0.1), factor=1.0), ValueError,
         "reduce_on_plateau: factor must be in (0, 1), got 1.0"),
        (lambda: optim.constant_schedule(-1.0), ValueError, "constant_schedule: value must be a finite number >= 0, got -1.0"),
        (lambda: optim.piecewise_constant_schedule([5, 3], [1.0, 0.5, 0.1]), ValueError,
         "piecewise_constant_schedule: boundaries must be strictly increasing, got [5, 3]"),
        (lambda: optim.piecewise_constant_schedule([5], [1.0]), ValueError,
         "piecewise_constant_schedule: values must have one more entry than boundaries, got 1 boundaries and 1 values"),
        (lambda: optim.piecewise_constant_schedule([-1], [1.0, 0.5]), ValueError,
         "piecewise_constant_schedule: boundaries[0] must be an int >= 0, got -1"),
        (lambda: optim.piecewise_constant_schedule([1], [1.0, float("nan")]), ValueError,
         "piecewise_constant_schedule: values[1] must be a finite number >= 0, got nan"),
        (lambda: optim.exponential_decay_schedule(1.0, 0.0, 10), ValueError,
         "exponential_decay_schedule: decay_rate must be a finite number > 0, got 0.0"),
        (lambda: optim.exponential_decay_schedule(1.0, 0.5, 0), ValueError,
         "exponential_decay_schedule: transition_steps must be an int >= 1, got 0"),
        (lambda: optim.exponential_decay_schedule(1.0, 0.5, 10, staircase="yes"), TypeError,
         "exponential_decay_schedule: staircase must be True or False, got 'yes'"),
        (lambda: optim.polynomial_schedule(1.0, 0.0, 10, power=0.0), ValueError,
         "polynomial_schedule: power must be a finite number > 0, got 0.0"),
        (lambda: optim.linear_schedule(1.0, -0.1, 10), ValueError, "linear_schedule: end_value must be a finite number >= 0, got -0.1"),
        (lambda: optim.linear_schedule(1.0, 0.0, 2.5), TypeError, "linear_schedule: transition_steps must be an int, got 2.5"),
        (lambda: optim.cosine_decay_schedule(1.0, 10, alpha=1.5), ValueError, "cosine_decay_schedule: alpha must be in [0, 1], got 1.5"),
        (lambda: optim.cosine_decay_schedule(float("inf"), 10), ValueError,
         "cosine_decay_schedule: init_value must be a finite number >= 0, got inf"),
        (lambda: optim.warmup_cosine_decay_schedule(1.0, 10, 10), ValueError,
         "warmup_cosine_decay_schedule: total_steps must be greater than warmup_steps (10), got 10"),
        (lambda: optim.one_cycle_schedule(1.0, 100, anneal_strategy="cosine"), ValueError,
         "one_cycle_schedule: anneal_strategy must be 'cos' or 'linear', got 'cosine'"),
        (lambda: optim.one_cycle_schedule(1.0, 100, pct_start=1.0), ValueError,
         "one_cycle_schedule: pct_start must be in (0, 1), got 1.0"),
        (lambda: optim.one_cycle_schedule(1.0, 3, pct_start=0.2), ValueError,
         "one_cycle_schedule: pct_start * total_steps must give between 1 and total_steps - 1 warm-up steps"),
        (lambda: optim.one_cycle_schedule(1.0, 100, div_factor=-2.0), ValueError,
         "one_cycle_schedule: div_factor must be a finite number > 0, got -2.0"),
    ],
)
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()
