"""IDX files, the format MNIST and Fashion-MNIST are distributed in.

Contract
--------
``read_idx(path, *, ndim=None) -> np.ndarray``

An IDX file is, all integers big-endian::

    magic   4 bytes   0x00 0x00 <dtype code> <ndim>
    dims    ndim × uint32
    data    prod(dims) × itemsize(dtype) bytes, C order

with dtype codes ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
``0x0D`` float32, ``0x0E`` float64. MNIST images are ``0x00000803`` (uint8, 3 dims:
N × rows × cols) and labels ``0x00000801`` (uint8, 1 dim: N).

The file may be gzip-compressed (detected from its first two bytes, ``1f 8b``; a raw
IDX file always starts with ``00``), so ``foo.gz`` and ``foo`` both work whatever
their names say. Everything wrong with a file raises ``ValueError`` naming the file
and what was wrong: a bad magic number, an unknown dtype code, an unexpected number of
dimensions, a header cut short, data shorter or longer than the dimensions promise,
a damaged gzip stream. The returned array is in native byte order and writable.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

# IDX dtype code -> numpy dtype of one element as stored (big-endian).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    """The file's contents, gunzipped when it starts with the gzip magic."""
    if not os.path.exists(path):
        raise ValueError(f"read_idx: file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"read_idx: {path!r} is a directory, expected an IDX file")
    with open(path, "rb") as f:
        content = f.read()
    if not content.startswith(_GZIP_MAGIC):
        return content
    try:
        return gzip.decompress(content)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"read_idx: {path!r} is a damaged gzip file ({e})") from e


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzipped) into a numpy array.

    Args:
      path: the file, e.g. ``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``.
      ndim: if given, the number of dimensions the file must declare (3 for MNIST
        images, 1 for labels); anything else is reported as a wrong magic number.

    Returns:
      An array of shape ``dims`` and the file's element type (uint8 for MNIST), in
      native byte order.

    Raises:
      ValueError: naming ``path`` and the problem (see the module docstring).
    """
    path = os.fspath(path)
    content = _read_bytes(path)
    if len(content) < 4:
        raise ValueError(f"read_idx: {path!r} is too short for an IDX header "
                         f"({len(content)} bytes, need at least 4)")
    magic = int.from_bytes(content[:4], "big")
    code, file_ndim = content[2], content[3]
    if content[:2] != b"\x00\x00" or code not in IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"read_idx: {path!r} has magic number 0x{magic:08X}; expected "
                         f"0x0000TTNN with dtype code TT one of {codes} (0x00000803 for "
                         f"MNIST images, 0x00000801 for labels)")
    if ndim is not None and file_ndim != ndim:
        raise ValueError(f"read_idx: {path!r} has magic number 0x{magic:08X} declaring "
                         f"{file_ndim} dimension(s); expected {ndim} "
                         f"(magic 0x0000{code:02X}{ndim:02X})")
    header_len = 4 + 4 * file_ndim
    if len(content) < header_len:
        raise ValueError(f"read_idx: {path!r} is truncated inside its header: "
                         f"{file_ndim} dimensions need {header_len} bytes, the file has "
                         f"{len(content)}")
    dims = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big")
                 for i in range(file_ndim))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(content) - header_len
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise ValueError(f"read_idx: {path!r} is {what}: dimensions {dims} of "
                         f"{dtype.newbyteorder('=').name} need {expected} data bytes, "
                         f"found {found}")
    data = np.frombuffer(content, dtype=dtype, offset=header_len).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)
