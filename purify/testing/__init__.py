"""purify.testing: property-based checks of purify — and of your own models.

* :func:`check_model` — point it at a transformed model and example inputs; it
  verifies jit-invariance, determinism, batch consistency (vmap of apply == a loop
  over examples), init/eval_shape agreement and (optionally) scan vs an unrolled
  loop, with hypothesis generating the inputs.
* :mod:`purify.testing.grammar` — hypothesis strategies for random effectful
  programs (parameters, RNG draws, state, nested transforms), printable as Python.
* :mod:`purify.testing.reference` — the loop-semantics interpreter those programs
  are checked against.
* :mod:`purify.testing.profiles` — hypothesis profiles "ci" and "hunt".

Example::

    import jax, jax.numpy as jnp, purify, purify.testing

    model = purify.transform(lambda x: purify.nn.Linear(2)(x))
    purify.testing.check_model(model, jnp.ones((3, 4)))
"""
from purify.testing import grammar, reference, build, profiles
from purify.testing.checks import (check_model, check_program, fast_compiles, ModelCheckError,
                                   assert_trees_close, program_checks)
from purify.testing.grammar import programs, invalid_programs, to_source

__all__ = ["check_model", "check_program", "fast_compiles", "ModelCheckError", "assert_trees_close",
           "program_checks", "grammar", "reference", "build", "profiles", "programs",
           "invalid_programs", "to_source"]
