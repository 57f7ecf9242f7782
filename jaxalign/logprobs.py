"""Log-probability operations on logits and packed rows: per-token NLL and log-probabilities, sums per
packed segment, and a division that is 0 where nothing was counted. They are the shared arithmetic of
every loss, the train step and scoring, so they live at the bottom, beside the model, and import only
jax. Everything is float32 whatever the compute dtype: log-softmax of low-precision logits loses the
small probabilities losses are made of.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_nll(logits: Array, targets: Array) -> Array:
    """Per-token negative log-likelihood [b, L] float32 of `targets` [b, L] under `logits` [b, L, V].

    The target logit is picked with a one-hot contraction rather than a gather: with the vocabulary
    sharded over tp, that is an elementwise product and a sum XLA reduces shard by shard, where a
    gather along a sharded axis would collect the whole vocabulary on every device.
    """
    logits = logits.astype(jnp.float32)
    # Shifted by the row maximum (as log_softmax does) before the subtraction: a confident correct
    # prediction then gives log(1 + small) - 0, not (max + small) - max, which would lose the small
    # nll to the rounding of max.
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    target = jnp.sum(shifted * jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32), axis=-1)
    return jnp.log(jnp.sum(jnp.exp(shifted), axis=-1)) - target


def token_logps(logits: Array, targets: Array) -> Array:
    """Per-token log-probability [b, L] float32 of `targets` under `logits`: ``-token_nll``."""
    return -token_nll(logits, targets)


def segment_sums(values: Array, segment_ids: Array) -> Array:
    """Sums of `values` [b, L] per (row, segment id) -> [b, L + 1]; column s sums segment s.

    Column 0 sums the padding (id 0); ids run 0 .. at most L, so L + 1 columns hold them all.
    """
    length = values.shape[-1]
    return jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=length + 1))(values, segment_ids)


def safe_div(numerator: Array, denominator: Array) -> Array:
    """numerator / denominator, and 0 (with zero gradient) when the denominator is 0."""
    return jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0), 0.0)
