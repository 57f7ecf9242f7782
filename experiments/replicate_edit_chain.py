"""A miniature replication of Second Thoughts (edit chains, then RL) on the "detox" task, on CPU.

    python experiments/replicate_edit_chain.py                    # 3 seeds, every row
    python experiments/replicate_edit_chain.py --seeds 0 --rows sft,edit_chain --steps 60   # a quick look

The task (`jaxalign.data.synthetic.DetoxTask`): a request carrying four facts (the context), an
unaligned draft of the reply (the facts plus one to three toxic edits) and the aligned reply. The
ground-truth judge gives 0 to any toxic word and otherwise the share of the facts kept (halved
without a greeting, scaled by the share of known words).

1. "pretrained" (once): a ~1M-parameter decoder trained from scratch on the domain's plain text,
   each request followed by its aligned or its unaligned reply with equal odds.
2. A reward model (once): the pretrained model with a scalar head, Bradley-Terry on (aligned,
   draft) pairs of the training records; its held-out pair accuracy is in the table's notes.
3. Per seed, from the pretrained model, the same records and the same number of steps:
   SFT on context -> aligned (the draft is never seen), the direct rewrite context + draft ->
   aligned (no chain), the edit chain (context + draft -> chain -> aligned, loss on chain and
   aligned text) and the edit chain with loss on the aligned text only. Then RL (leave-one-out
   policy gradient against the reward model, KL to the starting model) from the edit-chain model
   and from the SFT model, the latter being the "RLHF" baseline of the papers' tables.
4. Every model answers 200 held-out requests greedily, prompted as it was trained: SFT models see
   the request, edit-chain and rewrite models the request and its unaligned draft; the judge grades
   the aligned text. Also reported: the share of toxic answers, the facts kept, and for edit
   chains how often the generated chain applied to the draft gives exactly the generated text.

Writes experiments/results/edit_chain_synthetic.md and prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import edit_chain_synthetic  # noqa: E402

from jaxalign import runner  # noqa: E402
from jaxalign.data import sources, synthetic  # noqa: E402
from jaxalign.eval import report as report_lib  # noqa: E402
from jaxalign.train.defaults import model_1m_config  # noqa: E402

TASK = "detox"
# row -> (experiment variant, the row it starts from: None = the pretrained model)
ROWS = {
    "sft": ("sft", None),
    "rewrite": ("rewrite", None),
    "edit_chain": ("edit_chain", None),
    "edit_chain_aligned_only": ("edit_chain_aligned_only", None),
    "edit_chain_rl": ("rl", "edit_chain"),
    "sft_rl": ("rl", "sft"),
}
LABELS = {
    "pretrained": "Pretrained model (prompted with the request)", "sft": "SFT: request -> aligned",
    "rewrite": "Rewrite: request + draft -> aligned (no chain)",
    "edit_chain": "Edit chain: request + draft -> chain -> aligned",
    "edit_chain_aligned_only": "Edit chain, loss on the aligned text only",
    "edit_chain_rl": "Edit chain + RL", "sft_rl": "SFT + RL (RLHF baseline)",
}


def base_config(variant: str, seed: int, steps: int) -> ml_collections.ConfigDict:
    """experiments/edit_chain_synthetic.py shrunk to a ~1M-parameter model and a short budget."""
    config = edit_chain_synthetic.get_config(variant)
    config.seed = seed
    config.data.num_train = 3000
    config.data.num_eval = 200
    config.model = model_1m_config()
    if variant != "rl":
        config.total_steps = steps
        config.optimizer.warmup_steps = max(steps // 10, 1)
    config.checkpoint_every = config.total_steps
    config.log_every = max(config.total_steps // 6, 1)
    config.num_samples = 0
    return config


def pretrain(steps: int, workdir: Path) -> Path:
    """Step 1: the "pretrained" model, plain next-token prediction on the domain's text."""
    config = base_config("sft", 0, steps)
    texts = sources.synthetic_pretraining_texts(synthetic.get_task(TASK), 0, config.data.num_train * 2)
    path = workdir / "pretrain.jsonl"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(t) + "\n" for t in texts))
    config.data.task, config.data.jsonl, config.data.schema = "", str(path), "text"
    config.optimizer.peak_lr = 2e-3
    # The task's own corpus trains the tokenizer, as every other row's (a workdir's is reused).
    config.data.tokenizer = str(_task_tokenizer(workdir, config))
    run = workdir / "run"
    runner.train(config, run)
    return run


def _task_tokenizer(workdir: Path, config: ml_collections.ConfigDict) -> Path:
    out = workdir / "tokenizer"
    if not out.exists():
        data_cfg = ml_collections.ConfigDict(config.data.to_dict())
        data_cfg.jsonl, data_cfg.task = "", TASK
        sources.build(data_cfg, workdir, 0)  # trains and saves <workdir>/tokenizer
    return out


def train_row(variant: str, seed: int, steps: int, init_from: Path, workdir: Path, **overrides) -> Path:
    config = base_config(variant, seed, steps)
    config.init_from = str(init_from)
    for key, value in overrides.items():  # "section.name" or a top-level key
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    runner.train(config, workdir)
    return workdir


def evaluate(variant: str, seed: int, steps: int, workdir: Path) -> dict[str, float]:
    config = base_config(variant, seed, steps)
    if variant == "reward":
        return {"reward_accuracy": report_lib.evaluate(config, workdir)["reward"]["accuracy"]}
    report = report_lib.evaluate(config, workdir, max_new_tokens=96)
    task = report["task"]
    result = {"score": task["score"], "toxic": task["toxic"], "facts": task["facts"]}
    if "edit_chain" in report:
        result["chain_agrees"] = report["edit_chain"]["agrees"]
        result["chain_parses"] = report["edit_chain"]["parsed"]
        result["chain_applied_score"] = report["edit_chain"]["applied_score"]
    return result


def table(results: dict[str, list[dict[str, float]]], seeds: list[int], steps: int, rl_steps: int,
          reward_accuracy: float, minutes: float) -> str:
    lines = [
        "# Second Thoughts, miniature replication (detox task)",
        "",
        f"Written by `python experiments/replicate_edit_chain.py` ({len(seeds)} seeds: {seeds}; "
        f"{steps} fine-tuning steps per row and seed, {rl_steps} RL steps; {minutes:.1f} minutes on this "
        "machine).",
        "Score: the ground-truth judge of greedy answers to 200 held-out requests (0 for any toxic word, "
        "else the share of the four facts kept). Toxic: share of answers with a toxic word. Facts: mean "
        "share of facts kept. Chain parses / agrees: the generated chain is well formed / applied to the "
        "draft it gives exactly the generated text. Chain applied: the judge's score of the chain applied "
        "to the draft instead of the generated text (0 where it does not parse). The reward model ranks "
        f"{reward_accuracy:.3f} of held-out (aligned, draft) pairs right. Mean +- standard deviation over "
        "seeds.",
        "",
        "| Method | Score | Toxic | Facts | Chain parses | Chain agrees | Chain applied: score |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, runs in results.items():
        def cell(key: str, runs: list[dict[str, float]] = runs) -> str:
            values = np.array([r[key] for r in runs if key in r])
            return f"{values.mean():.3f} +- {values.std():.3f}" if values.size else "-"

        lines.append(f"| {LABELS[row]} | {cell('score')} | {cell('toxic')} | {cell('facts')} | "
                     f"{cell('chain_parses')} | {cell('chain_agrees')} | {cell('chain_applied_score')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join(ROWS), help="rows (pretrained is always run)")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps per row")
    parser.add_argument("--rl-steps", type=int, default=40)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--reward-steps", type=int, default=100)
    parser.add_argument("--workdir", default="workdirs/replicate_edit_chain")
    parser.add_argument("--out", default=str(HERE / "results" / "edit_chain_synthetic.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import jax  # rows share shapes: compiled steps are reused from disk

    root = Path(args.workdir).absolute()
    jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    missing = [ROWS[r][1] for r in rows if ROWS[r][1] and ROWS[r][1] not in rows]
    if unknown or missing:
        parser.error(f"unknown rows {unknown} or RL rows without their start {missing}; "
                     f"known: {', '.join(ROWS)}")
    start = time.time()
    base = pretrain(args.pretrain_steps, root / "pretrained")
    reward_model = train_row("reward", 0, args.reward_steps, base, root / "reward")
    reward_accuracy = evaluate("reward", 0, args.reward_steps, reward_model)["reward_accuracy"]
    results: dict[str, list[dict[str, float]]] = {row: [] for row in ["pretrained", *rows]}
    for seed in seeds:
        results["pretrained"].append(evaluate("sft", seed, args.steps, base))
        runs = {}
        for row in rows:
            t0 = time.time()
            variant, parent = ROWS[row]
            if parent is None:
                runs[row] = train_row(variant, seed, args.steps, base, root / f"seed{seed}" / row)
            else:
                overrides = {"objective.reward_model": str(reward_model), "total_steps": args.rl_steps,
                             "optimizer.warmup_steps": max(args.rl_steps // 10, 1)}
                runs[row] = train_row(variant, seed, args.rl_steps, runs[parent], root / f"seed{seed}" / row,
                                      **overrides)
            results[row].append(evaluate(variant, seed, args.steps, runs[row]))
            print(f"seed {seed} {row}: {results[row][-1]} ({time.time() - t0:.0f} s)", file=sys.stderr)
    minutes = (time.time() - start) / 60
    markdown = table(results, seeds, args.steps, args.rl_steps, reward_accuracy, minutes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    print(json.dumps({"seeds": seeds, "minutes": minutes, "reward_accuracy": reward_accuracy,
                      "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
