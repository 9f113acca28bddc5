"""What every gallery example shares: its command line, its table printing, its figure.

Each example is ``main(argv=None) -> dict``: it parses ``--quick`` (the test mode,
seconds), ``--full`` (the complete experiment) and ``--out DIR`` (where the PNG goes;
default ``runs/``, created if missing and ignored by git, never the current directory),
prints the numbers behind its figure and returns them. matplotlib is optional: without
it the numbers are still printed and a one-line note says the figure was skipped.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax

# XLA's quickest compile settings: in --quick mode the runs are tiny and compiling
# dominates (a 7× slower program that compiles 4× faster)
DEFAULT_OUT = "runs"  # where figures go without --out (in .gitignore)

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def parse(description: str, argv: Sequence[str] | None,
          extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Parse the common flags (plus any the example adds through ``extra``)."""
    first_paragraph = " ".join(description.strip().split("\n\n")[0].split())
    parser = argparse.ArgumentParser(description=first_paragraph)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="test mode: a few seconds")
    mode.add_argument("--full", action="store_true", help="the complete experiment")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"directory for the PNG figure (default {DEFAULT_OUT}, created if "
                        "missing)")
    parser.add_argument("--no-figure", action="store_true", help="print numbers only")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.setting = "quick" if args.quick else "full" if args.full else "default"
    return args


def pick(args: argparse.Namespace, quick: Any, default: Any, full: Any) -> Any:
    """The value for the run's setting."""
    return {"quick": quick, "default": default, "full": full}[args.setting]


def jit_for(args: argparse.Namespace) -> Callable[..., Callable]:
    """``jax.jit`` for this run: in ``--quick`` mode with XLA's fastest compile settings."""
    if args.setting != "quick":
        return jax.jit
    return lambda fn, **options: jax.jit(fn, compiler_options=FAST_COMPILE, **options)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as an aligned text table (floats with 4 significant digits)."""
    cells = [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def save_figure(args: argparse.Namespace, name: str, draw: Callable[[Any], Any]) -> str | None:
    """Draw with ``draw(pyplot) -> figure`` and save ``name`` under ``--out``.

    Returns the path written, or ``None`` when matplotlib is missing or
    ``--no-figure`` was given.
    """
    if args.no_figure:
        return None
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: skipping the figure {name} "
              "(pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, name)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path
