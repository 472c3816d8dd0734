"""fuse-init-tails: the tails of alike init draws (the elementwise computation from
the bits to the values, up to a per-group scale) are computed once on the hash's
slice that holds them; the values (bitwise where XLA allows, see _values) of the
init without the pass, of the ungrouped and unfused init, and of a hand-written
pure-JAX reference."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from _values import assert_same_values

import purify
from purify import _compat
from purify import keys
from purify import passes
from purify.passes import fuse_init_tails

NO_TAILS = passes.Pipeline([passes.FuseInitTails(enabled=False) if p.name == "fuse_init_tails"
                            else p for p in passes.DEFAULT_PASSES])
NOTHING_FUSED = passes.Pipeline(
    [passes.GroupInit(enabled=False) if p.name == "group_init" else p
     for p in passes.DEFAULT_PASSES if p.name not in ("fuse_random_bits", "fuse_init_tails")])

SHAPES = [(3, 5), (4, 6), (2, 7), (5, 5)]


def tn(stddev, lower=-2.0, upper=2.0):
  """A truncated normal initializer (jax.nn's variance scaling: * stddev at the end)."""
  def init(key, shape, dtype):
    return jax.random.truncated_normal(key, lower, upper, shape, dtype) * stddev
  return init


def model(x, inits=None):
  inits = inits or [tn(0.1 * (i + 1)) for i in range(len(SHAPES))]
  out = x.sum()
  for n, (shape, init) in enumerate(zip(SHAPES, inits)):
    out = out + purify.param(f"w{n}", shape, init=init).sum()
    out = out + purify.param(f"v{n}", shape, init=init).sum()        # a group of two
  return out


def count(jaxpr, name):
  return sum(e.primitive.name == name for e in _compat.open_of(jaxpr).eqns)


def reference(root, inits=None):
  """Hand-written: each parameter's initializer on its own key."""
  inits = inits or [tn(0.1 * (i + 1)) for i in range(len(SHAPES))]
  out = {}
  for n, (shape, init) in enumerate(zip(SHAPES, inits)):
    for name in (f"w{n}", f"v{n}"):
      out[name] = init(keys.param_key(root, "~/" + name), shape, jnp.float32)
  return {"~": out}


def test_alike_tails_share_one_erf_inv_and_the_values_are_the_same():
  x, root = jnp.ones(2), jax.random.key(3)
  stages = dict(purify.explain(model, x, key=root))
  before = stages["fuse_random_bits"].init_jaxpr
  after = stages["fuse_init_tails"].init_jaxpr
  assert count(before, "erf_inv") == len(SHAPES)          # one tail per group
  assert count(after, "erf_inv") == 1                      # one for all of them
  assert count(stages["verify_pure"].init_jaxpr, "erf_inv") == 1
  # each group still scales its own part (the standard deviations differ)
  final = str(stages["verify_pure"].init_jaxpr)
  for i in range(len(SHAPES)):
    assert repr(np.float32(0.1 * (i + 1)))[:6] in final or f"{0.1 * (i + 1):.6}" in final
  got = purify.transform(model).init(root, x)
  assert_same_values(got, purify.transform(model, pipeline=NO_TAILS).init(root, x))
  assert_same_values(got, purify.transform(model, pipeline=NOTHING_FUSED).init(root, x))
  assert_same_values(got, jax.jit(purify.transform(model).init)(root, x))
  assert_same_values(got, reference(root))


def test_whole_chains_are_shared_each_draw_is_a_slice_of_one_result():
  """The standard deviations differ only in the last product: it takes them as a
  vector, so each parameter is a slice of ONE result, which an eager init returns
  once (its only kernel) and slices on the host."""
  x, root = jnp.ones(2), jax.random.key(3)
  t = purify.transform(model)
  plan = t.init.purified.compiled(root, (x,), {})[0].init_exec.plan
  assert len(plan.first.jaxpr.outvars) == 1
  views = [view for k, view in plan.outs]
  assert all(k == 0 for k, _ in plan.outs) and all(v[0][0] == "slice" for v in views)
  spans = sorted({(v[0][1], v[0][2]) for v in views})     # the hash's slice, tiled
  assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
  assert_same_values(t.init(root, x), reference(root))


def two_products(stddev):
  """``erf_inv(u) * sqrt2 * stddev``, two products (as jax.nn's normal() on JAX 0.10)."""
  def init(key, shape, dtype):
    u = jax.random.uniform(key, shape, dtype, -0.99, 0.99)
    return jax.scipy.special.erfinv(u) * np.float32(1.4142135) * np.float32(stddev)
  return init


def test_a_product_right_after_a_product_is_not_spread():
  """As constants XLA may fold ``x * a * b`` into ``x * (a * b)``; with ``b`` a vector
  it would round differently, and so did draws sharing up to erf_inv and finishing
  their own chains (one ulp off). Left alone: bitwise as without the pass."""
  inits = [two_products(0.1 * (i + 1)) for i in range(len(SHAPES))]
  x, root = jnp.ones(2), jax.random.PRNGKey(7)
  f = lambda x: model(x, inits)  # noqa: E731
  stages = dict(purify.explain(f, x, key=root))
  assert stages["fuse_init_tails"].init_jaxpr is stages["fuse_random_bits"].init_jaxpr
  assert count(stages["verify_pure"].init_jaxpr, "erf_inv") == len(SHAPES)
  assert_same_values(purify.transform(f).init(root, x),
                     purify.transform(f, pipeline=NOTHING_FUSED).init(root, x))


def test_a_draw_that_goes_on_into_arithmetic_is_not_shared():
  """``normal() + uniform()``: XLA fuses the normal's last product with the sum (an
  FMA) when they are in one kernel; computed apart it rounds once more. Only draws
  init returns as they are (or as rows) are shared."""
  def two_draws(key, shape, dtype):
    k1, k2 = jax.random.split(key)
    return jax.random.truncated_normal(k1, -2.0, 2.0, shape, dtype) * 0.5 + jax.random.uniform(k2, shape, dtype)
  x, root = jnp.ones(2), jax.random.PRNGKey(8)
  f = lambda x: model(x, [two_draws] * len(SHAPES))  # noqa: E731
  stages = dict(purify.explain(f, x, key=root))
  assert stages["fuse_init_tails"].init_jaxpr is stages["fuse_random_bits"].init_jaxpr
  assert_same_values(purify.transform(f).init(root, x),
                     purify.transform(f, pipeline=NOTHING_FUSED).init(root, x))


def test_tails_with_different_bounds_are_not_shared():
  """The truncation bounds are inside the tail (before erf_inv): different bounds,
  different tails."""
  inits = [tn(0.5, -2.0, 2.0), tn(0.5, -1.0, 1.0), tn(0.25, -2.0, 2.0), tn(0.5, -1.0, 1.0)]
  x, root = jnp.ones(2), jax.random.PRNGKey(4)
  f = lambda x: model(x, inits)  # noqa: E731
  stages = dict(purify.explain(f, x, key=root))
  after = stages["verify_pure"].init_jaxpr
  assert count(after, "erf_inv") == 2                      # one per pair of bounds
  got = purify.transform(f).init(root, x)
  assert_same_values(got, purify.transform(f, pipeline=NOTHING_FUSED).init(root, x))
  assert_same_values(got, reference(root, inits))


def test_cheap_tails_and_reused_values_are_left_alone():
  """Uniform tails have nothing expensive to share; a tail value used twice ends its
  chain where it is reused."""
  def uniform_model(x):
    return sum(purify.param(f"u{n}", s, init=jax.nn.initializers.uniform(0.1 * (n + 1))).sum()
               for n, s in enumerate(SHAPES)) + x.sum()

  x, root = jnp.ones(2), jax.random.key(5)
  stages = dict(purify.explain(uniform_model, x, key=root))
  assert stages["fuse_init_tails"].init_jaxpr is stages["fuse_random_bits"].init_jaxpr

  def twice(key, shape, dtype):                       # erf_inv's input is used twice
    u = jax.random.uniform(key, shape, dtype, -0.9, 0.9)
    return jax.scipy.special.erfinv(u) * 2.0 + u

  def twice_model(x):
    return sum(purify.param(f"t{n}", s, init=twice).sum() for n, s in enumerate(SHAPES)) + x.sum()

  stages = dict(purify.explain(twice_model, x, key=root))
  assert count(stages["verify_pure"].init_jaxpr, "erf_inv") == len(SHAPES)
  assert_same_values(purify.transform(twice_model).init(root, x),
                     purify.transform(twice_model, pipeline=NOTHING_FUSED).init(root, x))


def test_stacked_groups_and_the_scanned_transformer_are_the_same():
  lm = lambda tok: purify.nn.TransformerLM(11, 8, 2, 2, max_len=4, scan_layers=True)(  # noqa: E731
      tok, is_training=False)
  tok, root = jnp.zeros((1, 4), jnp.int32), jax.random.PRNGKey(6)
  got = purify.transform(lm).init(root, tok)
  assert_same_values(got, purify.transform(lm, pipeline=NOTHING_FUSED).init(root, tok))
  stages = dict(purify.explain(lm, tok, key=root))
  assert (count(stages["verify_pure"].init_jaxpr, "erf_inv")
          < count(stages["fuse_random_bits"].init_jaxpr, "erf_inv"))


def test_value_numbering_sees_equal_scalars_computed_apart():
  """Two groups compute erf(lower / sqrt 2) each; the values are equal, so the
  chains are alike (the value numbers of their scalars agree)."""
  root = jax.random.key(0)
  stages = dict(purify.explain(model, jnp.ones(2), key=root))
  j = _compat.open_of(stages["fuse_random_bits"].init_jaxpr)
  g = fuse_init_tails.Graph(list(j.eqns), j.outvars, j.invars)
  erfs = [e.outvars[0] for e in j.eqns if e.primitive.name == "erf"
          and math.prod(e.outvars[0].aval.shape) == 1]
  assert len(erfs) >= 2 and len({id(v) for v in erfs}) == len(erfs)
  assert len({g.value_number(v) for v in erfs}) <= 2      # erf(lower), erf(upper)
