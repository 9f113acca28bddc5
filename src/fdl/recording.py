"""A hook that sees every primitive call while it is traced (for `fdl.check.model`).

`recording(recorder)` routes every primitive call traced inside it through
`recorder(p, args, run)`, and the layer combinators name the layer each call runs
under (`layer_scope`, `layer_path`). `fdl.check.model` uses it, only when a check
fails, to name the first primitive whose rule diverges from autodiff. Both are read
at trace time; with no recorder on, a primitive call costs one context-variable read.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Recorder", "active_recorder", "layer_path", "layer_scope", "recording"]

Recorder = Callable[[Any, tuple, Callable[[tuple], Any]], Any]
"""`recorder(p, args, run) -> y`: sees each call `p(*args)` of a primitive `p` (bound
arguments, defaults applied) and returns its output, normally `run(args)`."""

_RECORDER: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "fdl_recorder", default=None)
_LAYER_PATH: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "fdl_layer_path", default=())


def active_recorder() -> Recorder | None:
    """The recorder in force (`None` outside `recording`)."""
    return _RECORDER.get()


@contextlib.contextmanager
def recording(recorder: Recorder | None) -> Iterator[None]:
    """Route every primitive call traced inside through `recorder` (`None`: stop).

    A check's tool: `fdl.check.model` taps each call's inputs and output to find the
    first primitive whose hand-written rule disagrees with autodiff. Calls are seen
    when traced, so under `jit` the recorder runs once per compilation.
    """
    token = _RECORDER.set(recorder)
    try:
        yield
    finally:
        _RECORDER.reset(token)


@contextlib.contextmanager
def layer_scope(parent: str, child: str) -> Iterator[None]:
    """Name the layer being applied: combinators wrap each child's `apply` in it.

    The path (`layer_path()`) is the outermost combinator's name, then each child's
    key (`("serial", "dense_2")`). Kept only while a recorder is on; otherwise this
    does nothing.
    """
    if _RECORDER.get() is None:
        yield
        return
    token = _LAYER_PATH.set((_LAYER_PATH.get() or (parent,)) + (child,))
    try:
        yield
    finally:
        _LAYER_PATH.reset(token)


def layer_path() -> tuple[str, ...]:
    """The names of the layers being applied, outermost first (see `layer_scope`)."""
    return _LAYER_PATH.get()
