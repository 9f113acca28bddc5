r"""The matrix calculus reference, executed.

Parr & Howard's "The Matrix Calculus You Need For Deep Learning" (2018) ends with a
reference section of Jacobians. This script writes each identity as the formula for
its Jacobian ``J[i…, j…] = ∂y[i…]/∂x[j…]`` and checks it with
:func:`fdl.check.jacobian` in float64, against ``jax.jacrev`` and against central
finite differences. Vectors ``w, x ∈ ℝ^n``, scalar ``z``, matrix ``W ∈ ℝ^{m×n}``::

    element-wise binary ops (y = w ○ x, Jacobians are diagonal)
      y = w + x        ∂y/∂w = I             ∂y/∂x = I
      y = w − x        ∂y/∂w = I             ∂y/∂x = −I
      y = w ⊗ x        ∂y/∂w = diag(x)       ∂y/∂x = diag(w)
      y = w ⊘ x        ∂y/∂w = diag(1/x)     ∂y/∂x = diag(−w/x²)
    scalar expansion
      y = x + z        ∂y/∂x = I             ∂y/∂z = 1
      y = x z          ∂y/∂x = z I           ∂y/∂z = x
    vector sum reduction
      y = Σᵢ xᵢ        ∂y/∂x = 1ᵀ
      y = Σᵢ xᵢ z      ∂y/∂x = z 1ᵀ          ∂y/∂z = Σᵢ xᵢ
    matrix-vector product
      y = W x          ∂y/∂x = W             ∂yᵢ/∂W_jk = δᵢⱼ x_k
    chain rules
      y = sin(x²)                  dy/dx = cos(x²) 2x                     (single variable)
      y = x + x², as u₁ = x², y = x + u₁   dy/dx = ∂y/∂x + ∂y/∂u₁ du₁/dx = 1 + 2x
                                                                       (total derivative)
      y = [ln(x²), sin(3x)]        dy/dx = [2/x, 3 cos 3x]                (vector chain rule)
      y = f(g(x)), g = W x, f = tanh   ∂y/∂x = diag(1 − tanh²(Wx)) W     (∂f/∂g ∂g/∂x)
    a neuron, activation(x) = max(0, w·x + b)
      ∂/∂w = xᵀ if w·x + b > 0 else 0ᵀ          ∂/∂b = 1 if w·x + b > 0 else 0
    its loss over N examples, C = (1/N) Σᵢ (yᵢ − max(0, w·xᵢ + b))², eᵢ = w·xᵢ + b − yᵢ
      ∂C/∂w = (2/N) Σ_{i: w·xᵢ+b>0} eᵢ xᵢᵀ       ∂C/∂b = (2/N) Σ_{i: w·xᵢ+b>0} eᵢ

The points are drawn at random away from the identities' singularities (``x ≠ 0``
for ⊘ and ln, ``w·x + b`` away from the ReLU's kink, where the derivative does not
exist and finite differences straddle it).

References: T. Parr and J. Howard, "The Matrix Calculus You Need For Deep Learning",
arXiv:1802.01528, 2018.

Run:  python examples/07_matrix_calculus.py [--out DIR]   (it is fast in every mode)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import fdl
from _gallery import parse, print_table, save_figure


class Identity(NamedTuple):
    """One row of the reference: ``f(*args)`` and the Jacobian formula ``jac(*args)``."""

    name: str
    formula: str
    f: Callable[..., jax.Array]
    jac: Callable[..., Any]
    args: tuple


def relu(u: jax.Array) -> jax.Array:
    return jnp.maximum(u, 0.0)


def step(u: jax.Array) -> jax.Array:
    """d max(0, u)/du away from 0."""
    return (u > 0).astype(u.dtype)


def identities(key: jax.Array, n: int = 5, m: int = 4, N: int = 8) -> list[Identity]:
    """The reference, at random float64 points (call with ``jax_enable_x64`` on)."""
    k = jax.random.split(key, 8)
    f64 = jnp.float64
    w = jax.random.normal(k[0], (n,), f64)
    x = jax.random.normal(k[1], (n,), f64)
    x_pos = jax.random.uniform(k[2], (n,), f64, 0.5, 2.0)  # away from 0 for ⊘
    z = jnp.asarray(1.7, f64)
    s = jnp.asarray(0.8, f64)  # a scalar x for the single-variable rules
    W = jax.random.normal(k[3], (m, n), f64) / np.sqrt(n)
    X = jax.random.normal(k[4], (N, n), f64)
    wn = w / jnp.linalg.norm(w)
    b = jnp.asarray(0.1, f64)
    # examples pushed away from the ReLU's kink: |w·xᵢ + b| ≥ 0.3
    pre = X @ wn + b
    X = X + (jnp.sign(pre) * jnp.maximum(0.3 - jnp.abs(pre), 0.0))[:, None] * wn[None, :]
    y = jax.random.normal(k[5], (N,), f64)
    xa = X[jnp.argmax(X @ wn + b)]  # one input on which the neuron is active (w·x + b ≥ 0.3)
    eye = jnp.eye(n, dtype=f64)
    ones = jnp.ones((n,), f64)

    def neuron(w, b):
        return relu(jnp.dot(w, xa) + b)

    def cost(w, b):
        return jnp.mean((y - relu(X @ w + b)) ** 2)

    def cost_grad(w, b):
        u = X @ w + b
        e = (u - y) * step(u)
        return 2 / N * (e @ X), 2 / N * jnp.sum(e)

    return [
        Identity("w + x", "I, I", lambda w, x: w + x, lambda w, x: (eye, eye), (w, x)),
        Identity("w - x", "I, -I", lambda w, x: w - x, lambda w, x: (eye, -eye), (w, x)),
        Identity("w * x", "diag(x), diag(w)", lambda w, x: w * x,
                 lambda w, x: (jnp.diag(x), jnp.diag(w)), (w, x)),
        Identity("w / x", "diag(1/x), diag(-w/x^2)", lambda w, x: w / x,
                 lambda w, x: (jnp.diag(1 / x), jnp.diag(-w / x**2)), (w, x_pos)),
        Identity("x + z (scalar z)", "I, 1", lambda x, z: x + z, lambda x, z: (eye, ones), (x, z)),
        Identity("x z (scalar z)", "z I, x", lambda x, z: x * z, lambda x, z: (z * eye, x), (x, z)),
        Identity("sum(x)", "1^T", lambda x: jnp.sum(x), lambda x: ones, (x,)),
        Identity("sum(x z)", "z 1^T, sum(x)", lambda x, z: jnp.sum(x * z),
                 lambda x, z: (z * ones, jnp.sum(x)), (x, z)),
        Identity("W x", "W ; d_ij x_k", lambda W, x: W @ x,
                 lambda W, x: (jnp.einsum("ij,k->ijk", jnp.eye(m, dtype=f64), x), W), (W, x)),
        Identity("sin(x^2)", "cos(x^2) 2x", lambda s: jnp.sin(s**2),
                 lambda s: jnp.cos(s**2) * 2 * s, (s,)),
        Identity("x + x^2 (total deriv.)", "1 + 2x", lambda s: s + s**2, lambda s: 1 + 2 * s, (s,)),
        Identity("[ln x^2, sin 3x]", "[2/x, 3 cos 3x]",
                 lambda s: jnp.stack([jnp.log(s**2), jnp.sin(3 * s)]),
                 lambda s: jnp.stack([2 / s, 3 * jnp.cos(3 * s)]), (s,)),
        Identity("tanh(W x)", "diag(1 - tanh^2(Wx)) W", lambda x: jnp.tanh(W @ x),
                 lambda x: (1 - jnp.tanh(W @ x) ** 2)[:, None] * W, (x,)),
        Identity("max(0, w.x + b)", "x^T [w.x+b>0], [w.x+b>0]", neuron,
                 lambda w, b: (xa * step(jnp.dot(w, xa) + b), step(jnp.dot(w, xa) + b)), (wn, b)),
        Identity("C(w, b) (MSE of a ReLU)", "2/N sum_i e_i x_i^T [..>0], 2/N sum_i e_i [..>0]",
                 cost, cost_grad, (wn, b)),
    ]


def main(argv: Sequence[str] | None = None) -> dict:
    """Check every identity in float64 and print identity / formula / max error."""
    args = parse(__doc__, argv)
    rows, table = [], []
    with jax.enable_x64(True):
        key = jax.random.key(7)
        for ident in identities(key):
            report = fdl.check.jacobian(ident.f, ident.jac, *ident.args, key=key)
            ad, fd = report.worst("autodiff"), report.worst("finite differences")
            rows.append({"name": ident.name, "formula": ident.formula, "autodiff": ad,
                         "finite_differences": fd, "passed": report.passed})
            table.append([ident.name, ident.formula, ad, fd, "ok" if report.passed else "FAIL"])
    print("Parr & Howard's reference identities, float64; errors are max|J - J_ref| / max|J_ref|")
    print_table(["identity", "Jacobian formula", "vs jax.jacrev", "vs finite diff.", ""], table)
    worst = max(r["autodiff"] for r in rows)
    print(f"{sum(r['passed'] for r in rows)}/{len(rows)} identities hold; worst error vs "
          f"autodiff {worst:.2e}")

    def draw(plt):
        fig, ax = plt.subplots(figsize=(8, 5.2))
        pos = np.arange(len(rows))
        floor = 1e-18  # exact agreement drawn at the axis floor
        ax.barh(pos - 0.2, [max(r["autodiff"], floor) for r in rows], 0.4,
                label="vs jax.jacrev (tolerance 1e-10)")
        ax.barh(pos + 0.2, [max(r["finite_differences"], floor) for r in rows], 0.4,
                label="vs finite differences (tolerance 1e-8)")
        ax.axvline(1e-10, color="C0", ls=":")
        ax.axvline(1e-8, color="C1", ls=":")
        ax.set_xscale("log")
        ax.set_yticks(pos, [f"{r['name']}:  {r['formula']}" for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel="max relative error of the hand-written Jacobian (float64; 1e-18 = exact)",
               title="Parr & Howard's matrix calculus, executed with fdl.check.jacobian")
        ax.legend(loc="upper center", bbox_to_anchor=(0.4, -0.1), ncol=2, fontsize=8)
        return fig

    figure = save_figure(args, "matrix_calculus.png", draw)
    return {"identities": rows, "worst_autodiff": worst, "figure": figure}


if __name__ == "__main__":
    main()
