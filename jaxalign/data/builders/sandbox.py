"""TFDS builder: SANDBOX interaction records (ours, or the Stable Alignment reference's) -> group records.

    sources = prepare("runs/society/", "workdir/tfds")     # {"train": ..., "validation": ...}
    group = decode_record(sources["train"][0])   # {"prompt", "responses", "ratings", "stage", "id"}

Reads a simulation's run directory as it is, the reference implementation's per-agent memories and
its released groups, each told by content, and turns them into Stable Alignment's group records
(all three stages), split by question so that no question is on both sides.

Details: docs/data.md#sandbox-interactions-and-released-groups-sandbox
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jaxalign import paths
from jaxalign.data import sandbox_alignment as alignment_data
from jaxalign.data import sandbox_records as records_lib
from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders import reading
from jaxalign.data.builders.reading import SourceFile
from jaxalign.data.splits import hash_split

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
VALIDATION_PERCENT = 10
SKIPPED = ("duplicate", "unscored")
MALFORMED = records_lib.REASONS
# Records files directly in the source directory (JSON lines, and the released sandbox_v1.json and
# sandbox_v2.json), and the reference's per-agent files, in a world directory (data/cache/world_<id>/)
# or in the directory of several worlds (data/cache/). Not every *.json, nor anything deeper: a
# simulation's run directory also holds config.json and progress.json, and may hold a tfds build.
PATTERNS = ("*.jsonl", "sandbox*.json", "external_memory/*.jsonl", "world_*/external_memory/*.jsonl")
REPORT_KEYS = ("records", "stages", "interactions", "released_groups", "dropped_peer_ratings", "skipped",
               "malformed", "skipped_by_file", "skip_examples")
RANGES_KEY = "stage_ranges"
_LFS_POINTER = b"version https://git-lfs"

Group = dict[str, Any]


class Skip(reading.Skip):
    """A line or array element that gives nothing; ``reason`` is one of SKIPPED or MALFORMED.

    The helpers of reading.py (`reading.get`) raise this class's base, `reading.Skip`: catch that.
    """

    REASONS: ClassVar[tuple[str, ...]] = SKIPPED + MALFORMED


def split_of(question: str) -> str:
    """"validation" or "train", by the SHA-256 of the question (`jaxalign.data.splits.hash_split`)."""
    return hash_split(question, {"validation": VALIDATION_PERCENT})


# --------------------------------------------------------------------------- files

def source_files(source_dir: epath.Path) -> list[SourceFile]:
    """The files of PATTERNS in `source_dir` (hidden ones left out), by relative path;
    FileNotFoundError if there is none."""
    reading.require_dir(source_dir, "a directory of SANDBOX records files")
    found = sorted({p for pattern in PATTERNS for p in reading.glob(source_dir, pattern)
                    if p.is_file() and not p.name.startswith(".")},
                   key=lambda p: p.relative_to(source_dir).as_posix())
    if not found:
        raise FileNotFoundError(f"{source_dir}: no records file (*.jsonl, sandbox*.json, or the reference's "
                                f"[world_<id>/]external_memory/agent_<id>.jsonl) in it")
    return [SourceFile(p, p.relative_to(source_dir).as_posix(), None) for p in found]


def _first_byte(path: epath.Path) -> bytes:
    """The first non-whitespace byte after a UTF-8 byte-order mark (b"" for an empty file)."""
    with paths.path(path).open("rb") as f:
        head = f.read(1 << 16).removeprefix(b"\xef\xbb\xbf")
        if head.startswith(_LFS_POINTER):
            raise ValueError(f"{path}: a Git LFS pointer, not the data (run `git lfs pull` in the clone)")
        while head and not head.lstrip():
            head = f.read(1 << 16)
        return head.lstrip()[:1]


def _array_elements(path: epath.Path) -> Iterator[tuple[int, Any]]:
    """(line where it starts, value) of each element of a file holding one JSON array.

    The file is read whole (a JSON array has no line structure to resume after a bad element), so
    anything that does not parse is a ValueError naming path:line:column.
    """
    try:
        text = paths.path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 (byte {e.start + 1}); a JSON array is read whole"
                         ) from None
    decoder, pos, line, counted = json.JSONDecoder(), 0, 1, 0

    def skip_space(at: int) -> int:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    def fail(at: int, message: str) -> ValueError:
        row = text.count("\n", 0, at) + 1
        return ValueError(f"{path}:{row}:{at - text.rfind(chr(10), 0, at)}: {message}")

    pos = skip_space(0)
    if text[pos:pos + 1] != "[":
        raise fail(pos, "expected a JSON array")
    pos, first = skip_space(pos + 1), True
    while text[pos:pos + 1] != "]":
        if not first:
            if text[pos:pos + 1] != ",":
                raise fail(pos, "expected ',' or ']' in the JSON array")
            pos = skip_space(pos + 1)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        line += text.count("\n", counted, pos)
        counted = pos
        yield line, value
        pos, first = skip_space(end), False
    if skip_space(pos + 1) != len(text):
        raise fail(skip_space(pos + 1), "text after the JSON array")


# --------------------------------------------------------------------------- the reference's formats

def _text(obj: dict[str, Any], key: str, non_empty: bool = False) -> str:
    value = reading.get(obj, key, str)
    if non_empty and not value.strip():
        raise Skip("empty_field", f"empty {key!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Skip("bad_text", f"{key!r} contains an unpaired surrogate") from None
    return value


def _texts(obj: dict[str, Any], key: str) -> list[str]:
    values = reading.get(obj, key, list)
    for index, value in enumerate(values):
        _text({f"{key}[{index}]": value}, f"{key}[{index}]")
    return values


def _integer(value: Any) -> int | None:
    """An integral number, or a string of one (the reference keeps ratings as strings), as int."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        return int(value) if value.isdigit() else None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _observer_score(obj: dict[str, Any], key: str) -> int:
    value = reading.get(obj, key, (int, float))
    score = _integer(value)
    if score == -1:  # the reference's "the observer's reply did not parse"
        raise Skip("unscored", f"{key!r} is -1 (the observer's score did not parse)")
    if score is None or not records_lib.SCALE_MIN <= score <= records_lib.SCALE_MAX:
        raise Skip("out_of_range", f"{key!r} is {value!r}, not an integer in "
                                   f"{records_lib.SCALE_MIN}..{records_lib.SCALE_MAX}")
    return score


def from_reference(obj: Any) -> tuple[dict[str, Any], int]:
    """A reference interaction row -> (a record with alignment_data.ALIGNMENT_FIELDS, the number
    of peer ratings dropped because they were not an integer 1..7); raises reading.Skip (this
    module's Skip is one)."""
    if not isinstance(obj, dict):
        raise Skip("not_object", f"an element is {reading.type_name(obj)}")
    feedback, ratings = _texts(obj, "feedback"), reading.get(obj, "rating", list)
    if len(feedback) != len(ratings):
        raise Skip("length_mismatch", f"{len(feedback)} feedbacks but {len(ratings)} ratings")
    low, high = records_lib.SCALE_MIN, records_lib.SCALE_MAX
    kept = [(reason, _integer(rating)) for reason, rating in zip(feedback, ratings, strict=True)]
    kept = [(reason, r) for reason, r in kept if r is not None and low <= r <= high]
    record = {
        "question": _text(obj, "question", non_empty=True), "draft_answer": _text(obj, "draft_answer"),
        "revised_answer": _text(obj, "revised_answer"),
        "feedback": [reason for reason, _ in kept], "rating": [r for _, r in kept],
        "gen_moral_score_before": _observer_score(obj, "gen_moral_score_before"),
        "gen_moral_score_after": _observer_score(obj, "gen_moral_score_after"),
    }
    return record, len(ratings) - len(kept)


def released_group(obj: Any) -> Group:
    """A row of the released alignment data {query, responses, scores} -> a group record without a
    stage (empty responses left out); raises reading.Skip (this module's Skip is one)."""
    if not isinstance(obj, dict):
        raise Skip("not_object", f"an element is {reading.type_name(obj)}")
    query, responses, scores = _text(obj, "query"), _texts(obj, "responses"), reading.get(obj, "scores", list)
    if len(responses) != len(scores):
        raise Skip("length_mismatch", f"{len(responses)} responses but {len(scores)} scores")
    ratings = []
    for index, score in enumerate(scores):
        number = isinstance(score, (int, float)) and not isinstance(score, bool)
        value = float(score) if number else _integer(score)
        if value is None or not math.isfinite(value):
            raise Skip("wrong_type", f"'scores' item {index} is {score!r}, not a number")
        ratings.append(float(value))
    pairs = [(r.strip(), s) for r, s in zip(responses, ratings, strict=True) if r.strip()]
    if not pairs:
        raise Skip("empty_field", "no non-empty response")
    return {"prompt": query, "responses": [r for r, _ in pairs], "ratings": [s for _, s in pairs]}


# --------------------------------------------------------------------------- reading and counting

Item = tuple[str, Any]  # ("interaction", record), ("group", group record)


def read_items(file: SourceFile) -> Iterator[tuple[int, Item | reading.Skip, bytes]]:
    """(line, item or Skip, a key of the raw content for finding duplicates) of each record of a file."""
    if _first_byte(file.path) == b"[":
        for line, obj in _array_elements(file.path):
            key = common.dedup_key(obj)
            try:
                if isinstance(obj, dict) and "query" in obj:
                    yield line, ("group", released_group(obj)), key
                elif isinstance(obj, dict) and "question" not in obj:
                    raise Skip("missing_field", "neither 'question' (an interaction) nor 'query' (a group)")
                else:
                    yield line, ("interaction", from_reference(obj)), key
            except reading.Skip as skip:
                yield line, skip, key
        return
    for line, text in records_lib.read_lines(file.path):
        try:
            if isinstance(text, records_lib.InteractionError):
                raise text
            record = records_lib.parse_line(text, f"{file.name}:{line}")
        except records_lib.InteractionError as e:
            yield line, Skip(e.reason, e.detail), b""
            continue
        key = common.dedup_key(record)
        yield line, ("interaction", (record, 0)), key


class Tally(common.Tally):
    """feedback_common's counts (items read, items skipped by file and reason), plus groups by split
    and stage, interactions and released groups read by split, and peer ratings dropped: what the
    build stores in its metadata."""

    SKIPPED: ClassVar[tuple[str, ...]] = SKIPPED
    MALFORMED: ClassVar[tuple[str, ...]] = MALFORMED

    def __init__(self) -> None:
        super().__init__()
        self.groups: dict[str, collections.Counter[str]] = {s: collections.Counter() for s in SPLITS}
        self.interactions: collections.Counter[str] = collections.Counter()
        self.released: collections.Counter[str] = collections.Counter()
        self.dropped_ratings = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "records": {s: sum(c.values()) for s, c in self.groups.items() if c},
            "stages": {s: dict(sorted(c.items())) for s, c in self.groups.items() if c},
            "interactions": dict(sorted(self.interactions.items())),
            "released_groups": dict(sorted(self.released.items())),
            "dropped_peer_ratings": self.dropped_ratings,
            **self.skip_metadata(),
        }


def scan(files: Sequence[SourceFile]) -> tuple[Tally, dict[str, list[Group]]]:
    """Reads every file once -> (the counts, {split: group records}); ValueError for a file from
    which not one record could be read."""
    tally = Tally()
    interactions: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    released: dict[str, list[Group]] = {s: [] for s in SPLITS}
    seen: set[bytes] = set()
    for file in files:
        for line, item, key in read_items(file):
            if not isinstance(item, reading.Skip) and key in seen:
                item = Skip("duplicate", "the same record as an earlier one")
            if isinstance(item, reading.Skip):
                tally.add_skip(file.name, line, item)
                continue
            seen.add(key)
            tally.file_records[file.name] += 1
            kind, value = item
            if kind == "group":
                split = split_of(value["prompt"])
                released[split].append(value)
                tally.released[split] += 1
            else:
                record, dropped = value
                split = split_of(record["question"])
                interactions[split].append(record)
                tally.interactions[split] += 1
                tally.dropped_ratings += dropped
        tally.require_records(file, "SANDBOX", "no records")
    groups = {s: alignment_data.alignment_groups(interactions[s]) + alignment_data.merge_groups(released[s])
              for s in SPLITS}
    for split, split_groups in groups.items():
        tally.groups[split].update(g.get("stage", "") or "none" for g in split_groups)
    if tally.reasons:
        log.warning("sandbox: skipped %s, e.g.\n  %s", dict(tally.reasons.most_common()),
                    "\n  ".join(e for r in tally.reasons for e in tally.examples[r][:1]))
    return tally, groups


# --------------------------------------------------------------------------- the builder

FEATURES = {
    "prompt": tfds.features.Text(),
    "responses": tfds.features.Sequence(tfds.features.Text()),
    "ratings": tfds.features.Sequence(np.float64),
    "stage": tfds.features.Text(),  # "" for a released group, whose stage is not known
    "id": tfds.features.Text(),
}


class Sandbox(reading.QuietBuild, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Stable Alignment group records from SANDBOX records files (the download config's manual_dir)."""

    name = "sandbox"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "prompt, responses, ratings, stage, id; imitation, self_critic and realignment groups.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Nothing is downloaded. Pass as the source a directory holding any of:
      - records files written by `jaxalign sandbox` (JSON lines, one interaction per line);
      - the reference simulation's output of https://github.com/agi-templar/Stable-Alignment:
        pass data/cache/world_<id>/ (its external_memory/agent_<id>.jsonl are read) or data/cache/
        (every world_<id>/external_memory/agent_<id>.jsonl);
      - the released alignment data assets/sandbox_v1.json and/or assets/sandbox_v2.json of that
        repository (clone it and run `git lfs pull`: a clone without it holds LFS pointers).
    """

    # tfds 4.9.10 finds `code_path` through the `importlib_resources` backport, which it declares
    # only for Python < 3.9 (tensorflow/datasets#11212); it only serves to look for a checksums.tsv.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    source_files = staticmethod(source_files)

    @classmethod
    def scan_files(cls, files: Sequence[SourceFile]) -> Tally:
        """Reads and checks every file (feedback_common.prepare_builder calls it before a rebuild)."""
        return scan(files)[0]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Stable Alignment group records (imitation, self-critic, realignment) from SANDBOX "
                        "interaction records, ours or the reference implementation's.",
            homepage="https://github.com/agi-templar/Stable-Alignment",
            features=tfds.features.FeaturesDict(dict(FEATURES)),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        files = self.source_files(paths.path(dl_manager.manual_dir))
        tally, groups = scan(files)
        self.info.metadata.update(tally.metadata())
        self.info.metadata[common.FINGERPRINT_KEY] = common.fingerprint(files)
        self.info.metadata["source_files"] = [f.name for f in files]
        self.info.metadata[RANGES_KEY] = {split: _ranges(groups[split]) for split in SPLITS if groups[split]}
        for split in SPLITS:
            if not groups[split]:
                log.warning("sandbox: no %s groups in %s: the dataset has no %s split",
                            split, dl_manager.manual_dir, split)
        return {split: self._generate_examples(groups[split]) for split in SPLITS if groups[split]}

    def _generate_examples(self, groups: list[Group]):
        # With disable_shuffling, tfds orders a split by key: the index keeps the groups' order.
        for index, group in enumerate(groups):
            yield index, {"prompt": group["prompt"], "responses": group["responses"],
                          "ratings": np.asarray(group["ratings"], np.float64),
                          "stage": group.get("stage", ""), "id": group["id"]}


def _ranges(groups: Sequence[Group]) -> list[list[Any]]:
    """[[stage, start, stop], ...]: where each stage's groups lie in a split ("" for released groups).

    Groups come stage by stage (alignment_groups, then the released ones), so each stage is one
    run of indices, and a stage filter needs no pass over the records (`stage_indices`).
    """
    ranges: list[list[Any]] = []
    for index, group in enumerate(groups):
        stage = group.get("stage", "")
        if ranges and ranges[-1][0] == stage:
            ranges[-1][2] = index + 1
        elif any(r[0] == stage for r in ranges):
            raise AssertionError(f"the {stage!r} groups are not contiguous")
        else:
            ranges.append([stage, index, index + 1])
    return ranges


# --------------------------------------------------------------------------- building, reading back

def prepare(source_dir: str | os.PathLike, data_dir: str | os.PathLike) -> dict[str, Any]:
    """Builds the groups of `source_dir` into `data_dir` (once, or again when its files change);
    returns {split: data source} (``len`` and ``[i]``; `decode_record` turns an item into a group
    record). A file without one usable record raises ValueError and leaves an earlier build as it was."""
    return common.prepare_builder(Sandbox, source_dir, data_dir)


def build_report(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The counts the build in `data_dir` stored: ``records`` {split: groups}, ``stages`` {split:
    {stage: groups}} ("none" for released groups), ``interactions`` and ``released_groups`` {split:
    n read}, ``dropped_peer_ratings``, ``skipped`` / ``malformed`` {reason: n}, ``skipped_by_file``,
    ``skip_examples`` {reason: ["file:line: detail", ...]}."""
    builder = common.open_builder(Sandbox, data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(f"{data_dir}: no build of sandbox here (run prepare first)")
    return {key: builder.info.metadata[key] for key in REPORT_KEYS}


def stage_indices(data_dir: str | os.PathLike, split: str, stages: Sequence[str]) -> list[int]:
    """The indices of `split`'s groups of `stages` in the build in `data_dir`, in order (from the
    stage ranges the build stored, without reading the records)."""
    builder = common.open_builder(Sandbox, data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(f"{data_dir}: no build of sandbox here (run prepare first)")
    ranges = builder.info.metadata[RANGES_KEY].get(split, [])
    return [i for stage, start, stop in sorted(ranges, key=lambda r: r[1]) if stage in stages
            for i in range(start, stop)]


def _text_value(value: Any) -> str:
    return bytes(value).decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def decode_record(stored: dict[str, Any]) -> Group:
    """A stored group (bytes, numpy arrays) -> {"prompt": str, "responses": [str], "ratings": [float],
    "stage": str (absent for a released group), "id": str}: the jsonl "group" schema."""
    record = {
        "prompt": _text_value(stored["prompt"]),
        "responses": [_text_value(r) for r in stored["responses"]],
        "ratings": [float(r) for r in stored["ratings"]],
    }
    stage = _text_value(stored["stage"])
    if stage:
        record["stage"] = stage
    record["id"] = _text_value(stored["id"])
    return record
