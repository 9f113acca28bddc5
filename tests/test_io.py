"""Tests for fdl.io checkpoints: exact round trips, templates, atomicity, damaged files."""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fdl.io as fio


class AdamState(NamedTuple):
    count: jax.Array  # () int32
    mu: dict          # like params
    nu: dict          # like params


def params(d_in=4, d_out=3):
    return {"dense": {"w": jnp.arange(d_in * d_out, dtype=jnp.float32).reshape(d_in, d_out),
                      "b": jnp.zeros(d_out, jnp.float32)}}


def train_state(d_in=4):
    p = params(d_in)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, p)
    return {"params": p, "opt": AdamState(jnp.int32(5), zeros, zeros), "step": 12,
            "key": jax.random.key(3), "layer_state": {}}


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def special_values(dtype) -> np.ndarray:
    """A small array with the awkward values the dtype can hold."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.array([[True, False], [False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, 0, 1, info.max], dtype=dtype)
    if dtype.kind == "c":
        return np.array([1 + 2j, np.nan, -0.0, np.inf * 1j], dtype=dtype)
    finfo = ml_dtypes.finfo(dtype) if dtype.type.__module__ == "ml_dtypes" else np.finfo(dtype)
    values = [0.0, -0.0, 1.5, float(finfo.max), float(finfo.smallest_subnormal), np.nan]
    if dtype != ml_dtypes.float8_e4m3fn:  # e4m3fn has no infinities
        values.append(-np.inf)
    return np.array(values, dtype=np.float64).astype(dtype).reshape(1, -1)


DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
          np.int8, np.int32, np.int64, np.uint8, np.uint32, np.bool_, np.complex64]


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_leaves_round_trip_bitwise(tmp_path, dtype):
    arr = special_values(dtype)
    tree = {"a": arr, "scalar": arr.reshape(-1)[1:2].reshape(())}
    fio.save(tmp_path / "ck.npz", tree)
    out = fio.load(tmp_path / "ck.npz")
    assert isinstance(out["a"], np.ndarray)
    assert same_bits(out["a"], arr) and same_bits(out["scalar"], tree["scalar"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16, jnp.int32,
                                   jnp.uint32], ids=lambda d: np.dtype(d).name)
def test_jax_leaves_round_trip_with_and_without_template(tmp_path, dtype):
    x = jax.random.normal(jax.random.key(0), (3, 5)).astype(dtype)
    fio.save(tmp_path / "ck.npz", {"x": x})
    assert same_bits(fio.load(tmp_path / "ck.npz")["x"], x)
    back = fio.load(tmp_path / "ck.npz", like={"x": x})["x"]
    assert isinstance(back, jax.Array) and same_bits(back, x)


def test_nested_containers_round_trip(tmp_path):
    tree = {"list": [np.ones(2), (np.zeros(1), None), []], "empty": {}, "tuple": (),
            "ints": {2: np.int32(1), 1: np.arange(3)}, "none": None,
            "nested": {"a": {"b": {"c": np.float64(2.5)}}}}
    fio.save(tmp_path / "ck.npz", tree)
    out = fio.load(tmp_path / "ck.npz")
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)
    assert type(out["list"]) is list and type(out["list"][1]) is tuple
    assert list(out["ints"]) == [2, 1]  # insertion order kept
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(tree)):
        assert same_bits(a, b)


def test_python_scalars_keep_their_types(tmp_path):
    tree = {"step": 2**40 + 1, "lr": 0.1, "done": True, "z": 1 - 2j}
    fio.save(tmp_path / "ck.npz", tree)
    out = fio.load(tmp_path / "ck.npz")
    assert out == tree and list(out) == list(tree)  # also in the same key order
    assert [type(v) for v in out.values()] == [type(v) for v in tree.values()]


def test_namedtuple_state_without_template_keeps_fields(tmp_path):
    state = train_state()
    fio.save(tmp_path / "ck.npz", state)
    out = fio.load(tmp_path / "ck.npz")
    opt = out["opt"]
    assert type(opt).__name__ == "AdamState" and opt._fields == ("count", "mu", "nu")
    assert same_bits(opt.count, state["opt"].count)
    # the same stand-in class each time, so two loads can be combined with tree_map
    assert type(fio.load(tmp_path / "ck.npz")["opt"]) is type(opt)


def test_template_restores_types_structure_and_jax_arrays(tmp_path):
    state = train_state()
    fio.save(tmp_path / "ck.npz", state)
    out = fio.load(tmp_path / "ck.npz", like=train_state())
    assert type(out["opt"]) is AdamState
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(state)
    assert isinstance(out["params"]["dense"]["w"], jax.Array)
    assert out["step"] == 12 and type(out["step"]) is int
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(state)):
        if isinstance(a, int):
            assert a == b
            continue
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert same_bits(a, b)


def test_abstract_template_from_eval_shape(tmp_path):
    fio.save(tmp_path / "ck.npz", train_state())
    like = jax.eval_shape(train_state)
    like["step"] = 0  # eval_shape turns the Python int into an abstract leaf
    out = fio.load(tmp_path / "ck.npz", like=like)
    assert isinstance(out["params"]["dense"]["w"], jax.Array)
    assert type(out["opt"]) is AdamState


@pytest.mark.parametrize("make_key", [
    lambda: jax.random.PRNGKey(42),                     # raw uint32
    lambda: jax.random.key(42),                         # typed threefry
    lambda: jax.random.key(42, impl="rbg"),             # typed rbg
    lambda: jax.random.split(jax.random.key(1), 3),     # batch of typed keys
], ids=["raw", "typed", "rbg", "batch"])
def test_prng_keys_round_trip_and_draw_the_same_numbers(tmp_path, make_key):
    key = make_key()
    fio.save(tmp_path / "ck.npz", {"key": key})
    for out in (fio.load(tmp_path / "ck.npz")["key"],
                fio.load(tmp_path / "ck.npz", like={"key": make_key()})["key"]):
        assert out.dtype == key.dtype and out.shape == key.shape
        draw = jax.vmap(jax.random.uniform) if key.ndim == 1 and out.shape == (3,) \
            else jax.random.uniform
        assert same_bits(draw(jnp.asarray(out)), draw(key))


def test_template_mismatch_on_key_impl(tmp_path):
    fio.save(tmp_path / "ck.npz", {"key": jax.random.key(0)})
    with pytest.raises(ValueError, match=r"leaf \['key'\] has shape \(\) key<fry>, but the "
                                         r"template expects shape \(\) key<rbg>"):
        fio.load(tmp_path / "ck.npz", like={"key": jax.random.key(0, impl="rbg")})


def test_metadata_round_trip_and_file_is_a_plain_npz(tmp_path):
    meta = {"epoch": 3, "config": {"lr": 1e-3, "layers": [64, 10]}, "note": "ünïcode"}
    fio.save(tmp_path / "ck.npz", params(), metadata=meta)
    assert fio.load_metadata(tmp_path / "ck.npz") == meta
    fio.save(tmp_path / "plain.npz", params())
    assert fio.load_metadata(tmp_path / "plain.npz") is None
    with np.load(tmp_path / "ck.npz", allow_pickle=False) as z:
        header = json.loads(z["__fdl_header__"].tobytes())
        assert header["version"] == fio.FORMAT_VERSION == 1
        assert [leaf["path"] for leaf in header["leaves"]] == \
            ["['dense']['b']", "['dense']['w']"]
        assert same_bits(z[header["leaves"][1]["member"]], params()["dense"]["w"])


def test_compressed_checkpoint_round_trips(tmp_path):
    tree = {"w": np.zeros((100, 100), np.float32), "b": special_values(ml_dtypes.bfloat16)}
    fio.save(tmp_path / "c.npz", tree, compress=True)
    fio.save(tmp_path / "u.npz", tree)
    assert os.path.getsize(tmp_path / "c.npz") < os.path.getsize(tmp_path / "u.npz") / 10
    out = fio.load(tmp_path / "c.npz")
    assert same_bits(out["w"], tree["w"]) and same_bits(out["b"], tree["b"])


# ---------------------------------------------------------------------- what cannot be saved

@pytest.mark.parametrize("tree, message", [
    ({"name": "mlp"}, r"leaf \['name'\] is a str; .* metadata="),
    ({"o": np.array([object()])}, r"leaf \['o'\] has dtype object"),
    ({"u": np.array(["a"])}, r"leaf \['u'\] has dtype <U1"),
    ({"big": 2**70}, r"leaf \['big'\] is the Python int .* does not fit in int64"),
    ({1: 1, "a": 2}, r"tree cannot be flattened as a pytree"),
])
def test_unsupported_leaves_raise_type_error_naming_the_path(tmp_path, tree, message):
    with pytest.raises(TypeError, match=message):
        fio.save(tmp_path / "ck.npz", tree)
    assert os.listdir(tmp_path) == []


def test_unserialisable_metadata(tmp_path):
    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        fio.save(tmp_path / "ck.npz", params(), metadata={"arr": np.ones(2)})


def test_save_into_missing_directory_or_onto_a_directory(tmp_path):
    with pytest.raises(ValueError, match=r"directory '.*nowhere' does not exist"):
        fio.save(tmp_path / "nowhere" / "ck.npz", params())
    with pytest.raises(ValueError, match=r"is a directory; give a file name"):
        fio.save(tmp_path, params())
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ atomicity

def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    fio.save(path, train_state(), metadata={"step": 1})
    before = path.read_bytes()
    real_write = fio._write_member
    calls = []

    def failing_write(zf, name, arr):
        calls.append(name)
        if len(calls) == 3:  # header and one leaf written, then the disk "fails"
            raise OSError("simulated disk failure")
        real_write(zf, name, arr)

    monkeypatch.setattr(fio, "_write_member", failing_write)
    with pytest.raises(OSError, match="simulated disk failure"):
        fio.save(path, train_state(d_in=8), metadata={"step": 2})
    assert len(calls) == 3
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert path.read_bytes() == before
    assert fio.load_metadata(path) == {"step": 1}
    monkeypatch.setattr(fio, "_write_member", real_write)
    fio.save(path, train_state(d_in=8), metadata={"step": 2})
    assert fio.load(path, like=train_state(d_in=8))["params"]["dense"]["w"].shape == (8, 3)


def test_interrupted_save_cleans_up(tmp_path, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(fio.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fio.save(tmp_path / "ck.npz", params())
    assert os.listdir(tmp_path) == []


@pytest.mark.float32
def test_killed_writer_temp_file_is_removed_by_the_next_save(tmp_path):
    """A writer killed outright leaves its temporary file; the next save to the same
    path removes it (its process is gone) but not a live writer's, nor other files."""
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    path = tmp_path / "ck.npz"
    orphan = tmp_path / f".ck.npz.{dead}.abc123.tmp"
    live = tmp_path / f".ck.npz.{os.getpid()}.def456.tmp"
    other = tmp_path / f".other.npz.{dead}.xyz.tmp"
    for f in (orphan, live, other):
        f.write_bytes(b"partial")
    fio.save(path, params())
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.npz", live.name, other.name])


@pytest.mark.float32
def test_temp_file_names_carry_the_writer_pid(tmp_path, monkeypatch):
    seen = []
    real = fio.os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real(src, dst)

    monkeypatch.setattr(fio.os, "replace", spy)
    fio.save(tmp_path / "ck.npz", params())
    assert len(seen) == 1 and seen[0].startswith(f".ck.npz.{os.getpid()}.")
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_overwrite_keeps_file_mode(tmp_path):
    path = tmp_path / "ck.npz"
    fio.save(path, params())
    assert (os.stat(path).st_mode & 0o777) == 0o644
    os.chmod(path, 0o600)
    fio.save(path, params())
    assert (os.stat(path).st_mode & 0o777) == 0o600


# ----------------------------------------------------------------------- damaged files

def good_bytes(tmp_path) -> bytes:
    fio.save(tmp_path / "good.npz", train_state())
    return (tmp_path / "good.npz").read_bytes()


@pytest.mark.parametrize("cut", [0, 10, 100, 0.5, -22, -1])
def test_truncated_checkpoint(tmp_path, cut):
    content = good_bytes(tmp_path)
    n = int(cut * len(content)) if isinstance(cut, float) else cut
    path = tmp_path / "cut.npz"
    path.write_bytes(content[:n])
    with pytest.raises(ValueError, match=r"load: '.*cut.npz' is not a readable fdl "
                                         r"checkpoint; the file is corrupt or truncated"):
        fio.load(path)


def test_garbage_and_flipped_bytes(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="garbage.npz' is not a readable fdl checkpoint"):
        fio.load(path)
    content = bytearray(good_bytes(tmp_path))
    w = np.asarray(train_state()["params"]["dense"]["w"]).tobytes()
    at = bytes(content).index(w)  # flip a bit inside a stored leaf
    content[at + 5] ^= 0x01
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"garbage.npz' is corrupt: member 'leaf_\d+' "
                                         r"cannot be read \(Bad CRC-32"):
        fio.load(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ValueError, match=r"no checkpoint at '.*absent.npz' "
                                         r"\(file does not exist\)"):
        fio.load(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="is not a file"):
        fio.load(tmp_path)
    with pytest.raises(ValueError, match="no checkpoint at"):
        fio.load_metadata(tmp_path / "absent.npz")


def test_plain_npz_is_not_a_checkpoint(tmp_path):
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(ValueError, match=r"plain.npz' is not an fdl checkpoint \(no "
                                         r"__fdl_header__ member"):
        fio.load(tmp_path / "plain.npz")


def write_archive(path, header, members=()):
    """A hand-made archive with the given header dict (bypassing fio.save)."""
    with zipfile.ZipFile(path, "w") as zf:
        text = np.frombuffer(json.dumps(header).encode(), np.uint8)
        for name, arr in [("__fdl_header__", text), *members]:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zf.writestr(name + ".npy", buf.getvalue())


def test_newer_format_version_is_refused(tmp_path):
    write_archive(tmp_path / "new.npz", {"format": "fdl-checkpoint", "version": 2,
                                         "structure": {"type": "none"}, "leaves": []})
    with pytest.raises(ValueError, match=r"new.npz' has format version 2; this fdl reads "
                                         r"version 1"):
        fio.load(tmp_path / "new.npz")


@pytest.mark.parametrize("leaf, members, message", [
    ({"path": "['w']", "member": "leaf_00000", "kind": "array", "dtype": "float32",
      "shape": [3]}, [("leaf_00000", np.ones(2, np.float32))],
     r"leaf \['w'\]: stored array is \(2,\) float32, header says \(3,\) float32"),
    ({"path": "['w']", "member": "leaf_00000", "kind": "array", "dtype": "object",
      "shape": [1]}, [("leaf_00000", np.ones(1))], r"names dtype 'object', which is not"),
    ({"path": "['w']", "member": "leaf_00009", "kind": "array", "dtype": "float64",
      "shape": [1]}, [], r"is missing member 'leaf_00009'"),
    ({"path": "['w']"}, [], r"has a malformed header \(KeyError"),
    ({"path": "['w']", "member": "leaf_00000", "kind": "key", "dtype": "key<x>",
      "shape": [], "impl": "nope"}, [("leaf_00000", np.zeros(2, np.uint32))],
     r"leaf \['w'\]: cannot rebuild a 'nope' key"),
])
def test_inconsistent_header_is_reported(tmp_path, leaf, members, message):
    header = {"format": "fdl-checkpoint", "version": 1, "leaves": [leaf],
              "structure": {"type": "dict", "keys": [["str", "w"]],
                            "children": [{"type": "leaf"}]}}
    write_archive(tmp_path / "bad.npz", header, members)
    with pytest.raises(ValueError, match=message):
        fio.load(tmp_path / "bad.npz")


# ---------------------------------------------------------------- mismatched templates

def test_template_from_a_different_architecture(tmp_path):
    fio.save(tmp_path / "ck.npz", train_state(d_in=4))
    # leaves are compared in sorted-key order, so ['opt'] comes before ['params']
    with pytest.raises(ValueError, match=r"leaf \['opt'\].mu\['dense'\]\['w'\] has shape "
                                         r"\(4, 3\) float32, but the template expects "
                                         r"shape \(8, 3\) float32"):
        fio.load(tmp_path / "ck.npz", like=train_state(d_in=8))


def test_template_dtype_mismatch(tmp_path):
    fio.save(tmp_path / "ck.npz", {"w": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match=r"\['w'\] has shape \(3,\) float32, but the "
                                         r"template expects shape \(3,\) bfloat16"):
        fio.load(tmp_path / "ck.npz", like={"w": jnp.ones(3, jnp.bfloat16)})


@pytest.mark.parametrize("like, message", [
    ({k: v for k, v in train_state().items() if k != "step"},
     r"leaf #8 is \['step'\] in the checkpoint but \(no more leaves\) in the template "
     r"\(9 vs 8 leaves\)"),
    ({**train_state(), "zzz": np.ones(1)},
     r"leaf #9 is \(no more leaves\) in the checkpoint but \['zzz'\] in the template"),
    ({**train_state(), "extra": np.ones(1)},
     r"leaf #0 is \['key'\] in the checkpoint but \['extra'\] in the template"),
    ({**train_state(), "opt": {"count": 0, "mu": params(), "nu": params()}},
     r"is \['opt'\].count in the checkpoint but \['opt'\]\['count'\] in the template"),
])
def test_template_structure_mismatch_names_first_differing_leaf(tmp_path, like, message):
    fio.save(tmp_path / "ck.npz", train_state())
    with pytest.raises(ValueError, match=message):
        fio.load(tmp_path / "ck.npz", like=like)


def test_python_scalar_template_accepts_any_saved_scalar_of_its_kind(tmp_path):
    fio.save(tmp_path / "ck.npz", {"step": jnp.int32(7), "lr": np.float32(0.5)})
    out = fio.load(tmp_path / "ck.npz", like={"step": 0, "lr": 0.0})
    assert out == {"step": 7, "lr": 0.5} and type(out["step"]) is int
    with pytest.raises(ValueError, match=r"\['lr'\] has shape \(\) float32, but the "
                                         r"template expects shape \(\) Python int"):
        fio.load(tmp_path / "ck.npz", like={"step": 0, "lr": 0})


def test_opaque_nodes_need_a_template(tmp_path):
    import collections
    tree = collections.OrderedDict(a=np.ones(2), b=np.zeros(1))
    fio.save(tmp_path / "ck.npz", tree)
    with pytest.raises(ValueError, match=r"holds a pytree node of type OrderedDict, "
                                         r"which only load\(path, like=template\)"):
        fio.load(tmp_path / "ck.npz")
    out = fio.load(tmp_path / "ck.npz", like=collections.OrderedDict(a=np.ones(2),
                                                                     b=np.ones(1)))
    assert type(out) is collections.OrderedDict and same_bits(out["b"], tree["b"])


def test_public_api():
    assert set(fio.__all__) == {"FORMAT_VERSION", "save", "load", "load_metadata"}
    for name in ("save", "load", "load_metadata"):
        assert getattr(fio, name).__doc__
