"""The input pipeline: a random-access source of records -> a checkpointable iterator of packed batches.

    batches = make_batches(source, seq_len=256, batch_size=8, seed=0)
    batch = next(batches)                  # dict of [8, 256] numpy arrays (packing.py's row layout)
    state = batches.get_state()            # restore with batches.set_state(state): the same next batches

grain shards, shuffles and repeats record indices, tokenizes ahead on threads, packs and batches;
working on indices keeps shuffling free and the pipeline's state a few integers, so that a resumed
run sees exactly the batches an uninterrupted one would.

Details: docs/data.md#the-input-pipeline-jaxaligndatapipeline
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import grain

from jaxalign.data import packing


def _shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only here: data-only users need not initialise a backend

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index} and {process_count}")
    return process_index, process_count


def example_dataset(
    source: Sequence[Any],
    *,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    transform: Callable[[Any], Any] | None = None,
) -> grain.MapDataset:
    """The record-level stages of `make_batches` (shard, shuffle, repeat, transform), unpacked.

    Epochs: ``repeat=False`` is one pass; ``repeat=True`` repeats `num_epochs` times, or forever
    when it is None. `transform` may return None to drop a record.
    """
    if not repeat and num_epochs not in (None, 1):
        raise ValueError(f"repeat=False means one epoch, but num_epochs={num_epochs}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be positive (or None for forever), got {num_epochs}")
    index, count = _shard(process_index, process_count)
    total = len(source)
    dataset = grain.MapDataset.source(source)
    if count > 1:
        dataset = dataset.slice(slice(index, None, count))
    if len(dataset) == 0:
        raise ValueError(f"process {index} of {count} gets no records from a source of {total}")
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if repeat:
        # reseed_each_epoch (grain's default) gives every epoch its own permutation.
        dataset = dataset.repeat(num_epochs)
    if transform is not None:
        dataset = dataset.map(transform)
    return dataset


# An iterator still alive when the interpreter exits is closed by grain's __del__ during module
# teardown, when the modules its close() uses are gone, which prints tracebacks. Close such
# iterators before teardown instead, and make the second close a no-op.
_OPEN_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    for iterator in list(_OPEN_ITERATORS):
        iterator.close()
        iterator.close = lambda: None


def make_batches(
    source: Sequence[Any],
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    transform: Callable[[Any], Any] | None = None,
    num_bins: int = 16,
    pad_id: int = 0,
    overflow: packing.Overflow = "truncate",
    fields: Sequence[str] = (),
    read_threads: int = 2,
    prefetch: int = 2,
    stats: packing.PackStats | None = None,
) -> grain.DatasetIterator:
    """Packed batches of this process's share of `source` (see docs/data.md).

    Each batch is a dict of numpy ``[batch_size, seq_len]`` arrays: inputs, targets (int32),
    weights (float32), segment_ids, positions (int32), laid out as in packing.py. The records of
    `source` must be examples {"tokens", "weights"} or become examples through `transform`.
    The result's ``get_state()`` is a JSON-serialisable dict; ``set_state`` on the iterator of an
    identically configured pipeline resumes with exactly the batches that would have come next.
    `read_threads` run `transform` ahead of packing; `prefetch` batches are made ahead on a
    thread (0 for neither). `stats` (a PackStats) is filled as rows are packed, prefetched ones
    included: ``stats.truncation_stats()`` says how many examples and (loss-weighted) tokens
    truncation to seq_len cut, ``stats.report()`` logs that and warns above
    packing.TRUNCATION_WARN_FRACTION (the trainer does so after its first steps). `fields` names extra
    per-token fields of the examples to pack (e.g. "ul_weights", see packing.py).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if read_threads < 0 or prefetch < 0:
        raise ValueError(f"read_threads and prefetch must be >= 0, got {read_threads} and {prefetch}")
    examples = example_dataset(
        source, seed=seed, shuffle=shuffle, repeat=repeat, num_epochs=num_epochs,
        process_index=process_index, process_count=process_count, transform=transform,
    )
    # The read buffer only needs to cover a packing window or two; a large one wastes tokenizing
    # work that set_state throws away.
    read_options = grain.ReadOptions(num_threads=read_threads,
                                     prefetch_buffer_size=4 * num_bins if read_threads else 0)
    rows = packing.pack_dataset(
        examples.to_iter_dataset(read_options), seq_len, num_bins=num_bins, overflow=overflow,
        pad_id=pad_id, stats=stats, fields=tuple(fields),
    )
    batches = rows.batch(batch_size, drop_remainder=True)
    if prefetch:
        batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)
    iterator = iter(batches)
    _OPEN_ITERATORS.add(iterator)
    return iterator
