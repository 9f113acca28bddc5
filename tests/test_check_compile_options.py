"""The checker's fast compile options skip programs that XLA's lowest optimisation level
would leave as unoptimised convolution loops (they ran for minutes, see
`fdl.check.arguments._slow_at_level_0`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fdl.check.arguments import _FAST_COMPILE, _options_for, _slow_at_level_0

NHWC = ("NHWC", "HWIO", "NHWC")


def _text(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


def _conv(pads, groups=1):
    def f(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC,
                                        feature_group_count=groups)
    return f


X, W = jnp.ones((2, 5, 6, 4)), jnp.ones((3, 2, 4, 6))


def test_a_plain_symmetric_2d_convolution_keeps_level_0():
    text = _text(_conv(((1, 1), (0, 0))), X, W)
    assert text.count("stablehlo.convolution(") == 1
    assert not _slow_at_level_0(text)
    assert _options_for(text, _FAST_COMPILE) == _FAST_COMPILE


def test_unequal_padding_groups_3d_and_vmapped_convolutions_keep_the_default_level():
    cases = {
        "unequal padding": _text(_conv(((1, 0), (2, 1))), X, W),
        "feature groups": _text(_conv(((1, 1), (0, 0)), groups=2), X, jnp.ones((3, 2, 2, 6))),
        "input and kernel both vmapped": _text(jax.vmap(_conv(((1, 1), (0, 0)))),
                                               jnp.stack([X] * 3), jnp.stack([W] * 3)),
        "three spatial dimensions": _text(
            lambda x, w: lax.conv_general_dilated(
                x, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")),
            jnp.ones((1, 4, 4, 4, 2)), jnp.ones((2, 2, 2, 2, 3))),
    }
    for name, text in cases.items():
        assert _slow_at_level_0(text), name
        assert "xla_backend_optimization_level" not in _options_for(text, _FAST_COMPILE), name


def test_a_convolution_written_in_a_form_it_cannot_read_counts_as_slow():
    text = _text(_conv(((1, 1), (0, 0))), X, W).replace("pad = [", "padding = [")
    assert "stablehlo.convolution(" in text
    assert _slow_at_level_0(text)


def test_a_program_without_convolutions_keeps_level_0():
    assert not _slow_at_level_0(_text(lambda x: jnp.tanh(x) @ x.T, jnp.ones((3, 3))))
