"""Example arguments for the checks: `Example` and the samplers that fill it.

Exported by `fdl.primitive` (`from fdl.primitive import Example, gaussian`), where a
primitive's author finds the whole contract.

Every registered primitive carries a few `Example`s; `fdl check` and the test suite
draw concrete arguments from them (`Example.sample`) to verify the hand-written rules.
A sampler is `(rng, dtype) -> array`: it draws one argument on the host with a numpy
`Generator` (nothing to compile), in `dtype`. The built-in samplers also accept an int
seed or a JAX key in place of `rng`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Example", "Sampler", "gaussian", "labels", "positive", "probabilities", "uniform"]

Sampler = Callable[[np.random.Generator, Any], Any]
"""`(rng, dtype) -> array`: draws one example argument on the host, in `dtype`."""


def gaussian(*shape: int, scale: float = 1.0) -> Sampler:
    """An example argument drawn from `N(0, scale²)` with the given shape.

    (Named apart from `jax.random.normal`, which draws, and the initialiser
    `fdl.layers.initializers.normal`, which makes weights: this makes a sampler.)
    """
    return lambda rng, dtype: _cast(scale * _host_rng(rng).standard_normal(shape), dtype)


def uniform(*shape: int, low: float = -1.0, high: float = 1.0) -> Sampler:
    """An example argument drawn uniformly from `[low, high)`."""
    return lambda rng, dtype: _cast(_host_rng(rng).uniform(low, high, shape), dtype)


def positive(*shape: int, low: float = 0.5, high: float = 2.0) -> Sampler:
    """A strictly positive example argument (uniform in `[low, high)`)."""
    return uniform(*shape, low=low, high=high)


def labels(*shape: int, classes: int) -> Sampler:
    """Integer class labels in `[0, classes)` (int32; not differentiated)."""
    return lambda rng, dtype: _cast(_host_rng(rng).integers(0, classes, shape), np.int32)


def probabilities(*shape: int) -> Sampler:
    """Rows on the simplex along the last axis (e.g. soft targets)."""

    def sample(rng: np.random.Generator, dtype: Any) -> jax.Array:
        z = _host_rng(rng).standard_normal(shape)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return _cast(e / e.sum(axis=-1, keepdims=True), dtype)

    return sample


def _cast(values: np.ndarray, dtype: Any) -> jax.Array:
    """Host values as a JAX array of `dtype` (rounded once, from float64)."""
    # device_put, not jnp.asarray: that compiles a copy program per shape (JAX ≥ 0.7)
    return jax.device_put(np.asarray(values).astype(jax.dtypes.canonicalize_dtype(dtype)))


def _host_rng(key: Any) -> np.random.Generator:
    """A numpy generator: `key` itself, or one seeded by an int or by the bits of a
    JAX key (so a sampler can also be called with a key or a seed)."""
    if isinstance(key, np.random.Generator):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return np.random.default_rng(int(key))
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


@dataclass(frozen=True)
class Example:
    """Example arguments for a primitive: samplers for array args, values for static ones.

    `args` holds, position by position, a sampler `(rng, dtype) -> array` for
    each array argument and the literal value for each static argument.
    `kwargs` likewise, by name.
    """

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def sample(self, key: Any = 0, dtype: Any = jnp.float64) -> tuple[tuple, dict]:
        """Draw concrete arguments in `dtype`, seeded by `key` (an int or a JAX key).

        Drawn on the host with numpy: example arguments are small, and a JAX
        random-number program would be compiled for every shape.
        """
        rng = _host_rng(key)

        def draw(v: Any) -> Any:
            return v(rng, dtype) if callable(v) else v

        return tuple(draw(a) for a in self.args), {n: draw(v) for n, v in self.kwargs.items()}
