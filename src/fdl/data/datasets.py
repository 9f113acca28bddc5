"""Data sets as one value: the embedded digits, MNIST-format directories, ``load``.

Contract
--------
Every loader returns a :class:`Dataset` ``(x_train, y_train, x_test, y_test,
num_classes, name)`` of numpy arrays, so training code treats all data sets alike:

* images are NHWC, ``(N, H, W, 1)`` — or ``(N, H·W)`` with ``flatten=True``;
* images are float32 in [0, 1] (digits divided by 16, MNIST by 255), or the stored
  uint8 values with ``raw=True`` (digits 0..16, MNIST 0..255);
* labels are int32 class indices in ``[0, num_classes)``, checked on the host when
  the ``Dataset`` is built (:func:`fdl.data.check_labels`).

``load_digits(*, test_fraction=0.2, seed=0, raw=False, flatten=False)``
    The 1,797 8×8 UCI digits embedded in the package (``digits.npz``; attribution in
    ``DIGITS_LICENSE.txt``). The source has no train/test split, so one is made with
    :func:`fdl.data.train_test_split` (stratified, deterministic in ``seed``).
``load_mnist(directory, *, raw=False, flatten=False, name=None, num_classes=None)``
    MNIST or Fashion-MNIST: the four standard IDX files (optionally gzipped) in
    ``directory``, with their official train/test split. Without ``num_classes`` the
    count is inferred from the training labels, every class of which must occur
    (a stray label 12 among the digits 0..9 is an error, not a 13-class set).
``load(name_or_path, *, raw=False, flatten=False, num_classes=None)``
    ``"digits"`` → :func:`load_digits`; a directory → :func:`load_mnist`.
``standardize_dataset(dataset, *, axis=0) -> (Dataset, Standardizer)``
    Both splits standardised with statistics fitted on the training split only.

Nothing is downloaded. Problems raise ``ValueError`` naming the path or argument.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os

import numpy as np

from fdl.data.idx import read_idx
from fdl.data.labels import check_labels
from fdl.data.split import (Standardizer, _check_finite, fit_standardizer, standardize,
                            train_test_split)

# Standard MNIST file stems; each may also end in ".gz". The second spelling (a dot
# before "idx") is how some mirrors rename them.
MNIST_FILES: dict[str, tuple[str, ...]] = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


@dataclasses.dataclass(frozen=True, eq=False)  # arrays have no single truth value
class Dataset:
    """A classification data set split into training and test parts.

    Fields:
      x_train: inputs ``(N_train, ...)``, e.g. NHWC images ``(N, 8, 8, 1)`` float32.
      y_train: int32 labels ``(N_train,)`` (or float one-hot / probability rows
        ``(N_train, num_classes)``; anything else is refused).
      x_test: inputs ``(N_test, ...)``, same trailing shape as ``x_train``.
      y_test: int32 labels ``(N_test,)``.
      num_classes: number of classes; labels lie in ``[0, num_classes)``.
      name: a short human-readable name (``"digits"``, ``"mnist"``, …).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str = "dataset"

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if np.shape(x)[:1] != np.shape(y)[:1]:
                raise ValueError(f"Dataset: x_{split} has {np.shape(x)[:1]} examples but "
                                 f"y_{split} has {np.shape(y)[:1]}; they must match")
        if np.shape(self.x_train)[1:] != np.shape(self.x_test)[1:]:
            raise ValueError(f"Dataset: x_train examples have shape "
                             f"{np.shape(self.x_train)[1:]} but x_test examples "
                             f"{np.shape(self.x_test)[1:]}; they must match")
        for split in ("train", "test"):
            y = np.asarray(getattr(self, f"y_{split}"))
            one_hot = np.issubdtype(y.dtype, np.floating) and y.ndim == 2 \
                and y.shape[1] == self.num_classes
            if not (np.issubdtype(y.dtype, np.integer) or one_hot):
                fix = (f"; whole numbers? y_{split}.astype(np.int32)"
                       if np.issubdtype(y.dtype, np.floating) and y.ndim == 1 else "")
                raise ValueError(f"Dataset: y_{split} holds {y.dtype} values of shape "
                                 f"{y.shape}; expected integer class labels (N,) or one-hot "
                                 f"(probability) rows (N, {self.num_classes}){fix}")
        labels = (np.asarray(self.y_train), np.asarray(self.y_test))
        if all(np.issubdtype(y.dtype, np.integer) and y.ndim == 1 for y in labels):
            try:
                check_labels(*labels, num_classes=self.num_classes)
            except ValueError as e:
                raise ValueError("Dataset: " + str(e).removeprefix("check_labels: ")) from None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, ``x_train.shape[1:]`` (what ``Layer.init`` wants)."""
        return tuple(np.shape(self.x_train)[1:])


def _images(images: np.ndarray, max_value: int, *, raw: bool,
            flatten: bool) -> np.ndarray:
    """uint8 ``(N, H, W)`` → NHWC (or flat), float32 in [0, 1] unless ``raw``."""
    x = images[..., None]
    if not raw:
        x = x.astype(np.float32) / np.float32(max_value)
    return x.reshape(len(x), -1) if flatten else x


def _labels(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.int32)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0, raw: bool = False,
                flatten: bool = False, num_classes: int | None = None) -> Dataset:
    """The embedded UCI digits: 1,797 8×8 images of 0..9, split deterministically.

    Args:
      test_fraction: share of examples held out for testing (stratified by class).
      seed: seed of the split; the same seed always gives the same split.
      raw: return the stored uint8 pixel counts 0..16 instead of float32 in [0, 1].
      flatten: images as ``(N, 64)`` instead of NHWC ``(N, 8, 8, 1)``.
      num_classes: build the labels for this many classes (≥ 10; default 10).

    Returns:
      ``Dataset`` named ``"digits"`` with ``num_classes=10`` (or as given).
    """
    resource = importlib.resources.files("fdl.data").joinpath("digits.npz")
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    x = _images(images, 16, raw=raw, flatten=flatten)
    x_train, y_train, x_test, y_test = train_test_split(
        x, _labels(labels), test_fraction=test_fraction, seed=seed, stratify=True)
    try:
        n = check_labels(y_train, y_test, num_classes=num_classes)
    except ValueError as e:
        raise ValueError("load_digits: " + str(e).removeprefix("check_labels: ")) from None
    return Dataset(x_train, y_train, x_test, y_test, num_classes=n, name="digits")


def _find_mnist_file(directory: str, role: str) -> str:
    """The path of one of the four MNIST files, raw preferred over gzipped."""
    for stem in MNIST_FILES[role]:
        for candidate in (stem, stem + ".gz"):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return path
    stem = MNIST_FILES[role][0]
    expected = ", ".join(names[0] + "[.gz]" for names in MNIST_FILES.values())
    raise ValueError(f"load_mnist: directory {directory!r} has no {stem} or {stem}.gz; "
                     f"an MNIST-format directory holds {expected}")


def _read_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    for path, arr in ((images_path, images), (labels_path, labels)):
        if arr.dtype != np.uint8:
            raise ValueError(f"load_mnist: {path!r} holds {arr.dtype} values; MNIST "
                             "files hold uint8 (dtype code 0x08)")
    if len(images) != len(labels):
        raise ValueError(f"load_mnist: {images_path!r} has {len(images)} images but "
                         f"{labels_path!r} has {len(labels)} labels; they must match")
    return images, labels


def load_mnist(directory: str | os.PathLike[str], *, raw: bool = False,
               flatten: bool = False, name: str | None = None,
               num_classes: int | None = None) -> Dataset:
    """MNIST (or Fashion-MNIST, same format) from a directory of IDX files.

    The directory must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or with
    ``.gz`` appended.

    Args:
      directory: the directory.
      raw: keep uint8 pixels 0..255 instead of float32 in [0, 1].
      flatten: images as ``(N, 784)`` instead of NHWC ``(N, 28, 28, 1)``.
      name: the ``Dataset.name``; defaults to the directory's base name.
      num_classes: the number of classes; by default one more than the largest
        training label, and then every class must occur among the training labels
        (see :func:`fdl.data.check_labels`).

    Returns:
      ``Dataset`` with the official split (60,000 / 10,000 for MNIST).

    Raises:
      ValueError: a missing or malformed file (naming it), or labels that do not fit
        ``num_classes`` (naming the split, index and value, or the missing classes).
    """
    directory = os.path.expanduser(os.fspath(directory))
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise ValueError(f"load_mnist: directory {directory!r} {what}")
    paths = {role: _find_mnist_file(directory, role) for role in MNIST_FILES}
    train_images, train_labels = _read_split(paths["train_images"], paths["train_labels"])
    test_images, test_labels = _read_split(paths["test_images"], paths["test_labels"])
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(f"load_mnist: training images are {train_images.shape[1:]} but "
                         f"test images are {test_images.shape[1:]} in {directory!r}")
    try:
        num_classes = check_labels(train_labels, test_labels, num_classes=num_classes)
    except ValueError as e:
        raise ValueError(f"load_mnist: {directory!r}: "
                         + str(e).removeprefix("check_labels: ")) from None
    if name is None:
        name = os.path.basename(os.path.normpath(directory)) or "mnist"
    return Dataset(
        _images(train_images, 255, raw=raw, flatten=flatten), _labels(train_labels),
        _images(test_images, 255, raw=raw, flatten=flatten), _labels(test_labels),
        num_classes=num_classes, name=name)


def load(name_or_path: str | os.PathLike[str], *, raw: bool = False,
         flatten: bool = False, num_classes: int | None = None) -> Dataset:
    """A data set by name or location, for the trainer and the CLI.

    Args:
      name_or_path: ``"digits"`` for the embedded digits (default split), or a
        directory holding MNIST-format IDX files (MNIST, Fashion-MNIST).
      raw: keep the stored uint8 pixel values (see :func:`load_digits`).
      flatten: flatten each image to a vector.
      num_classes: the number of classes (default: 10 for the digits; inferred from
        the training labels of a directory, see :func:`load_mnist`).

    Raises:
      ValueError: saying what is accepted and what was given.
    """
    accepted = ("'digits' or a directory holding MNIST-format IDX files "
                "(train-images-idx3-ubyte[.gz] and the other three)")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"load: expected {accepted}, got {name_or_path!r} of type "
                         f"{type(name_or_path).__name__}")
    if isinstance(name_or_path, str) and name_or_path == "digits":
        return load_digits(raw=raw, flatten=flatten, num_classes=num_classes)
    path = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isdir(path):
        return load_mnist(path, raw=raw, flatten=flatten, num_classes=num_classes)
    if os.path.exists(path):
        raise ValueError(f"load: expected {accepted}, got {path!r}, which is a file, "
                         "not a directory")
    if os.sep in path or (os.altsep and os.altsep in path) or path.startswith("."):
        raise ValueError(f"load: expected {accepted}, got {path!r}, which does not exist")
    raise ValueError(f"load: unknown data set {path!r}; expected {accepted} "
                     "(no such directory either)")


def standardize_dataset(dataset: Dataset, *, axis: int | tuple[int, ...] | None = 0,
                        ) -> tuple[Dataset, Standardizer]:
    """Standardise both splits with statistics fitted on ``dataset.x_train`` only.

    Returns the standardised ``Dataset`` and the fitted ``Standardizer`` (keep it to
    standardise new inputs the same way). ``axis`` as in :func:`fit_standardizer`.
    NaN or ±inf inputs in either split raise ``ValueError`` naming the first.
    """
    try:
        stats = fit_standardizer(dataset.x_train, axis=axis)
        _check_finite("fit_standardizer", "x_test", np.asarray(dataset.x_test))
    except ValueError as e:
        raise ValueError(f"standardize_dataset: {dataset.name}: "
                         + str(e).removeprefix("fit_standardizer: ")) from None
    standardized = dataclasses.replace(dataset, x_train=standardize(dataset.x_train, stats),
                                       x_test=standardize(dataset.x_test, stats))
    return standardized, stats
