"""Lowering: an eager init compiles the program without its per-member row outputs
(each stacked group returned once) and takes the rows apart after the run — on CPU
on the host, elsewhere with one jitted dynamic-index program per stacked shape. The
values are those of the whole program bound under a trace, and of the
ungrouped init (bitwise where XLA's math does not depend on a kernel's shape, see
_values); the outputs are ordinary arrays (donatable, on the key's device)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _values import assert_same_values

import purify
from purify import _compat
from purify import lowering
from purify import passes

UNGROUPED = passes.Pipeline([passes.GroupInit(enabled=False) if p.name == "group_init" else p
                             for p in passes.DEFAULT_PASSES])


def model(x):
  for i in range(3):                                       # three (4, 4) weights: one group
    x = jnp.tanh(x @ purify.param(f"w{i}", (4, 4), init=jax.nn.initializers.lecun_normal()))
    x = x + purify.param(f"b{i}", (4,), init=jax.nn.initializers.zeros)
  return x * purify.param("s", (), init=jax.nn.initializers.ones)


def init_exec(t, x, key):
  return t.init.purified.compiled(key, (x,), {})[0].init_exec


def test_plan_finds_the_stacked_rows_and_drops_their_slices():
  t, x, key = purify.transform(model), jnp.ones((2, 4)), jax.random.PRNGKey(1)
  ex = init_exec(t, x, key)
  plan = ex.plan
  assert plan is not None and ex.forward is None            # no set_state: no forward
  rows = [view for k, view in plan.outs if k is not None]
  assert rows == [(("row", 0),), (("row", 1),), (("row", 2),)]          # w0..w2
  j = plan.first.jaxpr
  assert [j.outvars[k].aval.shape for k, _ in plan.outs if k is not None] == [(3, 4, 4)] * 3
  # b0..b2 (zeros, a stacked group) and s (ones) are constants the host fills
  consts = [c for k, c in plan.outs if k is None]
  assert [(c.shape, float(c.flat[0])) for c in consts] == [((4,), 0.0)] * 3 + [((), 1.0)]
  # the first program returns each stacked value once: no rows call is left for them
  from purify.passes.split_init import ROWS_CALL
  assert len(j.outvars) == 1
  assert not [e for e in j.eqns if e.params.get("name") == ROWS_CALL]
  # the whole program takes each stacked value apart in ONE call of its rows
  whole = ex.jaxpr.jaxpr
  calls = [e for e in whole.eqns if e.params.get("name") == ROWS_CALL]
  assert len(whole.outvars) == 7 and len(calls) == 2
  assert sorted(len(e.outvars) for e in calls) == [3, 3]


def hash_calls(closed_jaxpr):
  """The fused hash's calls at the top level of a program."""
  return [e for e in closed_jaxpr.jaxpr.eqns if e.primitive.name in ("jit", "pjit")
          and e.params["name"] == "threefry2x32"]


def two_draws(x):
  """``model`` and a uniform draw: two tails read the fused hash's bits."""
  return model(x) + purify.param("u", (4,), init=jax.nn.initializers.uniform(0.1)).sum()


def test_the_fused_hash_is_a_program_of_its_own():
  """XLA CPU would repeat the hash in every kernel that reads its bits: an eager init
  computes it first, in a program of its own, and feeds its outputs to the rest."""
  t, x, key = purify.transform(two_draws), jnp.ones((2, 4)), jax.random.PRNGKey(1)
  plan = init_exec(t, x, key).plan
  assert plan.hashes is not None and len(hash_calls(plan.hashes)) == 1
  assert not hash_calls(plan.first)
  n_hash = len(plan.hashes.jaxpr.outvars)
  assert len(plan.first.jaxpr.invars) == 2 + n_hash      # key, x, then the hash's outputs
  assert_same_values(t.init(key, x), jax.jit(t.init)(key, x))


def test_a_hash_read_once_stays_in_the_program():
  """One draw (``model``'s one group of weights): its bits are read by one tail,
  into which XLA fuses the hash once; a program apart would only add a compile."""
  t, x, key = purify.transform(model), jnp.ones((2, 4)), jax.random.PRNGKey(1)
  ex = init_exec(t, x, key)
  assert ex.plan is None or ex.plan.hashes is None
  assert len(hash_calls(ex.jaxpr)) == 1
  assert_same_values(t.init(key, x), jax.jit(t.init)(key, x))


def test_hashes_larger_than_one_chunk_stay_in_the_program(monkeypatch):
  """Bounded memory: the hashes' outputs would all be live at once."""
  from purify.passes import fuse_random_bits
  t, x, key = purify.transform(two_draws), jnp.ones((2, 4)), jax.random.PRNGKey(1)
  c = t.init.purified.compiled(key, (x,), {})[0]
  hashed = sum(math.prod(v.aval.shape) for v in c.init_exec.plan.hashes.jaxpr.outvars)
  want = c.init_exec(key, x)
  monkeypatch.setattr(fuse_random_bits, "MAX_FUSED_ELEMENTS", hashed // 2 - 1)
  ex = lowering.Executable(c.program.init_jaxpr, "init", staged=True)
  assert ex.plan is not None and ex.plan.hashes is None            # rows only
  assert_same_values(ex(key, x), want)


def bn_model(x, is_training=True):
  """set_state-created moving averages: init runs the forward computation."""
  h = purify.nn.Linear(4)(x)
  h = purify.nn.BatchNorm(True, True, 0.9)(h, is_training)
  return purify.nn.Linear(4)(jax.nn.relu(h))


def test_init_forward_is_apply_and_the_first_apply_finds_it_compiled():
  t, x, key = purify.transform_with_state(bn_model), jnp.ones((3, 4)), jax.random.PRNGKey(2)
  c = t.init.purified.compiled(key, (x,), {})[0]
  ex = c.init_exec
  # the moving averages are written once: their first values are apply's, so init's
  # forward is apply's executable, fed with init's parameters and initial states
  assert c.program.forward_jaxpr is None and ex.forward[0] is c.apply_exec
  assert len(c.program.init_forward) == 2
  # init's own program has no forward computation in it
  assert not any(e.primitive.name == "dot_general" for e in c.program.init_jaxpr.jaxpr.eqns)
  before = c.apply_exec._jitted._cache_size()
  eager = t.init(key, x)
  assert c.apply_exec._jitted._cache_size() == before + 1
  t.apply(eager[0], eager[1], None, x)                      # same shapes: compiled by init
  assert c.apply_exec._jitted._cache_size() == before + 1
  assert_same_values(eager, purify.transform_with_state(bn_model, pipeline=UNGROUPED).init(key, x))
  # traced, init is one program: the parameters are the same (_values); the first values
  # written are computed by the same operations, which XLA may fuse differently once
  # the weights are computed in the same program (an ulp)
  traced = jax.jit(t.init)(key, x)
  assert_same_values(eager[0], traced[0])
  for a, b in zip(jax.tree_util.tree_leaves(eager[1]), jax.tree_util.tree_leaves(traced[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  # the moving averages start at the first values written (not zeros): apply's
  want = t.apply(eager[0], jax.tree_util.tree_map(jnp.zeros_like, eager[1]), None, x)[1]
  avg = [(k, v) for k, v in jax.tree_util.tree_leaves_with_path(eager[1]) if "average" in str(k)]
  assert avg and any(np.abs(np.asarray(a)).sum() > 0 for _, a in avg)
  want_avg = [v for k, v in jax.tree_util.tree_leaves_with_path(want) if "average" in str(k)]
  for (_, a), b in zip(avg, want_avg):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def twice_model(x):
  """A state written twice: its first value is not the one apply returns."""
  purify.set_state("s", x.sum(0))
  purify.set_state("s", purify.get_state("s") * 3.0)
  return x @ purify.param("w", (4, 2), init=jax.nn.initializers.ones)


def test_init_forward_is_a_program_of_its_own_when_the_first_value_is_not_the_last():
  t, x, key = purify.transform_with_state(twice_model), jnp.arange(8.0).reshape(2, 4), jax.random.PRNGKey(0)
  c = t.init.purified.compiled(key, (x,), {})[0]
  assert c.program.forward_jaxpr is not None and c.init_exec.forward[0] is not c.apply_exec
  params, state = t.init(key, x)
  np.testing.assert_array_equal(state["~"]["s"], np.asarray(x).sum(0))       # the first write
  _, new = t.apply(params, state, None, x)
  np.testing.assert_array_equal(new["~"]["s"], np.asarray(x).sum(0) * 3.0)   # the last one
  traced = jax.jit(t.init)(key, x)
  assert_same_values((params, state), traced)
  assert "init forward (the forward below" in str(c.program)


def test_eager_init_is_the_traced_and_the_ungrouped_init():
  x, key = jnp.ones((2, 4)), jax.random.PRNGKey(3)
  eager = purify.transform(model).init(key, x)
  traced = jax.jit(purify.transform(model).init)(key, x)   # binds the whole program
  assert_same_values(eager, traced)
  assert_same_values(eager, purify.transform(model, pipeline=UNGROUPED).init(key, x))
  assert not np.array_equal(eager["~"]["w0"], eager["~"]["w1"])


def test_rows_are_independent_arrays_that_can_be_donated():
  t, x = purify.transform(model), jnp.ones((2, 4))
  params = t.init(jax.random.PRNGKey(0), x)
  keep = jax.tree_util.tree_map(np.array, params)
  step = jax.jit(lambda p: jax.tree_util.tree_map(lambda a: a * 2, p), donate_argnums=0)
  w0 = params["~"]["w0"]
  new = step({"~": {"w0": w0}})
  assert w0.is_deleted()
  np.testing.assert_array_equal(new["~"]["w0"], keep["~"]["w0"] * 2)
  # the other rows of the same group are untouched
  np.testing.assert_array_equal(params["~"]["w1"], keep["~"]["w1"])
  np.testing.assert_array_equal(params["~"]["w2"], keep["~"]["w2"])


def test_constants_are_new_buffers_each_init_and_can_be_donated():
  t, x = purify.transform(model), jnp.ones((2, 4))
  a, b = t.init(jax.random.PRNGKey(0), x), t.init(jax.random.PRNGKey(0), x)
  zeros = [a["~"][f"b{i}"] for i in range(3)] + [b["~"]["b0"]]
  assert len({z.unsafe_buffer_pointer() for z in zeros}) == 4
  step = jax.jit(lambda p: p + 1, donate_argnums=0)
  np.testing.assert_array_equal(step(a["~"]["b0"]), np.ones(4))
  assert a["~"]["b0"].is_deleted() and not a["~"]["b1"].is_deleted()
  np.testing.assert_array_equal(b["~"]["b0"], np.zeros(4))
  assert a["~"]["s"].dtype == jnp.float32 and a["~"]["s"].shape == ()


def test_a_small_slice_of_a_large_value_is_computed_in_the_program():
  """Views (slices, reshapes, rows) of a value the program returns once are taken on
  the host only where they cover at least half of it: a few elements of a large
  draw are not worth returning the whole draw."""
  def f(x):
    w = purify.param("w", (4,), init=lambda k, s, d: jax.random.normal(k, (1000,), d)[:4])
    v = purify.param("v", (2, 3), init=lambda k, s, d: jax.random.normal(k, (6,), d).reshape(s))
    return x + w.sum() + v.sum()
  t, x, key = purify.transform(f), jnp.ones(2), jax.random.PRNGKey(2)
  plan = init_exec(t, x, key).plan
  shapes = sorted(v.aval.shape for v in plan.first.jaxpr.outvars)
  assert (4,) in shapes and (1000,) not in shapes
  assert_same_values(t.init(key, x), jax.jit(t.init)(key, x))


def test_rows_follow_the_key_device_and_commitment():
  t, x = purify.transform(model), jnp.ones((2, 4))
  dev = jax.devices()[0]
  committed = t.init(jax.device_put(jax.random.PRNGKey(0), dev), x)
  assert all(a.committed and a.devices() == {dev} for a in jax.tree_util.tree_leaves(committed))
  loose = t.init(jax.random.PRNGKey(0), x)
  assert not any(a.committed for a in jax.tree_util.tree_leaves(loose))


def test_device_path_takes_rows_with_one_program_per_stacked_shape(monkeypatch):
  """Off CPU the rows are taken on the device; forced here, the values are the same."""
  x, key = jnp.ones((2, 4)), jax.random.PRNGKey(3)
  want = purify.transform(model).init(key, x)
  monkeypatch.setattr(lowering, "_on_host", lambda arr: False)
  lowering._device_views.cache_clear()
  got = purify.transform(model).init(key, x)
  assert_same_values(got, want)
  assert lowering._device_views.cache_info().currsize == 1     # the (3, 4, 4) rows'
  purify.transform(model).init(key, x)
  assert lowering._device_views.cache_info().hits == 1


def test_nothing_stacked_means_no_plan():
  f = lambda x: x @ purify.param("w", (4, 4), init=jax.nn.initializers.ones)  # noqa: E731
  t = purify.transform(f)
  assert init_exec(t, jnp.ones((1, 4)), jax.random.PRNGKey(0)).plan is None
  assert t.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))["~"]["w"].shape == (4, 4)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.int8])
def test_host_rows_keep_the_dtype(dtype):
  def f(x):
    a = purify.param("a", (5,), dtype, init=jax.nn.initializers.ones)
    b = purify.param("b", (5,), dtype, init=jax.nn.initializers.ones)
    return x + (a + b).astype(x.dtype)
  p = purify.transform(f).init(jax.random.PRNGKey(0), jnp.ones(5))
  assert p["~"]["a"].dtype == dtype and p["~"]["b"].dtype == dtype
  np.testing.assert_array_equal(np.asarray(p["~"]["b"], np.float32), np.ones(5))



@pytest.mark.parametrize("depth", [1, 20])
def test_an_executable_stages_its_program_as_one_equation(depth):
  """An executable's jit traces its program as ONE equation, whatever its size
  (0.10.2: a jit call of the jaxpr; 0.12: eval_jaxpr), with the program's values:
  re-binding every equation cost ResNet-50 ~90 ms before its first init."""
  def f(x, w):
    for _ in range(depth):
      x = jnp.tanh(x @ w) + 1.0
    return x, x.sum()
  x, w = jnp.ones((2, 4)), jnp.full((4, 4), 0.1)
  cj = jax.make_jaxpr(f)(x, w)
  staged = jax.make_jaxpr(lambda *a: _compat.bind_closed(cj, *a))(x, w)
  (eqn,) = _compat.open_of(staged).eqns
  assert eqn.primitive.name in ("jit", "pjit", "eval_jaxpr")
  got = lowering._jit(cj, "program")(x, w)
  for a, b in zip(got, jax.jit(f)(x, w)):
    assert_same_values(a, b)


def test_transforms_traced_and_run_in_several_threads_at_once():
  """Actors in threads (Haiku's IMPALA example): each traces its own transform while
  the others run, and a shared jitted apply serves them all."""
  import threading
  def net(x):
    return purify.nn.MLP([8, 3])(x)
  shared = purify.transform(net)
  params = shared.init(jax.random.PRNGKey(0), jnp.ones((1, 5)))
  step = jax.jit(shared.apply)
  results, errors = {}, []

  def actor(i):
    try:
      own = purify.transform(net)
      x = jnp.full((1 + i, 5), float(i))
      p = own.init(jax.random.PRNGKey(i), x)
      results[i] = (own.apply(p, None, x), step(params, None, x[:1]),
                    purify.transform(net).apply(p, None, x))
    except Exception as e:                 # noqa: BLE001 (reported below)
      errors.append(f"thread {i}: {e!r}")
  threads = [threading.Thread(target=actor, args=(i,)) for i in range(6)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  for i, (own, stepped, again) in results.items():
    assert own.shape == (1 + i, 3)
    np.testing.assert_array_equal(own, again)
    assert_same_values(stepped, shared.apply(params, None, jnp.full((1, 5), float(i))))
