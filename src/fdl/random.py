"""Random bits for training's hot loop: the same bits as ``jax.random``, cheaper on CPU.

Every training step derives keys (``fold_in``, ``split``) and draws dropout masks,
and every epoch shuffles; on
XLA:CPU JAX lowers its Threefry hash as a *rolled* loop (five iterations of four
rounds each, a loop-carried state and a copy per iteration), which cost more
than the matrix products of a small MLP's step (benchmarks/bench.py, digits).
:func:`bits`, :func:`fold_in` and :func:`split` compute the same hash as
straight-line element-wise code, which XLA fuses into one vectorised kernel:
bitwise the same numbers and keys as ``jax.random.bits(key, shape, jnp.uint32)``,
``jax.random.fold_in`` and ``jax.random.split`` (the tests check it), about 4×
faster on CPU, and quicker to compile.

Threefry-2x32 (Salmon, Moraes, Dror & Shaw, "Parallel Random Numbers: As Easy
as 1, 2, 3", SC 2011) maps a 64-bit key ``(k₀, k₁)`` and a 64-bit counter
``(c₀, c₁)`` to 64 random bits through 20 rounds of add–rotate–xor (ARX):

    x₀ ← x₀ + x₁;  x₁ ← rotl(x₁, R_r) ⊕ x₀          (one round r)

with the key injected before the first round and after every fourth:
``x₀ += ks[s mod 3]``, ``x₁ += ks[(s+1) mod 3] + s`` at injection ``s``, where
``ks = (k₀, k₁, k₀ ⊕ k₁ ⊕ 0x1BD11BDA)``. JAX's counter for element ``i`` of a
flat draw is ``(hi(i), lo(i))`` and its 32-bit output is ``x₀ ⊕ x₁``; the key
``fold_in(key, d)`` is the pair ``(x₀, x₁)`` for the counter ``(0, d)``, and
``split(key, n)[i]`` the pair for ``(0, i)``.

The fast path is taken for Threefry keys (JAX's default) with JAX's default
``jax_threefry_partitionable=True``; any other key implementation or setting
falls back to ``jax.random.bits`` itself, so the numbers are always JAX's.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["bernoulli", "bits", "fold_in", "key", "normal", "permutation", "split", "uniform"]

# rotation distances of Threefry-2x32's eight rounds (they repeat with period 8)
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA  # the key-schedule constant: ks₂ = k₀ ⊕ k₁ ⊕ parity


def key(seed: int) -> jax.Array:
    """``jax.random.key(seed)`` (a typed Threefry key), made on the host: creating it
    compiles nothing (``jax.random.key`` compiles two small programs, ~0.2 s at
    start-up)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"key: seed must be an int, got {seed!r}")
    if not 0 <= seed < 2**31 or str(jax.config.jax_default_prng_impl) != "threefry2x32":
        return jax.random.key(seed)  # JAX's own conversion of large and negative seeds
    return jax.random.wrap_key_data(np.array([0, seed], np.uint32), impl="threefry2x32")


def _typed(key: jax.Array) -> jax.Array:
    """A typed key for a raw ``uint32[2]`` key (JAX's default implementation)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def _fast_path(key: jax.Array) -> bool:
    """Threefry keys under JAX's default partitionable scheme: the hash below is JAX's."""
    key = _typed(key)
    return (str(jax.random.key_impl(key)) == "threefry2x32"
            and bool(jax.config.jax_threefry_partitionable) and key.shape == ())


def _wrap(words: jax.Array, like: jax.Array) -> jax.Array:
    """Key words ``uint32[..., 2]`` as keys of the same kind (typed or raw) as ``like``."""
    if jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(words, impl=jax.random.key_impl(like))
    return words


def _hash_keys(key: jax.Array, counter: jax.Array) -> jax.Array:
    """Keys ``(x₀, x₁)`` hashed from counters ``(0, counter)``: ``uint32[..., 2]``."""
    k = jax.random.key_data(_typed(key))
    x0, x1 = _threefry2x32(k[0], k[1], jnp.zeros_like(counter), counter)
    # A barrier: the keys are computed once, as their own small kernel. Without it
    # XLA fuses each key's 20 rounds into every consumer (a chain fold_in → split →
    # bits became kernels of ~500 instructions) and compiling the epoch took 3.5×
    # longer.
    return jax.lax.optimization_barrier(jnp.stack([x0, x1], axis=-1))


def fold_in(key: jax.Array, data: int | jax.Array) -> jax.Array:
    """``jax.random.fold_in(key, data)``, bitwise: a new key from ``key`` and an
    integer ``data`` (e.g. the step number; may be traced)."""
    if not _fast_path(key):
        return jax.random.fold_in(key, data)
    if np.ndim(data):
        raise ValueError(f"fold_in: data must be a scalar, got shape {np.shape(data)}")
    d = jnp.asarray(data, dtype=jnp.uint32) if isinstance(data, (int, np.integer)) else \
        jax.lax.convert_element_type(data, jnp.uint32)
    return _wrap(_hash_keys(key, d), key)


def split(key: jax.Array, num: int = 2) -> jax.Array:
    """``jax.random.split(key, num)``, bitwise: ``num`` new keys (leading axis)."""
    num = int(num)
    if not _fast_path(key) or num < 0:
        return jax.random.split(key, num)
    return _wrap(_hash_keys(key, jax.lax.iota(jnp.uint32, num)), key)


def _rotl(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _threefry2x32(k0: jax.Array, k1: jax.Array, c0: jax.Array, c1: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """The 20-round Threefry-2x32 hash of counters ``(c0, c1)`` under key ``(k0, k1)``."""
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(_PARITY))
    x0, x1 = c0 + ks[0], c1 + ks[1]
    for s in range(1, 6):  # five groups of four rounds, a key injection after each
        for r in _ROTATIONS[(s - 1) % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[s % 3]
        x1 = x1 + ks[(s + 1) % 3] + np.uint32(s)
    return x0, x1


def bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform random ``uint32`` bits: ``jax.random.bits(key, shape, jnp.uint32)``,
    bitwise, computed as one fused element-wise kernel.

    Args:
      key: one PRNG key (``jax.random.key`` or a raw ``uint32[2]`` key); may be traced.
      shape: the output shape (static).

    Returns:
      ``uint32`` array of ``shape``.
    """
    key = _typed(key)
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    if not _fast_path(key) or n >= 2**32:
        return jax.random.bits(key, shape, jnp.uint32)
    k = jax.random.key_data(key)
    counter = jax.lax.iota(jnp.uint32, n)  # low word of the flat index; the high word is 0
    x0, x1 = _threefry2x32(k[0], k[1], jnp.zeros_like(counter), counter)
    return (x0 ^ x1).reshape(shape)


def uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32,
            minval: float = 0.0, maxval: float = 1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bitwise, for float32
    (other dtypes call JAX): ``u ∈ [minval, maxval)``.

    The 23 high bits of a random word become the mantissa of a float in [1, 2)
    (exponent bits of 1.0), minus 1: ``2²³`` equally spaced values in [0, 1),
    then scaled to the interval (and clipped below at ``minval``).
    """
    shape = tuple(int(d) for d in shape)
    if jnp.dtype(dtype) != jnp.float32 or not _fast_path(key):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    one = np.array(1.0, np.float32).view(np.uint32)
    mantissa = (bits(key, shape) >> np.uint32(32 - 23)) | one
    u = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)
    lo, hi = jnp.float32(minval), jnp.float32(maxval)
    return jnp.maximum(lo, u * (hi - lo) + lo)


def normal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, bitwise, for float32 (other dtypes call
    JAX): ``z = √2 · erf⁻¹(u)`` with ``u`` uniform on ``(−1, 1)`` (inverse-CDF sampling:
    ``P(z ≤ t) = P(u ≤ erf(t/√2)) = Φ(t)``)."""
    shape = tuple(int(d) for d in shape)
    if jnp.dtype(dtype) != jnp.float32 or not _fast_path(key):
        return jax.random.normal(key, shape, dtype)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))  # keeps erf⁻¹ finite
    u = uniform(key, shape, jnp.float32, lo, 1.0)
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)


def bernoulli(key: jax.Array, p: float, shape: tuple[int, ...]) -> jax.Array:
    """Boolean array, each element ``True`` with probability ``p`` (a Python float).

    ``True`` where ``bits < t``, ``t = round(p · 2³²)`` (clamped to ``[0, 2³² − 1]``
    for ``p < 1``): the probability is ``t / 2³²``, within ``2⁻³³`` of ``p``
    (``jax.random.bernoulli``'s float32 uniform resolves ``2⁻²³``). ``p = 1`` is
    all ``True``, ``p = 0`` all ``False``.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"bernoulli: p must be a probability in [0, 1], got {p!r}")
    shape = tuple(int(d) for d in shape)
    if p == 1.0:
        return jnp.ones(shape, bool)
    threshold = min(int(round(p * 2.0**32)), 2**32 - 1)
    return bits(key, shape) < np.uint32(threshold)


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of ``0 … n−1`` (int32), by sorting random keys.

    Each round draws 32 random bits per element and stably sorts the current order
    by them; ties (probability about ``n²/2³³`` per round) keep their previous
    order, so ``⌈3 ln n / ln 2³²⌉`` rounds (the rule JAX's own shuffle uses) make
    the bias of ties negligible. Not the same permutation as ``jax.random.permutation``.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"permutation: n must be ≥ 0, got {n}")
    key = _typed(key)
    order = jax.lax.iota(jnp.int32, n)
    rounds = max(1, math.ceil(3 * math.log(max(n, 2)) / math.log(2.0**32)))
    for r in range(rounds):
        sort_keys = bits(fold_in(key, r), (n,))
        _, order = jax.lax.sort((sort_keys, order), num_keys=1, is_stable=True)
    return order
