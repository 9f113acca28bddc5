"""The primitives: each a forward, its derivation, residuals and hand-written backward.

Layout is batch-first throughout: ``X ∈ ℝ^{N×d}``, images NHWC.
"""

from fdl.ops.activations import elu, gelu, leaky_relu, relu, sigmoid, silu, softplus, tanh
from fdl.ops.dropout import dropout
from fdl.ops.linear import linear
from fdl.ops.softmax import log_softmax, softmax

__all__ = [
    "dropout",
    "elu",
    "gelu",
    "leaky_relu",
    "linear",
    "log_softmax",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]
