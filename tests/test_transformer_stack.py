"""Deep stacks: scan_layers equals the unrolled stack, remat leaves gradients bitwise
equal, runs the hand-written rule (counted at run time) on a recomputed forward, and
lowers XLA's temporary memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl import layers as L
from fdl.primitive import primitive

D, H, F, T, N = 8, 2, 16, 5, 2


@pytest.mark.x64
def test_scan_layers_equals_the_unrolled_stack_in_values_and_gradients():
    block = L.TransformerEncoderBlock(D, H, F, causal=True, rope=True, dtype=jnp.float64)
    stack = L.scan_layers(block, 3)
    shape, params, state = stack.init(jax.random.key(0), (T, D))
    assert shape == (T, D) and params["linear1"]["w"].shape == (3, D, F)
    unrolled = L.serial(block, block, block)
    per_layer = {f"{block.name}_{i}": jax.tree.map(lambda a: a[i], params) for i in range(3)}
    x = jax.random.normal(jax.random.key(1), (N, T, D), jnp.float64)
    lengths = jnp.asarray([5, 3], jnp.int32)

    def scanned(p, x):
        return jnp.sum(jnp.sin(stack.apply(p, state, x, lengths=lengths)[0]))

    def loop(p, x):  # serial passes no lengths: apply the blocks by hand
        for i in range(3):
            x, _ = block.apply(p[f"{block.name}_{i}"], {}, x, lengths=lengths)
        return jnp.sum(jnp.sin(x))

    np.testing.assert_allclose(scanned(params, x), loop(per_layer, x), rtol=1e-13)
    gs, gxs = jax.grad(scanned, argnums=(0, 1))(params, x)
    gl, gxl = jax.grad(loop, argnums=(0, 1))(per_layer, x)
    np.testing.assert_allclose(gxs, gxl, rtol=1e-12, atol=1e-14)
    for i in range(3):
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda a: a[i], gs)),
                        jax.tree.leaves(gl[f"{block.name}_{i}"])):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert unrolled.init(jax.random.key(0), (T, D))[0] == (T, D)


def _counting_cube():
    """`y = x³` with a hand rule whose forward and backward count their runs."""
    calls = {"forward": 0, "backward": 0}

    def bump(name):
        def count(*_):
            calls[name] += 1
        return count

    def cube(x):
        """`y = x³`, `∂L/∂x = 3x² ⊙ ∂L/∂y`."""
        return x ** 3

    def fwd(x):
        jax.debug.callback(bump("forward"))
        return x ** 3, x

    def backward(x, g):
        jax.debug.callback(bump("backward"))
        return (3 * x * x * g,)

    def tangent(x, t):
        return 3 * x * x * t[0]

    return primitive(cube, backward, fwd=fwd, tangent=tangent, register=False), calls


@pytest.mark.float32
def test_remat_recomputes_the_forward_and_still_runs_the_hand_rule():
    cube, calls = _counting_cube()
    layer = L.stateless("cube", lambda x: jnp.sin(cube(x)))
    x = jnp.linspace(-1.0, 1.0, 6)
    grads = {}
    for name, lay in (("plain", layer), ("remat", L.remat(layer))):
        calls.update(forward=0, backward=0)
        grads[name] = jax.jit(jax.grad(lambda x: jnp.sum(lay.apply({}, {}, x)[0])))(x)
        jax.effects_barrier()
        grads[name + " calls"] = dict(calls)
    assert grads["plain calls"] == {"forward": 1, "backward": 1}
    assert grads["remat calls"] == {"forward": 2, "backward": 1}  # recomputed, hand rule once
    np.testing.assert_array_equal(grads["plain"], grads["remat"])


@pytest.mark.float32
def test_remat_gradients_are_bitwise_equal_and_deep_stacks_use_less_temporary_memory():
    block = L.TransformerEncoderBlock(16, 2, 32, causal=True)
    _, params, _ = block.init(jax.random.key(0), (16, 16))
    x = jax.random.normal(jax.random.key(1), (4, 16, 16))

    def grad_of(layer):
        return jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, {}, x)[0])),
                                argnums=(0, 1)))

    plain, rematted = grad_of(block)(params, x), grad_of(L.remat(block))(params, x)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(rematted)):
        np.testing.assert_array_equal(a, b)

    def temp_bytes(layer):
        _, p, _ = layer.init(jax.random.key(0), (16, 16))
        return grad_of(layer).lower(p, x).compile().memory_analysis().temp_size_in_bytes

    deep = temp_bytes(L.scan_layers(block, 8))
    deep_remat = temp_bytes(L.scan_layers(L.remat(block, prevent_cse=False), 8))
    assert deep_remat < 0.5 * deep, (deep, deep_remat)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="remat: policy must be None, a jax.checkpoint_policies"):
        L.remat(L.Relu(), policy="keep_everything_please")
    with pytest.raises(TypeError, match="scan_layers: layer must be a Layer"):
        L.scan_layers(L.Relu, 2)
    with pytest.raises(ValueError, match=r"scan_layers: the layer maps shape \(4,\) to \(3,\)"):
        L.scan_layers(L.Dense(3), 2).init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match="Bidirectional: merge must be one of"):
        L.Bidirectional(L.LSTM(3), merge="mean")
