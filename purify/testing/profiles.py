"""Hypothesis profiles for the harness: "ci" (derandomized, sized to a few minutes
on a 2-core machine) and "hunt" (long, random: for finding bugs).

Pick one with ``PURIFY_HYPOTHESIS_PROFILE=hunt`` (default "ci"):

    PURIFY_HYPOTHESIS_PROFILE=hunt python -m pytest tests/test_harness.py

Each property has its own number of programs: the ones that compile (init, apply,
jit, vmap) cost about a second a program on this machine, the trace-only ones
(eval_shape, pipeline, idempotence, leaks, invalid programs) a tenth of that.
Example::

    from purify.testing import profiles
    @profiles.property_settings("reference")
    @given(programs())
    def test_x(program): ...
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# programs per property; (max_leaves, max_rng) of the programs
CI_EXAMPLES = {
    "reference": 65, "jit": 15, "determinism": 12, "vmap": 15, "eval_shape": 130,
    "pipeline": 110, "idempotent": 100, "leaks": 100, "invalid": 120,
}
HUNT_EXAMPLES = {k: 20 * v for k, v in CI_EXAMPLES.items()}
CI_SIZE = {"compile": (5, 2), "trace": (9, 5)}
HUNT_SIZE = {"compile": (10, 5), "trace": (14, 8)}

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=list(HealthCheck))
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("hunt", derandomize=False, **_COMMON)


def profile() -> str:
  return os.environ.get("PURIFY_HYPOTHESIS_PROFILE", "ci")


def examples(prop: str) -> int:
  return (HUNT_EXAMPLES if profile() == "hunt" else CI_EXAMPLES)[prop]


def size(kind: str) -> tuple:
  """(max_leaves, max_rng) for programs of a "compile" or a "trace" property."""
  return (HUNT_SIZE if profile() == "hunt" else CI_SIZE)[kind]


def property_settings(prop: str):
  """The settings of one property under the selected profile."""
  return settings(settings.get_profile(profile()), max_examples=examples(prop))
