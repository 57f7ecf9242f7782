"""TFDS builder: a directory of preference JSONL files -> array_record splits, read without TensorFlow.

    sources = prepare("my_data/", "workdir/tfds")          # {"train": ..., "validation": ...}
    transform = functools.partial(examples.record_to_example, tokenizer=tok, kind="preference")
    batches = pipeline.make_batches(sources["train"], transform=transform, seq_len=256, batch_size=8, seed=0)

For your own data too large for memory: ``train.jsonl`` (and ``validation.jsonl``) are checked
strictly with `jsonl.read_records` and stored in file order, so the input pipeline reads them by
random access; the build is redone when the files change.

Details: docs/data.md#your-own-preference-jsonl-jsonl_preference
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from jaxalign import paths as paths_lib
from jaxalign.data import jsonl
from jaxalign.data.builders import feedback_common, reading

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}
_FINGERPRINT_KEY = "source_sha256"


def _split_paths(source_dir: epath.Path) -> dict[str, epath.Path]:
    paths = {split: source_dir / name for split, name in SPLIT_FILES.items() if (source_dir / name).is_file()}
    if "train" not in paths:
        raise FileNotFoundError(
            f"{source_dir}: no {SPLIT_FILES['train']} here (a preference data directory holds "
            f"{SPLIT_FILES['train']} and optionally {SPLIT_FILES['validation']})"
        )
    return paths


def _fingerprint(paths: dict[str, epath.Path]) -> str:
    digest = hashlib.sha256()
    for split, path in sorted(paths.items()):
        digest.update(split.encode() + b"\0")
        with paths_lib.path(path).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


class JsonlPreference(reading.QuietBuild, tfds.core.GeneratorBasedBuilder):
    """Preference pairs from JSONL files, local or in a bucket (pass the directory as the download
    config's ``manual_dir``; `prepare` does this)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "prompt, chosen, rejected, id as UTF-8 text."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train.jsonl (and optionally validation.jsonl) with one JSON object "
        '{"prompt", "chosen", "rejected"[, "id"]} per line in a directory and pass it as manual_dir.'
    )

    # tfds 4.9.10 finds `code_path` of a builder that lives in a package through the
    # `importlib_resources` backport, which it declares only for Python < 3.9, so preparing fails
    # with "No module named 'importlib_resources'" (tensorflow/datasets#11212). The path only
    # serves to look for a checksums.tsv beside the module (nothing is downloaded): give it directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Preference pairs (prompt, chosen, rejected) read from local JSONL files.",
            features=tfds.features.FeaturesDict({
                "prompt": tfds.features.Text(),
                "chosen": tfds.features.Text(),
                "rejected": tfds.features.Text(),
                "id": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        paths = _split_paths(paths_lib.path(dl_manager.manual_dir))
        self.info.metadata[_FINGERPRINT_KEY] = _fingerprint(paths)
        return {split: self._generate_examples(path) for split, path in paths.items()}

    def _generate_examples(self, path: epath.Path):
        count = 0
        for count, record in enumerate(jsonl.read_records(path, "preference"), start=1):
            # With disable_shuffling, tfds orders a split by key: the record's index keeps file order.
            yield count, {
                "prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"],
                "id": str(record.get("id", "")),
            }
        if not count:
            raise ValueError(f"{path}: no records")


def decode_record(stored: dict[str, Any]) -> dict[str, Any]:
    """A record as a data source returns it (bytes) -> the JSONL record (str; no "id" if none)."""
    record = {key: stored[key].decode("utf-8") for key in ("prompt", "chosen", "rejected")}
    ident = stored["id"].decode("utf-8")
    if ident:
        record["id"] = ident
    return record


def prepare(source_dir: str | os.PathLike, data_dir: str | os.PathLike) -> dict[str, Any]:
    """Builds (once, or again when the source files change) and returns {split: data source}.

    Each data source has ``len`` and ``[i]`` (a dict of bytes, see `decode_record`) and is a grain
    source for `make_batches`. A malformed line raises jsonl.RecordError naming file and line, and
    leaves any earlier build in `data_dir` as it was. Either directory may be local or in a bucket
    (``gs://``; feedback_common.build).
    """
    source = paths_lib.real(source_dir)
    paths = _split_paths(source)
    fingerprint = _fingerprint(paths)
    builder = feedback_common.open_builder(JsonlPreference, data_dir)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if builder.is_prepared():
        if builder.info.metadata.get(_FINGERPRINT_KEY) == fingerprint:
            return builder.as_data_source()
        log.warning("%s: the source files changed since %s was built; rebuilding it",
                    source, builder.data_dir)
        # A forced rebuild deletes the old build first: check every line before that happens.
        for path in paths.values():
            if not sum(1 for _ in jsonl.read_records(path, "preference")):  # reads every line
                raise ValueError(f"{path}: no records")
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    return feedback_common.build(JsonlPreference, source, data_dir, mode).as_data_source()
