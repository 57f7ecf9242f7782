"""From a config's `data` section to a tokenizer, training examples and evaluation prompts.

Two kinds of source:
  data.task = "sort" | "polite" | "harmless"   a bundled synthetic feedback task
  data.jsonl = "path/to/train.jsonl"           user records ({"text"} or preference schema)

Training and generation share one prompt template, `pipeline.format_prompt`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ml_collections

from jaxalign.config import check_keys
from jaxalign.data import jsonl, pipeline, synthetic
from jaxalign.data.tokenizer import Tokenizer, train_sentencepiece

DATA_KEYS = ("task", "jsonl", "schema", "num_train", "num_eval", "vocab_size", "tokenizer")


def default_data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "task": "sort", "jsonl": "", "schema": "preference", "num_train": 4000, "num_eval": 64,
        "vocab_size": 384, "tokenizer": "",
    })


@dataclasses.dataclass
class Data:
    tokenizer: Tokenizer
    train: list[dict[str, Any]]  # examples {"tokens", "weights"} for packing
    eval_prompts: list[str]  # raw prompts (format_prompt is applied when generating)
    task: synthetic.Task | None  # ground-truth scorer, for synthetic tasks


def build(data_cfg: ml_collections.ConfigDict, workdir: Path, seed: int) -> Data:
    check_keys(data_cfg, DATA_KEYS, "config.data")
    if bool(data_cfg.task) == bool(data_cfg.jsonl):
        raise ValueError("config.data: set exactly one of data.task and data.jsonl")
    if data_cfg.task:
        task = synthetic.get_task(data_cfg.task)
        records = synthetic.to_records(synthetic.make_split(task, "train", data_cfg.num_train, seed))
        eval_prompts = [e.prompt for e in synthetic.make_split(task, "eval", data_cfg.num_eval, seed)]
        corpus = task.corpus(seed, 2000)
        schema = "preference"
    else:
        task, schema = None, data_cfg.schema
        records = list(jsonl.read_records(data_cfg.jsonl, schema))
        eval_prompts = [r["prompt"] for r in records[: data_cfg.num_eval]] if schema == "preference" else []
        corpus = [text for r in records for text in r.values() if isinstance(text, str)]
    tokenizer = _tokenizer(data_cfg, workdir, corpus)
    train = pipeline.tokenized_records(records, tokenizer, schema)
    return Data(tokenizer, train, eval_prompts, task)


def _tokenizer(data_cfg: ml_collections.ConfigDict, workdir: Path, corpus: list[str]) -> Tokenizer:
    """The workdir's tokenizer when resuming (ids must not change), else a given or new one."""
    saved = workdir / "tokenizer"
    if saved.exists():
        return Tokenizer.load(saved)
    if data_cfg.tokenizer:
        tokenizer = Tokenizer.load(data_cfg.tokenizer)
    else:
        tokenizer = train_sentencepiece(corpus, vocab_size=data_cfg.vocab_size)
    tokenizer.save_pretrained(saved)
    return tokenizer
