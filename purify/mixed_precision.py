"""Mixed precision by module class (Haiku's ``hk.mixed_precision``).

A policy — a ``jmp.Policy`` (``jmp.get_policy("params=float32,compute=bfloat16,
output=float32")``) or any object with ``param_dtype``, ``cast_to_compute`` and
``cast_to_output`` — set for a module class applies to every call of its instances'
methods: the arguments are cast to the compute dtype, parameters are created in the
param dtype and read (with the state) in the compute dtype, and the results are cast
to the output dtype. Modules called from inside take the policy on, unless their
class has its own. purify traces once, so one policy serves init and apply.

Example::

    policy = jmp.get_policy("params=float32,compute=bfloat16,output=float32")
    purify.mixed_precision.set_policy(purify.nn.MLP, policy)
    def f(x):
      return purify.nn.MLP([8, 2])(x)   # w stored in float32, used in bfloat16
"""
from __future__ import annotations

import contextlib
import threading

from purify import _context
from purify import effects
from purify import module as module_lib


def _key(cls):
  """Classes defined in a function are their own key; others are keyed by name, so a
  module reloaded in a notebook keeps its policy (as Haiku)."""
  qualname = getattr(cls, "__qualname__", "")
  return cls if "<locals>" in qualname else (cls.__module__, qualname)


class _State(threading.local):
  def __init__(self):
    super().__init__()
    self.policies: dict = {}           # class key -> policy
    self.current: list = []            # the policies of the methods running, outer -> inner


_STATE = _State()
_INSTALLED = []


def _check(cls, policy):
  if not (isinstance(cls, type) and issubclass(cls, module_lib.Module)):
    raise TypeError(f"purify.mixed_precision: a policy is set for a purify.Module class, "
                    f"got {cls!r}.")
  missing = [a for a in ("param_dtype", "cast_to_compute", "cast_to_output")
             if not hasattr(policy, a)]
  if missing:
    raise TypeError(
        f"purify.mixed_precision: {policy!r} is not a policy (no {', '.join(missing)}); use "
        "jmp.get_policy('params=float32,compute=bfloat16,output=float32'). To remove a "
        "class's policy, use clear_policy.")


def set_policy(cls, policy) -> None:
  """Use ``policy`` for every instance of module class ``cls`` (in this thread)."""
  _check(cls, policy)
  if not _INSTALLED:
    module_lib.intercept_methods_global(_interceptor)
    _INSTALLED.append(True)
  _STATE.policies[_key(cls)] = policy


def get_policy(cls):
  """The policy set for ``cls`` (None when none was set for it explicitly)."""
  return _STATE.policies.get(_key(cls))


def clear_policy(cls) -> None:
  """Remove ``cls``'s policy (its instances then take their callers' policy, if any)."""
  _STATE.policies.pop(_key(cls), None)


def current_policy():
  """The policy of the innermost method running under one, or None."""
  return _STATE.current[-1] if _STATE.current else None


@contextlib.contextmanager
def push_policy(cls, policy):
  """``set_policy(cls, policy)`` while the context is active (the previous policy is
  restored after)."""
  frame = _context.maybe_frame()
  running = frame.module_stack[-1].module if frame is not None and frame.module_stack else None
  if running is not None and _key(type(running)) == _key(cls):
    raise ValueError(f"purify.mixed_precision.push_policy({cls.__name__}, ...) inside a method "
                     f"of {cls.__name__} itself: push it before calling the module.")
  old = get_policy(cls)
  set_policy(cls, policy)
  try:
    yield
  finally:
    if old is None:
      clear_policy(cls)
    else:
      set_policy(cls, old)


def _create(next_creator, shape, dtype, init, context):
  return next_creator(shape, current_policy().param_dtype, init)


def _get(next_getter, value, context):
  return next_getter(current_policy().cast_to_compute(value))


def _interceptor(next_f, args, kwargs, context):
  policy = get_policy(type(context.module))
  if policy is None:
    return next_f(*args, **kwargs)
  with contextlib.ExitStack() as stack:
    if not _STATE.current:             # the outermost policy installs the casts
      stack.enter_context(effects.custom_creator(_create))
      stack.enter_context(effects.custom_getter(_get, state=True))
    _STATE.current.append(policy)
    stack.callback(_STATE.current.pop)
    args, kwargs = policy.cast_to_compute((args, kwargs))
    return policy.cast_to_output(next_f(*args, **kwargs))
