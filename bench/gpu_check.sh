#!/usr/bin/env bash
# The device check, one short script (run on a GPU machine from the repo root; results
# under $OUT): the eager-init paths that only a non-CPU device takes (stacked rows
# taken by a jitted dynamic-index program; the forward program staged), checked
# bitwise against init traced as one program, then a quick purify-vs-JAX bench.
set -uo pipefail
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python - <<'PY'
import jax, jax.numpy as jnp, numpy as np, purify
from purify import lowering
print("jax", jax.__version__, jax.devices())
def f(x, is_training=True):
  h = purify.nn.Linear(8)(x)
  h = purify.nn.Linear(8)(h)
  h = purify.nn.BatchNorm(True, True, 0.9)(h, is_training)
  return purify.nn.Linear(8)(jax.nn.relu(h))
t = purify.transform_with_state(f)
x, key = jnp.ones((4, 8)), jax.random.PRNGKey(0)
c, _ = t.init.purified.compiled(key, (x,), {})
plan = c.init_exec.plan
assert plan is not None and c.init_exec.forward is not None
eager = t.init(key, x)
assert not lowering._on_host(jax.tree_util.tree_leaves(eager)[0])
traced = jax.jit(t.init)(key, x)
for a, b in zip(jax.tree_util.tree_leaves(eager[0]), jax.tree_util.tree_leaves(traced[0])):
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
for a, b in zip(jax.tree_util.tree_leaves(eager[1]), jax.tree_util.tree_leaves(traced[1])):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
print("device init paths: OK", lowering._device_views.cache_info().currsize, "view programs")
PY
timeout 420 python bench/run.py --quick --models mlp,transformer,transformer_scan,resnet50 \
  --frameworks purify,jax --no-pipeline --no-layernorm --no-plots --out "$OUT"
