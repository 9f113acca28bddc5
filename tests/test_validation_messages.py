"""Bad input raises ValueError/TypeError at the public boundary, naming the argument
and what was expected and given — never an XLA stack trace.

One table per kind of mistake, over the public ops and losses; each message is
matched, so a test cannot pass on an unrelated error. Inside `jit` the shape and
dtype checks still fire (shapes are known at trace time); the value checks (label
range, probabilities summing to 1) are skipped, silently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import losses, ops

F = lambda *shape: jnp.ones(shape)  # noqa: E731  (float64 under the test config)
I = lambda *shape: jnp.ones(shape, jnp.int32)  # noqa: E731

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "softplus", "gelu", "silu", "elu"]


def _activation(name):
    return getattr(ops, name)


# --------------------------------------------------------------------------- #
# One table: (call, exception, message regex)
# --------------------------------------------------------------------------- #

SHAPE_AND_DTYPE_CASES = {
    # linear: ranks, inner dimension, bias, dtype
    "linear w rank": (lambda: ops.linear(F(2, 3), F(3), F(3)), ValueError,
                      r"linear: w must have 2 dimension\(s\) \(d_in×d_out\), got shape \(3,\)"),
    "linear b rank": (lambda: ops.linear(F(2, 3), F(3, 4), F(1, 4)), ValueError,
                      r"linear: b must have 1 dimension\(s\) \(d_out\), got shape \(1, 4\)"),
    "linear x rank": (lambda: ops.linear(F(), F(3, 4), F(4)), ValueError,
                      r"linear: x must have at least 1 dimension\(s\).*got shape \(\)"),
    "linear inner dim": (lambda: ops.linear(F(2, 3), F(4, 5), F(5)), ValueError,
                         r"linear: x has d_in = 3 \(shape \(2, 3\)\) but w has d_in = 4 "
                         r"\(shape \(4, 5\)\); the last dimension of x must equal the first of w"),
    "linear bias size": (lambda: ops.linear(F(2, 3), F(3, 5), F(4)), ValueError,
                         r"linear: b must have shape \(5,\) \(d_out\) for w \(3, 5\), got "
                         r"\(4,\)"),
    "linear int x": (lambda: ops.linear(I(2, 3), F(3, 5), F(5)), TypeError,
                     r"linear: x must be a floating-point array, got dtype int32"),
    "linear int w": (lambda: ops.linear(F(2, 3), I(3, 5), F(5)), TypeError,
                     r"linear: w must be a floating-point array, got dtype int32"),
    # softmax / log_softmax
    "softmax axis range": (lambda: ops.softmax(F(2, 3), axis=2), ValueError,
                           r"softmax: axis 2 is out of range for an input of rank 2"),
    "softmax negative axis range": (lambda: ops.softmax(F(2, 3), axis=-3), ValueError,
                                    r"softmax: axis -3 is out of range for an input of rank 2"),
    "softmax axis type": (lambda: ops.softmax(F(2, 3), axis=1.0), TypeError,
                          r"softmax: axis must be an int, got 1\.0"),
    "softmax scalar": (lambda: ops.softmax(F()), ValueError,
                       r"softmax: x must have at least 1 dimension\(s\), got shape \(\)"),
    "softmax int": (lambda: ops.softmax(I(2, 3)), TypeError,
                    r"softmax: x must be a floating-point array, got dtype int32"),
    "log_softmax int": (lambda: ops.log_softmax(I(2, 3)), TypeError,
                        r"log_softmax: x must be a floating-point array, got dtype int32"),
    "log_softmax axis": (lambda: ops.log_softmax(F(4), axis=1), ValueError,
                         r"log_softmax: axis 1 is out of range for an input of rank 1"),
    # mse
    "mse shapes": (lambda: losses.mse(F(2, 3), F(3, 2)), ValueError,
                   r"mse: pred and target must have the same shape, got pred \(2, 3\) and "
                   r"target \(3, 2\)"),
    "mse int pred": (lambda: losses.mse(I(3), F(3)), TypeError,
                     r"mse: pred must be a floating-point array, got dtype int32"),
    "mse int target": (lambda: losses.mse(F(3), I(3)), TypeError,
                       r"mse: target must be a floating-point array, got dtype int32"),
    "mse reduction": (lambda: losses.mse(F(3), F(3), "avg"), ValueError,
                      r"mse: reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"),
    # softmax_cross_entropy
    "ce label shape": (lambda: losses.softmax_cross_entropy(F(2, 3), I(3)), ValueError,
                       r"softmax_cross_entropy: integer labels must have shape "
                       r"logits.shape\[:-1\] = \(2,\), got labels of shape \(3,\) for logits "
                       r"of shape \(2, 3\)"),
    "ce prob shape": (lambda: losses.softmax_cross_entropy(F(2, 3), F(2, 4) / 4), ValueError,
                      r"softmax_cross_entropy: targets and logits must have the same shape, "
                      r"got targets \(2, 4\) and logits \(2, 3\)"),
    "ce int logits": (lambda: losses.softmax_cross_entropy(I(2, 3), I(2)), TypeError,
                      r"softmax_cross_entropy: logits must be a floating-point array, got "
                      r"dtype int32"),
    "ce scalar logits": (lambda: losses.softmax_cross_entropy(F(), I()), ValueError,
                         r"softmax_cross_entropy: logits must have at least 1 dimension\(s\) "
                         r"\(…×classes\), got shape \(\)"),
    "ce reduction": (lambda: losses.softmax_cross_entropy(F(2, 3), I(2), "avg"), ValueError,
                     r"softmax_cross_entropy: reduction must be one of"),
    # sigmoid_binary_cross_entropy
    "bce shapes": (lambda: losses.sigmoid_binary_cross_entropy(F(3), F(4) / 2), ValueError,
                   r"sigmoid_binary_cross_entropy: logits and targets must have the same "
                   r"shape, got logits \(3,\) and targets \(4,\)"),
    "bce int logits": (lambda: losses.sigmoid_binary_cross_entropy(I(3), F(3) / 2), TypeError,
                       r"sigmoid_binary_cross_entropy: logits must be a floating-point array"),
    "bce int targets": (lambda: losses.sigmoid_binary_cross_entropy(F(3), I(3)), TypeError,
                        r"sigmoid_binary_cross_entropy: targets must be a floating-point "
                        r"array, got dtype int32"),
    # huber
    "huber shapes": (lambda: losses.huber(F(3), F(3, 1)), ValueError,
                     r"huber: pred and target must have the same shape, got pred \(3,\) and "
                     r"target \(3, 1\)"),
    "huber int": (lambda: losses.huber(I(3), F(3)), TypeError,
                  r"huber: pred must be a floating-point array, got dtype int32"),
    "huber reduction": (lambda: losses.huber(F(3), F(3), reduction="max"), ValueError,
                        r"huber: reduction must be one of \('mean', 'sum', 'none'\), got 'max'"),
}

HYPERPARAMETER_CASES = {
    "leaky_relu slope nan": (lambda: ops.leaky_relu(F(3), float("nan")), ValueError,
                             r"leaky_relu: negative_slope must be finite, got nan"),
    "leaky_relu slope type": (lambda: ops.leaky_relu(F(3), "0.1"), TypeError,
                              r"leaky_relu: negative_slope must be a number, got '0.1'"),
    "gelu approximate": (lambda: ops.gelu(F(3), 1), TypeError,
                         r"gelu: approximate must be True or False, got 1"),
    "elu alpha": (lambda: ops.elu(F(3), 0.0), ValueError, r"elu: alpha must be > 0, got 0\.0"),
    "huber delta": (lambda: losses.huber(F(3), F(3), -1.0), ValueError,
                    r"huber: delta must be > 0, got -1\.0"),
    "huber delta inf": (lambda: losses.huber(F(3), F(3), float("inf")), ValueError,
                        r"huber: delta must be finite, got inf"),
    "unknown keyword": (lambda: ops.relu(F(3), axis=1), TypeError,
                        r"relu: got an unexpected keyword argument 'axis'"),
    "missing argument": (lambda: ops.linear(F(2, 3), F(3, 4)), TypeError,
                         r"linear: missing a required argument: 'b'"),
}

VALUE_CASES = {  # concrete values, outside jit
    "ce label too large": (lambda: losses.softmax_cross_entropy(F(2, 3), jnp.array([0, 3])),
                           ValueError,
                           r"softmax_cross_entropy: labels must be in \[0, 3\) for 3 classes, "
                           r"got 3 at index \(1,\)"),
    "ce label negative": (lambda: losses.softmax_cross_entropy(F(2, 3), jnp.array([-1, 0])),
                          ValueError, r"labels must be in \[0, 3\) for 3 classes, got -1 at "
                                      r"index \(0,\)"),
    "ce probabilities sum": (
        lambda: losses.softmax_cross_entropy(F(2, 3), jnp.array([[1.0, 0, 0], [0.5, 0.5, 0.5]])),
        ValueError, r"probability targets must sum to 1 along the last axis, but row \(1,\) "
                    r"sums to .*1\.5"),
    "ce probabilities negative": (
        lambda: losses.softmax_cross_entropy(F(2, 3), jnp.array([[1.5, -0.5, 0], [1.0, 0, 0]])),
        ValueError, r"probability targets must be ≥ 0, got -0\.5 at index \(0, 1\)"),
    "bce target above 1": (
        lambda: losses.sigmoid_binary_cross_entropy(F(3), jnp.array([0.0, 1.5, 0.2])),
        ValueError, r"sigmoid_binary_cross_entropy: targets must be in \[0, 1\], got 1\.5 at "
                    r"index \(1,\)"),
    "bce target nan": (
        lambda: losses.sigmoid_binary_cross_entropy(F(3), jnp.array([0.0, np.nan, 0.2])),
        ValueError, r"targets must be in \[0, 1\], got nan at index \(1,\)"),
}


@pytest.mark.parametrize("case", list(SHAPE_AND_DTYPE_CASES))
def test_shape_and_dtype_errors(case):
    call, error, match = SHAPE_AND_DTYPE_CASES[case]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("case", list(HYPERPARAMETER_CASES))
def test_hyperparameter_errors(case):
    call, error, match = HYPERPARAMETER_CASES[case]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_value_errors_outside_jit(case):
    call, error, match = VALUE_CASES[case]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_reject_integers_and_non_arrays(name):
    f = _activation(name)
    with pytest.raises(TypeError, match=rf"{name}: x must be a floating-point array, got "
                                        r"dtype int32; cast it first"):
        f(I(2, 3))
    with pytest.raises(TypeError, match=rf"{name}: x must be an array, got list"):
        f([1.0, 2.0])


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_accept_any_rank(name):
    f = _activation(name)
    for shape in [(), (1,), (2, 3), (2, 1, 3)]:  # eval_shape: validated, not compiled
        assert jax.eval_shape(f, F(*shape)).shape == shape


# --------------------------------------------------------------------------- #
# Inside jit: shapes still checked, values not (they are unknown)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("case", ["linear inner dim", "linear w rank", "softmax axis range",
                                  "mse shapes", "ce label shape", "ce prob shape",
                                  "bce shapes", "huber shapes", "linear int x"])
def test_shape_checks_fire_inside_jit(case):
    call, error, match = SHAPE_AND_DTYPE_CASES[case]
    with pytest.raises(error, match=match):
        jax.jit(call)()  # a closure over concrete arrays: traced, so checked at trace time


def test_shape_checks_fire_on_traced_arguments():
    with pytest.raises(ValueError, match=r"linear: x has d_in = 3"):
        jax.jit(ops.linear)(F(2, 3), F(4, 5), F(5))
    with pytest.raises(ValueError, match=r"integer labels must have shape"):
        jax.jit(losses.softmax_cross_entropy)(F(2, 3), I(3))
    with pytest.raises(ValueError, match=r"mse: pred and target must have the same shape"):
        jax.grad(losses.mse)(F(2, 3), F(3, 2))
    with pytest.raises(ValueError, match=r"linear: x has d_in = 3"):
        jax.vmap(ops.linear, in_axes=(0, None, None))(F(7, 2, 3), F(4, 5), F(5))


def test_value_checks_are_skipped_inside_jit():
    """Out-of-range labels or unnormalised targets are not knowable at trace time:
    no error, no crash (the result is whatever the arithmetic gives)."""
    logits = jnp.array([[0.1, 0.2, 0.3], [0.3, -0.1, 0.0]])
    bad_labels = jnp.array([0, 3])
    out = jax.jit(losses.softmax_cross_entropy)(logits, bad_labels)
    assert out.shape == ()
    g = jax.jit(jax.grad(losses.softmax_cross_entropy))(logits, bad_labels)
    assert g.shape == (2, 3)
    unnormalised = jnp.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    loss = jax.jit(losses.softmax_cross_entropy)(logits, unnormalised)
    assert np.isfinite(float(loss))
    bce = jax.jit(losses.sigmoid_binary_cross_entropy)(F(3), jnp.array([0.0, 1.5, 0.2]))
    assert np.isfinite(float(bce))
    # and the same values outside jit are rejected
    with pytest.raises(ValueError, match="labels must be in"):
        losses.softmax_cross_entropy(logits, bad_labels)


def test_valid_inputs_pass_validation():
    """The boundary is not over-strict: batch 1, width 1, float32, leading dims.
    ``bind`` runs the validation (values included) without computing anything."""
    ops.linear.bind(F(1, 1), F(1, 1), F(1))
    ops.linear.bind(F(2, 3, 4), F(4, 2), F(2))
    ops.linear.bind(jnp.ones((2, 3), jnp.float32), jnp.ones((3, 2), jnp.float32),
                    jnp.ones(2, jnp.float32))
    ops.softmax.bind(F(2, 3), axis=-2)
    ops.softmax.bind(F(2, 3), axis=np.int64(0))
    losses.softmax_cross_entropy.bind(F(1, 1), jnp.array([0]))
    losses.softmax_cross_entropy.bind(F(2, 3), jnp.full((2, 3), 1 / 3))
    losses.softmax_cross_entropy.bind(jnp.ones((2, 3), jnp.float32),
                                      jnp.full((2, 3), 1 / 3, jnp.float32))
    losses.sigmoid_binary_cross_entropy.bind(F(3), jnp.array([0.0, 1.0, 0.5]))
    losses.huber.bind(F(3), F(3), 1)


# --------------------------------------------------------------------------- #
# Soft targets: the p − y gradient assumes rows that sum to 1
# --------------------------------------------------------------------------- #


@pytest.mark.float32
def test_soft_targets_must_sum_to_one_wherever_the_values_are_known():
    logits = jnp.array([[0.1, 0.2, 0.3], [0.3, -0.1, 0.0]])
    bad = jnp.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    message = (r"softmax_cross_entropy: probability targets must sum to 1 along the last axis, "
               r"but row \(0,\) sums to 1\.5; pass integer labels, or normalise the targets "
               r"\(the gradient p − y holds only for rows that sum to 1\)")
    with pytest.raises(ValueError, match=message):
        losses.softmax_cross_entropy(logits, bad)
    with pytest.raises(ValueError, match=message):  # the targets are not traced by grad
        jax.grad(losses.softmax_cross_entropy)(logits, bad)


@pytest.mark.float32
def test_under_jit_unnormalised_targets_get_the_gradient_of_another_function():
    """Why the precondition: for any `y` the loss is `(Σy) logsumexp(z) − ⟨y, z⟩`, so
    autodiff gives `((Σy) p − y)/N` and the fused rule `(p − y)/N`: they differ by
    `(1 − Σy) p/N` on a row that does not sum to 1 and agree on one that does."""
    logits = jnp.array([[0.1, 0.2, 0.3], [0.3, -0.1, 0.0]])
    bad = jnp.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    grad = jax.jit(jax.grad(losses.softmax_cross_entropy))
    manual = grad(logits, bad)
    with fdl.gradient_mode("autodiff"):
        auto = jax.jit(jax.grad(losses.softmax_cross_entropy))(logits, bad)
    p = ops.softmax(logits)
    np.testing.assert_allclose(manual - auto, (1 - bad.sum(-1, keepdims=True)) * p / 2,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(manual[1], auto[1], rtol=1e-6)
    assert np.abs(np.asarray(manual[0] - auto[0])).max() > 0.05
