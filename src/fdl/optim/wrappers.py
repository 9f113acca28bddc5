r"""Wrappers: optimizers built around another optimizer.

* `lookahead`: a slow copy of the weights pulled towards the fast ones every $k$ steps.
* `partition`, `masked`, `freeze`, `by_path`: different transforms for different
  groups of parameters (no weight decay on biases and norms; frozen layers).
* `apply_if_finite`: skip, and count, the steps whose gradients are not finite.
* `ema_params`: an exponential moving average of the parameters (Polyak
  averaging) kept beside the training, for evaluation.

Each takes an `Optimizer` (any `init`/`update` pair) and returns one, with a
state class of its own whose `inner_state` is the wrapped optimizer's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl import _validate as V
from fdl.optim.base import (
    Optimizer,
    Params,
    Updates,
    acc_dtype,
    chain,
    check_float,
    check_like,
    check_optimizer,
    check_state,
    increment,
    label,
    public_names,
    require_params,
    zero_count,
)
from fdl.optim.transforms import Mask, _resolve_mask


# --------------------------------------------------------------------------
# Lookahead
# --------------------------------------------------------------------------


class LookaheadState(NamedTuple):
    """State of `lookahead`.

    Fields:
      count:       int32[], updates so far.
      slow:        pytree like params, $φ$, the slow weights (accumulator dtype).
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array
    slow: Any
    inner_state: Any


def lookahead(optimizer: Optimizer, sync_period: int = 6, slow_step_size: float = 0.5) -> Optimizer:
    r"""Lookahead: $k$ steps of any optimizer forward, then one step back towards the slow weights.

    $k$ = `sync_period` $≥ 1$, $α$ = `slow_step_size` $∈ (0, 1]$, $θ$ the fast
    weights (the params), $φ$ the slow weights ($φ_0 = θ_0$), $u_t$ the wrapped
    optimizer's update:

    $$ θ̃_t = θ_{t−1} + u_t $$
    $$ φ_t = φ_{t−1} + α (θ̃_t − φ_{t−1}), \quad θ_t = φ_t \qquad (t \bmod k = 0) $$
    $$ φ_t = φ_{t−1}, \quad θ_t = θ̃_t \qquad \text{(otherwise)} $$

    The update returned is $θ_t − θ_{t−1}$; `update` needs `params`. The inner
    optimizer's state carries on across synchronisations. Evaluate with the slow
    weights, `state.slow` (equal to the params right after a synchronisation).

    References: Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps
    forward, 1 step back", 2019.
    """
    fn = label("lookahead")
    check_optimizer(fn, optimizer)
    k = V.int_at_least(fn, "sync_period", sync_period, 1)
    alpha = V.finite_real(fn, "slow_step_size", slow_step_size, minimum=0.0, strict=True)
    if V.is_concrete(alpha) and float(alpha) > 1.0:
        raise ValueError(f"{fn}: slow_step_size must be in (0, 1], got {alpha!r}")

    def init(params: Params) -> LookaheadState:
        check_float(fn, params, "parameter")
        slow = jax.tree.map(lambda p: jnp.asarray(p, acc_dtype(p)), params)
        return LookaheadState(zero_count(), slow, optimizer.init(params))

    def update(grads: Updates, state: LookaheadState, params: Params = None):
        check_state(fn, state, LookaheadState)
        require_params(fn, params)
        check_like(fn, grads, state.slow, "the state's slow weights")
        updates, inner = optimizer.update(grads, state.inner_state, params)
        sync = (state.count + 1) % k == 0

        def one(u, p, slow):
            fast = p.astype(slow.dtype) + u.astype(slow.dtype)
            new_slow = jnp.where(sync, slow + alpha * (fast - slow), slow).astype(slow.dtype)
            step = jnp.where(sync, new_slow - p.astype(slow.dtype), u.astype(slow.dtype))
            return step.astype(u.dtype), new_slow

        pairs = jax.tree.map(one, updates, params, state.slow)
        is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
        steps = jax.tree.map(lambda x: x[0], pairs, is_leaf=is_pair)
        slow = jax.tree.map(lambda x: x[1], pairs, is_leaf=is_pair)
        return steps, LookaheadState(increment(state.count), slow, inner)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Groups of parameters: partition, masked, freeze
# --------------------------------------------------------------------------


class PartitionState(NamedTuple):
    """State of `partition`.

    Fields:
      inner_states: dict label -> the state of that group's transform, which
                    sees the params' tree with `None` in place of the other
                    groups' leaves.
    """

    inner_states: dict


Labels = Any
"""A pytree of labels (strings) with the structure of the params, or a function
`params -> such a pytree` (see `by_path`)."""


def by_path(rule: Callable[[str, jax.Array], Hashable]) -> Callable[[Params], Labels]:
    """Labels from each leaf's path: `rule(path, leaf) -> label`, `path` as `"['dense']['b']"`.

    E.g. no weight decay on biases and normalisation parameters:
    `by_path(lambda path, x: "no_decay" if x.ndim < 2 or "norm" in path else "decay")`.
    """
    def labels(params: Params) -> Labels:
        return jax.tree_util.tree_map_with_path(
            lambda path, x: rule(jax.tree_util.keystr(path), x), params
        )

    return labels


def _resolve_labels(fn: str, labels: Labels, params: Params, known: dict) -> list:
    tree = labels(params) if callable(labels) else labels
    p_struct = jax.tree.structure(params)
    leaves = p_struct.flatten_up_to(tree) if jax.tree.structure(tree) == p_struct else None
    if leaves is None:
        raise ValueError(
            f"{fn}: labels must have the structure of the params, got labels "
            f"{jax.tree.structure(tree)} for params {p_struct}"
        )
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for path, name in zip(paths, leaves):
        if name not in known:
            raise ValueError(
                f"{fn}: the leaf at {path} has label {name!r}, which names no transform; "
                f"the transforms are {sorted(known, key=repr)}"
            )
    return leaves


def partition(transforms: dict[Hashable, Optimizer], labels: Labels) -> Optimizer:
    r"""Different transforms for different groups of parameters.

    `transforms` maps a label to an optimizer; `labels` gives each leaf its
    label (a pytree shaped like the params, or a function of the params, e.g.
    `by_path(…)`). Each transform sees the params' tree with `None` in place
    of the other groups' leaves (so its messages name the leaf paths), and
    keeps its own state for its own leaves only: for leaf $i$ with label
    $ℓ_i$, $u_i$ = the $i$-th output of `transforms[`$ℓ_i$`]`. E.g. AdamW for
    the matrices and Adam without decay for the rest:
    `partition({"decay": adamw(1e-3), "rest": adam(1e-3)},
    by_path(lambda path, x: "decay" if x.ndim >= 2 else "rest"))`.
    """
    fn = label("partition")
    if not isinstance(transforms, dict) or not transforms:
        raise TypeError(f"{fn}: transforms must be a non-empty dict label -> Optimizer, got {transforms!r}")
    for name, t in transforms.items():
        check_optimizer(fn, t, f"transforms[{name!r}]")

    def groups(params: Params) -> dict:
        leaves = _resolve_labels(fn, labels, params, transforms)
        return {name: [i for i, n in enumerate(leaves) if n == name] for name in transforms}

    def pick(tree: Any, index: list) -> Any:
        """`tree` with None in place of the leaves outside `index`."""
        if tree is None:
            return None
        leaves, treedef = jax.tree.flatten(tree)
        keep = set(index)
        return treedef.unflatten([x if i in keep else None for i, x in enumerate(leaves)])

    def init(params: Params) -> PartitionState:
        check_float(fn, params, "parameter")
        return PartitionState({
            name: transforms[name].init(pick(params, index))
            for name, index in groups(params).items()
        })

    def update(grads: Updates, state: PartitionState, params: Params = None):
        check_state(fn, state, PartitionState)
        check_float(fn, grads, "gradient")
        if params is not None:
            check_like(fn, grads, params, "the params")
        index_of = groups(grads if params is None else params)
        leaves, treedef = jax.tree.flatten(grads)
        out, new_states = list(leaves), {}
        for name, index in index_of.items():
            u, new_states[name] = transforms[name].update(
                pick(grads, index), state.inner_states[name], pick(params, index)
            )
            for i, leaf in zip(index, jax.tree.leaves(u)):
                out[i] = leaf
        return treedef.unflatten(out), PartitionState(new_states)

    return Optimizer(init, update)


def _mask_labels(fn: str, mask: Mask, true: str, false: str) -> Callable[[Params], Labels]:
    """Labels from a bool mask: `true` where it is True, `false` elsewhere."""
    def labels(params: Params) -> Labels:
        flags = _resolve_mask(fn, mask, params)
        return jax.tree.structure(params).unflatten([true if f else false for f in flags])

    return labels


def masked(optimizer: Optimizer, mask: Mask) -> Optimizer:
    r"""Apply `optimizer` to the leaves where `mask` is True; pass the others' gradients through.

    `mask`: a pytree of bools shaped like the params, or a function of the
    params returning one. $u_i$ = the optimizer's output for a masked-in leaf,
    $g_i$ itself for the others. E.g. weight decay on matrices only:
    `chain(masked(add_decayed_weights(1e-4), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)), …)`.
    """
    fn = label("masked")
    check_optimizer(fn, optimizer)

    return partition({"in": optimizer, "out": chain()}, _mask_labels(fn, mask, "in", "out"))


class SetToZeroState(NamedTuple):
    """State of `set_to_zero` (it keeps nothing)."""


def set_to_zero() -> Optimizer:
    """$u = 0$ for every leaf: the transform of frozen parameters."""

    def update(grads: Updates, state: SetToZeroState, params: Params = None):
        check_state("set_to_zero", state, SetToZeroState)
        return jax.tree.map(jnp.zeros_like, grads), state

    return Optimizer(lambda params: SetToZeroState(), update)


def freeze(optimizer: Optimizer, frozen: Mask) -> Optimizer:
    r"""Train with `optimizer` except the leaves where `frozen` is True, which never move ($u = 0$).

    The frozen leaves keep no optimizer state.
    `partition({"train": optimizer, "frozen": set_to_zero()}, …)`.
    """
    fn = label("freeze")
    check_optimizer(fn, optimizer)

    labels = _mask_labels(fn, frozen, "frozen", "train")
    return partition({"train": optimizer, "frozen": set_to_zero()}, labels)


# --------------------------------------------------------------------------
# Skipping non-finite steps
# --------------------------------------------------------------------------


class ApplyIfFiniteState(NamedTuple):
    """State of `apply_if_finite`.

    Fields:
      notfinite_count: int32[], consecutive non-finite steps so far (0 after a finite one).
      last_finite:     bool[], whether the last step's gradients were all finite.
      total_notfinite: int32[], non-finite steps since init.
      inner_state:     the wrapped optimizer's state (unchanged by a skipped step).
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


def apply_if_finite(optimizer: Optimizer, max_consecutive_errors: int = 5) -> Optimizer:
    r"""Skip (zero update, state unchanged) the steps whose gradients hold a NaN or an infinity.

    With $n$ = `max_consecutive_errors`: a step whose gradients are all finite
    runs `optimizer`; a non-finite one returns $u = 0$ and leaves the inner
    state as it was, and is counted (`notfinite_count`, `total_notfinite`).
    After more than $n$ consecutive non-finite steps the update is applied
    anyway, so that a run that has truly diverged shows its NaNs instead of
    stalling silently.
    """
    fn = label("apply_if_finite")
    check_optimizer(fn, optimizer)
    limit = V.int_at_least(fn, "max_consecutive_errors", max_consecutive_errors, 0)

    def init(params: Params) -> ApplyIfFiniteState:
        zero = zero_count()
        return ApplyIfFiniteState(zero, jnp.asarray(True), zero, optimizer.init(params))

    def update(grads: Updates, state: ApplyIfFiniteState, params: Params = None):
        check_state(fn, state, ApplyIfFiniteState)
        check_float(fn, grads, "gradient")
        finite = jnp.asarray(True)
        for g in jax.tree.leaves(grads):
            finite = finite & jnp.all(jnp.isfinite(g))
        notfinite = jnp.where(finite, 0, increment(state.notfinite_count)).astype(jnp.int32)
        apply = finite | (notfinite > limit)
        updates, inner = optimizer.update(grads, state.inner_state, params)
        updates = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), updates)
        inner = jax.tree.map(lambda new, old: jnp.where(apply, new, old), inner, state.inner_state)
        total = jnp.where(finite, state.total_notfinite, increment(state.total_notfinite))
        return updates, ApplyIfFiniteState(notfinite, finite, total.astype(jnp.int32), inner)

    return Optimizer(init, update)


# --------------------------------------------------------------------------
# Polyak averaging
# --------------------------------------------------------------------------


class EmaParamsState(NamedTuple):
    """State of `ema_params`.

    Fields:
      ema:         pytree like params, $θ̄$, the averaged parameters (accumulator dtype).
      inner_state: the wrapped optimizer's state.
    """

    ema: Any
    inner_state: Any


def ema_params(optimizer: Optimizer, decay: float = 0.999) -> Optimizer:
    r"""Train with `optimizer` and keep an exponential moving average of the parameters.

    $β$ = `decay` $∈ [0, 1)$, $u_t$ the optimizer's update, $θ̄_0 = θ_0$:

    $$ θ_t = θ_{t−1} + u_t, \qquad θ̄_t = β θ̄_{t−1} + (1 − β) θ_t $$

    The updates returned are the optimizer's, unchanged; $θ̄$ is `state.ema`:
    evaluate with it (it averages out the last steps' noise; Polyak & Juditsky's
    average with $β → 1$). `update` needs `params`.

    References: Polyak & Juditsky, "Acceleration of Stochastic Approximation by
    Averaging", 1992.
    """
    fn = label("ema_params")
    check_optimizer(fn, optimizer)
    decay = V.decay_rate(fn, "decay", decay)

    def init(params: Params) -> EmaParamsState:
        check_float(fn, params, "parameter")
        average = jax.tree.map(lambda p: jnp.asarray(p, acc_dtype(p)), params)
        return EmaParamsState(average, optimizer.init(params))

    def update(grads: Updates, state: EmaParamsState, params: Params = None):
        check_state(fn, state, EmaParamsState)
        require_params(fn, params)
        check_like(fn, grads, state.ema, "the state's ema")
        updates, inner = optimizer.update(grads, state.inner_state, params)

        def average(a, p, u):
            new = p.astype(a.dtype) + u.astype(a.dtype)
            return (decay * a + (1 - decay) * new).astype(a.dtype)

        return updates, EmaParamsState(jax.tree.map(average, state.ema, params, updates), inner)

    return Optimizer(init, update)


__all__ = public_names(globals(), __name__)
