"""Property tests: hand-written rules hold for every shape, not only the examples.

Hypothesis draws shapes — batch 1 and width 1 included, always, as explicit
examples — and a seed for the values; each case runs ``fdl.check.vjp`` in float64
(rule vs autodiff vs finite differences) under ``jit``. Runs are derandomized, so
the suite is deterministic; each compiles one program per example, so the
example counts are modest.
Values for activations are kept ``0.05`` away from 0, where ReLU-like functions
have a kink that finite differences straddle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import normal
from fdl import check, losses, ops

pytestmark = pytest.mark.x64  # each rule to float64 tolerances, for every shape

PROPERTY = settings(max_examples=10, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

dim = st.integers(1, 4)  # 1 is a width-1 / batch-1 case
seeds = st.integers(0, 2 ** 32 - 1)
leading = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
shapes = st.lists(dim, min_size=1, max_size=3).map(tuple)


@PROPERTY
@given(batch=leading, d_in=dim, d_out=dim, seed=seeds)
@example(batch=(1,), d_in=1, d_out=1, seed=0)
@example(batch=(), d_in=3, d_out=1, seed=1)
def test_linear_rule(batch, d_in, d_out, seed):
    rng = np.random.default_rng(seed)
    x = normal(rng, *batch, d_in)
    w, b = normal(rng, d_in, d_out), normal(rng, d_out)
    check.vjp(ops.linear, x, w, b, jit=True).raise_if_failed()


@PROPERTY
@given(shape=shapes, axis=st.integers(-3, 2), seed=seeds,
       name=st.sampled_from(["softmax", "log_softmax"]))
@example(shape=(1, 1), axis=-1, seed=0, name="softmax")
@example(shape=(3, 1), axis=1, seed=0, name="log_softmax")
@example(shape=(1, 4), axis=0, seed=0, name="softmax")
def test_softmax_rules_along_any_axis(shape, axis, seed, name):
    axis = axis % len(shape) - (len(shape) if axis < 0 else 0)  # any valid axis, ± form
    x = normal(seed, *shape, scale=3.0)
    report = check.vjp(getattr(ops, name), x, axis=axis, jit=True).raise_if_failed()
    assert {r.name for r in report.rows} == {"x"}


@PROPERTY
@given(batch=leading, classes=st.integers(1, 5), seed=seeds,
       reduction=st.sampled_from(["mean", "sum", "none"]))
@example(batch=(1,), classes=1, seed=0, reduction="mean")
@example(batch=(), classes=3, seed=0, reduction="none")
def test_softmax_cross_entropy_with_labels(batch, classes, seed, reduction):
    rng = np.random.default_rng(seed)
    logits = normal(rng, *batch, classes, scale=2.0)
    labels = jnp.asarray(rng.integers(0, classes, batch), dtype=jnp.int32)
    report = check.vjp(losses.softmax_cross_entropy, logits, labels, reduction, jit=True)
    report.raise_if_failed()
    assert {r.name for r in report.rows} == {"logits"}  # labels are not differentiated


@PROPERTY
@given(batch=leading, classes=st.integers(1, 5), seed=seeds,
       reduction=st.sampled_from(["mean", "sum", "none"]))
@example(batch=(1,), classes=1, seed=0, reduction="sum")
def test_softmax_cross_entropy_with_probabilities(batch, classes, seed, reduction):
    rng = np.random.default_rng(seed)
    logits = normal(rng, *batch, classes, scale=2.0)
    e = np.exp(rng.standard_normal(batch + (classes,)))
    targets = jnp.asarray(e / e.sum(axis=-1, keepdims=True))
    report = check.vjp(losses.softmax_cross_entropy, logits, targets, reduction, jit=True)
    report.raise_if_failed()
    assert {r.name for r in report.rows} == {"logits", "targets"}


ACTIVATIONS = [("relu", ()), ("leaky_relu", (0.1,)), ("tanh", ()), ("sigmoid", ()),
               ("softplus", ()), ("gelu", (False,)), ("gelu", (True,)), ("silu", ()),
               ("elu", (0.7,))]


@PROPERTY
@given(shape=st.lists(dim, min_size=0, max_size=3).map(tuple), seed=seeds,
       activation=st.sampled_from(ACTIVATIONS))
@example(shape=(1, 1), seed=0, activation=("relu", ()))
def test_activation_rules(shape, seed, activation):
    name, static = activation
    z = np.random.default_rng(seed).standard_normal(shape) * 3
    x = jnp.asarray(np.sign(z) * (np.abs(z) + 0.05))  # away from the kink at 0
    check.vjp(getattr(ops, name), x, *static, jit=True).raise_if_failed()


# --------------------------------------------------------------------------- #
# Large logits in float32: the fused rule stays finite and exact
# --------------------------------------------------------------------------- #


@pytest.mark.float32
@pytest.mark.parametrize("magnitude", [1e4, 3e4])
def test_cross_entropy_float32_huge_logits_labels(magnitude):
    rng = np.random.default_rng(0)
    z = jnp.asarray(magnitude * rng.standard_normal((6, 5)), dtype=jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, 6), dtype=jnp.int32)
    loss, g = jax.jit(jax.value_and_grad(losses.softmax_cross_entropy))(z, y)
    assert loss.dtype == g.dtype == jnp.float32
    assert np.isfinite(float(loss)) and bool(jnp.all(jnp.isfinite(g)))
    z64 = np.asarray(z, dtype=np.float64)
    p = np.exp(z64 - z64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    expected = (p - np.eye(5)[np.asarray(y)]) / 6  # softmax(z) − onehot, mean over 6
    np.testing.assert_allclose(g, expected, rtol=0, atol=1e-7)
    logsumexp = z64.max(-1) + np.log(np.exp(z64 - z64.max(-1, keepdims=True)).sum(-1))
    expected_loss = np.mean(logsumexp - z64[np.arange(6), np.asarray(y)])
    assert float(loss) == pytest.approx(expected_loss, rel=1e-6)


@pytest.mark.float32
def test_cross_entropy_float32_huge_logits_probabilities():
    rng = np.random.default_rng(1)
    z = jnp.asarray(1e4 * rng.standard_normal((4, 3)), dtype=jnp.float32)
    e = np.exp(rng.standard_normal((4, 3)))
    t = jnp.asarray(e / e.sum(-1, keepdims=True), dtype=jnp.float32)
    loss, (gz, gt) = jax.jit(jax.value_and_grad(losses.softmax_cross_entropy,
                                                argnums=(0, 1)))(z, t)
    assert np.isfinite(float(loss))
    assert bool(jnp.all(jnp.isfinite(gz))) and bool(jnp.all(jnp.isfinite(gt)))
    z64 = np.asarray(z, dtype=np.float64)
    p = np.exp(z64 - z64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(gz, (p - np.asarray(t, dtype=np.float64)) / 4, rtol=0,
                               atol=1e-7)
    # the autodiff reference agrees (it, too, shifts by the row maximum)
    report = check.vjp(losses.softmax_cross_entropy, z, t, finite_differences=False, jit=True)
    report.raise_if_failed()
