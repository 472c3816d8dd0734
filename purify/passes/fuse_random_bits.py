"""Pass: one threefry hash for the independent random draws of init.

Every parameter's initializer draws from its own key, so init holds one
``random_bits`` per initializer group, and XLA compiles each one (a threefry2x32
hash) separately: on CPU about a second each, most of init's compile time. The
draws do not depend on one another, so they can share ONE hash: with
``jax_threefry_partitionable`` (the default on 0.10.2 and 0.12), JAX computes
``random_bits(key, w, shape)`` on a threefry key as

    k1, k2 = key_data(key)                        # u32 halves, per key of the batch
    c1, c2 = iota_2x32_shape(shape)               # the u64 counter of each element
    b1, b2 = threefry2x32(k1, k2, c1, c2)         # elementwise, broadcasting
    bits = b1 ^ b2  (w=32) | u8/u16(b1 ^ b2) | (u64(b1) << 32) | u64(b2)  (w=64)

and threefry2x32 is elementwise. So the pass (on the init program only):

1. inlines the plain ``jit`` calls that contain a ``random_bits`` (a call is a
   no-op for what is computed), so the draws are top-level equations;
2. gives each draw a *level*: how many other draws (or loops/conds/calls that
   draw) it depends on; draws inside a loop/cond/custom rule are left alone;
3. replaces the live threefry draws of one level by ONE ``threefry2x32`` hash over
   all their elements (each block of one key's elements takes its key and its
   counters' start from a table of the keys and the segments' starts, see
   ``_segment_operands``; concatenated from each draw's broadcast key and counters
   above ``MAX_SEGMENTS`` keys; computed in ONE call, ``OPERANDS_CALL``, so the
   passes after this one walk one equation, not ~3 a key), then slices, reshapes
   and finishes each draw as
   JAX does — bitwise the same values (a level above
   ``MAX_FUSED_ELEMENTS`` elements in all is fused in chunks of at most that size,
   which bounds the extra memory). The hash is written out as lax ops (JAX's own
   unrolled form, its GPU lowering): on CPU JAX lowers the primitive as a rolled
   loop that streams the whole operands through memory five times, 3-4x slower on
   init's millions of elements; a level of a single draw gets it too;
4. writes out the hash of the keys' ``fold_in`` too (every parameter's key is
   ``fold_in(fold_in(root, hi), lo)`` of its name's hash, ``threefry_fold_in``):
   the primitive's rolled-loop lowering costs ~0.3 s of XLA compile per fold on
   CPU; the folded keys are materialized once (see ``_materialized``);
5. puts the equations in an order where each operand is defined before its use
   (``_assemble.toposort``).

A program with effects, draws of another PRNG implementation, a context other
than the plain partitionable one (``eqn.ctx``), or nothing to fuse is returned
unchanged.

Before::  a = random_bits[32, (3, 4)] k1;  b = random_bits[8, (5,)] k2
After::   ... ; x, y = jit[name=threefry2x32] K1 K2 C1 C2 ; a = xor(slice x, slice y) ...
"""
from __future__ import annotations

import dataclasses
import functools
import math
import weakref

import jax
import numpy as np
from jax import lax

from purify import _compat
from purify.passes import fuse_init_tails
from purify.passes._assemble import iter_eqns, jaxprs_in, remembered, resized, splice, toposort
from purify.passes.base import Pass


# ----------------------------------------------------------------------------- the fused draw
def fused_random_bits(specs):
  """``fn(*keys) -> [random_bits(key_i, w_i, shape_i)]`` through one threefry2x32;
  ``specs`` are ``(key batch shape, shape, bit width)`` (threefry keys, partitionable
  form). Bitwise JAX's values (see module docstring).

  Example::

    fn = fused_random_bits((((), (2, 3), 32), ((4,), (5,), 8)))
    a, b = fn(jax.random.key(0), jax.random.split(jax.random.key(1), 4))
    # a == jax.random.bits(key0, (2, 3)); b[i] == jax.random.bits(keys[i], (5,), uint8)
  """
  def operands(*keys):
    return _operands(specs, *keys)
  operands.__name__ = OPERANDS_CALL
  operands = jax.jit(operands)

  def fn(*keys):
    return _finished(specs, *operands(*keys))
  return fn


#: The name of the call that computes the fused hash's operands from the draws' keys
#: (one equation in init: the lookups of ~50 keys are ~200 equations, which every
#: later pass would walk; XLA inlines the call).
OPERANDS_CALL = "purify_hash_operands"


def _operands(specs, *keys):
  """The hash's operands ``(k1, k2, c1, c2)`` for ``specs``' draws of ``keys``."""
  total = sum(math.prod(tuple(b) + tuple(s)) for b, s, _ in specs)
  segments = sum(math.prod(b) for b, _, _ in specs)
  if 0 < total < 2 ** 32 and segments <= MAX_SEGMENTS:
    return _segment_operands(keys, specs)
  ks, c1s, c2s = [], [], []
  # the counters' high words are 0 below 2**32 elements a draw: one zero operand
  # (each operand piece is a kernel of its own on XLA CPU, ~15 ms of compile)
  low = all(math.prod(shape) < 2 ** 32 for _, shape, _ in specs)
  for key, (batch, shape, _) in zip(keys, specs):
    nb, full = len(batch), tuple(batch) + tuple(shape)
    n = math.prod(full)
    data = jax.random.key_data(key)                        # batch + (2,)
    # both halves of the key in one piece: (n, 2)
    ks.append(lax.reshape(lax.broadcast_in_dim(data, full + (2,), tuple(range(nb)) + (len(full),)),
                          (n, 2)))
    counters = _compat.iota_2x32_shape(shape)
    for c, acc in zip(counters, (c1s, c2s)):
      if acc is c1s and low:
        continue
      acc.append(lax.reshape(lax.broadcast_in_dim(c, full, tuple(range(nb, len(full)))), (n,)))
  cat = lambda xs: xs[0] if len(xs) == 1 else lax.concatenate(xs, 0)  # noqa: E731
  k = cat(ks)
  total = k.shape[0]
  k1, k2 = (lax.reshape(lax.slice_in_dim(k, i, i + 1, axis=1), (total,)) for i in (0, 1))
  c1 = lax.full((total,), 0, np.uint32) if low else cat(c1s)
  return k1, k2, c1, cat(c2s)


def _finished(specs, k1, k2, c1, c2):
  """Each draw's bits, from the hash of the operands: ONE output ``x1 ^ x2`` (all a
  draw of at most 32 bits needs) unless a draw has 64 bits."""
  if all(width <= 32 for _, _, width in specs):
    return _finish_all(specs, *hashed(threefry2x32_bits, k1, k2, c1, c2))
  return _finish_all(specs, *hashed(threefry2x32, k1, k2, c1, c2))


#: Above this many keys in one hash (a stack of thousands of small layers), the
#: operands are concatenated from one broadcast a draw instead: each key is a few
#: equations in the segment form (3333 keys: seconds of the pass, 40k equations).
MAX_SEGMENTS = 64

#: ``table[index]`` of a ``(keys, c)`` table: an index's whole row, ``(n, c)``.
_TAKE_ROW = lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(0,),
                                       start_index_map=(0,))

#: The longest block of one key's elements the hash's operands are broadcast in
#: (see ``_segment_operands``); below ``MIN_BLOCK`` (the keys' numbers of elements
#: share no factor of 8) each element looks its key up itself.
MAX_BLOCK, MIN_BLOCK = 1024, 8


def _block(sizes) -> int:
  """The largest divisor of every key's number of elements that is at most
  ``MAX_BLOCK`` (1 below ``MIN_BLOCK``)."""
  g = math.gcd(*sizes)
  b = next(d for d in range(min(g, MAX_BLOCK), 0, -1) if g % d == 0)
  return b if b >= MIN_BLOCK else 1


def _segment_operands(keys, specs):
  """The hash's operands ``(k1, k2, c1, c2)`` for the draws' elements, in the order
  of ``specs`` (each draw's keys in row-major order, each key's counters 0, 1, ...),
  without building them from one broadcast key and one counter iota a key: on XLA
  CPU each such piece of a concatenation is a kernel of its own (ResNet-50's 54
  keys: ~0.5 s of compile).

  The elements are taken in *blocks* of ``B`` (``_block``: a divisor of every key's
  number of elements, so a block holds one key's elements). Block ``r`` (an iota)
  finds its *segment* (the key it holds), ``s = sum_j [r >= start_j]`` — a compare,
  a convert and an add a key, which XLA fuses into one kernel over the blocks — and
  takes its key halves and its segment's start as one row of a ``(keys, 3)`` table
  (one gather); each element of the block gets them broadcast, its counter
  ``(r - start_s) * B + j`` for its place ``j``. The starts pass through an
  ``optimization_barrier`` (against a compare of an iota with constants, which XLA
  would fold into a constant array). The lookups are done once a block, not once an
  element: a gather in the hash's own loop keeps XLA CPU from vectorizing the hash
  (ResNet-50's 25.5M elements: the hash program runs ~55 ms instead of ~120, its
  compile unchanged; measured side by side). Each segment's counter is below 2**32:
  the counters' high words are 0."""
  datas, sizes = [], []
  for key, (batch, shape, _) in zip(keys, specs):
    nb = math.prod(batch)
    datas.append(lax.reshape(jax.random.key_data(key), (nb, 2)))
    sizes += [math.prod(shape)] * nb
  table = datas[0] if len(datas) == 1 else lax.concatenate(datas, 0)       # (keys, 2)
  n, m = sum(sizes), len(sizes)
  zero = lax.full((n,), 0, np.uint32)
  if m == 1:                         # one key: its halves broadcast, counter = i
    k1, k2 = (lax.broadcast(lax.reshape(lax.slice_in_dim(table, h, h + 1, axis=1), ()), (n,))
              for h in (0, 1))
    return k1, k2, zero, lax.iota(np.uint32, n)
  block = _block(sizes)
  rows = n // block
  starts = lax.optimization_barrier(
      tuple(np.cumsum([0] + sizes[:-1]).astype(np.uint32) // np.uint32(block)))
  r = lax.broadcasted_iota(np.uint32, (rows, 1), 0)
  seg = lax.full((rows, 1), 0, np.int32)
  for b in starts[1:]:
    seg = lax.add(seg, lax.convert_element_type(lax.ge(r, b), np.int32))
  column = lax.concatenate([lax.broadcast(b, (1, 1)) for b in starts], 0)   # (keys, 1)
  got = lax.gather(lax.concatenate([table, column], 1), seg, _TAKE_ROW, (1, 3),
                   mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)           # (rows, 3)
  k1, k2, start = (lax.reshape(lax.slice_in_dim(got, c, c + 1, axis=1), (rows,)) for c in range(3))
  counter = lax.sub(r, lax.reshape(start, (rows, 1)))
  if block == 1:
    return k1, k2, zero, lax.reshape(counter, (n,))
  spread = lambda x: lax.reshape(lax.broadcast_in_dim(x, (rows, block), (0,)), (n,))  # noqa: E731
  counter = lax.add(lax.broadcast_in_dim(lax.mul(counter, np.uint32(block)), (rows, block), (0, 1)),
                    lax.broadcasted_iota(np.uint32, (rows, block), 1))
  return spread(k1), spread(k2), zero, lax.reshape(counter, (n,))


def _finish_all(specs, *hashed):
  """Each draw's bits from its part of the hash's outputs (``x1 ^ x2``, or both)."""
  outs, start = [], 0
  for batch, shape, width in specs:
    full = tuple(batch) + tuple(shape)
    n = math.prod(full)
    parts = [lax.reshape(lax.slice_in_dim(b, start, start + n), full) for b in hashed]
    start += n
    outs.append(_finish(*parts, width) if len(parts) == 2 else _narrow(parts[0], width))
  return outs


#: The name of the fused hash's call in init (lowering runs it as a program apart).
HASH_CALL = "threefry2x32"


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32_rounds(k1, k2, x1, x2):
  """The Threefry-2x32 hash with 20 rounds (Salmon et al., "Parallel random numbers:
  as easy as 1, 2, 3", SC 2011) as plain lax operations, rounds unrolled: bitwise
  ``threefry2x32_p``'s values (tested), the form JAX lowers it to on GPU. On CPU JAX
  lowers the primitive as a rolled 5-step loop over the whole operands (each step
  streams them through memory); written out, XLA fuses the hash into its consumers
  as one pass over the elements. (lax, not jnp: the template traces in ~1 ms.)"""
  u32 = np.uint32
  ks = (k1, k2, lax.bitwise_xor(lax.bitwise_xor(k1, k2), u32(0x1BD11BDA)))
  a, b = lax.add(x1, ks[0]), lax.add(x2, ks[1])
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      a = lax.add(a, b)
      b = lax.bitwise_xor(a, lax.bitwise_or(lax.shift_left(b, u32(r)),
                                            lax.shift_right_logical(b, u32(32 - r))))
    a = lax.add(a, ks[(i + 1) % 3])
    b = lax.add(lax.add(b, ks[(i + 2) % 3]), u32(i + 1))
  return a, b


@jax.jit
def threefry2x32(k1, k2, c1, c2):
  """The hash, written out (``threefry2x32_rounds``); one named call in the program, which XLA inlines. Its two outputs are
  materialized (``optimization_barrier``) as the primitive's are on CPU, so XLA
  fuses each draw's floating-point tail (``uniform``, ``erf_inv``, ...) as it does
  without this pass: fused into the hash, a tail can be contracted differently
  (an FMA), one ulp off the unfused values."""
  return lax.optimization_barrier(threefry2x32_rounds(k1, k2, c1, c2))


def _hash_bits(k1, k2, c1, c2):
  x1, x2 = threefry2x32_rounds(k1, k2, c1, c2)
  return lax.optimization_barrier(x1 ^ x2)


@jax.jit
def _hash_pick(k1, k2, c1, c2, pick):
  """The hash's first output where ``pick`` (int32) is 0, its second where it is 1:
  both outputs in ONE array, so ONE kernel (as a pair, XLA CPU computes each output
  in a kernel of its own, each the whole hash: ``threefry_fold_in``'s two folds
  compiled ~25 ms slower)."""
  x1, x2 = threefry2x32_rounds(k1, k2, c1, c2)
  return lax.select_n(pick, x1, x2)


_hash_bits.__name__ = HASH_CALL
#: The hash of 8/16/32-bit draws: only ``x1 ^ x2``, ONE output (as a pair, XLA CPU
#: computes each output in a kernel of its own: the whole hash twice).
threefry2x32_bits = jax.jit(_hash_bits)


#: The length of the vectors the hashes' templates are traced with.
_SAMPLE = 8


@functools.lru_cache(maxsize=None)
def _hash_eqn(fn, dtypes):
  """The call of ``fn`` (one of the jitted hashes) on vectors of ``dtypes``, traced once."""
  (e,) = _compat.open_of(jax.make_jaxpr(fn)(
      *[jax.ShapeDtypeStruct((_SAMPLE,), d) for d in dtypes])).eqns
  return e


@functools.lru_cache(maxsize=64)
def _body(e, n):
  """The template's body on vectors of length ``n``: ONE object a length, so calls of
  the same hash and length (the keys' two folds) share a body, lowered once."""
  return resized(e.params["jaxpr"], n)


def hashed(fn, *xs):
  """``fn(k1, k2, c1, c2, ...)`` (one of the jitted hashes above, on vectors of one
  length; any shape, flattened and restored) as ONE call, its body written from the
  traced template (``_assemble.resized``): the same equations as ``jax.jit`` traces
  for that length, ~2 ms instead of ~10-15 ms a new length."""
  shape = tuple(xs[0].shape)
  n = math.prod(shape)
  if len(shape) != 1:
    xs = [lax.reshape(x, (n,)) for x in xs]
  e = _hash_eqn(fn, tuple(np.dtype(x.dtype) for x in xs))
  outs = _compat.jit_p.bind(*xs, **dict(e.params, jaxpr=_body(e, n)))
  return [x if len(shape) == 1 else lax.reshape(x, shape) for x in outs]


def _narrow(bits, width):
  """``_finish`` of ``bits = bits1 ^ bits2``, for 8, 16 or 32 bits."""
  return bits if width == 32 else lax.convert_element_type(bits, np.dtype(f"uint{width}"))


def _finish(bits1, bits2, width):
  """``_threefry_random_bits_partitionable``'s last step (jax/_src/random/threefry2x32.py)."""
  dtype = np.dtype(f"uint{width}")
  if width == 64:
    hi = lax.convert_element_type(bits1, dtype)
    lo = lax.convert_element_type(bits2, dtype)
    return lax.shift_left(hi, np.array(32, dtype)) | lo
  if width == 32:
    return bits1 ^ bits2
  return lax.convert_element_type(bits1 ^ bits2, dtype)


@functools.lru_cache(maxsize=256)
def _fused_jaxpr(key_avals, specs):
  cj = jax.make_jaxpr(fused_random_bits(specs))(
      *[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in key_avals])
  if _compat.consts_of(cj) or _compat.open_of(cj).constvars:
    raise AssertionError("purify internal: the fused random_bits helper has consts")
  return cj


@jax.jit
def threefry_fold_in(keys, msgs):
  """``jax.random.fold_in`` of threefry ``keys`` with uint32 ``msgs`` (broadcast
  together), the hash written out: JAX's ``fold_in(key, d)`` is
  ``threefry2x32(key, (0, d))`` (the 32-bit seed's high word is 0). Bitwise JAX's
  keys; on CPU the primitive's rolled-loop lowering costs ~0.3 s of XLA compile per
  fold (init derives every parameter's key with two). One named call in the program;
  the keys are materialized (the hash's optimization barrier): fused into each of
  their consumers, XLA would repeat the hash in every one."""
  jnp = jax.numpy
  shape = jnp.broadcast_shapes(keys.shape, msgs.shape)
  full, dims = shape + (2,), tuple(range(len(shape)))
  data = jax.random.key_data(keys)
  # each key's new halves side by side: the hash over (..., 2), element [..., h]
  # its output h (one kernel for both halves, see _hash_pick)
  k1, k2 = (lax.broadcast_in_dim(jnp.broadcast_to(
      lax.index_in_dim(data, i, axis=data.ndim - 1, keepdims=False), shape), full, dims)
            for i in (0, 1))
  m = lax.broadcast_in_dim(jnp.broadcast_to(msgs, shape), full, dims)
  (out,) = hashed(_hash_pick, k1, k2, lax.full(full, 0, np.uint32), m,
                  lax.broadcasted_iota(np.int32, full, len(shape)))
  (out,) = _materialized(out)
  return jax.random.wrap_key_data(out, impl="threefry2x32")


def _materialized(*xs):
  """``xs`` (same shape), computed once: XLA fuses an elementwise producer into each
  of its consumers (an ``optimization_barrier`` does not stop it on CPU), which
  would repeat a hash in every consumer of the keys. A sort by an iota (the order
  they have) is never fused and leaves the values as they are."""
  shape, n = xs[0].shape, math.prod(xs[0].shape)
  out = lax.sort((lax.iota(np.int32, n),) + tuple(lax.reshape(x, (n,)) for x in xs), num_keys=1)
  return [lax.reshape(x, shape) for x in out[1:]]


@functools.lru_cache(maxsize=256)
def _fold_in_jaxpr(keys_aval, msgs_aval):
  cj = jax.make_jaxpr(threefry_fold_in)(
      jax.ShapeDtypeStruct(keys_aval.shape, keys_aval.dtype),
      jax.ShapeDtypeStruct(msgs_aval.shape, msgs_aval.dtype))
  if _compat.consts_of(cj) or _compat.open_of(cj).constvars:
    raise AssertionError("purify internal: the written-out fold_in helper has consts")
  return cj


def _fold_in_fusable(e) -> bool:
  """A ``random_fold_in`` of threefry keys with uint32 messages (static shapes)."""
  if e.primitive is not _compat.random_fold_in_p or e.effects or len(e.invars) != 2:
    return False
  k, m = e.invars
  if isinstance(k, _compat.Literal) or not _compat.is_threefry_key_aval(k.aval):
    return False
  return (getattr(m.aval, "dtype", None) == np.uint32
          and all(type(d) is int for d in tuple(k.aval.shape) + tuple(m.aval.shape)))


# ----------------------------------------------------------------------------- the rewrite
def _per_body(fn):
  """``fn(open jaxpr)`` remembered a body (the bodies of calls are shared objects,
  asked about once an equation); weakly, so a body's answer dies with it."""
  cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

  def get(j):
    hit = cache.get(j)
    if hit is None:
      hit = cache[j] = fn(j)
    return hit
  return get


@_per_body
def _draws_body(j) -> bool:
  return any(e.primitive is _compat.random_bits_p for e in iter_eqns(j))


def _draws(jaxpr) -> bool:
  """``jaxpr`` (or a sub-jaxpr) holds a ``random_bits``."""
  return _draws_body(_compat.open_of(jaxpr))


@_per_body
def _elementwise_body(j) -> bool:
  return not j.constvars and all(e.primitive.name in fuse_init_tails.ELEMENTWISE for e in j.eqns)


def _elementwise_call(e) -> bool:
  """A call whose body is elementwise operations only (``jnp.clip``'s): inlined, the
  initializer tails it sits in are chains fuse-init-tails can share."""
  cj = e.params["jaxpr"]
  return not _compat.consts_of(cj) and _elementwise_body(_compat.open_of(cj))


def _inline(eqns, subst, consts):
  """``eqns`` with every plain jit call that draws, or computes elementwise only
  (:func:`_elementwise_call`), inlined, recursively (its body's equations with fresh
  variables); ``subst`` gets the top-level calls' outputs. A scalar computed from
  literals alone the same way as an earlier one is not repeated: its uses take the
  earlier value (every truncated normal computes ``erf(lower / sqrt2)`` and a few
  more constants for itself: ResNet-50's init held ~300 such equations, ~40% of
  it, which every later pass walked; the same operations on the same values, so
  the same value — what XLA's CSE does with them anyway). ``consts`` (a
  :class:`_Constants`) gets those scalars."""
  Literal, DropVar, Var = _compat.Literal, _compat.DropVar, _compat.Var
  out = []
  known = consts.vars
  work = [(e, None) for e in reversed(eqns)]
  pop, push = work.pop, work.append
  while work:
    item, env = pop()
    if type(item) is tuple:                     # ("bind", call eqn, body, body env)
      _, call, inner, ienv = item
      for o, r in zip(call.outvars, inner.outvars):
        if not isinstance(o, DropVar):
          val = r if isinstance(r, Literal) else ienv[r]
          if env is not None:                   # the call itself sat in an inlined body
            env[o] = val
          else:
            subst[o] = val
      continue
    e = item
    # the operands, and whether all are literals or constants (a candidate for reuse)
    ins, const = [], True
    names = env if env is not None else subst
    for v in e.invars:
      if not isinstance(v, Literal):
        v = names.get(v, v) if env is None else env[v]   # (a body's operand: maybe a literal)
        if const and not isinstance(v, Literal) and v not in known:
          const = False
      ins.append(v)
    if e.primitive is _compat.jit_p and _inlinable(e):
      inner = _compat.open_of(e.params["jaxpr"])
      ienv = dict(zip(inner.invars, ins))
      push((("bind", e, inner, ienv), env))
      work.extend((ie, ienv) for ie in reversed(inner.eqns))
      continue
    key = consts.key(e, ins) if const else None
    if key is not None:
      earlier = consts.seen.get(key)
      if earlier is not None:                   # the same scalar again: reuse it
        for v, w in zip(e.outvars, earlier):
          names[v] = w
        continue
    if env is not None:
      outs = []
      for v in e.outvars:
        nv = v if isinstance(v, DropVar) else Var(v.aval)
        env[v] = nv
        outs.append(nv)
      e = e.replace(invars=ins, outvars=outs)
    else:
      for a, b in zip(ins, e.invars):
        if a is not b:
          e = e.replace(invars=ins)
          break
    if key is not None:
      consts.add(key, e.outvars)
    out.append(e)
  return out


def _inlinable(e) -> bool:
  """A plain jit call (no effects) that draws or computes elementwise only."""
  return (not e.effects and (_draws(e.params["jaxpr"]) or _elementwise_call(e))
          and _compat.jit_is_plain_call(e.params))


class _Constants:
  """The scalars computed from literals alone (:func:`_inline`), by how each is
  computed: operation, parameters, operands (literals by type and value, earlier
  constants by identity) and result types."""

  def __init__(self):
    self.seen: dict = {}
    self.vars: set = set()

  def key(self, e, ins):
    """``e``'s description when it computes a scalar from constants only, else None
    (``ins``: its operands, literals or constants: the caller checked)."""
    static = _static_key(e)
    if static is None:
      return None
    desc = []
    for v in ins:
      if isinstance(v, _compat.Literal):
        desc.append(_literal_key(v))
      elif v in self.vars:
        desc.append(v)
      else:
        return None
    return (static, tuple(desc))

  def add(self, key, outvars):
    self.seen[key] = outvars
    self.vars.update(outvars)


#: ``_static_key`` / ``_literal_key`` by the object (``_assemble.remembered``): an
#: inlined body's equations and literals are its body's, which JAX's tracing cache
#: keeps for the next program with that initializer.
_STATIC_KEYS: dict = {}
_LITERAL_KEYS: dict = {}


def _static_key(e):
  """What says how ``e`` computes, but its operands: operation, parameters, result
  types — when it computes scalars (size 1) and has no sub-program, effects or
  parameter that does not hash; else None. (Not remembered for an equation with a
  sub-program: the table would keep the sub-program's constants alive.)"""
  if e.effects or not e.outvars or jaxprs_in(e.params):
    return None
  return remembered(_STATIC_KEYS, e, _static_key_of)


def _static_key_of(e):
  outs = []
  for v in e.outvars:
    a = v.aval
    shape = getattr(a, "shape", None)
    if shape is None or math.prod(shape) != 1 or isinstance(v, _compat.DropVar):
      return None
    outs.append((shape, a.dtype, getattr(a, "weak_type", False)))
  key = (e.primitive, tuple(sorted(e.params.items())), tuple(outs))
  try:
    hash(key)
  except TypeError:                              # (a parameter that does not hash)
    return None
  return key


def _literal_key(v):
  """A literal by type and value (its bytes: -0.0 is not 0.0; repr is ~80 us)."""
  return remembered(_LITERAL_KEYS, v, lambda v: (
      v.aval.dtype, getattr(v.aval, "weak_type", False), np.asarray(v.val).tobytes()))


def _fusable(e) -> bool:
  """A threefry ``random_bits`` JAX lowers in the partitionable form."""
  if e.primitive is not _compat.random_bits_p or e.effects or len(e.invars) != 1:
    return False
  k = e.invars[0]
  if isinstance(k, _compat.Literal) or not _compat.is_threefry_key_aval(k.aval):
    return False
  if e.params.get("bit_width") not in (8, 16, 32, 64) or not _compat.eqn_lowers_partitionable_bits(e):
    return False
  full = tuple(k.aval.shape) + tuple(e.params["shape"])
  return all(type(d) is int for d in full) and math.prod(full) > 0


#: At most this many elements in one fused hash: its operands are materialized
#: (4 x 4 bytes an element), so a level of a huge model is fused in chunks, and a
#: draw at least this large is left as it is (fusing it saves nothing).
MAX_FUSED_ELEMENTS = 2 ** 25


def _size(e) -> int:
  return math.prod(tuple(e.invars[0].aval.shape) + tuple(e.params["shape"]))


def _chunks(eqns, members):
  """``members`` (indices of one level's draws) packed in order into chunks of at
  most ``MAX_FUSED_ELEMENTS`` elements (a chunk of one draw still gets the unrolled
  hash)."""
  out, cur, total = [], [], 0
  for i in members:
    n = _size(eqns[i])
    if n >= MAX_FUSED_ELEMENTS:
      continue
    if total + n > MAX_FUSED_ELEMENTS:
      out.append(cur)
      cur, total = [], 0
    cur.append(i)
    total += n
  out.append(cur)
  return [c for c in out if c]


def _draws_in(e) -> bool:
  if e.primitive is _compat.random_bits_p:
    return True
  subs = jaxprs_in(e.params)
  return bool(subs) and any(_draws(j) for j in subs)


def fuse(closed_jaxpr):
  """``closed_jaxpr`` with each level of independent threefry draws fused into one
  threefry2x32 (see module docstring); the same object when there is nothing to do."""
  j = _compat.open_of(closed_jaxpr)
  if j.effects or not any(e.primitive is _compat.random_fold_in_p or _draws_in(e) for e in j.eqns):
    return closed_jaxpr                  # (a fold_in in a call is never fused: not inlined)
  subst: dict = {}
  consts = _Constants()
  eqns = _inline(list(j.eqns), subst, consts)
  outvars = [v if isinstance(v, _compat.Literal) else subst.get(v, v) for v in j.outvars]
  live = {v for v in outvars if not isinstance(v, _compat.Literal)}
  is_live = [False] * len(eqns)
  for i in reversed(range(len(eqns))):
    e = eqns[i]
    if e.effects or any(v in live for v in e.outvars):
      is_live[i] = True
      live.update(v for v in e.invars if not isinstance(v, _compat.Literal))
  level: dict = {}                 # var -> how many draws it depends on (a chain's length)
  groups: dict = {}
  folds = []                       # the live fold_ins to write out
  for i, e in enumerate(eqns):
    d = max((level.get(v, 0) for v in e.invars if not isinstance(v, _compat.Literal)), default=0)
    if is_live[i]:
      if _fusable(e):
        groups.setdefault(d, []).append(i)
      elif _fold_in_fusable(e):
        folds.append(i)
    d_out = d + 1 if _draws_in(e) else d
    for v in e.outvars:
      level[v] = d_out
  # each level's draws ordered by their tails, so that alike tails are adjacent in the
  # hash (fuse-init-tails computes them once on the slice that holds them)
  graph = None
  if any(len(m) > 1 for m in groups.values()):
    graph = fuse_init_tails.Graph(eqns, outvars)
    # the scalars computed from literals are each computed differently from the
    # others (_inline kept one of alike ones): a number each, not worked out again
    # (in the order they were computed: the numbers order the draws, so they must not
    # depend on a set's order — the program would differ from one trace to the next)
    graph.number_apart(v for outs in consts.seen.values() for v in outs)
  for d, members in groups.items():
    if len(members) > 1:
      sig = {i: fuse_init_tails.tail_signature(graph, eqns[i].outvars[0]) for i in members}
      groups[d] = sorted(members, key=lambda i: sig[i])
  spliced: dict = {}               # first member's index -> the fused equations
  removed: set = set()
  for members in (c for g in groups.values() for c in _chunks(eqns, g)):
    es = [eqns[i] for i in members]
    keys = [e.invars[0] for e in es]
    specs = tuple((tuple(k.aval.shape), tuple(e.params["shape"]), int(e.params["bit_width"]))
                  for k, e in zip(keys, es))
    helper = _fused_jaxpr(tuple(k.aval for k in keys), specs)
    if any(o.aval != e.outvars[0].aval for o, e in zip(_compat.open_of(helper).outvars, es)):
      continue                     # e.g. a sharded aval: leave this level as it is
    spliced[members[0]] = splice(helper, keys, [e.outvars[0] for e in es], es[0])
    removed.update(members)
  for i in folds:
    e = eqns[i]
    helper = _fold_in_jaxpr(e.invars[0].aval, e.invars[1].aval)
    if _compat.open_of(helper).outvars[0].aval == e.outvars[0].aval:
      spliced[i] = splice(helper, list(e.invars), list(e.outvars), e)
      removed.add(i)
  if not spliced:
    return closed_jaxpr
  # (not _assemble.insert_blocks: a fused hash takes the keys of all its draws, and
  # a draw's key is wrapped (``random_wrap``) in its initializer, after the first
  # draw's uses: the program is ordered again in any case)
  new_eqns = []
  for i, e in enumerate(eqns):
    new_eqns.extend(spliced.get(i, ()))
    if i not in removed:
      new_eqns.append(e)
  out = _compat.replace_jaxpr(closed_jaxpr, eqns=toposort(new_eqns), outvars=outvars)
  if graph is not None:
    fuse_init_tails.remember_numbers(out, graph)
  return out


@dataclasses.dataclass(frozen=True)
class FuseRandomBits(Pass):
  """See the module docstring. ``enabled=False`` keeps the program as it is (a
  pipeline without the fusion, for comparisons)."""
  name = "fuse_random_bits"
  requires = frozenset({"split"})
  provides = frozenset({"random_bits_fused"})
  enabled: bool = True

  def run(self, program):
    if not self.enabled or program.init_jaxpr is None:
      return program
    new = fuse(program.init_jaxpr)
    return program if new is program.init_jaxpr else program.replace(init_jaxpr=new)
