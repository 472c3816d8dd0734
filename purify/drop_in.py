"""Drop-in transforms with explicit effect policies, and ``lift``.

``purify.vmap`` / ``purify.scan`` have JAX's signatures plus keywords for what loop
semantics does not pick:

  * ``split_rng`` (default True): a new key per example / per step. ``False``:
    one key shared by the whole batch (vmap) / by every step (scan; e.g. the same
    dropout mask at every time step, "variational" dropout). Loops nested inside
    still split per their own semantics.
  * ``param_axes`` (default None: shared): ``0`` gives every example its own
    parameters (an ensemble; members get distinct initial values whatever
    ``split_rng`` says) or every scan step its own (layer stacking). The stored
    parameter has a leading axis of the vmap size / scan length. A dict
    ``{"pattern": 0 or None}`` mixes stacked and shared parameters.
  * ``state_axes`` (default None: one state threaded through; a per-example write
    under vmap is refused): ``0`` gives every example / step its own state, stacked
    along a leading axis (per-member BatchNorm statistics, per-layer statistics in
    a layer stack); ``"mean"`` (vmap) keeps one state and writes the batch mean.

Outside a transform they are exactly ``jax.vmap`` / ``jax.lax.scan``.
"""
from __future__ import annotations

import fnmatch
import functools
import itertools

import jax
import jax.numpy as jnp

from purify import _context
from purify import effects
from purify import errors

_axis_ids = itertools.count()


def _mapped_size(args, in_axes, axis_size):
  if axis_size is not None:
    return axis_size
  axes = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
  for a, ax in zip(args, axes):
    leaves = jax.tree_util.tree_leaves(a)
    if isinstance(ax, int):
      for leaf in leaves:
        return jnp.shape(leaf)[ax]
    elif ax is not None:
      for leaf, lax_ in zip(leaves, jax.tree_util.tree_leaves(ax)):
        if lax_ is not None:
          return jnp.shape(leaf)[lax_]
  raise ValueError("purify.vmap: cannot find the mapped size; pass axis_size=")


def _param_selector(param_axes, where):
  """``param_axes`` -> (stacks anything?, selector(path) -> bool or None for all).

  None: shared. 0: every parameter declared inside gets the leading axis. A dict
  ``{pattern: 0 or None}`` (fnmatch patterns on ``"module/name"``, first match
  wins, unmatched = shared) mixes stacked and shared parameters."""
  if param_axes is None:
    return False, None
  if param_axes == 0 and not isinstance(param_axes, bool):
    return True, None
  if isinstance(param_axes, dict):
    for pat, ax in param_axes.items():
      if not isinstance(pat, str) or ax not in (None, 0) or isinstance(ax, bool):
        raise errors.PurifyError(
            f"{where}(param_axes={param_axes!r}): a param_axes dict maps module-path patterns "
            f"(fnmatch, on 'module/name') to 0 (stacked) or None (shared); got {pat!r}: {ax!r}.")
    items = list(param_axes.items())

    def select(path):
      for pat, ax in items:
        if fnmatch.fnmatchcase(path, pat):
          return ax == 0
      return False
    return True, select
  raise errors.PurifyError(
      f"{where}(param_axes={param_axes!r}): use None (shared parameters), 0 (per-example / "
      f"per-step parameters) or a dict {{'pattern': 0 or None}} mixing the two.")


def _check_state_axes(state_axes, where, allowed):
  if state_axes is None or (state_axes in allowed and not isinstance(state_axes, bool)):
    return
  raise errors.PurifyError(
      f"{where}(state_axes={state_axes!r}): use None (one state threaded through, per-example "
      f"writes refused), 0 (each {'example' if 'vmap' in where else 'step'} its own state, "
      f"stacked along a leading axis)" + (', or "mean" (one shared state; per-example writes '
                                           'are averaged over the batch)' if "mean" in allowed
                                           else "") + ".")


def vmap(fun, in_axes=0, out_axes=0, axis_name=None, axis_size=None, spmd_axis_name=None,
         *, split_rng: bool = True, param_axes=None, state_axes=None):
  """``jax.vmap`` with effect policies (see module docstring).

  Example (an ensemble of 5 MLPs, each with its own parameters)::

      def f(x):                                    # x: (5, batch, 3)
        return purify.vmap(purify.nn.MLP([8, 1]), param_axes=0)(x)
  """
  stacked, select = _param_selector(param_axes, "purify.vmap")
  _check_state_axes(state_axes, "purify.vmap", (0, "mean"))
  if split_rng and not stacked and state_axes is None:
    return jax.vmap(fun, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name,
                    axis_size=axis_size, spmd_axis_name=spmd_axis_name)

  def wrapped(*args, **kwargs):
    frame = _context.maybe_frame()
    if frame is None:
      return jax.vmap(fun, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name,
                      axis_size=axis_size, spmd_axis_name=spmd_axis_name)(*args, **kwargs)
    name = axis_name if axis_name is not None else f"_purify_vmap_{next(_axis_ids)}"
    n = _mapped_size(args, in_axes, axis_size) if (stacked or state_axes == 0) else None

    def inner(idx, *a, **kw):
      if stacked:
        frame.param_stack.append((n, idx, select))
      if state_axes == 0:
        frame.state_stack.append((n, idx, name))
      try:
        return fun(*a, **kw)
      finally:
        if stacked:
          frame.param_stack.pop()
        if state_axes == 0:
          frame.state_stack.pop()

    axes = (0,) + (tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args))
    idx = jnp.arange(n if n is not None else _mapped_size(args, in_axes, axis_size))  # size check by vmap
    shared_before = name in frame.shared_rng_axes
    mean_before = name in frame.mean_state_axes
    if not split_rng:
      frame.shared_rng_axes.add(name)
    if state_axes == "mean":
      frame.mean_state_axes.add(name)
    try:
      return jax.vmap(inner, in_axes=axes, out_axes=out_axes, axis_name=name,
                      axis_size=axis_size, spmd_axis_name=spmd_axis_name)(idx, *args, **kwargs)
    finally:
      if not split_rng and not shared_before:
        frame.shared_rng_axes.discard(name)
      if state_axes == "mean" and not mean_before:
        frame.mean_state_axes.discard(name)

  return wrapped


def scan(f, init, xs=None, length=None, reverse=False, unroll=1, *,
         split_rng: bool = True, param_axes=None, state_axes=None, **kwargs):
  """``jax.lax.scan`` with effect policies. ``param_axes=0`` stacks parameters:
  step ``i`` uses slice ``i`` (layer stacking; with ``reverse=True`` still the
  slice at the position in ``xs``).

  Example (a stack of 4 layers applied in sequence)::

      def f(x):
        layer = lambda h, _: (jnp.tanh(purify.nn.Linear(3)(h)), None)
        return purify.scan(layer, x, None, length=4, param_axes=0)[0]
  """
  stacked, select = _param_selector(param_axes, "purify.scan")
  _check_state_axes(state_axes, "purify.scan", (0,))
  frame = _context.maybe_frame()
  if frame is None or (not stacked and split_rng and state_axes is None):
    return jax.lax.scan(f, init, xs, length=length, reverse=reverse, unroll=unroll, **kwargs)
  if not split_rng:
    user_f = f

    def f(c, x):  # noqa: F811  (the marker must be the body's first equation)
      effects.mark_unsplit_loop()
      return user_f(c, x)
    if not stacked and state_axes is None:
      return jax.lax.scan(f, init, xs, length=length, reverse=reverse, unroll=unroll, **kwargs)
  n = int(length) if length is not None else _leading_size(
      xs, "purify.scan: pass length= when xs is None")

  def body(c, x_i):
    x, i = x_i
    if stacked:
      frame.param_stack.append((n, i, select))
    if state_axes == 0:
      frame.state_stack.append((n, i, None))
    try:
      return f(c, x)
    finally:
      if stacked:
        frame.param_stack.pop()
      if state_axes == 0:
        frame.state_stack.pop()

  return jax.lax.scan(body, init, (xs, jnp.arange(n)), length=n, reverse=reverse,
                      unroll=unroll, **kwargs)


def map(f, xs, *, batch_size=None, split_rng: bool = True, param_axes=None):  # noqa: A001
  """``jax.lax.map`` with effect policies: ``split_rng=False`` gives every element the
  same keys; ``param_axes=0`` gives element ``i`` its own slice of parameters.

  With a ``batch_size`` that does not divide the number of elements, ``jax.lax.map``
  calls ``f`` twice (a scan over full batches, then the remainder on its own), so
  modules ``f`` creates are created twice: the last elements get parameters of their
  own. ``purify.map`` calls ``f`` once: it maps over the elements padded to whole
  batches (with copies of the first elements, so no padding value is ever one ``f``
  has not seen) and drops the padding's results. Keys are per (batch, lane)."""
  stacked, _ = _param_selector(param_axes, "purify.map")
  if _context.maybe_frame() is None:
    return jax.lax.map(f, xs, batch_size=batch_size)
  if batch_size is not None and (stacked or not split_rng):
    raise errors.PurifyError(
        "purify.map(batch_size=...) with split_rng=False or param_axes: not supported; "
        "use purify.vmap inside purify.map over chunks, or drop batch_size.")
  if not stacked and split_rng:
    if batch_size is None:
      return jax.lax.map(f, xs)
    n = _leading_size(xs, "purify.map: xs has no arrays to map over")
    if 0 < n < batch_size:
      batch_size = n                     # (else JAX scans no batch and maps a remainder)
    if n % batch_size == 0:
      return jax.lax.map(f, xs, batch_size=batch_size)
    whole = -(-n // batch_size) * batch_size
    padded = jax.tree_util.tree_map(lambda x: x[jnp.arange(whole) % n], xs)
    ys = jax.lax.map(f, padded, batch_size=batch_size)
    return jax.tree_util.tree_map(lambda y: y[:n], ys)
  return scan(lambda c, x: (c, f(x)), None, xs, split_rng=split_rng, param_axes=param_axes)[1]


def _leading_size(xs, message) -> int:
  """The length of ``xs``'s leading axis (its first leaf's); ``ValueError(message)``
  when it has no leaf."""
  leaves = jax.tree_util.tree_leaves(xs)
  if not leaves:
    raise ValueError(message)
  return int(jnp.shape(leaves[0])[0])


def fori_loop(lower, upper, body_fun, init_val, *, unroll=None, split_rng: bool = True,
              param_axes=None):
  """``jax.lax.fori_loop`` with effect policies. ``split_rng=False``: the same keys
  at every iteration. ``param_axes=0`` (static bounds only): iteration ``i`` uses
  parameter slice ``i - lower`` (a layer stack written as a loop)."""
  stacked, _ = _param_selector(param_axes, "purify.fori_loop")
  kw = {} if unroll is None else {"unroll": unroll}
  if _context.maybe_frame() is None or (split_rng and not stacked):
    return jax.lax.fori_loop(lower, upper, body_fun, init_val, **kw)
  if not stacked:
    return jax.lax.fori_loop(lower, upper, _unsplit(lambda i, v: body_fun(i, v)), init_val, **kw)
  try:
    lo, hi = int(lower), int(upper)
  except (TypeError, jax.errors.ConcretizationTypeError):
    raise errors.PurifyError(
        "purify.fori_loop(param_axes=...): the bounds must be static Python ints (the "
        "number of parameter slices is the trip count).") from None
  out = scan(lambda v, i: (body_fun(i, v), None), init_val, jnp.arange(lo, hi),
             split_rng=split_rng, param_axes=param_axes, unroll=unroll or 1)
  return out[0]


def while_loop(cond_fun, body_fun, init_val, *, split_rng: bool = True):
  """``jax.lax.while_loop``; ``split_rng=False`` gives every iteration the same keys."""
  if split_rng or _context.maybe_frame() is None:
    return jax.lax.while_loop(cond_fun, body_fun, init_val)
  return jax.lax.while_loop(cond_fun, _unsplit(body_fun), init_val)


def _unsplit(body):
  @functools.wraps(body)
  def wrapped(*args):
    effects.mark_unsplit_loop()       # first in the body: keys do not fold the index
    return body(*args)
  return wrapped


def layer_stack(num_layers: int, *, with_per_layer_inputs: bool = False,
                split_rng: bool = True, unroll: int = 1, name: str | None = None,
                state_axes=0):
  """Haiku's ``hk.layer_stack``: apply ``f`` ``num_layers`` times with per-layer
  parameters (stacked along a leading axis), via ``purify.scan(param_axes=0)``.

  As in Haiku, ``stack(f)(*xs)`` carries every positional argument from layer to
  layer (``f(*xs)`` returns them all; one argument: ``f(x) -> x``); with
  ``with_per_layer_inputs=True``, ``stack(f)(x, *ys)`` calls ``f(x, *ys_i) -> (x,
  z)`` with the per-layer inputs sliced along axis 0 and returns ``(x, zs)``, the
  ``z`` stacked. Names are Haiku's: the stack is a module called ``name`` (default
  ``__layer_stack_no_per_layer`` / ``__layer_stack_with_per_layer``; numbered like
  any module) inside which names start afresh: a ``Linear`` in ``f`` is
  ``__layer_stack_no_per_layer/linear``, a parameter outside any module
  ``__layer_stack_no_per_layer/~/w`` — so Haiku checkpoints of layer stacks load.

  Example::

      def f(x):
        block = lambda h: jnp.tanh(purify.nn.Linear(h.shape[-1])(h))
        return purify.layer_stack(4)(block)(x)
      # params["__layer_stack_no_per_layer/linear"]["w"]: (4, d, d)
  """
  if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
    raise ValueError(f"purify.layer_stack({num_layers!r}): num_layers must be a positive int")
  if not name:
    name = "__layer_stack_with_per_layer" if with_per_layer_inputs else "__layer_stack_no_per_layer"

  def deco(f):
    @functools.wraps(f)
    def stacked(*args):
      from purify.module import namespace
      if not args:
        raise TypeError(f"purify.layer_stack(...)({_fn_name(f)}) was called with no "
                        "arguments: pass the input the layers carry, stack(f)(x).")
      if with_per_layer_inputs:
        carry = args[0]
        body = lambda c, ys: f(c, *ys)  # noqa: E731
        xs = args[1:]
      elif len(args) == 1:
        carry = args[0]
        body = lambda c, _: (f(c), None)  # noqa: E731
        xs = None
      else:
        carry = tuple(args)
        body = lambda c, _: (_all_carried(f, f(*c), len(c)), None)  # noqa: E731
        xs = None
      with namespace(name):
        out = scan(body, carry, xs, length=num_layers, split_rng=split_rng,
                   param_axes=0, state_axes=state_axes, unroll=unroll)
      return out if with_per_layer_inputs else out[0]
    return stacked
  return deco


def _fn_name(f) -> str:
  return getattr(f, "__qualname__", None) or type(f).__name__


def _all_carried(f, out, n):
  """A layer of a stack called with ``n`` arguments returns ``n`` values (Haiku)."""
  if not isinstance(out, (tuple, list)) or len(out) != n:
    got = f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else \
        type(out).__name__
    raise TypeError(
        f"purify.layer_stack: the layer {_fn_name(f)} was given {n} arguments, all carried "
        f"from layer to layer (as in hk.layer_stack), so it must return {n} values; it "
        f"returned {got}. Pass what does not change from layer to layer by closing over it.")
  return tuple(out)


def ensemble(num_members: int, *, in_axes=None, split_rng: bool = True, axis_name=None,
             state_axes=0):
  """An ensemble: ``f`` applied by ``num_members`` members, each with its own
  parameters (stacked along a leading axis), outputs stacked. Inputs are shared by
  default (``in_axes=None``); ``in_axes=0`` gives each member its own slice. Each
  member has its own state too (``state_axes=0``).

  Example::

      def f(x):
        return purify.ensemble(5)(purify.nn.MLP([8, 1]))(x)   # (5, batch, 1)
  """
  def deco(f):
    return vmap(f, in_axes=in_axes, axis_size=num_members, axis_name=axis_name,
                split_rng=split_rng, param_axes=0, state_axes=state_axes)
  return deco


# JAX's transforms with nothing for purify to decide: inside a model they already mean
# what the loop means (docs/semantics.md); offered so that code can use purify.* for all.
cond = jax.lax.cond
switch = jax.lax.switch
checkpoint = remat = jax.checkpoint
jit = jax.jit


def value_and_grad(fun, argnums=0, has_aux=False, *, params: bool = False, **jax_kwargs):
  """``jax.value_and_grad``; with ``params=True``, the gradient is w.r.t. the
  parameters ``fun`` reads (``{module: {name: grad}}``, the param tree's structure)
  instead of its arguments — what ``hk.grad`` users do for inner-loop meta-learning.

  ``fun``'s Python runs twice in the trace: once under ``jax.eval_shape`` to find the
  parameters it reads (consuming no module name or key site), once differentiated.
  Use :func:`purify.get_params` for their current values and
  :func:`purify.with_params` to run code with updated ones.
  """
  if not params:
    return jax.value_and_grad(fun, argnums=argnums, has_aux=has_aux, **jax_kwargs)

  @functools.wraps(fun)
  def wrapped(*args, **kwargs):
    frame = _context.current_frame("purify.grad(..., params=True)",
                                   "(gradients w.r.t. a model's params exist inside a transform)")
    del frame
    _, used = effects.params_used(fun, *args, **kwargs)
    tree: dict = {}
    for module, name in used:
      tree.setdefault(module, {})[name] = None
    current = effects.get_params(tree)

    def of_params(p):
      with effects.with_params(p):
        return fun(*args, **kwargs)
    return jax.value_and_grad(of_params, has_aux=has_aux, **jax_kwargs)(current)
  return wrapped


def grad(fun, argnums=0, has_aux=False, *, params: bool = False, **jax_kwargs):
  """``jax.grad``; ``params=True``: w.r.t. the parameters ``fun`` reads (see
  :func:`value_and_grad`).

  Example (one MAML inner step)::

      def model(x, y):
        net = purify.nn.Linear(1)
        loss = lambda: jnp.mean((net(x) - y) ** 2)
        g = purify.grad(loss, params=True)()
        fast = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, purify.get_params(g), g)
        with purify.with_params(fast):
          return loss()
  """
  if not params:
    return jax.grad(fun, argnums=argnums, has_aux=has_aux, **jax_kwargs)
  vg = value_and_grad(fun, has_aux=has_aux, params=True, **jax_kwargs)

  @functools.wraps(fun)
  def wrapped(*args, **kwargs):
    (_, aux), g = vg(*args, **kwargs) if has_aux else ((None, None), vg(*args, **kwargs)[1])
    return (g, aux) if has_aux else g
  return wrapped

jvp = jax.jvp
vjp = jax.vjp


def eval_shape(fun, *args, **kwargs):
  """``jax.eval_shape`` inside a model: parameters declared in ``fun`` are recorded
  and created by init; its RNG draws and state writes have no effect."""
  return jax.eval_shape(fun, *args, **kwargs)


class lift:
  """Register a nested transform's parameters with the enclosing transform.

  ``purify.lift(inner.init, name="inner")(rng, *args)`` returns the inner params,
  each a parameter of the outer transform under ``"<scope>inner/<module>"``.

  Example::

      def outer(x):
        inner = purify.transform(lambda x: purify.nn.MLP([3])(x))
        params = purify.lift(inner.init, name="inner")(purify.next_rng_key(), x)
        return inner.apply(params, None, x)
  """

  def __init__(self, init_fn, name: str = "lifted"):
    self.init_fn = init_fn
    self.name = name

  def __call__(self, rng, *args, **kwargs):
    params, _ = _lift(self.init_fn, self.name, "lift", rng, args, kwargs, with_state=False)
    return params


def _lift_prefix(frame, name):
  if frame.module_stack and frame.module_stack[-1].own_path is not None:
    scope = frame.module_stack[-1].module.module_name    # a namespace: its children's prefix
  else:
    scope = frame.module_path()
  return name if scope == "~" else f"{scope}/{name}"


def _lift(init_fn, name, what, rng, args, kwargs, with_state):
  frame = _context.current_frame(what, repr(name))
  prefix = _lift_prefix(frame, name)
  shapes_args = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) if hasattr(a, "shape") else a,
      (args, kwargs))
  frame.lifting += 1
  try:
    with _context.no_frame():
      shapes = jax.eval_shape(lambda r: init_fn(r, *args, **kwargs), rng) if rng is not None else \
          jax.eval_shape(lambda: init_fn(None, *args, **kwargs))
  finally:
    frame.lifting -= 1
  if with_state and not (isinstance(shapes, tuple) and len(shapes) == 2):
    raise errors.PurifyError(
        f"purify.lift_with_state(name={name!r}): the init function must return (params, state), "
        f"as transform_with_state's init does; use purify.lift for transform's init.")
  key_name = f"lift:{prefix}"

  def inner_init(key, part):
    a, kw = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s,
        shapes_args)
    with _context.no_frame():
      out = init_fn(key, *a, **kw)
    return out[part] if isinstance(out, tuple) else out

  params: dict = {}
  p_tree = shapes[0] if isinstance(shapes, tuple) else shapes
  for module, sub in p_tree.items():
    for pname, sds in sub.items():
      def member_init(key, shape, dtype, module=module, pname=pname):
        return inner_init(key, 0)[module][pname]
      v = _declare_lifted(frame, f"{prefix}/{module}", pname, sds, member_init, key_name)
      params.setdefault(module, {})[pname] = v
  state: dict = {}
  if with_state:
    for module, sub in shapes[1].items():
      for sname, sds in sub.items():
        def state_init(key, shape, dtype, module=module, sname=sname):
          return inner_init(key, 1)[module][sname]
        full = f"{prefix}/{module}"
        with _context.declared_in(full):
          v = effects.get_state(sname, sds.shape, sds.dtype, init=jnp.zeros)
        site = frame.states[(full, sname)]
        site.init, site.key_name = state_init, key_name
        state.setdefault(module, {})[sname] = v
  return params, state


class lift_with_state:
  """``purify.lift`` for ``transform_with_state``: registers the inner transform's
  params AND state with the enclosing transform, under ``"<scope><name>/<module>"``.
  Returns ``(params, state)``; write the inner apply's new state back with
  :class:`LiftWithStateUpdater` (as Haiku's ``hk.lift_with_state``).

  Example::

      inner = purify.transform_with_state(counter_model)
      def outer(x):
        params, state = purify.lift_with_state(inner.init, name="inner")(purify.next_rng_key(), x)
        out, state = inner.apply(params, state, None, x)
        purify.LiftWithStateUpdater("inner").update(state)
        return out
  """

  def __init__(self, init_fn, name: str = "lifted"):
    self.init_fn = init_fn
    self.name = name

  def __call__(self, rng, *args, **kwargs):
    return _lift(self.init_fn, self.name, "lift_with_state", rng, args, kwargs, with_state=True)


class LiftWithStateUpdater:
  """Writes a lifted transform's new state back (see :class:`lift_with_state`); use it
  in the scope where ``lift_with_state(..., name=name)`` was called."""

  def __init__(self, name: str = "lifted"):
    self.name = name

  def update(self, state) -> None:
    frame = _context.current_frame("LiftWithStateUpdater.update", repr(self.name))
    prefix = _lift_prefix(frame, self.name)
    for module, sub in state.items():
      for sname, value in sub.items():
        if (f"{prefix}/{module}", sname) not in frame.states:
          raise errors.PurifyError(
              f"LiftWithStateUpdater({self.name!r}).update: no lifted state '{module}/{sname}' "
              f"under '{prefix}'; call purify.lift_with_state(..., name={self.name!r}) first, "
              f"in the same scope.")
        with _context.declared_in(f"{prefix}/{module}"):
          effects.set_state(sname, value)


def _declare_lifted(frame, module, name, sds, init, key_name):
  with _context.declared_in(module):   # under the lifted module path, not the module stack
    v = effects.param(name, sds.shape, sds.dtype, init=init)
  frame.params[(module, name)].key_name = key_name
  return v
