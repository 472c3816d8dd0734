"""MultiHeadAttention, with Haiku's argument names, submodule names and shapes."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

import purify
from purify.nn.conv import variance_scaling
from purify.nn.linear import Linear


class MultiHeadAttention(purify.Module):
  """Multi-head attention, as ``hk.MultiHeadAttention``.

  ``query: [..., T', D_q]``, ``key: [..., T, D_k]``, ``value: [..., T, D_v]`` are
  projected by the sub-Linears ``query``, ``key`` (to ``H*key_size``) and ``value``
  (to ``H*value_size``); weights ``softmax(q k^T / sqrt(key_size))`` over ``T``; the
  heads are concatenated and projected by ``linear`` to ``model_size`` (default
  ``H*key_size``). ``mask`` (``[..., H or 1, T', T]``, same rank as the logits)
  keeps logits where it is true. Leading dimensions broadcast.

  Example::

      def f(x):                                     # x: (batch, T, 16)
        init = purify.nn.variance_scaling(1.0)
        mha = purify.nn.MultiHeadAttention(num_heads=2, key_size=8, w_init=init)
        causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))[None, None]
        return mha(x, x, x, mask=causal)            # (batch, T, 16)
      # params "multi_head_attention/query", ".../key", ".../value", ".../linear"
  """

  def __init__(self, num_heads: int, key_size: int, w_init_scale: float | None = None, *,
               w_init=None, with_bias: bool = True, b_init=None,
               value_size: int | None = None, model_size: int | None = None,
               name: str | None = None):
    super().__init__(name=name)
    self.num_heads = num_heads
    self.key_size = key_size
    self.value_size = value_size or key_size
    self.model_size = model_size or key_size * num_heads
    if w_init_scale is not None:
      warnings.warn("MultiHeadAttention: w_init_scale is deprecated; pass w_init instead.",
                    DeprecationWarning, stacklevel=2)
    if w_init is not None and w_init_scale:
      raise ValueError("MultiHeadAttention: give only `w_init`, not `w_init_scale`.")
    if w_init is None and w_init_scale is None:
      raise ValueError("MultiHeadAttention: please provide a weight initializer `w_init` "
                       "(e.g. purify.nn.variance_scaling(1.0)).")
    self.w_init = w_init if w_init is not None else variance_scaling(w_init_scale)
    self.with_bias = with_bias
    self.b_init = b_init

  def __call__(self, query, key, value, mask=None):
    *leading, length, _ = query.shape

    def heads(x, head_size, name):            # [..., T, D] -> [..., T, H, head_size]
      y = Linear(self.num_heads * head_size, with_bias=self.with_bias, w_init=self.w_init,
                 b_init=self.b_init, name=name)(x)
      return y.reshape((*x.shape[:-1], self.num_heads, head_size))

    q = heads(query, self.key_size, "query")
    k = heads(key, self.key_size, "key")
    v = heads(value, self.value_size, "value")
    logits = jnp.einsum("...thd,...Thd->...htT", q, k)
    logits = logits / np.sqrt(self.key_size).astype(key.dtype)
    if mask is not None:
      if mask.ndim != logits.ndim:
        raise ValueError(f"MultiHeadAttention: mask rank {mask.ndim} must equal the logits' "
                         f"rank {logits.ndim} (shape [..., H or 1, T', T] = {logits.shape}).")
      logits = jnp.where(mask, logits, -1e30)
    weights = jax.nn.softmax(logits)
    attn = jnp.einsum("...htT,...Thd->...thd", weights, v)
    attn = attn.reshape((*leading, length, -1))
    return Linear(self.model_size, with_bias=self.with_bias, w_init=self.w_init,
                  b_init=self.b_init)(attn)
