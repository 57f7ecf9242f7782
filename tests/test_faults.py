"""Fault injection: every fault ends in a run equal to an uninterrupted one, or a loud failure with
nothing lost. Faults: kill -9 at random moments (saves included), two runs in one workdir, stale
locks, a changed config on resume, a truncated checkpoint file, a full disk, Ctrl-C, no loss tokens.

CI injects FAULT_KILLS = 10 kills; a longer soak: JAXALIGN_FAULT_KILLS=100 python -m pytest
tests/test_faults.py -k kill_9 -s.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from test_train import DEFAULT, REPO, TINY, _config, _losses

from jaxalign import config as config_lib
from jaxalign import paths
from jaxalign.train import lock as lock_lib
from jaxalign.train import loop
from jaxalign.train.checkpointer import Checkpointer

FAULT_KILLS = int(os.environ.get("JAXALIGN_FAULT_KILLS", "10"))
STEPS = 12
# Saves at every step, so that kills land inside saves as often as between them.
FAULTY = [*TINY, "--config.checkpoint_every=1", "--config.keep_checkpoints=2",
          f"--config.total_steps={STEPS}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    assert loop.train(config_lib.load_config(DEFAULT, FAULTY), workdir)["status"] == "done"
    return _losses(workdir)


def _start(workdir, cache, *extra):
    argv = [sys.executable, "-m", "jaxalign.cli", "train", "--config", str(DEFAULT), "--workdir",
            str(workdir), "--compilation-cache", str(cache), *FAULTY, *extra]
    log = tempfile.TemporaryFile("w+")  # not a pipe: a full one would block the child
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log
    return proc


def _output(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()


def _logged_steps(workdir) -> int:
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_kill_9_at_random_moments_resumes_exactly(reference, tmp_path):
    """FAULT_KILLS kills, each at a random moment after the run logged a new step (training, saving,
    or both at once); then the run is let finish. Its losses equal the uninterrupted run's bitwise."""
    rng, workdir, kills = random.Random(), tmp_path / "run", 0
    for _ in range(FAULT_KILLS):
        before = _logged_steps(workdir)
        proc = _start(workdir, tmp_path / "cache")
        deadline = time.time() + 240
        while _logged_steps(workdir) <= before and proc.poll() is None:
            assert time.time() < deadline, "no new step within 240 s"
            time.sleep(0.01)
        if proc.poll() is not None:  # finished before the kill: nothing left to interrupt
            assert proc.returncode == 0, _output(proc)
            break
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= min(3, FAULT_KILLS)
    proc = _start(workdir, tmp_path / "cache")
    assert proc.wait() == 0, _output(proc)
    assert _losses(workdir) == reference
    assert not (workdir / lock_lib.LOCK).exists()  # released at the end; stale ones were broken
    print(f"faults: {kills} kill -9, exact resume")


def test_two_runs_in_one_workdir_the_second_is_refused(reference, tmp_path):
    first = _start(tmp_path, tmp_path.parent / "cache2")
    try:
        deadline = time.time() + 240
        while not (tmp_path / lock_lib.LOCK).exists():
            assert first.poll() is None and time.time() < deadline, _output(first)
            time.sleep(0.01)
        with pytest.raises(lock_lib.WorkdirLockedError,
                           match=rf"another run holds this workdir \(host {socket.gethostname()}, "
                                 rf"pid {first.pid}, started .*delete .*run.lock to break the lock"):
            loop.train(config_lib.load_config(DEFAULT, FAULTY), tmp_path)
    finally:
        assert first.wait() == 0, _output(first)
    assert _losses(tmp_path) == reference  # one run's lines only, in order


def test_a_stale_lock_is_broken_a_live_one_from_another_host_is_not(reference, tmp_path, caplog):
    lock = tmp_path / lock_lib.LOCK
    fresh = {"host": "other-host", "pid": 1, "token": "t", "started": "earlier", "heartbeat": time.time()}
    lock.write_text(json.dumps(fresh))
    with pytest.raises(lock_lib.WorkdirLockedError, match="host other-host, pid 1"):
        loop.train(config_lib.load_config(DEFAULT, FAULTY), tmp_path)
    lock.write_text(json.dumps({**fresh, "heartbeat": time.time() - lock_lib.STALE_SECONDS - 1}))
    assert loop.train(config_lib.load_config(DEFAULT, FAULTY), tmp_path)["status"] == "done"
    assert "breaking a stale lock (host other-host" in caplog.text and "no heartbeat for over" in caplog.text
    assert _losses(tmp_path) == reference and not lock.exists()


def test_bucket_lock_names_its_holder(bucket):
    with lock_lib.WorkdirLock(bucket / "run"):
        with pytest.raises(lock_lib.WorkdirLockedError, match=f"pid {os.getpid()}"):
            lock_lib.WorkdirLock(bucket / "run").acquire()  # same pid alive: held
    assert not (bucket / "run" / lock_lib.LOCK).exists()


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path):
    loop.train(_config("--config.total_steps=3"), tmp_path)
    saved = (tmp_path / "config.json").read_text()
    with pytest.raises(config_lib.ConfigError, match=r"changed: batch_size, seq_len\).*total_steps"):
        changed = ("--config.batch_size=4", "--config.seq_len=32")
        loop.train(_config("--config.total_steps=3", *changed), tmp_path)
    assert (tmp_path / "config.json").read_text() == saved  # nothing overwritten
    summary = loop.train(_config("--config.total_steps=5"), tmp_path)  # extending is allowed
    assert summary["status"] == "done" and summary["step"] == 5


def test_a_truncated_checkpoint_file_falls_back_to_the_one_before(reference, tmp_path, caplog):
    config = config_lib.load_config(DEFAULT, [*FAULTY, "--config.total_steps=6"])
    loop.train(config, tmp_path)
    arrays = [p for p in (tmp_path / "checkpoints" / "6" / "state").rglob("*")
              if p.is_file() and "ocdbt.process_0/d" in str(p)]
    for array in arrays:  # every data file of the latest step cut in half
        os.truncate(array, array.stat().st_size // 2)
    loop.train(config_lib.load_config(DEFAULT, FAULTY), tmp_path)
    assert "checkpoint 6 in" in caplog.text and "is unreadable" in caplog.text
    assert (tmp_path / "checkpoints" / "unreadable-6").is_dir()  # kept, out of the way
    assert _losses(tmp_path) == reference


def test_a_full_disk_fails_loudly_and_the_rerun_is_exact(reference, tmp_path, monkeypatch):
    """ENOSPC on the 8th metrics write (no tmpfs can be mounted in CI): the run stops with the error;
    its checkpoints are intact and the rerun ends as the uninterrupted run."""
    real_append, writes = paths.append, []

    def append(p, data):
        writes.append(p)
        if len(writes) == 8:
            raise OSError(28, "No space left on device", str(p))
        real_append(p, data)

    monkeypatch.setattr(paths, "append", append)
    with pytest.raises(OSError, match="No space left on device"):
        loop.train(config_lib.load_config(DEFAULT, FAULTY), tmp_path)
    monkeypatch.setattr(paths, "append", real_append)
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 7
    loop.train(config_lib.load_config(DEFAULT, FAULTY), tmp_path)
    assert _losses(tmp_path) == reference


def test_ctrl_c_saves_like_sigterm(tmp_path):
    def interrupt():
        while not (tmp_path / "metrics.jsonl").exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    summary = loop.train(_config("--config.total_steps=200"), tmp_path)
    assert summary["status"] == "preempted" and 1 <= summary["step"] < 200
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == summary["step"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_run_without_loss_tokens_stops_in_its_first_steps(tmp_path):
    data = tmp_path / "long.jsonl"
    record = {"prompt": "Sort ascending: " + " ".join("9" * 40), "chosen": "1 2", "rejected": "2 1"}
    data.write_text("\n".join(json.dumps(record) for _ in range(40)) + "\n")
    config = _config("--config.total_steps=50", "--config.seq_len=16", "--config.data.task=",
                     f"--config.data.jsonl={data}")
    with pytest.raises(ValueError, match=r"step 3 has no token with a loss weight.*cut off"):
        loop.train(config, tmp_path / "run")


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from jaxalign import cli

    lock = tmp_path / lock_lib.LOCK
    lock.write_text(json.dumps({"host": "other-host", "pid": 7, "token": "t", "started": "s",
                                "heartbeat": time.time()}))
    argv = ["train", "--config", str(DEFAULT), "--workdir", str(tmp_path), *FAULTY]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"jaxalign: error: {tmp_path}: another run holds this workdir (host other-host")
    assert not any("Traceback" in line for line in err)
    with pytest.raises(lock_lib.WorkdirLockedError):
        cli.main(["--debug", *argv])


def test_a_cpu_peak_measured_on_a_busy_machine_is_measured_again(tmp_path, monkeypatch, caplog):
    from jaxalign.train import metrics as metrics_lib

    peaks = iter([1.0, 1e15])  # busy at the start (far too low), then the real peak
    monkeypatch.setattr(metrics_lib, "matmul_peak_flops", lambda n, dtype: next(peaks))
    loop.train(_config("--config.total_steps=2"), tmp_path)
    mfus = [json.loads(line)["mfu"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < m <= 1 for m in mfus) and "MFU over 100%: the CPU peak" in caplog.text


def test_import_hf_names_a_truncated_safetensors_file_and_warns_without_a_tokenizer(tmp_path, capsys):
    import jaxalign
    from jaxalign import cli

    hf = tmp_path / "hf"
    from jaxalign.models import get_preset

    jaxalign.init(get_preset("tiny", vocab_size=300)).save_hf(hf)  # no demo tokenizer: it has 256 ids
    weights = hf / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:1000])
    assert cli.main(["import-hf", "--from", str(hf), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"jaxalign: error: {weights}: not a readable safetensors file")
    assert not (tmp_path / "out").exists()
    weights.write_bytes(intact)
    assert cli.main(["import-hf", "--from", str(hf), "--out", str(tmp_path / "out")]) == 0
    assert "holds no tokenizer" in capsys.readouterr().err
