"""From a program to a purify model: execute its printed source.

The source printed by :func:`purify.testing.grammar.to_source` is exactly what runs,
so a failure's printout is a complete reproduction. Example::

    from purify.testing import build, grammar
    prog = grammar.finalize(grammar.Program(2, grammar.Block((grammar.Param("mul"),))))
    model = purify.transform_with_state(build.model_fn(prog))
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

import purify


def namespace() -> dict:
  """The globals a printed program runs with."""
  return {"jax": jax, "jnp": jnp, "purify": purify}


def from_source(src: str, name: str = "model"):
  """The function ``name`` defined by ``src``."""
  ns = namespace()
  exec(compile(src, f"<purify.testing program {name}>", "exec"), ns)
  return ns[name]


def model_fn(program, name: str = "model"):
  """The model function of a :class:`~purify.testing.grammar.Program`."""
  from purify.testing import grammar
  return from_source(grammar.to_source(program, name), name)
