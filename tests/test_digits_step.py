"""The small training step's compiled form: what XLA:CPU runs per step.

The `fdl train` step (MLP, ReLU, dropout, Adam) is small enough that how XLA compiles
it, not the arithmetic, decides its time. These tests pin the properties of the
compiled program that the rules rely on, bitwise results included:

* dropout's mask is drawn once per step: the generator sits in a `conditional`
  (`fdl.ops.dropout`'s `_drawn_once`), which XLA cannot fuse into the forward's and
  the backward's kernels separately, and the drawn mask is exactly
  `jax.random.bernoulli(key, 1 − rate)` whichever branch runs;
* the dense layer's weight gradient $Xᵀ G$ is a product of row-major operands
  (`fdl.ops.linear`'s `_weight_product`), not a product contracted over both
  operands' leading axis, which XLA:CPU runs through Eigen with a transposed operand;
* both hold inside the scanned epoch of a `Trainer` (the `fdl train` model, smaller).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl

pytestmark = pytest.mark.float32

SEEDS = [0, 1, 6, 7]  # the first word of their keys is odd, odd, even, even


def _computations(hlo: str) -> dict[str, str]:
    """`{name: body}` of every computation of an optimised HLO module's text."""
    return {m.group(1): m.group(2) for m in re.finditer(
        r"^(?:ENTRY\s+)?%?([\w.\-]+) [^\n]*\{\n(.*?)^\}", hlo, re.M | re.S)}


def _array_xors(body: str) -> int:
    """How many `xor`s of arrays (not scalars: a key's fold-in) a computation holds."""
    return len(re.findall(r"= u32\[\d[\d,]*\]\S* xor\(", body))


def _draws(hlo: str) -> dict[str, int]:
    """Per computation, how many of its fusions run a counter-based generator over an
    array (a called computation with ≥ 20 `xor`s of arrays: Philox's ten rounds)."""
    comps = _computations(hlo)
    counts = {}
    for name, body in comps.items():
        called = re.findall(r"\sfusion\(.*?calls=%?([\w.\-]+)", body)
        counts[name] = sum(_array_xors(comps.get(c, "")) >= 20 for c in called)
    return counts


def _entry(hlo: str) -> str:
    return re.search(r"^ENTRY\s+%?([\w.\-]+)", hlo, re.M).group(1)


def _dropout_grad(rate: float):
    w = jnp.linspace(-1.0, 1.0, 64 * 32, dtype=jnp.float32).reshape(64, 32)

    def loss(x, key):  # a consumer of the mask in the forward and in the backward
        return jnp.sum(fdl.ops.dropout(jnp.maximum(x, 0.0), key, rate) * w)

    return jax.jit(jax.value_and_grad(loss))


def test_dropout_draws_its_mask_once_under_grad():
    x = jnp.ones((64, 32), jnp.float32)
    key = fdl.random.key(0)
    hlo = _dropout_grad(0.3).lower(x, key).compile().as_text()
    draws = _draws(hlo)
    entry = _entry(hlo)
    # the program's own kernels draw nothing; the two branches of the one conditional
    # hold one draw each, and only one branch runs
    assert draws[entry] == 0, draws
    assert hlo.count(" conditional(") == 1
    assert sorted(n for n in draws.values() if n) == [1, 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_mask_is_jax_bernoulli_whichever_branch_runs(seed):
    rate = 0.3
    key = fdl.random.key(seed)
    x = jnp.asarray(np.abs(np.random.default_rng(seed).standard_normal((64, 32))) + 0.5,
                    jnp.float32)  # no zero: an element is non-zero iff it was kept
    keep = np.asarray(jax.random.bernoulli(key, 1.0 - rate, x.shape))
    _, g = _dropout_grad(rate)(x, key)
    np.testing.assert_array_equal(np.asarray(g) != 0, keep)  # w holds no zero either
    np.testing.assert_array_equal(np.asarray(fdl.ops.dropout(x, key, rate)) != 0, keep)


def test_both_branches_are_taken_by_the_seeds_above():
    bits = {int(np.asarray(jax.random.key_data(fdl.random.key(s))).ravel()[0]) & 1
            for s in SEEDS}
    assert bits == {0, 1}


def _leading_axis_dots(hlo: str) -> list[str]:
    """The `dot`s of a module whose left operand is contracted over its leading axis
    (`Xᵀ G` as XLA folds the transpose into the product)."""
    return [line.strip()[:120] for line in hlo.splitlines()
            if " dot(" in line and "lhs_contracting_dims={0}" in line]


@pytest.mark.parametrize("d_in, d_out", [(64, 512), (512, 10)])
def test_the_weight_gradient_is_a_row_major_product(d_in, d_out):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, d_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((d_in, d_out)), jnp.float32)
    b = jnp.zeros((d_out,), jnp.float32)
    c = jnp.asarray(rng.standard_normal((64, d_out)), jnp.float32)  # G = c
    # x and c are arguments, not constants XLA could lay out transposed ahead of time
    grad = jax.jit(jax.grad(lambda w, x, c: jnp.sum(fdl.ops.linear(x, w, b) * c)))
    assert _leading_axis_dots(grad.lower(w, x, c).compile().as_text()) == []
    np.testing.assert_allclose(grad(w, x, c),
                               np.asarray(x, np.float64).T @ np.asarray(c, np.float64),
                               rtol=1e-5, atol=1e-5)


def test_the_scanned_epoch_draws_each_mask_once_and_has_no_transposed_product():
    ds, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))
    model = fdl.layers.mlp([32], ds.num_classes, activation="relu", dropout=0.3)
    trainer = fdl.train.Trainer(model, fdl.optim.adam(1e-3))
    ts = trainer.abstract_state(ds.input_shape, key=fdl.random.key(0))
    x, y = ds.x_train[:256], ds.y_train[:256]
    hlo = trainer._epoch.lower(ts, x, y, batch_size=64).compile().as_text()
    body = re.search(r"\swhile\(.*?body=%?([\w.\-]+)", hlo).group(1)
    assert _draws(hlo)[body] == 0
    assert hlo.count(" conditional(") == 1
    assert _leading_axis_dots(hlo) == []
