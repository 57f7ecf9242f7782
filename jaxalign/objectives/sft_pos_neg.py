"""SFT on both responses of a preference pair, objective "sft_pos_neg": the chosen and the rejected
response alike, two examples per record. The Chain of Hindsight paper's baseline that sees the same
text as CoH without being told which response is better.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxalign.data import examples
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.objectives import lm
from jaxalign.objectives.objective import Objective

DEFAULTS: dict[str, Any] = {"normalization": "token"}


def build(opts: Mapping[str, Any], tokenizer: Tokenizer, seed: int, schema: str) -> Objective:
    """Objective "sft_pos_neg" for preference records: example j of a record is SFT on its
    chosen (j = 0) or rejected (j = 1) response."""
    def example(record, j, index):
        prompt, chosen, rejected = examples.encode_pair(record, tokenizer)
        return examples.sft_example(prompt, (chosen, rejected)[j], tokenizer.eos_id)

    loss_fn = lm.make_loss_fn(opts["normalization"])
    return Objective("sft_pos_neg", 2, example, loss_fn, examples.PROMPT_TEMPLATE)
