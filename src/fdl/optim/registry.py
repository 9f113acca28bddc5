"""The named optimizers' registry: one entry makes an optimizer known everywhere.

A named optimizer is a factory `name(learning_rate, …) -> Optimizer` whose body
is a short `chain` of transforms, decorated with `@register`:

    @register
    def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8):
        return chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(learning_rate))

`register`

* builds the transforms under `naming(name)`, so that their own hyperparameter
  checks speak in the optimizer's name (`adam: b2 must be in [0, 1), got 1.0`):
  each fact is checked once, by the transform that uses it;
* wraps the result in the optimizer's boundary checks (`named_chain`): float
  params and grads, grads shaped like the params (leaf path and both shapes),
  and a state made by another optimizer named as such;
* enters the factory in `OPTIMIZERS`, which `get_optimizer(name, …)` reads: the
  command line's `--optimizer` choices, the name a checkpoint records and is
  resumed with, and the layouts that the state recogniser compares a foreign
  state with all come from this one table.

Every other argument of a registered factory has a default, so that
`factory(learning_rate)` builds it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fdl.optim.base import (
    ChainState,
    ForeignStateError,
    Optimizer,
    Params,
    Updates,
    chain,
    check_float,
    check_like,
    naming,
)

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {}
"""name -> registered factory `name(learning_rate, …)`, in order of registration."""


def named_chain(name: str, *transforms: Optimizer) -> Optimizer:
    """`chain(*transforms)` with the boundary checks of a named optimizer, under `name`.

    `init` checks that the params are float arrays; `update` checks that the grads
    are float arrays shaped like the params (when given) and turns a state made by
    another optimizer into a `TypeError` naming both optimizers and both layouts.
    Build the transforms inside `with naming(name):` for their messages to carry
    `name` too (`register` does both).
    """
    return _checked(name, chain(*transforms))


def register(factory: Callable[..., Optimizer]) -> Callable[..., Optimizer]:
    """Make `factory` a named optimizer (see the module docstring); returns the wrapped factory."""
    name = factory.__name__

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Optimizer:
        with naming(name):
            inner = factory(*args, **kwargs)
        return _checked(name, inner)

    OPTIMIZERS[name] = build
    _layout.cache_clear()
    return build


def get_optimizer(name: str, **options: Any) -> Optimizer:
    """Build the registered optimizer called `name` with keyword `options`.

    `get_optimizer("adam", learning_rate=1e-3, b2=0.99)` is `adam(1e-3, b2=0.99)`.
    An unknown name or an option the optimizer does not take raises ValueError
    listing what is accepted (rather than a bare TypeError from the call).
    """
    if name not in OPTIMIZERS:
        raise ValueError(
            f"get_optimizer: unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}"
        )
    factory = OPTIMIZERS[name]
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"get_optimizer: {name} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {accepted}"
        )
    return factory(**options)


def _checked(name: str, inner: Optimizer) -> Optimizer:
    def init(params: Params) -> Any:
        check_float(name, params, "parameter")
        return inner.init(params)

    def update(grads: Updates, state: Any, params: Params = None):
        check_float(name, grads, "gradient")
        if params is not None:
            check_like(name, grads, params, "the params")
        try:
            return inner.update(grads, state, params)
        except ForeignStateError as error:
            raise TypeError(_foreign_state_message(name, inner, state)) from error

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# The state recogniser: which optimizer a foreign state came from
# --------------------------------------------------------------------------


def _kinds(state: Any) -> tuple:
    """The state's types: `(ChainState, ScaleByAdamState, …)`, or `(type,)` for another state."""
    if isinstance(state, ChainState):
        return (ChainState, *(type(s) for s in state.states))
    return (type(state),)


def _parts(state: Any) -> str:
    """A state's layout in words: `ChainState(ScaleByAdamState(count, mu, nu), …)`."""
    def one(s: Any) -> str:
        fields = getattr(s, "_fields", None)
        if fields is None:
            return type(s).__name__
        return f"{type(s).__name__}({', '.join(f for f in fields if getattr(s, f) is not None)})"

    if isinstance(state, ChainState):
        return f"ChainState({', '.join(one(s) for s in state.states)})"
    return one(state)


@functools.cache
def _layout(name: str) -> Any:
    """The registered optimizer's state at its default settings, as shapes only."""
    probe = {"x": jax.ShapeDtypeStruct((1,), jnp.float32)}
    return jax.eval_shape(OPTIMIZERS[name](0.1).init, probe)


def _foreign_state_message(name: str, inner: Optimizer, state: Any) -> str:
    """Which optimizer `state` came from (by its parts, else its types); what `name` expects."""
    layouts = {n: _layout(n) for n in OPTIMIZERS}
    expected = _parts(layouts[name] if name in layouts else jax.eval_shape(inner.init, {}))
    given = _parts(state)
    others = {n: s for n, s in layouts.items() if n != name}
    owners = [n for n, s in others.items() if _parts(s) == given] or [
        n for n, s in others.items() if _kinds(s) == _kinds(state)
    ]
    if owners:
        source = f"the state of {' or '.join(sorted(owners))}"
    else:
        source = f"a state of type {type(state).__name__}"
    return (
        f"{name}: update was given {source}, not a state made by {name}(...).init: "
        f"expected {expected}, got {given}; initialise the state with the optimizer "
        f"that updates it (a checkpoint saved with another optimizer cannot be resumed "
        f"with {name})"
    )


__all__ = ["OPTIMIZERS", "register", "named_chain", "get_optimizer"]
