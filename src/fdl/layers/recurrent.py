"""Recurrent layers over sequences: `RNN`, `LSTM`, `GRU`.

Thin `Layer` wrappers over `fdl.ops.recurrent` (a
`lax.scan` of a cell primitive; backpropagation through time composes the
cell's hand-written rule). Batch-first: `x ∈ ℝ^{N×T×D}`, `input_shape = (T, D)`.
Output: every step's hidden state `N×T×H` (`return_sequences=True`, the
default) or the last one, `N×H`. The initial state is zero unless `apply` is
given `initial_state=` (an extension of the protocol; combinators never pass
it): `N×H`, or the pair `(h, c)` for the LSTM.

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
from fdl.layers.base import PROBE, Layer, Shape, has_probe
from fdl.layers.initializers import Initializer, get_initializer

__all__ = ["GRU", "LSTM", "RNN"]


def _sequence_layer(name: str, hidden: int, gates: int, bias_names: tuple[str, ...],
                    run: Callable, zero_state: Callable, *, return_sequences: bool,
                    reverse: bool, w_init: Any, h_init: Any, bias: Callable,
                    dtype: Any) -> Layer:
    fn = name
    v.positive_int(fn, "hidden", hidden)
    v.flag(fn, "return_sequences", return_sequences)
    v.flag(fn, "reverse", reverse)
    w_init, h_init = get_initializer(w_init), get_initializer(h_init)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict, dict]:
        t, d = v.input_shape(fn, input_shape, "(T, D) (steps, features)", rank=2)
        kx, kh = jax.random.split(key)
        params = {"wx": w_init(kx, (d, gates * hidden), dtype),
                  "wh": h_init(kh, (hidden, gates * hidden), dtype)}
        params.update({n: bias(n, dtype) for n in bias_names})
        return ((t, hidden) if return_sequences else (hidden,)), params, {}

    def apply(params: dict, state: dict, x: jax.Array, *, key: jax.Array | None = None,
              train: bool = False, initial_state: Any = None) -> tuple[jax.Array, dict]:
        d = params["wx"].shape[0]
        if jnp.ndim(x) < 3 or jnp.shape(x)[-1] != d:
            raise ValueError(
                f"{fn}: input has shape {tuple(jnp.shape(x))} but the layer was built for "
                f"{d} features; expected (batch, T, {d}), batch-first — check the "
                "input_shape passed to init")
        if initial_state is None:
            initial_state = zero_state(jnp.zeros(x.shape[:-2] + (hidden,), params["wh"].dtype))
        if has_probe(params):  # per-example gradient norms asked for (fdl.privacy)
            ghost_run = {"RNN": ghost.ghost_rnn, "LSTM": ghost.ghost_lstm, "GRU": ghost.ghost_gru}
            hs, final = ghost_run[name](x, initial_state, params["wx"], params["wh"],
                                        *(params[n] for n in bias_names), params[PROBE],
                                        reverse=reverse)
        else:
            hs, final = run(x, initial_state, params, reverse=reverse)
        if return_sequences:
            return hs, state
        return (final[0] if isinstance(final, (tuple, list)) else final), state

    return Layer(init, apply, name.lower())


def _zero_bias(hidden: int, gates: int) -> Callable:
    return lambda name, dtype: jnp.zeros((gates * hidden,), dtype)


def RNN(hidden: int, *, return_sequences: bool = True, reverse: bool = False,
        w_init: str | Initializer = "glorot_uniform", h_init: str | Initializer = "orthogonal",
        dtype: Any = jnp.float32) -> Layer:
    """Elman RNN over a sequence, `h_t = tanh(x_t W_x + h_{t−1} W_h + b)`
    (`fdl.ops.rnn`). Params `wx (D, H)`, `wh (H, H)`, `b (H,)`."""
    return _sequence_layer(
        "RNN", hidden, 1, ("b",),
        lambda x, h0, p, reverse: ops.rnn(x, h0, p["wx"], p["wh"], p["b"], reverse=reverse),
        lambda zeros: zeros, return_sequences=return_sequences, reverse=reverse,
        w_init=w_init, h_init=h_init, bias=_zero_bias(hidden, 1), dtype=dtype)


def LSTM(hidden: int, *, return_sequences: bool = True, reverse: bool = False,
         forget_bias: float = 1.0, w_init: str | Initializer = "glorot_uniform",
         h_init: str | Initializer = "orthogonal", dtype: Any = jnp.float32) -> Layer:
    """LSTM over a sequence (`fdl.ops.lstm`; gates `i, f, g, o` stacked).

    Params `wx (D, 4H)`, `wh (H, 4H)`, `b (4H,)` with the forget-gate slice
    `b[H:2H]` initialised to `forget_bias`. `initial_state` is a pair `(h, c)`;
    the last output is the final `h`.
    """
    v.finite_number("LSTM", "forget_bias", forget_bias)

    def bias(name: str, dtype: Any) -> jax.Array:
        return jnp.zeros((4 * hidden,), dtype).at[hidden:2 * hidden].set(forget_bias)

    return _sequence_layer(
        "LSTM", hidden, 4, ("b",),
        lambda x, s0, p, reverse: ops.lstm(x, s0, p["wx"], p["wh"], p["b"], reverse=reverse),
        lambda zeros: (zeros, zeros), return_sequences=return_sequences, reverse=reverse,
        w_init=w_init, h_init=h_init, bias=bias, dtype=dtype)


def GRU(hidden: int, *, return_sequences: bool = True, reverse: bool = False,
        w_init: str | Initializer = "glorot_uniform", h_init: str | Initializer = "orthogonal",
        dtype: Any = jnp.float32) -> Layer:
    """GRU over a sequence (`fdl.ops.gru`: the reset-after variant of PyTorch and
    cuDNN; gates `r, z, n` stacked). Params `wx (D, 3H)`, `wh (H, 3H)`,
    `bx (3H,)`, `bh (3H,)`."""
    return _sequence_layer(
        "GRU", hidden, 3, ("bx", "bh"),
        lambda x, h0, p, reverse: ops.gru(x, h0, p["wx"], p["wh"], p["bx"], p["bh"],
                                          reverse=reverse),
        lambda zeros: zeros, return_sequences=return_sequences, reverse=reverse,
        w_init=w_init, h_init=h_init, bias=_zero_bias(hidden, 3), dtype=dtype)
