r"""Boltzmann machines and a restricted Boltzmann machine, verified and trained.

An RBM gives every joint state of binary visible units ``v`` and hidden units ``h``
an energy and a probability (``fdl.models.rbm`` has the derivations)::

    E(v, h) = −vᵀWh − bᵀv − cᵀh,      p(v, h) = e^{−E(v, h)} / Z,
    F(v) = −bᵀv − Σ_j softplus(c_j + (vᵀW)_j),      p(v) = e^{−F(v)} / Z.

Its learning rule is not autodiff's: the gradient of the negative log-likelihood is
the difference of two sets of statistics, written by hand::

    ∂(−log p(v))/∂W = ⟨v ĥᵀ⟩_model − ⟨v ĥᵀ⟩_data,     ĥ = p(h = 1 | v) = σ(c + vᵀW)

(and likewise ``⟨v⟩`` for ``b``, ``⟨ĥ⟩`` for ``c``). The data term is exact; the model
term is estimated by contrastive divergence (CD-k: k steps of block Gibbs sampling
started at the data). A fully connected Boltzmann machine has the same rule, but
with couplings inside each layer neither term is available without sampling; the
RBM's bipartite graph makes ``p(h | v)`` factorise (see ``fdl.models.rbm``).

This script verifies the rule the way fdl verifies everything, on a 6×4 RBM small
enough to enumerate all 2⁶ visible states:

(a) the data term written by hand equals autodiff of the mean free energy
    (``fdl.check.grad``);
(b) the CD-k estimate approaches the exact gradient (model term summed over every
    state) as k grows — the error against k is printed and drawn.

Then it trains an RBM with CD-1 on binarised 8×8 digits: free energy and
reconstruction error over training, the learned filters (columns of W as images) and
samples from the Gibbs chain started at test digits.

Run:  python examples/06_rbm.py [--quick | --full] [--out DIR]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from _gallery import jit_for, parse, pick, print_table, save_figure
from fdl.models import rbm

KS = (1, 2, 3, 5, 10, 20, 50)


def flat(g: rbm.RBMParams) -> jax.Array:
    return jnp.concatenate([x.ravel() for x in g])


def verify_small(chains_per_example: int, jit: Callable = jax.jit) -> dict:
    """(a) data term vs autodiff of F, (b) CD-k error against k, on a 6×4 RBM."""
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(0), 5)
    p = rbm.init(k1, 6, 4, scale=1.5)  # large weights: the chains mix slowly
    p = p._replace(b=0.5 * jax.random.normal(k2, (6,)), c=0.5 * jax.random.normal(k3, (4,)))
    data = rbm.all_states(6)[jax.random.choice(k4, 64, (20,))]

    report = fdl.check.grad(
        lambda params: jnp.mean(rbm.free_energy(params, data)),
        lambda params: jax.tree_util.tree_map(jnp.negative, rbm.data_statistics(params, data)),
        p)
    print(report)

    exact, log_likelihood = jit(lambda p: (flat(rbm.exact_gradient(p, data)),
                                           rbm.exact_log_likelihood(p, data)))(p)
    chains = jnp.tile(data, (chains_per_example, 1))

    @jit
    def cd_errors(key):  # one chain per data copy; CD-k for every k ≤ max(KS) at once
        positive = flat(rbm.data_statistics(p, chains))

        def body(v, k):
            v = rbm.gibbs_step(k, p, v)
            g = flat(rbm.data_statistics(p, v)) - positive
            return v, jnp.linalg.norm(g - exact) / jnp.linalg.norm(exact)
        return jax.lax.scan(body, chains, jax.random.split(key, max(KS)))[1]

    errors = np.asarray(cd_errors(k5))
    cd_error = {k: float(errors[k - 1]) for k in KS}
    print(f"CD-k vs the exact gradient (6×4 RBM, {len(chains)} chains, "
          f"log-likelihood {float(log_likelihood):.4f}):")
    print_table(["k", "‖CD-k − exact‖ / ‖exact‖"], [[k, e] for k, e in cd_error.items()])
    return {"check_passed": report.passed, "check_worst": report.worst("autodiff"),
            "cd_error": cd_error}


def train_digits(epochs: int, n_hidden: int, gibbs_steps: Sequence[int],
                 jit: Callable = jax.jit) -> dict:
    """CD-1 with momentum on binarised digits; per-epoch free energy and reconstruction."""
    d = fdl.data.load_digits(flatten=True)
    x_train = jnp.asarray(d.x_train > 0.5, jnp.float32)
    x_test = jnp.asarray(d.x_test > 0.5, jnp.float32)
    key, k_init, k_gibbs = jax.random.split(jax.random.key(1), 3)
    params = rbm.init(k_init, 64, n_hidden)
    params = params._replace(b=jnp.log((x_train.mean(0) + 0.01) / (1.01 - x_train.mean(0))))
    opt = fdl.optim.sgd(0.05, momentum=0.9)

    def measure(params):
        return {"reconstruction": rbm.reconstruction_error(params, x_train),
                "free_energy_train": jnp.mean(rbm.free_energy(params, x_train)),
                "free_energy_test": jnp.mean(rbm.free_energy(params, x_test))}

    @jit
    def epoch(params, state, key):
        k_shuffle, k_steps = jax.random.split(key)
        batches = fdl.data.shuffled_batches(k_shuffle, x_train, 32)

        def step(carry, inputs):
            params, state = carry
            batch, k = inputs
            g = rbm.cd_gradient(k, params, batch, 1)
            u, state = opt.update(g, state, params)
            return (fdl.optim.apply_updates(params, u), state), None

        keys = jax.random.split(k_steps, len(batches))
        (params, state), _ = jax.lax.scan(step, (params, state), (batches, keys))
        return params, state, measure(params)  # inside the compiled epoch

    state = opt.init(params)
    first = jit(measure)(params)
    history = {name: [float(first[name])] for name in
               ("reconstruction", "free_energy_train", "free_energy_test")}
    for key in jax.random.split(key, epochs):
        params, state, m = epoch(params, state, key)
        for name in history:
            history[name].append(float(m[name]))
    rows = [[e, *(history[n][e] for n in history)]
            for e in sorted({0, 1, epochs // 2, epochs})]
    print_table(["epoch", "reconstruction MSE", "mean F(train)", "mean F(test)"], rows)

    @functools.partial(jit, static_argnums=2)
    def gibbs(key, v, steps):  # the chain's state, and its mean-field image p(v | ĥ(v))
        v = rbm.gibbs_chain(key, params, v, steps)
        return v, rbm.visible_probs(params, rbm.hidden_probs(params, v))

    start = x_test[:8]
    samples, v, done = {0: np.asarray(start)}, start, 0
    for s in gibbs_steps:
        v, image = gibbs(jax.random.fold_in(k_gibbs, s), v, s - done)
        samples[s], done = np.asarray(image), s
    return {"history": history, "filters": np.asarray(params.w), "samples": samples}


def main(argv: Sequence[str] | None = None) -> dict:
    """Verify the learning rule on a small RBM, then train on binarised digits."""
    args = parse(__doc__, argv)
    results = verify_small(pick(args, 500, 500, 2000), jit=jit_for(args))
    results |= train_digits(epochs=pick(args, 4, 30, 150), n_hidden=pick(args, 32, 64, 100),
                            gibbs_steps=pick(args, (1, 10), (1, 10, 100, 1000),
                                             (1, 10, 100, 1000, 10000)), jit=jit_for(args))

    def tiles(images, rows, cols):
        images = np.asarray(images).reshape(-1, 8, 8)
        canvas = np.full((rows * 9 - 1, cols * 9 - 1), np.nan)
        for i, im in enumerate(images[: rows * cols]):
            r, c = divmod(i, cols)
            canvas[r * 9: r * 9 + 8, c * 9: c * 9 + 8] = im
        return canvas

    def draw(plt):
        fig, ax = plt.subplots(2, 3, figsize=(14, 8.5))
        ks, errs = zip(*results["cd_error"].items())
        ax[0, 0].loglog(ks, errs, "o-")
        ax[0, 0].set(xlabel="k (Gibbs steps)", ylabel="‖CD-k − exact‖ / ‖exact‖",
                     title="(b) CD-k → exact gradient (6×4 RBM, by enumeration)")
        h = results["history"]
        epochs = np.arange(len(h["reconstruction"]))
        ax[0, 1].plot(epochs, h["reconstruction"])
        ax[0, 1].set(xlabel="epoch", ylabel="mean squared error",
                     title="reconstruction error (CD-1, binarised digits)")
        ax[0, 2].plot(epochs, h["free_energy_train"], label="train")
        ax[0, 2].plot(epochs, h["free_energy_test"], "--", label="test")
        ax[0, 2].set(xlabel="epoch", ylabel="mean free energy F(v)", title="free energy")
        ax[0, 2].legend()
        w = results["filters"].T
        n = int(np.ceil(np.sqrt(len(w))))
        w = w / np.abs(w).max(axis=1, keepdims=True)
        ax[1, 0].imshow(tiles(w, n, n), cmap="RdBu_r", vmin=-1, vmax=1)
        ax[1, 0].set(title="filters: columns of W as 8×8 images", xticks=[], yticks=[])
        steps = list(results["samples"])
        ax[1, 1].imshow(tiles(np.stack([results["samples"][s] for s in steps], 1),
                              8, len(steps)), cmap="gray_r", vmin=0, vmax=1)
        ax[1, 1].set(title="Gibbs chain from test digits: p(v | h) after steps",
                     xticks=np.arange(len(steps)) * 9 + 3.5, xticklabels=steps, yticks=[])
        ax[1, 2].axis("off")
        ax[1, 2].text(0, 0.95, "\n".join([
            r"$E(v,h) = -v^\top W h - b^\top v - c^\top h$",
            r"$F(v) = -b^\top v - \sum_j \mathrm{softplus}(c_j + (v^\top W)_j)$",
            r"$p(h_j{=}1\,|\,v) = \sigma(c_j + (v^\top W)_j)$",
            r"$p(v_i{=}1\,|\,h) = \sigma(b_i + (W h)_i)$",
            "",
            r"$-\partial \log p(v)/\partial W = \langle v\hat h^\top\rangle_{model}"
            r" - \langle v\hat h^\top\rangle_{data}$",
            "",
            f"(a) data term vs autodiff of F: max rel. error {results['check_worst']:.1e}",
        ]), va="top", fontsize=11)
        fig.tight_layout()
        return fig

    results["figure"] = save_figure(args, "rbm.png", draw)
    return results


if __name__ == "__main__":
    main()
