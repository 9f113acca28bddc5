"""Argument validation shared by the public boundary (private).

Every message names the function, the argument, what was expected and what was
given, and where it helps, the fix.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when `x` holds values known now (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def _dtype(x: Any) -> np.dtype:
    return jnp.result_type(x)


def floating(fn: str, name: str, x: Any) -> None:
    """`x` must be a floating-point array."""
    if not hasattr(x, "shape") and not isinstance(x, (int, float)):
        raise TypeError(f"{fn}: {name} must be an array, got {type(x).__name__}")
    dt = _dtype(x)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(
            f"{fn}: {name} must be a floating-point array, got dtype {dt}; "
            f"cast it first, e.g. {name}.astype(jnp.float32)"
        )


def integer(fn: str, name: str, x: Any) -> None:
    """`x` must be an integer array."""
    dt = _dtype(x)
    if not jnp.issubdtype(dt, jnp.integer):
        raise TypeError(f"{fn}: {name} must be an integer array, got dtype {dt}")


def ndim_at_least(fn: str, name: str, x: Any, n: int, what: str = "") -> None:
    """`x` must have at least `n` dimensions."""
    if jnp.ndim(x) < n:
        extra = f" ({what})" if what else ""
        raise ValueError(
            f"{fn}: {name} must have at least {n} dimension(s){extra}, "
            f"got shape {tuple(jnp.shape(x))}"
        )


def ndim_exactly(fn: str, name: str, x: Any, n: int, what: str = "") -> None:
    """`x` must have exactly `n` dimensions."""
    if jnp.ndim(x) != n:
        extra = f" ({what})" if what else ""
        raise ValueError(
            f"{fn}: {name} must have {n} dimension(s){extra}, got shape {tuple(jnp.shape(x))}"
        )


def same_shape(fn: str, a_name: str, a: Any, b_name: str, b: Any) -> None:
    """`a` and `b` must have the same shape."""
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{fn}: {a_name} and {b_name} must have the same shape, got "
            f"{a_name} {tuple(jnp.shape(a))} and {b_name} {tuple(jnp.shape(b))}"
        )


def axis_in_range(fn: str, axis: Any, ndim: int) -> None:
    """`axis` must be an int in `[-ndim, ndim)`."""
    if not is_int(axis):
        raise TypeError(f"{fn}: axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{fn}: axis {axis} is out of range for an input of rank {ndim}")


def finite_number(fn: str, name: str, v: Any, *, low: float | None = None,
                  low_inclusive: bool = True) -> None:
    """`v` must be a finite real number (optionally `≥ low` or `> low`)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {name} must be a number, got {v!r}")
    if not math.isfinite(float(v)):
        raise ValueError(f"{fn}: {name} must be finite, got {v!r}")
    if low is not None and (v < low if low_inclusive else v <= low):
        op = "≥" if low_inclusive else ">"
        raise ValueError(f"{fn}: {name} must be {op} {low}, got {v!r}")


def first_index(mask: np.ndarray) -> tuple[int, ...]:
    """Index (as a tuple of ints) of the first `True` in `mask`, which must have one."""
    return tuple(int(j) for j in np.argwhere(mask)[0])


def first_out_of_range(ids: Any, n: int) -> tuple[Any, tuple[int, ...], Any, Any] | None:
    """For integer `ids` that index `n` things (labels, table rows): `(value, index,
    min, max)` of the first id outside `[0, n)`, or `None` when all are in range or
    the values are not known (traced) or empty."""
    if not is_concrete(ids) or not ids.size:
        return None
    a = np.asarray(ids)
    bad = (a < 0) | (a >= n)
    if not bad.any():
        return None
    i = first_index(bad)
    return a[i], i, a.min(), a.max()


# ---------------------------------------------------------------------------
# Sizes, shapes and windows: layer factories, `init` and the conv/pool primitives
# ---------------------------------------------------------------------------


def is_int(value: Any) -> bool:
    """A Python or NumPy integer that is not a bool (`True` is an `int` to Python, but
    never a size or a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(fn: str, name: str, value: Any, *, optional: bool = False) -> int | None:
    """A size or count: an int ≥ 1 (not bool), returned as `int`; `None` passes when
    `optional` (the caller picks a default)."""
    if optional and value is None:
        return None
    if not is_int(value) or value < 1:
        raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}")
    return int(value)


def positive_ints(fn: str, name: str, value: Any, n: int) -> tuple[int, ...]:
    """A positive int or a sequence of `n` of them (one per spatial axis: kernel size,
    stride, dilation, window), returned as an `n`-tuple."""
    if is_int(value) and value >= 1:
        return (int(value),) * n
    if (isinstance(value, (tuple, list)) and len(value) == n
            and all(is_int(e) and e >= 1 for e in value)):
        return tuple(int(e) for e in value)
    raise ValueError(
        f"{fn}: {name} must be a positive int or a sequence of {n} such ints (one per "
        f"spatial axis), got {value!r}")


def padding(fn: str, value: Any, n: int) -> None:
    """`"SAME"`, `"VALID"` or `n` pairs `(lo, hi)` of ints ≥ 0, one per spatial axis."""
    if isinstance(value, str):
        if value not in ("SAME", "VALID"):
            hint = (f"; did you mean {value.upper()!r}?"
                    if value.upper() in ("SAME", "VALID") else "")
            raise ValueError(
                f"{fn}: padding must be 'SAME', 'VALID' or explicit "
                f"{'((top, bottom), (left, right))' if n == 2 else '((lo, hi),)'}, "
                f"got {value!r}{hint}")
        return

    def pair(p: Any) -> bool:
        return (isinstance(p, (tuple, list)) and len(p) == 2
                and all(is_int(e) and e >= 0 for e in p))

    if not (isinstance(value, (tuple, list)) and len(value) == n and all(map(pair, value))):
        example = "((1, 1), (2, 2))" if n == 2 else "((1, 1),)"
        raise ValueError(
            f"{fn}: explicit padding must be {n} pair(s) of non-negative ints, one "
            f"(lo, hi) per spatial axis, e.g. {example}; got {value!r}")


def is_shape(value: Any, rank: int | None = None) -> bool:
    """A shape without the batch axis: a tuple or list of positive ints (not bools),
    of length `rank` when given."""
    return (isinstance(value, (tuple, list)) and (rank is None or len(value) == rank)
            and all(is_int(d) and d >= 1 for d in value))


def input_shape(fn: str, value: Any, expected: str, *, rank: int | None = None,
                min_rank: int = 0) -> tuple[int, ...]:
    """The `input_shape` given to a layer's `init`, as a tuple; the message shows the
    `expected` layout (e.g. `"(H, W, C)"`) and reminds that it excludes the batch axis."""
    if not is_shape(value, rank) or len(value) < min_rank:
        raise ValueError(
            f"{fn}: input_shape must be {expected} without the batch axis, got {value!r}")
    return tuple(int(d) for d in value)


def window_output_size(fn: str, axis: str, n: int, extent: int, stride: int,
                       pad: tuple[int, int], what: str = "window") -> int:
    """Outputs along one spatial axis, `o = ⌊(n + lo + hi − e)/s⌋ + 1`, for an input of
    `n`, padding `(lo, hi)`, a window (or dilated kernel) spanning `e` and stride `s`;
    a `ValueError` naming the axis when the window does not fit (`o < 1`)."""
    lo, hi = pad
    o = (n + lo + hi - extent) // stride + 1
    if o < 1:
        raise ValueError(
            f"{fn}: along {axis} the {what} spans {extent} but the padded input has only "
            f"{n + lo + hi} (input {n}, padding {(lo, hi)}); use padding='SAME', a smaller "
            f"{what}, or a larger input")
    return o


def fraction(fn: str, name: str, value: Any, *, meaning: str = "", hint: str = "") -> float:
    """A static real number in `[0, 1)`: a drop rate, the weight of an average's old
    value. `meaning` (shown in brackets after the name) says which end is which."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{fn}: {name} must be a number, got {value!r}")
    if not 0 <= value < 1:  # NaN fails too
        what = f" ({meaning})" if meaning else ""
        raise ValueError(f"{fn}: {name}{what} must be in [0, 1), got {value!r}{hint}")
    return float(value)


def padding_within_window(fn: str, axis: str, pad: tuple[int, int], window: int) -> None:
    """Pooling padding must be smaller than the window on each side, or some windows
    would see only padding."""
    lo, hi = pad
    if max(lo, hi) >= window:
        raise ValueError(
            f"{fn}: padding {(lo, hi)} along {axis} must be smaller than the window "
            f"({window}) on each side, or some windows would see only padding")


# ---------------------------------------------------------------------------
# Hyperparameters: Python numbers, or JAX scalars that may be traced
# ---------------------------------------------------------------------------


def real_scalar(fn: str, name: str, value: Any) -> Any:
    """A real scalar: a Python or NumPy number comes back as a `float`, a 0-d JAX array as
    itself. A traced value comes back unchecked: its value is not known until it runs
    (this is how `fdl.optim.inject_hyperparams` passes values that change between steps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number, np.ndarray,
                                                         jax.Array)):
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}")
    if np.ndim(value) != 0:
        raise TypeError(f"{fn}: {name} must be a scalar, got an array of shape "
                        f"{tuple(np.shape(value))}")
    if not jnp.issubdtype(jnp.result_type(value), jnp.number) or jnp.iscomplexobj(value):
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}")
    if isinstance(value, jax.Array):
        return value
    return float(value)


def _known(value: Any) -> float | None:
    """The value of a real scalar as a float, or None while it is traced."""
    return float(value) if is_concrete(value) else None


def finite_real(fn: str, name: str, value: Any, *, minimum: float | None = None,
                strict: bool = False) -> Any:
    """A finite real scalar, optionally `>= minimum` (or `> minimum` with `strict`)."""
    value = real_scalar(fn, name, value)
    v = _known(value)
    if v is None:
        return value
    ok = math.isfinite(v) and (minimum is None or (v > minimum if strict else v >= minimum))
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{fn}: {name} must be a finite number{bound}, got {as_written(value)}")
    return value


def decay_rate(fn: str, name: str, value: Any) -> Any:
    """A real scalar in [0, 1): the decay rate of an exponential moving average."""
    value = real_scalar(fn, name, value)
    v = _known(value)
    if v is not None and not 0.0 <= v < 1.0:
        raise ValueError(f"{fn}: {name} must be in [0, 1), got {as_written(value)}")
    return value


def flag(fn: str, name: str, value: Any) -> bool:
    """A bool, Python's or NumPy's (not a truthy stand-in such as 0, 1 or "yes"),
    returned as a Python `bool`."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be True or False, got {value!r}")
    return bool(value)


def int_at_least(fn: str, name: str, value: Any, minimum: int) -> int:
    """A Python int (not bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def as_written(value: Any) -> str:
    """A scalar as users wrote it: `0.1` for a Python float, the float value for an array."""
    return repr(value) if isinstance(value, float) else repr(float(value))
