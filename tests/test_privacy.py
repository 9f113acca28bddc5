"""fdl.privacy and fdl.ops.ghost_linear: ghost per-example gradient norms and DP-SGD.

Every ghost quantity is compared with the same quantity from materialised
per-example gradients, ``vmap`` of ``grad`` of one example's loss (the
independent reference): float64 within 1e-10 relative, float32 within 1e-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl
import fdl.privacy as P
from conftest import normal
from fdl import check, ops
from fdl import layers as L
from fdl.layers import Layer

KEY = jax.random.key(0)


def _init(model, input_shape, dtype=None, seed=0):
    """``model``'s params drawn from numpy with the shapes ``init`` gives (traced only):
    weights ``N(0, 1/d_in)``, biases ``N(0, 0.1²)`` (so no ReLU sits at its kink)."""
    params, state = jax.eval_shape(lambda k: model.init(k, input_shape)[1:], KEY)
    leaves, tree = jax.tree_util.tree_flatten(params)
    leaves = [normal(seed + i, *a.shape, dtype=dtype,
                     scale=0.1 if len(a.shape) == 1 else 1 / np.sqrt(a.shape[0]))
              for i, a in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(tree, leaves), jax.tree_util.tree_map(
        lambda a: jnp.zeros(a.shape, a.dtype), state)


# --------------------------------------------------------------------------- #
# The primitive: X, W, b cotangents are linear's; the probe's are the norms
# --------------------------------------------------------------------------- #

# (x shape, d_out, which branch of the norm identity the shapes select)
SHAPES = [
    ((6, 3), 4, "rank-1: ‖x‖²‖g‖²"),
    ((4, 3, 8), 6, "Gram: T(d_in+d_out) = 42 ≤ d_in·d_out = 48"),
    ((4, 5, 2), 3, "direct: T(d_in+d_out) = 25 > 6"),
    ((3, 2, 2, 4), 3, "direct, two middle axes: T = 4, 28 > 12"),
    ((3, 2, 3, 16), 16, "Gram, two middle axes: T = 6, 192 ≤ 256"),
]


def _primitive_case(x_shape, d_out, dtype):
    x = normal(1, *x_shape, dtype=dtype)
    w = normal(2, x_shape[-1], d_out, dtype=dtype)
    b = normal(3, d_out, dtype=dtype)
    r = normal(4, *x_shape[:-1], d_out, dtype=dtype)  # random per-example weights
    return x, w, b, r


@pytest.mark.x64
@pytest.mark.parametrize("x_shape,d_out,branch", SHAPES, ids=[s[2] for s in SHAPES])
def test_ghost_linear_probe_cotangent_is_per_example_squared_norm(x_shape, d_out, branch):
    x, w, b, r = _primitive_case(x_shape, d_out, jnp.float64)
    n = x_shape[0]

    def total(w, b, probe):  # L = Σᵢ ℓᵢ, ℓᵢ = ⟨Rᵢ, tanh(Yᵢ)⟩
        return jnp.sum(r * jnp.tanh(ops.ghost_linear(x, w, b, probe)))

    sq = jax.jit(jax.grad(total, argnums=2))(w, b, jnp.zeros((n,)))

    def one(xi, ri, w, b):
        return jnp.sum(ri * jnp.tanh(ops.linear.forward(xi, w, b)))

    gw, gb = jax.jit(jax.vmap(jax.grad(one, argnums=(2, 3)), (0, 0, None, None)))(x, r, w, b)
    materialised = jnp.sum(gw.reshape(n, -1) ** 2, 1) + jnp.sum(gb ** 2, 1)
    np.testing.assert_allclose(sq, materialised, rtol=1e-10)
    assert sq.dtype == jnp.float64


@pytest.mark.x64
@pytest.mark.parametrize("x_shape,d_out", [(s[0], s[1]) for s in SHAPES[:2]])
def test_ghost_linear_x_w_b_cotangents_are_linears(x_shape, d_out):
    """Against autodiff of linear's forward and finite differences (fdl.check.grad)."""
    x, w, b, r = _primitive_case(x_shape, d_out, jnp.float64)
    probe = jnp.zeros((x_shape[0],))
    reference = lambda x, w, b: jnp.sum(r * jnp.sin(ops.linear.forward(x, w, b)))
    ghost = jax.grad(lambda x, w, b: jnp.sum(r * jnp.sin(ops.ghost_linear(x, w, b, probe))),
                     argnums=(0, 1, 2))
    report = check.grad(reference, ghost, x, w, b, jit=True).raise_if_failed()
    assert report.worst("autodiff") <= 1e-10
    y_ghost = ops.ghost_linear(x, w, b, probe)
    np.testing.assert_array_equal(y_ghost, ops.linear(x, w, b))


@pytest.mark.float32
def test_ghost_linear_float32_and_either_gradient_mode():
    x, w, b, r = _primitive_case((5, 2, 7), 4, jnp.float32)
    total = lambda p: jnp.sum(r * ops.ghost_linear(x, w, b, p))
    probe = jnp.zeros((5,), jnp.float32)
    grad = jax.jit(jax.grad(total))
    manual = grad(probe)
    with fdl.gradient_mode("autodiff"):  # the rule is used in both modes
        auto = grad(probe)
    expected = jnp.sum(jnp.einsum("nti,ntj->nij", x, r) ** 2, (1, 2)) + jnp.sum(
        jnp.sum(r, 1) ** 2, 1)
    assert manual.dtype == jnp.float32
    np.testing.assert_allclose(manual, expected, rtol=1e-5)
    np.testing.assert_array_equal(manual, auto)


def test_ghost_linear_rejects_probe_not_one_per_example():
    x, w, b, _ = _primitive_case((6, 3), 4, jnp.float64)
    with pytest.raises(ValueError, match=r"probe must have one entry per example, shape \(6,\)"):
        ops.ghost_linear(x, w, b, jnp.zeros((5,)))
    with pytest.raises(ValueError, match="x must have at least 2 dimension"):
        ops.ghost_linear(x[0], w, b, jnp.zeros((1,)))


# --------------------------------------------------------------------------- #
# Whole models: ghost norms vs vmap materialisation
# --------------------------------------------------------------------------- #


def _ce_per_example(out, y):
    return fdl.losses.softmax_cross_entropy(out, y, reduction="none")


def _ce_per_sequence(out, y):
    return jnp.sum(fdl.losses.softmax_cross_entropy(out, y, reduction="none"), axis=1)


def _materialised(model, params, state, x, y, loss):
    """Per-example gradients by vmap of grad of one example's loss."""
    def one(p, xi, yi):
        out, _ = model.apply(p, state, xi[None])
        return loss(out, yi[None])[0]
    return jax.jit(jax.vmap(jax.grad(one), (None, 0, 0)))(params, x, y)


def _norms_of(grads):
    leaves = jax.tree_util.tree_leaves(grads)
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), 1) for g in leaves))


def _mlp(activation):
    return L.serial(L.Flatten(), L.Dense(8), L.get_activation(activation),
                    L.residual(L.serial(L.Dense(8), L.Tanh())), L.Dense(4))


def _combinators():
    return L.serial(L.Dense(6), L.Tanh(), L.parallel(
        L.Dense(3), L.serial(L.Dense(5), L.Relu(), L.Dense(2))), L.Dense(4))


def _seq_model():  # Dense on N×T×d inputs: Gram form (4·24 ≤ 128), then direct (4·19 > 48)
    return L.serial(L.Dense(16), L.Tanh(), L.Dense(3))


CASES = {
    "mlp-tanh": (lambda: _mlp("tanh"), (6, 2, 4), (), _ce_per_example),
    "mlp-relu": (lambda: _mlp("relu"), (6, 2, 4), (), _ce_per_example),
    "combinators": (_combinators, (6, 4), (), _ce_per_example),
    "sequence": (_seq_model, (5, 4, 8), (4,), _ce_per_sequence),
}


def _case(name, dtype):
    build, x_shape, y_extra, loss = CASES[name]
    model = build()
    params, state = _init(model, x_shape[1:], dtype)
    classes = 3 if name == "sequence" else 4
    x = normal(7, *x_shape, dtype=dtype)
    y = jnp.asarray(np.random.default_rng(8).integers(0, classes, (x_shape[0],) + y_extra))
    return model, params, state, x, y, loss


@pytest.mark.x64
@pytest.mark.parametrize("name", list(CASES))
def test_ghost_norms_equal_vmap_norms_float64(name):
    model, params, state, x, y, loss = _case(name, jnp.float64)
    ghost = jax.jit(lambda p, x, y: P.per_example_grad_norms(model, p, state, x, y,
                                                             loss=loss))(params, x, y)
    reference = _norms_of(_materialised(model, params, state, x, y, loss))
    assert ghost.shape == (x.shape[0],) and ghost.dtype == jnp.float64
    np.testing.assert_allclose(ghost, reference, rtol=1e-10)


@pytest.mark.float32
@pytest.mark.parametrize("name", ["mlp-relu", "sequence"])
def test_ghost_norms_equal_vmap_norms_float32(name):
    model, params, state, x, y, loss = _case(name, jnp.float32)
    ghost = jax.jit(lambda p, x, y: P.per_example_grad_norms(model, p, state, x, y,
                                                             loss=loss))(params, x, y)
    reference = _norms_of(_materialised(model, params, state, x, y, loss))
    assert ghost.dtype == jnp.float32
    np.testing.assert_allclose(ghost, reference, rtol=1e-5)


@pytest.mark.x64
def test_ghost_norms_in_autodiff_mode():
    """The rest of the model may be differentiated by autodiff; Dense keeps its rule."""
    model, params, state, x, y, loss = _case("sequence", jnp.float64)
    norms = jax.jit(lambda p: P.per_example_grad_norms(model, p, state, x, y, loss=loss))
    manual = norms(params)
    with fdl.gradient_mode("autodiff"):
        auto = norms(params)
    np.testing.assert_allclose(auto, manual, rtol=1e-12)


@pytest.mark.x64
def test_ghost_norms_see_through_a_jitted_layer():
    dense = L.Dense(3)
    jitted = Layer(dense.init, jax.jit(dense.apply, static_argnames="train"), "jitted_dense")
    model = L.serial(L.Dense(5), L.Tanh(), jitted)
    params, state = _init(model, (4,))
    x, y = normal(0, 6, 4), jnp.arange(6) % 3
    ghost = jax.jit(lambda p: P.per_example_grad_norms(model, p, state, x, y))(params)
    reference = _norms_of(_materialised(model, params, state, x, y, _ce_per_example))
    np.testing.assert_allclose(ghost, reference, rtol=1e-10)


# --------------------------------------------------------------------------- #
# DP-SGD
# --------------------------------------------------------------------------- #


def _dp(model, state, loss, *, clip_norm, noise_multiplier):
    return jax.jit(lambda p, x, y, k: P.dp_sgd_grads(
        model, p, state, x, y, key=k, loss=loss, clip_norm=clip_norm,
        noise_multiplier=noise_multiplier))


@pytest.mark.x64
@pytest.mark.parametrize("name", ["mlp-relu", "sequence"])
def test_dp_sgd_without_noise_is_the_materialised_clipped_mean(name):
    model, params, state, x, y, loss = _case(name, jnp.float64)
    per_example = _materialised(model, params, state, x, y, loss)
    norms = _norms_of(per_example)
    clip = float(jnp.median(norms))  # about half the examples are clipped
    out = _dp(model, state, loss, clip_norm=clip, noise_multiplier=0.0)(params, x, y, KEY)
    c = jnp.minimum(1.0, clip / norms)
    assert 0 < int(jnp.sum(c < 1)) < x.shape[0]
    clipped = jax.tree_util.tree_map(lambda g: g * c.reshape((-1,) + (1,) * (g.ndim - 1)),
                                     per_example)
    assert float(jnp.max(_norms_of(clipped))) <= clip * (1 + 1e-12)
    expected = jax.tree_util.tree_map(lambda g: jnp.mean(g, 0), clipped)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10,
                                                                   atol=1e-14),
                           out.grads, expected)
    np.testing.assert_allclose(out.norms, norms, rtol=1e-10)
    np.testing.assert_allclose(out.loss, jnp.mean(loss(model.apply(params, state, x)[0], y)),
                               rtol=1e-12)


def test_clip_factors_bound_every_norm_and_leave_small_ones_alone():
    norms = jnp.array([0.0, 0.5, 1.0, 2.0, 1e6])
    c = P.clip_factors(norms, 1.0)
    np.testing.assert_allclose(c, [1.0, 1.0, 1.0, 0.5, 1e-6])
    assert bool(jnp.all(c * norms <= 1.0))


def test_dp_sgd_noise_has_std_sigma_c_over_n_and_comes_from_the_key():
    model, loss = L.serial(L.Dense(64)), _ce_per_example  # 576 parameters
    params, state = _init(model, (8,))
    x, y = normal(0, 6, 8), jnp.arange(6) % 64
    n, clip, sigma = x.shape[0], 0.7, 1.3
    clean = _dp(model, state, loss, clip_norm=clip, noise_multiplier=0.0)(params, x, y, KEY)
    noisy = _dp(model, state, loss, clip_norm=clip, noise_multiplier=sigma)
    a, again = noisy(params, x, y, KEY), noisy(params, x, y, KEY)
    other = noisy(params, x, y, jax.random.key(1))
    flat = lambda t: jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(t)])
    xi = (flat(a.grads) - flat(clean.grads)) * n / (sigma * clip)  # ≈ N(0, 1) each
    assert xi.size > 500
    assert abs(float(jnp.mean(xi))) < 0.15 and abs(float(jnp.std(xi)) - 1) < 0.1
    np.testing.assert_array_equal(flat(a.grads), flat(again.grads))
    assert not np.allclose(flat(a.grads), flat(other.grads))
    np.testing.assert_array_equal(a.norms, clean.norms)


@pytest.mark.float32
def test_jitted_dp_step_compiles_once_and_trains():
    model = L.mlp([8], 3, activation="tanh")
    params, state = _init(model, (4,), jnp.float32)
    opt = fdl.optim.sgd(0.5)
    opt_state = opt.init(params)
    traces = []

    @jax.jit
    def step(params, opt_state, x, y, key):
        traces.append(1)
        out = P.dp_sgd_grads(model, params, state, x, y, key=key, clip_norm=1.0,
                             noise_multiplier=0.1)
        updates, opt_state = opt.update(out.grads, opt_state, params)
        return fdl.optim.apply_updates(params, updates), opt_state, out.loss

    x = normal(0, 32, 4, dtype=jnp.float32)
    y = jnp.argmax(x[:, :3], axis=1)
    losses = []
    for i in range(30):
        params, opt_state, loss = step(params, opt_state, x, y, jax.random.key(i))
        losses.append(float(loss))
    assert len(traces) == 1 and step._cache_size() == 1
    assert losses[-1] < 0.7 * losses[0]


# --------------------------------------------------------------------------- #
# Errors: never a silently wrong norm
# --------------------------------------------------------------------------- #


def _scale_layer():
    """A layer with a parameter the ghost path does not know: y = x · s."""
    def init(key, shape):
        return tuple(shape), {"scale": jnp.ones(shape[-1:])}, {}

    def apply(params, state, x, *, key=None, train=False):
        return x * params["scale"][None], state
    return Layer(init, apply, "scale")


def _bare_array():
    """A layer whose params are a bare array, not a dict of arrays."""
    def init(key, shape):
        return tuple(shape), jnp.ones(shape[-1:]), {}

    def apply(params, state, x, *, key=None, train=False):
        return x * params[None], state
    return Layer(init, apply, "bare")


def _hand_dense(features):
    """Dense-shaped params {'w', 'b'}, but not fdl.layers.Dense (probe ignored)."""
    dense = L.Dense(features)

    def apply(params, state, x, *, key=None, train=False):
        return ops.linear(x, params["w"], params["b"]), state
    return Layer(dense.init, apply, "hand_dense")


def _twice(features):
    """One Dense applied twice with the same weights."""
    dense = L.Dense(features)

    def apply(params, state, x, *, key=None, train=False):
        y, _ = dense.apply(params, state, x)
        y, _ = dense.apply(params, state, jnp.tanh(y))
        return y, state
    return Layer(dense.init, apply, "twice")


def _scanned(features):
    """One Dense applied at every step of a lax.scan."""
    dense = L.Dense(features)

    def apply(params, state, x, *, key=None, train=False):
        def body(h, _):
            return jnp.tanh(dense.apply(params, state, h)[0]), None
        return jax.lax.scan(body, x, None, length=3)[0], state
    return Layer(dense.init, apply, "scanned")


def _merge_batch():
    """Reshape (N, T, d) → (N·T, d): a Dense after it no longer sees one row per example."""
    def init(key, shape):
        return tuple(shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return x.reshape(-1, x.shape[-1]), state
    return Layer(init, apply, "merge")


ERRORS = [
    ("unsupported", lambda: L.serial(L.Dense(4), _scale_layer(), L.Dense(3)),
     r"the layer with params\['scale_1'\] belongs to a layer that has no ghost-norm rule "
     r"\(it does not read the probe; rules exist for Dense, Conv1D.*would not be counted; "
     r"use fdl.train.per_example_grads"),
    ("not-dense", lambda: L.serial(L.Dense(4), L.Tanh(), _hand_dense(3)),
     r"the layer with params\['hand_dense_2'\] belongs to a layer that has no ghost-norm rule"),
    ("batch-norm", lambda: L.serial(L.Dense(4), L.BatchNorm(), L.Dense(3)),
     r"the layer with params\['batch_norm_1'\] belongs to a layer that has no ghost-norm rule"),
    ("bare-array", lambda: L.serial(L.Dense(4), _bare_array(), L.Dense(3)),
     r"params\['bare_1'\] \(shape \(4,\)\) is not held in a layer's params dict.*the norm "
     r"would be wrong; use fdl.train.per_example_grads"),
    ("shared", lambda: L.serial(_twice(4), L.Dense(3)),
     r"the layer with params\['twice_0'\] is used 2 times \(shared weights\)"),
    ("scan", lambda: L.serial(_scanned(4), L.Dense(3)),
     r"the layer with params\['scanned_0'\] is used inside 'scan'"),
]


@pytest.mark.parametrize("name,build,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_models_the_ghost_path_cannot_count_raise(name, build, message):
    model = build()
    params, state = _init(model, (4,))
    x, y = jnp.ones((5, 4)), jnp.zeros((5,), jnp.int32)
    with pytest.raises(ValueError, match=message):
        P.per_example_grad_norms(model, params, state, x, y)
    with pytest.raises(ValueError, match=message):  # also under jit, at trace time
        jax.jit(lambda p: P.dp_sgd_grads(model, p, state, x, y, key=KEY, clip_norm=1.0,
                                         noise_multiplier=1.0))(params)


def test_batch_axis_merged_before_a_dense_layer_raises():
    model = L.serial(_merge_batch(), L.Dense(3))
    params, state = _init(model, (2, 4))
    with pytest.raises(ValueError, match=r"probe must have one entry per example, shape "
                                         r"\(10,\).*reshaped the batch axis"):
        P.per_example_grad_norms(model, params, state, jnp.ones((5, 2, 4)),
                                 jnp.zeros((10,), jnp.int32))


def test_loss_must_be_per_example():
    model = L.serial(L.Dense(3))
    params, state = _init(model, (4,))
    with pytest.raises(ValueError, match=r"one loss per example, shape \(5,\), got shape \(\)"):
        P.per_example_grad_norms(model, params, state, jnp.ones((5, 4)),
                                 jnp.zeros((5,), jnp.int32), loss=fdl.losses.softmax_cross_entropy)


def test_bad_hyperparameters_and_arguments_raise():
    model = L.serial(L.Dense(3))
    params, state = _init(model, (4,))
    x, y = jnp.ones((5, 4)), jnp.zeros((5,), jnp.int32)
    kw = dict(key=KEY, clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"clip_norm must be > 0, got 0"):
        P.dp_sgd_grads(model, params, state, x, y, **(kw | {"clip_norm": 0}))
    with pytest.raises(ValueError, match=r"noise_multiplier must be ≥ 0, got -1"):
        P.dp_sgd_grads(model, params, state, x, y, **(kw | {"noise_multiplier": -1.0}))
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        P.dp_sgd_grads(model, params, state, x, y, **(kw | {"key": 0}))
    with pytest.raises(TypeError, match="model must be an fdl.layers.Layer"):
        P.per_example_grad_norms(model.apply, params, state, x, y)
    probed = {"dense_0": params["dense_0"] | {"probe": jnp.zeros((5,))}}
    with pytest.raises(ValueError, match=r"params\['dense_0'\] already holds a 'probe'"):
        P.per_example_grad_norms(model, probed, state, x, y)
