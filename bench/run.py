"""The side-by-side benchmark (issue 5): purify, hand-written JAX, Haiku, Flax linen,
Flax NNX and Equinox on an MLP, ResNet-50 and a Transformer LM (unrolled and scanned).

Run from the repository root:

    python bench/run.py            # full: writes bench/results/results.md, *.png, results.json
    python bench/run.py --quick    # full sizes, fewer repeats (a few minutes)
    python bench/run.py --smoke --out /tmp/b   # the test suite's: parity (parameter
        # counts, output shapes) of all tiny models by abstract evaluation; timings of
        # the tiny MLP only, 1 repeat (XLA compiles dominate on a 2-core machine)

Options: --frameworks purify,jax,haiku  --models mlp,transformer  --out DIR
--no-plots --no-pipeline --no-layernorm.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common, harness, report  # noqa: E402

# (cold repeats, steady repeats, calls per steady repeat) per model and mode
REPEATS = {
    # steady repeats raised in session 6 (3-9 gave CIs too wide for the strict rule);
    # in session 8 the MLP's and the Transformer's cold rounds (3 rounds: first-apply
    # ratios within the rounds' spread), the short steps' and ResNet-50's repeats
    "full": {"mlp": (7, 25, 5), "resnet50": (3, 11, 1), "transformer": (5, 9, 1),
             "transformer_scan": (3, 13, 1), "layernorm": (3, 1)},
    "quick": {"mlp": (1, 3, 3), "resnet50": (1, 2, 1), "transformer": (1, 3, 2),
              "transformer_scan": (1, 3, 2), "layernorm": (3, 2)},
    "smoke": {"mlp": (1, 1, 1), "resnet50": (1, 1, 1), "transformer": (1, 1, 1),
              "transformer_scan": (1, 1, 1), "layernorm": (1, 1)},
}
# where the Python-run count is taken: it runs init and apply eagerly (op by op), which
# costs minutes on the bigger models here, and the count does not depend on the model
COUNT_MODELS = ("mlp",)


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  g = p.add_mutually_exclusive_group()
  g.add_argument("--smoke", action="store_true")
  g.add_argument("--quick", action="store_true")
  p.add_argument("--frameworks", default=None)
  p.add_argument("--models", default=None)
  p.add_argument("--out", default=None)
  p.add_argument("--no-plots", action="store_true")
  p.add_argument("--no-pipeline", action="store_true")
  p.add_argument("--pipeline-max-eqns", type=int, default=None,
                 help="leave out the pass-pipeline sizes above this many equations")
  p.add_argument("--no-layernorm", action="store_true")
  p.add_argument("--docs", action="store_true",
                 help="also write docs/benchmarks.md (default for a full run into bench/results)")
  return p.parse_args(argv)


def main(argv=None):
  a = parse(argv)
  mode = "smoke" if a.smoke else "quick" if a.quick else "full"
  cfg = common.CONFIGS[mode]
  fws = a.frameworks.split(",") if a.frameworks else (
      ["purify", "jax", "haiku"] if mode == "smoke" else list(harness.FRAMEWORKS))
  models = a.models.split(",") if a.models else (
      ["mlp"] if mode == "smoke" else list(common.MODELS))
  out = pathlib.Path(a.out) if a.out else ROOT / "bench" / "results"
  out.mkdir(parents=True, exist_ok=True)
  reps = REPEATS[mode]
  env = report.environment(mode)
  t_start = time.time()
  res = harness.Results()
  harness.log(f"bench: mode={mode} frameworks={fws} models={models} -> {out}")
  if mode == "smoke":
    # every model's parameter count and output shape, without compiling (cheap)
    harness.check_parity(res, fws, common.MODELS, cfg)
  else:
    harness.log("warm-up (tiny MLP per framework)")
    harness.warm_up(fws)
  pipe = None

  def pipeline_phase():
    from bench import pipeline
    harness.log(f"[{time.time()-t_start:6.0f}s] pass pipeline vs program size")
    sizes = [(d, r) for d, r in pipeline.SIZES[mode]
             if a.pipeline_max_eqns is None or 30 * d + 8 <= a.pipeline_max_eqns]
    rows, exponent = pipeline.measure(sizes, log=harness.log)
    return rows, exponent

  def checkpoint(final=False):
    # results so far: a run cut short still leaves its tables
    env["wall_s"] = time.time() - t_start
    env["load_end"] = os.getloadavg()
    return report.write(out, res, pipe, env, fws, models, mode,
                        plots=final and not a.no_plots, partial=not final)

  # cheapest first, ResNet-50 (the longest compiles) last
  order = sorted(models, key=lambda m: ("mlp", "transformer", "transformer_scan",
                                        "resnet50").index(m))
  for model in order:
    if model == "resnet50" and not a.no_pipeline and "purify" in fws:
      pipe = pipeline_phase()
    nc, ns, inner = reps[model]
    harness.log(f"[{time.time()-t_start:6.0f}s] {model}: cold start")
    variables = harness.run_cold(res, fws, model, cfg, nc)
    harness.log(f"[{time.time()-t_start:6.0f}s] {model}: steady state")
    fns = harness.run_steady(res, fws, model, cfg, variables, ns, inner)
    if model == "transformer" and not a.no_layernorm:
      harness.log(f"[{time.time()-t_start:6.0f}s] layernorm fast vs exact")
      harness.run_layernorm(res, fws, cfg, variables, fns, *reps["layernorm"])
    del variables, fns
    if model in COUNT_MODELS:
      harness.run_python_counts(res, fws, model, cfg)
    checkpoint()
  if pipe is None and not a.no_pipeline and "purify" in fws:
    pipe = pipeline_phase()
  text = checkpoint(final=True)
  if a.docs or (mode == "full" and out == ROOT / "bench" / "results"):
    report.write_docs(ROOT / "docs" / "benchmarks.md", out, text)
  harness.log(f"[{env['wall_s']:6.0f}s] wrote {out}")
  return res, text


if __name__ == "__main__":
  main()
