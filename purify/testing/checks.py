"""The checks: on generated programs (against the reference interpreter) and on a
user's own model (:func:`check_model`).

Tolerances: integers, booleans and keys (everything RNG-derived that is not a
float) are compared bitwise; floats with ``rtol=1e-4, atol=1e-5`` by default (the
purified program and the reference compute the same math, but XLA may fuse and
reassociate differently), ten times that for a generated program that
differentiates a derivative (a grad/linearize inside a grad/linearize:
:func:`tolerance`).
"""
from __future__ import annotations

import collections
import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

import purify
from purify import effects as fx
from purify import errors
from purify import passes as passes_lib
from purify.testing import build
from purify.testing import grammar as g
from purify.testing import reference as ref

RTOL = 1e-4
ATOL = 1e-5


def tolerance(program: g.Program) -> dict:
  """``rtol``/``atol`` for ``program``'s floats: the defaults, ten times them when it
  differentiates a derivative. Second derivatives through ``tanh`` and nested
  loops amplify last-bit differences between XLA's evaluation (unoptimized, under
  :func:`fast_compiles`) and the reference's op-by-op one: session 12's hunt met a
  1.5e-4 relative difference that disappears with XLA's optimizations on (the same
  program, keys and parameters; a wrong key or parameter differs by O(1))."""
  scale = 10.0 if g.ad_depth(program) >= 2 else 1.0
  return dict(rtol=RTOL * scale, atol=ATOL * scale)


class ModelCheckError(AssertionError):
  """A property of a model does not hold; the message names it and the inputs."""


@contextlib.contextmanager
def fast_compiles():
  """Compile with XLA's optimizations mostly off (``jax_disable_most_optimizations``).

  Generated programs are tiny and run once, so XLA's compile time dominates; the
  optimization level does not change what a program computes (integer and RNG
  results are bitwise the same; floats may differ in the last bits, which the
  tolerances allow). Example::

      with purify.testing.fast_compiles():
        purify.testing.check_model(model, x)
  """
  old = bool(jax.config.values.get("jax_disable_most_optimizations", False))
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", old)


def _is_float(dtype):
  return jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)


def assert_trees_close(got, want, what="", rtol=RTOL, atol=ATOL):
  """Same structure, shapes and dtypes; non-floats bitwise; floats allclose.

  Example::

      assert_trees_close({"a": jnp.ones(2)}, {"a": jnp.ones(2) + 1e-7}, "params")
  """
  sg, sw = jax.tree_util.tree_structure(got), jax.tree_util.tree_structure(want)
  if sg != sw:
    raise ModelCheckError(f"{what}: tree structures differ:\n  got  {sg}\n  want {sw}")
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(got)[0]]
  for path, a, b in zip(paths, jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
      raise ModelCheckError(f"{what}{path}: got {a.dtype}{list(a.shape)}, want {b.dtype}{list(b.shape)}")
    if _is_float(a.dtype):
      if not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        raise ModelCheckError(f"{what}{path}: floats differ beyond rtol={rtol}, atol={atol}:\n"
                              f"  got  {a}\n  want {b}")
    elif not np.array_equal(a, b):
      raise ModelCheckError(f"{what}{path}: differ (compared bitwise):\n  got  {a}\n  want {b}")


def _assert_shapes(got, want, what):
  """Trees of arrays / ShapeDtypeStructs with the same structure, shapes, dtypes."""
  sds = lambda t: jax.tree_util.tree_map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), t)  # noqa: E731
  if sds(got) != sds(want):
    raise ModelCheckError(f"{what}:\n  got  {sds(got)}\n  want {sds(want)}")


# ----------------------------------------------------------------------------- programs
_CACHE: "collections.OrderedDict[str, object]" = collections.OrderedDict()
ran: collections.Counter = collections.Counter()   # property -> programs checked
kinds_seen: collections.Counter = collections.Counter()
distinct: set = set()


def transformed(program: g.Program):
  """``purify.transform_with_state`` of a program's model (cached by source, so the
  properties of one program share its traces and compiles)."""
  src = g.to_source(program)
  t = _CACHE.get(src)
  if t is None:
    t = purify.transform_with_state(build.from_source(src))
    _CACHE[src] = t
    if len(_CACHE) > 32:
      _CACHE.popitem(last=False)
  return t


def inputs(program: g.Program, seed: int):
  """(x: f32[d], n: uint32[]) for a program, from a seed."""
  rs = np.random.RandomState(seed)
  return jnp.asarray(rs.uniform(-1.5, 1.5, program.d).astype(np.float32)), jnp.uint32(rs.randint(0, 1000))


def _count(name, program):
  ran[name] += 1
  src = g.to_source(program)
  if src not in distinct:
    distinct.add(src)
    for k in g.kinds(program):
      kinds_seen[k.split(":")[0]] += 1


def _explain(program: g.Program, x, n):
  return purify.explain(build.model_fn(program), x, n)


def check_reference(program: g.Program, seed: int = 0):
  """purify's init/apply == the reference interpreter: params, initial state, and
  two applies in a row (outputs and state)."""
  _count("reference", program)
  t = transformed(program)
  tol = tolerance(program)
  x, n = inputs(program, seed)
  k0, k1, k2 = jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1), jax.random.PRNGKey(seed + 2)
  params, state = t.init(k0, x, n)
  rparams, rstate = ref.init(program, k0)
  assert_trees_close(params, rparams, "init params", **tol)
  assert_trees_close(state, rstate, "init state", **tol)
  out, st1 = t.apply(rparams, rstate, k1, x, n)
  rout, rst1 = ref.apply(program, rparams, rstate, k1, x, n)
  assert_trees_close(out, rout, "apply output", **tol)
  assert_trees_close(st1, rst1, "apply state", **tol)
  out, st2 = t.apply(rparams, rst1, k2, x, n)
  rout, rst2 = ref.apply(program, rparams, rst1, k2, x, n)
  assert_trees_close(out, rout, "second apply output", **tol)
  assert_trees_close(st2, rst2, "second apply state", **tol)


def check_jit(program: g.Program, seed: int = 0):
  """``jax.jit(apply) == apply``."""
  _count("jit", program)
  t = transformed(program)
  x, n = inputs(program, seed)
  params, state = ref.init(program, jax.random.PRNGKey(seed))
  k = jax.random.PRNGKey(seed + 1)
  assert_trees_close(jax.jit(t.apply)(params, state, k, x, n), t.apply(params, state, k, x, n),
                     "jit(apply) vs apply", **tolerance(program))


def check_determinism(program: g.Program, seed: int = 0):
  """Same key, same result: init twice, apply twice (and a fresh transform agrees)."""
  _count("determinism", program)
  t = transformed(program)
  x, n = inputs(program, seed)
  k0, k1 = jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1)
  p1, s1 = t.init(k0, x, n)
  p2, s2 = t.init(k0, x, n)
  assert_trees_close(p1, p2, "init twice", rtol=0, atol=0)
  assert_trees_close(s1, s2, "init state twice", rtol=0, atol=0)
  o1 = t.apply(p1, s1, k1, x, n)
  o2 = t.apply(p1, s1, k1, x, n)
  assert_trees_close(o1, o2, "apply twice", rtol=0, atol=0)


def check_eval_shape(program: g.Program, seed: int = 0):
  """The param/state tree of ``jax.eval_shape(init)`` is the one loop semantics
  declares (every parameter of every branch, stacked where param_axes=0)."""
  _count("eval_shape", program)
  t = transformed(program)
  x, n = inputs(program, seed)
  got = jax.eval_shape(t.init, jax.random.PRNGKey(0), x, n)
  want_p = {}
  for (m, name), (shape, _, stack) in ref.param_specs(program).items():
    want_p.setdefault(m, {})[name] = jax.ShapeDtypeStruct(tuple(stack) + shape, jnp.float32)
  want_s = {}
  for (m, name), v in ref.state_specs(program).items():
    want_s.setdefault(m, {})[name] = jax.ShapeDtypeStruct(v.shape, v.dtype)
  _assert_shapes(got, (want_p, want_s), "eval_shape(init) vs declared params/state")


def check_vmap(program: g.Program, seed: int = 0, batch: int = 2):
  """``jax.vmap(apply)`` over a batch of inputs == a loop of apply over examples."""
  _count("vmap", program)
  t = transformed(program)
  xs, ns = zip(*[inputs(program, seed + i) for i in range(batch)])
  X, N = jnp.stack(xs), jnp.stack(ns)
  params, state = ref.init(program, jax.random.PRNGKey(seed))
  k = jax.random.PRNGKey(seed + 1)
  got = jax.vmap(t.apply, in_axes=(None, None, None, 0, 0))(params, state, k, X, N)
  outs = [t.apply(params, state, k, x, n) for x, n in zip(xs, ns)]
  want = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)
  assert_trees_close(got, want, "vmap(apply) vs loop", **tolerance(program))


def effect_primitives(closed_jaxpr) -> list:
  """Names of purify effect primitives anywhere in a (closed) jaxpr."""
  found = []

  def visit(j):
    j = getattr(j, "jaxpr", j)
    for e in j.eqns:
      if e.primitive in fx.EFFECT_PRIMITIVES or any(fx.is_purify_effect(x) for x in e.effects):
        found.append(e.primitive.name)
      for v in e.params.values():
        for s in (v if isinstance(v, (tuple, list)) else (v,)):
          if isinstance(s, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
            visit(s)
  visit(closed_jaxpr)
  return found


def check_pipeline(program: g.Program, seed: int = 0):
  """Every intermediate IR passes ``check_jaxpr`` and its pass's postcondition
  (explain runs the pipeline in verify mode); no effect primitive survives."""
  _count("pipeline", program)
  x, n = inputs(program, seed)
  records = _explain(program, x, n)
  from purify import _compat
  for name, prog in records[1:]:
    for _, j in prog.jaxprs():
      _compat.check_jaxpr(j)
  final = records[-1][1]
  left = [e for _, j in final.jaxprs() for e in effect_primitives(j)]
  if left:
    raise ModelCheckError(f"effect primitives survive the pipeline: {left}")
  # and the programs the transform runs are those
  t = transformed(program)
  jax.eval_shape(t.init, jax.random.PRNGKey(0), x, n)
  for entries in t.init.purified.cache.values():
    for c in entries.values():
      left = [e for _, j in c.program.jaxprs() for e in effect_primitives(j)]
      if left:
        raise ModelCheckError(f"effect primitives in the compiled program: {left}")


IDEMPOTENT_PASSES = ("hoist_params", "thread_rng", "thread_state", "dce")


def check_idempotent(program: g.Program, seed: int = 0):
  """Re-running a pass whose input and output are the same kind of program on its
  own output changes nothing (roles and printed IR)."""
  _count("idempotent", program)
  x, n = inputs(program, seed)
  records = dict(_explain(program, x, n))
  by_name = {p.name: p for p in passes_lib.DEFAULT_PASSES}
  for name in IDEMPOTENT_PASSES:
    prog = records[name]
    again = by_name[name](prog)
    if (again.in_roles, again.out_roles, str(again)) != (prog.in_roles, prog.out_roles, str(prog)):
      raise ModelCheckError(f"pass {name!r} is not idempotent")


def check_no_leaks(program: g.Program, seed: int = 0):
  """Tracing and the pipeline (init and apply programs) leak no tracer."""
  _count("leaks", program)
  x, n = inputs(program, seed)
  with jax.checking_leaks():
    t = purify.transform_with_state(build.model_fn(program))
    params, state = jax.eval_shape(t.init, jax.random.PRNGKey(0), x, n)
    jax.eval_shape(t.apply, params, state, jax.random.PRNGKey(1), x, n)


def check_invalid(source: str, bad: g.Bad, d: int, seed: int = 0):
  """An invalid program raises the expected purify error at init (and at apply),
  never a JAX internal error and never a result."""
  ran["invalid"] += 1
  fn = build.from_source(source)
  rs = np.random.RandomState(seed)
  x, n = jnp.asarray(rs.uniform(-1, 1, d).astype(np.float32)), jnp.uint32(rs.randint(0, 100))
  want = getattr(errors, bad.error)
  for what in ("init", "apply"):
    t = purify.transform_with_state(fn)
    try:
      if what == "init":
        t.init(jax.random.PRNGKey(0), x, n)
      else:
        t.apply({}, {}, jax.random.PRNGKey(0), x, n)
    except want:
      continue
    except Exception as e:
      raise ModelCheckError(f"{what} raised {type(e).__module__}.{type(e).__name__}, want "
                            f"purify.errors.{bad.error}:\n{e}\n--- program:\n{source}") from e
    raise ModelCheckError(f"{what} of an invalid program ({bad.kind}) returned a result:\n{source}")


program_checks = {
    "reference": check_reference, "jit": check_jit, "determinism": check_determinism,
    "eval_shape": check_eval_shape, "vmap": check_vmap, "pipeline": check_pipeline,
    "idempotent": check_idempotent, "leaks": check_no_leaks,
}


def check_program(program: g.Program, seed: int = 0, checks=tuple(program_checks)):
  """Run the named program checks on one program; a failure names the check and
  prints the program. Example::

      prog = grammar.finalize(grammar.Program(2, grammar.Block((grammar.Draw("bits"),))))
      check_program(prog, checks=("reference",))
  """
  for name in checks:
    try:
      program_checks[name](program, seed)
    except ModelCheckError as e:
      raise ModelCheckError(f"[{name}] {e}\n--- program:\n{g.to_source(program)}") from None


# ----------------------------------------------------------------------------- user models
def _input_strategy(a):
  from hypothesis import strategies as st
  from hypothesis.extra import numpy as hnp
  dt = np.dtype(a.dtype)
  if np.issubdtype(dt, np.floating):
    elems = st.floats(-2, 2, width=min(dt.itemsize * 8, 64), allow_nan=False)
  elif np.issubdtype(dt, np.bool_):
    elems = st.booleans()
  elif np.issubdtype(dt, np.integer):
    info = np.iinfo(dt)
    elems = st.integers(max(int(info.min), 0), min(int(info.max), 9))
  else:
    return st.just(a)
  return hnp.arrays(dt, tuple(a.shape), elements=elems).map(jnp.asarray)


def _is_array(a):
  return isinstance(a, (jax.Array, np.ndarray)) or hasattr(a, "shape") and hasattr(a, "dtype")


def check_model(transformed, *example_args, rng=None, max_examples: int = 5, batch: int = 3,
                rtol: float = RTOL, atol: float = ATOL, checks=("eval_shape", "determinism", "jit",
                                                               "vmap", "scan"),
                seed: int = 0, fast: bool = True):
  """Check a transformed model (``purify.transform`` or ``transform_with_state``)
  on inputs shaped like ``example_args``, generated by hypothesis:

  * ``"eval_shape"``: ``jax.eval_shape(init)`` has the params (and state) tree of
    ``init``;
  * ``"determinism"``: init and apply with the same key give the same result;
  * ``"jit"``: ``jax.jit(apply)`` gives apply's result (non-array arguments static);
  * ``"vmap"``: ``jax.vmap(apply)`` over ``batch`` stacked inputs == a loop;
  * ``"scan"``: apply under ``jax.lax.scan`` over the stacked inputs == the same
    loop unrolled.

  Array arguments are replaced by hypothesis-generated arrays of the same shape and
  dtype (floats in [-2, 2], integers in [0, 9]); other arguments are passed as they
  are (static). ``fast`` compiles with XLA optimizations off (see
  :func:`fast_compiles`). Raises :class:`ModelCheckError` naming the property.

  Example::

      model = purify.transform(lambda x: purify.nn.Linear(2)(x))
      purify.testing.check_model(model, jnp.ones((3, 4)))
  """
  from hypothesis import given, settings, HealthCheck, strategies as st
  with_state = isinstance(transformed, purify.TransformedWithState)
  init, apply = transformed
  rng = jax.random.PRNGKey(0) if rng is None else rng
  arr_idx = [i for i, a in enumerate(example_args) if _is_array(a)]
  static_idx = [i for i in range(len(example_args)) if i not in arr_idx]
  n_pre = 3 if with_state else 2          # params, [state,] rng
  unknown = set(checks) - {"eval_shape", "determinism", "jit", "vmap", "scan"}
  if unknown:
    raise ValueError(f"check_model: unknown checks {sorted(unknown)}")

  def apply_k(params, state, key, args):
    return apply(params, state, key, *args) if with_state else apply(params, key, *args)

  def init_both(key, args):
    out = init(key, *args)
    return out if with_state else (out, None)

  def one_example(args):
    k_init, k_apply = jax.random.split(rng)
    params, state = init_both(k_init, args)
    if "eval_shape" in checks:
      shapes = jax.eval_shape(functools.partial(_with_static, init, args, arr_idx), k_init,
                              *[args[i] for i in arr_idx])
      _assert_shapes(shapes, (params, state) if with_state else params,
                     "eval_shape(init) vs init")
    if "determinism" in checks:
      p2, s2 = init_both(k_init, args)
      assert_trees_close(p2, params, "init twice with one key", rtol=0, atol=0)
      assert_trees_close(apply_k(params, state, k_apply, args),
                         apply_k(params, state, k_apply, args), "apply twice with one key",
                         rtol=0, atol=0)
    want = apply_k(params, state, k_apply, args)
    if "jit" in checks:
      static = tuple(n_pre + i for i in static_idx)
      jitted = jax.jit(apply, static_argnums=static)
      pre = (params, state, k_apply) if with_state else (params, k_apply)
      assert_trees_close(jitted(*pre, *args), want, "jit(apply) vs apply", rtol, atol)
    return params, state, k_apply

  def batch_checks(params, state, k_apply, examples):
    if not ({"vmap", "scan"} & set(checks)):
      return
    outs = [apply_k(params, state, k_apply, ex) for ex in examples]
    loop = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)
    stacked = [jnp.stack([ex[i] for ex in examples]) for i in arr_idx]

    def per_example(*arrs):
      args = list(examples[0])
      for i, a in zip(arr_idx, arrs):
        args[i] = a
      return apply_k(params, state, k_apply, args)

    if "vmap" in checks:
      assert_trees_close(jax.vmap(per_example)(*stacked), loop, "vmap(apply) vs a loop over examples",
                         rtol, atol)
    if "scan" in checks:
      _, got = jax.lax.scan(lambda c, arrs: (c, per_example(*arrs)), None, stacked)
      assert_trees_close(got, loop, "scan of apply vs the unrolled loop", rtol, atol)

  strategies = [_input_strategy(example_args[i]) for i in arr_idx]
  one = st.tuples(*strategies)

  @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
            suppress_health_check=list(HealthCheck))
  @given(st.lists(one, min_size=batch, max_size=batch))
  def prop(batches):
    examples = []
    for arrs in batches:
      args = list(example_args)
      for i, a in zip(arr_idx, arrs):
        args[i] = a
      examples.append(args)
    params, state, k_apply = one_example(examples[0])
    batch_checks(params, state, k_apply, examples)

  ctx = fast_compiles() if fast else contextlib.nullcontext()
  with ctx:
    prop()


def _with_static(init, args, arr_idx, key, *arrs):
  a = list(args)
  for i, x in zip(arr_idx, arrs):
    a[i] = x
  return init(key, *a)
