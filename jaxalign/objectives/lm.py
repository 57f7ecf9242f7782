"""Weighted next-token cross-entropy: language modelling, SFT and Chain of Hindsight's loss.

Every target token ``targets[b, t]`` has a loss weight ``weights[b, t] >= 0`` (0 on prompts,
template text and padding; see `jaxalign.data.packing`). Two normalisations:

    "token"     sum(w * nll) / sum(w) over the whole batch: every weighted token counts the same.
    "sequence"  per sequence (a packed segment: equal (row, segment id), id 0 being padding) the
                weighted mean sum(w * nll) / sum(w), then the mean over sequences with
                sum(w) > 0. This is the official Chain of Hindsight code's convention: short and
                long responses count the same. Sequences without any weighted token are left out
                rather than counted as 0.

Everything is float32 whatever the compute dtype: log-softmax of low-precision logits loses the
small probabilities the loss is made of.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
NORMALIZATIONS = ("token", "sequence")
# The objective contract (jaxalign.objectives): (logits, batch) -> (loss, metrics).
LossFn = Callable[[Array, dict[str, Array]], tuple[Array, dict[str, Array]]]


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


def loss(
    logits: Array, batch: dict[str, Array], normalization: str = "token"
) -> tuple[Array, dict[str, Array]]:
    """The weighted cross-entropy of `batch` (see the module docstring) and its metrics.

    Metrics: ``loss_weight`` (the normaliser: sum of weights, or number of weighted sequences),
    ``accuracy`` (argmax == target, normalised like the loss) and ``num_sequences`` (weighted
    sequences; "sequence" normalisation only). Zero-weight tokens affect neither loss nor gradients.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"lm.loss: normalization={normalization!r}; choose one of {list(NORMALIZATIONS)}")
    targets = batch["targets"]
    weights = batch["weights"].astype(jnp.float32)
    nll = token_nll(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    weighted_nll = weights * nll
    weighted_correct = weights * correct

    if normalization == "token":
        total = jnp.sum(weights)
        metrics = {"loss_weight": total, "accuracy": _safe_div(jnp.sum(weighted_correct), total)}
        return _safe_div(jnp.sum(weighted_nll), total), metrics

    segment_ids = batch.get("segment_ids")
    if segment_ids is None:  # unpacked rows: each row is one sequence
        segment_ids = jnp.ones(targets.shape, jnp.int32)
    length = targets.shape[-1]

    seq_weight = segment_sums(weights, segment_ids)
    valid = (seq_weight > 0) & (jnp.arange(length + 1) > 0)
    count = jnp.sum(valid.astype(jnp.float32))

    def sequence_mean(values: Array) -> Array:
        means = jnp.where(valid, segment_sums(values, segment_ids) / jnp.where(valid, seq_weight, 1.0), 0.0)
        return _safe_div(jnp.sum(means), count)

    metrics = {"loss_weight": count, "accuracy": sequence_mean(weighted_correct), "num_sequences": count}
    return sequence_mean(weighted_nll), metrics


def _safe_div(numerator: Array, denominator: Array) -> Array:
    """numerator / denominator, and 0 (with zero gradient) when the denominator is 0."""
    return jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0), 0.0)


def make_loss_fn(normalization: str = "token") -> LossFn:
    """`loss` with its normalisation bound, in the ``loss_fn(logits, batch)`` form steps take."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"lm.loss: normalization={normalization!r}; choose one of {list(NORMALIZATIONS)}")
    return lambda logits, batch: loss(logits, batch, normalization)
