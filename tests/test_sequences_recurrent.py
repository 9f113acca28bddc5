"""Variable-length, stacked and bidirectional recurrent layers (fdl.layers.RNN/LSTM/GRU
with lengths=, num_layers=, bidirectional=, dropout=; fdl.layers.Bidirectional): a padded
batch equals each sequence run alone at its own length, in outputs, final states and
gradients; padded steps receive zero gradient; PyTorch's packed sequences (optional)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import layers as L

N, T, D, H = 3, 5, 4, 3
LENGTHS = np.array([5, 2, 3], np.int32)


def _data(dtype=jnp.float64):
    return jax.random.normal(jax.random.key(0), (N, T, D), dtype)


def _loss(layer, params, x, lengths=None):
    (y, states), _ = layer.apply(params, {}, x, lengths=lengths)
    return (jnp.sum(jnp.sin(y)) + sum(jnp.sum(jnp.cos(s)) for s in jax.tree.leaves(states)),
            (y, states))


@pytest.mark.x64
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_batch_equals_each_sequence_alone_in_outputs_states_and_gradients(
        cell, num_layers, bidirectional):
    layer = getattr(L, cell)(H, num_layers=num_layers, bidirectional=bidirectional,
                             return_state=True, dtype=jnp.float64)
    _, params, _ = layer.init(jax.random.key(1), (T, D))
    x = _data()
    grad = jax.value_and_grad(lambda p, x, ell=None: _loss(layer, p, x, ell), argnums=(0, 1),
                              has_aux=True)
    (_, (y, states)), (g_params, g_x) = grad(params, x, jnp.asarray(LENGTHS))
    g_sum = jax.tree.map(jnp.zeros_like, params)
    for n, ell in enumerate(LENGTHS):
        (_, (y_n, states_n)), (gp_n, gx_n) = grad(params, x[n:n + 1, :ell])
        np.testing.assert_allclose(y[n, :ell], y_n[0], rtol=1e-12, atol=1e-14)
        assert np.all(np.asarray(y[n, ell:]) == 0.0)  # padded outputs are zero
        for a, b in zip(jax.tree.leaves(states), jax.tree.leaves(states_n)):
            np.testing.assert_allclose(a[:, n], b[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g_x[n, :ell], gx_n[0], rtol=1e-11, atol=1e-13)
        assert np.all(np.asarray(g_x[n, ell:]) == 0.0)  # padded steps: zero gradient
        g_sum = jax.tree.map(jnp.add, g_sum, gp_n)
    for a, b in zip(jax.tree.leaves(g_params), jax.tree.leaves(g_sum)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.x64
@pytest.mark.parametrize("op", ["rnn", "gru"])
def test_ops_reverse_with_lengths_starts_at_each_sequences_own_last_step(op):
    x = _data()
    keys = jax.random.split(jax.random.key(2), 4)
    k = 1 if op == "rnn" else 3
    args = [jax.random.normal(keys[0], (D, k * H), jnp.float64),
            jax.random.normal(keys[1], (H, k * H), jnp.float64),
            *[jax.random.normal(kk, (k * H,), jnp.float64) for kk in keys[2:2 + (k > 1) + 1]]]
    run = getattr(fdl.ops, op)
    h0 = jnp.zeros((N, H), jnp.float64)
    hs, h_last = run(x, h0, *args, reverse=True, lengths=jnp.asarray(LENGTHS))
    for n, ell in enumerate(LENGTHS):
        flipped = jnp.flip(x[n:n + 1, :ell], axis=1)  # read backwards from step ell-1
        hs_n, h_n = run(flipped, h0[:1], *args)
        np.testing.assert_allclose(hs[n, :ell], jnp.flip(hs_n[0], axis=0), rtol=1e-12)
        np.testing.assert_allclose(h_last[n], h_n[0], rtol=1e-12)
        assert np.all(np.asarray(hs[n, ell:]) == 0.0)


@pytest.mark.x64
def test_bidirectional_combinator_equals_the_layers_own_bidirectional():
    x, lengths = _data(), jnp.asarray(LENGTHS)
    both = L.LSTM(H, bidirectional=True, dtype=jnp.float64)
    _, params, _ = both.init(jax.random.key(3), (T, D))
    combo = L.Bidirectional(L.LSTM(H, dtype=jnp.float64))
    shape, _, state = combo.init(jax.random.key(4), (T, D))
    assert shape == (T, 2 * H)
    mapped = {"forward": params["l0"], "backward": params["l0_reverse"]}
    y, _ = both.apply(params, {}, x, lengths=lengths)
    y2, _ = combo.apply(mapped, state, x, lengths=lengths)
    np.testing.assert_allclose(y, y2, rtol=1e-13, atol=1e-15)
    last = L.Bidirectional(L.GRU(H, return_sequences=False, dtype=jnp.float64), merge="sum")
    shape, p, state = last.init(jax.random.key(5), (T, D))
    h, _ = last.apply(p, state, x, lengths=lengths)
    assert shape == (H,) and h.shape == (N, H)


@pytest.mark.float32
def test_dropout_acts_between_layers_only():
    x = _data(jnp.float32)
    key = jax.random.key(6)
    two = L.GRU(H, num_layers=2, dropout=0.5)
    _, p2, _ = two.init(key, (T, D))
    assert not np.allclose(two.apply(p2, {}, x, key=key, train=True)[0],
                           two.apply(p2, {}, x)[0])
    one = L.GRU(H, dropout=0.5)  # one layer: nothing between layers, nothing dropped
    _, p1, _ = one.init(key, (T, D))
    np.testing.assert_array_equal(one.apply(p1, {}, x, key=key, train=True)[0],
                                  one.apply(p1, {}, x)[0])
    with pytest.raises(ValueError, match="GRU: train=True with dropout between layers needs"):
        two.apply(p2, {}, x, train=True)


@pytest.mark.parametrize("lengths,error,message", [
    (np.array([0, 2, 3]), ValueError, r"LSTM: every lengths entry must be in \[1, T\] = \[1, 5\]"),
    (np.array([6, 2, 3]), ValueError, r"got 6 at index \(0,\)"),
    (np.array([1.0, 2.0, 3.0]), TypeError, "LSTM: lengths must be an integer array"),
    (np.array([[1, 2, 3]]), ValueError, r"LSTM: lengths must have shape \(3,\)"),
])
def test_bad_lengths_are_clear_errors(lengths, error, message):
    layer = L.LSTM(H)
    _, params, _ = layer.init(jax.random.key(0), (T, D))
    with pytest.raises(error, match=message):
        layer.apply(params, {}, jnp.ones((N, T, D)), lengths=jnp.asarray(lengths))
    with pytest.raises(error, match=message.replace("LSTM", "lstm")):
        fdl.ops.lstm(jnp.ones((N, T, D)), (jnp.zeros((N, H)),) * 2, params["wx"], params["wh"],
                     params["b"], lengths=jnp.asarray(lengths))


@pytest.mark.x64
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_pytorch_packed_sequences_two_layers_both_directions(cell):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    net = getattr(torch.nn, cell)(D, H, num_layers=2, bidirectional=True, batch_first=True,
                                  dtype=torch.float64)
    params = {}
    for i in range(2):
        for suffix in ("", "_reverse"):
            w = {n: getattr(net, f"{n}_l{i}{suffix}").detach().numpy()
                 for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            p = {"wx": jnp.asarray(w["weight_ih"].T), "wh": jnp.asarray(w["weight_hh"].T)}
            if cell == "LSTM":
                p["b"] = jnp.asarray(w["bias_ih"] + w["bias_hh"])
            else:
                p["bx"], p["bh"] = jnp.asarray(w["bias_ih"]), jnp.asarray(w["bias_hh"])
            params[f"l{i}{suffix}"] = p
    x = np.asarray(_data())
    packed = pack_padded_sequence(torch.tensor(x), torch.tensor(LENGTHS), batch_first=True,
                                  enforce_sorted=False)
    out, h_n = net(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    layer = getattr(L, cell)(H, num_layers=2, bidirectional=True, return_state=True,
                             dtype=jnp.float64)
    (y, states), _ = layer.apply(params, {}, jnp.asarray(x), lengths=jnp.asarray(LENGTHS))
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    torch_states = h_n if cell == "LSTM" else (h_n,)
    for a, b in zip(jax.tree.leaves(states), torch_states):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12)
