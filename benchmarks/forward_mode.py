"""What forward mode and second order cost on the hand-written rules, against autodiff.

Rows, each a jitted function of an MLP's parameters (ReLU between the layers, softmax
cross-entropy over a batch of integer labels, float32), run in both gradient modes:

* `grad`: `jax.grad` of the loss (manual: the hand-written backward, reached by
  transposing the tangent rule);
* `jvp`: `jax.jvp` of the loss along a random direction in parameter space (manual:
  the hand-written tangent rules);
* `hvp`: `fdl.hvp`, forward over reverse (manual: the forward pass differentiates the
  hand-written backward).

Columns: the median time of one call in each mode (µs), and their ratio manual /
autodiff, the median of the per-round paired ratios. Each round times every variant
in turn (`--calls` calls each), so a busy moment on a shared machine hits both modes;
`--rounds` rounds. Figures from a loaded machine are best read as the ratios.

Run:  .venv/bin/python benchmarks/forward_mode.py [--rounds 15] [--calls 20] [--sizes A,small]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import fdl  # noqa: E402

SIZES = {  # name: (layer sizes, batch)
    "small": ((64, 512, 10), 64),     # the digits MLP's shapes
    "A": ((784, 1024, 10), 128),      # the benchmark MLP A
}


def _model(sizes, batch, seed=0):
    rng = np.random.default_rng(seed)
    params = [{"w": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), jnp.float32),
               "b": jnp.zeros(b, jnp.float32)} for a, b in zip(sizes[:-1], sizes[1:])]
    x = jnp.asarray(rng.standard_normal((batch, sizes[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, sizes[-1], batch), jnp.int32)
    v = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)

    def loss(params, x, y):
        h = x
        for i, layer in enumerate(params):
            h = fdl.ops.linear(h, layer["w"], layer["b"])
            if i < len(params) - 1:
                h = fdl.ops.relu(h)
        return fdl.losses.softmax_cross_entropy(h, y)

    return loss, params, x, y, v


def _variants(loss, v):
    return {
        "grad": lambda p, x, y: jax.grad(loss)(p, x, y),
        "jvp": lambda p, x, y: jax.jvp(lambda q: loss(q, x, y), (p,), (v,))[1],
        "hvp": lambda p, x, y: fdl.hvp(loss, p, v, x, y),
    }


def measure(name, rounds, calls):
    sizes, batch = SIZES[name]
    loss, params, x, y, v = _model(sizes, batch)
    fns = {}
    for kind, fn in _variants(loss, v).items():
        for mode in ("manual", "autodiff"):
            with fdl.gradient_mode(mode):
                compiled = jax.jit(fn).lower(params, x, y).compile()
            jax.block_until_ready(compiled(params, x, y))
            fns[kind, mode] = compiled
    times = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            f = fns[k]
            start = time.perf_counter()
            for _ in range(calls):
                out = f(params, x, y)
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - start) / calls)
    rows = []
    for kind in ("grad", "jvp", "hvp"):
        m, a = np.array(times[kind, "manual"]), np.array(times[kind, "autodiff"])
        rows.append((kind, np.median(m) * 1e6, np.median(a) * 1e6, float(np.median(m / a))))
    return f"MLP {'-'.join(map(str, sizes))}, batch {batch}", rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--sizes", default="small,A")
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.default_backend()}, {os.cpu_count()} cores; "
          f"{args.rounds} interleaved rounds of {args.calls} calls")
    print("| model | what | manual µs | autodiff µs | manual / autodiff |")
    print("|---|---|---:|---:|---:|")
    for name in args.sizes.split(","):
        title, rows = measure(name, args.rounds, args.calls)
        for kind, m, a, ratio in rows:
            print(f"| {title} | {kind} | {m:.0f} | {a:.0f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
