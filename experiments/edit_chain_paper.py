"""Second Thoughts at the paper's scale: a 7B LLaMA-family model on Moral Stories, ETHICS and MIC.

    jaxalign import-hf --from /models/Llama-2-7b-hf --out /models/llama-2-7b
    jaxalign train --config experiments/edit_chain_paper.py:reward_ethics --workdir workdirs/st_rm_ethics \\
        --config.data.source_dir=/data/ethics
    jaxalign train --config experiments/edit_chain_paper.py:edit_chain --workdir workdirs/st_chain \\
        --config.data.source_dir=/data/moral_stories
    jaxalign train --config experiments/edit_chain_paper.py:rl --workdir workdirs/st_rl \\
        --config.data.source_dir=/data/moral_stories --config.init_from=workdirs/st_chain \\
        --config.objective.reward_model=workdirs/st_rm_moral_stories

Liu et al., "Second Thoughts are Best: Learning to Re-Align With Human Values from Text Edits"
(NeurIPS 2022). ``get_config(run)`` (``file.py:run`` on the command line); `RUNS` lists them:

    edit_chain              context + immoral action -> edit chain -> moral action (Moral Stories)
    edit_chain_aligned_only the same, loss on the aligned text only
    sft                     context -> moral action, the supervised baseline
    fewshot_edit_chain      edit chain from 100 records only (the paper's few-shot transfer:
                            start from a model trained on another benchmark with init_from)
    reward_moral_stories    reward model, Bradley-Terry on (moral, immoral) action pairs
    reward_ethics           reward model, cross-entropy on ETHICS commonsense (1 = not wrong)
    reward_mic              reward model, cross-entropy on MIC (1 = the answer agrees with its RoT)
    rl                      policy-gradient refinement of init_from against objective.reward_model

Moral Stories has aligned revisions, so it trains edit chains; ETHICS and MIC have only judged
texts, so they train the reward models that score alignment (the paper's "alignment score" was a
classifier trained on each benchmark). Placeholders (the run stops with an error naming the key
until they are set): ``data.source_dir`` (the upstream files; download instructions are in
jaxalign/data/builders/moral_stories.py, ethics.py, mic.py), ``init_from`` for ``rl`` and the
few-shot runs, ``objective.reward_model`` for ``rl``.

Choices (design choices where the paper is silent): preset ``7b`` with bfloat16 matmuls and full
remat; 128 packed rows of 512 tokens per step (a Moral Stories example with its chain is ~150
tokens); AdamW 1e-5, warmup 100, cosine to 10%; 2000 steps (about 3 epochs of Moral Stories'
~10k training pairs at 3 examples per row); RL: 64 prompts x 4 samples per step, KL coefficient
0.05, lr 1e-6, 500 steps.
"""

import ml_collections

from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import default_train_config, model_7b_config

RUNS = ("edit_chain", "edit_chain_aligned_only", "sft", "fewshot_edit_chain", "reward_moral_stories",
        "reward_ethics", "reward_mic", "rl")
DATASET = {"reward_ethics": "ethics_commonsense", "reward_mic": "mic"}


def get_config(run: str = "edit_chain") -> ml_collections.ConfigDict:
    if run not in RUNS:
        raise ValueError(f"unknown run {run!r}; runs: {', '.join(RUNS)}")
    config = default_train_config()
    config.total_steps = 2000
    config.batch_size = 128
    config.seq_len = 512
    config.microbatches = 4
    config.model = model_7b_config()
    config.init_from = "/models/llama-2-7b"  # placeholder: `jaxalign import-hf --out` of the base model
    config.objective = _objective(run)
    config.data.task = ""
    config.data.dataset = DATASET.get(run, "moral_stories")  # data.source_dir: a placeholder
    config.data.num_train = 100 if run == "fewshot_edit_chain" else 0
    config.data.num_eval = 1000
    config.optimizer.peak_lr = 1e-5
    config.optimizer.warmup_steps = 100  # then cosine decay to 10%, the default schedule
    config.optimizer.weight_decay = 0.0
    config.checkpoint_every = 200
    config.max_new_tokens = 256  # chain + aligned text
    if run == "fewshot_edit_chain":
        config.total_steps = 50
        config.optimizer.warmup_steps = 5
    if run == "rl":
        config.init_from = ""  # placeholder: the edit-chain (or SFT) workdir to refine
        config.total_steps = 500
        config.batch_size = 256  # rollouts: 64 prompts x 4 samples
        config.optimizer.peak_lr = 1e-6
        config.optimizer.warmup_steps = 20
        config.checkpoint_every = 50
    return config


def _objective(run: str) -> ml_collections.ConfigDict:
    if run == "rl":
        objective = objective_config("rl")
        objective.reward_model = ""  # placeholder: a reward_* workdir
        return objective
    if run.startswith("reward"):
        return objective_config("reward")
    if run == "sft":
        return objective_config("sft")
    objective = objective_config("edit_chain")
    objective.augment = True  # the paper's augmented chains from several cost settings
    if run == "edit_chain_aligned_only":
        objective.loss_on = "aligned"
    return objective
