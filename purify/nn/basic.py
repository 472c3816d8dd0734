"""Reshaping and bias layers (Reshape, Flatten, Bias) and BatchApply, with Haiku's
arguments, defaults, parameter names and shapes."""
from __future__ import annotations

import collections.abc
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import purify


def _ndim(x) -> int:
  return x.ndim if hasattr(x, "ndim") else np.ndim(x)


# ----------------------------------------------------------------------------- Reshape

class Reshape(purify.Module):
  """Reshapes everything after the first ``preserve_dims`` dimensions to
  ``output_shape`` (Haiku's ``hk.Reshape``); one ``-1`` in ``output_shape`` takes the
  size that is left.

  A negative ``preserve_dims`` counts from the end instead: the last
  ``-preserve_dims`` dimensions are replaced, so the same module works on batched and
  unbatched inputs. An input with at most ``preserve_dims`` dimensions is returned
  unchanged. No parameters.

  Example::

      def f(x):                                        # x: (B, H, W, C, D)
        a = purify.nn.Reshape((-1, x.shape[-1]))(x)    # (B, H*W*C, D)
        b = purify.nn.Reshape((-1, x.shape[-1]), preserve_dims=-3)(x)   # (B, H, W*C, D)
        return a, b
  """

  def __init__(self, output_shape: Sequence[int], preserve_dims: int = 1,
               name: str | None = None):
    super().__init__(name=name)
    if preserve_dims == 0:
      raise ValueError("Argument preserve_dims should be non-zero: the number of leading "
                       "dimensions to keep (or, if negative, of trailing dimensions to "
                       "replace).")
    if (isinstance(output_shape, (str, bytes))
        or not isinstance(output_shape, collections.abc.Iterable)):
      raise TypeError(f"{type(self).__name__}: output_shape must be a sequence of ints, "
                      f"got {output_shape!r}; write ({output_shape!r},) for one dimension.")
    output_shape = tuple(int(k) for k in output_shape)
    if output_shape.count(-1) > 1:
      raise ValueError("-1 can only occur once in `output_shape`: the other sizes are "
                       f"needed to infer it (got {output_shape}).")
    if any(k < -1 for k in output_shape):
      raise ValueError(f"{type(self).__name__}: output_shape {output_shape} has a negative "
                       "size; sizes are >= 0, or -1 (once) for the size that is left.")
    self.output_shape = output_shape
    self.preserve_dims = preserve_dims

  def __call__(self, inputs):
    if _ndim(inputs) <= self.preserve_dims:
      return inputs
    shape = tuple(jnp.shape(inputs))
    kept, rest = shape[:self.preserve_dims], shape[self.preserve_dims:]
    size = math.prod(rest)
    known = math.prod(k for k in self.output_shape if k != -1)
    new = self.output_shape
    if -1 in new:
      fits = size % known == 0 if known else size == 0
      new = tuple((size // known if known else 0) if k == -1 else k for k in new)
    else:
      fits = known == size
    if not fits:
      raise TypeError(
          f"{type(self).__name__}: cannot reshape dimensions {rest} (size {size}) of the "
          f"input of shape {shape} into output_shape {self.output_shape}: preserve_dims="
          f"{self.preserve_dims} keeps {kept} and the sizes must multiply to {size}. Fix "
          "output_shape (one -1 takes the size that is left) or preserve_dims.")
    return jnp.reshape(inputs, kept + new)


class Flatten(Reshape):
  """Flattens everything after the first ``preserve_dims`` dimensions (Haiku's
  ``hk.Flatten``: ``Reshape((-1,), preserve_dims)``); a negative ``preserve_dims``
  flattens the last ``-preserve_dims`` dimensions. Inputs with at most
  ``preserve_dims`` dimensions are returned unchanged.

  Example::

      def f(x):                                        # x: (batch, 4, 4, 3)
        return purify.nn.Flatten()(x)                  # (batch, 48)
  """

  def __init__(self, preserve_dims: int = 1, name: str | None = None):
    super().__init__(output_shape=(-1,), preserve_dims=preserve_dims, name=name)


# ----------------------------------------------------------------------------- Bias

def _bias_shape(input_shape, bias_dims) -> tuple:
  """Haiku's ``calculate_bias_shape``: all non-batch dimensions (``None``), a scalar
  (``[]``), or the dimensions ``bias_dims`` kept and the others of size 1, without
  the leading size-1 dimensions."""
  rank = len(input_shape)
  if bias_dims is None:
    return tuple(input_shape[1:])
  if not bias_dims:
    return ()
  shape = [1] * rank
  for dim in bias_dims:
    if not -rank <= dim < rank:
      raise ValueError(f"Dimension {dim} (bias_dims={tuple(bias_dims)!r}) out of range for "
                       f"input of rank {rank}: use 1..{rank - 1} or -{rank - 1}..-1.")
    dim %= rank
    if dim == 0:
      raise ValueError("Cannot apply bias across the minibatch dimension: bias_dims="
                       f"{tuple(bias_dims)!r} names dimension 0 of an input of rank {rank}.")
    shape[dim] = input_shape[dim]
  start = next((d for d in range(1, rank) if shape[d] != 1), rank)
  return tuple(shape[start:])


class Bias(purify.Module):
  """Adds a learned bias ``b`` to ``[batch, ...]`` inputs (Haiku's ``hk.Bias``).

  ``b``'s shape: every non-batch dimension by default; ``bias_dims`` names the
  dimensions to keep (the others are broadcast over: size 1, leading ones dropped;
  ``[]`` gives a scalar). ``output_size`` (optional) is checked against
  ``inputs.shape[1:]``. ``b_init(key, shape, dtype)`` defaults to zeros. Called with
  ``multiplier``, adds ``b * multiplier`` (``-1`` subtracts the same bias).

  Example::

      def f(x):                                        # x: (batch, 2, 3, 4)
        y = purify.nn.Bias()(x)                        # params["bias"]["b"]: (2, 3, 4)
        return purify.nn.Bias(bias_dims=[1])(y)        # params["bias_1"]["b"]: (2, 1, 1)
  """

  def __init__(self, output_size: Sequence[int] | None = None,
               bias_dims: Sequence[int] | None = None, b_init: Callable | None = None,
               name: str | None = None):
    super().__init__(name=name)
    self.output_size = output_size
    self.bias_dims = bias_dims
    self.b_init = b_init or jax.nn.initializers.zeros
    self.bias_shape = None

  def __call__(self, inputs, multiplier=None):
    inputs = jnp.asarray(inputs)
    if inputs.ndim < 2:
      raise ValueError(f"Bias: input must have rank >= 2 ([batch, ...]), got shape "
                       f"{inputs.shape}; add a batch axis (x[None]).")
    if self.output_size is not None:
      if not isinstance(self.output_size, collections.abc.Iterable):
        raise TypeError(f"Bias: output_size must be the input shape without the batch "
                        f"dimension (a sequence), got {self.output_size!r}; write "
                        f"({self.output_size!r},).")
      if tuple(self.output_size) != inputs.shape[1:]:
        raise ValueError(f"Input shape must be {(-1,) + tuple(self.output_size)} not "
                         f"{inputs.shape}: output_size is the shape without the batch "
                         "dimension.")
    self.bias_shape = _bias_shape(inputs.shape, self.bias_dims)
    self.input_size = inputs.shape[1:]
    b = purify.param("b", self.bias_shape, inputs.dtype, init=self.b_init)
    b = jnp.broadcast_to(b, inputs.shape)
    if multiplier is not None:
      b = b * multiplier
    return inputs + b


# ----------------------------------------------------------------------------- BatchApply

class BatchApply:
  """Calls ``f`` with the leading ``num_dims`` dimensions of its array arguments merged
  into one, and splits that dimension of every output back (Haiku's
  ``hk.BatchApply``): e.g. a layer made for ``[batch, ...]`` applied to ``[T, B, ...]``.

  Arguments (positional and keyword, any tree) with fewer than ``num_dims``
  dimensions are passed unchanged; the split uses the leading dimensions of the first
  argument leaf that has enough. Not a module (as in Haiku): modules created by ``f``
  are named where ``f`` runs.

  Example::

      def f(xs):                                       # xs: (T, batch, 3)
        return purify.nn.BatchApply(purify.nn.Linear(4))(xs)   # (T, batch, 4)
  """

  def __init__(self, f: Callable[..., Any], num_dims: int = 2):
    if not isinstance(num_dims, (int, np.integer)) or num_dims < 1:
      raise ValueError(f"BatchApply: num_dims must be a positive int (the number of leading "
                       f"dimensions to merge), got {num_dims!r}.")
    self._f = f
    self.num_dims = int(num_dims)

  def __call__(self, *args, **kwargs):
    n = self.num_dims
    example = next((x for x in jax.tree_util.tree_leaves((args, kwargs)) if _ndim(x) >= n),
                   None)
    if example is None:
      shapes = [jnp.shape(x) for x in jax.tree_util.tree_leaves((args, kwargs))]
      raise ValueError(f"BatchApply requires at least one input with ndim >= {n} (the "
                       f"dimensions to merge); got inputs of shapes {shapes}.")
    lead = tuple(example.shape[:n])
    merged = math.prod(lead)

    def merge(x):
      if _ndim(x) < n:
        return x
      x = x if hasattr(x, "reshape") else jnp.asarray(x)
      return x.reshape((math.prod(x.shape[:n]),) + tuple(x.shape[n:]))

    def split(path, x):
      shape = tuple(jnp.shape(x))
      if not shape or shape[0] != merged:
        raise TypeError(
            f"BatchApply: output{jax.tree_util.keystr(path)} of f has shape {shape}, but its "
            f"leading dimension must be the merged one, of size {merged}, to split back into "
            f"{lead}; make f keep its inputs' leading (batch) dimension.")
      x = x if hasattr(x, "reshape") else jnp.asarray(x)
      return x.reshape(lead + shape[1:])

    out = self._f(*jax.tree_util.tree_map(merge, args), **jax.tree_util.tree_map(merge, kwargs))
    return jax.tree_util.tree_map_with_path(split, out)
