"""The sections of the report; each measures one question and returns its rows.

* `peak` — float32 (and, with bfloat16 rows, bfloat16) matmul throughput in JAX,
  numpy (its BLAS) and `torch.mm`: the reference every step row is reported against
  ("% of peak": of the fastest float32 matmul any installed library reaches in the
  run, named in the report; JAX's own as a second column).
* `A`, `B`, `C`, `CNN`, `LSTM`, `transformer` — one training step of the
  configurations in `configs`: fdl's rows (`fdl_runners`) and the peers' (`peers`,
  `peers_seq`), with ratios to the fastest JAX peer and to fdl's autodiff mode, XLA's
  FLOPs and memory of each compiled step, and a check that every float32 row starts
  from the same loss. In `C` (the %-of-peak target) the matmul is interleaved in the
  same rounds.
* `dp` — DP-SGD on the CNN: a step with `fdl.privacy.dp_sgd_grads` (ghost norms) vs
  one with `vmap`-materialised per-example gradients vs the ordinary step.
* `digits` — the `fdl train` MLP: an epoch as one `lax.scan` vs Python loops of
  jitted steps (and a jitted no-op step: bare dispatch), an in-process fit to 97%
  test accuracy, and `python -m fdl.cli train` from process start with a cold and a
  warm compilation cache.
* `perex` — per-example gradient norms on `A`: `fdl.privacy.per_example_grad_norms`
  vs `vmap` materialisation, and plain-JAX references.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from fdl import layers as L

from configs import (B1, B2, EPS, LR, CPU_CONFIGS, CNNConfig, LSTMConfig, MLPConfig,
                     TransformerConfig, batch, copy)
from fdl_runners import (Pending, fdl_cnn, fdl_lstm, fdl_mlp, fdl_runners, fdl_step,
                         fdl_transformer, weighted_layers)
from harness import (Runner, Settings, find, jit_runner, looped, measure, set_ratio, short,
                     xla_cost)
from peers import (build_peers, cnn_peers, cross_entropy, jax_mlp, mlp_peers, torch_device,
                   torch_sync)
from peers_seq import (lstm_params, lstm_peers, transformer_params, transformer_params_of_fdl,
                       transformer_peers)

SECTIONS = ("peak", "A", "B", "C", "CNN", "LSTM", "transformer", "dp", "digits", "perex")
STEP_SECTIONS = ("A", "B", "C", "CNN", "LSTM", "transformer")
REF = "ref"  # the group of the matmul interleaved into a step section
NOOP_LOOP = "Python loop of a jitted no-op step (dispatch overhead only)"
SCAN = "epoch as one lax.scan (Trainer.epoch)"
LOOP = "Python loop of Trainer.step"
VMAP_NORMS = "per-example grad norms, vmap materialisation then norms (fdl)"


# --------------------------------------------------------------------------- #
# peak
# --------------------------------------------------------------------------- #


def matmul_runner(n: int, dtype: Any = jnp.float32, group: str = "jax",
                  name: str | None = None) -> Runner:
    """`n×n @ n×n` jitted: `2n³` FLOPs per call."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n), dtype=np.float32), dtype) for _ in range(2))
    f = jax.jit(jnp.matmul)
    run, _ = looped(lambda s: (s, f(a, b)), None)
    return Runner(name or f"jax matmul {n}x{n}", group, run, dtype=jnp.dtype(dtype).name,
                  flops=2.0 * n ** 3)


def _torch_matmul_runner(torch: Any, an: np.ndarray, bn: np.ndarray, dtype: Any) -> Runner:
    dev = torch_device(torch)
    ta, tb = (torch.from_numpy(m).to(dev, dtype) for m in (an, bn))

    def run(k: int) -> None:
        for _ in range(k):
            torch.mm(ta, tb)
        torch_sync(torch)

    n = an.shape[0]
    return Runner(f"torch.mm {n}x{n}", "torch", run, dtype=str(dtype).replace("torch.", ""),
                  flops=2.0 * n ** 3)


def _numpy_matmul_runner(an: np.ndarray, bn: np.ndarray) -> Runner:
    def run(k: int) -> None:
        for _ in range(k):
            np.matmul(an, bn)

    n = an.shape[0]
    return Runner(f"numpy.matmul {n}x{n} (BLAS)", "numpy", run, flops=2.0 * n ** 3)


def fastest_matmul(rows: list[dict], dtype: str = "float32") -> dict | None:
    """The fastest matmul row of `dtype` (any library): `{"gflops", "variant"}`."""
    same = [r for r in rows if r["dtype"] == dtype and r.get("gflops")]
    best = max(same, key=lambda r: r["gflops"], default=None)
    return {"gflops": best["gflops"], "variant": best["variant"]} if best else None


def section_peak(settings: Settings, mods: dict) -> dict:
    """float32 (and, with bf16 rows, bfloat16) matmul throughput: the reference peak."""
    n = settings.peak_n
    notes: list[str] = []
    dtypes = [jnp.float32] + ([jnp.bfloat16] if settings.bf16 else [])
    runners = [matmul_runner(n, dt) for dt in dtypes]
    if jax.default_backend() == "cpu":  # numpy's BLAS runs on the host
        rng = np.random.default_rng(0)
        runners.append(_numpy_matmul_runner(
            *(rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))))
    if "torch" in mods:
        torch = mods["torch"]
        rng = np.random.default_rng(0)
        an, bn = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        runners += [_torch_matmul_runner(torch, an, bn, dt) for dt in
                    [torch.float32] + ([torch.bfloat16] if settings.bf16 else [])]
    rows = measure(runners, settings, notes=notes)
    peak = {r["dtype"]: r["gflops"] for r in rows if r["group"] == "jax"}
    fastest = {dt: fastest_matmul(rows, dt) for dt in peak}
    for dt, f in fastest.items():  # "% of peak" is of the fastest library's matmul
        if f:
            peak[dt + "_any"] = f["gflops"]
    return {"title": f"matmul peak ({n}x{n}; JAX jitted, numpy's BLAS, torch.mm; median over "
                     "rounds)", "rows": rows, "peak_gflops": peak, "fastest": fastest,
            "notes": notes}


# --------------------------------------------------------------------------- #
# A, B, C, CNN
# --------------------------------------------------------------------------- #


def mlp_runners(cfg: MLPConfig, mods: dict, settings: Settings, notes: list[str]
                ) -> list[Runner]:
    """fdl's rows and the peers' for one MLP step, all from fdl's initial parameters."""
    model = fdl_mlp(cfg.sizes)
    _, params, model_state = jax.jit(model.init, static_argnums=1)(jax.random.key(0),
                                                                   (cfg.sizes[0],))
    xn, yn = batch(1, (cfg.sizes[0],), cfg.sizes[-1], cfg.batch)
    runners = fdl_runners(model, params, model_state, jnp.asarray(xn), jnp.asarray(yn),
                          flops=cfg.flops, bf16=settings.bf16, input_shape=(cfg.sizes[0],))
    peers = mlp_peers(mods, weighted_layers(params), xn, yn, cfg.flops, with_bf16=settings.bf16)
    return runners + build_peers(peers, mods, notes)


def cnn_runners(cfg: CNNConfig, mods: dict, settings: Settings, notes: list[str]
                ) -> list[Runner]:
    """fdl's rows (`fdl.layers.Conv2D`, `MaxPool2D`) and the peers' for one CNN step."""
    model = fdl_cnn(cfg)
    _, params, model_state = model.init(jax.random.key(0), cfg.input_shape)
    xn, yn = batch(2, cfg.input_shape, cfg.classes, cfg.batch)
    runners = fdl_runners(model, params, model_state, jnp.asarray(xn), jnp.asarray(yn),
                          flops=cfg.flops, bf16=False, input_shape=cfg.input_shape)
    p = dict(zip(("conv1", "conv2", "dense"), weighted_layers(params), strict=True))
    return runners + build_peers(cnn_peers(cfg, mods, p, xn, yn), mods, notes)


def lstm_runners(cfg: LSTMConfig, mods: dict, settings: Settings, notes: list[str]
                 ) -> list[Runner]:
    """fdl's rows (`Embedding`, `LSTM`, `Dense`) and the peers' for the LSTM LM step."""
    model = fdl_lstm(cfg)
    _, params, model_state = model.init(jax.random.key(0), (cfg.steps,))
    rng = np.random.default_rng(4)
    text = rng.integers(0, cfg.vocab, (cfg.batch, cfg.steps + 1), dtype=np.int32)
    xn, yn = text[:, :-1], text[:, 1:]  # predict the next token
    runners = fdl_runners(model, params, model_state, jnp.asarray(xn), jnp.asarray(yn),
                          flops=cfg.flops, bf16=settings.bf16, input_shape=(cfg.steps,))
    return runners + build_peers(lstm_peers(cfg, mods, lstm_params(params), xn, yn), mods,
                                 notes)


def transformer_runners(cfg: TransformerConfig, mods: dict, settings: Settings,
                        notes: list[str]) -> list[Runner]:
    """fdl's rows (its transformer blocks; pending until they exist) and the peers'."""
    xn, yn = batch(5, (cfg.tokens, cfg.features), cfg.classes, cfg.batch)
    runners: list[Runner] = []
    neutral = None
    try:
        model = fdl_transformer(cfg)
        shape = (cfg.tokens, cfg.features)
        _, params, model_state = model.init(jax.random.key(0), shape)
        runners = fdl_runners(model, params, model_state, jnp.asarray(xn), jnp.asarray(yn),
                              flops=cfg.flops, bf16=settings.bf16, input_shape=shape)
        neutral = transformer_params_of_fdl(params)
    except Pending as e:
        notes.append(str(e))
    peers = transformer_peers(cfg, mods, neutral or transformer_params(cfg), xn, yn)
    return runners + build_peers(peers, mods, notes)


_BUILD = {MLPConfig: mlp_runners, CNNConfig: cnn_runners, LSTMConfig: lstm_runners,
          TransformerConfig: transformer_runners}


def section_step(cfg: Any, settings: Settings, mods: dict, peak: dict[str, float]) -> dict:
    """One training step of `cfg` in every variant; ratios and % of `peak` per row."""
    notes: list[str] = []
    n = settings.peak_n
    runners = _BUILD[type(cfg)](cfg, mods, settings, notes)
    if cfg.name == "C":  # the %-of-peak target: measure the peak in the same rounds
        runners.insert(0, matmul_runner(n, group=REF, name=f"matmul {n}x{n} (peak, interleaved)"))
    rows = measure(runners, settings, notes=notes)
    here = next((r for r in rows if r["group"] == REF), None)
    if here is not None:  # the peak under this section's own conditions
        peak = dict(peak, float32=here["gflops"],
                    float32_any=max(here["gflops"], peak.get("float32_any") or 0.0))
    add_ratios(rows, peak)
    check_losses(rows, notes)
    return {"title": f"{cfg.name}: {cfg.label}", "config": cfg.__dict__ | {"flops": cfg.flops},
            "rows": rows, "notes": notes, "peak_interleaved": here is not None,
            "flop_convention": ("6·batch·Σ d_in·d_out" if isinstance(cfg, MLPConfig)
                                else "3 × forward FLOPs")}


def add_ratios(rows: list[dict], peak: dict[str, float]) -> None:
    """vs fastest JAX peer and vs fdl autodiff (same dtype; medians of per-round ratios),
    % of matmul peak (same dtype)."""
    auto = find(rows, "fdl autodiff")
    for dt in {r["dtype"] for r in rows}:
        same = [r for r in rows if r["dtype"] == dt]
        peers = [r for r in same if r["group"] == "jax"]
        fastest = min(peers, key=lambda r: r["median_s"]) if peers else None
        for r in same:
            set_ratio(r, "vs_fastest_jax_peer", fastest)
            set_ratio(r, "vs_fdl_autodiff", auto if dt == "float32" else None)
            r["fastest_jax_peer"] = fastest["variant"] if fastest else None
            torch_row = next((t for t in same if t["group"] == "torch"), None)
            set_ratio(r, "vs_torch", torch_row if r["group"] != "torch" else None)
            p, pj = peak.get(dt + "_any") or peak.get(dt), peak.get(dt)
            r["pct_of_peak"] = 100.0 * r["gflops"] / p if p and "gflops" in r else None
            r["pct_of_jax_peak"] = 100.0 * r["gflops"] / pj if pj and "gflops" in r else None
            if r["group"] == REF:
                r["vs_fastest_jax_peer"] = r["vs_fdl_autodiff"] = None


def check_losses(rows: list[dict], notes: list[str]) -> None:
    """Every float32 variant starts from the same params: their first losses must agree."""
    fdl_row = find(rows, "fdl")
    ref = fdl_row["loss0"] if fdl_row else None
    if ref is None:
        ref = next((r["loss0"] for r in rows if r["loss0"] is not None), None)
    for r in rows:
        if r["dtype"] == "float32" and r["loss0"] is not None and ref is not None:
            if abs(r["loss0"] - ref) > 1e-4 * max(1.0, abs(ref)):
                notes.append(f"{r['variant']}: first-step loss {r['loss0']:.6f} differs from "
                             f"fdl's {ref:.6f}: the variants may not compute the same model")


# --------------------------------------------------------------------------- #
# dp
# --------------------------------------------------------------------------- #

DP_PLAIN = "ordinary step (grad + Adam)"
DP_GHOST = "DP-SGD, ghost norms (fdl.privacy.dp_sgd_grads) + Adam"
DP_VMAP = "DP-SGD, vmap per-example grads (fdl.train.per_example_grads) + Adam"


def dp_runners(label: str, model: L.Layer, params: Any, st: Any, x: Any, y: Any, *,
               clip_norm: float, noise_multiplier: float) -> list[Runner]:
    """The three DP rows of one model, named `"{label}: …"`."""
    opt = fdl.optim.adam(LR, B1, B2, EPS)
    trainer = fdl.train.Trainer(model, opt, loss=fdl.losses.softmax_cross_entropy)

    def finish(grads, loss, params, opt_state, key):
        updates, opt_state = opt.update(grads, opt_state, params)
        return (fdl.optim.apply_updates(params, updates), opt_state, key), loss

    def ghost_step(state, x, y):
        params, opt_state, key = state
        key, k = jax.random.split(key)
        out = fdl.privacy.dp_sgd_grads(model, params, st, x, y, key=k, clip_norm=clip_norm,
                                       noise_multiplier=noise_multiplier)
        return finish(out.grads, out.loss, params, opt_state, key)

    def one_loss(p, xb, yb):
        return fdl.losses.softmax_cross_entropy(model.apply(p, st, xb)[0], yb)

    def vmap_step(state, x, y):
        params, opt_state, key = state
        key, k = jax.random.split(key)
        per = fdl.train.per_example_grads(one_loss, params, x, y)
        c = fdl.privacy.clip_factors(global_norms(per), clip_norm)
        leaves, tree = jax.tree.flatten(per)
        noise = jax.random.split(k, len(leaves))
        grads = jax.tree.unflatten(tree, [
            (jnp.tensordot(c, g, 1) + noise_multiplier * clip_norm
             * jax.random.normal(kk, g.shape[1:], g.dtype)) / x.shape[0]
            for g, kk in zip(leaves, noise)])
        return finish(grads, one_loss(params, x, y), params, opt_state, key)

    def state() -> tuple:
        p = copy(params)
        return p, opt.init(p), fdl.random.key(1)  # the key fdl train makes (philox)

    p0 = copy(params)
    return [
        jit_runner(f"{label}: {DP_PLAIN}", "fdl", fdl_step(trainer, st), (p0, opt.init(p0)),
                   x, y),
        jit_runner(f"{label}: {DP_GHOST}", "fdl", jax.jit(ghost_step, donate_argnums=0),
                   state(), x, y),
        jit_runner(f"{label}: {DP_VMAP}", "fdl", jax.jit(vmap_step, donate_argnums=0),
                   state(), x, y)]


def section_dp(configs: dict, settings: Settings, *, clip_norm: float = 1.0,
               noise_multiplier: float = 1.0) -> dict:
    """DP-SGD steps on the CNN and (once fdl has its blocks) the transformer: ghost norms
    vs materialised per-example gradients, both against the ordinary step of the same
    model (same batch, Adam; float32, manual rules)."""
    notes: list[str] = []
    cnn = configs["CNN"]
    model = fdl_cnn(cnn)
    _, params, st = model.init(jax.random.key(0), cnn.input_shape)
    xn, yn = batch(2, cnn.input_shape, cnn.classes, cnn.batch)
    kw = {"clip_norm": clip_norm, "noise_multiplier": noise_multiplier}
    runners = dp_runners("CNN", model, params, st, jnp.asarray(xn), jnp.asarray(yn), **kw)
    tcfg = configs["transformer"]
    try:
        model = fdl_transformer(tcfg)
        shape = (tcfg.tokens, tcfg.features)
        _, params, st = model.init(jax.random.key(0), shape)
        xn, yn = batch(5, shape, tcfg.classes, tcfg.batch)
        runners += dp_runners("transformer", model, params, st, jnp.asarray(xn),
                              jnp.asarray(yn), **kw)
    except Pending as e:
        notes.append(str(e))
    rows = measure(runners, settings, notes=notes)
    for r in rows:
        label = r["variant"].split(":", 1)[0]
        set_ratio(r, "vs_plain_step", find(rows, f"{label}: {DP_PLAIN}"))
    return {"title": f"DP-SGD: {cnn.label}; {tcfg.label} (clip norm {clip_norm}, noise "
                     f"multiplier {noise_multiplier}; float32, manual rules)", "rows": rows,
            "notes": notes}


# --------------------------------------------------------------------------- #
# digits
# --------------------------------------------------------------------------- #


def digits_trainer(hidden: Sequence[int] = (512,)) -> tuple[Any, Any]:
    """The `fdl train` defaults: mlp(512, relu, dropout 0.3), Adam 1e-3, batch 64, seed 0
    (its key from `fdl.random.key`, as `fdl train` makes it)."""
    dataset, _ = fdl.data.standardize_dataset(fdl.data.load("digits", flatten=True))
    model = L.mlp(list(hidden), dataset.num_classes, activation="relu", dropout=0.3)
    trainer = fdl.train.Trainer(model, fdl.optim.get_optimizer("adam", learning_rate=1e-3),
                                loss=fdl.losses.softmax_cross_entropy)
    return dataset, trainer


def section_digits(settings: Settings) -> dict:
    """Time per epoch of the `fdl train` MLP: scan vs loops; then the fit and the CLI."""
    notes: list[str] = []
    size = 64
    dataset, trainer = digits_trainer()
    x, y = jax.device_put(dataset.x_train), jax.device_put(dataset.y_train)
    n_batches = x.shape[0] // size

    @jax.jit
    def shuffle(key):  # one dispatch per epoch: the batches as separate arrays
        xb, yb = fdl.data.shuffled_batches(key, (x, y), size)
        return [(xb[i], yb[i]) for i in range(n_batches)]

    template = trainer.init(fdl.random.key(0), dataset.input_shape)

    def epoch_runner(name: str, one_epoch: Callable) -> Runner:
        ts = jax.tree.map(lambda a: a.copy(), template)  # each runner donates its own
        run, _ = looped(lambda s: (one_epoch(s), None), ts)
        return Runner(name, "fdl", run)

    def scan_epoch(ts):
        return trainer.epoch(ts, x, y, batch_size=size)[0]

    auto_trainer = digits_trainer()[1]  # its own jit cache, traced in autodiff mode

    def scan_epoch_autodiff(ts):
        with fdl.gradient_mode("autodiff"):
            return auto_trainer.epoch(ts, x, y, batch_size=size)[0]

    def loop_epoch(step: Callable) -> Callable:
        def one(ts):
            key = jax.random.fold_in(jax.random.fold_in(ts.key, 1), ts.epoch)
            for xb, yb in shuffle(key):
                ts, _ = step(ts, xb, yb)
            return ts._replace(epoch=ts.epoch + 1)
        return one

    xh, yh = np.asarray(dataset.x_train), np.asarray(dataset.y_train)

    def host_loop_epoch(ts):  # what a hand-written loop often does: numpy batches, log each loss
        perm = np.random.default_rng(int(ts.epoch)).permutation(xh.shape[0])
        for i in range(n_batches):
            idx = perm[i * size:(i + 1) * size]
            ts, m = trainer.step(ts, xh[idx], yh[idx])
            float(m["loss"])
        return ts._replace(epoch=ts.epoch + 1)

    noop = jax.jit(lambda ts, xb, yb: (ts, {"loss": jnp.zeros(()),
                                            "all_finite": jnp.ones((), bool)}),
                   donate_argnums=(0,))
    runners = [epoch_runner(SCAN, scan_epoch),
               epoch_runner(f"{SCAN}, autodiff mode", scan_epoch_autodiff),
               epoch_runner(LOOP, loop_epoch(trainer.step)),
               epoch_runner("Python loop of Trainer._step (no host check)",
                            loop_epoch(trainer._step)),
               epoch_runner(f"{LOOP}, numpy batches, float(loss) each step", host_loop_epoch),
               epoch_runner(NOOP_LOOP, loop_epoch(noop))]
    rows = measure(runners, settings, notes=notes)
    scan = find(rows, SCAN)
    for r in rows:
        set_ratio(r, "x_slower_than_scan", scan)
    # the matmul FLOPs of one step: forward x·W₁, h·W₂; backward ∂W₁ = xᵀδ₁, ∂W₂ = hᵀδ₂,
    # ∂h = δ₂W₂ᵀ (no input gradient)
    d_in, hidden, d_out = dataset.input_shape[0], 512, dataset.num_classes
    flops = 2 * size * (2 * d_in * hidden + 3 * hidden * d_out)
    result = {"title": f"digits MLP 64-512-10, batch {size}, {n_batches} steps per epoch: "
                       "time per epoch", "rows": rows, "notes": notes,
              "steps_per_epoch": n_batches, "flops_per_step": flops}
    try:  # the kernels of one compiled epoch: what the per-step path launches
        result["epoch_xla"] = xla_cost(
            trainer._epoch.lower(template, x, y, batch_size=size).compile())
    except Exception as e:
        notes.append(f"compiled epoch: no XLA cost analysis ({type(e).__name__}: {short(e)})")
    result["fit"] = fit_to_97(notes)
    if settings.cli:
        result["cli"] = cli_runs(settings, result["fit"], notes)
    else:
        notes.append("fdl train subprocess: skipped (--no-cli)")
    return result


def fit_to_97(notes: list[str], max_epochs: int = 60) -> dict:
    """In-process: build, compile and train epoch by epoch until test accuracy ≥ 97%."""
    t0 = time.perf_counter()
    dataset, trainer = digits_trainer()
    ts = trainer.init(fdl.random.key(0), dataset.input_shape)
    x, y = jax.device_put(dataset.x_train), jax.device_put(dataset.y_train)
    xt, yt = jax.device_put(dataset.x_test), jax.device_put(dataset.y_test)
    acc, epoch = 0.0, 0
    for epoch in range(1, max_epochs + 1):
        ts, _ = trainer.epoch(ts, x, y, batch_size=64)
        acc = trainer.evaluate(ts, xt, yt)["accuracy"]
        if acc >= 0.97:
            break
    seconds = time.perf_counter() - t0
    if acc < 0.97:
        notes.append(f"in-process fit: 97% not reached in {max_epochs} epochs (best {acc:.4f})")
    return {"epochs": epoch, "test_accuracy": acc, "seconds": seconds,
            "reached": acc >= 0.97}


_EPOCH_LINE = re.compile(r"epoch\s+(\d+)/\d+.*test acc ([0-9.]+)")
_FINAL_LINE = re.compile(r"test accuracy ([0-9.]+)")


def run_cli(args: list[str], cache_dir: str, label: str, timeout: float = 300.0) -> dict:
    """Run `python -m fdl.cli train ARGS`; timestamp each stdout line from process start.

    `cache_dir` is passed as `FDL_CACHE_DIR` (the CLI's persistent XLA compilation
    cache): an empty directory gives a cold start."""
    cmd = [sys.executable, "-m", "fdl.cli", "train", "--checkpoint", "", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", FDL_CACHE_DIR=cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=tmp, env=env)
        first97, final_acc = None, None
        assert proc.stdout is not None
        for line in proc.stdout:
            t = time.perf_counter() - t0
            m = _EPOCH_LINE.search(line)
            if m and first97 is None and float(m.group(2)) >= 0.97:
                first97 = {"epoch": int(m.group(1)), "seconds": t}
            m = _FINAL_LINE.search(line)
            if m and not line.lstrip().startswith("epoch"):
                final_acc = float(m.group(1))
        proc.wait(timeout=timeout)
        wall = time.perf_counter() - t0
        err = proc.stderr.read() if proc.stderr else ""
    return {"command": " ".join(["python", "-m", "fdl.cli", "train", "--checkpoint", "''", *args]),
            "label": label, "returncode": proc.returncode, "wall_s": wall, "first_97": first97,
            "final_accuracy": final_acc, "stderr_tail": err[-500:] if proc.returncode else ""}


def cli_runs(settings: Settings, fit: dict, notes: list[str]) -> list[dict]:
    """`fdl train` from process start, its epoch lines timestamped (the first ≥ 97%): with an
    empty compilation cache (cold), then again with the cache the first run filled (warm);
    and a `--quiet` run of just the epochs that reached 97% in-process (warm)."""
    runs = []
    epochs = ["--epochs", "15"] if settings.quick else []  # default: the CLI's 40 epochs
    with tempfile.TemporaryDirectory() as cache:
        runs.append(run_cli(epochs, cache, "cold compilation cache"))
        runs.append(run_cli(epochs, cache, "warm compilation cache"))
        if fit["reached"] and not settings.quick:
            runs.append(run_cli(["--quiet", "--epochs", str(fit["epochs"])], cache,
                                "warm compilation cache, stop at the epoch reaching 97%"))
    for r in runs:
        if r["returncode"] != 0:
            notes.append(f"`{r['command']}` exited {r['returncode']}: {r['stderr_tail']}")
    return runs


# --------------------------------------------------------------------------- #
# perex
# --------------------------------------------------------------------------- #


def global_norms(grads: Any) -> jax.Array:
    """Per-example L2 norm over every leaf (each leaf has a leading batch axis)."""
    sq = [jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)
          for g in jax.tree_util.tree_leaves(grads)]
    return jnp.sqrt(sum(sq[1:], sq[0]))


def ghost_norms_jax(dense: list, x: jax.Array, y: jax.Array) -> jax.Array:
    """Plain-JAX reference without materialising: for a dense layer `Z = AW + b` the
    per-example gradient is `a_i ⊗ g_i`, so `‖∂ℓ_i/∂W‖² = ‖a_i‖²‖g_i‖²` and
    `‖∂ℓ_i/∂b‖² = ‖g_i‖²`, with `g_i = ∂(Σ ℓ)/∂z_i` from one backward pass with respect
    to zero perturbations of each `Z`."""
    def summed(eps):
        a, acts = x, []
        for i, (w, b) in enumerate(dense):
            acts.append(a)
            z = a @ w + b + eps[i]
            a = jax.nn.relu(z) if i < len(dense) - 1 else z
        logp = jax.nn.log_softmax(a, axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=1)), acts

    eps = [jnp.zeros((x.shape[0], w.shape[1]), x.dtype) for w, _ in dense]
    gs, acts = jax.grad(summed, has_aux=True)(eps)
    sq = sum(jnp.sum(a * a, 1) * jnp.sum(g * g, 1) + jnp.sum(g * g, 1) for a, g in zip(acts, gs))
    return jnp.sqrt(sq)


def section_perex(settings: Settings, mods: dict) -> dict:
    """Per-example gradient norms on A: fdl's ghost norms vs `vmap` materialisation."""
    cfg = CPU_CONFIGS["A"]  # the target's configuration (GPU sizes would not fit materialised)
    notes: list[str] = []
    model = fdl_mlp(cfg.sizes)
    _, params, model_state = model.init(jax.random.key(0), (cfg.sizes[0],))
    xn, yn = batch(3, (cfg.sizes[0],), cfg.sizes[-1], cfg.batch)
    x, y = jnp.asarray(xn), jnp.asarray(yn)

    def loss_fn(p, xb, yb):
        out, _ = model.apply(p, model_state, xb)
        return fdl.losses.softmax_cross_entropy(out, yb)

    def materialised(p, xb, yb):
        return fdl.train.per_example_grads(loss_fn, p, xb, yb)

    fns: dict[str, tuple[Callable, Any]] = {
        "per-example grads, vmap (materialised, fdl.train.per_example_grads)":
            (materialised, params),
        VMAP_NORMS: (lambda p, xb, yb: global_norms(materialised(p, xb, yb)), params),
        "fdl.privacy.per_example_grad_norms":
            (lambda p, xb, yb: fdl.privacy.per_example_grad_norms(model, p, model_state, xb, yb),
             params)}
    if "jax" in mods:
        def jax_loss(p, xb, yb):
            return cross_entropy(jax_mlp(p, xb), yb)

        jdense = copy(weighted_layers(params))
        fns["per-example grad norms, plain JAX vmap materialisation then norms"] = (
            lambda p, xb, yb: global_norms(
                jax.vmap(lambda xi, yi: jax.grad(jax_loss)(p, xi[None], yi[None]))(xb, yb)),
            jdense)
        fns["per-example grad norms, plain JAX without materialising (reference)"] = (
            ghost_norms_jax, jdense)

    boxes, runners = {}, []
    for name, (fn, p) in fns.items():
        f = jax.jit(fn)
        run, boxes[name] = looped(lambda s, f=f, p=p: (s, f(p, x, y)), None)
        runners.append(Runner(name, "fdl" if "fdl" in name else "jax", run))
    rows = measure(runners, settings, notes=notes)
    base = find(rows, VMAP_NORMS)
    ref = boxes[VMAP_NORMS]["out"]
    for r in rows:
        r["x_faster_than_vmap"] = base["median_s"] / r["median_s"] if base else None
        out = boxes[r["variant"]]["out"]
        if ref is not None and out is not None and "grads," not in r["variant"]:
            try:
                out = jnp.asarray(out).reshape(ref.shape)
                r["max_rel_err_vs_vmap"] = float(jnp.max(jnp.abs(out - ref) / jnp.abs(ref)))
            except Exception as e:
                notes.append(f"{r['variant']}: output not comparable with the vmap norms "
                             f"({type(e).__name__}: {short(e)})")
    return {"title": f"per-example gradients on {cfg.label} (float32, manual rules)",
            "rows": rows, "notes": notes}
