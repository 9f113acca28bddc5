"""Inverted dropout: drop each element with probability `rate`, rescale the rest.

`rate` is the *drop* probability (not stax's keep probability). Kept values are
scaled by $1/(1 − rate)$ during training so that `E[y] = x` and nothing needs
rescaling at inference, where the layer simply does not call this primitive.
Randomness is explicit: the caller passes a PRNG key and gets the same mask for
the same key.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl.primitive import Example, gaussian, primitive


def _keep_mask(key: jax.Array, rate: float, shape: tuple) -> jax.Array:
    """Boolean mask $m$, $m_i ~ Bernoulli(1 − rate)$ i.i.d., drawn from `key` with
    `jax.random.bernoulli` (the key's implementation is the generator)."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def dropout(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    r"""Inverted dropout $y = m ⊙ x / (1 − p)$ with $p$ = `rate` (static).

    Shapes: $x$ any shape (batch-first, e.g. $N×d$ or NHWC); $y$ the same.
    $m ∈ {0, 1}^{shape(x)}$ has i.i.d. `Bernoulli(1 − p)` entries drawn from
    `key` (a PRNG key, not differentiated), so $E[y] = (1 − p)·x/(1 − p) = x$.
    $p = 0$ is the identity.

    Derivation: for a fixed key the map is linear and diagonal,
    $∂y_i/∂x_j = δ_ij m_i/(1 − p)$, so

    $$ ∂L/∂x = ∂L/∂y ⊙ m / (1 − p) $$

    the key is an integer-like argument with no cotangent (`None`).

    Residuals: the boolean mask $m$ (one byte per element), kept by the forward
    pass itself (`fwd`). On the CPU the mask is drawn once, inside a `lax.cond` (see
    `_drawn_once`): a random-number generator built from element-wise integer
    operations is one XLA would otherwise fuse into each of its consumers, the
    forward's select and the backward's, drawing the mask twice.

    References: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov,
    "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", 2014.

    Tangent: linear and diagonal for a fixed key, $dy = m ⊙ dx / (1 − p)$ (shape of $x$).
    """
    if rate == 0:
        return x
    keep = _keep_mask(key, rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _drawn_once(key: jax.Array, rate: float, shape: tuple) -> jax.Array:
    """`_keep_mask(key, rate, shape)`, bitwise, as the output of a `lax.cond` whose
    two branches are that same draw.

    The generator (`jax.random`'s counter-based hash) is element-wise integer
    arithmetic, which XLA fuses into every consumer of the mask and so runs once
    per consumer: in the forward's select and again in the backward's. A
    conditional's output is not fusible, so the mask is computed once and stored
    (one byte per element); both consumers read it. The predicate is a bit of the
    key, unknown to the compiler, so neither branch can be folded away; which branch
    runs does not matter. `optimization_barrier` does not do this on XLA:CPU (it is
    removed before fusion).
    """
    draw = lambda k: _keep_mask(k, rate, shape)  # noqa: E731
    bit = jax.random.key_data(key).ravel()[0] & 1 if jax.dtypes.issubdtype(
        key.dtype, jax.dtypes.prng_key) else key.ravel()[0] & 1
    return jax.lax.cond(bit == 0, draw, draw, key)


def _dropout_fwd(x, key, rate):
    # the mask is drawn once and kept (`_drawn_once`); the backward reads it. Only on
    # the CPU: elsewhere a conditional can cost a device-to-host copy of its predicate,
    # and the plain draw is the same mask, bitwise
    if rate == 0:
        return x, None
    keep = jax.lax.platform_dependent(
        key, cpu=lambda k: _drawn_once(k, rate, x.shape),
        default=lambda k: _keep_mask(k, rate, x.shape))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), keep


def _dropout_backward(rate, keep, g):
    if rate == 0:
        return g, None
    return jnp.where(keep, g / (1.0 - rate), jnp.zeros_like(g)), None


def _is_key(key) -> bool:
    dt = getattr(key, "dtype", None)
    if dt is None:
        return False
    if jax.dtypes.issubdtype(dt, jax.dtypes.prng_key):
        return key.shape == ()  # one typed key (jax.random.key)
    return dt == jnp.uint32 and key.shape == (2,)  # one legacy raw key (jax.random.PRNGKey)


def _dropout_validate(x, key, rate):
    if not _is_key(key):
        got = (f"dtype {key.dtype}, shape {tuple(key.shape)}" if hasattr(key, "dtype")
               else type(key).__name__)
        raise TypeError(
            f"dropout: key must be one PRNG key (jax.random.key(seed), or one row of "
            f"jax.random.split), got {got}"
        )
    v.finite_number("dropout", "rate", rate)
    v.fraction("dropout", "rate", rate, meaning="the probability of DROPPING an element",
               hint="; to switch dropout off at inference, do not call it")


def _key(rng, dtype):
    return jax.random.key(int(rng.integers(2 ** 31)))  # the example's key argument


def _dropout_tangent(rate, keep, t):
    dx, _ = t
    if rate == 0:
        return dx
    return jnp.where(keep, dx / (1.0 - rate), jnp.zeros_like(dx))


dropout = primitive(
    dropout, _dropout_backward, fwd=_dropout_fwd, static=("rate",),
    spec=v.shapes("dropout", x="…"), validate=_dropout_validate,
    tangent=_dropout_tangent, examples=[Example((gaussian(4, 6), _key, 0.5)),
              Example((gaussian(2, 3, 3, 2), _key, 0.2)),
              Example((gaussian(3, 4), _key, 0.0))],
)
