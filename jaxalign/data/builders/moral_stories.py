"""TFDS builder for Moral Stories (Emelin et al. 2021, arXiv 2012.15738), read from the upstream files.

Each story becomes one Second Thoughts re-alignment example as a preference pair: prompt = norm +
situation + intention (`PROMPT_FORMAT`), chosen = the moral action, rejected = the immoral one, so
the same records train edit chains and a Bradley-Terry reward model. Reads the full file (split by
a hash of the story ID) or a directory of upstream split files.

Details: docs/data.md#moral-stories-moral_storiespy
"""

from __future__ import annotations

from typing import Any

from etils import epath

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders import reading
from jaxalign.data.builders.reading import Skip, SourceFile
from jaxalign.data.splits import hash_split

FULL_FILE = "moral_stories_full.jsonl"
SPLIT_FILES = {"train": "train.jsonl", "validation": "dev.jsonl", "test": "test.jsonl"}
PROMPT_FORMAT = "Norm: {norm}\nSituation: {situation}\nIntention: {intention}"
CONTEXT_FIELDS = ("norm", "situation", "intention")
TEST_PERCENT = 8
VALIDATION_PERCENT = 8


def split_of(story_id: str) -> str:
    """"test", "validation" or "train" for a story, by the SHA-256 of its ID."""
    return hash_split(story_id, {"test": TEST_PERCENT, "validation": VALIDATION_PERCENT})


def _story_id(obj: dict[str, Any]) -> str:
    for key in ("ID", "qID"):  # some split files call it qID
        if obj.get(key) is not None:
            story_id = reading.need(obj[key], str, repr(key)).strip()
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
    return reading.get(obj, "moral_action", str), reading.get(obj, "immoral_action", str)


def parse_line(text: str) -> dict[str, str]:
    """One line of a Moral Stories file -> {"prompt", "chosen", "rejected", "split"}; raises Skip."""
    obj: Any = reading.need(reading.load_json(text), dict, "the line")
    story_id = _story_id(obj)
    context = {key: reading.get(obj, key, str).strip() for key in CONTEXT_FIELDS}
    for key, value in context.items():
        if not value:
            raise Skip("empty_field", f"empty {key!r}")
    moral, immoral = _actions(obj)
    return reading.make_pair(PROMPT_FORMAT.format(**context), moral, immoral, split=split_of(story_id))


def source_files(source_dir: epath.Path) -> list[SourceFile]:
    """The split files (train, dev, test) if there are any, else moral_stories_full.jsonl."""
    reading.require_dir(source_dir, "a Moral Stories split directory or the one holding " + FULL_FILE)
    if any((source_dir / name).is_file() for name in SPLIT_FILES.values()):
        files = []
        for split, name in SPLIT_FILES.items():
            path = reading.one_of(source_dir, (name,), "a split directory has train, dev and test")
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
