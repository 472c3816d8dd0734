"""Pass: dead-code elimination on init and apply (inputs are kept: the signature
does not change). This is what makes init lean: it keeps only the initializers and
the computations of set_state-created initial values, never the forward pass."""
from __future__ import annotations

import dataclasses

from purify import _compat
from purify.passes.base import Pass


def dce_closed(cj):
  j = _compat.open_of(cj)
  if not j.eqns:
    return cj
  new, _ = _compat.dce_jaxpr(j, [True] * len(j.outvars))
  # keep the signature (dce drops unused inputs): take only the surviving equations
  return _compat.replace_jaxpr(cj, eqns=new.eqns, effects=new.effects)


@dataclasses.dataclass(frozen=True)
class DeadCodeElimination(Pass):
  name = "dce"
  requires = frozenset({"split"})
  provides = frozenset({"dce"})

  def run(self, program):
    return program.replace(jaxpr=dce_closed(program.jaxpr), init_jaxpr=dce_closed(program.init_jaxpr))
