"""fdl's rows of a step section, built from the public API, and the benchmark models.

Rows (each its own compiled program, parameters and optimizer state donated):

* `fdl` — a jitted step of `jax.value_and_grad(Trainer.loss_fn)`, `fdl.optim.adam`
  and `fdl.optim.apply_updates`, with the manual rules (the default mode);
* `fdl autodiff` — the same step traced and called inside
  `fdl.gradient_mode("autodiff")`;
* `fdl Trainer.step` — the public one-step API, which checks on the host that the
  step was finite, i.e. waits for every step;
* `fdl Trainer._step` — the same program without that host check (private; here
  only to measure the check's cost);
* `fdl bf16` — the `fdl` row with `compute_dtype=bfloat16` (with `--bf16`).

The models' initial parameters are drawn here, once, by fdl's initialisers;
`weighted_layers` hands them to the peers in a framework-neutral form.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from fdl import layers as L

from configs import B1, B2, EPS, LR, CNNConfig, LSTMConfig, TransformerConfig, copy
from harness import Runner, jit_runner, looped, xla_cost


def fdl_mlp(sizes: Sequence[int]) -> L.Layer:
    """The benchmark MLP in fdl: He-normal hidden, Glorot-uniform output (as `fdl.layers.mlp`)."""
    layers = []
    for h in sizes[1:-1]:
        layers += [L.Dense(h, w_init="he_normal"), L.Relu()]
    layers.append(L.Dense(sizes[-1], w_init="glorot_uniform"))
    return L.serial(*layers)


def fdl_cnn(cfg: CNNConfig) -> L.Layer:
    """The benchmark CNN in fdl: He-normal convolutions, Glorot-uniform dense."""
    c1, c2 = cfg.channels
    return L.serial(
        L.Conv2D(c1, (3, 3), padding="SAME", w_init="he_normal"), L.Relu(), L.MaxPool2D((2, 2)),
        L.Conv2D(c2, (3, 3), padding="SAME", w_init="he_normal"), L.Relu(), L.MaxPool2D((2, 2)),
        L.Flatten(), L.Dense(cfg.classes))


def fdl_lstm(cfg: LSTMConfig) -> L.Layer:
    """The LSTM language model in fdl: `Embedding`, `LSTM`, `Dense` at every step."""
    return L.serial(L.Embedding(cfg.vocab, cfg.embed), L.LSTM(cfg.hidden), L.Dense(cfg.vocab))


class Pending(Exception):
    """A row that cannot be built yet; the message says what it waits for."""


def sequence_mean_pool() -> L.Layer:
    """`N×T×d → N×d`, the mean over the steps (`fdl.ops.sequence_mean`) as a layer."""
    return L.stateless("sequence_mean", fdl.ops.sequence_mean, lambda shape: tuple(shape[1:]))


def fdl_transformer(cfg: TransformerConfig) -> L.Layer:
    """The transformer encoder in fdl, from the library's own blocks
    (`fdl.layers.TransformerEncoderBlock`, pre-norm, layer norm, exact GELU) and its
    sequence mean (`fdl.ops.sequence_mean`). Raises `Pending` where `fdl.layers` has
    no such block: the row is not hand-assembled."""
    block = getattr(L, "TransformerEncoderBlock", None)
    if block is None or not hasattr(fdl.ops, "sequence_mean"):
        raise Pending("fdl transformer rows pending: fdl.layers.TransformerEncoderBlock or "
                      "fdl.ops.sequence_mean missing (the sequences issue builds them; this "
                      "row uses them, not a hand-assembled stack)")
    blocks = [block(cfg.d, cfg.heads, cfg.mlp) for _ in range(cfg.blocks)]
    return L.serial(L.Dense(cfg.d), *blocks, sequence_mean_pool(), L.Dense(cfg.classes))


def weighted_layers(params: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """fdl `serial` params → `[(w, b), …]` of the layers that have weights, in layer
    order, as numpy arrays (dense `w` is `d_in×d_out`, conv `w` is HWIO)."""
    names = sorted((k for k in params if params[k]), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [(np.array(params[k]["w"]), np.array(params[k]["b"])) for k in names]


def fdl_step(trainer: fdl.train.Trainer, model_state: Any) -> Callable:
    """A jitted step built from `Trainer.loss_fn` and the optimizer (no host sync),
    compiled with the XLA options fdl's `Trainer` uses (`fdl.train.compiler_options`)."""
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
    """The rows `fdl`, `fdl autodiff`, `fdl Trainer.step`, `fdl Trainer._step` and,
    with `bf16`, `fdl bf16`. Each gets its own `Trainer` (so its first call compiles
    its own program) and its own copy of `params` (each donates its buffers)."""
    def trainer(**kw: Any) -> fdl.train.Trainer:
        return fdl.train.Trainer(model, fdl.optim.adam(LR, B1, B2, EPS),
                                 loss=fdl.losses.softmax_cross_entropy, **kw)

    def step_runner(name: str, *, context: Callable = contextlib.nullcontext,
                    dtype: str = "float32", **kw: Any) -> Runner:
        t = trainer(**kw)
        p = copy(params)
        return jit_runner(name, "fdl", fdl_step(t, model_state), (p, t.optimizer.init(p)),
                          x, y, context=context, dtype=dtype, flops=flops)

    template = trainer().init(jax.random.key(0), input_shape)

    def trainer_runner(name: str, method: str) -> Runner:
        t = trainer()
        call = getattr(t, method)
        p = copy(params)
        ts = jax.tree.map(lambda a: a.copy(), template)
        run, box = looped(lambda s: call(s, x, y),
                          ts._replace(params=p, opt_state=t.optimizer.init(p)))

        def cost() -> dict:  # Trainer.step runs the compiled Trainer._step, then checks
            return xla_cost(t._step.lower(box["state"], x, y).compile())

        return Runner(name, "fdl", run, lambda: float(box["out"]["loss"]), flops=flops,
                      cost=cost)

    runners = [step_runner("fdl"),
               step_runner("fdl autodiff", context=lambda: fdl.gradient_mode("autodiff")),
               trainer_runner("fdl Trainer.step", "step"),
               trainer_runner("fdl Trainer._step (no host check)", "_step")]
    if bf16:
        runners.append(step_runner("fdl bf16", dtype="bfloat16", compute_dtype=jnp.bfloat16))
    return runners
