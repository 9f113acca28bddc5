"""fdl.parallel on 4 host devices (a subprocess: the device count is fixed when JAX starts).

The checks run once, in `tests/parallel_checks.py`, in default float32 (and one
float64 block); each test below asserts one claim of issue #14 on its results.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import fdl
from fdl import layers as L
from fdl import optim
from fdl.parallel import DataParallel, make_mesh, param_spec


@pytest.fixture(scope="module")
def results() -> dict:
    script = Path(__file__).with_name("parallel_checks.py")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "XLA_FLAGS")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_four_devices(results):
    assert results["devices"] == 4


def test_data_parallel_step_equals_single_device_step(results):
    assert results["step_rel_float32"] <= 1e-6
    assert results["step_rel_float64"] <= 1e-12


def test_sharded_params_equal_replicated(results):
    assert results["sharded_w_spec"] == "P('data',)"  # (64, 64): the first of equal axes
    assert results["sharded_w_shard_shape"] == [16, 64]
    assert results["sharded_moment_specs"] == ["P('data',)"] * 2  # Adam's mu, nu too
    assert results["sharded_vs_replicated_rel"] <= 1e-6


def test_four_devices_train_as_one(results):
    acc = results["accuracy"]
    assert min(acc.values()) >= 0.9
    assert max(acc.values()) - min(acc.values()) <= 0.01
    assert results["epoch_rel_float32"] <= 1e-4  # five epochs of float32 sums in another order


def test_indivisible_batch_is_a_clear_error(results):
    msg = results["indivisible_error"]
    assert msg is not None and "divisible by the number of devices (4)" in msg and "30" in msg


def test_sharded_checkpoints_move_between_meshes_and_resume_bitwise(results):
    assert results["restore_1_bitwise"] and results["restore_2_bitwise"]
    assert results["restore_2_devices"] == 2 and "data" in results["restore_2_spec"]
    assert results["resume_bitwise"]
    assert results["resume_on_2_rel"] <= 1e-5


@pytest.mark.float32
def test_param_spec_splits_the_largest_divisible_axis():
    assert param_spec((64, 512), 4) == jax.sharding.PartitionSpec(None, "data")
    assert param_spec((512, 10), 4) == jax.sharding.PartitionSpec("data")
    assert param_spec((10,), 4) == jax.sharding.PartitionSpec()
    assert param_spec((), 4) == jax.sharding.PartitionSpec()
    assert param_spec((8, 8), 1) == jax.sharding.PartitionSpec()


@pytest.mark.float32
def test_one_device_mesh_and_bad_arguments():
    mesh = make_mesh(1)
    trainer = DataParallel(L.serial(L.Dense(10)), optim.sgd(0.1), mesh)
    ds, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))
    ts = trainer.init(jax.random.key(0), ds.input_shape)
    ts, m = trainer.step(ts, ds.x_train[:8], ds.y_train[:8])
    assert m["loss"] > 0
    with pytest.raises(ValueError, match=r"devices must be between 1 and the \d+ available"):
        make_mesh(jax.device_count() + 1)
    with pytest.raises(TypeError, match="devices must be an int"):
        make_mesh("two")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        DataParallel(L.serial(L.Dense(4)), optim.sgd(0.1), "mesh")
    with pytest.raises(TypeError, match="shard_params must be a bool"):
        DataParallel(L.serial(L.Dense(4)), optim.sgd(0.1), mesh, shard_params=1)


def test_scaling_benchmark_reports_efficiency():
    script = Path(__file__).parents[1] / "benchmarks" / "scaling.py"
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "XLA_FLAGS")}
    proc = subprocess.run([sys.executable, str(script), "--devices", "1,2", "--steps", "2",
                           "--rounds", "1", "--width", "32", "--batch", "8"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[1].split() == ["devices", "examples/s", "efficiency"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert rows[0][2] == "1.00" and float(rows[1][2]) > 0
