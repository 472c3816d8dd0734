"""Linear and MLP, with Haiku's argument names, parameter names and shapes."""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

import purify


def truncated_normal(stddev: float):
  """Haiku's ``TruncatedNormal(stddev)``: a standard normal cut at +-2, times
  ``stddev`` (not rescaled, as in Haiku: the samples' std is ``0.8796 * stddev``).
  Drawn flat and reshaped: the same bits, and a multi-dimensional draw compiles
  several times slower on CPU."""
  def init(key, shape, dtype):
    size = int(np.prod(shape))
    unscaled = jax.random.truncated_normal(key, -2.0, 2.0, (size,), dtype).reshape(shape)
    return (unscaled * jnp.asarray(stddev, dtype)).astype(dtype)
  return init


class Linear(purify.Module):
  """``y = x @ w + b`` with ``w: (in, out)``, ``b: (out,)``.

  Example::

      def f(x):                      # x: (batch, 3)
        return purify.nn.Linear(4)(x)  # params["linear"] = {"w": (3, 4), "b": (4,)}
  """

  def __init__(self, output_size: int, with_bias: bool = True, w_init=None, b_init=None,
               name: str | None = None):
    super().__init__(name=name)
    self.input_size = None
    self.output_size = output_size
    self.with_bias = with_bias
    self.w_init = w_init
    self.b_init = b_init or jax.nn.initializers.zeros

  def __call__(self, inputs, *, precision=None):
    if not inputs.shape:
      raise ValueError("Linear: input must not be a scalar.")
    input_size = self.input_size = inputs.shape[-1]
    dtype = inputs.dtype
    w_init = self.w_init or truncated_normal(1.0 / np.sqrt(input_size))
    w = purify.param("w", (input_size, self.output_size), dtype, init=w_init)
    out = jnp.dot(inputs, w, precision=precision)
    if self.with_bias:
      b = purify.param("b", (self.output_size,), dtype, init=self.b_init)
      out = out + jnp.broadcast_to(b, out.shape)
    return out


class MLP(purify.Module):
  """A stack of Linear layers ``linear_0 ... linear_{n-1}`` with an activation between.

  Example::

      def f(x):
        return purify.nn.MLP([300, 100])(x)   # params "mlp/~/linear_0", "mlp/~/linear_1"
  """

  def __init__(self, output_sizes: Iterable[int], w_init=None, b_init=None,
               with_bias: bool = True, activation: Callable = jax.nn.relu,
               activate_final: bool = False, name: str | None = None):
    super().__init__(name=name)
    self.output_sizes = tuple(output_sizes)
    self.activation = activation
    self.activate_final = activate_final
    self.layers = tuple(
        Linear(size, with_bias=with_bias, w_init=w_init, b_init=b_init, name=f"linear_{i}")
        for i, size in enumerate(self.output_sizes))

  def __call__(self, inputs, dropout_rate: float | None = None, rng=None):
    out = inputs
    n = len(self.layers)
    for i, layer in enumerate(self.layers):
      out = layer(out)
      if i < n - 1 or self.activate_final:
        if dropout_rate is not None:
          key = rng if rng is not None else purify.next_rng_key()
          if rng is not None:
            rng, key = jax.random.split(rng)
          keep = jax.random.bernoulli(key, 1.0 - dropout_rate, out.shape)
          out = jnp.where(keep, out / (1.0 - dropout_rate), 0.0)
        out = self.activation(out)
    return out
