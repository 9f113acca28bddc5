"""Where the LSTM and transformer training steps spend their time: fdl per XLA kernel,
PyTorch eager per operator, against the machine's measured matmul and memory rates.

The two models and their batches are `bench.py`'s `LSTM` and `transformer` rows
(`configs.CPU_CONFIGS`, the same initial parameters and data; PyTorch's model is
`peers_seq`'s). For each:

* fdl's step (`fdl_runners.fdl_step`: `jax.value_and_grad` of `Trainer.loss_fn`,
  Adam, manual rules) is compiled once; its optimised HLO gives every kernel's opcode,
  shape and place (the entry computation or a `while` loop, i.e. a `lax.scan`); a few
  steps run under `jax.profiler.trace` and each kernel's time per step is summed from
  the trace (`jax.profiler.ProfileData`, as `digits_kernels.py --profile` does for the
  digits step);
* PyTorch's step (`torch.optim.Adam`, `F.cross_entropy`) runs under
  `torch.profiler` (shapes and FLOPs recorded) and each operator's self time per step
  is summed.

Kernels are grouped into *matmul* (a dot, or a fusion holding one; PyTorch's
`mm`/`addmm`/`bmm` and the fused oneDNN LSTM layer), *elementwise* (fusions of
element-wise maths, reductions: norms, softmaxes, activations, Adam), *scan loop*
(inside a `while` loop: the loop's own time outside its kernels, the counter, the
`dynamic-slice` reads of each step's inputs and the `dynamic-update-slice` writes of
its outputs) and *other* (copies, transposes, concatenations, broadcasts, gathers;
PyTorch's framework time outside its kernels). For a matmul kernel the table gives
its shape (`[B×] M×K·K×N`, `ᵀ` marking an operand stored transposed), its FLOPs
(`2·M·N·K`, batch dimensions included) and GFLOP/s against the
float32 matmul peak measured in the same run (2048×2048, JAX jitted and
`torch.mm`, the faster of the two); for every other kernel its bytes moved (operands
read plus result written; a slice of a loop's stacked buffer counts the slice only, an
in-place update the update only: an estimate from the HLO) against the memory
bandwidth measured in the same run (a jitted `2·x + 1` over 128 MiB: read + write).

Profiled times are wall-clock on a shared machine and include the profiler's own
per-event cost (the unprofiled step time is printed beside the profiled one): read
them as shares of one step, within one run.

    python benchmarks/seq_profile.py                       # both models, fdl and torch
    python benchmarks/seq_profile.py --only LSTM --top 20
    python benchmarks/seq_profile.py --markdown /tmp/seq_profile.md
    python benchmarks/seq_profile.py --time-only --rounds 12  # fdl vs torch, no profiles

XLA:CPU takes every step's temporaries from `malloc` anew, and glibc maps large blocks
fresh each time: the step page-faults its whole temporary buffer (counted per step in the
report). Run with `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824`
to see the steps without those faults (BENCHMARKS.md, "LSTM and transformer vs PyTorch
eager: profile").
"""

from __future__ import annotations

import argparse
import collections
import glob
import itertools
import math
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import fdl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from configs import B1, B2, CPU_CONFIGS, EPS, LR, batch, copy
from fdl_runners import fdl_lstm, fdl_step, fdl_transformer
from harness import environment, loadavg

# --------------------------------------------------------------------------- #
# The optimised HLO: every instruction, its computation, shape and operands
# --------------------------------------------------------------------------- #

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_MOVES = frozenset({"copy", "transpose", "bitcast", "broadcast", "slice", "concatenate", "pad",
                    "dynamic-slice", "dynamic-update-slice", "reshape", "parameter", "constant",
                    "tuple", "get-tuple-element", "iota", "gather", "scatter", "reverse",
                    "select", "convert"})
_NOT_KERNELS = frozenset({"parameter", "get-tuple-element", "tuple", "constant", "bitcast",
                          "after-all", "opt-barrier"})
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+) \(.*\{\s*$")
_ARRAY = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")


@dataclass
class Instr:
    name: str
    computation: str
    opcode: str
    shape: str  # the result type as printed (an array, or a tuple of arrays)
    operands: list[str]
    attrs: str
    root: bool


def _arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dt, tuple(int(d) for d in dims.split(",") if d))
            for dt, dims in _ARRAY.findall(shape.split("{")[0] if "(" not in shape else shape)]


def nbytes(shape: str) -> int:
    """Bytes of a result type (a tuple's elements summed)."""
    return sum(_BYTES.get(dt, 4) * math.prod(dims) for dt, dims in _arrays(shape))


def dims_of(shape: str) -> tuple[int, ...]:
    arrays = _arrays(shape)
    return arrays[0][1] if arrays else ()


def parse_hlo(hlo: str) -> tuple[dict[str, Instr], dict[str, list[Instr]]]:
    """Every instruction by name, and the instructions of every computation."""
    instrs: dict[str, Instr] = {}
    comps: dict[str, list[Instr]] = {}
    current = None
    for line in hlo.splitlines():
        h = _HEADER.match(line)
        if h and " = " not in line.split("(")[0]:
            current = h.group(2)
            comps[current] = []
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if m is None or current is None:
            continue
        args, _, attrs = _split_call(m.group(5))
        operands = re.findall(r"%([\w.\-]+)", args)
        ins = Instr(m.group(2), current, m.group(4), m.group(3), operands, attrs, bool(m.group(1)))
        instrs[ins.name] = ins
        comps[current].append(ins)
    return instrs, comps


def _split_call(rest: str) -> tuple[str, str, str]:
    """`a, b), attr=…` → the operand list, ')' and the attributes."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return rest[:i], ")", rest[i + 1:]
    return rest, "", ""


def source_frames(hlo: str) -> Callable[[int], list[str]]:
    """From the HLO's stack-frame tables, `frames(stack_frame_id)`: the Python frames
    (`path:function:line`, innermost first) an instruction was traced from."""
    def table(name: str) -> list[str]:
        m = re.search(r"^" + name + r"\n(.*?)\n\n", hlo, re.DOTALL | re.MULTILINE)
        return m.group(1).splitlines() if m else []

    files = {int(ln.split()[0]): ln.split(None, 1)[1].strip('"') for ln in table("FileNames")}
    funcs = {int(ln.split()[0]): ln.split(None, 1)[1].strip('"') for ln in table("FunctionNames")}
    locs = {int(ln.split()[0]): dict(re.findall(r"(\w+)=(\d+)", ln)) for ln in table("FileLocations")}
    frames = {}
    for ln in table("StackFrames"):
        d = dict(re.findall(r"(\w+)=(\d+)", ln))
        # the printed parent is one more than the parent's id (0: none)
        frames[int(ln.split()[0])] = (int(d["file_location_id"]), int(d["parent_frame_id"]) - 1)

    def chain(frame: int) -> list[str]:
        out: list[str] = []
        while frame in frames and len(out) < 64:
            loc, parent = frames[frame]
            d = locs.get(loc, {})
            out.append(f"{files.get(int(d.get('file_name_id', 0)), '?')}:"
                       f"{funcs.get(int(d.get('function_name_id', 0)), '?')}:{d.get('line', '?')}")
            frame = parent
        return out

    return chain


_WRAPPERS = ("/fdl/primitive.py", "/fdl/_tangent.py", "/fdl/_validate.py")


def fdl_source(frames: list[str]) -> str:
    """The innermost frame inside fdl (the package, not its primitive machinery), as
    `package/path.py:function:line`; '' outside fdl."""
    for f in frames:
        if "/fdl/" in f and not any(w in f for w in _WRAPPERS):
            return f.split("/fdl/", 1)[1]
    return ""


def _called(ins: Instr) -> str | None:
    m = re.search(r"calls=%?([\w.\-]+)", ins.attrs)
    return m.group(1) if m else None


def loops(comps: dict[str, list[Instr]]) -> dict[str, str]:
    """`{computation: the while instruction whose body or condition it is}` (nested
    loops: the innermost)."""
    owner: dict[str, str] = {}
    for body in comps.values():
        for ins in body:
            if ins.opcode == "while":
                for key in ("body", "condition"):
                    m = re.search(key + r"=%?([\w.\-]+)", ins.attrs)
                    if m:
                        owner[m.group(1)] = ins.name
    return owner


def dot_flops(dot: Instr, instrs: dict[str, Instr]) -> float:
    """`2 · |result| · Π contracting sizes` of a dot."""
    lhs = dims_of(instrs[dot.operands[0]].shape)
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", dot.attrs)
    k = math.prod(lhs[int(i)] for i in m.group(1).split(",") if i) if m else 1
    return 2.0 * math.prod(dims_of(dot.shape)) * k


def gemm_of(dot: Instr, instrs: dict[str, Instr]) -> tuple[int, int, int, int, bool, bool]:
    """`(B, M, K, N, lhs transposed, rhs transposed)` of a dot: batch, free and
    contracted sizes multiplied out; an operand is transposed when stored `K×M` (lhs)
    or `N×K` (rhs). `B = 0`: no batch dimension."""
    a, b = (dims_of(instrs[o].shape) for o in dot.operands[:2])

    def dims(key: str) -> list[int]:
        m = re.search(key + r"=\{([\d,]*)\}", dot.attrs)
        return [int(i) for i in m.group(1).split(",") if i] if m else []

    lb, lc, rb, rc = (dims(k) for k in ("lhs_batch_dims", "lhs_contracting_dims",
                                        "rhs_batch_dims", "rhs_contracting_dims"))
    free_a = [i for i in range(len(a)) if i not in lb + lc]
    free_b = [i for i in range(len(b)) if i not in rb + rc]
    return (math.prod(a[i] for i in lb) if lb else 0, math.prod(a[i] for i in free_a),
            math.prod(a[i] for i in lc), math.prod(b[i] for i in free_b),
            bool(lc and free_a and lc[0] < max(free_a)),
            bool(rc and free_b and rc[0] > min(free_b)))


def gemm_label(g: tuple[int, int, int, int, bool, bool]) -> str:
    bsz, m, k, n, ta, tb = g
    return f"{f'{bsz}× ' if bsz else ''}{m}×{k}{'ᵀ' if ta else ''}·{k}×{n}{'ᵀ' if tb else ''}"


def dot_shape(dot: Instr, instrs: dict[str, Instr]) -> str:
    """`[B×] M×K·K×N` of a dot, `ᵀ` marking an operand stored transposed."""
    return gemm_label(gemm_of(dot, instrs))


@dataclass
class Kernel:
    """One kernel of the compiled step: what it is and what it moves or computes."""

    name: str
    loop: str | None  # the while instruction it runs in (None: once per step)
    kind: str  # matmul | elementwise | scan loop | other
    what: str  # the JAX operation it came from, or its shape
    flops: float = 0.0
    bytes: float = 0.0
    calls: float = 0.0  # per step
    seconds: float = 0.0  # per step, the kernel's share of the wall clock
    busy: float = 0.0  # per step, its recorded duration (overlapping others)
    ops: list[str] = field(default_factory=list)
    gemm: tuple | None = None  # a matmul's (B, M, K, N, lhs transposed, rhs transposed)
    source: str = ""  # the fdl code it was traced from (`fdl_source`)
    backward: bool = False  # from the transpose (backward pass) of the step


def _fusion_bytes(ins: Instr, body: list[Instr], instrs: dict[str, Instr]) -> float:
    """Operands read plus result written by a fusion, slices and in-place updates counted
    at the size they touch."""
    local = {i.name: i for i in body}
    users: dict[str, list[Instr]] = collections.defaultdict(list)
    for i in body:
        for o in i.operands:
            users[o].append(i)
    total = 0.0
    for p in (i for i in body if i.opcode == "parameter"):
        us = users.get(p.name, [])
        if us and all(u.opcode in ("dynamic-slice", "slice") and u.operands[0] == p.name
                      for u in us):
            total += sum(nbytes(u.shape) for u in us)
        elif us and all(u.opcode == "dynamic-update-slice" and u.operands[0] == p.name
                        for u in us):
            total += 0.0  # updated in place: only the update is written (counted below)
        else:
            total += nbytes(p.shape)
    root = next((i for i in body if i.root), None)
    outs = [root] if root is not None and root.opcode != "tuple" else \
        [local[o] for o in (root.operands if root else []) if o in local]
    for r in outs:
        while r.opcode == "bitcast" and r.operands and r.operands[0] in local:
            r = local[r.operands[0]]
        if r.opcode == "dynamic-update-slice":
            total += nbytes(local[r.operands[1]].shape) if r.operands[1] in local else 0
        else:
            total += nbytes(r.shape)
    return total


def kernels_of(hlo: str) -> dict[str, Kernel]:
    """Every instruction of the compiled step that launches work, classified."""
    instrs, comps = parse_hlo(hlo)
    owner = loops(comps)
    frames = source_frames(hlo)
    fused = {c for ins in instrs.values() if ins.opcode == "fusion" and (c := _called(ins))}
    out: dict[str, Kernel] = {}
    for comp, body in comps.items():
        if comp in fused or comp.startswith(("wrapped_", "region_")) and comp not in owner:
            continue
        loop = owner.get(comp)
        for ins in body:
            if ins.opcode in _NOT_KERNELS:
                continue
            op = re.search(r'op_name="([^"]*)"', ins.attrs)
            what = re.sub(r"^jit\([^)]*\)/", "", op.group(1)) if op else ""
            what = re.sub(r"(while/body/|closed_call/)", "", what)[-60:]
            k = Kernel(ins.name, loop, "other", what)
            sf = re.search(r"stack_frame_id=(\d+)", ins.attrs)
            k.source = fdl_source(frames(int(sf.group(1)))) if sf else ""
            k.backward = bool(op and "transpose(" in op.group(1))
            inner = comps.get(_called(ins) or "", []) if ins.opcode == "fusion" else []
            k.ops = sorted({i.opcode for i in inner} - _NOT_KERNELS) or [ins.opcode]
            dots = [i for i in inner if i.opcode in ("dot", "convolution")]
            if ins.opcode == "dot":
                dots = [ins]
            if dots:
                k.kind = "matmul"
                k.flops = sum(dot_flops(d, instrs) for d in dots if d.opcode == "dot")
                k.what = "; ".join(dot_shape(d, instrs) for d in dots if d.opcode == "dot")
                k.gemm = next((gemm_of(d, instrs) for d in dots if d.opcode == "dot"), None)
                k.bytes = sum(nbytes(instrs[o].shape) for o in ins.operands) + nbytes(ins.shape)
            elif ins.opcode == "while":
                k.kind = "scan loop"
                k.what = f"the loop itself ({ins.name})"
            else:
                k.bytes = (_fusion_bytes(ins, inner, instrs) if inner else
                           sum(nbytes(instrs[o].shape) for o in ins.operands if o in instrs)
                           + nbytes(ins.shape))
                moves = set(k.ops) <= _MOVES
                counter = ins.shape.startswith(("s32[]", "pred[]"))
                updates = {"dynamic-update-slice", "dynamic-slice"} & set(k.ops)
                if loop and (counter or (moves and updates)):
                    k.kind = "scan loop"
                elif moves or ins.opcode in _MOVES:
                    k.kind = "other"
                else:
                    k.kind = "elementwise"
            out[ins.name] = k
    return out


# --------------------------------------------------------------------------- #
# Timing under the profilers
# --------------------------------------------------------------------------- #


def trace_events(run: Callable[[], None]) -> list[tuple[str, float, float, str]]:
    """`(name, start s, duration s, thread)` of every event XLA's runtime records while
    `run()` executes under `jax.profiler.trace` (the Python thread's left out)."""
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out):
            run()
        path = max(glob.glob(out + "/**/*.xplane.pb", recursive=True))
        data = jax.profiler.ProfileData.from_file(path)
        events = []
        for plane in data.planes:
            for line in plane.lines:
                if line.name == "python":
                    continue
                for e in line.events:
                    events.append((e.name, e.start_ns * 1e-9, e.duration_ns * 1e-9, line.name))
    return events


def fdl_profile(hlo: str, run: Callable[[], None], steps: int) -> tuple[dict[str, Kernel], float]:
    """The kernels of `hlo` with their calls and time per step over `steps` steps of
    `run`, and the profiled wall time per step.

    XLA:CPU runs independent kernels concurrently (the big weight-gradient products
    overlap), so each instant of the trace is shared equally among the kernels running
    then: a kernel's `seconds` is its share of the wall clock, `busy` its recorded
    duration. Instants inside a `while` loop's span (its start to the end of its last
    kernel) where no kernel runs are the loop's own time (its `seconds`); the rest of
    the step outside every kernel is the pseudo-kernel `(between kernels)`: dispatch,
    the runtime, the host.
    """
    kernels = kernels_of(hlo)
    t0 = time.perf_counter()
    events = trace_events(run)
    wall = (time.perf_counter() - t0) / steps
    ev = [(n, s, s + d) for n, s, d, _ in events if n in kernels]
    whiles = sorted((e for e in ev if kernels[e[0]].ops == ["while"]), key=lambda e: e[1])
    work = sorted((e for e in ev if kernels[e[0]].ops != ["while"]), key=lambda e: e[1])
    for n, s, e in work:
        kernels[n].calls += 1 / steps
        kernels[n].busy += (e - s) / steps
    for n, _, _ in whiles:
        kernels[n].calls += 1 / steps
    spans = []  # (start, end, loop): each run of a loop, to the end of its last kernel
    for i, (n, s, e) in enumerate(whiles):
        nxt = next((w[1] for w in whiles[i + 1:] if w[0] == n), math.inf)
        ends = [b for k, a, b in work if kernels[k].loop == n and s <= a < nxt]
        spans.append((s, max(ends, default=e), n))
    # sweep: share each instant among the kernels running then; idle instants go to the
    # loop whose span holds them
    points = sorted({t for _, a, b in work for t in (a, b)} | {t for a, b, _ in spans for t in (a, b)})
    starts = collections.defaultdict(list)
    for n, a, b in work:
        starts[a].append((n, b))
    active: dict[int, tuple[str, float]] = {}
    idle = 0.0
    j = 0
    for t, t_next in itertools.pairwise(points):
        for n, b in starts.get(t, ()):
            active[j] = (n, b)
            j += 1
        for key in [k for k, (_, b) in active.items() if b <= t]:
            del active[key]
        dt = t_next - t
        if active:
            for n, _ in active.values():
                kernels[n].seconds += dt / len(active) / steps
        else:
            loop = next((name for a, b, name in spans if a <= t < b), None)
            if loop is not None:
                kernels[loop].seconds += dt / steps
            else:
                idle += dt
    busy = sum(k.seconds for k in kernels.values())
    gap = Kernel("(between kernels)", None, "other", "dispatch, runtime, host: the step's "
                 "wall time outside every kernel and loop")
    gap.calls, gap.seconds = 1.0, max(wall - busy, 0.0)
    kernels[gap.name] = gap
    return kernels, wall


@dataclass
class TorchOp:
    name: str
    shapes: str
    kind: str
    calls: float
    seconds: float
    flops: float


_TORCH_MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation",
                 "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward")
_TORCH_MOVES = ("copy_", "clone", "cat", "contiguous", "fill_", "zero_", "index", "embedding",
                "transpose", "view", "reshape", "empty", "as_strided", "select", "slice", "expand",
                "unsqueeze", "split", "chunk", "stack", "narrow", "permute", "t", "_to_copy",
                "to", "detach", "zeros", "ones", "resize_", "set_", "unbind", "squeeze",
                "_unsafe_view", "alias", "new_empty", "new_zeros", "empty_like", "zeros_like",
                "ones_like", "result_type", "lift_fresh", "_reshape_alias", "flatten", "scatter",
                "gather", "index_select", "embedding_dense_backward", "_foreach_copy_")


def torch_profile(torch: Any, run: Callable[[int], None], steps: int
                  ) -> tuple[list[TorchOp], float]:
    """Each operator's (name and input shapes) self time per step over `steps` steps
    under `torch.profiler` (two steps of warm-up first), and the profiled wall per step.
    `run(k)` takes `k` steps."""
    from torch.profiler import ProfilerActivity, profile
    run(2)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        t0 = time.perf_counter()
        run(steps)
        wall = (time.perf_counter() - t0) / steps
    ops = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.self_cpu_time_total <= 0 or e.key.startswith("ProfilerStep"):
            continue
        short = e.key.split("::")[-1]
        if e.key in _TORCH_MATMUL:
            kind = "matmul"
        elif not e.key.startswith("aten::"):
            kind = "other"  # autograd engine, optimizer step, Python-side wrappers
        elif short in _TORCH_MOVES or short.startswith(("_foreach_copy", "_to_copy")):
            kind = "other"
        elif short in ("linear", "matmul", "lstm", "dropout", "multi_head_attention_forward",
                       "_native_multi_head_attention", "transformer_encoder_layer_fwd"):
            kind = "other"  # wrappers: their self time is dispatch
        else:
            kind = "elementwise"
        ops.append(TorchOp(e.key, str(e.input_shapes)[:70], kind, e.count / steps,
                           e.self_cpu_time_total * 1e-6 / steps, (e.flops or 0) / steps))
    return ops, wall


# --------------------------------------------------------------------------- #
# The machine's reference rates, measured in the same run
# --------------------------------------------------------------------------- #


def _median_time(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference_rates(torch: Any | None, n: int = 2048, mib: int = 128, reps: int = 5) -> dict:
    """float32 matmul GFLOP/s (`n`×`n`) and memory GB/s of `2·x + 1` over `mib` MiB (bytes
    read + written): into a buffer reused every call (JAX: the input donated; PyTorch:
    `out=`), and into a fresh output every call (the cost of first touching new memory,
    which XLA:CPU pays for every temporary buffer of a step). JAX jitted and, with
    torch, PyTorch's."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
    mm = jax.jit(jnp.matmul)
    box = {"x": jnp.ones((mib << 18,), jnp.float32)}
    nbytes_ = 2 * (mib << 20)
    axpy = jax.jit(lambda x: 2 * x + 1)
    axpy_inplace = jax.jit(lambda x: 2 * x + 1, donate_argnums=0)

    def inplace() -> None:
        box["x"] = axpy_inplace(box["x"])
        box["x"].block_until_ready()

    rates = {"jax matmul": 2 * n ** 3 / _median_time(lambda: mm(a, b).block_until_ready(), reps),
             "jax 2x+1 in place": nbytes_ / _median_time(inplace, reps),
             "jax 2x+1 fresh output": nbytes_ / _median_time(
                 lambda: axpy(box["x"]).block_until_ready(), reps)}
    if torch is not None:
        ta, tb = torch.tensor(np.asarray(a)), torch.tensor(np.asarray(b))
        tx, ty = torch.ones(mib << 18), torch.empty(mib << 18)
        rates["torch.mm"] = 2 * n ** 3 / _median_time(lambda: torch.mm(ta, tb), reps)
        rates["torch 2x+1 in place"] = nbytes_ / _median_time(
            lambda: torch.add(tx, tx, out=ty), reps)
        rates["torch 2x+1 fresh output"] = nbytes_ / _median_time(lambda: tx * 2 + 1, reps) * 2
    return rates


def _timed(fn: Callable[[], Any], sync: Callable[[Any], Any], target: float = 0.02) -> float:
    """Median seconds per call of `fn` over 5 samples of enough calls for `target` s."""
    sync(fn())
    t0 = time.perf_counter()
    sync(fn())
    reps = max(1, int(target / max(time.perf_counter() - t0, 1e-6)))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn()
        sync(out)
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def isolated_matmuls(kernels: dict[str, Kernel], torch: Any | None) -> list[str]:
    """Each distinct matmul of the step timed alone, as a jitted `lax.dot_general` of the
    same shapes and operand layouts, and as `torch.matmul` on tensors (transposed views
    where the operand is stored transposed): how fast each library's kernel is at the
    step's shapes, against its time inside the step."""
    groups: dict[tuple, list[Kernel]] = collections.defaultdict(list)
    for k in kernels.values():
        if k.gemm and k.calls > 0:
            groups[k.gemm].append(k)
    lines = [("| matmul | calls/step | MFLOP | in the step µs/call | JAX alone µs | torch alone µs "
             "| JAX alone GFLOP/s | torch alone GFLOP/s |"), "|---|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    totals = [0.0, 0.0]
    for g, ks in sorted(groups.items(), key=lambda kv: -sum(k.busy for k in kv[1])):
        bsz, m, kk, n, ta, tb = g
        lead = (bsz,) if bsz else ()
        a = rng.standard_normal(lead + ((kk, m) if ta else (m, kk)), dtype=np.float32)
        b = rng.standard_normal(lead + ((n, kk) if tb else (kk, n)), dtype=np.float32)
        nd = len(lead) + 2
        dims = (((nd - 2 if ta else nd - 1,), (nd - 1 if tb else nd - 2,)),
                ((0,), (0,)) if bsz else ((), ()))
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        f = jax.jit(lambda x, y, dims=dims: jax.lax.dot_general(x, y, dims))
        t_jax = _timed(lambda f=f, ja=ja, jb=jb: f(ja, jb), jax.block_until_ready)
        t_torch = None
        if torch is not None:
            ta_, tb_ = torch.from_numpy(a), torch.from_numpy(b)
            va = ta_.transpose(-1, -2) if ta else ta_
            vb = tb_.transpose(-1, -2) if tb else tb_
            t_torch = _timed(lambda va=va, vb=vb: torch.matmul(va, vb), lambda o: o)
        flops = 2.0 * max(bsz, 1) * m * kk * n
        calls = sum(k.calls for k in ks)
        in_step = sum(k.busy for k in ks) / calls
        totals[0] += calls * t_jax
        totals[1] += calls * (t_torch or 0.0)
        lines.append(f"| {gemm_label(g)} | {calls:.0f} | {flops / 1e6:.1f} | {in_step * 1e6:.0f} "
                     f"| {t_jax * 1e6:.0f} | "
                     + (f"{t_torch * 1e6:.0f}" if t_torch else "–")
                     + f" | {flops / t_jax / 1e9:.0f} | "
                     + (f"{flops / t_torch / 1e9:.0f}" if t_torch else "–") + " |")
    lines += ["", f"Σ calls × time alone: JAX {_ms(totals[0])} ms"
              + (f", torch {_ms(totals[1])} ms (JAX / torch {totals[0] / totals[1]:.2f}×): the "
                 "step's matmuls at each library's own kernel speed" if totals[1] else "")]
    return lines


# --------------------------------------------------------------------------- #
# The two models, as bench.py builds them
# --------------------------------------------------------------------------- #


@dataclass
class Model:
    name: str
    fdl_model: Any
    params: Any
    model_state: Any
    x: np.ndarray
    y: np.ndarray
    torch_builder: Callable[[dict], Any]  # peers_seq builders of the torch row


def build(name: str) -> Model:
    """`bench.py`'s model, parameters and batch for the row `name` (LSTM, transformer)."""
    from peers_seq import (
        lstm_params,
        lstm_peers,
        transformer_params_of_fdl,
        transformer_peers,
    )
    cfg = CPU_CONFIGS[name]
    if name == "LSTM":
        model = fdl_lstm(cfg)
        _, params, st = model.init(jax.random.key(0), (cfg.steps,))
        text = np.random.default_rng(4).integers(0, cfg.vocab, (cfg.batch, cfg.steps + 1),
                                                 dtype=np.int32)
        xn, yn = text[:, :-1], text[:, 1:]
        peers = lambda mods: lstm_peers(cfg, mods, lstm_params(params), xn, yn)
    else:
        model = fdl_transformer(cfg)
        shape = (cfg.tokens, cfg.features)
        _, params, st = model.init(jax.random.key(0), shape)
        xn, yn = batch(5, shape, cfg.classes, cfg.batch)
        peers = lambda mods: transformer_peers(
            cfg, mods, transformer_params_of_fdl(params), xn, yn)
    return Model(name, model, params, st, xn, yn, peers)


def fdl_step_of(m: Model, compiler_options: dict | None = None
                ) -> tuple[Callable[[], None], Any, Callable[[], Any]]:
    """fdl's jitted step for `m` (as `bench.py`'s `fdl` row): `run()` takes one step,
    `compiled` is its executable, `sync()` waits for the latest state."""
    trainer = fdl.train.Trainer(m.fdl_model, fdl.optim.adam(LR, B1, B2, EPS),
                                loss=fdl.losses.softmax_cross_entropy)
    step = fdl_step(trainer, m.model_state)
    if compiler_options is not None:  # the bench step's options, plus these
        step = jax.jit(step.__wrapped__, donate_argnums=0,
                       compiler_options={**(fdl.train.compiler_options() or {}),
                                         **compiler_options})
    p = copy(m.params)
    box = {"state": (p, trainer.optimizer.init(p))}
    x, y = jnp.asarray(m.x), jnp.asarray(m.y)
    compiled = step.lower(box["state"], x, y).compile()

    def run() -> None:
        box["state"], box["loss"] = compiled(box["state"], x, y)

    return run, compiled, lambda: jax.block_until_ready(box["state"])


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #

KINDS = ("matmul", "elementwise", "scan loop", "other")


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


def fdl_tables(kernels: dict[str, Kernel], wall: float, unprofiled: float, peak: float,
               bw: float, top: int) -> list[str]:
    ran = [k for k in kernels.values() if k.calls > 0]
    total = sum(k.seconds for k in ran)
    launched = [k for k in ran if k.ops != ["while"] and k.name != "(between kernels)"]
    lines = [(f"fdl step: {_ms(unprofiled)} ms unprofiled, {_ms(wall)} ms profiled (the groups "
             f"below add up to it); {sum(k.calls for k in launched):.0f} kernel launches per "
             f"step ({sum(k.calls for k in launched if k.loop):.0f} inside loops)"), "",
             "| group | ms per step | share | launches per step |", "|---|---|---|---|"]
    for kind in KINDS:
        ks = [k for k in ran if k.kind == kind]
        t = sum(k.seconds for k in ks)
        lines.append(f"| {kind} | {_ms(t)} | {t / total:.0%} | {sum(k.calls for k in ks):.0f} |")
    lines += ["", ("By the fdl code each kernel was traced from (forward / backward pass; a "
              "backward kernel is attributed to the call of the primitive whose rule it runs):"),
              "", "| source | pass | ms per step | launches per step | of which matmul ms |",
              "|---|---|---|---|---|"]
    by: dict[tuple, list[Kernel]] = collections.defaultdict(list)
    for k in ran:
        if k.name != "(between kernels)":
            by[(k.source or "(outside fdl)", "backward" if k.backward else "forward")].append(k)
    for (src, pas), ks in sorted(by.items(), key=lambda kv: -sum(k.seconds for k in kv[1])):
        lines.append(f"| {src} | {pas} | {_ms(sum(k.seconds for k in ks))} | "
                     f"{sum(k.calls for k in ks):.0f} | "
                     f"{_ms(sum(k.seconds for k in ks if k.kind == 'matmul'))} |")
    mm = [k for k in ran if k.kind == "matmul"]
    flops = sum(k.flops * k.calls for k in mm)
    t = sum(k.seconds for k in mm)
    lines += ["", (f"Matmuls: {flops / 1e9:.2f} GFLOP per step in {_ms(t)} ms of wall = "
              f"{flops / t / 1e9:.0f} GFLOP/s ({flops / t / 1e9 / peak:.0%} of the measured "
              f"peak {peak:.0f}); at the peak they would take {_ms(flops / peak / 1e9)} ms. "
              "ms/step is each kernel's share of the wall clock (an instant run by k kernels "
              "counts 1/k to each); rates use its recorded duration."), ""]
    lines += [("| kernel | where | group | calls/step | ms/step (share) | µs/call (recorded) "
              "| what | GFLOP/s or GB/s | % of peak or bw |"), "|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(ran, key=lambda k: -k.seconds)[:top]:
        per = (k.busy or k.seconds) / k.calls
        if k.kind == "matmul":
            rate, frac = k.flops / per / 1e9, k.flops / per / 1e9 / peak
            what = f"{k.what}: {k.flops / 1e6:.1f} MFLOP"
        elif k.bytes:
            rate, frac = k.bytes / per / 1e9, k.bytes / per / 1e9 / bw
            what = f"{k.what} ({'/'.join(k.ops)[:40]}): {k.bytes / 2 ** 20:.2f} MiB"
        else:
            rate, frac, what = 0.0, 0.0, k.what
        where = "loop " + k.loop if k.loop else "step"
        lines.append(f"| {k.name} | {where} | {k.kind} | {k.calls:.0f} | {_ms(k.seconds)} | "
                     f"{per * 1e6:.0f} | {what.replace('|', '/')} | {rate:.1f} | {frac:.0%} |")
    return lines


def torch_tables(ops: list[TorchOp], wall: float, unprofiled: float, peak: float, bw: float,
                 top: int) -> list[str]:
    total = sum(o.seconds for o in ops)
    lines = [(f"torch step: {_ms(unprofiled)} ms unprofiled, {_ms(wall)} ms profiled; operators' "
             f"self times add up to {_ms(total)} ms"), "",
             "| group | ms per step | share | calls per step |", "|---|---|---|---|"]
    for kind in KINDS:
        os_ = [o for o in ops if o.kind == kind]
        t = sum(o.seconds for o in os_)
        lines.append(f"| {kind} | {_ms(t)} | {t / max(total, 1e-12):.0%} | "
                     f"{sum(o.calls for o in os_):.0f} |")
    lines += ["", ("| operator | input shapes | group | calls/step | ms/step | µs/call | GFLOP/s "
              "| % of peak |"), "|---|---|---|---|---|---|---|---|"]
    for o in sorted(ops, key=lambda o: -o.seconds)[:top]:
        rate = o.flops / o.seconds / 1e9 if o.flops else 0.0
        lines.append(f"| {o.name} | {o.shapes} | {o.kind} | {o.calls:.0f} | {_ms(o.seconds)} | "
                     f"{o.seconds / o.calls * 1e6:.0f} | {rate:.1f} | "
                     f"{rate / peak:.0%} |" if o.flops else
                     f"| {o.name} | {o.shapes} | {o.kind} | {o.calls:.0f} | {_ms(o.seconds)} | "
                     f"{o.seconds / o.calls * 1e6:.0f} | – | – |")
    return lines


def interleaved(runs: dict[str, tuple[Callable[[], None], Callable[[], Any]]], rounds: int,
                per_round: int) -> dict[str, dict[str, float]]:
    """Per `(run, sync)`, rounds interleaved: the median seconds per step, and per step
    the process's minor page faults and system CPU seconds (`getrusage`: first touches
    of freshly mapped memory are faults, their zeroing system time)."""
    samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, (run, sync) in runs.items():
            sync()
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for _ in range(per_round):
                run()
            sync()
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            samples[name].append(((t1 - t0) / per_round, (r1.ru_minflt - r0.ru_minflt) / per_round,
                                  (r1.ru_stime - r0.ru_stime) / per_round))
    out = {k: {"seconds": statistics.median(s[0] for s in v), "min": min(s[0] for s in v),
               "faults": statistics.median(s[1] for s in v),
               "system": statistics.median(s[2] for s in v)} for k, v in samples.items()}
    if "torch" in samples and "fdl" in samples:  # the ratio round by round
        out["fdl"]["ratio"] = statistics.median(
            a[0] / b[0] for a, b in zip(samples["fdl"], samples["torch"]))
    return out


def compare_options(args: argparse.Namespace) -> None:
    """`--options`: the step of each row under each XLA option set, interleaved."""
    import json
    sets = json.loads(args.options)
    print(f"load average at start {loadavg()}; {environment().get('cpu')}; command: "
          f"`python {' '.join(sys.argv)}`")
    for name in args.only.split(","):
        m = build(name)
        runs = {}
        for opts in sets:
            run, compiled, sync = fdl_step_of(m, opts)
            kernels = [k for k in kernels_of(compiled.as_text()).values() if k.ops != ["while"]]
            label = json.dumps(opts) + f" ({len(kernels)} kernels)"
            run(), run()
            sync()
            runs[label] = (run, sync)
        samples: dict[str, list] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for label, (run, sync) in runs.items():
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                for _ in range(2):
                    run()
                sync()
                r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                samples[label].append(((t1 - t0) / 2, (r1.ru_utime - r0.ru_utime) / 2,
                                       (r1.ru_stime - r0.ru_stime) / 2))
        base = statistics.median(s[0] for s in next(iter(samples.values())))
        print(f"\n{name}: ms per step over {args.rounds} interleaved rounds of 2 steps\n\n"
              "| XLA options | median | min | vs first | user CPU | system CPU |\n"
              "|---|---|---|---|---|---|")
        for label, v in samples.items():
            med = statistics.median(s[0] for s in v)
            print(f"| {label} | {_ms(med)} | {_ms(min(s[0] for s in v))} | {med / base:.3f}× | "
                  f"{_ms(statistics.median(s[1] for s in v))} | "
                  f"{_ms(statistics.median(s[2] for s in v))} |")
    print(f"\nload average at end {loadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="LSTM,transformer", help="comma-separated rows")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per framework")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the unprofiled timing")
    parser.add_argument("--top", type=int, default=25, help="kernels and operators listed")
    parser.add_argument("--no-torch", action="store_true", help="fdl only")
    parser.add_argument("--time-only", action="store_true",
                        help="only the unprofiled interleaved timing (no profiles)")
    parser.add_argument("--markdown", help="also write the report to this file")
    parser.add_argument("--options", metavar="JSON",
                        help="instead of the profile, time fdl's step compiled with each of "
                        "these XLA option sets (a JSON list of objects; {} is bench.py's "
                        "step), interleaved, with CPU time and page faults per step")
    args = parser.parse_args()
    if args.options:
        compare_options(args)
        return
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch not installed: fdl only")
    env = environment()
    out = [f"Machine: {env.get('cpu')}, {os.cpu_count()} cores; load average at start "
           f"{loadavg()}; jax {jax.__version__}; malloc environment: "
           + (" ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                       if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES") or "glibc defaults")
           + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ""),
           f"Command: `python {' '.join(sys.argv)}`", ""]
    report: list[str] = []
    rates = reference_rates(torch)
    peak = max(v for k, v in rates.items() if "matmul" in k or k.endswith(".mm")) / 1e9
    bw = max(v for k, v in rates.items() if "in place" in k) / 1e9
    out += ["| reference | rate |", "|---|---|"] + [
        f"| {k} | {v / 1e9:.1f} {'GFLOP/s' if 'mm' in k or 'matmul' in k else 'GB/s'} |"
        for k, v in rates.items()]
    out += ["", (f"Peak used: {peak:.1f} GFLOP/s (float32, 2048×2048, the faster library); "
            f"bandwidth used: {bw:.1f} GB/s (in place, the faster library). Kernels whose "
            "data fit in the caches (a loop step's 0.1–0.6 MiB) can exceed it."), ""]
    for name in args.only.split(","):
        m = build(name)
        run, compiled, sync = fdl_step_of(m)
        runs = {"fdl": (run, sync)}
        if torch is not None:
            trow = m.torch_builder({"torch": torch})["torch"]()[0]
            runs["torch"] = (lambda r=trow: r.run(1), lambda: None)
        for r, s in runs.values():  # warm up
            r(), r()
            s()
        timed = interleaved(runs, args.rounds, 2)
        med = {k: v["seconds"] for k, v in timed.items()}
        out += [f"## {name}: {CPU_CONFIGS[name].label}", "",
                f"Unprofiled, {args.rounds} interleaved rounds of 2 steps, median (min): "
                + ", ".join(f"{k} {_ms(v['seconds'])} ({_ms(v['min'])}) ms"
                            for k, v in timed.items())
                + (f"; fdl / torch {timed['fdl']['ratio']:.2f}× (median of per-round ratios), "
                   f"{timed['fdl']['min'] / timed['torch']['min']:.2f}× (of the minima)"
                   if "torch" in timed else "")
                + ". Per step, minor page faults (MiB of fresh pages touched) and system CPU "
                "time: " + ", ".join(f"{k} {v['faults']:.0f} ({v['faults'] * 4 / 1024:.0f} MiB), "
                                     f"{_ms(v['system'])} ms" for k, v in timed.items()), ""]

        if args.time_only:
            print("\n".join(out), flush=True)
            report += out
            out = []
            continue

        def steps_of_fdl(run: Callable[[], None] = run, sync: Callable[[], Any] = sync) -> None:
            for _ in range(args.steps):
                run()
            sync()

        kernels, wall = fdl_profile(compiled.as_text(), steps_of_fdl, args.steps)
        out += fdl_tables(kernels, wall, med["fdl"], peak, bw, args.top) + [""]
        out += ["fdl's matmuls, each alone (distinct shapes, by their time in the step):", ""]
        out += isolated_matmuls(kernels, torch) + [""]
        if torch is not None:
            ops, twall = torch_profile(torch, trow.run, args.steps)
            out += torch_tables(ops, twall, med["torch"], peak, bw, args.top) + [""]
        print("\n".join(out), flush=True)
        report += out
        out = []
    end = f"Load average at end {loadavg()}."
    print(end)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(report + [end]) + "\n")


if __name__ == "__main__":
    main()
