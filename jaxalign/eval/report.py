"""`jaxalign eval`: a trained model on its config's held-out data, as one JSON report.

    report = evaluate(config, "workdirs/coh_synthetic")     # also a model dir or a HF dir

Preference accuracy (or, on group records, how the model ranks rated responses), CoH's feedback
accuracy, ROUGE of generations and, on synthetic tasks, the ground-truth score, all over the same
held-out records, so that the papers' tables can be reproduced from one command. Every sequence
scored or generated is cut to the length the model was trained on (jaxalign.eval.truncation,
keeping the end of the prompt); the "truncation" section counts what was cut.

Details: docs/methods.md#the-evaluation-report-jaxalign-eval
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from jaxalign import api, forward, paths, sample, workdir
from jaxalign.data import dialogue, mistake_prompts, sources, synthetic
from jaxalign.data import examples as examples_lib
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.eval.preference import preference_accuracy
from jaxalign.eval.rouge import rouge
from jaxalign.eval.truncation import Truncation, max_len_of
from jaxalign.forward import sequence_logprobs
from jaxalign.objectives import edits, registry

NUM_SAMPLES = 8


def evaluate(
    config: ml_collections.ConfigDict, checkpoint: str | os.PathLike, *, mesh: str = "dp:1,fsdp:-1,tp:1",
    num_eval: int | None = None, max_new_tokens: int | None = None, data_dir: str | os.PathLike | None = None,
    temperature: float = 0.0, seed: int = 0, hint: str = "", safety_judge: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The report (docs/methods.md) of `checkpoint` on `config`'s held-out records.

    `hint` (guided response generation, Mistake Analysis) is added on the line after each prompt
    the model generates from; the judges and references see the prompts without it. `safety_judge`
    (a classifier directory, `jaxalign.eval.safety`) adds a "safety" section: its harmless rate of
    the generations (and, for a synthetic task, on the harmful prompts and its agreement with the
    task's ground truth).
    `data_dir` holds built tfds datasets (default: the train workdir, or the model directory's parent).
    Generations are greedy unless `temperature` > 0 (sampled, reproducible by `seed`).
    Every scored sequence and generation prompt is cut to the train seq_len (the workdir's
    config.json), else the model's context, keeping the end of the prompt: the "truncation" section
    (jaxalign.eval.truncation) counts them, and a warning says so when any was cut.
    Paths may be local or URLs (``gs://``; `jaxalign.paths`).
    """
    given, checkpoint = os.fspath(checkpoint), paths.path(checkpoint)
    lm = api.load(checkpoint, mesh)
    if lm.tokenizer is None:
        raise ValueError(f"{checkpoint}: no tokenizer saved with the model; evaluation needs one")
    truncation = Truncation(*max_len_of(checkpoint, lm.cfg), bos_id=lm.tokenizer.bos_id)
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    if num_eval is not None:
        data_cfg.num_eval = num_eval
    data_cfg.num_train = min(data_cfg.num_train or 1, 1)  # only the held-out records are used
    if data_dir is None:
        data_dir = checkpoint if workdir.is_workdir(checkpoint) else checkpoint.parent
    # The model's own tokenizer (the ids it was trained on); nothing is written into the checkpoint.
    data = sources.build(data_cfg, data_dir, config.seed, tokenizer=lm.tokenizer)
    objective = config.objective
    if registry.is_rl(objective):  # judged as the policy RL refined: prompted and read as it was
        objective = ml_collections.ConfigDict(workdir.objective(checkpoint))
    report: dict[str, Any] = {
        "checkpoint": given, "objective": config.objective.get("name", "sft"),
        "eval_split": data.eval_split,
    }
    if data.eval_split == "train":
        # data.jsonl has no held-out split: say so in the report rather than pass training data off.
        report["warning"] = "evaluated on the first records of the training file (no held-out split)"
    if lm.cfg.head == "score":
        report["reward"] = reward_accuracy(lm, data.eval, truncation)
        report["num_eval"] = report["reward"]["n"]
        return _finish(report, truncation)
    options = (max_new_tokens or config.get("max_new_tokens", 64), temperature, seed, hint)
    if hint:
        report["hint"] = hint
    safety_fn = None  # (records, responses, task) -> the safety section
    if safety_judge:  # loaded before generating, so a wrong path fails at once
        from jaxalign.eval import safety

        judge = safety.SafetyJudge.load(safety_judge, lm.mesh)
        safety_fn = lambda *args: {"judge": str(safety_judge), **_safety(judge, *args)}  # noqa: E731
    if data.schema == "group":
        return _evaluate_groups(report, lm, data, objective, config.seed, *options, safety_fn, truncation)
    records = [r for r in data.eval if all(k in r for k in ("prompt", "chosen", "rejected"))]
    if not records:
        raise ValueError("config.data has no held-out preference records to evaluate on")
    policy = registry.make(objective, lm.tokenizer, seed=config.seed)
    template = _template(policy, objective, lm.tokenizer)
    report.update(num_eval=len(records), prompt_template=template)
    if policy.prompt_fn is None:  # an edit-chain model reads a draft, not a bare prompt: no such pairs
        report["preference"] = _preference(lm, records, template, truncation)
    if policy.feedback_format is not None:
        report["feedback"] = _feedback(lm, records, policy.feedback_format, truncation)
    generated = _generate(lm, policy, records, *options, truncation=truncation)
    responses = [policy.response(r, row, lm.tokenizer) for r, row in zip(records, generated, strict=True)]
    if policy.edit_chains:
        report["edit_chain"] = edit_chain_agreement(lm.tokenizer, records, generated, data.task)
    report.update(_judged(responses, records, [r["chosen"] for r in records], data.task, temperature))
    if safety_fn is not None:
        report["safety"] = safety_fn(records, responses, data.task)
    return _finish(report, truncation)


# What each section's numbers mean, written into every report beside them ("scales").
SCALES = {
    "preference": "fraction of pairs where the chosen response is more likely (sum: total log-prob, "
                  "mean: per token), 0-1",
    "feedback": "fraction of responses the positive/negative feedback markers judge right, 0-1",
    "rouge": "ROUGE F-measure x 100 against the references (the chosen or best-rated "
             "response), 0-100 (as the CoH paper reports it)",
    "task": "mean ground-truth score of the generations by the synthetic task's judge, 0-1 ('n': count)",
    "safety": "fractions of generations the safety judge calls harmless, 0-1",
    "edit_chain": "fractions of generations whose chain parses / agrees with its target, 0-1",
    "group_ranking": "fraction of rated pairs the model's mean NLL orders as the ratings do, 0-1",
    "reward": "accuracy, fraction 0-1; rewards: the score head's raw values (unbounded)",
    "truncation": "counts, not a score: scored sequences and generation prompts ('examples') cut to "
                  "max_len positions keeping the end of the prompt ('truncated'), and the tokens cut",
}


def _with_scales(report: dict[str, Any]) -> dict[str, Any]:
    report["scales"] = {k: SCALES[k] for k in report if k in SCALES}
    return report


def _finish(report: dict[str, Any], truncation: Truncation) -> dict[str, Any]:
    """The report with its truncation section (warned about when anything was cut) and scales."""
    report["truncation"] = truncation.section()
    truncation.warn()
    return _with_scales(report)


def _judged(responses: list[str], records: list[dict[str, Any]], references: list[str],
            task: synthetic.Task | None, temperature: float) -> dict[str, Any]:
    """The temperature, rouge, task and samples sections for generations against `references`."""
    prompts = [r["prompt"] for r in records]
    out: dict[str, Any] = {"temperature": temperature, "rouge": rouge(responses, references)}
    samples = [{"prompt": p, "response": y} for p, y in zip(prompts, responses, strict=True)]
    if task is not None:
        out["task"] = synthetic.evaluate(task, lambda _: responses, prompts)
        for row in samples:
            row["score"] = task.score(row["prompt"], row["response"])
    out["samples"] = samples[:NUM_SAMPLES]
    return out


def _template(policy: registry.Objective, objective: Any, tokenizer: Any) -> str:
    """How the model was prompted: the run's chat template when it trained through the model's own
    (data.prompt_template="chat_template": `sources.build` set it on the tokenizer), else the objective's."""
    return policy.prompt_template if tokenizer.prompt_template else registry.prompt_template(objective)


def _evaluate_groups(report: dict[str, Any], lm: api.LM, data: sources.Data, objective: Mapping[str, Any],
                     config_seed: int, max_new_tokens: int, temperature: float, seed: int,
                     hint: str, safety_fn: Any, truncation: Truncation) -> dict[str, Any]:
    """The report on held-out group records (docs/methods.md)."""
    groups = []
    for index, record in enumerate(r for r in data.eval if "responses" in r):
        try:
            groups.append(examples_lib.group_fields(record))
        except ValueError as e:
            raise ValueError(f"held-out group record {index}: {e}") from e
    if not groups:
        raise ValueError("config.data has no held-out group records to evaluate on")
    policy = registry.make(objective, lm.tokenizer, seed=config_seed, schema="group")
    template = _template(policy, objective, lm.tokenizer)
    report.update(num_eval=len(groups), prompt_template=template)
    report["group_ranking"] = group_ranking(lm, groups, template, truncation)
    records = [{"prompt": prompt} for prompt, _, _ in groups]
    generated = _generate(lm, policy, records, max_new_tokens, temperature, seed, hint, truncation)
    responses = [policy.response(r, row, lm.tokenizer) for r, row in zip(records, generated, strict=True)]
    best = [texts[examples_lib.best_response(ratings)] for _, texts, ratings in groups]
    report.update(_judged(responses, records, best, data.task, temperature))
    if safety_fn is not None:
        report["safety"] = safety_fn(records, responses, data.task)
    return _finish(report, truncation)


def _safety(judge: Any, records: list[dict[str, Any]], responses: list[str],
            task: synthetic.Task | None) -> dict[str, Any]:
    """The judge's report of the generations; for the harmless task also on its harmful prompts and
    the judge's agreement with the ground truth."""
    from jaxalign.eval import safety

    prompts = [r["prompt"] for r in records]
    harmful = [task.is_harmful(p) for p in prompts] if isinstance(task, synthetic.HarmlessTask) else None
    out = judge.report(prompts, responses, harmful=harmful if harmful and any(harmful) else None)
    if harmful is not None:
        out["agreement"] = safety.agreement(judge, task, prompts, responses)
    return out


def group_ranking(lm: api.LM, groups: Sequence[tuple[str, Sequence[str], Sequence[float]]],
                  template: str = examples_lib.PROMPT_TEMPLATE, truncation: Truncation | None = None,
                  ) -> dict[str, Any]:
    """How the model's mean token NLLs order each group's responses against their ratings.

    `groups` are (prompt, responses, ratings), e.g. `examples.group_fields` of group records; each
    response is scored after ``dialogue.render(template, prompt)`` as training formats it. Returns
    ``accuracy`` (pairs with s_i > s_j and L_i < L_j, ties in L counting half, over all such pairs;
    None without any), ``best_lowest`` (groups whose best-rated response has the strictly lowest L,
    over groups with such a pair), ``n_pairs`` and ``n_groups`` (groups with such a pair).
    `truncation` (optional) cuts and counts the scored sequences.
    """
    examples = [response_example(lm.tokenizer, dialogue.render(template, prompt), text)
                for prompt, texts, _ in groups for text in texts]
    _, mean_logp = _scores(lm, examples, truncation)
    wins, pairs, best_lowest, ranked_groups, start = 0.0, 0, 0, 0, 0
    for _, texts, ratings in groups:
        nll = -mean_logp[start:start + len(texts)]
        start += len(texts)
        s = np.asarray(ratings, np.float64)
        better = s[:, None] > s[None, :]  # better[i, j]: i is rated above j
        if not better.any():
            continue
        wins += float(np.sum(better * np.where(nll[:, None] < nll[None, :], 1.0,
                                               np.where(nll[:, None] == nll[None, :], 0.5, 0.0))))
        pairs += int(better.sum())
        ranked_groups += 1
        b = examples_lib.best_response(ratings)
        best_lowest += bool(np.all(np.delete(nll, b) > nll[b]))
    return {"accuracy": wins / pairs if pairs else None,
            "best_lowest": best_lowest / ranked_groups if ranked_groups else None,
            "n_pairs": pairs, "n_groups": ranked_groups}


def write(report: Mapping[str, Any], path: str | os.PathLike) -> epath.Path:
    """Writes the report to `path` (local or a URL); a reader never sees half a report."""
    path = paths.path(path)
    paths.write_atomic(path, json.dumps(report, indent=2) + "\n")
    return path


def _generate(lm: api.LM, policy: registry.Objective, records: list[dict[str, Any]], max_new_tokens: int,
              temperature: float, seed: int, hint: str = "", truncation: Truncation | None = None,
              ) -> list[list[int]]:
    """The policy's generations for `records`, prompted as it was trained (greedy at temperature 0),
    with `hint` on the line after each prompt if given; `truncation` cuts (and counts) prompts too
    long to leave room for max_new_tokens, keeping their end."""
    if hint:
        records = [{**r, "prompt": mistake_prompts.guided_prompt(r["prompt"], hint)} for r in records]
    tok = lm.tokenizer
    ids = [tok.encode(policy.prompt(r), add_bos=tok.bos_id is not None) for r in records]
    if truncation is not None:
        ids = truncation.prompt_ids(ids, max_new_tokens)
    return sample.generate(lm.params, lm.cfg, ids, mesh=lm.mesh, max_new_tokens=max_new_tokens,
                           temperature=temperature, seed=seed, eos_id=tok.eos_id)


def edit_chain_agreement(tokenizer: Tokenizer, records: list[dict[str, Any]], generated: list[list[int]],
                         task: synthetic.Task | None = None) -> dict[str, float]:
    """Shares of generations whose chain parses, and whose chain applied to the draft gives exactly
    the generated target (the paper's chain and target can disagree; we report how often). With a
    judge, ``applied_score``: the score of the *chain applied to the draft* (0 where the chain does
    not parse) -- the other way to read an edit-chain model's answer."""
    fmt = edits.add_markers(tokenizer)
    revisions = [edits.parse_generation(row, tokenizer.encode(r["rejected"]), tokenizer, fmt)
                 for r, row in zip(records, generated, strict=True)]
    result = {"parsed": float(np.mean([r.chain is not None for r in revisions])),
              "agrees": float(np.mean([r.agrees for r in revisions])), "n": len(revisions)}
    if task is not None:
        applied = [tokenizer.decode(r.applied).strip() if r.applied is not None else "" for r in revisions]
        result["applied_score"] = float(np.mean([task.score(r["prompt"], a) for r, a in zip(records, applied,
                                                                                           strict=True)]))
    return result


def reward_accuracy(lm: api.LM, records: Sequence[Mapping[str, Any]],
                    truncation: Truncation | None = None) -> dict[str, Any]:
    """A reward model on held-out records: pairs ranked right (preference records) or the sign of the
    reward matching the label (labelled records), with mean rewards. `truncation` (optional) cuts and
    counts the scored sequences."""
    pairs = [r for r in records if all(k in r for k in ("chosen", "rejected"))]
    if pairs:
        prompts = [r["prompt"] for r in pairs] * 2
        responses = [r["chosen"] for r in pairs] + [r["rejected"] for r in pairs]
        scores = _rewards(lm, prompts, responses, truncation)
        chosen, rejected = scores[: len(pairs)], scores[len(pairs):]
        return {"accuracy": float(np.mean(chosen > rejected)), "reward_chosen": float(chosen.mean()),
                "reward_rejected": float(rejected.mean()), "n": len(pairs)}
    labelled = [r for r in records if "text" in r and "label" in r]
    if not labelled:
        raise ValueError("config.data has no held-out preference or labelled records to score")
    scores = _rewards(lm, [r.get("prompt", "") for r in labelled], [r["text"] for r in labelled], truncation)
    labels = np.asarray([int(r["label"]) for r in labelled])
    return {"accuracy": float(np.mean((scores > 0) == (labels == 1))),
            "reward_aligned": float(scores[labels == 1].mean()) if (labels == 1).any() else None,
            "reward_unaligned": float(scores[labels == 0].mean()) if (labels == 0).any() else None,
            "n": len(labelled)}


def _rewards(lm: api.LM, prompts: list[str], responses: list[str],
             truncation: Truncation | None) -> np.ndarray:
    """`forward.score_texts`, each (prompt, response) cut by `truncation` first when given."""
    if truncation is None:
        return forward.score_texts(lm.params, lm.cfg, lm.mesh, lm.tokenizer, prompts, responses)
    examples = []
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        try:
            examples.append(examples_lib.text_example(lm.tokenizer, prompt, response))
        except ValueError as error:
            raise ValueError(f"reward_accuracy: pair {i}: {error}") from None
    rows = forward.unpacked_rows(truncation.scored_examples(examples))
    return forward.score_rows(lm.params, lm.cfg, lm.mesh, rows, batch_size=16)


def response_example(tokenizer: Tokenizer, prompt_text: str, response: str) -> dict[str, np.ndarray]:
    """BOS + prompt (unweighted) + response + EOS (weighted), tokenized as training tokenizes them."""
    prompt = tokenizer.encode(prompt_text, add_bos=tokenizer.bos_id is not None)
    return examples_lib.sft_example(prompt, tokenizer.encode(response), tokenizer.eos_id)


def _scores(lm: api.LM, examples: list[dict[str, np.ndarray]],
            truncation: Truncation | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed and per-token log-probabilities of `examples`, each cut by `truncation` first if given."""
    if truncation is not None:
        examples = truncation.scored_examples(examples)
    scores = sequence_logprobs(lm.params, lm.cfg, lm.mesh, examples)
    return scores.logp, scores.logp / np.maximum(scores.num_tokens, 1)


def _preference(lm: api.LM, records: list[dict[str, Any]], template: str,
                truncation: Truncation | None = None) -> dict[str, Any]:
    tok = lm.tokenizer
    examples = [response_example(tok, dialogue.render(template, r["prompt"]), r[k])
                for k in ("chosen", "rejected") for r in records]
    total, mean = _scores(lm, examples, truncation)
    n = len(records)
    return {"sum": preference_accuracy(total[:n], total[n:]), "mean": preference_accuracy(mean[:n], mean[n:])}


def _feedback(lm: api.LM, records: list[dict[str, Any]], fmt,
              truncation: Truncation | None = None) -> dict[str, Any]:
    tok = lm.tokenizer
    leads = {positive: fmt.prompt_template(positive=positive) for positive in (True, False)}
    examples = [response_example(tok, dialogue.render(leads[positive], r["prompt"]), r[k])
                for positive in (True, False) for k in ("chosen", "rejected") for r in records]
    total, _ = _scores(lm, examples, truncation)
    n = len(records)
    pos_chosen, pos_rejected, neg_chosen, neg_rejected = (total[i * n:(i + 1) * n] for i in range(4))
    good = (pos_chosen > neg_chosen).astype(float)
    bad = (neg_rejected > pos_rejected).astype(float)
    return {"accuracy": float(np.mean(np.concatenate([good, bad]))), "chosen_judged_good": float(good.mean()),
            "rejected_judged_bad": float(bad.mean()), "n": 2 * n}
