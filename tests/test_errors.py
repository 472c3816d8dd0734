"""Every bad input is a clear purify error: the class, and the key phrases of its
message (what happened, which name / site, what to do instead)."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from purify import errors

ones = jax.nn.initializers.ones
ROOT = jax.random.PRNGKey(0)
THIS_FILE = os.path.basename(__file__)


def here():
  """The caller's line number (call it on the same line as the effect)."""
  return sys._getframe(1).f_lineno


# ----------------------------------------------------------------------------- outside a transform
@pytest.mark.parametrize("call, fn", [
    (lambda: purify.param("w", (3,)), "param"),
    (lambda: purify.next_rng_key(), "next_rng_key"),
    (lambda: purify.get_state("s", (), init=jnp.zeros), "get_state"),
    (lambda: purify.set_state("s", 1.0), "set_state"),
])
def test_effect_outside_transform(call, fn):
  with pytest.raises(errors.EffectOutsideTransformError) as ei:
    call()
  msg = str(ei.value)
  assert f"purify.{fn}(" in msg
  assert "outside a purify transform" in msg
  assert "purify.transform" in msg and ".init" in msg and ".apply" in msg


def test_module_created_outside_transform():
  with pytest.raises(errors.EffectOutsideTransformError, match="purify.transform"):
    purify.nn.Linear(2)


# ----------------------------------------------------------------------------- param conflicts
def test_param_declared_with_two_shapes_names_both_call_sites():
  lines = []

  def f(x):
    a = purify.param("w", (3,)); lines.append(here())      # noqa: E702
    b = purify.param("w", (4,)); lines.append(here())      # noqa: E702
    return x * a + b[:3]

  with pytest.raises(errors.ParamConflictError) as ei:
    purify.transform(f).init(ROOT, jnp.ones(3))
  msg = str(ei.value)
  assert len(lines) == 1                                    # stopped at the second call
  first_line = lines[0]
  second_line = first_line + 1
  assert "'~/w'" in msg and "shapes" in msg
  assert "(3,)" in msg and "(4,)" in msg
  assert msg.count(THIS_FILE) >= 2, msg
  assert f"{THIS_FILE}:{first_line}" in msg, msg
  assert f"{THIS_FILE}:{second_line}" in msg, msg


def test_param_declared_with_two_dtypes():
  def f(x):
    purify.param("w", (3,), jnp.float32)
    purify.param("w", (3,), jnp.int32)
    return x

  with pytest.raises(errors.ParamConflictError) as ei:
    purify.transform(f).init(ROOT, jnp.ones(3))
  msg = str(ei.value)
  assert "dtypes" in msg and "float32" in msg and "int32" in msg and "'~/w'" in msg


# ----------------------------------------------------------------------------- params given to apply
def _two_params(x):
  return x * purify.param("w", (3,), init=ones) + purify.param("b", (3,), init=ones)


def test_apply_params_missing_entry():
  t = purify.transform(_two_params)
  x = jnp.ones(3)
  params = t.init(ROOT, x)
  del params["~"]["b"]
  with pytest.raises(errors.ParamsMismatchError) as ei:
    t.apply(params, None, x)
  msg = str(ei.value)
  assert "without '~/b'" in msg and "(3,)" in msg and "float32" in msg
  assert THIS_FILE in msg                                  # where the model declares it
  assert isinstance(ei.value, ValueError)


def test_apply_params_missing_module():
  t = purify.transform(_two_params)
  with pytest.raises(errors.ParamsMismatchError, match="without '~/w'"):
    t.apply({}, None, jnp.ones(3))


def test_apply_params_extra_entry():
  t = purify.transform(_two_params)
  x = jnp.ones(3)
  params = t.init(ROOT, x)
  params["~"]["z"] = jnp.zeros(2)
  with pytest.raises(errors.ParamsMismatchError) as ei:
    t.apply(params, None, x)
  msg = str(ei.value)
  assert "'~/z'" in msg and "does not declare" in msg
  assert "~/w" in msg and "~/b" in msg                     # the known entries


def test_apply_params_extra_module():
  t = purify.transform(_two_params)
  x = jnp.ones(3)
  params = t.init(ROOT, x)
  params["other"] = {"v": jnp.zeros(1)}
  with pytest.raises(errors.ParamsMismatchError, match="'other/v'"):
    t.apply(params, None, x)


def test_apply_params_wrong_shape_names_path_and_both_shapes():
  t = purify.transform(_two_params)
  x = jnp.ones(3)
  params = t.init(ROOT, x)
  params["~"]["w"] = jnp.ones((4,))
  with pytest.raises(errors.ParamsMismatchError) as ei:
    t.apply(params, None, x)
  msg = str(ei.value)
  assert "params['~']['w']" in msg
  assert "shape (4,)" in msg and "shape (3,)" in msg
  assert THIS_FILE in msg


def test_apply_state_wrong_shape_says_state():
  def f(x):
    purify.set_state("n", purify.get_state("n", (2,), init=jnp.zeros) + 1)
    return x

  t = purify.transform_with_state(f)
  params, state = t.init(ROOT, jnp.ones(3))
  state["~"]["n"] = jnp.zeros(5)
  with pytest.raises(errors.ParamsMismatchError) as ei:
    t.apply(params, state, None, jnp.ones(3))
  msg = str(ei.value)
  assert "state['~']['n']" in msg and "(5,)" in msg and "(2,)" in msg


# ----------------------------------------------------------------------------- RNG
def test_rng_draw_with_rng_none_in_apply():
  def f(x):
    return x + jax.random.uniform(purify.next_rng_key(), x.shape)

  t = purify.transform(f)
  x = jnp.ones(3)
  params = t.init(ROOT, x)
  assert params == {}
  with pytest.raises(errors.MissingRngError) as ei:
    t.apply(params, None, x)
  msg = str(ei.value)
  assert "rng=None" in msg and "next_rng_key" in msg
  assert "~#0" in msg and THIS_FILE in msg                 # the site that draws
  assert "jax.random.key" in msg                           # the fix
  # with a key it works
  assert t.apply(params, jax.random.PRNGKey(1), x).shape == (3,)


@pytest.mark.parametrize("rng, got", [(0, "int32[]"), (jnp.ones(3, jnp.uint32), "uint32[3]"),
                                      (jnp.ones(2, jnp.float32), "float32[2]"),
                                      (jax.random.split(jax.random.key(0), 2), "key<fry>[2]")])
def test_init_and_apply_with_something_that_is_not_a_key(rng, got):
  t = purify.transform(lambda x: purify.nn.Linear(2)(x))
  with pytest.raises(errors.InvalidKeyError) as ei:
    t.init(rng, jnp.ones((1, 3)))
  assert "init(rng, ...)" in str(ei.value) and got in str(ei.value)
  assert "jax.random.key(seed)" in str(ei.value)
  params = t.init(ROOT, jnp.ones((1, 3)))
  with pytest.raises(errors.InvalidKeyError, match=r"apply\(params, rng, \.\.\.\)"):
    t.apply(params, rng, jnp.ones((1, 3)))


def test_apply_of_a_stateful_model_without_its_state_says_the_signature():
  """transform_with_state's apply(params, rng, x) (state forgotten): the argument
  taken for rng is x, which is not a key; the error gives the signature."""
  t = purify.transform_with_state(lambda x: purify.get_state("s", (3,), init=jnp.zeros) + x)
  params, state = t.init(None, jnp.ones(3))
  with pytest.raises(errors.InvalidKeyError) as ei:
    t.apply(params, None, jnp.ones(3))
  assert "apply(params, state, rng, ...)" in str(ei.value) and "float32[3]" in str(ei.value)
  assert "(params, state, rng, *args)" in str(ei.value)


def test_init_with_rng_none_when_there_are_params():
  t = purify.transform(_two_params)
  with pytest.raises(errors.MissingRngError, match="init"):
    t.init(None, jnp.ones(3))


# ----------------------------------------------------------------------------- arguments
class _Unhashable:
  __hash__ = None


@pytest.mark.parametrize("args, kwargs, where, kind", [
    ((jnp.ones(3), {"a": {1, 2}}), {}, "args[1]['a']", "set"),
    ((jnp.ones(3),), {"cfg": _Unhashable()}, "kwargs['cfg']", "_Unhashable"),
])
def test_argument_neither_array_nor_hashable(args, kwargs, where, kind):
  t = purify.transform(lambda x, *a, **k: x * purify.param("w", (3,), init=ones))
  with pytest.raises(TypeError) as ei:
    t.init(ROOT, *args, **kwargs)
  msg = str(ei.value)
  assert where in msg and kind in msg
  assert "neither an array nor hashable" in msg
  with pytest.raises(TypeError, match="neither an array nor hashable"):
    t.apply({"~": {"w": jnp.ones(3)}}, None, *args, **kwargs)


def test_hashable_python_values_are_static():
  calls = []

  def f(x, scale, mode):
    calls.append((scale, mode))
    return x * scale if mode == "mul" else x + scale

  t = purify.transform(f)
  x = jnp.ones(2)
  np.testing.assert_allclose(t.apply({}, None, x, 3, "mul"), [3., 3.])
  np.testing.assert_allclose(t.apply({}, None, x, 3, "add"), [4., 4.])
  np.testing.assert_allclose(t.apply({}, None, x, 3, "mul"), [3., 3.])
  assert calls == [(3, "mul"), (3, "add")]                 # traced once per static value


# ----------------------------------------------------------------------------- state under vmap
def _per_example_state(axis_name):
  def f(x):                                                # x: (2, 3)
    def row(xi):
      purify.set_state("s", xi)
      return xi
    return jax.vmap(row, axis_name=axis_name)(x)
  return f


def test_per_example_set_state_under_vmap():
  t = purify.transform_with_state(_per_example_state("batch"))
  with pytest.raises(errors.PerExampleStateError) as ei:
    t.init(ROOT, jnp.ones((2, 3)))
  msg = str(ei.value)
  assert "set_state('~/s')" in msg and "per-example" in msg
  assert "batch" in msg                                    # the axis
  assert "jax.lax.pmean" in msg and "axis_name" in msg     # the fix


def test_per_example_set_state_under_unnamed_vmap_describes_the_axis():
  t = purify.transform_with_state(_per_example_state(None))
  with pytest.raises(errors.PerExampleStateError) as ei:
    t.init(ROOT, jnp.ones((2, 3)))
  msg = str(ei.value)
  assert "set_state('~/s')" in msg and "pmean" in msg
  # an unnamed axis is described by its size, not by an internal sentinel object
  assert "object at 0x" not in msg, msg
  assert "of size 2" in msg, msg


def test_set_state_under_vmap_after_pmean_works():
  def f(x):                                                # x: (2, 3)
    def row(xi):
      purify.set_state("mean", jax.lax.pmean(xi, "batch"))
      return xi * 2
    return jax.vmap(row, axis_name="batch")(x)

  t = purify.transform_with_state(f)
  x = jnp.arange(6.).reshape(2, 3)
  params, state = t.init(ROOT, x)
  np.testing.assert_allclose(state["~"]["mean"], x.mean(0))
  x2 = x * 10
  out, new_state = t.apply(params, state, None, x2)
  np.testing.assert_allclose(out, x2 * 2)
  np.testing.assert_allclose(new_state["~"]["mean"], x2.mean(0), rtol=1e-6)


def _noisy(y, k=None):
  w = purify.param("w", (3,), init=ones)
  k = purify.next_rng_key() if k is None else k
  return jnp.tanh(y * w + jax.random.normal(k, y.shape))


@pytest.mark.parametrize("jac", [jax.jacfwd, lambda f: jax.hessian(lambda y: f(y).sum())],
                         ids=["jacfwd", "hessian"])
def test_jacfwd_of_a_function_that_draws_says_why_and_what_to_do(jac):
  """jax.jacfwd / jax.hessian vmap over tangent directions and need one value of the
  function for all of them; under loop semantics each direction draws its own key.
  JAX's own error (a vmap output with out_axes=None is batched) says neither."""
  t = purify.transform(lambda x: jac(_noisy)(x))
  with pytest.raises(errors.PerExampleDrawError) as ei:
    t.init(ROOT, jnp.ones(3))
  msg = str(ei.value)
  assert "but output was batched" in msg                  # JAX's message, kept
  assert f"{THIS_FILE}:" in msg and "(_noisy)" in msg      # the draw's site
  assert "of size 3" in msg                                # its vmap
  assert "jax.jacrev" in msg and "next_rng_key(); jax.jacfwd" in msg  # the fixes
  assert isinstance(ei.value.__cause__, ValueError)


def test_the_remedies_for_jacfwd_of_a_function_that_draws_work():
  """jax.jacrev (one evaluation, one key) and jax.jacfwd with the key drawn outside
  give the same Jacobian; so do the Hessians (jacrev of jacrev, hessian)."""
  x = jnp.array([0.5, -1.0, 2.0])

  def run(f):
    t = purify.transform(f)
    return t.apply(t.init(ROOT, x), jax.random.PRNGKey(1), x)

  rev = run(lambda x: jax.jacrev(_noisy)(x))
  fwd = run(lambda x: (lambda k: jax.jacfwd(lambda y: _noisy(y, k))(x))(purify.next_rng_key()))
  np.testing.assert_allclose(rev, fwd, rtol=1e-5, atol=1e-6)
  assert np.abs(np.diag(rev)).min() > 0
  h_rev = run(lambda x: jax.jacrev(jax.jacrev(lambda y: _noisy(y).sum()))(x))
  h_fwd = run(lambda x: (lambda k: jax.hessian(lambda y: _noisy(y, k).sum())(x))(
      purify.next_rng_key()))
  np.testing.assert_allclose(h_rev, h_fwd, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- initializers
def test_initializer_closing_over_traced_value():
  def f(x):
    return x * purify.param("w", (3,), init=lambda key, shape, dtype: x * 2)

  with pytest.raises(errors.InitializerError) as ei:
    purify.transform(f).init(ROOT, jnp.ones(3))
  msg = str(ei.value)
  assert "'~/w'" in msg and "traced value" in msg
  assert "(key, shape, dtype)" in msg


def test_initializer_returning_wrong_shape():
  def f(x):
    return x * purify.param("w", (3,), init=lambda key, shape, dtype: jnp.ones((4,), dtype))

  with pytest.raises(errors.InitializerError) as ei:
    purify.transform(f).init(ROOT, jnp.ones(3))
  msg = str(ei.value)
  assert "'~/w'" in msg and "(4,)" in msg and "(3,)" in msg and THIS_FILE in msg


def test_haiku_style_parameter_initializer_says_how_to_wrap_it():
  """``init=jnp.zeros`` (Haiku's idiom: init(shape, dtype)) for a parameter."""
  f = lambda x: x * purify.param("b", (3,), init=jnp.zeros)   # noqa: E731
  with pytest.raises(errors.InitializerError) as ei:
    purify.transform(f).init(ROOT, jnp.ones(3))
  msg = str(ei.value)
  assert "'~/b'" in msg and "takes (shape, dtype)" in msg
  assert "init=lambda key, shape, dtype: f(shape, dtype)" in msg and "jax.nn.initializers.zeros" in msg
  # the fix it names works
  g = lambda x: x * purify.param("b", (3,), init=lambda key, shape, dtype: jnp.zeros(shape, dtype))  # noqa: E731
  np.testing.assert_array_equal(purify.transform(g).init(ROOT, jnp.ones(3))["~"]["b"], np.zeros(3))


def test_haiku_initializer_object_names_its_jax_counterpart():
  import haiku as hk                   # (a dev dependency)
  f = lambda x: x @ purify.param("w", (3, 2), init=hk.initializers.TruncatedNormal(0.1))  # noqa: E731
  with pytest.raises(errors.InitializerError) as ei:
    purify.transform(f).init(ROOT, jnp.ones((1, 3)))
  msg = str(ei.value)
  assert "This is a Haiku initializer" in msg and "jax.nn.initializers.truncated_normal(s)" in msg


def test_parameter_style_initializer_for_a_state_says_what_a_state_takes():
  f = lambda x: x + purify.get_state("s", (3,), init=jax.nn.initializers.normal())  # noqa: E731
  with pytest.raises(errors.InitializerError) as ei:
    purify.transform_with_state(f).init(ROOT, jnp.ones(3))
  msg = str(ei.value)
  assert "state '~/s'" in msg and "takes (key, shape, dtype)" in msg and "jnp.zeros" in msg


def test_an_initializer_failing_otherwise_gets_no_signature_hint():
  def bad(key, shape, dtype):
    raise TypeError("my own bug")
  with pytest.raises(errors.InitializerError) as ei:
    purify.transform(lambda x: x * purify.param("w", (3,), init=bad)).init(ROOT, jnp.ones(3))
  assert "my own bug" in str(ei.value) and "takes (shape, dtype)" not in str(ei.value)


# ----------------------------------------------------------------------------- nested transforms
_inner = purify.transform(lambda x: x * purify.param("w", (3,), init=ones))


def test_nested_transform_init_points_to_lift():
  def outer(x):
    params = _inner.init(purify.next_rng_key(), x)
    return _inner.apply(params, None, x)

  with pytest.raises(errors.NestedTransformError) as ei:
    purify.transform(outer).init(ROOT, jnp.ones(3))
  msg = str(ei.value)
  assert "init of a purify transform was called inside another purify transform" in msg
  assert "purify.lift" in msg


def test_lift_is_the_remedy():
  def outer(x):
    params = purify.lift(_inner.init, name="inner")(purify.next_rng_key(), x)
    return _inner.apply(params, None, x)

  t = purify.transform(outer)
  x = jnp.array([1., 2., 3.])
  params = t.init(ROOT, x)
  ((module, sub),) = params.items()
  assert module.startswith("inner/") and set(sub) == {"w"}
  np.testing.assert_allclose(sub["w"], jnp.ones(3))
  params[module]["w"] = jnp.array([2., 3., 4.])
  np.testing.assert_allclose(t.apply(params, ROOT, x), x * jnp.array([2., 3., 4.]))


# ----------------------------------------------------------------------------- custom derivatives
@jax.custom_jvp
def _custom_sin(x):
  return jnp.sin(x * purify.param("w", (3,), init=ones))


@_custom_sin.defjvp
def _custom_sin_jvp(primals, tangents):
  (x,), (tx,) = primals, tangents
  w = purify.param("w", (3,), init=ones)
  return jnp.sin(x * w), jnp.cos(x * w) * w * tx


def test_custom_jvp_with_param_inside_forward_works_grad_never_silently_zero():
  t = purify.transform(_custom_sin)
  x = jnp.array([0.1, 0.2, 0.3])
  params = t.init(ROOT, x)
  w = jnp.array([1.5, -2.0, 0.5])
  params = {"~": {"w": w}}
  np.testing.assert_allclose(t.apply(params, None, x), jnp.sin(x * w), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(t.apply)(params, None, x), jnp.sin(x * w), rtol=1e-6)

  loss = lambda p: t.apply(p, None, x).sum()                # noqa: E731
  try:
    g = jax.grad(loss)(params)
  except errors.CustomRuleEffectError as e:
    msg = str(e)
    assert "jax.custom_jvp" in msg and "_custom_sin" in msg
    assert "~/w" in msg
    assert "silently" in msg and "explicit arguments" in msg
  else:                                                    # if a gradient comes, it is right
    want = jnp.cos(x * w) * x
    assert not np.allclose(g["~"]["w"], 0)
    np.testing.assert_allclose(g["~"]["w"], want, rtol=1e-6)


@jax.custom_vjp
def _custom_scale(x):
  return x * purify.param("w", (3,), init=ones)


def _custom_scale_fwd(x):
  return _custom_scale(x), x


def _custom_scale_bwd(x, ct):
  return (ct * 2.0,)


_custom_scale.defvjp(_custom_scale_fwd, _custom_scale_bwd)


def test_custom_vjp_with_param_inside_grad_is_a_purify_error_or_correct():
  t = purify.transform(_custom_scale)
  x = jnp.array([0.1, 0.2, 0.3])
  w = jnp.array([1.5, -2.0, 0.5])
  params = {"~": {"w": w}}
  np.testing.assert_allclose(t.apply(params, None, x), x * w, rtol=1e-6)
  try:
    g = jax.grad(lambda p: t.apply(p, None, x).sum())(params)
  except errors.CustomRuleEffectError as e:
    msg = str(e)
    assert "jax.custom_vjp" in msg and "_custom_scale" in msg and "~/w" in msg
  else:
    np.testing.assert_allclose(g["~"]["w"], x, rtol=1e-6)


# ----------------------------------------------------------------------------- loops
def test_set_state_in_while_cond():
  def f(x):
    def cond(c):
      purify.set_state("n", purify.get_state("n", (), init=jnp.zeros) + 1)
      return c < 3
    return jax.lax.while_loop(cond, lambda c: c + 1, x)

  with pytest.raises(errors.PurifyError) as ei:
    purify.transform_with_state(f).init(ROOT, jnp.float32(0))
  msg = str(ei.value)
  assert "'~/n'" in msg and "condition function" in msg and "body" in msg


def test_rng_in_while_cond():
  def f(x):
    def cond(c):
      return c < jax.random.uniform(purify.next_rng_key()) * 5
    return jax.lax.while_loop(cond, lambda c: c + 1, x)

  with pytest.raises(errors.PurifyError) as ei:
    purify.transform(f).init(ROOT, jnp.float32(0))
  msg = str(ei.value)
  assert "next_rng_key" in msg and "condition function" in msg and "body" in msg


def test_state_write_under_a_per_example_cond_predicate_is_refused_even_if_the_value_is_shared():
  def one(x):
    jax.lax.cond(x.sum() > 0, lambda: purify.set_state("seen", 1.0),
                 lambda: purify.set_state("seen", 2.0))
    return x
  with pytest.raises(errors.PerExampleStateError) as ei:
    purify.transform_with_state(lambda x: jax.vmap(one, axis_name="b")(x)).init(ROOT, jnp.ones((2, 3)))
  msg = str(ei.value)
  assert "set_state('~/seen')" in msg and "cond/switch" in msg and "'b' of size 2" in msg
  assert "pmax(pred" in msg                               # the fix


def test_state_write_in_a_while_with_a_per_example_predicate_is_refused():
  def one(n):
    def body(c):
      purify.set_state("steps", purify.get_state("steps", (), jnp.int32) + 1)
      return c + 1
    return jax.lax.while_loop(lambda c: c < n, body, 0)
  with pytest.raises(errors.PerExampleStateError, match=r"(?s)'~/steps'.*while_loop.*of size 3"):
    purify.transform_with_state(lambda n: jax.vmap(one)(n)).init(ROOT, jnp.arange(3))


def test_state_write_under_a_batch_wide_predicate_still_works():
  def one(x):
    pred = jax.lax.pmax(x.sum(), "b") > 0                   # the same for every example
    purify.get_state("seen", (), init=jnp.zeros)
    jax.lax.cond(pred, lambda: purify.set_state("seen", 1.0), lambda: purify.set_state("seen", 2.0))
    return x
  t = purify.transform_with_state(lambda x: jax.vmap(one, axis_name="b")(x))
  params, state = t.init(ROOT, jnp.ones((2, 3)))
  _, new = t.apply(params, state, None, -jnp.ones((2, 3)))
  assert new["~"]["seen"] == 2.0
  _, new = t.apply(params, state, None, jnp.ones((2, 3)))
  assert new["~"]["seen"] == 1.0


def test_numpy_float64_arguments_are_float32_without_a_warning_unless_x64():
  import warnings
  t = purify.transform(lambda x: purify.nn.Linear(2)(x))
  x = np.zeros((1, 3))                                   # float64, as NumPy makes it
  with warnings.catch_warnings():
    warnings.simplefilter("error")                       # (was: a truncation UserWarning)
    params = t.init(ROOT, x)
    out = t.apply(params, None, x)
  assert out.dtype == jnp.float32 and params["linear"]["w"].dtype == jnp.float32
  with jax.enable_x64(True):
    t64 = purify.transform(lambda x: x * 2)
    assert t64.apply({}, None, x).dtype == jnp.float64
