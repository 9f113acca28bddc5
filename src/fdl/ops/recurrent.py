"""Recurrent cells (Elman RNN, LSTM, GRU) and backpropagation through time.

Layout is batch-first: a step's input $x ∈ ℝ^{…×D}$, hidden state $h ∈ ℝ^{…×H}$
($…$ any leading batch dimensions, the same for both), $W_x ∈ ℝ^{D×kH}$ and
$W_h ∈ ℝ^{H×kH}$ ($k$ stacked gates, one projection each), $b ∈ ℝ^{kH}$,
`XW + b` as in `linear`. Sequences are batch-first too:
$xs ∈ ℝ^{…×T×D}$, outputs $hs ∈ ℝ^{…×T×H}$ (scanned time-major inside).

Each cell is a primitive: one time step with its derivation and a hand-written
backward. A sequence is a `jax.lax.scan` of the cell (`scan_cell`);
JAX's transpose of the scan runs the cell's hand-written VJP once per step, in
reverse time, and threads $∂L/∂h_{t−1}$ (the state cotangent the cell returns)
back to the previous step: that *is* backpropagation through time, composed
from the per-step rule. The gradients of the shared weights are summed over the
steps by the scan's transpose. In `gradient_mode("autodiff")` the same scan
differentiates each cell's plain forward instead; the tests compare the two.

The LSTM over a sequence (`lstm`) is a primitive of its own: its definition is that
scan of `lstm_cell`, and its hand-written rule is BPTT for the whole sequence, with
the input projection $X W_x$ of every step as one product before the scan and the
weight gradients as single products over all steps after the backward scan (see
its docstring).

Notation in the derivations: $G = ∂L/∂(output)$, $σ' = σ(1 − σ)$,
$tanh' = 1 − tanh²$, $⊙$ element-wise; the batch is folded into $N$ for the
weight gradients: $∂L/∂W_x = Xᵀ ∂L/∂A$ where $A = X W_x + …$ is a
pre-activation, $∂L/∂b = 1ᵀ ∂L/∂A$, $∂L/∂X = ∂L/∂A W_xᵀ$.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fdl import _validate as v
from fdl.ops.activations import sigmoid
from fdl.ops.linear import linear
from fdl.ops.sequence import check_lengths, reverse_sequences, sequence_mask
from fdl.primitive import Example, gaussian, is_zero, primitive

__all__ = ["LSTMState", "gru", "gru_cell", "lstm", "lstm_cell", "rnn", "rnn_cell", "scan_cell"]


class LSTMState(NamedTuple):
    """An LSTM's recurrent state; any 2-sequence $(h, c)$ is accepted too."""

    h: jax.Array  # hidden state, …×H, the cell's output
    c: jax.Array  # memory cell, …×H


def _shape(x: Any) -> tuple:
    return tuple(jnp.shape(x))


def _fold(x: jax.Array) -> jax.Array:
    """$…×F → N×F$: the batch folded into one axis, for weight gradients."""
    return x.reshape(-1, x.shape[-1])


def _weight_grads(x: jax.Array, da: jax.Array) -> tuple[jax.Array, jax.Array]:
    """$∂L/∂W = Xᵀ ∂L/∂A$ and $∂L/∂b = 1ᵀ ∂L/∂A$ for $A = XW + b$."""
    da2 = _fold(da)
    return jnp.matmul(_fold(x).T, da2), jnp.sum(da2, axis=0)


def _cell_spec(fn: str, gates: int, what: str, *biases: str) -> v.Shapes:
    """One step's shapes: $x …×D$, $h …×H$, $wx D×gH$, $wh H×gH$, biases `gH`."""
    g = f"{gates}H" if gates > 1 else "H"
    return v.shapes(fn, x="…×D", h="…×H", wx=f"D×{g}{what}", wh=f"H×{g}{what}",
                    **{name: f"{g}{what}" for name in biases})


# --------------------------------------------------------------------------- #
# Elman RNN
# --------------------------------------------------------------------------- #


def rnn_cell(x: jax.Array, h: jax.Array, wx: jax.Array, wh: jax.Array,
             b: jax.Array) -> jax.Array:
    r"""Elman RNN step `h' = tanh(x W_x + h W_h + b)`.

    Shapes: $x ∈ ℝ^{…×D}$, $h, h' ∈ ℝ^{…×H}$, $W_x ∈ ℝ^{D×H}$ (`wx`),
    $W_h ∈ ℝ^{H×H}$ (`wh`), $b ∈ ℝ^H$.

    Derivation, with $G = ∂L/∂h'$ and the pre-activation $A = x W_x + h W_h + b$:
    $∂L/∂A = G ⊙ (1 − h'⊙h')$ (`tanh'`), then, $A$ being affine in each input,

    * $∂L/∂x = ∂L/∂A W_xᵀ$,  $∂L/∂h = ∂L/∂A W_hᵀ$ (the message to step $t−1$);
    * $∂L/∂W_x = xᵀ ∂L/∂A$,  $∂L/∂W_h = hᵀ ∂L/∂A$,  $∂L/∂b = 1ᵀ ∂L/∂A$.

    Residuals: $x, h, W_x, W_h$ and $h'$.

    References: Elman, "Finding Structure in Time", 1990.

    Tangent: $dA = dx W_x + x dW_x + dh W_h + h dW_h + db$, $dh' = (1 − h'⊙h') ⊙ dA$
    ($…×H$).
    """
    return jnp.tanh(linear.forward(x, wx, b) + jnp.matmul(h, wh))


def _rnn_save(x, h, wx, wh, b, y):
    return x, h, wx, wh, y


def _rnn_backward(residuals, g):
    x, h, wx, wh, y = residuals
    da = g * (1 - y * y)
    dwx, db = _weight_grads(x, da)
    dwh, _ = _weight_grads(h, da)
    return jnp.matmul(da, wx.T), jnp.matmul(da, wh.T), dwx, dwh, db


def _rnn_tangent(residuals, t):
    x, h, wx, wh, y = residuals
    dx, dh, dwx, dwh, db = t
    da = linear.forward(dx, wx, db) + jnp.matmul(x, dwx) + jnp.matmul(dh, wh) + jnp.matmul(h, dwh)
    return (1 - y * y) * da


rnn_cell = primitive(
    rnn_cell, _rnn_backward, save=_rnn_save, spec=_cell_spec("rnn_cell", 1, "", "b"),
    tangent=_rnn_tangent, examples=[
        Example((gaussian(3, 4), gaussian(3, 5), gaussian(4, 5, scale=0.5), gaussian(5, 5, scale=0.5),
                 gaussian(5))),
        Example((gaussian(2, 2, 3), gaussian(2, 2, 2), gaussian(3, 2), gaussian(2, 2), gaussian(2))),
    ],
)


# --------------------------------------------------------------------------- #
# LSTM
# --------------------------------------------------------------------------- #


def _like(state: Any, h: jax.Array, c: jax.Array) -> Any:
    """$(h, c)$ in the container `state` came in (tuple, list or LSTMState)."""
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), [h, c])


def _activate(z: jax.Array) -> jax.Array:
    """$[σ(Z_i), σ(Z_f), tanh(Z_g), σ(Z_o)]$ for the pre-activations $Z$ (…×4H)."""
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    sig = sigmoid.forward
    return jnp.concatenate([sig(zi), sig(zf), jnp.tanh(zg), sig(zo)], axis=-1)


def _lstm_gates(x, h, wx, wh, b):
    """Activated gates $[i, f, g, o]$ stacked on the last axis (…×4H)."""
    return _activate(linear.forward(x, wx, b) + jnp.matmul(h, wh))


def lstm_cell(x: jax.Array, state: Any, wx: jax.Array, wh: jax.Array, b: jax.Array) -> Any:
    r"""LSTM step $(h, c) → (h', c')$ with input, forget, cell and output gates.

    Shapes: $x ∈ ℝ^{…×D}$; $state = (h, c)$, $h, c ∈ ℝ^{…×H}$ (a tuple or
    `LSTMState`; the new state comes back in the same container);
    $W_x ∈ ℝ^{D×4H}$, $W_h ∈ ℝ^{H×4H}$, $b ∈ ℝ^{4H}$: the four gates' projections
    stacked in the order $i, f, g, o$ (PyTorch's order), so one product computes all.

        $Z = x W_x + h W_h + b = [Z_i, Z_f, Z_g, Z_o]$      (…×4H)
    $$ i = σ(Z_i), \qquad f = σ(Z_f), \qquad g = tanh(Z_g), \qquad o = σ(Z_o) $$
    $$ c' = f ⊙ c + i ⊙ g, \qquad h' = o ⊙ tanh(c') $$

    Derivation, with $G_h = ∂L/∂h'$ and $G_c = ∂L/∂c'$ (the memory gets
    gradient both from the next step's $c$ and through $h'$):

    * $∂L/∂c'$ (total) $= G_c + G_h ⊙ o ⊙ (1 − tanh²(c'))$;
    * output gate: $∂L/∂o = G_h ⊙ tanh(c')$, $∂L/∂Z_o = ∂L/∂o ⊙ o(1 − o)$;
    * input gate: $∂L/∂i = ∂L/∂c' ⊙ g$, $∂L/∂Z_i = ∂L/∂i ⊙ i(1 − i)$;
    * forget gate: $∂L/∂f = ∂L/∂c' ⊙ c$, $∂L/∂Z_f = ∂L/∂f ⊙ f(1 − f)$;
    * cell candidate: $∂L/∂g = ∂L/∂c' ⊙ i$, $∂L/∂Z_g = ∂L/∂g ⊙ (1 − g²)$;
    * previous memory: $∂L/∂c = ∂L/∂c' ⊙ f$ (the "constant error carousel");
    * $∂L/∂Z = [∂L/∂Z_i, ∂L/∂Z_f, ∂L/∂Z_g, ∂L/∂Z_o]$, and through the affine $Z$:
      $∂L/∂x = ∂L/∂Z W_xᵀ$, $∂L/∂h = ∂L/∂Z W_hᵀ$, $∂L/∂W_x = xᵀ ∂L/∂Z$,
      $∂L/∂W_h = hᵀ ∂L/∂Z$, $∂L/∂b = 1ᵀ ∂L/∂Z$.

    Residuals: $x, h, c, W_x, W_h$, the activated gates $[i, f, g, o]$
    (…×4H) and `tanh(c')` (…×H).

    References: Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997; Gers,
    Schmidhuber & Cummins, "Learning to Forget: Continual Prediction with LSTM",
    2000 (the forget gate).

    Tangent, the forward pass differentiated step by step:
    $dZ = dx W_x + x dW_x + dh W_h + h dW_h + db$ ($…×4H$);
    $di = i(1 − i) dZ_i$, $df = f(1 − f) dZ_f$, $dg = (1 − g²) dZ_g$, $do = o(1 − o) dZ_o$;
    $dc' = df ⊙ c + f ⊙ dc + di ⊙ g + i ⊙ dg$,
    $dh' = do ⊙ tanh(c') + o ⊙ (1 − tanh²(c')) ⊙ dc'$ ($…×H$ each, in `state`'s container).
    """
    h, c = state
    i, f, g, o = jnp.split(_lstm_gates(x, h, wx, wh, b), 4, axis=-1)
    c_new = f * c + i * g
    return _like(state, o * jnp.tanh(c_new), c_new)


def _lstm_save(x, state, wx, wh, b, y):
    _, c_new = y
    return x, state, wx, wh, _lstm_gates(x, state[0], wx, wh, b), jnp.tanh(c_new)


def _lstm_backward(residuals, g):
    x, state, wx, wh, gates, tc = residuals
    h, c = state
    gh, gc = g
    i, f, gg, o = jnp.split(gates, 4, axis=-1)
    dc_new = gc + gh * o * (1 - tc * tc)
    dz = jnp.concatenate([
        dc_new * gg * i * (1 - i),        # ∂L/∂Z_i
        dc_new * c * f * (1 - f),         # ∂L/∂Z_f
        dc_new * i * (1 - gg * gg),       # ∂L/∂Z_g
        gh * tc * o * (1 - o),            # ∂L/∂Z_o
    ], axis=-1)
    dwx, db = _weight_grads(x, dz)
    dwh, _ = _weight_grads(h, dz)
    dstate = _like(state, jnp.matmul(dz, wh.T), dc_new * f)
    return jnp.matmul(dz, wx.T), dstate, dwx, dwh, db


def _check_lstm_state(fn: str, state: Any) -> None:
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(
            f"{fn}: state must be a pair (h, c) (a tuple or LSTMState), got "
            f"{type(state).__name__}" + (f" of length {len(state)}"
                                         if isinstance(state, (tuple, list)) else "")
        )
    h, c = state
    v.floating(fn, "state.c", c)
    if _shape(c) != _shape(h):
        raise ValueError(f"{fn}: h and c in state must have the same shape, got h "
                         f"{_shape(h)} and c {_shape(c)}")
    if jnp.result_type(c) != jnp.result_type(h):
        raise TypeError(f"{fn}: h and c in state must have the same dtype, got h "
                        f"{jnp.result_type(h)} and c {jnp.result_type(c)}")


_LSTM_SPEC = _cell_spec("lstm_cell", 4, ", gates i, f, g, o", "b")


def _lstm_validate(x, state, wx, wh, b):
    _check_lstm_state("lstm_cell", state)
    _LSTM_SPEC(x=x, h=state[0], wx=wx, wh=wh, b=b)


def _pair(*shape: int, container: Callable = tuple):
    def sample(rng, dtype):
        return container((gaussian(*shape)(rng, dtype), gaussian(*shape)(rng, dtype)))
    return sample


def _lstm_tangent(residuals, t):
    x, state, wx, wh, gates, tc = residuals
    h, c = state
    dx, dstate, dwx, dwh, db = t
    dh, dc = dstate
    i, f, gg, o = jnp.split(gates, 4, axis=-1)
    dz = linear.forward(dx, wx, db) + jnp.matmul(x, dwx) + jnp.matmul(dh, wh) + jnp.matmul(h, dwh)
    dzi, dzf, dzg, dzo = jnp.split(dz, 4, axis=-1)
    di, df = i * (1 - i) * dzi, f * (1 - f) * dzf
    dg, do = (1 - gg * gg) * dzg, o * (1 - o) * dzo
    dc_new = df * c + f * dc + di * gg + i * dg
    return _like(state, do * tc + o * (1 - tc * tc) * dc_new, dc_new)


lstm_cell = primitive(
    lstm_cell, _lstm_backward, save=_lstm_save, validate=_lstm_validate,
    tangent=_lstm_tangent, examples=[
        Example((gaussian(3, 4), _pair(3, 5), gaussian(4, 20, scale=0.5), gaussian(5, 20, scale=0.5),
                 gaussian(20))),
        Example((gaussian(2, 2, 3), _pair(2, 2, 2, container=lambda p: LSTMState(*p)),
                 gaussian(3, 8), gaussian(2, 8), gaussian(8))),
    ],
)


# --------------------------------------------------------------------------- #
# GRU
# --------------------------------------------------------------------------- #


def _gru_parts(x, h, wx, wh, bx, bh):
    """Gates $[r, z, n]$ (…×3H) and $U_n = h W_hn + b_hn$ (…×H)."""
    ar, az, an = jnp.split(linear.forward(x, wx, bx), 3, axis=-1)
    ur, uz, un = jnp.split(linear.forward(h, wh, bh), 3, axis=-1)
    r = sigmoid.forward(ar + ur)
    z = sigmoid.forward(az + uz)
    n = jnp.tanh(an + r * un)
    return jnp.concatenate([r, z, n], axis=-1), un


def gru_cell(x: jax.Array, h: jax.Array, wx: jax.Array, wh: jax.Array, bx: jax.Array,
             bh: jax.Array) -> jax.Array:
    r"""GRU step $h → h'$, the variant with the reset gate applied *after* `h W_hn`.

    This is the formulation of PyTorch's `nn.GRU` and cuDNN (Keras
    `reset_after=True`), not Cho et al.'s original $tanh(x W + (r ⊙ h) U)$: with
    the reset after the product, the three hidden-side products are one `h W_h`.
    Gates stacked $r, z, n$ (PyTorch's order):

    $$ A = x W_x + b_x = [A_r, A_z, A_n], \qquad U = h W_h + b_h = [U_r, U_z, U_n] $$
    $$ r = σ(A_r + U_r), \qquad z = σ(A_z + U_z), \qquad n = tanh(A_n + r ⊙ U_n) $$
    $$ h' = (1 − z) ⊙ n + z ⊙ h $$

    Shapes: $x ∈ ℝ^{…×D}$, $h, h' ∈ ℝ^{…×H}$, $W_x ∈ ℝ^{D×3H}$ (`wx`),
    $W_h ∈ ℝ^{H×3H}$ (`wh`), $b_x, b_h ∈ ℝ^{3H}$ (`bx`, `bh`; two biases,
    because $b_hn$ sits inside $r ⊙ U_n$ and is not redundant with $b_xn$).

    Derivation, with $G = ∂L/∂h'$:

    * $∂L/∂n = G ⊙ (1 − z)$, $∂L/∂z = G ⊙ (h − n)$, and directly $∂L/∂h ⊕= G ⊙ z$;
    * candidate: $∂L/∂(A_n + r⊙U_n) = ∂L/∂n ⊙ (1 − n²) =: δ_n$, so $∂L/∂A_n = δ_n$,
      $∂L/∂U_n = δ_n ⊙ r$, $∂L/∂r = δ_n ⊙ U_n$;
    * gates: $∂L/∂A_r = ∂L/∂U_r = ∂L/∂r ⊙ r(1 − r)$,
      $∂L/∂A_z = ∂L/∂U_z = ∂L/∂z ⊙ z(1 − z)$;
    * through the affine maps: $∂L/∂x = ∂L/∂A W_xᵀ$, $∂L/∂W_x = xᵀ ∂L/∂A$,
      $∂L/∂b_x = 1ᵀ ∂L/∂A$; $∂L/∂h ⊕= ∂L/∂U W_hᵀ$, $∂L/∂W_h = hᵀ ∂L/∂U$,
      $∂L/∂b_h = 1ᵀ ∂L/∂U$.

    Residuals: $x, h, W_x, W_h$, the gates $[r, z, n]$ (…×3H) and $U_n$ (…×H).

    References: Cho et al., "Learning Phrase Representations using RNN
    Encoder–Decoder for Statistical Machine Translation", 2014 (the GRU); the
    reset-after variant as in cuDNN and PyTorch.

    Tangent: $dA = dx W_x + x dW_x + db_x$, $dU = dh W_h + h dW_h + db_h$ ($…×3H$);
    $dr = r(1 − r)(dA_r + dU_r)$, $dz = z(1 − z)(dA_z + dU_z)$,
    $dn = (1 − n²)(dA_n + dr ⊙ U_n + r ⊙ dU_n)$;
    $dh' = (1 − z) ⊙ dn + z ⊙ dh + (h − n) ⊙ dz$ ($…×H$).
    """
    gates, _ = _gru_parts(x, h, wx, wh, bx, bh)
    _, z, n = jnp.split(gates, 3, axis=-1)
    return (1 - z) * n + z * h


def _gru_save(x, h, wx, wh, bx, bh, y):
    gates, un = _gru_parts(x, h, wx, wh, bx, bh)
    return x, h, wx, wh, gates, un


def _gru_backward(residuals, g):
    x, h, wx, wh, gates, un = residuals
    r, z, n = jnp.split(gates, 3, axis=-1)
    delta_n = g * (1 - z) * (1 - n * n)
    dar = delta_n * un * r * (1 - r)
    daz = g * (h - n) * z * (1 - z)
    da = jnp.concatenate([dar, daz, delta_n], axis=-1)
    du = jnp.concatenate([dar, daz, delta_n * r], axis=-1)
    dwx, dbx = _weight_grads(x, da)
    dwh, dbh = _weight_grads(h, du)
    dh = g * z + jnp.matmul(du, wh.T)
    return jnp.matmul(da, wx.T), dh, dwx, dwh, dbx, dbh


def _gru_tangent(residuals, t):
    x, h, wx, wh, gates, un = residuals
    dx, dh, dwx, dwh, dbx, dbh = t
    r, z, n = jnp.split(gates, 3, axis=-1)
    dar, daz, dan = jnp.split(linear.forward(dx, wx, dbx) + jnp.matmul(x, dwx), 3, axis=-1)
    dur, duz, dun = jnp.split(linear.forward(dh, wh, dbh) + jnp.matmul(h, dwh), 3, axis=-1)
    dr = r * (1 - r) * (dar + dur)
    dz = z * (1 - z) * (daz + duz)
    dn = (1 - n * n) * (dan + dr * un + r * dun)
    return (1 - z) * dn + z * dh + (h - n) * dz


gru_cell = primitive(
    gru_cell, _gru_backward, save=_gru_save,
    spec=_cell_spec("gru_cell", 3, ", gates r, z, n", "bx", "bh"),
    tangent=_gru_tangent, examples=[
        Example((gaussian(3, 4), gaussian(3, 5), gaussian(4, 15, scale=0.5), gaussian(5, 15, scale=0.5),
                 gaussian(15), gaussian(15))),
        Example((gaussian(2, 2, 3), gaussian(2, 2, 2), gaussian(3, 6), gaussian(2, 6), gaussian(6),
                 gaussian(6))),
    ],
)


# --------------------------------------------------------------------------- #
# Sequences: backpropagation through time by lax.scan
# --------------------------------------------------------------------------- #


def _hidden(state: Any) -> Any:
    """What a step emits: the state, or its first entry $h$ for a pair $(h, c)$."""
    return state[0] if isinstance(state, (tuple, list)) else state


def scan_cell(cell: Callable, xs: jax.Array, state0: Any, *params: Any,
              reverse: bool = False, lengths: jax.Array | None = None) -> tuple[jax.Array, Any]:
    r"""Run $state_t = cell(x_t, state_{t−1}, *params)$ over the time axis.

    Args:
      cell: one step, `cell(x_t, state, *params) -> state` (`rnn_cell`,
        `lstm_cell`, `gru_cell`, or your own).
      xs: inputs, batch-first $…×T×D$ (time is the second-to-last axis).
      state0: the initial state ($…×H$, or a pair $(h, c)$).
      *params: the cell's parameters, shared by every step.
      reverse: run from $t = T$ down to `1` (for the backward half of a
        bidirectional RNN); `hs` stays in input order.
      lengths: optional int array $…$ (each in `[1, T]`): the number of valid
        steps of each sequence. A step $t ≥ ℓ$ keeps the state, $s_t = s_{t−1}$,
        and outputs zero, so it receives no gradient; `reverse=True` then runs each
        sequence from its own last step $ℓ−1$ down to `0` (a packed sequence's
        backward direction: `reverse_sequences`, a forward masked scan, and back).

    Returns:
      `(hs, state_T)`: $hs ∈ ℝ^{…×T×H}$ holds each step's $h$ (the state, or
      its first entry for a pair), `state_T` the final state (with `lengths`, each
      sequence's own after its last valid step).

    With lengths each step is $s_t = m_t ? cell(x_t, s_{t−1}) : s_{t−1}$ and
    $h_t = m_t ? h(cell(…)) : 0$ with the mask $m_t = [t < ℓ]$, a select whose VJP
    sends the state's cotangent around a padded step untouched and gives the cell's
    backward a zero cotangent there.

    Gradient (BPTT): the scan's transpose calls the cell's VJP at $t = T, …, 1$,
    feeding $∂L/∂state_t = ∂L/∂hs_t + (∂L/∂state_{t−1}$ returned by step
    `t+1)`, and sums each step's $∂L/∂params$. Nothing here is differentiated
    by hand beyond the cell; the transposes between batch-first and time-major
    layouts are layout changes JAX inverts exactly.
    """
    if lengths is not None:
        if reverse:  # each sequence backwards from its own last step
            hs, final = scan_cell(cell, reverse_sequences(xs, lengths), state0, *params,
                                  lengths=lengths)
            return reverse_sequences(hs, lengths), final
        return _masked_scan(cell, xs, state0, params, lengths)

    def step(state, x_t):
        state = cell(x_t, state, *params)
        return state, _hidden(state)

    final, hs = lax.scan(step, state0, jnp.moveaxis(xs, -2, 0), reverse=reverse)
    return jnp.moveaxis(hs, 0, -2), final


def _masked_scan(cell: Callable, xs: jax.Array, state0: Any, params: tuple,
                 lengths: jax.Array) -> tuple[jax.Array, Any]:
    """The forward scan with steps $t ≥ ℓ$ keeping the state and outputting zero."""
    def select(m_t, new, old):
        return jnp.where(jnp.broadcast_to(m_t[..., None], new.shape), new, old)

    def step(state, inputs):
        x_t, m_t = inputs
        new = cell(x_t, state, *params)
        h = _hidden(new)
        out = select(m_t, h, jnp.zeros_like(h))
        return jax.tree.map(functools.partial(select, m_t), new, state), out

    mask = jnp.moveaxis(sequence_mask(lengths, xs.shape[-2]), -1, 0)  # T×…
    final, hs = lax.scan(step, state0, (jnp.moveaxis(xs, -2, 0), mask))
    return jnp.moveaxis(hs, 0, -2), final


_SEQUENCE_SPECS = {fn: v.shapes(fn, xs="…×T×D, batch-first", h0="…×H", wx="D×kH")
                   for fn in ("rnn", "lstm", "gru")}


def _check_sequence(fn: str, xs, h0, wx, params: tuple, lengths=None) -> None:
    _SEQUENCE_SPECS[fn](xs=xs, h0=h0, wx=wx)
    check_lengths(fn, lengths, _shape(xs)[:-2], xs.shape[-2])
    computes = jnp.result_type(xs, *params)
    if jnp.result_type(h0) != computes:
        raise TypeError(f"{fn}: the initial state has dtype {jnp.result_type(h0)} but the "
                        f"step computes in {computes} (from xs and the weights); the scan "
                        f"carry must keep one dtype: cast the state to {computes}")


def rnn(xs: jax.Array, h0: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array, *,
        reverse: bool = False, lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Elman RNN over a sequence: `scan_cell` of `rnn_cell`.

    $xs ∈ ℝ^{…×T×D}$ (batch-first), $h0 ∈ ℝ^{…×H}$; returns `(hs, h_T)` with
    $hs ∈ ℝ^{…×T×H}$. Gradient: BPTT through the cell's rule ∂L/∂(x, h, W, b).
    `lengths` (int $…$, each in `[1, T]`): see `scan_cell` (padded steps keep the
    state, output zero, receive no gradient; $h_T$ is each sequence's own last).
    """
    _check_sequence("rnn", xs, h0, wx, (wx, wh, b), lengths)
    return scan_cell(rnn_cell, xs, h0, wx, wh, b, reverse=reverse, lengths=lengths)


# --------------------------------------------------------------------------- #
# The LSTM over a whole sequence: one primitive, BPTT written by hand
# --------------------------------------------------------------------------- #


def lstm(xs: jax.Array, state0: Any, wx: jax.Array, wh: jax.Array, b: jax.Array,
         lengths: jax.Array | None = None, reverse: bool = False) -> tuple[jax.Array, Any]:
    r"""LSTM over a sequence, with backpropagation through time written by hand.

    Shapes: $xs ∈ ℝ^{…×T×D}$ (batch-first), `state0 = (h_0, c_0)` with
    $h_0, c_0 ∈ ℝ^{…×H}$ (a tuple or `LSTMState`), $W_x ∈ ℝ^{D×4H}$,
    $W_h ∈ ℝ^{H×4H}$, $b ∈ ℝ^{4H}$ (gates stacked $i, f, g, o$ as in `lstm_cell`).
    Returns `(hs, (h_T, c_T))`: $hs ∈ ℝ^{…×T×H}$ the $h$ of every step, the final
    state in `state0`'s container. `reverse` (static): run from $t = T$ down to `1`
    ($hs$ stays in input order). `lengths` (int $…$, each in `[1, T]`): steps
    $t ≥ ℓ$ keep the state, output zero and receive no gradient; the final state is
    each sequence's own; with `reverse` each sequence runs from its own last step
    (as `scan_cell`, whose scan of `lstm_cell` is this primitive's definition and
    autodiff reference).

    Forward. The batch is folded into $N$ and time leads ($X ∈ ℝ^{T×N×D}$). The
    input side of every step's pre-activation does not depend on the recurrence,
    so it is one product for all steps before the scan:

    $$ Z^x = X W_x ∈ ℝ^{T×N×4H}, \qquad Z_t = Z^x_t + h_{t−1} W_h + b, $$

    then each step is `lstm_cell`'s: $[i, f, g, o] = [σ, σ, tanh, σ](Z_t)$,
    $c_t = f ⊙ c_{t−1} + i ⊙ g$, $h_t = o ⊙ tanh(c_t)$.

    Derivation. $L$ reaches $h_t$ through the output $hs_t$ (cotangent $G_t$) and
    through step $t+1$; $c_t$ only through steps $t$ and $t+1$. In reverse time
    with $δh_T, δc_T$ the final state's cotangents ($N×H$ each):

    * $δh = δh_t + G_t$;  $δc = δc_t + δh ⊙ o ⊙ (1 − tanh²(c_t))$;
    * $Δ_t = [δc ⊙ g ⊙ i(1−i),\; δc ⊙ c_{t−1} ⊙ f(1−f),\; δc ⊙ i ⊙ (1−g²),\;
      δh ⊙ tanh(c_t) ⊙ o(1−o)] = ∂L/∂Z_t$ ($N×4H$, `lstm_cell`'s rule);
    * $δh_{t−1} = Δ_t W_hᵀ$ ($N×4H · 4H×H$),  $δc_{t−1} = δc ⊙ f$.

    The weights enter every step through $Z_t$ alone, so their gradients are sums
    over the steps, taken once after the backward scan as single products over
    all $T·N$ rows ($Δ ∈ ℝ^{T·N×4H}$ stacks the $Δ_t$, $H_− ∈ ℝ^{T·N×H}$ the
    states $h_{t−1}$ entering each step):

    $$ ∂L/∂W_x = Xᵀ Δ, \qquad ∂L/∂W_h = H_−ᵀ Δ, \qquad ∂L/∂b = 1ᵀ Δ, \qquad
       ∂L/∂X = Δ W_xᵀ, $$

    ($D×T·N · T·N×4H$, $H×T·N · T·N×4H$, $4H$, $T·N×4H · 4H×D$), and
    $∂L/∂(h_0, c_0) = (δh_0, δc_0)$. With lengths, a step $t ≥ ℓ$ is the identity on
    the state: $Δ_t = 0$ and $(δh_{t−1}, δc_{t−1}) = (δh_t, δc_t)$; its output is a
    constant zero, so $G_t$ goes nowhere. A reversed sequence with lengths is the
    forward scan of `reverse_sequences(xs, ℓ)`, its outputs reversed back: the
    backward reverses $G$, runs, and reverses $∂L/∂X$ (a permutation, its own
    inverse).

    Residuals: $X$ (time-major), $W_x$, $W_h$, the activated gates of every step
    ($T×N×4H$), $c_t$ and $h_t$ of every step ($T×N×H$ each; $c_{t−1}$, $h_{t−1}$
    are these shifted by one step, with $c_0, h_0$), `state0` and `lengths`: no
    product is recomputed (only $tanh(c_t)$, element-wise).

    Tangent: $dZ^x = dX W_x + X dW_x + db + H_− dW_h$ (one product for all steps),
    then per step $dZ_t = dZ^x_t + dh_{t−1} W_h$, $di = i(1−i) dZ_i$,
    $df = f(1−f) dZ_f$, $dg = (1−g²) dZ_g$, $do = o(1−o) dZ_o$,
    $dc_t = df ⊙ c_{t−1} + f ⊙ dc_{t−1} + di ⊙ g + i ⊙ dg$,
    $dh_t = do ⊙ tanh(c_t) + o ⊙ (1 − tanh²(c_t)) ⊙ dc_t$ (padded steps keep
    $(dh, dc)$ and output zero).

    References: Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997; Werbos,
    "Backpropagation Through Time: What It Does and How to Do It", 1990.
    """
    return scan_cell(lstm_cell.forward, xs, state0, wx, wh, b, reverse=reverse,
                     lengths=lengths)


def _time_major(a: jax.Array, n: int) -> jax.Array:
    """$…×T×F → T×N×F$ ($N$ the product of the leading dimensions)."""
    return jnp.moveaxis(a, -2, 0).reshape(a.shape[-2], n, a.shape[-1])


def _batch_first(a: jax.Array, lead: tuple) -> jax.Array:
    """$T×N×F → …×T×F$, the inverse of `_time_major`."""
    return jnp.moveaxis(a.reshape((a.shape[0],) + lead + (a.shape[-1],)), 0, -2)


def _step_mask(lengths: jax.Array | None, steps: int, n: int) -> jax.Array | None:
    """$m_t = [t < ℓ]$, time-major $T×N×1$ (None without lengths)."""
    if lengths is None:
        return None
    return jnp.moveaxis(sequence_mask(lengths, steps), -1, 0).reshape(steps, n, 1)


def _previous(states: jax.Array, first: jax.Array, backwards: bool) -> jax.Array:
    """The state entering each step: `states` ($T×N×H$, after each step) shifted one
    step along the direction of the scan, `first` ($N×H$) entering the first."""
    if backwards:
        return jnp.concatenate([states[1:], first[None]], axis=0)
    return jnp.concatenate([first[None], states[:-1]], axis=0)


def _fold_state(state: Any, n: int) -> tuple[jax.Array, jax.Array]:
    h, c = state
    return h.reshape(n, h.shape[-1]), c.reshape(n, c.shape[-1])


def _lstm_seq_fwd(xs, state0, wx, wh, b, lengths, reverse):
    if reverse and lengths is not None:  # each sequence backwards from its own last step
        (hs, final), res = _lstm_seq_fwd(reverse_sequences(xs, lengths), state0, wx, wh, b,
                                     lengths, False)
        return (reverse_sequences(hs, lengths), final), res
    lead, steps = xs.shape[:-2], xs.shape[-2]
    n = math.prod(lead)
    x = _time_major(xs, n)                                    # T×N×D
    zx = jnp.matmul(x, wx)                                    # X W_x, T×N×4H, all steps
    mask = _step_mask(lengths, steps, n)
    # W_hᵀ laid out once (4H×H, row-major): XLA:CPU's product h W_h runs faster with the
    # right operand stored transposed; the barrier keeps XLA from folding the two
    # transposes back into W_h
    wh_t = lax.optimization_barrier(wh.T)

    def step(carry, inputs):
        h, c = carry
        zx_t, m_t = inputs
        gates = _activate(zx_t + linear.forward(h, wh_t.T, b))
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        out = h_new
        if m_t is not None:  # a padded step keeps the state and outputs zero
            h_new, c_new = jnp.where(m_t, h_new, h), jnp.where(m_t, c_new, c)
            out = jnp.where(m_t, h_new, jnp.zeros_like(h_new))
        return (h_new, c_new), (out, c_new, gates)

    (h_t, c_t), (hs, cs, gates) = lax.scan(step, _fold_state(state0, n), (zx, mask),
                                           reverse=reverse)
    final = _like(state0, h_t.reshape(lead + h_t.shape[-1:]), c_t.reshape(lead + c_t.shape[-1:]))
    return (_batch_first(hs, lead), final), (x, wx, wh, gates, cs, hs, state0, lengths)


def _lstm_seq_backward(reverse, residuals, g):
    x, wx, wh, gates, cs, hs, state0, lengths = residuals
    g_hs, g_final = g
    backwards = reverse and lengths is None  # the forward scan ran from T down to 1
    if reverse and lengths is not None:
        g_hs = reverse_sequences(g_hs, lengths)
    lead, (steps, n) = state0[0].shape[:-1], x.shape[:2]
    h0, c0 = _fold_state(state0, n)
    c_prev = _previous(cs, c0, backwards)
    mask = _step_mask(lengths, steps, n)

    def back_step(carry, inputs):
        dh_next, dc_next = carry
        gates_t, c_prev_t, c_t, g_t, m_t = inputs
        i, f, gg, o = jnp.split(gates_t, 4, axis=-1)
        tc = jnp.tanh(c_t)
        dh = dh_next + g_t
        dc = dc_next + dh * o * (1 - tc * tc)
        dz = jnp.concatenate([dc * gg * i * (1 - i), dc * c_prev_t * f * (1 - f),
                              dc * i * (1 - gg * gg), dh * tc * o * (1 - o)], axis=-1)
        if m_t is not None:  # a padded step: no gate gradient, the state's passes by
            dz = jnp.where(m_t, dz, jnp.zeros_like(dz))
            return (jnp.where(m_t, jnp.matmul(dz, wh.T), dh_next),
                    jnp.where(m_t, dc * f, dc_next)), dz
        return (jnp.matmul(dz, wh.T), dc * f), dz

    (dh0, dc0), dz = lax.scan(back_step, _fold_state(g_final, n),
                              (gates, c_prev, cs, _time_major(g_hs, n), mask),
                              reverse=not backwards)
    rows = steps * n                                          # the weight gradients: one
    dz2 = dz.reshape(rows, dz.shape[-1])                      # product over all T·N rows
    h_prev = _previous(hs, h0, backwards).reshape(rows, hs.shape[-1])
    dwx = jnp.matmul(x.reshape(rows, x.shape[-1]).T, dz2)
    dwh = jnp.matmul(h_prev.T, dz2)
    dxs = _batch_first(jnp.matmul(dz, wx.T), lead)
    if reverse and lengths is not None:
        dxs = reverse_sequences(dxs, lengths)
    dstate0 = _like(state0, dh0.reshape(lead + dh0.shape[-1:]),
                    dc0.reshape(lead + dc0.shape[-1:]))
    return dxs, dstate0, dwx, dwh, jnp.sum(dz2, axis=0), None


def _lstm_seq_tangent(reverse, residuals, t):
    x, wx, wh, gates, cs, hs, state0, lengths = residuals
    dxs, dstate0, dwx, dwh, db, _ = t
    backwards = reverse and lengths is None
    lead, (steps, n) = state0[0].shape[:-1], x.shape[:2]
    h0, c0 = _fold_state(state0, n)
    dzx = jnp.broadcast_to(db, gates.shape)                   # dZ^x for all steps at once
    if not is_zero(dxs):
        if reverse and lengths is not None:
            dxs = reverse_sequences(dxs, lengths)
        dzx = dzx + jnp.matmul(_time_major(dxs, n), wx)
    if not is_zero(dwx):
        dzx = dzx + jnp.matmul(x, dwx)
    if not is_zero(dwh):
        dzx = dzx + jnp.matmul(_previous(hs, h0, backwards), dwh)
    mask = _step_mask(lengths, steps, n)

    def step(carry, inputs):
        dh, dc = carry
        dzx_t, gates_t, c_prev_t, c_t, m_t = inputs
        i, f, gg, o = jnp.split(gates_t, 4, axis=-1)
        dzi, dzf, dzg, dzo = jnp.split(dzx_t + jnp.matmul(dh, wh), 4, axis=-1)
        tc = jnp.tanh(c_t)
        dc_new = (f * (1 - f) * dzf * c_prev_t + f * dc + i * (1 - i) * dzi * gg
                  + i * (1 - gg * gg) * dzg)
        dh_new = o * (1 - o) * dzo * tc + o * (1 - tc * tc) * dc_new
        out = dh_new
        if m_t is not None:
            dh_new, dc_new = jnp.where(m_t, dh_new, dh), jnp.where(m_t, dc_new, dc)
            out = jnp.where(m_t, dh_new, jnp.zeros_like(dh_new))
        return (dh_new, dc_new), out

    (dh_t, dc_t), dhs = lax.scan(step, _fold_state(dstate0, n),
                                 (dzx, gates, _previous(cs, c0, backwards), cs, mask),
                                 reverse=backwards)
    dhs = _batch_first(dhs, lead)
    if reverse and lengths is not None:
        dhs = reverse_sequences(dhs, lengths)
    return dhs, _like(state0, dh_t.reshape(lead + dh_t.shape[-1:]),
                      dc_t.reshape(lead + dc_t.shape[-1:]))


_LSTM_SEQUENCE_SPEC = v.shapes("lstm", xs="…×T×D, batch-first", h0="…×H",
                               wx="D×4H, gates i, f, g, o", wh="H×4H", b="4H")


def _lstm_seq_validate(xs, state0, wx, wh, b, lengths, reverse):
    v.flag("lstm", "reverse", reverse)
    _check_lstm_state("lstm", state0)
    _check_sequence("lstm", xs, state0[0], wx, (wx, wh, b), lengths)
    _LSTM_SEQUENCE_SPEC(xs=xs, h0=state0[0], wx=wx, wh=wh, b=b)


def _lengths(*values: int) -> Callable:
    return lambda rng, dtype: jnp.asarray(values, jnp.int32)


lstm = primitive(
    lstm, _lstm_seq_backward, fwd=_lstm_seq_fwd, tangent=_lstm_seq_tangent,
    validate=_lstm_seq_validate, static=("reverse",), examples=[
        Example((gaussian(3, 4, 3), _pair(3, 5), gaussian(3, 20, scale=0.5),
                 gaussian(5, 20, scale=0.5), gaussian(20))),
        Example((gaussian(2, 2, 3, 3), _pair(2, 2, 2, container=lambda p: LSTMState(*p)),
                 gaussian(3, 8), gaussian(2, 8), gaussian(8)), {"reverse": True}),
        Example((gaussian(3, 4, 3), _pair(3, 5), gaussian(3, 20, scale=0.5),
                 gaussian(5, 20, scale=0.5), gaussian(20), _lengths(4, 1, 2))),
        Example((gaussian(3, 4, 3), _pair(3, 5), gaussian(3, 20, scale=0.5),
                 gaussian(5, 20, scale=0.5), gaussian(20), _lengths(2, 4, 3)),
                {"reverse": True}),
    ],
)


def gru(xs: jax.Array, h0: jax.Array, wx: jax.Array, wh: jax.Array, bx: jax.Array,
        bh: jax.Array, *, reverse: bool = False,
        lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """GRU (reset-after variant) over a sequence: `scan_cell` of `gru_cell`.

    $xs ∈ ℝ^{…×T×D}$ (batch-first), $h0 ∈ ℝ^{…×H}$; returns `(hs, h_T)` with
    $hs ∈ ℝ^{…×T×H}$. Gradient: BPTT through the cell's rule. `lengths`: as in
    `rnn` (`scan_cell`).
    """
    _check_sequence("gru", xs, h0, wx, (wx, wh, bx, bh), lengths)
    return scan_cell(gru_cell, xs, h0, wx, wh, bx, bh, reverse=reverse, lengths=lengths)
