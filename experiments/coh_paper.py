"""Chain of Hindsight at the paper's scale: a 7B LLaMA-family model, every row of its Table 4, and DPO.

    jaxalign import-hf --from /models/Llama-2-7b-hf --out /models/llama-2-7b
    jaxalign train --config experiments/coh_paper.py:coh --workdir workdirs/coh \\
        --config.data.source_dir=/data/hh-rlhf --config.pretrain.jsonl=/data/pile/shard.jsonl

``get_config(row)`` (``file.py:row`` on the command line) picks a row of Liu, Sferrazza and Abbeel,
"Chain of Hindsight aligns language models with feedback" (ICLR 2024), Table 4; `ROWS` lists them,
`TABLE4` holds the paper's numbers. Every row is the same run but for what the row changes; RLHF
is two rows: ``reward`` (the reward model) then ``rlhf`` (policy gradient from the ``sft`` row's
workdir against it, `jaxalign.methods.rl`); "pretrained" needs no training: evaluate the ``init_from``
model itself (experiments/README.md).

Placeholders to override (the run stops with an error naming the key until they are set):
``data.source_dir`` (the upstream files of ``data.dataset``), ``pretrain.jsonl`` (plain-text
``{"text"}`` JSONL, e.g. a shard of The Pile or C4) and ``init_from`` (the model: a directory
written by ``jaxalign import-hf``, a Hugging Face directory, or a train workdir).

Data. The paper trains one model on a mixture of three feedback datasets; a run here reads one,
``data.dataset``: ``hh_rlhf`` (default; the "Dia" column), ``summarize_feedback`` (the "Sum"
column) or ``webgpt``, each with its own ``data.source_dir``::

    --config.data.dataset=summarize_feedback --config.data.source_dir=/data/summarize-from-feedback
    --config.data.dataset=webgpt --config.data.source_dir=/data/webgpt

Set ``data.tfds_dir`` to a shared directory so that each dataset is built once for all rows.

Choices (the paper and methods.md are silent where "design choice" is written):
- model: preset ``7b`` (Llama-2-7B's shape; the paper's Table 4 used GPT-J 6B, which jaxalign does
  not implement), parameters float32, matmuls bfloat16, full remat, layers scanned.
- batches: 512 feedback rows and 2048 pretraining rows per step, loss = L_feedback + 1.5 L_pretrain
  (the paper's sizes and lambda). Rows are packed: examples share a row without attending to each
  other, so a row holds ``seq_len`` tokens as the official code's rows did (it concatenated every
  sequence into one token stream, cut into rows of 1024 tokens).
- seq_len 1024: the ``seq_length`` of both streams in the official training command. Longer
  examples (a long dialogue in a two-answer chain) are truncated and the packer logs how many;
  attention here is materialised (quadratic in seq_len), so 2048 would cost 4x its memory and FLOPs.
- microbatches: 4 (feedback) and 16 (pretraining), i.e. 128 rows per microbatch in both streams: 4
  rows per device on 32 devices, 1 on 128. A slice with more devices than 128 needs fewer
  microbatches (each microbatch's rows are split over all devices).
- optimiser (design choice): AdamW, peak lr 1e-5 (1e-6 for DPO, as in the DPO paper), 100 warmup
  steps, cosine decay to 10%, no weight decay (the pretraining stream is the regulariser), gradient
  clipping at 1.0, b2 = 0.95 (the official code's); 1000 steps (size it from the steps per epoch
  of your data: experiments/README.md).
- format: ``objective.format="official"``, the reference code's rendering (every dialogue turn
  trained, WebGPT quotes, summarize instruction sentences), its per-row loss mean and FCM on the
  pretraining batches too (methods.md#two-formats-jaxalign-and-official): these rows reproduce the
  paper's runs, and the reference code is what produced its numbers. ``format=jaxalign`` trains
  only the compared replies.
- baselines (design choice): the same pretraining stream, data and optimiser as CoH, and the same
  per-row loss normalisation (the official code's), so each row differs from CoH in only what
  Table 4 varies. ``--config.objective.normalization=token`` gives the per-token mean.
"""

import ml_collections

from jaxalign.data.sources import default_pretrain_config
from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import default_train_config, model_7b_config

ROWS = {
    "coh": "Chain of Hindsight: variants p, n, pn, np; FCM rate ~ U(0, 0.05); lambda = 1.5",
    "coh_fcm0": "CoH without random past-token masking (fcm_max = 0)",
    "coh_nochain": "CoH without chains: single-polarity sequences only (variants p, n)",
    "coh_nopretrain": "CoH without the pretraining stream (lambda = 0)",
    "sft": "SFT on the chosen responses",
    "sft_pos_neg": "SFT on chosen and rejected responses alike",
    "unlikelihood": "SFT on chosen + unlikelihood on rejected (alpha = 1)",
    "dpo": "DPO (beta = 0.1) against the initial model; not in Table 4 (methods.md section 5)",
    "reward": "the reward model of the RLHF row: a scalar head, Bradley-Terry on the comparisons",
    "rlhf": "RLHF: leave-one-out policy gradient of init_from (an sft run) against the reward row",
}

# Table 4 of the paper (GPT-J 6B): (Sum = average ROUGE on summarize-from-feedback, Dia = HH
# preference accuracy in %). "pretrained" has no training config here.
TABLE4 = {
    "coh": (27.45, 81.2), "coh_fcm0": (26.65, 79.6), "coh_nochain": (25.35, 78.8),
    "coh_nopretrain": (22.45, 60.8), "rlhf": (25.45, 68.8), "sft": (24.87, 64.8),
    "sft_pos_neg": (21.44, 50.6), "unlikelihood": (19.56, 42.3), "pretrained": (20.23, 43.8),
}

FEEDBACK_BATCH, PRETRAIN_BATCH, ROWS_PER_MICROBATCH = 512, 2048, 128


def get_config(arg: str = "coh") -> ml_collections.ConfigDict:
    if arg not in ROWS:
        raise ValueError(f"unknown row {arg!r}; rows: {', '.join(ROWS)}")
    config = default_train_config()
    config.total_steps = 1000
    config.batch_size = FEEDBACK_BATCH  # packed rows per step, over all processes
    config.seq_len = 1024
    config.microbatches = FEEDBACK_BATCH // ROWS_PER_MICROBATCH
    config.model = model_7b_config()
    config.init_from = "/models/llama-2-7b"  # placeholder: `jaxalign import-hf --out` of the model to tune

    name = "coh" if arg.startswith("coh") else arg
    config.objective = objective_config("rl") if arg == "rlhf" else objective_config(name)
    if name == "coh":
        config.objective.format = "official"  # the reference code's rendering, loss and FCM
    if "normalization" in config.objective:
        config.objective.normalization = "row"
    if arg == "coh_fcm0":
        config.objective.fcm_max = 0.0
    elif arg == "coh_nochain":
        config.objective.variants = "p,n"

    config.data.task = ""
    config.data.dataset = "hh_rlhf"  # data.source_dir: a placeholder for its upstream files
    config.data.num_train = 0  # every training record
    config.data.num_eval = 1000  # held-out records for samples and `jaxalign eval`

    config.pretrain = default_pretrain_config()  # pretrain.jsonl: a placeholder for {"text"} JSONL
    # RLHF's rows train a reward model and refine by RL: neither takes the language-modelling stream.
    config.pretrain.weight = 0.0 if arg in ("coh_nopretrain", "reward", "rlhf") else 1.5
    config.pretrain.batch_size = PRETRAIN_BATCH
    config.pretrain.microbatches = PRETRAIN_BATCH // ROWS_PER_MICROBATCH

    config.optimizer.peak_lr = 1e-6 if arg == "dpo" else 1e-5
    config.optimizer.warmup_steps = 100  # then cosine decay to 10%, the default schedule
    config.optimizer.weight_decay = 0.0

    config.checkpoint_every = 200
    config.max_new_tokens = 128
    if arg == "rlhf":  # placeholders: the sft row's workdir and the reward row's
        config.init_from = ""
        config.objective.reward_model = ""
        config.total_steps = 500
        config.batch_size = 256  # rollouts: 64 prompts x 4 samples
        config.microbatches = 2
        config.optimizer.peak_lr = 1e-6
    return config
