"""Pass: dead-code elimination on init and apply (inputs are kept: the signature
does not change). This is what makes init lean: it keeps only the initializers,
never the forward pass (init's forward, for set_state-created initial values, is
apply or a program of its own: ``Program.forward_jaxpr``) nor what the fusing passes
left unused.

One backward walk over the top-level equations: an equation none of whose results
is used, and whose effects do not keep it, goes. An equation with a sub-program
(scan, cond, jit, custom_jvp...) only some of whose results are used goes to JAX's
dead-code rule for its primitive, which prunes the sub-program; so does a loop
(scan, while) in any case; any other whose results are all used is kept whole (dead
code inside it is XLA's to drop). JAX's own
``dce_jaxpr`` rebuilt every such equation even when it removed nothing (~3x this
walk on 10k equations; then finding out that nothing changed cost as much again).
"""
from __future__ import annotations

import dataclasses

from purify import _compat
from purify.passes._assemble import jaxprs_in
from purify.passes.base import Pass


# a loop goes to its rule even with every result used: an input it does not use (the
# loop index once stacks-as-xs has replaced the stacked reads) costs every iteration
_LOOPS = frozenset({_compat.scan_p, _compat.while_p})
_SCAN = _compat.scan_p


def _same_shape(new, old):
  """Whether a rule's rebuilt equation is ``old`` with nothing removed: the same
  operands and results and, recursively, sub-programs of the same length (the
  loops' rules rebuild even when nothing is dead; JAX 0.12's scan rule re-wraps its
  parameters, so keeping the rebuilt one would change the text, not the program)."""
  if (new.primitive is not old.primitive or len(new.invars) != len(old.invars)
      or len(new.outvars) != len(old.outvars)):
    return False
  sa, sb = jaxprs_in(new.params), jaxprs_in(old.params)
  if len(sa) != len(sb):
    return False
  for x, y in zip(sa, sb):
    x, y = _compat.open_of(x), _compat.open_of(y)
    if len(x.eqns) != len(y.eqns) or not all(
        a is b or _same_shape(a, b) for a, b in zip(x.eqns, y.eqns)):
      return False
  return True


def _scan_kept_whole(e) -> bool:
  """A scan all of whose results are used keeps its equation as it is when its body
  has no dead equation and reads every constant and ``xs`` operand: JAX's rule
  would rebuild it to remove nothing (~0.1 ms a scan: the scanned Transformer's
  dce was mostly that). Its carries stay in any case (their results are used)."""
  body = e.params["jaxpr"]
  new, live = _dce(body)
  if new is not body:
    return False
  n_consts, n_carry, _, _ = _compat.scan_counts(e.params)
  invars = _compat.open_of(body).invars
  return all(v in live for v in invars[:n_consts]) and \
      all(v in live for v in invars[n_consts + n_carry:])


def dce_closed(cj):
  """``cj`` without its dead equations (``cj`` itself when none is dead)."""
  return _dce(cj)[0]


def _dce(cj):
  """``(cj without its dead equations, the variables it reads)``; ``cj`` itself
  when none is dead."""
  j = _compat.open_of(cj)
  if not j.eqns:
    return cj, set(v for v in j.outvars if not isinstance(v, _compat.Literal))
  Literal = _compat.Literal
  live = {v for v in j.outvars if not isinstance(v, Literal)}
  add = live.add
  rule_of = _compat.dce_rule
  kept, changed = [], False
  for e in reversed(j.eqns):
    # (plain loops: this runs once an equation, comprehensions cost more here)
    outs = e.outvars
    n_used = 0
    for v in outs:
      if v in live:
        n_used += 1
    if n_used and n_used == len(outs) and (
        e.primitive not in _LOOPS or e.primitive is _SCAN and _scan_kept_whole(e)):
      for v in e.invars:
        if not isinstance(v, Literal):
          add(v)
      kept.append(e)
      continue
    rule = rule_of(e.primitive)
    if rule is None:
      if not n_used and not _compat.blocks_dce(e):
        changed = True                        # dead
        continue
      new = e                                 # some results used (or effects): keep
    else:
      used_ins, new = rule([v in live for v in outs], e)
      if new is None:
        changed = True
        continue
      if new is e or _same_shape(new, e):
        new = e                     # the rule removed nothing (rebuilt or not): keep it
      else:
        changed = True
        # ``used_ins`` is of the equation's inputs before the rule dropped some
        live.update(v for v, u in zip(e.invars, used_ins) if u and not isinstance(v, Literal))
        kept.append(new)
        continue
    live.update(v for v in new.invars if not isinstance(v, Literal))
    kept.append(new)
  if not changed:
    return cj, live
  kept.reverse()
  effects = _compat.jaxpr_effects(j.constvars, j.invars, j.outvars, kept)
  return _compat.replace_jaxpr(cj, eqns=kept, effects=effects), live


@dataclasses.dataclass(frozen=True)
class DeadCodeElimination(Pass):
  name = "dce"
  requires = frozenset({"split"})
  provides = frozenset({"dce"})

  def run(self, program):
    fwd = program.forward_jaxpr
    return program.replace(jaxpr=dce_closed(program.jaxpr), init_jaxpr=dce_closed(program.init_jaxpr),
                           forward_jaxpr=dce_closed(fwd) if fwd is not None else None)
