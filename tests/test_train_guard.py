"""fdl.train's non-finite guard inside the scanned epoch.

The epoch is one ``lax.scan``; after its first step with a non-finite loss or gradient
the state stops changing, :class:`NonFiniteError` names that step (and the first
parameter whose gradient was not finite) and carries the last good state. These tests
put the bad step in the middle of an epoch, after earlier epochs, and check that the
state is the one before it, bitwise, whatever the later steps hold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import layers as L
from fdl import optim
from fdl.data import shuffled_batches
from fdl.primitive import primitive
from fdl.train import NonFiniteError, Trainer, _all_finite, fit

KEY = jax.random.key(0)
N, BATCH = 320, 32  # ten steps per epoch


@pytest.fixture(scope="module")
def digits():
    ds, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))
    return ds


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(p).dtype == np.asarray(q).dtype and np.array_equal(p, q)
        for p, q in zip(la, lb))


def _state(ts):
    """What training changes, without the key (a typed key has no array value)."""
    return ts.params, ts.model_state, ts.opt_state, ts.step, ts.epoch


def _copy(ts):
    return jax.tree_util.tree_map(jnp.copy, ts)


# ----------------------------------------------------- a gradient that turns infinite


MARKER = 1e4  # an input value that makes the weight's gradient infinite


def _scale_layer(threshold: float):
    """``y = x·w`` with one scalar weight ``w`` (initialised to 1) whose gradient is
    taken as exactly 1 while ``w ≥ threshold`` and +inf once ``w < threshold`` or when
    the batch holds an input equal to ``MARKER``; the loss stays finite. Under
    ``sgd(0.125)`` step ``s`` sees ``w = 1 − s/8`` exactly, so the first bad step is
    known without looking at the data."""
    def weight_grad(x, w):
        bad = (w < threshold) | jnp.any(x == MARKER)
        return jnp.where(bad, jnp.inf, 1.0).astype(w.dtype)

    scale = primitive(lambda x, w: x * w,
                      lambda res, g: (g * res[1], weight_grad(*res)),
                      save=lambda x, w, y: (x, w), register=False, name="guard_scale")

    def init(key, shape):
        return shape, {"w": jnp.ones((), jnp.float32)}, {}

    def apply(params, state, x, *, key=None, train=False):
        return scale(x, params["w"]), state

    return L.Layer(init, apply, "scale")


def _scaled_trainer(threshold: float) -> Trainer:
    return Trainer(L.serial(_scale_layer(threshold), L.Dense(10)), optim.sgd(0.125))


def test_a_bad_gradient_in_the_middle_of_the_second_epoch(digits):
    """Steps 0–12 are good (``w`` ends at 1 − 13/8 = −0.625); step 13 sees
    ``w < −0.6``: its gradient is inf. The error names step 13 and the weight; the
    state is the one after 13 updates, all finite, and ``w`` is exactly −0.625."""
    x, y = digits.x_train[:N], digits.y_train[:N]
    trainer = _scaled_trainer(-0.6)
    ts, _ = trainer.epoch(trainer.init(KEY, digits.input_shape), x, y, batch_size=BATCH)
    assert int(ts.step) == 10 and float(ts.params["scale_0"]["w"]) == -0.25
    with pytest.raises(NonFiniteError,
                       match=r"training stopped at step 13: the gradient of "
                             r"params\['scale_0'\]\['w'\] was not finite") as err:
        trainer.epoch(ts, x, y, batch_size=BATCH)
    good = err.value.state
    assert int(good.step) == 13
    assert float(good.params["scale_0"]["w"]) == 1 - 13 / 8
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(good.params))


def test_a_bad_first_step_leaves_the_epoch_state_bitwise_unchanged(digits):
    """Step 10 (the second epoch's first) is the first bad one: the state the error
    carries is the first epoch's result, bit for bit (every later step of the epoch,
    bad as well, was discarded)."""
    x, y = digits.x_train[:N], digits.y_train[:N]
    trainer = _scaled_trainer(-0.2)  # step 10 sees w = −0.25
    ts, _ = trainer.epoch(trainer.init(KEY, digits.input_shape), x, y, batch_size=BATCH)
    before = _copy(ts)
    with pytest.raises(NonFiniteError, match=r"training stopped at step 10: the gradient"
                                             r" of params\['scale_0'\]\['w'\]") as err:
        trainer.epoch(ts, x, y, batch_size=BATCH)
    good = err.value.state
    assert _leaves_equal(_state(good)[:4], _state(before)[:4])


def test_fit_saves_only_finite_epochs_and_names_the_step(digits, tmp_path):
    """``fit`` with a checkpoint per epoch: epoch 1 is saved, the bad step of epoch 2
    stops training before ``on_epoch`` sees that epoch, and every saved parameter is
    finite."""
    x, y = digits.x_train[:N], digits.y_train[:N]
    trainer = _scaled_trainer(-0.6)
    saved = []

    def on_epoch(epoch, record, ts):
        path = tmp_path / f"epoch{epoch}.npz"
        fdl.io.save(path, ts)
        saved.append(path)

    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(NonFiniteError, match="training stopped at step 13") as err:
        fit(trainer, ts, x, y, epochs=3, batch_size=BATCH, on_epoch=on_epoch, progress=False)
    assert [p.name for p in saved] == ["epoch1.npz"] and len(err.value.history) == 1
    template = trainer.init(jax.random.key(1), digits.input_shape)
    loaded = fdl.io.load(saved[0], like=template)
    assert fdl.train.non_finite_leaves(loaded.params) == []
    assert int(loaded.step) == 10 and float(loaded.params["scale_0"]["w"]) == -0.25


# -------------------------------------------------------- a NaN example mid-epoch


def _step_of(ts, example: int) -> int | None:
    """The step of ``ts``'s next epoch (counted within it) whose batch holds
    ``example``, from the epoch's documented shuffle (``fold_in(fold_in(key, 1),
    epoch)``); ``None`` where the example falls in the dropped remainder."""
    key = jax.random.fold_in(jax.random.fold_in(ts.key, 1), ts.epoch)
    order = np.asarray(shuffled_batches(key, jnp.arange(N), BATCH))
    hit = np.nonzero(order == example)[0]
    return int(hit[0]) if hit.size else None


def _examples_by_step(ts) -> dict[int, int]:
    """One example per step of ``ts``'s next epoch: ``{step: example}``."""
    found: dict[int, int] = {}
    for j in range(N):
        s = _step_of(ts, j)
        if s is not None:
            found.setdefault(s, j)
    return found


@pytest.mark.float32
def test_a_nan_example_mid_epoch_freezes_the_state_whatever_follows(digits):
    """Adam, dropout, a NaN in one example of step 4 of the second epoch. The error
    names step 10 + 4; the state carried has taken exactly 14 steps, is finite, and is
    bitwise the same when a later step of the epoch holds a second NaN or when the
    later steps' data are changed: nothing after the first bad step reaches it."""
    trainer = Trainer(L.mlp([16], 10, dropout=0.2), optim.adam(3e-3))
    x0, y = np.array(digits.x_train[:N]), digits.y_train[:N]
    start, _ = trainer.epoch(trainer.init(KEY, digits.input_shape), x0, y, batch_size=BATCH)
    by_step = _examples_by_step(start)
    assert sorted(by_step) == list(range(N // BATCH))

    def bad_run(x):
        with pytest.raises(NonFiniteError, match="training stopped at step 14: the loss "
                                                 "was not finite") as err:
            trainer.epoch(_copy(start), x, y, batch_size=BATCH)
        return err.value.state

    x = x0.copy()
    x[by_step[4], 7] = np.nan
    first = bad_run(x)
    assert int(first.step) == 14
    assert all(int(c) == 14 for c in jax.tree_util.tree_leaves(first.opt_state)
               if jnp.issubdtype(c.dtype, jnp.integer))
    assert fdl.train.non_finite_leaves(first.params) == []
    assert not _leaves_equal(first.params, start.params)  # steps 10–13 were applied

    second_nan = x.copy()
    second_nan[by_step[7], 0] = np.inf
    later_data = x.copy()
    for s in range(5, N // BATCH):  # every example of steps 5–9 changed
        key = jax.random.fold_in(jax.random.fold_in(start.key, 1), start.epoch)
        rows = np.asarray(shuffled_batches(key, jnp.arange(N), BATCH))[s]
        later_data[rows] = -later_data[rows]
    for other in (second_nan, later_data):
        assert _leaves_equal(_state(bad_run(other))[:4], _state(first)[:4])


@pytest.mark.float32
@pytest.mark.parametrize("loss_step, grad_step, expected", [
    (2, 6, "step 2: the loss was not finite"),
    (6, 2, r"step 2: the gradient of params\['scale_0'\]\['w'\] was not finite"),
])
def test_the_guard_reports_the_first_bad_step_not_a_later_one(digits, loss_step, grad_step,
                                                              expected):
    """A NaN example (non-finite loss) in one step and a marker example (an infinite
    gradient, finite loss) in another: the error names the earlier step and what went
    wrong there, and the state stopped before it."""
    trainer = _scaled_trainer(-100.0)  # only the marker makes the gradient infinite
    ts = trainer.init(KEY, digits.input_shape)
    by_step = _examples_by_step(ts)
    x = np.array(digits.x_train[:N])
    x[by_step[loss_step], 1] = np.nan
    x[by_step[grad_step], 2] = MARKER
    with pytest.raises(NonFiniteError, match="training stopped at " + expected) as err:
        trainer.epoch(ts, x, digits.y_train[:N], batch_size=BATCH)
    assert int(err.value.state.step) == 2
    assert float(err.value.state.params["scale_0"]["w"]) == 1 - 2 / 8


# ------------------------------------------------------------- the check itself


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_all_finite_in_each_float_dtype(dtype):
    """``_all_finite`` (jitted, as the step runs it): true for the dtype's largest
    values (no overflow), false for one ±inf or NaN anywhere, true when empty."""
    f = jax.jit(_all_finite)
    big = jnp.finfo(dtype).max
    assert bool(f(jnp.full((257,), big, dtype)))
    assert bool(f(jnp.full((3, 5), -big, dtype)))
    assert bool(f(jnp.zeros((0, 4), dtype)))
    for bad in (jnp.inf, -jnp.inf, jnp.nan):
        for where in ((0, 0), (2, 4), (1, 3)):
            g = jnp.ones((3, 5), dtype).at[where].set(bad)
            assert not bool(f(g)), (dtype, bad, where)


# ------------------------------------------------- an update that overflows itself


def _overflowing_sgd(at_step):
    """SGD at 0.01 whose learning rate is +inf at the steps ``at_step(step)`` selects:
    finite gradients, an infinite update."""
    return optim.sgd(lambda step: jnp.where(at_step(step), jnp.inf, 0.01))


def test_an_update_that_overflows_at_the_end_of_an_epoch_is_caught(digits, tmp_path):
    """Step 9, the epoch's last, has a finite loss and gradient but an infinite update:
    no step is bad, yet the epoch does not return non-finite parameters, and fit saves
    nothing of it."""
    x, y = digits.x_train[:N], digits.y_train[:N]
    trainer = Trainer(L.mlp([16], 10), _overflowing_sgd(lambda s: s == 9))
    with pytest.raises(NonFiniteError,
                       match=r"training stopped after step 9: every loss and gradient of "
                             r"steps 0–9 was finite, but an update made "
                             r"params\['dense_1'\]\['b'\] not finite") as err:
        trainer.epoch(trainer.init(KEY, digits.input_shape), x, y, batch_size=BATCH)
    assert int(err.value.state.step) == 10
    assert fdl.train.non_finite_leaves(err.value.state.params) != []
    saved = []
    with pytest.raises(NonFiniteError, match="training stopped after step 9") as err:
        fit(trainer, trainer.init(KEY, digits.input_shape), x, y, epochs=2,
            batch_size=BATCH, on_epoch=lambda *a: saved.append(a), progress=False)
    assert saved == [] and len(err.value.history) == 0


def test_an_update_that_overflowed_before_the_bad_step_is_named(digits):
    """Step 3's update is infinite; step 4's loss is then not finite. The error names
    step 4 and says the parameters were already not finite before it."""
    trainer = Trainer(L.mlp([16], 10), _overflowing_sgd(lambda s: s >= 3))
    with pytest.raises(NonFiniteError,
                       match=r"training stopped at step 4: the loss was not finite\..* The "
                             r"parameters were already not finite before step 4 "
                             r"\(params\['dense_1'\]\['b'\]\)"):
        trainer.epoch(trainer.init(KEY, digits.input_shape), digits.x_train[:N],
                      digits.y_train[:N], batch_size=BATCH)
