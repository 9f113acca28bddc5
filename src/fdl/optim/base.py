"""The optimizer protocol and the machinery every transform shares.

* `Optimizer(init, update)`, `apply_updates`, `chain` and its `ChainState`.
* `lift`: the one helper that runs a transform's per-array update on every leaf
  of a pytree, handling dtypes and checking the grads against the state and the
  params at trace time (leaf paths and shapes in every message).
* The hyperparameter vocabulary (`check_hyperparams`): each argument name
  (`b1`, `eps`, `momentum`, …) has one rule, so every factory that takes it
  checks it the same way, naming itself.
* `label` and `naming`: a transform built while a named optimizer is being
  built (`with naming("adam"): scale_by_adam(…)`) writes that optimizer's name
  in its messages, so each fact is checked once, by the transform, and the
  user reads the name of the function they called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fdl import _validate as V

Params = Any
"""A pytree of float arrays (nested dicts/lists/tuples; `None` leaves are skipped)."""
Updates = Any
"""A pytree with the structure of the params: the step to *add* to them."""
OptState = Any
"""An optimizer's state: a NamedTuple, itself a pytree."""
Schedule = Callable[[Any], jax.Array]
"""`step -> learning rate`: an int32 step count in, a float scalar out."""
ScalarOrSchedule = float | jax.Array | Schedule

_INT32_MAX = np.iinfo(np.int32).max


class Optimizer(NamedTuple):
    """A gradient transformation: two pure functions.

    `init(params) -> state` and `update(grads, state, params=None) -> (updates,
    state)`; see the `fdl.optim` module docstring for the full contract.
    """

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Updates, OptState]]


_BUILDING: ContextVar[tuple[str, dict[str, str]] | None] = ContextVar(
    "fdl_optim_building", default=None
)


def label(fn: str) -> str:
    """The name a transform's messages carry: the named optimizer being built, else `fn`."""
    building = _BUILDING.get()
    return building[0] if building else fn


@contextmanager
def naming(name: str, **arguments: str) -> Iterator[None]:
    """Transforms built inside this block name `name` in their messages (see `label`).

    `arguments` renames hyperparameters in those messages, for an optimizer that
    passes its own argument to a transform under the transform's name (`muon`'s
    `adam_b1` is `scale_by_adam`'s `b1`): `naming("muon", b1="adam_b1")`.
    """
    token = _BUILDING.set((name, arguments))
    try:
        yield
    finally:
        _BUILDING.reset(token)


class ForeignStateError(TypeError):
    """`update` was given a state that this transform's `init` did not make."""


# --------------------------------------------------------------------------
# The public combinators
# --------------------------------------------------------------------------


def apply_updates(params: Params, updates: Updates) -> Params:
    """Return `params + updates`, leaf by leaf, each leaf keeping its params' dtype.

    The sum is formed in the wider of the two dtypes and rounded once, so a
    bfloat16 parameter receiving a float32 update is rounded only at the end.
    A structure or shape mismatch raises ValueError naming the leaf path.
    """
    check_like("apply_updates", updates, params, "the params", "updates", "update")

    def add(p: jax.Array, u: jax.Array) -> jax.Array:
        p, u = jnp.asarray(p), jnp.asarray(u)
        wide = jnp.promote_types(p.dtype, u.dtype)
        return (p.astype(wide) + u.astype(wide)).astype(p.dtype)

    return jax.tree.map(add, params, updates)


class ChainState(NamedTuple):
    """State of `chain(t_1, …, t_n)`, and so of every named optimizer.

    Fields:
      count:  int32[], number of `update` calls so far (saturates at 2³¹−1).
      states: tuple of the n inner states, in the order of the transforms.
    """

    count: jax.Array
    states: tuple

    @property
    def hyperparams(self) -> dict:
        raise AttributeError(
            "this optimizer state records no hyperparameters; to read and change them "
            "between steps, build the optimizer with fdl.optim.inject_hyperparams, e.g. "
            "inject_hyperparams(fdl.optim.adam)(learning_rate=1e-3), and read "
            "state.hyperparams"
        )


def chain(*transforms: Optimizer) -> Optimizer:
    """Compose transforms left to right: the updates of one are the grads of the next.

    `chain(clip_by_global_norm(1.0), adam(1e-3))` clips the raw gradients and then
    runs Adam on the clipped ones. Every transform receives the same `params`.
    The state is a `ChainState` holding each transform's state in order.
    """
    for i, t in enumerate(transforms):
        if not is_optimizer(t):
            raise TypeError(
                f"chain: argument {i} must be an Optimizer (with init and update), got {t!r}"
            )

    def init(params: Params) -> ChainState:
        return ChainState(zero_count(), tuple(t.init(params) for t in transforms))

    def update(grads: Updates, state: ChainState, params: Params = None):
        check_state("chain", state, ChainState)
        if len(state.states) != len(transforms):
            raise ForeignStateError(
                f"chain: state holds {len(state.states)} inner states but the chain has "
                f"{len(transforms)} transforms; was it made by another optimizer's init?"
            )
        new_states = []
        for t, s in zip(transforms, state.states):
            grads, s = t.update(grads, s, params)
            new_states.append(s)
        return grads, ChainState(increment(state.count), tuple(new_states))

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Lifting per-array updates to pytrees
# --------------------------------------------------------------------------


class PerLeaf:
    """Per-leaf Python values (e.g. weight-decay mask flags) aligned with the grads' leaves."""

    def __init__(self, items: list) -> None:
        self.items = list(items)


def lift(
    fn: str,
    step: Callable,
    grads: Updates,
    state: dict[str, Any] | None = None,
    *,
    read: dict[str, Any] | None = None,
) -> tuple[Updates, dict[str, Any]]:
    """Run the per-array `step` on every leaf of `grads`; return `(updates, new_state)`.

    `state` maps a transform's state fields to pytrees shaped like the grads (its
    accumulators); a field whose value is `None` (optional state switched off) is
    passed to `step` as `None` and returned as `None`. `read` maps names to
    pytrees that are read but not updated (the params) or to a `PerLeaf` list.
    `step(g, **fields, **reads)` receives one gradient leaf and, by name, the
    matching leaf of each; it returns the direction `d`, or `(d, {field: new
    leaf})` when `state` is given. Hyperparameters are closed over by `step`.

    Arithmetic happens in one dtype per leaf: float32 for 16-bit grads, else the
    grads' dtype, widened to the dtype of any state or params leaf; `g` and the
    array leaves are cast to it. `d` comes back in the grads' dtype and each
    state leaf in its own.

    Checks (at trace time, in Python): every gradient is a float array, and every
    tree in `state` and `read` has the structure of the grads and, leaf by leaf,
    the same shape. Errors name `fn`, the leaf path and both shapes or dtypes.
    """
    state, read = state or {}, read or {}
    check_float(fn, grads, "gradient")
    g_leaves, treedef = jax.tree.flatten(grads)
    live = {k: v for k, v in state.items() if v is not None}
    columns = {}
    for name, tree in list(live.items()) + list(read.items()):
        if isinstance(tree, PerLeaf):
            columns[name] = tree.items
        else:
            check_like(fn, grads, tree, _describe(name))
            columns[name] = treedef.flatten_up_to(tree)

    directions, new_columns = [], {k: [] for k in live}
    for i, g in enumerate(g_leaves):
        leaves = {k: c[i] for k, c in columns.items()}
        arrays = [x for x in leaves.values() if _is_array(x)]
        dt = jnp.result_type(acc_dtype(g), *[x.dtype for x in arrays])
        args = {k: x.astype(dt) if _is_array(x) else x for k, x in leaves.items()}
        out = step(g.astype(dt), **({k: None for k in state} | args))
        d, new = out if state else (out, {})
        directions.append(d.astype(g.dtype))
        for k in live:
            new_columns[k].append(new[k].astype(leaves[k].dtype))
    updates = treedef.unflatten(directions)
    return updates, {k: treedef.unflatten(new_columns[k]) if k in live else None for k in state}


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _describe(what: str) -> str:
    return "the params" if what == "params" else f"the state's {what}"


# --------------------------------------------------------------------------
# Boundary checks (trace time, Python; nothing is added to the compiled step)
# --------------------------------------------------------------------------


def _path(path: tuple) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def check_optional(fn: str, state: Any, field: str, wanted: bool, setting: str) -> None:
    """Raise `ForeignStateError` unless the optional `field` is present exactly when `wanted`."""
    present = getattr(state, field) is not None
    if present != wanted:
        raise ForeignStateError(
            f"{fn}: the state {'has' if present else 'lacks'} {field}, but this transform was "
            f"built with {setting}={wanted}; was the state made with other settings?"
        )


def check_float(fn: str, tree: Any, noun: str) -> None:
    """Raise TypeError naming the leaf path unless every leaf of `tree` is a float array."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{fn}: every {noun} must be a float array, but the leaf at "
                f"{_path(path)} has dtype {dtype}"
            )


def check_like(
    fn: str, tree: Any, other: Any, what: str, subject: str = "grads", noun: str = "gradient"
) -> None:
    """Raise ValueError unless `other` has the structure of `tree` and the same leaf shapes.

    The message names the first leaf path present in one and not the other, or the
    first leaf whose shapes differ, with both shapes.
    """
    t_leaves, t_def = jax.tree.flatten(tree)
    o_leaves, o_def = jax.tree.flatten(other)
    if t_def != o_def:
        t_paths = [_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        o_paths = [_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(other)[0]]
        missing = [p for p in t_paths if p not in set(o_paths)]
        extra = [p for p in o_paths if p not in set(t_paths)]
        if missing:
            detail = f"there is a leaf at {missing[0]} in the {subject} but not in {what}"
        elif extra:
            detail = f"there is a leaf at {extra[0]} in {what} but not in the {subject}"
        else:
            detail = f"the {subject} are {t_def} but {what} are {o_def}"
        raise ValueError(f"{fn}: the {subject} and {what} differ in structure: {detail}")
    for (path, t), o in zip(jax.tree_util.tree_flatten_with_path(tree)[0], o_leaves):
        if jnp.shape(t) != jnp.shape(o):
            raise ValueError(
                f"{fn}: the {noun} at {_path(path)} has shape {tuple(jnp.shape(t))}, "
                f"but in {what} it is {tuple(jnp.shape(o))}"
            )


def check_state(fn: str, state: Any, cls: type) -> None:
    """Raise `ForeignStateError` unless `state` is a `cls` (made by this transform's init)."""
    if not isinstance(state, cls):
        raise ForeignStateError(
            f"{fn}: state must be the {cls.__name__} made by {fn}(...).init(params), "
            f"got {type(state).__name__}"
        )


# --------------------------------------------------------------------------
# Counts, dtypes, learning rates
# --------------------------------------------------------------------------


def public_names(namespace: dict[str, Any], module: str) -> list[str]:
    """A module's `__all__`: the public names it defines itself (not those it imports)."""
    return [
        name for name, value in namespace.items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module
    ]


def is_optimizer(x: Any) -> bool:
    """Whether `x` has callable `init` and `update` (an fdl Optimizer or a look-alike)."""
    return callable(getattr(x, "init", None)) and callable(getattr(x, "update", None))


def check_optimizer(fn: str, x: Any, name: str = "optimizer") -> None:
    """Raise TypeError unless `x` is an optimizer (a wrapper's argument)."""
    if not is_optimizer(x):
        raise TypeError(f"{fn}: {name} must be an Optimizer (with init and update), got {x!r}")


def require_params(fn: str, params: Any, what: str = "update") -> None:
    """Raise ValueError if `params` is None: `what` (a transform's step) reads them."""
    if params is None:
        raise ValueError(f"{fn}: {what} needs the params; call update(grads, state, params)")


def zero_count() -> jax.Array:
    """The initial step count: an int32 scalar zero."""
    return jnp.zeros([], jnp.int32)


def increment(count: jax.Array) -> jax.Array:
    """`count + 1`, saturating at the int32 maximum instead of wrapping to negative."""
    return jnp.where(count < _INT32_MAX, count + 1, count).astype(jnp.int32)


def default_float() -> np.dtype:
    """JAX's default float dtype: float64 under `jax_enable_x64`, else float32."""
    return jnp.result_type(float)


def scalar(value: Any, dtype: Any = None) -> jax.Array:
    """A strongly typed scalar array (default float dtype unless `dtype` is given)."""
    return jnp.asarray(value, dtype=default_float() if dtype is None else dtype)


def step_number(count: jax.Array) -> jax.Array:
    """$t$ = `count` + 1 as a default-float scalar, for bias corrections $β^t$."""
    return (count + 1).astype(default_float())


def acc_dtype(x: Any) -> np.dtype:
    """Dtype of the state kept for a leaf `x`: float32 for 16-bit floats, else x's dtype."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def zeros_acc(params: Params, value: Any = 0.0) -> Params:
    """Arrays shaped like `params`, filled with `value`, in each leaf's accumulator dtype."""
    return jax.tree.map(lambda p: jnp.full(jnp.shape(p), value, acc_dtype(p)), params)


def is_static_zero(value: Any) -> bool:
    """Whether `value` is a Python number equal to 0: a switch that removes state.

    Arrays (even zero ones) are not: they may change between steps
    (`inject_hyperparams`), so the state they act on is always kept.
    """
    return isinstance(value, float | int) and value == 0


def learning_rate_at(learning_rate: ScalarOrSchedule, count: jax.Array, fn: str) -> Any:
    """$η$ at step `count`: the float or array given, or `schedule(count)` checked to be a scalar."""
    if not callable(learning_rate):
        return learning_rate
    value = learning_rate(count)
    _scalar_schedule(fn, jnp.shape(value))
    return scalar(value)


def check_schedule(fn: str, learning_rate: ScalarOrSchedule) -> None:
    """For a schedule, check that it returns a scalar (traced for its shape only)."""
    if callable(learning_rate):
        _scalar_schedule(fn, jax.eval_shape(learning_rate, zero_count()).shape)


def _scalar_schedule(fn: str, shape: tuple) -> None:
    if shape != ():
        raise ValueError(
            f"{fn}: the learning-rate schedule must return a scalar, got shape {shape}"
        )


# --------------------------------------------------------------------------
# The hyperparameter vocabulary: one rule per argument name
# --------------------------------------------------------------------------


def _learning_rate(fn: str, name: str, value: Any) -> ScalarOrSchedule:
    """A finite number >= 0, or a callable schedule."""
    if callable(value):
        check_schedule(fn, value)
        return value
    value = V.real_scalar(fn, name, value)
    if V.is_concrete(value):
        v = float(value)
        if not (np.isfinite(v) and v >= 0.0):
            raise ValueError(
                f"{fn}: {name} must be a finite number >= 0 or a schedule "
                f"(step -> learning rate), got {V.as_written(value)}"
            )
    return value


def _nonnegative(fn: str, name: str, value: Any) -> Any:
    return V.finite_real(fn, name, value, minimum=0.0)


def _positive(fn: str, name: str, value: Any) -> Any:
    return V.finite_real(fn, name, value, minimum=0.0, strict=True)


_RULES: dict[str, Callable[[str, str, Any], Any]] = {
    "learning_rate": _learning_rate,
    "momentum": V.decay_rate,
    "beta": V.decay_rate,
    "decay": V.decay_rate,
    "rho": V.decay_rate,
    "b1": V.decay_rate,
    "b2": V.decay_rate,
    "eps": _positive,
    "max_norm": _positive,
    "weight_decay": _nonnegative,
    "initial_accumulator_value": _nonnegative,
    "nesterov": V.flag,
    "centered": V.flag,
    "amsgrad": V.flag,
}


def check_hyperparams(fn: str, **values: Any) -> tuple:
    """Check each value by the rule for its name; return them in order (floats as floats).

    Names without a rule must be finite real scalars.
    """
    building = _BUILDING.get()
    shown = building[1] if building else {}

    def check(name: str, value: Any) -> Any:
        rule = _RULES.get(name)
        written = shown.get(name, name)
        return rule(fn, written, value) if rule else V.finite_real(fn, written, value)

    return tuple(check(name, value) for name, value in values.items())
