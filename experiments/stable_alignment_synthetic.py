"""Stable Alignment in miniature: agents bootstrapped on the "harmless" task, a SANDBOX run, then
Stable Alignment against SFT on the society's records, on CPU (experiments/replicate_stable_alignment.py
runs the whole pipeline and writes the table).

    jaxalign train --config experiments/stable_alignment_synthetic.py:bootstrap --workdir workdirs/sa_agent \\
        --config.data.jsonl=workdirs/sa_bootstrap.jsonl
    jaxalign sandbox --config experiments/sandbox_synthetic.py --workdir workdirs/sandbox \\
        --config.agents.models=workdirs/sa_agent
    jaxalign train --config experiments/stable_alignment_synthetic.py:stable_alignment \\
        --workdir workdirs/sa \\
        --config.init_from=workdirs/sa_agent --config.data.jsonl=workdirs/sandbox/imitation.jsonl

Variants (the argument after the colon), all on group records (``data.schema = "group"``):
    bootstrap          SFT from scratch on every agent role
                       (`jaxalign.methods.sandbox.bootstrap.society_records`)
    stable_alignment   the Stable Alignment loss on groups of the society's answers to one question,
                       rated by the observer (group_size 6: the draft and revision of 3 agents)
    sft_best           SFT on the best-rated answer of each group
    sft_all            SFT on every answer of each group, good and bad alike
``data.jsonl`` must be set (the run stops with an error naming the key until it is). The margin and
lambda are the reference code's defaults (1.0 and 0.5) on the 1..7 observer scale.
"""

import ml_collections

from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import group_records_config

VARIANTS = ("bootstrap", "stable_alignment", "sft_best", "sft_all")


def get_config(variant: str = "stable_alignment") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    config = group_records_config(from_scratch=variant == "bootstrap")
    if variant == "stable_alignment":
        config.seq_len = 256
    config.objective = _objective(variant)
    return config


def _objective(variant: str) -> ml_collections.ConfigDict:
    if variant == "stable_alignment":
        objective = objective_config("stable_alignment")
        objective.group_size = 6
        return objective
    objective = objective_config("sft")
    objective.responses = "all" if variant == "sft_all" else "best"
    return objective
