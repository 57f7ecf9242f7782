"""Chain of Hindsight on Anthropic HH-RLHF dialogues, from a model trained from scratch: a CPU smoke
run on the committed real slice, or a real-size run on a clone of the data.

    jaxalign train --config experiments/coh_hh.py --workdir workdirs/coh_hh              # smoke, CPU
    jaxalign train --config experiments/coh_hh.py:objective=dpo --workdir workdirs/coh_hh_dpo
    jaxalign train --config experiments/coh_hh.py:format=official --workdir workdirs/coh_hh_official
    jaxalign train --config experiments/coh_hh.py:pod,source_dir=/data/hh-rlhf --workdir workdirs/coh_hh_pod
    jaxalign eval --config experiments/coh_hh.py --checkpoint workdirs/coh_hh

``get_config(arg)``: ``arg`` is a comma-separated list of
- ``smoke`` (default) or ``pod``: the size (below);
- ``objective=NAME``: ``coh`` (default), ``sft``, ``sft_pos_neg``, ``unlikelihood`` or ``dpo``, the
  same data and schedule with another objective of the CoH paper's Table 4 (DPO's reference is the
  initial model, here the random one: a plumbing check, not a baseline);
- ``format=NAME``: CoH's ``jaxalign`` (default) or ``official`` rendering (below);
- ``source_dir=PATH``: an Anthropic/hh-rlhf clone (subset directories with ``train.jsonl.gz`` and
  ``test.jsonl.gz``), or one subset's directory. ``--config.data.source_dir=PATH`` does the same.

Without ``source_dir`` the smoke size reads the committed slice ``tests/data/hh_rlhf/harmless-base``
(300 real dialogues of harmless-base's test file; see its README.md). The hh_rlhf builder wants a
train and a test file per subset and the slice has only the test file, so `slice_source` writes a
prepared copy outside the repository, ``$TMPDIR/jaxalign-hh-rlhf-slice-<hash>/harmless-base``: the
first 250 lines as ``train.jsonl`` and the last 50 as ``test.jsonl`` (held out, and the ids name
lines of these files, not upstream's). The directory is named by the slice's content, so reloading
the config finds the same source and a resumed run its tfds build. ``pod`` has no default source:
the run stops with an error naming ``data.source_dir`` until it is given.

Choices:
- data: ``data.dataset = "hh_rlhf"``, every training record (``num_train = 0``); prompts are the
  dialogue so far, as the builder cuts them, rendered turn by turn (docs/data.md#dialogues).
- format: ``jaxalign`` by default: the earlier turns are context and only the compared replies are
  trained, under their markers; its loss is per example. ``official`` renders as the reference
  code does (every assistant turn trained, shared turns twice in pn/np; per-row loss; FCM on the
  pretraining stream too; docs/methods.md#two-formats-jaxalign-and-official): use it to reproduce
  the reference, ``jaxalign`` to train what the comparisons say.
- tokenizer: sentencepiece BPE of 8000 pieces trained on the training records (``data.vocab_size``;
  the slice has text enough for all 8000). The default 384 is sized for the synthetic tasks: on the
  slice's training records a prompt with its chosen response is a median 347 tokens at 384 pieces
  and 125 at 8000.
- seq_len: 512 for the smoke size keeps 96.9% of the feedback (loss-weighted) tokens of the slice's
  CoH training sequences (variants p, n, pn, np at 8000 pieces: length p50 153, p90 344, p95 413,
  max 958 tokens; seq_len 384 would keep 91.7%, and 512 at 384 pieces 53.8%); 1024 for ``pod``,
  which keeps them all on the slice.
- pretraining stream: ``pretrain.from_train``, each training record's prompt + chosen response as
  plain text, with a small weight (0.25): the in-domain stand-in for the paper's pretraining data
  (The Pile / C4), which a model trained from scratch here has never seen. These are the dialogues
  the feedback stream trains on, so a large weight would mostly add SFT on the chosen responses;
  give ``--config.pretrain.from_train=False --config.pretrain.jsonl=PATH`` for a real corpus.
- warmup: 10% (smoke) / 5% (pod) of ``total_steps`` (``optimizer.warmup_fraction``), so that it
  follows ``--config.total_steps``; then cosine decay to 10%.
- smoke: the ``tiny`` preset with 8000 ids (1.1M parameters), 30 steps of 8 feedback + 4 text
  rows, peak lr 1e-3: about 2 minutes on 2 CPU cores, a check of the real-data path, not a result.
- pod: a 97M-parameter decoder (hidden 768, 12 layers, 12 heads), float32 parameters with
  bfloat16 matmuls, 128 feedback rows of 1024 tokens in 4 microbatches (`jaxalign plan`: about 49
  GiB per device on one device, less on more; each microbatch's 32 rows must split evenly over the
  devices, so lower ``microbatches`` on more than 32) + 32 text rows, 2000 steps at peak lr 3e-4,
  FSDP over every device. The full HH-RLHF train split (160,800 dialogues; at the slice's mean of
  181 tokens per CoH sequence, 4 sequences each) is about 900 steps per epoch at this batch; size
  ``total_steps`` from your data (experiments/README.md, "Steps per epoch").
- held-out prompts can be longer than seq_len: ``model.max_position_embeddings`` leaves room for
  the end-of-run samples (prompt + ``max_new_tokens``), which generation refuses past the context.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from pathlib import Path

import ml_collections

from jaxalign.data.sources import default_pretrain_config
from jaxalign.objectives.registry import default_config as objective_config
from jaxalign.train.defaults import default_train_config

SLICE = Path(__file__).resolve().parents[1] / "tests" / "data" / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"
HELD_OUT = 50  # the slice's last lines, its test split
SIZES = ("smoke", "pod")
OBJECTIVES = ("coh", "sft", "sft_pos_neg", "unlikelihood", "dpo")


def slice_source(slice_file: Path = SLICE, root: str | None = None) -> str:
    """A source directory for the hh_rlhf builder made from the slice (see the module docstring):
    ``<root>/jaxalign-hh-rlhf-slice-<hash>/harmless-base/{train,test}.jsonl``, root the temporary
    directory by default; written once (atomically), reused after. Returns the directory above the
    subset, so that record ids read ``harmless-base/train.jsonl:<line>``."""
    data = slice_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:12]
    source = Path(root or tempfile.gettempdir()) / f"jaxalign-hh-rlhf-slice-{digest}"
    subset = source / "harmless-base"
    lines = gzip.decompress(data).decode("utf-8").splitlines(keepends=True)
    splits = {"train.jsonl": lines[:-HELD_OUT], "test.jsonl": lines[-HELD_OUT:]}
    subset.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        path, text = subset / name, "".join(part)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        partial = subset / f".{name}.{os.getpid()}"
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)  # another process writing the same bytes at once is harmless
    return str(source)


FORMATS = ("jaxalign", "official")


def _parse(arg: str) -> tuple[str, str, str, str]:
    size, objective, source_dir, fmt = "smoke", "coh", "", "jaxalign"
    for item in (a.strip() for a in arg.split(",") if a.strip()):
        key, sep, value = item.partition("=")
        if not sep and key in SIZES:
            size = key
        elif sep and key == "objective" and value in OBJECTIVES:
            objective = value
        elif sep and key == "source_dir" and value:
            source_dir = value
        elif sep and key == "format" and value in FORMATS:
            fmt = value
        else:
            raise ValueError(f"unknown argument {item!r}; give a comma-separated list of "
                             f"{' or '.join(SIZES)}, objective=NAME ({', '.join(OBJECTIVES)}), "
                             f"format=NAME ({', '.join(FORMATS)}) and source_dir=PATH")
    if fmt != "jaxalign" and objective != "coh":
        raise ValueError(f"format={fmt} is an option of objective=coh, not of objective={objective}")
    return size, objective, source_dir, fmt


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    size, objective, source_dir, fmt = _parse(arg)
    pod = size == "pod"
    config = default_train_config()
    config.objective = objective_config(objective)
    if objective == "coh":
        config.objective.format = fmt
    config.init_from = ""

    config.data.dataset = "hh_rlhf"
    config.data.source_dir = source_dir or ("" if pod else slice_source())  # pod: a placeholder
    config.data.num_train = 0  # every training record
    config.data.num_eval = 1000 if pod else 16
    config.data.vocab_size = 8000

    config.pretrain = default_pretrain_config()
    config.pretrain.from_train = True  # prompt + chosen response of the training records
    config.pretrain.weight = 0.25

    config.optimizer.warmup_steps = 0
    config.optimizer.warmup_fraction = 0.05 if pod else 0.1
    if pod:
        config.total_steps = 2000
        config.batch_size = 128
        config.microbatches = 4  # 32 rows per microbatch: about 48 GiB of activations on one device
        config.seq_len = 1024
        config.pretrain.batch_size = 32
        config.model = ml_collections.ConfigDict({
            "preset": "small", "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
            "num_attention_heads": 12, "num_key_value_heads": 12, "max_position_embeddings": 4096,
            "param_dtype": "float32", "dtype": "bfloat16", "scan_layers": True,
        })
        config.optimizer.peak_lr = 3e-4
        config.checkpoint_every = 500
        config.log_every = 50
        config.max_new_tokens = 128
    else:
        config.total_steps = 30
        config.batch_size = 8
        config.seq_len = 512
        config.pretrain.batch_size = 4
        config.model = ml_collections.ConfigDict({"preset": "tiny", "max_position_embeddings": 2048})
        config.checkpoint_every = 30
        config.log_every = 5
        config.num_samples = 4
        config.max_new_tokens = 32
    return config
