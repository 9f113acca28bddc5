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
import math
import os
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


def _cmd_check(args: argparse.Namespace) -> int:
    """Check every registered primitive's examples; one line per example as it
    finishes: the backward (vs autodiff and finite differences), the tangent rule
    (likewise) and the adjointness of the two hand rules. float64 turns x64 on for
    the run; float32 runs in JAX's default configuration (x64 off), finite
    differences included. Each primitive's examples, all three checks, are one
    compiled program; two primitives compile at a time. A primitive without a tangent rule
    is checked in reverse mode only, and its row says so."""
    from concurrent.futures import ThreadPoolExecutor

    import jax

    from fdl.check import examples
    from fdl.primitive import registry

    prims = registry()
    if args.only:
        unknown = sorted(set(args.only) - set(prims))
        if unknown:
            raise UsageError(f"unknown primitive(s) {unknown}; registered: {sorted(prims)}")
        prims = {k: v for k, v in prims.items() if k in args.only}
    total = sum(len(p.examples) for p in prims.values())
    width = max((len(n) for n in prims), default=0)
    x64 = args.dtype == "float64"
    if jax.config.jax_compilation_cache_dir:  # the CLI's cache: keep every check program
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    def run(p):
        with jax.enable_x64(x64):
            return examples(p, dtype=args.dtype, seed=args.seed)

    def forward_note(tangent, adjoint) -> str:
        if tangent is None:
            return "; no tangent rule"
        row = adjoint.rows[0] if adjoint.rows else None  # atol = rtol × the sums' scale
        gap = row.max_abs * row.rtol / max(row.atol, 1e-300) if row else float("nan")
        return (f"; tangent {tangent.worst('autodiff'):.0e}, "
                f"{tangent.worst('finite differences'):.0e}; adjoint gap {gap:.0e}")

    print(f"fdl check: {len(prims)} primitives, {total} examples, {args.dtype} "
          f"(finite differences in {args.dtype})", flush=True)
    done, failed = 0, []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, reports in zip(prims, pool.map(run, prims.values())):
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
                             "batch_size": 64, "seed": 0, "num_classes": None}
DEFAULT_CHECKPOINT = "fdl-checkpoint.npz"
DEFAULT_EPOCHS = 40
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
    if text.strip() in ("", "none"):
        return []
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
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    span = f"in {lo}{low:g}, {high:g}{hi}" if high is not None else \
        (f"> {low:g}" if low_open else f"≥ {low:g}")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__} {span}, "
                                             f"got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if high is not None:
            ok = ok and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__} {span}, "
                                             f"got {text!r}")
        return value
    return parse


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
             "num_classes": arch.get("outputs")}
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
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise UsageError(f"{flag} {path}: the directory {directory} {what}; create it "
                         f"(mkdir -p {directory}) or choose another path")
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
    model = f"MLP {' → '.join(sizes)}, {settings['activation']}"
    if settings["dropout"] and settings["hidden"]:
        model += f", dropout {settings['dropout']:g}"
    return [f"fdl train: {dataset.name}, {dataset.x_train.shape[0]} training / "
            f"{dataset.x_test.shape[0]} test examples, {dataset.num_classes} classes",
            f"{model}; {settings['optimizer']} lr {settings['lr']:g}; {target} "
            f"epoch{'' if target == 1 else 's'}, batch {settings['batch_size']}"]


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


class _Signals:
    """SIGINT and SIGTERM during ``fdl train``.

    Before training (``defer`` false) a signal stops the command at once (there is
    nothing to save yet). During training the first signal is noted and the loop
    stops at the next epoch boundary — an epoch is one compiled program, so that is
    the nearest point where the state is whole — then the checkpoint is saved. A
    second signal stops at once (the last saved checkpoint stays intact).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.defer = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.defer and self.signum is None:
            self.signum = signum
            return
        raise _Interrupted(signum)


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
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes, process_id=args.process_id)
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


def _cmd_train(args: argparse.Namespace) -> int:
    with _Signals() as signals:
        return _train(args, signals)


def _train(args: argparse.Namespace, signals: _Signals) -> int:
    t_start = time.perf_counter()
    out = _Console(args.quiet)
    target = DEFAULT_EPOCHS if args.epochs is None else args.epochs

    # 1. everything the command line and the files say, checked before any work
    import jax

    devices = _start_devices(args)  # before anything touches a device

    from fdl import check, data, io, layers, losses, optim
    from fdl import random as fdl_random
    from fdl.train import NonFiniteError, Trainer, fit

    meta: Any = io.load_metadata(args.resume) if args.resume else None
    settings = _resolve_settings(args, _recorded_settings(meta))
    done_before = meta.get("epoch") if isinstance(meta, dict) else None
    if isinstance(done_before, int) and done_before >= target:
        raise UsageError(
            f"the checkpoint {args.resume} has already trained {done_before} epochs and "
            f"--epochs is the total ({target}); pass --epochs N with N > {done_before} to "
            "train further")
    checkpoint = _checkpoint_path(args)
    if args.save_every and not checkpoint:
        raise UsageError("--save-every needs a checkpoint file; drop --checkpoint '' or "
                         "--save-every")
    plot = _plot_path(args, checkpoint)
    dataset, _ = data.standardize_dataset(
        data.load(settings["data"], flatten=True, num_classes=settings["num_classes"]))
    n_train = dataset.x_train.shape[0]
    if settings["batch_size"] > n_train:
        raise UsageError(f"--batch-size {settings['batch_size']} is larger than the training "
                         f"set ({n_train} examples)")
    if settings["batch_size"] % devices:
        raise UsageError(f"--batch-size {settings['batch_size']} must be a multiple of "
                         f"--devices {devices} (each device takes an equal share of a batch)")
    arch = _architecture(settings, dataset.input_shape, dataset.num_classes)
    recorded_arch = meta.get("architecture") if isinstance(meta, dict) else None
    if isinstance(recorded_arch, dict) and recorded_arch.get("input_shape") not in (
            None, arch["input_shape"]):
        raise UsageError(
            f"the checkpoint {args.resume} was trained on inputs of shape "
            f"{' × '.join(map(str, recorded_arch['input_shape']))}, the data "
            f"{settings['data']} has {' × '.join(map(str, dataset.input_shape))}; pass "
            "the --data it was trained on")
    model = layers.mlp(settings["hidden"], dataset.num_classes,
                       activation=settings["activation"], dropout=settings["dropout"])
    optimizer = optim.get_optimizer(settings["optimizer"], learning_rate=settings["lr"])
    if devices > 1 or args.shard_params or jax.process_count() > 1:
        from fdl.parallel import DataParallel, make_mesh

        trainer = DataParallel(model, optimizer, make_mesh(devices),
                               shard_params=args.shard_params,
                               loss=losses.softmax_cross_entropy)
    else:
        trainer = Trainer(model, optimizer, loss=losses.softmax_cross_entropy)
    # fdl's seed → key: its fast generator on one device; threefry across several
    # (JAX cannot partition philox, see fdl.parallel)
    # (JAX cannot partition philox, see fdl.parallel); a resumed run keeps its generator
    impl = meta.get("key_impl") if isinstance(meta, dict) else None
    if impl is None:
        impl = fdl_random.IMPL if type(trainer) is Trainer else "threefry2x32"
    elif impl == "philox2x32" and type(trainer) is not Trainer:
        raise UsageError(f"the checkpoint {args.resume} was trained on one device with the "
                         "philox2x32 generator, which JAX cannot split across devices; "
                         "resume it without --devices")
    key = jax.random.key(settings["seed"], impl=impl)
    abstract = trainer.abstract_state(dataset.input_shape, key=key)
    ts = io.load(args.resume, like=abstract) if args.resume else None
    if ts is not None and int(ts.epoch) >= target:
        raise UsageError(f"the checkpoint {args.resume} has already trained {int(ts.epoch)} "
                         f"epochs and --epochs is the total ({target}); pass --epochs N "
                         f"with N > {int(ts.epoch)} to train further")
    meta_out = {"architecture": arch, "optimizer": settings["optimizer"],
                "lr": settings["lr"], "data": settings["data"], "dataset": dataset.name,
                "seed": settings["seed"], "batch_size": settings["batch_size"],
                "epochs": target, "key_impl": str(jax.random.key_impl(key))}

    # 2. the run
    for text in _banner(dataset, settings, target):
        out.line(text)
    if isinstance(trainer, Trainer) and type(trainer) is not Trainer:
        out.line(f"data parallel: each batch split across {devices} "
                 f"{jax.default_backend()} devices"
                 + (", parameters and optimizer state sharded" if args.shard_params else ""))
    if ts is not None:
        out.line(f"resumed from {args.resume} at epoch {int(ts.epoch)}")
    x_train, y_train, x_test, y_test = jax.device_put(
        (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test))
    out.line("compiling the training and evaluation programs ...", end="")
    t_compile = time.perf_counter()
    # the epoch and evaluation programs compile in background threads while init
    # compiles here
    trainer.compile(abstract if ts is None else ts, x_train, y_train,
                    batch_size=settings["batch_size"], x_test=x_test, y_test=y_test,
                    wait=False)
    if ts is None:
        ts = trainer.init(key, dataset.input_shape)
    trainer.compile(ts, x_train, y_train, batch_size=settings["batch_size"], x_test=x_test,
                    y_test=y_test)  # waits for the background compilation
    out.line(f" done ({time.perf_counter() - t_compile:.1f} s)")

    if args.check_gradients:
        x0, y0 = dataset.x_train[: min(32, n_train)], dataset.y_train[: min(32, n_train)]
        report = check.model(lambda p: trainer.loss_fn(p, ts.model_state, x0, y0, train=False)[0],
                             ts.params)
        out.line(str(report), result=True)
        if not report.passed:
            raise Failure("the gradient check failed; not training")

    start_epoch = int(ts.epoch)

    def save(state: Any, **extra: Any) -> None:
        from fdl.parallel import save_state  # gathers a sharded state; process 0 writes

        try:
            save_state(checkpoint, state, metadata=meta_out | {"epoch": int(state.epoch)} | extra)
        except OSError as e:
            raise Failure(f"could not save the checkpoint to {checkpoint}: "
                          f"{e.strerror or e}") from None

    width = len(str(target))

    def on_epoch(epoch: int, rec: dict, state: Any) -> None:
        out.line(f"epoch {epoch:{width}d}/{target}  loss {rec['train_loss']:.4f}  "
                 f"train acc {rec['train_accuracy']:.4f}  test loss {rec['test_loss']:.4f}  "
                 f"test acc {rec['test_accuracy']:.4f}")
        if checkpoint and args.save_every and epoch % args.save_every == 0 and epoch < target:
            save(state)

    signals.defer = True
    try:
        ts, history = fit(trainer, ts, x_train, y_train, epochs=target - start_epoch,
                          batch_size=settings["batch_size"], x_test=x_test, y_test=y_test,
                          on_epoch=on_epoch, progress=not args.quiet,
                          should_stop=lambda: signals.signum is not None or out.closed)
    except NonFiniteError as e:
        raise UsageError(f"{e} (the last checkpoint written, if any, is unchanged)") from None

    epoch = int(ts.epoch)
    if epoch < target:  # stopped early: a signal or a closed stdout
        why = (f"stopped by {signal.Signals(signals.signum).name}" if signals.signum
               else "stdout was closed")
        if epoch == start_epoch:
            kept = f"; {args.resume} is unchanged" if args.resume else "; nothing to save"
            _note(f"{why} before epoch {epoch + 1}{kept}")
        elif checkpoint:
            save(ts)
            again = "" if target == DEFAULT_EPOCHS else f" --epochs {target}"
            _note(f"{why} after epoch {epoch}/{target}; checkpoint saved to {checkpoint} "
                  f"(continue with: fdl train --resume {checkpoint}{again})")
        else:
            _note(f"{why} after epoch {epoch}/{target}; no checkpoint (--checkpoint '')")
        if plot and len(history):
            _plot(history, plot)
        return 128 + signals.signum if signals.signum else _EXIT_BROKEN_PIPE

    final = trainer.evaluate(ts, x_test, y_test)
    out.line(f"test accuracy {final['accuracy']:.4f}  test loss {final['loss']:.4f}  "
             f"({epoch} epochs, {time.perf_counter() - t_start:.1f} s)", result=True)
    if checkpoint:
        save(ts, test_accuracy=final["accuracy"])
        out.line(f"checkpoint saved to {checkpoint}", result=True)
    if plot:
        _plot(history, plot)
        out.line(f"plot saved to {plot}", result=True)
    return _EXIT_BROKEN_PIPE if out.closed else 0


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
    t.add_argument("--data", default=None, help="'digits' (embedded, the default) or a "
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
    t.add_argument("--epochs", type=_number(int, 0, what="an int"), default=None,
                   help=f"total epochs, counting those of a resumed checkpoint "
                   f"(default {DEFAULT_EPOCHS})")
    t.add_argument("--batch-size", type=_number(int, 1, what="an int"), default=None,
                   help="examples per step (default 64)")
    t.add_argument("--seed", type=_number(int, 0, what="an int"), default=None,
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
    t.add_argument("--coordinator", metavar="HOST:PORT",
                   help="several hosts: the address of process 0 (jax.distributed); give "
                   "--num-processes and --process-id too")
    t.add_argument("--num-processes", type=_number(int, 1, what="an int"), default=None,
                   help="several hosts: how many processes take part")
    t.add_argument("--process-id", type=_number(int, 0, what="an int"), default=None,
                   help="several hosts: this process's rank, 0 … num-processes − 1")
    t.set_defaults(run=_cmd_train)

    c = sub.add_parser("check", help="verify every registered primitive's hand-written gradient")
    c.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="float64 (x64 on for this run; the default) or float32 (JAX's "
                        "default configuration; finite differences in float32 too)")
    c.add_argument("--seed", type=int, default=0,
                   help="example i of each primitive is drawn with seed + i")
    c.add_argument("only", nargs="*", help="primitive names (default: all)")
    c.set_defaults(run=_cmd_check)
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
        _note("interrupted")
        return 128 + getattr(e, "signum", signal.SIGINT)
    except BrokenPipeError:
        _silence_stdout()
        return _EXIT_BROKEN_PIPE
    except Exception as e:
        if os.environ.get("FDL_DEBUG"):
            raise
        _note(f"error: unexpected {type(e).__name__}: {_one_line(e)} (a bug in fdl? rerun "
              "with FDL_DEBUG=1 for the traceback and report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
