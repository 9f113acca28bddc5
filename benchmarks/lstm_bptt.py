"""Two backpropagations through time for the same LSTM, timed in interleaved rounds.

* "scan of cell rules": `jax.grad` through `fdl.ops.lstm`, a `lax.scan` of
  `lstm_cell`, whose transpose runs the cell's hand-written backward at every step and
  accumulates the weight gradients `x_tᵀ δ_t`, `h_{t−1}ᵀ δ_t` step by step;
* "ghost_lstm backward": `jax.grad` through `fdl.ops.ghost.ghost_lstm` (its probe's
  cotangent unused, so XLA drops the norms): the same cell rule per step, mapped over
  the examples, collecting `δ_t`, and the weight gradients as one product over all
  steps after the scan.

Both give the same gradients (printed); the ratio says what hoisting the weight
gradients out of the loop is worth. Shapes of the benchmark's LSTM row by default.

    python benchmarks/lstm_bptt.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from fdl import ops
from fdl.ops import ghost


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--shape", default="32,64,128,512", help="N,T,D,H")
    a = p.parse_args()
    n, t, d, h = (int(s) for s in a.shape.split(","))
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((n, t, d), np.float32))
    wx = jnp.asarray(rng.standard_normal((d, 4 * h), np.float32) * 0.05)
    wh = jnp.asarray(rng.standard_normal((h, 4 * h), np.float32) * 0.05)
    b = jnp.zeros((4 * h,), jnp.float32)
    s0 = (jnp.zeros((n, h)), jnp.zeros((n, h)))
    r = jnp.asarray(rng.standard_normal((n, t, h), np.float32))
    probe = jnp.zeros((n,))

    def plain(*w):
        return jnp.sum(r * ops.lstm(w[0], s0, *w[1:])[0])

    def hoisted(*w):
        return jnp.sum(r * ghost.ghost_lstm(w[0], s0, *w[1:], probe)[0])

    fns = {"scan of cell rules": jax.jit(jax.grad(plain, argnums=(0, 1, 2, 3))),
           "ghost_lstm backward (weight gradients after the scan)":
               jax.jit(jax.grad(hoisted, argnums=(0, 1, 2, 3)))}
    outs = [f(xs, wx, wh, b) for f in fns.values()]
    for name, u, v in zip(("xs", "wx", "wh", "b"), *outs):
        print(f"max |difference| / max |gradient|, {name}: "
              f"{float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(u))):.1e}")
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(a.rounds):
        for k in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            jax.block_until_ready(fns[k](xs, wx, wh, b))
            times[k].append(time.perf_counter() - t0)
    for k, v in times.items():
        print(f"{k}: median {1e3 * np.median(v):.0f} ms")
    a_, b_ = (np.asarray(v) for v in times.values())
    print(f"ratio (second / first), median of per-round ratios: {np.median(b_ / a_):.2f}")


if __name__ == "__main__":
    main()
