"""fdl.models.rbm: the hand-written learning rule against enumeration and autodiff."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl.models import rbm


def small_rbm(dtype, n_v: int = 6, n_h: int = 4, scale: float = 1.5):
    """A 6×4 RBM with weights large enough that Gibbs chains mix slowly, and data."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    p = rbm.init(k1, n_v, n_h, scale=scale, dtype=dtype)
    p = p._replace(b=0.5 * jax.random.normal(k2, (n_v,), dtype),
                   c=0.5 * jax.random.normal(k3, (n_h,), dtype))
    data = rbm.all_states(n_v, dtype)[jax.random.choice(k4, 2**n_v, (20,))]
    return p, data


def flat(g) -> jax.Array:
    return jnp.concatenate([x.ravel() for x in g])


@pytest.mark.x64
def test_data_term_equals_autodiff_of_the_free_energy():
    p, data = small_rbm(jnp.float64)
    mean_free_energy = lambda params: jnp.mean(rbm.free_energy(params, data))
    by_hand = lambda params: jax.tree_util.tree_map(jnp.negative,
                                                    rbm.data_statistics(params, data))
    fdl.check.grad(mean_free_energy, by_hand, p).raise_if_failed()


@pytest.mark.x64
def test_exact_gradient_equals_autodiff_of_the_exact_log_likelihood():
    p, data = small_rbm(jnp.float64)
    fdl.check.grad(lambda params: -rbm.exact_log_likelihood(params, data),
                   lambda params: rbm.exact_gradient(params, data), p).raise_if_failed()


@pytest.mark.x64
def test_free_energy_and_conditionals_match_the_enumerated_joint():
    p, _ = small_rbm(jnp.float64)
    vs, hs = rbm.all_states(6, jnp.float64), rbm.all_states(4, jnp.float64)
    # E for every (v, h): rows v, columns h
    e = rbm.energy(p, jnp.repeat(vs, 16, 0), jnp.tile(hs, (64, 1))).reshape(64, 16)
    # F(v) = −log Σ_h e^{−E(v, h)}
    np.testing.assert_allclose(rbm.free_energy(p, vs), -jax.nn.logsumexp(-e, 1), rtol=1e-12)
    # p(h_j = 1 | v) = Σ_h h_j p(h | v)
    cond = jax.nn.softmax(-e, 1) @ hs
    np.testing.assert_allclose(rbm.hidden_probs(p, vs), cond, rtol=1e-12)
    # p(v) sums to one
    np.testing.assert_allclose(jnp.sum(jnp.exp(-rbm.free_energy(p, vs) - rbm.log_partition(p))),
                               1.0, rtol=1e-12)


@pytest.mark.float32
def test_cd_k_approaches_the_exact_gradient_as_k_grows():
    p, data = small_rbm(jnp.float32)
    exact = flat(rbm.exact_gradient(p, data))
    chains = jnp.tile(data, (400, 1))  # 8,000 chains: the bias, not the noise, dominates
    positive = rbm.data_statistics(p, chains)

    @jax.jit
    def cd_errors(key):  # CD-k for every k ≤ 30 from the same chains, in one program
        def body(v, k):
            v = rbm.gibbs_step(k, p, v)
            g = flat(rbm.data_statistics(p, v)) - flat(positive)
            return v, jnp.linalg.norm(g - exact) / jnp.linalg.norm(exact)
        return jax.lax.scan(body, chains, jax.random.split(key, 30))[1]

    err = np.asarray(cd_errors(jax.random.key(1)))
    assert err[0] > err[2] > err[9], err  # k = 1, 3, 10
    assert err[0] > 0.2 and err[29] < 0.05, err
    cd1 = flat(jax.jit(rbm.cd_gradient)(jax.random.key(2), p, chains))
    assert abs(float(jnp.linalg.norm(cd1 - exact) / jnp.linalg.norm(exact)) - err[0]) < 0.05


@pytest.mark.float32
def test_gibbs_chain_samples_the_model_distribution():
    p, _ = small_rbm(jnp.float32, scale=0.8)
    start = jnp.zeros((20000, 6), jnp.float32)
    samples = jax.jit(rbm.gibbs_chain, static_argnums=3)(jax.random.key(3), p, start, 50)
    idx = (samples @ (2 ** jnp.arange(5, -1, -1)).astype(jnp.float32)).astype(jnp.int32)
    freq = jnp.bincount(idx, length=64) / idx.size
    exact = jnp.exp(-rbm.free_energy(p, rbm.all_states(6)) - rbm.log_partition(p))
    assert float(0.5 * jnp.sum(jnp.abs(freq - exact))) < 0.03  # total variation distance


@pytest.mark.float32
def test_pcd_keeps_its_chains_and_training_raises_the_likelihood():
    p, data = small_rbm(jnp.float32, scale=0.01)
    opt = fdl.optim.sgd(0.2, momentum=0.5)
    state = opt.init(p)
    chains = jnp.zeros((100, 6), jnp.float32)
    before = float(rbm.exact_log_likelihood(p, data))

    @jax.jit
    def step(p, state, chains, key):
        g, chains = rbm.pcd_gradient(key, p, data, chains)
        u, state = opt.update(g, state, p)
        return fdl.optim.apply_updates(p, u), state, chains

    for key in jax.random.split(jax.random.key(5), 400):
        p, state, chains = step(p, state, chains, key)
    assert chains.shape == (100, 6)
    assert float(rbm.exact_log_likelihood(p, data)) > before + 0.25


@pytest.mark.float32
def test_energy_shapes_and_batched_leading_axes():
    p = rbm.init(jax.random.key(0), 5, 3)
    v = jnp.ones((2, 4, 5), jnp.float32)
    h = jnp.ones((2, 4, 3), jnp.float32)
    assert rbm.energy(p, v, h).shape == (2, 4)
    assert rbm.free_energy(p, v).shape == (2, 4)
    assert rbm.hidden_probs(p, v).shape == (2, 4, 3)
    assert rbm.visible_probs(p, h).shape == (2, 4, 5)


@pytest.mark.float32
def test_bad_inputs_are_named():
    p = rbm.init(jax.random.key(0), 6, 4)
    with pytest.raises(ValueError, match=r"rbm.free_energy: v has 5 visible units .* has 6"):
        rbm.free_energy(p, jnp.ones((3, 5)))
    with pytest.raises(TypeError, match="params must be an RBMParams"):
        rbm.free_energy((p.w, p.b, p.c), jnp.ones((3, 6)))
    with pytest.raises(TypeError, match="v must be a floating-point array"):
        rbm.hidden_probs(p, jnp.ones((3, 6), jnp.int32))
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        rbm.cd_gradient(jax.random.key(0), p, jnp.ones((3, 6)), k=0)
    with pytest.raises(ValueError, match="n_hidden must be an int >= 1"):
        rbm.init(jax.random.key(0), 6, 0)
    big = rbm.init(jax.random.key(0), 21, 2)
    with pytest.raises(ValueError, match="n_visible ≤ 20"):
        rbm.log_partition(big)
