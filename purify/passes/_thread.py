"""The threading engine shared by the hoist-params, thread-RNG and thread-state passes.

Each of those passes removes one kind of effect primitive and replaces it by values
*threaded* through the program on named **channels**:

  * ``("param", module, name)`` — read-only: a parameter;
  * ``("rng",)``                 — read-only: the base key of the current loop nest;
  * ``("state", module, name)``  — read-write: the current value of a state.

A :class:`Rewriter` walks one jaxpr's equations (in the style of JAX's
``discharge_state``): a leaf rule (given by the pass) consumes the pass's effect
equations; an equation without the pass's effect is copied; a higher-order
primitive whose sub-jaxprs contain the effect goes to its rule in ``HOP_RULES``
(one per primitive: jit, scan, while, cond/switch, remat, custom_jvp/vjp, the call
primitives). A rule rewrites each sub-jaxpr recursively, which tells it which
channels the sub-jaxpr reads (``ins``) and writes (``outs``), and then wires them:
read-only channels become extra constant inputs, written channels extra carries /
operands and outputs. A missing rule is an error naming the primitive and the pass.

Equations are edited directly (about a microsecond each) rather than re-traced;
small helper computations (key folding, ``arange``) are traced once per shape and
inlined.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from purify import _compat
from purify import effects as fx
from purify import errors

RNG = ("rng",)
HOP_RULES: dict[Any, Callable] = {}


def register_hop_rule(*prims):
  def deco(fn):
    for p in prims:
      HOP_RULES[p] = fn
    return fn
  return deco


# ----------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def helper_jaxpr(fn, *avals):
  """A const-free closed jaxpr of ``fn`` at ``avals`` (cached)."""
  cj = jax.make_jaxpr(fn)(*avals)
  if _compat.consts_of(cj) or _compat.open_of(cj).constvars:
    raise AssertionError(f"purify internal: helper {fn} has consts")
  return cj


@functools.lru_cache(maxsize=None)
def bound(fn, *args):
  """``functools.partial(fn, *args)``, the same object for the same arguments, so
  ``helper_jaxpr`` (cached by its function) traces it once, not once per site
  (a fresh partial never equals another: 334 traces for 333 dropout sites)."""
  return functools.partial(fn, *args)


@functools.lru_cache(maxsize=None)
def _scalar_aval(dtype):
  return _compat.ShapedArray((), dtype)


def literal(value, dtype):
  dtype = np.dtype(dtype)
  return _compat.Literal(dtype.type(value), _scalar_aval(dtype))


@functools.lru_cache(maxsize=None)
def _plan(helper):
  """How to replay ``helper``'s equations (``Rewriter.inline``), worked out once a
  helper: for each equation, where each operand comes from (``("in", k)``, a
  literal, or ``("t", m)`` the m-th value made so far) and its results' avals; and
  where each result of the helper comes from."""
  j = _compat.open_of(helper)
  where = {v: ("in", k) for k, v in enumerate(j.invars)}
  steps, made = [], 0
  for e in j.eqns:
    srcs = tuple(v if isinstance(v, _compat.Literal) else where[v] for v in e.invars)
    for v in e.outvars:
      where[v] = ("t", made)
      made += 1
    steps.append((e, srcs, tuple(v.aval for v in e.outvars)))
  results = tuple(v if isinstance(v, _compat.Literal) else where[v] for v in j.outvars)
  return tuple(steps), results


class Threaded:
  """A rewritten sub-jaxpr before its final wiring.

  ``orig_in`` / ``orig_out``: the original inputs/outputs (renamed). ``in_map``:
  channel -> the Var that carries its incoming value; ``out_map``: channel -> its
  outgoing value. ``index``: a Var the body needs bound to the loop index (set
  when an RNG draw sits in a loop body). ``finish`` builds the final jaxpr.
  """

  def __init__(self, template, orig_in, orig_out, eqns, in_map, out_map, index, effect_types):
    self.template = template
    self.orig_in, self.orig_out = orig_in, orig_out
    self.eqns = eqns
    self.in_map, self.out_map = in_map, out_map
    self.index = index
    self.effect_types = effect_types

  @property
  def ins(self):
    return sorted(self.in_map)

  @property
  def outs(self):
    return sorted(self.out_map)

  def chan_in(self, ch, aval):
    v = self.in_map.get(ch)
    if v is None:
      v = self.in_map[ch] = _compat.Var(aval)
    return v

  def chan_out(self, ch, aval):
    if ch in self.out_map:
      return self.out_map[ch]
    return self.chan_in(ch, aval)          # not written here: pass the value through

  def finish(self, invars, outvars, extra_eqns=()):
    eqns = list(self.eqns) + list(extra_eqns)
    effs = fx.strip_effects(_compat.open_of(self.template).effects, self.effect_types)
    return _compat.replace_jaxpr(self.template, invars=list(invars), outvars=list(outvars),
                                 eqns=eqns, effects=effs)


class Rewriter:
  """Rewrites one jaxpr for one pass (see module docstring)."""

  def __init__(self, pass_, jaxpr, *, loop_body=False, depth=0, where="model"):
    self.pass_ = pass_
    self.jaxpr = _compat.open_of(jaxpr)
    self.template = jaxpr
    self.loop_body = loop_body
    self.depth = depth
    self.where = where
    self.subst: dict = {}
    self.in_map: dict = {}
    self.cur: dict = {}
    self.out_map: dict = {}
    self.eqns: list = []
    self.index = None
    self.first_values: dict = {}

  # -- atoms and channels
  def atom(self, v):
    if isinstance(v, _compat.Literal):
      return v
    return self.subst.get(v, v)

  def read(self, ch):
    if ch in self.cur:
      return self.cur[ch]
    v = self.pass_.first_read(self, ch)
    self.cur[ch] = v
    return v

  def read_as(self, ch, var):
    """Make ``var`` (a leaf equation's result) the value of ``ch`` here: the
    channel's input itself when this is its first read and the pass reads it from
    an input; a substitution otherwise. Binding the leaf's own result saves
    renaming every later use of it (most equations then keep their operands)."""
    if (ch not in self.cur and self.pass_.reads_input(self, ch)
        and not isinstance(var, _compat.DropVar) and var.aval == self.pass_.channel_aval(ch)):
      self.in_map[ch] = self.cur[ch] = var
    else:
      self.subst[var] = self.read(ch)

  def new_input(self, ch):
    v = _compat.Var(self.pass_.channel_aval(ch))
    self.in_map[ch] = v
    return v

  def write(self, ch, value):
    if ch not in self.cur:         # written before read: still carried in
      self.cur[ch] = self.pass_.first_read(self, ch)
    self.cur[ch] = value
    self.out_map[ch] = value

  def emit(self, eqn):
    self.eqns.append(eqn)

  def inline(self, helper, in_atoms, source_info=None, ctx=None, into=None):
    """Append ``helper``'s equations applied to ``in_atoms``; return its outputs.
    ``into``: Vars to hold the helper's results (a leaf equation's own results,
    so nothing needs renaming), where the helper computes them (else they are
    substituted)."""
    steps, results = _plan(helper)
    bind = {}                       # made-value index -> the Var to hold it
    if into is not None:
      for src, v in zip(results, into):
        if type(src) is tuple and src[0] == "t" and src[1] not in bind:
          bind[src[1]] = v
    kw = {}
    if source_info is not None:
      kw["source_info"] = source_info
    if ctx is not None:
      kw["ctx"] = ctx
    made = []
    Var = _compat.Var
    for e, srcs, avals in steps:
      ins = [x if type(x) is not tuple else (in_atoms[x[1]] if x[0] == "in" else made[x[1]])
             for x in srcs]
      outs = []
      for aval in avals:
        b = bind.get(len(made))
        v = b if b is not None and b.aval == aval else Var(aval)
        outs.append(v)
        made.append(v)
      self.eqns.append(e.replace(invars=ins, outvars=outs, **kw))
    res = [x if type(x) is not tuple else (in_atoms[x[1]] if x[0] == "in" else made[x[1]])
           for x in results]
    for v, r in zip(into or (), res):
      if v is not r:
        self.subst[v] = r
    return res

  def sub(self, jaxpr, *, loop_body=False, where=None):
    rw = Rewriter(self.pass_, jaxpr, loop_body=loop_body, depth=self.depth + 1,
                  where=where or self.where)
    return rw.run()

  # -- the walk
  def untouched(self) -> Threaded:
    """The result of ``run`` on a jaxpr without the pass's effects, without the walk."""
    j = self.jaxpr
    return Threaded(self.template, list(j.invars), list(j.outvars), list(j.eqns), {}, {},
                    None, self.pass_.effect_types)

  def run(self) -> Threaded:
    # the hot loop of the three threading passes (every equation of the program):
    # an equation without the pass's effect and without a renamed operand is kept
    # as it is, at the cost of a few attribute reads
    pass_ = self.pass_
    leaf_rules, types = pass_.leaf_rules, pass_.effect_types
    subst, eqns = self.subst, self.eqns
    Literal = _compat.Literal
    for eqn in self.jaxpr.eqns:
      if subst:
        ins = eqn.invars
        invars = [v if isinstance(v, Literal) else subst.get(v, v) for v in ins]
        if any(a is not b for a, b in zip(invars, ins)):
          eqn = eqn.replace(invars=invars)
      effs = eqn.effects
      if not effs or not fx.has_effect(effs, types):
        if eqn.primitive in leaf_rules:
          leaf_rules[eqn.primitive](pass_, self, eqn)
        else:
          eqns.append(eqn)
        continue
      if eqn.primitive in leaf_rules:
        leaf_rules[eqn.primitive](pass_, self, eqn)
        continue
      rule = HOP_RULES.get(eqn.primitive)
      if rule is None:
        raise errors.NoRuleError(errors.NO_RULE.format(
            pass_name=pass_.name, prim=eqn.primitive.name,
            effects=", ".join(sorted(str(e) for e in eqn.effects if fx.is_purify_effect(e)))))
      rule(self, eqn)
    orig_out = [self.atom(v) for v in self.jaxpr.outvars]
    return Threaded(self.template, list(self.jaxpr.invars), orig_out, self.eqns,
                    self.in_map, self.out_map, self.index, pass_.effect_types)


# ----------------------------------------------------------------------------- wiring helpers
def _aval(rw, ch):
  return rw.pass_.channel_aval(ch)


def _new_outs(rw, chans):
  return [_compat.Var(_aval(rw, c)) for c in chans]


def _straight_through(rw, eqn, sub_key, extra_params=None, _sub=None):
  """Rule for call-like primitives whose inputs/outputs map 1:1 to the sub-jaxpr's."""
  t = _sub if _sub is not None else rw.sub(eqn.params[sub_key])
  ins, outs = t.ins, t.outs
  new_sub = t.finish(t.orig_in + [t.chan_in(c, _aval(rw, c)) for c in ins],
                     t.orig_out + [t.chan_out(c, _aval(rw, c)) for c in outs])
  new_outs = _new_outs(rw, outs)
  params = dict(eqn.params, **{sub_key: new_sub})
  if extra_params:
    params.update(extra_params(eqn.params, len(ins), len(outs)))
  rw.emit(eqn.replace(invars=list(eqn.invars) + [rw.read(c) for c in ins],
                      outvars=list(eqn.outvars) + new_outs, params=params,
                      effects=fx.strip_effects(eqn.effects, rw.pass_.effect_types)))
  for c, v in zip(outs, new_outs):
    rw.write(c, v)


def _jit_params(p, n_in, n_out):
  return dict(
      in_shardings=tuple(p["in_shardings"]) + (_compat.UNSPECIFIED,) * n_in,
      out_shardings=tuple(p["out_shardings"]) + (_compat.UNSPECIFIED,) * n_out,
      in_layouts=tuple(p["in_layouts"]) + (None,) * n_in,
      out_layouts=tuple(p["out_layouts"]) + (None,) * n_out,
      donated_invars=tuple(p["donated_invars"]) + (False,) * n_in)


@register_hop_rule(_compat.jit_p)
def _jit_rule(rw, eqn):
  _straight_through(rw, eqn, "jaxpr", _jit_params)


@register_hop_rule(_compat.remat_p)
def _remat_rule(rw, eqn):
  _straight_through(rw, eqn, "jaxpr")


@register_hop_rule(_compat.closed_call_p, _compat.call_p)
def _call_rule(rw, eqn):
  _straight_through(rw, eqn, "call_jaxpr")


if _compat.eval_jaxpr_p not in HOP_RULES:
  @register_hop_rule(_compat.eval_jaxpr_p)
  def _eval_jaxpr_rule(rw, eqn):
    _straight_through(rw, eqn, "jaxpr" if "jaxpr" in eqn.params else "call_jaxpr")


@register_hop_rule(_compat.cond_p)
def _cond_rule(rw, eqn):
  ts = [rw.sub(b) for b in eqn.params["branches"]]
  ins = sorted(set().union(*[t.in_map for t in ts]))
  outs = sorted(set().union(*[t.out_map for t in ts]))
  branches = tuple(
      t.finish(t.orig_in + [t.chan_in(c, _aval(rw, c)) for c in ins],
               t.orig_out + [t.chan_out(c, _aval(rw, c)) for c in outs]) for t in ts)
  new_outs = _new_outs(rw, outs)
  rw.emit(eqn.replace(invars=list(eqn.invars) + [rw.read(c) for c in ins],
                      outvars=list(eqn.outvars) + new_outs,
                      params=dict(eqn.params, branches=branches),
                      effects=fx.strip_effects(eqn.effects, rw.pass_.effect_types)))
  for c, v in zip(outs, new_outs):
    rw.write(c, v)


def _arange(length):
  return jnp.arange(length, dtype=jnp.int32)


def _incr(i):
  return i + 1


_I32 = _compat.ShapedArray((), np.dtype(np.int32))


@register_hop_rule(_compat.scan_p)
def _scan_rule(rw, eqn):
  p = eqn.params
  nc, nk, nx, ny = _compat.scan_counts(p)
  t = rw.sub(p["jaxpr"], loop_body=True, where=rw.where + " > scan")
  carry_ch = t.outs
  const_ch = [c for c in t.ins if c not in t.out_map]
  oi, oo = t.orig_in, t.orig_out
  body_in = (oi[:nc] + [t.chan_in(c, _aval(rw, c)) for c in const_ch] +
             oi[nc:nc + nk] + [t.chan_in(c, _aval(rw, c)) for c in carry_ch] + oi[nc + nk:])
  body_out = oo[:nk] + [t.chan_out(c, _aval(rw, c)) for c in carry_ch] + oo[nk:]
  extra_xs = []
  if t.index is not None:
    body_in.append(t.index)
    iota = helper_jaxpr(bound(_arange, int(p["length"])))
    extra_xs = rw.inline(iota, [], source_info=eqn.source_info)
  body = t.finish(body_in, body_out)
  ei = list(eqn.invars)
  new_outs = _new_outs(rw, carry_ch)
  invars = (ei[:nc] + [rw.read(c) for c in const_ch] + ei[nc:nc + nk] +
            [rw.read(c) for c in carry_ch] + ei[nc + nk:] + extra_xs)
  outvars = list(eqn.outvars[:nk]) + new_outs + list(eqn.outvars[nk:])
  params = _compat.scan_params_with_counts(
      dict(p, jaxpr=body), nc + len(const_ch), nk + len(carry_ch), nx + len(extra_xs), ny)
  if "linear" in params:
    lin = list(p["linear"])
    params["linear"] = tuple(lin[:nc] + [False] * len(const_ch) + lin[nc:nc + nk] +
                             [False] * len(carry_ch) + lin[nc + nk:] + [False] * len(extra_xs))
  rw.emit(eqn.replace(invars=invars, outvars=outvars, params=params,
                      effects=fx.strip_effects(eqn.effects, rw.pass_.effect_types)))
  for c, v in zip(carry_ch, new_outs):
    rw.write(c, v)


@register_hop_rule(_compat.while_p)
def _while_rule(rw, eqn):
  p = eqn.params
  cn, bn = p["cond_nconsts"], p["body_nconsts"]
  tb = rw.sub(p["body_jaxpr"], loop_body=True, where=rw.where + " > while body")
  tc = rw.sub(p["cond_jaxpr"], where=rw.where + " > while cond")
  rw.pass_.check_while_cond(tc)
  carry_ch = tb.outs
  body_const = [c for c in tb.ins if c not in tb.out_map]
  cond_const = [c for c in tc.ins if c not in tb.out_map]
  A = lambda c: _aval(rw, c)  # noqa: E731
  ci, bi = tc.orig_in, tb.orig_in
  use_index = tb.index is not None
  cond_in = (ci[:cn] + [tc.chan_in(c, A(c)) for c in cond_const] + ci[cn:] +
             [tc.chan_in(c, A(c)) for c in carry_ch] + ([_compat.Var(_I32)] if use_index else []))
  body_in = (bi[:bn] + [tb.chan_in(c, A(c)) for c in body_const] + bi[bn:] +
             [tb.chan_in(c, A(c)) for c in carry_ch] + ([tb.index] if use_index else []))
  extra = []
  body_out = tb.orig_out + [tb.chan_out(c, A(c)) for c in carry_ch]
  if use_index:
    inc = Rewriter(rw.pass_, helper_jaxpr(_incr, _I32))
    nxt = inc.inline(helper_jaxpr(_incr, _I32), [tb.index], source_info=eqn.source_info)
    extra = inc.eqns
    body_out = body_out + nxt
  body = tb.finish(body_in, body_out, extra_eqns=extra)
  cond = tc.finish(cond_in, tc.orig_out)
  ei = list(eqn.invars)
  new_outs = _new_outs(rw, carry_ch)
  invars = (ei[:cn] + [rw.read(c) for c in cond_const] + ei[cn:cn + bn] +
            [rw.read(c) for c in body_const] + ei[cn + bn:] + [rw.read(c) for c in carry_ch] +
            ([literal(0, np.int32)] if use_index else []))
  outvars = list(eqn.outvars) + new_outs + ([_compat.DropVar(_I32)] if use_index else [])
  params = dict(p, cond_jaxpr=cond, body_jaxpr=body, cond_nconsts=cn + len(cond_const),
                body_nconsts=bn + len(body_const))
  rw.emit(eqn.replace(invars=invars, outvars=outvars, params=params,
                      effects=fx.strip_effects(eqn.effects, rw.pass_.effect_types)))
  for c, v in zip(carry_ch, new_outs):
    rw.write(c, v)


def _custom_rule(rw, eqn, thunk_keys, kind):
  """custom_jvp_call / custom_vjp_call: channels become extra arguments of the call.

  JAX re-runs the user's custom rule (Python) when it differentiates this call, outside
  purify's trace; the thunks that would do so are replaced by ones that raise a purify
  error naming the site, so a gradient is never silently zero."""
  p = eqn.params
  t = rw.sub(p["call_jaxpr"], where=rw.where + f" > {kind}")
  if t.out_map:
    raise errors.PurifyError(
        f"purify.set_state inside a {kind} function is not supported "
        f"(states: {', '.join('/'.join(c[1:]) for c in t.outs)}). Move the state update "
        f"outside the custom-derivative function.")
  ins = t.ins
  A = lambda c: _aval(rw, c)  # noqa: E731
  nc = p["num_consts"]
  # channels go in as ordinary arguments after the consts (not as consts): JAX then
  # asks our rule thunk for their derivative, which raises purify's error, instead of
  # failing on "differentiation with respect to a closed-over value".
  new_call = t.finish(t.orig_in[:nc] + [t.chan_in(c, A(c)) for c in ins] + t.orig_in[nc:],
                      t.orig_out)
  names = ", ".join("/".join(c[1:]) if len(c) > 1 else "next_rng_key" for c in ins)
  fun = getattr(p["call_jaxpr"], "debug_info", None)
  fun_name = getattr(fun, "func_src_info", None) or getattr(fun, "func_name", None) or "?"
  make_err = functools.partial(
      errors.CustomRuleEffectError,
      errors.CUSTOM_RULE_EFFECT.format(kind=kind, fun=fun_name, names=names))
  params = dict(p, call_jaxpr=new_call)
  for k in thunk_keys:
    params[k] = _compat.wrap_raising(p[k], make_err)
  ei = list(eqn.invars)
  rw.emit(eqn.replace(invars=ei[:nc] + [rw.read(c) for c in ins] + ei[nc:], params=params,
                      effects=fx.strip_effects(eqn.effects, rw.pass_.effect_types)))


@register_hop_rule(_compat.custom_jvp_call_p)
def _custom_jvp_rule(rw, eqn):
  _custom_rule(rw, eqn, ("jvp_jaxpr_fun",), "jax.custom_jvp")


@register_hop_rule(_compat.custom_vjp_call_p)
def _custom_vjp_rule(rw, eqn):
  _custom_rule(rw, eqn, ("fwd_jaxpr_thunk",), "jax.custom_vjp")


def _shard_map_params(p, n_in, n_out):
  P = jax.sharding.PartitionSpec
  return dict(in_specs=tuple(p["in_specs"]) + (P(),) * n_in,
              out_specs=tuple(p["out_specs"]) + (P(),) * n_out)


@register_hop_rule(_compat.shard_map_p)
def _shard_map_rule(rw, eqn):
  """shard_map is a loop over shards. Params enter replicated (``P()``). State enters
  and leaves replicated: a write that varies over a manual mesh axis (per-shard) is
  refused like a per-example write under vmap. ``next_rng_key`` inside is refused:
  loop semantics wants one key per shard, which would make values typed as
  shard-invariant vary (see docs/semantics.md)."""
  p = eqn.params
  where = rw.where + " > shard_map"
  t = rw.sub(p["jaxpr"], where=where)
  if RNG in t.in_map:
    raise errors.PurifyError(errors.RNG_IN_SHARD_MAP.format(where=where))
  if t.out_map and not p.get("check_vma", True):
    raise errors.PerExampleStateError(errors.STATE_IN_SHARD_MAP_NO_VMA.format(
        states=", ".join("/".join(c[1:]) for c in t.outs)))
  for c in t.outs:
    axes = _compat.vma_of(t.out_map[c])
    if axes:
      raise errors.PerExampleStateError(errors.PER_SHARD_STATE.format(
          path="/".join(c[1:]), axes=tuple(sorted(axes)), axis=sorted(axes)[0]))
  _straight_through(rw, eqn, "jaxpr", _shard_map_params, _sub=t)


# ----------------------------------------------------------------------------- the pass base
class ThreadingPass:
  """Base of the three effect-removing passes. Subclasses set ``effect_types``,
  ``leaf_rules`` ({primitive: fn(pass, rewriter, eqn)}) and ``compute_aval``."""

  name = "?"
  effect_types: tuple = ()
  leaf_rules: dict = {}

  def channel_aval(self, ch):
    """The aval of channel ``ch`` (``compute_aval``, once a channel)."""
    cache = self.__dict__.setdefault("_avals", {})
    a = cache.get(ch)
    if a is None:
      a = cache[ch] = self.compute_aval(ch)
    return a

  def compute_aval(self, ch):
    raise NotImplementedError

  def first_read(self, rw, ch):
    return rw.new_input(ch)

  def reads_input(self, rw, ch) -> bool:
    """Whether ``first_read`` of ``ch`` in ``rw`` is just ``rw.new_input(ch)``."""
    return True

  def check_while_cond(self, t: Threaded) -> None:
    pass

  def rewrite_top(self, program):
    """Rewrite the top-level jaxpr; returns (Threaded, rewriter). A program without
    the pass's effects (they propagate to the top level's effect set) is not walked."""
    rw = Rewriter(self, program.jaxpr)
    if not fx.has_effect(rw.jaxpr.effects, self.effect_types):
      return rw.untouched(), rw
    return rw.run(), rw
