"""fdl.train: the compiled epoch, evaluation, resume, non-finite stop, per-example grads."""

from __future__ import annotations

import io
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import layers as L
from fdl import optim
from fdl.primitive import primitive
from fdl.train import NonFiniteError, Trainer, fit, per_example_grads
from conftest import FakeTerminal

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def digits():
    ds, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))
    return ds


def _small_trainer(dropout=0.2):
    return Trainer(L.mlp([32], 10, dropout=dropout), optim.adam(3e-3))


@pytest.mark.float32
def test_mlp_learns_digits(digits):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    ts, hist = fit(trainer, ts, digits.x_train, digits.y_train, epochs=15, batch_size=64,
                   x_test=digits.x_test, y_test=digits.y_test, progress=False)
    assert len(hist) == 15 and int(ts.epoch) == 15
    assert int(ts.step) == 15 * (digits.x_train.shape[0] // 64)
    assert hist["train_loss"][-1] < hist["train_loss"][0] / 5
    assert hist["test_accuracy"][-1] > 0.93
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(ts.params))


@pytest.mark.float32
def test_resume_is_bitwise_identical(digits, tmp_path):
    """Train 4 epochs straight vs 2 + checkpoint + load + 2: same bits."""
    x, y = digits.x_train[:512], digits.y_train[:512]
    trainer = _small_trainer(dropout=0.3)
    straight, _ = fit(trainer, trainer.init(KEY, digits.input_shape), x, y, epochs=4,
                      batch_size=32, progress=False)
    half, _ = fit(trainer, trainer.init(KEY, digits.input_shape), x, y, epochs=2,
                  batch_size=32, progress=False)
    path = tmp_path / "ck.npz"
    fdl.io.save(path, half)
    template = trainer.init(jax.random.key(123), digits.input_shape)
    resumed = fdl.io.load(path, like=template)
    resumed, _ = fit(trainer, resumed, x, y, epochs=2, batch_size=32, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
        a, b = (jax.random.key_data(a), jax.random.key_data(b)) if jnp.issubdtype(
            a.dtype, jax.dtypes.prng_key) else (a, b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_epoch_compiles_once(digits):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    x, y = jax.device_put(digits.x_train), jax.device_put(digits.y_train)
    ts, _ = trainer.epoch(ts, x, y, batch_size=64)
    ts, _ = trainer.epoch(ts, x, y, batch_size=64)
    assert trainer._epoch._cache_size() == 1


class _Compiles:
    """Counts XLA backend compilations (jax.monitoring events) while active."""

    def __init__(self):
        self.count, self.active = 0, False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, name, duration, **kwargs):
        if self.active and name == "/jax/core/compile/backend_compile_duration":
            self.count += 1


_COMPILES = _Compiles()


def _count_compiles(fn):
    """``(fn(), compilations during it)``; nests (an inner count does not reset the outer)."""
    outer, was_active = _COMPILES.count, _COMPILES.active
    _COMPILES.count, _COMPILES.active = 0, True
    try:
        out = fn()
    finally:
        inner = _COMPILES.count
        _COMPILES.count, _COMPILES.active = outer + inner, was_active
    return out, inner


def test_abstract_state_matches_init(digits):
    trainer = _small_trainer()
    abstract = trainer.abstract_state(digits.input_shape)
    ts = trainer.init(KEY, digits.input_shape)
    got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), abstract)
    want = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), ts)
    assert got == want


@pytest.mark.float32
def test_abstract_state_follows_the_key_implementation(digits):
    trainer = _small_trainer()
    key = jax.random.key(0, impl="philox2x32")
    ts = trainer.init(key, digits.input_shape)
    for template in (key, jax.ShapeDtypeStruct(key.shape, key.dtype)):
        abstract = trainer.abstract_state(digits.input_shape, key=template)
        assert abstract.key.dtype == ts.key.dtype != KEY.dtype
        got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), abstract)
        assert got == jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), ts)


@pytest.mark.parametrize("wait", [True, False])
def test_compile_ahead_then_epoch_and_evaluate_do_not_compile(digits, wait):
    """compile() builds the epoch and evaluation programs (concurrently, in the
    background with wait=False); the calls that follow compile nothing and give the
    same numbers as a trainer that compiled on first call."""
    x, y = jax.device_put(digits.x_train), jax.device_put(digits.y_train)
    xt, yt = jax.device_put(digits.x_test), jax.device_put(digits.y_test)
    trainer = _small_trainer()

    def run():
        trainer.compile(trainer.abstract_state(digits.input_shape), x, y, batch_size=64,
                        x_test=xt, y_test=yt, wait=wait)
        ts = trainer.init(KEY, digits.input_shape)
        (ts, m), n_epoch = _count_compiles(lambda: trainer.epoch(ts, x, y, batch_size=64))
        ev, n_eval = _count_compiles(lambda: trainer.evaluate(ts, xt, yt))
        return ts, m, ev, n_epoch + n_eval

    (ts, m, ev, n_calls), n = _count_compiles(run)
    assert n_calls == 0 or not wait  # (with wait=False, the epoch call waits: the count
    # may include the background compilation finishing while it waits)
    assert n == 3, n  # epoch, evaluation and init, each once
    _, again = _count_compiles(lambda: trainer.compile(ts, x, y, batch_size=64, x_test=xt,
                                                       y_test=yt))
    assert again == 0  # already compiled: nothing to do
    plain = _small_trainer()
    ts2, m2 = plain.epoch(plain.init(KEY, digits.input_shape), x, y, batch_size=64)
    assert m == m2 and plain.evaluate(ts2, xt, yt) == ev


def test_compile_validates_batch_size(digits):
    trainer = _small_trainer()
    with pytest.raises(ValueError, match="batch_size must be an int between 1 and"):
        trainer.compile(trainer.abstract_state(digits.input_shape), digits.x_train,
                        digits.y_train, batch_size=0)


def test_fit_compiles_each_program_once(digits):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    _, n = _count_compiles(lambda: fit(trainer, ts, digits.x_train, digits.y_train, epochs=2,
                                       batch_size=64, x_test=digits.x_test,
                                       y_test=digits.y_test, progress=False))
    assert n == 2  # the epoch and the evaluation, nothing else


@pytest.mark.float32
def test_step_and_evaluate(digits):
    trainer = _small_trainer(dropout=0.0)
    ts = trainer.init(KEY, digits.input_shape)
    x, y = digits.x_train[:64], digits.y_train[:64]
    before = trainer.evaluate(ts, x, y)["loss"]
    for _ in range(20):
        ts, m = trainer.step(ts, x, y)
    assert int(ts.step) == 20
    assert trainer.evaluate(ts, x, y)["loss"] < before / 2
    assert 0.0 <= m["accuracy"] <= 1.0


@pytest.mark.parametrize("bs", [0, -1, 10_000, 2.0])
def test_batch_size_is_validated(digits, bs):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(ValueError, match=r"batch_size must be an int between 1 and the number "
                                         r"of training examples \(1438\)"):
        trainer.epoch(ts, digits.x_train, digits.y_train, batch_size=bs)


@pytest.mark.parametrize("activation,expected", [
    ("tanh", "the loss was not finite"),
    ("relu", "the loss was not finite"),  # ReLU propagates NaN (it once mapped it to 0)
])
def test_non_finite_stops_and_names_the_step(digits, activation, expected):
    x = np.array(digits.x_train[:128])
    y = digits.y_train[:128]
    trainer = Trainer(L.mlp([32], 10, activation=activation), optim.adam(3e-3))
    ts = trainer.init(KEY, digits.input_shape)
    ts, _ = trainer.epoch(ts, x, y, batch_size=128)   # one good step: step 0
    x[5, 3] = np.nan
    with pytest.raises(NonFiniteError, match="training stopped at step 1: " + expected) as err:
        trainer.epoch(ts, x, y, batch_size=128)
    good = err.value.state
    assert int(good.step) == 1  # the bad step's update was not applied
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(good.params))


def _inf_grad_layer():
    """A layer whose weight gradient is +inf while its loss stays finite."""
    bad = primitive(lambda x, w: x * w[None], lambda res, g: (g, jnp.full_like(res, jnp.inf)),
                    save=lambda x, w, y: w, register=False, name="bad_scale")

    def init(key, shape):
        return shape, {"w": jnp.ones(shape, jnp.float32)}, {}

    def apply(params, state, x, *, key=None, train=False):
        return bad(x, params["w"]), state

    return L.Layer(init, apply, "bad")


def test_non_finite_gradient_names_the_parameter(digits):
    model = L.serial(_inf_grad_layer(), L.Dense(10))
    trainer = Trainer(model, optim.sgd(0.1))
    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(NonFiniteError, match=r"step 0: the gradient of params\['bad_0'\]\['w'\]"):
        trainer.epoch(ts, digits.x_train, digits.y_train, batch_size=64)


@pytest.mark.x64
def test_per_example_grads_equal_a_loop():
    model = L.serial(L.Dense(5, dtype=jnp.float64), L.Tanh(), L.Dense(3, dtype=jnp.float64))
    _, params, state = model.init(KEY, (4,))
    x = jax.random.normal(KEY, (6, 4), jnp.float64)
    y = jnp.arange(6) % 3

    def loss(p, xb, yb):
        return fdl.losses.softmax_cross_entropy(model.apply(p, state, xb)[0], yb)

    per = jax.jit(per_example_grads, static_argnums=0)(loss, params, x, y)
    grad = jax.jit(jax.grad(loss))
    for i in range(6):
        gi = grad(params, x[i:i + 1], y[i:i + 1])
        for a, b in zip(jax.tree_util.tree_leaves(per), jax.tree_util.tree_leaves(gi)):
            np.testing.assert_allclose(a[i], b, rtol=1e-12)
    # the batch gradient is the mean of the per-example gradients
    full = grad(params, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(per), jax.tree_util.tree_leaves(full)):
        np.testing.assert_allclose(a.mean(0), b, rtol=1e-12, atol=1e-15)


def test_trainer_rejects_wrong_types():
    with pytest.raises(TypeError, match="model must be an fdl.layers.Layer"):
        Trainer(lambda x: x, optim.sgd(0.1))
    with pytest.raises(TypeError, match="optimizer must be an fdl.optim.Optimizer"):
        Trainer(L.Dense(3), "adam")


def test_mixed_precision_bfloat16_compute_keeps_float32_master_weights(digits):
    """bfloat16 forward/backward, float32 params and Adam moments, accuracy kept."""
    trainer = Trainer(L.mlp([64], 10), optim.adam(3e-3), compute_dtype=jnp.bfloat16)
    ts = trainer.init(KEY, digits.input_shape)
    ts, hist = fit(trainer, ts, digits.x_train, digits.y_train, epochs=12, batch_size=64,
                   x_test=digits.x_test, y_test=digits.y_test, progress=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(ts.params))
    moments = [m for m in jax.tree_util.tree_leaves(ts.opt_state)
               if jnp.issubdtype(m.dtype, jnp.floating)]
    assert moments and all(m.dtype == jnp.float32 for m in moments)
    assert hist["test_accuracy"][-1] > 0.93
    # the same run in float32 is within 2 points
    t32 = Trainer(L.mlp([64], 10), optim.adam(3e-3))
    _, h32 = fit(t32, t32.init(KEY, digits.input_shape), digits.x_train, digits.y_train,
                 epochs=12, batch_size=64, x_test=digits.x_test, y_test=digits.y_test,
                 progress=False)
    assert abs(hist["test_accuracy"][-1] - h32["test_accuracy"][-1]) < 0.02


def test_all_finite_is_exact_without_overflow():
    from fdl.train import _all_finite
    f = jax.jit(_all_finite)
    assert bool(f(jnp.full((100,), 3e38, jnp.float32)))  # a plain sum would overflow
    assert bool(f(jnp.zeros((0,), jnp.float32)))
    for bad in (jnp.inf, -jnp.inf, jnp.nan):
        assert not bool(f(jnp.ones((3, 4), jnp.float32).at[1, 2].set(bad)))
        assert not bool(f(jnp.ones((7,), jnp.bfloat16).at[6].set(bad)))


def test_compiler_options_are_accepted_and_used(digits):
    """On CPU the Trainer compiles with region-analysis copy insertion; whatever the
    options are, XLA accepts them and the trained numbers equal XLA's defaults'."""
    from fdl.train import compiler_options
    opts = compiler_options()
    if jax.default_backend() == "cpu":
        assert opts == {"xla_cpu_copy_insertion_use_region_analysis": True}
    x, y = jax.device_put(digits.x_train[:256]), jax.device_put(digits.y_train[:256])
    trainer = _small_trainer()
    ts, m = trainer.epoch(trainer.init(KEY, digits.input_shape), x, y, batch_size=32)
    plain = _small_trainer()
    plain._epoch = jax.jit(plain._epoch_impl, static_argnames=("batch_size",),
                           donate_argnums=(0,))  # XLA's defaults
    ts2, m2 = plain.epoch(plain.init(KEY, digits.input_shape), x, y, batch_size=32)
    for a, b in zip(jax.tree_util.tree_leaves(ts.params), jax.tree_util.tree_leaves(ts2.params)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ fit at its seams

@pytest.mark.float32
@pytest.mark.parametrize("split, bad, message", [
    ("train", -1, r"fit: y_train\[7\] is -1, outside \[0, 10\) for a model with 10 outputs"),
    ("train", 10, r"fit: y_train\[7\] is 10, outside \[0, 10\)"),
    ("test", 12, r"fit: y_test\[7\] is 12, outside \[0, 10\) .*ranges over \[0, 12\]"),
])
def test_fit_rejects_out_of_range_labels_up_front(digits, split, bad, message):
    """Under jit a label of -1 or 12 is an all-zero one-hot: fit refuses it before
    compiling anything (no epoch runs: on_epoch is never called)."""
    y_train, y_test = digits.y_train[:256].copy(), digits.y_test[:64].copy()
    (y_train if split == "train" else y_test)[7] = bad
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    calls = []
    with pytest.raises(ValueError, match=message):
        fit(trainer, ts, digits.x_train[:256], y_train, epochs=2, batch_size=64,
            x_test=digits.x_test[:64], y_test=y_test, progress=False,
            on_epoch=lambda *a: calls.append(a))
    assert calls == [] and trainer._epoch._cache_size() == 0


@pytest.mark.float32
def test_fit_stops_at_the_first_non_finite_evaluation_and_keeps_the_state(digits):
    x_test = np.array(digits.x_test[:64])
    x_test[3, :] = 3e38  # finite (fit refuses NaN inputs), but the first layer overflows
    trainer = Trainer(L.mlp([32], 10), optim.adam(3e-3))
    ts = trainer.init(KEY, digits.input_shape)
    seen = []
    with pytest.raises(NonFiniteError, match=r"evaluation after epoch 1 gave a non-finite "
                                             r"test loss \((nan|inf)\)") as err:
        fit(trainer, ts, digits.x_train[:256], digits.y_train[:256], epochs=5, batch_size=64,
            x_test=x_test, y_test=digits.y_test[:64], progress=False,
            on_epoch=lambda e, r, s: seen.append(e))
    assert seen == []  # stopped at epoch 1, not after all five
    state = err.value.state
    assert int(state.epoch) == 1 and len(err.value.history) == 1
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(state.params))
    # the kept state goes on training with clean test data
    state, hist = fit(trainer, state, digits.x_train[:256], digits.y_train[:256], epochs=1,
                      batch_size=64, x_test=digits.x_test[:64], y_test=digits.y_test[:64],
                      progress=False)
    assert int(state.epoch) == 2 and np.isfinite(hist["test_loss"][0])


@pytest.mark.float32
def test_fit_non_finite_training_error_carries_state_and_history(digits):
    x = np.array(digits.x_train[:128])
    trainer = Trainer(L.mlp([16], 10, activation="tanh"), optim.adam(3e-3))
    ts = trainer.init(KEY, digits.input_shape)
    ts, _ = fit(trainer, ts, x, digits.y_train[:128], epochs=1, batch_size=128, progress=False)
    x[0, :] = 3e38  # finite (fit refuses NaN and inf inputs), but the first layer overflows
    with pytest.raises(NonFiniteError, match="training stopped at step 1") as err:
        fit(trainer, ts, x, digits.y_train[:128], epochs=3, batch_size=128, progress=False)
    assert int(err.value.state.step) == 1 and len(err.value.history) == 0


@pytest.mark.float32
def test_fit_should_stop_ends_at_an_epoch_boundary(digits):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    done = []
    ts, hist = fit(trainer, ts, digits.x_train[:256], digits.y_train[:256], epochs=10,
                   batch_size=64, progress=False, on_epoch=lambda e, r, s: done.append(e),
                   should_stop=lambda: len(done) >= 2)
    assert done == [1, 2] and int(ts.epoch) == 2 and len(hist) == 2
    assert int(ts.step) == 2 * (256 // 64)




def _screen(text):
    """What a terminal shows: each \\r returns to column 0 and overwrites."""
    lines = []
    for raw in text.split("\n"):
        row = []
        for part in raw.split("\r"):
            row[: len(part)] = list(part)
        lines.append("".join(row))
    return lines


@pytest.mark.float32
def test_progress_fits_80_columns_and_never_mixes_with_epoch_lines(digits, monkeypatch):
    term = FakeTerminal()
    monkeypatch.setattr("sys.stdout", term)
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)

    def on_epoch(epoch, record, state):
        print(f"epoch {epoch}/3 loss {record['train_loss']:.4f}")

    fit(trainer, ts, digits.x_train[:256], digits.y_train[:256], epochs=3, batch_size=64,
        on_epoch=on_epoch)
    assert "[" in term.text and "eta" in term.text  # the bar was drawn
    assert all(len(part) <= 80 for line in term.text.split("\n") for part in line.split("\r"))
    screen = [line.rstrip() for line in _screen(term.text)]
    epoch_lines = [line for line in screen if "epoch" in line and "[" not in line]
    assert len(epoch_lines) == 3
    assert all(line.startswith("epoch ") for line in epoch_lines), screen
    assert screen[-1] == ""  # the bar is cleared at the end
    # not a terminal: no bar at all
    plain = io.StringIO()
    monkeypatch.setattr("sys.stdout", plain)
    fit(trainer, trainer.init(KEY, digits.input_shape), digits.x_train[:256],
        digits.y_train[:256], epochs=2, batch_size=64, on_epoch=on_epoch)
    assert "\r" not in plain.getvalue() and plain.getvalue().count("epoch") == 2


# --------------------------------------------------------------------------------- #
# bad input and faults: each one clear line before any work
# --------------------------------------------------------------------------------- #

@pytest.mark.float32
def test_reusing_a_state_that_fit_consumed_says_so(digits):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    new, _ = fit(trainer, ts, digits.x_train, digits.y_train, epochs=1, batch_size=64,
                 progress=False)
    consumed = ("this TrainState was consumed by an earlier fit, Trainer.epoch or "
                "Trainer.step call, which donate the state they are given to reuse its "
                "memory; continue from the state that call returned (ts, history = "
                "fit(...)), or keep a copy before it (saved = jax.tree.map(jnp.copy, ts))")
    with pytest.raises(fdl.train.ConsumedStateError, match=r"^fit: " + re.escape(consumed)):
        fit(trainer, ts, digits.x_train, digits.y_train, epochs=1, batch_size=64,
            progress=False)
    with pytest.raises(ValueError, match=r"^Trainer\.epoch: this TrainState was consumed"):
        trainer.epoch(ts, digits.x_train, digits.y_train, batch_size=64)
    with pytest.raises(ValueError, match=r"^Trainer\.step: this TrainState was consumed"):
        trainer.step(ts, digits.x_train[:64], digits.y_train[:64])
    with pytest.raises(ValueError, match=r"^Trainer\.evaluate: this TrainState was consumed"):
        trainer.evaluate(ts, digits.x_test, digits.y_test)
    saved = jax.tree.map(jnp.copy, new)  # the way the message gives works
    fit(trainer, new, digits.x_train, digits.y_train, epochs=1, batch_size=64, progress=False)
    assert trainer.evaluate(saved, digits.x_test, digits.y_test)["accuracy"] > 0.5


@pytest.mark.float32
@pytest.mark.parametrize("given, missing", [("x_test", "y_test"), ("y_test", "x_test")])
def test_fit_refuses_half_of_the_test_split(digits, given, missing):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(ValueError, match=rf"^fit: {given} was given without {missing}; pass "
                                         "both to evaluate after every epoch, or neither$"):
        fit(trainer, ts, digits.x_train, digits.y_train, epochs=1, batch_size=64,
            progress=False, **{given: getattr(digits, given)})


@pytest.mark.float32
@pytest.mark.parametrize("split", ["x_train", "x_test"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fit_refuses_non_finite_inputs_naming_the_first(digits, split, bad):
    data = {"x_train": digits.x_train.copy(), "x_test": digits.x_test.copy()}
    data[split][7, 3] = bad
    data[split][9, 0] = bad
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(ValueError, match=rf"^fit: {split}\[7, 3\] is {bad} \(2 non-finite "
                                         r"values in all\); inputs must be finite"):
        fit(trainer, ts, data["x_train"], digits.y_train, epochs=1, batch_size=64,
            x_test=data["x_test"], y_test=digits.y_test, progress=False)


@pytest.mark.float32
def test_fit_refuses_float_class_labels(digits):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(ValueError, match=r"^fit: y_train holds float32 values of shape "
                                         r"\(1438,\), one per example, but the model has 10 "
                                         r"outputs per example: class labels must be integers "
                                         r"\(y_train\.astype\(np\.int32\)\)"):
        fit(trainer, ts, digits.x_train, digits.y_train.astype(np.float32), epochs=1,
            batch_size=64, progress=False)


@pytest.mark.float32
def test_one_hot_targets_train_and_count_accuracy_like_integer_labels(digits):
    """One-hot targets give the same loss as their integer labels, and the accuracy
    (not NaN) of the rows whose largest output is the target's class."""
    eye = np.eye(10, dtype=np.float32)
    runs = {}
    for kind, (y_train, y_test) in {"int": (digits.y_train, digits.y_test),
                                    "onehot": (eye[digits.y_train], eye[digits.y_test])}.items():
        trainer = _small_trainer(dropout=0.0)
        ts = trainer.init(KEY, digits.input_shape)
        _, runs[kind] = fit(trainer, ts, digits.x_train, y_train, epochs=3, batch_size=64,
                            x_test=digits.x_test, y_test=y_test, progress=False)
    for metric in ("train_accuracy", "test_accuracy"):
        assert runs["onehot"][metric] == runs["int"][metric]
        assert 0.8 < runs["onehot"][metric][-1] <= 1, runs["onehot"][metric]
    np.testing.assert_allclose(runs["onehot"]["train_loss"], runs["int"]["train_loss"],
                               rtol=1e-5)


@pytest.mark.float32
def test_a_model_too_large_for_memory_is_refused_by_init_before_allocating():
    trainer = Trainer(L.serial(L.Dense(100_000_000), L.Dense(10)), optim.adam(1e-3))
    with pytest.raises(fdl.train.OutOfMemoryError,
                       match=r"^Trainer: the model has 7,500,000,010 parameters; training it "
                             r"needs at least 150\.0 GB \(parameters, optimizer state, "
                             r"gradients\) but only \d+\.\d (GB|MB) is free \(.+\); use "
                             r"smaller layers$"):
        trainer.init(KEY, (64,))


@pytest.mark.float32
def test_memory_needed_counts_the_state_gradients_and_updates():
    trainer = Trainer(L.serial(L.Dense(3), L.Dense(2)), optim.adam(1e-3))  # 4·3+3 + 3·2+2
    ts = trainer.abstract_state((4,))
    n_params = 4 * 3 + 3 + 3 * 2 + 2
    state = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(ts))
    assert state >= 3 * 4 * n_params  # params, and Adam's two moments
    assert trainer.memory_needed(ts) == state + 2 * 4 * n_params


@pytest.mark.float32
def test_non_finite_leaves_names_each_bad_leaf():
    tree = {"a": jnp.array([1.0, jnp.nan, jnp.inf]), "b": jnp.ones(2), "c": jnp.arange(3),
            "d": {"e": jnp.array([-jnp.inf])}}
    assert fdl.train.non_finite_leaves(tree) == [("['a']", 2, 3), ("['d']['e']", 1, 1)]
    assert fdl.train.non_finite_leaves({"b": jnp.ones(2)}) == []


@pytest.mark.float32
def test_an_example_without_its_batch_axis_is_named_as_such(digits):
    """Was: "input has shape (64,) (64 features) but the layer was built for 64 features"."""
    trainer = Trainer(L.serial(L.Dense(32), L.Relu(), L.Dense(10)), optim.adam(1e-3))
    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(ValueError, match=r"^Dense: input has shape \(64,\), one example without "
                                         r"the batch axis; expected \(batch, …, 64\): pass "
                                         r"x\[None\] \(a batch of one\), or jax\.vmap the model "
                                         r"over examples$"):
        trainer.model.apply(ts.params, ts.model_state, digits.x_test[0])
    out, _ = trainer.model.apply(ts.params, ts.model_state, digits.x_test[0][None])
    assert out.shape == (1, 10)
    with pytest.raises(ValueError, match=r"^Dense: input has shape \(63,\) \(63 features\) but "
                                         r"the layer was built for 64 features"):
        trainer.model.apply(ts.params, ts.model_state, digits.x_test[0][:63])


@pytest.mark.float32
@pytest.mark.parametrize("key, shape, message", [
    (0, (64,), r"^Trainer\.init: key must be one jax\.random key, such as jax\.random\.key\(0\) "
               r"or fdl\.random\.key\(0\), got 0$"),
    (None, 64, r"^Trainer\.init: input_shape must be a tuple of ints, the shape of one example "
               r"without the batch axis \(e\.g\. \(64,\) or \(28, 28, 1\)\), got 64$"),
    (None, (64.0,), r"input_shape must be a tuple of ints"),
])
def test_init_names_a_bad_key_or_input_shape(key, shape, message):
    trainer = _small_trainer()
    with pytest.raises(TypeError, match=message):
        trainer.init(KEY if key is None else key, shape)
    assert int(trainer.init(jax.random.PRNGKey(0), [64]).step) == 0  # a legacy key, a list


@pytest.mark.float32
def test_fit_names_a_count_mismatch_between_inputs_and_targets(digits):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(ValueError, match=r"^fit: x_train has 1438 examples but y_train has 1437; "
                                         r"they must match \(one target per example\)$"):
        fit(trainer, ts, digits.x_train, digits.y_train[:-1], epochs=1, batch_size=64,
            progress=False)
    with pytest.raises(ValueError, match=r"^fit: x_test has 359 examples but y_test has 3;"):
        fit(trainer, ts, digits.x_train, digits.y_train, epochs=1, batch_size=64,
            x_test=digits.x_test, y_test=digits.y_test[:3], progress=False)


@pytest.mark.float32
def test_fit_refuses_more_steps_than_the_int32_counters_hold(digits):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    epochs = 2**31 // (1438 // 64) + 1  # 22 steps an epoch
    with pytest.raises(ValueError, match=rf"^fit: epochs={epochs} would take the state past "
                                         r"2,147,483,647 steps or epochs, the most its int32 "
                                         r"counters hold"):
        fit(trainer, ts, digits.x_train, digits.y_train, epochs=epochs, batch_size=64,
            progress=False)
    fit(trainer, ts, digits.x_train, digits.y_train, epochs=0, batch_size=64, progress=False)


@pytest.mark.float32
def test_init_under_vmap_and_jit_makes_an_ensemble():
    """Was: "compiler_options can only be passed to top-level jax.jit" from inside."""
    trainer = _small_trainer()
    keys = jax.random.split(KEY, 3)
    ensemble = jax.vmap(lambda k: trainer.init(k, (64,)))(keys)
    assert ensemble.params["dense_1"]["w"].shape == (3, 64, 32)
    one = trainer.init(keys[1], (64,))  # another program: equal up to float32 rounding
    w = one.params["dense_1"]["w"]
    np.testing.assert_allclose(ensemble.params["dense_1"]["w"][1], w, rtol=1e-6, atol=1e-7)
    jitted = jax.jit(lambda k: trainer.init(k, (64,)))(keys[1])
    np.testing.assert_allclose(jitted.params["dense_1"]["w"], w, rtol=1e-6, atol=1e-7)
    assert not np.allclose(ensemble.params["dense_1"]["w"][0], w)  # each key its own state


@pytest.mark.float32
@pytest.mark.parametrize("options, message", [
    ({"loss": 3}, r"^Trainer: loss must be a function loss\(outputs, targets\) -> scalar, such "
                  r"as fdl\.losses\.softmax_cross_entropy, got 3$"),
    ({"compute_dtype": "int8"}, r"^Trainer: compute_dtype must be a floating dtype such as "
                                r"jnp\.bfloat16 or 'float16' \(or None\), got 'int8'$"),
    ({"compute_dtype": "float17"}, r"compute_dtype must be a floating dtype .* got 'float17'$"),
])
def test_trainer_names_a_bad_loss_or_compute_dtype(options, message):
    with pytest.raises(TypeError, match=message):
        Trainer(L.mlp([8], 10), optim.adam(1e-3), **options)
    assert Trainer(L.mlp([8], 10), optim.adam(1e-3), compute_dtype="bfloat16").compute_dtype \
        == jnp.bfloat16


@pytest.mark.float32
@pytest.mark.parametrize("name", ["on_epoch", "should_stop"])
def test_fit_names_a_callback_that_is_not_a_function_before_training(digits, name):
    trainer = _small_trainer()
    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(TypeError, match=rf"^fit: {name} must be a function \(or None\), got 5$"):
        fit(trainer, ts, digits.x_train, digits.y_train, epochs=1, batch_size=64,
            progress=False, **{name: 5})
    assert int(ts.epoch) == 0  # not consumed: nothing ran


@pytest.mark.float32
def test_available_memory_reports_bytes_and_their_source():
    free, source = fdl.train.available_memory()
    assert isinstance(free, int) and free > 0
    if jax.default_backend() == "cpu" and os.path.exists("/proc/meminfo"):
        assert source == "the host's MemAvailable"
        with open("/proc/meminfo") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
        assert abs(free - int(line.split()[1]) * 1024) < 2**30  # read a moment apart
