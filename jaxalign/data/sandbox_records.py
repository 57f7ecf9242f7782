"""SANDBOX interaction records: one JSON object per line, one line per interaction.

A record holds what happened when one agent answered one question in one round (draft, peers'
ratings and reasons, revision, the observer's scores), which is all the alignment data and a resumed
simulation need. The schema (`RECORD_FIELDS`) is checked strictly, with errors naming file, line and
field, so that no sentinel or misaligned rating silently becomes a training target;
`InteractionError` carries a reason that a builder can count instead.

Details: docs/data.md#interaction-records-jaxaligndatasandbox_records
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from jaxalign import paths
from jaxalign.data import jsonl

SCALE_MIN, SCALE_MAX = 1, 7  # every rating and score is an integer on this scale

RECORD_FIELDS = (
    "agent_id", "label", "iteration", "question", "draft_answer", "target_id", "feedback", "rating",
    "revised_answer", "gen_moral_score_before", "gen_moral_score_after", "gen_moral_reason_before",
    "gen_moral_reason_after", "gen_engagement_score_before", "gen_engagement_score_after",
    "gen_engagement_reason_before", "gen_engagement_reason_after",
)
OPTIONAL_FIELDS = ("id",)
PEER_LISTS = ("target_id", "feedback", "rating")  # one entry per parsed peer rating, in step

REASONS = (
    "bad_utf8", "bad_json", "not_object", "duplicate_field", "missing_field", "unknown_field",
    "wrong_type", "empty_field", "out_of_range", "length_mismatch", "bad_text",
)

# What each field holds: a kind checked by `_check_value`.
_KINDS = {
    "agent_id": "count", "iteration": "count", "label": "name", "question": "name", "id": "name",
    "draft_answer": "text", "revised_answer": "text", "target_id": "counts", "feedback": "texts",
    "rating": "ratings", "gen_moral_score_before": "score", "gen_moral_score_after": "score",
    "gen_engagement_score_before": "optional_score", "gen_engagement_score_after": "optional_score",
    "gen_moral_reason_before": "text", "gen_moral_reason_after": "text",
    "gen_engagement_reason_before": "text", "gen_engagement_reason_after": "text",
}
_SCALE = f"an integer in {SCALE_MIN}..{SCALE_MAX}"


class InteractionError(jsonl.RecordError):
    """A malformed interaction record; the message is ``where: detail`` (``where`` is ``path:line``
    when read from a file), ``field`` names the field where there is one, ``reason`` is one of REASONS."""

    def __init__(self, where: str, message: str, field: str | None = None, reason: str = "wrong_type"):
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        # RecordError's own __init__ takes (path, line); `where` may be any place, e.g. "record 3".
        ValueError.__init__(self, f"{where}: {message}")
        path, _, line = where.rpartition(":")
        self.path, self.line = (path, int(line)) if path and line.isdigit() else (where, 0)
        self.where, self.detail, self.field, self.reason = where, message, field, reason


def record_id(iteration: int, agent_id: int) -> str:
    """The conventional id of a record: "r{iteration}-a{agent_id}" (one answer per agent and round)."""
    return f"r{iteration}-a{agent_id}"


# --------------------------------------------------------------------------- checking

def _type_name(value: Any) -> str:
    return jsonl._JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a number


def _check_text(value: Any, what: str, where: str, field: str, non_empty: bool) -> None:
    if not isinstance(value, str):
        raise InteractionError(where, f"{what} must be a string, got {_type_name(value)}", field)
    if non_empty and not value.strip():
        raise InteractionError(where, f"{what} must not be empty", field, "empty_field")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InteractionError(where, f"{what} contains an unpaired surrogate (a \\ud800-\\udfff escape)",
                                   field, "bad_text") from None


def _check_int(value: Any, what: str, where: str, field: str, low: int, high: int | None) -> None:
    expected = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
    if not _is_int(value):
        raise InteractionError(where, f"{what} must be {expected}, got {_type_name(value)}", field)
    if value < low or (high is not None and value > high):
        raise InteractionError(where, f"{what} must be {expected}, got {value}", field, "out_of_range")


def _check_list(value: Any, field: str, where: str, check_item) -> None:
    if not isinstance(value, list):
        raise InteractionError(where, f"field {field!r} must be an array, got {_type_name(value)}", field)
    for index, item in enumerate(value):
        check_item(item, f"field {field!r} item {index}")


def _check_value(field: str, value: Any, where: str) -> None:
    kind, what = _KINDS[field], f"field {field!r}"
    if kind == "count":
        _check_int(value, what, where, field, 0, None)
    elif kind in ("name", "text"):
        _check_text(value, what, where, field, non_empty=kind == "name")
    elif kind == "score" or (kind == "optional_score" and value is not None):
        _check_int(value, what, where, field, SCALE_MIN, SCALE_MAX)
    elif kind == "counts":
        _check_list(value, field, where, lambda item, w: _check_int(item, w, where, field, 0, None))
    elif kind == "texts":
        _check_list(value, field, where, lambda item, w: _check_text(item, w, where, field, non_empty=False))
    elif kind == "ratings":
        _check_list(value, field, where,
                    lambda item, w: _check_int(item, w, where, field, SCALE_MIN, SCALE_MAX))


def check_fields(record: Mapping[str, Any], fields: Sequence[str], where: str) -> None:
    """Checks that `record` has each of `fields` (names of RECORD_FIELDS) with a valid value, and that
    the peer lists among them are in step; other keys are not looked at. Raises InteractionError."""
    for field in fields:
        if field not in record:
            raise InteractionError(where, f"missing field {field!r}", field, "missing_field")
        _check_value(field, record[field], where)
    peers = [f for f in PEER_LISTS if f in fields]
    lengths = [len(record[f]) for f in peers]
    if len(set(lengths)) > 1:
        odd = next(f for f, n in zip(peers, lengths, strict=True) if n != lengths[0])
        shown = ", ".join(f"{f!r} {n}" for f, n in zip(peers, lengths, strict=True))
        raise InteractionError(where, f"field {odd!r}: the peer lists must have equal lengths, got {shown}",
                               odd, "length_mismatch")


def check_record(record: Any, where: str) -> dict[str, Any]:
    """`record` if it is a valid interaction record (see docs/data.md), else InteractionError
    naming `where` (e.g. "records.jsonl:17") and the field."""
    if not isinstance(record, dict):
        raise InteractionError(where, f"a record must be a JSON object, got {_type_name(record)}",
                               reason="not_object")
    for field in record:
        if field not in RECORD_FIELDS and field not in OPTIONAL_FIELDS:
            known = f"a record has {', '.join(RECORD_FIELDS)} and optionally {', '.join(OPTIONAL_FIELDS)}"
            raise InteractionError(where, f"unknown field {field!r} ({known})", field, "unknown_field")
    check_fields(record, RECORD_FIELDS, where)
    for field in OPTIONAL_FIELDS:
        if field in record:
            _check_value(field, record[field], where)
    return record


# --------------------------------------------------------------------------- reading

def parse_line(text: str, where: str) -> dict[str, Any]:
    """One line of JSON -> a checked record; InteractionError naming `where` otherwise."""
    try:
        record = json.loads(text, object_pairs_hook=jsonl._no_duplicates)
    except jsonl._DuplicateKey as e:
        key = e.args[0]
        raise InteractionError(where, f"field {key!r} appears twice", key, "duplicate_field") from None
    except json.JSONDecodeError as e:
        message = f"invalid JSON: {e.msg} (column {e.colno})"
        raise InteractionError(where, message, reason="bad_json") from None
    return check_record(record, where)


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str | InteractionError]]:
    """(1-based line number, text without its line break) of each non-blank line, or an
    InteractionError for a line that is not UTF-8; a byte-order mark on line 1 is dropped."""
    shown = os.fspath(path)
    with paths.path(path).open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, InteractionError(f"{shown}:{number}", f"not valid UTF-8 (byte {e.start + 1})",
                                               reason="bad_utf8")
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")
            if text.strip():
                # Without the line break, a JSON error's column refers to the line as shown.
                yield number, text.rstrip("\r\n")


def read_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yields the records of a JSONL records file one by one; the first malformed line raises
    InteractionError ("path:line: ..."), after the records before it were yielded."""
    shown = os.fspath(path)
    for number, item in read_lines(path):
        if isinstance(item, InteractionError):
            raise item
        yield parse_line(item, f"{shown}:{number}")


# --------------------------------------------------------------------------- writing

def format_record(record: Mapping[str, Any], where: str = "record") -> str:
    """One checked record as one line of JSON (with its "\\n"), fields in RECORD_FIELDS order.

    Non-ASCII text is written as is (ensure_ascii=False: the file stays readable); json escapes
    line breaks inside strings, so a record is always exactly one line.
    """
    check_record(dict(record), where)
    ordered = {field: record[field] for field in RECORD_FIELDS + OPTIONAL_FIELDS if field in record}
    return json.dumps(ordered, ensure_ascii=False) + "\n"


def append_records(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Appends `records` to the JSONL file `path` (local or a URL; created if missing); returns how many.

    Every record is checked before anything is written, so a bad record leaves the file as it
    was; the lines go out in one write and are durable (`paths.append`: fsynced locally, one
    object upload on a bucket) before returning, so a round that `append_records` returned from
    survives a crash.
    """
    lines = [format_record(record, f"record {index}") for index, record in enumerate(records)]
    if lines:
        paths.append(path, "".join(lines).encode("utf-8"))
    return len(lines)
