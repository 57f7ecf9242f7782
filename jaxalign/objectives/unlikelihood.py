"""SFT + unlikelihood on negative responses (Welleck et al., 2019, arXiv 1908.04319).

A baseline of the Chain of Hindsight paper (Table 4): likelihood on the preferred responses plus
``alpha * -log(1 - p(target))`` on the dispreferred ones' tokens, a term that is bounded below and
stops pushing once a token has become unlikely. Rows carry ``ul_weights`` beside ``weights``; with
all of them 0 the loss is `lm.loss` exactly.

Details: docs/methods.md#unlikelihood-jaxalignobjectivesunlikelihood
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import logprobs
from jaxalign.data import examples
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.objectives import lm
from jaxalign.objectives.objective import Objective

Array = jax.Array
Example = dict[str, np.ndarray]
DEFAULTS: dict[str, Any] = {"normalization": "token", "alpha": 1.0}


def positive_example(
    prompt_ids: Sequence[int] | np.ndarray, response_ids: Sequence[int] | np.ndarray, eos_id: int
) -> Example:
    """prompt + response + EOS, trained up (likelihood) on the response and the EOS."""
    example = examples.sft_example(prompt_ids, response_ids, eos_id)
    return {**example, "ul_weights": np.zeros_like(example["weights"])}


def negative_example(
    prompt_ids: Sequence[int] | np.ndarray,
    response_ids: Sequence[int] | np.ndarray,
    eos_id: int,
    *,
    ul_on_eos: bool = False,
) -> Example:
    """prompt + response + EOS, trained down (unlikelihood) on the response tokens.

    ``weights`` are all 0; ``ul_weights`` are 1 on the response tokens, and on the EOS only with
    `ul_on_eos` (see docs/methods.md).
    """
    example = examples.sft_example(prompt_ids, response_ids, eos_id)
    ul_weights = example["weights"].copy()
    if not ul_on_eos:
        ul_weights[-1] = 0.0
    return {"tokens": example["tokens"], "weights": np.zeros_like(ul_weights), "ul_weights": ul_weights}


def log1m_prob(logits: Array, targets: Array) -> Array:
    """``log(1 - p(target))`` [b, L] float32, stable for every p (see docs/methods.md)."""
    logits = logits.astype(jnp.float32)
    is_target = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.bool_)
    others = jax.nn.logsumexp(jnp.where(is_target, -jnp.inf, logits), axis=-1)
    return others - jax.nn.logsumexp(logits, axis=-1)


def _check_options(alpha: float, normalization: str) -> None:
    if normalization not in lm.NORMALIZATIONS:
        raise ValueError(
            f"unlikelihood.loss: normalization={normalization!r}; choose one of {list(lm.NORMALIZATIONS)}"
        )
    if not alpha >= 0:
        raise ValueError(f"unlikelihood.loss: alpha={alpha!r} must be >= 0")


def loss(
    logits: Array, batch: dict[str, Array], *, alpha: float = 1.0, normalization: str = "token"
) -> tuple[Array, dict[str, Array]]:
    """NLL on ``weights`` + alpha * unlikelihood on ``ul_weights`` (see docs/methods.md).

    Metrics: ``loss_weight``, ``nll`` and ``unlikelihood`` (the loss's two terms), ``num_ul_tokens``
    (sum of ul_weights) and, for "sequence", ``num_sequences``.
    """
    _check_options(alpha, normalization)
    if "ul_weights" not in batch:
        raise ValueError(
            "unlikelihood.loss needs batch['ul_weights'] (pack with fields=('ul_weights',)); "
            f"the batch has {sorted(batch)}"
        )
    targets = batch["targets"]
    weights = batch["weights"].astype(jnp.float32)
    ul_weights = batch["ul_weights"].astype(jnp.float32)
    weighted_nll = weights * logprobs.token_nll(logits, targets)
    weighted_ul = ul_weights * -log1m_prob(logits, targets)
    trained = weights + ul_weights
    num_ul = jnp.sum(ul_weights)

    if normalization == "token":
        total = jnp.sum(trained)
        nll = logprobs.safe_div(jnp.sum(weighted_nll), total)
        ul = logprobs.safe_div(jnp.sum(weighted_ul), total)
        metrics = {"loss_weight": total, "nll": nll, "unlikelihood": ul, "num_ul_tokens": num_ul}
        return nll + alpha * ul, metrics

    segment_ids = batch.get("segment_ids")
    if segment_ids is None or normalization == "row":  # the whole row as one sequence
        segment_ids = jnp.ones(targets.shape, jnp.int32)
    seq_trained = logprobs.segment_sums(trained, segment_ids)
    valid = (seq_trained > 0) & (jnp.arange(targets.shape[-1] + 1) > 0)
    count = jnp.sum(valid.astype(jnp.float32))

    def sequence_mean(values: Array) -> Array:
        sums = logprobs.segment_sums(values, segment_ids)
        means = jnp.where(valid, sums / jnp.where(valid, seq_trained, 1.0), 0.0)
        return logprobs.safe_div(jnp.sum(means), count)

    nll, ul = sequence_mean(weighted_nll), sequence_mean(weighted_ul)
    metrics = {"loss_weight": count, "nll": nll, "unlikelihood": ul, "num_ul_tokens": num_ul,
               "num_sequences": count}
    return nll + alpha * ul, metrics


def make_loss_fn(alpha: float = 1.0, normalization: str = "token") -> lm.LossFn:
    """`loss` with its options bound (and checked now), in the ``loss_fn(logits, batch)`` form."""
    _check_options(alpha, normalization)
    return lambda logits, batch: loss(logits, batch, alpha=alpha, normalization=normalization)


def build(opts: Mapping[str, Any], tokenizer: Tokenizer, seed: int, schema: str) -> Objective:
    """Objective "unlikelihood": per preference record a positive example of the chosen response
    (j = 0) and a negative one of the rejected response (j = 1)."""
    def example(record, j, index):
        prompt, chosen, rejected = examples.encode_pair(record, tokenizer)
        make = positive_example if j == 0 else negative_example
        return make(prompt, chosen if j == 0 else rejected, tokenizer.eos_id)

    loss_fn = functools.partial(loss, alpha=float(opts["alpha"]), normalization=opts["normalization"])
    return Objective("unlikelihood", 2, example, loss_fn, examples.PROMPT_TEMPLATE, fields=("ul_weights",))
