"""Every private JAX import purify needs, and the 0.10.2 <-> 0.12.x differences.

purify rewrites jaxprs, so it touches JAX internals that change between releases:
the effect registries, partial-eval hooks, the jit/scan parameter layouts and the
printing machinery. All of that lives here, behind small functions, so the rest of
the package imports only public ``jax`` / ``jax.extend`` APIs and this module.

Differences handled here (see shared/notes/jax-internals.md):
  * 0.12 merged ClosedJaxpr into Jaxpr (``MERGED``).
  * scan counts: ``num_consts``/``num_carry`` (0.10) vs FlatTree ``ft_in``/``ft_out`` (0.12).
  * ``pe.dce_jaxpr`` grew a ``live_inputs`` argument in 0.12.
  * the O(1) "bind a closed jaxpr" primitive: ``eval_jaxpr_p`` (0.10, private) vs
    ``core.eval_jaxpr_p`` (0.12).
"""
from __future__ import annotations

import functools
import inspect
import threading

import jax
import numpy as np
from jax._src import config as _config
from jax._src import core as _core
from jax._src import effects as _effects
from jax._src import source_info_util as _source_info_util
from jax._src import sharding_impls as _sharding_impls
from jax._src.named_sharding import UnspecifiedValue as _UnspecifiedValue
from jax._src.interpreters import batching as _batching
from jax._src.interpreters import partial_eval as _pe
from jax.extend import core as jcore
from jax.extend import linear_util as lu

JAX_VERSION = tuple(int(p) for p in jax.__version__.split(".")[:3])
MERGED = jcore.ClosedJaxpr is jcore.Jaxpr

Jaxpr = jcore.Jaxpr
ClosedJaxpr = jcore.ClosedJaxpr
JaxprEqn = jcore.JaxprEqn
Var = jcore.Var
Literal = jcore.Literal
DropVar = _core.DropVar
Primitive = jcore.Primitive
ShapedArray = _core.ShapedArray
new_jaxpr_eqn = jcore.new_jaxpr_eqn
check_jaxpr_ = jcore.check_jaxpr
Effect = _effects.Effect
no_effects = _core.no_effects
Tracer = _core.Tracer
UNSPECIFIED = _sharding_impls.UNSPECIFIED
pp_eqn_rules = _core.pp_eqn_rules
pp_vars = _core.pp_vars
fancy_primitive_batchers = _batching.fancy_primitive_batchers
not_mapped = None  # batching rules return None for "not mapped"
custom_partial_eval_rules = _pe.custom_partial_eval_rules

from jax._src.lax.control_flow import loops as _loops  # noqa: E402
from jax._src.lax.control_flow import conditionals as _conds  # noqa: E402
from jax._src import ad_checkpoint as _ad_checkpoint  # noqa: E402
from jax._src import custom_derivatives as _custom_derivatives  # noqa: E402

jit_p = jcore.primitives.jit_p
scan_p = _loops.scan_p
while_p = _loops.while_p
cond_p = _conds.cond_p
remat_p = _ad_checkpoint.remat_p
custom_jvp_call_p = _custom_derivatives.custom_jvp_call_p
custom_vjp_call_p = _custom_derivatives.custom_vjp_call_p
closed_call_p = jcore.primitives.closed_call_p
call_p = jcore.primitives.call_p
try:  # shard_map moved between releases
  from jax._src.shard_map import shard_map_p
except ImportError:  # pragma: no cover - depends on JAX version
  from jax.experimental.shard_map import shard_map_p  # type: ignore

if MERGED:
  eval_jaxpr_p = _core.eval_jaxpr_p
else:
  from jax._src.lax.eval_jaxpr import eval_jaxpr_p  # type: ignore


# ----------------------------------------------------------------------------- effects
def register_effect_type(effect_type) -> None:
  """Allow an effect type in control flow, remat, custom derivatives; keep it in
  partial eval. Deliberately NOT lowerable: an effect that survives the passes
  must fail at lowering (purify wraps that failure in its own message)."""
  for s in (_effects.control_flow_allowed_effects, _effects.remat_allowed_effects,
            _effects.custom_derivatives_allowed_effects,
            _effects.partial_eval_kept_effects):
    s.add_type(effect_type)


class _Hoisting(threading.local):
  """How deep JAX's loop-invariance checks are nested in this thread right now (see
  stage_unknown_rule)."""
  depth = 0


_HOISTING = _Hoisting()


def _counts_as_hoisting(fn):
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    _HOISTING.depth += 1
    try:
      return fn(*args, **kwargs)
    finally:
      _HOISTING.depth -= 1
  wrapped.__purify_hoisting__ = True
  return wrapped


def _mark_hoisting() -> None:
  """Count JAX's loop-invariance checks of a scan in ``_HOISTING``: the partial
  evaluation with only the loop's constants known that moves what they alone
  compute out of the loop (``_scan_known_hoisting``, used by scan's linearize and
  partial-eval rules; and the same inside ``_scan_partial_eval_custom``, scan's rule
  for a checkpoint's policy-driven partial evaluation, whose other work is on
  jaxprs, not traces)."""
  if not getattr(_loops._scan_known_hoisting, "__purify_hoisting__", False):
    _loops._scan_known_hoisting = _counts_as_hoisting(_loops._scan_known_hoisting)
  rules = _pe.partial_eval_jaxpr_custom_rules
  if not getattr(rules[scan_p], "__purify_hoisting__", False):
    rules[scan_p] = _counts_as_hoisting(rules[scan_p])


def _stage_unknown(trace, prim, tracers, params, out_avals, effs):
  in_tracers = [trace.instantiate_const(t) for t in tracers]
  out_tracers = [_pe.JaxprTracer(trace, _pe.PartialVal.unknown(a), None) for a in out_avals]
  eqn = _pe.new_eqn_recipe(trace, in_tracers, out_tracers, prim, params, effs,
                           _source_info_util.current())
  # kept by its effect, as JAX's default rule keeps one, also when its result is
  # unused (purify.scan(split_rng=False)'s marker: dropped, the steps under grad got
  # keys of their own)
  if _effects.partial_eval_kept_effects.filter_in(effs):
    trace.effect_handles.append(_pe.EffectHandle(in_tracers, eqn))
  for t in out_tracers:
    t.recipe = eqn
  return out_tracers


def stage_unknown_rule(prim):
  """A partial-eval rule for a zero-operand effect primitive (a draw, a state read):
  UNKNOWN while JAX checks what in a scan body is loop-invariant, so that the check
  keeps it inside the loop (hoisted out, one draw would serve every iteration);
  JAX's default (known: its operands are) everywhere else, where unknown means
  "tangent" — JAX's linearization of a while loop needs its primal values known."""
  _mark_hoisting()

  def rule(trace, *tracers, **params):
    if not _HOISTING.depth:
      return trace.default_process_primitive(prim, tracers, params)
    out_avals, effs = prim.abstract_eval(*[t.aval for t in tracers], **params)
    outs = _stage_unknown(trace, prim, tracers, params,
                          out_avals if prim.multiple_results else [out_avals], effs)
    return outs if prim.multiple_results else outs[0]
  custom_partial_eval_rules[prim] = rule


def stage_remat_unknown_when(stage) -> None:
  """The same for a ``jax.checkpoint`` whose body has an effect ``stage(effects)``
  selects: staged whole as UNKNOWN while JAX checks loop invariance, JAX's rule
  otherwise.

  Why: JAX's rule for remat (``remat_partial_eval``) partially evaluates the body
  by the checkpoint's policy and evaluates the known part — an operand-less draw
  among it — on the PARENT trace, where it is a constant, bypassing the draw's own
  rule. Nested checkpoints leave a checkpoint around a draw in the primal loop body
  after linearization, so the loop hoisted the draw out (harness-7,
  tests/known_core_bugs.md)."""
  _mark_hoisting()
  remat_p = _ad_checkpoint.remat_p
  original = custom_partial_eval_rules[remat_p]

  def rule(trace, *tracers, jaxpr, **params):
    if not _HOISTING.depth or not stage(jaxpr.effects):
      return original(trace, *tracers, jaxpr=jaxpr, **params)
    return _stage_unknown(trace, remat_p, tracers, dict(params, jaxpr=jaxpr),
                          [v.aval for v in jaxpr.outvars], _core.positional_effects(jaxpr))
  custom_partial_eval_rules[remat_p] = rule


def recompute_in_policy_partial_eval(prim) -> None:
  """In JAX's policy-driven partial evaluation (``pe.partial_eval_jaxpr_custom``: a
  checkpoint's, and a while loop's inside one), an operand-less effect primitive
  is known AND recomputed where the staged part needs it, as a pure equation the
  policy does not save is, instead of JAX's rule for effects (known only, its
  result a residual; kept where the policy saves it). A while loop cannot have
  residuals: JAX asserted
  (``_while_partial_eval_custom``: ``assert not num_res``) on a parameter read in a
  while loop in a checkpoint under ``jax.linearize``. Recomputing is exact: a
  parameter read is the same value wherever it is; a draw's key is a function of
  its site and loop indices, the same in both copies (what remat's recomputation
  relies on anyway)."""
  def rule(saveable, unks_in, inst_in, eqn):
    n = len(eqn.outvars)
    if any(unks_in):                          # (operand-less: never)
      return None, eqn, [True] * n, [True] * n, []
    policy = _pe.ensure_enum(saveable(eqn.primitive, *[v.aval for v in eqn.invars],
                                      **eqn.params))
    if isinstance(policy, _pe.SaveableType):  # the policy saves it: JAX's rule
      return eqn, None, [False] * n, [False] * n, []
    return eqn, eqn, [False] * n, [True] * n, []
  _pe.partial_eval_jaxpr_custom_rules[prim] = rule


# ----------------------------------------------------------------------------- scope
def make_trace_context_state(name: str, help: str):
  """A config value that is part of JAX's trace context: jit and scan-body caches
  re-trace when it changes (used to key those caches by purify's scope)."""
  return _config.string_or_object_state(name, None, help, include_in_trace_context=True)


# ----------------------------------------------------------------------------- jaxprs
def open_of(j):
  """The open Jaxpr of a Jaxpr/ClosedJaxpr (0.12: the same object)."""
  if not MERGED and isinstance(j, jcore.ClosedJaxpr):
    return j.jaxpr
  return j


def consts_of(j):
  return list(j.consts) if hasattr(j, "consts") else []


JAXPR_TYPES = (jcore.Jaxpr, jcore.ClosedJaxpr)


def is_jaxpr(x) -> bool:
  return isinstance(x, JAXPR_TYPES)


def replace_jaxpr(j, **kw):
  """``.replace(invars=..., outvars=..., eqns=..., effects=...)`` on either kind."""
  if not MERGED and isinstance(j, jcore.ClosedJaxpr):
    return jcore.ClosedJaxpr(j.jaxpr.replace(**kw), j.consts)
  return j.replace(**kw)


from jax._src import mesh as _mesh  # noqa: E402


def shaped(shape, dtype):
  """``ShapedArray(shape, dtype)``, the same object for the same arguments (and the
  current abstract mesh, which its sharding comes from): ~6 us to make, and ResNet-50
  has 318 states of 18 shapes."""
  return _shaped(tuple(shape), dtype, _mesh.get_abstract_mesh())


@functools.lru_cache(maxsize=4096)
def _shaped(shape, dtype, mesh):
  return ShapedArray(shape, dtype)


def trace_flat(fn, avals, name: str):
  """``jax.make_jaxpr(fn)(*avals)`` for a function of flat arrays returning a list of
  arrays, without jit's front end: no signature inspection, no result paths, no
  trace cache lookup (a pass tracing a fresh closure always misses it). A program
  with 479 outputs (ResNet-50's init) spent ~1 ms naming them."""
  dbg = _core.DebugInfo(name, f"{name} (purify)", tuple(f"a{i}" for i in range(len(avals))), None)
  jaxpr, _, consts = _pe.trace_to_jaxpr_dynamic(lu.wrap_init(fn, debug_info=dbg), list(avals))
  return jaxpr.with_consts(consts) if MERGED else jcore.ClosedJaxpr(jaxpr, consts)


_VMAP_DEBUG = _core.DebugInfo("vmap", "purify initializer (vmap)", ("key",), None)


def vmap_leading(fn, x):
  """``jax.vmap(fn)(x)`` (``fn`` of one element along ``x``'s leading axis, any
  pytree result), without vmap's front end: no signature inspection, no argument
  trees or checks (a pass batching an initializer per group: ~0.15 ms of the ~0.5 ms
  that ``jax.vmap`` spent a group around the initializer's own trace). The same
  equations."""
  out_tree = []

  def flat(k):
    leaves, tree = jax.tree_util.tree_flatten(fn(k))
    out_tree.append(tree)
    return leaves
  f = lu.wrap_init(flat, debug_info=_VMAP_DEBUG)
  axis = _batching.AxisData(None, x.shape[0], None, None)
  out, _ = _batching.batch(f, axis, (0,),
                           lambda: (0,) * out_tree[0].num_leaves).call_wrapped(x)
  return jax.tree_util.tree_unflatten(out_tree[0], out)


def bind_closed(cj, *args):
  """Bind a closed jaxpr as ONE equation in the current trace (O(1) staging)."""
  if MERGED:
    return eval_jaxpr_p.bind(*args, call_jaxpr=cj)
  # 0.10.2: its private eval_jaxpr_p fails check_jaxpr (JAX passes it a `name`
  # param its typecheck rejects). A plain jit call of the jaxpr instead (what
  # ``jax.jit`` stages for a nested call; XLA inlines it): inlining the equations
  # re-bound each of them, ~90 ms of ResNet-50's time to first init.
  n, m = len(cj.jaxpr.invars), len(cj.jaxpr.outvars)
  p = _jit_call_params()
  return jit_p.bind(*args, **dict(
      p, jaxpr=cj, name="purify_program", in_shardings=(p["in_shardings"][0],) * n,
      out_shardings=(p["out_shardings"][0],) * m, in_layouts=(None,) * n,
      out_layouts=(None,) * m, donated_invars=(False,) * n))


@functools.lru_cache(maxsize=None)
def _jit_call_params():
  """The parameters of a plain one-argument ``jit`` call, as this JAX stages it."""
  return open_of(jax.make_jaxpr(jax.jit(lambda x: x))(np.float32(0))).eqns[0].params


def check_jaxpr(j) -> None:
  check_jaxpr_(open_of(j))


def dce_jaxpr(jaxpr, used_outputs, instantiate=False):
  """Dead-code elimination keeping every input (signature unchanged)."""
  new, used_inputs = _pe.dce_jaxpr(jaxpr, used_outputs, instantiate)
  return new, used_inputs


_DCE_LIVE_INS = "live_ins" in inspect.signature(_pe._default_dce_rule).parameters


def dce_rule(prim):
  """JAX's dead-code rule of ``prim`` as ``rule(used_outs, eqn) -> (used_ins, eqn or
  None)``, or None when the primitive has the default rule (0.12 also passes which
  inputs are live refs: purify's programs hold no refs, all are)."""
  rule = _pe.dce_rules.get(prim)
  if rule is None or not _DCE_LIVE_INS:
    return rule
  return lambda used_outs, eqn: rule(used_outs, [True] * len(eqn.invars), eqn)


def jaxpr_effects(constvars, invars, outvars, eqns):
  """The effects of a jaxpr made of these parts (JAX's own computation)."""
  return _pe.make_jaxpr_effects(constvars, invars, outvars, eqns)


def blocks_dce(eqn) -> bool:
  """Whether ``eqn``'s effects keep it alive with no output used (JAX's rule)."""
  return bool(eqn.effects) and _pe.has_effects(eqn)


# ----------------------------------------------------------------------------- scan
def scan_counts(params):
  """(num_consts, num_carry, num_xs, num_ys) of a scan equation."""
  j = params["jaxpr"]
  if "num_consts" in params:
    nc, nk = params["num_consts"], params["num_carry"]
    return nc, nk, len(j.in_avals) - nc - nk, len(j.out_avals) - nk
  c, k, x = params["ft_in"].unpack()
  _, y = params["ft_out"].unpack()
  return len(c), len(k), len(x), len(y)


def scan_params_with_counts(params, num_consts, num_carry, num_xs, num_ys):
  params = dict(params)
  if "num_consts" in params:
    params.update(num_consts=num_consts, num_carry=num_carry)
    return params
  from jax._src import flattree as ft
  _, old_ys = params["ft_out"].unpack()
  ys = old_ys if len(old_ys) == num_ys else ft.nones(num_ys)
  params["ft_in"] = ft.pack((ft.nones(num_consts), ft.nones(num_carry), ft.nones(num_xs)))
  params["ft_out"] = ft.pack((ft.nones(num_carry), ys))
  return params


# ----------------------------------------------------------------------------- wrapped funs
def wrap_raising(fun_params, exc_factory):
  """A lu.WrappedFun that raises ``exc_factory()`` when JAX calls it (used to replace
  custom_jvp/vjp rule thunks that would re-run user Python outside purify)."""
  def f(*args, **kwargs):
    raise exc_factory()
  dbg = getattr(fun_params, "debug_info", None)
  return lu.wrap_init(f, debug_info=dbg)


# ----------------------------------------------------------------------------- printing
from jax._src import pretty_printer as pp  # noqa: E402


def register_pp_rule(prim, render):
  """``render(eqn) -> str`` prints the right-hand side; binders print as JAX does."""
  def rule(eqn, context, settings):
    rhs = pp.text(render(eqn))
    if eqn.outvars:
      lhs = pp_vars(eqn.outvars, context, print_shapes=settings.print_shapes)
      return pp.concat([lhs, pp.text(" <- "), rhs])
    return pp.concat([rhs, pp.text(" "), pp_vars(eqn.invars, context)])
  pp_eqn_rules[prim] = rule


def register_raising_lowering(prim, exc_factory):
  from jax.interpreters import mlir
  def rule(ctx, *args, **params):
    raise exc_factory(prim, params)
  mlir.register_lowering(prim, rule)


def swap_scope(state, value):
  return state.swap_local(value)


def vma_of(x) -> frozenset:
  """The mesh axes a value varies over inside shard_map (``aval.mat.varying``)."""
  aval = getattr(x, "aval", None)
  mat = getattr(aval, "mat", None)
  if mat is not None:
    return frozenset(getattr(mat, "varying", ()) or ())
  return frozenset(getattr(aval, "vma", ()) or ())


def while_predicate_batched(axis_data, dims, params) -> bool:
  """Whether vmap makes a while_loop's predicate per-example: the carry fixpoint of
  JAX's while batching rule (loops.py, ``_while_loop_batching_rule``), redone."""
  cn, bn = params["cond_nconsts"], params["body_nconsts"]
  bat = [d is not None for d in dims]
  cconst, bconst, carry = bat[:cn], bat[cn:cn + bn], bat[cn + bn:]
  for _ in range(1 + len(carry)):
    _, out = _batching.batch_jaxpr(params["body_jaxpr"], axis_data, bconst + carry,
                                   instantiate=carry)
    if list(out) == list(carry):
      break
    carry = [a or b for a, b in zip(carry, out)]
  _, (pred,) = _batching.batch_jaxpr(params["cond_jaxpr"], axis_data, cconst + carry,
                                     instantiate=False)
  return bool(pred)


# ----------------------------------------------------------------------------- arguments
def resolve_kwargs(fun, args, kwargs):
  """The positional arguments JAX binds for ``fun(*args, **kwargs)`` (keywords and
  defaults resolved as jax.custom_jvp/custom_vjp resolve them)."""
  from jax._src import api_util
  return api_util.resolve_kwargs(fun, args, kwargs)


# ----------------------------------------------------------------------------- autodiff traces
from jax._src.interpreters import ad as _ad  # noqa: E402

set_current_trace = _core.set_current_trace
typeof = _core.typeof
eval_jaxpr = _core.eval_jaxpr


def hook_ad_traces(hook) -> None:
  """Route ``process_primitive`` of JAX's JVP and linearize traces through
  ``hook(trace, primitive, tracers, params, original)``. Installed once, at import;
  ``hook`` must fall back to ``original(trace, primitive, tracers, params)`` fast
  for everything it does not handle (it sees every primitive under autodiff)."""
  for cls in (_ad.JVPTrace, _ad.LinearizeTrace):
    original = cls.process_primitive
    if getattr(original, "__purify_hook__", False):
      continue

    def process_primitive(self, primitive, tracers, params, /, _original=original):
      return hook(self, primitive, tracers, params, _original)

    process_primitive.__purify_hook__ = True
    process_primitive.__wrapped__ = original
    cls.process_primitive = process_primitive


def ad_split(trace, value):
  """``(primal, tangent)`` of ``value`` on JVP/linearize ``trace`` (tangent ``None``
  when it is a symbolic zero). Neither part references ``trace`` itself."""
  primal, tangent = trace.to_primal_tangent_pair(value)
  return primal, (None if type(tangent) is _ad.Zero else tangent)


def ad_join(trace, primal, tangent):
  """The value of ``trace`` with this primal and tangent (inverse of ``ad_split``)."""
  if tangent is None:
    return primal
  if isinstance(trace, _ad.LinearizeTrace):
    return _ad.LinearizeTracer(trace, primal, tangent)
  return _ad.JVPTracer(trace, primal, tangent)


def current_trace():
  return _core.trace_ctx.trace


def staging_trace():
  """The innermost trace that stages a jaxpr (make_jaxpr, jit, a scan body...) under
  the current one — following ``parent_trace`` through vmap/JVP/linearize/partial-eval
  traces; None when the chain ends elsewhere."""
  t = _core.trace_ctx.trace
  while t is not None and not isinstance(t, _pe.DynamicJaxprTrace):
    t = getattr(t, "parent_trace", None)
  return t


def trace_scratch(trace) -> dict:
  """A dict that lives exactly as long as ``trace`` (stored on the trace object, so
  tracers kept in it die with their trace and are never reported as leaked)."""
  d = trace.__dict__.get("_purify_scratch")
  if d is None:
    d = trace.__dict__["_purify_scratch"] = {}
  return d


# ============================================================================= fuse_random_bits
# (issue 5) What the fuse-random-bits pass needs from JAX's PRNG internals: the
# random_bits / threefry2x32 primitives, the counters ``iota_2x32_shape`` (both
# jax/_src/random/prng.py and threefry2x32.py on 0.10.2 and 0.12), whether a key
# type is threefry, and whether an equation's context lowers random_bits in the
# partitionable form (the form the pass reproduces) and a jit is a plain call.
from jax._src.random import prng as _prng  # noqa: E402
from jax._src.random import threefry2x32 as _threefry  # noqa: E402

random_bits_p = _prng.random_bits_p
random_fold_in_p = _prng.random_fold_in_p
threefry2x32_p = _threefry.threefry2x32_p


def random_fold_in(keys, msgs):
  """``fold_in`` of a typed key (array) with a uint32 array, broadcast together
  (the public ``jax.random.fold_in`` takes one message; key derivation
  folds a whole batch without a vmap around it)."""
  return _prng.random_fold_in(keys, msgs)


def iota_2x32_shape(shape):
  """The counters of ``random_bits(key, _, shape)``: (hi, lo) uint32 halves of the
  row-major uint64 iota of ``shape`` (zeros for ``shape == ()``)."""
  return _prng.iota_2x32_shape(tuple(shape))


def is_threefry_key_aval(aval) -> bool:
  """A typed key array (any shape) of the default threefry2x32 implementation."""
  dt = getattr(aval, "dtype", None)
  if dt is None or not jax.dtypes.issubdtype(dt, jax.dtypes.prng_key):
    return False
  return getattr(dt, "_impl", None) is _threefry.threefry_prng_impl


def eqn_lowers_partitionable_bits(eqn) -> bool:
  """``eqn`` lowers under threefry_partitionable, no compute_type/xla_metadata, no
  mesh (lowering re-enters ``eqn.ctx``: that, not the global flag, decides)."""
  ctx = getattr(eqn, "ctx", None)
  if ctx is None or not getattr(ctx, "threefry_partitionable", False):
    return False
  if getattr(ctx, "compute_type", None) is not None or getattr(ctx, "xla_metadata", None):
    return False
  mesh = getattr(ctx, "cur_abstract_mesh", None)
  return mesh is None or bool(getattr(mesh, "empty", False))


def with_eqn_ctx(eqn, like, **fields):
  """``eqn`` with the context (and source info) of ``like`` (and ``fields``
  replaced: one new equation)."""
  return eqn.replace(ctx=like.ctx, source_info=like.source_info, **fields)


def jit_is_plain_call(params) -> bool:
  """A jit equation that is only a call: no shardings, layouts, compiler options,
  mesh or consts — inlining it does not change what is computed."""
  if any(not isinstance(s, _UnspecifiedValue) for s in params.get("in_shardings", ())):
    return False
  if any(not isinstance(s, _UnspecifiedValue) for s in params.get("out_shardings", ())):
    return False
  if any(x is not None for x in tuple(params.get("in_layouts", ())) + tuple(params.get("out_layouts", ()))):
    return False
  if params.get("compiler_options_kvs"):
    return False
  mesh = params.get("ctx_mesh")
  if mesh is not None and not getattr(mesh, "empty", True):
    return False
  j = params.get("jaxpr")
  return j is not None and not consts_of(j) and not open_of(j).constvars
