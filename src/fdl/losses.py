"""Losses as primitives, each with the gradient derived beside it.

Every loss computes a per-example value $ℓ$ and reduces it with `reduction`
(static): `"mean"` (default) over all per-example values, `"sum"`, or
`"none"` (the per-example values). With $n$ values and output cotangent
$g$ (a scalar for `mean`/`sum`), the per-example cotangent is
`g/n` (mean), $g$ (sum) or $g$ itself (none); each backward below writes
$∂ℓ/∂inputs$ and multiplies by it.

Layout: classes on the last axis, $Z ∈ ℝ^{N×K}$; leading batch dimensions may be
any number ($N = n₁×…×n_k$).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v
from fdl._losses.reduction import check_reduction as _check_reduction
from fdl._losses.reduction import per_example as _per_example
from fdl._losses.reduction import check_probabilities
from fdl._losses.reduction import reduce as _reduce
from fdl.ops.softmax import log_softmax
from fdl.primitive import Example, gaussian, labels, primitive, probabilities, uniform

__all__ = ["huber", "mse", "sigmoid_binary_cross_entropy", "softmax_cross_entropy"]

def _keep(x: jax.Array) -> jax.Array:
    """Append a unit axis so per-example values broadcast over the last axis."""
    return x[..., None]


# --------------------------------------------------------------------------- #


def mse(pred: jax.Array, target: jax.Array, reduction: str = "mean") -> jax.Array:
    r"""Mean squared error, per element $ℓ = (p − t)²$.

    With `mean` over $n$ elements, $L = (1/n) Σ (p − t)²$ and
    $∂L/∂p = (2/n)(p − t)$, $∂L/∂t = −∂L/∂p$ (same shape as $p$). Saves $p − t$.

    Tangent: per element $dℓ = 2(p − t)(dp − dt)$, then reduced like $ℓ$
    (`mean`: $dL = (2/n) Σ (p − t)(dp − dt)$, a scalar).
    """
    return _reduce(jnp.square(pred - target), reduction)


def _mse_save(pred, target, reduction, y):
    return pred - target


def _mse_backward(reduction, r, g):
    dp = 2 * r * _per_example(g, r.shape, reduction)
    return dp, -dp


def _mse_validate(pred, target, reduction):
    _check_reduction("mse", reduction)


def _mse_tangent(reduction, r, t):
    dp, dt = t
    return _reduce(2 * r * (dp - dt), reduction)


mse = primitive(
    mse, _mse_backward, save=_mse_save, static=("reduction",),
    spec=v.shapes("mse", pred="…", target="…"), validate=_mse_validate,
    tangent=_mse_tangent, examples=[Example((gaussian(4, 3), gaussian(4, 3), "mean")),
              Example((gaussian(5), gaussian(5), "sum")),
              Example((gaussian(2, 3), gaussian(2, 3), "none"))],
)


# --------------------------------------------------------------------------- #


def softmax_cross_entropy(
    logits: jax.Array, targets: jax.Array, reduction: str = "mean"
) -> jax.Array:
    r"""Cross-entropy of softmax probabilities, from logits.

    `Z ∈ ℝ^{N×K}` logits; `targets` either integer labels `∈ {0…K−1}^N` or
    probabilities `Y ∈ ℝ^{N×K}` with rows summing to 1. With `p = softmax(z)`
    per row, `ℓ = −Σ_k y_k log p_k = logsumexp(z) − ⟨y, z⟩` (labels: `y` is
    one-hot, `ℓ = logsumexp(z) − z_label`).

    Precondition (probability targets): each row $y ≥ 0$ with $Σ_k y_k = 1$. For any
    $y$, $−Σ_k y_k log p_k = (Σ_k y_k) logsumexp(z) − ⟨y, z⟩$, whose gradient
    is $(Σ_k y_k) p − y$; the rule below is $p − y$, the gradient of a different
    function when a row does not sum to 1. Checked wherever the values are concrete
    (a `ValueError` naming the first row that does not); under `jit` they are not known,
    so normalise the targets (or pass labels).

    Derivation: `∂ logsumexp(z)/∂z = p` and `∂⟨y, z⟩/∂z = y`, so

        `∂ℓ/∂z = p − y`     (uses `Σ_k y_k = 1`)

    — softmax and cross-entropy fused, never forming the softmax Jacobian. For
    probability targets `∂ℓ/∂y = −log p`. Saves `log p` (`p = e^{log p}`) and
    the targets. Finite for float32 logits of any magnitude (`log p` is computed
    shifted by the row maximum).

    Tangent: `dℓ = ⟨p − y, dz⟩ − ⟨log p, dy⟩` per example (sums over the classes;
    the second term only for probability targets), reduced like `ℓ`.
    """
    logp = log_softmax.forward(logits, -1)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        picked = jnp.take_along_axis(logp, _keep(targets), axis=-1)[..., 0]
        return _reduce(-picked, reduction)
    return _reduce(-jnp.sum(targets * logp, axis=-1), reduction)


def _ce_save(logits, targets, reduction, y):
    return log_softmax.forward(logits, -1), targets


def _ce_backward(reduction, residuals, g):
    logp, targets = residuals
    ge = _keep(_per_example(g, logp.shape[:-1], reduction))
    p = jnp.exp(logp)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        onehot = jax.nn.one_hot(targets, p.shape[-1], dtype=p.dtype)
        return ge * (p - onehot), None
    return ge * (p - targets), -ge * logp


def _ce_validate(logits, targets, reduction):
    fn = "softmax_cross_entropy"
    _check_reduction(fn, reduction)
    k = logits.shape[-1]
    if jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        if tuple(targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(
                f"{fn}: integer labels must have shape logits.shape[:-1] = "
                f"{tuple(logits.shape[:-1])}, got labels of shape {tuple(targets.shape)} "
                f"for logits of shape {tuple(logits.shape)}"
            )
        bad = v.first_out_of_range(targets, k)
        if bad is not None:
            value, i, lo, hi = bad
            raise ValueError(
                f"{fn}: labels must be in [0, {k}) for {k} classes, got {value} at "
                f"index {i} (range of labels given: {lo}..{hi})"
            )
        return
    v.floating(fn, "targets", targets)
    v.same_shape(fn, "targets", targets, "logits", logits)
    if v.is_concrete(targets) and targets.size:
        t = np.asarray(targets, dtype=np.float64)
        tol = 1e3 * float(jnp.finfo(targets.dtype).eps)
        sums = t.sum(axis=-1)
        if (t < -tol).any():
            i = v.first_index(t < -tol)
            raise ValueError(f"{fn}: probability targets must be ≥ 0, got {t[i]} at index {i}")
        off = np.abs(sums - 1) > tol * max(1, k)
        if off.any():
            i = v.first_index(off)
            raise ValueError(
                f"{fn}: probability targets must sum to 1 along the last axis, but row "
                f"{i} sums to {float(sums[i])!r}; pass integer labels, or normalise the targets "
                "(the gradient p − y holds only for rows that sum to 1)"
            )


def _ce_tangent(reduction, residuals, t):
    logp, targets = residuals
    dz, dy = t
    p = jnp.exp(logp)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        picked = jnp.take_along_axis(dz, _keep(targets), axis=-1)[..., 0]
        return _reduce(jnp.sum(p * dz, axis=-1) - picked, reduction)
    return _reduce(jnp.sum((p - targets) * dz - logp * dy, axis=-1), reduction)


softmax_cross_entropy = primitive(
    softmax_cross_entropy, _ce_backward, save=_ce_save, static=("reduction",),
    spec=v.shapes("softmax_cross_entropy", logits="…×classes"), validate=_ce_validate,
    tangent=_ce_tangent, examples=[Example((gaussian(5, 4), labels(5, classes=4), "mean")),
              Example((gaussian(5, 4, scale=3.0), probabilities(5, 4), "mean")),
              Example((gaussian(2, 3, 6), labels(2, 3, classes=6), "sum")),
              Example((gaussian(3, 5), probabilities(3, 5), "none")),
              Example((gaussian(1, 1), labels(1, classes=1), "mean"))],
)


# --------------------------------------------------------------------------- #


def sigmoid_binary_cross_entropy(
    logits: jax.Array, targets: jax.Array, reduction: str = "mean"
) -> jax.Array:
    r"""Binary cross-entropy of $σ(z)$ against targets $y ∈ [0, 1]$, from logits.

    $ℓ = −y log σ(z) − (1 − y) log(1 − σ(z)) = softplus(z) − y z$, computed as
    $max(z, 0) + log(1 + e^{−|z|}) − y z$ (no overflow for any $z$).

    $∂ℓ/∂z = σ(z) − y$ and $∂ℓ/∂y = −z$ (element-wise, any shape). Saves $z, y$.

    Tangent: per element $dℓ = (σ(z) − y) dz − z dy$, reduced like $ℓ$.
    """
    return _reduce(jnp.logaddexp(logits, jnp.zeros_like(logits)) - targets * logits, reduction)


def _bce_save(logits, targets, reduction, y):
    return logits, targets


def _bce_backward(reduction, residuals, g):
    z, t = residuals
    ge = _per_example(g, z.shape, reduction)
    e = jnp.exp(-jnp.abs(z))
    sig = jnp.where(z >= 0, 1 / (1 + e), e / (1 + e))
    return ge * (sig - t), -ge * z


def _bce_validate(logits, targets, reduction):
    fn = "sigmoid_binary_cross_entropy"
    _check_reduction(fn, reduction)
    check_probabilities(fn, targets)


def _bce_tangent(reduction, residuals, t):
    z, y = residuals
    dz, dy = t
    e = jnp.exp(-jnp.abs(z))
    sig = jnp.where(z >= 0, 1 / (1 + e), e / (1 + e))
    return _reduce((sig - y) * dz - z * dy, reduction)


sigmoid_binary_cross_entropy = primitive(
    sigmoid_binary_cross_entropy, _bce_backward, save=_bce_save, static=("reduction",),
    spec=v.shapes("sigmoid_binary_cross_entropy", logits="…", targets="…"),
    validate=_bce_validate,
    tangent=_bce_tangent,
    examples=[Example((gaussian(4, 3, scale=2.0), uniform(4, 3, low=0.0, high=1.0), "mean")),
              Example((gaussian(6), uniform(6, low=0.0, high=1.0), "none"))],
)


# --------------------------------------------------------------------------- #


def huber(pred: jax.Array, target: jax.Array, delta: float = 1.0,
          reduction: str = "mean") -> jax.Array:
    r"""Huber loss with threshold $δ$ = `delta` (static), per element with $r = p − t$.

    $ℓ = ½ r²$ for $|r| ≤ δ$ and $δ(|r| − ½δ)$ otherwise: quadratic near zero,
    linear in the tails, continuous with a continuous derivative at $|r| = δ$.

    $∂ℓ/∂r = r$ inside, $δ·sign(r)$ outside, i.e. $clip(r, −δ, δ)$; then
    $∂ℓ/∂p = clip(r, −δ, δ)$ and $∂ℓ/∂t = −clip(r, −δ, δ)$. Saves $r$.

    References: Huber, "Robust Estimation of a Location Parameter", 1964.

    Tangent: per element $dℓ = clip(r, −δ, δ)(dp − dt)$, reduced like $ℓ$.
    """
    r = pred - target
    a = jnp.abs(r)
    return _reduce(jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)), reduction)


def _huber_save(pred, target, delta, reduction, y):
    return pred - target


def _huber_backward(delta, reduction, r, g):
    dp = jnp.clip(r, -delta, delta) * _per_example(g, r.shape, reduction)
    return dp, -dp


def _huber_validate(pred, target, delta, reduction):
    v.finite_number("huber", "delta", delta, low=0, low_inclusive=False)
    _check_reduction("huber", reduction)


def _huber_tangent(delta, reduction, r, t):
    dp, dt = t
    return _reduce(jnp.clip(r, -delta, delta) * (dp - dt), reduction)


def _huber_switches(pred, target, delta, reduction):
    """Switches: $|r| ≤ δ$, where the quadratic meets the linear piece ($ℓ''$ jumps)."""
    return jnp.abs(pred - target) <= delta


huber = primitive(
    huber, _huber_backward, save=_huber_save, static=("delta", "reduction"),
    spec=v.shapes("huber", pred="…", target="…"), validate=_huber_validate,
    switches=_huber_switches,
    tangent=_huber_tangent,
    examples=[Example((gaussian(4, 3, scale=2.0), gaussian(4, 3), 1.0, "mean")),
              Example((gaussian(8, scale=2.0), gaussian(8), 0.5, "sum"))],
)


# Losses beyond the core set, one concept per module in fdl._losses (re-exported here).
from fdl._losses.cosine import cosine_embedding  # noqa: E402
from fdl._losses.cross_entropy import cross_entropy  # noqa: E402
from fdl._losses.ctc import ctc_loss  # noqa: E402
from fdl._losses.focal import sigmoid_focal_loss  # noqa: E402
from fdl._losses.hinge import multiclass_hinge  # noqa: E402
from fdl._losses.kl import kl_divergence  # noqa: E402

__all__ += ["cosine_embedding", "cross_entropy", "ctc_loss", "kl_divergence", "multiclass_hinge",
            "sigmoid_focal_loss"]
