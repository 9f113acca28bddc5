"""`fdl check` (the command) through `fdl.cli.main`: streamed rows with a count, the
dtype flag, the exit codes. float32 runs in JAX's default configuration."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from fdl import cli
from fdl.check import examples
from fdl.check.registered import draw
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
                         r"differences; tangent \S+; adjoint gap \S+\)$", r) for r in rows)
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
def test_examples_vjp_only_one_report_per_example():
    results = examples(registry()["conv2d"], dtype="float32", checks=("vjp",))
    assert len(results) == len(registry()["conv2d"].examples)
    assert all(r.vjp.passed and "[float32; finite differences in float32]" in r.vjp.title
               for r in results)
    assert all(r.jvp is None and r.adjoint is None for r in results)


def test_examples_rejects_an_unknown_check():
    with pytest.raises(ValueError, match=r"check.examples: checks must be a non-empty "
                       r"selection of \('vjp', 'jvp', 'adjoint'\), got \('hessian',\)"):
        examples(registry()["tanh"], checks=("hessian",))


# --------------------------------------------------------------------------- #
# examples: the three checks of a primitive in one compiled program
# --------------------------------------------------------------------------- #


def _square(x):
    """`y = x²`: `dy = 2x·dx`, `∂L/∂x = 2x·g`."""
    return x * x


def _square_prim(backward_factor=2.0, tangent_factor=2.0):
    return primitive(_square, lambda x, g: (backward_factor * x * g,), save=lambda x, y: x,
                     tangent=lambda x, t: tangent_factor * x * t[0], register=False,
                     examples=registry()["tanh"].examples)


def _count_compiles(fn):
    """`fn()` and the number of XLA compilations it ran."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        return fn(), len(compiles)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.float32
@pytest.mark.parametrize("name", ["conv2d", "lstm_cell", "dropout"])
def test_examples_compiles_one_program_per_primitive(name):
    p = registry()[name]
    draw(p, "float32", 3)  # jnp.asarray of a drawn array compiles a copy once per shape
    results, n = _count_compiles(lambda: examples(p, dtype="float32", seed=3))
    assert n == 1
    assert len(results) == len(p.examples)
    for vjp_report, jvp_report, adjoint_report in results:
        assert vjp_report.passed and jvp_report.passed and adjoint_report.passed
        assert vjp_report.rows and jvp_report.rows and len(adjoint_report.rows) == 1


@pytest.mark.x64
@pytest.mark.parametrize("name", ["linear", "layer_norm", "softmax_cross_entropy"])
def test_examples_agrees_with_the_separate_checks(name):
    """The fused program gives the vjp and jvp rows that the vjp-only and the
    forward-only selections give on their own (same draws, same references); with the
    vjp check in it, the tangent rule is compared with autodiff only (its finite
    differences come with the forward-only selection)."""
    p = registry()[name]
    fused = examples(p, dtype="float64")
    alone = [r.vjp for r in examples(p, dtype="float64", checks=("vjp",))]
    forward = [(r.jvp, r.adjoint) for r in examples(p, dtype="float64",
                                                    checks=("jvp", "adjoint"))]
    for (v, t, a), v1, (t1, _) in zip(fused, alone, forward):
        assert a.passed and a.title.startswith(f"fdl.check.adjoint: {name}")
        assert {r.against for r in t.rows} == {"autodiff"}
        assert {r.against for r in t1.rows} == {"autodiff", "finite differences"}
        t1 = type(t1)(t1.title, [r for r in t1.rows if r.against == "autodiff"])
        for mine, theirs in ((v, v1), (t, t1)):
            assert mine.title == theirs.title
            assert [r.name for r in mine.rows] == [r.name for r in theirs.rows]
            for r, s in zip(mine.rows, theirs.rows):
                assert r.passed and s.passed and r.shape == s.shape
                # the same rounding-level error, up to the row's own tolerance
                assert abs(r.max_abs - s.max_abs) <= r.atol + r.rtol * abs(r.reference)
                if r.index == s.index:
                    np.testing.assert_allclose(r.reference, s.reference, rtol=1e-9)


@pytest.mark.float32
def test_examples_catches_a_wrong_backward_and_a_wrong_tangent():
    right = examples(_square_prim(), dtype="float32")
    assert all(v.passed and t.passed and a.passed for v, t, a in right)
    wrong_backward = examples(_square_prim(backward_factor=1.0), dtype="float32")
    assert all(not v.passed and t.passed and not a.passed for v, t, a in wrong_backward)
    wrong_tangent = examples(_square_prim(tangent_factor=3.0), dtype="float32")
    assert all(v.passed and not t.passed and not a.passed for v, t, a in wrong_tangent)


@pytest.mark.float32
def test_examples_without_a_tangent_rule_checks_reverse_mode_only():
    p = primitive(_square, lambda x, g: (2 * x * g,), save=lambda x, y: x, register=False,
                  examples=registry()["tanh"].examples)
    results = examples(p, dtype="float32")
    assert [(t, a) for _, t, a in results] == [(None, None)] * len(p.examples)
    assert all(v.passed for v, _, _ in results)


@pytest.mark.float32
def test_check_cli_reports_a_wrong_tangent_rule(capsys, monkeypatch):
    monkeypatch.setattr("fdl.primitive.registry",
                        lambda: {"square": _square_prim(tangent_factor=3.0)})
    code, out, _ = _run(capsys, "--dtype", "float32")
    assert code == 1
    n = len(registry()["tanh"].examples)
    assert re.search(rf"\[1/{n}\] square +0  FAIL \(max rel err \S+ vs autodiff", out)
    assert "fdl.check.jvp: _square" in out and "fdl.check.adjoint: _square" in out
    assert out.rstrip().endswith(f"1 primitives, {n} examples, float32: {n} FAILED")


_PLANTED = '''
import sys
from fdl import cli
from fdl.primitive import primitive, registry

def square(x):
    return x * x

primitive(square, lambda x, g: (x * g,), save=lambda x, y: x,  # forgets the 2
          tangent=lambda x, t: 2 * x * t[0], examples=registry()["tanh"].examples)
print("processes", cli._check_processes(4), file=sys.stderr)
sys.exit(cli.main(["check", "--dtype", "float32", "relu", "sigmoid", "square", "tanh"]))
'''


@pytest.mark.float32
def test_check_in_worker_processes_equals_threads_and_fails_a_planted_bug(
        capsys, monkeypatch, tmp_path):
    """A fresh process (JAX has started no backend) checks in forked worker processes,
    one per core: the same rows in the same order as the threads of a process that
    cannot fork, and a wrong backward still fails."""
    import os
    import subprocess
    import sys

    script = tmp_path / "planted.py"
    script.write_text(_PLANTED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stderr
    processes = int(re.search(r"processes (\d+)", done.stderr).group(1))
    assert processes == min(len(os.sched_getaffinity(0)), 4, 8) or (
        processes == 0 and len(os.sched_getaffinity(0)) < 2)
    assert re.search(r"\[\s*\d+/12\] square +0  FAIL", done.stdout)
    assert done.stdout.rstrip().endswith("4 primitives, 12 examples, float32: 3 FAILED")

    real = registry()
    wrong = primitive(_square, lambda x, g: (x * g,), save=lambda x, y: x,
                      tangent=lambda x, t: 2 * x * t[0], register=False, name="square",
                      examples=real["tanh"].examples)
    monkeypatch.setattr("fdl.primitive.registry", lambda: {
        "relu": real["relu"], "sigmoid": real["sigmoid"], "square": wrong,
        "tanh": real["tanh"]})
    jax.devices()  # a backend started: this process cannot fork, and uses threads
    assert cli._check_processes(4) == 0
    code, out, _ = _run(capsys, "--dtype", "float32", "relu", "sigmoid", "square", "tanh")
    assert code == 1
    assert out == done.stdout
