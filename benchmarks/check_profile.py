"""Where `fdl check`'s time goes: per primitive, host preparation, Python tracing,
lowering to StableHLO, XLA compilation, the run, and building the reports.

    .venv/bin/python benchmarks/check_profile.py [--dtype float64] [--only relu conv2d]
        [--parts] [--top 15]
    .venv/bin/python benchmarks/check_profile.py --balance   # fdl check's own workers

Runs `fdl.check.examples` for each registered primitive one after another (one thread,
no persistent compilation cache), with `fdl.check.arguments.compile_program` replaced
by an instrumented copy that times `jax.jit(fn).trace`, `.lower()`, `.compile()` and
the call. CPU seconds (`time.process_time`) are given beside wall seconds: the machine
may be shared. `--parts` also compiles each primitive's pieces on their own (the vjp
reference, its finite differences, the hand backward, the forward-mode program) to see
which part of the program costs the most; those figures are separate compilations
and add up to more than the fused program. `--balance` instead runs `fdl check` itself
(`fdl.cli.main`, no compilation cache: a cold run) in its worker processes and gives
each worker's CPU and busy seconds and when it finished: the idle tail is the gap
between the first worker's end and the last's.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class Clock:
    """Wall and CPU seconds, accumulated per phase."""

    def __init__(self) -> None:
        self.wall: collections.Counter = collections.Counter()
        self.cpu: collections.Counter = collections.Counter()

    def add(self, phase: str, w: float, c: float) -> None:
        self.wall[phase] += w
        self.cpu[phase] += c


def _timed(clock: Clock, phase: str, fn, *a, **k):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*a, **k)
    clock.add(phase, time.perf_counter() - w, time.process_time() - c)
    return out


def instrument(clock_of: dict, current: list) -> None:
    """Replace `compile_program` with a copy that times each phase (no memo)."""
    import jax

    from fdl.check import arguments

    def compile_program(fn, *args, options=None):
        clock = clock_of[current[0]]
        opts = arguments._FAST_COMPILE if options is None else options
        traced = _timed(clock, "trace", jax.jit(fn).trace, *args)
        lowered = _timed(clock, "lower", traced.lower)
        serialize = getattr(arguments, "_serialized", lambda lo: lo.as_text().encode())
        program = _timed(clock, "hlo text+hash", serialize, lowered)
        # the size of the text, for comparison with older figures (its time is the
        # profiler's, taken out of the totals)
        w, c = time.perf_counter(), time.process_time()
        clock.wall["hlo bytes"] += len(lowered.as_text())
        clock.add("profiler", time.perf_counter() - w, time.process_time() - c)
        if b"convolution" in program:  # as compile_program does: the text only for these
            text = _timed(clock, "hlo text+hash", lowered.as_text)
            opts = getattr(arguments, "_options_for", lambda t, o: o)(text, opts)  # older trees
        try:
            exe = _timed(clock, "compile", lowered.compile, opts)
        except Exception:
            exe = _timed(clock, "compile", lowered.compile)

        def call(*a):
            out = _timed(clock, "run", exe, *a)
            _timed(clock, "run", jax.block_until_ready, out)
            return out
        return call

    arguments.compile_program = compile_program


def parts(p, dtype: str) -> dict:
    """Compile times of a primitive's pieces compiled on their own (CPU seconds of
    trace+lower+compile each, summed over its examples)."""
    import jax

    from fdl.check.arguments import _FAST_COMPILE
    from fdl.check.forward import forward_job
    from fdl.check.registered import _ONE_PIECE, draw
    from fdl.check.reverse import vjp_job
    from fdl.check.report import Report

    def cost(fn, *args):
        c = time.process_time()
        jax.jit(fn).lower(*args).compile(_ONE_PIECE)
        return time.process_time() - c

    out = collections.Counter()
    for a, k in draw(p, dtype):
        for fdon in (False, True):
            job = vjp_job(p, a, k, key=None, rtol=None, fd_rtol=None, finite_differences=fdon,
                          max_fd_elements=256, directions=4, with_manual=True)
            if isinstance(job, Report):
                break
            ref = cost(job.reference_part, *job.inputs)
            if not fdon:
                out["vjp reference"] += ref
                out["vjp reference+manual"] += cost(job.program, *job.inputs)
            else:
                out["vjp reference+fd"] += ref
        if p.tangent is not None:
            f = forward_job(p, a, k, None, False)
            if not isinstance(f, Report):
                out["forward (jvp+adjoint)"] += cost(f[0], *f[1])
    del _FAST_COMPILE
    return out


_BALANCE: dict = {}  # the log file, the start time and fdl's worker function


def _timed_check(name: str, dtype: str, seed: int) -> list:
    """`fdl.cli._check_primitive`, timed, in a worker (module level: it is pickled)."""
    w, c = time.perf_counter(), time.process_time()
    out = _BALANCE["check"](name, dtype, seed)
    with open(_BALANCE["log"], "a") as f:
        f.write(f"{os.getpid()} {name} {time.perf_counter() - w:.3f} "
                f"{time.process_time() - c:.3f} {time.perf_counter() - _BALANCE['t0']:.3f}\n")
    return out


def balance(dtype: str) -> int:
    """`fdl check` in its worker processes; per worker: primitives, CPU s, busy s, end."""
    import tempfile

    t0 = time.perf_counter()
    from fdl import cli
    imported = time.perf_counter() - t0
    log = tempfile.NamedTemporaryFile("r", suffix=".log")
    _BALANCE.update(check=cli._check_primitive, log=log.name, t0=t0)
    timed = _timed_check
    cli._check_primitive = timed
    processes = cli._check_processes(4)
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
        code = cli.main(["check", "--dtype", dtype])
    finally:
        sys.stdout = stdout
    wall = time.perf_counter() - t0
    workers: dict = collections.defaultdict(list)
    for line in log.read().splitlines():
        pid, name, busy, cpu, end = line.split()
        workers[pid].append((float(busy), float(cpu), float(end), name))
    print(f"fdl check (exit {code}), {processes} worker processes: {wall:.2f} s wall, "
          f"import {imported:.2f} s")
    ends = []
    for pid, rows in workers.items():
        rows.sort(key=lambda r: r[2])
        ends.append(rows[-1][2])
        print(f"  worker {pid}: {len(rows)} primitives, CPU {sum(r[1] for r in rows):.2f} s, "
              f"busy {sum(r[0] for r in rows):.2f} s, done at {rows[-1][2]:.2f} s "
              f"(last: {rows[-1][3]})")
    if ends:
        print(f"  idle tail (first worker done to last): {max(ends) - min(ends):.2f} s")
    return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--parts", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--balance", action="store_true",
                    help="run fdl check in its worker processes: each worker's time")
    ap.add_argument("--no-gc", action="store_true", help="gc.disable() for the run")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() after the imports, as `fdl check` does before its workers")
    args = ap.parse_args()
    if args.balance:
        return balance(args.dtype)
    if args.no_gc:
        import gc
        gc.disable()
    t0w, t0c = time.perf_counter(), time.process_time()
    import jax

    from fdl.check import registered
    from fdl.primitive import registry
    clock_import = (time.perf_counter() - t0w, time.process_time() - t0c)
    if args.gc_freeze:
        import gc
        gc.freeze()
    prims = registry()
    if args.only:
        prims = {k: v for k, v in prims.items() if k in args.only}
    clocks: dict = {}
    current = [None]
    instrument(clocks, current)
    part_costs: dict = {}
    with jax.enable_x64(args.dtype == "float64"):
        for name, p in prims.items():
            clocks[name] = clock = Clock()
            current[0] = name
            w, c = time.perf_counter(), time.process_time()
            registered.examples(p, dtype=args.dtype)
            clock.add("total", time.perf_counter() - w - clock.wall["profiler"],
                      time.process_time() - c - clock.cpu["profiler"])
            if args.parts:
                part_costs[name] = parts(p, args.dtype)
    phases = ["trace", "lower", "hlo text+hash", "compile", "run"]
    total = Clock()
    for clock in clocks.values():
        for k in set(clock.cpu) | set(clock.wall):
            total.add(k, clock.wall[k], clock.cpu[k])
    host_cpu = total.cpu["total"] - sum(total.cpu[k] for k in phases)
    host_wall = total.wall["total"] - sum(total.wall[k] for k in phases)
    print(f"{len(prims)} primitives, {sum(len(p.examples) for p in prims.values())} examples,"
          f" {args.dtype}; import {clock_import[0]:.1f} s wall {clock_import[1]:.1f} s CPU")
    print(f"{'phase':<16}{'wall s':>8}{'CPU s':>8}")
    for k in phases:
        print(f"{k:<16}{total.wall[k]:8.2f}{total.cpu[k]:8.2f}")
    print(f"{'host (rest)':<16}{host_wall:8.2f}{host_cpu:8.2f}")
    print(f"{'total':<16}{total.wall['total']:8.2f}{total.cpu['total']:8.2f}")
    print(f"StableHLO text: {total.wall['hlo bytes'] / 1e6:.1f} MB")
    print(f"\nslowest {args.top} primitives (CPU s): total  trace  lower  compile    run  host")
    ranked = sorted(clocks.items(), key=lambda kv: -kv[1].cpu["total"])
    for name, c in ranked[:args.top]:
        host = c.cpu["total"] - sum(c.cpu[k] for k in phases)
        print(f"  {name:<28}{c.cpu['total']:6.2f} {c.cpu['trace']:6.2f} {c.cpu['lower']:6.2f}"
              f" {c.cpu['compile']:7.2f} {c.cpu['run']:6.2f} {host:6.2f}"
              f"  ({len(prims[name].examples)} examples,"
              f" {c.wall['hlo bytes'] / 1e3:.0f} kB)")
    if part_costs:
        summed = collections.Counter()
        for pc in part_costs.values():
            summed.update(pc)
        print("\npieces compiled alone (CPU s of trace+lower+compile, all primitives):")
        for k, v in summed.items():
            print(f"  {k:<24}{v:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
