"""purify.nn SeparableDepthwiseConv2D, Conv1D/2D/3DLSTM, SpectralNorm, SNParamsTree,
MobileNetV1, VectorQuantizer and VectorQuantizerEMA against dm-haiku run in the same
test: each model is written once, ``program(lib)``, against ``hk`` / ``hk.nets`` or
``purify.nn``; the parameter AND state trees (paths, names, shapes, dtypes) must be
equal, and both applies, given the same random params and state of those trees, must
give equal outputs and new state. Errors: raised where Haiku raises (same type), with
messages naming the culprit. Plus each layer under jax.vmap / jax.jit / unrolls
inside the model, and what the math promises (sigma is the largest singular value,
the straight-through gradient, the EMA codebook is the mean of its inputs)."""
import inspect

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
import _haiku_parity
from _haiku_parity import ROOT, TOL, signature

pytestmark = pytest.mark.usefixtures("fast_compiles")

F32 = jnp.dtype(jnp.float32)
I32 = jnp.dtype(jnp.int32)


def x_of(shape, seed=1, dtype=jnp.float32):
  # numpy, not jax.random: no compilation per shape
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape), dtype)


def nets(lib):
  """Where the networks live: ``hk.nets`` or ``purify.nn``."""
  return hk.nets if lib is hk else lib


def random_state(shapes, seed=2):
  """Random values for a state tree: counters 3, floats in [0.5, 1.5) (averages of
  counts and variances must be positive)."""
  rs = np.random.RandomState(seed)
  def draw(s):
    if jnp.issubdtype(s.dtype, jnp.integer):
      return jnp.full(s.shape, 3, s.dtype)
    return jnp.asarray(rs.uniform(0.5, 1.5, size=s.shape), s.dtype)
  return jax.tree_util.tree_map(draw, shapes)


def assert_close(got, want, tol=TOL):
  """Same tree (paths; namedtuple classes may differ), shapes, dtypes; close values."""
  paths = lambda t: [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]]
  assert paths(got) == paths(want)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), **tol)


def parity(program, *args):
  """Stateless: equal param trees; (haiku, purify) outputs from the same random params."""
  return _haiku_parity.parity(program(hk), program(purify.nn), *args, scale=0.5)


def parity_with_state(program, *args, tree_program=None):
  """``transform_with_state`` of ``program(hk)`` and ``program(purify.nn)``: equal param
  and state trees (abstract inits; of ``tree_program`` when given: e.g. the training
  call, whose state an evaluation call takes); both applied to the same random params
  and state (:func:`random_state`). Returns ((haiku out, haiku state), (purify out,
  purify state), the state)."""
  tree_program = tree_program or program
  p_shapes, s_shapes = jax.eval_shape(hk.transform_with_state(tree_program(hk)).init, ROOT,
                                      *args)
  pp, ps = jax.eval_shape(purify.transform_with_state(tree_program(purify.nn)).init, ROOT, *args)
  assert signature(pp) == signature(p_shapes)
  assert signature(ps) == signature(s_shapes)
  params = _haiku_parity.random_like(p_shapes, scale=0.5)
  state = random_state(s_shapes)
  want = jax.jit(hk.transform_with_state(program(hk)).apply)(params, state, None, *args)
  got = purify.transform_with_state(program(purify.nn)).apply(params, state, None, *args)
  return want, got, state


def both_raise(exc, program, *args, match, stateful=False):
  """``program(lib)`` raises ``exc`` in both libraries; purify's message matches."""
  for lib in (hk, purify.nn):
    t = (hk.transform_with_state if lib is hk else purify.transform_with_state) if stateful \
        else (hk.transform if lib is hk else purify.transform)
    with pytest.raises(exc, match=match if lib is purify.nn else None):
      t(program(lib)).init(ROOT, *args)


# ==================================================================== SeparableDepthwiseConv2D
SEPARABLE = [
    # (kwargs, input shape, output shape)
    (dict(channel_multiplier=2, kernel_shape=3), (2, 5, 5, 3), (2, 5, 5, 6)),
    (dict(channel_multiplier=1, kernel_shape=(3, 2), stride=2, padding="VALID",
          with_bias=False), (2, 7, 6, 2), (2, 3, 2, 2)),
    (dict(channel_multiplier=3, kernel_shape=[2, 3], stride=(1, 2), data_format="NCHW"),
     (1, 2, 5, 6), (1, 6, 5, 3)),
    (dict(channel_multiplier=2, kernel_shape=3, padding=[(1, 0), (2, 1)], name="sep"),
     (2, 4, 4, 2), (2, 4, 8, 4)),                   # each conv pads both axes
]


@pytest.mark.parametrize("kwargs, shape, out_shape", SEPARABLE)
def test_separable_depthwise_conv_matches_haiku(kwargs, shape, out_shape):
  x = x_of(shape)
  want, got = parity(lambda lib: lambda x: lib.SeparableDepthwiseConv2D(**kwargs)(x), x)
  assert got.shape == out_shape
  assert_close(got, want)


def test_separable_depthwise_conv_param_tree():
  """Two depthwise convs, (kh, 1) with the multiplier and no bias, then (1, kw)."""
  x = x_of((2, 6, 6, 3))
  program = lambda lib: lambda x: lib.SeparableDepthwiseConv2D(2, (3, 5))(x)
  got = signature(jax.eval_shape(purify.transform(program(purify.nn)).init, ROOT, x))
  assert got == signature(jax.eval_shape(hk.transform(program(hk)).init, ROOT, x)) == {
      "separable_depthwise_conv2_d/~/depthwise_conv2_d": {"w": ((3, 1, 1, 6), F32)},
      "separable_depthwise_conv2_d/~/depthwise_conv2_d_1": {"w": ((1, 5, 1, 6), F32),
                                                            "b": ((6,), F32)}}


def test_separable_depthwise_conv_inside_vmap_equals_the_batched_call():
  xs = x_of((3, 5, 5, 2))

  def model(vmapped):
    def f(xs):
      conv = purify.nn.SeparableDepthwiseConv2D(2, 3, stride=2)
      return jax.vmap(conv)(xs) if vmapped else conv(xs)   # unbatched examples under vmap
    return purify.transform(f)
  shapes = jax.eval_shape(model(True).init, ROOT, xs)
  assert signature(shapes) == signature(jax.eval_shape(model(False).init, ROOT, xs))
  params = _haiku_parity.random_like(shapes)
  got = model(True).apply(params, None, xs)
  assert got.shape == (3, 3, 3, 4)
  assert_close(got, model(False).apply(params, None, xs))


def test_separable_depthwise_conv_bad_kernel_shape_is_haikus_type_error():
  both_raise(TypeError, lambda lib: lambda x: lib.SeparableDepthwiseConv2D(1, (3, 3, 3))(x),
             jnp.ones((1, 4, 4, 2)), match="kernel_shape")


# ============================================================================ Conv*DLSTM
CONV_LSTMS = [
    # (class, input shape without batch, output_channels, kernel_shape)
    ("Conv1DLSTM", (6, 2), 3, 3),
    ("Conv2DLSTM", (4, 5, 3), 2, (3, 2)),
    ("Conv3DLSTM", (3, 3, 2, 2), 2, 2),
]


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("cls, shape, channels, kernel", CONV_LSTMS)
def test_conv_lstm_step_matches_haiku(cls, shape, channels, kernel, batch):
  x = x_of(shape if batch is None else (batch,) + shape)

  def program(lib):
    def f(x):
      core = getattr(lib, cls)(input_shape=shape[:-1], output_channels=channels,
                               kernel_shape=kernel)
      out, state = core(x, core.initial_state(batch))
      return core(2 * x, state), state               # two steps: the state feeds back
    return f
  want, got = parity(program, x)
  assert_close(got, want)
  (out, state), _ = got
  assert out.shape == x.shape[:-1] + (channels,)
  assert isinstance(state, purify.nn.LSTMState) and state.cell.shape == out.shape


def test_conv_lstm_param_and_module_names_are_haikus():
  x = x_of((2, 4, 4, 3))
  names = {}

  def program(lib):
    def f(x):
      cores = [lib.Conv2DLSTM((4, 4), 5, 3), lib.Conv1DLSTM((4,), 2, 1, name="c1")]
      names[lib] = [c.module_name for c in cores]
      return [cores[0](x, cores[0].initial_state(2)),
              cores[1](x[:, 0], cores[1].initial_state(2))]
    return f
  got = signature(jax.eval_shape(purify.transform(program(purify.nn)).init, ROOT, x))
  assert got == signature(jax.eval_shape(hk.transform(program(hk)).init, ROOT, x)) == {
      "conv2_dlstm/input_to_hidden": {"w": ((3, 3, 3, 20), F32), "b": ((20,), F32)},
      "conv2_dlstm/hidden_to_hidden": {"w": ((3, 3, 5, 20), F32), "b": ((20,), F32)},
      "c1/input_to_hidden": {"w": ((1, 3, 8), F32), "b": ((8,), F32)},
      "c1/hidden_to_hidden": {"w": ((1, 2, 8), F32), "b": ((8,), F32)}}
  assert names[hk] == names[purify.nn] == ["conv2_dlstm", "c1"]


def test_conv_lstm_initial_state_matches_haiku():
  for batch in (None, 3):
    make = lambda lib: lib.Conv2DLSTM((4, 5), 2, 3).initial_state(batch)
    want = hk.transform(lambda: make(hk)).apply({}, None)
    got = purify.transform(lambda: make(purify.nn)).apply({}, None)
    assert_close(got, want)
    assert got.hidden.shape == ((4, 5, 2) if batch is None else (3, 4, 5, 2))


@pytest.mark.parametrize("unroll", ["dynamic_unroll", "static_unroll"])
def test_conv_lstm_unrolled_matches_haiku(unroll):
  xs = x_of((3, 2, 5, 2))                            # (T, batch, width, channels)

  def program(lib):
    def f(xs):
      core = lib.Conv1DLSTM((5,), 3, 3)
      return getattr(lib, unroll)(core, xs, core.initial_state(2))
    return f
  want, got = parity(program, xs)
  assert_close(got, want)
  assert got[0].shape == (3, 2, 5, 3)


def test_conv_lstm_inside_vmap_and_jit_equals_the_batched_unroll():
  """jax.vmap over examples (each unbatched, unrolled from initial_state(None)), and
  a jax.jit inside the model == one unroll of the whole batch."""
  xs = x_of((2, 3, 4, 4, 1))                         # (batch, T, H, W, C): batch-major

  def model(kind):
    def f(xs):
      core = purify.nn.Conv2DLSTM((4, 4), 2, 3)
      one = lambda x: purify.nn.dynamic_unroll(core, x, core.initial_state(None))
      if kind == "vmap":
        return jax.vmap(one)(xs)
      run = lambda xs: purify.nn.dynamic_unroll(core, xs, core.initial_state(xs.shape[0]),
                                                time_major=False)
      return jax.jit(run)(xs) if kind == "jit" else run(xs)
    return purify.transform(f)
  shapes = jax.eval_shape(model("plain").init, ROOT, xs)
  params = _haiku_parity.random_like(shapes, scale=0.5)
  want = model("plain").apply(params, None, xs)
  for kind in ("vmap", "jit"):
    assert signature(jax.eval_shape(model(kind).init, ROOT, xs)) == signature(shapes)
    assert_close(model(kind).apply(params, None, xs), want)
  assert not np.allclose(want[0][0], want[0][1])    # the examples differ


def test_conv_lstm_state_that_does_not_fit_the_input():
  """Haiku fails adding the gates (a TypeError from jnp); purify says which shapes
  differ and what input_shape means."""
  x = jnp.ones((2, 5, 3))
  program = lambda lib: lambda x: (lambda c: c(x, c.initial_state(2)))(lib.Conv1DLSTM((4,), 2, 3))
  both_raise(TypeError, program, x,
             match=r"input \(2, 5, 3\) and the state \(hidden \(2, 4, 2\).*input_shape=\(4,\)")
  both_raise(ValueError, program, jnp.ones((2, 1, 5, 3)), match="rank")


# ============================================================================ SpectralNorm
SN_CASES = [
    # (shape, kwargs, call kwargs)
    ((4, 3), dict(), dict()),
    ((3, 5), dict(eps=1e-2, n_steps=3, name="sn"), dict()),
    ((2, 3, 4), dict(), dict()),                           # normalized as a (6, 4) matrix
    ((4, 3), dict(), dict(update_stats=False)),
]


@pytest.mark.parametrize("shape, kwargs, call", SN_CASES)
def test_spectral_norm_matches_haiku(shape, kwargs, call):
  w = x_of(shape)
  program = lambda lib: lambda w: lib.SpectralNorm(**kwargs)(w, **call)
  training = lambda lib: lambda w: lib.SpectralNorm(**kwargs)(w)
  (want, want_state), (got, got_state), state = parity_with_state(program, w,
                                                                  tree_program=training)
  assert got.shape == shape
  assert_close(got, want)
  assert_close(got_state, want_state)
  name = kwargs.get("name", "spectral_norm")
  assert signature(got_state) == {name: {"u0": ((1, shape[-1]), F32), "sigma": ((), F32)}}
  if call.get("update_stats") is False:
    assert_close(got_state, state, dict(rtol=0, atol=0))
    # Haiku's init with update_stats=False has u0 only; purify's also declares sigma
    # (so that apply takes a training call's state)
    init_state = jax.eval_shape(purify.transform_with_state(program(purify.nn)).init, ROOT, w)[1]
    assert signature(init_state) == signature(got_state)
  else:
    assert not np.allclose(got_state[name]["u0"], state[name]["u0"])


def test_spectral_norm_sigma_is_the_largest_singular_value():
  """From purify's own init (u0: normals drawn with the init key), repeated power steps converge;
  the output is w / sigma, whose largest singular value is 1."""
  w = x_of((5, 3), seed=3)

  def f(w):
    sn = purify.nn.SpectralNorm(n_steps=20)
    out = sn(w)
    return out, sn.sigma, sn.u0
  t = purify.transform_with_state(f)
  params, state = t.init(ROOT, w)
  assert params == {}
  u0 = state["spectral_norm"]["u0"]
  assert u0.shape == (1, 3) and np.all(np.isfinite(u0)) and np.std(u0) > 0
  (out, sigma, u0), state = t.apply(params, state, None, w)
  top = np.linalg.svd(np.asarray(w), compute_uv=False)[0]
  np.testing.assert_allclose(sigma, top, rtol=1e-4)
  np.testing.assert_allclose(state["spectral_norm"]["sigma"], top, rtol=1e-4)
  np.testing.assert_allclose(np.linalg.svd(np.asarray(out), compute_uv=False)[0], 1.0, rtol=1e-4)
  np.testing.assert_allclose(state["spectral_norm"]["u0"], u0)


def test_spectral_norm_gradient_matches_haiku_and_stops_at_u0():
  """d(output)/d(w) with u0 and v held constant (stop_gradient), as Haiku."""
  w = x_of((4, 3))
  def program(lib):
    return lambda w: jnp.sum(jnp.sin(lib.SpectralNorm(n_steps=2)(w)))
  th = hk.transform_with_state(program(hk))
  tp = purify.transform_with_state(program(purify.nn))
  state = random_state(jax.eval_shape(th.init, ROOT, w)[1])
  grad = lambda t, w: jax.grad(lambda w: t.apply({}, state, None, w)[0])(w)
  assert_close(grad(tp, w), jax.jit(lambda w: grad(th, w))(w))


def test_spectral_norm_under_jit_inside_the_model_and_state_properties():
  w = x_of((3, 4))

  def model(jit):
    def f(w):
      sn = purify.nn.SpectralNorm()
      out = jax.jit(sn)(w) if jit else sn(w)
      return out, sn.sigma
    return purify.transform_with_state(f)
  _, state = jax.eval_shape(model(False).init, ROOT, w)
  state = random_state(state)
  assert_close(model(True).apply({}, state, None, w), model(False).apply({}, state, None, w))
  # sigma before any call is 1 (Haiku's property); u0 before any call is an error
  f = purify.transform_with_state(lambda: purify.nn.SpectralNorm().sigma)
  assert float(f.apply({}, f.init(None)[1], None)[0]) == 1.0
  both_raise(ValueError, lambda lib: lambda: lib.SpectralNorm().u0, stateful=True,
             match="no value for 'u0' yet; call the module on a matrix first")


def test_spectral_norm_without_update_inside_vmap_equals_the_loop():
  """update_stats=False writes nothing, so it may run per example under jax.vmap: every
  matrix of the stack normalized from the same u0 (a write there would be refused)."""
  ws = x_of((3, 4, 2))

  def model(vmapped):
    def f(ws):
      sn = purify.nn.SpectralNorm(n_steps=2)
      one = lambda w: sn(w, update_stats=False)
      return jax.vmap(one)(ws) if vmapped else jnp.stack([one(w) for w in ws])
    return purify.transform_with_state(f)
  state = random_state(jax.eval_shape(model(False).init, ROOT, ws)[1])
  (got, new), (want, _) = (model(v).apply({}, state, None, ws) for v in (True, False))
  assert_close(got, want)
  assert_close(new, state, dict(rtol=0, atol=0))
  with pytest.raises(purify.PurifyError, match="per-example|PerExample"):
    purify.transform_with_state(lambda ws: jax.vmap(purify.nn.SpectralNorm())(ws)).init(ROOT, ws)


def test_spectral_norm_errors():
  both_raise(ValueError, lambda lib: lambda w: lib.SpectralNorm()(w), jnp.ones(3),
             match=r"scalar or vector inputs \(got shape \(3,\)\).*ignore_regex", stateful=True)
  both_raise(ValueError, lambda lib: lambda w: lib.SpectralNorm()(w, error_on_non_matrix=True),
             jnp.ones((2, 3, 4)), match="3D.*error_on_non_matrix", stateful=True)
  with pytest.raises(ValueError, match="n_steps=0.*n_steps >= 1"):
    purify.transform_with_state(lambda w: purify.nn.SpectralNorm(n_steps=0)(w)).init(
        None, jnp.ones((2, 2)))


TREE = {"mlp/~/linear_0": {"w": x_of((3, 4), 4), "b": x_of((4,), 5)},
        "conv": {"w": x_of((2, 2, 3, 2), 6)}}


@pytest.mark.parametrize("kwargs", [dict(ignore_regex=".*/b$"),
                                    dict(ignore_regex=".*/b$", n_steps=2, eps=1e-3)])
def test_sn_params_tree_matches_haiku(kwargs):
  program = lambda lib: lambda t: lib.SNParamsTree(**kwargs)(t)
  (want, want_state), (got, got_state), _ = parity_with_state(program, TREE)
  assert_close(got, want)
  assert_close(got_state, want_state)
  assert sorted(got_state) == ["sn_params_tree/conv__w", "sn_params_tree/mlp___tilde__linear_0__w"]
  np.testing.assert_array_equal(got["mlp/~/linear_0"]["b"], TREE["mlp/~/linear_0"]["b"])


def test_sn_params_tree_without_update_and_on_a_bias():
  both_raise(ValueError, lambda lib: lambda t: lib.SNParamsTree()(t), TREE,
             match="'sn_params_tree/mlp___tilde__linear_0__b'.*ignore_regex", stateful=True)
  model = lambda update: purify.transform_with_state(
      lambda t: purify.nn.SNParamsTree(ignore_regex=".*/b$")(t, update_stats=update))
  state = random_state(jax.eval_shape(model(True).init, ROOT, TREE)[1])
  assert signature(jax.eval_shape(model(False).init, ROOT, TREE)[1]) == signature(state)
  _, same = model(False).apply({}, state, None, TREE)
  assert_close(same, state, dict(rtol=0, atol=0))
  _, new = model(True).apply({}, state, None, TREE)
  assert not np.allclose(new["sn_params_tree/conv__w"]["u0"], state["sn_params_tree/conv__w"]["u0"])


# ============================================================================ MobileNetV1
MOBILENET = dict(strides=(1, 2), channels=(4, 6), num_classes=3)


@pytest.mark.parametrize("use_bn, is_training", [(True, True), (True, False), (False, True)])
def test_mobilenet_matches_haiku(use_bn, is_training):
  """(Haiku cannot init in evaluation: its BatchNorm reads averages that do not exist
  yet; the evaluation case takes the training call's tree.)"""
  x = x_of((2, 9, 9, 3))
  program = lambda train: lambda lib: lambda x: nets(lib).MobileNetV1(
      use_bn=use_bn, **MOBILENET)(x, train)
  (want, want_state), (got, got_state), state = parity_with_state(
      program(is_training), x, tree_program=program(True))
  assert got.shape == (2, 3)
  assert_close(got, want)
  assert_close(got_state, want_state)
  if is_training and use_bn:
    assert not np.allclose(got_state["mobile_net_v1/batch_norm/~/mean_ema"]["hidden"],
                           state["mobile_net_v1/batch_norm/~/mean_ema"]["hidden"])
  else:
    assert_close(got_state, state, dict(rtol=0, atol=0))
  if not use_bn:
    assert got_state == {} and "b" in jax.eval_shape(
        purify.transform_with_state(program(True)(purify.nn)).init, ROOT, x)[0][
            "mobile_net_v1/mobile_net_v1_block/depthwise_conv"]


def test_mobilenet_tree_is_haikus():
  x = x_of((1, 9, 9, 3))
  t = purify.transform_with_state(lambda x: purify.nn.MobileNetV1(**MOBILENET)(x, True))
  params, state = jax.eval_shape(t.init, ROOT, x)
  block = "mobile_net_v1/mobile_net_v1_block"
  bn = lambda c: {"scale": ((1, 1, 1, c), F32), "offset": ((1, 1, 1, c), F32)}
  assert signature(params) == {
      "mobile_net_v1/conv2_d": {"w": ((3, 3, 3, 32), F32)},
      "mobile_net_v1/batch_norm": bn(32),
      f"{block}/depthwise_conv": {"w": ((3, 3, 1, 32), F32)},
      f"{block}/batch_norm": bn(32),
      f"{block}/pointwise_conv": {"w": ((1, 1, 32, 4), F32)},
      f"{block}/batch_norm_1": bn(4),
      f"{block}_1/depthwise_conv": {"w": ((3, 3, 1, 4), F32)},
      f"{block}_1/batch_norm": bn(4),
      f"{block}_1/pointwise_conv": {"w": ((1, 1, 4, 6), F32)},
      f"{block}_1/batch_norm_1": bn(6),
      "mobile_net_v1/logits": {"w": ((6, 3), F32), "b": ((3,), F32)}}
  assert sorted(state) == sorted(f"{m}/~/{e}" for m in params if "batch_norm" in m
                                 for e in ("mean_ema", "var_ema"))


def test_mobilenet_in_eval_inside_vmap_and_jit_equals_the_batched_call():
  """Evaluation (the moving averages) is per example: jax.vmap over examples of one
  image, and jax.jit inside the model, equal the batched call."""
  xs = x_of((3, 9, 9, 3))

  def model(kind):
    def f(xs):
      net = purify.nn.MobileNetV1(**MOBILENET)
      if kind == "vmap":
        return jax.vmap(lambda x: net(x[None], False)[0])(xs)
      return jax.jit(lambda xs: net(xs, False))(xs) if kind == "jit" else net(xs, False)
    return purify.transform_with_state(f)
  p_shapes, s_shapes = jax.eval_shape(model("plain").init, ROOT, xs)
  params, state = _haiku_parity.random_like(p_shapes, scale=0.5), random_state(s_shapes)
  want, _ = model("plain").apply(params, state, None, xs)
  for kind in ("vmap", "jit"):
    got, new_state = model(kind).apply(params, state, None, xs)
    assert_close(got, want)
    assert_close(new_state, state, dict(rtol=0, atol=0))


def test_mobilenet_errors():
  both_raise(ValueError, lambda lib: lambda x: nets(lib).MobileNetV1(strides=(1, 2),
                                                                     channels=(4,))(x, True),
             jnp.ones((1, 9, 9, 3)), match="2 strides and 1 channels", stateful=True)
  with pytest.raises(ValueError, match=r"rank 4\), got shape \(9, 9, 3\)"):
    purify.transform_with_state(lambda x: purify.nn.MobileNetV1(**MOBILENET)(x, True)).init(
        ROOT, jnp.ones((9, 9, 3)))


# ============================================================================ VectorQuantizer
VQ_KEYS = ["distances", "encoding_indices", "encodings", "loss", "perplexity", "quantize"]


@pytest.mark.parametrize("shape, kwargs", [
    ((2, 3, 4), dict(embedding_dim=4, num_embeddings=5, commitment_cost=0.25)),
    ((5, 2), dict(embedding_dim=2, num_embeddings=3, commitment_cost=1.0, name="vq")),
])
def test_vector_quantizer_matches_haiku(shape, kwargs):
  x = x_of(shape)
  want, got = parity(lambda lib: lambda x: nets(lib).VectorQuantizer(**kwargs)(x, True), x)
  assert sorted(got) == VQ_KEYS
  assert_close(got, want)
  assert got["encoding_indices"].shape == shape[:-1] and got["encoding_indices"].dtype == I32
  assert got["distances"].shape == (np.prod(shape[:-1]), kwargs["num_embeddings"])


def test_vector_quantizer_gradients_match_haiku_and_pass_straight_through():
  x = x_of((6, 3))
  c = x_of((6, 3), seed=7)

  def program(lib):
    def f(x):
      out = nets(lib).VectorQuantizer(3, 4, 0.5)(x, True)
      return jnp.sum(out["quantize"] * c) + out["loss"]
    return f
  th, tp = hk.transform(program(hk)), purify.transform(program(purify.nn))
  params = _haiku_parity.random_like(jax.eval_shape(th.init, ROOT, x), scale=0.5)
  assert signature(params) == {"vector_quantizer": {"embeddings": ((3, 4), F32)}}
  want = jax.jit(jax.grad(th.apply, argnums=(0, 2)))(params, None, x)
  got = jax.grad(tp.apply, argnums=(0, 2))(params, None, x)
  assert_close(got, want)
  # straight through: d quantize / d x = identity (the loss adds its commitment term)
  only_q = purify.transform(lambda x: jnp.sum(purify.nn.VectorQuantizer(3, 4, 0.5)(
      x, True)["quantize"] * c))
  np.testing.assert_allclose(jax.grad(only_q.apply, argnums=2)(params, None, x), c)


def test_vector_quantizer_default_init_and_quantize():
  x = x_of((4, 8))
  def f(x):
    vq = purify.nn.VectorQuantizer(8, 16, 0.25)
    out = vq(x, False)
    return out, vq.quantize(out["encoding_indices"]), vq.embeddings
  t = purify.transform(f)
  params = t.init(ROOT, x)
  e = np.asarray(params["vector_quantizer"]["embeddings"])
  assert e.shape == (8, 16) and np.abs(e).max() <= np.sqrt(3 / 8) and e.std() > 0.1
  out, q, emb = t.apply(params, None, x)
  np.testing.assert_array_equal(q, emb.T[out["encoding_indices"]])
  np.testing.assert_allclose(out["quantize"], q, rtol=1e-6, atol=1e-6)
  nearest = np.argmin(((np.asarray(x)[:, :, None] - e[None]) ** 2).sum(1), axis=1)
  np.testing.assert_array_equal(out["encoding_indices"], nearest)


def test_vector_quantizer_cross_replica_perplexity_under_vmap():
  """jax.vmap with the axis named: per-example outputs, the whole batch's perplexity."""
  xs = x_of((3, 4, 2))

  def model(vmapped):
    def f(xs):
      if vmapped:
        vq = purify.nn.VectorQuantizer(2, 5, 0.25, cross_replica_axis="i")
        return jax.vmap(lambda x: vq(x, True), axis_name="i")(xs)
      return purify.nn.VectorQuantizer(2, 5, 0.25)(xs.reshape(-1, 2), True)
    return purify.transform(f)
  params = _haiku_parity.random_like(jax.eval_shape(model(False).init, ROOT, xs), scale=0.5)
  got, want = model(True).apply(params, None, xs), model(False).apply(params, None, xs)
  np.testing.assert_allclose(got["perplexity"], np.full(3, want["perplexity"]), rtol=1e-5)
  assert_close(got["quantize"], want["quantize"].reshape(xs.shape))
  assert_close(got["encodings"].reshape(-1, 5), want["encodings"])


def test_vector_quantizer_input_of_the_wrong_size():
  for vq in ("VectorQuantizer", "VectorQuantizerEMA"):
    args = (2, 5, 0.25) + ((0.9,) if vq == "VectorQuantizerEMA" else ())
    for shape in ((3, 4), (3, 3)):     # Haiku: a reshape TypeError, later or at once
      both_raise(TypeError, lambda lib: lambda x: getattr(nets(lib), vq)(*args)(x, True),
                 jnp.ones(shape), stateful=True,
                 match=rf"last axis must be embedding_dim=2.*shape \(3, {shape[1]}\)")


EMA_CASES = [
    ((2, 3, 4), dict(embedding_dim=4, num_embeddings=5, commitment_cost=0.25, decay=0.9)),
    ((6, 2), dict(embedding_dim=2, num_embeddings=3, commitment_cost=1.0, decay=0.5,
                  epsilon=1e-3, name="vq")),
]


@pytest.mark.parametrize("shape, kwargs", EMA_CASES)
def test_vector_quantizer_ema_training_matches_haiku(shape, kwargs):
  x = x_of(shape)
  program = lambda lib: lambda x: nets(lib).VectorQuantizerEMA(**kwargs)(x, True)
  (want, want_state), (got, got_state), state = parity_with_state(program, x)
  assert sorted(got) == VQ_KEYS
  assert_close(got, want)
  assert_close(got_state, want_state)
  name = kwargs.get("name", "vector_quantizer_ema")
  d, k = kwargs["embedding_dim"], kwargs["num_embeddings"]
  ema = lambda *s: {"counter": ((), I32), "hidden": (s, F32), "average": (s, F32)}
  assert signature(got_state) == {name: {"embeddings": ((d, k), F32)},
                                  f"{name}/~/ema_cluster_size": ema(k),
                                  f"{name}/~/ema_dw": ema(d, k)}
  assert not np.allclose(got_state[name]["embeddings"], state[name]["embeddings"])


def test_vector_quantizer_ema_eval_matches_haiku_and_leaves_the_state():
  """Haiku's eval-only init has ``embeddings`` only; purify's also declares the moving
  averages (so that apply takes a training call's state): compare on the training tree."""
  x = x_of((5, 3))
  kwargs = dict(embedding_dim=3, num_embeddings=4, commitment_cost=0.5, decay=0.8)
  program = lambda train: lambda lib: lambda x: nets(lib).VectorQuantizerEMA(**kwargs)(x, train)
  (want, want_state), (got, got_state), state = parity_with_state(
      program(False), x, tree_program=program(True))
  assert_close(got, want)
  assert_close(got_state, want_state)
  assert_close(got_state, state, dict(rtol=0, atol=0))
  init_state = jax.eval_shape(purify.transform_with_state(program(False)(purify.nn)).init,
                              ROOT, x)[1]
  assert signature(init_state) == signature(state)


def test_vector_quantizer_ema_moves_the_codebook_to_the_mean_of_its_inputs():
  """With decay 0 each entry becomes the mean of the inputs coded to it (up to the
  epsilon smoothing), from purify's own init."""
  x = x_of((40, 2), seed=5)

  def f(x):
    out = purify.nn.VectorQuantizerEMA(2, 3, 0.25, decay=0.0, epsilon=1e-9)(x, True)
    return out["encoding_indices"]
  t = purify.transform_with_state(f)
  params, state = t.init(ROOT, x)
  e0 = np.asarray(state["vector_quantizer_ema"]["embeddings"])
  assert params == {} and e0.shape == (2, 3) and np.abs(e0).max() <= np.sqrt(3 / 2)
  codes, state = t.apply(params, state, None, x)
  e1 = np.asarray(state["vector_quantizer_ema"]["embeddings"])
  for k in range(3):
    if np.any(codes == k):
      np.testing.assert_allclose(e1[:, k], np.asarray(x)[codes == k].mean(0), rtol=1e-4,
                                 atol=1e-5)
  assert int(state["vector_quantizer_ema/~/ema_dw"]["counter"]) == 1


def test_vector_quantizer_ema_cross_replica_under_vmap_is_the_whole_batch():
  """jax.vmap with the axis named: one state update from the whole batch's counts
  (== the plain layer on the merged batch); without an axis name it is a per-example
  state write, which purify refuses."""
  xs = x_of((3, 4, 2))

  def model(kind):
    def f(xs):
      axis = "i" if kind == "named" else None
      vq = purify.nn.VectorQuantizerEMA(2, 3, 0.25, decay=0.9, cross_replica_axis=axis)
      if kind == "merged":
        return vq(xs.reshape(-1, 2), True)["quantize"]
      return jax.vmap(lambda x: vq(x, True)["quantize"], axis_name=axis)(xs)
    return purify.transform_with_state(f)
  state = random_state(jax.eval_shape(model("merged").init, ROOT, xs)[1])
  want, want_state = model("merged").apply({}, state, None, xs)
  got, got_state = model("named").apply({}, state, None, xs)
  assert_close(got, want.reshape(xs.shape))
  assert_close(got_state, want_state)
  with pytest.raises(purify.PurifyError, match="per-example|PerExample"):
    model("unnamed").init(ROOT, xs)


def test_vector_quantizer_ema_bad_decay_is_haikus_value_error():
  both_raise(ValueError, lambda lib: lambda x: nets(lib).VectorQuantizerEMA(2, 3, 0.25, 1.5)(
      x, True), jnp.ones((2, 2)), match=r"decay must be in range \[0, 1\], got 1.5",
      stateful=True)


# ============================================================================ all of them
PAIRS = [(hk.SeparableDepthwiseConv2D, purify.nn.SeparableDepthwiseConv2D),
         (hk.Conv1DLSTM, purify.nn.Conv1DLSTM), (hk.Conv2DLSTM, purify.nn.Conv2DLSTM),
         (hk.Conv3DLSTM, purify.nn.Conv3DLSTM), (hk.SpectralNorm, purify.nn.SpectralNorm),
         (hk.SNParamsTree, purify.nn.SNParamsTree), (hk.nets.MobileNetV1, purify.nn.MobileNetV1),
         (hk.nets.VectorQuantizer, purify.nn.VectorQuantizer),
         (hk.nets.VectorQuantizerEMA, purify.nn.VectorQuantizerEMA)]


@pytest.mark.parametrize("hk_cls, pf_cls", PAIRS, ids=lambda c: c.__name__)
def test_constructor_and_call_arguments_are_haikus(hk_cls, pf_cls):
  """The same argument names, order and defaults (constructor and ``__call__``; purify's
  calls may add keyword-only arguments, e.g. ``precision``)."""
  def args(fn, skip_keyword_only=False):
    ps = inspect.signature(fn).parameters.values()
    return [(p.name, p.default) for p in ps
            if not (skip_keyword_only and p.kind is inspect.Parameter.KEYWORD_ONLY)]
  assert args(pf_cls.__init__) == args(hk_cls.__init__)
  assert args(pf_cls.__call__, True) == args(hk_cls.__call__)


def test_default_mobilenet_has_haikus_trees():
  """The default configuration (13 blocks, 1000 classes), abstractly (no compile)."""
  x = jnp.ones((1, 32, 32, 3))
  program = lambda lib: lambda x: nets(lib).MobileNetV1()(x, True)
  pp, ps = jax.eval_shape(purify.transform_with_state(program(purify.nn)).init, ROOT, x)
  hp, hs = jax.eval_shape(hk.transform_with_state(program(hk)).init, ROOT, x)
  assert signature(pp) == signature(hp) and signature(ps) == signature(hs)
  assert len(pp) == 2 + 13 * 4 + 1 and pp["mobile_net_v1/logits"]["w"].shape == (1024, 1000)
