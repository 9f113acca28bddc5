"""fdl: deep learning from first principles in pure JAX functions.

Layers, losses and optimizers are pure functions; every primitive's gradient is
derived by hand beside it and verified against `jax.grad` and finite
differences by `fdl.check`.

Modules (data flows down this list; nothing imports anything above it):

* `fdl.primitive` — `primitive(forward, backward, …)`, the gradient modes, the registry
* `fdl.ops` — the primitives (linear, activations, softmax, …)
* `fdl.losses` — losses as primitives
* `fdl.check` — verify hand derivations against autodiff and finite differences
* `fdl.layers` — the `Layer(init, apply)` protocol, layers and combinators
* `fdl.optim` — optimizers as hand-written pure state updates
* `fdl.data` — the embedded digits, an MNIST-format reader, splits and batches
* `fdl.io` — safe, atomic checkpoints
* `fdl.train` — the jitted training loop
* `fdl.privacy` — per-example gradient norms from the manual rules, DP-SGD
* `fdl.random` — `key(seed)`, the key fdl makes from a seed (all draws are `jax.random`)
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
