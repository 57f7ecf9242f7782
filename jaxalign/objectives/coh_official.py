"""The Chain of Hindsight reference code's own rendering of feedback data (``objective.format =
"official"``): forhaoliu/chain-of-hindsight at 9f55cea, ``coh/data/pack_hf.py`` (records) and
``coh/data/dataset.py`` ``TextProcessor`` (tokens and loss mask). Rules with file:line citations:
tests/data/coh_reference/REFERENCE.md; tests/test_coh_official.py checks this module against
golden renderings made by running the reference's own functions.

A rendering is a list of (text or EOS id, weight) pieces, each text one ``tokenizer.encode`` call
(the reference encodes its fields one by one; they are never joined as strings):

- dialogue: every assistant turn of the transcript, ``"User: {human} {marker}"`` (0),
  ``"{assistant}"`` (1), EOS (1); ``pn``/``np`` repeat the whole dialogue, weighted both times;
- WebGPT: ``"User: {question} {task sentence}[1] title: … content: … {marker}"`` (0), the answer, EOS;
- summarize: ``"User: {task sentence}{post} {marker}"`` (0), the summary, EOS;
  in ``pn``/``np`` the second answer gets only its quotes (WebGPT) and marker;
- one more EOS (1) per record; no BOS (the reference adds one per packed row, not per record).

With ``aux_phrases`` each phrase pair of the task's table *replaces* the markers and every pair
gives a full set of variants (12 for dialogue, 6 for WebGPT and summarize). The task sentences
are drawn by `choose` (seeded per example in training; the reference's draws are unseeded).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxalign.data.examples import text_field

Piece = tuple[str | int, float]
Choose = Callable[[Sequence[str]], str]

# pack_hf.py:373-457 (Apache-2.0): the auxiliary phrase pairs and task sentences, as the reference has them.
DIALOGUE = {
    "good": [f"{lead} {kind}." for lead in ("The following is a", "Generate a")
             for kind in ("better response", "more helpful response", "more harmless response",
                          "better chat", "more helpful chat", "more harmless chat")],
    "bad": [f"{lead} {kind}." for lead in ("The following is a", "Generate a")
            for kind in ("worse response", "less helpful response", "more harmful response",
                         "worse chat", "less helpful chat", "more harmful chat")],
}
WEBGPT = {
    "good": [f"{lead} {kind} answer." for lead in ("The following is a", "Generate a")
             for kind in ("better", "more accurate", "more correct")],
    "bad": [f"{lead} {kind} answer." for lead in ("The following is a", "Generate a")
            for kind in ("worse", "less accurate", "less correct")],
    "task": ["Quote the following sources in your answer: ", "Use the following sources in your answer: ",
             "You may use the following sources in your answer: ",
             "You may quote the following sources in your answer: ",
             "The following sources may be helpful: "],
}
SUMMARY = {
    "good": [phrase.replace("answer", "summary") for phrase in WEBGPT["good"]],
    "bad": [phrase.replace("answer", "summary") for phrase in WEBGPT["bad"]],
    "task": ["Write a summary of the following article: ", "Generate a summary of the following text: ",
             "Summarize the following article: ", "Summarize the following text: ",
             "Write a summary of the following text: ", "Here is a news article, please summarize it: ",
             "Please write a summary of the following paragraph: ",
             "Please summarize the following paragraph: "],
}
TABLES = {"dialogue": DIALOGUE, "webgpt": WEBGPT, "summary": SUMMARY}
# The order pack_hf appends variants in (np before pn for dialogues only, pack_hf.py:95-156).
ORDER = {"dialogue": ("p", "n", "np", "pn"), "webgpt": ("p", "n", "pn", "np"),
         "summary": ("p", "n", "pn", "np")}
REFERENCE_FIELD = "reference"  # the JSON text field WebGPT and summarize records keep for this format


def task_of(record: Mapping[str, Any]) -> str:
    task = text_field(record, "task", "CoH") if "task" in record else ""
    if task not in TABLES:
        raise ValueError(f"objective.format='official' renders the reference's datasets (record task "
                         f"{' or '.join(map(repr, TABLES))}), got task {task!r}; use format='jaxalign'")
    return task


def examples_of(task: str, variants: Sequence[str], aux: bool, positive: str,
                negative: str) -> list[tuple[str, str, str]]:
    """(variant, positive marker, negative marker) of every example a record gives, in the
    reference's order: per marker pair (the configured one, or each aux pair), each variant."""
    unknown = [v for v in variants if v not in ORDER[task]]
    if unknown:
        raise ValueError(f"objective.format='official' has the variants {list(ORDER[task])}, not {unknown}")
    pairs = zip(TABLES[task]["good"], TABLES[task]["bad"], strict=True) if aux else [(positive, negative)]
    return [(v, good, bad) for good, bad in pairs for v in ORDER[task] if v in variants]


def _reference_turns(text: str) -> list[str]:
    """pack_hf.py:67-76: split on the bare words; a piece without "Assistant:" counts twice."""
    out = []
    for message in text.split("Human:")[1:]:
        parts = message.split("Assistant:")
        out += [parts[0].strip(), (parts[1] if len(parts) > 1 else parts[0]).strip()]
    return out


def _dialogue(record: Mapping[str, Any], halves: list[bool], user: str, markers: dict[bool, str],
              eos: int) -> list[Piece]:
    prompt = text_field(record, "prompt", "CoH")
    texts = {True: _reference_turns(f"{prompt} {text_field(record, 'chosen', 'CoH')}"),
             False: _reference_turns(f"{prompt} {text_field(record, 'rejected', 'CoH')}")}
    # One dict holds every half's human_{i}, so a later half's human turn wins (pack_hf.py:77-92).
    humans = {i: t for positive in halves for i, t in enumerate(texts[positive]) if i % 2 == 0}
    pieces: list[Piece] = []
    for positive in halves:
        for i in range(1, len(texts[positive]), 2):
            pieces += [(f"{user} {humans[i - 1]} {markers[positive]}", 0.0), (texts[positive][i], 1.0),
                       (eos, 1.0)]
    return pieces


def reference_fields(record: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The raw upstream fields a WebGPT or summarize record keeps for this format (`REFERENCE_FIELD`)."""
    if REFERENCE_FIELD not in record:
        raise ValueError(f"objective.format='official' needs the {task} record's {REFERENCE_FIELD!r} field "
                         "(the raw question, quotes or post; rebuild the dataset with this jaxalign version)")
    return json.loads(text_field(record, REFERENCE_FIELD, "CoH"))


def _answers(record: Mapping[str, Any], task: str, halves: list[bool], user: str, markers: dict[bool, str],
             eos: int, choose: Choose) -> list[Piece]:
    raw = reference_fields(record, task)
    pieces: list[Piece] = []
    for half, positive in enumerate(halves):
        side = 0 if positive else 1  # raw lists are [chosen, rejected]
        fields = [user, raw["question"]] if half == 0 and task == "webgpt" else []
        if task == "webgpt" and raw["quotes"][side]:
            quotes = "".join(f"[{i + 1}] title: {title} content: {extract} "
                             for i, (title, extract) in enumerate(raw["quotes"][side]))
            fields.append(choose(WEBGPT["task"]) + quotes)
        if task == "summary" and half == 0:
            fields += [user, choose(SUMMARY["task"]) + f"{raw['post']}"]
        answer = raw["answers"][side] if task == "webgpt" else raw["answers"][side].lstrip()
        pieces += [(" ".join([*fields, markers[positive]]), 0.0), (answer, 1.0), (eos, 1.0)]
    return pieces


def pieces(record: Mapping[str, Any], variant: str, positive_marker: str, negative_marker: str, user: str,
           eos: int, choose: Choose) -> list[Piece]:
    """One record's official rendering for a variant and marker pair (module docstring)."""
    task = task_of(record)
    halves = {"p": [True], "n": [False], "pn": [True, False], "np": [False, True]}[variant]
    markers = {True: positive_marker, False: negative_marker}
    if task == "dialogue":
        body = _dialogue(record, halves, user, markers, eos)
    else:
        body = _answers(record, task, halves, user, markers, eos, choose)
    return [*body, (eos, 1.0)]
