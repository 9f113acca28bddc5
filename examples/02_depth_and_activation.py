r"""Depth and activation: what happens to an MLP if we add a layer, or swap ReLU for tanh?

Four classifiers of an image ``x`` (flattened, standardised), all ending in a softmax
cross-entropy over the 10 classes:

    single layer          logits = tanh(A x + b)
    1 hidden, tanh        logits = W₂ tanh(W₁ x + b₁) + b₂
    1 hidden, ReLU        logits = W₂ relu(W₁ x + b₁) + b₂
    2 hidden, ReLU        logits = W₃ relu(W₂ relu(W₁ x + b₁) + b₂) + b₃

each trained with Adam on mini-batches from several random initialisations (seeds).
The script reports the test error ``E(T)`` against the step ``T``: its mean over the
seeds and its spread (min to max). The single layer can only draw linear boundaries
between classes, and ``tanh`` squeezes its logits into ``[−1, 1]``, so its softmax
stays soft; one hidden layer removes both limits; the second hidden layer and the
choice of ReLU or tanh matter much less on these small images.

All seeds of one model train at once: the whole run is ``vmap`` over the seeds'
keys of a ``lax.scan`` over steps, one compiled program per model.

Data: the embedded 8×8 digits by default; ``--data DIR`` reads MNIST-format IDX files
from ``DIR`` (``fdl.data.load``).

Run:  python examples/02_depth_and_activation.py [--quick | --full] [--data DIR] [--out DIR]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from _gallery import jit_for, parse, pick, print_table, save_figure
from fdl import layers as L


def models(hidden: int, classes: int) -> dict[str, L.Layer]:
    """The four networks of the question."""
    return {
        "single layer tanh(Ax+b)": L.serial(L.Flatten(), L.Dense(classes), L.Tanh()),
        "1 hidden, tanh": L.mlp([hidden], classes, activation="tanh"),
        "1 hidden, relu": L.mlp([hidden], classes, activation="relu"),
        "2 hidden, relu": L.mlp([hidden, hidden], classes, activation="relu"),
    }


def error_curves(model: L.Layer, data: fdl.data.Dataset, seeds: int, steps: int, every: int,
                 batch_size: int = 64, lr: float = 1e-3, jit: Callable = jax.jit) -> np.ndarray:
    """Test error after every ``every`` steps, one row per seed: ``(seeds, steps // every)``."""
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    opt = fdl.optim.adam(lr)

    def loss(params, state, xb, yb):
        return fdl.losses.softmax_cross_entropy(model.apply(params, state, xb)[0], yb)

    def one_seed(key):
        k_init, k_run = jax.random.split(key)
        _, params, state = model.init(k_init, data.input_shape)

        def step(carry, k):
            params, opt_state = carry
            i = jax.random.randint(k, (batch_size,), 0, len(y))
            g = jax.grad(loss)(params, state, x[i], y[i])
            u, opt_state = opt.update(g, opt_state, params)
            return (fdl.optim.apply_updates(params, u), opt_state), None

        def chunk(carry, k):
            carry, _ = jax.lax.scan(step, carry, jax.random.split(k, every))
            logits = model.apply(carry[0], state, x_test)[0]
            return carry, jnp.mean(jnp.argmax(logits, -1) != y_test)

        keys = jax.random.split(k_run, steps // every)
        return jax.lax.scan(chunk, (params, opt.init(params)), keys)[1]

    keys = jax.random.split(jax.random.key(0), seeds)
    return np.asarray(jit(jax.vmap(one_seed))(keys))


def main(argv: Sequence[str] | None = None) -> dict:
    """Train the four networks over several seeds; report E(T) mean and spread."""
    args = parse(__doc__, argv, lambda p: p.add_argument(
        "--data", default=None, help="directory of MNIST IDX files (default: embedded digits)"))
    raw = fdl.data.load(args.data, flatten=True) if args.data else \
        fdl.data.load_digits(flatten=True)
    data, _ = fdl.data.standardize_dataset(raw)
    steps, every = pick(args, 300, 1500, 6000), pick(args, 50, 50, 100)
    seeds, hidden = pick(args, 3, 5, 10), pick(args, 64, 100, 256)
    print(f"{data.name}: {len(data.y_train)} training, {len(data.y_test)} test examples; "
          f"{seeds} seeds, {steps} Adam steps of 64, hidden width {hidden}")
    steps_axis = np.arange(1, steps // every + 1) * every
    curves = {name: error_curves(m, data, seeds, steps, every, jit=jit_for(args))
              for name, m in models(hidden, data.num_classes).items()}
    marks = sorted({0, len(steps_axis) // 5, len(steps_axis) - 1})
    print_table(["model", *(f"E({steps_axis[i]}) mean ± std" for i in marks)],
                [[name, *(f"{c[:, i].mean():.4f} ± {c[:, i].std():.4f}" for i in marks)]
                 for name, c in curves.items()])
    final = {name: float(c[:, -1].mean()) for name, c in curves.items()}

    def draw(plt):
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, c in curves.items():
            line, = ax.plot(steps_axis, c.mean(0), label=name)
            ax.fill_between(steps_axis, c.min(0), c.max(0), color=line.get_color(), alpha=0.2)
        ax.set(yscale="log", xlabel="step T", ylabel="test error E(T)",
               title=f"{data.name}: mean over {seeds} seeds, band = min to max")
        ax.legend()
        return fig

    figure = save_figure(args, "depth_and_activation.png", draw)
    return {"steps": steps_axis, "curves": curves, "final": final, "figure": figure}


if __name__ == "__main__":
    main()
