"""The documentation generator: Unicode maths to TeX, and a wrong rule failing its page.

The TeX tests need nothing beyond the core (the converter imports no Sphinx); the
build tests run Sphinx on a one-primitive site in a subprocess and need the docs
extra (skipped with the reason where it is missing, except in CI).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

from fdl_docs.docstrings import markdown_dollars, to_myst  # noqa: E402
from fdl_docs.texmath import split_inline, to_tex, uses_dollars  # noqa: E402


@pytest.mark.parametrize("unicode, tex", [
    ("∂L/∂W = Xᵀ G", r"\partial L/\partial W = X^{\top }\,G"),
    ("X ∈ ℝ^{N×d_in}", r"X \in \mathbb{R}^{N\times d_{\mathrm{in}}}"),
    ("W_c₁", r"W_{c1}"),
    ("m̂_t = m_t / (1 − β₁^t)", r"\hat{m}_{t} = m_{t} / (1 - \beta _{1}^{t})"),
    ("√(v + ε)", r"\sqrt{v + \varepsilon}"),
    ("‖∂ℓᵢ/∂W‖²_F", r"\|\partial \ell _{i}/\partial W\|_{\mathrm{F}}^{2}"),
    ("2³¹−1", r"2^{31}-1"),
    ("dY = avg_pool2d(dX)", r"dY = \operatorname{avg\_pool2d}(dX)"),
    ("m ∈ {0, 1}^S", r"m \in \{0, 1\}^{S}"),
    (r"\frac{β₁ m_t}{1 − β₁^{t+1}} \quad \text{(nesterov=True)}",
     r"\frac{\beta _{1}\,m_{t}}{1 - \beta _{1}^{t+1}} \quad \text{(nesterov=True)}"),
    ("p = softmax(z)", r"p = \operatorname{softmax}(z)"),
    ("y = tanh(x)", r"y = \tanh (x)"),
])
def test_unicode_maths_becomes_tex(unicode, tex):
    assert to_tex(unicode) == tex


def test_prose_keeps_code_and_reads_dollars_as_maths():
    pieces = list(split_inline("with `jnp.maximum` and $Y = XW + b$, `G = ∂L/∂Y`", True))
    assert pieces == [("text", "with "), ("code", "jnp.maximum"), ("text", " and "),
                      ("maths", "Y = XW + b"), ("text", ", "), ("maths", "G = ∂L/∂Y")]
    assert list(split_inline("`G = ∂L/∂Y`", transitional=False)) == [("code", "G = ∂L/∂Y")]


def _maths_spans(doc: str) -> list[str]:
    """The maths spans the generator reads: `$…$`, and backtick maths in a docstring
    that has no dollars yet."""
    transitional = not uses_dollars(doc)
    return [t for line in doc.split("\n\n")
            for k, t in split_inline(line.replace("\n", " "), transitional) if k == "maths"]


def test_every_registered_docstring_converts_to_ascii_tex():
    """MathJax gets TeX: no Unicode symbol survives outside \\text{…} in any maths
    span of any registered primitive's docstring, or of fdl.optim's."""
    import fdl

    docs = [inspect.getdoc(p.forward) or "" for p in fdl.registry().values()]
    docs += [inspect.getdoc(getattr(fdl.optim, n)) or "" for n in fdl.optim.__all__]
    spans = [s for d in docs for s in _maths_spans(d)]
    assert len(spans) > 300
    leftovers = {}
    for span in spans:
        tex = re.sub(r"\\(text|operatorname|mathrm)\{[^{}]*\}", "", to_tex(span))
        odd = sorted({c for c in tex if ord(c) > 127})
        if odd:
            leftovers[span] = odd
    assert leftovers == {}


def test_docstring_display_block_becomes_aligned_equations():
    md = to_myst("Adam.\n\n    m_t = β₁ m_{t−1} + (1 − β₁) g_t\n    u_t = −η_t m̂_t\n")
    assert md == ("Adam.\n\n```{math}\n\\begin{aligned}\n"
                  "m_{t} &= \\beta _{1}\\,m_{t-1} + (1 - \\beta _{1})\\,g_{t} \\\\\n"
                  "u_{t} &= -\\eta _{t}\\,\\hat{m}_{t}\n\\end{aligned}\n```\n")


def test_markdown_dollars_convert_outside_code_only():
    text = ("Clips to $[−1, 1]$; `$∂L/∂W = Xᵀ G$` stays code; $$ y = x² $$\n"
            "```python\ns = \"$x$\"\n```\ncosts $5")
    assert markdown_dollars(text) == (
        "Clips to $[-1, 1]$; `$∂L/∂W = Xᵀ G$` stays code; $$y = x^{2}$$\n"
        "```python\ns = \"$x$\"\n```\ncosts $5")


# --------------------------------------------------------------------------- #
# A planted wrong backward: its page shows the failure and the build fails
# --------------------------------------------------------------------------- #

PLANTED = '''
import jax.numpy as jnp
from fdl.primitive import Example, gaussian, primitive


def planted_square(x):
    """Square `y = x²`. Derivation: `∂L/∂x = 2x ⊙ ∂L/∂y`."""
    return x * x


def _backward(residuals, g):
    (x,), _ = residuals
    return ({factor} * x * g,)


planted_square = primitive(planted_square, _backward,
                           examples=[Example((gaussian(3, 2),))])
'''

CONF = '''
import sys
sys.path.insert(0, {ext!r})
sys.path.insert(0, {here!r})
import planted  # registers planted_square
extensions = ["myst_parser", "sphinx.ext.mathjax", "fdl_docs.extension"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
fdl_docs_only = ["primitives"]
fdl_docs_primitives = ["planted_square"]
exclude_patterns = ["_build"]
'''


def _docs_extra() -> None:
    missing = [m for m in ("sphinx", "myst_parser") if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI installs the docs extra; missing {missing}")
        pytest.skip(f"the docs extra is not installed ({missing}): pip install -e '.[docs]'")


def _build(tmp_path: Path, factor: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "planted.py").write_text(PLANTED.format(factor=factor))
    (src / "conf.py").write_text(CONF.format(ext=str(ROOT / "docs" / "_ext"), here=str(src)))
    (src / "index.md").write_text("# planted\n\n```{toctree}\nprimitives/index\n```\n")
    out = tmp_path / "html"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
                           "html", str(src), str(out)], capture_output=True, text=True,
                          timeout=600, env=env)
    return proc, src / "primitives" / "planted_square.md", out


def test_planted_wrong_backward_fails_its_page_and_the_build(tmp_path):
    _docs_extra()
    proc, page, out = _build(tmp_path, factor="3")  # the derivative of x² is 2x, not 3x
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "a check failed on these generated pages" in proc.stderr
    assert "primitives/planted_square" in proc.stderr
    text = page.read_text()
    assert "```{admonition} Check FAILED" in text
    assert re.search(r"\| `x` \| autodiff \| .* \| \*\*FAIL\*\* \|", text)
    assert re.search(r"\| `x` \| finite differences \| .* \| \*\*FAIL\*\* \|", text)
    assert "x vs autodiff FAILED" in text  # the report in full, with its worst element
    html = (out / "primitives" / "planted_square.html").read_text()
    assert "Check FAILED" in html  # the page was written before the build failed


def test_the_same_primitive_with_the_right_backward_builds(tmp_path):
    _docs_extra()
    proc, page, out = _build(tmp_path, factor="2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = page.read_text()
    assert "```{admonition} Check passed" in text and "FAIL" not in text
    assert (out / "primitives" / "planted_square.html").exists()
