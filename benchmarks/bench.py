"""fdl benchmark suite: fdl against plain JAX, stax, Flax, Equinox and PyTorch.

Usage:

    python benchmarks/bench.py                       # everything (~10 min on 2 CPU cores)
    python benchmarks/bench.py --quick               # smoke run (~2 min)
    python benchmarks/bench.py --only A,B --json out.json --markdown out.md

Sections (`--only` takes their names): `peak` (float32 matmul peak of JAX, numpy and
torch), `A`, `B`, `C` (MLP training steps), `CNN` (a small convnet's training step),
`LSTM` (an LSTM language model's step), `transformer` (a transformer encoder's step),
`dp` (DP-SGD on the CNN: ghost norms vs vmap vs an ordinary step), `digits` (epoch as
one `lax.scan` vs a Python loop of jitted steps; wall time to 97% test accuracy) and
`perex` (per-example gradient norms). `peak` is added whenever a step section is
selected, since every step row is reported as a fraction of it.

This file is the command line; the parts live beside it: `harness` (timing,
statistics, ratios), `configs` (the workloads), `fdl_runners` (fdl's rows), `peers`
(the other frameworks' rows), `sections` (what each section measures) and `report`
(targets and markdown). Missing peers (`pip install 'fdl[bench]'`; PyTorch
separately) are skipped with a note. Outputs a markdown report (stdout, `--markdown`)
and JSON (`--json`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch too
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:  # the parts beside this file, also when it is loaded by path
    sys.path.insert(0, _HERE)

import jax  # noqa: E402

import report  # noqa: E402
import sections  # noqa: E402
from configs import CPU_CONFIGS, GPU_CONFIGS  # noqa: E402
from harness import ALL_PEERS, Settings, environment, loadavg, peak_rss_mib  # noqa: E402
from peers import load_peers  # noqa: E402
from sections import SECTIONS, STEP_SECTIONS  # noqa: E402


def run(chosen: Sequence[str] = SECTIONS, settings: Settings | None = None, *,
        command: str = "", log: Callable[[str], None] = lambda s: None) -> dict:
    """Run the `chosen` sections, in order; returns the results as a JSON-ready dict."""
    settings = settings or Settings()
    t0 = time.perf_counter()
    results: dict[str, Any] = {"command": command, "environment": environment(),
                               "settings": {k: v for k, v in settings.__dict__.items()
                                            if k != "notes"},
                               "sections": {}, "notes": settings.notes}
    mods = load_peers(settings, settings.notes)
    configs = GPU_CONFIGS if settings.gpu_sizes else CPU_CONFIGS
    secs = results["sections"]
    peak: dict[str, float] = {}
    for name in chosen:
        log(f"[{time.perf_counter() - t0:6.1f} s] {name} …")
        if name == "peak":
            secs["peak"] = sections.section_peak(settings, mods)
            peak = secs["peak"]["peak_gflops"]
        elif name in STEP_SECTIONS:
            secs[name] = sections.section_step(configs[name], settings, mods, peak)
        elif name == "dp":
            secs["dp"] = sections.section_dp(configs, settings)
        elif name == "digits":
            secs["digits"] = sections.section_digits(settings)
        elif name == "perex":
            secs["perex"] = sections.section_perex(settings, mods)
        else:
            raise ValueError(f"unknown section {name!r}; choose from {SECTIONS}")
        secs[name]["peak_rss_mib"] = peak_rss_mib()
    results["targets"] = report.evaluate_targets(secs)
    results["seconds"] = time.perf_counter() - t0
    results["environment"]["loadavg_at_end"] = loadavg()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse, run, print the report, write the files asked for."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run (~2 minutes)")
    p.add_argument("--only", help=f"comma-separated sections, from {','.join(SECTIONS)}")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--markdown", help="write the markdown report here")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 3)")
    p.add_argument("--min-time", type=float, help="seconds per variant per round (default 0.3)")
    p.add_argument("--peers", default=",".join(ALL_PEERS),
                   help=f"peers to include (default {','.join(ALL_PEERS)}; '' for none)")
    p.add_argument("--bf16", action="store_true", help="add bfloat16 rows (default on a GPU)")
    p.add_argument("--sizes", choices=("auto", "cpu", "gpu"), default="auto",
                   help="problem sizes (auto: gpu sizes when JAX sees a GPU)")
    p.add_argument("--no-cli", action="store_true", help="skip the `fdl train` subprocess runs")
    p.add_argument("--write", metavar="BENCHMARKS.md",
                   help="replace this file's CPU (or, on a GPU, GPU) section with the report")
    p.add_argument("--marker", help="with --write: the section's marker name, between "
                   "<!-- bench:NAME:start --> and end (default cpu, or gpu on a GPU)")
    p.add_argument("--note", default="",
                   help="a line for the report, e.g. 'taken while the machine was shared'")
    a = p.parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    gpu_sizes = a.sizes == "gpu" or (a.sizes == "auto" and on_gpu)
    settings = Settings(
        rounds=a.rounds or (3 if a.quick else 7),
        min_time=a.min_time if a.min_time is not None else (0.05 if a.quick else 0.3),
        peers=tuple(s for s in a.peers.split(",") if s),
        bf16=a.bf16 or on_gpu, gpu_sizes=gpu_sizes,
        peak_n=(8192 if gpu_sizes else (2048 if a.quick else 4096)),
        quick=a.quick, cli=not a.no_cli)
    unknown = set(settings.peers) - set(ALL_PEERS)
    if unknown:
        p.error(f"unknown peers {sorted(unknown)}; choose from {ALL_PEERS}")
    chosen = _sections(p, a.only)
    if a.quick and not a.only:
        slow = ("C", "CNN", "LSTM", "transformer", "dp")
        chosen = [s for s in chosen if s not in slow]
        settings.note(f"--quick: sections {', '.join(slow)} skipped (run them with "
                      f"--only {','.join(slow)})")
    command = "python " + shlex.join([os.path.relpath(__file__),
                                      *(sys.argv[1:] if argv is None else argv)])
    results = run(chosen, settings, command=command,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    results["note"] = a.note
    md = report.to_markdown(results)
    print(md)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(md)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if a.write:
        report.write_section(a.write, a.marker or ("gpu" if on_gpu else "cpu"), md)
    return 0


def _sections(p: argparse.ArgumentParser, only: str | None) -> list[str]:
    """The sections of `--only`, in report order, with `peak` whenever a step section is
    chosen (its rows are reported as a fraction of it); all of them without `--only`."""
    if not only:
        return list(SECTIONS)
    chosen = [s.strip() for s in only.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SECTIONS]
    if bad:
        p.error(f"unknown sections {bad}; choose from {SECTIONS}")
    if set(chosen) & set(STEP_SECTIONS):
        chosen.append("peak")
    return [s for s in SECTIONS if s in chosen]


if __name__ == "__main__":
    sys.exit(main())
