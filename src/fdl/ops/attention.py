"""Attention: masked softmax, scaled dot-product, multi-head, and Luong's global attention.

Layout is batch-first. Queries ``Q ∈ ℝ^{…×T×d}`` attend over keys ``K ∈ ℝ^{…×S×d}``
and values ``V ∈ ℝ^{…×S×d_v}``; ``…`` is any number of leading batch dimensions
(``N``, or ``N×H`` for heads), the same for every argument. Scores and attention
weights are ``…×T×S``: one row per query, softmax over the source positions ``s``.

Masks are boolean, ``True`` = attend (keep), ``False`` = ignore, and broadcast
(NumPy rules) to the scores' shape: a key-padding mask for ``Q ∈ ℝ^{N×T×d}`` has
shape ``N×1×S``, a full mask ``N×T×S``. A row with every position masked has
attention weights **zero** (not uniform, not NaN), so its output is the zero
vector and it passes zero gradient: padding queries contribute nothing.

Gradient conventions, used by every backward below: ``G = ∂L/∂(output)`` has the
output's shape; for a row of weights ``α = softmax(z)`` the VJP is
``∂L/∂z = α ⊙ (∂L/∂α − ⟨∂L/∂α, α⟩)`` (see :func:`masked_softmax`).

Composite functions (:func:`multi_head_attention`, :func:`luong_attention`,
:func:`luong_score`) are built from the primitives here and :func:`~fdl.ops.linear`,
so their gradient is the chain of the primitives' hand-written rules. Their only
other operations are layout changes (reshape, transpose) whose VJP is the inverse
layout change, which JAX applies exactly.

References: Vaswani et al., "Attention Is All You Need", 2017 (scaled dot-product
and multi-head attention); Luong, Pham & Manning, "Effective Approaches to
Attention-based Neural Machine Translation", 2015 (global attention, dot / general
/ concat scores, attentional hidden state).
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
from fdl.ops.softmax import softmax
from fdl.primitive import Example, normal, primitive

__all__ = [
    "LUONG_SCORES",
    "attention",
    "luong_attention",
    "luong_attentional_state",
    "luong_concat_score",
    "luong_context",
    "luong_dot_score",
    "luong_general_score",
    "luong_score",
    "masked_softmax",
    "multi_head_attention",
]


# --------------------------------------------------------------------------- #
# Validation helpers (private)
# --------------------------------------------------------------------------- #


def _shape(x: Any) -> tuple:
    return tuple(jnp.shape(x))


def _check_mask(fn: str, mask: Any, target: tuple, what: str, hint: str = "") -> None:
    """``mask`` must be None or a boolean array broadcastable to ``target``."""
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


def _check_flag(fn: str, name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool (static), got {value!r}")


def _fixed(array: Any):
    """An example argument that is always ``array`` (a mask, say), whatever the key."""
    return lambda key, dtype: jnp.asarray(array)


# --------------------------------------------------------------------------- #
# Masked softmax
# --------------------------------------------------------------------------- #


def masked_softmax(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    r"""Softmax over the last axis restricted to the positions where ``mask`` is True.

    For a row ``z ∈ ℝ^S`` with mask ``m ∈ {0,1}^S`` (``x ∈ ℝ^{…×S}``, ``mask``
    boolean, broadcast to ``x``'s shape; ``None`` = no mask):

        ``p_s = m_s e^{z_s} / Σ_k m_k e^{z_k}``, and ``p = 0`` when ``Σ_k m_k = 0``.

    A fully masked row is defined as all zeros: nothing to attend to, so nothing
    is attended to (a convention; ``−∞`` scores would give ``0/0 = NaN``).

    Derivation. On the allowed positions this is an ordinary softmax:
    ``∂p_i/∂z_j = p_i(δ_ij − p_j)``. A masked position has ``p_i = 0`` whatever
    ``z``, and ``z_j`` of a masked ``j`` does not enter any ``p_i``; both cases are
    the same formula with ``p = 0``. So the Jacobian is ``J = diag(p) − p pᵀ``
    everywhere, symmetric, and with ``g = ∂L/∂p``

        ``∂L/∂z = Jᵀ g = p ⊙ (g − ⟨g, p⟩)``   (``⟨·,·⟩`` along the last axis),

    which is zero at masked positions and on fully masked rows. The mask is not
    differentiated. Saves ``p`` only.
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
    v.floating("masked_softmax", "x", x)
    v.ndim_at_least("masked_softmax", "x", x, 1, "…×S")
    _check_mask("masked_softmax", mask, _shape(x), "x")


_PAD_MASK = np.array([[True, True, False, True, False],
                      [False, False, False, False, False],  # fully masked: p = 0
                      [True, False, False, False, False],
                      [True, True, True, True, True]])

masked_softmax = primitive(
    masked_softmax, _masked_softmax_backward, save=_masked_softmax_save,
    validate=_masked_softmax_validate,
    examples=[Example((normal(4, 5, scale=2.0), _fixed(_PAD_MASK))),
              Example((normal(2, 3, 4), None)),
              Example((normal(2, 4, 5), _fixed(_PAD_MASK[None]))),
              Example((normal(4, 5), _fixed(_PAD_MASK[:1, :])))],
)


# --------------------------------------------------------------------------- #
# Scaled dot-product attention
# --------------------------------------------------------------------------- #


def _attention_mask(mask: jax.Array | None, causal: bool, shape: tuple) -> jax.Array | None:
    """The mask actually applied to scores of ``shape`` (``…×T×S``): ``mask`` and/or causal."""
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
    r"""Scaled dot-product attention ``O = softmax(Q Kᵀ/√d + mask) V``.

    Shapes (batch-first, ``…`` any leading dimensions, the same for all):
    ``Q ∈ ℝ^{…×T×d}``, ``K ∈ ℝ^{…×S×d}``, ``V ∈ ℝ^{…×S×d_v}``, ``O ∈ ℝ^{…×T×d_v}``.
    ``mask`` (boolean, True = attend) broadcasts to ``…×T×S``: key padding
    ``N×1×S``, or a full ``N×T×S`` mask. ``causal`` (static) additionally lets
    query ``t`` see only keys ``s ≤ t`` (top-left aligned, the convention of
    PyTorch's ``is_causal``; for ``T = S`` the usual lower-triangular mask).
    Masking happens *inside* the softmax (:func:`masked_softmax`): masked
    scores get weight exactly 0, and a fully masked row has output **0** and
    passes zero gradient (never NaN).

    Forward, per batch element: ``S = Q Kᵀ/√d`` (``T×S``), ``P = softmax_s(S)``
    restricted to the mask, ``O = P V``.

    Derivation, with ``G = dO = ∂L/∂O ∈ ℝ^{…×T×d_v}``:

    * ``O = P V`` is a matrix product: ``dV = Pᵀ dO`` (``S×T · T×d_v``) and
      ``dP = dO Vᵀ`` (``T×d_v · d_v×S``);
    * each row of ``P`` is a (masked) softmax of the row of ``S``:
      ``dS = P ⊙ (dP − rowsum(dP ⊙ P))`` (rowsum over ``s``, kept as a ``T×1``
      column). Masked entries and fully masked rows have ``P = 0``, hence
      ``dS = 0`` there;
    * ``S = Q Kᵀ/√d``: ``dQ = dS K/√d`` (``T×S · S×d``) and
      ``dK = dSᵀ Q/√d`` (``S×T · T×d``).

    (``rowsum(dP ⊙ P) = rowsum(dO ⊙ O)``, the identity FlashAttention uses to
    avoid storing ``P``; here ``P`` is stored.) The mask is not differentiated.

    Residuals: ``Q, K, V`` and ``P`` (``…×T×S``); the backward needs all four.
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
    for name, a in (("q", q), ("k", k), ("v", v_)):
        v.floating(fn, name, a)
    v.ndim_at_least(fn, "q", q, 2, "…×T×d")
    v.ndim_at_least(fn, "k", k, 2, "…×S×d")
    v.ndim_at_least(fn, "v", v_, 2, "…×S×d_v")
    lead = _shape(q)[:-2]
    if _shape(k)[:-2] != lead or _shape(v_)[:-2] != lead:
        raise ValueError(
            f"{fn}: q, k and v must share their leading (batch) dimensions, got q "
            f"{_shape(q)}, k {_shape(k)}, v {_shape(v_)}"
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"{fn}: q and k must have the same feature size d (last dimension), got q "
            f"{_shape(q)} (d={q.shape[-1]}) and k {_shape(k)} (d={k.shape[-1]})"
        )
    if q.shape[-1] == 0:
        raise ValueError(f"{fn}: the feature size d must be ≥ 1 (scores are scaled by "
                         f"1/√d), got q of shape {_shape(q)}")
    if v_.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"{fn}: k and v must have the same number of source positions S, got k "
            f"{_shape(k)} (S={k.shape[-2]}) and v {_shape(v_)} (S={v_.shape[-2]})"
        )
    _check_flag(fn, "causal", causal)
    scores = lead + (q.shape[-2], k.shape[-2])
    _check_mask(fn, mask, scores, "scores (…×T×S)",
                "; a key-padding mask of shape (N, S) must be given as mask[:, None, :]")


_ATT_MASK = np.array([[[True, True, False, True, False],
                       [False, False, False, False, False],  # fully masked query row
                       [True, True, True, True, True]],
                      [[True, False, False, False, False],
                       [True, True, False, False, True],
                       [False, True, True, True, False]]])

attention = primitive(
    attention, _attention_backward, save=_attention_save, static=("causal",),
    validate=_attention_validate,
    examples=[
        Example((normal(2, 3, 4), normal(2, 5, 4), normal(2, 5, 3), None, False)),
        Example((normal(2, 3, 4), normal(2, 5, 4), normal(2, 5, 3), _fixed(_ATT_MASK), False)),
        Example((normal(1, 4, 3), normal(1, 4, 3), normal(1, 4, 2), None, True)),
        Example((normal(2, 2, 3, 2), normal(2, 2, 5, 2), normal(2, 2, 5, 3),
                 _fixed(_ATT_MASK[:, None, :1, :]), True)),
    ],
)


# --------------------------------------------------------------------------- #
# Multi-head attention (composite)
# --------------------------------------------------------------------------- #


def _split_heads(x: jax.Array, h: int) -> jax.Array:
    """``…×T×(h·d) → …×h×T×d``."""
    return jnp.moveaxis(x.reshape(x.shape[:-1] + (h, x.shape[-1] // h)), -2, -3)


def _merge_heads(x: jax.Array) -> jax.Array:
    """``…×h×T×d → …×T×(h·d)`` (inverse of :func:`_split_heads`)."""
    x = jnp.moveaxis(x, -3, -2)
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def _zeros_bias(w: jax.Array) -> jax.Array:
    return jnp.zeros((w.shape[-1],), jnp.result_type(w))


def multi_head_attention(
    x_q: jax.Array, x_kv: jax.Array, wq: jax.Array, wk: jax.Array, wv: jax.Array,
    wo: jax.Array, num_heads: int, mask: jax.Array | None = None, causal: bool = False, *,
    bq: jax.Array | None = None, bk: jax.Array | None = None, bv: jax.Array | None = None,
    bo: jax.Array | None = None,
) -> jax.Array:
    r"""Multi-head attention: project, split into heads, attend, merge, project.

    Symbols: ``X_q ∈ ℝ^{…×T×d_q}`` (``x_q``), ``X_kv ∈ ℝ^{…×S×d_kv}`` (``x_kv``;
    pass ``x_kv = x_q`` for self-attention), ``W_q ∈ ℝ^{d_q×D}``, ``W_k ∈ ℝ^{d_kv×D}``,
    ``W_v ∈ ℝ^{d_kv×D_v}``, ``W_o ∈ ℝ^{D_v×d_out}`` (``wq``, ``wk``, ``wv``, ``wo``;
    batch-first ``Y = XW + b``), ``h`` = ``num_heads`` dividing ``D`` and ``D_v``;
    optional biases ``bq ∈ ℝ^D``, ``bk ∈ ℝ^D``, ``bv ∈ ℝ^{D_v}``, ``bo ∈ ℝ^{d_out}``
    (``None`` = no bias).

        ``Q = X_q W_q + b_q``, ``K = X_kv W_k + b_k``, ``V = X_kv W_v + b_v``
        ``head_j = attention(Q_j, K_j, V_j)``  with ``Q_j`` the ``j``-th block of
        ``D/h`` columns of ``Q`` (likewise ``K_j``, ``V_j``)
        ``Y = [head_1 … head_h] W_o + b_o ∈ ℝ^{…×T×d_out}``

    ``mask`` (boolean, True = attend) broadcasts to ``…×T×S`` and is shared by all
    heads; ``causal`` as in :func:`attention`. A fully masked query row yields
    ``b_o`` (zero heads, then the output projection).

    Gradient: a composition of primitives, so ``∂L/∂·`` is the chain of their
    rules — ``linear`` (``∂L/∂X = G Wᵀ``, ``∂L/∂W = Xᵀ G``, ``∂L/∂b = 1ᵀ G``) for the
    four projections and :func:`attention` per head (``dV = Pᵀ dO``, …). The
    head split/merge are reshapes and transposes; their VJP is the inverse
    reshape/transpose. With ``x_kv = x_q`` the two paths into ``X`` add up.

    References: Vaswani et al., "Attention Is All You Need", 2017.
    """
    _mha_validate(x_q, x_kv, wq, wk, wv, wo, num_heads, mask, causal, bq, bk, bv, bo)
    q = linear(x_q, wq, _zeros_bias(wq) if bq is None else bq)
    k = linear(x_kv, wk, _zeros_bias(wk) if bk is None else bk)
    val = linear(x_kv, wv, _zeros_bias(wv) if bv is None else bv)
    if mask is not None and mask.ndim >= 2:  # …×T×S → …×1×T×S, shared across heads
        mask = jnp.expand_dims(mask, -3)
    heads = attention(_split_heads(q, num_heads), _split_heads(k, num_heads),
                      _split_heads(val, num_heads), mask, causal)
    return linear(_merge_heads(heads), wo, _zeros_bias(wo) if bo is None else bo)


def _mha_validate(x_q, x_kv, wq, wk, wv, wo, num_heads, mask, causal, bq, bk, bv, bo):
    fn = "multi_head_attention"
    for name, a in (("x_q", x_q), ("x_kv", x_kv), ("wq", wq), ("wk", wk), ("wv", wv),
                    ("wo", wo)):
        v.floating(fn, name, a)
    v.ndim_at_least(fn, "x_q", x_q, 2, "…×T×d_q")
    v.ndim_at_least(fn, "x_kv", x_kv, 2, "…×S×d_kv")
    for name, w, what in (("wq", wq, "d_q×D"), ("wk", wk, "d_kv×D"), ("wv", wv, "d_kv×D_v"),
                          ("wo", wo, "D_v×d_out")):
        v.ndim_exactly(fn, name, w, 2, what)
    if not v.is_int(num_heads):
        raise TypeError(f"{fn}: num_heads must be an int, got {num_heads!r}")
    if num_heads < 1:
        raise ValueError(f"{fn}: num_heads must be ≥ 1, got {num_heads}")
    if _shape(x_kv)[:-2] != _shape(x_q)[:-2]:
        raise ValueError(f"{fn}: x_q and x_kv must share their leading (batch) dimensions, "
                         f"got x_q {_shape(x_q)} and x_kv {_shape(x_kv)}")
    checks = (("wq", wq, "x_q", x_q), ("wk", wk, "x_kv", x_kv), ("wv", wv, "x_kv", x_kv))
    for wname, w, xname, x in checks:
        if w.shape[0] != x.shape[-1]:
            raise ValueError(f"{fn}: {xname} has {x.shape[-1]} features (shape {_shape(x)}) "
                             f"but {wname} expects {w.shape[0]} (shape {_shape(w)})")
    if wk.shape[1] != wq.shape[1]:
        raise ValueError(f"{fn}: wq and wk must project to the same size D, got wq "
                         f"{_shape(wq)} and wk {_shape(wk)}")
    if wo.shape[0] != wv.shape[1]:
        raise ValueError(f"{fn}: wo expects {wo.shape[0]} inputs (shape {_shape(wo)}) but wv "
                         f"produces {wv.shape[1]} (shape {_shape(wv)}); wo.shape[0] must be "
                         "wv.shape[1]")
    for name, w in (("wq", wq), ("wv", wv)):
        if w.shape[1] % num_heads or w.shape[1] == 0:
            raise ValueError(f"{fn}: num_heads={num_heads} must divide the projected size "
                             f"{w.shape[1]} of {name} (shape {_shape(w)})")
    for name, b, w in (("bq", bq, wq), ("bk", bk, wk), ("bv", bv, wv), ("bo", bo, wo)):
        if b is not None:
            v.floating(fn, name, b)
            if _shape(b) != (w.shape[1],):
                raise ValueError(f"{fn}: {name} must have shape ({w.shape[1]},) to match "
                                 f"w{name[1]} {_shape(w)}, got {_shape(b)}")
    _check_flag(fn, "causal", causal)
    scores = _shape(x_q)[:-2] + (x_q.shape[-2], x_kv.shape[-2])
    _check_mask(fn, mask, scores, "scores (…×T×S)",
                "; a key-padding mask of shape (N, S) must be given as mask[:, None, :]")


# --------------------------------------------------------------------------- #
# Luong attention: scores
# --------------------------------------------------------------------------- #

_LUONG_SHAPES = "h_t ∈ ℝ^{…×d}, h_bar ∈ ℝ^{…×S×d̄}"


def _luong_check(fn: str, h_t, h_bar) -> None:
    v.floating(fn, "h_t", h_t)
    v.floating(fn, "h_bar", h_bar)
    v.ndim_at_least(fn, "h_t", h_t, 1, "…×d, the decoder state")
    v.ndim_at_least(fn, "h_bar", h_bar, 2, "…×S×d̄, the encoder states")
    if _shape(h_bar)[:-2] != _shape(h_t)[:-1]:
        raise ValueError(
            f"{fn}: h_t ({_shape(h_t)}) and h_bar ({_shape(h_bar)}) must share their "
            f"leading (batch) dimensions: expected {_LUONG_SHAPES}"
        )


def luong_dot_score(h_t: jax.Array, h_bar: jax.Array) -> jax.Array:
    r"""Luong's *dot* score ``score_s = h_tᵀ h̄_s`` (eq. 8, first line).

    Shapes: ``h_t ∈ ℝ^{…×d}`` (decoder state), ``h̄ ∈ ℝ^{…×S×d}`` (encoder states),
    ``score ∈ ℝ^{…×S}``.

    Derivation, with ``g = ∂L/∂score ∈ ℝ^{…×S}``: ``∂score_s/∂h_t = h̄_s`` and
    ``∂score_s/∂h̄_s = h_t``, so

    * ``∂L/∂h_t = Σ_s g_s h̄_s = h̄ᵀ g`` (``d×S · S``, per batch element);
    * ``∂L/∂h̄_s = g_s h_t``, i.e. ``∂L/∂h̄ = g h_tᵀ`` (outer product, ``S×d``).

    Residuals: ``h_t, h̄``.
    """
    return jnp.einsum("...d,...sd->...s", h_t, h_bar)


def _dot_score_save(h_t, h_bar, y):
    return h_t, h_bar


def _dot_score_backward(residuals, g):
    h_t, h_bar = residuals
    return (jnp.einsum("...s,...sd->...d", g, h_bar), jnp.einsum("...s,...d->...sd", g, h_t))


def _dot_score_validate(h_t, h_bar):
    _luong_check("luong_dot_score", h_t, h_bar)
    if h_bar.shape[-1] != h_t.shape[-1]:
        raise ValueError(
            f"luong_dot_score: h_t and h_bar must have the same size d, got h_t "
            f"{_shape(h_t)} (d={h_t.shape[-1]}) and h_bar {_shape(h_bar)} "
            f"(d̄={h_bar.shape[-1]}); use the 'general' or 'concat' score for d ≠ d̄"
        )


luong_dot_score = primitive(
    luong_dot_score, _dot_score_backward, save=_dot_score_save, validate=_dot_score_validate,
    examples=[Example((normal(3, 4), normal(3, 5, 4))),
              Example((normal(2, 2, 3), normal(2, 2, 4, 3)))],
)


def luong_general_score(h_t: jax.Array, h_bar: jax.Array, w: jax.Array) -> jax.Array:
    r"""Luong's *general* score ``score_s = h_tᵀ W h̄_s`` (eq. 8, second line).

    Shapes: ``h_t ∈ ℝ^{…×d}``, ``h̄ ∈ ℝ^{…×S×d̄}``, ``W ∈ ℝ^{d×d̄}`` (the paper's
    ``W_a``, same orientation), ``score ∈ ℝ^{…×S}``. Computed as ``a = h_t W``
    (``…×d̄``, one vector per query), then ``score_s = ⟨a, h̄_s⟩``.

    Derivation, with ``g = ∂L/∂score ∈ ℝ^{…×S}``:

    * ``∂L/∂a = Σ_s g_s h̄_s`` (``…×d̄``), then through ``a = h_t W`` (a linear map):
      ``∂L/∂h_t = (∂L/∂a) Wᵀ`` and ``∂L/∂W = Σ_batch h_tᵀ (∂L/∂a)`` (``d×d̄``);
    * ``∂L/∂h̄_s = g_s a`` (outer product ``g aᵀ``, ``S×d̄``).

    Residuals: ``h_t, h̄, W`` (``a`` is recomputed: one ``d×d̄`` product per query).
    """
    return jnp.einsum("...e,...se->...s", jnp.matmul(h_t, w), h_bar)


def _general_score_save(h_t, h_bar, w, y):
    return h_t, h_bar, w


def _general_score_backward(residuals, g):
    h_t, h_bar, w = residuals
    a = jnp.matmul(h_t, w)
    da = jnp.einsum("...s,...se->...e", g, h_bar)
    dh_t = jnp.matmul(da, w.T)
    dw = jnp.matmul(h_t.reshape(-1, h_t.shape[-1]).T, da.reshape(-1, da.shape[-1]))
    return dh_t, jnp.einsum("...s,...e->...se", g, a), dw


def _general_score_validate(h_t, h_bar, w):
    fn = "luong_general_score"
    _luong_check(fn, h_t, h_bar)
    v.floating(fn, "w", w)
    v.ndim_exactly(fn, "w", w, 2, "d×d̄")
    if _shape(w) != (h_t.shape[-1], h_bar.shape[-1]):
        raise ValueError(
            f"{fn}: w must have shape (d, d̄) = ({h_t.shape[-1]}, {h_bar.shape[-1]}) for "
            f"h_t {_shape(h_t)} and h_bar {_shape(h_bar)}, got {_shape(w)}"
        )


luong_general_score = primitive(
    luong_general_score, _general_score_backward, save=_general_score_save,
    validate=_general_score_validate,
    examples=[Example((normal(3, 4), normal(3, 5, 4), normal(4, 4))),
              Example((normal(2, 3), normal(2, 4, 5), normal(3, 5)))],
)


def luong_concat_score(h_t: jax.Array, h_bar: jax.Array, w: jax.Array,
                       v_a: jax.Array) -> jax.Array:
    r"""Luong's *concat* score ``score_s = v_aᵀ tanh(W_a [h_t; h̄_s])`` (eq. 8, third line).

    Shapes: ``h_t ∈ ℝ^{…×d}``, ``h̄ ∈ ℝ^{…×S×d̄}``, ``W ∈ ℝ^{(d+d̄)×d_a}`` (``w``),
    ``v_a ∈ ℝ^{d_a}`` (``v_a``), ``score ∈ ℝ^{…×S}``.
    Batch-first, fdl's ``Y = XW`` layout: ``w`` is the *transpose* of the paper's
    ``W_a ∈ ℝ^{d_a×(d+d̄)}``, and the row ``[h_t; h̄_s]`` multiplies it on the left.

    Split ``W`` by rows into ``W₁ ∈ ℝ^{d×d_a}`` (acting on ``h_t``) and
    ``W₂ ∈ ℝ^{d̄×d_a}`` (acting on ``h̄_s``), so the concatenation is never formed:
    ``U_s = h_t W₁ + h̄_s W₂`` (``…×S×d_a``), ``T = tanh(U)``, ``score_s = T_s v_a``.

    Derivation, with ``g = ∂L/∂score ∈ ℝ^{…×S}``:

    * ``∂L/∂v_a = Σ_{batch,s} g_s T_s`` (``d_a``);
    * ``∂L/∂T_s = g_s v_a``, and ``tanh' = 1 − T²``:
      ``∂L/∂U = (g ⊗ v_a) ⊙ (1 − T ⊙ T)`` (``…×S×d_a``);
    * ``U_s = h_t W₁ + h̄_s W₂`` is linear: ``∂L/∂h̄ = (∂L/∂U) W₂ᵀ``,
      ``∂L/∂h_t = (Σ_s ∂L/∂U_s) W₁ᵀ`` (``h_t`` is shared by every ``s``),
      ``∂L/∂W₁ = Σ_batch h_tᵀ (Σ_s ∂L/∂U_s)``, ``∂L/∂W₂ = Σ_{batch,s} h̄_sᵀ ∂L/∂U_s``,
      and ``∂L/∂W = [∂L/∂W₁; ∂L/∂W₂]`` stacked by rows.

    Residuals: ``h_t, h̄, W, v_a`` and ``T`` (``…×S×d_a``, for ``tanh'``).
    """
    t = _concat_hidden(h_t, h_bar, w)
    return jnp.einsum("...sa,a->...s", t, v_a)


def _concat_hidden(h_t, h_bar, w):
    d = h_t.shape[-1]
    query = jnp.matmul(h_t, w[:d])[..., None, :]              # …×1×d_a, shared over s
    return jnp.tanh(jnp.matmul(h_bar, w[d:]) + query)


def _concat_score_save(h_t, h_bar, w, v_a, y):
    return h_t, h_bar, w, v_a, _concat_hidden(h_t, h_bar, w)


def _concat_score_backward(residuals, g):
    h_t, h_bar, w, v_a, t = residuals
    d = h_t.shape[-1]
    dv = jnp.einsum("...s,...sa->a", g, t)
    du = jnp.einsum("...s,a->...sa", g, v_a) * (1 - t * t)
    du_query = jnp.sum(du, axis=-2)                               # Σ_s ∂L/∂U_s
    dh_t = jnp.matmul(du_query, w[:d].T)
    dh_bar = jnp.matmul(du, w[d:].T)
    dw1 = jnp.matmul(h_t.reshape(-1, d).T, du_query.reshape(-1, du.shape[-1]))
    dw2 = jnp.matmul(h_bar.reshape(-1, h_bar.shape[-1]).T, du.reshape(-1, du.shape[-1]))
    return dh_t, dh_bar, jnp.concatenate([dw1, dw2], axis=0), dv


def _concat_score_validate(h_t, h_bar, w, v_a):
    fn = "luong_concat_score"
    _luong_check(fn, h_t, h_bar)
    v.floating(fn, "w", w)
    v.floating(fn, "v_a", v_a)
    v.ndim_exactly(fn, "w", w, 2, "(d+d̄)×d_a")
    v.ndim_exactly(fn, "v_a", v_a, 1, "d_a")
    rows = h_t.shape[-1] + h_bar.shape[-1]
    if w.shape[0] != rows:
        raise ValueError(
            f"{fn}: w must have d+d̄ = {h_t.shape[-1]}+{h_bar.shape[-1]} = {rows} rows for "
            f"h_t {_shape(h_t)} and h_bar {_shape(h_bar)}, got w of shape {_shape(w)} "
            "(fdl's layout is the transpose of the paper's W_a)"
        )
    if _shape(v_a) != (w.shape[1],):
        raise ValueError(f"{fn}: v_a must have shape (d_a,) = ({w.shape[1]},) to match w "
                         f"{_shape(w)}, got {_shape(v_a)}")


luong_concat_score = primitive(
    luong_concat_score, _concat_score_backward, save=_concat_score_save,
    validate=_concat_score_validate,
    examples=[Example((normal(3, 4), normal(3, 5, 4), normal(8, 6, scale=0.5), normal(6))),
              Example((normal(2, 2, 3), normal(2, 2, 4, 2), normal(5, 3, scale=0.5),
                       normal(3)))],
)

LUONG_SCORES = {"dot": luong_dot_score, "general": luong_general_score,
                "concat": luong_concat_score}
"""Luong's content-based score functions by name, with their parameters:
``dot`` (none), ``general`` (``w``), ``concat`` (``w``, ``v_a``)."""

_SCORE_PARAMS = {"dot": (), "general": ("w",), "concat": ("w", "v_a")}


def luong_score(h_t: jax.Array, h_bar: jax.Array, *params: jax.Array,
                kind: str = "dot") -> jax.Array:
    r"""Luong score ``score(h_t, h̄_s)`` for every source position, ``…×S``.

    ``kind`` picks the primitive (static): ``"dot"`` → :func:`luong_dot_score`
    (no ``params``), ``"general"`` → :func:`luong_general_score` (``params = (w,)``),
    ``"concat"`` → :func:`luong_concat_score` (``params = (w, v_a)``); each holds its
    derivation ∂L/∂(h_t, h̄, params).
    """
    if kind not in LUONG_SCORES:
        raise ValueError(f"luong_score: kind must be one of {tuple(LUONG_SCORES)}, got {kind!r}")
    names = _SCORE_PARAMS[kind]
    if len(params) != len(names):
        raise TypeError(
            f"luong_score: kind={kind!r} takes {len(names)} parameter(s) {names} after "
            f"h_t and h_bar, got {len(params)}"
        )
    return LUONG_SCORES[kind](h_t, h_bar, *params)


# --------------------------------------------------------------------------- #
# Luong attention: context and attentional state
# --------------------------------------------------------------------------- #


def luong_context(weights: jax.Array, h_bar: jax.Array) -> jax.Array:
    r"""Context vector ``c = Σ_s α_s h̄_s`` (Luong eq. 5's weighted average).

    Shapes: ``α ∈ ℝ^{…×S}`` (``weights``), ``h̄ ∈ ℝ^{…×S×d̄}``, ``c ∈ ℝ^{…×d̄}``;
    per batch element ``c = αᵀ h̄`` (``S · S×d̄``).

    Derivation, with ``g = ∂L/∂c ∈ ℝ^{…×d̄}``: ``∂c/∂α_s = h̄_s`` and
    ``∂c/∂h̄_s = α_s I``, so ``∂L/∂α_s = ⟨g, h̄_s⟩`` (``∂L/∂α = h̄ g``, ``S``) and
    ``∂L/∂h̄_s = α_s g`` (``∂L/∂h̄ = α gᵀ``, outer product ``S×d̄``).

    Residuals: ``α, h̄``.
    """
    return jnp.einsum("...s,...sd->...d", weights, h_bar)


def _context_save(weights, h_bar, y):
    return weights, h_bar


def _context_backward(residuals, g):
    weights, h_bar = residuals
    return (jnp.einsum("...d,...sd->...s", g, h_bar), jnp.einsum("...s,...d->...sd", weights, g))


def _context_validate(weights, h_bar):
    fn = "luong_context"
    v.floating(fn, "weights", weights)
    v.floating(fn, "h_bar", h_bar)
    v.ndim_at_least(fn, "weights", weights, 1, "…×S")
    v.ndim_at_least(fn, "h_bar", h_bar, 2, "…×S×d̄")
    if _shape(h_bar)[:-1] != _shape(weights):
        raise ValueError(
            f"luong_context: weights must have shape h_bar.shape[:-1] = "
            f"{_shape(h_bar)[:-1]} (…×S), got {_shape(weights)}"
        )


luong_context = primitive(
    luong_context, _context_backward, save=_context_save, validate=_context_validate,
    examples=[Example((normal(3, 5), normal(3, 5, 4))),
              Example((normal(2, 2, 4), normal(2, 2, 4, 3)))],
)


def luong_attentional_state(context: jax.Array, h_t: jax.Array, w_c: jax.Array) -> jax.Array:
    r"""Attentional hidden state ``h̃_t = tanh(W_c [c_t; h_t])`` (Luong eq. 5).

    Shapes: ``c ∈ ℝ^{…×d̄}`` (``context``), ``h_t ∈ ℝ^{…×d}``,
    ``W_c ∈ ℝ^{(d̄+d)×d_out}`` (``w_c``; batch-first, the *transpose* of the
    paper's ``W_c``; no bias, as in the paper), ``h̃ ∈ ℝ^{…×d_out}``.
    Rows ``W_c = [W_c₁; W_c₂]``, ``W_c₁ ∈ ℝ^{d̄×d_out}`` for ``c``, ``W_c₂ ∈ ℝ^{d×d_out}``
    for ``h_t``: ``h̃ = tanh(c W_c₁ + h_t W_c₂)``.

    Derivation, with ``G = ∂L/∂h̃`` and ``G' = G ⊙ (1 − h̃ ⊙ h̃)`` (``tanh' = 1 − tanh²``):
    ``∂L/∂c = G' W_c₁ᵀ``, ``∂L/∂h_t = G' W_c₂ᵀ``,
    ``∂L/∂W_c = [cᵀ G'; h_tᵀ G']`` (summed over the batch; ``= [c; h]ᵀ G'``).

    Residuals: ``c, h_t, W_c`` and ``h̃`` (the output).
    """
    k = context.shape[-1]
    return jnp.tanh(jnp.matmul(context, w_c[:k]) + jnp.matmul(h_t, w_c[k:]))


def _state_save(context, h_t, w_c, y):
    return context, h_t, w_c, y


def _state_backward(residuals, g):
    c, h_t, w_c, y = residuals
    k = c.shape[-1]
    gp = g * (1 - y * y)
    gp2 = gp.reshape(-1, gp.shape[-1])
    dw = jnp.concatenate([jnp.matmul(c.reshape(-1, k).T, gp2),
                          jnp.matmul(h_t.reshape(-1, h_t.shape[-1]).T, gp2)], axis=0)
    return jnp.matmul(gp, w_c[:k].T), jnp.matmul(gp, w_c[k:].T), dw


def _state_validate(context, h_t, w_c):
    fn = "luong_attentional_state"
    for name, a in (("context", context), ("h_t", h_t), ("w_c", w_c)):
        v.floating(fn, name, a)
    v.ndim_at_least(fn, "context", context, 1, "…×d̄")
    v.ndim_at_least(fn, "h_t", h_t, 1, "…×d")
    v.ndim_exactly(fn, "w_c", w_c, 2, "(d̄+d)×d_out")
    if _shape(context)[:-1] != _shape(h_t)[:-1]:
        raise ValueError(f"{fn}: context {_shape(context)} and h_t {_shape(h_t)} must share "
                         "their leading (batch) dimensions")
    rows = context.shape[-1] + h_t.shape[-1]
    if w_c.shape[0] != rows:
        raise ValueError(
            f"{fn}: w_c must have d̄+d = {context.shape[-1]}+{h_t.shape[-1]} = {rows} rows "
            f"for context {_shape(context)} and h_t {_shape(h_t)}, got w_c of shape "
            f"{_shape(w_c)} (fdl's layout is the transpose of the paper's W_c)"
        )


luong_attentional_state = primitive(
    luong_attentional_state, _state_backward, save=_state_save, validate=_state_validate,
    examples=[Example((normal(3, 4), normal(3, 5), normal(9, 6, scale=0.5))),
              Example((normal(2, 2, 3), normal(2, 2, 3), normal(6, 4, scale=0.5)))],
)


def luong_attention(h_t: jax.Array, h_bar: jax.Array, *score_params: jax.Array,
                    kind: str = "dot", mask: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array]:
    r"""Luong global attention: ``(context, weights)`` for decoder state ``h_t``.

    Symbols: ``h_t ∈ ℝ^{…×d}`` (``h_t``, the decoder state at step ``t``),
    ``h̄ ∈ ℝ^{…×S×d̄}`` (``h_bar``, the encoder states), ``mask ∈ {True,False}^{…×S}``
    (True = real source position; ``None`` = all), ``kind`` and ``score_params``
    as in :func:`luong_score`.

        ``score_s = score(h_t, h̄_s)``                  (…×S)
        ``α = masked_softmax(score, mask)``            (…×S, ``weights``)
        ``c = Σ_s α_s h̄_s``                             (…×d̄, ``context``)

    Follow with :func:`luong_attentional_state` for ``h̃_t = tanh(W_c[c_t; h_t])``
    and the output layer ``softmax(h̃_t W_s)``. Only Luong's content-based
    (global) scores are provided, not the *location* score or local attention.

    The full backward chain (each step the hand-written rule of one primitive;
    ``∂L/∂c`` from ``h̃``: ``G' W_c₁ᵀ`` with ``G' = ∂L/∂h̃ ⊙ (1 − h̃²)``):

    1. context: ``∂L/∂α_s = ⟨∂L/∂c, h̄_s⟩`` (plus any direct use of the weights),
       and a first share ``∂L/∂h̄_s ⊕= α_s ∂L/∂c``;
    2. softmax: ``∂L/∂score = α ⊙ (∂L/∂α − ⟨∂L/∂α, α⟩)`` (zero where masked);
    3. score, with ``g = ∂L/∂score``: dot — ``∂L/∂h_t = Σ_s g_s h̄_s``,
       ``∂L/∂h̄_s ⊕= g_s h_t``; general — ``a = h_t W``, ``∂L/∂h_t = (Σ_s g_s h̄_s) Wᵀ``,
       ``∂L/∂W = h_tᵀ Σ_s g_s h̄_s``, ``∂L/∂h̄_s ⊕= g_s a``; concat —
       ``∂L/∂U = (g ⊗ v_a) ⊙ (1 − T²)``, then the linear map ``U = h_t W₁ + h̄ W₂``;
    4. ``h_t`` also feeds ``h̃`` directly: ``∂L/∂h_t ⊕= G' W_c₂ᵀ``.

    JAX adds the contributions (⊕=) of the several paths into ``h̄`` and ``h_t``.

    References: Luong, Pham & Manning, "Effective Approaches to Attention-based
    Neural Machine Translation", 2015.
    """
    scores = luong_score(h_t, h_bar, *score_params, kind=kind)
    if mask is not None:
        _check_mask("luong_attention", mask, _shape(scores), "scores (…×S)")
    weights = masked_softmax(scores, mask)
    return luong_context(weights, h_bar), weights
