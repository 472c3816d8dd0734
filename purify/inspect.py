"""Seeing the IR: the effectful jaxpr as traced, and the program after every pass."""
from __future__ import annotations

import jax

from purify import keys
from purify import passes as passes_lib
from purify import trace as trace_lib


def make_jaxpr(f, *, key=None):
  """``purify.make_jaxpr(f)(*args)``: the effectful jaxpr of ``f`` as traced, with
  effects printed as intent (``a:f32[3,4] <- param "linear/w"``).

  Example::

      print(purify.make_jaxpr(lambda x: purify.nn.Linear(2)(x))(jnp.ones((1, 3))))
  """
  def run(*args, **kwargs):
    sig, _ = trace_lib.signature_of(args, kwargs)
    ka = jax.typeof(key) if key is not None else keys.default_key_aval()
    program, _ = trace_lib.trace(f, sig, ka)
    return program.jaxpr
  return run


def explain(f, *args, key=None, pipeline=None, **kwargs):
  """The program after each pass, as ``[(pass_name, Program)]`` (first: the trace).

  Example::

      for name, prog in purify.explain(model_fn, x):
        print("==", name); print(prog)
  """
  sig, _ = trace_lib.signature_of(args, kwargs)
  ka = jax.typeof(key) if key is not None else keys.default_key_aval()
  program, _ = trace_lib.trace(f, sig, ka)
  pipeline = pipeline or passes_lib.default_pipeline()
  _, records = pipeline.run(program, verify=True, keep=True)
  return [(r.name, r.program) for r in records]
