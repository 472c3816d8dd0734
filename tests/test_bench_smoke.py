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


def _resnet_jax_variables(params, state, c):
  """purify's ResNet-50 variables (Haiku's names) as hand-written JAX's trees."""
  def bn(name):
    return ({"scale": params[name]["scale"], "offset": params[name]["offset"]},
            {"mean_ema": state[name + "/~/mean_ema"], "var_ema": state[name + "/~/var_ema"]})
  p = {"stem": params["initial_conv"]["w"], "logits": dict(params["logits"])}
  p["stem_bn"], s = bn("initial_batchnorm")
  s = {"stem_bn": s}
  blocks_p, blocks_s = [], []
  for g, n in enumerate(c["blocks"]):
    for b in range(n):
      pre, bp, bs = f"block_{g}_{b}/", {}, {}
      names = [("c0", "conv_0"), ("c1", "conv_1"), ("c2", "conv_2")]
      bns = [("bn0", "batchnorm_0"), ("bn1", "batchnorm_1"), ("bn2", "batchnorm_2")]
      if b == 0:
        names.append(("proj", "shortcut_conv"))
        bns.append(("proj_bn", "shortcut_batchnorm"))
      for ours, theirs in names:
        bp[ours] = params[pre + theirs]["w"]
      for ours, theirs in bns:
        bp[ours], bs[ours] = bn(pre + theirs)
      blocks_p.append(bp)
      blocks_s.append(bs)
  p["blocks"], s["blocks"] = blocks_p, blocks_s
  return p, s


def test_resnet_is_the_same_model_in_purify_and_hand_written_jax():
  """The steady-state and HLO lines compare purify's ResNet-50 with hand-written JAX's:
  the same model (Haiku's BatchNorm with its zero-debiased moving averages) on the same
  variables gives the same outputs and state, by the same optimized program size."""
  import jax
  import numpy as np
  from bench import fw_haiku_style, fw_jax, harness

  cfg = common.CONFIGS["smoke"]
  c = common.model_cfg("resnet50", cfg)
  x, _ = common.inputs("resnet50", cfg)
  ours, ref = fw_haiku_style.build_purify("resnet50", cfg), fw_jax.build("resnet50", cfg)
  params, state = ours.split(jax.jit(ours.init)(jax.random.PRNGKey(0), x))
  v_ref = _resnet_jax_variables(params, state, c)
  # the hand-written init's tree has the same structure, shapes and dtypes
  want = jax.eval_shape(ref.init, jax.random.PRNGKey(0), x)
  assert (jax.tree_util.tree_structure(want) == jax.tree_util.tree_structure(v_ref))
  assert ([(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(want)]
          == [(np.shape(a), a.dtype) for a in jax.tree_util.tree_leaves(v_ref)])
  out, new_state = jax.jit(ours.fwd)(ours.merge(params, state), x)
  out_ref, new_ref = jax.jit(ref.fwd)(v_ref, x)
  np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(_resnet_jax_variables(params, new_state, c)[1]),
                  jax.tree_util.tree_leaves(new_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  ops = [harness.hlo_ops(jax.jit(impl.fwd).lower(v, x).compile())
         for impl, v in ((ours, ours.merge(params, state)), (ref, v_ref))]
  assert ops[0] == ops[1], ops
