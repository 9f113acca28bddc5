"""Shuffled mini-batches from explicit PRNG keys, shaped for ``lax.scan``.

Contract
--------
``shuffled_batches(key, data, batch_size) -> batches``

``data`` is any pytree of arrays sharing the leading (example) axis ``N`` — usually
``(x, y)``. One epoch is a random permutation of the ``N`` examples (drawn with
``jax.random.permutation``) cut into ``num_batches = N // batch_size`` batches;
each leaf of shape ``(N, ...)`` comes back as ``(num_batches, batch_size, ...)``, so
``lax.scan(step, carry, batches)`` runs the epoch as one compiled loop.

Remainder policy: the last ``N % batch_size`` examples *of the permutation* are
dropped, so every batch has the same shape (one compilation) and, because the
permutation changes with the key, a different few examples sit out each epoch.

``key`` may be traced: the function works under ``jit`` with ``batch_size`` static
(``jax.jit(shuffled_batches, static_argnames="batch_size")``). ``batch_size`` must be
an int with ``1 <= batch_size <= N``; otherwise ``ValueError`` names ``batch_size``,
its value and ``N``. Both raw ``uint32`` keys and typed ``jax.random.key`` keys work.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def _num_examples(data: PyTree) -> int:
    """The shared leading-axis size of every leaf of ``data``."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(data)
    if not leaves:
        raise ValueError("shuffled_batches: data has no arrays; pass e.g. (x, y)")
    sizes = {}
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(f"shuffled_batches: data leaf {jax.tree_util.keystr(path)!r} "
                             "is a scalar; every leaf needs a leading example axis")
        sizes[jax.tree_util.keystr(path)] = shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError("shuffled_batches: all data leaves need the same number of "
                         f"examples along axis 0, got {sizes}")
    return next(iter(sizes.values()))


def shuffled_batches(key: jax.Array, data: PyTree, batch_size: int) -> PyTree:
    """One epoch of shuffled, equally sized mini-batches.

    Args:
      key: PRNG key for this epoch's permutation (raw or typed; may be traced).
      data: pytree of arrays, each ``(N, ...)``.
      batch_size: examples per batch, a Python int in ``[1, N]`` (static under jit).

    Returns:
      ``data``'s structure with each leaf ``(N // batch_size, batch_size, ...)``.
    """
    n = _num_examples(data)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise ValueError(f"shuffled_batches: batch_size must be an int, got "
                         f"{batch_size!r} of type {type(batch_size).__name__} "
                         f"(data has {n} examples)")
    if not 1 <= batch_size <= n:
        raise ValueError(f"shuffled_batches: batch_size must be between 1 and the "
                         f"number of examples ({n}), got batch_size={batch_size}")
    batch_size = int(batch_size)
    num_batches = n // batch_size
    order = jax.random.permutation(key, n)[: num_batches * batch_size]
    order = order.reshape(num_batches, batch_size)
    # the indices are a permutation: in bounds by construction, so no clamping or
    # fill code (it was the largest kernel of the compiled epoch)
    return jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(leaf).at[order].get(mode="promise_in_bounds",
                                                 unique_indices=True), data)
