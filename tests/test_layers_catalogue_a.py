"""Layer wrappers over the conv, pool, norm and embedding primitives.

The primitives' gradients are checked by tests/test_primitives.py and
tests/test_ops_*.py; here: shapes through init, apply equal to the op, BatchNorm's
running statistics, a small CNN's whole-model gradient, and validation messages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl import check, layers, ops
from fdl.losses import softmax_cross_entropy
from conftest import normal

KEY = jax.random.key(0)


@pytest.mark.parametrize(
    "layer, input_shape, out_shape",
    [
        (layers.Conv2D(4, 3), (7, 6, 2), (7, 6, 4)),
        (layers.Conv2D(4, (3, 2), stride=2, padding="VALID"), (7, 6, 2), (3, 3, 4)),
        (layers.Conv2D(1, 3, padding=((1, 0), (2, 2)), dilation=2), (7, 6, 1), (4, 6, 1)),
        (layers.Conv1D(5, 3, stride=2), (9, 2), (5, 5)),
        (layers.Conv1D(5, 4, padding="VALID", dilation=2), (9, 2), (3, 5)),
        (layers.MaxPool2D(2), (7, 6, 3), (3, 3, 3)),
        (layers.MaxPool2D(3, stride=1, padding="SAME"), (7, 6, 3), (7, 6, 3)),
        (layers.AvgPool2D((2, 3), stride=(1, 2)), (7, 6, 3), (6, 2, 3)),
        (layers.GlobalAvgPool(), (7, 6, 3), (3,)),
        (layers.BatchNorm(), (7, 6, 3), (7, 6, 3)),
        (layers.LayerNorm(), (5, 8), (5, 8)),
        (layers.RMSNorm(), (8,), (8,)),
        (layers.Embedding(10, 4), (6,), (6, 4)),
    ],
)
def test_init_shapes_agree_with_apply(layer, input_shape, out_shape):
    shape, params, state = layer.init(KEY, input_shape)
    assert shape == out_shape
    if isinstance(layer, layers.Layer) and layer.name == "embedding":
        x = jnp.asarray(np.random.default_rng(0).integers(0, 10, (2,) + input_shape))
    else:
        x = normal(0, 2, *input_shape)
    y, new_state = jax.jit(lambda p, s, x: layer.apply(p, s, x, train=True))(params, state, x)
    assert y.shape == (2,) + out_shape
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)


def test_conv_and_pool_layers_apply_their_ops():
    conv = layers.Conv2D(3, (2, 3), stride=(1, 2), padding="VALID")
    _, params, _ = conv.init(KEY, (5, 6, 2))
    assert params["w"].shape == (2, 3, 2, 3) and params["b"].shape == (3,)
    x = normal(1, 2, 5, 6, 2)
    y, _ = conv.apply(params, {}, x)
    np.testing.assert_array_equal(y, ops.conv2d(x, params["w"], params["b"], (1, 2), "VALID"))
    y, _ = layers.MaxPool2D(2, padding="SAME").apply({}, {}, x)
    np.testing.assert_array_equal(y, ops.max_pool2d(x, 2, None, "SAME"))
    y, _ = layers.GlobalAvgPool().apply({}, {}, x)
    np.testing.assert_allclose(y, x.mean(axis=(1, 2)), rtol=1e-6)


def test_batch_norm_running_statistics_train_and_eval():
    bn = layers.BatchNorm(momentum=0.8, eps=1e-5)
    _, params, state = bn.init(KEY, (3,))
    np.testing.assert_array_equal(state["mean"], 0.0)
    np.testing.assert_array_equal(state["var"], 1.0)
    x = normal(2, 16, 3) * 2.0 + 5.0
    step = jax.jit(lambda p, s, x: bn.apply(p, s, x, train=True))
    y, new = step(params, state, x)
    # training output: batch statistics, zero mean and unit variance per channel
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(new["mean"], 0.2 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.8 + 0.2 * x.var(0, ddof=1), rtol=1e-5)
    # repeated steps on the same batch: running statistics converge to the batch's
    s = state
    for _ in range(60):
        _, s = step(params, s, x)
    np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(s["var"], x.var(0, ddof=1), rtol=1e-4)
    # inference uses the running statistics and leaves them unchanged
    y_eval, s_eval = bn.apply(params, s, x, train=False)
    assert s_eval is s
    expected = ops.batch_norm_inference(x, params["gamma"], params["beta"], s["mean"],
                                        s["var"], 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-6)


def test_batch_norm_state_gets_no_gradient_and_params_do():
    bn = layers.BatchNorm()
    _, params, state = bn.init(KEY, (4, 4, 2))
    x = normal(3, 3, 4, 4, 2)

    def loss(params, state):
        y, new_state = bn.apply(params, state, x, train=True)
        return jnp.sum(y * y * jnp.arange(1.0, 3.0).reshape(1, 1, 1, 2)) + \
            jnp.sum(new_state["mean"]) + jnp.sum(new_state["var"])

    g_params, g_state = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, state)
    assert float(jnp.abs(g_params["gamma"]).sum()) > 0
    # the state path is momentum·old only; the batch statistics are stop_gradient-ed
    np.testing.assert_allclose(g_state["mean"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(g_state["var"], 0.9, rtol=1e-6)


def test_layer_norm_rms_norm_embedding_apply_their_ops():
    x = normal(4, 2, 5, 6)
    _, params, _ = layers.LayerNorm(eps=1e-3).init(KEY, (5, 6))
    params = {"gamma": normal(5, 6), "beta": normal(6, 6)}
    y, _ = layers.LayerNorm(eps=1e-3).apply(params, {}, x)
    np.testing.assert_array_equal(y, ops.layer_norm(x, params["gamma"], params["beta"], 1e-3))
    y, _ = layers.RMSNorm().apply({"gamma": params["gamma"]}, {}, x)
    np.testing.assert_array_equal(y, ops.rms_norm(x, params["gamma"], 1e-6))
    emb = layers.Embedding(7, 3)
    _, params, _ = emb.init(KEY, (4,))
    assert params["table"].shape == (7, 3)
    assert 0.5 < float(jnp.std(layers.Embedding(100, 50).init(KEY, ())[1]["table"])) < 1.5
    ids = jnp.array([[0, 6, 6, 2], [1, 1, 1, 1]])
    y, _ = emb.apply(params, {}, ids)
    np.testing.assert_array_equal(y, params["table"][ids])


@pytest.mark.x64
def test_small_cnn_gradient_manual_vs_autodiff():
    """serial(Conv2D → BatchNorm → ReLU → MaxPool → Conv2D → LayerNorm → AvgPool →
    GlobalAvgPool → Dense): the whole model's gradient with the manual rules equals
    pure autodiff (float64)."""
    f64 = jnp.float64
    model = layers.serial(
        layers.Conv2D(3, 3, dtype=f64), layers.BatchNorm(dtype=f64), layers.Relu(),
        layers.MaxPool2D(2), layers.Conv2D(4, 2, stride=2, padding="VALID", dtype=f64),
        layers.LayerNorm(dtype=f64), layers.AvgPool2D(2, stride=1, padding="SAME"),
        layers.GlobalAvgPool(),
        layers.Dense(3, dtype=f64))
    out_shape, params, state = model.init(KEY, (8, 8, 2))
    assert out_shape == (3,)
    x = normal(7, 4, 8, 8, 2, dtype=f64)
    labels = jnp.array([0, 1, 2, 1])

    def loss(params, x, labels):
        logits, _ = model.apply(params, state, x, train=True)
        return softmax_cross_entropy(logits, labels)

    # (the first conv's bias has a zero gradient: batch norm removes any per-channel
    # shift; both modes give it at rounding level, so no bound on its relative error)
    check.model(loss, params, x, labels, finite_differences=False).raise_if_failed()


@pytest.mark.x64
def test_sequence_model_with_embedding_conv1d_rms_norm():
    f64 = jnp.float64
    model = layers.serial(layers.Embedding(11, 4, dtype=f64), layers.Conv1D(5, 3, dtype=f64),
                          layers.RMSNorm(dtype=f64), layers.Flatten(), layers.Dense(2, dtype=f64))
    _, params, state = model.init(KEY, (6,))
    ids = jnp.asarray(np.random.default_rng(8).integers(0, 11, (3, 6)))

    def loss(params, ids):
        return softmax_cross_entropy(model.apply(params, state, ids)[0], jnp.array([0, 1, 1]))

    check.model(loss, params, ids, finite_differences=False).raise_if_failed()


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: layers.Conv2D(0, 3), ValueError, r"Conv2D: features must be a positive int"),
        (lambda: layers.Conv2D(4, (3, 3, 3)), ValueError,
         r"Conv2D: kernel_size must be a positive int or a sequence of 2"),
        (lambda: layers.Conv2D(4, 3, padding="same"), ValueError, r"did you mean 'SAME'"),
        (lambda: layers.Conv1D(4, 3, stride=0), ValueError, r"Conv1D: stride must be"),
        (lambda: layers.MaxPool2D(2, padding=((2, 0), (0, 0))), ValueError,
         r"MaxPool2D: padding \(2, 0\) along H must be smaller than the window \(2\)"),
        (lambda: layers.AvgPool2D(2, padding="FULL"), ValueError, r"AvgPool2D: padding must be"),
        (lambda: layers.BatchNorm(momentum=1.0), ValueError,
         r"BatchNorm: momentum .* must be in \[0, 1\), got 1.0"),
        (lambda: layers.LayerNorm(eps=0), ValueError,
         r"LayerNorm: eps must be > 0, got 0"),
        (lambda: layers.Embedding(0, 3), ValueError, r"Embedding: vocab_size must be a positive"),
    ],
)
def test_construction_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "layer, input_shape, match",
    [
        (layers.Conv2D(4, 3), (7, 6), r"Conv2D: input_shape must be \(H, W, C\) without the "
                                      r"batch axis, got \(7, 6\)"),
        (layers.Conv2D(4, 5, padding="VALID"), (4, 6, 1),
         r"Conv2D: along H the window spans 5 but the padded input has only 4"),
        (layers.Conv1D(4, 3), (7, 6, 2), r"Conv1D: input_shape must be \(L, C\)"),
        (layers.MaxPool2D(3), (2, 6, 1), r"MaxPool2D: along H the window spans 3"),
        (layers.BatchNorm(), (), r"BatchNorm: input_shape must be \(…, C\)"),
    ],
)
def test_init_errors(layer, input_shape, match):
    with pytest.raises(ValueError, match=match):
        layer.init(KEY, input_shape)


def test_apply_errors_name_the_layer_and_the_expected_shape():
    conv = layers.Conv2D(4, 3)
    _, params, _ = conv.init(KEY, (6, 6, 3))
    with pytest.raises(ValueError, match=r"Conv2D: input has shape \(2, 6, 6, 2\) but the layer "
                                         r"was built for \(batch, H, W, 3\)"):
        conv.apply(params, {}, jnp.ones((2, 6, 6, 2)))
    bn = layers.BatchNorm()
    _, params, state = bn.init(KEY, (3,))
    with pytest.raises(ValueError, match=r"BatchNorm: input has shape \(4, 5\) but the layer was "
                                         r"built for 3 channels"):
        bn.apply(params, state, jnp.ones((4, 5)), train=True)
    with pytest.raises(ValueError, match=r"MaxPool2D: input must be a batch of NHWC images"):
        layers.MaxPool2D(2).apply({}, {}, jnp.ones((4, 4, 1)))
