"""The trace-time frame: what one trace of a user's function has declared so far.

A Frame lives exactly as long as one trace (``purify.trace``). Effect calls record
their site here (so a parameter declared under ``jax.eval_shape`` still exists, and
a conflicting declaration can name both call sites) and bind an effect primitive
into the jaxpr being traced. The frame's (id, event counter) is also published as a
JAX trace-context value, so JAX's jit and scan-body caches never replay a trace made
for another scope (see DESIGN.md, "JAX's trace caches").
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import weakref
import sys
from typing import Any, Callable

from purify import _compat
from purify import errors

_SCOPE = _compat.make_trace_context_state(
    "purify_scope", "purify's current effect scope (internal; keys JAX trace caches).")
_ids = itertools.count(1)
_tls = threading.local()

_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_JAX_MARK = f"{os.sep}jax{os.sep}"


def user_site() -> str:
  """``file:line (function)`` of the innermost frame outside purify and JAX.

  Walks frame objects (no source lines read): this runs on every effect call."""
  f = sys._getframe(1)
  while f is not None:
    fn = f.f_code.co_filename
    if not (fn.startswith(_PKG_DIR) or _JAX_MARK in fn or fn.endswith("contextlib.py")):
      return f"{fn}:{f.f_lineno} ({f.f_code.co_name})"
    f = f.f_back
  return "<unknown>"


@dataclasses.dataclass
class ParamSite:
  module: str
  name: str
  shape: tuple
  dtype: Any
  init: Callable
  site: str
  stack: tuple = ()          # leading sizes from param_axes=0 (ensembles, stacks)
  key_name: str | None = None  # lifted params share one init key

  @property
  def path(self) -> str:
    return f"{self.module}/{self.name}"


@dataclasses.dataclass
class StateSite:
  module: str
  name: str
  shape: tuple
  dtype: Any
  init: Callable | None      # None: created by set_state (initial = first value set)
  site: str
  key_name: str | None = None  # lifted state: init(key, shape, dtype) with this name's key
  stack: tuple = ()            # leading sizes from state_axes=0

  @property
  def path(self) -> str:
    return f"{self.module}/{self.name}"


@dataclasses.dataclass
class ModuleScope:
  """One running method of a module (Haiku's ModuleState): submodules created
  while it runs are named ``parent/child`` (``__call__``), ``parent/~/child``
  (``__init__``) or ``parent/~method/child``; ``counters``/``used`` number them
  afresh on every call, so calling a module twice reuses its submodules' names."""
  module: Any
  method_name: str
  counters: dict = dataclasses.field(default_factory=dict)
  used: set = dataclasses.field(default_factory=set)
  #: where effects declared directly in this scope belong, when not the module's own
  #: path: ``name/~`` for a fresh namespace (``module.namespace``, Haiku's lift naming)
  own_path: str | None = None


class Frame:
  """Everything one trace of the user's function declares."""

  def __init__(self, key_aval):
    self.id = next(_ids)
    self.key_aval = key_aval          # ShapedArray of the root key's kind
    self.params: dict[tuple[str, str], ParamSite] = {}
    self.states: dict[tuple[str, str], StateSite] = {}
    self.rng_sites: dict[str, str] = {}     # site id -> user call site
    self.rng_counts: dict[str, int] = {}
    self.module_counts: dict[str, int] = {}     # top-level module numbering
    self.module_names: set[str] = set()         # top-level names in use
    self.module_stack: list[ModuleScope] = []
    self.shared_rng_axes: set = set()
    self.per_example_draws: dict = {}   # site -> vmap axis: draws given a key an example
    # (size, index tracer, selector): parameters declared while an entry is active and
    # selected by it (selector(path) -> bool; None = all) get a leading axis of ``size``
    self.param_stack: list[tuple[int, Any, Any]] = []
    # (size, index tracer, vmap axis name or None for a loop): state declared while an
    # entry is active is per-example / per-step (purify.vmap/scan(state_axes=0))
    self.state_stack: list = []
    self.mean_state_axes: set = set()   # purify.vmap(state_axes="mean")
    self.param_overrides: list = []   # purify.with_params: {(module, name): value}, outer -> inner
    self.param_logs: list = []        # active logs of the (module, name)s read
    self.creators: list = []     # purify.custom_creator interceptors, outer -> inner
    self.getters: list = []      # purify.custom_getter interceptors, outer -> inner
    self.state_getters: list = []   # purify.custom_getter(state=True), outer -> inner
    self.lifting = 0
    self.events = 0
    self.rng_given = True        # whether the call has a key (maybe_next_rng_key)
    self.asks_rng = False        # whether the model asked (maybe_next_rng_key was called)
    self.top_trace = None        # the trace of the user's function itself (set by trace)
    self._bumped = weakref.WeakSet()   # staging traces that already changed the scope

  # -- scope key for JAX's trace caches
  def bump(self) -> None:
    """Called on every effect (and module creation): make sure a trace JAX may cache
    and replay (a jit, scan body, checkpoint... being traced now) is never replayed in
    this frame, by changing the scope value JAX keys its caches by. One change per
    such trace is enough — it keyed its cache entry when it started — and effects of
    the user's function's own trace need none (nothing replays it), so JAX's helpers
    called between effects keep hitting their caches."""
    staging = _compat.staging_trace()
    if staging is not None:
      if staging is self.top_trace:
        return
      if staging in self._bumped:
        return
      self._bumped.add(staging)
    self.events += 1
    _compat.swap_scope(_SCOPE, (self.id, self.events))

  def stack_for(self, path: str) -> list:
    """The active (size, index) stack entries that apply to parameter ``path``."""
    return [(n, i) for n, i, sel in self.param_stack if sel is None or sel(path)]

  def module_path(self) -> str:
    if self.module_stack:
      top = self.module_stack[-1]
      return top.own_path or top.module.module_name
    return "~"


class _Named:
  """Stands in for a module in ``module_stack`` when code declares effects under
  a path directly (lifted params, ``Module.params_dict``)."""

  def __init__(self, module_name: str):
    self.module_name = module_name


class declared_in:
  """Context manager: effects declared inside belong to module path ``module``."""

  def __init__(self, module: str):
    self.module = module

  def __enter__(self):
    self.frame = current_frame("declared_in")
    self.frame.module_stack.append(ModuleScope(_Named(self.module), "__call__"))

  def __exit__(self, *exc):
    self.frame.module_stack.pop()
    return False


class rewind:
  """Context manager: on exit, restore the frame's naming and RNG-site counters, so
  code run inside (to discover what it declares) and run again names its modules and
  keys exactly as if it had run once."""

  def __init__(self, frame: "Frame"):
    self.frame = frame

  def __enter__(self):
    f = self.frame
    self.saved = (dict(f.module_counts), set(f.module_names), dict(f.rng_counts),
                  [(dict(s.counters), set(s.used)) for s in f.module_stack])

  def __exit__(self, *exc):
    f = self.frame
    counts, names, rng, scopes = self.saved
    f.module_counts.clear(); f.module_counts.update(counts)  # noqa: E702
    f.module_names.clear(); f.module_names.update(names)  # noqa: E702
    f.rng_counts.clear(); f.rng_counts.update(rng)  # noqa: E702
    for scope, (c, u) in zip(f.module_stack, scopes):
      scope.counters.clear(); scope.counters.update(c)  # noqa: E702
      scope.used.clear(); scope.used.update(u)  # noqa: E702
    return False


def current_frame(fn: str, what: str = "") -> Frame:
  stack = getattr(_tls, "frames", None)
  if not stack:
    raise errors.EffectOutsideTransformError(
        errors.EFFECT_OUTSIDE_TRANSFORM.format(fn=fn, what=what))
  return stack[-1]


def maybe_frame() -> Frame | None:
  stack = getattr(_tls, "frames", None)
  return stack[-1] if stack else None


class frame_scope:
  """Context manager: make ``frame`` current and publish its scope to JAX."""

  def __init__(self, frame: Frame):
    self.frame = frame

  def __enter__(self):
    if not hasattr(_tls, "frames"):
      _tls.frames = []
    _tls.frames.append(self.frame)
    self.prev = _compat.swap_scope(_SCOPE, (self.frame.id, self.frame.events))
    return self.frame

  def __exit__(self, *exc):
    _tls.frames.pop()
    _compat.swap_scope(_SCOPE, self.prev)
    return False


class no_frame:
  """Run code (e.g. a nested transform's pure init) outside the current frame."""

  def __enter__(self):
    self.saved = getattr(_tls, "frames", [])
    _tls.frames = []
    self.prev = _compat.swap_scope(_SCOPE, None)

  def __exit__(self, *exc):
    _tls.frames = self.saved
    _compat.swap_scope(_SCOPE, self.prev)
    return False
