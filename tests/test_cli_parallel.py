"""`fdl train --devices N` (and the several-host flags), in the user's float32.

The device count of a CPU backend is fixed when it starts, so runs with N > 1 are
subprocesses of the installed `fdl` console script.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fdl.cli import main

pytestmark = pytest.mark.float32

FDL = str(Path(sys.executable).with_name("fdl"))


def fdl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "XLA_FLAGS")}
    env["FDL_CACHE_DIR"] = ""
    return subprocess.run([FDL, "train", "--hidden", "16", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_two_devices_train_then_resume_on_one(tmp_path):
    run = fdl("--devices", "2", "--epochs", "1", "--checkpoint", "a.npz", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "data parallel: each batch split across 2 cpu devices" in run.stdout
    assert "checkpoint saved to a.npz" in run.stdout
    resumed = fdl("--epochs", "2", "--resume", "a.npz", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from a.npz at epoch 1" in resumed.stdout
    assert "epoch 2/2" in resumed.stdout and "data parallel" not in resumed.stdout


def test_batch_must_split_evenly(tmp_path):
    run = fdl("--devices", "2", "--batch-size", "63", "--checkpoint", "", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip() == ("error: --batch-size 63 must be a multiple of --devices 2 "
                                  "(each device takes an equal share of a batch)")


def test_a_one_device_philox_checkpoint_is_not_split(tmp_path, capsys):
    assert main(["train", "--hidden", "16", "--epochs", "1", "--checkpoint",
                 str(tmp_path / "one.npz")]) == 0
    run = fdl("--devices", "2", "--epochs", "2", "--resume", "one.npz", cwd=tmp_path)
    assert run.returncode == 2
    assert "trained on one device with the philox2x32 generator" in run.stderr
    assert "resume it without --devices" in run.stderr


def test_more_devices_than_the_backend_has(capsys):
    # in this process the CPU backend has started with one device
    assert main(["train", "--devices", "8", "--epochs", "1", "--checkpoint", ""]) == 2
    assert "--devices 8 but only 1 cpu device(s) are available" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--coordinator", "localhost:1"],
                                   ["--num-processes", "2", "--process-id", "0"]])
def test_several_hosts_need_all_three_flags(flags, capsys):
    assert main(["train", *flags, "--epochs", "1", "--checkpoint", ""]) == 2
    assert "several hosts need all of --coordinator HOST:PORT, --num-processes N and " \
           "--process-id I" in capsys.readouterr().err


def test_process_id_below_the_count(capsys):
    assert main(["train", "--coordinator", "localhost:1", "--num-processes", "2",
                 "--process-id", "2", "--epochs", "1", "--checkpoint", ""]) == 2
    assert "--process-id 2 must be below --num-processes 2" in capsys.readouterr().err
