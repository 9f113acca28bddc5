"""The affine map $Y = XW + b$ (a dense layer's primitive).

Layout is batch-first: $X ∈ ℝ^{N×d_in}$, $W ∈ ℝ^{d_in×d_out}$,
$b ∈ ℝ^{d_out}$, $Y ∈ ℝ^{N×d_out}$; any number of leading batch dimensions
$N = n₁×…×n_k$ is allowed and folded into one.
"""

from __future__ import annotations


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


def _weight_product(x2: jax.Array, g2: jax.Array) -> jax.Array:
    r"""$∂L/∂W = Xᵀ G$ ($X ∈ ℝ^{N×d_in}$, $G ∈ ℝ^{N×d_out}$ → $ℝ^{d_in×d_out}$),
    written as a product of row-major operands.

    Both operands are contracted over their leading axis $N$; as such XLA:CPU runs
    the product through Eigen with a transposed operand. Transposing the narrower of
    the two first (a copy of $N·min(d_in, d_out)$ elements) makes it an ordinary
    row-major product, which XLA:CPU runs in its faster library: $Xᵀ G$ with $Xᵀ$
    laid out when $d_in ≤ d_out$, else $(Gᵀ X)ᵀ$ with $Gᵀ$ and the product laid
    out. The same sum of products, in the order the product's library adds them.
    `optimization_barrier` keeps XLA from folding the transposes back into the
    product. Only on the CPU (`lax.platform_dependent`): elsewhere the product is
    written plainly, $Xᵀ G$, and the GPU's or TPU's library takes the transposed
    operand as it is, with no copy.
    """
    return jax.lax.platform_dependent(x2, g2, cpu=_row_major_weight_product,
                                      default=lambda x, g: jnp.matmul(x.T, g))


def _row_major_weight_product(x2: jax.Array, g2: jax.Array) -> jax.Array:
    barrier = jax.lax.optimization_barrier
    if x2.shape[-1] <= g2.shape[-1]:
        return jnp.matmul(barrier(x2.T), g2)
    return barrier(jnp.matmul(barrier(g2.T), x2)).T


def _linear_backward(residuals, g):
    x, w = residuals
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    dx = jnp.matmul(g, w.T)
    dw = _weight_product(x2, g2)
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


def _per_example_rows(a: jax.Array) -> jax.Array:
    """$N×…×F → N×T×F$: the middle axes of one example folded into $T$."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def weight_sq_norms(x: jax.Array, g: jax.Array) -> jax.Array:
    r"""$‖Xᵢᵀ Gᵢ‖²_F$ for every example $i$: the squared per-example gradient norm of
    a weight $W$ used as $Y = XW$ at $T$ positions of each example.

    Shapes: $X ∈ ℝ^{N×…×a}$, $G ∈ ℝ^{N×…×b}$ with the same middle axes (folded
    into $T$); returns $ℝ^N$.

    * $T = 1$: $‖xᵢ gᵢᵀ‖²_F = ‖xᵢ‖² ‖gᵢ‖²$;
    * Gram form, when $T(a + b) ≤ ab$: $⟨Xᵢ Xᵢᵀ, Gᵢ Gᵢᵀ⟩_F$
      ($N×T×T$ memory, $O(N T²(a + b))$ time);
    * direct form otherwise: $Xᵢᵀ Gᵢ ∈ ℝ^{a×b}$ formed and squared
      ($N×a×b$ memory, $O(N T a b)$ time).

    The choice is made from the static shapes, so it costs nothing at run time.
    """
    x3, g3 = _per_example_rows(x), _per_example_rows(g)
    t, a, b = x3.shape[1], x3.shape[2], g3.shape[2]
    if t == 1:
        return jnp.sum(x3[:, 0] * x3[:, 0], axis=1) * jnp.sum(g3[:, 0] * g3[:, 0], axis=1)
    if t * (a + b) <= a * b:
        xx = jnp.einsum("nti,nsi->nts", x3, x3)  # Xᵢ Xᵢᵀ, (N, T, T)
        gg = jnp.einsum("ntj,nsj->nts", g3, g3)  # Gᵢ Gᵢᵀ, (N, T, T)
        return jnp.sum(xx * gg, axis=(1, 2))
    per = jnp.einsum("nti,ntj->nij", x3, g3)     # Xᵢᵀ Gᵢ, (N, a, b)
    return jnp.sum(per * per, axis=(1, 2))


def bias_sq_norms(g: jax.Array) -> jax.Array:
    r"""$‖Gᵢᵀ 1_T‖²$ for every example: the squared per-example gradient norm of a bias
    added at $T$ positions ($G ∈ ℝ^{N×…×b}$ → $ℝ^N$)."""
    s = jnp.sum(_per_example_rows(g), axis=1)  # ∂ℓᵢ/∂b, (N, b)
    return jnp.sum(s * s, axis=1)


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
    return dx, dw, db, (weight_sq_norms(x, g) + bias_sq_norms(g)).astype(probe.dtype)


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
