"""Module naming against dm-haiku itself: the same program written with hk.* and
purify.* gives the same parameter tree (paths, names, shapes)."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify

X = jnp.ones((1, 2))


def _tree(params):
  return {m: {n: tuple(v.shape) for n, v in sub.items()} for m, sub in params.items()}


def both(program):
  """Run ``program(lib)`` where lib offers Module/Linear/param/name_scope, in both."""
  class HK:
    Module = hk.Module
    Linear = hk.Linear
    name_scope = staticmethod(hk.name_scope)
    @staticmethod
    def param(name, shape):
      return hk.get_parameter(name, shape, init=jnp.ones)

  class PF:
    Module = purify.Module
    Linear = purify.nn.Linear
    name_scope = staticmethod(purify.name_scope)
    @staticmethod
    def param(name, shape):
      return purify.param(name, shape, init=jax.nn.initializers.ones)

  ph = hk.transform(lambda x: program(HK, x)).init(jax.random.PRNGKey(0), X)
  pp = purify.transform(lambda x: program(PF, x)).init(jax.random.PRNGKey(0), X)
  return _tree(ph), _tree(pp)


def _calls_twice(lib, x):
  class Foo(lib.Module):
    def __call__(self, x):
      return lib.Linear(3)(x) + lib.Linear(3)(x)

    def other(self, x):
      lib.param("o", (1,))
      return lib.Linear(3)(x)

    def _private(self, x):
      return lib.Linear(3)(x)

  foo = Foo()
  foo(x); foo(x); foo.other(x); foo._private(x)
  return Foo()(x)


def _name_scopes(lib, x):
  with lib.name_scope("blk"):
    lib.param("w", (1,))
    with lib.name_scope("sub"):
      lib.Linear(2)(x)
  with lib.name_scope("blk"):
    lib.Linear(2)(x)
  with lib.name_scope("a/b"):
    lib.param("v", (2,))
  return x


def _scopes_in_methods(lib, x):
  class Inner(lib.Module):
    def __init__(self, name=None):
      super().__init__(name=name)
      self.proj = lib.Linear(2)

    def __call__(self, x):
      with lib.name_scope("gate"):
        lib.param("g", (1,))
        g = lib.Linear(2)(x)
      return self.proj(x) + g

  class Outer(lib.Module):
    def __call__(self, x):
      return Inner()(x) + Inner(name="inner")(x) + Inner()(x)

  return Outer()(x) + Outer(name="outer_7")(x)


def _explicit_numbers(lib, x):
  lib.Linear(2, name="linear")(x)
  lib.Linear(2)(x)
  lib.Linear(2, name="linear_5")(x)
  lib.Linear(2)(x)
  lib.Linear(2, name="dense_0")(x)
  return x


@pytest.mark.parametrize("program", [_calls_twice, _name_scopes, _scopes_in_methods, _explicit_numbers],
                         ids=lambda p: p.__name__)
def test_param_tree_matches_haiku(program):
  theirs, ours = both(program)
  assert ours == theirs
  assert list(ours) == list(theirs)


def test_a_taken_name_is_an_error_naming_it_like_haiku():
  def f(x):
    purify.nn.Linear(2)(x)
    purify.nn.Linear(2)(x)
    return purify.nn.Linear(2, name="linear_1")(x)
  with pytest.raises(purify.PurifyError, match=r"(?s)'linear_1'.*already taken.*different name="):
    purify.transform(f).init(jax.random.PRNGKey(0), X)
  with pytest.raises(ValueError, match="not unique"):
    hk.transform(lambda x: (hk.Linear(2)(x), hk.Linear(2)(x), hk.Linear(2, name="linear_1")(x))).init(
        jax.random.PRNGKey(0), X)


def test_module_name_must_be_an_identifier():
  with pytest.raises(ValueError, match=r"name='a/b'.*purify.name_scope\('a/b'\)"):
    purify.transform(lambda x: purify.nn.Linear(2, name="a/b")(x)).init(jax.random.PRNGKey(0), X)


def test_params_dict_and_state_dict_list_a_module_and_its_submodules():
  seen = {}

  class Net(purify.Module):
    def __init__(self):
      super().__init__()
      self.l1 = purify.nn.Linear(3)

    def __call__(self, x):
      purify.get_state("count", (), jnp.int32)
      y = purify.nn.Linear(2)(self.l1(x))
      seen["params"] = {k: v.shape for k, v in self.params_dict().items()}
      seen["state"] = {k: v.shape for k, v in self.state_dict().items()}
      seen["sum"] = sum(v.sum() for v in self.params_dict().values())
      return y, seen["sum"]

  t = purify.transform_with_state(lambda x: Net()(x))
  params, state = t.init(jax.random.PRNGKey(0), X)
  assert seen["params"] == {"net/~/linear/w": (2, 3), "net/~/linear/b": (3,),
                            "net/linear/w": (3, 2), "net/linear/b": (2,)}
  assert seen["state"] == {"net/count": ()}
  (_, total), _ = t.apply(params, state, None, X)
  want = sum(v.sum() for sub in params.values() for v in sub.values())
  assert jnp.allclose(total, want)


# ----------------------------------------------------------------------------- without_apply_rng
def test_without_apply_rng_drops_the_rng_argument_like_haiku():
  x = jnp.ones((2, 3))
  hk_t = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([4, 2])(x)))
  pf_t = purify.without_apply_rng(purify.transform(lambda x: purify.nn.MLP([4, 2])(x)))
  params = hk_t.init(jax.random.PRNGKey(0), x)
  assert _tree(pf_t.init(jax.random.PRNGKey(0), x)) == _tree(params)
  want = hk_t.apply(params, x)
  assert jnp.array_equal(pf_t.apply(params, x), want)              # Haiku's params, as they are
  assert jnp.array_equal(jax.jit(pf_t.apply)(params, x), want)
  assert purify.without_apply_rng(pf_t) is pf_t                    # idempotent
  assert pf_t.apply.__name__ == "<lambda>.apply"


def test_without_apply_rng_with_state_keeps_the_state_argument():
  def f(x):
    n = purify.get_state("n", (), jnp.int32, init=jnp.zeros)
    purify.set_state("n", n + 1)
    return purify.nn.Linear(2)(x)
  t = purify.without_apply_rng(purify.transform_with_state(f))
  assert isinstance(t, purify.TransformedWithState)
  x = jnp.ones((1, 3))
  params, state = t.init(jax.random.key(0), x)
  out, state = t.apply(params, state, x)
  _, state = jax.jit(t.apply)(params, state, x)
  assert int(state["~"]["n"]) == 2 and out.shape == (1, 2)
  with pytest.raises(TypeError, match=r"apply\(params, state, \*args\) needs state"):
    t.apply(params)


def test_without_apply_rng_on_a_model_that_draws_names_the_draw():
  t = purify.without_apply_rng(purify.transform(
      lambda x: purify.nn.dropout(0.5, purify.nn.Linear(2)(x))))
  x = jnp.ones((1, 3))
  params = t.init(jax.random.key(0), x)
  with pytest.raises(purify.errors.MissingRngError, match="next_rng_key"):
    t.apply(params, x)


def test_without_apply_rng_of_something_else_says_what_it_takes():
  with pytest.raises(TypeError, match=r"purify.without_apply_rng\(purify.transform\(f\)\)"):
    purify.without_apply_rng(lambda x: x)
  with pytest.raises(TypeError, match=r"got haiku\S*\.Transformed"):
    purify.without_apply_rng(hk.transform(lambda x: x))


# ----------------------------------------------------------------------------- layer_stack
def _ones(lib):
  if lib is hk:
    return lambda n, s: hk.get_parameter(n, s, init=jnp.ones)
  return lambda n, s: purify.param(n, s, init=jax.nn.initializers.ones)


_STACKS = {
    "default": lambda L, P: lambda x: L.layer_stack(2)(lambda h: L.Linear(3)(h))(x),
    "named": lambda L, P: lambda x: L.layer_stack(2, name="foo")(lambda h: L.Linear(3)(h))(x),
    "per_layer": lambda L, P: lambda x: L.layer_stack(2, with_per_layer_inputs=True)(
        lambda h, z: (L.Linear(3)(h), z))(x, jnp.ones((2, 3)))[0],
    "nested": lambda L, P: lambda x: L.layer_stack(2)(
        lambda h: L.layer_stack(3)(lambda g: L.Linear(3)(g))(h))(x),
    "two": lambda L, P: lambda x: L.layer_stack(2)(lambda h: L.Linear(3)(h))(
        L.layer_stack(2)(lambda h: L.Linear(3)(h))(x)),
    "bare_param": lambda L, P: lambda x: L.layer_stack(2)(lambda h: P("w", (3,)) * h)(x),
    "two_carried": lambda L, P: lambda x: L.layer_stack(2)(
        lambda h, g: (L.Linear(3)(h) + g, g * P("v", ())))(x, x)[0],
    "fresh_numbering": lambda L, P: lambda x: L.layer_stack(2)(
        lambda h: L.Linear(3, name="lin")(L.Linear(3)(L.Linear(3)(h))))(L.Linear(3)(x)),
    "name_scope_inside": lambda L, P: lambda x: L.layer_stack(2)(
        lambda h: _scoped(L, lambda: L.Linear(3)(h)))(x),
}


def _scoped(L, fn):
  with L.name_scope("blk"):
    return fn()


class _HkInModule(hk.Module):
  def __call__(self, x):
    return hk.layer_stack(2)(lambda h: hk.Linear(3)(h))(x)


class _PfInModule(purify.Module):
  def __call__(self, x):
    return purify.layer_stack(2)(lambda h: purify.nn.Linear(3)(h))(x)


class _HkLib:
  layer_stack, Linear = staticmethod(hk.layer_stack), hk.Linear
  name_scope = staticmethod(hk.name_scope)


class _PfLib:
  layer_stack, Linear = staticmethod(purify.layer_stack), purify.nn.Linear
  name_scope = staticmethod(purify.name_scope)


@pytest.mark.parametrize("case", sorted(_STACKS) + ["in_module"])
def test_layer_stack_names_parameters_as_haiku_and_loads_its_params(case):
  """The same tree as hk.layer_stack's (its lift: a module named after the stack,
  a fresh namespace inside), and Haiku's params give Haiku's outputs."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
  if case == "in_module":
    hk_f, pf_f = (lambda x: _HkInModule(name="m")(x)), (lambda x: _PfInModule(name="m")(x))
  else:
    hk_f, pf_f = _STACKS[case](_HkLib, _ones(hk)), _STACKS[case](_PfLib, _ones(purify))
  hk_t, pf_t = hk.transform(hk_f), purify.transform(pf_f)
  hk_params = hk_t.init(jax.random.PRNGKey(1), x)
  assert _tree(pf_t.init(jax.random.PRNGKey(1), x)) == _tree(hk_params)
  np.testing.assert_allclose(pf_t.apply(hk_params, None, x), hk_t.apply(hk_params, None, x),
                             rtol=1e-6, atol=1e-6)


def test_layer_stack_with_several_arguments_carries_them_all():
  f = lambda a, b: (a + b, b * 2.0)   # noqa: E731
  out = purify.transform(lambda a, b: purify.layer_stack(3)(f)(a, b)).apply({}, None, 1.0, 1.0)
  want = hk.transform(lambda a, b: hk.layer_stack(3)(f)(a, b)).apply({}, None, 1.0, 1.0)
  assert tuple(map(float, out)) == tuple(map(float, want)) == (8.0, 8.0)


def test_layer_stack_layer_returning_the_wrong_number_of_values_says_why():
  t = purify.transform(lambda a, b: purify.layer_stack(2)(lambda a, b: a + b)(a, b))
  with pytest.raises(TypeError, match=r"given 2 arguments, all carried.*must return 2 values"):
    t.init(jax.random.PRNGKey(0), jnp.ones(2), jnp.ones(2))
  with pytest.raises(TypeError, match="no arguments"):
    purify.transform(lambda: purify.layer_stack(2)(lambda: 1.0)()).init(None)


# ----------------------------------------------------------------------------- without_state / with_empty_state
def test_without_state_and_with_empty_state_are_haikus():
  x = jnp.ones((2, 3))
  f = lambda x: purify.nn.dropout(0.5, purify.nn.Linear(4)(x))       # noqa: E731
  ws = purify.without_state(purify.transform_with_state(f))
  assert isinstance(ws, purify.Transformed)
  plain = purify.transform(f)
  params = ws.init(jax.random.key(0), x)
  assert _tree(params) == _tree(plain.init(jax.random.key(0), x))
  np.testing.assert_array_equal(ws.apply(params, jax.random.key(1), x),
                                plain.apply(params, jax.random.key(1), x))
  np.testing.assert_array_equal(jax.jit(ws.apply)(params, jax.random.key(1), x),
                                plain.apply(params, jax.random.key(1), x))
  es = purify.with_empty_state(plain)
  assert isinstance(es, purify.TransformedWithState)
  p2, state = es.init(jax.random.key(0), x)
  assert state == {}
  out, state = es.apply(p2, state, jax.random.key(1), x)
  assert state == {}
  np.testing.assert_array_equal(out, plain.apply(p2, jax.random.key(1), x))
  # composed with without_apply_rng, either way round
  g = lambda x: purify.nn.Linear(4)(x)                               # noqa: E731
  a = purify.without_apply_rng(purify.without_state(purify.transform_with_state(g)))
  b = purify.without_state(purify.without_apply_rng(purify.transform_with_state(g)))
  c = purify.with_empty_state(purify.without_apply_rng(purify.transform(g)))
  p = a.init(jax.random.key(0), x)
  want = purify.transform(g).apply(p, None, x)
  np.testing.assert_array_equal(a.apply(p, x), want)
  np.testing.assert_array_equal(b.apply(p, x), want)
  np.testing.assert_array_equal(c.apply(p, {}, x)[0], want)
  assert purify.without_apply_rng(c) is c                            # rng already dropped


def test_without_state_of_a_model_with_state_refuses_naming_the_state():
  def f(x):
    purify.set_state("count", jnp.zeros(()))
    return purify.nn.Linear(2)(x)
  t = purify.without_state(purify.transform_with_state(f))
  x = jnp.ones((1, 3))
  with pytest.raises(purify.errors.NonEmptyStateError, match=r"(?s)\(~/count\).*init.*transform_with_state"):
    t.init(jax.random.key(0), x)
  params = purify.transform_with_state(f).init(jax.random.key(0), x)[0]
  with pytest.raises(purify.errors.NonEmptyStateError, match=r"\(~/count\).*apply"):
    t.apply(params, None, x)


def test_state_wrappers_refuse_the_wrong_kind_of_transform():
  with pytest.raises(TypeError, match=r"without_state takes what purify.transform_with_state returned, "
                                      r"got what purify.transform returned"):
    purify.without_state(purify.transform(lambda x: x))
  with pytest.raises(TypeError, match=r"with_empty_state takes what purify.transform returned"):
    purify.with_empty_state(purify.transform_with_state(lambda x: x))
  with pytest.raises(TypeError, match=r"use purify.without_state\(purify.transform_with_state\(f\)\)"):
    purify.without_state(hk.transform_with_state(lambda x: x))


# ----------------------------------------------------------------------------- next_rng_keys
@pytest.mark.parametrize("typed", [True, False])
def test_next_rng_keys_gives_num_distinct_fresh_keys(typed):
  root = jax.random.key(0) if typed else jax.random.PRNGKey(0)
  def f(x):
    ks = purify.next_rng_keys(3)
    return ks, jax.vmap(lambda _: purify.next_rng_keys(2))(x)
  t = purify.transform(f)
  ks, per_example = t.apply({}, root, jnp.ones(4))
  raw = (lambda k: jax.random.key_data(k)) if typed else (lambda k: k)
  # the shape Haiku gives: (num, *key_shape), of the kind of key apply got
  assert ks.shape == ((3,) if typed else (3, 2)) and per_example.shape[:2] == (4, 2)
  rows = np.asarray(raw(per_example)).reshape(8, -1)
  assert len({r.tobytes() for r in np.asarray(raw(ks)).reshape(3, -1)}) == 3
  assert len({r.tobytes() for r in rows}) == 8          # fresh per example, as next_rng_key
  want = jax.random.split(purify.transform(lambda: purify.next_rng_key()).apply({}, root), 3)
  np.testing.assert_array_equal(raw(ks), raw(want))     # one draw, split


@pytest.mark.parametrize("num", [0, -1, 2.0, True, "2"])
def test_next_rng_keys_refuses_a_count_that_is_not_a_positive_int(num):
  with pytest.raises(ValueError, match=r"num must be a positive Python int"):
    purify.transform(lambda: purify.next_rng_keys(num)).apply({}, jax.random.key(0))


# ----------------------------------------------------------------------------- maybe_next_rng_key
def _maybe_dropout(lib):
  draw = hk.maybe_next_rng_key if lib is hk else purify.maybe_next_rng_key
  drop = (lambda k, x: hk.dropout(k, 0.5, x)) if lib is hk else \
      (lambda k, x: purify.nn.dropout(0.5, x, rng=k))
  def f(x):
    key = draw()
    h = (hk.Linear if lib is hk else purify.nn.Linear)(8)(x)
    return h if key is None else drop(key, h)
  return f


@pytest.mark.parametrize("order", ["key_first", "none_first"])
def test_maybe_next_rng_key_is_a_key_when_given_and_none_without(order):
  x = jnp.ones((4, 3))
  t, hk_t = purify.transform(_maybe_dropout(purify)), hk.transform(_maybe_dropout(hk))
  params = t.init(jax.random.key(0), x)
  calls = [jax.random.key(1), None] if order == "key_first" else [None, jax.random.key(1)]
  outs = {("key" if r is not None else "none"): t.apply(params, r, x) for r in calls}
  clean = outs["none"]
  np.testing.assert_array_equal(clean, hk_t.apply(params, None, x))       # no key: no dropout
  dropped = np.asarray(outs["key"])
  assert (dropped == 0).any() and not np.array_equal(dropped, clean)     # a key: dropout
  np.testing.assert_allclose(dropped[dropped != 0], 2 * np.asarray(clean)[dropped != 0], rtol=1e-6)
  # the same under jax.jit, with the other call's program not reused for either
  np.testing.assert_array_equal(jax.jit(t.apply)(params, None, x), clean)
  np.testing.assert_array_equal(jax.jit(t.apply)(params, jax.random.key(1), x), dropped)


def test_maybe_next_rng_key_under_vmap_and_in_a_custom_vjp():
  x = jnp.ones((6, 16))
  def f(x):
    def per_example(xi):
      k = purify.maybe_next_rng_key()
      return xi if k is None else purify.nn.dropout(0.5, xi, rng=k)
    @purify.custom_vjp
    def g(y):
      k = purify.maybe_next_rng_key()
      return y if k is None else y * 2.0
    g.defvjp(lambda y: (g(y), None), lambda _, ct: (ct,))
    return g(jax.vmap(per_example)(x))
  t = purify.transform(f)
  np.testing.assert_array_equal(t.apply({}, None, x), x)
  out = np.asarray(t.apply({}, jax.random.key(3), x))
  assert set(np.unique(out)) <= {0.0, 4.0}
  assert len({r.tobytes() for r in (out != 0)}) > 1                       # a mask per example


# ----------------------------------------------------------------------------- multi_transform
def _encoder_decoder(lib, linear):
  def f():
    enc, dec = linear(2, name="encoder"), linear(3, name="decoder")
    return (lambda x: dec(enc(x))), {"enc": enc, "dec": dec, "both": lambda x: dec(enc(x)) * 2}
  return f


def test_multi_transform_is_haikus_and_each_apply_takes_the_whole_params():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  hk_t = hk.multi_transform(_encoder_decoder(hk, hk.Linear))
  pf_t = purify.multi_transform(_encoder_decoder(purify, purify.nn.Linear))
  assert isinstance(pf_t, purify.MultiTransformed) and sorted(pf_t.apply) == ["both", "dec", "enc"]
  hk_params = hk_t.init(jax.random.PRNGKey(1), x)
  assert _tree(pf_t.init(jax.random.PRNGKey(1), x)) == _tree(hk_params)
  z = pf_t.apply["enc"](hk_params, None, x)              # Haiku's params, all of them
  np.testing.assert_allclose(z, hk_t.apply["enc"](hk_params, None, x), rtol=1e-6)
  np.testing.assert_allclose(pf_t.apply["dec"](hk_params, None, z),
                             hk_t.apply["dec"](hk_params, None, z), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(pf_t.apply["both"])(hk_params, None, x),
                             hk_t.apply["both"](hk_params, None, x), rtol=1e-6)
  no_rng = purify.without_apply_rng(pf_t)
  np.testing.assert_array_equal(no_rng.apply["enc"](hk_params, x), z)
  # a missing entry is still an error naming it
  with pytest.raises(purify.errors.ParamsMismatchError, match="encoder/w"):
    pf_t.apply["enc"]({"decoder": hk_params["decoder"]}, None, x)


def test_multi_transform_with_state_returns_the_whole_state():
  def f():
    enc = purify.nn.Linear(2, name="encoder")
    norm = purify.nn.BatchNorm(True, True, 0.9)
    dec = purify.nn.Linear(3, name="decoder")
    def encode(x):
      return norm(enc(x), is_training=True)
    def count(x):
      n = purify.get_state("calls", (), jnp.int32, init=jnp.zeros)
      purify.set_state("calls", n + 1)
      return dec(x)
    return (lambda x: count(encode(x))), (encode, count)
  t = purify.multi_transform_with_state(f)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  params, state = t.init(jax.random.PRNGKey(1), x)
  assert sorted(state) == ["batch_norm/~/mean_ema", "batch_norm/~/var_ema", "~"]
  encode, count = t.apply
  z, state2 = encode(params, state, None, x)
  assert sorted(state2) == sorted(state)                 # the whole state comes back
  assert int(state2["batch_norm/~/mean_ema"]["counter"]) == 1 and int(state2["~"]["calls"]) == 0
  _, state3 = count(params, state2, None, z)
  assert int(state3["~"]["calls"]) == 1
  np.testing.assert_array_equal(state3["batch_norm/~/mean_ema"]["hidden"],
                                state2["batch_norm/~/mean_ema"]["hidden"])


def test_multi_transform_of_a_factory_returning_something_else_says_what_it_takes():
  with pytest.raises(TypeError, match=r"f\(\) must return \(template, functions\)"):
    purify.multi_transform(lambda: purify.nn.Linear(2))
  with pytest.raises(TypeError, match="must be callables; got int"):
    purify.multi_transform(lambda: (lambda x: x, (1, lambda x: x)))


# ----------------------------------------------------------------------------- to_module
def test_to_module_is_haikus():
  def bias_fn(lib):
    def bias(x):
      return x + (hk.get_parameter("b", [], init=jnp.ones) if lib is hk else
                  purify.param("b", (), init=jax.nn.initializers.ones))
    return bias
  def program(lib):
    Bias = (hk.to_module if lib is hk else purify.to_module)(bias_fn(lib))
    def f(x, y):
      b, c = Bias(name="my_bias"), Bias()
      return b(x) * b(y) + c(x)
    return f
  x, y = jnp.ones(3), 2 * jnp.ones(3)
  hk_t, pf_t = hk.transform(program(hk)), purify.transform(program(purify))
  params = hk_t.init(jax.random.PRNGKey(0), x, y)
  assert _tree(pf_t.init(jax.random.PRNGKey(0), x, y)) == _tree(params) == \
      {"my_bias": {"b": ()}, "bias": {"b": ()}}
  np.testing.assert_array_equal(pf_t.apply(params, None, x, y), hk_t.apply(params, None, x, y))
  with pytest.raises(TypeError, match="create an instance first"):
    purify.transform(lambda x: purify.to_module(bias_fn(purify))(x)).init(jax.random.PRNGKey(0), x)
  anonymous = purify.to_module(lambda h: h * purify.param("s", (), init=jax.nn.initializers.ones))
  with pytest.raises(ValueError, match=r"'<lambda>' is not a module name.*cls\(name='my_module'\)"):
    purify.transform(lambda x: anonymous()(x)).init(jax.random.PRNGKey(0), x)
  assert _tree(purify.transform(lambda x: anonymous(name="scale")(x)).init(
      jax.random.PRNGKey(0), x)) == {"scale": {"s": ()}}


# ----------------------------------------------------------------------------- default names
@pytest.mark.parametrize("cls_name", [
    "MLP", "ResNet50", "HTTPServer", "_DeepRNN", "My_Module", "ABC_Def", "__Foo", "FooBAR",
    "Foo2Bar", "mixedCase", "IOError", "Conv2DTranspose", "Foo__Bar", "A"])
def test_a_modules_default_name_is_haikus(cls_name):
  def program(lib):
    cls = type(cls_name, (lib.Module,), {
        "__call__": lambda self, x: x * (hk.get_parameter("w", [], init=jnp.ones) if lib is hk
                                         else purify.param("w", (), init=jax.nn.initializers.ones))})
    return lambda x: cls()(x)
  x = jnp.ones(2)
  want = hk.transform(program(hk)).init(jax.random.PRNGKey(0), x)
  assert _tree(purify.transform(program(purify)).init(jax.random.PRNGKey(0), x)) == _tree(want)


# ----------------------------------------------------------------------------- dataclass modules
def _dataclass_program(lib):
  import dataclasses
  from typing import Optional
  linear = hk.Linear if lib is hk else purify.nn.Linear

  @dataclasses.dataclass
  class Block(lib.Module):
    width: int
    scale: float = 1.0
    name: Optional[str] = None

    def __call__(self, x):
      return linear(self.width)(x) * self.scale

  @dataclasses.dataclass
  class Net(lib.Module):
    block: Block
    out: int
    name: Optional[str] = None

    def __post_init__(self):
      super().__post_init__()
      self.head = linear(self.out, name="head")      # created in the constructor: net/~/head

    def __call__(self, x):
      return self.head(self.block(x)) + Block(self.out, name="inner")(x)

  def f(x):
    return Net(Block(4), 2)(x) + Net(Block(4, 2.0, name="second"), 2, name="named")(x)
  return f


def test_dataclass_modules_are_named_and_run_as_haikus():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
  hk_t, pf_t = hk.transform(_dataclass_program(hk)), purify.transform(_dataclass_program(purify))
  params = hk_t.init(jax.random.PRNGKey(1), x)
  assert _tree(pf_t.init(jax.random.PRNGKey(1), x)) == _tree(params)
  assert {"net/~/head", "named/inner/linear", "second/linear"} <= set(params)
  np.testing.assert_allclose(pf_t.apply(params, None, x), hk_t.apply(params, None, x), rtol=1e-6)


# ----------------------------------------------------------------------------- PRNGSequence
@pytest.mark.parametrize("seed", [42, "raw", "typed", "array"])
def test_prng_sequence_gives_haikus_keys(seed):
  raw_key = jax.random.PRNGKey(7)
  arg = {"raw": raw_key, "typed": jax.random.wrap_key_data(raw_key),
         "array": jnp.int32(42)}.get(seed, seed)
  hk_arg = jax.random.key_data(arg) if seed == "typed" else arg
  ours, theirs = purify.PRNGSequence(arg), hk.PRNGSequence(hk_arg)
  raw = (lambda k: jax.random.key_data(k)) if seed == "typed" else (lambda k: k)
  got = [next(ours), *ours.take(3), next(ours)]
  want = [next(theirs), *theirs.take(3), next(theirs)]
  for g, w in zip(got, want):
    np.testing.assert_array_equal(raw(g), w)
  assert len({np.asarray(raw(g)).tobytes() for g in got}) == 5
  with pytest.raises(TypeError, match="int seed or a PRNG key"):
    purify.PRNGSequence(1.5)
