"""Stage 5 — the public transforms: ``purify.transform`` and ``transform_with_state``.

``transform(f)`` returns a ``Transformed(init, apply)`` pair (it unpacks like
Haiku's). Both come from ONE trace of ``f`` per input signature — array shapes and
dtypes, the static (hashable Python) argument values, and the root key's kind when
the model draws keys — run through the pass pipeline once and cached:

    init(rng, *args, **kwargs)           -> params
    apply(params, rng, *args, **kwargs)  -> out          (rng may be None if nothing draws)

``transform_with_state``: ``init -> (params, state)``, ``apply(params, state, rng, ...)
-> (out, state)``. Params and state are ``{module_path: {name: array}}``; effects
outside any module live under ``"~"``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purify import _compat
from purify import _context
from purify import errors
from purify import keys
from purify import lowering
from purify import passes as passes_lib
from purify import trace as trace_lib


@dataclasses.dataclass
class Compiled:
  """One input signature's purified program, ready to run."""
  program: trace_lib.Program
  out_info: trace_lib.OutInfo
  init_exec: lowering.Executable
  apply_exec: lowering.Executable
  records: list
  needs_rng: bool

  @property
  def param_keys(self):
    return list(self.program.params)

  @property
  def state_keys(self):
    return list(self.program.states)


def _key_kind(rng):
  if rng is None:
    return None
  shape, dtype = getattr(rng, "shape", None), getattr(rng, "dtype", None)
  if shape is None or dtype is None:      # (jax.typeof of a typed key: ~16 us a call)
    aval = jax.typeof(rng)
    shape, dtype = aval.shape, aval.dtype
  return (tuple(shape), dtype)


_KEY_KINDS: set = set()       # (shape, dtype) of the keys seen valid


def _checked_key_kind(rng, where: str):
  """``_key_kind(rng)`` when ``rng`` is None, a typed key (``jax.random.key``) or a
  raw key (``jax.random.PRNGKey``): else a ``TypeError`` naming what was given (not
  a crash of a pass that derives keys from it)."""
  if rng is None:
    return None
  try:
    kind = _key_kind(rng)
  except TypeError:
    kind = (None, None)
  if kind in _KEY_KINDS:                 # (this runs on every init/apply call)
    return kind
  try:
    aval = jax.typeof(rng)
  except TypeError:
    aval = None
  dtype = getattr(aval, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if tuple(aval.shape) == ():
      _KEY_KINDS.add(kind)
      return kind
  else:
    raw = keys.default_key_aval()
    if dtype == raw.dtype and tuple(getattr(aval, "shape", ())) == tuple(raw.shape):
      _KEY_KINDS.add(kind)
      return kind
  got = aval.str_short() if hasattr(aval, "str_short") else repr(type(rng).__name__)
  raise errors.InvalidKeyError(errors.INVALID_KEY.format(
      where=where, got=got, raw=keys.default_key_aval().str_short()))


class _Purified:
  """The shared core of one transform: the trace cache and the runners."""

  def __init__(self, f: Callable, with_state: bool, pipeline=None, shared: bool = False):
    self.f = f
    self.with_state = with_state
    # one of multi_transform's functions: params and state may hold other functions'
    # entries (ignored; state returned whole, with this function's updates)
    self.shared = shared
    self.pipeline = pipeline or passes_lib.default_pipeline()
    self.cache: dict[Any, dict[Any, Compiled]] = {}
    self.trace_count = 0
    functools.update_wrapper(self, f)

  def compiled(self, rng, args, kwargs, where="init(rng, ...)") -> tuple[Compiled, list]:
    kind = _checked_key_kind(rng, where)
    sig, dyn = trace_lib.signature_of(args, kwargs)
    entries = self.cache.setdefault(sig, {})
    if kind in entries:
      return entries[kind], dyn
    for k, c in entries.items():      # a program that never derives a key serves any kind
      if c.program.asks_rng and (k is None) != (kind is None):
        continue                      # (maybe_next_rng_key answered the other way)
      if not _derives_keys(c.program) and not c.needs_rng:
        return c, dyn
      if kind is None:
        return c, dyn
    key_aval = jax.typeof(rng) if rng is not None else keys.default_key_aval()
    c = self._build(sig, key_aval, rng_given=rng is not None)
    entries[kind] = c
    return c, dyn

  def _build(self, sig, key_aval, rng_given=True) -> Compiled:
    self.trace_count += 1
    program, out_info = trace_lib.trace(self.f, sig, key_aval, rng_given=rng_given)
    program, records = self.pipeline.run(program)
    name = getattr(self.f, "__name__", "model")
    apply_exec = lowering.Executable(program.jaxpr, f"{name}_apply")
    return Compiled(program, out_info,
                    lowering.Executable(program.init_jaxpr, f"{name}_init", staged=True,
                                        forward=_init_forward(program, apply_exec, name)),
                    apply_exec, records, _uses_rng(program))

  # ---------------------------------------------------------------- init
  def init(self, rng, *args, **kwargs):
    frame = _context.maybe_frame()
    if frame is not None and not frame.lifting:
      raise errors.NestedTransformError(errors.NESTED_INIT.format(what="init"))
    with _context.no_frame():
      c, dyn = self.compiled(rng, args, kwargs)
    if rng is None:
      if _derives_keys(c.program) or c.needs_rng:
        raise errors.MissingRngError(
            "init() needs a key (rng=None was given): the model has parameters (or "
            "states drawn with keyed_init) to initialize. Call init(jax.random.key(0), ...).")
      rng = jax.random.PRNGKey(0)   # unused: nothing to initialize, nothing draws
    flat = c.init_exec(rng, *dyn)
    n = len(c.param_keys)
    params = _nest(c.param_keys, flat[:n])
    if self.with_state:
      return params, _nest(c.state_keys, flat[n:])
    return params

  # ---------------------------------------------------------------- apply
  def apply(self, params, *rest, **kwargs):
    if self.with_state:
      if len(rest) < 2:
        raise TypeError("apply(params, state, rng, *args) needs state and rng (rng may be None)")
      state, rng, args = rest[0], rest[1], rest[2:]
    else:
      if len(rest) < 1:
        raise TypeError("apply(params, rng, *args) needs rng (it may be None)")
      state, rng, args = None, rest[0], rest[1:]
    with _context.no_frame():
      c, dyn = self.compiled(rng, args, kwargs, "apply(params, state, rng, ...)"
                             if self.with_state else "apply(params, rng, ...)")
    prog = c.program
    flat_params = _flatten_checked(params, prog.params, "params", self.shared)
    flat_state = _flatten_checked(state or {}, prog.states, "state", self.shared) \
        if self.with_state else []
    if c.needs_rng and rng is None:
      sites = "\n".join(f"  {s}  at {w}" for s, w in prog.rng_sites.items())
      raise errors.MissingRngError(errors.MISSING_RNG.format(sites=sites))
    ins = []
    pi = iter(flat_params)
    si = iter(flat_state) if self.with_state else None
    di = iter(dyn)
    for r in prog.in_roles:
      if r[0] == "param":
        ins.append(next(pi))
      elif r[0] == "rng":
        ins.append(rng if rng is not None else _dummy_key(prog.key_aval))
      elif r[0] == "state":
        ins.append(next(si) if si is not None else _zeros_for(prog.states[r[1]]))
      else:
        ins.append(next(di))
    flat_out = c.apply_exec(*ins)
    outs, new_state = [], {}
    for r, v in zip(prog.out_roles, flat_out):
      if r[0] == "out":
        outs.append(v)
      else:
        new_state[r[1]] = v
    out = _unflatten_out(c.out_info, outs)
    if self.with_state:
      new = _nest(list(new_state), list(new_state.values()))
      if self.shared:                 # the other functions' state, as it came
        new = {m: {**(state or {}).get(m, {}), **new.get(m, {})}
               for m in {**(state or {}), **new}}
      return out, new
    return out


def _init_forward(program, apply_exec, name):
  """Init's forward (``Program.init_forward``) for ``lowering.Executable``: apply's
  executable (or the forward program's) on apply's inputs, taken from init's
  outputs (parameters, initial states), its key and its arguments."""
  if not program.init_forward:
    return None
  ex = apply_exec
  if program.forward_jaxpr is not None:
    ex = lowering.Executable(program.forward_jaxpr, f"{name}_init_forward")
  out_index = {r: n for n, r in enumerate(program.init_out_roles)}
  ins = []
  for r in program.in_roles:
    if r[0] in ("param", "state"):
      ins.append(("out", out_index[r]))
    elif r[0] == "rng":
      ins.append(("in", 0))
    else:
      ins.append(("in", 1 + r[1]))
  return ex, tuple(ins), program.init_forward


def _derives_keys(program) -> bool:
  """Whether init derives keys from its root: parameters, or states drawn with a key
  (``keyed_init``, lifted states)."""
  return bool(program.params) or any(st.key_name is not None for st in program.states.values())


def _uses_rng(program) -> bool:
  """Whether apply reads its rng input (after DCE; e.g. a key drawn only for
  ``lift``-ed initialization is not needed by apply)."""
  j = _compat.open_of(program.jaxpr)
  rng_vars = {v for v, r in zip(j.invars, program.in_roles) if r[0] == "rng"}
  if not rng_vars:
    return False
  used = {v for e in j.eqns for v in e.invars if isinstance(v, _compat.Var)}
  used |= {v for v in j.outvars if isinstance(v, _compat.Var)}
  return bool(rng_vars & used)


def _dummy_key(aval):
  """A stand-in root key for an rng input apply does not use."""
  if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key):
    return jax.random.key(0)
  return jnp.zeros(aval.shape, aval.dtype)


def _zeros_for(st):
  return jnp.zeros(st.shape, st.dtype)


def _nest(keys_, values):
  out: dict = {}
  for (module, name), v in zip(keys_, values):
    out.setdefault(module, {})[name] = v
  return out


def _flatten_checked(tree, table, what, allow_extra=False):
  if not isinstance(tree, dict):
    raise TypeError(f"apply() expects {what} as a dict {{module: {{name: array}}}}, "
                    f"got {type(tree).__name__}")
  flat = []
  for (module, name), site in table.items():
    try:
      v = tree[module][name]
    except (KeyError, TypeError):
      raise errors.ParamsMismatchError(errors.PARAMS_MISSING.format(
          path=f"{module}/{name}", shape=site.shape, dtype=site.dtype, site=site.site)
          .replace("params", what)) from None
    shape, dtype = tuple(np.shape(v)), jnp.result_type(v) if not hasattr(v, "dtype") else v.dtype
    if shape != tuple(site.shape) or np.dtype(dtype) != np.dtype(site.dtype):
      raise errors.ParamsMismatchError(errors.PARAMS_SHAPE.format(
          module=module, name=name, got_shape=shape, got_dtype=dtype, shape=site.shape,
          dtype=site.dtype, site=site.site).replace("params", what))
    flat.append(v)
  if allow_extra:
    return flat
  for module, sub in tree.items():
    for name in (sub if isinstance(sub, dict) else {"<not a dict>": None}):
      if (module, name) not in table:
        known = ", ".join(f"{m}/{n}" for m, n in table) or "(none)"
        raise errors.ParamsMismatchError(errors.PARAMS_EXTRA.format(
            path=f"{module}/{name}", known=known).replace("params", what))
  return flat


def _unflatten_out(info: trace_lib.OutInfo, arrays):
  leaves: list = [None] * info.treedef.num_leaves
  for i, v in zip(info.array_idx, arrays):
    leaves[i] = v
  for i, v in info.static:
    leaves[i] = v
  return jax.tree_util.tree_unflatten(info.treedef, leaves)


# ----------------------------------------------------------------------------- public
def _name_after(obj, f, suffix):
  # not functools.update_wrapper: __wrapped__ would make jax.jit (and inspect) see the
  # model's signature instead of init's / apply's, breaking static_argnames
  obj.__name__ = f"{getattr(f, '__name__', 'model')}.{suffix}"
  obj.__qualname__ = obj.__name__
  obj.__doc__ = getattr(f, "__doc__", None)


class InitFn:
  def __init__(self, core: _Purified):
    self.purified = core
    _name_after(self, core.f, "init")

  def __call__(self, rng, *args, **kwargs):
    return self.purified.init(rng, *args, **kwargs)


class ApplyFn:
  rng_dropped = False                 # whether a wrapper took apply's rng argument away

  def __init__(self, core: _Purified):
    self.purified = core
    _name_after(self, core.f, "apply")

  def __call__(self, params, *args, **kwargs):
    return self.purified.apply(params, *args, **kwargs)


class _WrappedInit(InitFn):
  """An ``init`` that one of Haiku's transform wrappers made: it calls ``inner``."""

  def __init__(self, inner):
    super().__init__(inner.purified)
    self.inner = inner


class _WrappedApply(ApplyFn):
  """An ``apply`` that one of Haiku's transform wrappers made: it calls ``inner``."""

  def __init__(self, inner):
    super().__init__(inner.purified)
    self.inner, self.rng_dropped = inner, inner.rng_dropped


class _ApplyWithoutRng(_WrappedApply):
  """``apply`` without its ``rng`` argument (:func:`without_apply_rng`)."""

  def __init__(self, inner, with_state: bool):
    super().__init__(inner)
    self.with_state, self.rng_dropped = with_state, True

  def __call__(self, params, *args, **kwargs):
    if self.with_state:
      if not args:
        raise TypeError("apply(params, state, *args) needs state (without_apply_rng "
                        "dropped only the rng argument)")
      return self.inner(params, args[0], None, *args[1:], **kwargs)
    return self.inner(params, None, *args, **kwargs)


class _InitWithoutState(_WrappedInit):
  """``init`` returning only params (:func:`without_state`)."""

  def __call__(self, rng, *args, **kwargs):
    params, state = self.inner(rng, *args, **kwargs)
    if state:
      raise errors.NonEmptyStateError(errors.NON_EMPTY_STATE.format(
          names=", ".join(sorted(f"{m}/{n}" for m, sub in state.items() for n in sub)),
          where="init"))
    return params


class _ApplyWithoutState(_WrappedApply):
  """``apply`` without state in or out (:func:`without_state`)."""

  def __call__(self, params, *args, **kwargs):
    rng, rest = (None, args) if self.rng_dropped else (args[0] if args else None, args[1:])
    c, _ = self.purified.compiled(rng, rest, kwargs)   # (cached: the program apply runs)
    if c.program.states:
      raise errors.NonEmptyStateError(errors.NON_EMPTY_STATE.format(
          names=", ".join(sorted("/".join(k) for k in c.state_keys)), where="apply"))
    out, _ = self.inner(params, {}, *args, **kwargs)
    return out


class _InitWithEmptyState(_WrappedInit):
  """``init`` returning ``(params, {})`` (:func:`with_empty_state`)."""

  def __call__(self, rng, *args, **kwargs):
    return self.inner(rng, *args, **kwargs), {}


class _ApplyWithEmptyState(_WrappedApply):
  """``apply(params, state, ...) -> (out, {})`` (:func:`with_empty_state`)."""

  def __call__(self, params, state, *args, **kwargs):
    del state                         # (as Haiku: the model has none to read)
    return self.inner(params, *args, **kwargs), {}


class Transformed(NamedTuple):
  """``init, apply = purify.transform(f)``."""
  init: Callable
  apply: Callable


class TransformedWithState(NamedTuple):
  """``init, apply = purify.transform_with_state(f)``."""
  init: Callable
  apply: Callable


def transform(f: Callable | None = None, *, pipeline=None):
  """Turn a function that uses purify effects into pure ``init`` and ``apply``.

  Example::

      @purify.transform
      def model(x):
        return purify.nn.MLP([16, 1])(x)

      params = model.init(jax.random.key(0), x)
      y = model.apply(params, None, x)
  """
  if f is None:
    return functools.partial(transform, pipeline=pipeline)
  core = _Purified(f, with_state=False, pipeline=pipeline)
  return Transformed(InitFn(core), ApplyFn(core))


def transform_with_state(f: Callable | None = None, *, pipeline=None):
  """Like :func:`transform` for models with state (``get_state`` / ``set_state``)::

      init(rng, *args) -> (params, state)
      apply(params, state, rng, *args) -> (out, new_state)
  """
  if f is None:
    return functools.partial(transform_with_state, pipeline=pipeline)
  core = _Purified(f, with_state=True, pipeline=pipeline)
  return TransformedWithState(InitFn(core), ApplyFn(core))


def _check_transformed(transformed, fn, want=(None,)):
  kinds = {Transformed: "purify.transform", TransformedWithState: "purify.transform_with_state"}
  ok = type(transformed) in kinds and isinstance(transformed.apply, ApplyFn) and \
      isinstance(transformed.init, InitFn)
  if ok and want != (None,) and type(transformed) not in want:
    need = " or ".join(kinds[w] for w in want)
    raise TypeError(f"purify.{fn} takes what {need} returned, got what "
                    f"{kinds[type(transformed)]} returned.")
  if not ok:
    need = " or ".join(kinds[w] for w in (want if want != (None,) else kinds))
    fix = kinds[want[0]] if want != (None,) else "purify.transform"
    raise TypeError(
        f"purify.{fn} takes what {need} returned, got "
        f"{type(transformed).__module__}.{type(transformed).__qualname__}: "
        f"use purify.{fn}({fix}(f)).")


def without_apply_rng(transformed):
  """Haiku's ``hk.without_apply_rng``: the same ``init``, and an ``apply`` without
  its ``rng`` argument — ``apply(params, *args)`` (``apply(params, state, *args)``
  for :func:`transform_with_state`), which is ``apply(params, None, *args)``. A
  model that draws a key then raises ``MissingRngError`` naming its draws.

  Example::

      model = purify.without_apply_rng(purify.transform(lambda x: purify.nn.Linear(2)(x)))
      params = model.init(jax.random.key(0), x)
      y = model.apply(params, x)
  """
  if isinstance(transformed, (MultiTransformed, MultiTransformedWithState)):
    with_state = isinstance(transformed, MultiTransformedWithState)
    return type(transformed)(transformed.init, jax.tree_util.tree_map(
        lambda a: a if a.rng_dropped else _ApplyWithoutRng(a, with_state), transformed.apply))
  _check_transformed(transformed, "without_apply_rng")
  if transformed.apply.rng_dropped:
    return transformed                  # (as Haiku: applying it twice changes nothing)
  return type(transformed)(transformed.init, _ApplyWithoutRng(
      transformed.apply, isinstance(transformed, TransformedWithState)))


def without_state(transformed):
  """Haiku's ``hk.without_state``: a :func:`transform_with_state` of a model with no
  state as a :func:`transform` — ``init -> params``, ``apply(params, rng, *args) ->
  out``. A model with state raises ``NonEmptyStateError`` (its state would be lost).

  Example::

      model = purify.without_state(purify.transform_with_state(f))
  """
  _check_transformed(transformed, "without_state", (TransformedWithState,))
  return Transformed(_InitWithoutState(transformed.init),
                     _ApplyWithoutState(transformed.apply))


def with_empty_state(transformed):
  """Haiku's ``hk.with_empty_state``: a :func:`transform` as a
  :func:`transform_with_state` with no state — ``init -> (params, {})``,
  ``apply(params, state, rng, *args) -> (out, {})``.

  Example::

      model = purify.with_empty_state(purify.transform(f))
  """
  _check_transformed(transformed, "with_empty_state", (Transformed,))
  return TransformedWithState(_InitWithEmptyState(transformed.init),
                              _ApplyWithEmptyState(transformed.apply))


class MultiTransformed(NamedTuple):
  """``init, apply = purify.multi_transform(f)``: ``apply`` is a tree of functions."""
  init: Callable
  apply: Any


class MultiTransformedWithState(NamedTuple):
  """``init, apply = purify.multi_transform_with_state(f)``."""
  init: Callable
  apply: Any


def _functions_of(f):
  """The tree structure of the functions ``f()`` returns (second of its pair), found
  by calling ``f`` once in a throwaway trace (modules need one to be created)."""
  got = []

  def probe():
    out = f()
    if not (isinstance(out, tuple) and len(out) == 2 and callable(out[0])):
      raise TypeError(
          "purify.multi_transform(f): f() must return (template, functions): a function "
          "that uses every module (what init runs) and a tree of functions (one apply "
          f"each); got {type(out).__name__}.")
    got.append(out[1])
    return 0
  with _context.frame_scope(_context.Frame(keys.default_key_aval())):
    jax.make_jaxpr(probe)()
  leaves, treedef = jax.tree_util.tree_flatten(got[0])
  bad = [type(x).__name__ for x in leaves if not callable(x)]
  if bad:
    raise TypeError(f"purify.multi_transform(f): the functions f() returns must be callables; "
                    f"got {', '.join(bad)}.")
  return len(leaves), treedef


def _multi(f, with_state, pipeline):
  n, treedef = _functions_of(f)
  name = getattr(f, "__name__", "model")

  def template(*args, **kwargs):
    return f()[0](*args, **kwargs)

  def member(i):
    def fn(*args, **kwargs):
      return jax.tree_util.tree_leaves(f()[1])[i](*args, **kwargs)
    fn.__name__ = f"{name}[{i}]"
    return fn
  template.__name__ = name
  init = InitFn(_Purified(template, with_state, pipeline))
  applies = [ApplyFn(_Purified(member(i), with_state, pipeline, shared=True)) for i in range(n)]
  return init, jax.tree_util.tree_unflatten(treedef, applies)


def multi_transform(f: Callable, *, pipeline=None):
  """Haiku's ``hk.multi_transform``: ``f()`` returns ``(template, functions)`` — a
  function that uses every module (``init`` runs it and creates all parameters) and
  a tree of functions sharing those modules; ``apply`` is the same tree of pure
  functions, each ``apply_i(params, rng, *args)`` taking the whole params.

  Example::

      def f():
        encoder, decoder = purify.nn.Linear(2, name="encoder"), purify.nn.Linear(3, name="decoder")
        return (lambda x: decoder(encoder(x))), (encoder, decoder)

      model = purify.multi_transform(f)
      params = model.init(jax.random.key(0), x)
      encode, decode = model.apply
      y = decode(params, None, encode(params, None, x))
  """
  return MultiTransformed(*_multi(f, False, pipeline))


def multi_transform_with_state(f: Callable, *, pipeline=None):
  """:func:`multi_transform` with state: ``init -> (params, state)``, each
  ``apply_i(params, state, rng, *args) -> (out, state)`` (the whole state, with
  this function's updates)."""
  return MultiTransformedWithState(*_multi(f, True, pipeline))
