"""Pass: stacked parameters become scanned inputs.

``purify.scan(..., param_axes=0)`` (layer stacking) gives step ``i`` slice ``i`` of
each stacked parameter: the body reads the whole stack and indexes it with the step
number (``dynamic_index_in_dim(p, i)``, where ``i`` is scanned over ``iota(n)``).
After hoisting, the stack is a constant of the scan, and the gradient of a per-step
slice of a constant is a full-size ``dynamic_update_slice`` accumulated in the carry.
Hand-written JAX (and ``hk.layer_stack``) pass the stack as ``xs`` instead: the scan
slices it, and the gradient is a stacked output. This pass rewrites the first form
into the second where it is exactly equivalent: a scan constant whose every use in
the body is ``dynamic_index_in_dim(c, i)`` along axis 0 with ``i`` a scanned ``iota``
of the scan's length (so slice ``i`` at position ``i``, also for ``reverse=True``).

Only a program with stacked parameters is walked: the first form is what purify
makes of the user's ``purify.scan(param_axes=0)`` / ``layer_stack``; a program
without (most of them; the walk was ~0.8 ms of ResNet-50's passes, ~15% of a
dropout MLP's) is left as it is, hand-written indexing included, as JAX leaves it.

Before::  scan[num_consts=1] p iota  with body { c i. w = dynamic_index_in_dim c i; ... }
After::   scan[num_consts=0] iota p  with body { i w. ... }
"""
from __future__ import annotations

import dataclasses

from purify import _compat
from purify.passes._assemble import map_sub_jaxprs
from purify.passes.base import Pass


def _is_iota(var, producers, length) -> bool:
  if isinstance(var, _compat.Literal):     # (0.12: a Literal does not hash)
    return False
  eqn = producers.get(var)
  return (eqn is not None and eqn.primitive.name == "iota" and
          eqn.params.get("dimension") == 0 and tuple(eqn.params.get("shape", ())) == (length,))


def _is_index_axis0(eqn, const, idx) -> bool:
  """``eqn`` is ``dynamic_index_in_dim(const, idx, 0, keepdims=False)``."""
  if not (eqn.primitive is _compat.jit_p and eqn.params.get("name") == "dynamic_index_in_dim"):
    return False
  if list(eqn.invars) != [const, idx] or len(eqn.outvars) != 1:
    return False
  shape = tuple(const.aval.shape)
  if tuple(eqn.outvars[0].aval.shape) != shape[1:]:
    return False
  inner = _compat.open_of(eqn.params["jaxpr"])
  slices = [e for e in inner.eqns if e.primitive.name == "dynamic_slice"]
  return (len(slices) == 1 and slices[0].invars[0] is inner.invars[0] and
          tuple(slices[0].params["slice_sizes"]) == (1,) + shape[1:] and
          all(isinstance(v, _compat.Literal) and v.val == 0 for v in slices[0].invars[2:]))


def _uses(jaxpr):
  uses: dict = {}
  for e in jaxpr.eqns:
    for v in e.invars:
      if not isinstance(v, _compat.Literal):
        uses.setdefault(v, []).append(e)
  return uses


def _rewrite_scan(eqn, producers):
  p = eqn.params
  nc, nk, nx, ny = _compat.scan_counts(p)
  length = int(p["length"])
  body = p["jaxpr"]
  bj = _compat.open_of(body)
  idx_vars = {bj.invars[nc + nk + k] for k in range(nx)
              if _is_iota(eqn.invars[nc + nk + k], producers, length)}
  if not idx_vars:
    return eqn
  outs = set(v for v in bj.outvars if not isinstance(v, _compat.Literal))
  uses = _uses(bj)
  moved = []                       # (const position, [index equations])
  for c in range(nc):
    cv = bj.invars[c]
    us = uses.get(cv, [])
    if (not us or cv in outs or not cv.aval.shape or cv.aval.shape[0] != length):
      continue
    if all(len(u.invars) == 2 and not isinstance(u.invars[1], _compat.Literal)
           and u.invars[1] in idx_vars and _is_index_axis0(u, cv, u.invars[1]) for u in us):
      moved.append((c, us))
  if not moved:
    return eqn
  drop = {id(u) for _, us in moved for u in us}
  subst, new_xs = {}, []
  for _, us in moved:
    v = us[0].outvars[0]
    new_xs.append(v)
    for u in us[1:]:
      subst[u.outvars[0]] = v
  sub = lambda v: v if isinstance(v, _compat.Literal) else subst.get(v, v)  # noqa: E731
  eqns = []
  for e in bj.eqns:
    if id(e) in drop:
      continue
    ins = [sub(v) for v in e.invars]
    eqns.append(e if all(a is b for a, b in zip(ins, e.invars)) else e.replace(invars=ins))
  moved_pos = {c for c, _ in moved}
  keep_c = [c for c in range(nc) if c not in moved_pos]
  inv = bj.invars
  new_body = _compat.replace_jaxpr(
      body, invars=[inv[c] for c in keep_c] + inv[nc:] + new_xs, eqns=eqns,
      outvars=[sub(v) for v in bj.outvars])
  ei = list(eqn.invars)
  invars = [ei[c] for c in keep_c] + ei[nc:] + [ei[c] for c, _ in moved]
  params = _compat.scan_params_with_counts(dict(p, jaxpr=new_body), len(keep_c), nk,
                                           nx + len(moved), ny)
  if "linear" in params:
    lin = list(p["linear"])
    params["linear"] = tuple([lin[c] for c in keep_c] + lin[nc:] + [lin[c] for c, _ in moved])
  return eqn.replace(invars=invars, params=params)


def rewrite(jaxpr, memo=None):
  """``jaxpr`` with every matching scan (at any depth) rewritten. ``memo``: sub-jaxprs
  already rewritten, by identity (JAX shares one traced jaxpr among the calls of a
  jitted function with the same shapes: 1000 dropout layers, one ``_uniform`` body)."""
  if memo is None:
    memo = {}
  hit = memo.get(id(jaxpr))
  if hit is not None and hit[0] is jaxpr:
    return hit[1]
  j = _compat.open_of(jaxpr)
  producers = {}                   # of iotas only: all _rewrite_scan asks about
  eqns, changed = [], False
  scan_p = _compat.scan_p
  sub = lambda x: rewrite(x, memo)  # noqa: E731
  for e in j.eqns:
    e2 = map_sub_jaxprs(e, sub) if e.params else e
    if e2.primitive is scan_p:
      e2 = _rewrite_scan(e2, producers)
    elif e2.primitive.name == "iota":
      producers[e2.outvars[0]] = e2
    if e2 is not e:
      changed = True
    eqns.append(e2)
  out = _compat.replace_jaxpr(jaxpr, eqns=eqns) if changed else jaxpr
  memo[id(jaxpr)] = (jaxpr, out)
  return out


@dataclasses.dataclass(frozen=True)
class StacksAsXs(Pass):
  name = "stacks_as_xs"
  requires = frozenset({"split"})
  provides = frozenset({"stacks_as_xs"})

  def run(self, program):
    if not any(site.stack for site in program.params.values()):
      return program        # no stacked parameter: nothing of purify's to rewrite
    return program.replace(jaxpr=rewrite(program.jaxpr))
