"""Test configuration: strict rank promotion (equinox's habit) and per-test precision.

`jax_numpy_rank_promotion="raise"` turns silent broadcasting mistakes in
hand-written gradients into errors.

Precision is chosen per test, never globally for the user-facing paths:

* ``@pytest.mark.x64`` (or ``pytestmark = pytest.mark.x64`` in a module) runs the
  test with ``jax_enable_x64`` on: gradient tests that need float64's tolerances.
* ``@pytest.mark.float32`` runs it in JAX's default configuration (x64 off), the
  one users run: every public entry point is tested at least once this way.
* Unmarked tests currently run with x64 on (TRANSITIONAL: being moved to the
  user's default, x64 off).
"""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
_UNMARKED_X64 = True  # transitional default for unmarked tests
jax.config.update("jax_enable_x64", _UNMARKED_X64)  # module-level tables built at collection


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "x64: run with jax_enable_x64 on (float64 checks)")
    config.addinivalue_line("markers", "float32: run in JAX's default configuration (x64 off)")


@pytest.fixture(autouse=True)
def _precision(request: pytest.FixtureRequest):
    """Set ``jax_enable_x64`` for the test from its marker."""
    if request.node.get_closest_marker("float32") is not None:
        want = False
    elif request.node.get_closest_marker("x64") is not None:
        want = True
    else:
        want = _UNMARKED_X64
    with jax.enable_x64(want):
        yield
