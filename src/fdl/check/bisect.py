"""Bisection of a failing model check: the first primitive whose rule diverges.

When `fdl.check.model` finds the manual gradient of a model different from the
autodiff one, this module says where: it taps every primitive call on the model's
path with zero perturbations, `p(x₁ + ε₁, …) + ε_y`, and differentiates the loss
with respect to the ε in each gradient mode. `∂L/∂ε_y` is the cotangent flowing
into the call (its incoming `∂L/∂y`) and `∂L/∂εⱼ` the cotangent its rule sends to
argument `j` (each ε is used by that call alone). Walking the calls back from the
loss (reverse forward order, an order of the backward pass), the first call whose
outgoing cotangents differ between the modes while its incoming one agrees has the
wrong rule: every call nearer the loss agreed, so its input was right and its
output is not.

The taps cost nothing unless a check fails: they are traced only then, through
`fdl.recording.recording`, and the layer combinators name each call's layer path
through `fdl.recording.layer_scope`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fdl.check.arguments import compiled, in_mode
from fdl.check.report import AUTODIFF, Comparison, Report, compare
from fdl.primitive import Primitive
from fdl.recording import layer_path, recording

_FLOOR = 100.0  # × ε × the call's largest cotangent: roundoff of a backward


@dataclass(frozen=True)
class Divergence:
    """The first primitive call, walking back from the loss, whose hand-written rule
    sends a cotangent that differs from autodiff's while its incoming one agrees.

    Attributes:
      primitive: the primitive's registry name (`"linear"`).
      path: the layer path it ran under, outermost first (`("serial", "dense_2")`);
        empty outside the layer combinators.
      call: its position among the model's primitive calls, in forward order.
      argument: the argument whose cotangent differs most (`"w"`, `"state[0]"`).
      index: that cotangent's worst element.
      manual: the hand-written rule's value there.
      autodiff: autodiff's value there.
      rel_error: the leaf-wise relative error `max|m − r| / max|r|` of that cotangent.
      incoming_error: the same for the incoming cotangent `∂L/∂y` (within tolerance).
      problem: what else the comparison saw (a wrong dtype, a non-finite value, a
        hint such as a constant factor); `""` if nothing.
    """

    primitive: str
    path: tuple[str, ...]
    call: int
    argument: str
    index: tuple[int, ...] | None
    manual: float
    autodiff: float
    rel_error: float
    incoming_error: float
    problem: str = ""

    @property
    def where(self) -> str:
        """`serial/dense_2 → linear` (or the primitive's name alone)."""
        return f"{'/'.join(self.path)} → {self.primitive}" if self.path else self.primitive

    def __str__(self) -> str:
        at = "" if not self.index else \
            " at (" + ", ".join(map(str, self.index)) + ("," if len(self.index) == 1 else "") + ")"
        return (f"{self.where}, ∂L/∂{self.argument}{at}: manual {self.manual:.10g}, "
                f"autodiff {self.autodiff:.10g} (relative error {self.rel_error:.1e}; incoming "
                f"∂L/∂y agrees to {self.incoming_error:.0e})"
                + (f"; {self.problem.replace('the reference', 'autodiff')}" if self.problem
                   else ""))


@dataclass(repr=False)
class ModelReport(Report):
    """A model check's `Report`, with where a failing one first diverges.

    `divergence` is set when the manual gradient differs from autodiff and one
    primitive call explains it; `note` says why none was named otherwise.
    """

    divergence: Divergence | None = None
    note: str = ""

    def __str__(self) -> str:
        text = super().__str__()
        if self.divergence is not None:
            text += f"\nfirst divergence: {self.divergence}"
        elif self.note:
            text += f"\nfirst divergence: {self.note}"
        return text

    __repr__ = __str__


# --------------------------------------------------------------------------- #
# Taps
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Call:
    """One primitive call as traced: its name, layer path, and tapped leaves."""

    primitive: str
    path: tuple[str, ...]
    inputs: tuple[str, ...]  # names of the tapped argument leaves
    in_avals: tuple  # (shape, dtype) per tapped argument leaf
    out_avals: tuple  # (shape, dtype) per tapped output leaf


def _tappable(x: Any) -> bool:
    return hasattr(x, "dtype") and hasattr(x, "shape") and jnp.issubdtype(x.dtype, jnp.inexact)


def _aval(x: Any) -> tuple:
    return tuple(x.shape), jnp.dtype(x.dtype)


class _Mismatch(Exception):
    """The traced calls differ from the discovered ones (the model is not a fixed
    sequence of primitive calls, e.g. it traces a loop body twice)."""


class _Recorder:
    """`recorder(p, args, run)` for `fdl.recording.recording`: records each call and,
    given perturbations `eps[k] = (ε_args, ε_y)`, adds them to call `k`."""

    def __init__(self, eps: Sequence[tuple[list, list]] | None = None) -> None:
        self.calls: list[_Call] = []
        self.eps = eps

    def __call__(self, p: Primitive, full: tuple, run: Callable[[tuple], Any]) -> Any:
        k = len(self.calls)
        if self.eps is not None and k >= len(self.eps):
            raise _Mismatch(f"call {k} ({p.name}) was not seen when the calls were counted")
        eps_in, eps_out = self.eps[k] if self.eps is not None else ([], [])
        names = list(p.signature.parameters)
        args, in_names, in_avals = list(full), [], []
        for i, a in enumerate(full):
            if i in p.static_argnums:
                continue
            paths, tree = jax.tree_util.tree_flatten_with_path(a)
            leaves = []
            for path, leaf in paths:
                if _tappable(leaf):
                    if self.eps is not None:
                        leaf = leaf + self._check(eps_in[len(in_avals)], leaf, p)
                    in_names.append(names[i] + jax.tree_util.keystr(path))
                    in_avals.append(_aval(leaf))
                leaves.append(leaf)
            args[i] = jax.tree_util.tree_unflatten(tree, leaves)
        with recording(None):  # primitives inside this one's rules are not calls of the model
            y = run(tuple(args))
        out_leaves, out_tree = jax.tree_util.tree_flatten(y)
        out_avals = []
        for j, leaf in enumerate(out_leaves):
            if _tappable(leaf):
                if self.eps is not None:
                    out_leaves[j] = leaf + self._check(eps_out[len(out_avals)], leaf, p)
                out_avals.append(_aval(leaf))
        self.calls.append(_Call(p.name, layer_path(), tuple(in_names), tuple(in_avals),
                                tuple(out_avals)))
        return jax.tree_util.tree_unflatten(out_tree, out_leaves)

    @staticmethod
    def _check(e: Any, leaf: Any, p: Primitive) -> Any:
        if _aval(e) != _aval(leaf):
            raise _Mismatch(f"{p.name}: a tapped value is {_aval(leaf)}, expected {_aval(e)}")
        return e


def _discover(of_leaves: Callable, values: list, mode: str) -> list[_Call]:
    rec = _Recorder()

    def traced(vals):
        with recording(rec):
            return of_leaves(vals)

    jax.eval_shape(in_mode(traced, mode), values)
    return rec.calls


def _cotangents(of_leaves: Callable, values: list, calls: list[_Call], mode: str,
                jit: bool) -> list:
    """`[(∂L/∂ε_args, ∂L/∂ε_y)]` per call, in gradient mode `mode`."""
    eps = [([jnp.zeros(s, d) for s, d in c.in_avals], [jnp.zeros(s, d) for s, d in c.out_avals])
           for c in calls]

    def loss(e, vals):
        with recording(_Recorder(e)):
            return of_leaves(vals)

    fn = in_mode(jax.grad(loss), mode)
    return (compiled(fn) if jit or mode == "autodiff" else fn)(eps, values)


# --------------------------------------------------------------------------- #
# The walk back from the loss
# --------------------------------------------------------------------------- #


def _compare_all(names: Sequence[str], manual: Sequence[Any], reference: Sequence[Any],
                 rtol: float | None, scale: float) -> list[Comparison]:
    rows = []
    for name, m, r in zip(names, manual, reference):
        eps = float(jnp.finfo(jnp.result_type(r)).eps)
        rows.append(compare(name, AUTODIFF, m, r, rtol=rtol, floor=_FLOOR * eps * scale))
    return rows


def _scale(*groups: Sequence[Any]) -> float:
    return max((float(np.max(np.abs(np.asarray(a, np.float64)), initial=0.0))
                for g in groups for a in g), default=0.0)


def locate(of_leaves: Callable, values: list, *, rtol: float | None = None,
           jit: bool = True) -> tuple[Divergence | None, str]:
    """The first call, walking back from the loss, whose manual and autodiff
    cotangents diverge while its incoming cotangent agrees.

    Args:
      of_leaves: `of_leaves(values) -> scalar loss`, built from fdl primitives.
      values: the float leaves differentiated (the model's parameters).
      rtol: the relative tolerance of the comparisons (default: by dtype).
      jit: compile the manual-mode pass (the autodiff one always is).

    Returns:
      `(divergence, note)`: the `Divergence`, or `None` and a note saying why no
      call was named.
    """
    calls = _discover(of_leaves, values, "manual")
    if not calls:
        return None, "no fdl primitive on the model's path"
    if calls != _discover(of_leaves, values, "autodiff"):
        return None, "not located: the model calls different primitives in the two modes"
    try:
        manual = _cotangents(of_leaves, values, calls, "manual", jit)
        reference = _cotangents(of_leaves, values, calls, "autodiff", jit)
    except _Mismatch as e:
        return None, f"not located: the model's primitive calls change between traces ({e})"
    nearest = ""  # the call nearest the loss that sends a diverging cotangent
    for k in reversed(range(len(calls))):
        call, (m_in, m_out), (r_in, r_out) = calls[k], manual[k], reference[k]
        scale = _scale(r_in, r_out)
        incoming = _compare_all(["y"] * len(r_out), m_out, r_out, rtol, scale)
        outgoing = _compare_all(call.inputs, m_in, r_in, rtol, scale)
        failed = [row for row in outgoing if not row.passed]
        if not failed:
            continue
        worst = max(failed, key=lambda row: row.max_rel)
        incoming_error = max((row.max_rel for row in incoming), default=0.0)
        if all(row.passed for row in incoming):
            return Divergence(call.primitive, call.path, k, worst.name, worst.index,
                              worst.value, worst.reference, worst.max_rel, incoming_error,
                              worst.problem), ""
        if not nearest:
            where = "/".join(call.path) + " → " if call.path else ""
            nearest = (f"{where}{call.primitive} (∂L/∂{worst.name} differs by "
                       f"{worst.max_rel:.1e} relative, its incoming ∂L/∂y by {incoming_error:.1e})")
    if nearest:
        return None, ("not located: no call receives an agreeing cotangent and sends a "
                      "diverging one (a call inside a loop, such as lax.scan, is tapped once "
                      "for all its iterations, so a wrong rule whose output feeds back through "
                      f"the loop is not isolated); the call nearest the loss that sends a "
                      f"diverging cotangent is {nearest}")
    return None, ("not located: every primitive's cotangents agree with autodiff within "
                  "tolerance (the difference builds up across calls)")
