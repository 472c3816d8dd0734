"""purify.nn recurrent cores and unrolls against dm-haiku run in the same test: the
same parameter tree (paths, names, shapes, dtypes) as ``hk.transform(...).init`` and
the same outputs/states as Haiku's apply given the same params (random values of
Haiku's tree); plus loop semantics (vmap over examples = the per-example loop, a new
dropout mask per step of dynamic_unroll)."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
import _haiku_parity
from _haiku_parity import ROOT, TOL, signature

pytestmark = pytest.mark.usefixtures("fast_compiles")


def random_like(shapes, seed=0):
  """Random values for a tree of ShapeDtypeStructs; this file's scale is 0.5."""
  return _haiku_parity.random_like(shapes, seed, scale=0.5)


def parity(program, *args):
  """``program(lib)`` is the model written against ``lib`` (haiku or purify.nn): assert
  equal param trees; apply both to the same random params; return (haiku, purify)."""
  return _haiku_parity.parity(program(hk), program(purify.nn), *args, scale=0.5)


def assert_trees_close(got, want):
  """Same structure up to the namedtuple's class (hk.LSTMState vs purify.nn.LSTMState:
  the same fields), same shapes and dtypes, close values."""
  paths = lambda t: [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]]
  assert paths(got) == paths(want)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert g.shape == w.shape and g.dtype == w.dtype
    np.testing.assert_allclose(g, w, **TOL)


CORES = {
    "vanilla": lambda lib: lib.VanillaRNN(5),
    "vanilla_single_bias": lambda lib: lib.VanillaRNN(5, double_bias=False, name="rnn"),
    "lstm": lambda lib: lib.LSTM(5),
    "gru": lambda lib: lib.GRU(5),
}


# ============================================================================ one step
@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("core", sorted(CORES))
def test_core_step_matches_haiku(core, batch):
  x = jax.random.normal(jax.random.PRNGKey(1), (3,) if batch is None else (batch, 3))
  def program(lib):
    def f(x):
      c = CORES[core](lib)
      state = c.initial_state(batch)
      out, state = c(x, state)
      return c(2 * x, state), state              # two steps: the state feeds back
    return f
  want, got = parity(program, x)
  assert_trees_close(got, want)
  if core == "lstm":
    assert isinstance(got[0][1], purify.nn.LSTMState)


def test_param_names_are_haikus():
  x = jnp.ones((2, 3))
  def tree(lib):
    def f(x):
      return [c(x, c.initial_state(2)) for c in (lib.VanillaRNN(4), lib.LSTM(4), lib.GRU(4))]
    return f
  got = signature(jax.eval_shape(purify.transform(tree(purify.nn)).init, ROOT, x))
  f32 = jnp.dtype(jnp.float32)
  assert got == {
      "vanilla_rnn/linear": {"w": ((3, 4), f32), "b": ((4,), f32)},
      "vanilla_rnn/linear_1": {"w": ((4, 4), f32), "b": ((4,), f32)},
      "lstm/linear": {"w": ((7, 16), f32), "b": ((16,), f32)},
      "gru": {"w_i": ((3, 12), f32), "w_h": ((4, 12), f32), "b": ((12,), f32)}}
  assert got == signature(jax.eval_shape(hk.transform(tree(hk)).init, ROOT, x))


def test_gru_initializers_are_key_shape_dtype_functions():
  ones, zeros = jax.nn.initializers.ones, jax.nn.initializers.zeros
  const = lambda v: (lambda key, shape, dtype: jnp.full(shape, v, dtype))
  t = purify.transform(lambda x: purify.nn.GRU(2, w_i_init=ones, w_h_init=zeros,
                                               b_init=const(0.5))(x, jnp.zeros(2)))
  params = t.init(ROOT, jnp.ones(3))["gru"]
  np.testing.assert_array_equal(params["w_i"], np.ones((3, 6)))
  np.testing.assert_array_equal(params["w_h"], np.zeros((2, 6)))
  np.testing.assert_array_equal(params["b"], np.full(6, 0.5))


def test_initial_state_matches_haiku():
  for batch in (None, 3):
    for make in CORES.values():
      want = hk.transform(lambda: make(hk).initial_state(batch)).apply({}, None)
      got = purify.transform(lambda: make(purify.nn).initial_state(batch)).apply({}, None)
      assert_trees_close(got, want)


def test_rank_errors():
  with pytest.raises(ValueError, match="rank"):
    purify.transform(lambda x: purify.nn.LSTM(2)(x, purify.nn.LSTM(2).initial_state(None))
                     ).init(ROOT, jnp.ones((1, 1, 3)))
  with pytest.raises(ValueError, match="rank"):
    purify.transform(lambda x: purify.nn.GRU(2)(x, jnp.zeros(2))).init(ROOT, jnp.ones(()))


# ============================================================================ unrolls
UNROLLS = [
    # core, time_major, reverse, return_all_states, unroll
    ("lstm", True, False, False, 1),
    ("lstm", False, True, True, 1),
    ("gru", False, False, False, 2),
    ("vanilla", True, True, True, 1),
]


@pytest.mark.parametrize("core,time_major,reverse,all_states,unroll", UNROLLS)
def test_dynamic_unroll_matches_haiku(core, time_major, reverse, all_states, unroll):
  T, B = 4, 2
  xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, 3) if time_major else (B, T, 3))
  def program(lib):
    def f(xs):
      c = CORES[core](lib)
      return lib.dynamic_unroll(c, xs, c.initial_state(B), time_major=time_major,
                                reverse=reverse, return_all_states=all_states, unroll=unroll)
    return f
  want, got = parity(program, xs)
  assert_trees_close(got, want)
  assert got[0].shape[:2] == xs.shape[:2]


@pytest.mark.parametrize("time_major", [True, False])
def test_static_unroll_matches_haiku_and_dynamic_unroll(time_major):
  T, B = 3, 2
  xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, 3) if time_major else (B, T, 3))
  def program(lib, unroll_name="static_unroll"):
    def f(xs):
      c = lib.LSTM(4)
      return getattr(lib, unroll_name)(c, xs, c.initial_state(B), time_major=time_major)
    return f
  want, got = parity(program, xs)
  assert_trees_close(got, want)
  dynamic = purify.transform(program(purify.nn, "dynamic_unroll"))
  params = random_like(jax.eval_shape(dynamic.init, ROOT, xs))
  assert_trees_close(dynamic.apply(params, None, xs),
                     purify.transform(program(purify.nn)).apply(params, None, xs))


# ============================================================================ loop semantics
def test_lstm_under_vmap_equals_the_per_example_loop():
  B, T = 3, 4
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, 2))   # batch-major, vmap over B

  def one(core, x):                                           # x: (T, 2), no batch axis
    return purify.nn.dynamic_unroll(core, x, core.initial_state(None))

  def vmapped(xs):
    core = purify.nn.LSTM(3)
    return jax.vmap(lambda x: one(core, x))(xs)

  def loop(xs):
    core = purify.nn.LSTM(3)
    outs = [one(core, xs[b]) for b in range(B)]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)

  tv, tl = purify.transform(vmapped), purify.transform(loop)
  shapes = jax.eval_shape(tv.init, ROOT, xs)
  assert signature(shapes) == signature(jax.eval_shape(tl.init, ROOT, xs)) == {
      "lstm/linear": {"w": ((5, 12), jnp.dtype(jnp.float32)), "b": ((12,), jnp.dtype(jnp.float32))}}
  params = random_like(shapes)
  got, want = tv.apply(params, None, xs), tl.apply(params, None, xs)
  assert_trees_close(got, want)
  assert got[0].shape == (B, T, 3)
  assert not np.allclose(got[0][0], got[0][1])                # examples differ


def test_dropout_in_a_core_draws_a_new_mask_every_step():
  class DropCore(purify.nn.RNNCore):
    def __call__(self, x, state):
      y = purify.nn.dropout(0.5, x)
      return y, state + 1
    def initial_state(self, batch_size):
      return jnp.zeros((), jnp.int32)

  def f(xs):
    core = DropCore()
    return purify.nn.dynamic_unroll(core, xs, core.initial_state(None))

  t = purify.transform(f)
  xs = jnp.ones((4, 32))
  out, steps = t.apply({}, ROOT, xs)
  assert int(steps) == 4
  assert set(np.unique(out)) <= {0.0, 2.0}
  assert len({np.asarray(row).tobytes() for row in out}) == 4   # one mask per step
  np.testing.assert_array_equal(t.apply({}, ROOT, xs)[0], out)  # same key, same masks


def test_gradients_through_dynamic_unroll_match_haiku():
  xs = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 2))
  def program(lib):
    def f(xs):
      core = lib.GRU(3)
      outs, _ = lib.dynamic_unroll(core, xs, core.initial_state(2), reverse=True)
      return jnp.sum(outs ** 2)
    return f
  th, tp = hk.transform(program(hk)), purify.transform(program(purify.nn))
  params = random_like(jax.eval_shape(th.init, ROOT, xs))
  want = jax.jit(jax.grad(th.apply))(params, None, xs)
  got = jax.grad(tp.apply)(params, None, xs)
  assert_trees_close(got, want)
