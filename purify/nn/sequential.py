"""Sequential: call layers one after another (Haiku's ``hk.Sequential``)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import purify


class Sequential(purify.Module):
  """Calls ``layers`` in order: the first gets all the arguments, each later one the
  previous layer's output only.

  Layers may be modules or plain functions (``jax.nn.relu``); modules built inside
  ``Sequential`` keep their own names (``mlp/~/linear_0`` style paths come from
  where they are constructed, as in Haiku). Layers that need extra arguments past
  the first (BatchNorm's ``is_training``) belong in a :class:`purify.Module` subclass.

  Example::

      def f(x):                                    # x: (batch, 3)
        seq = purify.nn.Sequential([purify.nn.Linear(8), jax.nn.relu,
                                    purify.nn.Linear(2)])
        return seq(x)               # params "linear", "linear_1" (built outside seq)

      params = purify.transform(f).init(jax.random.key(0), jnp.ones((4, 3)))
  """

  def __init__(self, layers: Iterable[Callable[..., Any]], name: str | None = None):
    super().__init__(name=name)
    self.layers = tuple(layers)

  def __call__(self, inputs, *args, **kwargs):
    out = inputs
    for i, layer in enumerate(self.layers):
      out = layer(out, *args, **kwargs) if i == 0 else layer(out)
    return out
