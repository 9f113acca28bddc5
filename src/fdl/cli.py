"""The ``fdl`` command: ``fdl train``, ``fdl check``.

Exit codes: 0 success, 1 a check failed (``fdl check``), 2 bad input (a one-line
``error:`` message naming the problem; no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one ``error:`` line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- #
# fdl check
# --------------------------------------------------------------------------- #


def _cmd_check(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from fdl import check
    from fdl.primitive import registry

    prims = registry()
    if args.only:
        unknown = sorted(set(args.only) - set(prims))
        if unknown:
            raise UsageError(f"unknown primitive(s) {unknown}; registered: {sorted(prims)}")
        prims = {k: v for k, v in prims.items() if k in args.only}
    dtype = jnp.dtype(args.dtype)
    rows, failed_reports = [], []
    for name, p in prims.items():
        for i, example in enumerate(p.examples):
            fargs, kwargs = example.sample(jax.random.key(args.seed + i), dtype)
            report = check.vjp(p, *fargs, jit=True, **kwargs)
            shapes = " ".join("x".join(map(str, a.shape)) or "()"
                              for a in fargs if hasattr(a, "shape") and a.ndim >= 0)
            rows.append((name, shapes, report.worst("autodiff"),
                         report.worst("finite differences"), report.passed))
            if not report.passed:
                failed_reports.append(report)
    head = ("primitive", "shapes", "rel err vs autodiff", "rel err vs finite diff", "")
    body = [(n, s, f"{a:.1e}", f"{f:.1e}", "ok" if ok else "FAIL") for n, s, a, f, ok in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *body]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    n_fail = sum(not r[-1] for r in rows)
    print(f"\n{len(prims)} primitives, {len(rows)} examples, {args.dtype}: "
          + ("all passed" if not n_fail else f"{n_fail} FAILED"))
    for report in failed_reports:
        print("\n" + str(report))
    return 1 if n_fail else 0


# --------------------------------------------------------------------------- #
# fdl train
# --------------------------------------------------------------------------- #


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


def _architecture(args: argparse.Namespace, input_shape: tuple, num_classes: int) -> dict:
    return {"model": "mlp", "input_shape": list(input_shape), "hidden": list(args.hidden),
            "activation": args.activation, "dropout": args.dropout, "outputs": num_classes}


def _cmd_train(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import jax

    from fdl import check, data, io, layers, losses, optim
    from fdl import random as fdl_random
    from fdl.train import NonFiniteError, Trainer, fit

    if args.epochs < 0:
        raise UsageError(f"--epochs must be ≥ 0, got {args.epochs}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    dataset, _ = data.standardize_dataset(data.load(args.data, flatten=True))
    n_train = dataset.x_train.shape[0]
    if args.batch_size > n_train:
        raise UsageError(
            f"--batch-size {args.batch_size} is larger than the training set ({n_train} examples)")
    model = layers.mlp(args.hidden, dataset.num_classes, activation=args.activation,
                       dropout=args.dropout)
    optimizer = optim.get_optimizer(args.optimizer, learning_rate=args.lr)
    trainer = Trainer(model, optimizer, loss=losses.softmax_cross_entropy)
    # start-up: the epoch and evaluation programs compile in background threads while
    # init compiles here (fit waits for them)
    x_train, y_train, x_test, y_test = jax.device_put(
        (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test))
    trainer.compile(trainer.abstract_state(dataset.input_shape), x_train, y_train,
                    batch_size=args.batch_size, x_test=x_test, y_test=y_test, wait=False)
    ts = trainer.init(fdl_random.key(args.seed), dataset.input_shape)
    arch = _architecture(args, dataset.input_shape, dataset.num_classes)
    meta = {"architecture": arch, "optimizer": args.optimizer, "lr": args.lr,
            "data": dataset.name, "seed": args.seed, "batch_size": args.batch_size}

    if args.resume:
        saved = io.load_metadata(args.resume) or {}
        if saved.get("architecture") not in (None, arch):
            raise UsageError(
                f"checkpoint {args.resume} was saved for a different model "
                f"({saved.get('architecture')}); this run builds {arch}")
        ts = io.load(args.resume, like=ts)
        print(f"resumed from {args.resume} at epoch {int(ts.epoch)}")

    say = (lambda *a: None) if args.quiet else print
    say(f"fdl train: {dataset.name} ({n_train} train / {dataset.x_test.shape[0]} test), "
        f"mlp {dataset.input_shape}->{args.hidden or []}->{dataset.num_classes} "
        f"{args.activation}, {args.optimizer} lr {args.lr}, batch {args.batch_size}")

    if args.check_gradients:
        x0, y0 = dataset.x_train[: min(32, n_train)], dataset.y_train[: min(32, n_train)]
        report = check.model(lambda p: trainer.loss_fn(p, ts.model_state, x0, y0, train=False)[0],
                              ts.params)
        print(report)
        if not report.passed:
            print("error: gradient check failed; not training", file=sys.stderr)
            return 1

    checkpoint = args.checkpoint
    target = args.epochs
    remaining = max(0, target - int(ts.epoch))

    def on_epoch(epoch: int, rec: dict, state) -> None:
        say(f"epoch {epoch:3d}/{target}  loss {rec['train_loss']:.4f}  "
            f"train acc {rec['train_accuracy']:.4f}  test loss {rec['test_loss']:.4f}  "
            f"test acc {rec['test_accuracy']:.4f}")

    try:
        ts, history = fit(trainer, ts, x_train, y_train, epochs=remaining,
                          batch_size=args.batch_size, x_test=x_test, y_test=y_test,
                          on_epoch=on_epoch, progress=not args.quiet)
    except NonFiniteError as e:
        raise UsageError(str(e)) from None
    final = trainer.evaluate(ts, x_test, y_test)
    if checkpoint:
        io.save(checkpoint, ts, metadata=meta | {"epoch": int(ts.epoch),
                                                 "test_accuracy": final["accuracy"]})
    print(f"test accuracy {final['accuracy']:.4f}  test loss {final['loss']:.4f}  "
          f"({int(ts.epoch)} epochs, {time.perf_counter() - t_start:.1f} s)")
    if checkpoint:
        print(f"checkpoint saved to {checkpoint}")
    if args.plot:
        _plot(history, args.plot)
        print(f"plot saved to {args.plot}")
    return 0


def _plot(history, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'fdl[plot]'") from None
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
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- #


def _parser() -> argparse.ArgumentParser:
    from fdl.layers.core import ACTIVATIONS
    from fdl.optim import OPTIMIZERS

    p = _Parser(prog="fdl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train an MLP (default: on the embedded digits)")
    t.add_argument("--data", default="digits",
                   help="'digits' (embedded) or a directory of MNIST-format IDX files")
    t.add_argument("--hidden", type=_int_list, default=[512],
                   help="hidden layer sizes, comma-separated (default 512; 'none' for none)")
    t.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS))
    t.add_argument("--dropout", type=float, default=0.3, help="drop probability (default 0.3)")
    t.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    t.add_argument("--epochs", type=int, default=40, help="total epochs (default 40)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", default="fdl-checkpoint.npz",
                   help="where to save the final state ('' to skip)")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint")
    t.add_argument("--check-gradients", action="store_true",
                   help="verify manual gradients against autodiff before training")
    t.add_argument("--plot", metavar="FILE", help="save loss/accuracy curves as a PNG")
    t.add_argument("--quiet", action="store_true", help="only the final result")
    t.set_defaults(run=_cmd_train)

    c = sub.add_parser("check", help="verify every registered primitive's hand-written gradient")
    c.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    c.add_argument("--seed", type=int, default=0)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fdl`` console script (``argv`` given: no compilation cache)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv is None:
        _enable_compilation_cache()
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
