"""purify.custom_vjp / purify.custom_jvp: custom rules for the arguments, JAX's own
derivative for the parameters the function reads; against pure-JAX references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from test_semantics import ROOT, assert_same

X = jnp.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
TOL = dict(rtol=1e-5, atol=1e-6)


@purify.custom_vjp
def layer(x):
  return jnp.tanh(purify.nn.Linear(2)(x))


def _fwd(x):
  return layer.fun(x), x


def _bwd(x, g):                      # a deliberately different (clipped) input cotangent
  return (jnp.clip(g, -0.1, 0.1) @ jnp.ones((2, x.shape[-1])),)


layer.defvjp(_fwd, _bwd)


def ref_layer(p, x):
  return jnp.tanh(x @ p["linear"]["w"] + p["linear"]["b"])


def test_custom_vjp_param_grads_are_the_true_derivative_and_input_grads_the_rule():
  t = purify.transform(lambda x: layer(x).sum())
  p = t.init(ROOT, X)
  np.testing.assert_allclose(t.apply(p, None, X), ref_layer(p, X).sum(), **TOL)
  for grad in (jax.grad, lambda f: jax.jit(jax.grad(f))):
    assert_same(grad(lambda p: t.apply(p, None, X))(p), jax.grad(lambda p: ref_layer(p, X).sum())(p),
                tol=TOL)
    np.testing.assert_allclose(grad(lambda x: t.apply(p, None, x))(X), jnp.full(X.shape, 0.2), **TOL)


def test_custom_vjp_inside_vmap_and_scan_in_the_model():
  def model(xs):
    ys = jax.vmap(layer)(xs)
    return jax.lax.scan(lambda c, x: (c + layer(x[None])[0], None), jnp.zeros(2), xs)[0] + ys.sum(0)
  t = purify.transform(model)
  p = t.init(ROOT, X)
  assert list(p) == ["linear"]                     # one module: both calls name it "linear"
  ref = lambda p: 2 * ref_layer(p, X).sum(0)  # noqa: E731
  np.testing.assert_allclose(t.apply(p, None, X), ref(p), **TOL)
  assert_same(jax.grad(lambda p: t.apply(p, None, X).sum())(p), jax.grad(lambda p: ref(p).sum())(p),
              tol=TOL)


@purify.custom_jvp
def soft(x):
  return jnp.log1p(jnp.exp(x * purify.param("s", (), init=jax.nn.initializers.constant(2.0))))


@soft.defjvp
def _soft_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  s = purify.param("s", (), init=jax.nn.initializers.constant(2.0))
  return soft.fun(x), 0.5 * jax.nn.sigmoid(x * s) * s * t        # half the true tangent


def test_custom_jvp_params_get_the_true_tangent_arguments_the_rule():
  t = purify.transform(lambda x: soft(x).sum())
  p = t.init(ROOT, X)
  ref = lambda s, x: jnp.log1p(jnp.exp(x * s)).sum()  # noqa: E731
  np.testing.assert_allclose(jax.grad(lambda p: t.apply(p, None, X))(p)["~"]["s"],
                             jax.grad(ref)(2.0, X), **TOL)
  np.testing.assert_allclose(jax.grad(lambda x: t.apply(p, None, x))(X),
                             0.5 * jax.grad(ref, argnums=1)(2.0, X), **TOL)
  _, tan = jax.jvp(lambda p: t.apply(p, None, X), (p,), ({"~": {"s": jnp.ones(())}},))
  np.testing.assert_allclose(tan, jax.grad(ref)(2.0, X), **TOL)


def test_keys_and_state_inside_are_refused_with_the_fix():
  @purify.custom_vjp
  def noisy(x):
    return x + jax.random.normal(purify.next_rng_key(), x.shape)
  noisy.defvjp(lambda x: (noisy.fun(x), None), lambda r, g: (g,))
  with pytest.raises(purify.PurifyError, match=r"(?s)next_rng_key\(\) inside.*custom_vjp.*pass\s+it in"):
    purify.transform(noisy).init(ROOT, X)


def test_outside_a_transform_they_are_jax():
  @purify.custom_vjp
  def f(x):
    return jnp.sin(x)
  f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (3.0 * g,))
  assert jax.grad(f)(1.0) == 3.0
  g = purify.custom_jvp(jnp.cos)
  g.defjvp(lambda p, t: (jnp.cos(p[0]), 5.0 * t[0]))
  assert jax.grad(g)(1.0) == 5.0
