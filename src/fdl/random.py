"""The PRNG key fdl makes from a seed; all randomness itself is `jax.random`.

fdl draws every random number (dropout masks, shuffles, initial weights, DP noise)
with `jax.random` functions on the key it is given, so the key's own implementation
decides the generator: pass any `jax.random` key (`jax.random.key(0)`, a key of
another impl such as `jax.random.key(0, impl="philox2x32")`, or a legacy raw
`jax.random.PRNGKey(0)`). The same key gives the same numbers, so a run is a pure
function of its key.

Where fdl itself turns a seed into a key (`fdl train --seed`), it calls `key`, which
uses `IMPL`: a generator built into JAX that XLA compiles to straight-line code on
CPU (the comparison that chose it is in BENCHMARKS.md, "Randomness"). The library
never changes JAX's global default implementation.

The fused Threefry kernels this module used to hold are gone; their names raise an
`AttributeError` that names the `jax.random` function to call instead.
"""

from __future__ import annotations

from typing import Any

import jax

from fdl import _validate as v

__all__ = ["IMPL", "key"]

IMPL = "philox2x32"
"""The JAX PRNG implementation of the keys fdl makes from seeds."""

_MOVED = ("bernoulli", "bits", "fold_in", "normal", "permutation", "split", "uniform")


def key(seed: int) -> jax.Array:
    """A typed `jax.random` key of implementation `IMPL` for the integer `seed`.

    Equivalent to `jax.random.key(seed, impl=fdl.random.IMPL)`.
    """
    if not v.is_int(seed):
        raise TypeError(f"fdl.random.key: seed must be an int, got {seed!r}")
    return jax.random.key(int(seed), impl=IMPL)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        raise AttributeError(
            f"fdl.random.{name} was removed: fdl uses JAX's own generators; call "
            f"jax.random.{name} with your key instead (make one with "
            f"jax.random.key(seed) or fdl.random.key(seed))")
    raise AttributeError(f"module 'fdl.random' has no attribute {name!r}")
