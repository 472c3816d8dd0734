"""Pass pipeline time against one trace of the user's Python, per program size.

Run: python bench/pipeline.py   (writes bench/results/pipeline.md)

For each size n (equations of a model made of n/10 Linear layers with dropout,
inside a scan and a vmap), it reports the median of 5 runs of: tracing the user's
Python (purify.trace), and each pass. Ratios are to the trace of the same run.
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


def main():
  rows = []
  ka = keys.default_key_aval()
  pipe = passes.default_pipeline()
  for depth in (10, 100, 1000):
    f = model(depth)
    sig, _ = trace.signature_of((jnp.ones((4, 8)),), {})
    t_trace, t_passes, n = [], {}, 0
    for _ in range(5):
      t0 = time.perf_counter()
      prog, _ = trace.trace(f, sig, ka)
      t_trace.append(time.perf_counter() - t0)
      n = count_eqns(prog.jaxpr)
      _, records = pipe.run(prog)
      for r in records[1:]:
        t_passes.setdefault(r.name, []).append(r.seconds)
    tt = statistics.median(t_trace)
    total = sum(statistics.median(v) for v in t_passes.values())
    rows.append((n, tt, total, {k: statistics.median(v) for k, v in t_passes.items()}))
  ns = np.array([r[0] for r in rows], float)
  ps = np.array([r[2] for r in rows])
  exponent = np.polyfit(np.log(ns), np.log(ps), 1)[0]
  out = [f"# pass pipeline vs trace ({platform.machine()}, JAX {jax.__version__}, Python {platform.python_version()})",
         "", "| eqns | trace ms | pipeline ms | pipeline/trace | " + " | ".join(rows[0][3]) + " |",
         "|---" * (4 + len(rows[0][3])) + "|"]
  for n, tt, total, per in rows:
    out.append(f"| {n} | {tt*1e3:.1f} | {total*1e3:.1f} | {total/tt:.2f} | " +
               " | ".join(f"{v*1e3:.1f}" for v in per.values()) + " |")
  out += ["", f"growth exponent of the pipeline (log-log fit): {exponent:.2f}"]
  text = "\n".join(out)
  print(text)
  res = pathlib.Path(__file__).resolve().parent / "results"
  res.mkdir(exist_ok=True)
  (res / "pipeline.md").write_text(text + "\n")


if __name__ == "__main__":
  main()
