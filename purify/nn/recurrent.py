"""Recurrent cores (VanillaRNN, LSTM, GRU, Conv1D/2D/3DLSTM), core combinators (DeepRNN,
deep_rnn_with_skip_connections, ResetCore, IdentityCore) and unrolls, with Haiku's
names and shapes.

A core is a module called as ``output, next_state = core(inputs, prev_state)`` with
``core.initial_state(batch_size)``. :func:`dynamic_unroll` runs it with a plain
``jax.lax.scan`` (purify makes effects inside the scan body mean the loop: the
core's parameters are shared by every step, each step draws its own keys);
:func:`static_unroll` with a Python loop.
"""
from __future__ import annotations

import abc
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

import purify
from purify.nn.conv import ConvND, variance_scaling
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


class ConvNDLSTM(RNNCore):
  """Convolutional LSTM over ``num_spatial_dims`` spatial axes (Haiku's ``ConvNDLSTM``,
  https://arxiv.org/abs/1506.04214): :class:`LSTM` with its two matmuls replaced by
  ``"SAME"`` convolutions, ``input_to_hidden`` (of ``x_t``) and ``hidden_to_hidden``
  (of ``h_{t-1}``), each a :class:`~purify.nn.ConvND` with ``4 * output_channels``
  outputs (gates ``i, g, f, o`` along the channel axis; the forget gate gets +1
  before its sigmoid)::

      c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(c_t)

  Inputs are channels-last, ``[N, *input_shape, C]`` or unbatched
  ``[*input_shape, C]``; the output is ``h_t`` and the state ``LSTMState(h_t, c_t)``,
  each ``[N, *input_shape, output_channels]``. ``input_shape`` is the inputs' spatial
  shape (without the batch and channel axes); it sets ``initial_state``'s shape.
  Parameters: ``conv2_dlstm/input_to_hidden`` ``w: kernel_shape + (C, 4 *
  output_channels)``, ``.../hidden_to_hidden`` ``w: kernel_shape + (output_channels,
  4 * output_channels)``, each with ``b: (4 * output_channels,)``.

  Example::

      def f(xs):                                  # xs: (T, batch, 8, 8, 3)
        core = purify.nn.Conv2DLSTM(input_shape=(8, 8), output_channels=4,
                                    kernel_shape=3)
        return purify.nn.dynamic_unroll(core, xs, core.initial_state(xs.shape[1]))
  """

  def __init__(self, num_spatial_dims: int, input_shape: Sequence[int], output_channels: int,
               kernel_shape: int | Sequence[int], name: str | None = None):
    super().__init__(name=name)
    self.num_spatial_dims = num_spatial_dims
    self.input_shape = tuple(input_shape)
    self.output_channels = output_channels
    self.kernel_shape = kernel_shape

  def __call__(self, inputs, state: LSTMState):
    inputs = jnp.asarray(inputs)
    state = jax.tree_util.tree_map(jnp.asarray, state)
    conv = lambda name: ConvND(self.num_spatial_dims, 4 * self.output_channels,  # noqa: E731
                               self.kernel_shape, name=name)
    x_gates = conv("input_to_hidden")(inputs)
    h_gates = conv("hidden_to_hidden")(state.hidden)
    try:
      jnp.broadcast_shapes(x_gates.shape, h_gates.shape, state.cell.shape[:-1] + (1,))
    except ValueError:
      raise TypeError(
          f"{type(self).__name__} {self.module_name!r}: the input {inputs.shape} and the "
          f"state (hidden {state.hidden.shape}, cell {state.cell.shape}) do not match; the "
          f"state must be [batch, *input_shape, output_channels] for an input [batch, "
          f"*input_shape, channels] (input_shape={self.input_shape}). Start from "
          "initial_state(batch_size).") from None
    i, g, f, o = jnp.split(x_gates + h_gates, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1) * state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, LSTMState(h, c)

  def initial_state(self, batch_size: int | None) -> LSTMState:
    shape = self.input_shape + (self.output_channels,)
    state = LSTMState(jnp.zeros(shape), jnp.zeros(shape))
    return state if batch_size is None else add_batch(state, batch_size)


class Conv1DLSTM(ConvNDLSTM):
  """1D convolutional LSTM (Haiku's ``hk.Conv1DLSTM``): :class:`ConvNDLSTM` over
  ``[N, W, C]`` inputs, ``input_shape=(W,)``.

  Example::

      def f(x):                                   # x: (batch, 10, 3)
        core = purify.nn.Conv1DLSTM(input_shape=(10,), output_channels=4, kernel_shape=3)
        return core(x, core.initial_state(x.shape[0]))   # out: (batch, 10, 4)
  """

  def __init__(self, input_shape: Sequence[int], output_channels: int,
               kernel_shape: int | Sequence[int], name: str | None = None):
    super().__init__(1, input_shape, output_channels, kernel_shape, name=name)


class Conv2DLSTM(ConvNDLSTM):
  """2D convolutional LSTM (Haiku's ``hk.Conv2DLSTM``): :class:`ConvNDLSTM` over
  ``[N, H, W, C]`` inputs, ``input_shape=(H, W)``.

  Example::

      def f(x):                                   # x: (batch, 8, 8, 3)
        core = purify.nn.Conv2DLSTM(input_shape=(8, 8), output_channels=4, kernel_shape=3)
        return core(x, core.initial_state(x.shape[0]))   # out: (batch, 8, 8, 4)
  """

  def __init__(self, input_shape: Sequence[int], output_channels: int,
               kernel_shape: int | Sequence[int], name: str | None = None):
    super().__init__(2, input_shape, output_channels, kernel_shape, name=name)


class Conv3DLSTM(ConvNDLSTM):
  """3D convolutional LSTM (Haiku's ``hk.Conv3DLSTM``): :class:`ConvNDLSTM` over
  ``[N, D, H, W, C]`` inputs, ``input_shape=(D, H, W)``.

  Example::

      def f(x):                                   # x: (batch, 4, 4, 4, 2)
        core = purify.nn.Conv3DLSTM(input_shape=(4, 4, 4), output_channels=3,
                                    kernel_shape=2)
        return core(x, core.initial_state(x.shape[0]))   # out: (batch, 4, 4, 4, 3)
  """

  def __init__(self, input_shape: Sequence[int], output_channels: int,
               kernel_shape: int | Sequence[int], name: str | None = None):
    super().__init__(3, input_shape, output_channels, kernel_shape, name=name)


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


class IdentityCore(RNNCore):
  """A core that returns its inputs and keeps an empty state ``()`` (Haiku's
  ``hk.IdentityCore``): a feed-forward stand-in with a core's interface.

  Example::

      def f(xs):                                    # xs: (T, batch, 3)
        core = purify.nn.IdentityCore()
        return purify.nn.dynamic_unroll(core, xs, core.initial_state(xs.shape[1]))  # (xs, ())
  """

  def __init__(self, name: str | None = None):
    super().__init__(name=name)

  def __call__(self, inputs, state):
    return inputs, state

  def initial_state(self, batch_size: int | None):
    return ()


def _conform_reset(should_reset, state):
  """``should_reset`` with size-1 axes appended so that it broadcasts against ``state``
  along ``state``'s LEADING axes (``jnp.where`` alone would align the trailing ones and
  reset entries across examples)."""
  if should_reset.shape == state.shape[:should_reset.ndim]:
    return jnp.reshape(should_reset, should_reset.shape + (1,) * (state.ndim - should_reset.ndim))
  raise ValueError(
      f"should_reset signal shape {should_reset.shape} is not compatible with state shape "
      f"{state.shape}: it must be a prefix of every state entry's shape, e.g. [batch_size] "
      "(or give a tree of signals with the state's structure).")


class ResetCore(RNNCore):
  """Wraps ``core`` to reset its state where a signal says so (Haiku's ``hk.ResetCore``).

  Called as ``core((inputs, should_reset), state)``: where ``should_reset`` is true
  the state is replaced by ``core.initial_state`` before the step. ``should_reset``
  is one array whose shape is a prefix of every state entry's shape (e.g.
  ``[batch_size]``: reset whole examples), or a tree with the state's structure. The
  state counts as batched when its entries match ``initial_state(1)`` past the first
  axis; the batch size is then the first input's leading dimension. The state and
  ``initial_state`` are the wrapped core's.

  Example::

      def f(xs, resets):                            # xs: (T, batch, 3); resets: (T, batch)
        core = purify.nn.ResetCore(purify.nn.LSTM(4))
        return purify.nn.dynamic_unroll(core, (xs, resets), core.initial_state(xs.shape[1]))
  """

  def __init__(self, core: RNNCore, name: str | None = None):
    super().__init__(name=name)
    self.core = core

  def __call__(self, inputs, state):
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
      raise TypeError("ResetCore: inputs must be the pair (inputs, should_reset), got "
                      f"{type(inputs).__name__}; call core((x, should_reset), state).")
    inputs, should_reset = inputs
    inputs = jax.tree_util.tree_map(jnp.asarray, inputs)
    should_reset = jax.tree_util.tree_map(jnp.asarray, should_reset)
    state = jax.tree_util.tree_map(jnp.asarray, state)
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(should_reset)):
      should_reset = jax.tree_util.tree_map(lambda _: should_reset, state)
    should_reset = jax.tree_util.tree_map(_conform_reset, should_reset, state)
    batch_size = jax.tree_util.tree_leaves(inputs)[0].shape[0] if self._is_batched(state) else None
    initial = jax.tree_util.tree_map(lambda s, i: i.astype(s.dtype), state,
                                     self.initial_state(batch_size))
    state = jax.tree_util.tree_map(jnp.where, should_reset, initial, state)
    return self.core(inputs, state)

  def initial_state(self, batch_size: int | None):
    return self.core.initial_state(batch_size)

  def _is_batched(self, state) -> bool:
    """Haiku's rule: batched iff every entry matches ``initial_state(1)`` past axis 0
    (an empty state is unbatched)."""
    state = jax.tree_util.tree_leaves(state)
    if not state:
      return False
    batched = jax.tree_util.tree_leaves(self.initial_state(1))
    return all(b.shape[1:] == s.shape[1:] for b, s in zip(batched, state))


class _DeepRNN(RNNCore):
  """DeepRNN, with or without skip connections (Haiku's ``_DeepRNN``)."""

  def __init__(self, layers: Sequence[Any], skip_connections: bool, name: str | None = None,
               concat_final_output: bool = True):
    super().__init__(name=name)
    self.layers = layers
    self.skip_connections = skip_connections
    self.concat_final_output = concat_final_output
    if skip_connections:
      for layer in layers:
        if not isinstance(layer, RNNCore):
          raise ValueError("skip_connections requires for all layers to be "
                           f"`purify.nn.RNNCore`s, but {layer!r} is not one. Layers is: "
                           f"{layers}. Use DeepRNN for cores mixed with plain functions.")

  def __call__(self, inputs, state):
    cores = sum(isinstance(layer, RNNCore) for layer in self.layers)
    if not isinstance(state, (tuple, list)) or len(state) != cores:
      got = (f"{len(state)} entries" if isinstance(state, (tuple, list)) else
             f"an array of shape {state.shape}" if hasattr(state, "shape") else
             type(state).__name__)
      raise ValueError(f"{type(self).__name__}: the state must be a tuple with one entry per "
                       f"core ({cores}), got {got}; start from initial_state(batch_size).")
    current, outputs, next_states = inputs, [], []
    for i, layer in enumerate(self.layers):
      if self.skip_connections and i > 0:
        current = jax.tree_util.tree_map(
            lambda x, *rest: None if x is None else jnp.concatenate((x,) + rest, axis=-1),
            inputs, current, is_leaf=lambda x: x is None)
      if isinstance(layer, RNNCore):
        current, next_state = layer(current, state[len(next_states)])
        outputs.append(current)
        next_states.append(next_state)
      else:
        current = layer(current)
    if self.skip_connections and self.concat_final_output:
      out = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=-1), *outputs)
    else:
      out = current
    return out, tuple(next_states)

  def initial_state(self, batch_size: int | None):
    return tuple(layer.initial_state(batch_size) for layer in self.layers
                 if isinstance(layer, RNNCore))


class DeepRNN(_DeepRNN):
  """Cores and plain callables in sequence, as one core (Haiku's ``hk.DeepRNN``).

  Each layer gets the previous one's output; a core also gets its own entry of the
  state, which is a tuple with one entry per :class:`RNNCore` in ``layers`` (``()``
  if there is none). The output is the last layer's. Modules created by a plain
  callable while it runs are named under the DeepRNN (``deep_rnn/linear``).

  Example::

      def f(x):                                     # x: (batch, 3)
        core = purify.nn.DeepRNN([purify.nn.LSTM(4), jax.nn.relu, purify.nn.GRU(2)])
        out, state = core(x, core.initial_state(x.shape[0]))   # out: (batch, 2)
        return out                                  # state: (LSTMState, GRU state)
  """

  def __init__(self, layers: Sequence[Any], name: str | None = None):
    super().__init__(layers, skip_connections=False, name=name)


def deep_rnn_with_skip_connections(layers: Sequence[RNNCore], name: str | None = None,
                                   concat_final_output: bool = True) -> RNNCore:
  """A DeepRNN of cores with skip connections (Haiku's
  ``hk.deep_rnn_with_skip_connections``): core ``i > 0`` gets
  ``concatenate([inputs, output_{i-1}], -1)``, and the output is the concatenation
  of every core's output (only the last core's with ``concat_final_output=False``,
  Sonnet's option; Haiku always concatenates). Every layer must be an
  :class:`RNNCore`. Unnamed, the module is ``__deep_rnn`` (Haiku's name for its
  ``_DeepRNN`` class).

  Example::

      def f(x):                                     # x: (batch, 3)
        core = purify.nn.deep_rnn_with_skip_connections(
            [purify.nn.LSTM(4), purify.nn.LSTM(2)])     # the second LSTM sees 3 + 4 inputs
        out, state = core(x, core.initial_state(x.shape[0]))
        return out                                  # (batch, 4 + 2)
  """
  return _DeepRNN(layers, skip_connections=True, name=name,
                  concat_final_output=concat_final_output)


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
