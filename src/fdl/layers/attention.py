"""Attention layers: `MultiHeadAttention` and `LuongAttention`.

Thin `Layer` wrappers over `fdl.ops.attention`, whose
primitives carry the derivations. Batch-first: `x ∈ ℝ^{N×T×d}`; shapes given to
`init` exclude the batch axis. Masks are boolean, `True` = attend, and are
passed to `apply` as the keyword `mask` (an extension of the protocol:
combinators never pass it; use `causal=True` for decoder self-attention inside
`serial`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl import ops
from fdl.ops import ghost
from fdl.layers.base import PROBE, Layer, Shape, has_probe
from fdl.layers.initializers import Initializer, get_initializer

__all__ = ["LuongAttention", "MultiHeadAttention"]


def _check_features(fn: str, name: str, x: Any, expected: int, shape_hint: str) -> None:
    if jnp.ndim(x) < 2 or jnp.shape(x)[-1] != expected:
        raise ValueError(
            f"{fn}: {name} has shape {tuple(jnp.shape(x))} but the layer was built for "
            f"{expected} features; expected (batch, {shape_hint}) — check the input_shape "
            "passed to init")


def MultiHeadAttention(num_heads: int, features: int | None = None,
                       out_features: int | None = None, *, causal: bool = False,
                       use_bias: bool = True, w_init: str | Initializer = "glorot_uniform",
                       b_init: str | Initializer = "zeros", dtype: Any = jnp.float32) -> Layer:
    """Multi-head attention (`fdl.ops.multi_head_attention`).

    Self-attention: `input_shape = (T, d)`, `x ∈ ℝ^{N×T×d}`. Cross-attention:
    `input_shape = ((T, d_q), (S, d_kv))` and `x = (x_q, x_kv)`. Output
    `N×T×out_features`.

    Args:
      num_heads: number of heads `h`; must divide `features`.
      features: projected size `D` of queries, keys and values (all heads
        together; `D/h` per head). Default: `d_q`.
      out_features: size of the output projection. Default: `d_q`.
      causal: query `t` sees keys `s ≤ t` only (decoder self-attention).
      use_bias: biases on the four projections.

    Params: `wq (d_q, D)`, `wk (d_kv, D)`, `wv (d_kv, D)`, `wo (D, out)` and,
    with `use_bias`, `bq`, `bk`, `bv` (`D`), `bo` (`out`). `apply`
    takes `mask=` (boolean, broadcast to `N×T×S`; a padding mask is `N×1×S`) and/or
    `lengths=` (int `N`: the queries' lengths, and the keys' too when `S = T`) and
    `kv_lengths=` (the keys'); a padded query's output is zero.
    """
    fn = "MultiHeadAttention"
    v.positive_int(fn, "num_heads", num_heads)
    v.positive_int(fn, "features", features, optional=True)
    v.positive_int(fn, "out_features", out_features, optional=True)
    v.flag(fn, "causal", causal)
    w_init, b_init = get_initializer(w_init), get_initializer(b_init)

    def init(key: jax.Array, input_shape: Any) -> tuple[Shape, dict, dict]:
        if v.is_shape(input_shape, 2):
            (t, d_q), d_kv = input_shape, input_shape[1]
        elif (isinstance(input_shape, (tuple, list)) and len(input_shape) == 2
              and v.is_shape(input_shape[0], 2) and v.is_shape(input_shape[1], 2)):
            (t, d_q), (_, d_kv) = input_shape
        else:
            raise ValueError(
                f"{fn}: input_shape must be (T, d) for self-attention or ((T, d_q), (S, d_kv)) "
                f"for cross-attention, without the batch axis; got {input_shape!r}")
        d = features or d_q
        out = out_features or d_q
        if d % num_heads:
            raise ValueError(f"{fn}: num_heads={num_heads} must divide features={d}"
                             + ("" if features else " (the default, d_q)"))
        keys = jax.random.split(key, 8)
        shapes = {"wq": (d_q, d), "wk": (d_kv, d), "wv": (d_kv, d), "wo": (d, out)}
        params = {n: w_init(k, s, dtype) for (n, s), k in zip(shapes.items(), keys)}
        if use_bias:
            for (n, s), k in zip(shapes.items(), keys[4:]):
                params["b" + n[1]] = b_init(k, (s[1],), dtype)
        return (t, out), params, {}

    def apply(params: dict, state: dict, x: Any, *, key: jax.Array | None = None,
              train: bool = False, mask: jax.Array | None = None,
              lengths: jax.Array | None = None,
              kv_lengths: jax.Array | None = None) -> tuple[jax.Array, dict]:
        x_q, x_kv = (x if isinstance(x, (tuple, list)) else (x, x))
        _check_features(fn, "x_q" if x_q is not x_kv else "x", x_q, params["wq"].shape[0],
                        "T, d_q")
        _check_features(fn, "x_kv", x_kv, params["wk"].shape[0], "S, d_kv")
        weights = {n: params[n] for n in ("wq", "wk", "wv", "wo")}
        biases = {n: params[n] for n in ("bq", "bk", "bv", "bo") if n in params}
        if has_probe(params):  # a probe: per-example gradient norms asked for
            if lengths is not None or kv_lengths is not None:
                raise ValueError(f"{fn}: per-example gradient norms (fdl.privacy) are not "
                                 "available with lengths=; pass a boolean mask= instead")
            y = ghost.ghost_multi_head_attention(x_q, x_kv, **weights, probe=params[PROBE],
                                                 num_heads=num_heads, mask=mask,
                                                 causal=causal, **biases)
            return y, state
        y = ops.multi_head_attention(x_q, x_kv, **weights, num_heads=num_heads, mask=mask,
                                     causal=causal, **biases, lengths=lengths,
                                     kv_lengths=kv_lengths)
        return y, state

    return Layer(init, apply, "multi_head_attention")


def LuongAttention(kind: str = "general", out_features: int | None = None, *,
                   attention_size: int | None = None, return_weights: bool = False,
                   w_init: str | Initializer = "glorot_uniform",
                   dtype: Any = jnp.float32) -> Layer:
    """Luong global attention and attentional state (`fdl.ops.luong_attention`,
    `fdl.ops.luong_attentional_state`): `h̃_t = tanh(W_c [c_t; h_t])`.

    `input_shape = ((d,), (S, d̄))` and `x = (h_t, h_bar)` with `h_t ∈ ℝ^{N×d}`
    (decoder state) and `h_bar ∈ ℝ^{N×S×d̄}` (encoder states). Output
    `h̃ ∈ ℝ^{N×out_features}`, or `(h̃, α)` with the weights `α ∈ ℝ^{N×S}` when
    `return_weights`.

    Args:
      kind: the score, `"dot"` (needs `d = d̄`), `"general"` or `"concat"`.
      out_features: size of `h̃`. Default: `d`.
      attention_size: `d_a` of the concat score. Default: `d`.

    Params (batch-first, transposes of the paper's matrices): `w_a (d, d̄)`
    (general) or `w_a (d+d̄, d_a)` and `v_a (d_a,)` (concat); `w_c (d̄+d, out)`.
    `apply` takes `mask=` (boolean `N×S`, True = real source position) and/or
    `lengths=` (int `N`, the source lengths).

    References: Luong, Pham & Manning, "Effective Approaches to Attention-based
    Neural Machine Translation", 2015.
    """
    fn = "LuongAttention"
    if kind not in ops.LUONG_SCORES:
        raise ValueError(f"{fn}: kind must be one of {tuple(ops.LUONG_SCORES)}, got {kind!r}")
    v.positive_int(fn, "out_features", out_features, optional=True)
    v.positive_int(fn, "attention_size", attention_size, optional=True)
    w_init = get_initializer(w_init)

    def init(key: jax.Array, input_shape: Any) -> tuple[Any, dict, dict]:
        ok = (isinstance(input_shape, (tuple, list)) and len(input_shape) == 2
              and v.is_shape(input_shape[0], 1) and v.is_shape(input_shape[1], 2))
        if not ok:
            raise ValueError(f"{fn}: input_shape must be ((d,), (S, d̄)) for x = (h_t, h_bar), "
                             f"without the batch axis; got {input_shape!r}")
        (d,), (s, d_bar) = input_shape
        if kind == "dot" and d != d_bar:
            raise ValueError(f"{fn}: kind='dot' needs d = d̄, got h_t size {d} and h_bar size "
                             f"{d_bar}; use kind='general' or 'concat'")
        out = out_features or d
        k_a, k_v, k_c = jax.random.split(key, 3)
        params = {}
        if kind == "general":
            params["w_a"] = w_init(k_a, (d, d_bar), dtype)
        elif kind == "concat":
            d_a = attention_size or d
            params["w_a"] = w_init(k_a, (d + d_bar, d_a), dtype)
            params["v_a"] = w_init(k_v, (d_a,), dtype)
        params["w_c"] = w_init(k_c, (d_bar + d, out), dtype)
        return (((out,), (s,)) if return_weights else (out,)), params, {}

    def apply(params: dict, state: dict, x: Any, *, key: jax.Array | None = None,
              train: bool = False, mask: jax.Array | None = None,
              lengths: jax.Array | None = None) -> tuple[Any, dict]:
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise TypeError(f"{fn}: x must be the pair (h_t, h_bar), got {type(x).__name__}")
        h_t, h_bar = x
        d = params["w_c"].shape[0] - jnp.shape(h_bar)[-1]
        if jnp.ndim(h_t) < 1 or jnp.shape(h_t)[-1] != d:
            raise ValueError(f"{fn}: h_t has shape {tuple(jnp.shape(h_t))} but the layer was "
                             f"built for d={d} (and h_bar of size {jnp.shape(h_bar)[-1]}); "
                             "check the input_shape passed to init")
        score = {"dot": (), "general": ("w_a",), "concat": ("w_a", "v_a")}[kind]
        context, weights = ops.luong_attention(h_t, h_bar, *(params[n] for n in score),
                                               kind=kind, mask=mask, lengths=lengths)
        h_tilde = ops.luong_attentional_state(context, h_t, params["w_c"])
        return ((h_tilde, weights) if return_weights else h_tilde), state

    return Layer(init, apply, "luong_attention")
