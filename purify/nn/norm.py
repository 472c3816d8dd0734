"""Normalization layers with Haiku's arguments, parameter names, state names and shapes:
LayerNorm, InstanceNorm, RMSNorm, GroupNorm, BatchNorm.

Initializers follow purify's convention: a parameter initializer is
``init(key, shape, dtype)`` (``jax.nn.initializers``), not Haiku's ``init(shape, dtype)``.
The defaults (scale ones, offset zeros) are Haiku's.
"""
from __future__ import annotations

import collections.abc
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import purify
from purify.nn.conv import get_channel_index  # noqa: F401  (re-exported by purify.nn)
from purify.nn.moving_averages import ExponentialMovingAverage

_ones = jax.nn.initializers.ones
_zeros = jax.nn.initializers.zeros


def to_axes_or_slice(axis):
  """An int, an iterable of ints or a slice -> a tuple of ints or the slice."""
  if isinstance(axis, slice):
    return axis
  if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
    return (int(axis),)
  if isinstance(axis, collections.abc.Iterable):
    axis = tuple(axis)
    if all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axis):
      return tuple(int(a) for a in axis)
  raise ValueError(f"`axis` should be an int, slice or iterable of ints. Got: {axis}")


def to_abs_axes(axis, ndim: int) -> tuple[int, ...]:
  """Sorted non-negative axes of an ``ndim``-array named by a tuple or a slice."""
  if isinstance(axis, slice):
    return tuple(range(ndim)[axis])
  for a in axis:
    if not -ndim <= a < ndim:
      raise ValueError(f"axis {a} is out of range for an input of rank {ndim}")
  return tuple(sorted({a % ndim for a in axis}))


def _param_shape(param_axis, inputs):
  axes = to_abs_axes(param_axis, inputs.ndim)
  if axes == (inputs.ndim - 1,):
    return (inputs.shape[-1],)
  return tuple(inputs.shape[i] if i in axes else 1 for i in range(inputs.ndim))


def _check_inits(create_scale, scale_init, create_offset=True, offset_init=None):
  if not create_scale and scale_init is not None:
    raise ValueError("Cannot set `scale_init` if `create_scale=False`.")
  if not create_offset and offset_init is not None:
    raise ValueError("Cannot set `offset_init` if `create_offset=False`.")


def _set_affine(module, create_scale, scale_init, create_offset, offset_init):
  """Checks and stores the ``scale``/``offset`` arguments (Haiku's default inits: ones
  for the scale, zeros for the offset)."""
  _check_inits(create_scale, scale_init, create_offset, offset_init)
  module.create_scale = create_scale
  module.create_offset = create_offset
  module.scale_init = scale_init or _ones
  module.offset_init = offset_init or _zeros


def _check_call(module, scale, offset):
  if module.create_scale and scale is not None:
    raise ValueError("Cannot pass `scale` at call time if `create_scale=True`.")
  if module.create_offset and offset is not None:
    raise ValueError("Cannot pass `offset` at call time if `create_offset=True`.")


def _scale_and_offset(module, shape, dtype, scale, offset):
  """The ``scale``/``offset`` parameters of ``shape`` where the module creates them,
  else the ones passed at call time, else 1 and 0."""
  if module.create_scale:
    scale = purify.param("scale", shape, dtype, init=module.scale_init)
  elif scale is None:
    scale = np.ones([], dtype=dtype)
  if module.create_offset:
    offset = purify.param("offset", shape, dtype, init=module.offset_init)
  elif offset is None:
    offset = np.zeros([], dtype=dtype)
  return scale, offset


def _broadcasts_to(shape, target) -> bool:
  try:
    return np.broadcast_shapes(shape, target) == tuple(target)
  except ValueError:
    return False


class LayerNorm(purify.Module):
  """Layer normalization (https://arxiv.org/abs/1607.06450) over ``axis``.

  ``scale``/``offset`` parameters have the shape of ``param_axis`` (default the last
  axis: shape ``(C,)``; otherwise the input's shape with 1 on the other axes). The
  variance is exact (``jnp.var``) unless ``use_fast_variance`` (``E[x^2] - E[x]^2``).

  Example::

      def f(x):                                  # x: (batch, 8)
        return purify.nn.LayerNorm(-1, create_scale=True, create_offset=True)(x)
      # params["layer_norm"] == {"scale": (8,), "offset": (8,)}
  """

  def __init__(self, axis, create_scale: bool, create_offset: bool, eps: float = 1e-5,
               scale_init=None, offset_init=None, use_fast_variance: bool = False,
               name: str | None = None, *, param_axis=None):
    super().__init__(name=name)
    _set_affine(self, create_scale, scale_init, create_offset, offset_init)
    self.axis = to_axes_or_slice(axis)
    self.eps = eps
    self.use_fast_variance = use_fast_variance
    self.param_axis = (-1,) if param_axis is None else to_axes_or_slice(param_axis)

  def __call__(self, inputs, scale=None, offset=None):
    """Normalize ``inputs``; ``scale``/``offset`` may be passed only when not created."""
    inputs = jnp.asarray(inputs)
    _check_call(self, scale, offset)
    axis = to_abs_axes(self.axis, inputs.ndim)
    mean = jnp.mean(inputs, axis=axis, keepdims=True)
    if self.use_fast_variance:
      variance = jnp.mean(jnp.square(inputs), axis=axis, keepdims=True) - jnp.square(mean)
    else:
      variance = jnp.var(inputs, axis=axis, keepdims=True)
    scale, offset = _scale_and_offset(self, _param_shape(self.param_axis, inputs),
                                      inputs.dtype, scale, offset)
    for name, v in (("scale", scale), ("offset", offset)):
      if not _broadcasts_to(np.shape(v), inputs.shape):
        raise ValueError(f"{type(self).__name__}: {name} of shape {np.shape(v)} does not "
                         f"broadcast to the input's shape {inputs.shape}; pass one that does "
                         f"(e.g. of shape {inputs.shape[-1:]})")
    eps = jax.lax.convert_element_type(self.eps, variance.dtype)
    # broadcast by the operations, not by jnp.broadcast_to first (Haiku's form): the
    # same values; with explicit full-shape broadcasts XLA CPU kept two more copies of
    # the scanned Transformer's stacked activations, its train step ~3% slower
    return scale * jax.lax.rsqrt(variance + eps) * (inputs - mean) + offset


class InstanceNorm(LayerNorm):
  """Normalizes over the spatial axes (all but batch and channel) of each example, with
  per-channel ``scale``/``offset`` (Haiku's InstanceNorm: a LayerNorm).

  Example::

      def f(x):                                  # x: (batch, 4, 4, 8), NHWC
        return purify.nn.InstanceNorm(True, True)(x)  # params["instance_norm"]: (8,), (8,)
  """

  def __init__(self, create_scale: bool, create_offset: bool, eps: float = 1e-5,
               scale_init=None, offset_init=None, data_format: str = "channels_last",
               name: str | None = None):
    param_axis = get_channel_index(data_format)
    axis = slice(2, None) if param_axis == 1 else slice(1, -1)
    super().__init__(axis=axis, create_scale=create_scale, create_offset=create_offset,
                     eps=eps, scale_init=scale_init, offset_init=offset_init,
                     param_axis=param_axis, name=name)


class RMSNorm(purify.Module):
  """RMS normalization (https://arxiv.org/abs/1910.07467): ``x / rms(x) * scale``,
  not re-centred. ``scale`` has the shape of ``param_axis`` (default ``(C,)``).

  Example::

      def f(x):                                  # x: (batch, 8)
        return purify.nn.RMSNorm(-1)(x)          # params["rms_norm"] == {"scale": (8,)}
  """

  def __init__(self, axis, eps: float = 1e-5, scale_init=None, name: str | None = None,
               create_scale: bool = True, *, param_axis=None):
    super().__init__(name=name)
    _check_inits(create_scale, scale_init)
    self.axis = to_axes_or_slice(axis)
    self.eps = eps
    self.create_scale = create_scale
    self.scale_init = scale_init or _ones
    self.param_axis = (-1,) if param_axis is None else to_axes_or_slice(param_axis)

  def __call__(self, inputs):
    inputs = jnp.asarray(inputs)
    axis = self.axis
    if isinstance(axis, slice):
      axis = tuple(range(inputs.ndim)[axis])
    if self.create_scale:
      scale = purify.param("scale", _param_shape(self.param_axis, inputs), inputs.dtype,
                           init=self.scale_init)
      scale = jnp.broadcast_to(scale, inputs.shape)
    else:
      scale = 1.
    mean_squared = jnp.broadcast_to(
        jnp.mean(jnp.square(inputs), axis=axis, keepdims=True), inputs.shape)
    return inputs * scale * jax.lax.rsqrt(mean_squared + self.eps)


class GroupNorm(purify.Module):
  """Group normalization (https://arxiv.org/abs/1803.08494): the channels are split
  into ``groups``; mean and variance are taken over ``axis`` (default all but the
  batch axis) within each group, never across groups. ``scale``/``offset`` are per
  channel: ``(C,)`` for channels_last, ``(C, 1, ..., 1)`` for channels_first.

  Example::

      def f(x):                                  # x: (batch, 4, 4, 8), NHWC
        return purify.nn.GroupNorm(groups=2)(x)  # params["group_norm"]: scale, offset (8,)
  """

  def __init__(self, groups: int, axis=slice(1, None), create_scale: bool = True,
               create_offset: bool = True, eps: float = 1e-5, scale_init=None,
               offset_init=None, data_format: str = "channels_last", name: str | None = None):
    super().__init__(name=name)
    _set_affine(self, create_scale, scale_init, create_offset, offset_init)
    self.axis = to_axes_or_slice(axis)
    self.groups = groups
    self.eps = eps
    self.data_format = data_format
    self.channel_index = get_channel_index(data_format)
    self.rank = None

  def __call__(self, x, scale=None, offset=None):
    """Normalize ``x``; ``scale``/``offset`` may be passed only when not created."""
    x = jnp.asarray(x)
    if self.rank is not None and x.ndim != self.rank:
      raise ValueError("The rank of the inputs cannot change between calls, the original "
                       f"call was rank={self.rank} but this call was rank={x.ndim}.")
    _check_call(self, scale, offset)
    self.rank = rank = x.ndim
    channels = x.shape[self.channel_index]
    if channels % self.groups != 0:
      raise ValueError("The number of channels must be divisible by the number of groups, "
                       f"was channels={channels}, groups={self.groups}")
    per_group = channels // self.groups
    axes = to_abs_axes(self.axis, rank)
    if self.channel_index == -1:
      # (N, ..., C) -> (N, ..., G, C/G); the channel axis becomes the within-group axis
      grouped = x.shape[:-1] + (self.groups, per_group)
      axes = tuple(a + 1 if a == rank - 1 else a for a in axes)
      params_shape = (channels,)
    else:
      # (N, C, ...) -> (N, G, C/G, ...)
      grouped = x.shape[:1] + (self.groups, per_group) + x.shape[2:]
      axes = tuple(a if a == 0 else a + 1 for a in axes)
      params_shape = (channels,) + (1,) * (rank - 2)
    if self.create_scale:
      scale = purify.param("scale", params_shape, x.dtype, init=self.scale_init)
    if self.create_offset:
      offset = purify.param("offset", params_shape, x.dtype, init=self.offset_init)
    g = x.reshape(grouped)
    mean = jnp.mean(g, axes, keepdims=True)
    var = jnp.var(g, axes, keepdims=True)
    out = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    if scale is not None:
      out = out * jax.lax.broadcast_to_rank(jnp.asarray(scale), rank)
    if offset is not None:
      out = out + jax.lax.broadcast_to_rank(jnp.asarray(offset), rank)
    return out


class BatchNorm(purify.Module):
  """Batch normalization (https://arxiv.org/abs/1502.03167) with running statistics.

  Training (``is_training=True``) normalizes with the batch's mean and variance over
  ``axis`` (default: all but the channel axis) and updates the moving averages,
  submodules ``mean_ema`` / ``var_ema`` (:class:`ExponentialMovingAverage`, state
  ``"batch_norm/~/mean_ema" = {"counter", "hidden", "average"}``, as in Haiku).
  Evaluation normalizes with the averages (or with the batch's statistics when
  ``test_local_stats``) and leaves the state unchanged.

  ``cross_replica_axis`` names a ``jax.vmap`` (or pmap / shard_map) axis: the
  statistics are averaged over it with ``jax.lax.pmean``, so a BatchNorm applied per
  example inside ``jax.vmap(..., axis_name=...)`` sees whole-batch statistics. Under a
  vmap without it, training would write per-example statistics, which purify refuses
  (``PerExampleStateError``).

  ``axis`` (default ``None``: all but the channel axis) may use negative indices; the
  scale/offset shape has 1 on every reduced axis (Haiku only recognises non-negative
  ones there).

  Example::

      def f(x, is_training):                     # x: (batch, 8)
        return purify.nn.BatchNorm(True, True, decay_rate=0.9)(x, is_training)

      init, apply = purify.transform_with_state(f)
      params, state = init(jax.random.key(0), x, True)   # "batch_norm": scale, offset (1, 8)
      y, state = apply(params, state, None, x, True)       # updates the averages
      y, _ = apply(params, state, None, x, False)          # uses them
  """

  def __init__(self, create_scale: bool, create_offset: bool, decay_rate: float,
               eps: float = 1e-5, scale_init=None, offset_init=None,
               axis: Sequence[int] | None = None, cross_replica_axis=None,
               cross_replica_axis_index_groups=None, data_format: str = "channels_last",
               name: str | None = None):
    super().__init__(name=name)
    _set_affine(self, create_scale, scale_init, create_offset, offset_init)
    if cross_replica_axis is None and cross_replica_axis_index_groups is not None:
      raise ValueError("`cross_replica_axis` name must be specified if "
                       "`cross_replica_axis_index_groups` are used.")
    self.eps = eps
    self.axis = axis
    self.cross_replica_axis = cross_replica_axis
    self.cross_replica_axis_index_groups = cross_replica_axis_index_groups
    self.channel_index = get_channel_index(data_format)
    self.mean_ema = ExponentialMovingAverage(decay_rate, name="mean_ema")
    self.var_ema = ExponentialMovingAverage(decay_rate, name="var_ema")

  def __call__(self, inputs, is_training: bool, test_local_stats: bool = False,
               scale=None, offset=None):
    """Normalize ``inputs``. ``is_training`` must be a Python bool (it is static in a
    purify transform; under a user's ``jax.jit`` mark it ``static_argnames``)."""
    inputs = jnp.asarray(inputs)
    _check_call(self, scale, offset)
    ndim = inputs.ndim
    channel_index = self.channel_index % ndim
    if self.axis is not None:
      axis = to_abs_axes(to_axes_or_slice(self.axis), ndim)
    else:
      axis = tuple(i for i in range(ndim) if i != channel_index)
    stats_shape = tuple(1 if i in axis else inputs.shape[i] for i in range(ndim))

    if is_training or test_local_stats:
      mean = jnp.mean(inputs, axis, keepdims=True)
      mean_of_squares = jnp.mean(jnp.square(inputs), axis, keepdims=True)
      if self.cross_replica_axis:
        pmean = lambda v: jax.lax.pmean(
            v, axis_name=self.cross_replica_axis,
            axis_index_groups=self.cross_replica_axis_index_groups)
        mean, mean_of_squares = pmean(mean), pmean(mean_of_squares)
      var = mean_of_squares - jnp.square(mean)
    if is_training:
      self.mean_ema(mean)
      self.var_ema(var)
    else:
      # declare the whole EMA state (so apply accepts and returns Haiku's state tree)
      self.mean_ema._declare(stats_shape, inputs.dtype)
      self.var_ema._declare(stats_shape, inputs.dtype)
      if not test_local_stats:
        mean = self.mean_ema.average.astype(inputs.dtype)
        var = self.var_ema.average.astype(inputs.dtype)

    scale, offset = _scale_and_offset(self, stats_shape, inputs.dtype, scale, offset)
    eps = jax.lax.convert_element_type(self.eps, var.dtype)
    return (inputs - mean) * (scale * jax.lax.rsqrt(var + eps)) + offset
