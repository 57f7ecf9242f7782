"""SANDBOX (Liu et al., ICLR 2024): a society of language-model agents on a grid, whose
interactions become alignment data.

    summary = simulation.run(config, "workdirs/sandbox")   # -> workdirs/sandbox/records.jsonl

Each round, every agent answers a question from its memory, nearby peers rate it, it revises and
an observer scores both; every step is one batched generate call per model, and a run resumes to
exactly the records an uninterrupted one writes.

Details: docs/methods.md#the-sandbox-simulation-jaxalignmethodssandboxsimulation
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
import tqdm
from etils import epath

from jaxalign import api, paths, sample
from jaxalign import config as config_lib
from jaxalign import mesh as mesh_lib
from jaxalign.data import dialogue, jsonl, synthetic
from jaxalign.data import sandbox_records as records
from jaxalign.methods.sandbox import observer as observer_lib
from jaxalign.methods.sandbox import prompts
from jaxalign.methods.sandbox.memory import Memory, ModelEmbedder, NgramEmbedder

RECORDS = "records.jsonl"
PROGRESS = "progress.json"
CONFIG = "config.json"
COUNTERS = ("interactions", "ratings_parsed", "ratings_dropped", "observer_dropped", "generate_calls",
            "generated_tokens")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "seed": 0,
        "mesh": "dp:1,fsdp:-1,tp:1",
        "rounds": 4,
        # The question pool: a synthetic task's prompts, or a JSONL file of {"text": question} records.
        "questions": {"task": "harmless", "jsonl": "", "split": "train", "num": 64},
        # models: comma-separated model paths; labels: one per model (recorded as each agent's label).
        "agents": {"models": "", "labels": "", "num_agents": 8, "grid_size": 4},
        "raters": {"num": 3, "radius": 2},
        # embedding "model" (the agent model's pooled hidden states) or "ngram"; recall: pairs per prompt.
        "memory": {"embedding": "model", "capacity": 32, "recall": 2},
        # batch_size: most prompts per generate call (0: all prompts of a step to a model at once).
        "sampling": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 48, "batch_size": 0},
        # kind "lm" (model "": the first agent model) or "task" (the question task's ground truth).
        "observer": {"kind": "lm", "model": ""},
    })


@dataclasses.dataclass
class Agent:
    id: int
    model: str  # the path of its model (agents may share one)
    label: str
    cell: tuple[int, int]
    memory: Memory


class Society:
    """The agents, their models (loaded once per path) and the grid they live on."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.config = config
        mesh = mesh_lib.make_mesh(config.mesh)
        paths = [p.strip() for p in config.agents.models.split(",") if p.strip()]
        if not paths:
            raise ValueError("config.agents.models: give at least one model path")
        labels = [x.strip() for x in config.agents.labels.split(",")] if config.agents.labels else paths
        if len(labels) != len(paths):
            raise ValueError(f"config.agents.labels has {len(labels)} labels for {len(paths)} models")
        self.models = {p: _load(p, mesh) for p in dict.fromkeys(paths)}
        self.agents = _place(config, paths, labels, self._embedders())
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.round = 0  # the round being played (the observer's sampling seed depends on it)

    def _embedders(self) -> dict[str, Any]:
        kind = self.config.memory.embedding
        if kind == "ngram":
            shared = NgramEmbedder()
            return dict.fromkeys(self.models, shared)
        if kind == "model":
            return {path: ModelEmbedder(lm) for path, lm in self.models.items()}
        raise ValueError(f"config.memory.embedding={kind!r}; choose 'model' or 'ngram'")

    def raters(self, agent: Agent, rng: np.random.Generator) -> list[int]:
        """Up to raters.num other agents within raters.radius cells (Chebyshev), nearest first,
        equally near ones in random order."""
        radius, num = self.config.raters.radius, self.config.raters.num
        near = [(max(abs(a.cell[0] - agent.cell[0]), abs(a.cell[1] - agent.cell[1])), a.id)
                for a in self.agents if a.id != agent.id]
        near = [(d, rng.random(), i) for d, i in near if d <= radius]
        return [i for _, _, i in sorted(near)[:num]]

    def generate(self, requests: Sequence[tuple[str, str]], seed: int) -> list[str]:
        """Replies to (model path, prompt) requests: one batched generate call per model (and chunk)."""
        replies = [""] * len(requests)
        sampling = self.config.sampling
        for m, (path, lm) in enumerate(self.models.items()):
            mine = [i for i, (p, _) in enumerate(requests) if p == path]
            chunk = sampling.batch_size or max(len(mine), 1)
            for c, start in enumerate(range(0, len(mine), chunk)):
                part = mine[start : start + chunk]
                texts = self._generate(lm, [requests[i][1] for i in part], sample.derive_seed(seed, m, c))
                for i, text in zip(part, texts, strict=True):
                    replies[i] = text
        return replies

    def _generate(self, lm: api.LM, texts: list[str], seed: int) -> list[str]:
        tok, sampling = lm.tokenizer, self.config.sampling
        add_bos = tok.bos_id is not None
        ids = [tok.encode(dialogue.render(lm.prompt_template, t), add_bos=add_bos) for t in texts]
        out = sample.generate(lm.params, lm.cfg, ids, mesh=lm.mesh, max_new_tokens=sampling.max_new_tokens,
                              temperature=sampling.temperature, top_p=sampling.top_p, seed=seed,
                              eos_id=tok.eos_id)
        self.counts["generate_calls"] += 1
        self.counts["generated_tokens"] += sum(len(row) for row in out)
        return [tok.decode([t for t in row if t != tok.eos_id]).strip() for row in out]


def _load(path: str, mesh: Any) -> api.LM:
    lm = api.load(path, mesh)
    if lm.tokenizer is None or lm.tokenizer.eos_id is None:
        raise ValueError(f"config.agents.models: {path} has no tokenizer with an EOS token")
    if lm.cfg.head != "lm":
        raise ValueError(f"config.agents.models: {path} is a {lm.cfg.head!r} model, not a language model")
    return lm


def _place(config: ml_collections.ConfigDict, paths: list[str], labels: list[str],
           embedders: dict[str, Any]) -> list[Agent]:
    n, side = config.agents.num_agents, config.agents.grid_size
    if n < 1 or n > side * side:
        raise ValueError(f"config.agents.num_agents={n} must be in 1..grid_size**2={side * side}")
    cells = np.random.default_rng([config.seed, 7]).permutation(side * side)[:n]
    return [Agent(i, paths[i % len(paths)], labels[i % len(paths)], divmod(int(c), side),
                  Memory(embedders[paths[i % len(paths)]], config.memory.capacity))
            for i, c in enumerate(cells)]


def load_questions(config: ml_collections.ConfigDict) -> list[str]:
    """The question pool: distinct prompts of the task's split, or the texts of questions.jsonl."""
    q = config.questions
    if bool(q.task) == bool(q.jsonl):
        raise ValueError("config.questions: set exactly one of questions.task and questions.jsonl")
    if q.task:
        examples = synthetic.make_split(q.task, q.split, q.num, config.seed)
        pool = list(dict.fromkeys(e.prompt for e in examples))
    else:
        pool = [r["text"] for r in jsonl.read_records(q.jsonl, "text")][: q.num or None]
    if not pool:
        raise ValueError("config.questions: the question pool is empty")
    return pool


# --------------------------------------------------------------------------- one round


def play_round(society: Society, questions: Sequence[str], iteration: int,
               observer: Any) -> list[dict[str, Any]]:
    """The records of one round (docs/methods.md, steps 1-4); memories are not yet updated."""
    seed, agents = society.config.seed, society.agents
    rng = np.random.default_rng([seed, iteration])
    asked = [questions[int(i)] for i in rng.integers(len(questions), size=len(agents))]
    recall = society.config.memory.recall
    memories = [a.memory.recall([q], recall)[0] for a, q in zip(agents, asked, strict=True)]
    drafts = society.generate([(a.model, prompts.answer(q, m)) for a, q, m in zip(agents, asked, memories,
                                                                                  strict=True)],
                              sample.derive_seed(seed, iteration, 1))
    panels = [society.raters(a, rng) for a in agents]
    asks = [(agents[r].model, prompts.rate(q, d)) for q, d, panel in zip(asked, drafts, panels, strict=True)
            for r in panel]
    replies = iter(society.generate(asks, sample.derive_seed(seed, iteration, 2)))
    ratings = []
    for panel in panels:
        parsed = [(r, prompts.parse_rating(next(replies))) for r in panel]
        kept = [(r, p) for r, p in parsed if p is not None]
        society.counts["ratings_parsed"] += len(kept)
        society.counts["ratings_dropped"] += len(parsed) - len(kept)
        ratings.append(kept)
    revisions = society.generate(
        [(a.model, prompts.revise(q, d, [p[0] for _, p in k], [p[1] for _, p in k]))
         for a, q, d, k in zip(agents, asked, drafts, ratings, strict=True)],
        sample.derive_seed(seed, iteration, 3))
    scores = observer([*asked, *asked], [*drafts, *revisions])
    before, after = scores[: len(agents)], scores[len(agents):]
    out = []
    for i, agent in enumerate(agents):
        if not _scored(before[i], observer) or not _scored(after[i], observer):
            society.counts["observer_dropped"] += 1
            continue
        out.append(_record(agent, iteration, asked[i], drafts[i], ratings[i], revisions[i],
                           before[i], after[i]))
    return out


def _scored(score: observer_lib.Score, observer: Any) -> bool:
    return score.moral is not None and (score.engagement is not None or not observer.scores_engagement)


def _record(agent: Agent, iteration: int, question: str, draft: str, kept: list, revision: str,
            before: observer_lib.Score, after: observer_lib.Score) -> dict[str, Any]:
    return {
        "id": records.record_id(iteration, agent.id), "agent_id": agent.id, "label": agent.label,
        "iteration": iteration,
        "question": question, "draft_answer": draft,
        "target_id": [r for r, _ in kept], "feedback": [p[1] for _, p in kept],
        "rating": [p[0] for _, p in kept],
        "revised_answer": revision,
        "gen_moral_score_before": before.moral, "gen_moral_score_after": after.moral,
        "gen_moral_reason_before": before.moral_reason, "gen_moral_reason_after": after.moral_reason,
        "gen_engagement_score_before": before.engagement, "gen_engagement_score_after": after.engagement,
        "gen_engagement_reason_before": before.engagement_reason,
        "gen_engagement_reason_after": after.engagement_reason,
    }


# --------------------------------------------------------------------------- the run


def make_observer(config: ml_collections.ConfigDict, society: Society) -> Any:
    kind = config.observer.kind
    if kind == "task":
        if not config.questions.task:
            raise ValueError("config.observer.kind='task' needs config.questions.task (its ground truth)")
        return observer_lib.TaskObserver(config.questions.task)
    if kind != "lm":
        raise ValueError(f"config.observer.kind={kind!r}; choose 'lm' or 'task'")
    path = config.observer.model or next(iter(society.models))
    if path not in society.models:
        society.models[path] = _load(path, mesh_lib.make_mesh(config.mesh))
    seed = lambda: sample.derive_seed(config.seed, society.round, 4)  # noqa: E731 (the round when asked)
    return observer_lib.LMObserver(lambda asks: society.generate([(path, a) for a in asks], seed()))


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        progress: bool = True) -> dict[str, Any]:
    """Runs (or resumes, or extends) the simulation in `workdir` (local or a URL, e.g. ``gs://``);
    returns a summary with counts."""
    config_lib.check_keys(config, tuple(default_config()), "the sandbox config")
    for section, values in default_config().items():
        if isinstance(values, ml_collections.ConfigDict):
            config_lib.check_keys(config[section], tuple(values), f"config.{section}")
    workdir = paths.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state = _resume_state(config, workdir)
    questions = load_questions(config)
    society = Society(config)
    society.counts.update(state["counts"])
    _replay(society, workdir / RECORDS)
    observer = make_observer(config, society)
    start, t0, before = state["rounds_done"], time.perf_counter(), society.counts["interactions"]
    bar = tqdm.tqdm(range(start, config.rounds), initial=start, total=config.rounds, desc="sandbox",
                    unit="round", disable=not progress)
    for iteration in bar:
        society.round = iteration
        new = play_round(society, questions, iteration, observer)
        _commit(workdir, society, new, iteration + 1)
        bar.set_postfix(records=society.counts["interactions"], dropped=society.counts["ratings_dropped"])
    seconds = time.perf_counter() - t0
    recorded = society.counts["interactions"] - before
    return {"workdir": str(workdir), "rounds": config.rounds, "rounds_played": max(config.rounds - start, 0),
            "seconds": seconds, "interactions_per_s": recorded / seconds if recorded else 0.0,
            **society.counts}


def _resume_state(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict[str, Any]:
    """The progress to resume from, after checking the saved config matches (rounds may grow)."""
    resolved = json.loads(config_lib.to_json(config))
    saved_config, saved = workdir / CONFIG, workdir / PROGRESS
    if not saved.exists():
        if (workdir / RECORDS).exists():
            raise FileExistsError(f"{workdir / RECORDS} exists without {PROGRESS}: not a sandbox run of "
                                  "ours (or one from an older version); move it away to start afresh")
        saved_config.write_text(json.dumps(resolved, indent=2) + "\n")
        return {"rounds_done": 0, "records_bytes": 0, "counts": {}}
    config_lib.check_same(json.loads(saved_config.read_text()), resolved, str(workdir), ("rounds",))
    state = json.loads(saved.read_text())
    if not (workdir / RECORDS).exists():
        raise FileNotFoundError(f"{workdir / PROGRESS} says {state['rounds_done']} rounds were recorded, "
                                f"but {workdir / RECORDS} is missing")
    if (workdir / RECORDS).stat().length != state["records_bytes"]:
        paths.truncate(workdir / RECORDS, state["records_bytes"])  # drop a round written only in part
    saved_config.write_text(json.dumps(resolved, indent=2) + "\n")
    return state


def _replay(society: Society, path: epath.Path) -> None:
    """Rebuilds the agents' memories from the records written so far."""
    if not path.exists():
        return
    for record in records.read_records(path):
        society.agents[record["agent_id"]].memory.add(record["question"], record["revised_answer"])


def _commit(workdir: epath.Path, society: Society, new: list[dict[str, Any]], rounds_done: int) -> None:
    """Appends a round's records durably, then replaces the progress that says how far they go."""
    path = workdir / RECORDS
    lines = "".join(records.format_record(r, f"round {r['iteration']}") for r in new)
    paths.append(path, lines.encode("utf-8"))
    size = path.stat().length
    for r in new:
        society.agents[r["agent_id"]].memory.add(r["question"], r["revised_answer"])
    society.counts["interactions"] += len(new)
    progress = {"rounds_done": rounds_done, "records_bytes": size, "counts": society.counts}
    paths.write_atomic(workdir / PROGRESS, json.dumps(progress))
