"""Checks of forward mode and second order: tangent rules, adjointness, Hessian-vector products.

* `jvp(f, *args)` — a primitive's hand-written tangent rule (`jax.jvp` in manual mode)
  vs `jax.jvp` of its plain forward vs a central finite difference along the same
  random tangent `v`.
* `adjoint(p, *args)` — the primitive's two hand-written rules against each other:
  `⟨u, J v⟩` (the tangent rule) must equal `⟨Jᵀ u, v⟩` (the backward) for random
  `u, v`. A tangent rule and a backward that are each other's transpose agree here;
  a wrong rule paired with a right one does not, whatever autodiff says.
* `hvp(f, *args)` — a Hessian-vector product of a scalar function built from fdl
  primitives, forward over reverse (`jvp` of `grad`) on the hand-written rules, vs the
  same in autodiff mode vs finite differences of autodiff gradients along `v`. A
  backward that is right at first order but wrong in its own derivative (a residual
  treated as a constant) passes `vjp` and fails here.

A function that calls no fdl primitive has no hand-written rule: its `jvp` and `hvp`
reports say "compared nothing" and do not pass.

Finite differences along `v` take two steps `h` and `h/2` (`h = ε^{1/3}·max(1, max|x|)`
in the dtype they are taken in: float64 with x64 on, else the arguments'); the
tolerance of each element adds four times their disagreement plus the rounding bound
`3·ε·F/h` (`F` the largest value differentiated), as `fdl.check.fd` does per element.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fdl.check import fd
from fdl.check.arguments import (Leaves, arg_names, as_array, compiled, in_mode, leaves_of,
                                 name_of)
from fdl.check.report import AUTODIFF, FINITE_DIFFERENCES, Comparison, Report, compare, tolerance
from fdl.check.rows import NOTHING, no_rule
from fdl.modes import gradient_mode
from fdl.primitive import Primitive

__all__ = ["adjoint", "hvp", "jvp"]


def _prepare(f: Primitive | Callable, args: tuple, kwargs: dict, what: str
             ) -> tuple[Leaves, Callable, Callable, str]:
    """Float leaves of the call, the manual and reference functions of those leaves,
    and the report's title."""
    if isinstance(f, Primitive):
        full = f.bind(*args, **kwargs)
        leaves = leaves_of(tuple(full), list(f.signature.parameters), f.static_argnums)
        manual_fn, reference_fn = f.manual, f.forward
        title = f"fdl.check.{what}: {f.name}"
    else:
        full = args
        leaves = leaves_of(tuple(full), arg_names(f, len(args)))
        manual_fn = in_mode(lambda *a: f(*a, **kwargs), "manual")
        reference_fn = in_mode(lambda *a: f(*a, **kwargs), "autodiff")
        title = f"fdl.check.{what}: {name_of(f, 'f')} (manual vs autodiff mode)"
    def of_leaves(fn: Callable) -> Callable:
        return lambda *vals: fn(*leaves.rebuild(vals))
    return leaves, of_leaves(manual_fn), of_leaves(reference_fn), title


def _random_like(generator: np.random.Generator, values: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda o: as_array(generator.standard_normal(o.shape).astype(o.dtype)), values)


def _fd_dtype(values: list) -> Any:
    return fd.fd_dtype(jnp.result_type(*values)) if values else np.float64


def _host_max_abs(x: Any) -> float:
    """`max|x|` on the host (numpy): an eager `jnp` reduction would compile a program
    per shape, which costs more than the checks' arithmetic."""
    return float(np.max(np.abs(np.asarray(x, dtype=np.float64)), initial=0.0))


def _steps(values: list) -> tuple[float, float]:
    dtype = _fd_dtype(values)
    scale = max([1.0] + [_host_max_abs(x) for x in values])
    h = float(np.finfo(dtype).eps) ** (1 / 3) * scale
    return h, h / 2


def _directional(fn: Callable, vals: list, v: list, h: float) -> Any:
    """`(fn(x + h v) − fn(x − h v)) / 2h`, in the finite-difference dtype."""
    dtype = _fd_dtype(vals)
    xs = [x.astype(dtype) for x in vals]
    vs = [t.astype(dtype) for t in v]
    plus = fn(*[x + h * t for x, t in zip(xs, vs)])
    minus = fn(*[x - h * t for x, t in zip(xs, vs)])
    return jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * h), plus, minus)


def _directional_pair(fn: Callable, vals: list, v: list, h1: float, h2: float
                      ) -> tuple[Any, Any]:
    """`_directional` at steps `h1` and `h2`: the four points `x ± h v` evaluated as one
    batch (`vmap`), so the compiled program holds one copy of `fn`, not four."""
    dtype = _fd_dtype(vals)
    xs = [x.astype(dtype) for x in vals]
    vs = [t.astype(dtype) for t in v]
    steps = jnp.asarray([h1, -h1, h2, -h2], dtype)
    outs = jax.vmap(lambda c: fn(*[x + c * t for x, t in zip(xs, vs)]))(steps)
    d1 = jax.tree_util.tree_map(lambda o: (o[0] - o[1]) / (2 * h1), outs)
    d2 = jax.tree_util.tree_map(lambda o: (o[2] - o[3]) / (2 * h2), outs)
    return d1, d2


def _out_names(tree: Any, base: str) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [base + jax.tree_util.keystr(p) for p, _ in paths]


def _rows(names: list[str], manual: list, reference: list, d1: list, d2: list,
          magnitude: float, primal: list, *, rtol: float | None, fd_rtol: float | None,
          h: float, finite_differences: bool) -> list[Comparison]:
    """Autodiff and finite-difference rows for each output leaf."""
    scale = max([magnitude] + [float(np.max(np.abs(r), initial=0.0)) for r in reference])
    rows = []
    for name, m, r, a, b, y in zip(names, manual, reference, d1, d2, primal):
        dtype = jnp.result_type(y)
        eps = float(jnp.finfo(dtype).eps)
        floor = 100 * eps * scale
        rows.append(compare(name, AUTODIFF, m, r, rtol=rtol, floor=floor, dtype=dtype))
        if finite_differences:
            fd_eps = float(np.finfo(np.asarray(b).dtype).eps)
            estimate = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) \
                + 3 * fd_eps * magnitude / (h / 2)
            rt = tolerance(dtype, FINITE_DIFFERENCES) if fd_rtol is None else fd_rtol
            atol = rt * float(np.max(np.abs(b), initial=0.0)) + floor + 4 * estimate
            rows.append(compare(name, FINITE_DIFFERENCES, m, np.asarray(b), rtol=rt, atol=atol,
                                dtype=dtype, step=h / 2))
    return rows


def _host_dot(a: Sequence[Any], b: Sequence[Any]) -> tuple[float, float]:
    """`Σ ⟨a_i, b_i⟩` and `Σ |a_i|·|b_i|` over paired leaves, on the host in float64: the
    adjointness test's two sides and their scale (as exact as float64 allows; in the
    program they would add a few operations per example to compile)."""
    dot = magnitude = 0.0
    for x, y in zip(a, b):
        x = np.asarray(x, np.float64).ravel()
        y = np.asarray(y, np.float64).ravel()
        dot += float(x @ y)
        magnitude += float(np.abs(x) @ np.abs(y))
    return dot, magnitude


def _max_abs(tree: Any) -> float:
    return max([0.0] + [_host_max_abs(a) for a in jax.tree_util.tree_leaves(tree)])


# --------------------------------------------------------------------------- #
# jvp and adjointness
# --------------------------------------------------------------------------- #


def forward_job(f: Primitive | Callable, args: tuple, kwargs: dict, key: Any,
                 finite_differences: bool, u: Any = None
                 ) -> tuple[Callable, tuple, Callable] | Report:
    """`(program, inputs, finish)`: `finish(outputs, rtol, fd_rtol, adj_rtol)` gives the
    jvp report and the adjointness report from one run of `program(*inputs)`.

    `u` is the adjointness test's output cotangent (default: random, salt 3). A
    program that already has the hand backward's `Jᵀu` (the vjp check's, with the
    same `u`) passes it as `program(vals, v, u, ju)` and the backward is not
    traced twice; one that has the tangents too (`vjp_job`'s program given `v`) passes
    `tangents=(y, J v by the rule, J v by autodiff)` and nothing is traced again."""
    leaves, manual, reference, title = _prepare(f, args, kwargs, "jvp")
    if not leaves.values:
        empty = Report(title + " — no differentiable float arguments", [])
        return empty
    v = _random_like(fd.rng(key, 2), leaves.values)
    if u is None:
        u = _random_like(fd.rng(key, 3), jax.eval_shape(reference, *leaves.values))
    h1, h2 = _steps(leaves.values)

    def program(vals, v, u, ju=None, tangents=None):
        if tangents is None:
            y, dy_manual = jax.jvp(manual, vals, v)
            _, dy_reference = jax.jvp(reference, vals, v)
        else:
            y, dy_manual, dy_reference = tangents
        d1, d2 = (_directional_pair(reference, vals, v, h1, h2) if finite_differences
                  else (None, None))
        if ju is not None:  # the caller's program outputs it already
            return y, dy_manual, dy_reference, d1, d2, None
        _, pull = jax.vjp(manual, *vals)
        return y, dy_manual, dy_reference, d1, d2, list(pull(u))

    def finish(outputs, rtol=None, fd_rtol=None, adj_rtol=None, ju=None):
        """The jvp and adjointness reports; `ju`: the hand backward's `Jᵀu` where the
        program did not output it (`program(..., ju=...)`)."""
        y, dm, dr, d1, d2, computed = outputs
        # ⟨u, J v⟩ and ⟨Jᵀu, v⟩ and the scale of their rounding, on the host in float64
        lhs, lhs_mag = _host_dot(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(dm))
        rhs, rhs_mag = _host_dot(computed if computed is not None else ju, v)
        mag = lhs_mag + rhs_mag
        primal = jax.tree_util.tree_leaves(y)
        names = _out_names(y, "dy")
        none = [None] * len(primal)
        rows = _rows(names, jax.tree_util.tree_leaves(dm), jax.tree_util.tree_leaves(dr),
                     jax.tree_util.tree_leaves(d1) if finite_differences else none,
                     jax.tree_util.tree_leaves(d2) if finite_differences else none,
                     _max_abs(y), primal, rtol=rtol, fd_rtol=fd_rtol, h=h1,
                     finite_differences=finite_differences)
        direction = f"along a random tangent of {', '.join(leaves.names)}"
        jvp_report = Report(f"{title} ({direction})", rows)
        dtype = jnp.result_type(*primal)
        rt = tolerance(dtype) if adj_rtol is None else adj_rtol
        adj = compare("⟨u, J v⟩ (hand tangent rule)", "⟨Jᵀu, v⟩ (hand backward)",
                      np.asarray(lhs, np.float64), np.asarray(rhs, np.float64), rtol=rt,
                      atol=rt * float(mag), dtype=dtype)
        gap = abs(float(lhs) - float(rhs)) / max(float(mag), 1e-300)
        adj_title = (title.replace("fdl.check.jvp", "fdl.check.adjoint")
                     + f" (random u, v; gap {gap:.2g} of Σ|u||Jv| + Σ|Jᵀu||v|)")
        return jvp_report, Report(adj_title, [adj])

    return program, (leaves.values, v, u), finish


def _nothing(f: Primitive | Callable, args: tuple, kwargs: dict) -> str:
    """`NOTHING` when `f` is a function that runs no hand-written rule (its manual and
    autodiff modes are the same computation), else `""`."""
    if isinstance(f, Primitive):
        return ""
    fn = lambda *a: f(*a, **kwargs)  # noqa: E731
    try:
        with gradient_mode("autodiff"):
            seen = fd.probe(fn, *args)
    except Exception:  # arguments eval_shape cannot take: assume a rule ran
        return ""
    return NOTHING if no_rule(fn, args, seen) else ""


def _no_tangent(f: Any, what: str) -> Report | None:
    if isinstance(f, Primitive) and f.tangent is None:
        return Report(f"fdl.check.{what}: {f.name} — no tangent rule (reverse mode only; "
                      "pass tangent= to fdl.primitive)", [])
    return None


def jvp(f: Primitive | Callable, *args: Any, key: Any = None, rtol: float | None = None,
        fd_rtol: float | None = None, finite_differences: bool = True, jit: bool = False,
        **kwargs: Any) -> Report:
    """Check a tangent (forward-mode) rule: manual vs `jax.jvp` of the reference vs
    finite differences, along one random tangent of every float argument.

    Args:
      f: a `Primitive` (its tangent rule vs its plain forward), or any function built
        from fdl primitives (manual mode vs autodiff mode).
      *args, **kwargs: the arguments (static ones held fixed, integer ones not
        differentiated, pytrees allowed).
      key: seeds the random tangent (an int or a JAX key; default a fixed seed).
      rtol: tolerance vs autodiff (default from the dtype, see `fdl.check`).
      fd_rtol: relative part of the tolerance vs finite differences.
      finite_differences: also compare with finite differences.
      jit: accepted for symmetry with `vjp`; the check always runs as one compiled
        program (rule, reference and finite differences).

    Returns:
      A `Report` with one row per output leaf and reference. A primitive without a
      tangent rule gives a report with no rows, which does not pass.
    """
    missing = _no_tangent(f, "jvp")
    if missing is not None:
        return missing
    job = forward_job(f, args, kwargs, key, finite_differences)
    if isinstance(job, Report):
        return job
    program, inputs, finish = job
    report = finish(compiled(program)(*inputs), rtol, fd_rtol)[0]
    report.problem = _nothing(f, args, kwargs)
    return report


def adjoint(f: Primitive | Callable, *args: Any, key: Any = None, rtol: float | None = None,
            **kwargs: Any) -> Report:
    """Check that a primitive's hand-written tangent rule and backward are adjoint:
    `⟨u, J v⟩ = ⟨Jᵀu, v⟩` for random `u` (output-shaped) and `v` (argument-shaped).

    The gap `|⟨u, J v⟩ − ⟨Jᵀu, v⟩|` is judged against `rtol·(Σ|u||J v| + Σ|Jᵀu||v|)`
    (the scale of the two sums' rounding) plus `rtol·|⟨Jᵀu, v⟩|`; the row's `atol`
    over its `rtol` is that scale, and the title gives the gap relative to it; `rtol` defaults to the output dtype's
    tolerance (1e-10 for float64, 1e-5 for float32). No autodiff is involved: this
    checks the two rules against each other, and catches a rule wrong in a way the
    other does not mirror.

    Returns:
      A `Report` with one row.
    """
    missing = _no_tangent(f, "adjoint")
    if missing is not None:
        return missing
    job = forward_job(f, args, kwargs, key, False)
    if isinstance(job, Report):
        return Report(job.title.replace("fdl.check.jvp", "fdl.check.adjoint"), [])
    program, inputs, finish = job
    return finish(compiled(program)(*inputs), adj_rtol=rtol)[1]


# --------------------------------------------------------------------------- #
# Hessian-vector products
# --------------------------------------------------------------------------- #


def _hvp_of(grad_fn: Callable, vals: list, v: list) -> list:
    return list(jax.jvp(lambda *x: grad_fn(*x), vals, v)[1])


def hvp(f: Callable, *args: Any, v: Any = None, key: Any = None, rtol: float | None = None,
        fd_rtol: float | None = None, finite_differences: bool = True,
        **kwargs: Any) -> Report:
    """Check second order: the Hessian-vector product `H v` of a scalar `f`, forward
    over reverse (`jax.jvp` of `jax.grad`) on the hand-written rules (manual mode) vs
    the same in autodiff mode vs finite differences of autodiff gradients along `v`.

    Args:
      f: a scalar function built from fdl primitives (or a `Primitive` with a scalar
        output, e.g. a loss).
      *args, **kwargs: its arguments; every float leaf is differentiated.
      v: the direction, shaped like the float leaves of `args` (a list of arrays, one
        per leaf, in `jax.tree_util` order); default a random one.
      key: seeds the random direction.
      rtol: tolerance vs autodiff (default from the dtype).
      fd_rtol: relative part of the tolerance vs finite differences.
      finite_differences: also compare with finite differences of gradients.

    Returns:
      A `Report` with one row per float leaf (`(H v)` restricted to it) and reference.
    """
    leaves, manual, reference, title = _prepare(f, args, kwargs, "hvp")
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])
    if v is None:
        v = _random_like(fd.rng(key, 4), leaves.values)
    else:
        v = [jnp.asarray(t, x.dtype) for t, x in zip(jax.tree_util.tree_leaves(v),
                                                     leaves.values)]
        if len(v) != len(leaves.values):
            raise ValueError(f"fdl.check.hvp: v must have one array per float leaf of the "
                             f"arguments ({len(leaves.values)}: {leaves.names}), got {len(v)}")
    h1, h2 = _steps(leaves.values)
    argnums = tuple(range(len(leaves.values)))

    def program(vals, v):
        # the modes are read when tracing each function, inside this one program
        with gradient_mode("manual"):
            g_manual = jax.grad(manual, argnums)
            hv_manual = _hvp_of(g_manual, vals, v)
        with gradient_mode("autodiff"):
            g_reference = jax.grad(reference, argnums)
            hv_reference = _hvp_of(g_reference, vals, v)
            d1 = _directional(g_reference, vals, v, h1) if finite_differences else None
            d2 = _directional(g_reference, vals, v, h2) if finite_differences else None
            value, grads = jax.value_and_grad(reference, argnums)(*vals)
        return hv_manual, hv_reference, d1, d2, grads, value

    hm, hr, d1, d2, grads, value = compiled(program)(leaves.values, v)
    none = [None] * len(hm)
    # finite differences of a gradient: its rounding scales with max|∇f|
    magnitude = max(_max_abs(grads), abs(float(value)) / max(1.0, _max_abs(leaves.values)))
    rows = _rows([f"(H v)[{n}]" for n in leaves.names], hm, hr,
                 list(d1) if finite_differences else none,
                 list(d2) if finite_differences else none, magnitude, leaves.values,
                 rtol=rtol, fd_rtol=fd_rtol, h=h1, finite_differences=finite_differences)
    return Report(f"{title} (forward over reverse, random direction)", rows,
                  _nothing(f, args, kwargs))
