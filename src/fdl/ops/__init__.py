"""The primitives: each a forward, its derivation, residuals and hand-written backward.

Layout is batch-first throughout: ``X ∈ ℝ^{N×d}``, images NHWC.
"""

from fdl.ops.activations import elu, gelu, leaky_relu, relu, sigmoid, silu, softplus, tanh
from fdl.ops.attention import (
    LUONG_SCORES,
    attention,
    luong_attention,
    luong_attentional_state,
    luong_concat_score,
    luong_context,
    luong_dot_score,
    luong_general_score,
    luong_score,
    masked_softmax,
    multi_head_attention,
)
from fdl.ops.dropout import dropout
from fdl.ops.linear import ghost_linear, linear
from fdl.ops.recurrent import (
    LSTMState,
    gru,
    gru_cell,
    lstm,
    lstm_cell,
    rnn,
    rnn_cell,
    scan_cell,
)
from fdl.ops.softmax import log_softmax, softmax

__all__ = [
    "LSTMState",
    "LUONG_SCORES",
    "attention",
    "gru",
    "gru_cell",
    "lstm",
    "lstm_cell",
    "luong_attention",
    "luong_attentional_state",
    "luong_concat_score",
    "luong_context",
    "luong_dot_score",
    "luong_general_score",
    "luong_score",
    "masked_softmax",
    "multi_head_attention",
    "rnn",
    "rnn_cell",
    "scan_cell",
    "dropout",
    "elu",
    "gelu",
    "leaky_relu",
    "ghost_linear",
    "linear",
    "log_softmax",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]
