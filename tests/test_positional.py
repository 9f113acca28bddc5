"""Positional encodings (fdl.ops.sinusoidal, fdl.ops.rope): values against closed forms
and an independent rotate-half reference, the backward as the inverse rotation, the
relative-position property, both pairings, and validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check


def _rotate_half_reference(x: np.ndarray, base: float = 10000.0, offset: int = 0) -> np.ndarray:
    """GPT-NeoX/LLaMA's formulation, written out in numpy: `x cos + rotate_half(x) sin`."""
    t, d = x.shape[-2:]
    inv_freq = 1.0 / base ** (np.arange(0, d, 2) / d)
    freqs = np.outer(np.arange(offset, offset + t), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    half = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * np.cos(emb) + half * np.sin(emb)


@pytest.mark.x64
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_rules_match_autodiff_and_finite_differences(interleaved):
    x = jax.random.normal(jax.random.key(0), (2, 5, 6), jnp.float64)
    check.vjp(fdl.ops.rope, x, 2, 500.0, interleaved).raise_if_failed()
    check.jvp(fdl.ops.rope, x, 2, 500.0, interleaved).raise_if_failed()
    check.adjoint(fdl.ops.rope, x, 2, 500.0, interleaved).raise_if_failed()


@pytest.mark.x64
def test_sinusoidal_rules_match_autodiff_and_finite_differences():
    x = jax.random.normal(jax.random.key(1), (3, 4, 5), jnp.float64)
    check.vjp(fdl.ops.sinusoidal, x, 3).raise_if_failed()
    check.jvp(fdl.ops.sinusoidal, x, 3).raise_if_failed()


@pytest.mark.x64
def test_rope_matches_the_rotate_half_reference_with_offset():
    x = np.random.default_rng(0).standard_normal((2, 7, 8))
    y = fdl.ops.rope(jnp.asarray(x), offset=3, base=100.0)
    np.testing.assert_allclose(y, _rotate_half_reference(x, 100.0, 3), rtol=1e-13, atol=1e-14)


@pytest.mark.x64
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_backward_is_the_inverse_rotation(interleaved):
    """`vjp` at `rope(x)` gives back `x` (`Rᵀ R = I`), and the rule is `rope` at `−φ`."""
    x = jax.random.normal(jax.random.key(2), (2, 6, 4), jnp.float64)
    y, pullback = jax.vjp(lambda x: fdl.ops.rope(x, interleaved=interleaved), x)
    np.testing.assert_allclose(pullback(y)[0], x, rtol=1e-14, atol=1e-14)
    # norms are kept per position (each step is a rotation)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1),
                               rtol=1e-14)


@pytest.mark.x64
def test_the_two_pairings_differ_by_a_fixed_permutation():
    d = 8
    x = jax.random.normal(jax.random.key(3), (5, d), jnp.float64)
    perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])  # (2i, 2i+1) → (i, i+d/2)
    half = fdl.ops.rope(x[..., perm])
    inter = fdl.ops.rope(x, interleaved=True)
    np.testing.assert_allclose(half, inter[..., perm], rtol=1e-14, atol=1e-15)
    assert not np.allclose(fdl.ops.rope(x), inter)


@pytest.mark.x64
def test_rope_scores_depend_only_on_the_relative_position():
    q = jax.random.normal(jax.random.key(4), (1, 8), jnp.float64)
    k = jax.random.normal(jax.random.key(5), (1, 8), jnp.float64)

    def score(t, s):
        return float(jnp.sum(fdl.ops.rope(q, offset=t) * fdl.ops.rope(k, offset=s)))

    assert score(3, 5) == pytest.approx(score(10, 12), rel=1e-12)
    assert score(0, 4) == pytest.approx(score(7, 11), rel=1e-12)
    assert score(0, 4) != pytest.approx(score(0, 5), rel=1e-6)
    np.testing.assert_allclose(fdl.ops.rope(q), q, rtol=0, atol=0)  # position 0: identity


@pytest.mark.x64
def test_sinusoidal_table_closed_form_and_identity_gradient():
    table = fdl.ops.sinusoidal_table(6, 5, offset=1)
    t = np.arange(1, 7)
    np.testing.assert_allclose(table[:, 0], np.sin(t), rtol=1e-15)
    np.testing.assert_allclose(table[:, 1], np.cos(t), rtol=1e-15)
    np.testing.assert_allclose(table[:, 2], np.sin(t * 10000.0 ** (-2 / 5)), rtol=1e-15)
    np.testing.assert_allclose(table[:, 4], np.sin(t * 10000.0 ** (-4 / 5)), rtol=1e-15)
    x = jnp.zeros((2, 6, 5), jnp.float64)
    np.testing.assert_allclose(fdl.ops.sinusoidal(x, offset=1), np.broadcast_to(table, x.shape))
    g = jax.grad(lambda x: jnp.sum(jnp.sin(fdl.ops.sinusoidal(x))))(x)
    np.testing.assert_allclose(g, jnp.cos(fdl.ops.sinusoidal(x)), rtol=1e-15)


@pytest.mark.float32
def test_float32_rope_and_sinusoidal_run_and_check():
    x = jax.random.normal(jax.random.key(6), (2, 3, 4))
    assert fdl.ops.rope(x).dtype == jnp.float32 == fdl.ops.sinusoidal(x).dtype
    check.vjp(fdl.ops.rope, x).raise_if_failed()
    check.vjp(fdl.ops.sinusoidal, x).raise_if_failed()


@pytest.mark.parametrize("call,message", [
    (lambda: fdl.ops.rope(jnp.ones((2, 3, 5))), "rope: the feature size d .* must be even"),
    (lambda: fdl.ops.rope(jnp.ones((2, 3, 4)), offset=-1), "rope: offset must be an int ≥ 0"),
    (lambda: fdl.ops.rope(jnp.ones((4,))), "rope: x must have at least 2 dimension"),
    (lambda: fdl.ops.sinusoidal(jnp.ones((2, 4)), base=1.0), "sinusoidal: base must be > 1"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="rope: x must be a floating-point array"):
        fdl.ops.rope(jnp.ones((2, 4), jnp.int32))
