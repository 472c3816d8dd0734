"""Comparing values that two different XLA programs computed.

Random bits, keys and integers are compared bitwise always. Floating-point values
computed by the same operations on the same bits in two different programs (an
init with and without a pass, a group's vmapped initializer and one call a
parameter, a hand-written reference) are bitwise equal where XLA computes an
elementwise function alike whatever the shape of the kernel it sits in. XLA CPU in
JAX 0.12 does not on every machine: on an AVX-512 CPU ``erf_inv`` over a last
dimension of 3-6 takes another code path than over a long one, and pure JAX's own
``jax.random.truncated_normal(key, -2, 2, (64, 4))`` eager and under ``jax.jit``
differ by one ulp in a few % of the elements (measured; JAX 0.10 on the same CPU:
bitwise). Where the probe below finds that (``SHAPE_DEPENDENT_MATH``), floats are
compared to within one ulp; elsewhere bitwise."""
import jax
import numpy as np


def _shape_dependent_math() -> bool:
  x = np.random.RandomState(0).uniform(-0.999, 0.999, 4096).astype(np.float32)
  f = jax.jit(jax.lax.erf_inv)
  return not np.array_equal(np.asarray(f(x)), np.asarray(f(x.reshape(-1, 4))).ravel())


SHAPE_DEPENDENT_MATH = _shape_dependent_math()


def assert_same_values(a, b, derived=False):
  """``a`` and ``b`` (pytrees) hold the same values: bitwise, or for floats within
  one ulp where XLA's elementwise math depends on the kernel's shape. ``derived``:
  values computed further from such floats (a forward pass from initial
  parameters: batch-norm statistics), where a one-ulp difference in an input can
  grow: there within a relative 1e-5."""
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and la
  for x, y in zip(la, lb):
    x, y = np.atleast_1d(np.asarray(x)), np.atleast_1d(np.asarray(y))
    assert x.dtype == y.dtype and x.shape == y.shape
    if SHAPE_DEPENDENT_MATH and np.issubdtype(x.dtype, np.floating):
      if derived:
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
      else:
        np.testing.assert_array_max_ulp(x, y, maxulp=1)
    else:
      np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))
