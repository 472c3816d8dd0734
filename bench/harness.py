"""Measurements, interleaved across frameworks; every number is a median of repeats.

- cold(): time to first result of init and of the first apply, by stage: the user's
  Python trace, purify's passes, (purify only: the trace of the bound pure jaxpr),
  lowering, XLA compile, first run. Non-purify frameworks go through
  ``jax.jit(f).trace(...).lower().compile()``; purify through its public init/apply
  (see fw_haiku_style.purify_cold).
- steady(): jitted forward and train step (value_and_grad + SGD), per-call medians;
  repeats rotate the framework order; ratios are paired per repeat to hand-written JAX.
- HLO size: instructions in the optimized HLO (``compiled.as_text()``).
- python_runs(): how often the model's Python ran for init + apply + jit(apply).
"""
from __future__ import annotations

import re
import statistics
import time
import traceback

import jax
import numpy as np

from bench import common

FRAMEWORKS = ("purify", "jax", "haiku", "linen", "nnx", "equinox")


def builder(fw):
  if fw == "purify":
    from bench.fw_haiku_style import build_purify as b
  elif fw == "haiku":
    from bench.fw_haiku_style import build_haiku as b
  elif fw == "jax":
    from bench.fw_jax import build as b
  elif fw in ("linen", "nnx"):
    try:
      from bench import fw_flax
    except ImportError as e:
      raise common.Unavailable(f"n/a: flax not installed ({e.name})") from None
    b = fw_flax.build_linen if fw == "linen" else fw_flax.build_nnx
  elif fw == "equinox":
    try:
      from bench import fw_equinox
    except ImportError as e:
      raise common.Unavailable(f"n/a: equinox not installed ({e.name})") from None
    b = fw_equinox.build
  else:
    raise ValueError(fw)
  return b


def build(fw, model, cfg, fast_variance=False):
  return builder(fw)(model, cfg, fast_variance=fast_variance)


_INSTR = re.compile(r"^\s*(ROOT\s+)?%?[\w.\-]+\s*=\s*\S", re.M)


def hlo_ops(compiled) -> int:
  """Instructions in the optimized HLO module (all computations); of a tuple of
  compiled programs (purify's init when staged, lowering.Executable), their sum."""
  if isinstance(compiled, tuple):
    return sum(hlo_ops(c) for c in compiled)
  return len(_INSTR.findall(compiled.as_text()))


def stage(jitted, args):
  """trace / lower / compile / run of one jitted function on ``args``; seconds each,
  the output and the compiled executable."""
  t0 = time.perf_counter()
  traced = jitted.trace(*args)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  t4 = time.perf_counter()
  return dict(trace=t1 - t0, lower=t2 - t1, compile=t3 - t2, run=t4 - t3), out, compiled


def cold(impl, key, x):
  """One time-to-first-result measurement: {"init": stages, "apply": stages, ...}."""
  if impl.cold is not None:
    return impl.cold(key, x)
  st_i, variables, comp_i = stage(jax.jit(impl.init), (key, x))
  st_a, _, _ = stage(jax.jit(impl.fwd), (variables, x))
  mk = lambda s: dict(user_trace=s["trace"], passes=0.0, per_pass={}, jax_trace=0.0,
                      lower=s["lower"], compile=s["compile"], run=s["run"])
  return dict(init=mk(st_i), apply=mk(st_a), init_hlo=comp_i, variables=variables)


def total(st):
  return st["user_trace"] + st["passes"] + st["jax_trace"] + st["lower"] + st["compile"] + st["run"]


def med(xs):
  return statistics.median(xs) if xs else float("nan")


def boot_ci(ratios, n=2000, seed=0):
  """Median of paired ratios and a bootstrap 95% CI of that median."""
  r = np.asarray(ratios, float)
  if len(r) == 0:
    return float("nan"), float("nan"), float("nan")
  if len(r) == 1:
    return float(r[0]), float(r[0]), float(r[0])
  rs = np.random.RandomState(seed)
  meds = np.median(r[rs.randint(0, len(r), (n, len(r)))], axis=1)
  return float(np.median(r)), float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def rotate(seq, r):
  seq = list(seq)
  r %= len(seq)
  return seq[r:] + seq[:r]


def log(*a):
  print(*a, flush=True)


class Results:
  def __init__(self):
    self.unavailable = {}      # (fw, model) -> reason
    self.params = {}           # (fw, model) -> count
    self.out_shapes = {}       # (fw, model) -> output shape
    self.cold = {}             # (fw, model) -> [cold dicts without arrays]
    self.hlo = {}              # (fw, model) -> {"init","fwd","train"}
    self.steady = {}           # (fw, model) -> {"fwd": [s], "train": [s]}
    self.runs = {}             # (fw, model) -> [after init, after apply, after jit(apply)]
    self.ln = {}               # (fw, "fast"/"exact") -> [s]
    self.ln_na = {}
    self.notes = {}


def _try_build(res, fw, model, cfg, **kw):
  try:
    return build(fw, model, cfg, **kw)
  except common.Unavailable as e:
    res.unavailable[(fw, model)] = str(e)
  except Exception as e:  # a framework's model that fails to build: say so, go on
    res.unavailable[(fw, model)] = f"n/a: build failed: {type(e).__name__}: {e}"[:200]
    traceback.print_exc()
  return None


def warm_up(fws):
  """One tiny MLP per framework, so JAX's and each framework's one-time start-up costs
  are not charged to the first measured model."""
  cfg = common.CONFIGS["smoke"]
  x, _ = common.inputs("mlp", cfg)
  for fw in fws:
    try:
      cold(build(fw, "mlp", cfg), jax.random.PRNGKey(0), x)
    except Exception:
      pass


def check_parity(res, fws, models, cfg):
  """Parameter counts and output shapes of every framework's model, by abstract
  evaluation (tracing only, no XLA compile)."""
  key = jax.random.PRNGKey(0)
  for model in models:
    x, _ = common.inputs(model, cfg)
    for fw in fws:
      impl = _try_build(res, fw, model, cfg)
      if impl is None:
        continue
      try:
        v = jax.eval_shape(impl.init, key, x)
        out = jax.eval_shape(impl.fwd, v, x)
      except Exception as e:
        res.unavailable[(fw, model)] = f"n/a: {type(e).__name__}: {e}"[:200]
        traceback.print_exc()
        continue
      res.params[(fw, model)] = impl.param_count(v)
      res.out_shapes[(fw, model)] = tuple(out[0].shape if isinstance(out, tuple) else out.shape)
      res.notes[fw] = impl.notes


def run_cold(res, fws, model, cfg, repeats):
  """``repeats`` measured rounds (each with fresh model objects), frameworks interleaved
  with the order rotated per round; the first round also gives parameter counts,
  init's HLO size and the variables for the steady-state phase."""
  key = jax.random.PRNGKey(0)
  x, _ = common.inputs(model, cfg)
  keep = {}
  for r in range(repeats):
    for fw in rotate(fws, r):
      if (fw, model) in res.unavailable:
        continue
      impl = _try_build(res, fw, model, cfg)
      if impl is None:
        continue
      try:
        out = cold(impl, key, x)
      except Exception as e:
        res.unavailable[(fw, model)] = f"n/a: {type(e).__name__}: {e}"[:200]
        traceback.print_exc()
        continue
      if r == 0:
        res.params[(fw, model)] = impl.param_count(out["variables"])
        o = jax.eval_shape(impl.fwd, out["variables"], x)
        res.out_shapes[(fw, model)] = tuple(o[0].shape if isinstance(o, tuple) else o.shape)
        res.hlo.setdefault((fw, model), {})["init"] = hlo_ops(out["init_hlo"])
        res.notes[fw] = impl.notes
        keep[fw] = (impl, out["variables"])
      res.cold.setdefault((fw, model), []).append(dict(init=out["init"], apply=out["apply"]))
      log(f"  cold {model:16s} {fw:8s} r{r}: init {total(out['init']):7.3f}s "
          f"apply {total(out['apply']):7.3f}s")
  return keep


def prepare(impl, x):
  """NNX and Equinox keep the non-array half of the model (graphdef / static fields)
  from init's trace: trace init abstractly so a fresh Impl can run given variables."""
  if impl.framework in ("nnx", "equinox"):
    jax.eval_shape(impl.init, jax.random.PRNGKey(0), x)


def time_calls(fn, args, inner):
  jax.block_until_ready(fn(*args))        # untimed: wakes the thread pool, warms caches
  ts = []
  for _ in range(inner):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return med(ts)


def run_steady(res, fws, model, cfg, variables, repeats, inner):
  x, y = common.inputs(model, cfg)
  fns = {}
  for fw in fws:
    if fw not in variables:
      continue
    impl, v = variables[fw]          # the Impl whose init made v (Equinox: same classes)
    try:
      cf = jax.jit(impl.fwd).lower(v, x).compile()
      cs = jax.jit(common.sgd_step(impl)).lower(v, x, y).compile()
      jax.block_until_ready((cf(v, x), cs(v, x, y)))
    except Exception as e:
      res.unavailable[(fw, model)] = f"n/a: {type(e).__name__}: {e}"[:200]
      traceback.print_exc()
      continue
    res.hlo.setdefault((fw, model), {}).update(fwd=hlo_ops(cf), train=hlo_ops(cs))
    fns[fw] = (cf, cs, v)
  for r in range(repeats):
    for fw in rotate(list(fns), r):
      cf, cs, v = fns[fw]
      d = res.steady.setdefault((fw, model), {"fwd": [], "train": []})
      d["fwd"].append(time_calls(cf, (v, x), inner))
      d["train"].append(time_calls(cs, (v, x, y), inner))
    log(f"  steady {model:16s} r{r}: " + " ".join(
        f"{fw}={res.steady[(fw, model)]['train'][-1]*1e3:.1f}ms" for fw in fns))
  return fns


def run_python_counts(res, fws, model, cfg):
  key = jax.random.PRNGKey(0)
  x, _ = common.inputs(model, cfg)
  for fw in fws:
    if (fw, model) in res.unavailable:
      continue
    impl = _try_build(res, fw, model, cfg)
    if impl is None:
      continue
    counts = []
    try:
      impl.natural(key, x, lambda: counts.append(impl.counter.n))
    except Exception as e:
      log(f"  python-runs {fw} {model} failed: {type(e).__name__}: {e}")
      continue
    res.runs[(fw, model)] = counts


def run_layernorm(res, fws, cfg, variables, steady_fns, repeats, inner):
  """Transformer train step with exact (jnp.var) and fast (E[x^2]-E[x]^2) variance.
  ``variables``: each framework's initialized Transformer (the variance mode does not
  change the parameters)."""
  model = "transformer"
  x, y = common.inputs(model, cfg)
  fns = {}
  for fw in fws:
    for mode in ("exact", "fast"):
      if fw not in variables:
        continue
      try:
        if mode == "exact":
          impl = variables[fw][0]        # the main rows already use exact variance
        else:
          impl = build(fw, model, cfg, fast_variance=True)
      except common.Unavailable as e:
        res.ln_na[(fw, mode)] = str(e)
        continue
      except Exception as e:
        res.ln_na[(fw, mode)] = f"n/a: {type(e).__name__}: {e}"[:200]
        continue
      try:
        v = variables[fw][1]
        if mode == "exact" and fw in steady_fns:
          fns[(fw, mode)] = (steady_fns[fw][1], v)   # the steady phase's train step
          continue
        prepare(impl, x)
        cs = jax.jit(common.sgd_step(impl)).lower(v, x, y).compile()
        jax.block_until_ready(cs(v, x, y))
      except Exception as e:
        res.ln_na[(fw, mode)] = f"n/a: {type(e).__name__}: {e}"[:200]
        traceback.print_exc()
        continue
      fns[(fw, mode)] = (cs, v)
  for r in range(repeats):
    for k in rotate(list(fns), r):
      cs, v = fns[k]
      res.ln.setdefault(k, []).append(time_calls(cs, (v, x, y), inner))
  log("  layernorm: " + " ".join(f"{fw}/{m}={med(t)*1e3:.1f}ms" for (fw, m), t in res.ln.items()))
