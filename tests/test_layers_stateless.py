"""`fdl.layers.stateless`: a parameter-free layer from a function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl import layers


@pytest.mark.float32
def test_stateless_builds_a_parameter_free_layer():
    layer = layers.stateless("double", lambda x: 2 * x, lambda s: s[:-1] + (s[-1],))
    shape, params, state = layer.init(jax.random.key(0), [3, 4])
    assert (shape, params, state) == ((3, 4), {}, {})
    y, new_state = layer.apply({}, {}, jnp.ones((2, 3, 4)))
    np.testing.assert_array_equal(y, 2 * jnp.ones((2, 3, 4)))
    assert new_state == {}
    seen = []
    noisy = layers.stateless("noisy", lambda x, key, train: seen.append((key, train)) or x,
                             random=True)
    noisy.apply({}, {}, jnp.ones(2), key="k", train=True)
    assert seen == [("k", True)]
