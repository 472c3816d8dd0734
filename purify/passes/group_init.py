"""Pass: group parameter initializers.

Hand-written JAX (and every framework) compiles one initializer call per parameter,
although most parameters repeat a (shape, dtype, initializer) — six identical
Transformer blocks, the blocks of a ResNet stage. This pass groups the parameter
sites that share ``(shape, dtype, stack, initializer)``; split-init then creates each
group with ONE initializer call vmapped over the group's keys. Each key is still
``param_key(root, "module/name")``, so the values are the same, bitwise, as one call
per parameter; the init program grows with the number of groups, not parameters.

Initializers are compared by what they compute, not by object identity: layers make
a fresh closure per layer (``truncated_normal(1 / sqrt(fan_in))``), so two closures
with the same code, the same defaults and equal closed-over values (recursively, for
closed-over functions and ``functools.partial``) are the same initializer. Anything
that cannot be compared that way (a closed-over array, a callable object) keeps its
own group: grouping is an optimisation and never guesses.

``GroupInit(enabled=False)`` puts every parameter in a group of its own (the
ungrouped init, kept for tests and measurements).
"""
from __future__ import annotations

import dataclasses
import functools
import types

import numpy as np

from purify.passes.base import Pass

_SCALARS = (int, float, bool, str, bytes, type(None), complex, np.dtype, np.generic)


class Unique(Exception):
  pass


def _value_key(v, depth):
  if isinstance(v, _SCALARS):
    return (type(v).__name__, v)
  if isinstance(v, type):
    return ("type", v)
  if isinstance(v, (tuple, list)):
    return (type(v).__name__,) + tuple(_value_key(x, depth) for x in v)
  if isinstance(v, dict):
    return ("dict",) + tuple(sorted((repr(k), _value_key(x, depth)) for k, x in v.items()))
  if callable(v):
    return initializer_key(v, depth + 1)
  raise Unique


def initializer_key(fn, depth=0):
  """A hashable description of what ``fn`` computes; raises Unique when unknown."""
  if depth > 8:
    raise Unique
  if isinstance(fn, functools.partial):
    return ("partial", initializer_key(fn.func, depth + 1),
            tuple(_value_key(a, depth) for a in fn.args),
            tuple(sorted((k, _value_key(v, depth)) for k, v in fn.keywords.items())))
  if isinstance(fn, types.FunctionType):
    cells = tuple(_value_key(c.cell_contents, depth) for c in (fn.__closure__ or ()))
    defaults = tuple(_value_key(d, depth) for d in (fn.__defaults__ or ()))
    kwdefaults = tuple(sorted((k, _value_key(v, depth))
                              for k, v in (fn.__kwdefaults__ or {}).items()))
    return ("fn", fn.__code__, id(fn.__globals__), cells, defaults, kwdefaults)
  if isinstance(fn, (types.BuiltinFunctionType, np.ufunc)):
    return ("builtin", fn)
  raise Unique


def _group_key(site, memo):
  """``memo``: initializer keys by the initializer's identity, for this run (many
  sites share one initializer object: its key is worked out once)."""
  fn = site.init
  hit = memo.get(id(fn))
  if hit is not None and hit[0] is fn:
    init = hit[1]
  else:
    try:
      init = initializer_key(fn)
    except Unique:
      init = ("object", id(fn))
    memo[id(fn)] = (fn, init)
  return (tuple(site.shape), site.dtype, tuple(site.stack), init)   # (str(dtype) is slow)


@dataclasses.dataclass(frozen=True)
class GroupInit(Pass):
  name = "group_init"
  requires = frozenset({"traced"})
  provides = frozenset({"init_groups"})
  enabled: bool = True

  def run(self, program):
    if not self.enabled:
      return program.replace(init_groups=tuple((k,) for k in program.params))
    groups: dict = {}
    memo: dict = {}
    for k, site in program.params.items():
      if site.key_name is not None:          # lifted params: their own init, one key
        groups[("lifted", k)] = [k]
        continue
      groups.setdefault(_group_key(site, memo), []).append(k)
    return program.replace(init_groups=tuple(tuple(g) for g in groups.values()))

  def postcondition(self, program):
    from purify import errors
    seen = [k for g in program.init_groups for k in g]
    if sorted(map(str, seen)) != sorted(map(str, program.params)) or len(seen) != len(set(seen)):
      raise errors.PipelineError("group_init: groups do not partition the parameters")
