"""README.md is tested: every ```python block runs as written and prints what it claims,
and the command-line block pastes in order (each line parsed, its checkpoint checked).

Each block runs alone, in a fresh interpreter, in an empty directory, with no
``JAX_*`` settings: the user's default configuration (float32 unless the snippet
itself turns x64 on). So a block must be self-contained, imports included.

It must not use a deprecated name (no ``DeprecationWarning``).

A claim is a ``print(...)`` whose line ends in a ``# <number>`` comment: the line the
block prints there must be that number. README figures are the results of runs, and
another CPU, JAX version or random generator moves the last digits, so a printed
number holds its claim within 1% relative (for the digits accuracy, ±0.0098 is
three or four of the 359 held-out digits).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fdl import cli

from conftest import ROOT, run_python

README = ROOT / "README.md"
CLAIM = re.compile(r"^\s*print\(.*\)\s*#\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")
CLAIM_RTOL = 0.01


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Each ```python block of ``text`` as (its first code line's number, its code)."""
    blocks, code, start = [], None, 0
    for n, line in enumerate(text.splitlines(), start=1):
        if code is None and line.strip() == "```python":
            code, start = [], n + 1
        elif code is not None and line.strip() == "```":
            blocks.append((start, "\n".join(code) + "\n"))
            code = None
        elif code is not None:
            code.append(line)
    assert code is None, f"README.md: the ```python block at line {start} is never closed"
    return blocks


def claims(code: str) -> list[float]:
    """The numbers claimed by ``print(...)  # <number>`` lines, in order."""
    return [float(m.group(1)) for line in code.splitlines() if (m := CLAIM.match(line))]


def printed_numbers(stdout: str) -> list[float]:
    """The lines of ``stdout`` that are a number, in order."""
    numbers = []
    for line in stdout.splitlines():
        try:
            numbers.append(float(line))
        except ValueError:
            pass
    return numbers


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_the_parser_finds_claims():
    assert len(BLOCKS) >= 4
    assert python_blocks("a\n```python\nx = 1\n```\n```bash\nls\n```\n") == [(3, "x = 1\n")]
    assert claims("print(acc)               # 0.9805\nprint(t)  # a table\n") == [0.9805]
    assert printed_numbers("loss 1.0\n0.9805\n2e-3\n") == [0.9805, 0.002]


@pytest.mark.float32
@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_readme_block_runs_as_written_and_prints_what_it_claims(line, code, tmp_path):
    proc = run_python(["-c", code], cwd=tmp_path)
    assert proc.returncode == 0, (
        f"README.md's python block at line {line} failed:\n{proc.stdout}\n{proc.stderr}")
    assert "DeprecationWarning" not in proc.stderr, (
        f"README.md's python block at line {line} uses a deprecated name:\n{proc.stderr}")
    claimed = claims(code)
    if claimed:
        got = printed_numbers(proc.stdout)
        assert len(got) == len(claimed), (line, proc.stdout)
        for want, value in zip(claimed, got):
            assert value == pytest.approx(want, rel=CLAIM_RTOL), (
                f"README.md line {line}: claims {want}, the block printed {value}")


def test_ci_runs_the_readmes_test_command_exactly():
    """`.ci/run` runs the command the README gives for the tests, character for character."""
    readme = README.read_text(encoding="utf-8")
    commands = [c for c in re.findall(r"```bash\n(.*?)```", readme, re.S) if "pytest" in c]
    assert len(commands) == 1, commands
    command = commands[0].strip()
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def _command_line_blocks(text: str) -> list[list[str]]:
    """The ```bash blocks of the README's "The command line" section, as lines."""
    section = text.split("## The command line", 1)[1].split("\n## ", 1)[0]
    return [b.strip().splitlines() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_the_command_line_block_pastes_in_order_after_the_set_up(tmp_path, monkeypatch):
    """Every `fdl train` line of the first block, in order, after the set-up's run: the
    parser accepts it and its checkpoint is neither refused as existing nor missing when
    resumed (each run's file is created before the next line is checked). The lines
    are checked with the CLI's own functions, not run: each would train for a minute."""
    monkeypatch.chdir(tmp_path)
    Path("fdl-checkpoint.npz").write_bytes(b"the set-up's run")  # `.venv/bin/fdl train`
    lines = _command_line_blocks(README.read_text(encoding="utf-8"))[0]
    assert lines[0].startswith("source .venv/bin/activate")
    trains = [shlex.split(line, comments=True) for line in lines if line.startswith("fdl train")]
    assert len(trains) >= 4
    for argv in trains:
        args = cli._parser().parse_args(argv[1:])
        assert args.resume is None or Path(args.resume).exists(), argv
        checkpoint = cli._checkpoint_path(args)  # raises UsageError when it would refuse
        if checkpoint:
            Path(checkpoint).write_bytes(b"written")
    for line in lines:
        if line.startswith("fdl ") and not line.startswith("fdl train"):
            with pytest.raises(SystemExit) as exit_:
                cli._parser().parse_args(shlex.split(line, comments=True)[1:] + ["--help"])
            assert exit_.value.code == 0


def test_the_data_lines_parse():
    for line in _command_line_blocks(README.read_text(encoding="utf-8"))[1]:
        args = cli._parser().parse_args(shlex.split(line, comments=True)[1:])
        assert args.data and args.checkpoint
