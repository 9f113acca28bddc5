"""Export scikit-learn's copy of the UCI digits into fdl's embedded array file.

Run once, by hand, with a Python that has scikit-learn installed (it is *not* an
fdl dependency; use a throwaway virtual environment)::

    python -m venv /tmp/skvenv && /tmp/skvenv/bin/pip install scikit-learn
    /tmp/skvenv/bin/python tools/make_digits.py src/fdl/data/digits.npz

The output is a compressed ``.npz`` with two arrays and nothing pickled:

* ``images``: uint8, shape (1797, 8, 8), values 0..16 (on-pixel counts of 4×4 blocks);
* ``labels``: uint8, shape (1797,), values 0..9.

The script prints the SHA-256 of both arrays so the attribution file
(``src/fdl/data/DIGITS_LICENSE.txt``) can record what was exported.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
from sklearn.datasets import load_digits


def main(out_path: str) -> None:
    bunch = load_digits()
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target)
    # The source values are small integers stored as float64; check before narrowing.
    assert images.shape == (1797, 8, 8), images.shape
    assert labels.shape == (1797,), labels.shape
    assert np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() <= 16
    assert set(np.unique(labels).tolist()) == set(range(10))
    images_u8 = images.astype(np.uint8)
    labels_u8 = labels.astype(np.uint8)
    np.savez_compressed(out_path, images=images_u8, labels=labels_u8)
    for name, arr in (("images", images_u8), ("labels", labels_u8)):
        print(f"{name}: shape={arr.shape} dtype={arr.dtype} "
              f"sha256={hashlib.sha256(arr.tobytes()).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_digits.py OUT.npz")
    main(sys.argv[1])
