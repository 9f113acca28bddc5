"""Sphinx configuration of fdl's documentation site.

Build (offline; warnings are errors; a failed primitive check fails the build):

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

The reference pages (primitives, optimizers, API) are generated at build time by
the extension in `_ext/fdl_docs` from `fdl.registry()`, `fdl.optim` and the
docstrings; nothing in them is copied by hand.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "fdl"
author = "the fdl authors"
copyright = "the fdl authors"
release = version = __import__("importlib.metadata").metadata.version("fdl")

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "fdl_docs.extension",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "design.md", "**/.ipynb_checkpoints", "README.md"]

# MyST: $…$ and $$…$$ maths, ::: fences, heading anchors for in-page links
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# A broken cross-reference is an error (-W). References to other projects' types
# (jax.Array, numpy, typing) cannot resolve offline (no intersphinx inventories).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jnp|np|numpy|typing|collections|chex|abc|contextlib|argparse|"
               r"concurrent|pathlib|os|enum|dataclasses|types|functools|builtins)(\..*)?"),
    (r"py:.*", r"(Any|Callable|Sequence|Mapping|Iterator|Iterable|Literal|Optional|Union|"
               r"NamedTuple|TypeVar|Self|PyTree|Array|ArrayLike|DTypeLike|Path|"
               r"ndarray|dtype|Generator|float|int|str|bool|None|tuple|list|dict|object|type)"),
    # fdl's type aliases (of Any or of tuples; named in signatures, not documented objects)
    (r"py:class", r"(Params|Updates|OptState|Shape|ScalarOrSchedule|Padding|Schedule|Mask|"
                  r"Sampler|Recorder|PRNGKey|Batch)"),
    # Sphinx splits the annotation `list[dict[str, float]]` of a dataclass field at the comma
    (r"py:class", r"list\[dict\[str"),
]

autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}

html_theme = "furo"
html_title = f"fdl {release}"
html_static_path = []
html_show_sourcelink = False
# no external fonts, scripts or analytics: everything is served from _static
html_theme_options = {"navigation_with_keys": True}

# MathJax 3 from the sphinx-mathjax-offline package (fdl_docs copies it into _static)
mathjax_path = "mathjax/tex-chtml.js"
mathjax3_config = {"tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]}}
