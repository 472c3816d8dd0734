"""Stage 1 — effects: the primitives that model code binds, and their JAX rules.

``param``, ``next_rng_key``, ``get_state`` and ``set_state`` each bind a custom
primitive carrying a purify Effect. The effect types are registered as allowed in
control flow, remat and custom derivatives, and kept by partial evaluation, so the
primitives may appear anywhere inside a traced model. They are never lowerable: the
pass pipeline replaces every one of them by explicit inputs and outputs, and one that
reaches XLA raises ``EffectLoweringError``.

What each primitive does under JAX's transforms (decided here, at trace time, since
vmap leaves no trace in a jaxpr):
  * ``param`` / ``get_state`` under vmap: not batched (shared, as a loop shares them).
  * ``next_rng_key`` under vmap: batched — the primitive records the vmap sizes in
    its ``batch`` param and the RNG pass gives every example its own key. Axes marked
    shared (``purify.vmap(split_rng=False)``) are not batched.
  * ``set_state`` under vmap with a per-example value: ``PerExampleStateError``.
  * under grad inside a scan, ``next_rng_key`` / ``get_state`` are staged as unknown
    so JAX's partial evaluation keeps them inside the loop (else one draw would serve
    every iteration).

  * ``set_state`` inside a cond/switch/while whose predicate vmap makes per-example:
    ``PerExampleStateError`` (the wrapped batching rules below).
  * under jax.grad/jvp taken in the model, state is made explicit where JAX
    differentiates through it: see ``purify.ad_state``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from purify import _compat
from purify import _context
from purify import errors


class PurifyEffect(_compat.Effect):
  kind = "purify"

  def __repr__(self):
    return f"purify.{type(self).__name__}"

  __str__ = __repr__


class ParamEffect(PurifyEffect):
  kind = "param"


class RngEffect(PurifyEffect):
  kind = "rng"


class StateEffect(PurifyEffect):
  kind = "state"


param_effect = ParamEffect()
rng_effect = RngEffect()
state_effect = StateEffect()
for _t in (ParamEffect, RngEffect, StateEffect):
  _compat.register_effect_type(_t)

ALL_EFFECT_TYPES = (ParamEffect, RngEffect, StateEffect)


def is_purify_effect(e) -> bool:
  return isinstance(e, PurifyEffect)


def strip_effects(effs, types=ALL_EFFECT_TYPES):
  return frozenset(e for e in effs if not isinstance(e, types)) if effs else effs


def has_effect(effs, types=ALL_EFFECT_TYPES) -> bool:
  return any(isinstance(e, types) for e in effs)


# ----------------------------------------------------------------------------- primitives
param_p = _compat.Primitive("purify_param")
rng_p = _compat.Primitive("purify_rng")
get_state_p = _compat.Primitive("purify_get_state")
set_state_p = _compat.Primitive("purify_set_state")
set_state_p.multiple_results = True

EFFECT_PRIMITIVES = (param_p, rng_p, get_state_p, set_state_p)


@param_p.def_effectful_abstract_eval
def _param_abstract_eval(*, module, name, shape, dtype):
  return _compat.ShapedArray(shape, dtype), {param_effect}


@rng_p.def_effectful_abstract_eval
def _rng_abstract_eval(*, site, batch, key_shape, key_dtype):
  return _compat.ShapedArray(tuple(batch) + tuple(key_shape), key_dtype), {rng_effect}


@get_state_p.def_effectful_abstract_eval
def _get_abstract_eval(*, module, name, shape, dtype):
  return _compat.ShapedArray(shape, dtype), {state_effect}


@set_state_p.def_effectful_abstract_eval
def _set_abstract_eval(value, *, module, name):
  return [], {state_effect}


def _set_jvp(primals, tangents, *, module, name):
  return set_state_p.bind(*primals, module=module, name=name), []


jax.interpreters.ad.primitive_jvps[set_state_p] = _set_jvp


def _rng_batch(axis_data, vals, dims, *, site, batch, key_shape, key_dtype):
  frame = _context.maybe_frame()
  if frame is not None and axis_data.name is not None and axis_data.name in frame.shared_rng_axes:
    return rng_p.bind(site=site, batch=batch, key_shape=key_shape, key_dtype=key_dtype), _compat.not_mapped
  out = rng_p.bind(site=site, batch=(axis_data.size,) + tuple(batch),
                   key_shape=key_shape, key_dtype=key_dtype)
  if frame is not None:
    frame.per_example_draws.setdefault(site, _axis_str(axis_data))
  return out, 0


def _axis_str(axis_data) -> str:
  name = axis_data.name
  if isinstance(name, str):
    return f"{name!r} of size {axis_data.size}"
  return f"unnamed, of size {axis_data.size}"


def _set_batch(axis_data, vals, dims, *, module, name):
  (value,), (dim,) = vals, dims
  frame = _context.maybe_frame()
  if (dim is not _compat.not_mapped and dim is not None and frame is not None
      and axis_data.name in frame.mean_state_axes):
    # purify.vmap(state_axes="mean"): the shared state takes the batch mean
    value, dim = jnp.mean(value, axis=dim).astype(value.dtype), None
  if dim is not _compat.not_mapped and dim is not None:
    raise errors.PerExampleStateError(errors.PER_EXAMPLE_STATE.format(
        path=f"{module}/{name}", axis=_axis_str(axis_data)))
  return set_state_p.bind(value, module=module, name=name), []


def _written_states(jaxpr, out=None):
  """Paths of the states ``set_state`` writes anywhere in ``jaxpr`` (recursively)."""
  out = [] if out is None else out
  for eqn in _compat.open_of(jaxpr).eqns:
    if eqn.primitive is set_state_p:
      path = f"{eqn.params['module']}/{eqn.params['name']}"
      if path not in out:
        out.append(path)
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        if _compat.is_jaxpr(sub) and has_effect(_compat.open_of(sub).effects, (StateEffect,)):
          _written_states(sub, out)
  return out


def _refuse_batched_predicate(kind, axis_data, jaxprs):
  paths = []
  for j in jaxprs:
    if has_effect(_compat.open_of(j).effects, (StateEffect,)):
      _written_states(j, paths)
  if paths:
    raise errors.PerExampleStateError(errors.PER_EXAMPLE_BRANCH_STATE.format(
        kind=kind, paths=", ".join(repr(p) for p in paths), axis=_axis_str(axis_data)))


def _wrap_control_flow_batching():
  """vmap of cond/while with a per-example predicate runs both branches (or extra
  iterations) for every example and selects the results: a ``set_state`` inside
  would then write for every example whatever its predicate. Refuse it (the case
  where the written value itself is per-example is caught by ``_set_batch``)."""
  cond_rule = _compat.fancy_primitive_batchers[_compat.cond_p]
  while_rule = _compat.fancy_primitive_batchers[_compat.while_p]

  def cond_batch(axis_data, args, dims, **params):
    if dims[0] is not _compat.not_mapped and dims[0] is not None:
      _refuse_batched_predicate("jax.lax.cond/switch", axis_data, params["branches"])
    return cond_rule(axis_data, args, dims, **params)

  def while_batch(axis_data, args, dims, **params):
    if (_written_states(params["body_jaxpr"]) and
        _compat.while_predicate_batched(axis_data, dims, params)):
      _refuse_batched_predicate("jax.lax.while_loop", axis_data, [params["body_jaxpr"]])
    return while_rule(axis_data, args, dims, **params)

  cond_batch.__wrapped__, while_batch.__wrapped__ = cond_rule, while_rule
  _compat.fancy_primitive_batchers[_compat.cond_p] = cond_batch
  _compat.fancy_primitive_batchers[_compat.while_p] = while_batch


_wrap_control_flow_batching()


# purify.vmap(state_axes=0): per example, the value written; batched over that vmap's
# axis, every example's value stacked (the stacked state, no longer per-example).
stack_examples_p = _compat.Primitive("purify_stack_examples")


@stack_examples_p.def_abstract_eval
def _stack_examples_abstract_eval(value, *, size, axis):
  return _compat.ShapedArray((size,) + tuple(value.shape), value.dtype)


def _stack_examples_batch(axis_data, vals, dims, *, size, axis):
  (value,), (dim,) = vals, dims
  if axis_data.name == axis:
    return jnp.moveaxis(value, dim, 0), _compat.not_mapped
  raise errors.PerExampleStateError(
      f"A per-example state (state_axes=0 over vmap axis {axis!r}) is written with a value "
      f"that also varies over another vmap axis ({_axis_str(axis_data)}). Give that vmap "
      f"state_axes=0 too, or reduce the value over it (jax.lax.pmean).")


def _stack_examples_impl(value, *, size, axis):
  raise errors.PurifyError("purify internal: stack_examples outside its vmap")


stack_examples_p.def_impl(_stack_examples_impl)
_compat.fancy_primitive_batchers[stack_examples_p] = _stack_examples_batch
_compat.fancy_primitive_batchers[rng_p] = _rng_batch
_compat.fancy_primitive_batchers[set_state_p] = _set_batch
_compat.stage_unknown_rule(rng_p)
_compat.stage_unknown_rule(get_state_p)
_compat.recompute_in_policy_partial_eval(param_p)
_compat.recompute_in_policy_partial_eval(rng_p)
# the same for a jax.checkpoint around a draw or a state read (harness-7)
_compat.stage_remat_unknown_when(
    lambda effs: any(isinstance(e, (RngEffect, StateEffect)) for e in effs))


def _effect_lowering_error(prim, params):
  shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
  return errors.EffectLoweringError(errors.EFFECT_LOWERING.format(prim=prim.name, params=shown))


for _p in EFFECT_PRIMITIVES:
  _compat.register_raising_lowering(_p, _effect_lowering_error)

_compat.register_pp_rule(param_p, lambda e: f'param "{e.params["module"]}/{e.params["name"]}"')
_compat.register_pp_rule(get_state_p, lambda e: f'get_state "{e.params["module"]}/{e.params["name"]}"')
_compat.register_pp_rule(set_state_p, lambda e: f'set_state "{e.params["module"]}/{e.params["name"]}"')
_compat.register_pp_rule(
    rng_p, lambda e: ("rng_policy split_rng=False" if e.params["site"] == UNSPLIT_SITE else
                      f'next_rng_key "{e.params["site"]}"') +
    (f" batch={tuple(e.params['batch'])}" if e.params["batch"] else ""))

# A loop body that starts with a draw of this site does not fold its iteration index
# into the keys drawn in it (``purify.scan(split_rng=False)``): one key for every step.
# It is an ordinary draw to every JAX transform (kept in the loop under grad, batched
# under vmap), so it stays at the top of its loop body; the RNG pass removes it.
UNSPLIT_SITE = "<split_rng=False>"


def mark_unsplit_loop() -> None:
  """Called first in a loop body: keys drawn in this body are the same every step."""
  frame = _context.current_frame("purify.scan(split_rng=False)")
  ka = frame.key_aval
  rng_p.bind(site=UNSPLIT_SITE, batch=(), key_shape=tuple(ka.shape), key_dtype=ka.dtype)


# ----------------------------------------------------------------------------- user API
def default_init(key, shape, dtype):
  """purify's default parameter initializer (Haiku's default for ``Linear.w``,
  ``TruncatedNormal(1/sqrt(fan_in))``): a standard normal cut at +-2, times
  ``1/sqrt(fan_in)``, ``fan_in = prod(shape[:-1])`` (1 for scalars and vectors). Not
  rescaled, as in Haiku: the samples' std is ``0.8796/sqrt(fan_in)``.

  Drawn flat and reshaped (the same bits; a multi-dimensional draw compiles several
  times slower on CPU)."""
  fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
  std = 1.0 / np.sqrt(max(fan_in, 1))
  size = int(np.prod(shape))
  unscaled = jax.random.truncated_normal(key, -2.0, 2.0, (size,), jnp.float32).reshape(shape)
  return (unscaled * np.float32(std)).astype(dtype)


def _norm_shape(shape, fn, name):
  try:
    return tuple(int(d) for d in shape)
  except TypeError:
    raise TypeError(f"purify.{fn}({name!r}): shape must be a tuple of ints, got {shape!r}") from None


def param(name: str, shape, dtype=jnp.float32, init: Callable | None = None):
  """Declare (on first use) and return parameter ``name`` of the current module.

  ``init(key, shape, dtype) -> Array`` as in ``jax.nn.initializers``; by default
  :func:`default_init`. Example::

      def f(x):
        w = purify.param("w", (x.shape[-1], 3), init=jax.nn.initializers.ones)
        return x @ w
  """
  frame = _context.current_frame("param", repr(name))
  shape = _norm_shape(shape, "param", name)
  dtype = jnp.dtype(dtype)
  module = frame.module_path()
  if not frame.creators and not frame.getters:
    return _declare_param(frame, module, name, shape, dtype, init)
  ctx = ParamContext(f"{module}/{name}", module, name, shape, dtype, init or default_init)

  def create(i, shape, dtype, init):
    if i < 0:
      return _declare_param(frame, module, name, _norm_shape(shape, "param", name),
                            jnp.dtype(dtype), init)
    return frame.creators[i](lambda s, d, n: create(i - 1, s, d, n), shape, dtype, init, ctx)

  value = create(len(frame.creators) - 1, shape, dtype, init)
  return _got(frame.getters, value, ctx)


def _declare_param(frame, module, name, shape, dtype, init):
  entries = frame.stack_for(f"{module}/{name}")
  stack = tuple(size for size, _ in entries)
  full_shape = stack + shape
  key = (module, name)
  site = _context.user_site()
  prev = frame.params.get(key)
  if prev is None:
    frame.params[key] = _context.ParamSite(module, name, full_shape, dtype,
                                          init or default_init, site, stack)
  elif prev.shape != full_shape or prev.dtype != dtype:
    what = "shapes" if prev.shape != full_shape else "dtypes"
    raise errors.ParamConflictError(errors.PARAM_CONFLICT.format(
        path=prev.path, what=what, first_shape=prev.shape, first_dtype=prev.dtype,
        first_site=prev.site, second_shape=full_shape, second_dtype=dtype, second_site=site))
  frame.bump()
  value = param_p.bind(module=module, name=name, shape=full_shape, dtype=dtype)
  for _, index in entries:
    value = jax.lax.dynamic_index_in_dim(value, index, 0, keepdims=False)
  for log in frame.param_logs:
    if key not in log:
      log.append(key)
  for overrides in reversed(frame.param_overrides):
    if key in overrides:
      value = _override(overrides[key], value, key)
      break
  return value


def _override(new, value, key):
  new = jnp.asarray(new)
  if new.shape != value.shape:
    raise errors.ParamsMismatchError(
        f"purify.with_params: the value given for parameter '{key[0]}/{key[1]}' has shape "
        f"{new.shape}, but the parameter is used with shape {value.shape} here.")
  return new.astype(value.dtype)


class with_params:
  """Context manager: parameters read inside take the given values instead of their
  own (``{module: {name: value}}``; entries not given keep their own). What MAML's
  inner loop needs, with :func:`purify.grad` ``(..., params=True)``.

  Example::

      def model(x):
        net = purify.nn.Linear(1)
        loss = lambda: jnp.mean(net(x) ** 2)
        g = purify.grad(loss, params=True)()             # {"linear": {"w": .., "b": ..}}
        p = purify.get_params(g)                         # their current values
        fast = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, p, g)
        with purify.with_params(fast):
          return net(x)                                  # evaluated with the adapted params
  """

  def __init__(self, params):
    self.table = _flat_params(params, "purify.with_params")

  def __enter__(self):
    self.frame = _context.current_frame("with_params")
    self.frame.param_overrides.append(self.table)
    return self

  def __exit__(self, *exc):
    self.frame.param_overrides.pop()
    return False


def _flat_params(params, fn):
  if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
    raise TypeError(f"{fn}: expected params as {{module: {{name: array}}}}, got {type(params).__name__}")
  return {(m, n): v for m, sub in params.items() for n, v in sub.items()}


def get_params(tree):
  """The current values of the parameters named in ``tree`` (``{module: {name: _}}``,
  e.g. a gradient from ``purify.grad(..., params=True)``), as seen at this point of
  the model (slices under ``param_axes``; overrides of ``with_params`` applied)."""
  frame = _context.current_frame("get_params")
  out = {}
  for (module, name) in _flat_params(tree, "purify.get_params"):
    site = frame.params.get((module, name))
    if site is None:
      raise errors.ParamsMismatchError(
          f"purify.get_params: no parameter '{module}/{name}' has been declared in this model.")
    with _context.declared_in(module):
      n_stack = len(frame.stack_for(f"{module}/{name}"))
      out.setdefault(module, {})[name] = param(name, site.shape[n_stack:], site.dtype, site.init)
  return out


def params_used(fun, *args, **kwargs):
  """``(result shapes, [(module, name), ...])``: the parameters ``fun(*args)`` reads,
  found by running it under ``jax.eval_shape`` without consuming any module name or
  key site (a later real call names everything as if this had not run)."""
  frame = _context.current_frame("params_used")
  log: list = []
  frame.param_logs.append(log)
  try:
    with _context.rewind(frame):
      shapes = jax.eval_shape(lambda a, k: fun(*a, **k), args, kwargs)
  finally:
    frame.param_logs.remove(log)
  return shapes, log


class ParamContext(NamedTuple):
  """What a custom creator/getter is told about the parameter (as Haiku's context)."""
  full_name: str
  module_name: str
  name: str
  original_shape: tuple
  original_dtype: Any
  original_init: Callable


class _Interceptor:
  def __init__(self, fn, tables, what):
    if not callable(fn):
      raise TypeError(f"purify.{what}: expected a callable, got {fn!r}")
    self.fn, self.tables, self.what = fn, tables, what

  def __enter__(self):
    self.frame = _context.current_frame(self.what, "(interceptors apply inside a transform)")
    for table in self.tables:
      getattr(self.frame, table).append(self.fn)
    return self

  def __exit__(self, *exc):
    for table in self.tables:
      getattr(self.frame, table).pop()
    return False


def custom_creator(creator):
  """Context manager: intercept parameter creation, as Haiku's ``hk.custom_creator``.
  ``creator(next_creator, shape, dtype, init, context) -> Array``; the innermost
  creator runs first, ``next_creator(shape, dtype, init)`` calls the next one and
  finally declares the parameter with what it is given (the stored shape, dtype
  and initializer). purify traces once, so a creator runs for init and apply alike.

  Example (mixed precision: params stored in float32, used in bfloat16)::

      def f32_storage(next_creator, shape, dtype, init, context):
        return next_creator(shape, jnp.float32, init)

      def bf16_compute(next_getter, value, context):
        return next_getter(value.astype(jnp.bfloat16))

      def f(x):                                 # x: bfloat16
        with purify.custom_creator(f32_storage), purify.custom_getter(bf16_compute):
          return purify.nn.Linear(4)(x)
  """
  return _Interceptor(creator, ("creators",), "custom_creator")


def custom_getter(getter, *, params: bool = True, state: bool = False):
  """Context manager: intercept parameter reads (``params``) and state reads
  (``state``, ``get_state``), as Haiku's ``hk.custom_getter``.
  ``getter(next_getter, value, context) -> Array``; see :func:`custom_creator`."""
  tables = (("getters",) if params else ()) + (("state_getters",) if state else ())
  return _Interceptor(getter, tables, "custom_getter")


def _got(getters, value, ctx):
  """``value`` through the getters, the innermost first."""
  def get(i, value):
    if i < 0:
      return value
    return getters[i](lambda v: get(i - 1, v), value, ctx)
  return get(len(getters) - 1, value)


def next_rng_key():
  """A fresh key: a new one at every dynamic execution (per example under vmap, per
  step under scan/while/fori), derived from the root key and this site's position.

  Example::

      def f(x):
        keep = jax.random.bernoulli(purify.next_rng_key(), 0.9, x.shape)
        return jnp.where(keep, x / 0.9, 0.)
  """
  frame = _context.current_frame("next_rng_key")
  module = frame.module_path()
  n = frame.rng_counts.get(module, 0)
  frame.rng_counts[module] = n + 1
  site = f"{module}#{n}"
  frame.rng_sites[site] = _context.user_site()
  frame.bump()
  ka = frame.key_aval
  return rng_p.bind(site=site, batch=(), key_shape=tuple(ka.shape), key_dtype=ka.dtype)


def maybe_next_rng_key():
  """Haiku's ``hk.maybe_next_rng_key``: :func:`next_rng_key` when the call has a key,
  ``None`` when ``init``/``apply`` got ``rng=None``. Whether a key was given is then
  part of the traced program (a call with a key and one without each trace their
  own).

  Example::

      def f(x):
        key = purify.maybe_next_rng_key()
        return x if key is None else purify.nn.dropout(0.5, x, rng=key)
  """
  frame = _context.current_frame("maybe_next_rng_key")
  frame.asks_rng = True
  return next_rng_key() if frame.rng_given else None


def next_rng_keys(num: int):
  """Haiku's ``hk.next_rng_keys``: ``num`` fresh keys, stacked along a leading axis
  (one :func:`next_rng_key` draw, split ``num`` ways: the keys are as fresh as the
  draw under every transform).

  Example::

      def f(x):
        k1, k2 = purify.next_rng_keys(2)
        return x + jax.random.normal(k1, x.shape) * jax.random.uniform(k2, x.shape)
  """
  if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
    raise ValueError(f"purify.next_rng_keys({num!r}): num must be a positive Python int "
                     "(how many keys to return).")
  return jax.random.split(next_rng_key(), int(num))


class keyed_init:
  """A state initializer that draws: ``purify.keyed_init(fn)`` with ``fn(key, shape,
  dtype)`` (as ``jax.nn.initializers``) makes ``get_state(..., init=...)`` start the
  state at ``fn(key, shape, dtype)``, the key derived from ``init``'s root key and the
  state's path (Haiku's state initializers draw with ``hk.next_rng_key()``). Under
  ``state_axes=0`` every member starts at the same draw, as a state initializer's
  value is shared by the members.

  Example::

      def f(x):
        u = purify.get_state("u", (1, 8), init=purify.keyed_init(jax.nn.initializers.normal()))
        return x @ u.T
  """

  def __init__(self, fn: Callable):
    if not callable(fn):
      raise TypeError(f"purify.keyed_init takes init(key, shape, dtype), got {fn!r}.")
    self.fn = fn

  def __repr__(self):
    return f"purify.keyed_init({self.fn!r})"


def _state_site(frame, fn, name, shape, dtype, init):
  module = frame.module_path()
  key = (module, name)
  site = _context.user_site()
  prev = frame.states.get(key)
  stack = tuple(size for size, _, _ in frame.state_stack)
  key_name = None
  if isinstance(init, keyed_init):      # init(key, shape, dtype), the key the state's own
    key_name, init = f"state:{module}/{name}", init.fn
  if prev is not None and prev.stack != stack:
    raise errors.ParamConflictError(
        f"State '{module}/{name}' was declared at {prev.site} with per-example/per-step "
        f"stack {prev.stack} (state_axes), but is used at {site} with stack {stack}. A state "
        f"is either stacked or not: use it under the same purify.vmap/scan(state_axes=...).")
  if stack and shape is not None:
    shape = stack + tuple(shape)
    if init is not None:
      base_init = init
      n = len(stack)
      if key_name is None:
        init = lambda s, d: jnp.broadcast_to(jnp.asarray(base_init(s[n:], d), d), s)  # noqa: E731
      else:
        init = lambda k, s, d: jnp.broadcast_to(jnp.asarray(base_init(k, s[n:], d), d), s)  # noqa: E731
  if prev is None:
    if shape is None:
      raise TypeError(
          f"purify.{fn}({name!r}): the state does not exist yet and no shape was given. "
          f"Pass shape= (and dtype=, init=) on first use, or create it with set_state first.")
    prev = frame.states[key] = _context.StateSite(module, name, shape, dtype, init, site,
                                                  key_name=key_name, stack=stack)
  elif shape is not None and (prev.shape != shape or prev.dtype != dtype):
    raise errors.ParamConflictError(errors.PARAM_CONFLICT.format(
        path=prev.path, what="shapes" if prev.shape != shape else "dtypes",
        first_shape=prev.shape, first_dtype=prev.dtype, first_site=prev.site,
        second_shape=shape, second_dtype=dtype, second_site=site).replace("Parameter", "State"))
  elif prev.init is None and init is not None:
    prev.init, prev.key_name = init, key_name
  return prev


def get_state(name: str, shape=None, dtype=jnp.float32, init: Callable | None = None):
  """Read state ``name`` of the current module (creating it on first use).

  ``init(shape, dtype) -> Array`` gives the initial value (as in Haiku; default
  zeros). Example::

      def f(x):
        n = purify.get_state("count", (), jnp.int32, init=jnp.zeros)
        purify.set_state("count", n + 1)
        return x
  """
  frame = _context.current_frame("get_state", repr(name))
  shape = None if shape is None else _norm_shape(shape, "get_state", name)
  dtype = jnp.dtype(dtype)
  exists = (frame.module_path(), name) in frame.states
  # the default initializer applies to a state created here, not to one that
  # set_state created (its initial value stays the first value written)
  st = _state_site(frame, "get_state", name, shape, dtype,
                   init if exists else (init or jnp.zeros))
  frame.bump()
  value = get_state_p.bind(module=st.module, name=name, shape=st.shape, dtype=st.dtype)
  for _, index, _ in frame.state_stack:
    value = jax.lax.dynamic_index_in_dim(value, index, 0, keepdims=False)
  if frame.state_getters:
    ctx = ParamContext(st.path, st.module, name, tuple(value.shape), st.dtype, st.init)
    value = _got(frame.state_getters, value, ctx)
  return value


def set_state(name: str, value) -> None:
  """Write state ``name`` of the current module. The value's shape and dtype must
  match the state's; state created by ``set_state`` starts at the first value set."""
  frame = _context.current_frame("set_state", repr(name))
  weak = isinstance(value, (int, float, bool))
  value = jnp.asarray(value)
  prev = frame.states.get((frame.module_path(), name))
  if prev is not None and weak and value.shape == prev.shape:
    value = value.astype(prev.dtype)
  st = _state_site(frame, "set_state", name, tuple(value.shape), value.dtype, None)
  frame.bump()
  if frame.state_stack:
    value = _stacked_write(frame, st, value)
  set_state_p.bind(value, module=st.module, name=name)


def _stacked_write(frame, st, value):
  """The whole stacked state after this example's / step's slice is written: from the
  innermost stack entry out, a loop entry updates its slice of the state as indexed
  by the outer entries; a vmap entry gathers every example's value."""
  entries = frame.state_stack
  full = None
  for k in range(len(entries) - 1, -1, -1):
    size, index, axis = entries[k]
    if axis is not None:
      # depend on the example index, so vmap's rule assembles even a constant write
      value = jax.lax.select(jnp.broadcast_to(index >= 0, value.shape), value, value)
      value = stack_examples_p.bind(value, size=size, axis=axis)
    else:
      if full is None:
        full = get_state_p.bind(module=st.module, name=st.name, shape=st.shape, dtype=st.dtype)
      cur = full
      for _, outer_index, _ in entries[:k]:
        cur = jax.lax.dynamic_index_in_dim(cur, outer_index, 0, keepdims=False)
      value = jax.lax.dynamic_update_index_in_dim(cur, value, index, 0)
  return value
