"""The ``fdl`` command: ``fdl train``, ``fdl check``.

Exit codes: 0 success; 1 a check failed (``fdl check``), a failed save or an
unexpected error; 2 bad input (a one-line ``error:`` message naming the problem and
the fix; no traceback); 128 + the signal number when SIGINT (130) or SIGTERM (143)
stopped ``fdl train`` (after saving a checkpoint at the epoch boundary); 141 when
stdout was closed (``fdl train | head -1``), likewise after saving.

``fdl train`` checks everything it will read or write — options, data files,
labels, the checkpoint and plot paths, a resumed checkpoint's settings — before it
compiles anything, so a mistake costs seconds, not a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import select
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main"]


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""

    code = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one ``error:`` line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- #
# fdl check
# --------------------------------------------------------------------------- #


def _check_primitive(name: str, dtype: str, seed: int) -> list:
    """`fdl.check.examples` of the registered primitive `name`, x64 on for float64:
    what each worker of `fdl check` runs."""
    import jax

    from fdl.check import examples
    from fdl.primitive import registry

    with jax.enable_x64(dtype == "float64"):
        return examples(registry()[name], dtype=dtype, seed=seed)


def _quiet_worker(parent: int) -> None:
    """A worker process of `fdl check` leaves Ctrl-C to its parent, which ends it, and
    on Linux ends when its parent does (killed, it would otherwise print a broken
    pipe's traceback when it next sends a result). It runs without the cyclic garbage
    collector: tracing allocates millions of short-lived objects, so the collector
    would run thousands of times, yet it finds little (reference counting frees the
    rest), and the worker ends with the run (BENCHMARKS.md, "fdl check")."""
    import gc

    gc.disable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker ends at its next send
        pass
    if os.getppid() != parent:  # the parent ended before the request
        os._exit(1)


def _check_processes(count: int) -> int:
    """How many worker processes check `count` primitives: one per core (at most 8),
    where they can be forked — on POSIX, before JAX has started a backend (its
    threads do not survive a fork; the console script forks first) — else 0, and two
    threads of this process do the work. Each process traces under its own
    interpreter lock, so tracing, which holds the lock, runs on every core."""
    if not hasattr(os, "fork") or not hasattr(os, "sched_getaffinity") or count < 4:
        return 0
    cores = len(os.sched_getaffinity(0))
    try:
        from jax._src import xla_bridge

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # another JAX: don't risk a fork
        return 0
    return 0 if started or cores < 2 else min(cores, 8, count)


def _cmd_check(args: argparse.Namespace) -> int:
    """Check every registered primitive's examples; one line per example as it
    finishes: the backward (vs autodiff and finite differences), the tangent rule (vs
    autodiff) and the adjointness of the two hand rules. float64 turns x64 on for
    the run; float32 runs in JAX's default configuration (x64 off), finite
    differences included. Each primitive's examples, all three checks, are one
    compiled program; the primitives are shared among worker processes, one per core
    (`_check_processes`), or two threads. A primitive without a tangent rule is
    checked in reverse mode only, and its row says so."""
    import functools
    import gc
    from concurrent.futures import ThreadPoolExecutor

    import jax

    from fdl.primitive import registry

    prims = registry()
    if args.only:
        unknown = sorted(set(args.only) - set(prims))
        if unknown:
            raise UsageError(f"unknown primitive(s) {unknown}; registered: {sorted(prims)}")
        prims = {k: v for k, v in prims.items() if k in args.only}
    total = sum(len(p.examples) for p in prims.values())
    width = max((len(n) for n in prims), default=0)
    if jax.config.jax_compilation_cache_dir:  # the CLI's cache: keep every check program
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    def forward_note(tangent, adjoint) -> str:
        if tangent is None:
            return "; no tangent rule"
        row = adjoint.rows[0] if adjoint.rows else None  # atol = rtol × the sums' scale
        gap = row.max_abs * row.rtol / max(row.atol, 1e-300) if row else float("nan")
        return f"; tangent {tangent.worst('autodiff'):.0e}; adjoint gap {gap:.0e}"

    print(f"fdl check: {len(prims)} primitives, {total} examples, {args.dtype} "
          f"(finite differences in {args.dtype})", flush=True)
    check = functools.partial(_check_primitive, dtype=args.dtype, seed=args.seed)
    processes = _check_processes(len(prims))
    if processes:
        import multiprocessing

        # what the imports built is never garbage: the workers' collectors need not walk
        # it while tracing (nor touch the pages they share with this process)
        gc.freeze()

        pool: Any = multiprocessing.get_context("fork").Pool(processes, _quiet_worker,
                                                             (os.getpid(),))
        results = pool.imap(check, prims)
        stop = pool.terminate
    else:
        pool = ThreadPoolExecutor(max_workers=2)
        results = pool.map(check, prims)
        stop = functools.partial(pool.shutdown, cancel_futures=True)
    done, failed = 0, []
    try:
        for name, reports in zip(prims, results):
            for i, (report, tangent, adjoint) in enumerate(reports):
                done += 1
                bad = [r for r in (report, tangent, adjoint) if r is not None and not r.passed]
                verdict = "FAIL" if bad else "ok  "
                print(f"[{done:{len(str(total))}d}/{total}] {name:<{width}} {i}  {verdict} "
                      f"(max rel err {report.worst('autodiff'):.0e} vs autodiff, "
                      f"{report.worst('finite differences'):.0e} vs finite differences"
                      f"{forward_note(tangent, adjoint)})", flush=True)
                if bad:
                    failed.append(bad)
    finally:
        stop()
    for reports in failed:
        for report in reports:
            print("\n" + str(report))
    print(f"\n{len(prims)} primitives, {total} examples, {args.dtype}: "
          + ("all passed" if not failed else f"{len(failed)} FAILED"))
    return 1 if failed else 0


# --------------------------------------------------------------------------- #
# fdl train
# --------------------------------------------------------------------------- #

# The settings a checkpoint records. With --resume, an option left out is taken from
# the checkpoint and one given with another value is an error naming both values.
_DEFAULTS: dict[str, Any] = {"data": "digits", "hidden": [512], "activation": "relu",
                             "dropout": 0.3, "optimizer": "adam", "lr": 1e-3,
                             "batch_size": 64, "seed": 0, "num_classes": None,
                             "compute_dtype": "float32"}
DEFAULT_CHECKPOINT = "fdl-checkpoint.npz"
DEFAULT_EPOCHS = 40
DEFAULT_COORDINATOR_TIMEOUT = 60.0  # seconds
_INT32_MAX = 2**31 - 1  # the state counts steps and epochs in int32
_SEED_MAX = 2**63 - 1  # jax.random.key takes a seed that fits an int64
_EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE


class Failure(UsageError):
    """The run could not finish (a failed save): one ``error:`` line, exit code 1."""

    code = 1


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM where training cannot stop cleanly (before it starts, or a
    second signal); ``signum`` gives the exit code ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(name: str, value: Any) -> str:
    """An option's value as it is typed on the command line."""
    if name == "hidden":
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _int_list(text: str) -> list[int]:
    if text.strip() == "none":
        return []
    if not text.strip():  # '' is a typo far more often than a request for no hidden layer
        raise argparse.ArgumentTypeError(
            "expected comma-separated layer sizes such as 512 or 256,128, got ''; pass "
            "--hidden none for no hidden layer (logistic regression)")
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes such as 512 or 256,128, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be ≥ 1, got {text!r}")
    return sizes


def _number(kind: type, low: float, *, low_open: bool = False, high: float | None = None,
            high_open: bool = False, what: str = "") -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` in the given range, else a one-line error."""
    show = (lambda v: str(v) if isinstance(v, int) else f"{v:g}")
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    span = f"in {lo}{show(low)}, {show(high)}{hi}" if high is not None else \
        (f"> {show(low)}" if low_open else f"≥ {show(low)}")
    what = what or kind.__name__
    if kind is float and high is None:  # 'inf' is > 0: say that it must be finite
        what = what.replace("a number", "a finite number")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {span}, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if high is not None:
            ok = ok and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what} {span}, got {text!r}")
        return value
    return parse


def _data(text: str) -> str:
    """An argparse type: a non-empty data set name or path ('' would mean this directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected 'digits' or a directory of MNIST-format "
                                         "IDX files, got ''")
    return text


def _address(text: str) -> str:
    """An argparse type: ``HOST:PORT`` with a port in [1, 65535]."""
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in [1, 65535], "
                                         f"such as 10.0.0.1:1234, got {text!r}")
    return text


def _same_data(a: str, b: str) -> bool:
    norm = (lambda p: p if p == "digits" else os.path.abspath(os.path.expanduser(p)))
    return norm(a) == norm(b)


def _recorded_settings(meta: Any) -> dict[str, Any]:
    """The ``fdl train`` settings in a checkpoint's metadata (those it has)."""
    if not isinstance(meta, dict):
        return {}
    arch = meta.get("architecture") if isinstance(meta.get("architecture"), dict) else {}
    found = {"data": meta.get("data"), "hidden": arch.get("hidden"),
             "activation": arch.get("activation"), "dropout": arch.get("dropout"),
             "optimizer": meta.get("optimizer"), "lr": meta.get("lr"),
             "batch_size": meta.get("batch_size"), "seed": meta.get("seed"),
             "num_classes": arch.get("outputs"),
             # a checkpoint from before --compute-dtype was trained in float32
             "compute_dtype": meta.get("compute_dtype", "float32" if arch else None)}
    return {k: v for k, v in found.items() if v is not None}


def _resolve_settings(args: argparse.Namespace, recorded: dict[str, Any]) -> dict[str, Any]:
    """Defaults, then the checkpoint's settings, then the command line's; a command-line
    value that contradicts the checkpoint is an error naming both."""
    given = {k: getattr(args, k) for k in _DEFAULTS if getattr(args, k) is not None}
    for name, value in given.items():
        if name not in recorded:
            continue
        old = recorded[name]
        same = _same_data(old, value) if name == "data" else old == value
        if not same:
            raise UsageError(
                f"the checkpoint {args.resume} was trained with {_flag(name)} "
                f"{_show(name, old)}, this run asks for {_show(name, value)}; pass "
                f"{_flag(name)} {_show(name, old)} (or leave it out) to resume it, or drop "
                "--resume to start a new run")
    settings = _DEFAULTS | recorded | given
    if settings["data"] != "digits":
        settings["data"] = os.path.abspath(os.path.expanduser(settings["data"]))
    return settings


def _check_writable(path: str, flag: str, example: str) -> None:
    """Fail now, not after training, if ``path`` cannot be written."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a directory; give a file name such as "
                         f"{os.path.join(path, example)}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        parent = directory
        while not os.path.exists(parent):  # the part of the path that exists
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):  # a file where a directory should be
            raise UsageError(f"{flag} {path}: {parent} is a file, not a directory; "
                             "choose another path")
        raise UsageError(f"{flag} {path}: the directory {directory} does not exist; create "
                         f"it (mkdir -p {directory}) or choose another path")
    try:  # the only reliable test: write a file there (permissions, read-only mounts)
        fd, probe = tempfile.mkstemp(prefix=".fdl-write-test.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write in {directory} "
                         f"({e.strerror or e}); choose a writable directory") from None


def _checkpoint_path(args: argparse.Namespace) -> str:
    """Where the run saves: --checkpoint, else the --resume file (continued in place),
    else the default. An existing file is replaced only when it is the one resumed
    or --overwrite says so."""
    path = args.checkpoint if args.checkpoint is not None else (args.resume or DEFAULT_CHECKPOINT)
    if not path:
        return ""
    _check_writable(path, "--checkpoint", DEFAULT_CHECKPOINT)
    exists = os.path.exists(path)
    resumed = bool(exists and args.resume and os.path.exists(args.resume)
                   and os.path.samefile(path, args.resume))
    if exists and not (resumed or args.overwrite):
        raise UsageError(f"{path} already exists (an earlier run's checkpoint?); pass "
                         f"--resume {path} to continue it, --overwrite to replace it, or "
                         "--checkpoint NEW.npz to keep both")
    return path


def _plot_path(args: argparse.Namespace, checkpoint: str) -> str:
    """The plot file (``.png`` added to a name without a suffix), writable, with
    matplotlib installed: all checked before training."""
    if not args.plot:
        return ""
    root, ext = os.path.splitext(args.plot)
    if ext.lower() not in ("", ".png"):
        raise UsageError(f"--plot {args.plot}: the curves are saved as PNG; give a name "
                         f"ending in .png, such as {root}.png")
    path = args.plot if ext else args.plot + ".png"
    _check_writable(path, "--plot", "curves.png")
    if checkpoint and os.path.abspath(path) == os.path.abspath(checkpoint):
        raise UsageError(f"--plot {path} is also the checkpoint file; give another name")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed: "
                         "pip install 'fdl[plot]' (or leave out --plot)") from None
    return path


def _architecture(settings: dict[str, Any], input_shape: tuple, num_classes: int) -> dict:
    return {"model": "mlp", "input_shape": list(input_shape), "hidden": list(settings["hidden"]),
            "activation": settings["activation"], "dropout": settings["dropout"],
            "outputs": num_classes}


def _banner(dataset: Any, settings: dict[str, Any], target: int) -> list[str]:
    sizes = [" × ".join(map(str, dataset.input_shape)), *map(str, settings["hidden"]),
             str(dataset.num_classes)]
    if not settings["hidden"]:  # no hidden layer: no activation, no dropout
        model = f"MLP {' → '.join(sizes)} (no hidden layer: logistic regression)"
    else:
        model = f"MLP {' → '.join(sizes)}, {settings['activation']}"
        if settings["dropout"]:
            model += f", dropout {settings['dropout']:g}"
    return [f"fdl train: {dataset.name}, {dataset.x_train.shape[0]} training / "
            f"{dataset.x_test.shape[0]} test examples, {dataset.num_classes} classes",
            f"{model}; {settings['optimizer']} lr {settings['lr']:g}; {target} "
            f"epoch{'' if target == 1 else 's'}, batch {settings['batch_size']}"
            + ("" if settings["compute_dtype"] == "float32" else
               f"; {settings['compute_dtype']} compute, float32 weights")]


def _silence_stdout() -> None:
    """After a broken pipe: send later output (and the interpreter's final flush) to
    /dev/null, so the run ends without a BrokenPipeError traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _Console:
    """stdout for ``fdl train``: ``--quiet`` drops all but the result lines, and a
    closed pipe (``fdl train | head -1``) is noted instead of raising."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.closed = quiet, False

    def line(self, text: str, *, result: bool = False, end: str = "\n") -> None:
        if self.closed or (self.quiet and not result):
            return
        try:
            sys.stdout.write(text + end)
            sys.stdout.flush()
        except BrokenPipeError:
            self.closed = True
            _silence_stdout()


def _note(text: str) -> None:
    """One line on stderr (which may be closed too: then nothing)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError, ValueError):
        pass


_INTERRUPTED = threading.Event()  # main() has said "interrupted" (the watchdog need not)


class _Signals:
    """SIGINT and SIGTERM during ``fdl train``.

    Before training (``defer`` false) a signal stops the command at once (there is
    nothing to save yet). During training the first signal is noted and the loop
    stops at the next epoch boundary — an epoch is one compiled program, so that is
    the nearest point where the state is whole — then the checkpoint is saved. A
    second signal stops at once (the last saved checkpoint stays intact).

    "At once" holds even while the main thread waits inside XLA (a long epoch, an
    allocation), where Python's handlers cannot run: a watchdog thread sees each signal
    through the wake-up file descriptor and, when the main thread has not ended the
    process within a second of a signal that should stop it, ends it with one line.
    """

    GRACE = 1.0  # seconds the main thread has to stop by itself

    def __init__(self) -> None:
        self.signum: int | None = None
        self.defer = False
        self._previous: dict[int, Any] = {}
        self._fds: list[int] = []

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
            wake_r, wake_w = os.pipe()
            stop_r, stop_w = os.pipe()
            os.set_blocking(wake_w, False)
            self._fds = [wake_r, wake_w, stop_r, stop_w]
            self._previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
            threading.Thread(target=self._watch, args=(wake_r, stop_r), daemon=True,
                             name="fdl-signal-watchdog").start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._fds:
            signal.set_wakeup_fd(self._previous_fd)
            os.write(self._fds[3], b"x")  # stops the watchdog, which closes the pipes

    def _handle(self, signum: int, frame: Any) -> None:
        if self.defer and self.signum is None:
            self.signum = signum
            return
        raise _Interrupted(signum)

    def _watch(self, wake_r: int, stop_r: int) -> None:
        seen, deadline, last = 0, None, signal.SIGINT
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = select.select([wake_r, stop_r], [], [], timeout)[0]
            if stop_r in ready:
                break
            if not ready:  # the main thread is stuck where Python cannot interrupt it
                if not _INTERRUPTED.is_set():
                    _note("interrupted")
                os._exit(128 + last)
            for signum in os.read(wake_r, 64):
                if signum in (signal.SIGINT, signal.SIGTERM):
                    seen, last = seen + 1, signum
            if deadline is None and (seen >= 2 or not self.defer):
                deadline = time.monotonic() + self.GRACE
        for fd in self._fds:
            os.close(fd)


def _join_hosts(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize``, bounded by --coordinator-timeout and stoppable.

    The C++ client blocks without looking at signals (Ctrl-C is ignored) and, when its
    own timeout expires, aborts with a stack trace. So a watchdog thread (the call
    releases the GIL) ends the process first, with one line: after the timeout
    (exit 1), or at once on SIGINT or SIGTERM (exit 128 + the signal), which it sees
    through the signal wake-up file descriptor."""
    import jax

    timeout, address = args.coordinator_timeout, args.coordinator
    wake_r, wake_w = os.pipe()
    done_r, done_w = os.pipe()
    os.set_blocking(wake_w, False)
    try:
        previous = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: no signals arrive here anyway
        previous = None

    def watch() -> None:
        ready = select.select([wake_r, done_r], [], [], timeout)[0]
        if done_r in ready:
            return
        if wake_r in ready:
            _note("interrupted")
            os._exit(128 + os.read(wake_r, 1)[0])
        _note(f"error: --coordinator {address}: the {args.num_processes} processes did not "
              f"all connect within {timeout:g} s (this is process {args.process_id}); check "
              "that process 0 runs at that address and is reachable from here, that every "
              "process was started, or raise --coordinator-timeout")
        os._exit(1)

    watchdog = threading.Thread(target=watch, name="fdl-coordinator-watchdog", daemon=True)
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=address,
                                   num_processes=args.num_processes, process_id=args.process_id,
                                   initialization_timeout=math.ceil(timeout) + 30)
    finally:
        os.write(done_w, b"x")
        watchdog.join()
        if previous is not None:
            signal.set_wakeup_fd(previous)
        for fd in (wake_r, wake_w, done_r, done_w):
            os.close(fd)


def _start_devices(args: argparse.Namespace) -> int:
    """Join the other hosts (`--coordinator`) and make `--devices` host devices on a CPU;
    returns the number of devices each batch is split across (checked to exist)."""
    import jax

    hosts = (args.coordinator, args.num_processes, args.process_id)
    if any(h is not None for h in hosts):
        if any(h is None for h in hosts):
            raise UsageError("several hosts need all of --coordinator HOST:PORT, "
                             "--num-processes N and --process-id I")
        if args.process_id >= args.num_processes:
            raise UsageError(f"--process-id {args.process_id} must be below --num-processes "
                             f"{args.num_processes}")
        _join_hosts(args)
    wanted = args.devices
    if wanted is not None and wanted > 1 and args.coordinator is None:
        try:  # N host devices for a CPU run (ignored by GPU/TPU backends); possible only
            jax.config.update("jax_num_cpu_devices", wanted)  # before the backend starts
        except RuntimeError:
            pass  # it has started; the count below says what there is
    if wanted is None:
        return jax.device_count() if jax.process_count() > 1 else 1
    available = jax.device_count()
    if wanted > available:
        raise UsageError(f"--devices {wanted} but only {available} "
                         f"{jax.default_backend()} device(s) are available")
    return wanted


@dataclasses.dataclass
class _Run:
    """What `fdl train` resolved before any work (step 1), shared by the later steps."""

    args: argparse.Namespace
    out: _Console
    signals: _Signals
    target: int  # the total number of epochs, counting a resumed checkpoint's
    devices: int  # each batch is split across this many
    meta: dict[str, Any]  # the resumed checkpoint's metadata ({} for a new run)
    settings: dict[str, Any]  # _DEFAULTS, then the checkpoint's, then the command line's
    checkpoint: str  # '' when --checkpoint ''
    plot: str  # '' without --plot
    dataset: Any  # standardised
    started: float  # time.perf_counter() at the start
    key: Any = None  # the run's PRNG key (step 2)
    saved_meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # (step 2)


def _cmd_train(args: argparse.Namespace) -> int:
    """``fdl train`` in three steps, all under the signal handler: resolve the options
    and the resume, build the trainer, run the loop."""
    with _Signals() as signals:
        run = _resolve(args, signals)
        trainer, abstract, ts = _build(run)
        return _loop(run, trainer, abstract, ts)


# -- step 1: everything the command line and the files say, before any work -- #

def _resolve(args: argparse.Namespace, signals: _Signals) -> _Run:
    """Options, the resumed checkpoint's settings, the output paths and the data,
    each checked (a mistake is a :class:`UsageError` now, not after training)."""
    started = time.perf_counter()
    target = DEFAULT_EPOCHS if args.epochs is None else args.epochs
    devices = _start_devices(args)  # before anything touches a device
    from fdl import io

    meta = io.load_metadata(args.resume) if args.resume else None
    meta = meta if isinstance(meta, dict) else {}
    settings = _resolve_settings(args, _recorded_settings(meta))
    done = meta.get("epoch")
    if isinstance(done, int) and done >= target:
        raise _no_epochs_left(args.resume, done, target)
    checkpoint = _checkpoint_path(args)
    if args.save_every and not checkpoint:
        raise UsageError("--save-every needs a checkpoint file; drop --checkpoint '' or "
                         "--save-every")
    plot = _plot_path(args, checkpoint)
    dataset = _dataset(settings, devices)
    recorded = meta.get("architecture")
    shape = recorded.get("input_shape") if isinstance(recorded, dict) else None
    if shape not in (None, list(dataset.input_shape)):
        raise UsageError(
            f"the checkpoint {args.resume} was trained on inputs of shape "
            f"{' × '.join(map(str, shape))}, the data {settings['data']} has "
            f"{' × '.join(map(str, dataset.input_shape))}; pass the --data it was trained on")
    return _Run(args, _Console(args.quiet), signals, target, devices, meta, settings,
                checkpoint, plot, dataset, started)


def _no_epochs_left(resume: str, done: int, target: int) -> UsageError:
    return UsageError(f"the checkpoint {resume} has already trained {done} epochs and "
                      f"--epochs is the total ({target}); pass --epochs N with N > {done} "
                      "to train further")


def _dataset(settings: dict[str, Any], devices: int) -> Any:
    """The data set, standardised on its training split, and the batch size checked
    against it and the device count."""
    from fdl import data

    dataset, _ = data.standardize_dataset(
        data.load(settings["data"], flatten=True, num_classes=settings["num_classes"]))
    n_train, batch = dataset.x_train.shape[0], settings["batch_size"]
    if batch > n_train:
        raise UsageError(f"--batch-size {batch} is larger than the training set "
                         f"({n_train} examples)")
    if batch % devices:
        raise UsageError(f"--batch-size {batch} must be a multiple of --devices {devices} "
                         "(each device takes an equal share of a batch)")
    return dataset


# -- step 2: the trainer, its key, the resumed state -------------------------- #

def _build(run: _Run) -> tuple[Any, Any, Any]:
    """The trainer (one device or data parallel), the shapes of its state (checked to
    fit in memory) and the resumed state (``None`` for a new run)."""
    import jax

    from fdl import layers, losses, optim

    s = run.settings
    model = layers.mlp(s["hidden"], run.dataset.num_classes, activation=s["activation"],
                       dropout=s["dropout"])
    optimizer = optim.get_optimizer(s["optimizer"], learning_rate=s["lr"])
    options = {"loss": losses.softmax_cross_entropy,  # float16: dynamic loss scaling
               "compute_dtype": None if s["compute_dtype"] == "float32" else s["compute_dtype"],
               # Schedule-Free trains at y; it is evaluated at its average x
               "eval_params": optim.schedule_free_eval_params
               if s["optimizer"] == "schedule_free_adamw" else None}
    if run.devices > 1 or run.args.shard_params or jax.process_count() > 1:
        from fdl.parallel import DataParallel, make_mesh

        trainer = DataParallel(model, optimizer, make_mesh(run.devices),
                               shard_params=run.args.shard_params, **options)
    else:
        from fdl.train import Trainer

        trainer = Trainer(model, optimizer, **options)
    run.key = key = jax.random.key(s["seed"], impl=_key_impl(run, trainer))
    abstract = trainer.abstract_state(run.dataset.input_shape, key=key)
    try:
        trainer.check_memory(abstract)
    except MemoryError as e:
        raise UsageError(str(e).removeprefix("Trainer: ").replace(
            "use smaller layers", "pass smaller --hidden sizes")) from None
    run.saved_meta = {
        "architecture": _architecture(s, run.dataset.input_shape, run.dataset.num_classes),
        "optimizer": s["optimizer"], "lr": s["lr"], "data": s["data"],
        "dataset": run.dataset.name, "seed": s["seed"], "batch_size": s["batch_size"],
        "epochs": run.target, "key_impl": str(jax.random.key_impl(key)),
        "compute_dtype": s["compute_dtype"]}
    return trainer, abstract, _resumed_state(run, abstract)


def _key_impl(run: _Run, trainer: Any) -> str:
    """The generator of the run's key: a resumed run keeps its own (when the trainer
    can run it), a new one takes the trainer's (fdl's fast one on one device,
    threefry across several: see fdl.parallel)."""
    impl = run.meta.get("key_impl")
    if impl is None:
        return trainer.default_key_impl
    if not trainer.supports_key_impl(impl):
        raise UsageError(f"the checkpoint {run.args.resume} was trained on one device with "
                         f"the {impl} generator, which JAX cannot split across devices; "
                         "resume it without --devices")
    return impl


def _resumed_state(run: _Run, abstract: Any) -> Any:
    """The --resume checkpoint loaded into the trainer's state (``None`` without
    --resume), refused when it has no epochs left or holds NaN or inf."""
    if not run.args.resume:
        return None
    from fdl import io
    from fdl.train import non_finite_leaves

    try:
        ts = io.load(run.args.resume, like=abstract)
    except ValueError as e:
        if "template" not in str(e):  # not a mismatch: corrupt, missing, … (io says)
            raise
        s = run.settings
        raise UsageError(
            f"the checkpoint {run.args.resume} does not hold the state this run builds (MLP "
            f"with --hidden {_show('hidden', s['hidden'])}, --optimizer {s['optimizer']}): "
            f"{str(e).removeprefix('load: ')}; pass the options it was trained with") from None
    if int(ts.epoch) >= run.target:
        raise _no_epochs_left(run.args.resume, int(ts.epoch), run.target)
    bad = non_finite_leaves(ts)
    if bad:
        name, count, size = bad[0]
        raise UsageError(f"the checkpoint {run.args.resume} holds non-finite values "
                         f"({count} of the {size} in {name}{_more(len(bad) - 1)}): the run "
                         "had diverged, and resuming it would train on NaN; resume an "
                         "earlier checkpoint or start a new run (lower --lr)")
    return ts


def _more(n: int) -> str:
    return f", and {n} more arra{'y' if n == 1 else 'ies'}" if n else ""


# -- step 3: the loop, under the signal handler -------------------------------- #

def _loop(run: _Run, trainer: Any, abstract: Any, ts: Any) -> int:
    """Compile, optionally check the gradients, train to ``run.target`` epochs (a
    signal or a closed stdout stops at an epoch boundary), save, report."""
    import jax

    out = run.out
    for text in _banner(run.dataset, run.settings, run.target):
        out.line(text)
    if trainer.placement():
        out.line(trainer.placement())
    if ts is not None:
        out.line(f"resumed from {run.args.resume} at epoch {int(ts.epoch)}")
    d = run.dataset
    data = jax.device_put((d.x_train, d.y_train, d.x_test, d.y_test))
    ts = _compile(run, trainer, abstract, ts, data)
    if run.args.check_gradients:
        _check_gradients(run, trainer, ts)
    start = int(ts.epoch)
    ts, history = _fit(run, trainer, ts, data)
    if int(ts.epoch) < run.target:  # stopped early: a signal or a closed stdout
        return _stopped(run, ts, history, start)
    final = trainer.evaluate(ts, data[2], data[3])
    ran = int(ts.epoch) - start
    what = f"{ran} epoch{'' if ran == 1 else 's'}" + (f" after the {start} resumed, {int(ts.epoch)} in all"
                              if start else "")
    out.line(f"test accuracy {final['accuracy']:.4f}  test loss {final['loss']:.4f}  "
             f"({what}, {time.perf_counter() - run.started:.1f} s)", result=True)
    if run.checkpoint:
        _save(run, ts, test_accuracy=final["accuracy"])
        out.line(f"checkpoint saved to {run.checkpoint}", result=True)
    if run.plot:
        _plot(history, run.plot)
        out.line(f"plot saved to {run.plot}", result=True)
    return _EXIT_BROKEN_PIPE if out.closed else 0


def _compile(run: _Run, trainer: Any, abstract: Any, ts: Any, data: tuple) -> Any:
    """Compile the epoch and evaluation programs in background threads while the
    initial state is made (a new run); returns the state."""
    x_train, y_train, x_test, y_test = data
    batch = run.settings["batch_size"]
    run.out.line("compiling the training and evaluation programs ...", end="")
    t0 = time.perf_counter()
    try:
        trainer.compile(abstract if ts is None else ts, x_train, y_train, batch_size=batch,
                        x_test=x_test, y_test=y_test, wait=False)
        if ts is None:
            ts = trainer.init(run.key, run.dataset.input_shape)
        trainer.compile(ts, x_train, y_train, batch_size=batch, x_test=x_test,
                        y_test=y_test)  # waits for the background compilation
    except BaseException:
        run.out.line(" failed")  # end the line before the error on stderr
        raise
    run.out.line(f" done ({time.perf_counter() - t0:.1f} s)")
    return ts


def _check_gradients(run: _Run, trainer: Any, ts: Any) -> None:
    """--check-gradients: the model's manual rules vs autodiff on 32 examples, in the
    weights' dtype (float32) whatever --compute-dtype is (float16 rounding is not a
    wrong rule)."""
    from fdl import check

    n = min(32, run.dataset.x_train.shape[0])
    x0, y0 = run.dataset.x_train[:n], run.dataset.y_train[:n]

    def loss(p: Any) -> Any:
        return trainer.loss(trainer.model.apply(p, ts.model_state, x0, train=False)[0], y0)

    report = check.model(loss, ts.params)
    for line in _report_lines(report):
        run.out.line(line, result=True)
    if not report.passed:
        raise Failure("the gradient check failed; not training")


def _report_lines(report: Any, width: int = 100) -> list[str]:
    """An ``fdl.check`` report in at most ``width`` columns (its own table is wider): per
    row the leaf (a long name loses its parenthesis, then its start), the reference, the relative error, the
    worst element, the tolerance and the step; then its notes, the verdict and each
    failure's description, wrapped."""
    import textwrap

    head = ("leaf", "against", "max rel err", "worst at", "rtol", "step", "")
    body = [(r.name, r.against, f"{r.max_rel:.1e}",
             "-" if r.index is None else "(" + ",".join(map(str, r.index)) + ")",
             f"{r.rtol:.0e}", "-" if r.step is None else f"{r.step:.1e}",
             "ok" if r.passed else "FAIL") for r in report.rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    widths[0] = max(4, min(widths[0], width - sum(widths[1:]) - 2 * (len(head) - 1)))

    def cut(name: str) -> str:  # drop a parenthesis first, then the start: keep the leaf key
        if len(name) > widths[0] and " (" in name:
            name = name.split(" (")[0] + " (…)"
        return name if len(name) <= widths[0] else "…" + name[len(name) - widths[0] + 1:]
    fmt = (lambda row: "  ".join(c.ljust(w) for c, w in zip((cut(row[0]), *row[1:]),
                                                              widths)).rstrip())
    wrap = (lambda text, indent="": textwrap.wrap(text, width, subsequent_indent=indent + "  ",
                                                  initial_indent=indent) or [""])
    lines = [*wrap(report.title), fmt(head), fmt(tuple("-" * w for w in widths)),
             *map(fmt, body)]
    for r in report.rows:
        if r.note:
            lines += wrap(f"note: {r.name} vs {r.against}: {r.note}")
    if report.passed:
        return lines + [f"passed: {len(report.rows)} comparisons"]
    failures = report.failures
    lines += wrap(f"FAILED: {report.problem}" if report.problem else
                  f"FAILED: {len(failures)} of {len(report.rows)} comparisons"
                  if report.rows else "FAILED: nothing was compared")
    for r in failures:
        lines += wrap(r.describe(), "  ")
    return lines


def _fit(run: _Run, trainer: Any, ts: Any, data: tuple) -> tuple[Any, Any]:
    """``fdl.train.fit`` to the target epoch, printing each epoch and saving every
    --save-every epochs; a first signal (or a closed stdout) stops it at the next epoch
    boundary."""
    from fdl.train import NonFiniteError, fit

    x_train, y_train, x_test, y_test = data
    width, every = len(str(run.target)), run.args.save_every

    def on_epoch(epoch: int, rec: dict, state: Any) -> None:
        run.out.line(f"epoch {epoch:{width}d}/{run.target}  loss {rec['train_loss']:.4f}  "
                     f"train acc {rec['train_accuracy']:.4f}  test loss "
                     f"{rec['test_loss']:.4f}  test acc {rec['test_accuracy']:.4f}")
        if run.checkpoint and every and epoch % every == 0 and epoch < run.target:
            _save(run, state)

    run.signals.defer = True
    try:
        return fit(trainer, ts, x_train, y_train, epochs=run.target - int(ts.epoch),
                   batch_size=run.settings["batch_size"], x_test=x_test, y_test=y_test,
                   on_epoch=on_epoch, progress=not run.args.quiet,
                   should_stop=lambda: run.signals.signum is not None or run.out.closed)
    except NonFiniteError as e:
        raise UsageError(f"{e} (the last checkpoint written, if any, is unchanged)") from None


def _stopped(run: _Run, ts: Any, history: Any, start: int) -> int:
    """After a signal or a closed stdout: save what was trained, say how to continue,
    exit 128 + the signal (141 for the closed pipe)."""
    signum, epoch, target = run.signals.signum, int(ts.epoch), run.target
    why = f"stopped by {signal.Signals(signum).name}" if signum else "stdout was closed"
    if epoch == start:
        kept = f"; {run.args.resume} is unchanged" if run.args.resume else "; nothing to save"
        _note(f"{why} before epoch {epoch + 1}{kept}")
    elif run.checkpoint:
        _save(run, ts)
        again = "" if target == DEFAULT_EPOCHS else f" --epochs {target}"
        _note(f"{why} after epoch {epoch}/{target}; checkpoint saved to {run.checkpoint} "
              f"(continue with: fdl train --resume {run.checkpoint}{again})")
    else:
        _note(f"{why} after epoch {epoch}/{target}; no checkpoint (--checkpoint '')")
    if run.plot and len(history):
        _plot(history, run.plot)
    return 128 + signum if signum else _EXIT_BROKEN_PIPE


def _save(run: _Run, state: Any, **extra: Any) -> None:
    """Save ``state`` to the run's checkpoint (gathered from the devices; process 0
    writes); a failed save is a :class:`Failure` and leaves the previous file intact."""
    from fdl.parallel import save_state

    try:
        save_state(run.checkpoint, state,
                   metadata=run.saved_meta | {"epoch": int(state.epoch)} | extra)
    except OSError as e:
        raise Failure(f"could not save the checkpoint to {run.checkpoint}: "
                      f"{e.strerror or e}") from None


def _plot(history: Any, path: str) -> None:
    """Loss and accuracy curves to the PNG ``path`` (checked writable before training)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = history["epoch"]
    a.plot(epochs, history["train_loss"], label="train")
    a.plot(epochs, history["test_loss"], label="test")
    a.set(xlabel="epoch", ylabel="loss", yscale="log")
    a.legend()
    b.plot(epochs, history["train_accuracy"], label="train")
    b.plot(epochs, history["test_accuracy"], label="test")
    b.set(xlabel="epoch", ylabel="accuracy")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- #


def _parser() -> argparse.ArgumentParser:
    from fdl.layers.core import ACTIVATIONS
    from fdl.optim import OPTIMIZERS

    p = _Parser(prog="fdl", description="fdl: train models and verify hand-derived "
                "gradients (fdl train, fdl check).")
    p.add_argument("--version", action="version", version=f"fdl {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train", help="train an MLP (default: on the embedded digits)",
        description="Train an MLP and save a checkpoint. Everything is checked before "
        "the first compile. Ctrl-C (or SIGTERM) stops at the next epoch boundary and "
        "saves a checkpoint that --resume continues bitwise. With --resume, options "
        "left out are taken from the checkpoint; options given must match it.",
        epilog="An existing checkpoint file is never silently replaced: resume it, "
        "pass --overwrite, or choose another --checkpoint.")
    t.add_argument("--data", default=None, type=_data, help="'digits' (embedded, the default) or a "
                   "directory of MNIST-format IDX files")
    t.add_argument("--num-classes", type=_number(int, 1, what="an int"), default=None,
                   help="number of classes (default: the largest training label + 1, "
                   "every class present)")
    t.add_argument("--hidden", type=_int_list, default=None,
                   help="hidden layer sizes, comma-separated (default 512; 'none' for none)")
    t.add_argument("--activation", default=None, choices=sorted(ACTIVATIONS),
                   help="hidden activation (default relu)")
    t.add_argument("--dropout", type=_number(float, 0, high=1, high_open=True,
                                             what="a probability"),
                   default=None, help="drop probability (default 0.3)")
    t.add_argument("--optimizer", default=None, choices=sorted(OPTIMIZERS),
                   help="optimizer (default adam)")
    t.add_argument("--lr", type=_number(float, 0, low_open=True, what="a number"),
                   default=None, help="learning rate (default 1e-3)")
    t.add_argument("--compute-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the forward and backward passes; the weights stay float32 "
                        "(float16 scales the loss dynamically; default float32)")
    t.add_argument("--epochs", type=_number(int, 0, high=_INT32_MAX, what="an int"), default=None,
                   help=f"total epochs, counting those of a resumed checkpoint "
                   f"(default {DEFAULT_EPOCHS})")
    t.add_argument("--batch-size", type=_number(int, 1, what="an int"), default=None,
                   help="examples per step (default 64)")
    t.add_argument("--seed", type=_number(int, 0, high=_SEED_MAX, what="an int"), default=None,
                   help="seed of the initialisation, shuffling and dropout (default 0)")
    t.add_argument("--checkpoint", default=None,
                   help=f"where to save the state (default {DEFAULT_CHECKPOINT}, or the "
                   "--resume file; '' to skip)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint file")
    t.add_argument("--save-every", type=_number(int, 1, what="an int"), default=None,
                   metavar="N", help="also save the checkpoint every N epochs")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint")
    t.add_argument("--check-gradients", action="store_true",
                   help="verify manual gradients against autodiff before training")
    t.add_argument("--plot", metavar="FILE.png",
                   help="save loss/accuracy curves as a PNG (needs fdl[plot])")
    t.add_argument("--quiet", action="store_true", help="only the final result")
    t.add_argument("--devices", type=_number(int, 1, what="an int"), default=None, metavar="N",
                   help="split every batch across N devices (data parallel; on a CPU, N "
                   "host devices); the batch size must be a multiple of N")
    t.add_argument("--shard-params", action="store_true",
                   help="with --devices: store parameters and optimizer state split across "
                   "the devices (FSDP style) instead of replicated")
    t.add_argument("--coordinator", metavar="HOST:PORT", type=_address,
                   help="several hosts: the address of process 0 (jax.distributed); give "
                   "--num-processes and --process-id too")
    t.add_argument("--coordinator-timeout", type=_number(float, 0, low_open=True,
                                                         what="a number of seconds"),
                   default=DEFAULT_COORDINATOR_TIMEOUT, metavar="SECONDS",
                   help="several hosts: give up when the other processes have not all "
                   f"connected within this time (default {DEFAULT_COORDINATOR_TIMEOUT:g})")
    t.add_argument("--num-processes", type=_number(int, 1, what="an int"), default=None,
                   help="several hosts: how many processes take part")
    t.add_argument("--process-id", type=_number(int, 0, what="an int"), default=None,
                   help="several hosts: this process's rank, 0 … num-processes − 1")
    t.set_defaults(run=_cmd_train)

    c = sub.add_parser("check", help="verify every registered primitive's hand-written gradient")
    c.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="float64 (x64 on for this run; the default) or float32 (JAX's "
                        "default configuration; finite differences in float32 too)")
    c.add_argument("--seed", type=_number(int, 0, what="an int"), default=0,
                   help="example i of each primitive is drawn with seed + i")
    c.add_argument("only", nargs="*", help="primitive names (default: all)")
    c.set_defaults(run=_cmd_check)
    from fdl.cli_lm import add_parser as add_train_charlm  # fdl train-charlm

    add_train_charlm(sub, sys.modules[__name__])
    return p


def _enable_compilation_cache() -> None:
    """Keep XLA's compiled programs between runs (``$FDL_CACHE_DIR``, default
    ``~/.cache/fdl/xla``; set ``FDL_CACHE_DIR=`` to turn it off): a second
    ``fdl train`` skips most of its compile time."""
    path = os.environ.get("FDL_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "fdl", "xla"))
    if not path:
        return
    import jax

    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return  # a read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fdl")
    except PackageNotFoundError:
        return "(not installed)"


def _one_line(text: str) -> str:
    lines = [t.strip() for t in str(text).strip().splitlines() if t.strip()]
    return (lines[0] + (" …" if len(lines) > 1 else "")) if lines else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fdl`` console script (``argv`` given: no compilation cache).

    Every way out is an exit code and at most one line on stderr: bad input 2,
    failures 1 (an unexpected error names its type and asks for a report; set
    ``FDL_DEBUG=1`` to see the traceback), an interrupt 128 + the signal number.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if argv is None:
            _enable_compilation_cache()
        args = _parser().parse_args(argv)
        return args.run(args)
    except UsageError as e:
        _note(f"error: {_one_line(e)}")
        return e.code
    except (ValueError, FileNotFoundError) as e:
        _note(f"error: {_one_line(e)}")
        return 2
    except KeyboardInterrupt as e:
        _INTERRUPTED.set()
        _note("interrupted")
        code = 128 + getattr(e, "signum", signal.SIGINT)
        if argv is None:  # the console script: don't let shutdown wait for XLA's work
            sys.stdout.flush()
            os._exit(code)
        return code
    except BrokenPipeError:
        _silence_stdout()
        return _EXIT_BROKEN_PIPE
    except Exception as e:
        if os.environ.get("FDL_DEBUG"):
            raise
        if isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e):
            # an allocation failed (an estimate that cannot fit is refused before: exit 2)
            _note(f"error: out of memory: {_one_line(e) or type(e).__name__} (try a "
                  "smaller --batch-size or smaller --hidden sizes)")
            return 1
        _note(f"error: unexpected {type(e).__name__}: {_one_line(e)} (a bug in fdl? rerun "
              "with FDL_DEBUG=1 for the traceback and report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
