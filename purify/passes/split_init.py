"""Pass: split init from apply.

Both come from the one effectful program. ``init(root_key, *args)`` returns every
parameter (its initializer called with ``keys.param_key(root, "module/name")``; a
parameter stacked by ``param_axes=0`` gets one initializer call per member, with
member keys folded in) and every state's initial value (its ``init(shape, dtype)``).
``apply`` is the program without its ``state_first`` outputs.

State created by ``set_state`` starts at the first value written, which needs the
forward computation: the *forward* of init, which the pass records instead of
tracing it into init (``Program.init_forward``): it is the program itself — apply's
inputs, fed with the parameters and initial states init computes, init's key as the
rng and init's arguments. When each such state's first value is the value apply
returns for it (a straight-line model writes it once: the same variable), the
forward IS apply (``forward_jaxpr`` None: an eager init compiles apply's program,
and the first apply with the same shapes finds it compiled); otherwise the forward
is the program with only the first values as outputs (``forward_jaxpr``). The
lowering composes init and its forward (``lowering.Executable``).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np

from purify import _compat
from purify import _context
from purify import errors
from purify import keys
from purify.passes import _thread, group_init
from purify.passes.base import Pass, user_code


def init_group(sites, group_keys, members=None):
  """The initial values of parameters that share shape, dtype, stack and
  initializer (group-init pass): ONE initializer call, vmapped over their keys
  (``param_key(root, path)`` each, so the same values as one call per parameter).
  Of more than one site: the stacked values, one row a parameter (see ``_rows``).
  ``members``: the stacked sites' member keys, already derived (one a group key)."""
  one = lambda x: None if x is None else jax.lax.squeeze(x, (0,))  # noqa: E731
  if len(sites) == 1:
    return init_param(sites[0], None, key=one(group_keys), members=one(members))
  return init_param(sites[0], None, key=group_keys, batch=len(sites), members=members)


def _index_row(x):
  return jax.lax.index_in_dim(x, 0, keepdims=False)


@jax.jit
def _two(x):
  return x + 0, x * 1


_ROW_AVAL = _compat.ShapedArray((2, 1), np.dtype(np.float32))

#: The name of the call that takes a group's stacked values apart into its rows
#: (``lowering`` reads it: an eager init returns the stacked value and splits it).
ROWS_CALL = "purify_rows"


def _rows(stacked, n):
  """``(equation, values)``: ONE call (``jit``, named ``ROWS_CALL``) whose result
  ``i`` is row ``i`` of ``stacked`` (``squeeze(slice(stacked, [i, i+1)))``, what
  ``lax.index_in_dim`` stages) for each of its ``n`` rows. Its body is written from
  the equations of one traced row and one traced call, with each row's bounds
  (tracing ``index_in_dim`` per row was ~90% of this pass: 2000 parameters, 0.8 s),
  once a shape and row count (:func:`_rows_call`: groups of one shape share it); one
  call a group instead of two equations a row keeps init's top level small for the
  passes after this one."""
  call = _rows_call(stacked.aval, n)
  rows = [_compat.Var(v.aval) for v in _compat.open_of(call.params["jaxpr"]).outvars]
  return call.replace(invars=[stacked], outvars=rows), rows


@functools.lru_cache(maxsize=256)
def _rows_call(aval, n):
  """The rows call's equation for a stacked value of ``aval`` (its variables
  replaced by each use)."""
  sl, sq = _compat.open_of(_thread.helper_jaxpr(_index_row, _ROW_AVAL)).eqns
  call = _compat.open_of(_thread.helper_jaxpr(_two, _ROW_AVAL)).eqns[0]
  rest = tuple(aval.shape[1:])
  piece_aval, row_aval = aval.update(shape=(1,) + rest), aval.update(shape=rest)
  zeros = (0,) * len(rest)
  strides = None if sl.params.get("strides") is None else (1,) * len(aval.shape)
  x = _compat.Var(aval)
  eqns, inner = [], []
  for i in range(n):
    piece, row = _compat.Var(piece_aval), _compat.Var(row_aval)
    eqns.append(sl.replace(invars=[x], outvars=[piece],
                           params=dict(sl.params, start_indices=(i,) + zeros,
                                       limit_indices=(i + 1,) + rest, strides=strides)))
    eqns.append(sq.replace(invars=[piece], outvars=[row]))
    inner.append(row)
  body = _compat.replace_jaxpr(call.params["jaxpr"], invars=[x], outvars=inner, eqns=eqns)
  p = call.params
  params = dict(p, jaxpr=body, name=ROWS_CALL,
                out_shardings=(p["out_shardings"][0],) * n, out_layouts=(None,) * n)
  return call.replace(invars=[x], outvars=list(inner), params=params)


def _split(x, sizes):
  """``x`` cut along its first axis into consecutive pieces of ``sizes``."""
  return [x] if len(sizes) == 1 else list(jax.lax.split(x, sizes))


def param_keys_fn(root, sites):
  """Every parameter's init key, ``param_key(root, key_name or path)``, in one
  vectorized derivation."""
  return keys.derive_many(root, ["param:" + (s.key_name or s.path) for s in sites])


#: Initializers known never to read their key (by identity; ``constant(v)``'s by its
#: code): a group of them is ONE call broadcast to the group's rows, not a ``vmap``
#: (a vmap's setup and batching, ~0.45 ms a group, bought nothing: its output is the
#: call's, broadcast). Bitwise the same values.
_KEY_FREE = (jax.nn.initializers.zeros, jax.nn.initializers.ones)
_KEY_FREE_CODE = (jax.nn.initializers.constant(0.0).__code__,)


def key_free(fn) -> bool:
  """Whether ``fn`` is an initializer known never to read its key."""
  return fn in _KEY_FREE or getattr(fn, "__code__", None) in _KEY_FREE_CODE


def init_param(site, root, key=None, batch=None, members=None):
  """The initial value of one parameter, checked against its declaration (with
  ``key``/``batch``: of ``batch`` parameters like it, one key each; ``members``: a
  stacked parameter's member keys, already derived from ``key``)."""
  if key is None and members is None:
    key = keys.param_key(root, site.key_name or site.path)
  base_shape = tuple(site.shape[len(site.stack):])
  def one(k):
    with user_code():
      return site.init(k, base_shape, site.dtype)
  # the group's parameters and their stacks' members: ONE vmap over all their keys
  # (flattened; a vmap a stacked axis traced the same values with more overhead)
  lead = ((batch,) if batch is not None else ()) + tuple(site.stack)
  free = bool(lead) and key_free(site.init)

  def fn(ks):
    if not lead:
      return one(ks)
    if free:
      v = jnp.asarray(one(None))
      return jax.lax.broadcast_in_dim(v, lead + tuple(v.shape),
                                      tuple(range(len(lead), len(lead) + v.ndim)))
    flat = _reshaped(ks, (math.prod(lead),) + tuple(ks.shape[len(lead):]))
    out = jnp.asarray(_compat.vmap_leading(one, flat))
    return _reshaped(out, lead + tuple(out.shape[1:]))
  member_keys = lambda k: keys.fold_batch(k, tuple(site.stack))  # noqa: E731
  try:
    value = _call_init("parameter", site, f"init(key, {base_shape}, {site.dtype})",
                       lambda: fn(members if members is not None else
                                  None if free else member_keys(key)))
  except jax.errors.UnexpectedTracerError as e:
    raise errors.InitializerError(errors.INITIALIZER_TRACER.format(
        path=site.path, tracer=str(e).splitlines()[0][:200])) from None
  return _checked(value, site, (batch,) if batch is not None else ())


_SIGNATURES = {"parameter": "init(key, shape, dtype) -> Array, as in jax.nn.initializers",
               "state": "init(shape, dtype) -> Array, as in Haiku (jnp.zeros works)"}


def _call_init(what, site, call, thunk):
  """Run an initializer; anything it raises becomes an error naming the site."""
  try:
    return jnp.asarray(thunk())
  except (errors.PurifyError, jax.errors.UnexpectedTracerError):
    raise
  except Exception as e:
    raise errors.InitializerError(errors.INITIALIZER_FAILED.format(
        what=what, path=site.path, site=site.site, call=call, sig=_SIGNATURES[what],
        err=f"{type(e).__name__}: {e}") + _signature_hint(what, site, e)) from e


def _takes(fn, n: int) -> bool:
  """Whether ``fn`` accepts ``n`` positional arguments (False when unknown)."""
  try:
    inspect.signature(fn).bind(*range(n))
  except (TypeError, ValueError):
    return False
  return True


def _first_parameter(fn):
  try:
    return next(iter(inspect.signature(fn).parameters), None)
  except (TypeError, ValueError):
    return None


def _signature_hint(what, site, exc) -> str:
  """When an initializer failed because it has the other kind's signature (a
  Haiku-style ``init(shape, dtype)`` for a parameter, such as ``jnp.zeros`` or
  ``hk.initializers.*``; a parameter's ``init(key, shape, dtype)`` for a state):
  what to write instead."""
  fn = site.init
  if not isinstance(exc, TypeError) or fn is None or site.key_name is not None:
    return ""                        # (a lifted state's init is called with a key)
  if what == "parameter" and _takes(fn, 2) and not _takes(fn, 3):
    if type(fn).__module__.split(".")[0] == "haiku":
      return ("\nThis is a Haiku initializer: it takes (shape, dtype) and draws from "
              "hk.next_rng_key(). Use its jax.nn.initializers counterpart, e.g. "
              "hk.initializers.TruncatedNormal(s) -> jax.nn.initializers.truncated_normal(s), "
              "VarianceScaling(...) -> variance_scaling(...), Constant(c) -> constant(c).")
    return ("\nIt takes (shape, dtype), as Haiku's initializers do; wrap it: "
            "init=lambda key, shape, dtype: f(shape, dtype) (for zeros and ones: "
            "jax.nn.initializers.zeros / ones).")
  if what == "state" and _takes(fn, 3) and _first_parameter(fn) in ("key", "rng", "prng_key"):
    return ("\nIt takes (key, shape, dtype), as a parameter's initializer does; a state's "
            "takes (shape, dtype) and no key (such as jnp.zeros).")
  return ""


def _checked(value, site, lead=()):
  """``value`` (with ``lead`` extra leading dims) must have the site's shape."""
  if tuple(value.shape) != tuple(lead) + tuple(site.shape):
    msg = errors.INITIALIZER_SHAPE.format(
        path=site.path, got_shape=tuple(value.shape)[len(lead):], got_dtype=value.dtype,
        shape=site.shape, dtype=site.dtype, site=site.site)
    if isinstance(site, _context.StateSite):
      msg = msg.replace("parameter", "state").replace("init(key, shape, dtype)", "init(shape, dtype)")
    raise errors.InitializerError(msg)
  if value.dtype == site.dtype and not jax.typeof(value).weak_type:
    return value                       # (astype: ~30 us of jnp to stage nothing)
  return value.astype(site.dtype)


def _reshaped(x, shape):
  return x if tuple(x.shape) == shape else x.reshape(shape)


def _with_rows(init_cj, groups, param_keys, n_states):
  """Init's outputs one a parameter (``param_keys`` order) then one a state: each
  group's stacked output taken apart into its rows."""
  j = _compat.open_of(init_cj)
  value, eqns = {}, []
  for g, v in zip(groups, j.outvars):
    if len(g) == 1:
      value[g[0]] = v
    else:
      e, rows = _rows(v, len(g))
      eqns.append(e)
      value.update(zip(g, rows))
  outvars = [value[k] for k in param_keys] + list(j.outvars[len(groups):])
  assert len(outvars) == len(param_keys) + n_states
  return _compat.replace_jaxpr(init_cj, eqns=list(j.eqns) + eqns, outvars=outvars)


def _forward_of(program, j, keep, param_keys, state_keys):
  """``(init_forward, forward outvars)``: which init outputs (set_state-created
  states) take which output of the forward, and the forward's outputs when it is not
  apply (None when it is: every first value is apply's value for that state)."""
  first = [(i, r[1]) for i, r in enumerate(program.out_roles) if r[0] == "state_first"]
  if not first:
    return (), None
  init_index = {k: len(param_keys) + n for n, k in enumerate(state_keys)}
  apply_index = {program.out_roles[i][1]: n for n, i in enumerate(keep)
                 if program.out_roles[i][0] == "state"}
  apply_out = [j.outvars[i] for i in keep]
  if all(k in apply_index and j.outvars[i] is apply_out[apply_index[k]] for i, k in first):
    return tuple((init_index[k], apply_index[k]) for _, k in first), None
  return (tuple((init_index[k], n) for n, (_, k) in enumerate(first)),
          [j.outvars[i] for i, _ in first])


def _blame_leaking_initializer(program, key):
  """An initializer closed over a value of the model's trace: find which one."""
  for site in program.params.values():
    cj = jax.make_jaxpr(lambda r: init_param(site, r))(key)
    bad = [c for c in _compat.consts_of(cj) if isinstance(c, _compat.Tracer)]
    if bad:
      raise errors.InitializerError(errors.INITIALIZER_TRACER.format(
          path=site.path, tracer=f"{type(bad[0]).__name__} {bad[0].aval.str_short()}"))
  raise errors.InitializerError(errors.INITIALIZER_TRACER.format(
      path="(a state initializer)", tracer="a tracer"))


def _initial_state(st, root, memo):
  """A state's initial value, ``init(shape, dtype)``. States whose initializers
  compute the same thing (group_init's ``initializer_key``: the same code and
  captured values) at the same shape and dtype share one value (``memo``): it takes
  no key, so it is the same array (ResNet-50: 318 moving averages, 18 values)."""
  init = st.init if st.init is not None else jnp.zeros

  def call(*a):
    with user_code():
      return init(*a)
  if st.key_name is not None:       # lifted or keyed_init state: computed with its key
    thunk = lambda: call(keys.param_key(root, st.key_name), st.shape, st.dtype)  # noqa: E731
    return _checked(_call_init("state", st, f"init({st.shape}, {st.dtype})", thunk), st)
  hit = memo.get(("fn", id(init)))     # (many states share an initializer object)
  if hit is None or hit[0] is not init:
    try:
      hit = (init, group_init.initializer_key(init))
    except group_init.Unique:
      hit = (init, None)
    memo[("fn", id(init))] = hit
  memo_key = None if hit[1] is None else (hit[1], tuple(st.shape), st.dtype)
  if memo_key is not None and memo_key in memo:
    return memo[memo_key]
  value = _checked(_call_init("state", st, f"init({st.shape}, {st.dtype})",
                              lambda: call(st.shape, st.dtype)), st)
  if memo_key is not None:
    memo[memo_key] = value
  return value


@dataclasses.dataclass(frozen=True)
class SplitInit(Pass):
  name = "split_init"
  requires = frozenset({"no_param_effects", "no_rng_effects", "no_state_effects", "init_groups"})
  provides = frozenset({"split"})

  def run(self, program):
    cj = program.jaxpr
    j = _compat.open_of(cj)
    consts = _compat.consts_of(cj)
    first = [i for i, r in enumerate(program.out_roles) if r[0] == "state_first"]
    arg_avals = [v.aval for v, r in zip(j.invars, program.in_roles) if r[0] == "arg"]
    param_keys = list(program.params)
    param_keys_of = param_keys_fn
    state_keys = list(program.states)

    groups = program.init_groups or tuple((k,) for k in param_keys)

    # the keys in one derivation, each group a contiguous slice; the stacked groups
    # last, those of one stack together: their member keys are then derived at once
    # (a vectorized fold a stack, not one a group). A key is its name's: the order
    # changes no value.
    stack_of = [tuple(program.params[g[0]].stack) for g in groups]
    key_order = sorted(range(len(groups)), key=lambda gi: (len(stack_of[gi]) > 0, stack_of[gi]))
    ordered = [k for gi in key_order for k in groups[gi]]
    by_stack: dict = {}                            # stack -> how many keys its groups hold
    for gi in key_order:
      if stack_of[gi]:
        by_stack[stack_of[gi]] = by_stack.get(stack_of[gi], 0) + len(groups[gi])

    def init_fn(root, *args):
      # one output a group (its stacked values when it has several parameters),
      # then one a state; the rows are taken apart below
      outs = []
      all_keys = param_keys_of(root, [program.params[k] for k in ordered]) if ordered else None
      # each group's keys: ONE split of all keys (a slice a group is a traced
      # operation each, ~0.1 ms), then of each stack's member keys
      plain = [gi for gi in key_order if not stack_of[gi]]
      stacked = list(by_stack)
      pieces = [len(groups[gi]) for gi in plain] + list(by_stack.values())
      parts = _split(all_keys, pieces) if ordered else []
      group_keys = dict(zip(plain, parts))
      for s, part in zip(stacked, parts[len(plain):]):
        members = keys.fold_batch(part, s)
        in_stack = [gi for gi in key_order if stack_of[gi] == s]
        group_keys.update(zip(in_stack, _split(members, [len(groups[gi]) for gi in in_stack])))
      for gi, g in enumerate(groups):
        gk = mk = None
        if stack_of[gi]:
          mk = group_keys[gi]
        else:
          gk = group_keys[gi]
        outs.append(init_group([program.params[k] for k in g], gk, mk))
      memo = {}
      for k in state_keys:
        outs.append(_initial_state(program.states[k], root, memo))
      return outs

    key = program.key_aval
    init_cj = _compat.trace_flat(init_fn, [key, *arg_avals], "purify_init")
    if any(isinstance(c, _compat.Tracer) for c in _compat.consts_of(init_cj)):
      _blame_leaking_initializer(program, jax.ShapeDtypeStruct(key.shape, key.dtype))
    init_cj = _with_rows(init_cj, groups, param_keys, len(state_keys))
    keep = [i for i, r in enumerate(program.out_roles) if r[0] != "state_first"]
    apply_cj = _compat.replace_jaxpr(cj, outvars=[j.outvars[i] for i in keep])
    init_forward, forward_cj = _forward_of(program, j, keep, param_keys, state_keys)
    if init_forward and forward_cj is not None:
      forward_cj = _compat.replace_jaxpr(cj, outvars=forward_cj)
    return program.replace(
        jaxpr=apply_cj, out_roles=tuple(program.out_roles[i] for i in keep),
        init_jaxpr=init_cj,
        init_in_roles=(("rng",),) + tuple(("arg", i) for i in range(len(arg_avals))),
        init_out_roles=tuple(("param", k) for k in param_keys) + tuple(("state", k) for k in state_keys),
        init_forward=init_forward, forward_jaxpr=forward_cj)

  def postcondition(self, program):
    if program.init_jaxpr is None:
      raise errors.PipelineError("split_init produced no init program")
    if any(r[0] == "state_first" for r in program.out_roles):
      raise errors.PipelineError("split_init left state_first outputs in apply")
    fwd = program.forward_jaxpr if program.forward_jaxpr is not None else program.jaxpr
    n_init, n_fwd = len(program.init_out_roles), len(_compat.open_of(fwd).outvars)
    if any(not (0 <= a < n_init and 0 <= b < n_fwd) for a, b in program.init_forward):
      raise errors.PipelineError("split_init: init_forward indexes outside init or its forward")
