"""The layer protocol and the combinators `serial`, `parallel`, `residual`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl.recording import layer_scope


__all__ = ["PROBE", "Layer", "has_probe", "install_probe", "parallel", "residual", "serial",
           "split_key", "stateless"]

Shape = tuple[int, ...]

PROBE = "probe"
"""The params entry through which a layer reports a per-example statistic.

A layer that supports probes (`Dense`) checks its params dict for this entry, an
`N`-vector of zeros that is an input like any parameter: when it is there, the layer
applies a primitive that computes the same output and whose backward returns the
statistic as the probe's cotangent (`Dense`: each example's squared gradient norm
for its `w` and `b`, `fdl.ops.ghost_linear`). Whoever needs the statistic installs
zero probes (`install_probe`), differentiates, and reads the probes' cotangents; the
layer neither knows nor cares who asked.
"""


def install_probe(params: dict, n: int) -> dict:
    """One layer's `params` with a zero probe for `n` examples added (a new dict)."""
    if PROBE in params:
        raise ValueError(f"install_probe: these params already hold a {PROBE!r} entry")
    dtype = next((leaf.dtype for leaf in jax.tree_util.tree_leaves(params)), jnp.float32)
    return {**params, PROBE: jnp.zeros((n,), dtype)}


def has_probe(params: Any) -> bool:
    """Whether a layer's `params` carry a probe (see `PROBE`)."""
    return isinstance(params, dict) and PROBE in params


class Layer(NamedTuple):
    """A layer as two pure functions (see the contract in `fdl.layers`).

    Attributes:
      init: `init(key, input_shape) -> (output_shape, params, state)`; shapes
        exclude the batch axis.
      apply: `apply(params, state, x, *, key=None, train=False) -> (y, state)`;
        `x` has a leading batch axis.
      name: a short readable name, used for the parameter keys in `serial`.
    """

    init: Callable[..., tuple[Shape, Any, Any]]
    apply: Callable[..., tuple[Any, Any]]
    name: str = "layer"


def stateless(name: str, fn: Callable[..., Any],
              output_shape: Callable[[Shape], Shape] | None = None, *,
              init: Callable[[jax.Array, Shape], tuple[Shape, Any]] | None = None,
              random: bool = False) -> Layer:
    """A layer without state (`{}` in, `{}` out), from a function of the batch.

    Args:
      name: the layer's name (its key in `serial`'s params).
      fn: `fn(x) -> y`, or `fn(params, x) -> y` for a layer with parameters (`init`
        given); with `random`, `key` and `train` follow `x` (dropout).
      output_shape: for a layer without parameters, `input_shape -> output_shape`,
        both without the batch axis; it may validate `input_shape` and raise.
        Default: the shape is kept.
      init: for a layer with parameters, `init(key, input_shape) -> (output_shape,
        params)`.
      random: pass `apply`'s `key` and `train` on to `fn`.

    Returns:
      `Layer(init, apply, name)` following the protocol, with `{}` state.
    """
    def layer_init(key: jax.Array, input_shape: Shape) -> tuple[Shape, Any, dict]:
        if init is not None:
            shape, params = init(key, input_shape)
            return tuple(shape), params, {}
        shape = tuple(input_shape)
        return (shape if output_shape is None else tuple(output_shape(shape))), {}, {}

    def apply(params: Any, state: dict, x: Any, *, key: jax.Array | None = None,
              train: bool = False) -> tuple[Any, dict]:
        inputs = (x,) if init is None else (params, x)
        return fn(*inputs, *((key, train) if random else ())), state

    return Layer(layer_init, apply, name)


def split_key(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    """`n` independent keys from `key` (or `n` Nones when there is no key)."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def _names(layers: tuple[Layer, ...]) -> list[str]:
    return [f"{layer.name}_{i}" for i, layer in enumerate(layers)]


def _check_layers(fn: str, layers: tuple) -> None:
    if not layers:
        raise ValueError(f"{fn}: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{fn}: argument {i} must be a Layer (init, apply), got {type(layer).__name__}; "
                "did you pass the factory instead of calling it, e.g. Relu instead of Relu()?")


def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Compose layers: `y = f_k(…f_2(f_1(x)))`.

    Params and state are dicts keyed `"{name}_{position}"` (`"dense_0"`,
    `"relu_1"`, …). The key given to `apply` is split, one per layer.
    """
    _check_layers("serial", layers)
    names = _names(layers)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict, dict]:
        params, state, shape = {}, {}, tuple(input_shape)
        for n, layer, k in zip(names, layers, jax.random.split(key, len(layers))):
            shape, params[n], state[n] = layer.init(k, shape)
        return shape, params, state

    def apply(params: dict, state: dict, x: Any, *, key: jax.Array | None = None,
              train: bool = False) -> tuple[Any, dict]:
        new_state = {}
        for n, layer, k in zip(names, layers, split_key(key, len(layers))):
            with layer_scope(name, n):  # names the primitives' calls for check.model
                x, new_state[n] = layer.apply(params[n], state[n], x, key=k, train=train)
        return x, new_state

    return Layer(init, apply, name)


_COMBINE = ("concat", "sum", "tuple")


def parallel(*layers: Layer, combine: str = "concat", name: str = "parallel") -> Layer:
    """Apply every layer to the same input and combine the outputs.

    `combine`: `"concat"` (along the last axis; other axes must agree),
    `"sum"` (outputs must have one shape) or `"tuple"`.
    """
    _check_layers("parallel", layers)
    if combine not in _COMBINE:
        raise ValueError(f"parallel: combine must be one of {_COMBINE}, got {combine!r}")
    names = _names(layers)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Any, dict, dict]:
        params, state, shapes = {}, {}, []
        for n, layer, k in zip(names, layers, jax.random.split(key, len(layers))):
            s, params[n], state[n] = layer.init(k, tuple(input_shape))
            shapes.append(tuple(s))
        if combine == "tuple":
            return tuple(shapes), params, state
        if combine == "sum":
            if len(set(shapes)) != 1:
                raise ValueError(f"parallel(combine='sum'): branch output shapes differ: {shapes}")
            return shapes[0], params, state
        if len({s[:-1] for s in shapes}) != 1:
            raise ValueError(
                f"parallel(combine='concat'): branch outputs must agree on all but the last "
                f"axis, got {shapes}")
        return shapes[0][:-1] + (sum(s[-1] for s in shapes),), params, state

    def apply(params: dict, state: dict, x: Any, *, key: jax.Array | None = None,
              train: bool = False) -> tuple[Any, dict]:
        outs, new_state = [], {}
        for n, layer, k in zip(names, layers, split_key(key, len(layers))):
            with layer_scope(name, n):
                y, new_state[n] = layer.apply(params[n], state[n], x, key=k, train=train)
            outs.append(y)
        if combine == "tuple":
            return tuple(outs), new_state
        if combine == "sum":
            return sum(outs[1:], outs[0]), new_state
        return jnp.concatenate(outs, axis=-1), new_state

    return Layer(init, apply, name)


def residual(layer: Layer, name: str = "residual") -> Layer:
    """A skip connection `y = x + f(x)`; `f` must keep the shape.

    The gradient is the sum of both paths, `∂L/∂x = ∂L/∂y + (∂f/∂x)ᵀ ∂L/∂y`.
    """
    _check_layers("residual", (layer,))

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, Any, Any]:
        shape, params, state = layer.init(key, tuple(input_shape))
        if tuple(shape) != tuple(input_shape):
            raise ValueError(
                f"residual: the inner layer maps shape {tuple(input_shape)} to {tuple(shape)}; "
                "a residual connection needs the same shape in and out")
        return shape, params, state

    def apply(params: Any, state: Any, x: Any, *, key: jax.Array | None = None,
              train: bool = False) -> tuple[Any, Any]:
        y, state = layer.apply(params, state, x, key=key, train=train)
        return x + y, state

    return Layer(init, apply, name)
