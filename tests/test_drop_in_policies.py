"""Drop-in effect policies against hand-written pure-JAX references:
purify.scan(split_rng=False), purify.vmap(split_rng=False) scoping."""
import jax
import jax.numpy as jnp
import numpy as np

import purify
from test_semantics import (ROOT, check_against_reference, counter, ref_param, site_key, bits,
                            normal_init)


def test_scan_split_rng_false_one_key_for_every_step_inner_loops_and_vmaps_still_split():
  def model(x):                                              # x: (3,)
    def step(c, _):
      w = purify.param("w", (3,), init=normal_init)
      drop = bits(purify.next_rng_key())                     # the same every step
      inner = jax.lax.scan(lambda c2, _: (c2, bits(purify.next_rng_key(), (2,))), 0., None,
                           length=2)[1]                      # per inner step
      per_ex = jax.vmap(lambda _: bits(purify.next_rng_key(), (1,)))(jnp.arange(2))
      n = counter()
      return c * w + x, (drop, inner, per_ex, n)
    return purify.scan(step, jnp.zeros(3), None, length=4, split_rng=False)

  def ref_init(root, x):
    return {"~": {"w": ref_param(root, "~/w", (3,))}}, {"~": {"n": jnp.zeros((), jnp.int32)}}

  def ref_apply(params, state, root, x):
    c, ys = jnp.zeros(3), []
    for step in range(4):
      drop = bits(site_key(root, "~#0"))
      inner = jnp.stack([bits(site_key(root, "~#1", loop=(j,)), (2,)) for j in range(2)])
      per_ex = jnp.stack([bits(site_key(root, "~#2", batch=(b,)), (1,)) for b in range(2)])
      ys.append((drop, inner, per_ex, state["~"]["n"] + step))
      c = c * params["~"]["w"] + x
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ys)
    return (c, stacked), {"~": {"n": state["~"]["n"] + 4}}

  t = purify.transform_with_state(model)
  _, ((_, (drop, inner, _, _)), _) = check_against_reference(
      t, ref_init, ref_apply, ROOT, jnp.array([0.5, -1.0, 2.0]))
  assert (drop == drop[0]).all() and not (inner[:, 0] == inner[:, 1]).all()


def test_scan_split_rng_false_with_stacked_params_and_grad_inside():
  def model(x):
    def step(h, _):
      w = purify.param("w", (3,), init=normal_init)          # stacked: one per step
      k = purify.next_rng_key()
      g = jax.grad(lambda z: jnp.sum(jnp.sin(z * w) * jax.random.normal(k, (3,))))(h)
      return h + 0.1 * g, None
    return purify.scan(step, x, None, length=3, split_rng=False, param_axes=0)[0]

  def ref_init(root, x):
    return {"~": {"w": jnp.stack([normal_init(jax.random.fold_in(purify.keys.param_key(root, "~/w"), i),
                                               (3,), jnp.float32) for i in range(3)])}}

  def ref_apply(params, root, x):
    h = x
    k = site_key(root, "~#0")
    for i in range(3):
      w = params["~"]["w"][i]
      g = jax.grad(lambda z: jnp.sum(jnp.sin(z * w) * jax.random.normal(k, (3,))))(h)
      h = h + 0.1 * g
    return h

  check_against_reference(purify.transform(model), ref_init, ref_apply, ROOT,
                          jnp.array([0.5, -1.0, 2.0]))


def test_vmap_of_a_shared_key_scan_gives_each_example_its_own_sequence_key():
  def model(x):                                               # x: (2,)
    step = lambda c, _: (c, bits(purify.next_rng_key(), (1,)))  # noqa: E731
    return jax.vmap(lambda _: purify.scan(step, 0., None, length=3, split_rng=False)[1])(x)

  def ref_apply(params, root, x):
    return jnp.stack([jnp.stack([bits(site_key(root, "~#0", batch=(b,)), (1,))] * 3)
                      for b in range(2)])

  check_against_reference(purify.transform(model), lambda root, x: {}, ref_apply, ROOT,
                          jnp.zeros(2), deriv=None)


def test_vmap_split_rng_false_does_not_leak_to_a_later_vmap_with_the_same_axis_name():
  def model(x):
    shared = purify.vmap(lambda _: bits(purify.next_rng_key(), (1,)), axis_name="b",
                         split_rng=False)(x)
    split = jax.vmap(lambda _: bits(purify.next_rng_key(), (1,)), axis_name="b")(x)
    return shared, split

  def ref_apply(params, root, x):
    return (jnp.stack([bits(site_key(root, "~#0"), (1,))] * 3),
            jnp.stack([bits(site_key(root, "~#1", batch=(b,)), (1,)) for b in range(3)]))

  _, (shared, split) = check_against_reference(
      purify.transform(model), lambda root, x: {}, ref_apply, ROOT, jnp.zeros(3), deriv=None)
  assert len(np.unique(np.asarray(split))) == 3 and len(np.unique(np.asarray(shared))) == 1


def test_scan_split_rng_false_outside_a_transform_is_jax_scan():
  out = purify.scan(lambda c, x: (c + x, c), 0., jnp.arange(3.), split_rng=False)
  ref = jax.lax.scan(lambda c, x: (c + x, c), 0., jnp.arange(3.))
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.array_equal, out, ref))
