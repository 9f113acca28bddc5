"""Softmax and log-softmax along one axis (default: the last, the classes).

For a row $z ∈ ℝ^K$: $p = softmax(z)$, $p_i = e^{z_i} / Σ_k e^{z_k}$, and
$log p = z − logsumexp(z)$. Both are shift-invariant, so the forward subtracts
`max(z)` first; no `e^{z}` overflows even for logits of magnitude 1e4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fdl import _validate as v
from fdl.primitive import Example, gaussian, primitive


def _shifted(x, axis):
    # max is a constant shift, exact by shift invariance; stop_gradient keeps the
    # autodiff reference free of the (mathematically zero) path through max.
    return x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    r"""Softmax $p = e^{z} / Σ_k e^{z_k}$ along `axis` (static).

    Jacobian of one row: $∂p_i/∂z_j = p_i(δ_ij − p_j)$, i.e.
    $J = diag(p) − p pᵀ$ ($K×K$, symmetric). The VJP never forms it:
    $∂L/∂z = Jᵀ g = p ⊙ g − p (pᵀ g) = p ⊙ (g − ⟨g, p⟩)$, with the inner product
    taken along `axis`. Saves $p$.

    Tangent (forward mode): $dp = J dz = p ⊙ (dz − ⟨p, dz⟩)$ (same shape as $z$, inner
    product along `axis`); $J$ is symmetric, so it is the VJP's formula with `dz` for $g$.
    """
    e = jnp.exp(_shifted(x, axis))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def _softmax_backward(axis, p, g):
    return (p * (g - jnp.sum(g * p, axis=axis, keepdims=True)),)


def _validate(fn):
    def check(x, axis):  # the rank needed depends on the axis
        v.ndim_at_least(fn, "x", x, 1)
        v.axis_in_range(fn, axis, jnp.ndim(x))
    return check


def _save_y(x, axis, y):
    return y


_EXAMPLES = [
    Example((gaussian(4, 6), -1)),
    Example((gaussian(3, 5, 2), 1)),
    Example((gaussian(1, 1), -1)),
    Example((gaussian(7, scale=3.0), 0)),
]


def _softmax_tangent(axis, p, t):
    (dz,) = t
    return p * (dz - jnp.sum(p * dz, axis=axis, keepdims=True))


softmax = primitive(
    softmax, _softmax_backward, save=_save_y, static=("axis",), tangent=_softmax_tangent,
    spec=v.shapes("softmax", x="…"), validate=_validate("softmax"), examples=_EXAMPLES,
)


def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    r"""Log-softmax $y = z − logsumexp(z)$ along `axis` (static).

    $∂y_i/∂z_j = δ_ij − p_j$ with $p = softmax(z) = e^{y}$, so
    $∂L/∂z = g − p Σ_i g_i$ (sum along `axis`). Saves $y$ ($p = e^{y}$).

    Tangent: $dy = dz − ⟨p, dz⟩$ (inner product along `axis`, broadcast back): row $i$
    of $J$ is $e_iᵀ − pᵀ$, so $(J dz)_i = dz_i − Σ_j p_j dz_j$ — not symmetric, unlike
    softmax's.
    """
    s = _shifted(x, axis)
    return s - jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))


def _log_softmax_backward(axis, y, g):
    return (g - jnp.exp(y) * jnp.sum(g, axis=axis, keepdims=True),)


def _log_softmax_tangent(axis, y, t):
    (dz,) = t
    return dz - jnp.sum(jnp.exp(y) * dz, axis=axis, keepdims=True)


log_softmax = primitive(
    log_softmax, _log_softmax_backward, save=_save_y, static=("axis",),
    tangent=_log_softmax_tangent, spec=v.shapes("log_softmax", x="…"),
    validate=_validate("log_softmax"), examples=_EXAMPLES,
)
