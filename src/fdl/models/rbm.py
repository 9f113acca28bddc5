r"""The restricted Boltzmann machine (RBM) as pure functions with explicit keys.

The model
---------
Binary visible units ``v ∈ {0,1}^{n_v}`` and hidden units ``h ∈ {0,1}^{n_h}``, with
weights ``W ∈ ℝ^{n_v×n_h}``, visible biases ``b ∈ ℝ^{n_v}``, hidden biases
``c ∈ ℝ^{n_h}``. The energy and the Boltzmann distribution::

    E(v, h) = −vᵀWh − bᵀv − cᵀh,        p(v, h) = e^{−E(v, h)} / Z,
    Z = Σ_{v,h} e^{−E(v, h)}.

Summing out ``h`` (each ``h_j`` separately, since ``E`` is linear in ``h``) gives the
free energy, ``p(v) = e^{−F(v)} / Z``::

    F(v) = −bᵀv − Σ_j softplus(c_j + (vᵀW)_j),     softplus(x) = log(1 + eˣ).

There are no visible–visible or hidden–hidden connections, so each layer is
conditionally independent given the other (σ the logistic function)::

    p(h_j = 1 | v) = σ(c_j + (vᵀW)_j),      p(v_i = 1 | h) = σ(b_i + (Wh)_i),

and one step of block Gibbs sampling draws all of ``h`` given ``v``, then all of ``v``
given ``h``.

The learning rule
-----------------
For data ``v⁽¹⁾…v⁽ᴺ⁾``, ``−log p(v) = F(v) + log Z``, and ``∂ log Z/∂θ = −E_model[∂F/∂θ]``,
so the gradient of the mean negative log-likelihood is "data minus model" in the
free energy's derivatives; written out in the units' statistics (``ĥ(v) = p(h = 1 | v)``)::

    ∂(−ℓ)/∂W = ⟨v ĥ(v)ᵀ⟩_model − ⟨v ĥ(v)ᵀ⟩_data
    ∂(−ℓ)/∂b = ⟨v⟩_model − ⟨v⟩_data
    ∂(−ℓ)/∂c = ⟨ĥ(v)⟩_model − ⟨ĥ(v)⟩_data

:func:`data_statistics` computes the data term by hand (it equals autodiff of the mean
free energy, which the tests check). The model term needs samples from ``p(v)``;
``Z`` is a sum over ``2^{n_v+n_h}`` states. Contrastive divergence (CD-k) starts a
Gibbs chain at each data vector and runs ``k`` steps; persistent CD (PCD) keeps the
chains from one update to the next. For an RBM small enough to enumerate (``n_v ≲
20``), :func:`exact_log_likelihood` and :func:`exact_gradient` compute both terms
exactly by summing over every visible state.

Relation to the fully connected Boltzmann machine
-------------------------------------------------
A Boltzmann machine (Ackley, Hinton & Sejnowski, 1985) has binary units ``s`` with
symmetric couplings between *every* pair, ``E(s) = −½ sᵀLs − aᵀs`` (``L`` symmetric,
zero diagonal), and the same learning rule: ``Δ L_ij ∝ ⟨s_i s_j⟩_data − ⟨s_i
s_j⟩_model``. With visible–visible and hidden–hidden couplings, ``p(h | v)`` no longer
factorises, so even the data term needs a Markov chain per example, and Gibbs
sampling must update one unit at a time. The RBM is the Boltzmann machine with
those couplings removed (``L`` bipartite: ``L = [[0, W], [Wᵀ, 0]]``, ``a = [b; c]``):
the data term becomes exact and cheap, and each Gibbs step updates a whole layer.

Conventions: batch-first, ``v ∈ ℝ^{…×n_v}`` (any leading batch axes), float arrays of
0s and 1s (probabilities in ``[0, 1]`` are accepted as "mean-field" inputs). Functions
that draw take a ``jax.random`` key first and never reuse it.

References: Smolensky, "Information processing in dynamical systems: foundations of
harmony theory", 1986; Hinton, "Training products of experts by minimizing
contrastive divergence", 2002; Tieleman, "Training restricted Boltzmann machines
using approximations to the likelihood gradient", 2008 (PCD); Hinton, "A practical
guide to training restricted Boltzmann machines", 2010.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl import _validate as v_
from fdl.ops import linear, sigmoid, softplus

MAX_ENUMERATED_VISIBLE = 20  # 2^20 visible states is the most the exact functions enumerate


class RBMParams(NamedTuple):
    """The parameters (a pytree, so ``fdl.optim`` updates it like any other).

    Fields:
      w: ``(n_v, n_h)`` weights.
      b: ``(n_v,)`` visible biases.
      c: ``(n_h,)`` hidden biases.
    """

    w: jax.Array
    b: jax.Array
    c: jax.Array


def init(key: jax.Array, n_visible: int, n_hidden: int, *, scale: float = 0.01,
         dtype: Any = jnp.float32) -> RBMParams:
    """Weights ``N(0, scale²)``, zero biases (Hinton's practical guide, §8)."""
    n_visible = v_.int_at_least("rbm.init", "n_visible", n_visible, 1)
    n_hidden = v_.int_at_least("rbm.init", "n_hidden", n_hidden, 1)
    v_.finite_number("rbm.init", "scale", scale, low=0.0)
    w = scale * jax.random.normal(key, (n_visible, n_hidden), dtype)
    return RBMParams(w, jnp.zeros((n_visible,), dtype), jnp.zeros((n_hidden,), dtype))


def _check(fn: str, params: Any, x: Any, name: str, layer: str) -> None:
    if not isinstance(params, RBMParams):
        raise TypeError(f"{fn}: params must be an RBMParams (from fdl.models.rbm.init), "
                        f"got {type(params).__name__}")
    v_.floating(fn, name, x)
    v_.ndim_at_least(fn, name, x, 1, f"…×n_{layer[0]}")
    n = params.w.shape[0 if layer == "visible" else 1]
    if x.shape[-1] != n:
        raise ValueError(f"{fn}: {name} has {x.shape[-1]} {layer} units in its last axis but "
                         f"the RBM has {n}; expected shape (…, {n})")


def _bcast(a: jax.Array, like: jax.Array) -> jax.Array:
    """``a`` (a vector) with leading unit axes to broadcast against ``like``."""
    return a.reshape((1,) * (like.ndim - 1) + a.shape)


def energy(params: RBMParams, v: jax.Array, h: jax.Array) -> jax.Array:
    """``E(v, h) = −vᵀWh − bᵀv − cᵀh`` for each pair in the batch, shape ``v.shape[:-1]``."""
    _check("rbm.energy", params, v, "v", "visible")
    _check("rbm.energy", params, h, "h", "hidden")
    w, b, c = params
    return -(jnp.sum((v @ w) * h, -1) + jnp.sum(v * _bcast(b, v), -1)
             + jnp.sum(h * _bcast(c, h), -1))


def free_energy(params: RBMParams, v: jax.Array) -> jax.Array:
    """``F(v) = −bᵀv − Σ_j softplus(c_j + (vᵀW)_j)``, so ``p(v) ∝ e^{−F(v)}``."""
    _check("rbm.free_energy", params, v, "v", "visible")
    w, b, c = params
    return -jnp.sum(v * _bcast(b, v), -1) - jnp.sum(softplus(linear(v, w, c)), -1)


def hidden_probs(params: RBMParams, v: jax.Array) -> jax.Array:
    """``p(h = 1 | v) = σ(c + vᵀW)``, shape ``(…, n_h)``."""
    _check("rbm.hidden_probs", params, v, "v", "visible")
    return sigmoid(linear(v, params.w, params.c))


def visible_probs(params: RBMParams, h: jax.Array) -> jax.Array:
    """``p(v = 1 | h) = σ(b + Wh)``, shape ``(…, n_v)``."""
    _check("rbm.visible_probs", params, h, "h", "hidden")
    return sigmoid(linear(h, params.w.T, params.b))


def _bernoulli(key: jax.Array, p: jax.Array) -> jax.Array:
    return jax.random.bernoulli(key, p).astype(p.dtype)


def sample_hidden(key: jax.Array, params: RBMParams, v: jax.Array) -> jax.Array:
    """Draw ``h ~ p(h | v)`` (0/1 floats)."""
    return _bernoulli(key, hidden_probs(params, v))


def sample_visible(key: jax.Array, params: RBMParams, h: jax.Array) -> jax.Array:
    """Draw ``v ~ p(v | h)`` (0/1 floats)."""
    return _bernoulli(key, visible_probs(params, h))


def gibbs_step(key: jax.Array, params: RBMParams, v: jax.Array) -> jax.Array:
    """One step of block Gibbs sampling: ``h ~ p(h | v)``, then ``v' ~ p(v | h)``."""
    kh, kv = jax.random.split(key)
    return sample_visible(kv, params, sample_hidden(kh, params, v))


def gibbs_chain(key: jax.Array, params: RBMParams, v: jax.Array, steps: int) -> jax.Array:
    """``steps`` Gibbs steps from ``v`` (a ``lax.scan``); returns the last visible state."""
    steps = v_.int_at_least("rbm.gibbs_chain", "steps", steps, 0)
    _check("rbm.gibbs_chain", params, v, "v", "visible")
    keys = jax.random.split(key, steps)
    return jax.lax.scan(lambda x, k: (gibbs_step(k, params, x), None), v, keys)[0]


def data_statistics(params: RBMParams, v: jax.Array) -> RBMParams:
    """``(⟨v ĥᵀ⟩, ⟨v⟩, ⟨ĥ⟩)`` over the batch, ``ĥ = p(h = 1 | v)``, as an :class:`RBMParams`.

    This is ``−∂⟨F(v)⟩/∂(W, b, c)``, the negative gradient of the mean free energy,
    computed by hand (``∂F/∂W = −v σ(c + vᵀW)ᵀ``, ``∂F/∂b = −v``, ``∂F/∂c = −σ(c + vᵀW)``).
    """
    _check("rbm.data_statistics", params, v, "v", "visible")
    v2 = v.reshape(-1, v.shape[-1])
    hp = hidden_probs(params, v2)
    n = v2.shape[0]
    return RBMParams(v2.T @ hp / n, jnp.mean(v2, 0), jnp.mean(hp, 0))


def _model_minus_data(model: RBMParams, data: RBMParams) -> RBMParams:
    return RBMParams(*(m - d for m, d in zip(model, data)))


def cd_gradient(key: jax.Array, params: RBMParams, v: jax.Array, k: int = 1) -> RBMParams:
    """CD-k estimate of ``∂(−ℓ)/∂θ``: model statistics after ``k`` Gibbs steps from the data,
    minus data statistics (descend it, e.g. with ``fdl.optim``)."""
    k = v_.int_at_least("rbm.cd_gradient", "k", k, 1)
    negative = gibbs_chain(key, params, v, k)
    return _model_minus_data(data_statistics(params, negative), data_statistics(params, v))


def pcd_gradient(key: jax.Array, params: RBMParams, v: jax.Array, chains: jax.Array,
                 k: int = 1) -> tuple[RBMParams, jax.Array]:
    """Persistent CD: advance the persistent ``chains`` ``(M, n_v)`` by ``k`` Gibbs steps,
    use them for the model statistics; returns ``(gradient estimate, new chains)``."""
    k = v_.int_at_least("rbm.pcd_gradient", "k", k, 1)
    _check("rbm.pcd_gradient", params, chains, "chains", "visible")
    chains = gibbs_chain(key, params, chains, k)
    return _model_minus_data(data_statistics(params, chains), data_statistics(params, v)), chains


def reconstruction_error(params: RBMParams, v: jax.Array) -> jax.Array:
    """Mean squared error of the mean-field reconstruction ``p(v = 1 | ĥ(v))`` of ``v``."""
    return jnp.mean((v - visible_probs(params, hidden_probs(params, v))) ** 2)


def all_states(n: int, dtype: Any = jnp.float32) -> jax.Array:
    """Every binary vector of length ``n``, shape ``(2ⁿ, n)``, in counting order."""
    n = v_.int_at_least("rbm.all_states", "n", n, 0)
    return jnp.asarray(list(itertools.product((0, 1), repeat=n)), dtype).reshape(2**n, n)


def _enumerable(fn: str, params: RBMParams) -> None:
    n = params.w.shape[0]
    if n > MAX_ENUMERATED_VISIBLE:
        raise ValueError(f"{fn}: enumerating 2^{n} visible states is too many; exact "
                         f"computations need n_visible ≤ {MAX_ENUMERATED_VISIBLE}")


def log_partition(params: RBMParams) -> jax.Array:
    """``log Z = log Σ_v e^{−F(v)}``, by enumerating every visible state."""
    _enumerable("rbm.log_partition", params)
    return jax.nn.logsumexp(-free_energy(params, all_states(params.w.shape[0], params.w.dtype)))


def exact_log_likelihood(params: RBMParams, v: jax.Array) -> jax.Array:
    """Mean ``log p(v) = −F(v) − log Z`` over the batch, exactly (small RBMs only)."""
    _check("rbm.exact_log_likelihood", params, v, "v", "visible")
    return jnp.mean(-free_energy(params, v)) - log_partition(params)


def exact_gradient(params: RBMParams, v: jax.Array) -> RBMParams:
    """``∂(−ℓ)/∂θ`` exactly: the model statistics as the ``p(v)``-weighted sum over every
    visible state, minus the data statistics (small RBMs only)."""
    _check("rbm.exact_gradient", params, v, "v", "visible")
    _enumerable("rbm.exact_gradient", params)
    states = all_states(params.w.shape[0], params.w.dtype)
    p = jax.nn.softmax(-free_energy(params, states))  # p(v) for every v
    hp = hidden_probs(params, states)
    model = RBMParams(states.T @ (p[:, None] * hp), p @ states, p @ hp)
    return _model_minus_data(model, data_statistics(params, v))
