"""The integration zoo: every public layer of purify.nn under every transform used
INSIDE a model, checked against what loop semantics says.

Each ``Layer`` below is a tiny instance of a purify.nn layer with a per-example input.
For a transform, ONE model applies every layer under that transform (each layer in
its own ``purify.name_scope``, so the parameter paths are those of the reference);
the reference ``S`` applies every layer once, plainly, to one example. With
``P, ST0 = S.init(ROOT, x)``:

* ``jax.vmap`` (axis name ``"batch"``): output ``b`` == ``S(P, x[b])``. Layers that
  draw keys: every example draws its own (identical inputs give different rows);
  ``dropout``'s key is exactly ``fold(derive(root, "rng:dropout#0"), b)``
  (``purify.keys``). BatchNorm-like layers (training, ``cross_replica_axis="batch"``)
  == the plain layer on the merged batch, with the same new state.
* ``jax.lax.scan`` / ``jax.lax.while_loop`` over steps: step ``i`` ==
  ``S(P, state_i, fold_in(ROOT, i), x[i])`` (keys of step ``i`` are derived from the
  root with ``i`` folded in), state threaded through the steps.
* ``jax.lax.cond``: the taken branch == ``S`` (new state); the other branch leaves
  the state alone.
* ``jax.eval_shape``: the shapes of the real call; the params of the real call exist.
* ``jax.checkpoint``, ``jax.jit``: == ``S``.
* ``jax.grad`` inside the model (w.r.t. the float inputs and an output scale) ==
  ``jax.grad`` of ``S``'s pure apply.
* ``purify.vmap(param_axes=0)``: with every member's params equal to ``P`` it is
  exactly ``jax.vmap``; with distinct members, example ``b`` == ``S(P_b, x[b])``.
* ``purify.scan(param_axes=0)``: step ``i`` == ``S(P_i, state_i, fold_in(ROOT, i), x[i])``.

Cells that must fail: per-example state writes under a vmap without an axis name
(BatchNorm training without ``cross_replica_axis``, ExponentialMovingAverage,
EMAParamsTree, SpectralNorm, SNParamsTree, a ResNet or MobileNetV1 in training) raise
``purify.PurifyError`` (``PerExampleStateError``). ``test_zoo_covers_every_public_layer``
fails when a public layer of ``purify.nn`` is missing from the zoo or from a transform.

Floats: ``TOL`` (different compiled programs); RNG masks and integers bitwise.
XLA's optimizations are off for this module (compiles dominate its time).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from purify import keys

ROOT = jax.random.PRNGKey(0)
N = 2                       # vmap batch size / number of loop steps
AXIS = "batch"
TOL = dict(rtol=1e-4, atol=1e-5)
TRANSFORMS = ("vmap", "scan", "while_loop", "cond", "eval_shape", "checkpoint", "jit",
              "grad", "purify.vmap", "purify.scan")


pytestmark = pytest.mark.usefixtures("fast_compiles")


# ========================================================================== the zoo
@dataclasses.dataclass(frozen=True)
class Layer:
  name: str                  # its name_scope (an identifier)
  covers: tuple              # the purify.nn exports it exercises
  build: Callable            # build(axis_name or None) -> fn(x)  (modules built here)
  x: Callable                # x(numpy RandomState) -> one example's input
  rng: bool = False          # draws keys
  state: bool = False        # writes state
  batch_stats: bool = False  # state reduced over a named vmap axis (BatchNorm-like)


def module(factory, *args, **kwargs):
  """build(axis): construct ``factory(axis)`` now, call it with ``(x, *args, **kwargs)``."""
  def build(axis):
    m = factory(axis)
    return lambda x: m(x, *args, **kwargs)
  return build


# inputs are drawn on the host (numpy): an eager jax.random call per shape would compile
def normal(*shape):
  return lambda rs: jnp.asarray(rs.normal(size=shape), jnp.float32)


def ints(n, *shape):
  return lambda rs: jnp.asarray(rs.randint(0, n, size=shape), jnp.int32)


def pair(*parts):
  return lambda rs: tuple(p(rs) for p in parts)


def bn_config(axis):
  return dict(decay_rate=0.9, create_scale=True, create_offset=True, cross_replica_axis=axis)


nn = purify.nn
VS = nn.variance_scaling(1.0)


def _unroll(unroll, core):
  def build(axis):
    c = core()
    return lambda x: unroll(c, x[0], x[1])
  return build


ZOO = [
    Layer("Linear", ("Linear",), module(lambda a: nn.Linear(3)), normal(4)),
    Layer("MLP", ("MLP",), module(lambda a: nn.MLP([4, 3])), normal(4)),
    Layer("MLP_dropout", ("MLP",), module(lambda a: nn.MLP([16, 3]), dropout_rate=0.5),
          normal(4), rng=True),
    Layer("Flatten", ("Flatten",), module(lambda a: nn.Flatten()), normal(2, 3, 2)),
    Layer("Reshape", ("Reshape",), module(lambda a: nn.Reshape((2, -1), preserve_dims=-2)),
          normal(2, 3, 2)),
    Layer("Bias", ("Bias",), module(lambda a: nn.Bias(bias_dims=[-1]), multiplier=-1.0),
          normal(2, 3)),
    Layer("BatchApply", ("BatchApply",), lambda a: nn.BatchApply(nn.Linear(3)), normal(2, 2, 4)),
    Layer("Sequential", ("Sequential",),
          module(lambda a: nn.Sequential([nn.Linear(3), jax.nn.relu, nn.Linear(2)])), normal(4)),
    Layer("ConvND", ("ConvND",), module(lambda a: nn.ConvND(1, 2, 3)), normal(1, 5, 2)),
    Layer("Conv1D", ("Conv1D",), module(lambda a: nn.Conv1D(2, 3, stride=2)), normal(1, 5, 2)),
    Layer("Conv2D", ("Conv2D",), module(lambda a: nn.Conv2D(2, 3)), normal(1, 4, 4, 2)),
    Layer("Conv3D", ("Conv3D",), module(lambda a: nn.Conv3D(2, 2)), normal(1, 3, 3, 3, 1)),
    Layer("ConvNDTranspose", ("ConvNDTranspose",),
          module(lambda a: nn.ConvNDTranspose(1, 2, 3, stride=2)), normal(1, 4, 2)),
    Layer("Conv1DTranspose", ("Conv1DTranspose",), module(lambda a: nn.Conv1DTranspose(2, 3)),
          normal(1, 4, 2)),
    Layer("Conv2DTranspose", ("Conv2DTranspose",),
          module(lambda a: nn.Conv2DTranspose(2, 2, stride=2)), normal(1, 3, 3, 2)),
    Layer("Conv3DTranspose", ("Conv3DTranspose",), module(lambda a: nn.Conv3DTranspose(1, 2)),
          normal(1, 2, 2, 2, 1)),
    Layer("DepthwiseConv1D", ("DepthwiseConv1D",), module(lambda a: nn.DepthwiseConv1D(2, 3)),
          normal(1, 5, 2)),
    Layer("DepthwiseConv2D", ("DepthwiseConv2D",),
          module(lambda a: nn.DepthwiseConv2D(1, 2, stride=2)), normal(1, 4, 4, 2)),
    Layer("DepthwiseConv3D", ("DepthwiseConv3D",),
          module(lambda a: nn.DepthwiseConv3D(2, 2, data_format="NCDHW")), normal(1, 2, 2, 2, 2)),
    Layer("SeparableDepthwiseConv2D", ("SeparableDepthwiseConv2D",),
          module(lambda a: nn.SeparableDepthwiseConv2D(2, 3)), normal(1, 4, 4, 2)),
    Layer("max_pool", ("max_pool",), lambda a: lambda x: nn.max_pool(x, 2, 2, "VALID"),
          normal(1, 4, 4, 2)),
    Layer("avg_pool", ("avg_pool",), lambda a: lambda x: nn.avg_pool(x, 3, 1, "SAME"),
          normal(1, 4, 4, 2)),
    Layer("MaxPool", ("MaxPool",), module(lambda a: nn.MaxPool(2, 1, "SAME")), normal(1, 3, 3, 2)),
    Layer("AvgPool", ("AvgPool",), module(lambda a: nn.AvgPool(2, 2, "VALID")),
          normal(1, 4, 4, 2)),
    Layer("Embed", ("Embed",), module(lambda a: nn.Embed(10, 3)), ints(10, 4)),
    Layer("dropout", ("dropout",), lambda a: lambda x: nn.dropout(0.5, x), normal(6), rng=True),
    Layer("MultiHeadAttention", ("MultiHeadAttention",),
          lambda a: (lambda m: lambda x: m(x, x, x))(nn.MultiHeadAttention(2, 2, w_init=VS)),
          normal(3, 4)),
    Layer("VanillaRNN", ("VanillaRNN",),
          lambda a: (lambda c: lambda x: c(*x))(nn.VanillaRNN(3)), pair(normal(2), normal(3))),
    Layer("LSTM", ("LSTM",), lambda a: (lambda c: lambda x: c(x[0], nn.LSTMState(*x[1])))(
        nn.LSTM(3)), pair(normal(2), pair(normal(3), normal(3)))),
    Layer("GRU", ("GRU",), lambda a: (lambda c: lambda x: c(*x))(nn.GRU(3)),
          pair(normal(2), normal(3))),
    # unbatched examples: (x, (hidden, cell)), the state [*input_shape, output_channels]
    Layer("Conv1DLSTM", ("Conv1DLSTM",), lambda a: (lambda c: lambda x: c(
        x[0], nn.LSTMState(*x[1])))(nn.Conv1DLSTM((4,), 2, 3)),
          pair(normal(4, 1), pair(normal(4, 2), normal(4, 2)))),
    Layer("Conv2DLSTM", ("Conv2DLSTM",), lambda a: (lambda c: lambda x: c(
        x[0], nn.LSTMState(*x[1])))(nn.Conv2DLSTM((3, 3), 2, 2)),
          pair(normal(3, 3, 1), pair(normal(3, 3, 2), normal(3, 3, 2)))),
    Layer("Conv3DLSTM", ("Conv3DLSTM",), lambda a: (lambda c: lambda x: c(
        x[0], nn.LSTMState(*x[1])))(nn.Conv3DLSTM((2, 2, 2), 1, 2)),
          pair(normal(2, 2, 2, 1), pair(normal(2, 2, 2, 1), normal(2, 2, 2, 1)))),
    Layer("static_unroll", ("static_unroll",), _unroll(nn.static_unroll, lambda: nn.VanillaRNN(3)),
          pair(normal(3, 2), normal(3))),
    Layer("dynamic_unroll", ("dynamic_unroll",), _unroll(nn.dynamic_unroll, lambda: nn.GRU(3)),
          pair(normal(3, 2), normal(3))),
    Layer("DeepRNN", ("DeepRNN",), _unroll(nn.dynamic_unroll, lambda: nn.DeepRNN(
        [nn.VanillaRNN(3), jax.nn.relu, nn.GRU(2)])),
          pair(normal(3, 2), pair(normal(3), normal(2)))),
    Layer("deep_rnn_with_skip_connections", ("deep_rnn_with_skip_connections",),
          lambda a: (lambda c: lambda x: c(*x))(nn.deep_rnn_with_skip_connections(
              [nn.GRU(3), nn.VanillaRNN(2)])), pair(normal(2), pair(normal(3), normal(2)))),
    # a batch of 2 inside each example: example 0 of it reset, example 1 not
    Layer("ResetCore", ("ResetCore",), lambda a: (lambda c: lambda x: c(*x))(
        nn.ResetCore(nn.GRU(3))), pair(pair(normal(2, 2), lambda rs: jnp.array([True, False])),
                                       normal(2, 3))),
    Layer("IdentityCore", ("IdentityCore",), _unroll(nn.dynamic_unroll, nn.IdentityCore),
          pair(normal(3, 2), lambda rs: ())),
    Layer("LayerNorm", ("LayerNorm",), module(lambda a: nn.LayerNorm(-1, True, True)), normal(4)),
    Layer("InstanceNorm", ("InstanceNorm",), module(lambda a: nn.InstanceNorm(True, True)),
          normal(1, 3, 3, 2)),
    Layer("RMSNorm", ("RMSNorm",), module(lambda a: nn.RMSNorm(-1)), normal(4)),
    Layer("GroupNorm", ("GroupNorm",), module(lambda a: nn.GroupNorm(2)), normal(1, 2, 2, 4)),
    Layer("BatchNorm_eval", ("BatchNorm",), module(lambda a: nn.BatchNorm(True, True, 0.9), False),
          normal(3, 2)),
    Layer("BatchNorm_train", ("BatchNorm",),
          module(lambda a: nn.BatchNorm(True, True, 0.9, cross_replica_axis=a), True),
          normal(3, 2), state=True, batch_stats=True),
    Layer("ExponentialMovingAverage", ("ExponentialMovingAverage",),
          module(lambda a: nn.ExponentialMovingAverage(0.9)), normal(3), state=True),
    Layer("EMAParamsTree", ("EMAParamsTree",),
          lambda a: (lambda m: lambda x: m({"net/~/w": {"w": x}}))(nn.EMAParamsTree(0.5)),
          normal(3), state=True),
    Layer("SpectralNorm", ("SpectralNorm",), module(lambda a: nn.SpectralNorm()), normal(3, 2),
          state=True),
    Layer("SNParamsTree", ("SNParamsTree",), lambda a: (lambda m: lambda x: m(
        {"net/~/lin": {"w": x, "b": x[0]}}))(nn.SNParamsTree(ignore_regex=".*/b$")),
          normal(2, 3), state=True),
    # v1, no bottleneck: runs BlockGroup and BlockV1 (in training: batch statistics)
    Layer("ResNet_train", ("ResNet", "BlockGroup", "BlockV1"), module(lambda a: nn.ResNet(
        blocks_per_group=(1, 1, 1, 1), num_classes=3, bn_config=bn_config(a), bottleneck=False,
        channels_per_group=(4, 4, 4, 4), logits_config=dict(w_init=VS),
        initial_conv_config=dict(output_channels=4, kernel_shape=3)), True),
          normal(1, 8, 8, 3), state=True, batch_stats=True),
    Layer("BlockV2_train", ("BlockV2",), module(lambda a: nn.BlockV2(
        4, 2, True, bn_config(a), bottleneck=False), True, False), normal(1, 4, 4, 2),
          state=True, batch_stats=True),
    # Haiku's MobileNetV1 has no bn_config (no cross_replica_axis): in training its state
    # writes are per example under a vmap
    Layer("MobileNetV1_train", ("MobileNetV1",), module(lambda a: nn.MobileNetV1(
        strides=(1,), channels=(4,), num_classes=3), True), normal(1, 7, 7, 2), state=True),
    Layer("VectorQuantizer", ("VectorQuantizer",),
          module(lambda a: nn.VectorQuantizer(2, 4, 0.25), True), normal(3, 2)),
    # the codebook's update from the whole batch's counts (psum over the named axis)
    Layer("VectorQuantizerEMA_train", ("VectorQuantizerEMA",), lambda a: (
        lambda m: lambda x: m(x, True)["quantize"])(
            nn.VectorQuantizerEMA(2, 3, 0.25, decay=0.9, cross_replica_axis=a)),
          normal(3, 2), state=True, batch_stats=True),
    Layer("Transformer", ("Transformer", "TransformerBlock"),
          module(lambda a: nn.Transformer(2, 2, 2, 8, dropout_rate=0.5, scan_layers=True)),
          normal(3, 4), rng=True),
    # unrolled (block_0): TransformerBlock in a Python loop; dropout off: exact under vmap
    Layer("TransformerLM", ("TransformerLM", "TransformerBlock"),
          module(lambda a: nn.TransformerLM(11, 4, 1, 2, max_len=3)), ints(11, 3)),
]
BY_NAME = {l.name: l for l in ZOO}

# Exports of purify.nn that are not layers (or are covered through another entry).
EXCLUDED = {
    "RNNCore": "abstract base class of VanillaRNN/LSTM/GRU (all in the zoo)",
    "LSTMState": "a NamedTuple (the LSTM's state; used by the LSTM entry)",
    "EmbedLookupStyle": "an enum of Embed's options",
    "variance_scaling": "an initializer (used by several entries)",
    "pad": "a namespace of padding functions for the convolutions",
    "add_batch": "a tree helper (broadcasts a state to a batch)",
    "get_channel_index": "a data_format helper",
    "ResNet18": "a preset of ResNet (same class and code; the zoo runs a tiny ResNet)",
    "ResNet34": "a preset of ResNet (same class and code; the zoo runs a tiny ResNet)",
    "ResNet50": "a preset of ResNet (same class and code; the zoo runs a tiny ResNet)",
    "ResNet101": "a preset of ResNet (same class and code; the zoo runs a tiny ResNet)",
    "ResNet152": "a preset of ResNet (same class and code; the zoo runs a tiny ResNet)",
    "ResNet200": "a preset of ResNet (same class and code; the zoo runs a tiny ResNet)",
}
FUNCTIONAL_LAYERS = {"dropout", "max_pool", "avg_pool", "static_unroll", "dynamic_unroll",
                     "BatchApply", "deep_rnn_with_skip_connections"}

# Layers whose cell under a vmap WITHOUT reduction over a named axis must be an error
# (a per-example state write), and the transforms where that applies.
VMAP_LIKE = ("vmap", "purify.vmap")
PER_EXAMPLE_STATE = [l.name for l in ZOO if l.state and not l.batch_stats]


def layers_for(transform):
  if transform in VMAP_LIKE:
    return [l for l in ZOO if l.name not in PER_EXAMPLE_STATE]
  return list(ZOO)


def error_cells_for(transform):
  return PER_EXAMPLE_STATE if transform in VMAP_LIKE else []


# ===================================================================== the models
def tmap(f, *trees):
  return jax.tree_util.tree_map(f, *trees)


def zeros_of(shapes):
  return tmap(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def split_floats(x):
  """``x``'s float leaves and ``rebuild(vals) -> x`` with those leaves replaced."""
  leaves, treedef = jax.tree_util.tree_flatten(x)
  floats = [i for i, v in enumerate(leaves) if jnp.issubdtype(v.dtype, jnp.floating)]

  def rebuild(vals):
    full = list(leaves)
    for i, v in zip(floats, vals):
      full[i] = v
    return jax.tree_util.tree_unflatten(treedef, full)
  return [leaves[i] for i in floats], rebuild


def scaled_loss(s, y):
  """A scalar loss of the float leaves of ``y``, scaled by ``s``."""
  return sum(jnp.sum(jnp.square(s * v)) for v in jax.tree_util.tree_leaves(y)
             if jnp.issubdtype(v.dtype, jnp.floating))


def grad_of_layer(fn, x):
  """d loss / d (s, float leaves of x) for ``loss = scaled_loss(s, fn(x))`` at s = 1."""
  vals, rebuild = split_floats(x)
  return jax.grad(lambda s, vals: scaled_loss(s, fn(rebuild(vals))), argnums=(0, 1))(
      jnp.float32(1.0), vals)


def wrap(transform, layer, fn, x, ctx):
  """``fn`` (one layer) applied to ``x`` under ``transform``, inside the model."""
  if transform == "plain":
    return fn(x)
  if transform == "vmap":
    return jax.vmap(fn, axis_name=AXIS)(x)
  if transform == "purify.vmap":
    return purify.vmap(fn, axis_name=AXIS, param_axes=0)(x)
  if transform == "scan":
    return jax.lax.scan(lambda c, xi: (c, fn(xi)), None, x)[1]
  if transform == "purify.scan":
    return purify.scan(lambda c, xi: (c, fn(xi)), None, x, param_axes=0)[1]
  if transform == "while_loop":
    out = tmap(lambda s: jnp.zeros((N,) + s.shape, s.dtype), ctx["out_shapes"][layer.name])

    def body(carry):
      i, buf = carry
      y = fn(tmap(lambda a: a[i], x))
      return i + 1, tmap(lambda b, v: b.at[i].set(v), buf, y)
    return jax.lax.while_loop(lambda c: c[0] < N, body, (0, out))[1]
  if transform == "cond":
    shapes = ctx["out_shapes"][layer.name]
    return jax.lax.cond(ctx["pred"], fn, lambda x: zeros_of(shapes), x)
  if transform == "eval_shape":
    return zeros_of(jax.eval_shape(fn, x))
  if transform == "checkpoint":
    return jax.checkpoint(fn)(x)
  if transform == "jit":
    return jax.jit(fn)(x)
  if transform == "grad":
    return grad_of_layer(fn, x)
  raise ValueError(transform)


def zoo_fn(transform, layers, out_shapes=None, axis=None):
  """The model function applying every layer of ``layers`` under ``transform``."""
  def f(xs, pred=True):
    ctx = dict(pred=pred, out_shapes=out_shapes)
    out = {}
    for layer in layers:
      with purify.name_scope(layer.name):
        out[layer.name] = wrap(transform, layer, layer.build(axis), xs[layer.name], ctx)
    return out
  return f


def zoo_model(transform, layers, out_shapes=None, axis=None):
  """One model applying every layer of ``layers`` under ``transform``."""
  return purify.transform_with_state(zoo_fn(transform, layers, out_shapes, axis))


def stack(trees):
  return tmap(lambda *v: jnp.stack(v), *trees)


def unstack(tree, i):
  return tmap(lambda v: v[i], tree)


def subset(tree, names):
  """The entries of a ``{path: ...}`` tree (params/state) or an output dict belonging to
  the layers ``names`` (paths start with the layer's name_scope)."""
  return {k: v for k, v in tree.items() if k.split("/")[0] in names}


def assert_close(got, want, what, tol=TOL):
  gl, gt = jax.tree_util.tree_flatten(got)
  wl, wt = jax.tree_util.tree_flatten(want)
  assert gt == wt, f"{what}: tree {gt} != {wt}"
  for g, w in zip(gl, wl):
    assert g.shape == w.shape and g.dtype == w.dtype, f"{what}: {g.shape}{g.dtype} != {w.shape}{w.dtype}"
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), err_msg=what, **tol)


def shapes_of(tree):
  return tmap(lambda a: (tuple(a.shape), str(a.dtype)), tree)


@dataclasses.dataclass
class Ref:
  S: object          # the reference model (every layer once, plainly)
  P: dict            # its params
  ST0: dict          # its initial state
  x1: dict           # one example per layer
  xs: dict           # N examples per layer (stacked)
  out_shapes: dict   # per layer, the output's ShapeDtypeStructs
  members: list      # N other random param trees (ensemble members / stacked steps)
  cache: dict = dataclasses.field(default_factory=dict)   # results shared between tests

  def apply(self, params, state, rng, x):
    return self.S.apply(params, state, rng, x)

  def loop(self, params_per_step, xs):
    """The Python loop: step ``i`` with params ``params_per_step[i]``, the state of
    step ``i-1`` and the root key with ``i`` folded in. -> (stacked outputs, state)."""
    state, outs = self.ST0, []
    for i in range(N):
      o, state = self.apply(params_per_step[i], state, jax.random.fold_in(ROOT, i),
                            unstack(xs, i))
      outs.append(o)
    return stack(outs), state


def random_like(shapes, rs, positive=False):
  """Random values for a tree of ShapeDtypeStructs (host-side numpy: no compile).
  ``positive``: floats in [0.5, 1.5) (state: variances, averages); ints 3 (counters)."""
  def draw(s):
    if jnp.issubdtype(s.dtype, jnp.integer):
      return jnp.full(s.shape, 3, s.dtype)
    v = rs.uniform(0.5, 1.5, size=s.shape) if positive else 0.5 * rs.normal(size=s.shape)
    return jnp.asarray(v, s.dtype)
  return tmap(draw, shapes)


@pytest.fixture(scope="module")
def ref(fast_compiles):
  """The reference model and its inputs. Params and state are random values of the
  trees ``S.init`` declares (``jax.eval_shape``: no init program is compiled; the
  values only need to be the same on both sides of each comparison)."""
  rs = np.random.RandomState(1)
  x1 = {l.name: l.x(rs) for l in ZOO}
  xs = {l.name: stack([l.x(rs) for i in range(N)]) for l in ZOO}
  S = zoo_model("plain", ZOO)
  p_shapes, st_shapes = jax.eval_shape(S.init, ROOT, x1)
  P, ST0 = random_like(p_shapes, rs), random_like(st_shapes, rs, positive=True)
  out_shapes = jax.eval_shape(S.apply, P, ST0, ROOT, x1)[0]
  members = [random_like(p_shapes, rs) for _ in range(N)]
  return Ref(S, P, ST0, x1, xs, out_shapes, members)


# ========================================================================== tests
def test_zoo_covers_every_public_layer():
  public = set(nn.__all__)
  covered = {c for l in ZOO for c in l.covers}
  layers = {n for n in public if n in FUNCTIONAL_LAYERS or (
      inspect.isclass(getattr(nn, n)) and issubclass(getattr(nn, n), purify.Module))}
  missing = layers - covered - set(EXCLUDED)
  assert not missing, f"public layers missing from the zoo: {sorted(missing)}"
  unknown = public - covered - set(EXCLUDED)
  assert not unknown, f"purify.nn exports neither in the zoo nor excluded: {sorted(unknown)}"
  assert not set(EXCLUDED) - public, "stale exclusions"
  assert covered <= public
  for t in TRANSFORMS:    # every layer x every transform: checked, or an expected error
    cells = [l.name for l in layers_for(t)] + error_cells_for(t)
    assert sorted(cells) == sorted(BY_NAME), t


@pytest.mark.parametrize("transform", ("plain",) + TRANSFORMS)
def test_every_trace_gives_the_same_programs(ref, transform):
  """The programs after every pass depend on the model and its input shapes only:
  traced again (fresh layer objects), the same text at each stage — so the same
  compiled programs (and compilation-cache hits). Session 13 found the init's draws
  ordered by a set's iteration order (by ``id``), a different program each trace."""
  if transform in VMAP_LIKE:
    x = vmap_inputs(ref)
  elif transform in ("scan", "purify.scan", "while_loop"):
    x = ref.xs
  else:
    x = ref.x1
  axis = AXIS if transform in VMAP_LIKE else None

  def stages():
    f = zoo_fn(transform, layers_for(transform), ref.out_shapes, axis)
    return [(name, str(prog)) for name, prog in purify.explain(f, x, key=ROOT)]
  first, again = stages(), stages()
  assert [n for n, _ in first] == [n for n, _ in again]
  for (name, a), (_, b) in zip(first, again):
    assert a == b, f"{transform}: the program after {name} differs between two traces"


def vmap_inputs(r):
  """N examples per layer; layers that draw keys get N identical examples (their rows
  must still differ)."""
  return {n: (tmap(lambda a: jnp.broadcast_to(a, (N,) + a.shape), r.x1[n]) if l.rng
              else r.xs[n]) for n, l in BY_NAME.items()}


def run_vmap(r):
  """The jax.vmap model's (outputs, state) with the shared params (cached: the
  purify.vmap test compares against it too)."""
  if "vmap" not in r.cache:
    names = [l.name for l in layers_for("vmap")]
    t = zoo_model("vmap", layers_for("vmap"), axis=AXIS)
    assert shapes_of(jax.eval_shape(t.init, ROOT, vmap_inputs(r))[0]) == shapes_of(
        subset(r.P, names))
    out, state = t.apply(subset(r.P, names), subset(r.ST0, names), ROOT, vmap_inputs(r))
    again, _ = t.apply(subset(r.P, names), subset(r.ST0, names), ROOT, vmap_inputs(r))
    r.cache["vmap"] = (out, state, again)
  return r.cache["vmap"]


def test_vmap(ref):
  r = ref
  layers = layers_for("vmap")
  names = [l.name for l in layers]
  rng_names = [l.name for l in layers if l.rng]
  stats_names = [l.name for l in layers if l.batch_stats]
  xb = vmap_inputs(r)
  out, state, again = run_vmap(r)
  plain = [n for n in out if n not in rng_names and n not in stats_names]
  for b in range(N):
    want, _ = r.apply(r.P, r.ST0, ROOT, unstack(r.xs, b))
    for n in plain:
      assert_close(unstack(out[n], b), want[n], f"vmap {n} example {b}")
  for n in rng_names:
    rows = [np.asarray(v) for v in jax.tree_util.tree_leaves(out[n])]
    assert all(not np.allclose(v[0], v[1]) for v in rows), f"vmap {n}: examples share a key"
  key = lambda b: keys.fold_indices(keys.rng_key(ROOT, "dropout#0"), b)
  for b in range(N):
    want = nn.dropout(0.5, r.x1["dropout"], rng=key(b))
    np.testing.assert_array_equal(out["dropout"][b], want)
  for n in rng_names:
    assert_close(again[n], out[n], f"vmap {n} reproducible", tol=dict(rtol=0, atol=0))
  # BatchNorm-like layers with cross_replica_axis: the statistics of the whole batch
  merge = lambda a: a.reshape((-1,) + a.shape[2:])
  merged = zoo_model("plain", [BY_NAME[n] for n in stats_names])
  want, want_state = merged.apply(subset(r.P, stats_names), subset(r.ST0, stats_names), None,
                                  {n: merge(xb[n]) for n in stats_names})
  for n in stats_names:
    assert_close(out[n], want[n].reshape(out[n].shape), f"vmap {n}")
  assert_close(subset(state, stats_names), want_state, "vmap batch-stat state")
  others = set(names) - set(stats_names)
  assert_close(subset(state, others), subset(r.ST0, others), "vmap untouched state",
               tol=dict(rtol=0, atol=0))


@pytest.mark.parametrize("transform", ["scan", "while_loop"])
def test_loops(ref, transform):
  r = ref
  t = zoo_model(transform, ZOO, out_shapes=r.out_shapes)
  out, state = t.apply(r.P, r.ST0, ROOT, r.xs)
  want, want_state = r.loop([r.P] * N, r.xs)
  for n in BY_NAME:
    assert_close(out[n], want[n], f"{transform} {n}")
  assert_close(state, want_state, f"{transform} state")


def test_cond(ref):
  r = ref
  t = zoo_model("cond", ZOO, out_shapes=r.out_shapes)
  want, want_state = r.apply(r.P, r.ST0, ROOT, r.x1)
  out, state = t.apply(r.P, r.ST0, ROOT, r.x1, jnp.bool_(True))
  for n in BY_NAME:
    assert_close(out[n], want[n], f"cond(True) {n}")
  assert_close(state, want_state, "cond(True) state")
  out, state = t.apply(r.P, r.ST0, ROOT, r.x1, jnp.bool_(False))
  assert_close(out, zeros_of(r.out_shapes), "cond(False)", tol=dict(rtol=0, atol=0))
  assert_close(state, r.ST0, "cond(False) state", tol=dict(rtol=0, atol=0))


def test_eval_shape(ref):
  r = ref
  t = zoo_model("eval_shape", ZOO)
  params, _ = jax.eval_shape(t.init, ROOT, r.x1)
  assert shapes_of(params) == shapes_of(r.P)          # the real call's params exist
  out, state = t.apply(r.P, r.ST0, ROOT, r.x1)
  assert shapes_of(out) == shapes_of(r.out_shapes)    # the real call's shapes
  assert_close(state, r.ST0, "eval_shape: state writes have no effect", tol=dict(rtol=0, atol=0))


@pytest.mark.parametrize("transform", ["checkpoint", "jit"])
def test_checkpoint_and_jit(ref, transform):
  r = ref
  t = zoo_model(transform, ZOO)
  out, state = t.apply(r.P, r.ST0, ROOT, r.x1)
  want, want_state = r.apply(r.P, r.ST0, ROOT, r.x1)
  for n in BY_NAME:
    assert_close(out[n], want[n], f"{transform} {n}")
  assert_close(state, want_state, f"{transform} state")


def test_grad_inside_the_model(ref):
  """``jax.grad`` inside the model == ``jax.grad`` of S's pure apply."""
  r = ref
  names = list(BY_NAME)
  t = zoo_model("grad", [BY_NAME[n] for n in names])
  out, _ = t.apply(subset(r.P, names), subset(r.ST0, names), ROOT, r.x1)

  def reference(args):     # ONE call of S's pure apply; layer n depends only on x[n]
    x = dict(r.x1)
    for n in names:
      x[n] = split_floats(r.x1[n])[1](args[n][1])
    out = r.apply(r.P, r.ST0, ROOT, x)[0]
    return sum(scaled_loss(args[n][0], out[n]) for n in names)

  args = {n: (jnp.float32(1.0), split_floats(r.x1[n])[0]) for n in names}
  want = jax.jit(jax.grad(reference))(args)
  for n in names:
    assert_close(out[n], want[n], f"grad {n}", tol=dict(rtol=1e-4, atol=1e-4))


def test_purify_vmap_param_axes(ref):
  r = ref
  layers = layers_for("purify.vmap")
  names = [l.name for l in layers]
  rng_or_stats = [l.name for l in layers if l.rng or l.batch_stats]
  t = zoo_model("purify.vmap", layers, axis=AXIS)
  xb = vmap_inputs(r)
  params = jax.eval_shape(t.init, ROOT, xb)[0]
  assert shapes_of(params) == shapes_of(tmap(lambda a: jnp.stack([a] * N), subset(r.P, names)))
  # every member with P: exactly jax.vmap with shared P (keys too)
  want, want_state, _ = run_vmap(r)
  st0 = subset(r.ST0, names)
  out, state = t.apply(tmap(lambda a: jnp.stack([a] * N), subset(r.P, names)), st0, ROOT, xb)
  for n in names:
    assert_close(out[n], want[n], f"purify.vmap(P) {n}")
  assert_close(state, want_state, "purify.vmap(P) state")
  # distinct members: example b uses member b's params
  members = r.members
  out, _ = t.apply(stack([subset(p, names) for p in members]), st0, ROOT, xb)
  for b in range(N):
    want, _ = r.apply(members[b], r.ST0, ROOT, unstack(xb, b))
    for n in names:
      if n not in rng_or_stats:
        assert_close(unstack(out[n], b), want[n], f"purify.vmap member {b} {n}")


def test_purify_scan_param_axes(ref):
  r = ref
  t = zoo_model("purify.scan", ZOO)
  steps = r.members
  assert shapes_of(jax.eval_shape(t.init, ROOT, r.xs)[0]) == shapes_of(stack(steps))
  out, state = t.apply(stack(steps), r.ST0, ROOT, r.xs)
  want, want_state = r.loop(steps, r.xs)
  for n in BY_NAME:
    assert_close(out[n], want[n], f"purify.scan {n}")
  assert_close(state, want_state, "purify.scan state")


@pytest.mark.parametrize("transform", VMAP_LIKE)
@pytest.mark.parametrize("name", PER_EXAMPLE_STATE + ["BatchNorm_train", "ResNet_train",
                                                      "BlockV2_train"])
def test_per_example_state_is_refused(ref, transform, name):
  """Without a named axis to reduce over, a per-example state write under a vmap is
  an error (no compile: it fails while tracing)."""
  layer = BY_NAME[name]
  t = zoo_model(transform, [layer], axis=None)
  with pytest.raises(purify.PurifyError, match="per-example|PerExample|pmean"):
    t.init(ROOT, {name: ref.xs[name]})
