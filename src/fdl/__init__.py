"""fdl: deep learning from first principles in pure JAX functions.

Layers, losses and optimizers are pure functions; every primitive's gradient is
derived by hand beside it and verified against `jax.grad` and finite
differences by `fdl.check`.

Modules, in layers: each imports only modules above it in this list, never one below
(docs/design.md has the full table; `tests/test_layering.py` checks it):

* `fdl.random` — `key(seed)`, the key fdl makes from a seed (all draws are `jax.random`)
* `fdl.modes` — the gradient modes, manual (hand-written rules) or autodiff
* `fdl.primitive` — the primitive contract: `primitive(forward, backward, …)`, the registry
* `fdl.hessian` — `hvp`, Hessian-vector products of a loss
* `fdl.ops` — the primitives (linear, activations, softmax, …)
* `fdl.losses` — losses as primitives
* `fdl.check` — verify hand derivations against autodiff and finite differences
* `fdl.layers` — the `Layer(init, apply)` protocol, layers and combinators
* `fdl.optim` — optimizers as chains of hand-written transforms
* `fdl.data` — the embedded data sets, an MNIST-format reader, splits and batches
* `fdl.io` — safe, atomic checkpoints
* `fdl.train` — the jitted training loop
* `fdl.privacy` — per-example gradient norms from the manual rules, DP-SGD
"""

from fdl import check, data, io, layers, losses, ops, optim, privacy, random, train
from fdl import primitive  # the module; build primitives with fdl.primitive.primitive(...)
from fdl.hessian import hvp
from fdl.modes import gradient_mode, get_gradient_mode
from fdl.primitive import Example, Primitive, registry

__version__ = "0.1.0"

__all__ = [
    "Example",
    "Primitive",
    "check",
    "data",
    "io",
    "layers",
    "optim",
    "privacy",
    "random",
    "train",
    "get_gradient_mode",
    "gradient_mode",
    "hvp",
    "losses",
    "ops",
    "primitive",
    "registry",
]
