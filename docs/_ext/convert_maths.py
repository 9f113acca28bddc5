"""Rewrite the maths of docstrings from backticks to the project's dollar notation.

    python docs/_ext/convert_maths.py [--write] FILE.py ...

In every docstring (module, class, function) of each file:

* a backtick span that reads as maths (`fdl_docs.texmath.looks_like_maths`: Unicode
  maths symbols, or an equation) or is a single symbol (`X`, `m_i`, `d_out`,
  `X̂`) becomes `$…$`;
* an indented line made of maths spans (a displayed equation) becomes a line
  `$$ … $$` at the docstring's indentation;
* code spans (`jnp.maximum`, `"SAME"`, `axis`) stay in backticks.

Without `--write` it prints a unified diff. With `--write` it edits the files in
place, and refuses a file unless its syntax tree, docstrings aside, is unchanged
(only docstrings may change).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fdl_docs.texmath import looks_like_maths, uses_dollars  # noqa: E402

SYMBOL = re.compile(r"^[A-Za-zα-ωΑ-Ωℓ][\u0300-\u036f]?(?:_\{?[A-Za-z0-9]{1,4}\}?)?"
                    r"[ᵀ²³⁻¹₀₁₂₃₄₅₆₇₈₉ᵢⱼₖₜₙ']*$")
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# words that are code even as a single letter or symbol-like name
CODE_WORDS = {"None", "True", "False", "key", "axis", "rate", "mask", "eps", "ids"}


def is_maths(span: str) -> bool:
    s = span.strip()
    if s in CODE_WORDS or s != span:
        return False
    if SYMBOL.match(s) or re.fullmatch(r"O\(.*\)", s):  # a symbol; a cost O(N T²)
        return True
    parts = [p.strip() for p in s.strip("()[]").split(",")]
    if len(parts) > 1 and all(SYMBOL.match(p) and p not in CODE_WORDS for p in parts):
        return True  # a list of symbols: X, W, b
    return looks_like_maths(s)


def _inline(line: str) -> str:
    return SPAN.sub(lambda m: f"${m.group(1)}$" if is_maths(m.group(1)) else m.group(0), line)


_DISPLAY_LINE = re.compile(r"^(\s+)((?:`[^`]+`[\s,;:]*(?:and|or|when|with|if)?[\s,;:]*)+)\s*$")


def _display(line: str, base: str) -> str | None:
    """`    \\`a = b\\`,  \\`c = d\\`:` as `$$ a = b, \\qquad c = d $$` (None if not maths)."""
    m = _DISPLAY_LINE.match(line)
    if not m or len(m.group(1)) < len(base) + 4:
        return None
    spans = SPAN.findall(m.group(2))
    if not spans or not all(is_maths(s) for s in spans):
        return None
    pieces = re.split(r"`[^`]+`", m.group(2))[1:-1]  # what lies between the spans
    out = spans[0]
    for between, span in zip(pieces, spans[1:]):
        word = re.sub(r"[\s,;:]", "", between)
        out += (r", \qquad " if not word else rf" \quad \text{{{word}}} \quad ") + span
    tail = m.group(2).rstrip()[-1]
    if tail in ",.":
        out += tail
    return f"{base}$$ {out} $$"


def convert_docstring(lines: list[str], base: str) -> list[str]:
    if uses_dollars("\n".join(lines)):  # already in the dollar notation: its backticks are code
        return lines
    out, literal = [], False
    for i, line in enumerate(lines):
        if literal and line.strip() and not line.startswith(base + "    "):
            literal = False
        if not literal:
            d = _display(line, base)
            out.append(d if d is not None else _inline(line))
        else:
            out.append(line)
        if line.rstrip().endswith("::"):
            literal = True
    return out


def _docstring_nodes(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str):
                yield body[0]


def convert_source(source: str) -> str:
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for expr in _docstring_nodes(tree):
        start, end = expr.lineno - 1, expr.end_lineno  # lines [start, end)
        col = expr.col_offset
        base = " " * col
        body = [l.rstrip("\n") for l in lines[start:end]]
        new = convert_docstring(body, base)
        lines[start:end] = [l + "\n" for l in new]
    return "".join(lines)


def _without_docstrings(source: str) -> str:
    tree = ast.parse(source)
    for expr in _docstring_nodes(tree):
        expr.value.value = ""
    return ast.dump(tree)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--write", action="store_true", help="edit the files in place")
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        old = path.read_text(encoding="utf-8")
        new = convert_source(old)
        if new == old:
            continue
        if _without_docstrings(new) != _without_docstrings(old):
            print(f"{path}: refused, the change is not limited to docstrings", file=sys.stderr)
            status = 1
            continue
        if args.write:
            path.write_text(new, encoding="utf-8")
            print(f"{path}: converted")
        else:
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True), str(path), str(path)))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
