"""Multi-process training on one machine: with data.sharding="global" two processes of 4 CPU
devices each train exactly as one process of 8 devices does, and a checkpoint the pair wrote
resumes in a single process; with "process" each reads its own records, resumes exactly as a
pair and approximately (resharded) alone.

Each run is a real `jaxalign train` subprocess (jax.distributed over localhost, gloo CPU
collectives), so this exercises the same path as a multi-host GPU cluster or a TPU pod.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

STEPS, RESUMED_STEPS = 6, 9
TIMEOUT_S = 240

CONFIG = f'''
import ml_collections
from experiments.default import get_config as _default


def get_config() -> ml_collections.ConfigDict:
    config = _default()
    config.model.preset = "tiny"
    config.total_steps = {STEPS}
    config.optimizer.warmup_steps = 2
    config.optimizer.total_steps = {RESUMED_STEPS}  # one schedule, so a {STEPS}-step run is a prefix
    config.batch_size = 8
    config.seq_len = 32
    config.mesh = "dp:1,fsdp:-1,tp:1"
    config.checkpoint_every = 3
    config.keep_checkpoints = 5
    config.log_every = 1
    config.num_samples = 0
    config.data.num_train = 200
    config.data.num_eval = 8
    config.data.sharding = "global"
    return config
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(config: Path, workdir: Path, devices: int, extra: list[str]) -> subprocess.Popen:
    """`workdir` may be a bucket URL (an epath.Path); the compilation cache stays beside `config`."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"  # as conftest sets for the parent
    # The resumed run compiles what the single run did: share a compilation cache.
    env["JAX_COMPILATION_CACHE_DIR"] = str(config.parent / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "jaxalign.cli", "train", "--config", str(config),
           "--workdir", str(workdir), *extra]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block the child
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).parents[1])
    proc.log = log
    return proc


def _wait(procs: list[subprocess.Popen]) -> list[str]:
    """Waits for all; once one fails or time runs out, kills the rest (a peer of a failed process
    would wait for it in a collective) and fails with every child's output; returns the outputs."""
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    for p in procs:
        p.wait()
        p.log.seek(0)
    outputs = [p.log.read() for p in procs]
    if any(p.returncode != 0 for p in procs):
        pytest.fail("\n\n".join(f"--- process {i} (rc {p.returncode}) ---\n{out}"
                                for i, (p, out) in enumerate(zip(procs, outputs, strict=True))))
    return outputs


def _single(config: Path, workdir: Path, *overrides: str) -> list[subprocess.Popen]:
    return [_launch(config, workdir, 8, list(overrides))]


def _pair(config: Path, workdir: Path, *overrides: str) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        _launch(config, workdir, 4, ["--coordinator", f"localhost:{port}", "--num-processes", "2",
                                     "--process-id", str(i), *overrides])
        for i in range(2)
    ]


def _metric(workdir: Path, name: str = "loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row[name] for row in rows}


def _params(workdir: Path, step: int):
    # Onto one device: the pair's checkpoint records devices this process does not have.
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree)
    return jax.device_get(checkpointer.restore(path, target)["params"])


def _assert_close(a, b) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted single-process run of RESUMED_STEPS; a 2-process run of STEPS (at the same
    time: both are mostly compiling); then the pair's workdir resumed in one process, and a pair on
    a mesh of tensor parallelism alone, where both processes hold the whole batch."""
    root = tmp_path_factory.mktemp("multihost")
    config = root / "tiny.py"
    config.write_text(CONFIG)
    dirs = {name: root / name for name in (
        "single", "pair", "resumed", "pair_tp", "sharded", "sharded_again", "sharded_alone")}
    sharded = "--config.data.sharding=process"
    outputs = _wait(_single(config, dirs["single"], f"--config.total_steps={RESUMED_STEPS}")
                    + _pair(config, dirs["pair"]) + _pair(config, dirs["sharded"], sharded))
    shutil.copytree(dirs["pair"], dirs["resumed"])
    # The sharded pair again from its step-3 checkpoint, and alone from its step-6 one.
    shutil.copytree(dirs["sharded"], dirs["sharded_again"])
    shutil.rmtree(dirs["sharded_again"] / "checkpoints" / str(STEPS))
    shutil.copytree(dirs["sharded"], dirs["sharded_alone"])
    longer = f"--config.total_steps={RESUMED_STEPS}"
    resumed = _wait(_single(config, dirs["resumed"], longer)
                    + _pair(config, dirs["pair_tp"], "--config.mesh=dp:1,fsdp:1,tp:-1")
                    + _pair(config, dirs["sharded_again"], sharded)
                    + _single(config, dirs["sharded_alone"], sharded, longer))
    return {**dirs, "pair_outputs": outputs[1:3], "sharded_alone_output": resumed[-1]}


def _assert_same_run(runs, name: str, steps: int) -> None:
    """Run `name` logged steps 1..steps with the single run's losses and ends with its parameters."""
    single, other = _metric(runs["single"]), _metric(runs[name])
    assert sorted(other) == list(range(1, steps + 1))
    np.testing.assert_allclose([other[s] for s in sorted(other)], [single[s] for s in sorted(other)],
                               rtol=1e-5)
    _assert_close(_params(runs[name], steps), _params(runs["single"], steps))


def test_two_processes_train_as_one(runs):
    _assert_same_run(runs, "pair", STEPS)


def test_pair_with_a_bucket_workdir_trains_as_one(runs, bucket):
    """Both processes share one run directory in a bucket (a real GCS server on localhost), as the
    workers of a pod slice do: checkpoints, metrics and config land there, and nothing local."""
    config = runs["single"].parent / "tiny.py"
    _wait(_pair(config, bucket / "pair"))
    _assert_same_run({**runs, "bucket": bucket / "pair"}, "bucket", STEPS)
    assert (bucket / "pair" / "config.json").is_file()
    assert not (Path(__file__).parents[1] / "gs:").exists()  # the processes run in the repository


def test_pair_checkpoint_resumes_in_one_process(runs):
    _assert_same_run(runs, "resumed", RESUMED_STEPS)


def test_pair_logs_the_global_batch_throughput(runs):
    # Every process keeps its own rows; the loss tokens logged are the whole global batch's.
    single = _metric(runs["single"], "loss_tokens")
    assert _metric(runs["pair"], "loss_tokens") == {s: single[s] for s in range(1, STEPS + 1)}


def test_pair_with_the_batch_replicated_across_processes(runs):
    # tp over all 8 devices: each process holds every row, so the global batch is a process's batch.
    single, tp = _metric(runs["single"]), _metric(runs["pair_tp"])
    assert sorted(tp) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([tp[s] for s in sorted(tp)], [single[s] for s in sorted(tp)], rtol=1e-4)
    tokens = _metric(runs["single"], "loss_tokens")
    assert _metric(runs["pair_tp"], "loss_tokens") == {s: tokens[s] for s in range(1, STEPS + 1)}


def test_only_process_0_reports(runs):
    out0, out1 = runs["pair_outputs"]
    assert "done at step 6; workdir" in out0 and "at step" not in out1
    # Each process says it joined; after that, process 1 logs only warnings.
    assert [line for line in out1.splitlines() if line.startswith("INFO")] == [
        "INFO jaxalign.mesh: process 1 of 2, 4 local / 8 global devices"]


def test_sharded_pair_reads_its_own_records_and_resumes_exactly_as_a_pair(runs):
    single, sharded = _metric(runs["single"]), _metric(runs["sharded"])
    assert sorted(sharded) == list(range(1, STEPS + 1)) and all(np.isfinite(list(sharded.values())))
    # Each process packs its own half of the records: other batches than the global pipeline's.
    steps = range(1, STEPS + 1)
    assert not np.allclose([sharded[s] for s in steps], [single[s] for s in steps])
    # Both processes' data states went into the checkpoint: steps 4-6 again give the same model.
    _assert_close(_params(runs["sharded_again"], STEPS), _params(runs["sharded"], STEPS))
    again = _metric(runs["sharded_again"])
    np.testing.assert_allclose([again[s] for s in range(4, STEPS + 1)],
                               [sharded[s] for s in range(4, STEPS + 1)], rtol=1e-5)


def test_sharded_pair_checkpoint_resumes_alone_resharded(runs):
    assert "saved by 2 input shard(s), this run has 1" in runs["sharded_alone_output"]
    alone = _metric(runs["sharded_alone"])
    assert sorted(alone) == list(range(1, RESUMED_STEPS + 1)) and all(np.isfinite(list(alone.values())))


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(tmp_path):
    """Preemption reaches one host only: JAX's preemption sync point makes both save the same step and
    exit 0; the pair then resumes there and ends as an uninterrupted pair does."""
    config = tmp_path / "tiny.py"
    config.write_text(CONFIG)
    stopped, reference = tmp_path / "stopped", tmp_path / "reference"
    procs = _pair(config, stopped, "--config.total_steps=400")
    metrics = stopped / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), _wait(procs)
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only
    outputs = _wait(procs)  # both exit 0
    saved = [re.findall(r"SIGTERM: saved step (\d+)", out) for out in outputs]
    assert len(saved[0]) == len(saved[1]) == 1 and saved[0] == saved[1], outputs
    step = int(saved[0][0])
    assert 2 <= step < 400
    assert max(int(d.name) for d in (stopped / "checkpoints").iterdir() if d.name.isdigit()) == step
    longer = f"--config.total_steps={step + 2}"
    _wait(_pair(config, stopped, longer) + _pair(config, reference, longer))
    ours, theirs = _metric(stopped), _metric(reference)
    assert sorted(ours) == sorted(theirs) == list(range(1, step + 3))
    np.testing.assert_allclose([ours[s] for s in sorted(ours)], [theirs[s] for s in sorted(ours)], rtol=1e-5)
    _assert_close(_params(stopped, step + 2), _params(reference, step + 2))
