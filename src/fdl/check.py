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
row passed; ``report.raise_if_failed()`` is the raising form for tests.

Tolerances
----------
An element passes when ``|m − r| ≤ atol + rtol·|r|`` where ``m`` is the value
under test, ``r`` the reference, and, unless given, ``atol = rtol·max|r|`` over
the leaf (so values near zero are judged against the leaf's scale, not their
own). The reported *relative error* is leaf-wise, ``max|m − r| / max|r|``.
Defaults depend on the dtype of the value under test:

=========  ================  ====================
dtype      vs autodiff       vs finite differences
=========  ================  ====================
float64    1e-10             1e-8
float32    1e-5              1e-4
bf16/f16   2e-2              5e-2
=========  ================  ====================

Finite differences are central, Richardson-extrapolated (``(4D(h/2) − D(h))/3``,
error ``O(h⁴)``), with step ``h = ε^{1/5}·max(1, |x|)`` from the dtype's machine
epsilon ``ε``; when ``jax_enable_x64`` is on they are evaluated in float64 even
for float32 arguments. Leaves with more than ``max_fd_elements`` elements are
checked along random directions instead of element by element. Points where the
function has a kink (ReLU at 0) are not differentiable and finite differences
disagree there; the built-in examples avoid them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fdl.primitive import Primitive, gradient_mode

__all__ = ["CheckFailed", "Comparison", "Report", "grad", "jacobian", "model", "tolerance", "vjp"]

_TOLERANCES = {  # dtype name -> (rtol vs autodiff, rtol vs finite differences)
    "float64": (1e-10, 1e-8),
    "float32": (1e-5, 1e-4),
    "bfloat16": (2e-2, 5e-2),
    "float16": (2e-2, 5e-2),
}


def tolerance(dtype: Any, against: str = "autodiff") -> float:
    """Default relative tolerance for values of ``dtype`` compared with ``against``
    (``"autodiff"`` or ``"finite differences"``)."""
    name = jnp.dtype(dtype).name
    if name not in _TOLERANCES:
        raise ValueError(f"tolerance: no default for dtype {name}; pass rtol explicitly")
    return _TOLERANCES[name][0 if against == "autodiff" else 1]


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
      passed: every element within ``atol + rtol·|r|``.
      problem: set when the values could not be compared (shape mismatch, NaN).
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
        if self.problem:
            return f"{self.name} vs {self.against}: {self.problem}"
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{self.name} vs {self.against} {verdict}: worst element {_idx(self.index)} is "
            f"{self.value:.12g}, reference {self.reference:.12g} (abs err {self.max_abs:.3g}, "
            f"rel err {self.max_rel:.3g}, tolerance rtol {self.rtol:.1g})"
        )


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
        """The rows that failed."""
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
                "worst at", "value", "reference", "rtol", "")
        body = [
            (r.name, str(r.shape), r.dtype, r.against, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}",
             _idx(r.index), f"{r.value:.10g}", f"{r.reference:.10g}", f"{r.rtol:.0e}",
             "ok" if r.passed else "FAIL")
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


def compare(name: str, against: str, value: Any, reference: Any, *,
            rtol: float | None = None, atol: float | None = None) -> Comparison:
    """Compare one array with its reference (the building block of every check).

    Args:
      name: what is compared (shown in the report).
      against: what the reference is.
      value: the array under test (its dtype picks the default tolerance).
      reference: the reference array.
      rtol, atol: tolerances; defaults from :func:`tolerance` and ``rtol·max|r|``.
    """
    dtype = jnp.result_type(value)
    if rtol is None:
        rtol = tolerance(dtype, "autodiff" if against == "autodiff" else "fd")
    m = np.asarray(value, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if m.shape != r.shape:
        hint = " (transposed?)" if m.shape == r.shape[::-1] else ""
        return Comparison(name, against, m.shape, dtype.name, np.inf, np.inf, None, np.nan,
                          np.nan, rtol, np.nan, False,
                          f"shape {m.shape} but the reference has shape {r.shape}{hint}")
    finite_r = np.isfinite(r)
    scale = float(np.max(np.abs(r[finite_r]), initial=0.0))
    if atol is None:
        atol = rtol * scale
    err = np.abs(m - r)
    err = np.where(np.isnan(m) & np.isnan(r), 0.0, err)  # NaN in both agrees
    err = np.where(np.isnan(err), np.inf, err)
    tol = atol + rtol * np.abs(np.where(finite_r, r, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / tol)
    if m.size == 0:
        return Comparison(name, against, m.shape, dtype.name, 0.0, 0.0, None, np.nan, np.nan,
                          rtol, atol, True)
    flat = int(np.argmax(ratio))
    index = tuple(int(i) for i in np.unravel_index(flat, m.shape))
    max_abs = float(np.max(err))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else np.inf)
    passed = bool(np.all(ratio <= 1.0))
    problem = ""
    if not np.all(np.isfinite(m[finite_r])):
        problem = f"non-finite value {m[index]} at {_idx(index)} where the reference is finite"
    return Comparison(name, against, m.shape, dtype.name, max_abs, max_rel, index,
                      float(m[index]), float(r[index]), rtol, atol, passed, problem)


# --------------------------------------------------------------------------- #
# Finite differences
# --------------------------------------------------------------------------- #


def _fd_dtype(dtype: Any) -> Any:
    return jnp.float64 if jax.config.jax_enable_x64 else dtype


def _fd_directional(fun: Callable, x: jax.Array, directions: jax.Array) -> jax.Array:
    """Richardson-extrapolated central differences of ``fun`` at ``x`` along each
    row of ``directions`` (shape ``(k, *x.shape)``); returns ``(k, *out_shape)``."""
    dt = _fd_dtype(x.dtype)
    x = x.astype(dt)
    directions = directions.astype(dt)
    h = float(jnp.finfo(dt).eps) ** 0.2 * jnp.maximum(1.0, jnp.max(jnp.abs(x)))
    steps = jnp.stack([h, -h, h / 2, -h / 2])
    points = x[None, None] + steps.reshape((4, 1) + (1,) * x.ndim) * directions[None]
    shape = points.shape
    values = jax.vmap(fun)(points.reshape((-1,) + x.shape))
    values = values.reshape(shape[:2] + values.shape[1:]).astype(dt)
    d1 = (values[0] - values[1]) / (2 * h)
    d2 = (values[2] - values[3]) / h
    return (4 * d2 - d1) / 3


def _fd_elements(fun: Callable, x: jax.Array) -> jax.Array:
    """Partial derivatives of ``fun`` w.r.t. every element of ``x``:
    ``(*x.shape, *out_shape)``."""
    n = x.size
    basis = jnp.eye(n, dtype=_fd_dtype(x.dtype)).reshape((n,) + x.shape)
    d = _fd_directional(fun, x, basis)
    return d.reshape(x.shape + d.shape[1:])


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

    def rebuild(self, values: Sequence[Any]) -> Any:
        leaves = list(self.all_leaves)
        for pos, val in zip(self.positions, values):
            leaves[pos] = val
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _leaves(tree: Any, names: Sequence[str], skip: Sequence[int] = ()) -> _Leaves:
    """Float leaves of ``tree`` (a tuple of arguments), named ``arg`` or ``arg[path]``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = _Leaves([], [], [], [leaf for _, leaf in paths], treedef)
    for pos, (path, leaf) in enumerate(paths):
        argnum = path[0].idx
        if argnum in skip or not _is_float(leaf):
            continue
        base = names[argnum] if argnum < len(names) else f"arg{argnum}"
        out.names.append(base + jax.tree_util.keystr(path[1:]))
        out.values.append(jnp.asarray(leaf))
        out.positions.append(pos)
    return out


def _arg_names(f: Callable, n: int) -> list[str]:
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (names + [f"arg{i}" for i in range(len(names), n)])[:n]


def _maybe_jit(fn: Callable, use_jit: bool) -> Callable:
    return jax.jit(fn) if use_jit else fn


def _fd_rows(scalar_fn: Callable, leaves: _Leaves, expected: Sequence[Any], *,
             rtol: float | None, key: jax.Array, max_fd_elements: int,
             directions: int) -> list[Comparison]:
    """Finite-difference rows for gradients of the scalar ``scalar_fn(leaf values)``:
    ``expected[i]`` is the gradient under test for leaf ``i``. Small leaves are
    compared element by element, large ones along random ±1 directions."""
    rows = []
    fd_leaves = [x.astype(_fd_dtype(x.dtype)) for x in leaves.values]
    for i, (name, x) in enumerate(zip(leaves.names, fd_leaves)):
        def along(xi, i=i):
            vals = list(fd_leaves)
            vals[i] = xi
            return scalar_fn(vals)

        g = jnp.asarray(expected[i])
        if x.size <= max_fd_elements:
            rows.append(compare(name, "finite differences", g, _fd_elements(along, x),
                                rtol=rtol))
            continue
        key, sub = jax.random.split(key)
        v = jax.random.rademacher(sub, (directions,) + x.shape, dtype=x.dtype)
        projected = jnp.tensordot(v, g.astype(x.dtype), axes=x.ndim).astype(g.dtype)
        rows.append(compare(f"{name} ({directions} random directions)", "finite differences",
                            projected, _fd_directional(along, x, v), rtol=rtol))
    return rows


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
      key: PRNG key for the random cotangent (default ``jax.random.key(0)``).
      rtol: tolerance vs autodiff (default from the dtype, see module docs).
      fd_rtol: tolerance vs finite differences (default from the dtype).
      finite_differences: also compare with finite differences.
      max_fd_elements: leaves larger than this are checked along ``directions``
        random directions instead of element by element.
      jit: run the VJPs under ``jax.jit``.

    Returns:
      A :class:`Report` with one row per float leaf and reference.
    """
    key = jax.random.key(0) if key is None else key
    if isinstance(f, Primitive):
        full = f.bind(*args, **kwargs)
        names = list(f.signature.parameters)
        skip = f.static_argnums
        manual_fn = f.manual
        reference_fn = f.forward
        title = f"fdl.check.vjp: {f.name}"
    else:
        full, names, skip = args, _arg_names(f, len(args)), ()
        manual_fn = _in_mode(lambda *a: f(*a, **kwargs), "manual")
        reference_fn = _in_mode(lambda *a: f(*a, **kwargs), "autodiff")
        title = f"fdl.check.vjp: {getattr(f, '__name__', repr(f))} (manual vs autodiff mode)"
    leaves = _leaves(tuple(full), names, skip)
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])

    def of_leaves(fn):
        return lambda *vals: fn(*leaves.rebuild(vals))

    out = reference_fn(*full)
    u = jax.tree_util.tree_map(lambda o: jax.random.normal(key, jnp.shape(o), o.dtype), out)

    def pullback(fn):
        def run(vals, u):
            _, back = jax.vjp(of_leaves(fn), *vals)
            return back(u)
        return _maybe_jit(run, jit)(leaves.values, u)

    manual = pullback(manual_fn)
    reference = pullback(reference_fn)
    rows = [compare(n, "autodiff", m, r, rtol=rtol)
            for n, m, r in zip(leaves.names, manual, reference)]
    if finite_differences:
        def cotangent_dot_output(vals):  # ⟨u, f(x)⟩, whose gradient is the VJP
            y = of_leaves(reference_fn)(*vals)
            return sum(jnp.vdot(a.astype(b.dtype), b) for a, b in
                       zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(y)))

        rows += _fd_rows(cotangent_dot_output, leaves, manual, rtol=fd_rtol, key=key,
                         max_fd_elements=max_fd_elements, directions=directions)
    return Report(_order_title(title, leaves, rows), _ordered(rows))


def _order_title(title: str, leaves: _Leaves, rows: list[Comparison]) -> str:
    dtypes = sorted({str(v.dtype) for v in leaves.values})
    return f"{title}  [{', '.join(dtypes)}]"


def _ordered(rows: list[Comparison]) -> list[Comparison]:
    """Group rows by argument, autodiff before finite differences."""
    order = {}
    for r in rows:
        order.setdefault(r.name.split(" (")[0], len(order))
    return sorted(rows, key=lambda r: (order[r.name.split(" (")[0]], r.against != "autodiff"))


def _in_mode(fn: Callable, mode: str) -> Callable:
    def wrapped(*args):
        with gradient_mode(mode):
            return fn(*args)
    return wrapped


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
      rtol, fd_rtol, finite_differences, max_fd_elements, directions, key, jit:
        as in :func:`vjp`.

    Returns:
      A :class:`Report`: your gradient vs ``jax.grad`` (autodiff mode for fdl
      primitives) and vs finite differences, one row per float leaf.

    Example::

        f = lambda w: jnp.sum(jnp.tanh(x @ w))
        my_grad = lambda w: x.T @ (1 - jnp.tanh(x @ w) ** 2)
        fdl.check.grad(f, my_grad, w).raise_if_failed()
    """
    key = jax.random.key(0) if key is None else key
    names = _arg_names(f, len(args))
    leaves = _leaves(tuple(args), names)
    title = f"fdl.check.grad: {getattr(my_grad, '__name__', 'my_grad')} vs autodiff of " \
            f"{getattr(f, '__name__', 'f')}"
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])
    reference_fn = _in_mode(f, "autodiff")
    out = jax.eval_shape(reference_fn, *args)
    if out.shape != ():
        raise ValueError(
            f"check.grad: f must return a scalar, got shape {out.shape}; "
            "use check.jacobian for vector-valued functions"
        )
    mine = _user_leaves(_maybe_jit(my_grad, jit)(*args), args, names, "check.grad: my_grad")
    of_leaves = lambda vals: reference_fn(*leaves.rebuild(vals))
    reference = _maybe_jit(jax.grad(of_leaves), jit)(leaves.values)
    rows = [compare(n, "autodiff", m, r, rtol=rtol)
            for n, m, r in zip(leaves.names, mine, reference)]
    if finite_differences:
        rows += _fd_rows(of_leaves, leaves, mine, rtol=fd_rtol, key=key,
                         max_fd_elements=max_fd_elements, directions=directions)
    return Report(_order_title(title, leaves, rows), _ordered(rows))


def jacobian(f: Callable, my_jacobian: Callable, *args: Any, rtol: float | None = None,
             fd_rtol: float | None = None, finite_differences: bool = True,
             max_fd_elements: int = 256, jit: bool = False) -> Report:
    """Check your hand-derived Jacobian against ``jax.jacrev`` and finite differences.

    Args:
      f: function of array arguments returning one array ``y``.
      my_jacobian: ``my_jacobian(*args)``; for each argument ``x`` an array of shape
        ``y.shape + x.shape`` (``J[i…, j…] = ∂y[i…]/∂x[j…]``); a tuple for several
        arguments.
      *args: arrays at which to check.

    Returns:
      A :class:`Report`; the worst index is into the Jacobian (output index first).
    """
    names = _arg_names(f, len(args))
    leaves = _leaves(tuple(args), names)
    title = f"fdl.check.jacobian: {getattr(my_jacobian, '__name__', 'my_jacobian')} vs " \
            f"autodiff of {getattr(f, '__name__', 'f')}"
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])
    reference_fn = _in_mode(f, "autodiff")
    out = jax.eval_shape(reference_fn, *args)
    mine = [jnp.asarray(j) for j in _as_tuple(_maybe_jit(my_jacobian, jit)(*args),
                                              len(args), "check.jacobian: my_jacobian")]
    mine = [j for j, a in zip(mine, args) if _is_float(a)]
    of_leaves = lambda vals: reference_fn(*leaves.rebuild(vals))
    argnums = tuple(range(len(leaves.values)))
    reference = _maybe_jit(jax.jacrev(lambda *v: of_leaves(v), argnums=argnums), jit)(
        *leaves.values)
    rows = [compare(n, "autodiff", m, r, rtol=rtol)
            for n, m, r in zip(leaves.names, mine, reference)]
    if finite_differences:
        for i, (name, x) in enumerate(zip(leaves.names, leaves.values)):
            if x.size > max_fd_elements:
                continue

            def along(xi, i=i):
                vals = [v.astype(_fd_dtype(v.dtype)) for v in leaves.values]
                vals[i] = xi
                return of_leaves(vals)

            fd = _fd_elements(along, x)  # (*x.shape, *out.shape)
            fd = jnp.moveaxis(fd.reshape((x.size,) + out.shape), 0, -1).reshape(
                out.shape + x.shape)
            rows.append(compare(name, "finite differences", mine[i], fd, rtol=fd_rtol))
    return Report(_order_title(title, leaves, rows), _ordered(rows))


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
      jit: compute the gradients under ``jax.jit`` (default; the gradient mode is
        part of the jit cache key, so both modes compile separately).

    Returns:
      A :class:`Report` with one row per parameter leaf.
    """
    key = jax.random.key(0) if key is None else key
    leaves = _leaves((params,), ["params"])
    title = f"fdl.check.model: {getattr(loss_fn, '__name__', 'loss_fn')}, manual rules vs autodiff"
    if not leaves.values:
        return Report(title + " — no float parameters", [])
    of_leaves = lambda vals: loss_fn(leaves.rebuild(vals)[0], *batch)
    grad_fn = _maybe_jit(jax.grad(of_leaves), jit)
    with gradient_mode("manual"):
        manual = grad_fn(leaves.values)
    with gradient_mode("autodiff"):
        reference = grad_fn(leaves.values)
    rows = [compare(n, "autodiff", m, r, rtol=rtol)
            for n, m, r in zip(leaves.names, manual, reference)]
    if finite_differences:
        rows += _fd_rows(_in_mode(of_leaves, "autodiff"), leaves, manual, rtol=fd_rtol,
                         key=key, max_fd_elements=0, directions=directions)
    return Report(_order_title(title, leaves, rows), _ordered(rows))
