"""Kink-aware finite differences, checks that compare nothing, and the package layout.

* Non-smooth primitives declare switches (`switches=`); the finite differences refuse
  a step that changes any of them, go down to the dtype's limit, and call a direction
  no step reaches "not differentiable within reach" — not a failure while manual and
  autodiff agree, still one when they do not.
* A check with no hand-written rule in it (a plain function) says "compared nothing"
  and does not pass.
* `fdl.check` has no import cycle at any level, and one public examples runner.
"""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check, ops
from fdl.check import fd
from fdl.check.rows import NOTHING
from fdl.primitive import primitive, registry

pytestmark = pytest.mark.float32

NOT_WITHIN_REACH = "not differentiable within reach"


def _f32(*values):
    return jnp.asarray(np.asarray(values, np.float32))


# --------------------------------------------------------------------------- #
# The switches each non-smooth primitive declares
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu", "max_pool2d", "huber"])
def test_non_smooth_primitives_declare_switches(name):
    assert registry()[name].switches is not None


@pytest.mark.parametrize("name", ["tanh", "gelu", "linear", "softmax_cross_entropy", "conv2d",
                                  "avg_pool2d", "layer_norm", "lstm_cell"])
def test_smooth_primitives_declare_none(name):
    assert registry()[name].switches is None


def test_switch_values():
    x = _f32(-1.0, 0.0, 2.0)
    np.testing.assert_array_equal(registry()["relu"].switches(x), [False, False, True])
    np.testing.assert_array_equal(registry()["elu"].switches(x, 1.0), [False, False, True])
    np.testing.assert_array_equal(registry()["huber"].switches(x, jnp.zeros(3), 1.5, "mean"),
                                  [True, True, False])
    image = jnp.asarray(np.array([[1, 5], [7, 3]], np.float32)).reshape(1, 2, 2, 1)
    pool = registry()["max_pool2d"]
    assert pool.switches(*pool.bind(image, 2)).ravel().tolist() == [2]  # the 7, at (1, 0)


# --------------------------------------------------------------------------- #
# Finite differences that do not step across a kink
# --------------------------------------------------------------------------- #


def _fd_row(report):
    (row,) = [r for r in report.rows if r.against == "finite differences"]
    return row


def test_relu_at_and_near_its_kink():
    """x = 0 is a kink (no step reaches it: noted, not failed); x = 0.01 is within the
    largest steps (they are refused, a smaller one is used); x = 1 is far from it."""
    report = check.vjp(ops.relu, _f32(0.0, 0.01, 1.0, -0.5)).raise_if_failed()
    row = _fd_row(report)
    assert row.passed and row.problem == ""
    assert row.note == ("the steps avoid switching points along 1 of 4 elements (up to 1 each); "
                        f"{NOT_WITHIN_REACH} at 1 of 4 elements (flat [0]): up to 1 switching "
                        "point crossed at this point")
    assert f"note: x vs finite differences: {row.note}" in str(report)


def test_a_relu_composition_checks_its_directions_around_kinks():
    """`check.vjp` of a function: the recorder sees relu inside it; along each
    direction the steps avoid the kinks that the largest step crosses."""
    x = _f32(*np.linspace(-1, 1, 300))  # > 256 elements: checked along 4 directions

    def f(x):
        return jnp.sum(ops.relu(x) ** 2)

    report = check.vjp(f, x, key=jax.random.key(0)).raise_if_failed()
    row = _fd_row(report)
    assert row.name == "x (gradient and 3 random directions)"
    assert row.note.startswith("the steps avoid ")
    avoided = [int(a) for a in row.note.split("avoid ")[1].split(" switching")[0].split(", ")]
    # along the gradient 2·relu(x) no element leaves (0, ∞); random directions cross kinks
    assert len(avoided) == 4 and avoided[0] == 0 and min(avoided[1:]) > 0


def test_grad_of_a_user_function_with_relu_passes_at_a_kink():
    w = _f32(0.5, -2.0)

    def f(w):  # ReLU(0·w₀ + …): the first pre-activation is exactly 0
        return jnp.sum(ops.relu(jnp.asarray([[0.0, 0.0], [1.0, 1.0]], jnp.float32) @ w))

    def my_grad(w):
        return jnp.asarray([1.0, 1.0], jnp.float32) * (w[0] + w[1] > 0)

    report = check.grad(f, my_grad, w).raise_if_failed()
    assert NOT_WITHIN_REACH not in _fd_row(report).note  # 0·w never moves: no flip


def test_a_wrong_rule_at_a_kink_still_fails():
    def relu(x):
        """`y = max(x, 0)`: the rule below is 1% too large."""
        return jnp.maximum(x, 0)

    wrong = primitive(relu, lambda x, g: (1.01 * g * (x > 0),), save=lambda x, y: x,
                      switches=lambda x: x > 0, register=False)
    report = check.vjp(wrong, _f32(0.0, 0.0, 0.0, 1.0))
    assert not report.passed
    assert [r.against for r in report.failures] == ["autodiff", "finite differences"]
    assert _fd_row(report).index == (3,)  # the one element a step reaches
    only_at_kinks = check.vjp(wrong, _f32(0.0, 0.0))  # every element unreachable
    assert {r.against for r in only_at_kinks.failures} == {"autodiff", "finite differences"}
    assert _fd_row(only_at_kinks).problem == "manual and autodiff disagree"


def test_without_switches_the_ladder_is_not_extended():
    """A smooth function: no centre row, five rungs, the same program as before."""
    x = _f32(0.1, 0.2, 0.3)
    seen = fd.probe(lambda v: jnp.sum(ops.tanh(v)), x)
    assert (seen.calls, seen.switches, seen.hidden) == (1, 0, 0)
    plan = fd.plan([x], 256, 4, None, True, gradient=True, switches=False)
    assert plan.rows.shape == (3 * 2 * fd.LEVELS, 3) and plan.levels == [fd.LEVELS]
    kinked = fd.plan([x], 256, 4, None, True, gradient=True, switches=True)
    assert kinked.levels == [9]  # float32: down to 2·ε^{1/2}
    assert kinked.rows.shape == (1 + 3 * 2 * 9, 3) and kinked.rows[0].tolist() == [-1, 0, 0]


def test_switches_inside_a_loop_are_counted_as_out_of_reach():
    def f(x):
        return jax.lax.scan(lambda c, _: (ops.relu(c) - 0.5, None), x, None, length=2)[0]

    seen = fd.probe(f, _f32(1.0, -1.0))
    assert (seen.calls, seen.switches, seen.hidden) == (1, 0, 1)


def test_a_relu_cnn_in_float32_passes_where_the_steps_cross_kinks():
    from fdl import layers as L, losses

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, 4))
    model = L.serial(L.Conv2D(4, 3), L.Relu(), L.MaxPool2D(2), L.Flatten(), L.Dense(5))
    _, params, state = model.init(jax.random.key(1), (8, 8, 1))
    report = check.model(lambda p: losses.softmax_cross_entropy(
        model.apply(p, state, x)[0], y), params).raise_if_failed()
    notes = [r.note for r in report.rows if r.note]
    assert notes and all("switching point" in n for n in notes)
    assert all(r.note == "" for r in report.rows if "dense" in r.name)  # after the kinks


# --------------------------------------------------------------------------- #
# Checks that compare nothing
# --------------------------------------------------------------------------- #


def _plain(x):
    return jnp.sum(jnp.tanh(x) ** 2)


def _assert_nothing(report):
    assert not report.passed and not bool(report)
    assert report.problem.startswith(NOTHING)
    assert f"FAILED: {NOTHING}" in str(report)


def test_vjp_jvp_hvp_and_model_of_a_plain_function_compare_nothing():
    x = _f32(0.1, -0.4, 0.7)
    _assert_nothing(check.vjp(_plain, x))
    _assert_nothing(check.jvp(_plain, x))
    _assert_nothing(check.hvp(_plain, x))
    _assert_nothing(check.model(lambda p, t: _plain(p["w"] - t), {"w": x}, x))
    with pytest.raises(check.CheckFailed, match="compared nothing"):
        check.vjp(_plain, x).raise_if_failed()


def test_autodiff_given_as_the_derivation_compares_nothing():
    x = _f32(0.1, -0.4, 0.7)
    report = check.grad(_plain, jax.grad(_plain), x)
    _assert_nothing(report)
    assert "the derivation under test is autodiff's own computation" in report.problem
    _assert_nothing(check.jacobian(jnp.tanh, jax.jacfwd(jnp.tanh), x))


def test_a_hand_derivation_of_a_plain_function_is_compared():
    x = _f32(0.1, -0.4, 0.7)
    check.grad(_plain, lambda x: 2 * jnp.tanh(x) * (1 - jnp.tanh(x) ** 2), x).raise_if_failed()


def test_a_rule_inside_a_cached_inner_jit_is_seen():
    inner = jax.jit(lambda x: ops.tanh(x))
    x = _f32(0.1, -0.4, 0.7)
    inner(x)  # cached: the recorder does not see the call again, the jaxprs differ
    report = check.vjp(lambda x: jnp.sum(inner(x)), x)
    assert report.passed and report.problem == ""


# --------------------------------------------------------------------------- #
# The package: no import cycle at any level, one examples runner
# --------------------------------------------------------------------------- #


def _imports(path: pathlib.Path) -> set[str]:
    """Every `fdl.check.*` module `path` imports, at any level (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "fdl.check":
                found |= {f"fdl.check.{a.name}" for a in node.names}
            elif node.module.startswith("fdl.check."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fdl.check.")}
    return found


def test_no_import_cycle_inside_fdl_check():
    root = pathlib.Path(fdl.check.__file__).parent
    modules = {f"fdl.check.{p.stem}": p for p in root.glob("*.py") if p.stem != "__init__"}
    graph = {m: _imports(p) & set(modules) for m, p in modules.items()}
    assert graph["fdl.check.report"] == set()
    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, f"import cycle: {' -> '.join(path + (m,))}"
        if m not in done:
            for n in sorted(graph[m]):
                visit(n, path + (m,))
            done.add(m)

    for m in sorted(graph):
        visit(m, ())
    assert "fdl.check.registered" not in set().union(*(graph[m] for m in graph))


def test_one_public_examples_runner():
    assert "examples" in check.__all__
    for old in ("all_examples", "forward_examples", "checks"):
        assert not hasattr(check, old), old
    result = check.examples(registry()["tanh"], dtype="float32", checks=("vjp", "adjoint"))
    assert [(r.vjp.passed, r.jvp, r.adjoint.passed) for r in result] == \
        [(True, None, True)] * len(registry()["tanh"].examples)


def test_steps_that_leave_the_domain_are_noted_not_failed():
    """log at 1e-3 in float32: every step of the ladder (≥ 0.005) leaves p > 0, so that
    element is not judged against finite differences; the rule still is vs autodiff."""
    def log(p):
        """`y = log p`: `∂L/∂p = g / p`."""
        return jnp.log(p)

    right = primitive(log, lambda p, g: (g / p,), save=lambda p, y: p, register=False)
    report = check.vjp(right, _f32(1e-3, 0.5)).raise_if_failed()
    assert _fd_row(report).note == ("the steps leave the function's domain (a non-finite "
                                    "value) along 1 of 2 elements (flat [0])")
    wrong = primitive(log, lambda p, g: (1.01 * g / p,), save=lambda p, y: p, register=False)
    assert [r.against for r in check.vjp(wrong, _f32(1e-3, 0.5)).failures] == [
        "autodiff", "finite differences"]  # the reachable element 0.5 fails too
