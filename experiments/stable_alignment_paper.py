"""Stable Alignment at the paper's scale: a 7B LLaMA-family model on SANDBOX alignment data.

    jaxalign import-hf --from /models/hh-rlhf-sft --out /models/hh-rlhf-sft-jax
    # the released data (assets/sandbox_v1.json of agi-templar/Stable-Alignment, stages mixed):
    jaxalign train --config experiments/stable_alignment_paper.py:released --workdir workdirs/sa_released \\
        --config.data.source_dir=/data/stable_alignment_assets
    # or the three-stage schedule on the records of our own SANDBOX run:
    jaxalign train --config experiments/stable_alignment_paper.py:imitation --workdir workdirs/sa_imitation \\
        --config.data.source_dir=workdirs/sandbox_paper
    jaxalign train --config experiments/stable_alignment_paper.py:self_critic \\
        --workdir workdirs/sa_self_critic \\
        --config.data.source_dir=workdirs/sandbox_paper
    jaxalign train --config experiments/stable_alignment_paper.py:realignment \\
        --workdir workdirs/sa_realignment \\
        --config.data.source_dir=workdirs/sandbox_paper

Liu et al., "Training Socially Aligned Language Models on Simulated Social Interactions" (ICLR 2024).
``get_config(stage)``: `STAGES` train on ``data.stage`` = that stage's groups (`jaxalign.methods.sandbox.
alignment_data`), each stage starting from the previous stage's workdir (``init_from``), the first
from the SFT model; ``released`` trains once on the released groups, which carry no stage.

Hyperparameters are the reference README's recipe where it gives one: Stable Alignment with
rating scale 7, margin 10, penalty ratio (lambda) 0.2, mean penalty, 3 responses per query;
learning rate 2e-5 with 3% warmup and a cosine decay, no weight decay, sequences of at most 360
tokens (here: rows of 1024 holding a whole group), 32 queries per step (4 GPUs x batch 1 x 8
accumulation there; the reference's collator forces batch 1, ours packs groups into rows).
7 epochs of sandbox_v1's 93.8k groups is ~20k steps at 32 rows per step. Placeholders (the run stops
with an error naming the key until they are set): ``data.source_dir``; ``init_from`` is the SFT model
for ``imitation`` and ``released``.
"""

import ml_collections

from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import default_train_config, model_7b_config

STAGES = ("imitation", "self_critic", "realignment")
RUNS = (*STAGES, "released")


def get_config(run: str = "released") -> ml_collections.ConfigDict:
    if run not in RUNS:
        raise ValueError(f"unknown run {run!r}; runs: {', '.join(RUNS)}")
    config = default_train_config()
    config.total_steps = 20000 if run == "released" else 5000
    config.batch_size = 32
    config.seq_len = 1024
    config.microbatches = 4
    config.model = model_7b_config()
    previous = STAGES[STAGES.index(run) - 1] if run in STAGES[1:] else None
    # The SFT model for the first stage; the previous stage's workdir after it.
    config.init_from = f"workdirs/sa_{previous}" if previous else "/models/hh-rlhf-sft-jax"
    config.objective = objective_config("stable_alignment")
    config.objective.margin = 10.0
    config.objective.lam = 0.2
    config.objective.reduce = "mean"
    config.objective.rating_scale = 7.0
    config.objective.group_size = 3
    config.data.task = ""
    # data.source_dir: a placeholder for the released JSON files or a SANDBOX workdir
    config.data.dataset = "sandbox"
    config.data.stage = "" if run == "released" else run
    config.data.num_train = 0
    config.data.num_eval = 500
    config.optimizer.peak_lr = 2e-5
    config.optimizer.warmup_steps = int(0.03 * config.total_steps)
    config.optimizer.end_lr_ratio = 0.0  # cosine decay to zero
    config.optimizer.weight_decay = 0.0
    config.checkpoint_every = 200
    config.keep_checkpoints = 1
    config.max_new_tokens = 256
    return config
