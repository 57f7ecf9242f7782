"""Supervised fine-tuning, objective "sft": the next-token loss of `lm` on the good response of each
record -- a preference record's chosen one, a group record's best-rated one (``responses="best"``)
or every response of a group (``"all"``, one example each), a text record's whole text. It is the
plain baseline every method of the papers is compared with, and the way text data trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxalign.data import examples
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.objectives import lm
from jaxalign.objectives.objective import Objective

RESPONSES = ("best", "all")
DEFAULTS: dict[str, Any] = {"normalization": "token", "responses": "best"}


def build(opts: Mapping[str, Any], tokenizer: Tokenizer, seed: int, schema: str) -> Objective:
    """Objective "sft" for records of `schema` (module docstring)."""
    responses = opts["responses"]
    if responses not in RESPONSES:
        raise ValueError(f"config.objective.responses={responses!r}; choose one of {RESPONSES}")
    loss_fn = lm.make_loss_fn(opts["normalization"])
    if responses == "best":  # preference: the chosen response; group: the highest-rated one
        def example(record, j, index):
            return examples.record_to_example(record, tokenizer, schema)

        return Objective("sft", 1, example, loss_fn, examples.PROMPT_TEMPLATE)
    if schema == "preference":
        raise ValueError("config.objective.responses='all' trains on every response of a group record; "
                         "for chosen and rejected of preference records alike use objective 'sft_pos_neg'")
    if schema != "group":
        raise ValueError(f"config.objective.responses='all' needs group records; {schema} records have "
                         "one text each (use responses='best')")

    def every(record, j, index):
        prompt, texts, _ = examples.group_fields(record)
        return examples.prompted_example(tokenizer, prompt, texts[j])

    def count(record):
        return len(examples.group_fields(record)[1])

    return Objective("sft", count, every, loss_fn, examples.PROMPT_TEMPLATE)
