"""purify.data_structures against hk.data_structures: the same results on the same
params, and clear errors where Haiku asserts."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from purify import data_structures as ds

HKDS = hk.data_structures


def _params():
  t = purify.transform(lambda x: purify.nn.Linear(1, name="head")(
      purify.nn.MLP([4, 3], name="body")(x)))
  return t.init(jax.random.key(0), jnp.ones((2, 5)))


def _same(a, b):
  assert jax.tree.map(lambda v: (v.shape, str(v.dtype)), a) == \
      jax.tree.map(lambda v: (v.shape, str(v.dtype)), dict(b))
  jax.tree.map(np.testing.assert_array_equal, a, dict(b))


def test_traverse_partition_filter_map_merge_are_haikus():
  p = _params()
  assert list(ds.traverse(p)) == list(HKDS.traverse(p))
  pred = lambda m, n, v: m.startswith("body") and n == "w"        # noqa: E731
  for got, want in zip(ds.partition(pred, p), HKDS.partition(pred, p)):
    _same(got, want)
  by_size = lambda m, n, v: min(v.ndim, 2)                         # noqa: E731
  for got, want in zip(ds.partition_n(by_size, p, 3), HKDS.partition_n(by_size, p, 3)):
    _same(got, want)
  _same(ds.filter(pred, p), HKDS.filter(pred, p))
  double = lambda m, n, v: v * 2                                   # noqa: E731
  _same(ds.map(double, p), HKDS.map(double, p))
  a, b = ds.partition(pred, p)
  _same(ds.merge(a, b), HKDS.merge(a, b))
  _same(ds.merge(p, ds.map(double, p)), ds.map(double, p))         # the later one wins
  assert ds.is_subset(subset=a, superset=p) and not ds.is_subset(subset=p, superset=a)
  assert ds.is_subset(subset={"x": {}}, superset={}) == HKDS.is_subset(subset={"x": {}}, superset={})
  assert ds.tree_size(p) == HKDS.tree_size(p) == 5 * 4 + 4 + 4 * 3 + 3 + 3 * 1 + 1
  assert ds.tree_bytes(p) == HKDS.tree_bytes(p) == 4 * ds.tree_size(p)
  m = ds.to_mutable_dict(p)
  assert m == p and m is not p and m["head"] is not p["head"]
  # a partitioned model trains its head only: merged params run in apply
  t = purify.transform(lambda x: purify.nn.Linear(1, name="head")(
      purify.nn.MLP([4, 3], name="body")(x)))
  head, body = ds.partition(lambda m, n, v: m == "head", p)
  np.testing.assert_array_equal(t.apply(ds.merge(body, head), None, jnp.ones((2, 5))),
                                t.apply(p, None, jnp.ones((2, 5))))


def test_merge_check_duplicates_and_partition_n_range_name_the_entry():
  p = _params()
  wider = ds.map(lambda m, n, v: jnp.concatenate([v, v]) if m == "head" and n == "b" else v, p)
  with pytest.raises(ValueError, match=r"head/b.*different shapes"):
    ds.merge(p, wider, check_duplicates=True)
  assert ds.merge(p, p, check_duplicates=True) == ds.merge(p)
  with pytest.raises(ValueError, match=r"fn returned 3 for body/~/linear_0/b.*\[0, 2\)"):
    ds.partition_n(lambda m, n, v: 3, p, 2)
