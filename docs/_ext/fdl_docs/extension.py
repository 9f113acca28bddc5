"""The Sphinx extension (`fdl_docs.extension`) that generates fdl's reference pages at build time.

When the builder starts it writes, under the source directory (git-ignored):

* `primitives/` — one page per registered primitive with its `fdl check` result
  (`fdl_docs.primitives`);
* `optimizers/` — one page per named optimizer and transform, with a trajectory
  plot (`fdl_docs.optimizers`);
* `api/` — one autodoc page per public module;
* `_generated/` — outputs of code run now, included by the guides
  (`fdl_docs.executed`).

A failed check is written on its page and then fails the build (after the HTML is
written, so the failure can be read), whatever `-W` says. MathJax is served from
the `sphinx-mathjax-offline` package, copied into `_static/mathjax`: nothing is
fetched at build or view time.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import time
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

PUBLIC_MODULES = ["fdl", "fdl.primitive", "fdl.ops", "fdl.losses", "fdl.check", "fdl.layers",
                  "fdl.optim", "fdl.data", "fdl.io", "fdl.train", "fdl.privacy", "fdl.parallel",
                  "fdl.models", "fdl.random"]

# what to copy from the MathJax distribution: the TeX-to-CommonHTML component, its
# fonts, and the TeX extensions it loads on demand
MATHJAX_PARTS = ("tex-chtml.js", "output/chtml", "input/tex/extensions", "ui", "a11y",
                 "adaptors", "sre")


class PageFailures(ExtensionError):
    """A generated page reports a failed check."""


def mathjax_dir() -> Path:
    """The MathJax 3 files that the `sphinx-mathjax-offline` package installs."""
    try:
        files = importlib.metadata.files("sphinx-mathjax-offline") or []
    except importlib.metadata.PackageNotFoundError:
        raise ExtensionError(
            "fdl docs: MathJax is served from the sphinx-mathjax-offline package, which is "
            "not installed; install the docs extra: pip install -e '.[docs]'") from None
    for f in files:
        if str(f).endswith("static/mathjax/tex-chtml.js"):
            return Path(f.locate()).parent
    raise ExtensionError("fdl docs: sphinx-mathjax-offline has no static/mathjax/tex-chtml.js")


def _copy_mathjax(app: Sphinx, exc: Exception | None) -> None:
    if exc is not None or app.builder.format != "html":
        return
    src, dst = mathjax_dir(), Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        s, d = src / part, dst / part
        if not s.exists():
            continue
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        else:
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)


def _api_pages(srcdir: Path, modules: list[str]) -> None:
    out = srcdir / "api"
    out.mkdir(exist_ok=True)
    from fdl_docs.primitives import _write

    import importlib

    from fdl.primitive import Primitive

    for m in modules:
        mod = importlib.import_module(m)
        # primitives are callable objects, not functions: autodoc's module scan skips
        # them, so each is documented as a function explicitly
        prims = [n for n in getattr(mod, "__all__", []) if isinstance(getattr(mod, n), Primitive)]
        # the package re-exports objects documented in their own modules: no index entries
        rst = [f".. automodule:: {m}", "   :members:", *(["   :no-index:"] if m == "fdl" else []),
               *([f"   :exclude-members: {', '.join(prims)}"] if prims else []), ""]
        rst += [f".. autofunction:: {m}.{n}\n" for n in prims]
        _write(out / f"{m}.md", f"# `{m}`\n\n```{{eval-rst}}\n" + "\n".join(rst) + "\n```\n")
    _write(out / "index.md", "# API reference\n\nEvery public module, from its docstrings "
           "(the maths rendered from their `$…$` spans).\n\n```{toctree}\n:maxdepth: 1\n\n"
           + "\n".join(modules) + "\n```\n")


def _generate(app: Sphinx) -> None:
    import jax

    cache = Path(app.outdir).parent / ".jax-cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    srcdir = Path(app.srcdir)
    only = _names(app.config.fdl_docs_only)
    failures: list[str] = []
    t0 = time.perf_counter()
    if only is None or "api" in only:
        _api_pages(srcdir, app.config.fdl_docs_modules)
    if only is None or "primitives" in only:
        from fdl_docs.primitives import write_pages

        prims = None
        if app.config.fdl_docs_primitives is not None:
            import fdl

            reg = fdl.registry()
            prims = {n: reg[n] for n in _names(app.config.fdl_docs_primitives)}
        failures += [f"primitives/{n}" for n in write_pages(srcdir / "primitives", prims)]
    t1 = time.perf_counter()
    if only is None or "optimizers" in only:
        from fdl_docs.optimizers import write_pages as write_optimizers

        failures += write_optimizers(srcdir / "optimizers")
    if only is None or "executed" in only:
        from fdl_docs.executed import write_all

        failures += write_all(srcdir / "_generated")
    logger.info(f"fdl docs: generated pages in {time.perf_counter() - t0:.1f} s "
                f"(primitive checks {t1 - t0:.1f} s)")
    app.env.fdl_failures = failures  # type: ignore[attr-defined]
    app.fdl_failures = failures  # type: ignore[attr-defined]


def _names(value: Any) -> list[str] | None:
    """A config list, also given as a comma-separated string (`-D name=a,b`)."""
    if value is None or isinstance(value, (list, tuple)):
        return value
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _fail_on_checks(app: Sphinx, exc: Exception | None) -> None:
    failures = getattr(app, "fdl_failures", [])
    if exc is None and failures:
        raise PageFailures(
            "fdl docs: a check failed on these generated pages (see each page's Check "
            "section): " + ", ".join(failures))


def _process_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                       lines: list[str]) -> None:
    from fdl_docs.docstrings import to_rst_lines

    if lines:
        lines[:] = to_rst_lines(lines, transitional=app.config.fdl_docs_transitional)


def _markdown_maths(app: Sphinx, docname: str, content: list[str]) -> None:
    """`source-read`: Unicode maths between dollars to TeX in a markdown page."""
    from fdl_docs.docstrings import markdown_dollars

    if str(app.env.doc2path(docname)).endswith(".md"):
        content[0] = markdown_dollars(content[0])


def _included_maths(app: Sphinx, path: Any, parent: str, content: list[str]) -> None:
    """`include-read`: the same for an included markdown file (CONTRIBUTING.md, the
    README's sections)."""
    from fdl_docs.docstrings import markdown_dollars

    if str(path).endswith(".md"):
        content[0] = markdown_dollars(content[0])


def setup(app: Sphinx) -> dict:
    app.add_config_value("fdl_docs_modules", PUBLIC_MODULES, "env")
    app.add_config_value("fdl_docs_primitives", None, "env")  # None: the whole registry
    app.add_config_value("fdl_docs_only", None, "env")  # None: every kind of page
    app.add_config_value("fdl_docs_transitional", True, "env")  # backtick maths too
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("builder-inited", _generate)
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)
    app.connect("source-read", _markdown_maths)
    app.connect("include-read", _included_maths)  # CONTRIBUTING.md, README sections
    app.connect("build-finished", _copy_mathjax)
    app.connect("build-finished", _fail_on_checks, priority=900)
    app.config.mathjax_path = "mathjax/tex-chtml.js"
    os.environ.setdefault("MPLBACKEND", "Agg")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
