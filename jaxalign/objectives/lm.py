"""Weighted next-token cross-entropy: language modelling, SFT and Chain of Hindsight's loss.

Every target token ``targets[b, t]`` has a loss weight ``weights[b, t] >= 0`` (0 on prompts,
template text and padding; see `jaxalign.data.packing`). Three normalisations:

    "token"     sum(w * nll) / sum(w) over the whole batch: every weighted token counts the same.
    "sequence"  per sequence (a packed segment: equal (row, segment id), id 0 being padding) the
                weighted mean sum(w * nll) / sum(w), then the mean over sequences with
                sum(w) > 0: short and long responses count the same.
    "row"       per packed row the weighted mean sum(w * nll) / sum(w), then the mean over rows
                with sum(w) > 0: the reference Chain of Hindsight code's convention (its loss is a
                weighted mean over each row's tokens, averaged over the batch). It equals
                "sequence" when every row holds one sequence, and "token" on a single row.
Sequences or rows without any weighted token are left out rather than counted as 0.

Everything is float32 whatever the compute dtype: log-softmax of low-precision logits loses the
small probabilities the loss is made of.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxalign.logprobs import safe_div, segment_sums, token_nll

Array = jax.Array
NORMALIZATIONS = ("token", "sequence", "row")
# The objective contract (jaxalign.objectives): (logits, batch) -> (loss, metrics).
LossFn = Callable[[Array, dict[str, Array]], tuple[Array, dict[str, Array]]]


def loss(
    logits: Array, batch: dict[str, Array], normalization: str = "token"
) -> tuple[Array, dict[str, Array]]:
    """The weighted cross-entropy of `batch` (see the module docstring) and its metrics.

    Metrics: ``loss_weight`` (the normaliser: sum of weights, or number of weighted sequences or
    rows), ``accuracy`` (argmax == target, normalised like the loss) and ``num_sequences`` (weighted
    sequences, or rows; "sequence" and "row" normalisation only). Zero-weight tokens affect neither
    loss nor gradients.
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
        metrics = {"loss_weight": total, "accuracy": safe_div(jnp.sum(weighted_correct), total)}
        return safe_div(jnp.sum(weighted_nll), total), metrics

    segment_ids = batch.get("segment_ids")
    if segment_ids is None or normalization == "row":  # the whole row as one sequence
        segment_ids = jnp.ones(targets.shape, jnp.int32)
    length = targets.shape[-1]

    seq_weight = segment_sums(weights, segment_ids)
    valid = (seq_weight > 0) & (jnp.arange(length + 1) > 0)
    count = jnp.sum(valid.astype(jnp.float32))

    def sequence_mean(values: Array) -> Array:
        means = jnp.where(valid, segment_sums(values, segment_ids) / jnp.where(valid, seq_weight, 1.0), 0.0)
        return safe_div(jnp.sum(means), count)

    metrics = {"loss_weight": count, "accuracy": sequence_mean(weighted_correct), "num_sequences": count}
    return sequence_mean(weighted_nll), metrics


def make_loss_fn(normalization: str = "token") -> LossFn:
    """`loss` with its normalisation bound, in the ``loss_fn(logits, batch)`` form steps take."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"lm.loss: normalization={normalization!r}; choose one of {list(NORMALIZATIONS)}")
    return lambda logits, batch: loss(logits, batch, normalization)
