"""A reward model's shape and starting parameters: `jaxalign.models.Transformer` with ``head="score"``,
the unembedding replaced by a [hidden, num_labels] projection (as Hugging Face's
LlamaForSequenceClassification), its backbone taken from a language model. Its losses are
`jaxalign.objectives.reward`'s; scoring texts with it is `jaxalign.forward.score_texts`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.models import ModelConfig, Transformer

Array = jax.Array


def score_config(lm_cfg: ModelConfig, num_labels: int = 1) -> ModelConfig:
    """The reward-model config of a language model's: same backbone, a score head, nothing tied."""
    return lm_cfg.replace(head="score", num_labels=num_labels, tie_word_embeddings=False)


def score_params_from_lm(lm_params: Any, cfg_score: ModelConfig, mesh: Mesh, seed: int = 0) -> Any:
    """Parameters of the score model `cfg_score`: the backbone (embedding, layers, final norm) taken
    from a language model's parameters `lm_params`, the score head initialised as
    ``models.init_params(cfg_score, mesh, seed)`` would (the LM's lm_head, if any, is dropped).

    Backbone arrays are placed in `cfg_score`'s shardings and dtype, which for the same mesh is
    usually no copy: the result then shares them with `lm_params`. A train step donates its state,
    so pass ``jax.tree.map(jnp.copy, ...)`` of one of the two if both are used afterwards.
    """
    if cfg_score.head != "score":
        raise ValueError(f"score_params_from_lm: cfg_score.head={cfg_score.head!r}; it needs head='score' "
                         "(see score_config)")
    shapes = models.param_shapes(cfg_score)
    shardings = models.param_shardings(cfg_score, mesh)
    backbone = {}
    for name in shapes:
        if name == "score":
            continue
        if name not in lm_params:
            raise ValueError(f"score_params_from_lm: the LM parameters lack {name!r} (they have "
                             f"{sorted(lm_params)}); do they have scan_layers like cfg_score?")
        backbone[name] = _copy_subtree(name, lm_params[name], shapes[name], shardings[name])

    def init_head(rng: Array) -> Any:
        # The same computation as init_params, so the same head; XLA drops the unused backbone init.
        tokens = jnp.zeros((1, 1), jnp.int32)
        return nn.unbox(Transformer(cfg_score).init(rng, tokens)["params"])["score"]

    with mesh_lib.use(mesh):
        head = jax.jit(init_head, out_shardings=shardings["score"])(jax.random.key(seed))
    return {**backbone, "score": head}


def _copy_subtree(name: str, tree: Any, shapes: Any, shardings: Any) -> Any:
    got, want = jax.tree_util.tree_structure(tree), jax.tree_util.tree_structure(shapes)
    if got != want:
        raise ValueError(f"score_params_from_lm: LM parameters {name!r} have structure {got}, the score "
                         f"model expects {want}")

    def one(path: Any, x: Any, shape: jax.ShapeDtypeStruct, sharding: NamedSharding) -> Array:
        if tuple(np.shape(x)) != tuple(shape.shape):
            raise ValueError(f"score_params_from_lm: LM parameter {name}{jax.tree_util.keystr(path)} has "
                             f"shape {tuple(np.shape(x))}, the score model expects {tuple(shape.shape)}")
        return jax.device_put(jnp.asarray(x, shape.dtype) if x.dtype != shape.dtype else x, sharding)

    return jax.tree_util.tree_map_with_path(one, tree, shapes, shardings)
