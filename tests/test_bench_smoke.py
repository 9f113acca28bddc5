"""Smoke test of the benchmark script: it runs and reports, nothing is timed here.

``benchmarks/bench.py`` is not part of the package, so it is imported from its path.
The smallest configuration (A) runs for one round, one step per variant, peers
skipped; the test checks the shape of the results, never a timing.
"""

from __future__ import annotations

import os

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("bench.py", "fdl_bench")


@pytest.fixture(scope="module")
def results(bench):
    settings = bench.Settings(rounds=1, min_time=0.0, max_steps=1, peers=(), peak_n=128)
    return bench.run(["A"], settings, command="pytest smoke")


def test_step_section_has_the_fdl_rows_and_their_columns(results):
    rows = {r["variant"]: r for r in results["sections"]["A"]["rows"]}
    assert {"fdl", "fdl autodiff", "fdl Trainer.step"} <= set(rows)
    for name in ("fdl", "fdl autodiff", "fdl Trainer.step"):
        r = rows[name]
        for key in ("median_s", "q1_s", "q3_s", "min_s", "first_call_s", "compile_s", "gflops",
                    "pct_of_peak", "vs_fdl_autodiff", "vs_fastest_jax_peer", "loss0", "rounds"):
            assert key in r, (name, key)
        assert r["rounds"] == 1 and r["median_s"] > 0
    assert rows["fdl autodiff"]["vs_fdl_autodiff"] == pytest.approx(1.0)
    # same initial parameters and batch: both modes see the same first loss
    assert rows["fdl"]["loss0"] == pytest.approx(rows["fdl autodiff"]["loss0"], rel=1e-5)
    assert rows["fdl"]["xla"]["hlo_ops"]["dot"] >= 1


def test_peers_skipped_leave_the_peer_target_unmeasured(results):
    targets = {t["target"]: t for t in results["targets"]}
    peer = targets["A: fdl step ≤ 1.0× fastest JAX peer"]
    assert peer["met"] is None and "no JAX peer" in peer["detail"]
    assert "A: manual rules ≤ 1.02× fdl autodiff" in targets


def test_markdown_report(bench, results):
    md = bench.report.to_markdown(results)
    assert "### A: MLP 784-1024-10, batch 128" in md
    assert "| variant | dtype | median ms |" in md
    assert "### Targets" in md and "pytest smoke" in md


def test_digits_section_reports_the_scan_bound(bench):
    """The digits section (no subprocess runs) measures the loop variants, the no-op
    dispatch row, and says what bounds scan vs loop, in the JSON and the markdown."""
    settings = bench.Settings(rounds=1, min_time=0.0, max_steps=1, peers=(), peak_n=128,
                              cli=False)
    results = bench.run(["peak", "digits"], settings, command="pytest smoke digits")
    d = results["sections"]["digits"]
    names = {r["variant"] for r in d["rows"]}
    assert "epoch as one lax.scan (Trainer.epoch)" in names and bench.sections.NOOP_LOOP in names
    b = bench.report.scan_bound(d, results["sections"]["peak"]["peak_gflops"]["float32"])
    assert b["dispatch_overhead_us_per_step"] > 0 and b["matmul_floor_us_per_step"] > 0
    assert b["scan_us_per_step_needed_for_5x"] == pytest.approx(b["loop_extra_us_per_step"] / 4)
    fit = d["fit"]  # the default digits MLP reaches 97% (as `fdl train` is tested to)
    assert fit["reached"] is True and fit["test_accuracy"] >= 0.97
    assert 1 <= fit["epochs"] <= 60 and fit["seconds"] > 0
    assert not any("97% not reached" in note for note in d["notes"])
    target = next(t for t in results["targets"] if t["target"].startswith("digits: epoch-as-scan"))
    assert "dispatch" in target["detail"]
    assert "What bounds scan vs loop" in bench.report.to_markdown(results)


def test_report_names_the_malloc_settings_only_when_set(bench, results, monkeypatch):
    for k in [k for k in os.environ if k == "GLIBC_TUNABLES" or k.startswith("MALLOC_")]:
        monkeypatch.delenv(k)
    assert bench.environment()["malloc"] == ""
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    env = bench.environment()
    assert env["malloc"] == "GLIBC_TUNABLES=glibc.malloc.arena_max=1 MALLOC_MMAP_MAX_=0"
    unset = bench.report.to_markdown(dict(results, environment=dict(results["environment"], malloc="")))
    assert "GLIBC_TUNABLES" not in unset and "MALLOC_" not in unset
    md = bench.report.to_markdown(dict(results, environment=dict(results["environment"], **env)))
    assert "; GLIBC_TUNABLES=glibc.malloc.arena_max=1 MALLOC_MMAP_MAX_=0" in md
