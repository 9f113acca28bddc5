r"""A single neuron, by hand: logistic regression on digits 0 vs 1.

The model is one sigmoid neuron on an 8×8 image ``x ∈ ℝ^{64}``::

    z = xᵀw + b,    p = σ(z) = 1 / (1 + e^{−z}),    w ∈ ℝ^{64}, b ∈ ℝ

trained on the mean binary cross-entropy over ``N`` examples (``X ∈ ℝ^{N×64}``,
labels ``y ∈ {0, 1}^N``)::

    L(w, b) = −(1/N) Σ_n [ y_n log p_n + (1 − y_n) log(1 − p_n) ].

The gradient, derived with the chain rule. Write ``ℓ(z) = −y log σ(z) − (1 − y)
log(1 − σ(z))``. Since ``σ'(z) = σ(z)(1 − σ(z))``,

    dℓ/dz = −y (1 − σ(z)) + (1 − y) σ(z) = σ(z) − y = p − y,

the famous "prediction minus target". Then ``∂z_n/∂w = x_n`` and ``∂z_n/∂b = 1``, so
summing over the examples (``1`` the vector of ones)::

    ∂L/∂w = (1/N) Xᵀ (p − y)   ∈ ℝ^{64},
    ∂L/∂b = (1/N) 1ᵀ (p − y)   ∈ ℝ.

The script implements exactly these two lines, checks them with
:func:`fdl.check.grad` (against ``jax.grad`` and against finite differences), and then
trains the neuron with plain gradient descent ``θ ← θ − η ∇L(θ)``. The learned
weights, drawn as an 8×8 image, show the neuron's template: positive where a 1 has
ink and a 0 has none, negative on the ring of a 0.

Run:  python examples/01_single_neuron.py [--quick | --full] [--out DIR]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from _gallery import parse, pick, print_table, save_figure


def zeros_and_ones() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits 0 and 1 from the embedded set, flat (N, 64) in [0, 1], labels 0./1."""
    d = fdl.data.load_digits(flatten=True)
    train, test = np.isin(d.y_train, (0, 1)), np.isin(d.y_test, (0, 1))
    return (d.x_train[train], d.y_train[train].astype(np.float32),
            d.x_test[test], d.y_test[test].astype(np.float32))


def loss(w: jax.Array, b: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of σ(Xw + b) against y."""
    return fdl.losses.sigmoid_binary_cross_entropy(x @ w + b, y)


def my_grad(w: jax.Array, b: jax.Array, x: jax.Array, y: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
    """The hand derivation: ∂L/∂w = Xᵀ(p − y)/N and ∂L/∂b = 1ᵀ(p − y)/N."""
    r = jax.nn.sigmoid(x @ w + b) - y
    return x.T @ r / len(y), jnp.sum(r) / len(y)


def main(argv: Sequence[str] | None = None) -> dict:
    """Check the hand gradient, train with gradient descent, report and draw."""
    args = parse(__doc__, argv)
    steps = pick(args, 100, 300, 2000)
    lr = 0.5
    x_train, y_train, x_test, y_test = zeros_and_ones()
    print(f"digits 0 vs 1: {len(y_train)} training and {len(y_test)} test images")

    key_w, key_x = jax.random.split(jax.random.key(0))
    w = 0.01 * jax.random.normal(key_w, (64,), jnp.float32)
    b = jnp.zeros((), jnp.float32)
    x, y = jnp.asarray(x_train), jnp.asarray(y_train)
    report = fdl.check.grad(lambda w, b: loss(w, b, x, y), lambda w, b: my_grad(w, b, x, y),
                            w, b, key=key_x)
    print(report)

    @jax.jit
    def gd_step(w, b, _):
        gw, gb = my_grad(w, b, x_train, y_train)
        w, b = w - lr * gw, b - lr * gb
        return (w, b), (loss(w, b, x_train, y_train), loss(w, b, x_test, y_test))

    (w, b), (train_curve, test_curve) = jax.lax.scan(
        lambda c, t: gd_step(*c, t), (w, b), jnp.arange(steps))

    def accuracy(x, y):
        return float(jnp.mean(((x @ w + b) > 0) == (y > 0.5)))

    train_curve, test_curve = np.asarray(train_curve), np.asarray(test_curve)
    marks = sorted({0, steps // 10, steps // 2, steps - 1})
    print_table(["step", "train loss", "test loss"],
                [[t + 1, float(train_curve[t]), float(test_curve[t])] for t in marks])
    results = {
        "check_passed": report.passed,
        "check_worst": report.worst(),
        "train_loss": train_curve,
        "test_loss": test_curve,
        "train_accuracy": accuracy(x_train, y_train),
        "test_accuracy": accuracy(x_test, y_test),
        "w": np.asarray(w),
    }
    print(f"gradient check passed: {report.passed} (worst relative error "
          f"{results['check_worst']:.2e});  train accuracy {results['train_accuracy']:.4f}, "
          f"test accuracy {results['test_accuracy']:.4f}")

    def draw(plt):
        fig, (a, c) = plt.subplots(1, 2, figsize=(9, 3.6))
        steps_axis = np.arange(1, steps + 1)
        a.semilogy(steps_axis, train_curve, label="train")
        a.semilogy(steps_axis, test_curve, "--", label="test")
        a.set(xlabel="gradient-descent step", ylabel="cross-entropy L(w, b)",
              title=r"$\nabla_w L = X^\top(p-y)/N$, checked by fdl.check.grad")
        a.legend()
        lim = float(np.abs(results["w"]).max())
        im = c.imshow(results["w"].reshape(8, 8), cmap="RdBu_r", vmin=-lim, vmax=lim)
        c.set(title="learned w (red: evidence for '1')", xticks=[], yticks=[])
        fig.colorbar(im, ax=c)
        return fig

    results["figure"] = save_figure(args, "single_neuron.png", draw)
    return results


if __name__ == "__main__":
    main()
