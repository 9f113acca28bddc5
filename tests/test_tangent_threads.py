"""Tangent rules traced from several threads at once each see their own zeros.

`fdl.primitive.is_zero` tells a tangent rule which of its tangents are zeros JAX
knows of (arguments not being differentiated). The set is context-local, so two
threads tracing rules at the same time (as `fdl check` does) never read each other's:
with a shared stack, the thread that pushed first would read the other's set.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl.primitive import is_zero, primitive

_BARRIER_TIMEOUT_S = 30


def _product_primitive(seen: dict, barrier: threading.Barrier):
    """`y = x ⊙ w` whose tangent rule records what `is_zero` says, the first time in
    each thread only after both threads are inside their rule (the barrier)."""

    def product(x, w):
        return x * w

    def backward(residuals, g):
        x, w = residuals
        return g * w, g * x

    def tangent(residuals, tangents):
        x, w = residuals
        dx, dw = tangents
        me = threading.current_thread().name
        before = (is_zero(dx), is_zero(dw))
        if me not in seen:
            seen[me] = []
            barrier.wait(_BARRIER_TIMEOUT_S)  # both threads are inside a rule now
        seen[me].append((before, (is_zero(dx), is_zero(dw))))
        return dx * w + x * dw  # no skipping: the value must not depend on is_zero

    return primitive(product, backward, save=lambda x, w, y: (x, w), tangent=tangent,
                     register=False)


@pytest.mark.float32
def test_two_threads_tracing_tangent_rules_see_their_own_zeros():
    seen: dict[str, list] = {}
    barrier = threading.Barrier(2)
    f = _product_primitive(seen, barrier)
    x, w = jnp.arange(1.0, 4.0), jnp.array([2.0, -1.0, 0.5])
    dx, dw = jnp.array([1.0, 0.0, 2.0]), jnp.array([0.5, 3.0, -1.0])
    results: dict[str, object] = {}

    def along_x():  # w is data: its tangent is a known zero
        results["x"] = jax.jvp(lambda x: f(x, w), (x,), (dx,))[1]

    def along_w():  # x is data
        results["w"] = jax.jvp(lambda w: f(x, w), (w,), (dw,))[1]

    threads = [threading.Thread(target=along_x, name="x"),
               threading.Thread(target=along_w, name="w")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * _BARRIER_TIMEOUT_S)
    assert not barrier.broken, "the two rules were never traced at the same time"
    np.testing.assert_allclose(results["x"], dx * w, rtol=1e-6)
    np.testing.assert_allclose(results["w"], x * dw, rtol=1e-6)
    assert seen["x"] and seen["w"]
    assert set(seen["x"]) == {((False, True), (False, True))}
    assert set(seen["w"]) == {((True, False), (True, False))}


@pytest.mark.float32
def test_is_zero_is_false_outside_a_rule():
    assert not is_zero(jnp.zeros(3))
