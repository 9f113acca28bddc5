"""The fdl command: train (the main job) and check; bad input gives one line and exit 2."""

from __future__ import annotations

import gzip
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fdl
from fdl.cli import main
from conftest import FakeTerminal


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.float32
def test_default_train_reaches_97_percent_on_digits(capsys, tmp_path):
    """The issue's bar: default settings, held-out digits accuracy ≥ 97%."""
    ck = tmp_path / "ck.npz"
    code, out, _ = _run(capsys, "train", "--quiet", "--checkpoint", str(ck))
    assert code == 0
    acc = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    assert acc >= 0.97, out
    assert f"checkpoint saved to {ck}" in out and ck.exists()


def _assert_same_state(path_a, path_b):
    sa, sb = fdl.io.load(path_a), fdl.io.load(path_b)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(sa), jax.tree_util.tree_leaves(sb)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


SMALL = ["--hidden", "16", "--batch-size", "128", "--seed", "3"]


@pytest.mark.float32
def test_train_prints_per_epoch_and_resume_is_bitwise(capsys, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    code, out, _ = _run(capsys, "train", *SMALL, "--epochs", "4", "--checkpoint", str(a))
    assert code == 0 and len(re.findall(r"^epoch [1-4]/4 ", out, re.M)) == 4
    assert "test acc" in out and re.search(r"\(4 epochs, \d+\.\d s\)\n", out), out
    assert _run(capsys, "train", *SMALL, "--epochs", "2", "--checkpoint", str(b))[0] == 0
    # options left out are taken from the checkpoint; it is continued in place
    code, out, _ = _run(capsys, "train", "--epochs", "4", "--resume", str(b))
    assert code == 0 and f"resumed from {b} at epoch 2" in out
    assert re.search(r"\(2 epochs after the 2 resumed, 4 in all, \d+\.\d s\)\n", out), out
    _assert_same_state(a, b)
    assert fdl.io.load_metadata(b)["epoch"] == 4


@pytest.mark.parametrize("precision", [
    pytest.param("x64", marks=pytest.mark.x64),
    pytest.param("float32", marks=pytest.mark.float32),
])
def test_check_gradients_option(capsys, precision):
    code, out, _ = _run(capsys, "train", "--hidden", "8", "--epochs", "1", "--checkpoint", "",
                        "--check-gradients", "--quiet")
    assert code == 0
    assert "fdl.check.model" in out and "passed: 8 comparisons\n" in out
    assert re.search(r"^leaf +against +max rel err +worst at +rtol +step$", out, re.M), out
    assert len(re.findall(r"^params\['dense_[14]'\]\['[wb]'\].* ok$", out, re.M)) == 8, out
    assert max(map(len, out.splitlines())) <= 100, out  # the report's own table is ~190
    assert re.search(r"\(1 epoch, \d+\.\d s\)\n", out), out


@pytest.mark.float32
def test_a_report_fits_100_columns_and_a_failure_is_described(capsys):
    from fdl.check.report import Comparison, Report
    from fdl.cli import _report_lines

    long = "params['a_long_layer_name_12']['w'] (gradient and 1 random direction)"
    rows = [Comparison(long, "finite differences", (2,), "float32", 0.5, 0.25, (1,), 1.0, 0.5,
                       1e-5, 1e-4, False, step=0.01),
            Comparison("params['b']", "autodiff", (3, 4), "float32", 0.0, 0.0, (2, 3), 1.0, 1.0,
                       1e-5, 1e-5, True)]
    lines = _report_lines(Report("a title", rows))
    assert max(map(len, lines)) <= 100
    assert lines[0] == "a title" and lines[1].startswith("leaf")
    assert lines[3] == ("…s['a_long_layer_name_12']['w'] (…)  finite differences  2.5e-01      "
                        "(1)       1e-05  1.0e-02  FAIL")
    assert lines[4].startswith("params['b'] ") and lines[4].endswith("(2,3)     1e-05  -"
                                                                    "        ok")
    assert lines[5] == "FAILED: 1 of 2 comparisons"
    assert " ".join(line.strip() for line in lines[6:]) == rows[0].describe()


def _idx(path, magic_type, dims, data, gz=False):
    payload = struct.pack(">BBBB", 0, 0, magic_type, len(dims)) + b"".join(
        struct.pack(">I", d) for d in dims) + bytes(data)
    (gzip.open if gz else open)(path, "wb").write(payload)


@pytest.mark.float32
@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "/no/such/dir"], "/no/such/dir"),
    (["train", "--batch-size", "0"], "--batch-size: expected an int ≥ 1, got '0'"),
    (["train", "--lr", "nan"], "--lr: expected a finite number > 0, got 'nan'"),
    (["train", "--lr", "-1"], "--lr: expected a finite number > 0, got '-1'"),
    (["train", "--lr", "inf"], "--lr: expected a finite number > 0, got 'inf'"),
    (["train", "--seed", str(2**63)],
     f"--seed: expected an int in [0, {2**63 - 1}], got '{2**63}'"),
    (["train", "--seed", str(2**64)], "--seed: expected an int in [0, "),
    (["train", "--epochs", str(2**31)],
     f"--epochs: expected an int in [0, {2**31 - 1}], got '{2**31}'"),
    (["train", "--hidden", ""], "--hidden: expected comma-separated layer sizes such as 512 "
                                "or 256,128, got ''; pass --hidden none for no hidden layer"),
    (["train", "--coordinator", "10.0.0.1"], "--coordinator: expected HOST:PORT with a port "
                                             "in [1, 65535], such as 10.0.0.1:1234, got "
                                             "'10.0.0.1'"),
    (["train", "--coordinator", "host:99999"], "expected HOST:PORT with a port in [1, 65535]"),
    (["train", "--coordinator-timeout", "0"], "--coordinator-timeout: expected a finite "
                                              "number of seconds > 0, got '0'"),
    (["train", "--dropout", "1"], "--dropout: expected a probability in [0, 1), got '1'"),
    (["train", "--epochs", "-2"], f"--epochs: expected an int in [0, {2**31 - 1}], got '-2'"),
    (["train", "--save-every", "0"], "--save-every: expected an int ≥ 1, got '0'"),
    (["train", "--save-every", "2", "--checkpoint", ""], "--save-every needs a checkpoint"),
    (["train", "--num-classes", "x"], "--num-classes: expected an int ≥ 1, got 'x'"),
    (["train", "--resume", "/no/such.npz"], "no checkpoint at '/no/such.npz'"),
    (["train", "--batch-size", "100000"], "larger than the training set"),
    (["train", "--optimizer", "adamx"], "invalid choice: 'adamx'"),
    (["train", "--activation", "swish2"], "invalid choice: 'swish2'"),
    (["train", "--hidden", "12,x"], "comma-separated layer sizes"),
    (["check", "no_such_primitive"], "unknown primitive"),
    (["check", "--seed", "-1", "linear"], "--seed: expected an int ≥ 0, got '-1'"),
    (["train", "--data", ""], "--data: expected 'digits' or a directory of MNIST-format IDX "
                              "files, got ''"),
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


@pytest.mark.float32
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


@pytest.mark.x64
def test_check_command_lists_primitives_and_passes(capsys):
    code, out, _ = _run(capsys, "check", "linear", "softmax_cross_entropy")
    assert code == 0
    assert "linear" in out and "softmax_cross_entropy" in out and "all passed" in out


# --------------------------------------------------------------------------------- #
# fail before the work: outputs and inputs are checked before anything compiles
# --------------------------------------------------------------------------------- #

def _refused(capsys, *argv):
    """Run; expect exit 2, one error line, and no compilation or epoch."""
    code, out, err = _run(capsys, *argv)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "compiling" not in out and "epoch " not in out and "Traceback" not in err
    return err


@pytest.mark.float32
def test_checkpoint_path_problems_are_found_before_training(capsys, tmp_path):
    err = _refused(capsys, "train", "--checkpoint", str(tmp_path / "nowhere" / "ck.npz"))
    assert "the directory" in err and "nowhere does not exist; create it (mkdir -p" in err
    err = _refused(capsys, "train", "--checkpoint", str(tmp_path))
    assert "is a directory; give a file name such as" in err
    (tmp_path / "afile").write_text("x")
    for where in (tmp_path / "afile" / "ck.npz", tmp_path / "afile" / "sub" / "ck.npz"):
        err = _refused(capsys, "train", "--checkpoint", str(where))
        assert err.strip() == (f"error: --checkpoint {where}: {tmp_path / 'afile'} is a file, "
                               "not a directory; choose another path")


@pytest.mark.float32
def test_unwritable_checkpoint_directory_is_found_before_training(capsys, tmp_path, monkeypatch):
    """The check writes a probe file (the only test that also holds for read-only
    mounts and for root); here the probe is made to fail as on a read-only directory."""
    import fdl.cli

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fdl.cli.tempfile, "mkstemp", refuse)
    err = _refused(capsys, "train", "--checkpoint", str(tmp_path / "ck.npz"))
    assert f"cannot write in {tmp_path} (Permission denied); choose a writable" in err


@pytest.mark.float32
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_read_only_checkpoint_directory_is_found_before_training(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = _refused(capsys, "train", "--checkpoint", str(ro / "ck.npz"))
    finally:
        ro.chmod(0o755)
    assert "cannot write in" in err


@pytest.mark.float32
def test_existing_checkpoint_is_not_silently_overwritten(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("fdl-checkpoint.npz").write_bytes(b"an earlier run")
    err = _refused(capsys, "train")
    assert ("fdl-checkpoint.npz already exists (an earlier run's checkpoint?); pass --resume "
            "fdl-checkpoint.npz to continue it, --overwrite to replace it") in err
    assert Path("fdl-checkpoint.npz").read_bytes() == b"an earlier run"


@pytest.mark.float32
@pytest.mark.parametrize("name, message", [
    ("curves.jpg", "--plot {d}/curves.jpg: the curves are saved as PNG; give a name ending in "
                   ".png, such as {d}/curves.png"),
    ("missing/curves.png", "--plot {d}/missing/curves.png: the directory {d}/missing does not "
                           "exist"),
    ("ck.npz", "--plot {d}/ck.npz: the curves are saved as PNG"),
])
def test_plot_path_problems_are_found_before_training(capsys, tmp_path, name, message):
    err = _refused(capsys, "train", "--checkpoint", str(tmp_path / "ck.png"), "--plot",
                   str(tmp_path / name))
    assert message.format(d=tmp_path) in err
    err = _refused(capsys, "train", "--checkpoint", str(tmp_path / "ck.png"), "--plot",
                   str(tmp_path / "ck.png"))
    assert "is also the checkpoint file" in err


@pytest.mark.float32
def test_plot_without_matplotlib_is_found_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    err = _refused(capsys, "train", "--checkpoint", "", "--plot", str(tmp_path / "c.png"))
    assert "--plot needs matplotlib, which is not installed: pip install 'fdl[plot]'" in err


@pytest.mark.float32
def test_plot_without_suffix_says_the_file_it_wrote_and_the_banner_is_readable(capsys,
                                                                              tmp_path):
    pytest.importorskip("matplotlib")
    code, out, _ = _run(capsys, "train", "--hidden", "32,16", "--epochs", "2",
                        "--checkpoint", "", "--lr", "0.002", "--optimizer", "sgd",
                        "--plot", str(tmp_path / "curves"))
    assert code == 0
    assert "fdl train: digits, 1438 training / 359 test examples, 10 classes" in out
    assert "MLP 64 → 32 → 16 → 10, relu, dropout 0.3; sgd lr 0.002; 2 epochs, batch 64" in out
    assert "compiling the training and evaluation programs ... done (" in out
    assert "(64,)" not in out and "[32, 16]" not in out
    assert f"plot saved to {tmp_path / 'curves.png'}" in out
    assert os.listdir(tmp_path) == ["curves.png"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _mnist_dir(root, train_labels, test_labels):
    root.mkdir()
    n, m = len(train_labels), len(test_labels)
    _idx(root / "train-images-idx3-ubyte", 0x08, (n, 2, 2), [7] * (n * 4))
    _idx(root / "train-labels-idx1-ubyte", 0x08, (n,), train_labels)
    _idx(root / "t10k-images-idx3-ubyte", 0x08, (m, 2, 2), [7] * (m * 4))
    _idx(root / "t10k-labels-idx1-ubyte", 0x08, (m,), test_labels)
    return str(root)


@pytest.mark.float32
def test_idx_label_outside_ten_classes_is_an_error_not_a_bigger_model(capsys, tmp_path):
    d = _mnist_dir(tmp_path / "m", list(range(10)) * 2 + [12], list(range(10)))
    err = _refused(capsys, "train", "--data", d, "--checkpoint", "")
    assert ("the largest training label is 12, which implies 13 classes, but 2 of them never "
            "occur in the training labels (classes 10, 11)") in err
    assert "--num-classes 13" in err
    err = _refused(capsys, "train", "--data", d, "--checkpoint", "", "--num-classes", "10")
    assert "y_train[20] is 12, outside [0, 10)" in err


@pytest.mark.float32
def test_num_classes_admits_classes_missing_from_training(capsys, tmp_path):
    d = _mnist_dir(tmp_path / "m", [0, 1, 2, 4] * 4, [0, 1, 3, 4])
    code, out, _ = _run(capsys, "train", "--data", d, "--checkpoint", "", "--num-classes", "5",
                        "--hidden", "4", "--epochs", "1", "--batch-size", "8")
    assert code == 0 and "MLP 4 → 4 → 5, relu" in out and "5 classes" in out


# --------------------------------------------------------------------------------- #
# resume is explicit
# --------------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def adam_checkpoint(tmp_path_factory):
    """A 2-epoch Adam checkpoint of a small MLP (float32, as users run)."""
    path = tmp_path_factory.mktemp("resume") / "adam.npz"
    with jax.enable_x64(False):
        assert main(["train", "--hidden", "8", "--epochs", "2", "--batch-size", "128",
                     "--checkpoint", str(path), "--quiet"]) == 0
    return path


@pytest.mark.float32
@pytest.mark.parametrize("flag, value, recorded", [
    ("--optimizer", "sgd", "adam"),
    ("--optimizer", "nadam", "adam"),  # same state shapes: would otherwise go on silently
    ("--lr", "0.01", "0.001"),
    ("--hidden", "16", "8"),
    ("--dropout", "0.1", "0.3"),
    ("--batch-size", "64", "128"),
])
def test_resume_with_other_settings_names_both_values(capsys, tmp_path, adam_checkpoint, flag,
                                                      value, recorded):
    ck = tmp_path / "ck.npz"
    ck.write_bytes(adam_checkpoint.read_bytes())
    err = _refused(capsys, "train", "--epochs", "5", "--resume", str(ck), flag, value)
    assert (f"error: the checkpoint {ck} was trained with {flag} {recorded}, this run asks for "
            f"{value}; pass {flag} {recorded} (or leave it out) to resume it") in err
    assert ck.read_bytes() == adam_checkpoint.read_bytes()


@pytest.mark.float32
@pytest.mark.parametrize("epochs", ["1", "2"])
def test_resume_with_no_more_epochs_says_so_and_keeps_the_file(capsys, tmp_path,
                                                               adam_checkpoint, epochs):
    ck = tmp_path / "ck.npz"
    ck.write_bytes(adam_checkpoint.read_bytes())
    err = _refused(capsys, "train", "--epochs", epochs, "--resume", str(ck))
    assert (f"the checkpoint {ck} has already trained 2 epochs and --epochs is the total "
            f"({epochs}); pass --epochs N with N > 2") in err
    assert ck.read_bytes() == adam_checkpoint.read_bytes()


@pytest.mark.float32
def test_resume_on_other_data_is_refused(capsys, tmp_path, adam_checkpoint):
    d = _mnist_dir(tmp_path / "m", list(range(10)) * 2, list(range(10)))
    err = _refused(capsys, "train", "--epochs", "5", "--resume", str(adam_checkpoint),
                   "--data", d, "--checkpoint", str(tmp_path / "new.npz"))
    assert "was trained with --data digits, this run asks for" in err


# --------------------------------------------------------------------------------- #
# never lose a run
# --------------------------------------------------------------------------------- #

@pytest.mark.float32
def test_save_every_saves_at_those_epochs(capsys, tmp_path, monkeypatch):
    saved = []
    real = fdl.io.save

    def spy(path, tree, *, metadata=None, **kw):
        saved.append(metadata["epoch"])
        real(path, tree, metadata=metadata, **kw)

    monkeypatch.setattr(fdl.io, "save", spy)
    ck = tmp_path / "ck.npz"
    code, _, _ = _run(capsys, "train", "--hidden", "8", "--epochs", "5", "--save-every", "2",
                      "--checkpoint", str(ck), "--quiet")
    assert code == 0 and saved == [2, 4, 5]
    assert os.listdir(tmp_path) == ["ck.npz"]


def _fdl_command():
    script = Path(sys.executable).parent / "fdl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fdl.cli"]


def _env():
    return os.environ | {"FDL_CACHE_DIR": "", "JAX_PLATFORMS": "cpu"}


@pytest.mark.float32
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_at_an_epoch_boundary_and_the_checkpoint_resumes_bitwise(
        capsys, tmp_path, signum):
    """The real command in a subprocess (JAX's default float32): a signal after the
    first epoch line saves a checkpoint, prints one line and exits 128 + signum; the
    checkpoint, resumed, gives bitwise the run that was never interrupted (checked for
    SIGINT; SIGTERM takes the same path)."""
    ck = tmp_path / "ck.npz"
    args = ["train", *SMALL, "--epochs", "10000"]
    proc = subprocess.Popen([*_fdl_command(), *args, "--checkpoint", str(ck)], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch "):
                break
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    epoch = fdl.io.load_metadata(ck)["epoch"]
    assert 1 <= epoch < 10000
    assert (f"stopped by {signal.Signals(signum).name} after epoch {epoch}/10000; checkpoint "
            f"saved to {ck} (continue with: fdl train --resume {ck} --epochs 10000)") in err
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]  # and nothing else
    if signum != signal.SIGINT:
        return
    straight = tmp_path / "straight.npz"
    assert _run(capsys, "train", *SMALL, "--epochs", str(epoch + 1), "--checkpoint",
                str(straight), "--quiet")[0] == 0
    assert _run(capsys, "train", "--epochs", str(epoch + 1), "--resume", str(ck),
                "--quiet")[0] == 0
    _assert_same_state(straight, ck)


@pytest.mark.float32
def test_closed_stdout_ends_quietly_and_keeps_the_run(tmp_path):
    """``fdl train | head -1``: no BrokenPipeError traceback; the run is saved."""
    proc = subprocess.Popen([*_fdl_command(), "train", *SMALL, "--epochs", "10000"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()  # what head does after one line
        err = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert first.startswith("fdl train: digits")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141
    assert len(err.strip().splitlines()) == 1 and "stdout was closed" in err, err
    assert (tmp_path / "fdl-checkpoint.npz").exists() or "nothing to save" in err


# --------------------------------------------------------------------------------- #
# no tracebacks, and the small things
# --------------------------------------------------------------------------------- #

@pytest.mark.float32
def test_unexpected_error_is_one_line_exit_1(capsys, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line of detail")

    monkeypatch.setattr(fdl.layers, "mlp", broken)
    code, _, err = _run(capsys, "train", "--checkpoint", "")
    assert code == 1
    assert err.strip() == ("error: unexpected RuntimeError: boom … (a bug in fdl? rerun with "
                           "FDL_DEBUG=1 for the traceback and report it)")


@pytest.mark.float32
def test_interrupt_before_training_is_exit_130(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fdl.data, "load", interrupted)
    code, _, err = _run(capsys, "train", "--checkpoint", "")
    assert code == 130 and err.strip() == "interrupted"


@pytest.mark.float32
def test_version_and_plain_text_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert re.fullmatch(r"fdl \S+\n", capsys.readouterr().out)
    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "usage: fdl" in text and "`" not in text and ":func:" not in text





@pytest.mark.float32
def test_progress_on_a_terminal_fits_80_columns_and_epoch_lines_stay_clean(monkeypatch):
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", term)
    assert main(["train", "--hidden", "8", "--epochs", "3", "--checkpoint", ""]) == 0
    assert "\r[" in term.text  # the bar was drawn, in place
    screen = []
    for raw in term.text.split("\n"):  # what the terminal shows: \r overwrites
        row = []
        for part in raw.split("\r"):
            assert len(part) <= 80, part
            row[: len(part)] = list(part)
        screen.append("".join(row).rstrip())
    epochs = [line for line in screen if line.startswith("epoch ")]
    assert len(epochs) == 3
    assert all(re.fullmatch(r"epoch \d/3  loss \S+  train acc \S+  test loss \S+  "
                            r"test acc \S+", line) for line in epochs), screen
    assert all(len(line) <= 80 for line in screen) and not any("[#" in line for line in screen)


# --------------------------------------------------------------------------------- #
# faults: too little memory, an unreachable coordinator, a diverged checkpoint
# --------------------------------------------------------------------------------- #

@pytest.mark.float32
def test_a_model_that_cannot_fit_in_memory_is_refused_before_allocating(capsys):
    """A hidden layer of 10⁸ units (7.5·10⁹ parameters) once hung forever at 0% CPU: the
    estimate (state + gradients + updates) is compared with the memory there is."""
    err = _refused(capsys, "train", "--hidden", "100000000", "--checkpoint", "")
    assert re.fullmatch(r"error: the model has 7,500,000,010 parameters; training it needs at "
                        r"least 150\.0 GB \(parameters, optimizer state, gradients\) but only "
                        r"\d+\.\d (GB|MB) is free \(.+\); pass smaller --hidden sizes\n", err), err


@pytest.mark.float32
def test_an_allocation_that_fails_ends_the_run_with_one_line_not_a_hang(tmp_path):
    """The estimate passes (the host has the memory) but the process may not use it (an
    address-space limit of 2 GB): the failed allocation ends the run at once, exit 1."""
    trainer = fdl.train.Trainer(fdl.layers.mlp([2_000_000], 10), fdl.optim.adam(1e-3))
    needed = trainer.memory_needed(trainer.abstract_state((64,)))
    if fdl.train.available_memory()[0] < needed:
        pytest.skip(f"needs {needed / 1e9:.1f} GB of free memory to pass the estimate")
    limit = 2 * 10**9
    launch = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, "
              f"({limit}, {limit})); os.execv(sys.argv[1], sys.argv[1:])")
    command = _fdl_command()
    if len(command) == 1:
        command = [sys.executable, *command]  # execv needs the interpreter for a script
    proc = subprocess.run([sys.executable, "-c", launch, *command, "train", "--hidden",
                           "2000000", "--epochs", "1", "--checkpoint", ""], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: out of memory: ") and "RESOURCE_EXHAUSTED" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "compiling the training and evaluation programs ... failed\n" in proc.stdout


def _closed_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.float32
def test_an_unreachable_coordinator_gives_up_after_the_timeout_with_one_line(tmp_path):
    port = _closed_port()
    proc = subprocess.run([*_fdl_command(), "train", "--coordinator", f"127.0.0.1:{port}",
                           "--num-processes", "2", "--process-id", "1",
                           "--coordinator-timeout", "1", "--checkpoint", ""], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (f"error: --coordinator 127.0.0.1:{port}: the 2 processes did not all "
                           "connect within 1 s (this is process 1); check that process 0 runs "
                           "at that address and is reachable from here, that every process "
                           "was started, or raise --coordinator-timeout\n")


@pytest.mark.float32
def test_ctrl_c_while_waiting_for_the_coordinator_is_a_quiet_exit_130(tmp_path):
    proc = subprocess.Popen([*_fdl_command(), "train", "--coordinator",
                             f"127.0.0.1:{_closed_port()}", "--num-processes", "2",
                             "--process-id", "1", "--checkpoint", ""], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)  # start-up (importing JAX) and into the wait
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "interrupted\n", err


@pytest.mark.float32
def test_a_checkpoint_with_nan_weights_is_refused_naming_the_leaf(capsys, tmp_path,
                                                                 adam_checkpoint):
    state = fdl.io.load(adam_checkpoint)
    meta = fdl.io.load_metadata(adam_checkpoint)
    w = np.array(state.params["dense_1"]["w"])
    w[3, 2] = np.nan
    w[0, 0] = np.inf
    params = state.params | {"dense_1": state.params["dense_1"] | {"w": w}}
    ck = tmp_path / "diverged.npz"
    fdl.io.save(ck, state._replace(params=params), metadata=meta)
    before = ck.read_bytes()
    err = _refused(capsys, "train", "--epochs", "5", "--resume", str(ck))
    assert err == (f"error: the checkpoint {ck} holds non-finite values (2 of the 512 in "
                   ".params['dense_1']['w']): the run had diverged, and resuming it would "
                   "train on NaN; resume an earlier checkpoint or start a new run (lower "
                   "--lr)\n")
    assert ck.read_bytes() == before


@pytest.mark.float32
def test_no_hidden_layer_says_so_in_the_banner(capsys):
    code, out, _ = _run(capsys, "train", "--hidden", "none", "--epochs", "1", "--checkpoint", "")
    assert code == 0
    assert "MLP 64 → 10 (no hidden layer: logistic regression); adam lr 0.001; 1 epoch" in out


@pytest.mark.float32
@pytest.mark.parametrize("delay", [0.2, 0.5, 0.9])
def test_ctrl_c_during_start_up_is_a_quiet_exit_130(tmp_path, delay):
    proc = subprocess.Popen([*_fdl_command(), "train", "--epochs", "1", "--checkpoint", ""],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(delay)  # while Python imports JAX
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, err) == (130, "interrupted\n")


@pytest.mark.float32
def test_a_checkpoint_of_another_model_is_refused_naming_the_options(capsys, tmp_path):
    """A checkpoint without fdl train's metadata (written by fdl.io.save in a script) of
    another architecture: the message says which model this run builds."""
    trainer = fdl.train.Trainer(fdl.layers.mlp([8, 8], 10), fdl.optim.adam(1e-3))
    ck = tmp_path / "other.npz"
    fdl.io.save(ck, trainer.init(fdl.random.key(0), (64,)))
    err = _refused(capsys, "train", "--resume", str(ck), "--epochs", "2")
    assert err.startswith(f"error: the checkpoint {ck} does not hold the state this run builds "
                          "(MLP with --hidden 512, --optimizer adam): checkpoint ")
    assert err.endswith("; pass the options it was trained with\n")


@pytest.mark.float32
def test_a_second_ctrl_c_stops_at_once_even_inside_a_long_epoch(tmp_path):
    """The main thread waits inside XLA for the epoch, where Python's handlers cannot run;
    the signal watchdog ends the run within a second of the second Ctrl-C (it used to
    wait for the end of the epoch)."""
    proc = subprocess.Popen([*_fdl_command(), "train", "--hidden", "2048,2048", "--batch-size",
                             "8", "--epochs", "1", "--checkpoint", ""], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("compiling"):
                break
        time.sleep(1.0)  # into the epoch: tens of seconds of 8-example steps
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=120)
        seconds = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "interrupted\n", err
    assert "epoch 1/1" not in out and seconds < 1 + 3, (seconds, out)
