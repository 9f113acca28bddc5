"""The affine map $Y = XW + b$ (a dense layer's primitive).

Layout is batch-first: $X ∈ ℝ^{N×d_in}$, $W ∈ ℝ^{d_in×d_out}$,
$b ∈ ℝ^{d_out}$, $Y ∈ ℝ^{N×d_out}$; any number of leading batch dimensions
$N = n₁×…×n_k$ is allowed and folded into one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl.primitive import Example, gaussian, is_zero, primitive


def linear(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    r"""Affine map $Y = XW + b$.

    Shapes: $X ∈ ℝ^{…×d_in}$, $W ∈ ℝ^{d_in×d_out}$, $b ∈ ℝ^{d_out}$,
    $Y ∈ ℝ^{…×d_out}$.

    Derivation (fold the leading dimensions into $N$; $G = ∂L/∂Y ∈ ℝ^{N×d_out}$).
    Element-wise, $Y_nj = Σ_i X_ni W_ij + b_j$, so

    * $∂Y_nj/∂X_mi = δ_nm W_ij$ ⇒ $∂L/∂X_ni = Σ_j G_nj W_ij$, i.e.
      $∂L/∂X = G Wᵀ$ ($N×d_out · d_out×d_in = N×d_in$);
    * $∂Y_nj/∂W_ik = δ_jk X_ni$ ⇒ $∂L/∂W_ik = Σ_n X_ni G_nk$, i.e.
      $∂L/∂W = Xᵀ G$ ($d_in×N · N×d_out = d_in×d_out$) — the chain rule
      $dL/dW = dL/dY · dY/dW$ summed over the batch;
    * $∂Y_nj/∂b_k = δ_jk$ ⇒ $∂L/∂b = 1ᵀ G$ (sum of $G$ over the batch).

    Residuals: $X$ and $W$ ($b$ and $Y$ are not needed).

    Tangent (the differential, by the product rule; $Y$ is bilinear in $(X, W)$):
    $dY = dX W + X dW + db$ ($N×d_in · d_in×d_out$, $N×d_in · d_in×d_out$, $d_out$
    broadcast over the batch; all $N×d_out$).
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


def _linear_tangent(residuals, t):
    x, w = residuals
    dx, dw, db = t
    dy = db.reshape((1,) * (x.ndim - 1) + db.shape)
    if not is_zero(dx):  # data: no product with its zero tangent
        dy = dy + jnp.matmul(dx, w)
    if not is_zero(dw):
        dy = dy + jnp.matmul(x, dw)
    return jnp.broadcast_to(dy, x.shape[:-1] + w.shape[-1:]).astype(jnp.result_type(x, w, db))


linear = primitive(
    linear, _linear_backward, save=_linear_save, tangent=_linear_tangent,
    spec=v.shapes("linear", x="…×d_in", w="d_in×d_out", b="d_out"), examples=[
        Example((gaussian(5, 3), gaussian(3, 4), gaussian(4))),
        Example((gaussian(2, 3, 4), gaussian(4, 2), gaussian(2))),
        Example((gaussian(1, 1), gaussian(1, 1), gaussian(1))),
    ],
)


# --------------------------------------------------------------------------- #
# Ghost norms: the affine map whose backward also returns per-example gradient norms
# --------------------------------------------------------------------------- #


def _per_example_sq_norms(x: jax.Array, g: jax.Array) -> jax.Array:
    r"""$‖∂ℓᵢ/∂W‖²_F + ‖∂ℓᵢ/∂b‖²$ for each example $i$, from $X$ and $G$ alone.

    $X ∈ ℝ^{N×T×d_in}$, $G ∈ ℝ^{N×T×d_out}$ (the middle axes of $x$/$g$
    folded into $T$; $T = 1$ without them). Returns $ℝ^N$.

    * $T = 1$: $‖xᵢ gᵢᵀ‖²_F = ‖xᵢ‖² ‖gᵢ‖²$ — $O(N(d_in + d_out))$.
    * $T > 1$, Gram form: $‖Xᵢᵀ Gᵢ‖²_F = ⟨Xᵢ Xᵢᵀ, Gᵢ Gᵢᵀ⟩_F$ —
      $O(N T² (d_in + d_out))$ time, $N×T×T$ memory;
    * $T > 1$, direct: form $Xᵢᵀ Gᵢ ∈ ℝ^{d_in×d_out}$ and square it —
      $O(N T d_in d_out)$ time, $N×d_in×d_out$ memory.

    The cheaper of the last two is chosen from the (static) shapes: Gram when
    $T (d_in + d_out) ≤ d_in d_out$. The bias term is $‖Gᵢᵀ 1_T‖²$.
    """
    n, d_in, d_out = x.shape[0], x.shape[-1], g.shape[-1]
    t = math.prod(x.shape[1:-1])
    x3, g3 = x.reshape(n, t, d_in), g.reshape(n, t, d_out)
    g_sum = jnp.sum(g3, axis=1)  # ∂ℓᵢ/∂b = Gᵢᵀ 1, (N, d_out)
    bias = jnp.sum(g_sum * g_sum, axis=1)
    if t == 1:
        weight = jnp.sum(x3[:, 0] * x3[:, 0], axis=1) * jnp.sum(g_sum * g_sum, axis=1)
    elif t * (d_in + d_out) <= d_in * d_out:
        xx = jnp.einsum("nti,nsi->nts", x3, x3)  # Xᵢ Xᵢᵀ, (N, T, T)
        gg = jnp.einsum("ntj,nsj->nts", g3, g3)  # Gᵢ Gᵢᵀ, (N, T, T)
        weight = jnp.sum(xx * gg, axis=(1, 2))
    else:
        per = jnp.einsum("nti,ntj->nij", x3, g3)  # Xᵢᵀ Gᵢ, (N, d_in, d_out)
        weight = jnp.sum(per * per, axis=(1, 2))
    return weight + bias


def _ghost_linear_forward(x: jax.Array, w: jax.Array, b: jax.Array,
                          probe: jax.Array) -> jax.Array:
    r"""Affine map $Y = XW + b$ whose backward also returns, as the cotangent of
    `probe`, each example's squared gradient norm for this layer's parameters.

    Shapes: $X ∈ ℝ^{N×…×d_in}$ (axis 0 indexes the examples; the middle axes,
    e.g. a sequence, are folded into $T$), $W ∈ ℝ^{d_in×d_out}$,
    $b ∈ ℝ^{d_out}$, $probe ∈ ℝ^N$ (its value is not read; pass zeros),
    $Y ∈ ℝ^{N×…×d_out}$. The forward is exactly `linear`.

    Derivation. Let $L = Σᵢ ℓᵢ$ where the loss $ℓᵢ$ of example $i$ depends
    on $Y$ only through its own rows $Yᵢ ∈ ℝ^{T×d_out}$ (no batch statistics), and
    $G = ∂L/∂Y$, so $Gᵢ = ∂ℓᵢ/∂Yᵢ$. The cotangents of $X, W, b$ are those of
    `linear` ($∂L/∂X = G Wᵀ$, $∂L/∂W = Xᵀ G$, $∂L/∂b = 1ᵀ G$), and
    $∂L/∂W = Σᵢ ∂ℓᵢ/∂W$ with

    * $∂ℓᵢ/∂W = Xᵢᵀ Gᵢ = Σ_t x_{it} g_{it}ᵀ ∈ ℝ^{d_in×d_out}$,
      $∂ℓᵢ/∂b = Gᵢᵀ 1_T ∈ ℝ^{d_out}$;
    * $T = 1$: $‖xᵢ gᵢᵀ‖²_F = Σ_{jk} x_{ij}² g_{ik}² = ‖xᵢ‖² ‖gᵢ‖²$;
    * $T > 1$: $‖Xᵢᵀ Gᵢ‖²_F = tr(Gᵢᵀ Xᵢ Xᵢᵀ Gᵢ) = ⟨Xᵢ Xᵢᵀ, Gᵢ Gᵢᵀ⟩_F$
      (Gram form, used when $T (d_in + d_out) ≤ d_in d_out$; otherwise $Xᵢᵀ Gᵢ$
      is formed per example and squared, whichever is cheaper).

    The "cotangent" of `probe` is $pᵢ = ‖∂ℓᵢ/∂W‖²_F + ‖∂ℓᵢ/∂b‖²$ — the
    per-example gradient norms without materialising one $d_in×d_out$ gradient
    per example (Goodfellow 2015; Li et al. 2022's "ghost norm"). It is quadratic
    in $G$, so it is *not* the VJP of any forward: a VJP is linear in the
    cotangent. There is therefore no autodiff reference for it; this primitive is
    not registered, always uses its hand-written rule (in either gradient mode),
    and `tests/test_privacy.py` checks the $X, W, b$ cotangents against
    autodiff of `linear` and the probe's against `vmap` of per-example
    gradients. With $L = Σᵢ cᵢ ℓᵢ$ the probe's cotangent is $cᵢ² pᵢ$.

    Residuals: $X$, $W$ and `probe` (for its dtype; $N$ numbers).

    References: Goodfellow, "Efficient Per-Example Gradient Computations", 2015;
    Li, Tramèr, Liang, Hashimoto, "Large Language Models Can Be Strong
    Differentially Private Learners", 2022 (ghost clipping).
    """
    return linear.forward(x, w, b)


def _ghost_linear_save(x, w, b, probe, y):
    return x, w, probe


def _ghost_linear_backward(residuals, g):
    x, w, probe = residuals
    dx, dw, db = _linear_backward((x, w), g)
    return dx, dw, db, _per_example_sq_norms(x, g).astype(probe.dtype)


def _ghost_linear_validate(x, w, b, probe):
    v.floating("ghost_linear", "probe", probe)
    if tuple(probe.shape) != (x.shape[0],):
        raise ValueError(
            f"ghost_linear: probe must have one entry per example, shape ({x.shape[0]},) for "
            f"x of shape {tuple(x.shape)}, got shape {tuple(probe.shape)}; a layer before "
            "this one may have reshaped the batch axis (per-example norms need axis 0 to "
            "index the examples)"
        )


_ghost_linear = primitive(
    _ghost_linear_forward, _ghost_linear_backward, save=_ghost_linear_save,
    spec=v.shapes("ghost_linear", x="N×…×d_in, axis 0 indexing the examples", w="d_in×d_out",
                  b="d_out"),
    validate=_ghost_linear_validate, name="ghost_linear",
    register=False,  # no autodiff reference for the probe's cotangent: see the docstring
)


def ghost_linear(x: jax.Array, w: jax.Array, b: jax.Array, probe: jax.Array) -> jax.Array:
    # The hand-written rule is the point (it computes the norms), so it is used in
    # either gradient mode: autodiff of the forward would give the probe a zero cotangent.
    return _ghost_linear.manual(x, w, b, probe)


ghost_linear.__doc__ = _ghost_linear_forward.__doc__
