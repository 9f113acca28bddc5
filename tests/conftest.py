"""Test configuration: strict rank promotion, per-test precision, shared helpers.

`jax_numpy_rank_promotion="raise"` turns silent broadcasting mistakes in
hand-written gradients into errors. Strictness is global; precision is not.

Precision is chosen per test, never globally, so the suite runs in the
configuration users run:

* unmarked tests run in JAX's default configuration (x64 off, float32);
* ``@pytest.mark.float32`` says so explicitly (every public entry point is tested
  at least once this way);
* ``@pytest.mark.x64`` (or ``pytestmark = pytest.mark.x64`` in a module) runs the
  test with ``jax_enable_x64`` on: gradient tests that need float64's tolerances.
  Such a test builds its float64 data inside the test or a fixture, never at import
  time (module-level arrays are created at collection, outside the test's precision).

Helpers shared by the test modules live here (``from conftest import normal``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# The persistent compilation cache (see _compilation_cache); empty when it is off.
_CACHE_ENV: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "x64: run with jax_enable_x64 on (float64 checks)")
    config.addinivalue_line("markers", "float32: run in JAX's default configuration (x64 off)")
    _compilation_cache(config)


def _compilation_cache(config: pytest.Config) -> None:
    """Keep XLA's compiled programs between runs and between xdist workers.

    Most of the suite's time is XLA compiling; JAX's persistent cache stores each
    executable under a key of the program, its compile options, the backend and the
    JAX version, so a hit is the executable a fresh compile would build. Every program
    is cached (no minimum compile time or size). The cache lives in pytest's cache
    directory (``.pytest_cache``; off with ``-p no:cacheprovider``).

    It has no size bound: a bound makes JAX rescan the whole directory on every write
    (quadratic in the number of entries). Unbounded, JAX takes no lock, so a worker may
    read an entry another is still writing; the entry is compressed, a partial one fails
    to decompress, and JAX then warns and compiles the program itself.
    """
    cache = getattr(config, "cache", None)
    if cache is None:
        return
    settings = {
        "jax_compilation_cache_dir": str(cache.mkdir("jax-compilation-cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": -1,
    }
    for name, value in settings.items():
        jax.config.update(name, value)
        _CACHE_ENV[name.upper()] = str(value)


SLOW_LIST = Path(__file__).with_name("slow_tests.txt")


def _slow_ids() -> set[str]:
    lines = SLOW_LIST.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


@pytest.hookimpl(tryfirst=True)  # before `-m 'not slow'` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests listed in `slow_tests.txt` `slow` (see that file for why and how
    the list was made). Where a whole file was collected, every id listed for it must
    exist: a renamed or removed test fails the run with its id, not silently."""
    slow = _slow_ids()
    collected = {item.nodeid for item in items}
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)
    if any("::" in str(a) for a in config.args):
        return  # single tests asked for: the rest of their files was not collected
    files = {nodeid.split("::")[0] for nodeid in collected}
    stale = sorted(n for n in slow if n.split("::")[0] in files and n not in collected)
    if stale:
        raise pytest.UsageError(f"{SLOW_LIST.name} lists tests that do not exist "
                                f"(renamed or removed?): {stale}")


@pytest.fixture(autouse=True)
def _precision(request: pytest.FixtureRequest):
    """Run the test with ``jax_enable_x64`` on if its closest precision marker is
    ``x64``, off otherwise (a ``float32`` test in an ``x64`` module runs in float32)."""
    closest = next((m.name for m in request.node.iter_markers()
                    if m.name in ("x64", "float32")), "float32")
    with jax.enable_x64(closest == "x64"):
        yield


def normal(seed: int | np.random.Generator, *shape: int, scale: float = 1.0,
           loc: float = 0.0, dtype: Any = None) -> jax.Array:
    """Test data ``loc + scale·N(0, 1)`` of ``shape`` from numpy's generator.

    numpy draws the values, so no XLA program is compiled per shape (``jax.random``
    would compile one). ``seed`` is an int (a fresh generator) or a generator to
    draw from. ``dtype`` defaults to JAX's default float dtype in the running
    test's precision: float64 under ``x64``, float32 otherwise.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return jnp.asarray(loc + scale * rng.standard_normal(shape), dtype)


ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(filename: str, module_name: str):
    """Yield ``benchmarks/<filename>`` imported as ``module_name``, with its folder on
    ``sys.path`` (its sibling modules import by name) and the module registered in
    ``sys.modules`` (dataclasses look their module up there); both undone after. For a
    module-scoped fixture: ``yield from load_benchmark("bench.py", "fdl_bench")``."""
    import importlib.util

    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "benchmarks" / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(module_name, None)
        sys.path.remove(folder)


def user_env() -> dict[str, str]:
    """The environment of a user who set nothing for JAX: this process's environment
    without ``JAX_*`` settings (x64, dtype promotion), except the platform choice,
    plus the suite's compilation cache when it is on (it changes no result)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JAX_") or k == "JAX_PLATFORMS"}
    return {**env, **_CACHE_ENV}


def run_python(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python *args`` in a fresh interpreter in ``cwd`` with :func:`user_env`,
    capturing text output; the test reads ``returncode``, ``stdout`` and ``stderr``."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=user_env(),
                          capture_output=True, text=True, timeout=timeout)


class FakeTerminal:
    """A stdout that says it is a terminal and records what is written to it."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass
