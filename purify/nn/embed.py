"""Embed: a lookup table of embeddings, with Haiku's argument and parameter names."""
from __future__ import annotations

import enum
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import purify
from purify.nn.linear import truncated_normal


class EmbedLookupStyle(enum.Enum):
  """How :class:`Embed` maps ids to rows (the result is the same either way)."""
  ARRAY_INDEX = 1   # embeddings[ids]
  ONE_HOT = 2       # one_hot(ids) @ embeddings


def _style(style) -> EmbedLookupStyle:
  if isinstance(style, EmbedLookupStyle):
    return style
  try:
    return EmbedLookupStyle[str(style).upper()]
  except KeyError:
    raise AttributeError(f"Embed: unknown lookup_style {style!r}; use one of "
                         f"{[s.name for s in EmbedLookupStyle]}.") from None


class Embed(purify.Module):
  """Embeddings ``params[name]["embeddings"]: (vocab_size, embed_dim)`` looked up by id.

  As ``hk.Embed``: give ``vocab_size`` and ``embed_dim``, or an ``embedding_matrix``
  used as the initial value (the sizes are then read from it). The default
  initializer is a truncated normal with stddev 1. ``lookup_style`` is
  ``"ARRAY_INDEX"`` (``embeddings[ids]``) or ``"ONE_HOT"`` (a matmul at
  ``precision``); both give ``ids.shape + (embed_dim,)``.

  Example::

      def f(ids):                                   # ids: int (batch, time)
        return purify.nn.Embed(vocab_size=10, embed_dim=4)(ids)   # (batch, time, 4)
      # params["embed"]["embeddings"]: (10, 4)
  """

  def __init__(self, vocab_size: int | None = None, embed_dim: int | None = None,
               embedding_matrix=None, w_init=None, lookup_style="ARRAY_INDEX",
               name: str | None = None, precision=jax.lax.Precision.HIGHEST):
    super().__init__(name=name)
    if embedding_matrix is None and not (vocab_size and embed_dim):
      raise ValueError("Embed needs either an `embedding_matrix` or both `vocab_size` and "
                       "`embed_dim`.")
    if embedding_matrix is not None:
      try:   # a host copy: an initializer must not close over a value of the trace
        matrix = np.asarray(embedding_matrix)
      except jax.errors.TracerArrayConversionError:
        matrix = embedding_matrix   # computed by the model: init will say so
      if matrix.ndim != 2:
        raise ValueError(f"Embed: `embedding_matrix` must be 2-D, got shape {matrix.shape}.")
      if vocab_size and matrix.shape[0] != vocab_size:
        raise ValueError(f"Embed: `vocab_size`={vocab_size} does not match the "
                         f"`embedding_matrix` shape {matrix.shape}.")
      if embed_dim and matrix.shape[1] != embed_dim:
        raise ValueError(f"Embed: `embed_dim`={embed_dim} does not match the "
                         f"`embedding_matrix` shape {matrix.shape}.")
      vocab_size, embed_dim = matrix.shape
      w_init = lambda key, shape, dtype: jnp.asarray(matrix, dtype)
    self.vocab_size = vocab_size
    self.embed_dim = embed_dim
    self.lookup_style = lookup_style
    self.precision = precision
    self.w_init = w_init or truncated_normal(1.0)

  def _embeddings(self):
    return purify.param("embeddings", (self.vocab_size, self.embed_dim), init=self.w_init)

  @property
  def embeddings(self):
    """The ``(vocab_size, embed_dim)`` parameter (created on first use)."""
    return self._embeddings()

  def __call__(self, ids: jax.Array | Sequence[int], lookup_style=None, precision=None):
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"Embed: ids must be an integer array, got dtype {ids.dtype}.")
    style = _style(lookup_style or self.lookup_style)
    embeddings = self._embeddings()
    if style is EmbedLookupStyle.ARRAY_INDEX:
      return embeddings[(ids,)]
    one_hot = jax.nn.one_hot(ids, self.vocab_size, dtype=embeddings.dtype)
    precision = self.precision if precision is None else precision
    return jnp.dot(one_hot, embeddings, precision=precision)
