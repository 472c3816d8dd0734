"""The drop-in transforms and their policies, against hand-written pure-JAX references:
map, fori_loop, while_loop, layer_stack, ensemble, param_axes dicts, interceptors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from purify import keys
from test_semantics import ROOT, bits, check_against_reference, normal_init, site_key


def stacked_param(root, path, n, shape):
  """A parameter stacked by param_axes=0: member i's key is fold(param_key, i)."""
  base = keys.param_key(root, path)
  return jnp.stack([normal_init(jax.random.fold_in(base, i), shape, jnp.float32) for i in range(n)])


def scale_layer(x):
  return x * purify.param("w", x.shape[-1:], init=normal_init)


def test_map_with_per_element_params_and_one_key_for_all():
  def model(xs):                                             # xs: (3, 2)
    f = lambda x: (scale_layer(x), bits(purify.next_rng_key(), (1,)))  # noqa: E731
    return purify.map(f, xs, split_rng=False, param_axes=0)

  def ref_init(root, xs):
    return {"~": {"w": stacked_param(root, "~/w", 3, (2,))}}

  def ref_apply(params, root, xs):
    return (xs * params["~"]["w"], jnp.stack([bits(site_key(root, "~#0"), (1,))] * 3))

  check_against_reference(purify.transform(model), ref_init, ref_apply, ROOT, jnp.ones((3, 2)))


@pytest.mark.parametrize("n,batch_size", [(5, 2), (5, 3), (2, 4), (6, 3)])
def test_map_batch_size_calls_the_function_once_so_modules_are_shared(n, batch_size):
  """jax.lax.map(batch_size=k) calls f a second time for a remainder (and for a
  batch larger than the input): a module f creates would be created twice, the
  last elements' parameters their own. purify.map traces f once: every element
  uses the one module, and element b*k + l draws with the key of batch b, lane l."""
  def model(xs):
    def f(x):
      return purify.nn.Linear(2)(x), bits(purify.next_rng_key(), (2,))
    return purify.map(f, xs, batch_size=batch_size)

  xs = jnp.arange(3.0 * n).reshape(n, 3)
  t = purify.transform(model)
  params = t.init(ROOT, xs)
  assert list(params) == ["linear"]
  ys, drawn = t.apply(params, ROOT, xs)
  w, b = params["linear"]["w"], params["linear"]["b"]
  np.testing.assert_allclose(ys, xs @ w + b, rtol=1e-6, atol=1e-6)
  k = min(batch_size, n)
  want = [bits(site_key(ROOT, "~#0", loop=(i // k,), batch=(i % k,)), (2,)) for i in range(n)]
  np.testing.assert_array_equal(drawn, np.stack(want))


def test_fori_loop_layer_stack_and_shared_keys():
  def model(x):
    def body(i, h):
      return jnp.tanh(scale_layer(h)) + jax.random.normal(purify.next_rng_key(), h.shape)
    a = purify.fori_loop(0, 3, body, x, param_axes=0)                    # per-iteration params
    b = purify.fori_loop(0, 2, lambda i, h: h + bits(purify.next_rng_key(), (2,)).astype(h.dtype) * 0
                         + jax.random.uniform(purify.next_rng_key(), h.shape), x, split_rng=False)
    return a, b

  def ref_init(root, x):
    return {"~": {"w": stacked_param(root, "~/w", 3, (2,))}}

  def ref_apply(params, root, x):
    h = x
    for i in range(3):
      h = jnp.tanh(h * params["~"]["w"][i]) + jax.random.normal(site_key(root, "~#0", loop=(i,)), h.shape)
    b = x
    for _ in range(2):
      b = b + bits(site_key(root, "~#1"), (2,)).astype(b.dtype) * 0 + jax.random.uniform(
          site_key(root, "~#2"), b.shape)
    return h, b

  check_against_reference(purify.transform(model), ref_init, ref_apply, ROOT, jnp.ones(2))


def test_while_loop_split_rng_false_same_key_every_iteration():
  def model(x):
    def body(c):
      i, acc = c
      return i + 1, acc + jax.random.uniform(purify.next_rng_key(), acc.shape)
    return purify.while_loop(lambda c: c[0] < 3, body, (0, x), split_rng=False)[1]

  def ref_apply(params, root, x):
    return x + 3 * jax.random.uniform(site_key(root, "~#0"), x.shape)

  check_against_reference(purify.transform(model), lambda r, x: {}, ref_apply, ROOT, jnp.zeros(2),
                          deriv=None)


def test_layer_stack_is_haikus_with_and_without_per_layer_inputs():
  def model(x, ys):
    h = purify.layer_stack(3)(lambda h: jnp.tanh(scale_layer(h)))(x)
    h2, outs = purify.layer_stack(3, with_per_layer_inputs=True, name="stack")(
        lambda h, y: (h + y * purify.param("v", (), init=normal_init), h.sum()))(h, ys)
    return h2, outs

  # Haiku's names: the stack is a module, a fresh namespace inside
  # (hk.layer_stack's lift), a parameter outside any module there under "~"
  def ref_init(root, x, ys):
    return {"__layer_stack_no_per_layer/~": {
                "w": stacked_param(root, "__layer_stack_no_per_layer/~/w", 3, (2,))},
            "stack/~": {"v": stacked_param(root, "stack/~/v", 3, ())}}

  def ref_apply(params, root, x, ys):
    h = x
    for i in range(3):
      h = jnp.tanh(h * params["__layer_stack_no_per_layer/~"]["w"][i])
    outs = []
    for i in range(3):
      outs.append(h.sum())
      h = h + ys[i] * params["stack/~"]["v"][i]
    return h, jnp.stack(outs)

  check_against_reference(purify.transform(model), ref_init, ref_apply, ROOT, jnp.ones(2),
                          jnp.arange(3.0))


def test_ensemble_of_layer_stacks_with_dropout_composes():
  def model(x):                                              # x: (2,) shared by members
    def block(h):
      keep = jax.random.bernoulli(purify.next_rng_key(), 0.5, h.shape)
      return jnp.where(keep, scale_layer(h), 0.0)
    return purify.ensemble(4)(purify.layer_stack(3)(block))(x)

  def ref_init(root, x):
    base = keys.param_key(root, "__layer_stack_no_per_layer/~/w")
    w = jnp.stack([jnp.stack([normal_init(jax.random.fold_in(jax.random.fold_in(base, e), l), (2,),
                                          jnp.float32) for l in range(3)]) for e in range(4)])
    return {"__layer_stack_no_per_layer/~": {"w": w}}

  def ref_apply(params, root, x):
    outs = []
    for e in range(4):
      h = x
      for l in range(3):
        keep = jax.random.bernoulli(site_key(root, "__layer_stack_no_per_layer/~#0", loop=(l,), batch=(e,)), 0.5, h.shape)
        h = jnp.where(keep, h * params["__layer_stack_no_per_layer/~"]["w"][e, l], 0.0)
      outs.append(h)
    return jnp.stack(outs)

  params, _ = check_against_reference(purify.transform(model), ref_init, ref_apply, ROOT,
                                      jnp.array([1.0, -2.0]))
  assert params["__layer_stack_no_per_layer/~"]["w"].shape == (4, 3, 2)


def test_param_axes_dict_mixes_stacked_and_shared_params():
  def model(x):                                              # x: (3, 2): one row per member
    def member(xi):
      h = purify.nn.Linear(2, name="head", w_init=normal_init)(xi)
      return purify.nn.Linear(2, name="body", w_init=normal_init)(h)
    return purify.vmap(member, param_axes={"head/*": 0, "*": None})(x)

  t = purify.transform(model)
  params = t.init(ROOT, jnp.ones((3, 2)))
  assert params["head"]["w"].shape == (3, 2, 2) and params["head"]["b"].shape == (3, 2)
  assert params["body"]["w"].shape == (2, 2) and params["body"]["b"].shape == (2,)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 2))
  want = jnp.stack([(x[i] @ params["head"]["w"][i] + params["head"]["b"][i]) @ params["body"]["w"]
                    + params["body"]["b"] for i in range(3)])
  np.testing.assert_allclose(t.apply(params, None, x), want, rtol=1e-5, atol=1e-6)


def test_bad_param_axes_names_the_policy_and_the_fix():
  with pytest.raises(purify.PurifyError, match=r"param_axes=1.*None.*0.*dict"):
    purify.transform(lambda x: purify.vmap(scale_layer, param_axes=1)(x)).init(ROOT, jnp.ones((2, 2)))
  with pytest.raises(purify.PurifyError, match=r"fnmatch"):
    purify.transform(lambda x: purify.scan(lambda c, _: (scale_layer(c), None), x, None, length=2,
                                           param_axes={"*": 1})[0]).init(ROOT, jnp.ones(2))
  with pytest.raises(purify.PurifyError, match=r"static Python ints"):
    purify.transform(lambda x, n: purify.fori_loop(0, n, lambda i, h: scale_layer(h), x, param_axes=0)
                     ).init(ROOT, jnp.ones(2), jnp.int32(3))


def test_mixed_precision_with_custom_creator_and_getter():
  def f32_storage(next_creator, shape, dtype, init, context):
    return next_creator(shape, jnp.float32, init)

  seen = []

  def bf16_compute(next_getter, value, context):
    seen.append((context.full_name, context.original_dtype))
    return next_getter(value.astype(jnp.bfloat16))

  def model(x):                                              # x: bfloat16
    with purify.custom_creator(f32_storage), purify.custom_getter(bf16_compute):
      return purify.nn.Linear(3, w_init=normal_init)(x)

  t = purify.transform(model)
  x = jnp.ones((2, 4), jnp.bfloat16)
  params = t.init(ROOT, x)
  assert params["linear"]["w"].dtype == jnp.float32 and params["linear"]["b"].dtype == jnp.float32
  out = t.apply(params, None, x)
  assert out.dtype == jnp.bfloat16
  want = x @ params["linear"]["w"].astype(jnp.bfloat16) + params["linear"]["b"].astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want, np.float32))
  assert ("linear/w", jnp.bfloat16) in seen


def test_interceptors_chain_innermost_first():
  order = []

  def outer(next_getter, value, context):
    order.append("outer")
    return next_getter(value) + 1

  def inner(next_getter, value, context):
    order.append("inner")
    return next_getter(value * 10)

  def model(x):
    with purify.custom_getter(outer):
      with purify.custom_getter(inner):
        return x * purify.param("w", (), init=jax.nn.initializers.ones)

  t = purify.transform(model)
  out = t.apply(t.init(ROOT, 1.0), None, 1.0)
  assert order[:2] == ["inner", "outer"] and out == 11.0


def test_drop_ins_outside_a_transform_are_jax():
  xs = jnp.arange(4.0)
  np.testing.assert_array_equal(purify.map(jnp.sin, xs, split_rng=False), jax.lax.map(jnp.sin, xs))
  assert purify.fori_loop(0, 4, lambda i, v: v + i, 0, param_axes=0) == 6
  assert purify.while_loop(lambda v: v < 5, lambda v: v + 2, 0, split_rng=False) == 6
  assert purify.cond is jax.lax.cond and purify.checkpoint is jax.checkpoint
  f = lambda x, y: jnp.sin(x) * y  # noqa: E731
  assert purify.grad(f, argnums=1)(1.0, 2.0) == jax.grad(f, argnums=1)(1.0, 2.0)
  assert purify.value_and_grad(f)(1.0, 2.0) == jax.value_and_grad(f)(1.0, 2.0)
