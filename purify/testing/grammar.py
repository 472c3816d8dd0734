"""The program grammar: a tiny AST of effectful models, hypothesis strategies that
build random ones, and a printer that turns one into readable Python.

A program is a function ``model(x, n)`` of ``x: f32[d]`` and ``n: uint32[]`` that
threads two values, ``h: f32[d]`` and ``z: uint32[]``, through a block of
statements and returns ``(h, z)``. ``z`` collects integer RNG bits and counters,
so key mistakes show up bitwise; ``h`` carries the floats. A statement is a leaf
(a parameter use, an RNG draw, a state read/write, an elementwise op) or a
transform around a nested block (vmap, scan, fori/while loops, cond/switch,
checkpoint, jit, grad, eval_shape, name scopes and purify's drop-ins).

Printed, a program is what :func:`purify.testing.build` executes, so a shrunk
failure can be pasted into a test as it is. Example::

    from hypothesis import given
    from purify.testing import grammar

    @given(grammar.programs())
    def test_prints(program):
      compile(grammar.to_source(program), "<program>", "exec")
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from hypothesis import strategies as st


# ----------------------------------------------------------------------------- leaves
@dataclasses.dataclass(frozen=True)
class Param:
  """``h = h * param`` (kind "mul", shape (d,)), ``h = tanh(h @ param)`` ("matmul",
  shape (d, d)) or a ``purify.nn.Linear(d)`` layer ("linear")."""
  kind: str = "mul"
  name: str = ""
  module: str = "~"         # filled by finalize
  stack: tuple = ()         # param_axes=0 stack sizes, outermost first (finalize)


@dataclasses.dataclass(frozen=True)
class Draw:
  """``next_rng_key()`` used as: "bits" (into z), "normal", "uniform", "bernoulli"."""
  dist: str = "bits"
  site: str = ""            # "module#n", filled by finalize


@dataclasses.dataclass(frozen=True)
class Counter:
  """A uint32 state counter incremented once per execution; its value goes into z."""
  name: str = ""
  module: str = "~"


@dataclasses.dataclass(frozen=True)
class Accum:
  """A f32[d] state accumulator ``a = a + h`` (reduced with ``pmean`` over ``axes``
  when inside named vmaps); ``h`` reads it back."""
  axes: tuple = ()
  name: str = ""
  module: str = "~"


@dataclasses.dataclass(frozen=True)
class Op:
  """An elementwise op: "tanh", "sin", "lcg" (z = z * a + c), "mix" (h += z % 7)."""
  op: str = "tanh"


# ----------------------------------------------------------------------------- nodes
@dataclasses.dataclass(frozen=True)
class Block:
  stmts: tuple = ()


@dataclasses.dataclass(frozen=True)
class Vmap:
  """flavor: "jax" (jax.vmap), "purify" (purify.vmap), "shared" (purify.vmap with
  split_rng=False), "stack" (purify.vmap with param_axes=0)."""
  size: int
  named: bool
  flavor: str
  body: Block
  axis: str = ""            # the axis name when named (finalize)


@dataclasses.dataclass(frozen=True)
class Scan:
  """flavor: "jax" (jax.lax.scan), "stack" (purify.scan with param_axes=0) or
  "shared" (purify.scan with split_rng=False: one key for every step)."""
  length: int
  reverse: bool
  unroll: int
  flavor: str
  body: Block


@dataclasses.dataclass(frozen=True)
class Fori:
  lower: int
  length: int
  body: Block


@dataclasses.dataclass(frozen=True)
class While:
  """``while_loop`` with a fixed trip count carried in the loop state."""
  length: int
  body: Block


@dataclasses.dataclass(frozen=True)
class Cond:
  """``lax.cond(z % 2 == 0, ...)`` (2 branches) or ``lax.switch(z % k, ...)``."""
  branches: tuple


@dataclasses.dataclass(frozen=True)
class Wrap:
  """A transform that runs its body once: "checkpoint", "jit", "custom_jvp" (run
  forward only), "grad" (of
  ``sin(h).sum()``; ``h += grad``), "linearize" (``jax.linearize`` of the body in
  ``h``; ``h = primal + jvp(ones)``), "eval_shape" (the body is only traced), "scope"
  (``purify.name_scope``)."""
  kind: str
  body: Block
  scope: str = ""           # the name_scope name (finalize)


LEAF_TYPES = (Param, Draw, Counter, Accum, Op)
NODE_TYPES = (Vmap, Scan, Fori, While, Cond, Wrap)


@dataclasses.dataclass(frozen=True)
class Program:
  d: int
  body: Block

  def __str__(self):
    return to_source(self)


def kind_of(node) -> str:
  """The transform kind of a node, e.g. "vmap:shared", "scan:stack", "wrap:grad"."""
  if isinstance(node, Vmap):
    return f"vmap:{node.flavor}" + (":named" if node.named else "")
  if isinstance(node, Scan):
    return f"scan:{node.flavor}" + (":reverse" if node.reverse else "")
  if isinstance(node, Fori):
    return "fori"
  if isinstance(node, While):
    return "while"
  if isinstance(node, Cond):
    return "cond" if len(node.branches) == 2 else "switch"
  if isinstance(node, Wrap):
    return node.kind
  return type(node).__name__.lower()


def walk(block: Block):
  """Every statement of a block and its nested blocks, in source order."""
  for s in block.stmts:
    yield s
    for b in children(s):
      yield from walk(b)


def children(s):
  if isinstance(s, (Vmap, Scan, Fori, While, Wrap)):
    return (s.body,)
  if isinstance(s, Cond):
    return s.branches
  return ()


def ad_depth(program: Program) -> int:
  """How deeply ``jax.grad`` / ``jax.linearize`` nodes nest in ``program`` (2: a
  derivative of a derivative)."""
  def depth(block):
    best = 0
    for s in block.stmts:
      own = int(isinstance(s, Wrap) and s.kind in ("grad", "linearize"))
      best = max([best] + [own + depth(b) for b in children(s)])
    return best
  return depth(program.body)


_CONTROL_FLOW = (Scan, Fori, While, Cond)


def effects_in_control_flow_under_grad(program: Program) -> bool:
  """Whether a parameter or draw sits in a loop/cond/jit/checkpoint inside a
  ``jax.grad``. JAX's leak checker reports a false leak for such programs: its
  partial evaluation keeps an effectful equation in ``JaxprTrace.effect_handles``
  while the trace is still in use (plain JAX does the same with ``jax.debug.print``
  in a ``fori_loop`` under ``jax.grad``; tests/test_harness.py keeps a canary)."""
  def visit(block, in_grad, in_cf):
    for s in block.stmts:
      if isinstance(s, (Param, Draw)) and in_grad and in_cf:
        return True
      grad = in_grad or (isinstance(s, Wrap) and s.kind in ("grad", "linearize"))
      cf = in_cf or (in_grad and (isinstance(s, _CONTROL_FLOW) or
                                  (isinstance(s, Wrap) and s.kind in ("jit", "checkpoint"))))
      if any(visit(b, grad, cf) for b in children(s)):
        return True
    return False
  return visit(program.body, False, False)


def kinds(program: Program) -> set:
  return {kind_of(s) for s in walk(program.body) if isinstance(s, NODE_TYPES)}


# ----------------------------------------------------------------------------- finalize
def finalize(program: Program) -> Program:
  """Give every leaf its name, module path, stack and RNG site, and every named
  vmap / scope its name, following the documented rules: names are unique per
  program (p0, c0, a0, v0, m0 ... in source order); a draw's site is
  ``module#n``, the n-th draw *traced* in its module (cond/switch branches are
  traced in order, true branch first; a name_scope ``m`` inside module ``M`` is
  ``M/m``)."""
  counters = {"p": 0, "c": 0, "a": 0, "v": 0, "m": 0}
  rng_counts: dict = {}

  def fresh(prefix):
    n = counters[prefix]
    counters[prefix] += 1
    return f"{prefix}{n}"

  def fix_block(block, module, stack, axes):
    return Block(tuple(fix(s, module, stack, axes) for s in block.stmts))

  def fix(s, module, stack, axes):
    if isinstance(s, Param):
      return dataclasses.replace(s, name=fresh("p"), module=module, stack=stack)
    if isinstance(s, Draw):
      n = rng_counts.get(module, 0)
      rng_counts[module] = n + 1
      return dataclasses.replace(s, site=f"{module}#{n}")
    if isinstance(s, Counter):
      return dataclasses.replace(s, name=fresh("c"), module=module)
    if isinstance(s, Accum):
      # the generator marks a reduced accumulator with axes=("*",): all enclosing axes
      return dataclasses.replace(s, name=fresh("a"), module=module,
                                 axes=tuple(axes) if s.axes else ())
    if isinstance(s, Op):
      return s
    if isinstance(s, Vmap):
      axis = fresh("v") if s.named else ""
      inner_stack = stack + (s.size,) if s.flavor == "stack" else stack
      inner_axes = axes + (axis,) if s.named else axes
      return dataclasses.replace(s, axis=axis, body=fix_block(s.body, module, inner_stack, inner_axes))
    if isinstance(s, Scan):
      inner_stack = stack + (s.length,) if s.flavor == "stack" else stack
      return dataclasses.replace(s, body=fix_block(s.body, module, inner_stack, axes))
    if isinstance(s, (Fori, While)):
      return dataclasses.replace(s, body=fix_block(s.body, module, stack, axes))
    if isinstance(s, Cond):
      return dataclasses.replace(s, branches=tuple(fix_block(b, module, stack, axes) for b in s.branches))
    if isinstance(s, Wrap):
      if s.kind == "scope":
        name = fresh("m")
        inner = name if module == "~" else f"{module}/{name}"
        return dataclasses.replace(s, scope=name, body=fix_block(s.body, inner, stack, axes))
      return dataclasses.replace(s, body=fix_block(s.body, module, stack, axes))
    raise TypeError(s)

  return Program(program.d, fix_block(program.body, "~", (), ()))


def linear_module(p: Param) -> str:
  """The module path of a "linear" Param's layer."""
  return p.name if p.module == "~" else f"{p.module}/{p.name}"


# ----------------------------------------------------------------------------- printing
_DRAW = {
    "bits": "z = z + jax.random.bits(purify.next_rng_key(), (), jnp.uint32)",
    "normal": "h = h + 0.5 * jax.random.normal(purify.next_rng_key(), h.shape)",
    "uniform": "h = h * jax.random.uniform(purify.next_rng_key(), h.shape)",
    "bernoulli": "h = jnp.where(jax.random.bernoulli(purify.next_rng_key(), 0.7, h.shape), h, 0.)",
}
_OP = {
    "tanh": "h = jnp.tanh(h)",
    "sin": "h = jnp.sin(h) + 0.5 * h",
    "lcg": "z = z * 1664525 + 1013904223",
    "mix": "h = h + (z % 7).astype(jnp.float32)",
}


def to_source(program: Program, name: str = "model") -> str:
  """Readable Python for ``program``: ``def model(x, n): ... return h, z``."""
  d = program.d
  lines = [f"def {name}(x, n):", "  h, z = x, n"]
  fn_ids = iter(range(10 ** 6))

  def emit_block(block, ind):
    for s in block.stmts:
      emit(s, ind)

  def body_def(fname, block, ind, args="h, z", pre=(), ret="h, z"):
    lines.append(f"{ind}def {fname}({args}):")
    for p in pre:
      lines.append(f"{ind}  {p}")
    emit_block(block, ind + "  ")
    lines.append(f"{ind}  return {ret}")

  def emit(s, ind):
    L = lines.append
    if isinstance(s, Param):
      if s.kind == "mul":
        L(f'{ind}h = h * purify.param("{s.name}", ({d},), init=jax.nn.initializers.normal(0.5))')
      elif s.kind == "matmul":
        L(f'{ind}h = jnp.tanh(h @ purify.param("{s.name}", ({d}, {d})))')
      else:
        L(f'{ind}h = jnp.tanh(purify.nn.Linear({d}, name="{s.name}")(h))')
    elif isinstance(s, Draw):
      L(ind + _DRAW[s.dist])
    elif isinstance(s, Counter):
      L(f'{ind}c = purify.get_state("{s.name}", (), jnp.uint32, init=jnp.zeros)')
      L(f'{ind}purify.set_state("{s.name}", c + 1)')
      L(f"{ind}z = z + c")
    elif isinstance(s, Accum):
      L(f'{ind}a = purify.get_state("{s.name}", ({d},), init=jnp.zeros)')
      val = f"jax.lax.pmean(h, {tuple(s.axes)!r})" if s.axes else "h"
      L(f'{ind}purify.set_state("{s.name}", a + {val})')
      L(f"{ind}h = h + 0.1 * jnp.tanh(a)")
    elif isinstance(s, Op):
      L(ind + _OP[s.op])
    elif isinstance(s, Vmap):
      f = f"f{next(fn_ids)}"
      body_def(f, s.body, ind)
      kw = [f'axis_name="{s.axis}"'] if s.named else []
      if s.flavor == "jax":
        vm = f"jax.vmap({', '.join([f] + kw)})"
      else:
        kw += {"purify": [], "shared": ["split_rng=False"], "stack": ["param_axes=0"]}[s.flavor]
        vm = f"purify.vmap({', '.join([f] + kw)})"
      L(f"{ind}hs, zs = {vm}(h * jnp.arange(1., {s.size + 1}.)[:, None], "
        f"z + jnp.arange({s.size}, dtype=jnp.uint32))")
      L(f"{ind}h, z = hs.mean(0), zs.sum(0)")
    elif isinstance(s, Scan):
      f = f"f{next(fn_ids)}"
      body_def(f, s.body, ind, args="carry, x_t", pre=("h, z = carry", "h = h + x_t"),
               ret="(h, z), h.sum()")
      kw = []
      if s.reverse:
        kw.append("reverse=True")
      if s.unroll != 1:
        kw.append(f"unroll={s.unroll}")
      if s.flavor == "stack":
        kw.append("param_axes=0")
      if s.flavor == "shared":
        kw.append("split_rng=False")
      fn = "jax.lax.scan" if s.flavor == "jax" else "purify.scan"
      L(f"{ind}(h, z), ys = {fn}({', '.join([f, '(h, z)', f'0.1 * jnp.arange({s.length}.)'] + kw)})")
      L(f"{ind}h = h + jnp.tanh(ys) @ jnp.arange(1., {s.length + 1}.)")
    elif isinstance(s, Fori):
      f = f"f{next(fn_ids)}"
      body_def(f, s.body, ind, args="i, carry", pre=("h, z = carry", "h = h + 0.1 * i"))
      L(f"{ind}h, z = jax.lax.fori_loop({s.lower}, {s.lower + s.length}, {f}, (h, z))")
    elif isinstance(s, While):
      f = f"f{next(fn_ids)}"
      body_def(f, s.body, ind, args="s", pre=("i, h, z = s", "h = h + 0.1 * i"), ret="i + 1, h, z")
      L(f"{ind}_, h, z = jax.lax.while_loop(lambda s: s[0] < {s.length}, {f}, (0, h, z))")
    elif isinstance(s, Cond):
      fs = []
      for b in s.branches:
        f = f"f{next(fn_ids)}"
        body_def(f, b, ind)
        fs.append(f)
      if len(fs) == 2:
        L(f"{ind}h, z = jax.lax.cond(z % 2 == 0, {fs[0]}, {fs[1]}, h, z)")
      else:
        L(f"{ind}h, z = jax.lax.switch(z % {len(fs)}, [{', '.join(fs)}], h, z)")
    elif isinstance(s, Wrap):
      if s.kind == "scope":
        L(f'{ind}with purify.name_scope("{s.scope}"):')
        if s.body.stmts:
          emit_block(s.body, ind + "  ")
        else:
          L(f"{ind}  pass")
        return
      f = f"f{next(fn_ids)}"
      body_def(f, s.body, ind)
      if s.kind == "checkpoint":
        L(f"{ind}h, z = jax.checkpoint({f})(h, z)")
      elif s.kind == "custom_jvp":     # forward only: the rule is never called
        L(f"{ind}{f} = jax.custom_jvp({f})")
        L(f"{ind}{f}.defjvp(lambda primals, tangents: ({f}(*primals), tangents))")
        L(f"{ind}h, z = {f}(h, z)")
      elif s.kind == "jit":
        L(f"{ind}h, z = jax.jit({f})(h, z)")
      elif s.kind == "grad":
        L(f"{ind}def {f}_loss(h, z):")
        L(f"{ind}  h, z = {f}(h, z)")
        L(f"{ind}  return jnp.sin(h).sum(), z")
        L(f"{ind}g, z = jax.grad({f}_loss, has_aux=True)(h, z)")
        L(f"{ind}h = h + g")
      elif s.kind == "linearize":
        L(f"{ind}def {f}_of_h(h):")
        L(f"{ind}  return {f}(h, z)")
        L(f"{ind}h_out, {f}_jvp, z = jax.linearize({f}_of_h, h, has_aux=True)")
        L(f"{ind}h = h_out + {f}_jvp(jnp.ones_like(h))")
      elif s.kind == "eval_shape":
        L(f"{ind}out = jax.eval_shape({f}, h, z)")
        L(f"{ind}h = h + jnp.zeros(out[0].shape)")
      else:
        raise ValueError(s.kind)
    else:
      raise TypeError(s)

  emit_block(program.body, "  ")
  lines.append("  return h, z")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- strategies
@dataclasses.dataclass(frozen=True)
class Ctx:
  """Where a statement is generated (decides which statements are valid there)."""
  vmaps: tuple = ()           # one bool per enclosing vmap: is it named?
  in_grad: bool = False
  cond_under_vmap: bool = False
  in_eval_shape: bool = False
  loop_in_grad: bool = False  # inside a loop that is inside jax.grad
  in_custom: bool = False     # inside a custom_jvp function
  in_linearize: bool = False  # inside jax.linearize

  @property
  def all_named(self):
    return all(self.vmaps)


ALL_NODE_KINDS = ("vmap", "scan", "fori", "while", "cond", "switch", "checkpoint", "jit",
                  "grad", "linearize", "eval_shape", "scope", "custom_jvp")

# Excluded constructs (each with the reason; see docs/testing.md):
#  * state inside cond/switch under vmap: with a per-example predicate purify refuses
#    it (PerExampleStateError, an invalid program; the grammar cannot tell which
#    predicates will be per-example);
#  * while_loop under jax.grad: JAX cannot reverse-differentiate while_loop;
#  * state inside custom_jvp: refused by design (PurifyError; an invalid program);
#  * custom_jvp under jax.grad or jax.linearize (the rule printed is a pass-through,
#    not a derivative);
#  * pmean-reduced state under jax.grad: the transpose of pmean is JAX's business, not
#    loop semantics; under jax.linearize: the reference interpreter checks that such
#    a write is the same for every example on concrete values, which linearize
#    traces;
#  * state inside eval_shape under vmap.


@dataclasses.dataclass
class _Budget:
  """How many more leaves, and leaves that compile RNG code (parameters and draws:
  XLA compiles of threefry dominate the cost of a program), may be generated."""
  leaves: int
  rng: int


def _leaf(draw, ctx: Ctx, budget: _Budget):
  options = ["op", "draw", "param_mul", "counter", "accum", "param_matmul", "linear"]
  state_ok = not ctx.cond_under_vmap and not (ctx.in_eval_shape and ctx.vmaps) and \
      not ctx.in_custom
  accum_ok = state_ok and (not ctx.vmaps or (ctx.all_named and not ctx.in_grad
                                               and not ctx.in_linearize))
  if not state_ok:
    options.remove("counter")
  if not accum_ok:
    options.remove("accum")
  if budget.rng <= 0:
    options = [o for o in options if o not in ("draw", "param_mul", "param_matmul", "linear")]
  budget.leaves -= 1
  k = draw(st.sampled_from(options))
  if k in ("draw", "param_mul", "param_matmul", "linear"):
    budget.rng -= 2 if k == "linear" else 1
  if k == "param_mul":
    return Param("mul")
  if k == "param_matmul":
    return Param("matmul")
  if k == "linear":
    return Param("linear")
  if k == "op":
    return Op(draw(st.sampled_from(["tanh", "lcg", "mix", "sin"])))
  if k == "draw":
    return Draw(draw(st.sampled_from(["bits", "normal", "bernoulli", "uniform"])))
  if k == "counter":
    return Counter()
  return Accum(axes=("*",) if ctx.vmaps else ())


def _block(draw, ctx, depth, budget, node_kinds):
  n = draw(st.integers(1, 3))
  stmts = []
  for _ in range(n):
    if budget.leaves <= 0 and stmts:
      break
    if depth > 0 and node_kinds and budget.leaves > 0 and draw(st.integers(0, 2)) > 0:
      stmts.append(_node(draw, ctx, depth - 1, budget, node_kinds))
    else:
      stmts.append(_leaf(draw, ctx, budget))
  return Block(tuple(stmts))


def _node(draw, ctx, depth, budget, node_kinds):
  allowed = [k for k in node_kinds if not (k in ("while", "custom_jvp") and ctx.in_grad)
             and not (k == "custom_jvp" and ctx.in_linearize)]
  k = draw(st.sampled_from(allowed))
  sub = lambda c: _block(draw, c, depth, budget, node_kinds)  # noqa: E731
  if k in ("scan", "fori", "while") and ctx.in_grad:
    ctx = dataclasses.replace(ctx, loop_in_grad=True)
  if k == "vmap":
    size = draw(st.integers(1, 3))
    flavor = draw(st.sampled_from(["jax", "purify", "shared", "stack"]))
    named = draw(st.booleans())
    return Vmap(size, named, flavor, sub(dataclasses.replace(ctx, vmaps=ctx.vmaps + (named,))))
  if k == "scan":
    length = draw(st.integers(1, 3))
    return Scan(length, draw(st.booleans()), draw(st.sampled_from([1, 2])),
                draw(st.sampled_from(["jax", "stack", "shared"])), sub(ctx))
  if k == "fori":
    return Fori(draw(st.integers(0, 1)), draw(st.integers(1, 3)), sub(ctx))
  if k == "while":
    return While(draw(st.integers(1, 3)), sub(ctx))
  if k in ("cond", "switch"):
    n = 2 if k == "cond" else draw(st.integers(1, 3))
    c = dataclasses.replace(ctx, cond_under_vmap=ctx.cond_under_vmap or bool(ctx.vmaps))
    return Cond(tuple(sub(c) for _ in range(n)))
  if k == "grad":
    return Wrap("grad", sub(dataclasses.replace(ctx, in_grad=True)))
  if k == "linearize":
    return Wrap("linearize", sub(dataclasses.replace(ctx, in_linearize=True)))
  if k == "eval_shape":
    return Wrap("eval_shape", sub(dataclasses.replace(ctx, in_eval_shape=True)))
  if k == "custom_jvp":
    return Wrap("custom_jvp", sub(dataclasses.replace(ctx, in_custom=True)))
  return Wrap(k, sub(ctx))


@st.composite
def programs(draw, max_depth: int = 4, node_kinds=ALL_NODE_KINDS, d: Optional[int] = None,
             max_leaves: int = 8, max_rng: int = 4):
  """Valid programs (loop semantics defines their result), finalized.

  ``max_depth`` bounds the nesting of transforms; ``node_kinds`` restricts the
  transforms used (names from ``ALL_NODE_KINDS``); ``max_leaves`` bounds the leaf
  statements and ``max_rng`` the parameters and draws among them (what compiles
  slowly). Example::

      @given(programs(max_depth=2, node_kinds=("vmap", "scan")))
      def test_something(program): ...
  """
  d = d if d is not None else draw(st.integers(2, 3))
  depth = draw(st.integers(0, max_depth))
  body = _block(draw, Ctx(), depth, _Budget(max_leaves, max_rng), tuple(node_kinds))
  return finalize(Program(d, body))


# ----------------------------------------------------------------------------- invalid programs
@dataclasses.dataclass(frozen=True)
class Bad:
  """A statement that makes a program invalid on purpose: "per_example_state" (an
  unreduced state write inside vmap), "partial_pmean" (reduced over only the inner
  of two named axes), "param_shape" (a parameter redeclared with another shape),
  "state_dtype" (a state redeclared with another dtype), "param_axes" (purify.vmap
  with param_axes=1), "custom_rule_state" (set_state in a custom_jvp function)."""
  kind: str
  name: str = ""

  @property
  def error(self) -> str:
    """The purify error class the program must raise."""
    return {"per_example_state": "PerExampleStateError", "partial_pmean": "PerExampleStateError",
            "param_shape": "ParamConflictError", "state_dtype": "ParamConflictError",
            "param_axes": "PurifyError", "custom_rule_state": "PurifyError"}[self.kind]


def bad_source(bad: Bad, d: int, ind: str) -> list:
  k = bad.kind
  if k == "per_example_state":
    return [f'{ind}def bad(h):',
            f'{ind}  a = purify.get_state("bad", ({d},), init=jnp.zeros)',
            f'{ind}  purify.set_state("bad", a + h)',
            f'{ind}  return h',
            f'{ind}h = jax.vmap(bad)(h[None] * jnp.ones((2, 1))).mean(0)']
  if k == "partial_pmean":
    return [f'{ind}def bad(h):',
            f'{ind}  purify.set_state("bad", jax.lax.pmean(h, "inner"))',
            f'{ind}  return h',
            f'{ind}h = jax.vmap(jax.vmap(bad, axis_name="inner"), axis_name="outer")('
            f'h[None, None] * jnp.ones((2, 2, 1))).mean((0, 1))']
  if k == "param_shape":
    return [f'{ind}h = h * purify.param("bad", ({d},), init=jnp.ones)',
            f'{ind}h = h + purify.param("bad", ({d}, 1), init=jnp.ones).sum()']
  if k == "state_dtype":
    return [f'{ind}s = purify.get_state("bad", (), jnp.float32, init=jnp.zeros)',
            f'{ind}z = z + purify.get_state("bad", (), jnp.uint32, init=jnp.zeros)']
  if k == "param_axes":
    return [f'{ind}h = purify.vmap(lambda h: h, param_axes=1)(h[None]).mean(0)']
  if k == "custom_rule_state":
    return [f'{ind}@jax.custom_jvp',
            f'{ind}def bad(h):',
            f'{ind}  purify.set_state("bad", h)',
            f'{ind}  return h',
            f'{ind}bad.defjvp(lambda p, t: (bad(*p), t[0]))',
            f'{ind}h = bad(h)']
  raise ValueError(k)


BAD_KINDS = ("per_example_state", "partial_pmean", "param_shape", "state_dtype", "param_axes",
             "custom_rule_state")


@st.composite
def invalid_programs(draw, max_depth: int = 3):
  """(source, Bad, d): a valid program with one invalid statement planted at a random
  position (possibly deep inside loops, conds, jit, checkpoint...)."""
  program = draw(programs(max_depth=max_depth,
                          node_kinds=("scan", "fori", "while", "cond", "checkpoint", "jit", "scope")))
  bad = Bad(draw(st.sampled_from(BAD_KINDS)))
  src = to_source(program).rstrip("\n").split("\n")
  # plant before a "return" of any body (the top level's or a nested def's)
  spots = [i for i, line in enumerate(src) if line.strip().startswith("return")]
  i = draw(st.sampled_from(spots))
  ind = src[i][:len(src[i]) - len(src[i].lstrip())]
  new = src[:i] + bad_source(bad, program.d, ind) + src[i:]
  return "\n".join(new) + "\n", bad, program.d
