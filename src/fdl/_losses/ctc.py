"""Connectionist temporal classification (CTC) loss, by the forward–backward recursion."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fdl import _validate as v
from fdl._losses.reduction import check_reduction, per_example, reduce
from fdl.ops.softmax import log_softmax
from fdl.primitive import Example, gaussian, primitive

__all__ = ["ctc_loss"]

_NEG = -1e30  # log 0, kept finite so that no step computes −∞ − (−∞)


def _extended(labels):
    """$l'$: the labels with a blank (0) before, between and after them, `N×(2S+1)`, and
    whether the skip $s − 2 → s$ is allowed (a label differing from the one two back)."""
    n, s = labels.shape
    ext = jnp.zeros((n, 2 * s + 1), labels.dtype).at[:, 1::2].set(labels)
    prev = jnp.concatenate([jnp.zeros((n, 2), labels.dtype), ext[:, :-2]], axis=1)
    return ext, (ext != 0) & (ext != prev)


def _shift(a, k):
    """`a` moved `k` places right along the last axis, log 0 coming in."""
    return jnp.concatenate([jnp.full(a.shape[:-1] + (k,), _NEG, a.dtype), a[..., :-k]], axis=-1)


def _alphas(y_ext, skip):
    """$α_t(s)$, `T×N×(2S+1)`, from the emissions `y_ext[t, n, s] = y_t(l'_s)`."""
    first = jnp.full(y_ext.shape[1:], _NEG, y_ext.dtype)
    first = first.at[:, :2].set(y_ext[0, :, :2])

    def step(a, y_t):
        moved = jnp.logaddexp(a, _shift(a, 1))
        moved = jnp.where(skip, jnp.logaddexp(moved, _shift(a, 2)), moved)
        a = moved + y_t
        return a, a

    _, rest = lax.scan(step, first, y_ext[1:])
    return jnp.concatenate([first[None], rest], axis=0)


def _log_likelihood(alphas, label_lengths):
    """$\\log P = \\mathrm{logaddexp}(α_{T−1}(2L), α_{T−1}(2L − 1))$ per example."""
    last = alphas[-1]
    end = 2 * label_lengths
    a_end = jnp.take_along_axis(last, end[:, None], axis=1)[:, 0]
    a_before = jnp.take_along_axis(last, jnp.maximum(end - 1, 0)[:, None], axis=1)[:, 0]
    return jnp.where(label_lengths > 0, jnp.logaddexp(a_end, a_before), a_end)


def _emissions(y, ext):
    """`T×N×(2S+1)`: $y_t(l'_s)$."""
    return jnp.moveaxis(jnp.take_along_axis(y, ext[:, None, :], axis=2), 1, 0)


def ctc_loss(logits: jax.Array, labels: jax.Array, label_lengths: jax.Array,
             reduction: str = "mean") -> jax.Array:
    r"""CTC loss $ℓ = −\log P(l \mid x)$, summing over every alignment of the labels.

    Shapes: logits $Z ∈ ℝ^{N×T×K}$ (class 0 is the blank), labels $l ∈ \{1…K−1\}^{N×S}$
    (padded; only the first `label_lengths[n]` $= L_n$ of row $n$ count), `label_lengths`
    $∈ ℕ^N$; `reduction` static (`"mean"` over the $N$ examples). With
    $y_t = \mathrm{log\_softmax}(z_t)$ and the extended label $l'$ ($2L + 1$ symbols: a
    blank before, between and after the labels), the forward variables (log space)

    $$ α_t(s) = \log\big(e^{α_{t−1}(s)} + e^{α_{t−1}(s−1)} + [l'_s ≠ \text{blank}, l'_s ≠ l'_{s−2}]\, e^{α_{t−1}(s−2)}\big) + y_t(l'_s), $$

    $α_0(0) = y_0(\text{blank})$, $α_0(1) = y_0(l_1)$, others $\log 0$, give
    $\log P = \log(e^{α_{T−1}(2L)} + e^{α_{T−1}(2L−1)})$.

    Derivation (not autodiff of the recursion). The backward variables $β_t(s)$, the
    same recursion run from $t = T − 1$ down with $s + 1$, $s + 2$ in place of $s − 1$,
    $s − 2$ (and $β_{T−1}(2L) = y_{T−1}(\text{blank})$, $β_{T−1}(2L − 1) = y_{T−1}(l_L)$),
    make $α_t(s) + β_t(s) − y_t(l'_s)$ the log of the total probability of the alignments
    through symbol $s$ at time $t$. $P$ is linear in each $e^{y_t(k)}$ along every path
    that emits $k$ at $t$, so

    $$ ∂ \log P/∂ y_t(k) = \frac{1}{P} Σ_{s : l'_s = k} e^{α_t(s) + β_t(s) − y_t(k)} =: o_t(k), $$

    the occupation of class $k$ at time $t$ ($Σ_k o_t(k) = 1$: one symbol per step).
    Through the log-softmax ($∂y_t(j)/∂z_t(k) = δ_{jk} − p_t(k)$) and $ℓ = −\log P$:

    $$ ∂ℓ/∂z_t = p_t − o_t \qquad (T×K \text{ per example}), $$

    times the example's cotangent. Labels and lengths get no gradient. An impossible
    labelling (too few frames) has $P = 0$: $ℓ$ is about $10^{30}$ (log 0 is kept finite).

    Residuals: $y$ (the log-probabilities), the labels and lengths; $α$ and $β$ are
    recomputed in the backward (one scan each).

    Tangent: $dℓ = Σ_t ⟨p_t − o_t, dz_t⟩$ per example, reduced like $ℓ$.

    References: Graves, Fernández, Gomez & Schmidhuber, "Connectionist Temporal
    Classification", 2006.
    """
    y = log_softmax.forward(logits, -1)
    ext, skip = _extended(labels)
    alphas = _alphas(_emissions(y, ext), skip)
    return reduce(-_log_likelihood(alphas, label_lengths), reduction)


def _save(logits, labels, label_lengths, reduction, out):
    return log_softmax.forward(logits, -1), labels, label_lengths


def _occupation_gradient(residuals):
    """$∂ℓ_n/∂z = p − o$, `N×T×K`."""
    y, labels, lengths = residuals
    ext, skip = _extended(labels)
    y_ext = _emissions(y, ext)                         # T×N×S'
    alphas = _alphas(y_ext, skip)
    # β by the α recursion on the reversed problem: time and the extended label reversed,
    # each row's valid part (s ≤ 2L) first, so that the start is at (2L, 2L − 1)
    s_ext = ext.shape[1]
    idx = 2 * lengths[:, None] - jnp.arange(s_ext)[None, :]      # s' ↦ s = 2L − s'
    valid = idx >= 0
    safe = jnp.where(valid, idx, 0)
    y_rev = jnp.where(valid[None], jnp.take_along_axis(y_ext[::-1], jnp.broadcast_to(
        safe[None], y_ext.shape), axis=2), _NEG)
    skip_rev = jnp.take_along_axis(jnp.concatenate(
        [skip[:, 2:], jnp.zeros_like(skip[:, :2])], axis=1), safe, axis=1) & valid
    betas_rev = _alphas(y_rev, skip_rev)[::-1]          # β_t(2L − s')
    # s ↦ 2L − s is its own inverse: the same gather puts β back in order
    back = jnp.where(valid[None], jnp.take_along_axis(
        betas_rev, jnp.broadcast_to(safe[None], betas_rev.shape), axis=2), _NEG)
    log_p = _log_likelihood(alphas, lengths)
    gamma = jnp.exp(alphas + back - y_ext - log_p[None, :, None])   # T×N×S'
    onehot = jax.nn.one_hot(ext, y.shape[-1], dtype=y.dtype)          # N×S'×K
    occupation = jnp.einsum("tns,nsk->ntk", gamma, onehot)
    return jnp.exp(y) - occupation


def _backward(reduction, residuals, g):
    grad = _occupation_gradient(residuals)
    ge = per_example(g, grad.shape[:1], reduction)
    return ge[:, None, None] * grad, None, None


def _tangent(reduction, residuals, t):
    dz, _, _ = t
    return reduce(jnp.sum(_occupation_gradient(residuals) * dz, axis=(1, 2)), reduction)


def _validate(logits, labels, label_lengths, reduction):
    fn = "ctc_loss"
    check_reduction(fn, reduction)
    k, s = logits.shape[-1], labels.shape[-1]
    if v.is_concrete(labels) and v.is_concrete(label_lengths) and labels.size:
        import numpy as np
        lab, lens = np.asarray(labels), np.asarray(label_lengths)
        if (lens < 0).any() or (lens > s).any():
            raise ValueError(f"{fn}: label_lengths must be in [0, {s}] (labels has {s} "
                             f"columns), got {lens.tolist()}")
        used = np.arange(s)[None, :] < lens[:, None]
        bad = used & ((lab < 1) | (lab >= k))
        if bad.any():
            i = v.first_index(bad)
            raise ValueError(f"{fn}: labels must be in [1, {k}) (0 is the blank), got "
                             f"{lab[i]} at index {i}")


def _labels(n: int, s: int, classes: int):
    def sample(rng, dtype):
        import numpy as np
        r = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return jnp.asarray(r.integers(1, classes, (n, s)).astype(np.int32))
    return sample


def _lengths(*values: int):
    return lambda rng, dtype: jnp.asarray(values, jnp.int32)


ctc_loss = primitive(
    ctc_loss, _backward, save=_save, static=("reduction",),
    spec=v.shapes("ctc_loss", logits="N×T×K", labels="int N×S", label_lengths="int N"),
    validate=_validate, tangent=_tangent, examples=[
        Example((gaussian(3, 8, 4), _labels(3, 3, 4), _lengths(3, 1, 2), "mean")),
        Example((gaussian(2, 6, 3), _labels(2, 2, 3), _lengths(2, 0), "sum")),
    ],
)
