"""CONTRIBUTING.md is tested: its python blocks run in order, exactly as written, and the
primitive it adds passes `fdl.check` while the same primitive with a planted wrong rule
fails it.

The blocks register a primitive (`hard_tanh`) and an optimizer (`yogi`); the registries
are restored afterwards, so the rest of the suite sees fdl as it ships.
"""

from __future__ import annotations

import pathlib
import re

import jax.numpy as jnp
import pytest

import fdl
from fdl import check
from fdl.optim import registry as optim_registry
from fdl.primitive import primitive

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """`(line, code)` of every ```python block, in order."""
    return [(text[:m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M)]


@pytest.fixture(scope="module")
def guide() -> dict:
    """The namespace the guide's blocks leave behind, the registries restored after."""
    primitives = fdl.primitive._REGISTRY
    saved_primitives, saved_optimizers = dict(primitives), dict(optim_registry.OPTIMIZERS)
    namespace: dict = {"__name__": "contributing"}
    try:
        for line, code in python_blocks(GUIDE.read_text(encoding="utf-8")):
            exec(compile(code, f"{GUIDE}:{line}", "exec"), namespace)  # noqa: S102
        namespace["_registered"] = ("hard_tanh" in primitives,
                                    "yogi" in optim_registry.OPTIMIZERS)
        yield namespace
    finally:
        primitives.clear()
        primitives.update(saved_primitives)
        optim_registry.OPTIMIZERS.clear()
        optim_registry.OPTIMIZERS.update(saved_optimizers)


@pytest.mark.float32
def test_the_guide_has_its_blocks():
    lines = [line for line, _ in python_blocks(GUIDE.read_text(encoding="utf-8"))]
    assert len(lines) == 6


@pytest.mark.float32
def test_the_blocks_run_as_written_and_register_one_primitive_and_one_optimizer(guide):
    assert guide["_registered"] == (True, True)
    assert isinstance(guide["hard_tanh"], fdl.primitive.Primitive)
    assert guide["hard_tanh"].switches is not None and guide["hard_tanh"].tangent is not None


def _variant(guide: dict, *, backward=None, tangent=None):
    """The guide's hard tanh with one rule replaced (not registered)."""
    p = guide["hard_tanh"]
    return primitive(p.forward, backward or p.backward, save=p.save,
                     tangent=tangent or p.tangent, switches=p.switches, spec=p.spec,
                     examples=p.examples, name="hard_tanh", register=False)


def _passed(p, dtype) -> dict[str, bool]:
    results = check.examples(p, dtype=dtype)
    return {kind: all(getattr(c, kind).passed for c in results)
            for kind in ("vjp", "jvp", "adjoint")}


@pytest.mark.x64
def test_fdl_check_passes_the_guides_primitive_in_float64(guide):
    assert _passed(guide["hard_tanh"], jnp.float64) == {"vjp": True, "jvp": True,
                                                        "adjoint": True}


@pytest.mark.x64
def test_fdl_check_fails_the_guides_primitive_with_a_planted_wrong_rule(guide):
    rule = guide["_hard_tanh_backward"]
    wrong_backward = _variant(guide, backward=lambda x, g: (1.01 * rule(x, g)[0],))
    assert _passed(wrong_backward, jnp.float64) == {"vjp": False, "jvp": True,
                                                    "adjoint": False}
    tangent = guide["_hard_tanh_tangent"]
    wrong_tangent = _variant(guide, tangent=lambda x, t: -tangent(x, t))
    assert _passed(wrong_tangent, jnp.float64) == {"vjp": True, "jvp": False,
                                                   "adjoint": False}


@pytest.mark.float32
def test_the_primitive_template_in_primitive_py_is_correct_too():
    """The contract's own template (the module docstring of fdl/primitive.py) runs and
    passes fdl.check."""
    doc = fdl.primitive.__doc__
    start = doc.index("    import jax\n")
    end = doc.index("\n1. **Forward**")
    code = "\n".join(line[4:] for line in doc[start:end].splitlines())
    saved = dict(fdl.primitive._REGISTRY)
    namespace: dict = {}
    try:
        exec(compile(code, "fdl/primitive.py docstring", "exec"), namespace)  # noqa: S102
    finally:
        fdl.primitive._REGISTRY.clear()
        fdl.primitive._REGISTRY.update(saved)
    assert _passed(namespace["scale"], jnp.float32) == {"vjp": True, "jvp": True,
                                                       "adjoint": True}
    with pytest.raises(ValueError, match=r"scale: w must have shape \(3,\) \(d\) for x "
                                         r"\(4, 3\), got \(2,\)"):
        namespace["scale"](jnp.ones((4, 3)), jnp.ones(2))
