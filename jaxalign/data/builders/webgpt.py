"""TFDS builder for the OpenAI WebGPT comparisons (Nakano et al. 2021, arXiv 2112.09332).

The source directory holds ``comparisons.jsonl`` as OpenAI publishes it: each line a JSON array
of the two compared answers, each ``{"question": {"dataset", "id", "full_text"}, "quotes": [...],
"answer": str, "tokens": {...}, "score": float}``. A line may also be in the flattened layout of
the Hugging Face dataset ``openai/webgpt_comparisons`` (one object with ``question``,
``quotes_0``, ``answer_0``, ``tokens_0``, ``score_0``, ``quotes_1``, ...), e.g. saved with
``datasets.load_dataset("openai/webgpt_comparisons", split="train").to_json("comparisons.jsonl")``.

Parsing (`parse_line`):

- prompt = the question's ``full_text``, stripped. Design choice: the quotes are left out. Each
  answer has its own quotes (what was found while browsing for it), so they are no part of a
  prompt shared by the two answers; answers keep their citation marks ("[1]") verbatim.
- chosen = the answer with the higher score (the scores of a pair sum to 0, from -1 to 1),
  stripped; ``tie``: equal scores (both 0) or identical answers.
- ``question_mismatch``: the two answers of a raw line answer different questions.

Splits: upstream has a single split. Design choice: ``validation`` holds the questions whose
SHA-256 (of the stripped question text) falls in the lowest VALIDATION_PERCENT of the hash range,
``train`` the rest; a question's comparisons are all on one side, so none of validation's
questions is trained on.

Records: task ``"webgpt"``, id ``"comparisons.jsonl:<line>"``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders.feedback_common import Skip, SourceFile

FILE = "comparisons.jsonl"
VALIDATION_PERCENT = 5


def split_of(question: str) -> str:
    """"validation" for VALIDATION_PERCENT percent of questions (by hash), else "train"."""
    bucket = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") % 100
    return "validation" if bucket < VALIDATION_PERCENT else "train"


def _question(obj: dict[str, Any], where: str) -> str:
    question = common.get(obj, "question", dict, where)
    return common.get(question, "full_text", str, f"{where}question.")


def _score(obj: dict[str, Any], key: str, where: str = "") -> float:
    score = common.get(obj, key, (int, float), where)
    if not math.isfinite(score):
        raise Skip("wrong_type", f"{where + key!r} is {score}")
    return float(score)


def _sides(obj: Any) -> tuple[str, list[tuple[str, float]]]:
    """A line of either layout -> (question, [(answer, score)] * 2)."""
    if isinstance(obj, list):  # OpenAI's file: the two answers
        if len(obj) != 2:
            raise Skip("wrong_type", f"a comparison is an array of 2 answers, got {len(obj)}")
        answers = [common.need(a, dict, f"answer {i}") for i, a in enumerate(obj)]
        questions = [_question(a, f"[{i}].") for i, a in enumerate(answers)]
        if questions[0].strip() != questions[1].strip():
            raise Skip("question_mismatch", "the two answers answer different questions")
        sides = [(common.get(a, "answer", str, f"[{i}]."), _score(a, "score", f"[{i}]."))
                 for i, a in enumerate(answers)]
        return questions[0], sides
    if isinstance(obj, dict):  # the Hugging Face dataset's flattened row
        sides = [(common.get(obj, f"answer_{i}", str), _score(obj, f"score_{i}")) for i in range(2)]
        return _question(obj, ""), sides
    raise Skip("wrong_type", f"the line is {common.type_name(obj)}, not an array of 2 answers or an object")


def parse_line(text: str) -> dict[str, str]:
    """One line of comparisons.jsonl -> {"prompt", "chosen", "rejected", "split"}; raises Skip."""
    question, ((answer_0, score_0), (answer_1, score_1)) = _sides(common.load_json(text))
    if score_0 == score_1:
        raise Skip("tie", f"equal scores ({score_0:g})")
    chosen, rejected = (answer_0, answer_1) if score_0 > score_1 else (answer_1, answer_0)
    prompt = question.strip()
    return common.make_pair(prompt, chosen, rejected, split=split_of(prompt))


def source_files(source_dir: Path) -> list[SourceFile]:
    common.require_dir(source_dir, "the directory holding the WebGPT comparisons.jsonl")
    path = common.one_of(source_dir, (FILE,), "the WebGPT comparisons")
    return [SourceFile(path, FILE, None)]


class WebGpt(common.FeedbackBuilder):
    """OpenAI WebGPT comparisons: prompt = question, chosen/rejected = the higher/lower scored answer."""

    name = "webgpt"
    TASK = "webgpt"
    SPLITS = ("train", "validation")
    DESCRIPTION = "OpenAI WebGPT answer comparisons (ties skipped), a validation split held out by question."
    HOMEPAGE = "https://openai.com/research/webgpt"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download comparisons.jsonl into a directory and pass that directory as the source:
        curl -O https://openaipublic.blob.core.windows.net/webgpt-answer-viewer/comparisons.jsonl
    A JSON-lines export of the Hugging Face dataset openai/webgpt_comparisons, saved under the same
    name, works too.
    """

    source_files = staticmethod(source_files)
    parse_line = staticmethod(parse_line)
