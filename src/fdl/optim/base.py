"""The optimizer protocol: `Optimizer(init, update)`, `apply_updates`, `chain`.

Also the small helpers every optimizer shares: the saturating step counter, the
accumulator dtype rule, learning-rate evaluation, and construction-time validation
of hyperparameters (errors name the function, the argument, what was expected
and the value given).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
"""A pytree of float arrays (nested dicts/lists/tuples; `None` leaves are skipped)."""
Updates = Any
"""A pytree with the structure of the params: the step to *add* to them."""
OptState = Any
"""An optimizer's state: a NamedTuple, itself a pytree."""
Schedule = Callable[[Any], jax.Array]
"""`step -> learning rate`: an int32 step count in, a float scalar out."""
ScalarOrSchedule = float | Schedule

_INT32_MAX = np.iinfo(np.int32).max


class Optimizer(NamedTuple):
    """A gradient transformation: two pure functions.

    `init(params) -> state` and `update(grads, state, params=None) -> (updates,
    state)`; see the `fdl.optim` module docstring for the full contract.
    """

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Updates, OptState]]


class ChainState(NamedTuple):
    """State of `chain(t_1, …, t_n)`.

    Fields:
      count:  int32[], number of `update` calls so far (saturates at 2³¹−1).
      states: tuple of the n inner states, in the order of the transforms.
    """

    count: jax.Array
    states: tuple


# --------------------------------------------------------------------------
# The public combinators
# --------------------------------------------------------------------------


def apply_updates(params: Params, updates: Updates) -> Params:
    """Return `params + updates`, leaf by leaf, each leaf keeping its params' dtype.

    The sum is formed in the wider of the two dtypes and rounded once, so a
    bfloat16 parameter receiving a float32 update is rounded only at the end.
    """

    def add(p: jax.Array, u: jax.Array) -> jax.Array:
        p, u = jnp.asarray(p), jnp.asarray(u)
        wide = jnp.promote_types(p.dtype, u.dtype)
        return (p.astype(wide) + u.astype(wide)).astype(p.dtype)

    return jax.tree.map(add, params, updates)


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
        return ChainState(count=zero_count(), states=tuple(t.init(params) for t in transforms))

    def update(grads: Updates, state: ChainState, params: Params = None):
        new_states = []
        for t, s in zip(transforms, state.states):
            grads, s = t.update(grads, s, params)
            new_states.append(s)
        return grads, ChainState(count=increment(state.count), states=tuple(new_states))

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Shared helpers for the implementations (not re-exported)
# --------------------------------------------------------------------------


def is_optimizer(x: Any) -> bool:
    """Whether `x` has callable `init` and `update` (an fdl Optimizer or a look-alike)."""
    return callable(getattr(x, "init", None)) and callable(getattr(x, "update", None))


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


def acc_dtype(x: jax.Array) -> np.dtype:
    """Dtype of the state kept for a leaf `x`: float32 for 16-bit floats, else x's dtype."""
    return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def zeros_acc(params: Params) -> Params:
    """Zeros shaped like `params`, in each leaf's accumulator dtype."""
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), acc_dtype(p)), params)


def check_float_params(fn: str, params: Params) -> None:
    """Raise TypeError unless every leaf of `params` is a floating-point array."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, leaf in leaves:
        dtype = jnp.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{fn}: every parameter must be a float array, but the leaf at "
                f"{jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}"
            )


def learning_rate_at(learning_rate: ScalarOrSchedule, count: jax.Array, fn: str) -> jax.Array:
    """Evaluate a float or a schedule at step `count`: a default-float scalar array."""
    value = learning_rate(count) if callable(learning_rate) else learning_rate
    if jnp.ndim(value) != 0:
        raise ValueError(
            f"{fn}: the learning-rate schedule must return a scalar, got shape {jnp.shape(value)}"
        )
    return scalar(value)


# --------------------------------------------------------------------------
# Construction-time validation
# --------------------------------------------------------------------------


def _real(fn: str, name: str, value: Any) -> float:
    """`value` as a Python float, or TypeError if it is not a real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | np.ndarray | jax.Array):
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}")
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{fn}: {name} must be a concrete number, not a traced value; "
            "build the optimizer outside jit"
        )
    if np.ndim(value) != 0:
        raise TypeError(f"{fn}: {name} must be a scalar, got an array of shape {np.shape(value)}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}") from None


def check_learning_rate(
    fn: str, learning_rate: Any, name: str = "learning_rate"
) -> ScalarOrSchedule:
    """A finite float >= 0, or a callable schedule; anything else raises."""
    if callable(learning_rate):
        return learning_rate
    v = _real(fn, name, learning_rate)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(
            f"{fn}: {name} must be a finite number >= 0 or a schedule (step -> learning rate), "
            f"got {learning_rate!r}"
        )
    return v


def check_nonnegative(fn: str, name: str, value: Any) -> float:
    """A finite float >= 0."""
    v = _real(fn, name, value)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {value!r}")
    return v


def check_positive(fn: str, name: str, value: Any) -> float:
    """A finite float > 0."""
    v = _real(fn, name, value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{fn}: {name} must be a finite number > 0, got {value!r}")
    return v


def check_finite(fn: str, name: str, value: Any) -> float:
    """Any finite float."""
    v = _real(fn, name, value)
    if not math.isfinite(v):
        raise ValueError(f"{fn}: {name} must be a finite number, got {value!r}")
    return v


def check_unit_interval(fn: str, name: str, value: Any) -> float:
    """A float in [0, 1): a decay rate of an exponential moving average."""
    v = _real(fn, name, value)
    if not (0.0 <= v < 1.0):
        raise ValueError(f"{fn}: {name} must be in [0, 1), got {value!r}")
    return v


def check_bool(fn: str, name: str, value: Any) -> bool:
    """A Python bool (not a truthy stand-in such as 0, 1 or "yes")."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be True or False, got {value!r}")
    return value


def check_int(fn: str, name: str, value: Any, minimum: int) -> int:
    """A Python int (not bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)
