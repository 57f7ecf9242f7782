"""`jaxalign eval`: a trained model on its config's held-out data, as one JSON report.

    report = evaluate(config, "workdirs/coh_synthetic")     # also a model dir or a HF dir
    json.dumps(report)

What the report holds (every number over the same `num_eval` held-out preference records):

    preference   CoH's "Dia" column: share of pairs whose chosen response is more likely than the
                 rejected one, both scored after the prompt as the objective formats it (for CoH:
                 with the positive marker), summed log-probabilities ("sum") and per token ("mean").
    feedback     CoH only: does the model attach the right feedback to a response? A response is
                 judged good when log p(y | positive marker) > log p(y | negative marker) (by Bayes,
                 the marker the response makes more likely); accuracy over chosen (should be good)
                 and rejected (should be bad) responses.
    rouge        CoH's "Sum" column: ROUGE-1/2/L of generations (greedy by default), prompted as in training,
                 against the chosen response; "avg" is the paper's average.
    task         synthetic tasks only: the ground-truth scorer's mean score (and its extras) of
                 the same generations.
    samples      the first few prompts, generations and scores, to read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jaxalign import api
from jaxalign.data import pipeline, sources, synthetic
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.eval.preference import preference_accuracy
from jaxalign.eval.rouge import rouge
from jaxalign.eval.scoring import sequence_logprobs
from jaxalign.objectives import registry

NUM_SAMPLES = 8


def evaluate(
    config: ml_collections.ConfigDict, checkpoint: str | Path, *, mesh: str = "dp:1,fsdp:-1,tp:1",
    num_eval: int | None = None, max_new_tokens: int | None = None, data_dir: str | Path | None = None,
    temperature: float = 0.0, seed: int = 0,
) -> dict[str, Any]:
    """The report (module docstring) of `checkpoint` on `config`'s held-out records.

    `data_dir` holds built tfds datasets (default: the train workdir, or the model directory's parent).
    Generations are greedy unless `temperature` > 0 (sampled, reproducible by `seed`).
    """
    checkpoint = Path(checkpoint)
    lm = api.load(checkpoint, mesh)
    if lm.tokenizer is None:
        raise ValueError(f"{checkpoint}: no tokenizer saved with the model; evaluation needs one")
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    if num_eval is not None:
        data_cfg.num_eval = num_eval
    data_cfg.num_train = min(data_cfg.num_train or 1, 1)  # only the held-out records are used
    if data_dir is None:
        data_dir = checkpoint if (checkpoint / "checkpoints").is_dir() else checkpoint.parent
    # The model's own tokenizer (the ids it was trained on); nothing is written into the checkpoint.
    data = sources.build(data_cfg, Path(data_dir), config.seed, tokenizer=lm.tokenizer)
    records = [r for r in data.eval if all(k in r for k in ("prompt", "chosen", "rejected"))]
    if not records:
        raise ValueError("config.data has no held-out preference records to evaluate on")
    objective = config.objective
    template = registry.prompt_template(objective)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "objective": objective.get("name", "sft"),
        "num_eval": len(records), "eval_split": data.eval_split, "prompt_template": template,
    }
    if data.eval_split == "train":
        # data.jsonl has no held-out split: say so in the report rather than pass training data off.
        report["warning"] = "evaluated on the first records of the training file (no held-out split)"
    report["preference"] = _preference(lm, records, template)
    if objective.get("name") == "coh":
        fmt = registry.coh_format({**registry.DEFAULTS["coh"], **objective})
        report["feedback"] = _feedback(lm, records, fmt)
    prompts = [r["prompt"] for r in records]
    responses = lm_generate(lm, prompts, template, max_new_tokens or config.get("max_new_tokens", 64),
                            temperature=temperature, seed=seed)
    report["temperature"] = temperature
    report["rouge"] = rouge(responses, [r["chosen"] for r in records])
    samples = [{"prompt": p, "response": y} for p, y in zip(prompts, responses, strict=True)]
    if data.task is not None:
        report["task"] = synthetic.evaluate(data.task, lambda _: responses, prompts)
        for row in samples:
            row["score"] = data.task.score(row["prompt"], row["response"])
    report["samples"] = samples[:NUM_SAMPLES]
    return report


def write(report: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)  # a reader never sees half a report
    return path


def lm_generate(lm: api.LM, prompts: Sequence[str], template: str, max_new_tokens: int,
                temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Continuations of `prompts` formatted with `template` (how the model was trained)."""
    lm = api.LM(lm.cfg, lm.params, lm.mesh, lm.tokenizer, prompt_template=template)
    outputs = lm.generate(list(prompts), max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return [text.strip() for text in outputs]


def response_example(tokenizer: Tokenizer, prompt_text: str, response: str) -> dict[str, np.ndarray]:
    """BOS + prompt (unweighted) + response + EOS (weighted), tokenized as training tokenizes them."""
    prompt = tokenizer.encode(prompt_text, add_bos=tokenizer.bos_id is not None)
    return pipeline.sft_example(prompt, tokenizer.encode(response), tokenizer.eos_id)


def _scores(lm: api.LM, examples: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    scores = sequence_logprobs(lm.params, lm.cfg, lm.mesh, examples)
    return scores.logp, scores.logp / np.maximum(scores.num_tokens, 1)


def _preference(lm: api.LM, records: list[dict[str, Any]], template: str) -> dict[str, Any]:
    tok = lm.tokenizer
    examples = [response_example(tok, template.format(prompt=r["prompt"]), r[k])
                for k in ("chosen", "rejected") for r in records]
    total, mean = _scores(lm, examples)
    n = len(records)
    return {"sum": preference_accuracy(total[:n], total[n:]), "mean": preference_accuracy(mean[:n], mean[n:])}


def _feedback(lm: api.LM, records: list[dict[str, Any]], fmt) -> dict[str, Any]:
    tok = lm.tokenizer
    leads = {positive: fmt.prompt_template(positive=positive) for positive in (True, False)}
    examples = [response_example(tok, leads[positive].format(prompt=r["prompt"]), r[k])
                for positive in (True, False) for k in ("chosen", "rejected") for r in records]
    total, _ = _scores(lm, examples)
    n = len(records)
    pos_chosen, pos_rejected, neg_chosen, neg_rejected = (total[i * n:(i + 1) * n] for i in range(4))
    good = (pos_chosen > neg_chosen).astype(float)
    bad = (neg_rejected > pos_rejected).astype(float)
    return {"accuracy": float(np.mean(np.concatenate([good, bad]))), "chosen_judged_good": float(good.mean()),
            "rejected_judged_bad": float(bad.mean()), "n": 2 * n}
