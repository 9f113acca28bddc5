r"""Transformer blocks and a decoder-only language model, composed from the primitives.

Every differentiable step is a primitive with a hand-written rule — `linear` for the
projections, `attention` per head, `layer_norm`/`rms_norm`, `gelu`/`relu`/`silu`,
`dropout`, `rope`/`sinusoidal`, `embedding` — and the rest is layout (head split and
merge, reshapes) and sums (the residual connections, whose gradient is the sum of both
paths). So a block's gradient is the chain of the primitives' rules, and
`fdl.check.model` compares it with autodiff like any other model. (One exception, said
where it happens: with `attention_dropout > 0` in training, the two matrix products
around the dropped attention weights are plain `jnp.matmul`, differentiated by JAX.)

Layout is batch-first: $X ∈ ℝ^{N×T×d}$ ($d$ = `d_model`), `input_shape = (T, d)`.

Blocks (pre-norm, the default, as in GPT-2 and PyTorch's `norm_first=True`):

$$ X ← X + Drop(MHA(Norm₁(X))), \qquad X ← X + Drop(FFN(Norm₂(X))), $$

with $FFN(H) = Drop(act(H W₁ + b₁)) W₂ + b₂$, $W₁ ∈ ℝ^{d×d_ff}$, $W₂ ∈ ℝ^{d_ff×d}$,

and post-norm (`pre_norm=False`, the original transformer):
$X ← Norm₁(X + Drop(MHA(X)))$, $X ← Norm₂(X + Drop(FFN(X)))$.

Variable length: `apply(..., lengths=ℓ)` (int $N$, each in `[1, T]`) masks keys past
each sequence's length; padded positions are zeroed on the way in (so even a NaN there
cannot reach a valid position through `0 · NaN` in `P V`) and their output is zero, so
they pass zero gradient. `mask=` (boolean, broadcast to $N×T×S$, True =
attend) may be given instead or as well.

Parameters are named after PyTorch's `nn.TransformerEncoderLayer`
(`self_attn`, `linear1`, `linear2`, `norm1`, `norm2`), laid out batch-first
($Y = XW + b$, so each weight is the transpose of torch's); `from_torch_encoder_layer`
maps a torch state dict onto a block.

References: Vaswani et al., "Attention Is All You Need", 2017; Radford et al.,
"Language Models are Unsupervised Multitask Learners", 2019 (pre-norm GPT-2); Xiong et
al., "On Layer Normalization in the Transformer Architecture", 2020; Press & Wolf,
"Using the Output Embedding to Improve Language Models", 2017 (weight tying).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v
from fdl import ops
from fdl.layers.base import PROBE, Layer, Shape, has_probe, split_key
from fdl.ops import ghost
from fdl.layers.initializers import Initializer, get_initializer, normal
from fdl.ops.sequence import check_lengths, sequence_mask

__all__ = ["ACTIVATIONS", "TransformerDecoderBlock", "TransformerEncoderBlock",
           "TransformerLM", "from_torch_decoder_layer", "from_torch_encoder_layer", "tied_logits"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": ops.gelu,
    "gelu_tanh": functools.partial(ops.gelu, approximate=True),
    "relu": ops.relu,
    "silu": ops.silu,
}
"""The feed-forward activations by name (`"gelu"` is the exact, erf form)."""

_NORMS = ("layer", "rms")


# --------------------------------------------------------------------------- #
# Pieces: norm, attention, feed-forward (private; the blocks compose them)
# --------------------------------------------------------------------------- #


def _norm_params(kind: str, d: int, dtype: Any) -> dict:
    if kind == "layer":
        return {"gamma": jnp.ones((d,), dtype), "beta": jnp.zeros((d,), dtype)}
    return {"gamma": jnp.ones((d,), dtype)}


def _norm(kind: str, eps: float, p: dict, x: jax.Array) -> jax.Array:
    if has_probe(p):  # a probe: per-example gradient norms asked for
        if kind == "layer":
            return ghost.ghost_layer_norm(x, p["gamma"], p["beta"], p[PROBE], eps)
        return ghost.ghost_rms_norm(x, p["gamma"], p[PROBE], eps)
    if kind == "layer":
        return ops.layer_norm(x, p["gamma"], p["beta"], eps)
    return ops.rms_norm(x, p["gamma"], eps)


def _attn_params(key: jax.Array, d_q: int, d_kv: int, d: int, w_init: Initializer,
                 dtype: Any) -> dict:
    kq, kk, kv, ko = jax.random.split(key, 4)
    return {"wq": w_init(kq, (d_q, d), dtype), "wk": w_init(kk, (d_kv, d), dtype),
            "wv": w_init(kv, (d_kv, d), dtype), "wo": w_init(ko, (d, d_q), dtype),
            "bq": jnp.zeros((d,), dtype), "bk": jnp.zeros((d,), dtype),
            "bv": jnp.zeros((d,), dtype), "bo": jnp.zeros((d_q,), dtype)}


def _split_heads(x: jax.Array, h: int) -> jax.Array:
    """$N×T×(h·d_h) → N×h×T×d_h$."""
    return jnp.moveaxis(x.reshape(x.shape[:-1] + (h, x.shape[-1] // h)), -2, -3)


def _merge_heads(x: jax.Array) -> jax.Array:
    """$N×h×T×d_h → N×T×(h·d_h)$."""
    x = jnp.moveaxis(x, -3, -2)
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def _attend(p: dict, x_q: jax.Array, x_kv: jax.Array, num_heads: int, mask: jax.Array | None,
            causal: bool, rope: bool, rate: float, key: jax.Array | None,
            train: bool) -> jax.Array:
    """Multi-head attention with optional RoPE on queries and keys and dropout on the
    attention weights; `mask` is $N×T×S$ (or None)."""
    probes = ghost.fan_out(p[PROBE], 4) if has_probe(p) else (None,) * 4  # a probe: ghost rules
    q = _split_heads(_dense(x_q, p["wq"], p["bq"], probes[0]), num_heads)
    k = _split_heads(_dense(x_kv, p["wk"], p["bk"], probes[1]), num_heads)
    val = _split_heads(_dense(x_kv, p["wv"], p["bv"], probes[2]), num_heads)
    if rope:
        q, k = ops.rope(q), ops.rope(k)
    mask = None if mask is None else mask[:, None]  # shared by the heads: N×1×T×S
    if train and rate > 0:
        # dropout on the weights P needs them outside the fused `attention` primitive:
        # masked softmax and dropout by their rules, the two products by JAX
        scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) / math.sqrt(q.shape[-1])
        t, s = scores.shape[-2:]
        full = jnp.tril(jnp.ones((t, s), bool)) if causal else None
        if mask is not None:
            full = jnp.broadcast_to(mask, scores.shape) if full is None else mask & full
        weights = ops.dropout(ops.masked_softmax(scores, full), key, rate)
        heads = jnp.matmul(weights, val)
    else:
        heads = ops.attention(q, k, val, mask, causal)
    return _dense(_merge_heads(heads), p["wo"], p["bo"], probes[3])


def _drop(x: jax.Array, rate: float, key: jax.Array | None, train: bool) -> jax.Array:
    return ops.dropout(x, key, rate) if train and rate > 0 else x


def _dense(x: jax.Array, w: jax.Array, b: jax.Array, probe: jax.Array | None) -> jax.Array:
    """`XW + b`; with a probe, the ghost-norm form of the same map (`ghost_linear`)."""
    return ops.linear(x, w, b) if probe is None else ops.ghost_linear(x, w, b, probe)


def _feed_forward(p: dict, x: jax.Array, act: Callable, rate: float, key: jax.Array | None,
                  train: bool) -> jax.Array:
    l1, l2 = p["linear1"], p["linear2"]
    h = act(_dense(x, l1["w"], l1["b"], l1.get(PROBE)))
    return _dense(_drop(h, rate, key, train), l2["w"], l2["b"], l2.get(PROBE))


def _ff_params(key: jax.Array, d: int, d_ff: int, w_init: Initializer, dtype: Any) -> dict:
    k1, k2 = jax.random.split(key)
    return {"linear1": {"w": w_init(k1, (d, d_ff), dtype), "b": jnp.zeros((d_ff,), dtype)},
            "linear2": {"w": w_init(k2, (d_ff, d), dtype), "b": jnp.zeros((d,), dtype)}}


def _padding_mask(lengths: jax.Array | None, mask: jax.Array | None, t: int, s: int,
                  batch: tuple, kv_lengths: jax.Array | None = None,
                  self_attention: bool = True) -> jax.Array | None:
    """The $N×T×S$ mask: keys within their length (the query's own lengths for
    self-attention, `kv_lengths` for cross-attention), queries within theirs, and `mask`."""
    out = None
    keys = lengths if self_attention else kv_lengths
    if keys is not None:
        out = jnp.broadcast_to(sequence_mask(keys, s)[..., None, :], batch + (t, s))
    if lengths is not None:
        rows = jnp.broadcast_to(sequence_mask(lengths, t)[..., :, None], batch + (t, s))
        out = rows if out is None else out & rows
    if mask is not None:
        mask = jnp.broadcast_to(mask, batch + (t, s))
        out = mask if out is None else out & mask
    return out


def _zero_padding(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    if lengths is None:
        return x
    keep = jnp.broadcast_to(sequence_mask(lengths, x.shape[-2])[..., None], x.shape)
    return jnp.where(keep, x, jnp.zeros_like(x))


def _check_config(fn: str, d_model: Any, num_heads: Any, d_ff: Any, dropout: Any,
                  attention_dropout: Any, pre_norm: Any, norm: Any, activation: Any,
                  eps: Any) -> None:
    v.positive_int(fn, "d_model", d_model)
    v.positive_int(fn, "num_heads", num_heads)
    v.positive_int(fn, "d_ff", d_ff)
    if d_model % num_heads:
        raise ValueError(f"{fn}: num_heads={num_heads} must divide d_model={d_model} "
                         f"(each head gets d_model/num_heads features)")
    v.fraction(fn, "dropout", dropout, meaning="the drop probability")
    v.fraction(fn, "attention_dropout", attention_dropout, meaning="the drop probability")
    v.flag(fn, "pre_norm", pre_norm)
    if norm not in _NORMS:
        raise ValueError(f"{fn}: norm must be one of {_NORMS}, got {norm!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be one of {tuple(ACTIVATIONS)}, "
                         f"got {activation!r}")
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)


def _check_input(fn: str, name: str, x: Any, d: int) -> None:
    if jnp.ndim(x) != 3 or jnp.shape(x)[-1] != d:
        raise ValueError(f"{fn}: {name} has shape {tuple(jnp.shape(x))} but the block was "
                         f"built for d_model={d}; expected (batch, T, {d}), batch-first — "
                         "check the input_shape passed to init")


def _needs_key(fn: str, key: Any, train: bool, rates: tuple[float, ...]) -> None:
    if train and any(r > 0 for r in rates) and key is None:
        raise ValueError(f"{fn}: train=True with dropout needs a PRNG key; call "
                         "apply(params, state, x, key=jax.random.key(0), train=True)")


# --------------------------------------------------------------------------- #
# Encoder block
# --------------------------------------------------------------------------- #


def TransformerEncoderBlock(d_model: int, num_heads: int, d_ff: int, *, dropout: float = 0.0,
                            attention_dropout: float = 0.0, pre_norm: bool = True,
                            norm: str = "layer", activation: str = "gelu",
                            causal: bool = False, rope: bool = False, eps: float = 1e-5,
                            w_init: str | Initializer = "glorot_uniform",
                            dtype: Any = jnp.float32) -> Layer:
    """A transformer encoder block: self-attention and a feed-forward network, each in
    a residual branch with a norm (see the module docstring for the equations).

    Args:
      d_model: $d$, the width of the residual stream (`input_shape = (T, d)`).
      num_heads: $h$; must divide $d$ (each head has `d/h` features).
      d_ff: the hidden width of the feed-forward network.
      dropout: drop rate on each branch's output and after the FFN's activation.
      attention_dropout: drop rate on the attention weights.
      pre_norm: norm at the start of each branch (True) or after each sum (False).
      norm: `"layer"` (`LayerNorm`) or `"rms"` (`RMSNorm`).
      activation: the FFN's activation, a name in `ACTIVATIONS`.
      causal: position $t$ attends to $s ≤ t$ only (a GPT block).
      rope: apply rotary position embeddings (`fdl.ops.rope`) to queries and keys.
      eps: the norms' $ε$.

    Params: `self_attn` (`wq, wk, wv, wo` of shape $d×d$, `bq, bk, bv, bo`),
    `linear1` (`w` $d×d_ff$, `b`), `linear2` (`w` $d_ff×d$, `b`), `norm1`, `norm2`
    (`gamma`, and `beta` for `"layer"`). `apply(params, state, x, *, key, train,
    lengths=None, mask=None)`.
    """
    fn = "TransformerEncoderBlock"
    _check_config(fn, d_model, num_heads, d_ff, dropout, attention_dropout, pre_norm, norm,
                  activation, eps)
    v.flag(fn, "causal", causal)
    v.flag(fn, "rope", rope)
    if rope and (d_model // num_heads) % 2:
        raise ValueError(f"{fn}: rope=True needs an even head size, got d_model/num_heads = "
                         f"{d_model // num_heads}")
    w_init = get_initializer(w_init)
    act = ACTIVATIONS[activation]

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict, dict]:
        t, d = v.input_shape(fn, input_shape, "(T, d_model)", rank=2)
        if d != d_model:
            raise ValueError(f"{fn}: input_shape {tuple(input_shape)} has {d} features but "
                             f"d_model={d_model}")
        ka, kf = jax.random.split(key)
        params = {"self_attn": _attn_params(ka, d, d, d, w_init, dtype),
                  **_ff_params(kf, d, d_ff, w_init, dtype),
                  "norm1": _norm_params(norm, d, dtype), "norm2": _norm_params(norm, d, dtype)}
        return (t, d), params, {}

    def apply(params: dict, state: dict, x: jax.Array, *, key: jax.Array | None = None,
              train: bool = False, lengths: jax.Array | None = None,
              mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
        _check_input(fn, "x", x, d_model)
        n, t, _ = x.shape
        check_lengths(fn, lengths, (n,), t)
        _needs_key(fn, key, train, (dropout, attention_dropout))
        m = _padding_mask(lengths, mask, t, t, (n,))
        x = _zero_padding(x, lengths)  # padding (even NaN) never meets a weight of 0 in P V
        k_att, k1, k_ff, k2 = split_key(key, 4)

        def attn(h):
            y = _attend(params["self_attn"], h, h, num_heads, m, causal, rope,
                        attention_dropout, k_att, train)
            return _drop(y, dropout, k1, train)

        def ff(h):
            return _drop(_feed_forward(params, h, act, dropout, k_ff, train), dropout, k2, train)

        nrm = functools.partial(_norm, norm, eps)
        if pre_norm:
            x = x + attn(nrm(params["norm1"], x))
            x = x + ff(nrm(params["norm2"], x))
        else:
            x = nrm(params["norm1"], x + attn(x))
            x = nrm(params["norm2"], x + ff(x))
        return _zero_padding(x, lengths), state

    return Layer(init, apply, "transformer_encoder_block")


# --------------------------------------------------------------------------- #
# Decoder block
# --------------------------------------------------------------------------- #


def TransformerDecoderBlock(d_model: int, num_heads: int, d_ff: int, *,
                            cross_attention: bool = False, dropout: float = 0.0,
                            attention_dropout: float = 0.0, pre_norm: bool = True,
                            norm: str = "layer", activation: str = "gelu", rope: bool = False,
                            eps: float = 1e-5, w_init: str | Initializer = "glorot_uniform",
                            dtype: Any = jnp.float32) -> Layer:
    """A causal transformer decoder block: causal self-attention, optional
    cross-attention over an encoder's output, and a feed-forward network, each in a
    residual branch with a norm.

    Pre-norm: $X ← X + Drop(MHA_causal(Norm₁(X)))$, then with `cross_attention`
    $X ← X + Drop(MHA(Norm₂(X), M))$ (queries from $X$, keys and values from the
    encoder output $M ∈ ℝ^{N×S×d_mem}$), then $X ← X + Drop(FFN(Norm₃(X)))$.
    Position $t$'s output depends on $X$ at steps $s ≤ t$ only (and on all of $M$).

    `input_shape = (T, d)` without cross-attention, `((T, d), (S, d_mem))` with it,
    and then `x = (x, memory)`. `apply(params, state, x, *, key, train, lengths=None,
    memory_lengths=None, mask=None)`: `lengths` masks padded target steps,
    `memory_lengths` the encoder's padded steps (keys of the cross-attention).

    Params: `self_attn`, `cross_attn` (with `cross_attention`; `wk, wv` of shape
    $d_mem×d$), `linear1`, `linear2`, `norm1`, `norm2`, `norm3` (the middle norm
    only with cross-attention). Other arguments as `TransformerEncoderBlock`.
    """
    fn = "TransformerDecoderBlock"
    _check_config(fn, d_model, num_heads, d_ff, dropout, attention_dropout, pre_norm, norm,
                  activation, eps)
    v.flag(fn, "cross_attention", cross_attention)
    v.flag(fn, "rope", rope)
    w_init = get_initializer(w_init)
    act = ACTIVATIONS[activation]

    def init(key: jax.Array, input_shape: Any) -> tuple[Shape, dict, dict]:
        if cross_attention:
            ok = (isinstance(input_shape, (tuple, list)) and len(input_shape) == 2
                  and v.is_shape(input_shape[0], 2) and v.is_shape(input_shape[1], 2))
            if not ok:
                raise ValueError(f"{fn}: with cross_attention, input_shape must be "
                                 f"((T, d_model), (S, d_mem)) for x = (x, memory), without "
                                 f"the batch axis; got {input_shape!r}")
            (t, d), (_, d_mem) = input_shape
        else:
            t, d = v.input_shape(fn, input_shape, "(T, d_model)", rank=2)
        if d != d_model:
            raise ValueError(f"{fn}: input_shape {input_shape!r} has {d} features but "
                             f"d_model={d_model}")
        ks, kc, kf = jax.random.split(key, 3)
        params = {"self_attn": _attn_params(ks, d, d, d, w_init, dtype),
                  **_ff_params(kf, d, d_ff, w_init, dtype),
                  "norm1": _norm_params(norm, d, dtype), "norm3": _norm_params(norm, d, dtype)}
        if cross_attention:
            params["cross_attn"] = _attn_params(kc, d, d_mem, d, w_init, dtype)
            params["norm2"] = _norm_params(norm, d, dtype)
        return (t, d), params, {}

    def apply(params: dict, state: dict, x: Any, *, key: jax.Array | None = None,
              train: bool = False, lengths: jax.Array | None = None,
              memory_lengths: jax.Array | None = None,
              mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
        if cross_attention:
            if not isinstance(x, (tuple, list)) or len(x) != 2:
                raise TypeError(f"{fn}: with cross_attention, x must be the pair (x, memory), "
                                f"got {type(x).__name__}")
            x, memory = x
            d_mem = params["cross_attn"]["wk"].shape[0]
            if jnp.ndim(memory) != 3 or jnp.shape(memory)[-1] != d_mem:
                raise ValueError(f"{fn}: memory has shape {tuple(jnp.shape(memory))} but the "
                                 f"block was built for (batch, S, {d_mem})")
        elif memory_lengths is not None:
            raise ValueError(f"{fn}: memory_lengths given but the block has no "
                             "cross-attention (cross_attention=False)")
        _check_input(fn, "x", x, d_model)
        n, t, _ = x.shape
        check_lengths(fn, lengths, (n,), t)
        _needs_key(fn, key, train, (dropout, attention_dropout))
        x = _zero_padding(x, lengths)  # padding (even NaN) never meets a weight of 0 in P V
        ks, k1, kc, k2, k_ff, k3 = split_key(key, 6)
        nrm = functools.partial(_norm, norm, eps)

        def self_attn(h):
            m = _padding_mask(lengths, mask, t, t, (n,))
            y = _attend(params["self_attn"], h, h, num_heads, m, True, rope,
                        attention_dropout, ks, train)
            return _drop(y, dropout, k1, train)

        def cross_attn(h):
            if jnp.shape(memory)[0] != n:
                raise ValueError(f"{fn}: x has batch {n} but memory has batch "
                                 f"{jnp.shape(memory)[0]}")
            s = memory.shape[1]
            check_lengths(fn, memory_lengths, (n,), s, "memory_lengths")
            m = _padding_mask(lengths, None, t, s, (n,), memory_lengths, self_attention=False)
            y = _attend(params["cross_attn"], h, _zero_padding(memory, memory_lengths),
                        num_heads, m, False, False, attention_dropout, kc, train)
            return _drop(y, dropout, k2, train)

        def ff(h):
            return _drop(_feed_forward(params, h, act, dropout, k_ff, train), dropout, k3, train)

        if pre_norm:
            x = x + self_attn(nrm(params["norm1"], x))
            if cross_attention:
                x = x + cross_attn(nrm(params["norm2"], x))
            x = x + ff(nrm(params["norm3"], x))
        else:
            x = nrm(params["norm1"], x + self_attn(x))
            if cross_attention:
                x = nrm(params["norm2"], x + cross_attn(x))
            x = nrm(params["norm3"], x + ff(x))
        return _zero_padding(x, lengths), state

    return Layer(init, apply, "transformer_decoder_block")


# --------------------------------------------------------------------------- #
# Weight tying and a decoder-only language model
# --------------------------------------------------------------------------- #


def tied_logits(h: jax.Array, table: jax.Array) -> jax.Array:
    r"""Output logits with the embedding table as the projection: $Z = H Eᵀ$.

    $H ∈ ℝ^{…×d}$, $E ∈ ℝ^{V×d}$ (the `Embedding` table), $Z ∈ ℝ^{…×V}$: the
    `linear` primitive with $W = Eᵀ$ and a zero bias. When $E$ also embeds the inputs,
    its gradient is the sum of both uses, $∂L/∂E = onehot(ids)ᵀ G_emb + (Hᵀ G_Z)ᵀ$
    (the scatter-add of the lookup plus the transposed $∂L/∂W = Hᵀ G_Z$ of the
    projection), which JAX's fan-in adds up.
    """
    return ops.linear(h, table.T, jnp.zeros((table.shape[0],), table.dtype))


def TransformerLM(vocab_size: int, d_model: int, num_heads: int, d_ff: int, num_layers: int,
                  *, positional: str = "rope", dropout: float = 0.0,
                  attention_dropout: float = 0.0, norm: str = "layer",
                  activation: str = "gelu", tie_embeddings: bool = True,
                  remat_blocks: bool = False, dtype: Any = jnp.float32) -> Layer:
    """A decoder-only (GPT-style) causal language model over token ids.

    `ids` (integers in $[0, V)$, $N×T$) → embedding ($N×T×d$, scaled by $√d$ when tied) →
    positions (`"rope"` inside each block's attention, or `"sinusoidal"` added once)
    → `num_layers` pre-norm causal blocks, run as one `scan_layers` (parameters stacked
    on a leading axis: one compiled block) → final norm → logits $N×T×V$
    (`tied_logits` with the embedding table when `tie_embeddings`, else a `head`
    dense layer). `input_shape = (T,)`. With `remat_blocks` each block is
    rematerialised in the backward (`remat`), trading compute for memory.

    Params: `embed` (`table` $V×d$), `blocks` (one block's params, each leaf with a
    leading axis of `num_layers`), `norm`, and `head` (`w`, `b`) when untied.
    `apply(params, state, ids, *, key, train, lengths=None)`.
    """
    from fdl.layers.combinators import remat, scan_layers

    fn = "TransformerLM"
    v.positive_int(fn, "vocab_size", vocab_size)
    v.positive_int(fn, "num_layers", num_layers)
    if positional not in ("rope", "sinusoidal"):
        raise ValueError(f"{fn}: positional must be 'rope' or 'sinusoidal', got {positional!r}")
    v.flag(fn, "tie_embeddings", tie_embeddings)
    v.flag(fn, "remat_blocks", remat_blocks)
    block = TransformerEncoderBlock(d_model, num_heads, d_ff, dropout=dropout,
                                    attention_dropout=attention_dropout, norm=norm,
                                    activation=activation, causal=True,
                                    rope=positional == "rope", dtype=dtype)
    if remat_blocks:
        block = remat(block)
    blocks = scan_layers(block, num_layers)
    scale = math.sqrt(d_model) if tie_embeddings else 1.0
    table_init = normal(1.0 / scale)
    w_init = get_initializer("glorot_uniform")

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict, dict]:
        (t,) = v.input_shape(fn, input_shape, "(T,) (token ids per sequence)", rank=1)
        ke, kb, kh = jax.random.split(key, 3)
        params = {"embed": {"table": table_init(ke, (vocab_size, d_model), dtype)}}
        _, params["blocks"], _ = blocks.init(kb, (t, d_model))
        params["norm"] = _norm_params(norm, d_model, dtype)
        if not tie_embeddings:
            params["head"] = {"w": w_init(kh, (d_model, vocab_size), dtype),
                              "b": jnp.zeros((vocab_size,), dtype)}
        return (t, vocab_size), params, {}

    def apply(params: dict, state: dict, ids: jax.Array, *, key: jax.Array | None = None,
              train: bool = False, lengths: jax.Array | None = None) -> tuple[jax.Array, dict]:
        if jnp.ndim(ids) != 2:
            raise ValueError(f"{fn}: ids must be (batch, T) integer token ids, got shape "
                             f"{tuple(jnp.shape(ids))}")
        _needs_key(fn, key, train, (dropout, attention_dropout))
        table = params["embed"]["table"]
        x = ops.embedding(ids, table)
        if scale != 1.0:
            x = x * jnp.asarray(scale, x.dtype)
        if positional == "sinusoidal":
            x = ops.sinusoidal(x)
        k_drop, k_blocks = split_key(key, 2)
        x = _drop(x, dropout, k_drop, train)
        x, _ = blocks.apply(params["blocks"], {}, x, key=k_blocks, train=train, lengths=lengths)
        x = _norm(norm, 1e-5, params["norm"], x)
        if tie_embeddings:
            return tied_logits(x, table), state
        return ops.linear(x, params["head"]["w"], params["head"]["b"]), state

    return Layer(init, apply, "transformer_lm")


# --------------------------------------------------------------------------- #
# PyTorch weights
# --------------------------------------------------------------------------- #


def from_torch_encoder_layer(state_dict: Mapping[str, Any], *, prefix: str = "",
                             dtype: Any = jnp.float32) -> dict:
    """Map a PyTorch `nn.TransformerEncoderLayer`'s weights onto one block's params.

    For `nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
    activation, norm_first=True, batch_first=True)` (bias on, the default) and
    `TransformerEncoderBlock(d_model, nhead, dim_feedforward, pre_norm=True,
    norm="layer", activation=…, eps=layer_norm_eps)`: the two compute the same function
    (likewise `norm_first=False` and `pre_norm=False`, with the same parameters).

    `state_dict` holds numpy arrays (or anything `np.asarray` reads) keyed by torch's
    names, e.g. `{k: t.detach().numpy() for k, t in layer.state_dict().items()}`;
    `prefix` is prepended to each name (e.g. `"layers.0."` inside an
    `nn.TransformerEncoder`). Torch stores $Y = X Wᵀ + b$ with $W ∈ ℝ^{out×in}$;
    fdl stores $W ∈ ℝ^{in×out}$, so every weight is transposed:

    | torch | fdl |
    | --- | --- |
    | `self_attn.in_proj_weight` $(3d, d)$ = $[W_q; W_k; W_v]$ | `self_attn.wq, wk, wv` (ᵀ) |
    | `self_attn.in_proj_bias` `(3d,)` | `self_attn.bq, bk, bv` |
    | `self_attn.out_proj.weight`, `.bias` | `self_attn.wo` (transposed), `bo` |
    | `linear1.weight` $(d_ff, d)$, `linear1.bias` | `linear1.w` $(d, d_ff)$, `linear1.b` |
    | `linear2.weight` $(d, d_ff)$, `linear2.bias` | `linear2.w` $(d_ff, d)$, `linear2.b` |
    | `norm1.weight`, `norm1.bias` (and `norm2`) | `norm1.gamma`, `norm1.beta` (and `norm2`) |

    Heads: torch splits the $d$ projected features into `nhead` consecutive blocks of
    `d/nhead`, as `fdl` does, so no permutation is needed.
    """
    return _from_torch(state_dict, prefix, dtype, "from_torch_encoder_layer",
                       {"self_attn": "self_attn"}, ("norm1", "norm2"))


def from_torch_decoder_layer(state_dict: Mapping[str, Any], *, prefix: str = "",
                             dtype: Any = jnp.float32) -> dict:
    """Map a PyTorch `nn.TransformerDecoderLayer`'s weights onto one decoder block's params.

    For `nn.TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout,
    activation, norm_first=…, batch_first=True)` and `TransformerDecoderBlock(d_model,
    nhead, dim_feedforward, cross_attention=True, pre_norm=norm_first, …)`, called with a
    causal target mask: the same function. Names as `from_torch_encoder_layer`, plus
    torch's `multihead_attn.*` (the cross-attention, keys and values from the memory of
    width $d$) as `cross_attn`, and `norm3` (torch's, before the feed-forward network) as
    `norm3`; torch's `norm2` is the norm before the cross-attention, fdl's `norm2` too.
    """
    return _from_torch(state_dict, prefix, dtype, "from_torch_decoder_layer",
                       {"self_attn": "self_attn", "multihead_attn": "cross_attn"},
                       ("norm1", "norm2", "norm3"))


def _from_torch(state_dict: Mapping[str, Any], prefix: str, dtype: Any, fn: str,
                attentions: dict[str, str], norms: tuple[str, ...]) -> dict:
    def get(name: str) -> np.ndarray:
        full = prefix + name
        if full not in state_dict:
            raise KeyError(f"{fn}: the state dict has no {full!r}; it has "
                           f"{sorted(state_dict)[:12]}")
        return np.asarray(state_dict[full])

    def arr(a: np.ndarray) -> jax.Array:
        return jnp.asarray(a, dtype)

    params = {}
    for torch_name, name in attentions.items():
        w_in, b_in = get(f"{torch_name}.in_proj_weight"), get(f"{torch_name}.in_proj_bias")
        d = w_in.shape[1]
        if w_in.shape != (3 * d, d):
            raise ValueError(f"{fn}: {torch_name}.in_proj_weight must have shape (3d, d), "
                             f"got {w_in.shape}")
        wq, wk, wv = np.split(w_in, 3, axis=0)
        bq, bk, bv = np.split(b_in, 3)
        params[name] = {"wq": arr(wq.T), "wk": arr(wk.T), "wv": arr(wv.T),
                        "wo": arr(get(f"{torch_name}.out_proj.weight").T),
                        "bq": arr(bq), "bk": arr(bk), "bv": arr(bv),
                        "bo": arr(get(f"{torch_name}.out_proj.bias"))}
    for lin in ("linear1", "linear2"):
        params[lin] = {"w": arr(get(f"{lin}.weight").T), "b": arr(get(f"{lin}.bias"))}
    for nm in norms:
        params[nm] = {"gamma": arr(get(f"{nm}.weight")), "beta": arr(get(f"{nm}.bias"))}
    return params
