"""SANDBOX at the paper's scale: 100 agents on a 10x10 grid, an LM observer (Liu et al., ICLR 2024).

    jaxalign import-hf --from /models/Llama-2-7b-chat-hf --out /models/llama-2-7b-chat
    jaxalign sandbox --config experiments/sandbox_paper.py --workdir workdirs/sandbox_paper \\
        --config.agents.models=/models/llama-2-7b-chat \\
        --config.questions.jsonl=/data/hh_red_team_questions.jsonl \\
        --config.observer.model=/models/llama-2-13b-chat

The paper's societies were 100 agents on a 10x10 grid, each rated by nearby agents, answering
questions of the HH-RLHF red-team and other social-value prompt sets, with a stronger model as the
observer; our agents may be any imported Hugging Face or jaxalign models (several comma-separated
paths give a mixed society, with ``agents.labels`` naming each). Placeholders (the run stops with an
error naming the key until they are set): ``agents.models`` and ``questions.jsonl`` (one
``{"text": question}`` per line). Choices where the paper is silent: 3 raters within 2 cells,
memory recalled by the agent model's own pooled hidden states (2 pairs), temperature 0.7 and
top-p 0.95, 128 new tokens; 20 rounds of 100 interactions.
"""

import ml_collections

from jaxalign.methods.sandbox.simulation import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.rounds = 20
    config.questions.task = ""
    config.questions.jsonl = ""
    config.questions.num = 0  # all of them
    config.agents.models = ""
    config.agents.num_agents = 100
    config.agents.grid_size = 10
    config.raters.num = 3
    config.raters.radius = 2
    config.memory.embedding = "model"
    config.memory.recall = 2
    config.sampling.temperature = 0.7
    config.sampling.top_p = 0.95
    config.sampling.max_new_tokens = 128
    config.observer.kind = "lm"
    config.observer.model = ""  # a stronger model than the agents; "" uses the first agent model
    return config
