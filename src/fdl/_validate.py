"""Argument validation shared by the public boundary (private).

Every message names the function, the argument, what was expected and what was
given, and where it helps, the fix.
"""

from __future__ import annotations

import dataclasses
import math
import re
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


def integer(fn: str, name: str, x: Any, what: str = "") -> None:
    """`x` must be an integer array (labels, ids; `what` says which, in brackets)."""
    extra = f" ({what})" if what else ""
    if not hasattr(x, "shape") and not isinstance(x, int):
        raise TypeError(f"{fn}: {name} must be an integer array{extra}, got {type(x).__name__}")
    dt = _dtype(x)
    if not jnp.issubdtype(dt, jnp.integer):
        raise TypeError(f"{fn}: {name} must be an integer array{extra}, got dtype {dt}; "
                        f"cast it first, e.g. {name}.astype(jnp.int32)")


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


# ---------------------------------------------------------------------------
# Declarative shape specs: one line per primitive, the messages written here once
# ---------------------------------------------------------------------------

_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
_MARKERS = ("int", "optional")


@dataclasses.dataclass(frozen=True)
class _Term:
    coefficient: int
    name: str | None  # None: a literal size


@dataclasses.dataclass(frozen=True)
class _Arg:
    """One argument's spec, parsed from its pattern (see `shapes`)."""

    name: str
    written: str  # the pattern as written (no markers), shown in messages
    dims: str  # the dimensions alone, as written
    note: str  # the text after the comma or colon
    integer: bool
    optional: bool
    tokens: tuple[tuple[_Term, ...] | None, ...]  # None: the ellipsis

    @property
    def ellipsis(self) -> int | None:
        return self.tokens.index(None) if None in self.tokens else None


def _parse(name: str, pattern: str) -> _Arg:
    cut = re.search(r"[,:]", pattern)  # the note starts at the first comma or colon
    dims, _note = (pattern[:cut.start()], pattern[cut.end():]) if cut else (pattern, "")
    words = dims.split()
    markers = [w for w in words if w in _MARKERS]
    body = "".join(w for w in words if w not in _MARKERS).replace("...", "…")
    tokens: list[tuple[_Term, ...] | None] = []
    for text in body.split("×") if body else []:
        if text == "…":
            tokens.append(None)
            continue
        terms = []
        for part in text.split("+"):
            m = re.fullmatch(r"(\d*)(.*)", part)
            if not part or (not m[1] and not m[2]) or (m[2] and not m[2].isidentifier()):
                raise ValueError(f"shapes: cannot read {text!r} in {name}={pattern!r}")
            terms.append(_Term(int(m[1] or 1), m[2] or None) if m[2] else _Term(int(m[1]), None))
        tokens.append(tuple(terms))
    if tokens.count(None) > 1:
        raise ValueError(f"shapes: at most one … in {name}={pattern!r}")
    written = re.sub(r"^\s*((int|optional)\s+)+", "", pattern).strip()
    return _Arg(name, written, body, _note.strip(), "int" in markers, "optional" in markers,
                tuple(tokens))


def _simple(token: tuple[_Term, ...]) -> str | None:
    """The dimension a token binds (`"d_in"`), or None for a sum, multiple or literal."""
    (t,) = token if len(token) == 1 else (None,)
    return t.name if t is not None and t.coefficient == 1 and t.name else None


def _text(token: tuple[_Term, ...]) -> str:
    return "+".join(f"{t.coefficient if t.coefficient != 1 or not t.name else ''}"
                    f"{t.name or ''}" for t in token)


class Shapes:
    """A primitive's argument specs (built by `shapes`); `spec(**arguments) -> dims`
    checks the arguments it names and returns the sizes bound to the dimension names.
    """

    def __init__(self, fn: str, args: dict[str, str]) -> None:
        self.fn = fn
        self.args = tuple(_parse(n, p) for n, p in args.items())
        self.names = tuple(a.name for a in self.args)

    def __repr__(self) -> str:
        inner = ", ".join(f"{a.name}={a.written!r}" for a in self.args)
        return f"shapes({self.fn!r}, {inner})"

    def __call__(self, **arguments: Any) -> dict[str, int]:
        dims: dict[str, int] = {}
        owner: dict[str, tuple[str, tuple[int, ...], int, _Arg]] = {}  # dim -> who bound it
        lead: tuple[str, tuple[int, ...], _Arg, tuple[int, ...]] | None = None
        for arg in self.args:
            if arg.name not in arguments:
                continue
            x = arguments[arg.name]
            if x is None and arg.optional:
                continue
            if arg.integer:
                integer(self.fn, arg.name, x, arg.note)
            else:
                floating(self.fn, arg.name, x)
            shape = tuple(int(d) for d in jnp.shape(x))
            self._rank(arg, shape)
            e = arg.ellipsis
            sizes = self._positions(arg, shape)  # token index -> size
            if e is not None:
                covered = shape[e:len(shape) - (len(arg.tokens) - e - 1)]
                if lead is None:
                    lead = (arg.name, shape, arg, covered)
                elif covered != lead[3]:
                    self._lead_mismatch(lead, arg, shape)
            for i, token in enumerate(arg.tokens):
                if token is None:
                    continue
                expected = self._value(token, dims)
                if expected is None:  # first sight of a name: bind it
                    name = _simple(token)
                    if name is not None:
                        dims[name] = sizes[i]
                        owner[name] = (arg.name, shape, self._index(arg, i), arg)
                    continue
                if expected != sizes[i]:
                    self._mismatch(arg, shape, i, token, dims, owner, lead)
        return dims

    # pieces -------------------------------------------------------------------------
    def _rank(self, arg: _Arg, shape: tuple[int, ...]) -> None:
        named = len(arg.tokens) - (arg.ellipsis is not None)
        if arg.ellipsis is not None and len(shape) < named:
            raise ValueError(f"{self.fn}: {arg.name} must have at least {named} dimension(s) "
                             f"({arg.written}), got shape {shape}")
        if arg.ellipsis is None and len(shape) != named:
            what = f" ({arg.written})" if arg.written else ", a scalar"
            raise ValueError(f"{self.fn}: {arg.name} must have {named} dimension(s){what}, "
                             f"got shape {shape}")

    @staticmethod
    def _index(arg: _Arg, i: int) -> int:
        """Token `i`'s axis, negative when it follows the ellipsis."""
        e = arg.ellipsis
        return i if e is None or i < e else i - len(arg.tokens)

    def _positions(self, arg: _Arg, shape: tuple[int, ...]) -> dict[int, int]:
        return {i: shape[self._index(arg, i)] for i, t in enumerate(arg.tokens) if t is not None}

    @staticmethod
    def _value(token: tuple[_Term, ...], dims: dict[str, int]) -> int | None:
        if any(t.name is not None and t.name not in dims for t in token):
            return None
        return sum(t.coefficient * (dims[t.name] if t.name else 1) for t in token)

    @staticmethod
    def _axis_words(arg: _Arg, index: int, ndim: int) -> str:
        if index < 0 or (arg.ellipsis is None and index == ndim - 1 and ndim > 1):
            k = -index if index < 0 else 1
            return "last" if k == 1 else f"{_ORDINALS[k - 1]} to last"
        return _ORDINALS[index] if index < len(_ORDINALS) else f"#{index + 1}"

    def _lead_mismatch(self, lead: tuple, arg: _Arg, shape: tuple[int, ...]) -> None:
        a_name, a_shape, a_arg, _ = lead
        if len(a_arg.tokens) == 1 and len(arg.tokens) == 1:  # both "…": the same shape
            raise ValueError(f"{self.fn}: {a_name} and {arg.name} must have the same shape, got "
                             f"{a_name} {a_shape} and {arg.name} {shape}")
        where = ("leading (batch) dimensions" if a_arg.ellipsis == 0 and arg.ellipsis == 0
                 else "dimensions at …")
        raise ValueError(f"{self.fn}: {a_name} {a_shape} and {arg.name} {shape} must share "
                         f"their {where} (the … in {a_name} ∈ {a_arg.dims}, {arg.name} ∈ "
                         f"{arg.dims})")

    def _mismatch(self, arg: _Arg, shape: tuple[int, ...], i: int, token: tuple[_Term, ...],
                  dims: dict[str, int], owner: dict, lead: tuple | None) -> None:
        names = [t.name for tok in arg.tokens if tok is not None for t in tok if t.name]
        binders = [owner[n] for n in dict.fromkeys(names) if n in owner and owner[n][0] != arg.name]
        sources = " and ".join(dict.fromkeys(f"{b[0]} {b[1]}" for b in binders))
        values = [self._value(t, dims) if t is not None else None for t in arg.tokens]
        if all(v is not None for v, t in zip(values, arg.tokens) if t is not None) and (
                arg.ellipsis is None or (lead is not None and lead[0] != arg.name)):
            e = arg.ellipsis
            expected = tuple(values) if e is None else (
                tuple(values[:e]) + lead[3] + tuple(values[e + 1:]))
            for_ = f" for {sources}" if sources else ""
            raise ValueError(f"{self.fn}: {arg.name} must have shape {expected} ({arg.written})"
                             f"{for_}, got {shape}")
        index = self._index(arg, i)
        name = _simple(token)
        if name is not None:
            a_name, a_shape, a_index, a_arg = owner[name]
            raise ValueError(
                f"{self.fn}: {a_name} has {name} = {dims[name]} (shape {a_shape}) but {arg.name} "
                f"has {name} = {shape[index]} (shape {shape}); the "
                f"{self._axis_words(a_arg, a_index, len(a_shape))} dimension of {a_name} must "
                f"equal the {self._axis_words(arg, index, len(shape))} of {arg.name}")
        terms = [t for t in token if t.name]
        worked = "+".join(f"{t.coefficient if t.coefficient != 1 else ''}{dims[t.name]}"
                          for t in terms)
        raise ValueError(
            f"{self.fn}: {arg.name} must have {_text(token)} = "
            f"{worked + ' = ' if len(terms) > 1 or terms[0].coefficient != 1 else ''}"
            f"{self._value(token, dims)} in its {self._axis_words(arg, index, len(shape))} "
            f"dimension{' for ' + sources if sources else ''}, got shape {shape} ({arg.written})")


def shapes(fn: str, /, **args: str) -> Shapes:
    """A declarative spec of array arguments' shapes and dtypes, for `primitive(spec=…)`.

    `shapes("linear", x="…×d_in", w="d_in×d_out", b="d_out")` says that `w` is a
    matrix, `b` a vector, `x` has at least one dimension, and the sizes with the same
    name agree: the last of `x`, the first of `w`; the second of `w` and the size of `b`.
    A pattern is dimensions joined by `×`:

    * a name (`d_in`, `H`, `d̄`) binds the size where it first appears (arguments are
      checked in the order given) and must match it everywhere after;
    * `…` stands for any number of dimensions (at most one per pattern); the `…` of
      all arguments must stand for the same dimensions (the shared batch axes);
    * a multiple or a sum of names already bound (`4H`, `d+d̄`) or a literal (`2`)
      is checked, never bound; `""` is a scalar;
    * the words `int` (an integer array: labels, ids) and `optional` (`None` is
      allowed) may lead; every other argument must be floating-point;
    * text after a comma or colon is a note shown with the pattern
      (`"V×d: one row per id"`).

    Arguments the spec does not name are not checked by it (static arguments,
    masks that broadcast). Messages name the function, the argument, what was
    expected and what was given:

    * `linear: w must have 2 dimension(s) (d_in×d_out), got shape (3,)`
    * `linear: x has d_in = 3 (shape (5, 3)) but w has d_in = 4 (shape (4, 4)); the
      last dimension of x must equal the first of w`
    * `linear: b must have shape (5,) (d_out) for w (3, 5), got (4,)`
    """
    if not args:
        raise ValueError(f"shapes: {fn}: name at least one argument")
    return Shapes(fn, args)
