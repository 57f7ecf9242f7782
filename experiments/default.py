"""The embedded default: SFT of a small decoder on a bundled synthetic task, on CPU.

    jaxalign train --config experiments/default.py --workdir workdirs/default

Trains on the preferred responses of the synthetic task, saves checkpoints, then prints greedy
samples for held-out prompts and the task's ground-truth score. Its config is
`jaxalign.train.defaults.default_train_config`, which every other experiment starts from.
"""

import ml_collections

from jaxalign.train.defaults import default_train_config


def get_config() -> ml_collections.ConfigDict:
    return default_train_config()
