"""Hand-written pure JAX: explicit parameter dicts, one key per parameter, plain functions.

Initializers are Haiku's defaults written out (truncated normal with stddev
1/sqrt(fan_in); zeros for biases; ones/zeros for norm scale/offset), so the programs
are the ones purify and Haiku should produce.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bench import common


def _tn(key, shape, fan_in, scale=1.0):
  std = np.sqrt(scale / fan_in) / 0.87962566103423978
  return jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * std


class _Keys:
  def __init__(self, key):
    self.key = key

  def __call__(self):
    self.key, k = jax.random.split(self.key)
    return k


def _linear_init(k, d_in, d_out):
  return {"w": _tn(k(), (d_in, d_out), d_in), "b": jnp.zeros((d_out,))}


def _linear(p, x):
  return x @ p["w"] + p["b"]


def _ln_init(d):
  return {"scale": jnp.ones((d,)), "offset": jnp.zeros((d,))}


def _ln(p, x, fast):
  mean = jnp.mean(x, -1, keepdims=True)
  if fast:
    var = jnp.mean(jnp.square(x), -1, keepdims=True) - jnp.square(mean)
  else:
    var = jnp.var(x, -1, keepdims=True)
  return p["scale"] * jax.lax.rsqrt(var + 1e-5) * (x - mean) + p["offset"]


# ----------------------------------------------------------------------------- MLP
def mlp(c, counter):
  def init(key, x):
    k = _Keys(key)
    sizes = (x.shape[-1],) + tuple(c["widths"])
    return [_linear_init(k, a, b) for a, b in zip(sizes[:-1], sizes[1:])]

  def fwd(params, x):
    counter.tick()
    for i, p in enumerate(params):
      x = _linear(p, x)
      if i < len(params) - 1:
        x = jax.nn.relu(x)
    return x
  return init, fwd


# ----------------------------------------------------------------------------- ResNet-50
def _conv(w, x, stride):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_init(k, ksize, cin, cout):
  return _tn(k(), (ksize, ksize, cin, cout), ksize * ksize * cin)


def _ema_init(ch):
  return {"counter": jnp.zeros((), jnp.int32), "hidden": jnp.zeros((1, 1, 1, ch)),
          "average": jnp.zeros((1, 1, 1, ch))}


def _bn_init(ch):
  """BatchNorm's parameters and state. The moving averages are Haiku's
  ExponentialMovingAverage (``counter``, the biased ``hidden``, the zero-debiased
  ``average``): the model purify.nn and Haiku run. Init starts them at zero without a
  forward pass — cheaper than purify's and Haiku's init, whose state is the averages
  after the first batch (their init runs the forward)."""
  return ({"scale": jnp.ones((1, 1, 1, ch)), "offset": jnp.zeros((1, 1, 1, ch))},
          {"mean_ema": _ema_init(ch), "var_ema": _ema_init(ch)})


def _ema(s, value, decay=0.9):
  one, decay = np.float32(1.0), np.float32(decay)
  counter = s["counter"] + 1
  hidden = s["hidden"] * decay + value * (one - decay)
  average = hidden / (one - jnp.power(decay, counter))
  return {"counter": counter, "hidden": hidden, "average": average}


def _bn(p, s, x):
  mean = jnp.mean(x, (0, 1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x), (0, 1, 2), keepdims=True) - jnp.square(mean)
  new = {"mean_ema": _ema(s["mean_ema"], mean), "var_ema": _ema(s["var_ema"], var)}
  return (x - mean) * (p["scale"] * jax.lax.rsqrt(var + 1e-5)) + p["offset"], new


def resnet50(c, counter):
  def plan(cin):
    out = []
    for g, (n, ch) in enumerate(zip(c["blocks"], c["channels"])):
      for b in range(n):
        out.append((cin, ch, (1 if g == 0 else 2) if b == 0 else 1, b == 0))
        cin = ch
    return out

  def init(key, x):
    k = _Keys(key)
    params, state = {}, {}
    params["stem"] = _conv_init(k, 7, x.shape[-1], c["stem"])
    params["stem_bn"], state["stem_bn"] = _bn_init(c["stem"])
    blocks_p, blocks_s = [], []
    for cin, ch, _, proj in plan(c["stem"]):
      p, s = {}, {}
      if proj:
        p["proj"] = _conv_init(k, 1, cin, ch)
        p["proj_bn"], s["proj_bn"] = _bn_init(ch)
      p["c0"] = _conv_init(k, 1, cin, ch // 4)
      p["bn0"], s["bn0"] = _bn_init(ch // 4)
      p["c1"] = _conv_init(k, 3, ch // 4, ch // 4)
      p["bn1"], s["bn1"] = _bn_init(ch // 4)
      p["c2"] = _conv_init(k, 1, ch // 4, ch)
      p["bn2"], s["bn2"] = _bn_init(ch)
      blocks_p.append(p)
      blocks_s.append(s)
    params["blocks"], state["blocks"] = blocks_p, blocks_s
    params["logits"] = _linear_init(k, c["channels"][-1], c["classes"])
    return params, state

  def fwd(variables, x):
    counter.tick()
    params, state = variables
    new = {}
    h = _conv(params["stem"], x, 2)
    h, new["stem_bn"] = _bn(params["stem_bn"], state["stem_bn"], h)
    h = jax.lax.reduce_window(jax.nn.relu(h), -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                              (1, 2, 2, 1), "SAME")
    new["blocks"] = []
    for (cin, ch, stride, proj), p, s in zip(plan(c["stem"]), params["blocks"], state["blocks"]):
      ns = {}
      short = h
      if proj:
        short, ns["proj_bn"] = _bn(p["proj_bn"], s["proj_bn"], _conv(p["proj"], h, stride))
      y, ns["bn0"] = _bn(p["bn0"], s["bn0"], _conv(p["c0"], h, 1))
      y, ns["bn1"] = _bn(p["bn1"], s["bn1"], _conv(p["c1"], jax.nn.relu(y), stride))
      y, ns["bn2"] = _bn(p["bn2"], s["bn2"], _conv(p["c2"], jax.nn.relu(y), 1))
      h = jax.nn.relu(y + short)
      new["blocks"].append(ns)
    return _linear(params["logits"], jnp.mean(h, (1, 2))), new
  return init, fwd


# ----------------------------------------------------------------------------- Transformer
def _block_init(k, c):
  d = c["d"]
  return {"ln_attn": _ln_init(d), "q": _linear_init(k, d, d), "k": _linear_init(k, d, d),
          "v": _linear_init(k, d, d), "o": _linear_init(k, d, d), "ln_mlp": _ln_init(d),
          "mlp_in": _linear_init(k, d, c["mlp"]), "mlp_out": _linear_init(k, c["mlp"], d)}


def _block(p, h, c, fast):
  b, t, d = h.shape
  nh, hd = c["heads"], d // c["heads"]
  a = _ln(p["ln_attn"], h, fast)
  q, k, v = (_linear(p[n], a).reshape(b, t, nh, hd) for n in ("q", "k", "v"))
  logits = jnp.einsum("bthd,bThd->bhtT", q, k) / np.sqrt(hd).astype(np.float32)
  logits = jnp.where(common.causal_mask(t)[None, None], logits, -1e30)
  att = jnp.einsum("bhtT,bThd->bthd", jax.nn.softmax(logits), v).reshape(b, t, d)
  h = h + _linear(p["o"], att)
  m = _ln(p["ln_mlp"], h, fast)
  return h + _linear(p["mlp_out"], jax.nn.gelu(_linear(p["mlp_in"], m)))


def transformer(c, counter, scan, fast):
  def init(key, tokens):
    k = _Keys(key)
    t = tokens.shape[-1]
    params = {"embed": jax.random.truncated_normal(k(), -2., 2., (c["vocab"], c["d"])) / .8796,
              "pos": jax.random.truncated_normal(k(), -2., 2., (t, c["d"])) / .8796}
    blocks = [_block_init(k, c) for _ in range(c["layers"])]
    if scan:
      params["blocks"] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *blocks)
    else:
      params["blocks"] = blocks
    params["ln_final"] = _ln_init(c["d"])
    params["logits"] = _linear_init(k, c["d"], c["vocab"])
    return params

  def fwd(params, tokens):
    counter.tick()
    h = params["embed"][tokens] + params["pos"][jnp.arange(tokens.shape[-1])]
    if scan:
      h = jax.lax.scan(lambda h, p: (_block(p, h, c, fast), None), h, params["blocks"])[0]
    else:
      for p in params["blocks"]:
        h = _block(p, h, c, fast)
    return _linear(params["logits"], _ln(params["ln_final"], h, fast))
  return init, fwd


def build(model, cfg, fast_variance=False):
  counter = common.Counter()
  c = common.model_cfg(model, cfg)
  if model == "mlp":
    init, fwd = mlp(c, counter)
  elif model == "resnet50":
    init, fwd = resnet50(c, counter)
  else:
    init, fwd = transformer(c, counter, model == "transformer_scan", fast_variance)
  stateful = model == "resnet50"
  if stateful:
    loss = lambda p, s, x, y: _loss_state(fwd((p, s), x), model, y)
    split, merge = (lambda v: v), (lambda p, s: (p, s))
  else:
    loss = lambda p, _, x, y: (common.loss_of(model, fwd(p, x), y), None)
    split, merge = (lambda v: (v, None)), (lambda p, _: p)

  def natural(key, x, mark):
    v = init(key, x)
    mark()
    fwd(v, x)
    mark()
    jax.jit(fwd)(v, x)
    mark()

  return common.Impl("jax", model, init=init, fwd=fwd, loss=loss, split=split, merge=merge,
                     counter=counter, natural=natural,
                     notes="LayerNorm: written both ways; exact unless measuring fast variance")


def _loss_state(out_state, model, y):
  out, state = out_state
  return common.loss_of(model, out, y), state
