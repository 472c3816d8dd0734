"""purify's errors. Each says what happened, where, and what to do instead.

Long messages are module-level templates so tests can check their key phrases and
docs can quote them.
"""
from __future__ import annotations


class PurifyError(Exception):
  """Base class of every error purify raises on purpose."""


class ModuleNameError(PurifyError, ValueError):
  pass


class EffectOutsideTransformError(PurifyError):
  pass


class ParamConflictError(PurifyError):
  pass


class ParamsMismatchError(PurifyError, ValueError):
  pass


class MissingRngError(PurifyError, ValueError):
  pass


class PerExampleStateError(PurifyError):
  pass


class NonEmptyStateError(PurifyError, ValueError):
  pass


NON_EMPTY_STATE = """\
purify.without_state: the model has state ({names}), which {where} would drop.
Use purify.transform_with_state(f) (init -> (params, state), apply(params, state,
rng, ...) -> (out, state)) for a model that calls get_state / set_state."""


class NoRuleError(PurifyError, NotImplementedError):
  pass


class EffectLoweringError(PurifyError):
  pass


class InitializerError(PurifyError):
  pass


class NestedTransformError(PurifyError):
  pass


class CustomRuleEffectError(PurifyError):
  pass


class PipelineError(PurifyError):
  pass


class PerExampleDrawError(PurifyError, ValueError):
  pass


class InvalidKeyError(PurifyError, TypeError):
  pass


EFFECT_OUTSIDE_TRANSFORM = """\
purify.{fn}({what}) was called outside a purify transform.
tl;dr: wrap the function that calls it with purify.transform (or
purify.transform_with_state) and call .init / .apply:

    model = purify.transform(forward)
    params = model.init(jax.random.key(0), x)
    out = model.apply(params, rng, x)

Effects (param, next_rng_key, get_state, set_state) only have a meaning inside a
transform, which turns them into explicit inputs and outputs."""

PARAM_CONFLICT = """\
Parameter {path!r} is declared twice with different {what}:
  first  {first_shape} {first_dtype}  at {first_site}
  second {second_shape} {second_dtype}  at {second_site}
A parameter is created once per full name (module path + name); every later call
with the same name must ask for the same shape and dtype. Rename one of them
(name=... on the module, or another parameter name)."""

PARAMS_MISSING = """\
apply() got params without {path!r} (shape {shape}, dtype {dtype}), which the model
declares at {site}.
Pass the params returned by init for this model and these input shapes."""

PARAMS_EXTRA = """\
apply() got params with an entry {path!r} that the model does not declare.
Known entries: {known}.
Pass the params returned by init for this model (did the model change since init?)."""

PARAMS_SHAPE = """\
apply() got params[{module!r}][{name!r}] with shape {got_shape} and dtype {got_dtype},
but the model declares it as shape {shape}, dtype {dtype} at {site}.
Pass params produced by init with the same input shapes."""

MISSING_RNG = """\
apply() was called with rng=None, but the model draws random keys with
purify.next_rng_key() at:
{sites}
Pass a key: model.apply(params, jax.random.key(1), ...)."""

PER_EXAMPLE_STATE = """\
set_state({path!r}) writes a per-example value under jax.vmap (axis {axis}).
State is one value shared by the whole batch (loop semantics: a loop writing one
variable keeps the last write, which is not what a vmapped model means).
Fix it by reducing over a named vmap axis before writing:
        jax.vmap(f, axis_name="batch") and
        purify.set_state(name, jax.lax.pmean(value, "batch"))
or keep per-example values out of state (return them as outputs instead)."""

INVALID_KEY = """\
{where}: rng must be a PRNG key or None, got {got}.
Pass jax.random.key(seed) (a typed key) or jax.random.PRNGKey(seed) (a raw {raw}), or
None when nothing is initialized or drawn. (For transform_with_state, apply takes
(params, state, rng, *args).)"""

PER_EXAMPLE_DRAW = """\
{jax_error}
A vmap's output with out_axes=None varies over the batch. The model draws keys under
a vmap, and under loop semantics every example of a vmap gets its own key:
{sites}
When the vmap is jax.jacfwd's or jax.hessian's (they vmap over tangent directions,
which needs one value of the function for every direction), take the Jacobian with
jax.jacrev (jax.hessian = jax.jacrev(jax.jacrev(f))): it evaluates the function once,
with one key. Or draw the key outside and close over it:
        k = purify.next_rng_key(); jax.jacfwd(lambda x: f(x, k))(x)
For a vmap of your own, purify.vmap(..., split_rng=False) shares one key across it."""

NO_RULE = """\
purify pass {pass_name!r} has no rule for the higher-order primitive {prim!r}, but a
purify effect ({effects}) occurs inside it.
Move the purify effect outside of {prim!r}, or open an issue asking for a
{pass_name} rule for {prim!r}."""

EFFECT_LOWERING = """\
purify bug: the effect primitive {prim!r} ({params}) reached XLA lowering.
Every purify effect must be removed by the pass pipeline before lowering. Please
report this with the model that triggers it; purify.make_jaxpr(f)(*args) and
purify.passes.explain(...) show the IR after each pass."""

INITIALIZER_TRACER = """\
The initializer of parameter {path!r} closes over a traced value ({tracer}).
Initializers see only (key, shape, dtype): a value computed by the model (from an
input or another parameter) does not exist at init time. Compute it in the model
and apply it to the parameter instead, e.g.  w = purify.param(...) * scale."""

INITIALIZER_SHAPE = """\
The initializer of parameter {path!r} returned shape {got_shape} dtype {got_dtype};
the parameter is declared as shape {shape} dtype {dtype} at {site}.
An initializer is called as init(key, shape, dtype) and must return that shape."""

INITIALIZER_FAILED = """\
The initializer of {what} {path!r} (declared at {site}) raised when purify called
it as {call}:
  {err}
An initializer for a {what} has the signature {sig}."""

NESTED_INIT = """\
{what} of a purify transform was called inside another purify transform.
Its parameters would be created anew on every call and never registered with the
outer transform. tl;dr: wrap it with purify.lift:

    params = purify.lift(inner.init, name="inner")(purify.next_rng_key(), x)
    out = inner.apply(params, None, x)

(inner.apply may be called freely: it is a pure function.)"""

CUSTOM_RULE_EFFECT = """\
{kind} function {fun!r} uses purify effects ({names}) and is being differentiated.
JAX re-runs the custom rule's Python outside purify's trace, so gradients with
respect to those parameters cannot be computed correctly (they would be silently
zero). Pass the parameters into the custom function as explicit arguments:

    w = purify.param("w", ...)
    y = my_custom_fn(w, x)      # instead of calling purify.param inside it"""

STATE_IN_WHILE_COND = """\
purify.set_state({path!r}) is called inside the condition function of a
while_loop. The condition may only read state; move the write into the body."""

RNG_IN_WHILE_COND = """\
purify.next_rng_key() is called inside the condition function of a while_loop
(site {site!r}). Draw the key in the body and carry what you need."""

MODULE_NAME_TAKEN = (
    "Module name {name!r} ({cls}, created at {site}) is already taken in this scope.\n"
    "  An explicit name= (or an explicitly numbered one such as 'linear_1') collides with a module "
    "created earlier in the same method call (or at top level).\n"
    "  Fix: give this module a different name=, or reuse the existing module object."
)

RNG_IN_SHARD_MAP = """\
purify.next_rng_key() inside jax.shard_map ({where}) is not supported yet.
Loop semantics asks for a different key per shard, but the shard_map body was traced
with a key that is the same on every shard (JAX types it as shard-invariant), and
purify will not hand every shard the same key silently.
Fix: draw the key outside the shard_map and give each shard its own, e.g.
        keys = jax.random.split(purify.next_rng_key(), n_shards)   # in_specs P(axis)
and use keys[0] inside the body."""

PER_SHARD_STATE = """\
set_state({path!r}) inside jax.shard_map writes a per-shard value (it varies over mesh
axes {axes}). State is one value for the whole program (loop semantics: a loop over
shards writing one variable keeps only the last write).
Fix it by reducing over the axis before writing:
        purify.set_state(name, jax.lax.pmean(value, {axis!r}))"""

STATE_IN_SHARD_MAP_NO_VMA = """\
purify.set_state inside jax.shard_map(..., check_vma=False) (states: {states}): without
check_vma purify cannot tell a per-shard value from a replicated one.
Fix: use check_vma=True (the default) and reduce per-shard values with
jax.lax.pmean(value, axis_name) before set_state."""

PER_EXAMPLE_BRANCH_STATE = """\
set_state({paths}) inside a {kind} whose predicate differs per example under jax.vmap
(axis {axis}). JAX then runs the branches (or loop iterations) of every example and
selects the results, so the state write would happen for every example whatever its
predicate: per-example state, which one shared state cannot hold.
Fix: make the predicate the same for the whole batch (e.g. reduce it over a named vmap
axis: jax.lax.pmax(pred, "batch")), or compute the per-example values without
set_state and write a batch reduction (jax.lax.pmean(value, "batch")) outside the
branch."""

