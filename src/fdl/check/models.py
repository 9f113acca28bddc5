"""`model`: a whole model's gradient with the hand-written rules against pure
autodiff and finite differences, and (on failure) the first primitive that diverges.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from fdl.check import bisect, fd
from fdl.check.arguments import Leaves, as_array, compile_program, leaves_of, name_of
from fdl.check.bisect import ModelReport
from fdl.check.report import AUTODIFF
from fdl.check.rows import (NOTHING, ad_floor, ad_rows, fd_rows, no_rule, ordered, title,
                            with_magnitude)
from fdl.modes import gradient_mode
from fdl.recording import active_recorder

__all__ = ["model"]


def model(loss_fn: Callable, params: Any, *batch: Any, rtol: float | None = None,
          fd_rtol: float | None = None, finite_differences: bool = True,
          directions: int = 2, key: jax.Array | None = None, jit: bool = True,
          locate: bool = True) -> ModelReport:
    """Check a whole model: gradient with manual rules vs pure autodiff.

    Args:
      loss_fn: `loss_fn(params, *batch) -> scalar` built from fdl primitives. One that
        calls none has no hand-written rule to check: its report says "compared
        nothing" and does not pass.
      params: pytree of parameters (the gradient is taken w.r.t. it).
      *batch: the rest of the arguments (inputs, labels), held fixed.
      finite_differences: also compare directional derivatives along
        `directions` unit directions per leaf (the autodiff gradient's own and
        random ones) with finite differences, with steps that cross no switching
        point of a non-smooth primitive (ReLU, max-pool; see `fdl.check.fd`).
      jit: compute the manual-mode gradient under `jax.jit`, in the same compiled
        program as the autodiff reference and the finite differences (default; the
        gradient mode is read when each part is traced); `False` runs it op by op.
      locate: on a failing check, find the first primitive whose rule diverges
        (`divergence`); `False` skips that search.

    Returns:
      A `ModelReport` (a `Report`) with one row per parameter leaf. When the
      manual gradient differs from autodiff, its `divergence` names the first
      primitive call on the model's path, walking back from the loss, whose
      hand-written rule sends a cotangent that differs from autodiff's while the
      cotangent it receives agrees: the primitive, its layer path
      (`serial/dense_2 → linear`), the argument, the worst element and both values
      (`fdl.check.bisect`; run only for a failing check).
    """
    leaves = leaves_of((params,), ["params"])
    heading = f"fdl.check.model: {name_of(loss_fn, 'loss_fn')}, manual rules vs autodiff"
    if not leaves.values:
        return ModelReport(heading + " — no float parameters", [])
    arrays, rebuild_batch, fixed = _split(batch)

    def of_leaves(vals, arrays=arrays):
        return loss_fn(leaves.rebuild(vals)[0], *rebuild_batch(arrays))

    cache_key = _cache_key(loss_fn, leaves, arrays, fixed, (directions, finite_differences, jit))
    entry = _MODELS.get(cache_key) if cache_key is not None else None
    if entry is None:
        with gradient_mode("autodiff"):
            seen = fd.probe(of_leaves, leaves.values, arrays)
        if not hasattr(seen.out, "shape") or seen.out.shape != ():
            raise ValueError(
                f"check.model: loss_fn must return a scalar, got "
                f"{getattr(seen.out, 'shape', seen.out)}")
        entry = [seen, NOTHING if no_rule(of_leaves, [leaves.values], seen) else "", None]
    seen, nothing, program = entry
    plan = fd.plan(leaves.values, 0, directions, key, finite_differences, gradient=True,
                   switches=seen.switches > 0)
    grad_fn = jax.grad(of_leaves)
    inputs = (leaves.values, arrays, plan.inputs())
    if program is None:
        def traced(vals, arrays, fd_inputs):
            with gradient_mode("autodiff"):
                reference = grad_fn(vals, arrays)
                evaluated = fd.evaluate(lambda v: with_magnitude(of_leaves(v, arrays)), vals,
                                        plan, fd_inputs, gradients=reference)
                magnitude = with_magnitude(of_leaves(vals, arrays))[1]
            if not jit:
                return reference, evaluated, magnitude, None
            with gradient_mode("manual"):
                return reference, evaluated, magnitude, grad_fn(vals, arrays)

        program = entry[2] = compile_program(traced, *inputs)
        if cache_key is not None:
            _MODELS[cache_key] = entry
            while len(_MODELS) > _KEEP:
                _MODELS.popitem(last=False)
    reference, evaluated, magnitude, manual = program(*inputs)
    if not jit:
        with gradient_mode("manual"):
            manual = grad_fn(leaves.values)
    scale = ad_floor(leaves, reference, magnitude)
    rows = ad_rows(leaves, manual, reference, scale, rtol=rtol)
    rows += fd_rows(leaves, plan, fd.derivatives(plan, evaluated), manual, scale, rtol=fd_rtol,
                    autodiff=rows)
    report = ModelReport(title(heading, leaves, plan), ordered(rows), nothing)
    if locate and any(r.against == AUTODIFF and not r.passed for r in rows):
        report.divergence, report.note = bisect.locate(of_leaves, leaves.values, rtol=rtol,
                                                       jit=jit)
    return report


# --------------------------------------------------------------------------- #
# Reusing a model's program
# --------------------------------------------------------------------------- #

# (loss_fn, shapes, …) -> [probe, nothing, executable]: the same `loss_fn` checked again
# on arguments of the same shapes (another initialisation) traces and compiles nothing,
# as `jax.jit` reuses a function's program.
_MODELS: collections.OrderedDict[tuple, list] = collections.OrderedDict()
_KEEP = 16


def _split(batch: tuple) -> tuple[list, Callable, tuple]:
    """The batch's arrays (inputs of the program), how to put the batch back together,
    and its other leaves (Python values, fixed in the program)."""
    flat, tree = jax.tree_util.tree_flatten(batch)
    where = [isinstance(x, (jax.Array, np.ndarray)) for x in flat]
    arrays = [as_array(x) for x, a in zip(flat, where) if a]
    fixed = tuple(x for x, a in zip(flat, where) if not a)

    def rebuild(arrays: list) -> tuple:
        it, others = iter(arrays), iter(fixed)
        return jax.tree_util.tree_unflatten(tree, [next(it) if a else next(others)
                                                   for a in where])

    return arrays, rebuild, (tree, tuple(where), fixed)


def _cache_key(loss_fn: Callable, leaves: Leaves, arrays: list, fixed: tuple,
               options: tuple) -> tuple | None:
    """What the program depends on besides the values of the parameters and the batch
    arrays; `None` (no reuse) where a part cannot be a key (an unhashable Python value,
    a non-float parameter, which the program holds as a constant)."""
    if len(leaves.values) != len(leaves.all_leaves):
        return None
    avals = tuple((tuple(x.shape), str(x.dtype)) for x in (*leaves.values, *arrays))
    key = (loss_fn, leaves.treedef, avals, fixed, options, jax.config.jax_enable_x64,
           jax.default_backend(), active_recorder())
    try:
        hash(key)
    except TypeError:
        return None
    return key
