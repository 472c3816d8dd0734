"""The dead-code pass and the purity check: what they remove, what they keep, and
what they catch.

purify's DCE (purify/passes/dce.py) walks the top level itself and hands an
equation with a sub-program to JAX's rule only when some of its results are dead
(a loop always): these tests hold it to JAX's ``dce_jaxpr`` (all inputs kept) on
programs where the two must agree, and to its own documented difference (a
sub-program whose results are all used is kept whole).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.experimental import io_callback
from jax.extend import core as jcore

import purify
from purify import _compat
from purify import effects as fx
from purify import errors, keys, trace
from purify.passes import dce, verify_pure
from purify.passes._assemble import iter_eqns


def _jax_dce(cj):
  """JAX's dead-code elimination with every input kept, as a closed jaxpr."""
  j = _compat.open_of(cj)
  new, _ = _compat.dce_jaxpr(j, [True] * len(j.outvars), instantiate=True)
  return _compat.replace_jaxpr(cj, eqns=new.eqns, effects=new.effects)


def _prims(cj):
  return sorted(e.primitive.name for e in iter_eqns(cj))


def _same_values(a, b, *args):
  ra = jcore.jaxpr_as_fun(a)(*args)
  rb = jcore.jaxpr_as_fun(b)(*args)
  for x, y in zip(ra, rb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _unused_half(x):
  return jnp.sin(x), jnp.cos(x)


def f_top_level(x):
  dead = jnp.exp(x) * 3.0                # noqa: F841 (dead on purpose)
  y = x + 1.0
  _ = jnp.tanh(y) + jnp.log1p(y)         # dead chain
  return y * 2.0


def f_partial_jit(x):
  s, _ = jax.jit(_unused_half)(x)        # cos is dead inside the jit
  return s + 1.0


def f_partial_cond(x):
  a, _ = jax.lax.cond(x.sum() > 0, lambda v: (v * 2.0, jnp.exp(v)),
                      lambda v: (v - 1.0, jnp.log1p(v * v)), x)
  return a


def f_scan_dead_carry(x):
  def body(c, xi):
    live, dead = c
    return (live + xi, dead * jnp.exp(xi)), live.sum()
  (live, _), ys = jax.lax.scan(body, (x[0], x[0]), x)
  return live, ys


def f_scan_unused_xs(x):
  idx = jnp.arange(x.shape[0], dtype=jnp.int32)

  def body(c, xs):
    xi, _ = xs                            # the index is never used
    return c * 0.5 + xi, None
  return jax.lax.scan(body, x[0], (x, idx))[0]


def f_scan_unused_inputs_before_used_ones(x):
  """Inputs the rule drops sit before inputs it keeps: what is live afterwards must
  be read against the equation's inputs before the drop."""
  idx = jnp.arange(x.shape[0], dtype=jnp.int32)
  dead_const = jnp.exp(x[0])               # used only by dead code in the body
  used_const = jnp.cos(x[1])
  scale = jnp.sin(x)

  def body(c, xs):
    _, xi, si = xs                          # the index (the first xs) is never used
    _ = c * dead_const
    return c * used_const + xi * si, None
  return jax.lax.scan(body, x[0], (idx, x, scale))[0]


def f_scan_dead_in_body(x):
  """Every result and operand used; an equation in the body is dead."""
  def body(c, xi):
    _ = jnp.exp(c) * xi                  # dead
    return c * 0.5 + xi, c.sum()
  return jax.lax.scan(body, x[0], x)


def f_scan_all_live(x):
  def body(c, xi):
    return c * 0.5 + jnp.sin(xi), c.sum()
  return jax.lax.scan(body, x[0], x)


def f_while_unused_const(x):
  unused = jnp.exp(x)

  def body(c):
    i, v, u = c
    return i + 1, v * 0.9, u
  return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, x, unused))[1]


def f_effect_kept(x):
  io_callback(lambda v: None, None, x)    # no result used, but it has an effect
  return x * 2.0


def f_nothing_dead(x):
  return jnp.sin(x) * jax.jit(lambda v: v + 1.0)(x)


AGREE = [f_top_level, f_partial_jit, f_partial_cond, f_scan_dead_carry,
         f_scan_unused_xs, f_scan_unused_inputs_before_used_ones, f_scan_dead_in_body,
         f_scan_all_live, f_while_unused_const,
         f_effect_kept, f_nothing_dead]
X = jnp.linspace(0.1, 1.0, 12, dtype=jnp.float32).reshape(4, 3)


@pytest.mark.parametrize("fn", AGREE, ids=[f.__name__ for f in AGREE])
def test_dce_agrees_with_jax(fn):
  cj = jax.make_jaxpr(fn)(X)
  ours, theirs = dce.dce_closed(cj), _jax_dce(cj)
  assert str(ours) == str(theirs)
  if fn is not f_effect_kept:
    _same_values(ours, cj, X)


def test_dce_removes_what_it_should():
  cj = jax.make_jaxpr(f_top_level)(X)
  out = dce.dce_closed(cj)
  assert _prims(out) == ["add", "mul"]
  # inputs are kept: the signature does not change
  assert len(_compat.open_of(out).invars) == len(_compat.open_of(cj).invars)
  # in a partly used jit, the dead half goes (JAX's rule prunes the sub-program)
  assert "cos" not in _prims(dce.dce_closed(jax.make_jaxpr(f_partial_jit)(X)))
  # a scan's dead carry and its computation go
  assert "exp" not in _prims(dce.dce_closed(jax.make_jaxpr(f_scan_dead_carry)(X)))
  # a scan's unused xs (and the iota feeding it) go, although every result is used
  assert "iota" not in _prims(dce.dce_closed(jax.make_jaxpr(f_scan_unused_xs)(X)))
  # an effectful equation stays
  assert "io_callback" in _prims(dce.dce_closed(jax.make_jaxpr(f_effect_kept)(X)))


def test_dce_returns_the_same_program_when_nothing_is_dead():
  for fn in (f_nothing_dead, f_effect_kept, f_scan_all_live):
    cj = jax.make_jaxpr(fn)(X)
    assert dce.dce_closed(cj) is cj       # (a scan: not rebuilt by JAX's rule either)
  assert "exp" not in _prims(dce.dce_closed(jax.make_jaxpr(f_scan_dead_in_body)(X)))
  # and is idempotent where it removed something
  for fn in AGREE:
    once = dce.dce_closed(jax.make_jaxpr(fn)(X))
    assert dce.dce_closed(once) is once


def test_dce_leaves_a_scan_with_nothing_dead_to_itself(monkeypatch):
  """A scan whose results and operands are all used and whose body has no dead
  equation does not go to JAX's rule (which rebuilds it to remove nothing); one
  with a dead equation in its body does."""
  rule_of, called = _compat.dce_rule, []
  monkeypatch.setattr(_compat, "dce_rule", lambda p: (called.append(p.name), rule_of(p))[1])
  dce.dce_closed(jax.make_jaxpr(f_scan_all_live)(X))
  assert "scan" not in called
  dce.dce_closed(jax.make_jaxpr(f_scan_dead_in_body)(X))
  assert "scan" in called


def test_dce_keeps_a_fully_used_sub_program_whole():
  """The documented difference from JAX's dce_jaxpr: dead code inside a jit whose
  results are all used is left to XLA (finding it meant rebuilding every such
  equation: ~3x the walk)."""
  def f(x):
    def inner(v):
      _ = jnp.exp(v)                      # dead inside
      return v + 1.0
    return jax.jit(inner)(x)
  cj = jax.make_jaxpr(f)(X)
  assert "exp" in _prims(dce.dce_closed(cj))
  assert "exp" not in _prims(_jax_dce(cj))
  _same_values(dce.dce_closed(cj), _jax_dce(cj), X)


# ----------------------------------------------------------------------------- property
UNARY = [jnp.sin, jnp.exp, jnp.tanh, lambda v: v * 2.0, lambda v: v + 1.0]


@st.composite
def programs(draw):
  """A random straight-line program (some values dead), optionally inside a jit
  whose outputs are partly used."""
  n = draw(st.integers(2, 12))
  ops = [(draw(st.integers(0, len(UNARY) - 1)), draw(st.integers(0, 1)),
          draw(st.booleans())) for _ in range(n)]
  n_out = draw(st.integers(1, 3))
  picks = [draw(st.integers(0, n)) for _ in range(n_out)]
  jitted = draw(st.booleans())
  return ops, picks, jitted


def _build(spec):
  ops, picks, jitted = spec

  def body(x):
    vals = [x]
    for op, arg, binary in ops:
      v = UNARY[op](vals[-1 - arg if len(vals) > arg else -1])
      if binary:
        v = v + vals[0]
      vals.append(v)
    return tuple(vals[p] for p in picks)

  if not jitted:
    return body

  def f(x):
    outs = jax.jit(lambda v: body(v) + (jnp.cos(v),))(x)
    return outs[:-1]                      # the jit's last result is dead
  return f


@settings(max_examples=40, deadline=None)
@given(programs())
def test_dce_property_agrees_with_jax_on_random_programs(spec):
  cj = jax.make_jaxpr(_build(spec))(X)
  ours = dce.dce_closed(cj)
  assert str(ours) == str(_jax_dce(cj))
  _same_values(ours, cj, X)
  assert dce.dce_closed(ours) is ours


# ----------------------------------------------------------------------------- verify_pure
def _traced_with_effects():
  def model(x):
    return jax.jit(lambda v: v * purify.param("w", (3,), jnp.float32, jnp.ones))(x)
  sig, _ = trace.signature_of((jnp.ones((3,)),), {})
  prog, _ = trace.trace(model, sig, keys.default_key_aval())
  return prog


def _strip_all_effects(cj):
  """``cj`` with purify's param effect removed from every effect set, nested ones
  too, its effect primitives left in place: what a pass that forgot to remove one
  but stripped its effect would leave."""
  o = _compat.open_of(cj)
  eqns = []
  for e in o.eqns:
    params = {k: (_strip_all_effects(v) if _compat.is_jaxpr(v) else v)
              for k, v in e.params.items()}
    eqns.append(e.replace(params=params, effects=fx.strip_effects(e.effects, (fx.ParamEffect,))))
  return _compat.replace_jaxpr(cj, eqns=eqns, effects=fx.strip_effects(o.effects, (fx.ParamEffect,)))


def test_verify_pure_catches_an_effect_left_in_an_effect_set():
  prog = _traced_with_effects()
  with pytest.raises(errors.PipelineError, match="still has effects"):
    verify_pure.verify(prog, check=False)


def test_verify_pure_checked_mode_finds_a_hidden_effect_primitive():
  prog = _traced_with_effects()
  hidden = prog.replace(jaxpr=_strip_all_effects(prog.jaxpr))
  assert not fx.has_effect(_compat.open_of(hidden.jaxpr).effects)
  with pytest.raises(errors.PipelineError, match="param"):
    verify_pure.verify(hidden, check=True)
  # the unchecked mode looks at effect sets only; the primitive still cannot run:
  # its lowering rule raises purify's error (with JAX's checks on, JAX's own
  # check_jaxpr refuses it even earlier: the effects do not match)
  verify_pure.verify(hidden, check=False)
  j = hidden.jaxpr
  args = [jnp.ones(v.aval.shape, v.aval.dtype) for v in _compat.open_of(j).invars]
  with jax.enable_checks(False):
    with pytest.raises(errors.EffectLoweringError, match="reached XLA lowering"):
      jax.jit(jcore.jaxpr_as_fun(j)).lower(*args)
  with jax.enable_checks(True):
    with pytest.raises((errors.EffectLoweringError, jax.errors.JaxprTypeError)):
      jax.jit(jcore.jaxpr_as_fun(j)).lower(*args)


def _arith_program(ops):
  """A program of two inputs and ``ops`` (operand indices, add/sub/mul) on them."""
  def f(x, y):
    vals = [x, y]
    for a, b, op in ops:
      u, v = vals[a % len(vals)], vals[b % len(vals)]
      vals.append(u + v if op == "a" else u - v if op == "s" else u * v)
    return vals[-1], vals[len(vals) // 2]
  return jax.make_jaxpr(f)(1.0, 2.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.sampled_from("asm")),
                min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_toposort_orders_any_shuffle_of_a_program_and_keeps_an_ordered_one(ops, rnd):
  # the passes that insert equations (fuse-random-bits, fuse-init-tails) put them in
  # order with _assemble.toposort: any shuffle of a program's equations comes back
  # defined-before-use, the same equations, the same values; an ordered list as is
  from purify.passes._assemble import toposort
  cj = _arith_program(ops)
  eqns = list(_compat.open_of(cj).eqns)
  assert toposort(eqns) == eqns
  shuffled = eqns[:]
  rnd.shuffle(shuffled)
  got = toposort(shuffled)
  assert sorted(map(id, got)) == sorted(map(id, eqns))
  new = _compat.replace_jaxpr(cj, eqns=got)
  _compat.check_jaxpr(new)
  _same_values(cj, new, np.float32(1.5), np.float32(-0.25))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.sampled_from("asm")),
                min_size=2, max_size=25), st.data())
def test_insert_blocks_puts_replaced_equations_back_in_a_valid_place(ops, data):
  # fuse-random-bits / fuse-init-tails replace equations by blocks
  # (_assemble.insert_blocks): taking equations out of a program and giving them back
  # as blocks (in any order of blocks, each block in order) gives a program with the
  # same equations, defined before use, the same values
  from purify.passes._assemble import insert_blocks
  cj = _arith_program(ops)
  eqns = list(_compat.open_of(cj).eqns)
  picked = sorted(data.draw(st.sets(st.integers(0, len(eqns) - 1), max_size=len(eqns))))
  cuts = data.draw(st.lists(st.integers(0, len(picked)), max_size=3))
  bounds = sorted(set([0, len(picked)] + cuts))
  blocks = [[eqns[i] for i in picked[a:b]] for a, b in zip(bounds, bounds[1:]) if b > a]
  if data.draw(st.booleans()):
    blocks.reverse()
  got = insert_blocks(eqns, blocks, picked)
  assert sorted(map(id, got)) == sorted(map(id, eqns))
  new = _compat.replace_jaxpr(cj, eqns=got)
  _compat.check_jaxpr(new)
  _same_values(cj, new, np.float32(1.5), np.float32(-0.25))
  assert insert_blocks(eqns, [], ()) == eqns
