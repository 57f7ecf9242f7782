"""The reward model's losses and examples: a decoder with a scalar score head (``head="score"``,
`HEAD`) trained with Bradley-Terry on preference pairs or binary cross-entropy on labelled texts. Its
losses follow the objective contract of `jaxalign.objectives` with the [batch, length, 1] scores in
place of logits, so the ordinary train and eval steps train it. A segment's reward is the score at
its last weighted position (`forward.last_token_mask`): there the model has read the prompt and the
whole response, and the EOS, whose target that position predicts, is never an input. The model's
config and starting parameters are `jaxalign.models.reward`'s, scoring texts with it
`jaxalign.forward.score_texts`.
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
from jaxalign.forward import last_token_mask
from jaxalign.objectives import dpo, lm
from jaxalign.objectives.objective import Objective

Array = jax.Array
Example = dict[str, np.ndarray]
HEAD = "score"  # the model ends in a scalar head, not the unembedding
LABELS = "labels"  # the per-token field holding a labelled example's label
LOSSES = ("bradley_terry", "cross_entropy")
DEFAULTS: dict[str, Any] = {"center_coef": 0.0}


# ---------------------------------------------------------------------------------- examples


def pair_example(
    prompt_ids: Sequence[int] | np.ndarray, chosen_ids: Sequence[int] | np.ndarray,
    rejected_ids: Sequence[int] | np.ndarray, eos_id: int,
) -> dict[str, list[Example]]:
    """A preference pair -> ``{"parts": [chosen, rejected]}``, exactly DPO's (`dpo.pair_example`)."""
    return dpo.pair_example(prompt_ids, chosen_ids, rejected_ids, eos_id)


def labelled_example(
    prompt_ids: Sequence[int] | np.ndarray, response_ids: Sequence[int] | np.ndarray, label: float,
    eos_id: int,
) -> Example:
    """`sft_example` plus the per-token float field "labels", `label` (in [0, 1]) on every token.

    Pack with ``fields=("labels",)``; `cross_entropy_loss` reads the label at the reward position.
    """
    if isinstance(label, bool):
        label = float(label)
    if not isinstance(label, (int, float, np.integer, np.floating)) or not 0.0 <= float(label) <= 1.0:
        raise ValueError(f"labelled_example: label={label!r} must be a number in [0, 1] (1: good, 0: bad)")
    example = examples.sft_example(prompt_ids, response_ids, eos_id)
    example[LABELS] = np.full(example["tokens"].shape, float(label), np.float32)
    return example


# ---------------------------------------------------------------------------------- rewards


def _scalar_scores(scores: Array, where: str) -> Array:
    if scores.ndim != 3 or scores.shape[-1] != 1:
        raise ValueError(f"{where}: scores must be [batch, length, 1] (a model with head='score', "
                         f"num_labels=1), got shape {tuple(scores.shape)}")
    return scores[..., 0].astype(jnp.float32)


def _rewards(scores: Array, batch: Mapping[str, Array], where: str) -> tuple[Array, Array, Array]:
    """Per segment [b, L + 1]: reward, whether the segment has one, and the last-token mask [b, L]."""
    mask = last_token_mask(batch)
    segment_ids = batch["segment_ids"]
    # where, not a product: an unread position's score must not leak a NaN or Inf into the sums.
    rewards = logprobs.segment_sums(jnp.where(mask > 0, _scalar_scores(scores, where), 0.0), segment_ids)
    return rewards, logprobs.segment_sums(mask, segment_ids) > 0, mask


def segment_rewards(scores: Array, batch: Mapping[str, Array]) -> Array:
    """Reward per (row, segment id) [b, L + 1] (logprobs.segment_sums' columns): the score at the segment's
    `last_token_mask` position; 0 for padding (column 0) and segments without a weighted position."""
    return _rewards(scores, batch, "segment_rewards")[0]


# ---------------------------------------------------------------------------------- losses


def _check_center_coef(center_coef: float) -> None:
    if isinstance(center_coef, bool) or not isinstance(center_coef, (int, float)) or not center_coef >= 0:
        raise ValueError(f"bradley_terry_loss: center_coef={center_coef!r} must be a number >= 0")


def bradley_terry_loss(
    scores: Array, batch: Mapping[str, Array], *, center_coef: float = 0.0
) -> tuple[Array, dict[str, Array]]:
    """The pairwise reward-model loss of rows of pairs (`pair_example`: segment 2j - 1 of a row is
    the chosen, 2j the rejected response of pair j), mean over pairs of -log sigmoid(r_chosen -
    r_rejected) (Bradley & Terry, 1952; InstructGPT's reward model), plus
    ``center_coef * (r_chosen + r_rejected)^2``: reward centering (Eisenstein et al., 2023; TRL's
    center_rewards_coefficient). The loss sees only differences, so the rewards' offset would drift
    freely; the term pins each pair's mean to 0, which makes separately trained models comparable.

    A pair counts only if both its segments have a reward (as in `dpo.loss`). Metrics:
    ``loss_weight`` and ``num_pairs`` (pairs counted) and means over them of ``accuracy``
    (r_chosen > r_rejected), ``reward_margin``, ``reward_chosen`` and ``reward_rejected``.
    """
    _check_center_coef(center_coef)
    rewards, has, _ = _rewards(scores, batch, "bradley_terry_loss")
    pairs = scores.shape[1] // 2  # columns 2j - 1 (chosen) and 2j (rejected) for j = 1 .. L // 2
    chosen, rejected = rewards[:, 1 : 2 * pairs : 2], rewards[:, 2 : 2 * pairs + 1 : 2]
    valid = has[:, 1 : 2 * pairs : 2] & has[:, 2 : 2 * pairs + 1 : 2]
    count = jnp.sum(valid.astype(jnp.float32))

    def mean(x: Array) -> Array:
        return logprobs.safe_div(jnp.sum(jnp.where(valid, x.astype(jnp.float32), 0.0)), count)

    margin = chosen - rejected
    losses = -jax.nn.log_sigmoid(margin)
    if center_coef:
        losses = losses + center_coef * jnp.square(chosen + rejected)
    metrics = {
        "loss_weight": count,
        "num_pairs": count,
        "accuracy": mean(margin > 0),
        "reward_margin": mean(margin),
        "reward_chosen": mean(chosen),
        "reward_rejected": mean(rejected),
    }
    return mean(losses), metrics


def cross_entropy_loss(scores: Array, batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    """Binary cross-entropy of each labelled segment's reward (a logit) against its label.

    The label is ``batch["labels"]`` at the reward position (`labelled_example`, packed with
    ``fields=("labels",)``). Metrics: ``loss_weight`` and ``num_examples`` (segments with a reward),
    ``num_positive`` (of those, label >= 0.5), ``accuracy`` ((reward > 0) == (label >= 0.5)), and
    ``reward_positive`` / ``reward_negative``, the mean reward of each class. Those two are means over
    a class, not over all examples, so over several microbatches the step averages them with the
    microbatches' example counts as weights: exact with one microbatch, close otherwise.
    """
    if LABELS not in batch:
        raise ValueError(f"cross_entropy_loss needs batch[{LABELS!r}] (labelled_example, packed with "
                         f"fields=({LABELS!r},)); the batch has {sorted(batch)}")
    rewards, valid, mask = _rewards(scores, batch, "cross_entropy_loss")
    at_reward = jnp.where(mask > 0, batch[LABELS].astype(jnp.float32), 0.0)
    labels = logprobs.segment_sums(at_reward, batch["segment_ids"])
    count = jnp.sum(valid.astype(jnp.float32))
    positive = valid & (labels >= 0.5)
    negative = valid & (labels < 0.5)

    def mean(x: Array, over: Array) -> Array:
        return logprobs.safe_div(jnp.sum(jnp.where(over, x.astype(jnp.float32), 0.0)),
                            jnp.sum(over.astype(jnp.float32)))

    losses = jax.nn.softplus(rewards) - labels * rewards  # = -y log s(r) - (1 - y) log s(-r)
    metrics = {
        "loss_weight": count,
        "num_examples": count,
        "num_positive": jnp.sum(positive.astype(jnp.float32)),
        "accuracy": mean((rewards > 0) == (labels >= 0.5), valid),
        "reward_positive": mean(rewards, positive),
        "reward_negative": mean(rewards, negative),
    }
    return mean(losses, valid), metrics


def make_loss_fn(loss: str = "bradley_terry", *, center_coef: float = 0.0) -> lm.LossFn:
    """A reward-model loss with its options bound (and checked now), in the ``loss_fn(scores, batch)``
    form the train step takes. `center_coef` applies to "bradley_terry" only."""
    if loss == "bradley_terry":
        _check_center_coef(center_coef)
        return functools.partial(bradley_terry_loss, center_coef=center_coef)
    if loss == "cross_entropy":
        if center_coef:
            raise ValueError("reward loss 'cross_entropy' has no center_coef (it is for 'bradley_terry')")
        return cross_entropy_loss
    raise ValueError(f"unknown reward loss {loss!r}; choose one of {list(LOSSES)}")


# ---------------------------------------------------------------------------------- the objective


def build(opts: Mapping[str, Any], tokenizer: Tokenizer, seed: int, schema: str) -> Objective:
    """Objective "reward": Bradley-Terry on preference records, cross-entropy on labelled ones."""
    if schema == "preference":
        def pair(record, j, index):
            return pair_example(*examples.encode_pair(record, tokenizer), tokenizer.eos_id)

        loss_fn = functools.partial(bradley_terry_loss, center_coef=float(opts["center_coef"]))
        return Objective("reward", 1, pair, loss_fn, examples.PROMPT_TEMPLATE, head=HEAD)

    def labelled(record, j, index):
        return labelled_record_example(record, tokenizer)

    return Objective("reward", 1, labelled, cross_entropy_loss, examples.PROMPT_TEMPLATE, fields=(LABELS,),
                     head=HEAD)


def labelled_record_example(record: Mapping[str, Any], tokenizer: Tokenizer) -> Example:
    """`labelled_example` of a record {"text", "label" (0: unaligned, 1: aligned)[, "prompt"]}."""
    text = functools.partial(examples.text_field, record, kind="labelled")
    label = record.get("label")
    if isinstance(label, bool) or label not in (0, 1):
        raise ValueError(f"a labelled record's 'label' must be 0 or 1, got {label!r}")
    prompt = text(key="prompt") if "prompt" in record else ""
    prompt_text = examples.format_prompt(prompt, examples.prompt_template(tokenizer))
    prompt_ids = tokenizer.encode(prompt_text, add_bos=tokenizer.bos_id is not None)
    return labelled_example(prompt_ids, tokenizer.encode(text(key="text")), int(label), tokenizer.eos_id)
