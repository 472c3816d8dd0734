"""The pass pipeline, pass by pass: golden IR text, the numbers, and pass properties.

For each small model below, ``purify.explain`` gives the program after every pass;
``str(program)`` (roles + jaxpr) is compared with a golden file

    tests/golden/jax<major>.<minor>/<case>/<pass>.txt

(printed jaxprs differ between JAX releases, so each supported minor version has its
own set). Refresh them with ``PURIFY_REFRESH_GOLDEN=1 python -m pytest tests/test_passes.py``
and review the diff like code. The same cases also run ``purify.transform(f).init`` /
``.apply`` and compare with a hand-written pure-JAX reference that follows the key
derivation documented in ``purify.keys`` (re-implemented here with hashlib, so the
test does not trust purify's own helpers).

Besides: each pass's postcondition holds on its output (and fails on the trace
where it has work to do), re-running a pass on its own output changes nothing, no
effect primitive survives the pipeline, the pipeline order comes from the passes'
requires/provides, a missing higher-order rule is a ``NoRuleError`` naming the
primitive and the pass, and JAX's own effects pass through untouched and still run.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback
from jax.extend import core as jcore

import purify
from purify import _compat
from purify import effects as fx
from purify import errors
from purify import passes as passes_lib
from purify.passes import stacks_as_xs
from purify.passes.base import Pass, Pipeline
from purify.trace import Program

JAX_MINOR = "jax" + ".".join(jax.__version__.split(".")[:2])
GOLDEN_DIR = pathlib.Path(__file__).parent / "golden" / JAX_MINOR
REFRESH = os.environ.get("PURIFY_REFRESH_GOLDEN") == "1"

ones = jax.nn.initializers.ones
zeros = jax.nn.initializers.zeros
ROOT = jax.random.PRNGKey(42)     # raw uint32 key: the kind purify.explain assumes


# ----------------------------------------------------------------------------- reference keys
def _hash(s: str) -> tuple[int, int]:
  h = int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
  return (h >> 32) & 0xFFFFFFFF, h & 0xFFFFFFFF


def ref_derive(key, s: str):
  """``derive(key, s)`` as purify.keys documents it: fold in both halves of blake2b-64."""
  hi, lo = _hash(s)
  return jax.random.fold_in(jax.random.fold_in(key, np.uint32(hi)), np.uint32(lo))


def ref_param_key(root, path):
  return ref_derive(root, "param:" + path)


def ref_rng_key(root, site, loop=(), batch=()):
  """fold(derive(fold(root, *loop), "rng:" + site), *batch)."""
  k = root
  for i in loop:
    k = jax.random.fold_in(k, np.uint32(i))
  k = ref_derive(k, "rng:" + site)
  for b in batch:
    k = jax.random.fold_in(k, np.uint32(b))
  return k


def assert_close(got, want, rtol=1e-6, atol=1e-6):
  got_l, want_l = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want), (got, want)
  for g, w in zip(got_l, want_l):
    g, w = np.asarray(g), np.asarray(w)
    assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
    if np.issubdtype(g.dtype, np.integer) or g.dtype == np.bool_:
      np.testing.assert_array_equal(g, w)
    else:
      np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- the cases
@dataclasses.dataclass
class Case:
  name: str
  fn: Callable
  args: tuple
  with_state: bool
  check_numbers: Callable          # (init, apply) -> None; asserts against a reference
  effects: frozenset               # which effect kinds the model uses
  hops: tuple = ()                 # higher-order primitives that hold an effect


# 1. a parameter used in plain jnp ops -------------------------------------------------
def param_in_jnp_ops(x):                                 # x: (2,)
  w = purify.param("w", (2, 3), init=jax.nn.initializers.normal(1.0))
  b = purify.param("b", (3,), init=zeros)
  return jnp.tanh(x @ w + b).sum()


def _check_param_in_jnp_ops(init, apply):
  x = jnp.array([0.5, -1.0])
  params = init(ROOT, x)
  want_w = jax.nn.initializers.normal(1.0)(ref_param_key(ROOT, "~/w"), (2, 3), jnp.float32)
  assert_close(params, {"~": {"w": want_w, "b": jnp.zeros(3)}}, rtol=0, atol=0)
  p = {"~": {"w": jnp.arange(6.).reshape(2, 3) / 7, "b": jnp.array([0.1, -0.2, 0.3])}}
  assert_close(apply(p, None, x), jnp.tanh(x @ p["~"]["w"] + p["~"]["b"]).sum())


# 2. a parameter (and a draw) inside jax.vmap ----------------------------------------
def param_in_vmap(x):                                    # x: (2, 3)
  def row(xi):
    w = purify.param("w", (3,), init=ones)
    noise = jax.random.uniform(purify.next_rng_key(), ())
    return xi * w + noise
  return jax.vmap(row)(x)


def _check_param_in_vmap(init, apply):
  x = jnp.arange(6.).reshape(2, 3)
  params = init(ROOT, x)
  assert_close(params, {"~": {"w": jnp.ones(3)}}, rtol=0, atol=0)
  p = {"~": {"w": jnp.array([1.0, -2.0, 0.5])}}
  rng = jax.random.PRNGKey(7)
  want = jnp.stack([
      x[b] * p["~"]["w"] + jax.random.uniform(ref_rng_key(rng, "~#0", batch=(b,)), ())
      for b in range(2)])
  assert_close(apply(p, rng, x), want)


# 3. an RNG draw inside jax.lax.scan --------------------------------------------------
def rng_in_scan(xs):                                     # xs: (3,)
  s = purify.param("s", (), init=ones)

  def body(c, x):
    k = purify.next_rng_key()
    return c + x * s * jax.random.uniform(k), c

  return jax.lax.scan(body, jnp.float32(0.), xs)


def _check_rng_in_scan(init, apply):
  xs = jnp.array([1.0, 2.0, 3.0])
  params = init(ROOT, xs)
  assert_close(params, {"~": {"s": jnp.float32(1.)}}, rtol=0, atol=0)
  p = {"~": {"s": jnp.float32(0.5)}}
  rng = jax.random.PRNGKey(3)
  c, ys = jnp.float32(0.), []
  for i in range(3):                                    # the loop scan stands for
    ys.append(c)
    c = c + xs[i] * p["~"]["s"] * jax.random.uniform(ref_rng_key(rng, "~#0", loop=(i,)))
  assert_close(apply(p, rng, xs), (c, jnp.stack(ys)))


# 4. get_state / set_state inside jax.lax.cond ----------------------------------------
def state_in_cond(x):                                    # x: (3,)
  n = purify.get_state("calls", (), jnp.int32, init=jnp.zeros)
  purify.set_state("calls", n + 1)
  purify.set_state("last", x)                            # created by set_state: starts at x

  def yes(x):
    t = purify.get_state("total", (), jnp.float32, init=jnp.zeros)
    purify.set_state("total", t + x.sum())
    return x * 2.

  def no(x):
    return x - purify.get_state("total", (), jnp.float32, init=jnp.zeros)

  return jax.lax.cond(x.sum() > 0, yes, no, x)


def _check_state_in_cond(init, apply):
  x = jnp.array([1.0, 2.0, 3.0])
  params, state = init(ROOT, x)
  assert params == {}
  assert_close(state, {"~": {"calls": jnp.int32(0), "last": x, "total": jnp.float32(0.)}},
               rtol=0, atol=0)
  st = {"~": {"calls": jnp.int32(4), "last": jnp.zeros(3), "total": jnp.float32(10.)}}
  for xv in (x, -x):                                     # both branches, one trace
    t = st["~"]["total"]
    if float(xv.sum()) > 0:
      want_out, want_total = xv * 2., t + xv.sum()
    else:
      want_out, want_total = xv - t, t
    out, new = apply(params, st, None, xv)
    assert_close(out, want_out)
    assert_close(new, {"~": {"calls": jnp.int32(5), "last": xv, "total": want_total}})


# 5. parameters inside jax.jit and jax.checkpoint -------------------------------------
def param_in_jit_and_checkpoint(x):                      # x: (3,)
  def scale(x):
    return x * purify.param("w", (3,), init=ones)

  def shift(h):
    return jnp.sin(h) + purify.param("b", (3,), init=zeros)

  h = jax.jit(scale)(x)
  return jax.checkpoint(shift)(h)


def _check_param_in_jit_and_checkpoint(init, apply):
  x = jnp.array([0.1, 0.2, 0.3])
  params = init(ROOT, x)
  assert_close(params, {"~": {"w": jnp.ones(3), "b": jnp.zeros(3)}}, rtol=0, atol=0)
  p = {"~": {"w": jnp.array([2.0, -1.0, 3.0]), "b": jnp.array([0.5, 0.25, -1.0])}}
  assert_close(apply(p, None, x), jnp.sin(x * p["~"]["w"]) + p["~"]["b"])
  # grad flows through the hoisted parameters of jit and checkpoint
  g = jax.grad(lambda p: apply(p, None, x).sum())(p)
  want = {"~": {"w": jnp.cos(x * p["~"]["w"]) * x, "b": jnp.ones(3)}}
  assert_close(g, want)


# 6. while_loop with an RNG draw in the body ------------------------------------------
def rng_in_while_body(x):                                # x: (2,)
  def cond(c):
    return c[0] < 3

  def body(c):
    i, acc = c
    return i + 1, acc + jax.random.uniform(purify.next_rng_key(), x.shape)

  return jax.lax.while_loop(cond, body, (0, x))[1]


def _check_rng_in_while_body(init, apply):
  x = jnp.array([10.0, 20.0])
  assert init(ROOT, x) == {}
  rng = jax.random.PRNGKey(5)
  acc = x
  for i in range(3):                                    # the loop while stands for
    acc = acc + jax.random.uniform(ref_rng_key(rng, "~#0", loop=(i,)), x.shape)
  got = apply({}, rng, x)
  assert_close(got, acc)
  draws = np.asarray(got - x)
  assert np.all(draws > 0)                              # something was drawn


# 7. a layer stack: purify.scan(param_axes=0) ----------------------------------------
def stacked_scan(x):                                     # x: (3,)
  def layer(h, _):
    w = purify.param("w", (3, 3), init=jax.nn.initializers.normal(1.0))
    b = purify.param("b", (3,), init=zeros)
    return jnp.tanh(h @ w + b), h.sum()
  return purify.scan(layer, x, None, length=2, param_axes=0, reverse=True)


def _check_stacked_scan(init, apply):
  x = jnp.array([0.3, -0.2, 0.1])
  params = init(ROOT, x)
  normal = jax.nn.initializers.normal(1.0)
  want_w = jnp.stack([normal(jax.random.fold_in(ref_param_key(ROOT, "~/w"), np.uint32(i)),
                             (3, 3), jnp.float32) for i in range(2)])
  assert_close(params, {"~": {"w": want_w, "b": jnp.zeros((2, 3))}}, rtol=0, atol=0)
  p = {"~": {"w": jnp.arange(18.).reshape(2, 3, 3) / 20, "b": jnp.array([[.1, .2, .3], [-.1, 0, .1]])}}

  def ref(p):
    h, ys = x, [None, None]
    for i in (1, 0):                                     # reverse: position order
      ys[i] = h.sum()
      h = jnp.tanh(h @ p["~"]["w"][i] + p["~"]["b"][i])
    return h, jnp.stack(ys)
  assert_close(apply(p, None, x), ref(p))
  assert_close(jax.grad(lambda p: apply(p, None, x)[0].sum())(p),
               jax.grad(lambda p: ref(p)[0].sum())(p))


CASES = [
    Case("param_in_jnp_ops", param_in_jnp_ops, (jnp.zeros(2),), False,
         _check_param_in_jnp_ops, frozenset({"param"})),
    Case("param_in_vmap", param_in_vmap, (jnp.zeros((2, 3)),), False,
         _check_param_in_vmap, frozenset({"param", "rng"})),
    Case("rng_in_scan", rng_in_scan, (jnp.zeros(3),), False,
         _check_rng_in_scan, frozenset({"param", "rng"}), hops=("scan",)),
    Case("state_in_cond", state_in_cond, (jnp.zeros(3),), True,
         _check_state_in_cond, frozenset({"state"}), hops=("cond",)),
    Case("param_in_jit_and_checkpoint", param_in_jit_and_checkpoint, (jnp.zeros(3),), False,
         _check_param_in_jit_and_checkpoint, frozenset({"param"}), hops=("jit", "checkpoint")),
    Case("rng_in_while_body", rng_in_while_body, (jnp.zeros(2),), False,
         _check_rng_in_while_body, frozenset({"rng"}), hops=("while",)),
    Case("stacked_scan", stacked_scan, (jnp.zeros(3),), False,
         _check_stacked_scan, frozenset({"param"}), hops=("scan",)),
]
CASE_IDS = [c.name for c in CASES]
PASS_NAMES = passes_lib.default_pipeline().names
PASSES = {p.name: p for p in passes_lib.default_pipeline().ordered}


_EXPLAIN_CACHE: dict = {}


def explained(case: Case):
  """[(pass_name, Program)] for a case (cached: programs are immutable)."""
  if case.name not in _EXPLAIN_CACHE:
    _EXPLAIN_CACHE[case.name] = purify.explain(case.fn, *case.args)
  return _EXPLAIN_CACHE[case.name]


# ----------------------------------------------------------------------------- jaxpr helpers
def _open(j):
  if jcore.ClosedJaxpr is not jcore.Jaxpr and isinstance(j, jcore.ClosedJaxpr):
    return j.jaxpr
  return j


def all_eqns(j):
  """Every equation of a (closed) jaxpr and of every sub-jaxpr in its params."""
  for e in _open(j).eqns:
    yield e
    for v in e.params.values():
      for s in (v if isinstance(v, (tuple, list)) else (v,)):
        if isinstance(s, (jcore.Jaxpr, jcore.ClosedJaxpr)):
          yield from all_eqns(s)


def prim_names(j):
  return {e.primitive.name for e in all_eqns(j)}


def effect_prims_in(program):
  found = []
  for j in (program.jaxpr, program.init_jaxpr):
    if j is None:
      continue
    found += [e.primitive.name for e in all_eqns(j) if e.primitive in fx.EFFECT_PRIMITIVES]
  return found


# ----------------------------------------------------------------------------- golden text
def check_golden(case_name: str, name: str, text: str):
  path = GOLDEN_DIR / case_name / f"{name}.txt"
  if REFRESH:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return
  if not path.exists():
    pytest.fail(f"no golden file {path}; run with PURIFY_REFRESH_GOLDEN=1 and review it")
  want = path.read_text()
  if text != want:
    diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                        f"golden/{JAX_MINOR}/{case_name}/{name}.txt", "got"))
    pytest.fail(f"IR after {name!r} differs from the golden file "
                f"(PURIFY_REFRESH_GOLDEN=1 rewrites it):\n{diff}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_golden_ir_before_and_after_each_pass(case):
  records = explained(case)
  assert [n for n, _ in records] == ["trace"] + PASS_NAMES
  for name, prog in records:
    check_golden(case.name, name, str(prog) + "\n")
  if not REFRESH:                     # no stale golden files for a pass that is gone
    on_disk = {p.stem for p in (GOLDEN_DIR / case.name).glob("*.txt")}
    assert on_disk == {n for n, _ in records}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_trace_shows_effects_as_intent_and_passes_remove_them(case):
  records = dict(explained(case))
  traced = str(records["trace"])
  if "param" in case.effects:
    assert '<- param "~/' in traced
    assert '<- param' not in str(records["hoist_params"])
  if "rng" in case.effects:
    assert '<- next_rng_key "~#0"' in traced
    assert 'next_rng_key' not in str(records["thread_rng"])
  if "state" in case.effects:
    assert '<- get_state "~/' in traced and 'set_state "~/' in traced
    assert 'get_state' not in str(records["thread_state"])
    assert 'set_state' not in str(records["thread_state"])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_final_init_and_apply_equal_pure_jax_reference(case):
  t = (purify.transform_with_state if case.with_state else purify.transform)(case.fn)
  case.check_numbers(t.init, t.apply)
  # same numbers through an enclosing jax.jit (the program is bound, not re-traced)
  case.check_numbers(t.init, jax.jit(t.apply))


# ----------------------------------------------------------------------------- pass properties
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_each_pass_postcondition_holds_on_its_output(case):
  for name, prog in explained(case)[1:]:
    p = PASSES[name]
    _compat.check_jaxpr(prog.jaxpr)
    if prog.init_jaxpr is not None:
      _compat.check_jaxpr(prog.init_jaxpr)
    p.postcondition(prog)
    assert p.provides <= prog.facts, (name, prog.facts)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_postconditions_reject_the_unprocessed_trace(case):
  """The postconditions check something: on the trace they fail where work remains."""
  traced = explained(case)[0][1]
  kinds = {"param": "hoist_params", "rng": "thread_rng", "state": "thread_state"}
  for kind, name in kinds.items():
    if kind in case.effects:
      with pytest.raises(errors.PipelineError, match=name):
        PASSES[name].postcondition(traced)
    else:
      PASSES[name].postcondition(traced)
  with pytest.raises(errors.PipelineError, match="init"):
    PASSES["split_init"].postcondition(traced)


IDEMPOTENT = ["hoist_params", "thread_rng", "thread_state", "dce"]


@pytest.mark.parametrize("pass_name", IDEMPOTENT)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pass_is_idempotent(case, pass_name):
  prog = dict(explained(case))[pass_name]
  again = PASSES[pass_name](prog)
  assert again.in_roles == prog.in_roles
  assert again.out_roles == prog.out_roles
  assert str(again) == str(prog)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_no_effect_primitive_remains_after_the_pipeline(case):
  records = explained(case)
  assert effect_prims_in(records[0][1]), "the trace should contain effect primitives"
  final = records[-1][1]
  assert effect_prims_in(final) == []
  for j in (final.jaxpr, final.init_jaxpr):
    assert not any(fx.is_purify_effect(e) for e in _open(j).effects)
    for e in all_eqns(j):
      assert not any(fx.is_purify_effect(x) for x in e.effects), e
  # and the compiled programs the transform actually runs are the same kind of thing
  t = (purify.transform_with_state if case.with_state else purify.transform)(case.fn)
  t.init(ROOT, *case.args)
  (compiled,) = [c for e in t.init.purified.cache.values() for c in e.values()]
  assert effect_prims_in(compiled.program) == []


@pytest.mark.parametrize("case", [c for c in CASES if c.hops], ids=[c.name for c in CASES if c.hops])
def test_higher_order_primitives_survive_with_channels_wired(case):
  """The rewritten jaxpr keeps the control flow (no unrolling, no re-tracing)."""
  final = explained(case)[-1][1]
  names = prim_names(final.jaxpr)
  expect = {"scan": "scan", "cond": "cond", "while": "while",
            "jit": _compat.jit_p.name, "checkpoint": _compat.remat_p.name}
  for h in case.hops:
    assert expect[h] in names, (h, names)


# ----------------------------------------------------------------------------- the pipeline
def _dummy(name, requires=(), provides=(), log=None):
  def run(self, program):
    if log is not None:
      log.append(self.name)
    return program
  cls = type(f"Dummy_{name}", (Pass,), {
      "name": name, "requires": frozenset(requires), "provides": frozenset(provides),
      "run": run})
  return dataclasses.dataclass(frozen=True)(cls)()


def _empty_program():
  return Program(jaxpr=None, in_roles=(), out_roles=(), params={}, states={}, rng_sites={},
                 key_aval=None, facts=frozenset({"traced"}))


def test_pipeline_orders_passes_from_requires_and_provides():
  log = []
  c = _dummy("c", requires={"y", "x"}, provides={"z"}, log=log)
  b = _dummy("b", requires={"x"}, provides={"y"}, log=log)
  a = _dummy("a", requires={"traced"}, provides={"x"}, log=log)
  d = _dummy("d", requires={"traced"}, provides={"w"}, log=log)   # independent: keeps its slot
  pipe = Pipeline([c, d, b, a])
  assert pipe.names == ["d", "a", "b", "c"]
  out, records = pipe.run(_empty_program())
  assert log == ["d", "a", "b", "c"]
  assert [r.name for r in records] == ["trace", "d", "a", "b", "c"]
  assert {"traced", "x", "y", "z", "w"} <= out.facts
  assert set(pipe.graph.edges) == {("a", "b"), ("a", "c"), ("b", "c")}


def test_default_pipeline_order_does_not_depend_on_list_order():
  for passes in (passes_lib.DEFAULT_PASSES, tuple(reversed(passes_lib.DEFAULT_PASSES))):
    names = Pipeline(passes).names
    for effect_pass in ("hoist_params", "thread_rng", "thread_state"):
      assert names.index(effect_pass) < names.index("split_init")
    assert names.index("split_init") < names.index("dce") < names.index("verify_pure")
    assert len(names) == len(passes_lib.DEFAULT_PASSES)


def test_pipeline_cycle_is_an_error():
  a = _dummy("a", requires={"y"}, provides={"x"})
  b = _dummy("b", requires={"x"}, provides={"y"})
  with pytest.raises(errors.PipelineError, match="cycle"):
    Pipeline([a, b])


def test_pipeline_unmet_requirement_is_an_error():
  a = _dummy("a", requires={"traced"}, provides={"x"})
  b = _dummy("b", requires={"x", "nobody_provides_this"}, provides={"y"})
  with pytest.raises(errors.PipelineError) as ei:
    Pipeline([a, b])
  msg = str(ei.value)
  assert "'b'" in msg and "nobody_provides_this" in msg and "no pass provides" in msg


def test_pipeline_two_providers_of_one_fact_is_an_error():
  a = _dummy("a", provides={"x"})
  b = _dummy("b", provides={"x"})
  with pytest.raises(errors.PipelineError) as ei:
    Pipeline([a, b])
  msg = str(ei.value)
  assert "'x'" in msg and "'a'" in msg and "'b'" in msg


def test_running_a_pass_without_its_requirements_is_an_error():
  traced = explained(CASES[0])[0][1]
  with pytest.raises(errors.PipelineError, match="split_init"):
    PASSES["split_init"](traced)


# ----------------------------------------------------------------------------- missing rules
@pytest.mark.parametrize("prim_attr, case_name, pass_name, prim_name", [
    ("jit_p", "param_in_jit_and_checkpoint", "hoist_params", _compat.jit_p.name),
    ("remat_p", "param_in_jit_and_checkpoint", "hoist_params", _compat.remat_p.name),
    ("scan_p", "rng_in_scan", "thread_rng", "scan"),
    ("cond_p", "state_in_cond", "thread_state", "cond"),
    ("while_p", "rng_in_while_body", "thread_rng", "while"),
])
def test_missing_hop_rule_is_a_no_rule_error(monkeypatch, prim_attr, case_name, pass_name,
                                             prim_name):
  case = {c.name: c for c in CASES}[case_name]
  monkeypatch.delitem(passes_lib.HOP_RULES, getattr(_compat, prim_attr))
  with pytest.raises(errors.NoRuleError) as ei:
    purify.explain(case.fn, *case.args)
  msg = str(ei.value)
  assert f"pass {pass_name!r}" in msg
  assert f"higher-order primitive {prim_name!r}" in msg
  # the same error through the public transform
  t = (purify.transform_with_state if case.with_state else purify.transform)(case.fn)
  with pytest.raises(errors.NoRuleError, match=prim_name):
    t.init(ROOT, *case.args)


# ----------------------------------------------------------------------------- other effects
def test_other_jax_effects_pass_through_untouched_and_still_run(capfd):
  calls = []

  def record(v):
    calls.append(np.asarray(v))

  def f(x):                                              # x: (3,)
    w = purify.param("w", (3,), init=ones)
    jax.debug.print("purify-debug {}", (x * w).sum())
    io_callback(record, None, x * w, ordered=True)      # result unused: must survive DCE

    def body(c, xi):
      io_callback(record, None, xi * purify.param("w", (3,), init=ones)[0])
      return c + xi * jax.random.uniform(purify.next_rng_key()), None

    return jax.lax.scan(body, jnp.float32(0.), x)[0]

  x = jnp.array([1.0, 2.0, 3.0])
  records = purify.explain(f, x)
  trace_prims = prim_names(records[0][1].jaxpr)
  final = records[-1][1]
  final_prims = prim_names(final.jaxpr)
  for prim in ("debug_callback", "debug_print", "io_callback"):
    # whatever JAX calls its debug-print primitive, it is there before and after
    assert (prim in trace_prims) == (prim in final_prims), prim
  assert "io_callback" in final_prims
  assert any(n.startswith("debug") for n in final_prims), final_prims
  non_purify = {e for e in _open(records[0][1].jaxpr).effects if not fx.is_purify_effect(e)}
  assert non_purify and non_purify <= set(_open(final.jaxpr).effects)
  assert effect_prims_in(final) == []

  t = purify.transform(f)
  params = t.init(ROOT, x)
  jax.effects_barrier()
  calls.clear()
  capfd.readouterr()
  rng = jax.random.PRNGKey(1)
  out = t.apply(params, rng, x)
  jax.effects_barrier()
  assert "purify-debug 6.0" in capfd.readouterr().out
  assert len(calls) == 4
  np.testing.assert_array_equal(calls[0], np.asarray(x))
  assert sorted(float(c) for c in calls[1:]) == [1.0, 2.0, 3.0]
  want = sum(x[i] * jax.random.uniform(ref_rng_key(rng, "~#0", loop=(i,))) for i in range(3))
  assert_close(out, jnp.float32(want))


def test_trace_and_pipeline_pause_python_gc_and_restore_it():
  """Both pause the cyclic GC (bench/pipeline.py: its full passes cost 30-40% of the
  pipeline on big programs) and restore it — also after an error, and leave it paused
  when the caller had paused it."""
  import gc
  from purify import trace as trace_lib
  seen = []

  def f(x):
    seen.append(gc.isenabled())
    return x * purify.param("w", (), init=jax.nn.initializers.ones)

  class Probe(Pass):
    name = "probe"
    requires = frozenset({"traced"})

    def run(self, program):
      seen.append(gc.isenabled())
      return program

  assert gc.isenabled()
  sig, _ = trace_lib.signature_of((jnp.ones(2),), {})
  prog, _ = trace_lib.trace(f, sig, purify.keys.default_key_aval())
  Pipeline([Probe()]).run(prog)
  assert seen == [False, False] and gc.isenabled()

  class Boom(Probe):
    name = "boom"

    def run(self, program):
      raise ValueError("boom")

  with pytest.raises(purify.errors.PipelineError):
    Pipeline([Boom()]).run(prog)
  assert gc.isenabled()
  gc.disable()
  try:
    Pipeline([Probe()]).run(prog)
    assert not gc.isenabled()
  finally:
    gc.enable()


def test_a_scan_combining_a_closed_over_array_with_a_literal_is_rewritten():
  """harness-5: a scan with a scanned index (its body draws) whose body multiplies a
  closed-over array of the scan's length by a literal: stacks_as_xs crashed testing
  the literal for membership in a set. Now apply runs, with the values of the loop
  written out by hand (step i's key: the site's key of fold_in(rng, i), keys.py)."""
  def f(x):
    c = x[None] * jnp.ones((3, 1))           # closed over, of the scan's length
    def body(carry, _):
      return carry + (c * 2.0).sum() + jax.random.normal(purify.next_rng_key()), None
    return jax.lax.scan(body, 0.0, None, length=3)[0]
  t = purify.transform(f)
  x = jnp.arange(2.0)
  params = t.init(jax.random.key(0), x)
  rng = jax.random.key(1)
  keys = purify.keys
  want = jnp.float32(0.0)
  for i in range(3):
    k = keys.rng_key(keys.fold_indices(rng, i), "~#0")
    want = want + 6.0 * x.sum() + jax.random.normal(k)
  assert_close(t.apply(params, rng, x), want)
  # the pass skips a program without stacked parameters: call its rewrite directly
  before = dict(purify.explain(f, x))["fuse_init_tails"]
  assert stacks_as_xs.rewrite(before.jaxpr) is before.jaxpr      # nothing to rewrite, no crash


def test_stacks_as_xs_walks_only_programs_with_stacked_parameters(monkeypatch):
  """A program without stacked parameters is not walked (its jaxpr kept); one with
  them (purify.scan(param_axes=0)) is walked and rewritten."""
  walked, rewrite = [], stacks_as_xs.rewrite
  monkeypatch.setattr(stacks_as_xs, "rewrite", lambda j, *m: (walked.append(j), rewrite(j, *m))[1])
  def plain(x):
    return jax.lax.scan(lambda c, _: (purify.nn.Linear(2)(c), None), x, None, length=3)[0]

  def stacked(x):
    return purify.scan(lambda c, _: (purify.nn.Linear(2)(c), None), x, None, length=3,
                       param_axes=0)[0]

  x = jnp.ones((1, 2))
  for f, rewritten in ((plain, False), (stacked, True)):
    walked.clear()
    steps = dict(purify.explain(f, x))
    before, after = steps["fuse_init_tails"], steps["stacks_as_xs"]
    assert (after.jaxpr is not before.jaxpr) == rewritten
    assert bool(walked) == rewritten
