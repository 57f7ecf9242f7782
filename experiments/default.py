"""The embedded default: SFT of a small decoder on a bundled synthetic task, on CPU.

    jaxalign train --config experiments/default.py --workdir workdirs/default

Trains on the preferred responses of the synthetic task, saves checkpoints, then prints greedy
samples for held-out prompts and the task's ground-truth score.
"""

import ml_collections

from jaxalign.data.sources import default_data_config
from jaxalign.train.optim import default_optimizer_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 150
    config.batch_size = 16  # packed rows per step, over all processes
    config.seq_len = 96
    config.microbatches = 1
    config.mesh = "dp:1,fsdp:-1,tp:1"
    config.model = ml_collections.ConfigDict({"preset": "small"})
    config.objective = ml_collections.ConfigDict({"name": "sft", "normalization": "token"})
    config.data = default_data_config()
    config.optimizer = default_optimizer_config()
    config.optimizer.peak_lr = 1e-3
    config.optimizer.warmup_steps = 15
    config.optimizer.total_steps = config.get_ref("total_steps")
    config.checkpoint_every = 50
    config.keep_checkpoints = 2
    config.log_every = 10
    config.num_samples = 8
    config.max_new_tokens = 24
    return config
