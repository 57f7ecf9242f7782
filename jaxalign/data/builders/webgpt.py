"""TFDS builder for the OpenAI WebGPT comparisons (Nakano et al. 2021, arXiv 2112.09332).

Reads ``comparisons.jsonl`` (OpenAI's layout or the Hugging Face one) into preference records:
prompt = the question (without the per-answer quotes), chosen = the higher-scored answer. Upstream
has one split, so validation is a slice of the questions by hash, never trained on.

Details: docs/data.md#webgpt-comparisons-webgptpy
"""

from __future__ import annotations

import math
from typing import Any

from etils import epath

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders import reading
from jaxalign.data.builders.reading import Skip, SourceFile
from jaxalign.data.splits import hash_split

FILE = "comparisons.jsonl"
VALIDATION_PERCENT = 5


def split_of(question: str) -> str:
    """"validation" for VALIDATION_PERCENT percent of questions (by hash), else "train"."""
    return hash_split(question, {"validation": VALIDATION_PERCENT})


def _question(obj: dict[str, Any], where: str) -> str:
    question = reading.get(obj, "question", dict, where)
    return reading.get(question, "full_text", str, f"{where}question.")


def _score(obj: dict[str, Any], key: str, where: str = "") -> float:
    score = reading.get(obj, key, (int, float), where)
    if not math.isfinite(score):
        raise Skip("wrong_type", f"{where + key!r} is {score}")
    return float(score)


def _sides(obj: Any) -> tuple[str, list[tuple[str, float]]]:
    """A line of either layout -> (question, [(answer, score)] * 2)."""
    if isinstance(obj, list):  # OpenAI's file: the two answers
        if len(obj) != 2:
            raise Skip("wrong_type", f"a comparison is an array of 2 answers, got {len(obj)}")
        answers = [reading.need(a, dict, f"answer {i}") for i, a in enumerate(obj)]
        questions = [_question(a, f"[{i}].") for i, a in enumerate(answers)]
        if questions[0].strip() != questions[1].strip():
            raise Skip("question_mismatch", "the two answers answer different questions")
        sides = [(reading.get(a, "answer", str, f"[{i}]."), _score(a, "score", f"[{i}]."))
                 for i, a in enumerate(answers)]
        return questions[0], sides
    if isinstance(obj, dict):  # the Hugging Face dataset's flattened row
        sides = [(reading.get(obj, f"answer_{i}", str), _score(obj, f"score_{i}")) for i in range(2)]
        return _question(obj, ""), sides
    raise Skip("wrong_type", f"the line is {reading.type_name(obj)}, not an array of 2 answers or an object")


def parse_line(text: str) -> dict[str, str]:
    """One line of comparisons.jsonl -> {"prompt", "chosen", "rejected", "split"}; raises Skip."""
    question, ((answer_0, score_0), (answer_1, score_1)) = _sides(reading.load_json(text))
    if score_0 == score_1:
        raise Skip("tie", f"equal scores ({score_0:g})")
    chosen, rejected = (answer_0, answer_1) if score_0 > score_1 else (answer_1, answer_0)
    prompt = question.strip()
    return reading.make_pair(prompt, chosen, rejected, split=split_of(prompt))


def source_files(source_dir: epath.Path) -> list[SourceFile]:
    reading.require_dir(source_dir, "the directory holding the WebGPT comparisons.jsonl")
    path = reading.one_of(source_dir, (FILE,), "the WebGPT comparisons")
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
