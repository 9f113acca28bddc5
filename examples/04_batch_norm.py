r"""Batch normalisation across learning rates.

The same deep ReLU network, ``depth`` hidden layers of width 64, with and without
batch normalisation after each affine map::

    plain:        h ← relu(h W + b)
    batch norm:   h ← relu(γ ⊙ (u − μ_B) / √(σ²_B + ε) + β),   u = h W + b

(``μ_B, σ²_B`` the mean and variance of ``u`` over the mini-batch, per feature), trained
with plain SGD at learning rates spread over five decades. For each rate the script
reports the final training loss, or that training diverged (a non-finite loss, or a
loss above the initial one).

Why batch norm widens the range: the normalised output does not change when the
weights before it are scaled, ``BN((aW)h) = BN(Wh)`` for ``a > 0``, so the gradient with
respect to ``W`` scales as ``1/a`` and a too-large step grows ``‖W‖``, which shrinks the
next steps instead of compounding. Without it, a step that makes one layer's
outputs larger makes every later layer's larger too, and the loss blows up.

All learning rates train at once: ``vmap`` over the rates of a ``lax.scan`` over the
steps (the rate enters ``fdl.optim.sgd`` as a constant schedule).

References: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training
by Reducing Internal Covariate Shift", 2015; Santurkar et al., "How Does Batch
Normalization Help Optimization?", 2018.

Run:  python examples/04_batch_norm.py [--quick | --full] [--out DIR]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from _gallery import jit_for, parse, pick, print_table, save_figure
from fdl import layers as L


def network(depth: int, batch_norm: bool, classes: int = 10) -> L.Layer:
    """Flatten → [Dense(64) → (BatchNorm) → ReLU] × depth → Dense(classes)."""
    layers = [L.Flatten()]
    for _ in range(depth):
        layers += [L.Dense(64, w_init="he_normal")] + ([L.BatchNorm()] if batch_norm else [])
        layers.append(L.Relu())
    return L.serial(*layers, L.Dense(classes))


def final_losses(model: L.Layer, data: fdl.data.Dataset, lrs: np.ndarray, steps: int,
                 batch_size: int = 64, jit: Callable = jax.jit) -> tuple[np.ndarray, float]:
    """Mean training loss over the last tenth of ``steps`` SGD steps, per learning rate,
    and the loss at initialisation (all training examples as one batch)."""
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    _, params0, state0 = model.init(jax.random.key(0), data.input_shape)

    def loss(params, state, xb, yb):
        logits, state = model.apply(params, state, xb, train=True)
        return fdl.losses.softmax_cross_entropy(logits, yb), state

    def run(lr):
        opt = fdl.optim.sgd(lambda count: lr)

        def step(carry, k):
            params, state, opt_state = carry
            i = jax.random.randint(k, (batch_size,), 0, len(y))
            (value, state), g = jax.value_and_grad(loss, has_aux=True)(params, state, x[i], y[i])
            u, opt_state = opt.update(g, opt_state, params)
            return (fdl.optim.apply_updates(params, u), state, opt_state), value

        keys = jax.random.split(jax.random.key(1), steps)
        values = jax.lax.scan(step, (params0, state0, opt.init(params0)), keys)[1]
        return jnp.mean(values[-max(steps // 10, 1):])

    start = float(jit(loss)(params0, state0, x, y)[0])
    return np.asarray(jit(jax.vmap(run))(jnp.asarray(lrs, jnp.float32))), start


def main(argv: Sequence[str] | None = None) -> dict:
    """Final loss (or divergence) against learning rate, with and without batch norm."""
    args = parse(__doc__, argv)
    data, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))
    steps, depth = pick(args, 150, 600, 3000), pick(args, 6, 8, 10)
    lrs = np.geomspace(1e-3, 30.0, pick(args, 10, 16, 25))
    results: dict = {"lrs": lrs, "initial": {}, "losses": {}, "diverged": {}}
    for bn in (False, True):
        name = "with batch norm" if bn else "without"
        final, start = final_losses(network(depth, bn), data, lrs, steps, jit=jit_for(args))
        results["losses"][name], results["initial"][name] = final, start
        # diverged: the loss is not finite, or it ended well above where it started
        results["diverged"][name] = ~np.isfinite(final) | (final > 1.5 * start)
    print(f"{depth} hidden layers of 64, plain SGD, {steps} steps of 64 digits; "
          f"final = mean training loss over the last {max(steps // 10, 1)} steps; initial "
          + ", ".join(f"{v:.3f} {n}" for n, v in results["initial"].items()))
    print_table(["learning rate", "final loss, without BN", "final loss, with BN"],
                [[f"{lr:.3g}", *("diverged" if results["diverged"][n][i] else float(l[i])
                                 for n, l in results["losses"].items())]
                 for i, lr in enumerate(lrs)])

    def draw(plt):
        fig, ax = plt.subplots(figsize=(8, 5))
        top = 1.6 * max(results["initial"].values())
        for (name, final), marker in zip(results["losses"].items(), "os"):
            ok = ~results["diverged"][name]
            line, = ax.plot(lrs[ok], final[ok], marker + "-", label=name)
            ax.plot(lrs[~ok], np.full((~ok).sum(), top), marker, mfc="none",
                    color=line.get_color())
            ax.axhline(results["initial"][name], color=line.get_color(), ls=":", lw=0.8)
        ax.text(lrs[0], top * 1.05, "hollow: diverged (non-finite, or 1.5× the initial "
                "loss, dotted)", fontsize=9, va="bottom")
        ax.set(xscale="log", yscale="log", xlabel="learning rate (SGD)",
               ylabel="final training loss",
               title=f"{depth}-hidden-layer ReLU network on digits, {steps} steps")
        ax.legend(loc="lower left")
        return fig

    results["figure"] = save_figure(args, "batch_norm.png", draw)
    return results


if __name__ == "__main__":
    main()
