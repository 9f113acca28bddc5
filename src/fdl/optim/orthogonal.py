r"""Muon: momentum orthogonalised by a Newton–Schulz iteration, for 2-D weights.

The notation is that of `fdl.optim.methods`; here $G ∈ ℝ^{n×m}$ is one matrix
leaf (a dense layer's weight), $‖·‖_F$ the Frobenius norm.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fdl import _validate as V
from fdl.optim.base import (
    Optimizer,
    Params,
    ScalarOrSchedule,
    Updates,
    chain,
    check_float,
    check_hyperparams,
    check_state,
    label,
    lift,
    naming,
    public_names,
    zeros_acc,
)
from fdl.optim.methods import ema, scale_by_adam
from fdl.optim.registry import register
from fdl.optim.transforms import add_decayed_weights, scale_by_learning_rate
from fdl.optim.wrappers import Labels, by_path, partition

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""$(a, b, c)$ of the quintic Newton–Schulz step, chosen (Jordan et al.) so that
singular values in $(0, 1]$ reach about $[0.7, 1.2]$ in five steps."""


def orthogonalize(m: jax.Array, steps: int = 5, eps: float = 1e-7) -> jax.Array:
    r"""$≈ U Vᵀ$ for $M = U Σ Vᵀ$: the quintic Newton–Schulz iteration on one matrix.

    $M ∈ ℝ^{n×m}$; with $X_0 = M / (‖M‖_F + ε)$ (all singular values $≤ 1$),
    transposed first when $n > m$ so that $X Xᵀ$ is the smaller Gram matrix:

    $$ A_k = X_k X_kᵀ, \qquad X_{k+1} = a X_k + (b A_k + c A_k²) X_k $$

    Each step maps every singular value $σ$ to $p(σ) = aσ + bσ³ + cσ⁵$ and keeps
    the singular vectors, so $X_K = U p^{∘K}(Σ) Vᵀ$; $(a, b, c)$ =
    `NS_COEFFICIENTS` push all of $(0, 1]$ close to 1 quickly (not exactly: the
    iteration trades accuracy for speed, as in the reference implementation).
    """
    transpose = m.shape[0] > m.shape[1]
    x = m.T if transpose else m
    x = x / (jnp.linalg.norm(x) + eps)
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transpose else x


class ScaleByMuonState(NamedTuple):
    """State of `scale_by_muon`.

    Fields:
      mu: pytree like params, $B$ = EMA of $g$ (accumulator dtype).
    """

    mu: Any


def scale_by_muon(
    momentum: float = 0.95, *, nesterov: bool = True, ns_steps: int = 5, eps: float = 1e-7
) -> Optimizer:
    r"""Muon's direction: the orthogonalised momentum of each matrix leaf.

    $μ$ = `momentum` $∈ [0, 1)$, $K$ = `ns_steps`, for $G_t ∈ ℝ^{n×m}$:

    $$ B_t = \operatorname{EMA}(B_{t−1}, G_t; μ) $$
    $$ M_t = (1 − μ) G_t + μ B_t \quad \text{(nesterov)}, \qquad M_t = B_t \quad \text{(otherwise)} $$
    $$ d_t = \sqrt{\max(1, m/n)} \; \operatorname{NS}_K(M_t) $$

    with $\operatorname{NS}_K$ = `orthogonalize`, $≈ U Vᵀ$ for $M_t = U Σ Vᵀ$:
    every direction of the momentum gets a step of the same size (the update's
    spectral norm is about 1), so rare directions are not drowned by common
    ones. With fdl's layout $W ∈ ℝ^{d_{in}×d_{out}}$ ($n = d_{in}$,
    $m = d_{out}$) the factor $\sqrt{\max(1, d_{out}/d_{in})}$ is the reference
    implementation's (written there for PyTorch's $d_{out}×d_{in}$ weights).
    Every leaf must be a matrix; `muon` sends the others to Adam.

    References: Jordan, Jin, Boza, You, Cesista, Newhouse & Bernstein, "Muon:
    An optimizer for hidden layers in neural networks", 2024; Liu et al.,
    "Muon is Scalable for LLM Training", 2025.
    """
    fn = label("scale_by_muon")
    momentum, nesterov, eps = check_hyperparams(fn, momentum=momentum, nesterov=nesterov, eps=eps)
    steps = V.int_at_least(fn, "ns_steps", ns_steps, 1)

    def init(params: Params) -> ScaleByMuonState:
        check_float(fn, params, "parameter")
        return ScaleByMuonState(zeros_acc(params))

    def step(g, mu):
        mu = ema(mu, g, momentum)
        m = ema(g, mu, 1 - momentum) if nesterov else mu
        n, k = g.shape
        return orthogonalize(m, steps, eps) * max(1.0, k / n) ** 0.5, {"mu": mu}

    def update(grads: Updates, state: ScaleByMuonState, params: Params = None):
        check_state(fn, state, ScaleByMuonState)
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
            if jnp.ndim(g) != 2:
                raise ValueError(
                    f"{fn}: Muon orthogonalises matrices, but the leaf at "
                    f"{jax.tree_util.keystr(path) or '<root>'} has shape {tuple(jnp.shape(g))}; "
                    "give the other leaves another optimizer (muon's labels do)"
                )
        d, new = lift(fn, step, grads, {"mu": state.mu})
        return d, ScaleByMuonState(**new)

    return Optimizer(init, update)


def _matrices(path: str, leaf: jax.Array) -> str:
    return "muon" if jnp.ndim(leaf) == 2 else "adam"


@register
def muon(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.95,
    weight_decay: float = 0.0,
    *,
    nesterov: bool = True,
    ns_steps: int = 5,
    eps: float = 1e-7,
    adam_learning_rate: ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    labels: Labels = None,
) -> Optimizer:
    r"""Muon for the matrices, Adam for the rest, partitioned by parameter path.

    $η_t$ = `learning_rate`, $λ$ = `weight_decay` (decoupled, both groups),
    $η^A_t$ = `adam_learning_rate` (default $η_t$). For a leaf labelled
    `"muon"` ($d_t$ of `scale_by_muon`) and one labelled `"adam"` ($m̂$, $v̂$
    Adam's with `adam_b1`, `adam_b2`, `adam_eps`):

    $$ u_t = −η_t (d_t + λ θ_{t−1}) \qquad u_t = −η^A_t (m̂_t / (√v̂_t + ε) + λ θ_{t−1}) $$

    `labels` (a pytree or function, see `partition` and `by_path`) defaults to
    `"muon"` for every 2-D leaf and `"adam"` for the others; embeddings and the
    output layer are commonly given to Adam as well, e.g.
    `labels=by_path(lambda path, x: "muon" if x.ndim == 2 and "embed" not in path else "adam")`.
    `chain(partition({"muon": chain(scale_by_muon(…), add_decayed_weights(λ),
    scale_by_learning_rate(η)), "adam": chain(scale_by_adam(…),
    add_decayed_weights(λ), scale_by_learning_rate(η^A))}, labels))`.

    References: Jordan et al., "Muon: An optimizer for hidden layers in neural
    networks", 2024; Liu et al., "Muon is Scalable for LLM Training", 2025.
    """
    matrices = chain(
        scale_by_muon(momentum, nesterov=nesterov, ns_steps=ns_steps, eps=eps),
        add_decayed_weights(weight_decay), scale_by_learning_rate(learning_rate),
    )
    adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
    with naming("muon", b1="adam_b1", b2="adam_b2", eps="adam_eps",
                learning_rate="adam_learning_rate"):
        others = chain(
            scale_by_adam(adam_b1, adam_b2, adam_eps), add_decayed_weights(weight_decay),
            scale_by_learning_rate(adam_lr),
        )
    labels = by_path(_matrices) if labels is None else labels
    return chain(partition({"muon": matrices, "adam": others}, labels))


__all__ = public_names(globals(), __name__)
