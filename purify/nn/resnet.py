"""ResNet v1/v2 (He et al. 2015/2016) as Haiku's ``hk.nets.ResNet``: the same
arguments, module names, parameter and state trees, and math, so Haiku's params and
state load into it.

Initializers follow purify's convention ``init(key, shape, dtype)``; the zero inits
Haiku uses (the logits' ``w``, the last BatchNorm scale of a v1 bottleneck block)
are ``jax.nn.initializers.zeros`` here.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import jax
import jax.numpy as jnp

import purify
from purify.nn.conv import Conv2D
from purify.nn.linear import Linear
from purify.nn.norm import BatchNorm
from purify.nn.pool import max_pool

FloatStrOrBool = Union[str, float, bool]

_zeros = jax.nn.initializers.zeros


def _with_defaults(config, **defaults):
  """A copy of ``config`` with ``defaults`` for the keys it lacks."""
  return {**defaults, **dict(config)}


def _conv(channels, kernel, stride, name):
  return Conv2D(output_channels=channels, kernel_shape=kernel, stride=stride,
                with_bias=False, padding="SAME", name=name)


def _block_layers(channels, stride, bn_config, bottleneck, **last_bn_args):
  """The (conv, BatchNorm) pairs ``conv_i``/``batchnorm_i`` of a residual block (both
  versions): with ``bottleneck`` three, the inner two with ``channels // 4`` channels
  and the stride on the 3x3; else two 3x3s, the stride on the first.
  ``last_bn_args`` go to the last BatchNorm of a bottleneck."""
  inner = channels // 4 if bottleneck else channels
  conv_0 = _conv(inner, 1 if bottleneck else 3, 1 if bottleneck else stride, "conv_0")
  bn_0 = BatchNorm(name="batchnorm_0", **bn_config)
  conv_1 = _conv(inner, 3, stride if bottleneck else 1, "conv_1")
  bn_1 = BatchNorm(name="batchnorm_1", **bn_config)
  layers = ((conv_0, bn_0), (conv_1, bn_1))
  if bottleneck:
    conv_2 = _conv(channels, 1, 1, "conv_2")
    bn_2 = BatchNorm(name="batchnorm_2", **last_bn_args, **bn_config)
    layers += ((conv_2, bn_2),)
  return layers


class BlockV1(purify.Module):
  """ResNet v1 residual block: (conv, BatchNorm, relu) x 2 (x 3 with ``bottleneck``),
  an optional projection shortcut (``shortcut_conv`` / ``shortcut_batchnorm``), relu
  after the sum. With ``bottleneck`` the inner convs have ``channels // 4`` channels
  and the last BatchNorm's scale starts at zeros.

  Example::

      def f(x, is_training):                       # x: (batch, 8, 8, 16)
        block = purify.nn.BlockV1(32, stride=2, use_projection=True,
                                  bn_config={"decay_rate": 0.9}, bottleneck=False)
        return block(x, is_training, False)        # (batch, 4, 4, 32)
  """

  def __init__(self, channels: int, stride: int | Sequence[int], use_projection: bool,
               bn_config: Mapping[str, FloatStrOrBool], bottleneck: bool,
               name: str | None = None):
    super().__init__(name=name)
    self.use_projection = use_projection
    bn_config = _with_defaults(bn_config, create_scale=True, create_offset=True,
                           decay_rate=0.999)
    if use_projection:
      self.proj_conv = _conv(channels, 1, stride, "shortcut_conv")
      self.proj_batchnorm = BatchNorm(name="shortcut_batchnorm", **bn_config)
    self.layers = _block_layers(channels, stride, bn_config, bottleneck, scale_init=_zeros)

  def __call__(self, inputs, is_training: bool, test_local_stats: bool):
    out = shortcut = inputs
    if self.use_projection:
      shortcut = self.proj_batchnorm(self.proj_conv(shortcut), is_training,
                                     test_local_stats)
    last = len(self.layers) - 1
    for i, (conv, bn) in enumerate(self.layers):
      out = bn(conv(out), is_training, test_local_stats)
      if i < last:
        out = jax.nn.relu(out)
    return jax.nn.relu(out + shortcut)


class BlockV2(purify.Module):
  """ResNet v2 ("pre-activation") residual block: (BatchNorm, relu, conv) x 2 (x 3
  with ``bottleneck``); the projection shortcut (``shortcut_conv``, no BatchNorm) is
  taken from the first pre-activation; no relu after the sum.

  Example::

      def f(x, is_training):                       # x: (batch, 8, 8, 16)
        block = purify.nn.BlockV2(16, stride=1, use_projection=False,
                                  bn_config={"decay_rate": 0.9}, bottleneck=False)
        return block(x, is_training, False)        # (batch, 8, 8, 16)
  """

  def __init__(self, channels: int, stride: int | Sequence[int], use_projection: bool,
               bn_config: Mapping[str, FloatStrOrBool], bottleneck: bool,
               name: str | None = None):
    super().__init__(name=name)
    self.use_projection = use_projection
    bn_config = _with_defaults(bn_config, create_scale=True, create_offset=True)
    if use_projection:
      self.proj_conv = _conv(channels, 1, stride, "shortcut_conv")
    self.layers = _block_layers(channels, stride, bn_config, bottleneck)

  def __call__(self, inputs, is_training: bool, test_local_stats: bool):
    x = shortcut = inputs
    for i, (conv, bn) in enumerate(self.layers):
      x = jax.nn.relu(bn(x, is_training, test_local_stats))
      if i == 0 and self.use_projection:
        shortcut = self.proj_conv(x)
      x = conv(x)
    return x + shortcut


class BlockGroup(purify.Module):
  """``num_blocks`` residual blocks ``block_0 ... block_{n-1}``; only the first has
  ``stride`` and (if ``use_projection``) a projection shortcut.

  Example::

      def f(x, is_training):                       # x: (batch, 8, 8, 16)
        group = purify.nn.BlockGroup(32, num_blocks=2, stride=2,
                                     bn_config={"decay_rate": 0.9}, resnet_v2=False,
                                     bottleneck=False, use_projection=True)
        return group(x, is_training, False)        # (batch, 4, 4, 32)
  """

  def __init__(self, channels: int, num_blocks: int, stride: int | Sequence[int],
               bn_config: Mapping[str, FloatStrOrBool], resnet_v2: bool, bottleneck: bool,
               use_projection: bool, name: str | None = None):
    super().__init__(name=name)
    block_cls = BlockV2 if resnet_v2 else BlockV1
    self.blocks = [
        block_cls(channels=channels, stride=stride if i == 0 else 1,
                  use_projection=(i == 0 and use_projection), bn_config=bn_config,
                  bottleneck=bottleneck, name=f"block_{i}")
        for i in range(num_blocks)]

  def __call__(self, inputs, is_training: bool, test_local_stats: bool):
    out = inputs
    for block in self.blocks:
      out = block(out, is_training, test_local_stats)
    return out


def _check_length(length, value, name):
  if len(value) != length:
    raise ValueError(f"`{name}` must be of length {length} not {len(value)}")


class ResNet(purify.Module):
  """ResNet: a 7x7/2 ``initial_conv`` (+ ``initial_batchnorm`` and relu in v1), a
  3x3/2 max pool, four :class:`BlockGroup` s ``block_group_0..3``, (``final_batchnorm``
  and relu in v2), a spatial mean and a ``logits`` :class:`Linear` (``w`` starts at
  zeros). Inputs are NHWC. ``bn_config`` defaults: ``decay_rate=0.9, eps=1e-5``.

  ``__call__(inputs, is_training, test_local_stats=False)``; use
  :func:`purify.transform_with_state` (the BatchNorm moving averages are state).

  Example::

      def f(x, is_training):                       # x: (batch, 32, 32, 3)
        net = purify.nn.ResNet(blocks_per_group=(1, 1, 1, 1), num_classes=10,
                               bottleneck=False, channels_per_group=(8, 16, 32, 64),
                               use_projection=(False, True, True, True),
                               initial_conv_config={"output_channels": 8})
        return net(x, is_training)                 # (batch, 10)

      init, apply = purify.transform_with_state(f)
      params, state = init(jax.random.key(0), x, True)
      logits, state = apply(params, state, None, x, True)
      # params["res_net/~/block_group_1/~/block_0/~/shortcut_conv"]["w"]: (1, 1, 8, 16)
  """

  CONFIGS = {
      18: {"blocks_per_group": (2, 2, 2, 2), "bottleneck": False,
           "channels_per_group": (64, 128, 256, 512),
           "use_projection": (False, True, True, True)},
      34: {"blocks_per_group": (3, 4, 6, 3), "bottleneck": False,
           "channels_per_group": (64, 128, 256, 512),
           "use_projection": (False, True, True, True)},
      50: {"blocks_per_group": (3, 4, 6, 3), "bottleneck": True,
           "channels_per_group": (256, 512, 1024, 2048),
           "use_projection": (True, True, True, True)},
      101: {"blocks_per_group": (3, 4, 23, 3), "bottleneck": True,
            "channels_per_group": (256, 512, 1024, 2048),
            "use_projection": (True, True, True, True)},
      152: {"blocks_per_group": (3, 8, 36, 3), "bottleneck": True,
            "channels_per_group": (256, 512, 1024, 2048),
            "use_projection": (True, True, True, True)},
      200: {"blocks_per_group": (3, 24, 36, 3), "bottleneck": True,
            "channels_per_group": (256, 512, 1024, 2048),
            "use_projection": (True, True, True, True)},
  }

  BlockGroup = BlockGroup
  BlockV1 = BlockV1
  BlockV2 = BlockV2

  def __init__(self, blocks_per_group: Sequence[int], num_classes: int,
               bn_config: Mapping[str, FloatStrOrBool] | None = None,
               resnet_v2: bool = False, bottleneck: bool = True,
               channels_per_group: Sequence[int] = (256, 512, 1024, 2048),
               use_projection: Sequence[bool] = (True, True, True, True),
               logits_config: Mapping[str, Any] | None = None, name: str | None = None,
               initial_conv_config: Mapping[str, FloatStrOrBool] | None = None,
               strides: Sequence[int] = (1, 2, 2, 2)):
    super().__init__(name=name)
    self.resnet_v2 = resnet_v2
    bn_config = _with_defaults(bn_config or {}, decay_rate=0.9, eps=1e-5, create_scale=True,
                           create_offset=True)
    logits_config = _with_defaults(logits_config or {}, w_init=_zeros, name="logits")
    _check_length(4, blocks_per_group, "blocks_per_group")
    _check_length(4, channels_per_group, "channels_per_group")
    _check_length(4, strides, "strides")
    initial_conv_config = _with_defaults(
        initial_conv_config or {}, output_channels=64, kernel_shape=7, stride=2,
        with_bias=False, padding="SAME", name="initial_conv")

    self.initial_conv = Conv2D(**initial_conv_config)
    if not resnet_v2:
      self.initial_batchnorm = BatchNorm(name="initial_batchnorm", **bn_config)
    self.block_groups = [
        BlockGroup(channels=channels_per_group[i], num_blocks=blocks_per_group[i],
                   stride=stride, bn_config=bn_config, resnet_v2=resnet_v2,
                   bottleneck=bottleneck, use_projection=use_projection[i],
                   name=f"block_group_{i}")
        for i, stride in enumerate(strides)]
    if resnet_v2:
      self.final_batchnorm = BatchNorm(name="final_batchnorm", **bn_config)
    self.logits = Linear(num_classes, **logits_config)

  def __call__(self, inputs, is_training: bool, test_local_stats: bool = False):
    out = self.initial_conv(inputs)
    if not self.resnet_v2:
      out = jax.nn.relu(self.initial_batchnorm(out, is_training, test_local_stats))
    out = max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
    for group in self.block_groups:
      out = group(out, is_training, test_local_stats)
    if self.resnet_v2:
      out = jax.nn.relu(self.final_batchnorm(out, is_training, test_local_stats))
    out = jnp.mean(out, axis=(1, 2))
    return self.logits(out)


def _preset_doc(depth: int) -> str:
  return f"""ResNet-{depth} (``ResNet.CONFIGS[{depth}]``); named ``res_net{depth}`` by default, as in Haiku.

  Example::

      def f(x, is_training):                       # x: (batch, 224, 224, 3)
        return purify.nn.ResNet{depth}(num_classes=1000)(x, is_training)
  """


class _Preset(ResNet):
  """A ResNet of depth ``DEPTH`` (``ResNet.CONFIGS[DEPTH]``), named after its class
  (``res_net50``) as Haiku's presets are. A preset without a docstring of its own gets
  :func:`_preset_doc`'s (with its worked example)."""
  DEPTH: int = 0

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if cls.__doc__ is None:
      cls.__doc__ = _preset_doc(cls.DEPTH)

  def __init__(self, num_classes: int, bn_config: Mapping[str, FloatStrOrBool] | None = None,
               resnet_v2: bool = False, logits_config: Mapping[str, Any] | None = None,
               name: str | None = None,
               initial_conv_config: Mapping[str, FloatStrOrBool] | None = None,
               strides: Sequence[int] = (1, 2, 2, 2)):
    super().__init__(num_classes=num_classes, bn_config=bn_config, resnet_v2=resnet_v2,
                     logits_config=logits_config, name=name,
                     initial_conv_config=initial_conv_config, strides=strides,
                     **ResNet.CONFIGS[self.DEPTH])


# The presets' docstrings (each with its worked example) are _preset_doc(DEPTH).
class ResNet18(_Preset):
  DEPTH = 18


class ResNet34(_Preset):
  DEPTH = 34


class ResNet50(_Preset):
  DEPTH = 50


class ResNet101(_Preset):
  DEPTH = 101


class ResNet152(_Preset):
  DEPTH = 152


class ResNet200(_Preset):
  DEPTH = 200
