"""fdl.data: the embedded digits, an MNIST-format (IDX) reader, splits and batches.

Contract
--------
* :class:`Dataset` ``(x_train, y_train, x_test, y_test, num_classes, name)`` — numpy
  arrays; images NHWC float32 in [0, 1] (or raw uint8), labels int32.
* :func:`load` (``"digits"`` or an MNIST-format directory), :func:`load_digits`,
  :func:`load_mnist`, :func:`read_idx`.
* :func:`check_labels` — integer class labels validated on the host (range, and no
  class missing from the training labels when the count is inferred).
* :func:`train_test_split` (deterministic, stratified), :func:`fit_standardizer` /
  :func:`standardize` / :func:`standardize_dataset` (fitted on the training split only).
* :func:`shuffled_batches` — an epoch as ``(num_batches, batch_size, ...)`` arrays for
  ``lax.scan``, from an explicit (possibly traced) PRNG key; the remainder is dropped.

Loading and splitting run on the host with numpy; only batching uses JAX.
"""

from __future__ import annotations

from fdl.data.batching import shuffled_batches
from fdl.data.datasets import Dataset, load, load_digits, load_mnist, standardize_dataset
from fdl.data.idx import read_idx
from fdl.data.labels import check_labels
from fdl.data.split import Standardizer, fit_standardizer, standardize, train_test_split


__all__ = [
    "Dataset",
    "Standardizer",
    "check_labels",
    "fit_standardizer",
    "load",
    "load_digits",
    "load_mnist",
    "read_idx",
    "shuffled_batches",
    "standardize",
    "standardize_dataset",
    "train_test_split",
]
