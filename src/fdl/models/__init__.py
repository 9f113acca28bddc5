"""Small reference models that are not layers.

* :mod:`fdl.models.rbm` — the restricted Boltzmann machine: energy, free energy,
  conditionals, Gibbs sampling, CD-k and persistent CD as pure functions with
  explicit keys, and exact likelihood and gradient by enumeration for small models.
"""

from fdl.models import rbm

__all__ = ["rbm"]
