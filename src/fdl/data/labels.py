"""Class labels checked on the host, before any training.

Contract
--------
``check_labels(y_train, y_test=None, *, num_classes=None) -> int``

Integer class labels index ``num_classes`` outputs. Under ``jit`` an out-of-range
label does not fail: a one-hot of ``-1`` or of ``12`` in a 10-class model is all
zeros, and the loss quietly trains on nothing (or the evaluation is NaN). So labels
are checked once, with numpy, where a bad one can still be named:

* every label must be an integer in ``[0, num_classes)``; the first offender is
  reported with its split, index and value;
* without ``num_classes`` the count is inferred as one more than the largest
  training label, and then every class in ``[0, num_classes)`` must occur in the
  training labels: a gap (labels ``0..9`` and one stray ``12``) is far more often a
  corrupt label than a 13-class data set, so it is an error naming the missing
  classes. Data sets whose training labels really skip a class pass ``num_classes``
  explicitly (``fdl train --num-classes``).

Every problem raises ``ValueError`` (``TypeError`` for non-integer labels) naming
the split, what was expected and what was found.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from fdl._validate import first_out_of_range


def _as_labels(y: Any, split: str) -> np.ndarray:
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"check_labels: y_{split} must hold integer class labels, got dtype "
                        f"{y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"check_labels: y_{split} must be a vector of labels (N,), got "
                         f"shape {y.shape}")
    return y


def _listing(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


def check_labels(y_train: Any, y_test: Any = None, *, num_classes: int | None = None) -> int:
    """Validate integer class labels and return the number of classes.

    Args:
      y_train: training labels ``(N_train,)``, any integer dtype.
      y_test: optional test labels ``(N_test,)``.
      num_classes: the number of classes, when known; ``None`` infers it from the
        training labels (one more than the largest) and then requires every class to
        occur in them.

    Returns:
      ``num_classes`` (given or inferred).

    Raises:
      ValueError: a label outside ``[0, num_classes)``, a class that never occurs in
        the inferred case, or a bad ``num_classes``; the message names the split,
        index and value, or the missing classes, and the fix.
      TypeError: labels that are not integers.
    """
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, numbers.Integral)
                                    or num_classes < 1):
        raise ValueError(f"check_labels: num_classes must be an int ≥ 1, got {num_classes!r}")
    splits = [("train", _as_labels(y_train, "train"))]
    if y_test is not None:
        splits.append(("test", _as_labels(y_test, "test")))
    train = splits[0][1]
    if not train.size:
        raise ValueError("check_labels: y_train is empty; training needs at least one label")
    for split, y in splits:  # negative labels are wrong whatever the count
        if y.size and y.min() < 0:
            i = int(np.flatnonzero(y < 0)[0])
            raise ValueError(f"check_labels: y_{split}[{i}] is {int(y[i])}; class labels "
                             "must be ≥ 0")
    inferred = num_classes is None
    n = int(train.max()) + 1 if inferred else int(num_classes)
    for split, y in splits:
        bad = first_out_of_range(y, n)
        if bad is not None:
            value, (i,), _, top = bad
            why = (f"the training labels go up to {n - 1}" if inferred
                   else f"num_classes is {n}")
            raise ValueError(f"check_labels: y_{split}[{i}] is {int(value)}, outside [0, {n}) "
                             f"({why}; the largest {split} label is {int(top)}); fix the "
                             f"label, or pass num_classes={int(top) + 1} (fdl train: "
                             f"--num-classes {int(top) + 1}) if the data set really has "
                             "that many classes")
    if inferred:
        missing = np.setdiff1d(np.arange(n), train)
        if missing.size:
            raise ValueError(
                f"check_labels: the largest training label is {n - 1}, which implies {n} "
                f"classes, but {missing.size} of them never occur in the training labels "
                f"(classes {_listing(missing)}); a stray label is the usual cause: fix it, "
                f"or pass num_classes={n} (fdl train: --num-classes {n}) if the data set "
                "really has classes without training examples")
    return n


__all__ = ["check_labels"]
