"""The layering (docs/design.md): each module imports only those above it in the
table, and no package has an import cycle inside it, function-level imports included.

Imports are read with `ast` from every statement anywhere in a module (a function's
`from fdl.x import y` counts as much as a top-level one).
"""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import layers

SRC = pathlib.Path(fdl.__file__).parent

# docs/design.md's table, top to bottom: a module may import only those before it.
ORDER = ["_validate", "random", "modes", "recording", "_samplers", "_tangent", "primitive",
         "hessian", "ops", "_losses", "losses", "check", "layers", "optim", "data", "io",
         "train", "privacy", "parallel", "models", "cli_lm", "cli"]


def _modules() -> dict[str, pathlib.Path]:
    """Every module of the package by dotted name (`fdl.ops.linear`; a package is its
    `__init__`: `fdl.ops`)."""
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The fdl modules that module `name` imports, from every import statement in it."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in MODULES:
                parts.pop()  # `import fdl.ops.linear.x`: the module is fdl.ops.linear
            if parts and ".".join(parts) != name:
                out.add(".".join(parts))
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _top(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


@pytest.mark.float32
def test_every_module_has_its_place_in_the_table():
    assert sorted({_top(m) for m in MODULES} - {""} - set(ORDER)) == []


@pytest.mark.float32
def test_no_module_imports_one_below_it():
    wrong = [f"{name} imports {target}" for name, targets in sorted(GRAPH.items())
             for target in sorted(targets)
             if _top(name) in ORDER and _top(target) in ORDER
             and ORDER.index(_top(target)) > ORDER.index(_top(name))]
    assert wrong == []


@pytest.mark.float32
def test_no_import_cycle_at_any_level():
    assert _cycles(GRAPH) == []


@pytest.mark.float32
def test_the_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    """A planted import inside a function (as checks.py once imported forward.py while
    forward.py imported checks) closes a cycle, and the finder reports it."""
    fake = tmp_path / "forward.py"
    fake.write_text("def f():\n    from fdl.check import registered\n    from . import rows\n"
                    "    return registered, rows\n")
    assert _imports("fdl.check.forward", fake) == {"fdl.check.registered", "fdl.check.rows"}
    assert "fdl.check.forward" in GRAPH["fdl.check.registered"]  # imported at the top
    planted = {name: set(targets) for name, targets in GRAPH.items()}
    planted["fdl.check.forward"] |= _imports("fdl.check.forward", fake)
    assert ["fdl.check.forward", "fdl.check.registered"] in _cycles(planted)


@pytest.mark.float32
def test_the_primitive_contract_imports_no_primitive():
    below = {"fdl.primitive", "fdl._tangent", "fdl._samplers", "fdl.modes", "fdl.recording"}
    assert {t for m in below for t in GRAPH[m]} <= below


@pytest.mark.float32
def test_no_layer_imports_privacy():
    assert [m for m, targets in sorted(GRAPH.items())
            if m.startswith("fdl.layers") and any(t.startswith("fdl.privacy") for t in targets)] == []


@pytest.mark.float32
def test_layers_expose_probes_that_anyone_can_install():
    """Dense reports per-example squared gradient norms through a probe that anyone can
    install (`fdl.layers.base.install_probe`); no layer mentions fdl.privacy."""
    from fdl.layers.base import PROBE, has_probe, install_probe

    dense = layers.Dense(3)
    _, params, state = dense.init(jax.random.key(0), (4,))
    x = jax.random.normal(jax.random.key(1), (5, 4))
    probed = install_probe(params, 5)
    assert has_probe(probed) and not has_probe(params)
    y = dense.apply(params, state, x)[0]
    np.testing.assert_array_equal(dense.apply(probed, state, x)[0], y)

    def total(p):
        return jnp.sum(jnp.sin(dense.apply(p, state, x)[0]))
    norms = jax.grad(total)(probed)[PROBE]
    per_example = jax.vmap(lambda xi: jax.grad(
        lambda p: jnp.sum(jnp.sin(dense.apply(p, state, xi[None])[0])))(params))(x)
    expected = sum(jnp.sum(g.reshape(5, -1) ** 2, axis=1)
                   for g in jax.tree_util.tree_leaves(per_example))
    np.testing.assert_allclose(norms, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="already hold a 'probe' entry"):
        install_probe(probed, 5)
