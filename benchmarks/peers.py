"""The peers fdl is measured against, each written the way its users write it.

* `jax` — `jax.value_and_grad` and a hand-written Adam over a list of `(w, b)`;
* `stax` — `jax.example_libraries.stax` with `example_libraries.optimizers.adam`;
* `flax` — a `flax.linen` module with `optax.adam` (the sequence rows, in
  `peers_seq`, use Flax NNX);
* `equinox` — an `equinox.Module`, partitioned once, its arrays through `jax.jit`,
  with `optax.adam`;
* `torch` — PyTorch eager: `nn.Sequential`, `torch.optim.Adam` (default
  implementation), `F.cross_entropy`.

Every JAX peer's step is one `jax.jit` program with parameters and optimizer state
donated. Each peer starts from the parameters fdl drew (`fdl_runners.weighted_layers`:
`[(w, b), …]`, dense `w` as `d_in×d_out`, conv `w` as HWIO), copied into its own layout:
transposed for PyTorch and Equinox, NCHW-reordered for the CNN's dense layer.

`load_peers` imports the optional peers; those missing are skipped with a note.
`mlp_peers` and `cnn_peers` return, per peer, a function that builds its rows;
`build_peers` calls those of the peers loaded.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs import B1, B2, EPS, LR, CNNConfig, bf16, copy, nchw_dense
from harness import Runner, Settings, jit_runner, short

Builders = dict[str, Callable[[], list[Runner]]]


def load_peers(settings: Settings, notes: list[str]) -> dict[str, Any]:
    """Import the optional peers; those missing are dropped with a note."""
    mods: dict[str, Any] = {}
    wanted = set(settings.peers)
    if "jax" in wanted:
        mods["jax"] = jax
    if "stax" in wanted:
        try:
            from jax.example_libraries import optimizers, stax
            mods["stax"] = (stax, optimizers)
        except ImportError as e:
            notes.append(f"stax: skipped ({e})")
    if wanted & {"flax", "equinox"}:
        try:
            import optax
            mods["optax"] = optax
        except ImportError:
            notes.append("flax, equinox: skipped (optax not installed: pip install 'fdl[bench]')")
            wanted -= {"flax", "equinox"}
    for name, module in (("flax", "flax.linen"), ("equinox", "equinox")):
        if name in wanted:
            try:
                mods[name] = importlib.import_module(module)
            except ImportError:
                notes.append(f"{name}: skipped (not installed: pip install 'fdl[bench]')")
    if "flax" in mods:  # the sequence rows use Flax NNX (the MLP and CNN rows linen)
        mods["nnx"] = importlib.import_module("flax.nnx")
    if "torch" in wanted:
        _load_torch(mods, notes)
    return mods


def _load_torch(mods: dict[str, Any], notes: list[str]) -> None:
    try:
        import torch
    except ImportError:
        notes.append("torch: skipped (not installed; on the CPU benchmark machine: "
                     "pip install torch==2.13.0)")
        return
    if jax.default_backend() == "gpu" and not torch.cuda.is_available():
        notes.append("torch: skipped (JAX sees a GPU but this torch build has no CUDA)")
        return
    torch.manual_seed(0)
    if jax.default_backend() == "gpu":
        # JAX's default float32 matmul precision on a GPU allows TF32; so does this
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        notes.append("torch: TF32 allowed for float32 matmuls and convolutions, "
                     "as JAX's default precision allows on a GPU")
    mods["torch"] = torch


def build_peers(builders: Builders, mods: dict, notes: list[str]) -> list[Runner]:
    """The rows of the peers loaded; a peer whose rows fail to build is skipped with a note."""
    out = []
    for name, build in builders.items():
        if name not in mods:
            continue
        try:
            out += build()
        except Exception as e:
            notes.append(f"{name}: skipped, failed to build: {type(e).__name__}: {short(e)}")
    return out


def torch_device(torch: Any) -> Any:
    """Where PyTorch runs: the GPU JAX runs on, else the CPU."""
    return torch.device("cuda" if jax.default_backend() == "gpu" else "cpu")


def torch_sync(torch: Any) -> None:
    """Wait for PyTorch's queued GPU work (a no-op on the CPU, where it runs eagerly)."""
    if jax.default_backend() == "gpu":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- #
# Plain JAX: loss, Adam, models
# --------------------------------------------------------------------------- #


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy on integer labels, mean over the batch (and the steps of
    a sequence: logits `N×…×K`, labels `N×…`) (plain JAX)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


def adam_init(params: Any) -> tuple:
    """Hand-written Adam's state: first and second moments, step count."""
    return jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params), \
        jnp.zeros((), jnp.int32)


def adam_update(grads: Any, opt: tuple, params: Any) -> tuple[Any, tuple]:
    """Hand-written Adam (Kingma & Ba 2015; eps outside the square root, as fdl/optax/torch)."""
    m, v, t = opt
    t = t + 1
    m = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, m, grads)
    v = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, v, grads)
    c1 = 1 - B1 ** t.astype(jnp.float32)
    c2 = 1 - B2 ** t.astype(jnp.float32)
    params = jax.tree.map(lambda p, m, v: p - LR * (m / c1) / (jnp.sqrt(v / c2) + EPS),
                          params, m, v)
    return params, (m, v, t)


def jax_mlp(params: list, x: jax.Array) -> jax.Array:
    """The MLP in plain JAX: ReLU between the `(w, b)` layers."""
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def jax_cnn(p: dict, x: jax.Array) -> jax.Array:
    """The CNN in plain JAX (NHWC, HWIO kernels)."""
    dn = ("NHWC", "HWIO", "NHWC")
    for name in ("conv1", "conv2"):
        w, b = p[name]
        x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn) + b
        x = jax.nn.relu(x)
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    w, b = p["dense"]
    return x.reshape(x.shape[0], -1) @ w + b


def _jax_runner(model: Callable, params: Any, x: Any, y: Any, flops: float, *,
                low: bool = False) -> Runner:
    """Plain JAX: `value_and_grad` of `cross_entropy(model(params, x), y)` and hand-written
    Adam; with `low`, the forward in bfloat16 (parameters and inputs cast)."""
    def loss_fn(params, x, y):
        if low:
            params, x = bf16(params), x.astype(jnp.bfloat16)
        return cross_entropy(model(params, x), y)

    def step(state, x, y):
        params, opt = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, opt = adam_update(grads, opt, params)
        return (params, opt), loss

    params = copy(params)
    return jit_runner("jax bf16" if low else "jax (grad + hand-written Adam)", "jax",
                      jax.jit(step, donate_argnums=0), (params, adam_init(params)), x, y,
                      dtype="bfloat16" if low else "float32", flops=flops)


# --------------------------------------------------------------------------- #
# Runners shared by the MLP and the CNN
# --------------------------------------------------------------------------- #


def _stax_runner(mods: dict, layers: list, params: list, x: Any, y: Any, flops: float) -> Runner:
    stax, optimizers = mods["stax"]
    _, apply = stax.serial(*layers)
    opt_init, opt_update, get_params = optimizers.adam(LR, B1, B2, EPS)

    def step(state, x, y):
        i, opt_state = state
        loss, grads = jax.value_and_grad(
            lambda p: cross_entropy(apply(p, x), y))(get_params(opt_state))
        return (i + 1, opt_update(i, grads, opt_state)), loss

    return jit_runner("stax + example_libraries.optimizers", "jax",
                      jax.jit(step, donate_argnums=0),
                      (jnp.zeros((), jnp.int32), opt_init(copy(params))), x, y, flops=flops)


def _optax_runner(name: str, mods: dict, loss_fn: Callable, params: Any, x: Any, y: Any,
                  flops: float, dtype: str = "float32") -> Runner:
    optax = mods["optax"]
    tx = optax.adam(LR, b1=B1, b2=B2, eps=EPS)

    def step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    params = copy(params)
    return jit_runner(name, "jax", jax.jit(step, donate_argnums=0), (params, tx.init(params)),
                      x, y, dtype=dtype, flops=flops)


def _flax_runner(mods: dict, module: Any, params: dict, x: Any, y: Any, flops: float, *,
                 low: bool = False) -> Runner:
    optax = mods["optax"]

    def loss_fn(params, x, y):
        logits = module.apply(params, x).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return _optax_runner("flax bf16" if low else "flax.linen + optax", mods, loss_fn,
                         {"params": params}, x, y, flops, "bfloat16" if low else "float32")


def _eqx_runner(mods: dict, model: Any, x: Any, y: Any, flops: float) -> Runner:
    eqx, optax = mods["equinox"], mods["optax"]
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_fn(params, x, y):
        logits = jax.vmap(eqx.combine(params, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return _optax_runner("equinox + optax", mods, loss_fn, params, x, y, flops)


def _eqx_linear(eqx: Any, w: np.ndarray, b: np.ndarray) -> Any:
    lin = eqx.nn.Linear(w.shape[0], w.shape[1], key=jax.random.key(0))
    return eqx.tree_at(lambda l: (l.weight, l.bias), lin, (jnp.asarray(w.T), jnp.asarray(b)))


def _torch_runner(torch: Any, model: Any, x: np.ndarray, y: np.ndarray, flops: float, *,
                  low: bool = False) -> Runner:
    """PyTorch eager; with `low`, the forward under `torch.autocast(bfloat16)`."""
    dev = torch_device(torch)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(dev)
    box = {"loss": None}
    cast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if low else \
        contextlib.nullcontext

    def run(k: int) -> None:
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            with cast():
                logits = model(xt)
            loss = torch.nn.functional.cross_entropy(logits.float(), yt)
            loss.backward()
            opt.step()
        torch_sync(torch)
        box["loss"] = loss

    return Runner("torch bf16 (autocast)" if low else "torch eager", "torch", run,
                  lambda: float(box["loss"].detach().cpu()), "bfloat16" if low else "float32",
                  flops)


def _torch_set(torch: Any, layer: Any, w: np.ndarray, b: np.ndarray) -> None:
    """Copy `w` (already in PyTorch's layout) and `b` into `layer`."""
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        layer.bias.copy_(torch.from_numpy(b))


# --------------------------------------------------------------------------- #
# The MLP
# --------------------------------------------------------------------------- #


def mlp_peers(mods: dict, dense: list, xn: np.ndarray, yn: np.ndarray, flops: float, *,
              with_bf16: bool) -> Builders:
    """Per peer, the builder of its MLP rows (with `with_bf16`, plus its bfloat16 row
    where it has one). `dense` is `[(w, b), …]`; `xn`, `yn` the batch (numpy)."""
    x, y = jnp.asarray(xn), jnp.asarray(yn)
    dtypes = (False, True) if with_bf16 else (False,)

    def flax_mlp(low: bool) -> Runner:
        nn = mods["flax"]
        dtype = jnp.bfloat16 if low else jnp.float32

        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                for w, _ in dense[:-1]:
                    x = nn.relu(nn.Dense(w.shape[1], dtype=dtype)(x))
                return nn.Dense(dense[-1][0].shape[1], dtype=dtype)(x)

        params = {f"Dense_{i}": {"kernel": w, "bias": b} for i, (w, b) in enumerate(dense)}
        return _flax_runner(mods, MLP(), params, x, y, flops, low=low)

    def stax_mlp() -> Runner:
        stax = mods["stax"][0]
        layers, params = [], []
        for w, b in dense[:-1]:
            layers += [stax.Dense(w.shape[1]), stax.Relu]
            params += [(w, b), ()]
        layers.append(stax.Dense(dense[-1][0].shape[1]))
        params.append(dense[-1])
        return _stax_runner(mods, layers, params, x, y, flops)

    def eqx_mlp() -> Runner:
        eqx = mods["equinox"]

        class MLP(eqx.Module):
            layers: tuple

            def __call__(self, x):
                for layer in self.layers[:-1]:
                    x = jax.nn.relu(layer(x))
                return self.layers[-1](x)

        return _eqx_runner(mods, MLP(tuple(_eqx_linear(eqx, w, b) for w, b in dense)), x, y,
                           flops)

    def torch_mlp(low: bool) -> Runner:
        torch = mods["torch"]
        nn = torch.nn
        layers = []
        for i, (w, b) in enumerate(dense):
            lin = nn.Linear(w.shape[0], w.shape[1])
            _torch_set(torch, lin, w.T, b)
            layers += [lin, nn.ReLU()] if i < len(dense) - 1 else [lin]
        return _torch_runner(torch, nn.Sequential(*layers), xn, yn, flops, low=low)

    return {"jax": lambda: [_jax_runner(jax_mlp, dense, x, y, flops, low=d) for d in dtypes],
            "stax": lambda: [stax_mlp()],
            "flax": lambda: [flax_mlp(d) for d in dtypes],
            "equinox": lambda: [eqx_mlp()],
            "torch": lambda: [torch_mlp(d) for d in dtypes]}


# --------------------------------------------------------------------------- #
# The CNN
# --------------------------------------------------------------------------- #


def cnn_peers(cfg: CNNConfig, mods: dict, p: dict, xn: np.ndarray, yn: np.ndarray) -> Builders:
    """Per peer, the builder of its CNN row. `p` holds `"conv1"`, `"conv2"` (HWIO kernel,
    bias) and `"dense"` (`(h, w, c)`-ordered rows, bias); `xn` is NHWC (numpy)."""
    x, y = jnp.asarray(xn), jnp.asarray(yn)
    xc = np.ascontiguousarray(xn.transpose(0, 3, 1, 2))  # NCHW for equinox and torch
    dense_nchw = nchw_dense(cfg, p["dense"][0])

    def stax_cnn() -> Runner:
        stax = mods["stax"][0]
        layers = [stax.Conv(cfg.channels[0], (3, 3), padding="SAME"), stax.Relu,
                  stax.MaxPool((2, 2), strides=(2, 2)),
                  stax.Conv(cfg.channels[1], (3, 3), padding="SAME"), stax.Relu,
                  stax.MaxPool((2, 2), strides=(2, 2)), stax.Flatten, stax.Dense(cfg.classes)]
        params = [(p["conv1"][0], p["conv1"][1].reshape(1, 1, 1, -1)), (), (),
                  (p["conv2"][0], p["conv2"][1].reshape(1, 1, 1, -1)), (), (), (), p["dense"]]
        return _stax_runner(mods, layers, params, x, y, cfg.flops)

    def flax_cnn() -> Runner:
        nn = mods["flax"]

        class CNN(nn.Module):
            @nn.compact
            def __call__(self, x):
                for c in cfg.channels:
                    x = nn.max_pool(nn.relu(nn.Conv(c, (3, 3), padding="SAME")(x)), (2, 2), (2, 2))
                return nn.Dense(cfg.classes)(x.reshape(x.shape[0], -1))

        params = {f"Conv_{i}": {"kernel": p[n][0], "bias": p[n][1]}
                  for i, n in enumerate(("conv1", "conv2"))}
        params["Dense_0"] = {"kernel": p["dense"][0], "bias": p["dense"][1]}
        return _flax_runner(mods, CNN(), params, x, y, cfg.flops)

    def eqx_cnn() -> Runner:
        eqx = mods["equinox"]

        def conv(w, b):  # HWIO → OIHW, bias (O, 1, 1)
            layer = eqx.nn.Conv2d(w.shape[2], w.shape[3], 3, padding=1, key=jax.random.key(0))
            new = (jnp.asarray(w.transpose(3, 2, 0, 1)), jnp.asarray(b)[:, None, None])
            return eqx.tree_at(lambda l: (l.weight, l.bias), layer, new)

        class CNN(eqx.Module):
            conv1: Any
            conv2: Any
            dense: Any
            pool: Any

            def __call__(self, x):  # one example, CHW
                x = self.pool(jax.nn.relu(self.conv1(x)))
                x = self.pool(jax.nn.relu(self.conv2(x)))
                return self.dense(x.reshape(-1))

        model = CNN(conv(*p["conv1"]), conv(*p["conv2"]),
                    _eqx_linear(eqx, dense_nchw, p["dense"][1]), eqx.nn.MaxPool2d(2, 2))
        return _eqx_runner(mods, model, jnp.asarray(xc), y, cfg.flops)

    def torch_cnn() -> Runner:
        torch = mods["torch"]
        nn = torch.nn
        c0, (c1, c2) = cfg.in_channels, cfg.channels
        net = nn.Sequential(nn.Conv2d(c0, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(cfg.flat, cfg.classes))
        for layer, (w, b) in ((net[0], p["conv1"]), (net[3], p["conv2"])):
            _torch_set(torch, layer, w.transpose(3, 2, 0, 1), b)
        _torch_set(torch, net[7], dense_nchw.T, p["dense"][1])
        return _torch_runner(torch, net, xc, yn, cfg.flops)

    return {"jax": lambda: [_jax_runner(jax_cnn, p, x, y, cfg.flops)],
            "stax": lambda: [stax_cnn()], "flax": lambda: [flax_cnn()],
            "equinox": lambda: [eqx_cnn()], "torch": lambda: [torch_cnn()]}
