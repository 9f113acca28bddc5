"""`fdl train-charlm` (fdl.cli_lm over fdl.models.charlm): trains and samples, --resume
continues bitwise, options that contradict the checkpoint are refused, and Ctrl-C stops
at a chunk boundary with the checkpoint saved and the way to continue printed."""

from __future__ import annotations

import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import fdl
from conftest import user_env
from fdl.cli import main

SMALL = ["--d-model", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
         "--batch-size", "4", "--eval-every", "5", "--quiet"]


@pytest.mark.float32
def test_resume_continues_bitwise_and_contradicting_options_are_refused(tmp_path, capsys):
    straight, split = tmp_path / "straight.npz", tmp_path / "split.npz"
    assert main(["train-charlm", *SMALL, "--steps", "10", "--sample", "30",
                 "--checkpoint", str(straight)]) == 0
    out = capsys.readouterr().out
    assert "validation loss " in out and "sample (temperature 0.8):\nShall I compare thee" in out
    assert main(["train-charlm", *SMALL, "--steps", "5", "--sample", "0",
                 "--checkpoint", str(split)]) == 0
    assert main(["train-charlm", "--resume", str(split), "--steps", "10", "--eval-every", "5",
                 "--quiet", "--sample", "0", "--checkpoint", str(split)]) == 0
    a, b = fdl.io.load(straight), fdl.io.load(split)
    assert int(a[3]) == int(b[3]) == 10
    for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0])):
        np.testing.assert_array_equal(x, y)
    history = fdl.io.load_metadata(split)["history"]
    assert [r["step"] for r in history] == [5, 10]
    capsys.readouterr()
    assert main(["train-charlm", "--resume", str(split), "--steps", "20", "--d-model", "32"]) == 2
    assert "--d-model 32 does not match the checkpoint" in capsys.readouterr().err
    assert main(["train-charlm", "--resume", str(split), "--steps", "10"]) == 2
    assert "already trained 10 steps" in capsys.readouterr().err


@pytest.mark.float32
def test_ctrl_c_stops_at_a_chunk_boundary_saves_and_says_how_to_continue(tmp_path):
    ck = tmp_path / "lm.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fdl.cli", "train-charlm", *SMALL[:-1], "--eval-every", "2",
         "--steps", "100000", "--sample", "0", "--checkpoint", str(ck)],
        cwd=tmp_path, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until training runs
            if line.startswith("step "):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    step = int(fdl.io.load(ck)[3])
    assert step % 2 == 0 and step >= 2
    assert err.strip() == (f"stopped by SIGINT after step {step}/100000; checkpoint saved to "
                           f"{ck} (continue with: fdl train-charlm --resume {ck} --steps 100000)")


@pytest.mark.float32
def test_the_lstm_model_trains_with_dropout_between_two_layers_and_samples(tmp_path, capsys):
    ck = tmp_path / "lstm.npz"
    assert main(["train-charlm", *SMALL, "--model", "lstm", "--layers", "2", "--dropout", "0.1",
                 "--steps", "5", "--sample", "10", "--checkpoint", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "sample (temperature 0.8):\nShall I compare thee" in out
    settings = fdl.io.load_metadata(ck)["settings"]
    assert settings["model"] == "lstm" and settings["layers"] == 2 and settings["dropout"] == 0.1
    assert set(fdl.io.load(ck)[0]["lstm_1"]) == {"l0", "l1"}
