"""Log-likelihoods of whole sequences under a model: the scores preference evaluation compares.

    scores = sequence_logprobs(params, cfg, mesh, examples)   # examples: [{"tokens", "weights"}]
    scores.logp[i]        # sum_t weights[t] * log p(tokens[t] | tokens[:t])        float64
    scores.num_tokens[i]  # sum_t weights[t]: the number of weighted tokens for 0/1 weights

Examples follow `jaxalign.data.packing`: ``weights[t]`` weighs the prediction of ``tokens[t]``
(``weights[0]`` is never used; no "weights" means 1 on every predicted token). An example with
fewer than two tokens predicts nothing and scores logp 0, num_tokens 0.

How. The examples are packed several to a row with `pack_examples` (each in its own segment with
its own positions, so it gets exactly the log-probabilities it would get alone), longest first so
first-fit packs tightly. One jitted forward per batch shape computes per-token log-probabilities
in float32 on the device, weights them and sums them per segment, so only ``[rows, seq_len + 1]``
sums come back to the host, which adds them up per example in float64.

Where each example landed. `pack_examples` does not report placement, but it places an example by
its length alone. Packing stand-ins of the same lengths whose every token is the example's index
therefore gives the same layout with the example's index written in each slot it fills: the
packer is reused as it is, with no second packing algorithm to keep in step with it, and the two
layouts are checked to agree.

Shapes. `seq_len` defaults to the longest example (in predicted tokens) rounded up to a power of
two, at least 16. A batch holds `batch_size` rows rounded up to a multiple of the mesh's
data-parallel size (dp * fsdp); the last batch is padded with empty rows only up to that multiple
times a power of two. A call thus compiles a handful of programs, which later calls of the same
shapes reuse. Logits are ``[batch_size, seq_len, vocab]`` float32 on the device: lower
`batch_size` for large vocabularies.

Overflow. An example longer than ``seq_len + 1`` tokens raises a ValueError naming its index: the
score of a cut sequence is not that sequence's score, and an evaluation must not change silently.
``overflow="truncate"`` scores the first ``seq_len + 1`` tokens instead.

Sharding is the train step's: batch rows over ("dp", "fsdp") by the logical axes ("batch",
"length"), parameters as they are. Every process passes the same examples, feeds its own shards
and receives the whole (replicated) result.
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
from jaxalign.data.packing import Overflow, PackStats, pack_examples, shift_example
from jaxalign.models import ModelConfig, Transformer
from jaxalign.objectives import lm

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
    if batch_size < 1:
        raise ValueError(f"sequence_logprobs: batch_size={batch_size} must be positive")
    if overflow not in ("error", "truncate"):
        raise ValueError(f"sequence_logprobs: overflow={overflow!r}; use 'error' or 'truncate'")
    examples = list(examples)  # indexed twice below: once to validate, once in packing order
    slots, num_tokens, seq_len = _check_examples(examples, seq_len, overflow)
    logp = np.zeros(len(slots))
    if slots.any():  # else nothing is predicted anywhere and there are no rows to run
        batch, owner = _pack(examples, slots, seq_len, num_bins, overflow, stats)
        sums = _segment_sums(params, cfg, mesh, batch, batch_size)
        placed = owner >= 0
        logp[owner[placed]] = sums[placed]
    return SequenceScores(logp, num_tokens)


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
    # Stand-ins of the same lengths whose tokens are the example's index (module docstring).
    stand_ins = [{"tokens": np.full(slots[i] + 1, i, np.int32)} for i in order]
    tags = pack_examples(stand_ins, seq_len, num_bins=num_bins, overflow="truncate")
    batch = {key: np.stack([row[key] for row in rows]) for key in _ROW_KEYS}
    tag_segments = np.stack([row["segment_ids"] for row in tags])
    if not np.array_equal(batch["segment_ids"], tag_segments):
        raise AssertionError("pack_examples placed examples by more than their length; see _pack")
    owner = np.full((len(rows), seq_len + 1), -1, np.int64)
    row, slot = np.nonzero(tag_segments)
    owner[row, tag_segments[row, slot]] = np.stack([t["inputs"] for t in tags])[row, slot]
    return batch, owner


def _segment_sums(
    params: Any, cfg: ModelConfig, mesh: Mesh, batch: dict[str, np.ndarray], batch_size: int
) -> np.ndarray:
    """Weighted log-probability per (row, segment id): float64 [rows, seq_len + 1]."""
    data_parallel = mesh.shape["dp"] * mesh.shape["fsdp"]
    full = -(-batch_size // data_parallel) * data_parallel
    num_rows = len(batch["inputs"])
    fn = _compiled(cfg, mesh)
    outputs = []
    with mesh_lib.use(mesh):
        for start in range(0, num_rows, full):
            chunk = {key: x[start:start + full] for key, x in batch.items()}
            n = len(chunk["inputs"])
            padded = min(full, data_parallel * _pow2(-(-n // data_parallel)))
            # Empty rows: segment 0 everywhere, weight 0; their sums land in the unused column 0.
            chunk = {key: np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
                     for key, x in chunk.items()}
            outputs.append((fn(params, {key: put_rows(x, mesh) for key, x in chunk.items()}), n))
        # Dispatch is asynchronous: every batch is queued before the first result is read.
        return np.concatenate([np.asarray(out, np.float64)[:n] for out, n in outputs])


def put_rows(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array of rows (the same on every process), sharded over the mesh like a batch."""
    # The whole batch is on every process; make_array_from_callback lets each feed its shards.
    sharding = mesh_lib.logical_sharding(("batch", "length")[: x.ndim], x.shape, mesh)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@functools.lru_cache(maxsize=32)
def _compiled(cfg: ModelConfig, mesh: Mesh):
    """One jitted scorer per (config, mesh); jax compiles it once per batch shape."""
    model = Transformer(cfg)

    def score(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
        logits = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                             segment_ids=batch["segment_ids"])
        weights = batch["weights"].astype(jnp.float32)
        # where, not a product: a zero weight must give 0 even next to a non-finite value.
        logp = jnp.where(weights != 0, -weights * lm.token_nll(logits, batch["targets"]), 0.0)
        num_segments = logp.shape[1] + 1  # ids 0 (padding) .. at most seq_len
        per_row = lambda v, s: jax.ops.segment_sum(v, s, num_segments=num_segments)
        return jax.vmap(per_row)(logp, batch["segment_ids"])

    return jax.jit(score, out_shardings=NamedSharding(mesh, PartitionSpec()))
