"""Embedding lookup: rows of a table gathered by integer ids.

$T ∈ ℝ^{V×d}$ holds one $d$-vector per id in ${0, …, V−1}$; `ids` may have
any shape $S$ (a batch of tokens $N$, a batch of sequences $N×L$, …) and the
output has shape $S×d$.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fdl import _validate as v
from fdl.primitive import Example, gaussian, labels, primitive

__all__ = ["embedding"]


def embedding(ids: jax.Array, table: jax.Array) -> jax.Array:
    r"""Gather rows: `Y[s] = T[ids[s]]` for every index $s$ of `ids`.

    Shapes: $ids ∈ {0…V−1}^S$ (integers, any shape $S$), $T ∈ ℝ^{V×d}$,
    $Y ∈ ℝ^{S×d}$.

    Derivation: the lookup is a product with one-hot rows, $Y = onehot(ids) T$
    ($onehot(ids) ∈ {0,1}^{S×V}$), so $∂Y[s,k]/∂T[u,k'] = δ_{ids[s],u} δ_{kk'}$ and

        $∂L/∂T = onehot(ids)ᵀ G$, i.e. $∂L/∂T[u] = Σ_{s : ids[s] = u} G[s]$:

    a scatter-add of the cotangent rows $G ∈ ℝ^{S×d}$ into a zero table, where
    repeated ids accumulate and ids that do not occur get zero. `ids` are
    integers: no cotangent (`None`). The one-hot matrix is never formed.

    Out-of-range ids raise `ValueError` when `ids` is concrete; inside `jit`
    they cannot be checked (the gather then clamps them, as JAX indexing does).

    Residuals: `ids` and $T$'s number of rows $V$ (not $T$).

    Tangent: the lookup is linear in $T$, so `dY[s] = dT[ids[s]]` ($S×d$; `ids` has
    no tangent).
    """
    return table[ids]


def _embedding_save(ids, table, y):
    # a zero-size array carries V into the backward (residuals must be arrays)
    return ids, jnp.zeros((table.shape[0], 0), jnp.int8)


def _embedding_backward(residuals, g):
    ids, rows = residuals
    dtable = jnp.zeros((rows.shape[0], g.shape[-1]), g.dtype).at[ids].add(g)
    return None, dtable


def _embedding_validate(ids, table):
    fn = "embedding"
    n_rows = table.shape[0]
    bad = v.first_out_of_range(ids, n_rows)
    if bad is not None:
        value, i, lo, hi = bad
        raise ValueError(
            f"{fn}: ids must be in [0, {n_rows}) for a table of {n_rows} rows (shape "
            f"{tuple(table.shape)}), got {value} at index {i} (range given: {lo}..{hi})")


def _embedding_tangent(residuals, t):
    ids, _ = residuals
    _, dtable = t
    return dtable[ids]


embedding = primitive(
    embedding, _embedding_backward, save=_embedding_save,
    spec=v.shapes("embedding", ids="int …, token ids", table="V×d: one row per id"),
    validate=_embedding_validate,
    tangent=_embedding_tangent, examples=[
        Example((labels(6, classes=4), gaussian(4, 3))),        # repeats: 6 ids, 4 rows
        Example((labels(2, 5, classes=7), gaussian(7, 2))),
        Example((labels(classes=3), gaussian(3, 4))),           # a single id
    ],
)
