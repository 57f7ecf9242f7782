"""A miniature replication of the Chain of Hindsight paper's Table 4, on CPU.

    python experiments/replicate_coh.py                       # 3 seeds, every row
    python experiments/replicate_coh.py --seeds 0 --rows coh,sft_pos_neg --steps 60   # a quick look

The paper fine-tunes one pretrained model with each method on the same feedback data. Here:

1. "pretrained" (once): a small decoder trained from scratch on plain text of a synthetic task's
   domain -- each prompt followed by its good or its bad response, with equal odds, unlabelled
   (`jaxalign.data.sources.synthetic_pretraining_texts`), so it imitates both behaviours.
2. Per seed, every other row starts from that model (``init_from``) and trains for the same number
   of steps (the seed sets the training records, their order, FCM draws and the held-out prompts),
   on the same records (a prompt, a chosen and a rejected response), with the same feedback batch:
   SFT (chosen), SFT on chosen and rejected, SFT + unlikelihood on rejected, DPO (reference: the
   pretrained model), CoH, and the CoH ablations FCM 0, no chain (single-polarity sequences only)
   and lambda = 0 (no pretraining stream; CoH otherwise adds a batch of the plain text with weight 1.5).
3. Each model answers the held-out prompts greedily, prompted as it was trained (CoH with the
   positive marker), and the task's ground-truth scorer grades the answers (1 = the preferred
   behaviour). Preference accuracy (chosen more likely than rejected) is the paper's dialogue metric.

Writes experiments/results/coh_synthetic.md (mean and spread over seeds) and prints the same as JSON.
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
import coh_synthetic  # noqa: E402

from jaxalign.data import sources, synthetic  # noqa: E402
from jaxalign.eval import report as report_lib  # noqa: E402
from jaxalign.train import loop  # noqa: E402
from jaxalign.train.defaults import model_1m_config  # noqa: E402

# row -> (objective, config overrides); the order is the table's.
ROWS = {
    "coh": ("coh", {}),
    "coh_fcm0": ("coh", {"objective.fcm_max": 0.0}),
    "coh_nochain": ("coh", {"objective.variants": "p,n"}),
    "coh_nopretrain": ("coh", {"pretrain.weight": 0.0}),
    "sft": ("sft", {"pretrain.weight": 0.0}),
    "sft_pos_neg": ("sft_pos_neg", {"pretrain.weight": 0.0}),
    "unlikelihood": ("unlikelihood", {"pretrain.weight": 0.0}),
    # DPO at the others' learning rate (1e-3) drove its policy away from any fluent answer within
    # 120 steps (score 0.001 with preference accuracy 1.0, measured); 1e-4 is the usual DPO regime.
    "dpo": ("dpo", {"pretrain.weight": 0.0, "optimizer.peak_lr": 1e-4}),
}
LABELS = {
    "pretrained": "Pretrained model", "coh": "Chain of Hindsight", "coh_fcm0": "CoH, FCM 0",
    "coh_nochain": "CoH, no chain", "coh_nopretrain": "CoH, lambda = 0", "sft": "SFT",
    "sft_pos_neg": "SFT on pos + neg", "unlikelihood": "SFT + unlikelihood", "dpo": "DPO",
}
PAPER = {  # Table 4 of the paper: (Sum = average ROUGE, Dia = HH preference accuracy %)
    "pretrained": (20.23, 43.8), "coh": (27.45, 81.2), "coh_fcm0": (26.65, 79.6),
    "coh_nochain": (25.35, 78.8), "coh_nopretrain": (22.45, 60.8), "sft": (24.87, 64.8),
    "sft_pos_neg": (21.44, 50.6), "unlikelihood": (19.56, 42.3), "dpo": (None, None),
}


def base_config(seed: int, task: str, steps: int, objective: str = "coh") -> ml_collections.ConfigDict:
    """experiments/coh_synthetic.py shrunk to a ~1M-parameter model and a short budget."""
    config = coh_synthetic.get_config(objective)
    config.seed = seed
    config.total_steps = steps
    config.data.task = task
    config.data.num_train = 3000
    config.data.num_eval = 200
    config.model = model_1m_config()
    config.seq_len = 128
    config.optimizer.warmup_steps = max(steps // 10, 1)
    config.checkpoint_every = steps
    config.log_every = max(steps // 4, 1)
    config.num_samples = 0
    return config


def pretrain(seed: int, task: str, steps: int, workdir: Path) -> Path:
    """Step 1: the "pretrained" model, plain next-token prediction on the domain's text."""
    config = base_config(seed, task, steps, "sft")
    texts = sources.synthetic_pretraining_texts(synthetic.get_task(task), seed, config.data.num_train * 2)
    path = workdir / "pretrain.jsonl"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(t) + "\n" for t in texts))
    config.data.task = ""
    config.data.jsonl = str(path)
    config.data.schema = "text"
    config.pretrain.weight = 0.0
    config.optimizer.peak_lr = 2e-3
    run = workdir / "run"
    loop.train(config, run)
    return run


def finetune(row: str, seed: int, task: str, steps: int, base: Path, workdir: Path) -> Path:
    objective, overrides = ROWS[row]
    config = base_config(seed, task, steps, objective)
    config.init_from = str(base)
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    loop.train(config, workdir)
    return workdir


def evaluate(row: str, seed: int, task: str, steps: int, workdir: Path,
             temperature: float) -> dict[str, float]:
    objective = "sft" if row == "pretrained" else ROWS[row][0]
    config = base_config(seed, task, steps, objective)
    report = report_lib.evaluate(config, workdir, max_new_tokens=40, temperature=temperature, seed=seed)
    result = {"score": report["task"]["score"],
              "preference_accuracy": report["preference"]["sum"]["accuracy"]}
    if "feedback" in report:
        result["feedback_accuracy"] = report["feedback"]["accuracy"]
    return result


def table(results: dict[str, list[dict[str, float]]], task: str, seeds: list[int], steps: int,
          pretrain_steps: int, minutes: float) -> str:
    lines = [
        f"# Chain of Hindsight, miniature replication ({task} task)",
        "",
        f"Written by `python experiments/replicate_coh.py` ({len(seeds)} seeds: {seeds}; one model "
        f"pretrained for {pretrain_steps} steps, then {steps} fine-tuning steps per row and seed; "
        f"{minutes:.1f} minutes on this machine).",
        "Score: the task's ground-truth grade of greedy answers to 200 held-out prompts (1 = the preferred "
        "behaviour). Preference accuracy: chosen more likely than rejected on the same prompts. "
        "Mean +- standard deviation over seeds. The paper's columns (GPT-J 6B, Table 4) are for reference.",
        "",
        "| Method | Score | Preference acc. | Paper Sum (ROUGE) | Paper Dia (%) |",
        "|---|---|---|---|---|",
    ]
    for row, runs in results.items():
        score = np.array([r["score"] for r in runs])
        pref = np.array([r["preference_accuracy"] for r in runs])
        paper = PAPER.get(row, (None, None))
        paper_sum, paper_dia = (value if value else "-" for value in paper)
        lines.append(f"| {LABELS[row]} | {score.mean():.3f} +- {score.std():.3f} | {pref.mean():.3f} +- "
                     f"{pref.std():.3f} | {paper_sum} | {paper_dia} |")
    lines += ["", READING]
    return "\n".join(lines) + "\n"


# What experiments/coh_marker_probe.py measured (results/coh_marker_probe.md, seed 0, harmless task).
READING = (
    "Reading the CoH rows: the budget decides them. On this task CoH learns to use its marker only "
    "after about 160-280 fine-tuning steps (`experiments/results/coh_marker_probe.md`; seed 1 in "
    "`coh_marker_probe_seed1.md` escapes at 160-200, seed 0 at 280; the "
    "marker's effect on the refuse-or-comply token stays within 0.4 nats up to step 240, then rises to "
    "5 nats; greedy score 1.00 after the positive marker and 0.00 after the negative one at step 480, "
    "in the full, no-pretraining and no-chain arms alike). Before that the model is prompt-blind: its "
    "greedy answers refuse every prompt, so its score is the share of harmful held-out prompts, and "
    "a refusal is more likely than compliance as a whole answer, so preference accuracy is that share "
    "too. Not a defect: the generation prompt is token for token the trained prefix (800 of 800), "
    "and CoH on p sequences alone learns the decision by step 80. The full objective needs the "
    "prompt's harm and the marker together (every prompt appears under both markers), and "
    "neither alone lowers the loss; pn/np first learn that the second answer is the other one. At "
    "120 steps with the learning rate decayed to 0 the CoH rows never leave that plateau; "
    "`--steps 480` gives them room."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join(ROWS), help="fine-tuned rows (pretrained is always run)")
    parser.add_argument("--task", default="harmless", choices=sorted(synthetic.TASKS))
    parser.add_argument("--steps", type=int, default=120, help="fine-tuning steps per row")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy answers; polite needs sampling (greedy turns a mix into a coin flip)")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--workdir", default="workdirs/replicate_coh")
    parser.add_argument("--out", default=str(HERE / "results" / "coh_synthetic.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Rows share shapes: compiled steps are reused from disk instead of compiled again per run.
    import jax

    jax.config.update("jax_compilation_cache_dir", str(Path(args.workdir).absolute() / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    start = time.time()
    results: dict[str, list[dict[str, float]]] = {row: [] for row in ["pretrained", *rows]}
    base = pretrain(seeds[0], args.task, args.pretrain_steps, Path(args.workdir) / "pretrained")
    for seed in seeds:
        root = Path(args.workdir) / f"seed{seed}"
        results["pretrained"].append(
            evaluate("pretrained", seed, args.task, args.steps, base, args.temperature))
        for row in rows:
            t0 = time.time()
            run = finetune(row, seed, args.task, args.steps, base, root / row)
            results[row].append(evaluate(row, seed, args.task, args.steps, run,
                                         args.temperature))
            print(f"seed {seed} {row}: {results[row][-1]} ({time.time() - t0:.0f} s)", file=sys.stderr)
    minutes = (time.time() - start) / 60
    markdown = table(results, args.task, seeds, args.steps, args.pretrain_steps, minutes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    print(json.dumps({"task": args.task, "seeds": seeds, "minutes": minutes, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
