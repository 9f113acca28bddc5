r"""Character-level language models: the shipped corpus, a vocabulary, the models, a
jitted training chunk and temperature sampling.

A text $c₁ … c_M$ of characters from a vocabulary of $V$ is cut into windows of `T + 1`
characters; a model reads the first $T$ and predicts each next one. The loss is the
mean cross-entropy in nats per character,

$$ L(θ) = −(1/NT) Σ_{n,t} log softmax(z_{n,t})[c_{n,t+1}], \qquad z = f_θ(c_{n,≤t}) ∈ ℝ^V, $$

(`log V` for a uniform guess). Two models: `"transformer"` (`fdl.layers.TransformerLM`:
causal pre-norm blocks with rotary positions, scanned over layers, tied embedding) and
`"lstm"` (`Embedding → LSTM → Dense`). Training draws each batch of windows from the
training text with an explicit key, so a run is a pure function of its seed: the
state (params, optimizer state, key, step) is all a checkpoint needs to continue it
bitwise. Used by `examples/10_char_lm.py` and `fdl train-charlm`.

The corpus (`load_corpus()`) is 22 of Shakespeare's sonnets, public domain
(`fdl/data/SONNETS_LICENSE.txt`).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fdl import _validate as v
from fdl import layers as L
from fdl import losses, optim

__all__ = ["KINDS", "LMState", "Vocabulary", "build", "load_corpus", "loss_fn", "sample",
           "train_chunk"]

KINDS = ("transformer", "lstm")


def load_corpus(name: str = "sonnets") -> str:
    """The text shipped in `fdl/data` (`"sonnets"`: 22 of Shakespeare's sonnets, public
    domain, about 13.6 thousand characters)."""
    if name != "sonnets":
        raise ValueError(f"load_corpus: the only corpus shipped is 'sonnets', got {name!r}")
    return (importlib.resources.files("fdl.data") / "sonnets.txt").read_text(encoding="utf-8")


class Vocabulary:
    """Characters ↔ ids, sorted so the mapping depends only on the set of characters."""

    def __init__(self, text: str) -> None:
        if not text:
            raise ValueError("Vocabulary: the text is empty")
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        missing = sorted(set(text) - set(self.index))
        if missing:
            raise ValueError(f"Vocabulary.encode: characters not in the vocabulary: {missing}")
        return np.array([self.index[c] for c in text], np.int32)

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def build(kind: str, vocab_size: int, *, d_model: int = 64, num_layers: int = 2,
          num_heads: int = 4, dropout: float = 0.0) -> L.Layer:
    """The model `ids` $∈ ℕ^{N×T}$ → logits $∈ ℝ^{N×T×V}$: a causal transformer
    (`d_ff = 4 * d_model`) or an LSTM (`hidden = 2 * d_model`, `num_layers` layers)."""
    if kind == "transformer":
        return L.TransformerLM(vocab_size, d_model, num_heads, 4 * d_model, num_layers,
                               dropout=dropout)
    if kind == "lstm":
        return L.serial(L.Embedding(vocab_size, d_model),
                        L.LSTM(2 * d_model, num_layers=num_layers, dropout=dropout),
                        L.Dense(vocab_size))
    raise ValueError(f"build: kind must be one of {KINDS}, got {kind!r}")


def loss_fn(model: L.Layer, params: Any, ids: jax.Array, targets: jax.Array, *,
            state: Any = None, key: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Mean cross-entropy (nats per character) of next-character predictions; `state`
    is the model's (stateless) state from `init` (`{}` when None)."""
    logits, _ = model.apply(params, {} if state is None else state, ids, key=key, train=train)
    return losses.softmax_cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                        targets.reshape(-1))


class LMState(NamedTuple):
    """Everything a training run needs to continue: params, optimizer state, the key
    for the next batch, and the number of steps taken."""

    params: Any
    opt_state: Any
    key: jax.Array  # a typed PRNG key
    step: jax.Array  # int32 scalar


def train_chunk(model: L.Layer, optimizer: optim.Optimizer, data: jax.Array, *,
                seq_len: int, batch_size: int, steps: int, dropout: bool = False,
                state: Any = None) -> Callable[[LMState], tuple[LMState, jax.Array]]:
    """`chunk(state) -> (state, losses)`: `steps` Adam-style updates as one `lax.scan`
    (one compiled program), each on `batch_size` random windows of `data` (int ids);
    `losses` $∈ ℝ^{steps}$ are the training losses; `state` is the model's from `init`.
    Jit it."""
    model_state = state
    offsets = jnp.arange(seq_len + 1)

    def one(state: LMState, _: Any) -> tuple[LMState, jax.Array]:
        key, k_batch, k_drop = jax.random.split(state.key, 3)
        starts = jax.random.randint(k_batch, (batch_size, 1), 0, data.shape[0] - seq_len - 1)
        chunk = data[starts + offsets[None, :]]
        loss, grads = jax.value_and_grad(
            lambda p: loss_fn(model, p, chunk[:, :-1], chunk[:, 1:], state=model_state,
                              key=k_drop, train=dropout))(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optim.apply_updates(state.params, updates)
        return LMState(params, opt_state, key, state.step + 1), loss

    def chunk(state: LMState) -> tuple[LMState, jax.Array]:
        return lax.scan(one, state, None, length=steps)

    return chunk


def sample(model: L.Layer, params: Any, vocab: Vocabulary, prompt: str, n: int, *,
           seq_len: int, temperature: float, key: jax.Array, state: Any = None) -> str:
    """`prompt` followed by $n$ characters drawn one at a time, $c ∼ softmax(z/τ)$ with
    $τ$ = `temperature`, from the model's logits at the last of the previous $T$
    characters (the window is right-padded; a causal model's logits at a position do not
    depend on what follows it). One compiled step, reused for every character."""
    v.finite_real("sample", "temperature", temperature, minimum=0.0, strict=True)
    if not prompt:
        raise ValueError("sample: the prompt must hold at least one character")

    @jax.jit
    def next_char(window: jax.Array, last: jax.Array, key: jax.Array) -> jax.Array:
        logits, _ = model.apply(params, {} if state is None else state, window[None])
        return jax.random.categorical(key, logits[0, last] / temperature)

    ids = list(vocab.encode(prompt))
    for k in jax.random.split(key, n):
        context = ids[-seq_len:]
        window = np.zeros(seq_len, np.int32)
        window[: len(context)] = context
        ids.append(int(next_char(jnp.asarray(window), jnp.int32(len(context) - 1), k)))
    return vocab.decode(ids)
