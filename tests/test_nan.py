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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import ops

REGISTRY = fdl.registry()
CASES = [(name, i) for name, p in REGISTRY.items() for i in range(len(p.examples))]


def _is_float(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def _reaching(p, full: tuple, position: int, k: int) -> tuple[int, ...]:
    """The first index of leaf `k` of argument `position` on which the output depends
    (a non-zero derivative of the plain forward along a random cotangent)."""
    leaves, tree = jax.tree.flatten(full[position])

    def of_leaf(leaf):
        call = list(full)
        call[position] = jax.tree.unflatten(tree, leaves[:k] + [leaf] + leaves[k + 1:])
        return p.forward(*call)

    out, vjp = jax.vjp(of_leaf, leaves[k])
    rng = np.random.default_rng(0)
    cotangent = jax.tree.map(lambda o: jnp.asarray(rng.standard_normal(o.shape), o.dtype)
                             if _is_float(o) else jnp.zeros(o.shape, jax.dtypes.float0), out)
    (grad,) = vjp(cotangent)
    nonzero = np.argwhere(np.asarray(grad) != 0)
    if not len(nonzero):  # a constant function of a read input (softmax over one class)
        return (0,) * leaves[k].ndim
    return tuple(int(i) for i in nonzero[0])


def _output_has_nan(p, call: list) -> bool:
    try:
        out = p(*call)
    except ValueError as e:  # refused where the values are known: then under jit, unchecked
        assert "nan" in str(e), f"{p.name}: refused a NaN without saying so: {e}"
        static = [i for i, n in enumerate(p.signature.parameters) if n in p.static]
        out = jax.jit(lambda *a: p(*a), static_argnums=static)(*call)
    return any(bool(jnp.isnan(o).any()) for o in jax.tree.leaves(out) if _is_float(o))


def _with_nan(leaf: jax.Array, index: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(leaf).at[index].set(jnp.nan)


@pytest.mark.float32
@pytest.mark.parametrize("name, example", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_a_nan_in_any_float_argument_reaches_the_output(name, example):
    p = REGISTRY[name]
    args, kwargs = p.examples[example].sample(key=example, dtype=jnp.float32)
    full = p.bind(*args, **kwargs)
    params = list(p.signature.parameters)
    tried = []
    for position, (arg_name, value) in enumerate(zip(params, full)):
        if arg_name in p.static:
            continue
        leaves, tree = jax.tree.flatten(value)
        for k, leaf in enumerate(leaves):
            if not _is_float(leaf) or leaf.size == 0:
                continue
            index = _reaching(p, full, position, k)
            poisoned = list(leaves)
            poisoned[k] = _with_nan(leaf, index)
            call = list(full)
            call[position] = jax.tree.unflatten(tree, poisoned)
            tried.append((arg_name, k, index, _output_has_nan(p, call)))
    assert tried, f"{name}: no floating-point argument to try"
    hidden = [t for t in tried if not t[3]]
    assert hidden == [], f"{name}: a NaN in these arguments did not reach the output: {hidden}"


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
