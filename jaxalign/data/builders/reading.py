"""Reading the upstream files of the dataset builders into records, and why a line is skipped.

The helpers every upstream builder shares: the record schemas they write (preference, labelled,
text; `LABELLED_FEATURES`, `TEXT_FEATURES`), JSON-lines and CSV readers that keep each record's
``<file>:<line>`` id, and `Skip` with its reasons (`SKIPPED`, `MALFORMED`), so that an unusable
upstream line is counted by reason instead of failing the build.

Details: docs/data.md#how-a-data-set-is-built-jaxaligndatabuilders
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import io
import json
import logging
import lzma
import os
import pathlib
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, ClassVar, NamedTuple

from etils import epath

from jaxalign import paths

SKIPPED = ("tie", "duplicate", "neutral", "no_safe_response")
MALFORMED = (
    "bad_utf8", "bad_json", "wrong_type", "missing_field", "empty_field", "bad_text",
    "unparsable_dialogue", "prompt_mismatch", "question_mismatch", "bad_choice", "unknown_split",
    "bad_csv", "bad_label", "label_conflict",
)


class QuietBuild:
    """For tfds builders of local files: tfds prints "Downloading and preparing dataset Unknown
    size..." before a build and "downloaded" after it, though nothing is downloaded; log what
    happens instead (mix in before tfds.core.GeneratorBasedBuilder)."""

    def _log_download_bytes(self) -> None:
        logging.getLogger(__name__).info("building %s from local files into %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.getLogger(__name__).info("built %s in %s", self.name, self.data_dir)


class Skip(ValueError):
    """A line that gives no record; ``reason`` is one of `REASONS` (SKIPPED or MALFORMED).

    A builder with reasons of its own (sandbox.py) subclasses it with its own REASONS; the helpers
    here raise this class, so such a builder catches this class.
    """

    REASONS: ClassVar[tuple[str, ...]] = SKIPPED + MALFORMED

    def __init__(self, reason: str, detail: str = ""):
        if reason not in self.REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class SourceFile(NamedTuple):
    path: epath.Path  # a local path or a URL (gs://...)
    name: str  # the path relative to the source directory, as ids and reports show it
    split: str | None  # the split of all its records, or None where parse_line gives each one's


Record = dict[str, Any]  # str fields, and an int "label" in the labelled schema
ParseLine = Callable[[Any], Record]  # a line (str), or a CSV row (dict[str, str]) -> record; raises Skip
Reader = Callable[[epath.Path], Iterator[tuple[int, Any]]]  # path -> (line, item or Skip) for each item


# --------------------------------------------------------------------------- parsing helpers

_JSON_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
                    list: "an array", dict: "an object", type(None): "null"}


def type_name(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise Skip("bad_json", f"{e.msg} (column {e.colno})") from None


def need(value: Any, types: type | tuple[type, ...], what: str) -> Any:
    """`value`, which must be one of `types` (a JSON true/false is never a number here)."""
    if isinstance(value, bool) or not isinstance(value, types):
        raise Skip("wrong_type", f"{what} is {type_name(value)}")
    return value


def get(obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str = "") -> Any:
    """obj[key], which must be one of `types`; a JSON null counts as missing."""
    value = obj.get(key)
    if value is None:
        raise Skip("missing_field", f"no {where + key!r}")
    return need(value, types, repr(where + key))


def make_pair(prompt: str, chosen: str, rejected: str, **extra: str) -> Record:
    """The record of a comparison: responses stripped, nothing empty or unencodable, no tie."""
    chosen, rejected = chosen.strip(), rejected.strip()
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not value.strip():
            raise Skip("empty_field", f"empty {name}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Skip("bad_text", f"{name} contains an unpaired surrogate") from None
    if chosen == rejected:
        raise Skip("tie", "identical responses")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def make_labelled(prompt: str, text: str, label: int, **extra: str) -> Record:
    """The record of a labelled text: text stripped and not empty (the prompt may be), nothing unencodable.

    `label` is 1 for a text aligned with the dataset's values, 0 for one that is not; ``extra`` text
    fields (e.g. MIC's rule of thumb) are kept as given.
    """
    if label not in (0, 1):
        raise ValueError(f"a label is 0 or 1, got {label!r}")
    text = text.strip()
    if not text:
        raise Skip("empty_field", "empty text")
    for name, value in (("prompt", prompt), ("text", text), *extra.items()):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Skip("bad_text", f"{name} contains an unpaired surrogate") from None
    return {"prompt": prompt, "text": text, "label": label, **extra}


def make_text(text: str, **extra: str) -> Record:
    """The record of a single text: stripped and not empty, nothing unencodable (``extra`` kept as given)."""
    text = text.strip()
    if not text:
        raise Skip("empty_field", "empty text")
    for name, value in (("text", text), *extra.items()):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Skip("bad_text", f"{name} contains an unpaired surrogate") from None
    return {"text": text, **extra}


# --------------------------------------------------------------------------- reading files

def one_of(directory: epath.Path, names: Sequence[str], what: str) -> epath.Path:
    """The one file of `names` (alternative spellings, e.g. x.jsonl.gz, x.jsonl) in `directory`."""
    found = [directory / n for n in names if (directory / n).is_file()]
    if not found:
        raise FileNotFoundError(f"{directory}: no {' or '.join(names)} ({what})")
    if len(found) > 1:
        raise ValueError(f"{directory}: both {found[0].name} and {found[1].name}; keep one of them")
    return found[0]


def require_dir(path: epath.Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory ({what})")


def glob(directory: epath.Path, pattern: str) -> list[epath.Path]:
    """The paths below `directory` (local or a URL) that match `pattern`. A local directory is
    globbed through pathlib as before: epath's local glob is glob.glob, which would take a "[" in
    the directory's own name for a pattern and leaves hidden files out."""
    if paths.is_url(directory):
        return list(directory.glob(pattern))
    return [epath.Path(p) for p in pathlib.Path(directory).glob(pattern)]


@contextlib.contextmanager
def open_binary(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """`path` (local or a URL) opened for reading bytes, decompressed for a .gz or .xz name. The
    file is opened through epath, so a bucket's object streams like a local file."""
    with paths.path(path).open("rb") as raw:
        name = os.fspath(path)
        if name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw) as f:
                yield f
        elif name.endswith(".xz"):
            with lzma.LZMAFile(raw) as f:
                yield f
        else:
            yield raw


@contextlib.contextmanager
def open_text(path: str | os.PathLike) -> Iterator[io.TextIOBase]:
    """`open_binary` as text: UTF-8 after an optional byte-order mark, line breaks as they are
    (newline=""), and a byte that is not UTF-8 kept as a surrogate escape, so that it spoils one
    item (a counted skip), not the file. (epath's own text mode takes no `errors` nor `newline`.)"""
    with open_binary(path) as f, io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape",
                                                  newline="") as text:
        yield text


# What reading a damaged file raises: gzip.BadGzipFile is an OSError, a truncated stream EOFError.
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _raw_lines(path: epath.Path) -> Iterator[tuple[int, bytes]]:
    number = 0
    with open_binary(path) as f:
        try:
            for number, raw in enumerate(f, start=1):
                yield number, raw
        except READ_ERRORS as e:
            with paths.path(path).open("rb") as head:
                lfs = head.read(40).startswith(b"version https://git-lfs")
            hint = " (a Git LFS pointer: run `git lfs pull` in the clone)" if lfs else ""
            raise ValueError(f"{path}: unreadable at line {number + 1}: {e}{hint}") from e


def _decode(raw: bytes, number: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Skip("bad_utf8", f"byte {e.start + 1} is not UTF-8") from None
    return text.removeprefix("\ufeff") if number == 1 else text


def read_lines(path: epath.Path) -> Iterator[tuple[int, str | Skip]]:
    """(line number, text without its line break) of each non-blank line; a Skip for one not UTF-8."""
    for number, raw in _raw_lines(path):
        try:
            text = _decode(raw, number).rstrip("\r\n")  # so that JSON errors point into the line
        except Skip as skip:
            yield number, skip
            continue
        if text.strip():
            yield number, text


# Text read with errors="surrogateescape" holds a byte that is not UTF-8 as one of these.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def read_csv(path: epath.Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str] | Skip]]:
    """(line where the row starts, {column: value}) of each row after the header.

    A quoted field may hold commas, quotes ("") and line breaks. A row the reader rejects (a stray
    quote: strict parsing), one with more or fewer fields than the header, and one with a byte that
    is not UTF-8 are Skips; blank lines are left out. A header without every one of `columns` is a
    ValueError naming the file and the missing columns.
    """
    with open_text(path) as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ValueError(f"{path}: unreadable CSV header: {e}") from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} in the CSV header "
                             f"(it has {', '.join(map(repr, header))})")
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield start, Skip("bad_csv", str(e))
                continue
            if len(row) <= 1 and not "".join(row).strip():
                continue
            if len(row) != len(header):
                yield start, Skip("bad_csv", f"{len(row)} fields, the header has {len(header)}")
            elif any(_ESCAPED_BYTE.search(value) for value in row):
                yield start, Skip("bad_utf8", "a byte that is not UTF-8")
            else:
                yield start, dict(zip(header, row, strict=True))


def csv_reader(columns: Sequence[str]) -> Reader:
    """A builder's ``read_items`` for CSV files whose header must name `columns`."""
    return functools.partial(read_csv, columns=tuple(columns))
