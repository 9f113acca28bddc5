"""One validation vocabulary (`fdl._validate`) for the layers and the primitives.

The declarative shape specs (`shapes`), sizes, windows, fractions, flags and eps:
each rule is written once and gives the same message wherever it is used.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.primitive as P
from fdl import _validate as v
from fdl import layers, ops

F = lambda *shape: jnp.ones(shape, jnp.float32)  # noqa: E731
I = lambda *shape: jnp.ones(shape, jnp.int32)  # noqa: E731

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


@pytest.mark.float32
def test_example_samplers_accept_a_key_or_a_seed():
    import fdl.primitive as P

    x = P.gaussian(3, 2, scale=2.0)(jax.random.key(0), jnp.float32)
    assert x.shape == (3, 2) and x.dtype == jnp.float32
    np.testing.assert_array_equal(P.gaussian(4)(7, jnp.float32), P.gaussian(4)(7, jnp.float32))
    assert not hasattr(P, "normal")  # the old name of gaussian is gone, no shim


# --------------------------------------------------------------------------- #
# The declarative shape spec (fdl._validate.shapes)
# --------------------------------------------------------------------------- #

LINEAR = v.shapes("linear", x="…×d_in", w="d_in×d_out", b="d_out")


def _message(spec, **args):
    with pytest.raises((ValueError, TypeError)) as e:
        spec(**args)
    return str(e.value)


@pytest.mark.float32
def test_a_spec_binds_named_dimensions_and_returns_them():
    assert LINEAR(x=F(5, 2, 3), w=F(3, 4), b=F(4)) == {"d_in": 3, "d_out": 4}
    cell = v.shapes("cell", x="…×D", h="…×H", wx="D×4H", b="4H", c="optional H")
    assert cell(x=F(2, 3), h=F(2, 5), wx=F(3, 20), b=F(20), c=None) == {"D": 3, "H": 5}
    assert v.shapes("f", s="")(s=F()) == {}
    assert LINEAR(x=F(2, 3)) == {"d_in": 3}  # arguments not given are not checked


@pytest.mark.float32
@pytest.mark.parametrize("spec, args, message", [
    (LINEAR, dict(x=F(2, 3), w=F(4, 5), b=F(5)),
     "linear: x has d_in = 3 (shape (2, 3)) but w has d_in = 4 (shape (4, 5)); the last "
     "dimension of x must equal the first of w"),
    (LINEAR, dict(x=F(2, 3), w=F(3, 5), b=F(4)),
     "linear: b must have shape (5,) (d_out) for w (3, 5), got (4,)"),
    (LINEAR, dict(x=F(), w=F(3, 4)),
     "linear: x must have at least 1 dimension(s) (…×d_in), got shape ()"),
    (LINEAR, dict(x=F(2, 3), w=F(3)), "linear: w must have 2 dimension(s) (d_in×d_out), got shape (3,)"),
    (LINEAR, dict(x=I(2, 3)), "linear: x must be a floating-point array, got dtype int32; cast it "
                              "first, e.g. x.astype(jnp.float32)"),
    (v.shapes("mse", pred="…", target="…"), dict(pred=F(2, 3), target=F(3, 2)),
     "mse: pred and target must have the same shape, got pred (2, 3) and target (3, 2)"),
    (v.shapes("cell", x="…×D", h="…×H"), dict(x=F(2, 3), h=F(1, 5)),
     "cell: x (2, 3) and h (1, 5) must share their leading (batch) dimensions (the … in "
     "x ∈ …×D, h ∈ …×H)"),
    (v.shapes("cell", h="…×H", b="4H, gates i, f, g, o"), dict(h=F(2, 5), b=F(15)),
     "cell: b must have shape (20,) (4H, gates i, f, g, o) for h (2, 5), got (15,)"),
    (v.shapes("cat", h="…×d", e="…×S×d̄", w="d+d̄×a: transposed"), dict(h=F(4), e=F(2, 3), w=F(6, 2)),
     "cat: w must have d+d̄ = 4+3 = 7 in its first dimension for h (4,) and e (2, 3), got "
     "shape (6, 2) (d+d̄×a: transposed)"),
    (v.shapes("embedding", ids="int …, token ids"), dict(ids=F(2)),
     "embedding: ids must be an integer array (token ids), got dtype float32; cast it first, "
     "e.g. ids.astype(jnp.int32)"),
    (v.shapes("f", bq="optional D"), dict(bq=F(2, 2)),
     "f: bq must have 1 dimension(s) (D), got shape (2, 2)"),
    (v.shapes("f", w="d×d"), dict(w=F(3, 4)), "f: w must have shape (3, 3) (d×d), got (3, 4)"),
    (v.shapes("f", s=""), dict(s=F(2)), "f: s must have 0 dimension(s), a scalar, got shape (2,)"),
])
def test_a_spec_says_what_was_expected_and_given(spec, args, message):
    assert _message(spec, **args) == message


@pytest.mark.float32
def test_a_spec_is_checked_by_the_primitive_at_every_call_and_under_jit():
    def scale(x, w):
        return x * jnp.broadcast_to(w, x.shape)

    p = P.primitive(scale, lambda r, g: (g, jnp.sum(g, axis=0)), register=False,
                    spec=v.shapes("scale", x="…×d", w="d"))
    message = r"scale: w must have shape \(3,\) \(d\) for x \(4, 3\), got \(2,\)"
    with pytest.raises(ValueError, match=message):
        p(F(4, 3), F(2))
    with pytest.raises(ValueError, match=message):
        jax.jit(p)(F(4, 3), F(2))
    with pytest.raises(ValueError, match=message):  # what wrappers of a primitive call
        p.validate(F(4, 3), F(2))
    np.testing.assert_array_equal(p(F(4, 3), F(3)), F(4, 3))


@pytest.mark.float32
def test_a_spec_naming_no_parameter_or_unreadable_is_refused_at_definition():
    with pytest.raises(ValueError, match=r"primitive 'scale': spec argument\(s\) \['y'\] are not "
                                         r"parameters of the forward, which takes \['x', 'w'\]"):
        P.primitive(lambda x, w: x * w, lambda r, g: (g, g), name="scale", register=False,
                    spec=v.shapes("scale", y="…"))
    with pytest.raises(ValueError, match=r"shapes: at most one … in x='…×d×…'"):
        v.shapes("f", x="…×d×…")
    with pytest.raises(ValueError, match=r"shapes: cannot read 'd\+' in x='d\+×e'"):
        v.shapes("f", x="d+×e")


def test_a_note_with_a_colon_and_a_comma_keeps_the_shape_check():
    """The note starts at the first comma or colon, whichever comes first: a note such as
    "the raw weight, output units last" after a colon once became part of the last
    dimension's name, which then bound to anything and checked nothing."""
    spec = v.shapes("f", w="d_in×d_out: the raw weight, output units last", b="d_out")
    assert spec(w=jnp.zeros((3, 4)), b=jnp.zeros(4)) == {"d_in": 3, "d_out": 4}
    with pytest.raises(ValueError, match=r"f: b must have shape \(4,\) \(d_out\) for w \(3, 4\), "
                                         r"got \(5,\)"):
        spec(w=jnp.zeros((3, 4)), b=jnp.zeros(5))
    with pytest.raises(ValueError, match=r"shapes: cannot read 'd_out;note' in"):
        v.shapes("f", w="d_in×d_out;note")
