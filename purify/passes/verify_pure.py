"""Pass: verify the programs are pure — no purify effect in any program's effect set;
in checked mode (``PURIFY_VERIFY=1`` or ``JAX_ENABLE_CHECKS=1``) also no purify effect
primitive or effect on any equation, nested ones too, and ``check_jaxpr`` passes (the
pipeline's verify mode checks every pass's program with ``check_jaxpr`` and its
postcondition instead: base.verify_program). A failure here is a purify bug and names the equation.

The unchecked mode looks at effect sets only (O(1) a program): a walk of every
equation cost about as much as a threading pass. An effect primitive left behind
with its effect wrongly stripped still cannot run: each one's lowering rule raises
purify's error (effects.py)."""
from __future__ import annotations

import dataclasses
import os

import jax

from purify import _compat
from purify import effects as fx
from purify import errors
from purify.passes._assemble import iter_eqns
from purify.passes.base import Pass


def verify(program, check: bool = True):
  for label, j in program.jaxprs():
    if fx.has_effect(_compat.open_of(j).effects):
      raise errors.PipelineError(f"purify bug: {label} program still has effects "
                                 f"{_compat.open_of(j).effects}")
    if not check:
      continue
    for e in iter_eqns(j):
      if e.primitive in fx.EFFECT_PRIMITIVES or fx.has_effect(e.effects):
        raise errors.PipelineError(f"purify bug: {label} program still has {e}")
    if check:
      _compat.check_jaxpr(j)


def _checks_enabled() -> bool:
  return bool(os.environ.get("PURIFY_VERIFY")) or bool(jax.config.jax_enable_checks)


@dataclasses.dataclass(frozen=True)
class VerifyPure(Pass):
  name = "verify_pure"
  requires = frozenset({"split", "dce"})
  provides = frozenset({"verified"})

  def run(self, program):
    # effect sets always; the equation walk and check_jaxpr (costly: ~half the
    # pipeline) with PURIFY_VERIFY=1 or JAX_ENABLE_CHECKS=1 (base.verify_program
    # runs check_jaxpr after every pass in the pipeline's verify mode)
    verify(program, check=_checks_enabled())
    return program
