"""The fdl command: train (the main job) and check; bad input gives one line and exit 2."""

from __future__ import annotations

import gzip
import re
import struct

import jax
import numpy as np
import pytest

import fdl
from fdl.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_train_reaches_97_percent_on_digits(capsys, tmp_path):
    """The issue's bar: default settings, held-out digits accuracy ≥ 97%."""
    ck = tmp_path / "ck.npz"
    code, out, _ = _run(capsys, "train", "--quiet", "--checkpoint", str(ck))
    assert code == 0
    acc = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    assert acc >= 0.97, out
    assert f"checkpoint saved to {ck}" in out and ck.exists()


def test_train_prints_per_epoch_and_resume_is_bitwise(capsys, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    common = ["--hidden", "16", "--batch-size", "128", "--seed", "3"]
    code, out, _ = _run(capsys, "train", *common, "--epochs", "4", "--checkpoint", str(a))
    assert code == 0 and out.count("epoch ") == 4 and "test acc" in out
    assert _run(capsys, "train", *common, "--epochs", "2", "--checkpoint", str(b))[0] == 0
    code, out, _ = _run(capsys, "train", *common, "--epochs", "4", "--resume", str(b),
                        "--checkpoint", str(b))
    assert code == 0 and "resumed from" in out and "at epoch 2" in out
    sa, sb = fdl.io.load(a), fdl.io.load(b)
    for x, y in zip(jax.tree_util.tree_leaves(sa), jax.tree_util.tree_leaves(sb)):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_check_gradients_option(capsys):
    code, out, _ = _run(capsys, "train", "--hidden", "8", "--epochs", "1", "--checkpoint", "",
                        "--check-gradients", "--quiet")
    assert code == 0
    assert "fdl.check.model" in out and "passed" in out


def _idx(path, magic_type, dims, data, gz=False):
    payload = struct.pack(">BBBB", 0, 0, magic_type, len(dims)) + b"".join(
        struct.pack(">I", d) for d in dims) + bytes(data)
    (gzip.open if gz else open)(path, "wb").write(payload)


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "/no/such/dir"], "/no/such/dir"),
    (["train", "--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    (["train", "--batch-size", "100000"], "larger than the training set"),
    (["train", "--optimizer", "adamx"], "invalid choice: 'adamx'"),
    (["train", "--activation", "swish2"], "invalid choice: 'swish2'"),
    (["train", "--hidden", "12,x"], "comma-separated layer sizes"),
    (["check", "no_such_primitive"], "unknown primitive"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks exit directly
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_corrupt_idx_directory_is_exit_2(capsys, tmp_path):
    n = 4
    _idx(tmp_path / "train-images-idx3-ubyte", 0x08, (n, 2, 2), [0] * (n * 4))
    _idx(tmp_path / "train-labels-idx1-ubyte", 0x08, (n,), [1] * n)
    _idx(tmp_path / "t10k-images-idx3-ubyte", 0x08, (n, 2, 2), [0] * (n * 4 - 1))  # truncated
    _idx(tmp_path / "t10k-labels-idx1-ubyte", 0x08, (n,), [1] * n)
    code, _, err = _run(capsys, "train", "--data", str(tmp_path))
    assert code == 2 and "t10k-images-idx3-ubyte" in err
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03" + b"\x00" * 28)
    code, _, err = _run(capsys, "train", "--data", str(tmp_path))
    assert code == 2 and "t10k-images-idx3-ubyte" in err and len(err.strip().splitlines()) == 1


def test_checkpoint_of_another_architecture_is_exit_2(capsys, tmp_path):
    ck = tmp_path / "ck.npz"
    assert _run(capsys, "train", "--hidden", "8", "--epochs", "1", "--checkpoint", str(ck),
                "--quiet")[0] == 0
    code, _, err = _run(capsys, "train", "--hidden", "16", "--epochs", "2", "--resume", str(ck))
    assert code == 2 and "different model" in err


def test_check_command_lists_primitives_and_passes(capsys):
    code, out, _ = _run(capsys, "check", "linear", "softmax_cross_entropy")
    assert code == 0
    assert "linear" in out and "softmax_cross_entropy" in out and "all passed" in out
