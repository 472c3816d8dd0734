"""Stage 4 — lowering: run a pure program.

An :class:`Executable` wraps one pure closed jaxpr in ONE ``jax.jit`` object created
once (a new ``jax.jit`` per call would re-trace and recompile). Called eagerly it
runs the cached compiled executable; called under a user's transform (``jax.jit``,
``jax.vmap``, ``jax.grad`` of ``apply``) it binds the jaxpr as one equation, so the
user's Python never runs again.

Init may have a *forward* (``Program.init_forward``): the first values of
``set_state``-created state come from running the model's program once, on the
parameters and initial states init computes. The forward is another Executable —
apply's own, when the first values are the values apply returns — called on
apply's inputs (``forward=(executable, ins, outs)``): an eager init compiles
apply's program, and the user's first apply with the same shapes finds it
compiled. Under a trace the two are composed in one jitted function.

An eager init is also staged (``staged=True`` and :func:`staged_plan`). The
group-init pass creates the parameters that share an initializer as ONE stacked
array and returns member ``i`` as its row ``i``; fuse-init-tails computes alike
initializer tails once and each draw is a slice of the result. Inside one XLA
program every such output is a kernel of its own (XLA cannot write several output
buffers from one kernel; on CPU a kernel costs ~15-25 ms of compile, an initializer
tail far more). So an eager init runs the program without these *views* (each
value they view returned once), then takes them — on CPU by the host copying each
(a memcpy, no compile), elsewhere by one jitted program per viewed value — then
runs the forward on them. Constant outputs (the zeros and ones of biases, norm
scales, counters: literals broadcast) are copied by the host into new buffers,
not compiled (on CPU each would be a kernel). The fused threefry hash of init's draws
(fuse-random-bits) is a program of its own that runs first: XLA CPU would repeat
it in every kernel that reads its bits. The parameters are bitwise what the one
program computes.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np

from purify import _compat
from purify.passes.dce import dce_closed
from purify.passes import fuse_random_bits
from purify.passes.fuse_random_bits import HASH_CALL
from purify.passes.split_init import ROWS_CALL


@dataclasses.dataclass(frozen=True)
class _Staged:
  """How an eager init runs: ``hashes`` (or None) computes the fused threefry
  hashes' outputs; ``first`` (the program without its row slices, taking the hashes'
  outputs after its own inputs when ``hashes`` is set) returns each stacked value
  once; ``outs[j]`` is ``(k, view)``: ``first``'s output ``k`` seen through ``view``
  (:func:`_view_of`; ``()``: the whole output), or ``(None, value)``: a constant
  (numpy) the host copies."""
  first: object
  outs: tuple
  hashes: object = None


def _row_of(eqn_of, v):
  """``(G, i)`` when ``v`` is result ``i`` of split_init's rows call on ``G`` (row
  ``i`` of the stacked values of a group), else None."""
  if not isinstance(v, _compat.Var):
    return None
  e = eqn_of.get(id(v))
  if (e is None or e.primitive is not _compat.jit_p or e.params.get("name") != ROWS_CALL
      or jax.dtypes.issubdtype(e.invars[0].aval.dtype, jax.dtypes.extended)):
    return None
  return e.invars[0], e.outvars.index(v)


def _view_of(eqn_of, v):
  """``(base, view)``: ``v`` is ``base`` seen through ``view``, a tuple of
  ``("slice", a, b)`` (of a 1-D value), ``("reshape", shape)`` and ``("row", i)``
  (split_init's rows call), applied in order; ``(v, ())`` when it is none of them.
  Such outputs are taken from ``base`` after the run (on CPU by the host): inside
  the program each would be a kernel of its own (XLA writes one buffer a kernel)."""
  view = []
  while isinstance(v, _compat.Var) and not jax.dtypes.issubdtype(v.aval.dtype, jax.dtypes.extended):
    r = _row_of(eqn_of, v)
    if r is not None:
      view.append(("row", r[1]))
      v = r[0]
      continue
    e = eqn_of.get(id(v))
    if e is None or len(e.invars) != 1 or not isinstance(e.invars[0], _compat.Var):
      break
    x, name = e.invars[0], e.primitive.name
    if name == "reshape" and e.params.get("dimensions") is None:
      view.append(("reshape", tuple(v.aval.shape)))
    elif (name == "slice" and len(x.aval.shape) == 1
          and e.params.get("strides") in (None, (1,))):
      view.append(("slice", int(e.params["start_indices"][0]), int(e.params["limit_indices"][0])))
    else:
      break
    v = x
  return v, tuple(reversed(view))


def _seen(x, view):
  """``x`` (a numpy or JAX array) seen through ``view`` (see :func:`_view_of`)."""
  for op in view:
    if op[0] == "slice":
      x = x[op[1]:op[2]]
    elif op[0] == "reshape":
      x = x.reshape(op[1])
    else:
      x = x[op[1]]
  return x


def _constant_of(eqn_of, known, v, depth=0):
  """The value of ``v`` as a numpy array (a read-only broadcast view) when it is a
  constant: a literal, a known constant (``known``: id -> value), or a broadcast or
  reshape of one; else None."""
  if isinstance(v, _compat.Literal):
    if v.aval.dtype != np.asarray(v.val).dtype and not np.can_cast(
        np.asarray(v.val).dtype, v.aval.dtype, casting="same_kind"):
      return None
    return np.asarray(v.val, v.aval.dtype)
  if id(v) in known:
    return known[id(v)]
  e = eqn_of.get(id(v))
  if (e is None or depth > 8 or len(e.invars) != 1
      or jax.dtypes.issubdtype(v.aval.dtype, jax.dtypes.extended)):
    return None
  name = e.primitive.name
  if name not in ("broadcast_in_dim", "reshape"):
    return None
  x = _constant_of(eqn_of, known, e.invars[0], depth + 1)
  if x is None or x.dtype != v.aval.dtype:
    return None
  shape = tuple(v.aval.shape)
  if name == "reshape":
    return None if e.params.get("dimensions") is not None else np.reshape(x, shape)
  lead = [1] * len(shape)
  for i, d in enumerate(e.params["broadcast_dimensions"]):
    lead[d] = x.shape[i]
  return np.broadcast_to(np.reshape(x, lead), shape)


def _split_hashes(closed_jaxpr):
  """``(hashes, rest)``: the program of the fused hashes' outputs and the program
  that takes them as inputs after its own, or None when there is no fused hash. XLA
  CPU fuses the hash (cheap integer operations, ~270 of them) into every kernel that
  reads its bits — each initializer tail — however the program asks (an
  optimization barrier is removed before fusion); in a program of its own its
  outputs are computed once (ResNet-50's init compile: ~3.6 s -> ~2.4 s). Not done
  when each output is read once (one draw, or one shared tail: nothing repeats;
  the MLP's init ~20 ms faster to first result in one program), nor
  when the hashes hold more than one fused chunk (``MAX_FUSED_ELEMENTS``): all their
  outputs would be live at once (8 bytes a parameter element)."""
  j = _compat.open_of(closed_jaxpr)
  hs = [e for e in j.eqns if e.primitive is _compat.jit_p and e.params.get("name") == HASH_CALL]
  hv = [v for e in hs for v in e.outvars]
  if not hs or sum(math.prod(v.aval.shape) for v in hv) > 2 * fuse_random_bits.MAX_FUSED_ELEMENTS:
    return None                  # (its outputs would all be live at once: bounded memory)
  outs = set(hv)
  reads = [v for e in j.eqns for v in e.invars] + list(j.outvars)
  if sum(isinstance(v, _compat.Var) and v in outs for v in reads) <= len(hv):
    return None        # each output read once: fused into that one consumer, no repeat;
    #                    a program apart would only add a compile (the MLP: ~20 ms)
  hashes = dce_closed(_compat.replace_jaxpr(closed_jaxpr, outvars=hv))
  rest = _compat.replace_jaxpr(closed_jaxpr, invars=list(j.invars) + hv,
                               eqns=[e for e in j.eqns if not any(e is h for h in hs)])
  return hashes, dce_closed(rest)


def staged_plan(closed_jaxpr):
  """The :class:`_Staged` plan of an init program, or None when no output is a row
  of a stacked value and there is no fused hash to compute apart."""
  j = _compat.open_of(closed_jaxpr)
  eqn_of = {id(v): e for e in j.eqns for v in e.outvars}
  first_outs, slot, outs = [], {}, []
  known = {id(c): np.asarray(x) for c, x in zip(j.constvars, _compat.consts_of(closed_jaxpr))
           if isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, _compat.Tracer)}
  # each output: a view of a value the program returns once (a row of a group's
  # stacked values, a part of the tails fuse-init-tails shares), or a constant: the
  # zeros and ones of init, filled by the host (on CPU each would be a kernel)
  bases = [_view_of(eqn_of, v) for v in j.outvars]
  covered: dict = {}
  for v, (base, view) in zip(j.outvars, bases):
    if any(op[0] == "slice" for op in view):
      covered[id(base)] = covered.get(id(base), 0) + math.prod(v.aval.shape)
  for n, (v, (base, view)) in enumerate(zip(j.outvars, bases)):
    if id(base) in covered and 2 * covered[id(base)] < math.prod(base.aval.shape):
      bases[n] = (v, ())               # (a small part of a large value: computed apart)
  consts = [_constant_of(eqn_of, known, base) for base, _ in bases]
  if all(c is not None for c in consts):           # (the host needs an output to place them)
    consts = [None] * len(consts)
  for n, ((base, view), c) in enumerate(zip(bases, consts)):
    if c is not None:
      outs.append((None, _seen(c, view)))
      continue
    # a value seen through views is output once for all of them; a value output whole
    # several times (split_init shares alike initial states) stays one output each:
    # the program then returns distinct buffers (a donated state must not alias another)
    key = id(base) if view else ("whole", n)
    if key not in slot:
      slot[key] = len(first_outs)
      first_outs.append(base)
    outs.append((slot[key], view))
  apart = any(k is None or view for k, view in outs)    # outputs taken after the run
  first = dce_closed(_compat.replace_jaxpr(closed_jaxpr, outvars=first_outs)) if apart else closed_jaxpr
  split = _split_hashes(first)
  if split is None and not apart:
    return None
  if split is None:
    return _Staged(first, tuple(outs))
  return _Staged(split[1], tuple(outs), split[0])


def _on_host(arr) -> bool:
  """A concrete array on ONE CPU device: its buffer is host memory."""
  devices = arr.sharding.device_set
  return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def _views(arr, views):
  """The concrete ``arr`` seen through each of ``views``, each its own array on the
  same device (committed as ``arr`` is): on CPU copied by the host, elsewhere by one
  jitted program a tuple of views."""
  if _on_host(arr):
    host = np.asarray(arr)                       # a zero-copy view of the CPU buffer
    target = arr.sharding if arr.committed else None
    return [jax.device_put(np.array(_seen(host, view)), target) for view in views]
  return _device_views(views)(arr)


@functools.lru_cache(maxsize=64)
def _device_views(views):
  return jax.jit(lambda x: [_seen(x, view) for view in views])


def _filled(const, like):
  """A new array of the host value ``const``, placed as the concrete ``like`` (an
  output of the same program) is."""
  devices = like.sharding.device_set
  target = (jax.sharding.SingleDeviceSharding(next(iter(devices)))
            if like.committed and len(devices) == 1 else None)
  return jax.device_put(np.array(const), target)


class Executable:
  """``staged=True`` (init): eager calls run the :class:`_Staged` plan. ``forward``:
  ``(executable, ins, outs)`` — after this program, ``executable`` runs on ``ins``
  (``("in", i)``: this program's input ``i``; ``("out", i)``: its output ``i``) and
  output ``b`` of it replaces output ``a`` of this one for each ``(a, b)`` in ``outs``."""

  def __init__(self, closed_jaxpr, name: str, *, staged: bool = False, forward=None):
    self.jaxpr = closed_jaxpr
    self.name = name
    self.forward = forward
    self.plan = staged_plan(closed_jaxpr) if staged else None
    self._jitted_own = _jit(closed_jaxpr, name)
    self._jitted = self._jitted_own if forward is None else _composed(closed_jaxpr, name, forward)
    self._jitted_first = (_jit(self.plan.first, name + "_stacked")
                          if self.plan is not None else None)
    self._jitted_hashes = (_jit(self.plan.hashes, name + "_hashes")
                           if self.plan is not None and self.plan.hashes is not None else None)

  def __call__(self, *flat):
    if (self.plan is None and self.forward is None) or any(
        isinstance(x, _compat.Tracer) for x in flat):
      return self._jitted(*flat)
    return self.finish(flat, self.eager(*flat))

  def finish(self, flat, first_outs, run_stage=None):
    """The program's outputs from the outputs of :attr:`eager` (run first): runs the
    program after the hashes, takes the stacked rows apart and runs the forward
    (each later program through ``run_stage(jitted, args)`` when given: the bench
    times their stages)."""
    run = run_stage or (lambda jitted, args: jitted(*args))  # noqa: E731
    outs = list(first_outs)
    if self._jitted_hashes is not None:
      outs = list(run(self._jitted_first, list(flat) + outs))
    if self.plan is not None:
      seen: dict = {}                          # output k -> [(position, view)]
      for n, (k, view) in enumerate(self.plan.outs):
        if k is not None and view:
          seen.setdefault(k, []).append((n, view))
      got = {}
      for k, items in seen.items():
        got.update(zip((n for n, _ in items), _views(outs[k], tuple(v for _, v in items))))
      outs = [_filled(view, outs[0]) if k is None else got[n] if view else outs[k]
              for n, (k, view) in enumerate(self.plan.outs)]
    if self.forward is not None:
      ex = self.forward[0]
      outs = _with_forward(self.forward, flat, outs, lambda args: (
          run(ex.eager, args) if run_stage is not None else ex(*args)))
    return outs

  @property
  def eager(self):
    """The jitted program an eager call runs first (the whole one without a plan)."""
    if self._jitted_hashes is not None:
      return self._jitted_hashes
    return self._jitted_first if self.plan is not None else self._jitted_own


def _jit(closed_jaxpr, name):
  def run(*flat):
    return _compat.bind_closed(closed_jaxpr, *flat)

  run.__name__ = name
  return jax.jit(run)


def _composed(closed_jaxpr, name, forward):
  """One jitted function: the program, then its forward (traced callers)."""
  ex = forward[0]

  def run(*flat):
    outs = list(_compat.bind_closed(closed_jaxpr, *flat))
    return _with_forward(forward, flat, outs, lambda args: ex._jitted(*args))

  run.__name__ = name
  return jax.jit(run)


def _with_forward(forward, flat, outs, call):
  """``outs`` with the forward's outputs in place: ``call(args)`` runs the forward on
  its inputs, taken from the program's inputs ``flat`` and outputs ``outs``."""
  _, ins, pairs = forward
  fwd = call([flat[i] if src == "in" else outs[i] for src, i in ins])
  outs = list(outs)
  for a, b in pairs:
    outs[a] = fwd[b]
  return outs
