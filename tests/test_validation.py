"""Bad input raises ValueError/TypeError at the public boundary, naming the argument
and what was expected and given — never an XLA stack trace.

One table per kind of mistake, over every public op and loss that exists; each
message is matched, so a test cannot pass on an unrelated error. Inside ``jit``
the shape and dtype checks still fire (shapes are known at trace time); the
value checks (label range, probabilities summing to 1) are skipped, silently.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
# One vocabulary (fdl._validate) for the layers and the primitives
# --------------------------------------------------------------------------- #

from fdl import _validate as v  # noqa: E402
from fdl import layers  # noqa: E402


@pytest.mark.float32
@pytest.mark.parametrize("bad", [True, False, np.bool_(True)])
@pytest.mark.parametrize("make, input_shape", [
    (lambda: layers.RNN(4), lambda b: (b, 3)),  # the recurrent check used to accept True
    (lambda: layers.LSTM(4), lambda b: (5, b)),
    (lambda: layers.Conv2D(2, 1), lambda b: (4, b, 1)),
    (lambda: layers.LayerNorm(), lambda b: (b,)),
    (lambda: layers.Dense(3), lambda b: (b,)),
    (lambda: layers.Embedding(5, 2), lambda b: (b,)),
])
def test_input_shape_rejects_bools_in_every_layer(make, input_shape, bad):
    with pytest.raises(ValueError, match=r"input_shape must be .* without the batch axis"):
        make().init(jax.random.key(0), input_shape(bad))


@pytest.mark.float32
@pytest.mark.parametrize("bad", [True, 0, -1, 2.0, "3", np.bool_(True)])
@pytest.mark.parametrize("make, name", [
    (lambda n: layers.Dense(n), "features"),
    (lambda n: layers.Conv2D(n, 3), "features"),
    (lambda n: layers.Embedding(n, 2), "vocab_size"),
    (lambda n: layers.GRU(n), "hidden"),
    (lambda n: layers.MultiHeadAttention(n), "num_heads"),
    (lambda n: layers.LuongAttention(attention_size=n), "attention_size"),
    (lambda n: layers.mlp([4, n], 2), r"hidden\[1\]"),
])
def test_sizes_are_positive_ints_not_bools(make, name, bad):
    with pytest.raises(ValueError, match=rf"{name} must be a positive int, got {re.escape(repr(bad))}"):
        make(bad)


@pytest.mark.float32
def test_numpy_ints_are_sizes():
    assert v.positive_int("f", "n", np.int64(3)) == 3
    assert v.positive_ints("f", "k", np.int32(2), 2) == (2, 2)
    assert v.positive_ints("f", "k", [1, np.int64(3)], 2) == (1, 3)
    assert v.input_shape("f", (np.int64(4), 2), "(a, b)", rank=2) == (4, 2)
    assert v.positive_int("f", "n", None, optional=True) is None


@pytest.mark.float32
@pytest.mark.parametrize("make", [lambda e: layers.LayerNorm(eps=e), lambda e: layers.BatchNorm(eps=e),
                                  lambda e: layers.RMSNorm(eps=e)])
def test_layers_and_ops_share_the_eps_rule(make):
    """One rule: a non-number is a TypeError, a non-finite or non-positive number a
    ValueError (the layers used to raise ValueError for a string)."""
    with pytest.raises(TypeError, match=r"eps must be a number, got '1e-5'"):
        make("1e-5")
    with pytest.raises(ValueError, match=r"eps must be > 0, got 0"):
        make(0)
    with pytest.raises(ValueError, match=r"eps must be finite, got inf"):
        make(float("inf"))
    with pytest.raises(TypeError, match=r"layer_norm: eps must be a number, got '1e-5'"):
        ops.layer_norm(jnp.ones((2, 3)), jnp.ones(3), jnp.zeros(3), "1e-5")


@pytest.mark.float32
@pytest.mark.parametrize("call, fn, what", [
    (lambda: layers.Conv2D(2, 5, padding="VALID").init(jax.random.key(0), (4, 6, 1)),
     "Conv2D", "window"),
    (lambda: layers.MaxPool2D((5, 1)).init(jax.random.key(0), (4, 6, 1)), "MaxPool2D", "window"),
    (lambda: ops.conv2d(jnp.ones((1, 4, 6, 1)), jnp.ones((5, 1, 1, 2)), jnp.ones(2),
                        1, "VALID", 1), "conv2d", "dilated kernel"),
    (lambda: ops.max_pool2d(jnp.ones((1, 4, 6, 1)), (5, 1)), "max_pool2d", "window"),
])
def test_one_message_when_the_window_does_not_fit(call, fn, what):
    with pytest.raises(ValueError, match=rf"{fn}: along H the {what} spans 5 but the padded "
                                         r"input has only 4 \(input 4, padding \(0, 0\)\); "
                                         r"use padding='SAME'"):
        call()


@pytest.mark.float32
@pytest.mark.parametrize("call, fn", [
    (lambda: layers.AvgPool2D(2, padding=((0, 0), (2, 1))), "AvgPool2D"),
    (lambda: ops.avg_pool2d(jnp.ones((1, 4, 4, 1)), 2, None, ((0, 0), (2, 1))), "avg_pool2d"),
])
def test_one_message_when_pool_padding_covers_a_window(call, fn):
    with pytest.raises(ValueError, match=rf"{fn}: padding \(2, 1\) along W must be smaller "
                                         r"than the window \(2\) on each side"):
        call()


@pytest.mark.float32
def test_window_output_size_is_the_convolution_formula():
    # o = ⌊(n + lo + hi − e)/s⌋ + 1
    assert v.window_output_size("f", "H", 7, 3, 2, (1, 1)) == 4
    assert v.window_output_size("f", "H", 5, 5, 1, (0, 0)) == 1


# --------------------------------------------------------------------------- #
# Layering (DESIGN.md): each module imports only those above it
# --------------------------------------------------------------------------- #

import ast  # noqa: E402
import pathlib  # noqa: E402

import fdl  # noqa: E402

_ORDER = ["_validate", "random", "modes", "recording", "_samplers", "_tangent", "primitive",
          "hessian", "ops", "losses", "check", "layers", "optim",
          "data", "io", "train", "privacy", "parallel", "models", "cli"]


def _fdl_imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fdl"):
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("fdl.")}
    return found & set(_ORDER)


@pytest.mark.float32
def test_no_module_imports_one_below_it():
    src = pathlib.Path(fdl.__file__).parent
    wrong = []
    for path in sorted(src.rglob("*.py")):
        module = path.relative_to(src).parts[0].removesuffix(".py")
        if module not in _ORDER:
            continue
        for target in _fdl_imports(path):
            if _ORDER.index(target) > _ORDER.index(module):
                wrong.append(f"{path.relative_to(src)} imports fdl.{target}")
    assert wrong == []


@pytest.mark.float32
def test_layers_install_no_privacy_but_expose_probes():
    """Dense reports per-example squared gradient norms through a probe that anyone can
    install (`fdl.layers.base.install_probe`); no layer mentions fdl.privacy."""
    src = pathlib.Path(fdl.__file__).parent / "layers"
    assert [p.name for p in src.glob("*.py") if "privacy" in p.read_text()] == []
    from fdl.layers.base import PROBE, has_probe, install_probe

    dense = layers.Dense(3)
    _, params, state = dense.init(jax.random.key(0), (4,))
    x = jax.random.normal(jax.random.key(1), (5, 4))
    probed = install_probe(params, 5)
    assert has_probe(probed) and not has_probe(params)
    y = dense.apply(params, state, x)[0]
    np.testing.assert_array_equal(dense.apply(probed, state, x)[0], y)

    def total(p):
        return jnp.sum(jnp.sin(dense.apply(p, state, x)[0]))
    norms = jax.grad(total)(probed)[PROBE]
    per_example = jax.vmap(lambda xi: jax.grad(
        lambda p: jnp.sum(jnp.sin(dense.apply(p, state, xi[None])[0])))(params))(x)
    expected = sum(jnp.sum(g.reshape(5, -1) ** 2, axis=1)
                   for g in jax.tree_util.tree_leaves(per_example))
    np.testing.assert_allclose(norms, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="already hold a 'probe' entry"):
        install_probe(probed, 5)


# --------------------------------------------------------------------------- #
# One name per concept; one markup; a helper for stateless layers
# --------------------------------------------------------------------------- #


@pytest.mark.float32
def test_activation_alias_is_deprecated_for_get_activation():
    with pytest.warns(DeprecationWarning, match=r"use fdl\.layers\.get_activation\(name\)"):
        layer = layers.Activation("tanh")
    assert layer.name == layers.get_activation("tanh").name == "tanh"


@pytest.mark.float32
def test_example_samplers_accept_a_key_or_a_seed():
    import fdl.primitive as P

    x = P.gaussian(3, 2, scale=2.0)(jax.random.key(0), jnp.float32)
    assert x.shape == (3, 2) and x.dtype == jnp.float32
    np.testing.assert_array_equal(P.gaussian(4)(7, jnp.float32), P.gaussian(4)(7, jnp.float32))
    assert not hasattr(P, "normal")  # the old name of gaussian is gone, no shim


@pytest.mark.float32
def test_stateless_builds_a_parameter_free_layer():
    layer = layers.stateless("double", lambda x: 2 * x, lambda s: s[:-1] + (s[-1],))
    shape, params, state = layer.init(jax.random.key(0), [3, 4])
    assert (shape, params, state) == ((3, 4), {}, {})
    y, new_state = layer.apply({}, {}, jnp.ones((2, 3, 4)))
    np.testing.assert_array_equal(y, 2 * jnp.ones((2, 3, 4)))
    assert new_state == {}
    seen = []
    noisy = layers.stateless("noisy", lambda x, key, train: seen.append((key, train)) or x,
                             random=True)
    noisy.apply({}, {}, jnp.ones(2), key="k", train=True)
    assert seen == [("k", True)]


_HOUSE = ["_validate.py", "primitive.py", "losses.py", "privacy.py", "random.py",
          "__init__.py", "ops", "layers"]


def _house_files():
    src = pathlib.Path(fdl.__file__).parent
    for name in _HOUSE:
        path = src / name
        yield from (sorted(path.glob("*.py")) if path.is_dir() else [path])


@pytest.mark.float32
def test_house_docstrings_use_one_markup_and_carry_no_history():
    roles = re.compile(r":(func|class|mod|data|meth|attr):`|``")
    history = re.compile(r"\d×\s*(faster|slower|longer)|\b(faster|slower) than before|"
                         r"\bran \d|\d+(\.\d+)?% (faster|slower)")
    found = [f"{p.name}:{i}" for p in _house_files()
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if roles.search(line) or history.search(line)]
    assert found == []


@pytest.mark.float32
@pytest.mark.parametrize("call, fn, name", [
    (lambda r: layers.Dropout(r), "Dropout", "rate"),
    (lambda r: layers.BatchNorm(momentum=r), "BatchNorm", "momentum"),
    (lambda r: ops.dropout(jnp.ones(3), jax.random.key(0), r), "dropout", "rate"),
])
def test_fractions_share_one_rule(call, fn, name):
    """Drop rates and running-average weights: a number in [0, 1); a string is a
    TypeError (the layers used to call it a ValueError)."""
    with pytest.raises(TypeError, match=rf"{fn}: {name} must be a number, got '0.5'"):
        call("0.5")
    with pytest.raises(ValueError, match=rf"{fn}: {name} \(.*\) must be in \[0, 1\), got 1.0"):
        call(1.0)


@pytest.mark.float32
def test_lstm_forget_bias_must_be_finite():
    with pytest.raises(ValueError, match=r"LSTM: forget_bias must be finite, got inf"):
        layers.LSTM(3, forget_bias=float("inf"))
    with pytest.raises(TypeError, match=r"LSTM: forget_bias must be a number, got True"):
        layers.LSTM(3, forget_bias=True)


@pytest.mark.float32
@pytest.mark.parametrize("call, fn, name", [
    (lambda b: layers.RNN(3, reverse=b), "RNN", "reverse"),
    (lambda b: layers.GRU(3, return_sequences=b), "GRU", "return_sequences"),
    (lambda b: layers.MultiHeadAttention(2, causal=b), "MultiHeadAttention", "causal"),
    (lambda b: ops.gelu(jnp.ones(3), b), "gelu", "approximate"),
    (lambda b: ops.attention(jnp.ones((1, 2, 4)), jnp.ones((1, 2, 4)), jnp.ones((1, 2, 4)),
                             causal=b), "attention", "causal"),
])
def test_flags_share_one_rule(call, fn, name):
    """A flag is a bool (Python's or NumPy's), never a truthy stand-in."""
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match=rf"{fn}: {name} must be True or False, got "
                                            rf"{re.escape(repr(bad))}"):
            call(bad)
    call(np.bool_(True))
    call(False)
