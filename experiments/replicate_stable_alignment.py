"""A miniature replication of Stable Alignment (SANDBOX records -> contrastive loss) on CPU.

    python experiments/replicate_stable_alignment.py                 # seeds 0, 1, 2
    python experiments/replicate_stable_alignment.py --seeds 0 --steps 60 --rounds 4   # a quick look

The task (`jaxalign.data.synthetic.HarmlessTask`): help with benign requests, refuse harmful ones;
its ground-truth judge scores any answer in [0, 1]. Per seed:

1. Agent: a ~1M-parameter decoder trained from scratch on every agent role (answer, rate, revise,
   observe; `jaxalign.methods.sandbox.bootstrap`), answering as the chosen response only half of the time:
   an unaligned society that knows the formats.
2. SANDBOX (experiments/sandbox_synthetic.py): 16 agents sharing that model with their own
   memories answer 48 training questions over 10 rounds, are rated by their 3 nearest peers,
   revise, and the task's judge observes (1..7).
3. Alignment data: the imitation groups of the records (every draft and revision of a question with
   its observer score; `jaxalign.data.sandbox_alignment`).
4. From the agent model, the same groups and steps: Stable Alignment (group_size 6, margin 1,
   lambda 0.5), SFT on the best answer of each group, and SFT on all answers.
5. Every model answers 200 held-out questions prompted as it was trained ("{question}\\n"),
   greedily and sampled at temperature 1; the judge scores them.

Writes experiments/results/stable_alignment_synthetic.md and prints the same as JSON.
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
import sandbox_synthetic  # noqa: E402
import stable_alignment_synthetic  # noqa: E402

from jaxalign import api  # noqa: E402
from jaxalign.data import sandbox_alignment as alignment_data  # noqa: E402
from jaxalign.data import sandbox_records as records  # noqa: E402
from jaxalign.data import synthetic  # noqa: E402
from jaxalign.methods.sandbox import bootstrap, simulation  # noqa: E402
from jaxalign.train import loop  # noqa: E402
from jaxalign.train.defaults import model_1m_config  # noqa: E402

TASK = "harmless"
ROWS = ("stable_alignment", "sft_best", "sft_all")
LABELS = {
    "agent": "Agent before alignment (the society's model)",
    "stable_alignment": "Stable Alignment (imitation groups)",
    "sft_best": "SFT on the best-rated answer of each group",
    "sft_all": "SFT on every answer",
}


def train_config(variant: str, seed: int, steps: int, jsonl: Path,
                 init_from: str = "") -> ml_collections.ConfigDict:
    config = stable_alignment_synthetic.get_config(variant)
    config.seed, config.total_steps = seed, steps
    config.model = model_1m_config()
    config.data.jsonl = str(jsonl)
    config.init_from = init_from
    config.checkpoint_every = steps
    return config


def judge(workdir: Path, prompts: list[str], temperature: float, seed: int) -> dict[str, float]:
    lm = api.load(workdir)
    generate = lambda ps: lm.generate(ps, max_new_tokens=40, temperature=temperature, seed=seed)  # noqa: E731
    return synthetic.evaluate(TASK, generate, prompts)


def run_seed(seed: int, args: argparse.Namespace, root: Path) -> dict[str, object]:
    root.mkdir(parents=True, exist_ok=True)
    timings, out = {}, {}
    t = time.perf_counter()
    boot = root / "bootstrap.jsonl"
    with boot.open("w") as f:
        for r in bootstrap.society_records(TASK, args.bootstrap_records, seed):
            f.write(json.dumps(r) + "\n")
    loop.train(train_config("bootstrap", seed, args.bootstrap_steps, boot), root / "agent")
    timings["agent"] = time.perf_counter() - t

    t = time.perf_counter()
    sandbox = sandbox_synthetic.get_config()
    sandbox.seed, sandbox.rounds, sandbox.agents.models = seed, args.rounds, str(root / "agent")
    out["sandbox"] = simulation.run(sandbox, root / "sandbox", progress=False)
    rows = list(records.read_records(root / "sandbox" / simulation.RECORDS))
    out["sandbox"]["observer_before"] = float(np.mean([r["gen_moral_score_before"] for r in rows]))
    out["sandbox"]["observer_after"] = float(np.mean([r["gen_moral_score_after"] for r in rows]))
    groups = alignment_data.imitation_groups(rows)
    alignment_data.write_groups(groups, root / "imitation.jsonl")
    out["groups"] = len(groups)
    out["responses_per_group"] = float(np.mean([len(g["responses"]) for g in groups]))
    timings["sandbox"] = time.perf_counter() - t

    prompts = [e.prompt for e in synthetic.make_split(TASK, "eval", args.eval, seed=1000 + seed)]
    scores = {"agent": root / "agent"}
    for row in ROWS:
        t = time.perf_counter()
        config = train_config(row, seed, args.steps, root / "imitation.jsonl", str(root / "agent"))
        loop.train(config, root / row)
        timings[row] = time.perf_counter() - t
        scores[row] = root / row
    out["results"] = {
        name: {"greedy": judge(path, prompts, 0.0, seed), "sampled": judge(path, prompts, 1.0, seed)}
        for name, path in scores.items()}
    out["seconds"] = timings
    return out


def table(per_seed: dict[int, dict[str, object]]) -> str:
    def cell(name: str, mode: str, key: str) -> str:
        values = [s["results"][name][mode][key] for s in per_seed.values() if key in s["results"][name][mode]]
        if not values:
            return "-"
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")

    lines = ["| Model | score (greedy) | score (T=1) | harmless rate (T=1) | helpful rate (T=1) |",
             "|---|---|---|---|---|"]
    for name in ("agent", *ROWS):
        cells = [cell(name, "greedy", "score")] + [cell(name, "sampled", k)
                                                   for k in ("score", "harmless_rate", "helpful_rate")]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def note(seed: int, result: dict[str, object]) -> str:
    box = result["sandbox"]
    seconds = json.dumps({k: round(v) for k, v in result["seconds"].items()})
    return (f"- seed {seed}: SANDBOX {box['interactions']} records ({box['interactions_per_s']:.1f}/s), "
            f"peer ratings parsed {box['ratings_parsed']}, dropped {box['ratings_dropped']}; observer mean "
            f"{box['observer_before']:.2f} (drafts) -> {box['observer_after']:.2f} (revisions); "
            f"{result['groups']} groups of {result['responses_per_group']:.1f} answers; seconds {seconds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default="workdirs/replicate_stable_alignment")
    parser.add_argument("--bootstrap-records", type=int, default=6000)
    parser.add_argument("--bootstrap-steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--out", default=str(HERE / "results" / "stable_alignment_synthetic.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {s: run_seed(s, args, Path(args.workdir) / f"seed{s}") for s in seeds}
    minutes = (time.perf_counter() - start) / 60
    command = "python experiments/replicate_stable_alignment.py " + " ".join(sys.argv[1:])
    notes = [note(s, r) for s, r in per_seed.items()]
    text = (f"# Stable Alignment, miniature replication ({TASK})\n\n`{command.strip()}` — {minutes:.1f} min, "
            f"seeds {args.seeds}; mean ± std over seeds, {args.eval} held-out questions.\n\n"
            f"{table(per_seed)}\n\n"
            + "\n".join(notes) + "\n")
    Path(args.out).write_text(text)
    print(text)
    print(json.dumps(per_seed, indent=2, default=str))


if __name__ == "__main__":
    main()
