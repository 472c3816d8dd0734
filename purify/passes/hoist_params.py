"""Pass: hoist parameters.

Every ``purify_param`` equation becomes a read of the channel ``("param", module,
name)``: one new program input per parameter, in declaration order, threaded into
every nested jaxpr that uses it as a constant input (shared under every transform,
as a loop shares it). Parameters declared where no equation survives (under
``jax.eval_shape``) still get an input, so init creates them.

Before::   { lambda ; a:f32[3]. let b:f32[3] <- param "~/w"; c = mul a b in (c) }
After::    { lambda ; b:f32[3] a:f32[3]. let c = mul a b in (c) }
"""
from __future__ import annotations

import dataclasses

from purify import _compat
from purify import effects as fx
from purify.passes import _thread
from purify.passes._assemble import assemble_top, no_effect_postcondition
from purify.passes.base import Pass


class _Hoist(_thread.ThreadingPass):
  name = "hoist_params"
  effect_types = (fx.ParamEffect,)

  def __init__(self, program):
    self.program = program

  def compute_aval(self, ch):
    site = self.program.params[(ch[1], ch[2])]
    return _compat.shaped(site.shape, site.dtype)


def _param_leaf(pass_, rw, eqn):
  p = eqn.params
  rw.read_as(("param", p["module"], p["name"]), eqn.outvars[0])


_Hoist.leaf_rules = {fx.param_p: _param_leaf}


@dataclasses.dataclass(frozen=True)
class HoistParams(Pass):
  name = "hoist_params"
  requires = frozenset({"traced"})
  provides = frozenset({"no_param_effects"})

  def run(self, program):
    worker = _Hoist(program)
    t, rw = worker.rewrite_top(program)
    chans = [("param",) + key for key in program.params]
    return assemble_top(program, t, rw, worker, in_channels=chans, out_channels=[])

  def postcondition(self, program):
    no_effect_postcondition(program, (fx.ParamEffect,), (fx.param_p,), self.name)
