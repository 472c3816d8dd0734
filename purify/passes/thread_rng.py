"""Pass: thread the RNG.

Every ``purify_rng`` draw becomes a key derived from the channel ``("rng",)`` — the
base key of the current loop nest — as purify.keys documents: in a loop body the
base key is ``fold_in(outer base, iteration index)`` (scan: the position in ``xs``,
supplied as an extra ``arange`` input; while: an extra counter carry), then the
site's name is folded in, then the vmap example indices recorded in the draw's
``batch``. The root key becomes one program input (role ``rng``).

Before::  { lambda ; . let a:key<fry>[] <- next_rng_key "~#0" in (a) }
After::   { lambda ; r:key<fry>[]. let a = random_fold_in r 1234; b = random_fold_in a 5678 in (b) }
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from purify import _compat
from purify import effects as fx
from purify import errors
from purify import keys
from purify.passes import _thread
from purify.passes._assemble import assemble_top, no_effect_postcondition
from purify.passes.base import Pass


def _fold(k, i):
  return jax.random.fold_in(k, i)


def _derive(batch, k, hi, lo):
  return keys.fold_halves(k, hi, lo, batch)


def _key_sds(aval):
  return jax.ShapeDtypeStruct(aval.shape, aval.dtype)


_U32 = jax.ShapeDtypeStruct((), np.uint32)
_I32 = jax.ShapeDtypeStruct((), np.int32)


class _Rng(_thread.ThreadingPass):
  name = "thread_rng"
  effect_types = (fx.RngEffect,)

  def __init__(self, program):
    self.program = program
    self.key = program.key_aval
    self._derive: dict = {}             # a draw's batch -> its key-derivation helper

  def derive_helper(self, batch):
    """The helper deriving a draw's key (``keys.fold_halves``), once a batch."""
    helper = self._derive.get(batch)
    if helper is None:
      helper = self._derive[batch] = _thread.helper_jaxpr(
          _thread.bound(_derive, batch), _key_sds(self.key), _U32, _U32)
    return helper

  def compute_aval(self, ch):
    return _compat.ShapedArray(tuple(self.key.shape), self.key.dtype)

  def reads_input(self, rw, ch):
    return not rw.loop_body or getattr(rw, "unsplit", False)

  def first_read(self, rw, ch):
    outer = rw.new_input(ch)
    if self.reads_input(rw, ch):
      return outer
    if rw.index is None:
      rw.index = _compat.Var(_compat.ShapedArray((), np.dtype(np.int32)))
    helper = _thread.helper_jaxpr(_fold, _key_sds(self.key), _I32)
    return rw.inline(helper, [outer, rw.index])[0]

  def check_while_cond(self, t):
    if _thread.RNG in t.in_map:
      raise errors.PurifyError(errors.RNG_IN_WHILE_COND.format(site="?"))


def _rng_leaf(pass_, rw, eqn):
  p = eqn.params
  if p["site"] == fx.UNSPLIT_SITE:      # purify.scan(split_rng=False): no index folding here
    if _thread.RNG in rw.cur:
      raise AssertionError("purify internal: split_rng=False marker after a draw")
    rw.unsplit = True
    return
  hi, lo = keys.name_hash("rng:" + p["site"])
  base = rw.read(_thread.RNG)
  helper = pass_.derive_helper(tuple(p["batch"]))
  rw.inline(helper, [base, _thread.literal(hi, np.uint32), _thread.literal(lo, np.uint32)],
            source_info=eqn.source_info, into=eqn.outvars)


_Rng.leaf_rules = {fx.rng_p: _rng_leaf}


@dataclasses.dataclass(frozen=True)
class ThreadRng(Pass):
  name = "thread_rng"
  requires = frozenset({"traced"})
  provides = frozenset({"no_rng_effects"})

  def run(self, program):
    worker = _Rng(program)
    t, rw = worker.rewrite_top(program)
    return assemble_top(program, t, rw, worker, in_channels=[], out_channels=[])

  def postcondition(self, program):
    no_effect_postcondition(program, (fx.RngEffect,), (fx.rng_p,), self.name)
