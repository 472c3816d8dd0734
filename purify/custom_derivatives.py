"""purify.custom_jvp / purify.custom_vjp: JAX's custom derivatives for functions that
read purify parameters, state and keys.

Plain ``jax.custom_jvp``/``custom_vjp`` inside a model work forward, but JAX re-runs
the user's rules (Python) when it differentiates, outside purify's trace, so purify
refuses to differentiate them (CustomRuleEffectError). These drop-ins have JAX's
exact signature (``nondiff_argnums``, ``nondiff_argnames``, ``defjvp(...,
symbolic_zeros)``, ``defjvps``, ``defvjp(..., symbolic_zeros, optimize_remat)``);
outside a transform they ARE JAX's (every call goes to a ``jax.custom_jvp`` /
``custom_vjp`` built with the same arguments). Inside a transform, at the call:

1. **discover** what the function reads: it is traced once (``jax.make_jaxpr``) in
   the model's frame, which names its modules and declares its parameters and state
   exactly as a plain call would (the frame's naming advances as if it ran once);
2. **read** those implicit inputs where the call is: the parameters' current values
   (slices under ``param_axes``, ``with_params`` and getters applied), the states'
   current values, and one key per ``next_rng_key()`` the function draws, drawn at
   the same sites as a plain call would draw them (so the same keys);
3. call a ``jax.custom_jvp``/``custom_vjp`` whose extra leading arguments are those
   values. The user's function and rules then run as a **replay**: traced in a fresh
   frame that names modules as at the call, and the effects they bind are resolved
   against the values passed in (by the threading rewriter of the passes), so no
   effect reaches JAX's custom-derivative machinery. JAX may replay long after the
   trace ended (``jax.grad`` of ``apply``): it sees the same parameters, state and
   keys as the call did.

The user's rule gives the derivative w.r.t. the arguments; parameters and state get
JAX's own derivative of the function (the rule says nothing about them); keys are
not differentiable. Refused, with an error naming the function and the fix:
``set_state`` inside (return the value, write it outside), and keys drawn inside a
loop (scan/while/fori) or a ``jax.vmap`` *within* the function (pass keys in).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from purify import _compat
from purify import _context
from purify import effects
from purify import errors
from purify.passes import _thread
from purify.passes._assemble import jaxprs_in

_LOOPS = frozenset({"scan", "while", "shard_map", "xla_pmap"})
SymbolicZero = jax.custom_derivatives.SymbolicZero
CustomVJPPrimal = jax.custom_derivatives.CustomVJPPrimal

KEY_IN_LOOP = """\
purify.{kind} function {fun!r}: next_rng_key() (site {site!r}) is drawn inside {where}
within the function. purify draws the function's keys when it is called (one per
draw, the keys a plain call would get) and hands the same keys to its rules when JAX
differentiates; a draw that must differ per iteration / per example cannot be handed
over that way. Draw the keys outside the custom function and pass them in as an
argument, e.g.
        keys = jax.random.split(purify.next_rng_key(), n)
        y = {fun}(keys, x)"""

SET_STATE_INSIDE = """\
purify.{kind} function {fun!r} writes state {path!r} with purify.set_state.
A custom-derivative function may read state (get_state) but not write it: JAX re-runs
the function and its rules when it differentiates, so the write would not happen once.
Return the new value from the function and write it outside:
        y, new = {fun}(x)
        purify.set_state({name!r}, new)"""

NOT_READ_AT_CALL = """\
purify.{kind} function {fun!r}: {what} is used when JAX runs the function or its rules
{when}, but the function did not use it when it was called. The function must read
the same parameters, state and keys every time it runs, and a rule may only use what
the function uses (modules a rule creates are named as at the call: its n-th module
of a kind is the function's n-th)."""


def _fun_name(fun) -> str:
  return getattr(fun, "__name__", None) or repr(fun)


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic, _compat.Tracer))


# ----------------------------------------------------------------------------- the frame at the call
class _Snapshot:
  """The model frame's naming just before the call: every replay starts from it, so
  the function's modules and key sites get the names they had at the call."""

  def __init__(self, frame):
    self.key_aval = frame.key_aval
    self.rng_given = frame.rng_given
    self.module_counts = dict(frame.module_counts)
    self.module_names = set(frame.module_names)
    self.scopes = [(s.module, s.method_name, dict(s.counters), set(s.used), s.own_path)
                   for s in frame.module_stack]
    self.rng_counts = dict(frame.rng_counts)
    self.states: dict = {}        # (module, name) -> StateSite (unstacked, as the function sees it)
    self.creators, self.getters = list(frame.creators), list(frame.getters)
    self.state_getters = list(frame.state_getters)

  def apply_naming(self, r):
    r.module_counts = dict(self.module_counts)
    r.module_names = set(self.module_names)
    r.module_stack = [_context.ModuleScope(m, n, dict(c), set(u), own)
                      for m, n, c, u, own in self.scopes]
    r.rng_counts = dict(self.rng_counts)

  def frame(self, owner):
    r = _context.Frame(self.key_aval)
    r.rng_given = self.rng_given
    self.apply_naming(r)
    r.states = {k: dataclasses.replace(st) for k, st in self.states.items()}
    r.creators, r.getters = list(self.creators), list(self.getters)
    r.state_getters = list(self.state_getters)
    r.purify_custom = (owner, self)     # marks a replay of ``owner`` (see _Base.fun)
    return r


class _isolated:
  """Context manager: inside a replay of a custom function, a call of the function
  itself (``f(x)`` or ``f.fun(x)`` in a rule) names modules and key sites as at the
  call, and leaves the rule's own naming as it was: the rule's n-th draw and the
  function's n-th draw get the same key, whatever the order."""

  def __init__(self, frame, snap):
    self.frame, self.snap = frame, snap

  def __enter__(self):
    f = self.frame
    self.saved = (f.module_counts, f.module_names, f.module_stack, f.rng_counts)
    self.snap.apply_naming(f)

  def __exit__(self, *exc):
    f = self.frame
    f.module_counts, f.module_names, f.module_stack, f.rng_counts = self.saved
    return False


@dataclasses.dataclass
class _Found:
  params: dict          # (module, name) -> None, in order of first read
  states: dict
  sites: list           # rng sites


def _discover(frame, kind, fun, args) -> _Found:
  """Trace ``fun(*args)`` in the model's frame; what it reads. Module naming advances
  (as a plain call's would); the RNG counters are restored so the draws made at the
  call get the sites the function drew at."""
  rng_counts = dict(frame.rng_counts)
  try:
    closed = jax.make_jaxpr(lambda: fun(*args))()
  finally:
    frame.rng_counts.clear()
    frame.rng_counts.update(rng_counts)
  found = _Found({}, {}, [])
  name = _fun_name(fun)

  def walk(j, where):
    for e in _compat.open_of(j).eqns:
      p = e.params
      if e.primitive is effects.param_p:
        found.params[(p["module"], p["name"])] = None
      elif e.primitive is effects.get_state_p:
        found.states[(p["module"], p["name"])] = None
      elif e.primitive is effects.set_state_p:
        raise errors.CustomRuleEffectError(SET_STATE_INSIDE.format(
            kind=kind, fun=name, path=f"{p['module']}/{p['name']}", name=p["name"]))
      elif e.primitive is effects.rng_p:
        if where is None and p["batch"]:
          where = f"a jax.vmap (batch {tuple(p['batch'])})"
        if where is not None:
          site = "split_rng=False" if p["site"] == effects.UNSPLIT_SITE else p["site"]
          raise errors.CustomRuleEffectError(KEY_IN_LOOP.format(
              kind=kind, fun=name, site=site, where=where))
        if p["site"] not in found.sites:
          found.sites.append(p["site"])
      for sub in jaxprs_in(e.params):
        walk(sub, where if where is not None or e.primitive.name not in _LOOPS
             else f"a {e.primitive.name}")

  walk(closed, None)
  return found


def _read_implicit(frame, kind, fun, args):
  """(snapshot, params, state, keys) for a call of ``fun`` at this point of the model."""
  snap = _Snapshot(frame)
  found = _discover(frame, kind, fun, args)
  # a parameter's value as stored (slice under param_axes, with_params applied): the
  # replays run the interceptors (custom_creator/getter) active here themselves
  params = {}
  for m, n in found.params:
    site = frame.params[(m, n)]
    n_stack = len(frame.stack_for(site.path))
    params[(m, n)] = effects._declare_param(frame, m, n, site.shape[n_stack:], site.dtype,
                                            site.init)
  state = {}
  for m, n in found.states:
    st = frame.states[(m, n)]
    frame.bump()
    v = effects.get_state_p.bind(module=m, name=n, shape=st.shape, dtype=st.dtype)
    for _, index, _ in frame.state_stack:
      v = jax.lax.dynamic_index_in_dim(v, index, 0, keepdims=False)
    state[(m, n)] = v
    snap.states[(m, n)] = dataclasses.replace(st, shape=tuple(st.shape[len(st.stack):]),
                                              stack=(), init=None)
  keys = {}
  user_sites = {s: frame.rng_sites.get(s) for s in found.sites}
  for site in sorted(found.sites, key=lambda s: (s.rsplit("#", 1)[0], int(s.rsplit("#", 1)[1]))):
    module = site.rsplit("#", 1)[0]
    if f"{module}#{frame.rng_counts.get(module, 0)}" != site:
      raise AssertionError(f"purify internal: {kind} {_fun_name(fun)}: key site {site!r} is "
                           f"not the next one of module {module!r}")
    with _context.declared_in(module):
      keys[site] = effects.next_rng_key()
  frame.rng_sites.update({s: u for s, u in user_sites.items() if u is not None})
  return snap, params, state, keys


# ----------------------------------------------------------------------------- replay
class _Resolve(_thread.ThreadingPass):
  """Effects bound by a replay become channels whose values are the implicit inputs."""

  name = "custom_derivative_replay"
  effect_types = effects.ALL_EFFECT_TYPES

  def __init__(self, vals, kind, fun, when):
    self.vals, self.kind, self.fun, self.when = vals, kind, fun, when
    self.avals: dict = {}

  def channel_aval(self, ch):
    return self.avals[ch]


def _resolve_leaf(pass_, rw, eqn):
  p = eqn.params
  prim = eqn.primitive
  name = _fun_name(pass_.fun)
  if prim is effects.set_state_p:
    raise errors.CustomRuleEffectError(SET_STATE_INSIDE.format(
        kind=pass_.kind, fun=name, path=f"{p['module']}/{p['name']}", name=p["name"]))
  if prim is effects.rng_p:
    ch, what = ("key", p["site"]), f"next_rng_key() (site {p['site']!r})"
    if p["batch"]:
      raise errors.CustomRuleEffectError(KEY_IN_LOOP.format(
          kind=pass_.kind, fun=name, site=p["site"], where="a jax.vmap"))
  elif prim is effects.param_p:
    ch, what = ("param", p["module"], p["name"]), f"parameter '{p['module']}/{p['name']}'"
  else:
    ch, what = ("state", p["module"], p["name"]), f"state '{p['module']}/{p['name']}'"
  if ch not in pass_.vals:
    raise errors.CustomRuleEffectError(NOT_READ_AT_CALL.format(
        kind=pass_.kind, fun=name, what=what, when=pass_.when))
  pass_.avals[ch] = eqn.outvars[0].aval
  rw.subst[eqn.outvars[0]] = rw.read(ch)


_Resolve.leaf_rules = {effects.param_p: _resolve_leaf, effects.rng_p: _resolve_leaf,
                       effects.get_state_p: _resolve_leaf, effects.set_state_p: _resolve_leaf}


def _vals(params, state, keys):
  out = {("param",) + k: v for k, v in params.items()}
  out.update({("state",) + k: v for k, v in state.items()})
  out.update({("key", s): v for s, v in keys.items()})
  return out


def _replay(owner, snap, vals, kind, fun, when, fn, *args):
  """``fn(*args)`` run as at the call: modules named from ``snap``, and every
  parameter / state / key it reads taken from ``vals``."""
  box = {}

  def run():
    leaves, tree = jax.tree_util.tree_flatten(fn(*args))
    dyn = [_is_array(x) for x in leaves]
    box["out"] = (tree, dyn, [None if d else x for x, d in zip(leaves, dyn)])
    return [x for x, d in zip(leaves, dyn) if d]

  with _context.frame_scope(snap.frame(owner)):
    closed = jax.make_jaxpr(run)()
  worker = _Resolve(vals, kind, fun, when)
  rw = _thread.Rewriter(worker, closed, where=f"purify.{kind} {_fun_name(fun)}")
  t = rw.run()
  chans = t.ins
  j = t.finish([t.chan_in(c, worker.channel_aval(c)) for c in chans] + t.orig_in, t.orig_out)
  outs = iter(_compat.eval_jaxpr(_compat.open_of(j), _compat.consts_of(j),
                                 *[vals[c] for c in chans]))
  tree, dyn, static = box["out"]
  return jax.tree_util.tree_unflatten(tree, [next(outs) if d else s for d, s in zip(dyn, static)])


# ----------------------------------------------------------------------------- helpers
def _positional(fun, args, kwargs, kind):
  """The arguments as JAX's custom_jvp/custom_vjp resolve them: bound to ``fun``'s
  signature, defaults filled in, all positional."""
  try:
    return tuple(_compat.resolve_kwargs(fun, args, kwargs))
  except TypeError as e:
    raise TypeError(f"The input arguments to the {kind}-decorated function {_fun_name(fun)} "
                    f"could not be resolved to positional-only arguments. Binding failed "
                    f"with the error:\n{e}") from e


def _merge_lists(nondiff, static, diff):
  n = len(static) + len(diff)
  s, d = iter(static), iter(diff)
  return [next(s) if i in nondiff else next(d) for i in range(n)]


def _zeros(aval):
  if aval.dtype == jax.dtypes.float0:
    return np.zeros(aval.shape, jax.dtypes.float0)
  return jnp.zeros(aval.shape, aval.dtype)


def _instantiate(tree):
  return jax.tree_util.tree_map(lambda t: _zeros(t.aval) if type(t) is SymbolicZero else t, tree,
                                is_leaf=lambda t: type(t) is SymbolicZero)


def _all_symbolic_zero(tree) -> bool:
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda t: type(t) is SymbolicZero)
  return all(type(t) is SymbolicZero for t in leaves)


def _add_tangent(user, implicit):
  if type(user) is SymbolicZero:
    return implicit
  if getattr(implicit, "dtype", None) == jax.dtypes.float0:
    return user
  return user + implicit


def _unwrap(x):
  return jax.tree_util.tree_map(lambda v: v.value if type(v) is CustomVJPPrimal else v, x,
                                is_leaf=lambda v: type(v) is CustomVJPPrimal)


class _Base:
  _kind = "?"

  def __getattr__(self, name):
    # as JAX's: unknown attributes come from the wrapped function
    if name.startswith("__") or name == "_jax":
      raise AttributeError(name)
    return getattr(self._jax.fun, name)

  @property
  def fun(self):
    """The wrapped function (in a replay of this function: it, run with the naming
    of the call; see ``_isolated``)."""
    frame = _context.maybe_frame()
    mine = getattr(frame, "purify_custom", None)
    if mine is not None and mine[0] is self:
      fun = self._jax.fun

      @functools.wraps(fun)
      def at_call_naming(*args, **kwargs):
        with _isolated(frame, mine[1]):
          return fun(*args, **kwargs)
      return at_call_naming
    return self._jax.fun

  @property
  def nondiff_argnums(self):
    return self._jax.nondiff_argnums

  @property
  def symbolic_zeros(self):
    return self._jax.symbolic_zeros

  def __call__(self, *args, **kwargs):
    frame = _context.maybe_frame()
    if frame is None or not self._has_rule():
      return self._jax(*args, **kwargs)
    mine = getattr(frame, "purify_custom", None)
    if mine is not None and mine[0] is self:      # the function called in its own rule
      with _isolated(frame, mine[1]):
        return self._call_in(frame, args, kwargs)
    return self._call_in(frame, args, kwargs)


# ----------------------------------------------------------------------------- custom_vjp
class custom_vjp(_Base):
  """``jax.custom_vjp`` for functions that read purify parameters, state and keys (see
  the module docstring): the same constructor, ``defvjp`` and call. ``bwd`` returns
  cotangents for the (differentiable) arguments; parameters and state the function
  reads get JAX's derivative of ``fun``; its keys are drawn once, at the call.

  Example::

      @purify.custom_vjp
      def clipped(x):
        return purify.nn.Linear(2)(x)

      clipped.defvjp(lambda x: (clipped.fun(x), x),
                     lambda x, g: (jnp.clip(g @ jnp.ones((2, x.shape[-1])), -1, 1),))
  """
  _kind = "custom_vjp"

  def __init__(self, fun, nondiff_argnums=(), nondiff_argnames=()):
    functools.update_wrapper(self, fun)
    self._jax = jax.custom_vjp(fun, nondiff_argnums=nondiff_argnums,
                               nondiff_argnames=nondiff_argnames)
    self._defvjp_kwargs: dict = {}

  @property
  def fwd(self):
    return self._jax.fwd

  @property
  def bwd(self):
    return self._jax.bwd

  @property
  def optimize_remat(self):
    return self._jax.optimize_remat

  def defvjp(self, fwd, bwd, symbolic_zeros=False, optimize_remat=False, **kwargs):
    """As ``jax.custom_vjp.defvjp`` (extra keywords of this JAX version pass through)."""
    self._jax.defvjp(fwd, bwd, symbolic_zeros=symbolic_zeros, optimize_remat=optimize_remat,
                     **kwargs)
    self._defvjp_kwargs = dict(kwargs)

  def _has_rule(self):
    return bool(self._jax.fwd and self._jax.bwd)

  def _call_in(self, frame, args, kwargs):
    kind = self._kind
    args = _positional(self._jax.fun, args, kwargs, kind)
    nondiff = frozenset(self._jax.nondiff_argnums)
    fun, fwd, bwd = self._jax.fun, self._jax.fwd, self._jax.bwd
    sz = self._jax.symbolic_zeros
    snap, params, state, keys = _read_implicit(frame, kind, fun, args)

    def primal(imp, ks, *a):
      return _replay(self, snap, _vals(*imp, ks), kind, fun, "(the function)", fun, *a)

    def primal_fwd(imp, ks, *a):
      imp, ks = _unwrap(imp), _unwrap(ks)
      out, res = _replay(self, snap, _vals(*imp, ks), kind, fun, "(the fwd rule)", fwd, *a)
      diff = [_unwrap(x) for i, x in enumerate(a) if i not in nondiff]
      return out, (imp, ks, diff, res)

    def primal_bwd(*static_saved_g):
      *static, (imp, ks, diff, res), g = static_saved_g
      cts = _replay(self, snap, _vals(*imp, ks), kind, fun, "(the bwd rule)", bwd, *static, res, g)
      if _all_symbolic_zero(g):
        imp_ct = None
      else:
        full = _merge_lists(nondiff, static, diff)
        _, pull = jax.vjp(lambda q: primal(q, ks, *full), imp)
        imp_ct = pull(_instantiate(g))[0]
      if isinstance(cts, (tuple, list)):
        return (imp_ct, None) + tuple(cts)
      return cts          # not a tuple: JAX's own error about the bwd output's structure

    f = jax.custom_vjp(primal, nondiff_argnums=tuple(i + 2 for i in sorted(nondiff)))
    f.defvjp(primal_fwd, primal_bwd, symbolic_zeros=sz, optimize_remat=self._jax.optimize_remat,
             **self._defvjp_kwargs)
    return f((params, state), keys, *args)


# ----------------------------------------------------------------------------- custom_jvp
class custom_jvp(_Base):
  """``jax.custom_jvp`` for functions that read purify parameters, state and keys (see
  the module docstring): the same constructor, ``defjvp``, ``defjvps`` and call. The
  rule gives the tangent w.r.t. the arguments; the tangent from the parameters and
  state is JAX's own ``jvp`` of ``fun``, added to it.

  Example::

      @purify.custom_jvp
      def soft(x):
        return jnp.log1p(jnp.exp(x * purify.param("s", (), init=jax.nn.initializers.ones)))

      @soft.defjvp
      def soft_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        s = purify.param("s", (), init=jax.nn.initializers.ones)
        return soft.fun(x), jax.nn.sigmoid(x * s) * s * t
  """
  _kind = "custom_jvp"

  def __init__(self, fun, nondiff_argnums=(), nondiff_argnames=()):
    functools.update_wrapper(self, fun)
    self._jax = jax.custom_jvp(fun, nondiff_argnums=nondiff_argnums,
                               nondiff_argnames=nondiff_argnames)

  @property
  def jvp(self):
    return self._jax.jvp

  def defjvp(self, jvp, symbolic_zeros=False):
    """As ``jax.custom_jvp.defjvp``; returns ``jvp`` (usable as a decorator)."""
    return self._jax.defjvp(jvp, symbolic_zeros=symbolic_zeros)

  def defjvps(self, *jvps):
    """As ``jax.custom_jvp.defjvps``: one ``jvp_i(tangent_i, primal_out, *primals)``
    per argument (``None``: no dependence); their tangents are summed."""
    if self._jax.nondiff_argnums:
      raise TypeError("Can't use ``defjvps`` with ``nondiff_argnums``.")

    def jvp(primals, tangents):
      out = self(*primals)
      zeros = jax.tree_util.tree_map(lambda x: _zeros(jax.typeof(x).to_tangent_aval()), out)
      parts = [j(t, out, *primals) if j else zeros for t, j in zip(tangents, jvps)]
      return out, jax.tree_util.tree_map(lambda _, *ts: functools.reduce(_add_tangent, ts),
                                         out, *parts)

    self.defjvp(jvp)

  def _has_rule(self):
    return bool(self._jax.jvp)

  def _call_in(self, frame, args, kwargs):
    kind = self._kind
    args = _positional(self._jax.fun, args, kwargs, kind)
    fun, rule, sz = self._jax.fun, self._jax.jvp, self._jax.symbolic_zeros
    n = len(args)
    nondiff = [i for i in self._jax.nondiff_argnums if i < n]
    # JAX passes non-differentiable arguments to the rule by closure; a traced one would
    # be stale when JAX differentiates the traced program later (jax.grad of apply), so
    # those go in as ordinary inputs, with their gradient stopped as JAX stops it
    static_nd = frozenset(i for i in nondiff
                          if not any(map(_is_array, jax.tree_util.tree_leaves(args[i]))))
    args = tuple(jax.tree_util.tree_map(lambda v: jax.lax.stop_gradient(v) if _is_array(v) else v, a)
                 if i in nondiff and i not in static_nd else a for i, a in enumerate(args))
    diff = [i for i in range(n) if i not in nondiff]
    snap, params, state, keys = _read_implicit(frame, kind, fun, args)

    def primal(imp, ks, *a):
      return _replay(self, snap, _vals(*imp, ks), kind, fun, "(the function)", fun, *a)

    def primal_jvp(*static_primals_tangents):
      *static, primals, tangents = static_primals_tangents
      imp, ks, *dyn = primals
      t_imp, _, *t_dyn = tangents
      full = _merge_lists(static_nd, static, dyn)
      t_full = _merge_lists(static_nd, [None] * len(static), t_dyn)
      t_diff = [t_full[i] for i in diff]
      if not sz:
        t_diff = [_instantiate(t) for t in t_diff]
      out, t_out = _replay(self, snap, _vals(*imp, ks), kind, fun, "(the jvp rule)", rule,
                           *[full[i] for i in nondiff], tuple(full[i] for i in diff), tuple(t_diff))
      if _all_symbolic_zero(t_imp):
        return out, t_out
      _, t_from_imp = jax.jvp(lambda q: primal(q, ks, *full), (imp,), (_instantiate(t_imp),))
      return out, jax.tree_util.tree_map(_add_tangent, t_out, t_from_imp,
                                         is_leaf=lambda t: type(t) is SymbolicZero)

    f = jax.custom_jvp(primal, nondiff_argnums=tuple(i + 2 for i in sorted(static_nd)))
    f.defjvp(primal_jvp, symbolic_zeros=True)
    return f((params, state), keys, *args)
