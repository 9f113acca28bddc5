"""KL divergence, cross-entropy with smoothing/weights/ignore_index, focal, multi-class
hinge and cosine-embedding losses: each against a numpy transcription of its definition,
gradients against autodiff and finite differences beyond the registered examples, and
validation messages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdl import check
from fdl.losses import (cosine_embedding, cross_entropy, kl_divergence, multiclass_hinge,
                        sigmoid_binary_cross_entropy, sigmoid_focal_loss, softmax_cross_entropy)
from conftest import normal


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.x64
def test_kl_divergence_probabilities_and_logs_are_the_definition():
    p, q = _softmax(np.asarray(normal(0, 4, 5))), _softmax(np.asarray(normal(1, 4, 5)))
    rows = (p * (np.log(p) - np.log(q))).sum(axis=-1)
    np.testing.assert_allclose(kl_divergence(jnp.asarray(p), jnp.asarray(q), reduction="none"),
                               rows, rtol=1e-12)
    np.testing.assert_allclose(kl_divergence(jnp.asarray(np.log(p)), jnp.asarray(np.log(q)),
                                             True), rows.mean(), rtol=1e-12)
    assert float(kl_divergence(jnp.asarray(p), jnp.asarray(p))) == 0.0
    # 0 log 0 = 0: a zero probability adds nothing
    p0 = np.array([[0.0, 0.5, 0.5]])
    np.testing.assert_allclose(kl_divergence(jnp.asarray(p0), jnp.full((1, 3), 1 / 3), False,
                                             "sum"), np.log(1.5), rtol=1e-12)
    check.vjp(kl_divergence, jnp.asarray(np.log(p)), jnp.asarray(np.log(q)), True, "mean"
              ).raise_if_failed()
    check.jvp(kl_divergence, jnp.asarray(p), jnp.asarray(q), False, "sum").raise_if_failed()


def _ce_numpy(z, y, w, eps, ignore, reduction):
    n, k = z.shape
    logp = np.log(_softmax(z))
    w = np.ones(k) if w is None else w
    values, den = np.zeros(n), 0.0
    for i in range(n):
        if ignore is not None and y[i] == ignore:
            continue
        t = np.full(k, eps / k)
        t[y[i]] += 1 - eps
        values[i] = -(w * t * logp[i]).sum()
        den += w[y[i]]
    if reduction == "none":
        return values
    return values.sum() if reduction == "sum" else values.sum() / den


@pytest.mark.x64
@pytest.mark.parametrize("weights, eps, ignore, reduction", [
    (True, 0.1, -100, "mean"), (False, 0.0, 2, "mean"), (True, 0.3, None, "sum"),
    (False, 0.2, 0, "none"), (True, 0.0, 1, "mean")])
def test_cross_entropy_is_its_definition(weights, eps, ignore, reduction):
    z = normal(2, 7, 4)
    y = np.array([0, 1, 2, 3, 2, 1, 0])
    if ignore == -100:
        y[[1, 4]] = -100
    w = jnp.asarray(np.array([0.5, 2.0, 1.0, 1.5])) if weights else None
    got = cross_entropy(z, jnp.asarray(y), w, eps, ignore, reduction)
    np.testing.assert_allclose(got, _ce_numpy(np.asarray(z), y, None if w is None else
                                              np.asarray(w), eps, ignore, reduction), rtol=1e-12)
    check.vjp(cross_entropy, z, jnp.asarray(y), w, eps, ignore, reduction).raise_if_failed()
    check.jvp(cross_entropy, z, jnp.asarray(y), w, eps, ignore, reduction).raise_if_failed()


@pytest.mark.x64
def test_ignored_positions_count_neither_in_the_sum_nor_the_denominator():
    z, y = normal(3, 6, 3), jnp.asarray([0, 1, -1, 2, -1, 1])
    kept = np.array([0, 1, 3, 5])
    full = cross_entropy(z, y, ignore_index=-1)
    np.testing.assert_allclose(full, softmax_cross_entropy(z[kept], y[kept]), rtol=1e-13)
    g = jax.grad(lambda z: cross_entropy(z, y, ignore_index=-1))(z)
    np.testing.assert_array_equal(g[np.array([2, 4])], 0.0)
    np.testing.assert_allclose(g[kept], jax.grad(lambda z: softmax_cross_entropy(z, y[kept]))(
        z[kept]), rtol=1e-12)
    # every position ignored: the loss is 0, not 0/0
    assert float(cross_entropy(z, jnp.full((6,), -1), ignore_index=-1)) == 0.0


@pytest.mark.float32
def test_cross_entropy_float32_and_messages():
    z, y = normal(4, 3, 4), jnp.asarray([0, 3, 1])
    np.testing.assert_allclose(cross_entropy(z, y), softmax_cross_entropy(z, y), rtol=1e-6)
    with pytest.raises(ValueError, match=r"cross_entropy: labels must be in \[0, 4\) for 4 "
                                         r"classes, got -100 at index \(1,\)"):
        cross_entropy(z, jnp.asarray([0, -100, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\) .* other than "
                                         r"ignore_index=-1"):
        cross_entropy(z, jnp.asarray([0, 7, -1]), ignore_index=-1)
    with pytest.raises(TypeError, match="cross_entropy: ignore_index must be an int"):
        cross_entropy(z, y, ignore_index=1.5)
    with pytest.raises(ValueError, match=r"cross_entropy: label_smoothing .* must be in \[0, 1\)"):
        cross_entropy(z, y, label_smoothing=1.0)
    with pytest.raises(ValueError, match="cross_entropy: weights must have shape"):
        cross_entropy(z, y, jnp.ones(3))
    with pytest.raises(TypeError, match="cross_entropy: labels must be an integer array"):
        cross_entropy(z, y.astype(jnp.float32))


# --------------------------------------------------------------------------- #


def _focal_numpy(z, y, alpha, gamma):
    p = 1 / (1 + np.exp(-z))
    ce = -y * np.log(p) - (1 - y) * np.log(1 - p)
    p_t = p * y + (1 - p) * (1 - y)
    a_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    return a_t * (1 - p_t) ** gamma * ce


@pytest.mark.x64
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 0.5), (0.8, 3.0)])
def test_focal_loss_is_its_definition(alpha, gamma):
    z = normal(5, 4, 3, scale=2.0)
    y = jnp.asarray(np.random.default_rng(6).integers(0, 2, (4, 3)).astype(np.float64))
    got = sigmoid_focal_loss(z, y, alpha, gamma, "none")
    np.testing.assert_allclose(got, _focal_numpy(np.asarray(z), np.asarray(y), alpha, gamma),
                               rtol=1e-12)
    check.vjp(sigmoid_focal_loss, z, y, alpha, gamma, "mean").raise_if_failed()
    check.jvp(sigmoid_focal_loss, z, y, alpha, gamma, "sum").raise_if_failed()


@pytest.mark.x64
def test_focal_loss_with_gamma_0_and_no_alpha_is_binary_cross_entropy():
    z, y = normal(7, 6, scale=3.0), jnp.linspace(0, 1, 6)
    np.testing.assert_allclose(sigmoid_focal_loss(z, y, None, 0.0),
                               sigmoid_binary_cross_entropy(z, y), rtol=1e-13)
    np.testing.assert_allclose(jax.grad(sigmoid_focal_loss)(z, y, None, 0.0),
                               jax.grad(sigmoid_binary_cross_entropy)(z, y), rtol=1e-13)


@pytest.mark.float32
def test_focal_loss_messages():
    z, y = jnp.zeros(3), jnp.asarray([0.0, 1.0, 0.5])
    assert sigmoid_focal_loss(z, y).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"sigmoid_focal_loss: alpha must be in \[0, 1\]"):
        sigmoid_focal_loss(z, y, 1.5)
    with pytest.raises(ValueError, match="sigmoid_focal_loss: gamma must be ≥ 0"):
        sigmoid_focal_loss(z, y, 0.25, -1.0)
    with pytest.raises(ValueError, match=r"sigmoid_focal_loss: targets must be in \[0, 1\], "
                                         r"got 2.0"):
        sigmoid_focal_loss(z, jnp.asarray([0.0, 2.0, 1.0]))


# --------------------------------------------------------------------------- #


def _hinge_numpy(z, y, margin, power):
    n, k = z.shape
    out = np.zeros(n)
    for i in range(n):
        for j in range(k):
            if j != y[i]:
                out[i] += max(0.0, margin + z[i, j] - z[i, y[i]]) ** power
    return out / k


@pytest.mark.x64
@pytest.mark.parametrize("margin, power", [(1.0, 1), (0.5, 2)])
def test_multiclass_hinge_is_its_definition_with_its_active_set(margin, power):
    z = normal(8, 6, 4)
    y = np.array([0, 1, 2, 3, 0, 2])
    got = multiclass_hinge(z, jnp.asarray(y), margin, power, "none")
    np.testing.assert_allclose(got, _hinge_numpy(np.asarray(z), y, margin, power), rtol=1e-12)
    active = multiclass_hinge.switches(z, jnp.asarray(y), margin, power, "none")
    zn = np.asarray(z)
    expected = (margin + zn - zn[np.arange(6), y][:, None] > 0)
    expected[np.arange(6), y] = False
    np.testing.assert_array_equal(active, expected)
    check.vjp(multiclass_hinge, z, jnp.asarray(y), margin, power, "mean").raise_if_failed()
    check.jvp(multiclass_hinge, z, jnp.asarray(y), margin, power, "sum").raise_if_failed()


@pytest.mark.float32
def test_multiclass_hinge_messages():
    z, y = jnp.zeros((2, 3)), jnp.asarray([0, 2])
    np.testing.assert_allclose(multiclass_hinge(z, y), 2 / 3)
    with pytest.raises(ValueError, match=r"multiclass_hinge: power must be 1 \(hinge\) or 2"):
        multiclass_hinge(z, y, 1.0, 3)
    with pytest.raises(ValueError, match=r"multiclass_hinge: labels must be in \[0, 3\)"):
        multiclass_hinge(z, jnp.asarray([0, 3]))
    with pytest.raises(ValueError, match="multiclass_hinge: margin must be > 0"):
        multiclass_hinge(z, y, 0.0)


# --------------------------------------------------------------------------- #


@pytest.mark.x64
def test_cosine_embedding_is_its_definition():
    a, b = normal(9, 5, 4), normal(10, 5, 4)
    y = np.array([1, -1, 1, -1, -1])
    an, bn = np.asarray(a), np.asarray(b)
    eps = 1e-8
    cos = (an * bn).sum(-1) / np.sqrt(((an ** 2).sum(-1) + eps) * ((bn ** 2).sum(-1) + eps))
    expected = np.where(y == 1, 1 - cos, np.maximum(cos - 0.1, 0))
    np.testing.assert_allclose(cosine_embedding(a, b, jnp.asarray(y), 0.1, eps, "none"),
                               expected, rtol=1e-12)
    check.vjp(cosine_embedding, a, b, jnp.asarray(y), 0.1, eps, "mean").raise_if_failed()
    check.jvp(cosine_embedding, a, b, jnp.asarray(y), 0.1, eps, "sum").raise_if_failed()
    # scale invariance: the gradient in a is orthogonal to a (for ε → 0)
    g = jax.grad(cosine_embedding)(a, b, jnp.asarray(y), 0.1, 1e-300)
    np.testing.assert_allclose((np.asarray(g) * an).sum(-1), 0, atol=1e-15)


@pytest.mark.float32
def test_cosine_embedding_messages():
    a = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="cosine_embedding: labels must be 1 .* or -1 .*, "
                                         "got 0 at index"):
        cosine_embedding(a, a, jnp.asarray([1, 0]))
    with pytest.raises(ValueError, match=r"cosine_embedding: margin must be in \[-1, 1\]"):
        cosine_embedding(a, a, jnp.asarray([1, -1]), 2.0)
    with pytest.raises(ValueError, match="cosine_embedding: b must have shape"):
        cosine_embedding(a, jnp.ones((2, 4)), jnp.asarray([1, -1]))


# --------------------------------------------------------------------------- #


def _ctc_brute_force(logits, labels, length):
    """−log Σ over every path π ∈ {0…K−1}^T that collapses (merge repeats, drop blanks)
    to the labels of Π_t p_t(π_t)."""
    import itertools
    t, k = logits.shape
    p = _softmax(logits)
    target = list(labels[:length])
    total = 0.0
    for path in itertools.product(range(k), repeat=t):
        merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
        if [c for c in merged if c != 0] == target:
            total += np.prod(p[np.arange(t), list(path)])
    return -np.log(total)


@pytest.mark.x64
def test_ctc_loss_is_the_sum_over_all_alignments():
    from fdl.losses import ctc_loss
    z = normal(11, 3, 5, 3)
    labels = jnp.asarray([[1, 2, 1], [2, 2, 1], [1, 1, 2]])
    lengths = jnp.asarray([3, 2, 0])
    got = ctc_loss(z, labels, lengths, "none")
    expected = [_ctc_brute_force(np.asarray(z[n]), np.asarray(labels[n]), int(lengths[n]))
                for n in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    check.vjp(ctc_loss, z, labels, lengths, "mean").raise_if_failed()
    check.jvp(ctc_loss, z, labels, lengths, "sum").raise_if_failed()
    # the occupations sum to one per step: the gradient of each step sums to zero
    g = jax.grad(lambda z: ctc_loss(z, labels, lengths, "sum"))(z)
    np.testing.assert_allclose(g.sum(axis=-1), 0, atol=1e-12)


@pytest.mark.float32
def test_ctc_loss_messages():
    from fdl.losses import ctc_loss
    z, labels = jnp.zeros((2, 4, 3)), jnp.asarray([[1, 2], [2, 0]])
    assert ctc_loss(z, labels, jnp.asarray([2, 1])).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"ctc_loss: labels must be in \[1, 3\) \(0 is the "
                                         r"blank\), got 0 at index \(1, 1\)"):
        ctc_loss(z, labels, jnp.asarray([2, 2]))
    with pytest.raises(ValueError, match=r"ctc_loss: label_lengths must be in \[0, 2\]"):
        ctc_loss(z, labels, jnp.asarray([3, 1]))
