"""Recurrent layers over sequences: `RNN`, `LSTM`, `GRU`.

Thin `Layer` wrappers over `fdl.ops.recurrent`: `RNN` and `GRU` run a
`lax.scan` of a cell primitive (backpropagation through time composes the cell's
hand-written rule); `LSTM` runs `fdl.ops.lstm`, a primitive for the whole sequence
whose hand-written rule is backpropagation through time itself (the weight
gradients as single products over all steps). Batch-first: `x ∈ ℝ^{N×T×D}`, `input_shape = (T, D)`.
Output: every step's hidden state `N×T×H` (`return_sequences=True`, the
default) or the last one, `N×H`. The initial state is zero unless `apply` is
given `initial_state=` (an extension of the protocol; combinators never pass
it): `N×H`, or the pair `(h, c)` for the LSTM.

Variable length: `apply(..., lengths=ℓ)` (int `N`, each in `[1, T]`): steps `t ≥ ℓ`
change no state, receive no gradient and output zero; the final state is each
sequence's own at step `ℓ − 1`, and a reversed direction starts from each sequence's
own last step (as PyTorch's packed sequences do).

Stacks and directions, laid out as PyTorch's `nn.RNN/LSTM/GRU(batch_first=True)`:
`num_layers` cells on top of each other, `dropout` between them in training (not
after the last), `bidirectional=True` a second, reversed cell per layer whose outputs
are concatenated after the forward ones (`N×T×2H`, forward in `[..., :H]`). With
one layer and one direction the params are one cell's (`wx`, `wh`, biases); otherwise
they are keyed by PyTorch's suffixes, `l0`, `l0_reverse`, `l1`, … (each one cell's;
layer `i > 0` reads `dirs·H` features). `return_state=True` outputs `(y, h_n)` (LSTM:
`(y, (h_n, c_n))`) with `h_n ∈ ℝ^{(num_layers·dirs)×N×H}` ordered as PyTorch's
(`l0`, `l0_reverse`, `l1`, …), and `initial_state` then takes that layout too. For
`return_sequences=False` the output is the last layer's final `h` of each direction,
concatenated (PyTorch's `h_n[-dirs:]`).

Initialisation (Keras' defaults): input kernel `wx` Glorot-uniform, recurrent
kernel `wh` orthogonal (norm-preserving, so the backward signal through many
steps neither explodes nor vanishes at the start), biases zero except the LSTM's
forget gate, which starts at `forget_bias = 1` so the memory is kept early in
training (Jozefowicz, Zaremba & Sutskever, "An Empirical Exploration of
Recurrent Network Architectures", 2015).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl import ops
from fdl.ops import ghost
from fdl.layers.base import PROBE, Layer, Shape, has_probe, split_key
from fdl.layers.initializers import Initializer, get_initializer
from fdl.ops.sequence import check_lengths

__all__ = ["GRU", "LSTM", "RNN"]


def _direction_keys(num_layers: int, bidirectional: bool) -> list[list[str]]:
    """Param keys per layer and direction, PyTorch's suffixes: `l0`, `l0_reverse`, …"""
    return [[f"l{i}"] + ([f"l{i}_reverse"] if bidirectional else []) for i in range(num_layers)]


def _sequence_layer(name: str, hidden: int, gates: int, bias_names: tuple[str, ...],
                    run: Callable, zero_state: Callable, *, return_sequences: bool,
                    reverse: bool, w_init: Any, h_init: Any, bias: Callable,
                    dtype: Any, num_layers: int = 1, bidirectional: bool = False,
                    dropout: float = 0.0, return_state: bool = False) -> Layer:
    fn = name
    v.positive_int(fn, "hidden", hidden)
    v.flag(fn, "return_sequences", return_sequences)
    v.flag(fn, "reverse", reverse)
    v.positive_int(fn, "num_layers", num_layers)
    v.flag(fn, "bidirectional", bidirectional)
    v.fraction(fn, "dropout", dropout, meaning="the drop probability between layers")
    v.flag(fn, "return_state", return_state)
    w_init, h_init = get_initializer(w_init), get_initializer(h_init)
    simple = num_layers == 1 and not bidirectional  # one cell: flat params, as before
    keys = _direction_keys(num_layers, bidirectional)
    dirs = 2 if bidirectional else 1
    is_pair = name == "LSTM"

    def cell_params(key: jax.Array, d: int) -> dict:
        kx, kh = jax.random.split(key)
        params = {"wx": w_init(kx, (d, gates * hidden), dtype),
                  "wh": h_init(kh, (hidden, gates * hidden), dtype)}
        params.update({n: bias(n, dtype) for n in bias_names})
        return params

    def init(key: jax.Array, input_shape: Shape) -> tuple[Any, dict, dict]:
        t, d = v.input_shape(fn, input_shape, "(T, D) (steps, features)", rank=2)
        if simple:
            params = cell_params(key, d)
        else:
            subkeys = iter(jax.random.split(key, num_layers * dirs))
            params = {k: cell_params(next(subkeys), d if i == 0 else dirs * hidden)
                      for i, layer in enumerate(keys) for k in layer}
        out = (t, dirs * hidden) if return_sequences else (dirs * hidden,)
        if return_state:
            state_shape = (num_layers * dirs, hidden)
            out = (out, (state_shape, state_shape) if is_pair else state_shape)
        return out, params, {}

    def initial(initial_state: Any, x: jax.Array, dtype_: Any) -> list:
        """One initial state per (layer, direction), in PyTorch's order."""
        n = num_layers * dirs
        if initial_state is None:
            return [zero_state(jnp.zeros(x.shape[:-2] + (hidden,), dtype_))] * n
        if simple:
            return [initial_state]
        # PyTorch's layout: (num_layers·dirs, N, H), or a pair of them for the LSTM
        parts = initial_state if is_pair else (initial_state,)
        for a in parts:
            if jnp.shape(a) != (n,) + x.shape[:-2] + (hidden,):
                raise ValueError(f"{fn}: initial_state must have shape (num_layers·directions, "
                                 f"N, H) = {(n,) + x.shape[:-2] + (hidden,)} (PyTorch's "
                                 f"layout), got {tuple(jnp.shape(a))}")
        return [tuple(a[i] for a in parts) if is_pair else parts[0][i] for i in range(n)]

    def apply(params: dict, state: dict, x: jax.Array, *, key: jax.Array | None = None,
              train: bool = False, initial_state: Any = None,
              lengths: jax.Array | None = None) -> tuple[Any, dict]:
        d = (params if simple else params["l0"])["wx"].shape[0]
        if jnp.ndim(x) < 3 or jnp.shape(x)[-1] != d:
            raise ValueError(
                f"{fn}: input has shape {tuple(jnp.shape(x))} but the layer was built for "
                f"{d} features; expected (batch, T, {d}), batch-first — check the "
                "input_shape passed to init")
        check_lengths(fn, lengths, tuple(x.shape[:-2]), x.shape[-2])
        if train and dropout > 0 and num_layers > 1 and key is None:
            raise ValueError(f"{fn}: train=True with dropout between layers needs a PRNG key; "
                             "call apply(params, state, x, key=jax.random.key(0), train=True)")
        starts = iter(initial(initial_state, x, (params if simple else params["l0"])["wh"].dtype))
        if has_probe(params):  # a probe: per-example gradient norms asked for
            if lengths is not None:
                raise ValueError(f"{fn}: per-example gradient norms (fdl.privacy) are not "
                                 "available with lengths=; pad-free batches only")
            ghost_run = {"RNN": ghost.ghost_rnn, "LSTM": ghost.ghost_lstm, "GRU": ghost.ghost_gru}
            hs, final = ghost_run[name](x, next(starts), params["wx"], params["wh"],
                                        *(params[n] for n in bias_names), params[PROBE],
                                        reverse=reverse)
            finals = [final]
        else:
            drop_keys = split_key(key, num_layers)
            finals, hs = [], x
            for i, layer in enumerate(keys):
                if i and train and dropout > 0:  # between layers, never after the last
                    hs = ops.dropout(hs, drop_keys[i], dropout)
                outs = []
                for j, k in enumerate(layer):
                    out, final = run(hs, next(starts), params if simple else params[k],
                                     reverse=reverse != (j == 1), lengths=lengths)
                    outs.append(out)
                    finals.append(final)
                hs = outs[0] if dirs == 1 else jnp.concatenate(outs, axis=-1)
        if return_sequences:
            y = hs
        else:  # the last layer's final h, both directions as PyTorch's h_n[-dirs:]
            last = [f[0] if is_pair else f for f in finals[-dirs:]]
            y = last[0] if dirs == 1 else jnp.concatenate(last, axis=-1)
        if return_state:
            if is_pair:
                states = (jnp.stack([f[0] for f in finals]), jnp.stack([f[1] for f in finals]))
            else:
                states = jnp.stack(finals)
            y = (y, states)
        return y, state

    return Layer(init, apply, name.lower())


def _zero_bias(hidden: int, gates: int) -> Callable:
    return lambda name, dtype: jnp.zeros((gates * hidden,), dtype)


def RNN(hidden: int, *, return_sequences: bool = True, reverse: bool = False,
        num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
        return_state: bool = False, w_init: str | Initializer = "glorot_uniform",
        h_init: str | Initializer = "orthogonal",
        dtype: Any = jnp.float32) -> Layer:
    """Elman RNN over a sequence, `h_t = tanh(x_t W_x + h_{t−1} W_h + b)`
    (`fdl.ops.rnn`). Params `wx (D, H)`, `wh (H, H)`, `b (H,)`."""
    return _sequence_layer(
        "RNN", hidden, 1, ("b",),
        lambda x, h0, p, reverse, lengths: ops.rnn(x, h0, p["wx"], p["wh"], p["b"],
                                                   reverse=reverse, lengths=lengths),
        lambda zeros: zeros, return_sequences=return_sequences, reverse=reverse,
        w_init=w_init, h_init=h_init, bias=_zero_bias(hidden, 1), dtype=dtype,
        num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
        return_state=return_state)


def LSTM(hidden: int, *, return_sequences: bool = True, reverse: bool = False,
         num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
         return_state: bool = False, forget_bias: float = 1.0,
         w_init: str | Initializer = "glorot_uniform",
         h_init: str | Initializer = "orthogonal", dtype: Any = jnp.float32) -> Layer:
    """LSTM over a sequence (`fdl.ops.lstm`, one primitive per layer and direction;
    gates `i, f, g, o` stacked).

    Params `wx (D, 4H)`, `wh (H, 4H)`, `b (4H,)` with the forget-gate slice
    `b[H:2H]` initialised to `forget_bias`. `initial_state` is a pair `(h, c)`;
    the last output is the final `h`.
    """
    v.finite_number("LSTM", "forget_bias", forget_bias)

    def bias(name: str, dtype: Any) -> jax.Array:
        return jnp.zeros((4 * hidden,), dtype).at[hidden:2 * hidden].set(forget_bias)

    return _sequence_layer(
        "LSTM", hidden, 4, ("b",),
        lambda x, s0, p, reverse, lengths: ops.lstm(x, s0, p["wx"], p["wh"], p["b"],
                                                    reverse=reverse, lengths=lengths),
        lambda zeros: (zeros, zeros), return_sequences=return_sequences, reverse=reverse,
        w_init=w_init, h_init=h_init, bias=bias, dtype=dtype,
        num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
        return_state=return_state)


def GRU(hidden: int, *, return_sequences: bool = True, reverse: bool = False,
        num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
        return_state: bool = False, w_init: str | Initializer = "glorot_uniform",
        h_init: str | Initializer = "orthogonal",
        dtype: Any = jnp.float32) -> Layer:
    """GRU over a sequence (`fdl.ops.gru`: the reset-after variant of PyTorch and
    cuDNN; gates `r, z, n` stacked). Params `wx (D, 3H)`, `wh (H, 3H)`,
    `bx (3H,)`, `bh (3H,)`."""
    return _sequence_layer(
        "GRU", hidden, 3, ("bx", "bh"),
        lambda x, h0, p, reverse, lengths: ops.gru(x, h0, p["wx"], p["wh"], p["bx"], p["bh"],
                                                   reverse=reverse, lengths=lengths),
        lambda zeros: zeros, return_sequences=return_sequences, reverse=reverse,
        w_init=w_init, h_init=h_init, bias=_zero_bias(hidden, 3), dtype=dtype,
        num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
        return_state=return_state)
