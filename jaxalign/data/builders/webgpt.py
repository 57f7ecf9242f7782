"""TFDS builder for the OpenAI WebGPT comparisons (Nakano et al. 2021, arXiv 2112.09332).

Reads ``comparisons.jsonl`` (OpenAI's layout or the Hugging Face one) into preference records:
prompt = the question (without the per-answer quotes), chosen = the higher-scored answer. Upstream
has one split, so validation is a slice of the questions by hash, never trained on.

Details: docs/data.md#webgpt-comparisons-webgptpy
"""

from __future__ import annotations

import json
import math
from typing import Any

import tensorflow_datasets as tfds
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


def _quotes(quotes: Any, where: str) -> list[tuple[str, str]]:
    """An answer's quotes, [(title, extract)], from OpenAI's list of objects or HF's lists per key."""
    if isinstance(quotes, dict):  # Hugging Face: {"title": [...], "extract": [...]}
        titles, extracts = (reading.get(quotes, key, list, where) for key in ("title", "extract"))
        return [(str(t), str(e)) for t, e in zip(titles, extracts, strict=False)]
    quotes = reading.need(quotes, list, where.rstrip("."))
    return [(reading.get(q, "title", str, where), reading.get(q, "extract", str, where))
            for q in (reading.need(q, dict, f"{where}[{i}]") for i, q in enumerate(quotes))]


def _sides(obj: Any) -> tuple[str, list[tuple[str, float, list[tuple[str, str]]]]]:
    """A line of either layout -> (question, [(answer, score, quotes)] * 2)."""
    if isinstance(obj, list):  # OpenAI's file: the two answers
        if len(obj) != 2:
            raise Skip("wrong_type", f"a comparison is an array of 2 answers, got {len(obj)}")
        answers = [reading.need(a, dict, f"answer {i}") for i, a in enumerate(obj)]
        questions = [_question(a, f"[{i}].") for i, a in enumerate(answers)]
        if questions[0].strip() != questions[1].strip():
            raise Skip("question_mismatch", "the two answers answer different questions")
        sides = [(reading.get(a, "answer", str, f"[{i}]."), _score(a, "score", f"[{i}]."),
                  _quotes(a.get("quotes", []), f"[{i}].quotes.")) for i, a in enumerate(answers)]
        return questions[0], sides
    if isinstance(obj, dict):  # the Hugging Face dataset's flattened row
        sides = [(reading.get(obj, f"answer_{i}", str), _score(obj, f"score_{i}"),
                  _quotes(obj.get(f"quotes_{i}", []), f"quotes_{i}.")) for i in range(2)]
        return _question(obj, ""), sides
    raise Skip("wrong_type", f"the line is {reading.type_name(obj)}, not an array of 2 answers or an object")


def parse_line(text: str) -> dict[str, str]:
    """One line of comparisons.jsonl -> {"prompt", "chosen", "rejected", "split", "reference"}; raises Skip.

    ``reference`` keeps, as JSON, the raw question and answers and each answer's quotes
    ([chosen, rejected]), which CoH's official format renders as the reference code does.
    """
    question, sides = _sides(reading.load_json(text))
    if sides[0][1] == sides[1][1]:
        raise Skip("tie", f"equal scores ({sides[0][1]:g})")
    chosen, rejected = sides if sides[0][1] > sides[1][1] else sides[::-1]
    prompt = question.strip()
    reference = {"question": question, "answers": [chosen[0], rejected[0]],
                 "quotes": [chosen[2], rejected[2]]}
    return reading.make_pair(prompt, chosen[0], rejected[0], split=split_of(prompt),
                             reference=json.dumps(reference, ensure_ascii=False))


def source_files(source_dir: epath.Path) -> list[SourceFile]:
    reading.require_dir(source_dir, "the directory holding the WebGPT comparisons.jsonl")
    path = reading.one_of(source_dir, (FILE,), "the WebGPT comparisons")
    return [SourceFile(path, FILE, None)]


class WebGpt(common.FeedbackBuilder):
    """OpenAI WebGPT comparisons: prompt = question, chosen/rejected = the higher/lower scored answer."""

    name = "webgpt"
    TASK = "webgpt"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {**common.FeedbackBuilder.RELEASE_NOTES,
                     "1.1.0": "reference: the raw question, answers and quotes as JSON (CoH official)."}
    RECORD_FEATURES = common.REFERENCE_FEATURES
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
