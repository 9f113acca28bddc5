"""Data-parallel checks on 4 host devices, run by tests/test_parallel.py in a subprocess.

`XLA_FLAGS=--xla_force_host_platform_device_count=4` must be set before JAX starts,
so these checks cannot run in the pytest process. Prints one JSON object of results.
"""

import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fdl  # noqa: E402
from fdl import layers as L  # noqa: E402
from fdl import optim  # noqa: E402
from fdl.parallel import DataParallel, make_mesh, save_state  # noqa: E402
from fdl.train import Trainer, fit  # noqa: E402


def model():
    return L.serial(L.Dense(64), L.Relu(), L.Dense(10))


def rel_diff(a, b) -> float:
    """Largest leaf-wise max|a − b| / max|b| over two pytrees of params."""
    out = 0.0
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        out = max(out, float(np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-30)))
    return out


def _host(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(leaf))
    return np.asarray(leaf)


def bitwise(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(_host(u), _host(v)) for u, v in zip(la, lb))


def data(dtype):
    ds, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))
    n = ds.x_train.shape[0] // 64 * 64
    return (np.asarray(ds.x_train[:n], dtype), np.asarray(ds.y_train[:n]),
            np.asarray(ds.x_test, dtype), np.asarray(ds.y_test), ds.input_shape)


def one_step(dtype, mesh) -> float:
    x, y, _, _, shape = data(dtype)
    # SGD: the update is linear in the gradient, so the difference measured is the
    # gradient's (Adam's first step, ±lr·sign(g), would turn roundoff into ±lr).
    single, parallel = Trainer(model(), optim.sgd(0.1)), DataParallel(model(), optim.sgd(0.1), mesh)
    a = single.init(jax.random.key(0), shape)
    b = parallel.init(jax.random.key(0), shape)
    for i in range(3):
        a, _ = single.step(a, x[64 * i:64 * (i + 1)], y[64 * i:64 * (i + 1)])
        b, _ = parallel.step(b, x[64 * i:64 * (i + 1)], y[64 * i:64 * (i + 1)])
    return rel_diff(b.params, a.params)


def main() -> None:
    out = {"devices": jax.device_count()}
    mesh = make_mesh(4)
    out["step_rel_float32"] = one_step(np.float32, mesh)
    with jax.enable_x64(True):
        out["step_rel_float64"] = one_step(np.float64, mesh)

    x, y, xt, yt, shape = data(np.float32)
    key = jax.random.key(1)
    single = Trainer(model(), optim.adam(1e-3))
    replicated = DataParallel(model(), optim.adam(1e-3), mesh)
    sharded = DataParallel(model(), optim.adam(1e-3), mesh, shard_params=True)
    runs = {}
    for name, trainer in [("single", single), ("replicated", replicated), ("sharded", sharded)]:
        ts = trainer.init(key, shape)
        ts, history = fit(trainer, ts, x, y, epochs=5, batch_size=64, x_test=xt, y_test=yt,
                          progress=False)
        runs[name] = (ts, history["test_accuracy"][-1])
    out["accuracy"] = {k: v[1] for k, v in runs.items()}
    out["sharded_vs_replicated_rel"] = rel_diff(runs["sharded"][0].params,
                                                runs["replicated"][0].params)
    out["epoch_rel_float32"] = rel_diff(runs["replicated"][0].params, runs["single"][0].params)
    w = runs["sharded"][0].params["dense_0"]["w"]
    out["sharded_w_spec"] = str(w.sharding.spec)
    out["sharded_w_shard_shape"] = list(w.addressable_shards[0].data.shape)
    moments = [leaf for leaf in jax.tree_util.tree_leaves(runs["sharded"][0].opt_state)
               if leaf.shape == w.shape]  # Adam's mu and nu of that weight
    out["sharded_moment_specs"] = [str(m.sharding.spec) for m in moments]

    try:
        sharded.epoch(runs["sharded"][0], x, y, batch_size=30)
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)

    # checkpoints: 4-device FSDP state -> 1 device, -> 2-device mesh; resume bitwise on 4
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.npz")
        ts0 = sharded.init(key, shape)
        ts1, _ = fit(sharded, ts0, x, y, epochs=1, batch_size=64, progress=False)
        save_state(path, ts1)
        on_one = fdl.io.load(path, like=single.abstract_state(shape))
        two = DataParallel(model(), optim.adam(1e-3), make_mesh(2), shard_params=True)
        on_two = fdl.io.load(path, like=two.abstract_state(shape))
        out["restore_1_bitwise"] = bitwise(on_one, ts1)
        out["restore_2_bitwise"] = bitwise(on_two, ts1)
        out["restore_2_spec"] = str(on_two.params["dense_0"]["w"].sharding.spec)
        out["restore_2_devices"] = len(on_two.params["dense_0"]["w"].sharding.device_set)
        straight, _ = fit(sharded, ts1, x, y, epochs=1, batch_size=64, progress=False)
        resumed = fdl.io.load(path, like=sharded.abstract_state(shape))
        resumed, _ = fit(sharded, resumed, x, y, epochs=1, batch_size=64, progress=False)
        out["resume_bitwise"] = bitwise(resumed, straight)
        two_trained, _ = fit(two, on_two, x, y, epochs=1, batch_size=64, progress=False)
        out["resume_on_2_rel"] = rel_diff(two_trained.params, straight.params)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
