"""Chain of Hindsight on a bundled synthetic task, on CPU in a few minutes.

    jaxalign train --config experiments/coh_synthetic.py --workdir workdirs/coh_synthetic
    jaxalign eval --config experiments/coh_synthetic.py --checkpoint workdirs/coh_synthetic

Every record gives the four CoH sequences (p, n, pn, np) with the markers "A helpful answer:" /
"An unhelpful answer:"; FCM rates U(0, 0.05); the task's own plain text as the pretraining stream
with lambda = 1.5 (the paper's). Generation is prompted with the positive marker. Format
"jaxalign" (the default): the reference code's "official" rendering knows only its own datasets
(dialogues, WebGPT, summaries), not the synthetic tasks.
Ablations: --config.objective.fcm_max=0 (no FCM), --config.objective.variants=p,n (no chain),
--config.pretrain.weight=0 (no pretraining data). Other objectives of the CoH paper's Table 4 on
the same data: --config.objective=sft|sft_pos_neg|unlikelihood|dpo (see experiments/README.md).
"""

import ml_collections

from jaxalign.data.sources import default_pretrain_config
from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import default_train_config


def get_config(objective: str = "coh") -> ml_collections.ConfigDict:
    config = default_train_config()
    config.total_steps = 200
    config.seq_len = 128
    config.objective = objective_config(objective)
    config.data.task = "harmless"
    config.pretrain = default_pretrain_config()
    config.pretrain.weight = 1.5
    config.pretrain.batch_size = 8
    config.init_from = ""
    config.optimizer.warmup_steps = 20
    config.checkpoint_every = 100
    config.log_every = 20
    config.max_new_tokens = 32
    return config
