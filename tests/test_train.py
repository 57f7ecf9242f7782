"""The trainer end to end: exact resume (also after kill -9), SIGTERM, NaN, bad records, CLI."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import jaxalign
from jaxalign import cli
from jaxalign import config as config_lib
from jaxalign.data.packing import TruncationWarning
from jaxalign.train import loop, metrics, run
from jaxalign.train.checkpointer import Checkpointer

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "experiments" / "default.py"
# Tiny and quick; a constant schedule so a run cut short and resumed sees the same lr.
TINY = [
    "--config.model.preset=tiny", "--config.batch_size=8", "--config.seq_len=64",
    "--config.data.num_train=200", "--config.data.num_eval=4", "--config.data.vocab_size=300",
    "--config.optimizer.schedule=constant", "--config.optimizer.warmup_steps=0",
    "--config.log_every=1", "--config.checkpoint_every=3", "--config.num_samples=0",
]


def _config(*overrides):
    return config_lib.load_config(DEFAULT, [*TINY, *overrides])


def _losses(workdir):
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run."""
    workdir = tmp_path_factory.mktemp("reference")
    summary = loop.train(_config("--config.total_steps=6"), workdir)
    assert summary["status"] == "done" and summary["step"] == 6
    return _losses(workdir)


def test_resume_is_exact(reference, tmp_path):
    loop.train(_config("--config.total_steps=3"), tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 3
    loop.train(_config("--config.total_steps=6"), tmp_path)
    assert _losses(tmp_path) == reference  # bitwise, data order included
    assert len(reference) == 6 and reference[6] < reference[1]


def test_resume_drops_a_torn_metrics_line(reference, tmp_path, caplog):
    """What a crash or a full disk leaves at the end of metrics.jsonl does not block the resume."""
    loop.train(_config("--config.total_steps=3"), tmp_path)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 1.')
    loop.train(_config("--config.total_steps=6"), tmp_path)
    assert _losses(tmp_path) == reference
    assert "metrics.jsonl:4: skipping a torn last line" in caplog.text


def test_a_corrupt_metrics_line_before_others_is_named(tmp_path):
    loop.train(_config("--config.total_steps=3"), tmp_path)
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        loop.train(_config("--config.total_steps=6"), tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 3  # nothing lost


def test_resume_after_kill_9_is_exact(reference, tmp_path):
    argv = [sys.executable, "-m", "jaxalign.cli", "train", "--config", str(DEFAULT),
            "--workdir", str(tmp_path), *TINY, "--config.total_steps=6"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "checkpoints" / "3").exists() and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(random.Random().uniform(0, 0.5))  # a random moment after the first save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    loop.train(_config("--config.total_steps=6"), tmp_path)
    assert _losses(tmp_path) == reference


def test_sigterm_saves_and_stops_cleanly(tmp_path):
    def preempt():
        while not (tmp_path / "metrics.jsonl").exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt, daemon=True).start()
    summary = loop.train(_config("--config.total_steps=200"), tmp_path)
    assert summary["status"] == "preempted" and 1 <= summary["step"] < 200
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == summary["step"]
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_nan_loss_sets_aside_the_diverged_checkpoint_and_the_advice_works(tmp_path):
    """lr 1e30: the weights after step 1 are finite (~1e30) but give loss nan at step 2. That checkpoint
    is moved aside, so rerunning with a sane learning rate, as the message advises, trains."""
    config = _config("--config.total_steps=6", "--config.checkpoint_every=1",
                     "--config.optimizer.peak_lr=1e30", "--config.optimizer.grad_clip_norm=0.0")
    with pytest.raises(run.NonFiniteLossError,
                       match=r"loss is nan at step 2.*checkpoint 1 gives that loss.*resumes from none"):
        loop.train(config, tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == []
    assert (tmp_path / "checkpoints" / "diverged-1" / "state").is_dir()  # kept for a look, not listed
    rerun = loop.train(_config("--config.total_steps=6", "--config.checkpoint_every=1"), tmp_path)
    assert rerun["status"] == "done"


def test_progress_bar_shows_mfu_in_percent():
    shown = metrics.progress_postfix({"step": 3, "loss": 1.234567, "lr": 1e-3, "tokens_per_s": 51234.5,
                                      "mfu": 0.08078, "grad_norm": 2.0})
    assert shown == {"loss": "1.235", "lr": "0.001", "tokens_per_s": "5.123e+04", "mfu": "8.1%"}


def test_malformed_record_is_exit_2_naming_file_and_line(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    good = json.dumps({"prompt": "Sort ascending: 2 1", "chosen": "1 2", "rejected": "2 1"})
    data.write_text(good + "\n" + good + "\n" + '{"prompt": "x", "chosen": 3, "rejected": "y"}\n')
    workdir = tmp_path / "run"
    argv = ["train", "--config", str(DEFAULT), "--workdir", str(workdir), *TINY,
            "--config.data.task=", f"--config.data.jsonl={data}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"jaxalign: error: {data}:3: field 'chosen' must be a string, got int"
    assert not (workdir / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.totl_steps=3", "unknown config key 'totl_steps'"),
        ("--config.model.nonsense=3", "preset 'tiny': unknown key(s) ['nonsense']"),
        ("--config.data.task=chess", "unknown synthetic task 'chess'"),
        ("--config.mesh=3,-1,1", "does not divide"),
        ("--config.log_every=0", "config.log_every=0 must be a positive integer"),
        ("--config.checkpoint_every=-5", "config.checkpoint_every=-5 must be a positive integer"),
        ("--config.seq_len=4096", "config.seq_len=4096 is longer than the model's context of 512 positions"),
    ],
)
def test_bad_config_is_one_clear_error(override, message, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--config", str(DEFAULT), "--workdir", str(run), *TINY, override]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not any(run.glob("*")), "a refused config wrote into the workdir"


def test_samples_and_score_are_written(tmp_path, monkeypatch):
    summary = loop.train(_config("--config.total_steps=2", "--config.num_samples=2",
                                 "--config.max_new_tokens=4"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0.0 <= row["score"] <= 1.0 for row in rows)
    assert summary["score"] == pytest.approx(np.mean([row["score"] for row in rows]))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["total_steps"] == 2 and config["model"]["preset"] == "tiny"
    # The workdir loads in the notebook API and answers as the trainer's own samples did,
    # because it keeps the training prompt template.
    lm = jaxalign.load(tmp_path, mesh="dp:2,fsdp:2,tp:2")
    again = lm.generate([row["prompt"] for row in rows], max_new_tokens=4)
    assert [t.strip() for t in again] == [row["response"] for row in rows]
    # The model is described in the workdir (shape, template, objective) and restored without an
    # optimizer; orbax reads absolute paths only, so a relative workdir path must load as well.
    described = json.loads((tmp_path / "jaxalign_model.json").read_text())
    assert described["objective"] == config["objective"] and described["prompt_template"] == "{prompt}\n"
    monkeypatch.chdir(tmp_path.parent)
    relative = jaxalign.load(tmp_path.name, mesh="dp:2,fsdp:2,tp:2")
    np.testing.assert_array_equal(relative.logits([[1, 2, 3]]), lm.logits([[1, 2, 3]]))


def test_train_reports_what_truncation_to_seq_len_cut(tmp_path, caplog):
    """Rows of 24 are too short for most sort examples: a plain `jaxalign train` logs what packing cut,
    warns (most of the loss weight is lost), and the first metrics line after the report has the kept
    share."""
    argv = ["train", "--config", str(DEFAULT), "--workdir", str(tmp_path), *TINY,
            "--config.total_steps=2", "--config.seq_len=24"]
    with caplog.at_level("INFO", logger="jaxalign.data.packing"), \
            pytest.warns(TruncationWarning, match=r"seq_len=24 cut .* raise seq_len"):
        assert cli.main(argv) == 0
    line = next(r.getMessage() for r in caplog.records if "examples cut to seq_len=24" in r.getMessage())
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "weighted_tokens_kept" not in rows[0]  # reported after 2 steps here: the last
    kept = rows[1]["weighted_tokens_kept"]
    assert 0 < kept < 0.9 and f"{100 * kept:.1f}% of the weighted (loss) tokens kept" in line
    assert 0 < rows[1]["examples_truncated_fraction"] <= 1
