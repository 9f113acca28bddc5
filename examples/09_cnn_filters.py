r"""A convolutional network on the digits, and what its first layer learned.

A convolution slides one small kernel ``K ∈ ℝ^{k×k×C_in×C_out}`` over the image
(NHWC, batch-first), so every output position applies the same filter to its own
``k×k`` patch::

    Y[n, i, j, o] = b_o + Σ_{u,v,c} X[n, i+u, j+v, c] K[u, v, c, o]

(``'SAME'`` zero padding keeps the 8×8 size). Sharing ``K`` across positions is the
point: a 5×5×1×16 first layer has 416 parameters instead of a dense layer's 64·64·16,
and a stroke detector learned in one corner works everywhere. Its gradient is again a
correlation, ``∂L/∂K[u, v, c, o] = Σ_{n,i,j} X[n, i+u, j+v, c] G[n, i, j, o]`` with
``G = ∂L/∂Y`` (written by hand in ``fdl.ops.conv2d``).

The network: Conv(16, 5×5) → ReLU → MaxPool 2×2 → Conv(32, 3×3) → ReLU → Flatten →
Dense(10), trained with Adam by ``fdl.train.fit`` (each epoch one compiled
``lax.scan``). The figure shows the 16 learned first-layer filters, next to their
random initial values, and what each one responds to on a test digit.

Run:  python examples/09_cnn_filters.py [--quick | --full] [--out DIR]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

import fdl
from _gallery import parse, pick, print_table, save_figure
from fdl import layers as L


def network() -> L.Layer:
    return L.serial(L.Conv2D(16, 5), L.Relu(), L.MaxPool2D(2),
                    L.Conv2D(32, 3), L.Relu(), L.Flatten(), L.Dense(10))


def main(argv: Sequence[str] | None = None) -> dict:
    """Train the CNN; report accuracy per epoch; draw the first-layer filters."""
    args = parse(__doc__, argv)
    epochs = pick(args, 3, 15, 40)
    data, _ = fdl.data.standardize_dataset(fdl.data.load_digits(), axis=(0, 1, 2))
    model = network()
    trainer = fdl.train.Trainer(model, fdl.optim.adam(2e-3))
    ts = trainer.init(jax.random.key(0), data.input_shape)
    initial = np.asarray(ts.params["conv2d_0"]["w"])  # copy: fit donates the state
    ts, history = fdl.train.fit(trainer, ts, data.x_train, data.y_train, epochs=epochs,
                                batch_size=32, x_test=data.x_test, y_test=data.y_test,
                                progress=False)
    print_table(["epoch", "train loss", "test loss", "test accuracy"],
                [[r["epoch"], r["train_loss"], r["test_loss"], r["test_accuracy"]]
                 for r in history.records])
    filters = np.asarray(ts.params["conv2d_0"]["w"])[:, :, 0, :]  # (5, 5, 16)
    digit = data.x_test[:1]
    first = ts.params["conv2d_0"]
    maps = np.asarray(fdl.ops.relu(fdl.ops.conv2d(digit, first["w"], first["b"])))[0]  # 8×8×16
    change = float(np.linalg.norm(filters - initial[:, :, 0, :]) / np.linalg.norm(initial))
    print(f"test accuracy {history['test_accuracy'][-1]:.4f}; first-layer filters moved "
          f"{change:.2f}× their initial norm")

    def draw(plt):
        fig, axes = plt.subplots(3, 17, figsize=(15, 3.4),
                                 gridspec_kw={"width_ratios": [1.3] + [1] * 16})
        rows = [("initial", initial[:, :, 0, :]), ("learned", filters), ("response", maps)]
        for r, (label, stack) in enumerate(rows):
            if r == 2:
                axes[r, 0].imshow(digit[0, :, :, 0], cmap="gray_r")
                axes[r, 0].set_title("input → ReLU(X⋆K+b)", fontsize=8)
            else:
                axes[r, 0].axis("off")
                axes[r, 0].text(0.5, 0.5, f"{label}\nfilters K", ha="center", va="center")
            for o in range(16):
                lim = np.abs(stack[:, :, o]).max() or 1.0
                axes[r, o + 1].imshow(stack[:, :, o], cmap="magma" if r == 2 else "RdBu_r",
                                      vmin=0 if r == 2 else -lim, vmax=lim)
        for ax in axes.ravel():
            ax.set(xticks=[], yticks=[])
        fig.suptitle(f"first-layer 5×5 filters of a CNN on digits "
                     f"(test accuracy {history['test_accuracy'][-1]:.3f})")
        return fig

    figure = save_figure(args, "cnn_filters.png", draw)
    return {"history": history.records, "test_accuracy": history["test_accuracy"][-1],
            "filters": filters, "initial": initial[:, :, 0, :], "filter_change": change,
            "figure": figure}


if __name__ == "__main__":
    main()
