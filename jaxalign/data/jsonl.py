"""JSONL reader for user data: one JSON object per line, checked against a record schema.

The schemas (`SCHEMAS`: ``text``, ``preference``, ``labelled``, ``group``, each with an optional
``"id"``) and the reading rules are in docs/data.md. The file is read one line at a time, and any
record that does not fit its schema (invalid JSON, a missing, unknown, wrongly typed or empty
field, ...) raises `RecordError` naming the file, line and field, e.g.
``data/train.jsonl:17: field 'chosen' must be a string, got int``: a misspelt field must not be
silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from jaxalign import paths


class RecordError(ValueError):
    """A malformed record: the message starts with ``path:line:``."""

    def __init__(self, path: str, line: int, message: str, field: str | None = None):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.field = path, line, field


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    types: tuple[type, ...]  # accepted Python types of the decoded JSON value
    required: bool = True
    allow_empty: bool = False  # for strings: may be "" or whitespace only
    check: Callable[[str, Any], str | None] | None = None  # (name, value of the right type) -> error


@dataclasses.dataclass(frozen=True)
class Schema:
    name: str
    fields: tuple[Field, ...]
    # Checks between fields, once each field is fine: record -> (message, field) or None.
    check: Callable[[dict[str, Any]], tuple[str, str] | None] | None = None

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)

    @property
    def allowed(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


_ID = Field("id", (str, int), required=False, allow_empty=True)
GROUP_STAGES = ("imitation", "self_critic", "realignment")


def _string_error(name: str, value: str, allow_empty: bool) -> str | None:
    if not allow_empty and not value.strip():
        return f"field {name} must not be empty"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"field {name} contains an unpaired surrogate (a \\ud800-\\udfff escape)"
    return None


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _non_empty(name: str, values: list[Any]) -> str | None:
    return None if values else f"field {name} must not be empty (a group has at least one response)"


def _responses(name: str, values: list[Any]) -> str | None:
    for i, value in enumerate(values):
        if not isinstance(value, str):
            return f"field {name}[{i}] must be a string, got {_json_type(value)}"
        message = _string_error(f"{name}[{i}]", value, allow_empty=False)
        if message:
            return message
    return _non_empty(name, values)


def _binary(name: str, value: int) -> str | None:
    return None if value in (0, 1) else f"field {name} must be 0 or 1 (bad or good), got {value}"


def _ratings(name: str, values: list[Any]) -> str | None:
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"field {name}[{i}] must be a number, got {_json_type(value)}"
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond float range
            finite = False
        if not finite:
            return f"field {name}[{i}] must be a finite number, got {json.dumps(value)}"
    return _non_empty(name, values)


def _stage(name: str, value: str) -> str | None:
    if value not in GROUP_STAGES:
        return f"field {name} must be one of {_quoted(GROUP_STAGES)}, got {value!r}"
    return None


def _same_lengths(record: dict[str, Any]) -> tuple[str, str] | None:
    n, m = len(record["responses"]), len(record["ratings"])
    if n == m:
        return None
    message = f"field 'ratings' has {m} values but 'responses' has {n}; there is one rating per response"
    return message, "ratings"


SCHEMAS: dict[str, Schema] = {
    "text": Schema("text", (Field("text", (str,)), _ID)),
    "preference": Schema(
        "preference",
        (Field("prompt", (str,), allow_empty=True), Field("chosen", (str,)), Field("rejected", (str,)), _ID),
    ),
    "labelled": Schema(
        "labelled",
        (Field("prompt", (str,), required=False, allow_empty=True), Field("text", (str,)),
         Field("label", (int,), check=_binary), _ID),
    ),
    "group": Schema(
        "group",
        (Field("prompt", (str,), allow_empty=True), Field("responses", (list,), check=_responses),
         Field("ratings", (list,), check=_ratings), Field("stage", (str,), required=False, check=_stage),
         _ID),
        check=_same_lengths,
    ),
}

_JSON_TYPE_NAMES = {str: "string", int: "int", float: "float", bool: "bool", type(None): "null",
                    list: "array", dict: "object"}
_EXPECTED_NAMES = {(str,): "a string", (str, int): "a string or an integer", (list,): "an array"}


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(repr(n) for n in names)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    pass


def _field_error(field: Field, value: Any) -> str | None:
    # bool is an int subclass in Python, but true/false is not an integer id in JSON terms.
    if isinstance(value, bool) or not isinstance(value, field.types):
        expected = _EXPECTED_NAMES.get(field.types, " or ".join(t.__name__ for t in field.types))
        return f"field {field.name!r} must be {expected}, got {_json_type(value)}"
    if isinstance(value, str):
        message = _string_error(repr(field.name), value, field.allow_empty)
        if message:
            return message
    return field.check(repr(field.name), value) if field.check is not None else None


def parse_record(text: str, schema: Schema, path: str, line: int) -> dict[str, Any]:
    """One line of JSON -> a checked record; raises RecordError naming path:line."""
    try:
        record = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise RecordError(path, line, f"field {e.args[0]!r} appears twice", e.args[0]) from None
    except json.JSONDecodeError as e:
        raise RecordError(path, line, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(record, dict):
        got = _JSON_TYPE_NAMES.get(type(record), type(record).__name__)
        raise RecordError(path, line, f"a record must be a JSON object, got {got}")
    for name in schema.required:
        if name not in record:
            raise RecordError(
                path, line, f"missing field {name!r} ({schema.name} records need {_quoted(schema.required)})",
                name,
            )
    for name in record:
        if name not in schema.allowed:
            raise RecordError(
                path, line, f"unknown field {name!r} ({schema.name} records allow {_quoted(schema.allowed)})",
                name,
            )
    for field in schema.fields:
        if field.name in record:
            message = _field_error(field, record[field.name])
            if message:
                raise RecordError(path, line, message, field.name)
    problem = schema.check(record) if schema.check is not None else None
    if problem:
        raise RecordError(path, line, *problem)
    return record


def read_records(path: str | os.PathLike, schema: str | Schema) -> Iterator[dict[str, Any]]:
    """Yields the records of a JSONL file one by one, checked against `schema`.

    `path` is local or a URL (``gs://...``). `schema` is a name in SCHEMAS ("text", "preference",
    "labelled", "group") or a Schema. Blank lines are skipped. The first malformed line raises
    RecordError ("path:line: ..."); records before it have already been yielded.
    """
    if isinstance(schema, str):
        if schema not in SCHEMAS:
            raise ValueError(f"unknown record schema {schema!r}; known: {', '.join(SCHEMAS)}")
        schema = SCHEMAS[schema]
    shown = os.fspath(path)
    with paths.path(path).open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(shown, line_number, f"not valid UTF-8 (byte {e.start + 1})") from None
            if line_number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            # Without the line break, a JSON error's column refers to the line as shown.
            yield parse_record(text.rstrip("\r\n"), schema, shown, line_number)
