"""The peers' rows for the sequence models: the LSTM language model and the
transformer encoder, each written the way its users write it.

* `jax` — a hand-written model (`lax.scan` of the cell; attention as two
  `einsum`s and a softmax), `jax.value_and_grad`, hand-written Adam;
* `flax` — Flax NNX modules (`nnx.Embed`, `nnx.RNN(nnx.OptimizedLSTMCell)`,
  `nnx.MultiHeadAttention`, `nnx.LayerNorm`, `nnx.Linear`) with `nnx.Optimizer` over
  `optax.adam`, stepped through the functional API (`nnx.split`/`nnx.merge` inside
  one `jax.jit`, state donated), as the NNX performance guide recommends;
* `equinox` — `eqx.nn` modules on one example, `jax.vmap`ped, with `optax.adam`;
* `torch` — PyTorch eager: `nn.Embedding`, `nn.LSTM(batch_first=True)`,
  `nn.TransformerEncoderLayer(norm_first=True, batch_first=True, dropout=0)`.

Every peer starts from fdl's parameters (`lstm_params`, `transformer_params_of_fdl`:
a framework-neutral dict of numpy arrays, batch-first `Y = XW + b` layout; without
fdl's transformer blocks, `transformer_params` draws one), copied into its own layout. LSTM gates are stacked `i, f, g, o` in every framework here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs import B1, B2, EPS, LR, LSTMConfig, TransformerConfig, copy
from harness import Runner, jit_runner
from peers import Builders, _eqx_runner, _jax_runner, _torch_runner, _torch_set

# --------------------------------------------------------------------------- #
# Framework-neutral parameters
# --------------------------------------------------------------------------- #


def lstm_params(fdl_params: dict) -> dict[str, np.ndarray]:
    """fdl's `serial(Embedding, LSTM, Dense)` params as a neutral dict."""
    e, r, d = (fdl_params[k] for k in ("embedding_0", "lstm_1", "dense_2"))
    return {k: np.array(v) for k, v in (("emb", e["table"]), ("wx", r["wx"]), ("wh", r["wh"]),
                                        ("b", r["b"]), ("wo", d["w"]), ("bo", d["b"]))}


def transformer_params_of_fdl(fdl_params: dict) -> dict[str, Any]:
    """fdl's `serial(Dense, TransformerEncoderBlock × k, mean, Dense)` params as a
    neutral dict."""
    names = sorted(fdl_params, key=lambda k: int(k.rsplit("_", 1)[1]))
    dense = [fdl_params[k] for k in names if k.startswith("dense")]
    blocks = []
    for k in names:
        if not k.startswith("transformer_encoder_block"):
            continue
        b = fdl_params[k]
        blk = {name: b["self_attn"][name] for name in
               ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")}
        blk.update(ln1_g=b["norm1"]["gamma"], ln1_b=b["norm1"]["beta"],
                   ln2_g=b["norm2"]["gamma"], ln2_b=b["norm2"]["beta"],
                   w1=b["linear1"]["w"], b1=b["linear1"]["b"], w2=b["linear2"]["w"],
                   b2=b["linear2"]["b"])
        blocks.append({n: np.array(a) for n, a in blk.items()})
    return {"w_in": np.array(dense[0]["w"]), "b_in": np.array(dense[0]["b"]), "blocks": blocks,
            "w_out": np.array(dense[-1]["w"]), "b_out": np.array(dense[-1]["b"])}


def transformer_params(cfg: TransformerConfig, seed: int = 0) -> dict[str, Any]:
    """Glorot-scaled weights, zero biases, unit layer-norm scales (numpy float32)."""
    rng = np.random.default_rng(seed)

    def w(a: int, b: int) -> np.ndarray:
        return (rng.standard_normal((a, b)) * np.sqrt(2.0 / (a + b))).astype(np.float32)

    def z(n: int, v: float = 0.0) -> np.ndarray:
        return np.full((n,), v, np.float32)

    d, m = cfg.d, cfg.mlp
    blocks = [{"ln1_g": z(d, 1.0), "ln1_b": z(d), "wq": w(d, d), "bq": z(d), "wk": w(d, d),
               "bk": z(d), "wv": w(d, d), "bv": z(d), "wo": w(d, d), "bo": z(d),
               "ln2_g": z(d, 1.0), "ln2_b": z(d), "w1": w(d, m), "b1": z(m), "w2": w(m, d),
               "b2": z(d)} for _ in range(cfg.blocks)]
    return {"w_in": w(cfg.features, d), "b_in": z(d), "blocks": blocks,
            "w_out": w(d, cfg.classes), "b_out": z(cfg.classes)}


# --------------------------------------------------------------------------- #
# Plain JAX models
# --------------------------------------------------------------------------- #


def jax_lstm_lm(p: dict, ids: jax.Array) -> jax.Array:
    """Embedding, LSTM (one `lax.scan` step per token), dense at every step."""
    x = jnp.swapaxes(p["emb"][ids], 0, 1)  # T×N×E
    h0 = jnp.zeros((x.shape[1], p["wh"].shape[0]), x.dtype)

    def cell(carry, x_t):
        h, c = carry
        i, f, g, o = jnp.split(x_t @ p["wx"] + h @ p["wh"] + p["b"], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    _, hs = jax.lax.scan(cell, (h0, h0), x)
    return jnp.swapaxes(hs, 0, 1) @ p["wo"] + p["bo"]


def _layer_norm(x: jax.Array, g: jax.Array, b: jax.Array, eps: float = 1e-5) -> jax.Array:
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * g + b


def jax_transformer(p: dict, x: jax.Array, heads: int) -> jax.Array:
    """Dense in, pre-norm blocks (attention, GELU MLP), mean over tokens, dense out."""
    x = x @ p["w_in"] + p["b_in"]
    n, t, d = x.shape
    for blk in p["blocks"]:
        h = _layer_norm(x, blk["ln1_g"], blk["ln1_b"])
        q, k, v = ((h @ blk[f"w{c}"] + blk[f"b{c}"]).reshape(n, t, heads, d // heads)
                   for c in "qkv")
        a = jax.nn.softmax(jnp.einsum("nthe,nshe->nhts", q, k) / np.sqrt(d // heads), axis=-1)
        x = x + jnp.einsum("nhts,nshe->nthe", a, v).reshape(n, t, d) @ blk["wo"] + blk["bo"]
        h = _layer_norm(x, blk["ln2_g"], blk["ln2_b"])
        x = x + jax.nn.gelu(h @ blk["w1"] + blk["b1"], approximate=False) @ blk["w2"] + blk["b2"]
    return jnp.mean(x, axis=1) @ p["w_out"] + p["b_out"]


# --------------------------------------------------------------------------- #
# Flax NNX: functional stepping of an nnx.Optimizer
# --------------------------------------------------------------------------- #


def _nnx_runner(mods: dict, model: Any, x: Any, y: Any, flops: float) -> Runner:
    nnx, optax = mods["nnx"], mods["optax"]
    optimizer = nnx.Optimizer(model, optax.adam(LR, b1=B1, b2=B2, eps=EPS), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return jit_runner("flax.nnx + optax", "jax", jax.jit(step, donate_argnums=0), state, x, y,
                      flops=flops)


def _nnx_set(variable: Any, value: np.ndarray) -> None:
    variable.value = jnp.asarray(value).reshape(variable.value.shape)


# --------------------------------------------------------------------------- #
# LSTM language model
# --------------------------------------------------------------------------- #


def lstm_peers(cfg: LSTMConfig, mods: dict, p: dict, xn: np.ndarray, yn: np.ndarray
               ) -> Builders:
    """Per peer, the builder of its LSTM-LM row. `xn`, `yn`: `N×T` token ids (numpy)."""
    x, y = jnp.asarray(xn), jnp.asarray(yn)

    def nnx_lm() -> Runner:
        nnx = mods["nnx"]

        class LM(nnx.Module):
            def __init__(self, rngs: Any) -> None:
                self.embed = nnx.Embed(cfg.vocab, cfg.embed, rngs=rngs)
                self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(cfg.embed, cfg.hidden, rngs=rngs))
                self.out = nnx.Linear(cfg.hidden, cfg.vocab, rngs=rngs)

            def __call__(self, ids):
                return self.out(self.rnn(self.embed(ids)))

        m = LM(nnx.Rngs(0))
        for var, key in ((m.embed.embedding, "emb"), (m.rnn.cell.dense_i.kernel, "wx"),
                         (m.rnn.cell.dense_h.kernel, "wh"), (m.rnn.cell.dense_h.bias, "b"),
                         (m.out.kernel, "wo"), (m.out.bias, "bo")):
            _nnx_set(var, p[key])
        return _nnx_runner(mods, m, x, y, cfg.flops)

    def eqx_lm() -> Runner:
        eqx = mods["equinox"]
        k = jax.random.key(0)

        class LM(eqx.Module):
            embed: Any
            cell: Any
            out: Any

            def __call__(self, ids):  # one sequence, T
                xs = jax.vmap(self.embed)(ids)
                zero = jnp.zeros((cfg.hidden,), xs.dtype)

                def step(carry, x_t):
                    carry = self.cell(x_t, carry)
                    return carry, carry[0]

                _, hs = jax.lax.scan(step, (zero, zero), xs)
                return jax.vmap(self.out)(hs)

        m = LM(eqx.nn.Embedding(cfg.vocab, cfg.embed, key=k),
               eqx.nn.LSTMCell(cfg.embed, cfg.hidden, key=k),
               eqx.nn.Linear(cfg.hidden, cfg.vocab, key=k))
        m = eqx.tree_at(lambda m: (m.embed.weight, m.cell.weight_ih, m.cell.weight_hh,
                                   m.cell.bias, m.out.weight, m.out.bias), m,
                        tuple(jnp.asarray(a) for a in (p["emb"], p["wx"].T, p["wh"].T, p["b"],
                                                       p["wo"].T, p["bo"])))
        return _eqx_runner(mods, m, x, y, cfg.flops)

    def torch_lm() -> Runner:
        torch = mods["torch"]
        nn = torch.nn

        class LM(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(cfg.vocab, cfg.embed)
                self.lstm = nn.LSTM(cfg.embed, cfg.hidden, batch_first=True)
                self.out = nn.Linear(cfg.hidden, cfg.vocab)

            def forward(self, ids):
                h, _ = self.lstm(self.embed(ids))
                return self.out(h).reshape(-1, cfg.vocab)  # (N·T)×V, labels flattened

        net = LM()
        with torch.no_grad():
            net.embed.weight.copy_(torch.from_numpy(p["emb"]))
            for name, a in (("weight_ih_l0", p["wx"].T), ("weight_hh_l0", p["wh"].T),
                            ("bias_ih_l0", p["b"]), ("bias_hh_l0", np.zeros_like(p["b"]))):
                getattr(net.lstm, name).copy_(torch.from_numpy(np.ascontiguousarray(a)))
        _torch_set(torch, net.out, p["wo"].T, p["bo"])
        return _torch_runner(torch, net, xn, yn.reshape(-1), cfg.flops)

    return {"jax": lambda: [_jax_runner(jax_lstm_lm, copy(p), x, y, cfg.flops)],
            "flax": lambda: [nnx_lm()], "equinox": lambda: [eqx_lm()],
            "torch": lambda: [torch_lm()]}


# --------------------------------------------------------------------------- #
# Transformer encoder
# --------------------------------------------------------------------------- #


def transformer_peers(cfg: TransformerConfig, mods: dict, p: dict, xn: np.ndarray,
                      yn: np.ndarray) -> Builders:
    """Per peer, the builder of its transformer row. `xn`: `N×T×features`, `yn`: `N`."""
    x, y = jnp.asarray(xn), jnp.asarray(yn)
    d, h = cfg.d, cfg.heads

    def nnx_encoder() -> Runner:
        nnx = mods["nnx"]

        class Block(nnx.Module):
            def __init__(self, rngs: Any) -> None:
                self.ln1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
                self.attn = nnx.MultiHeadAttention(num_heads=h, in_features=d, qkv_features=d,
                                                   out_features=d, decode=False, rngs=rngs)
                self.ln2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
                self.fc1 = nnx.Linear(d, cfg.mlp, rngs=rngs)
                self.fc2 = nnx.Linear(cfg.mlp, d, rngs=rngs)

            def __call__(self, x):
                x = x + self.attn(self.ln1(x))
                return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x)), approximate=False))

        class Encoder(nnx.Module):
            def __init__(self, rngs: Any) -> None:
                self.inp = nnx.Linear(cfg.features, d, rngs=rngs)
                self.blocks = nnx.List([Block(rngs) for _ in range(cfg.blocks)])
                self.out = nnx.Linear(d, cfg.classes, rngs=rngs)

            def __call__(self, x):
                x = self.inp(x)
                for blk in self.blocks:
                    x = blk(x)
                return self.out(jnp.mean(x, axis=1))

        m = Encoder(nnx.Rngs(0))
        pairs = [(m.inp.kernel, p["w_in"]), (m.inp.bias, p["b_in"]),
                 (m.out.kernel, p["w_out"]), (m.out.bias, p["b_out"])]
        for blk, q in zip(m.blocks, p["blocks"]):
            a = blk.attn
            pairs += [(blk.ln1.scale, q["ln1_g"]), (blk.ln1.bias, q["ln1_b"]),
                      (blk.ln2.scale, q["ln2_g"]), (blk.ln2.bias, q["ln2_b"]),
                      (a.query.kernel, q["wq"]), (a.query.bias, q["bq"]),
                      (a.key.kernel, q["wk"]), (a.key.bias, q["bk"]),
                      (a.value.kernel, q["wv"]), (a.value.bias, q["bv"]),
                      (a.out.kernel, q["wo"]), (a.out.bias, q["bo"]),
                      (blk.fc1.kernel, q["w1"]), (blk.fc1.bias, q["b1"]),
                      (blk.fc2.kernel, q["w2"]), (blk.fc2.bias, q["b2"])]
        for var, value in pairs:
            _nnx_set(var, value)
        return _nnx_runner(mods, m, x, y, cfg.flops)

    def eqx_encoder() -> Runner:
        eqx = mods["equinox"]
        k = jax.random.key(0)

        def linear(w: np.ndarray, b: np.ndarray) -> Any:
            lin = eqx.nn.Linear(w.shape[0], w.shape[1], key=k)
            return eqx.tree_at(lambda l: (l.weight, l.bias), lin,
                               (jnp.asarray(w.T), jnp.asarray(b)))

        def norm(g: np.ndarray, b: np.ndarray) -> Any:
            ln = eqx.nn.LayerNorm(d, eps=1e-5)
            return eqx.tree_at(lambda l: (l.weight, l.bias), ln, (jnp.asarray(g), jnp.asarray(b)))

        class Block(eqx.Module):
            ln1: Any
            attn: Any
            ln2: Any
            fc1: Any
            fc2: Any

            def __call__(self, x):  # one sequence, T×d
                x = x + self.attn(*(jax.vmap(self.ln1)(x),) * 3)
                hdn = jax.nn.gelu(jax.vmap(self.fc1)(jax.vmap(self.ln2)(x)), approximate=False)
                return x + jax.vmap(self.fc2)(hdn)

        class Encoder(eqx.Module):
            inp: Any
            blocks: tuple
            out: Any

            def __call__(self, x):
                x = jax.vmap(self.inp)(x)
                for blk in self.blocks:
                    x = blk(x)
                return self.out(jnp.mean(x, axis=0))

        blocks = []
        for q in p["blocks"]:
            attn = eqx.nn.MultiheadAttention(h, d, use_query_bias=True, use_key_bias=True,
                                             use_value_bias=True, use_output_bias=True, key=k)
            attn = eqx.tree_at(
                lambda a: (a.query_proj, a.key_proj, a.value_proj, a.output_proj), attn,
                tuple(linear(q[f"w{c}"], q[f"b{c}"]) for c in "qkvo"))
            blocks.append(Block(norm(q["ln1_g"], q["ln1_b"]), attn, norm(q["ln2_g"], q["ln2_b"]),
                                linear(q["w1"], q["b1"]), linear(q["w2"], q["b2"])))
        m = Encoder(linear(p["w_in"], p["b_in"]), tuple(blocks), linear(p["w_out"], p["b_out"]))
        return _eqx_runner(mods, m, x, y, cfg.flops)

    def torch_encoder() -> Runner:
        torch = mods["torch"]
        nn = torch.nn

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inp = nn.Linear(cfg.features, d)
                self.blocks = nn.ModuleList([
                    nn.TransformerEncoderLayer(d, h, cfg.mlp, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
                    for _ in range(cfg.blocks)])
                self.out = nn.Linear(d, cfg.classes)

            def forward(self, x):
                x = self.inp(x)
                for blk in self.blocks:
                    x = blk(x)
                return self.out(x.mean(dim=1))

        net = Encoder()
        _torch_set(torch, net.inp, p["w_in"].T, p["b_in"])
        _torch_set(torch, net.out, p["w_out"].T, p["b_out"])
        for blk, q in zip(net.blocks, p["blocks"]):
            with torch.no_grad():
                blk.self_attn.in_proj_weight.copy_(torch.from_numpy(
                    np.concatenate([q["wq"].T, q["wk"].T, q["wv"].T])))
                blk.self_attn.in_proj_bias.copy_(torch.from_numpy(
                    np.concatenate([q["bq"], q["bk"], q["bv"]])))
                for ln, g, b in ((blk.norm1, "ln1_g", "ln1_b"), (blk.norm2, "ln2_g", "ln2_b")):
                    ln.weight.copy_(torch.from_numpy(q[g]))
                    ln.bias.copy_(torch.from_numpy(q[b]))
            _torch_set(torch, blk.self_attn.out_proj, q["wo"].T, q["bo"])
            _torch_set(torch, blk.linear1, q["w1"].T, q["b1"])
            _torch_set(torch, blk.linear2, q["w2"].T, q["b2"])
        return _torch_runner(torch, net, xn, yn, cfg.flops)

    model: Callable = lambda params, x: jax_transformer(params, x, h)  # noqa: E731
    return {"jax": lambda: [_jax_runner(model, copy(p), x, y, cfg.flops)],
            "flax": lambda: [nnx_encoder()], "equinox": lambda: [eqx_encoder()],
            "torch": lambda: [torch_encoder()]}
