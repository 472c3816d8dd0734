"""purify.nn recurrent cores, core combinators (DeepRNN, skip connections, ResetCore,
IdentityCore) and unrolls against dm-haiku run in the same test: the same parameter
tree (paths, names, shapes, dtypes) as ``hk.transform(...).init`` and the same
outputs/states as Haiku's apply given the same params (random values of Haiku's
tree), also under dynamic/static unrolls and inside jax.vmap (``hk.vmap`` on Haiku's
side); plus loop semantics (vmap over examples = the per-example loop, a new dropout
mask per step of dynamic_unroll, a reset = a fresh start)."""
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
    "deep": lambda lib: lib.DeepRNN([lib.LSTM(4), jax.nn.relu, lib.GRU(5)]),
    # a plain callable building a module while the DeepRNN runs: "stack/linear"
    "deep_builds_inside": lambda lib: lib.DeepRNN(
        [lib.VanillaRNN(4), lambda h: lib.Linear(5)(h)], name="stack"),
    "skip": lambda lib: lib.deep_rnn_with_skip_connections([lib.LSTM(4), lib.GRU(5)]),
    "identity": lambda lib: lib.IdentityCore(),
    "deep_no_cores": lambda lib: lib.DeepRNN([jnp.tanh]),
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


# ============================================================================ combinators
def test_combinator_names_and_params_are_haikus():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
  names = {}

  def program(lib):
    def f(x):
      deep = lib.DeepRNN([lib.LSTM(4), lambda h: lib.Linear(3)(h)])
      skip = lib.deep_rnn_with_skip_connections([lib.GRU(2), lib.VanillaRNN(3)])
      reset, ident = lib.ResetCore(lib.GRU(2)), lib.IdentityCore()
      names[lib] = [m.module_name for m in (deep, skip, reset, ident)]
      return (deep(x, deep.initial_state(2)), skip(x, skip.initial_state(2)),
              reset((x, jnp.array([True, False])), reset.initial_state(2)),
              ident(x, ident.initial_state(2)))
    return f
  want, got = parity(program, x)
  assert_trees_close(got, want)
  assert names[hk] == names[purify.nn] == ["deep_rnn", "__deep_rnn", "reset_core",
                                           "identity_core"]
  f32 = jnp.dtype(jnp.float32)
  assert signature(jax.eval_shape(purify.transform(program(purify.nn)).init, ROOT, x)) == {
      "lstm/linear": {"w": ((3 + 4, 16), f32), "b": ((16,), f32)},
      "deep_rnn/linear": {"w": ((4, 3), f32), "b": ((3,), f32)},
      "gru": {"w_i": ((3, 6), f32), "w_h": ((2, 6), f32), "b": ((6,), f32)},
      "vanilla_rnn/linear": {"w": ((3 + 2, 3), f32), "b": ((3,), f32)},   # skip: x and gru's
      "vanilla_rnn/linear_1": {"w": ((3, 3), f32), "b": ((3,), f32)},
      "gru_1": {"w_i": ((3, 6), f32), "w_h": ((2, 6), f32), "b": ((6,), f32)}}
  (deep_out, deep_state), (skip_out, skip_state), _, (ident_out, ident_state) = got
  assert deep_out.shape == (2, 3) and skip_out.shape == (2, 2 + 3)
  assert isinstance(deep_state, tuple) and isinstance(deep_state[0], purify.nn.LSTMState)
  assert len(skip_state) == 2 and ident_state == ()
  np.testing.assert_array_equal(ident_out, x)


# should_reset for a batch of 2 LSTM(5) states (or an unbatched one), written per library
RESETS = {
    "unbatched": (None, lambda lib: jnp.bool_(True)),
    "per_example": (2, lambda lib: jnp.array([True, False])),
    "per_entry": (2, lambda lib: jnp.array([[True, False, True, False, True],
                                            [False, False, True, True, False]])),
    "tree": (2, lambda lib: lib.LSTMState(hidden=jnp.array([True, False]),
                                          cell=jnp.array([False, True]))),
}


@pytest.mark.parametrize("case", sorted(RESETS))
def test_reset_core_step_matches_haiku(case):
  batch, signal = RESETS[case]
  x = jax.random.normal(jax.random.PRNGKey(1), (3,) if batch is None else (batch, 3))

  def program(lib):
    def f(x):
      core = lib.ResetCore(lib.LSTM(5))
      _, state = core((x, jnp.zeros((), bool) if batch is None else jnp.zeros(batch, bool)),
                      core.initial_state(batch))
      return core((2 * x, signal(lib)), state), state     # the second step resets
    return f
  want, got = parity(program, x)
  assert_trees_close(got, want)
  (_, new), before = got
  assert not np.allclose(before.hidden, 0)                 # there was something to reset


def test_reset_core_restarts_the_sequence():
  """Example 1 reset at step 2 == a fresh unroll from step 2; example 0 never reset."""
  T, B = 5, 2
  xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, 3))
  resets = jnp.zeros((T, B), bool).at[2, 1].set(True)

  def with_resets(xs, resets):
    core = purify.nn.ResetCore(purify.nn.LSTM(4))
    return purify.nn.dynamic_unroll(core, (xs, resets), core.initial_state(B))[0]

  def plain(xs):
    core = purify.nn.LSTM(4)
    return purify.nn.dynamic_unroll(core, xs, core.initial_state(xs.shape[1]))[0]

  t, p = purify.transform(with_resets), purify.transform(plain)
  params = random_like(jax.eval_shape(t.init, ROOT, xs, resets))
  assert signature(params) == signature(jax.eval_shape(p.init, ROOT, xs))
  outs = t.apply(params, None, xs, resets)
  np.testing.assert_allclose(outs[2:, 1], p.apply(params, None, xs[2:])[:, 1], **TOL)
  np.testing.assert_allclose(outs[:, 0], p.apply(params, None, xs)[:, 0], **TOL)
  assert not np.allclose(outs[2:, 1], p.apply(params, None, xs)[2:, 1])


# cores for the unroll and vmap tests; "reset" ones take (inputs, should_reset)
UNROLL_CORES = {
    "deep": (CORES["deep"], False),
    "deep_builds_inside": (CORES["deep_builds_inside"], False),
    "skip": (CORES["skip"], False),
    "identity": (CORES["identity"], False),
    "reset": (lambda lib: lib.ResetCore(lib.GRU(3)), True),
    "reset_deep": (lambda lib: lib.ResetCore(
        lib.deep_rnn_with_skip_connections([lib.LSTM(3), lib.VanillaRNN(2)])), True),
}


@pytest.mark.parametrize("unroll, time_major, reverse", [
    ("dynamic_unroll", True, False), ("dynamic_unroll", False, True),
    ("static_unroll", False, False)])
@pytest.mark.parametrize("name", sorted(UNROLL_CORES))
def test_combinators_under_unrolls_match_haiku(name, unroll, time_major, reverse):
  T, B = 4, 2
  make, takes_resets = UNROLL_CORES[name]
  xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, 3) if time_major else (B, T, 3))
  resets = jnp.asarray(np.random.RandomState(0).rand(*xs.shape[:2]) < 0.4)

  def program(lib):
    def f(xs, resets):
      core = make(lib)
      inputs = (xs, resets) if takes_resets else xs
      kwargs = dict(reverse=reverse) if unroll == "dynamic_unroll" else {}
      return getattr(lib, unroll)(core, inputs, core.initial_state(B), time_major=time_major,
                                  **kwargs)
    return f
  want, got = parity(program, xs, resets)
  assert_trees_close(got, want)
  assert got[0].shape[:2] == xs.shape[:2]


@pytest.mark.parametrize("name", ["deep", "skip", "reset_deep"])
def test_combinators_inside_vmap_match_haiku_and_the_batched_unroll(name):
  """jax.vmap over examples (each unrolled with an unbatched state) == hk.vmap ==
  one unroll of the whole batch (a batched state)."""
  B, T = 3, 4
  make, takes_resets = UNROLL_CORES[name]
  xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, 2))           # batch-major
  resets = jnp.asarray(np.random.RandomState(0).rand(B, T) < 0.4)

  def program(lib):
    def f(xs, resets):
      core = make(lib)

      def one(x, r):                                                  # x: (T, 2), r: (T,)
        return lib.dynamic_unroll(core, (x, r) if takes_resets else x, core.initial_state(None))
      vmap = jax.vmap if lib is purify.nn else (lambda g: hk.vmap(g, split_rng=False))
      return vmap(one)(xs, resets)
    return f

  def whole_batch(xs, resets):
    core = make(purify.nn)
    return purify.nn.dynamic_unroll(core, (xs, resets) if takes_resets else xs,
                                    core.initial_state(B), time_major=False)

  want, got = parity(program, xs, resets)
  assert_trees_close(got, want)
  t = purify.transform(whole_batch)
  shapes = jax.eval_shape(t.init, ROOT, xs, resets)
  assert signature(shapes) == signature(
      jax.eval_shape(purify.transform(program(purify.nn)).init, ROOT, xs, resets))
  assert_trees_close(got, t.apply(random_like(shapes), None, xs, resets))
  assert not np.allclose(got[0][0], got[0][1])                         # examples differ


def test_skip_connections_without_concatenated_output():
  """``concat_final_output=False`` (Sonnet's option): the output is the last core's."""
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3))

  def model(concat):
    def f(x):
      core = purify.nn.deep_rnn_with_skip_connections(
          [purify.nn.LSTM(4), purify.nn.GRU(2)], concat_final_output=concat)
      return core(x, core.initial_state(2))
    return purify.transform(f)
  params = random_like(jax.eval_shape(model(True).init, ROOT, x))
  (out, state), (last, last_state) = (model(c).apply(params, None, x) for c in (True, False))
  assert out.shape == (2, 6) and last.shape == (2, 2)
  np.testing.assert_array_equal(last, out[:, 4:])
  assert_trees_close(last_state, state)


def test_combinator_gradients_match_haiku():
  xs = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 2))
  resets = jnp.array([[False, True], [False, False], [True, False]])

  def program(lib):
    def f(xs):
      core = lib.ResetCore(lib.deep_rnn_with_skip_connections([lib.GRU(3), lib.LSTM(2)]))
      outs, _ = lib.dynamic_unroll(core, (xs, resets), core.initial_state(2), reverse=True)
      return jnp.sum(outs ** 2)
    return f
  th, tp = hk.transform(program(hk)), purify.transform(program(purify.nn))
  params = random_like(jax.eval_shape(th.init, ROOT, xs))
  assert_trees_close(jax.grad(tp.apply)(params, None, xs),
                     jax.jit(jax.grad(th.apply))(params, None, xs))


@pytest.mark.parametrize("make, args, match", [
    (lambda lib: lib.deep_rnn_with_skip_connections([lib.LSTM(2), jax.nn.relu]), None,
     "skip_connections requires.*RNNCore"),
    (lambda lib: lib.ResetCore(lib.LSTM(2)), lambda lib, x: ((x, jnp.zeros(3, bool)),
                                                            lib.LSTM(2).initial_state(2)),
     r"should_reset signal shape \(3,\) is not compatible with state shape \(2, 2\).*prefix"),
])
def test_combinator_errors_match_haikus(make, args, match):
  x = jnp.ones((2, 3))
  for lib, transform in ((hk, hk.transform), (purify.nn, purify.transform)):
    def f(x):
      core = make(lib)
      return core(*args(lib, x)) if args else core
    with pytest.raises(ValueError, match=match if lib is purify.nn else None):
      transform(f).init(ROOT, x)


def test_deep_rnn_state_must_have_one_entry_per_core():
  x = jnp.ones((2, 3))
  def bad(lib, state):
    def f(x):
      core = lib.DeepRNN([lib.LSTM(2), jax.nn.relu, lib.GRU(2)])
      return core(x, state(core))
    return f
  with pytest.raises(IndexError):                        # Haiku: state[1] of a 1-tuple
    hk.transform(bad(hk, lambda c: c.initial_state(2)[:1])).init(ROOT, x)
  for state, got in ((lambda c: c.initial_state(2)[:1], "1 entries"),
                     (lambda c: c.initial_state(2) + ((),), "3 entries"),
                     (lambda c: jnp.zeros((2, 2)), r"an array of shape \(2, 2\)")):
    with pytest.raises(ValueError, match=f"one entry per core \\(2\\), got ({got}).*initial_state"):
      purify.transform(bad(purify.nn, state)).init(ROOT, x)


def test_reset_core_inputs_must_be_a_pair():
  def f(x):
    core = purify.nn.ResetCore(purify.nn.GRU(2))
    return core(x, core.initial_state(2))
  with pytest.raises(TypeError, match=r"pair \(inputs, should_reset\).*core\(\(x, should_reset\)"):
    purify.transform(f).init(ROOT, jnp.ones((2, 3)))
