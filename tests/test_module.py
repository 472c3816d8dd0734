"""purify.Module: Haiku's naming scheme."""
import jax
import jax.numpy as jnp

import purify


def names(f, *args):
  params = purify.transform(f).init(jax.random.PRNGKey(0), *args)
  return jax.tree_util.tree_map(jnp.shape, params)


def test_mlp_layers_are_named_in_the_constructor_scope():
  assert names(lambda x: purify.nn.MLP([3, 2])(x), jnp.ones((1, 4))) == {
      "mlp/~/linear_0": {"w": (4, 3), "b": (3,)},
      "mlp/~/linear_1": {"w": (3, 2), "b": (2,)}}


def test_sibling_modules_get_counters_and_explicit_names_win():
  def f(x):
    a = purify.nn.Linear(2)(x)
    b = purify.nn.Linear(2)(x)
    c = purify.nn.Linear(2, name="head")(x)
    return a + b + c
  assert sorted(names(f, jnp.ones((1, 3)))) == ["head", "linear", "linear_1"]


def test_module_created_in_a_method_is_nested_without_tilde():
  class Block(purify.Module):
    def __call__(self, x):
      return purify.nn.Linear(2)(x)

  class Net(purify.Module):
    def __init__(self, name=None):
      super().__init__(name=name)
      self.pre = purify.nn.Linear(3)

    def __call__(self, x):
      return Block()(self.pre(x))

  assert sorted(names(lambda x: Net()(x), jnp.ones((1, 3)))) == ["net/block/linear", "net/~/linear"]


def test_calling_a_module_twice_shares_its_params():
  def f(x):
    lin = purify.nn.Linear(3)
    return lin(lin(x))
  params = purify.transform(f).init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
  assert list(params) == ["linear"]


def test_other_public_methods_are_scoped_too():
  class Enc(purify.Module):
    def encode(self, x):
      return x * purify.param("scale", (), init=jax.nn.initializers.ones)

  assert names(lambda x: Enc().encode(x), jnp.ones(2)) == {"enc": {"scale": ()}}


def test_adding_a_layer_elsewhere_keeps_initial_values_of_named_modules():
  x = jnp.ones((1, 3))
  a = purify.transform(lambda x: purify.nn.Linear(2, name="keep")(x))
  b = purify.transform(lambda x: purify.nn.Linear(2, name="keep")(purify.nn.Linear(3, name="new")(x)))
  pa = a.init(jax.random.PRNGKey(0), x)
  pb = b.init(jax.random.PRNGKey(0), x)
  assert pa["keep"]["w"].shape == pb["keep"]["w"].shape == (3, 2)
  assert (pa["keep"]["w"] == pb["keep"]["w"]).all()
