"""Module naming against dm-haiku itself: the same program written with hk.* and
purify.* gives the same parameter tree (paths, names, shapes)."""
import haiku as hk
import jax
import jax.numpy as jnp
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
