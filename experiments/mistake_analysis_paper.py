"""Mistake Analysis at the paper's scale: an Alpaca-7B-like model on PKU-SafeRLHF, against SFT,
Critique-Revise, Chain of Hindsight and RLHF.

    jaxalign import-hf --from /models/alpaca-7b-hf --out /models/alpaca-7b
    jaxalign train --config experiments/safety_judge.py:pku --workdir workdirs/ma_judge \\
        --config.data.source_dir=/data/PKU-SafeRLHF
    jaxalign mistakes --config experiments/mistake_analysis_paper.py:pipeline \\
        --workdir workdirs/ma_pipeline --config.instructions.source_dir=/data/PKU-SafeRLHF \\
        --config.pairs.source_dir=/data/PKU-SafeRLHF
    jaxalign train --config experiments/mistake_analysis_paper.py:mistake_analysis --workdir workdirs/ma \\
        --config.data.jsonl=workdirs/ma_pipeline/mix.jsonl
    jaxalign train --config experiments/mistake_analysis_paper.py:sft --workdir workdirs/ma_sft \\
        --config.data.jsonl=workdirs/ma_pipeline/sft.jsonl
    jaxalign eval --config experiments/mistake_analysis_paper.py:eval --checkpoint workdirs/ma [--guided] \\
        --config.data.source_dir=/data/PKU-SafeRLHF

Chen et al., "Gaining Wisdom from Setbacks: Aligning Large Language Models via Mistake Analysis"
(ICLR 2024). ``get_config(run)`` (``file.py:run`` on the command line); `RUNS` lists them:

    pipeline                 `jaxalign mistakes`: PKU-SafeRLHF prompts, answers induced with the hint,
                             guided analyses, induced answers the safety judge finds safe dropped, and
                             PKU-SafeRLHF's safe responses as the (instruction, safe response) pairs
    pipeline_critique_revise the Critique-Revise baseline's data: the model's own unguided answers,
                             unguided critiques, revisions (instruction -> revision)
    mistake_analysis         SFT on the pipeline's mix.jsonl (pairs + analyses, no hint in any example)
    sft                      SFT on the pipeline's sft.jsonl (the same pairs alone)
    critique_revise          SFT on pipeline_critique_revise's mix.jsonl
    coh                      Chain of Hindsight on PKU-SafeRLHF's (safer, less safe) pairs
    reward                   the RLHF reward model: Bradley-Terry on the same pairs
    rlhf                     policy-gradient refinement of the start model against `reward`
    eval                     the held-out PKU-SafeRLHF test prompts, for `jaxalign eval` (any row's
                             checkpoint; `--guided` for guided response generation)

Harmless rate: `jaxalign.eval.safety.SafetyJudge` trained by experiments/safety_judge.py:pku;
helpfulness: the Bradley-Terry reward model of experiments/safety_judge.py:pku_helpful.

Placeholders (a run stops with an error naming the key until they are set): ``data.source_dir`` or
``data.jsonl``, ``model`` / ``init_from`` (the imported Alpaca-7B), ``filter.judge``,
``objective.reward_model``. Choices where the paper is silent: 7B preset, bfloat16 matmuls, full
remat, FSDP; 64 rows of 1024 tokens per step, AdamW 2e-5, warmup 50, cosine to 10%, 3 epochs-worth
of steps (600); induction at T=0.7, analyses and revisions greedy, 256 new tokens each.
"""

import ml_collections

from jaxalign.methods import mistakes as mistake_analysis
from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import default_train_config, model_7b_config

RUNS = ("pipeline", "pipeline_critique_revise", "mistake_analysis", "sft", "critique_revise", "coh", "reward",
        "rlhf", "eval")
START = "/models/alpaca-7b"  # placeholder: `jaxalign import-hf --out` of the start model


def get_config(run: str = "mistake_analysis") -> ml_collections.ConfigDict:
    if run not in RUNS:
        raise ValueError(f"unknown run {run!r}; runs: {', '.join(RUNS)}")
    if run.startswith("pipeline"):
        return pipeline_config(run == "pipeline_critique_revise")
    config = default_train_config()
    config.total_steps = 600
    config.batch_size = 64
    config.seq_len = 1024
    config.microbatches = 4
    config.model = model_7b_config()
    config.init_from = START
    config.objective = _objective(run)
    config.data.task = ""
    if run in ("mistake_analysis", "sft", "critique_revise"):
        config.data.schema = "group"  # data.jsonl: a placeholder for the pipeline's mix.jsonl or sft.jsonl
    else:
        config.data.dataset = "pku_saferlhf"  # data.source_dir: a placeholder for a PKU-SafeRLHF clone
    config.data.num_train = 0
    config.data.num_eval = 500
    config.optimizer.peak_lr = 2e-5
    config.optimizer.warmup_steps = 50  # then cosine decay to 10%, the default schedule
    config.optimizer.weight_decay = 0.0
    config.checkpoint_every = 100
    config.max_new_tokens = 256
    if run == "rlhf":
        config.total_steps = 300
        config.batch_size = 256  # rollouts: 64 prompts x 4 samples
        config.optimizer.peak_lr = 1e-6
        config.optimizer.warmup_steps = 20
    return config


def _objective(run: str) -> ml_collections.ConfigDict:
    if run == "rlhf":
        objective = objective_config("rl")
        objective.reward_model = ""  # placeholder: the `reward` run's workdir
        return objective
    if run in ("coh", "reward"):
        return objective_config(run)
    return objective_config("sft")


def pipeline_config(critique_revise: bool = False) -> ml_collections.ConfigDict:
    config = mistake_analysis.default_config()
    config.model = START
    config.batch_size = 64
    for section in (config.instructions, config.pairs):
        section.task = ""
        section.dataset = "pku_saferlhf"
        section.source_dir = ""  # placeholder: a PKU-SafeRLHF clone
        section.num = 0  # all records
    config.pairs.schema = "preference"
    for stage in (config.induce, config.analyse, config.revise):
        stage.max_new_tokens = 256
    config.filter.judge = "workdirs/ma_judge"  # experiments/safety_judge.py:pku
    if critique_revise:
        config.mix.kind = "critique_revise"
        config.induce.hint = ""  # the model's own answers, not induced mistakes
        config.analyse.guided = False
    return config
