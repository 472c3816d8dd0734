"""Equinox versions of the benchmark models (idiomatic: layers act on one example and
are vmapped; convolutions are channels-first; BatchNorm reads a named vmap axis and
keeps its statistics in an ``eqx.nn.State``; layer stacks are built with filter_vmap
and run with lax.scan over the array part). Equinox's LayerNorm has only the exact
variance, so the LayerNorm section has no fast-variance row for it.
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from bench import common


def _models(model, c, counter):
  if model == "mlp":
    class MLP(eqx.Module):
      mlp: eqx.nn.MLP

      def __init__(self, d_in, key):
        w = c["widths"]
        assert len(set(w)) == 1, "eqx.nn.MLP has one hidden width"
        self.mlp = eqx.nn.MLP(d_in, w[-1], w[0], len(w) - 1, activation=jax.nn.relu, key=key)

      def __call__(self, x):
        counter.tick()
        return jax.vmap(self.mlp)(x)
    return lambda x, key: MLP(x.shape[-1], key)

  if model == "resnet50":
    bn = lambda ch: eqx.nn.BatchNorm(ch, axis_name="batch", momentum=0.9, eps=1e-5, mode="ema")
    conv = lambda cin, ch, k, s, key: eqx.nn.Conv2d(cin, ch, k, stride=s, padding="SAME",
                                                    use_bias=False, key=key)

    class Bottleneck(eqx.Module):
      proj: eqx.nn.Conv2d | None
      proj_bn: eqx.nn.BatchNorm | None
      c0: eqx.nn.Conv2d
      bn0: eqx.nn.BatchNorm
      c1: eqx.nn.Conv2d
      bn1: eqx.nn.BatchNorm
      c2: eqx.nn.Conv2d
      bn2: eqx.nn.BatchNorm

      def __init__(self, cin, ch, stride, proj, key):
        k = jax.random.split(key, 4)
        self.proj = conv(cin, ch, 1, stride, k[0]) if proj else None
        self.proj_bn = bn(ch) if proj else None
        self.c0, self.bn0 = conv(cin, ch // 4, 1, 1, k[1]), bn(ch // 4)
        self.c1, self.bn1 = conv(ch // 4, ch // 4, 3, stride, k[2]), bn(ch // 4)
        self.c2, self.bn2 = conv(ch // 4, ch, 1, 1, k[3]), bn(ch)

      def __call__(self, x, state):
        short = x
        if self.proj is not None:
          short, state = self.proj_bn(self.proj(x), state)
        y, state = self.bn0(self.c0(x), state)
        y, state = self.bn1(self.c1(jax.nn.relu(y)), state)
        y, state = self.bn2(self.c2(jax.nn.relu(y)), state)
        return jax.nn.relu(y + short), state

    class ResNet(eqx.Module):
      stem: eqx.nn.Conv2d
      stem_bn: eqx.nn.BatchNorm
      pool: eqx.nn.MaxPool2d
      blocks: list
      logits: eqx.nn.Linear

      def __init__(self, cin, key):
        keys = iter(jax.random.split(key, 2 + sum(c["blocks"])))
        self.stem, self.stem_bn = conv(cin, c["stem"], 7, 2, next(keys)), bn(c["stem"])
        self.pool = eqx.nn.MaxPool2d(3, 2, padding=1)
        blocks, ch_in = [], c["stem"]
        for g, (n, ch) in enumerate(zip(c["blocks"], c["channels"])):
          for b in range(n):
            blocks.append(Bottleneck(ch_in, ch, (1 if g == 0 else 2) if b == 0 else 1, b == 0,
                                     next(keys)))
            ch_in = ch
        self.blocks = blocks
        self.logits = eqx.nn.Linear(ch_in, c["classes"], key=next(keys))

      def one(self, x, state):            # x: (C, H, W)
        h, state = self.stem_bn(self.stem(x), state)
        h = self.pool(jax.nn.relu(h))
        for b in self.blocks:
          h, state = b(h, state)
        return self.logits(jnp.mean(h, (1, 2))), state

      def __call__(self, x, state):       # x: (N, H, W, C), the others' layout
        counter.tick()
        return jax.vmap(self.one, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
            jnp.transpose(x, (0, 3, 1, 2)), state)
    return lambda x, key: eqx.nn.make_with_state(ResNet)(x.shape[-1], key)

  scan = model == "transformer_scan"
  d = c["d"]

  class Block(eqx.Module):
    ln_attn: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln_mlp: eqx.nn.LayerNorm
    mlp_in: eqx.nn.Linear
    mlp_out: eqx.nn.Linear

    def __init__(self, key):
      k = jax.random.split(key, 3)
      self.ln_attn = eqx.nn.LayerNorm(d, eps=1e-5)
      self.attn = eqx.nn.MultiheadAttention(c["heads"], d, use_query_bias=True,
                                            use_key_bias=True, use_value_bias=True,
                                            use_output_bias=True, key=k[0])
      self.ln_mlp = eqx.nn.LayerNorm(d, eps=1e-5)
      self.mlp_in = eqx.nn.Linear(d, c["mlp"], key=k[1])
      self.mlp_out = eqx.nn.Linear(c["mlp"], d, key=k[2])

    def __call__(self, h):                 # h: (T, d)
      a = jax.vmap(self.ln_attn)(h)
      h = h + self.attn(a, a, a, mask=common.causal_mask(h.shape[0]))
      m = jax.vmap(self.ln_mlp)(h)
      return h + jax.vmap(self.mlp_out)(jax.nn.gelu(jax.vmap(self.mlp_in)(m)))

  class LM(eqx.Module):
    embed: eqx.nn.Embedding
    pos: eqx.nn.Embedding
    blocks: object
    ln_final: eqx.nn.LayerNorm
    logits: eqx.nn.Linear

    def __init__(self, t, key):
      k = jax.random.split(key, 4)
      self.embed = eqx.nn.Embedding(c["vocab"], d, key=k[0])
      self.pos = eqx.nn.Embedding(t, d, key=k[1])
      bkeys = jax.random.split(k[2], c["layers"])
      if scan:
        self.blocks = eqx.filter_vmap(Block)(bkeys)
      else:
        self.blocks = [Block(bk) for bk in bkeys]
      self.ln_final = eqx.nn.LayerNorm(d, eps=1e-5)
      self.logits = eqx.nn.Linear(d, c["vocab"], key=k[3])

    def one(self, tok):                     # tok: (T,)
      h = jax.vmap(self.embed)(tok) + jax.vmap(self.pos)(jnp.arange(tok.shape[0]))
      if scan:
        dyn, static = eqx.partition(self.blocks, eqx.is_array)
        h = jax.lax.scan(lambda h, p: (eqx.combine(p, static)(h), None), h, dyn)[0]
      else:
        for b in self.blocks:
          h = b(h)
      return jax.vmap(self.logits)(jax.vmap(self.ln_final)(h))

    def __call__(self, tokens):
      counter.tick()
      return jax.vmap(self.one)(tokens)
  return lambda x, key: LM(x.shape[-1], key)


def build(model, cfg, fast_variance=False):
  if fast_variance:
    raise common.Unavailable("n/a: eqx.nn.LayerNorm has no fast-variance option")
  counter = common.Counter()
  make = _models(model, common.model_cfg(model, cfg), counter)
  stateful = model == "resnet50"
  cell = {}

  def init(key, x):
    made = make(x, key)
    m, state = made if stateful else (made, None)
    params, static = eqx.partition(m, eqx.is_array)
    cell["static"] = static
    return (params, state) if stateful else params

  def fwd(v, x):
    if stateful:
      return eqx.combine(v[0], cell["static"])(x, v[1])
    return eqx.combine(v, cell["static"])(x)

  def loss(p, rest, x, y):
    if stateful:
      out, state = eqx.combine(p, cell["static"])(x, rest)
      return common.loss_of(model, out, y), state
    return common.loss_of(model, eqx.combine(p, cell["static"])(x), y), None

  def natural(key, x, mark):
    made = make(x, key)
    mark()
    if stateful:
      m, s = made
      m(x, s)
      mark()
      eqx.filter_jit(lambda m, x, s: m(x, s))(m, x, s)
    else:
      made(x)
      mark()
      eqx.filter_jit(lambda m, x: m(x))(made, x)
    mark()

  return common.Impl("equinox", model, init=init, fwd=fwd, loss=loss, counter=counter,
                     natural=natural,
                     split=(lambda v: v) if stateful else (lambda v: (v, None)),
                     merge=(lambda p, s: (p, s)) if stateful else (lambda p, _: p),
                     notes="LayerNorm: exact only (jnp.var)")
