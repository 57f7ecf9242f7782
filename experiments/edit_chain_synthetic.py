"""Second Thoughts (edit chains, then RL) on the bundled "detox" rewrite task, on CPU.

    jaxalign train --config experiments/edit_chain_synthetic.py:edit_chain --workdir workdirs/ec
    jaxalign train --config experiments/edit_chain_synthetic.py:reward --workdir workdirs/rm
    jaxalign train --config experiments/edit_chain_synthetic.py:rl --workdir workdirs/ec_rl \\
        --config.init_from=workdirs/ec --config.objective.reward_model=workdirs/rm
    jaxalign eval --config experiments/edit_chain_synthetic.py:edit_chain --checkpoint workdirs/ec

Records: a request carrying four facts (the context), the polite message (aligned, "chosen") and
the same message with one to three toxic edits (the unaligned draft, "rejected"). The edit-chain
model reads context + draft and writes the chain of edits, then the aligned message; the judge
(`synthetic.DetoxTask.score`) gives 0 to any toxic word and otherwise the share of the facts kept.

Variants (the argument after the colon):
    edit_chain      context + draft -> chain -> aligned (loss on chain and aligned text)
    edit_chain_aligned_only   the same sequences, loss on the aligned text only
    rewrite         context + draft -> aligned, no chain (is the chain what helps?)
    sft             plain SFT on context -> aligned (the draft is never seen)
    reward          a reward model (scalar head), Bradley-Terry on (aligned, draft) pairs
    rl              policy-gradient refinement; set init_from and objective.reward_model
A 1024-piece vocabulary keeps a whole example near 75 tokens.
"""

import ml_collections

from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import default_train_config

VARIANTS = ("edit_chain", "edit_chain_aligned_only", "rewrite", "sft", "reward", "rl")


def get_config(variant: str = "edit_chain") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    config = default_train_config()
    config.total_steps = 300
    config.seq_len = 128
    config.objective = _objective(variant)
    config.data.task = "detox"
    config.data.vocab_size = 1024
    config.init_from = ""
    config.optimizer.warmup_steps = 20
    config.checkpoint_every = 100
    config.log_every = 20
    config.max_new_tokens = 64
    if variant == "rl":
        # 8 prompts x 4 samples per step; a gentle rate, since RL moves a trained model.
        config.total_steps = 60
        config.batch_size = 32
        config.optimizer.peak_lr = 2e-5
        config.optimizer.warmup_steps = 5
        config.checkpoint_every = 30
        config.log_every = 5
    return config


def _objective(variant: str) -> ml_collections.ConfigDict:
    if variant == "rl":
        return objective_config("rl")
    if variant in ("edit_chain_aligned_only", "rewrite"):
        objective = objective_config("edit_chain")
        objective.loss_on = "aligned"
        objective.chain = variant != "rewrite"
        return objective
    return objective_config(variant)
