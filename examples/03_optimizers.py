r"""Optimizers are moving averages.

Every optimizer here is gradient descent ``θ_t = θ_{t−1} + u_t`` with a different
update ``u_t`` built from exponential moving averages (EMAs) of the gradient
``g_t = ∇f(θ_{t−1})`` and of its square (element-wise)::

    SGD                 u = −η g
    momentum (sum)      v = μ v + g                      u = −η v          (Polyak's heavy ball)
    momentum (EMA)      m = β m + (1 − β) g              u = −η' m
    RMSProp             s = ρ s + (1 − ρ) g²             u = −η g / (√s + ε)
    Adam                m = β₁ m + (1 − β₁) g,  s = β₂ s + (1 − β₂) g²
                        u = −η m̂ / (√ŝ + ε),  m̂ = m / (1 − β₁ᵗ),  ŝ = s / (1 − β₂ᵗ)

The two momentum forms are one method: with all averages started at zero,
``m_t = (1 − β) v_t``, so the EMA form with ``η' = η / (1 − β)`` takes exactly the
heavy ball's steps. Momentum averages away the zig-zag across a narrow valley and
keeps the steady component along it; RMSProp divides each coordinate by the size
of its own recent gradients, so steep and shallow directions move at similar
speeds; Adam does both.

The script writes each update above by hand (a few lines each, below), checks that
``fdl.optim``'s ``sgd``, ``ema_momentum``, ``rmsprop`` and ``adam`` take the same
steps (feeding the hand-written rule the gradients along fdl's path), and draws
their trajectories over the contours of an ill-conditioned quadratic
``f(x, y) = ½(x² + κ y²)`` and of the Rosenbrock function
``f(x, y) = (1 − x)² + 100 (y − x²)²``, with loss curves of a small MLP on the digits.

References: Polyak, 1964 (heavy ball); Tieleman & Hinton, 2012 (RMSProp);
Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015.

Run:  python examples/03_optimizers.py [--quick | --full] [--out DIR]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from _gallery import jit_for, parse, pick, print_table, save_figure

KAPPA = 50.0  # condition number of the quadratic
EPS = 1e-8


def quadratic(p: jax.Array) -> jax.Array:
    return 0.5 * (p[0] ** 2 + KAPPA * p[1] ** 2)


def rosenbrock(p: jax.Array) -> jax.Array:
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


# The updates by hand: state, gradient, step number t ≥ 1 -> (update, state).
def sgd_by_hand(lr: float):
    return (), lambda s, g, t: (-lr * g, s)


def heavy_ball_by_hand(lr: float, mu: float):
    def step(v, g, t):
        v = mu * v + g
        return -lr * v, v
    return 0.0, step


def ema_momentum_by_hand(lr: float, beta: float):
    def step(m, g, t):
        m = beta * m + (1 - beta) * g
        return -lr * m, m
    return 0.0, step


def rmsprop_by_hand(lr: float, rho: float):
    def step(s, g, t):
        s = rho * s + (1 - rho) * g**2
        return -lr * g / (jnp.sqrt(s) + EPS), s
    return 0.0, step


def adam_by_hand(lr: float, b1: float, b2: float):
    def step(state, g, t):
        m, s = state
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * g**2
        # 1 − βᵗ as −expm1(t log β): in float32, 1 − 0.999ᵗ would lose 4 digits to cancellation
        m_hat, s_hat = m / -jnp.expm1(t * math.log(b1)), s / -jnp.expm1(t * math.log(b2))
        return -lr * m_hat / (jnp.sqrt(s_hat) + EPS), (m, s)
    return (0.0, 0.0), step


def optimizers(lr: dict[str, float]) -> dict[str, tuple[fdl.optim.Optimizer, tuple]]:
    """Name -> (fdl.optim optimizer, the same update by hand), learning rates per name."""
    mu = 0.9
    return {
        "SGD": (fdl.optim.sgd(lr["SGD"]), sgd_by_hand(lr["SGD"])),
        "momentum (sum)": (fdl.optim.sgd(lr["momentum"], momentum=mu),
                           heavy_ball_by_hand(lr["momentum"], mu)),
        "momentum (EMA)": (fdl.optim.ema_momentum(lr["momentum"] / (1 - mu), beta=mu),
                           ema_momentum_by_hand(lr["momentum"] / (1 - mu), mu)),
        "RMSProp": (fdl.optim.rmsprop(lr["RMSProp"], decay=0.9, eps=EPS),
                    rmsprop_by_hand(lr["RMSProp"], 0.9)),
        "Adam": (fdl.optim.adam(lr["Adam"], b1=0.9, b2=0.999, eps=EPS),
                 adam_by_hand(lr["Adam"], 0.9, 0.999)),
    }


def trajectory(opt: fdl.optim.Optimizer, f: Callable, start: jax.Array, steps: int) -> jax.Array:
    """θ_0 … θ_steps under ``opt`` (steps + 1 points)."""
    def body(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(f)(p), s, p)
        p = fdl.optim.apply_updates(p, u)
        return (p, s), p
    _, path = jax.lax.scan(body, (start, opt.init(start)), None, length=steps)
    return jnp.concatenate([start[None], path])


def updates_by_hand(hand: tuple, grads: jax.Array) -> jax.Array:
    """The hand-written updates ``u_1 … u_T`` for the gradient sequence ``g_1 … g_T``."""
    state0, step = hand
    state0 = jax.tree_util.tree_map(lambda z: jnp.full_like(grads[0], z), state0)

    def body(s, inputs):
        g, t = inputs
        u, s = step(s, g, t)
        return s, u
    t = jnp.arange(1, len(grads) + 1, dtype=grads.dtype)
    return jax.lax.scan(body, state0, (grads, t))[1]


PROBLEMS = {
    "quadratic": (quadratic, (-4.0, 1.5),
                  {"SGD": 0.037, "momentum": 0.004, "RMSProp": 0.1, "Adam": 0.3}),
    "Rosenbrock": (rosenbrock, (-1.2, 1.0),
                   {"SGD": 1e-3, "momentum": 2e-4, "RMSProp": 1e-2, "Adam": 0.05}),
}


def digits_curves(epochs: int, hidden: int, jit: Callable = jax.jit) -> dict[str, list[float]]:
    """Mean training loss per epoch of a one-hidden-layer MLP on the digits, per optimizer.

    The whole run (epochs of shuffled mini-batches) is one compiled ``lax.scan``.
    """
    data, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))
    lrs = {"SGD": 0.05, "momentum": 0.005, "RMSProp": 1e-3, "Adam": 1e-3}
    model = fdl.layers.mlp([hidden], data.num_classes)
    _, params, state = model.init(jax.random.key(0), data.input_shape)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    def loss(p, xb, yb):
        return fdl.losses.softmax_cross_entropy(model.apply(p, state, xb)[0], yb)

    def run(opt):
        def step(carry, batch):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p, *batch)
            u, s = opt.update(g, s, p)
            return (fdl.optim.apply_updates(p, u), s), value

        def epoch(carry, key):
            carry, values = jax.lax.scan(step, carry, fdl.data.shuffled_batches(key, (x, y), 64))
            return carry, jnp.mean(values)

        keys = jax.random.split(jax.random.key(1), epochs)
        return jax.lax.scan(epoch, (params, opt.init(params)), keys)[1]

    return {name: [float(v) for v in jit(run, static_argnums=0)(opt)]
            for name, (opt, _) in optimizers(lrs).items()}


def main(argv: Sequence[str] | None = None) -> dict:
    """Trajectories (fdl.optim vs by hand), final losses, and digits loss curves."""
    args = parse(__doc__, argv)
    steps = {"quadratic": pick(args, 100, 100, 200), "Rosenbrock": pick(args, 500, 3000, 20000)}
    epochs, hidden = pick(args, 2, 15, 60), pick(args, 32, 64, 256)
    results: dict = {"paths": {}, "final": {}, "hand_vs_fdl": {}}
    jit = jit_for(args)
    rows = []
    for problem, (f, start, lrs) in PROBLEMS.items():
        start = jnp.asarray(start, jnp.float32)
        results["paths"][problem] = {}
        for name, (opt, hand) in optimizers(lrs).items():
            path = jit(trajectory, static_argnums=(0, 1, 3))(opt, f, start, steps[problem])
            # the same gradients fed to both (a float32 rounding difference would
            # otherwise grow along a chaotic path, e.g. RMSProp on Rosenbrock)
            fdl_updates = path[1:] - path[:-1]
            by_hand = jit(lambda p: updates_by_hand(hand, jax.vmap(jax.grad(f))(p)))(path[:-1])
            diff = float(jnp.max(jnp.abs(fdl_updates - by_hand)) / jnp.max(jnp.abs(by_hand)))
            final = float(f(path[-1]))
            results["paths"][problem][name] = np.asarray(path)
            results["final"][(problem, name)] = final
            results["hand_vs_fdl"][(problem, name)] = diff
            rows.append([problem, name, steps[problem], final, diff])
    print_table(["problem", "optimizer", "steps", "final f",
                 "max |u_fdl − u_hand| / max |u_hand|"], rows)
    q = results["paths"]["quadratic"]
    results["momentum_forms_diff"] = float(
        np.max(np.abs(q["momentum (sum)"] - q["momentum (EMA)"])))
    print(f"heavy ball vs EMA momentum with η' = η/(1 − β): max difference "
          f"{results['momentum_forms_diff']:.2e}")

    results["digits"] = digits_curves(epochs, hidden, jit)
    print_table(["optimizer", "loss after epoch 1", f"after epoch {epochs}"],
                [[n, c[0], c[-1]] for n, c in results["digits"].items()])

    def draw(plt):
        fig, axes = plt.subplots(1, 3, figsize=(16, 5))
        grids = {"quadratic": ((-4.5, 4.5), (-2, 2)), "Rosenbrock": ((-1.6, 1.4), (-0.6, 1.8))}
        for ax, (problem, (f, _, _)) in zip(axes, PROBLEMS.items()):
            (x0, x1), (y0, y1) = grids[problem]
            X, Y = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
            Z = np.asarray(jax.vmap(f)(jnp.stack([X.ravel(), Y.ravel()], 1))).reshape(X.shape)
            levels = np.geomspace(max(Z.min(), 1e-3), Z.max(), 15)
            ax.contour(X, Y, Z, levels=levels, colors="0.75", linewidths=0.7)
            for name, path in results["paths"][problem].items():
                style = ":" if name == "momentum (EMA)" else "-"
                ax.plot(path[:, 0], path[:, 1], style, lw=1.3, label=name)
            ax.plot(*( (0, 0) if problem == "quadratic" else (1, 1)), "k*", ms=10)
            ax.set(xlim=(x0, x1), ylim=(y0, y1),
                   title=f"{problem}, {steps[problem]} steps" +
                         (f" (κ = {KAPPA:g})" if problem == "quadratic" else ""))
        axes[0].legend(fontsize=8, loc="lower right")
        ax = axes[2]
        for name, curve in results["digits"].items():
            ax.plot(np.arange(1, len(curve) + 1), curve, ":" if "EMA" in name else "-",
                    label=name)
        ax.set(yscale="log", xlabel="epoch", ylabel="training loss",
               title=f"digits MLP (hidden {hidden})")
        ax.legend(fontsize=8)
        eqs = (r"SGD: $u=-\eta g$" "\n"
               r"momentum: $v=\mu v+g,\ u=-\eta v$" "\n"
               r"  $\equiv m=\beta m+(1-\beta)g,\ u=-\frac{\eta}{1-\beta}m$" "\n"
               r"RMSProp: $s=\rho s+(1-\rho)g^2,\ u=-\eta g/(\sqrt{s}+\epsilon)$" "\n"
               r"Adam: $m,s$ as above, $u=-\eta\,\hat m/(\sqrt{\hat s}+\epsilon)$")
        fig.text(0.5, -0.02, eqs, ha="center", va="top", fontsize=10, family="serif")
        return fig

    results["figure"] = save_figure(args, "optimizers.png", draw)
    return results


if __name__ == "__main__":
    main()
