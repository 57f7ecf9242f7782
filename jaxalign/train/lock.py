"""One run per workdir: ``WORKDIR/run.lock`` names its holder (host, pid, start time, heartbeat).

Two runs in one workdir would interleave their metrics and delete each other's orbax temporaries.
The lock is created exclusively (O_EXCL on a disk, a generation-0 precondition on a bucket), so of
two runs starting together one wins. Its holder rewrites the heartbeat every `HEARTBEAT_SECONDS`.
A lock is stale, and broken with a warning, when its holder ran on this host and its pid is gone
(kill -9, a crash), or when its heartbeat is older than `STALE_SECONDS` (a preempted VM's run on
another host). To break a lock by hand, delete the file (`rm` or `gcloud storage rm`).

In a multi-process run only process 0 holds it; every process learns whether it got it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import jax
import numpy as np
from etils import epath

from jaxalign import paths

log = logging.getLogger(__name__)

LOCK = "run.lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0


class WorkdirLockedError(FileExistsError):
    """Another live run holds the workdir (its lock file exists)."""


class WorkdirLock:
    """``with WorkdirLock(workdir):`` holds the workdir for the block (see the module docstring)."""

    def __init__(self, workdir: epath.PathLike) -> None:
        self.path = paths.path(workdir) / LOCK
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    def acquire(self) -> None:
        error = ""
        if jax.process_index() == 0:
            error = self._acquire_here()
        if jax.process_count() > 1:  # the other processes must fail too, not wait in a collective
            from jax.experimental import multihost_utils

            failed = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
            error = error or (f"{self.path}: process 0 could not take the workdir's lock" if failed else "")
        if error:
            raise WorkdirLockedError(error)

    def _acquire_here(self) -> str:
        for _ in range(3):  # a stale lock is removed, then taken again
            if paths.create_exclusive(self.path, self._record(time.time())):
                self._held = True
                self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock")
                self._thread.start()
                return ""
            holder = self._read()
            reason = _stale(holder, self.path)
            if reason is None:
                return (f"{self.path.parent}: another run holds this workdir ({_describe(holder)}); wait "
                        f"for it or stop it. If it is dead, delete {self.path} to break the lock")
            log.warning("%s: breaking a stale lock (%s; %s)", self.path, _describe(holder), reason)
            self.path.unlink(missing_ok=True)
        return f"{self.path}: could not take the lock (it keeps reappearing)"

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._held and self._read().get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _record(self, heartbeat: float) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "started": _now(), "heartbeat": heartbeat})

    def _beat(self) -> None:
        started = self._read().get("started", _now())
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                record = json.loads(self._record(time.time()))
                paths.write_atomic(self.path, json.dumps({**record, "started": started}))
            except OSError as e:  # a bucket hiccup: the next beat tries again
                log.warning("%s: heartbeat not written (%s)", self.path, e)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unreadable lock file"
    age = time.time() - float(holder.get("heartbeat", 0))
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}, "
            f"last heartbeat {age:.0f} s ago")


def _stale(holder: dict[str, Any], path: epath.Path) -> str | None:
    """Why the lock's holder is surely gone, or None while it may be alive."""
    if not holder:
        try:  # a lock being written this instant reads empty too: give its writer a moment
            fresh = time.time() - path.stat().mtime < 10
        except OSError:
            return "the file vanished"
        return None if fresh else "the file is empty or torn: its writer died while creating it"
    if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
        return "its process no longer exists"
    if time.time() - float(holder.get("heartbeat", 0)) > STALE_SECONDS:
        return f"no heartbeat for over {STALE_SECONDS:.0f} s"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return pid > 0
