"""The three human-feedback datasets of Chain of Hindsight, built from their upstream files with TFDS.

    sources = prepare("hh_rlhf", "downloads/hh-rlhf", "workdir/tfds")   # {"train": ..., "test": ...}
    record = decode_record(sources["train"][0])  # {"prompt", "chosen", "rejected", "id", "task"}
    skip_report("hh_rlhf", "workdir/tfds")       # {"records": ..., "skipped": {"tie": 3}, ...}

name                 source directory                          splits                      task
hh_rlhf              an Anthropic/hh-rlhf clone                train, test                 dialogue
webgpt               one holding comparisons.jsonl             train, validation (hash)    webgpt
summarize_feedback   summarize-from-feedback's comparisons/   train, validation (valid*)  summary

Where to download each one: the builder's MANUAL_DOWNLOAD_INSTRUCTIONS (hh_rlhf.HhRlhf,
webgpt.WebGpt, summarize_feedback.SummarizeFeedback); nothing is downloaded at run time. How each
format is parsed (each builder's ``parse_line``, public: one line -> record, or `Skip` raised with
the reason): webgpt and summarize_feedback in docs/data.md#human-feedback-comparisons-chain-of-hindsight,
hh_rlhf in hh_rlhf.py's docstring.

Records are in the preference schema of jsonl.py plus ``task``; a data source returns bytes, and
`decode_record` gives str. They feed ``pipeline.make_batches`` (``kind="preference"``) and the CoH
data builder. Unusable lines are counted by reason, never fatal (reading.py); the counts
are in the dataset's metadata (`skip_report`). Like jsonl_preference.prepare, `prepare` builds
once, and again when the source files change (a SHA-256 of them is in the metadata); the new
files are checked before the old build is replaced.
"""

from __future__ import annotations

import os
from typing import Any

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders.feedback_common import FeedbackBuilder
from jaxalign.data.builders.hh_rlhf import HhRlhf
from jaxalign.data.builders.reading import MALFORMED, SKIPPED, Skip
from jaxalign.data.builders.summarize_feedback import SummarizeFeedback
from jaxalign.data.builders.webgpt import WebGpt

BUILDERS: dict[str, type[FeedbackBuilder]] = {
    "hh_rlhf": HhRlhf, "webgpt": WebGpt, "summarize_feedback": SummarizeFeedback,
}
FIELDS = ("prompt", "chosen", "rejected", "id", "task")
REPORT_KEYS = ("records", "skipped", "malformed", "skipped_by_file", "skip_examples")

__all__ = [
    "BUILDERS", "MALFORMED", "SKIPPED", "HhRlhf", "Skip", "SummarizeFeedback", "WebGpt",
    "builder_class", "decode_record", "prepare", "skip_report",
]


def builder_class(name: str) -> type[FeedbackBuilder]:
    if name not in BUILDERS:
        raise ValueError(f"unknown feedback dataset {name!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[name]


def _builder(name: str, data_dir: str | os.PathLike) -> FeedbackBuilder:
    return common.open_builder(builder_class(name), data_dir)


def prepare(name: str, source_dir: str | os.PathLike, data_dir: str | os.PathLike) -> dict[str, Any]:
    """Builds dataset `name` from `source_dir` (once, or again when its files change) into `data_dir`;
    returns {split: data source}.

    Each data source has ``len`` and ``[i]`` (a dict of bytes, see `decode_record`) and is a grain
    source. A missing file or directory raises FileNotFoundError; a file without one usable
    record raises ValueError, and leaves an earlier build in `data_dir` as it was. Either directory
    may be local or in a bucket (``gs://``; feedback_common.build).
    """
    return common.prepare_builder(builder_class(name), source_dir, data_dir)


def skip_report(name: str, data_dir: str | os.PathLike) -> dict[str, Any]:
    """The counts stored by the build of `name` in `data_dir`:

    ``records`` {split: n}; ``skipped`` {"tie"|"duplicate": n}; ``malformed`` {reason: n};
    ``skipped_by_file`` {file: {reason: n}}; ``skip_examples`` {reason: ["file:line: detail", ...]}
    (the first few). Reasons with no line are left out.
    """
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(f"{data_dir}: no build of {name} here (run prepare first)")
    return {key: builder.info.metadata[key] for key in REPORT_KEYS}


def decode_record(stored: dict[str, Any]) -> dict[str, str]:
    """A record as a data source returns it (bytes) -> {"prompt", "chosen", "rejected", "id", "task"}."""
    return {key: stored[key].decode("utf-8") for key in FIELDS}
