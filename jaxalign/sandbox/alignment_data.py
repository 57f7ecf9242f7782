"""SANDBOX interaction records -> the group records Stable Alignment trains on, in three stages.

    records = list(records_lib.read_records("run/records.jsonl"))
    groups = alignment_groups(records)                    # imitation, then self_critic, then realignment
    write_groups(groups, "run/alignment.jsonl")           # jsonl schema "group"

A group record is ``{"prompt", "responses", "ratings", "stage", "id"}``: every distinct response to
one prompt with its rating (1..7), which the loss ranks against the best one
(jaxalign/objectives/stable_alignment.py). The three kinds (methods.md section 3):

imitation      prompt = the question; responses = drafts (rating = gen_moral_score_before) and
               revisions (rating = gen_moral_score_after) of every agent in every round that was
               asked this question. Learn to answer like the society's best-rated members.
self_critic    prompt = `self_critic_prompt(question, draft)`; responses = each peer's reason
               ``feedback[i]``, rated ``rating[i]`` (that peer's rating of the draft). Learn to
               judge an answer as the society does.
realignment    prompt = `realignment_prompt(question, draft)`; response =
               `realignment_response(feedback, revision)`: the peers' reasons, one per line, then
               REVISED_MARKER and the revision, rated gen_moral_score_after. Only interactions whose
               revision the observer scored higher than the draft AND above the middle of the scale
               (> 4 on 1..7): learn to comment and revise from revisions that worked.

Decisions, and why:

- Grouping is per (stage, prompt text), across agents and rounds, so that K responses to one
  prompt compete in the loss. Prompts are kept verbatim (they are what the agents were shown);
  responses are stripped of surrounding whitespace, and an empty response is left out (it is no
  training target; the records keep it, since a model may really have said nothing).
- The same response text met several times in a group (agents often repeat themselves, and a
  draft left unchanged is also its own revision) is kept once, rated with the MEAN of its
  ratings: the observer's or peers' scores of one text are noisy samples of one value, and the
  mean estimates it, where the max would favour texts that happened to be rated more often.
- The realignment comment is every distinct non-empty peer reason of the interaction, one per
  line in the record's order: the revision was written in answer to all of them, so all of them
  are the critique that leads to it. An interaction without any reason gives no realignment
  example (a "comment, then revise" target without a comment would teach skipping the comment).
- The prompt templates are module constants, used here for training and by `self_critic_prompt`
  / `realignment_prompt` at inference, so both see the same text; the pipeline wraps every
  prompt in jaxalign.data.pipeline.format_prompt for training and generation alike.
- Output is deterministic: groups in order of stage (STAGES), then of the first record that gave
  the prompt; responses in order of first appearance; ``id`` = `group_id(stage, prompt)`, a hash of
  both, so a group keeps its id when more records are added.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxalign.data import jsonl
from jaxalign.sandbox import records as records_lib

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
    """question -> drafts and revisions, rated by the observer (see the module docstring)."""
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
    """Writes group records as JSON lines (fields in GROUP_FIELDS order) to `path`, replacing it
    whole (a temporary file renamed over it, so a reader never sees half a file); returns how many."""
    lines = []
    for index, group in enumerate(groups):
        check_group(group, f"group {index}")
        ordered = {field: group[field] for field in GROUP_FIELDS if field in group}
        lines.append(json.dumps(ordered, ensure_ascii=False) + "\n")
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(lines), encoding="utf-8", newline="\n")
    os.replace(temporary, path)
    return len(lines)
