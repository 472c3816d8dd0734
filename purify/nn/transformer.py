"""A decoder-only (causal) Transformer language model built from purify.nn layers.

* :class:`TransformerBlock`: one pre-LayerNorm block,
  ``x + dropout(attention(ln_attn(x)))`` then ``x + dropout(mlp(ln_mlp(x)))``, with
  causal self-attention.
* :class:`Transformer`: ``num_layers`` blocks, as a Python loop (``block_0`` ...
  ``block_{n-1}``) or, with ``scan_layers=True``, ONE block ``block`` run by
  ``purify.scan(..., param_axes=0)``: its parameters get a leading ``num_layers`` axis
  and each step uses its own slice (one compiled block instead of ``num_layers``).
* :class:`TransformerLM`: token embedding + learned positional embedding, the
  Transformer, a final LayerNorm and the output logits.

Dropout draws its keys with ``purify.next_rng_key()``: every block (and, in the
scanned stack, every step) gets its own masks, as the loop over layers would.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

import purify
from purify.nn.attention import MultiHeadAttention
from purify.nn.conv import variance_scaling
from purify.nn.dropout import dropout
from purify.nn.embed import Embed
from purify.nn.linear import Linear, MLP, truncated_normal
from purify.nn.norm import LayerNorm


def causal_mask(length: int, ndim: int):
  """A ``[1, ..., 1, T, T]`` boolean mask of rank ``ndim`` (``mask[..., t, s] = s <= t``),
  the shape :class:`MultiHeadAttention` wants for logits of rank ``ndim``."""
  mask = jnp.tril(jnp.ones((length, length), bool))
  return mask.reshape((1,) * (ndim - 2) + (length, length))


def _layer_norm(use_fast_variance: bool, name: str):
  # a function, not a method: a method would scope the LayerNorm under "~_norm"
  return LayerNorm(-1, create_scale=True, create_offset=True,
                   use_fast_variance=use_fast_variance, name=name)


class TransformerBlock(purify.Module):
  """One pre-LayerNorm decoder block with causal self-attention.

  ``x: [..., T, D]`` -> ``[..., T, D]``::

      h = x + dropout(attention(ln_attn(x)))          # causal: position t sees 0..t
      y = h + dropout(mlp(ln_mlp(h)))                  # mlp: D -> mlp_hidden -> D

  Submodules: ``ln_attn``, ``attention`` (:class:`MultiHeadAttention` with
  ``num_heads`` heads of ``key_size``, projected back to ``D``), ``ln_mlp``, ``mlp``
  (:class:`MLP` ``[mlp_hidden, D]`` with ``activation``, default GELU). The LayerNorms
  use the exact variance unless ``use_fast_variance``. Dropout (rate
  ``dropout_rate``) only when ``is_training``.

  Example::

      def f(x):                                     # x: (batch, T, 16)
        return purify.nn.TransformerBlock(num_heads=2, key_size=8, mlp_hidden=32)(x)
      # params "transformer_block/ln_attn", ".../attention/query", ".../mlp/~/linear_0", ...
  """

  def __init__(self, num_heads: int, key_size: int, mlp_hidden: int,
               dropout_rate: float = 0.0, *, w_init=None, activation: Callable = jax.nn.gelu,
               use_fast_variance: bool = False, name: str | None = None):
    super().__init__(name=name)
    self.num_heads = num_heads
    self.key_size = key_size
    self.mlp_hidden = mlp_hidden
    self.dropout_rate = dropout_rate
    self.w_init = w_init if w_init is not None else variance_scaling(1.0)
    self.activation = activation
    self.use_fast_variance = use_fast_variance

  def __call__(self, x, *, is_training: bool = True):
    """Apply the block to ``x: [..., T, D]`` (``is_training`` must be a Python bool)."""
    x = jnp.asarray(x)
    if x.ndim < 2:
      raise ValueError(f"TransformerBlock: input must be [..., T, D], got shape {x.shape}.")
    d_model = x.shape[-1]
    rate = self.dropout_rate if is_training else 0.0
    h = _layer_norm(self.use_fast_variance, "ln_attn")(x)
    attention = MultiHeadAttention(self.num_heads, self.key_size, w_init=self.w_init,
                                   model_size=d_model, name="attention")
    h = attention(h, h, h, mask=causal_mask(x.shape[-2], x.ndim + 1))
    x = x + dropout(rate, h)
    h = _layer_norm(self.use_fast_variance, "ln_mlp")(x)
    h = MLP([self.mlp_hidden, d_model], w_init=self.w_init, activation=self.activation,
            name="mlp")(h)
    return x + dropout(rate, h)


class Transformer(purify.Module):
  """A stack of ``num_layers`` :class:`TransformerBlock` s (no final LayerNorm).

  ``scan_layers=False``: a Python loop over blocks ``block_0 ... block_{n-1}``.
  ``scan_layers=True``: one block ``block`` run ``num_layers`` times by
  ``purify.scan(..., param_axes=0)``; each of its parameters has a leading
  ``num_layers`` axis and step ``i`` uses slice ``i``, so it computes the same
  function as the loop with ``params[".../block"][k][i] == params[".../block_i"][k]``.
  Each step draws its own dropout keys (loop semantics).

  Example::

      def f(x):                                     # x: (batch, T, 16)
        return purify.nn.Transformer(num_layers=4, num_heads=2, key_size=8,
                                     mlp_hidden=32, scan_layers=True)(x)
      # params["transformer/block/attention/query"]["w"]: (4, 16, 16)
  """

  def __init__(self, num_layers: int, num_heads: int, key_size: int, mlp_hidden: int,
               dropout_rate: float = 0.0, scan_layers: bool = False, *, w_init=None,
               activation: Callable = jax.nn.gelu, use_fast_variance: bool = False,
               name: str | None = None):
    super().__init__(name=name)
    if num_layers < 1:
      raise ValueError(f"Transformer: num_layers must be >= 1, got {num_layers}.")
    self.num_layers = num_layers
    self.scan_layers = scan_layers
    self._block_args = dict(num_heads=num_heads, key_size=key_size, mlp_hidden=mlp_hidden,
                            dropout_rate=dropout_rate, w_init=w_init, activation=activation,
                            use_fast_variance=use_fast_variance)

  def __call__(self, x, *, is_training: bool = True):
    """Apply the stack to ``x: [..., T, D]``."""
    if self.scan_layers:
      block = TransformerBlock(**self._block_args, name="block")

      def step(h, _):
        return block(h, is_training=is_training), None

      return purify.scan(step, jnp.asarray(x), None, length=self.num_layers,
                         param_axes=0)[0]
    for i in range(self.num_layers):
      x = TransformerBlock(**self._block_args, name=f"block_{i}")(x, is_training=is_training)
    return x


class TransformerLM(purify.Module):
  """A decoder-only Transformer language model: ``tokens: int [..., T]`` -> logits
  ``[..., T, vocab_size]``, where the logits at position ``t`` depend only on
  ``tokens[..., :t+1]``.

  ``token_embed`` (:class:`Embed`, ``(vocab_size, d_model)``) plus the learned
  ``positional_embeddings`` (``(max_len, d_model)``, a parameter of this module; both
  start as a truncated normal of stddev ``embed_stddev``), dropout, a
  :class:`Transformer` (``key_size`` defaults to ``d_model // num_heads``,
  ``mlp_hidden`` to ``4 * d_model``; ``scan_layers`` as there), the final LayerNorm
  ``ln_final`` and the Linear ``logits``.

  Example::

      def loss(tokens):                             # tokens: int (batch, 16)
        lm = purify.nn.TransformerLM(vocab_size=50, d_model=32, num_layers=2,
                                     num_heads=4, max_len=16)
        logits = lm(tokens[:, :-1])
        targets = jax.nn.one_hot(tokens[:, 1:], 50)
        return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))
  """

  def __init__(self, vocab_size: int, d_model: int, num_layers: int, num_heads: int,
               key_size: int | None = None, mlp_hidden: int | None = None,
               dropout_rate: float = 0.0, max_len: int = 512, scan_layers: bool = False, *,
               w_init=None, embed_stddev: float = 0.02, activation: Callable = jax.nn.gelu,
               use_fast_variance: bool = False, name: str | None = None):
    super().__init__(name=name)
    if key_size is None:
      if d_model % num_heads:
        raise ValueError(f"TransformerLM: d_model={d_model} is not divisible by "
                         f"num_heads={num_heads}; pass key_size.")
      key_size = d_model // num_heads
    self.vocab_size = vocab_size
    self.d_model = d_model
    self.max_len = max_len
    self.dropout_rate = dropout_rate
    self.embed_stddev = embed_stddev
    self.use_fast_variance = use_fast_variance
    self._stack_args = dict(num_layers=num_layers, num_heads=num_heads, key_size=key_size,
                            mlp_hidden=mlp_hidden or 4 * d_model, dropout_rate=dropout_rate,
                            scan_layers=scan_layers, w_init=w_init, activation=activation,
                            use_fast_variance=use_fast_variance)

  def __call__(self, tokens, *, is_training: bool = True):
    """Logits ``[..., T, vocab_size]`` for integer ``tokens: [..., T]`` (``T <= max_len``)."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim < 1:
      raise ValueError("TransformerLM: tokens must be [..., T], got a scalar.")
    length = tokens.shape[-1]
    if length > self.max_len:
      raise ValueError(f"TransformerLM: sequence length {length} > max_len={self.max_len}.")
    init = truncated_normal(self.embed_stddev)
    h = Embed(self.vocab_size, self.d_model, w_init=init, name="token_embed")(tokens)
    positions = purify.param("positional_embeddings", (self.max_len, self.d_model),
                             h.dtype, init=init)
    h = h + positions[:length]
    h = dropout(self.dropout_rate if is_training else 0.0, h)
    h = Transformer(**self._stack_args)(h, is_training=is_training)
    h = _layer_norm(self.use_fast_variance, "ln_final")(h)
    return Linear(self.vocab_size, name="logits")(h)
