"""Hessian-vector products of a loss, forward over reverse (`fdl.hvp`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["hvp"]


def hvp(loss: Callable, params: Any, v: Any, *batch: Any) -> Any:
    """The Hessian-vector product `H v = ∂²loss/∂params² · v` at `params`.

    Forward over reverse: `jax.jvp` of `jax.grad(loss)` along `v`, one gradient's
    cost a few times over, never the Hessian. In manual mode (the default) the
    gradient runs the hand-written backward rules and the forward pass differentiates
    them, so `H v` is the derivative of the hand-written gradient; in autodiff mode it
    is JAX's. `fdl.check.hvp` compares the two and finite differences.

    Args:
      loss: scalar function `loss(params, *batch)`.
      params: a pytree of float arrays (a model's parameters).
      v: the direction, a pytree of the same structure and shapes as `params`.
      *batch: further arguments of `loss`, held fixed.

    Returns:
      `H v`, shaped like `params`.
    """
    p_tree, v_tree = jax.tree.structure(params), jax.tree.structure(v)
    if p_tree != v_tree:
        raise TypeError(f"hvp: v must have the structure of params, {p_tree}, got {v_tree}")
    for i, (p, d) in enumerate(zip(jax.tree.leaves(params), jax.tree.leaves(v))):
        if jnp.shape(p) != jnp.shape(d):
            raise ValueError(f"hvp: v's leaf {i} has shape {jnp.shape(d)} but params' has "
                             f"shape {jnp.shape(p)}; v must be shaped like params")
    v = jax.tree.map(lambda p, d: jnp.asarray(d, jnp.result_type(p)), params, v)
    return jax.jvp(lambda p: jax.grad(loss)(p, *batch), (params,), (v,))[1]
