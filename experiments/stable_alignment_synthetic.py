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
    bootstrap          SFT from scratch on every agent role (`jaxalign.sandbox.bootstrap.society_records`)
    stable_alignment   the Stable Alignment loss on groups of the society's answers to one question,
                       rated by the observer (group_size 6: the draft and revision of 3 agents)
    sft_best           SFT on the best-rated answer of each group
    sft_all            SFT on every answer of each group, good and bad alike
``data.jsonl`` must be set (the run stops with an error naming the key until it is). The margin and
lambda are the reference code's defaults (1.0 and 0.5) on the 1..7 observer scale.
"""

import ml_collections

from jaxalign.data.sources import default_data_config
from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.optim import default_optimizer_config

VARIANTS = ("bootstrap", "stable_alignment", "sft_best", "sft_all")


def get_config(variant: str = "stable_alignment") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 400 if variant == "bootstrap" else 120
    config.batch_size = 16
    config.seq_len = 256 if variant == "stable_alignment" else 192
    config.microbatches = 1
    config.mesh = "dp:1,fsdp:-1,tp:1"
    config.model = ml_collections.ConfigDict({"preset": "small"})
    config.objective = _objective(variant)
    config.data = default_data_config()
    config.data.task = ""
    config.data.jsonl = ""
    config.data.schema = "group"
    config.data.num_train = 0  # all records
    config.data.vocab_size = 512
    config.init_from = ""
    config.optimizer = default_optimizer_config()
    config.optimizer.peak_lr = 1e-3 if variant == "bootstrap" else 1e-4
    config.optimizer.warmup_steps = 20 if variant == "bootstrap" else 5
    config.optimizer.total_steps = config.get_ref("total_steps")
    config.checkpoint_every = 200
    config.keep_checkpoints = 1
    config.log_every = 20
    config.num_samples = 0
    config.max_new_tokens = 40
    return config


def _objective(variant: str) -> ml_collections.ConfigDict:
    if variant == "stable_alignment":
        objective = objective_config("stable_alignment")
        objective.group_size = 6
        return objective
    objective = objective_config("sft")
    objective.responses = "all" if variant == "sft_all" else "best"
    return objective
