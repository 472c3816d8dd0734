"""``python -m purify demo``: the seed document's summary table, every row run for
real through purify (``purify.nn.MLP`` stands in for ResNet50)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

import purify


def _mlp(x):
  return purify.nn.MLP([32, 10])(x)


def _shapes(tree):
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def rows():
  """(what, purify code, function returning a one-line result) for each table row."""
  key = jax.random.key(0)
  batch = jnp.ones((4, 8))

  def outside():
    net = purify.transform(_mlp)
    params = net.init(key, batch[0])
    out = jax.vmap(net.apply, in_axes=(None, None, 0))(params, None, batch)
    return f"out {out.shape}, params {sorted(params)}"

  def inside():
    net = purify.transform(lambda x: jax.vmap(purify.nn.MLP([32, 10]))(x))
    params = net.init(key, batch)
    out = net.apply(params, None, batch)
    return f"out {out.shape}, params shared by all examples: {sorted(params)}"

  def nested_without_lift():
    inner = purify.transform(_mlp)
    def outer(x):
      params = jax.vmap(inner.init, in_axes=(None, 0))(purify.next_rng_key(), x)
      return jax.vmap(inner.apply, in_axes=(0, None, 0))(params, None, x)
    try:
      purify.transform(outer).init(key, batch)
    except purify.errors.NestedTransformError as e:
      return "flagged: " + str(e).splitlines()[0][:60] + "... (tl;dr: use purify.lift)"
    return "NOT FLAGGED (bug)"

  def nested_with_lift():
    inner = purify.transform(_mlp)
    def per_example(x):
      params = purify.lift(inner.init, name="inner")(purify.next_rng_key(), x)
      return inner.apply(params, None, x)
    def outer(x):
      return jax.vmap(per_example)(x)
    net = purify.transform(outer)
    params = net.init(key, batch)
    out = net.apply(params, None, batch)
    return f"out {out.shape}, params {sorted(params)}"

  def drop_in():
    net = purify.transform(lambda x: purify.vmap(purify.nn.MLP([32, 10]))(x))
    params = net.init(key, batch)
    return f"out {net.apply(params, None, batch).shape}, params {sorted(params)}"

  return [
      ("vmapping outside transform", "jax.vmap(purify.transform(MLP).apply)", outside),
      ("vmapping inside transform", "purify.transform(jax.vmap(MLP))", inside),
      ("vmapping a nested transform without lift",
       "purify.transform(jax.vmap(purify.transform(MLP).init))", nested_without_lift),
      ("vmapping a nested transform with lift",
       "purify.transform(jax.vmap(purify.lift(purify.transform(MLP).init)))", nested_with_lift),
      ("using purify.vmap", "purify.transform(purify.vmap(MLP))", drop_in),
  ]


def main() -> int:
  print("The seed's summary table (Haiku: 2 of 5 rows fail), run through purify:\n")
  ok = True
  for what, code, fn in rows():
    try:
      result, status = fn(), "yes"
      if "bug" in result:
        ok, status = False, "NO"
    except Exception as e:  # the demo reports, it does not hide
      result, status, ok = f"{type(e).__name__}: {e}", "NO", False
    print(f"{what:44s} {status:4s} {code}\n{'':49s}-> {result}")
  return 0 if ok else 1
