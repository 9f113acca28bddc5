"""Element-wise activations $y = f(x)$.

For an element-wise map the Jacobian $∂y/∂x$ is diagonal, so the vector-Jacobian
product is a product of arrays of the same shape (any shape, batch-first):

$$ ∂L/∂x = ∂L/∂y ⊙ f'(x) $$

and the tangent (forward-mode rule) is the same product with the input's tangent,
$dy = f'(x) ⊙ dx$: a diagonal Jacobian is its own transpose.

Each primitive below states $f'$ and saves whichever of $x$ or $y$ gives it
most cheaply (`tanh` and `sigmoid` are cheapest from $y$).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from fdl import _validate as v
from fdl.primitive import Example, gaussian, primitive

_SHAPES = [Example((gaussian(4, 5),)), Example((gaussian(2, 3, 2),)), Example((gaussian(1),))]


def _save_x(x, *rest):
    return x


def _save_y(*args):
    return args[-1]


def relu(x: jax.Array) -> jax.Array:
    r"""Rectified linear unit $y = \max(x, 0)$.

    $f'(x) = 1[x > 0]$ (0 at $x = 0$, the subgradient JAX also picks), so
    $∂L/∂x = ∂L/∂y ⊙ 1[y > 0]$; $y > 0 ⇔ x > 0$, hence save $y$.

    Tangent: $dy = 1[y > 0] ⊙ dx$ (same shape as $x$).

    NaN propagates, as in `jnp.maximum`: $x ≤ 0$ is false for NaN, so NaN passes
    through (a diverged model stays visibly diverged); so do its cotangent and tangent,
    as in autodiff of this forward.
    """
    return jnp.where(x <= 0, jnp.zeros_like(x), x)


def _relu_backward(y, g):
    return (jnp.where(y <= 0, jnp.zeros_like(g), g),)


def _relu_tangent(y, t):
    (dx,) = t
    return jnp.where(y <= 0, jnp.zeros_like(dx), dx)


def _positive(x, *static):
    """Switches: the sign of $x$, where $f'$ jumps (ReLU, leaky ReLU) or $f''$ does (ELU)."""
    return x > 0


relu = primitive(relu, _relu_backward, save=_save_y, spec=v.shapes("relu", x="…"),
                 tangent=_relu_tangent, examples=_SHAPES, switches=_positive)


def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    r"""Leaky ReLU $y = x$ for $x > 0$, $y = αx$ otherwise ($α$ = `negative_slope`, static).

    $f'(x) = 1$ for $x > 0$ and $α$ otherwise, so
    $∂L/∂x = ∂L/∂y ⊙ (1[x > 0] + α·1[x ≤ 0])$. Saves $x$.

    Tangent: $dy = (1[x > 0] + α·1[x ≤ 0]) ⊙ dx$.
    """
    return jnp.where(x > 0, x, negative_slope * x)


def _leaky_relu_backward(negative_slope, x, g):
    return (jnp.where(x > 0, g, negative_slope * g),)


def _leaky_relu_validate(x, negative_slope):
    v.finite_number("leaky_relu", "negative_slope", negative_slope)


def _leaky_relu_tangent(negative_slope, x, t):
    (dx,) = t
    return jnp.where(x > 0, dx, negative_slope * dx)


leaky_relu = primitive(
    leaky_relu, _leaky_relu_backward, save=_save_x, static=("negative_slope",),
    spec=v.shapes("leaky_relu", x="…"), validate=_leaky_relu_validate,
    tangent=_leaky_relu_tangent,
    examples=[Example((gaussian(4, 5), 0.01)), Example((gaussian(3, 2), 0.2))],
    switches=_positive,
)


def tanh(x: jax.Array) -> jax.Array:
    r"""Hyperbolic tangent $y = tanh(x)$.

    $f'(x) = 1 − tanh²(x) = 1 − y²$, so $∂L/∂x = ∂L/∂y ⊙ (1 − y²)$. Saves $y$.

    Tangent: $dy = (1 − y²) ⊙ dx$.
    """
    return jnp.tanh(x)


def _tanh_backward(y, g):
    return (g * (1 - y * y),)


def _tanh_tangent(y, t):
    (dx,) = t
    return (1 - y * y) * dx


tanh = primitive(tanh, _tanh_backward, save=_save_y, spec=v.shapes("tanh", x="…"),
                 tangent=_tanh_tangent, examples=_SHAPES)


def sigmoid(x: jax.Array) -> jax.Array:
    r"""Logistic sigmoid $y = σ(x) = 1 / (1 + e^{−x})$.

    $σ'(x) = e^{−x}/(1 + e^{−x})² = σ(x)(1 − σ(x)) = y(1 − y)$, so
    $∂L/∂x = ∂L/∂y ⊙ y ⊙ (1 − y)$. Saves $y$.

    Tangent: $dy = y ⊙ (1 − y) ⊙ dx$.
    """
    # exp of a non-positive number only: never overflows.
    e = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_backward(y, g):
    return (g * y * (1 - y),)


def _sigmoid_tangent(y, t):
    (dx,) = t
    return y * (1 - y) * dx


sigmoid = primitive(
    sigmoid, _sigmoid_backward, save=_save_y, spec=v.shapes("sigmoid", x="…"),
    tangent=_sigmoid_tangent, examples=_SHAPES
)


def softplus(x: jax.Array) -> jax.Array:
    r"""Softplus $y = log(1 + eˣ) = log(e⁰ + eˣ)$, computed stably by `logaddexp`.

    $f'(x) = eˣ/(1 + eˣ) = σ(x)$, so $∂L/∂x = ∂L/∂y ⊙ σ(x)$. Saves $x$.

    Tangent: $dy = σ(x) ⊙ dx$.
    """
    return jnp.logaddexp(x, jnp.zeros_like(x))


def _softplus_backward(x, g):
    return (g * sigmoid.forward(x),)


def _softplus_tangent(x, t):
    (dx,) = t
    return sigmoid.forward(x) * dx


softplus = primitive(
    softplus, _softplus_backward, save=_save_x, spec=v.shapes("softplus", x="…"),
    tangent=_softplus_tangent, examples=_SHAPES
)

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_C = 0.044715


def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    r"""Gaussian error linear unit $y = x Φ(x)$ (`approximate` static).

    Exact: $Φ(x) = ½(1 + erf(x/√2))$ and $f'(x) = Φ(x) + x φ(x)$ with
    $φ(x) = e^{−x²/2}/√(2π)$.

    Tanh approximation (`approximate=True`, Hendrycks & Gimpel 2016):
    $y = ½x(1 + t)$, $t = tanh(u)$, $u = √(2/π)(x + 0.044715x³)$;
    $f'(x) = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²)$.

    $∂L/∂x = ∂L/∂y ⊙ f'(x)$. Saves $x$.

    References: Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", 2016.

    Tangent: $dy = f'(x) ⊙ dx$, with $f'$ above for either form.
    """
    if approximate:
        u = _SQRT_2_OVER_PI * (x + _GELU_C * x**3)
        return 0.5 * x * (1 + jnp.tanh(u))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _gelu_backward(approximate, x, g):
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x * x)
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du),)
    cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
    pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return (g * (cdf + x * pdf),)


def _gelu_validate(x, approximate):
    v.flag("gelu", "approximate", approximate)


def _gelu_tangent(approximate, x, t):
    (dx,) = t
    if approximate:
        th = jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x * x)
        return (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du) * dx
    cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
    pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return (cdf + x * pdf) * dx


gelu = primitive(
    gelu, _gelu_backward, save=_save_x, static=("approximate",), spec=v.shapes("gelu", x="…"),
    validate=_gelu_validate,
    tangent=_gelu_tangent,
    examples=[Example((gaussian(4, 5), False)), Example((gaussian(4, 5), True)),
              Example((gaussian(2, 1, 3), True))],
)


def silu(x: jax.Array) -> jax.Array:
    r"""Sigmoid-weighted linear unit (swish) $y = x σ(x)$.

    Product rule: $f'(x) = σ(x) + x σ(x)(1 − σ(x)) = σ(x)(1 + x(1 − σ(x)))$, so
    $∂L/∂x = ∂L/∂y ⊙ σ(x)(1 + x(1 − σ(x)))$. Saves $x$.

    References: Elfwing, Uchibe & Doya, "Sigmoid-Weighted Linear Units for Neural
    Network Function Approximation in Reinforcement Learning", 2017.

    Tangent: $dy = σ(x)(1 + x(1 − σ(x))) ⊙ dx$.
    """
    return x * sigmoid.forward(x)


def _silu_backward(x, g):
    s = sigmoid.forward(x)
    return (g * s * (1 + x * (1 - s)),)


def _silu_tangent(x, t):
    (dx,) = t
    s = sigmoid.forward(x)
    return s * (1 + x * (1 - s)) * dx


silu = primitive(silu, _silu_backward, save=_save_x, spec=v.shapes("silu", x="…"),
                 tangent=_silu_tangent, examples=_SHAPES)


def elu(x: jax.Array, alpha: float = 1.0) -> jax.Array:
    r"""Exponential linear unit: $y = x$ for $x > 0$, $α(eˣ − 1)$ otherwise ($α$ = `alpha`, static).

    $f'(x) = 1$ for $x > 0$ and $α eˣ = y + α$ otherwise, so
    $∂L/∂x = ∂L/∂y ⊙ (1[x > 0] + (y + α)·1[x ≤ 0])$. Saves $y$ (for $α > 0$,
    $y > 0 ⇔ x > 0$).

    References: Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep Network
    Learning by Exponential Linear Units (ELUs)", 2016.

    Tangent: $dy = (1[x > 0] + (y + α)·1[x ≤ 0]) ⊙ dx$.
    """
    # expm1 of min(x, 0): the unused branch never overflows.
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0)))


def _elu_backward(alpha, y, g):
    return (jnp.where(y > 0, g, g * (y + alpha)),)


def _elu_validate(x, alpha):
    v.finite_number("elu", "alpha", alpha, low=0, low_inclusive=False)


def _elu_tangent(alpha, y, t):
    (dx,) = t
    return jnp.where(y > 0, dx, (y + alpha) * dx)


elu = primitive(
    elu, _elu_backward, save=_save_y, static=("alpha",), spec=v.shapes("elu", x="…"),
    validate=_elu_validate,
    tangent=_elu_tangent, examples=[Example((gaussian(4, 5), 1.0)), Example((gaussian(2, 3), 0.5))],
    switches=_positive,
)
