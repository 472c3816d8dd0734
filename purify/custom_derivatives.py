"""purify.custom_jvp / purify.custom_vjp: JAX's custom derivatives for functions that
read purify parameters.

Plain ``jax.custom_jvp``/``custom_vjp`` inside a model work forward, but JAX re-runs
the user's rule (Python) when it differentiates, outside purify's trace, so purify
refuses to differentiate them (CustomRuleEffectError). These drop-ins make the
parameters explicit: when called inside a transform they find the parameters the
function reads (under ``jax.eval_shape``, consuming no module name), pass their
current values as an extra leading argument of a ``jax.custom_jvp``/``custom_vjp``,
and run the user's functions in a *replay frame* (modules named as at the call,
parameters read from that argument, no effect bound) — also when JAX calls the rules
later. The user's rule gives the derivative w.r.t. the arguments; the derivative
w.r.t. the parameters is JAX's own derivative of the primal function (the custom rule
says nothing about parameters). Keys and state inside are refused with a clear error.
Outside a transform they are exactly JAX's.
"""
from __future__ import annotations

import functools

import jax

from purify import _context
from purify import effects


def _replay(frame, params_flat, fn, *args):
  with _context.frame_scope(_context.replay_frame(frame, params_flat)):
    return fn(*args)


def _discover(frame, fun, args):
  _, used = effects.params_used(fun, *args)
  tree: dict = {}
  for module, name in used:
    tree.setdefault(module, {})[name] = None
  return used, effects.get_params(tree)


def _flat(used, p):
  return {(m, n): p[m][n] for m, n in used}


class custom_vjp:
  """``jax.custom_vjp`` for functions that read purify parameters (see the module
  docstring). ``bwd`` returns cotangents for the arguments; parameters get JAX's
  derivative of ``fun``.

  Example::

      @purify.custom_vjp
      def clipped(x):
        return purify.nn.Linear(2)(x)

      clipped.defvjp(lambda x: (clipped.fun(x), x),
                     lambda x, g: (jnp.clip(g @ jnp.ones((2, x.shape[-1])), -1, 1),))
  """

  def __init__(self, fun, nondiff_argnums=()):
    if nondiff_argnums:
      raise NotImplementedError("purify.custom_vjp: nondiff_argnums is not supported yet; "
                                "close over the non-differentiable values instead.")
    self.fun = fun
    self.fwd = self.bwd = None
    functools.update_wrapper(self, fun)

  def defvjp(self, fwd, bwd, symbolic_zeros=False):
    if symbolic_zeros:
      raise NotImplementedError("purify.custom_vjp: symbolic_zeros is not supported yet.")
    self.fwd, self.bwd = fwd, bwd
    return self

  def __call__(self, *args):
    frame = _context.maybe_frame()
    if frame is None or frame.replay is not None:
      f = jax.custom_vjp(self.fun)
      f.defvjp(self.fwd, self.bwd)
      return f(*args)
    if self.fwd is None:
      raise TypeError(f"purify.custom_vjp {getattr(self.fun, '__name__', '?')}: call defvjp first.")
    used, p = _discover(frame, self.fun, args)
    fun, fwd, bwd = self.fun, self.fwd, self.bwd

    def primal(p, *a):
      return _replay(frame, _flat(used, p), fun, *a)

    def primal_fwd(p, *a):
      out, res = _replay(frame, _flat(used, p), fwd, *a)
      return out, (p, a, res)

    def primal_bwd(saved, g):
      p, a, res = saved
      cts = tuple(_replay(frame, _flat(used, p), bwd, res, g))
      _, pull = jax.vjp(lambda q: primal(q, *a), p)
      return (pull(g)[0],) + cts

    f = jax.custom_vjp(primal)
    f.defvjp(primal_fwd, primal_bwd)
    return f(p, *args)


class custom_jvp:
  """``jax.custom_jvp`` for functions that read purify parameters (see the module
  docstring). The rule gives the tangent w.r.t. the arguments; the tangent from the
  parameters is JAX's own ``jvp`` of ``fun``, added to it.

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

  def __init__(self, fun, nondiff_argnums=()):
    if nondiff_argnums:
      raise NotImplementedError("purify.custom_jvp: nondiff_argnums is not supported yet; "
                                "close over the non-differentiable values instead.")
    self.fun = fun
    self.jvp = None
    functools.update_wrapper(self, fun)

  def defjvp(self, jvp, symbolic_zeros=False):
    if symbolic_zeros:
      raise NotImplementedError("purify.custom_jvp: symbolic_zeros is not supported yet.")
    self.jvp = jvp
    return jvp

  def __call__(self, *args):
    frame = _context.maybe_frame()
    if frame is None or frame.replay is not None:
      f = jax.custom_jvp(self.fun)
      f.defjvp(self.jvp)
      return f(*args)
    if self.jvp is None:
      raise TypeError(f"purify.custom_jvp {getattr(self.fun, '__name__', '?')}: call defjvp first.")
    used, p = _discover(frame, self.fun, args)
    fun, rule = self.fun, self.jvp

    def primal(p, *a):
      return _replay(frame, _flat(used, p), fun, *a)

    f = jax.custom_jvp(primal)

    @f.defjvp
    def primal_jvp(primals, tangents):
      p, *a = primals
      tp, *ta = tangents
      out, t_args = _replay(frame, _flat(used, p), rule, tuple(a), tuple(ta))
      _, t_params = jax.jvp(lambda q: primal(q, *a), (p,), (tp,))
      return out, jax.tree_util.tree_map(lambda u, v: u + v, t_args, t_params)

    return f(p, *args)
