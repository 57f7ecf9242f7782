"""The model's forward pass, jitted once per (config, mesh, head), for everything that reads a model
without training it: logits (the notebook API), per-token log-probabilities (RL), summed sequence
log-likelihoods (preference evaluation; with is_greedy, lm-eval's tasks through `eval --harness`),
reward-model scores and mean-pooled hidden states (SANDBOX memory). Inputs are host arrays of rows,
fed sharded over the batch axes like a train batch; results come back replicated.
`sequence_logprobs` packs examples several to a row (docs/models.md explains how it finds each
example again and which shapes it compiles).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign import mesh as mesh_lib
from jaxalign.data.examples import text_example
from jaxalign.data.packing import ROW_FIELDS, Overflow, PackStats, pack_examples, shift_example
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.logprobs import token_logps as _token_logps
from jaxalign.logprobs import token_nll
from jaxalign.models import ModelConfig, Transformer

MIN_SEQ_LEN = 16
_ROW_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
_UNBOUNDED = 2**62  # a seq_len no example reaches: validates without truncating


class SequenceScores(NamedTuple):
    """Per example: summed weighted log-probability and summed weights (both float64 [n])."""

    logp: np.ndarray
    num_tokens: np.ndarray


def sequence_logprobs(
    params: Any,
    cfg: ModelConfig,
    mesh: Mesh,
    examples: Sequence[Mapping[str, Any]],
    *,
    seq_len: int | None = None,
    batch_size: int = 16,
    num_bins: int = 64,
    overflow: Overflow = "error",
    stats: PackStats | None = None,
) -> SequenceScores:
    """Weighted log-likelihood of each example (see the module docstring).

    `batch_size` is in packed rows; `num_bins` is the packer's window of open rows; `stats`, when
    given, is filled with the packing counts (rows, padding).
    """
    if overflow not in ("error", "truncate"):
        raise ValueError(f"sequence_logprobs: overflow={overflow!r}; use 'error' or 'truncate'")
    logp, num_tokens = _per_example(params, cfg, mesh, examples, "segment_logps", seq_len, batch_size,
                                    num_bins, overflow, stats, "sequence_logprobs")
    return SequenceScores(logp, num_tokens)


def greedy_logprobs(
    params: Any,
    cfg: ModelConfig,
    mesh: Mesh,
    examples: Sequence[Mapping[str, Any]],
    *,
    seq_len: int | None = None,
    batch_size: int = 16,
    num_bins: int = 64,
) -> tuple[SequenceScores, np.ndarray]:
    """`sequence_logprobs` (overflow="error"), and whether every weighted token of each example is
    the model's argmax given the tokens before it (bool [n]; True where nothing is weighted): what
    lm-eval calls is_greedy. Packed and compiled as `sequence_logprobs` is."""
    sums, num_tokens = _per_example(params, cfg, mesh, examples, "segment_logps_greedy", seq_len, batch_size,
                                    num_bins, "error", None, "greedy_logprobs")
    return SequenceScores(sums[:, 0], num_tokens), sums[:, 1] == 0


def _per_example(params: Any, cfg: ModelConfig, mesh: Mesh, examples: Sequence[Mapping[str, Any]],
                 head: str, seq_len: int | None, batch_size: int, num_bins: int, overflow: Overflow,
                 stats: PackStats | None, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates and packs `examples`, runs the per-segment `head` and puts each segment's sums back
    on its example: (sums [n, ...] float64, zero for an example that predicts nothing; num_tokens)."""
    if batch_size < 1:
        raise ValueError(f"{caller}: batch_size={batch_size} must be positive")
    examples = list(examples)  # indexed twice below: once to validate, once in packing order
    slots, num_tokens, seq_len = _check_examples(examples, seq_len, overflow)
    if not slots.any():  # nothing is predicted anywhere: there are no rows to run
        return np.zeros((len(slots), *_SEGMENT_SUMS[head])), num_tokens
    batch, owner = _pack(examples, slots, seq_len, num_bins, overflow, stats)
    sums = _chunked(params, cfg, mesh, head, batch, batch_size, np.float64)
    placed = owner >= 0
    out = np.zeros((len(slots), *sums.shape[2:]))
    out[owner[placed]] = sums[placed]
    return out, num_tokens


def _check_examples(
    examples: Sequence[Mapping[str, Any]], seq_len: int | None, overflow: Overflow
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validates every example (errors name its index in `examples`); returns the slots each fills
    (its tokens - 1, 0 if it predicts nothing), its summed weights, and the row length."""
    multi_part = next((i for i, ex in enumerate(examples) if isinstance(ex, Mapping) and "parts" in ex), None)
    if multi_part is not None:
        raise ValueError(f"example {multi_part}: has 'parts'; sequence_logprobs scores single sequences, "
                         "so pass each part as an example of its own")
    pieces = [shift_example(ex, _UNBOUNDED, "error", where=f"example {i}")[0]
              for i, ex in enumerate(examples)]
    slots = np.array([0 if p is None else len(p["inputs"]) for p in pieces], np.int64)
    if seq_len is None:
        seq_len = _pow2(max(int(slots.max(initial=0)), MIN_SEQ_LEN))
    too_long = np.flatnonzero(slots > seq_len)
    if too_long.size and overflow == "error":
        i = int(too_long[0])
        raise ValueError(
            f"example {i}: {slots[i] + 1} tokens, but seq_len={seq_len} scores at most {seq_len + 1} "
            f"({too_long.size} example(s) too long); pass a larger seq_len, or overflow='truncate' to "
            "score only their first seq_len + 1 tokens"
        )
    # The weights of the tokens scored: the first seq_len predictions when truncating.
    num_tokens = np.array([0.0 if p is None else p["weights"][:seq_len].sum(dtype=np.float64)
                           for p in pieces])
    return slots, num_tokens, seq_len


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _pack(
    examples: Sequence[Mapping[str, Any]], slots: np.ndarray, seq_len: int, num_bins: int,
    overflow: Overflow, stats: PackStats | None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Packed rows as a batch of [rows, seq_len] arrays, and owner [rows, seq_len + 1]: the index of
    the example in each (row, segment id), -1 where none."""
    order = np.argsort(-slots, kind="stable")  # longest first: first-fit decreasing
    rows = pack_examples([examples[i] for i in order], seq_len, num_bins=num_bins, overflow=overflow,
                         stats=stats)
    # Stand-ins of the same lengths whose tokens are the example's index (module docstring), cut as
    # the examples were (so that only the examples' packing counts and reports truncation).
    stand_ins = [{"tokens": np.full(min(slots[i], seq_len) + 1, i, np.int32)} for i in order]
    tags = pack_examples(stand_ins, seq_len, num_bins=num_bins, overflow="truncate")
    batch = {key: np.stack([row[key] for row in rows]) for key in _ROW_KEYS}
    tag_segments = np.stack([row["segment_ids"] for row in tags])
    if not np.array_equal(batch["segment_ids"], tag_segments):
        raise AssertionError("pack_examples placed examples by more than their length; see _pack")
    owner = np.full((len(rows), seq_len + 1), -1, np.int64)
    row, slot = np.nonzero(tag_segments)
    owner[row, tag_segments[row, slot]] = np.stack([t["inputs"] for t in tags])[row, slot]
    return batch, owner


# The per-segment heads `_per_example` runs, and the shape of one segment's sums: the weighted
# log-probability, and for the greedy head also the count of weighted tokens that are not the argmax.
_SEGMENT_SUMS = {"segment_logps": (), "segment_logps_greedy": (2,)}


def _chunked(params: Any, cfg: ModelConfig, mesh: Mesh, head: str, batch: Mapping[str, np.ndarray],
             batch_size: int, dtype: Any) -> np.ndarray:
    """`head` on `batch_size` rows at a time (rounded up to the data-parallel size dp * fsdp); the last
    chunk is padded with empty rows only to that size times a power of two, so few shapes compile."""
    data_parallel = mesh.shape["dp"] * mesh.shape["fsdp"]
    full = -(-batch_size // data_parallel) * data_parallel
    num_rows = len(batch["inputs"])
    fn = compiled(cfg, mesh, head)
    outputs = []
    with mesh_lib.use(mesh):
        for start in range(0, num_rows, full):
            chunk = {key: np.asarray(x)[start:start + full] for key, x in batch.items()}
            n = len(chunk["inputs"])
            padded = min(full, data_parallel * _pow2(-(-n // data_parallel)))
            # Empty rows: segment 0 everywhere, weight 0 (their sums land in the unused column 0).
            chunk = {key: np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
                     for key, x in chunk.items()}
            outputs.append((fn(params, {key: put_rows(x, mesh) for key, x in chunk.items()}), n))
        # Dispatch is asynchronous: every chunk is queued before the first result is read.
        return np.concatenate([np.asarray(out, dtype)[:n] for out, n in outputs])


def put_rows(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array of rows (the same on every process), sharded over the mesh like a batch."""
    # The whole batch is on every process; make_array_from_callback lets each feed its shards.
    sharding = mesh_lib.logical_sharding(("batch", "length")[: x.ndim], x.shape, mesh)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _segment_logps(model: Transformer, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Weighted log-probability per (row, segment id) [rows, seq_len + 1]."""
    weights = batch["weights"].astype(jnp.float32)
    # where, not a product: a zero weight must give 0 even next to a non-finite value.
    nll = token_nll(_packed_logits(model, params, batch), batch["targets"])
    logp = jnp.where(weights != 0, -weights * nll, 0.0)
    num_segments = logp.shape[1] + 1  # ids 0 (padding) .. at most seq_len
    per_row = lambda v, s: jax.ops.segment_sum(v, s, num_segments=num_segments)
    return jax.vmap(per_row)(logp, batch["segment_ids"])


def _segment_logps_greedy(model: Transformer, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Per (row, segment id) [rows, seq_len + 1, 2]: the weighted log-probability, and how many
    weighted targets are not the argmax of their logits."""
    weights = batch["weights"].astype(jnp.float32)
    logits = _packed_logits(model, params, batch)
    logp = jnp.where(weights != 0, -weights * token_nll(logits, batch["targets"]), 0.0)
    missed = ((weights != 0) & (jnp.argmax(logits, axis=-1) != batch["targets"])).astype(jnp.float32)
    num_segments = logp.shape[1] + 1
    per_row = lambda v, s: jax.ops.segment_sum(v, s, num_segments=num_segments)
    return jnp.stack([jax.vmap(per_row)(logp, batch["segment_ids"]),
                      jax.vmap(per_row)(missed, batch["segment_ids"])], axis=-1)


def _token_logps_head(model: Transformer, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """log p(targets) per position [rows, seq_len], 0 where the weight is 0."""
    logits = _packed_logits(model, params, batch)
    return jnp.where(batch["weights"] > 0, _token_logps(logits, batch["targets"]), 0.0)


def _pooled_hidden(model: Transformer, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """The mean of the final hidden states over each row's tokens (segment id > 0) [rows, hidden]."""
    segments = batch["segment_ids"]
    hidden, _ = model.apply({"params": params}, batch["inputs"], segment_ids=segments, method="hidden")
    mask = (segments > 0).astype(jnp.float32)[..., None]
    return jnp.sum(hidden.astype(jnp.float32) * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def last_token_mask(batch: Mapping[str, jax.Array]) -> jax.Array:
    """float32 [b, L]: 1 at the last weighted position (weights > 0) of each segment, else 0: where a
    reward model's score of the segment is read. Padding (segment 0) and segments without a weighted
    position have none."""
    weights, segment_ids = jnp.asarray(batch["weights"]), jnp.asarray(batch["segment_ids"])
    length = weights.shape[-1]
    weighted = (weights > 0) & (segment_ids > 0)
    index = jnp.arange(length, dtype=jnp.int32)
    candidates = jnp.where(weighted, index, -1)
    per_row = lambda v, s: jax.ops.segment_max(v, s, num_segments=length + 1)  # noqa: E731
    last = jax.vmap(per_row)(candidates, segment_ids)  # [b, L + 1]: last weighted index per segment
    return (weighted & (index == jnp.take_along_axis(last, segment_ids, axis=1))).astype(jnp.float32)


def _row_rewards(model: Transformer, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """A score model's reward of each unpacked row [rows, num_labels]: NaN for a row without one."""
    scores = _packed_logits(model, params, batch)
    mask = last_token_mask(batch) > 0
    picked = jnp.sum(jnp.where(mask[..., None], scores, 0.0), axis=1)
    return jnp.where(jnp.any(mask, axis=1)[:, None], picked, jnp.nan)


def _logits(model: Transformer, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    return model.apply({"params": params}, batch["inputs"])


def _packed_logits(model: Transformer, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    return model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                       segment_ids=batch["segment_ids"])


HEADS = {"logits": _logits, "segment_logps": _segment_logps, "segment_logps_greedy": _segment_logps_greedy,
         "token_logps": _token_logps_head,
         "pooled_hidden": _pooled_hidden, "rewards": _row_rewards}


@functools.lru_cache(maxsize=64)
def compiled(cfg: ModelConfig, mesh: Mesh, head: str, replicated: bool = True):
    """The jitted forward of `head` (a key of HEADS) for (config, mesh): fn(params, batch of device
    arrays). jax compiles it once per batch shape; the result is replicated unless told otherwise."""
    model, fn = Transformer(cfg), HEADS[head]
    out = NamedSharding(mesh, PartitionSpec()) if replicated else None
    return jax.jit(lambda params, batch: fn(model, params, batch), out_shardings=out)


def run(params: Any, cfg: ModelConfig, mesh: Mesh, head: str, batch: Mapping[str, np.ndarray],
        replicated: bool = True) -> np.ndarray:
    """`head` on a batch of host row arrays (the same on every process), fed sharded like a train batch."""
    with mesh_lib.use(mesh):
        placed = {key: put_rows(np.asarray(x), mesh) for key, x in batch.items()}
        return np.asarray(compiled(cfg, mesh, head, replicated)(params, placed))


def token_logps(params: Any, cfg: ModelConfig, mesh: Mesh, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """log p(targets) per position of packed rows [rows, seq_len] (float32, 0 where the weight is 0)."""
    keys = ("inputs", "targets", "weights", "segment_ids", "positions")
    return run(params, cfg, mesh, "token_logps", {key: batch[key] for key in keys})


# ------------------------------------------------------------------------------ reward models


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
    size = len(batch["inputs"]) if batch_size is None else batch_size
    if size < 1:
        raise ValueError(f"score_rows: batch_size={batch_size} must be positive")
    rewards = _chunked(params, cfg, mesh, "rewards", {key: batch[key] for key in ROW_FIELDS}, size,
                       np.float32)
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
