"""XLA's memory analysis of one gradient step through a deep transformer stack, with and
without `fdl.layers.remat` (for BENCHMARKS.md).

For each variant: the temporary bytes XLA's buffer assignment needs for
`jit(grad(loss))` (`compiled.memory_analysis().temp_size_in_bytes`: activations and
residuals kept for the backward, plus scratch), and the median wall time of a step.

Run:  python benchmarks/remat_memory.py [--depth 12] [--d-model 64] [--seq 64] [--batch 8]
      [--depths 6,12,24]   (the second table: temp MiB against depth, compile only)
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from fdl import layers as L


def measure(model: L.Layer, x: jax.Array, repeats: int) -> tuple[float, float]:
    _, params, state = model.init(jax.random.key(0), x.shape[1:])
    step = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(model.apply(p, state, x)[0]))))
    compiled = step.lower(params, x).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    if not repeats:  # memory only
        return temp / 2**20, float("nan")
    jax.block_until_ready(compiled(params, x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        times.append(time.perf_counter() - t0)
    return temp / 2**20, float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depths", default="6,12,24")
    a = parser.parse_args()
    block = L.TransformerEncoderBlock(a.d_model, a.heads, 4 * a.d_model, causal=True)
    x = jax.random.normal(jax.random.key(1), (a.batch, a.seq, a.d_model))
    variants = {
        "scan_layers": L.scan_layers(block, a.depth),
        "scan_layers(remat(block))": L.scan_layers(L.remat(block, prevent_cse=False), a.depth),
        "scan_layers(remat(block, 'dots_saveable'))":
            L.scan_layers(L.remat(block, "dots_saveable", prevent_cse=False), a.depth),
        "serial (unrolled)": L.serial(*[block] * a.depth),
        "serial(remat(block) ×depth)": L.serial(*[L.remat(block)] * a.depth),
    }
    print(f"depth {a.depth}, d_model {a.d_model}, heads {a.heads}, d_ff {4 * a.d_model}, "
          f"T {a.seq}, N {a.batch}, float32, {jax.devices()[0].platform}")
    print("| variant | temp MiB | step ms |\n| --- | ---: | ---: |")
    for name, model in variants.items():
        temp, ms = measure(model, x, a.repeats)
        print(f"| {name} | {temp:.1f} | {ms:.1f} |")
    print("\n| depth | scan_layers temp MiB | scan_layers(remat) temp MiB |\n| ---: | ---: | ---: |")
    for depth in (int(d) for d in a.depths.split(",")):
        plain = measure(L.scan_layers(block, depth), x, 0)[0]
        rematted = measure(L.scan_layers(L.remat(block, prevent_cse=False), depth), x, 0)[0]
        print(f"| {depth} | {plain:.1f} | {rematted:.1f} |")


if __name__ == "__main__":
    main()
