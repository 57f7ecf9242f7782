"""Packing: variable-length examples -> fixed-length rows in which no example sees another.

An example ``{"tokens": int [n], "weights": float [n]}`` (``weights[i]``: the loss weight of
predicting ``tokens[i]`` from ``tokens[:i]``), or ``{"parts": [...]}`` of such parts that must share
a row, is shifted on its own (inputs ``tokens[:-1]``, targets ``tokens[1:]``) and packed into rows
of ``[seq_len]`` arrays inputs, targets, weights, segment_ids (1, 2, ... per example, 0 for padding)
and positions (restarting at 0 per example), so that with attention restricted to equal segment
ids every example's loss is exactly what it would be alone in a row. `pack_dataset` is a thin,
checkpointable wrapper over grain's first-fit packer and `pack_examples` the same algorithm in
numpy. The convention in full (read it before writing a loss), multi-part examples, truncation,
extra per-token fields and the algorithm are in docs/data.md.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # imported where used: scoring and generation need no grain (0.7 s at start-up)
    import grain

log = logging.getLogger(__name__)

Row = dict[str, np.ndarray]
Overflow = Literal["truncate", "error"]
ROW_FIELDS = ("inputs", "targets", "weights", "segment_ids", "positions")
_PIECE_FIELDS = ("inputs", "targets", "weights")
_PART = "part"  # per-token feature of a piece: which part of its example (1..P) a slot belongs to
_RESERVED = frozenset({*ROW_FIELDS, _PART, "tokens", "parts"})

# PackStats.report warns when truncation cuts more than this share of the loss-weighted tokens.
TRUNCATION_WARN_FRACTION = 0.10


class TruncationWarning(UserWarning):
    """Truncation to a row length (or a model's context) cut a large share of what is trained or scored."""


@dataclasses.dataclass
class PackStats:
    """Counts from packing. Pass one in as ``stats=`` to have it filled (it accumulates).

    Token counts are of predicted tokens (targets: an example of n tokens predicts n - 1), before
    truncation, and of those cut off by it; "weighted" sums their loss weights (with 0/1 weights:
    the tokens the loss trains on, e.g. the feedback and response). `truncation_stats()` sums them up
    and `report()` logs that and warns above TRUNCATION_WARN_FRACTION.

    For `pack_dataset` the counts are of what this process prepared since the object was made:
    they are not part of the iterator's checkpoint state and do not see grain worker processes.
    """

    seq_len: int = 0  # row length (set by the packer)
    examples: int = 0  # examples packed
    truncated: int = 0  # of those, cut to fit seq_len slots
    dropped: int = 0  # fewer than 2 tokens (in some part): nothing to predict
    rows: int = 0
    slots: int = 0  # row slots holding a real target (rows * seq_len minus padding)
    tokens: int = 0  # predicted tokens of the examples packed, before truncation
    tokens_cut: int = 0  # of those, cut off by truncation
    weighted_tokens: float = 0.0  # summed loss weights of those tokens, before truncation
    weighted_tokens_cut: float = 0.0  # of those, on tokens cut off by truncation

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.rows else 1.0 - self.slots / (self.rows * self.seq_len)

    @property
    def weighted_tokens_kept(self) -> float:
        """The share of the loss weight that survives truncation (1.0 when there is none yet)."""
        if self.weighted_tokens <= 0:
            return 1.0
        return 1.0 - self.weighted_tokens_cut / self.weighted_tokens

    def truncation_stats(self) -> dict[str, Any]:
        """What truncation cut, as a JSON-ready dict: examples seen (packed + dropped for predicting
        nothing) and truncated, predicted tokens and weighted tokens seen and cut, and the kept share
        of the weighted tokens ("weighted_tokens_kept", 0-1)."""
        return {
            "seq_len": self.seq_len,
            "examples": self.examples + self.dropped,
            "examples_truncated": self.truncated,
            "tokens": self.tokens,
            "tokens_cut": self.tokens_cut,
            "weighted_tokens": self.weighted_tokens,
            "weighted_tokens_cut": self.weighted_tokens_cut,
            "weighted_tokens_kept": self.weighted_tokens_kept,
        }

    def report(self, name: str = "", threshold: float = TRUNCATION_WARN_FRACTION) -> dict[str, Any]:
        """Logs `truncation_stats()` in one line and, when more than `threshold` of the weighted
        tokens were cut, warns (TruncationWarning) naming seq_len; returns the stats. `name` says
        which stream (e.g. "feedback")."""
        stats = self.truncation_stats()
        label = f"packing ({name})" if name else "packing"
        log.info(
            "%s: %d of %d examples cut to seq_len=%d (%d of %d predicted tokens); %.1f%% of the "
            "weighted (loss) tokens kept",
            label, self.truncated, stats["examples"], self.seq_len, self.tokens_cut, self.tokens,
            100 * self.weighted_tokens_kept,
        )
        cut = self.weighted_tokens_cut / self.weighted_tokens if self.weighted_tokens > 0 else 0.0
        if cut > threshold:
            warnings.warn(
                f"{label}: truncation to seq_len={self.seq_len} cut {100 * cut:.1f}% of the weighted "
                f"(loss) tokens, more than {100 * threshold:g}% ({self.truncated} of {stats['examples']} "
                f"examples are longer than seq_len + 1 tokens); raise seq_len, or use a tokenizer with "
                "more pieces (a larger vocabulary) so that the texts take fewer tokens",
                TruncationWarning, stacklevel=2,
            )
        return stats

    def _count(self, piece: dict[str, np.ndarray] | None, truncated: bool, seen: tuple[int, float]) -> None:
        """Adds one example: its shifted piece (None: dropped), whether it was cut, and its predicted
        tokens and summed weights before the cut."""
        if piece is None:
            self.dropped += 1
            return
        self.examples += 1
        self.truncated += truncated
        tokens, weight = seen
        self.tokens += tokens
        self.weighted_tokens += weight
        if truncated:
            self.tokens_cut += tokens - len(piece["inputs"])
            self.weighted_tokens_cut += weight - float(piece["weights"].sum(dtype=np.float64))

    def add(self, other: PackStats) -> None:
        """Adds `other`'s counts to these (seq_len: `other`'s)."""
        self.seq_len = other.seq_len
        for field in dataclasses.fields(self):
            if field.name != "seq_len":
                setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


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
    piece, truncated, _ = _shift(example, seq_len, overflow, where, fields)
    return piece, truncated


def _shift(
    example: Mapping[str, Any], seq_len: int, overflow: Overflow, where: str, fields: Sequence[str],
) -> tuple[dict[str, np.ndarray] | None, bool, tuple[int, float]]:
    """`shift_example`, and the example's predicted tokens and summed weights before any cut."""
    parts = [_read_part(part, fields, name) for part, name in _parts(example, where)]
    slots = [max(part["tokens"].size - 1, 0) for part in parts]
    if min(slots) == 0:  # a part that predicts nothing: drop the example, not just the part
        return None, False, (0, 0.0)
    seen = (sum(slots), float(sum(part["weights"][1:].sum(dtype=np.float64) for part in parts)))
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
    return piece, truncated, seen


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
    total = PackStats() if stats is None else stats
    stats = PackStats(seq_len=seq_len)  # this call's counts, added to `total` at the end
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
        piece, truncated, seen = _shift(example, seq_len, overflow, f"example {index}", fields)
        stats._count(piece, truncated, seen)
        if piece is None:
            continue
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
    total.add(stats)
    if stats.truncated:
        stats.report()  # this call's: logged, and a warning if much of the loss weight was cut
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
    import grain

    fields = _check_args(seq_len, num_bins, overflow, fields)
    stats = PackStats() if stats is None else stats
    stats.seq_len = seq_len
    if isinstance(dataset, grain.MapDataset):
        dataset = dataset.to_iter_dataset()
    piece_fields = (*_PIECE_FIELDS, *fields, _PART)

    def prepare(example: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        piece, truncated, seen = _shift(example, seq_len, overflow, "example", fields)
        if truncated and not stats.truncated:
            log.info("packing: truncating examples longer than seq_len + 1 = %d tokens (counted in "
                     "PackStats; the trainer reports the share cut after its first steps)", seq_len + 1)
        stats._count(piece, truncated, seen)
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
