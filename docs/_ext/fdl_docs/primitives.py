"""One page per registered primitive, from the registry, the docstring and a check run now.

`write_pages(outdir)` writes `outdir/<name>.md` for every primitive of
`fdl.registry()` and an index, and returns the names whose check failed. A page
holds what the primitive computes, its shapes, the derivation of its backward,
its tangent rule (the differential), the residuals its forward saves (measured
on the first example), its examples, and the result of `fdl.check.examples` run
while the docs are built: the backward against autodiff and finite differences,
the tangent rule likewise, and the adjointness gap of the two hand rules.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdl_docs.docstrings import _prose, blocks, display_tex, inline_md
from fdl_docs.texmath import uses_dollars

SECTIONS = ("summary", "shapes", "derivation", "tangent", "residuals", "references")
TITLES = {
    "summary": "What it computes",
    "shapes": "Shapes",
    "derivation": "Derivation of the backward",
    "tangent": "Tangent rule (forward mode)",
    "residuals": "Residuals",
    "references": "References",
}


# --------------------------------------------------------------------------- #
# The check, as fdl.check offers it
# --------------------------------------------------------------------------- #


@dataclass
class Checked:
    """One example's check: the backward's report, and the tangent rule's and the
    adjointness test's (None without a tangent rule)."""

    backward: Any
    tangent: Any = None
    adjoint: Any = None

    @property
    def reports(self) -> list:
        return [r for r in (self.backward, self.tangent, self.adjoint) if r is not None]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)


def run_check(p: Any, dtype: str = "float64") -> list[Checked]:
    """Every registered example of `p` checked by `fdl.check.examples`: the backward,
    the tangent rule and their adjointness, in one compiled program, in float64 with
    x64 on for the call."""
    import jax

    import fdl.check

    with jax.enable_x64(dtype == "float64"):
        return [Checked(c.vjp, c.jvp, c.adjoint) for c in fdl.check.examples(p, dtype=dtype)]


def adjoint_gap(report: Any) -> float:
    """The adjointness test's relative gap `|⟨u, J v⟩ − ⟨Jᵀu, v⟩| / scale`."""
    if report is None or not report.rows:
        return float("nan")
    row = report.rows[0]
    return row.max_abs * row.rtol / max(row.atol, 1e-300)


def check_all(prims: dict, workers: int = 2) -> dict[str, list[Checked] | Exception]:
    """`run_check` for every primitive, two at a time (as `fdl check` does); an
    exception is kept as the result (and fails the page)."""

    def one(p):
        try:
            return run_check(p)
        except Exception as e:  # noqa: BLE001 - shown on the page and fails the build
            return e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(prims, pool.map(one, prims.values())))


# --------------------------------------------------------------------------- #
# The docstring, by section
# --------------------------------------------------------------------------- #


def _classify(kind: str, lines: list[str], current: str, first: bool) -> str:
    if kind != "prose":
        return current
    head = lines[0].lstrip()
    for word, section in (("Shapes", "shapes"), ("Shape", "shapes"), ("Derivation", "derivation"),
                          ("Residuals", "residuals"), ("Saves", "residuals"),
                          ("Tangent", "tangent"), ("References", "references"),
                          ("Reference", "references")):
        if head.startswith(word):
            return section
    if first:
        return "summary"
    text = " ".join(lines)
    if current in ("summary", "shapes") and ("∂L/∂" in text or "∂ℓ/∂" in text or "Jacobian" in text
                                             or "f'(x)" in text or "σ'(x)" in text):
        return "derivation"
    if current == "references":
        return "derivation"  # prose after the references continues the explanation
    return current


def _block_md(kind: str, lines: list[str], transitional: bool) -> str:
    if kind == "prose":
        return "\n".join(_prose(lines, lambda t: inline_md(t, transitional), False))
    if kind == "display":
        return "```{math}\n" + display_tex(lines, transitional) + "\n```"
    if kind == "code":
        return "```python\n" + "\n".join(lines) + "\n```"
    if kind == "heading":
        return "**" + inline_md(lines[0]) + "**"
    return "**" + lines[0] + "**\n\n" + "\n".join("- " + inline_md(l.strip(), transitional)
                                                for l in lines[1:] if l.strip())


def sections(doc: str) -> dict[str, list[str]]:
    """The docstring's blocks, as MyST, grouped into the page's sections."""
    out: dict[str, list[str]] = {s: [] for s in SECTIONS}
    current = "summary"
    transitional = not uses_dollars(doc)
    for i, (kind, lines) in enumerate(blocks(doc)):
        current = _classify(kind, lines, current, i == 0)
        out[current].append(_block_md(kind, lines, transitional))
    return out


# --------------------------------------------------------------------------- #
# Examples and residuals, measured
# --------------------------------------------------------------------------- #


def _describe(value: Any) -> str:
    import numpy as np

    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            dtype = np.dtype(value.dtype).name
        except TypeError:  # a typed PRNG key: key<fry>
            dtype = str(value.dtype)
        return f"{dtype}[{', '.join(map(str, value.shape))}]"
    return repr(value)


def example_rows(p: Any) -> list[list[str]]:
    """One row per registered example: each argument's name and shape/dtype or value."""
    import jax

    names = list(inspect.signature(p.forward).parameters)
    rows = []
    with jax.enable_x64(True):
        for i, example in enumerate(p.examples):
            args, kwargs = example.sample(i, "float64")
            parts = [f"`{n}`: {_describe(a)}" for n, a in zip(names, args)]
            parts += [f"`{n}`: {_describe(a)}" for n, a in kwargs.items()]
            rows.append([str(i), "; ".join(parts)])
    return rows


def residual_rows(p: Any) -> list[list[str]]:
    """The residuals the forward saves on the first example: each leaf's path, shape
    and dtype (measured, so the page cannot disagree with the code)."""
    import jax

    if not p.examples:
        return []
    with jax.enable_x64(True):
        args, kwargs = p.examples[0].sample(0, "float64")
        full = p.bind(*args, **kwargs)
        _, residuals = jax.eval_shape(lambda *a: p.forward_with_residuals(*a), *full) \
            if not p.static else (None, p.forward_with_residuals(*full)[1])
        leaves = jax.tree_util.tree_flatten_with_path(residuals)[0]
    return [[f"`residuals{jax.tree_util.keystr(path)}`" if path else "`residuals`", _describe(leaf)]
            for path, leaf in leaves]


# --------------------------------------------------------------------------- #
# Pages
# --------------------------------------------------------------------------- #


def _table(head: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"


def _report_table(report: Any) -> str:
    return _table(
        ["argument", "against", "max abs err", "max rel err", "worst at", "rtol", "atol", ""],
        [[f"`{r.name}`", r.against, _fmt(r.max_abs), _fmt(r.max_rel),
          "–" if r.index is None else f"`{tuple(r.index)}`", f"{r.rtol:.0e}", _fmt(r.atol),
          "ok" if r.passed else "**FAIL**"] for r in report.rows])


def summarize(checked: list[Checked] | Exception) -> dict[str, Any]:
    """Worst errors over the examples, and the verdict."""
    if isinstance(checked, Exception):
        return {"passed": False, "error": f"{type(checked).__name__}: {checked}"}
    worst = lambda reports, against: max(
        (r.worst(against) for r in reports if r is not None and r.rows), default=float("nan"))
    return {
        "passed": bool(checked) and all(c.passed for c in checked),
        "backward_ad": worst([c.backward for c in checked], "autodiff"),
        "backward_fd": worst([c.backward for c in checked], "finite differences"),
        "tangent_ad": worst([c.tangent for c in checked], "autodiff"),
        "tangent_fd": worst([c.tangent for c in checked], "finite differences"),
        "adjoint": max((adjoint_gap(c.adjoint) for c in checked if c.adjoint is not None),
                       default=float("nan")),
        "examples": len(checked),
    }


def check_md(name: str, checked: list[Checked] | Exception) -> str:
    s = summarize(checked)
    if "error" in s:
        return (f"```{{error}}\nThe check of `{name}` could not run: {s['error']}\n```\n")
    verdict = "passed" if s["passed"] else "FAILED"
    out = [
        f"Run by `fdl.check.examples` when these pages were built, in float64, on every "
        f"registered example: the hand-written backward against JAX's autodiff of the plain "
        f"forward and against central finite differences (a random cotangent), the tangent "
        f"rule likewise, and the adjointness of the two rules, "
        "{math}`\\langle u, J v\\rangle = \\langle J^{\\top} u, v\\rangle`.",
        "",
        ("```{admonition} Check passed\n:class: tip\n" if s["passed"] else
         "```{admonition} Check FAILED\n:class: error\n")
        + f"{s['examples']} examples, {verdict}. Worst relative error of the backward: "
        f"{_fmt(s['backward_ad'])} vs autodiff, {_fmt(s['backward_fd'])} vs finite "
        f"differences; tangent rule: {_fmt(s['tangent_ad'])} vs autodiff, "
        f"{_fmt(s['tangent_fd'])} vs finite differences; adjointness gap "
        f"{_fmt(s['adjoint'])}.\n```",
    ]
    for i, c in enumerate(checked):
        out += ["", f"### Example {i}: {'passed' if c.passed else 'FAILED'}", "",
                "Backward (`fdl.check.vjp`):", "", _report_table(c.backward)]
        if c.tangent is not None:
            out += ["", "Tangent rule (`fdl.check.jvp`):", "", _report_table(c.tangent)]
        if c.adjoint is not None:
            out += ["", f"Adjointness (`fdl.check.adjoint`): relative gap "
                        f"{_fmt(adjoint_gap(c.adjoint))}, "
                        f"{'ok' if c.adjoint.passed else '**FAIL**'}."]
        elif c.tangent is None:
            out += ["", "No tangent rule: reverse mode only."]
        if not c.passed:
            out += ["", "The failing reports in full:", "", "```text"]
            out += [str(r) for r in c.reports if not r.passed] + ["```"]
    return "\n".join(out) + "\n"


def page(name: str, p: Any, checked: list[Checked] | Exception) -> str:
    """The MyST page of one primitive."""
    module = _public_module(p)
    sig = inspect.signature(p.forward)
    parts = sections(inspect.getdoc(p.forward) or "")
    s = summarize(checked)
    badge = "check passed" if s["passed"] else "check FAILED"
    out = [
        f"(primitive-{name})=",
        f"# {name}",
        "",
        f"`{module}.{name}{_plain_signature(sig)}` — {{py:obj}}`API <{module}.{name}>` · "
        f"source `{p.forward.__module__}` · static arguments: "
        + (", ".join(f"`{a}`" for a in p.static) or "none")
        + f" · **{badge}** ([details](#check-{name}))",
        "",
    ]
    for sec in SECTIONS:
        if sec == "residuals":
            out += [f"## {TITLES[sec]}", ""]
            out += [*parts[sec], ""] if parts[sec] else []
            try:
                rows = residual_rows(p)
            except Exception as e:  # noqa: BLE001
                rows, note = [], f"(could not be measured: {type(e).__name__}: {e})"
            else:
                note = ""
            out += ["What the forward saves for the backward on example 0 (measured):", "",
                    _table(["residual", "dtype[shape]"], rows) if rows else note or "(none)", ""]
            continue
        if not parts[sec]:
            if sec == "tangent" and p.tangent is None:
                out += [f"## {TITLES[sec]}", "", "No tangent rule: reverse mode only.", ""]
            continue
        title = TITLES[sec] if sec != "summary" else TITLES["summary"]
        out += [f"## {title}", "", *parts[sec], ""]
    out += ["## Examples", "", "The registered example arguments (drawn in float64, seed = "
            "the example's index):", "", _table(["example", "arguments"], example_rows(p)), ""]
    out += [f"(check-{name})=", "## Check", "", check_md(name, checked)]
    return "\n".join(out)


def _plain_signature(sig: inspect.Signature) -> str:
    return "(" + ", ".join(str(p.replace(annotation=inspect.Parameter.empty))
                           for p in sig.parameters.values()) + ")"


def _public_module(p: Any) -> str:
    """The public module that exports the primitive (`fdl.ops`, `fdl.losses`)."""
    import importlib

    mod = p.forward.__module__
    parts = mod.split(".")
    prefixes = [".".join(parts[:k]) for k in range(2, len(parts) + 1)]
    for candidate in [*(c for c in prefixes if "._" not in c), "fdl.ops", "fdl.losses"]:
        try:
            m = importlib.import_module(candidate)
        except ImportError:
            continue
        if getattr(m, p.name, None) is p and p.name in getattr(m, "__all__", [p.name]):
            return candidate
    return mod


def _api_ref(module: str, name: str) -> str:
    return f"../api/{module}.md#{module}.{name}"


def index_page(results: dict[str, Any], prims: dict[str, Any]) -> str:
    rows = []
    for name, p in prims.items():
        s = summarize(results[name])
        doc = (inspect.getdoc(p.forward) or "").split("\n\n")[0].replace("\n", " ")
        rows.append([f"[{name}]({name}.md)", "ok" if s["passed"] else "**FAILED**",
                     _fmt(s.get("backward_ad")), _fmt(s.get("backward_fd")),
                     _fmt(s.get("adjoint")),
                     f"`{_public_module(p)}`: " + inline_md(doc, not uses_dollars(doc))])
    failed = [n for n in prims if not summarize(results[n])["passed"]]
    return "\n".join([
        "# Primitives",
        "",
        f"Every primitive in `fdl.registry()` ({len(prims)}), one page each, generated from "
        "the registry and the docstrings when the documentation is built. Each page "
        "ends with the result of `fdl.check.examples` run at build time: errors are the "
        "worst relative error over the examples (float64), for the backward against "
        "autodiff and finite differences, and the adjointness gap of the backward and "
        "the tangent rule. A failing check fails the documentation build.",
        "",
        ("All checks passed." if not failed else
         f"**{len(failed)} FAILED:** " + ", ".join(f"[{n}]({n}.md)" for n in failed)),
        "",
        _table(["primitive", "check", "vs autodiff", "vs finite diff.", "adjoint gap",
                "computes"], rows),
        "",
        "```{toctree}",
        ":hidden:",
        "",
        *prims,
        "```",
        "",
    ])


def write_pages(outdir: Path, prims: dict[str, Any] | None = None) -> list[str]:
    """Write one page per primitive and the index under `outdir`; return the names
    of the primitives whose check failed (or could not run)."""
    import fdl

    prims = dict(fdl.registry() if prims is None else prims)
    outdir.mkdir(parents=True, exist_ok=True)
    results = check_all(prims)
    for name, p in prims.items():
        try:
            text = page(name, p, results[name])
        except Exception as e:  # noqa: BLE001 - the page says so and the build fails
            results[name] = e
            text = f"# {name}\n\n```{{error}}\nThe page could not be generated: " \
                   f"{type(e).__name__}: {e}\n```\n"
        _write(outdir / f"{name}.md", text)
    _write(outdir / "index.md", index_page(results, prims))
    for stale in set(outdir.glob("*.md")) - {outdir / f"{n}.md" for n in [*prims, "index"]}:
        stale.unlink()
    return [n for n in prims if not summarize(results[n])["passed"]]


def _write(path: Path, text: str) -> None:
    """Write only when changed, so Sphinx rebuilds only the pages that changed."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
