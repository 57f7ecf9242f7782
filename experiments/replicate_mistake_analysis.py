"""A miniature replication of Mistake Analysis (Chen et al., ICLR 2024) on CPU.

    python experiments/replicate_mistake_analysis.py                     # seeds 0, 1, 2
    python experiments/replicate_mistake_analysis.py --seeds 0 --steps 60 --assistant-steps 200   # a look

The task (`jaxalign.data.synthetic.HarmlessTask`): help with benign requests, refuse harmful ones;
its ground truth judges any answer. Once per run, a safety judge (a classifier with a score head,
`jaxalign.eval.safety`) is trained on labelled safe/unsafe answers; the pipeline filters with it and
the table reports its harmless rate beside the ground truth's. Per seed
(experiments/mistake_analysis_synthetic.py holds the configs):

1. Start: a ~1M-parameter decoder trained from scratch as an Alpaca-like assistant
   (`jaxalign.data.assistant`): helpful, refusing harmful requests 40% of the time, following hints,
   able to analyse an answer it is told is harmful.
2. Pipeline (`jaxalign mistakes`): 256 red-team instructions, answers induced with the hint at T=0.7,
   guided analyses, answers the judge finds safe dropped; 320 (prompt, chosen) pairs, 10% of them safe
   answers to harmful instructions.
3. From the start model, the same steps: SFT on the pairs, and Mistake Analysis on the pairs plus the
   (instruction + answer -> analysis) examples (no hint in them).
4. Every model answers 200 held-out instructions (half harmful) greedily and sampled at T=1, bare and
   with the harmlessness hint (guided response generation).

Writes experiments/results/mistake_analysis_synthetic.md and prints the same as JSON.
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
import mistake_analysis_synthetic as configs  # noqa: E402
import safety_judge  # noqa: E402

from jaxalign import api  # noqa: E402
from jaxalign.data import (  # noqa: E402
    assistant,
    mistake_prompts,  # noqa: E402
    synthetic,
)
from jaxalign.eval import safety  # noqa: E402
from jaxalign.methods import mistakes as mistake_analysis  # noqa: E402
from jaxalign.train import loop  # noqa: E402
from jaxalign.train.defaults import model_1m_config  # noqa: E402

TASK = "harmless"
# The share of the 320 pairs that answer a harmful instruction safely: none, or about 3 of them. With
# 10 or more (3%) SFT alone is perfect on this task (measured), so nothing is left to compare.
SETTINGS = {"no safe pairs": 0.0, "3 safe pairs": 0.01}
METHODS = {"sft": ("SFT on the pairs", "sft.jsonl"),
           "mistake_analysis": ("Mistake Analysis (pairs + analyses)", "mix.jsonl")}
MODES = {"greedy": (0.0, False), "greedy + hint": (0.0, True), "T=1": (1.0, False)}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def train(config: ml_collections.ConfigDict, seed: int, steps: int, jsonl: Path, workdir: Path,
          init_from: str = "") -> Path:
    config.seed, config.total_steps = seed, steps
    config.model = model_1m_config()
    config.data.jsonl, config.init_from, config.checkpoint_every = str(jsonl), init_from, steps
    loop.train(config, workdir)
    return workdir


def train_judge(root: Path, args: argparse.Namespace) -> Path:
    records = safety.safety_records(TASK, args.judge_records, seed=0)
    jsonl = write_jsonl(root / "safety.jsonl", records)
    return train(safety_judge.get_config("synthetic"), 0, args.judge_steps, jsonl, root / "judge")


def answers(lm: api.LM, prompts: list[str], temperature: float, seed: int, guided: bool) -> list[str]:
    asked = [mistake_prompts.guided_prompt(p) for p in prompts] if guided else prompts
    return lm.generate(asked, max_new_tokens=40, temperature=temperature, seed=seed)


def judged(workdir: Path, judge: safety.SafetyJudge, prompts: list[str], seed: int) -> dict[str, dict]:
    """Ground-truth metrics, the judge's harmless rate and its agreement with the truth, per decoding."""
    lm, task = api.load(workdir), synthetic.get_task(TASK)
    harmful = [task.is_harmful(p) for p in prompts]
    out = {}
    for mode, (temperature, guided) in MODES.items():
        responses = answers(lm, prompts, temperature, seed, guided)
        row = synthetic.evaluate(TASK, lambda _: responses, prompts)  # noqa: B023
        report = judge.report(prompts, responses, harmful=harmful)
        row["judge_harmless_rate"] = report["harmless_rate_harmful"]
        row["judge_agreement"] = safety.agreement(judge, TASK, prompts, responses)["accuracy"]
        out[mode] = row
    return out


def run_seed(seed: int, args: argparse.Namespace, root: Path, judge_dir: Path) -> dict[str, object]:
    root.mkdir(parents=True, exist_ok=True)
    timings, out = {}, {}
    t = time.perf_counter()
    boot = write_jsonl(root / "assistant.jsonl", assistant.assistant_records(args.assistant_records, seed))
    train(configs.get_config("assistant"), seed, args.assistant_steps, boot, root / "start")
    timings["start"] = time.perf_counter() - t

    prompts = [e.prompt for e in synthetic.make_split(TASK, "eval", args.eval, seed=1000 + seed)]
    judge = safety.SafetyJudge.load(judge_dir)
    out["results"] = {"start": judged(root / "start", judge, prompts, seed)}
    out["pipeline"] = {}
    for setting, fraction in SETTINGS.items():
        t, name = time.perf_counter(), f"pairs{fraction}"
        pipe = configs.get_config("pipeline")
        pipe.seed, pipe.model, pipe.filter.judge = seed, str(root / "start"), str(judge_dir)
        pipe.pairs.harmful_fraction = fraction
        out["pipeline"][setting] = mistake_analysis.run(pipe, root / f"mistakes_{name}", progress=False)
        for method, (_, data) in METHODS.items():
            workdir = root / f"{method}_{name}"
            train(configs.get_config(method), seed, args.steps, root / f"mistakes_{name}" / data, workdir,
                  str(root / "start"))
            out["results"][f"{method}|{setting}"] = judged(workdir, judge, prompts, seed)
        timings[setting] = time.perf_counter() - t
    out["seconds"] = timings
    return out


def table(per_seed: dict[int, dict[str, object]]) -> str:
    def cell(name: str, mode: str, key: str) -> str:
        values = [s["results"][name][mode][key] for s in per_seed.values()]
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")

    lines = ["| Model | pairs | decoding | harmless rate | harmless (judge) | helpful rate | score |",
             "|---|---|---|---|---|---|---|"]
    names = [("start", "Start (Alpaca-like assistant)", "-")] + [
        (f"{m}|{s}", label, s) for s in SETTINGS for m, (label, _) in METHODS.items()]
    keys = ("harmless_rate", "judge_harmless_rate", "helpful_rate", "score")
    for name, label, setting in names:
        for mode in MODES:
            cells = " | ".join(cell(name, mode, k) for k in keys)
            lines.append(f"| {label} | {setting} | {mode} | {cells} |")
    return "\n".join(lines)


def note(seed: int, result: dict[str, object]) -> str:
    pipe = next(iter(result["pipeline"].values()))  # the stages are the same in both settings
    seconds = json.dumps({k: round(v) for k, v in result["seconds"].items()})
    agreement = np.mean([m["judge_agreement"] for r in result["results"].values() for m in r.values()])
    return (f"- seed {seed}: {pipe['instructions']} red-team instructions, {pipe['judged_harmful']} induced "
            f"answers judged harmful, {pipe['kept']} analyses kept (dropped {pipe['dropped']}); "
            f"{pipe['pairs']} pairs; mix {pipe['mix']}; the judge agreed with the ground truth on "
            f"{agreement:.3f} of all generated answers; seconds {seconds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default="workdirs/replicate_mistake_analysis")
    parser.add_argument("--assistant-records", type=int, default=6000)
    parser.add_argument("--assistant-steps", type=int, default=300)
    parser.add_argument("--judge-records", type=int, default=2000)
    parser.add_argument("--judge-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--out", default=str(HERE / "results" / "mistake_analysis_synthetic.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    judge_dir = train_judge(root, args)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {s: run_seed(s, args, root / f"seed{s}", judge_dir) for s in seeds}
    minutes = (time.perf_counter() - start) / 60
    command = "python experiments/replicate_mistake_analysis.py " + " ".join(sys.argv[1:])
    text = (f"# Mistake Analysis, miniature replication ({TASK})\n\n`{command.strip()}` — {minutes:.1f} min, "
            f"seeds {args.seeds}; mean ± std over seeds, {args.eval} held-out instructions (about half "
            "harmful). Harmless rate: on the harmful ones; helpful rate: on the benign ones.\n\n"
            f"{table(per_seed)}\n\n" + "\n".join(note(s, r) for s, r in per_seed.items()) + "\n")
    Path(args.out).write_text(text)
    print(text)
    print(json.dumps(per_seed, indent=2, default=str))


if __name__ == "__main__":
    main()
