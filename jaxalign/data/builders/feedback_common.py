"""What the feedback-dataset builders share: reading lines, skip reasons, counting, the builder base.

The builders (hh_rlhf.py, webgpt.py, summarize_feedback.py; `feedback.prepare` runs them) read the
upstream files as they are downloaded and write records in the preference schema plus a task:

    {"prompt": str, "chosen": str, "rejected": str, "id": "<file>:<line>", "task": str}

``id`` is the source file (relative to the source directory) and 1-based line of the record, so
every record can be traced back to the line it came from.

Skipping, never failing on one line
-----------------------------------
Upstream files hold a few unusable lines. A dataset's ``parse_line(text)`` returns the record of
one line or raises `Skip` with a reason; the build counts every skipped line by reason and by
file, logs the first few (``file:line: detail``) and stores the counts in the dataset's metadata
(`Tally.metadata`; `feedback.skip_report` reads them back). Reasons:

- deliberate (``SKIPPED``): ``tie`` (equal scores or identical responses: no preference to learn),
  ``duplicate`` (the same prompt, chosen and rejected as an earlier record of the same split).
- malformed (``MALFORMED``): ``bad_utf8``, ``bad_json``, ``wrong_type``, ``missing_field``,
  ``empty_field``, ``bad_text`` (an unpaired surrogate, which no tokenizer can encode),
  ``unparsable_dialogue``, ``prompt_mismatch``, ``question_mismatch``, ``bad_choice``,
  ``unknown_split``.

Blank lines are not records and are not counted. What does fail the build, with a ValueError or
FileNotFoundError naming the path: a missing file or directory, an unreadable (e.g. truncated
gzip) file, and a file from which not one record could be read (every line malformed or skipped,
which means the file is not in the format the builder expects).

Responses are stripped of surrounding whitespace; prompts are kept as the dataset formats them.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import tensorflow_datasets as tfds
from etils import epath

log = logging.getLogger(__name__)

SKIPPED = ("tie", "duplicate")
MALFORMED = (
    "bad_utf8", "bad_json", "wrong_type", "missing_field", "empty_field", "bad_text",
    "unparsable_dialogue", "prompt_mismatch", "question_mismatch", "bad_choice", "unknown_split",
)
EXAMPLES_PER_REASON = 5  # how many "file:line: detail" examples the log and the metadata keep
FINGERPRINT_KEY = "source_sha256"


class Skip(ValueError):
    """A line that gives no record; ``reason`` is one of SKIPPED or MALFORMED."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in SKIPPED + MALFORMED:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class SourceFile(NamedTuple):
    path: Path
    name: str  # the path relative to the source directory, as ids and reports show it
    split: str | None  # the split of all its records, or None where parse_line gives each one's


Record = dict[str, str]
ParseLine = Callable[[str], Record]


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


# --------------------------------------------------------------------------- reading files

def one_of(directory: Path, names: Sequence[str], what: str) -> Path:
    """The one file of `names` (alternative spellings, e.g. x.jsonl.gz, x.jsonl) in `directory`."""
    found = [directory / n for n in names if (directory / n).is_file()]
    if not found:
        raise FileNotFoundError(f"{directory}: no {' or '.join(names)} ({what})")
    if len(found) > 1:
        raise ValueError(f"{directory}: both {found[0].name} and {found[1].name}; keep one of them")
    return found[0]


def require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory ({what})")


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    number = 0
    f = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    with f:
        try:
            for number, raw in enumerate(f, start=1):
                yield number, raw
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            with open(path, "rb") as head:
                lfs = head.read(40).startswith(b"version https://git-lfs")
            hint = " (a Git LFS pointer: run `git lfs pull` in the clone)" if lfs else ""
            raise ValueError(f"{path}: unreadable at line {number + 1}: {e}{hint}") from e


def _decode(raw: bytes, number: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Skip("bad_utf8", f"byte {e.start + 1} is not UTF-8") from None
    return text.removeprefix("\ufeff") if number == 1 else text


def _dedup_key(record: Record) -> bytes:
    text = "\0".join((record["prompt"], record["chosen"], record["rejected"]))
    return hashlib.sha1(text.encode("utf-8")).digest()


class Tally:
    """Counts of records (by split and file) and of skipped lines (by reason and file)."""

    def __init__(self) -> None:
        self.records: collections.Counter[str] = collections.Counter()  # by split
        self.file_records: collections.Counter[str] = collections.Counter()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.by_file: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self.first_skip: dict[str, str] = {}

    def add_record(self, file: str, split: str) -> None:
        self.records[split] += 1
        self.file_records[file] += 1

    def add_skip(self, file: str, line: int, skip: Skip) -> None:
        self.reasons[skip.reason] += 1
        self.by_file[file][skip.reason] += 1
        where = f"{file}:{line}: {skip}"
        self.first_skip.setdefault(file, where)
        if len(self.examples[skip.reason]) < EXAMPLES_PER_REASON:
            self.examples[skip.reason].append(where)

    def metadata(self) -> dict[str, Any]:
        """JSON-ready counts, stored in the dataset's metadata."""
        return {
            "records": dict(sorted(self.records.items())),
            "skipped": {r: self.reasons[r] for r in SKIPPED if self.reasons[r]},
            "malformed": {r: self.reasons[r] for r in MALFORMED if self.reasons[r]},
            "skipped_by_file": {f: dict(sorted(c.items())) for f, c in sorted(self.by_file.items())},
            "skip_examples": {r: list(e) for r, e in sorted(self.examples.items())},
        }


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counter.most_common())


def iter_records(files: Sequence[SourceFile], parse_line: ParseLine, task: str, *,
                 only_split: str | None = None, tally: Tally | None = None) -> Iterator[tuple[str, Record]]:
    """Yields (split, record) in file order, dropping (and tallying) the lines that raise Skip.

    Duplicates are found within a split, so reading one split (`only_split`) yields the same
    records of that split as reading them all.
    """
    seen: dict[str, set[bytes]] = collections.defaultdict(set)
    for file in files:
        if only_split is not None and file.split not in (None, only_split):
            continue
        for number, raw in _raw_lines(file.path):
            try:
                text = _decode(raw, number).rstrip("\r\n")  # so that JSON errors point into the line
                if not text.strip():
                    continue
                record = parse_line(text)
                split = record.pop("split", None) or file.split
                if split is None:
                    raise AssertionError(f"{file.name}: parse_line gave no split")
                if only_split is not None and split != only_split:
                    continue
                key = _dedup_key(record)
                if key in seen[split]:
                    raise Skip("duplicate", f"the same comparison as an earlier {split} record")
                seen[split].add(key)
            except Skip as skip:
                if tally is not None:
                    tally.add_skip(file.name, number, skip)
                continue
            if tally is not None:
                tally.add_record(file.name, split)
            yield split, {**record, "id": f"{file.name}:{number}", "task": task}


def scan(name: str, files: Sequence[SourceFile], parse_line: ParseLine, task: str) -> Tally:
    """Reads every file once: the counts, logged; a ValueError for a file without one record."""
    tally = Tally()
    for _ in iter_records(files, parse_line, task, tally=tally):
        pass
    for file in files:
        if not tally.file_records[file.name]:
            skipped = _counts(tally.by_file[file.name]) or "no lines"
            first = f"; first: {tally.first_skip[file.name]}" if file.name in tally.first_skip else ""
            raise ValueError(f"{file.path}: not one usable {name} record ({skipped}{first})")
    skipped = collections.Counter({r: n for r, n in tally.reasons.items() if r in SKIPPED})
    malformed = tally.reasons - skipped
    log.info("%s: %d records (%s); skipped %s", name, sum(tally.records.values()), _counts(tally.records),
             _counts(skipped) or "none")
    if malformed:
        examples = [e for r, _ in malformed.most_common() for e in tally.examples[r]][:EXAMPLES_PER_REASON]
        log.warning("%s: %d malformed lines skipped (%s), e.g.\n  %s", name, sum(malformed.values()),
                    _counts(malformed), "\n  ".join(examples))
    return tally


def fingerprint(files: Sequence[SourceFile]) -> str:
    """SHA-256 over the names and contents of the source files."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.name):
        digest.update(file.name.encode() + b"\0")
        with open(file.path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------- the builder base

FEATURES = {name: tfds.features.Text() for name in ("prompt", "chosen", "rejected", "id", "task")}


class FeedbackBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A feedback dataset read from local upstream files (the download config's ``manual_dir``).

    A subclass sets `name`, TASK, SPLITS, DESCRIPTION, HOMEPAGE, MANUAL_DOWNLOAD_INSTRUCTIONS and
    defines `source_files` and `parse_line`. Records keep the order of their files and lines
    (``disable_shuffling``; grain shuffles at read time). A split without records is left out.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "prompt, chosen, rejected, id, task as UTF-8 text; skip counts in the metadata."
    }
    TASK: ClassVar[str] = ""
    SPLITS: ClassVar[tuple[str, ...]] = ()
    DESCRIPTION: ClassVar[str] = ""
    HOMEPAGE: ClassVar[str] = ""

    # tfds 4.9.10 finds `code_path` of a builder that lives in a package through the
    # `importlib_resources` backport, which it declares only for Python < 3.9, so preparing fails
    # with "No module named 'importlib_resources'" (tensorflow/datasets#11212). The path only
    # serves to look for a checksums.tsv beside the module (nothing is downloaded): give it directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    @staticmethod
    def source_files(source_dir: Path) -> list[SourceFile]:
        """The files to read, in order; FileNotFoundError naming what is missing."""
        raise NotImplementedError

    @staticmethod
    def parse_line(text: str) -> Record:
        """One line -> {"prompt", "chosen", "rejected"[, "split"]}; raises Skip."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            features=tfds.features.FeaturesDict(FEATURES),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        source = Path(dl_manager.manual_dir)
        files = self.source_files(source)
        tally = scan(self.name, files, self.parse_line, self.TASK)
        self.info.metadata.update(tally.metadata())
        self.info.metadata[FINGERPRINT_KEY] = fingerprint(files)
        self.info.metadata["source_files"] = [f.name for f in files]
        for split in self.SPLITS:
            if not tally.records[split]:
                log.warning("%s: no %s records in %s: the dataset has no %s split",
                            self.name, split, source, split)
        return {split: self._generate_examples(files, split) for split in self.SPLITS if tally.records[split]}

    def _generate_examples(self, files: list[SourceFile], split: str):
        records = iter_records(files, self.parse_line, self.TASK, only_split=split)
        # With disable_shuffling, tfds orders a split by key: the index keeps file order.
        for index, (_, record) in enumerate(records):
            yield index, record
