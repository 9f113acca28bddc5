"""`grad` and `jacobian`: your own derivation against JAX and finite differences.

`f` is any JAX function (built from fdl primitives or not; its primitives run in
autodiff mode for the reference); `my_grad` / `my_jacobian` is the derivation under
test. A derivation that is autodiff's own computation (`my_grad = jax.grad(f)` of a
function with no fdl primitive) compares nothing: its report says so and fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fdl.check import fd
from fdl.check.arguments import arg_names, in_mode, is_float, leaves_of, name_of
from fdl.check.report import Report
from fdl.check.rows import (NOTHING, Job, ad_floor, ad_rows, fd_rows, ordered, run,
                            same_computation, title, with_magnitude)

__all__ = ["grad", "jacobian"]


def _as_tuple(value: Any, n: int, what: str) -> tuple:
    if n == 1:
        return (value,)
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise TypeError(
            f"{what} must return a tuple with one entry per argument ({n}), got "
            f"{type(value).__name__}" + (f" of length {len(value)}"
                                         if isinstance(value, (tuple, list)) else "")
        )
    return tuple(value)


def _user_leaves(value: Any, args: tuple, names: list[str], what: str) -> list[Any]:
    """Leaves of a user's per-argument result, checked against the arguments' structure."""
    out = []
    for i, (v, a) in enumerate(zip(_as_tuple(value, len(args), what), args)):
        sa = jax.tree_util.tree_structure(a)
        sv = jax.tree_util.tree_structure(v)
        if sa != sv:
            raise TypeError(
                f"{what}: the result for argument {names[i]!r} has structure {sv}, but the "
                f"argument has structure {sa}"
            )
        out += [lv for la, lv in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(v))
                if is_float(la)]
    return out


def _maybe_jit(fn: Callable, use_jit: bool) -> Callable:
    return jax.jit(fn) if use_jit else fn


def _argnums(args: tuple) -> int | tuple[int, ...]:
    return 0 if len(args) == 1 else tuple(range(len(args)))


def _is_autodiff(mine: Callable, args: tuple, *autodiff: Callable) -> str:
    """`NOTHING` (with the reason) when the derivation under test traces to one of JAX's
    own (`jax.grad` of a function with no fdl primitive): the check would compare
    autodiff with itself; else `""`."""
    if any(same_computation(mine, reference, *args) for reference in autodiff):
        return f"{NOTHING} (the derivation under test is autodiff's own computation)"
    return ""


def grad(f: Callable, my_grad: Callable, *args: Any, rtol: float | None = None,
         fd_rtol: float | None = None, finite_differences: bool = True,
         max_fd_elements: int = 256, directions: int = 4, key: jax.Array | None = None,
         jit: bool = False) -> Report:
    """Check your hand-derived gradient of a scalar function against JAX.

    Args:
      f: scalar-valued function of `*args` (arrays or pytrees of arrays).
      my_grad: your gradient, `my_grad(*args)`: for one argument, a value with the
        argument's structure; for several, a tuple with one entry per argument.
      *args: the point at which to check.
      rtol, fd_rtol, finite_differences, max_fd_elements, directions, key:
        as in `vjp`.
      jit: call `my_grad` under `jax.jit` (the reference and the finite
        differences are always compiled).

    Returns:
      A `Report`: your gradient vs `jax.grad` (autodiff mode for fdl primitives)
      and vs finite differences, one row per float leaf.

    Example:

        f = lambda w: jnp.sum(jnp.tanh(x @ w))
        my_grad = lambda w: x.T @ (1 - jnp.tanh(x @ w) ** 2)
        fdl.check.grad(f, my_grad, w).raise_if_failed()
    """
    names = arg_names(f, len(args))
    leaves = leaves_of(tuple(args), names)
    heading = f"fdl.check.grad: {name_of(my_grad, 'my_grad')} vs autodiff of {name_of(f, 'f')}"
    if not leaves.values:
        return Report(heading + " — no differentiable float arguments", [])
    reference_fn = in_mode(f, "autodiff")
    out = jax.eval_shape(reference_fn, *args)
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(
            f"check.grad: f must return a scalar, got {getattr(out, 'shape', out)}; "
            "use check.jacobian or check.vjp for vector-valued functions"
        )
    mine = _user_leaves(_maybe_jit(my_grad, jit)(*args), args, names, "check.grad: my_grad")
    of_leaves = lambda vals: reference_fn(*leaves.rebuild(vals))  # noqa: E731
    nothing = _is_autodiff(my_grad, args, jax.grad(reference_fn, _argnums(args)))
    plan = fd.plan(leaves.values, max_fd_elements, directions, key, finite_differences,
                   gradient=True, switches=fd.probe(of_leaves, leaves.values).switches > 0)

    def program(vals, fd_inputs):
        reference = jax.grad(of_leaves)(vals)
        evaluated = fd.evaluate(lambda v: with_magnitude(of_leaves(v)), vals, plan, fd_inputs,
                                gradients=reference)
        return reference, evaluated, with_magnitude(of_leaves(vals))[1]

    def finish(outputs):
        reference, evaluated, magnitude = outputs
        scale = ad_floor(leaves, reference, magnitude)
        rows = ad_rows(leaves, mine, reference, scale, rtol=rtol)
        rows += fd_rows(leaves, plan, fd.derivatives(plan, evaluated), mine, scale,
                        rtol=fd_rtol, autodiff=rows)
        return Report(title(heading, leaves, plan), ordered(rows), nothing)

    return run(Job(program, (leaves.values, plan.inputs()), finish))


def jacobian(f: Callable, my_jacobian: Callable, *args: Any, rtol: float | None = None,
             fd_rtol: float | None = None, finite_differences: bool = True,
             max_fd_elements: int = 256, directions: int = 4, key: jax.Array | None = None,
             jit: bool = False) -> Report:
    """Check your hand-derived Jacobian against `jax.jacrev` and finite differences.

    Args:
      f: function of array arguments returning one array `y`.
      my_jacobian: `my_jacobian(*args)`; for each argument `x` an array of shape
        `y.shape + x.shape` (`J[i…, j…] = ∂y[i…]/∂x[j…]`); a tuple for several
        arguments (any entry, e.g. `None`, for an integer argument).
      *args: arrays at which to check.
      max_fd_elements, directions, key: arguments larger than `max_fd_elements`
        are checked with finite differences along `directions` random unit
        directions `v` (comparing `J v`) instead of element by element.
      jit: call `my_jacobian` under `jax.jit`.

    Returns:
      A `Report`; the worst index is into the Jacobian (output index first),
      or `(direction, output index…)` for a row checked along random directions.
    """
    names = arg_names(f, len(args))
    for name, a in zip(names, args):
        if not (hasattr(a, "shape") or isinstance(a, (int, float))):
            raise TypeError(
                f"check.jacobian: argument {name!r} must be an array, got "
                f"{type(a).__name__}; pass each array as its own argument (or use check.vjp "
                "for pytrees)"
            )
    leaves = leaves_of(tuple(args), names)
    heading = (f"fdl.check.jacobian: {name_of(my_jacobian, 'my_jacobian')} vs autodiff of "
             f"{name_of(f, 'f')}")
    if not leaves.values:
        return Report(heading + " — no differentiable float arguments", [])
    reference_fn = in_mode(f, "autodiff")
    out = jax.eval_shape(reference_fn, *args)
    if not hasattr(out, "shape"):
        raise TypeError(
            f"check.jacobian: f must return one array, got {jax.tree_util.tree_structure(out)}"
        )
    given = _as_tuple(_maybe_jit(my_jacobian, jit)(*args), len(args),
                      "check.jacobian: my_jacobian")
    mine = [jnp.asarray(j) for j, a in zip(given, args) if is_float(a)]
    of_leaves = lambda vals: reference_fn(*leaves.rebuild(vals))  # noqa: E731
    nothing = _is_autodiff(my_jacobian, args, jax.jacrev(reference_fn, _argnums(args)),
                           jax.jacfwd(reference_fn, _argnums(args)))
    plan = fd.plan(leaves.values, max_fd_elements, directions, key, finite_differences,
                   gradient=False, switches=fd.probe(of_leaves, leaves.values).switches > 0)
    argnums = tuple(range(len(leaves.values)))

    def program(vals, fd_inputs):
        return (jax.jacrev(lambda *v: of_leaves(v), argnums=argnums)(*vals),
                fd.evaluate(lambda v: with_magnitude(of_leaves(v)), vals, plan, fd_inputs),
                with_magnitude(of_leaves(vals))[1])

    def finish(outputs):
        reference, evaluated, magnitude = outputs
        scale = ad_floor(leaves, reference, magnitude)
        rows = ad_rows(leaves, mine, reference, scale, rtol=rtol, check_dtype=False)
        rows += fd_rows(leaves, plan, fd.derivatives(plan, evaluated), mine, scale,
                        rtol=fd_rtol, jacobian_of=tuple(out.shape), autodiff=rows)
        return Report(title(heading, leaves, plan), ordered(rows), nothing)

    return run(Job(program, (leaves.values, plan.inputs()), finish))
