"""Pass: one elementwise tail for the initializer draws that compute alike.

After fuse-random-bits, init's draws are slices of one threefry hash, and each
draw's initializer still has its own *tail*: the elementwise computation from its
random bits to its values (``uniform`` -> ``erf_inv`` -> ``clip`` -> ``* stddev``
for a truncated normal). XLA on CPU compiles every tail as a kernel of its own,
~100 ms of LLVM each for an ``erf_inv`` tail: most of ResNet-50's init compile. The
tails of different parameter groups are the same operations on arrays of different
shapes, up to a scalar (the standard deviation depends on the fan-in).

This pass (on the init program only) follows each 32-bit draw's *chain*: from
``xor(slice(B1, a, b), slice(B2, a, b))`` of a fused hash's outputs, the equations
that are elementwise over the chain's values with scalar other operands (literals
or size-1 values), each the only use of the previous value (reshapes pass
through: the chain works on the flat layout). Draws that are adjacent in the hash
(fuse-random-bits orders each level's draws by their chains, see
:func:`tail_signature`) and whose chains begin alike — the same primitives and
parameters, the same operand wiring, and scalars of the same value (compared by
value numbering: each group computes ``erf(lower / sqrt 2)`` for itself, the same
value) — share ONE computation of that common prefix, on the contiguous slice of
the hash that holds them all, when the prefix contains an expensive operation
(``erf_inv``, ``log``, ...). Each draw then takes its part of the shared result
(``reshape(slice(Y, a, b))``) and finishes its own chain (its ``* stddev``). Every
element goes through the same operations on the same constants as before: the
values are bitwise the same (tested against the unfused init).

Before::  t1 = erf_inv(f(xor(slice B1 0 4, slice B2 0 4))) * 0.5 ; t2 = erf_inv(f(xor(slice B1 4 10, ...))) * 0.3
After::   Y = erf_inv(f(xor(slice B1 0 10, slice B2 0 10))) ; t1 = reshape(slice Y 0 4) * 0.5 ; t2 = ... * 0.3
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from jax import lax

from purify import _compat
from purify.passes.base import Pass


#: Elementwise primitives a chain may go through (all operands broadcast alike).
ELEMENTWISE = frozenset("""
  add sub mul div max min neg abs sign floor ceil round exp exp2 log log1p expm1 sqrt
  rsqrt cbrt tanh logistic erf erfc erf_inv sin cos tan asin acos atan sinh cosh asinh
  acosh atanh pow integer_pow square nextafter and or xor not shift_left
  shift_right_logical shift_right_arithmetic convert_element_type bitcast_convert_type
  select_n clamp is_finite eq ne lt le gt ge copy copy_p reduce_precision
""".split())

#: A shared prefix is worth it only if it holds one of these (each costs tens of ms
#: of XLA CPU compile per kernel; a chain of cheap operations is not worth a slice).
EXPENSIVE = frozenset("erf_inv erf erfc exp exp2 log log1p expm1 tanh logistic pow "
                      "sin cos tan asin acos atan sinh cosh asinh acosh atanh".split())


def _size(aval) -> int:
  return math.prod(aval.shape)


class Graph:
  """Producers and uses of a flat equation list (top level of one jaxpr)."""

  def __init__(self, eqns, outvars, invars=()):
    self.eqns = eqns
    self.producer = {}
    self.uses: dict = {}
    for i, e in enumerate(eqns):
      for v in e.outvars:
        if not isinstance(v, _compat.DropVar):
          self.producer[v] = i
      for v in e.invars:
        if isinstance(v, _compat.Var):
          self.uses.setdefault(v, []).append(i)
    self.is_out = {v for v in outvars if isinstance(v, _compat.Var)}
    self.invar_pos = {v: n for n, v in enumerate(invars)}
    self._vn: dict = {}

  def value_number(self, v) -> str:
    """A string equal for two size-1 values computed alike (literals by value)."""
    if isinstance(v, _compat.Literal):
      return f"lit:{np.asarray(v.val).dtype}:{np.asarray(v.val).tolist()!r}"
    if v in self._vn:
      return self._vn[v]
    i = self.producer.get(v)
    if i is None:
      out = f"in:{self.invar_pos.get(v, id(v))}"
    else:
      e = self.eqns[i]
      ins = ",".join(self.value_number(x) for x in e.invars)
      out = (f"{e.primitive.name}[{_params_key(e.params)}]({ins})#{e.outvars.index(v)}"
             f":{v.aval.str_short()}")
    self._vn[v] = out
    return out

  def only_use(self, v):
    """The equation that is the single use of ``v`` (None if several, or an output)."""
    uses = self.uses.get(v, ())
    if len(uses) != 1 or v in self.is_out:
      return None
    return uses[0]


def _params_key(params) -> str:
  return ";".join(f"{k}={params[k]!r}" for k in sorted(params))


def chain(g: Graph, v, size: int):
  """The chain from ``v`` (``size`` elements): ``[(eqn index, descriptor, input)]``
  of the elementwise equations, ``input`` the chain's value they take (reshapes
  pass through, with descriptor None)."""
  out = []
  while True:
    i = g.only_use(v)
    if i is None:
      return out
    e = g.eqns[i]
    if len(e.outvars) != 1 or _size(e.outvars[0].aval) != size:
      return out
    name = e.primitive.name
    if name == "reshape" and e.invars[0] is v:
      out.append((i, None, v))
      v = e.outvars[0]
      continue
    if name not in ELEMENTWISE or e.effects:
      return out
    pattern = []
    for x in e.invars:
      if x is v:
        pattern.append("x")
      elif isinstance(x, _compat.Literal) or _size(x.aval) == 1:
        pattern.append(g.value_number(x))
      else:
        return out
    desc = f"{name}[{_params_key(e.params)}]({'|'.join(pattern)})->{e.outvars[0].aval.dtype}"
    out.append((i, desc, v))
    v = e.outvars[0]


def tail_signature(g: Graph, v) -> tuple:
  """The descriptors of the chain from draw result ``v`` (fuse-random-bits orders a
  level's draws by it, so draws whose chains begin alike are adjacent)."""
  return tuple(d for _, d, _ in chain(g, v, _size(v.aval)) if d is not None)


def _source(g: Graph, e):
  """``(hash eqn index, start, stop)`` when ``e`` is ``xor(slice(B1), slice(B2))`` of
  one fused hash's two outputs over the same range (a 32-bit draw), else None."""
  if e.primitive.name != "xor" or len(e.invars) != 2:
    return None
  sl = []
  for x in e.invars:                   # each operand: slice(B), maybe reshaped
    i = g.producer.get(x) if isinstance(x, _compat.Var) else None
    if i is not None and g.eqns[i].primitive is lax.reshape_p:
      x = g.eqns[i].invars[0]
      i = g.producer.get(x) if isinstance(x, _compat.Var) else None
    if i is None or g.eqns[i].primitive is not lax.slice_p:
      return None
    sl.append(g.eqns[i])
  if any(s.params["strides"] not in (None, (1,)) or len(s.invars[0].aval.shape) != 1 for s in sl):
    return None
  (a1,), (b1,) = sl[0].params["start_indices"], sl[0].params["limit_indices"]
  if (sl[1].params["start_indices"], sl[1].params["limit_indices"]) != ((a1,), (b1,)):
    return None
  h = [g.producer.get(s.invars[0]) for s in sl]
  if h[0] is None or h[0] != h[1]:
    return None
  he = g.eqns[h[0]]
  if not (he.primitive is _compat.jit_p and he.params.get("name") == "threefry2x32"
          and [s.invars[0] for s in sl] == list(he.outvars)):
    return None
  return h[0], int(a1), int(b1)


def _descs(draw):
  return [d for _, d, _ in draw[4] if d is not None]


def _common(descs) -> int:
  """Length of the common prefix of descriptor lists."""
  n = min(len(d) for d in descs)
  for k in range(n):
    if any(d[k] != descs[0][k] for d in descs[1:]):
      return k
  return n


def _worth(prefix) -> int:
  """The prefix cut after its last expensive operation (0: not worth sharing)."""
  last = [k for k, d in enumerate(prefix) if d.split("[", 1)[0] in EXPENSIVE]
  return last[-1] + 1 if last else 0


def fuse_tails(closed_jaxpr):
  """``closed_jaxpr`` with alike draw tails sharing one computation (see the module
  docstring); the same object when there is nothing to share."""
  j = _compat.open_of(closed_jaxpr)
  if j.effects:
    return closed_jaxpr
  eqns = list(j.eqns)
  g = Graph(eqns, j.outvars, j.invars)
  draws = []              # (hash eqn, start, stop, xor eqn, chain steps), eqn indices
  for i, e in enumerate(eqns):
    src = _source(g, e)
    if src is not None:
      steps = chain(g, e.outvars[0], src[2] - src[1])
      draws.append(src + (i, steps))
  draws.sort(key=lambda d: (d[0], d[1]))
  runs, cur = [], []
  for d in draws:
    if cur and d[0] == cur[-1][0] and d[1] == cur[-1][2]:
      descs = [_descs(x) for x in cur + [d]]
      if _worth(descs[0][:_common(descs)]):
        cur.append(d)
        continue
    if len(cur) > 1:
      runs.append(cur)
    cur = [d]
  if len(cur) > 1:
    runs.append(cur)
  if not runs:
    return closed_jaxpr
  drop, new = set(), []
  for run in runs:
    descs = [_descs(x) for x in run]
    length = _worth(descs[0][:_common(descs)])
    new.extend(_shared(g, run, length, drop))
  kept = [e for i, e in enumerate(eqns) if i not in drop]
  from purify.passes.fuse_random_bits import _toposort   # (that module imports this one)
  return _compat.replace_jaxpr(closed_jaxpr, eqns=_toposort(kept + new))


def _eqn(like, prim, ins, outs, **params):
  return like.replace(primitive=prim, params=params, invars=list(ins), outvars=list(outs))


def _shared(g, run, length, drop):
  """The equations that compute ``run``'s common ``length``-step prefix once and give
  each draw its part; the equations they replace are added to ``drop``."""
  hash_eqn = g.eqns[run[0][0]]
  start, stop = run[0][1], run[-1][2]
  xor_eqn = g.eqns[run[0][3]]
  n = stop - start
  var = lambda aval, shape: _compat.Var(aval.update(shape=shape))  # noqa: E731
  out, halves = [], []
  for b in hash_eqn.outvars:
    v = var(b.aval, (n,))
    out.append(_eqn(xor_eqn, lax.slice_p, [b], [v], start_indices=(start,),
                    limit_indices=(stop,), strides=None))
    halves.append(v)
  x = var(xor_eqn.outvars[0].aval, (n,))
  out.append(xor_eqn.replace(invars=halves, outvars=[x]))
  for i, _, v in [s for s in run[0][4] if s[1] is not None][:length]:
    e = g.eqns[i]
    ins = []
    for a in e.invars:
      if a is v:
        ins.append(x)
      elif isinstance(a, _compat.Literal) or not a.aval.shape:
        ins.append(a)
      else:                                   # a size-1 array: as shape (1,)
        r = var(a.aval, (1,))
        out.append(_eqn(e, lax.reshape_p, [a], [r], new_sizes=(1,), dimensions=None,
                        sharding=None))
        ins.append(r)
    y = var(e.outvars[0].aval, (n,))
    out.append(e.replace(invars=ins, outvars=[y]))
    x = y
  # each draw: its part of the shared result, bound to its own chain's variable
  for _, a, b, _, steps in run:
    last = [i for i, d, _ in steps if d is not None][length - 1]
    target = g.eqns[last].outvars[0]
    part = var(x.aval, (b - a,))
    out.append(_eqn(xor_eqn, lax.slice_p, [x], [part], start_indices=(a - start,),
                    limit_indices=(b - start,), strides=None))
    out.append(_eqn(xor_eqn, lax.reshape_p, [part], [target],
                    new_sizes=tuple(target.aval.shape), dimensions=None, sharding=None))
    drop.add(last)
  return out


@dataclasses.dataclass(frozen=True)
class FuseInitTails(Pass):
  """See the module docstring. ``enabled=False`` keeps the program as it is."""
  name = "fuse_init_tails"
  requires = frozenset({"split"})           # (it finds fuse-random-bits' hashes)
  provides = frozenset({"init_tails_fused"})
  enabled: bool = True

  def run(self, program):
    if not self.enabled or program.init_jaxpr is None:
      return program
    new = fuse_tails(program.init_jaxpr)
    return program if new is program.init_jaxpr else program.replace(init_jaxpr=new)
