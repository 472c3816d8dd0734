"""The seed document's examples, ported as a Haiku user would port them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from purify import demo


def test_eval_shape_of_effectful_net_then_call_it():
  def net(x):
    w = purify.param("w", (2, 2), init=lambda k, s, d: jnp.ones(s, d))
    return w @ x

  def eval_shape_net(x):
    output_shape = jax.eval_shape(net, x)   # Haiku: UnexpectedTracerError
    return output_shape, net(x)

  init, apply = purify.transform(eval_shape_net)
  x = jnp.ones((2, 2))
  params = init(jax.random.PRNGKey(666), x)
  shape, out = apply(params, None, x)
  assert shape == jax.ShapeDtypeStruct((2, 2), jnp.float32)
  np.testing.assert_array_equal(out, np.full((2, 2), 2.0, np.float32))
  assert jax.tree_util.tree_map(jnp.shape, params) == {"~": {"w": (2, 2)}}


def test_pure_net_with_explicit_param():
  def net(w, x):
    return w @ x

  def eval_shape_net(x):
    w = purify.param("w", (3, 2), init=lambda k, s, d: jnp.ones(s, d))
    return jax.eval_shape(net, w, x), net(w, x)

  init, apply = purify.transform(eval_shape_net)
  x = jnp.ones((2, 3))
  params = init(jax.random.PRNGKey(777), x)
  shape, out = apply(params, jax.random.PRNGKey(777), x)
  assert shape == jax.ShapeDtypeStruct((3, 3), jnp.float32)
  np.testing.assert_array_equal(out, np.full((3, 3), 2.0, np.float32))


def test_eval_shape_of_mlp_we_do_not_own():
  def eval_shape_net(x):
    net = purify.nn.MLP([300, 100])
    return jax.eval_shape(net, x), net(x)

  init, apply = purify.transform(eval_shape_net)
  x = jnp.ones((2, 2))
  params = init(jax.random.PRNGKey(666), x)
  shape, out = apply(params, None, x)
  assert shape.shape == (2, 100) and out.shape == (2, 100)


def test_lift_registers_inner_params_with_the_seeds_tree():
  def eval_shape_net(x):
    net = purify.nn.MLP([300, 100])
    init, apply = purify.transform(net)
    params = purify.lift(init, name="inner")(purify.next_rng_key(), x)
    output_shape = jax.eval_shape(apply, params, purify.next_rng_key(), x)
    out = net(x)
    return out, output_shape

  init, apply = purify.transform(eval_shape_net)
  x = jnp.ones((100, 100))
  params = init(jax.random.PRNGKey(777), x)
  out, shape = apply(params, jax.random.PRNGKey(777), x)
  assert jax.tree_util.tree_map(jnp.shape, params) == {
      "inner/mlp/~/linear_0": {"b": (300,), "w": (100, 300)},
      "inner/mlp/~/linear_1": {"b": (100,), "w": (300, 100)},
      "mlp/~/linear_0": {"b": (300,), "w": (100, 300)},
      "mlp/~/linear_1": {"b": (100,), "w": (300, 100)},
  }
  assert out.shape == (100, 100) and shape.shape == (100, 100)


def test_lifted_params_equal_the_inner_init_with_the_lift_key():
  inner = purify.transform(lambda x: purify.nn.Linear(3)(x))

  def outer(x):
    p = purify.lift(inner.init, name="inner")(purify.next_rng_key(), x)
    return inner.apply(p, None, x)

  t = purify.transform(outer)
  x = jnp.ones((2, 4))
  root = jax.random.PRNGKey(3)
  params = t.init(root, x)
  want = inner.init(purify.keys.param_key(root, "lift:inner"), x)
  np.testing.assert_array_equal(params["inner/linear"]["w"], want["linear"]["w"])
  np.testing.assert_allclose(t.apply(params, None, x), inner.apply(want, None, x), rtol=1e-6)


def test_purify_eval_shape_like_hk_eval_shape():
  def eval_shape_net(x):
    net = purify.nn.MLP([300, 100])
    output_shape = purify.eval_shape(net, x)
    return net(x), output_shape

  init, apply = purify.transform(eval_shape_net)
  x = jnp.ones((100, 100))
  params = init(jax.random.PRNGKey(777), x)
  out, shape = apply(params, jax.random.PRNGKey(777), x)
  assert out.shape == shape.shape == (100, 100)


@pytest.mark.parametrize("row", range(5))
def test_every_row_of_the_seed_table_works(row):
  what, code, fn = demo.rows()[row]
  result = fn()
  assert "bug" not in result, (what, result)
  if "without lift" in what:
    assert "purify.lift" in result
  else:
    assert "(4, 10)" in result


def test_demo_main_exits_zero(capsys):
  assert demo.main() == 0
  out = capsys.readouterr().out
  assert out.count(" yes ") == 5
