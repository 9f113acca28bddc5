"""fdl.ops.ghost and fdl.privacy on every layer with weights: convolutions, embeddings,
layer/RMS norms, multi-head attention, recurrent cells.

Every ghost norm is compared with the norm of materialised per-example gradients
(``vmap`` of ``grad`` of one example's loss, the independent reference): float64
within 1e-10 relative, float32 within 1e-5. The ghost primitives' other cotangents
are compared with the ordinary primitives' gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
import fdl.privacy as P
from conftest import normal
from fdl import ops
from fdl import layers as L
from fdl.layers import Layer
from fdl.ops import ghost
from test_privacy import _ce_per_example, _ce_per_sequence, _materialised, _norms_of

KEY = jax.random.key(0)


def _init(model, input_shape, dtype, seed=0):
    """Params drawn from numpy with the shapes ``init`` gives: matrices
    ``N(0, 1/fan_in)``, vectors ``N(0, 0.1²)`` (plus 1 for norm scales)."""
    params, state = jax.eval_shape(lambda k: model.init(k, input_shape)[1:], KEY)
    flat, tree = jax.tree_util.tree_flatten_with_path(params)
    leaves = []
    for i, (path, a) in enumerate(flat):
        fan_in = int(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 1
        scale = 0.1 if len(a.shape) == 1 else 1 / np.sqrt(fan_in)
        loc = 1.0 if getattr(path[-1], "key", None) == "gamma" else 0.0
        leaves.append(normal(seed + i, *a.shape, dtype=dtype, scale=scale, loc=loc))
    return jax.tree_util.tree_unflatten(tree, leaves), state


_per_example, _per_sequence = _ce_per_example, _ce_per_sequence


def _mean_over_time():
    return L.stateless("mean_pool", lambda x: jnp.mean(x, axis=1),
                       lambda shape: tuple(shape[1:]))


# --------------------------------------------------------------------------- #
# Models: each layer kind, each branch of the norm forms
# --------------------------------------------------------------------------- #


def _cnn():  # the benchmark's shape, small: SAME conv, pool, VALID conv, dense
    return L.serial(L.Conv2D(4, 3), L.Relu(), L.MaxPool2D(2), L.Conv2D(5, 3, padding="VALID"),
                    L.Relu(), L.Flatten(), L.Dense(3))


def _conv_geometry():  # strides, explicit asymmetric padding, dilation; a 1×1 conv
    return L.serial(L.Conv2D(3, (2, 3), stride=(2, 1), padding=((1, 2), (0, 1)),
                             dilation=(1, 2)), L.Tanh(), L.Conv2D(2, 1), L.Flatten(),
                    L.Dense(3))


def _conv_groups():  # grouped (2 groups) and depthwise (4 groups) convolutions
    return L.serial(L.Conv2D(4, 3, groups=2), L.Tanh(), L.Conv2D(4, 2, groups=4, stride=2),
                    L.Flatten(), L.Dense(3))


def _conv1d():
    return L.serial(L.Conv1D(4, 3), L.Tanh(),
                    L.Conv1D(3, 2, stride=2, padding="VALID", dilation=2), L.Flatten(),
                    L.Dense(3))


def _lstm_lm():  # V = 7 ≤ T² = 36: the embedding's direct (scatter) form
    return L.serial(L.Embedding(7, 5), L.LSTM(6), L.Dense(7))


def _embedding_gram():  # V = 50 > T² = 25: the repeated-index (Gram) form
    return L.serial(L.Embedding(50, 4), L.Tanh(), _mean_over_time(), L.Dense(3))


def _embedding_one_token():  # one id per example: ‖g‖²
    return L.serial(L.Embedding(9, 4), L.Tanh(), L.Dense(3))


def _gru_rnn():
    return L.serial(L.GRU(5), L.RNN(4, return_sequences=False, reverse=True), L.Dense(3))


def _encoder(use_bias=True, causal=False):  # a pre-norm transformer block, mean-pooled
    attend = L.serial(L.LayerNorm(), L.MultiHeadAttention(2, causal=causal, use_bias=use_bias))
    mlp = L.serial(L.RMSNorm(), L.Dense(12), L.Gelu(), L.Dense(6))
    return L.serial(L.Dense(6), L.residual(attend), L.residual(mlp), _mean_over_time(),
                    L.Dense(3))


def _blocks(norm="layer", causal=False):  # fdl.layers' transformer blocks
    return L.serial(L.Dense(6), L.TransformerEncoderBlock(6, 2, 10, norm=norm, causal=causal),
                    L.TransformerEncoderBlock(6, 3, 8, norm=norm), _mean_over_time(),
                    L.Dense(3))


def _ids(seed, shape, vocab):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# name: (model, example input shape, inputs(dtype), targets, loss)
CASES = {
    "cnn": (_cnn, (8, 8, 2), lambda d: normal(7, 5, 8, 8, 2, dtype=d),
            _ids(8, (5,), 3), _per_example),
    "conv-geometry": (_conv_geometry, (7, 8, 2), lambda d: normal(7, 4, 7, 8, 2, dtype=d),
                      _ids(8, (4,), 3), _per_example),
    "conv-groups": (_conv_groups, (6, 6, 2), lambda d: normal(7, 4, 6, 6, 2, dtype=d),
                    _ids(8, (4,), 3), _per_example),
    "conv1d": (_conv1d, (11, 2), lambda d: normal(7, 4, 11, 2, dtype=d),
               _ids(8, (4,), 3), _per_example),
    "embedding-lstm": (_lstm_lm, (6,), lambda d: _ids(7, (4, 6), 7),
                       _ids(8, (4, 6), 7), _per_sequence),
    "embedding-gram": (_embedding_gram, (5,), lambda d: _ids(9, (4, 5), 50),
                       _ids(8, (4,), 3), _per_example),
    "embedding-one": (_embedding_one_token, (), lambda d: jnp.array([1, 4, 1, 8], jnp.int32),
                      _ids(8, (4,), 3), _per_example),
    "gru-rnn": (_gru_rnn, (5, 3), lambda d: normal(7, 4, 5, 3, dtype=d),
                _ids(8, (4,), 3), _per_example),
    "encoder": (_encoder, (5, 4), lambda d: normal(7, 4, 5, 4, dtype=d),
                _ids(8, (4,), 3), _per_example),
    "encoder-causal-no-bias": (lambda: _encoder(use_bias=False, causal=True), (5, 4),
                               lambda d: normal(7, 4, 5, 4, dtype=d), _ids(8, (4,), 3),
                               _per_example),
    "transformer-blocks": (_blocks, (5, 4), lambda d: normal(7, 4, 5, 4, dtype=d),
                           _ids(8, (4,), 3), _per_example),
    "transformer-blocks-rms-causal": (lambda: _blocks("rms", True), (5, 4),
                                      lambda d: normal(7, 4, 5, 4, dtype=d), _ids(8, (4,), 3),
                                      _per_example),
}


def _case(name, dtype):
    build, shape, inputs, y, loss = CASES[name]
    model = build()
    params, state = _init(model, shape, dtype)
    return model, params, state, inputs(dtype), y, loss


def _ghost_norms(model, params, state, x, y, loss):
    return jax.jit(lambda p, x, y: P.per_example_grad_norms(model, p, state, x, y,
                                                            loss=loss))(params, x, y)


@pytest.mark.parametrize("dtype,rtol", [
    pytest.param(jnp.float64, 1e-10, marks=pytest.mark.x64, id="float64"),
    pytest.param(jnp.float32, 1e-5, marks=pytest.mark.float32, id="float32")])
@pytest.mark.parametrize("name", list(CASES))
def test_ghost_norms_equal_vmap_norms(name, dtype, rtol):
    model, params, state, x, y, loss = _case(name, dtype)
    norms = _ghost_norms(model, params, state, x, y, loss)
    reference = _norms_of(_materialised(model, params, state, x, y, loss))
    assert norms.shape == (x.shape[0],) and norms.dtype == dtype
    np.testing.assert_allclose(norms, reference, rtol=rtol)


def test_every_parameterised_layer_is_counted():
    """Each layer's probe is read by its ghost rule: no layer of the cases is skipped
    (a skipped one would raise) and each layer's share is positive."""
    model, params, state, x, y, loss = _case("encoder", jnp.float32)
    probed = P._with_probes("test", params, x.shape[0])
    total = jax.grad(lambda p: jnp.sum(loss(model.apply(p, state, x)[0], y)))(probed)
    shares = {jax.tree_util.keystr(path[:-1]): leaf for path, leaf in
              jax.tree_util.tree_flatten_with_path(total)[0]
              if getattr(path[-1], "key", None) == "probe"}
    assert len(shares) == 7  # dense, layer norm, attention, rms norm, dense, dense, dense
    assert all(bool(jnp.all(s > 0)) for s in shares.values())


# --------------------------------------------------------------------------- #
# The ghost primitives' ordinary cotangents are the ordinary primitives'
# --------------------------------------------------------------------------- #


def _compare_cotangents(ghost_fn, plain_fn, args, n, rtol):
    """Gradients of ⟨R, sin(f(args))⟩ w.r.t. every float argument, ghost vs plain."""
    out = plain_fn(*args)
    leaves = jax.tree_util.tree_leaves(out)
    r = [normal(20 + i, *a.shape, dtype=a.dtype) for i, a in enumerate(leaves)]

    def scalar(ys):
        return sum(jnp.sum(ri * jnp.sin(yi)) for ri, yi in zip(r, jax.tree_util.tree_leaves(ys)))

    floats = [i for i, a in enumerate(args) if jnp.issubdtype(jnp.result_type(a), jnp.floating)]

    def grads(fn, extra):
        def f(*fl):
            full = list(args)
            for i, a in zip(floats, fl):
                full[i] = a
            return scalar(fn(*full, *extra))
        return jax.jit(jax.grad(f, argnums=tuple(range(len(floats)))))(*(args[i] for i in floats))

    probe = jnp.zeros((n,), leaves[0].dtype)
    got = grads(lambda *a: ghost_fn(*a, probe), ())
    want = grads(plain_fn, ())
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.x64
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_ghost_cotangents_are_bptts(kind, reverse):
    """The ghost backward is its own BPTT (per-example cell rules, weight gradients
    after the scan): equal to the scan-of-cells gradient, final state included."""
    n, t, d, h = 3, 4, 2, 5
    k = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    xs, wx, wh = normal(1, n, t, d), normal(2, d, k * h, scale=0.5), normal(3, h, k * h, scale=0.5)
    state0 = (normal(4, n, h), normal(5, n, h)) if kind == "lstm" else normal(4, n, h)
    biases = (normal(6, k * h),) if kind != "gru" else (normal(6, k * h), normal(7, k * h))
    plain = {"rnn": ops.rnn, "lstm": ops.lstm, "gru": ops.gru}[kind]
    ghosted = {"rnn": ghost.ghost_rnn, "lstm": ghost.ghost_lstm, "gru": ghost.ghost_gru}[kind]
    _compare_cotangents(
        lambda xs, s0, wx, wh, *rest: ghosted(xs, s0, wx, wh, *rest[:-1], rest[-1],
                                              reverse=reverse),
        lambda xs, s0, wx, wh, *b: plain(xs, s0, wx, wh, *b, reverse=reverse),
        (xs, state0, wx, wh, *biases), n, 1e-10)


@pytest.mark.x64
def test_conv_embedding_norm_attention_ghost_cotangents_are_the_primitives():
    x = normal(1, 2, 6, 5, 3)
    w, b = normal(2, 3, 2, 3, 4), normal(3, 4)
    _compare_cotangents(lambda x, w, b, p: ghost.ghost_conv2d(x, w, b, p, 2, "SAME", 1),
                        lambda x, w, b: ops.conv2d(x, w, b, 2, "SAME", 1), (x, w, b), 2, 1e-12)
    _compare_cotangents(ghost.ghost_embedding, ops.embedding,
                        (_ids(0, (2, 4), 6), normal(4, 6, 3)), 2, 1e-12)
    s = normal(5, 2, 4, 3)
    _compare_cotangents(lambda x, g, be, p: ghost.ghost_layer_norm(x, g, be, p, 1e-5),
                        lambda x, g, be: ops.layer_norm(x, g, be, 1e-5),
                        (s, normal(6, 3), normal(7, 3)), 2, 1e-12)
    ws = [normal(10 + i, 3, 4) for i in range(4)]
    _compare_cotangents(
        lambda x, a, b_, c, d, p: ghost.ghost_multi_head_attention(x, x, a, b_, c, d, p, 2),
        lambda x, a, b_, c, d: ops.multi_head_attention(x, x, a, b_, c, d, 2)[..., :4],
        (s, *ws[:3], normal(14, 4, 4)), 2, 1e-12)


@pytest.mark.float32
def test_ghost_primitives_use_their_rule_in_autodiff_mode_too():
    model, params, state, x, y, loss = _case("cnn", jnp.float32)
    manual = _ghost_norms(model, params, state, x, y, loss)
    with fdl.gradient_mode("autodiff"):
        auto = _ghost_norms(model, params, state, x, y, loss)
    np.testing.assert_allclose(auto, manual, rtol=1e-6)


# --------------------------------------------------------------------------- #
# DP-SGD: a tiny clip norm, and a clip norm between the examples' norms
# --------------------------------------------------------------------------- #


@pytest.mark.float32
@pytest.mark.parametrize("name", ["cnn", "embedding-lstm", "transformer-blocks"])
def test_tiny_clip_norm_makes_the_update_the_mean_of_unit_gradients(name):
    """With `C` below every norm, `cᵢ = C/‖gᵢ‖`: the SGD update is
    `−η (C/N) Σᵢ gᵢ/‖gᵢ‖`, each example weighted equally whatever its norm."""
    model, params, state, x, y, loss = _case(name, jnp.float32)
    per_example = _materialised(model, params, state, x, y, loss)
    norms = _norms_of(per_example)
    clip, lr, n = 1e-4, 0.5, x.shape[0]
    assert float(jnp.min(norms)) > 100 * clip
    opt = fdl.optim.sgd(lr)

    @jax.jit
    def update(p):
        out = P.dp_sgd_grads(model, p, state, x, y, key=KEY, loss=loss, clip_norm=clip,
                             noise_multiplier=0.0)
        return opt.update(out.grads, opt.init(p), p)[0], out.norms

    updates, ghost_norms = update(params)
    unit = jax.tree_util.tree_map(
        lambda g: g / norms.reshape((-1,) + (1,) * (g.ndim - 1)), per_example)
    expected = jax.tree_util.tree_map(lambda g: -lr * clip * jnp.sum(g, 0) / n, unit)
    # atol: relative to the whole update (the key bias's gradient is 0 up to rounding:
    # softmax ignores a shift shared by a row's scores)
    scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree_util.tree_leaves(expected))
    for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(ghost_norms, norms, rtol=1e-5)
    # the clipped update is much smaller than the unclipped mean-gradient step
    plain = jax.tree_util.tree_map(lambda g: -lr * jnp.mean(g, 0), per_example)
    assert _total_norm(updates) < 1e-3 * _total_norm(plain)


def _total_norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(tree))))


@pytest.mark.x64
@pytest.mark.parametrize("name", ["cnn", "embedding-lstm", "encoder", "gru-rnn"])
def test_dp_sgd_without_noise_is_the_materialised_clipped_mean(name):
    model, params, state, x, y, loss = _case(name, jnp.float64)
    per_example = _materialised(model, params, state, x, y, loss)
    norms = _norms_of(per_example)
    clip = float(jnp.median(norms))
    c = jnp.minimum(1.0, clip / norms)
    assert 0 < int(jnp.sum(c < 1)) < x.shape[0]
    out = jax.jit(lambda p: P.dp_sgd_grads(model, p, state, x, y, key=KEY, loss=loss,
                                           clip_norm=clip, noise_multiplier=0.0))(params)
    expected = jax.tree_util.tree_map(
        lambda g: jnp.mean(g * c.reshape((-1,) + (1,) * (g.ndim - 1)), 0), per_example)
    for a, b in zip(jax.tree_util.tree_leaves(out.grads), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_ghost_primitives_reject_a_probe_that_is_not_one_per_example():
    x, w, b = normal(0, 3, 5, 5, 2), normal(1, 3, 3, 2, 4), normal(2, 4)
    with pytest.raises(ValueError, match=r"ghost_conv2d: probe must have one entry per "
                                         r"example, shape \(3,\) for an input of shape "
                                         r"\(3, 5, 5, 2\), got shape \(2,\)"):
        ghost.ghost_conv2d(x, w, b, jnp.zeros((2,)))
    with pytest.raises(ValueError, match=r"ghost_lstm: xs must have 3 dimension\(s\) \(N×T×D"):
        ghost.ghost_lstm(jnp.ones((2, 3, 4, 2)), (jnp.zeros((2, 3, 5)),) * 2, jnp.ones((2, 20)),
                         jnp.ones((5, 20)), jnp.ones((20,)), jnp.zeros((2,)))


def test_shared_recurrent_layer_raises():
    lstm = L.LSTM(4)

    def apply(params, state, x, *, key=None, train=False):
        y, _ = lstm.apply(params, state, x)
        return lstm.apply(params, state, y[..., :2])[0], state
    model = L.serial(Layer(lstm.init, apply, "twice"), _mean_over_time(), L.Dense(3))
    params, state = _init(model, (5, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"params\['twice_0'\] is used 2 times"):
        P.per_example_grad_norms(model, params, state, jnp.ones((3, 5, 2)),
                                 jnp.zeros((3,), jnp.int32))
