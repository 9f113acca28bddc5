"""Sequence pooling with lengths (fdl.ops.sequence_mean/max/last): values against a
per-sequence loop, zero gradient on padded steps (even NaN padding), the max's switch,
the rules against autodiff and finite differences, and bad lengths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check

POOLS = {"mean": (fdl.ops.sequence_mean, lambda s: s.mean(0)),
         "max": (fdl.ops.sequence_max, lambda s: s.max(0)),
         "last": (fdl.ops.sequence_last, lambda s: s[-1])}


def _batch(dtype=np.float64):
    x = np.random.default_rng(0).standard_normal((4, 6, 3)).astype(dtype)
    return x, np.array([6, 1, 3, 4], np.int32)


@pytest.mark.x64
@pytest.mark.parametrize("kind", sorted(POOLS))
def test_pooling_equals_a_loop_over_each_sequence_at_its_own_length(kind):
    op, reference = POOLS[kind]
    x, lengths = _batch()
    y = op(jnp.asarray(x), jnp.asarray(lengths))
    expected = np.stack([reference(x[n, :lengths[n]]) for n in range(len(lengths))])
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(op(jnp.asarray(x)), np.stack([reference(s) for s in x]),
                               rtol=1e-14, atol=1e-15)  # lengths=None: all T steps


@pytest.mark.x64
@pytest.mark.parametrize("kind", sorted(POOLS))
def test_padded_steps_receive_zero_gradient_even_when_they_hold_nan(kind):
    op, _ = POOLS[kind]
    x, lengths = _batch()
    pad = np.arange(6)[None, :] >= lengths[:, None]
    x[pad] = np.nan
    y = op(jnp.asarray(x), jnp.asarray(lengths))
    assert np.isfinite(np.asarray(y)).all()
    g = jax.grad(lambda x: jnp.sum(jnp.sin(op(x, jnp.asarray(lengths)))))(jnp.asarray(x))
    g = np.asarray(g)
    assert np.all(g[pad] == 0.0)
    assert np.isfinite(g).all() and np.count_nonzero(g[~pad]) > 0


@pytest.mark.x64
@pytest.mark.parametrize("kind", sorted(POOLS))
def test_rules_match_autodiff_and_finite_differences(kind):
    op, _ = POOLS[kind]
    x, lengths = _batch()
    check.vjp(op, jnp.asarray(x), jnp.asarray(lengths)).raise_if_failed()
    check.jvp(op, jnp.asarray(x), jnp.asarray(lengths)).raise_if_failed()
    check.adjoint(op, jnp.asarray(x), jnp.asarray(lengths)).raise_if_failed()


@pytest.mark.float32
@pytest.mark.parametrize("kind", sorted(POOLS))
def test_float32_pooling_checks(kind):
    op, _ = POOLS[kind]
    x, lengths = _batch(np.float32)
    y = op(jnp.asarray(x), jnp.asarray(lengths))
    assert y.shape == (4, 3) and y.dtype == jnp.float32
    check.vjp(op, jnp.asarray(x), jnp.asarray(lengths)).raise_if_failed()


def test_max_declares_the_argmax_over_valid_steps_as_its_switch():
    x = jnp.asarray([[[1.0], [5.0], [9.0]], [[2.0], [0.0], [-1.0]]])
    lengths = jnp.asarray([2, 3], jnp.int32)
    np.testing.assert_array_equal(fdl.ops.sequence_max.switches(x, lengths), [[1], [0]])
    g = jax.grad(lambda x: jnp.sum(fdl.ops.sequence_max(x, lengths)))(x)
    np.testing.assert_array_equal(g[..., 0], [[0, 1, 0], [1, 0, 0]])


def test_sequence_mask():
    np.testing.assert_array_equal(fdl.ops.sequence_mask(jnp.asarray([1, 3]), 3),
                                  [[True, False, False], [True, True, True]])


@pytest.mark.parametrize("lengths,error,message", [
    (np.array([0, 2]), ValueError, r"sequence_mean: every lengths entry must be in \[1, T\] = \[1, 3\].*got 0 at index \(0,\)"),
    (np.array([2, 4]), ValueError, r"must be in \[1, T\] = \[1, 3\].*got 4 at index \(1,\)"),
    (np.array([2.0, 3.0]), TypeError, "sequence_mean: lengths must be an integer array"),
    (np.array([2, 3, 1]), ValueError, r"sequence_mean: x \(2, 3, 4\) and lengths \(3,\) must "
                                      "share their leading"),
    ([2, 3], TypeError, "sequence_mean: lengths must be an integer array .*got list"),
])
def test_bad_lengths_are_clear_errors(lengths, error, message):
    x = jnp.ones((2, 3, 4))
    arg = jnp.asarray(lengths) if isinstance(lengths, np.ndarray) else lengths
    with pytest.raises(error, match=message):
        fdl.ops.sequence_mean(x, arg)


@pytest.mark.float32
def test_sequence_layers_wrap_the_primitives_and_compose_into_a_classifier():
    from fdl import layers as L

    x, lengths = _batch(np.float32)
    for kind, (op, _) in POOLS.items():
        layer = L.SequencePool(kind)
        shape, params, state = layer.init(jax.random.key(0), (6, 3))
        y, _ = layer.apply(params, state, jnp.asarray(x), lengths=jnp.asarray(lengths))
        assert shape == (3,) and params == {}
        np.testing.assert_array_equal(y, op(jnp.asarray(x), jnp.asarray(lengths)))
    enc = L.SinusoidalEncoding(offset=2)
    y, _ = enc.apply({}, {}, jnp.asarray(x))
    np.testing.assert_array_equal(y, fdl.ops.sinusoidal(jnp.asarray(x), 2))
    model = L.serial(L.Dense(8), L.SinusoidalEncoding(), L.TransformerEncoderBlock(8, 2, 16),
                     L.SequencePool("mean"), L.Dense(4))
    shape, params, state = model.init(jax.random.key(1), (6, 3))
    logits, _ = model.apply(params, state, jnp.asarray(x))
    assert shape == (4,) and logits.shape == (4, 4) and logits.dtype == jnp.float32
    with pytest.raises(ValueError, match="SequencePool: kind must be one of"):
        L.SequencePool("median")
