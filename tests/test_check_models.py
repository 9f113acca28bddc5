"""`fdl.check.model` in JAX's defaults (float32) on the models people train: no false
alarm, no miss.

Every correct model of the table passes at 20 random initialisations, and the same
model with one planted wrong rule — a primitive with the same forward whose backward
is 1.01 × the right one, swapped in for one primitive of one layer — fails at every
one of them. Within a model the shapes (and the batch) do not change across seeds, so
the check's compiled program is reused (`fdl.check.arguments.compiled` keeps programs
by their lowered text): each model compiles twice, once correct and once planted.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check, layers as L, losses
from fdl.primitive import primitive, registry
from fdl.recording import recording

pytestmark = pytest.mark.float32

SEEDS = 20
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _gallery(name: str):
    """A gallery script as a module (its directory on the path for `_gallery`)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"gallery_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


@functools.cache
def _digits(n: int, flatten: bool):
    data, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=flatten),
                                           **({} if flatten else {"axis": (0, 1, 2)}))
    return data.x_train[:n], data.y_train[:n]


def _normal(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _labels(n, classes=5, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, classes, n))


def _cnn_digits():
    return _gallery("09_cnn_filters").network()


# name: (model, input shape, batch (x, y), primitive to plant the wrong rule in, train)
def _table():
    x8, y8 = _normal((8, 10)), _labels(8)
    img, img_y = _normal((4, 8, 8, 1)), _labels(4)
    seq, seq_y = _normal((4, 5, 3)), _labels(4)
    tok, tok_y = _normal((3, 4, 8)), _labels(3)
    h_t, h_bar = _normal((4, 6), 2), _normal((4, 5, 7), 3)
    digits, digits_y = _digits(16, True)
    images, images_y = _digits(8, False)
    return {
        "mlp_relu": (L.mlp([16, 16], 5, activation="relu"), (10,), (x8, y8), "relu", False),
        "mlp_tanh": (L.mlp([16, 16], 5, activation="tanh"), (10,), (x8, y8), "tanh", False),
        "mlp_gelu": (L.mlp([16, 16], 5, activation="gelu"), (10,), (x8, y8), "gelu", False),
        "cnn_max_pool": (L.serial(L.Conv2D(4, 3), L.Relu(), L.MaxPool2D(2), L.Flatten(),
                                  L.Dense(5)), (8, 8, 1), (img, img_y), "max_pool2d", False),
        "cnn_avg_pool": (L.serial(L.Conv2D(4, 3), L.Relu(), L.AvgPool2D(2), L.Conv2D(4, 2),
                                  L.Relu(), L.Flatten(), L.Dense(5)), (8, 8, 1), (img, img_y),
                         "avg_pool2d", False),
        "batch_norm_train": (L.serial(L.Dense(16), L.BatchNorm(), L.Relu(), L.Dense(5)), (10,),
                             (x8, y8), "batch_norm", True),
        "layer_norm": (L.serial(L.Dense(16), L.LayerNorm(), L.Tanh(), L.Dense(5)), (10,),
                       (x8, y8), "layer_norm", False),
        "dropout": (L.serial(L.Dense(16), L.Relu(), L.Dropout(0.3), L.Dense(5)), (10,),
                    (x8, y8), "dropout", True),
        "lstm": (L.serial(L.LSTM(8, return_sequences=False), L.Dense(5)), (5, 3),
                 (seq, seq_y), "lstm", False),
        "gru": (L.serial(L.GRU(8, return_sequences=False), L.Dense(5)), (5, 3), (seq, seq_y),
                "gru_cell", False),
        "multi_head_attention": (L.serial(L.MultiHeadAttention(2), L.Flatten(), L.Dense(5)),
                                 (4, 8), (tok, tok_y), "attention", False),
        "luong_attention": (L.serial(L.LuongAttention("general"), L.Dense(5)),
                            ((6,), (5, 7)), ((h_t, h_bar), _labels(4)),
                            "luong_attentional_state", False),
        "digits_mlp": (L.serial(L.Dense(32, w_init="he_normal"), L.Relu(), L.Dropout(0.3),
                                L.Dense(10)), (64,), (digits, digits_y), "linear", True),
        "digits_batch_norm": (L.serial(L.Dense(32, w_init="he_normal"), L.BatchNorm(),
                                       L.Relu(), L.Dense(10)), (64,), (digits, digits_y),
                              "relu", True),
        "digits_cnn": (_cnn_digits(), (8, 8, 1), (images, images_y), "conv2d", False),
    }


TABLE = _table()


def _planted(name: str):
    """`name`'s primitive with the same forward and tangent rule and a backward 1.01 ×
    the right one, and a recorder that swaps it in for every call of `name`."""
    right = registry()[name]

    def backward(*args):
        return tuple(None if c is None else jax.tree_util.tree_map(lambda a: 1.01 * a, c)
                     for c in right.backward(*args))

    wrong = primitive(right.forward, backward, save=right.save, fwd=right.fwd,
                      static=right.static, tangent=right.tangent, name=f"{name}_planted",
                      register=False)

    def swap(p, full, run):
        return wrong(*full) if p.name == name else run(full)

    return swap


def _loss(model, state, batch, train):
    x, y = batch
    key = jax.random.key(7)  # dropout: a fixed key

    def loss(params):
        logits, _ = model.apply(params, state, x, key=key if train else None, train=train)
        return losses.softmax_cross_entropy(logits, y)
    return loss


@pytest.mark.parametrize("name", sorted(TABLE))
def test_correct_model_passes_and_a_one_percent_wrong_rule_fails_at_20_seeds(name):
    model, shape, batch, plant, train = TABLE[name]
    swap = _planted(plant)
    _, _, state = model.init(jax.random.key(0), shape)  # the same state at every seed
    loss = _loss(model, state, batch, train)  # one function: one program, 20 seeds
    for seed in range(SEEDS):
        _, params, _ = model.init(jax.random.key(seed), shape)
        right = check.model(loss, params, key=jax.random.key(seed))
        with recording(swap):
            wrong = check.model(loss, params, key=jax.random.key(seed), locate=False)
        assert right.passed, f"{name}, seed {seed}: a correct model was rejected\n{right}"
        assert not wrong.passed, f"{name}, seed {seed}: a 1% wrong {plant} rule passed\n{wrong}"
        assert any(r.against == "autodiff" for r in wrong.failures), str(wrong)
        assert all(r.dtype == "float32" for r in right.rows)
