"""Backpropagations through time for the same LSTM, timed in interleaved rounds.

* "scan of cell rules": `jax.grad` through `scan_cell(lstm_cell, …)`, a `lax.scan` of
  the cell primitive, whose transpose runs the cell's hand-written backward at every
  step and accumulates the weight gradients `x_tᵀ δ_t`, `h_{t−1}ᵀ δ_t` step by step;
* "fdl.ops.lstm (sequence rule)": `jax.grad` through the `lstm` primitive: the input
  projection `X W_x` for all steps before the scan, a backward scan that carries
  `(δh, δc)` and emits `δ_t`, and the weight gradients as one product over all steps
  after it;
* "autodiff": `jax.grad` through `fdl.ops.lstm` in `gradient_mode("autodiff")` (JAX
  differentiates the scan of the cell's plain forward).

All give the same gradients (printed against the first); the ratios say what the
sequence-level rule is worth. Shapes of the benchmark's LSTM row by default.

`--step` times the benchmark's whole LSTM-LM training step instead (`bench.py --only
LSTM`'s rows `fdl`, `fdl autodiff` and the JAX peers, by its own harness), with one more
row, "fdl, scan of cell rules": the same `fdl` step with `fdl.ops.lstm` replaced by
`scan_cell(lstm_cell, …)` while it is traced, i.e. the per-step rule composed by the
scan: before and after the sequence rule in one run, interleaved.

`--clock cpu` times the op-level comparison by the process's CPU time instead of the
wall clock: on a shared, loaded machine the work a variant does, not how long it waited
for a core (run it single-threaded, `XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1"`, so that no thread spins waiting for another).

    python benchmarks/lstm_bptt.py [--rounds 7] [--shape N,T,D,H] [--clock cpu]
    python benchmarks/lstm_bptt.py --step [--rounds 5] [--peers jax,flax,equinox]
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from fdl import ops


@contextlib.contextmanager
def cell_scan_lstm() -> Iterator[None]:
    """`fdl.ops.lstm` replaced by the scan of `lstm_cell` (the per-step rule) inside."""
    sequence = ops.lstm

    def cells(xs, state0, wx, wh, b, lengths=None, reverse=False):
        return ops.scan_cell(ops.lstm_cell, xs, state0, wx, wh, b, reverse=reverse,
                             lengths=lengths)

    ops.lstm = cells
    try:
        yield
    finally:
        ops.lstm = sequence


def step_rows(rounds: int, peers: str) -> None:
    """The benchmark's LSTM row, plus fdl with the scan of cell rules, in one run."""
    here = str(pathlib.Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import harness
    import sections
    from configs import B1, B2, CPU_CONFIGS, EPS, LR
    from fdl_runners import fdl_lstm, fdl_step
    from peers import load_peers

    settings = harness.Settings(rounds=rounds, peers=tuple(s for s in peers.split(",") if s))
    notes: list[str] = []
    cfg = CPU_CONFIGS["LSTM"]
    runners = sections.lstm_runners(cfg, load_peers(settings, notes), settings, notes)
    runners = [r for r in runners if not r.name.startswith("fdl Trainer")]
    fdl_row = next(r for r in runners if r.name == "fdl")
    model = fdl_lstm(cfg)
    _, params, model_state = model.init(jax.random.key(0), (cfg.steps,))
    trainer = fdl.train.Trainer(model, fdl.optim.adam(LR, B1, B2, EPS),
                                loss=fdl.losses.softmax_cross_entropy)
    rng = np.random.default_rng(4)  # the batch of sections.lstm_runners
    text = rng.integers(0, cfg.vocab, (cfg.batch, cfg.steps + 1), dtype=np.int32)
    x, y = jnp.asarray(text[:, :-1]), jnp.asarray(text[:, 1:])
    runners.insert(runners.index(fdl_row) + 1, harness.jit_runner(
        "fdl, scan of cell rules", "fdl", fdl_step(trainer, model_state),
        (params, trainer.optimizer.init(params)), x, y, context=cell_scan_lstm,
        flops=cfg.flops))
    rows = harness.measure(runners, settings, notes=notes)
    sections.add_ratios(rows, {})
    ref = harness.find(rows, "fdl, scan of cell rules")
    print(f"{cfg.name}: {cfg.label}; {rounds} interleaved rounds")
    print("| variant | median ms | IQR ms | vs fastest JAX peer | vs fdl autodiff | "
          "vs scan of cell rules | loss₀ |\n|---|---|---|---|---|---|---|")
    for r in rows:
        harness.set_ratio(r, "vs_cells", ref)
        print(f"| {r['variant']} | {1e3 * r['median_s']:.0f} | {1e3 * r['q1_s']:.0f}–"
              f"{1e3 * r['q3_s']:.0f} | {_ratio(r, 'vs_fastest_jax_peer')} | "
              f"{_ratio(r, 'vs_fdl_autodiff')} | {_ratio(r, 'vs_cells')} | {r['loss0']:.4f} |")
    for n in notes:
        print("-", n)


def _ratio(row: dict, key: str) -> str:
    q = row.get(key)
    if q is None:
        return "–"
    lo, hi = row.get(key + "_iqr") or (q, q)
    return f"{q:.2f}× ({lo:.2f}–{hi:.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--shape", default="32,64,128,512", help="N,T,D,H")
    p.add_argument("--step", action="store_true",
                   help="time the benchmark's whole LSTM-LM training step (see above)")
    p.add_argument("--peers", default="jax,flax,equinox", help="with --step: the JAX peers")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="op-level timing by the wall clock or the process's CPU time")
    a = p.parse_args()
    if a.step:
        step_rows(a.rounds, a.peers)
        return
    n, t, d, h = (int(s) for s in a.shape.split(","))
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((n, t, d), np.float32))
    wx = jnp.asarray(rng.standard_normal((d, 4 * h), np.float32) * 0.05)
    wh = jnp.asarray(rng.standard_normal((h, 4 * h), np.float32) * 0.05)
    b = jnp.zeros((4 * h,), jnp.float32)
    s0 = (jnp.zeros((n, h)), jnp.zeros((n, h)))
    r = jnp.asarray(rng.standard_normal((n, t, h), np.float32))

    def cells(*w):
        return jnp.sum(r * ops.scan_cell(ops.lstm_cell, w[0], s0, *w[1:])[0])

    def sequence(*w):
        return jnp.sum(r * ops.lstm(w[0], s0, *w[1:])[0])

    def autodiff(*w):
        with fdl.gradient_mode("autodiff"):
            return sequence(*w)

    fns = {"scan of cell rules": cells, "fdl.ops.lstm (sequence rule)": sequence,
           "autodiff": autodiff}
    fns = {k: jax.jit(jax.grad(f, argnums=(0, 1, 2, 3))) for k, f in fns.items()}
    outs = [f(xs, wx, wh, b) for f in fns.values()]
    for k, out in zip(list(fns)[1:], outs[1:]):
        diffs = ", ".join(f"{name} {float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(u))):.1e}"
                          for name, u, v in zip(("xs", "wx", "wh", "b"), outs[0], out))
        print(f"{k}: max |difference| / max |gradient| vs the first: {diffs}")
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(a.rounds):
        for k in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            t0 = clock()
            jax.block_until_ready(fns[k](xs, wx, wh, b))
            times[k].append(clock() - t0)
    print(f"{a.rounds} interleaved rounds, {a.clock} clock")
    first = np.asarray(times[next(iter(times))])
    for k, v in times.items():
        print(f"{k}: median {1e3 * np.median(v):.0f} ms, median per-round ratio to the "
              f"first {np.median(np.asarray(v) / first):.2f}")


if __name__ == "__main__":
    main()
