"""Shared test fixtures."""
import pytest

import purify.testing


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA compiles dominate most test files; with XLA's optimizations off they are
  1.5-3x faster and no RNG bit or integer changes (floats keep their tolerances).
  A test module opts in with ``pytestmark = pytest.mark.usefixtures("fast_compiles")``;
  the setting is restored when the module ends."""
  with purify.testing.fast_compiles():
    yield
