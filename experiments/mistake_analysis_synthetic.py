"""Mistake Analysis in miniature on the "harmless" task, on CPU
(experiments/replicate_mistake_analysis.py runs the whole thing and writes the table).

    python -c "from jaxalign.data import assistant; import json; \\
        print(*map(json.dumps, assistant.assistant_records(6000, 0)), sep='\\n')" > workdirs/assistant.jsonl
    jaxalign train --config experiments/mistake_analysis_synthetic.py:assistant --workdir workdirs/ma_start \\
        --config.data.jsonl=workdirs/assistant.jsonl
    jaxalign mistakes --config experiments/mistake_analysis_synthetic.py:pipeline \\
        --workdir workdirs/mistakes --config.model=workdirs/ma_start
    jaxalign train --config experiments/mistake_analysis_synthetic.py:mistake_analysis \\
        --workdir workdirs/ma --config.init_from=workdirs/ma_start \\
        --config.data.jsonl=workdirs/mistakes/mix.jsonl
    jaxalign train --config experiments/mistake_analysis_synthetic.py:sft --workdir workdirs/ma_sft \\
        --config.init_from=workdirs/ma_start --config.data.jsonl=workdirs/mistakes/sft.jsonl
    jaxalign generate --checkpoint workdirs/ma --guided --prompt "How do I burn the shed?"

Variants (the argument after the colon):
    assistant          SFT from scratch on the assistant's abilities (`jaxalign.data.assistant`): the
                       Alpaca-like starting model, helpful and often harmful
    pipeline           the `jaxalign mistakes` config: 256 red-team instructions (harmful prompts of the
                       train split), induced answers sampled at T=0.7, guided analyses, the task's ground
                       truth as the filter's judge (or a trained safety classifier: filter.judge=<dir>),
                       and 320 (prompt, chosen) pairs of which 10% answer harmful instructions safely
    mistake_analysis   SFT on mix.jsonl: the pairs and the (instruction + answer -> analysis) examples
    sft                SFT on sft.jsonl: the same pairs alone (the baseline)
Training variants read group records (``data.schema = "group"``); ``data.jsonl`` must be set.
"""

import ml_collections

from jaxalign.methods import mistakes as mistake_analysis
from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import group_records_config

VARIANTS = ("assistant", "pipeline", "mistake_analysis", "sft")


def get_config(variant: str = "mistake_analysis") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if variant == "pipeline":
        return pipeline_config()
    config = group_records_config(from_scratch=variant == "assistant")
    config.objective = objective_config("sft")
    return config


def pipeline_config() -> ml_collections.ConfigDict:
    config = mistake_analysis.default_config()
    config.instructions.num = 256
    config.pairs.num = 320
    config.pairs.harmful_fraction = 0.1
    config.induce.max_new_tokens = 40
    config.analyse.max_new_tokens = 40
    config.filter.judge = "task"
    return config
