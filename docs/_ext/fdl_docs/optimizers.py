"""One page per named optimizer (`fdl.optim.OPTIMIZERS`) and per public transform.

Each page renders the docstring (the update equations, the moving averages they
are, the references), the state the optimizer keeps (measured: `init` on a small
parameter), and a trajectory on a fixed two-dimensional quadratic, run and
plotted while the docs are built (matplotlib, Agg), for three learning rates.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from fdl_docs.docstrings import inline_md, to_myst
from fdl_docs.primitives import _table, _write
from fdl_docs.texmath import uses_dollars

# The quadratic every trajectory runs on: f(θ) = ½ (θ − θ*)ᵀ A (θ − θ*), condition 10
A = ((3.0, 1.5), (1.5, 1.2))
THETA_STAR = (1.0, -0.5)
THETA_0 = (-1.5, 1.2)
STEPS = 60
LEARNING_RATES = (0.3, 0.1, 0.03)

# Required arguments (besides a learning rate) for transforms that have no defaults
TRANSFORM_ARGS: dict[str, Callable[[Any], tuple]] = {
    "trace": lambda optim: (0.9,),
    "add_decayed_weights": lambda optim: (0.1,),
    "clip_by_global_norm": lambda optim: (1.0,),
    "clip_by_value": lambda optim: (-0.5, 0.5),
    "scale_by_learning_rate": lambda optim: (0.1,),
    "accumulate_gradients": lambda optim: (optim.trace(0.0), 2),
}


def _quadratic():
    import jax.numpy as jnp

    a, star = jnp.asarray(A, jnp.float32), jnp.asarray(THETA_STAR, jnp.float32)

    def f(theta):
        d = theta - star
        return 0.5 * d @ a @ d

    return f


def trajectories(build: Callable[[Callable], Any]) -> dict[float, Any]:
    """θ_0, …, θ_STEPS for each learning rate; `build(schedule)` makes the optimizer
    with the learning rate given as a schedule (so the rates share one program)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import fdl.optim

    f = _quadratic()

    def run(lr):
        opt = build(lambda count: lr)
        theta = jnp.asarray(THETA_0, jnp.float32)

        def step(carry, _):
            theta, state = carry
            updates, state = opt.update(jax.grad(f)(theta), state, theta)
            theta = fdl.optim.apply_updates(theta, updates)
            return (theta, state), theta

        _, path = jax.lax.scan(step, (theta, opt.init(theta)), None, length=STEPS)
        return jnp.concatenate([theta[None], path])

    paths = jax.jit(jax.vmap(run))(jnp.asarray(LEARNING_RATES, jnp.float32))
    return {lr: np.asarray(p) for lr, p in zip(LEARNING_RATES, paths)}


def plot(paths: dict[float, Any], title: str, out: Path) -> dict[float, float]:
    """Contours of the quadratic with each trajectory; returns f at the last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    a, star = np.asarray(A), np.asarray(THETA_STAR)
    f = lambda t: 0.5 * np.einsum("...i,ij,...j->...", t - star, a, t - star)
    xs, ys = np.meshgrid(np.linspace(-2.2, 2.5, 120), np.linspace(-2.0, 2.0, 100))
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.contour(xs, ys, f(np.stack([xs, ys], -1)), levels=np.geomspace(0.01, 12, 12),
               colors="0.8", linewidths=0.7)
    finals = {}
    for (lr, p), colour in zip(paths.items(), ("C3", "C0", "C2")):
        finals[lr] = float(f(p[-1]))
        p = np.where(np.isfinite(p), p, np.nan)
        ax.plot(p[:, 0], p[:, 1], ".-", color=colour, ms=2.5, lw=0.9,
                label=f"η = {lr:g}: f = {finals[lr]:.1e} after {STEPS} steps")
    ax.plot(*star, "k*", ms=9)
    ax.plot(*THETA_0, "ko", ms=4)
    ax.set(xlim=(-2.2, 2.5), ylim=(-2.0, 2.0), title=title, xlabel="θ₁", ylabel="θ₂")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return finals


def state_rows(opt: Any) -> list[list[str]]:
    """The state `init` makes for a parameter of shape (2,): each leaf's path and shape."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    state = jax.eval_shape(opt.init, jax.ShapeDtypeStruct((2,), jnp.float32))
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        rows.append([f"`state{jax.tree_util.keystr(path)}`",
                     f"{np.dtype(leaf.dtype).name}[{', '.join(map(str, leaf.shape))}]"])
    return rows


def _state_layout(opt: Any) -> str:
    import jax
    import jax.numpy as jnp

    state = jax.eval_shape(opt.init, jax.ShapeDtypeStruct((2,), jnp.float32))

    def name(s):
        if hasattr(s, "_fields"):
            inner = ", ".join(
                f"{k}={name(v)}" if hasattr(v, "_fields") or isinstance(v, tuple) else k
                for k, v in zip(s._fields, s))
            return f"{type(s).__name__}({inner})"
        if isinstance(s, tuple):
            return "(" + ", ".join(name(v) for v in s) + ")"
        return "·"

    return name(state)


def page(name: str, fn: Callable, kind: str, build: Callable[[Callable], Any] | None,
         plot_dir: Path, example: Any) -> str:
    doc = inspect.getdoc(fn) or ""
    sig = inspect.signature(fn)
    params = ", ".join(str(p.replace(annotation=inspect.Parameter.empty))
                       for p in sig.parameters.values())
    out = [f"(optim-{name})=", f"# {name}", "",
           f"`fdl.optim.{name}({params})` — {{py:obj}}`API <fdl.optim.{name}>` · {kind}", "",
           "## Update equations", "", to_myst(doc)]
    if example is not None:
        out += ["## State", "",
                "What `init` keeps for a parameter of shape (2,) (measured; the moving averages "
                "are the fields named in the equations above):", "",
                f"`{_state_layout(example)}`", "", _table(["leaf", "dtype[shape]"],
                                                        state_rows(example)), ""]
    if build is not None:
        finals = plot(trajectories(build), name, plot_dir / f"{name}.png")
        what = ("the optimizer as built by its factory, learning rate η"
                if kind == "named optimizer" else
                f"`chain({name}(…), scale_by_learning_rate(η))`")
        out += ["## Trajectory on a quadratic", "",
                f"{STEPS} steps of {what} on "
                "{math}`f(\\theta) = \\tfrac{1}{2}(\\theta - \\theta^*)^\\top A (\\theta - "
                "\\theta^*)` with "
                f"{{math}}`A = \\begin{{pmatrix}} {A[0][0]:g} & {A[0][1]:g} \\\\ {A[1][0]:g} & "
                f"{A[1][1]:g} \\end{{pmatrix}}`, "
                f"{{math}}`\\theta^* = ({THETA_STAR[0]:g}, {THETA_STAR[1]:g})` (the star), "
                f"from {{math}}`\\theta_0 = ({THETA_0[0]:g}, {THETA_0[1]:g})`, in float32, "
                "for three learning rates; run and drawn when these pages were built.", "",
                f"```{{image}} {name}.png\n:alt: trajectory of {name} on a quadratic\n```", "",
                _table(["η", "f(θ) after the last step"],
                       [[f"{lr:g}", f"{v:.2e}"] for lr, v in finals.items()]), ""]
    return "\n".join(out)


def _transforms(optim: Any) -> dict[str, Callable]:
    """The public transforms: functions of `fdl.optim.__all__` defined in its methods
    or transforms modules that return an `Optimizer`."""
    out = {}
    for n in optim.__all__:
        f = getattr(optim, n)
        if (inspect.isfunction(f) and n not in optim.OPTIMIZERS
                and f.__module__.rsplit(".", 1)[-1] in ("methods", "transforms")
                and "Optimizer" in str(inspect.signature(f).return_annotation)):
            out[n] = f
    return out


def write_pages(outdir: Path) -> list[str]:
    """Write the optimizer pages and their plots; return the pages that failed."""
    import fdl.optim as optim

    outdir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    named = dict(optim.OPTIMIZERS)
    transforms = _transforms(optim)
    rows_named, rows_transforms = [], []
    for name, factory in named.items():
        try:
            build = lambda lr, factory=factory: factory(lr)
            text = page(name, factory, "named optimizer", build, outdir, factory(0.1))
        except Exception as e:  # noqa: BLE001 - shown on the page, fails the build
            text, _ = f"# {name}\n\n```{{error}}\n{type(e).__name__}: {e}\n```\n", failures.append(
                f"optimizers/{name}")
        _write(outdir / f"{name}.md", text)
        rows_named.append([f"[{name}]({name}.md)", _first_line(factory)])
    for name, fn in transforms.items():
        make_args = TRANSFORM_ARGS.get(name, lambda o: ())
        try:
            example = fn(*make_args(optim))
            if name == "scale_by_learning_rate":
                build = lambda lr: optim.scale_by_learning_rate(lr)
            else:
                build = lambda lr, fn=fn, a=make_args: optim.chain(
                    fn(*a(optim)), optim.scale_by_learning_rate(lr))
            text = page(name, fn, "transform", build, outdir, example)
        except Exception as e:  # noqa: BLE001
            text, _ = f"# {name}\n\n```{{error}}\n{type(e).__name__}: {e}\n```\n", failures.append(
                f"optimizers/{name}")
        _write(outdir / f"{name}.md", text)
        rows_transforms.append([f"[{name}]({name}.md)", _first_line(fn)])
    ema = "\n\n".join(to_myst(inspect.getdoc(getattr(optim, n)) or "")
                      for n in ("ema", "bias_correction") if hasattr(optim, n))
    _write(outdir / "index.md", "\n".join([
        "# Optimizers",
        "",
        "Every named optimizer in `fdl.optim.OPTIMIZERS` and every public transform of "
        "`fdl.optim`, one page each, generated from their docstrings: the update equations, "
        "the state they keep, and a trajectory on a fixed quadratic run when the docs are "
        "built. A named optimizer is a short `chain` of transforms ending in "
        "`scale_by_learning_rate`.",
        "",
        "## Moving averages",
        "",
        "Momentum, RMSProp and Adam are exponential moving averages; the one step they share:",
        "",
        ema,
        "",
        "## Named optimizers",
        "",
        _table(["optimizer", "what it is"], rows_named),
        "",
        "## Transforms",
        "",
        _table(["transform", "what it does"], rows_transforms),
        "",
        "```{toctree}",
        ":hidden:",
        "",
        *named, *transforms,
        "```",
        "",
    ]))
    keep = {outdir / f"{n}.{ext}" for n in [*named, *transforms] for ext in ("md", "png")}
    keep.add(outdir / "index.md")
    for stale in set(outdir.glob("*.md")) | set(outdir.glob("*.png")):
        if stale not in keep:
            stale.unlink()
    return failures


def _first_line(fn: Callable) -> str:
    doc = inspect.getdoc(fn) or ""
    return inline_md(doc.split("\n\n")[0].replace("\n", " "), not uses_dollars(doc))
