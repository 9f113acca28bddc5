"""Primitives: functions with a hand-written backward and tangent rule.

The contract
------------
A primitive is one section of a module, written in this order (CONTRIBUTING.md walks
through a whole one, under test)::

    import jax
    import jax.numpy as jnp

    from fdl import _validate as v
    from fdl.primitive import Example, gaussian, is_zero, primitive

    def scale(x: jax.Array, w: jax.Array) -> jax.Array:           # 1. forward
        r'''Feature-wise scaling $Y = X ⊙ w$ ($X ∈ ℝ^{N×d}$, $w ∈ ℝ^d$).

        Derivation ($G = ∂L/∂Y ∈ ℝ^{N×d}$): $Y_{ni} = X_{ni} w_i$, so
        $∂L/∂X = G ⊙ w$ (each row times $w$) and $∂L/∂w = Σ_n G_n ⊙ X_n$.
        Residuals: $X$ and $w$. Tangent: $dY = dX ⊙ w + X ⊙ dw$.
        '''
        return x * jnp.broadcast_to(w, x.shape)

    def _scale_save(x, w, y):                                      # 2. residuals
        return x, w

    def _scale_backward(residuals, g):                             # 3. backward
        x, w = residuals
        batch = tuple(range(x.ndim - 1))                            # every axis but the last
        return g * jnp.broadcast_to(w, g.shape), jnp.sum(g * x, axis=batch)

    def _scale_tangent(residuals, tangents):                       # 4. tangent
        x, w = residuals
        dx, dw = tangents
        dy = jnp.zeros_like(x) if is_zero(dx) else dx * jnp.broadcast_to(w, x.shape)
        return dy if is_zero(dw) else dy + x * jnp.broadcast_to(dw, x.shape)

    scale = primitive(
        scale, _scale_backward, save=_scale_save, tangent=_scale_tangent,
        spec=v.shapes("scale", x="…×d", w="d"),                     # 6. validation
        examples=[Example((gaussian(4, 3), gaussian(3))),           # 7. examples
                  Example((gaussian(2, 5, 2), gaussian(2)))],
    )

1. **Forward** `forward(*args) -> y`: an ordinary `jax.numpy` function. It is what
   the primitive computes, and in *autodiff mode* JAX differentiates it, which makes
   it the reference every hand-written rule is checked against. Its docstring holds
   the derivation of $∂L/∂a$ for every argument $a$, with shapes.
2. **Residuals** `save(*args, y) -> residuals`: what the backward needs, computed
   from the inputs and the output `y` (keep it minimal). Default: the non-static
   arguments and `y`. When the residuals are *intermediates* of the forward
   (dropout's random mask, attention's weights), pass `fwd(*args) -> (y, residuals)`
   instead of `save`: the manual mode then computes them once, with `y`; `forward`
   stays the definition and the reference, and the registry tests check that `fwd`
   gives the same `y`.
3. **Backward** `backward(*static, residuals, g) -> tuple`: the static arguments
   first (in order), then the residuals and the output cotangent $g = ∂L/∂y$ (shaped
   like `y`). It returns one cotangent $∂L/∂a$ per *non-static* argument $a$,
   in order; `None` means zero (integer arguments such as class labels). Written
   from the derivation: plain `jnp` and other primitives' forwards, never
   `jax.grad`/`jax.vjp`.
4. **Tangent** `tangent(*static, residuals, tangents) -> dy`: the forward-mode rule,
   the differential $dy = f'(x)[dx]$ from the same derivation. `tangents` holds one
   tangent per non-static argument (`None` for an integer one); it returns `dy`,
   shaped like `y`. It must be linear in the tangents: JAX transposes it to reach the
   backward (see `fdl._tangent`), so `jax.jvp`/`jax.jacfwd` run the tangent rule and
   `jax.grad`/`jax.vjp` the backward. A tangent JAX knows to be zero (an argument not
   differentiated, such as the data $X$ of $dY = dX W + X dW$) arrives as zeros
   for which `is_zero(t)` is true, so the rule may skip the product. Without a tangent
   rule the primitive has reverse mode only (a `jax.custom_vjp`): forward mode then
   raises a `TypeError` in manual mode that says to use autodiff mode.
5. **Switches** (non-smooth primitives only) `switches(*args) -> pytree of bool/int
   arrays`, static arguments included as for `forward`: discrete quantities that change
   value exactly where the derivative jumps (ReLU: `x > 0`; max-pool: the argmax of each
   window). `fdl.check` evaluates them at its finite-difference stencil points and
   refuses a step that changes any, so a correct rule is never blamed for a kink.
6. **Validation**: `spec=v.shapes(name, arg="pattern", …)` states each array
   argument's shape pattern in one line (`"…×d_in"`, `"d_in×d_out"`; dimension names
   bind across arguments; floating-point unless marked `int`, `None` allowed where
   marked `optional`; see `fdl._validate.shapes`) and produces the messages: function,
   argument, expected and given, the fix. `validate(*args)` adds what a spec cannot
   say (value ranges, static arguments, broadcasting), raising `ValueError`/`TypeError`
   at the public boundary instead of an XLA error deep inside. Both run on every call,
   at trace time; value checks apply only where the values are concrete.
7. **Examples** `examples=[Example(...)]`: samplers for the array arguments and values
   for the static ones (`gaussian`, `uniform`, `positive`, `labels`, `probabilities`),
   drawn by `fdl check` and the test suite.

Static arguments (an axis, a stride, a flag) are named in `static=("axis",)`: Python
values fixed at trace time (`nondiff_argnums`), never traced. A primitive is called
like its forward, keywords included: `f(x, axis=-1)`.

Where the rest lives
--------------------
* `fdl.modes`: the two gradient modes, *manual* (the hand-written rules, the default)
  and *autodiff* (JAX differentiates each forward), chosen with `gradient_mode`.
* `fdl._tangent`: how a tangent rule becomes a JAX primitive whose transpose is the
  backward, so both directions run by hand and compose to second order.
* `fdl._samplers`: `Example` and the samplers, exported here (`from fdl.primitive import
  Example, gaussian`): everything a primitive's author imports comes from this module.
* `fdl.recording`: the hook through which `fdl.check.model` sees every call.
* `fdl.hessian`: `hvp`, Hessian-vector products of a loss.

Registry
--------
Every primitive built with `register=True` (the default) is recorded, when its module
is imported, in a registry (`registry`) with its examples, so `fdl check` and the test
suite verify every rule without being told about it. This module imports no
primitive: `import fdl` (or `fdl.ops` and `fdl.losses`) registers the built-in ones.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax

from fdl._samplers import Example, Sampler, gaussian, labels, positive, probabilities, uniform
from fdl._tangent import custom_jvp, is_zero
from fdl.modes import get_gradient_mode
from fdl.recording import active_recorder

__all__ = ["Example", "Primitive", "Sampler", "gaussian", "is_zero", "labels", "positive",
           "primitive", "probabilities", "registry", "uniform"]


class Primitive:
    """A function with hand-written rules and its plain forward as reference.

    Built by `primitive` (see the contract above); called like its forward.

    Attributes:
      name: registry name (`"linear"`).
      forward: the plain `jnp` forward, differentiated by JAX in autodiff mode.
      backward: the hand-written rule `backward(*static, residuals, g)`.
      tangent: the hand-written rule `tangent(*static, residuals, tangents)`, or None.
      switches: `switches(*args)` for a non-smooth primitive, or None.
      spec: the declarative shape spec (`fdl._validate.shapes`), or None.
      extra_validation: the further checks `validate(*args)` given to `primitive`, or None.
      static: names of the static (non-differentiable, trace-time) arguments.
      examples: example arguments used by `fdl check` and the tests.
    """

    def __init__(
        self,
        forward: Callable,
        backward: Callable,
        *,
        save: Callable | None = None,
        fwd: Callable | None = None,
        tangent: Callable | None = None,
        switches: Callable | None = None,
        spec: Any = None,
        validate: Callable | None = None,
        static: Sequence[str] = (),
        name: str,
        examples: Sequence[Example] = (),
    ) -> None:
        self.name = name
        self.forward = forward
        self.backward = backward
        self.save = save
        self.fwd = fwd
        self.tangent = tangent
        self.switches = switches
        self.spec = spec
        self.extra_validation = validate
        self.examples = tuple(examples)
        self.signature = inspect.signature(forward)
        params = list(self.signature.parameters)
        for what, names in (("static argument", static),
                            ("spec argument", spec.names if spec is not None else ())):
            unknown = [s for s in names if s not in params]
            if unknown:
                raise ValueError(f"primitive {name!r}: {what}(s) {unknown} are not "
                                 f"parameters of the forward, which takes {params}")
        self.static = tuple(static)
        self.static_argnums = tuple(i for i, p in enumerate(params) if p in static)
        self._custom = self._custom_vjp() if tangent is None else custom_jvp(self)
        functools.update_wrapper(self, forward)  # docstring, name, module for help()

    # calling ------------------------------------------------------------------------
    def bind(self, *args: Any, **kwargs: Any) -> tuple:
        """Arguments as one positional tuple (defaults applied), validated."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}: {e}") from None
        bound.apply_defaults()
        self.validate(*bound.args)
        return bound.args

    def validate(self, *args: Any) -> None:
        """Check positional arguments `args` (defaults applied): the spec, then the
        further checks. Raises `ValueError`/`TypeError`; returns nothing."""
        if self.spec is not None:
            self.spec(**dict(zip(self.signature.parameters, args)))
        if self.extra_validation is not None:
            self.extra_validation(*args)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        full = self.bind(*args, **kwargs)
        recorder = active_recorder()
        if recorder is not None:  # trace time only; None unless a check is recording
            return recorder(self, full, self._run)
        return self._run(full)

    def _run(self, full: tuple) -> Any:
        """Evaluate on bound arguments in the gradient mode in force."""
        if get_gradient_mode() == "autodiff":
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
        """Call with the hand-written rules whatever the gradient mode."""
        return self._custom(*self.bind(*args, **kwargs))

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """Call the plain forward (autodiff reference) whatever the gradient mode."""
        return self.forward(*self.bind(*args, **kwargs))

    # the rules, for the JAX machinery and the checkers ------------------------------
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

    def _checked_backward(self, *args: Any) -> tuple:
        """The backward on `(*static, residuals, g)`, its result checked: one cotangent
        per non-static argument, as a tuple."""
        *static, residuals, g = args
        cotangents = self.backward(*static, residuals, g)
        if not isinstance(cotangents, tuple):
            raise TypeError(
                f"primitive {self.name!r}: backward must return a tuple of "
                f"cotangents, got {type(cotangents).__name__}"
            )
        expected = len(self.signature.parameters) - len(self.static_argnums)
        if len(cotangents) != expected:
            raise TypeError(
                f"primitive {self.name!r}: backward returned {len(cotangents)} "
                f"cotangents for {expected} non-static arguments"
            )
        return cotangents

    def _custom_vjp(self) -> Callable:
        """Reverse mode only: the primitive as a `jax.custom_vjp` (no tangent rule)."""
        f = jax.custom_vjp(self.forward, nondiff_argnums=self.static_argnums)
        f.defvjp(self.forward_with_residuals, self._checked_backward)
        return f

    def __repr__(self) -> str:
        return f"<fdl primitive {self.name}{self.signature}>"


_REGISTRY: dict[str, Primitive] = {}


def primitive(
    forward: Callable,
    backward: Callable,
    *,
    save: Callable | None = None,
    fwd: Callable | None = None,
    tangent: Callable | None = None,
    switches: Callable | None = None,
    spec: Any = None,
    validate: Callable | None = None,
    static: Sequence[str] = (),
    name: str | None = None,
    examples: Sequence[Example] = (),
    register: bool = True,
) -> Primitive:
    """Build a primitive from its forward and hand-written rules (the contract above).

    Args:
      forward: plain `jnp` function `forward(*args) -> y`; its docstring holds
        the derivation.
      backward: `backward(*static, residuals, g) -> tuple` of cotangents, one per
        non-static argument (`None` for zero).
      save: `save(*args, y) -> residuals`; default saves the non-static args and `y`.
      fwd: `fwd(*args) -> (y, residuals)`, instead of `save`, when the residuals
        are intermediates of the forward; its `y` must equal `forward(*args)`.
      tangent: `tangent(*static, residuals, tangents) -> dy`, the hand-written
        forward-mode rule, linear in the tangents (`None` for an integer argument;
        `is_zero` tells the zeros JAX knows of). Without it the primitive has reverse
        mode only (`jax.custom_vjp`).
      switches: for a non-smooth primitive, `switches(*args) -> pytree of bool/int
        arrays` (static arguments included, as for `forward`): discrete quantities
        that change value exactly where the derivative jumps (ReLU: `x > 0`;
        max-pool: the argmax of each window). `fdl.check` evaluates them at its
        finite-difference stencil points and refuses a step that changes any.
      spec: the array arguments' shapes and dtypes, `fdl._validate.shapes(...)`.
      validate: `validate(*args)` raising `ValueError`/`TypeError`, for what the
        spec cannot say (value ranges, static arguments).
      static: names of the forward's static (non-differentiable) parameters.
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
    p = Primitive(forward, backward, save=save, fwd=fwd, tangent=tangent, switches=switches,
                  spec=spec, validate=validate, static=static, name=name, examples=examples)
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
