"""Data-parallel and sharded training on JAX's own sharding machinery.

The contract
------------
    mesh = fdl.parallel.make_mesh(4)                 # a 1-D mesh, axis "data"
    trainer = fdl.parallel.DataParallel(model, optimizer, mesh)            # replicated state
    trainer = fdl.parallel.DataParallel(model, optimizer, mesh, shard_params=True)  # FSDP
    ts = trainer.init(key, input_shape)              # state placed on the mesh
    ts, history = fdl.train.fit(trainer, ts, x, y, epochs=10, batch_size=256)

`DataParallel` is a `fdl.train.Trainer`: `step`, `epoch` (one compiled `lax.scan`),
`evaluate`, `compile` and `fit` work unchanged. What it adds is where arrays live:

* Every batch is split along the mesh's `data` axis: inside the compiled step the
  batch is constrained to `NamedSharding(mesh, P("data"))`, so each device runs the
  forward and backward on `batch_size / n` examples. The loss is a mean over the
  whole batch, so the gradient is a sum over devices: XLA inserts that all-reduce
  (the compiler's, not ours), and the update is the single-device update.
* Parameters and optimizer state are replicated (`P()`), or with
  `shard_params=True` each leaf is split along its largest axis that `n` divides
  (ZeRO-3 / FSDP style: each device stores `1/n` of every large leaf; XLA gathers a
  weight where a matmul needs it and reduce-scatters its gradient). Leaves with no
  such axis (scalars, a bias of odd length) stay replicated.
* Training data is split along its first axis when `n` divides it, else replicated;
  the shuffle inside the epoch gathers across devices as needed.

The mesh's axis is of type `Auto`, so XLA's sharding propagation (GSPMD) decides
everything not pinned above. Results equal the single-device run up to the order
of floating-point sums (≈1e-7 relative in float32, ≈1e-16 in float64).

Several hosts: call `jax.distributed.initialize()` first on every host (see the
README); `make_mesh()` then spans every device of every process. Each process
holds the whole data set, and `place_data` puts on its devices the part they own.
Keys: use `jax.random.key(seed)` (threefry2x32). A philox2x32 key (`fdl.random.key`)
does not compile across several devices with this JAX's partitioner, and
`DataParallel` says so instead of failing inside XLA.

Checkpoints: `save_state` gathers a (possibly sharded) state to the host and writes
it from process 0; `abstract_state(input_shape)` gives `fdl.io.load` a template
that restores a checkpoint straight onto this trainer's mesh, whatever mesh (or
single device) wrote it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fdl import io
from fdl.layers.base import Layer
from fdl.optim.base import Optimizer
from fdl.train import Trainer, TrainState, _allocated, _check_key, _input_shape, _nbytes

__all__ = ["DataParallel", "make_mesh", "param_spec", "save_state"]

PyTree = Any
_PHILOX_DTYPE = jax.eval_shape(lambda: jax.random.key(0, impl="philox2x32")).dtype


def make_mesh(devices: int | Sequence[Any] | None = None, *, axis: str = "data") -> Mesh:
    """A one-dimensional mesh over `devices` with the axis name `axis`.

    Args:
      devices: how many of `jax.devices()` to use (the first `devices`), or the
        devices themselves; `None` uses all of them (every host's, after
        `jax.distributed.initialize`).
      axis: the mesh axis name the batch is split along.
    """
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"make_mesh: devices must be between 1 and the {len(available)} available "
                f"({jax.default_backend()}) devices, got {devices}; on a CPU, "
                "XLA_FLAGS=--xla_force_host_platform_device_count=N (set before JAX starts) "
                "makes N host devices")
        chosen = available[:devices]
    elif isinstance(devices, Sequence) and devices and all(
            isinstance(d, jax.Device) for d in devices):
        chosen = list(devices)
    else:
        raise TypeError(
            f"make_mesh: devices must be an int, a non-empty sequence of jax devices or None, "
            f"got {devices!r}")
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"make_mesh: axis must be a non-empty str, got {axis!r}")
    return Mesh(np.array(chosen), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def param_spec(shape: Sequence[int], n: int, axis: str = "data") -> PartitionSpec:
    """Where a parameter-like leaf of `shape` goes under `shard_params=True`: split along
    its largest dimension that `n` divides (the first such, on ties), else replicated."""
    best = None
    for d, size in enumerate(shape):
        if size >= n and size % n == 0 and (best is None or size > shape[best]):
            best = d
    if best is None or n == 1:
        return PartitionSpec()
    return PartitionSpec(*([None] * best + [axis]))


def _mesh_axis(mesh: Any) -> str:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"DataParallel: mesh must be a jax.sharding.Mesh (fdl.parallel.make_mesh), "
                        f"got {type(mesh).__name__}")
    if len(mesh.axis_names) != 1:
        raise ValueError(f"DataParallel: mesh must have one axis, got axes {mesh.axis_names}")
    return mesh.axis_names[0]


class DataParallel(Trainer):
    """A `fdl.train.Trainer` whose batches are split across the devices of `mesh`.

    Args:
      model, optimizer, loss, compute_dtype, loss_scale, eval_params: as for
        `fdl.train.Trainer`.
      mesh: a one-axis `jax.sharding.Mesh` (`make_mesh`).
      shard_params: store parameters and optimizer state split across the mesh
        (FSDP) instead of replicated.
    """

    def __init__(self, model: Layer, optimizer: Optimizer, mesh: Mesh, *,
                 shard_params: bool = False, **trainer_options: Any) -> None:
        self.axis = _mesh_axis(mesh)
        if not isinstance(shard_params, bool):
            raise TypeError(f"DataParallel: shard_params must be a bool, got {shard_params!r}")
        self.mesh, self.shard_params = mesh, shard_params
        self.n = int(mesh.devices.size)
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self._split = NamedSharding(mesh, PartitionSpec(self.axis))
        super().__init__(model, optimizer, **trainer_options)
        self._placed_inits: dict[tuple, Any] = {}  # (input shape, key dtype) -> jitted init

    def _check_key(self, key: Any) -> None:
        """Refuse a philox2x32 key on several devices: JAX's Shardy partitioner cannot
        lower its `mulhi` ("Unable to convert MHLO to StableHLO"), so the program would
        fail to compile with an internal error."""
        if self.n > 1 and getattr(key, "dtype", None) == _PHILOX_DTYPE:
            raise ValueError(
                f"DataParallel: the state's key is a philox2x32 key (fdl.random.key), which "
                f"this JAX cannot compile across {self.n} devices; make the key with "
                "jax.random.key(seed) (threefry2x32) for data-parallel runs")

    # -- where things live ---------------------------------------------------

    @property
    def default_key_impl(self) -> str:
        """threefry2x32: JAX cannot partition philox2x32 (see :meth:`supports_key_impl`)."""
        return "threefry2x32"

    def supports_key_impl(self, impl: str) -> bool:
        """Not philox2x32, which this JAX cannot compile across devices."""
        return impl != "philox2x32"

    def placement(self) -> str:
        """How batches (and, with `shard_params`, the state) are split."""
        return (f"data parallel: each batch split across {self.n} {jax.default_backend()} "
                "devices" + (", parameters and optimizer state sharded"
                             if self.shard_params else ""))

    def memory_needed(self, ts: TrainState) -> int:
        """`Trainer.memory_needed` per device: a sharded leaf counts its shard."""
        def per_device(leaf: Any, sharding: NamedSharding) -> int:
            return _nbytes(leaf, tuple(sharding.shard_shape(tuple(leaf.shape))))
        shardings = self.state_shardings(ts)
        sizes = jax.tree_util.tree_map(per_device, ts, shardings)
        params = jax.tree_util.tree_map(per_device, ts.params, shardings.params)
        return sum(jax.tree_util.tree_leaves(sizes)) + 2 * sum(jax.tree_util.tree_leaves(params))

    def _devices_sharing_memory(self) -> int:
        return sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)

    def state_shardings(self, ts: TrainState) -> TrainState:
        """The `NamedSharding` of every leaf of `ts` (a state or its shapes)."""
        def place(leaf: Any) -> NamedSharding:
            shape = getattr(leaf, "shape", ())
            if not self.shard_params or jax.dtypes.issubdtype(
                    getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
                return self._replicated
            return NamedSharding(self.mesh, param_spec(shape, self.n, self.axis))
        return jax.tree_util.tree_map(place, ts)

    def abstract_state(self, input_shape: tuple[int, ...], *, key: Any = None) -> TrainState:
        """Shapes, dtypes and shardings of `init(key, input_shape)`: a template for
        `fdl.io.load(path, like=...)` that restores a checkpoint onto this mesh (`key` as
        for `Trainer.abstract_state`: the kind of key `init` gets)."""
        shapes = super().abstract_state(input_shape, key=key)
        return jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            shapes, self.state_shardings(shapes))

    def init(self, key: jax.Array, input_shape: tuple[int, ...]) -> TrainState:
        """A fresh state, created directly in its place on the mesh."""
        self._check_key(key)
        shape = _input_shape(input_shape, "DataParallel.init")
        _check_key(key, "DataParallel.init")
        self.check_memory(self.abstract_state(shape, key=key))
        signature = (shape, str(key.dtype))  # the key's implementation shapes the state
        if signature not in self._placed_inits:
            shardings = self.state_shardings(Trainer.abstract_state(self, shape, key=key))
            self._placed_inits[signature] = jax.jit(self._init_impl, static_argnums=(1,),
                                                    out_shardings=shardings)
        return _allocated(lambda: self._placed_inits[signature](key, shape))

    def place(self, ts: TrainState) -> TrainState:
        """Move a state (e.g. loaded from a checkpoint to the host) onto the mesh."""
        return jax.device_put(ts, self.state_shardings(ts))

    def place_data(self, x: Any) -> jax.Array:
        """Data on the mesh: split along the first axis when `n` divides it, else replicated."""
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        n_rows = int(np.shape(x)[0]) if np.ndim(x) else 0
        target = self._split if n_rows and n_rows % self.n == 0 else self._replicated
        if isinstance(x, jax.Array) and x.sharding == target:
            return x
        if jax.process_count() > 1:  # every process holds all of x; each places its part
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, target, lambda index: host[index])
        return jax.device_put(x, target)

    # -- the compiled pieces, with the batch pinned to the data axis ---------

    def _step_impl(self, ts: TrainState, x: jax.Array, y: jax.Array
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        constrain = jax.lax.with_sharding_constraint
        x, y = constrain(x, self._split), constrain(y, self._split)
        new, metrics = super()._step_impl(ts, x, y)
        return constrain(new, self.state_shardings(new)), metrics

    def _check_batch_size(self, x: Any, batch_size: Any) -> None:
        super()._check_batch_size(x, batch_size)
        if batch_size % self.n:
            raise ValueError(
                f"batch_size must be divisible by the number of devices ({self.n}) to split "
                f"each batch evenly, got {batch_size}; use a multiple of {self.n}, e.g. "
                f"{max(self.n, batch_size // self.n * self.n)}")

    # -- the public entry points place their inputs first --------------------

    def step(self, ts: TrainState, x: Any, y: Any) -> tuple[TrainState, dict[str, Any]]:
        """`Trainer.step` on a batch split across the mesh."""
        self._check_key(ts.key)
        self._check_batch_size(x, int(np.shape(x)[0]))
        return super().step(ts, self.place_data(x), self.place_data(y))

    def epoch(self, ts: TrainState, x: Any, y: Any, *, batch_size: int
              ) -> tuple[TrainState, dict[str, float]]:
        """`Trainer.epoch` with the data placed on the mesh."""
        self._check_key(ts.key)
        self._check_batch_size(x, batch_size)
        return super().epoch(ts, self.place_data(x), self.place_data(y), batch_size=batch_size)

    def evaluate(self, ts: TrainState, x: Any, y: Any) -> dict[str, float]:
        """`Trainer.evaluate` with the data placed on the mesh."""
        return super().evaluate(ts, self.place_data(x), self.place_data(y))

    def compile(self, ts: TrainState, x: Any, y: Any, *, batch_size: int, x_test: Any = None,
                y_test: Any = None, wait: bool = True) -> None:
        """`Trainer.compile` for the placed data (the programs the calls will use)."""
        self._check_key(ts.key)
        self._check_batch_size(x, batch_size)
        placed = [None if a is None else self.place_data(a) for a in (x, y, x_test, y_test)]
        super().compile(ts, placed[0], placed[1], batch_size=batch_size, x_test=placed[2],
                        y_test=placed[3], wait=wait)


def save_state(path: str | os.PathLike[str], ts: PyTree, *, metadata: Any = None) -> None:
    """Save a (possibly sharded) state with `fdl.io.save`: gathered to the host, written by
    process 0 only. Restore with `fdl.io.load(path, like=trainer.abstract_state(shape))`
    on any mesh, or without `like` on one device."""
    def to_host(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils
            return multihost_utils.process_allgather(leaf, tiled=True)
        return leaf
    gathered = jax.tree_util.tree_map(to_host, ts)
    if jax.process_index() == 0:
        io.save(path, gathered, metadata=metadata)

