"""Layer wrappers for attention and recurrent ops (catalogue part B).

Each layer's ``apply`` must equal the op it wraps with the params ``init`` built,
report the shapes it promised, train (gradients: manual rules vs autodiff), and
reject mistakes with messages naming the layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl import check, layers, ops
from fdl.losses import softmax_cross_entropy
from conftest import normal


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


# --------------------------------------------------------------------------- #
# MultiHeadAttention
# --------------------------------------------------------------------------- #


def test_multi_head_self_attention_layer():
    layer = layers.MultiHeadAttention(2, features=8, out_features=5, causal=True)
    out_shape, params, state = layer.init(jax.random.key(0), (4, 6))
    assert out_shape == (4, 5) and state == {}
    assert _shapes(params) == {"wq": (6, 8), "wk": (6, 8), "wv": (6, 8), "wo": (8, 5),
                               "bq": (8,), "bk": (8,), "bv": (8,), "bo": (5,)}
    x = normal(1, 3, 4, 6)
    y, _ = jax.jit(layer.apply)(params, state, x)
    assert y.shape == (3,) + out_shape
    want = ops.multi_head_attention(x, x, params["wq"], params["wk"], params["wv"], params["wo"],
                                    2, causal=True, bq=params["bq"], bk=params["bk"],
                                    bv=params["bv"], bo=params["bo"])
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_multi_head_cross_attention_layer_with_padding_mask():
    layer = layers.MultiHeadAttention(2, use_bias=False)
    out_shape, params, _ = layer.init(jax.random.key(0), ((3, 4), (5, 6)))
    assert out_shape == (3, 4)
    assert _shapes(params) == {"wq": (4, 4), "wk": (6, 4), "wv": (6, 4), "wo": (4, 4)}
    x_q, x_kv = normal(1, 2, 3, 4), normal(2, 2, 5, 6)
    pad = jnp.asarray([[True] * 5, [True, True, False, False, False]])[:, None, :]
    y, _ = layer.apply(params, {}, (x_q, x_kv), mask=pad)
    # padded positions do not matter
    x_kv2 = x_kv.at[1, 2:].set(100.0)
    y2, _ = layer.apply(params, {}, (x_q, x_kv2), mask=pad)
    np.testing.assert_allclose(y2, y, rtol=1e-6)


def test_multi_head_attention_layer_errors():
    with pytest.raises(ValueError, match=r"MultiHeadAttention: num_heads=3 must divide "
                                         r"features=4 \(the default, d_q\)"):
        layers.MultiHeadAttention(3).init(jax.random.key(0), (5, 4))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: input_shape must be \(T, d\) "
                                         r"for self-attention or \(\(T, d_q\), \(S, d_kv\)\)"):
        layers.MultiHeadAttention(1).init(jax.random.key(0), (4,))
    layer = layers.MultiHeadAttention(2)
    _, params, _ = layer.init(jax.random.key(0), (5, 4))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: x has shape \(2, 5, 6\) but the "
                                         r"layer was built for 4 features"):
        layer.apply(params, {}, normal(0, 2, 5, 6))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: num_heads must be a positive "
                                         r"int, got 0"):
        layers.MultiHeadAttention(0)


# --------------------------------------------------------------------------- #
# LuongAttention
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind,extra", [("dot", {}), ("general", {"w_a": (4, 4)}),
                                        ("concat", {"w_a": (8, 3), "v_a": (3,)})])
def test_luong_attention_layer(kind, extra):
    layer = layers.LuongAttention(kind, out_features=6, attention_size=3, return_weights=True)
    out_shape, params, _ = layer.init(jax.random.key(0), ((4,), (5, 4)))
    assert out_shape == ((6,), (5,))
    assert _shapes(params) == {**extra, "w_c": (8, 6)}
    h_t, h_bar = normal(1, 2, 4), normal(2, 2, 5, 4)
    mask = jnp.asarray([[True] * 5, [True, False, True, False, False]])
    (h_tilde, weights), _ = layer.apply(params, {}, (h_t, h_bar), mask=mask)
    score = [params[n] for n in ("w_a", "v_a") if n in params]
    context, want_w = ops.luong_attention(h_t, h_bar, *score, kind=kind, mask=mask)
    np.testing.assert_allclose(weights, want_w, rtol=1e-6)
    np.testing.assert_allclose(h_tilde, ops.luong_attentional_state(context, h_t, params["w_c"]),
                               rtol=1e-6)
    assert np.all(np.asarray(weights)[~np.asarray(mask)] == 0)


def test_luong_attention_layer_errors():
    with pytest.raises(ValueError, match=r"LuongAttention: kind='dot' needs d = d̄, got h_t size "
                                         r"4 and h_bar size 3"):
        layers.LuongAttention("dot").init(jax.random.key(0), ((4,), (5, 3)))
    with pytest.raises(ValueError, match=r"LuongAttention: kind must be one of \('dot', "
                                         r"'general', 'concat'\), got 'location'"):
        layers.LuongAttention("location")
    layer = layers.LuongAttention("general")
    _, params, _ = layer.init(jax.random.key(0), ((4,), (5, 3)))
    with pytest.raises(TypeError, match=r"LuongAttention: x must be the pair \(h_t, h_bar\)"):
        layer.apply(params, {}, normal(0, 2, 4))


# --------------------------------------------------------------------------- #
# RNN, LSTM, GRU
# --------------------------------------------------------------------------- #

_SEQ = {"RNN": (ops.rnn, 1, ("b",)), "LSTM": (ops.lstm, 4, ("b",)),
        "GRU": (ops.gru, 3, ("bx", "bh"))}


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_recurrent_layers_wrap_the_sequence_ops(name, return_sequences):
    run, gates, biases = _SEQ[name]
    layer = getattr(layers, name)(5, return_sequences=return_sequences, reverse=True)
    out_shape, params, state = layer.init(jax.random.key(0), (4, 3))
    assert out_shape == ((4, 5) if return_sequences else (5,))
    assert _shapes(params) == {"wx": (3, gates * 5), "wh": (5, gates * 5),
                               **{b: (gates * 5,) for b in biases}}
    x = normal(1, 2, 4, 3)
    y, _ = jax.jit(layer.apply)(params, state, x)
    zeros = jnp.zeros((2, 5), jnp.float32)
    h0 = (zeros, zeros) if name == "LSTM" else zeros
    hs, final = run(x, h0, params["wx"], params["wh"], *(params[b] for b in biases), reverse=True)
    want = hs if return_sequences else (final[0] if name == "LSTM" else final)
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_lstm_forget_bias_and_orthogonal_recurrent_kernel():
    _, params, _ = layers.LSTM(4, forget_bias=1.0).init(jax.random.key(0), (3, 2))
    np.testing.assert_array_equal(params["b"], [0] * 4 + [1] * 4 + [0] * 8)
    wh = np.asarray(params["wh"], np.float64)                    # H×4H, orthonormal rows
    np.testing.assert_allclose(wh @ wh.T, np.eye(4), atol=1e-5)


def test_initial_state_is_used():
    layer = layers.GRU(3, return_sequences=False)
    _, params, _ = layer.init(jax.random.key(0), (2, 2))
    x = normal(1, 2, 2, 2)
    y0, _ = layer.apply(params, {}, x)
    y1, _ = layer.apply(params, {}, x, initial_state=jnp.ones((2, 3), jnp.float32))
    assert not np.allclose(y0, y1)


def test_recurrent_layer_errors():
    with pytest.raises(ValueError, match=r"LSTM: hidden must be a positive int, got 0"):
        layers.LSTM(0)
    with pytest.raises(ValueError, match=r"RNN: input_shape must be \(T, D\) \(steps, features\) "
                                         r"without the batch axis, got \(3,\)"):
        layers.RNN(4).init(jax.random.key(0), (3,))
    layer = layers.GRU(4)
    _, params, _ = layer.init(jax.random.key(0), (3, 2))
    with pytest.raises(ValueError, match=r"GRU: input has shape \(5, 2\) but the layer was built "
                                         r"for 2 features; expected \(batch, T, 2\)"):
        layer.apply(params, {}, normal(0, 5, 2))


@pytest.mark.x64
def test_a_recurrent_model_in_serial_gradient_manual_vs_autodiff():
    """serial(LSTM → last h → Dense): the whole model's gradient with the manual
    rules equals pure autodiff (float64)."""
    model = layers.serial(layers.LSTM(4, return_sequences=False, dtype=jnp.float64),
                          layers.Dense(3, dtype=jnp.float64))
    _, params, state = model.init(jax.random.key(0), (5, 2))
    x = normal(1, 6, 5, 2, dtype=jnp.float64)
    labels = jnp.asarray([0, 1, 2, 0, 1, 2])

    def loss(params, x, labels):
        return softmax_cross_entropy(model.apply(params, state, x)[0], labels)

    report = check.model(loss, params, x, labels, finite_differences=False).raise_if_failed()
    assert report.worst("autodiff") <= 1e-10
