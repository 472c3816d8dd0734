"""dropout: Haiku's ``hk.dropout`` with the key drawn from purify's RNG."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

import purify


def dropout(rate: float, x: jax.Array, *, broadcast_dims: Sequence[int] = (), rng=None):
  """Zero each element of ``x`` with probability ``rate``; scale the rest by ``1/(1-rate)``.

  The key is ``purify.next_rng_key()`` unless ``rng=`` is given (then the result
  equals ``hk.dropout(rng, rate, x, broadcast_dims)``). Under ``jax.vmap`` every
  example gets its own mask, under ``lax.scan`` every step does (loop semantics).
  ``broadcast_dims`` share one mask value along those axes. A Python ``rate`` of 0
  returns ``x`` without drawing a key.

  Example::

      def f(x, is_training):
        h = purify.nn.Linear(8)(x)
        return purify.nn.dropout(0.5, h) if is_training else h
  """
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
