"""Convolutions (ConvND, Conv1D/2D/3D, their transposes, the depthwise
DepthwiseConv1D/2D/3D and SeparableDepthwiseConv2D), with Haiku's argument names and
defaults, parameter names (``w``, ``b``), shapes and default initializers.

Also here: ``variance_scaling`` (Haiku's ``VarianceScaling`` as a purify initializer
``init(key, shape, dtype)``) and ``pad`` (Haiku's ``hk.pad`` padding functions).
"""
from __future__ import annotations

import collections.abc
import re
import types
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import purify

# Constant from scipy.stats.truncnorm.std(a=-2, b=2, loc=0., scale=1.)
_TRUNCNORM_STD = 0.87962566103423978


# ----------------------------------------------------------------------------- initializers

def _flat(sample, key, shape, *args):
  """``sample(key, shape, ...)`` drawn flat and reshaped: the same random bits (JAX's bits
  are a function of the row-major index; values agree up to float rounding), but XLA on CPU
  compiles a rank-1 draw several times faster than a rank-4 one (seconds per kernel)."""
  shape = tuple(shape)
  return sample(key, (int(np.prod(shape)),), *args).reshape(shape)


def _compute_fans(shape, fan_in_axes=None):
  """Haiku's fan rule: 2D (in, out); conv kernels (..., in, out) times the receptive field."""
  shape = tuple(shape)
  if len(shape) < 1:
    return 1, 1
  if len(shape) == 1:
    return shape[0], shape[0]
  if len(shape) == 2:
    return shape[0], shape[1]
  if fan_in_axes is not None:
    fan_in = int(np.prod([shape[i] for i in fan_in_axes]))
    fan_out = int(np.prod([s for i, s in enumerate(shape) if i not in fan_in_axes]))
    return fan_in, fan_out
  field = int(np.prod(shape[:-2]))
  return shape[-2] * field, shape[-1] * field


def _truncated_normal_init(stddev, mean=0.0, lower=-2.0, upper=2.0):
  """Haiku's ``TruncatedNormal``: a normal of std ``stddev`` cut at [lower, upper] stds
  (NOT rescaled: the result's std is ``0.8796 * stddev`` for the default cut)."""
  def init(key, shape, dtype):
    real = jnp.finfo(dtype).dtype
    s = lax.convert_element_type(stddev, real)
    m = lax.convert_element_type(mean, dtype)
    draw = lambda k, sh, dt: jax.random.truncated_normal(k, lower, upper, sh, dt)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      u = _flat(draw, key, (2, *shape), real)
      u = u[0] + 1j * u[1]
    else:
      u = _flat(draw, key, shape, real)
    return s * u + m
  return init


def variance_scaling(scale: float = 1.0, mode: str = "fan_in",
                     distribution: str = "truncated_normal", fan_in_axes=None):
  """Haiku's ``VarianceScaling`` as a purify initializer ``init(key, shape, dtype)``.

  ``s = scale / n`` with ``n`` the fan-in, fan-out or their mean (``mode``); then a
  truncated normal rescaled to std ``sqrt(s)``, a normal of std ``sqrt(s)``, or a
  uniform on ``[-sqrt(3 s), sqrt(3 s)]`` (``distribution``). Fans follow Haiku: a
  kernel ``(..., in, out)`` counts the leading axes as receptive field, unless
  ``fan_in_axes`` names the fan-in axes.

  Example::

      he_normal = purify.nn.variance_scaling(2.0, "fan_in", "truncated_normal")
      def f(x):
        return purify.nn.Conv2D(16, 3, w_init=he_normal)(x)
  """
  if scale < 0.0:
    raise ValueError("variance_scaling: `scale` must be a positive float.")
  if mode not in ("fan_in", "fan_out", "fan_avg"):
    raise ValueError(f"variance_scaling: invalid `mode` {mode!r}; "
                     "use 'fan_in', 'fan_out' or 'fan_avg'.")
  distribution = distribution.lower()
  if distribution not in ("normal", "truncated_normal", "uniform"):
    raise ValueError(f"variance_scaling: invalid `distribution` {distribution!r}; "
                     "use 'truncated_normal', 'normal' or 'uniform'.")

  def init(key, shape, dtype=jnp.float32):
    fan_in, fan_out = _compute_fans(shape, fan_in_axes)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
    s = scale / max(1.0, n)
    if distribution == "truncated_normal":
      stddev = np.sqrt(s) / np.asarray(_TRUNCNORM_STD, dtype=dtype)
      return _truncated_normal_init(stddev)(key, shape, dtype)
    if distribution == "normal":
      std = lax.convert_element_type(np.sqrt(s), dtype)
      return std * _flat(jax.random.normal, key, shape, dtype)
    limit = np.sqrt(3.0 * s)
    return _flat(jax.random.uniform, key, shape, dtype, -limit, limit)
  return init


def _zeros(key, shape, dtype=jnp.float32):
  del key
  return jnp.zeros(shape, dtype)


# ----------------------------------------------------------------------------- padding

def _pad_valid(effective_kernel_size: int):
  """No padding."""
  del effective_kernel_size
  return (0, 0)


def _pad_same(effective_kernel_size: int):
  """Output size equals input size at stride 1."""
  return ((effective_kernel_size - 1) // 2, effective_kernel_size // 2)


def _pad_full(effective_kernel_size: int):
  """Maximal padding without windows made only of padding."""
  return (effective_kernel_size - 1, effective_kernel_size - 1)


def _pad_causal(effective_kernel_size: int):
  """Pad before only: no output depends on a later input."""
  return (effective_kernel_size - 1, 0)


def _pad_reverse_causal(effective_kernel_size: int):
  """Pad after only: no output depends on an earlier input."""
  return (0, effective_kernel_size - 1)


pad = types.SimpleNamespace(
    valid=_pad_valid, same=_pad_same, full=_pad_full, causal=_pad_causal,
    reverse_causal=_pad_reverse_causal)
pad.__doc__ = ("Haiku's ``hk.pad`` functions: each maps an effective kernel size "
               "``(k - 1) * rate + 1`` to ``(before, after)`` padding.")


# ----------------------------------------------------------------------------- helpers

def _replicate(value, n: int, what: str) -> tuple:
  if isinstance(value, (str, bytes)) or not isinstance(value, collections.abc.Sequence):
    return (value,) * n
  if len(value) == 1:
    return tuple(value) * n
  if len(value) == n:
    return tuple(value)
  raise TypeError(f"{what} must be a scalar or a sequence of length 1 or {n}; got {value!r}.")


_CHANNELS_FIRST = re.compile("^NC[^C]*$")
_CHANNELS_LAST = re.compile("^N[^C]*C$")
_SEQUENTIAL = re.compile("^((BT)|(TB))[^D]*D$")


def get_channel_index(data_format: str) -> int:
  """Haiku's ``get_channel_index``: 1 for ``NC...``/``channels_first``, -1 for
  ``N...C``/``channels_last``/``BT...D``.

  Example::

      assert purify.nn.conv.get_channel_index("NCHW") == 1
  """
  if data_format == "channels_first":
    return 1
  if data_format == "channels_last":
    return -1
  if _CHANNELS_FIRST.match(data_format):
    return 1
  if _CHANNELS_LAST.match(data_format) or _SEQUENTIAL.match(data_format):
    return -1
  raise ValueError(
      f"Unable to extract channel information from {data_format!r}. Valid data formats "
      "are spatial (e.g. 'NCHW'), sequential (e.g. 'BTHWD'), 'channels_first' and "
      "'channels_last'.")


def to_dimension_numbers(num_spatial_dims: int, channels_last: bool,
                         transpose: bool) -> lax.ConvDimensionNumbers:
  """``lax.ConvDimensionNumbers`` for an input layout and Haiku's kernel layout
  ``spatial + (in, out)`` (``spatial + (out, in)`` when ``transpose``)."""
  nd = num_spatial_dims + 2
  if channels_last:
    image = (0, nd - 1) + tuple(range(1, nd - 1))
  else:
    image = (0, 1) + tuple(range(2, nd))
  spatial = tuple(range(nd - 2))
  kernel = ((nd - 2, nd - 1) if transpose else (nd - 1, nd - 2)) + spatial
  return lax.ConvDimensionNumbers(lhs_spec=image, rhs_spec=kernel, out_spec=image)


def _is_padfn(padding) -> bool:
  if isinstance(padding, collections.abc.Sequence) and not isinstance(padding, str):
    if not padding:
      return False
    padding = padding[0]
  return callable(padding)


def _resolve_padding(padding, kernel_shape, rate, n: int):
  """A convolution's ``padding`` argument as ``lax.conv_general_dilated`` takes it: a
  string (upper-cased), one padding function or ``n`` of them (applied to each axis's
  effective kernel size ``(k - 1) * rate + 1``), or ``(low, high)`` pairs (one pair
  for every axis, or ``n`` of them)."""
  if isinstance(padding, str):
    return padding.upper()
  if _is_padfn(padding):
    fns = _replicate(padding, n, "padding")
    return tuple(tuple(fn((k - 1) * r + 1)) for fn, k, r in zip(fns, kernel_shape, rate))
  return _padding_from_tuple(padding, n)


def _padding_from_tuple(padding, n: int):
  if not padding:
    raise ValueError("padding must not be empty.")
  if isinstance(padding[0], int):
    return (tuple(padding),) * n
  if len(padding) == 1:
    return tuple(tuple(p) for p in padding) * n
  if len(padding) != n:
    raise TypeError(f"padding {padding!r} must be a (low, high) pair or a sequence of 1 "
                    f"or {n} pairs.")
  return tuple(tuple(p) for p in padding)


def _check_rank(inputs, n: int, who: str):
  ranks = [n + 1, n + 2]
  if inputs.ndim not in ranks:
    raise ValueError(f"Input to {who} needs to have rank in {ranks}, but input has shape "
                     f"{inputs.shape}.")
  return inputs.ndim == n + 1


def _batched(inputs, n: int, who: str):
  """``inputs`` as an array with a batch axis (one added when unbatched), and whether
  one was added."""
  inputs = jnp.asarray(inputs)
  unbatched = _check_rank(inputs, n, who)
  return (inputs[None] if unbatched else inputs), unbatched


def _bias_shape(channel_index: int, out: int, n: int):
  return (out,) if channel_index == -1 else (out,) + (1,) * n


def _setup(module, num_spatial_dims, kernel_shape, stride, with_bias, w_init, b_init,
           mask, data_format, transpose: bool) -> int:
  """The arguments ConvND, ConvNDTranspose and DepthwiseConvND share, checked and
  stored on ``module``; returns ``num_spatial_dims``."""
  if num_spatial_dims <= 0:
    raise ValueError("We only support convolution operations for `num_spatial_dims` "
                     f"greater than 0, received num_spatial_dims={num_spatial_dims}.")
  n = module.num_spatial_dims = num_spatial_dims
  module.kernel_shape = _replicate(kernel_shape, n, "kernel_shape")
  module.with_bias = with_bias
  module.stride = _replicate(stride, n, "strides")
  module.w_init = w_init
  module.b_init = b_init or _zeros
  module.mask = mask
  module.data_format = data_format
  module.channel_index = get_channel_index(data_format)
  module.dimension_numbers = to_dimension_numbers(
      n, channels_last=module.channel_index == -1, transpose=transpose)
  return n


def _weights(module, w_shape, fan_in_shape, dtype):
  """The kernel ``w`` of ``w_shape`` (default init: Haiku's truncated normal of std
  ``1 / sqrt(prod(fan_in_shape))``), times ``module.mask`` if there is one."""
  if module.mask is not None and tuple(module.mask.shape) != w_shape:
    raise ValueError("Mask needs to have the same shape as weights. "
                     f"Shapes are: {tuple(module.mask.shape)}, {w_shape}")
  w_init = module.w_init
  if w_init is None:
    w_init = _truncated_normal_init(1.0 / np.sqrt(np.prod(fan_in_shape)))
  w = purify.param("w", w_shape, dtype, init=w_init)
  if module.mask is not None:
    w = w * module.mask
  return w


def _finish(module, out, dtype, unbatched: bool):
  """``out`` plus the bias ``b`` (if ``with_bias``; one value per output channel),
  without the batch axis that :func:`_batched` added."""
  if module.with_bias:
    b = purify.param("b", _bias_shape(module.channel_index, out.shape[module.channel_index],
                                      module.num_spatial_dims),
                     dtype, init=module.b_init)
    out = out + jnp.broadcast_to(b, out.shape)
  return out[0] if unbatched else out


# ----------------------------------------------------------------------------- ConvND

class ConvND(purify.Module):
  """N-dimensional convolution: ``w: kernel_shape + (in // groups, out)``, ``b: (out,)``
  (``(out, 1, ..., 1)`` for channels-first layouts).

  Inputs are ``[N, *spatial, C]`` (or ``[N, C, *spatial]``), or unbatched
  ``[*spatial, C]``. The default ``w_init`` is Haiku's: a normal of std
  ``1 / sqrt(fan_in)`` truncated at two stds; ``b_init`` defaults to zeros.

  Example::

      def f(x):                                   # x: (batch, 8, 8, 3)
        return purify.nn.ConvND(2, 16, kernel_shape=3)(x)  # params["conv_nd"]["w"]: (3, 3, 3, 16)
  """

  def __init__(self, num_spatial_dims: int, output_channels: int,
               kernel_shape: int | Sequence[int], stride: int | Sequence[int] = 1,
               rate: int | Sequence[int] = 1, padding="SAME", with_bias: bool = True,
               w_init: Callable | None = None, b_init: Callable | None = None,
               data_format: str = "channels_last", mask=None,
               feature_group_count: int = 1, name: str | None = None):
    super().__init__(name=name)
    n = _setup(self, num_spatial_dims, kernel_shape, stride, with_bias, w_init, b_init, mask,
               data_format, transpose=False)
    self.output_channels = output_channels
    self.feature_group_count = feature_group_count
    self.lhs_dilation = (1,) * n
    self.kernel_dilation = _replicate(rate, n, "kernel_dilation")
    self.padding = _resolve_padding(padding, self.kernel_shape, self.kernel_dilation, n)

  def __call__(self, inputs, *, precision=None):
    inputs, unbatched = _batched(inputs, self.num_spatial_dims, "ConvND")
    in_channels = inputs.shape[self.channel_index]
    if in_channels % self.feature_group_count:
      raise ValueError(f"Inputs channels {in_channels} should be a multiple of "
                       f"feature_group_count {self.feature_group_count}")
    w_shape = self.kernel_shape + (in_channels // self.feature_group_count, self.output_channels)
    w = _weights(self, w_shape, w_shape[:-1], inputs.dtype)
    out = lax.conv_general_dilated(
        inputs, w, window_strides=self.stride, padding=self.padding,
        lhs_dilation=self.lhs_dilation, rhs_dilation=self.kernel_dilation,
        dimension_numbers=self.dimension_numbers,
        feature_group_count=self.feature_group_count, precision=precision)
    return _finish(self, out, inputs.dtype, unbatched)


class Conv1D(ConvND):
  """1D convolution over ``[N, W, C]`` (``data_format="NWC"``) or ``[N, C, W]`` ("NCW").

  Example::

      def f(x):                               # x: (batch, 10, 4)
        return purify.nn.Conv1D(8, 3)(x)      # params["conv1_d"]["w"]: (3, 4, 8)
  """

  def __init__(self, output_channels: int, kernel_shape, stride=1, rate=1, padding="SAME",
               with_bias: bool = True, w_init=None, b_init=None, data_format: str = "NWC",
               mask=None, feature_group_count: int = 1, name: str | None = None):
    super().__init__(1, output_channels, kernel_shape, stride=stride, rate=rate,
                     padding=padding, with_bias=with_bias, w_init=w_init, b_init=b_init,
                     data_format=data_format, mask=mask,
                     feature_group_count=feature_group_count, name=name)


class Conv2D(ConvND):
  """2D convolution over ``[N, H, W, C]`` ("NHWC") or ``[N, C, H, W]`` ("NCHW").

  Example::

      def f(x):                               # x: (batch, 8, 8, 3)
        return purify.nn.Conv2D(16, 3, stride=2)(x)   # params["conv2_d"]["w"]: (3, 3, 3, 16)
  """

  def __init__(self, output_channels: int, kernel_shape, stride=1, rate=1, padding="SAME",
               with_bias: bool = True, w_init=None, b_init=None, data_format: str = "NHWC",
               mask=None, feature_group_count: int = 1, name: str | None = None):
    super().__init__(2, output_channels, kernel_shape, stride=stride, rate=rate,
                     padding=padding, with_bias=with_bias, w_init=w_init, b_init=b_init,
                     data_format=data_format, mask=mask,
                     feature_group_count=feature_group_count, name=name)


class Conv3D(ConvND):
  """3D convolution over ``[N, D, H, W, C]`` ("NDHWC") or ``[N, C, D, H, W]`` ("NCDHW").

  Example::

      def f(x):                               # x: (batch, 4, 4, 4, 2)
        return purify.nn.Conv3D(4, 2)(x)      # params["conv3_d"]["w"]: (2, 2, 2, 2, 4)
  """

  def __init__(self, output_channels: int, kernel_shape, stride=1, rate=1, padding="SAME",
               with_bias: bool = True, w_init=None, b_init=None, data_format: str = "NDHWC",
               mask=None, feature_group_count: int = 1, name: str | None = None):
    super().__init__(3, output_channels, kernel_shape, stride=stride, rate=rate,
                     padding=padding, with_bias=with_bias, w_init=w_init, b_init=b_init,
                     data_format=data_format, mask=mask,
                     feature_group_count=feature_group_count, name=name)


# ----------------------------------------------------------------------------- depthwise

class DepthwiseConvND(purify.Module):
  """N-dimensional depthwise convolution (Haiku's ``DepthwiseConvND``): each input
  channel is convolved with its own ``channel_multiplier`` filters, so ``C`` input
  channels give ``channel_multiplier * C`` outputs (output ``c * channel_multiplier + j``
  is filter ``j`` of input channel ``c``).

  Parameters ``w: kernel_shape + (1, channel_multiplier * C)`` and ``b:
  (channel_multiplier * C,)`` (``(channel_multiplier * C, 1, ..., 1)`` for
  channels-first layouts). The default ``w_init`` is Haiku's: a normal of std
  ``1 / sqrt(prod(kernel_shape))`` truncated at two stds; ``b_init`` defaults to
  zeros. Inputs are ``[N, *spatial, C]`` (or ``[N, C, *spatial]``), or unbatched.
  ``padding`` is ``"SAME"``, ``"VALID"``, ``(low, high)`` pairs or padding
  functions, as for :class:`ConvND`.

  Unlike Haiku: unbatched inputs, a single ``(low, high)`` pair and padding functions
  are accepted (as by ConvND), and the channels-first bias of the 1D and 3D layers is
  ``(channel_multiplier * C, 1)`` / ``(channel_multiplier * C, 1, 1, 1)`` (Haiku
  makes it ``(channel_multiplier * C, 1, 1)`` for every rank, which fails to broadcast
  or lands on the wrong axes; the 2D shape is Haiku's).

  Example::

      def f(x):                                   # x: (batch, 8, 8, 3)
        conv = purify.nn.conv.DepthwiseConvND(2, 3, num_spatial_dims=2,
                                              data_format="NHWC")
        return conv(x)                            # (batch, 8, 8, 6); w: (3, 3, 1, 6)
  """

  def __init__(self, channel_multiplier: int, kernel_shape: int | Sequence[int],
               num_spatial_dims: int, data_format: str, stride: int | Sequence[int] = 1,
               rate: int | Sequence[int] = 1, padding="SAME", with_bias: bool = True,
               w_init: Callable | None = None, b_init: Callable | None = None,
               name: str | None = None):
    super().__init__(name=name)
    n = _setup(self, num_spatial_dims, kernel_shape, stride, with_bias, w_init, b_init,
               None, data_format, transpose=False)
    self.channel_multiplier = channel_multiplier
    self.lhs_dilation = (1,) * n
    self.rhs_dilation = _replicate(rate, n, "rhs_dilation")
    self.padding = _resolve_padding(padding, self.kernel_shape, self.rhs_dilation, n)

  def __call__(self, inputs, *, precision=None):
    inputs, unbatched = _batched(inputs, self.num_spatial_dims, type(self).__name__)
    in_channels = inputs.shape[self.channel_index]
    w_shape = self.kernel_shape + (1, self.channel_multiplier * in_channels)
    w = _weights(self, w_shape, w_shape[:-1], inputs.dtype)
    out = lax.conv_general_dilated(
        inputs, w, window_strides=self.stride, padding=self.padding,
        lhs_dilation=self.lhs_dilation, rhs_dilation=self.rhs_dilation,
        dimension_numbers=self.dimension_numbers, feature_group_count=in_channels,
        precision=precision)
    return _finish(self, out, inputs.dtype, unbatched)


class DepthwiseConv1D(DepthwiseConvND):
  """1D depthwise convolution over ``[N, W, C]`` ("NWC") or ``[N, C, W]`` ("NCW").

  Example::

      def f(x):                                   # x: (batch, 10, 4)
        return purify.nn.DepthwiseConv1D(2, 3)(x) # (batch, 10, 8); w: (3, 1, 8)
  """

  def __init__(self, channel_multiplier: int, kernel_shape, stride=1, rate=1,
               padding="SAME", with_bias: bool = True, w_init=None, b_init=None,
               data_format: str = "NWC", name: str | None = None):
    super().__init__(channel_multiplier, kernel_shape, 1, data_format, stride=stride,
                     rate=rate, padding=padding, with_bias=with_bias, w_init=w_init,
                     b_init=b_init, name=name)


class DepthwiseConv2D(DepthwiseConvND):
  """2D depthwise convolution over ``[N, H, W, C]`` ("NHWC") or ``[N, C, H, W]`` ("NCHW").

  Example::

      def f(x):                                   # x: (batch, 8, 8, 3)
        return purify.nn.DepthwiseConv2D(1, 3)(x) # (batch, 8, 8, 3); w: (3, 3, 1, 3)
  """

  def __init__(self, channel_multiplier: int, kernel_shape, stride=1, rate=1,
               padding="SAME", with_bias: bool = True, w_init=None, b_init=None,
               data_format: str = "NHWC", name: str | None = None):
    super().__init__(channel_multiplier, kernel_shape, 2, data_format, stride=stride,
                     rate=rate, padding=padding, with_bias=with_bias, w_init=w_init,
                     b_init=b_init, name=name)


class DepthwiseConv3D(DepthwiseConvND):
  """3D depthwise convolution over ``[N, D, H, W, C]`` ("NDHWC") or ``[N, C, D, H, W]``
  ("NCDHW").

  Example::

      def f(x):                                   # x: (batch, 4, 4, 4, 2)
        return purify.nn.DepthwiseConv3D(3, 2)(x) # (batch, 4, 4, 4, 6); w: (2, 2, 2, 1, 6)
  """

  def __init__(self, channel_multiplier: int, kernel_shape, stride=1, rate=1,
               padding="SAME", with_bias: bool = True, w_init=None, b_init=None,
               data_format: str = "NDHWC", name: str | None = None):
    super().__init__(channel_multiplier, kernel_shape, 3, data_format, stride=stride,
                     rate=rate, padding=padding, with_bias=with_bias, w_init=w_init,
                     b_init=b_init, name=name)


class SeparableDepthwiseConv2D(purify.Module):
  """Haiku's ``SeparableDepthwiseConv2D``: a 2D depthwise convolution factored over
  the two spatial axes, a :class:`DepthwiseConv2D` with kernel ``(kh, 1)`` (the
  ``channel_multiplier``, the ``stride``, no bias) followed by one with kernel
  ``(1, kw)`` (multiplier 1, stride 1, the bias if ``with_bias``). Both use
  ``padding``, ``w_init``, ``b_init`` and ``data_format``; ``C`` input channels give
  ``channel_multiplier * C`` outputs.

  (Despite the name it is not the MobileNet-style "depthwise separable" convolution
  -- a depthwise conv followed by a 1x1 Conv2D -- but what Haiku computes, so that
  Haiku's parameters load: ``separable_depthwise_conv2_d/~/depthwise_conv2_d``
  ``w: (kh, 1, 1, channel_multiplier * C)`` and ``.../~/depthwise_conv2_d_1``
  ``w: (1, kw, 1, channel_multiplier * C)``, ``b: (channel_multiplier * C,)``.)

  Example::

      def f(x):                                   # x: (batch, 8, 8, 3)
        conv = purify.nn.SeparableDepthwiseConv2D(2, (3, 5), stride=2)
        return conv(x)                            # (batch, 4, 4, 6)
  """

  def __init__(self, channel_multiplier: int, kernel_shape: int | Sequence[int],
               stride: int | Sequence[int] = 1, padding="SAME", with_bias: bool = True,
               w_init: Callable | None = None, b_init: Callable | None = None,
               data_format: str = "NHWC", name: str | None = None):
    super().__init__(name=name)
    kh, kw = _replicate(kernel_shape, 2, "kernel_shape")
    self._conv1 = DepthwiseConv2D(channel_multiplier, (kh, 1), stride=stride, padding=padding,
                                  with_bias=False, w_init=w_init, b_init=b_init,
                                  data_format=data_format)
    self._conv2 = DepthwiseConv2D(1, (1, kw), stride=1, padding=padding, with_bias=with_bias,
                                  w_init=w_init, b_init=b_init, data_format=data_format)

  def __call__(self, inputs, *, precision=None):
    return self._conv2(self._conv1(inputs, precision=precision), precision=precision)


# ----------------------------------------------------------------------------- transposes

def compute_adjusted_padding(input_size: int, output_size: int, kernel_size: int,
                             stride: int, padding: str, dilation: int = 1):
  """Haiku's padding for a transposed convolution that must produce ``output_size``."""
  kernel_size = (kernel_size - 1) * dilation + 1
  if padding == "VALID":
    expected = (output_size - kernel_size + stride) // stride
    before = 0
  elif padding == "SAME":
    expected = (output_size + stride - 1) // stride
    before = max(0, (input_size - 1) * stride + kernel_size - output_size) // 2
  else:
    raise ValueError(f"`padding` must be 'VALID' or 'SAME'. Passed: {padding}.")
  if input_size != expected:
    raise ValueError(f"The expected input size with the current set of input parameters is "
                     f"{expected} which doesn't match the actual input size {input_size}.")
  expanded = (input_size - 1) * stride + 1
  padded_out = output_size + kernel_size - 1
  pad_before = kernel_size - 1 - before
  return (pad_before, padded_out - expanded - pad_before)


class ConvNDTranspose(purify.Module):
  """N-dimensional transposed convolution: ``w: kernel_shape + (out, in)``, ``b`` as in
  ConvND. ``output_shape`` (spatial sizes) picks the padding that produces it.

  Example::

      def f(x):                                   # x: (batch, 4, 4, 8)
        return purify.nn.ConvNDTranspose(2, 3, kernel_shape=3, stride=2)(x)  # (batch, 8, 8, 3)
  """

  def __init__(self, num_spatial_dims: int, output_channels: int,
               kernel_shape: int | Sequence[int], stride: int | Sequence[int] = 1,
               output_shape: int | Sequence[int] | None = None, padding="SAME",
               with_bias: bool = True, w_init: Callable | None = None,
               b_init: Callable | None = None, data_format: str = "channels_last",
               mask=None, name: str | None = None):
    super().__init__(name=name)
    n = _setup(self, num_spatial_dims, kernel_shape, stride, with_bias, w_init, b_init, mask,
               data_format, transpose=True)
    self.output_channels = output_channels
    self.output_shape = output_shape
    if output_shape is not None:
      self.output_shape = _replicate(output_shape, n, "output_shape")
      if not isinstance(padding, str):
        raise ValueError("When specifying `output_shape`, ensure that padding is "
                         "'VALID' or 'SAME'.")
    self.padding = padding

  def __call__(self, inputs, *, precision=None):
    inputs, unbatched = _batched(inputs, self.num_spatial_dims, "ConvNDTranspose")
    in_channels = inputs.shape[self.channel_index]
    w_shape = self.kernel_shape + (self.output_channels, in_channels)
    w = _weights(self, w_shape, self.kernel_shape + (in_channels,), inputs.dtype)
    padding = self.padding
    if self.output_shape is not None:
      spatial = inputs.shape[2:] if self.channel_index == 1 else inputs.shape[1:-1]
      padding = tuple(
          compute_adjusted_padding(i, o, k, s, self.padding)
          for i, o, k, s in zip(spatial, self.output_shape, self.kernel_shape, self.stride))
    out = lax.conv_transpose(inputs, w, strides=self.stride, padding=padding,
                             dimension_numbers=self.dimension_numbers, precision=precision)
    return _finish(self, out, inputs.dtype, unbatched)


class Conv1DTranspose(ConvNDTranspose):
  """1D transposed convolution ("NWC" or "NCW").

  Example::

      def f(x):                                       # x: (batch, 5, 4)
        return purify.nn.Conv1DTranspose(2, 3, stride=2)(x)   # (batch, 10, 2)
  """

  def __init__(self, output_channels: int, kernel_shape, stride=1, output_shape=None,
               padding="SAME", with_bias: bool = True, w_init=None, b_init=None,
               data_format: str = "NWC", mask=None, name: str | None = None):
    super().__init__(1, output_channels, kernel_shape, stride=stride,
                     output_shape=output_shape, padding=padding, with_bias=with_bias,
                     w_init=w_init, b_init=b_init, data_format=data_format, mask=mask,
                     name=name)


class Conv2DTranspose(ConvNDTranspose):
  """2D transposed convolution ("NHWC" or "NCHW").

  Example::

      def f(x):                                       # x: (batch, 4, 4, 8)
        return purify.nn.Conv2DTranspose(3, 3, stride=2)(x)   # (batch, 8, 8, 3)
  """

  def __init__(self, output_channels: int, kernel_shape, stride=1, output_shape=None,
               padding="SAME", with_bias: bool = True, w_init=None, b_init=None,
               data_format: str = "NHWC", mask=None, name: str | None = None):
    super().__init__(2, output_channels, kernel_shape, stride=stride,
                     output_shape=output_shape, padding=padding, with_bias=with_bias,
                     w_init=w_init, b_init=b_init, data_format=data_format, mask=mask,
                     name=name)


class Conv3DTranspose(ConvNDTranspose):
  """3D transposed convolution ("NDHWC" or "NCDHW").

  Example::

      def f(x):                                       # x: (batch, 2, 2, 2, 4)
        return purify.nn.Conv3DTranspose(2, 2, stride=2)(x)   # (batch, 4, 4, 4, 2)
  """

  def __init__(self, output_channels: int, kernel_shape, stride=1, output_shape=None,
               padding="SAME", with_bias: bool = True, w_init=None, b_init=None,
               data_format: str = "NDHWC", mask=None, name: str | None = None):
    super().__init__(3, output_channels, kernel_shape, stride=stride,
                     output_shape=output_shape, padding=padding, with_bias=with_bias,
                     w_init=w_init, b_init=b_init, data_format=data_format, mask=mask,
                     name=name)
