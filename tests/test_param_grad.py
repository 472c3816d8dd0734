"""purify.grad / value_and_grad with params=True (gradients w.r.t. the params a
function reads), purify.get_params, purify.with_params: MAML against a pure-JAX
reference, including second-order gradients and a vmap over tasks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from test_semantics import ROOT, assert_same, check_against_reference

X = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
Y = jax.random.normal(jax.random.PRNGKey(2), (4, 1))


def ref_linear(p, x):
  return x @ p["linear"]["w"] + p["linear"]["b"]


def ref_maml(p, x, y, lr=0.1):
  loss = lambda p: jnp.mean((ref_linear(p, x) - y) ** 2)  # noqa: E731
  g = jax.grad(loss)(p)
  return loss(jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g))


def maml(x, y):
  net = purify.nn.Linear(1)
  loss = lambda: jnp.mean((net(x) - y) ** 2)  # noqa: E731
  g = purify.grad(loss, params=True)()
  fast = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, purify.get_params(g), g)
  with purify.with_params(fast):
    return loss()


def test_maml_inner_step_and_second_order_grad_match_the_reference():
  t = purify.transform(maml)
  params = t.init(ROOT, X, Y)
  check_against_reference(t, lambda r, x, y: t.init(r, x, y), lambda p, r, x, y: ref_maml(p, x, y),
                          ROOT, X, Y)
  # the outer gradient flows through the inner update (second order)
  g = jax.grad(lambda p: t.apply(p, None, X, Y))(params)
  assert_same(g, jax.grad(lambda p: ref_maml(p, X, Y))(params), tol=dict(rtol=1e-4, atol=1e-5))


def test_maml_vmapped_over_tasks_shares_params_and_adapts_per_task():
  xs, ys = jnp.stack([X, 2 * X]), jnp.stack([Y, -Y])
  t = purify.transform(lambda xs, ys: jax.vmap(maml)(xs, ys))
  params = t.init(ROOT, xs, ys)
  assert jax.tree_util.tree_map(jnp.shape, params) == {"linear": {"w": (3, 1), "b": (1,)}}
  want = jnp.stack([ref_maml(params, xs[i], ys[i]) for i in range(2)])
  np.testing.assert_allclose(t.apply(params, None, xs, ys), want, rtol=1e-5, atol=1e-6)


def test_param_grad_of_a_function_that_creates_its_module_keeps_its_names():
  def model(x):
    def loss(scale):
      return jnp.sum(purify.nn.Linear(2)(x) * scale)     # the module is created inside
    value, g = purify.value_and_grad(loss, params=True)(3.0)
    again = purify.nn.Linear(2)(x)                        # a second module: "linear_1"
    return value, g, again
  t = purify.transform(model)
  params = t.init(ROOT, X)
  assert sorted(params) == ["linear", "linear_1"]          # discovery consumed no name
  value, g, _ = t.apply(params, None, X)
  assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure({"linear": params["linear"]})
  ref = lambda p: jnp.sum((X @ p["w"] + p["b"]) * 3.0)  # noqa: E731
  np.testing.assert_allclose(value, ref(params["linear"]), rtol=1e-5)
  assert_same(g["linear"], jax.grad(ref)(params["linear"]), tol=dict(rtol=1e-5, atol=1e-6))


def test_param_grad_with_aux_and_rng_inside_uses_the_same_key_sites():
  def model(x):
    def loss():
      noise = jax.random.normal(purify.next_rng_key(), x.shape)
      y = purify.nn.Linear(1)(x + noise)
      return jnp.sum(y), noise
    g, noise = purify.grad(loss, params=True, has_aux=True)()
    later = purify.next_rng_key()                          # site ~#1: discovery took none
    return g, noise, later
  t = purify.transform(model)
  params = t.init(ROOT, X)
  g, noise, later = t.apply(params, ROOT, X)
  from test_semantics import site_key
  np.testing.assert_array_equal(noise, jax.random.normal(site_key(ROOT, "~#0"), X.shape))
  assert_same(later, site_key(ROOT, "~#1"))
  np.testing.assert_allclose(g["linear"]["w"], (X + noise).sum(0)[:, None], rtol=1e-5)


def test_with_params_and_get_params_errors_name_the_parameter():
  def wrong_shape(x):
    net = purify.nn.Linear(1)
    net(x)
    with purify.with_params({"linear": {"w": jnp.ones((5, 1))}}):
      return net(x)
  with pytest.raises(purify.PurifyError, match=r"'linear/w' has shape \(5, 1\).*\(3, 1\)"):
    purify.transform(wrong_shape).init(ROOT, X)
  with pytest.raises(purify.PurifyError, match=r"no parameter 'nope/w'"):
    purify.transform(lambda x: purify.get_params({"nope": {"w": 0}})).init(ROOT, X)
  with pytest.raises(purify.PurifyError, match=r"params=True.*inside a transform"):
    purify.grad(lambda: 1.0, params=True)()
