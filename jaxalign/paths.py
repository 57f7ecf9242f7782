"""Every path a user gives, local or a URL (``gs://``, ``s3://``, …), through one type: `epath.Path`.

A bucket is not a disk: an object is written whole or not at all, and can be neither appended to
nor renamed. So the few operations that differ live here, each with its local and its bucket form:

- `write_atomic`: locally a temporary sibling renamed over the file; on a bucket one upload (an
  object appears whole or not at all).
- `append`: locally ``open("ab")`` + fsync; on a bucket the object is read and written again with
  the new bytes at its end (a reader sees the old or the new object, never a torn line). The files
  jaxalign appends to (metrics, journals) are small, so the copy is cheap next to a train step.
- `truncate`: the same, keeping a prefix.
- `move_tree`: locally one rename; on a bucket each object is copied, the names in ``last``
  (the file that marks a directory complete) after all the others, then the source is deleted.
- `local_copy`: libraries that read only local files (sentencepiece, safetensors' ``safe_open``)
  get a downloaded copy of a bucket file.

Orbax and tensorstore read and write URLs themselves; TensorBoard event files go through
tensorboardX, which writes ``gs://`` itself. Details: docs/pods.md#run-directories-in-a-bucket.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence

import fsspec.config
import fsspec.core
from etils import epath

PathLike = str | os.PathLike
# Other hosts write into the same bucket directory (checkpoints, journals): a listing cached by
# gcsfs would hide their objects, so every listing asks the bucket.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(p: PathLike) -> bool:
    """True for ``gs://bucket/…`` and other URLs; False for local paths."""
    return bool(_URL.match(os.fspath(p)))


def path(p: PathLike) -> epath.Path:
    """`p` as an `epath.Path`: a URL stays as it is, a local path becomes absolute (``~`` expanded),
    because orbax and tfds want absolute paths and a relative one must not change with the cwd."""
    text = os.fspath(p)
    if is_url(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def real(p: PathLike) -> epath.Path:
    """`path` with local symlinks resolved, to compare two paths for sameness or nesting."""
    return path(p) if is_url(p) else epath.Path(os.path.realpath(path(p)))


def write_atomic(p: PathLike, data: str | bytes) -> None:
    """Replaces `p` by `data` so that a reader or a crash sees the old or the new file, never half."""
    target = path(p)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if is_url(target):
        target.write_bytes(payload)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def append(p: PathLike, data: bytes) -> None:
    """Adds `data` at the end of `p` (created if missing) and makes it durable before returning."""
    target = path(p)
    if is_url(target):
        old = target.read_bytes() if target.exists() else b""
        target.write_bytes(old + data)
        return
    with open(target, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def truncate(p: PathLike, size: int) -> None:
    """Keeps the first `size` bytes of `p`."""
    target = path(p)
    if is_url(target):
        target.write_bytes(target.read_bytes()[:size])
    else:
        os.truncate(target, size)


def rmtree(p: PathLike) -> None:
    """Removes a directory tree (local or on a bucket); a missing one is fine."""
    target = path(p)
    if target.exists():
        target.rmtree()


def _files(root: epath.Path) -> Iterator[epath.Path]:
    for child in root.iterdir():
        if child.is_dir():
            yield from _files(child)
        else:
            yield child


def _ordered_files(src: epath.Path, last: Sequence[str]) -> list[epath.Path]:
    """The files under `src`, those at its top named in `last` at the end (the completeness marker)."""
    return sorted(_files(src), key=lambda f: (f.parent == src and f.name in last, str(f)))


def move_tree(src: PathLike, dst: PathLike, last: Sequence[str] = ()) -> None:
    """Moves directory `src` to `dst` (which must not exist). On a bucket the top-level files named
    in `last` are copied after every other object, so a reader that looks for them never sees a
    partial copy as complete."""
    src, dst = path(src), path(dst)
    if not is_url(src):
        os.rename(src, dst)
        return
    # A copy inside the bucket: epath's copy would stream every byte through this host.
    fs = fsspec.core.url_to_fs(str(src))[0]
    for f in _ordered_files(src, last):
        fs.copy(str(f), str(dst / os.path.relpath(str(f), str(src))))
    src.rmtree()


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[epath.Path]:
    """Yields a local path holding `p`'s content: `p` itself when local, else a downloaded copy
    (a file, or a directory with all its files) removed after the block."""
    source = path(p)
    if not is_url(source):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="jaxalign-") as tmp:
        local = epath.Path(tmp) / source.name
        if source.is_dir():
            copy_tree(source, local)
        else:
            _copy_file(source, local)
        yield local


def copy_tree(src: PathLike, dst: PathLike, last: Sequence[str] = ()) -> None:
    """Copies directory `src` into `dst`, each between a local disk and a bucket or within one,
    file by file (streamed, not held in memory). The top-level files named in `last` go after every
    other file, so a reader that looks for them never sees a partial copy as complete."""
    src, dst = path(src), path(dst)
    for f in _ordered_files(src, last):
        _copy_file(f, dst / os.path.relpath(str(f), str(src)))


def _copy_file(src: epath.Path, dst: epath.Path) -> None:
    """One file, streamed between a local disk and a bucket (either way)."""
    if not is_url(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as reader, dst.open("wb") as writer:
        while chunk := reader.read(1 << 24):
            writer.write(chunk)


def create_exclusive(p: PathLike, data: str | bytes) -> bool:
    """Creates `p` holding `data` unless it exists; returns whether this call created it. Atomic
    against other processes and hosts: O_EXCL locally; on a bucket the upload carries GCS's
    ``ifGenerationMatch=0`` precondition (gcsfs's "xb" mode). fake-gcs-server ignores that
    precondition, so the `exists` check before it is what the emulator tests see."""
    target = path(p)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        if is_url(target):
            if target.exists():
                return False
            with fsspec.open(str(target), "xb") as f:
                f.write(payload)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
    except FileExistsError:
        return False
    return True
