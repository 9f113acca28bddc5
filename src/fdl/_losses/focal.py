"""Binary focal loss from logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl._losses.reduction import check_probabilities, check_reduction, per_example, reduce
from fdl.primitive import Example, gaussian, primitive, uniform

__all__ = ["sigmoid_focal_loss"]


def _sigmoid(z):
    e = jnp.exp(-jnp.abs(z))
    return jnp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _terms(z, y, alpha, gamma):
    """`(p, p_t, α_t, ce)` element-wise."""
    p = _sigmoid(z)
    p_t = p * y + (1 - p) * (1 - y)
    a_t = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    ce = jnp.logaddexp(z, jnp.zeros_like(z)) - y * z
    return p, p_t, a_t, ce


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float | None = 0.25,
                       gamma: float = 2.0, reduction: str = "mean") -> jax.Array:
    r"""Binary focal loss $ℓ = α_t (1 − p_t)^γ\, \mathrm{CE}(z, y)$, element-wise, from logits.

    Shapes: logits $z$ and targets $y ∈ [0, 1]$ of the same (any) shape; `alpha`
    ($α ∈ [0, 1]$, or `None` for $α_t = 1$), `gamma` ($γ ≥ 0$) and `reduction`
    static. With $p = σ(z)$:
    $p_t = p y + (1 − p)(1 − y)$ (the probability given to the target),
    $α_t = α y + (1 − α)(1 − y)$ and
    $\mathrm{CE} = \mathrm{softplus}(z) − y z$ (the binary cross-entropy, overflow-free).
    $γ = 0$, $α = $ `None` is `sigmoid_binary_cross_entropy`; $γ > 0$ down-weights
    the well-classified elements ($p_t → 1$).

    Derivation (element-wise; $f = (1 − p_t)^γ$):

    * $∂p/∂z = p(1 − p)$, $∂p_t/∂z = (2y − 1)\, p(1 − p)$, $∂\mathrm{CE}/∂z = p − y$, so
      $∂ℓ/∂z = α_t [−γ (1 − p_t)^{γ−1} (2y − 1) p(1 − p)\, \mathrm{CE} + f (p − y)]$;
    * $∂p_t/∂y = 2p − 1$, $∂α_t/∂y = 2α − 1$ (0 without $α$), $∂\mathrm{CE}/∂y = −z$, so
      $∂ℓ/∂y = (2α − 1) f\, \mathrm{CE} + α_t [−γ (1 − p_t)^{γ−1} (2p − 1)\, \mathrm{CE} − f z]$;

    each times the element's cotangent ($g/n$ for the mean). The $γ (1 − p_t)^{γ−1}$
    factor is written as $γ f/(1 − p_t)$ only where $p_t < 1$ (it is 0 for $γ = 0$).

    Residuals: $z$ and $y$.

    Tangent: $dℓ = (∂ℓ/∂z) dz + (∂ℓ/∂y) dy$ with the same partials, reduced like $ℓ$.

    References: Lin, Goyal, Girshick, He & Dollár, "Focal Loss for Dense Object
    Detection", 2017.
    """
    _, p_t, a_t, ce = _terms(logits, targets, alpha, gamma)
    return reduce(a_t * (1 - p_t) ** gamma * ce, reduction)


def _save(logits, targets, alpha, gamma, reduction, y):
    return logits, targets


def _partials(z, y, alpha, gamma):
    p, p_t, a_t, ce = _terms(z, y, alpha, gamma)
    q = 1 - p_t
    f = q ** gamma
    # γ(1 − p_t)^{γ−1}: 0 for γ = 0, else γ q^{γ−1}
    df = jnp.zeros_like(q) if gamma == 0 else gamma * q ** (gamma - 1)
    dz = a_t * (-df * (2 * y - 1) * p * (1 - p) * ce + f * (p - y))
    dy = a_t * (-df * (2 * p - 1) * ce - f * z)
    if alpha is not None:
        dy = dy + (2 * alpha - 1) * f * ce
    return dz, dy


def _backward(alpha, gamma, reduction, residuals, g):
    z, y = residuals
    dz, dy = _partials(z, y, alpha, gamma)
    ge = per_example(g, z.shape, reduction)
    return ge * dz, ge * dy


def _tangent(alpha, gamma, reduction, residuals, t):
    z, y = residuals
    tz, ty = t
    dz, dy = _partials(z, y, alpha, gamma)
    return reduce(dz * tz + dy * ty, reduction)


def _validate(logits, targets, alpha, gamma, reduction):
    fn = "sigmoid_focal_loss"
    if alpha is not None:
        v.finite_number(fn, "alpha", alpha, low=0)
        if alpha > 1:
            raise ValueError(f"{fn}: alpha must be in [0, 1] (the weight of the positive "
                             f"class) or None, got {alpha!r}")
    v.finite_number(fn, "gamma", gamma, low=0)
    check_reduction(fn, reduction)
    check_probabilities(fn, targets)


sigmoid_focal_loss = primitive(
    sigmoid_focal_loss, _backward, save=_save, static=("alpha", "gamma", "reduction"),
    spec=v.shapes("sigmoid_focal_loss", logits="…", targets="…"), validate=_validate,
    tangent=_tangent, examples=[
        Example((gaussian(4, 3, scale=2.0), uniform(4, 3, low=0.05, high=0.95), 0.25, 2.0,
                 "mean")),
        Example((gaussian(6), uniform(6, low=0.0, high=1.0), None, 1.5, "none")),
        Example((gaussian(2, 5), uniform(2, 5, low=0.1, high=0.9), 0.7, 0.0, "sum")),
    ],
)
