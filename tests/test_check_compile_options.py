"""The checker's fast compile options skip programs that XLA's lowest optimisation level
would leave as slow convolution loops (`fdl.check.arguments._slow_at_level_0`), and finite
differences of a function with a convolution batch one leaf at a time, so that they make
no such convolution (`fdl.check.fd`)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fdl.check import fd
from fdl.check.arguments import (
    _FAST_COMPILE,
    _MANY_GROUPS,
    _options_for,
    _slow_at_level_0,
)
from fdl.ops import conv2d, relu

NHWC = ("NHWC", "HWIO", "NHWC")


def _text(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


def _conv(pads, groups=1):
    def f(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC,
                                        feature_group_count=groups)
    return f


X, W = jnp.ones((2, 5, 6, 4)), jnp.ones((3, 2, 4, 6))


def test_a_plain_symmetric_2d_convolution_keeps_level_0():
    text = _text(_conv(((1, 1), (0, 0))), X, W)
    assert text.count("stablehlo.convolution(") == 1
    assert not _slow_at_level_0(text)
    assert _options_for(text, _FAST_COMPILE) == _FAST_COMPILE


def test_a_convolution_written_in_a_form_it_cannot_read_counts_as_slow():
    text = _text(_conv(((1, 1), (0, 0))), X, W).replace("pad = [", "padding = [")
    assert "stablehlo.convolution(" in text
    assert _slow_at_level_0(text)


def test_a_program_without_convolutions_keeps_level_0():
    assert not _slow_at_level_0(_text(lambda x: jnp.tanh(x) @ x.T, jnp.ones((3, 3))))


# --------------------------------------------------------------------------- #
# What still keeps the default level, now that finite differences batch one leaf
# at a time (measured fast at level 0: unequal padding, a few groups, batch groups,
# three spatial dimensions)
# --------------------------------------------------------------------------- #


def test_convolutions_measured_fast_at_level_0_keep_it():
    cases = {
        "unequal padding": _text(_conv(((1, 0), (2, 1))), X, W),
        "2 feature groups, unequal padding": _text(_conv(((1, 0), (2, 1)), groups=2), X,
                                                   jnp.ones((3, 2, 2, 6))),
        "batch groups": _text(lambda x, w: lax.conv_general_dilated(
            x, w, (1, 1), ((1, 0), (2, 1)), dimension_numbers=NHWC, batch_group_count=2),
            jnp.ones((4, 5, 6, 3)), jnp.ones((3, 2, 3, 6))),
        "three spatial dimensions": _text(
            lambda x, w: lax.conv_general_dilated(
                x, w, (1, 1, 1), ((1, 0), (0, 1), (1, 1)),
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC")),
            jnp.ones((1, 4, 4, 4, 2)), jnp.ones((2, 2, 2, 2, 3))),
        "input and kernel both vmapped, symmetric padding": _text(
            jax.vmap(_conv(((1, 1), (0, 0)))), jnp.stack([X] * 40), jnp.stack([W] * 40)),
    }
    for name, text in cases.items():
        assert "stablehlo.convolution(" in text, name
        assert not _slow_at_level_0(text), name
        assert _options_for(text, _FAST_COMPILE) == _FAST_COMPILE, name


def test_many_feature_groups_with_unequal_padding_keep_the_default_level():
    rows = _MANY_GROUPS + 1
    text = _text(jax.vmap(_conv(((1, 0), (2, 1)))), jnp.stack([X] * rows),
                 jnp.stack([W] * rows))
    assert f"feature_group_count = {rows}" in text
    assert _slow_at_level_0(text)
    assert "xla_backend_optimization_level" not in _options_for(text, _FAST_COMPILE)
    few = _text(jax.vmap(_conv(((1, 0), (2, 1)))), jnp.stack([X] * _MANY_GROUPS),
                jnp.stack([W] * _MANY_GROUPS))
    assert f"feature_group_count = {_MANY_GROUPS}" in few
    assert not _slow_at_level_0(few)


# --------------------------------------------------------------------------- #
# Finite differences of a function with a convolution: one leaf batched at a time
# --------------------------------------------------------------------------- #


def _fd_case(fun, values, switches=False, batch=None, monkeypatch=None):
    """(evaluated by `fd.evaluate`, evaluated with every leaf batched at once, the
    lowered text of the first)."""
    p = fd.plan(values, 4, 2, jax.random.key(3), True, False, switches)
    if batch is not None:
        p.batch = batch
    inputs = p.inputs()

    def ours(vals, inputs):
        return fd.evaluate(fun, vals, p, inputs)

    def stacked(vals, inputs):  # the former single stacked map, every leaf batched
        monkeypatch.setattr(fd, "_has_convolution", lambda jaxpr: False)
        try:
            return fd.evaluate(fun, vals, p, inputs)
        finally:
            monkeypatch.undo()

    text = jax.jit(ours).lower(values, inputs).as_text()
    before = jax.jit(stacked).lower(values, inputs).as_text()
    # the former map made a feature-group convolution (a group per row): the case differs
    assert max(int(g) for g in re.findall(r"feature_group_count = (\d+)", before)) > 1
    return jax.jit(ours)(values, inputs), jax.jit(stacked)(values, inputs), text, p


def _conv_fun(switches):
    def fun(leaves):
        x, w, b = leaves
        y = conv2d(x, w, b, (2, 1), "SAME", 1)
        if switches:
            y = relu(y)
        return jnp.sum(jnp.sin(y)), jnp.sum(jnp.abs(y))
    return fun


@pytest.mark.x64
@pytest.mark.parametrize("switches", [False, True])
@pytest.mark.parametrize("batch", [None, 7])
def test_fd_of_a_convolution_batches_one_leaf_at_a_time_with_the_same_rows(
        switches, batch, monkeypatch):
    k = jax.random.split(jax.random.key(0), 3)
    values = [jax.random.normal(k[0], (2, 5, 4, 3)), jax.random.normal(k[1], (3, 2, 3, 4)),
              jax.random.normal(k[2], (4,))]
    ours, stacked, text, p = _fd_case(_conv_fun(switches), values, switches, batch,
                                      monkeypatch)
    assert p.kinds == ["directions", "directions", "elements"]
    assert fd._has_convolution(jax.make_jaxpr(_conv_fun(switches))(values).jaxpr)
    # no convolution with groups: the kernel's rows went to the output features
    groups = [int(g) for g in re.findall(r"feature_group_count = (\d+)", text)]
    assert groups and set(groups) == {1}
    assert "batch_group_count = 1" in text and "batch_group_count = 2" not in text
    (y, m), _, _, flips = ours
    (y0, m0), _, _, flips0 = stacked
    rows = p.rows.shape[0] - (1 if switches else 0)
    assert y.shape == y0.shape == (rows,) and m.shape == (rows,)
    np.testing.assert_allclose(y, y0, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(m, m0, rtol=1e-13, atol=1e-13)
    if switches:
        assert flips.shape == (rows,)
        np.testing.assert_array_equal(flips, flips0)
    else:
        assert flips is None and flips0 is None
    for a, b in zip(fd.derivatives(p, ours), fd.derivatives(p, stacked)):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.step, b.step, rtol=0, atol=0)


@pytest.mark.x64
def test_fd_of_a_function_without_convolution_keeps_the_single_stacked_map(monkeypatch):
    traced = []

    def fun(leaves):
        traced.append(1)
        x, w = leaves
        return jnp.sum(jnp.tanh(x @ w)), jnp.sum(jnp.abs(x @ w))

    values = [jnp.arange(6.0).reshape(2, 3) / 7, jnp.ones((3, 2)) / 3]
    p = fd.plan(values, 4, 2, None, True, False)
    assert p.kinds == ["directions", "directions"]
    out = jax.jit(lambda v, i: fd.evaluate(fun, v, p, i))(values, p.inputs())
    assert len(traced) == 1  # one trace: the stacked map, inlined
    (y, _), _, _, _ = out
    first = values[0] + out[1][0][0, 0] * out[2][0][0]  # row 0: leaf 0, direction 0, +h_0
    np.testing.assert_allclose(y[0], jnp.sum(jnp.tanh(first @ values[1])), rtol=1e-13)


def test_has_convolution_looks_inside_custom_rules_and_inner_jits():
    x, w, b = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), jnp.zeros(2)
    inner = jax.jit(lambda x: conv2d(x, w, b, 1, "SAME", 1))
    assert fd._has_convolution(jax.make_jaxpr(lambda x: jnp.sum(inner(x)))(x).jaxpr)
    assert fd._has_convolution(jax.make_jaxpr(
        lambda x: conv2d(x, w, b, 1, "SAME", 1))(x).jaxpr)
    assert not fd._has_convolution(jax.make_jaxpr(lambda x: jnp.sum(jnp.tanh(x)))(x).jaxpr)


def test_compile_program_reads_only_the_text_it_needs(monkeypatch):
    """`compile_program` keys its executables on the program's bytecode, and reads the
    StableHLO text (for `_options_for`) only where the bytecode holds the word
    "convolution" (an op's name; also a source location's, so this test's name avoids
    it): a slow convolution still drops level 0, the same computation compiles once,
    and a program without one keeps the fast options without its text."""
    import collections

    from fdl.check import arguments

    texts = []

    def recorded(text, opts):
        texts.append(text)
        return _options_for(text, opts)

    monkeypatch.setattr(arguments, "_options_for", recorded)
    monkeypatch.setattr(arguments, "_PROGRAMS", collections.OrderedDict())
    rows = _MANY_GROUPS + 1
    slow, xs, ws = jax.vmap(_conv(((1, 0), (2, 1)))), jnp.stack([X] * rows), jnp.stack([W] * rows)
    first = arguments.compile_program(slow, xs, ws)
    assert len(texts) == 1 and f"feature_group_count = {rows}" in texts[0]
    assert "xla_backend_optimization_level" not in dict(next(iter(arguments._PROGRAMS))[3])
    assert arguments.compile_program(slow, xs, ws) is first
    assert len(arguments._PROGRAMS) == 1
    arguments.compile_program(lambda x: jnp.tanh(x) @ x.T, jnp.ones((3, 3)))
    assert len(texts) == 2  # the second call of `slow`; none for the plain program
    assert dict(next(reversed(arguments._PROGRAMS))[3]) == _FAST_COMPILE


@pytest.mark.x64
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("switches", [False, True])
def test_element_stencils_formed_on_the_host_are_the_programs_bit_for_bit(dtype, switches):
    """With one `vmap`, an "elements" leaf's stencil points and steps come from the host
    (`fd._host_points`, no XLA operations to compile for them): the same values, rows
    and derivatives, bit for bit, as forming them in the program, and the program
    holds none of the one-hot's operations."""
    values = [jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)), dtype),
              jnp.asarray(np.random.default_rng(1).standard_normal((40,)), dtype)]

    def fun(leaves):
        y = relu(leaves[0]) if switches else jnp.sin(leaves[0])
        return jnp.sum(y * leaves[1][:12].reshape(3, 4)), jnp.sum(jnp.abs(y))

    p = fd.plan(values, 12, 2, jax.random.key(3), True, False, switches)
    assert p.kinds == ["elements", "directions"] and p.batch is None
    assert p.points[0].shape == (12 * 2 * p.levels[0], 3, 4) and p.points[1] is None
    host = jax.jit(lambda v, i: fd.evaluate(fun, v, p, i))
    in_program = fd.Plan(**{**vars(p), "steps": [], "points": []})  # forms its own
    program = jax.jit(lambda v, i: fd.evaluate(fun, v, in_program, i))
    a, b = host(values, p.inputs()), program(values, in_program.inputs())
    assert a[1][0] is None and b[1][0] is not None  # the steps: on the host, in the program
    np.testing.assert_array_equal(np.asarray(b[1][0]), p.steps[0])
    np.testing.assert_array_equal(np.asarray(a[1][1]), np.asarray(b[1][1]))
    for x, y in zip(jax.tree_util.tree_leaves((a[0], a[2], a[3])),
                    jax.tree_util.tree_leaves((b[0], b[2], b[3])), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for d, e in zip(fd.derivatives(p, a), fd.derivatives(in_program, b)):
        for field in ("value", "error", "step"):
            np.testing.assert_array_equal(getattr(d, field), getattr(e, field))
    assert "iota" not in host.lower(values, p.inputs()).as_text()
    assert "iota" in program.lower(values, in_program.inputs()).as_text()
