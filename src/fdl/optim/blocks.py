r"""Transforms that treat each leaf (a layer's weight, a bias) as one block.

The notation is that of `fdl.optim.methods`; here a leaf $d$ (or $g$, $θ$) is
a block, $‖d‖$ its Frobenius norm and
$\operatorname{RMS}(d) = ‖d‖ / √n$ over its $n$ elements.

* `scale_by_trust_ratio`: rescale each block to a fixed fraction of its
  parameter's norm (LARS, LAMB).
* `scale_by_factored_rms`: Adafactor's second moments, kept as a row and a
  column average for matrices.
* `clip_by_block_rms`, `scale_by_param_block_rms`: Adafactor's update clipping
  and relative step size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl import _validate as V
from fdl.optim.base import (
    Optimizer,
    Params,
    PerLeaf,
    Updates,
    acc_dtype,
    check_float,
    check_hyperparams,
    check_like,
    check_state,
    increment,
    label,
    lift,
    public_names,
    require_params,
    step_number,
    zero_count,
)
from fdl.optim.transforms import Mask, _resolve_mask


def _rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(x * x))


class ScaleByTrustRatioState(NamedTuple):
    """State of `scale_by_trust_ratio` (it keeps nothing)."""


def scale_by_trust_ratio(
    trust_coefficient: float = 1.0, eps: float = 0.0, *, mask: Mask = None
) -> Optimizer:
    r"""Layer-wise trust ratio: scale each block of the direction by its parameter's norm.

    $c$ = `trust_coefficient` $> 0$, $ε$ = `eps` $≥ 0$, $θ$ the block's
    parameter (from `params`):

    $$ d' = φ \, d, \qquad φ = \frac{c ‖θ‖}{‖d‖ + ε}, \quad φ = 1 \text{ where } ‖θ‖ = 0 \text{ or } ‖d‖ = 0 $$

    so every block moves by $c ‖θ‖$ times the learning rate (relative to its
    own size), whatever the scale of its gradient. `mask` (as in
    `add_decayed_weights`) selects the blocks that are rescaled; the others
    pass through. `update` needs `params`.

    References: You, Gitman & Ginsburg, "Large Batch Training of Convolutional
    Networks", 2017 (LARS); You et al., "Large Batch Optimization for Deep
    Learning: Training BERT in 76 minutes", 2020 (LAMB).
    """
    fn = label("scale_by_trust_ratio")
    coefficient = V.finite_real(fn, "trust_coefficient", trust_coefficient, minimum=0.0, strict=True)
    eps = V.finite_real(fn, "eps", eps, minimum=0.0)

    def init(params: Params) -> ScaleByTrustRatioState:
        _resolve_mask(fn, mask, params)
        return ScaleByTrustRatioState()

    def step(g, params, scaled):
        if not scaled:
            return g
        p_norm, d_norm = jnp.linalg.norm(params), jnp.linalg.norm(g)
        ratio = coefficient * p_norm / (d_norm + eps)
        return g * jnp.where((p_norm == 0) | (d_norm == 0), 1.0, ratio)

    def update(grads: Updates, state: ScaleByTrustRatioState, params: Params = None):
        check_state(fn, state, ScaleByTrustRatioState)
        require_params(fn, params, "the trust ratio")
        flags = _resolve_mask(fn, mask, params)
        flags = PerLeaf([True] * len(jax.tree.leaves(grads)) if flags is None else flags)
        d, _ = lift(fn, step, grads, read={"params": params, "scaled": flags})
        return d, state

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Adafactor's pieces
# --------------------------------------------------------------------------


class ScaleByFactoredRmsState(NamedTuple):
    """State of `scale_by_factored_rms`.

    Fields:
      count: int32[], updates so far ($t − 1$ during the next update).
      v_row: per leaf, $R$ = EMA of the row means of $g² + ε$, shape `g.shape[:-1]`
             for a factored leaf, `(1,)` otherwise (accumulator dtype).
      v_col: per leaf, $C$ = EMA of the column means, shape `g.shape[:-2] + g.shape[-1:]`
             for a factored leaf, `(1,)` otherwise.
      v:     per leaf, $V$ = EMA of $g² + ε$, shape of $g$ for an unfactored leaf,
             `(1,)` for a factored one.
    """

    count: jax.Array
    v_row: Any
    v_col: Any
    v: Any


def scale_by_factored_rms(
    decay_exponent: float = 0.8, eps: float = 1e-30, min_dim_size_to_factor: int = 128
) -> Optimizer:
    r"""Adafactor's second-moment scaling, factored into row and column averages for matrices.

    $c$ = `decay_exponent`, $ε₁$ = `eps` $> 0$, $β̂_t = 1 − t^{−c}$ (so $β̂_1 = 0$).
    A leaf whose last two dimensions are both $≥$ `min_dim_size_to_factor` is
    factored; for $g ∈ ℝ^{…×n×m}$, with means over the last axes:

    $$ R_t = β̂_t R_{t−1} + (1 − β̂_t) \operatorname{mean}_j (g_t² + ε₁)_{·j} \quad ∈ ℝ^{…×n} $$
    $$ C_t = β̂_t C_{t−1} + (1 − β̂_t) \operatorname{mean}_i (g_t² + ε₁)_{i·} \quad ∈ ℝ^{…×m} $$
    $$ V̂_t = R_t C_tᵀ / \operatorname{mean}_i R_{t,i}, \qquad d_t = g_t / √V̂_t $$

    ($V̂$ is the rank-1 matrix whose row and column means are $R$ and $C$:
    $O(n + m)$ memory instead of $O(nm)$.) Any other leaf keeps the full
    average, $V_t = β̂_t V_{t−1} + (1 − β̂_t)(g_t² + ε₁)$ and $d_t = g_t/√V_t$.
    The paper writes row and column *sums*; their ratio $R Cᵀ / 1ᵀR$ is the same.

    References: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with
    Sublinear Memory Cost", 2018.
    """
    fn = label("scale_by_factored_rms")
    decay_exponent = V.finite_real(fn, "decay_exponent", decay_exponent, minimum=0.0, strict=True)
    (eps,) = check_hyperparams(fn, eps=eps)
    min_dim = V.int_at_least(fn, "min_dim_size_to_factor", min_dim_size_to_factor, 1)

    def factored(shape: tuple) -> bool:
        return len(shape) >= 2 and min(shape[-2:]) >= min_dim

    def fields_shapes(shape: tuple) -> tuple:
        """The shapes of (v_row, v_col, v) for a leaf of this shape."""
        if factored(shape):
            return shape[:-1], shape[:-2] + shape[-1:], (1,)
        return (1,), (1,), shape

    def init(params: Params) -> ScaleByFactoredRmsState:
        check_float(fn, params, "parameter")

        def zeros(p, shape):
            return jnp.zeros(shape, acc_dtype(p))

        def fields(p):
            return tuple(zeros(p, shape) for shape in fields_shapes(jnp.shape(p)))

        leaves, treedef = jax.tree.flatten(params)
        rows, cols, full = zip(*[fields(p) for p in leaves]) if leaves else ((), (), ())
        return ScaleByFactoredRmsState(
            zero_count(), *(treedef.unflatten(list(x)) for x in (rows, cols, full))
        )

    def step(g, row, col, full, beta):
        """One leaf: (d, new v_row, new v_col, new v); the unused fields pass through."""
        g32 = g.astype(row.dtype)
        sq = g32 * g32 + eps
        if factored(g.shape):
            new_row = beta * row + (1 - beta) * jnp.mean(sq, axis=-1)
            new_col = beta * col + (1 - beta) * jnp.mean(sq, axis=-2)
            mean_row = jnp.mean(new_row, axis=-1)[..., None, None]
            v_hat = new_row[..., :, None] * new_col[..., None, :] / mean_row
            new_full = full
        else:
            new_row, new_col = row, col
            new_full = v_hat = beta * full + (1 - beta) * sq
        news = (new.astype(old.dtype) for new, old in zip((new_row, new_col, new_full), (row, col, full)))
        return ((g32 / jnp.sqrt(v_hat)).astype(g.dtype), *news)

    def update(grads: Updates, state: ScaleByFactoredRmsState, params: Params = None):
        check_state(fn, state, ScaleByFactoredRmsState)
        check_float(fn, grads, "gradient")
        leaves, treedef = jax.tree.flatten(grads)
        columns = []
        for field in ("v_row", "v_col", "v"):
            tree = getattr(state, field)
            if jax.tree.structure(tree) != treedef:
                check_like(fn, grads, tree, f"the state's {field}")
            columns.append(treedef.flatten_up_to(tree))
        beta = 1.0 - step_number(state.count) ** (-decay_exponent)
        out = []
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(grads)[0]]
        for path, g, *olds in zip(paths, leaves, *columns):
            want = fields_shapes(g.shape)
            if tuple(x.shape for x in olds) != want:
                raise ValueError(
                    f"{fn}: the gradient at {path or '<root>'} has shape {g.shape}, so the state's "
                    f"(v_row, v_col, v) should have shapes {want}, got {tuple(x.shape for x in olds)}"
                )
            out.append(step(g, *olds, beta))
        d, rows, cols, fulls = (treedef.unflatten([o[i] for o in out]) for i in range(4))
        return d, ScaleByFactoredRmsState(increment(state.count), rows, cols, fulls)

    return Optimizer(init, update)


class ClipByBlockRmsState(NamedTuple):
    """State of `clip_by_block_rms` (it keeps nothing)."""


def clip_by_block_rms(threshold: float = 1.0) -> Optimizer:
    r"""Adafactor's update clipping: $d' = d / \max(1, \operatorname{RMS}(d)/c)$ per block.

    $c$ = `threshold` $> 0$. A block whose root-mean-square exceeds $c$ is scaled
    down to RMS $c$; the others pass through. This bounds the step when the
    slow second-moment estimate lags a sudden rise in the gradients.

    References: Shazeer & Stern, "Adafactor", 2018 (Section 6).
    """
    fn = label("clip_by_block_rms")
    threshold = V.finite_real(fn, "threshold", threshold, minimum=0.0, strict=True)

    def init(params: Params) -> ClipByBlockRmsState:
        return ClipByBlockRmsState()

    def update(grads: Updates, state: ClipByBlockRmsState, params: Params = None):
        check_state(fn, state, ClipByBlockRmsState)
        d, _ = lift(fn, lambda g: g / jnp.maximum(1.0, _rms(g) / threshold), grads)
        return d, state

    return Optimizer(init, update)


class ScaleByParamBlockRmsState(NamedTuple):
    """State of `scale_by_param_block_rms` (it keeps nothing)."""


def scale_by_param_block_rms(min_scale: float = 1e-3) -> Optimizer:
    r"""Adafactor's relative step: $d' = \max(ε₂, \operatorname{RMS}(θ)) \, d$ per block.

    $ε₂$ = `min_scale` $> 0$ keeps parameters initialised at zero moving. With a
    learning rate this makes the step size relative to each block's scale.
    `update` needs `params`.

    References: Shazeer & Stern, "Adafactor", 2018 (Section 8).
    """
    fn = label("scale_by_param_block_rms")
    min_scale = V.finite_real(fn, "min_scale", min_scale, minimum=0.0, strict=True)

    def init(params: Params) -> ScaleByParamBlockRmsState:
        return ScaleByParamBlockRmsState()

    def update(grads: Updates, state: ScaleByParamBlockRmsState, params: Params = None):
        check_state(fn, state, ScaleByParamBlockRmsState)
        require_params(fn, params, "the relative step")
        d, _ = lift(fn, lambda g, params: g * jnp.maximum(min_scale, _rms(params)), grads,
                    read={"params": params})
        return d, state

    return Optimizer(init, update)


__all__ = public_names(globals(), __name__)
