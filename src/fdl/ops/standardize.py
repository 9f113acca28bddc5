"""The two pieces every normalisation shares, derived once: standardisation and the
`γ x̂ + β` tail.

Not primitives: the norms (`fdl.ops.norm`, `fdl.ops.group_norm`) are built from them
and carry the derivation of their own statistics.

**Standardisation.** Over one group of $m$ values (a channel for batch norm, a row for
layer norm, an example's group of channels and pixels for group norm),
$μ = (1/m) Σ x$, $v = (1/m) Σ (x − μ)²$, $σ = √(v + ε)$, $x̂ = (x − μ)/σ$. Its Jacobian
is $∂x̂_i/∂x_j = (δ_{ij} − 1/m − x̂_i x̂_j/m)/σ$ (the $−1/m$ from $μ$, the $x̂_i x̂_j/m$
from $σ$, by $∂σ/∂x_j = x̂_j/m$): symmetric, so the backward (with $ĝ = ∂L/∂x̂$) and
the tangent (with $dx$) are the same projection

$$ P(u) = (1/σ)\\,(u − \\mathrm{mean}(u) − x̂ ⊙ \\mathrm{mean}(x̂ ⊙ u)), $$

never building the $m×m$ Jacobian. Without centring (RMS norm, $x̂ = x/r$,
$r = √(\\mathrm{mean}(x²) + ε)$) the $\\mathrm{mean}(u)$ term drops out.

**The tail.** $y = γ ⊙ x̂ + β$ with $γ, β ∈ ℝ^C$ on the last axis (per channel or per
feature). With $G = ∂L/∂y$: $∂L/∂β = Σ_{batch} G$, $∂L/∂γ = Σ_{batch} G ⊙ x̂$ (sums
over every axis but the last) and $∂L/∂x̂ = ĝ = γ ⊙ G$; its differential is
$dy = γ ⊙ dx̂ + dγ ⊙ x̂ + dβ$.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["affine", "affine_backward", "affine_tangent", "per_channel", "project"]


def per_channel(a: jax.Array, ndim: int) -> jax.Array:
    """A `(C,)` vector reshaped to $(1, …, 1, C)$ to broadcast over rank `ndim`."""
    return a.reshape((1,) * (ndim - 1) + a.shape)


def project(xhat: jax.Array, inv_std: jax.Array, u: jax.Array, axes: int | Sequence[int],
            *, centred: bool = True) -> jax.Array:
    """$P(u) = (1/σ)(u − mean(u) − x̂ ⊙ mean(x̂ ⊙ u))$, means over `axes` (each group);
    `inv_std` $= 1/σ$ broadcasts against `u`. `centred=False`: no `mean(u)` term."""
    axes = tuple(axes) if isinstance(axes, Sequence) else (axes,)
    out = u - xhat * jnp.mean(xhat * u, axis=axes, keepdims=True)
    if centred:
        out = out - jnp.mean(u, axis=axes, keepdims=True)
    return inv_std * out


def affine(xhat: jax.Array, gamma: jax.Array, beta: jax.Array | None) -> jax.Array:
    """$y = γ ⊙ x̂ + β$ ($β$ `None`: no shift), $γ, β$ on the last axis."""
    y = per_channel(gamma, xhat.ndim) * xhat
    return y if beta is None else y + per_channel(beta, xhat.ndim)


def affine_backward(xhat: jax.Array, gamma: jax.Array,
                    g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(ĝ, ∂L/∂γ, ∂L/∂β)` $= (γ ⊙ G, Σ_{batch} G ⊙ x̂, Σ_{batch} G)$."""
    batch = tuple(range(g.ndim - 1))
    return g * per_channel(gamma, g.ndim), jnp.sum(g * xhat, axis=batch), jnp.sum(g, axis=batch)


def affine_tangent(xhat: jax.Array, gamma: jax.Array, dxhat: jax.Array, dgamma: jax.Array,
                   dbeta: jax.Array | None) -> jax.Array:
    """$dy = γ ⊙ dx̂ + dγ ⊙ x̂ + dβ$ ($dβ$ `None`: no shift)."""
    nd = xhat.ndim
    dy = per_channel(gamma, nd) * dxhat + xhat * per_channel(dgamma, nd)
    return dy if dbeta is None else dy + per_channel(dbeta, nd)
