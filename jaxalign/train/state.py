"""The train state: step, parameters, optimizer state and RNG, with its shardings.

A `TrainState` is one pytree, so it is jitted, donated, checkpointed and restored as a whole.
Three views of it are built here from the model config, the optimiser and the mesh:

    train_state_shardings   NamedSharding per leaf: the jit in/out shardings and restore targets
    abstract_train_state    ShapeDtypeStruct per leaf (with its sharding): orbax restore targets
    init_train_state        the concrete state, created directly in its shards

RNG. ``rng`` holds the raw key *data* of a default-implementation JAX key (``uint32[2]`` with
threefry), not a typed key array: plain uint32 arrays are saved and restored by orbax's
StandardSave like any other leaf, while typed keys need special handling. Wrap it with
``jax.random.wrap_key_data`` to use it. It is the run's base key and never changes: the train step
folds in ``step`` (``fold_in(base, step)``), so every random draw of a step (later: CoH's FCM
masks) is a pure function of (seed, step) and a resumed run draws exactly what an uninterrupted
one would. It is derived from the seed on a stream separate from parameter initialisation
(``fold_in(key(seed), RNG_STREAM)``), so the masks are not correlated with the initial weights.

LoRA. With `lora` (a ``jaxalign.lora.LoraConfig``) the trained parameters are the adapters alone:
``params`` is the adapter tree and the optimizer state exists only for it; the frozen base is held
by the train step, not by the state, and is never checkpointed.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign import lora as lora_lib
from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.models import ModelConfig
from jaxalign.train.optim import opt_state_shardings

# fold_in constant separating the training RNG stream from init (which uses key(seed) itself).
RNG_STREAM = 1


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes. ``step`` counts updates already applied."""

    step: jax.Array  # int32 scalar
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data of the run's base key (see module docstring)


def base_rng(seed: int) -> jax.Array:
    """The run's base key data for `seed` (uint32; shape set by the default PRNG impl)."""
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), RNG_STREAM))


def step_rng(state: TrainState) -> jax.Array:
    """The typed key of the step about to run: a pure function of (seed, step)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def trained_shapes(model_cfg: ModelConfig, lora: lora_lib.LoraConfig | None = None) -> Any:
    """ShapeDtypeStructs of what the optimiser trains: the parameters, or the LoRA adapters."""
    return models.param_shapes(model_cfg) if lora is None else lora_lib.adapter_shapes(model_cfg, lora)


def trained_shardings(model_cfg: ModelConfig, mesh: Mesh, lora: lora_lib.LoraConfig | None = None) -> Any:
    if lora is None:
        return models.param_shardings(model_cfg, mesh)
    return lora_lib.adapter_shardings(model_cfg, lora, mesh)


def train_state_shardings(
    model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
    lora: lora_lib.LoraConfig | None = None,
) -> TrainState:
    """A TrainState of NamedShardings: params by the logical rules, Adam's moments like the params,
    step, RNG and optimizer counters replicated. With `lora`, params are the adapters."""
    param_sh = trained_shardings(model_cfg, mesh, lora)
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(
        step=replicated,
        params=param_sh,
        opt_state=opt_state_shardings(tx, trained_shapes(model_cfg, lora), param_sh, mesh),
        rng=replicated,
    )


def abstract_train_state(
    model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
    lora: lora_lib.LoraConfig | None = None,
) -> TrainState:
    """A TrainState of ShapeDtypeStructs carrying their target shardings (nothing is computed)."""
    params = trained_shapes(model_cfg, lora)
    shapes = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=jax.eval_shape(tx.init, params),
        rng=jax.eval_shape(base_rng, 0),
    )
    return jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes, train_state_shardings(model_cfg, tx, mesh, lora),
    )


def init_train_state(
    model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, seed: int, params: Any = None,
    lora: lora_lib.LoraConfig | None = None,
) -> TrainState:
    """A fresh state at step 0, every leaf created directly in its shards.

    Parameters are `params` (e.g. a pretrained model's, on this mesh; they are donated) or those of
    ``jaxalign.models.init_params(model_cfg, mesh, seed)``; with `lora`, fresh adapters
    (``jaxalign.lora.init_adapters``) unless `params` gives them.
    """
    shardings = train_state_shardings(model_cfg, tx, mesh, lora)
    if params is None:
        params = (models.init_params(model_cfg, mesh, seed) if lora is None
                  else lora_lib.init_adapters(model_cfg, lora, mesh, seed))

    def rest(params: Any) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=base_rng(seed)
        )

    # params are passed through (and donated) so the whole state comes out of one jit with the
    # shardings the train step expects.
    init = jax.jit(rest, in_shardings=(shardings.params,), out_shardings=shardings, donate_argnums=0)
    with mesh_lib.use(mesh):
        return init(params)
