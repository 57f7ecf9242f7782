"""A run directory in a bucket (a real GCS server on localhost): train, kill -9, resume exactly."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_train import DEFAULT, REPO, TINY, _config

from jaxalign import workdir as workdir_lib
from jaxalign.train import loop


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def test_bucket_workdir_resumes_after_kill_9_exactly(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a `gs:` directory would appear here if a path lost its scheme
    local = loop.train(_config("--config.total_steps=6"), tmp_path / "local")
    assert local["status"] == "done"
    workdir = bucket / "run"
    argv = [sys.executable, "-m", "jaxalign.cli", "train", "--config", str(DEFAULT),
            "--workdir", str(workdir), *TINY, "--config.total_steps=6"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 240
        checkpoints = workdir / "checkpoints"
        while not (checkpoints.exists() and workdir_lib.committed_steps(workdir)):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
        time.sleep(random.Random().uniform(0, 0.5))  # a random moment after the first save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    summary = loop.train(_config("--config.total_steps=6"), workdir)
    assert summary["status"] == "done" and summary["step"] == 6
    assert _losses(workdir) == _losses(tmp_path / "local")  # bitwise, as from a local disk
    assert workdir_lib.committed_steps(workdir) == [3, 6]
    assert (workdir / "tokenizer").is_dir() and (workdir / "config.json").is_file()
    assert any((workdir / "tensorboard").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local"]  # nothing local beside it
    assert not Path(REPO / "gs:").exists()
