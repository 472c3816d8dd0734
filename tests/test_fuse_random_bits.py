"""The fuse-random-bits pass: init's independent threefry draws share ONE threefry2x32
hash, and every initial value is what the pipeline without the pass gives (bitwise
where XLA's math does not depend on a kernel's shape, see _values)
(ResNet, TransformerLM, an MLP of assorted initializers, raw and typed root keys,
8/16/32/64-bit draws); a program with nothing to fuse is left as it is."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.extend import core as jcore

from _values import assert_same_values

import purify
from purify import _compat
from purify import passes
from purify.passes._assemble import iter_eqns
from purify.passes import fuse_random_bits
from purify.passes.fuse_random_bits import fuse, fused_random_bits

UNFUSED = passes.Pipeline([p for p in passes.DEFAULT_PASSES if p.name != "fuse_random_bits"])
TYPED, RAW = jax.random.key(5), jax.random.PRNGKey(5)


def count(jaxpr, prim):
  return sum(e.primitive is prim for e in iter_eqns(jaxpr))


def named_calls(jaxpr, name):
  return sum(e.primitive is _compat.jit_p and e.params["name"] == name
             for e in _compat.open_of(jaxpr).eqns)


def draws(jaxpr):
  """(random_bits left, fused hashes: the pass's top-level ``threefry2x32`` calls)."""
  assert count(jaxpr, _compat.threefry2x32_p) == 0
  return count(jaxpr, _compat.random_bits_p), named_calls(jaxpr, "threefry2x32")


def check_init(f, *args, with_state=False, root=TYPED):
  """init with and without the pass: the same values (``_values``); returns the explain stages and
  the fused init's values."""
  make = purify.transform_with_state if with_state else purify.transform
  got = make(f).init(root, *args)
  want = make(f, pipeline=UNFUSED).init(root, *args)
  if with_state:           # (the states: init's forward pass from the parameters)
    assert_same_values(got[0], want[0])
    assert_same_values(got[1], want[1], derived=True)
  else:
    assert_same_values(got, want)
  assert jax.tree_util.tree_leaves(got)
  return dict(purify.explain(f, *args, key=root)), got


def check_fused_to_one(stages):
  """Before the pass N >= 2 draws (and no hash); after it none, one hash (also after DCE)."""
  before = draws(stages["split_init"].init_jaxpr)
  assert before[0] >= 2 and before[1] == 0, before
  assert draws(stages["fuse_random_bits"].init_jaxpr) == (0, 1)
  assert draws(stages["verify_pure"].init_jaxpr) == (0, 1)
  # the hash's operands (a few lookups a key) are ONE call at init's top level
  fused = stages["fuse_random_bits"].init_jaxpr
  assert named_calls(fused, fuse_random_bits.OPERANDS_CALL) == 1
  assert not [e for e in _compat.open_of(fused).eqns if e.primitive.name in ("ge", "gather")]
  # the parameters' keys are derived with the written-out hash too: no live fold_in
  # is left (dead ones go at DCE)
  assert count(stages["split_init"].init_jaxpr, _compat.random_fold_in_p) >= 2
  assert count(stages["verify_pure"].init_jaxpr, _compat.random_fold_in_p) == 0
  assert named_calls(stages["verify_pure"].init_jaxpr, "threefry_fold_in") >= 2
  return before[0]


# ----------------------------------------------------------------------------- models
def resnet(x, is_training):
  net = purify.nn.ResNet(blocks_per_group=(0, 0, 0, 1), num_classes=5, bottleneck=True,
                         channels_per_group=(8, 8, 16, 16), use_projection=(True,) * 4,
                         initial_conv_config=dict(output_channels=8, kernel_shape=3))
  return net(x, is_training)


def test_resnet_init_is_the_unfused_init():
  stages, _ = check_init(resnet, jnp.ones((1, 16, 16, 3)), True, with_state=True)
  assert check_fused_to_one(stages) >= 4         # the convs' truncated normals, by shape


def test_transformer_lm_init_is_the_unfused_init():
  """Stacked layers (scan_layers: one vmapped initializer call per stack) and a raw
  ``PRNGKey`` root."""
  lm = lambda tok: purify.nn.TransformerLM(11, 8, 2, 2, max_len=4, scan_layers=True)(  # noqa: E731
      tok, is_training=False)
  check_fused_to_one(check_init(lm, jnp.zeros((1, 4), jnp.int32), root=RAW)[0])


def two_draws(key, shape, dtype):
  """A custom initializer drawing twice, from split keys."""
  k1, k2 = jax.random.split(key)
  return jax.random.normal(k1, shape, dtype) + jax.random.uniform(k2, shape, dtype)


def bits_init(dtype):
  return lambda key, shape, _: jax.random.bits(key, shape, dtype)


INITS = [jax.nn.initializers.normal(0.3), jax.nn.initializers.truncated_normal(0.5),
         functools.partial(jax.random.uniform, minval=-2.0), jax.nn.initializers.orthogonal(),
         jax.nn.initializers.variance_scaling(2.0, "fan_avg", "uniform"), two_draws]


def mlp(x):
  for i, init in enumerate(INITS):
    x = jnp.tanh(x @ purify.param(f"w{i}", (4, 4), init=init))
  x = x + purify.param("b", (4,), init=two_draws)
  for dtype in (jnp.uint8, jnp.uint16):
    x = x + purify.param(f"bits_{jnp.dtype(dtype).name}", (4,), dtype,
                         init=bits_init(dtype)).astype(jnp.float32)
  return x + jax.random.uniform(purify.next_rng_key(), x.shape)   # apply-only draw


def test_mlp_of_assorted_initializers_is_the_unfused_init():
  """Also against JAX directly: each parameter has the values of its own initializer
  called on its own key (under jit, as init runs)."""
  stages, params = check_init(mlp, jnp.ones((2, 4)), root=RAW)
  # every group's draws (two for each custom initializer call), none of apply's
  assert check_fused_to_one(stages) == len(INITS) + 1 + 2 + 2
  for name, init, shape, dtype in [("w5", two_draws, (4, 4), jnp.float32),
                                   ("bits_uint8", bits_init(jnp.uint8), (4,), jnp.uint8)]:
    want = jax.jit(lambda r: init(purify.keys.param_key(r, "~/" + name), shape, dtype))(RAW)
    assert_same_values(params["~"][name], want)


def bounded(x):
  """Truncated normals whose tails differ only in their scalars, some computed from
  the bounds (``erf(lower / sqrt 2)``...): the pass orders such draws by them."""
  for i, n in enumerate((3, 5, 7, 11, 13, 17)):
    init = jax.nn.initializers.truncated_normal(1 / n, lower=-1.0 - i / 4, upper=1.0 + i / 3)
    x = x[..., :1] @ purify.param(f"w{i}", (1, n), init=init)
  return x


def test_the_fused_init_is_the_same_program_for_every_trace():
  """The fused program (its order of draws) must not depend on anything but the
  program: traced again, the same text, so the same compiled init (the helpers' caches
  hit). Regression: the constants were numbered in a set's order (by ``id``), so the
  draws of one level came out in a different order from one trace to the next."""
  texts = {str(dict(purify.explain(bounded, jnp.ones((2, 1)), key=RAW))["fuse_random_bits"].init_jaxpr)
           for _ in range(4)}
  assert len(texts) == 1


def test_64_bit_draws_under_x64():
  with jax.enable_x64(True):
    def f(x):
      a = purify.param("a", (3,), jnp.uint64, init=bits_init(jnp.uint64))
      b = purify.param("b", (2, 2), jnp.uint64, init=bits_init(jnp.uint64))
      c = purify.param("c", (5,), jnp.uint16, init=bits_init(jnp.uint16))
      return x + a.sum() + b.sum() + c.sum()
    stages, _ = check_init(f, jnp.ones((), jnp.uint64))
    assert check_fused_to_one(stages) == 3
    helper = jax.make_jaxpr(fused_random_bits((((), (3,), 64),)))(TYPED)
    assert _compat.open_of(helper).outvars[0].aval.dtype == jnp.uint64


def test_dependent_draws_fuse_by_level():
  """A draw whose key depends on another draw's value waits for it: each level of
  independent draws is one hash (here two levels: two hashes, values unchanged)."""
  def chained(key, shape, dtype):
    first = jax.random.bits(key, (), jnp.uint32)
    return jax.random.normal(jax.random.fold_in(key, first), shape, dtype)

  def f(x):
    return (x * purify.param("a", (3,), init=chained) + purify.param("b", (2, 3), init=chained)
            + purify.param("c", (3,), init=INITS[0]))
  stages, _ = check_init(f, jnp.ones(3))
  assert draws(stages["split_init"].init_jaxpr) == (5, 0)
  assert draws(stages["verify_pure"].init_jaxpr) == (0, 2)


def test_nothing_to_fuse_leaves_the_program_unchanged():
  def no_draws(x):
    return x * purify.param("w", (3,), init=jax.nn.initializers.ones) + purify.get_state(
        "s", (3,), init=jnp.zeros)

  def one_draw(x):
    return x * purify.param("w", (3,), init=INITS[0])

  def two_draws_model(x):
    return x * purify.param("w", (3,), init=INITS[0]) + purify.param("v", (2, 3), init=INITS[2])

  stages = dict(purify.explain(no_draws, jnp.ones(3)))
  assert stages["fuse_random_bits"].init_jaxpr is stages["split_init"].init_jaxpr
  # one draw: nothing to fuse, but it gets the written-out hash (values unchanged)
  stages, _ = check_init(one_draw, jnp.ones(3))
  assert draws(stages["split_init"].init_jaxpr) == (1, 0)
  assert draws(stages["fuse_random_bits"].init_jaxpr) == (0, 1)
  # draws lowered in JAX's original (non-partitionable) form are not touched (the
  # keys' fold_in does not depend on the form: it is written out all the same)
  with jax.threefry_partitionable(False):
    stages, _ = check_init(two_draws_model, jnp.ones(3))
  assert draws(stages["split_init"].init_jaxpr) == (2, 0)
  assert draws(stages["fuse_random_bits"].init_jaxpr) == (2, 0)
  assert count(stages["verify_pure"].init_jaxpr, _compat.random_fold_in_p) == 0
  # (and with it, they are fused)
  stages = dict(purify.explain(two_draws_model, jnp.ones(3)))
  assert draws(stages["fuse_random_bits"].init_jaxpr) == (0, 1)


def test_fuse_on_a_plain_jaxpr(monkeypatch):
  """``fuse`` directly: batched keys, several widths, a draw inside a loop (left in
  place), another PRNG implementation (left alone), a cap on the fused size; bitwise
  the same outputs."""
  def f(k, ks, r):
    a = jax.random.uniform(k, (3, 4))
    b = jax.vmap(lambda kk: jax.random.bits(kk, (5,), jnp.uint8))(ks)
    c = jax.random.bits(k, (), jnp.uint16)
    d = jax.lax.fori_loop(0, 2, lambda i, s: s + jax.random.normal(jax.random.fold_in(k, i)), 0.)
    e = jax.random.normal(r, (2,))
    return a, b, c, d, e

  args = (TYPED, jax.random.split(TYPED, 3), jax.random.key(1, impl="rbg"))
  cj = jax.make_jaxpr(f)(*args)
  fused = fuse(cj)
  _compat.check_jaxpr(fused)
  assert draws(cj) == (5, 0) and draws(fused) == (2, 1)      # the loop's and rbg's remain
  run = lambda j: jax.jit(jcore.jaxpr_as_fun(j))(*args)  # noqa: E731
  assert_same_values(run(fused), run(cj))
  assert fuse(fused) is fused                               # idempotent
  # a size cap: draws of 12, 15 and 1 elements -> 15 + 1 fused, 12 alone (its own hash)
  monkeypatch.setattr(fuse_random_bits, "MAX_FUSED_ELEMENTS", 16)
  capped = fuse(cj)
  assert draws(capped) == (2, 2)
  assert_same_values(run(capped), run(cj))
  # draws at least the cap are left as they are: only the 1-element one is rewritten
  monkeypatch.setattr(fuse_random_bits, "MAX_FUSED_ELEMENTS", 12)
  capped = fuse(cj)
  assert draws(capped) == (4, 1)
  assert_same_values(run(capped), run(cj))


def test_inlining_computes_each_constant_scalar_once():
  """Scalars computed from literals alone the same way are computed once (every
  truncated normal computes its bounds' ``erf`` for itself); -0.0 and 0.0 are
  different literals, and a scalar computed from an input is never shared. The
  same values."""
  f32 = np.float32

  def f(x, k):
    c1 = jax.lax.mul(f32(2.0), f32(3.0))
    c2 = jax.lax.mul(f32(2.0), f32(3.0))                      # the same: shared
    z1 = jax.lax.add(f32(0.0), f32(1.0))
    z2 = jax.lax.add(f32(-0.0), f32(1.0))                     # another literal: kept
    y1, y2 = jax.lax.mul(x, f32(3.0)), jax.lax.mul(x, f32(3.0))  # from an input: kept
    draw = jax.random.truncated_normal(k, -2.0, 2.0, (3,))
    more = jax.random.truncated_normal(jax.random.fold_in(k, 1), -2.0, 2.0, (4,))
    return c1 + c2 + z1 + z2 + y1 + y2, draw, more

  args = (jnp.float32(1.5), TYPED)
  cj = jax.make_jaxpr(f)(*args)
  fused = fuse(cj)
  _compat.check_jaxpr(fused)
  top = _compat.open_of(fused).eqns
  literal_only = lambda e: all(isinstance(v, _compat.Literal) for v in e.invars)  # noqa: E731
  assert sum(e.primitive.name == "mul" and literal_only(e) for e in top) == 1
  assert sum(e.primitive.name == "add" and literal_only(e) for e in top) == 2
  assert sum(e.primitive.name == "mul" and not literal_only(e)
             and e.invars[0].aval.shape == () for e in top) >= 2
  # the two truncated normals' bounds: erf(lower / sqrt2), erf(upper / sqrt2) once
  assert sum(e.primitive.name == "erf" for e in top) == 2
  assert sum(e.primitive.name == "erf" for e in iter_eqns(cj)) == 4
  run = lambda j: jax.jit(jcore.jaxpr_as_fun(j))(*args)  # noqa: E731
  assert_same_values(run(fused), run(cj))


def test_pass_is_in_the_default_pipeline_after_split_init():
  names = passes.default_pipeline().names
  assert names.index("fuse_random_bits") == names.index("split_init") + 1


def test_many_keys_concatenate_the_operands_and_the_values_are_the_same(monkeypatch):
  """Above MAX_SEGMENTS keys in one hash the operands are concatenated per draw, not
  selected per key: the same bits either way."""
  f = lambda x: purify.nn.MLP([4, 8, 4, 4])(x)  # noqa: E731
  x = jnp.ones((2, 4))
  want = purify.transform(f).init(RAW, x)
  fuse_random_bits._fused_jaxpr.cache_clear()
  monkeypatch.setattr(fuse_random_bits, "MAX_SEGMENTS", 1)
  stages = dict(purify.explain(f, x, key=RAW))
  assert "concatenate" in str(stages["fuse_random_bits"].init_jaxpr)
  assert_same_values(purify.transform(f).init(RAW, x), want)
  fuse_random_bits._fused_jaxpr.cache_clear()


def test_the_written_out_hash_is_the_primitive_bitwise_and_its_calls_are_templates():
  # threefry2x32_rounds is our own lax form of the hash: equal to JAX's primitive on
  # arbitrary words, including the all-ones and zero corners
  words = [jax.random.bits(jax.random.key(i), (257,), np.uint32) for i in range(4)]
  words = [w.at[:2].set(np.array([0, 0xFFFFFFFF], np.uint32)) for w in words]
  want = _compat.threefry2x32_p.bind(*words)
  got = fuse_random_bits.threefry2x32_rounds(*words)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
  # hashed(): one call whose body is the template's equations on the new length
  # (any shape: flattened and restored) — the values of the jitted hash itself
  for shape in [(257,), (3, 5), (1,)]:
    ws = [w[:int(np.prod(shape))].reshape(shape) for w in words]
    for fn in (fuse_random_bits.threefry2x32, fuse_random_bits.threefry2x32_bits):
      cj = jax.make_jaxpr(lambda *a, fn=fn: fuse_random_bits.hashed(fn, *a))(*ws)
      calls = [e for e in _compat.open_of(cj).eqns if e.primitive is _compat.jit_p]
      assert len(calls) == 1 and calls[0].params["name"] == "threefry2x32"
      _compat.check_jaxpr(cj)
      got = jax.jit(lambda *a, fn=fn: fuse_random_bits.hashed(fn, *a))(*ws)
      want = fn(*ws)
      for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_block_is_the_largest_common_divisor_up_to_the_cap():
  assert fuse_random_bits._block([64 * 147, 3 * 3 * 64 * 64, 2048 * 1000]) == 64
  assert fuse_random_bits._block([4096, 8192]) == fuse_random_bits.MAX_BLOCK
  assert fuse_random_bits._block([3 * 1000, 3 * 1000]) == 1000     # a divisor of 3000, <= 1024
  assert fuse_random_bits._block([12, 20]) == 1                     # gcd 4 < MIN_BLOCK
  assert fuse_random_bits._block([7, 14]) == 1                      # 7 < MIN_BLOCK
  assert fuse_random_bits._block([8, 24]) == 8


_SPEC = st.tuples(st.sampled_from([(), (1,), (3,), (2, 2)]),
                  st.sampled_from([(), (1,), (8,), (3, 8), (16,), (5,), (2, 12), (40,)]),
                  st.sampled_from([8, 16, 32]))


@settings(max_examples=25, deadline=None)
@given(st.lists(_SPEC, min_size=1, max_size=5))
def test_fused_draws_are_jax_draws_in_blocks_or_one_an_element(specs):
  """Any draws (key batches, element shapes, widths): each is bitwise
  ``jax.random.bits`` of its keys, whether the hash's operands are looked up once a
  block of one key's elements (the sizes share a factor >= MIN_BLOCK) or once an
  element; and in the block form the lookup (the one gather) has a row a block."""
  specs = tuple(specs)
  keys = [jax.random.split(jax.random.key(i), b) if b else jax.random.key(i)
          for i, (b, _, _) in enumerate(specs)]
  got = jax.jit(fused_random_bits(specs))(*keys)
  for k, (b, shape, w), g in zip(keys, specs, got):
    draw = lambda kk, shape=shape, w=w: jax.random.bits(kk, shape, np.dtype(f"uint{w}"))  # noqa: E731
    want = draw(k) if not b else jax.vmap(draw)(k.reshape(-1)).reshape(b + shape)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(want))
  sizes = [int(np.prod(s)) for b, s, _ in specs for _ in range(int(np.prod(b)))]
  cj = jax.make_jaxpr(fused_random_bits(specs))(*keys)
  gathers = [e for e in iter_eqns(cj) if e.primitive.name == "gather"]
  if len(sizes) > 1 and sum(sizes) < 2 ** 32:
    block = fuse_random_bits._block(sizes)
    assert [tuple(e.outvars[0].aval.shape) for e in gathers] == [(sum(sizes) // block, 3)]
  else:
    assert not gathers


@pytest.mark.parametrize("key_shape,msg_shape", [((), (7,)), ((7,), (7,)), ((2, 3), ()),
                                                 ((), ()), ((4, 1), (1, 5))])
def test_written_out_fold_in_is_jax_fold_in_and_one_kernel_a_fold(key_shape, msg_shape):
  """Bitwise ``jax.random.fold_in`` of any broadcast keys and messages; both halves
  of the new keys come from ONE call of the hash (one kernel, not one a half)."""
  n = int(np.prod(key_shape))
  ks = jax.random.split(jax.random.key(3), n).reshape(key_shape) if key_shape else jax.random.key(3)
  msgs = np.arange(int(np.prod(msg_shape)), dtype=np.uint32).reshape(msg_shape) + np.uint32(11)
  shape = np.broadcast_shapes(key_shape, msg_shape)
  got = fuse_random_bits.threefry_fold_in(ks, msgs)
  flat_k = jnp.broadcast_to(ks, shape).reshape(-1)
  want = jax.vmap(jax.random.fold_in)(flat_k, np.broadcast_to(msgs, shape).reshape(-1))
  np.testing.assert_array_equal(jax.random.key_data(got),
                                jax.random.key_data(want).reshape(shape + (2,)))
  cj = jax.make_jaxpr(fuse_random_bits.threefry_fold_in.__wrapped__)(ks, msgs)
  hashes = [e for e in _compat.open_of(cj).eqns if e.primitive is _compat.jit_p]
  assert len(hashes) == 1 and len(hashes[0].outvars) == 1
