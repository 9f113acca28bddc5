"""The workloads every framework runs: shapes, optimizer settings, batches, layouts.

Every variant trains the same model from the same initial parameters on the same
batch, in float32, with softmax cross-entropy on integer labels (mean over the batch)
and Adam (`LR`, `B1`, `B2`, `EPS`). The configurations below give the shapes for a
CPU and, larger, for a GPU; each knows its FLOPs per training step:

* MLP: `6·batch·Σ d_in·d_out` (forward 2, backward 4: the usual convention, which
  also counts the input gradient of the first layer that no variant computes);
* CNN: 3× the forward FLOPs of its convolutions and dense layer;
* LSTM language model and transformer encoder: 3× the forward FLOPs of their matmuls
  (embedding lookups, element-wise work and softmaxes not counted); XLA's own count of
  each compiled step is reported beside it.

Images are NHWC, as in fdl; `nchw_dense` reorders the CNN's dense weights for the
frameworks that flatten NCHW.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class MLPConfig:
    """An MLP `sizes[0] → … → sizes[-1]` (ReLU between) trained on batches of `batch`."""

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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.hw, self.hw, self.in_channels)


@dataclass(frozen=True)
class LSTMConfig:
    """A character-level language model: embedding `vocab → embed`, one LSTM of
    `hidden` units over `steps` steps, dense `hidden → vocab` at every step; the loss
    is the cross-entropy of the next token, averaged over batch and steps."""

    name: str
    vocab: int
    embed: int
    hidden: int
    steps: int
    batch: int

    @property
    def flops(self) -> float:
        n, h = self.batch * self.steps, self.hidden
        fwd = 2 * n * (self.embed * 4 * h + h * 4 * h + h * self.vocab)
        return 3.0 * fwd

    @property
    def label(self) -> str:
        return (f"LSTM LM: embedding {self.vocab}→{self.embed}, LSTM {self.hidden} over "
                f"{self.steps} steps, dense to {self.vocab} every step, batch {self.batch}")


@dataclass(frozen=True)
class TransformerConfig:
    """A transformer encoder classifier: dense `features → d`, `blocks` pre-norm blocks
    (layer norm → `heads`-head self-attention → residual; layer norm → dense `d → mlp`
    → GELU → dense `mlp → d` → residual), mean over the tokens, dense `d → classes`."""

    name: str
    features: int
    d: int
    heads: int
    mlp: int
    blocks: int
    tokens: int
    classes: int
    batch: int

    @property
    def flops(self) -> float:
        n, t, d = self.batch * self.tokens, self.tokens, self.d
        per_block = 2 * n * (4 * d * d + 2 * d * self.mlp) + 2 * 2 * self.batch * t * t * d
        fwd = 2 * n * self.features * d + self.blocks * per_block + 2 * self.batch * d * self.classes
        return 3.0 * fwd

    @property
    def label(self) -> str:
        return (f"transformer encoder: {self.blocks} pre-norm blocks, d {self.d}, {self.heads} "
                f"heads, MLP {self.d}-{self.mlp}-{self.d} GELU, mean-pool, dense {self.classes}; "
                f"batch {self.batch}×{self.tokens} tokens")


CPU_CONFIGS: dict[str, Any] = {
    "A": MLPConfig("A", (784, 1024, 10), 128),
    "B": MLPConfig("B", (784, 1024, 1024, 10), 256),
    "C": MLPConfig("C", (784, 4096, 4096, 10), 1024),
    "CNN": CNNConfig("CNN", 28, 1, (32, 64), 10, 128),
    "LSTM": LSTMConfig("LSTM", 96, 128, 512, 64, 32),
    "transformer": TransformerConfig("transformer", 32, 256, 4, 1024, 2, 64, 10, 32),
}
GPU_CONFIGS: dict[str, Any] = {
    "A": MLPConfig("A", (784, 4096, 10), 4096),
    "B": MLPConfig("B", (784, 4096, 4096, 10), 4096),
    "C": MLPConfig("C", (784, 8192, 8192, 10), 8192),
    "CNN": CNNConfig("CNN", 28, 1, (64, 128), 10, 2048),
    "LSTM": LSTMConfig("LSTM", 96, 256, 1024, 128, 256),
    "transformer": TransformerConfig("transformer", 32, 512, 8, 2048, 2, 128, 10, 256),
}


def batch(seed: int, shape: tuple[int, ...], classes: int, n: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """`n` standard-normal float32 inputs of `shape` and uniform integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    y = rng.integers(0, classes, size=(n,), dtype=np.int32)
    return x, y


def copy(tree: Any) -> Any:
    """Fresh device buffers (every variant donates its own)."""
    return jax.tree.map(lambda a: jnp.array(np.asarray(a)), tree)


def bf16(tree: Any) -> Any:
    """Every leaf cast to bfloat16."""
    return jax.tree.map(lambda a: a.astype(jnp.bfloat16), tree)


def nchw_dense(cfg: CNNConfig, w: np.ndarray) -> np.ndarray:
    """Dense rows ordered (h, w, c) as NHWC flattens → (c, h, w) as NCHW flattens."""
    s = cfg.hw // 4
    return w.reshape(s, s, cfg.channels[1], -1).transpose(2, 0, 1, 3).reshape(cfg.flat, -1)
