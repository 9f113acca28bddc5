r"""A character-level language model: a small causal transformer, and an LSTM beside it.

The text is 22 of Shakespeare's sonnets (public domain; ``fdl/data/sonnets.txt``). Each
character is a token; a model reads ``T`` characters and predicts each next one, trained
on the cross-entropy ``L = −(1/NT) Σ_{n,t} log p_θ(c_{n,t+1} | c_{n,≤t})`` (nats per
character; a uniform guess over the ``V`` characters scores ``log V``).

* The transformer (``fdl.layers.TransformerLM``): embedding ``E ∈ ℝ^{V×d}``, rotary
  positions, causal pre-norm blocks scanned over layers, and logits ``Z = H Eᵀ`` with
  the embedding tied as the output projection (its gradient is the sum of both uses).
  Causality: position ``t`` attends only to ``s ≤ t``, so one forward pass trains all
  ``T`` predictions at once.
* The LSTM: ``Embedding → LSTM → Dense``, the same data and optimizer.

The corpus is small (13.6 thousand characters): trained long enough, both models learn
it by heart and the validation loss climbs again while the training loss falls towards
zero (``--full`` shows it, despite dropout); ``--quick`` and the default stop near the
bottom of the validation curve.

Every gradient runs the primitives' hand-written rules. After training, the script
samples from each model with a temperature ``τ`` (``p ∝ exp(z/τ)``, drawn with an
explicit key; ``fdl.models.charlm.sample``, which ``fdl train-charlm`` uses too) and draws the loss curves and one attention head's weights on a line of
verse (row ``t``: how much position ``t`` looks at each earlier position).

Run:  python examples/10_char_lm.py [--quick | --full] [--out DIR] [--temperature 0.8]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from _gallery import jit_for, parse, pick, print_table, save_figure
from fdl import layers as L
from fdl import ops
from fdl.models.charlm import Vocabulary, load_corpus, sample

PROMPT = "Shall I compare thee"


def transformer(vocab: int, setting: str) -> L.Layer:
    d = pick_setting(setting, 48, 64, 128)
    return L.TransformerLM(vocab, d, 4, 4 * d, pick_setting(setting, 2, 2, 4),
                           positional="rope", dropout=pick_setting(setting, 0.0, 0.1, 0.2))


def lstm(vocab: int, setting: str) -> L.Layer:
    d = pick_setting(setting, 48, 64, 128)
    rate = pick_setting(setting, 0.0, 0.1, 0.2)
    return L.serial(L.Embedding(vocab, d), L.Dropout(rate), L.LSTM(2 * d), L.Dropout(rate),
                    L.Dense(vocab))


def pick_setting(setting: str, quick: Any, default: Any, full: Any) -> Any:
    return {"quick": quick, "default": default, "full": full}[setting]


def windows(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (input, target) windows: targets are inputs shifted by one."""
    n = (len(ids) - 1) // length
    x = ids[: n * length].reshape(n, length)
    y = ids[1: n * length + 1].reshape(n, length)
    return x, y


def train(model: L.Layer, train_ids: np.ndarray, val: tuple[np.ndarray, np.ndarray], *,
          length: int, batch: int, steps: int, lr: float, seed: int, jit: Any,
          evals: int = 8) -> tuple[Any, Any, list[dict]]:
    """Adam on random windows of the training text; validation loss every few steps."""
    _, params, state = model.init(jax.random.key(seed), (length,))
    opt = fdl.optim.chain(fdl.optim.clip_by_global_norm(1.0), fdl.optim.adam(lr))
    opt_state = opt.init(params)
    data = jnp.asarray(train_ids)
    offsets = jnp.arange(length + 1)

    def loss_fn(params, x, y, key=None):
        logits, _ = model.apply(params, state, x, key=key, train=key is not None)
        return fdl.losses.softmax_cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                y.reshape(-1))

    @jit
    def step(params, opt_state, key):
        k_batch, k_drop = jax.random.split(key)
        starts = jax.random.randint(k_batch, (batch, 1), 0, data.shape[0] - length - 1)
        chunk = data[starts + offsets[None, :]]
        loss, grads = jax.value_and_grad(loss_fn)(params, chunk[:, :-1], chunk[:, 1:], k_drop)
        updates, opt_state = opt.update(grads, opt_state, params)
        return fdl.optim.apply_updates(params, updates), opt_state, loss

    val_loss = jit(loss_fn)
    x_val, y_val = (jnp.asarray(a) for a in val)
    history, key, recent = [], jax.random.key(seed + 1), []
    every = max(1, steps // evals)
    for i in range(1, steps + 1):
        key, sub = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, sub)
        recent.append(loss)
        if i % every == 0 or i == steps:
            history.append({"step": i, "train_loss": float(np.mean(jax.device_get(recent))),
                            "val_loss": float(val_loss(params, x_val, y_val))})
            recent = []
    return params, state, history


def attention_map(params: dict, ids: np.ndarray, *, num_heads: int = 4,
                  head: int = 0) -> np.ndarray:
    """The causal attention weights ``P ∈ ℝ^{T×T}`` of one head of the first block of a
    ``TransformerLM`` (pre-norm, RoPE, tied embedding), recomputed from its params."""
    table = params["embed"]["table"]
    p = jax.tree.map(lambda a: a[0], params["blocks"])
    x = ops.embedding(jnp.asarray(ids)[None], table) * math.sqrt(table.shape[1])
    h = ops.layer_norm(x, p["norm1"]["gamma"], p["norm1"]["beta"])
    a = p["self_attn"]

    def heads(w, b):
        z = ops.linear(h, w, b)
        return jnp.moveaxis(z.reshape(z.shape[:-1] + (num_heads, -1)), -2, -3)

    q, k = ops.rope(heads(a["wq"], a["bq"])), ops.rope(heads(a["wk"], a["bk"]))
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) / math.sqrt(q.shape[-1])
    t = scores.shape[-1]
    weights = ops.masked_softmax(scores, jnp.tril(jnp.ones((t, t), bool)))
    return np.asarray(weights[0, head])


def main(argv: Sequence[str] | None = None) -> dict:
    """Train both models, report validation losses, sample, and draw the figure."""
    args = parse(__doc__, argv, extra=lambda p: p.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature τ > 0"))
    jit = jit_for(args)
    text = load_corpus()  # fdl/data/sonnets.txt, public domain
    vocab = Vocabulary(text)
    ids = vocab.encode(text)
    split = int(0.9 * len(ids))
    length = pick(args, 48, 64, 64)
    val = windows(ids[split:], length)
    steps = pick(args, 250, 400, 1500)
    print(f"text: {len(text)} characters, vocabulary V = {len(vocab.chars)} "
          f"(uniform guess: log V = {math.log(len(vocab.chars)):.3f} nats/char)")
    results, params = {}, {}
    for name, build, lr in (("transformer", transformer, 3e-3), ("lstm", lstm, 1e-2)):
        model = build(len(vocab.chars), args.setting)
        params[name], state, history = train(model, ids[:split], val, length=length,
                                      batch=pick(args, 16, 32, 64), steps=steps, lr=lr,
                                      seed=0, jit=jit)
        text_out = sample(model, params[name], vocab, PROMPT, pick(args, 80, 200, 400),
                          seq_len=length, temperature=args.temperature,
                          key=jax.random.key(7), state=state)
        results[name] = {"history": history, "val_loss": history[-1]["val_loss"],
                         "sample": text_out, "model": model}
    print_table(["step", "transformer train", "transformer val", "lstm train", "lstm val"],
                [[a["step"], a["train_loss"], a["val_loss"], b["train_loss"], b["val_loss"]]
                 for a, b in zip(results["transformer"]["history"],
                                 results["lstm"]["history"])])
    for name in results:
        print(f"{name} validation loss {results[name]['val_loss']:.4f}")
        print(f"{name} sample (τ = {args.temperature}):\n{results[name]['sample']}\n")
    line = "Shall I compare thee to a summer's day?"
    weights = attention_map(params["transformer"], vocab.encode(line))

    def draw(plt):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
        for name, style in (("transformer", "C0"), ("lstm", "C1")):
            h = results[name]["history"]
            s = [r["step"] for r in h]
            ax1.plot(s, [r["train_loss"] for r in h], style, ls="--", label=f"{name} train")
            ax1.plot(s, [r["val_loss"] for r in h], style, label=f"{name} validation")
        ax1.axhline(math.log(len(vocab.chars)), color="gray", lw=0.8, label="uniform, log V")
        ax1.set(xlabel="step", ylabel="cross-entropy (nats/char)",
                title="character-level language models on the sonnets")
        ax1.legend(fontsize=8)
        ax2.imshow(weights, cmap="viridis")
        ticks = list(range(len(line)))
        ax2.set_xticks(ticks, list(line), fontsize=6)
        ax2.set_yticks(ticks, list(line), fontsize=6)
        ax2.set(xlabel="key position s", ylabel="query position t",
                title="block 0, head 0: causal attention weights")
        return fig

    figure = save_figure(args, "char_lm.png", draw)
    return {"transformer": results["transformer"], "lstm": results["lstm"],
            "vocab_size": len(vocab.chars), "attention": weights, "figure": figure,
            "uniform_loss": math.log(len(vocab.chars)), "params": params, "vocab": vocab,
            "length": length}


if __name__ == "__main__":
    main()
