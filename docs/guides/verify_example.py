"""A hand derivation checked by fdl.check.grad: one right, one wrong (run by the docs build)."""

import jax
import jax.numpy as jnp

import fdl

jax.config.update("jax_enable_x64", True)

x = jax.random.normal(jax.random.key(0), (8, 3), jnp.float64)
w = jax.random.normal(jax.random.key(1), (3, 2), jnp.float64)


def f(w):  # L = Σ tanh(XW)
    return jnp.sum(jnp.tanh(x @ w))


def right(w):  # ∂L/∂W = Xᵀ (1 − tanh²(XW))
    return x.T @ (1 - jnp.tanh(x @ w) ** 2)


def wrong(w):  # forgot to square: Xᵀ (1 − tanh(XW))
    return x.T @ (1 - jnp.tanh(x @ w))


right_report = fdl.check.grad(f, right, w)
wrong_report = fdl.check.grad(f, wrong, w)
print(right_report)
print()
print(wrong_report)
