"""Pass: thread state.

``get_state`` reads and ``set_state`` writes the channel ``("state", module, name)``:
a variable carried through the program — an extra carry of scan and while, an extra
operand and result of cond (a branch that does not write it passes it through), an
extra input and output of jit / remat / calls. Every declared state becomes one
program input and one program output (role ``state``). State created by
``set_state`` (no initializer) also gets a ``state_first`` output — the first value
written — which init uses as its initial value.

Before::  { lambda ; a:f32[]. let b:f32[] <- get_state "~/n"; c = add b 1.0; set_state "~/n" c in (a) }
After::   { lambda ; n:f32[] a:f32[]. let c = add n 1.0 in (a, c) }
"""
from __future__ import annotations

import dataclasses

from purify import _compat
from purify import effects as fx
from purify import errors
from purify.passes import _thread
from purify.passes._assemble import assemble_top, no_effect_postcondition
from purify.passes.base import Pass


class _State(_thread.ThreadingPass):
  name = "thread_state"
  effect_types = (fx.StateEffect,)

  def __init__(self, program):
    self.program = program

  def channel_aval(self, ch):
    st = self.program.states[(ch[1], ch[2])]
    return _compat.ShapedArray(st.shape, st.dtype)

  def first_read(self, rw, ch):
    st = self.program.states[(ch[1], ch[2])]
    if rw.depth == 0 and st.init is None:
      raise errors.PurifyError(errors.STATE_FIRST_WRITTEN_IN_LOOP.format(
          path=st.path, prim="a control-flow or call primitive", name=st.name))
    return rw.new_input(ch)

  def check_while_cond(self, t):
    if t.out_map:
      c = t.outs[0]
      raise errors.PurifyError(errors.STATE_IN_WHILE_COND.format(path=f"{c[1]}/{c[2]}"))


def _get_leaf(pass_, rw, eqn):
  p = eqn.params
  rw.subst[eqn.outvars[0]] = rw.read(("state", p["module"], p["name"]))


def _set_leaf(pass_, rw, eqn):
  p = eqn.params
  ch = ("state", p["module"], p["name"])
  value = eqn.invars[0]
  if rw.depth == 0 and ch not in rw.cur and pass_.program.states[(ch[1], ch[2])].init is None:
    rw.first_values[ch] = value
  rw.write(ch, value)


_State.leaf_rules = {fx.get_state_p: _get_leaf, fx.set_state_p: _set_leaf}


@dataclasses.dataclass(frozen=True)
class ThreadState(Pass):
  name = "thread_state"
  requires = frozenset({"traced"})
  provides = frozenset({"no_state_effects"})

  def run(self, program):
    worker = _State(program)
    t, rw = worker.rewrite_top(program)
    chans = [("state",) + key for key in program.states]
    return assemble_top(program, t, rw, worker, in_channels=chans, out_channels=chans,
                        first_values=rw.first_values)

  def postcondition(self, program):
    no_effect_postcondition(program, (fx.StateEffect,), (fx.get_state_p, fx.set_state_p), self.name)
