"""Group norm, instance norm, weight norm and spectral normalisation against numpy
transcriptions of their definitions, gradients against autodiff and finite differences
beyond the registered examples, and validation messages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl import check
from fdl.ops import (group_norm, instance_norm, layer_norm, power_iteration, spectral_normalize,
                     weight_norm)
from conftest import normal


def _group_norm_numpy(x, gamma, beta, groups, eps):
    n, c = x.shape[0], x.shape[-1]
    out = np.empty_like(x)
    per = c // groups
    for i in range(n):
        for g in range(groups):
            block = x[i, ..., g * per:(g + 1) * per]
            mu, var = block.mean(), block.var()
            out[i, ..., g * per:(g + 1) * per] = (block - mu) / np.sqrt(var + eps)
    return out * gamma + beta


@pytest.mark.x64
@pytest.mark.parametrize("shape, groups", [((2, 4, 3, 6), 3), ((3, 8), 4), ((2, 5, 4), 1),
                                           ((2, 3, 2, 4), 4)])
def test_group_norm_is_its_definition(shape, groups):
    x, gamma, beta = normal(0, *shape, scale=3.0), normal(1, shape[-1]), normal(2, shape[-1])
    y = group_norm(x, gamma, beta, groups, 1e-4)
    np.testing.assert_allclose(y, _group_norm_numpy(*map(np.asarray, (x, gamma, beta)), groups,
                                                    1e-4), rtol=1e-11, atol=1e-12)
    check.vjp(group_norm, x, gamma, beta, groups, 1e-4).raise_if_failed()
    check.jvp(group_norm, x, gamma, beta, groups, 1e-4).raise_if_failed()


@pytest.mark.x64
def test_instance_norm_is_group_norm_with_one_channel_per_group_and_its_definition():
    x, gamma, beta = normal(3, 2, 3, 4, 5, scale=2.0), normal(4, 5), normal(5, 5)
    y = instance_norm(x, gamma, beta, 1e-5)
    xn = np.asarray(x)
    mu, var = xn.mean(axis=(1, 2), keepdims=True), xn.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y, (xn - mu) / np.sqrt(var + 1e-5) * np.asarray(gamma)
                               + np.asarray(beta), rtol=1e-11, atol=1e-12)
    np.testing.assert_array_equal(y, group_norm(x, gamma, beta, 5, 1e-5))
    # group norm with one group on N×d is layer norm
    z = normal(6, 4, 6)
    np.testing.assert_allclose(group_norm(z, gamma[:1].repeat(6), beta[:1].repeat(6), 1, 1e-5),
                               layer_norm(z, gamma[:1].repeat(6), beta[:1].repeat(6), 1e-5),
                               rtol=1e-12)


@pytest.mark.float32
def test_group_and_instance_norm_float32_and_messages():
    x, gamma, beta = normal(7, 2, 3, 3, 4), jnp.ones(4), jnp.zeros(4)
    y = group_norm(x, gamma, beta, 2)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y).reshape(2, 9, 2, 2).mean(axis=(1, 3)), 0,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"group_norm: groups=3 must divide the number of "
                                         r"channels, 4"):
        group_norm(x, gamma, beta, 3)
    with pytest.raises(ValueError, match="group_norm: groups must be a positive int, got 0"):
        group_norm(x, gamma, beta, 0)
    with pytest.raises(ValueError, match="group_norm: gamma must have shape"):
        group_norm(x, jnp.ones(3), beta, 2)
    with pytest.raises(ValueError, match="group_norm: each group holds one value"):
        group_norm(jnp.ones((2, 4)), gamma, beta, 4)
    with pytest.raises(ValueError, match="instance_norm: x must have positions to normalise"):
        instance_norm(jnp.ones((2, 4)), gamma, beta)
    with pytest.raises(ValueError, match="instance_norm: eps must be > 0"):
        instance_norm(x, gamma, beta, 0.0)


# --------------------------------------------------------------------------- #


@pytest.mark.x64
def test_weight_norm_is_its_definition_and_its_v_gradient_is_orthogonal_to_v():
    v, g = normal(8, 3, 3, 2, 4), normal(9, 4)
    w = weight_norm(v, g)
    vn = np.asarray(v).reshape(-1, 4)
    expected = vn / np.linalg.norm(vn, axis=0) * np.asarray(g)
    np.testing.assert_allclose(np.asarray(w).reshape(-1, 4), expected, rtol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(w).reshape(-1, 4), axis=0),
                               np.abs(np.asarray(g)), rtol=1e-13)
    gw = normal(10, *w.shape)
    dv, dg = jax.vjp(weight_norm, v, g)[1](gw)
    np.testing.assert_allclose(np.sum(np.asarray(dv * v).reshape(-1, 4), axis=0), 0, atol=1e-12)
    check.vjp(weight_norm, v, g).raise_if_failed()
    check.jvp(weight_norm, v, g).raise_if_failed()


@pytest.mark.x64
def test_power_iteration_converges_to_the_top_singular_pair_and_normalises():
    w = normal(11, 2, 3, 5)   # read as 6×5
    u = jnp.ones(6) / np.sqrt(6)
    u, v = power_iteration(w, u, steps=200)
    s = np.linalg.svd(np.asarray(w).reshape(6, 5), compute_uv=False)
    np.testing.assert_allclose(u @ np.asarray(w).reshape(6, 5) @ v, s[0], rtol=1e-10)
    y = spectral_normalize(w, u, v)
    np.testing.assert_allclose(np.linalg.svd(np.asarray(y).reshape(6, 5), compute_uv=False)[0],
                               1.0, rtol=1e-10)
    np.testing.assert_allclose(y, np.asarray(w) / s[0], rtol=1e-10)
    check.vjp(spectral_normalize, w, u, v).raise_if_failed()
    check.jvp(spectral_normalize, w, u, v).raise_if_failed()


@pytest.mark.float32
def test_weight_and_spectral_norm_messages():
    with pytest.raises(ValueError, match="weight_norm: g must have shape"):
        weight_norm(jnp.ones((3, 4)), jnp.ones(3))
    with pytest.raises(ValueError, match=r"spectral_normalize: u must have shape \(6,\)"):
        spectral_normalize(jnp.ones((2, 3, 5)), jnp.ones(5), jnp.ones(5))
    with pytest.raises(ValueError, match="spectral_normalize: v must have shape"):
        spectral_normalize(jnp.ones((6, 5)), jnp.ones(6), jnp.ones(4))
