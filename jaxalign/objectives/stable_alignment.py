"""Stable Alignment (Liu et al., "Training Socially Aligned Language Models on Simulated Social
Interactions", ICLR 2024, arXiv 2305.16960): SFT on the best-rated response of a group, plus a
rating-modulated penalty on any lower-rated response the model finds at least as likely.

A group is one multi-part example packed into one row, each part carrying its rating and its place
in the group (``sa_rating``, ``sa_index``); `group_arrays` recovers ``[groups, K]`` arrays from the
rows, `stable_alignment_loss` computes the loss on them, and ``loss_weight`` counts groups. Where
the reference code is loose or wrong, the choices made here are listed in the docs.

Details: docs/methods.md#the-stable-alignment-loss-jaxalignobjectivesstable_alignment
"""

from __future__ import annotations

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
REDUCES = ("mean", "max")
FIELDS = ("sa_rating", "sa_index")  # the per-token fields a packer must carry for `loss`
DEFAULTS: dict[str, Any] = {"margin": 1.0, "lam": 0.5, "rating_scale": 7.0, "reduce": "mean", "group_size": 3}
_SUBSET_SALT = 0x5A17  # separates the subset draw from other uses of (seed, record index)


def check_options(margin: float, lam: float, rating_scale: float, reduce: str,
                  group_size: int | None = None) -> None:
    """Raises ValueError naming the first bad option."""
    if reduce not in REDUCES:
        raise ValueError(f"stable_alignment: reduce={reduce!r}; choose one of {list(REDUCES)}")
    for name, value, ok, rule in (("rating_scale", rating_scale, lambda v: v > 0, "> 0"),
                                  ("lam", lam, lambda v: v >= 0, ">= 0"),
                                  ("margin", margin, lambda v: v >= 0, ">= 0")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                or not ok(value):
            raise ValueError(f"stable_alignment: {name}={value!r} must be a finite number {rule}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise ValueError(f"stable_alignment: group_size={group_size!r} must be a positive integer")


def stable_alignment_loss(
    nll: Array, ratings: Array, valid: Array, margin: float = 1.0, lam: float = 0.5,
    rating_scale: float = 7.0, reduce: str = "mean",
) -> tuple[Array, dict[str, Array]]:
    """The Stable Alignment loss of groups (docs/methods.md) and its metrics.

    `nll` [G, K]: each response's mean token NLL; `ratings` [G, K]; `valid` [G, K] bool: which
    entries are responses (anything may stand in the others, NaN included).

    Metrics: ``loss_weight`` = ``num_groups`` (groups with a valid response), ``num_responses``,
    ``num_pairs`` (valid j != b) and ``num_pairs_ranked`` (of those, L_j > L_b: the exact pair-level
    ranking accuracy is their ratio), and means over groups of ``nll_best`` (L_b), ``penalty``
    (max(0, mean_j or max_j delta_j)) and ``rank_accuracy`` (the group's share of j != b with
    L_j > L_b; a single-response group counts 1, nothing in it being out of order).
    """
    check_options(margin, lam, rating_scale, reduce)
    nll, ratings = jnp.asarray(nll), jnp.asarray(ratings)
    valid = jnp.asarray(valid).astype(bool)
    if nll.ndim != 2 or ratings.shape != nll.shape or valid.shape != nll.shape:
        raise ValueError(f"stable_alignment_loss: nll, ratings and valid must share one [groups, K] shape, "
                         f"got {nll.shape}, {ratings.shape} and {valid.shape}")
    # Replace the invalid entries before any arithmetic: where's gradient is a select, so NaN or Inf
    # there reaches neither the loss nor the gradient.
    losses = jnp.where(valid, nll.astype(jnp.float32), 0.0)
    scores = jnp.where(valid, ratings.astype(jnp.float32), 0.0)
    best = jnp.argmax(jnp.where(valid, scores, -jnp.inf), axis=1)  # the first of equal maxima
    is_best = jax.nn.one_hot(best, nll.shape[1], dtype=jnp.bool_) & valid
    group_valid = jnp.any(valid, axis=1)
    loss_best = jnp.sum(jnp.where(is_best, losses, 0.0), axis=1)
    score_best = jnp.sum(jnp.where(is_best, scores, 0.0), axis=1)
    others = valid & ~is_best
    num_others = jnp.sum(others, axis=1)
    delta = loss_best[:, None] - losses + margin * (score_best[:, None] - scores) / rating_scale
    if reduce == "mean":
        worst = jnp.sum(jnp.where(others, delta, 0.0), axis=1) / jnp.maximum(num_others, 1)
    else:
        worst = jnp.max(jnp.where(others, delta, -jnp.inf), axis=1)
    worst = jnp.where(num_others > 0, worst, 0.0)
    penalty = jnp.where(worst > 0, worst, 0.0)  # the hinge, with subgradient 0 at 0 (torch.relu's)
    ranked = others & (losses > loss_best[:, None])
    rank_accuracy = jnp.where(num_others > 0, jnp.sum(ranked, axis=1) / jnp.maximum(num_others, 1), 1.0)
    count = jnp.sum(group_valid.astype(jnp.float32))

    def mean(x: Array) -> Array:
        return logprobs.safe_div(jnp.sum(jnp.where(group_valid, x, 0.0)), count)

    metrics = {
        "loss_weight": count, "num_groups": count,
        "num_responses": jnp.sum(valid.astype(jnp.float32)),
        "num_pairs": jnp.sum(others.astype(jnp.float32)),
        "num_pairs_ranked": jnp.sum(ranked.astype(jnp.float32)),
        "nll_best": mean(loss_best), "penalty": mean(penalty), "rank_accuracy": mean(rank_accuracy),
    }
    return mean(loss_best + lam * penalty), metrics


# --------------------------------------------------------------------------- data


def select_responses(ratings: Sequence[float], group_size: int, seed: int, record_index: int) -> list[int]:
    """Indices (ascending) of at most `group_size` responses: all when they fit, else the best plus
    ``group_size - 1`` others drawn uniformly from a generator seeded by (seed, record_index)."""
    n = len(ratings)
    if n <= group_size:
        return list(range(n))
    best = examples.best_response(ratings)
    rest = np.array([i for i in range(n) if i != best])
    rng = np.random.default_rng([_SUBSET_SALT, seed % 2**32, record_index % 2**32])
    picked = rng.choice(rest, group_size - 1, replace=False) if group_size > 1 else []
    return sorted([best, *(int(i) for i in picked)])


def group_example(
    prompt_ids: Sequence[int] | np.ndarray, responses_ids: Sequence[Sequence[int] | np.ndarray],
    ratings: Sequence[float], eos_id: int,
) -> dict[str, list[Example]]:
    """One group -> ``{"parts": [...]}``: per response, prompt + response + EOS (weights as
    `sft_example`) with ``sa_rating`` and ``sa_index`` on every token (docs/methods.md)."""
    if not len(responses_ids) or len(ratings) != len(responses_ids):
        raise ValueError(f"group_example: need one rating per response and at least one response, got "
                         f"{len(responses_ids)} responses and {len(ratings)} ratings")
    parts = []
    for index, (response, rating) in enumerate(zip(responses_ids, ratings, strict=True)):
        if not np.isfinite(rating):
            raise ValueError(f"group_example: rating {index} is {rating!r}; ratings must be finite")
        part = examples.sft_example(prompt_ids, response, eos_id)
        size = part["tokens"].size
        part["sa_rating"] = np.full(size, rating, np.float32)
        part["sa_index"] = np.full(size, index, np.float32)
        parts.append(part)
    return {"parts": parts}


# --------------------------------------------------------------------------- packed rows


def _per_segment_max(values: Array, segment_ids: Array) -> Array:
    length = values.shape[-1]
    return jax.vmap(lambda v, s: jax.ops.segment_max(v, s, num_segments=length + 1))(values, segment_ids)


def group_arrays(logits: Array, batch: dict[str, Array], group_size: int) -> tuple[Array, Array, Array]:
    """The groups of packed rows as ``(nll, ratings, valid)``, each [rows * seq_len, group_size].

    Group g of row r is row ``r * seq_len + g - 1`` (in packing order); the rest are padding groups
    with no valid entry. An entry is valid when its segment has a weighted token; a segment with
    ``sa_index >= group_size`` (a group larger than the loss was built for) is left out.
    """
    missing = [name for name in FIELDS if name not in batch]
    if missing:
        raise ValueError(f"stable_alignment.loss needs batch fields {list(FIELDS)} (pack with "
                         f"fields={FIELDS!r}); the batch has {sorted(batch)}, missing {missing}")
    rows, length = batch["targets"].shape
    segment_ids = batch["segment_ids"]
    weights = batch["weights"].astype(jnp.float32)
    # where, not a product: a zero weight must give 0 even next to a non-finite value.
    weighted = jnp.where(weights != 0, weights * logprobs.token_nll(logits, batch["targets"]), 0.0)
    seq_weight = logprobs.segment_sums(weights, segment_ids)
    mean_nll = logprobs.segment_sums(weighted, segment_ids) / jnp.where(seq_weight > 0, seq_weight, 1.0)
    slots = logprobs.segment_sums(jnp.ones_like(weights), segment_ids)
    exists = (slots > 0) & (jnp.arange(length + 1) > 0)
    index = jnp.where(exists, _per_segment_max(batch["sa_index"].astype(jnp.float32), segment_ids), -1.0)
    index = jnp.round(index).astype(jnp.int32)
    rating = jnp.where(exists, _per_segment_max(batch["sa_rating"].astype(jnp.float32), segment_ids), 0.0)
    # Groups are runs of consecutive segments starting at index 0: number them 1, 2, ... per row.
    group = jnp.cumsum((exists & (index == 0)).astype(jnp.int32), axis=1)
    valid = exists & (seq_weight > 0) & (group > 0) & (index >= 0) & (index < group_size)
    row = jnp.broadcast_to(jnp.arange(rows)[:, None], group.shape)
    slot = jnp.where(valid, index, 0)
    group = jnp.where(valid, group, 0)  # column 0 collects the (zero) contributions of invalid entries

    def grid(values: Array) -> Array:
        # Each (row, group, index) gets at most one valid segment, so the add is a placement; its
        # gradient is a gather.
        zeros = jnp.zeros((rows, length + 1, group_size), jnp.float32)
        filled = zeros.at[row, group, slot].add(jnp.where(valid, values, 0.0).astype(jnp.float32))
        return filled[:, 1:].reshape(rows * length, group_size)

    return grid(mean_nll), grid(rating), grid(valid.astype(jnp.float32)) > 0


def loss(
    logits: Array, batch: dict[str, Array], *, margin: float = 1.0, lam: float = 0.5,
    rating_scale: float = 7.0, reduce: str = "mean", group_size: int = 3,
) -> tuple[Array, dict[str, Array]]:
    """`stable_alignment_loss` of the groups packed in `batch` (docs/methods.md); same metrics."""
    check_options(margin, lam, rating_scale, reduce, group_size)
    nll, ratings, valid = group_arrays(logits, batch, group_size)
    return stable_alignment_loss(nll, ratings, valid, margin, lam, rating_scale, reduce)


def make_loss_fn(margin: float = 1.0, lam: float = 0.5, rating_scale: float = 7.0, reduce: str = "mean",
                 group_size: int = 3) -> lm.LossFn:
    """`loss` with its options bound (and checked now), in the ``loss_fn(logits, batch)`` form."""
    check_options(margin, lam, rating_scale, reduce, group_size)
    return lambda logits, batch: loss(logits, batch, margin=margin, lam=lam, rating_scale=rating_scale,
                                      reduce=reduce, group_size=group_size)


def build(opts: Mapping[str, Any], tokenizer: Tokenizer, seed: int, schema: str) -> Objective:
    """Objective "stable_alignment": one group example per group record, of at most group_size of
    its responses (`select_responses`)."""
    size = opts["group_size"]
    loss_fn = make_loss_fn(  # checks every option now, before any data is read
        margin=opts["margin"], lam=opts["lam"], rating_scale=opts["rating_scale"], reduce=opts["reduce"],
        group_size=size)

    def example(record, j, index):
        prompt, texts, ratings = examples.group_fields(record)
        kept = select_responses(ratings, size, seed, index)
        prompt_text = examples.format_prompt(prompt, examples.prompt_template(tokenizer))
        prompt_ids = tokenizer.encode(prompt_text, add_bos=tokenizer.bos_id is not None)
        responses, scores = [tokenizer.encode(texts[i]) for i in kept], [ratings[i] for i in kept]
        return group_example(prompt_ids, responses, scores, tokenizer.eos_id)

    return Objective("stable_alignment", 1, example, loss_fn, examples.PROMPT_TEMPLATE, fields=FIELDS)
