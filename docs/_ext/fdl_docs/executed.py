"""Code run while the docs are built, its output written for the guides to include.

* `verify_*.txt`: `guides/verify_example.py` — a right and a wrong hand derivation
  through `fdl.check.grad` (the wrong one must fail, the right one pass);
* `matrix_calculus.md`: Parr & Howard's reference identities, each checked by
  `examples/07_matrix_calculus.py` (imported, not copied), as a rendered table;
* `fdl_check.txt`: the output of `fdl check linear softmax`;
* `contributing.md`: the contributor guide (CONTRIBUTING.md) included, or the
  README's section while it does not exist.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import runpy
import sys
from pathlib import Path

from fdl_docs.primitives import _fmt, _table, _write
from fdl_docs.texmath import to_tex

DOCS = Path(__file__).resolve().parents[2]
ROOT = DOCS.parent


def _captured(fn, *args, **kwargs):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = fn(*args, **kwargs)
    return result, buf.getvalue()


def verify(outdir: Path) -> list[str]:
    import jax

    x64 = jax.config.jax_enable_x64  # the example turns x64 on, as a user would
    try:
        ns, text = _captured(runpy.run_path, str(DOCS / "guides" / "verify_example.py"))
    finally:
        jax.config.update("jax_enable_x64", x64)
    right, wrong = ns["right_report"], ns["wrong_report"]
    _write(outdir / "verify_right.txt", str(right) + "\n")
    _write(outdir / "verify_wrong.txt", str(wrong) + "\n")
    failures = []
    if not right.passed:
        failures.append("guides/verify (the right derivation failed its check)")
    if wrong.passed:
        failures.append("guides/verify (the wrong derivation passed its check)")
    return failures


def _load_example(name: str):
    examples = ROOT / "examples"
    if str(examples) not in sys.path:
        sys.path.insert(0, str(examples))
    spec = importlib.util.spec_from_file_location(f"docs_{name}", examples / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ascii_tex(formula: str) -> str:
    """The example's ASCII formulas (`diag(1/x)`, `x^T`, `2/N sum_i e_i`) as TeX."""
    note = ""
    m = re.search(r"\s+\(([A-Za-z.]+(?: [A-Za-z.]+)+)\)\s*$", formula)  # "(scalar z)"
    if m:
        formula, note = formula[:m.start()], m.group(1)
    s = formula.replace("^T", "ᵀ").replace("sum_i", "Σᵢ").replace("sum(", "Σ(")
    s = re.sub(r"\bd_ij\b", "δ_ij", s)
    s = re.sub(r"(?<=\w)\.(?=\w)", "·", s).replace("[..>0]", "[·>0]")
    s = s.replace(" * ", " ⊗ ").replace(" / ", " ⊘ ")
    tex = " ; ".join(to_tex(p.strip()) for p in s.split(";"))
    return tex + (r"\quad\text{(" + note + ")}" if note else "")


def matrix_calculus(outdir: Path) -> list[str]:
    module = _load_example("07_matrix_calculus")
    results, _ = _captured(module.main, ["--no-figure"])
    rows = []
    for r in results["identities"]:
        rows.append(["{math}`" + ascii_tex(r["name"]).replace("|", r"\vert ") + "`",
                     "{math}`" + ascii_tex(r["formula"]).replace("|", r"\vert ") + "`",
                     _fmt(r["autodiff"]), _fmt(r["finite_differences"]),
                     "ok" if r["passed"] else "**FAIL**"])
    _write(outdir / "matrix_calculus.md", _table(
        ["function", "Jacobian(s) by hand", "vs `jax.jacrev`", "vs finite differences",
         "check"], rows) + "\n")
    return [f"guides/matrix_calculus ({r['name']})" for r in results["identities"]
            if not r["passed"]]


def fdl_check(outdir: Path) -> list[str]:
    import fdl.cli

    code, text = _captured(fdl.cli.main, ["check", "linear", "softmax"])
    _write(outdir / "fdl_check.txt", text)
    return [] if code == 0 else ["guides/getting_started (fdl check failed)"]


def contributing(outdir: Path) -> list[str]:
    path = ROOT / "CONTRIBUTING.md"
    if path.exists():
        # its own title would be a second top-level heading of the guide: start below it
        skip = ":start-line: 1\n" if path.read_text().startswith("# ") else ""
        text = ("```{include} ../../CONTRIBUTING.md\n" + skip
                + ":relative-docs: docs/\n:relative-images:\n```\n")
    else:
        text = ("```{include} ../../README.md\n:start-after: \"## Write your own primitive\"\n"
                ":end-before: \"## Two gradient modes\"\n```\n")
    _write(outdir / "contributing.md", text)
    return []


def write_all(outdir: Path) -> list[str]:
    outdir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for step in (verify, matrix_calculus, fdl_check, contributing):
        failures += step(outdir)
    return failures
