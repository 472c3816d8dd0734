"""purify: pure init/apply from JAX model code with implicit effects.

Model code declares parameters, draws keys and reads/writes state as it goes;
purify traces it ONCE into a jaxpr in which those effects are primitives, a pass
pipeline hoists them into explicit inputs and outputs, and the pure programs that
remain run like any JAX program. Plain JAX transforms inside the model just work,
meaning the Python loop they stand for:

    import jax, jax.numpy as jnp, purify

    @purify.transform
    def model(x):                                   # x: (batch, 3)
      mlp = purify.nn.MLP([8, 1])
      return jax.vmap(mlp)(x)                       # params shared, as a loop shares them

    params = model.init(jax.random.key(0), jnp.ones((4, 3)))
    y = model.apply(params, None, jnp.ones((4, 3)))

Stages (one module each): effects -> trace -> passes -> lowering -> transform.
"""
from purify.effects import (param, next_rng_key, next_rng_keys, maybe_next_rng_key, get_state,
                            set_state, default_init, keyed_init)
from purify.errors import PurifyError
from purify.module import Module, name_scope, to_module, intercept_methods, MethodContext
from purify.transform import (transform, transform_with_state, without_apply_rng, without_state,
                              with_empty_state, multi_transform, multi_transform_with_state,
                              Transformed, TransformedWithState, MultiTransformed,
                              MultiTransformedWithState)
from purify.effects import (custom_creator, custom_getter, ParamContext, with_params, get_params,
                            params_used)
from purify.drop_in import (vmap, scan, map, fori_loop, while_loop, cond, switch, checkpoint, remat,
                            jit, grad, value_and_grad, jvp, vjp, eval_shape, lift, layer_stack,
                            ensemble, lift_with_state, LiftWithStateUpdater)
from purify.custom_derivatives import custom_jvp, custom_vjp
from purify.inspect import make_jaxpr, explain
from purify.keys import PRNGSequence
from purify import ad_state  # noqa: F401  (installs the autodiff rule for state)

from purify import data_structures  # noqa: E402
from purify import mixed_precision  # noqa: E402
from purify import nn  # noqa: E402  (nn uses the API above)

__version__ = "0.1.0"

__all__ = [
    "param", "next_rng_key", "next_rng_keys", "maybe_next_rng_key", "get_state", "set_state", "default_init", "keyed_init", "PurifyError",
    "Module", "name_scope", "to_module", "intercept_methods", "MethodContext", "transform", "transform_with_state", "without_apply_rng", "without_state",
    "with_empty_state", "multi_transform", "multi_transform_with_state", "Transformed",
    "TransformedWithState", "MultiTransformed", "MultiTransformedWithState",
    "vmap", "scan", "map", "fori_loop", "while_loop", "cond", "switch", "checkpoint", "remat",
    "jit", "grad", "value_and_grad", "jvp", "vjp", "eval_shape", "lift", "layer_stack",
    "ensemble", "lift_with_state", "LiftWithStateUpdater", "custom_creator", "custom_getter", "ParamContext", "with_params", "get_params", "params_used", "custom_jvp", "custom_vjp", "make_jaxpr", "explain", "PRNGSequence", "nn", "data_structures", "mixed_precision",
]
