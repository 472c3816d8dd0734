"""The reference interpreter: what a program means under loop semantics.

It runs a :class:`~purify.testing.grammar.Program` with explicit Python loops — one
iteration per scan / fori / while step, one lane per vmap example — an explicit
parameter dict, explicit state (initial values from the initializers the program names —
``jax.nn.initializers.normal``, ``purify.default_init``, ``purify.nn.Linear``'s — called
with the documented keys), and the documented key derivation
(``purify.keys``: ``param_key(root, "module/name")``; a draw is
``fold(derive(fold(root, loop indices...), "rng:" + site), vmap indices...)``). It
shares nothing with purify's tracer or passes; only the hashing primitives of
``purify.keys`` are imported.

vmap lanes run in lockstep (every lane of every enclosing vmap executes each
statement before the next), which is what gives ``pmean`` and state its meaning:
a lane reads the state as it was before the statement; a state write under vmap
must be the same in every lane (the generator only makes such programs; the
interpreter checks it). ``cond``/``switch`` send each lane down its own branch.
``grad`` differentiates the interpreter itself (``jax.grad`` of the loops).

Example::

    from purify.testing import grammar, reference
    prog = grammar.finalize(grammar.Program(2, grammar.Block((grammar.Draw("bits"),))))
    params, state = reference.init(prog, jax.random.PRNGKey(0))
    (h, z), state = reference.apply(prog, params, state, jax.random.PRNGKey(1),
                                    jnp.ones(2), jnp.uint32(0))
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import purify
from purify import keys
from purify.nn import linear
from purify.testing import grammar as g


class InvalidProgram(Exception):
  """The program has no loop-semantics meaning (e.g. a per-example state write)."""


# ----------------------------------------------------------------------------- init
def param_specs(program: g.Program) -> dict:
  """{(module, name): (shape, init(key, shape), stack)} of every parameter the
  program declares — in every branch, and under eval_shape too."""
  d = program.d
  out = {}
  for s in g.walk(program.body):
    if isinstance(s, g.Param):
      if s.kind == "mul":
        out[(s.module, s.name)] = ((d,), lambda k, sh: 0.5 * jax.random.normal(k, sh, jnp.float32), s.stack)
      elif s.kind == "matmul":     # the same initializer: purify.default_init
        out[(s.module, s.name)] = ((d, d), lambda k, sh: purify.default_init(k, sh, jnp.float32), s.stack)
      else:                        # purify.nn.Linear's: w truncated_normal(1/sqrt(in)), b zeros
        m = g.linear_module(s)
        w_init = linear.truncated_normal(1 / np.sqrt(d))
        out[(m, "w")] = ((d, d), lambda k, sh: w_init(k, sh, jnp.float32), s.stack)
        out[(m, "b")] = ((d,), lambda k, sh: jnp.zeros(sh, jnp.float32), s.stack)
  return out


def state_specs(program: g.Program) -> dict:
  out = {}
  for s in g.walk(program.body):
    if isinstance(s, g.Counter):
      out[(s.module, s.name)] = jnp.zeros((), jnp.uint32)
    elif isinstance(s, g.Accum):
      out[(s.module, s.name)] = jnp.zeros((program.d,), jnp.float32)
  return out


def _nest(flat: dict) -> dict:
  out: dict = {}
  for (m, n), v in flat.items():
    out.setdefault(m, {})[n] = v
  return out


def _member(init, key, shape, stack):
  """Initial value of a parameter stacked over ``stack``: member [i, j, ...] uses
  fold(key, i, j, ...) — an explicit loop per axis."""
  if not stack:
    return init(key, shape)
  return jnp.stack([_member(init, jax.random.fold_in(key, i), shape, stack[1:])
                    for i in range(stack[0])])


def init(program: g.Program, root):
  """(params, state) as loop semantics defines init: every parameter from
  ``keys.param_key(root, "module/name")``, every state at its initial value."""
  params = {k: _member(fn, keys.param_key(root, f"{k[0]}/{k[1]}"), shape, stack)
            for k, (shape, fn, stack) in param_specs(program).items()}
  return _nest(params), _nest(state_specs(program))


# ----------------------------------------------------------------------------- apply
@dataclasses.dataclass(frozen=True)
class Lane:
  """One execution context: the values and where it is (loop indices, vmap lanes)."""
  h: object
  z: object
  loops: tuple = ()       # loop iteration indices, outermost first (keys)
  batch: tuple = ()       # example indices of the key-splitting vmaps (keys)
  axes: tuple = ()        # ((axis name or None, index), ...) of every vmap (pmean)
  stack: tuple = ()       # indices into stacked parameters


class _Interp:
  def __init__(self, program, params, state, root):
    self.program = program
    self.params = params
    self.state = {(m, n): v for m, sub in state.items() for n, v in sub.items()}
    self.root = root

  # one statement on all lanes
  def block(self, block, lanes):
    for s in block.stmts:
      lanes = self.stmt(s, lanes)
    return lanes

  def stmt(self, s, lanes):
    rep = dataclasses.replace
    if isinstance(s, g.Param):
      out = []
      for ln in lanes:
        if s.kind == "linear":
          m = g.linear_module(s)
          w, b = self.param(m, "w", ln), self.param(m, "b", ln)
          out.append(rep(ln, h=jnp.tanh(jnp.dot(ln.h, w) + b)))
        else:
          p = self.param(s.module, s.name, ln)
          out.append(rep(ln, h=ln.h * p if s.kind == "mul" else jnp.tanh(ln.h @ p)))
      return out
    if isinstance(s, g.Draw):
      out = []
      for ln in lanes:
        k = keys.fold_indices(self.root, *[np.uint32(i) for i in ln.loops])
        k = keys.rng_key(k, s.site)
        k = keys.fold_indices(k, *[np.uint32(i) for i in ln.batch])
        out.append(self.draw(s.dist, k, ln))
      return out
    if isinstance(s, g.Counter):
      c = self.state[(s.module, s.name)]
      self.state[(s.module, s.name)] = c + jnp.uint32(1)
      return [rep(ln, z=ln.z + c) for ln in lanes]
    if isinstance(s, g.Accum):
      a = self.state[(s.module, s.name)]
      vals = self.pmean([ln.h for ln in lanes], lanes, s.axes)
      new = [a + v for v in vals]
      if any(not np.array_equal(np.asarray(new[0]), np.asarray(v)) for v in new[1:]):
        raise InvalidProgram(f"state {s.module}/{s.name} written per example under vmap")
      self.state[(s.module, s.name)] = new[0]
      return [rep(ln, h=ln.h + 0.1 * jnp.tanh(a)) for ln in lanes]
    if isinstance(s, g.Op):
      return [self.op(s.op, ln) for ln in lanes]
    if isinstance(s, g.Vmap):
      return self.vmap(s, lanes)
    if isinstance(s, g.Scan):
      return self.scan(s, lanes)
    if isinstance(s, g.Fori):
      return self.loop(s.body, lanes, s.length, s.lower)
    if isinstance(s, g.While):
      return self.loop(s.body, lanes, s.length, 0)
    if isinstance(s, g.Cond):
      return self.cond(s, lanes)
    if isinstance(s, g.Wrap):
      if s.kind in ("checkpoint", "jit", "scope", "custom_jvp"):
        return self.block(s.body, lanes)
      if s.kind == "eval_shape":     # only traced: params/state exist, nothing runs
        return lanes
      if s.kind == "grad":
        return self.grad(s, lanes)
      if s.kind == "linearize":
        return self.linearize(s, lanes)
    raise TypeError(s)

  def param(self, module, name, ln):
    p = self.params[module][name]
    for i in ln.stack:
      p = p[i]
    return p

  def draw(self, dist, k, ln):
    rep = dataclasses.replace
    if dist == "bits":
      return rep(ln, z=ln.z + jax.random.bits(k, (), jnp.uint32))
    if dist == "normal":
      return rep(ln, h=ln.h + 0.5 * jax.random.normal(k, ln.h.shape))
    if dist == "uniform":
      return rep(ln, h=ln.h * jax.random.uniform(k, ln.h.shape))
    if dist == "bernoulli":
      return rep(ln, h=jnp.where(jax.random.bernoulli(k, 0.7, ln.h.shape), ln.h, 0.))
    raise ValueError(dist)

  def op(self, op, ln):
    rep = dataclasses.replace
    if op == "tanh":
      return rep(ln, h=jnp.tanh(ln.h))
    if op == "sin":
      return rep(ln, h=jnp.sin(ln.h) + 0.5 * ln.h)
    if op == "lcg":
      return rep(ln, z=ln.z * jnp.uint32(1664525) + jnp.uint32(1013904223))
    if op == "mix":
      return rep(ln, h=ln.h + (ln.z % jnp.uint32(7)).astype(jnp.float32))
    raise ValueError(op)

  def pmean(self, values, lanes, axes):
    """Mean over the lanes that differ only in the vmap axes named ``axes``."""
    names = set(axes)
    groups: dict = {}
    for i, ln in enumerate(lanes):
      rest = tuple((a, j) for a, j in ln.axes if a not in names or a is None)
      groups.setdefault(rest, []).append(i)
    out = [None] * len(values)
    for idx in groups.values():
      m = jnp.mean(jnp.stack([values[i] for i in idx]), 0) if names else None
      for i in idx:
        out[i] = m if names else values[i]
    return out

  def vmap(self, s, lanes):
    rep = dataclasses.replace
    split = s.flavor != "shared"
    children = []
    for ln in lanes:
      for b in range(s.size):
        children.append(rep(ln, h=ln.h * jnp.float32(b + 1), z=ln.z + jnp.uint32(b),
                            batch=ln.batch + ((b,) if split else ()),
                            axes=ln.axes + ((s.axis or None, b),),
                            stack=ln.stack + ((b,) if s.flavor == "stack" else ())))
    children = self.block(s.body, children)
    out = []
    for i, ln in enumerate(lanes):
      kids = children[i * s.size:(i + 1) * s.size]
      out.append(rep(ln, h=jnp.mean(jnp.stack([k.h for k in kids]), 0),
                     z=jnp.sum(jnp.stack([k.z for k in kids]), dtype=jnp.uint32)))
    return out

  def scan(self, s, lanes):
    rep = dataclasses.replace
    xs = 0.1 * jnp.arange(float(s.length))
    ys = [[None] * s.length for _ in lanes]
    order = range(s.length - 1, -1, -1) if s.reverse else range(s.length)
    split = s.flavor != "shared"      # purify.scan(split_rng=False): one key for every step
    for pos in order:      # the key index of a step is its position in xs
      inner = [rep(ln, h=ln.h + xs[pos], loops=ln.loops + ((pos,) if split else ()),
                   stack=ln.stack + ((pos,) if s.flavor == "stack" else ())) for ln in lanes]
      inner = self.block(s.body, inner)
      for j, ln in enumerate(inner):
        ys[j][pos] = ln.h.sum()
      lanes = [rep(new, loops=old.loops, stack=old.stack) for new, old in zip(inner, lanes)]
    w = jnp.arange(1., s.length + 1.)
    return [rep(ln, h=ln.h + jnp.tanh(jnp.stack(y)) @ w) for ln, y in zip(lanes, ys)]

  def loop(self, body, lanes, length, lower):
    rep = dataclasses.replace
    for it in range(length):      # key index: the iteration number (from 0)
      i = lower + it
      inner = [rep(ln, h=ln.h + 0.1 * jnp.int32(i), loops=ln.loops + (it,)) for ln in lanes]
      inner = self.block(body, inner)
      lanes = [rep(new, loops=old.loops) for new, old in zip(inner, lanes)]
    return lanes

  def cond(self, s, lanes):
    n = len(s.branches)
    if n == 2:
      which = [0 if int(ln.z) % 2 == 0 else 1 for ln in lanes]
    else:
      which = [min(int(ln.z) % n, n - 1) for ln in lanes]
    out = list(lanes)
    for b in range(n):
      idx = [i for i, w in enumerate(which) if w == b]
      if idx:
        res = self.block(s.branches[b], [lanes[i] for i in idx])
        for i, r in zip(idx, res):
          out[i] = r
    return out

  def _body_of_h(self, s, lanes):
    """``s``'s body as a function of the lanes' ``h`` (for jax.grad / linearize):
    ``hs -> (result lanes, the state it wrote)``. The state is handed out, never
    kept: the interpreter must not hold a differentiation's tracers once it ends."""
    rep = dataclasses.replace
    saved = dict(self.state)

    def run(hs):
      self.state = dict(saved)
      res = self.block(s.body, [rep(ln, h=h) for ln, h in zip(lanes, hs)])
      written, self.state = self.state, saved
      return res, written
    return run

  def grad(self, s, lanes):
    run = self._body_of_h(s, lanes)

    def loss(hs):
      res, written = run(hs)
      return sum(jnp.sin(r.h).sum() for r in res), ([r.z for r in res], written)

    gs, (zs, state) = jax.grad(loss, has_aux=True)([ln.h for ln in lanes])
    self.state = dict(state)
    return [dataclasses.replace(ln, h=ln.h + gh, z=z) for ln, gh, z in zip(lanes, gs, zs)]

  def linearize(self, s, lanes):
    run = self._body_of_h(s, lanes)

    def fwd(hs):
      res, written = run(hs)
      return [r.h for r in res], ([r.z for r in res], written)

    hs, jvp, (zs, state) = jax.linearize(fwd, [ln.h for ln in lanes], has_aux=True)
    ts = jvp([jnp.ones_like(ln.h) for ln in lanes])
    self.state = dict(state)
    return [dataclasses.replace(ln, h=h + t, z=z) for ln, h, t, z in zip(lanes, hs, ts, zs)]


def apply(program: g.Program, params, state, root, x, n):
  """((h, z), new_state): the program run under loop semantics."""
  it = _Interp(program, params, state, root)
  (lane,) = it.block(program.body, [Lane(jnp.asarray(x, jnp.float32), jnp.asarray(n, jnp.uint32))])
  return (lane.h, lane.z), _nest(it.state)
