"""experiments/coh_hh.py: its arguments, the prepared copy of the committed HH-RLHF slice, and a
few Chain of Hindsight steps on that slice with the config as it is (8000 pieces, seq_len 512,
pretraining text from the training dialogues)."""

import gzip
import json
import tempfile
from pathlib import Path

import pytest

from jaxalign import config as config_lib
from jaxalign.train import loop

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "coh_hh.py"
SLICE = Path(__file__).resolve().parent / "data" / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"


@pytest.fixture
def tmpdir_for_slice(tmp_path, monkeypatch):
    """The slice's prepared copy goes to the temporary directory: make that this test's own."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _load(arg="", *overrides):
    return config_lib.load_config(f"{EXPERIMENT}:{arg}" if arg else str(EXPERIMENT), list(overrides))


def test_arguments(tmpdir_for_slice):
    smoke = _load()
    assert smoke.data.dataset == "hh_rlhf" and smoke.data.task is None and smoke.data.num_train == 0
    assert Path(smoke.data.source_dir).parent == tmpdir_for_slice  # the prepared slice, not the repo
    assert smoke.data.vocab_size == 8000 and smoke.seq_len == 512 and smoke.model.preset == "tiny"
    assert smoke.pretrain.from_train and 0 < smoke.pretrain.weight < 1 and not smoke.pretrain.jsonl
    assert smoke.optimizer.warmup_steps == 0 and smoke.optimizer.warmup_fraction == 0.1
    assert smoke.objective.name == "coh" and smoke.objective.format == "jaxalign"
    assert _load("format=official").objective.format == "official"
    with pytest.raises(config_lib.ConfigError, match="format=official is an option of objective=coh"):
        _load("objective=sft,format=official")

    pod = _load("pod")
    assert pod.data.source_dir == ""  # a placeholder: training stops naming data.source_dir
    assert pod.seq_len == 1024 and pod.model.hidden_size == 768 and pod.total_steps == 2000
    assert _load("pod,source_dir=/data/hh-rlhf").data.source_dir == "/data/hh-rlhf"
    assert _load("source_dir=/data/hh-rlhf").data.source_dir == "/data/hh-rlhf"
    dpo = _load("objective=dpo")
    assert dpo.objective.name == "dpo" and dpo.data.dataset == "hh_rlhf"
    assert _load("pod, objective=sft").objective.name == "sft"
    assert _load("", "--config.total_steps=60").optimizer.total_steps == 60  # the warmup follows it
    for bad in ("big", "objective=ppo", "source_dir=", "pods", "format=paper"):
        with pytest.raises(config_lib.ConfigError, match=f"unknown argument '{bad}'"):
            _load(bad)


def test_slice_source_splits_the_slice_outside_the_repository(tmpdir_for_slice):
    source = Path(_load().data.source_dir)
    lines = gzip.decompress(SLICE.read_bytes()).decode("utf-8").splitlines(keepends=True)
    train = (source / "harmless-base" / "train.jsonl").read_text(encoding="utf-8")
    test = (source / "harmless-base" / "test.jsonl").read_text(encoding="utf-8")
    assert train == "".join(lines[:250]) and test == "".join(lines[250:]) and len(lines) == 300
    before = (source / "harmless-base" / "train.jsonl").stat().st_mtime_ns
    assert Path(_load().data.source_dir) == source  # named by the slice's content: the same again
    assert (source / "harmless-base" / "train.jsonl").stat().st_mtime_ns == before  # not rewritten
    assert sorted(p.name for p in (source / "harmless-base").iterdir()) == ["test.jsonl", "train.jsonl"]


def test_coh_steps_on_the_slice(tmpdir_for_slice, tmp_path, devices):
    """The official format here: its examples per record depend on the record, it adds no BOS, its
    loss is per row and FCM masks the pretraining stream too (the jaxalign format's CoH path is the
    one every other CoH training test takes)."""
    config = _load("format=official", "--config.total_steps=2", "--config.pretrain.batch_size=8",
                   "--config.log_every=1", "--config.num_samples=1", "--config.max_new_tokens=4")
    summary = loop.train(config, tmp_path / "run")
    assert summary["step"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    assert {"feedback/loss", "pretrain/loss", "feedback/num_sequences"} <= set(last)
    assert all(v == v for k, v in last.items() if k.endswith("loss"))  # finite, not NaN
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["dataset"] == "hh_rlhf" and saved["pretrain"]["from_train"] is True
    assert saved["objective"]["format"] == "official"
    model = json.loads((tmp_path / "run" / "jaxalign_model.json").read_text())["model"]
    assert model["vocab_size"] >= 8000  # the tokenizer's 8000 pieces (+ any special tokens)
