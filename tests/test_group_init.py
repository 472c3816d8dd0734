"""The group-init pass: parameters sharing (shape, dtype, stack, initializer) are
initialized by one vmapped call; values are those of one call per parameter
(bitwise where XLA's math does not depend on a kernel's shape, see _values)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _values import assert_same_values

import purify
from purify import _compat, keys, passes
from purify.passes.group_init import initializer_key, Unique

UNGROUPED = passes.Pipeline([passes.GroupInit(enabled=False) if p.name == "group_init" else p
                             for p in passes.DEFAULT_PASSES])


class Scaled:                      # a callable object: compared by identity only
  def __init__(self, s):
    self.s = s

  def __call__(self, key, shape, dtype):
    return self.s * jax.random.normal(key, shape, dtype)


SCALED = Scaled(0.5)


def model(x):
  for i in range(3):
    x = jnp.tanh(purify.nn.MLP([8, 8, 4], name=f"mlp_{i}")(x))
    x = x + purify.param(f"shift_{i}", (4,), init=jax.nn.initializers.normal(0.1))
    x = x * purify.param(f"scale_{i}", (4,), init=SCALED)
    x = x + purify.param(f"u_{i}", (4,), init=functools.partial(jax.random.uniform, minval=-1.))
  x = purify.scan(lambda h, _: (purify.nn.Linear(4)(h), None), x, None, length=2, param_axes=0)[0]
  inner = purify.transform(lambda z: purify.nn.Linear(4)(z))
  lifted = purify.lift(inner.init, name="inner")(purify.next_rng_key(), x)
  return inner.apply(lifted, None, x)


X = jnp.ones((2, 4))


def _groups(pipeline=None):
  t = purify.transform(model, pipeline=pipeline)
  c, _ = t.init.purified.compiled(jax.random.key(0), (X,), {})
  return c.program, t


def test_grouped_init_is_the_ungrouped_init():
  root = jax.random.key(3)
  grouped = purify.transform(model).init(root, X)
  ungrouped = purify.transform(model, pipeline=UNGROUPED).init(root, X)
  assert_same_values(grouped, ungrouped)


def test_each_param_keeps_its_name_derived_value():
  """The reference runs under jax.jit too: eager op-by-op evaluation may differ from
  any compiled program in the last bit of erf_inv."""
  root = jax.random.key(3)
  params = purify.transform(model).init(root, X)
  want = jax.jit(lambda r: jax.nn.initializers.normal(0.1)(
      keys.param_key(r, "~/shift_1"), (4,), jnp.float32))(root)
  np.testing.assert_array_equal(params["~"]["shift_1"], want)
  want = jax.jit(lambda r: SCALED(keys.param_key(r, "~/scale_2"), (4,), jnp.float32))(root)
  np.testing.assert_array_equal(params["~"]["scale_2"], want)


def test_groups_follow_shape_dtype_stack_and_what_the_initializer_computes():
  program, _ = _groups()
  by_member = {k: g for g in program.init_groups for k in g}
  # the three MLPs' first layers: same shape, same truncated_normal(1/sqrt(4)) closure
  assert len(by_member[("mlp_0/~/linear_0", "w")]) == 3
  assert by_member[("mlp_0/~/linear_0", "w")] == by_member[("mlp_2/~/linear_0", "w")]
  # the same shape (8, 8) vs (8, 4): different groups
  assert by_member[("mlp_0/~/linear_1", "w")] != by_member[("mlp_0/~/linear_2", "w")]
  # zeros biases of shape (8,) across MLPs and layers share a group
  assert {("mlp_1/~/linear_0", "b"), ("mlp_1/~/linear_1", "b")} <= set(by_member[("mlp_0/~/linear_0", "b")])
  # normal(0.1) closures compare equal; the callable object by identity; partials by value
  assert len(by_member[("~", "shift_0")]) == 3
  assert len(by_member[("~", "scale_0")]) == 3
  assert len(by_member[("~", "u_0")]) == 3
  # a stacked (param_axes=0) parameter is not grouped with unstacked ones of its base shape
  assert by_member[("linear", "w")] == (("linear", "w"),)
  # lifted params keep one group each (their own init)
  assert all(len(by_member[k]) == 1 for k in program.params if k[0].startswith("inner/"))
  assert len(program.init_groups) < len(program.params) / 2


def test_ungrouped_pipeline_has_singleton_groups():
  program, _ = _groups(UNGROUPED)
  assert all(len(g) == 1 for g in program.init_groups)
  assert len(program.init_groups) == len(program.params)


def test_initializer_key_compares_by_behaviour():
  assert initializer_key(jax.nn.initializers.normal(0.1)) == initializer_key(jax.nn.initializers.normal(0.1))
  assert initializer_key(jax.nn.initializers.normal(0.1)) != initializer_key(jax.nn.initializers.normal(0.2))
  assert (initializer_key(functools.partial(jax.random.uniform, minval=-1.)) ==
          initializer_key(functools.partial(jax.random.uniform, minval=-1.)))
  arr = np.ones(3)
  try:
    initializer_key(lambda k, s, d: arr)
    raise AssertionError("a closed-over array must not be compared by value")
  except Unique:
    pass


def test_derive_many_is_bitwise_derive():
  root = jax.random.PRNGKey(7)
  names = ["param:a/w", "param:b/~/c/w", "rng:x#3"]
  many = keys.derive_many(root, names)
  for i, n in enumerate(names):
    np.testing.assert_array_equal(many[i], keys.derive(root, n))


def _count(cj, name):
  from purify.passes._assemble import iter_eqns
  return sum(e.primitive.name == name for e in iter_eqns(cj))


def test_states_with_alike_initializers_share_one_initial_value():
  """split_init computes a state's ``init(shape, dtype)`` once for all states whose
  initializers compute the same thing at the same shape and dtype (no key: the same
  array); different values, shapes, dtypes or unknown callables are not shared."""
  class Marker:                    # a callable object: compared by identity only
    def __call__(self, shape, dtype):
      return jnp.full(shape, 7.0, dtype)
  marker = Marker()

  def stateful(x):
    out = x
    for i in range(4):
      z = purify.get_state(f"zeros_{i}", (4,), jnp.float32, init=jnp.zeros)
      o = purify.get_state(f"ones_{i}", (4,), jnp.float32, init=jnp.ones)
      t = purify.get_state(f"three_{i}", (4,), jnp.float32,
                           init=lambda s, d, v=3.0: jnp.full(s, v, d))
      u = purify.get_state(f"cnt_{i}", (), jnp.int32, init=jnp.zeros)
      m = purify.get_state(f"mark_{i}", (4,), jnp.float32, init=marker)
      w = purify.get_state(f"wide_{i}", (2, 4), jnp.float32, init=jnp.zeros)
      out = out + z + o + t + u + m + w.sum(0)
      purify.set_state(f"zeros_{i}", z + 1.0)
    four = purify.get_state("four", (4,), jnp.float32, init=lambda s, d, v=4.0: jnp.full(s, v, d))
    return out + four

  t = purify.transform_with_state(stateful)
  params, state = t.init(jax.random.key(0), X)
  for i in range(4):
    for name, want in (("zeros", 0.0), ("ones", 1.0), ("three", 3.0), ("mark", 7.0)):
      np.testing.assert_array_equal(np.asarray(state["~"][f"{name}_{i}"]), np.full((4,), want))
    assert state["~"][f"cnt_{i}"].dtype == jnp.int32 and int(state["~"][f"cnt_{i}"]) == 0
    assert state["~"][f"wide_{i}"].shape == (2, 4)
  np.testing.assert_array_equal(np.asarray(state["~"]["four"]), np.full((4,), 4.0))
  # each value is its own array (the program may output one value several times)
  leaves = jax.tree_util.tree_leaves(state)
  assert len({id(a) for a in leaves}) == len(leaves)
  # and apply reads/writes them independently
  _, new_state = t.apply(params, state, None, X)
  np.testing.assert_array_equal(np.asarray(new_state["~"]["zeros_0"]), np.ones(4))
  np.testing.assert_array_equal(np.asarray(new_state["~"]["zeros_1"]), np.ones(4))

  c, _ = t.init.purified.compiled(jax.random.key(0), (X,), {})
  outs = _compat_outvars(c.program.init_jaxpr)
  roles = c.program.init_out_roles
  by_name = {r[1][1]: v for r, v in zip(roles, outs) if r[0] == "state"}
  # alike: one value
  for name in ("zeros", "ones", "three", "cnt", "wide"):
    assert len({id(by_name[f"{name}_{i}"]) for i in range(4)}) == 1, name
  # a callable object may keep state of its own: called once a state, never shared
  assert len({id(by_name[f"mark_{i}"]) for i in range(4)}) == 4
  # different shape, dtype or value: not shared
  assert by_name["zeros_0"] is not by_name["wide_0"]
  assert by_name["zeros_0"] is not by_name["cnt_0"]
  assert by_name["three_0"] is not by_name["four"]
  assert by_name["zeros_0"] is not by_name["ones_0"]


def _compat_outvars(cj):
  from purify import _compat
  return list(_compat.open_of(cj).outvars)


def test_shared_initial_states_are_distinct_buffers_in_a_staged_init():
  """With parameters in groups (rows taken apart on the host) and a fused hash, the
  eager init runs a staged plan; alike states share one value in the program but
  must come back as distinct arrays: donating one must not delete another."""
  def bn_like(x):
    for i in range(3):
      x = purify.nn.Linear(4, name=f"lin_{i}")(x)
      m = purify.get_state(f"mean_{i}", (4,), jnp.float32, init=jnp.zeros)
      purify.set_state(f"mean_{i}", 0.9 * m + 0.1 * x.mean(0))
    return x

  t = purify.transform_with_state(bn_like)
  params, state = t.init(jax.random.key(0), X)
  c, _ = t.init.purified.compiled(jax.random.key(0), (X,), {})
  assert c.init_exec.plan is not None          # the staged path (rows / hash) ran
  leaves = [state["~"][f"mean_{i}"] for i in range(3)]
  assert len({a.unsafe_buffer_pointer() for a in leaves}) == 3
  step = jax.jit(lambda p, s: t.apply(p, s, None, X)[1], donate_argnums=1)
  new = step(params, state)
  np.testing.assert_allclose(np.asarray(new["~"]["mean_2"]), 0.1 * np.asarray(
      t.apply(params, t.init(jax.random.key(0), X)[1], None, X)[0].mean(0)), rtol=1e-6)


def _data(k):
  return jax.random.key_data(k) if keys.is_typed_key(k) else k


@pytest.mark.parametrize("root", [jax.random.PRNGKey(7), jax.random.key(7)],
                         ids=["raw", "typed"])
def test_batched_key_derivations_equal_their_definitions_folded_one_at_a_time(root):
  # derive_many and fold_batch fold whole batches at once (no vmap): each key must
  # be the one derive / fold_in gives, written out one key at a time
  names = ["param:a/w", "param:b/w", "param:c/b"]
  many = keys.derive_many(root, names)
  for i, s in enumerate(names):
    np.testing.assert_array_equal(_data(many[i]), _data(keys.derive(root, s)))
  for batch in [(3,), (2, 3)]:
    got = keys.fold_batch(many, batch)
    assert got.shape[:1 + len(batch)] == (3,) + batch
    for g in range(3):
      for idx in np.ndindex(*batch):
        want = many[g]
        for b in idx:
          want = jax.random.fold_in(want, b)
        np.testing.assert_array_equal(_data(got[(g,) + idx]), _data(want))
    one = keys.fold_batch(many[1], batch)          # a single key
    np.testing.assert_array_equal(_data(one), _data(got[1]))


def _key_free_model(x):
  for i in range(3):
    x = x * purify.param(f"g_{i}", (4,), init=jax.nn.initializers.ones)
    x = x + purify.param(f"b_{i}", (4,), init=jax.nn.initializers.zeros)
    x = x + purify.param(f"c_{i}", (4,), init=jax.nn.initializers.constant(0.25))
  x = purify.scan(lambda h, _: (h + purify.param("s", (4,), init=jax.nn.initializers.constant(-1.0)), None),
                  x, None, length=3, param_axes=0)[0]
  return x


def test_key_free_initializers_are_one_call_broadcast_not_a_vmap(monkeypatch):
  """zeros / ones / constant(v) never read their key: a group of them is the one
  call broadcast to its rows (no vmap), the same values as one call per parameter."""
  from purify.passes import split_init
  assert split_init.key_free(jax.nn.initializers.zeros)
  assert split_init.key_free(jax.nn.initializers.constant(3.0))
  assert not split_init.key_free(jax.nn.initializers.normal(0.1))
  assert not split_init.key_free(SCALED)
  root = jax.random.key(1)
  ungrouped = purify.transform(_key_free_model, pipeline=UNGROUPED).init(root, X)
  vmaps = []
  real_vmap = jax.vmap
  monkeypatch.setattr(split_init.jax, "vmap", lambda f, *a, **k: vmaps.append(f) or real_vmap(f, *a, **k))
  t = purify.transform(_key_free_model)
  grouped = t.init(root, X)
  program = t.init.purified.compiled(root, (X,), {})[0].program
  assert vmaps == []
  assert sorted(map(len, program.init_groups)) == [1, 3, 3, 3]   # the stacked one alone
  assert jax.tree_util.tree_structure(grouped) == jax.tree_util.tree_structure(ungrouped)
  for a, b in zip(jax.tree_util.tree_leaves(grouped), jax.tree_util.tree_leaves(ungrouped)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(grouped["~"]["c_2"], np.full((4,), 0.25, np.float32))
  np.testing.assert_array_equal(grouped["~"]["s"], np.full((3, 4), -1.0, np.float32))


@pytest.mark.parametrize("tree", [False, True])
def test_a_group_is_batched_as_jax_vmap_batches_it(tree):
  """split_init batches a group's initializer without vmap's front end
  (``_compat.vmap_leading``): the same equations and values as ``jax.vmap``, for an
  array or any pytree result; the initializer's own error comes through."""
  def fn(k):
    a = jax.random.truncated_normal(k, -2.0, 2.0, (3,))
    return (a, {"b": a * 2.0}) if tree else a
  ks = jax.random.split(jax.random.key(0), 4)
  lean = lambda k: _compat.vmap_leading(fn, k)  # noqa: E731
  assert str(jax.make_jaxpr(lean)(ks)) == str(jax.make_jaxpr(jax.vmap(fn))(ks))
  got, want = jax.jit(lean)(ks), jax.jit(jax.vmap(fn))(ks)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  def bad(k):
    raise ValueError("the initializer's own error")
  with pytest.raises(ValueError, match="own error"):
    jax.make_jaxpr(lambda k: _compat.vmap_leading(bad, k))(ks)
