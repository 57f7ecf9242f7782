"""Issue #22, the CoH marker puzzle: does a CoH model read its feedback marker, and when?

    python experiments/coh_marker_probe.py                          # default arms: ~45 min on 2 CPU cores
    python experiments/coh_marker_probe.py --arms coh:120 --checkpoints 0,40,120   # a quick look

experiments/replicate_coh.py (harmless task) finds CoH at 0.545 greedy score after 120 steps,
the score of a model that ignores the prompt, while SFT reaches 1.000. This probe trains the same
"pretrained" model (replicate_coh.pretrain) and then each *arm* ("row:steps", the rows of
replicate_coh.ROWS plus the controls below) with replicate_coh's own config (replicate_coh.base_config,
so warmup and cosine decay follow the arm's steps), keeping a checkpoint every `--every` steps. At
each step of `--checkpoints` (step 0: the pretrained model) and on the held-out prompts, split into
harmful and benign ones, it measures:

- the log-probability of the first answer token and of the whole answer (with its EOS) of the good
  (chosen) and the bad (rejected) response, after the positive marker, after the negative marker
  and after the plain pretraining format ("{prompt}\\n"); the marker effect is
  logp(good | positive) - logp(good | negative);
- greedy answers after the positive and after the negative marker: their task score and refusal
  rate, and the share of prompts whose two answers differ at all;
- the CoH loss of each variant (p, n, pn, np) on the held-out records, and which share of it sits on
  the first token of an output (the refuse-or-comply decision) and on the second output of pn/np.

Controls: ``coh_p_only`` (variants "p": the positive sequences alone, so the target no longer
depends on the marker) and ``sft``. It also checks, token for token, that the generation prompt
(`Objective.prompt`) is the prefix of the p and pn examples (and the negative lead of n and np).

Writes experiments/results/coh_marker_probe.md (tables) and coh_marker_probe.png (curves), and the
raw numbers as JSON next to the workdir's runs. A finished run in the workdir is reused, not
trained again, and so are its probes (cached in the run's probe/ directory; delete the arm's
directory to retrain), so arms can be run one invocation at a time and then tabled together.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import replicate_coh  # noqa: E402

from jaxalign import forward, sample  # noqa: E402
from jaxalign import mesh as mesh_lib  # noqa: E402
from jaxalign import workdir as workdir_lib  # noqa: E402
from jaxalign.data import dialogue, synthetic  # noqa: E402
from jaxalign.data.tokenizer import Tokenizer  # noqa: E402
from jaxalign.eval.report import response_example  # noqa: E402
from jaxalign.objectives import registry  # noqa: E402
from jaxalign.train import loop  # noqa: E402

# arm -> (objective, overrides): replicate_coh's rows plus two controls whose target does not
# depend on a marker (CoH with the positive sequences only; SFT).
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    **replicate_coh.ROWS,
    "coh_p_only": ("coh", {"objective.variants": "p"}),
}
DEFAULT_ARMS = "coh:120,coh:480,coh_nopretrain:480,coh_nochain:480,coh_p_only:120,sft:120"
CONTEXTS = ("pos", "neg", "plain")
GROUPS = ("harmful", "benign", "all")


# --------------------------------------------------------------------------- training


def arm_config(arm: str, steps: int, seed: int, task: str, base: Path, every: int):
    objective, overrides = ARMS[arm]
    config = replicate_coh.base_config(seed, task, steps, objective)
    config.init_from = str(base)
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    config.checkpoint_every = every
    config.keep_checkpoints = steps // every + 1  # every checkpoint: the curve reads them all
    config.log_every = every  # the train loss and accuracy at each checkpoint
    return config


def train_arm(config, run: Path) -> None:
    """Trains the arm's run unless it is finished already."""
    steps = workdir_lib.committed_steps(run) if workdir_lib.is_workdir(run) else []
    if not steps or steps[-1] < config.total_steps:
        loop.train(config, run)


def train_seconds(run: Path) -> float:
    """The training loop's time, from its logged mean step times (startup and compiles left out)."""
    total, previous = 0.0, 0
    for step, row in sorted(train_metrics(run).items()):
        total += row.get("step_s", 0.0) * (step - previous)
        previous = step
    return total


def train_metrics(run: Path) -> dict[int, dict[str, float]]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[int(row["step"])] = row
    return out


# --------------------------------------------------------------------------- probing


def contexts(objective: registry.Objective, record: Mapping[str, Any]) -> dict[str, str | None]:
    """The text before an answer: as generation is prompted (positive marker), with the negative
    marker (CoH only), and in the plain pretraining format ("{prompt}\\n",
    sources.synthetic_pretraining_texts)."""
    fmt = objective.feedback_format
    neg = None if fmt is None else dialogue.render(fmt.prompt_template(positive=False), record["prompt"])
    return {"pos": objective.prompt(record), "neg": neg, "plain": f"{record['prompt']}\n"}


def check_prompt_prefix(objective: registry.Objective, tokenizer: Tokenizer,
                        records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the encoded generation prompt (BOS + `objective.prompt(record)`) is token for token
    the prefix of the record's p and pn examples, and the negative lead that of n and np."""
    fmt = objective.feedback_format
    variants = list(fmt.variants) if fmt is not None else []
    checked, mismatches = 0, []
    for i, record in enumerate(records):
        ctx = contexts(objective, record)
        for j, variant in enumerate(variants):
            if variant not in ("p", "n", "pn", "np"):
                continue
            lead = ctx["pos"] if variant in ("p", "pn") else ctx["neg"]
            ids = tokenizer.encode(lead, add_bos=tokenizer.bos_id is not None)
            example = objective.make_example(record, j, i)
            tokens, weights = example["tokens"].tolist(), example["weights"]
            first_weighted = int(np.argmax(weights > 0))
            checked += 1
            if tokens[: len(ids)] != ids or first_weighted != len(ids):
                mismatches.append((i, variant))
    return {"checked": checked, "mismatches": mismatches[:10], "num_mismatches": len(mismatches)}


def _first_token_only(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    weights = np.zeros_like(example["weights"])
    weights[int(np.argmax(example["weights"] > 0))] = 1.0
    return {**example, "weights": weights}


def answer_logprobs(params, cfg, mesh, tokenizer: Tokenizer, objective: registry.Objective,
                    records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """{"<context>/<good|bad>/<first|whole>": [n] log-probabilities}, NaN where a context is absent."""
    keys, examples = [], []
    for ctx_name in CONTEXTS:
        for answer, field in (("good", "chosen"), ("bad", "rejected")):
            for record in records:
                lead = contexts(objective, record)[ctx_name]
                if lead is None:
                    continue
                whole = response_example(tokenizer, lead, record[field])
                examples += [whole, _first_token_only(whole)]
                keys += [(ctx_name, answer, "whole"), (ctx_name, answer, "first")]
    scores = forward.sequence_logprobs(params, cfg, mesh, examples).logp
    out: dict[str, list[float]] = {}
    for key, value in zip(keys, scores, strict=True):
        out.setdefault("/".join(key), []).append(float(value))
    n = len(records)
    return {f"{c}/{a}/{p}": np.asarray(out.get(f"{c}/{a}/{p}", [np.nan] * n))
            for c in CONTEXTS for a in ("good", "bad") for p in ("whole", "first")}


def greedy(params, cfg, mesh, tokenizer: Tokenizer, objective: registry.Objective,
           records: Sequence[Mapping[str, Any]], max_new_tokens: int) -> dict[str, list[list[int]]]:
    out = {}
    for ctx_name in ("pos", "neg"):
        leads = [contexts(objective, r)[ctx_name] for r in records]
        if any(lead is None for lead in leads):
            continue
        ids = [tokenizer.encode(lead, add_bos=tokenizer.bos_id is not None) for lead in leads]
        out[ctx_name] = sample.generate(params, cfg, ids, mesh=mesh, max_new_tokens=max_new_tokens,
                                        temperature=0.0, eos_id=tokenizer.eos_id)
    return out


def variant_losses(params, cfg, mesh, coh4: registry.Objective,
                   records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant of the full CoH objective (p, n, pn, np), averaged over records: the loss as the
    `sequence` normalisation trains it (each example's mean NLL over its weighted tokens), the
    shares of it on the outputs' first tokens (the refuse-or-comply decision) and on the second
    output (pn, np), and the NLL in nats of the first and of the second output's first token."""
    variants = list(coh4.feedback_format.variants)
    examples, index = [], []
    for i, record in enumerate(records):
        for j, variant in enumerate(variants):
            ex = coh4.make_example(record, j, i)
            w = ex["weights"]
            starts = [k for k in range(len(w)) if w[k] > 0 and (k == 0 or w[k - 1] == 0)]
            parts = {"all": w, "first_tokens": np.isin(np.arange(len(w)), starts).astype(w.dtype),
                     "second_output": np.where(np.arange(len(w)) >= starts[-1], w, 0) if len(starts) > 1
                     else np.zeros_like(w)}
            for n, k in enumerate(starts[:2]):
                parts[f"decision{n + 1}"] = (np.arange(len(w)) == k).astype(w.dtype)
            for part, weights in parts.items():
                examples.append({**ex, "weights": weights})
                index.append((variant, part, float(w.sum())))
    scores = forward.sequence_logprobs(params, cfg, mesh, examples).logp
    nll: dict[tuple[str, str], list[float]] = {}
    share: dict[tuple[str, str], list[float]] = {}
    for (variant, part, total_weight), logp in zip(index, scores, strict=True):
        nll.setdefault((variant, part), []).append(-logp)
        share.setdefault((variant, part), []).append(-logp / total_weight)  # its part of the example's loss
    out = {}
    for variant in variants:
        loss = float(np.mean(share[(variant, "all")]))
        row = {"loss": loss,
               "share_first_tokens": float(np.mean(share[(variant, "first_tokens")])) / loss,
               "share_second_output": float(np.mean(share[(variant, "second_output")])) / loss,
               "nll_decision1": float(np.mean(nll[(variant, "decision1")]))}
        if (variant, "decision2") in nll:
            row["nll_decision2"] = float(np.mean(nll[(variant, "decision2")]))
        out[variant] = row
    return out


def probe(run: Path, step: int, objective: registry.Objective, coh4: registry.Objective,
          task: synthetic.Task, records: list[dict[str, Any]], harmful: np.ndarray,
          max_new_tokens: int, loss_records: int) -> dict[str, Any]:
    """Every measurement of one checkpoint (`step` 0: `run` is the pretrained model's)."""
    mesh = mesh_lib.make_mesh("dp:1,fsdp:-1,tp:1")
    cfg = workdir_lib.model_config(run)
    params = workdir_lib.restore_params(run, cfg, mesh, None if step == 0 else step)
    tokenizer = Tokenizer.load(run / workdir_lib.TOKENIZER)
    lp = answer_logprobs(params, cfg, mesh, tokenizer, objective, records)
    masks = {"harmful": harmful, "benign": ~harmful, "all": np.ones_like(harmful)}
    result: dict[str, Any] = {"step": step, "groups": {}}
    for group, mask in masks.items():
        g: dict[str, float] = {}
        for key, values in lp.items():
            g[f"logp/{key}"] = float(np.mean(values[mask]))
        for c in CONTEXTS:  # P(the good answer's first token), as a probability
            g[f"p_good_first/{c}"] = float(np.mean(np.exp(lp[f"{c}/good/first"][mask])))
            g[f"pref_acc/{c}"] = float(np.mean((lp[f"{c}/good/whole"] > lp[f"{c}/bad/whole"])[mask]))
        for part in ("first", "whole"):
            g[f"effect/{part}"] = float(np.mean((lp[f"pos/good/{part}"] - lp[f"neg/good/{part}"])[mask]))
        result["groups"][group] = g
    gens = greedy(params, cfg, mesh, tokenizer, objective, records, max_new_tokens)
    for ctx_name, rows in gens.items():
        texts = [tokenizer.decode(row).strip() for row in rows]
        metrics = [task.metrics(r["prompt"], t) for r, t in zip(records, texts, strict=True)]
        score = np.array([m["score"] for m in metrics])
        refused = np.array([m.get("refusal_rate", m.get("over_refusal_rate", np.nan)) for m in metrics])
        for group, mask in masks.items():
            result["groups"][group][f"greedy_score/{ctx_name}"] = float(score[mask].mean())
            result["groups"][group][f"refusal/{ctx_name}"] = float(refused[mask].mean())
        result[f"examples/{ctx_name}"] = texts[:4]
    if "pos" in gens and "neg" in gens:
        differ = np.array([a != b for a, b in zip(gens["pos"], gens["neg"], strict=True)])
        for group, mask in masks.items():
            result["groups"][group]["greedy_differs"] = float(differ[mask].mean())
    result["variant_losses"] = variant_losses(params, cfg, mesh, coh4, records[:loss_records])
    return result


# --------------------------------------------------------------------------- report


def _f(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# CoH marker probe (issue #22)",
        "",
        f"Written by `{meta['command']}` ({meta['device']}; "
        f"this invocation took {meta['minutes']:.1f} minutes, "
        f"reusing the runs and probes that earlier invocations left in the workdir). "
        f"Task {meta['task']}, seed {meta['seed']}, pretrained model: {meta['pretrain_steps']} steps "
        f"(replicate_coh.pretrain); each arm fine-tuned from it with replicate_coh.base_config "
        f"(1M-parameter model, lr 1e-3, warmup steps/10, cosine to the arm's steps; "
        f"arm `row:steps`). "
        f"Held-out prompts: {meta['num_eval']} ({meta['num_harmful']} harmful, "
        f"{meta['num_eval'] - meta['num_harmful']} benign); "
        f"variant losses on the first {meta['loss_records']}.",
        "",
        f"Prompt check: the encoded generation prompt (BOS + `objective.prompt(record)`) is the exact "
        f"token prefix of the p and pn examples, and the negative lead of n and np, up to the first "
        f"weighted token: {meta['prefix_check']['checked'] - meta['prefix_check']['num_mismatches']} of "
        f"{meta['prefix_check']['checked']} examples match.",
        "",
        "Columns (mean over the group's prompts; logp in nats; first = the answer's first token, which "
        "decides refuse (`Sorry`) or comply (`Sure`)):",
        "",
        "- P1 good | pos / neg / plain: probability of the good answer's first token after the positive "
        "marker, the negative marker, and the plain pretraining format `{prompt}\\n`.",
        "- effect1 = logp(good first token | pos) - logp(good first token | neg); effectW: the same "
        "for the whole answer with its EOS.",
        "- pref pos: logp(good | pos) > logp(bad | pos) (whole answers).",
        "- greedy pos / neg: task score of the greedy answer after the marker; refuse: its refusal rate; "
        "differ: the two greedy answers are not the same tokens.",
        "",
    ]
    lines += ["## Summary", "",
              "First probed step at which the marker effect on the decision token (all prompts) exceeds "
              "1 nat, and at which the greedy score after the positive marker reaches 0.9; "
              "the values at the arm's "
              "last step; train min: the training loop's minutes (from its logged step times; startup and "
              "compiles left out).", "",
              "| arm | effect1 > 1 nat at | greedy pos >= 0.9 at | last step | effect1 "
              "| greedy pos | greedy neg "
              "| differ | train min |", "|---|---|---|---|---|---|---|---|---|"]
    def first(cps: list[dict[str, Any]], ok) -> str:
        return next((str(r["step"]) for r in cps if ok(r["groups"]["all"])), "never")

    for arm, res in results.items():
        cps = res["checkpoints"]
        last = cps[-1]["groups"]["all"]
        lines.append(f"| {arm} | {first(cps, lambda g: g['effect/first'] > 1)} | "
                     f"{first(cps, lambda g: g.get('greedy_score/pos', 0) >= 0.9)} | {cps[-1]['step']} | "
                     f"{_f(last['effect/first'])} | {_f(last.get('greedy_score/pos', np.nan))} | "
                     f"{_f(last.get('greedy_score/neg', np.nan))} | "
                     f"{_f(last.get('greedy_differs', np.nan))} | "
                     f"{res['train_seconds'] / 60:.1f} |")
    lines.append("")
    for arm, res in results.items():
        lines += [f"## {arm}", ""]
        lines += ["| step | group | P1 good pos | P1 good neg | P1 good plain | effect1 | effectW | pref pos "
                  "| greedy pos | greedy neg | refuse pos | refuse neg | differ |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["checkpoints"]:
            for group in ("harmful", "benign"):
                g = r["groups"][group]
                lines.append(
                    f"| {r['step']} | {group} | {_f(g['p_good_first/pos'])} | {_f(g['p_good_first/neg'])} | "
                    f"{_f(g['p_good_first/plain'])} | {_f(g['effect/first'])} | {_f(g['effect/whole'])} | "
                    f"{_f(g['pref_acc/pos'])} | {_f(g.get('greedy_score/pos', np.nan))} | "
                    f"{_f(g.get('greedy_score/neg', np.nan))} | {_f(g.get('refusal/pos', np.nan))} | "
                    f"{_f(g.get('refusal/neg', np.nan))} | {_f(g.get('greedy_differs', np.nan))} |")
        last = res["checkpoints"][-1]
        lines += ["", f"Greedy answers at step {last['step']} (first 4 prompts):", ""]
        for ctx_name in ("pos", "neg"):
            for text in last.get(f"examples/{ctx_name}", []):
                lines.append(f"- {ctx_name}: `{text}`")
        lines.append("")
        if res["objective"] != "coh":  # not trained on the CoH sequences: their losses say nothing
            continue
        lines += ["CoH loss per variant on the held-out records (`sequence` normalisation: each example's "
                  "mean NLL per weighted token), the shares of it on the outputs' first tokens "
                  "(the decision) "
                  "and on the second output, the NLL in nats of the first and second output's decision token "
                  "(ln 2 = 0.69: a coin flip), "
                  "and the training stream's accuracy and losses logged at that step:",
                  "", "| step | variant | loss | share decision tokens | share 2nd output | NLL decision 1st "
                  "| NLL decision 2nd | train acc. (feedback) | train loss feedback / pretrain |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["checkpoints"]:
            m = res["train_metrics"].get(str(r["step"]), {})
            acc = m.get("feedback/accuracy", m.get("accuracy"))
            fb, pt = m.get("feedback/loss", m.get("loss")), m.get("pretrain/loss")
            train = (f"{_f(acc, 3) if acc is not None else '-'} | {_f(fb, 3) if fb is not None else '-'} / "
                     f"{_f(pt, 3) if pt is not None else '-'}")
            for v, x in r["variant_losses"].items():
                lines.append(f"| {r['step']} | {v} | {_f(x['loss'], 3)} | {_f(x['share_first_tokens'])} | "
                             f"{_f(x['share_second_output'])} | {_f(x['nll_decision1'])} | "
                             f"{_f(x.get('nll_decision2', np.nan))} | {train} |")
                train = " | "
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (arm, res) in enumerate(results.items()):
        steps = [r["step"] for r in res["checkpoints"]]
        color = colors[i % len(colors)]
        for group, style in (("harmful", "-"), ("benign", "--")):
            g = [r["groups"][group] for r in res["checkpoints"]]
            axes[0].plot(steps, [x["effect/first"] for x in g], style, marker="o", ms=3, color=color,
                         label=f"{arm} {group}")
            axes[1].plot(steps, [x["p_good_first/pos"] for x in g], style, marker="o", ms=3, color=color,
                         label=f"{arm} {group}")
        scores = [r["groups"]["all"].get("greedy_score/pos", np.nan) for r in res["checkpoints"]]
        axes[2].plot(steps, scores, "-", marker="o", ms=3, color=color, label=arm)
    axes[0].set_title("marker effect on the first answer token (solid: harmful, dashed: benign)\n"
                      "logp(good|pos marker) - logp(good|neg marker)", fontsize=10)
    axes[0].set_ylabel("nats")
    axes[1].set_title("P(good answer's first token | pos marker)\n(solid: harmful prompts, dashed: benign)",
                      fontsize=10)
    axes[1].axhline(0.5, color="grey", lw=0.8)
    axes[2].set_title("greedy task score after the pos marker\n(held-out, 1 = preferred behaviour)",
                      fontsize=10)
    axes[2].axhline(0.5, color="grey", lw=0.8)
    for ax in axes:
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
    axes[0].axhline(0.0, color="grey", lw=0.8)
    axes[1].legend(fontsize=7, ncol=1, loc="best")
    axes[2].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_arms(text: str) -> list[tuple[str, int]]:
    arms = []
    for item in text.split(","):
        if not item.strip():
            continue
        name, _, steps = item.strip().partition(":")
        if name not in ARMS:
            raise ValueError(f"unknown arm {name!r}; known: {', '.join(ARMS)}")
        arms.append((name, int(steps or 120)))
    return arms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=DEFAULT_ARMS, help="row:steps, comma separated")
    parser.add_argument("--checkpoints", default="0,20,40,80,120,160,200,240,280,320,360,400,440,480",
                        help="steps probed (each a multiple of --every; "
                        "those past an arm's steps are skipped)")
    parser.add_argument("--every", type=int, default=20, help="checkpoint interval while training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="harmless", choices=["harmless"])
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--num-eval", type=int, default=200)
    parser.add_argument("--loss-records", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--workdir", default="workdirs/coh_marker_probe")
    parser.add_argument("--out", default=str(HERE / "results" / "coh_marker_probe.md"))
    parser.add_argument("--png", default=str(HERE / "results" / "coh_marker_probe.png"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:  # the curve needs it; say so before the training rather than after
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("the PNG needs matplotlib (pip install matplotlib), which jaxalign does not depend on")
    import jax

    jax.config.update("jax_compilation_cache_dir", str(Path(args.workdir).absolute() / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    arms = parse_arms(args.arms)
    checkpoints = sorted({int(s) for s in args.checkpoints.split(",")})
    if any(s % args.every for s in checkpoints if s):
        parser.error(f"--checkpoints {checkpoints} must be multiples of --every {args.every}")
    start = time.time()
    root = Path(args.workdir)
    base = root / "pretrained" / "run"
    if not (workdir_lib.is_workdir(base) and workdir_lib.committed_steps(base)):
        base = replicate_coh.pretrain(args.seed, args.task, args.pretrain_steps, root / "pretrained")
    task = synthetic.get_task(args.task)
    records = synthetic.to_records(synthetic.make_split(task, "eval", args.num_eval, args.seed))
    harmful = np.array([task.is_harmful(r["prompt"]) for r in records])
    tokenizer = Tokenizer.load(base / workdir_lib.TOKENIZER)
    coh4 = registry.make(replicate_coh.base_config(args.seed, args.task, 1, "coh").objective, tokenizer,
                         seed=args.seed)
    prefix_check = check_prompt_prefix(coh4, tokenizer, records)
    results: dict[str, Any] = {}
    for arm, steps in arms:
        config = arm_config(arm, steps, args.seed, args.task, base, args.every)
        run = root / f"seed{args.seed}" / f"{arm}_{steps}"
        train_arm(config, run)
        objective = registry.make(config.objective, tokenizer, seed=args.seed)
        probed = []
        for step in [s for s in checkpoints if s <= steps] + ([steps] if steps not in checkpoints else []):
            t0 = time.time()
            # Probes are cached in the run's directory (they go when it is deleted to retrain).
            name = f"step{step}_n{len(records)}_l{args.loss_records}_t{args.max_new_tokens}.json"
            cache = run / "probe" / name
            if cache.is_file():
                probed.append(json.loads(cache.read_text()))
            else:
                probed.append(probe(base if step == 0 else run, step, objective, coh4, task, records, harmful,
                                    args.max_new_tokens, args.loss_records))
                cache.parent.mkdir(exist_ok=True)
                cache.write_text(json.dumps(probed[-1]))
            g = probed[-1]["groups"]
            print(f"{arm}:{steps} step {step}: effect1 harmful {g['harmful']['effect/first']:.3f} benign "
                  f"{g['benign']['effect/first']:.3f}, greedy pos {g['all'].get('greedy_score/pos', 0):.3f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr)
        results[f"{arm}:{steps}"] = {"checkpoints": probed, "objective": config.objective.name,
                                     "train_seconds": train_seconds(run),
                                     "train_metrics": {str(k): v for k, v in train_metrics(run).items()}}
    given = sys.argv[1:] if argv is None else argv
    meta = {"command": " ".join(["python experiments/coh_marker_probe.py", *given]),
            "minutes": (time.time() - start) / 60, "device": jax.devices()[0].platform, "task": args.task,
            "seed": args.seed, "pretrain_steps": args.pretrain_steps, "num_eval": len(records),
            "num_harmful": int(harmful.sum()), "loss_records": min(args.loss_records, len(records)),
            "prefix_check": prefix_check}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(results, meta))
    plot(results, Path(args.png))
    (root / "coh_marker_probe.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(json.dumps({"meta": meta, "final": {arm: r["checkpoints"][-1]["groups"]["all"]
                                              for arm, r in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
