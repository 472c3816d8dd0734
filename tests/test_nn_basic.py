"""purify.nn Flatten, Reshape, Bias, BatchApply and DepthwiseConv1D/2D/3D against
dm-haiku run in the same test: each model is written once, ``program(lib)``, against
``hk`` or ``purify.nn``; the parameter trees (paths, names, shapes, dtypes) must be
equal and both applies, given the same random params of that tree, equal. Errors:
raised where Haiku raises, with messages naming the culprit. Plus what purify adds
(depthwise on unbatched inputs, padding functions) and the layers inside jax.vmap."""
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


def x_of(shape, seed=1):
  # numpy, not jax.random: no compilation per shape
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape), jnp.float32)


def parity(program, *args):
  """Equal param trees; (haiku, purify) outputs from the same random params."""
  return _haiku_parity.parity(program(hk), program(purify.nn), *args)


def assert_close(got, want):
  gl, gt = jax.tree_util.tree_flatten(got)
  wl, wt = jax.tree_util.tree_flatten(want)
  assert gt == wt
  for g, w in zip(gl, wl):
    assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
    np.testing.assert_allclose(g, w, **TOL)


def params_of(program, *args):
  return signature(jax.eval_shape(purify.transform(program(purify.nn)).init, ROOT, *args))


# ============================================================================ Reshape, Flatten
RESHAPES = [
    # (kwargs, input shape, output shape)
    (dict(output_shape=(-1, 5)), (1, 2, 3, 4, 5), (1, 24, 5)),
    (dict(output_shape=(-1, 5), preserve_dims=2), (1, 2, 3, 4, 5), (1, 2, 12, 5)),
    (dict(output_shape=(-1, 5), preserve_dims=3), (1, 2, 3, 4, 5), (1, 2, 3, 4, 5)),
    (dict(output_shape=(-1, 5), preserve_dims=4), (1, 2, 3, 4, 5), (1, 2, 3, 4, 1, 5)),
    (dict(output_shape=(-1, 5), preserve_dims=-3), (1, 2, 3, 4, 5), (1, 2, 12, 5)),
    (dict(output_shape=(-1, 5), preserve_dims=-3), (2, 3, 4, 5), (2, 12, 5)),   # unbatched
    (dict(output_shape=[3, 2, 2]), (2, 12), (2, 3, 2, 2)),                     # list, no -1
    (dict(output_shape=(2, -1)), (3, 6), (3, 2, 3)),
    (dict(output_shape=(2, -1), preserve_dims=-1), (6,), (2, 3)),
    (dict(output_shape=(0, -1)), (2, 0, 3), (2, 0, 0)),                        # empty
    (dict(output_shape=(-1,), preserve_dims=2), (4, 3), (4, 3)),               # rank <= kept
]
FLATTENS = [
    (dict(), (3, 2, 4), (3, 8)),
    (dict(), (3,), (3,)),                                                      # unchanged
    (dict(preserve_dims=2), (3, 2, 4, 5), (3, 2, 20)),
    (dict(preserve_dims=-2), (3, 2, 4), (3, 8)),
    (dict(preserve_dims=-2), (2, 4), (8,)),                                    # unbatched
    (dict(preserve_dims=-3, name="flat"), (3, 2, 4, 5), (3, 40)),
]


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")   # Haiku's, on size 0
@pytest.mark.parametrize("cls, kwargs, shape, out", [("Reshape",) + c for c in RESHAPES]
                         + [("Flatten",) + c for c in FLATTENS])
def test_reshape_and_flatten_match_haiku(cls, kwargs, shape, out):
  x = x_of(shape)
  want, got = parity(lambda lib: lambda x: getattr(lib, cls)(**kwargs)(x), x)
  assert got.shape == out
  assert_close(got, want)


def test_reshape_modules_are_named_as_haikus_and_flatten_is_a_reshape():
  names = {}

  def program(lib):
    def f(x):
      mods = [lib.Flatten(), lib.Reshape((-1,)), lib.Flatten(name="flat"), lib.Flatten()]
      names[lib] = [m.module_name for m in mods]
      return [m(x) for m in mods]
    return f
  want, got = parity(program, x_of((2, 3, 2)))
  assert_close(got, want)
  assert names[hk] == names[purify.nn] == ["flatten", "reshape", "flat", "flatten_1"]
  assert issubclass(purify.nn.Flatten, purify.nn.Reshape)


# ============================================================================ Bias
BIASES = [
    # (kwargs, call kwargs, input shape, bias shape)
    (dict(), {}, (2, 3, 4), (3, 4)),
    (dict(bias_dims=[]), {}, (2, 3, 4), ()),
    (dict(bias_dims=[-1]), {}, (2, 3, 4, 5), (5,)),
    (dict(bias_dims=[1]), {}, (2, 3, 4, 5), (3, 1, 1)),
    (dict(bias_dims=(2, -1)), {}, (2, 3, 4, 5), (4, 5)),          # leading size-1 dropped
    (dict(bias_dims=[1, 3]), {}, (2, 3, 4, 5), (3, 1, 5)),
    (dict(output_size=(3, 4)), dict(multiplier=-1.0), (2, 3, 4), (3, 4)),
    (dict(output_size=[4]), dict(multiplier=0.5), (2, 4), (4,)),   # a list (Haiku: a tuple)
    (dict(bias_dims=[-1], name="b"), dict(multiplier=jnp.arange(3.0)[:, None]), (3, 2), (2,)),
]


@pytest.mark.parametrize("kwargs, call, shape, bias_shape", BIASES)
def test_bias_matches_haiku(kwargs, call, shape, bias_shape):
  x = x_of(shape)
  seen = {}

  def program(lib):
    def f(x):
      hk_kwargs = dict(kwargs, output_size=tuple(kwargs["output_size"])) if (
          lib is hk and "output_size" in kwargs) else kwargs   # Haiku: list != tuple
      b = lib.Bias(**hk_kwargs)
      y = b(x, **call)
      seen[lib] = (b.bias_shape, b.input_size)
      return y
    return f
  want, got = parity(program, x)
  assert_close(got, want)
  assert seen[purify.nn] == seen[hk] == (bias_shape, shape[1:])
  assert params_of(program, x) == {kwargs.get("name", "bias"): {"b": (bias_shape, F32)}}


def test_bias_multiplier_minus_one_undoes_the_bias():
  def f(x):
    bias = purify.nn.Bias(b_init=jax.nn.initializers.ones)
    return bias(bias(x), multiplier=-1)
  t = purify.transform(f)
  x = x_of((2, 3))
  params = t.init(ROOT, x)
  np.testing.assert_array_equal(params["bias"]["b"], np.ones(3))
  np.testing.assert_allclose(t.apply(params, None, x), x, rtol=1e-6)


# ============================================================================ BatchApply
def test_batch_apply_matches_haiku_on_a_layer():
  xs = x_of((3, 2, 4))
  want, got = parity(lambda lib: lambda xs: lib.BatchApply(lib.Linear(5))(xs), xs)
  assert got.shape == (3, 2, 5)
  assert_close(got, want)


def test_batch_apply_trees_kwargs_and_unmerged_arguments_match_haiku():
  xs, ys, scale = x_of((2, 3, 4, 2)), x_of((2, 3, 4, 5), seed=2), jnp.float32(3.0)
  seen = {}

  def program(lib):
    def g(pair, scale, *, extra):        # pair merged; scale (rank 0) passed as it is
      seen.setdefault(lib, []).append((pair[0].shape, pair[1].shape, extra.shape))
      h = lib.Linear(3)(jnp.concatenate(pair, -1)) * scale   # built inside: top-level name
      return {"h": h, "e": extra * 2}

    def f(xs, ys, scale):
      return (lib.BatchApply(g, num_dims=3)((xs, ys), scale, extra=ys[..., :1]),
              lib.BatchApply(lambda x: lib.Flatten()(x), num_dims=1)(xs))
    return f
  want, got = parity(program, xs, ys, scale)
  assert_close(got, want)
  assert got[0]["h"].shape == (2, 3, 4, 3) and got[1].shape == (2, 24)
  assert seen[purify.nn][0] == seen[hk][0] == ((24, 2), (24, 5), (24, 1))
  assert params_of(program, xs, ys, scale) == {"linear": {"w": ((7, 3), F32), "b": ((3,), F32)}}


def test_batch_apply_equals_the_layer_applied_per_leading_index():
  xs = x_of((3, 2, 4))
  t = purify.transform(lambda xs: purify.nn.BatchApply(purify.nn.Linear(2))(xs))
  def per_index(xs):
    lin = purify.nn.Linear(2)
    return jnp.stack([lin(x) for x in xs])
  per = purify.transform(per_index)
  params = _haiku_parity.random_like(jax.eval_shape(t.init, ROOT, xs))
  assert_close(t.apply(params, None, xs), per.apply(params, None, xs))


# ============================================================================ Depthwise
DEPTHWISE = [
    # (class, kwargs, input shape)
    ("DepthwiseConv1D", dict(channel_multiplier=2, kernel_shape=3), (2, 7, 3)),
    ("DepthwiseConv1D", dict(channel_multiplier=1, kernel_shape=[2], stride=2, rate=2,
                             padding="VALID"), (2, 9, 2)),
    ("DepthwiseConv1D", dict(channel_multiplier=3, kernel_shape=3, data_format="NCW",
                             with_bias=False, padding=[(2, 0)]), (2, 2, 6)),
    ("DepthwiseConv2D", dict(channel_multiplier=2, kernel_shape=3), (2, 5, 5, 3)),
    ("DepthwiseConv2D", dict(channel_multiplier=1, kernel_shape=(3, 2), stride=(2, 1),
                             rate=(1, 2), padding="valid"), (2, 7, 6, 2)),
    ("DepthwiseConv2D", dict(channel_multiplier=2, kernel_shape=3, data_format="NCHW",
                             stride=2), (2, 3, 6, 5)),
    ("DepthwiseConv2D", dict(channel_multiplier=1, kernel_shape=2, padding=[(1, 0), (0, 2)],
                             data_format="channels_first", name="dw"), (1, 2, 4, 4)),
    ("DepthwiseConv2D", dict(channel_multiplier=2, kernel_shape=2, padding="SAME_LOWER"),
     (1, 4, 4, 2)),
    ("DepthwiseConv3D", dict(channel_multiplier=2, kernel_shape=2), (1, 3, 4, 3, 2)),
    ("DepthwiseConv3D", dict(channel_multiplier=1, kernel_shape=(3, 2, 2), stride=2,
                             data_format="NCDHW", with_bias=False, padding="VALID"),
     (2, 2, 5, 4, 4)),
]


@pytest.mark.parametrize("cls, kwargs, shape", DEPTHWISE,
                         ids=lambda v: v if isinstance(v, str) else None)
def test_depthwise_matches_haiku(cls, kwargs, shape):
  x = x_of(shape)
  want, got = parity(lambda lib: lambda x: getattr(lib, cls)(**kwargs)(x), x)
  assert_close(got, want)
  channels = shape[1] if kwargs.get("data_format", "N").startswith(("NC", "channels_f")) \
      else shape[-1]
  params = params_of(lambda lib: lambda x: getattr(lib, cls)(**kwargs)(x), x)
  (name, p), = params.items()
  assert p["w"][0][-2:] == (1, kwargs["channel_multiplier"] * channels)
  assert ("b" in p) == kwargs.get("with_bias", True)


def test_depthwise_channel_order_is_input_channel_major():
  """Output ``c * multiplier + j`` is filter ``j`` on input channel ``c``."""
  x = x_of((1, 5, 5, 2))
  t = purify.transform(lambda x: purify.nn.DepthwiseConv2D(3, 3, with_bias=False)(x))
  params = _haiku_parity.random_like(jax.eval_shape(t.init, ROOT, x))
  w = params["depthwise_conv2_d"]["w"]
  out = t.apply(params, None, x)
  for c in range(2):
    for j in range(3):
      one = jax.lax.conv_general_dilated(
          x[..., c:c + 1], w[..., c * 3 + j:c * 3 + j + 1], (1, 1), "SAME",
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
      np.testing.assert_allclose(out[..., c * 3 + j], one[..., 0], **TOL)


def test_depthwise_names_and_default_initializers_are_haikus():
  def program(lib):
    def f(x):
      y = lib.DepthwiseConv2D(4, 3, data_format="NCHW")(x)
      return lib.DepthwiseConv1D(1, 5)(y[:, :, 0]) + lib.DepthwiseConv2D(1, 1)(y)[:, :, 0]
    return f
  x = x_of((1, 64, 4, 4))
  pf = purify.transform(program(purify.nn)).init(ROOT, x)
  assert signature(pf) == signature(jax.eval_shape(hk.transform(program(hk)).init, ROOT, x))
  assert signature(pf) == {
      "depthwise_conv2_d": {"w": ((3, 3, 1, 256), F32), "b": ((256, 1, 1), F32)},
      "depthwise_conv1_d": {"w": ((5, 1, 4), F32), "b": ((4,), F32)},
      "depthwise_conv2_d_1": {"w": ((1, 1, 1, 4), F32), "b": ((4,), F32)}}
  w, std = np.asarray(pf["depthwise_conv2_d"]["w"]), 1 / 3.0     # fan-in 3 * 3 * 1
  assert np.abs(w).max() <= 2 * std * (1 + 1e-6)                 # Haiku's TruncatedNormal
  assert w.std() == pytest.approx(0.87962566 * std, rel=0.06)
  for m in pf:
    np.testing.assert_array_equal(pf[m]["b"], 0.0)


def test_depthwise_unbatched_and_padding_functions():
  """Beyond Haiku (as ConvND): an unbatched input is the batched one's example; padding
  functions and a single (low, high) pair are the explicit pairs they stand for."""
  x = x_of((2, 6, 5, 3))

  def f(x):
    a = purify.nn.DepthwiseConv2D(2, 3, rate=(2, 1), padding=[purify.nn.pad.causal,
                                                                purify.nn.pad.full])
    b = purify.nn.DepthwiseConv2D(2, 3, rate=(2, 1), padding=[(4, 0), (2, 2)], name="b")
    c = purify.nn.DepthwiseConv2D(1, 3, padding=(1, 2), name="c")
    d = purify.nn.DepthwiseConv2D(1, 3, padding=[(1, 2), (1, 2)], name="d")
    return a(x), b(x), a(x[1]), c(x), d(x)
  t = purify.transform(f)
  shapes = jax.eval_shape(t.init, ROOT, x)
  params = _haiku_parity.random_like(shapes)
  params["b"], params["d"] = params["depthwise_conv2_d"], params["c"]
  a, b, one, c, d = t.apply(params, None, x)
  assert a.shape == (2, 6, 7, 6)
  assert_close(a, b)
  assert_close(one, a[1])
  assert_close(c, d)


def test_depthwise_channels_first_bias_is_per_channel_in_1d_and_3d():
  """Haiku's channels-first bias is (C*m, 1, 1) for every rank, which fails to broadcast
  in 1D and 3D (or lands on the wrong axis); purify's is (C*m,) + (1,) * rank."""
  for cls, shape, b_shape in (("DepthwiseConv1D", (2, 3, 5), (6, 1)),
                              ("DepthwiseConv3D", (1, 3, 2, 2, 2), (6, 1, 1, 1))):
    x = x_of(shape)
    fmt = "NCW" if cls == "DepthwiseConv1D" else "NCDHW"
    def f(x, with_bias):
      return getattr(purify.nn, cls)(2, 2, data_format=fmt, with_bias=with_bias)(x)
    t = purify.transform(lambda x: f(x, True))
    params = _haiku_parity.random_like(jax.eval_shape(t.init, ROOT, x))
    name = "depthwise_conv1_d" if cls == "DepthwiseConv1D" else "depthwise_conv3_d"
    assert params[name]["b"].shape == b_shape
    no_bias = purify.transform(lambda x: f(x, False)).apply(
        {name: {"w": params[name]["w"]}}, None, x)
    assert_close(t.apply(params, None, x), no_bias + params[name]["b"])
    with pytest.raises(ValueError, match="broadcast"):
      jax.eval_shape(hk.transform(lambda x: getattr(hk, cls)(2, 2, data_format=fmt)(x)).init,
                     ROOT, x)


# ============================================================================ transforms
def test_layers_inside_vmap_equal_the_whole_batch():
  xs = x_of((3, 4, 4, 2))

  def layers():
    return (purify.nn.DepthwiseConv2D(2, 3), purify.nn.Bias(bias_dims=[-1]),
            purify.nn.Flatten(preserve_dims=-3), purify.nn.Linear(2))

  def vmapped(xs):
    conv, bias, flat, lin = layers()
    def one(x):                                    # x: (4, 4, 2), no batch axis
      h = conv(x)
      h = jax.vmap(lambda r: bias(r))(h)           # bias needs [batch, ...]: rows
      return purify.nn.BatchApply(lin, num_dims=1)(flat(h)[None])[0]
    return jax.vmap(one)(xs)

  def batched(xs):
    conv, bias, flat, lin = layers()
    h = conv(xs)
    h = bias(h.reshape(-1, *h.shape[2:])).reshape(h.shape)
    return lin(flat(h))

  tv, tb = purify.transform(vmapped), purify.transform(batched)
  shapes = jax.eval_shape(tv.init, ROOT, xs)
  assert signature(shapes) == signature(jax.eval_shape(tb.init, ROOT, xs))
  assert signature(shapes)["bias"] == {"b": ((4,), F32)}
  params = _haiku_parity.random_like(shapes)
  got = tv.apply(params, None, xs)
  assert got.shape == (3, 2)
  assert_close(got, tb.apply(params, None, xs))


def test_gradients_match_haiku():
  x = x_of((2, 5, 5, 3))

  def program(lib):
    def loss(x):
      h = lib.DepthwiseConv2D(2, 3, stride=2)(x)
      h = lib.Bias(bias_dims=[-1])(lib.Flatten()(h))
      return jnp.sum(lib.BatchApply(lib.Linear(2), num_dims=1)(h) ** 2)
    return loss
  th, tp = hk.transform(program(hk)), purify.transform(program(purify.nn))
  params = _haiku_parity.random_like(jax.eval_shape(th.init, ROOT, x), scale=0.5)
  assert_close(jax.grad(tp.apply)(params, None, x), jax.jit(jax.grad(th.apply))(params, None, x))


# ============================================================================ errors
BOTH_RAISE = [
    # (make(lib) -> fn(x), input shape, exception, purify's message)
    (lambda lib: lib.Reshape((-1,), preserve_dims=0), (2, 3), ValueError, "non-zero"),
    (lambda lib: lib.Flatten(preserve_dims=0), (2, 3), ValueError, "non-zero"),
    (lambda lib: lib.Reshape((-1, -1)), (2, 3), ValueError, "-1 can only occur once"),
    (lambda lib: lib.Reshape((4, -1)), (2, 3, 3), TypeError,
     r"cannot reshape dimensions \(3, 3\) \(size 9\).*output_shape \(4, -1\)"),
    (lambda lib: lib.Reshape((4,)), (2, 3, 3), TypeError, r"must multiply to 9"),
    (lambda lib: lib.Bias(), (3,), ValueError, r"rank >= 2.*x\[None\]"),
    (lambda lib: lib.Bias(output_size=(4,)), (2, 3), ValueError, r"must be \(-1, 4\)"),
    (lambda lib: lib.Bias(bias_dims=[0]), (2, 3), ValueError, "minibatch dimension"),
    (lambda lib: lib.Bias(bias_dims=[-2]), (2, 3), ValueError, "minibatch dimension"),
    (lambda lib: lib.Bias(bias_dims=[2]), (2, 3), ValueError, "out of range.*rank 2"),
    (lambda lib: lib.BatchApply(lib.Linear(2)), (3,), ValueError, r"ndim >= 2.*\[\(3,\)\]"),
    (lambda lib: lib.BatchApply(lambda x: x.sum()), (3, 2, 2), TypeError,
     r"output of f has shape \(\).*size 6.*\(3, 2\)"),
    (lambda lib: lib.BatchApply(lambda x: x[1:]), (3, 2, 2), TypeError,
     r"shape \(5, 2\).*size 6"),
    (lambda lib: lib.DepthwiseConv2D(1, 3, padding="SAME", data_format="NWHCX"),
     (1, 4, 4, 2), ValueError, "Unable to extract channel information"),
]


@pytest.mark.parametrize("make, shape, exc, match", BOTH_RAISE)
def test_errors_where_haiku_raises(make, shape, exc, match):
  x = jnp.ones(shape)
  with pytest.raises(exc):
    hk.transform(lambda x: make(hk)(x)).init(ROOT, x)
  with pytest.raises(exc, match=match):
    purify.transform(lambda x: make(purify.nn)(x)).init(ROOT, x)


@pytest.mark.parametrize("make, shape, exc, match", [
    # Haiku: AttributeError ('int' object has no attribute 'count')
    (lambda lib: lib.Reshape(6), (2, 6), TypeError, r"sequence of ints.*\(6,\)"),
    # Haiku: TypeError from jnp.reshape at call time
    (lambda lib: lib.Reshape((-2, 3)), (2, 6), ValueError, "negative size"),
    # Haiku: TypeError (tuple(3))
    (lambda lib: lib.Bias(output_size=3), (2, 3), TypeError, r"write \(3,\)"),
    # Haiku: TypeError from lax (float shapes)
    (lambda lib: lib.BatchApply(lambda x: x, num_dims=0), (2, 3), ValueError, "positive int"),
    # Haiku: TypeError from lax (conv ranks)
    (lambda lib: lib.DepthwiseConv2D(1, 3), (1, 1, 4, 4, 2), ValueError,
     r"DepthwiseConv2D needs to have rank in \[3, 4\]"),
])
def test_errors_clearer_than_haikus(make, shape, exc, match):
  x = jnp.ones(shape)
  with pytest.raises(Exception):
    hk.transform(lambda x: make(hk)(x)).init(ROOT, x)
  with pytest.raises(exc, match=match):
    purify.transform(lambda x: make(purify.nn)(x)).init(ROOT, x)


def test_bias_dims_out_of_range_negative_is_an_error():
  """Haiku takes ``-5 % rank`` silently (here: dimension 1); purify names the range."""
  x = jnp.ones((2, 3))
  assert jax.eval_shape(hk.transform(lambda x: hk.Bias(bias_dims=[-5])(x)).init,
                        ROOT, x)["bias"]["b"].shape == (3,)
  with pytest.raises(ValueError, match=r"Dimension -5.*out of range.*-1..-1"):
    purify.transform(lambda x: purify.nn.Bias(bias_dims=[-5])(x)).init(ROOT, x)
