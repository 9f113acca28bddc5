"""fdl.train.Trainer: float16/bfloat16 compute with float32 master weights, loss scaling
(dynamic, fixed, none), its state in checkpoints, and evaluation parameters
(Schedule-Free's average, the EMA, Lookahead's slow weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import layers as L
from fdl import losses, optim
from fdl.train import NonFiniteError, Trainer, fit

pytestmark = pytest.mark.float32
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def digits():
    ds, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))
    return ds


def _copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb) and la
    for u, v in zip(la, lb):
        if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# -- float16 training ----------------------------------------------------------


def test_float16_digits_reaches_the_float32_accuracy_within_one_point(digits):
    """Same seed, same epochs: float16 compute with dynamic loss scaling ends within
    1 percentage point of the float32 run's test accuracy, on float32 master weights."""
    accuracy = {}
    for dtype in (None, jnp.float16):
        trainer = Trainer(L.mlp([64], 10), optim.adam(3e-3), compute_dtype=dtype)
        ts, hist = fit(trainer, trainer.init(KEY, digits.input_shape), digits.x_train,
                       digits.y_train, epochs=5, batch_size=64, x_test=digits.x_test,
                       y_test=digits.y_test, progress=False)
        accuracy[dtype] = hist["test_accuracy"][-1]
    assert trainer.loss_scale == "dynamic"
    assert isinstance(ts.opt_state, optim.DynamicLossScaleState)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(ts.params))
    assert int(ts.step) == 5 * (len(digits.x_train) // 64)
    assert accuracy[None] > 0.9
    assert abs(accuracy[jnp.float16] - accuracy[None]) <= 0.01, accuracy


def test_loss_scale_defaults_follow_the_compute_dtype():
    def made(**options):
        t = Trainer(L.mlp([8], 3), optim.sgd(0.1), **options)
        return t.loss_scale, type(t.init(KEY, (4,)).opt_state).__name__

    assert made(compute_dtype=jnp.float16) == ("dynamic", "DynamicLossScaleState")
    assert made(compute_dtype="float16", loss_scale=None) == (None, "ChainState")
    assert made(compute_dtype=jnp.bfloat16) == (None, "ChainState")
    assert made() == (None, "ChainState")
    assert made(compute_dtype=jnp.bfloat16, loss_scale="dynamic") == (
        "dynamic", "DynamicLossScaleState")
    assert made(compute_dtype=jnp.float16, loss_scale=256) == (256.0, "ChainState")


def _regression(loss_scale):
    """A float16 linear regression on 8 examples: y = 1e4 makes ∂(S·L)/∂out overflow."""
    trainer = Trainer(L.Dense(2), optim.adam(1e-2), loss=losses.mse,
                      compute_dtype=jnp.float16, loss_scale=loss_scale)
    x = jax.random.normal(jax.random.key(1), (8, 4), jnp.float32)
    y = jax.random.normal(jax.random.key(2), (8, 2), jnp.float32)
    return trainer, trainer.init(KEY, (4,)), x, y


def test_an_overflowing_step_is_skipped_and_the_scale_grows_after_n_good_steps():
    trainer, ts, x, y = _regression({"init_scale": 2.0**15, "growth_interval": 3})
    ts, _ = trainer.step(ts, x, y)  # a good step moves the params
    assert (float(ts.opt_state.scale), int(ts.opt_state.good_steps)) == (2.0**15, 1)
    before = _copy(ts)
    ts, m = trainer.step(ts, x, jnp.full_like(y, 1e4))  # planted: the gradient overflows
    assert np.isfinite(float(m["loss"])) and float(m["loss"]) > 1e7  # the loss itself is finite
    _leaves_equal(ts.params, before.params)  # not applied
    _leaves_equal(ts.opt_state.inner_state, before.opt_state.inner_state)
    assert float(ts.opt_state.scale) == 2.0**14  # halved
    assert (int(ts.opt_state.good_steps), int(ts.opt_state.skipped)) == (0, 1)
    assert int(ts.step) == 2
    for _ in range(2):
        ts, _ = trainer.step(ts, x, y)
    assert float(ts.opt_state.scale) == 2.0**14  # two good steps: not yet
    moved = _copy(ts.params)
    ts, _ = trainer.step(ts, x, y)
    assert float(ts.opt_state.scale) == 2.0**15  # the third: doubled
    assert (int(ts.opt_state.good_steps), int(ts.opt_state.skipped)) == (0, 1)
    assert not np.array_equal(moved["w"], np.asarray(ts.params["w"]))  # applied


def test_an_overflow_at_the_smallest_scale_stops_training():
    trainer, ts, x, y = _regression({"init_scale": 1.0, "min_scale": 1.0})
    with pytest.raises(NonFiniteError, match=r"^training stopped at step 0: the gradient of "
                                             r"params\['b'\] was not finite even at the "
                                             r"smallest loss scale \(1\.0\)\. Lower"):
        trainer.step(ts, x, jnp.full_like(y, 1e6))


def test_a_fixed_power_of_two_scale_gives_the_unscaled_step_bitwise(digits):
    """Scaling by $2^k$ and dividing again is exact: the same params as no scaling."""
    x, y = digits.x_train[:256], digits.y_train[:256]
    out = []
    for scale in (None, 2.0**10):
        trainer = Trainer(L.mlp([32], 10), optim.adam(3e-3), loss_scale=scale)
        ts, _ = trainer.epoch(trainer.init(KEY, digits.input_shape), x, y, batch_size=32)
        out.append(ts)
    _leaves_equal(out[0], out[1])


def test_the_loss_scale_state_survives_a_checkpoint_and_resume_is_bitwise(digits, tmp_path):
    """A scale that starts too large (overflows, backs off) and grows every 4 steps:
    2 epochs + save + load + 2 epochs equals 4 epochs straight, bit for bit."""
    x, y = digits.x_train[:512], digits.y_train[:512]
    options = {"init_scale": 2.0**24, "growth_interval": 4}

    def trainer():
        return Trainer(L.mlp([32], 10, dropout=0.2), optim.adam(3e-3),
                       compute_dtype=jnp.float16, loss_scale=options)

    t = trainer()
    straight, _ = fit(t, t.init(KEY, digits.input_shape), x, y, epochs=4, batch_size=32,
                      progress=False)
    half, _ = fit(t, t.init(KEY, digits.input_shape), x, y, epochs=2, batch_size=32,
                  progress=False)
    assert int(half.opt_state.skipped) > 0 and float(half.opt_state.scale) < 2.0**24
    path = tmp_path / "ck.npz"
    fdl.io.save(path, half)
    t2 = trainer()  # a fresh process would build a new trainer
    loaded = fdl.io.load(path, like=t2.init(jax.random.key(9), digits.input_shape))
    assert isinstance(loaded.opt_state, optim.DynamicLossScaleState)
    _leaves_equal(loaded, half)
    resumed, _ = fit(t2, loaded, x, y, epochs=2, batch_size=32, progress=False)
    _leaves_equal(resumed, straight)
    assert int(straight.opt_state.skipped) >= int(half.opt_state.skipped)


@pytest.mark.parametrize("loss_scale, error, message", [
    ("static", TypeError, r"^Trainer: loss_scale must be 'dynamic', a number > 0 \(a fixed "
                          r"scale\), a dict of dynamic_loss_scale options, or None, got "
                          r"'static'$"),
    (True, TypeError, r"^Trainer: loss_scale must be 'dynamic', .* got True$"),
    (-2.0, ValueError, r"^Trainer: loss_scale must be a finite number > 0 \(such as "
                       r"2\.0\*\*12\), 'dynamic' or None, got -2\.0$"),
    (float("nan"), ValueError, r"^Trainer: loss_scale must be a finite number > 0 .* got nan$"),
    ({"growth": 2}, TypeError, r"^Trainer: loss_scale as a dict holds dynamic_loss_scale's "
                               r"options init_scale, growth_interval, growth_factor, "
                               r"backoff_factor, min_scale; got unknown growth$"),
    ({"growth_interval": 0}, ValueError, r"dynamic_loss_scale: growth_interval"),
])
def test_bad_loss_scales_are_named(loss_scale, error, message):
    with pytest.raises(error, match=message):
        Trainer(L.mlp([8], 3), optim.sgd(0.1), compute_dtype=jnp.float16,
                loss_scale=loss_scale)


# -- evaluation parameters -------------------------------------------------------


def _evaluate_at(trainer, ts, params, x, y):
    """What a trainer without eval_params reports for ``params``."""
    plain = Trainer(trainer.model, trainer.optimizer)
    return plain.evaluate(ts._replace(params=params), x, y)


@pytest.mark.parametrize("name", ["schedule_free", "ema", "lookahead"])
def test_evaluate_uses_the_optimizers_evaluation_parameters(digits, name):
    optimizer, eval_params = {
        "schedule_free": (optim.schedule_free_adamw(3e-3), optim.schedule_free_eval_params),
        "ema": (optim.ema_params(optim.adam(3e-3), decay=0.9), lambda s: s.ema),
        "lookahead": (optim.lookahead(optim.adam(3e-3), sync_period=5), lambda s: s.slow),
    }[name]
    x, y = digits.x_train[:448], digits.y_train[:448]  # 7 steps: not a Lookahead sync
    trainer = Trainer(L.mlp([32], 10), optimizer, eval_params=eval_params)
    ts, hist = fit(trainer, trainer.init(KEY, digits.input_shape), x, y, epochs=1,
                   batch_size=64, x_test=digits.x_test, y_test=digits.y_test, progress=False)
    expected = eval_params(ts.opt_state)
    _leaves_equal(trainer.evaluation_params(ts), expected)
    got = trainer.evaluate(ts, digits.x_test, digits.y_test)
    assert got == _evaluate_at(trainer, ts, expected, digits.x_test, digits.y_test)
    assert hist["test_loss"][-1] == got["loss"]  # fit's test metrics use them too
    at_params = _evaluate_at(trainer, ts, ts.params, digits.x_test, digits.y_test)
    assert at_params["loss"] != got["loss"]  # the training point differs


def test_eval_params_look_inside_the_trainers_loss_scale(digits):
    trainer = Trainer(L.mlp([32], 10), optim.schedule_free_adamw(3e-3),
                      compute_dtype=jnp.float16, eval_params=optim.schedule_free_eval_params)
    ts, _ = trainer.epoch(trainer.init(KEY, digits.input_shape), digits.x_train[:256],
                          digits.y_train[:256], batch_size=64)
    assert isinstance(ts.opt_state, optim.DynamicLossScaleState)
    _leaves_equal(trainer.evaluation_params(ts),
                  optim.schedule_free_eval_params(ts.opt_state.inner_state))


def test_bad_eval_params_are_named(digits):
    with pytest.raises(TypeError, match=r"^Trainer: eval_params must be a function "
                                        r"opt_state -> params .* got 3$"):
        Trainer(L.mlp([8], 10), optim.adam(1e-3), eval_params=3)
    trainer = Trainer(L.mlp([8], 10), optim.adam(1e-3), eval_params=lambda s: {"w": 1})
    ts = trainer.init(KEY, digits.input_shape)
    with pytest.raises(TypeError, match=r"^Trainer: eval_params\(opt_state\) must return a "
                                        r"pytree like the params"):
        trainer.evaluate(ts, digits.x_test, digits.y_test)


def test_data_parallel_takes_the_same_options(digits):
    """DataParallel (here with sharded params) runs float16 with the loss scale and
    evaluates at eval_params, as Trainer does: the same state, bit for bit."""
    from fdl.parallel import DataParallel, make_mesh

    x, y = digits.x_train[:256], digits.y_train[:256]
    options = {"compute_dtype": jnp.float16, "eval_params": optim.schedule_free_eval_params}
    out = []
    for trainer in (Trainer(L.mlp([16], 10), optim.schedule_free_adamw(3e-3), **options),
                    DataParallel(L.mlp([16], 10), optim.schedule_free_adamw(3e-3), make_mesh(1),
                                 shard_params=True, **options)):
        key = jax.random.key(0, impl="threefry2x32")  # one generator for both
        ts, _ = trainer.epoch(trainer.init(key, digits.input_shape), x, y, batch_size=64)
        out.append((ts, trainer.evaluate(ts, digits.x_test, digits.y_test)))
    assert isinstance(out[1][0].opt_state, optim.DynamicLossScaleState)
    _leaves_equal(jax.tree_util.tree_map(np.asarray, out[0][0].params),
                  jax.tree_util.tree_map(np.asarray, out[1][0].params))
    assert out[0][1] == out[1][1]
