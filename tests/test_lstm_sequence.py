"""`fdl.ops.lstm`, the LSTM over a whole sequence as one primitive.

Its hand-written rule is backpropagation through time for the sequence (the input
projection for every step before the scan, a backward scan that carries `(δh, δc)`,
the weight gradients as single products after it); its definition and autodiff
reference is the scan of `lstm_cell`. Here: the rule and the tangent rule against
autodiff (float64, 1e-10) and finite differences (1e-8) for every combination of
direction, lengths and batch layout; proof that the weight gradients really leave the
loop; the layer's stacks and directions in both modes; float32; validation.
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal

import fdl
from fdl import check, ops
from fdl import layers as L
from fdl.ops.recurrent import LSTMState

T, D, H = 5, 3, 4

# (leading batch dimensions, lengths per sequence or None)
LAYOUTS = {
    "batch": ((3,), None),
    "batch-lengths": ((3,), (5, 1, 3)),
    "two-batch-axes-lengths": ((2, 2), ((2, 5), (4, 1))),
    "no-batch": ((), None),
}


def _arguments(lead, lengths, container=tuple):
    """`(xs, state0, wx, wh, b)` and the lengths, `state0` a tuple or `LSTMState`."""
    xs = normal(0, *lead, T, D)
    h0, c0 = normal(1, *lead, H), normal(2, *lead, H)
    state0 = LSTMState(h0, c0) if container is LSTMState else (h0, c0)
    wx, wh = normal(3, D, 4 * H, scale=0.5), normal(4, H, 4 * H, scale=0.5)
    b = normal(5, 4 * H, scale=0.5)
    ell = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    return (xs, state0, wx, wh, b), ell


@pytest.mark.x64
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sequence_rule_equals_autodiff_and_finite_differences(layout, reverse):
    """The VJP of `(hs, (h_T, c_T))` w.r.t. the inputs, the initial state and every
    weight: the sequence rule vs autodiff of the scan of cells ≤ 1e-10, vs finite
    differences ≤ 1e-8, under jit."""
    args, lengths = _arguments(*LAYOUTS[layout], container=LSTMState)
    report = check.vjp(ops.lstm, *args, lengths=lengths, reverse=reverse, jit=True)
    report.raise_if_failed()
    assert report.rows and all(r.dtype == "float64" for r in report.rows)
    assert report.worst("autodiff") <= 1e-10
    assert report.worst("finite differences") <= 1e-8


@pytest.mark.x64
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", ["batch-lengths", "no-batch"])
def test_tangent_rule_equals_autodiff_and_is_adjoint_to_the_backward(layout, reverse):
    args, lengths = _arguments(*LAYOUTS[layout])
    tangent = check.jvp(ops.lstm, *args, lengths=lengths, reverse=reverse).raise_if_failed()
    assert tangent.worst("autodiff") <= 1e-10
    check.adjoint(ops.lstm, *args, lengths=lengths, reverse=reverse).raise_if_failed()


@pytest.mark.x64
def test_outputs_equal_a_python_loop_of_cells_with_lengths_reversed():
    """Each sequence runs backwards from its own last step; padded steps output zero
    and the final state is the one after the sequence's first step."""
    (xs, state0, wx, wh, b), lengths = _arguments((3,), (5, 1, 3))
    hs, (h_n, c_n) = jax.jit(ops.lstm, static_argnames="reverse")(
        xs, state0, wx, wh, b, lengths=lengths, reverse=True)
    for k, ell in enumerate((5, 1, 3)):
        state = (state0[0][k], state0[1][k])
        want = np.zeros((T, H))
        for t in reversed(range(ell)):
            state = ops.lstm_cell(xs[k, t], state, wx, wh, b)
            want[t] = state[0]
        np.testing.assert_allclose(hs[k], want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(h_n[k], state[0], rtol=1e-12)
        np.testing.assert_allclose(c_n[k], state[1], rtol=1e-12)


def _dots_per_scan(jaxpr) -> list[int]:
    """For every `scan` in `jaxpr` (nested calls included), the number of
    `dot_general`s its body runs per step."""
    def dots(j) -> int:
        return sum(1 if e.primitive.name == "dot_general" else
                   sum(dots(s) for s in jax.extend.core.jaxprs_in_params(e.params)) for e in j.eqns)

    def scans(j) -> list[int]:
        out = []
        for e in j.eqns:
            subs = list(jax.extend.core.jaxprs_in_params(e.params))
            if e.primitive.name == "scan":
                out.append(sum(dots(s) for s in subs))
            else:
                out += [n for s in subs for n in scans(s)]
        return out

    return scans(jaxpr.jaxpr)


def test_the_weight_gradients_leave_the_loop():
    """Under `jax.grad`, the forward scan and the backward scan each run one product
    per step ($h W_h$, $Δ_t W_hᵀ$); $Xᵀ Δ$, $H_−ᵀ Δ$ and $Δ W_xᵀ$ are taken outside
    them. The scan of cell rules, for contrast, takes them inside its backward loop."""
    (xs, state0, wx, wh, b), _ = _arguments((3,), None)

    def loss(run, wx, wh, b, xs):
        return jnp.sum(run(xs, state0, wx, wh, b)[0] ** 2)

    def per_scan(run):
        return _dots_per_scan(jax.make_jaxpr(jax.grad(
            lambda *a: loss(run, *a), argnums=(0, 1, 2, 3)))(wx, wh, b, xs))

    assert per_scan(ops.lstm) == [1, 1]
    cells = per_scan(lambda *a: ops.scan_cell(ops.lstm_cell, *a))
    assert len(cells) == 2 and cells[1] >= 4, cells


@pytest.mark.x64
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_stacks_and_directions_with_lengths_both_modes(bidirectional):
    """`L.LSTM(num_layers=2)` with lengths (and both directions): the gradient of a loss
    w.r.t. every layer parameter and the input, manual rules vs autodiff, ≤ 1e-10."""
    layer = L.LSTM(H, num_layers=2, bidirectional=bidirectional, dtype=jnp.float64)
    _, params, state = layer.init(jax.random.key(0), (T, D))
    xs, lengths = normal(0, 3, T, D), jnp.asarray([5, 2, 4], jnp.int32)

    def loss(params, xs):
        y, _ = layer.apply(params, state, xs, lengths=lengths)
        return jnp.sum(jnp.sin(y))

    report = check.vjp(loss, params, xs, jit=True, finite_differences=False)
    report.raise_if_failed()
    assert report.worst("autodiff") <= 1e-10


@pytest.mark.x64
def test_second_order_through_the_sequence_rule():
    """Hessian-vector products and a Hessian through `ops.lstm` with lengths (the
    backward differentiated forward, the tangent rule transposed): `check.hvp` against
    autodiff and finite differences, and `jax.hessian` in both modes ≤ 1e-10."""
    (xs, state0, wx, wh, b), lengths = _arguments((3,), (5, 1, 3))

    def loss(params, xs):
        hs, (h_n, _) = ops.lstm(xs, state0, params["wx"], params["wh"], params["b"],
                                lengths=lengths, reverse=True)
        return jnp.sum(jnp.tanh(hs) ** 2) + jnp.sum(h_n * h_n)

    params = {"wx": wx, "wh": wh, "b": b}
    check.hvp(loss, params, xs).raise_if_failed()
    hessian = jax.jit(jax.hessian(lambda b: loss(dict(params, b=b), xs)))
    manual = hessian(b)
    with fdl.gradient_mode("autodiff"):
        reference = hessian(b)
    np.testing.assert_allclose(manual, reference, rtol=1e-10,
                               atol=1e-10 * float(jnp.max(jnp.abs(reference))))


@pytest.mark.float32
def test_float32_rule_matches_autodiff_and_runs_eagerly():
    """The users' dtype, through the public entry point, outside and inside jit."""
    args, lengths = _arguments((3,), (5, 1, 3))
    assert args[0].dtype == jnp.float32
    for jit in (False, True):
        report = check.vjp(ops.lstm, *args, lengths=lengths, reverse=True, jit=jit)
        report.raise_if_failed()
        assert report.rows and all(r.dtype == "float32" for r in report.rows)


def test_a_padded_step_gets_no_gradient_and_changes_nothing():
    """Changing the inputs of padded steps changes neither the outputs nor the
    gradients of the weights (float32)."""
    (xs, state0, wx, wh, b), lengths = _arguments((3,), (5, 1, 3))
    padded = jnp.arange(T)[None, :, None] >= lengths[:, None, None]
    noisy = jnp.where(padded, 100.0, xs)

    def loss(xs, wx, wh, b):
        return jnp.sum(jnp.tanh(ops.lstm(xs, state0, wx, wh, b, lengths=lengths)[0]))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    clean_g, noisy_g = grad(xs, wx, wh, b), grad(noisy, wx, wh, b)
    np.testing.assert_array_equal(jnp.where(padded, clean_g[0], 0), 0)
    np.testing.assert_array_equal(jnp.where(padded, noisy_g[0], 0), 0)
    for c, n in zip(clean_g[1:], noisy_g[1:]):
        np.testing.assert_array_equal(c, n)


_x, _h = normal(0, 2, T, D), normal(1, 2, H)
_W = (normal(2, D, 4 * H), normal(3, H, 4 * H), normal(4, 4 * H))

BAD_CALLS = [
    (lambda: ops.lstm(_x, (_h, _h), *_W, reverse=1), TypeError,
     r"^lstm: reverse must be True or False, got 1$"),
    (lambda: ops.lstm(_x, (_h, _h), _W[0], normal(0, H - 1, 4 * H), _W[2]), ValueError,
     r"^lstm: wh must have shape \(4, 16\) \(H×4H\) for h0 \(2, 4\), got \(3, 16\)$"),
    (lambda: ops.lstm(_x, (_h, _h), *_W[:2], normal(0, 4 * H - 1)), ValueError,
     r"^lstm: b must have shape \(16,\) \(4H\) for h0 \(2, 4\), got \(15,\)$"),
    (lambda: ops.lstm(_x, (_h, _h), *_W, lengths=jnp.ones((2,))), TypeError,
     r"^lstm: lengths must be an integer array .* got dtype float32; cast it"),
    (lambda: ops.lstm(_x, (_h, _h), *_W, lengths=jnp.asarray([0, 5])), ValueError,
     r"^lstm: every lengths entry must be in \[1, T\] = \[1, 5\] .* got 0 at index \(0,\)"),
    (lambda: ops.lstm(_x, (_h, _h), *_W, revers=True), TypeError,
     r"^lstm: got an unexpected keyword argument 'revers'$"),
]


@pytest.mark.parametrize("call,exc,message", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_mistakes_raise_clear_errors(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_the_registered_primitive_is_the_public_function():
    assert fdl.registry()["lstm"] is ops.lstm
    assert [e.kwargs.get("reverse", False) for e in ops.lstm.examples] == [False, True,
                                                                             False, True]
