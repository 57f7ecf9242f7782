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

Multi-part examples (sequences that must be trained together, e.g. DPO's chosen and rejected)
----------------------------------------------------------------------------------------------
An example may instead be ``{"parts": [part, part, ...]}``, each part a mapping like a
single-part example (``{"tokens", "weights"}``). Every part is shifted on its own, so no part
predicts into the next, and the parts go into the SAME row as CONSECUTIVE segments: an example
of P parts packed after k segments has segment ids k+1 .. k+P, positions restarting at 0 in each
part. A loss can thus find the parts of an example by segment id (e.g. DPO: segments 2j-1 and 2j
of a row are the chosen and rejected of pair j). A single-part example (plain or ``parts`` of
one) packs exactly as described above. If the parts together need more than ``seq_len`` slots,
``overflow="error"`` rejects the example and ``"truncate"`` cuts every part to its first
``c + 1`` tokens, ``c`` the largest cap with ``sum(min(slots_i, c)) <= seq_len`` (water-filling:
long parts are cut to equal length, short ones are kept whole; more parts than ``seq_len`` is an
error). An example with a part of fewer than 2 tokens is dropped whole (counted), so every packed
example keeps all its parts.

Extra per-token fields
----------------------
``fields=("ul_weights",)`` (pack_examples / pack_dataset) carries further per-token float
features through packing, shifted like weights: ``ul_weights[i]``, the weight of pushing DOWN the
probability of predicting ``tokens[i]`` (unlikelihood training), becomes row["ul_weights"] aligned
with targets. An example (or part) without the field gets 0, as does padding; per-token keys
not named in `fields` are ignored.

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
the data ends). Grain packs a whole example as one piece; the piece carries a per-token "part"
feature (1..P), and a row's segment ids and positions are recomputed from where (example, part)
changes, the same function for both packers. `pack_examples` is the same algorithm in plain
numpy, for lists (notebooks, tests, small data) without building a pipeline; a test checks both
give identical rows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import grain
import numpy as np

log = logging.getLogger(__name__)

Row = dict[str, np.ndarray]
Overflow = Literal["truncate", "error"]
ROW_FIELDS = ("inputs", "targets", "weights", "segment_ids", "positions")
_PIECE_FIELDS = ("inputs", "targets", "weights")
_PART = "part"  # per-token feature of a piece: which part of its example (1..P) a slot belongs to
_RESERVED = frozenset({*ROW_FIELDS, _PART, "tokens", "parts"})


@dataclasses.dataclass
class PackStats:
    """Counts from packing. Pass one in as ``stats=`` to have it filled (it accumulates).

    For `pack_dataset` the counts are of what this process prepared since the object was made:
    they are not part of the iterator's checkpoint state and do not see grain worker processes.
    """

    seq_len: int = 0  # row length (set by the packer)
    examples: int = 0  # examples packed
    truncated: int = 0  # of those, cut to fit seq_len slots
    dropped: int = 0  # fewer than 2 tokens (in some part): nothing to predict
    rows: int = 0
    slots: int = 0  # row slots holding a real target (rows * seq_len minus padding)

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.rows else 1.0 - self.slots / (self.rows * self.seq_len)


def _per_token(
    part: Mapping[str, Any], name: str, tokens: np.ndarray, default: float, where: str
) -> np.ndarray:
    """The float32 per-token field `name` of a part (`default` everywhere when absent), checked."""
    raw = part.get(name)
    if raw is None:
        return np.full(tokens.shape, default, np.float32)
    values = np.asarray(raw, np.float32)
    if values.shape != tokens.shape:
        raise ValueError(
            f"{where}: {name!r} has shape {values.shape} but 'tokens' has {tokens.shape}; "
            "there is one weight per token (the weight of predicting it)"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{where}: {name!r} contains NaN or Inf")
    return values


def _read_part(part: Any, fields: Sequence[str], where: str) -> dict[str, np.ndarray]:
    """One {"tokens", "weights", *fields} mapping -> checked arrays (tokens kept as given)."""
    if not isinstance(part, Mapping) or "tokens" not in part:
        raise ValueError(
            f"{where}: expected a mapping with 'tokens' (and optional 'weights'), "
            f"got {type(part).__name__}"
            + (f" with keys {sorted(part)}" if isinstance(part, Mapping) else "")
        )
    tokens = np.asarray(part["tokens"])
    if tokens.ndim != 1 or (tokens.size and not np.issubdtype(tokens.dtype, np.integer)):
        raise ValueError(
            f"{where}: 'tokens' must be a 1-D sequence of integer ids, "
            f"got shape {tokens.shape} dtype {tokens.dtype}"
        )
    arrays = {"tokens": tokens, "weights": _per_token(part, "weights", tokens, 1.0, where)}
    for name in fields:
        arrays[name] = _per_token(part, name, tokens, 0.0, where)
    return arrays


def _parts(example: Any, where: str) -> list[tuple[Any, str]]:
    """The parts of an example with their names for errors: [(example, where)] if single-part."""
    if not isinstance(example, Mapping) or "parts" not in example:
        return [(example, where)]
    if "tokens" in example:
        raise ValueError(f"{where}: has both 'tokens' and 'parts'; an example is one or the other")
    parts = example["parts"]
    if isinstance(parts, (str, bytes, Mapping)) or not isinstance(parts, Sequence) or not parts:
        raise ValueError(f"{where}: 'parts' must be a non-empty list of {{'tokens', 'weights'}} mappings, "
                         f"got {type(parts).__name__}")
    return [(part, f"{where} part {i}") for i, part in enumerate(parts)]


def _water_fill(slots: list[int], seq_len: int) -> int:
    """The largest cap c with sum(min(s, c) for s in slots) <= seq_len (0 if even c = 1 is too much)."""
    left, remaining = len(slots), seq_len
    for s in sorted(slots):
        if s * left > remaining:  # this part and all longer ones share what is left equally
            return remaining // left
        remaining -= s
        left -= 1
    return max(slots)


def shift_example(
    example: Mapping[str, Any],
    seq_len: int,
    overflow: Overflow = "truncate",
    where: str = "example",
    fields: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray] | None, bool]:
    """One example -> its shifted piece (None if it predicts nothing) and whether it was truncated.

    The piece holds inputs, targets, weights, the `fields` and "part" (1..P per slot), the shifted
    parts one after the other. `where` names the example in error messages.
    """
    parts = [_read_part(part, fields, name) for part, name in _parts(example, where)]
    slots = [max(part["tokens"].size - 1, 0) for part in parts]
    if min(slots) == 0:  # a part that predicts nothing: drop the example, not just the part
        return None, False
    truncated = sum(slots) > seq_len
    if truncated:
        size = sum(part["tokens"].size for part in parts)
        if overflow == "error":
            if len(parts) == 1:
                raise ValueError(
                    f"{where}: {size} tokens, but rows of seq_len={seq_len} hold at most "
                    f"{seq_len + 1} (overflow='error'; use overflow='truncate' to cut it)"
                )
            raise ValueError(
                f"{where}: its {len(parts)} parts ({size} tokens) need {sum(slots)} slots, but rows of "
                f"seq_len={seq_len} have {seq_len} (overflow='error'; use overflow='truncate' to cut them)"
            )
        cap = _water_fill(slots, seq_len)
        if cap < 1:
            raise ValueError(f"{where}: {len(parts)} parts cannot share a row of seq_len={seq_len}")
        parts = [{name: values[: cap + 1] for name, values in part.items()} for part in parts]
    names = ("weights", *fields)
    piece = {
        "inputs": np.concatenate([part["tokens"][:-1] for part in parts]).astype(np.int32),
        "targets": np.concatenate([part["tokens"][1:] for part in parts]).astype(np.int32),
        **{name: np.concatenate([part[name][1:] for part in parts]) for name in names},
        _PART: np.concatenate([np.full(part["tokens"].size - 1, i, np.int32)
                               for i, part in enumerate(parts, start=1)]),
    }
    return piece, truncated


def _segments(example_ids: np.ndarray, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids and positions of a row from its per-slot example ids (0: padding) and parts.

    A segment starts wherever (example, part) changes; ids count up from 1, positions from 0.
    """
    real = example_ids > 0
    starts = real.copy()
    starts[1:] &= (example_ids[1:] != example_ids[:-1]) | (part[1:] != part[:-1])
    index = np.arange(example_ids.size)
    first = np.maximum.accumulate(np.where(starts, index, 0))
    segment_ids = np.where(real, np.cumsum(starts), 0).astype(np.int32)
    positions = np.where(real, index - first, 0).astype(np.int32)
    return segment_ids, positions


def _check_args(seq_len: int, num_bins: int, overflow: str, fields: Sequence[str]) -> tuple[str, ...]:
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be positive, got {num_bins}")
    if overflow not in ("truncate", "error"):
        raise ValueError(f"overflow must be 'truncate' or 'error', got {overflow!r}")
    if isinstance(fields, str):
        raise ValueError(f"fields must be a sequence of names, e.g. ({fields!r},), got the string {fields!r}")
    fields = tuple(fields)
    bad = [name for name in fields if not isinstance(name, str) or name in _RESERVED]
    if bad or len(set(fields)) != len(fields):
        raise ValueError(f"fields={fields!r}: extra per-token fields need distinct names other than "
                         f"{sorted(_RESERVED)}")
    return fields


def _make_row(pieces: list[dict[str, np.ndarray]], seq_len: int, pad_id: int, fields: tuple[str, ...]) -> Row:
    row = {
        "inputs": np.full(seq_len, pad_id, np.int32),
        "targets": np.full(seq_len, pad_id, np.int32),
        **{name: np.zeros(seq_len, np.float32) for name in ("weights", *fields)},
    }
    example_ids, part = np.zeros(seq_len, np.int32), np.zeros(seq_len, np.int32)
    start = 0
    for index, piece in enumerate(pieces, start=1):
        end = start + len(piece["inputs"])
        for name in row:
            row[name][start:end] = piece[name]
        example_ids[start:end] = index
        part[start:end] = piece[_PART]
        start = end
    row["segment_ids"], row["positions"] = _segments(example_ids, part)
    return row


def pack_examples(
    examples: Iterable[Mapping[str, Any]],
    seq_len: int,
    *,
    num_bins: int = 16,
    overflow: Overflow = "truncate",
    pad_id: int = 0,
    fields: Sequence[str] = (),
    stats: PackStats | None = None,
) -> list[Row]:
    """Packs examples into rows of `seq_len` slots (see the module docstring for the layout).

    `fields` names extra per-token float fields to carry (e.g. ``("ul_weights",)``).
    Deterministic: the same examples in the same order give the same rows, identical to
    `pack_dataset(..., shuffle_bins=False)` with the same `num_bins`.
    """
    fields = _check_args(seq_len, num_bins, overflow, fields)
    stats = PackStats() if stats is None else stats
    stats.seq_len = seq_len
    truncated_before = stats.truncated
    rows: list[Row] = []
    window: list[list[dict[str, np.ndarray]]] = []  # open rows: their pieces
    used: list[int] = []  # slots filled in each open row

    def emit() -> None:
        rows.extend(_make_row(pieces, seq_len, pad_id, fields) for pieces in window)
        stats.rows += len(window)
        stats.slots += sum(used)
        window.clear()
        used.clear()

    for index, example in enumerate(examples):
        piece, truncated = shift_example(example, seq_len, overflow, where=f"example {index}", fields=fields)
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
            "packing: truncated %d example(s) longer than seq_len = %d slots",
            stats.truncated - truncated_before, seq_len,
        )
    return rows


def pack_dataset(
    dataset: grain.MapDataset | grain.IterDataset,
    seq_len: int,
    *,
    num_bins: int = 16,
    overflow: Overflow = "truncate",
    pad_id: int = 0,
    fields: Sequence[str] = (),
    shuffle_bins: bool = False,
    seed: int = 0,
    stats: PackStats | None = None,
) -> grain.IterDataset:
    """A grain dataset of examples -> a grain IterDataset of packed rows (same layout).

    ``it = iter(pack_dataset(...))``; ``it.get_state()`` is a small JSON-serialisable dict (for
    the parents grain provides) and ``set_state`` on a fresh iterator of the same pipeline
    resumes with exactly the following rows. With ``shuffle_bins=True`` the rows of each window
    come out in an order drawn from `seed` (still deterministic and resumable). `fields` as in
    `pack_examples`.
    """
    fields = _check_args(seq_len, num_bins, overflow, fields)
    stats = PackStats() if stats is None else stats
    stats.seq_len = seq_len
    if isinstance(dataset, grain.MapDataset):
        dataset = dataset.to_iter_dataset()
    piece_fields = (*_PIECE_FIELDS, *fields, _PART)

    def prepare(example: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        piece, truncated = shift_example(example, seq_len, overflow, fields=fields)
        if truncated:
            if not stats.truncated:
                log.warning("packing: truncating examples longer than seq_len = %d slots", seq_len)
            stats.truncated += 1
        if piece is None:
            stats.dropped += 1
        else:
            stats.examples += 1
        return piece

    def to_row(packed: dict[str, np.ndarray]) -> Row:
        # grain numbers whole pieces (examples); every feature of a piece has the same length, so
        # the segment ids of "inputs" serve all of them. Parts become segments of their own.
        row = {name: packed[name] for name in piece_fields if name != _PART}
        row["segment_ids"], row["positions"] = _segments(packed["inputs_segment_ids"], packed[_PART])
        stats.rows += 1
        stats.slots += int(np.count_nonzero(row["segment_ids"]))
        return row

    pieces = dataset.map(prepare).filter(lambda piece: piece is not None)
    packed = grain.experimental.FirstFitPackIterDataset(
        pieces,
        length_struct={name: seq_len for name in piece_fields},
        num_packing_bins=num_bins,
        seed=seed,
        shuffle_bins=shuffle_bins,
        padding_struct={"inputs": pad_id, "targets": pad_id, "weights": 0.0, _PART: 0,
                        **{name: 0.0 for name in fields}},
    )
    return packed.map(to_row)
