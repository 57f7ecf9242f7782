"""TFDS builder for Moral Stories (Emelin et al. 2021, arXiv 2012.15738), read from the upstream files.

Each story is seven sentences: a norm, a situation, an actor's intention, and two branches, a moral
(norm-following) action with its consequence and an immoral (norm-divergent) action with its
consequence. Second Thoughts (Liu et al. 2022, arXiv 2301.00355) uses a story as one re-alignment
example: context = norm + situation + intention, unaligned = the immoral action, aligned = the
moral action. Records are preference pairs (the schema of the feedback builders), so the same data
trains a Bradley-Terry reward model and the edit chains (chosen = aligned, rejected = unaligned):

    {"prompt": PROMPT_FORMAT.format(norm, situation, intention), "chosen": moral_action,
     "rejected": immoral_action, "id": "<file>:<line>", "task": "moral_stories"}

Design choice: the prompt names its three parts (PROMPT_FORMAT), so that a model reading it can
tell the general norm from the particular story; each part is stripped. The consequences are left
out: a consequence follows from its action, so it would give the preferred branch away and is no
part of the shared context. Changing PROMPT_FORMAT changes the records: bump the builder's VERSION.

Layout (either one; a source directory with both is read as a split directory):

- a split directory: ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl``, as upstream publishes
  them per task and split strategy. Only the files that hold both actions on one line give
  records: the norm generation tasks, e.g. ``generation/norm|actions+context/norm_distance``.
  The classification and action generation files hold one action per line (the moral one with
  label "1", the immoral one with "0"): every line is skipped as ``missing_field``, so such a
  directory fails the build with an error saying so. Splits: train, validation (dev), test.
- ``moral_stories_full.jsonl``: all 12k stories. Splits by a hash of the story's ``ID``
  (`split_of`): TEST_PERCENT percent test, VALIDATION_PERCENT percent validation, the rest train
  (upstream's own splits are 10k/1k/1k).

Each line is ``{"ID", "norm", "situation", "intention", "moral_action", "moral_consequence",
"immoral_action", "immoral_consequence"}`` (split files may call the ID ``qID``, name the
consequences good_/bad_consequence and add a ``"label"``; only the ID, the three context fields and
the two actions are read). Skips: ``missing_field``/``wrong_type``/``empty_field`` for those fields,
``tie`` for identical actions, ``duplicate`` for a story repeated within a split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders.feedback_common import Skip, SourceFile

FULL_FILE = "moral_stories_full.jsonl"
SPLIT_FILES = {"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"}
PROMPT_FORMAT = "Norm: {norm}\nSituation: {situation}\nIntention: {intention}"
CONTEXT_FIELDS = ("norm", "situation", "intention")
TEST_PERCENT = 8
VALIDATION_PERCENT = 8


def split_of(story_id: str) -> str:
    """"test", "validation" or "train" for a story, by the SHA-256 of its ID."""
    bucket = int.from_bytes(hashlib.sha256(story_id.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < TEST_PERCENT:
        return "test"
    return "validation" if bucket < TEST_PERCENT + VALIDATION_PERCENT else "train"


def _story_id(obj: dict[str, Any]) -> str:
    for key in ("ID", "qID"):  # some split files call it qID
        if obj.get(key) is not None:
            story_id = common.need(obj[key], str, repr(key)).strip()
            if not story_id:
                raise Skip("empty_field", f"empty {key!r}")
            return story_id
    raise Skip("missing_field", "no 'ID'")


def _actions(obj: dict[str, Any]) -> tuple[str, str]:
    present = [key for key in ("moral_action", "immoral_action") if obj.get(key) is not None]
    if len(present) == 1:  # a line of a classification or action generation split
        missing = "immoral_action" if present == ["moral_action"] else "moral_action"
        raise Skip("missing_field", f"no {missing!r}: a line with one action (a classification or action "
                                    f"generation split); use {FULL_FILE} or a norm generation split")
    return common.get(obj, "moral_action", str), common.get(obj, "immoral_action", str)


def parse_line(text: str) -> dict[str, str]:
    """One line of a Moral Stories file -> {"prompt", "chosen", "rejected", "split"}; raises Skip."""
    obj: Any = common.need(common.load_json(text), dict, "the line")
    story_id = _story_id(obj)
    context = {key: common.get(obj, key, str).strip() for key in CONTEXT_FIELDS}
    for key, value in context.items():
        if not value:
            raise Skip("empty_field", f"empty {key!r}")
    moral, immoral = _actions(obj)
    return common.make_pair(PROMPT_FORMAT.format(**context), moral, immoral, split=split_of(story_id))


def source_files(source_dir: Path) -> list[SourceFile]:
    """The split files (train, dev, test) if there are any, else moral_stories_full.jsonl."""
    common.require_dir(source_dir, "a Moral Stories split directory or the one holding " + FULL_FILE)
    if any((source_dir / name).is_file() for name in SPLIT_FILES.values()):
        files = []
        for split, name in SPLIT_FILES.items():
            path = common.one_of(source_dir, (name,), "a split directory has train, dev and test")
            files.append(SourceFile(path, name, split))
        return files
    if (source_dir / FULL_FILE).is_file():
        return [SourceFile(source_dir / FULL_FILE, FULL_FILE, None)]
    raise FileNotFoundError(
        f"{source_dir}: no train.jsonl, dev.jsonl, test.jsonl or {FULL_FILE} (expected the directory "
        f"holding {FULL_FILE}, or a split directory such as generation/norm|actions+context/norm_distance)"
    )


class MoralStories(common.FeedbackBuilder):
    """Moral Stories: prompt = norm + situation + intention, chosen/rejected = the moral/immoral action."""

    name = "moral_stories"
    TASK = "moral_stories"
    SPLITS = ("train", "validation", "test")
    DESCRIPTION = ("Moral Stories (Emelin et al. 2021): norm, situation and intention as the prompt, the "
                   "moral action chosen over the immoral one.")
    HOMEPAGE = "https://github.com/demelin/moral_stories"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download the Moral Stories data (linked from https://github.com/demelin/moral_stories, the
    archive moral_stories_datasets.tar.xz) and unpack it; pass as the source either
      - the directory holding {FULL_FILE} (all 12k stories, split here by a hash of the ID), or
      - a split directory holding train.jsonl, dev.jsonl and test.jsonl with both actions on
        each line, e.g. generation/norm|actions+context/norm_distance (upstream's norm-distance
        split).
    The Hugging Face dataset demelin/moral_stories (config "full") saved as JSON lines under the
    name {FULL_FILE} works too.
    """
    RELEASE_NOTES = {
        "1.0.0": "prompt (norm, situation, intention), chosen (moral action), rejected (immoral action).",
    }

    source_files = staticmethod(source_files)
    parse_line = staticmethod(parse_line)
