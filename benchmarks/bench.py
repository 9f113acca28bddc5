"""fdl benchmark suite: fdl against plain JAX, stax, Flax, Equinox and PyTorch.

Usage::

    python benchmarks/bench.py                       # everything (~10 min on 2 CPU cores)
    python benchmarks/bench.py --quick               # smoke run (~2 min)
    python benchmarks/bench.py --only A,B --json out.json --markdown out.md

Sections (``--only`` takes their names): ``peak`` (float32 matmul peak), ``A``, ``B``,
``C`` (MLP training steps), ``CNN`` (a small convnet's training step), ``digits``
(epoch as one ``lax.scan`` vs a Python loop of jitted steps; wall time to 97% test
accuracy) and ``perex`` (per-example gradient norms). ``peak`` is added whenever a
step section is selected, since every step row is reported as a fraction of it.

Method
------
* Every variant trains the same model from the same initial parameters (drawn once by
  fdl's initialisers and copied into each framework's layout), on the same batch, in
  float32, with the same loss (softmax cross-entropy on integer labels, mean over the
  batch) and Adam (lr 1e-3, b1 0.9, b2 0.999, eps 1e-8). Each variant reports its
  first-step loss, and the suite warns when they disagree.
* Every JAX variant's step is one ``jax.jit`` program with the parameters and
  optimizer state donated. PyTorch runs eagerly (the default CPU Adam).
* Timing: the first call (trace + compile + one step) is timed on its own and
  excluded; each variant then runs ``k`` steps per round (``k`` chosen so one round
  takes about ``--min-time`` seconds) and waits for the result once at the end of the
  round (``block_until_ready`` / ``torch.cuda.synchronize``). Every round times every
  variant once, in a fresh (seeded) random order, so drift in the machine's load hits
  every variant alike and no variant always follows the same one. Reported: median,
  quartiles, minimum of the per-step time over rounds; ratios between variants are
  medians of per-round ratios.
* FLOPs of an MLP step: ``6·batch·Σ d_in·d_out`` (forward 2, backward 4: the usual
  convention, which also counts the input gradient of the first layer that no
  variant computes). CNN: 3× the forward FLOPs of its convolutions and dense layer.
* On a GPU the sizes are scaled up and bfloat16 rows are added (``--bf16`` forces
  them on a CPU).

Missing peers (``pip install 'fdl[bench]'``; PyTorch separately) are skipped with a
note. Outputs a markdown report (stdout, ``--markdown``) and JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch too
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fdl  # noqa: E402
from fdl import layers as L  # noqa: E402

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8
JAX_PEERS = ("jax", "stax", "flax", "equinox")
ALL_PEERS = (*JAX_PEERS, "torch")
SECTIONS = ("peak", "A", "B", "C", "CNN", "digits", "perex")
STEP_SECTIONS = ("A", "B", "C", "CNN")


# --------------------------------------------------------------------------- #
# Configurations
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class MLPConfig:
    """An MLP ``sizes[0] → … → sizes[-1]`` (ReLU between) trained on batches of ``batch``."""

    name: str
    sizes: tuple[int, ...]
    batch: int

    @property
    def flops(self) -> float:
        return 6.0 * self.batch * sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def label(self) -> str:
        return f"MLP {'-'.join(map(str, self.sizes))}, batch {self.batch}"


@dataclass(frozen=True)
class CNNConfig:
    """conv3×3(c₁)-relu-maxpool2 → conv3×3(c₂)-relu-maxpool2 → flatten → dense, NHWC."""

    name: str
    hw: int
    in_channels: int
    channels: tuple[int, int]
    classes: int
    batch: int

    @property
    def flat(self) -> int:
        return (self.hw // 4) ** 2 * self.channels[1]

    @property
    def flops(self) -> float:
        c0, (c1, c2), n, hw = self.in_channels, self.channels, self.batch, self.hw
        convs = hw * hw * 9 * c0 * c1 + (hw // 2) ** 2 * 9 * c1 * c2
        fwd = 2 * n * (convs + self.flat * self.classes)
        return 3.0 * fwd

    @property
    def label(self) -> str:
        c1, c2 = self.channels
        return (f"CNN {self.hw}x{self.hw}x{self.in_channels} conv3x3({c1})-pool-conv3x3({c2})-pool-"
                f"dense({self.classes}), batch {self.batch}")


CPU_CONFIGS: dict[str, Any] = {
    "A": MLPConfig("A", (784, 1024, 10), 128),
    "B": MLPConfig("B", (784, 1024, 1024, 10), 256),
    "C": MLPConfig("C", (784, 4096, 4096, 10), 1024),
    "CNN": CNNConfig("CNN", 28, 1, (32, 64), 10, 128),
}
GPU_CONFIGS: dict[str, Any] = {
    "A": MLPConfig("A", (784, 4096, 10), 4096),
    "B": MLPConfig("B", (784, 4096, 4096, 10), 4096),
    "C": MLPConfig("C", (784, 8192, 8192, 10), 8192),
    "CNN": CNNConfig("CNN", 28, 1, (64, 128), 10, 2048),
}


@dataclass
class Settings:
    rounds: int = 7
    min_time: float = 0.3          # seconds of steps per variant per round
    max_steps: int = 500           # cap on steps per round
    peers: tuple[str, ...] = ALL_PEERS
    bf16: bool = False
    gpu_sizes: bool = False
    peak_n: int = 4096
    quick: bool = False
    cli: bool = True               # run `fdl train` as a subprocess in the digits section
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


# --------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------- #


@dataclass
class Runner:
    """One variant: ``run(k)`` takes ``k`` steps and waits for them; ``loss()`` is the
    last step's loss (``None`` where there is none)."""

    name: str
    group: str                      # "fdl", "jax" (a JAX peer), "torch", "ref"
    run: Callable[[int], None]
    loss: Callable[[], float | None] = lambda: None
    dtype: str = "float32"
    flops: float | None = None      # per step (per call of run(1))
    cost: Callable[[], dict] | None = None  # XLA's static view of the compiled step


def _stats(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3),
            "min_s": float(a.min()), "max_s": float(a.max())}


def measure(runners: Sequence[Runner], settings: Settings, *, notes: list[str]) -> list[dict]:
    """Warm up each runner (timing its first call), then time them in interleaved rounds."""
    live, rows = [], []
    for r in runners:
        try:
            t0 = time.perf_counter()
            r.run(1)
            first = time.perf_counter() - t0
            loss0 = r.loss()
            r.run(1)
            t0 = time.perf_counter()
            r.run(1)
            one = time.perf_counter() - t0
        except Exception as e:  # a peer's API changed, out of memory, …: skip, say why
            notes.append(f"{r.name}: skipped, failed to run: {type(e).__name__}: {_short(e)}")
            continue
        k = max(1, min(settings.max_steps, math.ceil(settings.min_time / max(one, 1e-9))))
        live.append((r, k, first, loss0, []))
    shuffle = np.random.default_rng(0)
    for _ in range(settings.rounds):
        # a fresh order each round: no variant always follows the same one (PyTorch's
        # OpenMP threads, for one, may still be spinning when the next variant starts)
        order = [live[j] for j in shuffle.permutation(len(live))]
        for r, k, _, _, samples in order:
            t0 = time.perf_counter()
            r.run(k)
            samples.append((time.perf_counter() - t0) / k)
    for r, k, first, loss0, samples in live:
        st = _stats(samples)
        row = {"variant": r.name, "group": r.group, "dtype": r.dtype, **st,
               "steps_per_round": k, "rounds": len(samples), "first_call_s": first,
               "compile_s": max(0.0, first - st["median_s"]),
               "loss0": None if loss0 is None else float(loss0), "samples_s": samples}
        if r.flops:
            row["flops"] = r.flops
            row["gflops"] = r.flops / st["median_s"] / 1e9
        if r.cost is not None:
            try:
                row["xla"] = r.cost()
            except Exception as e:
                notes.append(f"{r.name}: no XLA cost analysis ({type(e).__name__}: {_short(e)})")
        rows.append(row)
    return rows


def _short(e: BaseException, n: int = 160) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _block(tree: Any) -> None:
    jax.block_until_ready(tree)


def jit_runner(name: str, group: str, step: Callable, state: Any, x: Any, y: Any, *,
               mode: str | None = None, dtype: str = "float32", flops: float | None = None
               ) -> Runner:
    """A runner for ``state, loss = step(state, x, y)`` (``step`` jitted, ``state`` donated).

    ``mode`` wraps the calls in ``fdl.gradient_mode(mode)`` (the mode is part of the jit
    cache key, so the calls must be made inside it, not only the first).
    """
    box = {"state": state, "loss": None}

    def run(k: int) -> None:
        s, loss = box["state"], None
        with fdl.gradient_mode(mode) if mode else contextlib.nullcontext():
            for _ in range(k):
                s, loss = step(s, x, y)
        _block((s, loss))
        box["state"], box["loss"] = s, loss

    def cost() -> dict:
        with fdl.gradient_mode(mode) if mode else contextlib.nullcontext():
            return xla_cost(step.lower(box["state"], x, y).compile())

    return Runner(name, group, run, lambda: float(box["loss"]), dtype, flops, cost)


def xla_cost(compiled: Any) -> dict:
    """What XLA says about a compiled program: FLOPs, bytes accessed, and op counts
    (fusions, dots, copies, transposes) from its optimised HLO — noise-free evidence
    for comparing two variants' programs."""
    ca = compiled.cost_analysis()
    ca = (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}
    hlo = compiled.as_text()
    ops = re.findall(r"= \S+ ([a-z][\w-]*)\(", hlo)
    count = {k: ops.count(k) for k in ("fusion", "dot", "copy", "transpose", "while")}
    return {"flops": ca.get("flops"), "bytes_accessed": ca.get("bytes accessed"),
            "transcendentals": ca.get("transcendentals"), "hlo_ops": count}


# --------------------------------------------------------------------------- #
# Environment and peers
# --------------------------------------------------------------------------- #


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """The machine and the versions, for the report."""
    dev = jax.devices()[0]
    env = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)), "devices": jax.device_count(),
        "versions": {d: _version(d) for d in
                     ("fdl", "jax", "jaxlib", "numpy", "optax", "flax", "equinox", "torch")},
        "loadavg_at_start": _loadavg(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    return env


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def load_peers(settings: Settings, notes: list[str]) -> dict[str, Any]:
    """Import the optional peers; those missing are dropped with a note."""
    mods: dict[str, Any] = {}
    wanted = set(settings.peers)
    if "jax" in wanted:
        mods["jax"] = jax
    if "stax" in wanted:
        try:
            from jax.example_libraries import optimizers, stax
            mods["stax"] = (stax, optimizers)
        except ImportError as e:
            notes.append(f"stax: skipped ({e})")
    if wanted & {"flax", "equinox"}:
        try:
            import optax
            mods["optax"] = optax
        except ImportError:
            notes.append("flax, equinox: skipped (optax not installed: pip install 'fdl[bench]')")
            wanted -= {"flax", "equinox"}
    for name, module in (("flax", "flax.linen"), ("equinox", "equinox")):
        if name in wanted:
            try:
                mods[name] = importlib.import_module(module)
            except ImportError:
                notes.append(f"{name}: skipped (not installed: pip install 'fdl[bench]')")
    if "torch" in wanted:
        try:
            import torch
            if jax.default_backend() == "gpu" and not torch.cuda.is_available():
                notes.append("torch: skipped (JAX sees a GPU but this torch build has no CUDA)")
            else:
                torch.manual_seed(0)
                if jax.default_backend() == "gpu":
                    # JAX's default float32 matmul precision on a GPU allows TF32; so does this
                    torch.backends.cuda.matmul.allow_tf32 = True
                    torch.backends.cudnn.allow_tf32 = True
                    notes.append("torch: TF32 allowed for float32 matmuls and convolutions, "
                                 "as JAX's default precision allows on a GPU")
                mods["torch"] = torch
        except ImportError:
            notes.append("torch: skipped (not installed; on the CPU benchmark machine: "
                         "pip install torch==2.13.0)")
    return mods


def _torch_device(torch: Any) -> Any:
    return torch.device("cuda" if jax.default_backend() == "gpu" else "cpu")


def _torch_sync(torch: Any) -> None:
    if jax.default_backend() == "gpu":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- #
# Shared pieces: loss, Adam, data
# --------------------------------------------------------------------------- #


def _ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy on integer labels, mean over the batch (plain JAX)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _adam_init(params: Any) -> tuple:
    zeros = jax.tree.map(jnp.zeros_like, params)
    return zeros, jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32)


def _adam_update(grads: Any, opt: tuple, params: Any) -> tuple[Any, tuple]:
    """Hand-written Adam (Kingma & Ba 2015; eps outside the square root, as fdl/optax/torch)."""
    m, v, t = opt
    t = t + 1
    m = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, m, grads)
    v = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, v, grads)
    c1 = 1 - B1 ** t.astype(jnp.float32)
    c2 = 1 - B2 ** t.astype(jnp.float32)
    params = jax.tree.map(lambda p, m, v: p - LR * (m / c1) / (jnp.sqrt(v / c2) + EPS),
                          params, m, v)
    return params, (m, v, t)


def _batch(key: int, shape: tuple[int, ...], classes: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(key)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    y = rng.integers(0, classes, size=(n,), dtype=np.int32)
    return x, y


def _copy(tree: Any) -> Any:
    """Fresh device buffers (every variant donates its own)."""
    return jax.tree.map(lambda a: jnp.array(np.asarray(a)), tree)


def _bf16(tree: Any) -> Any:
    return jax.tree.map(lambda a: a.astype(jnp.bfloat16), tree)


# --------------------------------------------------------------------------- #
# fdl variants (public API)
# --------------------------------------------------------------------------- #


def fdl_step(trainer: fdl.train.Trainer, model_state: Any) -> Callable:
    """A jitted step built from ``Trainer.loss_fn`` and the optimizer (no host sync),
    compiled with the XLA options fdl's Trainer uses (``fdl.train.compiler_options``)."""
    opt = trainer.optimizer

    def step(state, x, y):
        params, opt_state = state
        (loss, _), grads = jax.value_and_grad(trainer.loss_fn, has_aux=True)(
            params, model_state, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (fdl.optim.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0, compiler_options=fdl.train.compiler_options())


def fdl_runners(model: L.Layer, params: Any, model_state: Any, x: Any, y: Any, *,
                flops: float, bf16: bool, input_shape: tuple[int, ...]) -> list[Runner]:
    """fdl manual (jit step), fdl autodiff, ``Trainer.step``, ``Trainer._step``, [bf16]."""
    def trainer(**kw: Any) -> fdl.train.Trainer:
        return fdl.train.Trainer(model, fdl.optim.adam(LR, B1, B2, EPS),
                                 loss=fdl.losses.softmax_cross_entropy, **kw)

    runners = []
    for name, mode in (("fdl", None), ("fdl autodiff", "autodiff")):
        t = trainer()
        p = _copy(params)
        runners.append(jit_runner(name, "fdl", fdl_step(t, model_state),
                                  (p, t.optimizer.init(p)), x, y, mode=mode, flops=flops))

    template = trainer().init(jax.random.key(0), input_shape)

    def trainer_runner(name: str, method: str) -> Runner:
        t = trainer()  # its own Trainer: the first call compiles its own program
        call = getattr(t, method)
        p = _copy(params)  # a fresh state per runner: each donates its own buffers
        ts = jax.tree.map(lambda a: a.copy(), template)
        box = {"ts": ts._replace(params=p, opt_state=t.optimizer.init(p)), "loss": None}

        def run(k: int) -> None:
            ts, m = box["ts"], None
            for _ in range(k):
                ts, m = call(ts, x, y)
            _block(ts)
            box["ts"], box["loss"] = ts, m["loss"]

        def cost() -> dict:  # Trainer.step runs the compiled Trainer._step, then checks
            return xla_cost(t._step.lower(box["ts"], x, y).compile())

        return Runner(name, "fdl", run, lambda: float(box["loss"]), flops=flops,
                      cost=cost if hasattr(t, "_step") else None)

    runners.append(trainer_runner("fdl Trainer.step", "step"))
    if hasattr(trainer(), "_step"):  # the same jitted program without Trainer.step's host check
        runners.append(trainer_runner("fdl Trainer._step (no host check)", "_step"))
    if bf16:
        t = trainer(compute_dtype=jnp.bfloat16)
        p = _copy(params)
        runners.append(jit_runner("fdl bf16", "fdl", fdl_step(t, model_state),
                                  (p, t.optimizer.init(p)), x, y, dtype="bfloat16", flops=flops))
    return runners


def fdl_mlp(sizes: Sequence[int]) -> L.Layer:
    """The benchmark MLP in fdl: He-normal hidden, Glorot-uniform output (as fdl.layers.mlp)."""
    layers = []
    for h in sizes[1:-1]:
        layers += [L.Dense(h, w_init="he_normal"), L.Relu()]
    layers.append(L.Dense(sizes[-1], w_init="glorot_uniform"))
    return L.serial(*layers)


def _dense_list(params: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """fdl serial params → [(w, b), …] in layer order (numpy)."""
    keys = sorted((k for k in params if params[k]), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [tuple(np.array(params[k][n]) for n in ("w", "b")) for k in keys]


# --------------------------------------------------------------------------- #
# MLP peers
# --------------------------------------------------------------------------- #


def _jax_mlp(params: list, x: jax.Array) -> jax.Array:
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def jax_mlp_runner(dense: list, x: Any, y: Any, flops: float, *, bf16: bool = False) -> Runner:
    def loss_fn(params, x, y):
        if bf16:
            params, x = _bf16(params), x.astype(jnp.bfloat16)
        return _ce(_jax_mlp(params, x), y)

    def step(state, x, y):
        params, opt = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, opt = _adam_update(grads, opt, params)
        return (params, opt), loss

    params = _copy([(w, b) for w, b in dense])
    return jit_runner("jax bf16" if bf16 else "jax (grad + hand-written Adam)", "jax",
                      jax.jit(step, donate_argnums=0), (params, _adam_init(params)), x, y,
                      dtype="bfloat16" if bf16 else "float32", flops=flops)


def _stax_runner(mods: dict, layers: list, params: list, x: Any, y: Any, flops: float) -> Runner:
    stax, optimizers = mods["stax"]
    _, apply = stax.serial(*layers)
    opt_init, opt_update, get_params = optimizers.adam(LR, B1, B2, EPS)

    def step(state, x, y):
        i, opt_state = state
        loss, grads = jax.value_and_grad(lambda p: _ce(apply(p, x), y))(get_params(opt_state))
        return (i + 1, opt_update(i, grads, opt_state)), loss

    return jit_runner("stax + example_libraries.optimizers", "jax",
                      jax.jit(step, donate_argnums=0),
                      (jnp.zeros((), jnp.int32), opt_init(_copy(params))), x, y, flops=flops)


def stax_mlp_runner(mods: dict, dense: list, x: Any, y: Any, flops: float) -> Runner:
    stax = mods["stax"][0]
    layers, params = [], []
    for w, b in dense[:-1]:
        layers += [stax.Dense(w.shape[1]), stax.Relu]
        params += [(w, b), ()]
    layers.append(stax.Dense(dense[-1][0].shape[1]))
    params.append(dense[-1])
    return _stax_runner(mods, layers, params, x, y, flops)


def _optax_runner(name: str, mods: dict, loss_fn: Callable, params: Any, x: Any, y: Any,
                  flops: float, dtype: str = "float32") -> Runner:
    optax = mods["optax"]
    tx = optax.adam(LR, b1=B1, b2=B2, eps=EPS)

    def step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    params = _copy(params)
    return jit_runner(name, "jax", jax.jit(step, donate_argnums=0), (params, tx.init(params)),
                      x, y, dtype=dtype, flops=flops)


def flax_mlp_runner(mods: dict, dense: list, x: Any, y: Any, flops: float, *,
                    bf16: bool = False) -> Runner:
    nn, optax = mods["flax"], mods["optax"]
    sizes = [dense[0][0].shape[0]] + [w.shape[1] for w, _ in dense]
    dtype = jnp.bfloat16 if bf16 else jnp.float32

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for h in sizes[1:-1]:
                x = nn.relu(nn.Dense(h, dtype=dtype)(x))
            return nn.Dense(sizes[-1], dtype=dtype)(x)

    model = MLP()
    params = {"params": {f"Dense_{i}": {"kernel": w, "bias": b} for i, (w, b) in enumerate(dense)}}

    def loss_fn(params, x, y):
        logits = model.apply(params, x).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return _optax_runner("flax bf16" if bf16 else "flax.linen + optax", mods, loss_fn, params,
                         x, y, flops, "bfloat16" if bf16 else "float32")


def _eqx_runner(mods: dict, model: Any, x: Any, y: Any, flops: float) -> Runner:
    eqx, optax = mods["equinox"], mods["optax"]
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_fn(params, x, y):
        logits = jax.vmap(eqx.combine(params, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return _optax_runner("equinox + optax", mods, loss_fn, params, x, y, flops)


def _eqx_linear(eqx: Any, w: np.ndarray, b: np.ndarray) -> Any:
    lin = eqx.nn.Linear(w.shape[0], w.shape[1], key=jax.random.key(0))
    return eqx.tree_at(lambda l: (l.weight, l.bias), lin, (jnp.asarray(w.T), jnp.asarray(b)))


def eqx_mlp_runner(mods: dict, dense: list, x: Any, y: Any, flops: float) -> Runner:
    eqx = mods["equinox"]

    class MLP(eqx.Module):
        layers: tuple

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.relu(layer(x))
            return self.layers[-1](x)

    model = MLP(tuple(_eqx_linear(eqx, w, b) for w, b in dense))
    return _eqx_runner(mods, model, x, y, flops)


def _torch_runner(name: str, torch: Any, model: Any, x: np.ndarray, y: np.ndarray,
                  flops: float, *, bf16: bool = False) -> Runner:
    dev = _torch_device(torch)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(dev)
    box = {"loss": None}
    cast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else \
        contextlib.nullcontext

    def run(k: int) -> None:
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            with cast():
                logits = model(xt)
            loss = torch.nn.functional.cross_entropy(logits.float(), yt)
            loss.backward()
            opt.step()
        _torch_sync(torch)
        box["loss"] = loss

    return Runner(name, "torch", run, lambda: float(box["loss"].detach().cpu()),
                  "bfloat16" if bf16 else "float32", flops)


def torch_mlp_runner(torch: Any, dense: list, x: np.ndarray, y: np.ndarray, flops: float, *,
                     bf16: bool = False) -> Runner:
    nn = torch.nn
    mods = []
    for i, (w, b) in enumerate(dense):
        lin = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        if i < len(dense) - 1:
            mods.append(nn.ReLU())
    return _torch_runner("torch bf16 (autocast)" if bf16 else "torch eager", torch,
                         nn.Sequential(*mods), x, y, flops, bf16=bf16)


def mlp_runners(cfg: MLPConfig, mods: dict, settings: Settings, notes: list[str]) -> list[Runner]:
    model = fdl_mlp(cfg.sizes)
    _, params, model_state = jax.jit(model.init, static_argnums=1)(jax.random.key(0),
                                                                   (cfg.sizes[0],))
    dense = _dense_list(params)
    xn, yn = _batch(1, (cfg.sizes[0],), cfg.sizes[-1], cfg.batch)
    x, y = jnp.asarray(xn), jnp.asarray(yn)
    runners = fdl_runners(model, params, model_state, x, y, flops=cfg.flops, bf16=settings.bf16,
                          input_shape=(cfg.sizes[0],))
    builders = {
        "jax": lambda: [jax_mlp_runner(dense, x, y, cfg.flops)]
        + ([jax_mlp_runner(dense, x, y, cfg.flops, bf16=True)] if settings.bf16 else []),
        "stax": lambda: [stax_mlp_runner(mods, dense, x, y, cfg.flops)],
        "flax": lambda: [flax_mlp_runner(mods, dense, x, y, cfg.flops)]
        + ([flax_mlp_runner(mods, dense, x, y, cfg.flops, bf16=True)] if settings.bf16 else []),
        "equinox": lambda: [eqx_mlp_runner(mods, dense, x, y, cfg.flops)],
        "torch": lambda: [torch_mlp_runner(mods["torch"], dense, xn, yn, cfg.flops)]
        + ([torch_mlp_runner(mods["torch"], dense, xn, yn, cfg.flops, bf16=True)]
           if settings.bf16 else []),
    }
    return runners + _build_peers(builders, mods, notes)


def _build_peers(builders: dict[str, Callable[[], list[Runner]]], mods: dict,
                 notes: list[str]) -> list[Runner]:
    out = []
    for name, build in builders.items():
        if name not in mods:
            continue
        try:
            out += build()
        except Exception as e:
            notes.append(f"{name}: skipped, failed to build: {type(e).__name__}: {_short(e)}")
    return out


# --------------------------------------------------------------------------- #
# The small CNN
# --------------------------------------------------------------------------- #


def _fdl_cnn(cfg: CNNConfig) -> L.Layer | None:
    """The CNN from fdl.layers, or None when fdl.layers has no Conv2D/MaxPool2D yet."""
    conv, pool = getattr(L, "Conv2D", None), getattr(L, "MaxPool2D", None)
    if conv is None or pool is None:
        return None
    c1, c2 = cfg.channels
    return L.serial(conv(c1, (3, 3), padding="SAME", w_init="he_normal"), L.Relu(), pool((2, 2)),
                    conv(c2, (3, 3), padding="SAME", w_init="he_normal"), L.Relu(), pool((2, 2)),
                    L.Flatten(), L.Dense(cfg.classes))


def _cnn_params_numpy(cfg: CNNConfig) -> dict:
    """He-normal conv kernels (HWIO), Glorot-uniform dense, zero biases."""
    rng = np.random.default_rng(0)
    c0, (c1, c2) = cfg.in_channels, cfg.channels

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)

    lim = math.sqrt(6.0 / (cfg.flat + cfg.classes))
    return {"conv1": (he((3, 3, c0, c1), 9 * c0), np.zeros(c1, np.float32)),
            "conv2": (he((3, 3, c1, c2), 9 * c1), np.zeros(c2, np.float32)),
            "dense": (rng.uniform(-lim, lim, (cfg.flat, cfg.classes)).astype(np.float32),
                      np.zeros(cfg.classes, np.float32))}


def _fdl_cnn_params(cfg: CNNConfig, params: dict) -> dict | None:
    """fdl CNN params → {"conv1", "conv2", "dense"} (numpy), if they look as expected."""
    leaves = [params[k] for k in sorted(params, key=lambda k: int(k.rsplit("_", 1)[1]))
              if params[k]]
    if len(leaves) != 3 or any(set(p) != {"w", "b"} for p in leaves):
        return None
    out = {n: (np.array(p["w"]), np.array(p["b"])) for n, p in
           zip(("conv1", "conv2", "dense"), leaves)}
    c0, (c1, c2) = cfg.in_channels, cfg.channels
    if out["conv1"][0].shape != (3, 3, c0, c1) or out["conv2"][0].shape != (3, 3, c1, c2):
        return None
    return out


def _jax_cnn(p: dict, x: jax.Array) -> jax.Array:
    dn = ("NHWC", "HWIO", "NHWC")
    for name in ("conv1", "conv2"):
        w, b = p[name]
        x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn) + b
        x = jax.nn.relu(x)
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    w, b = p["dense"]
    return x.reshape(x.shape[0], -1) @ w + b


def _nchw_dense(cfg: CNNConfig, w: np.ndarray) -> np.ndarray:
    """Dense rows ordered (h, w, c) as NHWC flattens → (c, h, w) as NCHW flattens."""
    s = cfg.hw // 4
    return w.reshape(s, s, cfg.channels[1], -1).transpose(2, 0, 1, 3).reshape(cfg.flat, -1)


def cnn_runners(cfg: CNNConfig, mods: dict, settings: Settings, notes: list[str]) -> list[Runner]:
    xn, yn = _batch(2, (cfg.hw, cfg.hw, cfg.in_channels), cfg.classes, cfg.batch)
    x, y = jnp.asarray(xn), jnp.asarray(yn)
    runners: list[Runner] = []
    model, p = None, None
    try:
        model = _fdl_cnn(cfg)
    except Exception as e:
        notes.append(f"CNN, fdl rows: skipped, fdl.layers.Conv2D/MaxPool2D could not be built as "
                     f"Conv2D(features, (3, 3), padding='SAME', w_init='he_normal'), "
                     f"MaxPool2D((2, 2)): "
                     f"{type(e).__name__}: {_short(e)}")
    if model is None and not any("CNN, fdl" in n for n in notes):
        notes.append("CNN, fdl rows: skipped, fdl.layers has no Conv2D/MaxPool2D yet "
                     "(the peers' rows are measured alone)")
    if model is not None:
        _, params, model_state = model.init(jax.random.key(0), (cfg.hw, cfg.hw, cfg.in_channels))
        p = _fdl_cnn_params(cfg, params)
        if p is None:
            notes.append("CNN: fdl's Conv2D params are not {'w': HWIO, 'b'}; the peers start "
                         "from their own copy of a numpy initialisation")
        runners += fdl_runners(model, params, model_state, x, y, flops=cfg.flops, bf16=False,
                               input_shape=(cfg.hw, cfg.hw, cfg.in_channels))
    if p is None:
        p = _cnn_params_numpy(cfg)
    xc = np.ascontiguousarray(xn.transpose(0, 3, 1, 2))  # NCHW for equinox and torch

    def jax_cnn():
        def step(state, x, y):
            params, opt = state
            loss, grads = jax.value_and_grad(lambda q: _ce(_jax_cnn(q, x), y))(params)
            params, opt = _adam_update(grads, opt, params)
            return (params, opt), loss
        params = _copy(p)
        return [jit_runner("jax (grad + hand-written Adam)", "jax", jax.jit(step, donate_argnums=0),
                           (params, _adam_init(params)), x, y, flops=cfg.flops)]

    def stax_cnn():
        stax = mods["stax"][0]
        layers = [stax.Conv(cfg.channels[0], (3, 3), padding="SAME"), stax.Relu,
                  stax.MaxPool((2, 2), strides=(2, 2)),
                  stax.Conv(cfg.channels[1], (3, 3), padding="SAME"), stax.Relu,
                  stax.MaxPool((2, 2), strides=(2, 2)), stax.Flatten, stax.Dense(cfg.classes)]
        params = [(p["conv1"][0], p["conv1"][1].reshape(1, 1, 1, -1)), (), (),
                  (p["conv2"][0], p["conv2"][1].reshape(1, 1, 1, -1)), (), (), (), p["dense"]]
        return [_stax_runner(mods, layers, params, x, y, cfg.flops)]

    def flax_cnn():
        nn, optax = mods["flax"], mods["optax"]

        class CNN(nn.Module):
            @nn.compact
            def __call__(self, x):
                for c in cfg.channels:
                    x = nn.max_pool(nn.relu(nn.Conv(c, (3, 3), padding="SAME")(x)), (2, 2), (2, 2))
                return nn.Dense(cfg.classes)(x.reshape(x.shape[0], -1))

        model = CNN()
        params = {"params": {f"Conv_{i}": {"kernel": p[n][0], "bias": p[n][1]}
                             for i, n in enumerate(("conv1", "conv2"))}}
        params["params"]["Dense_0"] = {"kernel": p["dense"][0], "bias": p["dense"][1]}

        def loss_fn(params, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

        return [_optax_runner("flax.linen + optax", mods, loss_fn, params, x, y, cfg.flops)]

    def eqx_cnn():
        eqx = mods["equinox"]

        def conv(w, b):  # HWIO → OIHW, bias (O, 1, 1)
            layer = eqx.nn.Conv2d(w.shape[2], w.shape[3], 3, padding=1, key=jax.random.key(0))
            new = (jnp.asarray(w.transpose(3, 2, 0, 1)), jnp.asarray(b)[:, None, None])
            return eqx.tree_at(lambda l: (l.weight, l.bias), layer, new)

        class CNN(eqx.Module):
            conv1: Any
            conv2: Any
            dense: Any
            pool: Any

            def __call__(self, x):  # one example, CHW
                x = self.pool(jax.nn.relu(self.conv1(x)))
                x = self.pool(jax.nn.relu(self.conv2(x)))
                return self.dense(x.reshape(-1))

        model = CNN(conv(*p["conv1"]), conv(*p["conv2"]),
                    _eqx_linear(eqx, _nchw_dense(cfg, p["dense"][0]), p["dense"][1]),
                    eqx.nn.MaxPool2d(2, 2))
        return [_eqx_runner(mods, model, jnp.asarray(xc), y, cfg.flops)]

    def torch_cnn():
        torch = mods["torch"]
        nn = torch.nn
        c0, (c1, c2) = cfg.in_channels, cfg.channels
        net = nn.Sequential(nn.Conv2d(c0, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(cfg.flat, cfg.classes))
        with torch.no_grad():
            for layer, (w, b) in ((net[0], p["conv1"]), (net[3], p["conv2"])):
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))))
                layer.bias.copy_(torch.from_numpy(b))
            dense_w = np.ascontiguousarray(_nchw_dense(cfg, p["dense"][0]).T)
            net[7].weight.copy_(torch.from_numpy(dense_w))
            net[7].bias.copy_(torch.from_numpy(p["dense"][1]))
        return [_torch_runner("torch eager", torch, net, xc, yn, cfg.flops)]

    builders = {"jax": jax_cnn, "stax": stax_cnn, "flax": flax_cnn, "equinox": eqx_cnn,
                "torch": torch_cnn}
    return runners + _build_peers(builders, mods, notes)


# --------------------------------------------------------------------------- #
# Sections
# --------------------------------------------------------------------------- #


def section_peak(settings: Settings, mods: dict) -> dict:
    """float32 (and, with bf16 rows, bfloat16) matmul throughput: the reference peak."""
    n = settings.peak_n
    notes: list[str] = []
    rng = np.random.default_rng(0)
    an, bn = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    dtypes = [jnp.float32] + ([jnp.bfloat16] if settings.bf16 else [])
    runners = [matmul_runner(n, dt) for dt in dtypes]
    if "torch" in mods:
        torch = mods["torch"]
        dev = _torch_device(torch)
        tdt = [torch.float32] + ([torch.bfloat16] if settings.bf16 else [])
        for dt in tdt:
            ta = torch.from_numpy(an).to(dev, dt)
            tb = torch.from_numpy(bn).to(dev, dt)

            def trun(k: int, ta=ta, tb=tb) -> None:
                for _ in range(k):
                    torch.mm(ta, tb)
                _torch_sync(torch)

            runners.append(Runner(f"torch.mm {n}x{n}", "torch", trun,
                                  dtype=str(dt).replace("torch.", ""), flops=2.0 * n ** 3))
    rows = measure(runners, settings, notes=notes)
    peak = {r["dtype"]: r["gflops"] for r in rows if r["group"] == "jax"}
    return {"title": f"float32 matmul peak ({n}x{n}, jitted, median over rounds)", "rows": rows,
            "peak_gflops": peak, "notes": notes}


def matmul_runner(n: int, dtype: Any = jnp.float32, group: str = "jax",
                  name: str | None = None) -> Runner:
    """``n×n @ n×n`` jitted: ``2n³`` FLOPs per call."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n), dtype=np.float32), dtype) for _ in range(2))
    f = jax.jit(jnp.matmul)

    def run(k: int) -> None:
        out = None
        for _ in range(k):
            out = f(a, b)
        _block(out)

    return Runner(name or f"jax matmul {n}x{n}", group, run, dtype=jnp.dtype(dtype).name,
                  flops=2.0 * n ** 3)


REF = "ref"  # the group of the matmul interleaved into every step section


def section_step(cfg: Any, settings: Settings, mods: dict, peak: dict[str, float]) -> dict:
    notes: list[str] = []
    build = mlp_runners if isinstance(cfg, MLPConfig) else cnn_runners
    n = settings.peak_n
    runners = build(cfg, mods, settings, notes)
    if cfg.name == "C":  # the %-of-peak target: measure the peak in the same rounds
        runners.insert(0, matmul_runner(n, group=REF, name=f"matmul {n}x{n} (peak, interleaved)"))
    rows = measure(runners, settings, notes=notes)
    here = next((r for r in rows if r["group"] == REF), None)
    if here is not None:  # the peak under this section's own conditions
        peak = dict(peak, float32=here["gflops"])
    _add_ratios(rows, peak)
    _check_losses(rows, notes)
    return {"title": f"{cfg.name}: {cfg.label}", "config": cfg.__dict__ | {"flops": cfg.flops},
            "rows": rows, "notes": notes, "peak_interleaved": here is not None,
            "flop_convention": ("6·batch·Σ d_in·d_out" if isinstance(cfg, MLPConfig)
                                else "3 × forward FLOPs")}


def paired_ratio(a: dict, b: dict) -> tuple[float, float, float] | None:
    """Quartiles of ``a``'s time over ``b``'s, round by round (each round times every
    variant once, so the pairs share the machine's conditions and load drift cancels)."""
    n = min(len(a["samples_s"]), len(b["samples_s"]))
    if n == 0:
        return None
    q = np.percentile(np.asarray(a["samples_s"][:n]) / np.asarray(b["samples_s"][:n]),
                      [25, 50, 75])
    return float(q[1]), float(q[0]), float(q[2])


def _add_ratios(rows: list[dict], peak: dict[str, float]) -> None:
    """vs fastest JAX peer and vs fdl autodiff (same dtype; medians of per-round ratios),
    % of matmul peak (same dtype)."""
    for dt in {r["dtype"] for r in rows}:
        same = [r for r in rows if r["dtype"] == dt]
        peers = [r for r in same if r["group"] == "jax"]
        fastest = min(peers, key=lambda r: r["median_s"]) if peers else None
        auto = next((r for r in rows if r["variant"] == "fdl autodiff"), None) \
            if dt == "float32" else None
        for r in same:
            for key, ref in (("vs_fastest_jax_peer", fastest), ("vs_fdl_autodiff", auto)):
                q = paired_ratio(r, ref) if ref else None
                r[key] = q[0] if q else None
                r[key + "_iqr"] = [q[1], q[2]] if q else None
            r["fastest_jax_peer"] = fastest["variant"] if fastest else None
            p = peak.get(dt)
            r["pct_of_peak"] = 100.0 * r["gflops"] / p if p and "gflops" in r else None
            if r["group"] == REF:
                r["vs_fastest_jax_peer"] = r["vs_fdl_autodiff"] = None


def _check_losses(rows: list[dict], notes: list[str]) -> None:
    """Every float32 variant starts from the same params: their first losses must agree."""
    ref = next((r["loss0"] for r in rows if r["variant"] == "fdl" and r["loss0"] is not None),
               None)
    if ref is None:
        ref = next((r["loss0"] for r in rows if r["loss0"] is not None), None)
    for r in rows:
        if r["dtype"] == "float32" and r["loss0"] is not None and ref is not None:
            if abs(r["loss0"] - ref) > 1e-4 * max(1.0, abs(ref)):
                notes.append(f"{r['variant']}: first-step loss {r['loss0']:.6f} differs from "
                             f"fdl's {ref:.6f}: the variants may not compute the same model")


# -- digits -------------------------------------------------------------------


def _digits_trainer(hidden: Sequence[int] = (512,)) -> tuple[Any, Any]:
    """The `fdl train` defaults: mlp(512, relu, dropout 0.3), Adam 1e-3, batch 64, seed 0."""
    dataset, _ = fdl.data.standardize_dataset(fdl.data.load("digits", flatten=True))
    model = L.mlp(list(hidden), dataset.num_classes, activation="relu", dropout=0.3)
    trainer = fdl.train.Trainer(model, fdl.optim.get_optimizer("adam", learning_rate=1e-3),
                                loss=fdl.losses.softmax_cross_entropy)
    return dataset, trainer


def section_digits(settings: Settings) -> dict:
    notes: list[str] = []
    batch = 64
    dataset, trainer = _digits_trainer()
    x, y = jax.device_put(dataset.x_train), jax.device_put(dataset.y_train)
    n_batches = x.shape[0] // batch

    @jax.jit
    def shuffle(key):  # one dispatch per epoch: the batches as separate arrays
        xb, yb = fdl.data.shuffled_batches(key, (x, y), batch)
        return [(xb[i], yb[i]) for i in range(n_batches)]

    template = trainer.init(jax.random.key(0), dataset.input_shape)

    def epoch_runner(name: str, one_epoch: Callable) -> Runner:
        box = {"ts": jax.tree.map(lambda a: a.copy(), template)}  # each runner donates its own

        def run(k: int) -> None:
            ts = box["ts"]
            for _ in range(k):
                ts = one_epoch(ts)
            _block(ts)
            box["ts"] = ts

        return Runner(name, "fdl", run)

    def scan_epoch(ts):
        return trainer.epoch(ts, x, y, batch_size=batch)[0]

    auto_trainer = _digits_trainer()[1]  # its own jit cache, traced in autodiff mode

    def scan_epoch_autodiff(ts):
        with fdl.gradient_mode("autodiff"):
            return auto_trainer.epoch(ts, x, y, batch_size=batch)[0]

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
            idx = perm[i * batch:(i + 1) * batch]
            ts, m = trainer.step(ts, xh[idx], yh[idx])
            float(m["loss"])
        return ts._replace(epoch=ts.epoch + 1)

    runners = [epoch_runner("epoch as one lax.scan (Trainer.epoch)", scan_epoch),
               epoch_runner("epoch as one lax.scan (Trainer.epoch), autodiff mode",
                            scan_epoch_autodiff),
               epoch_runner("Python loop of Trainer.step", loop_epoch(trainer.step))]
    if hasattr(trainer, "_step"):
        runners.append(epoch_runner("Python loop of Trainer._step (no host check)",
                                    loop_epoch(trainer._step)))
    runners.append(epoch_runner("Python loop of Trainer.step, numpy batches, float(loss) each step",
                                host_loop_epoch))
    noop = jax.jit(lambda ts, xb, yb: (ts, {"loss": jnp.zeros(()), "all_finite": jnp.ones((), bool)}),
                   donate_argnums=(0,))
    runners.append(epoch_runner(_NOOP_LOOP, loop_epoch(noop)))
    rows = measure(runners, settings, notes=notes)
    scan = next((r for r in rows if r["variant"] == "epoch as one lax.scan (Trainer.epoch)"),
                None)
    for r in rows:
        q = paired_ratio(r, scan) if scan else None
        r["x_slower_than_scan"] = q[0] if q else None
        r["x_slower_than_scan_iqr"] = [q[1], q[2]] if q else None
    # the matmul FLOPs of one step: forward x·W₁, h·W₂; backward ∂W₁ = xᵀδ₁, ∂W₂ = hᵀδ₂,
    # ∂h = δ₂W₂ᵀ (no input gradient)
    d_in, hidden, d_out = dataset.input_shape[0], 512, dataset.num_classes
    flops = 2 * batch * (2 * d_in * hidden + 3 * hidden * d_out)
    result = {"title": f"digits MLP 64-512-10, batch {batch}, {n_batches} steps per epoch: "
                       "time per epoch", "rows": rows, "notes": notes,
              "steps_per_epoch": n_batches, "flops_per_step": flops}
    result["fit"] = _fit_to_97(notes)
    if settings.cli:
        result["cli"] = _cli_runs(settings, result["fit"], notes)
    else:
        notes.append("fdl train subprocess: skipped (--no-cli)")
    return result


_NOOP_LOOP = "Python loop of a jitted no-op step (dispatch overhead only)"


def scan_bound(digits: dict, peak_gflops: float | None) -> dict | None:
    """What limits epoch-as-scan vs the per-step loop. With ``o`` the loop's extra cost
    per step (loop − scan) and ``c`` the scan's step, ``loop/scan = 1 + o/c``: reaching
    5× needs ``c ≤ o/4``. Reports ``o``, the part of it that is bare dispatch (the no-op
    row), ``c``, and the step's matmul FLOPs at the measured matmul peak (a floor on ``c``)."""
    scan = _row(digits, "epoch as one lax.scan (Trainer.epoch)")
    loop = _row(digits, "Python loop of Trainer.step")
    noop = _row(digits, _NOOP_LOOP)
    n = digits.get("steps_per_epoch")
    if scan is None or loop is None or noop is None or not n:
        return None
    extra_us = (loop["median_s"] - scan["median_s"]) / n * 1e6
    out = {"loop_extra_us_per_step": extra_us,
           "dispatch_overhead_us_per_step": noop["median_s"] / n * 1e6,
           "scan_us_per_step": scan["median_s"] / n * 1e6,
           "scan_us_per_step_needed_for_5x": extra_us / 4}
    if peak_gflops:
        out["matmul_floor_us_per_step"] = digits["flops_per_step"] / (peak_gflops * 1e9) * 1e6
    return out


def _fit_to_97(notes: list[str], max_epochs: int = 60) -> dict:
    """In-process: build, compile and train epoch by epoch until test accuracy ≥ 97%."""
    t0 = time.perf_counter()
    dataset, trainer = _digits_trainer()
    ts = trainer.init(jax.random.key(0), dataset.input_shape)
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


def _run_cli(args: list[str], cache_dir: str, label: str, timeout: float = 300.0) -> dict:
    """Run ``python -m fdl.cli train ARGS``; timestamp each stdout line from process start.

    ``cache_dir`` is passed as ``FDL_CACHE_DIR`` (the CLI's persistent XLA compilation
    cache, where the CLI has one): an empty directory gives a cold start."""
    cmd = [sys.executable, "-m", "fdl.cli", "train", "--checkpoint", "", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", FDL_CACHE_DIR=cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=tmp, env=env)
        first97, final_acc, lines = None, None, []
        assert proc.stdout is not None
        for line in proc.stdout:
            t = time.perf_counter() - t0
            lines.append(line.rstrip())
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


def _cli_runs(settings: Settings, fit: dict, notes: list[str]) -> list[dict]:
    """`fdl train` from process start, its epoch lines timestamped (the first ≥ 97%): with an
    empty compilation cache (cold), then again with the cache the first run filled (warm);
    and a --quiet run of just the epochs that reached 97% in-process (warm)."""
    runs = []
    epochs = ["--epochs", "15"] if settings.quick else []  # default: the CLI's 40 epochs
    with tempfile.TemporaryDirectory() as cache:
        runs.append(_run_cli(epochs, cache, "cold compilation cache"))
        runs.append(_run_cli(epochs, cache, "warm compilation cache"))
        if fit["reached"] and not settings.quick:
            runs.append(_run_cli(["--quiet", "--epochs", str(fit["epochs"])], cache,
                                 "warm compilation cache, stop at the epoch reaching 97%"))
    for r in runs:
        if r["returncode"] != 0:
            notes.append(f"`{r['command']}` exited {r['returncode']}: {r['stderr_tail']}")
    return runs


# -- per-example gradients ------------------------------------------------------


def _global_norms(grads: Any) -> jax.Array:
    """Per-example L2 norm over every leaf (each leaf has a leading batch axis)."""
    sq = [jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)
          for g in jax.tree_util.tree_leaves(grads)]
    return jnp.sqrt(sum(sq[1:], sq[0]))


def _ghost_norms_jax(dense: list, x: jax.Array, y: jax.Array) -> jax.Array:
    """Plain-JAX reference without materialising: for a dense layer Z = AW + b the
    per-example gradient is a_i ⊗ g_i, so ‖∂ℓ_i/∂W‖² = ‖a_i‖²‖g_i‖² and
    ‖∂ℓ_i/∂b‖² = ‖g_i‖²,
    with g_i = ∂(Σ ℓ)/∂z_i from one backward pass w.r.t. zero perturbations of each Z."""
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
    cfg = CPU_CONFIGS["A"]  # the target's configuration (GPU sizes would not fit materialised)
    notes: list[str] = []
    model = fdl_mlp(cfg.sizes)
    _, params, model_state = model.init(jax.random.key(0), (cfg.sizes[0],))
    dense = _dense_list(params)
    xn, yn = _batch(3, (cfg.sizes[0],), cfg.sizes[-1], cfg.batch)
    x, y = jnp.asarray(xn), jnp.asarray(yn)

    def loss_fn(p, xb, yb):
        out, _ = model.apply(p, model_state, xb)
        return fdl.losses.softmax_cross_entropy(out, yb)

    fns: dict[str, tuple[Callable, tuple]] = {}
    fns["per-example grads, vmap (materialised, fdl.train.per_example_grads)"] = (
        jax.jit(lambda p, xb, yb: fdl.train.per_example_grads(loss_fn, p, xb, yb)), (params,))
    fns["per-example grad norms, vmap materialisation then norms (fdl)"] = (
        jax.jit(lambda p, xb, yb: _global_norms(fdl.train.per_example_grads(loss_fn, p, xb, yb))),
        (params,))
    privacy = None
    try:
        privacy = importlib.import_module("fdl.privacy")
    except ImportError:
        notes.append("fdl.privacy.per_example_grad_norms: skipped (fdl.privacy does not exist yet)")
    if privacy is not None and not hasattr(privacy, "per_example_grad_norms"):
        notes.append("fdl.privacy.per_example_grad_norms: skipped (fdl.privacy has no "
                     "per_example_grad_norms yet)")
        privacy = None
    if privacy is not None:
        pe_norms = privacy.per_example_grad_norms
        first = next(iter(inspect.signature(pe_norms).parameters), "")
        if first == "model":  # per_example_grad_norms(model, params, state, x, y)
            fns["fdl.privacy.per_example_grad_norms"] = (
                jax.jit(lambda p, xb, yb: pe_norms(model, p, model_state, xb, yb)), (params,))
        else:  # per_example_grad_norms(loss_fn, params, x, y), as fdl.train.per_example_grads
            fns["fdl.privacy.per_example_grad_norms"] = (
                jax.jit(lambda p, xb, yb: pe_norms(loss_fn, p, xb, yb)), (params,))
    if "jax" in mods:
        def jax_loss(p, xb, yb):
            return _ce(_jax_mlp(p, xb), yb)
        jdense = _copy(dense)
        fns["per-example grad norms, plain JAX vmap materialisation then norms"] = (
            jax.jit(lambda p, xb, yb: _global_norms(
                jax.vmap(lambda xi, yi: jax.grad(jax_loss)(p, xi[None], yi[None]))(xb, yb))),
            (jdense,))
        fns["per-example grad norms, plain JAX without materialising (reference)"] = (
            jax.jit(_ghost_norms_jax), (jdense,))

    runners, outputs = [], {}

    def runner(name: str, fn: Callable, args: tuple) -> Runner:
        def run(k: int) -> None:
            out = None
            for _ in range(k):
                out = fn(*args, x, y)
            _block(out)
            outputs[name] = out
        return Runner(name, "fdl" if "fdl" in name else "jax", run)

    runners = [runner(name, fn, args) for name, (fn, args) in fns.items()]
    rows = measure(runners, settings, notes=notes)
    base_name = "per-example grad norms, vmap materialisation then norms (fdl)"
    base = next((r for r in rows if r["variant"] == base_name), None)
    ref = outputs.get(base_name)
    for r in rows:
        r["x_faster_than_vmap"] = base["median_s"] / r["median_s"] if base else None
        out = outputs.get(r["variant"])
        if ref is not None and out is not None and "grads," not in r["variant"]:
            try:
                out = jnp.asarray(out).reshape(ref.shape)
                r["max_rel_err_vs_vmap"] = float(jnp.max(jnp.abs(out - ref) / jnp.abs(ref)))
            except Exception as e:
                notes.append(f"{r['variant']}: output not comparable with the vmap norms "
                             f"({type(e).__name__}: {_short(e)})")
    return {"title": f"per-example gradients on {cfg.label} (float32, manual rules)",
            "rows": rows, "notes": notes}


# --------------------------------------------------------------------------- #
# Targets
# --------------------------------------------------------------------------- #


def _row(section: dict | None, variant: str) -> dict | None:
    if not section:
        return None
    return next((r for r in section["rows"] if r["variant"] == variant), None)


def _iqr(row: dict, key: str) -> str:
    q = row.get(key + "_iqr")
    return f" (median of per-round ratios; IQR {q[0]:.3f}–{q[1]:.3f})" if q else ""


def evaluate_targets(sections: dict[str, dict]) -> list[dict]:
    """Each target of the issue: value, met (True/False) or None when not measured."""
    out = []

    def add(name: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "met": met, "detail": detail})

    for s in ("A", "B", "C"):
        if s not in sections:
            continue
        r = _row(sections.get(s), "fdl")
        if r is None or r.get("vs_fastest_jax_peer") is None:
            add(f"{s}: fdl step ≤ 1.0× fastest JAX peer", None,
                "fdl row missing" if r is None else "no JAX peer measured")
        else:
            v = r["vs_fastest_jax_peer"]
            add(f"{s}: fdl step ≤ 1.0× fastest JAX peer", v <= 1.0,
                f"{v:.3f}× {r['fastest_jax_peer']}{_iqr(r, 'vs_fastest_jax_peer')}")
    for s in STEP_SECTIONS:
        r = _row(sections.get(s), "fdl")
        if r is None or r.get("vs_fdl_autodiff") is None:
            continue
        v = r["vs_fdl_autodiff"]
        add(f"{s}: manual rules ≤ 1.02× fdl autodiff", v <= 1.02,
            f"{v:.3f}×{_iqr(r, 'vs_fdl_autodiff')}")
    r = _row(sections.get("C"), "fdl")
    if "C" in sections and (r is None or r.get("pct_of_peak") is None):
        add("C: fdl ≥ 80% of float32 matmul peak", None, "no peak measured")
    elif r is not None:
        add("C: fdl ≥ 80% of float32 matmul peak", r["pct_of_peak"] >= 80.0,
            f"{r['pct_of_peak']:.1f}%")
    d = sections.get("digits")
    loop = _row(d, "Python loop of Trainer.step")
    if d is not None and (loop is None or loop.get("x_slower_than_scan") is None):
        add("digits: epoch-as-scan ≥ 5× faster than the per-step loop", None, "not measured")
    elif loop is not None:
        v = loop["x_slower_than_scan"]
        detail = f"{v:.2f}×{_iqr(loop, 'x_slower_than_scan')}"
        peak = ((sections.get("peak") or {}).get("peak_gflops") or {}).get("float32")
        b = scan_bound(d, peak)
        if b is not None:
            detail += (f"; the loop costs {b['loop_extra_us_per_step']:.0f} µs per step more "
                       f"than the scan (bare dispatch {b['dispatch_overhead_us_per_step']:.0f} "
                       f"µs), so 5× needs a scan step ≤ "
                       f"{b['scan_us_per_step_needed_for_5x']:.0f} µs; it is "
                       f"{b['scan_us_per_step']:.0f} µs")
            if "matmul_floor_us_per_step" in b:
                detail += (f" (its matmuls alone: {b['matmul_floor_us_per_step']:.0f} µs at "
                           f"the 4096² matmul peak)")
        add("digits: epoch-as-scan ≥ 5× faster than the per-step loop", v >= 5.0, detail)
    for c in ((d or {}).get("cli") or [])[:2]:
        name = f"digits: `fdl train` to 97% in ≤ 5 s from process start ({c['label']})"
        hit = c["first_97"]
        if hit is None:
            add(name, False, f"97% never reached (final {c['final_accuracy']}, exit "
                             f"{c['returncode']})")
        else:
            add(name, hit["seconds"] <= 5.0, f"{hit['seconds']:.1f} s (epoch {hit['epoch']})")
    p = sections.get("perex")
    r = _row(p, "fdl.privacy.per_example_grad_norms")
    if p is None:
        pass
    elif r is None or r.get("x_faster_than_vmap") is None:
        add("A: per-example grad norms ≥ 10× faster than vmap materialisation", None,
            "not measured (fdl.privacy.per_example_grad_norms missing)" if p else "not measured")
        add("A: per-example grad norms equal to vmap within 1e-5 relative", None, "not measured")
    else:
        v = r["x_faster_than_vmap"]
        add("A: per-example grad norms ≥ 10× faster than vmap materialisation", v >= 10.0,
            f"{v:.1f}×")
        e = r.get("max_rel_err_vs_vmap")
        add("A: per-example grad norms equal to vmap within 1e-5 relative",
            None if e is None else e <= 1e-5, "not comparable" if e is None else f"{e:.1e}")
    return out


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _f(v: Any, fmt: str, unit: str = "") -> str:
    return "–" if v is None else format(v, fmt) + unit


def _ms(s: float) -> str:
    ms = 1e3 * s
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _iqr_ms(r: dict) -> str:
    return f"{_ms(r['q1_s'])}–{_ms(r['q3_s'])}"


def _table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _step_table(sec: dict) -> str:
    head = ["variant", "dtype", "median ms", "IQR ms", "min ms", "GFLOP/s", "% of peak",
            "vs fastest JAX peer", "vs fdl autodiff", "compile s", "loss₀",
            "XLA MB accessed", "fusions/copies"]
    body = []
    for r in sec["rows"]:
        xla = r.get("xla") or {}
        mb = None if xla.get("bytes_accessed") is None else xla["bytes_accessed"] / 1e6
        ops = xla.get("hlo_ops")
        body.append([
            f"**{r['variant']}**" if r["group"] == "fdl" else r["variant"], r["dtype"],
            _ms(r["median_s"]), f"{_ms(r['q1_s'])}–{_ms(r['q3_s'])}", _ms(r["min_s"]),
            _f(r.get("gflops"), ".1f"), _f(r.get("pct_of_peak"), ".0f", "%"),
            _f(r.get("vs_fastest_jax_peer"), ".2f", "×"),
            _f(r.get("vs_fdl_autodiff"), ".3f", "×"),
            _f(r.get("compile_s"), ".2f"), _f(r.get("loss0"), ".4f"), _f(mb, ".1f"),
            f"{ops['fusion']}/{ops['copy']}" if ops else "–"])
    return _table(head, body)


def to_markdown(results: dict) -> str:
    env, out = results["environment"], []
    v = env["versions"]
    if results.get("note"):
        out.append(f"**{results['note']}**\n")
    out.append(f"- Machine: {env['cpu']}, {env['cores']} cores, backend {env['backend']} "
               f"({env['device']}); load average at start {env['loadavg_at_start']}, at end "
               f"{env.get('loadavg_at_end')}.")
    out.append("- Versions: python " + env["python"] + ", "
               + ", ".join(f"{k} {val}" for k, val in v.items() if val)
               + (f"; XLA_FLAGS={env['xla_flags']}" if env["xla_flags"] else ""))
    out.append(f"- Command: `{results['command']}` ({results['seconds']:.0f} s), "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    secs = results["sections"]
    if "peak" in secs:
        s = secs["peak"]
        out.append(f"\n### {s['title']}\n")
        out.append(_table(["variant", "dtype", "median ms", "IQR ms", "GFLOP/s (median)",
                           "GFLOP/s (best)"],
                          [[r["variant"], r["dtype"], _ms(r["median_s"]),
                            f"{_ms(r['q1_s'])}–{_ms(r['q3_s'])}", f"{r['gflops']:.1f}",
                            f"{r['flops'] / r['min_s'] / 1e9:.1f}"] for r in s["rows"]]))
        out.append("\nPeak used for \"% of peak\": the JAX matmul's median, "
                   + ", ".join(f"{k} {g:.1f} GFLOP/s" for k, g in s["peak_gflops"].items()) + ".")
        out += [f"- {n}" for n in s["notes"]]
    for name in STEP_SECTIONS:
        if name in secs:
            s = secs[name]
            out.append(f"\n### {s['title']}\n")
            fdl_row = _row(s, "fdl") or {}
            xla_flops = (fdl_row.get("xla") or {}).get("flops")
            out.append(f"{s['config']['flops'] / 1e9:.3g} GFLOP per step ({s['flop_convention']}"
                       + (f"; XLA counts {xla_flops / 1e9:.3g} GFLOP in fdl's compiled step"
                          if xla_flops else "") + "). Per-step time over "
                       f"{s['rows'][0]['rounds'] if s['rows'] else 0} interleaved rounds; "
                       "\"% of peak\" is against "
                       + ("the float32 matmul interleaved in these rounds (first row)."
                          if s.get("peak_interleaved") else "the peak section's JAX matmul.")
                       + "\n")
            out.append(_step_table(s))
            out += [f"- {n}" for n in s["notes"]]
    if "digits" in secs:
        s = secs["digits"]
        out.append(f"\n### {s['title']}\n")
        out.append(_table(["variant", "median ms", "IQR ms", "min ms", "× slower than scan",
                           "first call s"],
                          [[r["variant"], _ms(r["median_s"]), _iqr_ms(r),
                            _ms(r["min_s"]), _f(r.get("x_slower_than_scan"), ".1f", "×"),
                            _f(r["first_call_s"], ".2f")] for r in s["rows"]]))
        peak = ((secs.get("peak") or {}).get("peak_gflops") or {}).get("float32")
        b = scan_bound(s, peak)
        if b is not None:
            floor = (f"; the step's matmuls ({s['flops_per_step'] / 1e6:.1f} MFLOP) take "
                     f"{b['matmul_floor_us_per_step']:.0f} µs at the measured float32 peak"
                     if "matmul_floor_us_per_step" in b else "")
            out.append(f"\nWhat bounds scan vs loop: the loop of Trainer.step costs "
                       f"{b['loop_extra_us_per_step']:.0f} µs per step more than the scan (a "
                       f"jitted no-op step alone costs {b['dispatch_overhead_us_per_step']:.0f} "
                       f"µs to dispatch; the rest is the standalone step's outputs and the "
                       f"host check that stops pipelining), so loop/scan = 1 + extra/scan step, "
                       f"and 5× needs a scan step of ≤ "
                       f"{b['scan_us_per_step_needed_for_5x']:.0f} µs. The scan step takes "
                       f"{b['scan_us_per_step']:.0f} µs{floor}.")
        f = s["fit"]
        out.append(f"\nIn-process fit (fresh Trainer, compile included, warm process): "
                   f"{'reached' if f['reached'] else 'did NOT reach'} {f['test_accuracy']:.4f} "
                   f"test accuracy after {f['epochs']} epochs in {f['seconds']:.2f} s.")
        for c in s.get("cli", []):
            hit = c["first_97"]
            out.append(f"\n`{c['command']}` ({c['label']}): exit {c['returncode']}, "
                       f"wall {c['wall_s']:.2f} s "
                       f"from process start, final test accuracy {c['final_accuracy']}"
                       + (f"; first epoch ≥ 97%: epoch {hit['epoch']} at {hit['seconds']:.2f} s"
                          if hit else "") + ".")
        out += [f"- {n}" for n in s["notes"]]
    if "perex" in secs:
        s = secs["perex"]
        out.append(f"\n### {s['title']}\n")
        out.append(_table(["variant", "median ms", "IQR ms", "min ms", "× faster than vmap",
                           "max rel err vs vmap", "first call s"],
                          [[r["variant"], _ms(r["median_s"]), _iqr_ms(r),
                            _ms(r["min_s"]), _f(r.get("x_faster_than_vmap"), ".1f", "×"),
                            _f(r.get("max_rel_err_vs_vmap"), ".1e"), _f(r["first_call_s"], ".2f")]
                           for r in s["rows"]]))
        out += [f"- {n}" for n in s["notes"]]
    out.append("\n### Targets\n")
    if not results["targets"]:
        out.append("(none for the sections run)")
    for t in results["targets"]:
        mark = {True: "target met", False: "MISSED", None: "not measured"}[t["met"]]
        out.append(f"- {t['target']}: **{mark}** ({t['detail']})")
    if results["notes"]:
        out.append("\n### Notes\n")
        out += [f"- {n}" for n in results["notes"]]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #


def run(sections: Sequence[str] = SECTIONS, settings: Settings | None = None, *,
        command: str = "", log: Callable[[str], None] = lambda s: None) -> dict:
    """Run the selected sections; returns the results as a JSON-ready dict."""
    settings = settings or Settings()
    t0 = time.perf_counter()
    results: dict[str, Any] = {"command": command, "environment": environment(),
                               "settings": {k: v for k, v in settings.__dict__.items()
                                            if k != "notes"},
                               "sections": {}, "notes": settings.notes}
    mods = load_peers(settings, settings.notes)
    configs = GPU_CONFIGS if settings.gpu_sizes else CPU_CONFIGS
    secs = results["sections"]
    peak: dict[str, float] = {}
    for name in sections:
        log(f"[{time.perf_counter() - t0:6.1f} s] {name} …")
        if name == "peak":
            secs["peak"] = section_peak(settings, mods)
            peak = secs["peak"]["peak_gflops"]
        elif name in STEP_SECTIONS:
            secs[name] = section_step(configs[name], settings, mods, peak)
        elif name == "digits":
            secs["digits"] = section_digits(settings)
        elif name == "perex":
            secs["perex"] = section_perex(settings, mods)
        else:
            raise ValueError(f"unknown section {name!r}; choose from {SECTIONS}")
    results["targets"] = evaluate_targets(secs)
    results["seconds"] = time.perf_counter() - t0
    results["environment"]["loadavg_at_end"] = _loadavg()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (~2 minutes)")
    p.add_argument("--only", help=f"comma-separated sections, from {','.join(SECTIONS)}")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--markdown", help="write the markdown report here")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 3)")
    p.add_argument("--min-time", type=float, help="seconds per variant per round (default 0.3)")
    p.add_argument("--peers", default=",".join(ALL_PEERS),
                   help=f"peers to include (default {','.join(ALL_PEERS)}; '' for none)")
    p.add_argument("--bf16", action="store_true", help="add bfloat16 rows (default on a GPU)")
    p.add_argument("--sizes", choices=("auto", "cpu", "gpu"), default="auto",
                   help="problem sizes (auto: gpu sizes when JAX sees a GPU)")
    p.add_argument("--no-cli", action="store_true", help="skip the `fdl train` subprocess runs")
    p.add_argument("--write", metavar="BENCHMARKS.md",
                   help="replace this file's CPU (or, on a GPU, GPU) section with the report")
    p.add_argument("--note", default="",
                   help="a line for the report, e.g. 'taken while the machine was shared'")
    a = p.parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    gpu_sizes = a.sizes == "gpu" or (a.sizes == "auto" and on_gpu)
    settings = Settings(
        rounds=a.rounds or (3 if a.quick else 7),
        min_time=a.min_time if a.min_time is not None else (0.05 if a.quick else 0.3),
        peers=tuple(s for s in a.peers.split(",") if s),
        bf16=a.bf16 or on_gpu, gpu_sizes=gpu_sizes,
        peak_n=(8192 if gpu_sizes else (2048 if a.quick else 4096)),
        quick=a.quick, cli=not a.no_cli)
    unknown = set(settings.peers) - set(ALL_PEERS)
    if unknown:
        p.error(f"unknown peers {sorted(unknown)}; choose from {ALL_PEERS}")
    if a.only:
        chosen = [s.strip() for s in a.only.split(",") if s.strip()]
        bad = [s for s in chosen if s not in SECTIONS]
        if bad:
            p.error(f"unknown sections {bad}; choose from {SECTIONS}")
        if set(chosen) & set(STEP_SECTIONS) and "peak" not in chosen:
            chosen.insert(0, "peak")
        sections = [s for s in SECTIONS if s in chosen]
    else:
        sections = list(SECTIONS)
    if a.quick and not a.only:
        sections = [s for s in sections if s not in ("C", "CNN")]
        settings.note("--quick: sections C and CNN skipped (run them with --only C,CNN)")
    command = "python " + shlex.join([os.path.relpath(__file__),
                                      *(sys.argv[1:] if argv is None else argv)])
    results = run(sections, settings, command=command,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    results["note"] = a.note
    md = to_markdown(results)
    print(md)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(md)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if a.write:
        write_section(a.write, "gpu" if on_gpu else "cpu", md)
    return 0


def write_section(path: str, kind: str, md: str) -> None:
    """Replace the text between ``<!-- bench:KIND:start -->`` and ``<!-- bench:KIND:end -->``."""
    start, end = f"<!-- bench:{kind}:start -->", f"<!-- bench:{kind}:end -->"
    with open(path) as f:
        text = f.read()
    if start not in text or end not in text:
        raise SystemExit(f"{path}: markers {start} … {end} not found; add them where the "
                         f"{kind.upper()} figures go")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{md}{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
