"""purify.Module: Haiku's naming scheme, on top of the effect calls.

A module's ``module_name`` is its unique name in the scope it was created in,
exactly as Haiku names it: created at top level -> ``"mlp"``, ``"mlp_1"``, ...;
in another module's constructor -> ``"parent/~/child"``; in its ``__call__`` ->
``"parent/child"``; in another method ``m`` -> ``"parent/~m/child"``. Numbering is
per method CALL: calling a module twice creates its submodules under the same names
again, so their parameters are shared (as in Haiku). An explicit ``name=`` replaces
the base name; an explicitly numbered name (``linear_0``) keeps its number.
Parameters and state declared while a module's method runs belong to that module:
``params["mlp/~/linear_0"]["w"]``. :func:`name_scope` adds a level of naming
without a class.
"""
from __future__ import annotations

import contextlib
import functools
import re
import threading
from typing import Any, Callable, NamedTuple

from purify import _context
from purify import effects
from purify import errors

#: Haiku's class-name-to-module-name rule: an underscore before a capital that follows
#: a lowercase letter or digit, or that starts a word (a capital followed by a lowercase
#: letter, not at the start); ``_DeepRNN`` -> ``__deep_rnn``, ``HTTPServer`` -> ``http_server``
_CAMEL = re.compile(r"((?<=[a-z0-9])[A-Z]|(?!^)[A-Z](?=[a-z]))")


def _snake(name: str) -> str:
  return _CAMEL.sub(r"_\1", name).lower()


_IDENT = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _name_and_number(name: str):
  parts = re.split(r"_(0|[1-9]\d*)$", name, maxsplit=1)
  return (parts[0], int(parts[1])) if len(parts) > 1 else (name, None)


class _MethodScope:
  """A running method of ``module``: the scope its params and submodules belong to."""

  def __init__(self, module, method_name):
    self.module, self.method_name = module, method_name

  def __enter__(self):
    self.frame = _context.current_frame(f"{type(self.module).__name__}.{self.method_name}",
                                        "(modules are created and called inside a transform)")
    self.frame.module_stack.append(_context.ModuleScope(self.module, self.method_name))

  def __exit__(self, *exc):
    self.frame.module_stack.pop()
    return False


class MethodContext(NamedTuple):
  """What a method interceptor is told about the call (Haiku's ``hk.MethodContext``)."""
  module: Any
  method_name: str
  orig_method: Callable
  orig_class: type


class _Interceptors(threading.local):
  def __init__(self):
    super().__init__()
    self.scoped: list = []          # intercept_methods, outer -> inner


_INTERCEPTORS = _Interceptors()
_GLOBAL_INTERCEPTORS: list = []     # intercept_methods_global (mixed precision), run first


def _wrap_method(fn, method_name, cls):
  @functools.wraps(fn)
  def wrapped(self, *args, **kwargs):
    with _MethodScope(self, method_name):
      if not _GLOBAL_INTERCEPTORS and not _INTERCEPTORS.scoped:
        return fn(self, *args, **kwargs)
      return _run_interceptors(fn, method_name, self, cls, args, kwargs)
  wrapped._purify_wrapped = True
  return wrapped


def _run_interceptors(fn, method_name, module, cls, args, kwargs):
  """The interceptors in turn (the global ones first, then the scoped ones, outer to
  inner), each handed the next as ``next_f``; the last calls the method."""
  chain = list(_GLOBAL_INTERCEPTORS) + list(_INTERCEPTORS.scoped)
  bound = functools.partial(fn, module)
  ctx = MethodContext(module, method_name, bound, cls)

  def call(i, args, kwargs):
    if i == len(chain):
      return bound(*args, **kwargs)
    return chain[i](lambda *a, **k: call(i + 1, a, k), args, kwargs, ctx)
  return call(0, args, kwargs)


@contextlib.contextmanager
def intercept_methods(interceptor: Callable):
  """Haiku's ``hk.intercept_methods``: while active, every call of a module method
  runs ``interceptor(next_f, args, kwargs, context)`` instead (``context``: a
  :class:`MethodContext`), which calls ``next_f(*args, **kwargs)`` to go on (or not).

  Example::

      def log_calls(next_f, args, kwargs, context):
        print(context.module.module_name, context.method_name)
        return next_f(*args, **kwargs)

      def f(x):
        with purify.intercept_methods(log_calls):
          return purify.nn.MLP([3])(x)
  """
  if not callable(interceptor):
    raise TypeError(f"purify.intercept_methods: expected a callable, got {interceptor!r}")
  _INTERCEPTORS.scoped.append(interceptor)
  try:
    yield
  finally:
    _INTERCEPTORS.scoped.pop()


def intercept_methods_global(interceptor: Callable) -> None:
  """Install ``interceptor`` for every method call from now on, before any scoped one
  (what ``purify.mixed_precision`` uses)."""
  if interceptor not in _GLOBAL_INTERCEPTORS:
    _GLOBAL_INTERCEPTORS.insert(0, interceptor)


def _unique_name(frame, module, base: str) -> str:
  """Haiku's ``unique_and_canonical_name``: prefix with the calling method's module,
  then number within that method call (or the transform, at top level)."""
  caller = next((s for s in reversed(frame.module_stack) if s.module is not module), None)
  if caller is not None:
    m = caller.method_name
    rel = f"~/{base}" if m == "__init__" else base if m == "__call__" else f"~{m}/{base}"
    full = f"{caller.module.module_name}/{rel}"
    counters, used = caller.counters, caller.used
  else:
    full, counters, used = base, frame.module_counts, frame.module_names
  stem, n = _name_and_number(full)
  explicit = n is not None
  if n is None:
    n = counters.get(stem, 0)
  full = f"{stem}_{n}" if explicit or n else stem
  if full in used:
    raise errors.ModuleNameError(errors.MODULE_NAME_TAKEN.format(
        name=full, cls=type(module).__name__, site=_context.user_site()))
  used.add(full)
  counters[stem] = max(counters.get(stem, 0), n + 1)
  return full


class Module:
  """Base class of purify modules (Haiku's naming; see the module docstring).

  Every method (``__call__``, other methods, ``__init__``) runs in the module's
  scope: ``purify.param``/``get_state``/``set_state`` inside it belong to the
  module, and modules created inside it are named under it.

  Example::

      class Scale(purify.Module):
        def __call__(self, x):
          return x * purify.param("s", (), init=jax.nn.initializers.ones)

      def f(x):
        return Scale()(x)          # params["scale"]["s"]
  """

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    for attr, value in list(vars(cls).items()):
      if not callable(value) or getattr(value, "_purify_wrapped", False):
        continue
      if isinstance(value, (staticmethod, classmethod, type)):
        continue
      if attr.startswith("__") and attr not in ("__init__", "__call__", "__post_init__"):
        continue
      # a dataclass module's __post_init__ is its constructor's body: its scope is __init__'s
      method = "__init__" if attr == "__post_init__" else attr
      setattr(cls, attr, _wrap_method(value, method, cls))

  def __init__(self, name: str | None = None):
    frame = _context.current_frame(type(self).__name__ + "()", "(modules are created inside a transform)")
    if name is None:
      # a @dataclasses.dataclass module's ``name`` field (Haiku's rule), else the class's
      name = getattr(self, "name", None)
      if name is None:
        name = _snake(type(self).__name__)
    if not isinstance(name, str) or not _IDENT.match(name):
      raise ValueError(
          f"{type(self).__name__}(name={name!r}): a module name must be a Python identifier "
          f"(letters, digits, '_'; no '/'). Use purify.name_scope({name!r}) to add a path prefix.")
    self.module_name = _unique_name(frame, self, name)
    self.name = self.module_name.rsplit("/", 1)[-1]
    frame.bump()

  def __post_init__(self):
    """``@dataclasses.dataclass`` modules: the generated ``__init__`` sets the fields,
    then this names the module (from its ``name`` field when not None), as Haiku's
    do. A ``__post_init__`` of the subclass calls ``super().__post_init__()`` first."""
    Module.__init__(self)

  def params_dict(self) -> dict:
    """This module's and its submodules' parameters declared so far, as Haiku's
    ``params_dict``: ``{"module_path/name": value}`` (values as seen here)."""
    return self._declared("params_dict", "params")

  def state_dict(self) -> dict:
    """This module's and its submodules' state declared so far: ``{"path/name": value}``."""
    return self._declared("state_dict", "states")

  def _declared(self, fn, table):
    frame = _context.current_frame(f"{type(self).__name__}.{fn}")
    mine = self.module_name
    out = {}
    for (module, name), site in list(getattr(frame, table).items()):
      if module != mine and not module.startswith(mine + "/"):
        continue
      with _context.declared_in(module):
        if table == "params":
          stack = tuple(size for size, _ in frame.stack_for(f"{module}/{name}"))
          if site.stack != stack:
            raise errors.PurifyError(
                f"{type(self).__name__}.{fn}(): parameter {site.path!r} was declared under "
                f"param_axes=0 with stack {site.stack}, but here the stack is {stack}. "
                f"Call {fn}() where the parameter is used.")
          out[f"{module}/{name}"] = effects.param(name, site.shape[len(stack):], site.dtype, site.init)
        else:
          out[f"{module}/{name}"] = effects.get_state(name)
    return out

  def __repr__(self):
    return f"{type(self).__name__}(module_name={getattr(self, 'module_name', '?')!r})"


class _NameScope(Module):
  """What :func:`name_scope` enters: a module with no methods of its own."""


@contextlib.contextmanager
def name_scope(name: str, *, method_name: str = "__call__"):
  """Prefix the modules, params and state created inside with ``name`` (Haiku's
  ``hk.name_scope``: the same as running the code in a method of a module called
  ``name``; ``"a/b"`` nests two levels).

  Example::

      def f(x):
        with purify.name_scope("block"):
          w = purify.param("w", (), init=jax.nn.initializers.ones)   # params["block"]["w"]
          return purify.nn.Linear(2)(x) * w                          # "block/linear"
  """
  if not isinstance(name, str) or not name or name.startswith("/"):
    raise ValueError(f"purify.name_scope({name!r}): the name must be a non-empty string "
                     "not starting with '/'.")
  with contextlib.ExitStack() as stack:
    module = None
    for part in name.split("/"):
      module = _NameScope(name=part)
      stack.enter_context(_MethodScope(module, method_name))
    yield


@contextlib.contextmanager
def namespace(name: str):
  """Haiku's naming inside a lifted transform (``hk.layer_stack``'s ``hk.lift``): a
  module called ``name`` — numbered like any module in the calling scope — whose
  inside names things afresh, as a transform of its own would, under its path:
  modules created inside are ``name/child``, effects declared outside any module
  there belong to ``name/~``."""
  module = _NameScope(name=name)
  frame = _context.current_frame("purify.module.namespace")
  frame.module_stack.append(_context.ModuleScope(module, "__call__",
                                                 own_path=f"{module.module_name}/~"))
  try:
    yield module.module_name
  finally:
    frame.module_stack.pop()


def to_module(f: Callable) -> type:
  """Haiku's ``hk.to_module``: a module class whose instances call ``f`` (its
  parameters and state belong to the instance; default name ``f.__name__``).

  Example::

      def bias_fn(x):
        return x + purify.param("b", (), init=jax.nn.initializers.zeros)
      Bias = purify.to_module(bias_fn)

      def f(x, y):
        b = Bias(name="my_bias")
        return b(x) * b(y)           # one parameter: params["my_bias"]["b"]
  """
  if not callable(f):
    raise TypeError(f"purify.to_module takes a function, got {type(f).__name__}.")

  class ToModuleWrapper(Module):
    def __init__(self, name=None):
      if name is None:
        name = getattr(f, "__name__", "to_module")
        if not _IDENT.match(name):
          raise ValueError(
              f"purify.to_module: the function's name {name!r} is not a module name (a "
              "Python identifier), so an instance needs one: cls = purify.to_module(fn); "
              "mod = cls(name='my_module').")
      elif not isinstance(name, str):
        raise TypeError(
            f"purify.to_module({getattr(f, '__name__', f)!r}) returned a class: create an "
            f"instance first, then call it (cls = purify.to_module(fn); mod = cls(); "
            f"out = mod(x)); got {type(name).__name__} as its name.")
      super().__init__(name=name)

    def __call__(self, *args, **kwargs):
      return f(*args, **kwargs)

  ToModuleWrapper.__doc__ = getattr(f, "__doc__", None) or ToModuleWrapper.__doc__
  return ToModuleWrapper
