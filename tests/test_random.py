"""fdl.random: bitwise the same bits and keys as jax.random, computed as fused kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl import random as R

KEYS = {
    "typed": jax.random.key(0),
    "typed-large-seed": jax.random.key(2**40 + 5),
    "raw": jax.random.PRNGKey(7),
    "folded": jax.random.fold_in(jax.random.key(3), 11),
}


def _data(key):
    return np.asarray(jax.random.key_data(key)) if jax.dtypes.issubdtype(
        key.dtype, jax.dtypes.prng_key) else np.asarray(key)


@pytest.mark.parametrize("name", KEYS)
@pytest.mark.parametrize("shape", [(1,), (5,), (3, 4), (2, 3, 5), (64, 512)])
def test_bits_equal_jax_random_bits(name, shape):
    key = KEYS[name]
    np.testing.assert_array_equal(R.bits(key, shape), jax.random.bits(key, shape, jnp.uint32))


@pytest.mark.parametrize("name", KEYS)
@pytest.mark.parametrize("data", [0, 1, 5, 2**31 - 1, 2**32 - 1])
def test_fold_in_equals_jax_fold_in(name, data):
    key = KEYS[name]
    ours, theirs = R.fold_in(key, data), jax.random.fold_in(key, data)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(_data(ours), _data(theirs))


@pytest.mark.parametrize("name", KEYS)
def test_fold_in_traced_int32_equals_jax(name):
    key = KEYS[name]
    for step in (jnp.int32(3), jnp.int32(-1), jnp.int32(2**31 - 1)):
        ours = jax.jit(R.fold_in)(key, step)
        theirs = jax.jit(jax.random.fold_in)(key, step)
        np.testing.assert_array_equal(_data(ours), _data(theirs))


@pytest.mark.parametrize("name", KEYS)
@pytest.mark.parametrize("num", [0, 1, 2, 3, 8])
def test_split_equals_jax_split(name, num):
    key = KEYS[name]
    ours, theirs = R.split(key, num), jax.random.split(key, num)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(_data(ours), _data(theirs))


def test_vmap_over_keys_matches_jax():
    keys = jax.random.split(jax.random.key(1), 4)
    np.testing.assert_array_equal(jax.vmap(lambda k: R.bits(k, (6,)))(keys),
                                  jax.vmap(lambda k: jax.random.bits(k, (6,), jnp.uint32))(keys))
    np.testing.assert_array_equal(_data(jax.vmap(lambda k: R.fold_in(k, 9))(keys)),
                                  _data(jax.vmap(lambda k: jax.random.fold_in(k, 9))(keys)))


def test_other_key_implementations_fall_back_to_jax():
    key = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(R.bits(key, (10,)), jax.random.bits(key, (10,), jnp.uint32))
    np.testing.assert_array_equal(_data(R.fold_in(key, 4)), _data(jax.random.fold_in(key, 4)))
    np.testing.assert_array_equal(_data(R.split(key, 3)), _data(jax.random.split(key, 3)))


def test_fold_in_rejects_out_of_range_and_non_scalar_data():
    with pytest.raises(OverflowError):
        R.fold_in(jax.random.key(0), -1)
    with pytest.raises(ValueError, match="fold_in: data must be a scalar, got shape \\(2,\\)"):
        R.fold_in(jax.random.key(0), jnp.arange(2))


def test_a_different_hash_would_be_caught():
    """The equality tests can fail: one round fewer gives other bits."""
    key = jax.random.key(0)
    k = jax.random.key_data(key)
    n = jax.lax.iota(jnp.uint32, 8)
    x0, x1 = R._threefry2x32(k[0], k[1] + jnp.uint32(1), jnp.zeros_like(n), n)
    assert not np.array_equal(x0 ^ x1, jax.random.bits(key, (8,), jnp.uint32))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.7, 0.99])
def test_bernoulli_frequency(p):
    draws = np.asarray(R.bernoulli(jax.random.key(5), p, (200_000,)))
    # binomial standard error √(p(1−p)/n) ≤ 0.0012; 5 standard errors
    assert abs(draws.mean() - p) < 5 * np.sqrt(p * (1 - p) / draws.size)


def test_bernoulli_is_bits_below_the_threshold():
    key = jax.random.key(2)
    b = np.asarray(R.bits(key, (1000,)), np.uint64)
    np.testing.assert_array_equal(R.bernoulli(key, 0.3, (1000,)), b < round(0.3 * 2**32))


def test_bernoulli_edges_and_errors():
    key = jax.random.key(0)
    assert bool(jnp.all(R.bernoulli(key, 1.0, (100,))))
    assert not bool(jnp.any(R.bernoulli(key, 0.0, (100,))))
    assert R.bernoulli(key, 0.5, (3, 4)).shape == (3, 4)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="bernoulli: p must be a probability in \\[0, 1\\]"):
            R.bernoulli(key, bad, (3,))


@pytest.mark.parametrize("n", [0, 1, 2, 17, 1437])
def test_permutation_is_a_permutation(n):
    perm = np.asarray(jax.jit(R.permutation, static_argnums=1)(jax.random.key(n), n))
    assert perm.dtype == np.int32
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))


def test_permutation_positions_are_uniform():
    """Over 4000 shuffles of 5 items, each item lands in each position ~1/5 of the time."""
    keys = jax.random.split(jax.random.key(0), 4000)
    perms = np.asarray(jax.vmap(lambda k: R.permutation(k, 5))(keys))
    counts = np.stack([(perms == i).sum(axis=0) for i in range(5)])  # item × position
    expected = 4000 / 5
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 50.0, counts  # 16 degrees of freedom: P(χ² > 50) < 1e-4


def test_permutation_depends_on_the_key_and_rejects_negative_n():
    a = R.permutation(jax.random.key(0), 50)
    assert not np.array_equal(a, R.permutation(jax.random.key(1), 50))
    np.testing.assert_array_equal(a, R.permutation(jax.random.key(0), 50))
    with pytest.raises(ValueError, match="permutation: n must be ≥ 0, got -1"):
        R.permutation(jax.random.key(0), -1)


@pytest.mark.parametrize("name", KEYS)
def test_uniform_on_unit_interval_equals_jax(name):
    key = KEYS[name]
    np.testing.assert_array_equal(R.uniform(key, (1000,)),
                                  jax.random.uniform(key, (1000,), jnp.float32))


@pytest.mark.parametrize("lo,hi", [(-2.0, 3.0), (-0.05, 0.05), (-1.5, 1.5)])
def test_uniform_scaled_equals_jax_to_rounding(lo, hi):
    """Same bits, same formula; XLA may or may not fuse the final multiply-add into
    one rounding, so allow one rounding of the interval's scale."""
    key = jax.random.key(4)
    ours = np.asarray(jax.jit(lambda k: R.uniform(k, (5000,), jnp.float32, lo, hi))(key))
    theirs = np.asarray(jax.random.uniform(key, (5000,), jnp.float32, lo, hi))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2 * np.spacing(np.float32(hi - lo)))
    assert ours.min() >= lo and ours.max() < hi


def test_normal_equals_jax_to_rounding_and_has_unit_moments():
    key = jax.random.key(6)
    ours = np.asarray(jax.jit(lambda k: R.normal(k, (100_000,)))(key))
    theirs = np.asarray(jax.random.normal(key, (100_000,), jnp.float32))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert abs(ours.mean()) < 0.02 and abs(ours.std() - 1) < 0.02
    assert np.isfinite(ours).all()


def test_other_dtypes_call_jax():
    key = jax.random.key(1)
    np.testing.assert_array_equal(R.normal(key, (10,), jnp.float64),
                                  jax.random.normal(key, (10,), jnp.float64))
    np.testing.assert_array_equal(R.uniform(key, (10,), jnp.bfloat16),
                                  jax.random.uniform(key, (10,), jnp.bfloat16))


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1, 2**32 + 3, -1, 2**40])
def test_key_equals_jax_random_key(seed):
    ours, theirs = R.key(seed), jax.random.key(seed)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(_data(ours), _data(theirs))


def test_key_rejects_non_integers():
    for bad in (1.5, "3", True):
        with pytest.raises(TypeError, match="key: seed must be an int"):
            R.key(bad)
