"""Training: a jitted step, the epoch as one ``lax.scan``, evaluation, history.

The contract
------------
::

    trainer = fdl.train.Trainer(model, optimizer, loss=fdl.losses.softmax_cross_entropy)
    ts = trainer.init(key, input_shape)                 # TrainState
    ts, metrics = trainer.step(ts, x_batch, y_batch)    # one jitted step
    ts, metrics = trainer.epoch(ts, x_train, y_train, batch_size=64)
    scores = trainer.evaluate(ts, x_test, y_test)       # {"loss", "accuracy"}

* :class:`TrainState` ``(params, model_state, opt_state, step, epoch, key)`` is a
  pytree: it goes through ``jit`` and checkpoints (:mod:`fdl.io`) unchanged.
* An epoch is ONE compiled program: the shuffle (from ``fold_in(key, epoch)``)
  and every step run inside ``lax.scan``, on data already on the device, with the
  incoming state's buffers donated. The host syncs once per epoch.
* Every step's randomness (dropout) is folded from ``(key, step)``, each epoch's
  shuffle from ``(key, epoch)``: training is a pure
  function of the seed, so resuming from a checkpoint at an epoch boundary gives
  bitwise the same parameters as training straight through.
* A non-finite loss or gradient stops training: the epoch stops updating at the
  first bad step and :class:`NonFiniteError` names that step and the first
  parameter whose gradient was not finite; the error carries the last good state
  (``err.state``). The epoch's parameters are checked once more at its end: an update
  that made a parameter non-finite although its gradient was finite (a learning rate
  too large) raises :class:`NonFiniteError` too, naming the parameter, so no
  non-finite parameter leaves :meth:`Trainer.epoch` or reaches :func:`fit`'s
  ``on_epoch`` (its checkpoints). :func:`fit` also stops at the first non-finite
  evaluation.
* Mixed precision: ``Trainer(..., compute_dtype=jnp.bfloat16 | jnp.float16)`` runs the
  forward and backward in that dtype on float32 master weights; float16 scales the loss
  dynamically (:func:`fdl.optim.dynamic_loss_scale`, its state inside ``ts.opt_state``),
  skipping the steps whose gradients overflow.
* Evaluation parameters: ``Trainer(..., eval_params=fn)`` evaluates at
  ``fn(opt_state)`` (Schedule-Free's average, an EMA, Lookahead's slow weights).

:func:`fit` runs the whole loop (optional gradient check, progress, history,
checkpoints); :func:`per_example_grads` gives one gradient per example by ``vmap``.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fdl import losses
from fdl import random as fdl_random
from fdl._validate import first_out_of_range
from fdl.data.batching import shuffled_batches
from fdl.layers.base import Layer
from fdl.optim.base import Optimizer, apply_updates
from fdl.optim.loss_scaling import dynamic_loss_scale
from fdl.modes import get_gradient_mode

__all__ = [
    "History",
    "compiler_options",
    "ConsumedStateError",
    "NonFiniteError",
    "OutOfMemoryError",
    "TrainState",
    "Trainer",
    "available_memory",
    "fit",
    "non_finite_leaves",
    "per_example_grads",
]

PyTree = Any


class TrainState(NamedTuple):
    """Everything training changes, as one pytree.

    Attributes:
      params: the model's parameters (pytree of float arrays).
      model_state: the model's non-differentiated state (BatchNorm statistics).
      opt_state: the optimizer's state.
      step: int32[], optimizer steps taken.
      epoch: int32[], epochs completed.
      key: the run's base PRNG key (never advanced: randomness is ``fold_in``).
    """

    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    step: jax.Array
    epoch: jax.Array
    key: jax.Array


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or gradient (the message says where)."""


class OutOfMemoryError(MemoryError):
    """The training state does not fit in the memory there is (raised before allocating
    when the estimate says so, or when an allocation fails)."""


class ConsumedStateError(ValueError):
    """A :class:`TrainState` whose buffers a training call already consumed (donated)."""


def _check_not_consumed(ts: Any, where: str) -> None:
    """Refuse a state whose buffers an earlier :meth:`Trainer.step`, :meth:`Trainer.epoch`
    or :func:`fit` donated (XLA would say only "Buffer has been deleted or donated")."""
    for leaf in jax.tree_util.tree_leaves(ts):
        if isinstance(leaf, jax.Array) and leaf.is_deleted():
            raise ConsumedStateError(
                f"{where}: this TrainState was consumed by an earlier fit, Trainer.epoch or "
                "Trainer.step call, which donate the state they are given to reuse its "
                "memory; continue from the state that call returned (ts, history = fit(...)), "
                "or keep a copy before it (saved = jax.tree.map(jnp.copy, ts))")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def available_memory() -> tuple[int, str] | None:
    """The memory one device of JAX's default backend can still allocate, in bytes,
    and where that figure comes from; ``None`` where neither JAX nor the system says.

    On an accelerator: the device's allocator limit minus what is in use
    (``Device.memory_stats()``). On the CPU: the host's ``MemAvailable``
    (``/proc/meminfo``), else free physical pages (``os.sysconf``).
    """
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return free, f"{device.platform} device {device.id}'s limit less its use"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "the host's MemAvailable"
    except OSError:
        pass
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return int(pages) * int(size), "free host memory"
    except (ValueError, OSError, AttributeError):
        return None


def _nbytes(leaf: Any, shape: tuple[int, ...] | None = None) -> int:
    """Bytes of one array (or ``jax.ShapeDtypeStruct``); ``shape`` overrides its own."""
    shape = tuple(jnp.shape(leaf)) if shape is None else shape
    return math.prod(shape) * leaf.dtype.itemsize  # (a key dtype has an itemsize too)


def non_finite_leaves(tree: PyTree) -> list[tuple[str, int, int]]:
    """``(leaf name, how many elements are NaN or ±inf, its size)`` for every float leaf
    of ``tree`` that is not all finite (in leaf order; ``[]`` when all are). Computed on
    the host: use it on a loaded checkpoint, not inside ``jit``."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        count = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf))))
        if count:
            bad.append((jax.tree_util.keystr(path), count, int(np.size(leaf))))
    return bad


@functools.cache
def compiler_options() -> dict[str, Any] | None:
    """The XLA options :class:`Trainer` compiles its programs with (``None``: XLA's defaults).

    On CPU: copy insertion with region analysis
    (``xla_cpu_copy_insertion_use_region_analysis``). A training step reads each weight
    (for the backward) and writes its update into the same donated buffer; XLA's default
    analysis cannot prove the read happens first and copies the weight every step (the
    4096×4096 weight of benchmark C: 64 MB per step, in every JAX peer too). With region
    analysis the copy goes: steps 3.8% faster on B, 1.4% on C (interleaved, one process).
    Off the CPU, or where this XLA does not know the option (checked once, by compiling
    an identity), ``None``. Use it for your own jitted steps:
    ``jax.jit(step, donate_argnums=0, compiler_options=fdl.train.compiler_options())``.
    """
    if jax.default_backend() != "cpu":
        return None
    options = {"xla_cpu_copy_insertion_use_region_analysis": True}
    try:
        jax.jit(lambda a: a, compiler_options=options).lower(np.float32(0)).compile()
    except Exception:  # an XLA without the option: its defaults
        return None
    return options


def _all_finite(g: jax.Array) -> jax.Array:
    """Whether every element of ``g`` is finite, as one fused reduction: ``g − g`` is 0
    where ``g`` is finite and NaN where it is ±inf or NaN, and a sum is NaN iff a term
    is (no overflow: the terms are zeros). Written without a constant operand, which
    XLA:CPU would materialise as a buffer of zeros the size of ``g`` at every step."""
    return jnp.isfinite(jnp.sum(g - g))


def _leaves_finite(tree: PyTree) -> jax.Array:
    """One flag per leaf of ``tree``, in leaf order: whether it is all finite."""
    flags = [_all_finite(a) for a in jax.tree_util.tree_leaves(tree)]
    return jnp.stack(flags) if flags else jnp.ones((0,), bool)


def _leaf_names(tree: PyTree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The share of rows whose largest output is the label: integer labels (one per row
    of outputs), or one-hot / probability targets of the outputs' shape, whose largest
    entry is the class. NaN for any other target (a regression's)."""
    if jnp.issubdtype(labels.dtype, jnp.integer) and logits.ndim == labels.ndim + 1:
        return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    if jnp.issubdtype(labels.dtype, jnp.floating) and logits.shape == labels.shape \
            and logits.ndim >= 2:
        hits = jnp.argmax(logits, axis=-1) == jnp.argmax(labels, axis=-1)
        return jnp.mean(hits.astype(jnp.float32))
    return jnp.array(jnp.nan, jnp.float32)


@dataclass
class History:
    """Per-epoch metrics: ``history.records[i]`` is a dict for epoch ``i + 1``."""

    records: list[dict[str, float]] = field(default_factory=list)

    def append(self, record: dict[str, float]) -> None:
        self.records.append(record)

    def __getitem__(self, metric: str) -> list[float]:
        return [r[metric] for r in self.records if metric in r]

    def __len__(self) -> int:
        return len(self.records)


class Trainer:
    """Compiled training and evaluation for one model, loss and optimizer.

    Args:
      model: a :class:`fdl.layers.Layer`.
      optimizer: a :class:`fdl.optim.Optimizer`.
      loss: ``loss(outputs, targets) -> scalar`` (default softmax cross-entropy on
        logits and integer labels).
      compute_dtype: dtype for the forward/backward (``jnp.bfloat16`` or
        ``jnp.float16``); params and optimizer state stay in their own dtype (mixed
        precision: the float32 master weights are cast down for each step, the
        outputs cast up to float32 for the loss, the gradients cast back up).
      loss_scale: how the loss is scaled before differentiation, so that float16
        gradients neither underflow nor overflow. ``"dynamic"`` (the default for
        ``compute_dtype=float16``): the optimizer is wrapped in
        :func:`fdl.optim.dynamic_loss_scale` and the loss multiplied by its scale
        $S$; a step whose gradients overflow is skipped (params and optimizer state
        unchanged, $S$ halved, ``skipped`` counted) and $S$ doubles after
        ``growth_interval`` good steps. Its state (``ts.opt_state``, a
        :class:`fdl.optim.DynamicLossScaleState` around the optimizer's own state) is
        part of the :class:`TrainState`, so checkpoints keep it. A dict of
        :func:`fdl.optim.dynamic_loss_scale` keyword arguments (``init_scale``,
        ``growth_interval``, ``growth_factor``, ``backoff_factor``, ``min_scale``):
        dynamic with those settings. A number $S > 0$: a fixed scale (the loss times
        $S$, the gradients divided by $S$ in float32; an overflow stops training like
        any non-finite gradient). ``None`` (the default otherwise): no scaling.
        With dynamic scaling only a non-finite loss, or gradients that overflow at
        the smallest scale (``min_scale``), count as non-finite (:class:`NonFiniteError`).
      eval_params: where the optimizer's evaluation point differs from its training
        point, a function ``eval_params(opt_state) -> params`` giving the parameters
        that :meth:`evaluate` (and so :func:`fit`'s test metrics) uses, a pytree like
        the params (cast to their dtypes). ``opt_state`` is the optimizer's own state
        (inside the loss-scale state, when the trainer added one). For
        Schedule-Free AdamW: ``fdl.optim.schedule_free_eval_params``; for
        :func:`fdl.optim.ema_params`: ``lambda s: s.ema``; for
        :func:`fdl.optim.lookahead`: ``lambda s: s.slow``. Default: the params.
        :meth:`evaluation_params` gives them for inference.
    """

    def __init__(self, model: Layer, optimizer: Optimizer, *,
                 loss: Callable[[jax.Array, jax.Array], jax.Array] = losses.softmax_cross_entropy,
                 compute_dtype: Any = None, loss_scale: Any = "default",
                 eval_params: Callable[[PyTree], PyTree] | None = None) -> None:
        if not isinstance(model, Layer):
            raise TypeError(f"Trainer: model must be an fdl.layers.Layer, got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"Trainer: optimizer must be an fdl.optim.Optimizer, got {type(optimizer).__name__}")
        if not callable(loss):
            raise TypeError(f"Trainer: loss must be a function loss(outputs, targets) -> "
                            f"scalar, such as fdl.losses.softmax_cross_entropy, got {loss!r}")
        if eval_params is not None and not callable(eval_params):
            raise TypeError("Trainer: eval_params must be a function opt_state -> params "
                            "(such as fdl.optim.schedule_free_eval_params) or None, got "
                            f"{eval_params!r}")
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.compute_dtype = None if compute_dtype is None else _float_dtype(compute_dtype)
        self.eval_params = eval_params
        self.loss_scale, scaling = _loss_scale(loss_scale, self.compute_dtype)
        self._min_scale = scaling.get("min_scale", 1.0) if scaling is not None else None
        self._optimizer = optimizer if scaling is None else dynamic_loss_scale(optimizer, **scaling)
        opts = compiler_options()
        self._epoch = jax.jit(self._epoch_impl, static_argnames=("batch_size",),
                              donate_argnums=(0,), compiler_options=opts)
        self._step = jax.jit(self._step_impl, donate_argnums=(0,), compiler_options=opts)
        self._evaluate = jax.jit(self._evaluate_impl, compiler_options=opts)
        self._init = jax.jit(self._init_impl, static_argnums=(1,), compiler_options=opts)
        self._pending: list[Future] = []  # compilations started by compile(wait=False)
        self._compiled: set = set()  # signatures already compiled by compile()

    # -- where it runs --------------------------------------------------------

    @property
    def default_key_impl(self) -> str:
        """The ``jax.random`` implementation of the keys made for this trainer from a seed
        (``fdl train --seed``): fdl's fast generator, :data:`fdl.random.IMPL`."""
        return fdl_random.IMPL

    def supports_key_impl(self, impl: str) -> bool:
        """Whether this trainer can run a state whose key has implementation ``impl``
        (one device: any)."""
        return True

    def placement(self) -> str:
        """One line saying where the state and batches live ("" on one device)."""
        return ""

    def memory_needed(self, ts: TrainState) -> int:
        """Bytes one device holds to train ``ts`` (a state or its shapes): the whole
        state, plus the gradients and the updates (one params-sized tree each). A lower
        bound: activations and XLA's scratch space come on top."""
        params = sum(_nbytes(a) for a in jax.tree_util.tree_leaves(ts.params))
        return sum(_nbytes(a) for a in jax.tree_util.tree_leaves(ts)) + 2 * params

    def _devices_sharing_memory(self) -> int:
        """How many of the devices this process uses share one memory (CPU devices share
        the host's)."""
        return 1

    def check_memory(self, ts: TrainState) -> None:
        """Refuse, before anything is allocated, a state that cannot fit: raises
        :class:`OutOfMemoryError` when :meth:`memory_needed` exceeds the memory that
        :func:`available_memory` reports (nothing is checked where it reports nothing)."""
        free = available_memory()
        if free is None:
            return
        shared = self._devices_sharing_memory() if jax.default_backend() == "cpu" else 1
        need = self.memory_needed(ts) * shared
        if need > free[0]:
            n_params = sum(math.prod(jnp.shape(a)) for a in jax.tree_util.tree_leaves(ts.params))
            raise OutOfMemoryError(
                f"Trainer: the model has {n_params:,} parameters; training it needs at least "
                f"{_gb(need)} (parameters, optimizer state, gradients) but "
                f"only {_gb(free[0])} is free ({free[1]}); use smaller layers")

    # -- pieces --------------------------------------------------------------

    def init(self, key: jax.Array, input_shape: tuple[int, ...]) -> TrainState:
        """A fresh :class:`TrainState`: params from ``key``, optimizer state, step 0.

        Runs as one compiled program (not op by op), which keeps start-up short; under
        ``jit`` or ``vmap`` (``jax.vmap(lambda k: trainer.init(k, shape))(keys)`` makes
        an ensemble) it is part of the caller's program instead. The
        state's memory is checked first (:meth:`check_memory`) and the call waits for
        the allocation, so a model too large for the device raises
        :class:`OutOfMemoryError` here, never later.
        """
        shape = _input_shape(input_shape, "Trainer.init")
        _check_key(key, "Trainer.init")
        if isinstance(key, jax.core.Tracer):  # under jit or vmap (an ensemble of states):
            return self._init_impl(key, shape)  # part of the caller's program
        self.check_memory(self.abstract_state(shape, key=key))
        return _allocated(lambda: self._init(key, shape))

    def abstract_state(self, input_shape: tuple[int, ...], *, key: Any = None) -> TrainState:
        """The shapes and dtypes of ``init(key, input_shape)`` (``jax.ShapeDtypeStruct``
        leaves), computed without running or compiling anything: what :meth:`compile`
        needs to start before the state exists, and the template a checkpoint is loaded
        into.

        ``key`` (a key or its ``jax.ShapeDtypeStruct``) is the kind of key ``init`` will
        get: its implementation decides the state's key leaf. Default: a
        ``jax.random.key`` of JAX's default implementation.
        """
        shape = _input_shape(input_shape, "Trainer.abstract_state")
        if key is not None and not isinstance(key, jax.ShapeDtypeStruct):
            _check_key(key, "Trainer.abstract_state")
        key = jax.eval_shape(jax.random.key, 0) if key is None else \
            jax.ShapeDtypeStruct(jnp.shape(key), key.dtype)
        return jax.eval_shape(lambda k: self._init_impl(k, shape), key)

    def compile(self, ts: TrainState, x: Any, y: Any, *, batch_size: int, x_test: Any = None,
                y_test: Any = None, wait: bool = True) -> None:
        """Compile the epoch program (and the evaluation program, given test data) ahead
        of their first call, concurrently, in background threads.

        XLA leaves cores idle during parts of each compilation; compiling the epoch and
        evaluation programs side by side, and (with ``wait=False``) while :meth:`init`
        compiles its own, overlaps them, which is what keeps ``fdl train``'s start-up
        short. Later calls of
        :meth:`epoch` and :meth:`evaluate` with the same shapes reuse the programs.

        Args:
          ts: a :class:`TrainState`, or its shapes (:meth:`abstract_state`).
          x, y: training data (arrays, or ``jax.ShapeDtypeStruct``), as :meth:`epoch` gets it.
          batch_size: as :meth:`epoch` gets it.
          x_test, y_test: optional evaluation data, as :meth:`evaluate` gets it.
          wait: block until compiled (default); ``False`` returns at once, and the
            next :meth:`epoch`, :meth:`evaluate` or :meth:`compile` waits first
            (re-raising any compilation error there).
        """
        self._check_batch_size(x, batch_size)
        jobs = [(("epoch", _signature((ts, x, y)), batch_size),
                 lambda: self._epoch.lower(ts, x, y, batch_size=batch_size))]
        if x_test is not None and y_test is not None:
            jobs.append((("evaluate", _signature((ts, x_test, y_test))),
                         lambda: self._evaluate.lower(ts, x_test, y_test)))
        self._wait_for_compilation()
        futures = []
        pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="fdl-compile")
        for signature, lower in jobs:
            if signature in self._compiled:
                continue
            lowered = lower()  # tracing holds the GIL: done here, in order
            futures.append(pool.submit(lowered.compile))  # XLA releases it
            self._compiled.add(signature)
        pool.shutdown(wait=False)
        self._pending.extend(futures)
        if wait:
            self._wait_for_compilation()

    def _wait_for_compilation(self) -> None:
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def _init_impl(self, key: jax.Array, input_shape: tuple[int, ...]) -> TrainState:
        init_key, run_key = jax.random.split(key)
        _, params, model_state = self.model.init(init_key, input_shape)
        return TrainState(params, model_state, self._optimizer.init(params),
                          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), run_key)

    def _cast(self, tree: PyTree) -> PyTree:
        if self.compute_dtype is None:
            return tree
        return jax.tree_util.tree_map(
            lambda a: a.astype(self.compute_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            tree)

    def loss_fn(self, params: PyTree, model_state: PyTree, x: jax.Array, y: jax.Array, *,
                key: jax.Array | None = None, train: bool = True
                ) -> tuple[jax.Array, tuple[PyTree, jax.Array]]:
        """``(loss, (new_model_state, outputs))`` for one batch; differentiable in params."""
        out, new_state = self.model.apply(self._cast(params), model_state, self._cast(x),
                                          key=key, train=train)
        return self.loss(out.astype(jnp.float32) if self.compute_dtype is not None else out,
                         y), (new_state, out)

    def _step_impl(self, ts: TrainState, x: jax.Array, y: jax.Array
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(jax.random.fold_in(ts.key, 2), ts.step)
        dynamic = self._min_scale is not None
        scale = ts.opt_state.scale if dynamic else self.loss_scale  # None: no scaling

        def scaled_loss(params):
            loss, aux = self.loss_fn(params, ts.model_state, x, y, key=key, train=True)
            return (loss if scale is None else loss * jnp.asarray(scale, loss.dtype)), (loss, aux)

        (_, (loss, (model_state, out))), grads = jax.value_and_grad(
            scaled_loss, has_aux=True)(ts.params)
        if scale is not None and not dynamic:  # a fixed scale: unscaled here, in float32
            grads = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32) / scale, grads)
        grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, ts.params)
        updates, opt_state = self._optimizer.update(grads, ts.opt_state, ts.params)
        params = apply_updates(ts.params, updates)
        finite = [_all_finite(g) for g in jax.tree_util.tree_leaves(grads)]
        if dynamic:  # an overflow is skipped by the loss scale, until it is at its least
            finite = [ok | (ts.opt_state.scale > self._min_scale) for ok in finite]
        finite = jnp.stack(finite + [jnp.isfinite(loss)])
        new = TrainState(params, model_state, opt_state, ts.step + 1, ts.epoch, ts.key)
        return new, {"loss": loss, "accuracy": _accuracy(out, y), "finite": finite,
                     "all_finite": jnp.all(finite)}

    def _epoch_impl(self, ts: TrainState, x: jax.Array, y: jax.Array, *, batch_size: int
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
        shuffle_key = jax.random.fold_in(jax.random.fold_in(ts.key, 1), ts.epoch)
        xb, yb = shuffled_batches(shuffle_key, (x, y), batch_size)

        def body(carry, batch):
            ts, bad_step, bad_flags = carry
            new, m = self._step_impl(ts, *batch)
            ok = jnp.all(m["finite"])
            first_bad = (bad_step < 0) & ~ok
            bad_flags = jnp.where(first_bad, m["finite"], bad_flags)
            bad_step = jnp.where(first_bad, ts.step, bad_step)
            # after the first non-finite step, keep the last good state
            keep = bad_step >= 0
            ts = jax.tree_util.tree_map(lambda old, nw: jnp.where(keep, old, nw), ts, new)
            return (ts, bad_step, bad_flags), {"loss": m["loss"], "accuracy": m["accuracy"]}

        n_flags = len(jax.tree_util.tree_leaves(ts.params)) + 1
        init = (ts, jnp.array(-1, jnp.int32), jnp.ones((n_flags,), bool))
        (ts, bad_step, bad_flags), metrics = jax.lax.scan(body, init, (xb, yb))
        ts = ts._replace(epoch=ts.epoch + 1)
        # once per epoch, off the per-step path: an update can overflow a parameter
        # although every gradient was finite
        return ts, {"loss": jnp.mean(metrics["loss"]), "accuracy": jnp.mean(metrics["accuracy"]),
                    "bad_step": bad_step, "bad_flags": bad_flags,
                    "params_finite": _leaves_finite(ts.params)}

    def _evaluate_impl(self, ts: TrainState, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        loss, (_, out) = self.loss_fn(self.evaluation_params(ts), ts.model_state, x, y,
                                      train=False)
        return {"loss": loss, "accuracy": _accuracy(out, y)}

    # -- public API ----------------------------------------------------------

    def evaluation_params(self, ts: TrainState) -> PyTree:
        """The parameters :meth:`evaluate` uses: ``eval_params(opt_state)`` (cast to the
        params' dtypes) when the trainer has one, else ``ts.params``. Use them for
        inference too (Schedule-Free's average, the EMA, Lookahead's slow weights)."""
        if self.eval_params is None:
            return ts.params
        opt_state = ts.opt_state
        if self._min_scale is not None:  # the trainer's loss-scale wrapper: look inside
            opt_state = opt_state.inner_state
        got = self.eval_params(opt_state)
        want = jax.tree_util.tree_structure(ts.params)
        shapes = lambda t: [jnp.shape(a) for a in jax.tree_util.tree_leaves(t)]  # noqa: E731
        if jax.tree_util.tree_structure(got) != want or shapes(got) != shapes(ts.params):
            raise TypeError(
                "Trainer: eval_params(opt_state) must return a pytree like the params "
                f"(structure {want}, shapes {shapes(ts.params)}), got structure "
                f"{jax.tree_util.tree_structure(got)}, shapes {shapes(got)}; for "
                "fdl.optim.ema_params use lambda s: s.ema, for lookahead lambda s: s.slow")
        return jax.tree_util.tree_map(lambda a, p: jnp.asarray(a).astype(p.dtype), got,
                                      ts.params)


    def step(self, ts: TrainState, x: jax.Array, y: jax.Array
             ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One jitted optimizer step on one batch (``ts`` is donated: do not reuse it;
        reusing it raises :class:`ConsumedStateError`)."""
        _check_not_consumed(ts, "Trainer.step")
        ts, m = self._step(ts, x, y)
        if not bool(m["all_finite"]):  # one scalar transfer, no eager op
            raise NonFiniteError(self._describe_bad(int(ts.step) - 1, m["finite"], ts.params))
        return ts, {"loss": m["loss"], "accuracy": m["accuracy"]}

    def epoch(self, ts: TrainState, x: jax.Array, y: jax.Array, *, batch_size: int
              ) -> tuple[TrainState, dict[str, float]]:
        """One epoch: shuffle, then every step, as one compiled ``lax.scan``.

        ``ts`` is donated (reusing it raises :class:`ConsumedStateError`). Returns the new state and the epoch's mean training
        loss and accuracy. Raises :class:`NonFiniteError` at the first step whose loss
        or gradient is not finite (the state returned in the error's ``state``
        attribute is the last good one), and when the epoch ends with a parameter
        that is not finite although every step's loss and gradient were (an update
        overflowed); ``err.state`` then holds those parameters, and the message says
        so.
        """
        self._check_batch_size(x, batch_size)
        _check_not_consumed(ts, "Trainer.epoch")
        self._wait_for_compilation()
        ts, m = self._epoch(ts, x, y, batch_size=batch_size)
        bad_step = int(m["bad_step"])
        params_ok = np.asarray(m["params_finite"])
        if bad_step >= 0 or not params_ok.all():
            steps = int(jnp.shape(x)[0]) // batch_size
            err = NonFiniteError(self._describe_bad_epoch(bad_step, m["bad_flags"], params_ok,
                                                          ts, steps))
            err.state = ts
            raise err
        return ts, {"loss": float(m["loss"]), "accuracy": float(m["accuracy"])}

    def evaluate(self, ts: TrainState, x: jax.Array, y: jax.Array) -> dict[str, float]:
        """Loss and accuracy of the model in inference mode (``train=False``), at
        :meth:`evaluation_params` (the params unless the trainer has ``eval_params``)."""
        _check_not_consumed(ts, "Trainer.evaluate")
        self._wait_for_compilation()
        m = self._evaluate(ts, x, y)
        return {k: float(v) for k, v in m.items()}

    @staticmethod
    def _check_batch_size(x: Any, batch_size: Any) -> None:
        n = int(jnp.shape(x)[0])
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
            raise ValueError(
                f"batch_size must be an int between 1 and the number of training examples "
                f"({n}), got {batch_size!r}")

    def _describe_bad_epoch(self, bad_step: int, flags: Any, params_ok: np.ndarray,
                            ts: TrainState, steps: int) -> str:
        """The message for an epoch that stopped at ``bad_step`` (``-1``: none) or ended
        with the parameters flagged in ``params_ok`` not finite."""
        names = _leaf_names(ts.params)
        bad_params = [n for n, ok in zip(names, params_ok) if not ok]
        if bad_step >= 0:
            message = self._describe_bad(bad_step, flags, ts.params)
            if bad_params:
                message += (f" The parameters were already not finite before step "
                            f"{bad_step} (params{bad_params[0]}): an earlier update "
                            "overflowed although its gradient was finite; err.state holds "
                            "them.")
            return message
        last = int(ts.step) - 1
        return (f"training stopped after step {last}: every loss and gradient of steps "
                f"{last - steps + 1}–{last} was finite, but an update made "
                f"params{bad_params[0]} not finite (err.state holds it). Lower the learning "
                "rate (or check the values of its schedule).")

    def _describe_bad(self, step: int, flags: Any, params: PyTree) -> str:
        flags = np.asarray(flags)
        names = _leaf_names(params)
        if not flags[-1]:
            what = "the loss was not finite"
        else:
            bad = [n for n, ok in zip(names, flags[:-1]) if not ok]
            what = f"the gradient of params{bad[0]} was not finite" if bad else "non-finite values"
            if bad and self._min_scale is not None:
                what += f" even at the smallest loss scale ({self._min_scale})"
        return (f"training stopped at step {step}: {what}. Lower the learning rate, check the "
                "inputs for NaN/inf, or clip gradients (fdl.optim.clip_by_global_norm).")


def _float_dtype(dtype: Any) -> jnp.dtype:
    """``compute_dtype`` as a floating dtype, else a ``TypeError`` naming it."""
    try:
        parsed = jnp.dtype(dtype)
    except TypeError:
        parsed = None
    if parsed is None or not jnp.issubdtype(parsed, jnp.floating):
        raise TypeError("Trainer: compute_dtype must be a floating dtype such as "
                        f"jnp.bfloat16 or 'float16' (or None), got {dtype!r}")
    return parsed


_LOSS_SCALE_OPTIONS = ("init_scale", "growth_interval", "growth_factor", "backoff_factor",
                       "min_scale")


def _loss_scale(option: Any, compute_dtype: Any) -> tuple[Any, dict | None]:
    """``(what Trainer.loss_scale holds, dynamic_loss_scale's keyword arguments or None)``
    for the ``loss_scale`` option; a ``TypeError``/``ValueError`` naming a bad one."""
    if isinstance(option, str) and option == "default":
        option = "dynamic" if compute_dtype == jnp.float16 else None
    if option is None:
        return None, None
    if isinstance(option, str) and option == "dynamic":
        return "dynamic", {}
    if isinstance(option, dict):
        unknown = sorted(set(map(str, option)) - set(_LOSS_SCALE_OPTIONS))
        if unknown:
            raise TypeError(f"Trainer: loss_scale as a dict holds dynamic_loss_scale's "
                            f"options {', '.join(_LOSS_SCALE_OPTIONS)}; got unknown "
                            f"{', '.join(unknown)}")
        return "dynamic", dict(option)
    number = isinstance(option, (int, float, np.integer, np.floating)) \
        and not isinstance(option, bool)
    if not number:
        raise TypeError("Trainer: loss_scale must be 'dynamic', a number > 0 (a fixed "
                        "scale), a dict of dynamic_loss_scale options, or None, got "
                        f"{option!r}")
    if not (math.isfinite(float(option)) and float(option) > 0):
        raise ValueError(f"Trainer: loss_scale must be a finite number > 0 (such as "
                         f"2.0**12), 'dynamic' or None, got {option!r}")
    return float(option), None


def _input_shape(shape: Any, where: str) -> tuple[int, ...]:
    """``shape`` as a tuple of ints ≥ 1, else a ``TypeError``/``ValueError`` naming it."""
    ok = isinstance(shape, (tuple, list)) and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape)
    if not ok:
        raise TypeError(f"{where}: input_shape must be a tuple of ints, the shape of one "
                        f"example without the batch axis (e.g. (64,) or (28, 28, 1)), got "
                        f"{shape!r}")
    return tuple(int(d) for d in shape)


def _check_key(key: Any, where: str) -> None:
    """A ``jax.random`` key: typed (``jax.random.key``) or legacy raw (``PRNGKey``)."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == jnp.uint32 and jnp.shape(key) == (2,)
    if not (typed and jnp.shape(key) == ()) and not raw:
        raise TypeError(f"{where}: key must be one jax.random key, such as "
                        f"jax.random.key(0) or fdl.random.key(0), got {key!r}")


def _allocated(make: Callable[[], Any]) -> Any:
    """``make()``, waited for, with an allocation failure raised as
    :class:`OutOfMemoryError` (an asynchronous one left pending would surface later,
    in another program, or not at all)."""
    try:
        return jax.block_until_ready(make())
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise OutOfMemoryError(f"Trainer.init: {str(e).splitlines()[0]}") from None


def _signature(tree: PyTree) -> tuple:
    """Structure, shapes and dtypes: what decides whether a jitted call recompiles."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return get_gradient_mode(), treedef, tuple((tuple(jnp.shape(a)), str(getattr(a, "dtype", type(a))))
                          for a in leaves)


def per_example_grads(loss_fn: Callable[..., jax.Array], params: PyTree, x: jax.Array,
                      y: jax.Array) -> PyTree:
    """One gradient per example: ``vmap`` over the batch of ``grad`` of the loss of one
    example (``loss_fn(params, x[None], y[None])``). Each leaf gains a leading batch axis.
    """
    def one(xi, yi):
        return jax.grad(loss_fn)(params, xi[None], yi[None])
    return jax.vmap(one)(x, y)


class _Progress:
    """A one-line epoch progress bar on stdout, shown only when stdout is a terminal.

    The bar is redrawn in place (``\\r``) and never exceeds 79 columns; :meth:`clear`
    blanks it, so a line printed right after (an epoch's results) starts on a clean
    line instead of being glued to the bar.
    """

    COLUMNS = 79

    def __init__(self, total: int, enabled: bool, stream: Any = None) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.total, self.start, self.shown = total, time.perf_counter(), 0
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and isatty is not None and isatty())

    def update(self, done: int, text: str) -> None:
        if not self.enabled:
            return
        width = 20
        filled = int(width * done / max(self.total, 1))
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(done, 1) * (self.total - done)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] epoch {done}/{self.total}  "
                f"{text}  eta {eta:.0f} s")[: self.COLUMNS]
        self.stream.write("\r" + line.ljust(self.shown))
        self.stream.flush()
        self.shown = len(line)

    def clear(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\r" + " " * self.shown + "\r")
            self.stream.flush()
            self.shown = 0


def _check_fit_labels(trainer: Trainer, ts: TrainState, x: Any, y: Any, name: str) -> None:
    """Integer labels for a classifier must index its outputs: checked on the host,
    because under ``jit`` a label of -1 or 12 is an all-zero one-hot that trains on
    nothing (or makes every evaluation NaN) instead of failing."""
    if jnp.ndim(x) < 1:
        return
    one = jax.ShapeDtypeStruct((1, *jnp.shape(x)[1:]), jnp.result_type(x))
    out = jax.eval_shape(lambda p, s, xb: trainer.model.apply(p, s, xb)[0],
                         ts.params, ts.model_state, one)
    if len(out.shape) != jnp.ndim(y) + 1:  # not one label per row of logits
        return
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise ValueError(f"fit: {name} holds {jnp.result_type(y)} values of shape "
                         f"{jnp.shape(y)}, one per example, but the model has "
                         f"{out.shape[-1]} outputs per example: class labels must be "
                         f"integers ({name}.astype(np.int32)), or give targets of the "
                         "outputs' shape (one-hot or probabilities)")
    n = out.shape[-1]
    bad = first_out_of_range(y, n)
    if bad is not None:
        value, index, low, high = bad
        where = ", ".join(map(str, index))
        raise ValueError(f"fit: {name}[{where}] is {value}, outside [0, {n}) for a model "
                         f"with {n} outputs ({name} ranges over [{low}, {high}]); fix the "
                         "labels or build the model's last layer with as many outputs as "
                         "there are classes")


def _check_finite_inputs(x: Any, name: str) -> None:
    """Float inputs must be finite: one NaN input makes its example's loss and every
    gradient NaN (checked on the host, once, before anything compiles)."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return
    values = np.asarray(x)
    finite = np.isfinite(values)
    if not finite.all():
        index = np.unravel_index(int(np.argmin(finite)), finite.shape)
        raise ValueError(f"fit: {name}[{', '.join(map(str, index))}] is "
                         f"{values[index]} ({finite.size - int(finite.sum())} "
                         "non-finite values in all); inputs must be finite: drop or impute "
                         "those examples first")


_INT32_MAX = 2**31 - 1  # TrainState counts steps and epochs in int32


def _check_fit_arguments(trainer: Trainer, ts: TrainState, epochs: Any, batch_size: Any,
                         x_train: Any, y_train: Any, x_test: Any, y_test: Any,
                         on_epoch: Any, should_stop: Any) -> None:
    """What :func:`fit` checks before anything compiles (its docstring lists it)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: epochs must be an int ≥ 0, got {epochs!r}")
    if (x_test is None) != (y_test is None):
        given, missing = ("x_test", "y_test") if y_test is None else ("y_test", "x_test")
        raise ValueError(f"fit: {given} was given without {missing}; pass both to evaluate "
                         "after every epoch, or neither")
    for name, f in (("on_epoch", on_epoch), ("should_stop", should_stop)):
        if f is not None and not callable(f):
            raise TypeError(f"fit: {name} must be a function (or None), got {f!r}")
    _check_not_consumed(ts, "fit")
    count = (lambda a: int(jnp.shape(a)[0]) if jnp.ndim(a) else 0)
    if isinstance(batch_size, int) and batch_size >= 1 and epochs:
        steps = int(ts.step) + epochs * (count(x_train) // batch_size)
        if max(steps, int(ts.epoch) + epochs) > _INT32_MAX:
            raise ValueError(f"fit: epochs={epochs} would take the state past "
                             f"{_INT32_MAX:,} steps or epochs, the most its int32 counters "
                             "hold (each step's dropout key is folded from its count, so a "
                             "wrapped count would repeat them); train fewer epochs")
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x is None:
            continue
        if count(x) != count(y):
            raise ValueError(f"fit: x_{split} has {count(x)} examples but y_{split} has "
                             f"{count(y)}; they must match (one target per example)")
        _check_finite_inputs(x, f"x_{split}")
        _check_fit_labels(trainer, ts, x, y, f"y_{split}")


def fit(trainer: Trainer, ts: TrainState, x_train: Any, y_train: Any, *, epochs: int,
        batch_size: int, x_test: Any = None, y_test: Any = None,
        on_epoch: Callable[[int, dict[str, float], TrainState], None] | None = None,
        progress: bool = True, should_stop: Callable[[], bool] | None = None,
        ) -> tuple[TrainState, History]:
    """Train for ``epochs`` more epochs (counted from ``ts.epoch``), evaluating on the
    test split after each.

    Checked first, on the host, before anything compiles (each a ``ValueError``): the
    inputs are finite; labels of a classifier (one per row of the model's outputs) are
    integers in ``[0, outputs)``; ``x_test`` and ``y_test`` come together; ``ts`` was not
    consumed by an earlier call (:class:`ConsumedStateError`). Targets of the outputs'
    shape (one-hot or probabilities) are accepted too: their accuracy counts the rows
    whose largest output is the target's largest entry.

    Args:
      trainer, ts: the :class:`Trainer` and the state to continue from (donated).
      x_train, y_train: training data (moved to the device once).
      epochs: number of epochs to run now (≥ 0).
      batch_size: examples per step.
      x_test, y_test: optional held-out data, evaluated after every epoch.
      on_epoch: called as ``on_epoch(epoch, record, ts)`` after each epoch (printing,
        checkpointing); ``epoch`` counts from 1 over the whole run.
      progress: show a progress bar when stdout is a terminal (cleared before each
        ``on_epoch`` call, so lines printed there start clean).
      should_stop: called before each epoch; when it returns true, ``fit`` returns
        at once with the epochs done so far (a caller's Ctrl-C handler sets it; the
        epoch is one compiled program, so epoch boundaries are where it can stop).

    Returns:
      The final state and the :class:`History` of this call's epochs.

    Raises:
      NonFiniteError: at the first non-finite training step (``err.state`` is the
        last good state), at the end of an epoch whose update made a parameter
        non-finite although every gradient was finite (``err.state`` holds it; that
        epoch never reaches ``on_epoch``), or at the first non-finite evaluation
        (``err.state`` is the state after that epoch, whose training steps were all
        finite); in each case ``err.history`` holds the epochs completed.
    """
    _check_fit_arguments(trainer, ts, epochs, batch_size, x_train, y_train, x_test, y_test,
                         on_epoch, should_stop)
    has_test = x_test is not None
    x_train, y_train = jax.device_put(x_train), jax.device_put(y_train)
    if has_test:
        x_test, y_test = jax.device_put(x_test), jax.device_put(y_test)
    if epochs:  # the epoch and evaluation programs compile side by side
        trainer.compile(ts, x_train, y_train, batch_size=batch_size,
                        x_test=x_test if has_test else None, y_test=y_test if has_test else None)
    history, bar = History(), _Progress(epochs, progress)
    try:
        for i in range(epochs):
            if should_stop is not None and should_stop():
                break
            t0 = time.perf_counter()
            try:
                ts, m = trainer.epoch(ts, x_train, y_train, batch_size=batch_size)
            except NonFiniteError as err:
                err.history = history
                raise
            record = {"epoch": int(ts.epoch), "train_loss": m["loss"],
                      "train_accuracy": m["accuracy"]}
            if has_test:
                ev = trainer.evaluate(ts, x_test, y_test)
                record |= {"test_loss": ev["loss"], "test_accuracy": ev["accuracy"]}
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            if has_test and not math.isfinite(record["test_loss"]):
                err = NonFiniteError(
                    f"fit: the evaluation after epoch {int(ts.epoch)} gave a non-finite "
                    f"test loss ({record['test_loss']}) although every training step was "
                    "finite; check x_test and y_test (NaN/inf inputs). err.state is the "
                    "state after that epoch, err.history the epochs done")
                err.state, err.history = ts, history
                raise err
            bar.clear()
            if on_epoch is not None:
                on_epoch(int(ts.epoch), record, ts)
            bar.update(i + 1, f"loss {m['loss']:.4f}")
    finally:
        bar.clear()
    return ts, history
