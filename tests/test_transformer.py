"""Transformer blocks (fdl.layers.transformer): causality, variable lengths, manual vs
autodiff, weight tying, post-norm and RMS variants, validation, and PyTorch's encoder
layer mapped onto a block (optional: needs torch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check
from fdl import layers as L

D, H, F, T, N = 8, 2, 16, 5, 3


def _block_params(block, shape=(T, D), seed=0):
    _, params, state = block.init(jax.random.key(seed), shape)
    # non-trivial norms and biases, so the checks see every parameter
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves), state


@pytest.mark.x64
@pytest.mark.parametrize("block", [
    L.TransformerDecoderBlock(D, H, F, dtype=jnp.float64),
    L.TransformerEncoderBlock(D, H, F, causal=True, rope=True, norm="rms", dtype=jnp.float64),
], ids=["decoder", "encoder-causal-rope-rms"])
def test_a_causal_block_output_at_t_does_not_depend_on_later_inputs(block):
    params, state = _block_params(block)
    x = jax.random.normal(jax.random.key(2), (1, T, D), jnp.float64)
    jac = jax.jacrev(lambda x: block.apply(params, state, x)[0][0])(x)[:, :, 0]  # T×D×T×D
    for t in range(T):
        assert np.all(jac[t, :, t + 1:, :] == 0.0), t       # exactly zero: never read
        assert np.abs(jac[t, :, : t + 1, :]).max() > 1e-3   # the past is read


@pytest.mark.x64
@pytest.mark.parametrize("pre_norm", [True, False])
def test_lengths_give_each_sequence_what_it_gets_alone_and_padding_zero(pre_norm):
    block = L.TransformerEncoderBlock(D, H, F, pre_norm=pre_norm, dtype=jnp.float64)
    params, state = _block_params(block)
    x = np.array(jax.random.normal(jax.random.key(3), (N, T, D), jnp.float64))
    lengths = np.array([5, 2, 3], np.int32)
    x[1, 2:] = np.nan  # padding never reaches a valid position
    y, _ = block.apply(params, state, jnp.asarray(x), lengths=jnp.asarray(lengths))
    for n, ell in enumerate(lengths):
        alone, _ = block.apply(params, state, jnp.asarray(x[n:n + 1, :ell]))
        np.testing.assert_allclose(y[n, :ell], alone[0], rtol=1e-12, atol=1e-13)
        assert np.all(np.asarray(y[n, ell:]) == 0.0)
    g = jax.grad(lambda x: jnp.sum(jnp.sin(block.apply(params, state, x,
                                                        lengths=jnp.asarray(lengths))[0])))(
        jnp.asarray(np.nan_to_num(x)))
    pad = np.arange(T)[None, :] >= lengths[:, None]
    assert np.all(np.asarray(g)[pad] == 0.0) and np.all(np.asarray(g)[~pad] != 0.0)


@pytest.mark.x64
def test_decoder_with_cross_attention_honours_memory_lengths():
    block = L.TransformerDecoderBlock(D, H, F, cross_attention=True, dtype=jnp.float64)
    params, state = _block_params(block, ((T, D), (4, 6)))
    x = jax.random.normal(jax.random.key(4), (2, T, D), jnp.float64)
    memory = np.array(jax.random.normal(jax.random.key(5), (2, 4, 6), jnp.float64))
    mem_lengths = jnp.asarray([4, 2], jnp.int32)
    y, _ = block.apply(params, state, (x, jnp.asarray(memory)), memory_lengths=mem_lengths)
    memory[1, 2:] = np.nan  # the encoder's padding (even NaN) changes nothing
    y2, _ = block.apply(params, state, (x, jnp.asarray(memory)), memory_lengths=mem_lengths)
    np.testing.assert_array_equal(y, y2)
    alone, _ = block.apply(params, state, (x[1:], jnp.asarray(memory[1:, :2])))
    np.testing.assert_allclose(y[1], alone[0], rtol=1e-12, atol=1e-13)


@pytest.mark.x64
@pytest.mark.parametrize("block,shape,inputs", [
    (L.TransformerEncoderBlock(D, H, F, activation="relu", dtype=jnp.float64), (T, D), "x"),
    (L.TransformerEncoderBlock(D, H, F, pre_norm=False, norm="rms", rope=True,
                               dtype=jnp.float64), (T, D), "x"),
    (L.TransformerDecoderBlock(D, H, F, cross_attention=True, activation="silu",
                               dtype=jnp.float64), ((T, D), (4, 6)), "pair"),
], ids=["encoder", "post-norm-rms-rope", "decoder-cross"])
def test_block_gradient_manual_equals_autodiff_and_finite_differences(block, shape, inputs):
    params, state = _block_params(block, shape)
    x = jax.random.normal(jax.random.key(6), (2, T, D), jnp.float64)
    if inputs == "pair":
        x = (x, jax.random.normal(jax.random.key(7), (2, 4, 6), jnp.float64))
    lengths = jnp.asarray([5, 3], jnp.int32)

    def loss(params, x):
        y, _ = block.apply(params, state, x, lengths=lengths)
        return jnp.sum(jnp.sin(y))

    check.model(loss, params, x).raise_if_failed()


@pytest.mark.x64
def test_tied_embedding_gradient_is_the_sum_of_both_uses():
    lm = L.TransformerLM(7, D, H, F, 2, dtype=jnp.float64)
    _, params, state = lm.init(jax.random.key(8), (T,))
    ids = jnp.asarray([[0, 1, 2, 1, 0], [2, 2, 1, 0, 1]], jnp.int32)  # ids 3…6 never input
    targets = jnp.asarray([[1, 2, 1, 0, 3], [2, 1, 0, 1, 6]], jnp.int32)

    def loss(params):
        logits, _ = lm.apply(params, state, ids)
        return fdl.losses.softmax_cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))

    g = jax.grad(loss)(params)["embed"]["table"]

    # the same model with the two uses of the table as separate arguments
    def split(table_in, table_out):
        x = fdl.ops.embedding(ids, table_in) * jnp.sqrt(jnp.float64(D))
        x, _ = lm_blocks.apply(params["blocks"], {}, x)
        x = fdl.ops.layer_norm(x, params["norm"]["gamma"], params["norm"]["beta"])
        logits = L.tied_logits(x, table_out)
        return fdl.losses.softmax_cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))

    lm_blocks = L.scan_layers(L.TransformerEncoderBlock(D, H, F, causal=True, rope=True), 2)
    table = params["embed"]["table"]
    np.testing.assert_allclose(split(table, table), loss(params), rtol=1e-14)
    g_in, g_out = jax.grad(split, argnums=(0, 1))(table, table)
    np.testing.assert_allclose(g, g_in + g_out, rtol=1e-12, atol=1e-14)
    assert np.all(np.asarray(g_in)[3:] == 0.0) and np.abs(np.asarray(g_out)[3:]).min() > 0


@pytest.mark.float32
def test_float32_lm_trains_a_step_and_untied_head_has_its_own_params():
    lm = L.TransformerLM(5, D, H, F, 2, tie_embeddings=False, positional="sinusoidal",
                         dropout=0.1, attention_dropout=0.1)
    shape, params, state = lm.init(jax.random.key(9), (T,))
    assert shape == (T, 5) and params["head"]["w"].shape == (D, 5)
    assert params["blocks"]["linear1"]["w"].shape == (2, D, F)
    ids = jnp.zeros((2, T), jnp.int32)
    y, _ = lm.apply(params, state, ids, key=jax.random.key(1), train=True)
    assert y.shape == (2, T, 5) and y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all()
    with pytest.raises(ValueError, match="TransformerLM: train=True with dropout needs a PRNG key"):
        lm.apply(params, state, ids, train=True)


@pytest.mark.parametrize("make,message", [
    (lambda: L.TransformerEncoderBlock(10, 3, 8), "num_heads=3 must divide d_model=10"),
    (lambda: L.TransformerEncoderBlock(8, 2, 8, norm="batch"), "norm must be one of"),
    (lambda: L.TransformerEncoderBlock(8, 2, 8, activation="tanh"), "activation must be one of"),
    (lambda: L.TransformerEncoderBlock(8, 2, 8, dropout=1.0), r"dropout .* must be in \[0, 1\)"),
    (lambda: L.TransformerEncoderBlock(6, 2, 8, rope=True), "rope=True needs an even head size"),
    (lambda: L.TransformerLM(5, 8, 2, 8, 1, positional="learned"), "positional must be"),
])
def test_bad_configurations_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_inputs_and_lengths_are_named():
    block = L.TransformerEncoderBlock(D, H, F)
    _, params, state = block.init(jax.random.key(0), (T, D))
    with pytest.raises(ValueError, match=r"TransformerEncoderBlock: x has shape \(2, 5, 4\) "
                                         "but the block was built for d_model=8"):
        block.apply(params, state, jnp.ones((2, T, 4)))
    with pytest.raises(ValueError, match=r"TransformerEncoderBlock: every lengths entry must be "
                                         r"in \[1, T\] = \[1, 5\].*got 6"):
        block.apply(params, state, jnp.ones((2, T, D)), lengths=jnp.asarray([6, 1]))
    with pytest.raises(TypeError, match="lengths must be an integer array"):
        block.apply(params, state, jnp.ones((2, T, D)), lengths=jnp.asarray([2.0, 1.0]))


@pytest.mark.x64
@pytest.mark.parametrize("norm_first", [True, False])
def test_pytorch_encoder_layer_maps_onto_a_block(norm_first):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(D, H, F, dropout=0.0, activation="gelu",
                                             norm_first=norm_first, batch_first=True,
                                             dtype=torch.float64)
    with torch.no_grad():  # non-trivial norms and biases
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    params = L.from_torch_encoder_layer(
        {k: v.detach().numpy() for k, v in layer.state_dict().items()}, dtype=jnp.float64)
    block = L.TransformerEncoderBlock(D, H, F, activation="gelu", pre_norm=norm_first,
                                      dtype=jnp.float64)
    x = np.random.default_rng(0).standard_normal((2, T, D))
    lengths = np.array([5, 3])
    pad = np.arange(T)[None, :] >= lengths[:, None]
    xt = torch.tensor(x, requires_grad=True)
    yt = layer(xt, src_key_padding_mask=torch.tensor(pad))
    weights = np.random.default_rng(1).standard_normal(yt.shape)
    valid = torch.tensor(~pad)[..., None]
    (yt * torch.tensor(weights) * valid).sum().backward()

    def loss(params, x):
        y, _ = block.apply(params, {}, x, lengths=jnp.asarray(lengths, jnp.int32))
        return jnp.sum(y * weights), y

    (_, y), (g_params, g_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y)[~pad], yt.detach().numpy()[~pad], rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(g_x)[~pad], xt.grad.numpy()[~pad], rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(g_params["linear1"]["w"], layer.linear1.weight.grad.numpy().T,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_params["self_attn"]["wq"],
                               layer.self_attn.in_proj_weight.grad.numpy()[:D].T, rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(g_params["norm1"]["gamma"], layer.norm1.weight.grad.numpy(),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.x64
def test_forward_mode_through_a_block_and_a_padded_lstm_runs_the_tangent_rules():
    block = L.TransformerEncoderBlock(D, H, F, causal=True, rope=True, dtype=jnp.float64)
    params, state = _block_params(block)
    lstm = L.LSTM(3, bidirectional=True, dtype=jnp.float64)
    _, lstm_params, _ = lstm.init(jax.random.key(9), (T, D))
    lengths = jnp.asarray([5, 2], jnp.int32)

    def f(x, params, lstm_params):
        y, _ = block.apply(params, state, x, lengths=lengths)
        return lstm.apply(lstm_params, {}, y, lengths=lengths)[0]

    x = jax.random.normal(jax.random.key(10), (2, T, D), jnp.float64)
    check.jvp(f, x, params, lstm_params).raise_if_failed()


@pytest.mark.x64
@pytest.mark.parametrize("norm_first", [True, False])
def test_pytorch_decoder_layer_maps_onto_a_decoder_block_with_cross_attention(norm_first):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    layer = torch.nn.TransformerDecoderLayer(D, H, F, dropout=0.0, activation="relu",
                                             norm_first=norm_first, batch_first=True,
                                             dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    params = L.from_torch_decoder_layer(
        {k: v.detach().numpy() for k, v in layer.state_dict().items()}, dtype=jnp.float64)
    block = L.TransformerDecoderBlock(D, H, F, cross_attention=True, activation="relu",
                                      pre_norm=norm_first, dtype=jnp.float64)
    rng = np.random.default_rng(2)
    x, memory = rng.standard_normal((2, T, D)), rng.standard_normal((2, 4, D))
    mem_lengths = np.array([4, 2])
    causal = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)
    xt = torch.tensor(x, requires_grad=True)
    mt = torch.tensor(memory, requires_grad=True)
    yt = layer(xt, mt, tgt_mask=causal, tgt_is_causal=True,
               memory_key_padding_mask=torch.tensor(np.arange(4)[None] >= mem_lengths[:, None]))
    weights = rng.standard_normal(yt.shape)
    (yt * torch.tensor(weights)).sum().backward()

    def loss(params, x, memory):
        y, _ = block.apply(params, {}, (x, memory),
                           memory_lengths=jnp.asarray(mem_lengths, jnp.int32))
        return jnp.sum(y * weights), y

    (_, y), (g_params, g_x, g_m) = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        params, jnp.asarray(x), jnp.asarray(memory))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_x, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_m, mt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_params["cross_attn"]["wk"],
                               layer.multihead_attn.in_proj_weight.grad.numpy()[D:2 * D].T,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_params["norm3"]["gamma"], layer.norm3.weight.grad.numpy(),
                               rtol=1e-9, atol=1e-12)
