"""Comparisons and reports: one array against its reference, and the table of them.

`compare` is the building block of every check: it judges a value under test
against a reference element by element (`|m − r| ≤ atol + rtol·|r|`) and returns a
`Comparison`, one row of a `Report`. A row records where the worst element is,
both values there, the errors, and the tolerance (and, for a finite-difference
row, the step) that was applied, so a failure never reads as a bare `False`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["AUTODIFF", "FINITE_DIFFERENCES", "CheckFailed", "Comparison", "Report", "compare",
           "tolerance"]

AUTODIFF, FINITE_DIFFERENCES = "autodiff", "finite differences"

# dtype name -> relative tolerance of a value under test against an exact reference:
# a few hundred ε in float64, about a hundred ε in float32, the half types' accuracy.
_TOLERANCES = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-2}


def tolerance(dtype: Any, against: str = AUTODIFF) -> float:
    """Default relative tolerance for values of `dtype`.

    Against autodiff this is the whole relative tolerance. Against finite
    differences it is the part that covers the value's own rounding: each
    element's estimated finite-difference error is added to it (see `fdl.check`).

    Args:
      dtype: the dtype of the value under test (or of its argument).
      against: `"autodiff"` or `"finite differences"`.
    """
    if against not in (AUTODIFF, FINITE_DIFFERENCES):
        raise ValueError(f"tolerance: against must be {AUTODIFF!r} or {FINITE_DIFFERENCES!r}, "
                         f"got {against!r}")
    name = jnp.dtype(dtype).name
    if name not in _TOLERANCES:
        raise ValueError(f"tolerance: no default for dtype {name}; pass rtol explicitly")
    return _TOLERANCES[name]


class CheckFailed(AssertionError):
    """Raised by `Report.raise_if_failed`; the message is the report."""


@dataclass(frozen=True)
class Comparison:
    """One leaf compared with one reference.

    Attributes:
      name: argument or pytree leaf (`"w"`, `"params['dense_0']['w']"`).
      against: the reference (`"autodiff"`, `"finite differences"`, …).
      shape, dtype: of the value under test.
      max_abs: `max |m − r|`.
      max_rel: `max |m − r| / max |r|` (leaf-wise relative error).
      index: index of the worst element (largest error relative to its tolerance).
      value, reference: the value under test and the reference at `index`.
      rtol, atol: the tolerance applied at `index` (`atol` may differ per element:
        for a finite-difference row it includes that element's estimated error).
      passed: every element within `atol + rtol·|r|` (and no `problem`).
      problem: why the values could not be compared or fail regardless of the
        tolerance (shape or dtype mismatch, non-finite values); `""` if none.
      step: the finite-difference step used at `index` (`None` for other rows).
      note: what the row did not judge or had to avoid, which does not fail it
        (finite differences that stepped around switching points, directions not
        differentiable within reach); `""` if nothing.
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
    step: float | None = None
    note: str = ""

    def describe(self) -> str:
        """One sentence: where and by how much this row fails (or that it passed)."""
        verdict = "passed" if self.passed else "FAILED"
        head = f"{self.name} vs {self.against} {verdict}"
        if self.index is None:
            return f"{head}: {self.problem}" if self.problem else head
        step = "" if self.step is None else f", step {self.step:.2g}"
        text = (
            f"{head}: worst element {_idx(self.index)} is {self.value:.12g}, reference "
            f"{self.reference:.12g} (abs err {self.max_abs:.3g}, rel err {self.max_rel:.3g}; "
            f"tolerance rtol {self.rtol:.1g}, atol {self.atol:.2g}{step})"
        )
        text = f"{text}; {self.problem}" if self.problem else text
        return f"{text}; {self.note}" if self.note else text


def _idx(index: tuple | None) -> str:
    if index is None:
        return "-"
    return "(" + ", ".join(str(i) for i in index) + ("," if len(index) == 1 else "") + ")"


@dataclass
class Report:
    """The outcome of a check: a list of `Comparison` rows and a title.

    `problem` says why the check fails whatever its rows say (`"compared nothing: no
    hand-written rule ran"` when the two sides are the same computation); `""` if
    nothing.
    """

    title: str
    rows: list[Comparison]
    problem: str = ""

    @property
    def passed(self) -> bool:
        """True when every row passed, there is at least one row, and no `problem`."""
        return bool(self.rows) and not self.problem and all(r.passed for r in self.rows)

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
        """Raise `CheckFailed` with the full report if any row failed."""
        if not self.passed:
            raise CheckFailed(str(self))
        return self

    def __str__(self) -> str:
        head = ("argument", "shape", "dtype", "against", "max abs err", "max rel err",
                "worst at", "value", "reference", "rtol", "atol", "step", "")
        body = [
            (r.name, str(r.shape), r.dtype, r.against, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}",
             _idx(r.index), f"{r.value:.10g}", f"{r.reference:.10g}", f"{r.rtol:.0e}",
             f"{r.atol:.1e}", "-" if r.step is None else f"{r.step:.1e}",
             "ok" if r.passed else "FAIL")
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
        lines = [self.title, fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, body)]
        failures = self.failures
        lines += [f"note: {r.name} vs {r.against}: {r.note}" for r in self.rows if r.note]
        if not self.rows:
            lines.append("FAILED: nothing was compared (no differentiable float argument)")
        elif self.problem:
            lines.append(f"FAILED: {self.problem}")
            lines += ["  " + r.describe() for r in failures]
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


def _at(a: Any, index: tuple | None) -> float | None:
    """`a` at `index` when `a` is an array of the compared shape, else `a` itself."""
    if a is None or np.ndim(a) == 0 or index is None:
        return None if a is None or np.ndim(a) else float(a)
    return float(np.asarray(a)[index])


def compare(name: str, against: str, value: Any, reference: Any, *,
            rtol: float | None = None, atol: float | np.ndarray | None = None,
            floor: float = 0.0, dtype: Any = None,
            step: float | np.ndarray | None = None) -> Comparison:
    """Compare one array with its reference (the building block of every check).

    Args:
      name: what is compared (shown in the report).
      against: what the reference is (`"autodiff"`, `"finite differences"`, …).
      value: the array under test.
      reference: the reference array.
      rtol: relative tolerance; default from `tolerance` for `dtype`.
      atol: absolute tolerance, a number or one per element (shaped like
        `reference`); default `rtol·max|reference| + floor`.
      floor: noise floor added to the default `atol`.
      dtype: the dtype `value` must have (its argument's); a different dtype
        fails the row. Default: the value's own dtype, which then picks `rtol`.
      step: the finite-difference step, a number or one per element, reported at
        the worst element.
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
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), r.shape)
    if m.size == 0:
        return Comparison(name, against, m.shape, value_dtype.name, 0.0, 0.0, None, np.nan,
                          np.nan, rtol, float(np.max(atol, initial=0.0)), True)
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
                      float(m[index]), float(r[index]), rtol, float(atol[index]),
                      passed and not problems, "; ".join(problems),
                      None if step is None else float(np.broadcast_to(step, r.shape)[index]))


def _hints(m: np.ndarray, r: np.ndarray, atol: np.ndarray, rtol: float) -> list[str]:
    """Recognisable mistakes: a transposed square matrix, a constant factor."""
    def close(a: np.ndarray, b: np.ndarray, at: np.ndarray) -> bool:
        return bool(np.all(np.abs(a - b) <= at + rtol * np.abs(b)))

    if m.ndim == 2 and m.shape[0] == m.shape[1] > 1 and close(m, r.T, atol.T):
        return ["hint: the value is the reference transposed"]
    # a constant factor explains the failure only where most elements fail
    most_fail = np.mean(np.abs(m - r) > atol + rtol * np.abs(r)) > 0.5
    if m.size > 1 and most_fail and np.all(np.isfinite(m)) and np.all(np.isfinite(r)):
        big = np.argmax(np.abs(r))
        if r.flat[big] != 0:
            c = m.flat[big] / r.flat[big]
            if c != 1 and np.isfinite(c) and c != 0 and close(m, c * r, atol):
                return [f"hint: the value is {c:.6g} × the reference (a constant factor)"]
    return []
