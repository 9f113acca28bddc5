"""Multi-class hinge loss (the multi-class SVM margin)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl._losses.reduction import check_reduction, per_example, reduce
from fdl.primitive import Example, gaussian, labels, primitive

__all__ = ["multiclass_hinge"]


def _margins(scores, labels, margin):
    r"""`(h, a, onehot)`: $h_k = Δ + z_k − z_y$ for $k \neq y$ (0 at $k = y$), the active
    set $a_k = [h_k > 0]$ ($k \neq y$) and the one-hot of the labels."""
    onehot = jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype)
    z_y = jnp.sum(onehot * scores, axis=-1, keepdims=True)
    h = (margin + scores - z_y) * (1 - onehot)
    return h, (h > 0) & (onehot == 0), onehot


def multiclass_hinge(scores: jax.Array, labels: jax.Array, margin: float = 1.0, power: int = 1,
                     reduction: str = "mean") -> jax.Array:
    r"""Multi-class hinge loss $ℓ = (1/K) Σ_{k \neq y} \max(0, Δ + z_k − z_y)^P$.

    Shapes: scores $z ∈ ℝ^{…×K}$, integer labels $y ∈ \{0…K−1\}^{…}$
    (`scores.shape[:-1]`); `margin` $Δ > 0$, `power` $P ∈ \{1, 2\}$ and `reduction`
    static. Every wrong class scoring within $Δ$ of the right one costs its shortfall
    (Weston & Watkins; PyTorch's `multi_margin_loss`, including the $1/K$).

    Derivation, one example. Let $h_k = Δ + z_k − z_y$ and the active set
    $a_k = [h_k > 0]$ ($k \neq y$; $a_y = 0$): $ℓ$ is piecewise polynomial, switching
    where some $h_k$ crosses 0, and away from those points

    * $P = 1$: $∂ℓ/∂z_k = a_k/K$ for $k \neq y$, $∂ℓ/∂z_y = −Σ_{k \neq y} a_k/K$;
    * $P = 2$: $∂ℓ/∂z_k = 2 a_k h_k/K$ for $k \neq y$, $∂ℓ/∂z_y = −Σ_{k \neq y} 2 a_k h_k/K$;

    i.e. $∂ℓ/∂z = c − (Σ_k c_k)\,\mathrm{onehot}(y)$ with $c_k = a_k P h_k^{P−1}/K$;
    times the example's cotangent. At $h_k = 0$ the subgradient with $a_k = 0$ is
    taken. The active set is declared as the primitive's `switches`. Labels get no
    gradient.

    Residuals: the scores and labels.

    Tangent: $dℓ = ⟨c, dz⟩ − (Σ_k c_k)\, dz_y$, reduced like $ℓ$.
    """
    h, _, _ = _margins(scores, labels, margin)
    return reduce(jnp.sum(jnp.maximum(h, 0) ** power, axis=-1) / scores.shape[-1], reduction)


def _save(scores, labels, margin, power, reduction, y):
    return scores, labels


def _slopes(scores, labels, margin, power):
    """$∂ℓ/∂z$ per example: $c − (Σ c)\\,\\mathrm{onehot}(y)$."""
    h, active, onehot = _margins(scores, labels, margin)
    a = active.astype(scores.dtype)
    c = a / scores.shape[-1] if power == 1 else 2 * a * h / scores.shape[-1]
    return c - jnp.sum(c, axis=-1, keepdims=True) * onehot


def _backward(margin, power, reduction, residuals, g):
    scores, labels = residuals
    ge = per_example(g, scores.shape[:-1], reduction)[..., None]
    return ge * _slopes(scores, labels, margin, power), None


def _tangent(margin, power, reduction, residuals, t):
    scores, labels = residuals
    dz, _ = t
    return reduce(jnp.sum(_slopes(scores, labels, margin, power) * dz, axis=-1), reduction)


def _switches(scores, labels, margin, power, reduction):
    return _margins(scores, labels, margin)[1]


def _validate(scores, labels, margin, power, reduction):
    fn = "multiclass_hinge"
    v.finite_number(fn, "margin", margin, low=0, low_inclusive=False)
    if power not in (1, 2) or isinstance(power, bool):
        raise ValueError(f"{fn}: power must be 1 (hinge) or 2 (squared hinge), got {power!r}")
    check_reduction(fn, reduction)
    k = scores.shape[-1]
    bad = v.first_out_of_range(labels, k)
    if bad is not None:
        value, i, lo, hi = bad
        raise ValueError(f"{fn}: labels must be in [0, {k}) for {k} classes, got {value} at "
                         f"index {i} (range of labels given: {lo}..{hi})")


multiclass_hinge = primitive(
    multiclass_hinge, _backward, save=_save, static=("margin", "power", "reduction"),
    spec=v.shapes("multiclass_hinge", scores="…×K", labels="int …"), validate=_validate,
    switches=_switches, tangent=_tangent, examples=[
        Example((gaussian(6, 4), labels(6, classes=4), 1.0, 1, "mean")),
        Example((gaussian(5, 3, scale=0.5), labels(5, classes=3), 0.5, 2, "sum")),
        Example((gaussian(2, 3, 5), labels(2, 3, classes=5), 2.0, 1, "none")),
    ],
)
