"""Primitives: functions with a hand-written vector-Jacobian product.

The contract, once
------------------
A primitive is built from four parts, written in this order in its module::

    def forward(*args) -> y                     # plain jnp; also the autodiff reference
        '''What it computes, and the derivation of ∂L/∂args with shapes.'''
    def save(*args, y) -> residuals             # what the backward needs (keep it minimal)
    def backward(*static, residuals, g) -> tuple  # one cotangent per differentiable arg
    f = primitive(forward, backward, save=save, static=("axis",), examples=[...])

* `forward(*args)` is an ordinary `jax.numpy` function. It is what the
  primitive computes, and in *autodiff mode* it is differentiated by JAX itself,
  which makes it the reference every hand-written rule is checked against.
* `save(*args, y)` returns the residuals: whatever the backward needs, computed
  from the inputs and the output `y`. Default: all array arguments and `y`.
  When the residuals are *intermediates* of the forward (dropout's random mask,
  attention's weights), pass `fwd(*args) -> (y, residuals)` instead of `save`:
  the manual mode then computes them once, with `y`. `forward` stays the
  definition and the autodiff reference; the registry tests check that `fwd`
  gives the same `y`. (XLA merges a recomputation in `save` only when it can
  prove the two equal: it does not merge loops, such as a random-number draw.)
* `backward(*static, residuals, g)` receives the static arguments first (in
  order), then the residuals and the output cotangent `g = ∂L/∂y` (same shape as
  `y`). It returns a tuple with one cotangent `∂L/∂arg` per *non-static*
  argument, in order; `None` means zero (use it for integer arguments such as
  class labels). It must be written from the derivation: it may call plain `jnp`
  and other primitives' forwards, never `jax.grad`/`jax.vjp`.
* Static arguments (an axis, a stride, a flag) are named in `static`; they are
  Python values fixed at trace time (`nondiff_argnums`), never traced.
* `validate(*args)` (optional) checks shapes, dtypes and, where the values are
  concrete, the values, raising `ValueError`/`TypeError` at the public
  boundary instead of an XLA error deep inside.

A primitive is called like its forward, keywords included: `f(x, axis=-1)`.

Two gradient modes
------------------
*manual* (the default): calls go through `jax.custom_vjp` with the hand-written
backward. *autodiff*: calls evaluate the plain forward, so JAX differentiates it.
Choose with the context manager `gradient_mode`::

    with fdl.gradient_mode("autodiff"):
        g = jax.grad(loss)(params)        # pure autodiff through every primitive

The mode is a `jax.make_user_context` value, which is part of JAX's tracing and
compilation cache key: a function jitted in one mode is re-traced, never reused,
in the other. Forward-mode differentiation of a primitive (`jax.jvp`,
`jax.jacfwd`) is not defined by a VJP rule; it works in autodiff mode and, in
manual mode, raises a `TypeError` that says so. `jax.hessian` (forward over
reverse) does run in manual mode: JAX differentiates the hand-written backward,
which is right when the rule is right; use autodiff mode for an independent Hessian.

Registry
--------
Every primitive built with `register=True` (the default) is recorded, when its module
is imported, in a registry (`registry`) with example arguments, so `fdl check` and
the test suite verify every rule without being told about it. This module imports no
primitive: `import fdl` (or `fdl.ops` and `fdl.losses`) registers the built-in ones.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "Example",
    "Primitive",
    "gradient_mode",
    "get_gradient_mode",
    "primitive",
    "registry",
    "gaussian",
    "positive",
    "uniform",
    "labels",
    "probabilities",
]

_MODES = ("manual", "autodiff")
_MODE = jax.make_user_context("manual")


@contextlib.contextmanager
def gradient_mode(mode: str) -> Iterator[None]:
    """Differentiate fdl primitives with their hand-written rules or with autodiff.

    Args:
      mode: `"manual"` (hand-written VJP rules, the default) or `"autodiff"`
        (JAX differentiates each primitive's plain forward).

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


# --------------------------------------------------------------------------- #
# Example arguments, for the checks
# --------------------------------------------------------------------------- #

Sampler = Callable[[jax.Array, Any], Any]


def gaussian(*shape: int, scale: float = 1.0) -> Sampler:
    """An example argument drawn from `N(0, scale²)` with the given shape.

    (Named apart from `jax.random.normal`, which draws, and the initialiser
    `fdl.layers.initializers.normal`, which makes weights: this makes a sampler.)
    """
    return lambda key, dtype: scale * jax.random.normal(key, shape, dtype)


def uniform(*shape: int, low: float = -1.0, high: float = 1.0) -> Sampler:
    """An example argument drawn uniformly from `[low, high)`."""
    return lambda key, dtype: jax.random.uniform(key, shape, dtype, low, high)


def positive(*shape: int, low: float = 0.5, high: float = 2.0) -> Sampler:
    """A strictly positive example argument (uniform in `[low, high)`)."""
    return uniform(*shape, low=low, high=high)


def labels(*shape: int, classes: int) -> Sampler:
    """Integer class labels in `[0, classes)` (int32; not differentiated)."""
    return lambda key, dtype: jax.random.randint(key, shape, 0, classes, jnp.int32)


def probabilities(*shape: int) -> Sampler:
    """Rows on the simplex along the last axis (e.g. soft targets)."""

    def sample(key: jax.Array, dtype: Any) -> jax.Array:
        return jax.nn.softmax(jax.random.normal(key, shape, dtype), axis=-1)

    return sample


@dataclass(frozen=True)
class Example:
    """Example arguments for a primitive: samplers for array args, values for static ones.

    `args` holds, position by position, a sampler `(key, dtype) -> array` for
    each array argument and the literal value for each static argument.
    `kwargs` likewise, by name.
    """

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def sample(self, key: jax.Array, dtype: Any = jnp.float64) -> tuple[tuple, dict]:
        """Draw concrete arguments in `dtype` from `key`."""
        keys = jax.random.split(key, len(self.args) + len(self.kwargs))

        def draw(v: Any, k: jax.Array) -> Any:
            return v(k, dtype) if callable(v) else v

        args = tuple(draw(a, k) for a, k in zip(self.args, keys))
        kwargs = {n: draw(v, k) for (n, v), k in zip(self.kwargs.items(), keys[len(self.args):])}
        return args, kwargs


# --------------------------------------------------------------------------- #
# The primitive
# --------------------------------------------------------------------------- #


class Primitive:
    """A function with a hand-written VJP and its plain forward as reference.

    Attributes:
      name: registry name (`"linear"`).
      forward: the plain `jnp` forward, differentiated by JAX in autodiff mode.
      backward: the hand-written rule `backward(*static, residuals, g)`.
      static: names of the static (non-differentiable, trace-time) arguments.
      examples: example arguments used by `fdl check` and the tests.
    """

    def __init__(
        self,
        forward: Callable,
        backward: Callable,
        *,
        save: Callable | None,
        fwd: Callable | None = None,
        static: Sequence[str],
        validate: Callable | None,
        name: str,
        examples: Sequence[Example],
    ) -> None:
        self.name = name
        self.forward = forward
        self.backward = backward
        self.save = save
        self.fwd = fwd
        self.validate = validate
        self.examples = tuple(examples)
        self.signature = inspect.signature(forward)
        params = list(self.signature.parameters)
        unknown = [s for s in static if s not in params]
        if unknown:
            raise ValueError(
                f"primitive {name!r}: static argument(s) {unknown} are not parameters "
                f"of the forward, which takes {params}"
            )
        self.static = tuple(static)
        self.static_argnums = tuple(i for i, p in enumerate(params) if p in static)
        self._custom = self._build_custom_vjp()
        functools.update_wrapper(self, forward)  # docstring, name, module for help()

    def forward_with_residuals(self, *args: Any) -> tuple[Any, Any]:
        """`(y, residuals)` for positional arguments `args` (defaults applied, as
        `bind` returns them): what the manual mode's forward pass keeps for the
        backward. Not validated, not differentiable: for rules and checkers."""
        if self.fwd is not None:
            return self.fwd(*args)
        y = self.forward(*args)
        if self.save is None:  # default residuals: the non-static arguments and y
            return y, (tuple(a for i, a in enumerate(args) if i not in self.static_argnums), y)
        return y, self.save(*args, y)

    def _build_custom_vjp(self) -> Callable:
        forward, backward = self.forward, self.backward
        static_argnums = self.static_argnums

        def fwd(*args):
            return self.forward_with_residuals(*args)

        def bwd(*args):
            *static, residuals, g = args
            cotangents = backward(*static, residuals, g)
            if not isinstance(cotangents, tuple):
                raise TypeError(
                    f"primitive {self.name!r}: backward must return a tuple of "
                    f"cotangents, got {type(cotangents).__name__}"
                )
            expected = len(self.signature.parameters) - len(static_argnums)
            if len(cotangents) != expected:
                raise TypeError(
                    f"primitive {self.name!r}: backward returned {len(cotangents)} "
                    f"cotangents for {expected} non-static arguments"
                )
            return cotangents

        f = jax.custom_vjp(forward, nondiff_argnums=static_argnums)
        f.defvjp(fwd, bwd)
        return f

    def bind(self, *args: Any, **kwargs: Any) -> tuple:
        """Arguments as one positional tuple (defaults applied), validated."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}: {e}") from None
        bound.apply_defaults()
        full = bound.args
        if self.validate is not None:
            self.validate(*full)
        return full

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        full = self.bind(*args, **kwargs)
        if _MODE.value == "autodiff":
            return self.forward(*full)
        try:
            return self._custom(*full)
        except TypeError as e:
            if "forward-mode" not in str(e):
                raise
            raise TypeError(
                f"{self.name}: forward-mode differentiation (jax.jvp, jax.jacfwd, "
                "jax.hessian) is not available with fdl's hand-written VJP rules. "
                'Run it in autodiff mode: `with fdl.gradient_mode("autodiff"): ...`'
            ) from None

    def manual(self, *args: Any, **kwargs: Any) -> Any:
        """Call with the hand-written rule whatever the gradient mode."""
        return self._custom(*self.bind(*args, **kwargs))

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """Call the plain forward (autodiff reference) whatever the gradient mode."""
        return self.forward(*self.bind(*args, **kwargs))

    def __repr__(self) -> str:
        return f"<fdl primitive {self.name}{self.signature}>"


_REGISTRY: dict[str, Primitive] = {}


def primitive(
    forward: Callable,
    backward: Callable,
    *,
    save: Callable | None = None,
    fwd: Callable | None = None,
    static: Sequence[str] = (),
    validate: Callable | None = None,
    name: str | None = None,
    examples: Sequence[Example] = (),
    register: bool = True,
) -> Primitive:
    """Build a primitive from its forward and hand-written backward.

    Args:
      forward: plain `jnp` function `forward(*args) -> y`; its docstring holds
        the derivation.
      backward: `backward(*static, residuals, g) -> tuple` of cotangents, one per
        non-static argument (`None` for zero).
      save: `save(*args, y) -> residuals`; default saves the non-static args and `y`.
      fwd: `fwd(*args) -> (y, residuals)`, instead of `save`, when the residuals
        are intermediates of the forward; its `y` must equal `forward(*args)`.
      static: names of the forward's static (non-differentiable) parameters.
      validate: optional `validate(*args)` raising `ValueError`/`TypeError`.
      name: registry name; default `forward.__name__`.
      examples: example arguments for the checks (`Example`).
      register: record the primitive in `registry` (a name already taken
        raises `ValueError`).

    Returns:
      A `Primitive`, called like `forward`.
    """
    name = name or forward.__name__
    if save is not None and fwd is not None:
        raise ValueError(
            f"primitive {name!r}: pass save or fwd, not both (fwd returns the residuals itself)")
    p = Primitive(
        forward, backward, save=save, fwd=fwd, static=static, validate=validate, name=name,
        examples=examples,
    )
    if register:
        if name in _REGISTRY:
            raise ValueError(
                f"primitive: the name {name!r} is already registered "
                f"(by {_REGISTRY[name].forward.__module__}); choose another name "
                "or pass register=False"
            )
        _REGISTRY[name] = p
    return p


def registry() -> dict[str, Primitive]:
    """Every primitive registered so far, by name (a copy, sorted by name).

    A primitive registers when its module is imported; this module imports none, so
    that it stays below them. `import fdl` imports `fdl.ops` and `fdl.losses`, so
    `fdl.registry()` holds every built-in primitive.
    """
    return dict(sorted(_REGISTRY.items()))


def __getattr__(name: str) -> Any:
    if name == "normal":
        warnings.warn("fdl.primitive.normal is deprecated; use fdl.primitive.gaussian (the "
                      "same example sampler)", DeprecationWarning, stacklevel=2)
        return gaussian
    raise AttributeError(f"module 'fdl.primitive' has no attribute {name!r}")
