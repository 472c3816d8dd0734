"""state_axes policies of the drop-ins against hand-written references: per-example
state (vmap), batch-mean state (vmap), per-step state (scan), per-layer BatchNorm
statistics in a layer stack, per-member statistics in an ensemble, nesting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from purify import keys
from test_semantics import ROOT, check_against_reference, assert_same


def accumulate(x):
  """State "total" += sum(x); returns x * (old total + 1)."""
  total = purify.get_state("total", (), init=jnp.zeros)
  purify.set_state("total", total + x.sum())
  return x * (total + 1.0)


XS = jnp.arange(6.0).reshape(3, 2)


def test_vmap_state_axes_0_gives_each_example_its_own_state():
  t = purify.transform_with_state(lambda xs: purify.vmap(accumulate, state_axes=0)(xs))

  def ref_init(root, xs):
    return {}, {"~": {"total": jnp.zeros(3)}}

  def ref_apply(params, state, root, xs):
    tot = state["~"]["total"]
    return xs * (tot[:, None] + 1.0), {"~": {"total": tot + xs.sum(1)}}

  _, (_, new) = check_against_reference(t, ref_init, ref_apply, ROOT, XS, deriv=None)
  out, again = t.apply({}, new, None, XS)
  np.testing.assert_allclose(again["~"]["total"], 2 * XS.sum(1))


def test_vmap_state_axes_mean_keeps_one_state_with_the_batch_mean():
  t = purify.transform_with_state(lambda xs: purify.vmap(accumulate, state_axes="mean")(xs))
  check_against_reference(
      t, lambda r, xs: ({}, {"~": {"total": jnp.zeros(())}}),
      lambda p, s, r, xs: (xs * (s["~"]["total"] + 1.0),
                           {"~": {"total": s["~"]["total"] + xs.sum(1).mean()}}),
      ROOT, XS, deriv=None)


def test_scan_state_axes_0_gives_each_step_its_own_state_and_nests_with_vmap():
  def model(xs):                                      # xs: (3, 2)
    step = lambda c, x: (c + 1.0, purify.vmap(accumulate, state_axes=0)(x * c))  # noqa: E731
    return purify.scan(step, 1.0, jnp.stack([xs, xs]), state_axes=0)[1]

  def ref_apply(params, state, root, xs):
    tot = state["~"]["total"]                          # (2 steps, 3 examples)
    outs, new = [], []
    for s, c in enumerate((1.0, 2.0)):
      x = xs * c
      outs.append(x * (tot[s][:, None] + 1.0))
      new.append(tot[s] + x.sum(1))
    return jnp.stack(outs), {"~": {"total": jnp.stack(new)}}

  t = purify.transform_with_state(model)
  check_against_reference(t, lambda r, xs: ({}, {"~": {"total": jnp.zeros((2, 3))}}), ref_apply,
                          ROOT, XS, deriv=None)


def _bn(x):
  return purify.nn.BatchNorm(True, True, 0.9)(x, is_training=True)


def test_layer_stack_keeps_per_layer_batchnorm_statistics_like_separate_layers():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
  stacked = purify.transform_with_state(
      lambda x: purify.layer_stack(3)(lambda h: jnp.tanh(_bn(h)))(x))
  unrolled = purify.transform_with_state(lambda x: _unrolled(x))
  ps, ss = stacked.init(ROOT, x)
  pu, su = unrolled.init(ROOT, x)
  S = "__layer_stack_no_per_layer"                 # (Haiku's name for the stack)
  assert ss[f"{S}/batch_norm/~/mean_ema"]["average"].shape == (3, 1, 2)
  # the stacked params/state, sliced per layer, are the unrolled model's
  pu = {f"layer_{i}/batch_norm": {k: ps[f"{S}/batch_norm"][k][i] for k in ps[f"{S}/batch_norm"]} for i in range(3)}
  su = {f"layer_{i}/batch_norm/~/{ema}": {k: ss[f"{S}/batch_norm/~/{ema}"][k][i]
                                           for k in ss[f"{S}/batch_norm/~/{ema}"]}
        for i in range(3) for ema in ("mean_ema", "var_ema")}
  out_s, new_s = stacked.apply(ps, ss, None, x)
  out_u, new_u = unrolled.apply(pu, su, None, x)
  np.testing.assert_allclose(out_s, out_u, rtol=1e-5, atol=1e-6)
  for i in range(3):
    np.testing.assert_allclose(new_s[f"{S}/batch_norm/~/mean_ema"]["average"][i],
                               new_u[f"layer_{i}/batch_norm/~/mean_ema"]["average"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(new_s[f"{S}/batch_norm/~/var_ema"]["hidden"][0], new_s[f"{S}/batch_norm/~/var_ema"]["hidden"][2])


def _unrolled(x):
  h = x
  for i in range(3):
    with purify.name_scope(f"layer_{i}"):
      h = jnp.tanh(_bn(h))
  return h


def test_ensemble_members_have_their_own_batchnorm_statistics():
  xs = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 3))   # member i sees xs[i]
  t = purify.transform_with_state(lambda xs: purify.ensemble(2, in_axes=0)(_bn)(xs))
  params, state = t.init(ROOT, xs)
  _, new = t.apply(params, state, None, xs)
  single = purify.transform_with_state(_bn)
  for i in range(2):
    p_i = jax.tree_util.tree_map(lambda a: a[i], params)
    s_i = jax.tree_util.tree_map(lambda a: a[i], state)
    _, want = single.apply(p_i, s_i, None, xs[i])
    assert_same(jax.tree_util.tree_map(lambda a: a[i], new), want)


def test_state_axes_errors_name_the_policy_and_the_fix():
  with pytest.raises(purify.PurifyError, match=r'state_axes=1.*None.*0.*"mean"'):
    purify.transform_with_state(lambda x: purify.vmap(accumulate, state_axes=1)(x)).init(ROOT, XS)
  with pytest.raises(purify.PurifyError, match=r"state_axes='mean'.*None.*0"):
    purify.transform_with_state(lambda x: purify.scan(lambda c, _: (accumulate(c), None), x, None,
                                                      length=2, state_axes="mean")[0]).init(ROOT, XS)

  def mixed(xs):
    accumulate(xs[0])
    return purify.vmap(accumulate, state_axes=0)(xs)
  with pytest.raises(purify.PurifyError, match=r"'~/total'.*stack \(\).*stack \(3,\)"):
    purify.transform_with_state(mixed).init(ROOT, XS)

  def inner_varies(xs):                                 # per-example over a plain inner vmap
    return purify.vmap(lambda x: jax.vmap(accumulate)(x[:, None]), state_axes=0)(xs)
  with pytest.raises(purify.PurifyError, match=r"per-example"):
    purify.transform_with_state(inner_varies).init(ROOT, XS)


# ----------------------------------------------------------------------------- keyed_init
def _keyed_model(x):
  u = purify.get_state("u", (3,), init=purify.keyed_init(jax.nn.initializers.normal()))
  purify.set_state("u", u * 2)
  return x + u


def test_keyed_init_draws_a_state_from_the_init_key():
  t = purify.transform_with_state(_keyed_model)
  x = jnp.zeros(3)
  _, s0 = t.init(ROOT, x)
  _, s1 = t.init(jax.random.PRNGKey(5), x)
  _, again = t.init(ROOT, x)
  assert not np.array_equal(s0["~"]["u"], s1["~"]["u"])          # the key decides
  np.testing.assert_array_equal(s0["~"]["u"], again["~"]["u"])
  # the key is the state's own: derived from the root and the state's path
  # (eager here, inside init's program there: XLA's erf_inv may differ by one ulp
  # between the two, measured on JAX 0.10 on this CI's CPU)
  want = jax.nn.initializers.normal()(keys.param_key(ROOT, "state:~/u"), (3,), jnp.float32)
  np.testing.assert_array_max_ulp(s0["~"]["u"], want, maxulp=1)
  out, s = t.apply({}, s0, None, x)
  np.testing.assert_array_equal(out, s0["~"]["u"])
  np.testing.assert_array_equal(s["~"]["u"], 2 * s0["~"]["u"])
  # no key, no draw: init refuses rng=None, naming keyed_init
  with pytest.raises(purify.errors.MissingRngError, match="keyed_init"):
    t.init(None, x)
  # a typed key after a raw one: its own program (not the raw key's)
  _, typed = t.init(jax.random.key(0), x)
  assert typed["~"]["u"].shape == (3,)


def test_keyed_init_under_state_axes_starts_every_member_at_the_same_draw():
  def f(x):
    return purify.vmap(lambda xi: _keyed_model(xi), state_axes=0, axis_name="b")(x)
  _, s = purify.transform_with_state(f).init(ROOT, jnp.zeros((4, 3)))
  u = np.asarray(s["~"]["u"])
  assert u.shape == (4, 3) and (u == u[0]).all() and (u[0] != 0).all()
