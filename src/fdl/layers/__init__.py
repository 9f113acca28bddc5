"""Layers: the `Layer(init, apply)` protocol over `fdl.ops`, and combinators.

The contract
------------
A layer is a NamedTuple of two pure functions (and a name)::

    layer = fdl.layers.Dense(128)
    out_shape, params, state = layer.init(key, input_shape)
    y, state = layer.apply(params, state, x, key=None, train=False)

* `input_shape` and `out_shape` exclude the batch axis: `Dense(128).init(key,
  (784,))` returns `(128,)`. `x` and `y` carry a leading batch axis,
  batch-first throughout (`X ∈ ℝ^{N×d}`; images NHWC).
* `params` is a pytree of arrays (nested dicts with readable keys, e.g.
  `params["dense_0"]["w"]`), the thing you differentiate.
* `state` is everything that changes but is not differentiated (BatchNorm's
  running statistics). Stateless layers use `{}`. `apply` returns the new
  state; nothing is mutated.
* Randomness is explicit: layers that need it (Dropout) take `key`; `train`
  switches training behaviour (dropout on, batch statistics) at trace time.
* `init` validates the input shape and says what it expected; `apply` checks
  the input against what `init` built.

Combinators `serial`, `parallel` and `residual` build layers out
of layers, so a whole model is itself a `Layer`.
"""

from fdl.layers import initializers
from fdl.layers.attention import LuongAttention, MultiHeadAttention
from fdl.layers.base import Layer, parallel, residual, serial, split_key, stateless
from fdl.layers.combinators import Bidirectional, remat, scan_layers
from fdl.layers.conv import (
    AdaptiveAvgPool2D,
    AvgPool2D,
    Conv1D,
    Conv2D,
    Conv3D,
    ConvTranspose1D,
    ConvTranspose2D,
    GlobalAvgPool,
    GlobalMaxPool,
    MaxPool2D,
)
from fdl.layers.core import (
    ACTIVATIONS,
    Dense,
    Dropout,
    Elu,
    Flatten,
    Gelu,
    LeakyRelu,
    LogSoftmax,
    Relu,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    Tanh,
    get_activation,
    mlp,
)
from fdl.layers.embedding import Embedding
from fdl.layers.norm import (
    BatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    RMSNorm,
    SpectralNorm,
    WeightNorm,
)
from fdl.layers.recurrent import GRU, LSTM, RNN
from fdl.layers.sequence import POOLINGS, SequencePool, SinusoidalEncoding
from fdl.layers.transformer import (
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    TransformerLM,
    from_torch_decoder_layer,
    from_torch_encoder_layer,
    tied_logits,
)

__all__ = [
    "AdaptiveAvgPool2D",
    "Conv3D",
    "ConvTranspose1D",
    "ConvTranspose2D",
    "GlobalMaxPool",
    "GroupNorm",
    "InstanceNorm",
    "SpectralNorm",
    "WeightNorm",
    "ACTIVATIONS",
    "AvgPool2D",
    "BatchNorm",
    "Conv1D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Elu",
    "Embedding",
    "Flatten",
    "Gelu",
    "GlobalAvgPool",
    "GRU",
    "LSTM",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "LogSoftmax",
    "LuongAttention",
    "MaxPool2D",
    "MultiHeadAttention",
    "RMSNorm",
    "RNN",
    "Relu",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "Tanh",
    "get_activation",
    "initializers",
    "mlp",
    "parallel",
    "residual",
    "serial",
    "split_key",
    "stateless",
    "Bidirectional",
    "remat",
    "scan_layers",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "TransformerLM",
    "POOLINGS",
    "SequencePool",
    "SinusoidalEncoding",
    "from_torch_decoder_layer",
    "from_torch_encoder_layer",
    "tied_logits",
]
