"""dropout: Haiku's ``hk.dropout`` with the key drawn from purify's RNG."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

import purify


def dropout(rate, x, *haiku_rest, broadcast_dims: Sequence[int] = (), rng=None):
  """Zero each element of ``x`` with probability ``rate``; scale the rest by ``1/(1-rate)``.

  The key is ``purify.next_rng_key()`` unless ``rng=`` is given (then the result
  equals ``hk.dropout(rng, rate, x, broadcast_dims)``). Under ``jax.vmap`` every
  example gets its own mask, under ``lax.scan`` every step does (loop semantics).
  ``broadcast_dims`` share one mask value along those axes. A Python ``rate`` of 0
  returns ``x`` without drawing a key.

  Haiku's positional form ``dropout(rng, rate, x[, broadcast_dims])`` is accepted
  too (code ported from ``hk.dropout`` runs unchanged): it is ``dropout(rate, x,
  broadcast_dims=..., rng=rng)``.

  Example::

      def f(x, is_training):
        h = purify.nn.Linear(8)(x)
        return purify.nn.dropout(0.5, h) if is_training else h
  """
  if haiku_rest:
    rate, x, broadcast_dims, rng = _haiku_form(rate, x, haiku_rest, broadcast_dims, rng)
  concrete = True
  try:
    rate_value = float(rate)
  except (TypeError, jax.errors.ConcretizationTypeError):
    concrete = False
  if concrete:
    if not 0.0 <= rate_value < 1.0:
      raise ValueError(f"dropout: rate must be in [0, 1), got {rate!r}.")
    if rate_value == 0.0:
      return x
  shape = list(jnp.shape(x))
  for dim in broadcast_dims:
    if not -len(shape) <= dim < len(shape):
      raise ValueError(f"dropout: broadcast dimension {dim} does not exist for shape "
                       f"{tuple(shape)}.")
    shape[dim] = 1
  key = purify.next_rng_key() if rng is None else rng
  keep_rate = 1.0 - rate
  keep = jax.random.bernoulli(key, keep_rate, shape=tuple(shape))
  return jnp.broadcast_to(keep, jnp.shape(x)) * x / keep_rate


def _haiku_form(first, second, rest, broadcast_dims, rng):
  """``dropout(rng, rate, x[, broadcast_dims])`` (Haiku's order) as ``(rate, x,
  broadcast_dims, rng)``; anything else that passed more than two positional
  arguments is refused, naming both forms."""
  usage = ("purify.nn.dropout takes dropout(rate, x, *, broadcast_dims=(), rng=None), "
           "or Haiku's order dropout(rng, rate, x, broadcast_dims=())")
  if len(rest) > 2:
    raise TypeError(f"{usage}; got {2 + len(rest)} positional arguments.")
  if rng is not None:
    raise TypeError(f"{usage}: the key was given twice (first positional argument and "
                    "rng=); pass it once.")
  if len(rest) == 2 and tuple(broadcast_dims):
    raise TypeError(f"{usage}: broadcast_dims was given twice (fourth positional argument "
                    "and broadcast_dims=); pass it once.")
  if not _is_key(first):
    raise TypeError(f"{usage}; with three positional arguments the first must be a PRNG "
                    f"key (jax.random.key or PRNGKey), got {_describe(first)}.")
  return second, rest[0], (rest[1] if len(rest) == 2 else broadcast_dims), first


def _is_key(k) -> bool:
  """A typed key array, or a raw ``uint32[..., 2]`` key (``jax.random.PRNGKey``)."""
  try:
    dtype = jnp.asarray(k).dtype if not hasattr(k, "dtype") else k.dtype
  except TypeError:
    return False
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return True
  return dtype == jnp.uint32 and jnp.ndim(k) >= 1 and jnp.shape(k)[-1] == 2


def _describe(v) -> str:
  if hasattr(v, "dtype") and hasattr(v, "shape"):
    return f"an array of {v.dtype}{list(v.shape)}"
  return f"{type(v).__name__} {v!r}"[:80]
