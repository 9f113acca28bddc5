"""Unicode maths, as fdl's docstrings write it, to TeX for MathJax.

fdl writes maths in docstrings between dollars with Unicode inside
(`$∂L/∂W = Xᵀ G$`, `$X ∈ ℝ^{N×d_in}$`) so that `help()` stays readable. The
browser's renderer needs TeX: `to_tex` converts one maths span,
`split_inline` finds the spans in a line of prose.

Conventions read from the docstrings:

* `_name` subscripts the whole run of letters and digits (`d_in`, `W_x`, `X_ni`);
  Unicode sub/superscripts (`ᵀ`, `²`, `₁`, `ᵢ`) attach to the atom before them and
  merge with an ASCII subscript already there (`W_c₁` is `W_{c1}`).
* Combining accents (`X̂`, `h̄`, `h̃`) become `\\hat`, `\\bar`, `\\tilde`.
* `√x`, `√(…)` become `\\sqrt{…}`.
* A word of two or more letters is an operator name set upright (`softmax`,
  `diag`); `tanh`, `log`, `exp`, `max`, … use TeX's own; a differential `dx`,
  `dW` and a product of capitals (`XW`, `HW`) stay as they are.
"""

from __future__ import annotations

import re
import unicodedata

SUPERSCRIPTS = {
    "⁰": "0", "¹": "1", "²": "2", "³": "3", "⁴": "4", "⁵": "5", "⁶": "6", "⁷": "7",
    "⁸": "8", "⁹": "9", "⁺": "+", "⁻": "-", "⁼": "=", "⁽": "(", "⁾": ")", "ⁿ": "n",
    "ⁱ": "i", "ˣ": "x", "ᵗ": "t", "ᵏ": "k", "ʲ": "j", "ᵐ": "m", "ᵈ": "d",
    "ᵀ": r"\top ", "ᴴ": "H", "ᵃ": "a", "ᵇ": "b", "ᶜ": "c", "ᵉ": "e", "ᵖ": "p",
    "ʳ": "r", "ˢ": "s", "ᵘ": "u", "ᵛ": "v", "ʷ": "w", "ʸ": "y", "ᶻ": "z",
}
SUBSCRIPTS = {
    "₀": "0", "₁": "1", "₂": "2", "₃": "3", "₄": "4", "₅": "5", "₆": "6", "₇": "7",
    "₈": "8", "₉": "9", "₊": "+", "₋": "-", "₌": "=", "₍": "(", "₎": ")",
    "ₐ": "a", "ₑ": "e", "ₒ": "o", "ₓ": "x", "ₕ": "h", "ₖ": "k", "ₗ": "l", "ₘ": "m",
    "ₙ": "n", "ₚ": "p", "ₛ": "s", "ₜ": "t", "ᵢ": "i", "ⱼ": "j", "ᵣ": "r", "ᵤ": "u",
    "ᵥ": "v",
}
ACCENTS = {"\u0302": "hat", "\u0304": "bar", "\u0303": "tilde", "\u0307": "dot",
           "\u0305": "bar", "\u20d7": "vec"}
SYMBOLS = {
    "∂": r"\partial ", "∈": r"\in ", "∉": r"\notin ", "∋": r"\ni ", "ℝ": r"\mathbb{R}",
    "ℕ": r"\mathbb{N}", "ℤ": r"\mathbb{Z}", "×": r"\times ", "·": r"\cdot ", "⋅": r"\cdot ",
    "⊙": r"\odot ", "⊗": r"\otimes ", "⊘": r"\oslash ", "⊕": r"\oplus ", "⋆": r"\star ",
    "∘": r"\circ ", "○": r"\circ ", "−": "-", "–": "-", "≤": r"\le ", "≥": r"\ge ",
    "≠": r"\ne ", "≈": r"\approx ", "≡": r"\equiv ", "∼": r"\sim ", "∝": r"\propto ",
    "⇒": r"\Rightarrow ", "⇔": r"\Leftrightarrow ", "→": r"\to ", "←": r"\leftarrow ",
    "↦": r"\mapsto ", "∞": r"\infty ", "⟨": r"\langle ", "⟩": r"\rangle ", "‖": r"\|",
    "…": r"\dots ", "⋯": r"\cdots ", "∇": r"\nabla ", "∀": r"\forall ", "∃": r"\exists ",
    "±": r"\pm ", "∓": r"\mp ", "⊤": r"\top ", "ℓ": r"\ell ", "½": r"\tfrac{1}{2}",
    "⅓": r"\tfrac{1}{3}", "¼": r"\tfrac{1}{4}", "′": "'", "″": "''", "∪": r"\cup ",
    "∩": r"\cap ", "⊂": r"\subset ", "⊆": r"\subseteq ", "∅": r"\emptyset ", "∧": r"\wedge ",
    "∨": r"\vee ", "¬": r"\neg ", "≔": r"\coloneqq ", "∑": r"\sum ", "∏": r"\prod ",
    "∫": r"\int ", "⌊": r"\lfloor ", "⌋": r"\rfloor ", "⌈": r"\lceil ", "⌉": r"\rceil ",
    "•": r"\bullet ", "✓": r"\checkmark ", "∗": "*", "⁄": "/", "“": "``", "”": "''",
    "%": r"\%", "#": r"\#", "&": r"\&", "~": r"\sim ",
}
GREEK = {
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "varepsilon", "ϵ": "epsilon",
    "ζ": "zeta", "η": "eta", "θ": "theta", "ι": "iota", "κ": "kappa", "λ": "lambda",
    "μ": "mu", "ν": "nu", "ξ": "xi", "π": "pi", "ρ": "rho", "σ": "sigma", "ς": "varsigma",
    "τ": "tau", "υ": "upsilon", "φ": "phi", "ϕ": "phi", "χ": "chi", "ψ": "psi", "ω": "omega",
    "Γ": "Gamma", "Δ": "Delta", "Θ": "Theta", "Λ": "Lambda", "Ξ": "Xi", "Π": "Pi",
    "Σ": "sum", "Φ": "Phi", "Ψ": "Psi", "Ω": "Omega",
}
# TeX's own operator names; every other word of two or more letters is \operatorname
TEX_FUNCTIONS = {"sin", "cos", "tan", "tanh", "sinh", "cosh", "log", "ln", "exp", "max",
                 "min", "arg", "det", "sup", "inf", "lim", "Pr", "deg", "dim", "ker"}
UPRIGHT_SUBSCRIPTS = {"in", "out", "batch", "label", "ref", "max", "min", "fd", "sum",
                      "hat", "next", "norm", "eff", "F"}
_CALL = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z][A-Za-z0-9]+(?:_[A-Za-z0-9]+)*_[A-Za-z][A-Za-z0-9]+(?=\()")
_DIGITS = set("0123456789")
LETTERLIKE = {"ℓ", "ℝ", "ℕ", "ℤ", "∇", "∂", "∞", "⊤", "½"}
_IDENT = re.compile(r"[A-Za-z]")
_WORD_CHARS = re.compile(r"[A-Za-z0-9]")


def _has_accent(s: str, i: int) -> bool:
    return i < len(s) and s[i] in ACCENTS


class _Converter:
    """A one-pass scanner over a maths span, emitting TeX."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.out: list[str] = []

    def run(self) -> str:
        while self.i < len(self.s):
            self.step()
        return "".join(self.out)

    # ------------------------------------------------------------------ atoms
    def atom(self) -> str:
        """The next atom as TeX: a letter (with accents), a word, a number, a
        Greek letter, a braced group or a parenthesised group (for √)."""
        s, i = self.s, self.i
        c = s[i]
        if c == "{":
            j = _matching(s, i, "{", "}")
            self.i = j + 1
            return "{" + to_tex(s[i + 1:j]) + "}"
        if c == "(":
            j = _matching(s, i, "(", ")")
            self.i = j + 1
            return "{" + to_tex(s[i + 1:j]) + "}"
        if c in GREEK:
            self.i += 1
            return self.accented("\\" + GREEK[c] + " ")
        if c in _DIGITS:
            j = i
            while j < len(s) and (s[j] in _DIGITS or (s[j] == "." and j + 1 < len(s)
                                                     and s[j + 1] in _DIGITS)):
                j += 1
            self.i = j
            return s[i:j]
        if _IDENT.match(c):
            return self.word()
        self.i += 1
        return SYMBOLS.get(c, c)

    def accented(self, base: str) -> str:
        while _has_accent(self.s, self.i):
            base = "\\" + ACCENTS[self.s[self.i]] + "{" + base.strip() + "}"
            self.i += 1
        return base

    def word(self) -> str:
        s, i = self.s, self.i
        j = i
        while j < len(s) and _IDENT.match(s[j]) and not _has_accent(s, j + 1):
            j += 1
        if j == i:  # a single accented letter
            self.i = i + 1
            return self.accented(s[i])
        w = s[i:j]
        self.i = j
        if len(w) == 1:
            return w
        if w in TEX_FUNCTIONS:
            return "\\" + w + " "
        if w[0] == "d" and len(w) == 2:  # a differential: dx, dW
            return w
        if w.isupper() and len(w) <= 3:  # a product of matrices: XW
            return w
        if len(w) == 2 and not w.islower() and not w.isupper():  # Wx: a product W x
            return w[0] + r"\," + w[1]
        return "\\operatorname{" + w + "}"

    # ------------------------------------------------------------------ scripts
    def scripts(self, base: str) -> str:
        """Attach any subscripts and superscripts that follow the atom `base`."""
        s = self.s
        sub: list[str] = []
        sup: list[str] = []
        while self.i < len(s):
            c = s[self.i]
            if c == "_" and self.i + 1 < len(s) and s[self.i + 1] == "{":
                j = _matching(s, self.i + 1, "{", "}")
                sub.append(to_tex(s[self.i + 2:j]))
                self.i = j + 1
            elif c == "_" and self.i + 1 < len(s) and (_WORD_CHARS.match(s[self.i + 1])
                                                       or s[self.i + 1] in GREEK):
                j = self.i + 1
                while j < len(s) and (_WORD_CHARS.match(s[j]) or s[j] in GREEK):
                    j += 1
                run = s[self.i + 1:j]
                sub.append(_subscript_word(run))
                self.i = j
            elif c in SUBSCRIPTS:
                sub.append(SUBSCRIPTS[c])
                self.i += 1
            elif c == "^" and self.i + 1 < len(s) and s[self.i + 1] == "{":
                j = _matching(s, self.i + 1, "{", "}")
                sup.append(to_tex(s[self.i + 2:j]))
                self.i = j + 1
            elif c == "^" and self.i + 1 < len(s):
                self.i += 1
                sup.append(self.atom())
            elif c in SUPERSCRIPTS:
                sup.append(SUPERSCRIPTS[c])
                self.i += 1
            elif c in "'′":
                base += "'"
                self.i += 1
            else:
                break
        if sub:
            base += "_{" + "".join(sub) + "}"
        if sup:
            base += "^{" + "".join(sup) + "}"
        return base

    def command(self) -> str:
        """A TeX command written in the source (`\\frac{a}{b}`, `\\text{…}`,
        `\\qquad`, `\\{`): kept, its brace arguments read as TeX groups (verbatim
        for the text-like commands)."""
        s, i = self.s, self.i
        m = re.match(r"\\([A-Za-z]+|.)", s[i:])
        if not m:
            self.i += 1
            return "\\"
        name = m.group(1)
        self.i += m.end()
        out = "\\" + name
        verbatim = name in VERBATIM_COMMANDS
        while self.i < len(s) and s[self.i] == "{" and name.isalpha():
            j = _matching(s, self.i, "{", "}")
            inner = s[self.i + 1:j]
            out += "{" + (_unicode_text(inner) if verbatim else to_tex(inner)) + "}"
            self.i = j + 1
        return out + (" " if name.isalpha() and not out.endswith("}") else "")

    def step(self) -> None:
        s, i = self.s, self.i
        c = s[i]
        if c == "\\":
            self.out.append(self.scripts(self.command()))
            return
        if c == "√":
            self.i += 1
            while self.i < len(s) and s[self.i] == " ":
                self.i += 1
            if self.i >= len(s):
                self.out.append(r"\sqrt{}")
                return
            arg = self.scripts(self.atom())
            if not arg.startswith("{"):
                arg = "{" + arg + "}"
            self.out.append(r"\sqrt" + arg)
            return
        if c == "Σ" or c == "∑":
            self.i += 1
            self.out.append(self.scripts(r"\sum") + " ")
            return
        if c == "Π" and self.i + 1 < len(s) and s[self.i + 1] in "_":
            self.i += 1
            self.out.append(self.scripts(r"\prod") + " ")
            return
        m = _CALL.match(s, i)
        if m:  # a function named with underscores: avg_pool2d(dX)
            self.i = m.end()
            self.out.append(r"\operatorname{" + m.group(0).replace("_", r"\_") + "}")
            return
        if c in "{(":
            # braces not after ^ or _ are a set; a parenthesis stays a parenthesis
            if c == "{":
                j = _matching(s, i, "{", "}")
                self.i = j + 1
                self.out.append(self.scripts(r"\{" + to_tex(s[i + 1:j]) + r"\}"))
            else:
                self.i += 1
                self.out.append("(")
            return
        if c == ")" or c == "]" or c == "|" or c == "‖":
            self.i += 1
            self.out.append(self.scripts(SYMBOLS.get(c, c)))
            return
        if c in LETTERLIKE:
            self.i += 1
            self.out.append(self.scripts(SYMBOLS[c]))
            return
        if c in GREEK or c in _DIGITS or _IDENT.match(c):
            self.out.append(self.scripts(self.atom()))
            return
        if c == " ":
            # a space between two factors is a product: keep it visible (G Wᵀ, X dW)
            j = i
            while j < len(s) and s[j] == " ":
                j += 1
            prev = self.out[-1].rstrip() if self.out else ""
            nxt = s[j] if j < len(s) else ""
            self.i = j
            if (prev and (prev[-1].isalnum() or prev[-1] in ")}]'") and not _OPERATOR.search(
                    prev) and nxt and (
                    nxt.isalnum() or nxt in GREEK or nxt in "√∂(" or nxt in LETTERLIKE)):
                self.out.append(r"\,")
            else:
                self.out.append(" ")
            return
        if c in SUPERSCRIPTS or c in SUBSCRIPTS:  # a script with no base
            self.out.append(self.scripts("{}"))
            return
        self.i += 1
        self.out.append(SYMBOLS.get(c, c))


VERBATIM_COMMANDS = {"text", "textrm", "texttt", "textit", "textbf", "operatorname",
                     "mathrm", "mathbf", "mathit", "mathsf", "mathtt", "mathcal", "label"}


def _unicode_text(text: str) -> str:
    """The argument of `\\text{…}`: Unicode letters are fine there; maths symbols
    that MathJax's text mode would not render are left to it anyway."""
    return text.replace("−", "-")


def _subscript_word(run: str) -> str:
    if run in UPRIGHT_SUBSCRIPTS:
        return r"\mathrm{" + run + "}"
    return "".join("\\" + GREEK[c] + " " if c in GREEK else c for c in run)


def _matching(s: str, i: int, open_: str, close: str) -> int:
    """Index of the bracket closing the one at `i` (the end if unbalanced)."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == open_:
            depth += 1
        elif s[j] == close:
            depth -= 1
            if depth == 0:
                return j
    return len(s)


_OPERATOR = re.compile(r"\\(" + "|".join(sorted(
    {v.strip()[1:] for v in SYMBOLS.values() if re.fullmatch(r"\\[A-Za-z]+ ?", v)}
    - {"partial", "ell", "infty", "nabla", "top", "dots", "cdots"} | {"quad", "qquad"}))
    + r")$")


def to_tex(text: str) -> str:
    """TeX for one maths span written with Unicode (`∂L/∂W = Xᵀ G`)."""
    if not text:
        return ""
    text = unicodedata.normalize("NFD", text)  # Ĝ is G and a combining circumflex
    return re.sub(r" {2,}", " ", _Converter(text).run()).strip()


# --------------------------------------------------------------------------- #
# Finding maths in prose
# --------------------------------------------------------------------------- #

# characters that make a backtick span maths rather than code (the transitional
# reading of docstrings still written with backticks)
MATHS_CHARS = set("∂∈ℝℕ×·⊙⊗⊘⊕⋆−≤≥≠≈⇒⇔→∞√⟨⟩‖…∇Σ∑ΠαβγδεηθλμνπρστφψωΦΔΓΛΩ½ℓ∘○ᵀ⁻"
                  ) | set(SUPERSCRIPTS) | set(SUBSCRIPTS) | set(ACCENTS)
_CODEISH = re.compile(r"^[\w.]+\(.*\)$|^[\"'].*[\"']$|^\w+=|\bjnp\.|\bjax\.|\bfdl\.|"
                      r"\bnp\.|\blax\.|^--|^\w+\.\w+")


MATHS_FUNCTIONS = TEX_FUNCTIONS | {"softmax", "logsumexp", "diag", "mean", "rowsum", "onehot",
                                   "erf", "sign", "clip", "sigmoid", "relu", "EMA", "tr",
                                   "sum", "var", "std", "shape", "vec", "cell", "score"}


def looks_like_maths(span: str) -> bool:
    """Whether a backtick span reads as maths (transitional: docstrings not yet
    converted to `$…$`). A call of a name that is not a mathematical function
    (`adamw(η, …)`, `chain(…)`) is code."""
    if re.match(r"^(with|for|lambda|return|import|from|if|def|class|yield)\b", span) or \
            re.search(r"\b[A-Z][a-z]+[A-Z]\w*", span):  # Python, or a CamelCase class name
        return False
    call = re.match(r"^([A-Za-z_][\w.]*)\(", span)
    if call and len(call.group(1)) > 2 and call.group(1) not in MATHS_FUNCTIONS:
        return False
    if _CODEISH.search(span) and not any(c in MATHS_CHARS for c in span):
        return False
    if any(c in MATHS_CHARS for c in span):
        return not re.search(r"\bjnp\.|\bjax\.|\bnp\.|\blax\.", span)
    return bool(re.search(r"[A-Za-z)]\s*[=<>]\s*\S", span)
                and not re.search(r"[\w\]]=[\w\"'(]", span))


_INLINE = re.compile(r"(?<![\\$])\$(?![$\s])([^$\n]+?)(?<!\\)\$(?!\$)|``([^`]+)``|`([^`]+)`")


def uses_dollars(doc: str) -> bool:
    """Whether a docstring writes its maths between dollars (then its backtick
    spans are code, whatever they contain)."""
    return bool(re.search(r"(?<![\\$])\$[^$\s][^$\n]*\$", doc))


def split_inline(line: str, transitional: bool = True):
    """Yield `(kind, text)` pieces of a line of prose: `"text"`, `"maths"` (Unicode
    maths, for `to_tex`) or `"code"`. `$…$` is maths; with `transitional`, a
    backtick span that `looks_like_maths` is maths too."""
    pos = 0
    for m in _INLINE.finditer(line):
        if m.start() > pos:
            yield "text", line[pos:m.start()]
        if m.group(1) is not None:
            yield "maths", m.group(1)
        elif m.group(2) is not None:
            yield "code", m.group(2)
        else:
            span = m.group(3)
            yield ("maths" if transitional and looks_like_maths(span) else "code"), span
        pos = m.end()
    if pos < len(line):
        yield "text", line[pos:]
