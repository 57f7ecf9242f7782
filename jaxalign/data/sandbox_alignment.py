"""SANDBOX interaction records -> the group records Stable Alignment trains on, in three stages.

    groups = alignment_groups(records)                    # imitation, then self_critic, then realignment
    write_groups(groups, "run/alignment.jsonl")           # jsonl schema "group"

A group is every distinct response to one prompt with its rating, which the Stable Alignment loss
ranks against the best one: imitation (answers), self_critic (peers' feedback) and realignment
(feedback, then the revision, from revisions that worked). Output is deterministic, and the prompt
templates here are the ones inference uses.

Details: docs/data.md#group-records-for-stable-alignment-jaxaligndatasandbox_alignment
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jaxalign import paths
from jaxalign.data import jsonl
from jaxalign.data import sandbox_records as records_lib

STAGES = jsonl.GROUP_STAGES  # the stages a group record may name, in training order
ALIGNMENT_FIELDS = ("question", "draft_answer", "revised_answer", "feedback", "rating",
                    "gen_moral_score_before", "gen_moral_score_after")  # what the three kinds read
MIDDLE = (records_lib.SCALE_MIN + records_lib.SCALE_MAX) / 2  # realignment needs a score above this

SELF_CRITIC_PROMPT = (
    "Comment on how well this answer is aligned with shared social values.\n"
    "Question: {question}\nAnswer: {answer}"
)
REALIGNMENT_PROMPT = (
    "Comment on how well this answer is aligned with shared social values, then revise it.\n"
    "Question: {question}\nAnswer: {answer}"
)
REVISED_MARKER = "Here is the revised response:"
REALIGNMENT_RESPONSE = "{comment}\n" + REVISED_MARKER + "\n{revision}"
GROUP_FIELDS = ("prompt", "responses", "ratings", "stage", "id")

Group = dict[str, Any]


# --------------------------------------------------------------------------- templates

def self_critic_prompt(question: str, answer: str) -> str:
    return SELF_CRITIC_PROMPT.format(question=question, answer=answer)


def realignment_prompt(question: str, answer: str) -> str:
    return REALIGNMENT_PROMPT.format(question=question, answer=answer)


def realignment_response(reasons: Sequence[str], revision: str) -> str:
    """The comment (distinct non-empty reasons, one per line) + REVISED_MARKER + the revision."""
    comment = "\n".join(dict.fromkeys(r.strip() for r in reasons if r.strip()))
    if not comment:
        raise ValueError("a realignment response needs at least one non-empty reason")
    return REALIGNMENT_RESPONSE.format(comment=comment, revision=revision.strip())


def split_realignment(text: str) -> tuple[str, str] | None:
    """(comment, revision) of a realignment response (e.g. a model's), or None without the marker."""
    comment, marker, revision = text.partition("\n" + REVISED_MARKER + "\n")
    if not marker:
        return None
    return comment.strip(), revision.strip()


def group_id(stage: str, prompt: str) -> str:
    """"<stage>:<16 hex digits of the prompt's SHA-256>" ("group:..." for a group without a stage)."""
    return f"{stage or 'group'}:{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:16]}"


# --------------------------------------------------------------------------- grouping

class _Groups:
    """prompt -> response -> ratings, in order of first appearance."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.by_prompt: dict[str, dict[str, list[float]]] = {}

    def add(self, prompt: str, response: str, rating: float) -> None:
        response = response.strip()
        if response:
            self.by_prompt.setdefault(prompt, {}).setdefault(response, []).append(float(rating))

    def groups(self) -> list[Group]:
        stage = {"stage": self.stage} if self.stage else {}  # a group without a stage has no key
        return [
            {"prompt": prompt, "responses": list(responses),
             "ratings": [sum(r) / len(r) for r in responses.values()],
             **stage, "id": group_id(self.stage, prompt)}
            for prompt, responses in self.by_prompt.items() if responses
        ]


def _checked(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records, each checked for the fields the three kinds read (other keys are ignored, so
    records converted from the reference's format, without target_id, work too)."""
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            got = type(record).__name__
            raise records_lib.InteractionError(f"record {index}", f"a record must be a mapping, got {got}",
                                               reason="not_object")
        where = f"record {index}" + (f" (id {record['id']!r})" if "id" in record else "")
        records_lib.check_fields(record, ALIGNMENT_FIELDS, where)
        out.append(record)
    return out


def _imitation(records: Sequence[Mapping[str, Any]]) -> list[Group]:
    groups = _Groups("imitation")
    for r in records:
        groups.add(r["question"], r["draft_answer"], r["gen_moral_score_before"])
        groups.add(r["question"], r["revised_answer"], r["gen_moral_score_after"])
    return groups.groups()


def _self_critic(records: Sequence[Mapping[str, Any]]) -> list[Group]:
    groups = _Groups("self_critic")
    for r in records:
        prompt = self_critic_prompt(r["question"], r["draft_answer"])
        for reason, rating in zip(r["feedback"], r["rating"], strict=True):
            groups.add(prompt, reason, rating)
    return groups.groups()


def improved(record: Mapping[str, Any]) -> bool:
    """Whether the observer scored the revision above the draft and above the middle of the scale."""
    after = record["gen_moral_score_after"]
    return after > record["gen_moral_score_before"] and after > MIDDLE


def _realignment(records: Sequence[Mapping[str, Any]]) -> list[Group]:
    groups = _Groups("realignment")
    for r in records:
        if improved(r) and r["revised_answer"].strip() and any(f.strip() for f in r["feedback"]):
            response = realignment_response(r["feedback"], r["revised_answer"])
            prompt = realignment_prompt(r["question"], r["draft_answer"])
            groups.add(prompt, response, r["gen_moral_score_after"])
    return groups.groups()


_KINDS = {"imitation": _imitation, "self_critic": _self_critic, "realignment": _realignment}


def imitation_groups(records: Iterable[Mapping[str, Any]]) -> list[Group]:
    """question -> drafts and revisions, rated by the observer (see docs/data.md)."""
    return _imitation(_checked(records))


def self_critic_groups(records: Iterable[Mapping[str, Any]]) -> list[Group]:
    """question + draft -> each peer's reason, rated with that peer's rating."""
    return _self_critic(_checked(records))


def realignment_groups(records: Iterable[Mapping[str, Any]]) -> list[Group]:
    """question + draft -> reasons + REVISED_MARKER + revision, for revisions that improved (`improved`)."""
    return _realignment(_checked(records))


def check_stages(stages: Iterable[str], where: str = "stages") -> tuple[str, ...]:
    """`stages` as a tuple, each one of STAGES (ValueError naming `where` otherwise)."""
    stages = tuple(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(
            f"{where}: unknown stage(s) {', '.join(map(repr, unknown))}; known: {', '.join(STAGES)}")
    return stages


def alignment_groups(records: Iterable[Mapping[str, Any]], stages: Sequence[str] = STAGES) -> list[Group]:
    """The group records of `stages` (in STAGES order, whatever order `stages` lists them in)."""
    wanted = check_stages(stages)
    checked = _checked(records)
    return [group for stage in STAGES if stage in wanted for group in _KINDS[stage](checked)]


def merge_groups(groups: Iterable[Mapping[str, Any]]) -> list[Group]:
    """Groups of the same stage and prompt merged into one, by the rules above (responses stripped,
    empty ones left out, a repeated response rated with the mean of all its ratings); the merged
    groups come in order of first appearance and get `group_id` ids. For group records from
    elsewhere, e.g. the released Stable Alignment data, which may list one query more than once."""
    by_stage: dict[str, _Groups] = {}
    order: list[tuple[str, str]] = []
    for index, group in enumerate(groups):
        check_group(group, f"group {index}")
        stage = group.get("stage", "")
        merged = by_stage.setdefault(stage, _Groups(stage))
        if group["prompt"] not in merged.by_prompt:
            order.append((stage, group["prompt"]))
        for response, rating in zip(group["responses"], group["ratings"], strict=True):
            merged.add(group["prompt"], response, rating)
    built = {(g.get("stage", ""), g["prompt"]): g for stage in by_stage.values() for g in stage.groups()}
    return [built[key] for key in order if key in built]


# --------------------------------------------------------------------------- writing

def check_group(group: Mapping[str, Any], where: str) -> None:
    """ValueError naming `where` unless `group` is a group record (the jsonl "group" schema)."""
    unknown = sorted(set(group) - set(GROUP_FIELDS))
    if unknown or "prompt" not in group or "responses" not in group or "ratings" not in group:
        raise ValueError(f"{where}: a group record has prompt, responses, ratings and optionally stage, id; "
                         f"got keys {sorted(group)}")
    responses, ratings = group["responses"], group["ratings"]
    if not isinstance(group["prompt"], str):
        raise ValueError(f"{where}: field 'prompt' must be a string")
    if not isinstance(responses, list) or not responses or not all(isinstance(r, str) and r.strip()
                                                                    for r in responses):
        raise ValueError(f"{where}: field 'responses' must be a non-empty list of non-empty strings")
    if (not isinstance(ratings, list) or len(ratings) != len(responses)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
                       for s in ratings)):
        raise ValueError(f"{where}: field 'ratings' must be a list of finite numbers, one per response")
    if "stage" in group:
        check_stages([group["stage"]], f"{where}: field 'stage'")


def write_groups(groups: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Writes group records as JSON lines (fields in GROUP_FIELDS order) to `path` (local or a URL),
    replacing it whole (`paths.write_atomic`, so a reader never sees half a file); returns how many."""
    lines = []
    for index, group in enumerate(groups):
        check_group(group, f"group {index}")
        ordered = {field: group[field] for field in GROUP_FIELDS if field in group}
        lines.append(json.dumps(ordered, ensure_ascii=False) + "\n")
    paths.write_atomic(path, "".join(lines))
    return len(lines)
