"""shard_map cases; run by tests/test_shard_map.py in a subprocess with 4 CPU devices
(XLA_FLAGS must be set before JAX starts, so they cannot share the main session)."""
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

import purify

assert jax.device_count() == 4, "run with XLA_FLAGS=--xla_force_host_platform_device_count=4"
MESH = jax.make_mesh((2, 2), ("x", "y"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
X = jnp.arange(16.0).reshape(4, 4)


def model(x):
  def body(a):                                        # a: the (2, 2) block of one shard
    w = purify.param("w", (2,), init=jax.nn.initializers.ones)
    b = purify.param("b", (), init=jax.nn.initializers.constant(0.5))
    c = purify.get_state("count", (), jnp.int32)
    total = purify.get_state("total", (), init=jnp.zeros)
    purify.set_state("count", c + 1)
    purify.set_state("total", total + jax.lax.psum(a.sum(), ("x", "y")))
    return jnp.tanh(a * w + b)
  return jax.shard_map(body, mesh=MESH, in_specs=P("x", "y"), out_specs=P("x", "y"))(x)


def reference(params, state, x):
  w, b = params["~"]["w"], params["~"]["b"]
  out = jnp.concatenate([jnp.concatenate([jnp.tanh(x[i:i + 2, j:j + 2] * w + b)
                                          for j in (0, 2)], 1) for i in (0, 2)], 0)
  return out, {"~": {"count": state["~"]["count"] + 1, "total": state["~"]["total"] + x.sum()}}


def test_params_and_state_through_shard_map_match_the_reference():
  t = purify.transform_with_state(model)
  params, state = t.init(jax.random.key(0), X)
  assert jax.tree_util.tree_map(jnp.shape, params) == {"~": {"w": (2,), "b": ()}}
  assert params["~"]["b"] == 0.5
  for apply in (t.apply, jax.jit(t.apply)):
    out, new = apply(params, state, None, X)
    ref_out, ref_new = reference(params, state, X)
    assert jnp.allclose(out, ref_out)
    assert new["~"]["count"] == ref_new["~"]["count"] == 1
    assert jnp.allclose(new["~"]["total"], ref_new["~"]["total"])


def test_grad_wrt_params_through_shard_map():
  t = purify.transform_with_state(model)
  params, state = t.init(jax.random.key(0), X)
  g = jax.grad(lambda p: t.apply(p, state, None, X)[0].sum())(params)
  g_ref = jax.grad(lambda p: reference(p, state, X)[0].sum())(params)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.allclose, g, g_ref))


def test_per_shard_state_is_refused_with_the_axis_and_remedy():
  def bad(x):
    def body(a):
      purify.set_state("m", a.mean())
      return a
    return jax.shard_map(body, mesh=MESH, in_specs=P("x", "y"), out_specs=P("x", "y"))(x)
  with pytest.raises(purify.PurifyError, match=r"(?s)'~/m'.*varies over mesh\naxes \('x', 'y'\).*pmean"):
    purify.transform_with_state(bad).init(jax.random.key(0), X)


def test_rng_inside_shard_map_is_refused_not_shared():
  def draws(x):
    f = lambda a: a + jax.random.normal(purify.next_rng_key(), a.shape)  # noqa: E731
    return jax.shard_map(f, mesh=MESH, in_specs=P("x", "y"), out_specs=P("x", "y"))(x)
  with pytest.raises(purify.PurifyError, match=r"(?s)next_rng_key\(\) inside jax.shard_map.*split"):
    purify.transform(draws).init(jax.random.key(0), X)


def test_shard_map_inside_scan_carries_state_per_step():
  def looped(x):
    def step(carry, _):
      return model(carry), None
    return jax.lax.scan(step, x, None, length=3)[0]
  t = purify.transform_with_state(looped)
  params, state = t.init(jax.random.key(0), X)
  out, new = t.apply(params, state, None, X)
  ref, st = X, state
  for _ in range(3):
    ref, st = reference(params, st, ref)
  assert jnp.allclose(out, ref, atol=1e-6)
  assert new["~"]["count"] == 3 and jnp.allclose(new["~"]["total"], st["~"]["total"])
