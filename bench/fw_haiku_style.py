"""Haiku and purify: ONE model source, written against Haiku's layer names.

purify.nn keeps Haiku's names and arguments, so the same functions build both; only
the namespace ``nn`` (``haiku`` or ``purify.nn`` plus a few adapters) differs. The
initializer signature is the one real difference (Haiku: ``init(shape, dtype)``;
purify: ``init(key, shape, dtype)``), hidden behind ``nn.vs``.
"""
from __future__ import annotations

import types

import jax
import jax.numpy as jnp

from bench import common


# ----------------------------------------------------------------------------- models
def mlp(nn, c, counter):
  def f(x):
    counter.tick()
    return nn.MLP(c["widths"])(x)
  return f


def _bottleneck(nn, x, channels, stride, projection, bn):
  shortcut = x
  if projection:
    shortcut = nn.Conv2D(channels, 1, stride=stride, with_bias=False, name="shortcut_conv")(x)
    shortcut = bn("shortcut_batchnorm")(shortcut)
  y = nn.Conv2D(channels // 4, 1, with_bias=False, name="conv_0")(x)
  y = jax.nn.relu(bn("batchnorm_0")(y))
  y = nn.Conv2D(channels // 4, 3, stride=stride, with_bias=False, name="conv_1")(y)
  y = jax.nn.relu(bn("batchnorm_1")(y))
  y = nn.Conv2D(channels, 1, with_bias=False, name="conv_2")(y)
  y = bn("batchnorm_2")(y)
  return jax.nn.relu(y + shortcut)


def resnet50(nn, c, counter):
  """ResNet-50 v1 (Haiku's hk.nets.ResNet50 layout: bottlenecks, stride on the 3x3),
  trained mode (batch statistics; the moving averages are state)."""
  def f(x):
    counter.tick()
    bn = lambda name: (lambda h: nn.BatchNorm(True, True, 0.9, name=name)(h, is_training=True))
    h = nn.Conv2D(c["stem"], 7, stride=2, with_bias=False, name="initial_conv")(x)
    h = jax.nn.relu(bn("initial_batchnorm")(h))
    h = nn.max_pool(h, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
    for g, (n, ch) in enumerate(zip(c["blocks"], c["channels"])):
      for b in range(n):
        with nn.name_scope(f"block_{g}_{b}"):
          h = _bottleneck(nn, h, ch, (1 if g == 0 else 2) if b == 0 else 1, b == 0, bn)
    return nn.Linear(c["classes"], name="logits")(jnp.mean(h, axis=(1, 2)))
  return f


def _block(nn, c, fast):
  def block(h):
    t = h.shape[-2]
    a = nn.LayerNorm(-1, True, True, use_fast_variance=fast, name="ln_attn")(h)
    a = nn.MultiHeadAttention(c["heads"], c["d"] // c["heads"], w_init=nn.vs(1.0),
                              name="attn")(a, a, a, mask=common.causal_mask(t)[None, None])
    h = h + a
    m = nn.LayerNorm(-1, True, True, use_fast_variance=fast, name="ln_mlp")(h)
    m = nn.Linear(c["d"], name="mlp_out")(jax.nn.gelu(nn.Linear(c["mlp"], name="mlp_in")(m)))
    return h + m
  return block


def transformer(nn, c, counter, scan: bool, fast: bool):
  """Pre-LN decoder-only LM: token + position embeddings, ``layers`` blocks, LN, logits."""
  def f(tokens):
    counter.tick()
    t = tokens.shape[-1]
    h = nn.Embed(c["vocab"], c["d"], name="embed")(tokens)
    h = h + nn.Embed(t, c["d"], name="pos_embed")(jnp.arange(t))
    block = _block(nn, c, fast)
    if scan:
      h = nn.layer_stack(c["layers"], block, h)
    else:
      for i in range(c["layers"]):
        with nn.name_scope(f"layer_{i}"):
          h = block(h)
    h = nn.LayerNorm(-1, True, True, use_fast_variance=fast, name="ln_final")(h)
    return nn.Linear(c["vocab"], name="logits")(h)
  return f


def model_fn(nn, model, cfg, counter, fast):
  c = common.model_cfg(model, cfg)
  if model == "mlp":
    return mlp(nn, c, counter)
  if model == "resnet50":
    return resnet50(nn, c, counter)
  return transformer(nn, c, counter, scan=model == "transformer_scan", fast=fast)


# ----------------------------------------------------------------------------- namespaces
def haiku_nn():
  import haiku as hk
  return types.SimpleNamespace(
      MLP=hk.nets.MLP, Linear=hk.Linear, Conv2D=hk.Conv2D, BatchNorm=hk.BatchNorm,
      LayerNorm=hk.LayerNorm, MultiHeadAttention=hk.MultiHeadAttention, Embed=hk.Embed,
      max_pool=hk.max_pool, name_scope=hk.name_scope,
      vs=lambda s: hk.initializers.VarianceScaling(s),
      layer_stack=lambda n, f, h: hk.layer_stack(n, name="layers")(f)(h))


def purify_nn():
  import purify
  need = ["MLP", "Linear", "Conv2D", "BatchNorm", "LayerNorm", "MultiHeadAttention", "Embed",
          "max_pool", "variance_scaling"]
  missing = [n for n in need if not hasattr(purify.nn, n)]

  def layer_stack(n, f, h):
    with purify.name_scope("layers"):
      return purify.scan(lambda c, _: (f(c), None), h, None, length=n, param_axes=0)[0]

  ns = types.SimpleNamespace(name_scope=purify.name_scope, layer_stack=layer_stack,
                             missing=missing, workarounds=[])
  for n in need:
    if hasattr(purify.nn, n):
      setattr(ns, n, getattr(purify.nn, n))
  if hasattr(purify.nn, "max_pool") and not _max_pool_differentiable(purify.nn.max_pool):
    # purify.nn.max_pool passes its init value as an array: under jax.jit that is a
    # traced constant, lax picks the generic reduce_window, which has no JVP rule
    ns.max_pool = _max_pool_scalar_init
    ns.workarounds.append("purify.nn.max_pool is not differentiable under jax.jit (its "
                          "init value is an array); the bench uses lax.reduce_window with "
                          "a Python -inf, as hk.max_pool does")
  if hasattr(purify.nn, "variance_scaling"):
    ns.vs = lambda s: purify.nn.variance_scaling(s)
  return ns


def _max_pool_differentiable(max_pool):
  f = lambda v: max_pool(v * 1.0, (1, 3, 3, 1), (1, 2, 2, 1), "SAME").sum()
  try:
    jax.eval_shape(jax.jit(jax.grad(f)), jnp.ones((1, 4, 4, 1)))
    return True
  except Exception:
    return False


def _max_pool_scalar_init(value, window_shape, strides, padding):
  return jax.lax.reduce_window(value, -jnp.inf, jax.lax.max, window_shape, strides, padding)


NEEDS = {"mlp": ["MLP"], "resnet50": ["Conv2D", "BatchNorm", "max_pool", "Linear"],
         "transformer": ["Embed", "LayerNorm", "MultiHeadAttention", "Linear", "variance_scaling"]}


def _natural(t, key, x, stateful, mark):
  if stateful:
    v = t.init(key, x)
    mark()
    t.apply(*v, None, x)
    mark()
    jax.jit(lambda p, s, x: t.apply(p, s, None, x))(*v, x)
  else:
    v = t.init(key, x)
    mark()
    t.apply(v, None, x)
    mark()
    jax.jit(lambda p, x: t.apply(p, None, x))(v, x)
  mark()


def _impl(framework, model, t, stateful, counter):
  """The Impl of a transformed model ``t`` (Haiku's or purify's: the same API;
  ``stateful``: transform_with_state, variables are (params, state))."""
  if stateful:
    return common.Impl(
        framework, model, init=lambda k, x: t.init(k, x),
        fwd=lambda v, x: t.apply(v[0], v[1], None, x),
        loss=lambda p, s, x, y: _loss_state(t.apply(p, s, None, x), model, y),
        split=lambda v: v, merge=lambda p, s: (p, s), counter=counter,
        natural=lambda k, x, m: _natural(t, k, x, True, m))
  return common.Impl(
      framework, model, init=lambda k, x: t.init(k, x),
      fwd=lambda p, x: t.apply(p, None, x),
      loss=lambda p, _, x, y: (common.loss_of(model, t.apply(p, None, x), y), None),
      counter=counter, natural=lambda k, x, m: _natural(t, k, x, False, m))


def build_haiku(model, cfg, fast_variance=False):
  import haiku as hk
  counter = common.Counter()
  f = model_fn(haiku_nn(), model, cfg, counter, fast_variance)
  stateful = model == "resnet50"
  t = hk.transform_with_state(f) if stateful else hk.transform(f)
  impl = _impl("haiku", model, t, stateful, counter)
  impl.notes = "LayerNorm: exact variance by default (use_fast_variance=False)"
  return impl


def _loss_state(out_state, model, y):
  out, state = out_state
  return common.loss_of(model, out, y), state


def build_purify(model, cfg, fast_variance=False):
  import purify
  nn = purify_nn()
  need = NEEDS["transformer" if model.startswith("transformer") else model]
  missing = [n for n in need if n in nn.missing]
  if missing:
    raise common.Unavailable(f"n/a: purify.nn.{missing[0]} not available")
  counter = common.Counter()
  f = model_fn(nn, model, cfg, counter, fast_variance)
  stateful = model == "resnet50"
  t = purify.transform_with_state(f) if stateful else purify.transform(f)
  impl = _impl("purify", model, t, stateful, counter)
  impl.cold = lambda key, x: purify_cold(t, key, x, stateful)
  impl.notes = "LayerNorm: exact variance by default (use_fast_variance=False, Haiku's)"
  if model == "resnet50" and nn.workarounds:
    impl.notes += "; " + "; ".join(nn.workarounds)
  return impl


# ----------------------------------------------------------------------------- purify cold start
class _Captured(Exception):
  def __init__(self, flat):
    super().__init__("captured")
    self.flat = flat


class _Recorder:
  """Stands in for an Executable: records the flat inputs purify's public init/apply
  would pass to the compiled program (so the harness can stage exactly that call)."""

  def __call__(self, *flat):
    raise _Captured(flat)


class _Replay:
  def __init__(self, outs):
    self.outs = outs

  def __call__(self, *flat):
    return self.outs


class _TimedPipeline:
  """Wraps purify's pipeline: records when it starts, so trace time = start - t0."""

  def __init__(self, real):
    self.real = real
    self.started = None
    self.records = None

  def __getattr__(self, name):
    return getattr(self.real, name)

  def run(self, program, **kw):
    import time
    self.started = time.perf_counter()
    out, records = self.real.run(program, **kw)
    self.records = records
    return out, records


def purify_cold(t, key, x, stateful):
  """purify's time to first result, stage by stage, through its public init/apply:
  the user's Python is traced ONCE (for init and apply together), the passes run once,
  then each of init and apply is one jitted pure program (trace of the bound jaxpr,
  lowering, XLA compile, run)."""
  import time
  from bench.harness import stage
  core = t.init.purified
  timed = _TimedPipeline(core.pipeline)
  core.pipeline = timed
  t0 = time.perf_counter()
  try:
    c, _ = core.compiled(key, (x,), {})
  finally:
    core.pipeline = timed.real
  t_end = time.perf_counter()
  # the initializers split_init runs are the user's Python (a hand-written init traces
  # them too): counted as trace, not as passes; what follows the pipeline before the
  # first jitted call (building the executables) is lowering
  recs = timed.records[1:]
  initializers = sum(r.user_seconds for r in recs)
  passes = {r.name: r.seconds - r.user_seconds for r in recs}
  after = (t_end - timed.started) - sum(r.seconds for r in recs)
  init_user = dict(trace=timed.started - t0 + initializers, passes=passes,
                   passes_total=sum(passes.values()), after=after)
  real_init, real_apply = c.init_exec, c.apply_exec
  try:
    c.init_exec = _Recorder()
    try:
      t.init(key, x)
    except _Captured as e:
      flat = e.flat
    # what an eager init compiles and runs (lowering.Executable): the fused hash, the
    # program after it without its stacked rows, the rows taken apart (timed as run),
    # then init's forward when set_state creates state (apply's program: the first
    # apply below then finds it compiled); each later program's stages added to init's
    st_init, outs, comp_init = stage(real_init.eager, flat)
    if real_init.plan is not None or real_init.forward is not None:
      staged = ("trace", "lower", "compile")
      fst = dict.fromkeys(staged, 0.0)

      def run_stage(jitted, args):
        nonlocal comp_init
        st, out, comp_fwd = stage(jitted, args)
        for k in staged:
          fst[k] += st[k]
        comp_init = (comp_init, comp_fwd)
        return out
      t1 = time.perf_counter()
      outs = jax.block_until_ready(real_init.finish(flat, outs, run_stage))
      took = time.perf_counter() - t1
      for k in staged:
        st_init[k] += fst[k]
      st_init["run"] += took - sum(fst.values())       # the later programs' runs and the row split
    c.init_exec = _Replay(outs)
    variables = t.init(key, x)
    c.apply_exec = _Recorder()
    try:
      if stateful:
        t.apply(variables[0], variables[1], None, x)
      else:
        t.apply(variables, None, x)
    except _Captured as e:
      flat = e.flat
    st_apply, _, comp_apply = stage(real_apply.eager, flat)
  finally:
    c.init_exec, c.apply_exec = real_init, real_apply
  init = dict(user_trace=init_user["trace"], passes=init_user["passes_total"],
              per_pass=init_user["passes"], jax_trace=st_init["trace"],
              lower=st_init["lower"] + init_user["after"], compile=st_init["compile"], run=st_init["run"])
  apply = dict(user_trace=0.0, passes=0.0, per_pass={}, jax_trace=st_apply["trace"],
               lower=st_apply["lower"], compile=st_apply["compile"], run=st_apply["run"])
  return dict(init=init, apply=apply, init_hlo=comp_init, variables=variables)
