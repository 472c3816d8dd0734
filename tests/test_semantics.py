"""Loop semantics, checked against hand-written pure-JAX references.

Every test builds a small effectful model (``purify.param``, ``purify.next_rng_key``,
``purify.get_state`` / ``purify.set_state``) that uses a JAX transform INSIDE the
model, and a reference written by hand with an explicit parameter dict, explicit key
derivation (``purify.keys`` as its docstring documents it) and explicit state:

  * parameter ``module/name`` starts at ``init(param_key(root, "module/name"), ...)``;
  * a draw at site ``module#n`` inside loops with indices ``i1, i2, ...`` and vmaps
    with example indices ``b1, b2, ...`` is
    ``fold_indices(rng_key(fold_indices(root, i1, i2, ...), "module#n"), b1, b2, ...)``.

Unless a test says otherwise, each model is checked (``check_against_reference``)
under ``init``, ``apply``, ``jax.jit(init)``, ``jax.jit(apply)`` and ``jax.grad`` of
apply with respect to the params (compared with ``jax.grad`` of the reference;
``jax.jacfwd`` for while loops, which JAX cannot reverse-differentiate).

Equality: RNG draws (``jax.random.bits`` / masks / key data), integers and booleans
are compared bitwise; floats with ``FLOAT_TOL`` (rtol 1e-6: purify runs one compiled
program, the reference runs op by op, so the order of float operations may differ by
an ulp); gradients with ``GRAD_TOL`` (rtol 1e-5). Shapes are tiny and XLA's
optimizations are off for this module (the ``fast_compiles`` fixture): compiles are the cost.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from purify import keys

FLOAT_TOL = dict(rtol=1e-6, atol=1e-6)
GRAD_TOL = dict(rtol=1e-5, atol=1e-6)
ROOT = jax.random.PRNGKey(42)


pytestmark = pytest.mark.usefixtures("fast_compiles")


# ============================================================================ helpers
def normal_init(key, shape, dtype):
  """The initializer the test models use: reproducible by hand from the key."""
  return jax.random.normal(key, shape, dtype)


def ref_param(root, path, shape, init=normal_init, dtype=jnp.float32):
  """The initial value of parameter ``path`` (= ``"module/name"``)."""
  return init(keys.param_key(root, path), shape, dtype)


def ref_linear(root, module, n_in, n_out):
  """purify.nn.Linear's initial params, by hand: w ~ Haiku TruncatedNormal(1/sqrt(n_in))
  (a standard normal cut at +-2, times the stddev, not rescaled), b = 0."""
  real = np.asarray(1.0 / np.sqrt(n_in), np.float32)
  w = jax.random.truncated_normal(keys.param_key(root, f"{module}/w"), -2.0, 2.0,
                                  (n_in, n_out), jnp.float32) * real
  return {"w": w.astype(jnp.float32), "b": jnp.zeros((n_out,), jnp.float32)}


def site_key(root, site, loop=(), batch=()):
  """The key of a draw at ``site`` inside loops ``loop`` and vmaps ``batch`` (keys.py)."""
  return keys.fold_indices(keys.rng_key(keys.fold_indices(root, *loop), site), *batch)


def bits(key, shape=(3,)):
  return jax.random.bits(key, shape)


def _is_key(x):
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def assert_same(got, want, tol=FLOAT_TOL, what=""):
  """Same tree, same shapes and dtypes; floats within ``tol``, everything else bitwise."""
  gs, ws = jax.tree_util.tree_structure(got), jax.tree_util.tree_structure(want)
  assert gs == ws, f"{what}: tree {gs} != {ws}"
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    if _is_key(g) or _is_key(w):
      assert _is_key(g) and _is_key(w), f"{what}: key kind differs: {g.dtype} vs {w.dtype}"
      assert g.dtype == w.dtype, f"{what}: key impl {g.dtype} != {w.dtype}"
      g, w = jax.random.key_data(g), jax.random.key_data(w)
    g, w = np.asarray(g), np.asarray(w)
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    assert g.dtype == w.dtype, f"{what}: dtype {g.dtype} != {w.dtype}"
    if np.issubdtype(g.dtype, np.floating):
      np.testing.assert_allclose(g, w, err_msg=what, **tol)
    else:
      np.testing.assert_array_equal(g, w, err_msg=what)


def scalar_loss(out):
  """A scalar of every float leaf of ``out`` (squared, so the gradient depends on the
  value but not more sensitively than the value itself)."""
  total = jnp.zeros((), jnp.float32)
  for leaf in jax.tree_util.tree_leaves(out):
    if not _is_key(leaf) and jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      total = total + 0.5 * jnp.sum(leaf * leaf)
  return total


def check_against_reference(t, ref_init, ref_apply, root, *args, deriv="rev", more_args=()):
  """Compare ``t`` with the reference under init, jax.jit(init), apply, jax.jit(apply)
  and the derivative of apply w.r.t. the params (``deriv``: "rev" = jax.grad, "fwd" =
  jax.jacfwd for programs JAX cannot reverse-differentiate (while_loop), None = skip;
  purify's side runs under jax.jit, the reference's eagerly: the fastest of each).
  ``more_args``: further argument tuples of the same signature (another branch index,
  another predicate) checked under apply and jax.jit(apply) with the same params.

  ``ref_init(root, *args)`` returns params (``(params, state)`` for
  transform_with_state); ``ref_apply`` has ``apply``'s signature. Returns
  ``(init result, apply result)`` of purify."""
  stateful = isinstance(t, purify.TransformedWithState)
  want_init = ref_init(root, *args)
  got_init = t.init(root, *args)
  assert_same(got_init, want_init, what="init")
  assert_same(jax.jit(t.init)(root, *args), want_init, what="jax.jit(init)")
  pre = tuple(got_init) if stateful else (got_init,)
  japply = jax.jit(t.apply)
  for i, a in enumerate((args,) + tuple(more_args)):
    want = ref_apply(*pre, root, *a)
    got_a = t.apply(*pre, root, *a)
    assert_same(got_a, want, what=f"apply (args #{i})")
    assert_same(japply(*pre, root, *a), want, what=f"jax.jit(apply) (args #{i})")
    if i == 0:
      got = got_a
  if deriv is not None:
    def loss_of(apply_fn):
      def loss(params):
        out = apply_fn(params, *pre[1:], root, *args)
        return scalar_loss(out[0] if stateful else out)
      return loss
    d = jax.grad if deriv == "rev" else jax.jacfwd
    assert_same(jax.jit(d(loss_of(t.apply)))(pre[0]), d(loss_of(ref_apply))(pre[0]),
                tol=GRAD_TOL, what=f"{d.__name__} of apply w.r.t. params")
  return got_init, got


def counter(name="n", by=1):
  """Increment int32 state ``name`` (created at 0) of the current module."""
  n = purify.get_state(name, (), jnp.int32, init=jnp.zeros)
  purify.set_state(name, n + by)
  return n


X3 = jnp.array([0.5, -1.0, 2.0], jnp.float32)


# ============================================================================ jax.vmap
def test_vmap_shares_params_and_gives_each_example_its_own_key():
  def model(x):                                           # x: (2, 3)
    def per_example(xi):
      w = purify.param("w", (3,), init=normal_init)
      k = purify.next_rng_key()
      s = purify.get_state("seen", (), jnp.float32)
      purify.set_state("seen", s + jax.lax.psum(jnp.sum(xi), "b"))   # reduced: shared
      return xi * w + jax.random.uniform(k, (3,)), bits(k)
    return jax.vmap(per_example, axis_name="b")(x)

  def ref_init(root, x):
    return {"~": {"w": ref_param(root, "~/w", (3,))}}, {"~": {"seen": jnp.zeros(())}}

  def ref_apply(params, state, root, x):
    w = params["~"]["w"]
    ks = jnp.stack([site_key(root, "~#0", batch=(b,)) for b in range(x.shape[0])])
    y = x * w + jax.vmap(lambda k: jax.random.uniform(k, (3,)))(ks)
    return (y, jax.vmap(bits)(ks)), {"~": {"seen": state["~"]["seen"] + jnp.sum(x)}}

  x = jnp.stack([X3, 2 * X3])
  (params, _), ((_, draws), _) = check_against_reference(
      purify.transform_with_state(model), ref_init, ref_apply, ROOT, x)
  assert params["~"]["w"].shape == (3,)                   # shared, not (2, 3)
  assert not np.array_equal(draws[0], draws[1])


# ============================================================================ jax.lax.scan
def test_scan_gives_each_step_its_own_key_indexed_by_position_in_xs_also_reversed():
  def step(c, x):
    w = purify.param("w", (3,), init=normal_init)
    k = purify.next_rng_key()
    counter()
    return c * w + x + jax.random.uniform(k, (3,)), bits(k)

  def model(xs):                                          # xs: (3, 3)
    fwd = jax.lax.scan(step, jnp.ones(3), xs)                 # site ~#0
    rev = jax.lax.scan(step, jnp.ones(3), xs, reverse=True)   # site ~#1
    return fwd, rev

  def ref_init(root, xs):
    return {"~": {"w": ref_param(root, "~/w", (3,))}}, {"~": {"n": jnp.zeros((), jnp.int32)}}

  def ref_scan(w, root, site, xs, order):
    c, ys = jnp.ones(3), [None] * len(xs)
    for i in order:
      k = site_key(root, site, loop=(i,))                 # i = position in xs
      c = c * w + xs[i] + jax.random.uniform(k, (3,))
      ys[i] = bits(k)
    return c, jnp.stack(ys)

  def ref_apply(params, state, root, xs):
    w, n = params["~"]["w"], len(xs)
    out = (ref_scan(w, root, "~#0", xs, range(n)),
           ref_scan(w, root, "~#1", xs, range(n - 1, -1, -1)))
    return out, {"~": {"n": state["~"]["n"] + 2 * n}}

  xs = jnp.stack([X3, -X3, 0.5 * X3])
  _, (((_, draws), _), _) = check_against_reference(
      purify.transform_with_state(model), ref_init, ref_apply, ROOT, xs)
  assert len({tuple(np.asarray(d)) for d in draws}) == 3


# ============================================================================ fori / while
def test_fori_loop_gives_each_iteration_its_own_key():
  def model(x):
    def body(i, carry):
      c, buf = carry
      w = purify.param("w", (3,), init=normal_init)
      k = purify.next_rng_key()
      counter()
      return c * w + jax.random.uniform(k, (3,)), buf.at[i].set(bits(k))
    return jax.lax.fori_loop(0, 3, body, (x, jnp.zeros((3, 3), jnp.uint32)))

  def ref_init(root, x):
    return {"~": {"w": ref_param(root, "~/w", (3,))}}, {"~": {"n": jnp.zeros((), jnp.int32)}}

  def ref_apply(params, state, root, x):
    c, buf = x, jnp.zeros((3, 3), jnp.uint32)
    for i in range(3):
      k = site_key(root, "~#0", loop=(i,))
      c = c * params["~"]["w"] + jax.random.uniform(k, (3,))
      buf = buf.at[i].set(bits(k))
    return (c, buf), {"~": {"n": state["~"]["n"] + 3}}

  check_against_reference(purify.transform_with_state(model), ref_init, ref_apply, ROOT, X3)


def test_while_loop_gives_each_iteration_its_own_key():
  def body(i, c, buf):
    w = purify.param("w", (3,), init=normal_init)
    k = purify.next_rng_key()
    counter()
    return c * w + jax.random.uniform(k, (3,)), buf.at[i].set(bits(k))

  def model(x, n):                                        # n: traced int32 trip count
    buf0 = jnp.zeros((4, 3), jnp.uint32)
    _, c, buf = jax.lax.while_loop(lambda s: s[0] < n,    # site ~#0
                                   lambda s: (s[0] + 1, *body(s[0], s[1], s[2])),
                                   (jnp.int32(0), x, buf0))
    # fori_loop with a traced bound is a while loop too   # site ~#1
    return (c, buf), jax.lax.fori_loop(0, n, lambda i, s: body(i, *s), (x, buf0))

  def ref_init(root, x, n):
    return {"~": {"w": ref_param(root, "~/w", (3,))}}, {"~": {"n": jnp.zeros((), jnp.int32)}}

  def ref_loop(w, root, site, x, n):
    c, buf = x, jnp.zeros((4, 3), jnp.uint32)
    for i in range(n):
      k = site_key(root, site, loop=(i,))
      c = c * w + jax.random.uniform(k, (3,))
      buf = buf.at[i].set(bits(k))
    return c, buf

  def ref_apply(params, state, root, x, n):
    w = params["~"]["w"]
    out = ref_loop(w, root, "~#0", x, int(n)), ref_loop(w, root, "~#1", x, int(n))
    return out, {"~": {"n": state["~"]["n"] + 2 * n}}

  # JAX cannot reverse-differentiate a while loop: forward mode w.r.t. the params.
  check_against_reference(purify.transform_with_state(model), ref_init, ref_apply, ROOT,
                          X3, jnp.int32(3), deriv="fwd", more_args=[(X3, jnp.int32(1))])


@pytest.mark.parametrize("ad", ["jvp", "linearize", "vjp"])
def test_while_loop_keys_are_per_iteration_under_jvp_linearize_and_vjp(ad):
  """Forward-mode differentiation of a while loop inside the model (jax.linearize
  and jax.vjp linearize it: JAX cannot transpose it, so vjp's primal only): each
  iteration keeps its own key, and the primal is the plain loop's."""
  def step(c):
    w = purify.param("w", (3,), init=normal_init)
    counter()
    return jnp.tanh(c * w + jax.random.uniform(purify.next_rng_key(), (3,)))

  def f(x, n):
    return jax.lax.while_loop(lambda s: s[0] < n, lambda s: (s[0] + 1, step(s[1])),
                              (jnp.int32(0), x))[1]

  def differentiate(f, x, t):
    if ad == "jvp":
      return jax.jvp(f, (x,), (t,))
    if ad == "linearize":
      y, f_jvp = jax.linearize(f, x)
      return y, f_jvp(t)
    return jax.vjp(f, x)[0], None

  def model(x, n):
    return differentiate(lambda x: f(x, n), x, jnp.ones_like(x))

  def ref_init(root, x, n):
    return {"~": {"w": ref_param(root, "~/w", (3,))}}, {"~": {"n": jnp.zeros((), jnp.int32)}}

  def ref_apply(params, state, root, x, n):
    def loop(x):
      c = x
      for i in range(int(n)):
        k = site_key(root, "~#0", loop=(i,))
        c = jnp.tanh(c * params["~"]["w"] + jax.random.uniform(k, (3,)))
      return c
    return differentiate(loop, x, jnp.ones_like(x)), {"~": {"n": state["~"]["n"] + n}}

  check_against_reference(purify.transform_with_state(model), ref_init, ref_apply, ROOT,
                          X3, jnp.int32(3), deriv="fwd", more_args=[(X3, jnp.int32(1))])


# ============================================================================ cond / switch
class Branch(purify.Module):
  """A layer with a parameter and a key draw (site ``<module>#0``)."""

  def __call__(self, x):
    w = purify.param("w", (3,), init=normal_init)
    k = purify.next_rng_key()
    return x * w + jax.random.uniform(k, (3,)), bits(k)


def ref_branch(params, root, module, x, loop=()):
  k = site_key(root, f"{module}#0", loop=loop)
  return x * params[module]["w"] + jax.random.uniform(k, (3,)), bits(k)


def test_cond_creates_params_of_every_branch_and_threads_state():
  def model(p, x):
    a, b = Branch(name="a"), Branch(name="b")

    def on_true(x):
      counter("n", 1)
      purify.set_state("only_true", purify.get_state("only_true", (3,)) + x)
      return a(x)

    def on_false(x):
      counter("n", 10)                                  # only_true passes through
      return b(x)
    return jax.lax.cond(p, on_true, on_false, x)

  def ref_init(root, p, x):
    params = {"a": {"w": ref_param(root, "a/w", (3,))}, "b": {"w": ref_param(root, "b/w", (3,))}}
    return params, {"~": {"n": jnp.zeros((), jnp.int32), "only_true": jnp.zeros(3)}}

  def ref_apply(params, state, root, p, x):
    n, acc = state["~"]["n"], state["~"]["only_true"]
    if p:
      out, n, acc = ref_branch(params, root, "a", x), n + 1, acc + x
    else:
      out, n = ref_branch(params, root, "b", x), n + 10
    return out, {"~": {"n": n, "only_true": acc}}

  (params, _), _ = check_against_reference(
      purify.transform_with_state(model), ref_init, ref_apply, ROOT, jnp.bool_(True), X3,
      more_args=[(jnp.bool_(False), X3)])
  assert set(params) == {"a", "b"}                       # both branches, whatever pred


def test_switch_creates_params_of_every_branch_and_threads_state():
  def model(i, x):
    mods = [Branch(name=f"s{j}") for j in range(3)]

    def make(j):
      def branch(x):
        counter("n", j + 1)
        return mods[j](x)
      return branch
    return jax.lax.switch(i, [make(j) for j in range(3)], x)

  def ref_init(root, i, x):
    return ({f"s{j}": {"w": ref_param(root, f"s{j}/w", (3,))} for j in range(3)},
            {"~": {"n": jnp.zeros((), jnp.int32)}})

  def ref_apply(params, state, root, i, x):
    j = int(i)
    return ref_branch(params, root, f"s{j}", x), {"~": {"n": state["~"]["n"] + j + 1}}

  (params, _), _ = check_against_reference(
      purify.transform_with_state(model), ref_init, ref_apply, ROOT, jnp.int32(1), X3,
      more_args=[(jnp.int32(0), X3), (jnp.int32(2), X3)])
  assert set(params) == {"s0", "s1", "s2"}


# ============================================================================ checkpoint / jit
def _layer_with_all_effects(x):
  w = purify.param("w", (3,), init=normal_init)
  k = purify.next_rng_key()
  counter()
  keep = jax.random.bernoulli(k, 0.5, (3,))
  return jnp.where(keep, jnp.tanh(x * w), 0.0), keep


def _ref_layer(params, root, x, loop=(), site="~#0"):
  keep = jax.random.bernoulli(site_key(root, site, loop=loop), 0.5, (3,))
  return jnp.where(keep, jnp.tanh(x * params["~"]["w"]), 0.0), keep


def _ref_w_and_counter(root, *args):
  return {"~": {"w": ref_param(root, "~/w", (3,))}}, {"~": {"n": jnp.zeros((), jnp.int32)}}


def test_checkpoint_and_jit_inside_model_keep_one_key_per_site_and_share_params():
  def model(x):
    y, k1 = jax.jit(_layer_with_all_effects)(x)           # site ~#0
    z, k2 = jax.jit(_layer_with_all_effects)(y)           # same function again: site ~#1
    u, k3 = jax.checkpoint(_layer_with_all_effects)(z)    # site ~#2, one key for both copies
    return u, k1, k2, k3

  def ref_apply(params, state, root, x):
    y, k1 = _ref_layer(params, root, x, site="~#0")
    z, k2 = _ref_layer(params, root, y, site="~#1")
    u, k3 = _ref_layer(params, root, z, site="~#2")
    return (u, k1, k2, k3), {"~": {"n": state["~"]["n"] + 3}}

  check_against_reference(purify.transform_with_state(model), _ref_w_and_counter, ref_apply,
                          ROOT, X3)


# ============================================================================ grad inside
def test_grad_inside_model_sees_params_keys_and_state():
  def model(x):
    g, keep = jax.grad(lambda x: (lambda y, k: (jnp.sum(y), k))(*_layer_with_all_effects(x)),
                       has_aux=True)(x)
    return g, keep

  def ref_apply(params, state, root, x):
    g, keep = jax.grad(lambda x: (lambda y, k: (jnp.sum(y), k))(*_ref_layer(params, root, x)),
                       has_aux=True)(x)
    return (g, keep), {"~": {"n": state["~"]["n"] + 1}}

  check_against_reference(purify.transform_with_state(model), _ref_w_and_counter, ref_apply,
                          ROOT, X3)


def test_key_drawn_in_scan_under_grad_is_still_per_step():
  def model(xs):                                         # xs: (3, 3)
    def loss(xs):
      def step(c, x):
        y, keep = _layer_with_all_effects(x)
        return c + jnp.sum(y), keep
      return jax.lax.scan(step, jnp.zeros(()), xs)
    return jax.grad(loss, has_aux=True)(xs)

  def ref_apply(params, state, root, xs):
    def loss(xs):
      c, keeps = jnp.zeros(()), []
      for i in range(len(xs)):
        y, keep = _ref_layer(params, root, xs[i], loop=(i,))
        c, keeps = c + jnp.sum(y), keeps + [keep]
      return c, jnp.stack(keeps)
    return jax.grad(loss, has_aux=True)(xs), {"~": {"n": state["~"]["n"] + len(xs)}}

  xs = jnp.stack([X3, -X3, 0.5 * X3])
  _, ((_, keeps), _) = check_against_reference(
      purify.transform_with_state(model), _ref_w_and_counter, ref_apply, ROOT, xs)
  assert len({tuple(np.asarray(k)) for k in keeps}) > 1


@pytest.mark.parametrize("loop", ["scan", "fori"])
@pytest.mark.parametrize("depth,policy", [(1, None), (2, None), (3, None),
                                          (2, "everything_saveable"),
                                          (2, "dots_saveable")])
def test_key_drawn_in_nested_checkpoints_in_a_loop_under_grad_is_still_per_step(
    loop, depth, policy):
  """jax.checkpoint changes no value: nested checkpoints (with any policy) around a
  draw in a loop under jax.grad still give each step its own key (harness-7: from two
  nested checkpoints on, JAX's remat partial evaluation let the loop hoist the draw
  out as loop-invariant, and every step got one key)."""
  pol = policy and getattr(jax.checkpoint_policies, policy)

  def model(xs):                                         # xs: (3, 3)
    def loss(xs):
      def step(c, x):
        layer = _layer_with_all_effects
        for _ in range(depth):
          layer = jax.checkpoint(layer, policy=pol)
        y, keep = layer(x + c)
        return c + y, keep
      if loop == "scan":
        c, keeps = jax.lax.scan(step, jnp.zeros(3), xs)
      else:
        def body(i, carry):
          c, keeps = carry
          c, keep = step(c, xs[i])
          return c, keeps.at[i].set(keep)
        c, keeps = jax.lax.fori_loop(0, len(xs), body, (jnp.zeros(3), jnp.zeros((3, 3), bool)))
      return jnp.sum(c), keeps
    return jax.grad(loss, has_aux=True)(xs)

  def ref_apply(params, state, root, xs):
    def loss(xs):
      c, keeps = jnp.zeros(3), []
      for i in range(len(xs)):
        y, keep = _ref_layer(params, root, xs[i] + c, loop=(i,))
        c, keeps = c + y, keeps + [keep]
      return jnp.sum(c), jnp.stack(keeps)
    return jax.grad(loss, has_aux=True)(xs), {"~": {"n": state["~"]["n"] + len(xs)}}

  xs = jnp.stack([X3, -X3, 0.5 * X3])
  _, ((_, keeps), _) = check_against_reference(
      purify.transform_with_state(model), _ref_w_and_counter, ref_apply, ROOT, xs)
  assert len({tuple(np.asarray(k)) for k in keeps}) > 1


def _metamorphic_layer(c):
  w = purify.param("w", (3,), init=normal_init)
  return jnp.tanh(c * w + jax.random.normal(purify.next_rng_key(), c.shape))


_LOOPS = {
    "scan": lambda body, c: jax.lax.scan(lambda c, _: (body(c), None), c, None, length=3)[0],
    "fori": lambda body, c: jax.lax.fori_loop(0, 3, lambda i, c: body(c), c),
    "while": lambda body, c: jax.lax.while_loop(
        lambda s: s[0] < 3, lambda s: (s[0] + 1, body(s[1])), (0, c))[1],
    "cond_in_scan": lambda body, c: jax.lax.scan(lambda c, _: (jax.lax.cond(
        c.sum() > 100, lambda c: c, body, c), None), c, None, length=2)[0],
    "vmap_in_scan": lambda body, c: jax.lax.scan(
        lambda c, _: (jax.vmap(body)(c[None])[0], None), c, None, length=2)[0],
}
_AUX = lambda y: (y.sum(), y)  # noqa: E731
_ADS = {
    "jvp": lambda f, x: jax.jvp(f, (x,), (jnp.ones_like(x),))[0],
    "linearize": lambda f, x: jax.linearize(f, x)[0],
    "vjp": lambda f, x: jax.vjp(f, x)[0],
    "grad": lambda f, x: jax.grad(lambda x: _AUX(f(x)), has_aux=True)(x)[1],
    "grad_of_grad": lambda f, x: jax.grad(lambda x: _AUX(jax.grad(
        lambda y: _AUX(f(y)), has_aux=True)(x)[1]), has_aux=True)(x)[1],
    "jacrev": lambda f, x: jax.jacrev(lambda x: (lambda y: (y, y))(f(x)), has_aux=True)(x)[1],
}


# (JAX cannot reverse-differentiate a while loop: forward mode only there)
_AD_CASES = [(loop, ad, depth) for loop in sorted(_LOOPS) for ad in sorted(_ADS)
             for depth in (0, 2) if loop != "while" or ad in ("jvp", "linearize", "vjp")]


@pytest.mark.parametrize("loop,ad,depth", _AD_CASES)
def test_differentiating_inside_the_model_keeps_the_values_of_the_plain_call(loop, ad, depth):
  """Metamorphic: the primal of jvp / linearize / vjp / grad / grad of grad / jacrev
  of a model piece (a loop whose body draws, behind ``depth`` nested checkpoints)
  is the value of the plain call: the same keys, a key a step (it found a draw
  hoisted out of the loop, and jax.linearize of a while loop failing)."""
  def piece(x):
    body = _metamorphic_layer
    for _ in range(depth):
      body = jax.checkpoint(body)
    return _LOOPS[loop](body, x)

  plain = purify.transform(piece)
  differentiated = purify.transform(lambda x: _ADS[ad](piece, x))
  params = plain.init(ROOT, X3)
  want = plain.apply(params, jax.random.PRNGKey(1), X3)
  got = differentiated.apply(params, jax.random.PRNGKey(1), X3)
  np.testing.assert_allclose(got, want, **FLOAT_TOL)


@pytest.mark.parametrize("policy", [None, "everything_saveable", "dots_saveable"])
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("loop", ["scan", "fori"])
def test_checkpoints_around_a_loop_keep_the_gradient(loop, depth, policy):
  """jax.checkpoint around a loop whose body draws, under a jax.grad taken in the
  model: the gradient is the one without checkpoints (the backward pass recomputes
  each step's draw with that step's key, or saves it, as the policy says)."""
  pol = policy and getattr(jax.checkpoint_policies, policy)

  def grad_of(wrap):
    def model(x):
      f = wrap(lambda c: _LOOPS[loop](_metamorphic_layer, c))
      return jax.grad(lambda x: f(x).sum())(x)
    return purify.transform(model)

  def checkpointed(f):
    for _ in range(depth):
      f = jax.checkpoint(f, policy=pol)
    return f

  plain = grad_of(lambda f: f)
  params = plain.init(ROOT, X3)
  want = plain.apply(params, jax.random.PRNGKey(1), X3)
  got = grad_of(checkpointed).apply(params, jax.random.PRNGKey(1), X3)
  np.testing.assert_allclose(got, want, **GRAD_TOL)
  assert np.abs(want).min() > 0


# ============================================================================ eval_shape
def test_eval_shape_declares_params_that_init_creates_and_writes_no_state():
  def model(x):                                          # x: (2, 3)
    n = counter()                                        # n -> n + 1
    net, probe = purify.nn.Linear(4), purify.nn.Linear(2, name="probe")

    def shaped(x):
      purify.set_state("n", n + 100)                     # no effect inside eval_shape
      return net(x), probe(x)
    sds, probe_sds = jax.eval_shape(shaped, x)
    assert (sds.shape, probe_sds.shape) == ((2, 4), (2, 2))
    return net(x) + jnp.zeros(sds.shape)

  def ref_init(root, x):
    return ({"linear": ref_linear(root, "linear", 3, 4), "probe": ref_linear(root, "probe", 3, 2)},
            {"~": {"n": jnp.zeros((), jnp.int32)}})

  def ref_apply(params, state, root, x):
    p = params["linear"]
    return x @ p["w"] + p["b"], {"~": {"n": state["~"]["n"] + 1}}

  x = jnp.stack([X3, -X3])
  check_against_reference(purify.transform_with_state(model), ref_init, ref_apply, ROOT, x)


# ============================================================================ nesting
def test_vmap_in_scan_in_vmap_folds_step_then_site_then_example_indices():
  def model(x):                                          # x: (B1=2, T=3, B2=2, 3)
    def inner(xe):
      w = purify.param("w", (3,), init=normal_init)
      k = purify.next_rng_key()
      return xe * w + jax.random.uniform(k, (3,)), bits(k)

    def step(c, xt):
      y, b = jax.vmap(inner)(xt)
      s = purify.get_state("seen", (), jnp.float32)
      purify.set_state("seen", s + jax.lax.psum(jnp.sum(xt), "outer"))
      return c + jnp.sum(y, 0), b
    return jax.vmap(lambda xb: jax.lax.scan(step, jnp.zeros(3), xb), axis_name="outer")(x)

  def ref_init(root, x):
    return {"~": {"w": ref_param(root, "~/w", (3,))}}, {"~": {"seen": jnp.zeros(())}}

  def ref_apply(params, state, root, x):
    w = params["~"]["w"]
    B1, T, B2, _ = x.shape
    cs, bs = [], []
    for b1 in range(B1):
      c, per_t = jnp.zeros(3), []
      for t in range(T):
        ys, row = [], []
        for b2 in range(B2):
          k = site_key(root, "~#0", loop=(t,), batch=(b1, b2))
          ys.append(x[b1, t, b2] * w + jax.random.uniform(k, (3,)))
          row.append(bits(k))
        c = c + jnp.sum(jnp.stack(ys), 0)
        per_t.append(jnp.stack(row))
      cs.append(c)
      bs.append(jnp.stack(per_t))
    return (jnp.stack(cs), jnp.stack(bs)), {"~": {"seen": state["~"]["seen"] + jnp.sum(x)}}

  x = jnp.arange(2 * 3 * 2 * 3, dtype=jnp.float32).reshape(2, 3, 2, 3) / 10.0
  _, ((_, draws), _) = check_against_reference(
      purify.transform_with_state(model), ref_init, ref_apply, ROOT, x)
  flat = np.asarray(draws).reshape(-1, 3)
  assert len({tuple(r) for r in flat}) == flat.shape[0]   # 12 distinct keys


def test_cond_in_scan_threads_state_and_keys_per_step():
  def model(xs):                                         # xs: (4, 3)
    a, b = Branch(name="a"), Branch(name="b")

    def step(c, x):
      def on_true(x):
        counter("n", 1)
        return a(x)

      def on_false(x):
        counter("n", 10)
        return b(x)
      y, drawn = jax.lax.cond(x[0] > 0, on_true, on_false, x + c)
      return c + y, drawn
    return jax.lax.scan(step, jnp.zeros(3), xs)

  def ref_init(root, xs):
    params = {"a": {"w": ref_param(root, "a/w", (3,))}, "b": {"w": ref_param(root, "b/w", (3,))}}
    return params, {"~": {"n": jnp.zeros((), jnp.int32)}}

  def ref_apply(params, state, root, xs):
    c, n, drawn = jnp.zeros(3), state["~"]["n"], []
    for i in range(len(xs)):
      mod, by = ("a", 1) if np.asarray(xs)[i, 0] > 0 else ("b", 10)
      y, d = ref_branch(params, root, mod, xs[i] + c, loop=(i,))
      c, n = c + y, n + by
      drawn.append(d)
    return (c, jnp.stack(drawn)), {"~": {"n": n}}

  xs = jnp.stack([X3, -X3, X3, -X3])
  check_against_reference(purify.transform_with_state(model), ref_init, ref_apply, ROOT, xs)


def test_remat_in_jit_in_scan_keeps_per_step_keys_and_shared_params():
  def model(xs):
    def step(c, x):
      y, keep = jax.jit(jax.checkpoint(_layer_with_all_effects))(x + c)
      return y, keep
    return jax.lax.scan(step, jnp.zeros(3), xs)

  def ref_apply(params, state, root, xs):
    c, keeps = jnp.zeros(3), []
    for i in range(len(xs)):
      c, keep = _ref_layer(params, root, xs[i] + c, loop=(i,))
      keeps.append(keep)
    return (c, jnp.stack(keeps)), {"~": {"n": state["~"]["n"] + len(xs)}}

  xs = jnp.stack([X3, -X3, 0.5 * X3])
  check_against_reference(purify.transform_with_state(model), _ref_w_and_counter, ref_apply,
                          ROOT, xs)


# ============================================================================ trace once
def _counting_model(calls):
  def model(x, is_training):
    calls.append((x.shape, is_training))
    y = purify.nn.Linear(2)(x)
    if is_training:
      y = jnp.where(jax.random.bernoulli(purify.next_rng_key(), 0.5, y.shape), y, 0.0)
    return y
  return model


def test_user_function_is_traced_once_per_input_signature():
  calls = []
  init, apply = purify.transform(_counting_model(calls))
  jinit = jax.jit(init, static_argnames="is_training")
  japply = jax.jit(apply, static_argnames="is_training")

  def all_four(x, is_training):
    p = init(ROOT, x, is_training=is_training)
    apply(p, ROOT, x, is_training=is_training)
    jinit(ROOT, x, is_training=is_training)
    japply(p, ROOT, x, is_training=is_training)

  small, big = jnp.ones((1, 3)), jnp.ones((2, 3))
  all_four(small, True)
  assert len(calls) == 1, calls
  all_four(small, True)
  assert len(calls) == 1, calls
  all_four(big, True)                                    # another array signature
  assert len(calls) == 2, calls
  all_four(small, False)                                 # another static value
  assert len(calls) == 3, calls
  all_four(big, False)
  assert calls == [((1, 3), True), ((2, 3), True), ((1, 3), False), ((2, 3), False)]


@pytest.mark.parametrize("how", ["static_argnames", "static_argnums"])
def test_jit_of_init_and_apply_accepts_static_is_training(how):
  # DESIGN.md: "Under a user's jax.jit(t.apply), Python scalars arrive as tracers (JAX's
  # rule): document static_argnames for is_training." init and apply take
  # (rng, *args) and (params, rng, *args): JAX must see THAT signature, not the model's.
  calls = []
  init, apply = purify.transform(_counting_model(calls))
  x = jnp.ones((1, 3))
  if how == "static_argnames":
    params = jax.jit(init, static_argnames="is_training")(ROOT, x, is_training=True)
    out = jax.jit(apply, static_argnames="is_training")(params, ROOT, x, is_training=True)
    want_params = init(ROOT, x, is_training=True)
    want = apply(params, ROOT, x, is_training=True)
  else:
    params = jax.jit(init, static_argnums=2)(ROOT, x, True)
    out = jax.jit(apply, static_argnums=3)(params, ROOT, x, True)
    want_params = init(ROOT, x, True)
    want = apply(params, ROOT, x, True)
  assert_same(params, want_params)
  assert_same(out, want)
  assert len(calls) == 1, calls                          # one signature, one trace


@pytest.mark.parametrize("where", ["scan", "reverse_scan", "fori", "while", "cond_taken",
                                   "cond_not_taken", "jit", "after_top_level_write"])
def test_state_created_by_set_state_starts_at_the_first_value_written(where):
  xs = jnp.arange(3.) + 5.

  def write(v):
    purify.set_state("s", v * 2.)

  def f(xs):
    if where in ("scan", "reverse_scan"):
      jax.lax.scan(lambda c, x: (write(x), c)[1:] + (None,), None, xs,
                   reverse=where == "reverse_scan")
    elif where == "fori":
      jax.lax.fori_loop(0, 3, lambda i, c: (write(xs[i]), c)[1], 0)
    elif where == "while":
      jax.lax.while_loop(lambda i: i < 3, lambda i: (write(xs[i]), i + 1)[1], 0)
    elif where.startswith("cond"):
      jax.lax.cond(xs[0] > (0 if where == "cond_taken" else 100), lambda: write(xs[1]),
                   lambda: None)
    elif where == "jit":
      jax.jit(write)(xs[2])
    else:
      write(xs[1])
      jax.lax.fori_loop(0, 3, lambda i, c: (write(xs[i]), c)[1], 0)
    return xs.sum()

  first = {"scan": xs[0], "reverse_scan": xs[2], "fori": xs[0], "while": xs[0],
           "cond_taken": xs[1], "cond_not_taken": 0., "jit": xs[2],
           "after_top_level_write": xs[1]}[where] * 2.
  last = {"scan": xs[2], "reverse_scan": xs[0], "fori": xs[2], "while": xs[2],
          "cond_taken": xs[1], "cond_not_taken": None, "jit": xs[2],
          "after_top_level_write": xs[2]}[where]
  init, apply = purify.transform_with_state(f)
  _, state = init(None, xs)
  np.testing.assert_array_equal(state["~"]["s"], first)
  _, new = apply({}, {"~": {"s": jnp.float32(-1.)}}, None, xs)
  np.testing.assert_array_equal(new["~"]["s"], -1. if last is None else last * 2.)


def test_get_state_without_init_keeps_the_first_value_of_a_set_state_created_state():
  def f(x):
    purify.set_state("a", x * 2)
    return purify.get_state("a")

  _, state = purify.transform_with_state(f).init(None, jnp.ones(2))
  np.testing.assert_array_equal(state["~"]["a"], [2., 2.])


# ============================================================================ trace caches
@jax.jit
def _jitted_dropout_linear(x):
  y = purify.nn.Linear(8)(x)
  keep = jax.random.bernoulli(purify.next_rng_key(), 0.5, y.shape)
  return jnp.where(keep, y, 0.0), keep


def test_jitted_helper_called_twice_creates_two_modules_and_two_masks():
  def model(x):
    y1, m1 = _jitted_dropout_linear(x)
    y2, m2 = _jitted_dropout_linear(x)
    return y1 + y2, m1, m2

  def ref_init(root, x):
    return {"linear": ref_linear(root, "linear", 3, 8), "linear_1": ref_linear(root, "linear_1", 3, 8)}

  def ref_apply(params, root, x):
    outs = []
    for module, site in (("linear", "~#0"), ("linear_1", "~#1")):
      p = params[module]
      keep = jax.random.bernoulli(site_key(root, site), 0.5, (8,))
      outs.append((jnp.where(keep, x @ p["w"] + p["b"], 0.0), keep))
    return outs[0][0] + outs[1][0], outs[0][1], outs[1][1]

  params, (_, m1, m2) = check_against_reference(purify.transform(model), ref_init, ref_apply,
                                                ROOT, X3)
  assert set(params) == {"linear", "linear_1"}
  assert not np.array_equal(m1, m2)


def _shared_scan_body(c, x):
  y = purify.nn.Linear(3)(c + x)
  keep = jax.random.bernoulli(purify.next_rng_key(), 0.5, y.shape)
  return jnp.where(keep, y, 0.0), keep


def test_one_scan_body_used_in_two_scans_creates_two_modules_and_two_key_sites():
  def model(xs):
    c1, k1 = jax.lax.scan(_shared_scan_body, jnp.zeros(3), xs)
    c2, k2 = jax.lax.scan(_shared_scan_body, c1, xs)
    return c2, k1, k2

  def ref_init(root, xs):
    return {"linear": ref_linear(root, "linear", 3, 3), "linear_1": ref_linear(root, "linear_1", 3, 3)}

  def ref_apply(params, root, xs):
    c, masks = jnp.zeros(3), []
    for module, site in (("linear", "~#0"), ("linear_1", "~#1")):
      p, ks = params[module], []
      for i in range(len(xs)):
        keep = jax.random.bernoulli(site_key(root, site, loop=(i,)), 0.5, (3,))
        c = jnp.where(keep, (c + xs[i]) @ p["w"] + p["b"], 0.0)
        ks.append(keep)
      masks.append(jnp.stack(ks))
    return c, masks[0], masks[1]

  xs = jnp.stack([X3, -X3])
  params, (_, k1, k2) = check_against_reference(purify.transform(model), ref_init, ref_apply,
                                                ROOT, xs)
  assert set(params) == {"linear", "linear_1"}
  assert not np.array_equal(k1, k2)


_pure_helper_traces = []


@jax.jit
def _pure_helper(x):
  _pure_helper_traces.append(1)
  return jnp.tanh(x) * 2.


def test_a_pure_jitted_helper_between_effects_is_traced_once_per_trace_context():
  """Effects change JAX's cache scope only inside nested traces (once each), so a
  helper without effects keeps hitting JAX's cache between the model's effects."""
  def model(x):
    for i in range(4):
      x = _pure_helper(x * purify.param(f"w{i}", (3,), init=normal_init))
    def body(c, _):
      c = _pure_helper(c * purify.param("v", (3,), init=normal_init))
      c = _pure_helper(c + jax.random.normal(purify.next_rng_key(), (3,)))
      return _pure_helper(c), None
    return jax.lax.scan(body, x, None, length=2)[0]

  _pure_helper_traces.clear()
  purify.make_jaxpr(model)(X3)
  # once at the top level, once in the scan body (whose first effect, before the
  # helper's first call there, changed the scope once); before: once per effect
  assert len(_pure_helper_traces) == 2, len(_pure_helper_traces)


# ============================================================================ keys
class A(purify.Module):
  def __init__(self, extra: bool, name=None):
    super().__init__(name=name)
    self.extra = extra

  def __call__(self, x):
    if self.extra:                                       # a layer and an rng site, added
      x = purify.nn.Linear(3)(x) + jax.random.uniform(purify.next_rng_key(), (3,))
      purify.param("v", (2,), init=normal_init)
    return x * purify.param("w", (3,), init=normal_init), bits(purify.next_rng_key())


class B(purify.Module):
  def __call__(self, x):
    return x * purify.param("w", (3,), init=normal_init), bits(purify.next_rng_key())


def test_adding_an_rng_site_in_one_module_changes_no_other_modules_keys_or_params():
  def make(extra):
    def model(x):
      ya, da = A(extra)(x)
      yb, db = B()(ya)
      return yb, da, db
    return purify.transform(model)

  before, after = make(False), make(True)
  p0, p1 = before.init(ROOT, X3), after.init(ROOT, X3)
  assert set(p1) - set(p0) == {"a/linear"} and set(p1["a"]) == {"v", "w"}
  assert_same(p1["b"], p0["b"])
  assert_same(p1["a"]["w"], p0["a"]["w"])
  assert_same(p0["b"]["w"], ref_param(ROOT, "b/w", (3,)))
  _, _, db0 = before.apply(p0, ROOT, X3)
  _, da1, db1 = after.apply(p1, ROOT, X3)
  assert_same(db1, db0)                                  # b's key: unchanged
  assert_same(db0, bits(site_key(ROOT, "b#0")))
  assert_same(da1, bits(site_key(ROOT, "a#1")))          # a's 2nd draw, by full name


@pytest.mark.parametrize("kind", ["raw PRNGKey", "typed key"])
def test_raw_and_typed_root_keys_work_and_keys_have_the_roots_kind(kind):
  root = jax.random.PRNGKey(7) if kind == "raw PRNGKey" else jax.random.key(7)

  def model(x):                                          # x: (2, 3)
    w = purify.param("w", (3,), init=normal_init)
    k = purify.next_rng_key()
    ks = jax.vmap(lambda _: purify.next_rng_key())(x)
    _, kt = jax.lax.scan(lambda c, _: (c, purify.next_rng_key()), 0.0, x)
    return x * w, k, ks, kt

  def ref_init(r, x):
    return {"~": {"w": ref_param(r, "~/w", (3,))}}

  def ref_apply(params, r, x):
    return (x * params["~"]["w"], site_key(r, "~#0"),
            jnp.stack([site_key(r, "~#1", batch=(b,)) for b in range(2)]),
            jnp.stack([site_key(r, "~#2", loop=(i,)) for i in range(2)]))

  x = jnp.stack([X3, -X3])
  params, (_, k, ks, kt) = check_against_reference(purify.transform(model), ref_init,
                                                   ref_apply, root, x)
  for got in (k, ks, kt):
    assert got.dtype == root.dtype
    assert _is_key(got) == _is_key(root)
  assert ks.shape[:1] == (2,) and kt.shape[:1] == (2,)
  # the same derivation whatever the kind: typed threefry keys carry the raw key's data
  raw_k = site_key(jax.random.PRNGKey(7), "~#0")
  np.testing.assert_array_equal(jax.random.key_data(k) if _is_key(k) else k, raw_k)
  assert_same(params["~"]["w"], ref_param(jax.random.PRNGKey(7), "~/w", (3,)))


# ============================================================================ state / outputs
def test_transform_with_state_init_returns_initial_state():
  def model(x):
    n = counter("count")
    return x + n

  init, apply = purify.transform_with_state(model)
  for run_init in (init, jax.jit(init)):
    params, state = run_init(ROOT, X3)
    assert params == {}
    assert_same(state, {"~": {"count": jnp.zeros((), jnp.int32)}})
  out, state = apply(params, state, None, X3)
  assert_same(state, {"~": {"count": jnp.ones((), jnp.int32)}})
  assert_same(out, X3)
  _, state = apply(params, state, None, X3)
  assert_same(state["~"]["count"], jnp.int32(2))


def test_non_array_outputs_are_returned_as_they_were():
  def model(x):
    sds = jax.eval_shape(purify.nn.Linear(4), x)
    return {"shape": sds, "tag": "hello", "n": 3, "none": None, "y": purify.nn.Linear(4)(x)}

  init, apply = purify.transform(model)
  params = init(ROOT, jnp.ones((2, 3)))
  assert set(params) == {"linear", "linear_1"}
  out = apply(params, None, jnp.ones((2, 3)))
  assert out["shape"] == jax.ShapeDtypeStruct((2, 4), jnp.float32)
  assert isinstance(out["shape"], jax.ShapeDtypeStruct)
  assert out["tag"] == "hello" and out["n"] == 3 and type(out["n"]) is int
  assert out["none"] is None
  p = params["linear_1"]
  assert_same(out["y"], jnp.ones((2, 3)) @ p["w"] + p["b"])


# ============================================================================ leaks
def test_no_tracer_leaks_in_a_nested_model():
  def model(xs):                                         # xs: (2, 2, 3)
    lin = purify.nn.Linear(3)

    def step(c, x):
      y = jax.vmap(lambda e: jax.lax.cond(e[0] > 0, lin, lambda e: lin(-e), e))(x)
      y = jax.checkpoint(lambda y: jnp.where(
          jax.random.bernoulli(purify.next_rng_key(), 0.5, y.shape), y, 0.0))(y)
      counter()
      return c + jnp.sum(y), y
    return jax.lax.scan(jax.jit(step), jnp.zeros(()), xs)

  init, apply = purify.transform_with_state(model)
  xs = jnp.arange(12, dtype=jnp.float32).reshape(2, 2, 3) - 6.0
  with jax.checking_leaks():
    params, state = init(ROOT, xs)
    (c, ys), new_state = apply(params, state, ROOT, xs)
    params_j, state_j = jax.jit(init)(ROOT, xs)
  assert_same(params_j, params)
  assert_same(state_j, state)
  assert_same(new_state["~"]["n"], jnp.int32(2))
  assert ys.shape == (2, 2, 3)


# ============================================================================ drop-ins
class Member(purify.Module):
  def __call__(self, xe):
    w = purify.param("w", (3,), init=normal_init)
    return xe * w, bits(purify.next_rng_key())


def test_purify_vmap_param_axes_0_gives_members_distinct_params_whatever_split_rng():
  def model(x):                                          # x: (E=3, 3)
    a = purify.vmap(Member(name="split"), param_axes=0)(x)
    b = purify.vmap(Member(name="shared"), param_axes=0, split_rng=False)(x)
    return a, b

  def ref_members(root, module):
    member_keys = keys.fold_batch(keys.param_key(root, f"{module}/w"), (3,))
    return {"w": jax.vmap(lambda k: normal_init(k, (3,), jnp.float32))(member_keys)}

  def ref_init(root, x):
    return {"split": ref_members(root, "split"), "shared": ref_members(root, "shared")}

  def ref_apply(params, root, x):
    split = jnp.stack([bits(site_key(root, "split#0", batch=(e,))) for e in range(3)])
    shared = jnp.stack([bits(site_key(root, "shared#0"))] * 3)
    return ((x * params["split"]["w"], split), (x * params["shared"]["w"], shared))

  x = jnp.stack([X3, -X3, 2 * X3])
  params, ((_, split), (_, shared)) = check_against_reference(
      purify.transform(model), ref_init, ref_apply, ROOT, x)
  for module in ("split", "shared"):
    w = np.asarray(params[module]["w"])
    assert w.shape == (3, 3) and len({tuple(r) for r in w}) == 3   # distinct members
  assert len({tuple(r) for r in np.asarray(split)}) == 3
  assert len({tuple(r) for r in np.asarray(shared)}) == 1


def test_purify_vmap_split_rng_false_shares_one_key_across_the_batch():
  def model(x):                                          # x: (3, 3)
    def per(xe):
      w = purify.param("w", (3,), init=normal_init)
      k = purify.next_rng_key()
      return xe * w + jax.random.uniform(k, (3,)), bits(k)
    return purify.vmap(per, split_rng=False)(x)

  def ref_init(root, x):
    return {"~": {"w": ref_param(root, "~/w", (3,))}}

  def ref_apply(params, root, x):
    k = site_key(root, "~#0")                            # no example index folded in
    return x * params["~"]["w"] + jax.random.uniform(k, (3,)), jnp.stack([bits(k)] * 3)

  x = jnp.stack([X3, -X3, 2 * X3])
  params, _ = check_against_reference(purify.transform(model), ref_init, ref_apply, ROOT, x)
  assert params["~"]["w"].shape == (3,)


class Stacked(purify.Module):
  def __call__(self, h, _):
    w = purify.param("w", (3,), init=normal_init)
    k = purify.next_rng_key()
    return jnp.tanh(h * w) + jax.random.uniform(k, (3,)), bits(k)


def test_purify_scan_param_axes_0_gives_per_step_stacked_params_also_reversed():
  def model(h):
    fwd = purify.scan(Stacked(name="fwd"), h, None, length=4, param_axes=0)
    rev = purify.scan(Stacked(name="rev"), h, None, length=4, param_axes=0, reverse=True)
    return fwd, rev

  def ref_stack(root, module):
    step_keys = keys.fold_batch(keys.param_key(root, f"{module}/w"), (4,))
    return {"w": jax.vmap(lambda k: normal_init(k, (3,), jnp.float32))(step_keys)}

  def ref_init(root, h):
    return {"fwd": ref_stack(root, "fwd"), "rev": ref_stack(root, "rev")}

  def ref_scan(w, root, module, h, order):
    ys = [None] * 4
    for i in order:                                      # slice i = position in xs
      k = site_key(root, f"{module}#0", loop=(i,))
      h = jnp.tanh(h * w[i]) + jax.random.uniform(k, (3,))
      ys[i] = bits(k)
    return h, jnp.stack(ys)

  def ref_apply(params, root, h):
    return (ref_scan(params["fwd"]["w"], root, "fwd", h, range(4)),
            ref_scan(params["rev"]["w"], root, "rev", h, range(3, -1, -1)))

  params, _ = check_against_reference(purify.transform(model), ref_init, ref_apply, ROOT, X3)
  for module in ("fwd", "rev"):
    w = np.asarray(params[module]["w"])
    assert w.shape == (4, 3) and len({tuple(r) for r in w}) == 4
