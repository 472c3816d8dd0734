"""purify.nn.Embed, purify.nn.dropout, purify.nn.MultiHeadAttention against dm-haiku
run in the same test: the same parameter tree (paths, names, shapes, dtypes) as
``hk.transform(...).init``, and the same outputs as Haiku's apply given the same
params (random values of Haiku's tree, so biases are exercised too).
Dropout: per-example / per-step masks (loop semantics), determinism, rate, and
bitwise parity with ``hk.dropout`` given the same key."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from _haiku_parity import ROOT, TOL, parity, random_like, signature

pytestmark = pytest.mark.usefixtures("fast_compiles")


# ============================================================================ Embed
@pytest.mark.parametrize("style", ["ARRAY_INDEX", "ONE_HOT"])
@pytest.mark.parametrize("ids_shape", [(5,), (2, 3)])
def test_embed_matches_haiku(style, ids_shape):
  ids = jnp.arange(np.prod(ids_shape)).reshape(ids_shape) % 7
  out_h, out_p = parity(lambda i: hk.Embed(7, 4, lookup_style=style)(i),
                        lambda i: purify.nn.Embed(7, 4, lookup_style=style)(i), ids)
  assert out_p.shape == ids_shape + (4,)
  np.testing.assert_allclose(out_p, out_h, **TOL)


def test_embed_from_matrix_and_style_override():
  matrix = np.arange(12, dtype=np.float32).reshape(6, 2)
  ids = jnp.array([[0, 5], [3, 3]])
  out_h, out_p = parity(
      lambda i: hk.Embed(embedding_matrix=matrix, name="tok")(i, lookup_style="ONE_HOT"),
      lambda i: purify.nn.Embed(embedding_matrix=matrix, name="tok")(i, lookup_style="ONE_HOT"),
      ids)
  np.testing.assert_allclose(out_p, out_h, **TOL)
  t = purify.transform(lambda i: purify.nn.Embed(embedding_matrix=matrix)(i))
  params = t.init(ROOT, ids)                                 # the matrix is the initial value
  np.testing.assert_array_equal(params["embed"]["embeddings"], matrix)
  np.testing.assert_array_equal(t.apply(params, None, ids), matrix[np.asarray(ids)])


def test_embed_errors():
  with pytest.raises(ValueError, match="integer"):
    purify.transform(lambda x: purify.nn.Embed(3, 2)(x)).init(ROOT, jnp.ones(2))
  with pytest.raises(ValueError, match="embedding_matrix"):
    purify.transform(lambda x: purify.nn.Embed(3)(x)).init(ROOT, jnp.zeros(2, int))
  with pytest.raises(ValueError, match="vocab_size"):
    purify.transform(lambda x: purify.nn.Embed(4, embedding_matrix=np.ones((3, 2)))(x)).init(
        ROOT, jnp.zeros(2, int))


def test_embed_under_vmap_shares_the_table():
  ids = jnp.array([[1, 2], [2, 0], [1, 1]])
  t = purify.transform(lambda i: jax.vmap(purify.nn.Embed(5, 3))(i))
  params = t.init(ROOT, ids)
  assert signature(params) == {"embed": {"embeddings": ((5, 3), jnp.dtype(jnp.float32))}}
  np.testing.assert_array_equal(t.apply(params, None, ids), params["embed"]["embeddings"][ids])


# ============================================================================ dropout
@pytest.mark.parametrize("rate,broadcast_dims", [(0.3, ()), (0.5, (0,)), (0.8, (1,))])
def test_dropout_with_explicit_rng_equals_haiku(rate, broadcast_dims):
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
  key = jax.random.PRNGKey(7)
  want = hk.dropout(key, rate, x, broadcast_dims=broadcast_dims)
  got = purify.nn.dropout(rate, x, broadcast_dims=broadcast_dims, rng=key)
  np.testing.assert_array_equal(got, want)
  # ... and inside a model, with the model's key handed in explicitly
  t = purify.transform(
      lambda x, k: purify.nn.dropout(rate, x, broadcast_dims=broadcast_dims, rng=k))
  np.testing.assert_array_equal(t.apply({}, None, x, key), want)

@pytest.mark.parametrize("typed", [False, True])
def test_dropout_takes_haikus_positional_order(typed):
  """Ported ``hk.dropout(rng, rate, x[, broadcast_dims])`` calls run unchanged."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
  key = jax.random.key(7) if typed else jax.random.PRNGKey(7)
  raw = jax.random.key_data(key) if typed else key
  for dims in [(), (1,)]:
    want = hk.dropout(raw, 0.5, x, dims)
    np.testing.assert_array_equal(purify.nn.dropout(key, 0.5, x, dims), want)
    np.testing.assert_array_equal(purify.nn.dropout(key, 0.5, x, broadcast_dims=dims), want)
  # inside a model, with the key drawn from purify's RNG: the same mask as the
  # purify form (which draws the same key)
  a = purify.transform(lambda x: purify.nn.dropout(purify.next_rng_key(), 0.5, x))
  b = purify.transform(lambda x: purify.nn.dropout(0.5, x))
  np.testing.assert_array_equal(a.apply({}, ROOT, x), b.apply({}, ROOT, x))


def test_dropout_refuses_mixed_up_arguments_naming_both_forms():
  x, key = jnp.ones((3,)), jax.random.PRNGKey(0)
  with pytest.raises(TypeError, match=r"first must be a PRNG key.*float 0\.5"):
    purify.nn.dropout(0.5, x, x)
  with pytest.raises(TypeError, match="key was given twice"):
    purify.nn.dropout(key, 0.5, x, rng=key)
  with pytest.raises(TypeError, match="broadcast_dims was given twice"):
    purify.nn.dropout(key, 0.5, x, (0,), broadcast_dims=(0,))
  with pytest.raises(TypeError, match="got 5 positional"):
    purify.nn.dropout(key, 0.5, x, (), 1)
  with pytest.raises(TypeError, match=r"or Haiku's order dropout\(rng, rate, x"):
    purify.nn.dropout(jnp.ones((2,)), 0.5, x)


def test_dropout_masks_differ_per_example_under_vmap():
  x = jnp.ones((6, 32))
  t = purify.transform(lambda x: jax.vmap(lambda xi: purify.nn.dropout(0.5, xi))(x))
  out = np.asarray(t.apply({}, ROOT, x))
  assert set(np.unique(out)) <= {0.0, 2.0}
  assert len({row.tobytes() for row in out}) == 6          # six different masks


def test_dropout_masks_differ_per_step_under_scan_and_keys_decide():
  def f(x):                                                # x: (5, 32)
    return jax.lax.scan(lambda c, xi: (c, purify.nn.dropout(0.5, xi)), 0.0, x)[1]
  t = purify.transform(f)
  x = jnp.ones((5, 32))
  out = np.asarray(t.apply({}, ROOT, x))
  assert len({row.tobytes() for row in out}) == 5          # a new mask every step
  np.testing.assert_array_equal(t.apply({}, ROOT, x), out)  # same key, same masks
  np.testing.assert_array_equal(jax.jit(t.apply)({}, ROOT, x), out)
  assert not np.array_equal(t.apply({}, jax.random.PRNGKey(1), x), out)


@pytest.mark.parametrize("rate", [0.2, 0.7])
def test_dropout_keeps_about_one_minus_rate_and_rescales(rate):
  x = jnp.ones((4000,))
  out = np.asarray(purify.transform(lambda x: purify.nn.dropout(rate, x)).apply({}, ROOT, x))
  kept = out != 0
  assert abs(kept.mean() - (1 - rate)) < 0.03
  np.testing.assert_allclose(out[kept], 1 / (1 - rate), rtol=1e-6)
  np.testing.assert_allclose(out.mean(), 1.0, atol=0.1)      # unbiased


def test_dropout_broadcast_dims_share_the_mask():
  x = jnp.ones((3, 40))
  out = np.asarray(purify.transform(
      lambda x: purify.nn.dropout(0.5, x, broadcast_dims=(0,))).apply({}, ROOT, x))
  np.testing.assert_array_equal(out, np.broadcast_to(out[:1], out.shape))
  assert 0 < (out[0] != 0).sum() < 40


def test_dropout_rate_zero_is_identity_and_draws_no_key():
  x = jnp.arange(6.0)
  # apply with rng=None only works when nothing draws a key
  np.testing.assert_array_equal(
      purify.transform(lambda x: purify.nn.dropout(0.0, x)).apply({}, None, x), x)
  with pytest.raises(ValueError, match="rate"):
    purify.nn.dropout(1.0, x, rng=ROOT)


# ============================================================================ attention
def vs_init(lib):
  return (hk.initializers.VarianceScaling(1.0) if lib is hk
          else purify.nn.variance_scaling(1.0))


def causal(t):
  return jnp.tril(jnp.ones((t, t), bool))


CASES = {
    # name: (constructor kwargs, query shape, key/value shape, mask shape or None)
    "self_batched": (dict(num_heads=2, key_size=3), (2, 4, 5), (2, 4, 5), "causal"),
    "cross_sizes": (dict(num_heads=3, key_size=2, value_size=4, model_size=7, with_bias=False),
                    (2, 3, 5), (2, 6, 4), None),
    "unbatched_head_mask": (dict(num_heads=2, key_size=4, name="attn"), (3, 6), (5, 6),
                            "per_head"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_multi_head_attention_matches_haiku(case):
  kwargs, qshape, kvshape, mask_kind = CASES[case]
  q = jax.random.normal(jax.random.PRNGKey(1), qshape)
  kv = jax.random.normal(jax.random.PRNGKey(2), kvshape)
  if mask_kind == "causal":                                 # [1, 1, T', T], broadcast
    mask = causal(qshape[-2])[None, None]
  elif mask_kind == "per_head":                              # [H, T', T]
    mask = jax.random.bernoulli(jax.random.PRNGKey(3), 0.6,
                                (kwargs["num_heads"], qshape[-2], kvshape[-2]))
    mask = mask.at[..., 0].set(True)
  else:
    mask = None

  def model(lib, mha_cls):
    def f(q, kv):
      return mha_cls(w_init=vs_init(lib), **kwargs)(q, kv, kv, mask=mask)
    return f

  out_h, out_p = parity(model(hk, hk.MultiHeadAttention),
                        model(purify, purify.nn.MultiHeadAttention), q, kv)
  model_size = kwargs.get("model_size") or kwargs["num_heads"] * kwargs["key_size"]
  assert out_p.shape == qshape[:-1] + (model_size,)
  np.testing.assert_allclose(out_p, out_h, **TOL)


def test_multi_head_attention_param_names():
  x = jnp.ones((1, 2, 4))
  with pytest.warns(DeprecationWarning, match="w_init_scale"):   # Haiku's deprecated form
    params = jax.eval_shape(purify.transform(lambda x: purify.nn.MultiHeadAttention(
        2, 3, w_init_scale=1.0, value_size=5, model_size=6)(x, x, x)).init, ROOT, x)
  assert {m: {n: v.shape for n, v in s.items()} for m, s in params.items()} == {
      "multi_head_attention/query": {"w": (4, 6), "b": (6,)},
      "multi_head_attention/key": {"w": (4, 6), "b": (6,)},
      "multi_head_attention/value": {"w": (4, 10), "b": (10,)},
      "multi_head_attention/linear": {"w": (10, 6), "b": (6,)}}


def test_causal_mask_makes_outputs_ignore_the_future():
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
  t = purify.transform(lambda x: purify.nn.MultiHeadAttention(
      2, 2, w_init=vs_init(purify))(x, x, x, mask=causal(5)[None]))
  params = t.init(ROOT, x)                                   # a real init, for once
  out = t.apply(params, None, x)
  changed = t.apply(params, None, x.at[3:].set(100.0))       # change only the future
  np.testing.assert_allclose(changed[:3], out[:3], **TOL)
  assert not np.allclose(changed[3:], out[3:])


def test_multi_head_attention_under_vmap_equals_batched_call():
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 6))
  def make():
    return purify.nn.MultiHeadAttention(2, 3, w_init=vs_init(purify), name="mha")
  batched = purify.transform(lambda x: make()(x, x, x))
  vmapped = purify.transform(lambda x: jax.vmap(lambda xi: make()(xi, xi, xi))(x))
  shapes = jax.eval_shape(batched.init, ROOT, x)
  assert signature(jax.eval_shape(vmapped.init, ROOT, x)) == signature(shapes)
  params = random_like(shapes)
  np.testing.assert_allclose(vmapped.apply(params, None, x), batched.apply(params, None, x),
                             **TOL)


def test_multi_head_attention_argument_errors():
  x = jnp.ones((2, 4))
  with pytest.raises(ValueError, match="w_init"):
    purify.transform(lambda x: purify.nn.MultiHeadAttention(2, 2)(x, x, x)).init(ROOT, x)
  with pytest.raises(ValueError, match="mask"):
    purify.transform(lambda x: purify.nn.MultiHeadAttention(
        2, 2, w_init=vs_init(purify))(x, x, x, mask=causal(2))).init(ROOT, x)


def test_embeddings_property_belongs_to_the_module():
  def f(ids):
    embed = purify.nn.Embed(4, 2, name="tok")
    return embed(ids) @ embed.embeddings.T          # read outside __call__ too
  ids = jnp.array([0, 3])
  assert signature(jax.eval_shape(purify.transform(f).init, ROOT, ids)) == signature(
      jax.eval_shape(hk.transform(lambda i: (lambda e: e(i) @ e.embeddings.T)(
          hk.Embed(4, 2, name="tok"))).init, ROOT, ids))
