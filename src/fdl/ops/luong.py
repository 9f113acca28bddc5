"""Luong's global attention: dot, general and concat scores, context, attentional state.

Layout is batch-first: the decoder state $h_t ∈ ℝ^{…×d}$ attends over the encoder
states $h̄ ∈ ℝ^{…×S×d̄}$; $…$ is any number of leading batch dimensions, the same for
every argument. Scores and weights are $…×S$, softmax over the source positions
$s$ with `fdl.ops.masked_softmax` (boolean masks, `True` = real source position;
a fully masked row has zero weights).

The composites `luong_score` and `luong_attention` chain the primitives here and
the masked softmax, so their gradient is the chain of the hand-written rules.

References: Luong, Pham & Manning, "Effective Approaches to Attention-based Neural
Machine Translation", 2015 (global attention, dot / general / concat scores,
attentional hidden state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl.ops.attention import _check_mask, _shape, masked_softmax
from fdl.ops.sequence import check_lengths, sequence_mask
from fdl.primitive import Example, gaussian, primitive

__all__ = [
    "LUONG_SCORES",
    "luong_attention",
    "luong_attentional_state",
    "luong_concat_score",
    "luong_context",
    "luong_dot_score",
    "luong_general_score",
    "luong_score",
]


# --------------------------------------------------------------------------- #
# Luong attention: scores
# --------------------------------------------------------------------------- #


def _luong_spec(fn: str, **more: str) -> v.Shapes:
    """The decoder state and the encoder states, then the score's own parameters."""
    return v.shapes(fn, h_t="…×d, the decoder state", h_bar="…×S×d̄, the encoder states",
                    **more)


def luong_dot_score(h_t: jax.Array, h_bar: jax.Array) -> jax.Array:
    r"""Luong's *dot* score $score_s = h_tᵀ h̄_s$ (eq. 8, first line).

    Shapes: $h_t ∈ ℝ^{…×d}$ (decoder state), $h̄ ∈ ℝ^{…×S×d}$ (encoder states),
    $score ∈ ℝ^{…×S}$.

    Derivation, with $g = ∂L/∂score ∈ ℝ^{…×S}$: $∂score_s/∂h_t = h̄_s$ and
    $∂score_s/∂h̄_s = h_t$, so

    * $∂L/∂h_t = Σ_s g_s h̄_s = h̄ᵀ g$ ($d×S · S$, per batch element);
    * $∂L/∂h̄_s = g_s h_t$, i.e. $∂L/∂h̄ = g h_tᵀ$ (outer product, $S×d$).

    Residuals: $h_t, h̄$.

    Tangent (bilinear, product rule): $d score_s = ⟨dh_t, h̄_s⟩ + ⟨h_t, dh̄_s⟩$ ($…×S$).
    """
    return jnp.einsum("...d,...sd->...s", h_t, h_bar)


def _dot_score_save(h_t, h_bar, y):
    return h_t, h_bar


def _dot_score_backward(residuals, g):
    h_t, h_bar = residuals
    return (jnp.einsum("...s,...sd->...d", g, h_bar), jnp.einsum("...s,...d->...sd", g, h_t))


def _dot_score_validate(h_t, h_bar):
    if h_bar.shape[-1] != h_t.shape[-1]:
        raise ValueError(
            f"luong_dot_score: h_t and h_bar must have the same size d, got h_t "
            f"{_shape(h_t)} (d={h_t.shape[-1]}) and h_bar {_shape(h_bar)} "
            f"(d̄={h_bar.shape[-1]}); use the 'general' or 'concat' score for d ≠ d̄"
        )


def _dot_score_tangent(residuals, t):
    h_t, h_bar = residuals
    dh_t, dh_bar = t
    return (jnp.einsum("...d,...sd->...s", dh_t, h_bar)
            + jnp.einsum("...d,...sd->...s", h_t, dh_bar))


luong_dot_score = primitive(
    luong_dot_score, _dot_score_backward, save=_dot_score_save,
    spec=_luong_spec("luong_dot_score"), validate=_dot_score_validate,
    tangent=_dot_score_tangent, examples=[Example((gaussian(3, 4), gaussian(3, 5, 4))),
              Example((gaussian(2, 2, 3), gaussian(2, 2, 4, 3)))],
)


def luong_general_score(h_t: jax.Array, h_bar: jax.Array, w: jax.Array) -> jax.Array:
    r"""Luong's *general* score $score_s = h_tᵀ W h̄_s$ (eq. 8, second line).

    Shapes: $h_t ∈ ℝ^{…×d}$, $h̄ ∈ ℝ^{…×S×d̄}$, $W ∈ ℝ^{d×d̄}$ (the paper's
    $W_a$, same orientation), $score ∈ ℝ^{…×S}$. Computed as $a = h_t W$
    ($…×d̄$, one vector per query), then $score_s = ⟨a, h̄_s⟩$.

    Derivation, with $g = ∂L/∂score ∈ ℝ^{…×S}$:

    * $∂L/∂a = Σ_s g_s h̄_s$ ($…×d̄$), then through $a = h_t W$ (a linear map):
      $∂L/∂h_t = (∂L/∂a) Wᵀ$ and $∂L/∂W = Σ_batch h_tᵀ (∂L/∂a)$ ($d×d̄$);
    * $∂L/∂h̄_s = g_s a$ (outer product $g aᵀ$, $S×d̄$).

    Residuals: $h_t, h̄, W$ ($a$ is recomputed: one $d×d̄$ product per query).

    Tangent (trilinear, product rule): $da = dh_t W + h_t dW$ ($…×d̄$),
    $d score_s = ⟨da, h̄_s⟩ + ⟨a, dh̄_s⟩$ ($…×S$).
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


def _general_score_tangent(residuals, t):
    h_t, h_bar, w = residuals
    dh_t, dh_bar, dw = t
    a = jnp.matmul(h_t, w)
    da = jnp.matmul(dh_t, w) + jnp.matmul(h_t, dw)
    return jnp.einsum("...e,...se->...s", da, h_bar) + jnp.einsum("...e,...se->...s", a, dh_bar)


luong_general_score = primitive(
    luong_general_score, _general_score_backward, save=_general_score_save,
    spec=_luong_spec("luong_general_score", w="d×d̄"),
    tangent=_general_score_tangent,
    examples=[Example((gaussian(3, 4), gaussian(3, 5, 4), gaussian(4, 4))),
              Example((gaussian(2, 3), gaussian(2, 4, 5), gaussian(3, 5)))],
)


def luong_concat_score(h_t: jax.Array, h_bar: jax.Array, w: jax.Array,
                       v_a: jax.Array) -> jax.Array:
    r"""Luong's *concat* score $score_s = v_aᵀ tanh(W_a [h_t; h̄_s])$ (eq. 8, third line).

    Shapes: $h_t ∈ ℝ^{…×d}$, $h̄ ∈ ℝ^{…×S×d̄}$, $W ∈ ℝ^{(d+d̄)×d_a}$ ($w$),
    $v_a ∈ ℝ^{d_a}$ ($v_a$), $score ∈ ℝ^{…×S}$.
    Batch-first, fdl's $Y = XW$ layout: $w$ is the *transpose* of the paper's
    $W_a ∈ ℝ^{d_a×(d+d̄)}$, and the row $[h_t; h̄_s]$ multiplies it on the left.

    Split $W$ by rows into $W₁ ∈ ℝ^{d×d_a}$ (acting on $h_t$) and
    $W₂ ∈ ℝ^{d̄×d_a}$ (acting on $h̄_s$), so the concatenation is never formed:
    $U_s = h_t W₁ + h̄_s W₂$ ($…×S×d_a$), $T = tanh(U)$, $score_s = T_s v_a$.

    Derivation, with $g = ∂L/∂score ∈ ℝ^{…×S}$:

    * $∂L/∂v_a = Σ_{batch,s} g_s T_s$ ($d_a$);
    * $∂L/∂T_s = g_s v_a$, and $tanh' = 1 − T²$:
      $∂L/∂U = (g ⊗ v_a) ⊙ (1 − T ⊙ T)$ ($…×S×d_a$);
    * $U_s = h_t W₁ + h̄_s W₂$ is linear: $∂L/∂h̄ = (∂L/∂U) W₂ᵀ$,
      $∂L/∂h_t = (Σ_s ∂L/∂U_s) W₁ᵀ$ ($h_t$ is shared by every $s$),
      $∂L/∂W₁ = Σ_batch h_tᵀ (Σ_s ∂L/∂U_s)$, $∂L/∂W₂ = Σ_{batch,s} h̄_sᵀ ∂L/∂U_s$,
      and $∂L/∂W = [∂L/∂W₁; ∂L/∂W₂]$ stacked by rows.

    Residuals: $h_t, h̄, W, v_a$ and $T$ ($…×S×d_a$, for `tanh'`).

    Tangent: $dU_s = dh_t W₁ + h_t dW₁ + dh̄_s W₂ + h̄_s dW₂$ ($…×S×d_a$, with
    $dW = [dW₁; dW₂]$ split by rows), $dT = (1 − T ⊙ T) ⊙ dU$,
    $d score_s = dT_s v_a + T_s dv_a$ ($…×S$).
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


def _concat_score_tangent(residuals, t):
    h_t, h_bar, w, v_a, th = residuals
    dh_t, dh_bar, dw, dv = t
    d = h_t.shape[-1]
    dquery = jnp.matmul(dh_t, w[:d]) + jnp.matmul(h_t, dw[:d])     # …×d_a, shared over s
    du = jnp.matmul(dh_bar, w[d:]) + jnp.matmul(h_bar, dw[d:]) + dquery[..., None, :]
    dth = (1 - th * th) * du
    return jnp.einsum("...sa,a->...s", dth, v_a) + jnp.einsum("...sa,a->...s", th, dv)


luong_concat_score = primitive(
    luong_concat_score, _concat_score_backward, save=_concat_score_save,
    spec=_luong_spec("luong_concat_score",
                     w="d+d̄×d_a, fdl's layout is the transpose of the paper's W_a", v_a="d_a"),
    tangent=_concat_score_tangent,
    examples=[Example((gaussian(3, 4), gaussian(3, 5, 4), gaussian(8, 6, scale=0.5), gaussian(6))),
              Example((gaussian(2, 2, 3), gaussian(2, 2, 4, 2), gaussian(5, 3, scale=0.5),
                       gaussian(3)))],
)

LUONG_SCORES = {"dot": luong_dot_score, "general": luong_general_score,
                "concat": luong_concat_score}
"""Luong's content-based score functions by name, with their parameters:
`dot` (none), `general` (`w`), `concat` (`w`, `v_a`)."""

_SCORE_PARAMS = {"dot": (), "general": ("w",), "concat": ("w", "v_a")}


def luong_score(h_t: jax.Array, h_bar: jax.Array, *params: jax.Array,
                kind: str = "dot") -> jax.Array:
    r"""Luong score $score(h_t, h̄_s)$ for every source position, $…×S$.

    `kind` picks the primitive (static): `"dot"` → `luong_dot_score`
    (no `params`), `"general"` → `luong_general_score` ($params = (w,)$),
    `"concat"` → `luong_concat_score` ($params = (w, v_a)$); each holds its
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
    r"""Context vector $c = Σ_s α_s h̄_s$ (Luong eq. 5's weighted average).

    Shapes: $α ∈ ℝ^{…×S}$ (`weights`), $h̄ ∈ ℝ^{…×S×d̄}$, $c ∈ ℝ^{…×d̄}$;
    per batch element $c = αᵀ h̄$ ($S · S×d̄$).

    Derivation, with $g = ∂L/∂c ∈ ℝ^{…×d̄}$: $∂c/∂α_s = h̄_s$ and
    $∂c/∂h̄_s = α_s I$, so $∂L/∂α_s = ⟨g, h̄_s⟩$ ($∂L/∂α = h̄ g$, $S$) and
    $∂L/∂h̄_s = α_s g$ ($∂L/∂h̄ = α gᵀ$, outer product $S×d̄$).

    Residuals: $α, h̄$.

    Tangent (bilinear): $dc = Σ_s (dα_s h̄_s + α_s dh̄_s)$ ($…×d̄$).
    """
    return jnp.einsum("...s,...sd->...d", weights, h_bar)


def _context_save(weights, h_bar, y):
    return weights, h_bar


def _context_backward(residuals, g):
    weights, h_bar = residuals
    return (jnp.einsum("...d,...sd->...s", g, h_bar), jnp.einsum("...s,...d->...sd", weights, g))


def _context_tangent(residuals, t):
    weights, h_bar = residuals
    dweights, dh_bar = t
    return (jnp.einsum("...s,...sd->...d", dweights, h_bar)
            + jnp.einsum("...s,...sd->...d", weights, dh_bar))


luong_context = primitive(
    luong_context, _context_backward, save=_context_save,
    spec=v.shapes("luong_context", h_bar="…×S×d̄", weights="…×S"),
    tangent=_context_tangent, examples=[Example((gaussian(3, 5), gaussian(3, 5, 4))),
              Example((gaussian(2, 2, 4), gaussian(2, 2, 4, 3)))],
)


def luong_attentional_state(context: jax.Array, h_t: jax.Array, w_c: jax.Array) -> jax.Array:
    r"""Attentional hidden state $h̃_t = tanh(W_c [c_t; h_t])$ (Luong eq. 5).

    Shapes: $c ∈ ℝ^{…×d̄}$ (`context`), $h_t ∈ ℝ^{…×d}$,
    $W_c ∈ ℝ^{(d̄+d)×d_out}$ ($w_c$; batch-first, the *transpose* of the
    paper's $W_c$; no bias, as in the paper), $h̃ ∈ ℝ^{…×d_out}$.
    Rows $W_c = [W_c₁; W_c₂]$, $W_c₁ ∈ ℝ^{d̄×d_out}$ for $c$, $W_c₂ ∈ ℝ^{d×d_out}$
    for $h_t$: $h̃ = tanh(c W_c₁ + h_t W_c₂)$.

    Derivation, with $G = ∂L/∂h̃$ and $G' = G ⊙ (1 − h̃ ⊙ h̃)$ ($tanh' = 1 − tanh²$):
    $∂L/∂c = G' W_c₁ᵀ$, $∂L/∂h_t = G' W_c₂ᵀ$,
    $∂L/∂W_c = [cᵀ G'; h_tᵀ G']$ (summed over the batch; $= [c; h]ᵀ G'$).

    Residuals: $c, h_t, W_c$ and $h̃$ (the output).

    Tangent: $dU = dc W_c₁ + c dW_c₁ + dh_t W_c₂ + h_t dW_c₂$ ($…×d_out$),
    $dh̃ = (1 − h̃ ⊙ h̃) ⊙ dU$.
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


def _state_tangent(residuals, t):
    c, h_t, w_c, y = residuals
    dc, dh_t, dw_c = t
    k = c.shape[-1]
    du = (jnp.matmul(dc, w_c[:k]) + jnp.matmul(c, dw_c[:k])
          + jnp.matmul(dh_t, w_c[k:]) + jnp.matmul(h_t, dw_c[k:]))
    return (1 - y * y) * du


luong_attentional_state = primitive(
    luong_attentional_state, _state_backward, save=_state_save,
    spec=v.shapes("luong_attentional_state", context="…×d̄", h_t="…×d",
                  w_c="d̄+d×d_out, fdl's layout is the transpose of the paper's W_c"),
    tangent=_state_tangent,
    examples=[Example((gaussian(3, 4), gaussian(3, 5), gaussian(9, 6, scale=0.5))),
              Example((gaussian(2, 2, 3), gaussian(2, 2, 3), gaussian(6, 4, scale=0.5)))],
)


def luong_attention(h_t: jax.Array, h_bar: jax.Array, *score_params: jax.Array,
                    kind: str = "dot", mask: jax.Array | None = None,
                    lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    r"""Luong global attention: `(context, weights)` for decoder state $h_t$.

    Symbols: $h_t ∈ ℝ^{…×d}$ ($h_t$, the decoder state at step $t$),
    $h̄ ∈ ℝ^{…×S×d̄}$ ($h_bar$, the encoder states), $mask ∈ {True,False}^{…×S}$
    (True = real source position; `None` = all), `kind` and `score_params`
    as in `luong_score`. `lengths` (ints in $[1, S]$) gives the source lengths
    instead of (or as well as) `mask`: positions $s ≥ ℓ$ get weight exactly 0 and
    no gradient.

        $score_s = score(h_t, h̄_s)$                  (…×S)
        $α = masked_softmax(score, mask)$            (…×S, `weights`)
        $c = Σ_s α_s h̄_s$                             (…×d̄, `context`)

    Follow with `luong_attentional_state` for $h̃_t = tanh(W_c[c_t; h_t])$
    and the output layer $softmax(h̃_t W_s)$. Only Luong's content-based
    (global) scores are provided, not the *location* score or local attention.

    The full backward chain (each step the hand-written rule of one primitive;
    $∂L/∂c$ from $h̃$: $G' W_c₁ᵀ$ with $G' = ∂L/∂h̃ ⊙ (1 − h̃²)$):

    1. context: $∂L/∂α_s = ⟨∂L/∂c, h̄_s⟩$ (plus any direct use of the weights),
       and a first share $∂L/∂h̄_s ⊕= α_s ∂L/∂c$;
    2. softmax: $∂L/∂score = α ⊙ (∂L/∂α − ⟨∂L/∂α, α⟩)$ (zero where masked);
    3. score, with $g = ∂L/∂score$: dot — $∂L/∂h_t = Σ_s g_s h̄_s$,
       $∂L/∂h̄_s ⊕= g_s h_t$; general — $a = h_t W$, $∂L/∂h_t = (Σ_s g_s h̄_s) Wᵀ$,
       $∂L/∂W = h_tᵀ Σ_s g_s h̄_s$, $∂L/∂h̄_s ⊕= g_s a$; concat —
       $∂L/∂U = (g ⊗ v_a) ⊙ (1 − T²)$, then the linear map $U = h_t W₁ + h̄ W₂$;
    4. $h_t$ also feeds $h̃$ directly: $∂L/∂h_t ⊕= G' W_c₂ᵀ$.

    JAX adds the contributions (⊕=) of the several paths into $h̄$ and $h_t$.

    References: Luong, Pham & Manning, "Effective Approaches to Attention-based
    Neural Machine Translation", 2015.
    """
    scores = luong_score(h_t, h_bar, *score_params, kind=kind)
    check_lengths("luong_attention", lengths, _shape(scores)[:-1], scores.shape[-1])
    if lengths is not None:
        by_length = sequence_mask(lengths, scores.shape[-1])
        mask = by_length if mask is None else jnp.broadcast_to(mask, by_length.shape) & by_length
    if mask is not None:
        _check_mask("luong_attention", mask, _shape(scores), "scores (…×S)")
    weights = masked_softmax(scores, mask)
    return luong_context(weights, h_bar), weights
