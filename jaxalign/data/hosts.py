"""Which process makes which rows of the global batch, and the data state a checkpoint keeps.

`config.data.sharding` chooses between two ways of feeding a multi-process run:

    "process" (default)  Processes whose devices hold the same rows of the global batch form a
                         group (on an FSDP or data-parallel mesh, every process is its own
                         group). Group g of G reads only records g::G, and tokenizes and packs
                         only its rows: input work per host falls as hosts are added. The data
                         order therefore depends on G; resumed on another G, every group starts
                         at the fraction of an epoch the run had reached (`reshard`), so no
                         record is seen twice as often as another, but the order differs.
    "global"             Every process runs the one pipeline over all records and keeps the rows
                         its devices hold: N processes train exactly as one does, and resume
                         exactly on any number of processes; every host packs the whole batch.

With one process (or a mesh that replicates the batch across processes) both are the same
pipeline. A checkpoint's data state for a stream is the plain pipeline state ("global") or
{"shards": [state of group 0, ..., group G-1]} ("process"); either restores in either mode.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxalign import mesh as mesh_lib

log = logging.getLogger(__name__)

SHARDINGS = ("process", "global")

# make(batch_size, shard_index, shard_count) -> a checkpointable iterator of packed batches.
MakeBatches = Callable[[int, int, int], Any]


def batch_groups(global_batch: int, mesh: Mesh) -> tuple[int, int]:
    """(this process's group, number of groups): processes holding the same rows of a global
    batch form a group, numbered by their first row."""
    sharding = mesh_lib.logical_sharding(("batch",), (global_batch,), mesh)
    rows: dict[int, set] = collections.defaultdict(set)
    for device, index in sharding.devices_indices_map((global_batch,)).items():
        rows[device.process_index].update(range(*index[0].indices(global_batch)))
    groups = sorted({frozenset(r) for r in rows.values()}, key=min)
    if sum(len(g) for g in groups) != global_batch:
        raise ValueError(f"mesh {dict(mesh.shape)}: processes hold overlapping parts of the batch; "
                         "use config.data.sharding='global'")
    return groups.index(frozenset(rows[jax.process_index()])), len(groups)


class ProcessBatches:
    """This process's rows of each global batch, from one stream."""

    def __init__(self, make: MakeBatches, global_batch: int, mesh: Mesh, sharding: str) -> None:
        if sharding not in SHARDINGS:
            raise ValueError(f"config.data.sharding={sharding!r}; choose one of {SHARDINGS}")
        self.sharding = sharding
        if sharding == "global" or jax.process_count() == 1:
            self.group, self.groups = 0, 1
            self.rows = None if jax.process_count() == 1 else mesh_lib.process_batch_rows(global_batch, mesh)
            self.iterator = make(global_batch, 0, 1)
        else:
            self.group, self.groups = batch_groups(global_batch, mesh)
            self.rows = None
            self.iterator = make(global_batch // self.groups, self.group, self.groups)

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.iterator)
        return batch if self.rows is None else {k: v[self.rows] for k, v in batch.items()}

    def get_state(self) -> dict[str, Any]:
        """Collective in "process" mode with several groups: every process must call it."""
        state = self.iterator.get_state()
        if self.sharding == "global":
            return state
        return {"shards": _gather(state, self.group, self.groups)}

    def set_state(self, state: dict[str, Any]) -> None:
        shards = state["shards"] if "shards" in state else [state]
        if len(shards) != self.groups:
            log.warning("the data state was saved by %d input shard(s), this run has %d: each "
                        "resumes at the same fraction of an epoch (order differs from the "
                        "original run)", len(shards), self.groups)
            shards = reshard(shards, self.groups)
        self.iterator.set_state(shards[self.group])


def reshard(shards: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """States for `count` shards that start where `shards` together were: the records consumed
    (the sum of the shards' read positions) split evenly. Rows of a packing window in progress
    are read again."""
    try:
        consumed = sum(int(s["parent"]["next_index"]) for s in shards)
    except (KeyError, TypeError) as e:
        raise ValueError(f"cannot reshard a data state of this layout ({shards[0]!r}); resume with "
                         f"as many input shards as it was saved with ({len(shards)})") from e
    return [{"parent": {"next_index": consumed // count}, "next_row": 0, "counter": 0}
            for _ in range(count)]


def _gather(state: dict[str, Any], group: int, groups: int) -> list[dict[str, Any]]:
    """Every group's state, on every process (one from each group's first process)."""
    if jax.process_count() == 1:
        return [state]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(state).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([data.size, group], np.int64))
    padded = np.zeros(int(sizes[:, 0].max()), np.uint8)
    padded[: data.size] = data
    gathered = multihost_utils.process_allgather(padded)
    by_group: dict[int, dict[str, Any]] = {}
    for (size, g), row in zip(sizes.tolist(), gathered, strict=True):
        by_group.setdefault(g, json.loads(row[:size].tobytes().decode()))
    return [by_group[g] for g in range(groups)]
