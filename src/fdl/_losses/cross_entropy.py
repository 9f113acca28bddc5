"""Cross-entropy from logits and integer labels, with label smoothing, class weights and
an ignored label."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v
from fdl._losses.reduction import check_reduction
from fdl.ops.softmax import log_softmax
from fdl.primitive import Example, gaussian, labels, positive, primitive

__all__ = ["cross_entropy"]


def _targets(labels, k, smoothing, dtype):
    """$t = (1 − ε)\\,\\mathrm{onehot}(y) + ε/K$ (a row of zeros for an ignored label)."""
    return (1 - smoothing) * jax.nn.one_hot(labels, k, dtype=dtype) + smoothing / k


def _parts(logits, labels, weights, smoothing, ignore_index):
    """Everything the value and both rules use: `(log p, t, m, w_y)` with `m` the mask
    of counted examples and `w_y` each example's label weight (0 where ignored)."""
    k = logits.shape[-1]
    logp = log_softmax.forward(logits, -1)
    keep = (labels != ignore_index) if ignore_index is not None else jnp.ones(labels.shape, bool)
    safe = jnp.where(keep, labels, 0)
    t = _targets(safe, k, smoothing, logits.dtype)
    w = jnp.ones((k,), logits.dtype) if weights is None else weights
    m = keep.astype(logits.dtype)
    return logp, t, w, m, m * w[safe]


def _row(w, ndim):
    """The class weights `(K,)` as `(1, …, 1, K)`, to broadcast over rank `ndim`."""
    return w.reshape((1,) * (ndim - 1) + w.shape)


def _denominator(wy):
    """$D = Σ_n m_n w_{y_n}$, or 1 when nothing counts (the loss is then 0)."""
    d = jnp.sum(wy)
    return jnp.where(d > 0, d, jnp.ones_like(d))


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None,
                  label_smoothing: float = 0.0, ignore_index: int | None = None,
                  reduction: str = "mean") -> jax.Array:
    r"""Softmax cross-entropy with label smoothing $ε$, class weights $w$ and an ignored label.

    Shapes: logits $Z ∈ ℝ^{…×K}$, integer labels $y ∈ \{0…K−1\}^{…}$ (shape
    `logits.shape[:-1]`), class weights $w ∈ ℝ^K$ (`None`: all 1);
    `label_smoothing` $ε ∈ [0, 1)$, `ignore_index` and `reduction` static.
    For example $n$ with $p_n = \mathrm{softmax}(z_n)$, the smoothed target
    $t_n = (1 − ε)\,\mathrm{onehot}(y_n) + ε/K$ and $u_n = w ⊙ t_n$,

    $$ ℓ_n = −Σ_k u_{nk} \log p_{nk}
           = (1 − ε)\, w_{y_n} (−\log p_{n y_n}) + (ε/K) Σ_k w_k (−\log p_{nk}). $$

    Examples whose label equals `ignore_index` ($m_n = 0$; $m_n = 1$ otherwise) count
    neither in the sum nor in the mean's denominator:
    `"sum"` $L = Σ_n m_n ℓ_n$; `"mean"` $L = Σ_n m_n ℓ_n / D$ with $D = Σ_n m_n w_{y_n}$
    — the weighted mean (PyTorch's convention; without weights, $D$ is the number of
    counted examples; $L = 0$ when none counts); `"none"` gives $m_n ℓ_n$.

    Derivation. $∂ \log p_{nj}/∂z_{nk} = δ_{jk} − p_{nk}$, so
    $∂ℓ_n/∂z_n = (Σ_k u_{nk})\, p_n − u_n$ (for $ε = 0$ and $w = 1$ the familiar
    $p − \mathrm{onehot}(y)$). $ℓ_n$ is linear in $w$: $∂ℓ_n/∂w_k = −t_{nk} \log p_{nk}$.
    For the mean, with $S = Σ_n m_n ℓ_n$, $L = S/D$ and $D$ depends on $w$ only
    ($∂D/∂w_k = Σ_n m_n [y_n = k]$):

    * $∂L/∂z_n = (g m_n / D)\,((Σ_k u_{nk}) p_n − u_n)$;
    * $∂L/∂w_k = (g/D) Σ_n m_n (−t_{nk} \log p_{nk}) − (g S/D²) Σ_n m_n [y_n = k]$.

    (For `"sum"` replace $g/D$ by $g$ and drop the $D$ term; for `"none"` each
    $ℓ_n$ has its own $g_n$.) Labels get no gradient.

    Residuals: $\log p$ ($…×K$), the labels and $w$.

    Tangent, per example $dℓ_n = ⟨(Σ_k u_{nk}) p_n − u_n, dz_n⟩ − Σ_k t_{nk} \log p_{nk}\, dw_k$;
    `"mean"`: $dL = Σ_n m_n dℓ_n / D − (S/D²)\, Σ_n m_n dw_{y_n}$.

    References: Szegedy et al., "Rethinking the Inception Architecture for Computer
    Vision", 2016 (label smoothing).
    """
    logp, t, w, m, wy = _parts(logits, labels, weights, label_smoothing, ignore_index)
    values = m * -jnp.sum(_row(w, logp.ndim) * t * logp, axis=-1)
    if reduction == "mean":
        return jnp.sum(values) / _denominator(wy)
    return jnp.sum(values) if reduction == "sum" else values


def _save(logits, labels, weights, label_smoothing, ignore_index, reduction, y):
    return log_softmax.forward(logits, -1), labels, weights


def _rule_parts(residuals, label_smoothing, ignore_index):
    logp, labels, weights = residuals
    k = logp.shape[-1]
    keep = (labels != ignore_index) if ignore_index is not None else jnp.ones(labels.shape, bool)
    safe = jnp.where(keep, labels, 0)
    t = _targets(safe, k, label_smoothing, logp.dtype)
    w = jnp.ones((k,), logp.dtype) if weights is None else weights
    m = keep.astype(logp.dtype)
    u = _row(w, logp.ndim) * t
    dz = jnp.sum(u, axis=-1, keepdims=True) * jnp.exp(logp) - u   # ∂ℓ_n/∂z_n
    dw = -t * logp                                                 # ∂ℓ_n/∂w
    onehot = jax.nn.one_hot(safe, k, dtype=logp.dtype)
    return m, dz, dw, onehot, m * w[safe], m * jnp.sum(u * -logp, axis=-1)


def _backward(label_smoothing, ignore_index, reduction, residuals, g):
    weights = residuals[2]
    m, dz, dw, onehot, wy, values = _rule_parts(residuals, label_smoothing, ignore_index)
    if reduction == "none":
        c = g * m
    elif reduction == "sum":
        c = jnp.broadcast_to(g, m.shape) * m
    else:
        c = jnp.broadcast_to(g / _denominator(wy), m.shape) * m
    batch = tuple(range(m.ndim))
    gz = c[..., None] * dz
    if weights is None:
        return gz, None, None
    gw = jnp.sum(c[..., None] * dw, axis=batch)
    if reduction == "mean":
        d = _denominator(wy)
        gw = gw - (g * jnp.sum(values) / (d * d)) * jnp.sum(m[..., None] * onehot, axis=batch)
    return gz, None, gw


def _tangent(label_smoothing, ignore_index, reduction, residuals, t):
    weights = residuals[2]
    dlogits, _, dweights = t
    m, dz, dw, onehot, wy, values = _rule_parts(residuals, label_smoothing, ignore_index)
    dvalues = m * jnp.sum(dz * dlogits, axis=-1)
    if weights is not None:
        dvalues = dvalues + m * jnp.sum(dw * _row(dweights, dw.ndim), axis=-1)
    if reduction == "none":
        return dvalues
    if reduction == "sum":
        return jnp.sum(dvalues)
    d = _denominator(wy)
    out = jnp.sum(dvalues) / d
    if weights is not None:
        dd = jnp.sum(m * jnp.sum(onehot * _row(dweights, onehot.ndim), axis=-1))
        out = out - jnp.sum(values) / (d * d) * dd
    return out


def _validate(logits, labels, weights, label_smoothing, ignore_index, reduction):
    fn = "cross_entropy"
    k = logits.shape[-1]
    v.fraction(fn, "label_smoothing", label_smoothing,
               meaning="the probability mass spread evenly over the classes")
    if ignore_index is not None and not v.is_int(ignore_index):
        raise TypeError(f"{fn}: ignore_index must be an int (a label value to skip) or None, "
                        f"got {ignore_index!r}")
    check_reduction(fn, reduction)
    if v.is_concrete(labels) and labels.size:
        a = np.asarray(labels)
        bad = ((a < 0) | (a >= k)) & (a != ignore_index if ignore_index is not None else True)
        if bad.any():
            i = v.first_index(bad)
            skip = f" other than ignore_index={ignore_index}" if ignore_index is not None else ""
            raise ValueError(f"{fn}: labels must be in [0, {k}) for {k} classes, got {a[i]} at "
                             f"index {i}{skip}; pass ignore_index= to skip a padding label")


def _with_ignored(*shape: int, classes: int, ignore: int):
    """Example labels with about one in three set to `ignore`."""
    def sample(rng, dtype):
        r = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        y = r.integers(0, classes, shape)
        y[r.random(shape) < 0.35] = ignore
        y.flat[0] = 0  # at least one counted example
        return jnp.asarray(y.astype(np.int32))
    return sample


cross_entropy = primitive(
    cross_entropy, _backward, save=_save,
    static=("label_smoothing", "ignore_index", "reduction"),
    spec=v.shapes("cross_entropy", logits="…×K", labels="int …",
                  weights="optional K: one per class"),
    validate=_validate,
    tangent=_tangent, examples=[
        Example((gaussian(6, 4), _with_ignored(6, classes=4, ignore=-100), positive(4), 0.1,
                 -100, "mean")),
        Example((gaussian(5, 3), labels(5, classes=3), None, 0.2, None, "mean")),
        Example((gaussian(2, 3, 5), _with_ignored(2, 3, classes=5, ignore=0), positive(5), 0.0,
                 0, "sum")),
        Example((gaussian(4, 3), labels(4, classes=3), positive(3), 0.05, None, "none")),
    ],
)
