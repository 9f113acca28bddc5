"""`vjp`: a VJP rule against `jax.vjp` of its reference and finite differences.

For a `Primitive`, its hand-written backward against autodiff of its plain forward;
for any function built from fdl primitives, the function in manual mode (every
primitive's rule) against autodiff mode. The finite differences see the switching
points of the non-smooth primitives called (`fdl.check.fd`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from fdl.check import fd
from fdl.check.arguments import (Leaves, arg_names, as_array, compiled, in_mode, leaves_of,
                                 name_of)
from fdl.check.report import Report
from fdl.check.rows import (NOTHING, Job, ad_floor, ad_rows, dot_and_magnitude, fd_rows, no_rule,
                            ordered, run, title)
from fdl.primitive import Primitive

__all__ = ["vjp"]


def vjp_job(f: Primitive | Callable, args: tuple, kwargs: dict, *, key: jax.Array | None,
            rtol: float | None, fd_rtol: float | None, finite_differences: bool,
            max_fd_elements: int, directions: int, with_manual: bool) -> Job | Report:
    """The job of `vjp`; `with_manual` puts the rule under test into the program."""
    if isinstance(f, Primitive):
        full = f.bind(*args, **kwargs)
        names = list(f.signature.parameters)
        skip = f.static_argnums
        manual_fn, reference_fn = f.manual, f.forward
        # the same forward, called through the primitive so the recorder sees its switches
        differenced = in_mode(f, "autodiff") if f.switches is not None else f.forward
        heading = f"fdl.check.vjp: {f.name}"
    else:
        full, names, skip = args, arg_names(f, len(args)), ()
        manual_fn = in_mode(lambda *a: f(*a, **kwargs), "manual")
        reference_fn = differenced = in_mode(lambda *a: f(*a, **kwargs), "autodiff")
        heading = f"fdl.check.vjp: {name_of(f, 'f')} (manual vs autodiff mode)"
    leaves = leaves_of(tuple(full), names, skip)
    if not leaves.values:
        return Report(heading + " — no differentiable float arguments", [])
    of_leaves = lambda fn: (lambda *vals: fn(*leaves.rebuild(vals)))  # noqa: E731
    if isinstance(f, Primitive):
        seen = fd.Probe(1, int(f.switches is not None), 0, (f.name,))
        nothing = False
    else:
        seen = fd.probe(of_leaves(differenced), *leaves.values)
        nothing = no_rule(lambda *v: f(*leaves.rebuild(v), **kwargs), leaves.values, seen)
    plan = fd.plan(leaves.values, max_fd_elements, directions, key, finite_differences,
                   gradient=True, switches=seen.switches > 0)
    # The cotangent comes from its own stream (salt 1), so data drawn from the same key
    # never doubles as it (u = x makes Xᵀu symmetric and hides a transposed ∂L/∂W).
    generator = fd.rng(key, 1)
    u = jax.tree_util.tree_map(
        lambda o: as_array(generator.standard_normal(o.shape).astype(o.dtype)),
        jax.eval_shape(of_leaves(reference_fn), *leaves.values))

    def pullback(fn, vals, u):
        return jax.vjp(of_leaves(fn), *vals)[1](u)

    def both(fn, vals, u, v):
        """`(y, Jᵀu, J v)` from one linearisation of `fn` (its transpose is the pullback
        `jax.vjp` would build from the same linear function)."""
        y, lin = jax.linearize(of_leaves(fn), *vals)
        return y, list(jax.linear_transpose(lin, *vals)(u)), lin(*v)

    def reference_part(vals, u, fd_inputs, v=None):
        if v is None:
            y, pull = jax.vjp(of_leaves(reference_fn), *vals)
            reference, dy = pull(u), None
        else:
            y, reference, dy = both(reference_fn, vals, u, v)
        evaluated = fd.evaluate(lambda v: dot_and_magnitude(u, of_leaves(differenced)(*v)),
                                vals, plan, fd_inputs, gradients=reference)
        out = reference, evaluated, dot_and_magnitude(u, y)[1]
        return out if v is None else (out, dy)

    def program(vals, u, fd_inputs, v=None):
        """The check's outputs; with a tangent `v` (a rule with a tangent rule, both
        asked for) also `(y, J v by the rule, J v by autodiff)` from the same two
        linearisations, for `forward_job`'s program."""
        if v is None:
            out = reference_part(vals, u, fd_inputs)
            return (*out, pullback(manual_fn, vals, u) if with_manual else None)
        out, dy_reference = reference_part(vals, u, fd_inputs, v)
        y, manual, dy_manual = both(manual_fn, vals, u, v)
        return (*out, manual), (y, dy_manual, dy_reference)

    def finish(outputs, manual=None):
        reference, evaluated, magnitude, in_program = outputs
        manual = in_program if manual is None else manual
        scale = ad_floor(leaves, reference, magnitude)
        rows = ad_rows(leaves, manual, reference, scale, rtol=rtol)
        rows += fd_rows(leaves, plan, fd.derivatives(plan, evaluated), manual, scale,
                        rtol=fd_rtol, autodiff=rows)
        return Report(title(heading, leaves, plan), ordered(rows), NOTHING if nothing else "")

    return Job(program, (leaves.values, u, plan.inputs()), finish, reference_part,
               lambda: pullback(manual_fn, leaves.values, u),
               lambda error: _diagnose_rule(f, full, leaves, u, error))


def vjp(f: Primitive | Callable, *args: Any, key: jax.Array | None = None,
        rtol: float | None = None, fd_rtol: float | None = None,
        finite_differences: bool = True, max_fd_elements: int = 256, directions: int = 4,
        jit: bool = False, **kwargs: Any) -> Report:
    """Check a VJP rule: manual vs `jax.vjp` of the reference vs finite differences.

    Args:
      f: a `Primitive` (its rule vs its plain forward), or any function built from
        fdl primitives (manual mode vs autodiff mode). A function that calls no fdl
        primitive has no hand-written rule to check: its report says "compared
        nothing" and does not pass.
      *args, **kwargs: the arguments; static arguments of a primitive are held
        fixed, integer arguments are not differentiated, pytrees are allowed.
      key: PRNG key for the random cotangent and directions (default: a fixed seed).
      rtol: tolerance vs autodiff (default from the dtype, see `fdl.check`).
      fd_rtol: relative part of the tolerance vs finite differences (default from
        the dtype); each element's estimated finite-difference error is added.
      finite_differences: also compare with finite differences (steps that cross
        no switching point of a non-smooth primitive, see `fdl.check.fd`).
      max_fd_elements: leaves larger than this are checked along `directions`
        unit directions (the reference's own and random ones) instead of element
        by element.
      jit: run the manual rule under `jax.jit` too (the reference and the finite
        differences always are); `False` runs it op by op.

    Returns:
      A `Report` with one row per float leaf and reference. A primitive's
      backward returning a cotangent of the wrong shape (`∂L/∂W` transposed) is
      reported as a failing row, not raised.
    """
    job = vjp_job(f, args, kwargs, key=key, rtol=rtol, fd_rtol=fd_rtol,
                  finite_differences=finite_differences, max_fd_elements=max_fd_elements,
                  directions=directions, with_manual=jit)
    if isinstance(job, Report):
        return job
    try:
        if jit:
            return run(job)
        reference = compiled(job.reference_part)(*job.inputs)
        return job.finish((*reference, None), manual=job.manual())
    except Exception as error:  # a backward of the wrong shape: report it, don't crash
        if not isinstance(f, Primitive):
            raise
        reference = compiled(job.reference_part)(*job.inputs)
        return job.finish((*reference, None), manual=job.diagnose(error))


def _diagnose_rule(p: Primitive | Callable, full: tuple, leaves: Leaves, u: Any,
                   error: Exception) -> list[Any]:
    """Call a primitive's backward directly, as `jax.custom_vjp` would, to find the
    cotangent of the wrong shape that JAX refused; re-raise `error` otherwise."""
    if not isinstance(p, Primitive):
        raise error
    try:
        _, residuals = p.forward_with_residuals(*full)
        cotangents = p.backward(*(full[i] for i in p.static_argnums), residuals, u)
        dynamic = [i for i in range(len(full)) if i not in p.static_argnums]
        by_arg = dict(zip(dynamic, cotangents))
        values = []
        for argnum, within, x in zip(leaves.argnums, leaves.within, leaves.values):
            ct = jax.tree_util.tree_leaves(by_arg.get(argnum))
            values.append(np.asarray(ct[within]) if within < len(ct) else np.zeros(x.shape))
    except Exception:
        raise error from None
    if all(m.shape == x.shape for m, x in zip(values, leaves.values)):
        raise error
    return values
