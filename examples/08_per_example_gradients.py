r"""Per-example gradients: ``vmap`` of ``grad`` against a Python loop, and DP-SGD clipping.

A mini-batch gradient is the mean of ``N`` per-example gradients
``gᵢ = ∇_θ ℓ(θ; xᵢ, yᵢ)``, but ordinary backpropagation only ever forms the sum.
Some methods need each ``gᵢ``: differentially private SGD clips every one to norm
``C`` before summing,

    g̃ = (1/N) (Σᵢ cᵢ gᵢ + σ C ξ),     cᵢ = min(1, C / ‖gᵢ‖),    ξ ~ N(0, I),

so that no single example can move the parameters by more than ``C/N`` (plus noise).

Three ways to get them, compared here on an MLP on the digits:

* a Python loop: ``jax.grad`` of one example's loss, called ``N`` times;
* ``jax.vmap(jax.grad(ℓ))`` (``fdl.train.per_example_grads``): the same function,
  batched by JAX into one program — the hand-written rules of fdl's primitives
  batch like any JAX function;
* ghost norms (``fdl.privacy.per_example_grad_norms``): only the norms ``‖gᵢ‖``, from
  one ordinary backward pass — for a dense layer ``‖∂ℓᵢ/∂W‖_F = ‖xᵢ‖ ‖∂ℓᵢ/∂yᵢ‖``,
  so no per-example gradient is ever formed.

The script checks the three agree, times them against the batch size, and clips:
``fdl.privacy.dp_sgd_grads`` with ``σ = 0`` equals ``(1/N) Σᵢ cᵢ gᵢ`` computed from
the ``vmap`` gradients.

References: Goodfellow, "Efficient Per-Example Gradient Computations", 2015; Abadi
et al., "Deep Learning with Differential Privacy", 2016.

Run:  python examples/08_per_example_gradients.py [--quick | --full] [--out DIR]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from _gallery import parse, pick, print_table, save_figure


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` runs in seconds, after one warm-up (compilation) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def max_relative_difference(a, b) -> float:
    """``max |a − b| / max |b|`` over all leaves of two pytrees of one structure."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(la, lb)) / \
        max(float(jnp.max(jnp.abs(v))) for v in lb)


def global_norms(tree) -> jax.Array:
    """``‖gᵢ‖`` over all leaves, for per-example gradients with a leading batch axis."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, 1) for g in leaves))


def main(argv: Sequence[str] | None = None) -> dict:
    """Check loop = vmap = ghost norms, time them, and clip as DP-SGD does."""
    args = parse(__doc__, argv)
    sizes = pick(args, (4, 16, 64), (4, 16, 64, 256), (4, 16, 64, 256, 1024))
    repeats = pick(args, 2, 5, 10)
    data, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))
    model = fdl.layers.mlp([128], data.num_classes)
    _, params, state = model.init(jax.random.key(0), data.input_shape)

    def loss(p, x, y):
        return fdl.losses.softmax_cross_entropy(model.apply(p, state, x)[0], y)

    grad_one = jax.jit(lambda p, x, y: jax.grad(loss)(p, x[None], y[None]))
    vmapped = jax.jit(lambda p, x, y: fdl.train.per_example_grads(loss, p, x, y))
    ghost = jax.jit(lambda p, x, y: fdl.privacy.per_example_grad_norms(model, p, state, x, y))

    def loop(p, x, y):
        return [grad_one(p, x[i], y[i]) for i in range(len(y))]

    # 1. equal values, on the largest batch
    n = sizes[-1]
    x, y = jnp.asarray(data.x_train[:n]), jnp.asarray(data.y_train[:n])
    by_vmap = vmapped(params, x, y)
    by_loop = jax.tree_util.tree_map(lambda *g: jnp.stack(g), *loop(params, x, y))
    diff = max_relative_difference(by_vmap, by_loop)
    norms = global_norms(by_vmap)
    ghost_diff = float(jnp.max(jnp.abs(ghost(params, x, y) - norms) / norms))
    print(f"N = {n}: max |vmap − loop| / max |loop| = {diff:.2e}; max relative difference "
          f"of the norms, ghost vs vmap = {ghost_diff:.2e}")

    # 2. timing against the batch size
    times = {"Python loop of grad": [], "vmap of grad": [], "ghost norms": []}
    for m in sizes:
        xm, ym = x[:m], y[:m]
        times["Python loop of grad"].append(best_time(lambda: loop(params, xm, ym), repeats))
        times["vmap of grad"].append(best_time(lambda: vmapped(params, xm, ym), repeats))
        times["ghost norms"].append(best_time(lambda: ghost(params, xm, ym), repeats))
    print_table(["N", *(f"{k} (ms)" for k in times), "loop / vmap"],
                [[m, *(1e3 * t[i] for t in times.values()),
                  times["Python loop of grad"][i] / times["vmap of grad"][i]]
                 for i, m in enumerate(sizes)])

    # 3. DP-SGD clipping: clip every example's gradient to norm C (the median norm)
    clip = float(jnp.median(norms))
    c = fdl.privacy.clip_factors(norms, clip)
    clipped = jax.tree_util.tree_map(lambda g: g * c.reshape((-1,) + (1,) * (g.ndim - 1)),
                                     by_vmap)
    mean_clipped = jax.tree_util.tree_map(lambda g: jnp.mean(g, 0), clipped)
    dp = fdl.privacy.dp_sgd_grads(model, params, state, x, y, key=jax.random.key(1),
                                  clip_norm=clip, noise_multiplier=0.0)
    dp_diff = max_relative_difference(dp.grads, mean_clipped)
    clipped_norms = global_norms(clipped)
    print(f"clip at C = {clip:.3f} (median norm): {int(jnp.sum(norms > clip))} of {n} examples "
          f"clipped; max clipped norm {float(clipped_norms.max()):.4f}; "
          f"dp_sgd_grads(σ=0) vs the mean of the clipped vmap gradients: max relative "
          f"difference {dp_diff:.2e}")

    def draw(plt):
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name, t in times.items():
            a.loglog(sizes, 1e3 * np.asarray(t), "o-", label=name)
        a.set(xlabel="batch size N", ylabel="time per batch (ms, best of runs)",
              title="per-example gradients, digits MLP 64-128-10")
        a.legend()
        bins = np.linspace(0, float(norms.max()) * 1.05, 40)
        b.hist(np.asarray(norms), bins, alpha=0.6, label="‖gᵢ‖")
        b.hist(np.asarray(clipped_norms), bins, alpha=0.6, label="‖cᵢ gᵢ‖ (clipped)")
        b.axvline(clip, color="k", ls=":", label=f"C = {clip:.2f}")
        b.set(xlabel="per-example gradient norm", ylabel="examples",
              title=r"DP-SGD clipping $c_i = \min(1, C/\|g_i\|)$")
        b.legend()
        return fig

    figure = save_figure(args, "per_example_gradients.png", draw)
    return {"sizes": sizes, "times": times, "vmap_vs_loop": diff, "ghost_vs_vmap": ghost_diff,
            "dp_vs_clipped_mean": dp_diff, "clip_norm": clip, "norms": np.asarray(norms),
            "clipped_norms": np.asarray(clipped_norms), "figure": figure}


if __name__ == "__main__":
    main()
