r"""Luong attention: an encoder–decoder learns to reverse digit sequences.

Task: read ``x = (x₁ … x_S)`` of random digits and write ``y = (x_S … x₁)``. The
output at step ``t`` is the input at position ``S + 1 − t``: a model that can *look
back* at the right input learns it at once, and the attention weights show where it
looks (the anti-diagonal).

The model (Luong, Pham & Manning, 2015), with GRUs, ``H`` hidden units, batch-first:

    encoder:   h̄_s = GRU(embed(x_s), h̄_{s−1})                      h̄ ∈ ℝ^{S×H}
    decoder:   h_t = GRU(embed(y_{t−1}), h_{t−1}),  h_0 = h̄_S,  y_0 = <go>
    scores:    dot      score(h_t, h̄_s) = h_tᵀ h̄_s
               general  score(h_t, h̄_s) = h_tᵀ W_a h̄_s
               concat   score(h_t, h̄_s) = v_aᵀ tanh(W_a [h_t; h̄_s])
    weights:   α_t = softmax_s(score(h_t, h̄_s)),    context c_t = Σ_s α_ts h̄_s
    output:    h̃_t = tanh(W_c [c_t; h_t]),    p(y_t | y_{<t}, x) = softmax(h̃_t W_s + b_s)

trained by teacher forcing (the true ``y_{t−1}`` fed in) on the cross-entropy, with
Adam; the test accuracy is measured by greedy decoding (the model's own previous
prediction fed in), on sequences it has not seen. Every piece is an ``fdl.ops``
primitive with a hand-written gradient (``embedding``, ``gru_cell``,
``luong_attention``, ``luong_attentional_state``, ``linear``,
``softmax_cross_entropy``).

What the heat map shows: output step ``t`` should read input ``S + 1 − t``. The
scores are content-based, and a unidirectional encoder's ``h̄_s`` carries ``x_{s−1}``
as well as ``x_s``, so the decoder, having just read ``y_{t−1} = x_{S+2−t}``, may
instead find where that digit sits and read its left neighbour from the state there:
its map is then the anti-diagonal shifted one column right. The script reports the
attention mass on that two-wide band (``s = S + 1 − t`` or ``S + 2 − t``).

References: Luong, Pham & Manning, "Effective Approaches to Attention-based Neural
Machine Translation", 2015; Bahdanau, Cho & Bengio, "Neural Machine Translation by
Jointly Learning to Align and Translate", 2015.

Run:  python examples/05_luong_attention.py [--quick | --full] [--out DIR]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from _gallery import jit_for, parse, pick, print_table, save_figure
from fdl import ops

VOCAB, GO = 10, 10  # digits 0..9, and the <go> token that starts decoding


def init(key: jax.Array, kind: str, hidden: int, embed: int = 16) -> dict:
    """Parameters of the encoder, the decoder, the attention and the output layer."""
    ks = iter(jax.random.split(key, 12))

    def w(*shape):
        return jax.random.normal(next(ks), shape, jnp.float32) / np.sqrt(shape[0])

    def gru(d_in):
        return {"wx": w(d_in, 3 * hidden), "wh": w(hidden, 3 * hidden),
                "bx": jnp.zeros(3 * hidden), "bh": jnp.zeros(3 * hidden)}

    score = {"dot": {}, "general": {"w_a": w(hidden, hidden)},
             "concat": {"w_a": w(2 * hidden, hidden), "v_a": w(hidden)}}[kind]
    return {"embed": w(VOCAB + 1, embed), "encoder": gru(embed), "decoder": gru(embed),
            "score": score, "w_c": w(2 * hidden, hidden),
            "w_s": w(hidden, VOCAB), "b_s": jnp.zeros(VOCAB)}


def _gru(p: dict, x: jax.Array, h: jax.Array) -> jax.Array:
    return ops.gru_cell(x, h, p["wx"], p["wh"], p["bx"], p["bh"])


def encode(params: dict, x: jax.Array) -> jax.Array:
    """``h̄ ∈ ℝ^{N×S×H}`` for token ids ``x ∈ ℕ^{N×S}``."""
    e = ops.embedding(x, params["embed"])
    h0 = jnp.zeros((x.shape[0], params["encoder"]["wh"].shape[0]), e.dtype)
    return ops.scan_cell(ops.gru_cell, e, h0, *(params["encoder"][k]
                                                for k in ("wx", "wh", "bx", "bh")))[0]


def decode_step(params: dict, kind: str, h_bar: jax.Array, h: jax.Array, y_prev: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One decoder step: ``(h_t, logits_t, α_t)`` from ``h_{t−1}`` and ``y_{t−1}``."""
    h = _gru(params["decoder"], ops.embedding(y_prev, params["embed"]), h)
    score = tuple(params["score"][k] for k in ("w_a", "v_a") if k in params["score"])
    context, alpha = ops.luong_attention(h, h_bar, *score, kind=kind)
    h_tilde = ops.luong_attentional_state(context, h, params["w_c"])
    return h, ops.linear(h_tilde, params["w_s"], params["b_s"]), alpha


def decode(params: dict, kind: str, x: jax.Array, y: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array]:
    """Logits ``N×S×V`` and attention ``N×S×S`` (rows: output step, columns: input).

    With targets ``y`` the decoder is teacher-forced; without, it feeds back its own
    greedy predictions.
    """
    h_bar = encode(params, x)
    n, s = x.shape

    def step(carry, y_t):
        h, y_prev = carry
        h, logits, alpha = decode_step(params, kind, h_bar, h, y_prev)
        y_next = jnp.argmax(logits, -1).astype(x.dtype) if y is None else y_t
        return (h, y_next), (logits, alpha)

    go = jnp.full((n,), GO, x.dtype)
    ys = jnp.zeros((s, n), x.dtype) if y is None else y.T
    _, (logits, alpha) = jax.lax.scan(step, (h_bar[:, -1], go), ys)
    return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(alpha, 0, 1)


def batch(key: jax.Array, n: int, length: int) -> tuple[jax.Array, jax.Array]:
    x = jax.random.randint(key, (n, length), 0, VOCAB)
    return x, x[:, ::-1]


def train(kind: str, steps: int, length: int, hidden: int, batch_size: int = 64,
          lr: float = 1e-2, jit: Callable = jax.jit) -> dict:
    """Train one score kind; test accuracy (greedy) per token and per sequence."""
    opt = fdl.optim.adam(lr)
    params = init(jax.random.key(0), kind, hidden)

    def loss(p, x, y):
        logits, _ = decode(p, kind, x, y)
        return fdl.losses.softmax_cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))

    @jit
    def run(params):
        def step(carry, k):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p, *batch(k, batch_size, length))
            u, s = opt.update(g, s, p)
            return (fdl.optim.apply_updates(p, u), s), value
        keys = jax.random.split(jax.random.key(1), steps)
        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), keys)
        x, y = batch(jax.random.key(2), 1000, length)  # fresh sequences
        logits, alpha = decode(params, kind, x)
        right = jnp.argmax(logits, -1) == y
        flipped = alpha[:, :, ::-1]  # the anti-diagonal becomes the diagonal
        aligned = jnp.mean(jnp.trace(flipped, axis1=1, axis2=2)
                           + jnp.trace(flipped, offset=-1, axis1=1, axis2=2)) / length
        return losses, jnp.mean(right), jnp.mean(jnp.all(right, -1)), aligned, alpha[0], x[0]

    losses, token_acc, seq_acc, aligned, alpha, example = run(params)
    return {"losses": np.asarray(losses), "token_accuracy": float(token_acc),
            "sequence_accuracy": float(seq_acc), "anti_diagonal_weight": float(aligned),
            "attention": np.asarray(alpha), "example": np.asarray(example)}


def main(argv: Sequence[str] | None = None) -> dict:
    """Train the three score kinds; report greedy test accuracy and the attention map."""
    args = parse(__doc__, argv)
    kinds = pick(args, ("general",), ("dot", "general", "concat"), ("dot", "general", "concat"))
    steps, length, hidden = pick(args, 400, 1000, 4000), pick(args, 6, 8, 12), 32
    print(f"reverse {length} random digits; GRU encoder-decoder, H = {hidden}, "
          f"{steps} Adam steps of 64; greedy decoding on 1000 new sequences")
    runs = {kind: train(kind, steps, length, hidden, jit=jit_for(args)) for kind in kinds}
    print_table(["score", "final train loss", "test token accuracy", "test sequence accuracy",
                 "α on the anti-diagonal band"],
                [[k, float(r["losses"][-20:].mean()), r["token_accuracy"], r["sequence_accuracy"],
                  r["anti_diagonal_weight"]] for k, r in runs.items()])

    def draw(plt):
        fig, axes = plt.subplots(1, len(runs) + 1, figsize=(4.2 * (len(runs) + 1), 4))
        for kind, r in runs.items():
            axes[0].semilogy(r["losses"], label=kind)
        axes[0].set(xlabel="step", ylabel="training cross-entropy", title="learning to reverse")
        axes[0].legend()
        for ax, (kind, r) in zip(axes[1:], runs.items()):
            ax.imshow(r["attention"], cmap="viridis", vmin=0, vmax=1)
            ticks = np.arange(length)
            ax.set_xticks(ticks, r["example"])
            ax.set_yticks(ticks, r["example"][::-1])
            ax.set(xlabel="input", ylabel="output",
                   title=f"{kind}: α (test acc. {r['token_accuracy']:.3f})")
        fig.tight_layout()
        return fig

    figure = save_figure(args, "luong_attention.png", draw)
    return {"runs": runs, "length": length, "figure": figure}


if __name__ == "__main__":
    main()
