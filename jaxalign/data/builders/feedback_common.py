"""The builder base the dataset builders share: counting what a build reads and skips (`Tally`,
`scan`), the fingerprint of the source files that says when to rebuild, `FeedbackBuilder`, and
building and reading back (`prepare_builder`, `build_report`, `Registry`).

How upstream files become records, and the reasons a line is skipped, are in reading.py. The source
directory and the build directory may each be local or in a bucket (``gs://``): see `build`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import tensorflow_datasets as tfds
from etils import epath

from jaxalign import paths
from jaxalign.data.builders.reading import (
    MALFORMED,
    SKIPPED,
    ParseLine,
    QuietBuild,
    Reader,
    Record,
    Skip,
    SourceFile,
    read_lines,
)

log = logging.getLogger(__name__)

EXAMPLES_PER_REASON = 5  # how many "file:line: detail" examples the log and the metadata keep
FINGERPRINT_KEY = "source_sha256"


def dedup_key(record: Any) -> bytes:
    """A key of a record's content (key order aside), for finding records met twice."""
    return hashlib.sha1(json.dumps(record, sort_keys=True).encode("ascii")).digest()


class Tally:
    """Counts of records (by split and file) and of skipped lines (by reason and file).

    A builder with reasons of its own sets SKIPPED and MALFORMED, which say how `skip_metadata`
    files each reason.
    """

    SKIPPED: ClassVar[tuple[str, ...]] = SKIPPED
    MALFORMED: ClassVar[tuple[str, ...]] = MALFORMED

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
        return {"records": dict(sorted(self.records.items())), **self.skip_metadata()}

    def skip_metadata(self) -> dict[str, Any]:
        """The skip counts of `metadata`: by reason (skipped or malformed), by file, and examples."""
        return {
            "skipped": {r: self.reasons[r] for r in self.SKIPPED if self.reasons[r]},
            "malformed": {r: self.reasons[r] for r in self.MALFORMED if self.reasons[r]},
            "skipped_by_file": {f: dict(sorted(c.items())) for f, c in sorted(self.by_file.items())},
            "skip_examples": {r: list(e) for r, e in sorted(self.examples.items())},
        }

    def require_records(self, file: SourceFile, what: str, nothing: str) -> None:
        """A ValueError naming `file` if not one of its items gave a record: a file not in the format
        the builder expects. `nothing` stands for the counts when nothing was skipped either."""
        if self.file_records[file.name]:
            return
        skipped = _counts(self.by_file[file.name]) or nothing
        first = f"; first: {self.first_skip[file.name]}" if file.name in self.first_skip else ""
        raise ValueError(f"{file.path}: not one usable {what} record ({skipped}{first})")


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counter.most_common())


def iter_records(files: Sequence[SourceFile], parse_line: ParseLine, task: str, *,
                 only_split: str | None = None, tally: Tally | None = None,
                 read: Reader = read_lines) -> Iterator[tuple[str, Record]]:
    """Yields (split, record) in file order, dropping (and tallying) the items that raise Skip.

    `read` gives the items of a file (`read_lines`: its lines). A record's split is its file's,
    or, for a file without one, the "split" parse_line gives. Duplicates are found within a split,
    so reading one split (`only_split`) yields the same records of that split as reading them all.
    """
    seen: dict[str, set[bytes]] = collections.defaultdict(set)
    for file in files:
        if only_split is not None and file.split not in (None, only_split):
            continue
        for number, item in read(file.path):
            try:
                if isinstance(item, Skip):
                    raise item
                record = parse_line(item)
                line_split = record.pop("split", None)
                split = file.split or line_split
                if split is None:
                    raise AssertionError(f"{file.name}: parse_line gave no split")
                if only_split is not None and split != only_split:
                    continue
                key = dedup_key(record)
                if key in seen[split]:
                    what = "comparison" if "chosen" in record else "record"
                    raise Skip("duplicate", f"the same {what} as an earlier {split} record")
                seen[split].add(key)
            except Skip as skip:
                if tally is not None:
                    tally.add_skip(file.name, number, skip)
                continue
            if tally is not None:
                tally.add_record(file.name, split)
            yield split, {**record, "id": f"{file.name}:{number}", "task": task}


def scan(name: str, files: Sequence[SourceFile], parse_line: ParseLine, task: str, *,
         read: Reader = read_lines) -> Tally:
    """Reads every file once: the counts, logged; a ValueError for a file without one record."""
    tally = Tally()
    for _ in iter_records(files, parse_line, task, tally=tally, read=read):
        pass
    for file in files:
        tally.require_records(file, name, "no lines")
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
        with paths.path(file.path).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------- the builder base

FEATURES = {name: tfds.features.Text() for name in ("prompt", "chosen", "rejected", "id", "task")}
REFERENCE_FEATURES = {**FEATURES, "reference": tfds.features.Text()}  # + raw upstream fields, JSON
LABELS = ("unaligned", "aligned")  # the names of labels 0 and 1 in the dataset's features
LABELLED_FEATURES = {
    "prompt": tfds.features.Text(), "text": tfds.features.Text(),
    "label": tfds.features.ClassLabel(names=LABELS), "id": tfds.features.Text(), "task": tfds.features.Text(),
}
TEXT_FEATURES = {name: tfds.features.Text() for name in ("text", "id", "task")}


class FeedbackBuilder(QuietBuild, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A feedback dataset read from upstream files, local or in a bucket (the download config's
    ``manual_dir``).

    A subclass sets `name`, TASK, SPLITS, DESCRIPTION, HOMEPAGE, MANUAL_DOWNLOAD_INSTRUCTIONS and
    defines `source_files` and `parse_line`; one with other records than the preference schema's
    sets SCHEMA and RECORD_FEATURES, one whose files are not JSON lines sets ``read_items``.
    Records keep the order of their files and lines (``disable_shuffling``; grain shuffles at read
    time). A split without records is left out.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "prompt, chosen, rejected, id, task as UTF-8 text; skip counts in the metadata."
    }
    TASK: ClassVar[str] = ""
    SPLITS: ClassVar[tuple[str, ...]] = ()
    DESCRIPTION: ClassVar[str] = ""
    HOMEPAGE: ClassVar[str] = ""
    SCHEMA: ClassVar[str] = "preference"  # or "labelled", "text"
    RECORD_FEATURES: ClassVar[dict[str, Any]] = FEATURES

    # tfds 4.9.10 finds `code_path` of a builder that lives in a package through the
    # `importlib_resources` backport, which it declares only for Python < 3.9, so preparing fails
    # with "No module named 'importlib_resources'" (tensorflow/datasets#11212). The path only
    # serves to look for a checksums.tsv beside the module (nothing is downloaded): give it directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    @staticmethod
    def source_files(source_dir: epath.Path) -> list[SourceFile]:
        """The files to read, in order; FileNotFoundError naming what is missing."""
        raise NotImplementedError

    @staticmethod
    def parse_line(text: Any) -> Record:
        """An item of ``read_items`` -> {"prompt", "chosen", "rejected"[, "split"]}; raises Skip."""
        raise NotImplementedError

    read_items: ClassVar[Reader] = staticmethod(read_lines)

    @classmethod
    def scan_files(cls, files: Sequence[SourceFile]) -> Tally:
        """`scan` with this dataset's reader and parser."""
        return scan(cls.name, files, cls.parse_line, cls.TASK, read=cls.read_items)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            features=tfds.features.FeaturesDict(dict(self.RECORD_FEATURES)),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        source = paths.path(dl_manager.manual_dir)
        files = self.source_files(source)
        tally = self.scan_files(files)
        self.info.metadata.update(tally.metadata())
        self.info.metadata[FINGERPRINT_KEY] = fingerprint(files)
        self.info.metadata["source_files"] = [f.name for f in files]
        for split in self.SPLITS:
            if not tally.records[split]:
                log.warning("%s: no %s records in %s: the dataset has no %s split",
                            self.name, split, source, split)
        return {split: self._generate_examples(files, split) for split in self.SPLITS if tally.records[split]}

    def _generate_examples(self, files: list[SourceFile], split: str):
        records = iter_records(files, self.parse_line, self.TASK, only_split=split, read=self.read_items)
        # With disable_shuffling, tfds orders a split by key: the index keeps file order.
        for index, (_, record) in enumerate(records):
            yield index, record


# --------------------------------------------------------------------------- building, reading back

REPORT_KEYS = ("records", "skipped", "malformed", "skipped_by_file", "skip_examples")


DATASET_INFO = "dataset_info.json"  # tfds takes a version directory holding it for a finished build


def open_builder(cls: type[tfds.core.DatasetBuilder], data_dir: str | os.PathLike) -> Any:
    """The builder of `cls` in `data_dir` (local or a URL), writing and reading array_record files."""
    return cls(data_dir=str(paths.real(data_dir)), file_format="array_record")


def build(cls: type[tfds.core.DatasetBuilder], source: epath.Path, data_dir: str | os.PathLike,
          mode: tfds.download.GenerateMode) -> Any:
    """Builds `cls` from the files in `source` into `data_dir`; returns the builder of `data_dir`.

    A build for a bucket is made in a local temporary directory (room for one build under $TMPDIR),
    then copied up, dataset_info.json last (tfds takes a version directory without it for no
    build), replacing an earlier build only once the new one is complete. Why: tfds hands each
    shard to array_record's C++ ArrayRecordWriter, which opens local files only; building straight
    into ``gs://`` fails with "open() failed: No such file or directory; opening gs://...". Reading
    needs no copy: array_record's reader opens ``gs://`` itself (google-cloud-cpp, with the
    machine's default credentials, or CLOUD_STORAGE_EMULATOR_ENDPOINT's server) with ranged
    requests, and tfds reads the build's JSON files through epath.
    """
    config = tfds.download.DownloadConfig(manual_dir=str(source), download_mode=mode)
    if not paths.is_url(data_dir):
        builder = open_builder(cls, data_dir)
        builder.download_and_prepare(download_config=config)
        return builder
    with tempfile.TemporaryDirectory(prefix="jaxalign-tfds-") as tmp:
        local = open_builder(cls, tmp)
        local.download_and_prepare(download_config=config)
        target = paths.path(data_dir) / os.path.relpath(local.data_dir, paths.real(tmp))  # <name>/<version>
        paths.rmtree(target)
        paths.copy_tree(local.data_dir, target, last=[DATASET_INFO])
    return open_builder(cls, data_dir)


def prepare_builder(cls: type[FeedbackBuilder], source_dir: str | os.PathLike,
                    data_dir: str | os.PathLike) -> dict[str, Any]:
    """Builds `cls` from `source_dir` into `data_dir` (once, or again when the source files change);
    returns {split: data source}.

    A forced rebuild deletes the old build first, so the new files are scanned before it: a file
    without one usable record raises ValueError and leaves the earlier build as it was.
    """
    source = paths.real(source_dir)
    files = cls.source_files(source)
    builder = open_builder(cls, data_dir)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if builder.is_prepared():
        if builder.info.metadata.get(FINGERPRINT_KEY) == fingerprint(files):
            return builder.as_data_source()
        log.warning("%s: the source files changed since %s was built; rebuilding it",
                    source, builder.data_dir)
        cls.scan_files(files)
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    return build(cls, source, data_dir, mode).as_data_source()


def build_report(cls: type[FeedbackBuilder], data_dir: str | os.PathLike) -> dict[str, Any]:
    """The skip counts the build of `cls` in `data_dir` stored (see `Tally.metadata`)."""
    builder = open_builder(cls, data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(f"{data_dir}: no build of {cls.name} here (run prepare first)")
    return {key: builder.info.metadata[key] for key in REPORT_KEYS}


def decode_stored(stored: dict[str, Any]) -> dict[str, Any]:
    """A record as a data source returns it (text as bytes, a label as a numpy integer) -> str and int."""
    return {key: value.decode("utf-8") if isinstance(value, bytes) else value if isinstance(value, str)
            else int(value) for key, value in stored.items()}


class Registry:
    """A family of builders by dataset name (`values`, `safety`): build, schema and skip report of each.

    A missing file or directory raises FileNotFoundError; a file without one usable record, or an
    unreadable one, raises ValueError and leaves an earlier build in `data_dir` as it was.
    """

    def __init__(self, what: str, builders: dict[str, type[FeedbackBuilder]]) -> None:
        self.what, self.builders = what, builders

    def builder_class(self, name: str) -> type[FeedbackBuilder]:
        if name not in self.builders:
            raise ValueError(f"unknown {self.what} dataset {name!r}; known: {', '.join(self.builders)}")
        return self.builders[name]

    def schema(self, name: str) -> str:
        """The record schema of dataset `name`: "preference", "labelled" or "text"."""
        return self.builder_class(name).SCHEMA

    def prepare(self, name: str, source_dir: str | os.PathLike,
                data_dir: str | os.PathLike) -> dict[str, Any]:
        """Builds dataset `name` from `source_dir` (once, or again when its files change) into
        `data_dir`; returns {split: data source} (``len`` and ``[i]``: a dict of bytes and, for a
        label, a numpy integer, see `decode_stored`; a grain source)."""
        return prepare_builder(self.builder_class(name), source_dir, data_dir)

    def skip_report(self, name: str, data_dir: str | os.PathLike) -> dict[str, Any]:
        """The counts stored by the build of `name` in `data_dir`: ``records`` {split: n}, ``skipped``
        {reason: n}, ``malformed`` {reason: n}, ``skipped_by_file`` {file: {reason: n}},
        ``skip_examples`` {reason: ["file:line: detail", ...]} (the first few)."""
        return build_report(self.builder_class(name), data_dir)
