"""The input pipeline: a random-access source of records -> a checkpointable iterator of packed batches.

    source = tokenized_records(read_records("train.jsonl", "preference"), tok, "preference")
    batches = make_batches(source, seq_len=256, batch_size=8, seed=0)
    batch = next(batches)                  # dict of [8, 256] numpy arrays (packing.py's row layout)
    state = batches.get_state()            # a small JSON-serialisable dict; save it with the model
    batches = make_batches(source, seq_len=256, batch_size=8, seed=0)
    batches.set_state(state)               # continues with exactly the batches that came next

Stages, all grain (0.2.18)::

    MapDataset.source(source)      anything with __len__ and __getitem__: a list, a tfds data source
    [process_index::process_count] this process's records (multi-host: disjoint, together all)
    .shuffle(seed)                 a permutation of the shard, a different one each epoch
    .repeat(num_epochs)            forever by default; training length is a step count
    .map(transform)                record -> example {"tokens", "weights"} (e.g. tokenisation)
    .to_iter_dataset(threads)      `read_threads` threads run `transform` ahead, in order
    pack_dataset(seq_len)          first-fit packing into rows with segment ids (packing.py)
    .batch(batch_size)             [batch_size, seq_len] per field; a last partial batch is dropped
    ThreadPrefetchIterDataset      `prefetch` batches are prepared on a thread while the step runs

Why these choices:
- The shuffle and the shard work on record indices, so shuffling a tfds array_record source costs
  nothing (no shuffle buffer) and the whole pipeline's state is a few integers: where the packer's
  current window started in the repeated, shuffled index space, plus rows emitted from it.
- Sharding comes before the shuffle, so a process's records do not depend on the seed, and the
  seed is shared by all processes (each shuffles only its own shard).
- Prefetch uses a thread, not grain's worker processes: transforms and tokenizers need not pickle,
  and the GIL is free while XLA runs the step, which is when the thread does its work.
- `batch_size` is per process (per shard). The trainer picks process_index/process_count per
  group of processes, or runs one pipeline everywhere, as config.data.sharding says (hosts.py).

With a finite `num_epochs` (or repeat=False) the number of batches depends on how the shard packs,
so processes can end after different numbers of steps; multi-process training should repeat
forever and stop at a step count.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxalign.data import packing
from jaxalign.data.tokenizer import Tokenizer

Example = dict[str, np.ndarray]
KINDS = ("text", "preference", "group")


# --------------------------------------------------------------------------- examples


def _ids(ids: Any, name: str) -> np.ndarray:
    array = np.asarray(ids)
    if array.size == 0:
        return np.zeros(0, np.int32)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D sequence of integer token ids, "
                         f"got shape {array.shape} dtype {array.dtype}")
    return array.astype(np.int32)


def sft_example(prompt_ids: Sequence[int] | np.ndarray, response_ids: Sequence[int] | np.ndarray,
                eos_id: int) -> Example:
    """prompt + response + EOS, trained on the response and the EOS only.

    ``weights[i]`` is the weight of predicting ``tokens[i]`` (packing.py's convention): 0 on the
    prompt, 1 on each response token and on the final EOS, so the model learns where to stop.
    """
    if eos_id is None or isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer)):
        raise ValueError(f"eos_id must be an integer token id, got {eos_id!r}")
    prompt = _ids(prompt_ids, "prompt_ids")
    response = _ids(response_ids, "response_ids")
    tokens = np.concatenate([prompt, response, np.array([eos_id], np.int32)])
    weights = np.concatenate([np.zeros(prompt.size, np.float32), np.ones(response.size + 1, np.float32)])
    return {"tokens": tokens, "weights": weights}


def _as_text(value: Any, name: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):  # tfds Text features read back as bytes
        return bytes(value).decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"field {name} must be a string, got {type(value).__name__}")
    return value


def text_field(record: Mapping[str, Any], key: str, kind: str) -> str:
    """record[key] as str (tfds sources give UTF-8 bytes); a missing or non-text field is an error."""
    if key not in record:
        raise ValueError(f"a {kind} record needs a {key!r} field, got keys {sorted(record)}")
    return _as_text(record[key], repr(key))


def _values(record: Mapping[str, Any], key: str) -> list[Any]:
    """record[key] as a list: a JSON array, or the numpy array a tfds Sequence feature reads back as."""
    if key not in record:
        raise ValueError(f"a group record needs a {key!r} field, got keys {sorted(record)}")
    value = record[key]
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ValueError(f"field {key!r} must be a list, got {type(value).__name__}")
    if not value:
        raise ValueError(f"field {key!r} must hold at least one value")
    return list(value)


def _rating(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"field {name} must be a number, got {type(value).__name__}")
    try:
        rating = float(value)
    except OverflowError:
        rating = float("inf")
    if not np.isfinite(rating):
        raise ValueError(f"field {name} must be finite, got {value!r}")
    return rating


def group_fields(record: Mapping[str, Any]) -> tuple[str, list[str], list[float]]:
    """(prompt, responses, ratings) of a ``group`` record, checked as `jsonl` checks them.

    Checked again here because group records also come from tfds sources and from code (the
    SANDBOX simulation) rather than only from a checked jsonl file; text may be UTF-8 bytes and the
    lists numpy arrays, as tfds data sources return them.
    """
    prompt = text_field(record, "prompt", "group")
    responses = [_as_text(r, f"'responses'[{i}]") for i, r in enumerate(_values(record, "responses"))]
    empty = next((i for i, r in enumerate(responses) if not r.strip()), None)
    if empty is not None:
        raise ValueError(f"field 'responses'[{empty}] must not be empty")
    ratings = [_rating(r, f"'ratings'[{i}]") for i, r in enumerate(_values(record, "ratings"))]
    if len(ratings) != len(responses):
        raise ValueError(f"field 'ratings' has {len(ratings)} values but 'responses' has {len(responses)}; "
                         "there is one rating per response")
    return prompt, responses, ratings


def best_response(ratings: Sequence[float]) -> int:
    """The index of the highest rating; of several equal highest, the first (the reference code's
    sort is not stable, so its choice among ties is arbitrary; ours is the record's order)."""
    if not len(ratings):
        raise ValueError("best_response: no ratings")
    return int(np.argmax(np.asarray(ratings, np.float64)))  # argmax returns the first maximum


PROMPT_TEMPLATE = "{prompt}\n"


def format_prompt(prompt: str) -> str:
    """The one prompt template, used for training and for generation alike (the Stable
    Alignment reference code trains and samples with different templates; we must not)."""
    return PROMPT_TEMPLATE.format(prompt=prompt)


def prompted_example(tokenizer: Tokenizer, prompt: str, response: str) -> Example:
    """`sft_example` on BOS (if the tokenizer has one) + format_prompt(prompt) and `response`.

    Prompt and response are tokenized separately and joined as ids, so a separator (a space,
    "Answer:") is part of the text, and the prompt ids are exactly what generation is prompted with.
    """
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no eos token, which ends every response")
    prompt_ids = tokenizer.encode(format_prompt(prompt), add_bos=tokenizer.bos_id is not None)
    return sft_example(prompt_ids, tokenizer.encode(response), tokenizer.eos_id)


def record_to_example(record: Mapping[str, Any], tokenizer: Tokenizer, kind: str) -> Example:
    """One record of a jsonl.SCHEMAS schema -> an example {"tokens", "weights"}.

    ``text``: BOS (if the tokenizer has one) + text + EOS, every token weighted 1.
    ``preference``: `prompted_example` on the prompt and the *chosen* response (supervised
    fine-tuning on the good answer; the rejected one is for the preference objectives).
    ``group``: `prompted_example` on the prompt and the highest-rated response (`best_response`:
    the first of equal highest), SFT on the best of the group (Stable Alignment's "SFT on the best
    responses" baseline; the other responses are for `jaxalign.objectives.stable_alignment`).
    String values may also be bytes (UTF-8), as tfds data sources return them.
    """
    if kind == "text":
        add_bos = tokenizer.bos_id is not None
        tokens = tokenizer.encode(text_field(record, "text", kind), add_bos=add_bos, add_eos=True)
        return {"tokens": np.asarray(tokens, np.int32), "weights": np.ones(len(tokens), np.float32)}
    if kind == "preference":
        prompt, chosen = text_field(record, "prompt", kind), text_field(record, "chosen", kind)
        return prompted_example(tokenizer, prompt, chosen)
    if kind == "group":
        prompt, responses, ratings = group_fields(record)
        return prompted_example(tokenizer, prompt, responses[best_response(ratings)])
    raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")


def tokenized_records(records: Iterable[Mapping[str, Any]], tokenizer: Tokenizer, kind: str) -> list[Example]:
    """Records (e.g. from jsonl.read_records) -> a list of examples, a source for `make_batches`.

    Tokenizes everything up front: meant for small user data. For large data, pass the records
    (e.g. a tfds data source) to `make_batches` with ``transform=functools.partial(
    record_to_example, tokenizer=tok, kind=kind)`` so that tokenizing happens as batches are made.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
    examples = []
    for index, record in enumerate(records):
        try:
            examples.append(record_to_example(record, tokenizer, kind))
        except ValueError as e:
            raise ValueError(f"record {index}: {e}") from e
    return examples


# --------------------------------------------------------------------------- the pipeline


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
    """Packed batches of this process's share of `source` (see the module docstring).

    Each batch is a dict of numpy ``[batch_size, seq_len]`` arrays: inputs, targets (int32),
    weights (float32), segment_ids, positions (int32), laid out as in packing.py. The records of
    `source` must be examples {"tokens", "weights"} or become examples through `transform`.
    The result's ``get_state()`` is a JSON-serialisable dict; ``set_state`` on the iterator of an
    identically configured pipeline resumes with exactly the batches that would have come next.
    `read_threads` run `transform` ahead of packing; `prefetch` batches are made ahead on a
    thread (0 for neither). `stats` (a PackStats) is filled as rows are packed. `fields` names extra
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
