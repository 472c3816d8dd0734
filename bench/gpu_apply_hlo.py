"""Device check: why purify's first apply compiles slower than hand-written JAX's on
GPU although the optimized HLO has the same op count. Writes both optimized forward
HLOs and their compile times (run once with default XLA flags, once with
XLA_FLAGS=--xla_gpu_autotune_level=0) under $OUT."""
import os
import sys
import time

import jax

sys.path.insert(0, os.getcwd())
from bench import common, harness  # noqa: E402

out = os.environ.get("OUT", "/tmp")
tag = sys.argv[1] if len(sys.argv) > 1 else "default"
model = "transformer"
cfg = common.CONFIGS["full"]
x, _ = common.inputs(model, cfg)
for fw in ("jax", "purify", "jax", "purify"):
  impl = harness.build(fw, model, cfg)
  v = impl.init(jax.random.PRNGKey(0), x)
  low = jax.jit(impl.fwd).lower(v, x)
  t0 = time.perf_counter()
  comp = low.compile()
  dt = time.perf_counter() - t0
  txt = comp.as_text()
  print(tag, fw, "compile %.0f ms" % (dt * 1e3), "hlo ops", harness.hlo_ops(comp),
        "fusions", txt.count(" fusion("), "custom-calls", txt.count("custom-call("), flush=True)
  with open(os.path.join(out, f"{tag}_{fw}_fwd.hlo.txt"), "w") as f:
    f.write(txt)
  with open(os.path.join(out, f"{tag}_{fw}_fwd.stablehlo.txt"), "w") as f:
    f.write(low.as_text())
