"""Group normalisation and instance normalisation: statistics per example.

Layout: channels last, $X ∈ ℝ^{N×…×C}$ (`N×C`, NWC signals, NHWC images); the
$C$ channels fall into `groups` $G$ consecutive blocks of $C/G$. Each example's
group — its $C/G$ channels at every one of its $S$ positions (the axes between $N$ and
$C$), $m = S·C/G$ values — is standardised by its own $μ$ and $σ = √(v + ε)$ (biased
variance), then scaled and shifted per channel: $Y = γ ⊙ X̂ + β$, $γ, β ∈ ℝ^C$.
Nothing depends on the other examples, so training and inference are the same.

Instance norm is group norm with $G = C$ (each channel of each example alone);
layer norm over `(…, C)` of an image would be $G = 1$.

The derivation is the shared one (`fdl.ops.standardize`): with $G_Y = ∂L/∂Y$ and
$ĝ = γ ⊙ G_Y$, $∂L/∂β = Σ_{N,S} G_Y$, $∂L/∂γ = Σ_{N,S} G_Y ⊙ X̂$ and, per group,
$∂L/∂X = (1/σ)(ĝ − \\mathrm{mean}(ĝ) − X̂ ⊙ \\mathrm{mean}(ĝ ⊙ X̂))$. Here $γ$ varies inside
a group (one value per channel), so it stays inside the means.

References: Wu & He, "Group Normalization", 2018; Ulyanov, Vedaldi & Lempitsky,
"Instance Normalization: The Missing Ingredient for Fast Stylization", 2016.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl.ops.standardize import affine, affine_backward, affine_tangent, project
from fdl.primitive import Example, gaussian, positive, primitive

__all__ = ["group_norm", "instance_norm"]

_GROUP_AXES = (1, 3)  # of the grouped view N×S×G×(C/G): positions and channels in a group


def _grouped(x: jax.Array, groups: int) -> jax.Array:
    """$N×…×C$ viewed as $N×S×G×(C/G)$."""
    return x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)


def _standardise(x, groups, eps):
    """$(X̂, 1/σ)$: $X̂$ shaped like $x$, $1/σ$ as $N×1×G×1$."""
    xg = _grouped(x, groups)
    centred = xg - jnp.mean(xg, axis=_GROUP_AXES, keepdims=True)
    inv_std = 1 / jnp.sqrt(jnp.mean(centred * centred, axis=_GROUP_AXES, keepdims=True) + eps)
    return (centred * inv_std).reshape(x.shape), inv_std


# --------------------------------------------------------------------------- #
# group norm
# --------------------------------------------------------------------------- #


def group_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array, groups: int,
               eps: float = 1e-5) -> jax.Array:
    r"""Group normalisation: $Y = γ ⊙ X̂ + β$, $X̂$ standardised per example and group.

    Shapes: $X ∈ ℝ^{N×…×C}$ (at least `N×C`), $γ, β ∈ ℝ^C$, $Y$ like $X$; `groups`
    $G$ divides $C$; `groups`, `eps` static. Per example $ν$ and group $g$ the
    $m = S·C/G$ values $X[ν, \text{any position}, gC/G … (g+1)C/G − 1]$ have mean
    $μ_{νg}$ and biased variance $v_{νg}$; $X̂ = (X − μ)/σ$, $σ = √(v + ε)$.

    Derivation ($G_Y = ∂L/∂Y$, same shape as $Y$; sums over $N$ and the positions):

    * $∂L/∂β = Σ G_Y$, $∂L/∂γ = Σ G_Y ⊙ X̂$ (each $ℝ^C$);
    * $ĝ = γ ⊙ G_Y$ and, with `mean` over each group's $m$ values,
      $∂L/∂X = (1/σ)(ĝ − \mathrm{mean}(ĝ) − X̂ ⊙ \mathrm{mean}(ĝ ⊙ X̂))$, from
      $∂X̂_i/∂X_j = (δ_{ij} − 1/m − X̂_i X̂_j/m)/σ$ within a group (0 across groups).

    Residuals: $X̂$ (shape of $X$), $1/σ$ ($N×G$) and $γ$.

    Tangent, per group: $dX̂ = (1/σ)(dX − \mathrm{mean}(dX) − X̂ ⊙ \mathrm{mean}(X̂ ⊙ dX))$
    (the same symmetric projection), $dY = γ ⊙ dX̂ + dγ ⊙ X̂ + dβ$ (shape of $X$).
    """
    xhat, _ = _standardise(x, groups, eps)
    return affine(xhat, gamma, beta)


def _group_norm_save(x, gamma, beta, groups, eps, y):
    xhat, inv_std = _standardise(x, groups, eps)
    return xhat, inv_std, gamma


def _group_norm_backward(groups, eps, residuals, g):
    xhat, inv_std, gamma = residuals
    ghat, dgamma, dbeta = affine_backward(xhat, gamma, g)
    dx = project(_grouped(xhat, groups), inv_std, _grouped(ghat, groups), _GROUP_AXES)
    return dx.reshape(g.shape), dgamma, dbeta


def _group_norm_tangent(groups, eps, residuals, t):
    xhat, inv_std, gamma = residuals
    dx, dgamma, dbeta = t
    dxhat = project(_grouped(xhat, groups), inv_std, _grouped(dx, groups), _GROUP_AXES)
    return affine_tangent(xhat, gamma, dxhat.reshape(dx.shape), dgamma, dbeta)


def _group_norm_validate(x, gamma, beta, groups, eps):
    fn = "group_norm"
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)
    g = v.positive_int(fn, "groups", groups)
    if x.shape[-1] % g:
        raise ValueError(
            f"{fn}: groups={g} must divide the number of channels, {x.shape[-1]} (the last "
            f"axis of x, shape {tuple(x.shape)}); choose a divisor of {x.shape[-1]}")
    if x.size // (x.shape[0] * g) < 2:
        raise ValueError(
            f"{fn}: each group holds one value (x of shape {tuple(x.shape)}, groups={g}), so "
            "it normalises to 0; use fewer groups or inputs with more positions")


group_norm = primitive(
    group_norm, _group_norm_backward, save=_group_norm_save, static=("groups", "eps"),
    spec=v.shapes("group_norm", x="N×…×C: channels last", gamma="C", beta="C"),
    validate=_group_norm_validate, tangent=_group_norm_tangent, examples=[
        Example((gaussian(2, 3, 3, 4, scale=2.0), positive(4), gaussian(4), 2, 1e-5)),
        Example((gaussian(3, 6), positive(6), gaussian(6), 2, 1e-3)),
        Example((gaussian(2, 5, 3), positive(3), gaussian(3), 1, 0.1)),
    ],
)


# --------------------------------------------------------------------------- #
# instance norm
# --------------------------------------------------------------------------- #


def instance_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array,
                  eps: float = 1e-5) -> jax.Array:
    r"""Instance normalisation: each channel of each example standardised over its positions.

    Shapes: $X ∈ ℝ^{N×…×C}$ with at least one position axis (NWC, NHWC), $γ, β ∈ ℝ^C$,
    $Y$ like $X$; `eps` static. It is `group_norm` with $G = C$: per $(ν, c)$ the
    $m = S$ values $X[ν, :, c]$ have their own $μ$, $σ$.

    Derivation (as group norm's with one channel per group; $G_Y = ∂L/∂Y$, `mean`
    over the $S$ positions of one example and channel, $ĝ = γ ⊙ G_Y$):

    * $∂L/∂β = Σ_{N,S} G_Y$, $∂L/∂γ = Σ_{N,S} G_Y ⊙ X̂$;
    * $∂L/∂X = (1/σ)(ĝ − \mathrm{mean}(ĝ) − X̂ ⊙ \mathrm{mean}(ĝ ⊙ X̂))$ — here $γ$ is
      constant on a group, so this is $(γ/σ)(G_Y − \mathrm{mean}(G_Y) − X̂ ⊙ \mathrm{mean}(G_Y ⊙ X̂))$.

    Residuals: $X̂$, $1/σ$ ($N×C$), $γ$. Tangent: group norm's with $G = C$,
    $dY = γ ⊙ dX̂ + dγ ⊙ X̂ + dβ$.
    """
    return group_norm.forward(x, gamma, beta, x.shape[-1], eps)


def _instance_norm_save(x, gamma, beta, eps, y):
    return _group_norm_save(x, gamma, beta, x.shape[-1], eps, y)


def _instance_norm_backward(eps, residuals, g):
    return _group_norm_backward(g.shape[-1], eps, residuals, g)


def _instance_norm_tangent(eps, residuals, t):
    return _group_norm_tangent(residuals[0].shape[-1], eps, residuals, t)


def _instance_norm_validate(x, gamma, beta, eps):
    fn = "instance_norm"
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)
    if x.ndim < 3 or x.size // (x.shape[0] * x.shape[-1]) < 2:
        raise ValueError(
            f"{fn}: x must have positions to normalise over (N×…×C with more than one "
            f"position, e.g. NHWC images), got shape {tuple(x.shape)}; for N×C features "
            "use layer_norm or group_norm")


instance_norm = primitive(
    instance_norm, _instance_norm_backward, save=_instance_norm_save, static=("eps",),
    spec=v.shapes("instance_norm", x="N×…×C: channels last", gamma="C", beta="C"),
    validate=_instance_norm_validate, tangent=_instance_norm_tangent, examples=[
        Example((gaussian(2, 3, 4, 3, scale=2.0), positive(3), gaussian(3), 1e-5)),
        Example((gaussian(3, 5, 2), positive(2), gaussian(2), 1e-3)),
    ],
)
