"""Reparametrised weights: weight normalisation and spectral normalisation.

Both turn a raw weight into the one a layer uses. Layout: the output units are the
last axis (dense `d_in×d_out`, conv kernels HWIO); a weight $V ∈ ℝ^{…×d_out}$ is read
as the matrix $\\bar V ∈ ℝ^{m×d_{out}}$, $m$ the product of the other axes (`V.reshape(-1,
d_out)`), one column per output unit.

* Weight norm: each column's direction and length apart, $W = g ⊙ V/‖V‖$.
* Spectral norm: the whole matrix divided by its largest singular value $σ$, estimated
  by power iteration. The iteration's vectors $u ∈ ℝ^m$, $v ∈ ℝ^{d_out}$ are explicit
  state (like batch norm's running statistics): `power_iteration` advances them (a
  plain function; a layer does not differentiate it), and the primitive
  `spectral_normalize` divides by $σ = uᵀ \\bar W v$ with $u, v$ as its arguments, so
  its rule is exact in $W$, $u$ and $v$.

References: Salimans & Kingma, "Weight Normalization: A Simple Reparameterization to
Accelerate Training of Deep Neural Networks", 2016; Miyato, Kataoka, Koyama & Yoshida,
"Spectral Normalization for Generative Adversarial Networks", 2018.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v
from fdl._samplers import _cast, _host_rng
from fdl.ops.standardize import per_channel
from fdl.primitive import Example, gaussian, positive, primitive

__all__ = ["power_iteration", "spectral_normalize", "weight_norm"]


def _columns(a: jax.Array) -> tuple[int, ...]:
    """The axes summed over for one output unit: all but the last."""
    return tuple(range(a.ndim - 1))


# --------------------------------------------------------------------------- #
# weight norm
# --------------------------------------------------------------------------- #


def weight_norm(v: jax.Array, g: jax.Array) -> jax.Array:
    r"""Weight normalisation $W = g ⊙ V/‖V‖$, one norm per output unit (last axis).

    Shapes: $V ∈ ℝ^{…×d_{out}}$ (any rank ≥ 1), $g ∈ ℝ^{d_{out}}$, $W$ like $V$.
    For each output unit $j$, $n_j = ‖V[…, j]‖$ (the norm over all other axes),
    $V̂ = V/n$ and $W[…, j] = g_j V̂[…, j]$: $g_j$ is the column's length, $V̂$ its
    direction.

    Derivation ($G = ∂L/∂W$, like $V$; per column, sums over all axes but the last):

    * $∂W_i/∂g = V̂_i$ ⇒ $∂L/∂g = Σ G ⊙ V̂$;
    * $∂V̂_i/∂V_k = (δ_{ik} − V̂_i V̂_k)/n$ (the projection off the column's direction)
      ⇒ $∂L/∂V = (g/n)\, (G − V̂ ⊙ ⟨V̂, G⟩)$, with $⟨V̂, G⟩ = Σ V̂ ⊙ G$ per column:
      the gradient in $V$ is orthogonal to $V$.

    Residuals: $V̂$, $g/n$ (per column) — not $V$ or $W$.

    Tangent: $dW = dg ⊙ V̂ + (g/n)\,(dV − V̂ ⊙ ⟨V̂, dV⟩)$ (shape of $V$).
    """
    return per_channel(g, v.ndim) * v / jnp.sqrt(jnp.sum(v * v, axis=_columns(v), keepdims=True))


def _weight_norm_save(v, g, w):
    n = jnp.sqrt(jnp.sum(v * v, axis=_columns(v), keepdims=True))
    return v / n, per_channel(g, v.ndim) / n


def _weight_norm_backward(residuals, gw):
    vhat, scale = residuals
    cols = _columns(vhat)
    along = jnp.sum(vhat * gw, axis=cols, keepdims=True)
    return scale * (gw - vhat * along), jnp.sum(gw * vhat, axis=cols)


def _weight_norm_tangent(residuals, t):
    vhat, scale = residuals
    dv, dg = t
    along = jnp.sum(vhat * dv, axis=_columns(vhat), keepdims=True)
    return per_channel(dg, vhat.ndim) * vhat + scale * (dv - vhat * along)


weight_norm = primitive(
    weight_norm, _weight_norm_backward, save=_weight_norm_save,
    spec=v.shapes("weight_norm", v="…×d_out: the raw weight with output units last",
                  g="d_out: one length per output unit"),
    tangent=_weight_norm_tangent, examples=[
        Example((gaussian(4, 3), positive(3))),
        Example((gaussian(3, 3, 2, 4), gaussian(4))),
        Example((gaussian(6, 2), gaussian(2))),
    ],
)


# --------------------------------------------------------------------------- #
# spectral norm
# --------------------------------------------------------------------------- #


def _matrix(w: jax.Array) -> jax.Array:
    return w.reshape(-1, w.shape[-1])


def power_iteration(w: jax.Array, u: jax.Array, steps: int = 1,
                    eps: float = 1e-12) -> tuple[jax.Array, jax.Array]:
    r"""Advance the power iteration for the top singular pair of $\bar W$; returns $(u, v)$.

    $W ∈ ℝ^{…×d_{out}}$ read as $\bar W ∈ ℝ^{m×d_{out}}$, $u ∈ ℝ^m$ (the state; a random
    unit vector to start). Each of `steps` steps is

    $$ v ← \bar Wᵀ u/‖\bar Wᵀ u‖, \qquad u ← \bar W v/‖\bar W v‖ $$

    ($ε$ = `eps` added to each norm), after which $uᵀ \bar W v → σ_{max}(\bar W)$ as the
    iteration converges (one step per training step suffices when $W$ changes slowly).
    A state update, not a primitive: differentiate `spectral_normalize`, with these
    $u, v$ held fixed (`jax.lax.stop_gradient`).
    """
    m = _matrix(w)
    vec = None
    for _ in range(steps):
        vec = m.T @ u
        vec = vec / (jnp.linalg.norm(vec) + eps)
        u = m @ vec
        u = u / (jnp.linalg.norm(u) + eps)
    return u, vec


def spectral_normalize(w: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
    r"""Spectral normalisation $Y = W/σ$ with $σ = uᵀ \bar W v$ ($u, v$ from `power_iteration`).

    Shapes: $W ∈ ℝ^{…×d_{out}}$, read as $\bar W ∈ ℝ^{m×d_{out}}$; $u ∈ ℝ^m$,
    $v ∈ ℝ^{d_{out}}$; $Y$ like $W$. With $u, v$ the top singular vectors, $σ$ is the
    largest singular value and $Y$ has spectral norm 1.

    Derivation ($G = ∂L/∂Y$, read as $\bar G ∈ ℝ^{m×d_{out}}$; $⟨A, B⟩ = Σ A ⊙ B$). The
    differential is $dY = dW/σ − W\, dσ/σ²$ with
    $dσ = duᵀ \bar W v + uᵀ d\bar W v + uᵀ \bar W dv$, so with $c = ⟨G, W⟩/σ²$:

    * $∂L/∂W = G/σ − c\, u vᵀ$ (reshaped like $W$; $∂σ/∂\bar W = u vᵀ$);
    * $∂L/∂u = −c\, \bar W v$, $∂L/∂v = −c\, \bar Wᵀ u$.

    (A layer holds $u, v$ fixed; the PyTorch convention, and these two rows are then
    unused.)

    Residuals: $W$, $u$, $v$ and $σ$.

    Tangent: $dY = dW/σ − W (duᵀ \bar W v + uᵀ d\bar W v + uᵀ \bar W dv)/σ²$.
    """
    sigma = u @ _matrix(w) @ v
    return w / sigma


def _spectral_save(w, u, v, y):
    return w, u, v, u @ _matrix(w) @ v


def _spectral_backward(residuals, g):
    w, u, v, sigma = residuals
    c = jnp.sum(g * w) / (sigma * sigma)
    m = _matrix(w)
    dw = g / sigma - c * jnp.outer(u, v).reshape(w.shape)
    return dw, -c * (m @ v), -c * (m.T @ u)


def _spectral_tangent(residuals, t):
    w, u, v, sigma = residuals
    dw, du, dv = t
    m = _matrix(w)
    dsigma = du @ m @ v + u @ _matrix(dw) @ v + u @ m @ dv
    return dw / sigma - w * (dsigma / (sigma * sigma))


def _unit(n: int):
    """An example state: a unit vector with positive entries (with a positive `W`,
    $σ = uᵀ \\bar W v$ stays well away from 0)."""
    def sample(rng, dtype):
        # on the host, rounded once: an eager `jnp` division would compile a program
        # per shape in `fdl check`
        x = _host_rng(rng).uniform(0.5, 2.0, n)  # the draw of `positive(n)`
        return _cast(x / np.linalg.norm(x), dtype)

    return sample


def _spectral_validate(w, u, v):
    fn = "spectral_normalize"
    m = w.size // w.shape[-1]
    if u.shape != (m,):
        raise ValueError(
            f"{fn}: u must have shape ({m},), one entry per row of w read as a "
            f"{m}×{w.shape[-1]} matrix (w has shape {tuple(w.shape)}), got shape "
            f"{tuple(u.shape)}")


spectral_normalize = primitive(
    spectral_normalize, _spectral_backward, save=_spectral_save,
    spec=v.shapes("spectral_normalize", w="…×d_out: output units last", u="m",
                  v="d_out"),
    validate=_spectral_validate, tangent=_spectral_tangent, examples=[
        Example((positive(4, 3), _unit(4), _unit(3))),
        Example((positive(2, 2, 3, 2), _unit(12), _unit(2))),
    ],
)
