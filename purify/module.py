"""purify.Module: Haiku's naming scheme, on top of the effect calls.

A module's ``module_name`` is its unique name in the scope it was created in:
created at top level -> ``"mlp"``, ``"mlp_1"``, ...; created in another module's
constructor -> ``"parent/~/child"``; in another module's method ->
``"parent/child"``. Counters are per scope and per base name; an explicit ``name=``
replaces the base name (``MLP`` names its layers ``linear_0``, ``linear_1``).
Parameters and state declared while a module's method runs belong to that module:
``params["mlp/~/linear_0"]["w"]``.
"""
from __future__ import annotations

import functools
import re

from purify import _context


def _snake(name: str) -> str:
  s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
  s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
  return s.lower()


class _ScopeGuard:
  def __init__(self, module, in_init):
    self.module, self.in_init = module, in_init

  def __enter__(self):
    frame = _context.current_frame(f"{type(self.module).__name__}", "")
    frame.module_stack.append(_context.ModuleScope(self.module, self.in_init))
    self.frame = frame

  def __exit__(self, *exc):
    self.frame.module_stack.pop()
    return False


def _wrap_method(fn, in_init):
  @functools.wraps(fn)
  def wrapped(self, *args, **kwargs):
    if in_init:
      with _ScopeGuard(self, True):
        return fn(self, *args, **kwargs)
    with _ScopeGuard(self, False):
      return fn(self, *args, **kwargs)
  wrapped._purify_wrapped = True
  return wrapped


class Module:
  """Base class of purify modules (Haiku's naming; see the module docstring).

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
      if attr == "__init__":
        setattr(cls, attr, _wrap_method(value, True))
      elif attr == "__call__" or not attr.startswith("_"):
        setattr(cls, attr, _wrap_method(value, False))

  def __init__(self, name: str | None = None):
    frame = _context.current_frame(type(self).__name__ + "()", "(modules are created inside a transform)")
    base = name if name is not None else _snake(type(self).__name__)
    parent = None
    for scope in reversed(frame.module_stack):
      if scope.module is not self:
        parent = scope
        break
    if parent is not None:
      prefix = parent.module.module_name + ("/~" if parent.in_init else "")
    elif frame.name_scopes:
      prefix = frame.name_scopes[-1]
    else:
      prefix = ""
    n = frame.module_counts.get((prefix, base), 0)
    frame.module_counts[(prefix, base)] = n + 1
    unique = base if n == 0 else f"{base}_{n}"
    self.name = unique
    self.module_name = f"{prefix}/{unique}" if prefix else unique
    frame.bump()

  def __repr__(self):
    return f"{type(self).__name__}(module_name={getattr(self, 'module_name', '?')!r})"
