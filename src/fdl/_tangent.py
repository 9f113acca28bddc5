"""Tangent rules as JAX primitives: how a hand-written tangent rule runs in both modes.

A `Primitive` with a tangent rule is a `jax.custom_jvp` whose tangent is a JAX
primitive of its own (`fdl_<name>_tangent`, a `TangentPrimitive`), linear in the
tangents: its implementation is the hand-written tangent rule and its *transpose* is
the hand-written backward. So `jax.jvp`, `jax.jacfwd` and `jax.linearize` run the
tangent rule, and `jax.grad`, `jax.vjp` and `jax.jacrev` — which JAX derives by
linearising and transposing — run the backward, compiled to the same program as a
`custom_vjp` would give. Under `vmap` the rule (and through the transpose, the
backward) is mapped with `jax.vmap`. Second order composes: `jax.hessian` and
`fdl.hvp` (forward over reverse) differentiate the hand-written backward, `jacfwd` of
`jacfwd` the tangent rule.

JAX tells a rule which tangents are symbolic zeros (arguments not differentiated);
the rule receives real zeros for them and `is_zero` says which they are, so it may
skip the products they would enter. The set is context-local (a `ContextVar`), so
rules traced at the same time in several threads each see their own.

Internal to `fdl.primitive`; rule authors use `fdl.primitive.is_zero`.
"""

from __future__ import annotations

import collections
import contextvars
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["TangentPrimitive", "custom_jvp", "is_zero"]

_KNOWN_ZEROS: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "fdl_known_zero_tangents", default=frozenset())
"""The ids of the zero tangents of the rule being traced in this context."""


def is_zero(tangent: Any) -> bool:
    """Whether `tangent`, given to a tangent rule, is a zero JAX knows of (the argument
    is not being differentiated, e.g. the data `X` of `dY = dX W + X dW`). A rule may
    skip the terms it multiplies: the result is the same, and XLA does not always
    remove a product with zeros."""
    return id(tangent) in _KNOWN_ZEROS.get()


def custom_jvp(owner: Any) -> Callable:
    """`owner` (a `Primitive` with a tangent rule) as a `jax.custom_jvp` whose tangent
    is the hand-written rule (a `TangentPrimitive`): forward mode runs the tangent
    rule and reverse mode, by transposition, the hand-written backward."""
    static_argnums = owner.static_argnums
    n = len(owner.signature.parameters)
    float0 = jax.dtypes.float0
    tangent_p = TangentPrimitive(owner)

    def jvp(*args):
        *static, primals, tangents = args
        it_p, it_s = iter(primals), iter(static)
        full = tuple(next(it_s) if i in static_argnums else next(it_p) for i in range(n))
        y, residuals = owner.forward_with_residuals(*full)
        leaves, res_tree = jax.tree.flatten(residuals)
        leaves = [jnp.asarray(r) for r in leaves]
        tan_leaves, tan_tree = jax.tree.flatten(tuple(tangents))
        # per tangent leaf: True (an operand), None (an integer argument: no tangent)
        # or (shape, dtype) (a zero JAX knows of: the rule's own zeros, which XLA folds
        # away, e.g. `dX W` for data `X` — an operand would cost a product)
        has = tuple(tangent_kind(t, float0) for t in tan_leaves)
        dy = tangent_p.p.bind(
            *leaves, *(t for t, h in zip(tan_leaves, has) if h is True), levels=(),
            static=tuple(static), res_tree=res_tree, n_res=len(leaves), has_tangent=has,
            tan_tree=tan_tree, out_tree=jax.tree.structure(y))
        return y, jax.tree.unflatten(jax.tree.structure(y), dy)

    f = jax.custom_jvp(owner.forward, nondiff_argnums=static_argnums)
    f.defjvp(jvp, symbolic_zeros=True)
    return f


def tangent_kind(t: Any, float0: Any) -> Any:
    """True for a tangent operand, None for no tangent (an integer argument), and
    `(shape, dtype)` for a symbolic zero of a float argument."""
    from jax.custom_derivatives import SymbolicZero

    if isinstance(t, SymbolicZero):
        aval = t.aval
        if aval.dtype == float0 or not jnp.issubdtype(aval.dtype, jnp.inexact):
            return None
        return (tuple(aval.shape), jnp.dtype(aval.dtype))
    return True if jnp.result_type(t) != float0 else None


_KEEP_AVALS = 256  # output avals kept per tangent primitive (a few per call site)
_SETTINGS = ("jax_enable_x64", "jax_numpy_dtype_promotion", "jax_numpy_rank_promotion",
             "jax_default_dtype_bits")


def _tracing_configuration() -> tuple:
    """The JAX settings a rule's output shapes and dtypes may depend on (x64:
    `jnp.zeros(n)`'s dtype; promotion rules: a result's dtype, or an error)."""
    return tuple(getattr(jax.config, name, None) for name in _SETTINGS)


def _avals_key(avals: Sequence[Any], params: dict) -> tuple | None:
    """A hashable key for `TangentPrimitive._abstract`, or `None` where a parameter
    (a static argument) cannot be hashed. Static arguments are keyed with their
    types (`1` and `1.0`, or `True` and `1`, hash alike but may trace differently)."""
    typed = dict(params, static=tuple((type(a), a) for a in params["static"]))
    key = (tuple((tuple(a.shape), a.dtype) for a in avals),  # what the rule is traced on
           tuple(sorted(typed.items())), _tracing_configuration())
    try:
        hash(key)
    except TypeError:
        return None
    return key


def vmapped(fn: Callable, levels: tuple) -> Callable:
    """`fn(*operands) -> list` mapped over each recorded batch level, innermost first
    (each level's outputs carry its batch axis at 0)."""
    for axes in levels:
        fn = jax.vmap(fn, in_axes=list(axes), out_axes=0)
    return fn


class TangentPrimitive:
    """`dy = T(residuals)[dx₁, …, dx_k]` as a JAX primitive, for one fdl primitive.

    Operands: the residual leaves, then the tangent of each differentiable argument
    (zeros where JAX has none). The primitive is linear in the tangents, so JAX's
    reverse mode transposes it; its transpose is the fdl primitive's hand-written
    backward. Its implementation and lowering are the hand-written tangent rule;
    batching maps the rule (and, through the transpose, the backward) with `jax.vmap`
    and records the batch axes as a parameter, so `grad` of `vmap` still runs the
    hand-written backward.
    """

    def __init__(self, owner: Any) -> None:
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
        # output avals by (operand avals, parameters, JAX's tracing configuration): JAX
        # asks for them at every bind (jvp, linearize, transpose, each re-bind), and each
        # ask would otherwise trace the hand-written rule again
        self._avals: collections.OrderedDict[tuple, list] = collections.OrderedDict()

    # the hand-written rules on flat operands ------------------------------------
    def _rule(self, *operands: Any, static: tuple, res_tree: Any, n_res: int, has_tangent: tuple,
              tan_tree: Any, out_tree: Any) -> list:
        res = jax.tree.unflatten(res_tree, operands[:n_res])
        it = iter(operands[n_res:])
        zeros = [jnp.zeros(*t) for t in has_tangent if t is not None and t is not True]
        iz = iter(zeros)
        tangents = jax.tree.unflatten(tan_tree, [
            next(it) if t is True else None if t is None else next(iz) for t in has_tangent])
        token = _KNOWN_ZEROS.set(frozenset(id(z) for z in zeros))
        try:
            dy = self.owner.tangent(*static, res, tangents)
        finally:
            _KNOWN_ZEROS.reset(token)
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
        return vmapped(functools.partial(self._rule, **params), levels)(*operands)

    def _abstract(self, *avals: Any, **params: Any) -> list:
        """The output avals: the rule traced abstractly (`jax.eval_shape`), once per
        operand shapes and dtypes, parameters and tracing configuration (`_KEEP_AVALS`
        kept); shapes only, so what a rule computes is untouched by the cache."""
        from jax.core import ShapedArray

        key = _avals_key(avals, params)
        out = self._avals.get(key) if key is not None else None
        if out is None:
            traced = jax.eval_shape(functools.partial(self._impl, **params),
                                    *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
            out = [ShapedArray(o.shape, o.dtype) for o in traced]
            if key is not None:
                self._avals[key] = out
                while len(self._avals) > _KEEP_AVALS:
                    self._avals.popitem(last=False)
        return list(out)

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
