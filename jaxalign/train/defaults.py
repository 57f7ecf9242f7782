"""The train config every experiments/ file starts from, so that each states only what differs.

`default_train_config` is experiments/default.py's run (SFT of a small decoder on the bundled
"sort" task, on CPU); `TOP_KEYS` are the top-level keys a train config may hold. ``init_from`` and
``pretrain`` are optional, and so is ``logging`` (`logging_config`: Weights & Biases): the trainer
reads them with ``config.get``, and they are absent here
because a key added to the default would change every run's config.json, and a resumed run must
find the config it was started with.
"""

from __future__ import annotations

import ml_collections

from jaxalign.data.sources import default_data_config
from jaxalign.train.optim import default_optimizer_config

TOP_KEYS = (
    "seed", "total_steps", "batch_size", "seq_len", "mesh", "model", "objective", "data",
    "optimizer", "microbatches", "checkpoint_every", "keep_checkpoints", "log_every",
    "num_samples", "max_new_tokens", "pretrain", "init_from", "logging", "lora",
)


def default_train_config() -> ml_collections.ConfigDict:
    """Every required top-level train key, with experiments/default.py's values."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 150
    config.batch_size = 16  # packed rows per step, over all processes
    config.seq_len = 96
    config.microbatches = 1
    config.mesh = "dp:1,fsdp:-1,tp:1"  # FSDP over every device
    config.model = ml_collections.ConfigDict({"preset": "small"})
    config.objective = ml_collections.ConfigDict({"name": "sft", "normalization": "token"})
    config.data = default_data_config()
    config.optimizer = default_optimizer_config()
    config.optimizer.peak_lr = 1e-3
    config.optimizer.warmup_steps = 15
    # A reference, so that an override of total_steps also sets the schedule's length.
    config.optimizer.total_steps = config.get_ref("total_steps")
    config.checkpoint_every = 50
    config.keep_checkpoints = 2
    config.log_every = 10
    config.num_samples = 8
    config.max_new_tokens = 24
    return config


def logging_config(project: str | None = None, **wandb: object) -> ml_collections.ConfigDict:
    """The optional ``logging`` section: Weights & Biases when `project` is set (``pip install
    'jaxalign[wandb]'``); `wandb` sets entity, name, tags or mode ("online" or "offline"). E.g.
    ``config.logging = logging_config("my-project", tags=["dpo"])`` (docs/training.md)."""
    section = {"project": project, "entity": None, "name": None, "tags": [], "mode": "online"}
    unknown = sorted(set(wandb) - set(section))
    if unknown:
        raise ValueError(f"logging_config: unknown W&B option(s) {unknown}; known: {sorted(section)}")
    section.update(wandb)
    return ml_collections.ConfigDict({"wandb": section}, type_safe=False)


def model_7b_config() -> ml_collections.ConfigDict:
    """The ``model`` section of the paper-scale experiments: a 7B LLaMA-family model with float32
    parameters (for the optimiser's updates), bfloat16 matmuls, full remat and scanned layers (so
    that its activations fit)."""
    return ml_collections.ConfigDict(
        {"preset": "7b", "param_dtype": "float32", "dtype": "bfloat16", "remat": "full", "scan_layers": True})


def model_1m_config() -> ml_collections.ConfigDict:
    """The ``model`` section of the experiments/replicate_*.py runs: a ~1M-parameter decoder, small
    enough to train from scratch for every row and seed of a table in minutes on CPU."""
    return ml_collections.ConfigDict({
        "preset": "tiny", "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2,
    })


def group_records_config(from_scratch: bool) -> ml_collections.ConfigDict:
    """The CPU-scale runs on group records (``data.jsonl``, schema "group") that the synthetic Stable
    Alignment and Mistake Analysis experiments share, less the objective: a model trained from
    scratch (the society's agent, the assistant) for 400 steps at 1e-3, or one refined from
    ``init_from`` for 120 steps at 1e-4, gentler since it moves a trained model."""
    config = default_train_config()
    config.update(total_steps=400 if from_scratch else 120, seq_len=192, init_from="", checkpoint_every=200,
                  keep_checkpoints=1, log_every=20, num_samples=0, max_new_tokens=40)
    config.data.update(task="", schema="group", num_train=0, vocab_size=512)  # num_train 0: all records
    config.optimizer.update(peak_lr=1e-3 if from_scratch else 1e-4, warmup_steps=20 if from_scratch else 5)
    return config
