"""An append-only JSONL file that a killed run resumes without losing or repeating a record.

    journal = Journal(workdir / "induced.jsonl")     # truncates a chunk that was written only in part
    for chunk in range(journal.chunks_done, num_chunks):
        journal.commit(make_records(chunk))          # appended durably, then the progress is replaced
    rows = journal.records()

Generation stages (mistake induction, analysis) take minutes to hours on a real model, so their
output is written a chunk at a time. `commit` appends the chunk's records durably, then
atomically replaces ``<name>.progress.json`` with the number of committed chunks and the byte
length they cover. Opening a journal truncates the file to that length, so a chunk interrupted
half-way is dropped and written again. A stage whose chunks are a pure function of (seed, chunk)
then writes exactly what an uninterrupted run would.

The file may be local or in a bucket (``gs://...``): `jaxalign.paths` appends (locally with fsync,
on a bucket by writing the object again), replaces and truncates either.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxalign import paths


class Journal:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = paths.path(path)
        self.progress_path = self.path.with_name(self.path.name.removesuffix(".jsonl") + ".progress.json")
        self.chunks_done, size = 0, 0
        if self.progress_path.exists():
            state = json.loads(self.progress_path.read_text())
            self.chunks_done, size = state["chunks"], state["bytes"]
            if not self.path.exists():
                raise FileNotFoundError(f"{self.progress_path} says {self.chunks_done} chunks were written, "
                                        f"but {self.path} is missing")
            if self.path.stat().length < size:
                raise ValueError(f"{self.path} is shorter ({self.path.stat().length} bytes) than the {size} "
                                 f"bytes of the {self.chunks_done} chunks {self.progress_path.name} records")
        elif self.path.exists() and self.path.stat().length:
            raise FileExistsError(f"{self.path} exists without {self.progress_path.name}: not written by "
                                  "this run; move it away to start afresh")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            paths.append(self.path, b"")  # creates it
        elif self.path.stat().length > size:
            paths.truncate(self.path, size)  # drops a chunk written only in part

    def commit(self, records: list[dict[str, Any]]) -> None:
        """Appends one chunk's records durably, then records that the chunk is done."""
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        paths.append(self.path, lines.encode("utf-8"))
        size = self.path.stat().length
        self.chunks_done += 1
        paths.write_atomic(self.progress_path, json.dumps({"chunks": self.chunks_done, "bytes": size}))

    def records(self) -> list[dict[str, Any]]:
        """Every committed record, in order."""
        lines = self.path.read_bytes().decode("utf-8").split("\n")
        return [json.loads(line) for line in lines if line.strip()]
