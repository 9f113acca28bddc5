"""dropout and embedding: closed-form expectations and validation messages.

The gradient rules themselves are covered for every registered example by
tests/test_primitives.py; here are the properties that table cannot see.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check
from fdl.ops import dropout, embedding

KEY = jax.random.key(0)


# --------------------------------------------------------------------------- #
# dropout
# --------------------------------------------------------------------------- #


@pytest.mark.x64  # the kept values are x/(1 − rate) to 1e-12
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_keeps_one_minus_rate_and_is_unbiased(rate):
    x = jnp.full((200, 500), 3.0)
    y = dropout(x, KEY, rate)
    kept = np.asarray(y != 0)
    n = kept.size
    # keep fraction ~ Binomial(n, 1 − rate)/n: 5 standard deviations
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(np.asarray(y)[kept], 3.0 / (1 - rate), rtol=1e-12)
    assert abs(float(jnp.mean(y)) - 3.0) < 5 * 3.0 * np.sqrt(rate / ((1 - rate) * n))


def test_dropout_rate_zero_is_identity_and_gradient_is_one():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)))
    np.testing.assert_array_equal(dropout(x, KEY, 0.0), x)
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(dropout(x, KEY, 0.0)))(x),
                                  jnp.ones_like(x))


def test_dropout_same_key_same_mask_gradient_is_mask_over_keep():
    rate = 0.25
    x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 7)))
    k = jax.random.key(3)
    y1, y2 = dropout(x, k, rate), dropout(x, k, rate)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, dropout(x, jax.random.key(4), rate))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(dropout(x, k, rate))))(x)
    np.testing.assert_allclose(grad, (y1 != 0) / (1 - rate), rtol=1e-14)


def test_dropout_accepts_legacy_raw_keys_and_float32():
    x = jnp.ones((4, 5), jnp.float32)
    y = dropout(x, jax.random.PRNGKey(1), 0.5)
    assert y.dtype == jnp.float32
    check.vjp(dropout, x, jax.random.PRNGKey(1), 0.5, jit=True).raise_if_failed()


def test_dropout_vmap_over_keys_gives_independent_masks():
    keys = jax.random.split(KEY, 4)
    y = jax.vmap(lambda k: dropout(jnp.ones(64), k, 0.5))(keys)
    assert len({tuple(np.asarray(row != 0)) for row in y}) == 4


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((jnp.ones(3), KEY, 1.0), ValueError, r"dropout: rate .*DROPPING.* \[0, 1\), got 1.0"),
        ((jnp.ones(3), KEY, -0.1), ValueError, r"dropout: rate .* got -0.1"),
        ((jnp.ones(3), KEY, float("nan")), ValueError, r"dropout: rate must be finite"),
        ((jnp.ones(3), KEY, "0.5"), TypeError, r"dropout: rate must be a number, got '0.5'"),
        ((jnp.ones(3, jnp.int32), KEY, 0.5), TypeError,
         r"dropout: x must be a floating-point array, got dtype int32"),
        ((jnp.ones(3), 0, 0.5), TypeError, r"dropout: key must be one PRNG key .* got int"),
        ((jnp.ones(3), jax.random.split(KEY, 2), 0.5), TypeError,
         r"dropout: key must be one PRNG key .* shape \(2,\)"),
    ],
)
def test_dropout_validation(args, error, match):
    with pytest.raises(error, match=match):
        dropout(*args)


def test_dropout_is_registered():
    assert fdl.registry()["dropout"] is dropout


# --------------------------------------------------------------------------- #
# embedding
# --------------------------------------------------------------------------- #

TABLE = jnp.asarray(np.random.default_rng(2).standard_normal((5, 3)))


def test_embedding_gathers_rows_for_ids_of_any_shape():
    ids = jnp.array([[4, 0, 4], [2, 2, 1]])
    y = embedding(ids, TABLE)
    assert y.shape == (2, 3, 3)
    np.testing.assert_array_equal(y[1, 2], TABLE[1])
    np.testing.assert_array_equal(embedding(jnp.array(3), TABLE), TABLE[3])


def test_embedding_gradient_accumulates_repeated_ids_and_leaves_unused_rows_zero():
    ids = jnp.array([[4, 0, 4], [2, 4, 0]])
    g = jnp.arange(18.0).reshape(2, 3, 3)
    (dtable,) = jax.jit(lambda t, g: jax.vjp(lambda t: embedding(ids, t), t)[1](g))(TABLE, g)
    expected = np.zeros((5, 3))
    expected[4] = g[0, 0] + g[0, 2] + g[1, 1]
    expected[0] = g[0, 1] + g[1, 2]
    expected[2] = g[1, 0]
    np.testing.assert_array_equal(dtable, expected)


def test_embedding_under_jit_and_vmap_of_grad():
    ids = jnp.array([[1, 1, 3], [0, 2, 2]])
    loss = lambda t, i: jnp.sum(embedding(i, t) ** 2)
    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(TABLE, ids)
    for k in range(2):
        counts = np.bincount(np.asarray(ids[k]), minlength=5).reshape(5, 1)
        np.testing.assert_allclose(per_example[k], 2 * counts * TABLE, rtol=1e-14)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((jnp.array([0, 5]), TABLE), ValueError,
         r"embedding: ids must be in \[0, 5\) for a table of 5 rows .* got 5 at index \(1,\)"),
        ((jnp.array([[0, -1]]), TABLE), ValueError, r"embedding: .* got -1 at index \(0, 1\)"),
        ((jnp.array([0.0, 1.0]), TABLE), TypeError,
         r"embedding: ids must be an integer array \(token ids\), got dtype float"),
        ((jnp.array([0, 1]), jnp.ones(5)), ValueError,
         r"embedding: table must have 2 dimension\(s\) \(V×d: one row per id\), got shape \(5,\)"),
        ((jnp.array([0, 1]), jnp.ones((5, 3), jnp.int32)), TypeError,
         r"embedding: table must be a floating-point array"),
    ],
)
def test_embedding_validation(args, error, match):
    with pytest.raises(error, match=match):
        embedding(*args)
