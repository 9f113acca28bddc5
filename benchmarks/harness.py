"""The measuring harness: runners, interleaved rounds, statistics, paired ratios.

A `Runner` is one variant of a workload: `run(k)` takes `k` steps and waits for them
once, `loss()` is the last step's loss. `measure` times a list of runners the same
way for every framework:

* the first call (trace + compile + one step) is timed on its own and excluded;
* each runner then takes `k` steps per round, `k` chosen so one round lasts about
  `Settings.min_time` seconds, and waits once at the end of the round;
* every round times every runner once, in a fresh seeded random order, so drift in
  the machine's load hits every variant alike and no variant always follows the
  same one.

A row reports the median, quartiles and minimum of the per-step time over rounds.
Ratios between two rows are medians of per-round ratios (`paired_ratio`): the two
times of one round share the machine's conditions, so load drift cancels.

This module knows nothing of fdl or of the peers; `environment` describes the
machine and the versions for the report.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import re
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

JAX_PEERS = ("jax", "stax", "flax", "equinox")
ALL_PEERS = (*JAX_PEERS, "torch")


@dataclass
class Settings:
    """How long and what to measure; `notes` collects the run-wide remarks."""

    rounds: int = 7
    min_time: float = 0.3          # seconds of steps per variant per round
    max_steps: int = 500           # cap on steps per round
    peers: tuple[str, ...] = ALL_PEERS
    bf16: bool = False
    gpu_sizes: bool = False
    peak_n: int = 4096
    quick: bool = False
    cli: bool = True               # run `fdl train` as a subprocess in the digits section
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass
class Runner:
    """One variant: `run(k)` takes `k` steps and waits for them; `loss()` is the
    last step's loss (`None` where there is none)."""

    name: str
    group: str                      # "fdl", "jax" (a JAX peer), "torch", "ref"
    run: Callable[[int], None]
    loss: Callable[[], float | None] = lambda: None
    dtype: str = "float32"
    flops: float | None = None      # per step (per call of run(1))
    cost: Callable[[], dict] | None = None  # XLA's static view of the compiled step


def short(e: BaseException, n: int = 160) -> str:
    """An exception's message on one line, at most `n` characters (for a note)."""
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def stats(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, minimum and maximum of per-step times, in seconds."""
    a = np.asarray(samples, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3),
            "min_s": float(a.min()), "max_s": float(a.max())}


def measure(runners: Sequence[Runner], settings: Settings, *, notes: list[str]) -> list[dict]:
    """Warm up each runner (timing its first call), then time them in interleaved rounds.

    A runner that fails to run (a peer's API changed, out of memory, …) is skipped with
    a note saying why; the others are still measured.
    """
    live, rows = [], []
    for r in runners:
        try:
            t0 = time.perf_counter()
            r.run(1)
            first = time.perf_counter() - t0
            loss0 = r.loss()
            r.run(1)
            t0 = time.perf_counter()
            r.run(1)
            one = time.perf_counter() - t0
        except Exception as e:
            notes.append(f"{r.name}: skipped, failed to run: {type(e).__name__}: {short(e)}")
            continue
        k = max(1, min(settings.max_steps, math.ceil(settings.min_time / max(one, 1e-9))))
        live.append((r, k, first, loss0, []))
    shuffle = np.random.default_rng(0)
    for _ in range(settings.rounds):
        # a fresh order each round: no variant always follows the same one (PyTorch's
        # OpenMP threads, for one, may still be spinning when the next variant starts)
        order = [live[j] for j in shuffle.permutation(len(live))]
        for r, k, _, _, samples in order:
            t0 = time.perf_counter()
            r.run(k)
            samples.append((time.perf_counter() - t0) / k)
    for r, k, first, loss0, samples in live:
        rows.append(_row_of(r, k, first, loss0, samples, notes))
    return rows


def _row_of(r: Runner, k: int, first: float, loss0: float | None, samples: list[float],
            notes: list[str]) -> dict:
    st = stats(samples)
    row = {"variant": r.name, "group": r.group, "dtype": r.dtype, **st,
           "steps_per_round": k, "rounds": len(samples), "first_call_s": first,
           "compile_s": max(0.0, first - st["median_s"]),
           "loss0": None if loss0 is None else float(loss0), "samples_s": samples}
    if r.flops:
        row["flops"] = r.flops
        row["gflops"] = r.flops / st["median_s"] / 1e9
    if r.cost is not None:
        try:
            row["xla"] = r.cost()
        except Exception as e:
            notes.append(f"{r.name}: no XLA cost analysis ({type(e).__name__}: {short(e)})")
    return row


def looped(step: Callable[[Any], tuple[Any, Any]], state: Any,
           context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
           ) -> tuple[Callable[[int], None], dict]:
    """The timed loop of a JAX runner: `run(k)` applies `state, out = step(state)` `k`
    times inside `context()`, then waits once for both (`jax.block_until_ready`).

    Returns `run` and the box holding the latest `"state"` and `"out"`, for the
    runner's loss, cost analysis or output checks.
    """
    box = {"state": state, "out": None}

    def run(k: int) -> None:
        s, out = box["state"], None
        with context():
            for _ in range(k):
                s, out = step(s)
        jax.block_until_ready((s, out))
        box["state"], box["out"] = s, out

    return run, box


def jit_runner(name: str, group: str, step: Callable, state: Any, x: Any, y: Any, *,
               context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               dtype: str = "float32", flops: float | None = None) -> Runner:
    """A runner for `state, loss = step(state, x, y)` (`step` jitted, `state` donated).

    Every call, and the cost analysis's lowering, is made inside `context()`: where
    the context is part of the jit cache key (`fdl.gradient_mode`), entering it for the
    first call only would time another program.
    """
    run, box = looped(lambda s: step(s, x, y), state, context)

    def cost() -> dict:
        with context():
            return xla_cost(step.lower(box["state"], x, y).compile())

    return Runner(name, group, run, lambda: float(box["out"]), dtype, flops, cost)


def xla_cost(compiled: Any) -> dict:
    """What XLA says about a compiled program: FLOPs, bytes accessed, op counts
    (fusions, dots, copies, transposes, convolutions) from its optimised HLO, and its
    memory (`compiled.memory_analysis()`: temporaries, arguments, outputs, bytes) —
    noise-free evidence for comparing two variants' programs."""
    ca = compiled.cost_analysis()
    ca = (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}
    hlo = compiled.as_text()
    # one instruction per line, `[ROOT] %name = TYPE opcode(…`; TYPE may be a tuple with spaces
    ops = re.findall(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = .*?\s([a-z][\w-]*)\(", hlo, re.M)
    count = {k: ops.count(k) for k in ("fusion", "dot", "convolution", "copy", "transpose",
                                       "while")}
    count["all"] = len(ops)
    return {"flops": ca.get("flops"), "bytes_accessed": ca.get("bytes accessed"),
            "transcendentals": ca.get("transcendentals"), "hlo_ops": count,
            "loop_body_kernels": loop_body_kernels(hlo), "memory": memory_analysis(compiled)}


_NOT_KERNELS = frozenset({"parameter", "get-tuple-element", "tuple", "constant", "bitcast",
                          "after-all", "opt-barrier"})


def loop_body_kernels(hlo: str) -> dict | None:
    """The instructions of the outermost `while` loop's body that do work (fusions, dots,
    copies, …; not parameters, tuples, constants or bitcasts), by opcode: what one
    iteration of a scanned epoch launches. `None` without a loop."""
    m = re.search(r"\swhile\(.*?body=%?([\w.\-]+)", hlo)
    if m is None:
        return None
    block = re.search(r"^%?" + re.escape(m.group(1)) + r" .*?\{\n(.*?)^\}", hlo, re.M | re.S)
    if block is None:
        return None
    ops = re.findall(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = .*?\s([a-z][\w-]*)\(", block.group(1),
                     re.M)
    kernels: dict[str, int] = {}
    for op in ops:
        if op not in _NOT_KERNELS:
            kernels[op] = kernels.get(op, 0) + 1
    kernels["total"] = sum(kernels.values())
    return kernels


def memory_analysis(compiled: Any) -> dict | None:
    """XLA's memory for one compiled program, in bytes: `temp` (scratch buffers live
    during the step: the activations and residuals the backward keeps), `argument`,
    `output`, `alias` (outputs written into donated arguments)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    return {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
            for k in ("temp", "argument", "output", "alias", "generated_code")}


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (`getrusage`), MiB: monotone over a
    run, so a section's value bounds every row measured up to its end."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024.0


# --------------------------------------------------------------------------- #
# Rows and ratios
# --------------------------------------------------------------------------- #


def find(rows: Sequence[dict], variant: str) -> dict | None:
    """The row of `variant`, or `None` where it was not measured."""
    return next((r for r in rows if r["variant"] == variant), None)


def paired_ratio(a: dict, b: dict) -> tuple[float, float, float] | None:
    """Median, first and third quartile of `a`'s time over `b`'s, round by round (each
    round times every variant once, so the pairs share the machine's conditions and
    load drift cancels)."""
    n = min(len(a["samples_s"]), len(b["samples_s"]))
    if n == 0:
        return None
    q = np.percentile(np.asarray(a["samples_s"][:n]) / np.asarray(b["samples_s"][:n]),
                      [25, 50, 75])
    return float(q[1]), float(q[0]), float(q[2])


def set_ratio(row: dict, key: str, ref: dict | None) -> None:
    """`row[key]`: the median per-round ratio of `row` over `ref`; `row[key + "_iqr"]`:
    its quartiles (both `None` without a reference)."""
    q = paired_ratio(row, ref) if ref else None
    row[key] = q[0] if q else None
    row[key + "_iqr"] = [q[1], q[2]] if q else None


# --------------------------------------------------------------------------- #
# Environment
# --------------------------------------------------------------------------- #


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (`None` where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """The machine and the versions, for the report."""
    dev = jax.devices()[0]
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)), "devices": jax.device_count(),
        "versions": {d: _version(d) for d in
                     ("fdl", "jax", "jaxlib", "numpy", "optax", "flax", "equinox", "torch")},
        "loadavg_at_start": loadavg(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # glibc's allocator settings change what a step's scratch memory costs (README,
        # "Compose and train models"): the report names them when set
        "malloc": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                           if k == "GLIBC_TUNABLES" or k.startswith("MALLOC_")),
    }
