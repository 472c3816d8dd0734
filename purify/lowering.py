"""Stage 4 — lowering: run a pure program.

An :class:`Executable` wraps one pure closed jaxpr in ONE ``jax.jit`` object created
once (a new ``jax.jit`` per call would re-trace and recompile). Called eagerly it
runs the cached compiled executable; called under a user's transform (``jax.jit``,
``jax.vmap``, ``jax.grad`` of ``apply``) it binds the jaxpr as one equation, so the
user's Python never runs again.
"""
from __future__ import annotations

import jax

from purify import _compat


class Executable:
  def __init__(self, closed_jaxpr, name: str):
    self.jaxpr = closed_jaxpr
    self.name = name

    def run(*flat):
      return _compat.bind_closed(self.jaxpr, *flat)

    run.__name__ = name
    self._jitted = jax.jit(run)

  def __call__(self, *flat):
    return self._jitted(*flat)

  def lower(self, *flat):
    return self._jitted.lower(*flat)
