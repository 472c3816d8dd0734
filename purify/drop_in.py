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
    parameter has a leading axis of the vmap size / scan length.

Outside a transform they are exactly ``jax.vmap`` / ``jax.lax.scan``.
"""
from __future__ import annotations

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


def vmap(fun, in_axes=0, out_axes=0, axis_name=None, axis_size=None, spmd_axis_name=None,
         *, split_rng: bool = True, param_axes=None):
  """``jax.vmap`` with effect policies (see module docstring).

  Example (an ensemble of 5 MLPs, each with its own parameters)::

      def f(x):                                    # x: (5, batch, 3)
        return purify.vmap(purify.nn.MLP([8, 1]), param_axes=0)(x)
  """
  if param_axes not in (None, 0):
    raise errors.PurifyError(
        f"purify.vmap(param_axes={param_axes!r}): only None (shared) and 0 (per-example "
        f"parameters) are supported.")
  if split_rng and param_axes is None:
    return jax.vmap(fun, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name,
                    axis_size=axis_size, spmd_axis_name=spmd_axis_name)

  def wrapped(*args, **kwargs):
    frame = _context.maybe_frame()
    if frame is None:
      return jax.vmap(fun, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name,
                      axis_size=axis_size, spmd_axis_name=spmd_axis_name)(*args, **kwargs)
    name = axis_name if axis_name is not None else f"_purify_vmap_{next(_axis_ids)}"
    n = _mapped_size(args, in_axes, axis_size) if param_axes == 0 else None

    def inner(idx, *a, **kw):
      if param_axes == 0:
        frame.param_stack.append((n, idx))
      try:
        return fun(*a, **kw)
      finally:
        if param_axes == 0:
          frame.param_stack.pop()

    axes = (0,) + (tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args))
    idx = jnp.arange(n if n is not None else _mapped_size(args, in_axes, axis_size))  # size check by vmap
    shared_before = name in frame.shared_rng_axes
    if not split_rng:
      frame.shared_rng_axes.add(name)
    try:
      return jax.vmap(inner, in_axes=axes, out_axes=out_axes, axis_name=name,
                      axis_size=axis_size, spmd_axis_name=spmd_axis_name)(idx, *args, **kwargs)
    finally:
      if not split_rng and not shared_before:
        frame.shared_rng_axes.discard(name)

  return wrapped


def scan(f, init, xs=None, length=None, reverse=False, unroll=1, *,
         split_rng: bool = True, param_axes=None, **kwargs):
  """``jax.lax.scan`` with effect policies. ``param_axes=0`` stacks parameters:
  step ``i`` uses slice ``i`` (layer stacking; with ``reverse=True`` still the
  slice at the position in ``xs``).

  Example (a stack of 4 layers applied in sequence)::

      def f(x):
        layer = lambda h, _: (jnp.tanh(purify.nn.Linear(3)(h)), None)
        return purify.scan(layer, x, None, length=4, param_axes=0)[0]
  """
  if param_axes not in (None, 0):
    raise errors.PurifyError(f"purify.scan(param_axes={param_axes!r}): only None and 0 are supported.")
  frame = _context.maybe_frame()
  if frame is None or (param_axes is None and split_rng):
    return jax.lax.scan(f, init, xs, length=length, reverse=reverse, unroll=unroll, **kwargs)
  if not split_rng:
    user_f = f

    def f(c, x):  # noqa: F811  (the marker must be the body's first equation)
      effects.mark_unsplit_loop()
      return user_f(c, x)
    if param_axes is None:
      return jax.lax.scan(f, init, xs, length=length, reverse=reverse, unroll=unroll, **kwargs)
  if length is None:
    leaves = jax.tree_util.tree_leaves(xs)
    if not leaves:
      raise ValueError("purify.scan: pass length= when xs is None")
    length = jnp.shape(leaves[0])[0]
  n = int(length)

  def body(c, x_i):
    x, i = x_i
    frame.param_stack.append((n, i))
    try:
      return f(c, x)
    finally:
      frame.param_stack.pop()

  return jax.lax.scan(body, init, (xs, jnp.arange(n)), length=n, reverse=reverse,
                      unroll=unroll, **kwargs)


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
    frame = _context.current_frame("lift", repr(self.name))
    scope = frame.module_path()
    prefix = self.name if scope == "~" else f"{scope}/{self.name}"
    shapes_args = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) if hasattr(a, "shape") else a,
        (args, kwargs))
    init_fn = self.init_fn
    frame.lifting += 1
    try:
      with _context.no_frame():
        shapes = jax.eval_shape(lambda r: init_fn(r, *args, **kwargs), rng) if rng is not None else \
            jax.eval_shape(lambda: init_fn(None, *args, **kwargs))
    finally:
      frame.lifting -= 1
    key_name = f"lift:{prefix}"
    out = {}
    tree = shapes[0] if isinstance(shapes, tuple) else shapes
    for module, sub in tree.items():
      for pname, sds in sub.items():
        def member_init(key, shape, dtype, module=module, pname=pname):
          a, kw = jax.tree_util.tree_map(
              lambda s: jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s,
              shapes_args)
          with _context.no_frame():
            p = init_fn(key, *a, **kw)
          p = p[0] if isinstance(p, tuple) else p
          return p[module][pname]
        full_module = f"{prefix}/{module}"
        v = _declare_lifted(frame, full_module, pname, sds, member_init, key_name)
        out.setdefault(module, {})[pname] = v
    return out


def _declare_lifted(frame, module, name, sds, init, key_name):
  from purify import effects
  with _context.declared_in(module):   # under the lifted module path, not the module stack
    v = effects.param(name, sds.shape, sds.dtype, init=init)
  frame.params[(module, name)].key_name = key_name
  return v
