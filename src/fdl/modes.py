"""The two gradient modes: hand-written rules (*manual*) or JAX autodiff of the forwards.

*manual* (the default): every primitive call runs its hand-written backward and
tangent rules. *autodiff*: every call evaluates the primitive's plain forward, so JAX
differentiates it, which makes the forward the reference every rule is checked
against. Choose with the context manager `gradient_mode`::

    with fdl.gradient_mode("autodiff"):
        g = jax.grad(loss)(params)        # pure autodiff through every primitive

The mode is a `jax.make_user_context` value, which is part of JAX's tracing and
compilation cache key: a function jitted in one mode is re-traced, never reused, in
the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

__all__ = ["gradient_mode", "get_gradient_mode"]

_MODES = ("manual", "autodiff")
_MODE = jax.make_user_context("manual")


@contextlib.contextmanager
def gradient_mode(mode: str) -> Iterator[None]:
    """Differentiate fdl primitives with their hand-written rules or with autodiff.

    Args:
      mode: `"manual"` (hand-written rules, the default) or `"autodiff"` (JAX
        differentiates each primitive's plain forward).

    The mode is read at trace time and is part of JAX's jit cache key, so a
    function compiled in one mode is never reused in the other.
    """
    if mode not in _MODES:
        raise ValueError(f"gradient_mode: mode must be one of {_MODES}, got {mode!r}")
    with _MODE(mode):
        yield


def get_gradient_mode() -> str:
    """The gradient mode in force: `"manual"` or `"autodiff"`."""
    return _MODE.value
