"""Test configuration: float64 on, strict rank promotion (equinox's habit).

`jax_numpy_rank_promotion="raise"` turns silent broadcasting mistakes in
hand-written gradients into errors. Tests that want float32 say so explicitly.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
