"""Differentially private SGD, with per-example gradient norms from ghost norms.

The contract
------------
::

    import fdl.privacy
    norms = fdl.privacy.per_example_grad_norms(model, params, state, x, y)  # ‖gᵢ‖, (N,)
    out = fdl.privacy.dp_sgd_grads(model, params, state, x, y, key=key,
                                   clip_norm=1.0, noise_multiplier=1.1)    # DPGrads
    updates, opt_state = optimizer.update(out.grads, opt_state, params)
    params = fdl.optim.apply_updates(params, updates)

* `model` is a `fdl.layers.Layer` whose parameters all belong to layers with a
  ghost-norm rule: `Dense` (on $N×d_in$ or sequence $N×T×d_in$ inputs),
  `Conv1D`, `Conv2D`, `Embedding`, `LayerNorm`, `RMSNorm`,
  `MultiHeadAttention`, `RNN`, `LSTM`, `GRU`, `TransformerEncoderBlock`,
  `TransformerDecoderBlock` (`fdl.ops.ghost_linear` and `fdl.ops.ghost`);
  parameter-free layers (activations, pools, Flatten, Dropout) and the combinators `serial`/`parallel`/`residual` may be used
  freely. Any other parameter (BatchNorm's, whose batch statistics mix the
  examples), a layer applied twice (shared weights) or inside a loop, raises
  `ValueError` naming the parameter — never a silently wrong norm. Use
  `fdl.train.per_example_grads` (`vmap`) for other models.
* `loss(outputs, y) -> ℓ ∈ ℝ^N` gives one loss per example (default: softmax
  cross-entropy on logits and integer labels, `reduction="none"`). $ℓᵢ$ must
  depend on example $i$ only (no statistics across the batch).
* `state`, `key` and `train` are passed to `model.apply` as usual. Both
  functions are pure; `jit` them (the models, losses and hyperparameters are
  Python values closed over or static).

The method
----------
Symbols: $N$ examples, $θ$ all parameters, $gᵢ = ∇_θ ℓᵢ$ the per-example
gradient, $C$ = `clip_norm`, $σ$ = `noise_multiplier`.

1. *Ghost norms* — one forward and one backward of $L = Σᵢ ℓᵢ$, no per-example
   gradient formed. Every layer with parameters gets a zero `probe` $∈ ℝ^N$
   (installed with `fdl.layers.base.install_probe`, the slot the layers expose)
   and runs its ghost primitive, whose backward has the layer's input $X$ and
   output cotangent $G = ∂L/∂Y$ ($Gᵢ = ∂ℓᵢ/∂Yᵢ$) and returns, as the probe's
   cotangent, the layer's $Σ_θ ‖∂ℓᵢ/∂θ‖²$: for Dense
   $‖xᵢ‖²‖gᵢ‖² + ‖gᵢ‖²$, for a weight used at $T$ positions (sequences,
   unfolded convolutions, recurrent steps) $⟨XᵢXᵢᵀ, GᵢGᵢᵀ⟩_F + ‖Gᵢᵀ1‖²$
   (`fdl.ops.ghost` derives each). Then $‖gᵢ‖ = (Σ_layers ·)^{1/2}$.
2. *Clip factors* $cᵢ = min(1, C/‖gᵢ‖)$, so $‖cᵢ gᵢ‖ ≤ C$ (Abadi et al.'s
   $gᵢ / max(1, ‖gᵢ‖/C)$).
3. *Clipped sum* by a second backward, of $Σᵢ cᵢ ℓᵢ$ with the $cᵢ$ held constant
   (stop-gradient): $∇_θ Σᵢ cᵢ ℓᵢ = Σᵢ cᵢ gᵢ$. Both backwards share one forward
   (one `jax.vjp`, its backward run with cotangents `1` and $c$).
4. *Noise*: $g̃ = (Σᵢ cᵢ gᵢ + σ C ξ) / N$ with `ξ ~ N(0, I)` drawn from the
   explicit `key`, independently for every parameter. (Abadi et al. divide by the
   expected lot size $L$; here the lot is the batch, $L = N$.)

Cost: one forward and two backwards (the first needs no parameter gradients, the
second no norms; XLA drops what is unused), about 1.5 ordinary steps plus the
norms, against $N$ materialised gradients of $|θ|$ numbers each for `vmap`.
Because each clipped gradient has norm $≤ C$, the sum changes by at most $C$ when one example is
added or removed, and Gaussian noise of standard deviation $σC$ makes the step
$(ε, δ)$-differentially private; accounting for $ε$ over many steps (the moments
accountant) is not part of this module.

References: Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep Learning
with Differential Privacy", 2016; Goodfellow, "Efficient Per-Example Gradient
Computations", 2015; Li, Tramèr, Liang, Hashimoto, "Large Language Models Can Be
Strong Differentially Private Learners", 2022 (ghost clipping).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl import losses
from fdl.layers.base import PROBE, Layer, install_probe

__all__ = ["DPGrads", "clip_factors", "dp_sgd_grads", "per_example_grad_norms"]

PyTree = Any
LossFn = Callable[[Any, Any], jax.Array]

_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint"})
_RULES = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr"})
_FALLBACK = "use fdl.train.per_example_grads (vmap) for this model"


class DPGrads(NamedTuple):
    """The result of `dp_sgd_grads`.

    Attributes:
      grads: $(Σᵢ cᵢ gᵢ + σ C ξ) / N$, structured like `params` (their dtypes).
      norms: `(N,)` per-example gradient norms $‖gᵢ‖$ before clipping.
      loss: scalar, the mean per-example loss $(1/N) Σᵢ ℓᵢ$ (unclipped).
      model_state: the model's new state from `model.apply`.
    """

    grads: PyTree
    norms: jax.Array
    loss: jax.Array
    model_state: PyTree


def _per_example_cross_entropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    return losses.softmax_cross_entropy(outputs, labels, reduction="none")


# --------------------------------------------------------------------------- #
# Probes: where they go, and proof that each is used exactly once by a ghost rule
# --------------------------------------------------------------------------- #


def _where(path: tuple) -> str:
    return "params" + "".join(f"[{k!r}]" for k in path)


_SUPPORTED = ("Dense, Conv1D, Conv2D, Embedding, LayerNorm, RMSNorm, MultiHeadAttention, "
              "RNN, LSTM, GRU and the transformer blocks")


def _is_layer(node: dict) -> bool:
    """A layer's own params: a non-empty dict of arrays, at least one floating."""
    leaves = list(node.values())
    return (bool(leaves) and all(hasattr(a, "ndim") and hasattr(a, "dtype") for a in leaves)
            and any(jnp.issubdtype(a.dtype, jnp.floating) for a in leaves))


def _unsupported(fn: str, path: str, leaf: Any, more: int) -> ValueError:
    also = f" ({more} more such parameter(s))" if more else ""
    return ValueError(
        f"{fn}: {path} (shape {tuple(jnp.shape(leaf))}) is not held in a layer's params dict "
        "(a dict of arrays, as every fdl.layers layer keeps them), so no ghost-norm rule "
        f"can count its per-example gradient and the norm would be wrong{also}; {_FALLBACK}")


def _with_probes(fn: str, params: PyTree, n: int) -> PyTree:
    """`params` with a zero `probe` $∈ ℝ^N$ added to every layer's params dict (a dict
    of arrays); whether the layer reads it is checked by `_check_probe_uses`.

    Raises `ValueError` for any float leaf outside such a dict.
    """
    bad: list[tuple[str, Any]] = []

    def walk(node: Any, path: tuple) -> Any:
        if isinstance(node, dict):
            if PROBE in node:
                raise ValueError(f"{fn}: {_where(path)} already holds a {PROBE!r} entry; "
                                 "pass the model's own params (the probes are added here)")
            if _is_layer(node):
                return install_probe(node, n)
            return {k: walk(c, path + (k,)) for k, c in node.items()}
        for p, leaf in jax.tree_util.tree_flatten_with_path(node)[0]:
            if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                bad.append((_where(path) + jax.tree_util.keystr(p), leaf))
        return node

    probed = walk(params, ())
    if bad:
        raise _unsupported(fn, *bad[0], len(bad) - 1)
    return probed


def _consumers(jaxpr: Any, var: Any) -> list[str]:
    """The primitives that read `var`, looking through `jit`/`remat` calls."""
    found = []
    for eqn in jaxpr.eqns:
        for i, u in enumerate(eqn.invars):
            if u is not var:
                continue
            inner = eqn.params.get("jaxpr") if eqn.primitive.name in _CALLS else None
            if inner is None:
                found.append(eqn.primitive.name)
            else:
                inner = getattr(inner, "jaxpr", inner)
                found += _consumers(inner, inner.invars[i])
    found += ["output"] * sum(u is var for u in jaxpr.outvars)
    return found


def _check_probe_uses(fn: str, losses_of: Callable, probed: PyTree) -> None:
    """Each probe must be read once, by a ghost rule: not ignored (a layer without a
    ghost-norm rule), not twice (shared weights: ‖a + b‖ is not ‖a‖ + ‖b‖), not
    inside a loop or conditional (the same, per iteration)."""
    closed = jax.make_jaxpr(lambda p: losses_of(p)[0])(probed)
    leaves = jax.tree_util.tree_flatten_with_path(probed)[0]
    for (path, _), var in zip(leaves, closed.jaxpr.invars):
        if getattr(path[-1], "key", None) != PROBE:
            continue
        layer = "params" + jax.tree_util.keystr(path[:-1])
        uses = _consumers(closed.jaxpr, var)
        if len(uses) == 1 and uses[0] in _RULES:
            continue
        if not uses:
            why = ("belongs to a layer that has no ghost-norm rule (it does not read the "
                   f"probe; rules exist for {_SUPPORTED}), so its per-example gradient "
                   "would not be counted")
        elif len(uses) > 1:
            why = (f"is used {len(uses)} times (shared weights): its per-example gradient "
                   "is a sum over the uses, whose norm is not given by the uses' norms")
        else:
            why = (f"is used inside {uses[0]!r} (a loop, conditional or other "
                   "transformation), where the ghost norm of one application is not the "
                   "norm of the layer's per-example gradient")
        raise ValueError(f"{fn}: the layer with {layer} {why}; {_FALLBACK}")


# --------------------------------------------------------------------------- #
# The ghost pass
# --------------------------------------------------------------------------- #


def _batch_size(fn: str, x: Any) -> int:
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves or jnp.ndim(leaves[0]) < 1:
        raise ValueError(f"{fn}: x must have a leading batch axis (one row per example), "
                         f"got {jax.tree_util.tree_map(jnp.shape, x)}")
    return int(jnp.shape(leaves[0])[0])


def _check_inputs(fn: str, model: Layer, loss: LossFn) -> None:
    if not isinstance(model, Layer):
        raise TypeError(f"{fn}: model must be an fdl.layers.Layer, got {type(model).__name__}")
    if not callable(loss):
        raise TypeError(f"{fn}: loss must be callable as loss(outputs, y) -> (N,), got {loss!r}")


def _check_losses(fn: str, ell: Any, n: int) -> None:
    if jnp.shape(ell) != (n,):
        raise ValueError(
            f"{fn}: loss(outputs, y) must return one loss per example, shape ({n},), got "
            f"shape {jnp.shape(ell)}; e.g. loss=lambda out, y: "
            "fdl.losses.softmax_cross_entropy(out, y, reduction='none') (for sequences "
            "add .sum(axis=1) or .mean(axis=1))")


def _ghost_pass(fn: str, model: Layer, params: PyTree, state: PyTree, x: Any, y: Any,
                loss: LossFn, key: jax.Array | None, train: bool
                ) -> tuple[jax.Array, jax.Array, Callable, PyTree]:
    """$(ℓ, ‖g‖, vjp, new_state)$: one forward, one backward (of $Σᵢ ℓᵢ$)."""
    _check_inputs(fn, model, loss)
    n = _batch_size(fn, x)
    probed = _with_probes(fn, params, n)

    def losses_of(p: PyTree) -> tuple[jax.Array, PyTree]:
        out, new_state = model.apply(p, state, x, key=key, train=train)
        ell = loss(out, y)
        _check_losses(fn, ell, n)
        return ell, new_state

    _check_probe_uses(fn, losses_of, probed)
    ell, vjp, new_state = jax.vjp(losses_of, probed, has_aux=True)
    (cotangents,) = vjp(jnp.ones_like(ell))
    sq = jnp.zeros((n,), ell.dtype)
    for path, leaf in jax.tree_util.tree_flatten_with_path(cotangents)[0]:
        if getattr(path[-1], "key", None) == PROBE:
            sq = sq + leaf.astype(ell.dtype)
    return ell, jnp.sqrt(sq), vjp, new_state


def _without_probes(tree: PyTree) -> PyTree:
    if isinstance(tree, dict):
        return {k: _without_probes(c) for k, c in tree.items() if k != PROBE}
    return tree


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def per_example_grad_norms(model: Layer, params: PyTree, state: PyTree, x: Any, y: Any, *,
                           loss: LossFn = _per_example_cross_entropy,
                           key: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Per-example gradient norms $‖∇_θ ℓᵢ‖₂$ over all parameters, without forming
    per-example gradients (ghost norms: step 1 in `fdl.privacy`).

    Args:
      model: a `fdl.layers.Layer` whose parameters all belong to layers with a
        ghost-norm rule (see `fdl.privacy`).
      params, state: the model's parameters and state.
      x, y: a batch (axis 0 of $x$ indexes the $N$ examples) and its targets.
      loss: `loss(outputs, y) -> (N,)` per-example losses.
      key, train: passed to `model.apply`.

    Returns:
      `(N,)` norms, equal (to rounding) to the norms of `vmap` per-example gradients.

    Raises:
      ValueError: a parameter the ghost-norm path does not count, a shared or looped
        layer, or a loss that does not return one value per example.
    """
    _, norms, _, _ = _ghost_pass("per_example_grad_norms", model, params, state, x, y,
                                 loss, key, train)
    return norms


def clip_factors(norms: jax.Array, clip_norm: float) -> jax.Array:
    """$cᵢ = min(1, C/‖gᵢ‖)$, computed as $C / max(C, ‖gᵢ‖)$ (1 at ‖gᵢ‖ = 0)."""
    return clip_norm / jnp.maximum(norms, clip_norm)


def dp_sgd_grads(model: Layer, params: PyTree, state: PyTree, x: Any, y: Any, *,
                 key: jax.Array, clip_norm: float, noise_multiplier: float,
                 loss: LossFn = _per_example_cross_entropy, train: bool = False) -> DPGrads:
    """The DP-SGD gradient $g̃ = (Σᵢ cᵢ gᵢ + σ C ξ)/N$ (Abadi et al. 2016), from ghost
    norms and a second backward pass; see `fdl.privacy` for the equations.

    Args:
      model, params, state, x, y, loss, train: as in `per_example_grad_norms`.
      key: PRNG key for the noise $ξ$ (and, split off, the model's randomness);
        `fdl.random.key(seed)` draws it in straight-line code on CPU, where JAX's
        default Threefry key runs a loop per parameter.
      clip_norm: $C > 0$, the bound on each example's gradient norm.
      noise_multiplier: $σ ≥ 0$; the noise has standard deviation $σC$ per
        coordinate of the summed gradient (0: clipping only, no privacy).

    Returns:
      `DPGrads` `(grads, norms, loss, model_state)`; feed `grads` to any
      `fdl.optim.Optimizer`.
    """
    fn = "dp_sgd_grads"
    v.finite_number(fn, "clip_norm", clip_norm, low=0, low_inclusive=False)
    v.finite_number(fn, "noise_multiplier", noise_multiplier, low=0)
    if not hasattr(key, "dtype"):
        raise TypeError(f"{fn}: key must be a PRNG key (jax.random.key(seed)), got {key!r}")
    noise_key, model_key = jax.random.split(key)
    ell, norms, vjp, new_state = _ghost_pass(fn, model, params, state, x, y, loss,
                                             model_key, train)
    c = jax.lax.stop_gradient(clip_factors(norms, clip_norm)).astype(ell.dtype)
    (clipped_sum,) = vjp(c)  # ∇_θ Σᵢ cᵢ ℓᵢ = Σᵢ cᵢ gᵢ
    leaves, treedef = jax.tree_util.tree_flatten(_without_probes(clipped_sum))
    n = ell.shape[0]
    keys = jax.random.split(noise_key, max(len(leaves), 1))
    std = noise_multiplier * clip_norm

    def privatise(g: jax.Array, k: jax.Array) -> jax.Array:
        if not jnp.issubdtype(g.dtype, jnp.floating):  # an integer leaf: no gradient
            return g
        if noise_multiplier:
            g = g + std * jax.random.normal(k, g.shape, g.dtype)
        return g / n

    grads = jax.tree_util.tree_unflatten(treedef, [privatise(g, k) for g, k in zip(leaves, keys)])
    return DPGrads(grads, norms, jnp.mean(ell), new_state)
