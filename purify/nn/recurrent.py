"""Recurrent cores (VanillaRNN, LSTM, GRU) and unrolls, with Haiku's names and shapes.

A core is a module called as ``output, next_state = core(inputs, prev_state)`` with
``core.initial_state(batch_size)``. :func:`dynamic_unroll` runs it with a plain
``jax.lax.scan`` (purify makes effects inside the scan body mean the loop: the
core's parameters are shared by every step, each step draws its own keys);
:func:`static_unroll` with a Python loop.
"""
from __future__ import annotations

import abc
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import purify
from purify.nn.conv import variance_scaling
from purify.nn.linear import Linear


def add_batch(nest, batch_size: int | None):
  """Add a leading ``batch_size`` axis to every leaf of ``nest`` (by broadcasting)."""
  return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (batch_size,) + x.shape), nest)


def _zeros(hidden_size, batch_size):
  state = jnp.zeros((hidden_size,))
  return state if batch_size is None else add_batch(state, batch_size)


class RNNCore(purify.Module, abc.ABC):
  """Base class of recurrent cores: ``__call__(inputs, prev_state) -> (output,
  next_state)`` and ``initial_state(batch_size)``."""

  @abc.abstractmethod
  def __call__(self, inputs, prev_state) -> tuple[Any, Any]:
    """One step: ``(output, next_state)``; ``next_state`` has ``prev_state``'s structure."""

  @abc.abstractmethod
  def initial_state(self, batch_size: int | None):
    """The initial state, with a leading ``batch_size`` axis unless it is None."""


class VanillaRNN(RNNCore):
  """``h_t = relu(W_i x_t + b_i + W_h h_{t-1} + b_h)``; the output is ``h_t``.

  Parameters (as ``hk.VanillaRNN``): ``vanilla_rnn/linear`` (input to hidden) and
  ``vanilla_rnn/linear_1`` (hidden to hidden, with a bias iff ``double_bias``).

  Example::

      def f(x):                                     # x: (batch, 3)
        core = purify.nn.VanillaRNN(8)
        return core(x, core.initial_state(x.shape[0]))   # (out, state), both (batch, 8)
  """

  def __init__(self, hidden_size: int, double_bias: bool = True, name: str | None = None):
    super().__init__(name=name)
    self.hidden_size = hidden_size
    self.double_bias = double_bias

  def __call__(self, inputs, prev_state):
    inputs, prev_state = jnp.asarray(inputs), jnp.asarray(prev_state)
    input_to_hidden = Linear(self.hidden_size)
    hidden_to_hidden = Linear(self.hidden_size, with_bias=self.double_bias)
    out = jax.nn.relu(input_to_hidden(inputs) + hidden_to_hidden(prev_state))
    return out, out

  def initial_state(self, batch_size: int | None):
    return _zeros(self.hidden_size, batch_size)


class LSTMState(NamedTuple):
  """An LSTM's state: ``hidden`` and ``cell``, each ``[..., hidden_size]``."""
  hidden: jax.Array
  cell: jax.Array


class LSTM(RNNCore):
  """Long short-term memory, as ``hk.LSTM``.

  One Linear ``lstm/linear`` maps ``concat([x_t, h_{t-1}])`` to the four gates
  ``i, g, f, o`` (in that order, ``4*hidden_size``); the forget gate gets +1 before
  its sigmoid. ``c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)``,
  ``h_t = sigmoid(o) tanh(c_t)``; the output is ``h_t``, the state ``LSTMState(h_t, c_t)``.
  Inputs are rank 1 or 2.

  Example::

      def f(xs):                                    # xs: (T, batch, 3)
        core = purify.nn.LSTM(8)
        return purify.nn.dynamic_unroll(core, xs, core.initial_state(xs.shape[1]))
  """

  def __init__(self, hidden_size: int, name: str | None = None):
    super().__init__(name=name)
    self.hidden_size = hidden_size

  def __call__(self, inputs, prev_state: LSTMState):
    inputs = jnp.asarray(inputs)
    prev_state = jax.tree_util.tree_map(jnp.asarray, prev_state)
    if inputs.ndim not in (1, 2):
      raise ValueError(f"LSTM: input must be rank 1 or 2, got shape {inputs.shape}.")
    gates = Linear(4 * self.hidden_size)(jnp.concatenate([inputs, prev_state.hidden], -1))
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1) * prev_state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, LSTMState(h, c)

  def initial_state(self, batch_size: int | None) -> LSTMState:
    return LSTMState(_zeros(self.hidden_size, batch_size), _zeros(self.hidden_size, batch_size))


class GRU(RNNCore):
  """Gated recurrent unit, as ``hk.GRU``.

  Parameters ``gru/w_i: (input, 3*hidden)``, ``gru/w_h: (hidden, 3*hidden)``,
  ``gru/b: (3*hidden,)``, columns ordered ``z, r, a``::

      z, r = sigmoid(x W_iz + h W_hz + b_z), sigmoid(x W_ir + h W_hr + b_r)
      a = tanh(x W_ia + (r * h) W_ha + b_a);   h' = (1 - z) h + z a

  Initializers are ``(key, shape, dtype)`` functions; the weights default to a
  fan-in truncated normal (Haiku's ``VarianceScaling()``), the bias to zeros.

  Example::

      def f(x):                                     # x: (batch, 3)
        core = purify.nn.GRU(8)
        return core(x, core.initial_state(x.shape[0]))[0]   # (batch, 8)
  """

  def __init__(self, hidden_size: int, w_i_init=None, w_h_init=None, b_init=None,
               name: str | None = None):
    super().__init__(name=name)
    self.hidden_size = hidden_size
    self.w_i_init = w_i_init or variance_scaling()
    self.w_h_init = w_h_init or variance_scaling()
    self.b_init = b_init or jax.nn.initializers.zeros

  def __call__(self, inputs, state):
    inputs, state = jnp.asarray(inputs), jnp.asarray(state)
    if inputs.ndim not in (1, 2):
      raise ValueError(f"GRU: input must be rank 1 or 2, got shape {inputs.shape}.")
    hidden = self.hidden_size
    dtype = inputs.dtype
    w_i = purify.param("w_i", (inputs.shape[-1], 3 * hidden), dtype, init=self.w_i_init)
    w_h = purify.param("w_h", (hidden, 3 * hidden), dtype, init=self.w_h_init)
    b = purify.param("b", (3 * hidden,), dtype, init=self.b_init)
    w_h_zr, w_h_a = w_h[:, :2 * hidden], w_h[:, 2 * hidden:]
    b_zr, b_a = b[:2 * hidden], b[2 * hidden:]
    x_proj = jnp.matmul(inputs, w_i)
    zr_h = jnp.matmul(state, w_h_zr)
    zr = jax.nn.sigmoid(x_proj[..., :2 * hidden] + zr_h + jnp.broadcast_to(b_zr, zr_h.shape))
    z, r = zr[..., :hidden], zr[..., hidden:]
    a_h = jnp.matmul(r * state, w_h_a)
    a = jnp.tanh(x_proj[..., 2 * hidden:] + a_h + jnp.broadcast_to(b_a, a_h.shape))
    new = (1 - z) * state + z * a
    return new, new

  def initial_state(self, batch_size: int | None):
    return _zeros(self.hidden_size, batch_size)


def _swap_batch_time(tree):
  return jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), tree)


def static_unroll(core, input_sequence, initial_state, time_major=True):
  """Run ``core`` over the time axis with a Python loop (the body is repeated).

  ``input_sequence``: a tree of ``[T, ...]`` arrays (``[B, T, ...]`` if not
  ``time_major``). Returns ``(outputs, final_state)`` with outputs stacked on the
  same time axis.

  Example::

      def f(xs):                                    # xs: (T, batch, 3)
        core = purify.nn.VanillaRNN(4)
        return purify.nn.static_unroll(core, xs, core.initial_state(xs.shape[1]))
  """
  axis = 0 if time_major else 1
  leaves, treedef = jax.tree_util.tree_flatten(input_sequence)
  steps = leaves[0].shape[axis]
  per_step = [jnp.unstack(x, axis=axis) for x in leaves]
  state, outputs = initial_state, []
  for t in range(steps):
    out, state = core(jax.tree_util.tree_unflatten(treedef, [x[t] for x in per_step]), state)
    outputs.append(out)
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs, axis=axis), *outputs)
  return stacked, state


def dynamic_unroll(core, input_sequence, initial_state, time_major=True, reverse=False,
                   return_all_states=False, unroll=1):
  """Run ``core`` over the time axis with a plain ``jax.lax.scan`` (``hk.dynamic_unroll``).

  ``input_sequence``: a tree of ``[T, ...]`` arrays (``[B, T, ...]`` if not
  ``time_major``). ``reverse`` scans from the last step (outputs stay in input
  order). Returns ``(outputs, final_state)``, or ``(outputs, states)`` with every
  step's state when ``return_all_states``. Loop semantics: the core's parameters
  are shared by all steps; ``next_rng_key()`` inside the core gives each step its
  own key.

  Example::

      def f(xs):                                    # xs: (T, batch, 3)
        core = purify.nn.GRU(4)
        outs, last = purify.nn.dynamic_unroll(core, xs, core.initial_state(xs.shape[1]))
        return outs                                 # (T, batch, 4)
  """
  def step(prev_state, inputs):
    out, state = core(inputs, prev_state)
    return state, ((out, state) if return_all_states else out)

  if not time_major:
    input_sequence = _swap_batch_time(input_sequence)
  last, ys = jax.lax.scan(step, initial_state, input_sequence, reverse=reverse, unroll=unroll)
  outputs, states = ys if return_all_states else (ys, last)
  if not time_major:
    outputs = _swap_batch_time(outputs)
    if return_all_states:
      states = _swap_batch_time(states)
  return outputs, states
