"""fdl docstrings to MyST markdown (generated pages) and to reST (autodoc).

A docstring is read as the project writes them: prose with inline maths between
dollars (`$∂L/∂W = Xᵀ G$`) or, transitionally, in backticks; display maths as a
`$$ … $$` line or as an indented block of equations; code in backticks; literal
code blocks after a line ending in `::`; Google-style `Args:`/`Returns:` sections.
"""

from __future__ import annotations

import re

from fdl_docs.texmath import MATHS_CHARS, split_inline, to_tex, uses_dollars

SECTION = re.compile(r"^(Args|Arguments|Returns|Raises|Attributes|Yields|Note|Notes|"
                     r"Example|Examples|Warning)\s*:\s*$")
_DISPLAY = re.compile(r"^\s*\$\$(.+?)\$\$\s*[.,;:]?\s*$")
_UNDERLINE = re.compile(r"^\s*(-{3,}|={3,}|~{3,})\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _escape_md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("<", "\\<").replace("$", "\\$")


def inline_md(text: str, transitional: bool = True) -> str:
    """One paragraph's prose with its maths as `{math}` roles (TeX) and code spans kept."""
    out = []
    for kind, piece in split_inline(text, transitional):
        if kind == "maths":
            out.append("{math}`" + to_tex(piece.replace("\n", " ")) + "`")
        elif kind == "code":
            out.append("``" + piece + "``" if "`" in piece else "`" + piece + "`")
        else:
            out.append(_escape_md(piece))
    return "".join(out)


def inline_rst(text: str, transitional: bool = True) -> str:
    """The same for reST (autodoc): maths as `:math:` roles, code as literals."""
    out = []
    for kind, piece in split_inline(text, transitional):
        if kind == "maths":
            out.append(r"\ :math:`" + to_tex(piece.replace("\n", " ")).replace("`", "'")
                       + r"`\ ")
        elif kind == "code":
            out.append(r"\ ``" + piece + r"``\ ")
        else:
            out.append(_esc_rst(piece))
    return "".join(out).strip()


_EMPHASIS = re.compile(r"((?<![\w*])\*\*[^*\s](?:[^*]*?[^*\s])?\*\*(?![\w*])|"
                       r"(?<![\w*])\*[^*\s](?:[^*]*?[^*\s])?\*(?![\w*]))")


def _esc_rst(text: str) -> str:
    """Prose for reST: `*x*`/`**x**` stay emphasis; every other markup character is
    escaped (`|`, a lone `*`, a trailing `_`, backslashes)."""
    parts = _EMPHASIS.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 1:
            out.append(part)
            continue
        part = part.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")
        part = re.sub(r"(\w)_(?=\W|$)", r"\1\\_", part)
        part = part.replace("`", "\\`")
        out.append(part)
    return "".join(out)


_BULLET = re.compile(r"^(\s*)([*\-+]|\d+[.)])\s+")


def prose_items(lines: list[str]) -> list[tuple[str | None, str]]:
    """A prose block as `(marker, text)` items: a plain paragraph (marker None) or
    list items (`*`, `-`, `1.`), each with its continuation lines joined."""
    items: list[tuple[str | None, str]] = []
    for l in lines:
        m = _BULLET.match(l)
        if m:
            items.append((m.group(2), l[m.end():].strip()))
        elif items:
            items[-1] = (items[-1][0], items[-1][1] + " " + l.strip())
        else:
            items.append((None, l.strip()))
    return items


def _prose(lines: list[str], conv, rst: bool) -> list[str]:
    out: list[str] = []
    prev = "start"
    for marker, text in prose_items(lines):
        kind = "item" if marker else "para"
        if out and kind != prev:
            out.append("")
        if not rst and text.endswith("::"):  # reST's literal-block marker reads ":"
            text = text[:-1].rstrip(":") + ":" if text.strip() != "::" else ""
            if not text:
                continue
        if marker:
            out.append(("* " if not marker[0].isdigit() else marker + " ") + conv(text))
        else:
            out.append(conv(text))
        prev = kind
    return out


def _display_line(line: str, transitional: bool) -> str:
    """One line of an indented equation block as TeX."""
    line = line.strip()
    m = _DISPLAY.match(line)
    if m:
        return to_tex(m.group(1).strip())
    pieces = list(split_inline(line, transitional=True))
    if not any(k == "maths" for k, _ in pieces):
        # an equation written bare (the optimizers' blocks), maybe with a note
        note = re.search(r"\s{2,}(\(.*\))\s*$", line)
        if note:
            return to_tex(line[:note.start()]) + r"\qquad\text{" + _text(note.group(1)) + "}"
        return to_tex(line)
    parts = []
    for kind, piece in pieces:
        if kind == "maths":
            parts.append(to_tex(piece))
        elif kind == "code":
            parts.append(r"\texttt{" + _text(piece) + "}")
        else:
            t = piece.strip()
            if not t or t in ",;":
                parts.append(r"\qquad " if not t or t == ";" else r",\qquad ")
            elif re.fullmatch(r"[.:,;]+", t):
                parts.append(t if t != ":" else r"\colon")
            else:
                lead = r"\qquad" if piece[:2] == "  " else r"\ " if piece[:1] == " " else ""
                tail = r"\qquad" if piece[-2:] == "  " else r"\ " if piece[-1:] == " " else ""
                parts.append(lead + r"\text{" + _text(t) + "}" + tail)
    return "".join(parts).strip()


def _text(t: str) -> str:
    return re.sub(r"([{}_%#&$^\\])", r"\\\1", t)


def display_tex(lines: list[str], transitional: bool = True) -> str:
    """An equation block: one line each, aligned at `=` when every line has one."""
    tex = [_display_line(l, transitional) for l in lines if l.strip()]
    if len(tex) == 1:
        return tex[0]
    if all(_top_level_eq(t) >= 0 for t in tex):
        tex = [t[:_top_level_eq(t)] + "&" + t[_top_level_eq(t):] for t in tex]
    return "\\begin{aligned}\n" + " \\\\\n".join(tex) + "\n\\end{aligned}"


def _top_level_eq(t: str) -> int:
    depth = 0
    for i, c in enumerate(t):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "=" and depth == 0:
            return i
    return -1


def _is_maths_block(lines: list[str]) -> bool:
    text = "\n".join(lines)
    if re.search(r"^\s*(def |class |import |from |with |for |return |@|>>>)", text, re.M):
        return False
    if any(k == "maths" for line in lines for k, _ in split_inline(line.strip())):
        return True
    # equations written bare (no $ or backticks): maths symbols and an equals sign
    return "=" in text and any(c in MATHS_CHARS for c in text)


def _is_prose_block(lines: list[str]) -> bool:
    """An indented paragraph of sentences (a definition's body), not code."""
    text = "\n".join(lines)
    return bool(re.search(r"[A-Za-z]{3,} [a-z]{2,} [a-z]{2,}", text)) and not re.search(
        r"^\s*[\w.\[\]]+\s*=[^=]|^\s*(def|class|import|from|return|with)\b|^\s*#|>>>",
        text, re.M)


def blocks(doc: str):
    """Split a dedented docstring into `(kind, lines)` blocks: `"prose"`,
    `"display"` (maths), `"code"`, `"section"` (Google style, with its items) and
    `"heading"`."""
    lines = doc.expandtabs().splitlines()
    i = 0
    para: list[str] = []

    def flush():
        nonlocal para
        if para:
            yield "prose", para
        para = []

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            yield from flush()
            i += 1
            continue
        if i + 1 < len(lines) and _UNDERLINE.match(lines[i + 1]) and line.strip() and \
                len(lines[i + 1].strip()) >= len(line.strip()) - 1 and _indent(line) == 0:
            yield from flush()
            yield "heading", [line.strip()]
            i += 2
            continue
        if SECTION.match(line) and _indent(line) == 0:
            yield from flush()
            j, body = i + 1, []
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > 0):
                body.append(lines[j])
                j += 1
            while body and not body[-1].strip():
                body.pop()
            yield "section", [line.strip().rstrip(":")] + body
            i = j
            continue
        if _DISPLAY.match(line):
            yield from flush()
            yield "display", [line]
            i += 1
            continue
        if line.lstrip().startswith("$$") and line.strip() != "$$" and "$$" not in line.strip()[2:]:
            # $$ … over several lines … $$
            yield from flush()
            j, body = i + 1, [line.strip()[2:]]
            while j < len(lines) and "$$" not in lines[j]:
                body.append(lines[j].strip())
                j += 1
            if j < len(lines):
                body.append(lines[j].strip().split("$$")[0])
            yield "display", ["$$" + " ".join(b for b in body if b) + "$$"]
            i = j + 1
            continue
        if line.rstrip().endswith("$$") and line.strip() == "$$":  # a $$ … $$ block
            yield from flush()
            j = i + 1
            body = []
            while j < len(lines) and lines[j].strip() != "$$":
                body.append(lines[j])
                j += 1
            yield "display", ["$$" + " ".join(b.strip() for b in body) + "$$"]
            i = j + 1
            continue
        base = _indent(para[0]) if para else 0
        prev = lines[i - 1] if i else ""
        last_text = next((l for l in reversed(lines[:i]) if l.strip()), "")
        starts_block = _indent(line) >= base + 4 and (not prev.strip() or prev.rstrip().endswith(":"))
        if starts_block and not (para and para[0].lstrip().startswith(("* ", "- ")) and prev.strip()):
            literal = last_text.rstrip().endswith("::")
            if literal and para:
                if para[-1].strip() == "::":
                    para.pop()
                else:
                    para[-1] = para[-1].rstrip()[:-1]  # "…::" reads "…:"
            yield from flush()
            j, body = i, []
            ind = _indent(line)
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) >= ind):
                body.append(lines[j][ind:] if lines[j].strip() else "")
                j += 1
            while body and not body[-1].strip():
                body.pop()
            if literal:
                yield "code", body
            elif _is_maths_block(body):
                yield "display", body
            elif _is_prose_block(body):
                yield "prose", [l for l in body if l.strip()]
            else:
                yield "code", body
            i = j
            continue
        para.append(line)
        i += 1
    yield from flush()


def _section_items(body: list[str]) -> list[str]:
    items: list[str] = []
    base = min((_indent(l) for l in body if l.strip()), default=0)
    for l in body:
        if not l.strip():
            continue
        if _indent(l) == base:
            items.append(l.strip())
        elif items:
            items[-1] += " " + l.strip()
    return items


def to_myst(doc: str, transitional: bool = True, heading_level: int = 0) -> str:
    """A docstring as MyST markdown. `heading_level` > 0 turns reST-underlined
    headings into markdown headings of that level; 0 makes them bold lines."""
    transitional = transitional and not uses_dollars(doc)
    out: list[str] = []
    for kind, lines in blocks(doc):
        if kind == "prose":
            out.append("\n".join(_prose(lines, lambda t: inline_md(t, transitional), False)))
        elif kind == "heading":
            text = inline_md(lines[0], transitional)
            out.append(("#" * heading_level + " " + text) if heading_level else f"**{text}**")
        elif kind == "display":
            out.append("```{math}\n" + display_tex(lines, transitional) + "\n```")
        elif kind == "code":
            out.append("```python\n" + "\n".join(lines) + "\n```")
        elif kind == "section":
            items = _section_items(lines[1:])
            md = [f"**{lines[0]}**", ""]
            for it in items:
                m = re.match(r"^([\w*]+)(\s*\([^)]*\))?:\s*(.*)$", it)
                if m and lines[0] in ("Args", "Arguments", "Attributes", "Raises"):
                    md.append(f"- `{m.group(1)}`{m.group(2) or ''}: "
                              + inline_md(m.group(3), transitional))
                else:
                    md.append("- " + inline_md(it, transitional))
            out.append("\n".join(md))
    return "\n\n".join(out) + "\n"


def to_rst_lines(lines: list[str], transitional: bool = True) -> list[str]:
    """autodoc's docstring lines (reST, Google sections left to napoleon) with maths
    as `:math:` and display blocks as `.. math::` directives."""
    doc = "\n".join(lines)
    transitional = transitional and not uses_dollars(doc)
    out: list[str] = []
    for kind, block in blocks(doc):
        if kind == "prose":
            out += _prose(block, lambda t: inline_rst(t, transitional), True)
        elif kind == "heading":
            out += [".. rubric:: " + block[0]]
        elif kind == "display":
            out += [".. math::", ""] + ["   " + t for t in
                                        display_tex(block, transitional).splitlines()]
        elif kind == "code":
            last = next((l for l in reversed(out) if l.strip()), "")
            out += ([] if last.rstrip().endswith("::") else ["::", ""]) + ["    " + l for l in block]
        elif kind == "section":
            out += [".. rubric:: " + block[0], ""]
            for it in _section_items(block[1:]):
                m = re.match(r"^([\w*]+)(\s*\([^)]*\))?:\s*(.*)$", it)
                if m and block[0] in ("Args", "Arguments", "Attributes", "Raises"):
                    out.append(f"* ``{m.group(1)}``{_esc_rst(m.group(2) or '')}: "
                               + inline_rst(m.group(3), transitional))
                else:
                    out.append("* " + inline_rst(it, transitional))
        out.append("")
    return out


def _rejoin_spans(block: list[str]) -> list[str]:
    """Lines of a paragraph, with a backtick or dollar span broken over two lines put
    back on one (reST roles cannot span lines inside list items reliably)."""
    out: list[str] = []
    for l in block:
        if out and (out[-1].count("`") % 2 == 1 or _odd_dollars(out[-1])):
            out[-1] = out[-1].rstrip() + " " + l.strip()
        else:
            out.append(l)
    return out


def _odd_dollars(s: str) -> bool:
    return (s.count("$") - 2 * s.count("$$")) % 2 == 1


_FENCE = re.compile(r"^\s*(```|~~~)")
_MD_SPAN = re.compile(r"(`+)(.+?)\1")
_MD_DOLLARS = re.compile(r"(?<![\\$])(\$\$?)(?!\s*\$)(.+?)(?<!\\)\1(?!\$)")


def markdown_dollars(text: str) -> str:
    """Markdown with its `$…$`/`$$…$$` maths written in Unicode turned into TeX for
    MathJax (code spans and fenced blocks untouched): for CONTRIBUTING.md and the
    README sections the guides include."""
    out, fence = [], None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if m:
            fence = None if fence == m.group(1) else (fence or m.group(1))
            out.append(line)
            continue
        if fence or "$" not in line:
            out.append(line)
            continue
        pieces, pos = [], 0
        for c in _MD_SPAN.finditer(line):
            pieces.append(_dollars_to_tex(line[pos:c.start()]))
            pieces.append(c.group(0))
            pos = c.end()
        pieces.append(_dollars_to_tex(line[pos:]))
        out.append("".join(pieces))
    return "\n".join(out)


def _dollars_to_tex(text: str) -> str:
    return _MD_DOLLARS.sub(lambda m: m.group(1) + to_tex(m.group(2).strip()) + m.group(1), text)
