"""Tests for fdl.data: embedded digits, IDX/MNIST reading, splits, standardisation, batches.

IDX files are written here byte by byte with ``struct`` (an independent writer), raw
and gzipped, including broken ones.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import os
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdl.data as data

# --------------------------------------------------------------------------- helpers

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray, *, code: int | None = None, magic: bytes | None = None,
              dims: tuple[int, ...] | None = None) -> bytes:
    """An IDX file's bytes, with optional deliberate damage."""
    code = IDX_CODES[arr.dtype.type] if code is None else code
    dims = arr.shape if dims is None else dims
    head = magic if magic is not None else bytes([0, 0, code, len(dims)])
    body = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    return head + struct.pack(f">{len(dims)}I", *dims) + body


def write(path, content: bytes, *, gz: bool = False) -> str:
    path = str(path)
    with open(path, "wb") as f:
        f.write(gzip.compress(content) if gz else content)
    return path


def make_mnist_dir(root, *, n_train=6, n_test=4, side=4, gz=(False, True, False, True),
                   spelling="-", seed=0):
    """A tiny MNIST-format directory; returns (dir, arrays)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        # every class up to the largest training label occurs in training
        "train-labels": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels": rng.integers(0, min(n_train, 10), n_test, dtype=np.uint8),
    }
    root.mkdir(exist_ok=True)
    for (stem, arr), zipped in zip(arrays.items(), gz):
        sep = "-" if spelling == "-" else "."
        name = f"{stem}{sep}idx{arr.ndim}-ubyte" + (".gz" if zipped else "")
        write(root / name, idx_bytes(arr), gz=zipped)
    return str(root), arrays


# ------------------------------------------------------------------------ embedded digits

def test_digits_shapes_dtypes_and_ranges():
    ds = data.load_digits()
    assert isinstance(ds, data.Dataset)
    assert (ds.name, ds.num_classes) == ("digits", 10)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == round(0.2 * 1797)
    assert ds.x_train.shape[1:] == ds.input_shape == (8, 8, 1)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    assert set(np.unique(ds.y_test)) == set(range(10))


def test_digits_raw_and_flatten():
    raw = data.load_digits(raw=True, flatten=True)
    assert raw.x_train.dtype == np.uint8 and raw.x_train.shape[1:] == (64,)
    assert raw.x_train.max() == 16
    scaled = data.load_digits(flatten=True)
    np.testing.assert_array_equal(scaled.x_train, raw.x_train.astype(np.float32) / 16)


def test_digits_split_is_deterministic_and_stratified():
    a, b = data.load_digits(seed=3), data.load_digits(seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = data.load_digits(seed=4)
    assert not np.array_equal(a.y_test, c.y_test)
    counts = np.bincount(np.concatenate([a.y_train, a.y_test]), minlength=10)
    np.testing.assert_allclose(np.bincount(a.y_test, minlength=10), counts * 0.2, atol=1)


def test_embedded_file_matches_its_attribution():
    files = importlib.resources.files("fdl.data")
    with files.joinpath("digits.npz").open("rb") as f, np.load(f, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.uint8
    text = files.joinpath("DIGITS_LICENSE.txt").read_text(encoding="utf-8")
    for needle in ("Alpaydin", "Kaynak", "CC BY 4.0", "UCI", "tools/make_digits.py"):
        assert needle in text
    assert hashlib.sha256(images.tobytes()).hexdigest() in text
    assert hashlib.sha256(labels.tobytes()).hexdigest() in text


def test_dataset_rejects_mismatched_splits():
    with pytest.raises(ValueError, match=r"x_train has \(3,\) examples but y_train has \(2,\)"):
        data.Dataset(np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)), np.zeros(1), 2)
    with pytest.raises(ValueError, match="x_train examples have shape"):
        data.Dataset(np.zeros((3, 2)), np.zeros(3), np.zeros((1, 5)), np.zeros(1), 2)


@pytest.mark.float32
def test_dataset_rejects_labels_outside_num_classes():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"Dataset: y_test\[0\] is 4, outside \[0, 3\)"):
        data.Dataset(x, np.array([0, 1, 2]), x[:1], np.array([4]), 3)
    with pytest.raises(ValueError, match=r"Dataset: y_train\[1\] is -1; class labels must be"):
        data.Dataset(x, np.array([0, -1, 2]), x[:1], np.array([0]), 3)


# ---------------------------------------------------------------------------- labels

@pytest.mark.float32
@pytest.mark.parametrize("y_train, y_test, num_classes, error, message", [
    ([0, 1, -1], None, None, ValueError, r"y_train\[2\] is -1; class labels must be ≥ 0"),
    ([0, 1, 2], [0, -3], 3, ValueError, r"y_test\[1\] is -3"),
    ([0, 1, 2], [0, 3], 3, ValueError,
     r"y_test\[1\] is 3, outside \[0, 3\) \(num_classes is 3; the largest test label is 3\)"),
    ([0, 1, 5], None, 3, ValueError, r"y_train\[2\] is 5, outside \[0, 3\).*num_classes=6"),
    ([0, 1, 2], [3], None, ValueError,
     r"y_test\[0\] is 3, outside \[0, 3\) \(the training labels go up to 2"),
    # the case: digits 0..9 and one stray 12 is not a 13-class set
    (list(range(10)) + [12], None, None, ValueError,
     r"largest training label is 12, which implies 13 classes, but 2 of them never occur "
     r"in the training labels \(classes 10, 11\).*--num-classes 13"),
    ([0.0, 1.0], None, None, TypeError, r"y_train must hold integer class labels, got dtype "
                                        r"float64"),
    ([[0, 1]], None, None, ValueError, r"y_train must be a vector of labels \(N,\), got "
                                       r"shape \(1, 2\)"),
    ([], None, None, ValueError, r"y_train is empty"),
    ([0, 1], None, 0, ValueError, r"num_classes must be an int ≥ 1, got 0"),
    ([0, 1], None, True, ValueError, r"num_classes must be an int ≥ 1, got True"),
])
def test_check_labels_rejects(y_train, y_test, num_classes, error, message):
    y_test = None if y_test is None else np.array(y_test, np.int64)
    y_train = np.array(y_train, np.float64 if error is TypeError else np.int64)
    with pytest.raises(error, match=message):
        data.check_labels(y_train, y_test, num_classes=num_classes)


@pytest.mark.float32
def test_check_labels_accepts_and_counts():
    assert data.check_labels(np.array([2, 0, 1, 1], np.uint8)) == 3
    assert data.check_labels(np.array([0, 1]), np.array([1, 0])) == 2
    # an explicit count may exceed the classes present (the fix the errors name)
    assert data.check_labels(np.array(list(range(10)) + [12]), num_classes=13) == 13
    assert data.check_labels(jnp.array([0, 1, 3]), num_classes=4) == 4


# ----------------------------------------------------------------------------- read_idx

@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_dtype(tmp_path, dtype, gz):
    arr = (np.arange(24) - 7).reshape(2, 3, 4).astype(dtype)
    path = write(tmp_path / "a.idx", idx_bytes(arr), gz=gz)
    out = data.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 1  # writable


def test_read_idx_mnist_magic_numbers(tmp_path):
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    content = idx_bytes(images)
    assert content[:4] == bytes.fromhex("00000803")
    out = data.read_idx(write(tmp_path / "img", content), ndim=3)
    np.testing.assert_array_equal(out, images)
    labels_path = write(tmp_path / "lab", idx_bytes(np.array([1, 2], np.uint8)))
    assert data.read_idx(labels_path, ndim=1).tolist() == [1, 2]


def _errors():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    good = idx_bytes(arr)
    return {
        "bad leading bytes": (idx_bytes(arr, magic=b"\x01\x00\x08\x02"),
                              r"magic number 0x01000802; expected 0x0000TTNN"),
        "unknown dtype code": (idx_bytes(arr, code=0x07), r"magic number 0x00000702"),
        "truncated data": (good[:-1], r"truncated: dimensions \(3, 4\) of uint8 need 12 "
                                      r"data bytes, found 11"),
        "trailing bytes": (good + b"\x00", r"longer than its header says.*found 13"),
        "wrong dims": (idx_bytes(arr, dims=(4, 4)), r"dimensions \(4, 4\).*need 16.*found 12"),
        "truncated header": (good[:9], r"truncated inside its header"),
        "too short": (b"\x00\x00", r"too short for an IDX header \(2 bytes"),
        "empty": (b"", r"too short for an IDX header \(0 bytes"),
    }


@pytest.mark.parametrize("case", list(_errors()))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_reports_broken_files(tmp_path, case, gz):
    content, message = _errors()[case]
    path = write(tmp_path / "broken-file", content, gz=gz)
    with pytest.raises(ValueError, match=message) as info:
        data.read_idx(path)
    assert path in str(info.value)


def test_read_idx_wrong_ndim_missing_file_directory_and_bad_gzip(tmp_path):
    path = write(tmp_path / "labels", idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match=r"declaring 1 dimension\(s\); expected 3 "
                                         r"\(magic 0x00000803\)"):
        data.read_idx(path, ndim=3)
    with pytest.raises(ValueError, match=r"file '.*nope' does not exist"):
        data.read_idx(tmp_path / "nope")
    with pytest.raises(ValueError, match="is a directory"):
        data.read_idx(tmp_path)
    zipped = gzip.compress(idx_bytes(np.zeros((5, 5), np.uint8)))
    cut = write(tmp_path / "cut.gz", zipped[: len(zipped) // 2])
    with pytest.raises(ValueError, match=r"cut.gz' is a damaged gzip file"):
        data.read_idx(cut)


# ---------------------------------------------------------------------------- load_mnist

def test_load_mnist_reads_mixed_raw_and_gzipped_files(tmp_path):
    directory, arrays = make_mnist_dir(tmp_path / "fashion")
    ds = data.load_mnist(directory)
    assert ds.name == "fashion"
    assert ds.x_train.shape == (6, 4, 4, 1) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train[..., 0] * 255, arrays["train-images"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels"])
    assert ds.y_test.dtype == np.int32
    top = max(arrays["train-labels"].max(), arrays["t10k-labels"].max())
    assert ds.num_classes == top + 1
    raw = data.load_mnist(directory, raw=True, flatten=True, name="mine")
    assert raw.name == "mine" and raw.x_test.shape == (4, 16) and raw.x_test.dtype == np.uint8
    np.testing.assert_array_equal(raw.x_test.reshape(4, 4, 4), arrays["t10k-images"])


@pytest.mark.float32
def test_load_mnist_rejects_a_stray_label_and_takes_num_classes(tmp_path):
    """An IDX label of 12 in a 10-class set is an error, not a 13-class model."""
    directory, arrays = make_mnist_dir(tmp_path / "m", n_train=12, gz=(False,) * 4)
    labels = arrays["train-labels"].copy()
    labels[labels == 0] = [0, 12][: (labels == 0).sum()]  # one 0 becomes 12
    write(os.path.join(directory, "train-labels-idx1-ubyte"), idx_bytes(labels))
    with pytest.raises(ValueError, match=r"load_mnist: '.*m': the largest training label is "
                                         r"12, which implies 13 classes, but 2 of them never "
                                         r"occur.*\(classes 10, 11\)"):
        data.load_mnist(directory)
    with pytest.raises(ValueError, match=r"y_train\[\d+\] is 12, outside \[0, 10\)"):
        data.load(directory, num_classes=10)
    assert data.load_mnist(directory, num_classes=13).num_classes == 13


@pytest.mark.float32
def test_load_digits_num_classes():
    assert data.load("digits", num_classes=12).num_classes == 12
    with pytest.raises(ValueError, match=r"load_digits: y_train\[\d+\] is \d, outside \[0, 5\)"):
        data.load_digits(num_classes=5)


def test_load_mnist_accepts_dotted_file_names(tmp_path):
    directory, arrays = make_mnist_dir(tmp_path / "m", spelling=".")
    np.testing.assert_array_equal(data.load_mnist(directory).y_train, arrays["train-labels"])


def test_load_mnist_errors(tmp_path):
    with pytest.raises(ValueError, match=r"directory '.*missing' does not exist"):
        data.load_mnist(tmp_path / "missing")
    afile = write(tmp_path / "afile", b"")
    with pytest.raises(ValueError, match="is not a directory"):
        data.load_mnist(afile)
    directory, _ = make_mnist_dir(tmp_path / "m")
    os.remove(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"))
    with pytest.raises(ValueError, match=r"has no t10k-labels-idx1-ubyte or "
                                         r"t10k-labels-idx1-ubyte.gz.*train-images-idx3"):
        data.load_mnist(directory)


def test_load_mnist_count_mismatch_and_wrong_files(tmp_path):
    directory, _ = make_mnist_dir(tmp_path / "m")
    labels = os.path.join(directory, "train-labels-idx1-ubyte.gz")
    write(labels, idx_bytes(np.zeros(5, np.uint8)), gz=True)
    with pytest.raises(ValueError, match=r"has 6 images but '.*train-labels-idx1-ubyte.gz' "
                                         r"has 5 labels"):
        data.load_mnist(directory)
    write(labels, idx_bytes(np.zeros((6, 2, 2), np.uint8)), gz=True)
    with pytest.raises(ValueError, match=r"train-labels.*expected 1 \(magic 0x00000801\)"):
        data.load_mnist(directory)
    write(labels, idx_bytes(np.zeros(6, np.int32)), gz=True)
    with pytest.raises(ValueError, match=r"holds int32 values; MNIST files hold uint8"):
        data.load_mnist(directory)


# --------------------------------------------------------------------------------- load

def test_load_by_name_and_by_directory(tmp_path):
    assert data.load("digits").name == "digits"
    directory, arrays = make_mnist_dir(tmp_path / "mnist")
    ds = data.load(tmp_path / "mnist", flatten=True)
    assert ds.x_train.shape == (6, 16)


@pytest.mark.parametrize("given, message", [
    ("mnist", r"unknown data set 'mnist'; expected 'digits' or a directory"),
    ("./no/such/dir", r"got './no/such/dir', which does not exist"),
    (3, r"expected 'digits' or a directory .* got 3 of type int"),
])
def test_load_rejects_other_things(given, message):
    with pytest.raises(ValueError, match=message):
        data.load(given)


def test_load_rejects_a_file(tmp_path):
    with pytest.raises(ValueError, match="which is a file, not a directory"):
        data.load(write(tmp_path / "f.npz", b"x"))


# ---------------------------------------------------------------------- train_test_split

def test_split_partitions_examples_deterministically():
    x = np.arange(100)
    y = np.repeat(np.arange(4), 25)
    xtr, ytr, xte, yte = data.train_test_split(x, y, test_fraction=0.3, seed=1)
    assert len(xte) == 30 and len(xtr) == 70
    assert sorted(np.concatenate([xtr, xte]).tolist()) == list(range(100))
    np.testing.assert_array_equal(ytr, y[xtr])  # pairs kept together
    np.testing.assert_array_equal(yte, y[xte])
    again = data.train_test_split(x, y, test_fraction=0.3, seed=1)
    np.testing.assert_array_equal(again[2], xte)
    other = data.train_test_split(x, y, test_fraction=0.3, seed=2)
    assert not np.array_equal(other[2], xte)


def test_split_stratified_counts_are_exact():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    _, _, _, yte = data.train_test_split(np.zeros((100, 2)), y, test_fraction=0.25, seed=0)
    assert len(yte) == 25
    # quotas 12.5, 7.5, 5 -> largest remainders give 13, 7, 5 (ties in class order)
    assert np.bincount(yte).tolist() == [13, 7, 5]


def test_split_unstratified_accepts_any_targets():
    y = np.linspace(0, 1, 10)
    xtr, ytr, xte, yte = data.train_test_split(np.arange(10), y, test_fraction=0.2,
                                               seed=0, stratify=False)
    assert len(xte) == 2
    np.testing.assert_array_equal(yte, y[xte])


@pytest.mark.parametrize("kwargs, message", [
    (dict(test_fraction=0.0, seed=0), r"test_fraction must be .* between 0 and 1, got 0.0"),
    (dict(test_fraction=1, seed=0), r"test_fraction .* got 1"),
    (dict(test_fraction=True, seed=0), r"test_fraction .* got True"),
    (dict(test_fraction=0.01, seed=0), r"gives 0 test and 10 training"),
    (dict(test_fraction=0.5, seed=-1), r"seed must be a non-negative int, got -1"),
    (dict(test_fraction=0.5, seed=0.5), r"seed must be a non-negative int, got 0.5"),
])
def test_split_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.train_test_split(np.zeros(10), np.zeros(10, np.int32), **kwargs)


def test_split_validates_shapes_and_labels():
    with pytest.raises(ValueError, match=r"x.shape=\(10,\) and y.shape=\(9,\)"):
        data.train_test_split(np.zeros(10), np.zeros(9), test_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="stratify=True needs integer class labels.*float64"):
        data.train_test_split(np.zeros(10), np.zeros(10), test_fraction=0.5, seed=0)


# ------------------------------------------------------------------------ standardisation

def test_standardizer_is_fitted_on_training_data_only():
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, (200, 3, 2)).astype(np.float32)
    x_train[:, 0, 0] = 5.0  # a constant feature
    x_test = rng.normal(10.0, 2.0, (50, 3, 2)).astype(np.float32)
    stats = data.fit_standardizer(x_train)
    assert stats.mean.shape == stats.std.shape == (1, 3, 2)
    assert stats.mean.dtype == np.float32
    z = data.standardize(x_train, stats)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0)[1:], 1.0, rtol=1e-5)
    assert stats.std[0, 0, 0] == 1.0 and np.all(z[:, 0, 0] == 0.0)
    assert data.standardize(x_test, stats).mean() > 2.0  # test statistics did not leak


def test_standardizer_scalar_and_integer_inputs():
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    stats = data.fit_standardizer(x, axis=None)
    assert stats.mean.shape == (1, 1) and stats.mean.dtype == np.float32
    np.testing.assert_allclose(stats.mean, 5.5)
    assert data.standardize(x, stats).dtype == np.float32
    z = data.standardize(jnp.asarray(x, jnp.float32), stats)  # jax input, strict ranks
    np.testing.assert_allclose(np.asarray(z).mean(), 0.0, atol=1e-6)


def test_standardize_rejects_other_layouts():
    stats = data.fit_standardizer(np.ones((4, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"x has shape \(4, 64\).*shape \(1, 8, 8, 1\)"):
        data.standardize(np.ones((4, 64)), stats)


def test_standardize_dataset():
    ds, stats = data.standardize_dataset(data.load_digits())
    np.testing.assert_allclose(ds.x_train.mean(0), 0.0, atol=1e-5)
    assert ds.x_train.dtype == np.float32 and stats.mean.shape == (1, 8, 8, 1)
    assert ds.name == "digits" and ds.num_classes == 10


# -------------------------------------------------------------------------------- batches

def test_batches_shapes_remainder_and_pairing():
    x = np.arange(23 * 2).reshape(23, 2)
    y = np.arange(23)
    bx, by = data.shuffled_batches(jax.random.key(0), (x, y), 5)
    assert bx.shape == (4, 5, 2) and by.shape == (4, 5)
    seen = np.asarray(by).ravel()
    assert len(set(seen.tolist())) == 20  # no example twice; 3 dropped
    np.testing.assert_array_equal(np.asarray(bx)[..., 0], 2 * np.asarray(by))


def test_batches_depend_only_on_the_key():
    data_ = {"x": np.arange(40.0).reshape(20, 2), "y": np.arange(20)}
    a = data.shuffled_batches(jax.random.PRNGKey(1), data_, 4)  # raw uint32 key
    b = data.shuffled_batches(jax.random.PRNGKey(1), data_, 4)
    c = data.shuffled_batches(jax.random.PRNGKey(2), data_, 4)
    np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.array_equal(a["y"], c["y"])
    assert sorted(np.asarray(a["y"]).ravel().tolist()) == list(range(20))


def test_batches_under_jit_with_traced_key_feed_scan():
    x = jnp.arange(30.0).reshape(10, 3)
    y = jnp.arange(10)

    @jax.jit
    def epoch_sum(key):
        bx, by = data.shuffled_batches(key, (x, y), 3)

        def step(total, batch):
            xb, yb = batch
            return total + xb.sum() + yb.sum(), None

        return jax.lax.scan(step, jnp.zeros(()), (bx, by))[0], by

    key = jax.random.key(7)
    total, by = epoch_sum(key)
    eager = data.shuffled_batches(key, (x, y), 3)[1]
    np.testing.assert_array_equal(by, eager)
    used = np.asarray(by).ravel()
    np.testing.assert_allclose(total, np.asarray(x)[used].sum() + used.sum())
    jitted = jax.jit(data.shuffled_batches, static_argnames="batch_size")
    np.testing.assert_array_equal(jitted(key, (x, y), batch_size=3)[1], eager)


@pytest.mark.parametrize("batch_size, message", [
    (0, r"batch_size must be between 1 and the number of examples \(10\), got batch_size=0"),
    (11, r"batch_size must be between 1 and the number of examples \(10\), got batch_size=11"),
    (2.5, r"batch_size must be an int, got 2.5 of type float \(data has 10 examples\)"),
    (True, r"batch_size must be an int, got True"),
    ("4", r"batch_size must be an int, got '4'"),
])
def test_batches_validate_batch_size(batch_size, message):
    with pytest.raises(ValueError, match=message):
        data.shuffled_batches(jax.random.key(0), (np.zeros((10, 2)), np.zeros(10)),
                              batch_size)


def test_batches_validate_data():
    with pytest.raises(ValueError, match=re.escape("got {'[0]': 10, '[1]': 9}")):
        data.shuffled_batches(jax.random.key(0), (np.zeros(10), np.zeros(9)), 2)
    with pytest.raises(ValueError, match=r"leaf '\[1\]' is a scalar"):
        data.shuffled_batches(jax.random.key(0), (np.zeros(10), np.float32(1)), 2)
    with pytest.raises(ValueError, match="data has no arrays"):
        data.shuffled_batches(jax.random.key(0), (), 2)


def test_public_api():
    assert set(data.__all__) == {
        "Dataset", "Standardizer", "check_labels", "fit_standardizer", "load", "load_digits",
        "load_mnist", "read_idx", "shuffled_batches", "standardize",
        "standardize_dataset", "train_test_split"}
    for name in data.__all__:
        assert getattr(data, name).__doc__


@pytest.mark.parametrize("split", ["x_train", "x_test"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_standardize_dataset_refuses_non_finite_inputs(split, bad):
    ds = data.load_digits(flatten=True)
    x = getattr(ds, split).copy()
    x[5, 10] = bad
    with pytest.raises(ValueError, match=rf"^standardize_dataset: digits: {split}\[5, 10\] is "
                                         rf"{bad} \(1 non-finite values in all\); inputs must "
                                         "be finite: drop or impute those examples first$"):
        data.standardize_dataset(dataclasses.replace(ds, **{split: x}))
    if split == "x_train":
        with pytest.raises(ValueError, match=rf"^fit_standardizer: x_train\[5, 10\] is {bad}"):
            data.fit_standardizer(x)


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": -1.0}, r"^fit_standardizer: eps must be a finite number ≥ 0, got -1\.0$"),
    ({"eps": float("nan")}, r"^fit_standardizer: eps must be a finite number ≥ 0, got nan$"),
    ({"axis": 5}, r"^fit_standardizer: axis must be None, an int or a tuple of ints in \[-2, 2\) "
                  r"for x_train of shape \(20, 3\), got 5$"),
    ({"axis": (0, 2)}, r"got \(0, 2\)$"),
])
def test_fit_standardizer_names_a_bad_eps_or_axis(kwargs, message):
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=message):
        data.fit_standardizer(x, **kwargs)
    assert data.fit_standardizer(x, axis=(0, -1)).mean.shape == (1, 1)


@pytest.mark.parametrize("labels, message", [
    (np.arange(4, dtype=np.float32) % 2, r"^Dataset: y_train holds float32 values of shape \(4,\); "
                                         r"expected integer class labels \(N,\) or one-hot "
                                         r"\(probability\) rows \(N, 2\); whole numbers\? "
                                         r"y_train\.astype\(np\.int32\)$"),
    (np.array(["a", "b", "a", "b"]), r"^Dataset: y_train holds <U1 values of shape \(4,\); "
                                     r"expected integer class labels \(N,\) or one-hot"),
    (np.zeros((4, 3), np.float32), r"one-hot \(probability\) rows \(N, 2\)$"),
])
def test_dataset_refuses_labels_that_are_not_classes(labels, message):
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=message):
        data.Dataset(x, labels, x[:2], np.array([0, 1]), 2)
    one_hot = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    assert data.Dataset(x, one_hot, x[:2], one_hot[:2], 2).y_train.shape == (4, 2)
