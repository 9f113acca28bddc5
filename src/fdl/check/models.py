"""`model`: a whole model's gradient with the hand-written rules against pure
autodiff and finite differences, and (on failure) the first primitive that diverges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from fdl.check import bisect, fd
from fdl.check.arguments import compiled, leaves_of, name_of
from fdl.check.bisect import ModelReport
from fdl.check.report import AUTODIFF
from fdl.check.rows import (NOTHING, ad_floor, ad_rows, fd_rows, no_rule, ordered, title,
                            with_magnitude)
from fdl.modes import gradient_mode

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
    of_leaves = lambda vals: loss_fn(leaves.rebuild(vals)[0], *batch)  # noqa: E731
    with gradient_mode("autodiff"):
        seen = fd.probe(of_leaves, leaves.values)
    if not hasattr(seen.out, "shape") or seen.out.shape != ():
        raise ValueError(
            f"check.model: loss_fn must return a scalar, got {getattr(seen.out, 'shape', seen.out)}"
        )
    nothing = NOTHING if no_rule(of_leaves, [leaves.values], seen) else ""
    plan = fd.plan(leaves.values, 0, directions, key, finite_differences, gradient=True,
                   switches=seen.switches > 0)
    grad_fn = jax.grad(of_leaves)

    def program(vals, fd_inputs):
        with gradient_mode("autodiff"):
            reference = grad_fn(vals)
            evaluated = fd.evaluate(lambda v: with_magnitude(of_leaves(v)), vals, plan,
                                    fd_inputs, gradients=reference)
            magnitude = with_magnitude(of_leaves(vals))[1]
        if not jit:
            return reference, evaluated, magnitude, None
        with gradient_mode("manual"):
            return reference, evaluated, magnitude, grad_fn(vals)

    reference, evaluated, magnitude, manual = compiled(program)(leaves.values, plan.inputs())
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
