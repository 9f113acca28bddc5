"""Attention over padded batches (lengths= for fdl.ops.multi_head_attention, the
MultiHeadAttention layer, fdl.ops.luong_attention and the LuongAttention layer): equal to
each sequence alone, keys past a length get no weight and no gradient, a padded query
outputs zero, bad lengths are named."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import layers as L

N, T, D = 3, 5, 8
LENGTHS = np.array([5, 2, 3], np.int32)


def _x(dtype=jnp.float64, key=0, shape=(N, T, D)):
    return jax.random.normal(jax.random.key(key), shape, dtype)


@pytest.mark.x64
def test_self_attention_with_lengths_equals_each_sequence_alone_with_gradients():
    mha = L.MultiHeadAttention(2, dtype=jnp.float64)
    _, params, _ = mha.init(jax.random.key(1), (T, D))
    params = jax.tree.map(lambda a: a + 0.1, params)  # non-zero biases: bo must not leak

    def loss(p, x, lengths=None):
        y, _ = mha.apply(p, {}, x, lengths=lengths)
        return jnp.sum(jnp.sin(y)), y

    grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    x = _x()
    (_, y), (gp, gx) = grad(params, x, jnp.asarray(LENGTHS))
    total = jax.tree.map(jnp.zeros_like, params)
    for n, ell in enumerate(LENGTHS):
        (_, y_n), (gp_n, gx_n) = grad(params, x[n:n + 1, :ell])
        np.testing.assert_allclose(y[n, :ell], y_n[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(gx[n, :ell], gx_n[0], rtol=1e-11, atol=1e-13)
        assert np.all(np.asarray(y[n, ell:]) == 0.0) and np.all(np.asarray(gx[n, ell:]) == 0.0)
        total = jax.tree.map(jnp.add, total, gp_n)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(total)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.x64
def test_cross_attention_kv_lengths_give_padded_keys_no_weight():
    mha = L.MultiHeadAttention(2, dtype=jnp.float64)
    _, params, _ = mha.init(jax.random.key(2), ((4, D), (T, 6)))
    x_q, x_kv = _x(key=3, shape=(N, 4, D)), np.array(_x(key=4, shape=(N, T, 6)))
    kv = jnp.asarray(LENGTHS)
    y, _ = mha.apply(params, {}, (x_q, jnp.asarray(x_kv)), kv_lengths=kv)
    x_kv[1, 2:] = 1e3  # what lies past a key length changes nothing
    y2, _ = mha.apply(params, {}, (x_q, jnp.asarray(x_kv)), kv_lengths=kv)
    np.testing.assert_array_equal(y, y2)
    g = jax.grad(lambda xkv: jnp.sum(mha.apply(params, {}, (x_q, xkv), kv_lengths=kv)[0]))(
        jnp.asarray(x_kv))
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]
    assert np.all(np.asarray(g)[pad] == 0.0) and np.all(np.abs(np.asarray(g)[~pad]).sum(-1) > 0)


@pytest.mark.x64
@pytest.mark.parametrize("kind", ["dot", "general", "concat"])
def test_luong_lengths_equal_each_source_alone(kind):
    layer = L.LuongAttention(kind, return_weights=True, dtype=jnp.float64)
    _, params, _ = layer.init(jax.random.key(5), ((D,), (T, D)))
    h_t, h_bar = _x(key=6, shape=(N, D)), _x(key=7)

    def loss(p, h_t, h_bar, lengths=None):
        (h, w), _ = layer.apply(p, {}, (h_t, h_bar), lengths=lengths)
        return jnp.sum(jnp.sin(h)), (h, w)

    grad = jax.value_and_grad(loss, argnums=(0, 2), has_aux=True)
    (_, (h, w)), (gp, gbar) = grad(params, h_t, h_bar, jnp.asarray(LENGTHS))
    for n, ell in enumerate(LENGTHS):
        (_, (h_n, w_n)), (_, gbar_n) = grad(params, h_t[n:n + 1], h_bar[n:n + 1, :ell])
        np.testing.assert_allclose(h[n], h_n[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(w[n, :ell], w_n[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(gbar[n, :ell], gbar_n[0], rtol=1e-11, atol=1e-13)
        assert np.all(np.asarray(w[n, ell:]) == 0.0) and np.all(np.asarray(gbar[n, ell:]) == 0.0)


@pytest.mark.float32
def test_float32_lengths_combine_with_a_mask():
    x = _x(jnp.float32)
    mha = L.MultiHeadAttention(2, causal=True)
    _, params, _ = mha.init(jax.random.key(8), (T, D))
    key_mask = jnp.asarray(np.array([[1, 1, 1, 0, 1]] * N, bool))[:, None, :]
    y, _ = mha.apply(params, {}, x, lengths=jnp.asarray(LENGTHS), mask=key_mask)
    assert y.dtype == jnp.float32 and np.all(np.asarray(y[1, 2:]) == 0.0)
    full = jnp.asarray(np.arange(T)[None, :] < LENGTHS[:, None])
    masked = (full[:, None, :] & full[:, :, None]) & key_mask
    y2 = fdl.ops.multi_head_attention(x, x, *(params[n] for n in ("wq", "wk", "wv", "wo")),
                                      num_heads=2, mask=masked, causal=True,
                                      **{n: params[n] for n in ("bq", "bk", "bv", "bo")})
    valid = np.asarray(full)
    np.testing.assert_allclose(np.asarray(y)[valid], np.asarray(y2)[valid], rtol=1e-6)


@pytest.mark.parametrize("lengths,error,message", [
    (np.array([0, 2, 3]), ValueError, r"multi_head_attention: every lengths entry must be in \[1, T\] = \[1, 5\]"),
    (np.array([5, 2, 9]), ValueError, r"got 9 at index \(2,\)"),
    (np.array([5.0, 2.0, 3.0]), TypeError, "multi_head_attention: lengths must be an integer array"),
    (np.array([5, 2]), ValueError, r"multi_head_attention: lengths must have shape \(3,\)"),
])
def test_bad_lengths_are_named(lengths, error, message):
    mha = L.MultiHeadAttention(2)
    _, params, _ = mha.init(jax.random.key(0), (T, D))
    with pytest.raises(error, match=message):
        mha.apply(params, {}, jnp.ones((N, T, D)), lengths=jnp.asarray(lengths))


def test_bad_luong_lengths_are_named():
    with pytest.raises(ValueError, match=r"luong_attention: every lengths entry must be in "
                                         r"\[1, T\] = \[1, 5\] .*got 0"):
        fdl.ops.luong_attention(jnp.ones((2, 4)), jnp.ones((2, 5, 4)), kind="dot",
                                lengths=jnp.asarray([0, 5]))
