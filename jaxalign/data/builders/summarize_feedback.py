"""TFDS builder for the OpenAI summarize-from-feedback comparisons (Stiennon et al. 2020, arXiv 2009.01325).

Reads the ``comparisons/*.json`` files into preference records: the post (or article) in the
paper's TL;DR prompt format, chosen = the summary the labeller picked; upstream's ``valid1`` and
``valid2`` splits become ``validation``.

Details: docs/data.md#summarize-from-feedback-comparisons-summarize_feedbackpy
"""

from __future__ import annotations

import json
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders import reading
from jaxalign.data.builders.reading import Skip, SourceFile

TLDR_FORMAT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
CNNDM_FORMAT = "Article:\n{article}\n\nTL;DR:\n"
SPLIT_NAMES = {"train": "train", "valid1": "validation", "valid2": "validation"}
FILES = (  # the comparisons files upstream publishes (any *.json in the directory is read)
    [f"batch{i}.json" for i in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22)]
    + ["batch0_cnndm.json", "cnndm0.json", "cnndm2.json", "edit_b2_eval_test.json"]
)
_URL = "https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset"
_FILE_LIST = " ".join(FILES)


def format_prompt(info: dict[str, Any]) -> str:
    """The query of a comparison's ``info``: a Reddit post or a news article."""
    if info.get("post") is not None:
        fields = {key: reading.get(info, key, str, "info.") for key in ("post", "title", "subreddit")}
        if not fields["post"].strip():
            raise Skip("empty_field", "empty 'info.post'")
        return TLDR_FORMAT.format(**fields)
    if info.get("article") is not None:
        article = reading.get(info, "article", str, "info.")
        if not article.strip():
            raise Skip("empty_field", "empty 'info.article'")
        return CNNDM_FORMAT.format(article=article)
    raise Skip("missing_field", "no 'info.post' or 'info.article'")


def parse_line(text: str) -> dict[str, str]:
    """One line of a comparisons file -> {"prompt", "chosen", "rejected", "split", "reference"}; raises
    Skip. ``reference`` keeps, as JSON, the raw post (None for news articles, as upstream has it) and
    summaries, which CoH's official format renders as the reference code does."""
    obj: Any = reading.need(reading.load_json(text), dict, "the line")
    prompt = format_prompt(reading.get(obj, "info", dict))
    summaries = reading.get(obj, "summaries", list)
    if len(summaries) != 2:
        raise Skip("wrong_type", f"'summaries' has {len(summaries)} entries, not 2")
    texts = [reading.get(reading.need(s, dict, f"summaries[{i}]"), "text", str, f"summaries[{i}].")
             for i, s in enumerate(summaries)]
    choice = reading.get(obj, "choice", int)
    if choice not in (0, 1):
        raise Skip("bad_choice", f"'choice' is {choice}, not 0 or 1")
    split = reading.get(obj, "split", str)
    if split not in SPLIT_NAMES:
        raise Skip("unknown_split", f"'split' is {split!r}, not one of {', '.join(SPLIT_NAMES)}")
    info = obj["info"]
    reference = {"post": info.get("post"), "answers": [texts[choice], texts[1 - choice]]}
    return reading.make_pair(prompt, texts[choice], texts[1 - choice], split=SPLIT_NAMES[split],
                             reference=json.dumps(reference, ensure_ascii=False))


def source_files(source_dir: epath.Path) -> list[SourceFile]:
    """Every *.json file of the comparisons directory (`source_dir` or its comparisons/), by name."""
    reading.require_dir(source_dir, "the summarize-from-feedback comparisons directory")
    directory = source_dir / "comparisons" if (source_dir / "comparisons").is_dir() else source_dir
    paths = sorted(reading.glob(directory, "*.json"))
    if not paths:
        raise FileNotFoundError(f"{directory}: no *.json comparisons files (e.g. {FILES[0]})")
    return [SourceFile(p, p.relative_to(source_dir).as_posix(), None) for p in paths]


class SummarizeFeedback(common.FeedbackBuilder):
    """OpenAI summarize-from-feedback: prompt = post or article, chosen = the summary the labeller chose."""

    name = "summarize_feedback"
    TASK = "summary"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {**common.FeedbackBuilder.RELEASE_NOTES,
                     "1.1.0": "reference: the raw post and summaries, as JSON (CoH's official format)."}
    RECORD_FEATURES = common.REFERENCE_FEATURES
    SPLITS = ("train", "validation")
    DESCRIPTION = "OpenAI summarize-from-feedback: pairs of summaries of a Reddit post or news article."
    HOMEPAGE = "https://github.com/openai/summarize-from-feedback"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download the comparisons directory and pass it (or the directory holding it) as the source:
        azcopy copy "{_URL}/*" . --recursive   # makes ./comparisons (and ./axis_evals, not read)
    or, file by file:
        mkdir comparisons && cd comparisons
        for f in {_FILE_LIST}; do
            curl -O {_URL}/comparisons/$f
        done
    """

    source_files = staticmethod(source_files)
    parse_line = staticmethod(parse_line)
