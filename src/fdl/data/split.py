"""Deterministic train/test splits and standardisation fitted on the training split.

Contract
--------
``train_test_split(x, y, *, test_fraction, seed, stratify=True)
    -> (x_train, y_train, x_test, y_test)``
    The same ``(x, y, test_fraction, seed)`` always gives the same split (numpy's
    PCG64 generator seeded with ``seed``). ``round(test_fraction * N)`` examples go to
    the test split. Stratified (the default) keeps each class's share the same in
    both splits, up to rounding; both splits come back shuffled.

``fit_standardizer(x_train, *, axis=0, eps=1e-6) -> Standardizer(mean, std)``
``standardize(x, stats) -> (x - mean) / std``
    Fit on the training split only and apply the same statistics to the test split,
    so nothing about the test data leaks into training. ``mean`` and ``std`` keep the
    reduced axes as size 1, so they broadcast against a batch without rank promotion.
    A feature whose training std is below ``eps`` (a border pixel that is always 0)
    gets std 1: it is centred, not blown up. NaN or ±inf training inputs are refused
    (one would make its whole feature NaN).

Everything here runs on the host with numpy and returns numpy arrays.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np


def _check_fraction(test_fraction: float) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) \
            or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError("train_test_split: test_fraction must be a number strictly "
                         f"between 0 and 1, got {test_fraction!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError("train_test_split: seed must be a non-negative int, "
                         f"got {seed!r}")


def _stratified_test_indices(y: np.ndarray, n_test: int,
                             rng: np.random.Generator) -> np.ndarray:
    """Pick ``n_test`` indices, each class contributing in proportion to its size.

    Class c with n_c examples gets ⌊n_c·n_test/N⌋ test examples; the few left over
    go to the classes with the largest remainders (largest-remainder rounding), so
    the total is exactly ``n_test``. Integer arithmetic, so no float ties.
    """
    classes, counts = np.unique(y, return_counts=True)
    n = len(y)
    quota, remainder = np.divmod(counts * n_test, n)
    extra = n_test - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:extra]] += 1
    picks = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, quota)]
    return np.concatenate(picks)


def train_test_split(x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int,
                     stratify: bool = True,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split examples into shuffled training and test sets, deterministically.

    Args:
      x: inputs, examples along axis 0 (shape ``(N, ...)``).
      y: targets, shape ``(N, ...)``; with ``stratify=True`` integer labels ``(N,)``.
      test_fraction: share of examples for the test split, in (0, 1).
      seed: non-negative int seeding numpy's generator.
      stratify: keep class proportions equal in both splits (needs 1-D integer ``y``).

    Returns:
      ``(x_train, y_train, x_test, y_test)`` as numpy arrays, in the field order of
      :class:`fdl.data.Dataset`.
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_fraction(test_fraction)
    _check_seed(seed)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError("train_test_split: x and y need the same number of examples "
                         f"along axis 0, got x.shape={x.shape} and y.shape={y.shape}")
    n = x.shape[0]
    n_test = int(round(float(test_fraction) * n))
    if not 1 <= n_test <= n - 1:
        raise ValueError(f"train_test_split: test_fraction={test_fraction} of {n} "
                         f"examples gives {n_test} test and {n - n_test} training "
                         "examples; both splits need at least one")
    if stratify and (y.ndim != 1 or not np.issubdtype(y.dtype, np.integer)):
        raise ValueError("train_test_split: stratify=True needs integer class labels "
                         f"y of shape (N,), got dtype {y.dtype} and shape {y.shape}; "
                         "pass stratify=False for other targets")
    rng = np.random.default_rng(seed)
    if stratify:
        test_idx = rng.permutation(_stratified_test_indices(y, n_test, rng))
        train_mask = np.ones(n, dtype=bool)
        train_mask[test_idx] = False
        train_idx = rng.permutation(np.flatnonzero(train_mask))
    else:
        perm = rng.permutation(n)
        test_idx, train_idx = perm[:n_test], perm[n_test:]
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


class Standardizer(NamedTuple):
    """Statistics fitted on a training split.

    Fields (both the input's float dtype, float32 for integer inputs; the reduced
    axes kept as size 1, e.g. ``(1, 8, 8, 1)`` for per-pixel statistics of NHWC images):
      mean: per-feature mean of the training inputs.
      std: per-feature standard deviation, with values below ``eps`` replaced by 1.
    """

    mean: np.ndarray
    std: np.ndarray


def _check_finite(function: str, name: str, x: np.ndarray) -> None:
    """Refuse NaN or ±inf inputs: one of them makes its whole feature's mean and std
    NaN, so every example would be NaN in that feature after standardising."""
    if not np.issubdtype(x.dtype, np.floating):
        return
    finite = np.isfinite(x)
    if not finite.all():
        index = np.unravel_index(int(np.argmin(finite)), x.shape)
        raise ValueError(f"{function}: {name}[{', '.join(map(str, index))}] is {x[index]} "
                         f"({x.size - int(finite.sum())} non-finite values in all); inputs "
                         "must be finite: drop or impute those examples first")


def fit_standardizer(x_train: np.ndarray, *, axis: int | tuple[int, ...] | None = 0,
                     eps: float = 1e-6) -> Standardizer:
    """Fit per-feature mean and standard deviation on the training inputs.

    Args:
      x_train: training inputs ``(N, ...)`` (never the test inputs).
      axis: axes to average over: ``0`` gives one statistic per feature (pixel),
        ``None`` a single scalar mean and std, ``(0, 1, 2)`` one per channel of NHWC.
      eps: standard deviations below this are replaced by 1.

    Returns:
      ``Standardizer(mean, std)``; apply it with :func:`standardize`.
    """
    x = np.asarray(x_train)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"fit_standardizer: x_train needs at least one example along "
                         f"axis 0, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"fit_standardizer: x_train must be numeric, got dtype {x.dtype}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < np.inf:
        raise ValueError(f"fit_standardizer: eps must be a finite number ≥ 0, got {eps!r}")
    axes = (axis,) if isinstance(axis, int) else (() if axis is None else tuple(axis))
    if any(isinstance(a, bool) or not isinstance(a, int) or not -x.ndim <= a < x.ndim
           for a in axes):
        raise ValueError(f"fit_standardizer: axis must be None, an int or a tuple of ints in "
                         f"[-{x.ndim}, {x.ndim}) for x_train of shape {x.shape}, got {axis!r}")
    _check_finite("fit_standardizer", "x_train", x)
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)
    mean = x.mean(axis=axis, dtype=np.float64, keepdims=True)
    std = x.std(axis=axis, dtype=np.float64, keepdims=True)
    std = np.where(std < eps, 1.0, std)
    return Standardizer(mean.astype(out_dtype), std.astype(out_dtype))


def standardize(x: np.ndarray, stats: Standardizer) -> np.ndarray:
    """Apply fitted statistics: ``(x - stats.mean) / stats.std``.

    ``x`` must have the rank of the data ``stats`` was fitted on, and every
    non-reduced axis must have the fitted size. Works on numpy and jax arrays.
    """
    shape, fitted = tuple(np.shape(x)), tuple(np.shape(stats.mean))
    if len(shape) != len(fitted) or any(f not in (1, s) for s, f in zip(shape, fitted)):
        raise ValueError(f"standardize: x has shape {shape}, which does not match the "
                         f"statistics' shape {fitted} (size-1 axes were averaged over); "
                         "fit and apply on data of the same layout")
    return (x - stats.mean) / stats.std
