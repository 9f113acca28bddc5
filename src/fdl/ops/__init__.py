"""The primitives: each a forward, its derivation, residuals and hand-written backward.

Layout is batch-first throughout: $X ∈ ℝ^{N×d}$, images NHWC.
"""

from fdl.ops.adaptive_pool import adaptive_avg_pool2d, global_max_pool
from fdl.ops.activations import elu, gelu, leaky_relu, relu, sigmoid, silu, softplus, tanh
from fdl.ops.attention import attention, masked_softmax, multi_head_attention
from fdl.ops.conv import conv1d, conv2d
from fdl.ops.conv3d import conv3d
from fdl.ops.conv_transpose import conv_transpose1d, conv_transpose2d
from fdl.ops.dropout import dropout
from fdl.ops.embedding import embedding
from fdl.ops.group_norm import group_norm, instance_norm
from fdl.ops.linear import ghost_linear, linear
from fdl.ops.luong import (
    LUONG_SCORES,
    luong_attention,
    luong_attentional_state,
    luong_concat_score,
    luong_context,
    luong_dot_score,
    luong_general_score,
    luong_score,
)
from fdl.ops.pad import pad
from fdl.ops.norm import batch_norm, batch_norm_inference, layer_norm, rms_norm
from fdl.ops.pool import avg_pool2d, global_avg_pool, max_pool2d
from fdl.ops.positional import rope, rope_angles, sinusoidal, sinusoidal_table
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
from fdl.ops.sequence import (
    reverse_sequences,
    sequence_last,
    sequence_mask,
    sequence_max,
    sequence_mean,
)
from fdl.ops.softmax import log_softmax, softmax
from fdl.ops.weight_norm import power_iteration, spectral_normalize, weight_norm

__all__ = [
    "adaptive_avg_pool2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "global_max_pool",
    "group_norm",
    "instance_norm",
    "pad",
    "power_iteration",
    "spectral_normalize",
    "weight_norm",
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
    "avg_pool2d",
    "batch_norm",
    "batch_norm_inference",
    "conv1d",
    "conv2d",
    "dropout",
    "embedding",
    "global_avg_pool",
    "layer_norm",
    "max_pool2d",
    "rms_norm",
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
    "rope",
    "rope_angles",
    "sinusoidal",
    "sinusoidal_table",
    "reverse_sequences",
    "sequence_last",
    "sequence_mask",
    "sequence_max",
    "sequence_mean",
]
