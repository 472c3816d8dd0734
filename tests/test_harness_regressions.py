"""Fixed programs for the harness: shrunk failures the harness found, and hand-picked
programs for the corners of loop semantics that random generation reaches rarely.

Each runs the program checks of ``purify.testing`` that the property tests run least
often per program (reference interpreter, vmap of apply, pipeline, idempotence, eval_shape).
Bugs the harness found in purify's core are in ``KNOWN_CORE_BUGS`` below (not run:
the construct is excluded from generation, with a comment in
``purify.testing.grammar``); once the core is fixed, move the program into
``PROGRAMS`` and drop the exclusion.
"""
from __future__ import annotations

import pytest

from purify.testing import checks
from purify.testing.grammar import (Accum, Block, Cond, Counter, Draw, Fori, Op, Param, Program,
                                    Scan, Vmap, While, Wrap, finalize)


def B(*stmts):
  return Block(tuple(stmts))


PROGRAMS = {
    # fori_loop(1, 3): a draw's loop index is the iteration number (0, 1), not i
    "fori_from_one": Program(2, B(Fori(1, 2, B(Draw("bits"), Op("lcg"), Draw("normal"))))),
    # purify.scan(split_rng=False) around a jax.lax.scan: the inner loop still splits
    "shared_scan_around_scan": Program(2, B(
        Scan(2, False, 1, "shared", B(Draw("bits"), Op("lcg"),
                                      Scan(2, True, 2, "jax", B(Draw("bits"), Op("lcg"))))))),
    # reverse purify.scan(param_axes=0): step i uses slice i of the stack, key of position i
    "reverse_stacked_scan": Program(3, B(
        Scan(3, True, 1, "stack", B(Param("matmul"), Draw("bernoulli"), Counter())))),
    # pmean-reduced accumulator under two named vmaps, with a shared-key vmap inside
    "pmean_two_named_vmaps": Program(2, B(
        Vmap(2, True, "jax", B(Vmap(3, True, "shared", B(Draw("bits"), Accum(axes=("*",)),
                                                         Op("mix"))))))),
    # grad inside a scan with draws and a counter; a while loop around a cond
    "grad_in_scan_and_while_cond": Program(2, B(
        Scan(2, False, 1, "jax", B(Wrap("grad", B(Param("mul"), Draw("normal"), Counter())))),
        While(2, B(Cond((B(Draw("bits")), B(Counter(), Op("lcg")))))))),
    # an ensemble (param_axes=0) inside a jit inside a checkpoint, with eval_shape probes
    "ensemble_in_jit_in_checkpoint": Program(2, B(
        Wrap("checkpoint", B(Wrap("jit", B(
            Vmap(2, False, "stack", B(Param("linear"), Wrap("eval_shape", B(Param("mul"))),
                                      Draw("uniform"))))))))),
}


KNOWN_CORE_BUGS = {
    # harness-1: a state accumulator in a scan inside jax.grad; purify drops the
    # gradient through the state (get_state has a zero tangent under grad)
    "harness-1_grad_through_state_in_scan": Program(2, B(
        Wrap("grad", B(Scan(2, False, 1, "jax", B(Accum()))))))
}


@pytest.fixture(scope="module", autouse=True)
def fast_xla():
  with checks.fast_compiles():
    yield


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_fixed_program_passes_every_check(name):
  checks.check_program(finalize(PROGRAMS[name]), seed=3,
                       checks=("reference", "vmap", "pipeline", "idempotent", "eval_shape"))
