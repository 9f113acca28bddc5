"""Checkpoints: any pytree of arrays to one safe file, atomically and bit-exactly.

Contract
--------
``save(path, tree, *, metadata=None, compress=False) -> None``
    Writes ``tree`` — nested dicts / lists / tuples / NamedTuples / ``None`` whose
    leaves are arrays (numpy or JAX, any numeric dtype including bfloat16 and the
    other ml_dtypes), Python ``bool``/``int``/``float``/``complex`` (a step count) and
    PRNG keys (raw ``uint32`` keys are arrays; typed ``jax.random.key`` keys are
    stored as key data plus implementation name) — to the single file ``path``
    (used verbatim; ``.npz`` recommended). ``metadata`` is any JSON-serialisable value.

    The write is atomic: a temporary file in the same directory is written, flushed,
    ``fsync``-ed and renamed over ``path`` with ``os.replace``. If anything fails the
    temporary file is removed and a previous checkpoint at ``path`` is untouched. A
    process killed outright (``SIGKILL``, power loss) cannot remove its temporary
    file; its name carries the writer's process id, and the next successful save to
    ``path`` removes those whose process no longer exists.

``load(path, like=None) -> tree``
    Without ``like`` the saved structure is rebuilt: dicts, lists, tuples and ``None``
    as saved; array leaves as numpy arrays (exact dtypes, whatever ``jax_enable_x64``
    says); Python scalars as Python scalars; typed keys as JAX key arrays; a NamedTuple
    as a namedtuple class with the saved name and fields (not your class: pass
    ``like`` for that).

    With ``like`` (a template pytree, e.g. freshly initialised params and optimizer
    state, or ``jax.eval_shape`` of them) the checkpoint must have the same leaf paths,
    shapes and dtypes; the result is built into the template's structure, so
    NamedTuple states come back as their own types. Leaves come back as the
    template's leaves are: numpy arrays for numpy leaves, JAX arrays on the template
    leaf's sharding for ``jax.Array`` / ``jax.ShapeDtypeStruct`` leaves, Python scalars
    for Python scalar leaves (which accept any saved scalar of the same kind).

``load_metadata(path) -> Any``
    The ``metadata`` given to ``save`` (``None`` if none), without reading the arrays.

Every problem with a file — missing, not a checkpoint, corrupt, truncated, written by
a newer format — raises ``ValueError`` naming ``path``; a template mismatch raises
``ValueError`` naming the first mismatching leaf path with expected and found
shape/dtype. Unsupported leaves raise ``TypeError`` naming the leaf path.

File format (version 1)
-----------------------
A zip archive laid out like numpy's ``.npz`` (``np.load(path, allow_pickle=False)``
opens it), every member written with ``numpy.lib.format`` and no pickle anywhere:

* ``__fdl_header__.npy``: uint8 array holding UTF-8 JSON::

      {"format": "fdl-checkpoint", "version": 1, "metadata": ...,
       "structure": NODE,
       "leaves": [{"path": "['params']['w']", "member": "leaf_00000",
                   "kind": "array" | "key" | "bool" | "int" | "float" | "complex",
                   "dtype": "bfloat16", "shape": [784, 128],
                   "impl": "threefry2x32"  (keys only)}, ...]}

  ``NODE`` is ``{"type": "leaf"}``, ``{"type": "none"}``,
  ``{"type": "dict", "keys": [["str", "w"], ["int", 3]], "children": [NODE, ...]}``
  (keys in the dict's own order; its leaves are stored in sorted-key order),
  ``{"type": "list" | "tuple", "children": [...]}``,
  ``{"type": "namedtuple", "name": ..., "fields": [...], "children": [...]}``, or
  ``{"type": "opaque", "repr": ...}`` for other pytree nodes (loadable only with
  ``like``). Leaves are in ``jax.tree_util`` flattening order; ``path`` is
  ``jax.tree_util.keystr`` of the leaf's key path.
* ``leaf_NNNNN.npy``: one per leaf. dtypes numpy cannot describe in a ``.npy``
  header (bfloat16, float8, int4, …) are stored as a same-width unsigned-integer
  view of the bytes; typed keys as their ``uint32`` key data; Python scalars as 0-d
  ``bool``/``int64``/``float64``/``complex128`` arrays.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import json
import keyword
import os
import stat
import tempfile
import zipfile
import zlib
from typing import Any

import jax
import numpy as np

PyTree = Any

FORMAT_NAME = "fdl-checkpoint"
FORMAT_VERSION = 1
_HEADER = "__fdl_header__"
_PY_SCALARS: dict[type, tuple[str, np.dtype]] = {
    bool: ("bool", np.dtype(np.bool_)),
    int: ("int", np.dtype(np.int64)),
    float: ("float", np.dtype(np.float64)),
    complex: ("complex", np.dtype(np.complex128)),
}
# For Python-scalar template leaves: the numpy dtype kinds a saved value may have.
_SCALAR_KINDS = {bool: "b", int: "iu", float: "f", complex: "c"}


# --------------------------------------------------------------------------- dtypes

def _is_numpy_native(dtype: np.dtype) -> bool:
    """A dtype a ``.npy`` header round-trips: numpy's own bool/int/float/complex."""
    return dtype.kind in "biufc" and dtype.type.__module__ == "numpy"


def _is_ml_dtype(dtype: np.dtype) -> bool:
    """bfloat16, float8_*, int4, … (ml_dtypes): numpy stores them as opaque voids."""
    return dtype.type.__module__ == "ml_dtypes" and dtype.itemsize in (1, 2, 4, 8)


def _storage_dtype(dtype: np.dtype) -> np.dtype:
    """What a leaf of ``dtype`` is written as in its ``.npy`` member."""
    return dtype if _is_numpy_native(dtype) else np.dtype(f"<u{dtype.itemsize}")


def _resolve_dtype(name: Any, path: str) -> np.dtype:
    """A saved dtype name back to a dtype, refusing anything not storable."""
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError) as e:
        raise ValueError(f"load: {path!r} names unknown dtype {name!r} ({e})") from e
    if dtype.name != name or not (_is_numpy_native(dtype) or _is_ml_dtype(dtype)):
        raise ValueError(f"load: {path!r} names dtype {name!r}, which is not a numeric "
                         "dtype a checkpoint can hold")
    return dtype


def _is_typed_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


# -------------------------------------------------------------------- structure spec

def _dict_key(key: Any) -> list[Any] | None:
    if type(key) is str:
        return ["str", key]
    if type(key) is int:
        return ["int", key]
    return None


def _structure(node: Any) -> dict[str, Any]:
    """JSON description of ``node``'s containers (see the module docstring)."""
    if node is None:
        return {"type": "none"}
    if type(node) is dict:  # keys in insertion order; leaves follow sorted(keys)
        encoded = [_dict_key(k) for k in node]
        if any(k is None for k in encoded):
            return {"type": "opaque", "repr": "dict with non-str/int keys"}
        return {"type": "dict", "keys": encoded,
                "children": [_structure(child) for child in node.values()]}
    if type(node) in (list, tuple):
        return {"type": type(node).__name__, "children": [_structure(c) for c in node]}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return {"type": "namedtuple", "name": type(node).__name__,
                "fields": list(node._fields), "children": [_structure(c) for c in node]}
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(node)):
        return {"type": "leaf"}
    return {"type": "opaque", "repr": type(node).__qualname__}


@functools.lru_cache(maxsize=None)
def _namedtuple_class(name: str, fields: tuple[str, ...]) -> type:
    """One class per (name, fields), so repeated loads give the same type."""
    return collections.namedtuple(name, fields)


def _rebuild(spec: Any, leaves: list[Any], path: str) -> Any:
    """Containers from ``spec``, consuming ``leaves`` (a reversed list) in order."""
    kind = spec["type"]
    if kind == "leaf":
        return leaves.pop()
    if kind == "none":
        return None
    if kind == "opaque":
        raise ValueError(f"load: checkpoint {path!r} holds a pytree node of type "
                         f"{spec['repr']}, which only load(path, like=template) can "
                         "rebuild; pass a template of the saved structure")
    if kind == "dict":
        keys = [int(v) if t == "int" else str(v) for t, v in spec["keys"]]
        if len(keys) != len(spec["children"]):
            raise ValueError(f"load: checkpoint {path!r} has a malformed dict node "
                             f"({len(keys)} keys, {len(spec['children'])} children)")
        # Leaves were flattened in sorted-key order (jax.tree_util's); the dict is
        # rebuilt in the order it was saved in.
        rebuilt = {keys[i]: _rebuild(spec["children"][i], leaves, path)
                   for i in sorted(range(len(keys)), key=keys.__getitem__)}
        return {k: rebuilt[k] for k in keys}
    children = [_rebuild(c, leaves, path) for c in spec["children"]]
    if kind == "list":
        return children
    if kind == "tuple":
        return tuple(children)
    if kind == "namedtuple":
        name, fields = spec["name"], tuple(spec["fields"])
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"load: checkpoint {path!r} has invalid namedtuple name {name!r}")
        return _namedtuple_class(name, fields)(*children)
    raise ValueError(f"load: checkpoint {path!r} has unknown node type {kind!r}")


# ---------------------------------------------------------------------------- save

def _show(leaf_path: str) -> str:
    return leaf_path or "<root>"


def _encode_leaf(leaf_path: str, leaf: Any) -> tuple[dict[str, Any], np.ndarray]:
    """One leaf → (header entry, array as written)."""
    if _is_typed_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        entry = {"kind": "key", "dtype": str(leaf.dtype), "shape": list(leaf.shape),
                 "impl": str(jax.random.key_impl(leaf))}
        return entry, data
    if type(leaf) in _PY_SCALARS:
        kind, dtype = _PY_SCALARS[type(leaf)]
        if kind == "int" and not -2**63 <= leaf < 2**63:
            raise TypeError(f"save: leaf {_show(leaf_path)} is the Python int {leaf}, "
                            "which does not fit in int64")
        return {"kind": kind, "dtype": dtype.name, "shape": []}, np.asarray(leaf, dtype)
    if not isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
        raise TypeError(f"save: leaf {_show(leaf_path)} is a {type(leaf).__name__}; "
                        "checkpoint leaves must be arrays, Python numbers or PRNG keys "
                        "(put other values in metadata=)")
    arr = np.asarray(leaf)
    if not (_is_numpy_native(arr.dtype) or _is_ml_dtype(arr.dtype)):
        raise TypeError(f"save: leaf {_show(leaf_path)} has dtype {arr.dtype}; "
                        "checkpoints hold bool, integer, floating and complex arrays")
    arr = np.require(arr, dtype=arr.dtype.newbyteorder("="), requirements="C")
    entry = {"kind": "array", "dtype": arr.dtype.name, "shape": list(arr.shape)}
    return entry, arr.view(_storage_dtype(arr.dtype))


def _encode(tree: PyTree, metadata: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """The header (as a uint8 array) and the leaf arrays, before touching disk."""
    try:
        path_leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: tree cannot be flattened as a pytree ({e})") from e
    entries, arrays = [], []
    for i, (key_path, leaf) in enumerate(path_leaves):
        leaf_path = jax.tree_util.keystr(key_path)
        entry, arr = _encode_leaf(leaf_path, leaf)
        entries.append({"path": leaf_path, "member": f"leaf_{i:05d}", **entry})
        arrays.append(arr)
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
              "structure": _structure(tree), "leaves": entries}
    try:
        header["metadata"] = json.loads(json.dumps(metadata))
        text = json.dumps(header)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save: metadata must be JSON-serialisable (dicts, lists, str, "
                        f"numbers, bool, None), got {metadata!r} ({e})") from e
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8), arrays


def _write_member(zf: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    """One ``name.npy`` member, exactly as ``np.savez`` writes it."""
    with zf.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, arr, allow_pickle=False)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(path: str | os.PathLike[str], tree: PyTree, *, metadata: Any = None,
         compress: bool = False) -> None:
    """Write ``tree`` (and ``metadata``) to the checkpoint file ``path``, atomically.

    Args:
      path: destination file, used verbatim; its directory must exist. An existing
        file is replaced only once the new one is completely written.
      tree: pytree of arrays, Python numbers and PRNG keys (see the module docstring).
      metadata: JSON-serialisable value stored alongside (step, config, …).
      compress: deflate the members (smaller, slower); off by default.

    Raises:
      TypeError: a leaf or ``metadata`` that cannot be stored, naming the leaf path.
      ValueError: the directory of ``path`` does not exist, or ``path`` is a directory.
    """
    path = os.fspath(path)
    header, arrays = _encode(tree, metadata)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"save: cannot write {path!r}: directory {directory!r} "
                         "does not exist")
    if os.path.isdir(path):
        raise ValueError(f"save: path {path!r} is a directory; give a file name such "
                         "as 'checkpoint.npz'")
    mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.isfile(path) else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            with zipfile.ZipFile(f, "w", compression=method, allowZip64=True) as zf:
                _write_member(zf, _HEADER, header)
                for i, arr in enumerate(arrays):
                    _write_member(zf, f"leaf_{i:05d}", arr)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    _remove_orphaned_temps(path)


def _temp_prefix(path: str) -> str:
    """Temporary files for ``path`` are ``.<name>.<pid>.<random>.tmp`` beside it."""
    return f".{os.path.basename(path)}."


def _remove_orphaned_temps(path: str) -> None:
    """Delete temporary files of saves to ``path`` whose writing process is gone (it
    was killed before it could clean up); files of live processes are left alone."""
    directory, prefix = os.path.dirname(os.path.abspath(path)), _temp_prefix(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else, or cannot be asked
        return True
    return True


# ---------------------------------------------------------------------------- load

def _read_member(zf: zipfile.ZipFile, name: str, path: str) -> np.ndarray:
    """One ``.npy`` member, CRC-checked, no pickle."""
    try:
        raw = zf.read(name + ".npy")
        return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
    except KeyError as e:
        raise ValueError(f"load: checkpoint {path!r} is missing member {name!r}") from e
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as e:
        raise ValueError(f"load: checkpoint {path!r} is corrupt: member {name!r} "
                         f"cannot be read ({e})") from e


def _read_header(zf: zipfile.ZipFile, path: str) -> dict[str, Any]:
    """The JSON header, with its format name and version checked."""
    if _HEADER + ".npy" not in zf.namelist():
        raise ValueError(f"load: {path!r} is not an fdl checkpoint (no {_HEADER} "
                         "member; it may be a plain .npz)")
    raw = _read_member(zf, _HEADER, path)
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"load: checkpoint {path!r} has a corrupt header ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"load: {path!r} is not an fdl checkpoint (header format is "
                         f"not {FORMAT_NAME!r})")
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise ValueError(f"load: checkpoint {path!r} has format version {version!r}; "
                         f"this fdl reads version {FORMAT_VERSION} (was it written by a "
                         "newer fdl?)")
    return header


@contextlib.contextmanager
def _open(path: str):
    """The open archive; every low-level failure becomes a ValueError naming path."""
    if not os.path.exists(path):
        raise ValueError(f"load: no checkpoint at {path!r} (file does not exist)")
    if not os.path.isfile(path):
        raise ValueError(f"load: {path!r} is not a file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"load: {path!r} is not a readable fdl checkpoint; the file "
                         f"is corrupt or truncated ({e})") from e
    with zf:
        yield zf


def _decode_leaf(entry: dict[str, Any], stored: np.ndarray, path: str) -> Any:
    """A stored array back to the saved leaf, checking it against its header entry."""
    shape, kind = tuple(entry["shape"]), entry["kind"]
    where = f"checkpoint {path!r} leaf {_show(entry['path'])}"
    if kind == "key":
        if stored.dtype != np.uint32 or stored.shape[:len(shape)] != shape:
            raise ValueError(f"load: {where}: key data has shape {stored.shape} "
                             f"{stored.dtype}, header says key shape {shape}")
        try:
            return jax.random.wrap_key_data(stored, impl=entry["impl"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"load: {where}: cannot rebuild a {entry['impl']!r} "
                             f"key ({e})") from e
    dtype = _resolve_dtype(entry["dtype"], path)
    if stored.dtype != _storage_dtype(dtype) or stored.shape != shape:
        raise ValueError(f"load: {where}: stored array is {stored.shape} {stored.dtype}, "
                         f"header says {shape} {dtype.name}")
    arr = stored.view(dtype)
    if kind == "array":
        return arr
    py_type = {"bool": bool, "int": int, "float": float, "complex": complex}.get(kind)
    if py_type is None or shape != ():
        raise ValueError(f"load: {where}: unknown leaf kind {kind!r}")
    return py_type(arr.item())


def _read_all(path: str) -> tuple[dict[str, Any], list[Any]]:
    """Header and decoded leaves of the checkpoint at ``path``."""
    with _open(path) as zf:
        header = _read_header(zf, path)
        try:
            entries = header["leaves"]
            return header, [_decode_leaf(e, _read_member(zf, e["member"], path), path)
                            for e in entries]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"load: checkpoint {path!r} has a malformed header "
                             f"({type(e).__name__}: {e})") from e


def _describe(leaf: Any) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) of a saved or template leaf, for comparison and messages."""
    if type(leaf) in _PY_SCALARS:
        return (), f"Python {type(leaf).__name__}"
    dtype = leaf.dtype
    name = str(dtype) if _is_typed_key(leaf) else np.dtype(dtype).name
    return tuple(leaf.shape), name


def _matches(saved: Any, template: Any) -> bool:
    if type(template) in _PY_SCALARS:
        dtype = np.asarray(saved).dtype if not _is_typed_key(saved) else None
        return (dtype is not None and np.shape(saved) == ()
                and dtype.kind in _SCALAR_KINDS[type(template)])
    return _describe(saved) == _describe(template)


def _like_template(saved: Any, template: Any) -> Any:
    """``saved`` as the same kind of object as ``template`` (after _matches)."""
    if type(template) in _PY_SCALARS:
        return type(template)(np.asarray(saved).item())
    if isinstance(template, (jax.Array, jax.ShapeDtypeStruct)):
        sharding = getattr(template, "sharding", None)
        return jax.device_put(saved, sharding) if sharding is not None \
            else jax.device_put(saved)
    if isinstance(template, np.generic):
        return saved[()]
    return saved


def _fit_template(path: str, entries: list[dict[str, Any]], values: list[Any],
                  like: PyTree) -> PyTree:
    """Check the saved leaves against ``like`` and rebuild in its structure."""
    template_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    saved_paths = [e["path"] for e in entries]
    template_paths = [jax.tree_util.keystr(p) for p, _ in template_leaves]
    if saved_paths != template_paths:
        i = next((i for i, (a, b) in enumerate(zip(saved_paths, template_paths))
                  if a != b), min(len(saved_paths), len(template_paths)))
        found = _show(saved_paths[i]) if i < len(saved_paths) else "(no more leaves)"
        expected = _show(template_paths[i]) if i < len(template_paths) \
            else "(no more leaves)"
        raise ValueError(f"load: checkpoint {path!r} does not match the template's "
                         f"structure: leaf #{i} is {found} in the checkpoint but "
                         f"{expected} in the template ({len(saved_paths)} vs "
                         f"{len(template_paths)} leaves)")
    out = []
    for leaf_path, saved, (_, template) in zip(saved_paths, values, template_leaves):
        if not _matches(saved, template):
            (s_shape, s_dtype), (t_shape, t_dtype) = _describe(saved), _describe(template)
            raise ValueError(f"load: checkpoint {path!r} leaf {_show(leaf_path)} has "
                             f"shape {s_shape} {s_dtype}, but the template expects shape "
                             f"{t_shape} {t_dtype} (a checkpoint from a different model "
                             "or configuration?)")
        out.append(_like_template(saved, template))
    return jax.tree_util.tree_unflatten(treedef, out)


def load(path: str | os.PathLike[str], like: PyTree = None) -> PyTree:
    """Read the checkpoint at ``path``, optionally checked against a template.

    Args:
      path: a file written by :func:`save`.
      like: optional template pytree with the expected structure, shapes and dtypes
        (arrays, ``jax.ShapeDtypeStruct``, typed keys or Python scalars as leaves).

    Returns:
      The saved pytree; in ``like``'s structure and leaf types when given (see the
      module docstring).

    Raises:
      ValueError: missing/corrupt/truncated/foreign file or newer format (naming
        ``path``); a template mismatch (naming the first mismatching leaf path with
        expected and found shape and dtype).
    """
    path = os.fspath(path)
    header, values = _read_all(path)
    if like is not None:
        return _fit_template(path, header["leaves"], values, like)
    remaining = values[::-1]
    try:
        tree = _rebuild(header["structure"], remaining, path)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"load: checkpoint {path!r} has a malformed structure "
                         f"({type(e).__name__}: {e})") from e
    if remaining:
        raise ValueError(f"load: checkpoint {path!r} has a malformed structure "
                         f"({len(remaining)} leaves not placed in it)")
    return tree


def load_metadata(path: str | os.PathLike[str]) -> Any:
    """The ``metadata`` saved with the checkpoint at ``path`` (arrays are not read)."""
    path = os.fspath(path)
    with _open(path) as zf:
        return _read_header(zf, path).get("metadata")


__all__ = ["FORMAT_VERSION", "load", "load_metadata", "save"]
