"""State under a jax.grad / jax.jvp taken inside the model (purify/ad_state.py).

Loop semantics: a state is a variable, so a value written inside a differentiated
function and read back carries its tangent. Every case is checked against a
hand-written pure-JAX function in which the state is an explicit variable.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify

pytestmark = pytest.mark.usefixtures("fast_compiles")


def run(f, *args):
  """(output, final state) of ``f`` purified, applied once after init."""
  t = purify.transform_with_state(f)
  p, s = t.init(jax.random.key(0), *args)
  out, s2 = t.apply(p, s, jax.random.key(1), *args)
  return out, s2


def close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_written_then_read_in_straight_line():
  def f(x):
    purify.get_state("a", (), init=jnp.zeros)
    def loss(h):
      purify.set_state("a", h)
      return purify.get_state("a") * h
    return jax.grad(loss)(x)

  out, s = run(f, jnp.float32(3.))
  close(out, 6.)                                    # d/dh h*h
  close(s["~"]["a"], 3.)                            # the primal is what the state keeps


def test_accumulator_in_scan_inside_grad():
  xs = jnp.arange(1., 4.)

  def f(x):
    def loss(h):
      def body(c, x_t):
        a = purify.get_state("a", (), init=jnp.zeros)
        purify.set_state("a", a + c * x_t)
        return c * 1.5, purify.get_state("a") * c
      c, ys = jax.lax.scan(body, h, xs)
      return ys.sum() + purify.get_state("a") * c
    return jax.grad(loss)(x)

  def reference(a0, x):
    def loss(h):
      def body(carry, x_t):
        c, a = carry
        a = a + c * x_t
        return (c * 1.5, a), a * c
      (c, a), ys = jax.lax.scan(body, (h, a0), xs)
      return ys.sum() + a * c, a
    g, a = jax.grad(loss, has_aux=True)(x)
    return g, a

  out, s = run(f, jnp.float32(0.7))
  g, a = reference(jnp.float32(0.), jnp.float32(0.7))
  close(out, g)
  close(s["~"]["a"], a)
  # and the gradient is not the one that treats state reads as constants
  def const_reads(h):
    def body(carry, x_t):
      c, a = carry
      return (c * 1.5, a + c * x_t), jax.lax.stop_gradient(a + c * x_t) * c
    (c, a), ys = jax.lax.scan(body, (h, 0.), xs)
    return ys.sum() + jax.lax.stop_gradient(a) * c
  assert not np.allclose(out, jax.grad(const_reads)(jnp.float32(0.7)))


def test_state_carried_across_two_steps_of_a_fori_loop_in_grad():
  def f(x):
    def loss(h):
      def body(i, c):
        a = purify.get_state("a", (), init=jnp.ones)
        purify.set_state("a", a * c)
        return c + 1.
      jax.lax.fori_loop(0, 3, body, h)
      return purify.get_state("a")
    return jax.grad(loss)(x)

  def reference(h):            # a = 1 * h * (h+1) * (h+2)
    return h * (h + 1.) * (h + 2.)

  out, s = run(f, jnp.float32(2.))
  close(out, jax.grad(reference)(2.))
  close(s["~"]["a"], reference(2.))


def test_state_written_in_cond_and_jit_read_after():
  def f(x, which):
    def loss(h):
      purify.get_state("a", (), init=jnp.zeros)
      jax.lax.cond(which > 0, lambda: purify.set_state("a", jnp.sin(h)), lambda: None)
      jax.jit(lambda: purify.set_state("b", purify.get_state("a", ()) * h))()
      return purify.get_state("b", ()) + purify.get_state("a")
    return jax.grad(loss)(x)

  x = jnp.float32(0.4)
  out1, _ = run(f, x, jnp.int32(1))
  close(out1, jax.grad(lambda h: jnp.sin(h) * h + jnp.sin(h))(x))
  out0, _ = run(f, x, jnp.int32(0))
  close(out0, 0.)                      # a keeps its initial 0: b = 0 * h


def test_state_written_before_the_grad_is_a_constant_inside_it():
  def f(x):
    purify.set_state("a", x * 2.)
    return jax.grad(lambda h: purify.get_state("a") * h)(x)

  out, _ = run(f, jnp.float32(3.))
  close(out, 6.)                        # d/dh (2x * h), x not differentiated


def test_grad_of_grad_with_state():
  def f(x):
    def outer(h):
      purify.set_state("a", h * h)
      return jax.grad(lambda g: purify.get_state("a") * jnp.sin(g))(h)
    return jax.grad(outer)(x)

  x = jnp.float32(0.9)
  out, s = run(f, x)
  close(out, jax.grad(lambda h: h * h * jnp.cos(h))(x))
  close(s["~"]["a"], x * x)


def test_forward_mode_jvp_through_state_in_while_loop():
  def f(x):
    def g(h):
      def body(c):
        i, v = c
        a = purify.get_state("a", (), init=jnp.zeros)
        purify.set_state("a", a + v)
        return i + 1, v * 2.
      jax.lax.while_loop(lambda c: c[0] < 3, body, (0, h))
      return purify.get_state("a")
    return jax.jvp(g, (x,), (jnp.float32(1.),))

  (primal, tangent), s = run(f, jnp.float32(1.))
  close(primal, 7.)                     # h + 2h + 4h
  close(tangent, 7.)
  close(s["~"]["a"], 7.)


def test_shared_state_under_vmap_inside_grad():
  def f(x):
    def loss(h):
      def per_example(e):
        a = purify.get_state("a", (), init=jnp.zeros)
        return a * e
      purify.set_state("a", h.sum())
      return jax.vmap(per_example)(h).sum()
    return jax.grad(loss)(x)

  x = jnp.arange(1., 4.)
  out, _ = run(f, x)
  close(out, jax.grad(lambda h: (h.sum() * h).sum())(x))


def test_integer_counter_in_loop_inside_grad():
  def f(x):
    def loss(h):
      def body(i, c):
        n = purify.get_state("n", (), jnp.int32, init=jnp.zeros)
        purify.set_state("n", n + 1)
        return c * 2.
      return jnp.sin(jax.lax.fori_loop(0, 3, body, h))
    return jax.grad(loss)(x)

  x = jnp.float32(0.3)
  out, s = run(f, x)
  close(out, 8. * jnp.cos(8. * x))
  assert int(s["~"]["n"]) == 3
  with jax.checking_leaks():
    run(f, x)


def test_the_traced_program_makes_the_state_a_carry_where_grad_crosses_a_loop():
  def f(x):
    def loss(h):
      def body(c, _):
        a = purify.get_state("a", (), init=jnp.zeros)
        purify.set_state("a", a + c)
        return c, None
      jax.lax.scan(body, h, None, length=2)
      return purify.get_state("a")
    return jax.grad(loss)(x)

  text = str(purify.make_jaxpr(f)(jnp.float32(1.)))
  scan_at = text.index("scan[")
  assert text.index('get_state "~/a"') < scan_at          # read once, before the loop
  assert 'set_state "~/a"' in text[scan_at:]                 # written once, after it
  body = text[scan_at:text.index(" in (", scan_at)]
  assert "get_state" not in body and "set_state" not in body


def test_state_created_in_a_loop_inside_grad_starts_at_the_value_the_loop_leaves():
  """The documented limit (docs/semantics.md): outside grad it would be the first
  value written (test_semantics), inside grad the loop's last one."""
  def f(x):
    def loss(h):
      jax.lax.fori_loop(0, 3, lambda i, c: (purify.set_state("s", c * i), c)[1], h)
      return purify.get_state("s")
    return jax.grad(loss)(x)

  t = purify.transform_with_state(f)
  _, s = t.init(None, jnp.float32(2.))
  close(s["~"]["s"], 4.)                             # 2 * 2, the last write
  out, s = t.apply({}, s, None, jnp.float32(2.))
  close(out, 2.)                                     # d/dh (h * 2)
