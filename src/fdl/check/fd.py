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
used: a large step where `f` is smooth, a smaller one where it curves fast or a
kink (ReLU at 0) lies within the larger steps. Its `E_l` is the estimated error of
that finite difference; a check's tolerance against finite differences is
`FD_SAFETY·E_l` plus the value's own rounding. Near a kink closer than the
smallest rung no step is good; the estimate is then large and says so.

Precision
---------
Differences are evaluated in float64 when `jax_enable_x64` is on (whatever the
arguments' dtype); otherwise in the arguments' dtype, except bfloat16 and float16,
which are evaluated in float32 (their own precision leaves no useful step). The
stencil points are formed inside the compiled program from the directions and
the steps; random directions are drawn on the host, since a random generator
inside the check would multiply its XLA compile time on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LEVELS = 5  # rungs of the step ladder h_0 … h_0/16
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


@dataclass
class Plan:
    """Which leaves are differenced, and how (host data; nothing compiled).

    Per leaf `i`: `kinds[i]` is `None` (not differenced), `"elements"` or
    `"directions"`; `count[i]` the number of directions (`n` for elements);
    `random[i]` the random unit directions `(count, *x.shape)` of a `"directions"`
    leaf (the first replaced by the gradient's own when `gradient`); `dtypes[i]` the
    dtype of the differences. `rows` holds one `(leaf, direction, point)` per
    function evaluation, `point = 2l` for `+h_l` and `2l + 1` for `−h_l`, grouped by
    leaf and direction; `batch` is the `lax.map` batch size (`None`: one `vmap`).
    """

    kinds: list[str | None]
    count: list[int]
    random: list[np.ndarray | None]
    dtypes: list[np.dtype]
    gradient: bool
    rows: np.ndarray
    batch: int | None

    @property
    def enabled(self) -> bool:
        return any(k is not None for k in self.kinds)

    def inputs(self) -> tuple:
        """The arrays the compiled program takes (passed as arguments, not constants)."""
        return self.rows, [r for r in self.random if r is not None]


def plan(values: Sequence[jax.Array], max_fd_elements: int, directions: int,
         key: jax.Array | None, enabled: bool, gradient: bool) -> Plan:
    """Plan finite differences for the leaves `values`."""
    generator = rng(key, 2)
    p = Plan([], [], [], [], gradient, np.zeros((0, 3), np.int32), None)
    rows = []
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
        if kind is not None:
            d, pt = np.meshgrid(np.arange(count), np.arange(2 * LEVELS), indexing="ij")
            rows.append(np.stack([np.full(d.size, i), d.ravel(), pt.ravel()], axis=1))
    if rows:
        p.rows = np.concatenate(rows).astype(np.int32)
        per_row = sum(int(v.size) for v in values)
        if p.rows.shape[0] * per_row > _BATCH_ELEMENTS:
            p.batch = max(1, _BATCH_ELEMENTS // max(1, per_row))
    return p


def evaluate(fun: Callable, values: Sequence[jax.Array], p: Plan, inputs: tuple,
             gradients: Sequence[jax.Array] | None = None) -> tuple:
    """Traceable: `fun(leaves) -> (out, magnitude)` at every stencil point of `p`.

    `inputs` is `p.inputs()`, passed in as arguments of the compiled check;
    `gradients` the reference gradient per leaf (its direction is the first of a
    `"directions"` leaf), or `None`. Returns `((outs, magnitudes), steps,
    directions)`: the outputs per row, the step ladder `(count, LEVELS)` and the
    directions used per differenced leaf (`None` for elements).
    """
    if not p.enabled:
        return None
    rows, randoms = inputs
    randoms = iter(randoms)
    xs = [v.astype(dt) for v, dt in zip(values, p.dtypes)]
    steps, dirs = [], []
    for j, x in enumerate(xs):
        kind, dt = p.kinds[j], p.dtypes[j]
        ladder = 2 * float(np.finfo(dt).eps) ** 0.2 * 0.5 ** np.arange(LEVELS)
        v = None
        if kind is None:
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
                v = v.at[0].set(jnp.where(norm > 0, own, v[0]))
            axes = tuple(range(1, v.ndim))
            s = jnp.maximum(1, jnp.sqrt(jnp.sum((x[None] * v) ** 2, axis=axes)))
        steps.append(s[:, None] * jnp.asarray(ladder, dt)[None])
        dirs.append(v)

    def at_row(row: jax.Array) -> Any:
        leaf, d, pt = row[0], row[1], row[2]
        level, sign = pt // 2, 1 - 2 * (pt % 2)
        args = []
        for j, x in enumerate(xs):
            if p.kinds[j] is None:
                args.append(x)
                continue
            dj = jnp.minimum(d, p.count[j] - 1)
            t = sign.astype(x.dtype) * steps[j][dj, level]
            if p.kinds[j] == "elements":
                moved = x.ravel().at[dj].add(t).reshape(x.shape)
            else:
                moved = x + t * dirs[j][dj]
            args.append(jnp.where(leaf == j, moved, x))
        return fun(args)

    if p.batch is None:
        out = jax.vmap(at_row)(rows)
    else:
        out = jax.lax.map(at_row, rows, batch_size=p.batch)
    return out, steps, dirs


@dataclass
class Derivatives:
    """Finite differences of one leaf, on the host (float64).

    `value`, `error`, `step`: the derivative along each direction, its estimated
    error and the step used, each `(count, *out_shape)`; `directions` the unit
    directions `(count, *x.shape)`, or `None` for element by element.
    """

    value: np.ndarray
    error: np.ndarray
    step: np.ndarray
    directions: np.ndarray | None


def derivatives(p: Plan, evaluated: Any) -> list[Derivatives | None]:
    """Host: the chosen Richardson extrapolation per direction and its error estimate
    (module docstring), from the output of `evaluate`."""
    out: list[Derivatives | None] = [None] * len(p.kinds)
    if evaluated is None:
        return out
    (ys, mags), steps, dirs = evaluated
    ys, mags = np.asarray(ys, dtype=np.float64), np.asarray(mags, dtype=np.float64)
    out_shape = ys.shape[1:]
    start = 0
    for j, kind in enumerate(p.kinds):
        if kind is None:
            continue
        c, n = p.count[j], p.count[j] * 2 * LEVELS
        y = ys[start:start + n].reshape((c, LEVELS, 2) + out_shape)
        magnitude = mags[start:start + n].reshape(c, 2 * LEVELS).max(axis=1)
        start += n
        eps = float(np.finfo(p.dtypes[j]).eps)
        h = np.asarray(steps[j], dtype=np.float64)  # (c, LEVELS)
        expand = (slice(None), slice(None)) + (None,) * len(out_shape)
        d = (y[:, :, 0] - y[:, :, 1]) / (2 * h[expand])
        r = (4 * d[:, 1:] - d[:, :-1]) / 3  # (c, LEVELS - 1, *out)
        noise = _ROUNDING * eps * magnitude[:, None] / h[:, :-1]  # (c, LEVELS - 1)
        e = np.abs(r[:, :-1] - r[:, 1:]) + noise[:, :-1][expand]
        e = np.where(np.isnan(e), np.inf, e)
        best = np.argmin(e, axis=1)[:, None]
        pick = lambda a: np.take_along_axis(a, best, axis=1)[:, 0]  # noqa: E731
        hb = np.broadcast_to(h[:, :-2][expand], e.shape)
        out[j] = Derivatives(pick(r[:, :-1]), pick(e), pick(hb),
                             None if dirs[j] is None else np.asarray(dirs[j], np.float64))
    return out
