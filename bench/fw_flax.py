"""Flax linen and Flax NNX versions of the benchmark models (idiomatic layers).

Differences of convention, none of which changes the parameter count: Flax's
attention kernels are (d, heads, head_dim); LayerNorm is set to the exact variance
(``use_fast_variance=False``) unless the LayerNorm section asks for the fast one
(Flax's default); BatchNorm uses momentum 0.9 like the others.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from bench import common


# ============================================================================ linen
def _linen_models(model, c, counter, fast):
  if model == "mlp":
    class MLP(nn.Module):
      @nn.compact
      def __call__(self, x):
        counter.tick()
        for i, w in enumerate(c["widths"]):
          x = nn.Dense(w)(x)
          if i < len(c["widths"]) - 1:
            x = jax.nn.relu(x)
        return x
    return MLP()

  if model == "resnet50":
    bn = lambda: nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)

    class Bottleneck(nn.Module):
      channels: int
      stride: int
      proj: bool

      @nn.compact
      def __call__(self, x):
        conv = lambda ch, k, s: nn.Conv(ch, (k, k), strides=(s, s), padding="SAME",
                                        use_bias=False)
        short = x
        if self.proj:
          short = bn()(conv(self.channels, 1, self.stride)(x))
        y = jax.nn.relu(bn()(conv(self.channels // 4, 1, 1)(x)))
        y = jax.nn.relu(bn()(conv(self.channels // 4, 3, self.stride)(y)))
        y = bn()(conv(self.channels, 1, 1)(y))
        return jax.nn.relu(y + short)

    class ResNet(nn.Module):
      @nn.compact
      def __call__(self, x):
        counter.tick()
        h = nn.Conv(c["stem"], (7, 7), strides=(2, 2), padding="SAME", use_bias=False)(x)
        h = jax.nn.relu(bn()(h))
        h = nn.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")
        for g, (n, ch) in enumerate(zip(c["blocks"], c["channels"])):
          for b in range(n):
            h = Bottleneck(ch, (1 if g == 0 else 2) if b == 0 else 1, b == 0)(h)
        return nn.Dense(c["classes"])(jnp.mean(h, (1, 2)))
    return ResNet()

  scan = model == "transformer_scan"

  class Block(nn.Module):
    @nn.compact
    def __call__(self, h, _=None):
      t = h.shape[-2]
      a = nn.LayerNorm(epsilon=1e-5, use_fast_variance=fast)(h)
      a = nn.MultiHeadDotProductAttention(num_heads=c["heads"], qkv_features=c["d"],
                                          out_features=c["d"])(
          a, a, a, mask=common.causal_mask(t)[None, None])
      h = h + a
      m = nn.LayerNorm(epsilon=1e-5, use_fast_variance=fast)(h)
      h = h + nn.Dense(c["d"])(jax.nn.gelu(nn.Dense(c["mlp"])(m)))
      return (h, None) if scan else h

  class LM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
      counter.tick()
      t = tokens.shape[-1]
      h = nn.Embed(c["vocab"], c["d"])(tokens) + nn.Embed(t, c["d"])(jnp.arange(t))
      if scan:
        h, _ = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=c["layers"])()(h, None)
      else:
        for _ in range(c["layers"]):
          h = Block()(h)
      h = nn.LayerNorm(epsilon=1e-5, use_fast_variance=fast)(h)
      return nn.Dense(c["vocab"])(h)
  return LM()


def build_linen(model, cfg, fast_variance=False):
  counter = common.Counter()
  m = _linen_models(model, common.model_cfg(model, cfg), counter, fast_variance)
  stateful = model == "resnet50"
  if stateful:
    fwd = lambda v, x: m.apply(v, x, mutable=["batch_stats"])

    def loss(p, rest, x, y):
      out, upd = m.apply({"params": p, **rest}, x, mutable=["batch_stats"])
      return common.loss_of(model, out, y), upd
  else:
    fwd = lambda v, x: m.apply(v, x)

    def loss(p, rest, x, y):
      return common.loss_of(model, m.apply({"params": p, **rest}, x), y), rest

  def natural(key, x, mark):
    v = m.init(key, x)
    mark()
    m.apply(v, x, mutable=["batch_stats"]) if stateful else m.apply(v, x)
    mark()
    jax.jit(fwd)(v, x)
    mark()

  return common.Impl(
      "linen", model, init=lambda k, x: m.init(k, x), fwd=fwd, loss=loss, counter=counter,
      natural=natural,
      split=lambda v: (v["params"], {k: a for k, a in v.items() if k != "params"}),
      merge=lambda p, rest: {"params": p, **rest},
      notes="LayerNorm default: fast variance (use_fast_variance=True)")


# ============================================================================ NNX
def _nnx_models(model, c, counter, fast):
  if model == "mlp":
    class MLP(nnx.Module):
      def __init__(self, d_in, rngs):
        sizes = (d_in,) + tuple(c["widths"])
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

      def __call__(self, x):
        counter.tick()
        for i, layer in enumerate(self.layers):
          x = layer(x)
          if i < len(self.layers) - 1:
            x = jax.nn.relu(x)
        return x
    return lambda x, rngs: MLP(x.shape[-1], rngs)

  if model == "resnet50":
    bn = lambda ch, rngs: nnx.BatchNorm(ch, momentum=0.9, epsilon=1e-5, rngs=rngs)
    conv = lambda cin, ch, k, s, rngs: nnx.Conv(cin, ch, (k, k), strides=(s, s),
                                                padding="SAME", use_bias=False, rngs=rngs)

    class Bottleneck(nnx.Module):
      def __init__(self, cin, ch, stride, proj, rngs):
        self.proj = conv(cin, ch, 1, stride, rngs) if proj else None
        self.proj_bn = bn(ch, rngs) if proj else None
        self.c0, self.bn0 = conv(cin, ch // 4, 1, 1, rngs), bn(ch // 4, rngs)
        self.c1, self.bn1 = conv(ch // 4, ch // 4, 3, stride, rngs), bn(ch // 4, rngs)
        self.c2, self.bn2 = conv(ch // 4, ch, 1, 1, rngs), bn(ch, rngs)

      def __call__(self, x):
        short = self.proj_bn(self.proj(x)) if self.proj is not None else x
        y = jax.nn.relu(self.bn0(self.c0(x)))
        y = jax.nn.relu(self.bn1(self.c1(y)))
        return jax.nn.relu(self.bn2(self.c2(y)) + short)

    class ResNet(nnx.Module):
      def __init__(self, cin, rngs):
        self.stem, self.stem_bn = conv(cin, c["stem"], 7, 2, rngs), bn(c["stem"], rngs)
        blocks, ch_in = [], c["stem"]
        for g, (n, ch) in enumerate(zip(c["blocks"], c["channels"])):
          for b in range(n):
            blocks.append(Bottleneck(ch_in, ch, (1 if g == 0 else 2) if b == 0 else 1, b == 0,
                                     rngs))
            ch_in = ch
        self.blocks = nnx.List(blocks)
        self.logits = nnx.Linear(ch_in, c["classes"], rngs=rngs)

      def __call__(self, x):
        counter.tick()
        h = jax.nn.relu(self.stem_bn(self.stem(x)))
        h = nn.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")
        for b in self.blocks:
          h = b(h)
        return self.logits(jnp.mean(h, (1, 2)))
    return lambda x, rngs: ResNet(x.shape[-1], rngs)

  scan = model == "transformer_scan"
  d = c["d"]

  class Block(nnx.Module):
    def __init__(self, rngs):
      self.ln_attn = nnx.LayerNorm(d, epsilon=1e-5, use_fast_variance=fast, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(c["heads"], d, d, d, decode=False, rngs=rngs)
      self.ln_mlp = nnx.LayerNorm(d, epsilon=1e-5, use_fast_variance=fast, rngs=rngs)
      self.mlp_in = nnx.Linear(d, c["mlp"], rngs=rngs)
      self.mlp_out = nnx.Linear(c["mlp"], d, rngs=rngs)

    def __call__(self, h):
      t = h.shape[-2]
      a = self.ln_attn(h)
      h = h + self.attn(a, a, a, mask=common.causal_mask(t)[None, None])
      return h + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln_mlp(h))))

  class LM(nnx.Module):
    def __init__(self, t, rngs):
      self.embed = nnx.Embed(c["vocab"], d, rngs=rngs)
      self.pos = nnx.Embed(t, d, rngs=rngs)
      if scan:
        @nnx.split_rngs(splits=c["layers"])
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
          return Block(rngs)
        self.blocks = make(rngs)
      else:
        self.blocks = nnx.List([Block(rngs) for _ in range(c["layers"])])
      self.ln_final = nnx.LayerNorm(d, epsilon=1e-5, use_fast_variance=fast, rngs=rngs)
      self.logits = nnx.Linear(d, c["vocab"], rngs=rngs)

    def __call__(self, tokens):
      counter.tick()
      t = tokens.shape[-1]
      h = self.embed(tokens) + self.pos(jnp.arange(t))
      if scan:
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(h, block):
          return block(h)
        h = body(h, self.blocks)
      else:
        for b in self.blocks:
          h = b(h)
      return self.logits(self.ln_final(h))
  return lambda x, rngs: LM(x.shape[-1], rngs)


def build_nnx(model, cfg, fast_variance=False):
  counter = common.Counter()
  make = _nnx_models(model, common.model_cfg(model, cfg), counter, fast_variance)
  stateful = model == "resnet50"
  cell = {}

  def init(key, x):
    m = make(x, nnx.Rngs(params=key))
    g, params, rest = nnx.split(m, nnx.Param, ...)
    cell["graphdef"] = g
    return params, rest

  def run(params, rest, x):
    m = nnx.merge(cell["graphdef"], params, rest, copy=True)
    out = m(x)
    if stateful:
      return out, nnx.split(m, nnx.Param, ...)[2]
    return out, rest

  def fwd(v, x):
    out, rest = run(v[0], v[1], x)
    return (out, rest) if stateful else out

  def loss(p, rest, x, y):
    out, rest = run(p, rest, x)
    return common.loss_of(model, out, y), rest

  def natural(key, x, mark):
    m = make(x, nnx.Rngs(params=key))
    mark()
    m(x)
    mark()
    nnx.jit(lambda m, x: m(x))(m, x)
    mark()

  return common.Impl("nnx", model, init=init, fwd=fwd, loss=loss, counter=counter,
                     natural=natural, split=lambda v: v, merge=lambda p, r: (p, r),
                     notes="LayerNorm default: fast variance (use_fast_variance=True); "
                           "jitted as jax.jit over nnx.split/merge")
