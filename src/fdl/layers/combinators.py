"""Combinators for sequences and deep stacks: `Bidirectional`, `scan_layers`, `remat`.

* `Bidirectional(layer, merge=…)` runs a sequence layer forwards and, with its own
  parameters, backwards over each sequence *within its length* (a packed sequence's
  backward direction), and merges the two.
* `scan_layers(layer, n)` applies $n$ copies of one layer in sequence, with their
  parameters stacked on a leading axis, as one `lax.scan`: the block is traced and
  compiled once, whatever $n$.
* `remat(layer, policy=…)` rematerialises a layer in the backward pass
  (`jax.checkpoint`): its activations are not kept but recomputed, trading compute for
  memory. The recomputation runs the same primitives in the same gradient mode, so the
  hand-written rules still run.

All three follow the layer protocol (`fdl.layers`), batch-first; extra keyword
arguments of `apply` (`lengths=`, `mask=`) are passed through to the inner layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fdl import _validate as v
from fdl.layers.base import Layer, Shape, split_key
from fdl.ops.sequence import reverse_sequences
from fdl.recording import layer_scope

__all__ = ["Bidirectional", "remat", "scan_layers"]


def _check_layer(fn: str, layer: Any) -> None:
    if not isinstance(layer, Layer):
        raise TypeError(f"{fn}: layer must be a Layer (init, apply), got "
                        f"{type(layer).__name__}; did you pass the factory instead of calling "
                        "it, e.g. LSTM instead of LSTM(64)?")


# --------------------------------------------------------------------------- #
# Bidirectional
# --------------------------------------------------------------------------- #

_MERGES = ("concat", "sum")


def Bidirectional(layer: Layer, merge: str = "concat") -> Layer:
    """Run a sequence layer in both directions and merge: $[→h_t ; ←h_t]$ or their sum.

    `layer` maps $N×T×D$ to $N×T×H$ (or to $N×H$, a final state) and, when
    `apply` is given `lengths=`, honours them (the recurrent layers do). The backward
    direction is a second copy of `layer` with its own parameters, run forward over
    `reverse_sequences(x, lengths)` (each sequence reversed within its length) and its
    outputs reversed back, so step $t$ of the backward half has seen steps $t…ℓ−1$ of
    its own sequence and never the padding — what PyTorch's packed sequences do.

    Output layout as PyTorch's `bidirectional=True`: `merge="concat"` gives
    $N×T×2H$ with the forward direction in `[..., :H]` and the backward in
    `[..., H:]`; a final-state output (`return_sequences=False`) is
    $[→h_{ℓ−1} ; ←h_0]$ (the forward state at each sequence's last step, the backward
    state after it has read back to step 0). `merge="sum"` adds the two ($N×T×H$).

    Params: `{"forward": …, "backward": …}`, each the inner layer's.
    """
    fn = "Bidirectional"
    _check_layer(fn, layer)
    if merge not in _MERGES:
        raise ValueError(f"{fn}: merge must be one of {_MERGES}, got {merge!r}")

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, dict, dict]:
        kf, kb = jax.random.split(key)
        shape, pf, sf = layer.init(kf, input_shape)
        _, pb, sb = layer.init(kb, input_shape)
        shape = tuple(shape)
        if merge == "concat":
            shape = shape[:-1] + (2 * shape[-1],)
        return shape, {"forward": pf, "backward": pb}, {"forward": sf, "backward": sb}

    def apply(params: dict, state: dict, x: jax.Array, *, key: jax.Array | None = None,
              train: bool = False, lengths: jax.Array | None = None,
              **kwargs: Any) -> tuple[jax.Array, dict]:
        if jnp.ndim(x) < 3:
            raise ValueError(f"{fn}: x must be a batch of sequences (batch, T, D), got shape "
                             f"{tuple(jnp.shape(x))}")
        if lengths is not None:
            kwargs["lengths"] = lengths
        kf, kb = split_key(key, 2)
        with layer_scope("bidirectional", "forward"):
            yf, sf = layer.apply(params["forward"], state["forward"], x, key=kf, train=train,
                                 **kwargs)
        with layer_scope("bidirectional", "backward"):
            yb, sb = layer.apply(params["backward"], state["backward"],
                                 reverse_sequences(x, lengths), key=kb, train=train, **kwargs)
        if jnp.ndim(yb) == jnp.ndim(x):  # a sequence of outputs: back to input order
            yb = reverse_sequences(yb, lengths)
        y = jnp.concatenate([yf, yb], axis=-1) if merge == "concat" else yf + yb
        return y, {"forward": sf, "backward": sb}

    return Layer(init, apply, "bidirectional")


# --------------------------------------------------------------------------- #
# Scan over layers
# --------------------------------------------------------------------------- #


def scan_layers(layer: Layer, num_layers: int) -> Layer:
    """`num_layers` copies of `layer` applied in sequence, as one `lax.scan`.

    $y = f_{θ_n}(…f_{θ_2}(f_{θ_1}(x)))$ for one layer $f$ (which must keep the shape,
    e.g. a transformer block) with parameters $θ_1…θ_n$ stacked along a new leading
    axis: every leaf of `params` has shape `(num_layers, …)`, `params[i]` being layer
    $i$'s (`jax.tree.map(lambda a: a[i], params)`). The block is traced and compiled
    once, so compile time does not grow with depth; the result equals the unrolled
    `serial` of the same blocks (`tests/test_transformer_stack.py`).

    Gradient: the scan's transpose runs each block's backward (its primitives' rules)
    from the last layer to the first and stacks the parameter gradients the same way.

    State is stacked like the parameters; `apply`'s key is split one per layer; extra
    keyword arguments (`lengths=`, `mask=`) go to every layer.
    """
    fn = "scan_layers"
    _check_layer(fn, layer)
    n = v.positive_int(fn, "num_layers", num_layers)

    def init(key: jax.Array, input_shape: Shape) -> tuple[Shape, Any, Any]:
        shapes = []

        def one(k: jax.Array) -> tuple[Any, Any]:
            shape, params, state = layer.init(k, input_shape)
            shapes.append(tuple(shape))  # a static Python shape, seen while tracing
            return params, state

        params, state = jax.vmap(one)(jax.random.split(key, n))
        if shapes[0] != tuple(input_shape):
            raise ValueError(f"{fn}: the layer maps shape {tuple(input_shape)} to "
                             f"{shapes[0]}; stacked layers must keep the shape")
        return shapes[0], params, state

    def apply(params: Any, state: Any, x: Any, *, key: jax.Array | None = None,
              train: bool = False, **kwargs: Any) -> tuple[Any, Any]:
        depth = {a.shape[0] if jnp.ndim(a) else None for a in jax.tree.leaves(params)}
        if depth and depth != {n}:
            raise ValueError(f"{fn}: every parameter must have a leading axis of num_layers="
                             f"{n} (the stacked layers), got leading sizes "
                             f"{sorted(map(str, depth))}")
        keys = None if key is None else jax.random.split(key, n)

        def body(h, per_layer):
            p, s, k = per_layer
            with layer_scope("scan_layers", layer.name):
                return layer.apply(p, s, h, key=k, train=train, **kwargs)

        y, new_state = lax.scan(body, x, (params, state, keys))
        return y, new_state

    return Layer(init, apply, f"scan_{layer.name}")


# --------------------------------------------------------------------------- #
# Rematerialisation
# --------------------------------------------------------------------------- #


def _policy(fn: str, policy: Any) -> Callable | None:
    if policy is None or callable(policy):
        return policy
    if isinstance(policy, str) and hasattr(jax.checkpoint_policies, policy):
        return getattr(jax.checkpoint_policies, policy)
    names = sorted(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
    raise ValueError(f"{fn}: policy must be None, a jax.checkpoint_policies function or the "
                     f"name of one ({', '.join(names[:8])}, …), got {policy!r}")


def remat(layer: Layer, policy: str | Callable | None = None, *,
          prevent_cse: bool = True) -> Layer:
    """Rematerialise `layer` in the backward pass (`jax.checkpoint`).

    Reverse mode normally keeps every residual of the forward pass until the backward
    uses it: for a deep stack, memory grows with depth. Under `remat` the layer keeps
    only its inputs (and what `policy` allows) and recomputes the rest when its
    backward runs: about one extra forward, much less peak memory. The same arithmetic
    is done, so values and gradients are unchanged: bitwise for a block under `jit`
    (`tests/test_transformer_stack.py`); inside `scan_layers` XLA may fuse the
    recomputation differently from the original forward, which can move the last bits
    (float32 rounding).

    The gradient mode is read when the layer is traced, and the recomputation replays
    the traced program, so in manual mode the recomputed forward runs the same
    primitives and their hand-written backward rules consume its residuals
    (`tests/test_transformer_stack.py` counts the rule's calls).

    Args:
      layer: any layer.
      policy: which intermediates may be saved instead of recomputed: None (save
        nothing but the inputs), a function from `jax.checkpoint_policies`, or its
        name, e.g. `"dots_saveable"` (keep matrix products) or
        `"nothing_saveable"`.
      prevent_cse: passed to `jax.checkpoint`; `False` is safe (and faster) when the
        layer runs inside `scan_layers`, whose scan already prevents XLA from merging
        the recomputation with the forward.
    """
    fn = "remat"
    _check_layer(fn, layer)
    chosen = _policy(fn, policy)
    v.flag(fn, "prevent_cse", prevent_cse)

    def apply(params: Any, state: Any, x: Any, *, key: jax.Array | None = None,
              train: bool = False, **kwargs: Any) -> tuple[Any, Any]:
        def run(params, state, x, key, kwargs):
            return layer.apply(params, state, x, key=key, train=train, **kwargs)

        return jax.checkpoint(run, policy=chosen, prevent_cse=prevent_cse)(
            params, state, x, key, kwargs)

    return Layer(layer.init, apply, layer.name)
