"""Every registered primitive, through fdl.check, as one table.

The table is the registry itself: a primitive added anywhere in fdl is covered
here without being named. Float64 checks hold the hand-written rule to 1e-10
relative against autodiff and 1e-8 against finite differences.

Each check compiles one program per configuration that adds coverage: all of a
primitive's examples together under ``jit`` in float64 (``fdl.check.examples``); its
first example in float32 with the rule run eagerly (op by op, as a user calling it
outside ``jit`` runs it); and ``vmap`` of ``grad`` against a loop and against autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
from fdl import check

PRIMITIVES = [pytest.param(p, id=name) for name, p in fdl.registry().items()]
CASES = [
    pytest.param(p, i, id=f"{name}-{i}")
    for name, p in fdl.registry().items()
    for i in range(len(p.examples))
]

FIRST = [c for c in CASES if c.values[1] == 0]


def _sample(p, i, dtype, seed=0):
    return p.examples[i].sample(seed, dtype)


# The built-in primitives, by name: a primitive added to fdl is added here too (a
# deliberate line: the registry is what `fdl check` and this table verify).
REGISTERED = {
    "adaptive_avg_pool2d", "attention", "avg_pool2d", "batch_norm", "batch_norm_inference",
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "cosine_embedding", "ctc_loss",
    "cross_entropy", "dropout", "elu", "embedding", "gelu", "global_avg_pool",
    "global_max_pool", "group_norm", "gru_cell", "huber", "instance_norm", "kl_divergence",
    "layer_norm", "leaky_relu", "linear", "log_softmax", "lstm", "lstm_cell",
    "luong_attentional_state", "luong_concat_score", "luong_context", "luong_dot_score",
    "luong_general_score", "masked_softmax", "max_pool2d", "mse", "multiclass_hinge", "pad",
    "relu",
    "rms_norm", "rnn_cell", "rope", "sequence_last", "sequence_max", "sequence_mean",
    "sigmoid", "sigmoid_binary_cross_entropy", "sigmoid_focal_loss", "silu", "sinusoidal",
    "softmax", "softmax_cross_entropy", "softplus", "spectral_normalize", "tanh",
    "weight_norm",
}


def test_registry_holds_exactly_the_built_in_primitives():
    assert set(fdl.registry()) == REGISTERED
    for name, p in fdl.registry().items():
        assert p.examples, f"primitive {name} has no examples for the checks"
        assert p.__doc__ and "∂" in p.__doc__, f"primitive {name} has no derivation in its docstring"


@pytest.mark.x64
@pytest.mark.parametrize("p", PRIMITIVES)
def test_float64_rule_matches_autodiff_and_finite_differences(p):
    """Every example's rule under jit vs autodiff and finite differences, one program."""
    reports = [r.vjp for r in check.examples(p, dtype=jnp.float64, checks=("vjp",))]
    assert len(reports) == len(p.examples)
    for i, report in enumerate(reports):
        assert report.passed, f"example {i}:\n{report}"
        assert report.rows and all(r.dtype == "float64" for r in report.rows), report
        assert report.worst("autodiff") <= 1e-10, f"example {i}:\n{report}"
        assert report.worst("finite differences") <= 1e-8, f"example {i}:\n{report}"


@pytest.mark.float32
@pytest.mark.parametrize("p,i", FIRST)
def test_float32_rule_run_eagerly(p, i):
    """The user's default dtype, with the rule run op by op outside jit."""
    args, kwargs = _sample(p, i, jnp.float32, seed=2)
    report = check.vjp(p, *args, jit=False, **kwargs).raise_if_failed()
    assert report.rows and all(r.dtype == "float32" for r in report.rows)


def _first_float_arg(p, args):
    for j, a in enumerate(args):
        if j not in p.static_argnums and hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating):
            return j
    raise AssertionError("no float argument")


@pytest.mark.x64
@pytest.mark.parametrize("p,i", FIRST)
def test_vmap_of_grad_gives_per_example_gradients(p, i):
    """vmap(grad) over a stacked batch of examples equals a Python loop of grads."""
    examples = [_sample(p, i, jnp.float64, seed=s) for s in range(3)]
    static = set(p.static_argnums)
    batched = [j for j, a in enumerate(examples[0][0]) if j not in static and hasattr(a, "shape")]
    j0 = _first_float_arg(p, examples[0][0])
    kwargs = examples[0][1]

    def scalar(*dyn):
        full = list(examples[0][0])
        for j, a in zip(batched, dyn):
            full[j] = a
        out = p(*full, **kwargs)
        return sum(jnp.sum(jnp.sin(o)) for o in jax.tree_util.tree_leaves(out))

    grad = jax.grad(scalar, argnums=batched.index(j0))
    stacked = [jnp.stack([ex[0][j] for ex in examples]) for j in batched]

    @jax.jit
    def per_example_loop_and_autodiff(*stacked):  # one program (the mode is read at trace)
        loop = [grad(*[s[k] for s in stacked]) for k in range(len(examples))]
        with fdl.gradient_mode("autodiff"):
            reference = jax.vmap(grad)(*stacked)
        return jax.vmap(grad)(*stacked), loop, reference

    per_example, loop, reference = per_example_loop_and_autodiff(*stacked)
    for k in range(len(examples)):
        np.testing.assert_allclose(per_example[k], loop[k], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(per_example, reference, rtol=1e-10, atol=1e-13)


WITH_FWD = [c for c in CASES if c.values[0].fwd is not None]


def test_some_primitives_keep_forward_intermediates():
    assert any(c.values[0].name == "dropout" for c in WITH_FWD)


@pytest.mark.x64
@pytest.mark.parametrize("p,i", WITH_FWD)
def test_fwd_computes_the_same_output_as_forward(p, i):
    """A primitive's ``fwd`` (forward + residuals in one pass) must agree with its
    ``forward`` (the definition and autodiff reference), in both modes and under jit."""
    args, kwargs = _sample(p, i, jnp.float64, seed=3)
    full = p.bind(*args, **kwargs)
    y_fwd, _ = p.forward_with_residuals(*full)
    y_ref = p.forward(*full)
    for a, b in zip(jax.tree_util.tree_leaves(y_fwd), jax.tree_util.tree_leaves(y_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)
    dynamic = [j for j in range(len(full)) if j not in p.static_argnums]

    def call(*dyn):
        a = list(full)
        for j, d in zip(dynamic, dyn):
            a[j] = d
        return p(*a)

    y_jit = jax.jit(call)(*[full[j] for j in dynamic])
    for a, b in zip(jax.tree_util.tree_leaves(y_jit), jax.tree_util.tree_leaves(y_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)


def _square(x):
    """y = x², ∂L/∂x = 2x·g."""
    return x * x


def test_primitive_rejects_both_save_and_fwd():
    with pytest.raises(ValueError, match="pass save or fwd, not both"):
        fdl.primitive.primitive(_square, lambda r, g: (2 * r * g,), save=lambda x, y: x,
                                fwd=lambda x: (x * x, x), register=False)


@pytest.mark.x64
def test_fwd_residuals_reach_the_backward_and_a_wrong_fwd_is_caught():
    """The residuals the backward sees are exactly what ``fwd`` returned; fdl.check
    catches a ``fwd`` whose residuals are wrong."""
    seen = []

    def backward(r, g):
        seen.append(r)
        return (2 * r * g,)

    good = fdl.primitive.primitive(_square, backward, fwd=lambda x: (x * x, x), register=False)
    x = jnp.array([1.0, -2.0, 3.0], jnp.float64)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(good(x)))(x), 2 * x, rtol=1e-15)
    np.testing.assert_array_equal(seen[-1], x)
    assert check.vjp(good, x).passed
    bad = fdl.primitive.primitive(_square, lambda r, g: (2 * r * g,),
                                  fwd=lambda x: (x * x, x + 1.0), register=False)
    report = check.vjp(bad, x)
    assert not report.passed and report.worst("autodiff") > 0.1


def test_forward_with_residuals_defaults():
    """No save, no fwd: the residuals are the non-static arguments and y."""
    x = jnp.array([-1.0, 2.0])
    y, res = fdl.primitive.primitive(_square, lambda r, g: (2 * r[0][0] * g,),
                                     register=False).forward_with_residuals(x)
    np.testing.assert_array_equal(y, x * x)
    np.testing.assert_array_equal(res[0][0], x)
    np.testing.assert_array_equal(res[1], x * x)
