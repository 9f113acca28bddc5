"""What the checks share: the rows of a report (autodiff and finite differences), a
check's compiled job, and the test for a check that would compare nothing.

Each check has a traceable part (the reference, the finite differences and, under
`jit`, the rule under test: one XLA program) and a host part that turns the
program's outputs into a `Report`: a `Job` holds both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fdl.check import fd
from fdl.check.arguments import Leaves, compiled, in_mode
from fdl.check.report import AUTODIFF, FINITE_DIFFERENCES, Comparison, Report, compare, tolerance

AD_FLOOR = 100.0  # × ε × S (see the package docstring): roundoff of autodiff
NOTHING = "compared nothing: no hand-written rule ran"


def title(text: str, leaves: Leaves, plan: fd.Plan) -> str:
    dtypes = sorted({str(v.dtype) for v in leaves.values})
    fd_dtypes = sorted({dt.name for dt, k in zip(plan.dtypes, plan.kinds) if k is not None})
    where = f"; finite differences in {', '.join(fd_dtypes)}" if fd_dtypes else ""
    return f"{text}  [{', '.join(dtypes)}{where}]"


def ordered(rows: list[Comparison]) -> list[Comparison]:
    """Group rows by argument, autodiff before finite differences."""
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(r.name.split(" (")[0], len(order))
    return sorted(rows, key=lambda r: (order[r.name.split(" (")[0]], r.against != AUTODIFF))


def max_abs(a: Any) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64)), initial=0.0))


def ad_floor(leaves: Leaves, references: Sequence[Any], magnitude: Any) -> float:
    """`S` of the roundoff floor `100·ε·S`: the larger of the largest reference value
    over all leaves and the function's magnitude per unit of input, `F / max(1, max|x|)`."""
    scale = max((max_abs(r) for r in references), default=0.0)
    size = max((max_abs(x) for x in leaves.values), default=0.0)
    return max(scale, float(magnitude) / max(1.0, size))


def ad_rows(leaves: Leaves, values: Sequence[Any], references: Sequence[Any], scale: float,
            *, rtol: float | None, check_dtype: bool = True) -> list[Comparison]:
    """Rows of values under test vs autodiff, with the roundoff floor `100·ε·scale`."""
    rows = []
    for name, x, m, r in zip(leaves.names, leaves.values, values, references):
        eps = float(jnp.finfo(x.dtype).eps)
        rows.append(compare(name, AUTODIFF, m, r, rtol=rtol, floor=AD_FLOOR * eps * scale,
                            dtype=x.dtype if check_dtype else None))
    return rows


def _directions(k: int, gradient: bool) -> str:
    """`"gradient and 2 random directions"`, `"3 random directions"`, …"""
    plural = lambda n: f"{n} random direction" + ("s" if n != 1 else "")  # noqa: E731
    if not gradient:
        return plural(k)
    return "gradient direction" if k == 1 else f"gradient and {plural(k - 1)}"


def _rtol(dtype: Any) -> float:
    """The default relative tolerance for an argument of `dtype` (float64's if it
    has none, e.g. a Python float)."""
    try:
        return tolerance(dtype, FINITE_DIFFERENCES)
    except ValueError:
        return tolerance(jnp.float64, FINITE_DIFFERENCES)


def _points(n: int) -> str:
    return f"{n} switching point" + ("s" if n != 1 else "")


def _switch_note(d: fd.Derivatives) -> str:
    """What the steps avoided (per direction), which directions no step could take
    without crossing a switching point, and along which every step left the domain."""
    parts = []
    if d.outside is not None:
        out = np.flatnonzero(d.outside)
        parts.append(f"the steps leave the function's domain (a non-finite value) along "
                     f"{out.size} of {d.outside.size} "
                     + ("directions" if d.directions is not None else "elements")
                     + f" (flat {out[:4].tolist()}{'…' if out.size > 4 else ''})")
    if d.avoided is None:
        return "; ".join(parts)
    unreachable = np.flatnonzero(d.crossed > 0)
    if d.directions is not None:  # a few directions: one count each
        if d.avoided.any():
            parts.append("the steps avoid " + ", ".join(
                "-" if c else str(int(a)) for a, c in zip(d.avoided, d.crossed))
                + " switching points that h₀ crosses (per direction)")
        for k in unreachable:
            parts.append(f"direction {k}: not differentiable within reach: "
                         f"{_points(int(d.crossed[k]))} crossed at this point")
    else:  # element by element
        moved = np.flatnonzero(d.avoided > 0)
        if moved.size:
            parts.append(f"the steps avoid switching points along {moved.size} of "
                         f"{d.avoided.size} elements (up to {int(d.avoided.max())} each)")
        if unreachable.size:
            parts.append(f"not differentiable within reach at {unreachable.size} of "
                         f"{d.crossed.size} elements (flat {unreachable[:4].tolist()}"
                         f"{'…' if unreachable.size > 4 else ''}): up to "
                         f"{_points(int(d.crossed.max()))} crossed at this point")
    return "; ".join(parts)


def fd_rows(leaves: Leaves, plan: fd.Plan, derivs: list[fd.Derivatives | None],
            expected: Sequence[Any], scale: float, *, rtol: float | None,
            jacobian_of: tuple | None = None,
            autodiff: Sequence[Comparison] = ()) -> list[Comparison]:
    """Rows comparing `expected[i]` (the gradient, or with `jacobian_of` the output
    shape, the Jacobian under test) with the finite differences `derivs`. The
    tolerance of each element is `rtol·(|r| + max|r|) + 100·ε·scale` for the value's
    own rounding plus `FD_SAFETY ×` its estimated finite-difference error.

    A direction (or element) that no step reaches without crossing a switching point
    is not judged here; its row says so in `note`, and fails only when the leaf's
    autodiff row (in `autodiff`) fails too."""
    rows = []
    agrees = {r.name: r.passed for r in autodiff}
    out_shape = jacobian_of or ()
    for name, x, g, d in zip(leaves.names, leaves.values, expected, derivs):
        if d is None:
            continue
        g = np.asarray(g, dtype=jnp.result_type(g))
        dtype = None if jacobian_of is not None else x.dtype
        if g.shape != out_shape + x.shape:  # wrong shape: let compare say so
            rows.append(compare(name, FINITE_DIFFERENCES, g, np.zeros(out_shape + x.shape)))
            continue
        unreachable = None if d.crossed is None else d.crossed > 0  # per direction
        if d.outside is not None:  # steps that leave the domain: not judged either
            unreachable = d.outside if unreachable is None else unreachable | d.outside
        if d.directions is None:  # element by element: laid out like g
            if jacobian_of is None:
                lay = lambda a: a.reshape(x.shape)  # noqa: E731
            else:
                lay = lambda a: np.moveaxis(  # noqa: E731
                    a.reshape((x.size,) + out_shape), 0, -1).reshape(g.shape)
            value, ref, err, step = g, lay(d.value), lay(d.error), lay(d.step)
            if unreachable is not None:
                unreachable = lay(np.broadcast_to(
                    unreachable.reshape((-1,) + (1,) * len(out_shape)), (x.size,) + out_shape))
            label = name
        else:
            g64, n_in = g.astype(np.float64), x.ndim
            if jacobian_of is None:  # ⟨v_k, g⟩ per direction
                projected = np.tensordot(d.directions, g64, axes=n_in)
            else:  # J v_k per direction: contract the input axes of J with v_k
                projected = np.tensordot(d.directions, g64,
                                         axes=(tuple(range(1, 1 + n_in)),
                                               tuple(range(g.ndim - n_in, g.ndim))))
            value, ref, err, step = projected.astype(g.dtype), d.value, d.error, d.step
            if unreachable is not None:
                unreachable = np.broadcast_to(
                    unreachable.reshape((-1,) + (1,) * len(out_shape)), ref.shape)
            k = d.value.shape[0]
            label = f"{name} ({_directions(k, plan.gradient)})"
        r_tol = rtol if rtol is not None else _rtol(x.dtype)
        eps = float(jnp.finfo(x.dtype).eps)
        if unreachable is not None:  # not judged: shown as agreeing, out of the errors
            ref = np.where(unreachable, np.asarray(value, np.float64), ref)
        atol = r_tol * max_abs(ref) + AD_FLOOR * eps * scale + fd.FD_SAFETY * err
        if unreachable is not None:
            atol = np.where(unreachable, np.inf, atol)
        row = compare(label, FINITE_DIFFERENCES, value, ref, rtol=r_tol, atol=atol,
                      dtype=dtype, step=step)
        note = _switch_note(d)
        if note:
            row = replace(row, note=note)
        if unreachable is not None and unreachable.all() and not agrees.get(name, True):
            row = replace(row, passed=False, problem="; ".join(
                p for p in (row.problem, "manual and autodiff disagree") if p))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- #
# Jobs: a check's traceable part and its host part
# --------------------------------------------------------------------------- #


@dataclass
class Job:
    """`program(*inputs)` is traceable; `finish(outputs)` makes the `Report`."""

    program: Callable
    inputs: tuple
    finish: Callable[..., Report]
    reference_part: Callable | None = None  # vjp: the program without the rule
    manual: Callable[[], Any] | None = None  # vjp: the rule, op by op
    diagnose: Callable[[Exception], Any] | None = None  # vjp: find a wrong-shaped cotangent


def run(job: Job | Report) -> Report:
    if isinstance(job, Report):
        return job
    return job.finish(compiled(job.program)(*job.inputs))


def with_magnitude(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`y` and `max|y|`, the scale of its rounding error."""
    return y, jnp.max(jnp.abs(y), initial=0.0)


def dot_and_magnitude(u: Any, y: Any) -> tuple[jax.Array, jax.Array]:
    """`⟨u, y⟩` over all leaves, and `Σ|u||y|` (the scale of its rounding)."""
    pairs = list(zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(y)))
    dot = sum(jnp.vdot(a.astype(b.dtype), b) for a, b in pairs)
    mag = sum(jnp.vdot(jnp.abs(a).astype(b.dtype), jnp.abs(b)) for a, b in pairs)
    return dot, mag


# --------------------------------------------------------------------------- #
# A check that would compare nothing
# --------------------------------------------------------------------------- #


def _jaxpr_text(fn: Callable, *args: Any) -> str:
    return str(jax.make_jaxpr(fn)(*args).jaxpr)


def same_computation(first: Callable, second: Callable, *args: Any) -> bool:
    """Whether `first(*args)` and `second(*args)` trace to the same jaxpr (the same
    operations on the same values: comparing them would test nothing)."""
    try:
        return _jaxpr_text(first, *args) == _jaxpr_text(second, *args)
    except Exception:  # a function that cannot be traced twice: assume they differ
        return False


def no_rule(fn: Callable, args: Sequence[Any], probe: fd.Probe) -> bool:
    """Whether `fn`, a function compared in manual against autodiff mode, runs no
    hand-written rule: no fdl primitive call was traced (`probe`), and its manual and
    autodiff traces are the same (a primitive inside a cached inner `jit` is not seen
    by the recorder but changes the trace)."""
    if probe.calls:
        return False
    return same_computation(in_mode(fn, "manual"), in_mode(fn, "autodiff"), *args)
