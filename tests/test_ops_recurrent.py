"""Recurrent cells and backpropagation through time.

The registry table (tests/test_primitives.py) checks each cell's per-step rule;
here: the cells against their textbook equations, BPTT through ``lax.scan`` with
the hand-written rules against BPTT in autodiff mode (float64, 1e-10; for the LSTM the
rule is ``ops.lstm``'s own, for the whole sequence: see test_lstm_sequence.py), proof
that the scan really runs the hand-written rule, validation messages, and a toy
sequence task an LSTM must learn.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check, ops
from fdl.losses import softmax_cross_entropy
from fdl.ops.recurrent import LSTMState
from fdl.optim import adam, apply_updates
from fdl.primitive import primitive
from conftest import normal

pytestmark = pytest.mark.x64  # float64 rules and closed forms to 1e-10


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


N, T, D, H = 2, 4, 3, 5


def _params(kind, d=D, h=H, scale=0.5):
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    wx, wh = normal(1, d, gates * h, scale=scale), normal(2, h, gates * h, scale=scale)
    if kind == "gru":
        return wx, wh, normal(3, gates * h, scale=scale), normal(4, gates * h, scale=scale)
    return wx, wh, normal(3, gates * h, scale=scale)


# --------------------------------------------------------------------------- #
# The cells against their equations (numpy, gate by gate)
# --------------------------------------------------------------------------- #


def test_rnn_cell_is_tanh_of_the_affine_map():
    x, h = normal(0, N, D), normal(5, N, H)
    wx, wh, b = _params("rnn")
    want = np.tanh(np.asarray(x) @ np.asarray(wx) + np.asarray(h) @ np.asarray(wh) + np.asarray(b))
    np.testing.assert_allclose(ops.rnn_cell(x, h, wx, wh, b), want, rtol=1e-13)


def test_lstm_cell_matches_the_gate_equations():
    x, h, c = normal(0, N, D), normal(5, N, H), normal(6, N, H)
    wx, wh, b = _params("lstm")
    z = np.asarray(x) @ np.asarray(wx) + np.asarray(h) @ np.asarray(wh) + np.asarray(b)
    i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
    c_new = _sigmoid(f) * np.asarray(c) + _sigmoid(i) * np.tanh(g)
    h_new = _sigmoid(o) * np.tanh(c_new)
    got = ops.lstm_cell(x, (h, c), wx, wh, b)
    assert isinstance(got, tuple) and not isinstance(got, LSTMState)   # container kept
    np.testing.assert_allclose(got[0], h_new, rtol=1e-13)
    np.testing.assert_allclose(got[1], c_new, rtol=1e-13)
    named = ops.lstm_cell(x, LSTMState(h, c), wx, wh, b)
    assert isinstance(named, LSTMState)
    np.testing.assert_allclose(named.h, h_new, rtol=1e-13)


def test_gru_cell_is_the_reset_after_variant():
    """PyTorch's nn.GRU equations, with its separate weight blocks."""
    x, h = np.asarray(normal(0, N, D)), np.asarray(normal(5, N, H))
    wx, wh, bx, bh = (np.asarray(p) for p in _params("gru"))
    blk = lambda a, k: a[..., k * H:(k + 1) * H]
    r = _sigmoid(x @ blk(wx, 0) + blk(bx, 0) + h @ blk(wh, 0) + blk(bh, 0))
    z = _sigmoid(x @ blk(wx, 1) + blk(bx, 1) + h @ blk(wh, 1) + blk(bh, 1))
    n = np.tanh(x @ blk(wx, 2) + blk(bx, 2) + r * (h @ blk(wh, 2) + blk(bh, 2)))
    want = (1 - z) * n + z * h
    got = ops.gru_cell(*(jnp.asarray(a) for a in (x, h, wx, wh, bx, bh)))
    np.testing.assert_allclose(got, want, rtol=1e-13)


# --------------------------------------------------------------------------- #
# Sequences and BPTT
# --------------------------------------------------------------------------- #


def _initial(kind, lead=(N,)):
    h0 = normal(7, *lead, H)
    return (h0, normal(8, *lead, H)) if kind == "lstm" else h0


_RUN = {"rnn": ops.rnn, "lstm": ops.lstm, "gru": ops.gru}
_CELL = {"rnn": ops.rnn_cell, "lstm": ops.lstm_cell, "gru": ops.gru_cell}


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_equals_a_python_loop_of_cells(kind, reverse):
    xs, state = normal(0, N, T, D), _initial(kind)
    params = _params(kind)
    hs, final = jax.jit(_RUN[kind], static_argnames="reverse")(xs, state, *params,
                                                               reverse=reverse)
    steps = reversed(range(T)) if reverse else range(T)
    want = [None] * T
    for t in steps:
        state = _CELL[kind](xs[:, t], state, *params)
        want[t] = state[0] if kind == "lstm" else state
    np.testing.assert_allclose(hs, jnp.stack(want, axis=1), rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(state)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_bptt_with_hand_written_rules_equals_autodiff_bptt(kind):
    """The VJP of the whole sequence map (all hs and the final state) w.r.t. the inputs,
    the initial state and every weight: manual rules vs autodiff mode ≤ 1e-10 in float64,
    and (LSTM; the cells each meet them in the registry table) vs finite differences ≤ 1e-8."""
    def run(xs, state0, params):
        return _RUN[kind](xs, state0, *params)

    report = check.vjp(run, normal(0, N, T, D), _initial(kind), _params(kind), jit=True,
                       finite_differences=kind == "lstm")
    report.raise_if_failed()
    assert report.worst("autodiff") <= 1e-10
    if kind == "lstm":
        assert report.worst("finite differences") <= 1e-8


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bptt_gradient_of_a_loss_both_modes(kind):
    """jax.grad of a loss over a batch-first sequence with extra leading dimensions,
    run backwards in time: the two gradient modes agree to 1e-10."""
    xs, state0 = normal(0, 2, N, T, D), _initial(kind, lead=(2, N))
    params = _params(kind)

    def loss(params, xs, state0):
        hs, final = _RUN[kind](xs, state0, *params, reverse=True)
        last = final[0] if kind == "lstm" else final
        return jnp.sum(jnp.tanh(hs) ** 2) + jnp.sum(last * last)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    manual = grad(params, xs, state0)
    with fdl.gradient_mode("autodiff"):
        reference = grad(params, xs, state0)
    for m, r in zip(jax.tree_util.tree_leaves(manual), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_allclose(m, r, rtol=1e-10, atol=1e-12 * float(jnp.max(jnp.abs(r))))


def test_the_scan_runs_the_hand_written_rule():
    """A cell whose backward is deliberately wrong changes the BPTT gradient: the scan's
    transpose calls the cell's own VJP, not autodiff of its forward. A cell without a
    tangent rule refuses forward mode in manual mode."""
    def doubled(residuals, g):
        return tuple(2 * c for c in ops.rnn_cell.backward(residuals, g))

    wrong = primitive(ops.rnn_cell.forward, doubled, save=ops.rnn_cell.save, register=False)
    xs, h0, params = normal(0, N, T, D), _initial("rnn"), _params("rnn")
    loss = lambda cell, wx: jnp.sum(ops.scan_cell(cell, xs, h0, wx, *params[1:])[0])
    right = jax.jit(jax.grad(lambda wx: loss(ops.rnn_cell, wx)))
    wrong_grad = jax.jit(jax.grad(lambda wx: loss(wrong, wx)))
    assert not np.allclose(right(params[0]), wrong_grad(params[0]))
    with fdl.gradient_mode("autodiff"):   # the wrong rule is not used in autodiff mode
        np.testing.assert_allclose(wrong_grad(params[0]), right(params[0]), rtol=1e-10)
    with pytest.raises(TypeError, match="forward-mode.*autodiff"):
        jax.jvp(lambda wx: loss(wrong, wx), (params[0],), (params[0],))


def test_vmap_over_sequences_equals_batched_call():
    xs, h0 = normal(0, 3, N, T, D), normal(7, 3, N, H)
    params = _params("gru")
    hs, _ = jax.jit(jax.vmap(lambda x, h: ops.gru(x, h, *params)))(xs, h0)
    np.testing.assert_allclose(hs, jax.jit(ops.gru)(xs, h0, *params)[0], rtol=1e-12)


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #

_x, _h = normal(0, N, D), normal(1, N, H)
_xs = normal(2, N, T, D)
_RNN, _LSTM, _GRU = _params("rnn"), _params("lstm"), _params("gru")

BAD_CALLS = [
    (lambda: ops.rnn_cell(_x, _h, normal(0, D + 1, H), *_RNN[1:]), ValueError,
     r"rnn_cell: wx must have shape \(3, 5\) \(D×H\) for x \(2, 3\) and h \(2, 5\), got \(4, 5\)"),
    (lambda: ops.rnn_cell(_x, _h[:1], *_RNN), ValueError,
     r"rnn_cell: x \(2, 3\) and h \(1, 5\) must share their leading \(batch\) dimensions"),
    (lambda: ops.rnn_cell(_x, _h, *_RNN[:2], normal(0, H + 1)), ValueError,
     r"rnn_cell: b must have shape \(5,\) \(H\) for h \(2, 5\), got \(6,\)"),
    (lambda: ops.lstm_cell(_x, _h, *_LSTM), TypeError,
     r"lstm_cell: state must be a pair \(h, c\) \(a tuple or LSTMState\), got ArrayImpl"),
    (lambda: ops.lstm_cell(_x, (_h, _h, _h), *_LSTM), TypeError,
     r"lstm_cell: state must be a pair \(h, c\) .* got tuple of length 3"),
    (lambda: ops.lstm_cell(_x, (_h, _h[:, :2]), *_LSTM), ValueError,
     r"lstm_cell: h and c in state must have the same shape, got h \(2, 5\) and c \(2, 2\)"),
    (lambda: ops.lstm_cell(_x, (_h, _h), *_RNN), ValueError,
     r"lstm_cell: wx must have shape \(3, 20\) \(D×4H, gates i, f, g, o\) for x \(2, 3\) and h "
     r"\(2, 5\), got \(3, 5\)"),
    (lambda: ops.gru_cell(_x, _h, *_GRU[:3], normal(0, 5)), ValueError,
     r"gru_cell: bh must have shape \(15,\) \(3H, gates r, z, n\) for h \(2, 5\), got \(5,\)"),
    (lambda: ops.gru_cell(_x.astype(jnp.int32), _h, *_GRU), TypeError,
     r"gru_cell: x must be a floating-point array, got dtype int32"),
    (lambda: ops.rnn(_x, _h, *_RNN), ValueError,
     r"rnn: xs \(2, 3\) and h0 \(2, 5\) must share their leading \(batch\) dimensions \(the … in "
     r"xs ∈ …×T×D, h0 ∈ …×H\)"),
    (lambda: ops.gru(_xs, _h, normal(0, D + 1, 3 * H), *_GRU[1:]), ValueError,
     r"gru: xs has D = 3 \(shape \(2, 4, 3\)\) but wx has D = 4 \(shape \(4, 15\)\); the last "
     r"dimension of xs must equal the first of wx"),
    (lambda: ops.lstm(_xs.astype(jnp.float64), (_h.astype(jnp.float32),) * 2,
                      *(w.astype(jnp.float64) for w in _LSTM)), TypeError,
     r"lstm: the initial state has dtype float32 but the step computes in float64 .* cast the "
     r"state to float64"),
    (lambda: ops.lstm(_xs, _h, *_LSTM), TypeError,
     r"lstm: state must be a pair \(h, c\)"),
]


@pytest.mark.parametrize("call,exc,message", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_mistakes_raise_clear_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# --------------------------------------------------------------------------- #
# A toy task: recall the first symbol
# --------------------------------------------------------------------------- #

_SYMBOLS, _LENGTH, _HIDDEN = 4, 8, 16


def _recall_batch(key, n):
    """One-hot sequences of random symbols; the target is the *first* symbol, which
    the LSTM must carry through 7 more steps."""
    tokens = jax.random.randint(key, (n, _LENGTH), 0, _SYMBOLS)
    return jax.nn.one_hot(tokens, _SYMBOLS, dtype=jnp.float32), tokens[:, 0]


def test_lstm_learns_to_recall_the_first_symbol():
    """Chance level is log 4 ≈ 1.39; the held-out loss must fall below 0.05 after
    150 Adam steps on fresh batches of 64 (float32, fixed seeds, one compiled scan)."""
    f32 = dict(dtype=jnp.float32)
    params = {
        "wx": normal(40, _SYMBOLS, 4 * _HIDDEN, scale=0.5, **f32),
        "wh": normal(41, _HIDDEN, 4 * _HIDDEN, scale=1 / 4, **f32),
        "b": jnp.zeros((4 * _HIDDEN,), jnp.float32).at[_HIDDEN:2 * _HIDDEN].set(1.0),  # forget
        "w_out": normal(42, _HIDDEN, _SYMBOLS, scale=0.25, **f32),
        "b_out": jnp.zeros((_SYMBOLS,), jnp.float32),
    }

    def loss_fn(params, xs, target):
        zeros = jnp.zeros((xs.shape[0], _HIDDEN), jnp.float32)
        _, (h, _) = ops.lstm(xs, (zeros, zeros), params["wx"], params["wh"], params["b"])
        return softmax_cross_entropy(ops.linear(h, params["w_out"], params["b_out"]), target)

    opt = adam(0.02)

    def step(carry, key):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *_recall_batch(key, 64))
        updates, state = opt.update(grads, state, params)
        return (apply_updates(params, updates), state), loss

    @jax.jit
    def train(params, key):
        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                           jax.random.split(key, 150))
        return losses, loss_fn(params, *_recall_batch(jax.random.key(2), 512))

    losses, held_out = train(params, jax.random.key(1))
    assert float(losses[0]) > 1.0
    assert float(held_out) < 0.05, f"held-out recall loss {float(held_out):.4f}"
