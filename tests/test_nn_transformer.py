"""purify.nn.TransformerBlock / Transformer / TransformerLM against a hand-written
pure-JAX reference (explicit params, explicit dropout keys from ``purify.keys``).

Checked: the parameter trees; one block == the reference (exact and fast variance);
the LM == the reference LM; the scanned stack (``scan_layers=True``,
``purify.scan(param_axes=0)``) == the Python loop over blocks once the per-block
params are stacked; causal masking; dropout keys per layer (loop semantics) in both
the loop and the scanned stack, reproducible from the same root key.
Float comparisons: ``TOL`` (the reference runs under ``jax.jit`` as its own program).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purify
from purify import keys

TOL = dict(rtol=2e-5, atol=2e-5)
ROOT = jax.random.PRNGKey(7)
H, K, HIDDEN, D, T = 2, 4, 16, 8, 5


pytestmark = pytest.mark.usefixtures("fast_compiles")


# ====================================================================== reference
def ref_layer_norm(p, x, fast=False):
  mean = jnp.mean(x, -1, keepdims=True)
  if fast:
    var = jnp.mean(jnp.square(x), -1, keepdims=True) - jnp.square(mean)
  else:
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return p["scale"] * (x - mean) * jax.lax.rsqrt(var + 1e-5) + p["offset"]


def ref_linear(p, x):
  return x @ p["w"] + p["b"]


def ref_dropout(key, rate, x):
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def ref_block(P, prefix, x, *, fast=False, rate=0.0, drop_keys=(None, None)):
  """One pre-LN causal block from the params ``P[prefix + "/..."]``, by hand."""
  n = x.shape[-2]
  h = ref_layer_norm(P[f"{prefix}/ln_attn"], x, fast)

  def heads(name):
    y = ref_linear(P[f"{prefix}/attention/{name}"], h)
    return y.reshape(y.shape[:-1] + (H, K))

  q, k, v = heads("query"), heads("key"), heads("value")
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / np.sqrt(K)
  logits = jnp.where(np.tril(np.ones((n, n), bool)), logits, -jnp.inf)
  attn = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, -1), v)
  attn = ref_linear(P[f"{prefix}/attention/linear"], attn.reshape(x.shape[:-1] + (H * K,)))
  x = x + ref_dropout(drop_keys[0], rate, attn)
  h = ref_layer_norm(P[f"{prefix}/ln_mlp"], x, fast)
  h = jax.nn.gelu(ref_linear(P[f"{prefix}/mlp/~/linear_0"], h))
  h = ref_linear(P[f"{prefix}/mlp/~/linear_1"], h)
  return x + ref_dropout(drop_keys[1], rate, h)


def ref_lm(P, tokens, num_layers, prefix="transformer_lm"):
  h = P[f"{prefix}/token_embed"]["embeddings"][tokens]
  h = h + P[prefix]["positional_embeddings"][:tokens.shape[-1]]
  for i in range(num_layers):
    h = ref_block(P, f"{prefix}/transformer/block_{i}", h)
  h = ref_layer_norm(P[f"{prefix}/ln_final"], h)
  return ref_linear(P[f"{prefix}/logits"], h)


def stack_blocks(params, num_layers):
  """Unrolled params (``.../block_i/...``) -> the scanned layout (``.../block/...``,
  leading axis ``num_layers``)."""
  out = {}
  for path, leaves in params.items():
    if "/block_0" in path:
      out[path.replace("/block_0", "/block")] = {
          k: jnp.stack([params[path.replace("/block_0", f"/block_{i}")][k]
                        for i in range(num_layers)]) for k in leaves}
    elif "/block_" not in path:
      out[path] = leaves
  return out


def shapes(tree):
  return jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), tree)


# ========================================================================== tests
def test_block_param_tree_and_reference():
  def f(x):
    exact = purify.nn.TransformerBlock(H, K, HIDDEN, name="exact")(x)
    fast = purify.nn.TransformerBlock(H, K, HIDDEN, use_fast_variance=True, name="fast")(x)
    return exact, fast

  t = purify.transform(f)
  # a large common offset makes E[x^2] - E[x]^2 differ visibly from the exact variance
  x = jax.random.normal(jax.random.PRNGKey(1), (3, T, D)) + 300.0
  params = t.init(ROOT, x)
  block = {"ln_attn": {"offset": (D,), "scale": (D,)},
           "attention/query": {"w": (D, H * K), "b": (H * K,)},
           "attention/key": {"w": (D, H * K), "b": (H * K,)},
           "attention/value": {"w": (D, H * K), "b": (H * K,)},
           "attention/linear": {"w": (H * K, D), "b": (D,)},
           "ln_mlp": {"offset": (D,), "scale": (D,)},
           "mlp/~/linear_0": {"w": (D, HIDDEN), "b": (HIDDEN,)},
           "mlp/~/linear_1": {"w": (HIDDEN, D), "b": (D,)}}
  want = {f"{n}/{k}": {p: (s, "float32") for p, s in v.items()}
          for n in ("exact", "fast") for k, v in block.items()}
  assert shapes(params) == want
  # LayerNorm params start at ones/zeros: perturb them so they matter
  params = jax.tree_util.tree_map(
      lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(a.size), a.shape), params)
  exact, fast = t.apply(params, None, x)
  ref = jax.jit(ref_block, static_argnames=("prefix", "fast"))
  want_exact = ref(params, "exact", x)
  want_fast = ref(params, "fast", x, fast=True)
  np.testing.assert_allclose(exact, want_exact, **TOL)
  np.testing.assert_allclose(fast, want_fast, rtol=1e-3, atol=1e-3)
  # the keyword is passed through: the fast variance is measurably different here
  assert np.abs(np.asarray(ref(params, "exact", x, fast=True)) - np.asarray(want_exact)).max() > 1e-2
  assert np.abs(np.asarray(fast) - np.asarray(exact)).max() > 1e-2


def test_lm_reference_scan_equals_loop_and_causal():
  num_layers, vocab, max_len = 2, 11, 8
  lm = lambda scan: purify.transform(lambda tok: purify.nn.TransformerLM(
      vocab, D, num_layers, H, key_size=K, mlp_hidden=HIDDEN, max_len=max_len,
      scan_layers=scan)(tok))
  loop, scanned = lm(False), lm(True)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, T), 0, vocab)
  params = loop.init(ROOT, tokens)
  assert params["transformer_lm"]["positional_embeddings"].shape == (max_len, D)
  assert params["transformer_lm/logits"]["w"].shape == (D, vocab)
  stacked = stack_blocks(params, num_layers)
  assert shapes(stacked) == shapes(jax.eval_shape(scanned.init, ROOT, tokens))
  assert stacked["transformer_lm/transformer/block/attention/query"]["w"].shape == (
      num_layers, D, H * K)

  out_loop = loop.apply(params, None, tokens)
  out_scan = scanned.apply(stacked, None, tokens)
  assert out_loop.shape == (2, T, vocab)
  np.testing.assert_allclose(out_loop, jax.jit(ref_lm, static_argnums=2)(params, tokens,
                                                                           num_layers), **TOL)
  np.testing.assert_allclose(out_scan, out_loop, **TOL)

  # causal: changing tokens after position t changes no logits at positions <= t
  for t in range(T - 1):
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1) % vocab)
    out = scanned.apply(stacked, None, changed)
    np.testing.assert_allclose(out[:, :t + 1], out_scan[:, :t + 1], **TOL)
    assert np.abs(np.asarray(out[:, t + 1:] - out_scan[:, t + 1:])).max() > 1e-4


def test_dropout_keys_per_layer_loop_and_scan():
  """Loop semantics: block ``i`` of the loop draws at sites ``transformer/block_i#0/#1``;
  step ``i`` of the scanned stack at ``transformer/block#0/#1`` with the step index
  folded into the root first (``purify.keys``). Both match the reference with those
  keys, so every layer has its own masks."""
  num_layers, rate = 3, 0.5
  make = lambda scan: purify.transform(lambda x: purify.nn.Transformer(
      num_layers, H, K, HIDDEN, dropout_rate=rate, scan_layers=scan)(x))
  loop, scanned = make(False), make(True)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, T, D))
  params = loop.init(ROOT, x)
  stacked = stack_blocks(params, num_layers)
  rng = jax.random.PRNGKey(11)

  def site(name, loop_idx=()):
    return keys.rng_key(keys.fold_indices(rng, *loop_idx), name)

  def reference(drop_keys):
    h = x
    for i in range(num_layers):
      h = ref_block(params, f"transformer/block_{i}", h, rate=rate, drop_keys=drop_keys(i))
    return h

  out_loop = loop.apply(params, rng, x)
  want_loop = reference(lambda i: (site(f"transformer/block_{i}#0"),
                                   site(f"transformer/block_{i}#1")))
  np.testing.assert_allclose(out_loop, want_loop, **TOL)

  out_scan = scanned.apply(stacked, rng, x)
  want_scan = reference(lambda i: (site("transformer/block#0", (i,)),
                                   site("transformer/block#1", (i,))))
  np.testing.assert_allclose(out_scan, want_scan, **TOL)
  # one mask for every layer would be a different function
  same = reference(lambda i: (site("transformer/block#0", (0,)),
                              site("transformer/block#1", (0,))))
  assert np.abs(np.asarray(out_scan - same)).max() > 1e-3

  # the same root key reproduces bitwise, another one changes the masks
  np.testing.assert_array_equal(scanned.apply(stacked, rng, x), out_scan)
  np.testing.assert_array_equal(jax.jit(scanned.apply)(stacked, rng, x), out_scan)
  assert np.abs(np.asarray(scanned.apply(stacked, jax.random.PRNGKey(12), x) - out_scan)).max() > 1e-3


def test_is_training_false_draws_nothing_and_errors():
  t = purify.transform(lambda x, is_training: purify.nn.Transformer(
      1, H, K, HIDDEN, dropout_rate=0.5)(x, is_training=is_training))
  x = jax.random.normal(jax.random.PRNGKey(4), (T, D))
  params = t.init(ROOT, x, True)
  # no dropout in evaluation: no key needed, the reference without dropout
  out = t.apply(params, None, x, False)
  np.testing.assert_allclose(out, jax.jit(ref_block, static_argnames="prefix")(
      params, "transformer/block_0", x), **TOL)
  with pytest.raises(ValueError, match="max_len"):
    purify.transform(lambda tok: purify.nn.TransformerLM(5, D, 1, H, max_len=3)(tok)).init(
        ROOT, jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="divisible"):
    purify.transform(lambda tok: purify.nn.TransformerLM(5, 9, 1, 2)(tok)).init(
        ROOT, jnp.zeros((4,), jnp.int32))
