"""Stage 3 — passes: Program -> Program functions and the pipeline that orders them."""
from purify.passes.base import Pass, Pipeline, PassRecord
from purify.passes.hoist_params import HoistParams
from purify.passes.thread_rng import ThreadRng
from purify.passes.thread_state import ThreadState
from purify.passes.group_init import GroupInit
from purify.passes.split_init import SplitInit
from purify.passes.fuse_random_bits import FuseRandomBits
from purify.passes.fuse_init_tails import FuseInitTails
from purify.passes.stacks_as_xs import StacksAsXs
from purify.passes.dce import DeadCodeElimination
from purify.passes.verify_pure import VerifyPure
from purify.passes._thread import HOP_RULES, register_hop_rule

DEFAULT_PASSES = (HoistParams(), ThreadRng(), ThreadState(), GroupInit(), SplitInit(),
                  FuseRandomBits(), FuseInitTails(), StacksAsXs(), DeadCodeElimination(), VerifyPure())


def default_pipeline() -> Pipeline:
  return Pipeline(DEFAULT_PASSES)
