"""Shared by the purify.nn-vs-dm-haiku test files: run a model under ``hk.transform``
and ``purify.transform``, assert equal parameter trees, apply both to the same params.

Example::

    from _haiku_parity import TOL, parity
    out_h, out_p = parity(lambda x: hk.Linear(3)(x), lambda x: purify.nn.Linear(3)(x),
                          jnp.ones((2, 4)))
    np.testing.assert_allclose(out_p, out_h, **TOL)
"""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

import purify

ROOT = jax.random.PRNGKey(0)
TOL = dict(rtol=1e-5, atol=1e-5)


def signature(params):
  """``{module: {name: (shape, dtype)}}`` of a params tree (arrays or ShapeDtypeStructs)."""
  return {m: {n: (tuple(v.shape), jnp.dtype(v.dtype)) for n, v in sub.items()}
          for m, sub in params.items()}


def random_like(shapes, seed=0, scale=1.0):
  """Random values (biases too, unlike a fresh init) for a tree of ShapeDtypeStructs:
  ``scale`` times standard normals."""
  rs = np.random.RandomState(seed)
  return {m: {n: jnp.asarray(scale * rs.normal(size=v.shape), v.dtype) for n, v in sub.items()}
          for m, sub in shapes.items()}


def parity(hk_fn, pf_fn, *args, scale=1.0):
  """Assert that ``hk.transform(hk_fn).init`` and ``purify.transform(pf_fn).init`` give
  the same param tree (abstractly: compiling initializers is what costs); apply both
  to the same random params of that tree (``random_like(..., scale=scale)``); return
  (haiku_out, purify_out)."""
  th, tp = hk.transform(hk_fn), purify.transform(pf_fn)
  shapes = jax.eval_shape(th.init, ROOT, *args)
  assert signature(jax.eval_shape(tp.init, ROOT, *args)) == signature(shapes)
  params = random_like(shapes, scale=scale)
  return jax.jit(th.apply)(params, None, *args), tp.apply(params, None, *args)
