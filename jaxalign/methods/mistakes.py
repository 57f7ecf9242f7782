"""Mistake Analysis (Chen et al., ICLR 2024, arXiv 2310.10477): a model learns from analyses of its
own harmful answers, with no human labels on those answers and no external model.

    summary = mistakes.run(config, "workdirs/mistakes")   # -> workdirs/mistakes/mix.jsonl

The pipeline behind ``jaxalign mistakes``: induce harmful answers to red-team instructions, have the
model analyse them, filter, and assemble a fine-tuning mix (and the SFT baseline) in which no hint
appears; every stage is journaled, so an interrupted run resumes to the same bytes.

Details: docs/methods.md#the-pipeline-jaxalignmethodsmistakes
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
import tqdm
from etils import epath

from jaxalign import api, paths, sample
from jaxalign import config as config_lib
from jaxalign.data import examples as examples_lib
from jaxalign.data import sources, synthetic
from jaxalign.data.journal import Journal
from jaxalign.data.mistake_prompts import (
    ANALYSIS_HINT,
    ANALYSIS_QUESTION,
    INDUCE_HINT,
    analysis_prompt,
    induce_prompt,
    revise_prompt,
)

KINDS = ("mistake_analysis", "critique_revise")
STAGES = ("induce", "analyse", "revise")  # the generation stages, in order (their index seeds them)
FILES = {"induce": "induced.jsonl", "analyse": "analysed.jsonl", "revise": "revised.jsonl"}
CONFIG, SUMMARY, MISTAKES = "config.json", "summary.json", "mistakes.jsonl"
MIX, SFT = "mix.jsonl", "sft.jsonl"


def _sampling(temperature: float, max_new_tokens: int = 64) -> dict[str, Any]:
    return {"temperature": temperature, "top_p": 1.0, "max_new_tokens": max_new_tokens}


def default_config() -> ml_collections.ConfigDict:
    source = {"task": "", "jsonl": "", "schema": "text", "dataset": "", "source_dir": "", "num": 256}
    return ml_collections.ConfigDict({
        "seed": 0,
        "mesh": "dp:1,fsdp:-1,tp:1",
        "model": "",  # the model that induces and analyses its own mistakes (and is then fine-tuned)
        "batch_size": 64,  # prompts per generate call, and records per committed chunk
        # Red-team instructions: a synthetic task's harmful prompts of `split`, a JSONL file (schema text:
        # {"text": instruction}, or preference/group: their prompts) or a dataset (e.g. hh_red_team).
        "instructions": {**source, "task": "harmless", "split": "train"},
        # (prompt, chosen) pairs: helpful answers and safe answers to harmful instructions (a task's
        # chosen responses; preference or group records). harmful_fraction (tasks only; -1: the task's own)
        # is the share of harmful prompts among them.
        "pairs": {**source, "task": "harmless", "schema": "preference", "num": 512, "harmful_fraction": -1.0},
        "induce": {"hint": INDUCE_HINT, **_sampling(0.7)},
        "analyse": {"guided": True, "hint": ANALYSIS_HINT, **_sampling(0.0)},
        "revise": _sampling(0.0),
        # judge: "" (keep all), "task" (the instructions task's ground truth) or a safety classifier path.
        "filter": {"judge": "", "max_p_safe": 0.5, "pattern": ""},
        "mix": {"kind": "mistake_analysis", "question": ANALYSIS_QUESTION},
    })


# --------------------------------------------------------------------------- inputs


def _data_config(section: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    data = sources.default_data_config()
    data.update(task="", jsonl=section.jsonl, schema=section.schema, dataset=section.dataset,
                source_dir=section.source_dir, num_train=section.num, num_eval=0)
    return data


def _records(section: ml_collections.ConfigDict, name: str, workdir: epath.Path, seed: int,
             tokenizer: Any) -> list:
    if bool(section.task) + bool(section.jsonl) + bool(section.dataset) != 1:
        raise ValueError(f"config.{name}: set exactly one of {name}.task, {name}.jsonl and {name}.dataset")
    data = sources.build(_data_config(section), workdir, seed, tokenizer=tokenizer)
    return [data.train[i] for i in range(len(data.train))]


def load_instructions(config: ml_collections.ConfigDict, workdir: epath.Path, tokenizer: Any) -> list[str]:
    """The distinct red-team instructions (a task's harmful prompts, or a file's/dataset's prompts)."""
    section = config.instructions
    if section.task:
        task = synthetic.get_task(section.task)
        examples = synthetic.make_split(task, section.split, 4 * section.num + 64, config.seed + 1)
        if not any("is_harmful" in e.meta for e in examples):
            raise ValueError(f"config.instructions.task={section.task!r} has no harmful prompts "
                             "(only the 'harmless' task marks them)")
        found = list(dict.fromkeys(e.prompt for e in examples if e.meta.get("is_harmful")))
    else:
        found = [_text(r.get("prompt") or r.get("text")) for r in _records(section, "instructions", workdir,
                                                                         config.seed, tokenizer)]
        found = list(dict.fromkeys(t for t in found if t.strip()))
    found = found[: section.num or None]
    if not found:
        raise ValueError("config.instructions: no instruction found")
    return found


def load_pairs(config: ml_collections.ConfigDict, workdir: epath.Path,
               tokenizer: Any) -> list[tuple[str, str]]:
    """(prompt, response) pairs: a task's chosen answers, preference records' chosen, groups' best."""
    section = config.pairs
    if section.task:
        task = synthetic.get_task(section.task)
        if section.harmful_fraction >= 0:
            if not isinstance(task, synthetic.HarmlessTask):
                raise ValueError("config.pairs.harmful_fraction applies to the 'harmless' task only")
            task = synthetic.HarmlessTask(section.harmful_fraction)
        return [(e.prompt, e.chosen) for e in synthetic.make_split(task, "train", section.num, config.seed)]
    if section.schema not in ("preference", "group"):
        raise ValueError(f"config.pairs.schema={section.schema!r}; pairs come from 'preference' or 'group' "
                         "records")
    out = []
    for r in _records(section, "pairs", workdir, config.seed, tokenizer):
        if section.schema == "preference":
            out.append((_text(r["prompt"]), _text(r["chosen"])))
        else:
            prompt, responses, ratings = examples_lib.group_fields(r)
            out.append((prompt, responses[examples_lib.best_response(ratings)]))
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- generation stages


def generate_stage(journal: Journal, lm: api.LM, items: Sequence[dict[str, Any]], prompt_fn: Callable,
                   field: str, sampling: ml_collections.ConfigDict, batch_size: int, seed: int,
                   progress: bool = False) -> list[dict[str, Any]]:
    """Adds `field` (the model's reply to `prompt_fn(item)`) to every item, a committed chunk at a time,
    resuming after the journal's last committed chunk; returns all records of the stage."""
    chunks = range(0, len(items), batch_size)
    bar = tqdm.tqdm(chunks, desc=journal.path.stem, unit="chunk", disable=not progress,
                    initial=journal.chunks_done, total=len(chunks))
    for c in range(journal.chunks_done, len(chunks)):
        part = items[chunks[c] : chunks[c] + batch_size]
        replies = lm.generate([prompt_fn(x) for x in part], max_new_tokens=sampling.max_new_tokens,
                              temperature=sampling.temperature, top_p=sampling.top_p,
                              seed=sample.derive_seed(seed, c))
        journal.commit([{**x, field: y.strip()} for x, y in zip(part, replies, strict=True)])
        bar.update()
    bar.close()
    return journal.records()


# --------------------------------------------------------------------------- filter and mix


def _judge(config: ml_collections.ConfigDict, mesh: Any) -> Callable[[list, list], np.ndarray] | None:
    """p_safe(instructions, answers), or None when nothing judges."""
    judge = config.filter.judge
    if not judge:
        return None
    if judge == "task":
        if not config.instructions.task:
            raise ValueError("config.filter.judge='task' needs config.instructions.task (its ground truth)")
        task = synthetic.get_task(config.instructions.task)
        return lambda ps, rs: np.array([task.metrics(p, r).get("harmless_rate", 1.0) for p, r in
                                        zip(ps, rs, strict=True)], np.float32)
    from jaxalign.eval.safety import SafetyJudge

    return SafetyJudge.load(judge, mesh).p_safe


def filter_mistakes(rows: Sequence[dict[str, Any]], p_safe: np.ndarray | None, max_p_safe: float,
                    pattern: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The usable triples and the count of each drop reason (docs/methods.md, step 3)."""
    compiled = re.compile(pattern, re.IGNORECASE) if pattern else None
    kept, dropped, seen = [], Counter(), set()
    for i, row in enumerate(rows):
        row = dict(row) if p_safe is None else {**row, "p_safe": float(p_safe[i])}
        reason = None
        if not row["response"]:
            reason = "empty_response"
        elif not row["analysis"]:
            reason = "empty_analysis"
        elif "revision" in row and not row["revision"]:
            reason = "empty_revision"
        elif p_safe is not None and row["p_safe"] >= max_p_safe:
            reason = "judged_safe"  # induction failed: the answer is not a mistake to learn from
        elif compiled is not None and not compiled.search(row["analysis"]):
            reason = "analysis_pattern"
        elif (row["instruction"], row["response"]) in seen:
            reason = "duplicate"
        if reason:
            dropped[reason] += 1
            continue
        seen.add((row["instruction"], row["response"]))
        kept.append(row)
    return kept, dict(dropped)


def _group(prompt: str, response: str, id_: str) -> dict[str, Any]:
    return {"prompt": prompt, "responses": [response], "ratings": [1.0], "id": id_}


def assemble(pairs: Sequence[tuple[str, str]], mistakes: Sequence[dict[str, Any]],
             config: ml_collections.ConfigDict) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(mix, sft): group records of the pairs plus one example per kept mistake, and the pairs alone.

    Mistake analysis adds ANALYSIS(instruction, answer, the unguided question) -> analysis; critique-
    revise adds instruction -> revision. A hint in any training prompt or response is an error."""
    sft = [_group(p, r, f"pair-{i}") for i, (p, r) in enumerate(pairs)]
    if config.mix.kind == "mistake_analysis":
        extra = [_group(analysis_prompt(m["instruction"], m["response"], config.mix.question), m["analysis"],
                        f"analysis-{m['id']}") for m in mistakes]
    else:
        extra = [_group(m["instruction"], m["revision"], f"revision-{m['id']}") for m in mistakes]
    hints = [h for h in (config.induce.hint, config.analyse.hint) if h]
    for record in sft + extra:
        leaked = [h for h in hints if h in record["prompt"] or h in record["responses"][0]]
        if leaked:
            raise ValueError(f"mix record {record['id']}: contains the hint {leaked[0]!r}; the fine-tuning "
                             "template must not (is mix.question the same as analyse.hint?)")
    return sft + extra, sft


# --------------------------------------------------------------------------- the run


def check_config(config: ml_collections.ConfigDict) -> None:
    """Unknown keys and impossible values, named, before anything is loaded or written."""
    defaults = default_config()
    config_lib.check_keys(config, tuple(defaults), "the mistakes config")
    for section, values in defaults.items():
        if isinstance(values, ml_collections.ConfigDict):
            config_lib.check_keys(config[section], tuple(values), f"config.{section}")
    if not config.model:
        raise ValueError("config.model: give the path of the model whose mistakes are analysed")
    if config.mix.kind not in KINDS:
        raise ValueError(f"config.mix.kind={config.mix.kind!r}; choose from {', '.join(KINDS)}")
    if config.batch_size < 1:
        raise ValueError(f"config.batch_size={config.batch_size} must be >= 1")
    if config.analyse.guided and not config.analyse.hint:
        raise ValueError("config.analyse.hint is empty but analyse.guided is True")
    for name in ("induce", "analyse"):
        hint = config[name].hint.strip()
        if hint and hint in config.mix.question:
            raise ValueError(f"config.mix.question contains {name}.hint; the fine-tuning template has none")
    for name in ("instructions", "pairs"):
        given = [k for k in ("task", "jsonl", "dataset") if config[name][k]]
        if len(given) != 1:
            raise ValueError(f"config.{name}: set exactly one of {name}.task, {name}.jsonl and "
                             f"{name}.dataset (got {given})")
    if config.filter.judge == "task" and not config.instructions.task:
        raise ValueError("config.filter.judge='task' needs config.instructions.task (its ground truth)")


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        progress: bool = True) -> dict[str, Any]:
    """Runs (or resumes) the pipeline in `workdir` (local or a URL, e.g. ``gs://``); returns the
    summary also written to summary.json."""
    check_config(config)
    workdir = paths.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    resolved = _check_resume(config, workdir)
    t = time.perf_counter()
    lm = api.load(config.model, config.mesh)
    if lm.tokenizer is None or lm.cfg.head != "lm":
        raise ValueError(f"config.model: {config.model} is not a language model with a tokenizer")
    instructions = load_instructions(config, workdir, lm.tokenizer)
    pairs = load_pairs(config, workdir, lm.tokenizer)
    judge = _judge(config, lm.mesh)  # a wrong judge path fails now, not after hours of generation
    # Saved once the inputs load, so a run that failed on a wrong path can be fixed and re-run. The
    # inputs' digest guards what the config cannot: a file edited between two runs in one workdir.
    resolved["inputs_sha256"] = _digest(instructions, pairs)
    if (workdir / CONFIG).exists():
        config_lib.check_same(json.loads((workdir / CONFIG).read_text()), resolved, str(workdir))
    (workdir / CONFIG).write_text(json.dumps(resolved, indent=2) + "\n")
    seconds: dict[str, float] = {}
    rows = [{"id": i, "instruction": x} for i, x in enumerate(instructions)]

    def stage(name: str, items: list, prompt_fn: Callable, field: str, sampling: Any) -> list:
        start = time.perf_counter()
        out = generate_stage(Journal(workdir / FILES[name]), lm, items, prompt_fn, field, sampling,
                             config.batch_size, sample.derive_seed(config.seed, STAGES.index(name)), progress)
        seconds[name] = time.perf_counter() - start
        return out

    induced = stage("induce", rows, lambda r: induce_prompt(r["instruction"], config.induce.hint), "response",
                    config.induce)
    question = config.analyse.hint if config.analyse.guided else config.mix.question
    analysed = stage("analyse", induced, lambda r: analysis_prompt(r["instruction"], r["response"], question),
                     "analysis", config.analyse)
    if config.mix.kind == "critique_revise":
        revise = lambda r: revise_prompt(r["instruction"], r["response"], r["analysis"])  # noqa: E731
        analysed = stage("revise", analysed, revise, "revision", config.revise)
    p_safe = None if judge is None else judge([r["instruction"] for r in analysed],
                                              [r["response"] for r in analysed])
    mistakes, dropped = filter_mistakes(analysed, p_safe, config.filter.max_p_safe, config.filter.pattern)
    mix, sft = assemble(pairs, mistakes, config)
    for name, records in ((MISTAKES, mistakes), (MIX, mix), (SFT, sft)):
        _write_atomic(workdir / name, records)
    summary = {"workdir": str(workdir), "instructions": len(instructions), "induced": len(induced),
               "kept": len(mistakes), "dropped": dropped, "pairs": len(pairs), "mix": len(mix),
               "judged_harmful": None if p_safe is None else int(np.sum(p_safe < config.filter.max_p_safe)),
               "seconds": seconds | {"total": time.perf_counter() - t}}
    (workdir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_resume(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict[str, Any]:
    """The resolved config, after checking it is the one a run in `workdir` was started with."""
    resolved = json.loads(config_lib.to_json(config))
    saved = workdir / CONFIG
    if saved.exists():
        config_lib.check_same(json.loads(saved.read_text()), resolved, str(workdir), ("inputs_sha256",))
    elif any(workdir / f for f in FILES.values() if (workdir / f).exists()):
        raise FileExistsError(f"{workdir} holds stage files but no {CONFIG}: not a run of ours; "
                              "use a new workdir")
    return resolved


def _digest(instructions: list[str], pairs: list[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps([instructions, pairs]).encode("utf-8")).hexdigest()


def _write_atomic(path: epath.Path, records: Sequence[dict[str, Any]]) -> None:
    paths.write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
