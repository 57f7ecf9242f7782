"""SFT + unlikelihood on negative responses (Welleck et al., 2019, arXiv 1908.04319).

The baseline of the Chain of Hindsight paper (Liu et al., 2023, Table 4): maximise the likelihood
of the preferred responses and minimise that of the dispreferred ones with the unlikelihood term
``-log(1 - p(target))``, which, unlike adding +log p, is bounded below and stops pushing once a
token has become unlikely.

Data. Two kinds of examples, packed together (`jaxalign.data.packing` with
``fields=("ul_weights",)``, so rows carry ``ul_weights`` beside ``weights``):

    positive_example(prompt, response, eos)   weights 1 on response + EOS, ul_weights 0
    negative_example(prompt, response, eos)   weights 0, ul_weights 1 on the response tokens

Design choice: the EOS after a negative response gets no unlikelihood weight by default
(``ul_on_eos=False``). What makes the response bad is its content; pushing down "stop here" after
it would only teach the model to ramble on after bad text, and push EOS down in general.

Loss. Per token, ``nll = -log p(target)`` weighted by ``weights`` and ``ul = -log(1 - p(target))``
weighted by ``ul_weights``; with ``alpha`` the weight of the unlikelihood term:

    "token"     (sum(w * nll) + alpha * sum(u * ul)) / (sum(w) + sum(u)): every trained token,
                pulled up or pushed down, counts the same. loss_weight = sum(w) + sum(u).
    "sequence"  per sequence (packed segment) the same ratio over its own tokens, then the mean
                over sequences with sum(w) + sum(u) > 0 (Chain of Hindsight's convention, as in
                `lm`). loss_weight = the number of such sequences.

Either way the loss is one numerator over one ``loss_weight``, so microbatch accumulation is
exact (`jaxalign.objectives`), and with all ``ul_weights`` 0 it is `lm.loss` exactly. The metrics
``nll`` and ``unlikelihood`` are the two terms with that same normaliser (``loss = nll + alpha *
unlikelihood``), so they too combine exactly over microbatches; for "token", the mean NLL of the
positive tokens is ``nll * loss_weight / tokens`` and the mean ul per negative token is
``unlikelihood * loss_weight / num_ul_tokens``.

``log(1 - p)`` is computed as logsumexp over the other tokens minus logsumexp over all, in float32:
exact also when p rounds to 1 (where ``log1p(-exp(log p))`` is -inf), so the term never overflows,
and its gradient with respect to the target's logit is p, bounded.
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
    `ul_on_eos` (see the module docstring).
    """
    example = examples.sft_example(prompt_ids, response_ids, eos_id)
    ul_weights = example["weights"].copy()
    if not ul_on_eos:
        ul_weights[-1] = 0.0
    return {"tokens": example["tokens"], "weights": np.zeros_like(ul_weights), "ul_weights": ul_weights}


def log1m_prob(logits: Array, targets: Array) -> Array:
    """``log(1 - p(target))`` [b, L] float32, stable for every p (see the module docstring)."""
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
    """NLL on ``weights`` + alpha * unlikelihood on ``ul_weights`` (see the module docstring).

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
    if segment_ids is None:  # unpacked rows: each row is one sequence
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
