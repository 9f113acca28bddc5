"""Verify hand-derived gradients against autodiff and finite differences.

The checks
----------
* :func:`vjp` ``(f, *args)`` — a primitive's hand-written VJP rule vs ``jax.vjp``
  of its plain forward vs central finite differences, with a random cotangent.
  ``f`` may also be any function built from fdl primitives (manual mode vs
  autodiff mode).
* :func:`grad` ``(f, my_grad, *args)`` — *your* gradient of a scalar function
  vs ``jax.grad`` vs finite differences.
* :func:`jacobian` ``(f, my_jacobian, *args)`` — your full Jacobian vs
  ``jax.jacrev`` vs finite differences.
* :func:`model` ``(loss_fn, params, *batch)`` — a whole model's gradient with
  the manual rules vs pure autodiff, plus directional finite differences.

Each returns a :class:`Report`: one row per (argument or pytree leaf, reference)
with the largest absolute and relative error, the worst element's index with
both values, the tolerance, the dtype, and whether it passed. ``str(report)``
is a readable table; ``report.passed`` (also ``bool(report)``) says whether every
row passed — a report with no rows (nothing differentiable was given) does not
pass; ``report.raise_if_failed()`` is the raising form for tests, raising
:class:`CheckFailed` with the table as its message.

A row fails, with the reason in ``problem``, when the value under test has the
wrong shape (a primitive's backward returning ``∂L/∂W`` transposed is reported
as such, not as an XLA error), a dtype other than its argument's (a float64
check is never passed at float32 accuracy), or a non-finite value where the
reference is finite. A failing row also gets a hint for two recognisable
mistakes: a square matrix that is the reference transposed, and a value that is a
constant multiple of the reference (a missing ``1/N``, a sign error).

Tolerances
----------
An element passes when ``|m − r| ≤ atol + rtol·|r|`` where ``m`` is the value
under test and ``r`` the reference. Unless given, ``atol = rtol·max|r| + floor``
over the leaf, so values near zero are judged against the leaf's scale, not
their own. The ``floor`` is the rounding noise of the reference, so that a leaf
whose true gradient is zero (a bias before a normalisation) is not failed for
roundoff: vs autodiff ``100·ε·S``, with ``S`` the larger of the largest reference
value over all leaves of the check and ``F / max(1, max|x|)``; vs finite
differences the stencil's noise ``30·ε·F/h``. ``F`` is the magnitude of the
function's value (``Σ|u||y|`` for :func:`vjp`'s ``⟨u, f(x)⟩``). The reported
*relative error* is leaf-wise, ``max|m − r| / max|r|``. Defaults of ``rtol``
depend on the dtype of the argument (of the value under test for :func:`compare`):

=========  ================  ====================
dtype      vs autodiff       vs finite differences
=========  ================  ====================
float64    1e-10             1e-8
float32    1e-5              1e-4
bf16/f16   2e-2              5e-2
=========  ================  ====================

Finite differences are central, Richardson-extrapolated (``(4D(h/2) − D(h))/3``,
error ``O(h⁴)``), with step ``h = ε^{1/5}·max(1, max|x|)`` from the machine
epsilon ``ε`` of the dtype they are evaluated in: float64 when ``jax_enable_x64``
is on (even for float32 arguments), else the argument's. Leaves with more than
``max_fd_elements`` elements are checked along random ±1 directions instead of
element by element (the row says so, e.g. ``w (4 random directions)``; its index
is then ``(direction, …)``). Points where the function has a kink (ReLU at 0)
are not differentiable and finite differences disagree there; the built-in
examples avoid them.

Speed: finite differences are planned on the host (stencil points, random
directions and the differencing itself in numpy); only the function evaluations
are compiled, in one ``vmap``, together with the reference and (with
``jit=True``) the rule under test — one XLA program per check, compiled at XLA
backend optimisation level 0 (tiny arrays: compiling is the cost).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fdl.primitive import Primitive, gradient_mode

__all__ = ["CheckFailed", "Comparison", "Report", "compare", "grad", "jacobian", "model",
           "tolerance", "vjp"]

_TOLERANCES = {  # dtype name -> (rtol vs autodiff, rtol vs finite differences)
    "float64": (1e-10, 1e-8),
    "float32": (1e-5, 1e-4),
    "bfloat16": (2e-2, 5e-2),
    "float16": (2e-2, 5e-2),
}
_AD_FLOOR = 100.0  # × ε × S (see the module docstring): roundoff of autodiff
_FD_FLOOR = 30.0  # × ε × F / h: rounding noise of the Richardson stencil (≈3εF/h), ×10
_FD_BATCH_ELEMENTS = 2 ** 22  # stencil points × perturbed elements evaluated in one vmap
AUTODIFF, FINITE_DIFFERENCES = "autodiff", "finite differences"


def tolerance(dtype: Any, against: str = AUTODIFF) -> float:
    """Default relative tolerance for values of ``dtype`` compared with ``against``
    (``"autodiff"`` or ``"finite differences"``)."""
    name = jnp.dtype(dtype).name
    if name not in _TOLERANCES:
        raise ValueError(f"tolerance: no default for dtype {name}; pass rtol explicitly")
    return _TOLERANCES[name][0 if against == AUTODIFF else 1]


class CheckFailed(AssertionError):
    """Raised by :meth:`Report.raise_if_failed`; the message is the report."""


# --------------------------------------------------------------------------- #
# Comparisons and reports
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Comparison:
    """One leaf compared with one reference.

    Attributes:
      name: argument or pytree leaf (``"w"``, ``"params['dense_0']['w']"``).
      against: the reference (``"autodiff"``, ``"finite differences"``, …).
      shape, dtype: of the value under test.
      max_abs: ``max |m − r|``.
      max_rel: ``max |m − r| / max |r|`` (leaf-wise relative error).
      index: index of the worst element (largest error relative to its tolerance).
      value, reference: the value under test and the reference at ``index``.
      rtol, atol: the tolerance applied.
      passed: every element within ``atol + rtol·|r|`` (and no ``problem``).
      problem: why the values could not be compared or fail regardless of the
        tolerance (shape or dtype mismatch, non-finite values); ``""`` if none.
    """

    name: str
    against: str
    shape: tuple
    dtype: str
    max_abs: float
    max_rel: float
    index: tuple | None
    value: float
    reference: float
    rtol: float
    atol: float
    passed: bool
    problem: str = ""

    def describe(self) -> str:
        """One sentence: where and by how much this row fails (or that it passed)."""
        verdict = "passed" if self.passed else "FAILED"
        head = f"{self.name} vs {self.against} {verdict}"
        if self.index is None:
            return f"{head}: {self.problem}" if self.problem else head
        text = (
            f"{head}: worst element {_idx(self.index)} is {self.value:.12g}, reference "
            f"{self.reference:.12g} (abs err {self.max_abs:.3g}, rel err {self.max_rel:.3g}; "
            f"tolerance rtol {self.rtol:.1g}, atol {self.atol:.1g})"
        )
        return f"{text}; {self.problem}" if self.problem else text


def _idx(index: tuple | None) -> str:
    if index is None:
        return "-"
    return "(" + ", ".join(str(i) for i in index) + ("," if len(index) == 1 else "") + ")"


@dataclass
class Report:
    """The outcome of a check: a list of :class:`Comparison` rows and a title."""

    title: str
    rows: list[Comparison]

    @property
    def passed(self) -> bool:
        """True when every row passed (and there is at least one row)."""
        return bool(self.rows) and all(r.passed for r in self.rows)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list[Comparison]:
        """The rows that failed, in table order."""
        return [r for r in self.rows if not r.passed]

    def worst(self, against: str | None = None) -> float:
        """Largest leaf-wise relative error over the rows (optionally one reference)."""
        errs = [r.max_rel for r in self.rows if against is None or r.against == against]
        return max(errs, default=float("nan"))

    def raise_if_failed(self) -> Report:
        """Raise :class:`CheckFailed` with the full report if any row failed."""
        if not self.passed:
            raise CheckFailed(str(self))
        return self

    def __str__(self) -> str:
        head = ("argument", "shape", "dtype", "against", "max abs err", "max rel err",
                "worst at", "value", "reference", "rtol", "atol", "")
        body = [
            (r.name, str(r.shape), r.dtype, r.against, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}",
             _idx(r.index), f"{r.value:.10g}", f"{r.reference:.10g}", f"{r.rtol:.0e}",
             f"{r.atol:.1e}", "ok" if r.passed else "FAIL")
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
        lines = [self.title, fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, body)]
        failures = self.failures
        if not self.rows:
            lines.append("FAILED: nothing was compared (no differentiable float argument)")
        elif failures:
            lines.append(f"FAILED: {len(failures)} of {len(self.rows)} comparisons")
            lines += ["  " + r.describe() for r in failures]
        else:
            lines.append(f"passed: {len(self.rows)} comparisons")
        return "\n".join(lines)

    __repr__ = __str__


def _default_rtol(dtype: np.dtype, reference_dtype: np.dtype, against: str) -> float:
    for dt in (dtype, reference_dtype):
        if dt.name in _TOLERANCES:
            return tolerance(dt, against)
    return tolerance(jnp.float64, against)


def compare(name: str, against: str, value: Any, reference: Any, *,
            rtol: float | None = None, atol: float | None = None, floor: float = 0.0,
            dtype: Any = None) -> Comparison:
    """Compare one array with its reference (the building block of every check).

    Args:
      name: what is compared (shown in the report).
      against: what the reference is (``"autodiff"`` picks the autodiff default
        tolerance, anything else the finite-difference one).
      value: the array under test.
      reference: the reference array.
      rtol: relative tolerance; default from :func:`tolerance` for ``dtype``.
      atol: absolute tolerance; default ``rtol·max|reference| + floor``.
      floor: noise floor added to the default ``atol``.
      dtype: the dtype ``value`` must have (its argument's); a different dtype
        fails the row. Default: the value's own dtype, which then picks ``rtol``.
    """
    value_dtype = jnp.result_type(value)
    expected = value_dtype if dtype is None else jnp.dtype(dtype)
    if rtol is None:
        rtol = _default_rtol(expected, jnp.result_type(reference), against)
    m = np.asarray(value, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if m.shape != r.shape:
        hint = " (transposed?)" if m.ndim > 1 and m.shape == r.shape[::-1] else ""
        return Comparison(name, against, m.shape, value_dtype.name, np.inf, np.inf, None,
                          np.nan, np.nan, rtol, np.nan, False,
                          f"shape {m.shape} but the reference has shape {r.shape}{hint}")
    finite_r = np.isfinite(r)
    scale = float(np.max(np.abs(r[finite_r]), initial=0.0))
    if atol is None:
        atol = rtol * scale + floor
    if m.size == 0:
        return Comparison(name, against, m.shape, value_dtype.name, 0.0, 0.0, None, np.nan,
                          np.nan, rtol, atol, True)
    with np.errstate(invalid="ignore"):
        err = np.where(m == r, 0.0, np.abs(m - r))  # equal infinities agree
    err = np.where(np.isnan(m) & np.isnan(r), 0.0, err)  # NaN in both agrees
    err = np.where(np.isnan(err), np.inf, err)
    tol = atol + rtol * np.abs(np.where(finite_r, r, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / tol)
    flat = int(np.argmax(ratio))
    index = tuple(int(i) for i in np.unravel_index(flat, m.shape))
    max_abs = float(np.max(err))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    passed = bool(np.all(ratio <= 1.0))
    problems = []
    if value_dtype != expected:
        problems.append(f"dtype {value_dtype.name} but the argument is {expected.name}")
    bad_m = ~np.isfinite(m) & finite_r
    if bad_m.any():
        i = tuple(int(j) for j in np.argwhere(bad_m)[0])
        problems.append(f"non-finite value {m[i]} at {_idx(i)} where the reference is finite")
    if not passed and not problems:
        problems += _hints(m, r, atol, rtol)
    bad_r = ~finite_r & (err > 0)
    if bad_r.any():
        i = tuple(int(j) for j in np.argwhere(bad_r)[0])
        problems.append(f"the reference is {r[i]} at {_idx(i)} where the value is {m[i]}")
    return Comparison(name, against, m.shape, value_dtype.name, max_abs, max_rel, index,
                      float(m[index]), float(r[index]), rtol, atol, passed and not problems,
                      "; ".join(problems))


def _hints(m: np.ndarray, r: np.ndarray, atol: float, rtol: float) -> list[str]:
    """Recognisable mistakes: a transposed square matrix, a constant factor."""
    close = lambda a, b: bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))
    if m.ndim == 2 and m.shape[0] == m.shape[1] > 1 and close(m, r.T):
        return ["hint: the value is the reference transposed"]
    if m.size > 1 and np.all(np.isfinite(m)) and np.all(np.isfinite(r)):
        big = np.argmax(np.abs(r))
        if r.flat[big] != 0:
            c = m.flat[big] / r.flat[big]
            if c != 1 and np.isfinite(c) and c != 0 and close(m, c * r):
                return [f"hint: the value is {c:.6g} × the reference (a constant factor)"]
    return []


# --------------------------------------------------------------------------- #
# Finite differences
# --------------------------------------------------------------------------- #


def _fd_dtype(dtype: Any) -> Any:
    return jnp.float64 if jax.config.jax_enable_x64 else dtype


def _rng(key: jax.Array | None, salt: int) -> np.random.Generator:
    """A host (numpy) generator seeded from a JAX key (``None``: a fixed seed) and a
    salt. Random numbers are drawn on the host: a random generator inside the
    compiled check would multiply its XLA compile time several fold on CPU."""
    if key is None:
        return np.random.default_rng([0, salt])
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng([*np.asarray(key, dtype=np.uint32).ravel().tolist(), salt])


@dataclass
class _FDPlan:
    """Finite differences, planned on the host (numpy, nothing compiled).

    Per leaf ``i``: ``kinds[i]`` is ``None`` (skipped), ``"elements"`` (every
    element) or ``"directions"`` (the random ±1 directions ``directions[i]``,
    ``(k, *x.shape)``); ``steps[i]`` is ``h`` and ``eps[i]`` the machine epsilon of
    the dtype the differences are taken in. The stencil points are grouped for
    evaluation: each group is ``(points, segments)`` with ``points[j]`` the stacked
    values of leaf ``j`` at every point of the group and ``segments`` the
    ``(leaf, number of points)`` perturbed, in order. One group holds every leaf
    (one copy of the function in the compiled check) unless that would stack more
    than ``_FD_BATCH_ELEMENTS`` values; then each leaf has its own.
    """

    kinds: list[str | None]
    directions: list[np.ndarray | None]
    steps: list[float]
    eps: list[float]
    points: list[dict[int, np.ndarray]]
    segments: list[list[tuple[int, int]]]


def _plan(leaves: _Leaves, max_fd_elements: int, directions: int, key: jax.Array | None,
          enabled: bool) -> _FDPlan:
    rng = _rng(key, 2)
    plan = _FDPlan([], [], [], [], [], [])
    stencils = {}
    for i, leaf in enumerate(leaves.values):
        x = np.asarray(leaf, dtype=_fd_dtype(leaf.dtype))
        kind, v = None, None
        if enabled and x.size:
            if x.size <= max_fd_elements:
                kind = "elements"
                v = np.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
            else:
                kind = "directions"
                v = rng.choice(np.array([-1.0, 1.0], x.dtype), size=(directions,) + x.shape)
        eps = float(np.finfo(x.dtype).eps)
        h = eps ** 0.2 * max(1.0, float(np.max(np.abs(x), initial=0.0)))
        plan.kinds.append(kind)
        plan.directions.append(v if kind == "directions" else None)
        plan.steps.append(h)
        plan.eps.append(eps)
        if kind is not None:
            steps = np.array([h, -h, h / 2, -h / 2], x.dtype).reshape((4, 1) + (1,) * x.ndim)
            stencils[i] = (x + steps * v[None]).reshape((-1,) + x.shape)
    order = sorted(stencils)
    counts = [stencils[i].shape[0] for i in order]
    perturbed = sum(leaves.values[i].size for i in order)
    if sum(counts) * perturbed <= _FD_BATCH_ELEMENTS:
        groups = [order] if order else []
    else:
        groups = [[i] for i in order]
    for group in groups:
        n = {i: stencils[i].shape[0] for i in group}
        plan.points.append({j: np.concatenate([
            stencils[i] if i == j else np.broadcast_to(
                np.asarray(leaves.values[j], stencils[j].dtype), (n[i],) + stencils[j].shape[1:])
            for i in group]) for j in group})
        plan.segments.append([(i, n[i]) for i in group])
    return plan


def _fd_evaluate(fun: Callable, values: Sequence[jax.Array], plan: _FDPlan,
                 points: list[dict[int, jax.Array]]) -> list[tuple[jax.Array, jax.Array]]:
    """Traceable: ``fun(values) -> (out, magnitude)`` at every stencil point, one
    ``vmap`` per group of ``plan`` (``points`` is ``plan.points``, passed in as
    arguments of the compiled check)."""
    fd_values = [v.astype(_fd_dtype(v.dtype)) for v in values]
    out = []
    for group in points:
        args = [group.get(j, x) for j, x in enumerate(fd_values)]
        in_axes = [0 if j in group else None for j in range(len(fd_values))]
        out.append(jax.vmap(fun, in_axes=(in_axes,))(args))
    return out


def _fd_derivatives(plan: _FDPlan, evaluated: list[Any]) -> list[Any]:
    """Host: per leaf ``None`` or ``(derivatives, floor)``: the Richardson-extrapolated
    central differences ``(k, *out.shape)`` along the ``k`` directions (the elements,
    in order, for ``"elements"``), and the noise floor ``30·ε·F/h`` of the stencil."""
    out: list[Any] = [None] * len(plan.kinds)
    for (ys, mags), segments in zip(evaluated, plan.segments):
        ys, mags = np.asarray(ys, dtype=np.float64), np.asarray(mags, dtype=np.float64)
        start = 0
        for i, n in segments:
            y, h = ys[start:start + n], plan.steps[i]
            y = y.reshape((4, n // 4) + y.shape[1:])
            d1 = (y[0] - y[1]) / (2 * h)
            d2 = (y[2] - y[3]) / h
            floor = _FD_FLOOR * plan.eps[i] * float(np.max(mags[start:start + n])) / h
            out[i] = ((4 * d2 - d1) / 3, floor)
            start += n
    return out


def _fd_rows(leaves: _Leaves, plan: _FDPlan, fd: list[Any], expected: Sequence[Any], *,
             rtol: float | None, jacobian_of: tuple | None = None) -> list[Comparison]:
    """Rows comparing ``expected[i]`` (the gradient, or with ``jacobian_of`` the output
    shape, the Jacobian under test) with the finite differences ``fd`` of
    :func:`_fd_derivatives`."""
    rows = []
    out_shape = jacobian_of or ()
    for name, x, g, item, v in zip(leaves.names, leaves.values, expected, fd,
                                   plan.directions):
        if item is None:
            continue
        d, floor = item
        g = np.asarray(g, dtype=jnp.result_type(g))
        dtype = lambda x: None if jacobian_of is not None else x.dtype  # noqa: E731
        if g.shape != out_shape + x.shape:  # wrong shape: let compare say so
            rows.append(compare(name, FINITE_DIFFERENCES, g, np.zeros(out_shape + x.shape)))
            continue
        if v is None:  # element by element: derivatives laid out like g
            if jacobian_of is None:
                ref = d.reshape(x.shape)
            else:
                ref = np.moveaxis(d.reshape((x.size,) + out_shape), 0, -1).reshape(g.shape)
            rows.append(compare(name, FINITE_DIFFERENCES, g, ref, rtol=rtol,
                                floor=float(floor), dtype=dtype(x)))
            continue
        g64, n_in = g.astype(np.float64), x.ndim
        if jacobian_of is None:  # ⟨v_k, g⟩ per direction
            projected = np.tensordot(v, g64, axes=n_in)
        else:  # J v_k per direction: contract the input axes of J with v_k
            projected = np.tensordot(v, g64, axes=(tuple(range(1, 1 + n_in)),
                                                   tuple(range(g.ndim - n_in, g.ndim))))
        rows.append(compare(f"{name} ({v.shape[0]} random directions)", FINITE_DIFFERENCES,
                            projected.astype(g.dtype), d, rtol=rtol, floor=float(floor),
                            dtype=dtype(x)))
    return rows


# --------------------------------------------------------------------------- #
# Arguments as named differentiable leaves
# --------------------------------------------------------------------------- #


@dataclass
class _Leaves:
    """The float leaves of a call's arguments, and how to put them back."""

    names: list[str]
    values: list[jax.Array]
    positions: list[int]  # index into the flat list of all leaves
    all_leaves: list[Any]
    treedef: Any
    argnums: list[int] = field(default_factory=list)  # the argument each leaf is in
    within: list[int] = field(default_factory=list)  # its index among that argument's leaves

    def rebuild(self, values: Sequence[Any]) -> Any:
        leaves = list(self.all_leaves)
        for pos, val in zip(self.positions, values):
            leaves[pos] = val
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _is_float(x: Any) -> bool:
    if isinstance(x, float):  # a Python float is differentiable like a 0-d array
        return True
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _leaves(tree: Any, names: Sequence[str], skip: Sequence[int] = ()) -> _Leaves:
    """Float leaves of ``tree`` (a tuple of arguments), named ``arg`` or ``arg[path]``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = _Leaves([], [], [], [leaf for _, leaf in paths], treedef)
    seen: dict[int, int] = {}
    for pos, (path, leaf) in enumerate(paths):
        argnum = path[0].idx
        within = seen[argnum] = seen.get(argnum, -1) + 1
        if argnum in skip or not _is_float(leaf):
            continue
        base = names[argnum] if argnum < len(names) else f"arg{argnum}"
        out.names.append(base + jax.tree_util.keystr(path[1:]))
        out.values.append(jnp.asarray(leaf))
        out.positions.append(pos)
        out.argnums.append(argnum)
        out.within.append(within)
    return out


def _arg_names(f: Callable, n: int) -> list[str]:
    """Names for ``n`` positional arguments of ``f``: its parameter names, then
    ``rest[0]``, ``rest[1]``… for a ``*rest`` parameter, else ``arg2``, ``arg3``…"""
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    names, var = [], None
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            var = p.name
            break
    names = names[:n]
    extra = n - len(names)
    names += [f"{var}[{i}]" for i in range(extra)] if var else \
        [f"arg{i}" for i in range(len(names), n)]
    return names


def _maybe_jit(fn: Callable, use_jit: bool) -> Callable:
    return jax.jit(fn) if use_jit else fn


_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _compiled(fn: Callable) -> Callable:
    """``fn`` compiled for one call at XLA backend optimisation level 0: a check's
    arrays are tiny, so compiling dominates its time, and O0 compiles about twice
    as fast (the arithmetic is IEEE either way). Falls back to a plain ``jax.jit``
    where a backend rejects the option."""
    def call(*args):
        lowered = jax.jit(fn).lower(*args)
        try:
            compiled = lowered.compile(_FAST_COMPILE)
        except Exception:  # an unknown option on some backend: compile normally
            compiled = lowered.compile()
        return compiled(*args)
    return call


def _name(f: Any, default: str) -> str:
    return getattr(f, "name", None) if isinstance(f, Primitive) else \
        getattr(f, "__name__", default)


def _title(title: str, leaves: _Leaves) -> str:
    dtypes = sorted({str(v.dtype) for v in leaves.values})
    return f"{title}  [{', '.join(dtypes)}]"


def _ordered(rows: list[Comparison]) -> list[Comparison]:
    """Group rows by argument, autodiff before finite differences."""
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(r.name.split(" (")[0], len(order))
    return sorted(rows, key=lambda r: (order[r.name.split(" (")[0]], r.against != AUTODIFF))


def _ad_rows(leaves: _Leaves, values: Sequence[Any], references: Sequence[Any],
             magnitude: Any, *, rtol: float | None, check_dtype: bool = True
             ) -> list[Comparison]:
    """Rows of values under test vs autodiff. The roundoff floor is ``100·ε·S`` with
    ``S`` the larger of the largest reference value over all leaves and the
    function's magnitude per unit of input, ``F / max(1, max|x|)``."""
    scale = max((float(np.max(np.abs(np.asarray(r, dtype=np.float64)), initial=0.0))
                 for r in references), default=0.0)
    size = max((float(np.max(np.abs(np.asarray(x, dtype=np.float64)), initial=0.0))
                for x in leaves.values), default=0.0)
    scale = max(scale, float(magnitude) / max(1.0, size))
    rows = []
    for name, x, m, r in zip(leaves.names, leaves.values, values, references):
        eps = float(jnp.finfo(x.dtype).eps)
        rows.append(compare(name, AUTODIFF, m, r, rtol=rtol, floor=_AD_FLOOR * eps * scale,
                            dtype=x.dtype if check_dtype else None))
    return rows


def _in_mode(fn: Callable, mode: str) -> Callable:
    def wrapped(*args):
        with gradient_mode(mode):
            return fn(*args)
    return wrapped


def _with_magnitude(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``y`` and ``max|y|``, the scale of its rounding error."""
    return y, jnp.max(jnp.abs(y), initial=0.0)


def _dot_and_magnitude(u: Any, y: Any) -> tuple[jax.Array, jax.Array]:
    """``⟨u, y⟩`` over all leaves, and ``Σ|u||y|`` (the scale of its rounding)."""
    pairs = list(zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(y)))
    dot = sum(jnp.vdot(a.astype(b.dtype), b) for a, b in pairs)
    mag = sum(jnp.vdot(jnp.abs(a).astype(b.dtype), jnp.abs(b)) for a, b in pairs)
    return dot, mag


# --------------------------------------------------------------------------- #
# The checks
# --------------------------------------------------------------------------- #


def vjp(f: Primitive | Callable, *args: Any, key: jax.Array | None = None,
        rtol: float | None = None, fd_rtol: float | None = None,
        finite_differences: bool = True, max_fd_elements: int = 256, directions: int = 4,
        jit: bool = False, **kwargs: Any) -> Report:
    """Check a VJP rule: manual vs ``jax.vjp`` of the reference vs finite differences.

    Args:
      f: a :class:`~fdl.primitive.Primitive` (its rule vs its plain forward), or any
        function built from fdl primitives (manual mode vs autodiff mode).
      *args, **kwargs: the arguments; static arguments of a primitive are held
        fixed, integer arguments are not differentiated, pytrees are allowed.
      key: PRNG key for the random cotangent and directions (default: a fixed seed).
      rtol: tolerance vs autodiff (default from the dtype, see module docs).
      fd_rtol: tolerance vs finite differences (default from the dtype).
      finite_differences: also compare with finite differences.
      max_fd_elements: leaves larger than this are checked along ``directions``
        random directions instead of element by element.
      jit: run the manual rule under ``jax.jit`` too (the reference and the finite
        differences always are); ``False`` runs it op by op.

    Returns:
      A :class:`Report` with one row per float leaf and reference. A primitive's
      backward returning a cotangent of the wrong shape (``∂L/∂W`` transposed) is
      reported as a failing row, not raised.
    """
    if isinstance(f, Primitive):
        full = f.bind(*args, **kwargs)
        names = list(f.signature.parameters)
        skip = f.static_argnums
        manual_fn, reference_fn = f.manual, f.forward
        title = f"fdl.check.vjp: {f.name}"
    else:
        full, names, skip = args, _arg_names(f, len(args)), ()
        manual_fn = _in_mode(lambda *a: f(*a, **kwargs), "manual")
        reference_fn = _in_mode(lambda *a: f(*a, **kwargs), "autodiff")
        title = f"fdl.check.vjp: {_name(f, 'f')} (manual vs autodiff mode)"
    leaves = _leaves(tuple(full), names, skip)
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])
    of_leaves = lambda fn: (lambda *vals: fn(*leaves.rebuild(vals)))
    plan = _plan(leaves, max_fd_elements, directions, key, finite_differences)
    # The cotangent comes from its own stream (salt 1), so data drawn from the same key
    # never doubles as it (u = x makes Xᵀu symmetric and hides a transposed ∂L/∂W).
    rng = _rng(key, 1)
    u = jax.tree_util.tree_map(
        lambda o: jnp.asarray(rng.standard_normal(o.shape).astype(o.dtype)),
        jax.eval_shape(of_leaves(reference_fn), *leaves.values))

    def pullback(fn, vals, u):
        return jax.vjp(of_leaves(fn), *vals)[1](u)

    def reference_part(vals, u, points):
        fd = _fd_evaluate(lambda v: _dot_and_magnitude(u, of_leaves(reference_fn)(*v)),
                          vals, plan, points)
        magnitude = _dot_and_magnitude(u, of_leaves(reference_fn)(*vals))[1]
        return pullback(reference_fn, vals, u), fd, magnitude

    def everything(vals, u, points):  # one program: reference, finite differences, rule
        return (*reference_part(vals, u, points), pullback(manual_fn, vals, u))

    try:
        if jit:
            reference, fd, magnitude, manual = _compiled(everything)(
                leaves.values, u, plan.points)
        else:
            reference, fd, magnitude = _compiled(reference_part)(leaves.values, u, plan.points)
            manual = pullback(manual_fn, leaves.values, u)
    except Exception as error:  # a backward of the wrong shape: report it, don't crash
        if not isinstance(f, Primitive):
            raise
        reference, fd, magnitude = _compiled(reference_part)(leaves.values, u, plan.points)
        manual = _diagnose_rule(f, full, leaves, u, error)
    rows = _ad_rows(leaves, manual, reference, magnitude, rtol=rtol)
    rows += _fd_rows(leaves, plan, _fd_derivatives(plan, fd), manual, rtol=fd_rtol)
    return Report(_title(title, leaves), _ordered(rows))


def _diagnose_rule(p: Primitive, full: tuple, leaves: _Leaves, u: Any,
                   error: Exception) -> list[Any]:
    """Call a primitive's backward directly, as ``jax.custom_vjp`` would, to find the
    cotangent of the wrong shape that JAX refused; re-raise ``error`` otherwise."""
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
                if _is_float(la)]
    return out


def grad(f: Callable, my_grad: Callable, *args: Any, rtol: float | None = None,
         fd_rtol: float | None = None, finite_differences: bool = True,
         max_fd_elements: int = 256, directions: int = 4, key: jax.Array | None = None,
         jit: bool = False) -> Report:
    """Check your hand-derived gradient of a scalar function against JAX.

    Args:
      f: scalar-valued function of ``*args`` (arrays or pytrees of arrays).
      my_grad: your gradient, ``my_grad(*args)``: for one argument, a value with the
        argument's structure; for several, a tuple with one entry per argument.
      *args: the point at which to check.
      rtol, fd_rtol, finite_differences, max_fd_elements, directions, key:
        as in :func:`vjp`.
      jit: call ``my_grad`` under ``jax.jit`` (the reference and the finite
        differences are always compiled).

    Returns:
      A :class:`Report`: your gradient vs ``jax.grad`` (autodiff mode for fdl
      primitives) and vs finite differences, one row per float leaf.

    Example::

        f = lambda w: jnp.sum(jnp.tanh(x @ w))
        my_grad = lambda w: x.T @ (1 - jnp.tanh(x @ w) ** 2)
        fdl.check.grad(f, my_grad, w).raise_if_failed()
    """
    names = _arg_names(f, len(args))
    leaves = _leaves(tuple(args), names)
    title = f"fdl.check.grad: {_name(my_grad, 'my_grad')} vs autodiff of {_name(f, 'f')}"
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])
    reference_fn = _in_mode(f, "autodiff")
    out = jax.eval_shape(reference_fn, *args)
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(
            f"check.grad: f must return a scalar, got {getattr(out, 'shape', out)}; "
            "use check.jacobian or check.vjp for vector-valued functions"
        )
    mine = _user_leaves(_maybe_jit(my_grad, jit)(*args), args, names, "check.grad: my_grad")
    of_leaves = lambda vals: reference_fn(*leaves.rebuild(vals))
    plan = _plan(leaves, max_fd_elements, directions, key, finite_differences)
    reference, fd, magnitude = _compiled(lambda vals, points: (
        jax.grad(of_leaves)(vals),
        _fd_evaluate(lambda v: _with_magnitude(of_leaves(v)), vals, plan, points),
        _with_magnitude(of_leaves(vals))[1],
    ))(leaves.values, plan.points)
    rows = _ad_rows(leaves, mine, reference, magnitude, rtol=rtol)
    rows += _fd_rows(leaves, plan, _fd_derivatives(plan, fd), mine, rtol=fd_rtol)
    return Report(_title(title, leaves), _ordered(rows))


def jacobian(f: Callable, my_jacobian: Callable, *args: Any, rtol: float | None = None,
             fd_rtol: float | None = None, finite_differences: bool = True,
             max_fd_elements: int = 256, directions: int = 4, key: jax.Array | None = None,
             jit: bool = False) -> Report:
    """Check your hand-derived Jacobian against ``jax.jacrev`` and finite differences.

    Args:
      f: function of array arguments returning one array ``y``.
      my_jacobian: ``my_jacobian(*args)``; for each argument ``x`` an array of shape
        ``y.shape + x.shape`` (``J[i…, j…] = ∂y[i…]/∂x[j…]``); a tuple for several
        arguments (any entry, e.g. ``None``, for an integer argument).
      *args: arrays at which to check.
      max_fd_elements, directions, key: arguments larger than ``max_fd_elements``
        are checked with finite differences along ``directions`` random ±1
        directions ``v`` (comparing ``J v``) instead of element by element.
      jit: call ``my_jacobian`` under ``jax.jit``.

    Returns:
      A :class:`Report`; the worst index is into the Jacobian (output index first),
      or ``(direction, output index…)`` for a row checked along random directions.
    """
    names = _arg_names(f, len(args))
    for name, a in zip(names, args):
        if not (hasattr(a, "shape") or isinstance(a, (int, float))):
            raise TypeError(
                f"check.jacobian: argument {name!r} must be an array, got "
                f"{type(a).__name__}; pass each array as its own argument (or use check.vjp "
                "for pytrees)"
            )
    leaves = _leaves(tuple(args), names)
    title = f"fdl.check.jacobian: {_name(my_jacobian, 'my_jacobian')} vs autodiff of " \
            f"{_name(f, 'f')}"
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])
    reference_fn = _in_mode(f, "autodiff")
    out = jax.eval_shape(reference_fn, *args)
    if not hasattr(out, "shape"):
        raise TypeError(
            f"check.jacobian: f must return one array, got {jax.tree_util.tree_structure(out)}"
        )
    given = _as_tuple(_maybe_jit(my_jacobian, jit)(*args), len(args),
                      "check.jacobian: my_jacobian")
    mine = [jnp.asarray(j) for j, a in zip(given, args) if _is_float(a)]
    of_leaves = lambda vals: reference_fn(*leaves.rebuild(vals))
    plan = _plan(leaves, max_fd_elements, directions, key, finite_differences)
    argnums = tuple(range(len(leaves.values)))
    reference, fd, magnitude = _compiled(lambda vals, points: (
        jax.jacrev(lambda *v: of_leaves(v), argnums=argnums)(*vals),
        _fd_evaluate(lambda v: _with_magnitude(of_leaves(v)), vals, plan, points),
        _with_magnitude(of_leaves(vals))[1],
    ))(leaves.values, plan.points)
    rows = _ad_rows(leaves, mine, reference, magnitude, rtol=rtol, check_dtype=False)
    rows += _fd_rows(leaves, plan, _fd_derivatives(plan, fd), mine, rtol=fd_rtol,
                     jacobian_of=tuple(out.shape))
    return Report(_title(title, leaves), _ordered(rows))


def model(loss_fn: Callable, params: Any, *batch: Any, rtol: float | None = None,
          fd_rtol: float | None = None, finite_differences: bool = True,
          directions: int = 2, key: jax.Array | None = None, jit: bool = True) -> Report:
    """Check a whole model: gradient with manual rules vs pure autodiff.

    Args:
      loss_fn: ``loss_fn(params, *batch) -> scalar`` built from fdl primitives.
      params: pytree of parameters (the gradient is taken w.r.t. it).
      *batch: the rest of the arguments (inputs, labels), held fixed.
      finite_differences: also compare directional derivatives along
        ``directions`` random directions per leaf with finite differences.
      jit: compute the manual-mode gradient under ``jax.jit`` (default); the
        autodiff reference and the finite differences are always compiled, in
        autodiff mode (the mode is part of the jit cache key, so they never share a
        compilation with the manual gradient).

    Returns:
      A :class:`Report` with one row per parameter leaf.
    """
    leaves = _leaves((params,), ["params"])
    title = f"fdl.check.model: {_name(loss_fn, 'loss_fn')}, manual rules vs autodiff"
    if not leaves.values:
        return Report(title + " — no float parameters", [])
    of_leaves = lambda vals: loss_fn(leaves.rebuild(vals)[0], *batch)
    with gradient_mode("autodiff"):
        out = jax.eval_shape(of_leaves, leaves.values)
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(
            f"check.model: loss_fn must return a scalar, got {getattr(out, 'shape', out)}"
        )
    plan = _plan(leaves, 0, directions, key, finite_differences)
    grad_fn = jax.grad(of_leaves)
    with gradient_mode("autodiff"):
        reference, fd, magnitude = _compiled(lambda vals, points: (
            grad_fn(vals),
            _fd_evaluate(lambda v: _with_magnitude(of_leaves(v)), vals, plan, points),
            _with_magnitude(of_leaves(vals))[1],
        ))(leaves.values, plan.points)
    with gradient_mode("manual"):
        manual = (_compiled(grad_fn) if jit else grad_fn)(leaves.values)
    rows = _ad_rows(leaves, manual, reference, magnitude, rtol=rtol)
    rows += _fd_rows(leaves, plan, _fd_derivatives(plan, fd), manual, rtol=fd_rtol)
    return Report(_title(title, leaves), _ordered(rows))
