"""Finite differences: planned on the host, evaluated in one compiled program.

What is differenced
-------------------
A leaf `x` with at most `max_fd_elements` elements is differenced element by
element (the unit directions `e_j`). A larger leaf is differenced along `k`
unit-norm directions `v`, compared with `⟨v, g⟩` for the gradient `g` under test:
where the check has a reference gradient, the first direction is that gradient's
own, `v = g/‖g‖` (the largest directional derivative there is, so the best ratio
of signal to rounding), the others random with entries `±1/√n`.

Steps: a ladder, chosen per direction
-------------------------------------
Along a unit direction `v` the scale of `x` is `s = max(1, ‖x ⊙ v‖)` (`|x_j|` for an
element, the RMS of `x` for a random direction) and the steps form a ladder
`h_l = 2·ε^{1/5}·s·2^{-l}`, `l = 0…4`, with `ε` the machine epsilon of the dtype the
differences are evaluated in. Each rung gives a central difference
`D_l = (f(x + h_l v) − f(x − h_l v)) / 2h_l`, each pair of rungs a Richardson
extrapolation `R_l = (4·D_{l+1} − D_l)/3` (error `O(h⁴)` where `f` is smooth), and
each pair of those an error estimate

    E_l = |R_l − R_{l+1}| + 3·ε·F/h_l

— the observed disagreement of two step sizes (truncation and rounding as they
are at this point) plus the bound on rounding, `F` being the magnitude of `f`'s
value (`|f|`, or `Σ|u||y|` for `⟨u, f(x)⟩`). The rung with the smallest `E_l` is
used: a large step where `f` is smooth, a smaller one where it curves fast. Its
`E_l` is the estimated error of that finite difference; a check's tolerance against
finite differences is `FD_SAFETY·E_l` plus the value's own rounding.

Switching points: steps that do not cross a kink
------------------------------------------------
A non-smooth primitive declares its switches (`fdl.primitive(..., switches=...)`:
ReLU's `x > 0`, max-pool's arg-max per window), discrete values that change exactly
where its derivative jumps. `probe` traces the differenced function once, abstractly,
under `fdl.recording.recording` to see whether any primitive with switches is called.
If one is, the ladder goes on down to the dtype's limit, `h ≥ 2·ε^{1/2}·s` (`LEVELS`
rungs become 9 in float32, 18 in float64), and the compiled program evaluates
every call's switches at the centre and at each stencil point: a rung whose `x ± h v`
changes any switch value (a *flip*) is refused, and only the extrapolations whose
three rungs flip none compete. A direction with no such triple down to the limit
is *not differentiable within reach*: the check then says how many switching
points the smallest step crosses and does not judge that direction against finite
differences (autodiff still is). Switches computed inside a loop body, an inner
`jit` or a `vmap` of the differenced function belong to another trace and are not
seen (`Probe.hidden` counts those calls).

Precision
---------
Differences are evaluated in float64 when `jax_enable_x64` is on (whatever the
arguments' dtype); otherwise in the arguments' dtype, except bfloat16 and float16,
which are evaluated in float32 (their own precision leaves no useful step). The
stencil points of a leaf differenced element by element are formed on the host
(from the planned value, with the same operations the program would use) and passed
in, which spares the compiled program their operations; along directions they are
formed inside the program, where the gradient's direction is known. Random
directions are drawn on the host, since a random generator inside the check would
multiply its XLA compile time on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from fdl.primitive import Primitive
from fdl.recording import recording

LEVELS = 5  # rungs of the step ladder h_0 … h_0/16 (a smooth function)
FD_SAFETY = 4.0  # tolerance = FD_SAFETY × the estimated finite-difference error
_ROUNDING = 3.0  # rounding of a Richardson pair: (8 + 1)/3 · ε·F/h
_BATCH_ELEMENTS = 2 ** 22  # stencil rows × leaf elements evaluated in one vmap step


def fd_dtype(dtype: Any) -> np.dtype:
    """The dtype finite differences of an argument of `dtype` are evaluated in."""
    if jax.config.jax_enable_x64:
        return np.dtype(np.float64)
    dtype = jnp.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else np.dtype(dtype)


def rng(key: jax.Array | None, salt: int) -> np.random.Generator:
    """A host (numpy) generator seeded from a JAX key (`None`: a fixed seed) and a salt."""
    if key is None:
        return np.random.default_rng([0, salt])
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng([*np.asarray(key, dtype=np.uint32).ravel().tolist(), salt])


def levels(dtype: Any, switches: bool) -> int:
    """Rungs of the ladder: `LEVELS` for a smooth function; with switching points,
    enough halvings of `h_0 = 2·ε^{1/5}` that the last extrapolation (three rungs)
    starts at the limit `2·ε^{1/2}` (9 rungs in float32, 18 in float64)."""
    if not switches:
        return LEVELS
    eps = float(np.finfo(dtype).eps)
    return max(LEVELS, 3 + int(np.floor(np.log2(eps ** 0.2 / eps ** 0.5))))


# --------------------------------------------------------------------------- #
# Switching points, seen through the recording hook
# --------------------------------------------------------------------------- #


def _trace() -> Any:
    """The JAX trace in force (a private attribute: `None` where it is missing, and
    then every switch is taken as belonging to the differenced function's trace)."""
    try:
        from jax._src import core
        return core.trace_ctx.trace
    except (ImportError, AttributeError):  # pragma: no cover - another JAX
        return None


class Switches:
    """A recorder for `fdl.recording.recording`: counts the primitive calls traced
    and keeps the switch values of those that declare them (`calls`, `values`: one
    list of arrays per call with switches, `hidden`: calls with switches traced in an
    inner trace — a loop body, an inner `jit` or `vmap` — whose values cannot leave it)."""

    def __init__(self) -> None:
        self.calls = 0
        self.values: list[jax.Array] = []
        self.hidden = 0
        self.names: set[str] = set()
        self.trace = _trace()

    def __call__(self, p: Primitive, full: tuple, run: Callable[[tuple], Any]) -> Any:
        self.calls += 1
        if p.switches is not None:
            if _trace() is self.trace:
                found = jax.tree_util.tree_leaves(p.switches(*full))
                self.values += [jnp.asarray(s) for s in found]
                self.names.add(p.name)
            else:
                self.hidden += 1
        return run(full)


@dataclass(frozen=True)
class Probe:
    """What one abstract trace of a function saw: `calls` primitive calls, `switches`
    switch arrays (of the primitives `names`), `hidden` calls whose switches are out of
    reach (see `Switches`)."""

    calls: int
    switches: int
    hidden: int
    names: tuple[str, ...] = ()
    out: Any = None  # the function's output shape and dtype (`jax.ShapeDtypeStruct`s)


def probe(fun: Callable, *args: Any) -> Probe:
    """Trace `fun(*args)` abstractly (`jax.eval_shape`: nothing is compiled or run)
    under a `Switches` recorder."""
    def traced(*a):
        rec = Switches()
        with recording(rec):
            out = fun(*a)
        found.append(rec)
        return out

    found: list[Switches] = []
    out = jax.eval_shape(traced, *args)
    rec = found[0]
    return Probe(rec.calls, len(rec.values), rec.hidden, tuple(sorted(rec.names)), out)


def _with_switches(fun: Callable) -> Callable:
    """`fun(args) -> (out, switches)`: the switch values its primitive calls produced."""
    def run(args):
        rec = Switches()
        with recording(rec):
            out = fun(args)
        return out, rec.values
    return run


def _flips(switches: list[jax.Array]) -> jax.Array:
    """Per stencil row (all rows but the first, the centre): how many switch elements
    differ from the centre's."""
    total = None
    for s in switches:
        moved = (s[1:] != s[:1]).reshape(s.shape[0] - 1, -1)
        count = jnp.sum(moved, axis=1, dtype=jnp.int32)
        total = count if total is None else total + count
    return total


# --------------------------------------------------------------------------- #
# The plan (host), the evaluation (traced), the derivatives (host)
# --------------------------------------------------------------------------- #


@dataclass
class Plan:
    """Which leaves are differenced, and how (host data; nothing compiled).

    Per leaf `i`: `kinds[i]` is `None` (not differenced), `"elements"` or
    `"directions"`; `count[i]` the number of directions (`n` for elements);
    `random[i]` the random unit directions `(count, *x.shape)` of a `"directions"`
    leaf (the first replaced by the gradient's own when `gradient`); `dtypes[i]` the
    dtype of the differences; `levels[i]` the rungs of its ladder. `rows` holds one
    `(leaf, direction, point)` per function evaluation, `point = 2l` for `+h_l` and
    `2l + 1` for `−h_l`, grouped by leaf and direction; with `switches`, a first row
    `(−1, 0, 0)` is the centre (nothing moved), whose switch values every other row's
    are compared with. `batch` is the `lax.map` batch size (`None`: one `vmap`).
    With one `vmap`, an `"elements"` leaf's steps `steps[i]` `(count, levels)` and its
    block of stencil points `points[i]` `(count·2·levels, *x.shape)` are formed here,
    on the host, from the planned value (`_host_points`); `None` otherwise.
    """

    kinds: list[str | None]
    count: list[int]
    random: list[np.ndarray | None]
    dtypes: list[np.dtype]
    gradient: bool
    rows: np.ndarray
    batch: int | None
    levels: list[int]
    switches: bool = False
    steps: list[np.ndarray | None] = field(default_factory=list)
    points: list[np.ndarray | None] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return any(k is not None for k in self.kinds)

    def inputs(self) -> tuple:
        """The arrays the compiled program takes (passed as arguments, not constants):
        the rows (only for `lax.map`, `batch`), the random directions and the
        host-formed stencil points of `"elements"` leaves."""
        return (self.rows if self.batch is not None else None,
                [r for r in self.random if r is not None],
                [b for b in self.points if b is not None])


def plan(values: Sequence[jax.Array], max_fd_elements: int, directions: int,
         key: jax.Array | None, enabled: bool, gradient: bool,
         switches: bool = False) -> Plan:
    """Plan finite differences for the leaves `values`; `switches`: the differenced
    function calls a primitive with switching points (`probe`), so the ladders go down
    to the dtype's limit and the program counts flips."""
    generator = rng(key, 2)
    p = Plan([], [], [], [], gradient, np.zeros((0, 3), np.int32), None, [], switches)
    rows = [np.zeros((1, 3), np.int64) - np.array([[1, 0, 0]])] if switches else []
    for i, leaf in enumerate(values):
        dtype = fd_dtype(leaf.dtype)
        kind, count, random = None, 0, None
        if enabled and leaf.size:
            if leaf.size <= max_fd_elements:
                kind, count = "elements", leaf.size
            else:
                kind, count = "directions", max(1, directions)
                signs = generator.choice(np.array([-1.0, 1.0]), size=(count,) + leaf.shape)
                random = (signs / np.sqrt(leaf.size)).astype(dtype)
        p.kinds.append(kind)
        p.count.append(count)
        p.random.append(random)
        p.dtypes.append(dtype)
        p.levels.append(levels(dtype, switches))
        if kind is not None:
            d, pt = np.meshgrid(np.arange(count), np.arange(2 * p.levels[-1]), indexing="ij")
            rows.append(np.stack([np.full(d.size, i), d.ravel(), pt.ravel()], axis=1))
    if not p.enabled:
        p.switches = False
        return p
    p.rows = np.concatenate(rows).astype(np.int32)
    per_row = sum(int(v.size) for v in values)
    if p.rows.shape[0] * per_row > _BATCH_ELEMENTS:
        p.batch = max(1, _BATCH_ELEMENTS // max(1, per_row))
    p.steps = [None] * len(values)
    p.points = [None] * len(values)
    if p.batch is None:  # the rows of one vmap: element stencils formed here
        for i, leaf in enumerate(values):
            if p.kinds[i] == "elements":
                p.steps[i], p.points[i] = _host_points(np.asarray(leaf), p.dtypes[i],
                                                       p.levels[i])
    return p


def _ladder(dtype: np.dtype, levels: int) -> np.ndarray:
    """`h_l / s = 2·ε^{1/5}·2^{-l}`, `l = 0 … levels − 1`, in `dtype`."""
    return (2 * float(np.finfo(dtype).eps) ** 0.2 * 0.5 ** np.arange(levels)).astype(dtype)


def _host_points(x: np.ndarray, dtype: np.dtype, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """An `"elements"` leaf's steps `(n, levels)` and its stencil points
    `(n·2·levels, *x.shape)` (`x ± h_l e_j`, in the order of the plan's rows), in
    `dtype`, on the host: the same IEEE operations, in the same order, as forming them
    in the program, which would cost some twenty operations of XLA compile per leaf."""
    x = x.astype(dtype)
    n = x.size
    steps = np.maximum(np.asarray(1, dtype), np.abs(x).ravel())[:, None] * \
        _ladder(dtype, levels)[None]
    signed = np.stack([steps, -steps], axis=-1).reshape(n, -1)  # +h_l, −h_l; exact
    hot = np.arange(n)[:, None, None] == np.arange(n)[None, None, :]
    at = x.ravel()[None, None] + np.where(hot, signed[:, :, None], np.zeros((), dtype))
    return steps, at.reshape((-1,) + x.shape)


def evaluate(fun: Callable, values: Sequence[jax.Array], p: Plan, inputs: tuple,
             gradients: Sequence[jax.Array] | None = None) -> tuple | None:
    """Traceable: `fun(leaves) -> (out, magnitude)` at every stencil point of `p`.

    `values` are the values `p` was planned for, `inputs` is `p.inputs()`, passed in
    as arguments of the compiled check; `gradients` the reference gradient per leaf
    (its direction is the first of a `"directions"` leaf), or `None`. Returns
    `((outs, magnitudes), steps, directions, flips)`: the outputs per row, the step
    ladder `(count, levels)` (`None` where the plan holds it, `p.steps`) and the
    directions used per differenced leaf (`None` for elements), and with `p.switches`
    the number of switch elements each row changes (else `None`).

    The stencil points are stacked with broadcasts and one concatenation per leaf, in
    the order of `p.rows` (an `"elements"` leaf's block comes formed from the host,
    `p.points`), and `fun` is mapped over them once (`vmap`); a plan too
    large for one batch (`p.batch`) forms each row's point inside `lax.map` instead.
    Where `fun` holds a convolution, each leaf's block of rows is mapped on its own
    with only that leaf batched (`_mapped`, `_mapped_rows`): the same rows and values,
    without the feature-group convolution a map batching input and kernel makes.
    """
    if not p.enabled:
        return None
    rows, randoms, points = inputs
    randoms, points = iter(randoms), iter(points)
    xs = [v.astype(dt) for v, dt in zip(values, p.dtypes)]
    steps, dirs, formed = [], [], []
    for j, x in enumerate(xs):
        kind, dt = p.kinds[j], p.dtypes[j]
        ladder = _ladder(dt, p.levels[j])
        v = None
        block = next(points) if p.points and p.points[j] is not None else None
        formed.append(block if p.batch is None else None)  # lax.map forms its own points
        if kind is None or formed[-1] is not None:  # not differenced, or formed on the host
            steps.append(None)
            dirs.append(None)
            continue
        if kind == "elements":
            s = jnp.maximum(1, jnp.abs(x).ravel())
        else:
            v = next(randoms)
            if p.gradient and gradients is not None:
                g = gradients[j].astype(dt)
                norm = jnp.sqrt(jnp.sum(g * g))
                own = g / jnp.where(norm > 0, norm, 1)
                v = jnp.concatenate([jnp.where(norm > 0, own, v[0])[None], v[1:]])
            axes = tuple(range(1, v.ndim))
            s = jnp.maximum(1, jnp.sqrt(jnp.sum((x[None] * v) ** 2, axis=axes)))
        steps.append(s[:, None] * jnp.asarray(ladder)[None])
        dirs.append(v)

    one = _with_switches(fun) if p.switches else fun
    # +s·h_l at point 2l, −s·h_l at 2l + 1 (the plan's point order; negation is exact)
    signed = [None if st is None else jnp.stack([st, -st], axis=-1).reshape(st.shape[0], -1)
              for st in steps]
    if p.batch is None:
        out = _mapped(one, xs, p, _stencil(xs, p, signed, dirs, formed))
    else:
        out = _mapped_rows(one, xs, p, steps, dirs, rows)
    flips = None
    if p.switches:
        out, switches = out
        flips = _flips(switches) if switches else jnp.zeros(p.rows.shape[0] - 1, jnp.int32)
        out = jax.tree_util.tree_map(lambda a: a[1:], out)
    return out, steps, dirs, flips


def _has_convolution(jaxpr: Any) -> bool:
    """Whether a jaxpr, or any jaxpr inside it (`pjit`, `custom_vjp`, `custom_jvp`,
    loop and branch bodies), holds a `conv_general_dilated`."""
    return (any(e.primitive.name == "conv_general_dilated" for e in jaxpr.eqns)
            or any(_has_convolution(j) for j in jex.subjaxprs(jaxpr)))


def _traced_once(fn: Callable, *args: Any) -> tuple[bool, Any]:
    """`fn(*args)` traced once to a jaxpr: whether it holds a convolution, and its
    value (the jaxpr inlined into the current trace, so `fn` is not traced again)."""
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    if _has_convolution(closed.jaxpr):
        return True, None
    out = jex.jaxpr_as_fun(closed)(*jax.tree_util.tree_leaves(args))
    return False, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), out)


def _blocks(p: Plan) -> list[tuple[int, int, int]]:
    """`(leaf, first row, rows)` of each differenced leaf's block of `p.rows`."""
    blocks, start = [], 1 if p.switches else 0
    for i, kind in enumerate(p.kinds):
        if kind is not None:
            n = p.count[i] * 2 * p.levels[i]
            blocks.append((i, start, n))
            start += n
    return blocks


def _centre(one: Callable, xs: list) -> Any:
    """The centre row (nothing moved), as a block of one row."""
    return jax.tree_util.tree_map(lambda a: a[None], one(xs))


def _concatenate(blocks: list) -> Any:
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *blocks)


def _mapped(one: Callable, xs: list, p: Plan, stacked: list) -> Any:
    """`one` mapped over the stencil rows `stacked` (`_stencil`), in the order of `p.rows`.

    The stacked map is traced once, to a jaxpr. Without a convolution in it, that jaxpr
    is the evaluation (inlined, nothing traced again). With one, batching every leaf at
    once would make a convolution whose input and kernel are both batched, which `vmap`
    turns into a feature-group convolution of one group per row (which XLA's lowest
    optimisation level runs as loops, for minutes); instead each differenced leaf's
    block of rows is mapped with only that leaf batched (`in_axes` `None` for the
    others), so a batched input folds into the convolution's batch and a batched kernel
    into its output features. The rows and values are the same either way."""
    axes = [0 if k is not None else None for k in p.kinds]
    conv, out = _traced_once(jax.vmap(one, in_axes=(axes,)), stacked)
    if not conv:
        return out
    blocks = [_centre(one, xs)] if p.switches else []
    for i, start, n in _blocks(p):
        moved = jax.lax.slice_in_dim(stacked[i], start, start + n)  # leaf i's block
        blocks.append(jax.vmap(lambda x, i=i: one([x if j == i else y
                                                   for j, y in enumerate(xs)]))(moved))
    return _concatenate(blocks)


def _mapped_rows(one: Callable, xs: list, p: Plan, steps: list, dirs: list,
                 rows: jax.Array) -> Any:
    """`one` at every row of `rows` (`p.rows`), in `lax.map` batches of `p.batch` rows,
    each row's point formed inside the map (`_at_row`). As in `_mapped`: traced once,
    and with a convolution, each leaf's block mapped on its own with only that leaf
    moved (batched)."""
    def rows_of(leaf: int | None) -> Callable:
        return lambda r: jax.lax.map(lambda row: one(_at_row(xs, p, steps, dirs, row, leaf)),
                                     r, batch_size=p.batch)
    conv, out = _traced_once(rows_of(None), rows)
    if not conv:
        return out
    blocks = [_centre(one, xs)] if p.switches else []
    for i, start, n in _blocks(p):
        blocks.append(rows_of(i)(jax.lax.slice_in_dim(rows, start, start + n)))
    return _concatenate(blocks)


def _stencil(xs: list, p: Plan, signed: list, dirs: list, formed: list) -> list:
    """Every leaf at every stencil point, stacked along a first axis in the order of
    `p.rows` (`None` for a leaf that is not differenced: it stays as it is). A block of
    rows moves one leaf; the others are broadcast. `formed[j]`: leaf `j`'s block formed
    on the host (`_host_points`), else `None`."""
    moved = []
    for j, x in enumerate(xs):
        if p.kinds[j] is None:
            continue
        if formed[j] is not None:
            moved.append((j, formed[j].astype(x.dtype)))
            continue
        t = signed[j]  # (count, 2·levels)
        if p.kinds[j] == "elements":  # x + t e_d: a one-hot, not a scatter
            n = x.size
            hot = jnp.arange(n)[:, None, None] == jnp.arange(n)[None, None, :]
            at = x.ravel()[None, None] + jnp.where(hot, t[:, :, None], jnp.zeros((), x.dtype))
        else:  # x + t v_d
            expand = (slice(None), slice(None)) + (None,) * x.ndim
            at = x[None, None] + t[expand] * dirs[j][:, None]
        moved.append((j, at.reshape((-1,) + x.shape)))
    stacked = []
    for i, x in enumerate(xs):
        if p.kinds[i] is None:
            stacked.append(None)
            continue
        blocks = [x[None]] if p.switches else []  # the centre row
        blocks += [at if j == i else jnp.broadcast_to(x[None], (at.shape[0],) + x.shape)
                   for j, at in moved]
        stacked.append(jnp.concatenate(blocks) if len(blocks) > 1 else blocks[0])
    return [x if s is None else s for x, s in zip(xs, stacked)]


def _at_row(xs: list, p: Plan, steps: list, dirs: list, row: jax.Array,
            only: int | None = None) -> list:
    """Every leaf at the stencil point of one row `(leaf, direction, point)` of
    `p.rows` (traced: for `lax.map` over rows); `only`: a row of that leaf's block, the
    others left as they are (not batched)."""
    leaf, d, pt = row[0], row[1], row[2]
    level, sign = pt // 2, 1 - 2 * (pt % 2)
    args = []
    for j, x in enumerate(xs):
        if p.kinds[j] is None or (only is not None and j != only):
            args.append(x)
            continue
        dj = jnp.minimum(d, p.count[j] - 1)
        t = sign.astype(x.dtype) * steps[j][dj, level]
        if p.kinds[j] == "elements":  # a one-hot, not a scatter: cheaper to compile
            hot = jnp.arange(x.size, dtype=dj.dtype) == dj
            moved = (x.ravel() + jnp.where(hot, t, jnp.zeros((), x.dtype))).reshape(x.shape)
        else:
            moved = x + t * dirs[j][dj]
        args.append(moved if only is not None else jnp.where(leaf == j, moved, x))
    return args


@dataclass
class Derivatives:
    """Finite differences of one leaf, on the host (float64).

    `value`, `error`, `step`: the derivative along each direction, its estimated
    error and the step used, each `(count, *out_shape)`; `directions` the unit
    directions `(count, *x.shape)`, or `None` for element by element. With switching
    points: `avoided[k]` the switch elements the largest step `h_0` changes along
    direction `k` (which the step used does not), and `crossed[k]` the number the
    smallest step changes where no step is free of them (`0` where one is: a
    direction with `crossed > 0` is not differentiable within reach and its `error`
    is infinite); `None` without switching points. `outside[k]`: every extrapolation
    along direction `k` is non-finite (the steps leave the function's domain, e.g. a
    logarithm's); `None` where none is.
    """

    value: np.ndarray
    error: np.ndarray
    step: np.ndarray
    directions: np.ndarray | None
    avoided: np.ndarray | None = None
    crossed: np.ndarray | None = None
    outside: np.ndarray | None = None  # per direction: every step gave a non-finite value


def derivatives(p: Plan, evaluated: Any) -> list[Derivatives | None]:
    """Host: the chosen Richardson extrapolation per direction and its error estimate
    (module docstring), from the output of `evaluate`."""
    out: list[Derivatives | None] = [None] * len(p.kinds)
    if evaluated is None:
        return out
    (ys, mags), steps, dirs, flips = evaluated
    ys, mags = np.asarray(ys, dtype=np.float64), np.asarray(mags, dtype=np.float64)
    flips = None if flips is None else np.asarray(flips)
    out_shape = ys.shape[1:]
    start = 0
    for j, kind in enumerate(p.kinds):
        if kind is None:
            continue
        c, lv = p.count[j], p.levels[j]
        n = c * 2 * lv
        y = ys[start:start + n].reshape((c, lv, 2) + out_shape)
        magnitude = mags[start:start + n].reshape(c, 2 * lv).max(axis=1)
        flipped = None if flips is None else flips[start:start + n].reshape(c, lv, 2).max(axis=2)
        start += n
        eps = float(np.finfo(p.dtypes[j]).eps)
        h = np.asarray(steps[j] if steps[j] is not None else p.steps[j], dtype=np.float64)
        expand = (slice(None), slice(None)) + (None,) * len(out_shape)
        d = (y[:, :, 0] - y[:, :, 1]) / (2 * h[expand])
        r = (4 * d[:, 1:] - d[:, :-1]) / 3  # (c, levels - 1, *out)
        noise = _ROUNDING * eps * magnitude[:, None] / h[:, :-1]  # (c, levels - 1)
        e = np.abs(r[:, :-1] - r[:, 1:]) + noise[:, :-1][expand]
        e = np.where(np.isnan(e), np.inf, e)
        # no finite extrapolation at all: every step leaves the function's domain
        outside = ~np.isfinite(e).reshape(c, e.shape[1], -1).all(axis=2).any(axis=1)
        avoided = crossed = None
        if flipped is not None:  # E_l uses rungs l, l+1, l+2: each must flip nothing
            clean = flipped == 0
            usable = clean[:, :-2] & clean[:, 1:-1] & clean[:, 2:]  # (c, levels - 2)
            e = np.where(usable[expand], e, np.inf)
            reachable = usable.any(axis=1)
            avoided = np.where(reachable, flipped[:, 0], 0)
            crossed = np.where(reachable, 0, np.maximum(flipped[:, -1], 1))
        best = np.argmin(e, axis=1)[:, None]
        if flipped is not None:  # unreachable: the smallest rungs, infinite error
            best = np.where(reachable.reshape((c,) + (1,) * (best.ndim - 1)), best,
                            e.shape[1] - 1)
        pick = lambda a: np.take_along_axis(a, best, axis=1)[:, 0]  # noqa: E731
        hb = np.broadcast_to(h[:, :-2][expand], e.shape)
        out[j] = Derivatives(pick(r[:, :-1]), pick(e), pick(hb),
                             None if dirs[j] is None else np.asarray(dirs[j], np.float64),
                             avoided, crossed, outside if outside.any() else None)
    return out
