"""NaN propagates through every registered primitive (a table over `fdl.registry()`).

A NaN in a floating-point argument must reach the output: a model fed NaN, or resumed
from NaN weights, must not give finite outputs (and train silently at chance).
For every registered primitive, every example and every floating-point array argument
(pytree leaves included), one element is set to NaN and the output must hold a NaN.

Which element: one the output depends on, i.e. the first element whose derivative
(autodiff of the plain forward, along a random cotangent) is not zero, where a NaN
must show; the first element where every derivative is zero (a softmax over one
class is constant, yet reads its input). Elements the output does not read are not tried, and that is the maths,
not a hiding primitive: `dropout` replaces a dropped element by 0; `embedding` reads
only the rows its ids look up; a strided convolution or pooling window may step over
an input element; a sequence op reads only the steps within each length; a masked
position is excluded from attention. Every argument is tried at such an element
(never skipped).

Where the values are concrete, a primitive may refuse a NaN outright with a
`ValueError` naming the argument (probability targets must lie in [0, 1]); the same
call under `jit`, where values are not checked, must then propagate it.
Integer arguments (labels, ids), boolean masks, PRNG keys and static arguments hold no
NaN and are not tried.

Cost: one compiled program per example finds every argument's element (one VJP of the
forward) and runs the primitive once per argument with that element set to NaN, all
under `jit` (the refusal above is checked outside it, by validating the poisoned
arguments on the host). `test_the_probe_catches_a_relu_that_hides_nan` shows the probe
failing on `jnp.where(x > 0, x, 0)`, which maps NaN to 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import ops
from fdl.primitive import Example, Primitive, gaussian, primitive

REGISTRY = fdl.registry()
CASES = [(name, i) for name, p in REGISTRY.items() for i in range(len(p.examples))]


def _is_float(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


class Tried(NamedTuple):
    """One poisoned element: argument `argument`, its pytree leaf `leaf`, the element
    `index`, whether a NaN reached the output under `jit`, and whether the primitive
    refused the NaN (a `ValueError`) where the values are concrete."""

    argument: str
    leaf: int
    index: tuple[int, ...]
    reached: bool
    refused: bool


def _probe(p: Primitive, full: tuple) -> list[Tried]:
    """Poison every floating-point leaf of the bound arguments `full` in turn, at the
    first element the output depends on; one compiled program for all of them."""
    names = list(p.signature.parameters)
    dynamic = [i for i, n in enumerate(names) if n not in p.static]
    per_arg = [jax.tree.flatten(full[i]) for i in dynamic]
    leaves = [leaf for flat, _ in per_arg for leaf in flat]
    where = [(i, k) for i, (flat, _) in zip(dynamic, per_arg) for k in range(len(flat))]
    tried = [j for j, leaf in enumerate(leaves) if _is_float(leaf) and leaf.size]

    def call_with(ls: list) -> list:
        call, start = list(full), 0
        for i, (flat, tree) in zip(dynamic, per_arg):
            call[i] = jax.tree.unflatten(tree, ls[start:start + len(flat)])
            start += len(flat)
        return call

    def forward_of_tried(values: list, ls: list):
        ls = list(ls)
        for j, value in zip(tried, values):
            ls[j] = value
        return p.forward(*call_with(ls))

    out = jax.eval_shape(lambda ls: p.forward(*call_with(ls)), leaves)
    rng = np.random.default_rng(0)
    cotangent = jax.tree.map(lambda o: rng.standard_normal(o.shape).astype(o.dtype)
                             if _is_float(o) else np.zeros(o.shape, jax.dtypes.float0), out)

    @jax.jit
    def program(ls: list, cotangent):
        _, vjp = jax.vjp(lambda values: forward_of_tried(values, ls), [ls[j] for j in tried])
        (grads,) = vjp(cotangent)
        firsts, reached = [], []
        for j, grad in zip(tried, grads):
            first = jnp.argmax(grad.ravel() != 0)  # the first non-zero; 0 if there is none
            poisoned = list(ls)
            poisoned[j] = ls[j].ravel().at[first].set(jnp.nan).reshape(ls[j].shape)
            y = p(*call_with(poisoned))
            firsts.append(first)
            reached.append(jnp.stack([jnp.isnan(o).any() for o in jax.tree.leaves(y)
                                      if _is_float(o)]).any())
        return firsts, reached

    firsts, reached = program(leaves, cotangent)
    result = []
    for j, first, nan in zip(tried, firsts, reached):
        index = tuple(int(i) for i in np.unravel_index(int(first), leaves[j].shape))
        host = np.array(leaves[j])
        host[index] = np.nan
        poisoned = list(leaves)
        poisoned[j] = jax.device_put(host)
        try:  # where the values are known, a primitive may refuse the NaN, saying so
            p.bind(*call_with(poisoned))
            refused = False
        except ValueError as e:
            assert "nan" in str(e), f"{p.name}: refused a NaN without saying so: {e}"
            refused = True
        position, k = where[j]
        result.append(Tried(names[position], k, index, bool(nan), refused))
    return result


def _hidden(p: Primitive, example: int) -> tuple[list[Tried], list[Tried]]:
    """All tried elements of example `example` of `p` in float32, and those whose NaN
    did not reach the output."""
    args, kwargs = p.examples[example].sample(key=example, dtype=jnp.float32)
    tried = _probe(p, p.bind(*args, **kwargs))
    return tried, [t for t in tried if not t.reached]


@pytest.mark.float32
@pytest.mark.parametrize("name, example", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_a_nan_in_any_float_argument_reaches_the_output(name, example):
    tried, hidden = _hidden(REGISTRY[name], example)
    assert tried, f"{name}: no floating-point argument to try"
    assert hidden == [], f"{name}: a NaN in these arguments did not reach the output: {hidden}"


def _hiding_relu(x):
    """$max(x, 0)$ written so that it maps NaN to 0 (`NaN > 0` is false)."""
    return jnp.where(x > 0, x, 0.0)


HIDING_RELU = primitive(_hiding_relu, lambda r, g: (jnp.where(r[0][0] > 0, g, 0.0),),
                        name="hiding_relu", register=False,
                        examples=[Example((gaussian(4, 3),))])


@pytest.mark.float32
def test_the_probe_catches_a_relu_that_hides_nan():
    (x,), _ = HIDING_RELU.examples[0].sample(key=0, dtype=jnp.float32)
    first = tuple(int(i) for i in np.argwhere(np.asarray(x) > 0)[0])  # the derivative is 1
    assert _hidden(HIDING_RELU, 0) == ([Tried("x", 0, first, reached=False, refused=False)],) * 2
    assert _probe(ops.relu, (x,)) == [Tried("x", 0, first, reached=True, refused=False)]


@pytest.mark.float32
def test_the_probe_says_when_a_nan_is_refused_outside_jit():
    name = "sigmoid_focal_loss"  # targets must lie in [0, 1]: a NaN target is refused
    tried, hidden = _hidden(REGISTRY[name], 0)
    assert hidden == []
    assert [(t.argument, t.refused) for t in tried] == [("logits", False), ("targets", True)]


@pytest.mark.float32
@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus",
                                  "gelu", "silu"])
def test_element_wise_activations_keep_nan_in_place(name):
    f = getattr(ops, name)
    x = jnp.array([-2.0, jnp.nan, 0.0, 3.0, jnp.nan], jnp.float32)
    y = np.asarray(f(x))
    np.testing.assert_array_equal(np.isnan(y), [False, True, False, False, True])


@pytest.mark.float32
def test_relu_keeps_its_values_and_subgradient_and_passes_nan():
    x = jnp.array([-1.0, 0.0, 2.0, jnp.nan, -jnp.inf, jnp.inf], jnp.float32)
    np.testing.assert_array_equal(ops.relu(x), [0.0, 0.0, 2.0, np.nan, 0.0, np.inf])
    grad = jax.grad(lambda x: jnp.sum(ops.relu(x)))
    np.testing.assert_array_equal(grad(x), [0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    with fdl.gradient_mode("autodiff"):
        np.testing.assert_array_equal(grad(x), [0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    _, dy = jax.jvp(ops.relu, (x,), (jnp.full_like(x, 3.0),))
    np.testing.assert_array_equal(dy, [0.0, 0.0, 3.0, 3.0, 0.0, 3.0])
