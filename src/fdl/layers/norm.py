"""Normalisation layers: BatchNorm, LayerNorm, RMSNorm, GroupNorm, InstanceNorm, and the
weight reparametrisations WeightNorm and SpectralNorm (wrappers around another layer).

Thin `Layer` wrappers over `fdl.ops.norm`, whose primitives carry the derivations. Features are on
the last axis (`N×d`, or NHWC images for BatchNorm); shapes given to `init`
exclude the batch axis.

BatchNorm and SpectralNorm carry state: BatchNorm's running statistics
`{"mean": (C,), "var": (C,)}`, SpectralNorm's power-iteration vector `{"u": (m,)}`, are
returned by `init` and threaded through `apply` explicitly — updated in training
(`train=True`), read at inference.
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

__all__ = ["BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm", "SpectralNorm",
           "WeightNorm"]


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


def GroupNorm(groups: int, *, eps: float = 1e-5, dtype: Any = jnp.float32) -> Layer:
    """Group normalisation (`fdl.ops.group_norm`): per example, the channels in `groups`
    blocks, each block standardised over its channels and positions.

    `init(key, (…, C))` (channels last; `groups` divides `C`) → params
    `{"gamma": ones(C), "beta": zeros(C)}`; stateless, the same in training and inference.

    References: Wu & He, "Group Normalization", 2018.
    """
    fn = "GroupNorm"
    g = v.positive_int(fn, "groups", groups)
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict]:
        c = _features(fn, input_shape, "C")
        if c % g:
            raise ValueError(f"{fn}: groups={g} must divide the {c} channels of input_shape "
                             f"{tuple(input_shape)}")
        return input_shape, {"gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)}

    def apply(params: dict, x: jax.Array) -> jax.Array:
        _check_last_axis(fn, x, params["gamma"].shape[0], "channels")
        return ops.group_norm(x, params["gamma"], params["beta"], g, eps)

    return stateless("group_norm", apply, init=init)


def InstanceNorm(*, eps: float = 1e-5, dtype: Any = jnp.float32) -> Layer:
    """Instance normalisation (`fdl.ops.instance_norm`): each channel of each example
    standardised over its positions (group norm with one channel per group).

    `init(key, (…, C))` with at least one position axis (e.g. `(H, W, C)`) → params
    `{"gamma": ones(C), "beta": zeros(C)}`; stateless.

    References: Ulyanov, Vedaldi & Lempitsky, "Instance Normalization", 2016.
    """
    fn = "InstanceNorm"
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict]:
        shape = v.input_shape(fn, input_shape, "(…, C) with a position axis, e.g. (H, W, C)",
                              min_rank=2)
        c = shape[-1]
        return shape, {"gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)}

    def apply(params: dict, x: jax.Array) -> jax.Array:
        _check_last_axis(fn, x, params["gamma"].shape[0], "channels")
        return ops.instance_norm(x, params["gamma"], params["beta"], eps)

    return stateless("instance_norm", apply, init=init)


def _wrapped_weight(fn: str, layer: Layer, param: str, params: Any) -> jax.Array:
    if not isinstance(params, dict) or param not in params:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{fn}: the wrapped layer {layer.name!r} has no parameter {param!r} "
                         f"(its params: {keys}); pass param= naming its weight")
    w = params[param]
    if jnp.ndim(w) < 2:
        raise ValueError(f"{fn}: parameter {param!r} of {layer.name!r} must have at least 2 "
                         f"dimensions (output units last), got shape {tuple(jnp.shape(w))}")
    return w


def WeightNorm(layer: Layer, *, param: str = "w") -> Layer:
    """Weight normalisation of another layer's weight (`fdl.ops.weight_norm`).

    The wrapped layer's `params[param]` (output units last, e.g. Dense's `w`, Conv2D's
    HWIO kernel) becomes `{"v": V, "g": g}` with `W = g ⊙ V/‖V‖` per output unit;
    `init` starts from the wrapped layer's own `W` (`V = W`, `g = ‖W‖` per column), so
    the wrapped layer computes the same function at initialisation. State is the
    wrapped layer's.

    References: Salimans & Kingma, "Weight Normalization", 2016.
    """
    fn = "WeightNorm"
    if not isinstance(layer, Layer):
        raise TypeError(f"{fn}: layer must be a Layer, got {type(layer).__name__}")

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict, Any]:
        shape, params, state = layer.init(key, input_shape)
        w = _wrapped_weight(fn, layer, param, params)
        g = jnp.sqrt(jnp.sum(w * w, axis=tuple(range(w.ndim - 1))))
        return shape, {**params, param: {"v": w, "g": g}}, state

    def apply(params: dict, state: Any, x: Any, *, key: jax.Array | None = None,
              train: bool = False) -> tuple[Any, Any]:
        w = ops.weight_norm(params[param]["v"], params[param]["g"])
        return layer.apply({**params, param: w}, state, x, key=key, train=train)

    return Layer(init, apply, f"weight_norm_{layer.name}")


def SpectralNorm(layer: Layer, *, param: str = "w", steps: int = 1,
                 eps: float = 1e-12) -> Layer:
    """Spectral normalisation of another layer's weight (`fdl.ops.spectral_normalize`).

    The wrapped layer uses `W/σ`, `σ ≈ σ_max(W̄)` for `W` read as the `m×d_out` matrix
    `W̄` (output units last). `init` → state `{"u": (m,), "layer": wrapped state}`, `u`
    a random unit vector. `apply(…, train=True)` runs `steps` power-iteration steps
    (`fdl.ops.power_iteration`, not differentiated) from the stored `u` and returns the
    new one; `train=False` reads `u` unchanged and takes `v = W̄ᵀu/‖W̄ᵀu‖`. Either way
    `σ = uᵀ W̄ v` with `u, v` held fixed in the gradient.

    References: Miyato et al., "Spectral Normalization for Generative Adversarial
    Networks", 2018.
    """
    fn = "SpectralNorm"
    if not isinstance(layer, Layer):
        raise TypeError(f"{fn}: layer must be a Layer, got {type(layer).__name__}")
    n_steps = v.positive_int(fn, "steps", steps)
    v.finite_number(fn, "eps", eps, low=0, low_inclusive=False)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, Any, dict]:
        k_layer, k_u = jax.random.split(key)
        shape, params, state = layer.init(k_layer, input_shape)
        w = _wrapped_weight(fn, layer, param, params)
        u = jax.random.normal(k_u, (w.size // w.shape[-1],), w.dtype)
        return shape, params, {"u": u / jnp.linalg.norm(u), "layer": state}

    def apply(params: dict, state: dict, x: Any, *, key: jax.Array | None = None,
              train: bool = False) -> tuple[Any, dict]:
        w = params[param]
        fixed = lax.stop_gradient(w)
        if train:
            u, vec = ops.power_iteration(fixed, state["u"], n_steps, eps)
        else:
            u = state["u"]
            vec = fixed.reshape(-1, w.shape[-1]).T @ u
            vec = vec / (jnp.linalg.norm(vec) + eps)
        u, vec = lax.stop_gradient(u), lax.stop_gradient(vec)
        y, inner = layer.apply({**params, param: ops.spectral_normalize(w, u, vec)},
                               state["layer"], x, key=key, train=train)
        return y, {"u": u.astype(state["u"].dtype), "layer": inner}

    return Layer(init, apply, f"spectral_norm_{layer.name}")
