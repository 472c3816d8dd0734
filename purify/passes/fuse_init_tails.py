"""Pass: one elementwise tail for the initializer draws that compute alike.

After fuse-random-bits, init's draws are slices of one threefry hash, and each
draw's initializer still has its own *tail*: the elementwise computation from its
random bits to its values (``uniform`` -> ``erf_inv`` -> ``clip`` -> ``* stddev``
for a truncated normal). XLA on CPU compiles every tail as a kernel of its own,
~100 ms of LLVM each for an ``erf_inv`` tail: most of ResNet-50's init compile. The
tails of different parameter groups are the same operations on arrays of different
shapes, up to a scalar (the standard deviation depends on the fan-in).

This pass (on the init program only) follows each 32-bit draw's *chain*: from
``slice(B, a, b)`` of a fused hash's output ``B`` (``x1 ^ x2``: the bits of every
draw of at most 32 bits), the equations
that are elementwise over the chain's values with scalar other operands (literals
or size-1 values), each the only use of the previous value (reshapes pass
through: the chain works on the flat layout; fuse-random-bits inlines calls of
elementwise bodies such as ``jnp.clip``'s). Draws that are adjacent in the hash
(fuse-random-bits orders each level's draws by their chains, see
:func:`tail_signature`), whose chains are the same operations all along and begin
alike — the same parameters and operand wiring, and scalars of the same value
(compared by value numbering: each group computes ``erf(lower / sqrt 2)`` for
itself, the same value) up to an expensive operation (``erf_inv``, ``log``, ...) —
form a *run* that shares ONE computation on the contiguous slice of the hash that
holds them all:

the whole chain, when the draws differ only in scalars of products (``* stddev``)
not right after another product: such a scalar becomes a vector, each element its
draw's value (a chain of selects on an iota, which XLA fuses). Each draw is then
``reshape(slice(Y, a, b))`` of the shared result ``Y``, with no kernel of its own:
lowering returns ``Y`` once and slices it on the host (ResNet-50's first init
program: 3 kernels instead of ~25, ~0.8 s less compile). A run whose chains cannot
all be shared whole is left as it is (see :func:`_shared_length`: a draw finishing
its chain in a kernel of its own can round differently than without the pass).

Every element goes through the same operations on the same values as before: the
values are bitwise the same (tested against the unfused init).

Before::  t1 = erf_inv(f(slice B 0 4)) * 0.5 ; t2 = erf_inv(f(slice B 4 10)) * 0.3
After::   Y = erf_inv(f(slice B 0 10)) * S ; t1 = reshape(slice Y 0 4) ; t2 = ...
          (S: 0.5 for elements 0-3, 0.3 for 4-9)
"""
from __future__ import annotations

import dataclasses
import functools
import math
import weakref

import jax
import numpy as np
from jax import lax

from purify import _compat
from purify.passes._assemble import insert_blocks, jaxprs_in, remembered, splice
from purify.passes.base import Pass
from purify.passes.split_init import ROWS_CALL


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

  def __init__(self, eqns, outvars, invars=(), numbered=None):
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
    # ``numbered``: another graph's value numbers (``numbers_of``), kept: a number
    # says how a value is computed, still true here for the values both hold
    self._vn: dict = dict(numbered[0]) if numbered else {}
    self._numbers: dict = dict(numbered[1]) if numbered else {}
    # and its chains (``chain``): value -> (size, steps with equations, not indices),
    # still true here for the values both hold (the same equations use them)
    self._chains: dict = dict(numbered[2]) if numbered else {}
    self._index: dict | None = None
    self._params: dict = {}

  def value_number(self, v) -> int:
    """A number equal for two size-1 values computed alike (literals by value):
    each distinct description (operation, parameters, operands' numbers, output
    position, type) gets the next number of this graph."""
    if isinstance(v, _compat.Literal):          # (by its bytes: -0.0 is not 0.0)
      val = np.asarray(v.val)
      return self._number(("lit", _dtype_name(val.dtype), val.shape, val.tobytes()))
    n = self._vn.get(v)
    if n is not None:
      return n
    i = self.producer.get(v)
    if i is None:
      desc = ("in", self.invar_pos.get(v, id(v)))
    else:
      e = self.eqns[i]
      desc = (e.primitive.name, self.params_key(i), tuple(self.value_number(x) for x in e.invars),
              e.outvars.index(v), tuple(v.aval.shape), _dtype_name(v.aval.dtype),
              getattr(v.aval, "weak_type", False))
    n = self._vn[v] = self._number(desc)
    return n

  def number_apart(self, values) -> None:
    """Give each of ``values`` a number of its own (values known to be computed
    differently from one another and from this graph's other values)."""
    for v in values:
      if v not in self._vn:
        self._vn[v] = self._number(("apart", id(v)))

  def _number(self, desc) -> int:
    n = self._numbers.get(desc)
    if n is None:
      n = self._numbers[desc] = len(self._numbers)
    return n

  def params_key(self, i) -> str:
    """Equation ``i``'s parameters as a string (computed once a graph)."""
    k = self._params.get(i)
    if k is None:
      k = self._params[i] = _params_key(self.eqns[i].params)
    return k

  def index_of(self, e):
    """The index of equation ``e`` (None when this graph does not hold it)."""
    if self._index is None:
      self._index = {id(x): i for i, x in enumerate(self.eqns)}
    i = self._index.get(id(e))
    return i if i is not None and self.eqns[i] is e else None

  def only_use(self, v):
    """The equation that is the single use of ``v`` (None if several, or an output)."""
    uses = self.uses.get(v, ())
    if len(uses) != 1 or v in self.is_out:
      return None
    return uses[0]


#: The value numbers and chains worked out while making a program (fuse-random-bits
#: orders draws by their chains, scalars numbered), by that program: fuse-init-tails
#: would follow the same chains and number the same scalars again (half of its time
#: on ResNet-50; then the chains ~30% of what was left).
_NUMBERED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def remember_numbers(closed_jaxpr, g: Graph) -> None:
  """``g``'s value numbers and chains are valid for ``closed_jaxpr``'s values (it
  holds them, and the chains' equations with the same uses)."""
  if g._vn or g._chains:
    _NUMBERED[closed_jaxpr] = (g._vn, g._numbers, g._chains)


def numbers_of(closed_jaxpr):
  return _NUMBERED.get(closed_jaxpr)


#: ``_params_key`` by the parameters' dict (``_assemble.remembered``): an inlined
#: body's equations keep their body's dict, which JAX's tracing cache keeps for the
#: next program with that initializer (``repr`` is ~2-20 us a dict). Not for
#: parameters that hold a sub-program (the table would keep its constants alive).
_PARAMS_KEYS: dict = {}


def _params_key(params) -> str:
  if jaxprs_in(params):
    return _params_text(params)
  return remembered(_PARAMS_KEYS, params, _params_text)


def _params_text(params) -> str:
  return ";".join(f"{k}={params[k]!r}" for k in sorted(params))


_DTYPE_NAMES: dict = {}


def _dtype_name(dtype) -> str:
  """``str(dtype)``, cached (numpy's is ~2 us a call)."""
  name = _DTYPE_NAMES.get(dtype)
  if name is None:
    name = _DTYPE_NAMES[dtype] = str(dtype)
  return name


def chain(g: Graph, v, size: int):
  """The chain from ``v`` (``size`` elements): ``[(eqn index, descriptor, input,
  scalars)]`` of the elementwise equations, ``input`` the chain's value they take
  (reshapes pass through, with descriptor None). The descriptor is ``(operation,
  its parameters, where the chain's value and the scalars go (x / s:dtype), result
  dtype)``; ``scalars`` are
  the other operands' value numbers (two draws' steps compute alike when both
  match). Chains are remembered by their first value (``Graph._chains``): a chain
  from a draw that fuse-random-bits followed is not followed again here."""
  start, out = v, []
  while True:
    known = g._chains.get(v)
    if known is not None and known[0] == size:
      rest = [(g.index_of(e), d, x, sc) for e, d, x, sc in known[1]]
      if all(i is not None for i, _, _, _ in rest):
        out += rest
        break
    step = _step(g, v, size)
    if step is None:
      break
    out.append(step)
    v = g.eqns[step[0]].outvars[0]
  g._chains[start] = (size, [(g.eqns[i], d, x, sc) for i, d, x, sc in out])
  return out


def _step(g: Graph, v, size: int):
  """The chain's step from ``v`` (see :func:`chain`), or None where it ends."""
  i = g.only_use(v)
  if i is None:
    return None
  e = g.eqns[i]
  if len(e.outvars) != 1 or _size(e.outvars[0].aval) != size:
    return None
  name = e.primitive.name
  if name == "reshape" and e.invars[0] is v:
    return (i, None, v, ())
  if name not in ELEMENTWISE or e.effects:
    return None
  pattern, scalars = [], []
  for x in e.invars:
    if x is v:
      pattern.append("x")
    elif isinstance(x, _compat.Literal) or _size(x.aval) == 1:
      pattern.append("s:" + _dtype_name(x.aval.dtype))
      scalars.append(g.value_number(x))
    else:
      return None
  desc = (name, g.params_key(i), tuple(pattern), _dtype_name(e.outvars[0].aval.dtype))
  return (i, desc, v, tuple(scalars))


def tail_signature(g: Graph, v) -> tuple:
  """The descriptors of the chain from draw result ``v`` (fuse-random-bits orders a
  level's draws by it, so draws whose chains have the same operations are
  adjacent)."""
  return tuple((d, sc) for _, d, _, sc in chain(g, v, _size(v.aval)) if d is not None)


def _source(g: Graph, e):
  """``(hash eqn index, start, stop)`` when ``e`` is ``slice(B, start, stop)`` of a
  fused hash's one output ``B = x1 ^ x2`` (the bits of a draw of at most 32 bits),
  else None."""
  if e.primitive is not lax.slice_p or len(e.invars) != 1 or len(e.invars[0].aval.shape) != 1:
    return None
  if e.params["strides"] not in (None, (1,)):
    return None
  h = g.producer.get(e.invars[0]) if isinstance(e.invars[0], _compat.Var) else None
  if h is None:
    return None
  if not _is_hash(g.eqns[h]):
    return None
  (a,), (b,) = e.params["start_indices"], e.params["limit_indices"]
  return h, int(a), int(b)


def _is_hash(e) -> bool:
  """``e`` is a fused hash with one output (``x1 ^ x2``: the bits of 32-bit draws)."""
  return (e.primitive is _compat.jit_p and len(e.outvars) == 1
          and e.params.get("name") == "threefry2x32")


def _only_returned(g: Graph, v, depth=0) -> bool:
  """``v`` (a draw's value at the end of its chain) is returned by init and computed
  with nothing else: an output, or taken apart into rows or reshaped, and those
  returned. A value that goes on into arithmetic is not shared: XLA would fuse the
  chain's last step with it (``x * sqrt2 + u`` into one FMA), differently once the
  chain is computed apart (``normal() + uniform()``: one ulp off; measured)."""
  if v in g.is_out:
    return True
  uses = g.uses.get(v, ())
  if not uses or depth > 4:
    return False
  for i in uses:
    e = g.eqns[i]
    if e.primitive is _compat.jit_p and e.params.get("name") == ROWS_CALL:
      continue
    if e.primitive is lax.reshape_p and _only_returned(g, e.outvars[0], depth + 1):
      continue
    return False
  return True


def _descs(draw):
  """The draw's steps as ``(descriptor, scalars)``: equal when computed alike."""
  return [(d, sc) for _, d, _, sc in draw[4] if d is not None]


def _common(descs) -> int:
  """Length of the common prefix of descriptor lists."""
  n = min(len(d) for d in descs)
  for k in range(n):
    if any(d[k] != descs[0][k] for d in descs[1:]):
      return k
  return n


def _worth(prefix) -> int:
  """The prefix cut after its last expensive operation (0: not worth sharing)."""
  last = [k for k, (d, _) in enumerate(prefix) if d[0] in EXPENSIVE]
  return last[-1] + 1 if last else 0


#: Where the draws of a run differ only in a scalar operand of one of these steps
#: (the standard deviation of ``* stddev``), the shared computation can go on with
#: that operand as a vector (each element its draw's scalar). Not an operand of an
#: addition: XLA CPU may contract a product and a sum into one FMA differently when
#: an operand is a vector than when it is a constant.
SPREADABLE = frozenset({"mul"})

#: At most this many draws share one computation: a spread scalar is a select an
#: element a draw (the next draws start a run of their own).
MAX_RUN = 64


def _shared_length(descs) -> int:
  """How many steps a run shares: the steps computed alike, then those alike but for
  a spreadable scalar — when that covers every draw's whole chain (each draw is then
  a slice of the shared result, with no kernel of its own: lowering returns the
  shared result once and slices it on the host); else 0, nothing. A run cut short
  leaves each draw to finish its chain in a kernel of its own, where XLA folds and
  contracts the draw's constants with what the kernel holds, differently than
  without the pass (``normal(stddev)``: ``erf_inv(u) * sqrt2 * stddev`` shared up to
  erf_inv came out one ulp off; measured). For the same reason no scalar right after
  a product or quotient by a scalar is spread."""
  k = _common(descs)
  if not _worth(descs[0][:k]):
    return 0
  n = max(len(d) for d in descs)
  op = lambda step: step[0][0]  # noqa: E731
  while k < n and all(len(d) > k and d[k][0] == descs[0][k][0] for d in descs):
    if any(d[k][1] != descs[0][k][1] for d in descs[1:]) and (
        op(descs[0][k]) not in SPREADABLE or (k > 0 and op(descs[0][k - 1]) in ("mul", "div"))):
      break
    k += 1
  return k if all(len(d) == k for d in descs) else 0


def fuse_tails(closed_jaxpr):
  """``closed_jaxpr`` with alike draw tails sharing one computation (see the module
  docstring); the same object when there is nothing to share."""
  j = _compat.open_of(closed_jaxpr)
  if j.effects:
    return closed_jaxpr
  eqns = list(j.eqns)
  # a run is two slices of one hash at least: none, nothing to do (no graph to build)
  bits = {e.outvars[0] for e in eqns if _is_hash(e)}
  slices = [i for i, e in enumerate(eqns) if e.primitive is lax.slice_p
            and isinstance(e.invars[0], _compat.Var) and e.invars[0] in bits]
  sliced: dict = {}
  for i in slices:
    sliced[eqns[i].invars[0]] = sliced.get(eqns[i].invars[0], 0) + 1
  if all(n < 2 for n in sliced.values()):
    return closed_jaxpr
  g = Graph(eqns, j.outvars, j.invars, numbered=numbers_of(closed_jaxpr))
  draws = []              # (hash eqn, start, stop, slice eqn, chain steps), eqn indices
  for i in slices:        # (only the slices of a hash can start a draw's chain)
    e = eqns[i]
    src = _source(g, e) if sliced[e.invars[0]] > 1 else None
    if src is not None:
      steps = chain(g, e.outvars[0], src[2] - src[1])
      end = g.eqns[steps[-1][0]].outvars[0] if steps else e.outvars[0]
      if _only_returned(g, end):
        draws.append(src + (i, steps))
  draws.sort(key=lambda d: (d[0], d[1]))
  runs, cur, common = [], [], 0     # common: the length of cur's common prefix
  for d in draws:
    if cur and d[0] == cur[-1][0] and d[1] == cur[-1][2]:
      first, mine = _descs(cur[0]), _descs(d)
      k = min(common, _common([first, mine]))
      # the same operations all along (then each draw can be a part of the shared
      # result, see _shared_length), alike up to an expensive one
      if (len(cur) < MAX_RUN and [s for s, _ in mine] == [s for s, _ in first]
          and _worth(first[:k])):
        cur.append(d)
        common = k
        continue
    if len(cur) > 1:
      runs.append(cur)
    cur, common = [d], len(_descs(d))
  if len(cur) > 1:
    runs.append(cur)
  if not runs:
    return closed_jaxpr
  drop, new = set(), []
  for run in runs:
    length = _shared_length([_descs(x) for x in run])
    if length:
      new.append(_shared(g, run, length, drop))
  if not new:
    return closed_jaxpr
  return _compat.replace_jaxpr(closed_jaxpr, eqns=insert_blocks(eqns, new, drop))


def _eqn(like, prim, ins, outs, **params):
  return like.replace(primitive=prim, params=params, invars=list(ins), outvars=list(outs))


def _shared(g, run, length, drop):
  """The equations that compute ``run``'s common ``length``-step prefix once and give
  each draw its part (scalars that differ between the draws become a vector, see
  :func:`_spread`); the equations they replace are added to ``drop``."""
  hash_eqn = g.eqns[run[0][0]]
  start, stop = run[0][1], run[-1][2]
  first_slice = g.eqns[run[0][3]]             # (the first draw's slice: its eqn context)
  n = stop - start
  var = lambda aval, shape: _compat.Var(aval.update(shape=shape))  # noqa: E731
  x = var(hash_eqn.outvars[0].aval, (n,))
  out = [_eqn(first_slice, lax.slice_p, [hash_eqn.outvars[0]], [x], start_indices=(start,),
              limit_indices=(stop,), strides=None)]
  steps = [[s for s in d[4] if s[1] is not None][:length] for d in run]
  sizes = [b - a for _, a, b, _, _ in run]
  for k, (i, _, v, scalars) in enumerate(steps[0]):
    e = g.eqns[i]
    ins, pos = [], 0
    for a in e.invars:
      if a is v:
        ins.append(x)
        continue
      if any(st[k][3][pos] != scalars[pos] for st in steps[1:]):
        # the draws' values differ (a standard deviation): one value an element
        operands = [_scalar_operand(g.eqns[st[k][0]], st[k][2], pos) for st in steps]
        ins.append(_spread(g, out, e, operands, sizes))
      elif isinstance(a, _compat.Literal) or not a.aval.shape:
        ins.append(a)
      else:                                   # a size-1 array: as shape (1,)
        r = var(a.aval, (1,))
        out.append(_eqn(e, lax.reshape_p, [a], [r], new_sizes=(1,), dimensions=None,
                        sharding=None))
        ins.append(r)
      pos += 1
    y = var(e.outvars[0].aval, (n,))
    out.append(e.replace(invars=ins, outvars=[y]))
    x = y
  # each draw: its part of the shared result, bound to its own chain's variable
  for _, a, b, slice_at, steps in run:
    last = [i for i, d, _, _ in steps if d is not None][length - 1]
    target = g.eqns[last].outvars[0]
    # its own steps up to there each had the previous one as their only use: gone
    drop.add(slice_at)
    drop.update(i for i, _, _, _ in steps[:[i for i, _, _, _ in steps].index(last)])
    part = var(x.aval, (b - a,))
    out.append(_eqn(first_slice, lax.slice_p, [x], [part], start_indices=(a - start,),
                    limit_indices=(b - start,), strides=None))
    out.append(_eqn(first_slice, lax.reshape_p, [part], [target],
                    new_sizes=tuple(target.aval.shape), dimensions=None, sharding=None))
    drop.add(last)
  return out


def _scalar_operand(e, v, pos):
  """The ``pos``-th operand of ``e`` other than the chain's value ``v``."""
  return [a for a in e.invars if a is not v][pos]


def _spread(g, out, like, operands, sizes):
  """A vector holding ``operands[d]`` (size-1 values) ``sizes[d]`` times each, in
  order; appends its equations to ``out``. Elementwise (:func:`_spread_jaxpr`), so
  XLA fuses it into its consumer (a concatenation of broadcasts would be a kernel a
  piece on CPU); consecutive draws with the same value share a segment."""
  merged = []                       # [operand, elements]
  for a, m in zip(operands, sizes):
    if merged and g.value_number(a) == g.value_number(merged[-1][0]):
      merged[-1][1] += m
    else:
      merged.append([a, m])
  dtype = np.dtype(operands[0].aval.dtype)
  scalars = []
  for a, _ in merged:
    if not isinstance(a, _compat.Literal) and a.aval.shape:
      r = _compat.Var(a.aval.update(shape=(), weak_type=False))
      out.append(_eqn(like, lax.reshape_p, [a], [r], new_sizes=(), dimensions=None,
                      sharding=None))
      a = r
    scalars.append(a)
  helper = _spread_jaxpr(tuple(m for _, m in merged), dtype)
  vec = _compat.Var(_compat.open_of(helper).outvars[0].aval)
  out.extend(splice(helper, scalars, [vec], like))
  return vec


def _by_segment(sizes, scalars):
  """Over ``sum(sizes)`` elements in consecutive segments of ``sizes``: the vector
  holding each element's segment's scalar. One compare and a select a segment,
  elementwise: XLA fuses it into its consumer (a concatenation of broadcasts is a
  kernel a piece on CPU). The segments' starts pass through an
  ``optimization_barrier``: XLA would fold a compare of an iota with constants into
  a constant array."""
  n = sum(sizes)
  i = lax.iota(np.uint32, n)
  vec = lax.broadcast(scalars[0], (n,))
  bounds = (lax.optimization_barrier(tuple(np.cumsum(sizes[:-1]).astype(np.uint32)))
            if len(sizes) > 1 else ())
  for x, b in zip(scalars[1:], bounds):
    vec = lax.select(lax.ge(i, lax.broadcast(b, (n,))), lax.broadcast(x, (n,)), vec)
  return vec


@functools.lru_cache(maxsize=256)
def _spread_jaxpr(sizes, dtype):
  """``fn(*scalars)``: scalar ``d`` repeated ``sizes[d]`` times (``_by_segment``)."""
  def fn(*scalars):
    return _by_segment(sizes, scalars)
  cj = jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct((), dtype)] * len(sizes))
  if _compat.consts_of(cj) or _compat.open_of(cj).constvars:
    raise AssertionError("purify internal: the spread helper has consts")
  return cj


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
