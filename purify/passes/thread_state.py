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
import functools

import jax
import jax.numpy as jnp
import numpy as np

from purify import _compat
from purify import effects as fx
from purify import errors
from purify.passes import _thread
from purify.passes._assemble import assemble_top, no_effect_postcondition
from purify.passes.base import Pass


FIRST, BORN = "state_first", "state_born"      # auxiliary channels (see _set_leaf)
_BOOL = _compat.ShapedArray((), np.dtype(np.bool_))


def _keep_first(born, value, first):
  return jax.lax.select_n(born, value, first)


@functools.lru_cache(maxsize=None)
def _zeros_of(shape, dtype):
  return _thread.bound(jnp.zeros, shape, np.dtype(dtype))


class _State(_thread.ThreadingPass):
  name = "thread_state"
  effect_types = (fx.StateEffect,)

  def __init__(self, program):
    self.program = program

  def compute_aval(self, ch):
    if ch[0] == BORN:
      return _BOOL
    st = self.program.states[(ch[1], ch[2])]
    return _compat.shaped(st.shape, st.dtype)

  def reads_input(self, rw, ch):
    return rw.depth > 0 or ch[0] == "state"

  def first_read(self, rw, ch):
    if self.reads_input(rw, ch):
      return rw.new_input(ch)
    # the auxiliary channels of a set_state-created state, at the top level: born if
    # the top level already wrote it (its first value is known), else not yet
    main = ("state", ch[1], ch[2])
    if ch[0] == BORN:
      return _thread.literal(main in rw.first_values, np.bool_)
    if main in rw.first_values:
      return rw.first_values[main]
    aval = self.channel_aval(ch)
    return rw.inline(_thread.helper_jaxpr(_zeros_of(tuple(aval.shape), aval.dtype)), [])[0]

  def check_while_cond(self, t):
    if t.out_map:
      c = t.outs[0]
      raise errors.PurifyError(errors.STATE_IN_WHILE_COND.format(path=f"{c[1]}/{c[2]}"))


def _get_leaf(pass_, rw, eqn):
  p = eqn.params
  rw.read_as(("state", p["module"], p["name"]), eqn.outvars[0])


def _set_leaf(pass_, rw, eqn):
  """A write. For state created by ``set_state`` (no initializer) the initial value is
  the first value written: at the top level that is known statically; inside a loop,
  cond or call it is tracked by two auxiliary channels threaded like the state, "born"
  (written yet?) and "first" (the first value written), so e.g. a scan's first step
  gives it (Haiku's rule: ``hk.scan`` peels step 0 at init)."""
  p = eqn.params
  key = (p["module"], p["name"])
  ch = ("state",) + key
  value = eqn.invars[0]
  if pass_.program.states[key].init is None:
    first_ch, born_ch = (FIRST,) + key, (BORN,) + key
    if rw.depth == 0 and first_ch not in rw.cur:
      if ch not in rw.first_values:
        rw.first_values[ch] = value
    else:
      born, first = rw.read(born_ch), rw.read(first_ch)
      helper = _thread.helper_jaxpr(_keep_first, _BOOL, value.aval, value.aval)
      new_first = rw.inline(helper, [born, value, first], source_info=eqn.source_info)[0]
      rw.write(first_ch, new_first)
      rw.write(born_ch, _thread.literal(True, np.bool_))
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
    first_values = dict(rw.first_values)
    for ch in list(t.out_map):
      if ch[0] == FIRST:             # first written inside a loop/cond/call
        first_values[("state", ch[1], ch[2])] = t.out_map[ch]
      if ch[0] in (FIRST, BORN):
        del t.out_map[ch]
    chans = [("state",) + key for key in program.states]
    return assemble_top(program, t, rw, worker, in_channels=chans, out_channels=chans,
                        first_values=first_values)

  def postcondition(self, program):
    no_effect_postcondition(program, (fx.StateEffect,), (fx.get_state_p, fx.set_state_p), self.name)
