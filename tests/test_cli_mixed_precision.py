"""fdl train --compute-dtype: float16 (dynamic loss scaling) and bfloat16 compute with
float32 weights, recorded in the checkpoint; a resume with another value is refused."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

import fdl
from fdl.cli import main

pytestmark = pytest.mark.float32
SMALL = ["--hidden", "16", "--batch-size", "128", "--seed", "3", "--quiet"]


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _same_state(path_a, path_b):
    la = jax.tree_util.tree_leaves(fdl.io.load(path_a))
    lb = jax.tree_util.tree_leaves(fdl.io.load(path_b))
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def float16_runs(tmp_path_factory):
    """4 epochs straight, and 2 epochs then resumed to 4, in float16."""
    d = tmp_path_factory.mktemp("f16")
    a, b = d / "a.npz", d / "b.npz"
    with jax.enable_x64(False):
        assert main(["train", *SMALL, "--compute-dtype", "float16", "--epochs", "4",
                     "--checkpoint", str(a)]) == 0
        assert main(["train", *SMALL, "--compute-dtype", "float16", "--epochs", "2",
                     "--checkpoint", str(b)]) == 0
        half = fdl.io.load(b)
        assert main(["train", "--epochs", "4", "--resume", str(b), "--quiet"]) == 0
    return a, b, half


def test_float16_is_recorded_and_resumes_bitwise_with_its_loss_scale(float16_runs):
    a, b, half = float16_runs
    assert fdl.io.load_metadata(a)["compute_dtype"] == "float16"
    assert fdl.io.load_metadata(b)["compute_dtype"] == "float16"  # kept by the resume
    scale_state = half.opt_state
    assert type(scale_state).__name__ == "DynamicLossScaleState"
    assert float(scale_state.scale) > 0 and int(scale_state.good_steps) > 0
    params = jax.tree_util.tree_leaves(half.params)
    assert params and all(p.dtype == np.float32 for p in params)
    _same_state(a, b)


def test_the_banner_names_the_compute_dtype(capsys, tmp_path):
    code, out, _ = _run(capsys, "train", "--hidden", "8", "--epochs", "1", "--checkpoint",
                        str(tmp_path / "c.npz"), "--compute-dtype", "bfloat16")
    assert code == 0
    assert re.search(r"; bfloat16 compute, float32 weights\n", out), out
    assert fdl.io.load_metadata(tmp_path / "c.npz")["compute_dtype"] == "bfloat16"


@pytest.mark.parametrize("value, recorded", [("bfloat16", "float16"), ("float32", "float16")])
def test_resume_with_another_compute_dtype_is_refused(capsys, tmp_path, float16_runs, value,
                                                      recorded):
    ck = tmp_path / "ck.npz"
    ck.write_bytes(float16_runs[1].read_bytes())
    code, out, err = _run(capsys, "train", "--epochs", "6", "--resume", str(ck),
                          "--compute-dtype", value)
    assert code == 2 and "epoch " not in out
    assert (f"error: the checkpoint {ck} was trained with --compute-dtype {recorded}, this "
            f"run asks for {value}; pass --compute-dtype {recorded} (or leave it out) to "
            "resume it") in err
    assert ck.read_bytes() == float16_runs[1].read_bytes()


def test_a_float32_checkpoint_refuses_float16(capsys, tmp_path):
    ck = tmp_path / "ck.npz"
    assert _run(capsys, "train", "--hidden", "8", "--epochs", "1", "--quiet",
                "--checkpoint", str(ck))[0] == 0
    assert fdl.io.load_metadata(ck)["compute_dtype"] == "float32"
    code, _, err = _run(capsys, "train", "--epochs", "2", "--resume", str(ck),
                        "--compute-dtype", "float16")
    assert code == 2 and ("was trained with --compute-dtype float32, this run asks for "
                          "float16") in err


def test_a_bad_compute_dtype_is_named(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--compute-dtype", "float8"])
    assert exit_.value.code == 2
    assert ("error: fdl train: argument --compute-dtype: invalid choice: 'float8' (choose "
            "from 'float32', 'bfloat16', 'float16')") in capsys.readouterr().err


def test_check_gradients_runs_in_float32_whatever_the_compute_dtype(capsys):
    """The check is of the model's rules: float16 rounding would fail it spuriously."""
    code, out, _ = _run(capsys, "train", "--hidden", "8", "--epochs", "1", "--checkpoint", "",
                        "--check-gradients", "--compute-dtype", "float16")
    assert code == 0 and re.search(r"^passed: \d+ comparisons$", out, re.M), out


def test_schedule_free_is_evaluated_at_its_average(capsys, tmp_path):
    """fdl train --optimizer schedule_free_adamw reports the test loss at x, not at y."""
    from fdl import data, layers, optim
    from fdl.train import Trainer

    ck = tmp_path / "sf.npz"
    code, out, _ = _run(capsys, "train", *SMALL, "--epochs", "2", "--optimizer",
                        "schedule_free_adamw", "--lr", "0.003", "--checkpoint", str(ck))
    assert code == 0
    printed = float(re.search(r"test loss (\d+\.\d+)", out).group(1))
    ds, _ = data.standardize_dataset(data.load("digits", flatten=True))
    plain = Trainer(layers.mlp([16], 10, dropout=0.3), optim.schedule_free_adamw(0.003))
    key = jax.random.key(0, impl=fdl.io.load_metadata(ck)["key_impl"])
    ts = fdl.io.load(ck, like=plain.init(key, ds.input_shape))
    at_x = plain.evaluate(ts._replace(params=optim.schedule_free_eval_params(ts.opt_state)),
                          ds.x_test, ds.y_test)["loss"]
    at_y = plain.evaluate(ts, ds.x_test, ds.y_test)["loss"]
    assert printed == round(at_x, 4) and round(at_y, 4) != printed
