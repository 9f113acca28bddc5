"""The affine map ``Y = XW + b`` (a dense layer's primitive).

Layout is batch-first: ``X ∈ ℝ^{N×d_in}``, ``W ∈ ℝ^{d_in×d_out}``,
``b ∈ ℝ^{d_out}``, ``Y ∈ ℝ^{N×d_out}``; any number of leading batch dimensions
``N = n₁×…×n_k`` is allowed and folded into one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl.primitive import Example, normal, primitive


def linear(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    r"""Affine map ``Y = XW + b``.

    Shapes: ``X ∈ ℝ^{…×d_in}``, ``W ∈ ℝ^{d_in×d_out}``, ``b ∈ ℝ^{d_out}``,
    ``Y ∈ ℝ^{…×d_out}``.

    Derivation (fold the leading dimensions into ``N``; ``G = ∂L/∂Y ∈ ℝ^{N×d_out}``).
    Element-wise, ``Y_nj = Σ_i X_ni W_ij + b_j``, so

    * ``∂Y_nj/∂X_mi = δ_nm W_ij`` ⇒ ``∂L/∂X_ni = Σ_j G_nj W_ij``, i.e.
      ``∂L/∂X = G Wᵀ`` (``N×d_out · d_out×d_in = N×d_in``);
    * ``∂Y_nj/∂W_ik = δ_jk X_ni`` ⇒ ``∂L/∂W_ik = Σ_n X_ni G_nk``, i.e.
      ``∂L/∂W = Xᵀ G`` (``d_in×N · N×d_out = d_in×d_out``) — the chain rule
      ``dL/dW = dL/dY · dY/dW`` summed over the batch;
    * ``∂Y_nj/∂b_k = δ_jk`` ⇒ ``∂L/∂b = 1ᵀ G`` (sum of ``G`` over the batch).

    Residuals: ``X`` and ``W`` (``b`` and ``Y`` are not needed).
    """
    y = jnp.matmul(x, w)
    return y + b.reshape((1,) * (y.ndim - 1) + b.shape)  # explicit broadcast over the batch


def _linear_save(x, w, b, y):
    return x, w


def _linear_backward(residuals, g):
    x, w = residuals
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    dx = jnp.matmul(g, w.T)
    dw = jnp.matmul(x2.T, g2)
    db = jnp.sum(g2, axis=0)
    return dx, dw, db


def _linear_validate(x, w, b):
    for name, a in (("x", x), ("w", w), ("b", b)):
        v.floating("linear", name, a)
    v.ndim_at_least("linear", "x", x, 1, "…×d_in")
    v.ndim_exactly("linear", "w", w, 2, "d_in×d_out")
    v.ndim_exactly("linear", "b", b, 1, "d_out")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"linear: x has {x.shape[-1]} features (shape {tuple(x.shape)}) but w "
            f"expects {w.shape[0]} (shape {tuple(w.shape)}); the last dimension of "
            "x must equal the first of w"
        )
    if b.shape[0] != w.shape[1]:
        raise ValueError(
            f"linear: b has shape {tuple(b.shape)} but w has {w.shape[1]} outputs "
            f"(shape {tuple(w.shape)}); b must have shape ({w.shape[1]},)"
        )


linear = primitive(
    linear, _linear_backward, save=_linear_save, validate=_linear_validate,
    examples=[
        Example((normal(5, 3), normal(3, 4), normal(4))),
        Example((normal(2, 3, 4), normal(4, 2), normal(2))),
        Example((normal(1, 1), normal(1, 1), normal(1))),
    ],
)
