import functools
import json
import sys

import numpy as np
import pytest

from jaxalign.data import examples, pipeline
from jaxalign.data.builders import JsonlPreference, decode_record, prepare
from jaxalign.data.jsonl import RecordError
from jaxalign.data.packing import ROW_FIELDS, pack_examples
from jaxalign.data.tokenizer import demo_tokenizer

DTYPES = {"inputs": np.int32, "targets": np.int32, "weights": np.float32, "segment_ids": np.int32,
          "positions": np.int32}


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer()


def _examples(count, seed=0, max_len=40):
    """Examples whose first token is unique (100 + index), so each can be told apart in a row."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(2, max_len))
        tokens = np.concatenate([[100 + i], rng.integers(1, 100, n - 1)]).astype(np.int32)
        out.append({"tokens": tokens, "weights": rng.random(n).astype(np.float32)})
    return out


def _packed_examples(batches):
    """First tokens of every example packed in `batches` (a list of batch dicts)."""
    found = []
    for batch in batches:
        for row in range(batch["inputs"].shape[0]):
            seg, positions, inputs = batch["segment_ids"][row], batch["positions"][row], batch["inputs"][row]
            found.extend(int(inputs[i]) for i in np.flatnonzero((seg > 0) & (positions == 0)))
    return found


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for name in x:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def _identity(example):
    # A transform, so that the read threads have work; a copy, so nothing is shared.
    return {"tokens": np.array(example["tokens"]), "weights": np.array(example["weights"])}


PIPELINE = dict(seq_len=32, batch_size=3, num_bins=4, process_index=0, process_count=1, transform=_identity)


# --------------------------------------------------------------------------- batches


def test_batches_have_the_interface_layout():
    source = _examples(30)
    batches = _take(pipeline.make_batches(source, seed=0, **PIPELINE), 4)
    for batch in batches:
        assert set(batch) == set(ROW_FIELDS)
        for name, dtype in DTYPES.items():
            assert batch[name].shape == (3, 32) and batch[name].dtype == dtype, name
        assert np.all((batch["segment_ids"] > 0) | (batch["weights"] == 0))
    # The rows are exactly packing.py's rows of the shuffled examples, three to a batch.
    order = list(pipeline.example_dataset(source, seed=0, process_index=0, process_count=1, num_epochs=1))
    rows = pack_examples(order, 32, num_bins=4)
    for b, batch in enumerate(batches):
        for name in ROW_FIELDS:
            np.testing.assert_array_equal(batch[name], np.stack([r[name] for r in rows[3 * b: 3 * b + 3]]))


@pytest.mark.parametrize("read_threads,prefetch", [(2, 2), (0, 0)])
def test_exact_resume_from_a_json_state(read_threads, prefetch):
    source = _examples(23)  # a few rows per epoch: the later cut points are in the third epoch and on
    opts = dict(PIPELINE, read_threads=read_threads, prefetch=prefetch)
    reference = _take(pipeline.make_batches(source, seed=7, **opts), 40)
    for k in (0, 1, 5, 14, 27):
        iterator = pipeline.make_batches(source, seed=7, **opts)
        _assert_same_batches(_take(iterator, k), reference[:k])
        state = json.loads(json.dumps(iterator.get_state()))
        resumed = pipeline.make_batches(source, seed=7, **opts)
        resumed.set_state(state)
        _assert_same_batches(_take(resumed, 40 - k), reference[k:])
        # The interrupted iterator itself also goes on unchanged.
        _assert_same_batches(_take(iterator, 3), reference[k: k + 3])


def test_deterministic_by_seed():
    source = _examples(40)
    a = _take(pipeline.make_batches(source, seed=1, **PIPELINE), 12)
    _assert_same_batches(a, _take(pipeline.make_batches(source, seed=1, **PIPELINE), 12))
    b = _take(pipeline.make_batches(source, seed=2, **PIPELINE), 12)
    assert _packed_examples(a) != _packed_examples(b)


def test_every_epoch_is_a_new_permutation():
    n = 20

    def order(seed, shuffle=True):
        return list(pipeline.example_dataset(list(range(n)), seed=seed, shuffle=shuffle, num_epochs=3,
                                             process_index=0, process_count=1))

    epochs = [order(0)[e * n:(e + 1) * n] for e in range(3)]
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    assert order(0) == order(0) and order(0) != order(1)
    assert order(0, shuffle=False) == list(range(n)) * 3
    # One pass, and a finite number of epochs, end.
    assert len(list(pipeline.example_dataset(list(range(n)), seed=0, repeat=False, process_index=0,
                                             process_count=1))) == n
    with pytest.raises(ValueError, match="repeat=False means one epoch"):
        pipeline.example_dataset(list(range(n)), seed=0, repeat=False, num_epochs=2)


def test_process_shards_are_disjoint_and_cover_the_data():
    source = _examples(23)
    shards = [list(pipeline.example_dataset(list(range(23)), seed=3, repeat=False, process_index=i,
                                            process_count=3)) for i in range(3)]
    assert sorted(sum(shards, [])) == list(range(23)) and [len(s) for s in shards] == [8, 8, 7]
    # Through packing and batching too (batch_size 1 drops nothing): every example exactly once.
    seen = []
    for i in range(2):
        batches = list(pipeline.make_batches(source, seed=3, repeat=False, **dict(
            PIPELINE, batch_size=1, process_index=i, process_count=2)))
        seen.append(_packed_examples(batches))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [100 + i for i in range(23)]
    # Defaults come from jax: one process here, which gets everything.
    batches = list(pipeline.make_batches(source, seed=3, repeat=False, seq_len=32, batch_size=1))
    assert sorted(_packed_examples(batches)) == [100 + i for i in range(23)]
    with pytest.raises(ValueError, match="process 1 of 2 gets no records from a source of 1"):
        pipeline.make_batches(source[:1], seed=0, seq_len=32, batch_size=1, process_index=1, process_count=2)


# --------------------------------------------------------------------------- tfds


def _write_jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


PREFERENCES = [
    {"prompt": "Question: name a colour. Answer:", "chosen": " blue.", "rejected": " rude!", "id": "a-1"},
    {"prompt": "", "chosen": "Good: clear, honest ünïcode ✓", "rejected": "vague"},
    {"prompt": "Two plus two?", "chosen": " four", "rejected": " five", "id": 7},
] + [{"prompt": f"Question {i}:", "chosen": f" answer {i}", "rejected": " no"} for i in range(10)]


def test_tfds_builder_round_trip_without_tensorflow(tmp_path, tok):
    src, data = tmp_path / "src", tmp_path / "tfds"
    src.mkdir()
    _write_jsonl(src / "train.jsonl", PREFERENCES)
    _write_jsonl(src / "validation.jsonl", PREFERENCES[:2])
    sources = prepare(src, data)
    assert set(sources) == {"train", "validation"}
    assert "tensorflow" not in sys.modules  # built and read by tfds + array_record alone
    expected = [dict(r, id=str(r["id"])) if "id" in r else r for r in PREFERENCES]  # ids are stored as text
    assert [decode_record(sources["train"][i]) for i in range(len(sources["train"]))] == expected
    assert [decode_record(r) for r in sources["validation"]] == expected[:2]
    assert list((data / "jsonl_preference" / "1.0.0").glob("*.array_record*"))

    # The data source feeds make_batches: the same batches as the records tokenized up front.
    opts = dict(seq_len=32, batch_size=2, seed=0, process_index=0, process_count=1)
    transform = functools.partial(examples.record_to_example, tokenizer=tok, kind="preference")
    _assert_same_batches(
        _take(pipeline.make_batches(sources["train"], transform=transform, **opts), 5),
        _take(pipeline.make_batches(examples.tokenized_records(PREFERENCES, tok, "preference"), **opts), 5),
    )

    # Unchanged files reuse the build; edited ones rebuild it.
    built = sorted(p.stat().st_mtime_ns for p in (data / "jsonl_preference" / "1.0.0").iterdir())
    assert len(prepare(src, data)["train"]) == len(PREFERENCES)
    assert sorted(p.stat().st_mtime_ns for p in (data / "jsonl_preference" / "1.0.0").iterdir()) == built
    _write_jsonl(src / "train.jsonl", PREFERENCES[3:])
    assert [decode_record(r) for r in prepare(src, data)["train"]] == expected[3:]

    # A malformed line in an edited file: an error naming file:line, and the last build intact.
    _write_jsonl(src / "train.jsonl", PREFERENCES[:2], ['{"prompt": "p", "chosen": "c", "rejectd": "r"}'])
    with pytest.raises(RecordError, match=r"train\.jsonl:3: missing field 'rejected'"):
        prepare(src, data)
    kept = JsonlPreference(data_dir=str(data), file_format="array_record").as_data_source()["train"]
    assert [decode_record(r) for r in kept] == expected[3:]


def test_tfds_builder_reports_malformed_lines_and_missing_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(FileNotFoundError, match="no train.jsonl here"):
        prepare(src, tmp_path / "tfds")
    _write_jsonl(src / "train.jsonl", PREFERENCES[:4], ["", '{"prompt": "p", "chosen": 3, "rejected": "r"}'])
    with pytest.raises(RecordError) as info:
        prepare(src, tmp_path / "tfds")
    assert str(info.value) == f"{src / 'train.jsonl'}:6: field 'chosen' must be a string, got int"
    assert not JsonlPreference(data_dir=str(tmp_path / "tfds"), file_format="array_record").is_prepared()
