"""Data-parallel scaling: throughput on N devices / (N × throughput on one device).

    python benchmarks/scaling.py                       # CPU: host devices 1, 2 (this machine's cores)
    python benchmarks/scaling.py --devices 1,2,4,8 --width 4096 --batch 1024   # a GPU node

Each configuration trains the same MLP (`--depth` hidden layers of `--width`, ReLU,
Adam) for one compiled epoch of `--steps` steps on synthetic data with
`fdl.parallel.DataParallel`, after a warm-up epoch; the figure is the median of
`--rounds` interleaved rounds. The global batch grows with N (weak scaling: `--batch`
examples per device), which is how data parallelism is used. `--shard-params` measures
the FSDP layout instead of replicated state.

On a CPU, `N` host devices (`XLA_FLAGS=--xla_force_host_platform_device_count`) share
the machine's cores, so efficiency there measures overhead, not speed-up; run it on a
multi-GPU node for the real figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default=None, help="comma-separated device counts (default 1,2)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--batch", type=int, default=128, help="examples per device per step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shard-params", action="store_true")
    args = p.parse_args(argv)
    counts = [int(c) for c in (args.devices or "1,2").split(",")]
    if "jax" not in sys.modules and not os.environ.get("XLA_FLAGS"):
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(counts)}"

    import jax
    import numpy as np

    from fdl import layers as L
    from fdl import optim
    from fdl.parallel import DataParallel, make_mesh

    layers = []
    for _ in range(args.depth):
        layers += [L.Dense(args.width), L.Relu()]
    model = L.serial(*layers, L.Dense(10))
    rng = np.random.default_rng(0)
    setups = {}
    for n in counts:
        trainer = DataParallel(model, optim.adam(1e-3), make_mesh(n), shard_params=args.shard_params)
        batch = args.batch * n
        x = rng.standard_normal((batch * args.steps, args.width), np.float32)
        y = rng.integers(0, 10, batch * args.steps).astype(np.int32)
        x, y = trainer.place_data(x), trainer.place_data(y)
        ts = trainer.init(jax.random.key(0), (args.width,))
        ts, _ = trainer.epoch(ts, x, y, batch_size=batch)  # compile and warm up
        setups[n] = [trainer, ts, x, y, batch, []]
    for _ in range(args.rounds):
        for n, s in setups.items():
            trainer, ts, x, y, batch, times = s
            t0 = time.perf_counter()
            ts, _ = trainer.epoch(ts, x, y, batch_size=batch)
            jax.block_until_ready(ts)
            times.append(time.perf_counter() - t0)
            s[1] = ts
    base = None
    result = {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
              "rows": []}
    print(f"{jax.default_backend()} ({jax.devices()[0].device_kind}); MLP {args.depth}×{args.width}, "
          f"{args.batch} examples per device per step, {'FSDP' if args.shard_params else 'replicated'}")
    print(f"{'devices':>7}  {'examples/s':>12}  {'efficiency':>10}")
    for n, (_, _, _, _, batch, times) in setups.items():
        throughput = batch * args.steps / statistics.median(times)
        base = base or throughput / n
        eff = throughput / (n * base)
        result["rows"].append({"devices": n, "examples_per_s": throughput, "efficiency": eff})
        print(f"{n:>7}  {throughput:>12.0f}  {eff:>10.2f}")
    return result


if __name__ == "__main__":
    main()
