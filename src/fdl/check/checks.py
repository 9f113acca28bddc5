"""The checks: `vjp`, `grad`, `jacobian`, `model`, and `examples` for the registry.

Each check has a traceable part (the reference, the finite differences and, under
`jit`, the rule under test: one XLA program) and a host part that turns the
program's outputs into a `Report`. `examples` puts the traceable parts of all of a
primitive's registered examples into one program, compiled once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fdl.check import bisect, fd
from fdl.check.arguments import (_FAST_COMPILE, Leaves, arg_names, compiled, in_mode,
                                 is_float, leaves_of, name_of)
from fdl.check.bisect import ModelReport
from fdl.check.report import AUTODIFF, FINITE_DIFFERENCES, Comparison, Report, compare, tolerance
from fdl.primitive import Primitive, gradient_mode

_AD_FLOOR = 100.0  # × ε × S (see the package docstring): roundoff of autodiff


# --------------------------------------------------------------------------- #
# Rows
# --------------------------------------------------------------------------- #


def _title(title: str, leaves: Leaves, plan: fd.Plan) -> str:
    dtypes = sorted({str(v.dtype) for v in leaves.values})
    fd_dtypes = sorted({dt.name for dt, k in zip(plan.dtypes, plan.kinds) if k is not None})
    where = f"; finite differences in {', '.join(fd_dtypes)}" if fd_dtypes else ""
    return f"{title}  [{', '.join(dtypes)}{where}]"


def _ordered(rows: list[Comparison]) -> list[Comparison]:
    """Group rows by argument, autodiff before finite differences."""
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(r.name.split(" (")[0], len(order))
    return sorted(rows, key=lambda r: (order[r.name.split(" (")[0]], r.against != AUTODIFF))


def _max_abs(a: Any) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64)), initial=0.0))


def _ad_floor(leaves: Leaves, references: Sequence[Any], magnitude: Any) -> float:
    """`S` of the roundoff floor `100·ε·S`: the larger of the largest reference value
    over all leaves and the function's magnitude per unit of input, `F / max(1, max|x|)`."""
    scale = max((_max_abs(r) for r in references), default=0.0)
    size = max((_max_abs(x) for x in leaves.values), default=0.0)
    return max(scale, float(magnitude) / max(1.0, size))


def _ad_rows(leaves: Leaves, values: Sequence[Any], references: Sequence[Any], scale: float,
             *, rtol: float | None, check_dtype: bool = True) -> list[Comparison]:
    """Rows of values under test vs autodiff, with the roundoff floor `100·ε·scale`."""
    rows = []
    for name, x, m, r in zip(leaves.names, leaves.values, values, references):
        eps = float(jnp.finfo(x.dtype).eps)
        rows.append(compare(name, AUTODIFF, m, r, rtol=rtol, floor=_AD_FLOOR * eps * scale,
                            dtype=x.dtype if check_dtype else None))
    return rows


def _directions(k: int, gradient: bool) -> str:
    """`"gradient and 2 random directions"`, `"3 random directions"`, …"""
    plural = lambda n: f"{n} random direction" + ("s" if n != 1 else "")  # noqa: E731
    if not gradient:
        return plural(k)
    return "gradient direction" if k == 1 else f"gradient and {plural(k - 1)}"


def _rtol(dtype: Any) -> float:
    """The default relative tolerance for an argument of `dtype` (float64's if it
    has none, e.g. a Python float)."""
    try:
        return tolerance(dtype, FINITE_DIFFERENCES)
    except ValueError:
        return tolerance(jnp.float64, FINITE_DIFFERENCES)


def _fd_rows(leaves: Leaves, plan: fd.Plan, derivs: list[fd.Derivatives | None],
             expected: Sequence[Any], scale: float, *, rtol: float | None,
             jacobian_of: tuple | None = None) -> list[Comparison]:
    """Rows comparing `expected[i]` (the gradient, or with `jacobian_of` the output
    shape, the Jacobian under test) with the finite differences `derivs`. The
    tolerance of each element is `rtol·(|r| + max|r|) + 100·ε·scale` for the value's
    own rounding plus `FD_SAFETY ×` its estimated finite-difference error."""
    rows = []
    out_shape = jacobian_of or ()
    for name, x, g, d in zip(leaves.names, leaves.values, expected, derivs):
        if d is None:
            continue
        g = np.asarray(g, dtype=jnp.result_type(g))
        dtype = None if jacobian_of is not None else x.dtype
        if g.shape != out_shape + x.shape:  # wrong shape: let compare say so
            rows.append(compare(name, FINITE_DIFFERENCES, g, np.zeros(out_shape + x.shape)))
            continue
        if d.directions is None:  # element by element: laid out like g
            if jacobian_of is None:
                lay = lambda a: a.reshape(x.shape)  # noqa: E731
            else:
                lay = lambda a: np.moveaxis(  # noqa: E731
                    a.reshape((x.size,) + out_shape), 0, -1).reshape(g.shape)
            value, ref, err, step = g, lay(d.value), lay(d.error), lay(d.step)
            label = name
        else:
            g64, n_in = g.astype(np.float64), x.ndim
            if jacobian_of is None:  # ⟨v_k, g⟩ per direction
                projected = np.tensordot(d.directions, g64, axes=n_in)
            else:  # J v_k per direction: contract the input axes of J with v_k
                projected = np.tensordot(d.directions, g64,
                                         axes=(tuple(range(1, 1 + n_in)),
                                               tuple(range(g.ndim - n_in, g.ndim))))
            value, ref, err, step = projected.astype(g.dtype), d.value, d.error, d.step
            k = d.value.shape[0]
            label = f"{name} ({_directions(k, plan.gradient)})"
        r_tol = rtol if rtol is not None else _rtol(x.dtype)
        eps = float(jnp.finfo(x.dtype).eps)
        atol = r_tol * _max_abs(ref) + _AD_FLOOR * eps * scale + fd.FD_SAFETY * err
        rows.append(compare(label, FINITE_DIFFERENCES, value, ref, rtol=r_tol, atol=atol,
                            dtype=dtype, step=step))
    return rows


# --------------------------------------------------------------------------- #
# Jobs: a check's traceable part and its host part
# --------------------------------------------------------------------------- #


@dataclass
class _Job:
    """`program(*inputs)` is traceable; `finish(outputs)` makes the `Report`."""

    program: Callable
    inputs: tuple
    finish: Callable[..., Report]
    reference_part: Callable | None = None  # vjp: the program without the rule
    manual: Callable[[], Any] | None = None  # vjp: the rule, op by op
    diagnose: Callable[[Exception], Any] | None = None  # vjp: find a wrong-shaped cotangent


def _run(job: _Job | Report) -> Report:
    if isinstance(job, Report):
        return job
    return job.finish(compiled(job.program)(*job.inputs))


def _with_magnitude(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`y` and `max|y|`, the scale of its rounding error."""
    return y, jnp.max(jnp.abs(y), initial=0.0)


def _dot_and_magnitude(u: Any, y: Any) -> tuple[jax.Array, jax.Array]:
    """`⟨u, y⟩` over all leaves, and `Σ|u||y|` (the scale of its rounding)."""
    pairs = list(zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(y)))
    dot = sum(jnp.vdot(a.astype(b.dtype), b) for a, b in pairs)
    mag = sum(jnp.vdot(jnp.abs(a).astype(b.dtype), jnp.abs(b)) for a, b in pairs)
    return dot, mag


# --------------------------------------------------------------------------- #
# vjp
# --------------------------------------------------------------------------- #


def _vjp_job(f: Primitive | Callable, args: tuple, kwargs: dict, *, key: jax.Array | None,
             rtol: float | None, fd_rtol: float | None, finite_differences: bool,
             max_fd_elements: int, directions: int, with_manual: bool) -> _Job | Report:
    """The job of `vjp`; `with_manual` puts the rule under test into the program."""
    if isinstance(f, Primitive):
        full = f.bind(*args, **kwargs)
        names = list(f.signature.parameters)
        skip = f.static_argnums
        manual_fn, reference_fn = f.manual, f.forward
        title = f"fdl.check.vjp: {f.name}"
    else:
        full, names, skip = args, arg_names(f, len(args)), ()
        manual_fn = in_mode(lambda *a: f(*a, **kwargs), "manual")
        reference_fn = in_mode(lambda *a: f(*a, **kwargs), "autodiff")
        title = f"fdl.check.vjp: {name_of(f, 'f')} (manual vs autodiff mode)"
    leaves = leaves_of(tuple(full), names, skip)
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])
    of_leaves = lambda fn: (lambda *vals: fn(*leaves.rebuild(vals)))  # noqa: E731
    plan = fd.plan(leaves.values, max_fd_elements, directions, key, finite_differences,
                   gradient=True)
    # The cotangent comes from its own stream (salt 1), so data drawn from the same key
    # never doubles as it (u = x makes Xᵀu symmetric and hides a transposed ∂L/∂W).
    generator = fd.rng(key, 1)
    u = jax.tree_util.tree_map(
        lambda o: jnp.asarray(generator.standard_normal(o.shape).astype(o.dtype)),
        jax.eval_shape(of_leaves(reference_fn), *leaves.values))

    def pullback(fn, vals, u):
        return jax.vjp(of_leaves(fn), *vals)[1](u)

    def reference_part(vals, u, fd_inputs):
        y, pull = jax.vjp(of_leaves(reference_fn), *vals)
        reference = pull(u)
        evaluated = fd.evaluate(lambda v: _dot_and_magnitude(u, of_leaves(reference_fn)(*v)),
                                vals, plan, fd_inputs, gradients=reference)
        return reference, evaluated, _dot_and_magnitude(u, y)[1]

    def program(vals, u, fd_inputs):
        out = reference_part(vals, u, fd_inputs)
        return (*out, pullback(manual_fn, vals, u) if with_manual else None)

    def finish(outputs, manual=None):
        reference, evaluated, magnitude, in_program = outputs
        manual = in_program if manual is None else manual
        scale = _ad_floor(leaves, reference, magnitude)
        rows = _ad_rows(leaves, manual, reference, scale, rtol=rtol)
        rows += _fd_rows(leaves, plan, fd.derivatives(plan, evaluated), manual, scale,
                         rtol=fd_rtol)
        return Report(_title(title, leaves, plan), _ordered(rows))

    return _Job(program, (leaves.values, u, plan.inputs()), finish, reference_part,
                lambda: pullback(manual_fn, leaves.values, u),
                lambda error: _diagnose_rule(f, full, leaves, u, error))


def vjp(f: Primitive | Callable, *args: Any, key: jax.Array | None = None,
        rtol: float | None = None, fd_rtol: float | None = None,
        finite_differences: bool = True, max_fd_elements: int = 256, directions: int = 4,
        jit: bool = False, **kwargs: Any) -> Report:
    """Check a VJP rule: manual vs `jax.vjp` of the reference vs finite differences.

    Args:
      f: a `Primitive` (its rule vs its plain forward), or any function built from
        fdl primitives (manual mode vs autodiff mode).
      *args, **kwargs: the arguments; static arguments of a primitive are held
        fixed, integer arguments are not differentiated, pytrees are allowed.
      key: PRNG key for the random cotangent and directions (default: a fixed seed).
      rtol: tolerance vs autodiff (default from the dtype, see `fdl.check`).
      fd_rtol: relative part of the tolerance vs finite differences (default from
        the dtype); each element's estimated finite-difference error is added.
      finite_differences: also compare with finite differences.
      max_fd_elements: leaves larger than this are checked along `directions`
        unit directions (the reference's own and random ones) instead of element
        by element.
      jit: run the manual rule under `jax.jit` too (the reference and the finite
        differences always are); `False` runs it op by op.

    Returns:
      A `Report` with one row per float leaf and reference. A primitive's
      backward returning a cotangent of the wrong shape (`∂L/∂W` transposed) is
      reported as a failing row, not raised.
    """
    job = _vjp_job(f, args, kwargs, key=key, rtol=rtol, fd_rtol=fd_rtol,
                   finite_differences=finite_differences, max_fd_elements=max_fd_elements,
                   directions=directions, with_manual=jit)
    if isinstance(job, Report):
        return job
    try:
        if jit:
            return _run(job)
        reference = compiled(job.reference_part)(*job.inputs)
        return job.finish((*reference, None), manual=job.manual())
    except Exception as error:  # a backward of the wrong shape: report it, don't crash
        if not isinstance(f, Primitive):
            raise
        reference = compiled(job.reference_part)(*job.inputs)
        return job.finish((*reference, None), manual=job.diagnose(error))


def _diagnose_rule(p: Primitive | Callable, full: tuple, leaves: Leaves, u: Any,
                   error: Exception) -> list[Any]:
    """Call a primitive's backward directly, as `jax.custom_vjp` would, to find the
    cotangent of the wrong shape that JAX refused; re-raise `error` otherwise."""
    if not isinstance(p, Primitive):
        raise error
    try:
        _, residuals = p.forward_with_residuals(*full)
        cotangents = p.backward(*(full[i] for i in p.static_argnums), residuals, u)
        dynamic = [i for i in range(len(full)) if i not in p.static_argnums]
        by_arg = dict(zip(dynamic, cotangents))
        values = []
        for argnum, within, x in zip(leaves.argnums, leaves.within, leaves.values):
            ct = jax.tree_util.tree_leaves(by_arg.get(argnum))
            values.append(np.asarray(ct[within]) if within < len(ct) else np.zeros(x.shape))
    except Exception:
        raise error from None
    if all(m.shape == x.shape for m, x in zip(values, leaves.values)):
        raise error
    return values


def draw(p: Primitive, dtype: Any = jnp.float64, seed: int = 0) -> list[tuple[tuple, dict]]:
    """The arguments of every registered example of `p`, example `i` drawn with seed
    `seed + i` in `dtype` (`Example.sample`: on the host, nothing compiled)."""
    return [example.sample(seed + i, dtype) for i, example in enumerate(p.examples)]


def _example_jobs(p: Primitive, drawn: list, finite_differences: bool) -> list:
    """The vjp check of each drawn example, with its rule under `jit` (a `Report` where
    there is nothing to compare)."""
    return [_vjp_job(p, a, k, key=None, rtol=None, fd_rtol=None,
                     finite_differences=finite_differences, max_fd_elements=256,
                     directions=4, with_manual=True) for a, k in drawn]


def examples(p: Primitive, *, dtype: Any = jnp.float64, seed: int = 0,
             finite_differences: bool = True) -> list[Report]:
    """Check every registered example of the primitive `p` (its rule, under `jit`,
    vs autodiff and finite differences, as `vjp`), compiled as one program.

    Args:
      p: a registered primitive (its `examples` give the arguments).
      dtype: the float dtype the examples are drawn in.
      seed: example `i` is drawn with seed `seed + i`.
      finite_differences: also compare with finite differences.

    Returns:
      One `Report` per example, in order.
    """
    drawn = draw(p, dtype, seed)
    jobs = _example_jobs(p, drawn, finite_differences)
    todo = [j for j in jobs if not isinstance(j, Report)]
    try:
        outputs = iter(compiled(lambda inputs: [j.program(*i) for j, i in zip(todo, inputs)])(
            [j.inputs for j in todo]))
    except Exception:  # one example's rule fails to trace: check each on its own
        return [vjp(p, *a, jit=True, finite_differences=finite_differences, **k)
                for a, k in drawn]
    return [j if isinstance(j, Report) else j.finish(next(outputs)) for j in jobs]


Checked = tuple[Report, "Report | None", "Report | None"]

# On top of `compiled`'s fast options: LLVM code generation of a program in one piece.
# XLA's CPU backend splits it for parallel code generation by default; for programs
# this small the split costs more than it saves (~15% of `fdl check`'s CPU time),
# and `fdl check` already compiles two primitives at a time. Numerics are unaffected.
_ONE_PIECE = {**_FAST_COMPILE, "xla_cpu_parallel_codegen_split_count": 1}



def all_examples(p: Primitive, *, dtype: Any = jnp.float64, seed: int = 0,
                 finite_differences: bool = True) -> list[Checked]:
    """`(vjp report, jvp report, adjointness report)` for every registered example of
    `p`: its backward as `examples` does, its tangent rule and the adjointness of the
    two as `fdl.check.forward_examples` does, all in one compiled program.

    The program computes each example's hand backward `Jᵀu` once: the adjointness
    test `⟨u, J v⟩ = ⟨Jᵀu, v⟩` uses the vjp check's cotangent `u` and its result. A
    primitive without a tangent rule gets `None` for the last two reports.

    Args:
      p: a registered primitive (its `examples` give the arguments).
      dtype: the float dtype the examples are drawn in.
      seed: example `i` is drawn with seed `seed + i`.
      finite_differences: also compare with finite differences.

    Returns:
      One triple per example, in order.
    """
    from fdl.check.forward import _forward_job, forward_examples

    drawn = draw(p, dtype, seed)
    jobs = _example_jobs(p, drawn, finite_differences)
    tangent = p.tangent is not None
    forward: list[Any] = [
        _forward_job(p, a, k, None, finite_differences,
                     u=None if isinstance(j, Report) else j.inputs[1]) if tangent else None
        for (a, k), j in zip(drawn, jobs)]
    todo = [i for i, j in enumerate(jobs) if not isinstance(j, Report)]

    def program(vjp_inputs: list, forward_inputs: list) -> list:
        out = []
        for i, vi, fi in zip(todo, vjp_inputs, forward_inputs):
            backward = jobs[i].program(*vi)
            fw = forward[i]
            if fw is None or isinstance(fw, Report):
                out.append((backward, None))
            else:  # (vals, v, u): the vjp check's u, and its Jᵀu (the last output)
                out.append((backward, fw[0](*fi, backward[-1])))
        return out

    fw_inputs = [None if forward[i] is None or isinstance(forward[i], Report)
                 else forward[i][1] for i in todo]
    try:
        outputs = dict(zip(todo, compiled(program, _ONE_PIECE)(
            [jobs[i].inputs for i in todo], fw_inputs)))
    except Exception:  # one example's rule fails to trace: check each part on its own
        backward = examples(p, dtype=dtype, seed=seed, finite_differences=finite_differences)
        if not tangent:
            return [(r, None, None) for r in backward]
        return [(r, t, a) for r, (t, a) in zip(
            backward, forward_examples(p, dtype=dtype, seed=seed,
                                       finite_differences=finite_differences))]
    result: list[Checked] = []
    for i, (j, fw) in enumerate(zip(jobs, forward)):
        report = j if isinstance(j, Report) else j.finish(outputs[i][0])
        if not tangent:
            result.append((report, None, None))
        elif isinstance(fw, Report):
            result.append((report, fw, Report(
                fw.title.replace("fdl.check.jvp", "fdl.check.adjoint"), [])))
        else:
            result.append((report, *fw[2](outputs[i][1])))
    return result


# --------------------------------------------------------------------------- #
# grad, jacobian, model
# --------------------------------------------------------------------------- #


def _as_tuple(value: Any, n: int, what: str) -> tuple:
    if n == 1:
        return (value,)
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise TypeError(
            f"{what} must return a tuple with one entry per argument ({n}), got "
            f"{type(value).__name__}" + (f" of length {len(value)}"
                                         if isinstance(value, (tuple, list)) else "")
        )
    return tuple(value)


def _user_leaves(value: Any, args: tuple, names: list[str], what: str) -> list[Any]:
    """Leaves of a user's per-argument result, checked against the arguments' structure."""
    out = []
    for i, (v, a) in enumerate(zip(_as_tuple(value, len(args), what), args)):
        sa = jax.tree_util.tree_structure(a)
        sv = jax.tree_util.tree_structure(v)
        if sa != sv:
            raise TypeError(
                f"{what}: the result for argument {names[i]!r} has structure {sv}, but the "
                f"argument has structure {sa}"
            )
        out += [lv for la, lv in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(v))
                if is_float(la)]
    return out


def _maybe_jit(fn: Callable, use_jit: bool) -> Callable:
    return jax.jit(fn) if use_jit else fn


def grad(f: Callable, my_grad: Callable, *args: Any, rtol: float | None = None,
         fd_rtol: float | None = None, finite_differences: bool = True,
         max_fd_elements: int = 256, directions: int = 4, key: jax.Array | None = None,
         jit: bool = False) -> Report:
    """Check your hand-derived gradient of a scalar function against JAX.

    Args:
      f: scalar-valued function of `*args` (arrays or pytrees of arrays).
      my_grad: your gradient, `my_grad(*args)`: for one argument, a value with the
        argument's structure; for several, a tuple with one entry per argument.
      *args: the point at which to check.
      rtol, fd_rtol, finite_differences, max_fd_elements, directions, key:
        as in `vjp`.
      jit: call `my_grad` under `jax.jit` (the reference and the finite
        differences are always compiled).

    Returns:
      A `Report`: your gradient vs `jax.grad` (autodiff mode for fdl primitives)
      and vs finite differences, one row per float leaf.

    Example:

        f = lambda w: jnp.sum(jnp.tanh(x @ w))
        my_grad = lambda w: x.T @ (1 - jnp.tanh(x @ w) ** 2)
        fdl.check.grad(f, my_grad, w).raise_if_failed()
    """
    names = arg_names(f, len(args))
    leaves = leaves_of(tuple(args), names)
    title = f"fdl.check.grad: {name_of(my_grad, 'my_grad')} vs autodiff of {name_of(f, 'f')}"
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])
    reference_fn = in_mode(f, "autodiff")
    out = jax.eval_shape(reference_fn, *args)
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(
            f"check.grad: f must return a scalar, got {getattr(out, 'shape', out)}; "
            "use check.jacobian or check.vjp for vector-valued functions"
        )
    mine = _user_leaves(_maybe_jit(my_grad, jit)(*args), args, names, "check.grad: my_grad")
    of_leaves = lambda vals: reference_fn(*leaves.rebuild(vals))  # noqa: E731
    plan = fd.plan(leaves.values, max_fd_elements, directions, key, finite_differences,
                   gradient=True)

    def program(vals, fd_inputs):
        reference = jax.grad(of_leaves)(vals)
        evaluated = fd.evaluate(lambda v: _with_magnitude(of_leaves(v)), vals, plan, fd_inputs,
                                gradients=reference)
        return reference, evaluated, _with_magnitude(of_leaves(vals))[1]

    def finish(outputs):
        reference, evaluated, magnitude = outputs
        scale = _ad_floor(leaves, reference, magnitude)
        rows = _ad_rows(leaves, mine, reference, scale, rtol=rtol)
        rows += _fd_rows(leaves, plan, fd.derivatives(plan, evaluated), mine, scale,
                         rtol=fd_rtol)
        return Report(_title(title, leaves, plan), _ordered(rows))

    return _run(_Job(program, (leaves.values, plan.inputs()), finish))


def jacobian(f: Callable, my_jacobian: Callable, *args: Any, rtol: float | None = None,
             fd_rtol: float | None = None, finite_differences: bool = True,
             max_fd_elements: int = 256, directions: int = 4, key: jax.Array | None = None,
             jit: bool = False) -> Report:
    """Check your hand-derived Jacobian against `jax.jacrev` and finite differences.

    Args:
      f: function of array arguments returning one array `y`.
      my_jacobian: `my_jacobian(*args)`; for each argument `x` an array of shape
        `y.shape + x.shape` (`J[i…, j…] = ∂y[i…]/∂x[j…]`); a tuple for several
        arguments (any entry, e.g. `None`, for an integer argument).
      *args: arrays at which to check.
      max_fd_elements, directions, key: arguments larger than `max_fd_elements`
        are checked with finite differences along `directions` random unit
        directions `v` (comparing `J v`) instead of element by element.
      jit: call `my_jacobian` under `jax.jit`.

    Returns:
      A `Report`; the worst index is into the Jacobian (output index first),
      or `(direction, output index…)` for a row checked along random directions.
    """
    names = arg_names(f, len(args))
    for name, a in zip(names, args):
        if not (hasattr(a, "shape") or isinstance(a, (int, float))):
            raise TypeError(
                f"check.jacobian: argument {name!r} must be an array, got "
                f"{type(a).__name__}; pass each array as its own argument (or use check.vjp "
                "for pytrees)"
            )
    leaves = leaves_of(tuple(args), names)
    title = (f"fdl.check.jacobian: {name_of(my_jacobian, 'my_jacobian')} vs autodiff of "
             f"{name_of(f, 'f')}")
    if not leaves.values:
        return Report(title + " — no differentiable float arguments", [])
    reference_fn = in_mode(f, "autodiff")
    out = jax.eval_shape(reference_fn, *args)
    if not hasattr(out, "shape"):
        raise TypeError(
            f"check.jacobian: f must return one array, got {jax.tree_util.tree_structure(out)}"
        )
    given = _as_tuple(_maybe_jit(my_jacobian, jit)(*args), len(args),
                      "check.jacobian: my_jacobian")
    mine = [jnp.asarray(j) for j, a in zip(given, args) if is_float(a)]
    of_leaves = lambda vals: reference_fn(*leaves.rebuild(vals))  # noqa: E731
    plan = fd.plan(leaves.values, max_fd_elements, directions, key, finite_differences,
                   gradient=False)
    argnums = tuple(range(len(leaves.values)))

    def program(vals, fd_inputs):
        return (jax.jacrev(lambda *v: of_leaves(v), argnums=argnums)(*vals),
                fd.evaluate(lambda v: _with_magnitude(of_leaves(v)), vals, plan, fd_inputs),
                _with_magnitude(of_leaves(vals))[1])

    def finish(outputs):
        reference, evaluated, magnitude = outputs
        scale = _ad_floor(leaves, reference, magnitude)
        rows = _ad_rows(leaves, mine, reference, scale, rtol=rtol, check_dtype=False)
        rows += _fd_rows(leaves, plan, fd.derivatives(plan, evaluated), mine, scale,
                         rtol=fd_rtol, jacobian_of=tuple(out.shape))
        return Report(_title(title, leaves, plan), _ordered(rows))

    return _run(_Job(program, (leaves.values, plan.inputs()), finish))


def model(loss_fn: Callable, params: Any, *batch: Any, rtol: float | None = None,
          fd_rtol: float | None = None, finite_differences: bool = True,
          directions: int = 2, key: jax.Array | None = None, jit: bool = True) -> Report:
    """Check a whole model: gradient with manual rules vs pure autodiff.

    Args:
      loss_fn: `loss_fn(params, *batch) -> scalar` built from fdl primitives.
      params: pytree of parameters (the gradient is taken w.r.t. it).
      *batch: the rest of the arguments (inputs, labels), held fixed.
      finite_differences: also compare directional derivatives along
        `directions` unit directions per leaf (the autodiff gradient's own and
        random ones) with finite differences.
      jit: compute the manual-mode gradient under `jax.jit` (default); the
        autodiff reference and the finite differences are always compiled, in
        autodiff mode (the mode is part of the jit cache key, so they never share a
        compilation with the manual gradient).

    Returns:
      A `ModelReport` (a `Report`) with one row per parameter leaf. When the
      manual gradient differs from autodiff, its `divergence` names the first
      primitive call on the model's path, walking back from the loss, whose
      hand-written rule sends a cotangent that differs from autodiff's while the
      cotangent it receives agrees: the primitive, its layer path
      (`serial/dense_2 → linear`), the argument, the worst element and both values
      (`fdl.check.bisect`; run only for a failing check).
    """
    leaves = leaves_of((params,), ["params"])
    title = f"fdl.check.model: {name_of(loss_fn, 'loss_fn')}, manual rules vs autodiff"
    if not leaves.values:
        return ModelReport(title + " — no float parameters", [])
    of_leaves = lambda vals: loss_fn(leaves.rebuild(vals)[0], *batch)  # noqa: E731
    with gradient_mode("autodiff"):
        out = jax.eval_shape(of_leaves, leaves.values)
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(
            f"check.model: loss_fn must return a scalar, got {getattr(out, 'shape', out)}"
        )
    plan = fd.plan(leaves.values, 0, directions, key, finite_differences, gradient=True)
    grad_fn = jax.grad(of_leaves)

    def program(vals, fd_inputs):
        reference = grad_fn(vals)
        evaluated = fd.evaluate(lambda v: _with_magnitude(of_leaves(v)), vals, plan, fd_inputs,
                                gradients=reference)
        return reference, evaluated, _with_magnitude(of_leaves(vals))[1]

    with gradient_mode("autodiff"):
        reference, evaluated, magnitude = compiled(program)(leaves.values, plan.inputs())
    with gradient_mode("manual"):
        manual = (compiled(grad_fn) if jit else grad_fn)(leaves.values)
    scale = _ad_floor(leaves, reference, magnitude)
    rows = _ad_rows(leaves, manual, reference, scale, rtol=rtol)
    rows += _fd_rows(leaves, plan, fd.derivatives(plan, evaluated), manual, scale, rtol=fd_rtol)
    report = ModelReport(_title(title, leaves, plan), _ordered(rows))
    if any(r.against == AUTODIFF and not r.passed for r in rows):
        report.divergence, report.note = bisect.locate(of_leaves, leaves.values, rtol=rtol,
                                                       jit=jit)
    return report
