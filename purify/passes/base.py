"""Stage 3 — the pass pipeline.

A pass is a small frozen object: a ``name``, the facts it ``requires`` and the facts
it ``provides``, and a pure ``run(program) -> program``. The pipeline orders the
passes from those declarations with a real dependency graph (networkx): a pass runs
after every pass that provides something it requires; a cycle, a requirement
nobody provides, or two passes providing one fact is an error when the pipeline is
built, not when it runs. In verify mode every intermediate program is checked with
``check_jaxpr`` plus the postcondition of the pass that made it; a failure names the
pass and the passes that ran before it. ``explain`` keeps the IR after every pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable, ClassVar

import networkx as nx

from purify import _compat
from purify import errors
from purify.trace import Program, gc_paused


@dataclasses.dataclass(frozen=True)
class Pass:
  name: ClassVar[str] = "?"
  requires: ClassVar[frozenset] = frozenset()
  provides: ClassVar[frozenset] = frozenset()

  def run(self, program: Program) -> Program:
    raise NotImplementedError

  def postcondition(self, program: Program) -> None:
    """Raise if ``program`` does not have what this pass provides."""

  def __call__(self, program: Program) -> Program:
    missing = self.requires - program.facts
    if missing:
      raise errors.PipelineError(
          f"pass {self.name!r} needs {sorted(missing)}; the program has {sorted(program.facts)}")
    out = self.run(program)
    return out.replace(facts=out.facts | self.provides)


@dataclasses.dataclass
class PassRecord:
  """``seconds``: the pass's wall time; ``user_seconds``: the part of it spent in
  the user's own Python that the pass ran (the initializers split_init calls: what
  a hand-written init traces too), measured by :func:`user_code`."""
  name: str
  seconds: float
  program: Program | None
  user_seconds: float = 0.0


_USER_CLOCK: list = []          # one [seconds] a running pass (innermost last)


@contextlib.contextmanager
def user_code():
  """Time the block as the user's Python run by the current pass (PassRecord)."""
  if not _USER_CLOCK:
    yield
    return
  t0 = time.perf_counter()
  try:
    yield
  finally:
    _USER_CLOCK[-1][0] += time.perf_counter() - t0


class Pipeline:
  """Passes ordered by their declared requirements (see module docstring)."""

  def __init__(self, passes, *, initial_facts=frozenset({"traced"})):
    self.passes = list(passes)
    g = nx.DiGraph()
    providers: dict[str, str] = {}
    for i, p in enumerate(self.passes):
      g.add_node(p.name, order=i)
      for f in p.provides:
        if f in providers:
          raise errors.PipelineError(f"fact {f!r} is provided by both {providers[f]!r} and {p.name!r}")
        providers[f] = p.name
    for p in self.passes:
      for f in p.requires:
        if f in initial_facts:
          continue
        if f not in providers:
          raise errors.PipelineError(
              f"pass {p.name!r} requires {f!r}, which no pass provides "
              f"(passes: {[q.name for q in self.passes]})")
        g.add_edge(providers[f], p.name)
    try:
      cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
      cycle = None
    if cycle:
      raise errors.PipelineError(f"pass requirements form a cycle: {cycle}")
    by_name = {p.name: p for p in self.passes}
    order = nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"])
    self.ordered = [by_name[n] for n in order]
    self.graph = g

  @property
  def names(self):
    return [p.name for p in self.ordered]

  def run(self, program: Program, *, verify: bool = False, keep: bool = False,
          on_pass: Callable[[str, Program], None] | None = None):
    """Run every pass; returns (program, [PassRecord])."""
    with gc_paused():
      return self._run(program, verify, keep, on_pass)

  def _run(self, program, verify, keep, on_pass):
    records = [PassRecord("trace", 0.0, program if keep else None)]
    for p in self.ordered:
      clock = [0.0]
      _USER_CLOCK.append(clock)
      t0 = time.perf_counter()
      try:
        program = p(program)
      except errors.PurifyError:
        raise
      except Exception as e:  # a pass crashing is a purify bug: say where
        raise errors.PipelineError(
            f"purify pass {p.name!r} failed (after {[r.name for r in records[1:]]}): "
            f"{type(e).__name__}: {e}") from e
      finally:
        _USER_CLOCK.pop()
      dt = time.perf_counter() - t0
      if verify:
        verify_program(program, p, records)
      records.append(PassRecord(p.name, dt, program if keep else None, clock[0]))
      if on_pass is not None:
        on_pass(p.name, program)
    return program, records


def verify_program(program: Program, p: Pass, records) -> None:
  try:
    for _, j in program.jaxprs():
      _compat.check_jaxpr(j)
    p.postcondition(program)
  except errors.PurifyError:
    raise
  except Exception as e:
    raise errors.PipelineError(
        f"the IR after pass {p.name!r} is invalid (passes before it: "
        f"{[r.name for r in records[1:]]}): {type(e).__name__}: {e}") from e
