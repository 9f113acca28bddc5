"""The kernels one step of the scanned digits epoch launches, counted from XLA's HLO.

The `fdl train` default model (the same trainer as `bench.py`'s `digits` section:
MLP 64-512-10, ReLU, dropout 0.3, Adam 1e-3, batch 64, key from `fdl.random.key(0)`)
has its epoch compiled once, ahead of time:

    trainer._epoch.lower(ts, x, y, batch_size=64).compile().as_text()

and the body of the outermost `while` loop (the `lax.scan` over the batches, one
iteration per step) is read off the optimised HLO. Every instruction of that body that
does work is counted by opcode — fusions, dots, copies, conditionals, … — leaving out
parameters, tuples, get-tuple-element, constants and bitcasts (they launch nothing). A
`conditional` (dropout's mask on the CPU, drawn once inside one) counts as one kernel: the
kernels of the branch it runs are timed inside its own event. A `dot` here is a product XLA
runs through Eigen; the products it hands to YNNPACK are `ynn_fusion`s.
`harness.loop_body_kernels` does the counting; `bench.py --only digits` reports the
same figure.

`--profile` also runs epochs under `jax.profiler.trace` and sums, per kernel of the
loop body, the time XLA's CPU runtime records for it (`jax.profiler.ProfileData`):
where one step's time goes. Those times are wall-clock on a shared machine: read
them as shares of the step, in one run.

    python benchmarks/digits_kernels.py            # the counts
    python benchmarks/digits_kernels.py --hlo      # and the loop body's HLO
    python benchmarks/digits_kernels.py --profile  # and each kernel's time per step
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile

import jax

import fdl

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from harness import loop_body_kernels
from sections import digits_trainer


def loop_body(hlo: str) -> str:
    """The text of the outermost `while` loop's body computation ('' without one)."""
    m = re.search(r"\swhile\(.*?body=%?([\w.\-]+)", hlo)
    if m is None:
        return ""
    block = re.search(r"^%?" + re.escape(m.group(1)) + r" .*?\{\n(.*?)^\}", hlo, re.MULTILINE | re.DOTALL)
    return "" if block is None else block.group(1)


def kernel_times(trainer, ts, x, y, batch_size: int, epochs: int) -> tuple[dict, int]:
    """`{kernel name: seconds per step}` over `epochs` profiled epochs (after two
    unprofiled ones), and the number of steps they ran."""
    for _ in range(2):
        ts, _ = trainer.epoch(ts, x, y, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out):
            for _ in range(epochs):
                ts, _ = trainer.epoch(ts, x, y, batch_size=batch_size)
        path = max(glob.glob(out + "/**/*.xplane.pb", recursive=True))
        data = jax.profiler.ProfileData.from_file(path)
        total: collections.Counter = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                if line.name == "python":
                    continue
                for event in line.events:
                    total[event.name] += event.duration_ns * 1e-9
    steps = epochs * (int(x.shape[0]) // batch_size)
    return {name: t / steps for name, t in total.items()}, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hlo", action="store_true", help="print the loop body's HLO too")
    parser.add_argument("--profile", action="store_true",
                        help="time each kernel of the loop body under jax.profiler")
    parser.add_argument("--epochs", type=int, default=20, help="epochs to profile")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    dataset, trainer = digits_trainer()
    ts = trainer.init(fdl.random.key(0), dataset.input_shape)
    x, y = jax.device_put(dataset.x_train), jax.device_put(dataset.y_train)
    hlo = trainer._epoch.lower(ts, x, y, batch_size=args.batch_size).compile().as_text()
    kernels = loop_body_kernels(hlo)
    if args.hlo:
        print(loop_body(hlo))
    if kernels is None:
        print("no while loop in the compiled epoch")
        return
    total = kernels.pop("total")
    print(f"digits epoch (batch {args.batch_size}): one step launches {total} kernels ("
          + ", ".join(f"{n} {op}" for op, n in sorted(kernels.items())) + ")")
    if args.profile:
        names = {}  # kernel -> the JAX operation XLA names it after (its op_name)
        for line in loop_body(hlo).splitlines():
            m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+) = ", line)
            if m:
                op = re.search(r'op_name="(?:[^"]*while/body/)?([^"]*)"', line)
                names[m.group(1)] = op.group(1) if op else ""
        times, steps = kernel_times(trainer, ts, x, y, args.batch_size, args.epochs)
        body = sorted(((t, n) for n, t in times.items() if n in names), reverse=True)
        whole = sum(t for t, _ in body)
        print(f"kernel time per step over {steps} profiled steps: {whole * 1e6:.0f} µs in all")
        for t, n in body:
            print(f"  {t * 1e6:8.1f} µs  {t / whole:6.1%}  {n:30s} {names[n][-64:]}")


if __name__ == "__main__":
    main()
