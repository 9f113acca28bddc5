r"""Ghost norms: primitives whose backward also returns each example's squared
gradient norm for their own parameters, without forming per-example gradients.

The contract
------------
A *ghost* primitive takes the arguments of an ordinary primitive plus a
`probe` $∈ ℝ^N$ (zeros; axis 0 of the data indexes the $N$ examples). Its forward
is the ordinary forward, its cotangents for the ordinary arguments are the
ordinary hand-written ones, and the probe's "cotangent" is

$$ pᵢ = Σ_θ ‖∂ℓᵢ/∂θ‖² $$

over the primitive's parameters $θ$, for $L = Σᵢ ℓᵢ$ whose term $ℓᵢ$ depends
on example $i$'s rows only (no batch statistics). $pᵢ$ is quadratic in the
output cotangent $G$, so it is no VJP: these primitives are not registered and
always run their hand-written rule (in either gradient mode). With $L = Σᵢ cᵢ ℓᵢ$
the probe receives $cᵢ² pᵢ$. `fdl.privacy` installs the probes through the slot
the layers expose (`fdl.layers.base.PROBE`) and adds up the cotangents.

One identity does most of the work. A weight used as $Y = XW$ over $T$
positions of one example (a sequence, an image's pixels, a recurrent cell's
steps) has the per-example gradient $∂ℓᵢ/∂W = Xᵢᵀ Gᵢ$ with $Xᵢ ∈ ℝ^{T×a}$,
$Gᵢ ∈ ℝ^{T×b}$, and

$$ ‖Xᵢᵀ Gᵢ‖²_F = tr(Gᵢᵀ Xᵢ Xᵢᵀ Gᵢ) = ⟨Xᵢ Xᵢᵀ, Gᵢ Gᵢᵀ⟩_F $$

(the *Gram form*, $O(T²(a + b))$ per example, no $a×b$ matrix), against the
*direct form* $O(T a b)$ that forms $Xᵢᵀ Gᵢ$ (`weight_sq_norms` takes the
cheaper); for $T = 1$ both are $‖xᵢ‖²‖gᵢ‖²$. Each layer below reduces to it:

* convolution: $X$ is the unfolded input (one row of `k_h k_w C_in` pixels per
  output position, "im2col"), $T = o_h o_w$ (`ghost_conv2d`, `ghost_conv1d`);
* embedding: $X$ is one-hot, so the Gram matrix is "same id" (`ghost_embedding`);
* multi-head attention: its four projections are $N×T×d$ matmuls
  (`ghost_multi_head_attention`);
* recurrent cells: the weights are shared over the steps, so $X$ stacks the
  steps' inputs (or previous states) and $G$ the steps' pre-activation
  cotangents (`ghost_rnn`, `ghost_lstm`, `ghost_gru`);
* layer and RMS norms: per-example $∂ℓᵢ/∂γ = Σ_t gᵢₜ ⊙ x̂ᵢₜ$, formed directly.

Dense layers use `fdl.ops.ghost_linear` (`fdl.ops.linear`).

References: Goodfellow, "Efficient Per-Example Gradient Computations", 2015;
Rochette, Manoel, Tramel, "Efficient Per-Example Gradient Computations in
Convolutional Neural Networks", 2019 (the unfolded convolution); Li, Tramèr,
Liang, Hashimoto, "Large Language Models Can Be Strong Differentially Private
Learners", 2022 (ghost clipping of sequence layers); Bu, Mao, Xu, "Scalable and
Efficient Training of Large Convolutional Neural Networks with Differential
Privacy", 2022 (the choice between the Gram and direct forms).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fdl import _validate as v
from fdl.ops.attention import (_merge_heads, _mha_validate, _split_heads, _zeros_bias,
                               attention)
from fdl.ops.conv import _as_2d, as_tuple, conv2d, explicit_padding
from fdl.ops.embedding import embedding
from fdl.ops.linear import bias_sq_norms, ghost_linear, linear, weight_sq_norms
from fdl.ops.norm import layer_norm, rms_norm
from fdl.ops.recurrent import gru, gru_cell, lstm, lstm_cell, rnn, rnn_cell
from fdl.primitive import Primitive, primitive

__all__ = [
    "bias_sq_norms",
    "fan_out",
    "ghost_conv1d",
    "ghost_conv2d",
    "ghost_embedding",
    "ghost_gru",
    "ghost_layer_norm",
    "ghost_lstm",
    "ghost_multi_head_attention",
    "ghost_rms_norm",
    "ghost_rnn",
    "weight_sq_norms",
]


# --------------------------------------------------------------------------- #
# The two norm forms
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# A ghost from an ordinary primitive: same forward and backward, plus the probe
# --------------------------------------------------------------------------- #


def _probe_check(fn: str, probe: Any, n: int, data_shape: tuple) -> None:
    v.floating(fn, "probe", probe)
    if tuple(jnp.shape(probe)) != (n,):
        raise ValueError(
            f"{fn}: probe must have one entry per example, shape ({n},) for an input of "
            f"shape {data_shape}, got shape {tuple(jnp.shape(probe))}; a layer before this "
            "one may have reshaped the batch axis (per-example norms need axis 0 to index "
            "the examples)")


def _unregistered(forward: Callable, backward: Callable, fwd: Callable, static: tuple,
                  validate: Callable, name: str, signature: inspect.Signature,
                  doc: str) -> Callable:
    """An unregistered primitive (its probe's cotangent has no autodiff reference) that
    always runs its hand-written rule, as a function with `signature` and `doc`."""
    forward.__signature__ = signature
    forward.__name__ = forward.__qualname__ = name
    forward.__doc__ = doc
    ghost = primitive(forward, backward, fwd=fwd, static=static, validate=validate,
                      name=name, register=False)

    def call(*args: Any, **kwargs: Any) -> Any:
        return ghost.manual(*args, **kwargs)

    call.__signature__ = signature
    call.__name__ = call.__qualname__ = name
    call.__doc__ = doc
    call.primitive = ghost
    return call


def _ghost_of(base: Primitive, sq_norms: Callable, name: str, doc: str) -> Callable:
    """The ghost of `base`: `base`'s signature with `probe` inserted after its
    differentiable arguments, `base`'s forward, residuals and backward, and as the
    probe's cotangent `sq_norms(*static, residuals, G)` ($ℝ^N$)."""
    params = list(base.signature.parameters.values())
    n_data = len(params) - len(base.static)
    probe = inspect.Parameter("probe", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.Signature(params[:n_data] + [probe] + params[n_data:])

    def split(args: tuple) -> tuple[tuple, Any]:
        return args[:n_data] + args[n_data + 1:], args[n_data]

    def forward(*args: Any) -> Any:
        return base.forward(*split(args)[0])

    def fwd(*args: Any) -> tuple[Any, Any]:
        rest, p = split(args)
        y, residuals = base.forward_with_residuals(*rest)
        return y, (residuals, p)

    def backward(*args: Any) -> tuple:
        *static, (residuals, p), g = args
        cotangents = base.backward(*static, residuals, g)
        return (*cotangents, sq_norms(*static, residuals, g).astype(p.dtype))

    def validate(*args: Any) -> None:
        rest, p = split(args)
        if base.validate is not None:
            base.validate(*rest)
        data = rest[0]
        v.ndim_at_least(name, params[0].name, data, 1, "N×…, axis 0 indexing the examples")
        _probe_check(name, p, jnp.shape(data)[0], tuple(jnp.shape(data)))

    return _unregistered(forward, backward, fwd, base.static, validate, name, signature, doc)


# --------------------------------------------------------------------------- #
# Convolutions: the unfolded (im2col) input
# --------------------------------------------------------------------------- #


def _unfold(x: jax.Array, kernel: tuple, stride: Any, padding: Any, dilation: Any) -> jax.Array:
    r"""The patch matrix of each example, $U ∈ ℝ^{N×(o_h o_w)×(k_h k_w C_in)}$:
    row $(i_h, i_w)$ holds the input pixels the kernel meets at that output,
    $U[ν, i, (j, c)] = X_p[ν, s·i + d·j, c]$ ($X_p$: $X$ zero-padded by the
    forward's `lo, hi`), built from `k_h k_w` strided slices (no convolution)."""
    s, d = as_tuple(stride, 2), as_tuple(dilation, 2)
    extents = [di * (k - 1) + 1 for di, k in zip(d, kernel)]
    pads = explicit_padding(padding, x.shape[1:3], extents, s)
    o = [(n + lo + hi - e) // si + 1 for n, (lo, hi), e, si in zip(x.shape[1:3], pads, extents, s)]
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, c = x.shape[0], x.shape[3]
    starts = [(d[0] * jh, d[1] * jw) for jh in range(kernel[0]) for jw in range(kernel[1])]
    slices = [lax.slice(xp, (0, h0, w0, 0),
                        (n, h0 + s[0] * (o[0] - 1) + 1, w0 + s[1] * (o[1] - 1) + 1, c),
                        (1, s[0], s[1], 1)) for h0, w0 in starts]
    return jnp.stack(slices, axis=3).reshape(n, o[0] * o[1], kernel[0] * kernel[1] * c)


def _conv2d_sq_norms(stride, padding, dilation, groups, residuals, g):
    x, w = residuals
    # grouped: the kernel gradient is block by block, ‖∂ℓᵢ/∂W‖² = Σ_g ‖U_gᵢᵀ G_gᵢ‖²
    ci, co = x.shape[-1] // groups, g.shape[-1] // groups
    weight = sum(weight_sq_norms(_unfold(x[..., k * ci:(k + 1) * ci], w.shape[:2], stride,
                                         padding, dilation), g[..., k * co:(k + 1) * co])
                 for k in range(groups))
    return weight + bias_sq_norms(g)


ghost_conv2d = _ghost_of(conv2d, _conv2d_sq_norms, "ghost_conv2d", r"""2-D convolution
$Y = X ⋆ W + b$ (`fdl.ops.conv2d`, NHWC/HWIO) whose backward also returns, as the
probe's cotangent, each example's $‖∂ℓᵢ/∂W‖²_F + ‖∂ℓᵢ/∂b‖²$.

Shapes: $X ∈ ℝ^{N×H×W×C_in}$, $W ∈ ℝ^{k_h×k_w×C_in×C_out}$, $b ∈ ℝ^{C_out}$,
`probe` $∈ ℝ^N$ (zeros), $Y ∈ ℝ^{N×o_h×o_w×C_out}$; `stride`, `padding`,
`dilation` as for `conv2d`.

Derivation. `conv2d`'s kernel gradient is
$∂L/∂W[j, c, c'] = Σ_{ν,i} X_p[ν, s·i + d·j, c] G[ν, i, c']$; keeping example $ν = i$'s
terms only, with the unfolded input
$Uᵢ ∈ ℝ^{P×K}$ ($P = o_h o_w$ output positions, $K = k_h k_w C_in$; row $p$ holds
the pixels the kernel meets at output $p$) and $Gᵢ ∈ ℝ^{P×C_out}$,

$$ ∂ℓᵢ/∂W = Uᵢᵀ Gᵢ  (K×C_out, reshaped to k_h×k_w×C_in×C_out),   ∂ℓᵢ/∂b = Gᵢᵀ 1_P, $$

so $‖∂ℓᵢ/∂W‖²_F = ⟨Uᵢ Uᵢᵀ, Gᵢ Gᵢᵀ⟩_F$ (Gram form, $P×P$) or $‖Uᵢᵀ Gᵢ‖²_F$
(direct form, $K×C_out$), whichever is cheaper (`weight_sq_norms`; for usual
image sizes $P(K + C_out) > K C_out$ and the direct form wins — it costs as much as
the kernel gradient itself). The cotangents of $X, W, b$ are `conv2d`'s.

Residuals: `conv2d`'s ($X$, $W$) and the probe (for its dtype).
""")


def ghost_conv1d(x: jax.Array, w: jax.Array, b: jax.Array, probe: jax.Array,
                 stride: Any = 1, padding: Any = "SAME", dilation: Any = 1,
                 groups: int = 1) -> jax.Array:
    r"""1-D convolution (`fdl.ops.conv1d`, NWC/WIO) with a probe: `ghost_conv2d` on
    $X$ as $N×1×L×C_in$ and the kernel as $1×k×C_in×C_out$, exactly as `conv1d`
    is `conv2d` with a unit H axis, so the probe's cotangent is
    $‖∂ℓᵢ/∂W‖²_F + ‖∂ℓᵢ/∂b‖²$ by the same derivation ($P = o$, $K = k C_in$).

    Shapes: $X ∈ ℝ^{N×L×C_in}$, $W ∈ ℝ^{k×C_in×C_out}$, $b ∈ ℝ^{C_out}$,
    `probe` $∈ ℝ^N$, $Y ∈ ℝ^{N×o×C_out}$.
    """
    if jnp.ndim(x) != 3 or jnp.ndim(w) != 3:
        raise ValueError(f"ghost_conv1d: x must be N×L×C_in and w k×C_in×C_out, got x of "
                         f"shape {tuple(jnp.shape(x))} and w of shape {tuple(jnp.shape(w))}")
    s2, pad2, d2 = _as_2d(stride, padding, dilation)
    return ghost_conv2d(x[:, None], w[None], b, probe, s2, pad2, d2, groups)[:, 0]


# --------------------------------------------------------------------------- #
# Embedding: the repeated-index form
# --------------------------------------------------------------------------- #


def _embedding_sq_norms(residuals, g):
    ids, rows = residuals
    n, vocab = g.shape[0], rows.shape[0]
    ids2 = ids.reshape(n, -1)                      # (N, T)
    g3 = g.reshape(n, ids2.shape[1], g.shape[-1])  # (N, T, d)
    t = ids2.shape[1]
    if t == 1:
        return jnp.sum(g3[:, 0] * g3[:, 0], axis=1)
    if vocab <= t * t:  # direct: scatter each example's rows into its own V×d table
        per = jnp.zeros((n, vocab, g3.shape[2]), g.dtype).at[
            jnp.arange(n)[:, None], ids2].add(g3)
        return jnp.sum(per * per, axis=(1, 2))
    same = (ids2[:, :, None] == ids2[:, None, :]).astype(g.dtype)  # (N, T, T)
    gg = jnp.einsum("ntd,nsd->nts", g3, g3)
    return jnp.sum(same * gg, axis=(1, 2))


ghost_embedding = _ghost_of(embedding, _embedding_sq_norms, "ghost_embedding", r"""Embedding
lookup `Y[s] = T[ids[s]]` (`fdl.ops.embedding`) whose backward also returns, as the
probe's cotangent, each example's $‖∂ℓᵢ/∂T‖²_F$.

Shapes: `ids` $∈ {0…V−1}^{N×…}$ (axis 0 indexes the examples; the rest, e.g. a
sequence, is folded into $L$ positions), $T ∈ ℝ^{V×d}$, `probe` $∈ ℝ^N$,
$Y ∈ ℝ^{N×…×d}$.

Derivation. `embedding`'s rule is $∂L/∂T[u] = Σ_{s : ids[s] = u} G[s]$; example
$i$'s share is $∂ℓᵢ/∂T = Σ_l e_{ids_{il}} g_{il}ᵀ = Aᵢᵀ Gᵢ$ with the one-hot rows
$Aᵢ ∈ {0,1}^{L×V}$ and $Gᵢ ∈ ℝ^{L×d}$. Its Gram matrix is
$(Aᵢ Aᵢᵀ)_{lm} = [ids_{il} = ids_{im}]$, so (the repeated-index form)

$$ ‖∂ℓᵢ/∂T‖²_F = Σ_{l,m} [ids_{il} = ids_{im}] ⟨g_{il}, g_{im}⟩ $$

($O(L² d)$ per example; for $L = 1$ it is $‖gᵢ‖²$). When the vocabulary is
small ($V ≤ L²$) the example's $V×d$ gradient is scattered and squared instead
($O((L + V) d)$). The cotangent of $T$ is `embedding`'s; `ids` has none.

Residuals: `embedding`'s (`ids` and the number of rows $V$) and the probe.
""")


# --------------------------------------------------------------------------- #
# Layer and RMS norms: per-example γ, β gradients are N×d — formed directly
# --------------------------------------------------------------------------- #


def _layer_norm_sq_norms(eps, residuals, g):
    xhat = residuals[0]
    return bias_sq_norms(g * xhat) + bias_sq_norms(g)


def _rms_norm_sq_norms(eps, residuals, g):
    return bias_sq_norms(g * residuals[0])


_NORM_DOC = r"""{what} (`fdl.ops.{op}`) whose backward also returns, as the probe's
cotangent, each example's {norms}.

Shapes: $X ∈ ℝ^{{N×…×d}}$ (axis 0 indexes the examples, the middle axes fold
into $T$ positions), $γ{beta} ∈ ℝ^d$, `probe` $∈ ℝ^N$, $Y$ like $X$; `eps` static.

Derivation. `{op}`'s rule sums over the batch and positions,
$∂L/∂γ = Σ G ⊙ X̂${dbeta}; example $i$'s share keeps its own $T$ rows:

$$ ∂ℓᵢ/∂γ = Σ_t gᵢₜ ⊙ x̂ᵢₜ ∈ ℝ^d{dbeta_i} $$

— $N×d$ numbers, as few as the parameters' own gradient, so they are formed and
squared (no Gram form needed). The other cotangents are `{op}`'s.

Residuals: `{op}`'s ($X̂$, the inverse scale per row, $γ$) and the probe.
"""

ghost_layer_norm = _ghost_of(layer_norm, _layer_norm_sq_norms, "ghost_layer_norm",
                             _NORM_DOC.format(
                                 what="Layer normalisation $Y = γ ⊙ X̂ + β$", op="layer_norm",
                                 norms="$‖∂ℓᵢ/∂γ‖² + ‖∂ℓᵢ/∂β‖²$", beta=", β",
                                 dbeta=", $∂L/∂β = Σ G$", dbeta_i=",   ∂ℓᵢ/∂β = Σ_t gᵢₜ"))
ghost_rms_norm = _ghost_of(rms_norm, _rms_norm_sq_norms, "ghost_rms_norm",
                           _NORM_DOC.format(what="RMS normalisation $Y = γ ⊙ X/r$",
                                            op="rms_norm", norms="$‖∂ℓᵢ/∂γ‖²$", beta="",
                                            dbeta="", dbeta_i=""))


# --------------------------------------------------------------------------- #
# Multi-head attention: four projections over N×T×d
# --------------------------------------------------------------------------- #


def _linear_weight_sq_norms(residuals, g):
    x, _ = residuals
    return weight_sq_norms(x, g)


_ghost_projection = _ghost_of(linear, _linear_weight_sq_norms, "ghost_projection", r"""$Y = XW$
(`fdl.ops.linear` with a zero bias that is not a parameter) whose probe receives
$‖∂ℓᵢ/∂W‖²_F = ‖Xᵢᵀ Gᵢ‖²_F$ only (no bias term): `ghost_linear` without the bias.""")


def _fan_out(probe: jax.Array, k: int) -> tuple:
    r"""$k$ copies of `probe` (static $k$). Derivation: each copy's cotangent flows
    back into the one input, $∂L/∂probe = Σ_j ∂L/∂copy_j$, so several ghost
    primitives reading one probe report the *sum* of their squared norms — one
    layer's parameters being several matrices. Residuals: none."""
    return tuple(probe for _ in range(k))


def _fan_out_save(probe, k, y):
    return ()


def _fan_out_backward(k, residuals, g):
    return (sum(g[1:], g[0]),)


_fan_out = primitive(_fan_out, _fan_out_backward, save=_fan_out_save, static=("k",),
                     name="fan_out", register=False)


def fan_out(probe: jax.Array, k: int) -> tuple:
    """$k$ copies of one layer's probe for the $k$ ghost primitives that hold its
    parameters; their squared norms add up in the probe's cotangent (see `_fan_out`).
    A layer made of several weight matrices reads its probe once, through this."""
    return _fan_out.manual(probe, k)


def ghost_multi_head_attention(
    x_q: jax.Array, x_kv: jax.Array, wq: jax.Array, wk: jax.Array, wv: jax.Array,
    wo: jax.Array, probe: jax.Array, num_heads: int, mask: jax.Array | None = None,
    causal: bool = False, *, bq: jax.Array | None = None, bk: jax.Array | None = None,
    bv: jax.Array | None = None, bo: jax.Array | None = None,
) -> jax.Array:
    r"""Multi-head attention (`fdl.ops.multi_head_attention`, the same output) whose
    backward returns, as the probe's cotangent, each example's squared gradient norm
    over all four projections and their biases.

    Shapes: $X_q ∈ ℝ^{N×T×d_q}$, $X_kv ∈ ℝ^{N×S×d_kv}$, the weights and biases as
    in `multi_head_attention`, `probe` $∈ ℝ^N$; output $N×T×d_out$.

    Derivation. The attention core has no parameters; the parameters sit in four
    affine maps applied at every position of the example's sequence:
    $Q = X_q W_q + b_q$, $K = X_kv W_k + b_k$, $V = X_kv W_v + b_v$,
    $Y = H W_o + b_o$ ($H$ the merged heads). For each, with $Gᵢ$ the cotangent of
    its output rows of example $i$, the sequence Gram form gives

    $$ ‖∂ℓᵢ/∂W‖²_F = ⟨Xᵢ Xᵢᵀ, Gᵢ Gᵢᵀ⟩_F,   ‖∂ℓᵢ/∂b‖² = ‖Gᵢᵀ 1‖² $$

    (`ghost_linear`, or its direct form when cheaper). The squared norm over all
    parameters is the sum over the four maps, so the probe is fanned out to the four
    ghost projections and their cotangents add up. The remaining cotangents are
    those of `linear` and `attention`, exactly as in `multi_head_attention`.
    """
    _mha_validate(x_q, x_kv, wq, wk, wv, wo, num_heads, mask, causal, bq, bk, bv, bo)
    _probe_check("ghost_multi_head_attention", probe, jnp.shape(x_q)[0],
                 tuple(jnp.shape(x_q)))

    def project(x: jax.Array, w: jax.Array, b: jax.Array | None, p: jax.Array) -> jax.Array:
        if b is None:
            return _ghost_projection(x, w, _zeros_bias(w), p)
        return ghost_linear(x, w, b, p)

    pq, pk, pv, po = fan_out(probe, 4)
    q, k, val = project(x_q, wq, bq, pq), project(x_kv, wk, bk, pk), project(x_kv, wv, bv, pv)
    if mask is not None and mask.ndim >= 2:  # …×T×S → …×1×T×S, shared across heads
        mask = jnp.expand_dims(mask, -3)
    heads = attention(_split_heads(q, num_heads), _split_heads(k, num_heads),
                      _split_heads(val, num_heads), mask, causal)
    return project(_merge_heads(heads), wo, bo, po)


# --------------------------------------------------------------------------- #
# Recurrent layers: weights shared over the steps, per-step sums
# --------------------------------------------------------------------------- #


def _hidden(state: Any) -> Any:
    return state[0] if isinstance(state, (tuple, list)) else state


def _with_hidden(state: Any, h: jax.Array) -> Any:
    """`state` with its hidden part (the state, or $h$ of a pair $(h, c)$) replaced."""
    if isinstance(state, (tuple, list)):
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state),
                                            [h, *jax.tree_util.tree_leaves(state)[1:]])
    return h


def _cell_residuals(cell: Primitive, res: tuple, wx: jax.Array, wh: jax.Array) -> tuple:
    """A cell's residuals split into the per-step part and the weights, which are
    kept once instead of once per step. The cells save $(x, state, W_x, W_h, …)$."""
    if len(res) < 4 or res[2] is not wx or res[3] is not wh:
        raise RuntimeError(f"{cell.name}'s residuals no longer start (x, state, wx, wh, …); "
                           "fdl.ops.ghost's recurrent rule must be updated to match")
    return res[:2], res[4:]


def _ghost_sequence(cell: Primitive, sequence: Callable, name: str, n_bias: int,
                    doc: str) -> Callable:
    """A ghost sequence layer `(xs, state0, wx, wh, *biases, probe, reverse) -> (hs, final)`
    over `cell` (whose backward returns `(dx, dstate, dW_x, dW_h, *dbiases)`)."""
    bias_names = ("b",) if n_bias == 1 else ("bx", "bh")
    P = inspect.Parameter
    signature = inspect.Signature(
        [P(a, P.POSITIONAL_OR_KEYWORD) for a in ("xs", "state0", "wx", "wh", *bias_names,
                                                 "probe")]
        + [P("reverse", P.POSITIONAL_OR_KEYWORD, default=False)])

    def forward(xs, state0, wx, wh, *rest):
        *biases, _, reverse = rest
        return sequence(xs, state0, wx, wh, *biases, reverse=reverse)

    def fwd(xs, state0, wx, wh, *rest):
        *biases, probe, reverse = rest

        def step(state, x_t):
            new, res = cell.forward_with_residuals(x_t, state, wx, wh, *biases)
            return new, (_hidden(new), _cell_residuals(cell, res, wx, wh))

        final, (hs, per_step) = lax.scan(step, state0, jnp.moveaxis(xs, 1, 0), reverse=reverse)
        return (jnp.moveaxis(hs, 0, 1), final), (per_step, wx, wh, probe)

    def backward(reverse, residuals, g):
        (head, tail), wx, wh, probe = residuals
        g_hs, g_final = g
        axes = (tuple(0 for _ in head) + (None, None) + tuple(0 for _ in tail), 0)
        one_example = jax.vmap(lambda res, gt: cell.backward(res, gt), in_axes=axes)

        def back_step(carry, inputs):
            (head_t, tail_t), g_t = inputs
            g_state = _with_hidden(carry, _hidden(carry) + g_t)
            _, d_state, _, _, *d_bias = one_example((*head_t, wx, wh, *tail_t), g_state)
            return d_state, tuple(d_bias)  # per example, a bias cotangent is ∂ℓᵢ/∂A

        d_state0, d_pre = lax.scan(back_step, g_final,
                                   ((head, tail), jnp.moveaxis(g_hs, 1, 0)),
                                   reverse=not reverse)
        x_tm, h_tm = head[0], _hidden(head[1])            # T×N×D, T×N×H (state before step)
        da_x, da_h = d_pre[0], d_pre[-1]                  # T×N×kH
        d_xs = jnp.moveaxis(jnp.matmul(da_x, wx.T), 0, 1)  # ∂L/∂X = ∂L/∂A W_xᵀ, N×T×D
        d_wx = jnp.einsum("tnd,tnk->dk", x_tm, da_x)     # Σ_t X_tᵀ ∂L/∂A_t
        d_wh = jnp.einsum("tnh,tnk->hk", h_tm, da_h)
        d_biases = tuple(jnp.sum(d, axis=(0, 1)) for d in d_pre)

        def per_example(a):
            return jnp.moveaxis(a, 0, 1)
        sq = (weight_sq_norms(per_example(x_tm), per_example(da_x))
              + weight_sq_norms(per_example(h_tm), per_example(da_h))
              + sum(bias_sq_norms(per_example(d)) for d in d_pre))
        return (d_xs, d_state0, d_wx, d_wh, *d_biases, sq.astype(probe.dtype))

    def validate(xs, state0, wx, wh, *rest):
        *biases, probe, reverse = rest
        jax.eval_shape(lambda: sequence(xs, state0, wx, wh, *biases, reverse=reverse))
        v.ndim_exactly(name, "xs", xs, 3, "N×T×D, batch-first, axis 0 indexing the examples")
        _probe_check(name, probe, jnp.shape(xs)[0], tuple(jnp.shape(xs)))

    return _unregistered(forward, backward, fwd, ("reverse",), validate, name, signature, doc)


_RECURRENT_DOC = r"""{what} over a sequence (`fdl.ops.{op}`, the same `(hs, final)`) whose
backward also returns, as the probe's cotangent, each example's squared gradient
norm over {params}.

Shapes: `xs` $∈ ℝ^{{N×T×D}}$ (batch-first; axis 0 indexes the examples),
`state0` as for `{op}`, $W_x ∈ ℝ^{{D×kH}}$, $W_h ∈ ℝ^{{H×kH}}$, biases $ℝ^{{kH}}$
($k = {k}$ stacked gates), `probe` $∈ ℝ^N$; `reverse` static.

Derivation (per-step sums). Every step applies the same weights through the
pre-activation{pre}; by the chain rule through time example $i$'s gradient is the
sum of its steps' terms,

$$ ∂ℓᵢ/∂W_x = Σ_t x_{{it}}ᵀ δ_{{it}} = Xᵢᵀ Δᵢ, \qquad ∂ℓᵢ/∂b = Δᵢᵀ 1_T, $$

$$ ∂ℓᵢ/∂W_h = Σ_t h_{{i,t−1}}ᵀ δ'_{{it}} = H⁻ᵢᵀ Δ'ᵢ, $$

with $Δᵢ ∈ ℝ^{{T×kH}}$ the steps' pre-activation cotangents $δ_{{it}} = ∂ℓᵢ/∂A_{{it}}$
($Δ'$ those of the hidden-side pre-activation, the same $Δ$ except for the GRU's
$U$), $Xᵢ ∈ ℝ^{{T×D}}$ the inputs and $H⁻ᵢ ∈ ℝ^{{T×H}}$ the states entering each
step. Each is a weight used at $T$ positions, so `weight_sq_norms` (Gram or
direct form) gives $‖·‖²_F$ without a $D×kH$ matrix per example.

The backward runs the cell's own hand-written rule (`{cell}`) once per step in
reverse time, mapped over the examples (`vmap`): for one example's row its bias
cotangent *is* $δ_{{it}}$, which the scan collects; the state cotangent is threaded
back as in BPTT. The weight gradients are then one product over all steps,
$∂L/∂W_x = Σ_{{t,i}} x_{{it}}ᵀ δ_{{it}}$, and $∂L/∂xs = Δ W_xᵀ$.

Residuals: the cell's per step (its weights once) and the probe.
"""

ghost_rnn = _ghost_sequence(rnn_cell, rnn, "ghost_rnn", 1, _RECURRENT_DOC.format(
    what="Elman RNN", op="rnn", params="$W_x, W_h, b$", k=1, cell="rnn_cell",
    pre=" $A_t = x_t W_x + h_{t−1} W_h + b$"))
ghost_lstm = _ghost_sequence(lstm_cell, lstm, "ghost_lstm", 1, _RECURRENT_DOC.format(
    what="LSTM", op="lstm", params="$W_x, W_h, b$", k=4, cell="lstm_cell",
    pre=" $Z_t = x_t W_x + h_{t−1} W_h + b$ (the four gates)"))
ghost_gru = _ghost_sequence(gru_cell, gru, "ghost_gru", 2, _RECURRENT_DOC.format(
    what="GRU (reset-after)", op="gru", params="$W_x, W_h, b_x, b_h$", k=3, cell="gru_cell",
    pre="s $A_t = x_t W_x + b_x$ (cotangent $Δ$, also $b_x$'s) and "
        "$U_t = h_{t−1} W_h + b_h$ (cotangent $Δ'$, also $b_h$'s)"))
