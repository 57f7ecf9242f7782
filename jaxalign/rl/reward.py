"""Reward models: a decoder with a scalar score head, trained on preferences or on labels.

A reward model is `jaxalign.models.Transformer` with ``head="score"`` (`score_config`): the
unembedding is replaced by a [hidden, 1] projection, as in Hugging Face's
LlamaForSequenceClassification, so the model gives a score at every position. Its losses follow the
objective contract of `jaxalign.objectives` with those scores in place of logits, so the ordinary
train and eval steps train it (``make_train_step(score_cfg, tx, mesh, loss_fn=bradley_terry_loss)``).

Where the reward is read. Examples are `jaxalign.data.pipeline.sft_example`'s prompt + response +
EOS, weighted 0 on the prompt and 1 on the response and the EOS. In a packed row the inputs are the
tokens without the last, so the last weighted position of a segment is the one whose *target* is the
EOS and whose *input* is the last response token: the model has read the prompt and the whole
response there, and that position's score is the segment's reward (`last_token_mask`). The EOS
itself is never an input. Reading the last weighted position (not the last position) keeps this
right for weights that do not run to the segment's end; truncation moves it to the last kept token.
Hugging Face reads the score at the last non-pad token instead; see `jaxalign.hf` for how to make the
two agree on an exported model.

Data. Preference pairs are DPO's (`pair_example`: two parts, chosen then rejected, so segment
``2j - 1`` of a packed row is the chosen and ``2j`` the rejected response of pair j). Labelled
examples (`labelled_example`) carry their label as a per-token float field "labels" (constant over
the example), which packing carries with ``fields=("labels",)``; the loss reads it at the reward
position.

Losses (both float32, means over what they count, ``loss_weight`` = that count, so accumulating
microbatches of whole rows is exact):

    bradley_terry_loss  -log sigmoid(r_chosen - r_rejected) per pair (Bradley & Terry, 1952; the
                        InstructGPT reward model, Ouyang et al., 2022), plus optionally
                        center_coef * (r_chosen + r_rejected)^2: the reward-centering term of
                        Eisenstein et al. (2023, "Helping or Herding?", also TRL's
                        center_rewards_coefficient). The Bradley-Terry loss sees only differences,
                        so the rewards' offset drifts freely; the term pins each pair's mean to 0,
                        which makes rewards of separately trained models comparable. Default 0: off.
    cross_entropy_loss  binary cross-entropy with the reward as the logit and the label (in [0, 1])
                        as the target, per labelled example.

Scoring. `score_rows` runs a score model over unpacked rows (one sequence per row, packing's row
layout) and returns one reward per row, compiled once per shape and sharded like
`jaxalign.eval.scoring`; `score_texts` builds those rows from prompt and response strings as SFT
does. `score_params_from_lm` starts a reward model from a language model: backbone copied, score
head freshly initialised.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.data.packing import ROW_FIELDS, Overflow, shift_example
from jaxalign.data.pipeline import format_prompt, sft_example
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.eval.scoring import MIN_SEQ_LEN, _pow2, put_rows
from jaxalign.models import ModelConfig, Transformer
from jaxalign.objectives import dpo, lm

Array = jax.Array
Example = dict[str, np.ndarray]
LABELS = "labels"  # the per-token field holding a labelled example's label
LOSSES = ("bradley_terry", "cross_entropy")


# ---------------------------------------------------------------------------------- models


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
    example = sft_example(prompt_ids, response_ids, eos_id)
    example[LABELS] = np.full(example["tokens"].shape, float(label), np.float32)
    return example


# ---------------------------------------------------------------------------------- rewards


def last_token_mask(batch: Mapping[str, Array]) -> Array:
    """float32 [b, L]: 1 at the last weighted position (weights > 0) of each segment, else 0.

    Padding (segment 0) and segments without a weighted position have none.
    """
    weights, segment_ids = jnp.asarray(batch["weights"]), jnp.asarray(batch["segment_ids"])
    length = weights.shape[-1]
    weighted = (weights > 0) & (segment_ids > 0)
    index = jnp.arange(length, dtype=jnp.int32)
    candidates = jnp.where(weighted, index, -1)
    per_row = lambda v, s: jax.ops.segment_max(v, s, num_segments=length + 1)  # noqa: E731
    last = jax.vmap(per_row)(candidates, segment_ids)  # [b, L + 1]: last weighted index per segment
    return (weighted & (index == jnp.take_along_axis(last, segment_ids, axis=1))).astype(jnp.float32)


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
    rewards = lm.segment_sums(jnp.where(mask > 0, _scalar_scores(scores, where), 0.0), segment_ids)
    return rewards, lm.segment_sums(mask, segment_ids) > 0, mask


def segment_rewards(scores: Array, batch: Mapping[str, Array]) -> Array:
    """Reward per (row, segment id) [b, L + 1] (lm.segment_sums' columns): the score at the segment's
    `last_token_mask` position; 0 for padding (column 0) and segments without a weighted position."""
    return _rewards(scores, batch, "segment_rewards")[0]


# ---------------------------------------------------------------------------------- losses


def _check_center_coef(center_coef: float) -> None:
    if isinstance(center_coef, bool) or not isinstance(center_coef, (int, float)) or not center_coef >= 0:
        raise ValueError(f"bradley_terry_loss: center_coef={center_coef!r} must be a number >= 0")


def bradley_terry_loss(
    scores: Array, batch: Mapping[str, Array], *, center_coef: float = 0.0
) -> tuple[Array, dict[str, Array]]:
    """The pairwise reward-model loss of rows of pairs (see the module docstring).

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
        return lm._safe_div(jnp.sum(jnp.where(valid, x.astype(jnp.float32), 0.0)), count)

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
    labels = lm.segment_sums(at_reward, batch["segment_ids"])
    count = jnp.sum(valid.astype(jnp.float32))
    positive = valid & (labels >= 0.5)
    negative = valid & (labels < 0.5)

    def mean(x: Array, over: Array) -> Array:
        return lm._safe_div(jnp.sum(jnp.where(over, x.astype(jnp.float32), 0.0)),
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


# ---------------------------------------------------------------------------------- scoring


def unpacked_rows(
    examples: Sequence[Mapping[str, Any]], seq_len: int | None = None, *, overflow: Overflow = "error",
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Examples ({"tokens", "weights"}, e.g. `sft_example`) -> rows of `seq_len` slots, one example a
    row in segment 1, in packing's row layout (padding: segment 0, weight 0).

    `seq_len` defaults to the longest example's predicted tokens rounded up to a power of two (at
    least 16). A longer example raises a ValueError naming it, unless ``overflow="truncate"``
    (its first seq_len + 1 tokens are kept, and its reward is read at the last kept token).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("unpacked_rows: no examples")
    multi = next((i for i, ex in enumerate(examples) if isinstance(ex, Mapping) and "parts" in ex), None)
    if multi is not None:
        raise ValueError(f"example {multi}: has 'parts'; score each part as an example of its own")
    if seq_len is None:
        tokens = [ex.get("tokens", ()) if isinstance(ex, Mapping) else () for ex in examples]
        seq_len = _pow2(max(*(np.size(t) - 1 for t in tokens), MIN_SEQ_LEN))
    rows = {name: np.zeros((len(examples), seq_len), np.float32 if name == "weights" else np.int32)
            for name in ROW_FIELDS}
    rows["inputs"][:] = rows["targets"][:] = pad_id
    for i, example in enumerate(examples):
        piece, _ = shift_example(example, seq_len, overflow, where=f"example {i}")
        if piece is None:
            raise ValueError(f"example {i}: fewer than 2 tokens, so it has no position to read a reward at")
        n = len(piece["inputs"])
        for name in ("inputs", "targets", "weights"):
            rows[name][i, :n] = piece[name]
        rows["segment_ids"][i, :n] = 1
        rows["positions"][i, :n] = np.arange(n)
    return rows


def score_rows(
    params: Any, cfg: ModelConfig, mesh: Mesh, batch: Mapping[str, np.ndarray], *,
    batch_size: int | None = None,
) -> np.ndarray:
    """The reward of each unpacked row (one sequence, segment 1, per row): float32 [rows], or
    [rows, num_labels] for num_labels > 1. NaN for a row without a weighted position (an empty row).

    Runs `batch_size` rows at a time (default: all), rounded up to the mesh's data-parallel size
    (dp * fsdp) and padded with empty rows to that times a power of two, so a handful of shapes are
    compiled and reused by later calls. Every process passes the same rows and gets every reward.
    """
    if cfg.head != "score":
        raise ValueError(f"score_rows needs a score model (head='score'), got head={cfg.head!r}")
    _check_rows(batch)
    num_rows = len(batch["inputs"])
    data_parallel = mesh.shape["dp"] * mesh.shape["fsdp"]
    size = num_rows if batch_size is None else batch_size
    if size < 1:
        raise ValueError(f"score_rows: batch_size={batch_size} must be positive")
    full = -(-size // data_parallel) * data_parallel
    fn = _compiled_rows(cfg, mesh)
    outputs = []
    with mesh_lib.use(mesh):
        for start in range(0, num_rows, full):
            chunk = {key: np.asarray(batch[key])[start:start + full] for key in ROW_FIELDS}
            n = len(chunk["inputs"])
            padded = min(full, data_parallel * _pow2(-(-n // data_parallel)))
            chunk = {key: np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
                     for key, x in chunk.items()}
            outputs.append((fn(params, {key: put_rows(x, mesh) for key, x in chunk.items()}), n))
        # Dispatch is asynchronous: every chunk is queued before the first result is read.
        rewards = np.concatenate([np.asarray(out, np.float32)[:n] for out, n in outputs])
    return rewards[:, 0] if cfg.num_labels == 1 else rewards


def _check_rows(batch: Mapping[str, np.ndarray]) -> None:
    missing = [key for key in ROW_FIELDS if key not in batch]
    if missing:
        raise ValueError(f"score_rows: the batch lacks {missing}; rows have {list(ROW_FIELDS)} "
                         "(jaxalign.data.packing)")
    shape = np.shape(batch["inputs"])
    bad = [key for key in ROW_FIELDS if np.shape(batch[key]) != shape or len(shape) != 2]
    if bad or not shape[0]:
        raise ValueError(f"score_rows: every row field must be [rows > 0, seq_len] like 'inputs' {shape}; "
                         f"check {bad or ['inputs']}")
    segments = np.asarray(batch["segment_ids"])
    packed = np.flatnonzero(segments.max(axis=1) > 1)
    if packed.size:
        row = int(packed[0])
        held = sorted(set(segments[row].tolist()) - {0})
        raise ValueError(f"score_rows: row {row} holds segments {held}; it scores one sequence per row "
                         "(use segment_rewards on packed rows)")


@functools.lru_cache(maxsize=32)
def _compiled_rows(cfg: ModelConfig, mesh: Mesh):
    """One jitted row scorer per (config, mesh); jax compiles it once per batch shape."""
    model = Transformer(cfg)

    def rewards(params: Any, batch: dict[str, Array]) -> Array:
        scores = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                             segment_ids=batch["segment_ids"])
        mask = last_token_mask(batch) > 0
        picked = jnp.sum(jnp.where(mask[..., None], scores, 0.0), axis=1)  # [b, num_labels]
        return jnp.where(jnp.any(mask, axis=1)[:, None], picked, jnp.nan)

    return jax.jit(rewards, out_shardings=NamedSharding(mesh, PartitionSpec()))


def text_example(tokenizer: Tokenizer, prompt: str, response: str) -> Example:
    """prompt + response + EOS as SFT builds it: BOS (if any) + format_prompt(prompt), the response
    tokenized on its own, then EOS; weighted on the response and the EOS."""
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(f"prompt and response must be str, got {type(prompt).__name__} and "
                         f"{type(response).__name__}")
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no eos token, which ends every response")
    prompt_ids = tokenizer.encode(format_prompt(prompt), add_bos=tokenizer.bos_id is not None)
    return sft_example(prompt_ids, tokenizer.encode(response), tokenizer.eos_id)


def score_texts(
    params: Any, cfg: ModelConfig, mesh: Mesh, tokenizer: Tokenizer, prompts: Sequence[str],
    responses: Sequence[str], *, batch_size: int = 16, seq_len: int | None = None,
) -> np.ndarray:
    """The reward of each (prompts[i], responses[i]) (float32 [n]; `text_example`, `score_rows`).

    `seq_len` as in `unpacked_rows`: a pair longer than it is an error naming its index.
    """
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"score_texts: {len(prompts)} prompts but {len(responses)} responses")
    examples = []
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        try:
            examples.append(text_example(tokenizer, prompt, response))
        except ValueError as error:
            raise ValueError(f"score_texts: pair {i}: {error}") from None
    rows = unpacked_rows(examples, seq_len)
    return score_rows(params, cfg, mesh, rows, batch_size=batch_size)
