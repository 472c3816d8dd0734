"""Key derivation: keys come from position, not from call order.

* the initial value of parameter ``module/name`` uses
  ``derive(root, "param:module/name")``;
* a draw of ``next_rng_key()`` at site ``module#n`` (the n-th draw traced in that
  module) inside loops with iteration indices ``i1, i2, ...`` (outermost first; the
  index of a scan step is the position in ``xs``, so ``reverse=True`` keeps each
  element's key) and vmaps with example indices ``b1, b2, ...`` (outermost first) is
  ``fold(derive(fold(root, i1, i2, ...), "rng:module#n"), b1, b2, ...)``;
* ``derive(key, s)`` folds in the two 32-bit halves of a stable 64-bit BLAKE2b hash
  of ``s`` (never Python's salted ``hash``), so a site's key depends only on its
  full name: adding a layer elsewhere changes nothing here.

The same functions are used by the passes (inlined into the jaxpr) and by the
reference interpreter in the tests, so both sides agree by construction only on the
*definition*; the tests check the numbers.
"""
from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from purify import _compat


@functools.lru_cache(maxsize=None)
def name_hash(s: str) -> tuple[int, int]:
  """Stable 64-bit hash of ``s`` as two uint32 halves (hi, lo)."""
  h = int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
  return (h >> 32) & 0xFFFFFFFF, h & 0xFFFFFFFF


def derive(key, s: str):
  hi, lo = name_hash(s)
  return jax.random.fold_in(jax.random.fold_in(key, np.uint32(hi)), np.uint32(lo))


def derive_many(key, names):
  """``[derive(key, s) for s in names]`` stacked, as ONE vectorized computation
  (bitwise the same keys: threefry works elementwise over the batch). The init
  program derives every parameter's key this way: one hash computation to compile
  instead of two per parameter. The folds take the whole batch of messages at once
  (half the time of a ``jax.vmap`` of ``derive`` to trace)."""
  halves = np.array([name_hash(s) for s in names], dtype=np.uint32).reshape(-1, 2)
  return fold_halves(key, halves[:, 0], halves[:, 1])


def fold_halves(key, hi, lo, batch: tuple[int, ...] = ()):
  """``fold_batch(fold_in(fold_in(key, hi), lo), batch)`` with uint32 ``hi``/``lo``
  (scalars, or arrays that broadcast with the key); a raw key is wrapped once and
  unwrapped once (``jax.random.fold_in`` on a raw key does both at each fold: 6
  equations instead of 4 in a traced program, the same key)."""
  typed = is_typed_key(key)
  k = key if typed else jax.random.wrap_key_data(key)
  k = fold_batch(_compat.random_fold_in(_compat.random_fold_in(k, hi), lo), batch)
  return k if typed else jax.random.key_data(k)


def param_key(root, path: str):
  return derive(root, "param:" + path)


def rng_key(base, site: str):
  return derive(base, "rng:" + site)


def fold_indices(key, *indices):
  for i in indices:
    key = jax.random.fold_in(key, i)
  return key


def fold_batch(key, batch: tuple[int, ...]):
  """Keys of shape ``batch``: element ``[b1, b2, ...]`` is ``fold(key, b1, b2, ...)``.
  ``key`` may itself be a batch of keys (leading axes, e.g. a group of stacked
  parameters): each of its keys gets its own ``batch``. Each fold takes the whole
  batch of indices at once (an iota), no ``vmap``."""
  if not batch:
    return key
  typed = is_typed_key(key)
  k = key if typed else jax.random.wrap_key_data(key)
  for n in batch:
    shape = tuple(k.shape) + (int(n),)
    if k.ndim:                     # (a scalar key broadcasts against the indices)
      k = jax.lax.broadcast_in_dim(k, shape, tuple(range(k.ndim)))
    k = _compat.random_fold_in(k, jax.lax.broadcasted_iota(np.uint32, shape, len(shape) - 1))
  return k if typed else jax.random.key_data(k)


def key_aval(rng):
  """The abstract value of a root key (raw uint32 PRNGKey or typed key)."""
  return jax.typeof(rng) if not isinstance(rng, jax.ShapeDtypeStruct) else rng


def is_typed_key(x) -> bool:
  return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def default_key_aval():
  """ShapedArray of the default root key (a raw ``PRNGKey``) of the default PRNG
  implementation (``jax_default_prng_impl``; computed once an implementation)."""
  return _default_key_aval(jax.config.jax_default_prng_impl)


@functools.lru_cache(maxsize=None)
def _default_key_aval(impl_name):
  sds = jax.eval_shape(lambda: jax.random.PRNGKey(0))     # (~250 us: once)
  return jax.core.ShapedArray(sds.shape, sds.dtype)


class PRNGSequence:
  """Haiku's ``hk.PRNGSequence``, for code outside a transform (a training loop):
  an iterator of fresh keys from a seed or a key (raw or typed), each ``next`` one
  split off — the same keys as Haiku's.

  Example::

      seq = purify.PRNGSequence(42)
      params = model.init(next(seq), x)
      k1, k2 = seq.take(2)
  """

  def __init__(self, key_or_seed):
    if isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
      key_or_seed = jax.random.PRNGKey(key_or_seed)
    elif getattr(key_or_seed, "shape", None) == () and \
        getattr(key_or_seed, "dtype", None) in (jnp.int32, jnp.uint32, jnp.int64):
      key_or_seed = jax.random.PRNGKey(key_or_seed)       # a seed as a scalar array
    elif not hasattr(key_or_seed, "dtype") or (
        not (is_typed_key(key_or_seed) and jnp.shape(key_or_seed) == ()) and
        not (key_or_seed.dtype == jnp.uint32 and jnp.shape(key_or_seed) == (2,))):
      raise TypeError(f"purify.PRNGSequence takes an int seed or a PRNG key "
                      f"(jax.random.key(s) or PRNGKey(s)), got {key_or_seed!r}.")
    self._key = key_or_seed
    self._reserved: list = []

  def reserve(self, num: int) -> None:
    """Split ``num`` more keys off now, for the next ``num`` calls."""
    if num > 0:
      key, *subkeys = jax.random.split(self._key, num + 1)
      self._key = key
      self._reserved.extend(subkeys)

  def __iter__(self):
    return self

  def __next__(self):
    if not self._reserved:
      self.reserve(1)
    return self._reserved.pop(0)

  def take(self, num: int) -> tuple:
    """The next ``num`` keys."""
    self.reserve(max(num - len(self._reserved), 0))
    return tuple(next(self) for _ in range(num))
