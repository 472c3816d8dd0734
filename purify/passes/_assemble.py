"""Helpers shared by the threading passes at the top level of a program."""
from __future__ import annotations

from purify import _compat
from purify import effects as fx
from purify import errors

_ROLE_RANK = {"param": 0, "rng": 1, "state": 2, "arg": 3}
_OUT_RANK = {"out": 0, "state": 1, "state_first": 2}


def _role_of(ch):
  if ch[0] == "rng":
    return ("rng",)
  return (ch[0], (ch[1], ch[2]))


def assemble_top(program, t, rw, worker, *, in_channels, out_channels, first_values=None):
  """Finish the top-level rewrite: channel inputs become program inputs (with roles),
  written channels program outputs. ``in_channels`` / ``out_channels`` are channels
  that get an input / output even if unused (declaration order)."""
  # channels that are already program inputs/outputs (a pass run twice) stay as they are
  have_in, have_out = set(program.in_roles), set(program.out_roles)
  chans_in = [c for c in dict.fromkeys(list(in_channels) + t.ins) if _role_of(c) not in have_in]
  chans_out = [c for c in dict.fromkeys(list(out_channels) + t.outs) if _role_of(c) not in have_out]
  A = worker.channel_aval
  ins = [(_role_of(c), t.chan_in(c, A(c))) for c in chans_in]
  ins += list(zip(program.in_roles, t.orig_in))
  ins.sort(key=lambda rv: _ROLE_RANK[rv[0][0]])
  outs = list(zip(program.out_roles, t.orig_out))
  outs += [(_role_of(c), t.chan_out(c, A(c))) for c in chans_out]
  for c, v in (first_values or {}).items():
    outs.append((("state_first", (c[1], c[2])), v))
  outs.sort(key=lambda rv: _OUT_RANK[rv[0][0]])
  j = t.finish([v for _, v in ins], [v for _, v in outs])
  return program.replace(jaxpr=j, in_roles=tuple(r for r, _ in ins),
                         out_roles=tuple(r for r, _ in outs))


_JAXPR_TYPES = frozenset(_compat.JAXPR_TYPES)


def jaxprs_in(params) -> list:
  """The jaxprs among an equation's ``params`` (a scan's body, cond's branches...).
  Exact type tests: this runs on every equation of every walk."""
  out = []
  for v in params.values():
    t = type(v)
    if t in _JAXPR_TYPES:
      out.append(v)
    elif t is tuple and v and type(v[0]) in _JAXPR_TYPES:   # cond's branches
      out.extend(v)
  return out


def map_sub_jaxprs(eqn, fn):
  """``eqn`` with ``fn`` applied to each jaxpr in its params (``eqn`` itself when
  ``fn`` changes none)."""
  new = {}
  for k, v in eqn.params.items():
    if isinstance(v, _compat.JAXPR_TYPES):
      nv = fn(v)
      if nv is not v:
        new[k] = nv
    elif type(v) is tuple and v and isinstance(v[0], _compat.JAXPR_TYPES):
      nv = tuple(fn(x) for x in v)
      if any(a is not b for a, b in zip(nv, v)):
        new[k] = nv
  return eqn.replace(params=dict(eqn.params, **new)) if new else eqn


def remembered(table: dict, x, fn, limit: int = 8192):
  """``fn(x)``, remembered in ``table`` by ``x``'s identity for objects that do not
  hash or hash slowly (an equation, a literal, a parameters dict). The entry holds
  ``x``, so its ``id`` is not reused while remembered; the table is emptied at
  ``limit`` entries. The caller keeps out objects whose life it must not extend (one
  holding a sub-program holds its constants)."""
  hit = table.get(id(x))
  if hit is not None and hit[0] is x:
    return hit[1]
  value = fn(x)
  if len(table) >= limit:
    table.clear()
  table[id(x)] = (x, value)
  return value


def iter_eqns(jaxpr):
  """Every equation of ``jaxpr`` and of its sub-jaxprs, recursively (a list, in no
  particular order; iterative — these walks run on every program)."""
  out = []
  open_of = _compat.open_of
  stack = [open_of(jaxpr)]
  while stack:
    eqns = stack.pop().eqns
    out.extend(eqns)
    for e in eqns:
      stack.extend(open_of(j) for j in jaxprs_in(e.params))
  return out


def no_effect_postcondition(program, effect_types, prims, pass_name):
  for _, j in program.jaxprs():
    if fx.has_effect(_compat.open_of(j).effects, effect_types):
      raise errors.PipelineError(f"after {pass_name}: the program still has effects "
                                 f"{_compat.open_of(j).effects}")
    for e in iter_eqns(j):
      if e.primitive in prims or fx.has_effect(e.effects, effect_types):
        raise errors.PipelineError(f"after {pass_name}: equation {e.primitive.name} "
                                   f"still carries {e.effects}")


def splice(helper, ins, targets, like):
  """``helper``'s equations on ``ins``, its outputs bound to ``targets``."""
  h = _compat.open_of(helper)
  env = dict(zip(h.invars, ins))
  out_map = dict(zip(h.outvars, targets))
  eqns = []
  for e in h.eqns:
    outs = [out_map.get(v) or _compat.Var(v.aval) for v in e.outvars]
    env.update(zip(e.outvars, outs))
    eqns.append(_compat.with_eqn_ctx(
        e, like, invars=[v if isinstance(v, _compat.Literal) else env[v] for v in e.invars],
        outvars=outs))
  return eqns


def insert_blocks(eqns, blocks, removed=()):
  """``eqns`` without the equations at the indices ``removed``, with each of
  ``blocks`` (a list of equations in order, producers before their consumers in
  the list of blocks too) put where all its operands are defined and before the first
  use of its results; :func:`toposort` of it all when some block has no such place.
  The fusing passes replace a few equations by a block each: a lookup an operand,
  not the whole program ordered again."""
  Literal = _compat.Literal
  removed = set(removed)
  defpos: dict = {}
  for i, e in enumerate(eqns):
    if i not in removed:
      for v in e.outvars:
        defpos[v] = i
  owner: dict = {}                       # var -> the block that defines it
  for b, block in enumerate(blocks):
    for e in block:
      for v in e.outvars:
        owner[v] = b
  at = []
  for b, block in enumerate(blocks):
    p = 0
    for e in block:
      for v in e.invars:
        if isinstance(v, Literal):
          continue
        o = owner.get(v)
        if o is None:
          p = max(p, defpos.get(v, -1) + 1)
        elif o != b:
          if o > b:                        # (a block listed before its producer)
            return toposort(_flat(eqns, blocks, removed))
          p = max(p, at[o])
    at.append(p)
  first_use = [len(eqns)] * len(blocks)
  for i, e in enumerate(eqns):
    if i in removed:
      continue
    for v in e.invars:
      if not isinstance(v, Literal):
        o = owner.get(v)
        if o is not None and i < first_use[o]:
          first_use[o] = i
  if any(p > u for p, u in zip(at, first_use)):
    return toposort(_flat(eqns, blocks, removed))
  before: dict = {}
  for b, p in enumerate(at):
    before.setdefault(p, []).append(b)
  out = []
  for i, e in enumerate(eqns):
    for b in before.get(i, ()):
      out.extend(blocks[b])
    if i not in removed:
      out.append(e)
  for b in before.get(len(eqns), ()):
    out.extend(blocks[b])
  return out


def _flat(eqns, blocks, removed):
  return [e for i, e in enumerate(eqns) if i not in removed] + [e for b in blocks for e in b]


def toposort(eqns):
  """``eqns`` in an order where every operand is defined before its use: list order,
  except that an equation with an operand not yet defined waits, and follows the
  equation that defines the last of them (one pass; the list as it is when nothing
  waits)."""
  produced = set()
  for e in eqns:
    produced.update(e.outvars)
  defined: set = set()
  waiting: dict = {}                 # var -> indices of the equations waiting for it
  missing = {}                       # index -> how many operands it still waits for
  out = []
  for i, e in enumerate(eqns):
    need = {v for v in e.invars if not isinstance(v, _compat.Literal)
            and v in produced and v not in defined}
    if need:
      missing[i] = len(need)
      for v in need:
        waiting.setdefault(v, []).append(i)
      continue
    ready = [i]
    while ready:
      k = ready.pop()
      out.append(eqns[k])
      for v in eqns[k].outvars:
        defined.add(v)
        for w in reversed(waiting.pop(v, ())):
          missing[w] -= 1
          if not missing[w]:
            ready.append(w)
  if len(out) != len(eqns):
    raise AssertionError("purify internal: equations that wait on each other (a cycle)")
  return out


def resized(closed_jaxpr, n: int):
  """``closed_jaxpr``, an elementwise program over vectors of one length (every
  value a vector of that length or a scalar; no parameter that holds a shape), on
  vectors of length ``n``: the same equations on new variables. A helper's body is
  written from ONE traced template this way instead of being traced again for each
  length (``jax.jit`` tracing the unrolled threefry hash anew: ~10-15 ms; this: ~2)."""
  j = _compat.open_of(closed_jaxpr)
  env: dict = {}

  def new(v):
    shape = tuple(v.aval.shape)
    if len(shape) > 1:
      raise AssertionError(f"purify internal: resized() of a {v.aval.str_short()} value")
    w = _compat.Var(v.aval.update(shape=(n,)) if shape else v.aval)
    env[v] = w
    return w
  invars = [new(v) for v in j.invars]
  eqns = []
  for e in j.eqns:
    if any(type(p) is tuple for p in e.params.values()):
      raise AssertionError(f"purify internal: resized() of {e.primitive.name} (a shape parameter)")
    eqns.append(e.replace(invars=[v if isinstance(v, _compat.Literal) else env[v] for v in e.invars],
                          outvars=[new(v) for v in e.outvars]))
  outvars = [v if isinstance(v, _compat.Literal) else env[v] for v in j.outvars]
  return _compat.replace_jaxpr(closed_jaxpr, invars=invars, outvars=outvars, eqns=eqns)
