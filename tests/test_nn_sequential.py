"""purify.nn.Sequential vs dm-haiku's hk.Sequential run in the same test: the same
param/state trees and the same outputs on Haiku's params, with plain functions,
modules built outside and inside other modules, arguments for the first layer only,
nesting, and a stateful first layer."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
import purify.nn as pnn

KEY = jax.random.PRNGKey(0)


def normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def sig(tree):
  return {m: {n: (tuple(v.shape), np.dtype(v.dtype)) for n, v in sub.items()}
          for m, sub in tree.items()}


def jitted(t):
  """Both sides jitted, bool arguments static (Haiku's apply runs op by op otherwise,
  compiling every op)."""
  def wrap(fn):
    def call(*args):
      static = tuple(i for i, a in enumerate(args) if isinstance(a, bool))
      return jax.jit(fn, static_argnums=static)(*args)
    return call
  return type(t)(wrap(t.init), wrap(t.apply))


def random_like(shapes, seed=1):
  """A params/state tree of Haiku's shapes with random values (numpy: no compiles)."""
  rng = np.random.default_rng(seed)
  return {m: {n: jnp.asarray(rng.standard_normal(v.shape), v.dtype) for n, v in sub.items()}
          for m, sub in shapes.items()}


def check(build, *args, want_modules):
  """``build(nn)`` is the model (nn = purify.nn or hk): Haiku's param/state trees
  (abstract inits: no compile), and purify's outputs and new state on random params and
  state of Haiku's shapes equal Haiku's."""
  pt = jitted(purify.transform_with_state(lambda *a: build(pnn)(*a)))
  ht = jitted(hk.transform_with_state(lambda *a: build(hk)(*a)))
  pp, ps = jax.eval_shape(pt.init, KEY, *args)
  hp, hs = jax.eval_shape(ht.init, KEY, *args)
  assert sig(pp) == sig(hp)
  assert sig(ps) == sig(hs)
  assert set(hp) | set(hs) == set(want_modules)
  params, state = random_like(hp), jax.tree_util.tree_map(jnp.zeros_like, random_like(hs))
  got, got_state = pt.apply(params, state, None, *args)
  want, want_state = ht.apply(params, state, None, *args)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert sig(got_state) == sig(want_state)
  for m, sub in want_state.items():
    for n, v in sub.items():
      np.testing.assert_allclose(got_state[m][n], v, rtol=1e-5, atol=1e-6)
  return got


def test_linear_relu_linear():
  def build(nn):
    return nn.Sequential([nn.Linear(8), jax.nn.relu, nn.Linear(3)])
  out = check(build, normal(0, (4, 5)), want_modules={"linear", "linear_1"})
  assert out.shape == (4, 3)


def test_first_layer_gets_every_argument_later_layers_only_the_output():
  seen = []
  def first(x, y, *, scale):
    return x * y * scale
  def later(x, *args, **kwargs):
    seen.append((args, kwargs))
    return jnp.tanh(x)
  def build(nn):
    return lambda x, y: nn.Sequential([first, nn.Linear(2), later], name="seq")(
        x, y, scale=3.0)
  x, y = normal(2, (3, 4)), normal(3, (3, 4))
  out = check(build, x, y, want_modules={"linear"})
  assert seen and all(s == ((), {}) for s in seen)
  assert out.shape == (3, 2)


def test_inside_a_module_and_nested():
  """Layers built in a module's __init__ take that module's scope ("net/~/..."), not
  Sequential's; a Sequential inside a Sequential; an MLP as a layer."""
  def build(nn):
    base, mlp = (hk.Module, hk.nets.MLP) if nn is hk else (purify.Module, pnn.MLP)
    class Net(base):
      def __init__(self, name=None):
        super().__init__(name=name)
        inner = nn.Sequential([nn.Linear(6), jax.nn.gelu], name="inner")
        self.body = nn.Sequential([inner, mlp([5, 4]), nn.Linear(2, name="head")],
                                  name="body")

      def __call__(self, x):
        return self.body(x)
    return Net(name="net")
  check(build, normal(4, (2, 3)),
        want_modules={"net/~/linear", "net/~/mlp/~/linear_0", "net/~/mlp/~/linear_1",
                      "net/~/head"})


def test_built_inside_sequential_call_scope():
  """Modules created while a Sequential subclass runs ``__call__`` are named under it
  ("seq/linear"), as in Haiku."""
  def build(nn):
    class Lazy(nn.Sequential):
      def __call__(self, x):
        self.layers = (nn.Linear(3), jax.nn.relu)
        return super().__call__(x)
    return Lazy([], name="seq")
  check(build, normal(5, (2, 4)), want_modules={"seq/linear"})


@pytest.mark.parametrize("is_training", [True, False])
def test_stateful_first_layer(is_training):
  """BatchNorm first: ``is_training`` reaches it only; its state is Haiku's."""
  def build(nn):
    bn = nn.BatchNorm(True, True, decay_rate=0.9)
    return nn.Sequential([bn, jax.nn.relu, nn.Linear(2)])
  x = normal(6, (4, 3))
  def model(nn):
    return lambda x: build(nn)(x, is_training)
  if is_training:
    check(model, x, want_modules={"batch_norm", "batch_norm/~/mean_ema",
                                  "batch_norm/~/var_ema", "linear"})
  else:
    # Haiku's eval-mode init cannot create the averages: state from a Haiku training step
    pt = jitted(purify.transform_with_state(lambda x, t: build(pnn)(x, t)))
    ht = jitted(hk.transform_with_state(lambda x, t: build(hk)(x, t)))
    hp, hs = jax.eval_shape(lambda k, x: ht.init(k, x, True), KEY, x)
    params = random_like(hp)
    state = {m: {n: jnp.zeros(v.shape, v.dtype) for n, v in sub.items()}
             for m, sub in hs.items()}
    _, state = ht.apply(params, state, None, x, True)
    got, gs = pt.apply(params, state, None, x + 0.5, False)
    want, ws = ht.apply(params, state, None, x + 0.5, False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert sig(gs) == sig(ws)


def test_empty_sequential_is_identity():
  x = normal(7, (2, 2))
  out = purify.transform(lambda x: pnn.Sequential([])(x)).apply({}, None, x)
  want = hk.transform(lambda x: hk.Sequential([])(x)).apply({}, None, x)
  np.testing.assert_array_equal(out, want)
  np.testing.assert_array_equal(out, x)
