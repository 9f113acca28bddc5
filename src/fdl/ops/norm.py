"""Normalisation: batch norm (training and inference), layer norm, RMS norm.

All three standardise $x$ along some axes and apply a learned per-feature
scale $γ$ (`gamma`) and, except RMS norm, shift $β$ (`beta`):

* batch norm — statistics over every axis but the last (the channels): the batch
  for $N×C$, batch and pixels for NHWC images;
* layer norm — statistics over the last axis (the features of each example);
* RMS norm — layer norm without centring: divide by the root mean square.

Notation for one group of $m$ normalised values (a channel's column for batch
norm, an example's row for layer norm): $μ = (1/m) Σ x$,
$v = (1/m) Σ (x − μ)²$ (the biased variance), $σ = √(v + ε)$,
$x̂ = (x − μ)/σ$, $y = γ x̂ + β$; $mean(·)$ is the mean over the group.

The derivation shared by batch and layer norm, for one group with upstream
$ĝ = ∂L/∂x̂ = γ ⊙ ∂L/∂y$: $∂x̂_i/∂x_j = (δ_ij − 1/m − x̂_i x̂_j/m)/σ$ (the $−1/m$
from $μ$, the $x̂_i x̂_j/m$ from $σ$, using $∂σ/∂x_j = x̂_j/m$), so

$$ ∂L/∂x = (1/σ)(ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)), $$

the compact form that never builds the $m×m$ Jacobian. It, and the tail
$y = γ x̂ + β$ with its rules, are written once in `fdl.ops.standardize` (shared with
group and instance norm); each rule below is those pieces plus its own statistics.

References: Ioffe & Szegedy, "Batch Normalization", 2015; Ba, Kiros & Hinton,
"Layer Normalization", 2016; Zhang & Sennrich, "Root Mean Square Layer
Normalization", 2019.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v
from fdl.ops.standardize import affine, affine_backward, affine_tangent, per_channel, project
from fdl.primitive import Example, gaussian, positive, primitive

__all__ = ["batch_norm", "batch_norm_inference", "layer_norm", "rms_norm"]


_per_channel = per_channel


def _eps_validate(fn: str):
    """`validate` for a norm whose last argument is `eps` (static): finite and > 0."""
    def check(*args):
        v.finite_number(fn, "eps", args[-1], low=0, low_inclusive=False)
    return check


# --------------------------------------------------------------------------- #
# batch norm, training mode
# --------------------------------------------------------------------------- #


def batch_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array,
               eps: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Batch normalisation with batch statistics (training mode); returns $(y, μ, v)$.

    Shapes: $X ∈ ℝ^{N×…×C}$ ($N×C$, or NHWC images), $γ, β ∈ ℝ^C$; the
    statistics run over every axis but the last, $m = x.size/C$ values per
    channel; `eps` static. Outputs: $Y$ (shape of $X$), the batch mean
    $μ ∈ ℝ^C$ and the biased batch variance $v ∈ ℝ^C$ (the ones $Y$ was
    normalised with), so that a layer can update running statistics from the
    same pass. (For an unbiased running variance multiply $v$ by $m/(m − 1)$.)

    Derivation, per channel (cotangents $G = ∂L/∂Y$, $g_μ = ∂L/∂μ$,
    $g_v = ∂L/∂v$; $Σ$ and `mean` over the $m$ values of the channel):

    * $∂L/∂β = Σ G$, $∂L/∂γ = Σ G ⊙ X̂$;
    * through $Y$ (module docstring, with $ĝ = γ G$ and $γ$ constant on the
      channel): $(γ/σ)(G − mean(G) − X̂ ⊙ mean(G ⊙ X̂))$;
    * through $μ$: $∂μ/∂X = 1/m$ ⇒ $+ g_μ/m$;
    * through $v$: $∂v/∂X_i = 2(X_i − μ)/m$ (the $μ$ path sums to zero), and
      $X − μ = σX̂$ ⇒ $+ 2 g_v σ X̂/m$.

    So $∂L/∂X = (γ/σ)(G − mean(G) − X̂ ⊙ mean(G ⊙ X̂)) + g_μ/m + 2 g_v σ X̂/m$.
    When $μ, v$ only feed running statistics their cotangents are zero and this is
    the familiar formula; the extra terms make the rule exact for every use.

    Residuals: $X̂$ (shape of $X$), $1/σ$ and $γ$ ($C$ each).

    Tangent, per channel (`mean` over the channel's $m$ values; the Jacobian of
    $X̂$ in $X$ is symmetric, so it is the backward's projection applied to `dX`):
    $dX̂ = (1/σ)(dX − mean(dX) − X̂ ⊙ mean(X̂ ⊙ dX))$,
    $dY = γ dX̂ + dγ X̂ + dβ$ (shape of $X$), $dμ = mean(dX)$ and
    $dv = 2 mean((X − μ) ⊙ dX) = 2σ mean(X̂ ⊙ dX)$ ($C$ each).
    """
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    centred = x - _per_channel(mean, x.ndim)
    var = jnp.mean(centred * centred, axis=axes)
    xhat = centred / _per_channel(jnp.sqrt(var + eps), x.ndim)
    return affine(xhat, gamma, beta), mean, var


def _batch_norm_save(x, gamma, beta, eps, outputs):
    _, mean, var = outputs
    inv_std = 1 / jnp.sqrt(var + eps)
    return (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim), inv_std, gamma


def _batch_norm_backward(eps, residuals, cotangents):
    xhat, inv_std, gamma = residuals
    g, g_mean, g_var = cotangents
    axes, nd = tuple(range(xhat.ndim - 1)), xhat.ndim
    m = xhat.size // xhat.shape[-1]
    ghat, dgamma, dbeta = affine_backward(xhat, gamma, g)
    dx = project(xhat, _per_channel(inv_std, nd), ghat, axes)
    dx = dx + _per_channel(g_mean / m, nd) + xhat * _per_channel(2 * g_var / (m * inv_std), nd)
    return dx, dgamma, dbeta


def _batch_norm_validate(x, gamma, beta, eps):
    fn = "batch_norm"
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)
    if x.size // max(x.shape[-1], 1) < 2:
        raise ValueError(
            f"{fn}: batch statistics need more than one value per channel, got x of shape "
            f"{tuple(x.shape)}; use a batch of at least 2, or batch_norm_inference with "
            "running statistics")


def _batch_norm_tangent(eps, residuals, t):
    xhat, inv_std, gamma = residuals
    dx, dgamma, dbeta = t
    axes, nd = tuple(range(xhat.ndim - 1)), xhat.ndim
    dmean = jnp.mean(dx, axis=axes)
    proj = jnp.mean(xhat * dx, axis=axes)  # mean(X̂ ⊙ dX), per channel
    dxhat = project(xhat, _per_channel(inv_std, nd), dx, axes)
    return affine_tangent(xhat, gamma, dxhat, dgamma, dbeta), dmean, 2 * proj / inv_std


batch_norm = primitive(
    batch_norm, _batch_norm_backward, save=_batch_norm_save, static=("eps",),
    spec=v.shapes("batch_norm", x="N×…×C, channels last", gamma="C: one per channel",
                  beta="C: one per channel"),
    validate=_batch_norm_validate,
    tangent=_batch_norm_tangent, examples=[
        Example((gaussian(8, 3, scale=2.0), positive(3), gaussian(3), 1e-5)),
        Example((gaussian(2, 3, 3, 4), positive(4), gaussian(4), 1e-3)),
        Example((gaussian(2, 1), positive(1), gaussian(1), 0.1)),
    ],
)


# --------------------------------------------------------------------------- #
# batch norm, inference mode
# --------------------------------------------------------------------------- #


def batch_norm_inference(x: jax.Array, gamma: jax.Array, beta: jax.Array, mean: jax.Array,
                         var: jax.Array, eps: float = 1e-5) -> jax.Array:
    r"""Batch normalisation with given (running) statistics: a per-channel affine map.

    $Y = γ (X − μ)/σ + β$, $σ = √(v + ε)$; $X ∈ ℝ^{N×…×C}$, $γ, β, μ, v ∈ ℝ^C$,
    `eps` static. Nothing depends on the batch, so each output depends only on
    its own input.

    Derivation ($G = ∂L/∂Y$, $X̂ = (X − μ)/σ$, sums over all axes but the last):

    * $∂L/∂X = G γ/σ$;  $∂L/∂β = Σ G$;  $∂L/∂γ = Σ G ⊙ X̂$;
    * $∂L/∂μ = −(γ/σ) Σ G$;
    * $∂σ/∂v = 1/(2σ)$ and $∂X̂/∂σ = −X̂/σ$ ⇒ $∂L/∂v = −(γ/(2σ²)) Σ G ⊙ X̂$.

    (A layer normally holds $μ, v$ as state and never differentiates them; the
    rule is exact anyway.) Residuals: $X̂$, $1/σ$ and $γ$.

    Tangent ($dσ = dv/(2σ)$): $dX̂ = (dX − dμ)/σ − X̂ ⊙ dv/(2σ²)$,
    $dY = γ dX̂ + dγ X̂ + dβ$ (shape of $X$; the $C$-vectors broadcast).
    """
    inv_std = 1 / jnp.sqrt(var + eps)
    xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    return affine(xhat, gamma, beta)


def _bn_inference_save(x, gamma, beta, mean, var, eps, y):
    inv_std = 1 / jnp.sqrt(var + eps)
    return (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim), inv_std, gamma


def _bn_inference_backward(eps, residuals, g):
    xhat, inv_std, gamma = residuals
    scale = gamma * inv_std
    ghat, dgamma, dbeta = affine_backward(xhat, gamma, g)
    dx = ghat * _per_channel(inv_std, g.ndim)
    return dx, dgamma, dbeta, -scale * dbeta, -0.5 * scale * inv_std * dgamma


def _bn_inference_validate(x, gamma, beta, mean, var, eps):
    fn = "batch_norm_inference"
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)
    if v.is_concrete(var) and var.size and np.min(np.asarray(var)) < 0:
        raise ValueError(
            f"{fn}: var must be ≥ 0 (a variance), got minimum {np.min(np.asarray(var))!r}")


def _bn_inference_tangent(eps, residuals, t):
    xhat, inv_std, gamma = residuals
    dx, dgamma, dbeta, dmean, dvar = t
    nd = xhat.ndim
    dxhat = (dx - _per_channel(dmean, nd)) * _per_channel(inv_std, nd) - xhat * _per_channel(
        0.5 * inv_std * inv_std * dvar, nd)
    return affine_tangent(xhat, gamma, dxhat, dgamma, dbeta)


batch_norm_inference = primitive(
    batch_norm_inference, _bn_inference_backward, save=_bn_inference_save, static=("eps",),
    spec=v.shapes("batch_norm_inference", x="…×C, channels last", gamma="C: one per channel",
                  beta="C: one per channel", mean="C: one per channel", var="C: one per channel"),
    validate=_bn_inference_validate,
    tangent=_bn_inference_tangent, examples=[
        Example((gaussian(5, 3), positive(3), gaussian(3), gaussian(3), positive(3), 1e-5)),
        Example((gaussian(2, 3, 2, 4), positive(4), gaussian(4), gaussian(4), positive(4), 1e-3)),
    ],
)


# --------------------------------------------------------------------------- #
# layer norm
# --------------------------------------------------------------------------- #


def layer_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array,
               eps: float = 1e-5) -> jax.Array:
    r"""Layer normalisation over the last axis: $Y = γ ⊙ X̂ + β$ per example.

    Shapes: $X ∈ ℝ^{…×d}$ (any leading batch axes), $γ, β ∈ ℝ^d$, $Y$ like
    $X$; `eps` static. Each row $x ∈ ℝ^d$ is standardised by its own
    $μ, σ$ ($m = d$).

    Derivation ($G = ∂L/∂Y$; `mean` along the last axis; $Σ_batch$ over all
    leading axes):

    * $∂L/∂β = Σ_batch G$, $∂L/∂γ = Σ_batch G ⊙ X̂$;
    * with $Ĝ = γ ⊙ G$ ($γ$ varies along the normalised axis, so it stays
      inside): $∂L/∂X = (1/σ)(Ĝ − mean(Ĝ) − X̂ ⊙ mean(Ĝ ⊙ X̂))$ (module docstring).

    Residuals: $X̂$ (shape of $X$), $1/σ$ (one per row) and $γ$.

    Tangent, per row (`mean` along the last axis):
    $dX̂ = (1/σ)(dX − mean(dX) − X̂ ⊙ mean(X̂ ⊙ dX))$, $dY = γ ⊙ dX̂ + dγ ⊙ X̂ + dβ$
    (shape of $X$).
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    xhat = centred / jnp.sqrt(var + eps)
    return affine(xhat, gamma, beta)


def _layer_norm_save(x, gamma, beta, eps, y):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    inv_std = 1 / jnp.sqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return centred * inv_std, inv_std, gamma


def _layer_norm_backward(eps, residuals, g):
    xhat, inv_std, gamma = residuals
    ghat, dgamma, dbeta = affine_backward(xhat, gamma, g)
    return project(xhat, inv_std, ghat, -1), dgamma, dbeta


def _layer_norm_tangent(eps, residuals, t):
    xhat, inv_std, gamma = residuals
    dx, dgamma, dbeta = t
    return affine_tangent(xhat, gamma, project(xhat, inv_std, dx, -1), dgamma, dbeta)


layer_norm = primitive(
    layer_norm, _layer_norm_backward, save=_layer_norm_save, static=("eps",),
    spec=v.shapes("layer_norm", x="…×d", gamma="d: one per feature", beta="d: one per feature"),
    validate=_eps_validate("layer_norm"),
    tangent=_layer_norm_tangent, examples=[
        Example((gaussian(4, 6, scale=2.0), positive(6), gaussian(6), 1e-5)),
        Example((gaussian(2, 3, 5), positive(5), gaussian(5), 1e-3)),
        Example((gaussian(7), positive(7), gaussian(7), 0.1)),
    ],
)


# --------------------------------------------------------------------------- #
# RMS norm
# --------------------------------------------------------------------------- #


def rms_norm(x: jax.Array, gamma: jax.Array, eps: float = 1e-6) -> jax.Array:
    r"""RMS normalisation over the last axis: $Y = γ ⊙ X/r$, $r = √(mean(X²) + ε)$.

    Shapes: $X ∈ ℝ^{…×d}$, $γ ∈ ℝ^d$, $Y$ like $X$; `eps` static. No
    centring and no shift: $X̂ = X/r$.

    Derivation, one row ($Ĝ = γ ⊙ G$): $∂r/∂x_j = x_j/(d r) = x̂_j/d$, so
    $∂x̂_i/∂x_j = δ_ij/r − x_i x̂_j/(d r²) = (δ_ij − x̂_i x̂_j/d)/r$ and

    $$ ∂L/∂X = (1/r)(Ĝ − X̂ ⊙ mean(Ĝ ⊙ X̂)) $$

    (layer norm's formula without the `mean(Ĝ)` term that centring brings);
    $∂L/∂γ = Σ_batch G ⊙ X̂$.

    Residuals: $X̂$, `1/r` (one per row) and $γ$.

    Tangent, per row: $dX̂ = (1/r)(dX − X̂ ⊙ mean(X̂ ⊙ dX))$, $dY = γ ⊙ dX̂ + dγ ⊙ X̂$
    (shape of $X$).
    """
    xhat = x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return affine(xhat, gamma, None)


def _rms_norm_save(x, gamma, eps, y):
    inv_rms = 1 / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * inv_rms, inv_rms, gamma


def _rms_norm_backward(eps, residuals, g):
    xhat, inv_rms, gamma = residuals
    ghat, dgamma, _ = affine_backward(xhat, gamma, g)
    return project(xhat, inv_rms, ghat, -1, centred=False), dgamma


def _rms_norm_tangent(eps, residuals, t):
    xhat, inv_rms, gamma = residuals
    dx, dgamma = t
    dxhat = project(xhat, inv_rms, dx, -1, centred=False)
    return affine_tangent(xhat, gamma, dxhat, dgamma, None)


rms_norm = primitive(
    rms_norm, _rms_norm_backward, save=_rms_norm_save, static=("eps",),
    spec=v.shapes("rms_norm", x="…×d", gamma="d: one per feature"),
    validate=_eps_validate("rms_norm"),
    tangent=_rms_norm_tangent, examples=[
        Example((gaussian(4, 6, scale=2.0), positive(6), 1e-6)),
        Example((gaussian(2, 3, 5), positive(5), 1e-3)),
        Example((gaussian(7), positive(7), 0.1)),
    ],
)
