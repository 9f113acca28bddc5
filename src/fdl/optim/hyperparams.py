"""Hyperparameters held in the state, readable and changeable between steps.

    opt = fdl.optim.inject_hyperparams(fdl.optim.adam)(learning_rate=1e-3, b1=0.9)
    state = opt.init(params)
    state.hyperparams          # {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}
    state = fdl.optim.set_hyperparams(state, learning_rate=3e-4)   # the next update uses it

The values are scalar arrays inside the state, so a jitted step that takes the
state as an argument reads them as inputs: changing one does not recompile.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fdl.optim.base import (
    ForeignStateError,
    Optimizer,
    Params,
    Updates,
    check_hyperparams,
    check_state,
    increment,
    learning_rate_at,
    public_names,
    scalar,
    zero_count,
)


class InjectHyperparamsState(NamedTuple):
    """State of an optimizer built by `inject_hyperparams`.

    Fields:
      count:       int32[], updates so far.
      hyperparams: dict name -> scalar array (JAX's default float dtype): the value
                   of each numeric hyperparameter that the *next* update applies
                   (for a schedule, `schedule(count)`). Change it with
                   `set_hyperparams(state, name=value)`.
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array
    hyperparams: dict
    inner_state: Any


def _is_number(value: Any) -> bool:
    """A real scalar that can become a hyperparameter array (not a bool or a switch)."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | float | np.number):
        return True
    return isinstance(value, jax.Array | np.ndarray) and np.ndim(value) == 0 and bool(
        jnp.issubdtype(jnp.result_type(value), jnp.floating)
    )


def inject_hyperparams(
    factory: Callable[..., Optimizer], *, static_args: Sequence[str] = ("mask", "labels")
) -> Callable[..., Optimizer]:
    """Wrap an optimizer factory so its numeric hyperparameters live in the state.

    `inject_hyperparams(adam)(learning_rate=1e-3)` builds an optimizer that
    behaves like `adam(1e-3)` and whose state is an `InjectHyperparamsState`:

    * every numeric argument, given or defaulted (`learning_rate`, `b1`, `b2`,
      `eps`, …), is a scalar array in `state.hyperparams`, and each update
      builds the optimizer from those arrays;
    * an argument given as a schedule (a callable `step -> value`) is evaluated
      at the count once per update, and `state.hyperparams` holds the value the
      next update applies;
    * bools, `None`, arguments annotated `int` (sizes, periods, iteration
      counts) and the arguments named in `static_args` (by default `mask` and
      `labels`, functions of the params rather than schedules) are fixed when built.

    Change a value between steps with `set_hyperparams` (or
    `state._replace(hyperparams=...)` with arrays of the same dtype): a jitted
    step is not recompiled. A scheduled value that is set applies to the next
    update only; the schedule then takes over again.

    Arguments are validated now by calling `factory` with them, with its own
    messages; the wrapped optimizer keeps any state a hyperparameter switches on
    (e.g. `sgd`'s velocity), because an array may become nonzero later.
    """
    if not callable(factory):
        raise TypeError(
            f"inject_hyperparams: factory must be a function returning an Optimizer "
            f"(e.g. fdl.optim.adam), got {factory!r}"
        )
    signature = inspect.signature(factory)
    # Arguments annotated `int` (window sizes, periods, iteration counts) shape the
    # computation itself, so they stay Python ints.
    structural = {n for n, p in signature.parameters.items() if p.annotation in (int, "int")}
    label = f"inject_hyperparams({getattr(factory, '__name__', 'factory')})"

    def build(*args: Any, **kwargs: Any) -> Optimizer:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{label}: {error}") from None
        bound.apply_defaults()
        factory(*bound.args, **bound.kwargs)  # validate now, in the factory's words
        static, numeric, schedules = {}, {}, {}
        for name, value in bound.arguments.items():
            if name in static_args or name in structural or value is None or isinstance(value, bool):
                static[name] = value
            elif callable(value):
                schedules[name] = value
            elif _is_number(value):
                numeric[name] = value
            else:
                static[name] = value

        def scheduled(count: jax.Array) -> dict:
            return {n: learning_rate_at(s, count, label) for n, s in schedules.items()}

        def inner(hyperparams: dict) -> Optimizer:
            return factory(**static, **hyperparams)

        def init(params: Params) -> InjectHyperparamsState:
            count = zero_count()
            hyperparams = {n: scalar(v) for n, v in numeric.items()} | scheduled(count)
            hyperparams = {n: hyperparams[n] for n in bound.arguments if n in hyperparams}
            return InjectHyperparamsState(count, hyperparams, inner(hyperparams).init(params))

        def update(grads: Updates, state: InjectHyperparamsState, params: Params = None):
            try:
                check_state(label, state, InjectHyperparamsState)
            except ForeignStateError as error:
                raise TypeError(
                    f"{label}: state must be the InjectHyperparamsState made by this "
                    f"optimizer's init, got {type(state).__name__}"
                ) from error
            updates, inner_state = inner(state.hyperparams).update(
                grads, state.inner_state, params
            )
            count = increment(state.count)
            hyperparams = dict(state.hyperparams) | scheduled(count)
            return updates, InjectHyperparamsState(count, hyperparams, inner_state)

        return Optimizer(init, update)

    build.__name__ = label
    build.__doc__ = f"`{getattr(factory, '__name__', 'factory')}` with injected hyperparameters."
    return build


def set_hyperparams(state: InjectHyperparamsState, **values: Any) -> InjectHyperparamsState:
    """A copy of `state` whose `hyperparams` hold the given values from the next update on.

    `state` comes from an optimizer built by `inject_hyperparams`. Each value is a
    real scalar (a Python number or a 0-d array, possibly traced), checked by the
    rule for its name (`learning_rate` >= 0, `b1` in [0, 1), `eps` > 0, …) when
    its value is known, and stored with the dtype of the entry it replaces, so a
    jitted step taking the state is not recompiled. Unknown names raise
    ValueError listing the known ones.
    """
    fn = "set_hyperparams"
    if not isinstance(state, InjectHyperparamsState):
        raise TypeError(
            f"{fn}: state must be an InjectHyperparamsState, from an optimizer built with "
            f"fdl.optim.inject_hyperparams (e.g. inject_hyperparams(fdl.optim.adam)"
            f"(learning_rate=1e-3)), got {type(state).__name__}"
        )
    unknown = sorted(set(values) - set(state.hyperparams))
    if unknown:
        raise ValueError(
            f"{fn}: this optimizer has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"its hyperparameters are {list(state.hyperparams)}"
        )
    for name, value in values.items():
        if callable(value):
            raise TypeError(
                f"{fn}: {name} must be a number, got the callable {value!r}; to follow a "
                "new schedule, build the optimizer with it"
            )
    check_hyperparams(fn, **values)
    hyperparams = dict(state.hyperparams)
    for name, value in values.items():
        old = hyperparams[name]
        hyperparams[name] = jnp.asarray(value, dtype=old.dtype)
    return state._replace(hyperparams=hyperparams)


__all__ = public_names(globals(), __name__)
