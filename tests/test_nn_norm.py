"""purify.nn norm layers and ExponentialMovingAverage: parity with dm-haiku run in the
same test (param/state trees, outputs, new state over several steps), BatchNorm under
vmap (named axis / unnamed axis) and lax.scan.

The initial ``average`` of a moving average (and so of BatchNorm's
``mean_ema``/``var_ema``) is, as in Haiku, the first value written (a state created
by set_state). The step tests run each library from ITS OWN init state (and purify
once more from Haiku's) and require equal outputs and states after every step."""
import warnings

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
import purify.nn as pnn

KEY = jax.random.PRNGKey(0)


def normal(seed, shape, dtype=jnp.float32):
  # numpy, not jax.random: no compilation per shape (keeps the tests fast)
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def sig(tree):
  """{module: {name: (shape, dtype)}} of a params/state tree."""
  return {m: {n: (tuple(np.shape(v)), np.dtype(v.dtype)) for n, v in sub.items()}
          for m, sub in tree.items()}


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
  assert sig(got) == sig(want)
  for m, sub in want.items():
    for n, v in sub.items():
      np.testing.assert_allclose(np.asarray(got[m][n], np.float32), np.asarray(v, np.float32),
                                 rtol=rtol, atol=atol, err_msg=f"{m}/{n}")


def assert_init_state(got, want):
  """purify's init state is Haiku's: the same tree, the same values (``average``: the
  first value written, up to float rounding of the debiasing)."""
  assert sig(got) == sig(want)
  for m, sub in want.items():
    for n, v in sub.items():
      if n == "average":
        np.testing.assert_allclose(got[m][n], v, rtol=1e-6, atol=1e-7, err_msg=f"{m}/{n}")
      else:
        np.testing.assert_array_equal(got[m][n], v, err_msg=f"{m}/{n}")


def perturb(params, seed=1):
  """Haiku's params with random values (so scale/offset matter in the comparison)."""
  leaves, tdef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(seed)
  new = [jnp.asarray(np.asarray(v, np.float32) + rng.standard_normal(v.shape), v.dtype)
         for v in leaves]
  return jax.tree_util.tree_unflatten(tdef, new)


def jitted(fn):
  """``jax.jit(fn)`` with its bool arguments static (Haiku's init/apply run op by op
  otherwise, compiling every op: much slower)."""
  def call(*args):
    static = tuple(i for i, a in enumerate(args) if isinstance(a, bool))
    return jax.jit(fn, static_argnums=static)(*args)
  return call


def both(build, *args):
  """``build(nn, *args)`` with nn = purify.nn and nn = hk: the two transforms."""
  ht = hk.transform_with_state(lambda *a: build(hk, *a))
  return (purify.transform_with_state(lambda *a, **k: build(pnn, *a, **k)),
          hk.TransformedWithState(jitted(ht.init), jitted(ht.apply)))


def check_stateless(build, x, tol=(1e-5, 1e-6)):
  """Same init trees (names, shapes, dtypes, values); same output on Haiku's params."""
  pt, ht = both(build, x)
  pp, ps = pt.init(KEY, x)
  hp, hs = ht.init(KEY, x)
  assert_trees_close(pp, hp)
  assert sig(ps) == sig(hs) == {}
  hp = perturb(hp)
  out, _ = pt.apply(hp, {}, None, x)
  want, _ = ht.apply(hp, {}, None, x)
  assert out.dtype == want.dtype and out.shape == want.shape
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32),
                             rtol=tol[0], atol=tol[1])
  return pp


# ----------------------------------------------------------------------------- LayerNorm
@pytest.mark.parametrize("shape,kw", [
    ((2, 5), dict(axis=-1, create_scale=True, create_offset=True)),
    ((2, 3, 4), dict(axis=-1, create_scale=True, create_offset=False, eps=1e-2)),
    ((2, 3, 4), dict(axis=(1, 2), create_scale=False, create_offset=True, param_axis=(1, 2))),
    ((2, 3, 4), dict(axis=slice(1, None), create_scale=True, create_offset=True,
                     use_fast_variance=True)),
    ((2, 3, 4), dict(axis=[-2, -1], create_scale=True, create_offset=True, param_axis=1,
                     use_fast_variance=True)),
    ((3, 4), dict(axis=0, create_scale=False, create_offset=False)),
])
def test_layer_norm_matches_haiku(shape, kw):
  x = normal(0, shape) * 3 + 1
  check_stateless(lambda nn, x: nn.LayerNorm(**kw)(x), x)


def test_layer_norm_bfloat16_and_named():
  x = normal(0, (2, 6), jnp.bfloat16)
  pp = check_stateless(
      lambda nn, x: nn.LayerNorm(-1, True, True, name="ln")(x), x, tol=(2e-2, 2e-2))
  assert sig(pp) == {"ln": {"scale": ((6,), np.dtype(jnp.bfloat16)),
                            "offset": ((6,), np.dtype(jnp.bfloat16))}}


def test_layer_norm_scale_offset_at_call_time_and_initializers():
  x = normal(0, (2, 4))
  s, o = normal(1, (4,)), normal(2, (4,))
  check_stateless(lambda nn, x: nn.LayerNorm(-1, False, False)(x, s, o), x)
  # purify initializers are init(key, shape, dtype); Haiku's are init(shape, dtype)
  pp, _ = purify.transform_with_state(lambda x: pnn.LayerNorm(
      -1, True, True, scale_init=jax.nn.initializers.constant(2.))(x)).init(KEY, x)
  hp, _ = hk.transform_with_state(lambda x: hk.LayerNorm(
      -1, True, True, scale_init=hk.initializers.Constant(2.))(x)).init(KEY, x)
  assert_trees_close(pp, hp)
  with pytest.raises(ValueError, match="scale_init"):
    purify.transform(lambda x: pnn.LayerNorm(-1, False, True, scale_init=jnp.ones)(x)).init(KEY, x)
  with pytest.raises(ValueError, match="create_offset=True"):
    purify.transform(lambda x: pnn.LayerNorm(-1, True, True)(x, offset=o)).init(KEY, x)
  # a scale or offset that does not broadcast to the input's shape is named
  for bad in (normal(3, (3,)), normal(3, (5, 2, 4))):
    with pytest.raises(ValueError, match=r"LayerNorm: scale of shape .* does not broadcast"):
      purify.transform(lambda x: pnn.LayerNorm(-1, False, False)(x, bad)).init(KEY, x)
  with pytest.raises(ValueError, match=r"LayerNorm: offset of shape \(3,\)"):
    purify.transform(lambda x: pnn.LayerNorm(-1, False, False)(x, s, normal(3, (3,)))).init(KEY, x)


def test_layer_norm_fast_variance_is_the_moment_formula():
  x = np.asarray(normal(0, (2, 8)), np.float64) + 3.0
  mean = x.mean(-1, keepdims=True)
  for fast, var in [(True, (x * x).mean(-1, keepdims=True) - mean * mean),
                    (False, ((x - mean) ** 2).mean(-1, keepdims=True))]:
    t = purify.transform(lambda x: pnn.LayerNorm(-1, False, False, use_fast_variance=fast)(x))
    np.testing.assert_allclose(t.apply({}, None, jnp.asarray(x, jnp.float32)),
                               (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,kw", [
    ((2, 3, 3, 4), dict(create_scale=True, create_offset=True)),
    ((2, 4, 3), dict(create_scale=True, create_offset=False, data_format="channels_first")),
])
def test_instance_norm_matches_haiku(shape, kw):
  x = normal(0, shape) * 2 + 1
  check_stateless(lambda nn, x: nn.InstanceNorm(**kw)(x), x)


# ----------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize("shape,kw", [
    ((2, 5), dict(axis=-1)),
    ((2, 3, 4), dict(axis=(1, 2), eps=1e-3, param_axis=(1, 2))),
    ((2, 3, 4), dict(axis=slice(1, None), create_scale=False)),
    ((2, 3, 4), dict(axis=-1, param_axis=1, name="rms")),
])
def test_rms_norm_matches_haiku(shape, kw):
  x = normal(0, shape) * 2 + 0.5
  check_stateless(lambda nn, x: nn.RMSNorm(**kw)(x), x)


# ----------------------------------------------------------------------------- GroupNorm
@pytest.mark.parametrize("shape,kw", [
    ((2, 3, 3, 8), dict(groups=2)),
    ((2, 3, 8), dict(groups=4, create_scale=False, eps=1e-3)),
    ((2, 8, 3, 3), dict(groups=2, data_format="channels_first")),
    ((2, 6, 5), dict(groups=3, data_format="NCW", create_offset=False)),
    ((2, 5, 6), dict(groups=3, axis=(2,))),
    ((2, 4, 6), dict(groups=2, axis=slice(2, None), data_format="channels_first")),
])
def test_group_norm_matches_haiku(shape, kw):
  x = normal(0, shape) * 2 + 1
  check_stateless(lambda nn, x: nn.GroupNorm(**kw)(x), x)


def test_group_norm_external_scale_and_bad_groups():
  x = normal(0, (2, 3, 4))
  s = normal(1, (4,))
  check_stateless(lambda nn, x: nn.GroupNorm(2, create_scale=False)(x, scale=s), x)
  with pytest.raises(ValueError, match="divisible"):
    purify.transform(lambda x: pnn.GroupNorm(3)(x)).init(KEY, x)


# ----------------------------------------------------------------------------- EMA
def run_steps(pt, ht, params, pstate, hstate, values, *extra):
  """Step by step: Haiku from ``hstate`` (its init state), purify from ``pstate`` (its
  own init state) and, as a second run, from Haiku's (a loaded Haiku checkpoint).
  Checks both runs' outputs and new states against Haiku's after EVERY step."""
  runs = [pstate, hstate]
  for i, (v, ex) in enumerate(zip(values, extra)):
    want, hstate = ht.apply(params, hstate, None, v, *ex)
    for r, start in enumerate(("own init", "Haiku's init")):
      out, runs[r] = pt.apply(params, runs[r], None, v, *ex)
      what = f"step {i + 1} {ex}, purify from {start}"
      np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5, err_msg=what)
      assert sig(runs[r]) == sig(hstate), what
      for m, sub in hstate.items():
        for n, w in sub.items():
          np.testing.assert_allclose(runs[r][m][n], w, rtol=1e-4, atol=1e-5,
                                     err_msg=f"{what}: {m}/{n}")
  return runs[0]


@pytest.mark.parametrize("kw", [dict(decay=0.9), dict(decay=0.5, zero_debias=False),
                                dict(decay=0.8, zero_debias=False, warmup_length=2)])
def test_ema_matches_haiku(kw):
  def build(nn, x, update):
    return nn.ExponentialMovingAverage(**kw)(x, update_stats=update)
  pt, ht = both(build)
  values = [normal(i, (3,)) for i in range(5)]
  updates = [(True,), (True,), (False,), (True,), (True,)]
  pp, ps = pt.init(KEY, values[0], True)
  hp, hs = ht.init(KEY, values[0], True)
  assert_init_state(ps, hs)
  assert sig(ps) == {"exponential_moving_average": {
      "counter": ((), np.dtype(np.int32)), "hidden": ((3,), np.dtype(np.float32)),
      "average": ((3,), np.dtype(np.float32))}}
  state = run_steps(pt, ht, hp, ps, hs, values, *updates)
  assert int(state["exponential_moving_average"]["counter"]) == 4 - kw.get("warmup_length", 0)


def test_ema_initialize_and_average_property():
  def build(nn, x):
    ema = nn.ExponentialMovingAverage(0.9, name="avg")
    ema.initialize(x.shape, x.dtype)
    return ema.average
  pt, ht = both(build)
  x = normal(0, (2, 3))
  _, ps = pt.init(KEY, x)
  _, hs = ht.init(KEY, x)
  assert_trees_close(ps, hs)
  assert set(ps["avg"]) == {"hidden", "average"}

  def build2(nn, x):
    ema = nn.ExponentialMovingAverage(0.9)
    ema(x)
    return ema.average * 2
  pt, ht = both(build2)
  values = [normal(i, (2,)) for i in range(3)]
  run_steps(pt, ht, {}, pt.init(KEY, values[0])[1], ht.init(KEY, values[0])[1], values,
            (), (), ())

  with pytest.warns(DeprecationWarning):
    purify.transform_with_state(
        lambda x: pnn.ExponentialMovingAverage(0.9).initialize(x)).init(None, x)
  for kw, msg in [(dict(warmup_length=-1), "non-negative"), (dict(warmup_length=2),
                                                             "zero_debias=False")]:
    with pytest.raises(ValueError, match=msg):
      purify.transform_with_state(
          lambda x: pnn.ExponentialMovingAverage(0.9, **kw)(x)).init(None, x)


@pytest.mark.parametrize("kw", [dict(), dict(zero_debias=False, warmup_length=1)])
def test_ema_params_tree_matches_haiku(kw):
  tree = {"mlp/~/linear_0": {"w": normal(0, (2, 3)), "b": normal(1, (3,))},
          "~": {"s": normal(2, ())}}
  trees = [jax.tree_util.tree_map(lambda v, i=i: v * (i + 1), tree) for i in range(4)]
  def build(nn, t, update):
    return nn.EMAParamsTree(0.8, ignore_regex=".*/b$", **kw)(t, update_stats=update)
  pt, ht = both(build)
  _, ps = pt.init(KEY, trees[0], True)
  _, hs = ht.init(KEY, trees[0], True)
  assert_init_state(ps, hs)
  assert sorted(ps) == ["ema_params_tree/_tilde___s",
                        "ema_params_tree/mlp___tilde___linear_0__w"]
  assert int(ps["ema_params_tree/_tilde___s"]["counter"]) == -kw.get("warmup_length", 0)
  # each from its own init state; equal after every step (the first one updates)
  pstate, hstate = ps, hs
  for i, (t, update) in enumerate(zip(trees, (True, False, True, True))):
    out, pstate = pt.apply({}, pstate, None, t, update)
    want, hstate = ht.apply({}, hstate, None, t, update)
    assert_trees_close(out, want)
    assert_trees_close(pstate, hstate)
    np.testing.assert_array_equal(out["mlp/~/linear_0"]["b"], t["mlp/~/linear_0"]["b"])
  assert int(pstate["ema_params_tree/_tilde___s"]["counter"]) == 3 - kw.get("warmup_length", 0)


# ----------------------------------------------------------------------------- BatchNorm
BN_CASES = [
    ((4, 3), dict(create_scale=True, create_offset=True, decay_rate=0.9)),
    ((4, 2, 3), dict(create_scale=False, create_offset=True, decay_rate=0.5, eps=1e-3)),
    ((4, 3, 2, 2), dict(create_scale=True, create_offset=False, decay_rate=0.9,
                        data_format="channels_first")),
    ((4, 2, 3), dict(create_scale=True, create_offset=True, decay_rate=0.7, axis=[0],
                     name="bn")),
]


@pytest.mark.parametrize("shape,kw", BN_CASES)
def test_batch_norm_matches_haiku(shape, kw):
  def build(nn, x, is_training, test_local_stats=False):
    return nn.BatchNorm(**kw)(x, is_training, test_local_stats)
  pt, ht = both(build)
  xs = [normal(i, shape) * (i + 1) + i for i in range(6)]
  pp, ps = pt.init(KEY, xs[0], True)
  hp, hs = ht.init(KEY, xs[0], True)
  assert_trees_close(pp, hp)
  assert_init_state(ps, hs)
  name = kw.get("name", "batch_norm")
  assert set(ps) == {f"{name}/~/mean_ema", f"{name}/~/var_ema"}
  assert set(ps[f"{name}/~/mean_ema"]) == {"counter", "hidden", "average"}
  steps = [(True,), (True,), (False,), (False, True), (True,), (False,)]
  state = run_steps(pt, ht, perturb(hp), ps, hs, xs, *steps)
  assert int(state[f"{name}/~/var_ema"]["counter"]) == 3


def test_batch_norm_external_scale_offset_and_bfloat16():
  x = normal(0, (4, 3), jnp.bfloat16)
  s, o = normal(1, (3,), jnp.bfloat16), normal(2, (3,), jnp.bfloat16)
  def build(nn, x, is_training):
    return nn.BatchNorm(False, False, 0.9)(x, is_training, scale=s, offset=o)
  pt, ht = both(build)
  _, ps = pt.init(KEY, x, True)
  _, hs = ht.init(KEY, x, True)
  assert sig(ps) == sig(hs)
  for t in (True, False):
    out, _ = pt.apply({}, hs, None, x, t)
    want, _ = ht.apply({}, hs, None, x, t)
    assert out.dtype == want.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32),
                               rtol=2e-2, atol=2e-2)
  with pytest.raises(ValueError, match="cross_replica_axis"):
    purify.transform_with_state(lambda x: pnn.BatchNorm(
        True, True, 0.9, cross_replica_axis_index_groups=[[0, 1]])(x, True)).init(KEY, x)


def whole_batch_reference(xs, decay, eps=1e-5):
  """Pure JAX: BatchNorm (scale 1, offset 0) with statistics over axes (0, 1) of each
  x: (batch, h, c); EMA with Haiku's zero-debiasing. Returns outputs and averages."""
  hid_m = hid_v = jnp.zeros(xs[0].shape[-1])
  outs = []
  for t, x in enumerate(xs, start=1):
    m = x.mean((0, 1))
    v = (x * x).mean((0, 1)) - m * m
    outs.append((x - m) * jax.lax.rsqrt(v + eps))
    hid_m = hid_m * decay + m * (1 - decay)
    hid_v = hid_v * decay + v * (1 - decay)
  return outs, hid_m / (1 - decay ** len(xs)), hid_v / (1 - decay ** len(xs))


def test_batch_norm_cross_replica_over_a_named_vmap_axis():
  def model(x, is_training):                     # x: (batch, h, c); BN sees (h, c)
    bn = pnn.BatchNorm(True, True, 0.9, cross_replica_axis="b")
    return jax.vmap(lambda xi: bn(xi, is_training), axis_name="b")(x)
  pt = purify.transform_with_state(model)
  ht = hk.transform_with_state(
      lambda x, t: hk.BatchNorm(True, True, 0.9, cross_replica_axis="b")(x, t))
  xs = [normal(i, (4, 2, 3)) * (i + 1) + i for i in range(3)]
  params, state = pt.init(KEY, xs[0], True)
  hp, hs = jax.vmap(ht.init, in_axes=(None, 0, None), out_axes=None, axis_name="b")(
      KEY, xs[0], True)
  assert_trees_close(params, hp)
  assert_init_state(state, hs)
  h_apply = jax.vmap(ht.apply, in_axes=(None, None, None, 0, None), out_axes=(0, None),
                     axis_name="b")
  outs = []
  for x in xs:
    out, state = pt.apply(params, state, None, x, True)
    want, hs = h_apply(hp, hs, None, x, True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert_trees_close(state, hs)
    outs.append(out)
  ref_outs, ref_mean, ref_var = whole_batch_reference(xs, 0.9)
  for out, ref in zip(outs, ref_outs):
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(state["batch_norm/~/mean_ema"]["average"][0], ref_mean, rtol=1e-5)
  np.testing.assert_allclose(state["batch_norm/~/var_ema"]["average"][0], ref_var, rtol=1e-5)
  out, new_state = pt.apply(params, state, None, xs[0], False)   # eval: averages, no update
  m, v = ref_mean, ref_var
  np.testing.assert_allclose(out, (xs[0] - m) * jax.lax.rsqrt(v + 1e-5), rtol=1e-4, atol=1e-4)
  assert_trees_close(new_state, state, rtol=0, atol=0)


def test_batch_norm_under_unnamed_vmap_is_per_example_state():
  def model(x):
    bn = pnn.BatchNorm(True, True, 0.9)
    return jax.vmap(lambda xi: bn(xi, True))(x)
  with pytest.raises(purify.errors.PerExampleStateError) as e:
    purify.transform_with_state(model).init(KEY, jnp.ones((4, 3)))
  assert "batch_norm/~/mean_ema/hidden" in str(e.value)
  # evaluation writes nothing, so it is fine per example
  def evaluate(x):
    bn = pnn.BatchNorm(True, True, 0.9)
    return jax.vmap(lambda xi: bn(xi, False))(x)
  params, state = purify.transform_with_state(evaluate).init(KEY, jnp.ones((4, 3)))
  assert sig(state)["batch_norm/~/var_ema"]["average"] == ((3,), np.dtype(np.float32))


def test_batch_norm_in_scan_carries_state_like_a_python_loop():
  def one_step(x, is_training):
    return pnn.BatchNorm(True, True, 0.8)(x, is_training)

  def scanned(xs, is_training):
    return jax.lax.scan(lambda c, x: (c, one_step(x, is_training)), 0, xs)[1]

  xs = jnp.stack([normal(i, (3, 2)) * (i + 1) + i for i in range(4)])
  step = purify.transform_with_state(one_step)
  params, state0 = step.init(KEY, xs[0], True)
  params = perturb(params)
  scan = purify.transform_with_state(scanned)
  sp, ss = scan.init(KEY, xs, True)
  assert sig(sp) == sig(params) and sig(ss) == sig(state0)
  outs, state = [], state0
  for x in xs:
    out, state = step.apply(params, state, None, x, True)
    outs.append(out)
  got, got_state = scan.apply(params, state0, None, xs, True)
  np.testing.assert_allclose(got, jnp.stack(outs), rtol=1e-5, atol=1e-5)
  assert_trees_close(got_state, state)
  assert int(got_state["batch_norm/~/mean_ema"]["counter"]) == 4
  # evaluation inside the scan reads the averages and leaves them
  got, eval_state = scan.apply(params, state, None, xs, False)
  want = jnp.stack([step.apply(params, state, None, x, False)[0] for x in xs])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert_trees_close(eval_state, state, rtol=0, atol=0)


def test_batch_norm_gradients_match_haiku_and_jit_with_static_is_training():
  c = normal(5, (6, 4))
  def build(nn, x, is_training):
    return (nn.BatchNorm(True, True, 0.9)(nn.Linear(4)(x), is_training) * c).sum()
  pt, ht = both(build)
  x = normal(0, (6, 3))
  hp, hs = ht.init(KEY, x, True)
  hp = perturb(hp)
  for t in (True, False):
    (out, state), grads = jax.jit(jax.value_and_grad(
        lambda p: pt.apply(p, hs, None, x, t), has_aux=True))(hp)
    (want, hstate), hgrads = jax.jit(jax.value_and_grad(
        lambda p: ht.apply(p, hs, None, x, t), has_aux=True))(hp)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    assert_trees_close(grads, hgrads, rtol=1e-4, atol=1e-5)
    assert_trees_close(state, hstate, rtol=1e-4, atol=1e-5)
  apply = jax.jit(pt.apply, static_argnames="is_training")
  out, state = apply(hp, hs, None, x, is_training=True)
  assert_trees_close(state, ht.apply(hp, hs, None, x, True)[1], rtol=1e-4, atol=1e-5)
