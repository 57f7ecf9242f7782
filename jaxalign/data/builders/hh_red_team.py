"""TFDS builder for Anthropic's red-team attempts (Ganguli et al. 2022, arXiv 2209.07858): the instructions.

Mistake Analysis induces harmful responses by prompting a model with red-teaming instructions; this
builder keeps the first Human turn of each HH-RLHF red-team attempt (the instruction as posed), with
its rating and harmlessness score so that the attacks that worked can be picked, as text records.
The upstream file is one JSON array, read element by element from a stream.

Details: docs/data.md#hh-rlhf-red-team-attempts-hh_red_teampy
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from jaxalign import paths
from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders import reading
from jaxalign.data.builders.reading import Record, Skip, SourceFile

SUBDIR = "red-team-attempts"
FILE_NAMES = ("red_team_attempts.jsonl.gz", "red_team_attempts.jsonl")
CHUNK_CHARS = 1 << 20  # how much of the array is decoded at a time
EXTRAS = ("rating", "min_harmlessness_score", "task_description")

_HUMAN = re.compile(r"(?:^|\n\n)Human:")
_NEXT_TURN = re.compile(r"\n\n(?:Human|Assistant):")
_LFS_POINTER = b"version https://git-lfs"
_SPACE = re.compile(r"[ \t\r\n]*")
# Text decoded with errors="surrogateescape" holds a byte that is not UTF-8 as one of these.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


# --------------------------------------------------------------------------- parsing one attempt

def first_human_turn(transcript: str) -> str:
    """The text of the first "Human:" turn of a transcript (up to the next turn), stripped."""
    match = _HUMAN.search(transcript)
    if match is None:
        raise Skip("unparsable_dialogue", "no 'Human:' turn in the transcript")
    end = _NEXT_TURN.search(transcript, match.end())
    turn = transcript[match.end():end.start() if end else len(transcript)].strip()
    if not turn:
        raise Skip("empty_field", "empty first Human turn")
    return turn


def _score(obj: dict[str, Any], key: str) -> str:
    value = reading.get(obj, key, (int, float))
    if not math.isfinite(value):
        raise Skip("wrong_type", f"{key!r} is {value}, not a finite number")
    return str(value)


def parse_attempt(obj: Any) -> Record:
    """One red-team attempt (a parsed object) -> {"text", "rating", "min_harmlessness_score",
    "task_description"}; raises Skip."""
    obj = reading.need(obj, dict, "the attempt")
    text = first_human_turn(reading.get(obj, "transcript", str))
    return reading.make_text(text, rating=_score(obj, "rating"),
                            min_harmlessness_score=_score(obj, "min_harmlessness_score_transcript"),
                            task_description=reading.get(obj, "task_description", str).strip())


# --------------------------------------------------------------------------- reading either form

class _ArrayReader:
    """Elements of a JSON array read from a text stream a chunk at a time."""

    def __init__(self, stream: io.TextIOBase, path: epath.Path) -> None:
        self.stream, self.path = stream, path
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        """Appends the next chunk to the unread text; False at the end of the file."""
        if self.eof:
            return False
        try:
            chunk = self.stream.read(CHUNK_CHARS)
        except reading.READ_ERRORS as e:
            raise ValueError(f"{self.path}: unreadable after line {self.line}: {e}") from e
        if not chunk:
            self.eof = True
            return False
        self.buf, self.pos = self.buf[self.pos:] + chunk, 0
        return True

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def _peek(self) -> str:
        """The next character that is not whitespace ("" at the end), moving up to it."""
        while True:
            self._advance(_SPACE.match(self.buf, self.pos).end())
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.path}:{self.line}: {message} (the file is one JSON array)")

    def _value(self) -> tuple[Any, int]:
        """The JSON value starting here and where it ends; more is read while it is cut off."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self._more():
                    continue
                line = self.line + self.buf.count("\n", self.pos, e.pos)
                raise ValueError(f"{self.path}:{line}: invalid JSON in the array: {e.msg}") from None
            if end == len(self.buf) and self._more():  # a number may go on in the next chunk
                continue
            return value, end

    def elements(self) -> Iterator[tuple[int, Any]]:
        if self._peek() != "[":
            raise self._error("expected '['")
        self._advance(self.pos + 1)
        if self._peek() == "]":
            return
        while True:
            if not self._peek():
                raise self._error("the file ends inside the array")
            line = self.line
            value, end = self._value()
            bad_byte = _ESCAPED_BYTE.search(self.buf, self.pos, end)
            self._advance(end)
            yield line, Skip("bad_utf8", "a byte that is not UTF-8") if bad_byte else value
            separator = self._peek()
            if separator == "]":
                break
            if separator != ",":
                raise self._error("expected ',' or ']' after an element of the array")
            self._advance(self.pos + 1)
        self._advance(self.pos + 1)
        if self._peek():
            raise self._error("text after the JSON array")


def _first_char(path: epath.Path) -> str:
    """The first character of the (decompressed) file that is not whitespace; "" for an empty file."""
    with paths.path(path).open("rb") as head:
        if head.read(len(_LFS_POINTER)) == _LFS_POINTER:
            raise ValueError(f"{path}: a Git LFS pointer, not the data (run `git lfs pull` in the clone)")
    with reading.open_text(path) as f:
        try:
            while chunk := f.read(1 << 16):
                if chunk.strip():
                    return chunk.lstrip()[0]
        except reading.READ_ERRORS as e:
            raise ValueError(f"{path}: unreadable: {e}") from e
    return ""


def array_elements(path: epath.Path) -> Iterator[tuple[int, Any]]:
    """(line where it starts, value or Skip) of each element of a file holding one JSON array."""
    with reading.open_text(path) as f:
        yield from _ArrayReader(f, path).elements()


def read_objects(path: epath.Path) -> Iterator[tuple[int, Any]]:
    """(line, parsed value or Skip) of each attempt, from the array form or from JSON lines."""
    if _first_char(path) == "[":
        yield from array_elements(path)
        return
    for number, text in reading.read_lines(path):
        if isinstance(text, Skip):
            yield number, text
            continue
        try:
            yield number, reading.load_json(text)
        except Skip as skip:
            yield number, skip


# --------------------------------------------------------------------------- the builder

def source_files(source_dir: epath.Path) -> list[SourceFile]:
    """red_team_attempts.jsonl[.gz] in red-team-attempts/ below `source_dir`, or in it."""
    reading.require_dir(source_dir, "an Anthropic/hh-rlhf clone or its red-team-attempts directory")
    directory = source_dir / SUBDIR if (source_dir / SUBDIR).is_dir() else source_dir
    path = reading.one_of(directory, FILE_NAMES,
                          "the HH-RLHF red-team attempts, in hh-rlhf/red-team-attempts")
    return [SourceFile(path, path.relative_to(source_dir).as_posix(), "train")]


class HhRedTeam(common.FeedbackBuilder):
    """Anthropic's red-team attempts: the first Human turn of each, with the attack's ratings."""

    name = "hh_red_team"
    TASK = "hh_red_team"
    SPLITS = ("train",)
    SCHEMA = "text"
    RECORD_FEATURES = {**common.TEXT_FEATURES, **{key: tfds.features.Text() for key in EXTRAS}}
    DESCRIPTION = ("Anthropic HH-RLHF red-team attempts (Ganguli et al. 2022): the first Human turn of each "
                   "attempt (the red-teaming instruction), with the attack's rating and harmlessness score.")
    HOMEPAGE = "https://github.com/anthropics/hh-rlhf"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the data (the clone needs git-lfs) and pass the clone as the source:
        git lfs install
        git clone https://huggingface.co/datasets/Anthropic/hh-rlhf
    It reads hh-rlhf/red-team-attempts/red_team_attempts.jsonl.gz; that directory alone, or one
    holding red_team_attempts.jsonl (the file unpacked), works too. The same file is on
    https://github.com/anthropics/hh-rlhf (red-team-attempts/).
    """
    RELEASE_NOTES = {
        "1.0.0": "text (first Human turn), rating, min_harmlessness_score, task_description, id, task.",
    }

    source_files = staticmethod(source_files)
    parse_line = staticmethod(parse_attempt)
    read_items = staticmethod(read_objects)
