"""Primitives: functions with a hand-written vector-Jacobian product and tangent rule.

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
* `tangent(*static, residuals, tangents)` (optional) is the forward-mode rule, the
  differential `dy = f'(x)[dx]` written from the same derivation: `tangents` holds
  one tangent per non-static argument (`None` for an integer one, zeros where JAX
  has none) and it returns `dy`, shaped like `y`. It must be linear in the
  tangents and may call plain `jnp` and other primitives' forwards, never
  `jax.jvp`/`jax.grad`.
* `validate(*args)` (optional) checks shapes, dtypes and, where the values are
  concrete, the values, raising `ValueError`/`TypeError` at the public
  boundary instead of an XLA error deep inside.

A primitive is called like its forward, keywords included: `f(x, axis=-1)`.

Two gradient modes
------------------
*manual* (the default): calls run the hand-written rules. *autodiff*: calls evaluate
the plain forward, so JAX differentiates it.
Choose with the context manager `gradient_mode`::

    with fdl.gradient_mode("autodiff"):
        g = jax.grad(loss)(params)        # pure autodiff through every primitive

The mode is a `jax.make_user_context` value, which is part of JAX's tracing and
compilation cache key: a function jitted in one mode is re-traced, never reused,
in the other.

Both directions by hand. A primitive with a `tangent` rule is a `jax.custom_jvp`
whose tangent is a JAX primitive of its own (`fdl_<name>_tangent`), linear in the
tangents: its implementation is the tangent rule and its *transpose* is the
backward. So `jax.jvp`, `jax.jacfwd` and `jax.linearize` run the tangent rule, and
`jax.grad`, `jax.vjp` and `jax.jacrev` — which JAX derives by linearising and
transposing — run the backward, compiled to the same program as a `custom_vjp`
would give. Under `vmap` the rule (and through the transpose, the backward) is
mapped with `jax.vmap`. Second order composes: `jax.hessian` and `hvp` (forward
over reverse) differentiate the hand-written backward, `jacfwd` of `jacfwd` the
tangent rule. `fdl.check.jvp`, `fdl.check.adjoint` and `fdl.check.hvp` verify
these. A primitive without a tangent rule is a `jax.custom_vjp` (reverse mode
only): forward mode then raises a `TypeError` in manual mode that says to use
autodiff mode.

Registry
--------
Every primitive built with `register=True` (the default) is recorded, when its module
is imported, in a registry (`registry`) with example arguments, so `fdl check` and
the test suite verify every rule without being told about it. This module imports no
primitive: `import fdl` (or `fdl.ops` and `fdl.losses`) registers the built-in ones.

Recording
---------
`recording(recorder)` routes every primitive call traced inside it through
`recorder(p, args, run)`, and the layer combinators name the layer each call runs
under (`layer_scope`, `layer_path`). `fdl.check.model` uses it, only when a check
fails, to name the first primitive whose rule diverges from autodiff. Both are read
at trace time; with no recorder on, a call costs one context-variable read.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Example",
    "Primitive",
    "gradient_mode",
    "get_gradient_mode",
    "hvp",
    "layer_path",
    "layer_scope",
    "primitive",
    "recording",
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

Sampler = Callable[[np.random.Generator, Any], Any]
"""`(rng, dtype) -> array`: draws one example argument on the host with a numpy
`Generator` (nothing to compile), in `dtype`. The built-in samplers also accept an int
seed or a JAX key in place of `rng`."""


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
    return jnp.asarray(np.asarray(values).astype(jnp.dtype(dtype)))


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
        tangent: Callable | None = None,
        switches: Callable | None = None,
    ) -> None:
        self.name = name
        self.switches = switches
        self.forward = forward
        self.backward = backward
        self.tangent = tangent
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
        if tangent is None:
            self._custom = self._build_custom_vjp()
        else:
            self._tangent_p = _TangentPrimitive(self)
            self._custom = self._build_custom_jvp()
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
            return self._checked_backward(*static, residuals, g)

        f = jax.custom_vjp(forward, nondiff_argnums=static_argnums)
        f.defvjp(fwd, bwd)
        return f

    def _checked_backward(self, *args: Any) -> tuple:
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

    def _build_custom_jvp(self) -> Callable:
        """The primitive as a `jax.custom_jvp` whose tangent is the hand-written rule
        (a `_TangentPrimitive`), so forward mode runs the tangent rule and reverse
        mode, by transposition, the hand-written backward."""
        static_argnums = self.static_argnums
        n = len(self.signature.parameters)
        float0 = jax.dtypes.float0

        def jvp(*args):
            *static, primals, tangents = args
            it_p, it_s = iter(primals), iter(static)
            full = tuple(next(it_s) if i in static_argnums else next(it_p) for i in range(n))
            y, residuals = self.forward_with_residuals(*full)
            leaves, res_tree = jax.tree.flatten(residuals)
            leaves = [jnp.asarray(r) for r in leaves]
            tan_leaves, tan_tree = jax.tree.flatten(tuple(tangents))
            # per tangent leaf: True (an operand), None (an integer argument: no tangent)
            # or (shape, dtype) (a zero JAX knows of: the rule's own zeros, which XLA folds
            # away, e.g. `dX W` for data `X` — an operand would cost a product)
            has = tuple(_tangent_kind(t, float0) for t in tan_leaves)
            dy = self._tangent_p.p.bind(
                *leaves, *(t for t, h in zip(tan_leaves, has) if h is True), levels=(),
                static=tuple(static), res_tree=res_tree, n_res=len(leaves), has_tangent=has,
                tan_tree=tan_tree, out_tree=jax.tree.structure(y))
            return y, jax.tree.unflatten(jax.tree.structure(y), dy)

        f = jax.custom_jvp(self.forward, nondiff_argnums=static_argnums)
        f.defjvp(jvp, symbolic_zeros=True)
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
        recorder = _RECORDER.get()
        if recorder is not None:  # trace time only; None unless a check is recording
            return recorder(self, full, self._run)
        return self._run(full)

    def _run(self, full: tuple) -> Any:
        """Evaluate on bound arguments in the gradient mode in force."""
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


# --------------------------------------------------------------------------- #
# Tangent rules: one JAX primitive per fdl primitive, linear in its tangents
# --------------------------------------------------------------------------- #


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


_KNOWN_ZEROS: list[set[int]] = []  # ids of the zero tangents of the rules being traced


def is_zero(tangent: Any) -> bool:
    """Whether `tangent`, given to a tangent rule, is a zero JAX knows of (the argument
    is not being differentiated, e.g. the data `X` of `dY = dX W + X dW`). A rule may
    skip the terms it multiplies: the result is the same, and XLA does not always
    remove a product with zeros."""
    return bool(_KNOWN_ZEROS) and id(tangent) in _KNOWN_ZEROS[-1]


def _tangent_kind(t: Any, float0: Any) -> Any:
    """True for a tangent operand, None for no tangent (an integer argument), and
    `(shape, dtype)` for a symbolic zero of a float argument."""
    from jax.custom_derivatives import SymbolicZero

    if isinstance(t, SymbolicZero):
        aval = t.aval
        if aval.dtype == float0 or not jnp.issubdtype(aval.dtype, jnp.inexact):
            return None
        return (tuple(aval.shape), jnp.dtype(aval.dtype))
    return True if jnp.result_type(t) != float0 else None


def _vmapped(fn: Callable, levels: tuple) -> Callable:
    """`fn(*operands) -> list` mapped over each recorded batch level, innermost first
    (each level's outputs carry its batch axis at 0)."""
    for axes in levels:
        fn = jax.vmap(fn, in_axes=list(axes), out_axes=0)
    return fn


class _TangentPrimitive:
    """`dy = T(residuals)[dx₁, …, dx_k]` as a JAX primitive, for one fdl primitive.

    Operands: the residual leaves, then the tangent of each differentiable argument
    (zeros where JAX has none). The primitive is linear in the tangents, so JAX's
    reverse mode transposes it; its transpose is the fdl primitive's hand-written
    backward. Its implementation and lowering are the hand-written tangent rule;
    batching maps the rule (and, through the transpose, the backward) with `jax.vmap`
    and records the batch axes as a parameter, so `grad` of `vmap` still runs the
    hand-written backward.
    """

    def __init__(self, owner: Primitive) -> None:
        from jax.extend.core import Primitive as JaxPrimitive
        from jax.interpreters import ad, batching, mlir

        self.owner = owner
        p = JaxPrimitive(f"fdl_{owner.name}_tangent")
        p.multiple_results = True
        p.def_impl(self._impl)
        p.def_abstract_eval(self._abstract)
        mlir.register_lowering(p, mlir.lower_fun(self._impl, multiple_results=True))
        ad.primitive_transposes[p] = self._transpose
        ad.primitive_jvps[p] = self._jvp
        batching.primitive_batchers[p] = self._batch
        self.p = p

    # the hand-written rules on flat operands ------------------------------------
    def _rule(self, *operands: Any, static: tuple, res_tree: Any, n_res: int, has_tangent: tuple,
              tan_tree: Any, out_tree: Any) -> list:
        res = jax.tree.unflatten(res_tree, operands[:n_res])
        it = iter(operands[n_res:])
        zeros = [jnp.zeros(*t) for t in has_tangent if t is not None and t is not True]
        iz = iter(zeros)
        tangents = jax.tree.unflatten(tan_tree, [
            next(it) if t is True else None if t is None else next(iz) for t in has_tangent])
        _KNOWN_ZEROS.append({id(z) for z in zeros})
        try:
            dy = self.owner.tangent(*static, res, tangents)
        finally:
            _KNOWN_ZEROS.pop()
        leaves, tree = jax.tree.flatten(dy)
        if tree != out_tree:
            raise TypeError(f"primitive {self.owner.name!r}: tangent rule returned a {tree}, "
                            f"the output is a {out_tree}")
        return leaves

    def _backward(self, *operands: Any, static: tuple, res_tree: Any, n_res: int,
                  has_tangent: tuple, tan_tree: Any, out_tree: Any) -> list:
        res = jax.tree.unflatten(res_tree, operands[:n_res])
        g = jax.tree.unflatten(out_tree, operands[n_res:])
        cts = self.owner._checked_backward(*static, res, g)
        leaves = []  # one per tangent leaf; `None` (zero) for an argument's `None`
        for ct, sub in zip(cts, tan_tree.children()):
            leaves += [None] * sub.num_leaves if ct is None else sub.flatten_up_to(ct)
        return [c for c, t in zip(leaves, has_tangent) if t is True]

    def _impl(self, *operands: Any, levels: tuple, **params: Any) -> list:
        return _vmapped(functools.partial(self._rule, **params), levels)(*operands)

    def _abstract(self, *avals: Any, **params: Any) -> list:
        from jax.core import ShapedArray

        out = jax.eval_shape(functools.partial(self._impl, **params),
                             *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
        return [ShapedArray(o.shape, o.dtype) for o in out]

    # JAX's interpreters ----------------------------------------------------------
    def _transpose(self, cts: list, *operands: Any, levels: tuple, n_res: int,
                   **params: Any) -> list:
        from jax.interpreters import ad

        res, tans = operands[:n_res], operands[n_res:]
        if any(ad.is_undefined_primal(r) for r in res):
            raise TypeError(f"primitive {self.owner.name!r}: its tangent rule is linear in the "
                            "tangents only, not in the residuals")
        avals = [t.aval if ad.is_undefined_primal(t) else None for t in tans]
        if all(type(c) is ad.Zero for c in cts):
            return [None] * n_res + [ad.Zero(a) if a is not None else None for a in avals]
        cts = [ad.instantiate_zeros(c) for c in cts]
        bwd = functools.partial(self._backward, n_res=n_res, **params)
        for axes in levels:  # map the backward level by level, innermost first
            bwd = self._mapped_backward(bwd, axes[:n_res], axes[n_res:], len(cts))
        out = bwd(*res, *cts)
        return [None] * n_res + [
            (ad.Zero(a) if c is None else c) if a is not None else None
            for c, a in zip(out, avals)]

    @staticmethod
    def _mapped_backward(bwd: Callable, res_axes: tuple, tan_axes: tuple, n_ct: int) -> Callable:
        def mapped(*operands: Any) -> list:
            out = jax.vmap(bwd, in_axes=list(res_axes) + [0] * n_ct, out_axes=0)(*operands)
            # an unmapped tangent's cotangent is the sum over the batch
            return [c if c is None else (jnp.sum(c, axis=0) if a is None else jnp.moveaxis(c, 0, a))
                    for c, a in zip(out, tan_axes)]
        return mapped

    def _batch(self, operands: Sequence[Any], dims: Sequence[Any], *, levels: tuple,
               **params: Any) -> tuple[list, list]:
        axes = tuple(None if d is None else int(d) for d in dims)  # None: not mapped
        out = self.p.bind(*operands, levels=levels + (axes,), **params)
        return out, [0] * len(out)

    def _jvp(self, primals: Sequence[Any], tangents: Sequence[Any], *, n_res: int,
             **params: Any) -> tuple[list, list]:
        # T is linear in dx: d[T(r)[dx]] = T(r)[d(dx)] + (∂T/∂r)[dr][dx]; the second term
        # differentiates the hand-written tangent rule in its residuals.
        from jax.interpreters import ad

        res, tans = list(primals[:n_res]), list(primals[n_res:])
        out = self.p.bind(*primals, n_res=n_res, **params)
        parts = []
        if any(type(t) is not ad.Zero for t in tangents[n_res:]):
            parts.append(self.p.bind(*res, *(ad.instantiate_zeros(t) for t in tangents[n_res:]),
                                     n_res=n_res, **params))
        moving = [i for i, t in enumerate(tangents[:n_res]) if type(t) is not ad.Zero]
        if moving:
            def of_res(*moved: Any) -> list:
                full = list(res)
                for i, m in zip(moving, moved):
                    full[i] = m
                return self._impl(*full, *tans, n_res=n_res, **params)

            parts.append(jax.jvp(of_res, [res[i] for i in moving],
                                 [tangents[i] for i in moving])[1])
        if not parts:
            return out, [ad.Zero(ad.get_aval(o).to_tangent_aval()) for o in out]
        return out, [sum(ts) for ts in zip(*parts)]


# --------------------------------------------------------------------------- #
# Recording hook (for `fdl.check.model`'s bisection): consulted at trace time only
# --------------------------------------------------------------------------- #

Recorder = Callable[["Primitive", tuple, Callable[[tuple], Any]], Any]
"""`recorder(p, args, run) -> y`: sees each primitive call `p(*args)` (bound
arguments, defaults applied) and returns its output, normally `run(args)`."""

_RECORDER: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "fdl_recorder", default=None)
_LAYER_PATH: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "fdl_layer_path", default=())


@contextlib.contextmanager
def recording(recorder: Recorder | None) -> Iterator[None]:
    """Route every primitive call traced inside through `recorder` (`None`: stop).

    A check's tool: `fdl.check.model` taps each call's inputs and output to find the
    first primitive whose hand-written rule disagrees with autodiff. Calls are seen
    when traced, so under `jit` the recorder runs once per compilation.
    """
    token = _RECORDER.set(recorder)
    try:
        yield
    finally:
        _RECORDER.reset(token)


@contextlib.contextmanager
def layer_scope(parent: str, child: str) -> Iterator[None]:
    """Name the layer being applied: combinators wrap each child's `apply` in it.

    The path (`layer_path()`) is the outermost combinator's name, then each child's
    key (`("serial", "dense_2")`). Kept only while a recorder is on; otherwise this
    does nothing.
    """
    if _RECORDER.get() is None:
        yield
        return
    token = _LAYER_PATH.set((_LAYER_PATH.get() or (parent,)) + (child,))
    try:
        yield
    finally:
        _LAYER_PATH.reset(token)


def layer_path() -> tuple[str, ...]:
    """The names of the layers being applied, outermost first (see `layer_scope`)."""
    return _LAYER_PATH.get()


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
    tangent: Callable | None = None,
    switches: Callable | None = None,
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
      tangent: `tangent(*static, residuals, tangents) -> dy`, the hand-written
        forward-mode rule: `tangents` holds one tangent per non-static argument
        (`None` for an integer argument, zeros where JAX has none) and `dy` has the
        structure of `y`. It must be linear in the tangents (JAX transposes it to
        run `backward` in reverse mode). Without it the primitive has reverse mode
        only (`jax.custom_vjp`).
      switches: for a non-smooth primitive, `switches(*args) -> pytree of bool/int
        arrays` (static arguments included, as for `forward`): discrete quantities
        that change value exactly where the derivative jumps (ReLU: `x > 0`;
        max-pool: the argmax of each window). `fdl.check` evaluates them at its
        finite-difference stencil points and refuses a step that changes any.

    Returns:
      A `Primitive`, called like `forward`.
    """
    name = name or forward.__name__
    if save is not None and fwd is not None:
        raise ValueError(
            f"primitive {name!r}: pass save or fwd, not both (fwd returns the residuals itself)")
    p = Primitive(
        forward, backward, save=save, fwd=fwd, static=static, validate=validate, name=name,
        examples=examples, tangent=tangent, switches=switches,
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
