"""Weights & Biases tracking (config.logging.wandb), offline: the run logs what metrics.jsonl holds,
at the same steps, with the config attached; a resumed run continues the same W&B run and sends no
step twice; a missing wandb package is one clear error before anything is written."""

import json
import struct
import sys
from pathlib import Path

import pytest

from jaxalign import config as config_lib
from jaxalign.train import loop, metrics
from jaxalign.train.defaults import logging_config

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "experiments" / "default.py"
TINY = [  # tests/test_train.py's tiny run
    "--config.model.preset=tiny", "--config.batch_size=8", "--config.seq_len=64",
    "--config.data.num_train=200", "--config.data.num_eval=4", "--config.data.vocab_size=300",
    "--config.optimizer.schedule=constant", "--config.optimizer.warmup_steps=0",
    "--config.log_every=1", "--config.checkpoint_every=3", "--config.num_samples=0",
]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb_dir").mkdir()
    yield
    wandb.teardown()  # W&B reads its settings (WANDB_DIR) once per process setup


def _config(*overrides, project="jaxalign-test"):
    config = config_lib.load_config(DEFAULT, [*TINY, *overrides])
    config.logging = logging_config(project, mode="offline", tags=["test"])
    return config


def _records(path: Path):
    """The records of a .wandb file: W&B's LevelDB-log framing (32 KiB blocks; each chunk a 7-byte
    header of CRC-32, length and kind: 1 full, 2 first, 3 middle, 4 last) after a 7-byte file header."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buffer, block = 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # the zero padding of a block's end
            pos += left - 7
            continue
        buffer += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buffer)
            yield record
            buffer = b""


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _runs(wandb_dir: Path):
    """[(run id, config, {step: {key: value}})] of each offline run file, in the order they started."""
    out = []
    for file in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run_id, config, history = None, {}, {}
        for record in _records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
                config = {_key(item): json.loads(item.value_json) for item in record.run.config.update}
            elif kind == "history":
                row = {_key(item): json.loads(item.value_json) for item in record.history.item}
                history[row.pop("_step")] = {k: v for k, v in row.items() if not k.startswith("_")}
        out.append((run_id, config, history))
    return out


def _metrics(workdir: Path):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row.pop("step"): row for row in rows}


def test_train_logs_metrics_to_wandb_and_a_resume_continues_the_run(tmp_path):
    workdir = tmp_path / "run"
    loop.train(_config("--config.total_steps=3"), workdir)
    first_id = json.loads((workdir / "wandb_run.json").read_text())["id"]
    loop.train(_config("--config.total_steps=5"), workdir)  # resumes at the checkpoint of step 3

    runs = _runs(tmp_path / "wandb_dir")
    assert [run_id for run_id, _, _ in runs] == [first_id, first_id]  # one W&B run, resumed
    assert json.loads((workdir / "wandb_run.json").read_text()) == {"id": first_id, "logged_through": 5}
    config = runs[0][1]
    assert config["objective"] == {"name": "sft", "normalization": "token"}
    assert config["total_steps"] == 3 and runs[1][1]["total_steps"] == 5
    assert config["logging"]["wandb"]["project"] == "jaxalign-test"

    logged = [history for _, _, history in runs]
    assert sorted(logged[0]) == [1, 2, 3] and sorted(logged[1]) == [4, 5]  # no step sent twice
    expected = _metrics(workdir)
    assert sorted(expected) == [1, 2, 3, 4, 5]
    for step, row in expected.items():
        got = logged[0 if step <= 3 else 1][step]
        assert got.keys() == row.keys(), step
        assert got == pytest.approx(row), step


def test_steps_logged_before_a_crash_are_not_sent_again(tmp_path, caplog):
    """A run that logged steps 1-5, then resumes from a checkpoint of step 3: W&B keeps steps 4 and 5
    as first sent (it accepts only increasing steps); metrics.jsonl holds the rerun's values."""
    opts = metrics.wandb_config(logging_config("jaxalign-test", mode="offline"))
    writer = metrics.MetricsWriter(tmp_path, total_steps=7, wandb=opts, run_config={"seed": 0})
    for step in range(1, 6):
        writer.write(step, {"loss": float(step)})
    writer.close()
    writer = metrics.MetricsWriter(tmp_path, total_steps=7, start_step=3, wandb=opts, run_config={"seed": 0})
    assert "already holds steps up to 5" in caplog.text
    for step in range(4, 8):
        writer.write(step, {"loss": 10.0 * step})
    writer.close()

    (id1, _, first), (id2, _, second) = _runs(tmp_path / "wandb_dir")
    assert id1 == id2
    assert first == {s: {"loss": float(s)} for s in range(1, 6)}
    assert second == {6: {"loss": 60.0}, 7: {"loss": 70.0}}
    assert {s: row["loss"] for s, row in _metrics(tmp_path).items()} == {1: 1, 2: 2, 3: 3, 4: 40, 5: 50,
                                                                          6: 60, 7: 70}


def test_a_missing_wandb_package_stops_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ImportError, match=r"config.logging.wandb.project='jaxalign-test'.*"
                                          r"pip install 'jaxalign\[wandb\]'"):
        loop.train(_config("--config.total_steps=3"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, message", [
    ({"wandb": {"project": "p", "mode": "cloud"}}, r"config.logging.wandb.mode='cloud'"),
    ({"wandb": {"project": "p", "team": "x"}}, r"unknown key\(s\) \['team'\] in config.logging.wandb"),
    ({"wandb": {"project": "p", "tags": "a,b"}}, r"config.logging.wandb.tags='a,b' must be a list"),
    ({"tensorboard": {}}, r"unknown key\(s\) \['tensorboard'\] in config.logging"),
])
def test_bad_wandb_options_are_named(section, message):
    with pytest.raises((ValueError, config_lib.ConfigError), match=message):
        metrics.wandb_config(section)


def test_wandb_is_off_without_a_project():
    assert metrics.wandb_config(None) is None
    assert metrics.wandb_config(logging_config()) is None
