"""Randomness is JAX's own: fdl calls `jax.random` on the key it is given.

What users rely on: any `jax.random` key works (the key carries its
implementation), the same key gives the same run bitwise, `fdl.random.key(seed)`
makes the key fdl's CLI uses, and the removed fused-Threefry functions say where
to go instead.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import random as R

pytestmark = pytest.mark.float32

KEYS = {
    "threefry": lambda: jax.random.key(0),
    "philox": lambda: jax.random.key(0, impl="philox2x32"),
    "raw": lambda: jax.random.PRNGKey(0),
}


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_key_is_a_jax_key_of_the_chosen_implementation():
    k = R.key(3)
    assert jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
    assert str(jax.random.key_impl(k)) == R.IMPL
    np.testing.assert_array_equal(jax.random.key_data(k),
                                  jax.random.key_data(jax.random.key(3, impl=R.IMPL)))


@pytest.mark.parametrize("seed", [1.0, "1", True, None])
def test_key_rejects_non_integer_seeds(seed):
    with pytest.raises(TypeError, match=r"fdl\.random\.key: seed must be an int"):
        R.key(seed)


@pytest.mark.parametrize("name", ["split", "fold_in", "bits", "uniform", "normal",
                                  "bernoulli", "permutation"])
def test_removed_functions_name_jax_random(name):
    with pytest.raises(AttributeError, match=rf"call jax\.random\.{name} with your key"):
        getattr(R, name)


def test_importing_fdl_leaves_jax_default_implementation_alone():
    assert str(jax.config.jax_default_prng_impl) == "threefry2x32"


def test_no_module_calls_the_removed_generator():
    src = pathlib.Path(fdl.__file__).parent
    removed = re.compile(r"(fdl_random|fdl\.random|\bR)\.(split|fold_in|bits|uniform|normal|"
                         r"bernoulli|permutation)\(")
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py")
                 if removed.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("name", KEYS)
def test_dropout_mask_is_jax_bernoulli_of_the_key(name):
    key = KEYS[name]()
    x = jnp.ones((64, 512), jnp.float32)
    y = fdl.ops.dropout(x, key, 0.25)
    keep = jax.random.bernoulli(key, 0.75, x.shape)
    np.testing.assert_array_equal(y, jnp.where(keep, x / 0.75, 0.0))
    assert 0.70 < float(keep.mean()) < 0.80


def test_different_implementations_draw_different_masks():
    x = jnp.ones((8, 64), jnp.float32)
    a = fdl.ops.dropout(x, jax.random.key(0), 0.5)
    b = fdl.ops.dropout(x, jax.random.key(0, impl="philox2x32"), 0.5)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", KEYS)
def test_shuffled_batches_are_a_permutation_fixed_by_the_key(name):
    x = jnp.arange(50)
    a = fdl.data.shuffled_batches(KEYS[name](), x, 10)
    b = jax.jit(fdl.data.shuffled_batches, static_argnames="batch_size")(KEYS[name](), x, 10)
    np.testing.assert_array_equal(a, b)
    assert sorted(np.asarray(a).ravel().tolist()) == list(range(50))
    assert not np.array_equal(np.asarray(a).ravel(), np.arange(50))


@pytest.mark.parametrize("name", KEYS)
def test_same_key_same_training_run_bitwise(name):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(96, 8)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=96), jnp.int32)
    model = fdl.layers.mlp([16], 3, dropout=0.3)
    trainer = fdl.train.Trainer(model, fdl.optim.sgd(0.1), loss=fdl.losses.softmax_cross_entropy)
    runs = []
    for _ in range(2):
        ts = trainer.init(KEYS[name](), (8,))
        for _ in range(2):
            ts, m = trainer.epoch(ts, x, y, batch_size=32)
        runs.append((ts.params, m["loss"]))
    assert _leaves_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    other = trainer.init(jax.random.key(1, impl=str(jax.random.key_impl(KEYS[name]())))
                         if name != "raw" else jax.random.PRNGKey(1), (8,))
    assert not _leaves_equal(runs[0][0], other.params)
