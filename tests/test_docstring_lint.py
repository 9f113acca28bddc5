"""House rules read from the source: one docstring markup, no history in docstrings,
no deprecation shims (fdl has no released users to shim for)."""

from __future__ import annotations

import pathlib
import re

import pytest

import fdl

_HOUSE = ["_validate.py", "_samplers.py", "_tangent.py", "modes.py", "recording.py",
          "hessian.py", "primitive.py", "losses.py", "privacy.py", "random.py",
          "__init__.py", "ops", "layers"]


def _house_files():
    src = pathlib.Path(fdl.__file__).parent
    for name in _HOUSE:
        path = src / name
        yield from (sorted(path.glob("*.py")) if path.is_dir() else [path])


@pytest.mark.float32
def test_house_docstrings_use_one_markup_and_carry_no_history():
    roles = re.compile(r":(func|class|mod|data|meth|attr):`|``")
    history = re.compile(r"\d×\s*(faster|slower|longer)|\b(faster|slower) than before|"
                         r"\bran \d|\d+(\.\d+)?% (faster|slower)")
    found = [f"{p.name}:{i}" for p in _house_files()
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if roles.search(line) or history.search(line)]
    assert found == []


@pytest.mark.float32
def test_no_deprecation_shims_in_src():
    src = pathlib.Path(fdl.__file__).parent
    shims = re.compile(r"DeprecationWarning|is deprecated")
    found = [f"{p.relative_to(src)}:{i}" for p in sorted(src.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if shims.search(line)]
    assert found == []
