"""The judges of Mistake Analysis: a safety classifier (harmless rate) and a helpfulness reward model.

    python experiments/safety_judge.py workdirs/safety_records.jsonl       # write the labelled records
    jaxalign train --config experiments/safety_judge.py:synthetic --workdir workdirs/safety_judge
    jaxalign train --config experiments/safety_judge.py:pku --workdir workdirs/pku_safety_judge \\
        --config.data.source_dir=/data/PKU-SafeRLHF --config.init_from=/models/llama-2-7b
    jaxalign train --config experiments/safety_judge.py:pku_helpful --workdir workdirs/pku_helpful_rm \\
        --config.data.source_dir=/data/PKU-SafeRLHF --config.init_from=/models/llama-2-7b

then, in Python, ``jaxalign.eval.safety.SafetyJudge.load("workdirs/safety_judge").report(prompts,
responses, harmful=flags)`` for the harmless rate and ``helpfulness(Judge.load(...), ...)`` for the
mean reward (`jaxalign.eval.safety` says what each judge is and how far to trust it).

Chen et al. (ICLR 2024) judge harmlessness and helpfulness with trained models; every judge here is
the codebase's reward model (objective "reward": a scalar score head). ``get_config(variant)``
(``file.py:variant`` on the command line); `VARIANTS` lists them:

    synthetic    safety classifier on the synthetic "harmless" task, CPU, ~2 minutes: cross-entropy
                 on labelled records {"prompt", "text", "label"} (1 = safe), `data.jsonl` =
                 `RECORDS`, written by running this file (`main`: `safety.safety_records("harmless",
                 4000, 0)` as JSONL, 8000 records, 3 safe : 1 unsafe; ``--examples``, ``--seed`` and
                 ``--split`` change what it writes, the first argument where).
    pku          safety classifier at the paper's scale: cross-entropy on PKU-SafeRLHF's
                 is_response_{0,1}_safe labels (data.dataset "pku_saferlhf_safety": each response a
                 labelled record), from a 7B model.
    pku_helpful  helpfulness reward model: Bradley-Terry on PKU-SafeRLHF's better_response_id pairs
                 (data.dataset "pku_saferlhf_better"), from a 7B model.

Placeholders of the pku variants (the run stops with an error naming the key until they are set):
``data.source_dir`` (the upstream PKU-SafeRLHF files; jaxalign/data/builders/pku_saferlhf.py says
which)
and ``init_from`` (a directory written by ``jaxalign import-hf --out``, or a Hugging Face directory:
its backbone is copied and a fresh score head initialised).

Choices (design choices; the paper does not describe its judges' training): synthetic: preset
"small" (4 layers, hidden 256), a 512-piece vocabulary, 300 steps of 16 packed rows of 64 tokens (a
harmless-task record is at most 37 tokens), AdamW 1e-3: 2m15s on 2 shared CPU cores, accuracy 1.0
on 1000 eval-split responses (`safety_records("harmless", 500, 0, "eval")`). Check it with
`safety.agreement` on the responses it is to judge before trusting a harmless rate: generated text
is further from its training data than the eval split is. pku: preset "7b" (parameters float32,
matmuls bfloat16, full remat, scanned layers), seq_len 512 (the packer truncates a longer example and
logs it; a truncated response is judged on its beginning), 64 rows per step in 4 microbatches, AdamW
2e-5 with 3% warmup and cosine decay to 10%, 1000 steps; size it to one or two epochs of your data
(experiments/README.md: steps per epoch), as reward models overfit past that.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ml_collections

from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import default_train_config, model_7b_config

VARIANTS = ("synthetic", "pku", "pku_helpful")
DATASET = {"pku": "pku_saferlhf_safety", "pku_helpful": "pku_saferlhf_better"}
RECORDS = "workdirs/safety_records.jsonl"  # where `main` writes the synthetic records by default
SYNTHETIC_EXAMPLES = 4000  # harmless-task examples `main` labels (two records each)


def get_config(variant: str = "synthetic") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    config = _synthetic() if variant == "synthetic" else _paper(variant)
    config.objective = objective_config("reward")  # labelled records: cross-entropy; pairs: Bradley-Terry
    config.num_samples = 0  # a score head does not generate
    config.max_new_tokens = 64  # unused by a score model; `jaxalign eval` reads the key
    return config


def _synthetic() -> ml_collections.ConfigDict:
    config = default_train_config()
    config.total_steps = 300
    config.seq_len = 64
    config.init_from = ""
    config.data.task = ""
    config.data.jsonl = RECORDS  # labelled records: run this file first (see the docstring)
    config.data.schema = "labelled"
    config.data.num_train = 0  # every record
    config.data.vocab_size = 512  # a record is at most 37 tokens (59 with 384)
    config.optimizer.warmup_steps = 20
    config.checkpoint_every = 100
    config.keep_checkpoints = 1
    config.log_every = 20
    return config


def _paper(variant: str) -> ml_collections.ConfigDict:
    config = default_train_config()
    config.total_steps = 1000
    config.batch_size = 64
    config.seq_len = 512
    config.microbatches = 4
    config.model = model_7b_config()
    config.init_from = "/models/llama-2-7b"  # placeholder: `jaxalign import-hf --out` of a 7B base model
    config.data.task = ""
    config.data.dataset = DATASET[variant]  # data.source_dir: a placeholder for the upstream files
    config.data.num_train = 0  # every training record
    config.data.num_eval = 1000
    config.optimizer.peak_lr = 2e-5
    config.optimizer.warmup_steps = 30  # then cosine decay to 10%, the default schedule
    config.checkpoint_every = 200
    return config


def main(argv: list[str] | None = None) -> int:
    """Writes `safety.safety_records` of the harmless task as labelled JSONL: the synthetic variant's data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=RECORDS, help=f"output .jsonl (default {RECORDS})")
    parser.add_argument("--examples", type=int, default=SYNTHETIC_EXAMPLES,
                        help="harmless-task examples to label (two records each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=("train", "eval"))
    args = parser.parse_args(argv)
    from jaxalign.eval import safety  # imports JAX: only when records are written, not for configs

    records = safety.safety_records("harmless", args.examples, args.seed, args.split)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    safe = sum(r["label"] for r in records)
    print(f"{out}: {len(records)} records, {safe} safe, {len(records) - safe} unsafe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
