"""State under a differentiation taken inside the model (``jax.grad``/``jvp``/``vjp``).

Loop semantics makes a state a variable: inside a ``jax.grad`` taken in the model, a
value written with ``set_state`` and read back carries its dependence on the
differentiated input, as a Python variable would. ``get_state`` has no operands, so
JAX alone would give every read a zero tangent and drop that dependence silently.
purify makes the state explicit exactly where JAX differentiates through it, at
trace time, on the JVP and linearize traces (``_compat.hook_ad_traces``):

* ``set_state`` under such a trace remembers the value written (its primal and
  tangent, on the trace object, so they die with the trace); a later ``get_state`` under the same trace returns that
  value — with its tangent — instead of binding a read.
* a higher-order primitive (scan, while, cond, jit, remat, calls) whose body reads or
  writes state is rewritten before JAX differentiates it: the thread-state pass's own
  rules run on that one equation, turning every state it touches into an explicit
  carry / operand / result; the current values go in (remembered ones, or a read
  bound outside the differentiation) and the results are written back with
  ``set_state``. JAX then differentiates the state like any carry.

Reads of a state not written inside the differentiation are constants for it (their
value comes from outside), which is what JAX's zero tangent says. The program that
reaches the passes still reads and writes state through the effect primitives, so
init/apply are built as for any program.
"""
from __future__ import annotations

import types

import jax

from purify import _compat
from purify import _context
from purify import effects as fx
from purify.passes import _thread
from purify.passes._assemble import jaxprs_in
from purify.passes.thread_state import _State

_KEY = "state"


def _remembered(trace, frame) -> dict:
  return _compat.trace_scratch(trace).setdefault((_KEY, frame.id), {})


class _LocalState(_State):
  """thread_state's rules on one equation, state avals from the trace-time frame.
  Writes are plain (no first-write tracking: the value the equation leaves is written
  back with one ``set_state``, so a state CREATED by set_state inside it starts at
  that value — a documented limit, docs/semantics.md)."""

  def __init__(self, frame):
    self.program = types.SimpleNamespace(states=frame.states)

  def first_read(self, rw, ch):
    return rw.new_input(ch)


def _plain_set(pass_, rw, eqn):
  p = eqn.params
  rw.write(("state", p["module"], p["name"]), eqn.invars[0])


_LocalState.leaf_rules = dict(_State.leaf_rules)
_LocalState.leaf_rules[fx.set_state_p] = _plain_set


def _has_state(params) -> bool:
  return any(fx.has_effect(_compat.open_of(j).effects, (fx.StateEffect,))
             for j in jaxprs_in(params))


def _read(trace, frame, ch):
  st = frame.states[(ch[1], ch[2])]
  with _compat.set_current_trace(trace):
    return fx.get_state_p.bind(module=st.module, name=st.name, shape=st.shape, dtype=st.dtype)


def _discharge(trace, frame, prim, tracers, params):
  avals = [_compat.typeof(t) for t in tracers]
  with _context.no_frame():
    one = jax.make_jaxpr(lambda *a: prim.bind(*a, **params))(*avals)
  worker = _LocalState(frame)
  t = _thread.Rewriter(worker, one).run()
  A = worker.channel_aval
  ins, outs = t.ins, t.outs
  j = t.finish(t.orig_in + [t.chan_in(c, A(c)) for c in ins],
               t.orig_out + [t.chan_out(c, A(c)) for c in outs])
  states_in = [_read(trace, frame, c) for c in ins]
  with _compat.set_current_trace(trace):
    results = _compat.eval_jaxpr(_compat.open_of(j), _compat.consts_of(j), *tracers, *states_in)
    n = len(t.orig_out)
    for c, v in zip(outs, results[n:]):
      fx.set_state_p.bind(v, module=c[1], name=c[2])
  return results[:n] if prim.multiple_results else results[0]


def _hook(trace, prim, tracers, params, original):
  if prim is fx.get_state_p or prim is fx.set_state_p or prim in _thread.HOP_RULES:
    frame = _context.maybe_frame()
    if frame is not None:
      key = (params.get("module"), params.get("name"))
      if prim is fx.get_state_p:
        pair = _remembered(trace, frame).get(key)
        if pair is not None:
          value = _compat.ad_join(trace, *pair)
          if _compat.typeof(value).weak_type:
            with _compat.set_current_trace(trace):
              value = jax.lax.convert_element_type(value, params["dtype"])
          return value
      elif prim is fx.set_state_p:
        # kept as (primal, tangent): a tracer of ``trace`` stored on ``trace`` would
        # keep it alive past its end (JAX's leak checker reports that)
        _remembered(trace, frame)[key] = _compat.ad_split(trace, tracers[0])
      elif _has_state(params):
        return _discharge(trace, frame, prim, tracers, params)
  return original(trace, prim, tracers, params)


_compat.hook_ad_traces(_hook)
