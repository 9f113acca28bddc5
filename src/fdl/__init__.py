"""fdl: deep learning from first principles in pure JAX functions.

Layers, losses and optimizers are pure functions; every primitive's gradient is
derived by hand beside it and verified against ``jax.grad`` and finite
differences by :mod:`fdl.check`.

Modules (data flows down this list; nothing imports anything above it):

* :mod:`fdl.primitive` — ``primitive(forward, backward, …)``, the gradient modes, the registry
* :mod:`fdl.ops` — the primitives (linear, activations, softmax, …)
* :mod:`fdl.losses` — losses as primitives
* :mod:`fdl.check` — verify hand derivations against autodiff and finite differences
"""

from fdl import check, losses, ops
from fdl.primitive import Example, Primitive, gradient_mode, get_gradient_mode, primitive, registry

__version__ = "0.1.0"

__all__ = [
    "Example",
    "Primitive",
    "check",
    "get_gradient_mode",
    "gradient_mode",
    "losses",
    "ops",
    "primitive",
    "registry",
]
