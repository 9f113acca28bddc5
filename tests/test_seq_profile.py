"""`benchmarks/seq_profile.py`'s reading of an optimised HLO module: which kernels are
matmuls, their shapes and FLOPs, which run inside a `lax.scan`, the bytes an
element-wise kernel moves and the fdl code a kernel came from. Nothing is timed here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import load_benchmark

import fdl


@pytest.fixture(scope="module")
def sp():
    yield from load_benchmark("seq_profile.py", "fdl_seq_profile")


def _hlo(fn, *shapes):
    return jax.jit(fn).lower(*(jnp.ones(s, jnp.float32) for s in shapes)).compile().as_text()


@pytest.mark.float32
def test_matmuls_shapes_layouts_and_flops(sp):
    hlo = _hlo(lambda a, b, c, d: (a @ b, a.T @ c, jnp.einsum("nts,nsd->ntd", d, d)),
               (32, 16), (16, 8), (32, 4), (6, 5, 5))
    mm = [k for k in sp.kernels_of(hlo).values() if k.kind == "matmul"]
    assert sorted(k.gemm for k in mm) == [(0, 16, 32, 4, True, False), (0, 32, 16, 8, False, False),
                                         (6, 5, 5, 5, False, False)]
    assert sorted(k.flops for k in mm) == [2.0 * 6 * 5 * 5 * 5, 2.0 * 16 * 32 * 4,
                                           2.0 * 32 * 16 * 8]
    assert sorted(sp.gemm_label(k.gemm) for k in mm) == ["16×32ᵀ·32×4", "32×16·16×8",
                                                         "6× 5×5·5×5"]
    assert all(k.loop is None for k in mm)


@pytest.mark.float32
def test_a_scans_product_runs_in_its_loop_and_the_loop_is_scan_overhead(sp):
    def f(h, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), h, None, length=4)[0]

    kernels = sp.kernels_of(_hlo(f, (8, 16), (16, 16)))
    loops = [k for k in kernels.values() if k.ops == ["while"]]
    assert len(loops) == 1 and loops[0].kind == "scan loop" and loops[0].loop is None
    mm = [k for k in kernels.values() if k.kind == "matmul"]
    assert [(k.gemm, k.loop) for k in mm] == [((0, 8, 16, 16, False, False), loops[0].name)]


@pytest.mark.float32
def test_elementwise_bytes_are_operands_read_plus_result_written(sp):
    kernels = sp.kernels_of(_hlo(lambda x, y: jnp.exp(x) * y + 1, (250, 4), (250, 4)))
    (k,) = [k for k in kernels.values() if k.kind == "elementwise"]
    assert k.bytes == 3 * 250 * 4 * 4


@pytest.mark.float32
def test_kernels_name_the_fdl_code_they_were_traced_from(sp):
    kernels = sp.kernels_of(_hlo(lambda x, w, b: fdl.ops.linear(x, w, b), (8, 4), (4, 3), (3,)))
    (k,) = [k for k in kernels.values() if k.kind == "matmul"]
    assert k.source.startswith("ops/linear.py:linear:")
    outside = sp.kernels_of(_hlo(lambda x, w: x @ w, (8, 4), (4, 3)))
    assert [k.source for k in outside.values() if k.kind == "matmul"] == [""]
