"""The VQ-VAE bottleneck (https://arxiv.org/abs/1711.00937) as Haiku's
``hk.nets.VectorQuantizer`` and ``hk.nets.VectorQuantizerEMA``: the same arguments,
module names, parameter/state trees, outputs and math.

Both quantize every vector along the inputs' last axis (``embedding_dim``) to its
nearest codebook entry (``embeddings: (embedding_dim, num_embeddings)``) and return a
dict::

    quantize          inputs' shape; the nearest entries, with the straight-through
                      gradient (d quantize / d inputs = identity)
    loss              ()   q_latent_loss + commitment_cost * e_latent_loss
                           (VectorQuantizerEMA: commitment_cost * e_latent_loss)
    perplexity        ()   exp(entropy of the mean code usage)
    encodings         (M, num_embeddings)  one-hot codes, M = inputs.size // embedding_dim
    encoding_indices  inputs.shape[:-1]    the codes' indices (int32)
    distances         (M, num_embeddings)  squared distances to every entry
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import purify
from purify.nn.conv import variance_scaling
from purify.nn.moving_averages import ExponentialMovingAverage


def _check_inputs(module, inputs):
  inputs = jnp.asarray(inputs)
  if inputs.ndim < 1 or inputs.shape[-1] != module.embedding_dim:
    raise TypeError(
        f"{type(module).__name__} {module.module_name!r}: the inputs' last axis must be "
        f"embedding_dim={module.embedding_dim} (the space quantized in), got inputs of shape "
        f"{inputs.shape}. Project the inputs to {module.embedding_dim} channels (e.g. a 1x1 "
        "conv), or build the quantizer with embedding_dim equal to their last axis.")
  return inputs


def _nearest(module, inputs, embeddings):
  """Distances of the flattened inputs to every entry, the codes and their one-hots."""
  flat = inputs.reshape(-1, module.embedding_dim)
  distances = (jnp.sum(jnp.square(flat), 1, keepdims=True) - 2 * flat @ embeddings
               + jnp.sum(jnp.square(embeddings), 0, keepdims=True))
  indices = jnp.argmax(-distances, 1)
  encodings = jax.nn.one_hot(indices, module.num_embeddings, dtype=distances.dtype)
  return flat, distances, indices.reshape(inputs.shape[:-1]), encodings


def _outputs(module, inputs, quantized, loss, distances, indices, encodings):
  """The returned dict: straight-through ``quantize`` and the perplexity."""
  quantized = inputs + jax.lax.stop_gradient(quantized - inputs)
  avg_probs = jnp.mean(encodings, 0)
  if module.cross_replica_axis:
    avg_probs = jax.lax.pmean(avg_probs, axis_name=module.cross_replica_axis)
  perplexity = jnp.exp(-jnp.sum(avg_probs * jnp.log(avg_probs + 1e-10)))
  return {"quantize": quantized, "loss": loss, "perplexity": perplexity,
          "encodings": encodings, "encoding_indices": indices, "distances": distances}


class VectorQuantizer(purify.Module):
  """The VQ-VAE quantizer with a learned codebook (Haiku's ``hk.nets.VectorQuantizer``):
  parameter ``embeddings: (embedding_dim, num_embeddings)`` of ``dtype`` (init:
  uniform fan-in variance scaling, Haiku's ``VarianceScaling(distribution="uniform")``).
  The loss is ``mean((q - sg(x))^2) + commitment_cost * mean((sg(q) - x)^2)`` (the
  codebook and the commitment terms); see the module docstring for the returned dict.
  ``is_training`` is accepted and unused, as in Haiku. With ``cross_replica_axis`` (a
  ``jax.vmap`` / pmap axis name) the perplexity is that of the whole batch.

  Example::

      def f(z):                                   # z: (batch, 8, 8, 16)
        vq = purify.nn.VectorQuantizer(embedding_dim=16, num_embeddings=32,
                                       commitment_cost=0.25)
        out = vq(z, is_training=True)
        return out["quantize"], out["loss"]       # (batch, 8, 8, 16), ()
  """

  def __init__(self, embedding_dim: int, num_embeddings: int, commitment_cost: float,
               dtype: Any = jnp.float32, name: str | None = None,
               cross_replica_axis: str | None = None):
    super().__init__(name=name)
    self.embedding_dim = embedding_dim
    self.num_embeddings = num_embeddings
    self.commitment_cost = commitment_cost
    self.cross_replica_axis = cross_replica_axis
    self._embedding_shape = (embedding_dim, num_embeddings)
    self._embedding_dtype = dtype

  @property
  def embeddings(self):
    """The codebook ``(embedding_dim, num_embeddings)``."""
    return self._embeddings()

  def _embeddings(self):       # a method: the parameter belongs to this module
    return purify.param("embeddings", self._embedding_shape, self._embedding_dtype,
                        init=variance_scaling(distribution="uniform"))

  def __call__(self, inputs, is_training):
    """Quantize ``inputs`` (last axis ``embedding_dim``); returns the dict of outputs."""
    inputs = _check_inputs(self, inputs)
    _, distances, indices, encodings = _nearest(self, inputs, self.embeddings)
    quantized = self.quantize(indices)
    e_latent_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(quantized) - inputs))
    q_latent_loss = jnp.mean(jnp.square(quantized - jax.lax.stop_gradient(inputs)))
    loss = q_latent_loss + self.commitment_cost * e_latent_loss
    return _outputs(self, inputs, quantized, loss, distances, indices, encodings)

  def quantize(self, encoding_indices):
    """The codebook entries of ``encoding_indices``: ``indices.shape + (embedding_dim,)``."""
    return jnp.swapaxes(self.embeddings, 1, 0)[(encoding_indices,)]


class VectorQuantizerEMA(purify.Module):
  """The VQ-VAE quantizer with a codebook kept by exponential moving averages
  (Haiku's ``hk.nets.VectorQuantizerEMA``): the codebook is STATE
  ``embeddings: (embedding_dim, num_embeddings)``, updated in training
  (``is_training=True``) from two :class:`~purify.nn.ExponentialMovingAverage`
  submodules, ``ema_cluster_size`` (how many inputs chose each entry) and ``ema_dw``
  (the sum of those inputs)::

      n_k = EMA(count_k);  N = sum(n);  n_k = (n_k + epsilon) / (N + K epsilon) * N
      embeddings[:, k] = EMA(sum of inputs coded k) / n_k

  The loss is ``commitment_cost * mean((sg(q) - x)^2)`` (no codebook term); the
  returned dict is described in the module docstring. With ``cross_replica_axis`` (a
  ``jax.vmap`` / pmap axis name) the counts, sums and perplexity are those of the
  whole batch, so the state update is one for the batch (also under ``jax.vmap``).
  Evaluation (``is_training=False``) leaves the state unchanged.

  The initial ``embeddings`` are Haiku's uniform variance scaling drawn with the init
  key (``purify.keyed_init``). Unlike Haiku, an evaluation call declares the
  moving averages' state too (zeros; Haiku's eval-only init has ``embeddings`` only),
  so that apply takes the state a training call produced.

  Example::

      def f(z, is_training):                      # z: (batch, 16)
        vq = purify.nn.VectorQuantizerEMA(16, 32, commitment_cost=0.25, decay=0.99)
        return vq(z, is_training)["quantize"]

      init, apply = purify.transform_with_state(f)
      params, state = init(jax.random.key(0), z, True)         # params == {}; state: the codebook, EMAs
      q, state = apply(params, state, None, z, True)   # moves the codebook
  """

  def __init__(self, embedding_dim: int, num_embeddings: int, commitment_cost: float,
               decay: float, epsilon: float = 1e-5, dtype: Any = jnp.float32,
               cross_replica_axis: str | None = None, name: str | None = None):
    super().__init__(name=name)
    if not 0 <= decay <= 1:
      raise ValueError(f"VectorQuantizerEMA: decay must be in range [0, 1], got {decay}.")
    self.embedding_dim = embedding_dim
    self.num_embeddings = num_embeddings
    self.decay = decay
    self.commitment_cost = commitment_cost
    self.epsilon = epsilon
    self.cross_replica_axis = cross_replica_axis
    self._embedding_shape = (embedding_dim, num_embeddings)
    self._dtype = dtype
    self._ema_cluster_size = ExponentialMovingAverage(decay=decay, name="ema_cluster_size")
    self._ema_dw = ExponentialMovingAverage(decay=decay, name="ema_dw")

  @property
  def embeddings(self):
    """The codebook ``(embedding_dim, num_embeddings)`` (state)."""
    return self._embeddings()

  def _embeddings(self):       # a method: the state belongs to this module
    return purify.get_state("embeddings", self._embedding_shape, self._dtype,
                            init=purify.keyed_init(variance_scaling(distribution="uniform")))

  @property
  def ema_cluster_size(self) -> ExponentialMovingAverage:
    """The moving average of the entries' counts (its state declared)."""
    self._ema_cluster_size.initialize((self.num_embeddings,), self._dtype)
    return self._ema_cluster_size

  @property
  def ema_dw(self) -> ExponentialMovingAverage:
    """The moving average of the sums of the inputs coded to each entry."""
    self._ema_dw.initialize(self._embedding_shape, self._dtype)
    return self._ema_dw

  def __call__(self, inputs, is_training: bool):
    """Quantize ``inputs``; in training, move the codebook. ``is_training`` must be a
    Python bool. Returns the dict of outputs."""
    inputs = _check_inputs(self, inputs)
    flat, distances, indices, encodings = _nearest(self, inputs, self.embeddings)
    quantized = self.quantize(indices)
    e_latent_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(quantized) - inputs))
    if is_training:
      cluster_size = jnp.sum(encodings, axis=0)
      dw = flat.T @ encodings
      if self.cross_replica_axis:
        cluster_size = jax.lax.psum(cluster_size, axis_name=self.cross_replica_axis)
        dw = jax.lax.psum(dw, axis_name=self.cross_replica_axis)
      cluster_size = self.ema_cluster_size(cluster_size)
      dw = self.ema_dw(dw)
      n = jnp.sum(cluster_size)
      cluster_size = (cluster_size + self.epsilon) / (n + self.num_embeddings * self.epsilon) * n
      purify.set_state("embeddings", dw / cluster_size.reshape(1, -1))
    else:
      # declared (zeros, unless they exist) so that apply takes a training call's state
      self._ema_cluster_size._declare((self.num_embeddings,), self._dtype)
      self._ema_dw._declare(self._embedding_shape, self._dtype)
    loss = self.commitment_cost * e_latent_loss
    return _outputs(self, inputs, quantized, loss, distances, indices, encodings)

  def quantize(self, encoding_indices):
    """The codebook entries of ``encoding_indices``: ``indices.shape + (embedding_dim,)``."""
    return jnp.swapaxes(self.embeddings, 1, 0)[(encoding_indices,)]
