"""purify.mixed_precision, intercept_methods and custom_getter(state=True) against
Haiku's (hk.mixed_precision with jmp policies, hk.intercept_methods)."""
import haiku as hk
import jax
import jax.numpy as jnp
import jmp
import numpy as np
import pytest

import purify

POLICY = jmp.get_policy("params=float32,compute=bfloat16,output=float32")
X = jax.random.normal(jax.random.PRNGKey(0), (4, 8))


def _dtypes(tree):
  return jax.tree.map(lambda a: (a.shape, str(a.dtype)), tree)


def _mlp_bn(lib):
  def f(x):
    y = (hk.nets.MLP if lib is hk else purify.nn.MLP)([8, 2])(x)
    return (hk.BatchNorm if lib is hk else purify.nn.BatchNorm)(True, True, 0.9)(y, True), y
  return f


@pytest.fixture
def policies():
  """Set policies for the test only, in both libraries."""
  set_ = []

  def use(cls, lib=purify):
    (hk if lib is hk else purify).mixed_precision.set_policy(cls, POLICY)
    set_.append((lib, cls))
  yield use
  for lib, cls in set_:
    (hk if lib is hk else purify).mixed_precision.clear_policy(cls)


def test_policies_give_haikus_dtypes_and_values(policies):
  for lib, classes in [(hk, (hk.nets.MLP, hk.BatchNorm)),
                       (purify, (purify.nn.MLP, purify.nn.BatchNorm))]:
    for cls in classes:
      policies(cls, lib)
  hk_t = hk.transform_with_state(_mlp_bn(hk))
  pf_t = purify.transform_with_state(_mlp_bn(purify))
  hk_p, hk_s = hk_t.init(jax.random.PRNGKey(1), X)
  pf_p, pf_s = pf_t.init(jax.random.PRNGKey(1), X)
  assert _dtypes((pf_p, pf_s)) == _dtypes((hk_p, hk_s))
  assert jax.tree.leaves(pf_p)[0].dtype == jnp.float32                   # stored in f32
  assert pf_s["batch_norm/~/mean_ema"]["hidden"].dtype == jnp.bfloat16  # created in compute
  want, want_s = hk_t.apply(hk_p, hk_s, None, X)
  for got, got_s in [pf_t.apply(hk_p, hk_s, None, X), jax.jit(pf_t.apply)(hk_p, hk_s, None, X)]:
    assert _dtypes((got, got_s)) == _dtypes((want, want_s))
    assert got[0].dtype == jnp.float32                                  # output dtype
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=2e-2, atol=2e-2)   # bf16 ulps
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        np.float32(a), np.float32(b), atol=2e-3), got_s, want_s)        # a bf16 ulp apart


def test_a_policy_reaches_modules_called_inside_and_a_class_of_its_own_wins(policies):
  half = jmp.get_policy("params=float16,compute=float16,output=float16")
  policies(purify.nn.MLP)
  purify.mixed_precision.set_policy(purify.nn.Linear, half)
  try:
    def f(x):
      return purify.nn.MLP([3])(x), purify.nn.Linear(2, name="alone")(x)
    p = purify.transform(f).init(jax.random.PRNGKey(0), X)
    out = purify.transform(f).apply(p, None, X)
  finally:
    purify.mixed_precision.clear_policy(purify.nn.Linear)
  # Linear's own policy wins inside MLP (params float16) and alone
  assert p["mlp/~/linear_0"]["w"].dtype == jnp.float16 and p["alone"]["w"].dtype == jnp.float16
  assert out[0].dtype == jnp.float32 and out[1].dtype == jnp.float16
  assert purify.mixed_precision.get_policy(purify.nn.Linear) is None


def test_push_policy_restores_and_refuses_inside_its_own_class():
  with purify.mixed_precision.push_policy(purify.nn.Linear, POLICY):
    assert purify.mixed_precision.get_policy(purify.nn.Linear) is POLICY
    p = purify.transform(lambda x: purify.nn.Linear(2)(x)).init(jax.random.PRNGKey(0), X)
    out = purify.transform(lambda x: purify.nn.Linear(2)(x)).apply(p, None, X)
  assert purify.mixed_precision.get_policy(purify.nn.Linear) is None
  assert out.dtype == jnp.float32 and p["linear"]["w"].dtype == jnp.float32

  class Pushy(purify.Module):
    def __call__(self, x):
      with purify.mixed_precision.push_policy(Pushy, POLICY):
        return x
  with pytest.raises(ValueError, match="inside a method of Pushy itself"):
    purify.transform(lambda x: Pushy()(x)).init(None, X)


def test_bad_policies_and_classes_say_what_is_expected():
  with pytest.raises(TypeError, match="is not a policy.*jmp.get_policy"):
    purify.mixed_precision.set_policy(purify.nn.Linear, "bfloat16")
  with pytest.raises(TypeError, match="purify.Module class"):
    purify.mixed_precision.set_policy(hk.Linear, POLICY)


def test_intercept_methods_sees_the_calls_haiku_sees():
  def program(lib):
    def f(x):
      seen = []
      def log(next_f, args, kwargs, context):
        seen.append((type(context.module).__name__, context.method_name,
                     context.orig_class.__name__))
        return next_f(*args, **kwargs)
      with lib.intercept_methods(log):
        (hk.nets.MLP if lib is hk else purify.nn.MLP)([3, 2])(x)
      f.seen = seen
      return x
    return f
  hk_f, pf_f = program(hk), program(purify)
  hk.transform(hk_f).init(jax.random.PRNGKey(0), X)
  purify.transform(pf_f).init(jax.random.PRNGKey(0), X)
  assert pf_f.seen == hk_f.seen and ("Linear", "__call__", "Linear") in pf_f.seen

  def double(next_f, args, kwargs, context):          # an interceptor may change the call
    return next_f(*(2 * a for a in args), **kwargs) if context.method_name == "__call__" \
        else next_f(*args, **kwargs)
  def g(x):
    with purify.intercept_methods(double):
      return purify.nn.Linear(2)(x)
  t = purify.transform(g)
  p = t.init(jax.random.PRNGKey(0), X)
  np.testing.assert_allclose(t.apply(p, None, X), 2 * X @ p["linear"]["w"] + p["linear"]["b"],
                             rtol=1e-5)


def test_custom_getter_with_state_reads_state_through_the_getter():
  def f(x):
    def plus_one(next_getter, value, context):
      assert context.full_name == "~/s"
      return next_getter(value + 1)
    with purify.custom_getter(plus_one, params=False, state=True):
      s = purify.get_state("s", (), init=jnp.zeros)
    purify.set_state("s", s)
    return x * purify.param("w", (), init=jax.nn.initializers.ones)
  t = purify.transform_with_state(f)
  params, state = t.init(jax.random.PRNGKey(0), jnp.ones(()))
  _, state = t.apply(params, state, None, jnp.ones(()))
  _, state = t.apply(params, state, None, jnp.ones(()))
  # init gives get_state's init value (0); each apply reads it through the getter
  assert float(state["~"]["s"]) == 2.0 and float(params["~"]["w"]) == 1.0
