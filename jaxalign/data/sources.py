"""From a config's `data` and `pretrain` sections to a tokenizer, records and evaluation data.

One of ``data.task`` (a bundled synthetic task), ``data.jsonl`` (your records) or ``data.dataset``
(a TFDS build of upstream files, read lazily) gives the records, still text: the objective turns
them into examples as the pipeline reads them. Also picks the stages of group records
(``data.stage``) and the plain-text pretraining stream of Chain of Hindsight. Every path (the
workdir, data.jsonl, data.source_dir, data.tfds_dir, data.tokenizer, pretrain.jsonl) may be local
or a URL (``gs://...``).

Details: docs/data.md#from-a-config-to-records-jaxaligndatasources
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from jaxalign import paths
from jaxalign.config import check_keys
from jaxalign.data import jsonl, synthetic
from jaxalign.data import sandbox_alignment as alignment_data
from jaxalign.data.tokenizer import Tokenizer, train_sentencepiece

log = logging.getLogger(__name__)
DATA_KEYS = ("task", "jsonl", "schema", "dataset", "source_dir", "tfds_dir", "num_train", "num_eval",
             "vocab_size", "tokenizer", "stage", "sharding")
PRETRAIN_KEYS = ("weight", "batch_size", "microbatches", "jsonl", "num_texts")
DATASETS = ("hh_rlhf", "webgpt", "summarize_feedback", "jsonl_preference", "moral_stories",
            "ethics_commonsense", "mic", "sandbox", "pku_saferlhf", "pku_saferlhf_better",
            "pku_saferlhf_safety", "hh_red_team")
TOKENIZER_SAMPLE = 20000  # records a new tokenizer is trained on


def default_data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "task": "sort", "jsonl": "", "schema": "preference", "dataset": "", "source_dir": "",
        "tfds_dir": "", "num_train": 4000, "num_eval": 64, "vocab_size": 384, "tokenizer": "", "stage": "",
        # How a multi-process run splits the input work (jaxalign/data/hosts.py): "process" or "global".
        "sharding": "process",
    })


def default_pretrain_config() -> ml_collections.ConfigDict:
    """weight 0 turns the stream off; otherwise loss = L_objective + weight * L_pretrain."""
    return ml_collections.ConfigDict({"weight": 0.0, "batch_size": 16, "microbatches": 1, "jsonl": "",
                                      "num_texts": 4000})


@dataclasses.dataclass
class Data:
    tokenizer: Tokenizer
    train: Sequence[Mapping[str, Any]]  # records (dicts of str, or of bytes from a tfds source)
    eval: list[dict[str, Any]]  # held-out records (prompt/chosen/rejected for preference data)
    task: synthetic.Task | None  # ground-truth scorer, for synthetic tasks
    schema: str  # "preference", "text", "labelled" or "group"
    pretrain: list[dict[str, str]] | None = None  # {"text"} records when pretrain.weight > 0
    eval_split: str = "eval"  # where `eval` comes from; "train" means it is not held out

    @property
    def eval_prompts(self) -> list[str]:
        return [r["prompt"] for r in self.eval if "prompt" in r]


def build(data_cfg: ml_collections.ConfigDict, workdir: str | os.PathLike, seed: int,
          pretrain_cfg: ml_collections.ConfigDict | None = None, tokenizer: Tokenizer | None = None) -> Data:
    """Records and a tokenizer: `tokenizer` if given, else the workdir's, data.tokenizer, or a new one
    trained on the data (saved in the workdir, so a resumed run keeps its ids)."""
    check_keys(data_cfg, DATA_KEYS, "config.data")
    workdir = paths.path(workdir)
    chosen = [k for k in ("task", "jsonl", "dataset") if data_cfg.get(k)]
    if len(chosen) != 1:
        raise ValueError(
            f"config.data: set exactly one of data.task, data.jsonl and data.dataset (got {chosen})")
    task, eval_split = None, "eval"
    stages = _stages(data_cfg)
    if pretrain_cfg is not None and pretrain_cfg.get("weight") and not pretrain_cfg.get("jsonl") \
            and not data_cfg.task:  # before a dataset is built, not after
        raise ValueError(
            "config.pretrain.weight > 0 needs pretrain.jsonl (text records) unless data.task is set")
    if data_cfg.task:
        task = synthetic.get_task(data_cfg.task)
        train = synthetic.to_records(synthetic.make_split(task, "train", data_cfg.num_train, seed))
        evals = synthetic.to_records(synthetic.make_split(task, "eval", data_cfg.num_eval, seed))
        schema = "preference"
    elif data_cfg.jsonl:
        schema = data_cfg.schema
        train = list(jsonl.read_records(data_cfg.jsonl, schema))
        if not train:
            raise ValueError(f"config.data.jsonl={data_cfg.jsonl}: the file holds no record")
        if stages is not None:
            _need_groups(schema, "data.schema")
            train = [r for r in train if r.get("stage", "") in stages]
            _need_some(train, stages, data_cfg.jsonl)
        evals, eval_split = train[: data_cfg.num_eval], "train"
    else:
        train, evals, eval_split, schema = _tfds_splits(data_cfg, workdir, stages)
    if data_cfg.num_train and len(train) > data_cfg.num_train and not data_cfg.task:
        log.warning("config.data.num_train=%d keeps the first %d of %d training records (0 keeps all)",
                    data_cfg.num_train, data_cfg.num_train, len(train))
        train = _Head(train, data_cfg.num_train)
    pretrain = _pretrain_texts(pretrain_cfg, task, seed)
    if tokenizer is None:
        tokenizer = _tokenizer(data_cfg, workdir, lambda: _corpus(task, train, pretrain, seed))
    return Data(tokenizer, train, evals, task, schema, pretrain, eval_split)


def _stages(data_cfg: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """The stages data.stage keeps (None: all records); ValueError naming the key for a bad one."""
    value = data_cfg.get("stage", "")
    if not isinstance(value, str):
        raise ValueError(f"config.data.stage={value!r} must be a string (comma-separated stage names)")
    if not value.strip():
        return None
    if data_cfg.get("task"):
        raise ValueError(f"config.data.stage={value!r} selects group records; data.task gives preference "
                         f"records (use data.jsonl with data.schema='group' or data.dataset='sandbox')")
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise ValueError(f"config.data.stage={value!r}: an empty stage name in the list")
    return alignment_data.check_stages(names, f"config.data.stage={value!r}")


def _need_groups(schema: str, what: str) -> None:
    if schema != "group":
        raise ValueError(f"config.data.stage selects group records, but {what} gives {schema!r} records "
                         f"(use data.jsonl with data.schema='group' or data.dataset='sandbox')")


def _need_some(records: Sequence[Any], stages: tuple[str, ...], where: str) -> None:
    if not len(records):
        raise ValueError(f"config.data.stage={','.join(stages)!r}: no group records of "
                         f"{'that stage' if len(stages) == 1 else 'those stages'} in {where}")


class _Selected:
    """Records `indices` of a random-access source, each decoded: still random access, read lazily."""

    def __init__(self, source: Sequence[Any], decode: Callable[[Any], Any],
                 indices: Sequence[int] | None) -> None:
        self.source, self.decode = source, decode
        self.indices = range(len(source)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.decode(self.source[self.indices[index]])


def _sandbox_splits(data_cfg: ml_collections.ConfigDict, tfds_dir: str, stages: tuple[str, ...] | None,
                    builders: Any) -> tuple[Any, list[dict[str, Any]], str, str]:
    """The sandbox dataset's group records, decoded to plain Python, of `stages` only if given."""
    splits = builders.sandbox.prepare(data_cfg.source_dir, tfds_dir)
    decode = builders.sandbox.decode_record

    def indices(split: str) -> Sequence[int] | None:  # the build stores where each stage lies
        return None if stages is None else builders.sandbox.stage_indices(tfds_dir, split, stages)

    if "train" not in splits:
        raise ValueError(
            f"config.data.source_dir={data_cfg.source_dir!r}: no group record in the train split")
    train = _Selected(splits["train"], decode, indices("train"))
    if stages is not None:
        _need_some(train, stages, f"the train split built from {data_cfg.source_dir}")
    evals, held_out = [], "none"
    if "validation" in splits:
        held_out = "validation"
        validation = _Selected(splits["validation"], decode, indices("validation"))
        evals = [validation[i] for i in range(min(data_cfg.num_eval, len(validation)))]
    return train, evals, held_out, "group"


def _tfds_splits(data_cfg: ml_collections.ConfigDict, workdir: epath.Path,
                 stages: tuple[str, ...] | None = None) -> tuple[Any, list[dict[str, Any]], str, str]:
    """(train source, held-out records, where they come from, the records' schema)."""
    from jaxalign.data import builders  # tensorflow_datasets is slow to import: only when needed

    if data_cfg.dataset not in DATASETS:
        raise ValueError(f"config.data.dataset={data_cfg.dataset!r}; known: {', '.join(DATASETS)}")
    if not data_cfg.source_dir:
        raise ValueError(
            f"config.data.dataset={data_cfg.dataset!r} needs data.source_dir (the upstream files)")
    tfds_dir = data_cfg.tfds_dir or str(workdir / "tfds")
    if data_cfg.dataset == "sandbox":
        return _sandbox_splits(data_cfg, tfds_dir, stages, builders)
    # The value and safety registries build datasets of several schemas; the others give preferences.
    registry = next((r for r in (builders.values, builders.safety) if data_cfg.dataset in r.BUILDERS), None)
    schema = "preference" if registry is None else registry.schema(data_cfg.dataset)
    if stages is not None:
        _need_groups(schema, f"data.dataset={data_cfg.dataset!r}")
    if data_cfg.dataset == "jsonl_preference":
        splits = builders.prepare(data_cfg.source_dir, tfds_dir)
        decode = builders.decode_record
    elif registry is not None:
        splits = registry.prepare(data_cfg.dataset, data_cfg.source_dir, tfds_dir)
        decode = registry.decode_record
    else:
        splits = builders.feedback.prepare(data_cfg.dataset, data_cfg.source_dir, tfds_dir)
        decode = builders.feedback.decode_record
    held_out = next((s for s in ("validation", "test") if s in splits), None)
    evals = [] if held_out is None else [
        decode(splits[held_out][i]) for i in range(min(data_cfg.num_eval, len(splits[held_out])))
    ]
    return splits["train"], evals, held_out or "none", schema


class _Head:
    """The first n records of a random-access source, still random access."""

    def __init__(self, source: Sequence[Any], n: int) -> None:
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.source[index]


def synthetic_pretraining_texts(task: synthetic.Task, seed: int, n: int) -> list[dict[str, str]]:
    """n plain texts "{prompt}\\n{response}", the response chosen or rejected with equal odds."""
    rng = random.Random(seed * 7919 + 17)
    examples = synthetic.make_split(task, "train", n, seed + 1_000_003)
    return [{"text": f"{e.prompt}\n{e.chosen if rng.random() < 0.5 else e.rejected}"} for e in examples]


def _pretrain_texts(pretrain_cfg: ml_collections.ConfigDict | None, task: synthetic.Task | None,
                    seed: int) -> list[dict[str, str]] | None:
    if pretrain_cfg is None:
        return None
    check_keys(pretrain_cfg, PRETRAIN_KEYS, "config.pretrain")
    if not pretrain_cfg.weight:
        return None
    if pretrain_cfg.weight < 0:
        raise ValueError(f"config.pretrain.weight={pretrain_cfg.weight} must be >= 0")
    if pretrain_cfg.jsonl:
        texts = list(jsonl.read_records(pretrain_cfg.jsonl, "text"))
        if not texts:
            raise ValueError(f"config.pretrain.jsonl={pretrain_cfg.jsonl}: the file holds no record")
        return texts
    if task is None:
        raise ValueError(
            "config.pretrain.weight > 0 needs pretrain.jsonl (text records) unless data.task is set")
    return synthetic_pretraining_texts(task, seed, pretrain_cfg.num_texts)


def _corpus(task, train, pretrain, seed) -> list[str]:
    if task is not None:  # the task's own sample of its grammar covers its records and texts
        return task.corpus(seed, 2000)
    corpus = []
    for index in range(min(len(train), TOKENIZER_SAMPLE)):
        for value in train[index].values():
            if isinstance(value, (str, bytes)):
                corpus.append(_as_text(value))
            elif isinstance(value, (list, tuple, np.ndarray)):  # a group record's responses
                corpus += [_as_text(v) for v in value if isinstance(v, (str, bytes))]
    corpus += [r["text"] for r in (pretrain or [])[:TOKENIZER_SAMPLE]]
    return corpus


def _as_text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _tokenizer(data_cfg: ml_collections.ConfigDict, workdir: epath.Path, corpus) -> Tokenizer:
    """The workdir's tokenizer when resuming (ids must not change), else a given or new one."""
    saved = workdir / "tokenizer"
    if saved.exists():
        return Tokenizer.load(saved)
    if data_cfg.tokenizer:
        tokenizer = Tokenizer.load(data_cfg.tokenizer)
    else:
        tokenizer = train_sentencepiece(corpus(), vocab_size=data_cfg.vocab_size)
    tokenizer.save_pretrained(saved)
    return tokenizer
