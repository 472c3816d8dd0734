"""Markdown tables, PNG plots and the pass/miss lines against issue 5's targets."""
from __future__ import annotations

import datetime
import importlib.metadata as md
import json
import os
import pathlib
import platform
import re
import subprocess

import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))       # also when run as a script

from bench import harness  # noqa: E402
from bench.harness import boot_ci, med, total

STAGES = ("trace", "passes", "lower", "compile", "run")
LN_DEFAULT = {"purify": "exact (use_fast_variance=False, Haiku's)",
              "jax": "hand-written; both measured",
              "haiku": "exact (use_fast_variance=False)",
              "linen": "fast (use_fast_variance=True)",
              "nnx": "fast (use_fast_variance=True)",
              "equinox": "exact (jnp.var; no option)"}


def _ver(name):
  try:
    return md.version(name)
  except md.PackageNotFoundError:
    return "not installed"


def environment(mode):
  cpu = platform.processor() or "?"
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "purify"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    rev += " (purify/ has uncommitted changes)" if dirty else ""
  except OSError:
    rev = "?"
  import jax
  return dict(
      date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      mode=mode, cpu=cpu, cores=os.cpu_count(), platform=platform.platform(),
      python=platform.python_version(), device=str(jax.devices()[0]),
      versions={n: _ver(n) for n in ("jax", "jaxlib", "dm-haiku", "flax", "equinox", "optax",
                                     "numpy", "purify")},
      purify_rev=rev, load_start=os.getloadavg())


def ms(s):
  if s != s:
    return "–"
  return f"{s*1e3:.1f}" if s < 10 else f"{s*1e3:.0f}"


def rfmt(m, lo=None, hi=None):
  if m != m:
    return "–"
  if lo is None:
    return f"{m:.2f}"
  return f"{m:.2f} [{lo:.2f}, {hi:.2f}]"


def _stage(c, part, s):
  st = c[part]
  if s == "trace":
    return st["user_trace"] + st["jax_trace"]
  return st[s]


def paired(res_list_a, res_list_b, fn):
  """Ratios fn(a_r)/fn(b_r) of the repeats both have."""
  return [fn(a) / fn(b) for a, b in zip(res_list_a, res_list_b)]


def _na(res, fw, model):
  return res.unavailable.get((fw, model))


def cold_table(res, fws, model):
  head = ("| framework | params | init: trace | passes | lower | compile | run | **total** | "
          "×jax | apply: trace | lower | compile | run | **total** | ×jax | init+apply | ×jax | "
          "×haiku |")
  out = [head, "|---" * head.count("|")[:-1] if False else "|" + "---|" * (head.count("|") - 1)]
  jx = res.cold.get(("jax", model), [])
  hk = res.cold.get(("haiku", model), [])
  for fw in fws:
    na = _na(res, fw, model)
    cs = res.cold.get((fw, model))
    if not cs:
      out.append(f"| {fw} | {na or 'n/a'} |" + " |" * (head.count("|") - 3))
      continue
    row = [fw, f"{res.params.get((fw, model), 0):,}"]
    row += [ms(med([_stage(c, "init", s) for c in cs])) for s in STAGES]
    row.append(f"**{ms(med([total(c['init']) for c in cs]))}**")
    row.append(rfmt(*boot_ci(paired(cs, jx, lambda c: total(c["init"])))) if jx else "–")
    row += [ms(med([_stage(c, "apply", s) for c in cs])) for s in ("trace", "lower", "compile", "run")]
    row.append(f"**{ms(med([total(c['apply']) for c in cs]))}**")
    row.append(rfmt(*boot_ci(paired(cs, jx, lambda c: total(c["apply"])))) if jx else "–")
    both = lambda c: total(c["init"]) + total(c["apply"])
    row.append(ms(med([both(c) for c in cs])))
    row.append(rfmt(*boot_ci(paired(cs, jx, both))) if jx else "–")
    row.append(rfmt(*boot_ci(paired(cs, hk, both))) if hk else "–")
    out.append("| " + " | ".join(row) + " |")
  return out


def passes_table(res, models):
  per = {}
  for m in models:
    cs = res.cold.get(("purify", m))
    if cs:
      per[m] = cs
  if not per:
    return ["(purify did not run)"]
  names = list(next(iter(per.values()))[0]["init"]["per_pass"])
  out = ["| model | trace of the user's Python ms | " + " | ".join(names) +
         " | passes total ms | passes / trace |", "|---" * (len(names) + 4) + "|"]
  for m, cs in per.items():
    tr = med([c["init"]["user_trace"] for c in cs])
    pt = med([c["init"]["passes"] for c in cs])
    out.append(f"| {m} | {ms(tr)} | " + " | ".join(
        ms(med([c["init"]["per_pass"].get(n, float("nan")) for c in cs])) for n in names) +
        f" | {ms(pt)} | {pt/tr:.2f} |")
  return out


def steady_table(res, fws, model):
  out = ["| framework | forward ms | ×jax [95% CI] | train step ms | ×jax [95% CI] | "
         "HLO ops init | HLO ops forward | HLO ops train |", "|---" * 8 + "|"]
  jx = res.steady.get(("jax", model))
  for fw in fws:
    st = res.steady.get((fw, model))
    h = res.hlo.get((fw, model), {})
    if not st:
      out.append(f"| {fw} | {_na(res, fw, model) or 'n/a'} | | | | | | |")
      continue
    row = [fw]
    for part in ("fwd", "train"):
      row.append(ms(med(st[part])))
      row.append(rfmt(*boot_ci([a / b for a, b in zip(st[part], jx[part])])) if jx else "–")
    row += [str(h.get(k, "–")) for k in ("init", "fwd", "train")]
    out.append("| " + " | ".join(row) + " |")
  return out


def runs_table(res, fws):
  models = sorted({m for (_, m) in res.runs}, key=lambda m: harness.common.MODELS.index(m))
  out = ["| framework | " + " | ".join(f"{m}: init + apply + jit(apply)" for m in models) + " |",
         "|---" * (len(models) + 1) + "|"]
  for fw in fws:
    cells = []
    for m in models:
      c = res.runs.get((fw, m))
      if not c or len(c) < 3:
        cells.append("–")
      else:
        cells.append(f"{c[0]} + {c[1]-c[0]} + {c[2]-c[1]} = **{c[2]}**")
    out.append(f"| {fw} | " + " | ".join(cells) + " |")
  return out


def ln_table(res, fws):
  out = ["| framework | default | exact ms | fast ms | fast / exact |", "|---" * 5 + "|"]
  for fw in fws:
    e, f = res.ln.get((fw, "exact")), res.ln.get((fw, "fast"))
    if e is None and f is None:
      continue
    ef = rfmt(*boot_ci([b / a for a, b in zip(e, f)])) if e and f else (
        res.ln_na.get((fw, "fast")) or res.ln_na.get((fw, "exact")) or "–")
    out.append(f"| {fw} | {LN_DEFAULT.get(fw, '?')} | {ms(med(e)) if e else '–'} | "
               f"{ms(med(f)) if f else '–'} | {ef} |")
  return out


#: Models whose hand-written JAX version is not the same computation as purify's:
#: the hand-written ResNet-50's BatchNorm keeps plain moving mean/var (state starts at
#: zeros), purify's and Haiku's keep Haiku's debiased exponential moving averages
#: (counter, hidden, average; the averages start at the first batch's statistics, so
#: their init runs the forward pass). Steady state and HLO are also compared with Haiku.
SAME_PROGRAM_AS_HAIKU = ("resnet50",)


def targets(res, pipe, models):
  """Issue 5's targets: one honest line each."""
  lines = []

  def mark(ok):
    return "PASS" if ok else "MISS"

  for m in models:
    p, j = res.steady.get(("purify", m)), res.steady.get(("jax", m))
    if not p or not j:
      lines.append(f"- steady state {m}: not measured ({_na(res, 'purify', m) or 'no data'})")
      continue
    for part, what in (("fwd", "forward"), ("train", "train step")):
      r, lo, hi = boot_ci([a / b for a, b in zip(p[part], j[part])])
      ok = lo <= 1.0 <= hi and r <= 1.02
      lines.append(f"- {mark(ok)} steady {what} {m}: purify/jax median {r:.2f}, 95% CI "
                   f"[{lo:.2f}, {hi:.2f}] (target: CI contains 1.00, median <= 1.02)")
    hp, hj = res.hlo.get(("purify", m), {}), res.hlo.get(("jax", m), {})
    for part in ("fwd", "train"):
      if part in hp and part in hj:
        lines.append(f"- {mark(hp[part] == hj[part])} optimized HLO size {m} {part}: purify "
                     f"{hp[part]} ops, jax {hj[part]} (target: equal; no RNG in these models)")
    if m in SAME_PROGRAM_AS_HAIKU and res.steady.get(("haiku", m)):
      # the hand-written model computes something else here (see SAME_PROGRAM_AS_HAIKU):
      # purify's own overhead shows against Haiku, which runs the same model source
      hk, hh = res.steady[("haiku", m)], res.hlo.get(("haiku", m), {})
      for part, what in (("fwd", "forward"), ("train", "train step")):
        r, lo, hi = boot_ci([a / b for a, b in zip(p[part], hk[part])])
        ok = lo <= 1.0 <= hi and r <= 1.02
        lines.append(f"- {mark(ok)} steady {what} {m} against Haiku (same model source): "
                     f"purify/haiku median {r:.2f}, 95% CI [{lo:.2f}, {hi:.2f}]")
      for part in ("fwd", "train"):
        if part in hp and part in hh:
          lines.append(f"- {mark(hp[part] == hh[part])} optimized HLO size {m} {part} against "
                       f"Haiku: purify {hp[part]} ops, haiku {hh[part]}")
  for m in models:
    p, j, h = (res.cold.get((fw, m)) for fw in ("purify", "jax", "haiku"))
    if not p or not j:
      continue
    ri = boot_ci(paired(p, j, lambda c: total(c["init"])))[0]
    if m in ("transformer", "transformer_scan", "resnet50"):
      lines.append(f"- {mark(ri <= 0.5)} init time to first result {m}: {ri:.2f}x jax "
                   f"(target <= 0.5x)")
    ra = boot_ci(paired(p, j, lambda c: total(c["apply"])))[0]
    lines.append(f"- {mark(ra <= 1.05)} first apply {m}: {ra:.2f}x jax (target <= 1.05x)")
    if h:
      both = lambda c: total(c["init"]) + total(c["apply"])
      rh = boot_ci(paired(p, h, both))[0]
      lines.append(f"- {mark(rh <= 0.75)} init + first apply {m}: {rh:.2f}x haiku "
                   f"(target <= 0.75x)")
  for m in models:
    cs = res.cold.get(("purify", m))
    if cs:
      r = med([c["init"]["passes"] / c["init"]["user_trace"] for c in cs])
      lines.append(f"- {mark(r <= 0.10)} pass pipeline {m}: {r:.2f} of one trace of the "
                   f"user's Python (target <= 0.10)")
  if pipe:
    rows, e = pipe
    worst = max(r[2] / r[1] for r in rows)
    lines.append(f"- {mark(worst <= 0.10)} pass pipeline vs program size: at most {worst:.2f} "
                 f"of one trace over {rows[0][0]}..{rows[-1][0]} equations (target <= 0.10)")
    lines.append(f"- {mark(e <= 1.1)} pipeline growth exponent {e:.2f} (target <= 1.1)")
  for m in ("mlp", "transformer"):
    c = res.runs.get(("purify", m))
    if c and len(c) == 3:
      lines.append(f"- {mark(c[2] - c[1] == 0)} jax.jit(t.apply) re-runs the model's Python "
                   f"{c[2]-c[1]} times ({m}; target 0); init + apply + jit(apply) ran it {c[2]} "
                   f"time(s) in all")
  return lines


def plots(out, res, pipe, fws, models):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  files = []
  # cold start: stacked bars, init and apply per framework, one panel per model
  ms_ = [m for m in models if any(res.cold.get((fw, m)) for fw in fws)]
  if ms_:
    fig, axes = plt.subplots(1, len(ms_), figsize=(4.2 * len(ms_), 3.8), squeeze=False)
    colors = dict(trace="#4c72b0", passes="#dd8452", lower="#55a868", compile="#c44e52",
                  run="#8172b3")
    for ax, m in zip(axes[0], ms_):
      labels, i = [], 0
      for fw in fws:
        cs = res.cold.get((fw, m))
        if not cs:
          continue
        for part in ("init", "apply"):
          left = 0.0
          for s in STAGES:
            v = med([_stage(c, part, s) for c in cs])
            ax.barh(i, v, left=left, color=colors[s], label=s if (i == 0) else None)
            left += v
          labels.append(f"{fw} {part}")
          i += 1
      ax.set_yticks(range(len(labels)), labels, fontsize=7)
      ax.invert_yaxis()
      ax.set_xlabel("seconds to first result")
      ax.set_title(m)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cold_start.png", dpi=110)
    plt.close(fig)
    files.append("cold_start.png")
  # steady state ratios with CI
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, part, title in ((axes[0], "fwd", "jitted forward"), (axes[1], "train", "train step")):
    for k, fw in enumerate(fws):
      xs, ys, lo, hi = [], [], [], []
      for mi, m in enumerate(models):
        st, jx = res.steady.get((fw, m)), res.steady.get(("jax", m))
        if not st or not jx:
          continue
        r, a, b = boot_ci([p / q for p, q in zip(st[part], jx[part])])
        xs.append(mi + (k - len(fws) / 2) * 0.12)
        ys.append(r)
        lo.append(r - a)
        hi.append(b - r)
      if xs:
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", label=fw, capsize=2)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(models)), models, fontsize=8)
    ax.set_ylabel("time / hand-written JAX")
    ax.set_title(title + " (median, 95% CI)")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "steady_state.png", dpi=110)
  plt.close(fig)
  files.append("steady_state.png")
  if pipe:
    rows, e = pipe
    fig, ax = plt.subplots(figsize=(5, 3.8))
    n = [r[0] for r in rows]
    ax.loglog(n, [r[1] for r in rows], "o-", label="trace of the user's Python")
    ax.loglog(n, [r[2] for r in rows], "s-", label=f"pass pipeline (exponent {e:.2f})")
    ax.loglog(n, [0.1 * r[1] for r in rows], "k:", label="target: 0.1 x trace")
    ax.set_xlabel("equations")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pipeline.png", dpi=110)
    plt.close(fig)
    files.append("pipeline.png")
  return files


def write(out, res, pipe, env, fws, models, mode, plots=True, partial=False):
  v = env["versions"]
  lines = [f"# purify side-by-side benchmark ({mode})", ""]
  if partial:
    lines += ["**PARTIAL: the run had not finished when this was written.**", ""]
  lines += [
           f"Generated by `python bench/run.py{'' if mode == 'full' else ' --' + mode}` on "
           f"{env['date']} in {env['wall_s']:.0f} s.", ""]
  for r in env.get("runs", []):
    lines.append(f"- part of this page: {', '.join(r['models'])}, measured by a run of "
                 f"bench/run.py started {r['date']} ({r['wall_s']:.0f} s); the parts were merged "
                 f"with `python bench/report.py A.json B.json`")
  lines += ["",
           f"- machine: {env['cpu']}, {env['cores']} cores, {env['platform']}, JAX device "
           f"{env['device']}",
           f"- load average at start {env['load_start'][0]:.1f}, at end {env['load_end'][0]:.1f} "
           f"(1 min)" + (". The machine was shared with other jobs while this ran, so absolute "
                         "times are noisy" if max(env['load_start'][0], env['load_end'][0]) > 2.5
                         else "") +
           f"; ratios are paired per repeat (frameworks interleaved, order rotated) to "
           f"cancel slow drifts.",
           f"- versions: Python {env['python']}, " + ", ".join(f"{k} {x}" for k, x in v.items()) +
           f"; purify at {env['purify_rev']}",
           "- time to first result: after a warm-up (a tiny MLP through every framework, so "
           "JAX's one-time start-up is not charged to the first model), the repeats run in one "
           "process with fresh model objects each round, the frameworks' order rotated per "
           "round (the first to compile a kernel shape can pay one-time costs); the ×jax "
           "ratios are medians of per-round ratios with a bootstrap 95% CI (degenerate with "
           "one round: the --quick mode); `trace` is running the user's Python under JAX (for purify also the "
           "trace of the bound pure program, and the initializers its split_init pass runs: "
           "the user's code, which a hand-written init traces too), `passes` purify's "
           "pipeline without those initializers (building the executables after it is "
           "`lower`). purify traces the user's Python once, for init and apply together, "
           "and counts it under init.",
           "- steady state: medians of per-call times; ×jax is the median of ratios paired per "
           "repeat, with a bootstrap 95% CI. ResNet-50 runs in training mode (batch "
           "statistics, moving averages returned as state) for forward and train step; "
           "Equinox's convolutions are channels-first (its layout), the others NHWC. "
           "BatchNorm's moving averages: purify, Haiku and hand-written JAX keep Haiku's "
           "zero-debiased ones (counter, hidden, average: the same forward program, "
           "tests/test_bench_smoke.py); purify's and Haiku's init return them after the "
           "first batch (init runs the forward), the hand-written init starts them at zero "
           "(no forward: the cheaper init, which purify's is measured against); Flax keeps "
           "plain averages (mean, var), Equinox its `mode=\"ema\"` state.",
           "- every Transformer row uses exact-variance LayerNorm (`jnp.var`), Flax's set "
           "with `use_fast_variance=False`; the LayerNorm section measures both.",
           ""]
  lines += ["## Parameter counts and output shapes (checked equal across frameworks)", ""]
  ok_all = True
  for m in harness.common.MODELS:
    counts = {fw: res.params[(fw, m)] for fw in fws if (fw, m) in res.params}
    if not counts:
      continue
    shapes = {res.out_shapes.get((fw, m)) for fw in counts} - {None}
    same = len(set(counts.values())) == 1 and len(shapes) <= 1
    ok_all &= same
    cs = ", ".join(f"{fw} {n:,}" for fw, n in counts.items())
    out_s = f"; output {' / '.join(str(s) for s in shapes)}" if shapes else ""
    lines.append(f"- {m}: {'equal' if same else 'DIFFERENT'} — {cs}{out_s}")
  lines.append("")
  ran = lambda m: any((fw, m) in res.cold or (fw, m) in res.unavailable for fw in fws)
  if partial:
    lines += ["Not measured yet: " + ", ".join(m for m in models if not ran(m)), ""]
  models = [m for m in models if ran(m)]
  for m in models:
    lines += [f"## {m}: time to first result (ms)", ""] + cold_table(res, fws, m) + [""]
    lines += [f"### {m}: steady state and optimized HLO size", ""] + steady_table(res, fws, m) + [""]
  lines += ["## purify's passes per model (ms, part of init's time to first result)", ""]
  lines += passes_table(res, models) + [""]
  if res.runs:
    lines += ["## How many times the model's Python ran (init, then apply, then jax.jit(apply))",
              "", "Natural API of each framework, unjitted init and apply, then "
              "`jax.jit(apply)`; counted by a counter in the model's top-level Python.", ""]
    lines += runs_table(res, fws) + [""]
  if res.ln:
    lines += ["## LayerNorm: exact variance vs fast variance (E[x²]−E[x]²), Transformer "
              "train step", ""] + ln_table(res, fws) + [""]
  if pipe:
    from bench import pipeline as pl
    lines += ["## Pass pipeline vs program size", ""] + pl.table(*pipe) + [""]
  if res.notes:
    lines += ["## Framework settings", ""] + [f"- {fw}: {n}" for fw, n in res.notes.items()] + [""]
  lines += ["## Targets (issue 5)", ""] + targets(res, pipe, models) + [""]
  if res.unavailable:
    lines += ["## Not measured", ""] + [f"- {fw} / {m}: {r}" for (fw, m), r in
                                        sorted(res.unavailable.items())] + [""]
  files = []
  if plots:
    try:
      files = globals()["plots"](out, res, pipe, fws, models)
    except ImportError:
      lines += ["(plots skipped: matplotlib is not installed)", ""]
  if files:
    lines += ["## Plots", ""] + [f"![{f}]({f})" for f in files] + [""]
  text = "\n".join(lines)
  (out / "results.md").write_text(text)
  if pipe:
    (out / "pipeline.md").write_text(
        f"# pass pipeline vs trace (JAX {v['jax']}, Python {env['python']})\n\n" +
        "\n".join(pl.table(*pipe)) + "\n")
  raw = dict(env=env, params={f"{a}/{b}": n for (a, b), n in res.params.items()},
             cold={f"{a}/{b}": x for (a, b), x in res.cold.items()},
             steady={f"{a}/{b}": x for (a, b), x in res.steady.items()},
             hlo={f"{a}/{b}": x for (a, b), x in res.hlo.items()},
             runs={f"{a}/{b}": x for (a, b), x in res.runs.items()},
             layernorm={f"{a}/{b}": x for (a, b), x in res.ln.items()},
             unavailable={f"{a}/{b}": x for (a, b), x in res.unavailable.items()},
             pipeline=pipe, params_equal=ok_all, notes=res.notes,
             out_shapes={f"{a}/{b}": x for (a, b), x in res.out_shapes.items()})
  (out / "results.json").write_text(json.dumps(raw, indent=1, default=float))
  return text


DOCS_HEAD = """# Benchmarks

purify against hand-written pure JAX, Haiku, Flax linen, Flax NNX and Equinox, measured
side by side in one run. Reproduce (Python 3.11, JAX 0.10.2):

    pip install -e . -r bench/requirements.txt
    python bench/run.py            # ~25 min on an idle 2-core machine (far longer under load)
    python bench/run.py --quick    # full sizes, fewer repeats
    python bench/run.py --smoke --out /tmp/b   # what tests/test_bench_smoke.py runs

The harness lives in `bench/`: one model source for Haiku and purify
(`fw_haiku_style.py`, since purify.nn keeps Haiku's names), hand-written JAX with
explicit parameter dicts (`fw_jax.py`), Flax (`fw_flax.py`), Equinox
(`fw_equinox.py`); `harness.py` measures, `report.py` writes this page.

What is measured, and how:

- **Time to first result** of init and of the first apply, split into the trace of the
  user's Python, purify's passes (each pass), lowering to StableHLO, XLA compile, and
  the first run — through `jax.jit(f).trace(...).lower().compile()` for the others and
  through purify's public `init`/`apply` for purify (which traces the user's Python
  once for both).
- **Steady state**: the jitted forward and train step (`jax.value_and_grad` + SGD),
  medians of per-call times, frameworks interleaved, ratios paired per repeat to
  hand-written JAX with a bootstrap 95% CI.
- **Optimized HLO size**: instructions in `compiled.as_text()` of init, forward, train.
- **Python runs**: a counter in the model's top-level Python, over init, apply and
  `jax.jit(apply)` with each framework's ordinary API.
- **LayerNorm** exact (`jnp.var`, Haiku's and purify's default) vs fast
  (`E[x²]−E[x]²`, Flax's default) on the Transformer train step.
- **Pass pipeline vs program size** (1k to 100k equations), with the log-log slope.

The results below are copied from `bench/results/results.md` by the run that made
them; the plots are in `bench/results/`.

"""


FINDINGS_MARK = "<!-- findings: hand-written, kept when the results above are regenerated -->"


def write_docs(path, out, text):
  keep = ""
  if path.exists() and FINDINGS_MARK in path.read_text():
    keep = path.read_text().split(FINDINGS_MARK, 1)[1]
  body = text.split("\n", 1)[1]           # drop the results page's title
  rel = os.path.relpath(out, path.parent)
  body = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: f"![{m[1]}]({rel}/{m[2]})", body)
  body = body.replace("\n### ", "\n#### ").replace("\n## ", "\n### ")
  path.write_text(DOCS_HEAD + "## Results\n" + body.rstrip() + "\n\n" + FINDINGS_MARK +
                  (keep or "\n"))


def load(path):
  """Rebuild (res, pipe, env) from a results.json (re-render without re-measuring)."""
  raw = json.loads(pathlib.Path(path).read_text())
  res = harness.Results()
  split = lambda k: tuple(k.split("/", 1))
  for name in ("params", "cold", "steady", "hlo", "runs", "unavailable"):
    setattr(res, name, {split(k): v for k, v in raw.get(name, {}).items()})
  res.ln = {split(k): v for k, v in raw.get("layernorm", {}).items()}
  res.out_shapes = {split(k): tuple(v) for k, v in raw.get("out_shapes", {}).items()}
  res.notes = raw.get("notes") or {fw: "LayerNorm: " + d for fw, d in LN_DEFAULT.items()
                                   if any(k[0] == fw for k in res.params)}
  if "notes" not in raw and "purify" in res.notes:
    from bench import fw_haiku_style
    ws = fw_haiku_style.purify_nn().workarounds
    if ws:
      res.notes["purify"] += "; ResNet-50: " + "; ".join(ws)
  pipe = raw.get("pipeline")
  if pipe:
    pipe = ([tuple(r) for r in pipe[0]], pipe[1])
  return res, pipe, raw["env"]


def merge(paths):
  """Several results.json (e.g. a run cut for time and its continuation) -> one."""
  res, pipe, env = load(paths[0])
  runs = [dict(date=env["date"], wall_s=env["wall_s"], models=sorted({k[1] for k in res.params}))]
  for p in paths[1:]:
    r2, p2, e2 = load(p)
    for name in ("params", "cold", "steady", "hlo", "runs", "unavailable", "ln", "out_shapes",
                 "notes"):
      getattr(res, name).update(getattr(r2, name))
    pipe = p2 or pipe
    runs.append(dict(date=e2["date"], wall_s=e2["wall_s"], models=sorted({k[1] for k in r2.params})))
    env = dict(e2, load_start=env["load_start"])
  env["wall_s"] = sum(r["wall_s"] for r in runs)
  env["runs"] = runs
  return res, pipe, env


if __name__ == "__main__":
  # python bench/report.py A.json [B.json ...] [--out DIR] [--docs]: re-render the page
  # from saved measurements (several files are merged, later ones win)
  args = sys.argv[1:]
  out = ROOT / "bench" / "results"
  if "--out" in args:
    out = pathlib.Path(args[args.index("--out") + 1])
    del args[args.index("--out"):args.index("--out") + 2]
  docs = "--docs" in args
  paths = [pathlib.Path(a) for a in args if a != "--docs"]
  res, pipe, env = merge(paths)
  out.mkdir(parents=True, exist_ok=True)
  fws = [f for f in harness.FRAMEWORKS
         if any(k[0] == f for k in list(res.params) + list(res.unavailable))]
  order = list(harness.common.MODELS)
  models = sorted({k[1] for k in list(res.params) + list(res.unavailable)}, key=order.index)
  text = write(out, res, pipe, env, fws, models, env["mode"], plots=True)
  if docs:
    write_docs(ROOT / "docs" / "benchmarks.md", out, text)
