"""Packing: variable-length examples -> fixed-length rows in which no example sees another.

The convention (read this before writing a loss)
------------------------------------------------
An example is a mapping ``{"tokens": int [n], "weights": float [n]}``. ``weights[i]`` is the loss
weight of *predicting* ``tokens[i]`` from ``tokens[:i]`` (e.g. 0 on prompt tokens, 1 on the
response). ``weights[0]`` is never used: nothing inside the example predicts its first token.
"weights" may be left out, meaning 1 for every predicted token.

Each example is shifted on its own, before packing::

    inputs  = tokens[:-1]
    targets = tokens[1:]
    weights = weights[1:]          # aligned with targets

so an example of n tokens fills n - 1 slots of a row, and the target at its last slot is its own
last token, never the first token of the example after it. With attention restricted to equal
segment ids (jaxalign.models.llama) and positions restarting at 0, every example's per-token
losses are exactly the ones it would have alone in a row: no example's loss depends on another.

A row is a dict of ``[seq_len]`` arrays::

    inputs       int32    padding: pad_id
    targets      int32    padding: pad_id
    weights      float32  padding: 0
    segment_ids  int32    1, 2, ... per example in the row (in packing order), 0 for padding
    positions    int32    0 .. len-1 per example, 0 for padding

and the loss of a batch of rows is ``sum(weights * nll(model(inputs), targets)) / sum(weights)``,
with ``model(inputs, positions=positions, segment_ids=segment_ids)``.

Examples with more than ``seq_len + 1`` tokens are truncated to their first ``seq_len + 1``
(``overflow="truncate"``, counted in PackStats.truncated) or rejected (``overflow="error"``).
Examples with fewer than 2 tokens predict nothing; they are dropped and counted.

Algorithm, and why grain's
--------------------------
Greedy first-fit over a window of ``num_bins`` open rows: each example goes into the first open
row with room; when it fits none, all open rows are emitted (in order) and a new window starts
with it. That is exactly ``grain.experimental.FirstFitPackIterDataset`` with
``shuffle_bins=False``, which fits cleanly: it already writes segment ids (1-based, 0 padding)
and restarting positions per feature, pads with a value per feature, and its iterator state
(the parent's state before the current window plus the number of rows emitted from it) is a
small dict that restores exactly, so `pack_dataset` is a thin wrapper and checkpointable for
free. A bounded window is also what a stream needs (unbounded first-fit never emits a row until
the data ends). `pack_examples` is the same algorithm in plain numpy, for lists (notebooks,
tests, small data) without building a pipeline; a test checks both give identical rows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import grain
import numpy as np

log = logging.getLogger(__name__)

Row = dict[str, np.ndarray]
Overflow = Literal["truncate", "error"]
ROW_FIELDS = ("inputs", "targets", "weights", "segment_ids", "positions")
_PIECE_FIELDS = ("inputs", "targets", "weights")


@dataclasses.dataclass
class PackStats:
    """Counts from packing. Pass one in as ``stats=`` to have it filled (it accumulates).

    For `pack_dataset` the counts are of what this process prepared since the object was made:
    they are not part of the iterator's checkpoint state and do not see grain worker processes.
    """

    seq_len: int = 0  # row length (set by the packer)
    examples: int = 0  # examples packed
    truncated: int = 0  # of those, cut to seq_len + 1 tokens
    dropped: int = 0  # fewer than 2 tokens: nothing to predict
    rows: int = 0
    slots: int = 0  # row slots holding a real target (rows * seq_len minus padding)

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.rows else 1.0 - self.slots / (self.rows * self.seq_len)


def shift_example(
    example: Mapping[str, Any], seq_len: int, overflow: Overflow = "truncate", where: str = "example"
) -> tuple[dict[str, np.ndarray] | None, bool]:
    """One example -> its shifted piece {inputs, targets, weights} (None if < 2 tokens), truncated?

    `where` names the example in error messages.
    """
    if not isinstance(example, Mapping) or "tokens" not in example:
        raise ValueError(
            f"{where}: expected a mapping with 'tokens' (and optional 'weights'), "
            f"got {type(example).__name__}"
            + (f" with keys {sorted(example)}" if isinstance(example, Mapping) else "")
        )
    tokens = np.asarray(example["tokens"])
    if tokens.ndim != 1 or (tokens.size and not np.issubdtype(tokens.dtype, np.integer)):
        raise ValueError(
            f"{where}: 'tokens' must be a 1-D sequence of integer ids, "
            f"got shape {tokens.shape} dtype {tokens.dtype}"
        )
    raw_weights = example.get("weights")
    if raw_weights is None:
        weights = np.ones(tokens.shape, np.float32)
    else:
        weights = np.asarray(raw_weights, np.float32)
        if weights.shape != tokens.shape:
            raise ValueError(
                f"{where}: 'weights' has shape {weights.shape} but 'tokens' has {tokens.shape}; "
                "there is one weight per token (the weight of predicting it)"
            )
        if not np.all(np.isfinite(weights)):
            raise ValueError(f"{where}: 'weights' contains NaN or Inf")
    truncated = tokens.size > seq_len + 1
    if truncated:
        if overflow == "error":
            raise ValueError(
                f"{where}: {tokens.size} tokens, but rows of seq_len={seq_len} hold at most "
                f"{seq_len + 1} (overflow='error'; use overflow='truncate' to cut it)"
            )
        tokens, weights = tokens[: seq_len + 1], weights[: seq_len + 1]
    if tokens.size < 2:
        return None, truncated
    piece = {
        "inputs": tokens[:-1].astype(np.int32),
        "targets": tokens[1:].astype(np.int32),
        "weights": np.ascontiguousarray(weights[1:]),
    }
    return piece, truncated


def _check_args(seq_len: int, num_bins: int, overflow: str) -> None:
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be positive, got {num_bins}")
    if overflow not in ("truncate", "error"):
        raise ValueError(f"overflow must be 'truncate' or 'error', got {overflow!r}")


def _make_row(pieces: list[dict[str, np.ndarray]], seq_len: int, pad_id: int) -> Row:
    row = {
        "inputs": np.full(seq_len, pad_id, np.int32),
        "targets": np.full(seq_len, pad_id, np.int32),
        "weights": np.zeros(seq_len, np.float32),
        "segment_ids": np.zeros(seq_len, np.int32),
        "positions": np.zeros(seq_len, np.int32),
    }
    start = 0
    for segment, piece in enumerate(pieces, start=1):
        end = start + len(piece["inputs"])
        for name in _PIECE_FIELDS:
            row[name][start:end] = piece[name]
        row["segment_ids"][start:end] = segment
        row["positions"][start:end] = np.arange(end - start, dtype=np.int32)
        start = end
    return row


def pack_examples(
    examples: Iterable[Mapping[str, Any]],
    seq_len: int,
    *,
    num_bins: int = 16,
    overflow: Overflow = "truncate",
    pad_id: int = 0,
    stats: PackStats | None = None,
) -> list[Row]:
    """Packs examples into rows of `seq_len` slots (see the module docstring for the layout).

    Deterministic: the same examples in the same order give the same rows, identical to
    `pack_dataset(..., shuffle_bins=False)` with the same `num_bins`.
    """
    _check_args(seq_len, num_bins, overflow)
    stats = PackStats() if stats is None else stats
    stats.seq_len = seq_len
    truncated_before = stats.truncated
    rows: list[Row] = []
    window: list[list[dict[str, np.ndarray]]] = []  # open rows: their pieces
    used: list[int] = []  # slots filled in each open row

    def emit() -> None:
        rows.extend(_make_row(pieces, seq_len, pad_id) for pieces in window)
        stats.rows += len(window)
        stats.slots += sum(used)
        window.clear()
        used.clear()

    for index, example in enumerate(examples):
        piece, truncated = shift_example(example, seq_len, overflow, where=f"example {index}")
        stats.truncated += truncated
        if piece is None:
            stats.dropped += 1
            continue
        stats.examples += 1
        n = len(piece["inputs"])
        fit = next((i for i, u in enumerate(used) if u + n <= seq_len), None)
        if fit is None and len(window) == num_bins:
            emit()
        if fit is None:
            window.append([])
            used.append(0)
            fit = len(window) - 1
        window[fit].append(piece)
        used[fit] += n
    emit()
    if stats.truncated > truncated_before:
        log.warning(
            "packing: truncated %d example(s) longer than seq_len + 1 = %d tokens",
            stats.truncated - truncated_before, seq_len + 1,
        )
    return rows


def pack_dataset(
    dataset: grain.MapDataset | grain.IterDataset,
    seq_len: int,
    *,
    num_bins: int = 16,
    overflow: Overflow = "truncate",
    pad_id: int = 0,
    shuffle_bins: bool = False,
    seed: int = 0,
    stats: PackStats | None = None,
) -> grain.IterDataset:
    """A grain dataset of examples -> a grain IterDataset of packed rows (same layout).

    ``it = iter(pack_dataset(...))``; ``it.get_state()`` is a small JSON-serialisable dict (for
    the parents grain provides) and ``set_state`` on a fresh iterator of the same pipeline
    resumes with exactly the following rows. With ``shuffle_bins=True`` the rows of each window
    come out in an order drawn from `seed` (still deterministic and resumable).
    """
    _check_args(seq_len, num_bins, overflow)
    stats = PackStats() if stats is None else stats
    stats.seq_len = seq_len
    if isinstance(dataset, grain.MapDataset):
        dataset = dataset.to_iter_dataset()

    def prepare(example: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        piece, truncated = shift_example(example, seq_len, overflow)
        if truncated:
            if not stats.truncated:
                log.warning("packing: truncating examples longer than seq_len + 1 = %d tokens",
                            seq_len + 1)
            stats.truncated += 1
        if piece is None:
            stats.dropped += 1
        else:
            stats.examples += 1
        return piece

    def to_row(packed: dict[str, np.ndarray]) -> Row:
        # grain writes segment ids and positions per feature; the three features of a piece
        # have equal lengths, so those of "inputs" serve all of them.
        row = {name: packed[name] for name in _PIECE_FIELDS}
        row["segment_ids"] = packed["inputs_segment_ids"]
        row["positions"] = packed["inputs_positions"]
        stats.rows += 1
        stats.slots += int(np.count_nonzero(row["segment_ids"]))
        return row

    pieces = dataset.map(prepare).filter(lambda piece: piece is not None)
    packed = grain.experimental.FirstFitPackIterDataset(
        pieces,
        length_struct={name: seq_len for name in _PIECE_FIELDS},
        num_packing_bins=num_bins,
        seed=seed,
        shuffle_bins=shuffle_bins,
        padding_struct={"inputs": pad_id, "targets": pad_id, "weights": 0.0},
    )
    return packed.map(to_row)
