"""Cosine embedding loss: pull similar pairs together, push dissimilar ones apart."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v
from fdl._losses.reduction import check_reduction, per_example, reduce
from fdl.primitive import Example, gaussian, primitive

__all__ = ["cosine_embedding"]


def _cosine(a, b, eps):
    """`(cos, r, ‖a‖² + ε, ‖b‖² + ε)` per row, `r = 1/√((‖a‖² + ε)(‖b‖² + ε))`."""
    na = jnp.sum(a * a, axis=-1) + eps
    nb = jnp.sum(b * b, axis=-1) + eps
    r = 1 / jnp.sqrt(na * nb)
    return jnp.sum(a * b, axis=-1) * r, r, na, nb


def cosine_embedding(a: jax.Array, b: jax.Array, labels: jax.Array, margin: float = 0.0,
                     eps: float = 1e-8, reduction: str = "mean") -> jax.Array:
    r"""Cosine embedding loss: $1 − \cos(a, b)$ for similar pairs ($y = 1$),
    $\max(0, \cos(a, b) − Δ)$ for dissimilar ones ($y = −1$).

    Shapes: $a, b ∈ ℝ^{…×d}$ (one embedding per row), integer labels
    $y ∈ \{1, −1\}^{…}$ (`a.shape[:-1]`); `margin` $Δ ∈ [−1, 1]$, `eps` $ε > 0$ and
    `reduction` static. $\cos(a, b) = ⟨a, b⟩ r$ with
    $r = 1/√((‖a‖² + ε)(‖b‖² + ε))$ (the $ε$ keeps a zero row finite).

    Derivation, one row. With $n_a = ‖a‖² + ε$, $n_b = ‖b‖² + ε$:
    $∂r/∂a = −r\, a/n_a$, so

    $$ ∂\cos/∂a = r\, b − \cos · a/n_a, \qquad ∂\cos/∂b = r\, a − \cos · b/n_b. $$

    Then $∂ℓ/∂\cos = −1$ for $y = 1$ and $s = [\cos > Δ]$ for $y = −1$ (the hinge's
    active set, declared as the primitive's `switches`; at $\cos = Δ$ the
    subgradient 0), and $∂ℓ/∂a = (∂ℓ/∂\cos)\, ∂\cos/∂a$ (likewise $b$), times the
    row's cotangent. Labels get no gradient.

    Residuals: $a$, $b$ and the labels.

    Tangent: $dℓ = (∂ℓ/∂\cos)(⟨∂\cos/∂a, da⟩ + ⟨∂\cos/∂b, db⟩)$, reduced like $ℓ$.
    """
    cos, _, _, _ = _cosine(a, b, eps)
    return reduce(jnp.where(labels == 1, 1 - cos, jnp.maximum(cos - margin, 0)), reduction)


def _save(a, b, labels, margin, eps, reduction, y):
    return a, b, labels


def _partials(residuals, margin, eps):
    """`(∂ℓ/∂a, ∂ℓ/∂b)` per row."""
    a, b, labels = residuals
    cos, r, na, nb = _cosine(a, b, eps)
    dcos = jnp.where(labels == 1, -1.0, (cos > margin).astype(a.dtype)).astype(a.dtype)
    da = (r[..., None] * b - (cos / na)[..., None] * a) * dcos[..., None]
    db = (r[..., None] * a - (cos / nb)[..., None] * b) * dcos[..., None]
    return da, db


def _backward(margin, eps, reduction, residuals, g):
    da, db = _partials(residuals, margin, eps)
    ge = per_example(g, da.shape[:-1], reduction)[..., None]
    return ge * da, ge * db, None


def _tangent(margin, eps, reduction, residuals, t):
    ta, tb, _ = t
    da, db = _partials(residuals, margin, eps)
    return reduce(jnp.sum(da * ta + db * tb, axis=-1), reduction)


def _switches(a, b, labels, margin, eps, reduction):
    return (labels == 1) | (_cosine(a, b, eps)[0] > margin)


def _validate(a, b, labels, margin, eps, reduction):
    fn = "cosine_embedding"
    v.finite_number(fn, "margin", margin, low=-1)
    if margin > 1:
        raise ValueError(f"{fn}: margin must be in [-1, 1] (a cosine), got {margin!r}")
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)
    check_reduction(fn, reduction)
    if v.is_concrete(labels) and labels.size:
        y = np.asarray(labels)
        bad = (y != 1) & (y != -1)
        if bad.any():
            i = v.first_index(bad)
            raise ValueError(f"{fn}: labels must be 1 (similar) or -1 (dissimilar), got "
                             f"{y[i]} at index {i}")


def _signs(*shape: int):
    """Example labels: ±1 at random."""
    return lambda rng, dtype: jnp.asarray(
        (2 * np.random.default_rng(rng).integers(0, 2, shape) - 1).astype(np.int32))


cosine_embedding = primitive(
    cosine_embedding, _backward, save=_save, static=("margin", "eps", "reduction"),
    spec=v.shapes("cosine_embedding", a="…×d", b="…×d", labels="int …"), validate=_validate,
    switches=_switches, tangent=_tangent, examples=[
        Example((gaussian(6, 4), gaussian(6, 4), _signs(6), -0.5, 1e-8, "mean")),
        Example((gaussian(2, 3, 5), gaussian(2, 3, 5), _signs(2, 3), 0.0, 1e-8, "sum")),
        Example((gaussian(4, 3), gaussian(4, 3), _signs(4), 0.2, 1e-3, "none")),
    ],
)
