"""Attention: masked softmax, scaled dot-product and multi-head attention.

Layout is batch-first. Queries $Q ∈ ℝ^{…×T×d}$ attend over keys $K ∈ ℝ^{…×S×d}$
and values $V ∈ ℝ^{…×S×d_v}$; $…$ is any number of leading batch dimensions
($N$, or $N×H$ for heads), the same for every argument. Scores and attention
weights are $…×T×S$: one row per query, softmax over the source positions $s$.

Masks are boolean, `True` = attend (keep), `False` = ignore, and broadcast
(NumPy rules) to the scores' shape: a key-padding mask for $Q ∈ ℝ^{N×T×d}$ has
shape $N×1×S$, a full mask $N×T×S$. A row with every position masked has
attention weights **zero** (not uniform, not NaN), so its output is the zero
vector and it passes zero gradient: padding queries contribute nothing.

Gradient conventions, used by every backward below: $G = ∂L/∂(output)$ has the
output's shape; for a row of weights $α = softmax(z)$ the VJP is
$∂L/∂z = α ⊙ (∂L/∂α − ⟨∂L/∂α, α⟩)$ (see `masked_softmax`).

The composite `multi_head_attention` is built from the primitives here and
`fdl.ops.linear`, so its gradient is the chain of the primitives' hand-written rules;
its only other operations are layout changes (reshape, transpose) whose VJP is the
inverse layout change, which JAX applies exactly. Luong's global attention, which
shares the masked softmax, is in `fdl.ops.luong`.

References: Vaswani et al., "Attention Is All You Need", 2017 (scaled dot-product
and multi-head attention).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fdl import _validate as v
from fdl.ops.linear import linear
from fdl.ops.sequence import check_lengths, padding_mask, sequence_mask
from fdl.ops.softmax import softmax
from fdl.primitive import Example, gaussian, primitive

__all__ = ["attention", "masked_softmax", "multi_head_attention"]


# --------------------------------------------------------------------------- #
# Validation helpers (private)
# --------------------------------------------------------------------------- #


def _shape(x: Any) -> tuple:
    return tuple(jnp.shape(x))


def _check_mask(fn: str, mask: Any, target: tuple, what: str, hint: str = "") -> None:
    """`mask` must be None or a boolean array broadcastable to `target`."""
    if mask is None:
        return
    if not hasattr(mask, "shape"):
        raise TypeError(f"{fn}: mask must be a boolean array or None, got {type(mask).__name__}")
    if jnp.result_type(mask) != jnp.bool_:
        raise TypeError(
            f"{fn}: mask must be a boolean array (True = attend), got dtype "
            f"{jnp.result_type(mask)}; convert it, e.g. mask.astype(bool)"
        )
    shape = _shape(mask)
    ok = len(shape) <= len(target) and all(
        a in (1, b) for a, b in zip(shape[::-1], target[::-1]))
    if not ok:
        raise ValueError(
            f"{fn}: mask of shape {shape} does not broadcast to the {what} shape "
            f"{target}{hint}"
        )


def _fixed(array: Any):
    """An example argument that is always `array` (a mask, say), whatever the generator."""
    return lambda rng, dtype: jnp.asarray(array)


# --------------------------------------------------------------------------- #
# Masked softmax
# --------------------------------------------------------------------------- #


def masked_softmax(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    r"""Softmax over the last axis restricted to the positions where `mask` is True.

    For a row $z ∈ ℝ^S$ with mask $m ∈ {0,1}^S$ ($x ∈ ℝ^{…×S}$, `mask`
    boolean, broadcast to $x$'s shape; `None` = no mask):

        $p_s = m_s e^{z_s} / Σ_k m_k e^{z_k}$, and $p = 0$ when $Σ_k m_k = 0$.

    A fully masked row is defined as all zeros: nothing to attend to, so nothing
    is attended to (a convention; $−∞$ scores would give `0/0 = NaN`).

    Derivation. On the allowed positions this is an ordinary softmax:
    $∂p_i/∂z_j = p_i(δ_ij − p_j)$. A masked position has $p_i = 0$ whatever
    $z$, and $z_j$ of a masked $j$ does not enter any $p_i$; both cases are
    the same formula with $p = 0$. So the Jacobian is $J = diag(p) − p pᵀ$
    everywhere, symmetric, and with $g = ∂L/∂p$

        $∂L/∂z = Jᵀ g = p ⊙ (g − ⟨g, p⟩)$   ($⟨·,·⟩$ along the last axis),

    which is zero at masked positions and on fully masked rows. The mask is not
    differentiated. Saves $p$ only.

    Tangent: $J$ is symmetric, so $dp = J dz = p ⊙ (dz − ⟨p, dz⟩)$ (shape of $x$;
    zero at masked positions; the mask has no tangent).
    """
    if mask is None:
        return softmax.forward(x, -1)
    mask = jnp.broadcast_to(mask, x.shape)
    zero = jnp.zeros_like(x)
    # Shift by the largest *allowed* score (a constant, exact by shift invariance);
    # a fully masked row has no allowed score: shift by 0 instead of −∞.
    top = lax.stop_gradient(jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True))
    top = jnp.where(jnp.isfinite(top), top, jnp.zeros_like(top))
    # exp only of allowed, shifted (≤ 0) scores: no overflow in the unused branch,
    # so autodiff of this reference never multiplies 0 by ∞.
    e = jnp.where(mask, jnp.exp(jnp.where(mask, x - top, zero)), zero)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, jnp.ones_like(total))


def _masked_softmax_save(x, mask, p):
    return p


def _masked_softmax_backward(p, g):
    return p * (g - jnp.sum(g * p, axis=-1, keepdims=True)), None


def _masked_softmax_validate(x, mask):
    _check_mask("masked_softmax", mask, _shape(x), "x")


_PAD_MASK = np.array([[True, True, False, True, False],
                      [False, False, False, False, False],  # fully masked: p = 0
                      [True, False, False, False, False],
                      [True, True, True, True, True]])


def _masked_softmax_tangent(p, t):
    dz, _ = t
    return p * (dz - jnp.sum(p * dz, axis=-1, keepdims=True))


masked_softmax = primitive(
    masked_softmax, _masked_softmax_backward, save=_masked_softmax_save,
    tangent=_masked_softmax_tangent, spec=v.shapes("masked_softmax", x="…×S"),
    validate=_masked_softmax_validate,
    examples=[Example((gaussian(4, 5, scale=2.0), _fixed(_PAD_MASK))),
              Example((gaussian(2, 3, 4), None)),
              Example((gaussian(2, 4, 5), _fixed(_PAD_MASK[None]))),
              Example((gaussian(4, 5), _fixed(_PAD_MASK[:1, :])))],
)


# --------------------------------------------------------------------------- #
# Scaled dot-product attention
# --------------------------------------------------------------------------- #


def _attention_mask(mask: jax.Array | None, causal: bool, shape: tuple) -> jax.Array | None:
    """The mask actually applied to scores of `shape` ($…×T×S$): `mask` and/or causal."""
    out = None
    if causal:
        t, s = shape[-2:]
        out = jnp.broadcast_to(jnp.tril(jnp.ones((t, s), dtype=bool)), shape)
    if mask is not None:
        mask = jnp.broadcast_to(mask, shape)
        out = mask if out is None else out & mask
    return out


def _attention_weights(q, k, mask, causal):
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) / math.sqrt(q.shape[-1])
    return masked_softmax.forward(scores, _attention_mask(mask, causal, scores.shape))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None,
              causal: bool = False) -> jax.Array:
    r"""Scaled dot-product attention $O = softmax(Q Kᵀ/√d + mask) V$.

    Shapes (batch-first, $…$ any leading dimensions, the same for all):
    $Q ∈ ℝ^{…×T×d}$, $K ∈ ℝ^{…×S×d}$, $V ∈ ℝ^{…×S×d_v}$, $O ∈ ℝ^{…×T×d_v}$.
    `mask` (boolean, True = attend) broadcasts to $…×T×S$: key padding
    $N×1×S$, or a full $N×T×S$ mask. `causal` (static) additionally lets
    query $t$ see only keys $s ≤ t$ (top-left aligned, the convention of
    PyTorch's `is_causal`; for $T = S$ the usual lower-triangular mask).
    Masking happens *inside* the softmax (`masked_softmax`): masked
    scores get weight exactly 0, and a fully masked row has output **0** and
    passes zero gradient (never NaN).

    Forward, per batch element: $S = Q Kᵀ/√d$ ($T×S$), $P = softmax_s(S)$
    restricted to the mask, $O = P V$.

    Derivation, with $G = dO = ∂L/∂O ∈ ℝ^{…×T×d_v}$:

    * $O = P V$ is a matrix product: $dV = Pᵀ dO$ ($S×T · T×d_v$) and
      $dP = dO Vᵀ$ ($T×d_v · d_v×S$);
    * each row of $P$ is a (masked) softmax of the row of $S$:
      $dS = P ⊙ (dP − rowsum(dP ⊙ P))$ (rowsum over $s$, kept as a $T×1$
      column). Masked entries and fully masked rows have $P = 0$, hence
      $dS = 0$ there;
    * $S = Q Kᵀ/√d$: $dQ = dS K/√d$ ($T×S · S×d$) and
      $dK = dSᵀ Q/√d$ ($S×T · T×d$).

    ($rowsum(dP ⊙ P) = rowsum(dO ⊙ O)$, the identity FlashAttention uses to
    avoid storing $P$; here $P$ is stored.) The mask is not differentiated.

    Residuals: $Q, K, V$ and $P$ ($…×T×S$); the backward needs all four.

    Tangent (forward mode), the same three steps in order:
    $dS = (dQ Kᵀ + Q dKᵀ)/√d$ ($T×S$), $dP = P ⊙ (dS − rowsum(P ⊙ dS))$ (the softmax
    Jacobian is symmetric), $dO = dP V + P dV$ ($T×d_v$).
    """
    return jnp.matmul(_attention_weights(q, k, mask, causal), v)


def _attention_save(q, k, v, mask, causal, o):
    return q, k, v, _attention_weights(q, k, mask, causal)


def _attention_backward(causal, residuals, g):
    q, k, v, p = residuals
    scale = 1 / math.sqrt(q.shape[-1])
    dv = jnp.matmul(jnp.swapaxes(p, -1, -2), g)                 # Pᵀ dO
    dp = jnp.matmul(g, jnp.swapaxes(v, -1, -2))                 # dO Vᵀ
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))     # softmax VJP per row
    dq = jnp.matmul(ds, k) * scale                              # dS K/√d
    dk = jnp.matmul(jnp.swapaxes(ds, -1, -2), q) * scale        # dSᵀ Q/√d
    return dq, dk, dv, None


def _attention_validate(q, k, v_, mask, causal):
    fn = "attention"
    if q.shape[-1] == 0:
        raise ValueError(f"{fn}: the feature size d must be ≥ 1 (scores are scaled by "
                         f"1/√d), got q of shape {_shape(q)}")
    v.flag(fn, "causal", causal)
    scores = _shape(q)[:-1] + (k.shape[-2],)
    _check_mask(fn, mask, scores, "scores (…×T×S)",
                "; a key-padding mask of shape (N, S) must be given as mask[:, None, :]")


_ATT_MASK = np.array([[[True, True, False, True, False],
                       [False, False, False, False, False],  # fully masked query row
                       [True, True, True, True, True]],
                      [[True, False, False, False, False],
                       [True, True, False, False, True],
                       [False, True, True, True, False]]])


def _attention_tangent(causal, residuals, t):
    q, k, v, p = residuals
    dq, dk, dv, _ = t
    scale = 1 / math.sqrt(q.shape[-1])
    ds = (jnp.matmul(dq, jnp.swapaxes(k, -1, -2))
          + jnp.matmul(q, jnp.swapaxes(dk, -1, -2))) * scale   # dQ Kᵀ/√d + Q dKᵀ/√d
    dp = p * (ds - jnp.sum(p * ds, axis=-1, keepdims=True))     # softmax JVP per row
    return jnp.matmul(dp, v) + jnp.matmul(p, dv)                # dP V + P dV


attention = primitive(
    attention, _attention_backward, save=_attention_save, static=("causal",),
    tangent=_attention_tangent,
    spec=v.shapes("attention", q="…×T×d", k="…×S×d", v="…×S×d_v"),
    validate=_attention_validate, examples=[
        Example((gaussian(2, 3, 4), gaussian(2, 5, 4), gaussian(2, 5, 3), None, False)),
        Example((gaussian(2, 3, 4), gaussian(2, 5, 4), gaussian(2, 5, 3), _fixed(_ATT_MASK), False)),
        Example((gaussian(1, 4, 3), gaussian(1, 4, 3), gaussian(1, 4, 2), None, True)),
        Example((gaussian(2, 2, 3, 2), gaussian(2, 2, 5, 2), gaussian(2, 2, 5, 3),
                 _fixed(_ATT_MASK[:, None, :1, :]), True)),
    ],
)


# --------------------------------------------------------------------------- #
# Multi-head attention (composite)
# --------------------------------------------------------------------------- #


def _split_heads(x: jax.Array, h: int) -> jax.Array:
    """$…×T×(h·d) → …×h×T×d$."""
    return jnp.moveaxis(x.reshape(x.shape[:-1] + (h, x.shape[-1] // h)), -2, -3)


def _merge_heads(x: jax.Array) -> jax.Array:
    """$…×h×T×d → …×T×(h·d)$ (inverse of `_split_heads`)."""
    x = jnp.moveaxis(x, -3, -2)
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def _zeros_bias(w: jax.Array) -> jax.Array:
    return jnp.zeros((w.shape[-1],), jnp.result_type(w))


def multi_head_attention(
    x_q: jax.Array, x_kv: jax.Array, wq: jax.Array, wk: jax.Array, wv: jax.Array,
    wo: jax.Array, num_heads: int, mask: jax.Array | None = None, causal: bool = False, *,
    bq: jax.Array | None = None, bk: jax.Array | None = None, bv: jax.Array | None = None,
    bo: jax.Array | None = None, lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
) -> jax.Array:
    r"""Multi-head attention: project, split into heads, attend, merge, project.

    Symbols: $X_q ∈ ℝ^{…×T×d_q}$ ($x_q$), $X_kv ∈ ℝ^{…×S×d_kv}$ ($x_kv$;
    pass $x_kv = x_q$ for self-attention), $W_q ∈ ℝ^{d_q×D}$, $W_k ∈ ℝ^{d_kv×D}$,
    $W_v ∈ ℝ^{d_kv×D_v}$, $W_o ∈ ℝ^{D_v×d_out}$ (`wq`, `wk`, `wv`, `wo`;
    batch-first $Y = XW + b$), $h$ = `num_heads` dividing $D$ and $D_v$;
    optional biases $bq ∈ ℝ^D$, $bk ∈ ℝ^D$, $bv ∈ ℝ^{D_v}$, $bo ∈ ℝ^{d_out}$
    (`None` = no bias).

    $$ Q = X_q W_q + b_q, \qquad K = X_kv W_k + b_k, \qquad V = X_kv W_v + b_v $$
        $head_j = attention(Q_j, K_j, V_j)$  with $Q_j$ the $j$-th block of
        `D/h` columns of $Q$ (likewise $K_j$, $V_j$)
    $$ Y = [head_1 … head_h] W_o + b_o ∈ ℝ^{…×T×d_out} $$

    `mask` (boolean, True = attend) broadcasts to $…×T×S$ and is shared by all
    heads; `causal` as in `attention`. A fully masked query row yields
    $b_o$ (zero heads, then the output projection).

    Padded batches: `lengths` (ints in $[1, T]$) are the queries' lengths and
    `kv_lengths` (ints in $[1, S]$) the keys'; `kv_lengths` defaults to `lengths` when
    $S = T$ (self-attention; pass it explicitly for a cross-attention with $S = T$).
    Keys $s ≥ ℓ'$ get weight exactly 0 and a padded query $t ≥ ℓ$ outputs exactly
    **0** (its heads are zero and the output row, $b_o$ included, is set to 0), so it
    passes zero gradient. Both combine with `mask` (logical and).

    Gradient: a composition of primitives, so $∂L/∂·$ is the chain of their
    rules — `linear` ($∂L/∂X = G Wᵀ$, $∂L/∂W = Xᵀ G$, $∂L/∂b = 1ᵀ G$) for the
    four projections and `attention` per head ($dV = Pᵀ dO$, …). The
    head split/merge are reshapes and transposes; their VJP is the inverse
    reshape/transpose. With $x_kv = x_q$ the two paths into $X$ add up.

    References: Vaswani et al., "Attention Is All You Need", 2017.
    """
    _mha_validate(x_q, x_kv, wq, wk, wv, wo, num_heads, mask, causal, bq, bk, bv, bo)
    fn, t, s = "multi_head_attention", x_q.shape[-2], x_kv.shape[-2]
    check_lengths(fn, lengths, _shape(x_q)[:-2], t)
    check_lengths(fn, kv_lengths, _shape(x_kv)[:-2], s, "kv_lengths")
    if kv_lengths is None and s == t:
        kv_lengths = lengths
    pad = padding_mask(lengths, kv_lengths, t, s)
    if pad is not None:
        mask = pad if mask is None else jnp.broadcast_to(mask, pad.shape) & pad
    q = linear(x_q, wq, _zeros_bias(wq) if bq is None else bq)
    k = linear(x_kv, wk, _zeros_bias(wk) if bk is None else bk)
    val = linear(x_kv, wv, _zeros_bias(wv) if bv is None else bv)
    if mask is not None and mask.ndim >= 2:  # …×T×S → …×1×T×S, shared across heads
        mask = jnp.expand_dims(mask, -3)
    heads = attention(_split_heads(q, num_heads), _split_heads(k, num_heads),
                      _split_heads(val, num_heads), mask, causal)
    y = linear(_merge_heads(heads), wo, _zeros_bias(wo) if bo is None else bo)
    if lengths is None:
        return y
    valid = jnp.broadcast_to(sequence_mask(lengths, t)[..., None], y.shape)
    return jnp.where(valid, y, jnp.zeros_like(y))  # a padded query outputs 0


_MHA_SPEC = v.shapes("multi_head_attention", x_q="…×T×d_q", x_kv="…×S×d_kv", wq="d_q×D",
                     wk="d_kv×D", wv="d_kv×D_v", wo="D_v×d_out", bq="optional D",
                     bk="optional D", bv="optional D_v", bo="optional d_out")


def _mha_validate(x_q, x_kv, wq, wk, wv, wo, num_heads, mask, causal, bq, bk, bv, bo):
    fn = "multi_head_attention"
    if not v.is_int(num_heads):
        raise TypeError(f"{fn}: num_heads must be an int, got {num_heads!r}")
    if num_heads < 1:
        raise ValueError(f"{fn}: num_heads must be ≥ 1, got {num_heads}")
    _MHA_SPEC(x_q=x_q, x_kv=x_kv, wq=wq, wk=wk, wv=wv, wo=wo, bq=bq, bk=bk, bv=bv, bo=bo)
    for name, w in (("wq", wq), ("wv", wv)):
        if w.shape[1] % num_heads or w.shape[1] == 0:
            raise ValueError(f"{fn}: num_heads={num_heads} must divide the projected size "
                             f"{w.shape[1]} of {name} (shape {_shape(w)})")
    v.flag(fn, "causal", causal)
    scores = _shape(x_q)[:-2] + (x_q.shape[-2], x_kv.shape[-2])
    _check_mask(fn, mask, scores, "scores (…×T×S)",
                "; a key-padding mask of shape (N, S) must be given as mask[:, None, :]")
