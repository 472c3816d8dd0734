"""Spectral normalization (https://arxiv.org/abs/1802.05957) with Haiku's arguments,
state names and power iteration: :class:`SpectralNorm` divides a matrix by an
estimate of its largest singular value; :class:`SNParamsTree` does that to every
leaf of a ``{module: {name: array}}`` tree (e.g. another model's params).

State of one SpectralNorm (module ``spectral_norm`` by default)::

    u0:    (1, n)   the power iteration's right singular vector estimate (n = last axis)
    sigma: ()       the singular value estimate of the last call (1 until then)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

import purify
from purify.nn.moving_averages import map_params_tree


def _l2_normalize(x, eps):
  """``x / sqrt(sum(x**2) + eps)`` (Haiku's ``_l2_normalize`` over the whole array)."""
  return x * jax.lax.rsqrt(jnp.sum(x * x, keepdims=True) + eps)


class SpectralNorm(purify.Module):
  """Divides a matrix by its largest singular value ``sigma``, estimated by
  ``n_steps`` steps of power iteration from the state ``u0`` (Haiku's
  ``hk.SpectralNorm``)::

      v = normalize(u0 W^T);  u0 = normalize(v W)     (n_steps times)
      sigma = v W u0^T;       output = W / sigma      (u0, v: stop_gradient)

  ``normalize(x) = x / sqrt(|x|^2 + eps)``. Inputs of rank > 2 are treated as the
  matrix ``[-1, last axis]`` (or refused, with ``error_on_non_matrix=True``); scalars
  and vectors are refused. With ``update_stats`` (the default) the new ``u0`` and
  ``sigma`` are written to the state; otherwise the state is left unchanged (and
  declared, so that apply takes the state a training call produced).

  ``u0`` starts at standard normals drawn with the init key (``purify.keyed_init``).
  Unlike Haiku, ``n_steps=0`` is a ``ValueError`` at construction (Haiku fails later,
  with an ``UnboundLocalError``).

  Example::

      def f(w):
        return purify.nn.SpectralNorm()(w)

      init, apply = purify.transform_with_state(f)
      params, state = init(jax.random.key(0), w)           # state["spectral_norm"]: u0 (1, n), sigma ()
      w_bar, state = apply(params, state, None, w)   # w / sigma, one more power step
  """

  def __init__(self, eps: float = 1e-4, n_steps: int = 1, name: str | None = None):
    super().__init__(name=name)
    if n_steps < 1:
      raise ValueError(f"SpectralNorm: n_steps={n_steps}, but at least one step of power "
                       "iteration is needed to estimate the singular value; pass n_steps >= 1.")
    self.eps = eps
    self.n_steps = n_steps

  def __call__(self, value, update_stats: bool = True, error_on_non_matrix: bool = False):
    """``value`` divided by its largest singular value (``value``'s shape)."""
    value = jnp.asarray(value)
    shape = value.shape
    if value.ndim <= 1:
      raise ValueError(
          f"SpectralNorm {self.module_name!r}: spectral normalization is not well defined "
          f"for scalar or vector inputs (got shape {shape}). Pass a matrix; in SNParamsTree, "
          "exclude such parameters (e.g. biases) with ignore_regex, e.g. '.*/b$'.")
    if value.ndim > 2:
      if error_on_non_matrix:
        raise ValueError(
            f"SpectralNorm {self.module_name!r}: input is {value.ndim}D (shape {shape}) but "
            "error_on_non_matrix is True; pass a matrix, or error_on_non_matrix=False to "
            "normalize it as a [-1, last axis] matrix.")
      value = value.reshape(-1, shape[-1])
    u0 = purify.get_state("u0", (1, value.shape[-1]), value.dtype,
                          init=purify.keyed_init(jax.nn.initializers.normal(1.0)))
    for _ in range(self.n_steps):
      v0 = _l2_normalize(u0 @ value.T, self.eps)
      u0 = _l2_normalize(v0 @ value, self.eps)
    u0 = jax.lax.stop_gradient(u0)
    v0 = jax.lax.stop_gradient(v0)
    sigma = (v0 @ value @ u0.T)[0, 0]
    if update_stats:
      purify.set_state("u0", u0)
      purify.set_state("sigma", sigma)
    else:
      purify.get_state("sigma", (), sigma.dtype, init=jnp.ones)
    return (value / sigma).reshape(shape)

  @property
  def u0(self):
    """The state ``u0`` (a call must have declared it earlier in this trace)."""
    return self._read("u0", None)

  @property
  def sigma(self):
    """The state ``sigma`` (a float32 1 if no call declared it yet in this trace)."""
    return self._read("sigma", ())

  def _read(self, name, default_shape):   # a method: the read runs in this module's scope
    try:
      return purify.get_state(name)
    except TypeError:                      # not declared yet
      if default_shape is None:
        raise ValueError(
            f"SpectralNorm {self.module_name!r}: no value for {name!r} yet; call the module "
            f"on a matrix first (the call declares {name!r} from its shape).") from None
      return purify.get_state(name, default_shape, init=jnp.ones)


class SNParamsTree(purify.Module):
  """A :class:`SpectralNorm` of every leaf of a ``{module: {name: array}}`` tree
  (Haiku's ``hk.SNParamsTree``), returning the tree of normalized values. The
  SpectralNorm of ``"mlp/~/linear_0"/"w"`` is the submodule ``mlp___tilde__linear_0__w``
  (``/`` spelled ``__``, ``~`` spelled ``_tilde``, as in Haiku). Leaves whose
  ``"module/name"`` matches ``ignore_regex`` (``re.match``) pass through unchanged;
  every other leaf must be a matrix or higher (exclude biases, e.g. ``".*/b$"``).

  Example::

      def f(params):
        return purify.nn.SNParamsTree(ignore_regex=".*/b$")(params)

      sn = purify.transform_with_state(f)
      _, sn_state = sn.init(jax.random.key(0), params)
      sn_params, sn_state = sn.apply({}, sn_state, None, params)
  """

  def __init__(self, eps: float = 1e-4, n_steps: int = 1, ignore_regex: str = "",
               name: str | None = None):
    super().__init__(name=name)
    self.eps = eps
    self.n_steps = n_steps
    self.ignore_regex = ignore_regex

  def __call__(self, tree, update_stats: bool = True):
    # (Haiku spells ``~`` "_tilde" here, "_tilde_" in EMAParamsTree)
    return map_params_tree(tree, self.ignore_regex, "_tilde", lambda name, value: SpectralNorm(
        self.eps, self.n_steps, name=name)(value, update_stats=update_stats))
