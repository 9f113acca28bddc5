"""Normalisation layers: BatchNorm, LayerNorm, RMSNorm.

Thin `Layer` wrappers over `fdl.ops.norm`, whose primitives carry the derivations. Features are on
the last axis (`N×d`, or NHWC images for BatchNorm); shapes given to `init`
exclude the batch axis.

BatchNorm is the one layer with state: its running statistics
`{"mean": (C,), "var": (C,)}` are returned by `init` and threaded through
`apply` explicitly — updated in training (`train=True`), read at inference.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fdl import _validate as v
from fdl import ops
from fdl.ops import ghost
from fdl.layers.base import PROBE, Layer, Shape, has_probe, stateless

__all__ = ["BatchNorm", "LayerNorm", "RMSNorm"]


def _features(fn: str, input_shape: Any, what: str) -> int:
    """The size of the last axis of `input_shape` (which excludes the batch axis)."""
    return v.input_shape(fn, input_shape, f"(…, {what})", min_rank=1)[-1]


def _check_last_axis(fn: str, x: Any, expected: int, what: str) -> None:
    if jnp.ndim(x) < 2 or jnp.shape(x)[-1] != expected:
        raise ValueError(
            f"{fn}: input has shape {tuple(jnp.shape(x))} but the layer was built for "
            f"{expected} {what}; expected (batch, …, {expected}) — check the input_shape "
            "passed to init")


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5, dtype: Any = jnp.float32) -> Layer:
    r"""Batch normalisation over every axis but the last (`fdl.ops.batch_norm`).

    `init(key, (…, C))` → params `{"gamma": ones(C), "beta": zeros(C)}`, state
    `{"mean": zeros(C), "var": ones(C)}` (the running statistics).

    `apply(…, train=True)` normalises with the batch statistics `μ_B, v_B` and
    returns the state updated as exponential moving averages,

        `mean ← momentum·mean + (1 − momentum)·μ_B`,
        `var ← momentum·var + (1 − momentum)·v_B·m/(m − 1)`,

    with `m` values per channel (Bessel's correction: the running variance
    estimates the population's, as in PyTorch). `momentum` is the weight of the
    *old* value (Keras/flax convention; PyTorch's `momentum=0.1` is `0.9` here).
    The statistics feed the state only, never the gradient.

    `apply(…, train=False)` (inference) is the per-channel affine map
    `fdl.ops.batch_norm_inference` with the running statistics; state unchanged.

    References: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
    Training by Reducing Internal Covariate Shift", 2015.
    """
    fn = "BatchNorm"
    v.fraction(fn, "momentum", momentum, meaning="the weight of the old running statistics")
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict, dict]:
        c = _features(fn, input_shape, "C")
        params = {"gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)}
        state = {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}
        return tuple(input_shape), params, state

    def apply(params: dict, state: dict, x: jax.Array, *, key: jax.Array | None = None,
              train: bool = False) -> tuple[jax.Array, dict]:
        _check_last_axis(fn, x, params["gamma"].shape[0], "channels")
        if not train:
            y = ops.batch_norm_inference(x, params["gamma"], params["beta"], state["mean"],
                                         state["var"], eps)
            return y, state
        y, mean, var = ops.batch_norm(x, params["gamma"], params["beta"], eps)
        m = x.size // x.shape[-1]
        mean, var = lax.stop_gradient(mean), lax.stop_gradient(var * (m / (m - 1)))
        new = {k: (momentum * state[k] + (1 - momentum) * batch).astype(state[k].dtype)
               for k, batch in (("mean", mean), ("var", var))}
        return y, new

    return Layer(init, apply, "batch_norm")


def LayerNorm(*, eps: float = 1e-5, dtype: Any = jnp.float32) -> Layer:
    """Layer normalisation over the last axis (`fdl.ops.layer_norm`).

    `init(key, (…, d))` → params `{"gamma": ones(d), "beta": zeros(d)}`; stateless;
    the same in training and inference.

    References: Ba, Kiros & Hinton, "Layer Normalization", 2016.
    """
    v.finite_number("LayerNorm", "eps", eps, low=0, low_inclusive=False)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict]:
        d = _features("LayerNorm", input_shape, "d")
        return input_shape, {"gamma": jnp.ones((d,), dtype), "beta": jnp.zeros((d,), dtype)}

    def apply(params: dict, x: jax.Array) -> jax.Array:
        _check_last_axis("LayerNorm", x, params["gamma"].shape[0], "features")
        if has_probe(params):  # a probe: per-example gradient norms asked for
            return ghost.ghost_layer_norm(x, params["gamma"], params["beta"], params[PROBE],
                                          eps)
        return ops.layer_norm(x, params["gamma"], params["beta"], eps)

    return stateless("layer_norm", apply, init=init)


def RMSNorm(*, eps: float = 1e-6, dtype: Any = jnp.float32) -> Layer:
    """RMS normalisation over the last axis (`fdl.ops.rms_norm`).

    `init(key, (…, d))` → params `{"gamma": ones(d)}`; stateless.

    References: Zhang & Sennrich, "Root Mean Square Layer Normalization", 2019.
    """
    v.finite_number("RMSNorm", "eps", eps, low=0, low_inclusive=False)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict]:
        d = _features("RMSNorm", input_shape, "d")
        return input_shape, {"gamma": jnp.ones((d,), dtype)}

    def apply(params: dict, x: jax.Array) -> jax.Array:
        _check_last_axis("RMSNorm", x, params["gamma"].shape[0], "features")
        if has_probe(params):  # a probe: per-example gradient norms asked for
            return ghost.ghost_rms_norm(x, params["gamma"], params[PROBE], eps)
        return ops.rms_norm(x, params["gamma"], eps)

    return stateless("rms_norm", apply, init=init)
