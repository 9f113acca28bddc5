"""Kullback–Leibler divergence between distributions on the last axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v
from fdl._losses.reduction import check_reduction, per_example, reduce
from fdl.primitive import Example, gaussian, primitive, probabilities

__all__ = ["kl_divergence"]


def kl_divergence(p: jax.Array, q: jax.Array, log_inputs: bool = False,
                  reduction: str = "mean") -> jax.Array:
    r"""$\mathrm{KL}(p ‖ q) = Σ_k p_k (\log p_k − \log q_k)$ per example, classes last.

    Shapes: $p, q ∈ ℝ^{…×K}$ (the same shape); one value per row, reduced over the
    rows by `reduction` (`"mean"` is the mean over examples — PyTorch's
    `"batchmean"`, the true divergence per example). `log_inputs` and `reduction`
    static. With `log_inputs=False` the arguments are probabilities ($p, q ≥ 0$;
    $0 \log 0 = 0$); with `log_inputs=True` they are $a = \log p$ and $b = \log q$
    (e.g. `log_softmax` outputs), which avoids $\log 0$ for underflowed
    probabilities. The divergence is $≥ 0$, and 0 when $p = q$ on the simplex.

    Derivation, one row ($ℓ = Σ_k p_k \log p_k − p_k \log q_k$; element-wise):

    * probabilities: $∂ℓ/∂p_k = \log p_k − \log q_k + 1$ (from
      $∂(p \log p)/∂p = \log p + 1$), $∂ℓ/∂q_k = −p_k/q_k$;
    * log-probabilities: $ℓ = Σ_k e^{a_k}(a_k − b_k)$, so
      $∂ℓ/∂a_k = e^{a_k}(a_k − b_k) + e^{a_k} = p_k(a_k − b_k + 1)$ and
      $∂ℓ/∂b_k = −p_k$;

    each multiplied by the row's cotangent ($g/n$ for the mean over $n$ rows).
    (On the simplex the $+1$ terms sum to a constant along the row; they are kept:
    the rule is the derivative of the function as written, off the simplex too.)

    Residuals: the two arguments.

    Tangent, per row: $dℓ = Σ_k (\log p_k − \log q_k + 1) dp_k − (p_k/q_k) dq_k$
    (probabilities) or $Σ_k p_k(a_k − b_k + 1) da_k − p_k db_k$ (logs), reduced like $ℓ$.
    """
    if log_inputs:
        return reduce(jnp.sum(jnp.exp(p) * (p - q), axis=-1), reduction)
    terms = jax.scipy.special.xlogy(p, p) - jax.scipy.special.xlogy(p, q)
    return reduce(jnp.sum(terms, axis=-1), reduction)


def _save(p, q, log_inputs, reduction, y):
    return p, q


def _partials(p, q, log_inputs):
    """$(∂ℓ/∂p, ∂ℓ/∂q)$ element-wise (of the first and second argument)."""
    if log_inputs:
        prob = jnp.exp(p)
        return prob * (p - q + 1), -prob
    return jnp.log(p) - jnp.log(q) + 1, -p / q


def _backward(log_inputs, reduction, residuals, g):
    p, q = residuals
    gp, gq = _partials(p, q, log_inputs)
    ge = per_example(g, p.shape[:-1], reduction)[..., None]
    return ge * gp, ge * gq


def _tangent(log_inputs, reduction, residuals, t):
    p, q = residuals
    dp, dq = t
    gp, gq = _partials(p, q, log_inputs)
    return reduce(jnp.sum(gp * dp + gq * dq, axis=-1), reduction)


def _validate(p, q, log_inputs, reduction):
    fn = "kl_divergence"
    v.flag(fn, "log_inputs", log_inputs)
    check_reduction(fn, reduction)
    if log_inputs:
        return
    for name, a in (("p", p), ("q", q)):
        if v.is_concrete(a) and a.size and np.nanmin(np.asarray(a)) < 0:
            i = v.first_index(np.asarray(a) < 0)
            raise ValueError(
                f"{fn}: {name} must hold probabilities (≥ 0), got {np.asarray(a)[i]} at index "
                f"{i}; pass log-probabilities with log_inputs=True")


def _spread(*shape: int):
    """Example rows on the simplex with every entry at least `1/(2K)`: half a random
    distribution, half the uniform one (so float32 finite differences stay positive)."""
    rows = probabilities(*shape)
    return lambda rng, dtype: 0.5 * rows(rng, dtype) + 0.5 / shape[-1]


kl_divergence = primitive(
    kl_divergence, _backward, save=_save, static=("log_inputs", "reduction"),
    spec=v.shapes("kl_divergence", p="…×K", q="…×K"), validate=_validate,
    tangent=_tangent, examples=[
        Example((_spread(4, 5), _spread(4, 5), False, "mean")),
        Example((gaussian(3, 4), gaussian(3, 4), True, "sum")),
        Example((probabilities(2, 3, 3), probabilities(2, 3, 3), False, "none")),
    ],
)
