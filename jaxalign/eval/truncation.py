"""How `jaxalign eval` keeps every sequence it scores or generates from within the model's context.

    truncation = Truncation(*max_len_of(checkpoint, lm.cfg), bos_id=tok.bos_id)
    examples = truncation.scored_examples(examples)      # each at most max_len + 1 tokens
    prompts = truncation.prompt_ids(prompts, max_new_tokens)   # each at most max_len - max_new_tokens
    report["truncation"] = truncation.section()          # what was cut, and to what length

`max_len` is the number of positions a sequence may take: the seq_len the model was trained with
(its workdir's config.json) when known, else its max_position_embeddings (never more than that).
A scored sequence (a prompt, weight 0, then a response, weighted) may have max_len + 1 tokens, max_len
predictions, as a training row of seq_len = max_len; a generation prompt max_len - max_new_tokens
tokens, so that prompt and generation fit max_len together. A longer one loses the START of its
prompt: its first token when it is BOS stays, then the END of the prompt (the part nearest the
response), then the whole response. Only where the response alone does not fit is it cut too, at its
end, after BOS and the last prompt token. (Before this, eval scored every sequence whole, past the
trained length, and generation refused a prompt longer than the model's context.)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign import sample, workdir
from jaxalign.data.packing import TruncationWarning
from jaxalign.models import ModelConfig

log = logging.getLogger(__name__)


def max_len_of(checkpoint: str | os.PathLike, cfg: ModelConfig) -> tuple[int, str]:
    """(max_len, where it comes from) for a model: its train workdir's seq_len, else its context."""
    context = cfg.max_position_embeddings
    if workdir.is_workdir(checkpoint):
        seq_len = workdir.read_config(checkpoint).get("seq_len")
        if seq_len:
            if int(seq_len) <= context:
                return int(seq_len), f"seq_len in {workdir.CONFIG}"
            return context, f"max_position_embeddings (less than seq_len={seq_len} in {workdir.CONFIG})"
    return context, "max_position_embeddings"


def keep_prompt_end(example: Mapping[str, Any], max_tokens: int,
                    bos_id: int | None = None) -> tuple[Mapping[str, Any], int]:
    """`example` ({"tokens", "weights", ...}: the prompt is what precedes the first weighted token)
    cut to at most `max_tokens` tokens as the module docstring says, and the number of tokens cut.
    Every per-token field is cut alike; an example that fits is returned as it is."""
    tokens = np.asarray(example["tokens"])
    n = tokens.size
    if n <= max_tokens:
        return example, 0
    if max_tokens < 3:
        raise ValueError(f"cannot cut a scored sequence to {max_tokens} tokens (need at least 3)")
    weights = np.asarray(example.get("weights", np.ones(n)))
    weighted = np.flatnonzero(weights[1:] != 0)
    start = int(weighted[0]) + 1 if weighted.size else n  # the first response token
    head = int(bos_id is not None and int(tokens[0]) == bos_id)
    room = max_tokens - (n - start)  # prompt tokens that fit beside the whole response
    keep = max(room, min(start, head + 1))  # at least BOS and one more prompt token
    index = np.concatenate([np.arange(head), np.arange(start - (keep - head), start),
                            np.arange(start, start + max_tokens - keep)])
    cut = {key: np.asarray(value)[index] if np.shape(value) == (n,) else value
           for key, value in example.items()}
    return cut, n - index.size


@dataclasses.dataclass
class Truncation:
    """Cuts eval's sequences to `max_len` positions (see the module docstring) and counts what it cut."""

    max_len: int
    source: str = ""  # where max_len comes from, for the report
    bos_id: int | None = None
    scored: int = 0  # sequences scored
    scored_truncated: int = 0
    prompts: int = 0  # generation prompts
    prompts_truncated: int = 0
    tokens_cut: int = 0

    def scored_examples(self, examples: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Each example cut to max_len + 1 tokens (max_len predictions), keeping its prompt's end."""
        out = []
        for example in examples:
            example, cut = keep_prompt_end(example, self.max_len + 1, self.bos_id)
            self.scored_truncated += cut > 0
            self.tokens_cut += cut
            out.append(example)
        self.scored += len(out)
        return out

    def prompt_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Each prompt cut to max_len - max_new_tokens ids, keeping BOS and its end."""
        budget = self.max_len - max_new_tokens
        if budget < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                             f"max_len={self.max_len} positions ({self.source}); lower max_new_tokens")
        out = []
        for ids in prompts:
            cut = sample.keep_end(ids, budget, self.bos_id)
            self.prompts_truncated += len(cut) < len(ids)
            self.tokens_cut += len(ids) - len(cut)
            out.append(cut)
        self.prompts += len(out)
        return out

    def section(self) -> dict[str, Any]:
        """The report's "truncation" section: the length, its source and the counts."""
        return {
            "max_len": self.max_len, "max_len_from": self.source,
            "examples": self.scored + self.prompts,
            "truncated": self.scored_truncated + self.prompts_truncated,
            "tokens_cut": self.tokens_cut,
            "scored": {"examples": self.scored, "truncated": self.scored_truncated},
            "generation_prompts": {"examples": self.prompts, "truncated": self.prompts_truncated},
        }

    def warn(self, where: str = "eval") -> None:
        """Logs the counts; warns (TruncationWarning) when anything was cut."""
        section = self.section()
        log.info("%s: %d of %d sequences cut to max_len=%d (%s)", where, section["truncated"],
                 section["examples"], self.max_len, self.source)
        if section["truncated"]:
            warnings.warn(
                f"{where}: {section['truncated']} of {section['examples']} scored sequences and generation "
                f"prompts were longer than max_len={self.max_len} positions ({self.source}) and lost the "
                f"start of their prompt ({self.tokens_cut} tokens); see the report's 'truncation' section",
                TruncationWarning, stacklevel=2,
            )

