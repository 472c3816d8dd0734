"""purify.nn.ResNet* vs dm-haiku's hk.nets.ResNet* run in the same test: the same param
and state trees (paths, names, shapes, dtypes), and Haiku's params and Haiku-written
state loaded into purify give the same logits and the same new state (training,
evaluation, test_local_stats), for ResNet-50, ResNet-18 and option variants.

Compiles dominate: each model is compiled once per side (jit), XLA's optimizations
are off for this module (the ``fast_compiles`` fixture), trees are compared with jax.eval_shape.
"""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
import purify.nn as pnn

KEY = jax.random.PRNGKey(0)


pytestmark = pytest.mark.usefixtures("fast_compiles")


def normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def sig(tree):
  """{module: {name: (shape, dtype)}} of a params/state tree (arrays or ShapeDtypeStructs)."""
  return {m: {n: (tuple(v.shape), np.dtype(v.dtype)) for n, v in sub.items()}
          for m, sub in tree.items()}


def both(build):
  """(purify, haiku) transform_with_state of ``build(nn)(x, is_training, test_local_stats)``."""
  return (purify.transform_with_state(lambda x, t, l=False: build(pnn)(x, t, l)),
          hk.transform_with_state(lambda x, t, l=False: build(hk.nets)(x, t, l)))


def init_shapes(pt, ht, x):
  """Both init trees, abstractly (no compile)."""
  pp, ps = jax.eval_shape(lambda k, x: pt.init(k, x, True), KEY, x)
  hp, hs = jax.eval_shape(lambda k, x: ht.init(k, x, True), KEY, x)
  return (pp, ps), (hp, hs)


def random_params(shapes, seed=1):
  """Params for Haiku's tree at an init-like scale, none of them trivial (Haiku's init
  has zero logits): conv/linear w ~ N(0, 1/fan_in), scale ~ 1 + 0.1 N, offsets and biases
  ~ 0.1 N."""
  rng = np.random.default_rng(seed)
  def leaf(name, s):
    if name == "w":
      v = rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    elif name == "scale":
      v = 1 + 0.1 * rng.standard_normal(s.shape)
    else:
      v = 0.1 * rng.standard_normal(s.shape)
    return jnp.asarray(v, s.dtype)
  return {m: {n: leaf(n, s) for n, s in sub.items()} for m, sub in shapes.items()}


def zeros_like_tree(shapes):
  return {m: {n: jnp.zeros(s.shape, s.dtype) for n, s in sub.items()}
          for m, sub in shapes.items()}


def run_steps(t, local):
  """One jitted function per side: a training step from ``state`` (logits, new state),
  evaluation with the new state, and (``local``) evaluation with test_local_stats."""
  def f(params, state, x, x_eval):
    y_train, state1 = t.apply(params, state, None, x, True)
    y_eval, state2 = t.apply(params, state1, None, x_eval, False)
    if not local:
      return y_train, state1, y_eval, state2
    y_local, state3 = t.apply(params, state1, None, x_eval, False, True)
    return y_train, state1, y_eval, state2, y_local, state3
  return jax.jit(f)


def assert_close(got, want, what, rtol=1e-5, atol=1e-5):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol,
                             err_msg=what)


def assert_trees_close(got, want, what, **tol):
  assert sig(got) == sig(want), what
  for m, sub in want.items():
    for n, v in sub.items():
      assert_close(got[m][n], v, f"{what}: {m}/{n}", **tol)


def check_outputs(build, x, x_eval, local=False, **tol):
  """Trees equal; Haiku's params and state give purify the same logits/new states (and,
  with ``local``, test_local_stats logits)."""
  pt, ht = both(build)
  (pp, ps), (hp, hs) = init_shapes(pt, ht, x)
  assert sig(pp) == sig(hp) and sig(ps) == sig(hs)
  params = random_params(hp)
  state = zeros_like_tree(hs)        # Haiku's moving averages before any step
  got = run_steps(pt, local)(params, state, x, x_eval)
  want = run_steps(ht, local)(params, state, x, x_eval)
  names = ["train logits", "train state", "eval logits", "eval state", "local logits",
           "local state"]
  for name, g, w in zip(names, got, want):
    if isinstance(w, dict):
      assert_trees_close(g, w, name, **tol)
    else:
      assert g.shape == w.shape and g.dtype == w.dtype, name
      assert_close(g, w, name, **tol)
  # the step really wrote Haiku-style state (counter 1, debiased averages = batch stats)
  counters = {float(v["counter"]) for m, v in got[1].items()}
  assert counters == {1.0}
  assert all(float(jnp.abs(v["average"]).max()) > 0 for v in got[1].values())
  # evaluation leaves the state alone
  assert_trees_close(got[3], got[1], "eval keeps state", rtol=0, atol=0)
  assert len(got) == (6 if local else 4)
  return pp, ps


# ------------------------------------------------------------------------------- ResNet-50
def test_resnet50_trees_and_logits_are_haikus():
  """Exactly Haiku's param and state trees (checked in check_outputs: paths, names,
  shapes, dtypes). A training step from zero state gives the same logits and new state;
  then evaluation with that Haiku-written state (moving averages after one step) gives
  the same logits and leaves the state alone."""
  x = normal(0, (2, 32, 32, 3))
  x_eval = x + 0.05 * normal(1, (2, 32, 32, 3))  # near x: 1x1 late stages, batch of 2
  pp, ps = check_outputs(lambda nn: nn.ResNet50(num_classes=10), x, x_eval, rtol=1e-4,
                         atol=1e-4)
  assert len(pp) == 107 and len(ps) == 106     # 53 convs+bns+logits; 53 bns x 2 EMAs
  assert pp["res_net50/~/initial_conv"]["w"].shape == (7, 7, 3, 64)
  assert pp["res_net50/~/block_group_0/~/block_0/~/conv_0"]["w"].shape == (1, 1, 64, 64)
  assert pp["res_net50/~/block_group_3/~/block_2/~/batchnorm_2"]["scale"].shape == (
      1, 1, 1, 2048)
  assert pp["res_net50/~/logits"]["w"].shape == (2048, 10)
  assert set(ps["res_net50/~/block_group_0/~/block_0/~/batchnorm_0/~/mean_ema"]) == {
      "counter", "hidden", "average"}


# ------------------------------------------------------------------------ ResNet-18 / 34
# (ResNet-18 v1/v2 and ResNet-50 trees: in the outputs tests below/above)
@pytest.mark.parametrize("depth,kw", [
    (34, {}), (34, dict(resnet_v2=True)),
    (18, dict(strides=(1, 1, 2, 2), name="net",
              initial_conv_config=dict(output_channels=64, kernel_shape=3, stride=1),
              logits_config=dict(with_bias=False))),
])
def test_resnet_trees_are_haikus(depth, kw):
  x = jnp.zeros((1, 16, 16, 3))
  pt, ht = both(lambda nn: getattr(nn, f"ResNet{depth}")(num_classes=7, **kw))
  (pp, ps), (hp, hs) = init_shapes(pt, ht, x)
  assert sig(pp) == sig(hp)
  assert sig(ps) == sig(hs)
  prefix = kw.get("name", f"res_net{depth}")
  assert f"{prefix}/~/logits" in pp
  assert (f"{prefix}/~/final_batchnorm" in pp) == kw.get("resnet_v2", False)
  assert (f"{prefix}/~/initial_batchnorm" in pp) != kw.get("resnet_v2", False)


@pytest.mark.parametrize("kw", [
    {},
    dict(resnet_v2=True, bn_config=dict(decay_rate=0.5, eps=1e-3)),
])
def test_resnet18_outputs_match_haiku(kw):
  """Training and evaluation on Haiku's params and state: the same logits and new
  states (test_local_stats: in the small custom ResNet's test)."""
  x = normal(2, (2, 32, 32, 3))
  x_eval = x + 0.05 * normal(3, (2, 32, 32, 3))
  check_outputs(lambda nn: nn.ResNet18(num_classes=10, **kw), x, x_eval)


def test_small_custom_resnet_outputs_match_haiku():
  """The generic ResNet with every option off its default: v2 bottleneck blocks, mixed
  projections, strides, initial conv and logits configs, BatchNorm options; also
  test_local_stats."""
  def build(nn):
    return nn.ResNet(
        blocks_per_group=(1, 1, 1, 1), num_classes=5, resnet_v2=True, bottleneck=True,
        channels_per_group=(16, 16, 32, 32), use_projection=(True, False, True, False),
        bn_config=dict(decay_rate=0.8, create_offset=False), strides=(2, 1, 2, 1),
        initial_conv_config=dict(output_channels=8, kernel_shape=3, stride=1),
        logits_config=dict(with_bias=False, name="head"), name="tiny")
  x = normal(4, (3, 16, 16, 3))
  pp, _ = check_outputs(build, x, x + 0.05 * normal(5, x.shape), local=True)
  assert "tiny/~/head" in pp and set(pp["tiny/~/head"]) == {"w"}
  assert "tiny/~/block_group_1/~/block_0/~/shortcut_conv" not in pp
  assert "tiny/~/block_group_2/~/block_0/~/shortcut_conv" in pp


def test_deeper_presets_are_haikus_configs():
  """ResNet101/152/200 are configs: the same block counts, channels and projections as
  Haiku's (checked on the constructed modules; tracing them all would be slow)."""
  assert pnn.ResNet.CONFIGS == hk.nets.ResNet.CONFIGS
  built = {}
  def f(x):
    for depth in (50, 101, 152, 200):
      net = getattr(pnn, f"ResNet{depth}")(num_classes=3)
      built[depth] = (net.module_name,
                      [(len(g.blocks), [type(b).__name__ for b in g.blocks],
                        [b.use_projection for b in g.blocks]) for g in net.block_groups])
    return x
  purify.transform(f).init(KEY, jnp.zeros(()))
  for depth, (name, groups) in built.items():
    config = hk.nets.ResNet.CONFIGS[depth]
    assert name == f"res_net{depth}"
    assert [n for n, _, _ in groups] == list(config["blocks_per_group"])
    assert all(set(kinds) == {"BlockV1"} for _, kinds, _ in groups)
    assert [p[0] for _, _, p in groups] == list(config["use_projection"])


def test_gradients_match_haiku():
  """Training-mode gradients w.r.t. the params and the images (through the max pool,
  BatchNorm's batch statistics, a bottleneck block with projection, the logits)."""
  def build(nn):
    return nn.ResNet(blocks_per_group=(0, 0, 0, 1), num_classes=3, bottleneck=True,
                     channels_per_group=(8, 8, 16, 16), use_projection=(True,) * 4,
                     initial_conv_config=dict(output_channels=8, kernel_shape=3))
  pt, ht = both(build)
  x = normal(9, (2, 12, 12, 3))
  _, (hp, hs) = init_shapes(pt, ht, x)
  params, state = random_params(hp), zeros_like_tree(hs)
  def grads(t):
    def loss(p, x):
      y, _ = t.apply(p, state, None, x, True)
      return jnp.sum(jnp.sin(3 * y))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  (gp, gx), (hgp, hgx) = grads(pt), grads(ht)
  assert_trees_close(gp, hgp, "param grads", rtol=1e-4, atol=1e-5)
  assert_close(gx, hgx, "image grads", rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(hgx).max()) > 0


def test_deterministic_inits_are_haikus():
  """The inits that are constants in Haiku (zero logits, zero last-BatchNorm scale in v1
  bottleneck blocks, ones/zeros elsewhere) are the same; convs are Haiku's truncated
  normal (std 1/sqrt(fan_in), cut at 2 stds). (Params only: the init state's values are
  BatchNorm's, tested in test_nn_norm.py.)"""
  def build(nn):
    # one bottleneck block (empty groups are allowed): the cheapest program with them all
    return nn.ResNet(blocks_per_group=(0, 0, 0, 1), num_classes=4, bottleneck=True,
                     channels_per_group=(8, 8, 16, 16), use_projection=(True,) * 4,
                     initial_conv_config=dict(output_channels=8, kernel_shape=3))
  pt, ht = both(build)
  x = normal(6, (2, 16, 16, 3))
  pp = jax.jit(lambda k, x: pt.init(k, x, True)[0])(KEY, x)
  hp = jax.jit(lambda k, x: ht.init(k, x, True)[0])(KEY, x)
  assert sig(pp) == sig(hp)
  for m, sub in hp.items():
    for n, v in sub.items():
      if m.endswith("conv") or m.split("/")[-1].startswith("conv_"):
        w = np.asarray(pp[m][n])
        bound = 2 / np.sqrt(np.prod(v.shape[:-1]))
        assert np.abs(w).max() <= bound + 1e-6 and np.abs(w).max() > 0.5 * bound, m
      else:
        assert_close(pp[m][n], v, f"{m}/{n}", rtol=0, atol=0)
  assert float(jnp.abs(pp["res_net/~/block_group_3/~/block_0/~/batchnorm_2"]["scale"]).max()) == 0
  assert float(jnp.abs(pp["res_net/~/logits"]["w"]).max()) == 0


def test_blocks_and_group_standalone_trees():
  """BlockV1 / BlockV2 / BlockGroup used on their own: Haiku's trees (their outputs are
  checked inside the ResNets above: v1 basic in ResNet-18, v1 bottleneck in ResNet-50,
  v2 in ResNet-18 v2 and the small custom ResNet)."""
  bn = dict(decay_rate=0.9)
  def build(nn):
    def model(x, t, l):
      x = nn.ResNet.BlockV1(16, 2, True, bn, bottleneck=False)(x, t, l)
      x = nn.ResNet.BlockV2(16, 1, False, bn, bottleneck=True)(x, t, l)
      return nn.ResNet.BlockGroup(8, 2, 1, bn, resnet_v2=False, bottleneck=True,
                                  use_projection=True)(x, t, l)
    return model
  x = jnp.zeros((2, 8, 8, 4))
  pt, ht = both(build)
  (pp, ps), (hp, hs) = init_shapes(pt, ht, x)
  assert sig(pp) == sig(hp) and sig(ps) == sig(hs)
  assert "block_v1/~/shortcut_batchnorm" in pp
  assert "block_group/~/block_1/~/conv_2" in pp
  assert pnn.BlockV1 is pnn.ResNet.BlockV1 and pnn.BlockGroup is pnn.ResNet.BlockGroup


def test_resnet_checks_lengths():
  with pytest.raises(ValueError, match="blocks_per_group"):
    purify.transform_with_state(
        lambda x: pnn.ResNet((1, 1, 1), 3)(x, True)).init(KEY, jnp.zeros((1, 8, 8, 3)))
