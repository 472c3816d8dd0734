"""purify.nn convolutions and pooling vs dm-haiku run in the same test: the same param tree
(paths, names, shapes, dtypes) and the same outputs from Haiku's params; inside jax.vmap and
lax.scan the layers equal the per-example / per-step loop; the default initializers'
statistics match Haiku's."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify

KEY = jax.random.PRNGKey(0)


def _det(shape, dtype, salt):
  """Deterministic values for a shape (the same in both libraries, and no RNG to compile)."""
  rs = np.random.RandomState((hash(tuple(shape)) + salt) % 2**31)
  return jnp.asarray(rs.standard_normal(tuple(shape)) * 0.5, dtype)


# Parity tests give both libraries the same deterministic initializers, in each library's
# signature: outputs then also exercise the bias (Haiku's default zeros would not), and no
# RNG program is compiled (slow on CPU). Default initializers are tested further down.
INITS = {
    hk: dict(w_init=lambda shape, dtype: _det(shape, dtype, 0),
             b_init=lambda shape, dtype: _det(shape, dtype, 1)),
    purify.nn: dict(w_init=lambda key, shape, dtype: _det(shape, dtype, 0),
                    b_init=lambda key, shape, dtype: _det(shape, dtype, 1)),
}


class P:
  """A padding function by name, resolved in each library's ``pad`` namespace."""

  def __init__(self, *names):
    self.names = names

  def resolve(self, lib):
    fns = tuple(getattr(lib.pad, n) for n in self.names)
    return fns[0] if len(fns) == 1 else fns


def _resolve(lib, kwargs):
  kwargs = {k: v.resolve(lib) if isinstance(v, P) else v for k, v in kwargs.items()}
  return {**INITS[lib], **kwargs}


def _shapes(params):
  return {m: {n: (tuple(a.shape), jnp.dtype(a.dtype)) for n, a in sub.items()}
          for m, sub in params.items()}


def _check_parity(hk_fn, pf_fn, *args, tol=1e-5):
  """Haiku vs purify: same param tree (and values, the initializers being deterministic);
  purify's apply on Haiku's params gives Haiku's output."""
  hk_t, pf_t = hk.transform(hk_fn), purify.transform(pf_fn)
  hk_params = hk_t.init(KEY, *args)
  pf_params = pf_t.init(KEY, *args)
  assert _shapes(pf_params) == _shapes(hk_params)
  for m in hk_params:
    for n in hk_params[m]:
      np.testing.assert_array_equal(pf_params[m][n], hk_params[m][n])
  want = hk_t.apply(hk_params, None, *args)
  got = pf_t.apply({m: dict(s) for m, s in hk_params.items()}, None, *args)
  assert got.shape == want.shape and got.dtype == want.dtype
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
  return pf_params, hk_params


def _x(shape, seed=1):
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape), jnp.float32)


MASK_2D = np.tril(np.ones((3, 3), np.float32))[:, :, None, None] * np.ones((3, 3, 4, 2), np.float32)
MASK_T2D = np.ones((2, 3, 3, 5), np.float32) * np.array([1., 0., 1.])[None, :, None, None]

CONV_CASES = [
    # (class, kwargs, input shape)
    ("Conv1D", dict(output_channels=4, kernel_shape=3), (2, 9, 3)),
    ("Conv1D", dict(output_channels=4, kernel_shape=3, stride=2, padding="VALID"), (2, 9, 3)),
    ("Conv1D", dict(output_channels=6, kernel_shape=[2], rate=2, data_format="NCW",
                    feature_group_count=2), (2, 4, 9)),
    ("Conv1D", dict(output_channels=3, kernel_shape=4, padding=P("causal"), with_bias=False),
     (2, 7, 2)),
    ("Conv1D", dict(output_channels=3, kernel_shape=3, padding=(2, 1)), (7, 2)),      # unbatched
    ("Conv2D", dict(output_channels=5, kernel_shape=3), (2, 6, 6, 3)),
    ("Conv2D", dict(output_channels=5, kernel_shape=(3, 2), stride=(2, 1), rate=(1, 2),
                    padding="valid"), (2, 7, 8, 3)),
    ("Conv2D", dict(output_channels=4, kernel_shape=3, data_format="NCHW", stride=2), (2, 3, 6, 5)),
    ("Conv2D", dict(output_channels=4, kernel_shape=3, feature_group_count=2, with_bias=False,
                    padding=[(1, 0), (0, 2)]), (2, 5, 5, 4)),
    ("Conv2D", dict(output_channels=2, kernel_shape=3, mask=MASK_2D, padding=P("same", "full")),
     (2, 5, 5, 4)),
    ("Conv2D", dict(output_channels=4, kernel_shape=3, data_format="NCHW",
                    padding=P("reverse_causal")), (3, 5, 6)),                         # unbatched
    ("Conv3D", dict(output_channels=3, kernel_shape=2), (1, 4, 4, 4, 2)),
    ("Conv3D", dict(output_channels=4, kernel_shape=(3, 2, 2), stride=2, rate=1,
                    data_format="NCDHW", feature_group_count=2, padding="VALID"),
     (2, 4, 5, 4, 4)),
    ("Conv3D", dict(output_channels=2, kernel_shape=3, rate=2, padding=P("valid")), (5, 5, 5, 1)),
    ("ConvND", dict(num_spatial_dims=2, output_channels=3, kernel_shape=2,
                    data_format="channels_first"), (1, 2, 4, 4)),
]

TRANSPOSE_CASES = [
    ("Conv1DTranspose", dict(output_channels=3, kernel_shape=3, stride=2), (2, 5, 4)),
    ("Conv1DTranspose", dict(output_channels=3, kernel_shape=4, stride=3, padding="VALID",
                             data_format="NCW", with_bias=False), (2, 4, 5)),
    ("Conv1DTranspose", dict(output_channels=2, kernel_shape=3, stride=2, output_shape=9), (5, 3)),
    ("Conv2DTranspose", dict(output_channels=4, kernel_shape=3, stride=2), (2, 4, 4, 3)),
    ("Conv2DTranspose", dict(output_channels=3, kernel_shape=(2, 3), stride=(2, 1),
                             output_shape=(7, 5), data_format="NCHW"), (2, 5, 4, 5)),
    ("Conv2DTranspose", dict(output_channels=3, kernel_shape=(2, 3), stride=2, padding="VALID",
                             output_shape=(8, 9), mask=MASK_T2D), (1, 4, 4, 5)),
    ("Conv2DTranspose", dict(output_channels=2, kernel_shape=3, padding=[(1, 2), (0, 1)]),
     (2, 4, 4, 3)),
    ("Conv3DTranspose", dict(output_channels=2, kernel_shape=2, stride=2), (1, 2, 3, 2, 3)),
    ("Conv3DTranspose", dict(output_channels=2, kernel_shape=3, stride=(1, 2, 1),
                             data_format="NCDHW", with_bias=False), (3, 2, 3, 2)),       # unbatched
    ("ConvNDTranspose", dict(num_spatial_dims=1, output_channels=2, kernel_shape=2, stride=2),
     (2, 3, 2)),
]


@pytest.mark.parametrize("cls, kwargs, shape", CONV_CASES + TRANSPOSE_CASES,
                         ids=lambda v: v if isinstance(v, str) else None)
def test_conv_params_and_outputs_match_haiku(cls, kwargs, shape):
  x = _x(shape)
  pf_params, hk_params = _check_parity(
      lambda x: getattr(hk, cls)(**_resolve(hk, kwargs))(x),
      lambda x: getattr(purify.nn, cls)(**_resolve(purify.nn, kwargs))(x), x)
  assert list(pf_params) == list(hk_params) and len(pf_params) == 1


def test_default_initializers_give_haikus_param_tree():
  """No initializer given: Haiku's tree (Haiku's by eval_shape: its rank-4 RNG draws take
  seconds to compile on CPU) and zero biases."""
  def net(lib):
    def f(x):
      y = lib.Conv2D(4, 3, data_format="NCHW")(x)
      y = lib.Conv2DTranspose(3, 2, stride=2, with_bias=False)(y)
      return lib.Conv1D(6, 3, feature_group_count=3)(y[:, 0])
    return f
  x = _x((2, 3, 4, 4))
  pf_params = purify.transform(net(purify.nn)).init(KEY, x)
  hk_params = jax.eval_shape(hk.transform(net(hk)).init, KEY, x)
  assert _shapes(pf_params) == _shapes(hk_params)
  assert _shapes(pf_params)["conv2_d"]["b"] == ((4, 1, 1), jnp.dtype("float32"))
  for m in ("conv2_d", "conv1_d"):
    np.testing.assert_array_equal(pf_params[m]["b"], 0.0)
    assert float(jnp.std(pf_params[m]["w"])) > 0


def test_a_network_of_convs_and_pools_names_everything_as_haiku():
  def net(lib):
    base = hk.Module if lib is hk else purify.Module
    init = INITS[lib]

    class Block(base):
      def __init__(self, name=None):
        super().__init__(name=name)
        self.down = lib.Conv2D(4, 3, stride=2, **init)

      def __call__(self, x):
        h = jax.nn.relu(self.down(x))
        h = lib.Conv2D(4, 3, feature_group_count=2, **init)(h)
        return lib.MaxPool((1, 2, 2, 1), (1, 1, 1, 1), "SAME")(h)

    def f(x):
      h = Block()(x)
      h = Block()(h)
      h = lib.AvgPool((2, 2, 1), 1, "VALID")(h)
      h = lib.Conv2DTranspose(3, 3, stride=2, name="up", **init)(h)
      return lib.Conv1D(2, 2, **init)(h.reshape(h.shape[0], -1, 3))
    return f

  pf_params, _ = _check_parity(net(hk), net(purify.nn), _x((2, 12, 12, 3)))
  assert sorted(pf_params) == ["block/conv2_d", "block/~/conv2_d", "block_1/conv2_d",
                               "block_1/~/conv2_d", "conv1_d", "up"]


def test_default_module_names_are_haikus():
  def f(lib):
    init = INITS[lib]

    def g(x):
      y = lib.Conv3D(2, 1, **init)(x) + lib.Conv3DTranspose(2, 1, **init)(x)
      z = lib.Conv2D(2, 1, **init)(x[:, 0]) + lib.Conv2DTranspose(2, 1, **init)(x[:, 0])
      w = lib.Conv1D(2, 1, **init)(x[:, 0, 0]) + lib.Conv1DTranspose(2, 1, **init)(x[:, 0, 0])
      return y.sum() + z.sum() + w.sum()
    return g
  x = _x((1, 2, 2, 2, 2))
  names = sorted(purify.transform(f(purify.nn)).init(KEY, x))
  assert names == sorted(hk.transform(f(hk)).init(KEY, x))
  assert "conv2_d_transpose" in names and "conv3_d" in names


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_param_dtype_follows_the_input(dtype):
  x = _x((1, 4, 4, 2)).astype(dtype)
  _check_parity(lambda x: hk.Conv2D(3, 2, **INITS[hk])(x),
                lambda x: purify.nn.Conv2D(3, 2, **INITS[purify.nn])(x), x,
                tol=2e-2 if dtype == jnp.bfloat16 else 1e-5)


# ----------------------------------------------------------------------------- pooling

POOL_CASES = [
    ((2, 6, 6, 3), (1, 2, 2, 1), (1, 2, 2, 1), "VALID", -1),
    ((2, 7, 5, 3), (1, 3, 3, 1), (1, 2, 1, 1), "SAME", -1),
    ((2, 7, 5, 3), (3, 2, 1), (2, 2, 1), "SAME", -1),        # shorter: leading batch axes
    ((2, 3, 7, 5), 3, 2, "SAME", 1),                          # int: all but batch and channel
    ((2, 7, 5, 3), 2, 1, "VALID", -1),
    ((9, 4), (3, 1), (2, 1), "SAME", -1),
    ((2, 5, 4, 4, 2), (1, 2, 3, 2, 1), 2, "SAME", -1),
]


@pytest.mark.filterwarnings("ignore:When running under vmap:DeprecationWarning")  # Haiku's, int sizes
@pytest.mark.parametrize("shape, window, strides, padding, channel_axis", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_functions_match_haiku(kind, shape, window, strides, padding, channel_axis):
  x = _x(shape)
  want = getattr(hk, f"{kind}_pool")(x, window, strides, padding, channel_axis)
  got = getattr(purify.nn, f"{kind}_pool")(x, window, strides, padding, channel_axis)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_avg_pool_same_averages_real_entries_only():
  x = jnp.arange(1., 10.).reshape(1, 3, 3, 1)
  y = purify.nn.avg_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
  # windows: [[1,2],[4,5]], [[3],[6]], [[7,8]], [[9]] (padding after, since 3 is odd)
  np.testing.assert_allclose(y[0, :, :, 0], [[3.0, 4.5], [7.5, 9.0]])


@pytest.mark.parametrize("kind", ["MaxPool", "AvgPool"])
def test_pool_modules_match_haiku_and_have_no_params(kind):
  x = _x((2, 6, 5, 3))
  pf_params, _ = _check_parity(lambda x: getattr(hk, kind)((3, 2, 1), (2, 1, 1), "SAME")(x),
                               lambda x: getattr(purify.nn, kind)((3, 2, 1), (2, 1, 1), "SAME")(x),
                               x)
  assert pf_params == {}


def test_pool_rejects_unknown_padding_like_haiku():
  for lib in (hk, purify.nn):
    with pytest.raises(ValueError, match="Invalid padding"):
      lib.max_pool(jnp.ones((1, 4, 4, 1)), 2, 2, "same")


# ----------------------------------------------------------------------------- transforms

def test_conv_inside_vmap_equals_the_per_example_loop():
  xs = _x((3, 5, 5, 2))
  init = INITS[purify.nn]

  def batched(xs):
    conv = purify.nn.Conv2D(4, 3, stride=(1, 2), **init)
    h = jax.vmap(conv)(xs)                       # each example is unbatched (H, W, C)
    return jax.vmap(lambda e: purify.nn.max_pool(e, (2, 2, 1), (1, 1, 1), "SAME"))(h)

  def one(x):
    h = purify.nn.Conv2D(4, 3, stride=(1, 2), **init)(x)
    return purify.nn.max_pool(h, (2, 2, 1), (1, 1, 1), "SAME")

  def whole_batch(xs):
    h = purify.nn.Conv2D(4, 3, stride=(1, 2), **init)(xs)
    return purify.nn.max_pool(h, (1, 2, 2, 1), (1, 1, 1, 1), "SAME")

  f, g = purify.transform(batched), purify.transform(one)
  params = f.init(KEY, xs)
  assert _shapes(params) == _shapes(g.init(KEY, xs[0])) == {
      "conv2_d": {"w": ((3, 3, 2, 4), jnp.dtype("float32")), "b": ((4,), jnp.dtype("float32"))}}
  got = f.apply(params, None, xs)
  want = jnp.stack([g.apply(params, None, x) for x in xs])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got, purify.transform(whole_batch).apply(params, None, xs),
                             rtol=1e-5, atol=1e-5)


def test_conv_inside_scan_equals_the_per_step_loop():
  xs = _x((4, 2, 6, 3))                           # (steps, batch, width, channels)
  init = INITS[purify.nn]

  def step(conv, up, h, x):
    return jnp.tanh(up(conv(h)) + x)

  def scanned(xs):
    conv, up = purify.nn.Conv1D(3, 3, **init), purify.nn.Conv1DTranspose(3, 2, **init)

    def body(h, x):
      h = step(conv, up, h, x)
      return h, h.sum()
    return jax.lax.scan(body, jnp.zeros(xs.shape[1:]), xs)

  def looped(xs):
    conv, up = purify.nn.Conv1D(3, 3, **init), purify.nn.Conv1DTranspose(3, 2, **init)
    h, outs = jnp.zeros(xs.shape[1:]), []
    for x in xs:
      h = step(conv, up, h, x)
      outs.append(h.sum())
    return h, jnp.stack(outs)

  f, g = purify.transform(scanned), purify.transform(looped)
  params = f.init(KEY, xs)
  assert _shapes(params) == _shapes(g.init(KEY, xs))
  assert sorted(params) == ["conv1_d", "conv1_d_transpose"]
  (h1, s1), (h2, s2) = f.apply(params, None, xs), g.apply(params, None, xs)
  np.testing.assert_allclose(h1, h2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5)


def test_conv_grad_matches_haiku():
  x = _x((2, 6, 6, 3))
  hk_t = hk.transform(lambda x: jnp.sum(hk.Conv2D(4, 3, stride=2, **INITS[hk])(x) ** 2))
  pf_t = purify.transform(
      lambda x: jnp.sum(purify.nn.Conv2D(4, 3, stride=2, **INITS[purify.nn])(x) ** 2))
  params = hk_t.init(KEY, x)
  want = jax.grad(hk_t.apply)(params, None, x)
  got = jax.jit(jax.grad(pf_t.apply))(params, None, x)
  for m in want:
    for n in want[m]:
      np.testing.assert_allclose(got[m][n], want[m][n], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- initializers

def test_default_w_init_statistics_match_haiku():
  """Haiku's default w_init is TruncatedNormal(1/sqrt(fan_in)): cut at 2 std and NOT
  rescaled, so the samples' std is 0.8796/sqrt(fan_in) (the factor is checked on Haiku's own
  TruncatedNormal below). One init program for all three layers."""
  x2, x1, xt = jnp.zeros((1, 6, 6, 32)), jnp.zeros((1, 6, 256)), jnp.zeros((1, 3, 3, 96))
  pf = purify.transform(lambda x2, x1, xt: (
      purify.nn.Conv2D(64, 5)(x2).sum() + purify.nn.Conv1D(128, 3, feature_group_count=4)(x1).sum()
      + purify.nn.Conv2DTranspose(32, 4)(xt).sum())).init(KEY, x2, x1, xt)
  hk_tn = hk.transform(lambda: hk.initializers.TruncatedNormal(0.5)((50_000,), jnp.float32))
  hk_factor = float(jnp.std(hk_tn.apply({}, KEY))) / 0.5
  assert hk_factor == pytest.approx(0.87962566, rel=0.02)
  for mod, shape, fan_in in (("conv2_d", (5, 5, 32, 64), 5 * 5 * 32),
                             ("conv1_d", (3, 64, 128), 3 * 64),
                             ("conv2_d_transpose", (4, 4, 32, 96), 4 * 4 * 96)):
    w = np.asarray(pf[mod]["w"])
    std = 1.0 / np.sqrt(fan_in)
    assert w.shape == shape and w.size > 20_000
    assert abs(w.mean()) < 0.03 * std
    assert w.std() == pytest.approx(0.87962566 * std, rel=0.03)
    assert w.std() == pytest.approx(hk_factor * std, rel=0.04)
    assert np.abs(w).max() <= 2 * std * (1 + 1e-6)


VS_CASES = [
    (1.0, "fan_in", "truncated_normal", None),
    (2.0, "fan_out", "normal", None),
    (0.5, "fan_avg", "uniform", None),
    (1.0, "fan_in", "normal", (0,)),
]


def test_variance_scaling_matches_haikus():
  shape, dtype = (9, 64, 96), jnp.float32          # a 1D kernel: receptive field 9
  keys = jax.random.split(KEY, len(VS_CASES))
  ws = jax.jit(lambda keys: [purify.nn.variance_scaling(*c)(k, shape, dtype)
                             for c, k in zip(VS_CASES, keys)])(keys)
  hws = jax.jit(hk.transform(lambda: [hk.initializers.VarianceScaling(*c)(shape, dtype)
                                      for c in VS_CASES]).apply)({}, KEY)
  fans = {"fan_in": 64 * 9, "fan_out": 96 * 9, "fan_avg": (64 + 96) * 9 / 2}
  for (scale, mode, distribution, fan_in_axes), w, hw in zip(VS_CASES, ws, hws):
    w, hw = np.asarray(w), np.asarray(hw)
    n = 9 if fan_in_axes is not None else fans[mode]
    want_std = np.sqrt(scale / n)                     # the samples' std, for all three
    assert w.shape == shape and w.dtype == dtype
    assert w.std() == pytest.approx(want_std, rel=0.03)
    assert w.std() == pytest.approx(hw.std(), rel=0.04)
    if distribution == "uniform":
      assert np.abs(w).max() <= np.sqrt(3) * want_std * (1 + 1e-6)
    if distribution == "truncated_normal":
      assert np.abs(w).max() <= 2 * want_std / 0.87962566 * (1 + 1e-6)


def test_variance_scaling_rejects_bad_arguments_like_haiku():
  for bad in (dict(scale=-1.0), dict(mode="fan"), dict(distribution="cauchy")):
    with pytest.raises(ValueError):
      hk.initializers.VarianceScaling(**bad)
    with pytest.raises(ValueError):
      purify.nn.variance_scaling(**bad)


def test_pad_functions_equal_haikus():
  for name in ("valid", "same", "full", "causal", "reverse_causal"):
    for k in range(1, 7):
      assert getattr(purify.nn.pad, name)(k) == tuple(getattr(hk.pad, name)(k))


def test_haikus_pad_functions_work_too():
  seen = {}

  def f(x):
    for lib in (hk, purify.nn):
      conv = purify.nn.Conv2D(2, (3, 2), rate=(2, 1), padding=[lib.pad.causal, lib.pad.full])
      seen[lib] = conv.padding
      x = conv(x)
    return x
  jax.eval_shape(purify.transform(f).init, KEY, jnp.ones((1, 6, 6, 2)))   # trace only
  assert seen[hk] == seen[purify.nn] == ((4, 0), (1, 1))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("make, shape, match", [
    (lambda lib: lib.Conv2D(4, 3), (1, 2, 4, 4, 3), "rank"),
    (lambda lib: lib.Conv2D(4, 3, feature_group_count=2), (1, 4, 4, 3), "multiple"),
    (lambda lib: lib.Conv2D(4, 3, mask=np.ones((3, 3, 1, 4))), (1, 4, 4, 3), "Mask"),
    (lambda lib: lib.Conv1DTranspose(2, 3, stride=2, output_shape=20, **INITS[lib]), (1, 5, 3),
     "expected input"),
])
def test_errors_match_haikus(make, shape, match):
  x = jnp.ones(shape)
  for lib, t in ((hk, hk.transform), (purify.nn, purify.transform)):
    with pytest.raises(ValueError, match=match):
      t(lambda x: make(lib)(x)).init(KEY, x)


def test_pools_are_differentiable_under_jit():
  """Regression (found by the bench): an ARRAY init value made reduce_window generic
  under jax.jit, which has no derivative, so any ResNet train step failed."""
  x = jnp.asarray(np.random.RandomState(0).randn(2, 6, 6, 3), jnp.float32)

  def loss(w, pool):
    return pool(x * w, (1, 3, 3, 1), (1, 2, 2, 1), "SAME").sum()

  for pool in (purify.nn.max_pool, purify.nn.avg_pool):
    g = jax.jit(jax.grad(loss), static_argnums=1)(jnp.float32(1.5), pool)
    np.testing.assert_allclose(g, jax.grad(loss)(jnp.float32(1.5), pool), rtol=1e-5)
    assert g != 0
