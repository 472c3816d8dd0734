"""Pass pipeline time against one trace of the user's Python, per program size.

Run: python bench/pipeline.py   (writes bench/results/pipeline.md; bench/run.py calls
measure() too and adds a plot)

For each size (equations of a model made of Linear layers with dropout, plus a scan),
it reports the median over repeats of: tracing the user's Python (purify.trace, plus
the initializers split_init runs), and each pass (without those initializers). Ratios are to the trace of the same run. The growth exponent is the slope
of a log-log fit of pipeline time against equations.
"""
from __future__ import annotations

import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import purify  # noqa: E402
from purify import keys, passes, trace  # noqa: E402

# depth -> about 30 * depth + 8 equations
SIZES = {"full": [(33, 3), (100, 3), (333, 2), (1000, 1), (3333, 1)],
         "quick": [(33, 3), (100, 2), (333, 1)],
         "smoke": [(3, 1), (10, 1)]}


def model(depth):
  def f(x):
    h = x
    for _ in range(depth):
      h = jax.nn.relu(purify.nn.Linear(8)(h))
      keep = jax.random.bernoulli(purify.next_rng_key(), 0.9, h.shape)
      h = jnp.where(keep, h, 0.0)
    def body(c, xi):
      return c + purify.nn.Linear(8, name="cell")(xi), None
    return jax.lax.scan(body, h[0], h)[0]
  return f


def count_eqns(j):
  from purify.passes._assemble import iter_eqns
  return sum(1 for _ in iter_eqns(j))


def measure(sizes, log=print):
  """[(eqns, trace s, pipeline s, {pass: s}, initializers s)], growth exponent.

  The initializers (the user's Python split_init runs: ``PassRecord.user_seconds``)
  are counted with the trace of the user's Python, not with the passes: a
  hand-written init traces them too."""
  rows = []
  ka = keys.default_key_aval()
  pipe = passes.default_pipeline()
  for depth, repeats in sizes:
    f = model(depth)
    sig, _ = trace.signature_of((jnp.ones((4, 8)),), {})
    t_trace, t_passes, t_user, n = [], {}, [], 0
    for _ in range(repeats):
      t0 = time.perf_counter()
      prog, _ = trace.trace(f, sig, ka)
      t_model = time.perf_counter() - t0
      n = count_eqns(prog.jaxpr)
      _, records = pipe.run(prog)
      user = sum(r.user_seconds for r in records[1:])
      t_trace.append(t_model + user)
      t_user.append(user)
      for r in records[1:]:
        t_passes.setdefault(r.name, []).append(r.seconds - r.user_seconds)
    tt = statistics.median(t_trace)
    per = {k: statistics.median(v) for k, v in t_passes.items()}
    rows.append((n, tt, sum(per.values()), per, statistics.median(t_user)))
    log(f"  pipeline: {n} eqns, trace {tt:.3f}s, passes {sum(per.values()):.3f}s")
  ns = np.array([r[0] for r in rows], float)
  ps = np.array([r[2] for r in rows])
  exponent = float(np.polyfit(np.log(ns), np.log(ps), 1)[0]) if len(rows) > 1 else float("nan")
  return rows, exponent


def table(rows, exponent):
  names = list(rows[0][3])
  out = ["| eqns | trace ms | of which initializers | pipeline ms | pipeline/trace | " +
         " | ".join(names) + " |", "|---" * (5 + len(names)) + "|"]
  for row in rows:
    n, tt, tot, per = row[:4]
    user = row[4] if len(row) > 4 else float("nan")
    out.append(f"| {n} | {tt*1e3:.1f} | {user*1e3:.1f} | {tot*1e3:.1f} | {tot/tt:.2f} | " +
               " | ".join(f"{per.get(k, float('nan'))*1e3:.1f}" for k in names) + " |")
  out += ["", f"growth exponent of the pipeline (log-log fit): {exponent:.2f}", "",
          "trace: the user's Python, the model (purify.trace) plus the initializers "
          "split_init runs (the user's code too: a hand-written init traces them); "
          "pipeline: purify's passes without those initializers."]
  return out


def main():
  mode = "quick" if "--quick" in sys.argv else "full"
  rows, exponent = measure(SIZES[mode])
  out = [f"# pass pipeline vs trace ({platform.machine()}, JAX {jax.__version__}, "
         f"Python {platform.python_version()})", ""] + table(rows, exponent)
  text = "\n".join(out)
  print(text)
  res = pathlib.Path(__file__).resolve().parent / "results"
  res.mkdir(exist_ok=True)
  (res / "pipeline.md").write_text(text + "\n")


if __name__ == "__main__":
  main()
