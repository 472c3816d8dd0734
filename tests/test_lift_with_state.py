"""purify.lift_with_state + LiftWithStateUpdater (Haiku's hk.lift_with_state)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from purify import keys
from test_semantics import ROOT, assert_same

X = jnp.ones((1, 3))


def counter_model(x):
  n = purify.get_state("n", (), jnp.int32)
  purify.set_state("n", n + 1)
  scale = purify.get_state("scale", (2,), init=lambda s, d: jnp.full(s, 2.0, d))
  return purify.nn.Linear(2)(x) * scale + n


inner = purify.transform_with_state(counter_model)


def outer(x):
  with purify.name_scope("block"):
    params, state = purify.lift_with_state(inner.init, name="inner")(purify.next_rng_key(), x)
    out, state = inner.apply(params, state, None, x)
    purify.LiftWithStateUpdater("inner").update(state)
  return out


def test_params_and_state_are_registered_under_the_lift_name_with_the_inner_init_values():
  t = purify.transform_with_state(outer)
  params, state = t.init(ROOT, X)
  want_p, want_s = inner.init(keys.param_key(ROOT, "lift:block/inner"), X)
  assert_same(params, {f"block/inner/{m}": v for m, v in want_p.items()})
  assert_same(state, {f"block/inner/{m}": v for m, v in want_s.items()})


def test_apply_threads_the_lifted_state_like_the_inner_transform():
  t = purify.transform_with_state(outer)
  params, state = t.init(ROOT, X)
  inner_p = {m.removeprefix("block/inner/"): v for m, v in params.items()}
  inner_s = {m.removeprefix("block/inner/"): v for m, v in state.items()}
  for apply in (t.apply, jax.jit(t.apply)):
    p_state, i_state = state, inner_s
    for _ in range(3):
      out, p_state = apply(params, p_state, None, X)
      want, i_state = inner.apply(inner_p, i_state, None, X)
      np.testing.assert_allclose(out, want, rtol=1e-6)
    assert int(p_state["block/inner/~"]["n"]) == 3


def test_lift_with_state_needs_a_stateful_init_and_the_updater_its_lift():
  plain = purify.transform(lambda x: purify.nn.Linear(2)(x))
  with pytest.raises(purify.PurifyError, match=r"must return \(params, state\).*purify.lift"):
    purify.transform(lambda x: purify.lift_with_state(plain.init, name="p")(purify.next_rng_key(), x)
                     ).init(ROOT, X)
  with pytest.raises(purify.PurifyError, match=r"no lifted state '~/n' under 'other'"):
    purify.transform_with_state(
        lambda x: purify.LiftWithStateUpdater("other").update({"~": {"n": 1}})).init(ROOT, X)
