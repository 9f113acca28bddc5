"""The registry runner: every registered example of a primitive, checked in one program.

`examples(p)` draws each registered example of `p` and checks its backward (`vjp`),
its tangent rule (`jvp`) and the adjointness of the two (`adjoint`), all examples and
all three checks in one compiled program: what `fdl check` runs for each primitive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

from fdl.check.arguments import _FAST_COMPILE, compiled
from fdl.check.forward import adjoint, forward_job, jvp
from fdl.check.report import Report
from fdl.check.reverse import vjp, vjp_job
from fdl.primitive import Primitive

__all__ = ["CHECKS", "Checked", "draw", "examples"]

CHECKS = ("vjp", "jvp", "adjoint")

# On top of `compiled`'s fast options: LLVM code generation of a program in one piece.
# XLA's CPU backend splits it for parallel code generation by default; for programs
# this small the split costs more than it saves (~15% of `fdl check`'s CPU time),
# and `fdl check` already compiles two primitives at a time. Numerics are unaffected.
_ONE_PIECE = {**_FAST_COMPILE, "xla_cpu_parallel_codegen_split_count": 1}


class Checked(NamedTuple):
    """The reports of one example: its backward, its tangent rule and their
    adjointness; `None` for a check not asked for, and for the last two of a primitive
    without a tangent rule."""

    vjp: Report | None
    jvp: Report | None
    adjoint: Report | None


def draw(p: Primitive, dtype: Any = jnp.float64, seed: int = 0) -> list[tuple[tuple, dict]]:
    """The arguments of every registered example of `p`, example `i` drawn with seed
    `seed + i` in `dtype` (`Example.sample`: on the host, nothing compiled)."""
    return [example.sample(seed + i, dtype) for i, example in enumerate(p.examples)]


def examples(p: Primitive, *, dtype: Any = jnp.float64, seed: int = 0,
             finite_differences: bool = True,
             checks: Sequence[str] = CHECKS) -> list[Checked]:
    """Check every registered example of the primitive `p`, in one compiled program.

    `vjp`: the backward, under `jit`, vs autodiff and finite differences (as
    `fdl.check.vjp`); `jvp`: the tangent rule vs autodiff (`fdl.check.jvp`; its finite
    differences only when `vjp` is not asked for: with it, the backward's finite
    differences confirm autodiff and `adjoint` ties the tangent rule to the backward,
    so a second batched forward in the program would add nothing); `adjoint`:
    `⟨u, J v⟩ = ⟨Jᵀu, v⟩` between the two hand rules (`fdl.check.adjoint`), with the
    vjp check's cotangent `u` and its `Jᵀu` when both are asked for.

    Args:
      p: a registered primitive (its `examples` give the arguments).
      dtype: the float dtype the examples are drawn in.
      seed: example `i` is drawn with seed `seed + i`.
      finite_differences: also compare with finite differences.
      checks: which of `"vjp"`, `"jvp"`, `"adjoint"` to run (default all three).

    Returns:
      One `Checked(vjp, jvp, adjoint)` per example, in order.
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown or not checks:
        raise ValueError(f"check.examples: checks must be a non-empty selection of {CHECKS}, "
                         f"got {tuple(checks)!r}")
    want = {c: c in checks for c in CHECKS}
    drawn = draw(p, dtype, seed)
    jobs: list[Any] = [vjp_job(p, a, k, key=None, rtol=None, fd_rtol=None,
                               finite_differences=finite_differences, max_fd_elements=256,
                               directions=4, with_manual=True) if want["vjp"] else None
                       for a, k in drawn]
    forward_on = (want["jvp"] or want["adjoint"]) and p.tangent is not None
    # The tangent rule is compared with autodiff, and with the backward (adjointness)
    # whose finite-difference check confirms autodiff: its own finite differences would
    # add a second batched forward to the program and nothing to the verdict.
    tangent_fd = finite_differences and not want["vjp"]
    forward: list[Any] = [
        forward_job(p, a, k, None, tangent_fd,
                    u=j.inputs[1] if j is not None and not isinstance(j, Report) else None)
        if forward_on else None for (a, k), j in zip(drawn, jobs)]
    live = lambda j: j is not None and not isinstance(j, Report)  # noqa: E731

    def program(inputs: list) -> list:
        out = []
        for i, (vi, fi) in enumerate(inputs):
            tangents = None
            if vi is not None and fi is not None and not tangent_fd:
                # one linearisation each of the rule and of the reference gives both
                # the vjp check's Jᵀu and the jvp check's J v
                backward, tangents = jobs[i].program(*vi, v=fi[1])
            else:
                backward = jobs[i].program(*vi) if vi is not None else None
            ju = backward[-1] if backward is not None else None  # the rule's Jᵀu
            out.append((backward, forward[i][0](*fi, ju, tangents) if fi is not None
                        else None))
        return out

    inputs = [(jobs[i].inputs if live(jobs[i]) else None,
               forward[i][1] if live(forward[i]) else None) for i in range(len(drawn))]
    try:
        outputs = compiled(program, _ONE_PIECE)(inputs)
    except Exception:  # one example's rule fails to trace: check each on its own
        return [_one_by_one(p, a, k, want, finite_differences) for a, k in drawn]
    result = []
    for i, (backward, fw) in enumerate(outputs):
        j, f = jobs[i], forward[i]
        v = j.finish(backward) if live(j) else j
        t = a = None
        if live(f):
            t, a = f[2](fw, ju=backward[-1] if live(j) else None)
        elif isinstance(f, Report):  # nothing differentiable
            t, a = f, Report(f.title.replace("fdl.check.jvp", "fdl.check.adjoint"), [])
        result.append(Checked(v, t if want["jvp"] else None, a if want["adjoint"] else None))
    return result


def _one_by_one(p: Primitive, args: tuple, kwargs: dict, want: dict,
                finite_differences: bool) -> Checked:
    """The checks of one example as separate programs (when the fused one fails to
    trace, so that the report shows which rule fails)."""
    v = vjp(p, *args, jit=True, finite_differences=finite_differences, **kwargs) \
        if want["vjp"] else None
    tangent = p.tangent is not None
    t = jvp(p, *args, finite_differences=finite_differences, **kwargs) \
        if want["jvp"] and tangent else None
    a = adjoint(p, *args, **kwargs) if want["adjoint"] and tangent else None
    return Checked(v, t, a)
