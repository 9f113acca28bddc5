"""Dense, activation, Flatten and Dropout layers, and the `mlp` builder."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl import ops
from fdl.layers.base import PROBE, Layer, Shape, has_probe, serial, stateless
from fdl.layers.initializers import Initializer, get_initializer

__all__ = [
    "ACTIVATIONS",
    "Dense",
    "Dropout",
    "Elu",
    "Flatten",
    "Gelu",
    "LeakyRelu",
    "LogSoftmax",
    "Relu",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "Tanh",
    "get_activation",
    "mlp",
]


def Dense(features: int, *, w_init: str | Initializer = "glorot_uniform",
          b_init: str | Initializer = "zeros", dtype: Any = jnp.float32) -> Layer:
    """Fully connected layer `Y = XW + b` (the `fdl.ops.linear` primitive).

    Batch-first: `X ∈ ℝ^{N×d_in}` → `Y ∈ ℝ^{N×features}`; params
    `{"w": (d_in, features), "b": (features,)}`. `w_init`/`b_init` are
    initialisers or their names (see `fdl.layers.initializers`).

    Probes (`fdl.layers.base.PROBE`): when `params` also holds a probe (zeros of shape
    `(N,)`), the layer applies `fdl.ops.ghost_linear`, the same `Y`, whose backward
    returns each example's squared gradient norm for `w` and `b` as the probe's
    cotangent.
    """
    v.positive_int("Dense", "features", features)
    w_init, b_init = get_initializer(w_init), get_initializer(b_init)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict]:
        input_shape = v.input_shape("Dense", input_shape, "(…, d_in)", min_rank=1)
        kw, kb = jax.random.split(key)
        d_in = input_shape[-1]
        params = {"w": w_init(kw, (d_in, features), dtype), "b": b_init(kb, (features,), dtype)}
        return input_shape[:-1] + (features,), params

    def apply(params: dict, x: jax.Array) -> jax.Array:
        d_in = params["w"].shape[0]
        if jnp.ndim(x) < 2 and jnp.shape(x) == (d_in,):  # the right features, no batch axis
            raise ValueError(
                f"Dense: input has shape {tuple(jnp.shape(x))}, one example without the batch "
                f"axis; expected (batch, …, {d_in}): pass x[None] (a batch of one), or "
                "jax.vmap the model over examples")
        if jnp.ndim(x) < 2 or x.shape[-1] != d_in:
            raise ValueError(
                f"Dense: input has shape {tuple(jnp.shape(x))} ({jnp.shape(x)[-1] if jnp.ndim(x) else 0} "
                f"features) but the layer was built for {d_in} features; expected (batch, …, "
                f"{d_in}) — check the input_shape passed to init")
        if has_probe(params):  # someone asked for per-example gradient norms
            return ops.ghost_linear(x, params["w"], params["b"], params[PROBE])
        return ops.linear(x, params["w"], params["b"])

    return stateless("dense", apply, init=init)


def Relu() -> Layer:
    """Element-wise `fdl.ops.relu`."""
    return stateless("relu", ops.relu)


def Tanh() -> Layer:
    """Element-wise `fdl.ops.tanh`."""
    return stateless("tanh", ops.tanh)


def Sigmoid() -> Layer:
    """Element-wise `fdl.ops.sigmoid`."""
    return stateless("sigmoid", ops.sigmoid)


def Softplus() -> Layer:
    """Element-wise `fdl.ops.softplus`."""
    return stateless("softplus", ops.softplus)


def Silu() -> Layer:
    """Element-wise `fdl.ops.silu` (swish)."""
    return stateless("silu", ops.silu)


def Gelu(approximate: bool = False) -> Layer:
    """Element-wise `fdl.ops.gelu` (exact, or the tanh approximation)."""
    return stateless("gelu", lambda x: ops.gelu(x, approximate))


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """Element-wise `fdl.ops.leaky_relu`."""
    return stateless("leaky_relu", lambda x: ops.leaky_relu(x, negative_slope))


def Elu(alpha: float = 1.0) -> Layer:
    """Element-wise `fdl.ops.elu`."""
    return stateless("elu", lambda x: ops.elu(x, alpha))


def Softmax(axis: int = -1) -> Layer:
    """`fdl.ops.softmax` along `axis`."""
    return stateless("softmax", lambda x: ops.softmax(x, axis))


def LogSoftmax(axis: int = -1) -> Layer:
    """`fdl.ops.log_softmax` along `axis`."""
    return stateless("log_softmax", lambda x: ops.log_softmax(x, axis))


ACTIVATIONS: dict[str, Callable[[], Layer]] = {
    "relu": Relu, "tanh": Tanh, "sigmoid": Sigmoid, "softplus": Softplus, "silu": Silu,
    "gelu": Gelu, "leaky_relu": LeakyRelu, "elu": Elu,
}


def get_activation(name: str) -> Layer:
    """An activation layer by name (`"relu"`, `"tanh"`, …)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def Flatten() -> Layer:
    """Flatten everything but the batch axis: `(N, d₁, …, d_k) → (N, d₁⋯d_k)`.

    A reshape moves no values, so its gradient is the reshape back.
    """
    return stateless("flatten", lambda x: x.reshape(x.shape[0], -1),
                     lambda shape: (math.prod(shape),))


def Dropout(rate: float) -> Layer:
    """Inverted dropout: in training, drop each unit with probability `rate` and
    scale the kept ones by `1/(1 − rate)`; the identity when not training.

    `rate` is the probability of *dropping* (`Dropout(0.1)` keeps 90%). Training
    needs an explicit key: `apply(params, state, x, key=key, train=True)`.
    """
    v.fraction("Dropout", "rate", rate, meaning="the drop probability")

    def drop(x: jax.Array, key: jax.Array | None, train: bool) -> jax.Array:
        if not train or rate == 0:
            return x
        if key is None:
            raise ValueError(
                "Dropout: train=True needs a PRNG key; call "
                "apply(params, state, x, key=jax.random.key(0), train=True)")
        return ops.dropout(x, key, rate)

    return stateless("dropout", drop, random=True)


def mlp(hidden: Sequence[int], outputs: int, *, activation: str = "relu",
        dropout: float = 0.0, w_init: str | Initializer | None = None) -> Layer:
    """A multi-layer perceptron: Flatten → [Dense → activation (→ Dropout)]* → Dense.

    Args:
      hidden: sizes of the hidden layers (`[]` gives logistic regression).
      outputs: size of the output layer (logits; no activation).
      activation: name of the hidden activation (see `ACTIVATIONS`).
      dropout: drop probability after each hidden activation (0 = none).
      w_init: kernel initialiser; default He-normal for ReLU-like activations,
        Glorot-uniform otherwise (the variance argument in
        `fdl.layers.initializers`).
    """
    for i, h in enumerate(hidden):
        v.positive_int("mlp", f"hidden[{i}]", h)
    v.positive_int("mlp", "outputs", outputs)
    get_activation(activation)  # validate the name now
    if w_init is None:
        w_init = "he_normal" if activation in ("relu", "leaky_relu", "elu", "silu", "gelu") \
            else "glorot_uniform"
    layers = [Flatten()]
    for h in hidden:
        layers += [Dense(h, w_init=w_init), get_activation(activation)]
        if dropout:
            layers.append(Dropout(dropout))
    layers.append(Dense(outputs, w_init="glorot_uniform"))
    return serial(*layers, name="mlp")
