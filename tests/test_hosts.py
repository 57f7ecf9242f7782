"""jaxalign.data.hosts in one process: groups, the checkpointed data state in both layouts, and
resharding a state onto another number of input shards (tests/test_multihost.py runs several
processes)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxalign import mesh as mesh_lib
from jaxalign.data import hosts, pipeline


def _make(records):
    def make(batch_size, index, count):
        return pipeline.make_batches(records, seq_len=16, batch_size=batch_size, seed=0,
                                     process_index=index, process_count=count, prefetch=0)
    return make


RECORDS = [{"tokens": np.arange(3 + i % 5, dtype=np.int32) + i, "weights": np.ones(3 + i % 5, np.float32)}
           for i in range(200)]


@pytest.mark.parametrize("spec", ["dp:1,fsdp:-1,tp:1", "dp:2,fsdp:2,tp:2", "dp:1,fsdp:1,tp:-1"])
def test_one_process_is_one_group(spec):
    assert hosts.batch_groups(8, mesh_lib.make_mesh(spec)) == (0, 1)


@pytest.mark.parametrize("sharding", hosts.SHARDINGS)
def test_one_process_feeds_the_plain_pipeline_and_resumes(sharding):
    mesh = mesh_lib.make_mesh("dp:1,fsdp:-1,tp:1")
    plain = _make(RECORDS)(8, 0, 1)
    batches = hosts.ProcessBatches(_make(RECORDS), 8, mesh, sharding)
    for _ in range(3):
        np.testing.assert_array_equal(next(batches)["inputs"], next(plain)["inputs"])
    state = batches.get_state()
    assert ("shards" in state) == (sharding == "process")
    # Either layout restores in either mode: the next batches are the same.
    for other in hosts.SHARDINGS:
        again = hosts.ProcessBatches(_make(RECORDS), 8, mesh, other)
        again.set_state(state)
        expected = _make(RECORDS)(8, 0, 1)
        expected.set_state(plain.get_state())
        np.testing.assert_array_equal(next(again)["inputs"], next(expected)["inputs"])


def test_reshard_splits_the_records_consumed():
    shards = [{"parent": {"next_index": 30}, "next_row": 5, "counter": 9},
              {"parent": {"next_index": 34}, "next_row": 1, "counter": 7}]
    assert hosts.reshard(shards, 1) == [{"parent": {"next_index": 64}, "next_row": 0, "counter": 0}]
    assert [s["parent"]["next_index"] for s in hosts.reshard(shards, 4)] == [16] * 4


def test_a_state_from_two_shards_resumes_in_one(caplog):
    mesh = mesh_lib.make_mesh("dp:1,fsdp:-1,tp:1")
    halves = [_make(RECORDS)(4, i, 2) for i in range(2)]
    for _ in range(5):
        for it in halves:
            next(it)
    saved = {"shards": [it.get_state() for it in halves]}
    batches = hosts.ProcessBatches(_make(RECORDS), 8, mesh, "process")
    batches.set_state(saved)
    assert "saved by 2 input shard(s), this run has 1" in caplog.text
    consumed = sum(s["parent"]["next_index"] for s in saved["shards"])
    assert consumed > 0
    expected = _make(RECORDS)(8, 0, 1)
    expected.set_state({"parent": {"next_index": consumed}, "next_row": 0, "counter": 0})
    np.testing.assert_array_equal(next(batches)["inputs"], next(expected)["inputs"])


def test_bad_sharding_and_unknown_state_layouts_are_named():
    mesh = mesh_lib.make_mesh("dp:1,fsdp:-1,tp:1")
    with pytest.raises(ValueError, match="config.data.sharding='rows'"):
        hosts.ProcessBatches(_make(RECORDS), 8, mesh, "rows")
    with pytest.raises(ValueError, match="as many input shards as it was saved with"):
        hosts.reshard([{"position": 3}, {"position": 4}], 1)
