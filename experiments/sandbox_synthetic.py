"""A miniature SANDBOX on the bundled "harmless" task, on CPU (what replicate_stable_alignment.py runs).

    jaxalign sandbox --config experiments/sandbox_synthetic.py --workdir workdirs/sandbox \\
        --config.agents.models=workdirs/sa_agent

The agents are one model trained on every agent role (`jaxalign.methods.sandbox.bootstrap`, the
``bootstrap`` variant of experiments/stable_alignment_synthetic.py) with separate memories; 16 of them
live on a 5x5 grid and each is rated by its 3 nearest peers. Questions are 48 prompts of the task's
train split, so every question is answered several times in 10 rounds and its answers can be
compared. The observer is the task's ground truth (it stands in for the paper's stronger observer
model); the memory is recalled by n-gram similarity, since a model this small has poor sentence
embeddings (jaxalign/methods/sandbox/memory.py). Sampling at temperature 1 keeps the society's answers varied.
"""

import ml_collections

from jaxalign.methods.sandbox.simulation import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.rounds = 10
    config.questions.task = "harmless"
    config.questions.num = 48
    config.agents.models = ""  # set to the bootstrapped agent model
    config.agents.labels = "unaligned"
    config.agents.num_agents = 16
    config.agents.grid_size = 5
    config.raters.num = 3
    config.raters.radius = 2
    config.memory.embedding = "ngram"
    config.memory.recall = 1
    config.sampling.temperature = 1.0
    config.sampling.top_p = 1.0
    config.sampling.max_new_tokens = 40
    config.observer.kind = "task"
    return config
