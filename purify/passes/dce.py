"""Pass: dead-code elimination on init and apply (inputs are kept: the signature
does not change). This is what makes init lean: it keeps only the initializers and
the initializers, never the forward pass (init's forward, for set_state-created
initial values, is apply or a program of its own: ``Program.forward_jaxpr``)."""
from __future__ import annotations

import dataclasses

from purify import _compat
from purify.passes._assemble import iter_eqns
from purify.passes.base import Pass


def _size(j):
  """Equations and their operands/results, recursively: what DCE can shrink."""
  return sum(1 + len(e.invars) + len(e.outvars) for e in iter_eqns(j))


def dce_closed(cj):
  j = _compat.open_of(cj)
  if not j.eqns:
    return cj
  new, _ = _compat.dce_jaxpr(j, [True] * len(j.outvars))
  if _size(new) == _size(j):
    # nothing was dead: keep the program as it was (JAX 0.12's scan DCE rule re-wraps
    # the scan's FlatTree params even when it removes nothing, so re-running would
    # change the program text without changing the program: not idempotent)
    return cj
  # keep the signature (dce drops unused inputs): take only the surviving equations
  return _compat.replace_jaxpr(cj, eqns=new.eqns, effects=new.effects)


@dataclasses.dataclass(frozen=True)
class DeadCodeElimination(Pass):
  name = "dce"
  requires = frozenset({"split"})
  provides = frozenset({"dce"})

  def run(self, program):
    fwd = program.forward_jaxpr
    return program.replace(jaxpr=dce_closed(program.jaxpr), init_jaxpr=dce_closed(program.init_jaxpr),
                           forward_jaxpr=dce_closed(fwd) if fwd is not None else None)
