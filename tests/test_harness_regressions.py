"""Fixed programs for the harness: shrunk failures the harness found, and hand-picked
programs for the corners of loop semantics that random generation reaches rarely.

Each runs the program checks of ``purify.testing`` that the property tests run least
often per program (reference interpreter, vmap of apply, pipeline, idempotence, eval_shape).
A core bug the harness finds is written up in tests/known_core_bugs.md, its construct
excluded from generation until fixed, and its shrunk program kept here once it is.
"""
from __future__ import annotations

import pytest

from purify.testing import checks
from purify.testing.grammar import (Accum, Block, Cond, Counter, Draw, Fori, Op, Param, Program,
                                    Scan, Vmap, While, Wrap, effects_in_control_flow_under_grad,
                                    finalize)


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
    # harness-1: a state accumulator in a scan inside jax.grad (the gradient flows
    # through the state: purify/ad_state.py)
    "harness-1_grad_through_state_in_scan": Program(2, B(
        Wrap("grad", B(Scan(2, False, 1, "jax", B(Accum())))))),
    # harness-2: a counter in a purify.scan(param_axes=0) in a cond in grad
    "harness-2_counter_in_stacked_scan_in_cond_in_grad": Program(3, B(
        Counter(), Wrap("grad", B(Param("linear"), Param("matmul"), Cond((
            B(Scan(2, True, 1, "stack", B(Draw("bernoulli"), Op("sin"), Param("mul"))),
              Op("tanh"), Scan(3, False, 1, "stack", B(Op("lcg"), Counter()))),
            B(Accum(),), B(Accum(),))))))),
    # harness-3: a counter in a fori_loop in grad
    "harness-3_counter_in_fori_in_grad": Program(3, B(
        Counter(), Wrap("grad", B(Param("linear"), Op("mix"), Fori(0, 1, B(Counter(), Op("mix"))))),
        Scan(1, True, 1, "jax", B(Param("matmul"))))),
    # harness-5 (hunt, session 11): a stacked scan whose body multiplies a constant
    # of the scan's length by a literal crashed stacks_as_xs (a Literal looked up in
    # a set: unhashable on 0.12, on 0.10 too through the pass's index test)
    "harness-5_literal_operand_in_stacked_scan_in_vmap": Program(2, B(
        Vmap(1, False, "jax", B(Scan(1, False, 1, "stack", B(Op("mix"), Op("tanh"))))))),
    # harness-6 (hunt, session 11): purify.scan(split_rng=False) inside jax.grad: its
    # marker (a draw whose key is unused) was dropped by JAX's partial evaluation,
    # and the steps drew keys of their own
    "harness-6_shared_key_scan_in_grad": Program(2, B(
        Wrap("grad", B(Scan(2, False, 2, "shared", B(Draw("bits"), Op("mix"))))))),
    # harness-7 (hunt, session 11; fixed in session 12): a draw inside two nested
    # checkpoints inside a loop under jax.grad was hoisted out of the loop by JAX's
    # remat partial evaluation: every iteration got one key
    "harness-7_draw_in_two_checkpoints_in_loop_in_grad": Program(2, B(Wrap("grad", B(Fori(
        0, 1, B(Wrap("checkpoint", B(Wrap("checkpoint", B(Draw("bits"))), Op("mix"),
                                     Param("mul"))))))))),
    "harness-7_three_checkpoints_in_scan_in_grad": Program(2, B(Wrap("grad", B(Scan(
        2, False, 1, "jax", B(Wrap("checkpoint", B(Wrap("checkpoint", B(Wrap(
            "checkpoint", B(Draw("normal"), Counter()))), Op("mix")))), Op("tanh"))))))),
    # (session 12, the linearize node's first run) a parameter read or a draw in a
    # while loop in a checkpoint under jax.linearize: JAX asserted (a while loop in a
    # checkpoint's partial evaluation cannot have residuals; effects were residuals)
    "linearize_checkpoint_while_param": Program(2, B(Wrap("linearize", B(Wrap(
        "checkpoint", B(While(1, B(Param("mul"))))))))),
    "linearize_checkpoint_while_draw": Program(2, B(Wrap("linearize", B(Wrap(
        "checkpoint", B(While(2, B(Draw("normal"), Op("tanh"))), Op("sin"))))))),
    # a draw in a while loop under jax.linearize (no checkpoint): JAX's fallback
    # linearization of the loop needs the draw known (the old rule staged it unknown)
    "linearize_while_draw": Program(2, B(Wrap("linearize", B(While(2, B(
        Draw("uniform"), Param("mul"), Counter())))))),
}


@pytest.fixture(scope="module", autouse=True)
def fast_xla():
  with checks.fast_compiles():
    yield


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_fixed_program_passes_every_check(name):
  program = finalize(PROGRAMS[name])
  extra = () if effects_in_control_flow_under_grad(program) else ("leaks",)
  checks.check_program(program, seed=3,
                       checks=("reference", "vmap", "pipeline", "idempotent", "eval_shape") + extra)
