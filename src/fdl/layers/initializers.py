"""Weight initialisers: `init(key, shape, dtype) -> array`.

Fans: for a dense kernel `W ∈ ℝ^{d_in×d_out}`, `fan_in = d_in` and
`fan_out = d_out`; for a convolution kernel in HWIO layout, `fan_in = H·W·I`
and `fan_out = H·W·O` (every output sums `fan_in` products).

Variance argument: with independent zero-mean inputs of variance `v`, a unit
`y = Σᵢ wᵢ xᵢ` over `fan_in` terms has `Var(y) = fan_in · Var(w) · v`. Keeping
the forward signal's variance constant asks `Var(w) = 1/fan_in` (LeCun); keeping
the backward gradient's asks `1/fan_out`; Glorot & Bengio take the compromise
`Var(w) = 2/(fan_in + fan_out)`. A ReLU zeroes half of its inputs, halving the
second moment, so He et al. double LeCun's: `Var(w) = 2/fan_in`.

A uniform law on `[−a, a]` has variance `a²/3`, so `a = √(3·Var)`; the normal
laws here are untruncated `N(0, Var)`.

References: LeCun et al., "Efficient BackProp", 1998. Glorot & Bengio,
"Understanding the difficulty of training deep feedforward neural networks",
2010. He et al., "Delving Deep into Rectifiers", 2015. Saxe, McClelland &
Ganguli, "Exact solutions to the nonlinear dynamics of learning in deep linear
neural networks", 2014 (orthogonal).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


__all__ = [
    "Initializer",
    "INITIALIZERS",
    "get_initializer",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "variance_scaling",
    "zeros",
]

Initializer = Callable[[jax.Array, tuple, Any], jax.Array]


def fans(shape: tuple) -> tuple[int, int]:
    """`(fan_in, fan_out)` of a kernel: the last axis is the output, the one before
    it the input, any axes before those are a receptive field (HWIO)."""
    if len(shape) < 1:
        raise ValueError(f"initializer: a kernel needs at least 1 dimension, got shape {shape}")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _flat(sample: Callable, key: jax.Array, shape: tuple, dtype: Any, *args: Any) -> jax.Array:
    """Draw `prod(shape)` values as a vector, then reshape: the same law, and XLA:CPU
    compiles a flat Threefry draw (JAX's default keys) faster than some 2-D ones."""
    return sample(key, (math.prod(shape),), dtype, *args).reshape(shape)


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """Zero-mean weights with `Var(w) = scale / n`, `n` = `fan_in`, `fan_out`
    or `(fan_in + fan_out)/2` (`mode` = `"fan_in"`, `"fan_out"`, `"fan_avg"`);
    `distribution` is `"uniform"` or `"normal"`."""
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"variance_scaling: mode must be fan_in, fan_out or fan_avg, got {mode!r}")
    if distribution not in ("uniform", "normal"):
        raise ValueError(
            f"variance_scaling: distribution must be uniform or normal, got {distribution!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"variance_scaling: scale must be finite and > 0, got {scale!r}")

    def init(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
        fan_in, fan_out = fans(tuple(shape))
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / max(n, 1)
        if distribution == "uniform":
            a = math.sqrt(3 * var)
            return _flat(jax.random.uniform, key, shape, dtype, -a, a)
        return math.sqrt(var) * _flat(jax.random.normal, key, shape, dtype)

    return init


def glorot_uniform() -> Initializer:
    """Glorot/Xavier uniform: `U(−a, a)`, `a = √(6/(fan_in + fan_out))`, i.e. `Var = 2/(fan_in + fan_out)`."""
    return variance_scaling(1.0, "fan_avg", "uniform")


def glorot_normal() -> Initializer:
    """Glorot/Xavier normal: `N(0, 2/(fan_in + fan_out))`."""
    return variance_scaling(1.0, "fan_avg", "normal")


def he_uniform() -> Initializer:
    """He/Kaiming uniform (for ReLU): `U(−a, a)`, `a = √(6/fan_in)`, i.e. `Var = 2/fan_in`."""
    return variance_scaling(2.0, "fan_in", "uniform")


def he_normal() -> Initializer:
    """He/Kaiming normal (for ReLU): `N(0, 2/fan_in)`."""
    return variance_scaling(2.0, "fan_in", "normal")


def lecun_uniform() -> Initializer:
    """LeCun uniform: `U(−a, a)`, `a = √(3/fan_in)`, i.e. `Var = 1/fan_in`."""
    return variance_scaling(1.0, "fan_in", "uniform")


def lecun_normal() -> Initializer:
    """LeCun normal: `N(0, 1/fan_in)` (suits tanh and SELU)."""
    return variance_scaling(1.0, "fan_in", "normal")


def normal(stddev: float = 0.01) -> Initializer:
    """`N(0, stddev²)` regardless of the fans."""
    def init(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
        return stddev * _flat(jax.random.normal, key, shape, dtype)
    return init


def orthogonal(gain: float = 1.0) -> Initializer:
    """A (semi-)orthogonal matrix times `gain`: the kernel reshaped to
    `(fan_in_rows, cols)` has orthonormal columns (or rows, if wider than tall).

    Drawn as the `Q` of the QR decomposition of a Gaussian matrix, with the signs
    of `diag(R)` folded into `Q` so the law is uniform (Haar) over orthogonal
    matrices. Preserves norms exactly: `‖xW‖ = ‖x‖` for square `W`.
    """
    def init(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
        if len(shape) < 2:
            raise ValueError(f"orthogonal: needs a kernel with ≥ 2 dimensions, got shape {shape}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), jnp.float32)
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diagonal(r))[None, :]
        if rows < cols:
            q = q.T
        return (gain * q).reshape(shape).astype(dtype)
    return init


def zeros() -> Initializer:
    """All zeros (biases)."""
    return lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype)


def ones() -> Initializer:
    """All ones (normalisation scales)."""
    return lambda key, shape, dtype=jnp.float32: jnp.ones(shape, dtype)


INITIALIZERS: dict[str, Callable[[], Initializer]] = {
    "glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal,
    "xavier_uniform": glorot_uniform, "xavier_normal": glorot_normal,
    "he_uniform": he_uniform, "he_normal": he_normal,
    "kaiming_uniform": he_uniform, "kaiming_normal": he_normal,
    "lecun_uniform": lecun_uniform, "lecun_normal": lecun_normal,
    "orthogonal": orthogonal, "zeros": zeros, "ones": ones,
}


def get_initializer(init: str | Initializer) -> Initializer:
    """An initialiser by name (`"he_normal"`, …) or the callable itself."""
    if callable(init):
        return init
    if init not in INITIALIZERS:
        raise ValueError(
            f"unknown initializer {init!r}; choose one of {sorted(INITIALIZERS)} or pass a "
            "function (key, shape, dtype) -> array")
    return INITIALIZERS[init]()
