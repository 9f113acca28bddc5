"""fdl: deep learning from first principles in pure JAX functions."""

__version__ = "0.1.0"
