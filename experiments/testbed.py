"""A test bed where the methods can win: noisy comparisons of two start-model samples, a graded true
reward, every method on the same data and budget, frontier plots.

    python experiments/testbed.py                                   # both domains, 3 seeds, every row
    python experiments/testbed.py --domains detox --seeds 0 --rows sft_chosen,dpo_b0.1 --steps 30  # a look

The bundled tasks pair a perfect response with a bad one, so SFT on "chosen" is the oracle there. The
papers' regime is the opposite, and this is it, in miniature (docs/methods.md#the-test-bed):

1. **A graded true reward** (`jaxalign.data.graded`): a response is made of parts, each good or bad,
   and its reward is the weighted share of good parts, in [0, 1].
2. **A start model** (once per domain): a ~1M-parameter decoder pretrained on the domain's text
   (prompts with responses whose parts are good or bad at random, and some critiques of them), then
   SFT on prompt -> such a response in the chat format: an instruction follower whose samples spread
   over the reward (`start_rewards_<domain>.png`).
3. **Feedback like people give it** (per seed): two samples of the start model per training prompt,
   labelled by a simulated annotator (`jaxalign.data.annotator`: Bradley-Terry on the true reward with
   a temperature calibrated so that 27.5% of the labels of close pairs (|r_a - r_b| <= 0.1) disagree with
   the true order, plus 5% flips); a 1-7 rating of each sample (Stable Alignment); a feedback sentence
   saying what is wrong (CoH's and Mistake Analysis' analyses).
4. **Every method from the start model, same records, same steps**: SFT on chosen, SFT on both, SFT +
   unlikelihood, DPO (beta 0.1 and 0.5), CoH and CoH without chains, Stable Alignment on the ratings,
   edit chains (rejected -> chosen), Mistake Analysis (chosen + analyses of rejected), a reward model on
   the labels + RL, RL on the true reward (an oracle: `reward_fn`), best-of-n on the true reward (an
   oracle, no training).
5. **Measured the same way**: each model samples (temperature 1) two answers to 64 held-out prompts
   after a third, two thirds and all of its steps; mean true reward, and KL(policy || start) estimated
   on those samples (sum over the answer of log p_policy - log p_start, each model prompted its own way).

Writes experiments/results/testbed.md, testbed.json and the PNGs beside them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jaxalign import api, forward, sample, workdir  # noqa: E402
from jaxalign.data import annotator as annotator_lib  # noqa: E402
from jaxalign.data import graded  # noqa: E402
from jaxalign.data.mistake_prompts import ANALYSIS_QUESTION, analysis_prompt  # noqa: E402
from jaxalign.methods import rl  # noqa: E402
from jaxalign.objectives import registry  # noqa: E402
from jaxalign.train.defaults import default_train_config, model_1m_config  # noqa: E402

HERE = Path(__file__).resolve().parent
# row -> (objective, records, config overrides). records: "pairs" (preference), "groups" (two rated
# samples per prompt), "mix" (Mistake Analysis: chosen, plus an analysis of each rejected sample).
SUPERVISED = {
    "sft_chosen": ("sft", "pairs", {}),
    "sft_both": ("sft_pos_neg", "pairs", {}),
    "unlikelihood": ("unlikelihood", "pairs", {}),
    "dpo_b0.1": ("dpo", "pairs", {"objective.beta": 0.1}),
    "dpo_b0.5": ("dpo", "pairs", {"objective.beta": 0.5}),
    "coh": ("coh", "pairs", {}),
    "coh_nochain": ("coh", "pairs", {"objective.variants": "p,n"}),
    "stable_alignment": ("stable_alignment", "groups", {"objective.group_size": 2}),
    "edit_chain": ("edit_chain", "pairs", {}),
    "mistake_analysis": ("sft", "mix", {"objective.responses": "all"}),
}
RL_ROWS = ("rm_rl", "rl_true")
ORACLES = ("rl_true", "best_of_n")
ROWS = (*SUPERVISED, *RL_ROWS, "best_of_n")
LABELS = {
    "start": "Start model (SFT)", "sft_chosen": "SFT on chosen", "sft_both": "SFT on both",
    "unlikelihood": "SFT + unlikelihood", "dpo_b0.1": "DPO, beta 0.1", "dpo_b0.5": "DPO, beta 0.5",
    "coh": "Chain of Hindsight", "coh_nochain": "CoH, no chain", "stable_alignment": "Stable Alignment",
    "edit_chain": "Edit chains", "mistake_analysis": "Mistake Analysis", "rm_rl": "Reward model + RL",
    "rl_true": "RL on the true reward (oracle)", "best_of_n": "Best-of-16, true reward (oracle)",
}
MAX_NEW = 64  # the longest all-parts answer is ~50 tokens: none is cut short
SEQ_LEN = 128  # a Mistake Analysis record (question, answer, analysis) is the longest, ~100 tokens
BEST_OF = (1, 2, 4, 8, 16)


# --------------------------------------------------------------------------- configs and runs


def base_config(objective: str, seed: int, steps: int, records: Path,
                schema: str) -> ml_collections.ConfigDict:
    config = default_train_config()
    config.objective = registry.default_config(objective)
    config.model = model_1m_config()
    config.seed, config.total_steps, config.seq_len, config.batch_size = seed, steps, SEQ_LEN, 8
    config.data.update(task="", jsonl=str(records), schema=schema, num_train=0, num_eval=0, vocab_size=512)
    config.optimizer.update(peak_lr=5e-4, warmup_steps=max(steps // 10, 1))
    config.checkpoint_every = max(steps // 3, 1)
    config.keep_checkpoints = 3
    config.log_every = max(steps // 6, 1)
    config.num_samples = 0
    config.max_new_tokens = MAX_NEW
    config.init_from = ""
    return config


def _override(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _train(config: ml_collections.ConfigDict, run: Path) -> Path:
    from jaxalign import runner

    def done() -> bool:
        return (workdir.is_workdir(run) and bool(workdir.committed_steps(run))
                and max(workdir.committed_steps(run)) >= config.total_steps)

    if not done():
        runner.train(config, run)
    if not done():  # stopped early (SIGTERM saves and returns): the next stage must not start from it
        raise SystemExit(f"{run}: stopped before step {config.total_steps}; run the test bed again to resume")
    return run


def start_model(domain: graded.Domain, root: Path, pretrain_steps: int, sft_steps: int) -> Path:
    """Pretraining on the domain's text, then SFT to a chat-format policy with random-parts answers."""
    rng = random.Random(f"testbed:{domain.name}:start")
    prompts = domain.prompts("train", 4000, seed=10_001)
    texts = []
    for p in prompts:
        response = domain.response(rng, p, 0.5)
        texts.append({"text": f"{p}\n{response}"})
        if rng.random() < 0.25:  # critiques, so that the start model knows the analyses' words
            texts.append({"text": analysis_prompt(p, response, ANALYSIS_QUESTION) + "\n"
                          + domain.feedback(p, response)})
    config = base_config("sft", 0, pretrain_steps, _write(root / "pretrain.jsonl", texts), "text")
    config.optimizer.peak_lr = 2e-3
    config.batch_size = 16
    pretrained = _train(config, root / "pretrained")
    sft_records = [{"prompt": p, "chosen": domain.response(rng, p, 0.5), "rejected": "-"}
                   for p in domain.prompts("train", 2000, seed=10_002)]
    config = base_config("sft", 0, sft_steps, _write(root / "sft.jsonl", sft_records), "preference")
    config.optimizer.peak_lr = 1e-3
    config.batch_size = 16
    config.init_from = str(pretrained)
    return _train(config, root / "start")


def samples(lm: api.LM, prompts: list[str], k: int, seed: int) -> list[list[str]]:
    """k answers (temperature 1) of `lm` to each prompt, prompted as it was trained."""
    out = lm.generate([p for p in prompts for _ in range(k)], max_new_tokens=MAX_NEW, temperature=1.0,
                      seed=seed)
    return [[s.strip() for s in out[i * k:(i + 1) * k]] for i in range(len(prompts))]


def feedback_data(domain: graded.Domain, start: api.LM, n: int, seed: int, root: Path) -> dict[str, Any]:
    """Per seed: pairs of start-model samples, labelled and rated by the simulated annotator."""
    prompts = domain.prompts("train", n, seed=seed)
    pairs = samples(start, prompts, 2, seed=seed)
    ra = np.array(domain.rewards(prompts, [a for a, _ in pairs]))
    rb = np.array(domain.rewards(prompts, [b for _, b in pairs]))
    keys = [f"{domain.name}:{seed}:{i}" for i in range(n)]
    annotator = annotator_lib.Annotator.calibrate(ra, rb, target=0.275, close=0.1, flip_rate=0.05, seed=seed)
    a_first = annotator.label_pairs(ra, rb, keys)
    ratings_a = annotator.ratings(ra, [k + ":a" for k in keys])
    ratings_b = annotator.ratings(rb, [k + ":b" for k in keys])
    pref, groups, mix = [], [], []
    for i, (p, (a, b)) in enumerate(zip(prompts, pairs, strict=True)):
        chosen, rejected = (a, b) if a_first[i] else (b, a)
        if not chosen or not rejected:
            continue
        pref.append({"prompt": p, "chosen": chosen, "rejected": rejected, "id": keys[i]})
        groups.append({"prompt": p, "responses": [a, b], "ratings": [int(ratings_a[i]), int(ratings_b[i])],
                       "id": keys[i]})
        mix.append({"prompt": p, "responses": [chosen], "ratings": [1], "id": keys[i] + ":pair"})
        mix.append({"prompt": analysis_prompt(p, rejected, ANALYSIS_QUESTION),
                    "responses": [domain.feedback(p, rejected)], "ratings": [1], "id": keys[i] + ":analysis"})
    files = {"pairs": _write(root / "pairs.jsonl", pref), "groups": _write(root / "groups.jsonl", groups),
             "mix": _write(root / "mix.jsonl", mix)}
    stats = annotator_lib.Annotator.disagreement(ra, rb, a_first, close=0.1)
    chosen_r = np.where(a_first, ra, rb)
    return {"files": files, "card": annotator.card(), "disagreement": stats,
            "rewards": np.concatenate([ra, rb]).tolist(), "chosen_mean": float(chosen_r.mean()),
            "rejected_mean": float(np.where(a_first, rb, ra).mean()),
            "pair_mean": float((ra + rb).mean() / 2),
            "best_of_pair_mean": float(np.maximum(ra, rb).mean()), "n": len(pref)}


# --------------------------------------------------------------------------- evaluation


def _policy(run: Path, tokenizer: Any, schema: str) -> registry.Objective:
    return registry.make(rl.policy_objective(run), tokenizer, schema=schema)


def evaluate(lm: api.LM, policy: registry.Objective, start: api.LM, start_policy: registry.Objective,
             domain: graded.Domain, records: list[dict[str, Any]], seed: int, k: int = 2) -> dict[str, float]:
    """Mean true reward of k samples per prompt, and KL(policy || start) estimated on those samples."""
    tok = lm.tokenizer
    add_bos = tok.bos_id is not None
    expanded = [r for r in records for _ in range(k)]
    prompts = [tok.encode(policy.prompt(r), add_bos=add_bos) for r in expanded]
    gen = sample.generate_arrays(lm.params, lm.cfg, prompts, mesh=lm.mesh, max_new_tokens=MAX_NEW,
                                 temperature=1.0, seed=seed, eos_id=tok.eos_id)
    generated = [row[:n].tolist() for row, n in zip(gen.tokens, gen.lengths, strict=True)]
    responses = [policy.response(r, g, tok) for r, g in zip(expanded, generated, strict=True)]
    rewards = domain.rewards([r["prompt"] for r in expanded], responses)
    result = {"reward": float(np.mean(rewards)), "reward_sd": float(np.std(rewards))}
    if policy.response_fn is None:  # the answer is the whole generation: KL is comparable
        logp = np.sum(gen.logprobs * (np.arange(MAX_NEW)[None] < gen.lengths[:, None]), axis=1)
        start_prompts = [tok.encode(start_policy.prompt(r), add_bos=add_bos) for r in expanded]
        batch = rl.rows(start_prompts, generated, SEQ_LEN + MAX_NEW)
        start_logp = forward.token_logps(start.params, start.cfg, start.mesh, batch).sum(axis=1)
        result["kl"] = float(np.mean(logp - start_logp))
    return result


def evaluate_run(run: Path, schema: str, start: api.LM, start_policy: registry.Objective,
                 domain: graded.Domain, records: list[dict[str, Any]],
                 seed: int) -> dict[int, dict[str, float]]:
    cfg = workdir.model_config(run)
    policy = _policy(run, start.tokenizer, schema)
    out = {}
    for step in workdir.committed_steps(run):
        params = workdir.restore_params(run, cfg, start.mesh, step=step)
        lm = api.LM(cfg, params, start.mesh, start.tokenizer, prompt_template=policy.prompt_template)
        out[step] = evaluate(lm, policy, start, start_policy, domain, records, seed)
    return out


def best_of_n(domain: graded.Domain, start: api.LM, prompts: list[str],
              seed: int) -> dict[int, dict[str, float]]:
    """Best of the first n of 16 start samples by the true reward; KL = log n - (n - 1) / n (the
    analytic value for best-of-n, Stiennon et al. 2020 / Gao et al. 2022)."""
    drawn = samples(start, prompts, max(BEST_OF), seed=seed + 7)
    rewards = np.array([domain.rewards([p] * len(s), s) for p, s in zip(prompts, drawn, strict=True)])
    return {n: {"reward": float(rewards[:, :n].max(axis=1).mean()), "kl": math.log(n) - (n - 1) / n}
            for n in BEST_OF}


# --------------------------------------------------------------------------- one domain, one seed


def run_seed(domain: graded.Domain, seed: int, rows: list[str], args: argparse.Namespace, start_run: Path,
             start: api.LM, start_policy: registry.Objective) -> dict[str, Any]:
    root = Path(args.workdir) / domain.name / f"seed{seed}"
    data = feedback_data(domain, start, args.pairs, seed, root)
    prompts, drafts = _eval_prompts_and_drafts(domain, start, args.eval_prompts)
    eval_records = [{"prompt": p, "chosen": "-", "rejected": d} for p, d in zip(prompts, drafts, strict=True)]
    out: dict[str, Any] = {"data": {k: v for k, v in data.items() if k != "files"}, "rows": {}}
    out["rows"]["start"] = {0: evaluate(start, start_policy, start, start_policy, domain, eval_records, seed)}
    for row in rows:
        t0 = time.time()
        if row == "best_of_n":
            result = best_of_n(domain, start, [r["prompt"] for r in eval_records], seed)
        elif row in SUPERVISED:
            objective, kind, overrides = SUPERVISED[row]
            schema = "preference" if kind == "pairs" else "group"
            config = base_config(objective, seed, args.steps, data["files"][kind], schema)
            if objective == "dpo":
                config.optimizer.peak_lr = args.dpo_lr
            config.init_from = str(start_run)
            _override(config, overrides)
            run = _train(config, root / row)
            result = evaluate_run(run, schema, start, start_policy, domain, eval_records, seed)
        else:
            run = _rl(row, domain, seed, args, start_run, data["files"]["pairs"], root)
            result = evaluate_run(run, "preference", start, start_policy, domain, eval_records, seed)
        out["rows"][row] = result
        last = result[max(result)]
        print(f"[{domain.name} seed {seed}] {row}: reward {last['reward']:.3f} "
              f"kl {last.get('kl', float('nan')):.2f} ({time.time() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    return out


def _eval_prompts_and_drafts(domain: graded.Domain, start: api.LM, n: int) -> tuple[list[str], list[str]]:
    """The held-out prompts (fixed across seeds), each with one start-model draft for edit chains."""
    prompts = domain.prompts("eval", n, seed=20_001)
    return prompts, [s[0] for s in samples(start, prompts, 1, seed=20_002)]


def _rl(row: str, domain: graded.Domain, seed: int, args: argparse.Namespace, start_run: Path,
        pairs: Path, root: Path) -> Path:
    config = base_config("sft", seed, args.rl_steps, pairs, "preference")
    config.objective = registry.default_config("rl")
    config.objective.kl_coef = args.kl_coef
    config.batch_size = 32
    config.optimizer.peak_lr = args.rl_lr
    config.init_from = str(start_run)
    if row == "rl_true":
        config.objective.reward_fn = f"jaxalign.data.graded:{domain.name}_reward"
    else:  # a Bradley-Terry reward model on the noisy labels, from the start model
        rm = base_config("reward", seed, args.steps, pairs, "preference")
        rm.init_from = str(start_run)
        config.objective.reward_model = str(_train(rm, root / "reward_model"))
    return _train(config, root / row)


# --------------------------------------------------------------------------- tables and plots


def _ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over seeds (0 with one seed)."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float(v.mean()), 0.0
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(v), 1.96)
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(len(v)))


def _final(result: dict[int, dict[str, float]]) -> dict[str, float]:
    return result[max(result)]


def table(results: dict[str, dict[int, Any]], domain: str, seeds: list[int]) -> list[str]:
    runs = [results[domain][s] for s in seeds]
    rows = ["start", *[r for r in ROWS if r in runs[0]["rows"]]]
    lines = [f"### {domain}", "",
             "| Method | True reward (95% CI) | KL to start (nats) | vs SFT on chosen |", "|---|---|---|---|"]
    sft = [_final(r["rows"]["sft_chosen"])["reward"] for r in runs] if "sft_chosen" in rows else None
    for row in rows:
        finals = [r["rows"][row][max(BEST_OF)] if row == "best_of_n" else _final(r["rows"][row])
                  for r in runs]
        mean, half = _ci([f["reward"] for f in finals])
        kl = [f["kl"] for f in finals if "kl" in f]
        kl_text = f"{np.mean(kl):.2f}" if kl else "n/a"
        diff = ""
        if sft and row != "sft_chosen":
            d_mean, d_half = _ci([f["reward"] - s for f, s in zip(finals, sft, strict=True)])
            diff = f"{d_mean:+.3f} +- {d_half:.3f}"
        lines.append(f"| {LABELS[row]} | {mean:.3f} +- {half:.3f} | {kl_text} | {diff} |")
    return lines + [""]


def data_lines(results: dict[str, Any], domain: str, seeds: list[int]) -> list[str]:
    runs = [results[domain][s]["data"] for s in seeds]
    d = [r["disagreement"] for r in runs]
    card = runs[0]["card"]
    return [
        f"Feedback data ({domain}, per seed): {runs[0]['n']} pairs of two start-model samples. The annotator "
        f"(flip rate {card['flip_rate']}, temperature calibrated per seed: "
        f"{', '.join(format(r['card']['temperature'], '.3f') for r in runs)}) disagrees with the true "
        f"order on {np.mean([x['close_rate'] for x in d]):.1%} of the close pairs (|r_a - r_b| <= 0.1, "
        f"{np.mean([x['n_close'] for x in d]):.0f} per seed) and {np.mean([x['rate'] for x in d]):.1%} of "
        f"all ordered pairs (measured). Mean true reward of the samples "
        f"{np.mean([r['pair_mean'] for r in runs]):.3f}, "
        f"of the chosen {np.mean([r['chosen_mean'] for r in runs]):.3f}, of the rejected "
        f"{np.mean([r['rejected_mean'] for r in runs]):.3f}, of the better of each pair "
        f"{np.mean([r['best_of_pair_mean'] for r in runs]):.3f}.", ""]


def plots(results: dict[str, Any], domains: list[str], seeds: list[int], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for domain in domains:
        runs = [results[domain][s] for s in seeds]
        fig, ax = plt.subplots(figsize=(10, 5.5))
        for row in runs[0]["rows"]:
            steps = sorted(runs[0]["rows"][row])
            pts = [(np.mean([r["rows"][row][s].get("kl", np.nan) for r in runs]),
                    np.mean([r["rows"][row][s]["reward"] for r in runs])) for s in steps]
            xs, ys = zip(*pts, strict=True)
            if all(np.isnan(xs)):
                continue
            ax.plot(xs, ys, label=LABELS.get(row, row), **_style(row))
        ax.set_xlabel("KL(policy || start), nats (estimated on samples)")
        ax.set_ylabel("true reward (mean over seeds)")
        ax.set_title(f"{domain}: true reward vs KL (points: 1/3, 2/3, all steps; best-of-n: n = 1..16)")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)
        files.append(_save(fig, out_dir / f"testbed_frontier_{domain}.png"))

        fig, ax = plt.subplots(figsize=(10, 5))
        start = np.mean([r["rows"]["start"][0]["reward"] for r in runs])
        for row in runs[0]["rows"]:
            if row in ("start", "best_of_n"):
                continue
            steps = sorted(runs[0]["rows"][row])
            means = [np.mean([r["rows"][row][s]["reward"] for r in runs]) for s in steps]
            ax.plot([0, *steps], [start, *means], label=LABELS[row], **_style(row))
        ax.set_xlabel("training step")
        ax.set_ylabel("true reward of samples (mean over seeds)")
        ax.set_title(f"{domain}: learning curves (step 0: the start model)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)
        files.append(_save(fig, out_dir / f"testbed_curves_{domain}.png"))

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(runs[0]["data"]["rewards"], bins=20, range=(0, 1), color="tab:blue")
        ax.set_xlabel("true reward")
        ax.set_ylabel("start-model samples")
        ax.set_title(f"{domain}: the start model's samples (seed {seeds[0]}, train prompts)")
        files.append(_save(fig, out_dir / f"testbed_start_{domain}.png"))
    return files


def _style(row: str) -> dict[str, Any]:
    """One colour and marker per row (the default cycle repeats after 10), dashed for the oracles."""
    import matplotlib.pyplot as plt

    i = ["start", *ROWS].index(row)
    return {"color": plt.get_cmap("tab20")(i % 20), "marker": "osD^v<>px*hH+X"[i % 14], "ms": 5,
            "linestyle": "--" if row in ORACLES else "-"}


def _save(fig: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="detox,harmless", help="comma-separated: detox, harmless")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (>= 3 for intervals)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows; known: {', '.join(ROWS)}")
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps of every supervised row")
    parser.add_argument("--rl-steps", type=int, default=40, help="RL steps (32 rollouts each)")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="start model: pretraining steps")
    parser.add_argument("--sft-steps", type=int, default=150, help="start model: SFT steps")
    parser.add_argument("--pairs", type=int, default=600, help="labelled pairs per seed")
    parser.add_argument("--eval-prompts", type=int, default=48, help="held-out prompts (2 samples each)")
    parser.add_argument("--dpo-lr", type=float, default=2e-4, help="DPO's peak learning rate")
    parser.add_argument("--rl-lr", type=float, default=5e-4, help="RL's peak learning rate")
    parser.add_argument("--kl-coef", type=float, default=0.02, help="RL's KL penalty coefficient")
    parser.add_argument("--jobs", type=int, default=2,
                        help="worker processes (one per domain and seed at a time; much of a run is "
                             "single-threaded Python, so 2 on 2 cores finish sooner than 1)")
    parser.add_argument("--workdir", default="workdirs/testbed", help="where runs and data go (reused)")
    parser.add_argument("--out", default=str(HERE / "results" / "testbed.md"), help="the markdown table")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the markdown and PNGs from the workers' saved results (no training)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # DOMAIN:start or DOMAIN:SEED
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    domains = [d for d in args.domains.split(",") if d]
    rows = [r for r in args.rows.split(",") if r]
    for name, known, what in ((domains, graded.DOMAINS, "domains"), (rows, ROWS, "rows")):
        unknown = [x for x in name if x not in known]
        if unknown:
            parser.error(f"unknown {what} {unknown}; known: {', '.join(known)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.worker:
        return worker(args, rows)
    timing = Path(args.workdir) / "minutes.json"  # the whole run's wall time, for --report-only
    if not args.report_only:
        t0 = time.time()
        passed = [a for a in argv if not a.startswith("--jobs")]
        _parallel([[*passed, "--worker", f"{d}:start"] for d in domains], args.jobs)
        _parallel([[*passed, "--worker", f"{d}:{s}"] for d in domains for s in seeds], args.jobs)
        timing.write_text(json.dumps({"minutes": (time.time() - t0) / 60}))
    results = {d: {s: _load_result(_result_path(args, d, s)) for s in seeds} for d in domains}
    minutes = json.loads(timing.read_text())["minutes"] if timing.exists() else float("nan")
    out = Path(args.out)
    pngs = plots(results, domains, seeds, out.parent)
    out.write_text(report(results, domains, seeds, args, minutes, pngs))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {out} ({minutes:.1f} minutes)")
    return 0


def worker(args: argparse.Namespace, rows: list[str]) -> int:
    """One domain's start model (DOMAIN:start), or one domain and seed (DOMAIN:SEED)."""
    import jax

    # Rows share shapes: compiled steps are reused from disk instead of compiled again per run.
    jax.config.update("jax_compilation_cache_dir", str(Path(args.workdir).absolute() / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    name, _, what = args.worker.partition(":")
    domain = graded.DOMAINS[name]
    start_run = start_model(domain, Path(args.workdir) / name, args.pretrain_steps, args.sft_steps)
    if what == "start":
        return 0
    start = api.load(start_run)
    start_policy = _policy(start_run, start.tokenizer, "preference")
    result = run_seed(domain, int(what), rows, args, start_run, start, start_policy)
    path = _result_path(args, name, int(what))
    path.write_text(json.dumps(result, indent=1, default=str))
    return 0


def _result_path(args: argparse.Namespace, domain: str, seed: int) -> Path:
    return Path(args.workdir) / domain / f"seed{seed}" / "result.json"


def _load_result(path: Path) -> dict[str, Any]:
    """A worker's result.json, with the per-step keys back to ints."""
    result = json.loads(path.read_text())
    result["rows"] = {row: {int(k): v for k, v in steps.items()} for row, steps in result["rows"].items()}
    return result


def _parallel(commands: list[list[str]], jobs: int) -> None:
    """Runs `python testbed.py ARGS` for each ARGS, `jobs` at a time; any failure stops the run."""
    import subprocess

    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < max(jobs, 1):
            cmd = pending.pop(0)
            running.append((cmd, subprocess.Popen([sys.executable, __file__, *cmd])))
        time.sleep(1)
        for item in list(running):
            cmd, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode:
                    for _, other in running:
                        other.kill()
                    raise SystemExit(f"testbed worker {cmd[-1]} failed with exit code {proc.returncode}")


def report(results: dict[str, Any], domains: list[str], seeds: list[int], args: argparse.Namespace,
           minutes: float, pngs: list[str]) -> str:
    command = "python experiments/testbed.py" + (
        "" if args.domains == "detox,harmless" else f" --domains {args.domains}")
    lines = [
        "# The test bed: noisy comparisons, a graded true reward, every method",
        "",
        f"Written by `{command}` ({len(seeds)} seeds {seeds}; start model: {args.pretrain_steps} "
        f"pretraining + "
        f"{args.sft_steps} SFT steps; {args.steps} steps per supervised row, {args.rl_steps} RL steps of 32 "
        f"rollouts; {minutes:.1f} minutes on this machine's 2 CPU cores). How it is built: the docstring of "
        "experiments/testbed.py and docs/methods.md#the-test-bed.",
        "",
        f"True reward: mean over {args.eval_prompts} held-out prompts x 2 samples (temperature 1) of the "
        "graded ground truth, "
        "after the row's last step; mean over seeds +- the half-width of the 95% t-interval. KL: "
        "KL(policy || start) estimated on the same samples (n/a for edit chains, whose generation is a chain "
        "of edits prompted with a draft). vs SFT on chosen: the per-seed difference, same interval.",
        "",
    ]
    for domain in domains:
        lines += data_lines(results, domain, seeds) + table(results, domain, seeds)
        lines += [f"![{domain} frontier](testbed_frontier_{domain}.png) "
                  f"![{domain} curves](testbed_curves_{domain}.png) "
                  f"![{domain} start](testbed_start_{domain}.png)", ""]
    return "\n".join(lines + ["## Reading", "", READING]) + "\n"


# What the default run measured (experiments/results/testbed.json), written after it.
READING = """\
**The test bed is fit.** On both domains the two oracles clearly beat SFT on the annotator's chosen
samples: RL on the true reward by +0.23 (detox, +- 0.06; harmless +- 0.09) and best-of-16 by +0.26 and
+0.35. There is room above imitation, and the labels are as noisy as intended: 21-27% of close pairs and
11-12% of all pairs disagree with the true order (measured). Imitating the chosen samples gains +0.06
(detox) and +0.16 (harmless) over the start model, about what the chosen samples themselves are worth
(0.546 vs 0.456 mean reward; harmless 0.618 vs 0.461).

**DPO** (the contrast carries what imitation copies away): holds on detox, where both betas beat SFT
on chosen, +0.11 +- 0.09 (beta 0.1) and +0.10 +- 0.06 (beta 0.5), at 2-11 nats of KL. On harmless only
beta 0.5 is above, +0.08 +- 0.17, which is not resolved. At beta 0.1 DPO ran away from the start model
(25-128 nats; one seed fell to 0.40), the known instability of small beta with no early stopping.

**Chain of Hindsight** (CoH beats SFT on the same feedback): not reproduced at this budget. CoH and
CoH without chains stay at the start model (0.43-0.46), below SFT on chosen by 0.10 (detox) and 0.16
(harmless). Sixty steps are inside the plateau that `coh_marker_probe.md` measured: the marker is used
only after 160-280 steps on harmless. A proper test needs each method trained to convergence, not a
shared step count, or a pretrained model that already reads feedback sentences.

**Second Thoughts** (edit chains): not tested here. In 60 steps from the start model the edit-chain
model does not learn the chain language. It emits malformed chains whose aligned text is empty
(reward 0.02-0.03); `replicate_edit_chain.py` trains 300 steps for that. For the same reason "edit
chains + RL" was not run: RL on a policy whose every answer scores 0 has zero advantages.

**Stable Alignment** (the rating-weighted contrast beats SFT): the same sign on detox, +0.055 +- 0.052
at 1.7 nats. On harmless it ties (+0.013 +- 0.10). Its groups here are the two rated samples of a
pair; the paper's SANDBOX groups are larger, and a larger group gives the contrast more to work with.

**Mistake Analysis** (learning from analyses of bad answers beats SFT): not reproduced. It ties SFT on
chosen on detox (-0.002 +- 0.05) and is below on harmless (-0.07 +- 0.08, not resolved). The analyses
are the test bed's feedback sentences rather than the model's own. At 1M parameters, training on
analysing a bad answer does not carry over to generating good ones, as in
`mistake_analysis_synthetic.md`.

**RLHF** (reward model + RL): the widest interval of all. On each domain one seed over-optimised the
reward model, which is trained on 600 noisy pairs: 19-30 nats of KL, and the true reward fell to
0.39-0.40 (detox seed 1, harmless seed 0). The others reached 0.58-0.70. RL on the true reward, with
the same settings, stayed at 1-8 nats. This is reward-model over-optimisation (Gao et al., 2022) in
miniature.

**Unlikelihood** collapses (83-109 nats; reward 0.26-0.30, below the start model). Two samples of the
same model share most of their tokens, and token-level unlikelihood on the rejected one pushes those
shared tokens down too. The CoH paper's Table 4 also puts unlikelihood below the pretrained model.
**SFT on both** imitates the mix and stays at the start model.

What a proper test would need: budgets per method up to convergence (CoH, edit chains), a model of
100M+ parameters pretrained on real text, more held-out prompts and seeds (48 prompts x 2 samples give
a per-seed standard error of about 0.03), and comparisons at matched KL (read the frontier PNGs, not
only the last step).
"""


if __name__ == "__main__":
    sys.exit(main())
