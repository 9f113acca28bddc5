"""`fdl check` (the command) through `fdl.cli.main`: streamed rows with a count, the
dtype flag, the exit codes. float32 runs in JAX's default configuration."""

from __future__ import annotations

import re

import jax
import pytest

from fdl import cli
from fdl.check import examples
from fdl.primitive import primitive, registry


def _run(capsys, *argv):
    code = cli.main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.float32
def test_check_streams_counted_rows_in_float32(capsys):
    code, out, err = _run(capsys, "--dtype", "float32", "linear", "tanh", "softmax_cross_entropy")
    assert code == 0 and err == ""
    n = sum(len(registry()[k].examples) for k in ("linear", "tanh", "softmax_cross_entropy"))
    lines = out.splitlines()
    assert lines[0] == (f"fdl check: 3 primitives, {n} examples, float32 "
                        "(finite differences in float32)")
    rows = [line for line in lines if line.startswith("[")]
    assert len(rows) == n
    assert [int(re.match(r"\[\s*(\d+)/", r).group(1)) for r in rows] == list(range(1, n + 1))
    assert all(re.search(rf"/{n}\] \w+ +\d  ok   \(max rel err \S+ vs autodiff, \S+ vs finite "
                         r"differences; tangent \S+, \S+; adjoint gap \S+\)$", r) for r in rows)
    assert rows[0].split()[2] == "linear"
    assert lines[-1] == f"3 primitives, {n} examples, float32: all passed"
    assert not jax.config.jax_enable_x64  # the run did not switch x64 on for the process


@pytest.mark.float32
def test_check_float64_flag(capsys):
    code, out, _ = _run(capsys, "--dtype", "float64", "relu")
    assert code == 0 and "float64: all passed" in out
    assert "e-1" in out.splitlines()[1]  # float64 errors are around 1e-16 … 1e-10
    assert not jax.config.jax_enable_x64


@pytest.mark.float32
def test_check_unknown_primitive_and_dtype_are_usage_errors(capsys):
    code, _, err = _run(capsys, "no_such_primitive")
    assert code == 2 and "unknown primitive(s) ['no_such_primitive']" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["check", "--dtype", "int8"])
    assert info.value.code == 2


@pytest.mark.float32
def test_check_fails_with_exit_1_and_the_report(capsys, monkeypatch):
    def square(x):
        """`y = x²`: `∂L/∂x = 2x·g` (the rule below forgets the 2)."""
        return x * x

    wrong = primitive(square, lambda x, g: (x * g,), save=lambda x, y: x, register=False,
                      examples=registry()["tanh"].examples[:1])
    monkeypatch.setattr("fdl.primitive.registry", lambda: {"square": wrong})
    code, out, _ = _run(capsys, "--dtype", "float32")
    assert code == 1
    assert re.search(r"\[1/1\] square +0  FAIL", out)
    assert "x vs autodiff FAILED" in out and "hint: the value is 0.5 × the reference" in out
    assert out.rstrip().endswith("1 primitives, 1 examples, float32: 1 FAILED")


@pytest.mark.float32
def test_examples_one_report_per_example():
    reports = examples(registry()["conv2d"], dtype="float32")
    assert len(reports) == len(registry()["conv2d"].examples)
    assert all(r.passed and "[float32; finite differences in float32]" in r.title
               for r in reports)
