"""Positional encodings: sinusoidal (added) and rotary (RoPE, a rotation of each pair).

Attention is permutation-equivariant in its keys: without a position signal a
transformer cannot tell "ab" from "ba". Two ways to give it one, both primitives here.

* `sinusoidal(x)` adds a fixed table of sines and cosines to the token vectors
  (Vaswani et al. 2017): $Y = X + P$, so its Jacobian is the identity.
* `rope(x)` rotates each pair of features of a query or key by an angle
  proportional to its position (Su et al. 2021): $Y = R_t X$, $R_t$ orthogonal,
  so the score $⟨R_t q, R_s k⟩ = ⟨q, R_{s−t} k⟩$ depends on $s − t$ only. Its
  Jacobian is the rotation itself and the backward is the *inverse* rotation
  $R_tᵀ = R_{−t}$ (rotate by minus the angle).

Layout is batch-first: $X ∈ ℝ^{…×T×d}$ (time the second-to-last axis, features
last; $…$ any batch axes, e.g. $N$ or $N×h$ for heads). Positions are
`t + offset` for $t = 0…T−1$, `offset` a static int (decoding a continuation).
The angle tables depend only on the static shape, so they are computed on the host
in float64 (exact for any position) and enter the program as constants.

References: Vaswani et al., "Attention Is All You Need", 2017; Su, Lu, Pan, Murtadha,
Wen & Liu, "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021;
Black et al., "GPT-NeoX-20B", 2022 (the rotate-half pairing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as v
from fdl.primitive import Example, gaussian, primitive

__all__ = ["rope", "rope_angles", "sinusoidal", "sinusoidal_table"]


def _check_position_args(fn: str, offset, base) -> None:
    if not v.is_int(offset) or offset < 0:
        raise ValueError(f"{fn}: offset must be an int ≥ 0 (the position of the first "
                         f"step), got {offset!r}")
    v.finite_number(fn, "base", base, low=1, low_inclusive=False)


# --------------------------------------------------------------------------- #
# Sinusoidal (added)
# --------------------------------------------------------------------------- #


def sinusoidal_table(length: int, features: int, offset: int = 0,
                     base: float = 10000.0) -> np.ndarray:
    r"""The table $P ∈ ℝ^{T×d}$ of `sinusoidal`, in float64 on the host.

    $P[t, 2i] = sin(p ω_i)$, $P[t, 2i+1] = cos(p ω_i)$ with $p = t + offset$ and
    $ω_i = base^{−2i/d}$, $i = 0…⌈d/2⌉−1$ (an odd $d$ drops the last cosine).
    """
    pos = np.arange(offset, offset + length, dtype=np.float64)[:, None]
    omega = base ** (-np.arange(0, features, 2, dtype=np.float64) / features)
    table = np.zeros((length, features))
    table[:, 0::2] = np.sin(pos * omega)
    table[:, 1::2] = np.cos(pos * omega)[:, : features // 2]
    return table


def sinusoidal(x: jax.Array, offset: int = 0, base: float = 10000.0) -> jax.Array:
    r"""Add the sinusoidal position table: $Y = X + P$.

    Shapes: $X, Y ∈ ℝ^{…×T×d}$, $P ∈ ℝ^{T×d}$ broadcast over the batch axes,
    $P[t, 2i] = sin((t + offset) ω_i)$, $P[t, 2i+1] = cos((t + offset) ω_i)$,
    $ω_i = base^{−2i/d}$ (`sinusoidal_table`; `offset`, `base` static). Each pair
    of features is a clock of period $2π/ω_i$, from $2π$ to $2π·base$, and
    `P[t + k]` is a fixed rotation of `P[t]` in every pair, which lets attention
    read relative offsets.

    Derivation: $P$ is a constant, so $∂Y/∂X = I$ and $∂L/∂X = ∂L/∂Y = G$
    ($…×T×d$).

    Residuals: none.

    Tangent: $dY = dX$.
    """
    t, d = x.shape[-2:]
    table = sinusoidal_table(t, d, offset, base).reshape((1,) * (x.ndim - 2) + (t, d))
    return x + jnp.asarray(table, x.dtype)  # explicit broadcast over the batch axes


def _sinusoidal_backward(offset, base, residuals, g):
    return (g,)


def _sinusoidal_tangent(offset, base, residuals, t):
    (dx,) = t
    return dx


def _spec(fn: str) -> v.Shapes:
    return v.shapes(fn, x="…×T×d, batch-first: time second to last")


def _sinusoidal_validate(x, offset, base):
    _check_position_args("sinusoidal", offset, base)


sinusoidal = primitive(
    sinusoidal, _sinusoidal_backward, save=lambda x, offset, base, y: (),
    static=("offset", "base"), spec=_spec("sinusoidal"), validate=_sinusoidal_validate,
    tangent=_sinusoidal_tangent,
    examples=[Example((gaussian(2, 5, 6), 0, 10000.0)),
              Example((gaussian(3, 7), 4, 100.0)),
              Example((gaussian(2, 2, 3, 5), 0, 10000.0))],
)


# --------------------------------------------------------------------------- #
# Rotary (RoPE)
# --------------------------------------------------------------------------- #


def rope_angles(length: int, features: int, offset: int = 0,
                base: float = 10000.0) -> np.ndarray:
    r"""The angles $φ ∈ ℝ^{T×d/2}$ of `rope`: $φ[t, i] = (t + offset) θ_i$,
    $θ_i = base^{−2i/d}$, in float64 on the host."""
    pos = np.arange(offset, offset + length, dtype=np.float64)[:, None]
    theta = base ** (-np.arange(0, features, 2, dtype=np.float64) / features)
    return pos * theta


def _cos_sin(shape: tuple, dtype, offset: int, base: float, interleaved: bool):
    """$cos φ$, $sin φ$ laid out like the features ($T×d$): each angle on both
    members of its pair."""
    t, d = shape[-2:]
    phi = rope_angles(t, d, offset, base)
    phi = np.repeat(phi, 2, axis=-1) if interleaved else np.concatenate([phi, phi], axis=-1)
    phi = phi.reshape((1,) * (len(shape) - 2) + (t, d))  # explicit broadcast over the batch
    return jnp.asarray(np.cos(phi), dtype), jnp.asarray(np.sin(phi), dtype)


def _rotate_pairs(x: jax.Array, interleaved: bool) -> jax.Array:
    """`J x` where $J$ turns each pair $(a, b) ↦ (−b, a)$ (a quarter turn)."""
    if interleaved:
        pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
        return jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    a, b = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-b, a], axis=-1)


def _rotate(x: jax.Array, offset: int, base: float, interleaved: bool,
            sign: float = 1.0) -> jax.Array:
    """$R(sign·φ) x = cos φ ⊙ x + sign · sin φ ⊙ J x$."""
    cos, sin = _cos_sin(x.shape, x.dtype, offset, base, interleaved)
    return cos * x + (sign * sin) * _rotate_pairs(x, interleaved)


def rope(x: jax.Array, offset: int = 0, base: float = 10000.0,
         interleaved: bool = False) -> jax.Array:
    r"""Rotary position embedding: rotate each feature pair by its position's angle.

    Shapes: $X, Y ∈ ℝ^{…×T×d}$, $d$ even (queries or keys, one head: apply it
    after splitting heads, before the scores). Angles $φ_{t,i} = (t + offset) θ_i$,
    $θ_i = base^{−2i/d}$, $i = 0…d/2−1$ (`rope_angles`; `offset`, `base`,
    `interleaved` static).

    Pairing. `interleaved=False` (default) is the *rotate-half* convention of
    GPT-NeoX and LLaMA (Hugging Face's `rotate_half`): pair $i$ is features
    `(i, i + d/2)`. `interleaved=True` is the original RoFormer/GPT-J pairing
    `(2i, 2i+1)`. The two are the same map up to a fixed permutation of the
    features, so weights trained with one need that permutation of their
    query/key projection columns to run with the other.

    For each pair $(a, b)$ at position $t$:

    $$ a' = a cos φ − b sin φ, \qquad b' = a sin φ + b cos φ, $$

    i.e. $Y = cos φ ⊙ X + sin φ ⊙ J X$ with $J(a, b) = (−b, a)$ per pair and
    $cos φ$, $sin φ ∈ ℝ^{T×d}$ (each angle repeated on both members of its pair).
    Per position this is $y_t = R_t x_t$ with $R_t ∈ ℝ^{d×d}$ block-diagonal of
    2×2 rotations, orthogonal: $R_tᵀ R_t = I$.

    Derivation: $Y$ is linear in $X$ with Jacobian $R_t$ (row by row in $t$), so

    $$ ∂L/∂x_t = R_tᵀ g_t = R_{−t} g_t = cos φ ⊙ G − sin φ ⊙ J G $$

    the backward is the **inverse rotation**, by $−φ$ ($Jᵀ = −J$). `rope` of the
    backward undoes `rope`: `tests/test_positional.py` checks
    `backward(rope(x)) = x`.

    Residuals: none (the angles depend only on the static shape).

    Tangent: linear, so $dY = R_t dX = cos φ ⊙ dX + sin φ ⊙ J dX$.
    """
    return _rotate(x, offset, base, interleaved)


def _rope_backward(offset, base, interleaved, residuals, g):
    return (_rotate(g, offset, base, interleaved, sign=-1.0),)


def _rope_tangent(offset, base, interleaved, residuals, t):
    (dx,) = t
    return _rotate(dx, offset, base, interleaved)


def _rope_validate(x, offset, base, interleaved):
    fn = "rope"
    if x.shape[-1] % 2:
        raise ValueError(f"rope: the feature size d (last axis) must be even, to form pairs; "
                         f"got x of shape {tuple(x.shape)}. Apply it per head, after "
                         "splitting heads, with an even head size")
    _check_position_args(fn, offset, base)
    v.flag(fn, "interleaved", interleaved)


rope = primitive(
    rope, _rope_backward, save=lambda x, offset, base, interleaved, y: (),
    static=("offset", "base", "interleaved"), spec=_spec("rope"), validate=_rope_validate,
    tangent=_rope_tangent,
    examples=[Example((gaussian(2, 5, 6), 0, 10000.0, False)),
              Example((gaussian(2, 5, 6), 3, 10000.0, True)),
              Example((gaussian(2, 2, 4, 8), 0, 50.0, False))],
)
