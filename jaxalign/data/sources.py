"""From a config's `data` and `pretrain` sections to a tokenizer, records and evaluation data.

One of ``data.task`` (a bundled synthetic task), ``data.jsonl`` (your records) or ``data.dataset``
(a TFDS build of upstream files, read lazily) gives the records, still text: the objective turns
them into examples as the pipeline reads them; with none of them set (data.task left unset, None),
the bundled "sort" task does (`DEFAULT_TASK`). Also picks the stages of group records
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
from ml_collections import config_dict

from jaxalign import paths
from jaxalign.config import check_keys
from jaxalign.data import dialogue, examples, jsonl, synthetic
from jaxalign.data import sandbox_alignment as alignment_data
from jaxalign.data.tokenizer import Tokenizer, train_sentencepiece

log = logging.getLogger(__name__)
DATA_KEYS = ("task", "jsonl", "schema", "dataset", "source_dir", "tfds_dir", "num_train", "num_eval",
             "vocab_size", "tokenizer", "stage", "sharding", "prompt_template")
PROMPT_TEMPLATES = ("", dialogue.CHAT_TEMPLATE)  # data.prompt_template: the objective's own, or the model's
PRETRAIN_KEYS = ("weight", "batch_size", "microbatches", "jsonl", "num_texts", "from_train")
DATASETS = ("hh_rlhf", "webgpt", "summarize_feedback", "jsonl_preference", "moral_stories",
            "ethics_commonsense", "mic", "sandbox", "pku_saferlhf", "pku_saferlhf_better",
            "pku_saferlhf_safety", "hh_red_team")
TOKENIZER_SAMPLE = 20000  # records a new tokenizer is trained on
DEFAULT_TASK = "sort"  # the records when data.task is unset (None) and no data.jsonl or data.dataset
SYNTHETIC_NUM_TRAIN = 4000  # training examples a synthetic task generates when data.num_train is 0
# A tokenizer trained on a data set (real text) with fewer pieces than this gets a warning: the
# default vocab_size (384) is sized for the synthetic tasks' small vocabulary and makes real English
# about 3x longer in tokens (HH-RLHF: a median of 502 tokens per dialogue at 384 pieces, 145 at 8000).
REAL_TEXT_VOCAB = 4000
LENGTH_SAMPLE = 200  # records whose token lengths that warning states


def default_data_config() -> ml_collections.ConfigDict:
    """task unset (None): the bundled "sort" task unless data.jsonl or data.dataset gives the records
    (task "" turns it off: a config whose data.jsonl is to be given on the command line); num_train
    0: every record (a synthetic task then generates `SYNTHETIC_NUM_TRAIN`)."""
    return ml_collections.ConfigDict({
        "task": config_dict.placeholder(str), "jsonl": "", "schema": "preference", "dataset": "",
        "source_dir": "", "tfds_dir": "", "num_train": 0, "num_eval": 64, "vocab_size": 384, "tokenizer": "",
        "stage": "",
        # How a multi-process run splits the input work (jaxalign/data/hosts.py): "process" or "global".
        "sharding": "process",
        # "chat_template": prompts rendered through the tokenizer's own chat template (docs/data.md).
        "prompt_template": "",
    })


def default_pretrain_config() -> ml_collections.ConfigDict:
    """weight 0 turns the stream off; otherwise loss = L_objective + weight * L_pretrain. The text:
    pretrain.jsonl, or (from_train) the training records' prompt + chosen response, or a synthetic
    task's own text (num_texts of them)."""
    return ml_collections.ConfigDict({"weight": 0.0, "batch_size": 16, "microbatches": 1, "jsonl": "",
                                      "num_texts": 4000, "from_train": False})


def synthetic_task(data_cfg: Mapping[str, Any]) -> str:
    """The bundled task a data section trains on: data.task when set, else (None) `DEFAULT_TASK`
    unless data.jsonl or data.dataset gives the records; "" for none."""
    task = data_cfg.get("task")
    if task is None:
        return "" if data_cfg.get("jsonl") or data_cfg.get("dataset") else DEFAULT_TASK
    return task


def effective(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A data section (a dict or ConfigDict) as a plain dict with its defaults spelt out: the task
    `synthetic_task` picks, and a synthetic task's num_train 0 as `SYNTHETIC_NUM_TRAIN`. Two
    sections give the same records when their effective dicts are equal (a resumed run compares
    them so, so that a run saved with the older defaults task="sort", num_train=4000 resumes)."""
    out = data_cfg.to_dict() if isinstance(data_cfg, ml_collections.ConfigDict) else dict(data_cfg)
    task = synthetic_task(out)
    out["task"] = task
    out.setdefault("prompt_template", "")  # a run saved before the key
    if task and not out.get("num_train"):
        out["num_train"] = SYNTHETIC_NUM_TRAIN
    return out


@dataclasses.dataclass
class Data:
    tokenizer: Tokenizer
    train: Sequence[Mapping[str, Any]]  # records (dicts of str, or of bytes from a tfds source)
    eval: list[dict[str, Any]]  # held-out records (prompt/chosen/rejected for preference data)
    task: synthetic.Task | None  # ground-truth scorer, for synthetic tasks
    schema: str  # "preference", "text", "labelled" or "group"
    pretrain: Sequence[dict[str, str]] | None = None  # {"text"} records when pretrain.weight > 0
    eval_split: str = "eval"  # where `eval` comes from; "train" means it is not held out

    @property
    def eval_prompts(self) -> list[str]:
        return [r["prompt"] for r in self.eval if "prompt" in r]


def check(data_cfg: ml_collections.ConfigDict, pretrain_cfg: ml_collections.ConfigDict | None = None, *,
          given_tokenizer: bool = False) -> None:
    """The errors of a data (and pretrain) section that need no data read: run before anything is
    written, so a bad config leaves no workdir or tokenizer behind. `given_tokenizer`: the caller
    brings the tokenizer (a trained model's, in eval), which may hold the chat template."""
    check_keys(data_cfg, DATA_KEYS, "config.data")
    chosen = [k for k in ("task", "jsonl", "dataset") if data_cfg.get(k)]
    if len(chosen) > 1:
        given = " and ".join(f"data.{k}={data_cfg[k]!r}" for k in chosen)
        raise ValueError(
            f"config.data: {given} both give the training records; set only one of data.task, data.jsonl "
            f"and data.dataset (data.task left unset gives way to the others)")
    task_name = synthetic_task(data_cfg)
    if not chosen and not task_name:
        raise ValueError(f"config.data: no training records: set data.jsonl or data.dataset (data.task="
                         f"{data_cfg.get('task')!r} turns the bundled {DEFAULT_TASK!r} task off)")
    if task_name:
        synthetic.get_task(task_name)  # an unknown task name
    _stages(data_cfg)
    _check_pretrain_source(pretrain_cfg, task_name)  # before a dataset is built, not after
    template = data_cfg.get("prompt_template", "")
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"config.data.prompt_template={template!r}; choose '' (the objective's own) or "
                         f"{dialogue.CHAT_TEMPLATE!r} (the model's own chat template)")
    if template and not data_cfg.tokenizer and not given_tokenizer:
        raise ValueError(f"config.data.prompt_template={template!r} uses a pretrained model's chat template: "
                         "set init_from (or data.tokenizer) to a model whose tokenizer has one")


def build(data_cfg: ml_collections.ConfigDict, workdir: str | os.PathLike, seed: int,
          pretrain_cfg: ml_collections.ConfigDict | None = None, tokenizer: Tokenizer | None = None) -> Data:
    """Records and a tokenizer: `tokenizer` if given, else the workdir's, data.tokenizer, or a new one
    trained on the data (saved in the workdir, so a resumed run keeps its ids)."""
    check(data_cfg, pretrain_cfg, given_tokenizer=tokenizer is not None)
    workdir = paths.path(workdir)
    task, eval_split, task_name = None, "eval", synthetic_task(data_cfg)
    stages = _stages(data_cfg)
    if task_name:
        task = synthetic.get_task(task_name)
        num_train = data_cfg.num_train or SYNTHETIC_NUM_TRAIN
        train = synthetic.to_records(synthetic.make_split(task, "train", num_train, seed))
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
    if data_cfg.num_train and len(train) > data_cfg.num_train and task is None:
        log.warning("config.data.num_train=%d keeps the first %d of %d training records (0 keeps all)",
                    data_cfg.num_train, data_cfg.num_train, len(train))
        train = _Head(train, data_cfg.num_train)
    pretrain = _pretrain_texts(pretrain_cfg, task, seed, train, schema)
    if tokenizer is None:
        tokenizer = _tokenizer(data_cfg, workdir, lambda: _corpus(task, train, pretrain, seed), train)
    if data_cfg.get("prompt_template", ""):
        use_chat_template(tokenizer)
    return Data(tokenizer, train, evals, task, schema, pretrain, eval_split)


def _stages(data_cfg: ml_collections.ConfigDict) -> tuple[str, ...] | None:
    """The stages data.stage keeps (None: all records); ValueError naming the key for a bad one."""
    value = data_cfg.get("stage", "")
    if not isinstance(value, str):
        raise ValueError(f"config.data.stage={value!r} must be a string (comma-separated stage names)")
    if not value.strip():
        return None
    if synthetic_task(data_cfg):
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


def _check_pretrain_source(pretrain_cfg: ml_collections.ConfigDict | None, task_name: str) -> None:
    """pretrain.weight > 0 needs a text source: ValueError naming the keys when there is none."""
    if pretrain_cfg is None:
        return
    check_keys(pretrain_cfg, PRETRAIN_KEYS, "config.pretrain")
    if pretrain_cfg.get("jsonl") and pretrain_cfg.get("from_train"):
        raise ValueError(f"config.pretrain.jsonl={pretrain_cfg.jsonl!r} and pretrain.from_train=True both "
                         "give the pretraining text; set one")
    if pretrain_cfg.get("weight") and not pretrain_cfg.get("jsonl") and not pretrain_cfg.get("from_train") \
            and not task_name:
        raise ValueError(
            "config.pretrain.weight > 0 needs pretrain.jsonl (text records), or pretrain.from_train=True "
            "(the training records' prompt + chosen response as text), unless the records are a synthetic "
            "task's (data.task)")


class _TrainTexts:
    """{"text": prompt + chosen response} of each training record, made when read (random access)."""

    def __init__(self, train: Sequence[Mapping[str, Any]]) -> None:
        self.train = train

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, index: int) -> dict[str, str]:
        return {"text": train_text(self.train[index])}


def train_text(record: Mapping[str, Any]) -> str:
    """A preference record as plain text: its prompt as every objective renders it (a dialogue turn
    by turn, `dialogue.render`; a plain prompt then a new line), then the chosen response."""
    prompt, chosen = _as_text(record.get("prompt", "")), _as_text(record["chosen"]).strip()
    if not prompt.strip():
        return chosen
    return examples.format_prompt(prompt) + chosen


def _pretrain_texts(pretrain_cfg: ml_collections.ConfigDict | None, task: synthetic.Task | None,
                    seed: int, train: Sequence[Mapping[str, Any]] = (),
                    schema: str = "preference") -> Sequence[dict[str, str]] | None:
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
    if pretrain_cfg.get("from_train"):
        if schema != "preference":
            raise ValueError(f"config.pretrain.from_train=True needs preference records (prompt, chosen), "
                             f"but the training data are {schema!r} records; give pretrain.jsonl instead")
        log.info("pretraining text: prompt + chosen response of the %d training records "
                 "(pretrain.from_train)", len(train))
        return _TrainTexts(train)
    if task is None:
        _check_pretrain_source(pretrain_cfg, "")
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
    if not isinstance(pretrain, _TrainTexts):  # from_train's texts are the records' own, counted above
        corpus += [pretrain[i]["text"] for i in range(min(len(pretrain or ()), TOKENIZER_SAMPLE))]
    return corpus


def _as_text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def use_chat_template(tokenizer: Tokenizer) -> None:
    """Makes the run's examples (`examples.prompt_template`) and its saved prompt template render
    prompts through the tokenizer's own chat template (config.data.prompt_template="chat_template")."""
    source = tokenizer.chat_template
    if source is None:
        raise ValueError(f"config.data.prompt_template='chat_template': {tokenizer!r} has no chat template "
                         f"(no chat_template.jinja, and no chat_template in tokenizer_config.json)")
    ids = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "unk_token": tokenizer.unk_id,
           "pad_token": tokenizer.pad_id}
    special = {name: None if i is None else tokenizer.id_to_token(i) for name, i in ids.items()}
    tokenizer.prompt_template = dialogue.chat_prompt_template(source, special)


def _tokenizer(data_cfg: ml_collections.ConfigDict, workdir: epath.Path, corpus,
               train: Sequence[Mapping[str, Any]] = ()) -> Tokenizer:
    """The workdir's tokenizer when resuming (ids must not change), else a given or new one."""
    saved = workdir / "tokenizer"
    if saved.exists():
        return Tokenizer.load(saved)
    if data_cfg.tokenizer:
        tokenizer = Tokenizer.load(data_cfg.tokenizer)
    else:
        tokenizer = train_sentencepiece(corpus(), vocab_size=data_cfg.vocab_size)
        if data_cfg.dataset and data_cfg.vocab_size < REAL_TEXT_VOCAB:
            _warn_small_vocab(data_cfg, tokenizer, train)
    tokenizer.save_pretrained(saved)
    return tokenizer


def _warn_small_vocab(data_cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
                      train: Sequence[Mapping[str, Any]]) -> None:
    """A tokenizer of few pieces trained on a data set's real text: say what it costs in length."""
    lengths = [len(tokenizer.encode(text)) for text in
               (_record_text(train[i]) for i in range(min(len(train), LENGTH_SAMPLE))) if text]
    median = f"a prompt and its response take {np.median(lengths):.0f} tokens (median of {len(lengths)} " \
             f"training records); " if lengths else ""
    log.warning(
        "config.data.vocab_size=%d trained a tokenizer of %d pieces on data.dataset=%r: %sthe default size "
        "suits the bundled synthetic tasks, and real text is about 3x longer in tokens at this size than "
        "at 8000. Set a larger one (e.g. --config.data.vocab_size=8000) so that more of each sequence fits "
        "seq_len, or data.tokenizer / init_from for a pretrained model's tokenizer",
        data_cfg.vocab_size, tokenizer.vocab_size, data_cfg.dataset, median)


def _record_text(record: Mapping[str, Any]) -> str:
    """A record's prompt and (first) response as one text, for length statistics."""
    response = record.get("chosen", record.get("text", ""))
    responses = record.get("responses")
    if not response and responses is not None and len(responses):
        response = responses[0]
    return _as_text(record.get("prompt", "")) + _as_text(response)
