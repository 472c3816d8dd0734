"""What every framework's model file shares: sizes, the Impl record, the call counter.

A framework module exposes ``build(model, cfg, fast_variance=False) -> Impl`` and
raises :class:`Unavailable` (with a reason) when it cannot build a model yet.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


class Unavailable(Exception):
  """A framework cannot build this model (the reason goes into the table)."""


MODELS = ("mlp", "resnet50", "transformer", "transformer_scan")

# Sizes per mode. "full" is issue 5's: MLP 4x1024 batch 128; ResNet-50 on 8x64x64x3;
# Transformer LM 6 layers, d=256, seq 128.
CONFIGS = {
    "full": dict(
        mlp=dict(batch=128, d_in=1024, widths=(1024, 1024, 1024, 1024)),
        resnet50=dict(batch=8, hw=64, blocks=(3, 4, 6, 3), channels=(256, 512, 1024, 2048),
                      stem=64, classes=1000),
        transformer=dict(batch=8, seq=128, vocab=2048, d=256, heads=4, layers=6, mlp=1024),
    ),
    "smoke": dict(
        mlp=dict(batch=4, d_in=16, widths=(32, 32, 32, 32)),
        resnet50=dict(batch=2, hw=16, blocks=(1, 1, 1, 1), channels=(16, 32, 64, 128),
                      stem=8, classes=10),
        transformer=dict(batch=2, seq=8, vocab=32, d=16, heads=2, layers=2, mlp=32),
    ),
}
CONFIGS["quick"] = CONFIGS["full"]


def model_cfg(model: str, cfg: dict) -> dict:
  return cfg["transformer" if model.startswith("transformer") else model]


def inputs(model: str, cfg: dict):
  """(x, y): the model input and a training target, deterministic."""
  c = model_cfg(model, cfg)
  rs = np.random.RandomState(0)
  if model == "mlp":
    x = rs.randn(c["batch"], c["d_in"]).astype(np.float32)
    y = rs.randn(c["batch"], c["widths"][-1]).astype(np.float32)
  elif model == "resnet50":
    x = rs.randn(c["batch"], c["hw"], c["hw"], 3).astype(np.float32)
    y = rs.randint(0, c["classes"], size=(c["batch"],)).astype(np.int32)
  else:
    tok = rs.randint(0, c["vocab"], size=(c["batch"], c["seq"] + 1)).astype(np.int32)
    x, y = tok[:, :-1], tok[:, 1:]
  return jnp.asarray(x), jnp.asarray(y)


def loss_of(model: str, out, y):
  """Mean squared error for the MLP, softmax cross-entropy for the others."""
  if model == "mlp":
    return jnp.mean((out - y) ** 2)
  logp = jax.nn.log_softmax(out)
  return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


class Counter:
  """How many times the user's model Python ran (incremented in the model body)."""

  def __init__(self):
    self.n = 0

  def tick(self):
    self.n += 1


@dataclasses.dataclass
class Impl:
  """One framework's model, as pure functions the harness can stage and time.

  ``init(key, x) -> variables``; ``fwd(variables, x) -> out`` (or ``(out, state)``);
  ``split(variables) -> (params, rest)``, ``merge(params, rest) -> variables``;
  ``loss(params, rest, x, y) -> (scalar, new_rest)``. ``natural()`` runs the
  framework's ordinary API once: init, apply, jit(apply) (for the Python-run count).
  ``cold`` (optional) replaces the harness's generic jit-staged cold start.
  """
  framework: str
  model: str
  init: Callable
  fwd: Callable
  loss: Callable
  counter: Counter
  natural: Callable
  split: Callable = lambda v: (v, None)
  merge: Callable = lambda p, rest: p
  cold: Callable | None = None
  params_of: Callable | None = None     # variables -> the trainable params pytree
  notes: str = ""

  def param_count(self, variables) -> int:
    p = self.params_of(variables) if self.params_of else self.split(variables)[0]
    return int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(p)))


def sgd_step(impl: Impl, lr: float = 1e-3):
  """value_and_grad + SGD, the train step every framework is timed on."""
  def step(variables, x, y):
    params, rest = impl.split(variables)
    (l, new_rest), g = jax.value_and_grad(impl.loss, has_aux=True)(params, rest, x, y)
    params = jax.tree_util.tree_map(lambda p, d: p - lr * d, params, g)
    return l, impl.merge(params, new_rest)
  return step


def causal_mask(t: int):
  return jnp.tril(jnp.ones((t, t), bool))
