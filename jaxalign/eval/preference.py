"""Preference accuracy: how often a model gives the chosen response more likelihood than the rejected.

    metrics = compare(params, cfg, mesh, chosen_examples, rejected_examples, normalize="sum")
    # {"accuracy": 0.81, "margin": 1.7, "n": 8552}

This is Chain of Hindsight's dialogue metric (Liu et al., 2023, Table 4 column "Dia": accuracy in %
on Anthropic HH pairs). The caller builds the examples and so chooses what is scored: typically the
dialogue with weight 0 and the final response with weight 1, or the dialogue followed by a
feedback phrase ("good" / "bad") with weight on the phrase only. Pair i is
(chosen_examples[i], rejected_examples[i]).

Accuracy counts a tie as half a win, so a model that cannot tell the two apart scores 0.5, not 0
or 1 depending on a tie-break. The margin is the mean of chosen minus rejected score.

Long examples. `sequence_logprobs` scores every example whole by default (an error past an explicit
`seq_len`); its ``overflow="truncate"`` keeps the FIRST seq_len + 1 tokens, which cuts the end of the
response. ``compare(..., max_len=L)`` instead cuts each example to L + 1 tokens by dropping the START
of its prompt (BOS, when `bos_id` names it, stays), so the response is scored whole after the part
of the prompt nearest it, as `jaxalign eval` does (jaxalign.eval.truncation); the result then also
holds "truncated", the number of examples cut.

Normalisation (design choice; the paper does not say). "sum" compares total log-likelihoods
log p(response | context): the literal "higher likelihood" and the quantity DPO's implicit reward
is built on. Every token adds a negative log-probability, so a sum favours the shorter response
whatever its quality; "mean" divides by the number of weighted tokens (the per-token average) and
removes that length bias at the price of no longer being a probability of the response. Report
which one a number used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from jax.sharding import Mesh

from jaxalign.eval.truncation import Truncation
from jaxalign.forward import sequence_logprobs
from jaxalign.models import ModelConfig

NORMALIZATIONS = ("sum", "mean")


def preference_accuracy(chosen_logps: Sequence[float] | np.ndarray,
                        rejected_logps: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """{"accuracy": share of pairs with chosen > rejected, ties counting 0.5; "margin": mean of
    chosen - rejected; "n": number of pairs} for two equal-length 1-D score arrays."""
    chosen = np.asarray(chosen_logps, np.float64)
    rejected = np.asarray(rejected_logps, np.float64)
    if chosen.ndim != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            f"preference_accuracy: chosen and rejected must be 1-D and of equal length, got shapes "
            f"{chosen.shape} and {rejected.shape}"
        )
    if not chosen.size:
        raise ValueError("preference_accuracy: no pairs to compare")
    bad = np.flatnonzero(~(np.isfinite(chosen) & np.isfinite(rejected)))
    if bad.size:
        raise ValueError(f"preference_accuracy: pair {bad[0]} has a non-finite score "
                         f"(chosen {chosen[bad[0]]}, rejected {rejected[bad[0]]})")
    wins = np.where(chosen > rejected, 1.0, np.where(chosen == rejected, 0.5, 0.0))
    margin = float(np.mean(chosen - rejected))
    return {"accuracy": float(wins.mean()), "margin": margin, "n": int(chosen.size)}


def compare(
    params: Any,
    cfg: ModelConfig,
    mesh: Mesh,
    chosen_examples: Sequence[Mapping[str, Any]],
    rejected_examples: Sequence[Mapping[str, Any]],
    *,
    normalize: Literal["sum", "mean"] = "sum",
    max_len: int | None = None,
    bos_id: int | None = None,
    **scoring: Any,
) -> dict[str, float | int]:
    """`preference_accuracy` of the model's scores of the chosen and rejected examples.

    Both lists are scored in one `sequence_logprobs` call (packed together); `scoring` passes its
    options on (seq_len, batch_size, overflow, ...). `max_len` (optional) first cuts every example to
    max_len + 1 tokens keeping the end of its prompt (module docstring) and adds "truncated" to the
    result. A pair whose example has no weighted token has nothing to compare and is an error.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"compare: normalize={normalize!r}; choose one of {list(NORMALIZATIONS)}")
    if len(chosen_examples) != len(rejected_examples):
        raise ValueError(f"compare: {len(chosen_examples)} chosen but {len(rejected_examples)} "
                         "rejected examples; pair i is (chosen[i], rejected[i])")
    n = len(chosen_examples)
    if not n:
        raise ValueError("compare: no pairs to compare")
    examples = [*chosen_examples, *rejected_examples]
    truncation = None if max_len is None else Truncation(max_len, bos_id=bos_id)
    if truncation is not None:
        examples = truncation.scored_examples(examples)
    scores = sequence_logprobs(params, cfg, mesh, examples, **scoring)
    for name, tokens in (("chosen", scores.num_tokens[:n]), ("rejected", scores.num_tokens[n:])):
        empty = np.flatnonzero(tokens <= 0)
        if empty.size:
            raise ValueError(f"compare: pair {empty[0]}: the {name} example has no weighted token "
                             f"({empty.size} such pair(s)); nothing to compare")
    logp = scores.logp if normalize == "sum" else scores.logp / scores.num_tokens
    result = preference_accuracy(logp[:n], logp[n:])
    if truncation is not None:
        result["truncated"] = truncation.scored_truncated
    return result
