"""bench/run.py --smoke: the side-by-side harness end to end on tiny models.

Only purify, hand-written JAX and dm-haiku (test dependencies on every JAX version);
the full benchmark adds Flax and Equinox (bench/requirements.txt).
"""
import math
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common, run  # noqa: E402

FWS = ("purify", "jax", "haiku")


def test_bench_smoke(tmp_path):
  res, text = run.main(["--smoke", "--out", str(tmp_path), "--no-plots", "--no-pipeline"])
  md = (tmp_path / "results.md").read_text()
  assert md == text and (tmp_path / "results.json").exists()
  assert not res.unavailable, res.unavailable

  # every framework builds every model with the same parameter count and output shape
  cfg = common.CONFIGS["smoke"]
  for model in common.MODELS:
    counts = {res.params[(fw, model)] for fw in FWS}
    shapes = {res.out_shapes[(fw, model)] for fw in FWS}
    assert len(counts) == 1 and len(shapes) == 1, (model, counts, shapes)
    assert re.search(rf"^- {model}: equal", md, re.M)
  c = cfg["mlp"]
  sizes = (c["d_in"],) + tuple(c["widths"])
  want = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
  assert res.params[("purify", "mlp")] == want
  assert res.out_shapes[("haiku", "mlp")] == (c["batch"], c["widths"][-1])

  # every framework has a row in the time-to-first-result and steady-state tables
  for fw in FWS:
    assert re.search(rf"^\| {fw} \| {want:,} \| ", md, re.M), fw
    cold = res.cold[(fw, "mlp")][0]
    assert all(cold[p][s] >= 0 for p in ("init", "apply") for s in ("lower", "compile", "run"))
    assert cold["init"]["compile"] > 0 and cold["apply"]["compile"] > 0
    st = res.steady[(fw, "mlp")]
    assert all(math.isfinite(t) and t > 0 for t in st["fwd"] + st["train"])
    assert {"init", "fwd", "train"} <= set(res.hlo[(fw, "mlp")])
  # purify's passes are timed one by one and belong to init (apply re-uses the trace)
  pc = res.cold[("purify", "mlp")][0]
  assert pc["init"]["per_pass"] and pc["init"]["passes"] >= sum(pc["init"]["per_pass"].values())
  assert pc["apply"]["user_trace"] == 0.0 and pc["apply"]["passes"] == 0.0

  # how often the model's Python ran for init, apply, jax.jit(apply)
  assert res.runs[("purify", "mlp")] == [1, 1, 1]     # traced once, never again
  assert res.runs[("haiku", "mlp")] == [1, 2, 3]
  assert res.runs[("jax", "mlp")] == [0, 1, 2]
  assert "re-runs the model's Python 0 times" in md

  # the same program: purify's optimized forward/train HLO equals hand-written JAX's
  assert res.hlo[("purify", "mlp")]["fwd"] == res.hlo[("jax", "mlp")]["fwd"]
  assert res.hlo[("purify", "mlp")]["train"] == res.hlo[("jax", "mlp")]["train"]
  assert "## Targets (issue 5)" in md
