"""Models: the LLaMA-family decoder, its configuration and presets, and sharded initialisation."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from jaxalign import mesh as mesh_lib
from jaxalign.models.config import PRESETS, ModelConfig, from_dict, get_preset
from jaxalign.models.llama import CACHE_AXES, Transformer, init_cache

__all__ = [
    "CACHE_AXES", "PRESETS", "ModelConfig", "Transformer", "abstract_params", "cache_shardings",
    "from_dict", "get_preset", "init_cache", "init_params", "param_shapes", "param_shardings",
]


def _boxed_init(cfg: ModelConfig, rng: jax.Array):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return Transformer(cfg).init(rng, tokens)["params"]


def abstract_params(cfg: ModelConfig):
    """The boxed (logically named) parameter tree as ShapeDtypeStructs, without computing it."""
    return jax.eval_shape(lambda rng: _boxed_init(cfg, rng), jax.random.key(0))


def param_shapes(cfg: ModelConfig):
    """The plain parameter tree as ShapeDtypeStructs."""
    return jax.eval_shape(lambda rng: nn.unbox(_boxed_init(cfg, rng)), jax.random.key(0))


def param_shardings(cfg: ModelConfig, mesh: Mesh) -> Any:
    """NamedSharding per parameter, by the logical rules in jaxalign.mesh."""
    return mesh_lib.tree_shardings(abstract_params(cfg), mesh)


def init_params(cfg: ModelConfig, mesh: Mesh, seed: int = 0) -> Any:
    """Random parameters created directly in their shards (never whole on one device)."""
    shardings = param_shardings(cfg, mesh)
    init = jax.jit(lambda rng: nn.unbox(_boxed_init(cfg, rng)), out_shardings=shardings)
    with mesh_lib.use(mesh):
        return init(jax.random.key(seed))


def cache_shardings(cfg: ModelConfig, mesh: Mesh, batch: int, max_len: int) -> dict[str, Any]:
    shapes = jax.eval_shape(lambda: init_cache(cfg, batch, max_len))

    def sharding(name: str, shape: tuple[int, ...]) -> NamedSharding:
        axes = CACHE_AXES[name]
        # A per-layer array of an unrolled model's cache has no "layers" axis.
        return mesh_lib.logical_sharding(axes[len(axes) - len(shape):], shape, mesh)

    return {name: jax.tree.map(lambda s, name=name: sharding(name, s.shape), shapes[name]) for name in shapes}
