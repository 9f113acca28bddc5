"""Attention: masked softmax, scaled dot-product, multi-head and Luong attention.

The registry table (tests/test_primitives.py) checks every primitive's rule; here:
closed-form references, mask semantics (fully masked rows are zero, never NaN),
the composites' gradients (manual rules vs autodiff mode vs finite differences),
validation messages, and a toy task an attention model must learn.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check, ops
from fdl.losses import softmax_cross_entropy
from fdl.optim import adam, apply_updates
from conftest import normal

pytestmark = pytest.mark.x64  # float64 rules and closed forms to 1e-10


def _naive_attention(q, k, v, mask):
    """Loops in float64 numpy: the definition, row by row."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    n, t_len, d = q.shape
    out = np.zeros((n, t_len, v.shape[-1]))
    for b in range(n):
        for t in range(t_len):
            allowed = np.asarray(mask[b, t])
            if not allowed.any():
                continue  # fully masked: defined as zero
            s = k[b] @ q[b, t] / math.sqrt(d)
            w = np.where(allowed, np.exp(s - s[allowed].max()), 0.0)
            out[b, t] = (w / w.sum()) @ v[b]
    return out


_MASK = np.array([[[True, False, True, True, False],
                   [False, False, False, False, False],
                   [True, True, True, True, True]],
                  [[False, True, False, False, False],
                   [True, True, False, True, True],
                   [True, False, False, False, True]]])


@pytest.mark.parametrize("masking", ["none", "padding", "full", "causal", "causal+full"])
def test_attention_matches_the_definition(masking):
    t_len = 3
    q, k, v = normal(0, 2, t_len, 4), normal(1, 2, 5, 4), normal(2, 2, 5, 3)
    tril = np.tril(np.ones((t_len, 5), bool))
    mask, causal, effective = None, False, np.ones((2, t_len, 5), bool)
    if masking == "padding":
        mask = jnp.asarray(_MASK[:, 2:3, :])                      # N×1×S
        effective = np.broadcast_to(_MASK[:, 2:3, :], (2, t_len, 5))
    if masking in ("full", "causal+full"):
        mask, effective = jnp.asarray(_MASK), _MASK
    if masking.startswith("causal"):
        causal, effective = True, effective & tril
    got = ops.attention(q, k, v, mask, causal=causal)
    np.testing.assert_allclose(got, _naive_attention(q, k, v, effective), rtol=1e-12, atol=1e-14)


def test_attention_without_mask_is_softmax_of_scaled_scores():
    q, k, v = normal(0, 2, 3, 4), normal(1, 2, 5, 4), normal(2, 2, 5, 3)
    p = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", q, k) / 2.0, axis=-1)
    np.testing.assert_allclose(ops.attention(q, k, v), p @ v, rtol=1e-12)


@pytest.mark.parametrize("mode", ["manual", "autodiff"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_fully_masked_rows_give_zero_output_and_zero_gradient(mode, dtype):
    q, k, v = (normal(i, *s, dtype=dtype) for i, s in enumerate([(2, 3, 4), (2, 5, 4), (2, 5, 3)]))
    mask = jnp.asarray(_MASK)

    def loss(q, k, v):
        return jnp.sum(jnp.sin(ops.attention(q, k, v, mask)))

    with fdl.gradient_mode(mode):
        out = ops.attention(q, k, v, mask)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    assert np.all(np.asarray(out[0, 1]) == 0)                  # the fully masked row
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(grads[0][0, 1]) == 0)             # its query gets no gradient
    # the key/value masked for *every* query (batch 1, s = 2) gets no gradient either
    assert np.all(np.asarray(grads[1][1, 2]) == 0) and np.all(np.asarray(grads[2][1, 2]) == 0)


def test_masked_softmax_rows_sum_to_one_and_vanish_where_masked():
    x = normal(0, 2, 3, 5, scale=30.0)                           # large logits: no overflow
    p = ops.masked_softmax(x, jnp.asarray(_MASK))
    sums = np.asarray(jnp.sum(p, axis=-1))
    np.testing.assert_allclose(sums, np.where(_MASK.any(-1), 1.0, 0.0), rtol=1e-12)
    assert np.all(np.asarray(p)[~_MASK] == 0)
    np.testing.assert_allclose(ops.masked_softmax(x), ops.softmax(x), rtol=1e-14)


_attention = jax.jit(ops.attention, static_argnames="causal")


def test_causal_output_ignores_future_keys_and_values():
    q, k, v = normal(0, 2, 4, 3), normal(1, 2, 4, 3), normal(2, 2, 4, 2)
    out = _attention(q, k, v, causal=True)
    future = np.arange(4)[None, :, None]
    for t in range(3):
        k2 = k + jnp.asarray(future > t) * normal(3, 2, 4, 3)      # change positions > t
        v2 = v + jnp.asarray(future > t) * normal(4, 2, 4, 2)
        out2 = _attention(q, k2, v2, causal=True)
        np.testing.assert_allclose(out2[:, : t + 1], out[:, : t + 1], rtol=1e-13)
        assert not np.allclose(out2[:, t + 1:], out[:, t + 1:])
    tril = jnp.broadcast_to(jnp.tril(jnp.ones((4, 4), bool)), (2, 4, 4))
    np.testing.assert_allclose(out, _attention(q, k, v, tril), rtol=1e-14)


# --------------------------------------------------------------------------- #
# Multi-head attention
# --------------------------------------------------------------------------- #


def _mha_params(d_q=6, d_kv=5, d=8, d_v=4, d_out=3, biases=True):
    w = dict(wq=normal(10, d_q, d, scale=0.5), wk=normal(11, d_kv, d, scale=0.5),
             wv=normal(12, d_kv, d_v, scale=0.5), wo=normal(13, d_v, d_out, scale=0.5))
    b = dict(bq=normal(14, d), bk=normal(15, d), bv=normal(16, d_v), bo=normal(17, d_out))
    return w, (b if biases else {})


def _mha_reference(x_q, x_kv, w, b, h, mask):
    """Independent einsum implementation, heads as an explicit axis."""
    q = x_q @ w["wq"] + b["bq"][None, None]
    k = x_kv @ w["wk"] + b["bk"][None, None]
    v = x_kv @ w["wv"] + b["bv"][None, None]
    split = lambda a: a.reshape(a.shape[:2] + (h, a.shape[-1] // h))   # N×T×h×d
    q, k, v = split(q), split(k), split(v)
    s = jnp.einsum("nthd,nshd->nhts", q, k) / math.sqrt(q.shape[-1])
    s = jnp.where(mask[:, None], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("nhts,nshd->nthd", p, v).reshape(x_q.shape[:2] + (-1,))
    return o @ w["wo"] + b["bo"][None, None]


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_multi_head_attention_matches_an_independent_implementation(num_heads):
    x_q, x_kv = normal(0, 2, 3, 6), normal(1, 2, 5, 5)
    w, b = _mha_params()
    mask = jnp.asarray(_MASK[:, [0, 2, 2], :])                    # no fully masked row
    got = jax.jit(lambda x_q, x_kv, w, b: ops.multi_head_attention(
        x_q, x_kv, **w, num_heads=num_heads, mask=mask, **b))(x_q, x_kv, w, b)
    want = jax.jit(_mha_reference, static_argnums=4)(x_q, x_kv, w, b, num_heads, mask)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_one_head_without_biases_is_attention_of_the_projections():
    x = normal(0, 2, 4, 6)
    w, _ = _mha_params(d_q=6, d_kv=6, biases=False)
    got = jax.jit(lambda x, w: ops.multi_head_attention(x, x, **w, num_heads=1, causal=True))(
        x, w)
    want = _attention(x @ w["wq"], x @ w["wk"], x @ w["wv"], causal=True) @ w["wo"]
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("case", ["cross+mask+biases", "self+causal"])
def test_multi_head_attention_gradient_manual_vs_autodiff_vs_finite_differences(case):
    if case == "self+causal":
        w, b = _mha_params(d_q=5, d_kv=5, d=4, d_v=4, d_out=2, biases=False)
        x = normal(0, 2, 3, 5)
        f = lambda x, w: ops.multi_head_attention(x, x, **w, num_heads=2, causal=True)
        args = (x, w)
    else:
        w, b = _mha_params(d=4, d_v=4)
        bk = b.pop("bk")  # ∂L/∂b_k = 0 exactly (test below): its rows would be rounding noise
        mask = jnp.asarray(_MASK)                                  # includes a fully masked row
        f = lambda x_q, x_kv, w, b: ops.multi_head_attention(x_q, x_kv, **w, num_heads=2,
                                                             mask=mask, bk=bk, **b)
        args = (normal(0, 2, 3, 6), normal(1, 2, 5, 5), w, b)
    report = check.vjp(f, *args, jit=True, finite_differences=case == "self+causal")
    report.raise_if_failed()
    assert report.worst("autodiff") <= 1e-10
    if case == "self+causal":
        assert report.worst("finite differences") <= 1e-8


def test_key_bias_gets_zero_gradient():
    """Softmax is shift-invariant and b_k adds ⟨q_t, b_k⟩ to every score of row t."""
    w, b = _mha_params(d=4, d_v=4)
    x_q, x_kv = normal(0, 2, 3, 6), normal(1, 2, 5, 5)
    loss = lambda bk: jnp.sum(jnp.sin(ops.multi_head_attention(
        x_q, x_kv, **w, num_heads=2, **{**b, "bk": bk})))
    assert float(jnp.max(jnp.abs(jax.jit(jax.grad(loss))(b["bk"])))) < 1e-12


# --------------------------------------------------------------------------- #
# Luong attention
# --------------------------------------------------------------------------- #


def _luong_params(kind, d=4, d_bar=4, d_a=5):
    return {"dot": (), "general": (normal(20, d, d_bar, scale=0.5),),
            "concat": (normal(21, d + d_bar, d_a, scale=0.5), normal(22, d_a))}[kind]


def test_luong_scores_match_the_paper_formulas():
    h_t, h_bar = normal(0, 3, 4), normal(1, 3, 5, 4)
    (w,) = _luong_params("general")
    wa, va = _luong_params("concat")
    dot = np.asarray(ops.luong_score(h_t, h_bar, kind="dot"))
    general = np.asarray(ops.luong_score(h_t, h_bar, w, kind="general"))
    concat = np.asarray(ops.luong_score(h_t, h_bar, wa, va, kind="concat"))
    w, wa, va = np.asarray(w), np.asarray(wa), np.asarray(va)
    for n in range(3):
        for s in range(5):
            ht, hs = np.asarray(h_t[n]), np.asarray(h_bar[n, s])
            np.testing.assert_allclose(dot[n, s], ht @ hs, rtol=1e-12)
            np.testing.assert_allclose(general[n, s], ht @ w @ hs, rtol=1e-12)
            # the paper's W_a [h_t; h̄_s] with W_a = wᵀ (fdl stores the transpose)
            want = va @ np.tanh(wa.T @ np.concatenate([ht, hs]))
            np.testing.assert_allclose(concat[n, s], want, rtol=1e-12)


def test_luong_attention_weights_context_and_state():
    h_t, h_bar = normal(0, 3, 4), normal(1, 3, 5, 4)
    mask = jnp.asarray(_MASK[0])                                    # row 1 fully masked
    c, a = ops.luong_attention(h_t, h_bar, kind="dot", mask=mask)
    np.testing.assert_allclose(jnp.sum(a, -1), [1.0, 0.0, 1.0], rtol=1e-12)
    assert np.all(np.asarray(a)[~_MASK[0]] == 0)
    np.testing.assert_allclose(c, jnp.einsum("ns,nsd->nd", a, h_bar), rtol=1e-12)
    assert np.all(np.asarray(c[1]) == 0)
    w_c = normal(5, 8, 6)
    h_tilde = ops.luong_attentional_state(c, h_t, w_c)
    np.testing.assert_allclose(h_tilde, jnp.tanh(jnp.concatenate([c, h_t], -1) @ w_c), rtol=1e-12)


def test_luong_dot_attention_is_unscaled_dot_product_attention():
    h_t, h_bar = normal(0, 3, 4), normal(1, 3, 5, 4)
    c, _ = ops.luong_attention(h_t, h_bar, kind="dot")
    via = ops.attention(2.0 * h_t[:, None, :], h_bar, h_bar)[:, 0]   # ×√d undoes 1/√d
    np.testing.assert_allclose(c, via, rtol=1e-12)


@pytest.mark.parametrize("kind", ["dot", "general", "concat"])
def test_luong_full_chain_gradient_manual_vs_autodiff_vs_finite_differences(kind):
    """h̃ = tanh(W_c[c; h_t]), c = Σ α_s h̄_s, α = masked softmax of the score: every path."""
    h_t, h_bar = normal(0, 3, 4), normal(1, 3, 5, 4)
    mask = jnp.asarray(_MASK[0])
    params = _luong_params(kind)

    def model(h_t, h_bar, w_c, params):
        c, a = ops.luong_attention(h_t, h_bar, *params, kind=kind, mask=mask)
        return ops.luong_attentional_state(c, h_t, w_c), a

    # finite differences once (the primitives each meet them in the registry table)
    report = check.vjp(model, h_t, h_bar, normal(5, 8, 6, scale=0.5), params, jit=True,
                       finite_differences=kind == "concat").raise_if_failed()
    assert report.worst("autodiff") <= 1e-10
    if kind == "concat":
        assert report.worst("finite differences") <= 1e-8


# --------------------------------------------------------------------------- #
# Forward mode, validation
# --------------------------------------------------------------------------- #


def test_forward_mode_runs_the_tangent_rule_in_either_mode():
    q, k, v = normal(0, 1, 2, 3), normal(1, 1, 4, 3), normal(2, 1, 4, 2)
    jvp = jax.jit(lambda q: jax.jvp(lambda q: ops.attention(q, k, v, causal=True), (q,), (q,)))
    _, tangent = jvp(q)
    with fdl.gradient_mode("autodiff"):
        _, reference = jvp(q)
    assert tangent.shape == (1, 2, 2)
    np.testing.assert_allclose(tangent, reference, rtol=1e-12, atol=1e-14)


_q, _k, _v = normal(0, 2, 3, 4), normal(1, 2, 5, 4), normal(2, 2, 5, 3)
_W = dict(wq=normal(3, 4, 8), wk=normal(4, 4, 8), wv=normal(5, 4, 8), wo=normal(6, 8, 4))

BAD_CALLS = [
    (lambda: ops.attention(_q, normal(1, 2, 5, 3), _v), ValueError,
     r"attention: k must have shape \(2, 5, 4\) \(…×S×d\) for q \(2, 3, 4\), got \(2, 5, 3\)"),
    (lambda: ops.attention(_q, _k, _v[:, :4]), ValueError,
     r"attention: k has S = 5 \(shape \(2, 5, 4\)\) but v has S = 4 \(shape \(2, 4, 3\)\); the "
     r"second to last dimension of k must equal the second to last of v"),
    (lambda: ops.attention(_q, _k[:1], _v[:1]), ValueError,
     r"attention: q \(2, 3, 4\) and k \(1, 5, 4\) must share their leading \(batch\) dimensions "
     r"\(the … in q ∈ …×T×d, k ∈ …×S×d\)"),
    (lambda: ops.attention(_q, _k, _v, jnp.ones((2, 5), bool)), ValueError,
     r"attention: mask of shape \(2, 5\) does not broadcast to the scores .* shape \(2, 3, 5\); "
     r"a key-padding mask of shape \(N, S\) must be given as mask\[:, None, :\]"),
    (lambda: ops.attention(_q, _k, _v, jnp.ones((2, 3, 5))), TypeError,
     r"attention: mask must be a boolean array \(True = attend\), got dtype float64"),
    (lambda: ops.attention(_q, _k, _v, causal=1), TypeError,
     r"attention: causal must be True or False, got 1"),
    (lambda: ops.attention(_q.astype(jnp.int32), _k, _v), TypeError,
     r"attention: q must be a floating-point array, got dtype int32"),
    (lambda: ops.masked_softmax(_k, jnp.ones((3,), bool)), ValueError,
     r"masked_softmax: mask of shape \(3,\) does not broadcast to the x shape \(2, 5, 4\)"),
    (lambda: ops.multi_head_attention(_q, _k, **_W, num_heads=3), ValueError,
     r"multi_head_attention: num_heads=3 must divide the projected size 8 of wq "
     r"\(shape \(4, 8\)\)"),
    (lambda: ops.multi_head_attention(_q, _k, **_W, num_heads=0), ValueError,
     r"multi_head_attention: num_heads must be ≥ 1, got 0"),
    (lambda: ops.multi_head_attention(_q, _k, **_W, num_heads=2.0), TypeError,
     r"multi_head_attention: num_heads must be an int, got 2.0"),
    (lambda: ops.multi_head_attention(_q, normal(1, 2, 5, 6), **_W, num_heads=2), ValueError,
     r"multi_head_attention: wk must have shape \(6, 8\) \(d_kv×D\) for x_kv \(2, 5, 6\) and wq "
     r"\(4, 8\), got \(4, 8\)"),
    (lambda: ops.multi_head_attention(_q, _k, **{**_W, "wo": normal(6, 6, 4)}, num_heads=2),
     ValueError, r"multi_head_attention: wv has D_v = 8 \(shape \(4, 8\)\) but wo has D_v = 6 "
                 r"\(shape \(6, 4\)\); the last dimension of wv must equal the first of wo"),
    (lambda: ops.multi_head_attention(_q, _k, **_W, num_heads=2, bq=normal(0, 4)), ValueError,
     r"multi_head_attention: bq must have shape \(8,\) \(D\) for wq \(4, 8\), got \(4,\)"),
    (lambda: ops.luong_score(_q[:, 0], _k, kind="bilinear"), ValueError,
     r"luong_score: kind must be one of \('dot', 'general', 'concat'\), got 'bilinear'"),
    (lambda: ops.luong_score(_q[:, 0], _k, kind="general"), TypeError,
     r"luong_score: kind='general' takes 1 parameter\(s\) \('w',\) after h_t and h_bar, got 0"),
    (lambda: ops.luong_dot_score(_q[:, 0], _v), ValueError,
     r"luong_dot_score: h_t and h_bar must have the same size d, got h_t \(2, 4\) \(d=4\) and "
     r"h_bar \(2, 5, 3\) \(d̄=3\); use the 'general' or 'concat' score"),
    (lambda: ops.luong_dot_score(_q[:1, 0], _k), ValueError,
     r"luong_dot_score: h_t \(1, 4\) and h_bar \(2, 5, 4\) must share their leading \(batch\) "
     r"dimensions"),
    (lambda: ops.luong_general_score(_q[:, 0], _v, normal(0, 3, 4)), ValueError,
     r"luong_general_score: w must have shape \(4, 3\) \(d×d̄\) for h_t \(2, 4\) and h_bar "
     r"\(2, 5, 3\), got \(3, 4\)"),
    (lambda: ops.luong_concat_score(_q[:, 0], _k, normal(0, 5, 6), normal(1, 6)), ValueError,
     r"luong_concat_score: w must have d\+d̄ = 4\+4 = 8 in its first dimension .* got shape "
     r"\(5, 6\) \(d\+d̄×d_a, fdl's layout is the transpose of the paper's W_a\)"),
    (lambda: ops.luong_concat_score(_q[:, 0], _k, normal(0, 8, 6), normal(1, 5)), ValueError,
     r"luong_concat_score: v_a must have shape \(6,\) \(d_a\) for w \(8, 6\), got \(5,\)"),
    (lambda: ops.luong_context(normal(0, 2, 4), _k), ValueError,
     r"luong_context: weights must have shape \(2, 5\) \(…×S\) for h_bar \(2, 5, 4\), got \(2, 4\)"),
    (lambda: ops.luong_attentional_state(_q[:, 0], _q[:, 0], normal(0, 6, 3)), ValueError,
     r"luong_attentional_state: w_c must have d̄\+d = 4\+4 = 8 in its first dimension"),
    (lambda: ops.luong_attention(_q[:, 0], _k, mask=jnp.ones((2, 4), bool)), ValueError,
     r"luong_attention: mask of shape \(2, 4\) does not broadcast to the scores \(…×S\) shape "
     r"\(2, 5\)"),
]


@pytest.mark.parametrize("call,exc,message", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_mistakes_raise_clear_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# --------------------------------------------------------------------------- #
# A toy task: key-value retrieval
# --------------------------------------------------------------------------- #

_KEYS, _VALUES, _PAIRS = 8, 4, 5


def _retrieval_batch(key, n):
    """S (key, value) pairs with distinct keys and a query equal to one key;
    the target is that key's value."""
    k_perm, k_val, k_pick = jax.random.split(key, 3)
    keys = jax.vmap(lambda k: jax.random.permutation(k, _KEYS)[:_PAIRS])(
        jax.random.split(k_perm, n))
    values = jax.random.randint(k_val, (n, _PAIRS), 0, _VALUES)
    pick = jax.random.randint(k_pick, (n,), 0, _PAIRS)
    query = jnp.take_along_axis(keys, pick[:, None], axis=1)           # n×1
    target = jnp.take_along_axis(values, pick[:, None], axis=1)[:, 0]
    x_kv = jnp.concatenate([jax.nn.one_hot(keys, _KEYS, dtype=jnp.float32),
                            jax.nn.one_hot(values, _VALUES, dtype=jnp.float32)], axis=-1)
    return jax.nn.one_hot(query, _KEYS, dtype=jnp.float32), x_kv, target


def test_attention_model_learns_key_value_retrieval():
    """Two-head cross-attention reads the value stored under the query's key.

    Chance level is log 4 ≈ 1.39; the model must get the held-out loss below 0.05
    in 100 Adam steps (a fresh batch of 64 each step, float32, fixed seeds). The
    whole run is one compiled program (a lax.scan over the steps)."""
    d = 16
    shapes = {"wq": (_KEYS, d), "wk": (_KEYS + _VALUES, d), "wv": (_KEYS + _VALUES, d),
              "wo": (d, _VALUES)}
    params = {name: normal(30 + i, *shape, scale=0.5, dtype=jnp.float32)
              for i, (name, shape) in enumerate(shapes.items())}

    def loss_fn(params, x_q, x_kv, target):
        logits = ops.multi_head_attention(x_q, x_kv, **params, num_heads=2)[:, 0]
        return softmax_cross_entropy(logits, target)

    opt = adam(0.05)

    def step(carry, key):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *_retrieval_batch(key, 64))
        updates, state = opt.update(grads, state, params)
        return (apply_updates(params, updates), state), loss

    @jax.jit
    def train(params, key):
        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                           jax.random.split(key, 100))
        return losses, loss_fn(params, *_retrieval_batch(jax.random.key(2), 512))

    losses, held_out = train(params, jax.random.key(1))
    assert float(losses[0]) > 1.0
    assert float(held_out) < 0.05, f"held-out retrieval loss {float(held_out):.4f}"
