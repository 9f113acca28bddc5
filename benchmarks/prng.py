"""Which PRNG implementation should fdl's keys use? A measured comparison on CPU.

Rows, all run through the current fdl (which calls only `jax.random`):

* `jax.random` with each built-in implementation: `threefry2x32` (JAX's default),
  `philox2x32`, `rbg`, `unsafe_rbg`;
* `fused threefry (old fdl.random)`: the hand-written fused Threefry kernels fdl
  used before, loaded from the `--baseline` git revision's `src/fdl/random.py` and
  registered as a key implementation with `jax.extend.random.define_prng_impl`.
  It computes bitwise the same numbers as `threefry2x32`, so its training loss
  must equal that row's (a check that the comparison is like for like).

Columns:
  epoch ms    the digits MLP (64-512-10, relu, dropout 0.3, batch 64, SGD): one
              `fdl.train.Trainer.epoch`, the whole epoch one compiled `lax.scan`
              (shuffle, 22 steps with a dropout mask each); median of `--runs`
              epochs per process after a warm-up epoch
  compile s   lowering and compiling that epoch (`Trainer.compile`)
  mask us     one dropout mask of a 64×512 batch (`fdl.ops.dropout`, the key
              folded from the step as training does): a jitted loop of 200 masks,
              divided by 200; median of `--runs`
  loss        the training loss after the timed epochs (the same seed in every row)

Every generator is measured in the same process, the epochs and masks of the rows
interleaved, so a busy moment on a shared machine hits every row; each row's key
type gives it its own programs, and the rows take turns at compiling first.
`--repeats` fresh processes give the medians in the table.

Run:  .venv/bin/python benchmarks/prng.py [--runs 9] [--repeats 3] [--baseline REV]
(`FDL_SRC=path/to/src` measures another checkout's fdl.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

IMPLS = ("threefry2x32", "philox2x32", "rbg", "unsafe_rbg")
FUSED = "fused threefry (old fdl.random)"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASKS = 200


def _register_fused(path: str):
    """The old fused Threefry (`fdl.random` at the baseline) as a key implementation."""
    import jax
    import jax.extend.random as jxr
    import jax.numpy as jnp

    spec = importlib.util.spec_from_file_location("old_fdl_random", path)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)

    def seed(s):
        return jax.random.key_data(jax.random.key(s, impl="threefry2x32"))

    def split(key, shape):
        return old.split(key, math.prod(shape)).reshape(tuple(shape) + (2,))

    def fold_in(key, data):
        return old.fold_in(key, data)

    def random_bits(key, bit_width, shape):
        if bit_width != 32:
            typed = jax.random.wrap_key_data(key, impl="threefry2x32")
            return jax.random.bits(typed, shape, jnp.dtype(f"uint{bit_width}"))
        return old.bits(key, shape)

    return jxr.define_prng_impl(key_shape=(2,), seed=seed, split=split,
                                random_bits=random_bits, fold_in=fold_in,
                                name="fused_threefry", tag="fft")


def _median_time(fn, runs: int, scale: float) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(scale * (time.perf_counter() - t0))
    return statistics.median(out)


def worker(runs: int, baseline_random: str, rotate: int) -> dict:
    """Measure every generator in this process (see the module docstring), starting
    with the `rotate`-th (the first compile of a process pays one-off costs)."""
    import jax
    import jax.numpy as jnp

    import fdl

    impls = {name: name for name in IMPLS}
    impls[FUSED] = _register_fused(baseline_random)
    names = list(impls)
    impls = {n: impls[n] for n in names[rotate % len(names):] + names[:rotate % len(names)]}
    ds, _ = fdl.data.standardize_dataset(fdl.data.load("digits", flatten=True))
    x, y = jax.device_put((ds.x_train, ds.y_train))
    xm = jnp.ones((64, 512), jnp.float32)
    res, runners = {}, {}
    for name, impl in impls.items():
        key = jax.random.key(0, impl=impl)
        model = fdl.layers.mlp([512], ds.num_classes, activation="relu", dropout=0.3)
        trainer = fdl.train.Trainer(model, fdl.optim.sgd(0.1),
                                    loss=fdl.losses.softmax_cross_entropy)
        ts = trainer.init(key, ds.input_shape)
        jax.block_until_ready(ts)
        t0 = time.perf_counter()
        trainer.compile(ts, x, y, batch_size=64)
        res[name] = {"compile_s": time.perf_counter() - t0}
        ts, _ = trainer.epoch(ts, x, y, batch_size=64)  # warm-up

        @jax.jit
        def masks(key):
            def body(i, acc):  # every mask element feeds the sum, so all are computed
                return acc + fdl.ops.dropout(xm, jax.random.fold_in(key, i), 0.3).sum(axis=0)
            return jax.lax.fori_loop(0, MASKS, body, jnp.zeros((512,), jnp.float32))

        masks(key).block_until_ready()
        runners[name] = {"trainer": trainer, "ts": ts, "masks": masks, "key": key}

    def epoch(r):
        r["ts"], r["m"] = r["trainer"].epoch(r["ts"], x, y, batch_size=64)
        jax.block_until_ready(r["ts"])

    times = {name: {"epoch_ms": [], "mask_us": []} for name in impls}
    for _ in range(runs):  # interleaved
        for name, r in runners.items():
            times[name]["epoch_ms"].append(_median_time(lambda: epoch(r), 1, 1e3))
            times[name]["mask_us"].append(
                _median_time(lambda: r["masks"](r["key"]).block_until_ready(), 1, 1e6 / MASKS))
    for name, r in runners.items():
        res[name].update({k: statistics.median(v) for k, v in times[name].items()})
        res[name]["loss"] = float(r["m"]["loss"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes; medians over them")
    ap.add_argument("--baseline", default="c8ec80d",
                    help="git revision whose src/fdl/random.py holds the fused Threefry")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--rotate", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.runs, args.worker, args.rotate)))
        return

    samples: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, "old_random.py")
        with open(old, "wb") as f:
            f.write(subprocess.run(["git", "show", f"{args.baseline}:src/fdl/random.py"],
                                   cwd=ROOT, check=True, capture_output=True).stdout)
        src = os.environ.get("FDL_SRC", os.path.join(ROOT, "src"))  # the fdl to measure
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=src)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        for i in range(args.repeats):
            cmd = [sys.executable, __file__, "--worker", old, "--runs", str(args.runs),
                   "--rotate", str(i)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True,
                                 cwd=ROOT)
            for name, r in json.loads(out.stdout.strip().splitlines()[-1]).items():
                samples.setdefault(name, []).append(r)

    import jax
    print(f"# {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"baseline {args.baseline}, runs {args.runs}, repeats {args.repeats}")
    print("| generator | epoch ms | compile s | mask µs | loss |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, rs in samples.items():
        med = {c: statistics.median(r[c] for r in rs) for c in rs[0]}
        label = name if name == FUSED else f"jax.random {name}"
        print(f"| {label} | {med['epoch_ms']:.1f} | {med['compile_s']:.2f} "
              f"| {med['mask_us']:.1f} | {med['loss']:.4f} |")


if __name__ == "__main__":
    main()
