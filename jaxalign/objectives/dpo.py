"""Direct Preference Optimization (Rafailov et al., 2023, arXiv 2305.18290), with conservative DPO's
label smoothing.

Each example is a pair ``{"parts": [chosen, rejected]}`` (`pair_example`) that packing puts in one
row as consecutive segments; `loss` compares the policy's and the frozen reference's log-likelihoods
of the two (the reference's in ``batch["ref_logps"]``, computed by the train step) and counts pairs
in ``loss_weight``.

Details: docs/methods.md#dpo-jaxalignobjectivesdpo
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
DEFAULTS: dict[str, Any] = {"beta": 0.1, "label_smoothing": 0.0}


def pair_example(
    prompt_ids: Sequence[int] | np.ndarray,
    chosen_ids: Sequence[int] | np.ndarray,
    rejected_ids: Sequence[int] | np.ndarray,
    eos_id: int,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """A preference pair -> ``{"parts": [chosen, rejected]}``, each part prompt + response + EOS.

    Weights (of predicting each token, packing.py's convention) are 0 on the prompt and 1 on the
    response and the EOS, as in SFT: the sequence log-probability covers the whole response,
    including where it stops.
    """
    chosen = examples.sft_example(prompt_ids, chosen_ids, eos_id)
    return {"parts": [chosen, examples.sft_example(prompt_ids, rejected_ids, eos_id)]}


def _check_options(beta: float, label_smoothing: float) -> None:
    if not beta > 0:
        raise ValueError(f"dpo.loss: beta={beta!r} must be positive")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo.loss: label_smoothing={label_smoothing!r} must be in [0, 0.5)")


def loss(
    logits: Array, batch: dict[str, Array], *, beta: float = 0.1, label_smoothing: float = 0.0
) -> tuple[Array, dict[str, Array]]:
    """The DPO loss of `batch` (rows of pairs, with "ref_logps"; see docs/methods.md).

    Metrics: ``loss_weight`` and ``num_pairs`` (pairs counted), and means over pairs of
    ``accuracy`` (r_chosen > r_rejected), ``reward_margin`` (r_chosen - r_rejected),
    ``reward_chosen``, ``reward_rejected`` (beta * (log pi - log ref)) and ``logp_chosen``,
    ``logp_rejected`` (log pi of the responses, whose drift DPO does not control).
    """
    _check_options(beta, label_smoothing)
    if "ref_logps" not in batch:
        raise ValueError(
            "dpo.loss needs batch['ref_logps'], the per-token log-probabilities of the targets under "
            f"the reference model (a train-step stream with reference=True); the batch has {sorted(batch)}"
        )
    weights = batch["weights"].astype(jnp.float32)
    segment_ids = batch["segment_ids"]
    ref_logps = jax.lax.stop_gradient(batch["ref_logps"].astype(jnp.float32))
    policy = logprobs.segment_sums(weights * logprobs.token_logps(logits, batch["targets"]), segment_ids)
    reference = logprobs.segment_sums(weights * ref_logps, segment_ids)
    seq_weight = logprobs.segment_sums(weights, segment_ids)

    # Columns of the [b, L + 1] sums: segment 2j - 1 is chosen, 2j rejected, for j = 1 .. L // 2.
    pairs = logits.shape[1] // 2

    def chosen(x: Array) -> Array:
        return x[:, 1 : 2 * pairs : 2]

    def rejected(x: Array) -> Array:
        return x[:, 2 : 2 * pairs + 1 : 2]

    valid = (chosen(seq_weight) > 0) & (rejected(seq_weight) > 0)
    count = jnp.sum(valid.astype(jnp.float32))

    def mean(x: Array) -> Array:
        return logprobs.safe_div(jnp.sum(jnp.where(valid, x.astype(jnp.float32), 0.0)), count)

    reward_chosen = beta * (chosen(policy) - chosen(reference))
    reward_rejected = beta * (rejected(policy) - rejected(reference))
    margin = reward_chosen - reward_rejected
    eps = label_smoothing
    losses = -(1.0 - eps) * jax.nn.log_sigmoid(margin) - eps * jax.nn.log_sigmoid(-margin)
    metrics = {
        "loss_weight": count,
        "num_pairs": count,
        "accuracy": mean(margin > 0),
        "reward_margin": mean(margin),
        "reward_chosen": mean(reward_chosen),
        "reward_rejected": mean(reward_rejected),
        "logp_chosen": mean(chosen(policy)),
        "logp_rejected": mean(rejected(policy)),
    }
    return mean(losses), metrics


def make_loss_fn(beta: float = 0.1, label_smoothing: float = 0.0) -> lm.LossFn:
    """`loss` with its options bound (and checked now), in the ``loss_fn(logits, batch)`` form."""
    _check_options(beta, label_smoothing)
    return lambda logits, batch: loss(logits, batch, beta=beta, label_smoothing=label_smoothing)


def build(opts: Mapping[str, Any], tokenizer: Tokenizer, seed: int, schema: str) -> Objective:
    """Objective "dpo": one pair example per preference record, the loss against the reference."""
    def example(record, j, index):
        return pair_example(*examples.encode_pair(record, tokenizer), tokenizer.eos_id)

    loss_fn = functools.partial(loss, beta=float(opts["beta"]),
                                label_smoothing=float(opts["label_smoothing"]))
    return Objective("dpo", 1, example, loss_fn, examples.PROMPT_TEMPLATE, reference=True)
