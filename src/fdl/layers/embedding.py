"""The embedding layer: integer ids → learned vectors.

A thin `Layer` wrapper over `fdl.ops.embedding`, whose primitive carries the
derivation (the gradient of a lookup is a scatter-add into the looked-up rows).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl import ops
from fdl.ops import ghost
from fdl.layers.base import PROBE, Layer, Shape, has_probe, stateless
from fdl.layers.initializers import Initializer, get_initializer, normal

__all__ = ["Embedding"]


def Embedding(vocab_size: int, features: int, *,
              init: str | Initializer | None = None, dtype: Any = jnp.float32) -> Layer:
    """Embedding lookup (`fdl.ops.embedding`): integer ids → `features`-vectors.

    `init(key, S)` for ids of shape `S` per example (`()` for one token,
    `(L,)` for a sequence) → `S + (features,)`; params
    `{"table": (vocab_size, features)}`, initialised `N(0, 1)` unless `init`
    says otherwise. `apply` takes integer ids `N×S` in `[0, vocab_size)`.
    """
    fn = "Embedding"
    v.positive_int(fn, "vocab_size", vocab_size)
    v.positive_int(fn, "features", features)
    table_init = normal(1.0) if init is None else get_initializer(init)

    def init_fn(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict]:
        input_shape = v.input_shape(
            fn, input_shape, "the shape of one example's ids (e.g. () or (L,))")
        table = table_init(key, (vocab_size, features), dtype)
        return input_shape + (features,), {"table": table}

    def lookup(params: dict, x: jax.Array) -> jax.Array:
        if has_probe(params):  # a probe: per-example gradient norms asked for
            return ghost.ghost_embedding(x, params["table"], params[PROBE])
        return ops.embedding(x, params["table"])

    return stateless("embedding", lookup, init=init_fn)
