"""MobileNet v1 (https://arxiv.org/abs/1704.04861) as Haiku's ``hk.nets.MobileNetV1``:
the same arguments, module names, parameter and state trees, and math, so Haiku's
params and state load into it.

Tree (default name ``mobile_net_v1``; blocks ``mobile_net_v1_block``, ``_1``, ...;
``C`` input channels, ``C_in`` a block's input channels)::

    mobile_net_v1/conv2_d                             w: (3, 3, C, 32)
    mobile_net_v1/batch_norm                          scale, offset: (1, 1, 1, 32)
    mobile_net_v1/mobile_net_v1_block/depthwise_conv  w: (3, 3, 1, C_in)
    mobile_net_v1/mobile_net_v1_block/batch_norm      scale, offset: (1, 1, 1, C_in)
    mobile_net_v1/mobile_net_v1_block/pointwise_conv  w: (1, 1, C_in, channels[i])
    mobile_net_v1/mobile_net_v1_block/batch_norm_1    scale, offset: (1, 1, 1, channels[i])
    mobile_net_v1/logits                              w: (channels[-1], num_classes), b

and the state ``<batch_norm path>/~/mean_ema`` and ``/~/var_ema`` of every BatchNorm.
With ``use_bn=False`` there are no BatchNorms and every convolution has a bias ``b``.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

import purify
from purify.nn.basic import Flatten
from purify.nn.conv import Conv2D, DepthwiseConv2D
from purify.nn.linear import Linear
from purify.nn.norm import BatchNorm


def _batch_norm():
  return BatchNorm(create_scale=True, create_offset=True, decay_rate=0.999)


class MobileNetV1Block(purify.Module):
  """One MobileNet v1 block (Haiku's ``MobileNetV1Block``): a 3x3 depthwise conv
  (``depthwise_conv``, ``stride``, padding 1), BatchNorm, relu, a 1x1 conv to
  ``channels`` (``pointwise_conv``), BatchNorm, relu. With ``use_bn=False`` the
  BatchNorms are left out and both convs have a bias.

  Example::

      def f(x, is_training):                      # x: (batch, 8, 8, 16)
        return purify.nn.mobilenet.MobileNetV1Block(32, stride=2)(x, is_training)
        # (batch, 4, 4, 32)
  """

  def __init__(self, channels: int, stride: int, use_bn: bool = True, name: str | None = None):
    super().__init__(name=name)
    self.channels = channels
    self.stride = stride
    self.use_bn = use_bn
    self.with_bias = not use_bn

  def __call__(self, inputs, is_training: bool):
    depthwise = DepthwiseConv2D(channel_multiplier=1, kernel_shape=3, stride=self.stride,
                                padding=((1, 1), (1, 1)), with_bias=self.with_bias,
                                name="depthwise_conv")
    pointwise = Conv2D(output_channels=self.channels, kernel_shape=(1, 1), stride=1,
                       padding="VALID", with_bias=self.with_bias, name="pointwise_conv")
    out = depthwise(inputs)
    if self.use_bn:
      out = _batch_norm()(out, is_training)
    out = pointwise(jax.nn.relu(out))
    if self.use_bn:
      out = _batch_norm()(out, is_training)
    return jax.nn.relu(out)


class MobileNetV1(purify.Module):
  """MobileNet v1 (Haiku's ``hk.nets.MobileNetV1``) on ``[N, H, W, C]`` images: a 3x3
  stride-2 ``"VALID"`` conv to 32 channels, BatchNorm, relu; one
  :class:`MobileNetV1Block` per entry of ``strides``/``channels``; the spatial mean;
  the Linear ``logits``. The BatchNorms are Haiku's (``decay_rate=0.999``, scale and
  offset; no ``bn_config``): in training (``is_training=True``) they use the batch's
  statistics and update their moving averages (state), in evaluation the averages.
  ``use_bn=False`` drops them and gives every conv a bias.

  With 224x224 inputs the last block is 7x7x1024 (1x1 from 32x32 inputs).

  Unlike Haiku, inputs of another rank than 4 are a ``ValueError`` (Haiku takes an
  unbatched image and averages over the wrong axes, giving ``logits`` weights whose
  shape depends on the image size).

  Example::

      def f(images, is_training):                 # images: (batch, 32, 32, 3)
        return purify.nn.MobileNetV1(num_classes=10)(images, is_training)

      init, apply = purify.transform_with_state(f)
      params, state = init(jax.random.key(0), images, True)
      logits, state = apply(params, state, None, images, True)    # (batch, 10)
  """

  def __init__(self, strides: Sequence[int] = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1),
               channels: Sequence[int] = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512,
                                          512, 1024, 1024),
               num_classes: int = 1000, use_bn: bool = True, name: str | None = None):
    super().__init__(name=name)
    if len(strides) != len(channels):
      raise ValueError(f"MobileNetV1: `strides` and `channels` must have the same length "
                       f"(one entry per block), got {len(strides)} strides and "
                       f"{len(channels)} channels.")
    self.strides = strides
    self.channels = channels
    self.use_bn = use_bn
    self.with_bias = not use_bn
    self.num_classes = num_classes

  def __call__(self, inputs, is_training: bool):
    inputs = jnp.asarray(inputs)
    if inputs.ndim != 4:
      raise ValueError(f"MobileNetV1 {self.module_name!r}: inputs must be images [N, H, W, C] "
                       f"(rank 4), got shape {inputs.shape}.")
    out = Conv2D(output_channels=32, kernel_shape=(3, 3), stride=2, padding="VALID",
                 with_bias=self.with_bias)(inputs)
    if self.use_bn:
      out = _batch_norm()(out, is_training)
    out = jax.nn.relu(out)
    for channels, stride in zip(self.channels, self.strides):
      out = MobileNetV1Block(channels, stride, self.use_bn)(out, is_training)
    out = Flatten()(jnp.mean(out, axis=(1, 2)))
    return Linear(self.num_classes, name="logits")(out)
