"""Stage 4 — lowering: run a pure program.

An :class:`Executable` wraps one pure closed jaxpr in ONE ``jax.jit`` object created
once (a new ``jax.jit`` per call would re-trace and recompile). Called eagerly it
runs the cached compiled executable; called under a user's transform (``jax.jit``,
``jax.vmap``, ``jax.grad`` of ``apply``) it binds the jaxpr as one equation, so the
user's Python never runs again.

An eager init is staged (``staged=FORWARD_CALL`` and :func:`staged_plan`). The
group-init pass creates the parameters that share an initializer as ONE stacked
array and returns member ``i`` as ``index_in_dim(G, i)``; init may also call the
forward computation (the call named ``FORWARD_CALL``) for the first values of
``set_state``-created state. Inside one XLA program every row is a kernel of its own
(XLA cannot write several output buffers from one kernel; on CPU a kernel costs
~15-20 ms of compile, an initializer tail far more) and XLA fuses the initializers'
tails into every consumer, including each convolution of the forward call. So an
eager init runs: the program without the row slices and the forward call (each
stacked ``G`` returned once); the forward call as a program of its own, fed by the
stacked arrays (its rows taken inside it); then the rows taken apart — on CPU by
copying each row on the host (a memcpy, no compile), elsewhere by one jitted
dynamic-index program per stacked shape. The parameters are bitwise what the one
program computes. Under a user's transform the whole jaxpr is bound as usual.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax import lax

from purify import _compat
from purify.passes.dce import dce_closed


@dataclasses.dataclass(frozen=True)
class _Staged:
  """How an eager init runs: ``first`` (the program without its row slices and without
  the forward call) returns each stacked value once; ``forward`` (or None) is the
  forward call as a program of its own, fed by ``first``'s outputs ``forward_src``
  (its rows taken inside it). ``outs[j]`` is ``(0, k, i)``: row ``i`` of ``first``'s
  output ``k`` (``i`` None: the whole output), or ``(1, k, None)``: ``forward``'s
  output ``k``."""
  first: object
  forward: object
  forward_src: tuple
  outs: tuple


def _row_of(eqn_of, v):
  """``(G, i, slice eqn, squeeze eqn)`` when ``v = squeeze(slice(G, [i, i+1) on axis
  0))``, else None."""
  if not isinstance(v, _compat.Var):
    return None
  sq = eqn_of.get(id(v))
  if sq is None or sq.primitive is not lax.squeeze_p or tuple(sq.params["dimensions"]) != (0,):
    return None
  sl = eqn_of.get(id(sq.invars[0]))
  if sl is None or sl.primitive is not lax.slice_p:
    return None
  g = sl.invars[0]
  start, limit, strides = sl.params["start_indices"], sl.params["limit_indices"], sl.params["strides"]
  shape = tuple(g.aval.shape)
  if (strides not in (None, (1,) * len(shape)) or limit[0] != start[0] + 1
      or any(s != 0 for s in start[1:]) or tuple(limit[1:]) != shape[1:]
      or jax.dtypes.issubdtype(g.aval.dtype, jax.dtypes.extended)):
    return None
  return g, int(start[0]), sl, sq


def _forward_eqn(j, name):
  """The top-level call named ``name`` whose outputs are only outputs of ``j``."""
  calls = [e for e in j.eqns if e.primitive is _compat.jit_p and e.params.get("name") == name]
  if len(calls) != 1 or calls[0].effects or not _compat.jit_is_plain_call(calls[0].params):
    return None
  outs = {id(v) for v in calls[0].outvars}
  if any(id(v) in outs for e in j.eqns for v in e.invars if isinstance(v, _compat.Var)):
    return None
  return calls[0]


def staged_plan(closed_jaxpr, forward_name=None):
  """The :class:`_Staged` plan of an init program, or None when it has no stacked
  rows among its outputs and no forward call to split off."""
  j = _compat.open_of(closed_jaxpr)
  eqn_of = {id(v): e for e in j.eqns for v in e.outvars}
  fwd = _forward_eqn(j, forward_name) if forward_name else None
  fwd_out = {id(v): n for n, v in enumerate(fwd.outvars)} if fwd is not None else {}
  first_outs, slot, row_eqns = [], {}, {}

  def place(v):
    """``(k, i)``: where ``v`` is among ``first``'s outputs (added when new)."""
    r = _row_of(eqn_of, v)
    base, i = (r[0], r[1]) if r is not None else (v, None)
    if r is not None:
      row_eqns[id(v)] = r[2:]
    key = id(base) if isinstance(base, _compat.Var) else ("literal", len(first_outs))
    if key not in slot:
      slot[key] = len(first_outs)
      first_outs.append(base)
    return slot[key], i

  outs = []
  for v in j.outvars:
    if id(v) in fwd_out:
      outs.append((1, fwd_out[id(v)], None))
    else:
      outs.append((0,) + place(v))
  fwd_ins = [place(v) if isinstance(v, _compat.Var) else v for v in fwd.invars] if fwd else []
  if fwd is None and all(i is None for _, _, i in outs):
    return None
  eqns = [e for e in j.eqns if e is not fwd]
  first = dce_closed(_compat.replace_jaxpr(closed_jaxpr, eqns=eqns, outvars=first_outs))
  forward, src = None, ()
  if fwd is not None:
    src = tuple(sorted({x[0] for x in fwd_ins if isinstance(x, tuple)}))
    forward = _forward_program(fwd, fwd_ins, src, [first_outs[k] for k in src], row_eqns)
  return _Staged(first, forward, src, tuple(outs))


def _forward_program(fwd, fwd_ins, src, stacked, row_eqns):
  """The forward call's body as a program of the stacked arrays ``src``: each row it
  reads is taken inside it (the same slice/squeeze equations as in init). Built from
  the equations directly — re-tracing the body costs as much as tracing the model."""
  body = fwd.params["jaxpr"]
  b = _compat.open_of(body)
  new_in = [_compat.Var(v.aval) for v in stacked]
  pos = {k: n for n, k in enumerate(src)}
  env, eqns = {}, []
  for bv, x, v in zip(b.invars, fwd_ins, fwd.invars):
    if not isinstance(x, tuple):                     # a literal operand
      env[bv] = x
    elif x[1] is None:
      env[bv] = new_in[pos[x[0]]]
    else:
      sl, sq = row_eqns[id(v)]
      mid = _compat.Var(sl.outvars[0].aval)
      out = _compat.Var(sq.outvars[0].aval)
      eqns.append(sl.replace(invars=[new_in[pos[x[0]]]], outvars=[mid]))
      eqns.append(sq.replace(invars=[mid], outvars=[out]))
      env[bv] = out
  sub = lambda a: a if isinstance(a, _compat.Literal) else env.get(a, a)  # noqa: E731
  eqns.extend(e.replace(invars=[sub(a) for a in e.invars]) for e in b.eqns)
  return _compat.replace_jaxpr(body, invars=new_in, eqns=eqns,
                               outvars=[sub(a) for a in b.outvars])


@jax.jit
def _take_row(stacked, i):
  return lax.dynamic_index_in_dim(stacked, i, keepdims=False)


def _on_host(arr) -> bool:
  """A concrete array on ONE CPU device: its buffer is host memory."""
  devices = arr.sharding.device_set
  return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def _rows(stacked, count):
  """Rows ``0..count-1`` of a concrete stacked array, each its own array on the same
  device (committed as ``stacked`` is)."""
  if _on_host(stacked):
    host = np.asarray(stacked)                   # a zero-copy view of the CPU buffer
    target = stacked.sharding if stacked.committed else None
    return [jax.device_put(np.array(host[i]), target) for i in range(count)]
  return [_take_row(stacked, np.int32(i)) for i in range(count)]


class Executable:
  """``staged=FORWARD_CALL_NAME`` (init): eager calls run the :class:`_Staged` plan."""

  def __init__(self, closed_jaxpr, name: str, *, staged: str | None = None):
    self.jaxpr = closed_jaxpr
    self.name = name
    self.plan = staged_plan(closed_jaxpr, staged) if staged is not None else None
    self._jitted = _jit(closed_jaxpr, name)
    if self.plan is not None:
      self._jitted_first = _jit(self.plan.first, name + "_stacked")
      self._jitted_forward = (_jit(self.plan.forward, name + "_forward")
                              if self.plan.forward is not None else None)

  def __call__(self, *flat):
    if self.plan is None or any(isinstance(x, _compat.Tracer) for x in flat):
      return self._jitted(*flat)
    return self.finish(self._jitted_first(*flat))

  def finish(self, first_outs, run_forward=None):
    """The program's outputs from ``first``'s (eager) outputs: runs the forward program
    (through ``run_forward(jitted, args)`` when given: the bench times its stages) and
    takes the stacked rows apart."""
    fwd_outs = ()
    if self._jitted_forward is not None:
      args = [first_outs[k] for k in self.plan.forward_src]
      fwd_outs = (run_forward(self._jitted_forward, args) if run_forward is not None
                  else self._jitted_forward(*args))
    need = {}
    for src, k, i in self.plan.outs:
      if src == 0 and i is not None:
        need[k] = max(need.get(k, 0), i + 1)
    split = {k: _rows(first_outs[k], n) for k, n in need.items()}
    return [fwd_outs[k] if src == 1 else first_outs[k] if i is None else split[k][i]
            for src, k, i in self.plan.outs]

  @property
  def eager(self):
    """The jitted program an eager call compiles first (the whole one without a plan)."""
    return self._jitted_first if self.plan is not None else self._jitted

  def lower(self, *flat):
    return self._jitted.lower(*flat)


def _jit(closed_jaxpr, name):
  def run(*flat):
    return _compat.bind_closed(closed_jaxpr, *flat)

  run.__name__ = name
  return jax.jit(run)
