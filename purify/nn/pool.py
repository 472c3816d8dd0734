"""Pooling: ``max_pool``/``avg_pool`` and the ``MaxPool``/``AvgPool`` modules, with
Haiku's arguments and shape rules.

``window_shape`` and ``strides`` are either full shapes (the rank of ``value``), shorter
sequences (the missing leading axes are batch axes: window 1), or an int (every axis but
the first and ``channel_axis``). Under ``jax.vmap`` the batch axis is not visible, so
prefer explicit per-example shapes there, e.g. ``(3, 3, 1)`` for an ``(H, W, C)`` image.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

import purify


def _infer_shape(x, size, channel_axis=-1) -> tuple:
  if isinstance(size, int):
    if channel_axis and not 0 <= abs(channel_axis) < x.ndim:
      raise ValueError(f"Invalid channel axis {channel_axis} for {x.shape}")
    if channel_axis and channel_axis < 0:
      channel_axis = x.ndim + channel_axis
    return (1,) + tuple(1 if d == channel_axis else size for d in range(1, x.ndim))
  size = tuple(size)
  if len(size) < x.ndim:
    return (1,) * (x.ndim - len(size)) + size
  if len(size) != x.ndim:
    raise ValueError(f"window/stride {size} has more axes than the value {x.shape}.")
  return size


def _check_padding(padding):
  if padding not in ("SAME", "VALID"):
    raise ValueError(f"Invalid padding '{padding}', must be 'SAME' or 'VALID'.")


def max_pool(value, window_shape: int | Sequence[int], strides: int | Sequence[int],
             padding: str, channel_axis: int | None = -1):
  """Max over windows (``padding`` "SAME" or "VALID"); same rank as ``value``.

  Example::

      x = jnp.arange(16.).reshape(1, 4, 4, 1)
      y = purify.nn.max_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")   # (1, 2, 2, 1)
  """
  _check_padding(padding)
  value = jnp.asarray(value)
  window = _infer_shape(value, window_shape, channel_axis)
  strides = _infer_shape(value, strides, channel_axis)
  # A Python scalar init (as Haiku passes): under jax.jit an array init is a traced
  # constant, and reduce_window then cannot see the max monoid and has no derivative.
  if jnp.issubdtype(value.dtype, jnp.integer):
    init = int(jnp.iinfo(value.dtype).min)
  elif value.dtype == jnp.bool_:
    init = False
  else:
    init = -jnp.inf
  return lax.reduce_window(value, init, lax.max, window, strides, padding)


def avg_pool(value, window_shape: int | Sequence[int], strides: int | Sequence[int],
             padding: str, channel_axis: int | None = -1):
  """Mean over windows; with "SAME" padding, the mean over the window's real entries.

  Example::

      x = jnp.ones((1, 4, 4, 1))
      y = purify.nn.avg_pool(x, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")    # all ones
  """
  _check_padding(padding)
  value = jnp.asarray(value)
  window = _infer_shape(value, window_shape, channel_axis)
  strides = _infer_shape(value, strides, channel_axis)
  zero = 0                          # a Python scalar: see max_pool
  summed = lax.reduce_window(value, zero, lax.add, window, strides, padding)
  if padding == "VALID":
    return summed / np.prod(window)
  # Count the real entries of each window; axes not pooled need no broadcast copy.
  shape = tuple(v if w != 1 else 1 for v, w in zip(value.shape, window))
  counts = lax.reduce_window(jnp.ones(shape, value.dtype), zero, lax.add, window, strides,
                             padding)
  return summed / counts


class _Pool(purify.Module):
  """A pooling function (``_pool``, one of the functions above) with its arguments
  fixed; MaxPool and AvgPool differ only in it."""
  _pool = None

  def __init__(self, window_shape, strides, padding: str, channel_axis: int | None = -1,
               name: str | None = None):
    super().__init__(name=name)
    self.window_shape = window_shape
    self.strides = strides
    self.padding = padding
    self.channel_axis = channel_axis

  def __call__(self, value):
    return self._pool(value, self.window_shape, self.strides, self.padding, self.channel_axis)


class MaxPool(_Pool):
  """``max_pool`` with its arguments fixed (no parameters).

  Example::

      def f(x):                                          # x: (batch, 8, 8, 3)
        return purify.nn.MaxPool((2, 2, 1), (2, 2, 1), "VALID")(x)   # (batch, 4, 4, 3)
  """
  _pool = staticmethod(max_pool)


class AvgPool(_Pool):
  """``avg_pool`` with its arguments fixed (no parameters).

  Example::

      def f(x):                                          # x: (batch, 8, 8, 3)
        return purify.nn.AvgPool((2, 2, 1), (2, 2, 1), "SAME")(x)    # (batch, 4, 4, 3)
  """
  _pool = staticmethod(avg_pool)
