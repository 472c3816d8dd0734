"""Stage 2 — trace: run the user's function ONCE into an effectful jaxpr.

``trace(f, args, kwargs, key_aval)`` classifies each argument leaf (arrays and
tracers are traced; hashable Python values are static and part of the cache key;
anything else is a TypeError naming the argument), runs ``f`` under
``jax.make_jaxpr`` with a fresh Frame, and returns a :class:`Program`: the closed
jaxpr, the role of each input and output, and the table of effect sites.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
from typing import Any

import jax
import numpy as np

from purify import _compat
from purify import _context
from purify import errors


@dataclasses.dataclass(frozen=True)
class Program:
  """The IR purify's passes work on.

  ``jaxpr``: a closed jaxpr. ``in_roles`` / ``out_roles``: what each input/output
  is — ``("arg", i)``, ``("param", (module, name))``, ``("rng",)``,
  ``("state", (module, name))``, ``("out", i)``, ``("state_first", key)``.
  ``facts``: what passes so far have established (the pipeline's currency).
  ``init_jaxpr`` / ``init_out_roles``: set by the split-init pass.
  ``init_groups``: set by the group-init pass — tuples of parameter keys that one
  vmapped initializer call creates together.
  ``init_forward`` / ``forward_jaxpr``: set by the split-init pass when state is
  created by ``set_state``: init output ``a`` is output ``b`` of init's forward for
  each pair ``(a, b)``; the forward is ``forward_jaxpr`` (apply's inputs), or apply
  itself when None.
  """
  jaxpr: Any
  in_roles: tuple
  out_roles: tuple
  params: dict
  states: dict
  rng_sites: dict
  key_aval: Any
  facts: frozenset = frozenset()
  init_jaxpr: Any = None
  init_in_roles: tuple = ()
  init_out_roles: tuple = ()
  init_groups: tuple | None = None
  init_forward: tuple = ()
  forward_jaxpr: Any = None
  #: whether the model asked if a key was given (``maybe_next_rng_key``): its program
  #: then depends on it, and one traced with a key serves no call without (and back)
  asks_rng: bool = False

  def jaxprs(self) -> list:
    """``(label, closed jaxpr)`` of each program there is: apply, init, init's forward."""
    out = [("apply", self.jaxpr), ("init", self.init_jaxpr), ("forward", self.forward_jaxpr)]
    return [(label, j) for label, j in out if j is not None]

  def replace(self, **kw) -> "Program":
    return dataclasses.replace(self, **kw)

  def __str__(self):
    s = [f"# in:  {', '.join(_role_str(r) for r in self.in_roles)}",
         f"# out: {', '.join(_role_str(r) for r in self.out_roles)}",
         str(self.jaxpr)]
    if self.init_jaxpr is not None:
      s += ["# init in:  " + ", ".join(_role_str(r) for r in self.init_in_roles),
            "# init out: " + ", ".join(_role_str(r) for r in self.init_out_roles),
            str(self.init_jaxpr)]
    if self.init_forward:
      what = "apply" if self.forward_jaxpr is None else "the forward below"
      s += [f"# init forward ({what}, on apply's inputs): " + ", ".join(
          f"init out {a} <- out {b}" for a, b in self.init_forward)]
      if self.forward_jaxpr is not None:
        s.append(str(self.forward_jaxpr))
    return "\n".join(s)


def _role_str(r):
  if len(r) == 1:
    return r[0]
  v = r[1]
  return f"{r[0]} {v[0]}/{v[1]}" if isinstance(v, tuple) else f"{r[0]} {v}"


@dataclasses.dataclass(frozen=True)
class Signature:
  """How one call's arguments split into traced leaves and static values."""
  treedef: Any
  dynamic: tuple          # (index, shape, dtype, weak_type) of traced leaves
  static: tuple           # (index, type, value) of static leaves


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic, _compat.Tracer))


def signature_of(args, kwargs, what="argument"):
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path((args, kwargs))
  dynamic, static, dyn_vals = [], [], []
  for i, (path, leaf) in enumerate(leaves_with_path):
    if _is_array(leaf):
      aval = jax.typeof(leaf) if not isinstance(leaf, np.ndarray) else None
      if aval is None:
        leaf = np.asarray(leaf)
        # (a float64 NumPy array is a float32 argument unless x64 is on, as in jnp)
        shape, dtype, weak = leaf.shape, jax.dtypes.canonicalize_dtype(leaf.dtype), False
      else:
        shape, dtype, weak = aval.shape, aval.dtype, getattr(aval, "weak_type", False)
      dynamic.append((i, tuple(shape), np.dtype(dtype) if not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) else dtype, weak))
      dyn_vals.append(leaf)
      continue
    try:
      hash(leaf)
    except TypeError:
      raise TypeError(
          f"purify: {what} {_path_str(path)} is a {type(leaf).__name__}, which is neither an "
          f"array nor hashable. Array leaves are traced; hashable Python values (bool, int, "
          f"str, None, tuples of them) are static. Convert it to an array, or make it "
          f"hashable.") from None
    static.append((i, type(leaf), leaf))
  return Signature(treedef, tuple(dynamic), tuple(static)), dyn_vals


def _path_str(path) -> str:
  # path[0] selects args (0) or kwargs (1)
  if not path:
    return "<root>"
  head, rest = path[0], path[1:]
  idx = getattr(head, "idx", None)
  s = "args" if idx == 0 else "kwargs"
  return s + jax.tree_util.keystr(tuple(rest))


def unflatten_args(sig: Signature, dyn_vals):
  n = sig.treedef.num_leaves
  leaves: list[Any] = [None] * n
  for (i, *_), v in zip(sig.dynamic, dyn_vals):
    leaves[i] = v
  for i, _, v in sig.static:
    leaves[i] = v
  return jax.tree_util.tree_unflatten(sig.treedef, leaves)


@dataclasses.dataclass(frozen=True)
class OutInfo:
  treedef: Any
  array_idx: tuple        # leaf indices that are jaxpr outputs
  static: tuple           # (index, value) returned as they were at trace time


@contextlib.contextmanager
def gc_paused():
  """Python's cyclic GC paused while purify traces and rewrites a program (``trace``
  and ``Pipeline.run``): both allocate many small long-lived objects (equations,
  variables, tracers), on which the collector's full passes cost 30-40% of the pass
  pipeline at 10k-30k equations (measured with bench/pipeline.py). Restored
  afterwards, also on errors; left alone when the caller had paused it."""
  was = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if was:
      gc.enable()


def _explain_unbatched_out(e: ValueError, frame) -> None:
  """JAX's error for a vmap output with out_axes=None that varies over the batch
  (jax.jacfwd's and jax.hessian's primal output among them), when the model drew
  per-example keys: say why and what to do (``errors.PER_EXAMPLE_DRAW``)."""
  if not frame.per_example_draws or "but output was batched" not in str(e):
    return
  sites = "\n".join(f"  {frame.rng_sites.get(s, s)} (vmap axis {axis})"
                    for s, axis in frame.per_example_draws.items())
  raise errors.PerExampleDrawError(errors.PER_EXAMPLE_DRAW.format(
      jax_error=str(e).strip(), sites=sites)) from e


def trace(f, sig: Signature, key_aval, *, name="model", rng_given: bool = True):
  """Trace ``f`` once for ``sig``; return (Program, OutInfo). ``rng_given``: whether
  the call has a key (what ``maybe_next_rng_key`` answers)."""
  frame = _context.Frame(key_aval)
  frame.rng_given = rng_given
  out_info = []

  def fn(*dyn):
    frame.top_trace = _compat.staging_trace()
    args, kwargs = unflatten_args(sig, dyn)
    out = f(*args, **kwargs)
    leaves, treedef = jax.tree_util.tree_flatten(out)
    arrays, idx, static = [], [], []
    for i, leaf in enumerate(leaves):
      if _is_array(leaf):
        arrays.append(leaf)
        idx.append(i)
      else:
        static.append((i, leaf))
    out_info.append(OutInfo(treedef, tuple(idx), tuple(static)))
    frame.top_trace = None
    return arrays

  avals = [jax.ShapeDtypeStruct(shape, dtype, weak_type=weak) for _, shape, dtype, weak in sig.dynamic]
  with _context.frame_scope(frame), gc_paused():
    try:
      cj = jax.make_jaxpr(fn)(*avals)
    except ValueError as e:
      _explain_unbatched_out(e, frame)
      raise
    finally:
      frame.top_trace = None         # the frame must not keep the trace alive
  n_out = len(_compat.open_of(cj).outvars)
  program = Program(
      jaxpr=cj,
      in_roles=tuple(("arg", i) for i in range(len(avals))),
      out_roles=tuple(("out", i) for i in range(n_out)),
      params=dict(frame.params), states=dict(frame.states), rng_sites=dict(frame.rng_sites),
      key_aval=key_aval, facts=frozenset({"traced"}), asks_rng=frame.asks_rng)
  return program, out_info[0]
