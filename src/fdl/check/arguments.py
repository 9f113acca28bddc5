"""A call's arguments as named differentiable leaves, and the helpers the checks share."""

from __future__ import annotations

import collections
import hashlib
import inspect
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fdl.modes import gradient_mode
from fdl.primitive import Primitive


@dataclass
class Leaves:
    """The float leaves of a call's arguments, and how to put them back."""

    names: list[str]
    values: list[jax.Array]
    positions: list[int]  # index into the flat list of all leaves
    all_leaves: list[Any]
    treedef: Any
    argnums: list[int] = field(default_factory=list)  # the argument each leaf is in
    within: list[int] = field(default_factory=list)  # its index among that argument's leaves

    def rebuild(self, values: Sequence[Any]) -> Any:
        leaves = list(self.all_leaves)
        for pos, val in zip(self.positions, values):
            leaves[pos] = val
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def as_array(x: Any) -> jax.Array:
    """`x` as a JAX array. A numpy array is transferred with `jax.device_put`:
    `jnp.asarray` of one compiles a copy program per shape (JAX ≥ 0.7), which costs
    more than a check's arithmetic."""
    if isinstance(x, np.ndarray):
        return jax.device_put(x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False))
    return jnp.asarray(x)


def is_float(x: Any) -> bool:
    """A differentiable value: a Python float or a floating-point array."""
    if isinstance(x, float):  # a Python float is differentiable like a 0-d array
        return True
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def leaves_of(tree: Any, names: Sequence[str], skip: Sequence[int] = ()) -> Leaves:
    """Float leaves of `tree` (a tuple of arguments), named `arg` or `arg[path]`."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = Leaves([], [], [], [leaf for _, leaf in paths], treedef)
    seen: dict[int, int] = {}
    for pos, (path, leaf) in enumerate(paths):
        argnum = path[0].idx
        within = seen[argnum] = seen.get(argnum, -1) + 1
        if argnum in skip or not is_float(leaf):
            continue
        base = names[argnum] if argnum < len(names) else f"arg{argnum}"
        out.names.append(base + jax.tree_util.keystr(path[1:]))
        out.values.append(as_array(leaf))
        out.positions.append(pos)
        out.argnums.append(argnum)
        out.within.append(within)
    return out


def arg_names(f: Callable, n: int) -> list[str]:
    """Names for `n` positional arguments of `f`: its parameter names, then
    `rest[0]`, `rest[1]`… for a `*rest` parameter, else `arg2`, `arg3`…"""
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    names, var = [], None
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            var = p.name
            break
    names = names[:n]
    extra = n - len(names)
    names += [f"{var}[{i}]" for i in range(extra)] if var else \
        [f"arg{i}" for i in range(len(names), n)]
    return names


def name_of(f: Any, default: str) -> str:
    """A primitive's registry name, a function's `__name__`, else `default`."""
    return getattr(f, "name", None) if isinstance(f, Primitive) else \
        getattr(f, "__name__", default)


def in_mode(fn: Callable, mode: str) -> Callable:
    """`fn` traced and run in gradient mode `mode`."""
    def wrapped(*args):
        with gradient_mode(mode):
            return fn(*args)
    return wrapped


# A check's arrays are tiny, so compiling dominates its time: XLA's lowest backend
# optimisation, on CPU the classic loop emitters, which compile a small program about
# twice as fast as the fusion emitters, and LLVM without its expensive passes (~10% less
# CPU for `fdl check`). The arithmetic is IEEE either way (no fast-math).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
                 "xla_llvm_disable_expensive_passes": True}


# XLA's optimisation level 0 leaves a convolution that the CPU runtime's convolution
# kernel does not take as unoptimised loops. Measured on a `vmap`ped conv2d whose input
# and kernel are both batched (`vmap` makes it one convolution with a feature group per
# row): with unequal padding before and after it ran 0.10 s at 20 rows and 2.67 s at
# 100, quadratic in the rows; with symmetric padding, without groups, with batch groups
# or with three spatial dimensions it runs about as fast as at the default level. The
# finite differences no longer make such convolutions (`fdl.check.fd`, one leaf batched
# at a time), so only a program that holds one itself — many feature groups (more than
# `_MANY_GROUPS`) and unequal padding — keeps the default level, as does a convolution
# written in a form `_CONV` does not read.
_CONV = re.compile(r"stablehlo\.convolution\([^)]*\) dim_numbers = \[([^\]]*)\][^{]*"
                   r"window = \{[^}]*?pad = \[([^{}]*?)\]\],[^}]*\} "
                   r"\{batch_group_count = (\d+) : i64, feature_group_count = (\d+)")
_PAIR = re.compile(r"\[(-?\d+), (-?\d+)")
_MANY_GROUPS = 16


def _slow_at_level_0(text: str) -> bool:
    """Whether `text` (StableHLO) holds a convolution that level 0 leaves as slow loops
    (more than `_MANY_GROUPS` feature groups and unequal padding), or one written in a
    form this does not read."""
    convolutions = _CONV.findall(text)
    if len(convolutions) != text.count("stablehlo.convolution("):
        return True
    for _dims, pads, _batch_groups, feature_groups in convolutions:
        if int(feature_groups) > _MANY_GROUPS and any(
                lo != hi for lo, hi in _PAIR.findall(pads + "]")):
            return True
    return False


def _options_for(text: str, opts: dict) -> dict:
    """`opts` for a program whose StableHLO is `text`, without the lowest optimisation
    level where the program holds a convolution that level leaves as loops."""
    if "xla_backend_optimization_level" in opts and _slow_at_level_0(text):
        return {k: v for k, v in opts.items() if k != "xla_backend_optimization_level"}
    return opts


# Compiled programs by the text of their lowering: a check run again on arguments of
# the same shapes (another initialisation of the same model) skips XLA. Small: a check's
# programs are small, and only the last few are likely to come back.
_PROGRAMS: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_KEEP = 16


def _serialized(lowered: Any) -> bytes:
    """The StableHLO of `lowered` as MLIR bytecode: about eight times cheaper to write
    than its text, and as exact a key (the text where the bytecode is unavailable)."""
    try:
        buffer = io.BytesIO()
        lowered.compiler_ir("stablehlo").operation.write_bytecode(file=buffer)
        return buffer.getvalue()
    except Exception:  # pragma: no cover - another JAX or MLIR
        return lowered.as_text().encode()


def compile_program(fn: Callable, *args: Any, options: dict | None = None) -> Any:
    """`fn` lowered for `args` and compiled with options that compile fast (`options`,
    default `_FAST_COMPILE`; a backend that rejects them compiles normally): the
    executable, called with arguments shaped like `args`.

    The last `_KEEP` executables are kept, keyed by their lowered program (which holds
    the constants `fn` closes over, so only the same computation matches) and the
    options: the same check on new values of the same shapes compiles nothing."""
    lowered = jax.jit(fn).lower(*args)
    serialized = _serialized(lowered)
    opts = _FAST_COMPILE if options is None else options
    if b"convolution" in serialized:  # the op's name, in the bytecode's string table
        opts = _options_for(lowered.as_text(), opts)
    key = (hashlib.sha256(serialized).hexdigest(), str(lowered.in_tree),
           str(lowered.out_tree), tuple(sorted(opts.items())), jax.default_backend())
    program = _PROGRAMS.get(key)
    if program is None:
        try:
            program = lowered.compile(opts)
        except Exception:  # an unknown option on some backend: compile normally
            program = lowered.compile()
        _PROGRAMS[key] = program
        while len(_PROGRAMS) > _KEEP:
            _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(key)
    return program


def compiled(fn: Callable, options: dict | None = None) -> Callable:
    """`fn` compiled for one call (`compile_program`) and called."""
    def call(*args):
        return compile_program(fn, *args, options=options)(*args)
    return call
