"""ExponentialMovingAverage, with Haiku's arguments, state names and debiasing math.

State of one average (module ``exponential_moving_average`` by default)::

    counter: int32 ()         number of updates (starts at -warmup_length)
    hidden:  value's shape    the biased average  hidden = decay*hidden + (1-decay)*value
    average: value's shape    hidden / (1 - decay**counter)  (zero_debias=True), else hidden
"""
from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp

import purify


def _constant(value):
  """A state initializer ``init(shape, dtype)`` filling ``value``."""
  def init(shape, dtype):
    return jnp.full(shape, value, dtype)
  return init


class ExponentialMovingAverage(purify.Module):
  """Maintains an exponential moving average of the values it is called with.

  Zero-debiased as in Adam (https://arxiv.org/abs/1412.6980) when ``zero_debias``;
  with ``warmup_length > 0`` the average follows the value exactly (decay 0) for the
  first ``warmup_length`` calls, then decays (``zero_debias`` must then be False).
  ``update_stats=False`` computes the would-be average without writing the state.

  Example::

      def f(x):
        return purify.nn.ExponentialMovingAverage(0.9)(x)

      init, apply = purify.transform_with_state(f)
      params, state = init(None, jnp.ones(3))
      # state["exponential_moving_average"] == {"counter": 0, "hidden": zeros(3),
      #                                         "average": ones(3)}  (first value written)
      avg, state = apply(params, state, None, jnp.ones(3))    # avg == 1 (debiased)
  """

  def __init__(self, decay, zero_debias: bool = True, warmup_length: int = 0,
               name: str | None = None):
    super().__init__(name=name)
    if warmup_length < 0:
      raise ValueError(f"`warmup_length` is {warmup_length}, but should be non-negative.")
    if warmup_length and zero_debias:
      raise ValueError(
          "Zero debiasing does not make sense when warming up the value of the average to "
          "an initial value. Set zero_debias=False if setting warmup_length to a non-zero "
          "value.")
    self.decay = decay
    self.zero_debias = zero_debias
    self.warmup_length = warmup_length

  def initialize(self, shape, dtype=jnp.float32):
    """Declare ``hidden`` and ``average`` (zeros of ``shape``/``dtype``) if they do not
    exist yet, as Haiku's ``initialize`` does (``counter`` is created on first call)."""
    if hasattr(shape, "shape"):
      warnings.warn("Passing a value into initialize instead of a shape/dtype is "
                    "deprecated. Update your code to use: "
                    "`ema.initialize(v.shape, v.dtype)`.", category=DeprecationWarning)
      shape, dtype = shape.shape, shape.dtype
    purify.get_state("hidden", shape, dtype, init=jnp.zeros)
    purify.get_state("average", shape, dtype, init=jnp.zeros)

  def _declare(self, shape, dtype):
    """Declare the whole state (counter, hidden, average) without changing it."""
    purify.get_state("counter", (), jnp.int32, init=_constant(-self.warmup_length))
    self.initialize(tuple(shape), dtype)

  def __call__(self, value, update_stats: bool = True):
    """Update the average with ``value`` and return the new average."""
    value = jnp.asarray(value)
    counter = purify.get_state("counter", (), jnp.int32,
                               init=_constant(-self.warmup_length)) + 1
    decay = jax.lax.convert_element_type(self.decay, value.dtype)
    if self.warmup_length > 0:
      decay = jnp.where(counter <= 0, jnp.zeros((), value.dtype), decay)
    one = jnp.ones((), value.dtype)
    hidden = purify.get_state("hidden", value.shape, value.dtype, init=jnp.zeros)
    hidden = hidden * decay + value * (one - decay)
    average = hidden
    if self.zero_debias:
      average = average / (one - jnp.power(decay, counter))
    if update_stats:
      purify.set_state("counter", counter)
      purify.set_state("hidden", hidden)
      # created here unless initialize() ran: starts at the first value written (Haiku)
      purify.set_state("average", average)
    else:
      # declared (zeros, unless it exists) so that apply accepts the state a training
      # step produced although this call does not update it
      purify.get_state("average", value.shape, value.dtype, init=jnp.zeros)
    return average

  @property
  def average(self):
    """The current average (the state must have been declared earlier in this trace:
    by a call, or by :meth:`initialize`)."""
    return self._read_average()

  def _read_average(self):   # a method, so that the read runs in this module's scope
    return purify.get_state("average")


class EMAParamsTree(purify.Module):
  """An :class:`ExponentialMovingAverage` of every leaf of a ``{module: {name: array}}``
  tree (e.g. another model's params), returning the tree of averages. The average of
  ``"mlp/~/linear_0"/"w"`` is the submodule ``mlp__~__linear_0__w`` with ``~`` spelled
  ``_tilde_``, as in Haiku. Names matching ``ignore_regex`` pass through unchanged.

  Example::

      def f(params):
        return purify.nn.EMAParamsTree(0.99)(params)

      ema = purify.transform_with_state(f)
      _, ema_state = ema.init(None, params)
      ema_params, ema_state = ema.apply({}, ema_state, None, params)
  """

  def __init__(self, decay, zero_debias: bool = True, warmup_length: int = 0,
               ignore_regex: str = "", name: str | None = None):
    super().__init__(name=name)
    self.decay = decay
    self.zero_debias = zero_debias
    self.warmup_length = warmup_length
    self.ignore_regex = ignore_regex

  def __call__(self, tree, update_stats: bool = True):
    return map_params_tree(tree, self.ignore_regex, "_tilde_", lambda name, value: ExponentialMovingAverage(
        self.decay, self.zero_debias, self.warmup_length, name=name)(value, update_stats=update_stats))


def map_params_tree(tree, ignore_regex: str, tilde: str, fn):
  """``{module: {name: fn(submodule_name, value)}}`` for a params tree (Haiku's
  ``*ParamsTree`` modules): each leaf gets a submodule named after its path, ``/`` as
  ``__`` and ``~`` as ``tilde``; leaves whose path matches ``ignore_regex`` pass through."""
  out = {}
  for module_name, leaves in tree.items():
    out[module_name] = {}
    for name, value in leaves.items():
      path = f"{module_name}/{name}"
      if ignore_regex and re.match(ignore_regex, path):
        out[module_name][name] = value
      else:
        out[module_name][name] = fn(path.replace("/", "__").replace("~", tilde), value)
  return out
