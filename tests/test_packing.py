import json
import logging
import warnings

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.data.packing import (
    ROW_FIELDS,
    TRUNCATION_WARN_FRACTION,
    PackStats,
    TruncationWarning,
    pack_dataset,
    pack_examples,
)
from jaxalign.models import Transformer, get_preset

DTYPES = {"inputs": np.int32, "targets": np.int32, "weights": np.float32, "segment_ids": np.int32,
          "positions": np.int32}


def _examples(count, min_len=2, max_len=20, seed=0, vocab=256):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(min_len, max_len + 1))
        out.append({"tokens": rng.integers(1, vocab, n), "weights": rng.random(n).astype(np.float32)})
    return out


def _segments(rows):
    """Every packed example as (row index, start slot, its tokens, its weights, positions)."""
    found = []
    for r, row in enumerate(rows):
        for seg in np.unique(row["segment_ids"][row["segment_ids"] > 0]):
            idx = np.flatnonzero(row["segment_ids"] == seg)
            assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)), "segment not contiguous"
            inputs, targets = row["inputs"][idx], row["targets"][idx]
            # Each example is shifted on its own: its targets are its inputs moved by one.
            np.testing.assert_array_equal(targets[:-1], inputs[1:])
            tokens = np.concatenate([inputs, targets[-1:]])
            found.append((r, int(idx[0]), tokens, row["weights"][idx], row["positions"][idx]))
    return found


def test_rows_have_the_layout_and_every_example_appears_once_intact():
    seq_len = 24
    examples = _examples(60, max_len=seq_len + 1)
    rows = pack_examples(examples, seq_len, num_bins=4)
    for row in rows:
        assert set(row) == set(ROW_FIELDS)
        for name, dtype in DTYPES.items():
            assert row[name].shape == (seq_len,) and row[name].dtype == dtype, name
        seg = row["segment_ids"]
        used = np.count_nonzero(seg)
        # Segment ids 1..k in order, then padding (0) to the end, with weight 0 and pad id 0.
        assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0)
        assert np.all(np.diff(seg[:used]) >= 0) and np.array_equal(np.unique(seg[:used]),
                                                                   np.arange(1, seg.max() + 1))
        for name in ("weights", "inputs", "targets", "positions"):
            assert np.all(row[name][used:] == 0), name

    found = _segments(rows)
    by_tokens = {tuple(tokens): (w, pos) for _, _, tokens, w, pos in found}
    assert len(found) == len(examples) == len(by_tokens)  # each example exactly once
    for ex in examples:
        weights, positions = by_tokens[tuple(ex["tokens"])]
        # Weight i belongs to the token it predicts: the row keeps weights[1:], aligned with targets.
        np.testing.assert_array_equal(weights, ex["weights"][1:])
        np.testing.assert_array_equal(positions, np.arange(len(ex["tokens"]) - 1))


def test_first_fit_over_a_window_of_bins():
    def ex(n, first):
        return {"tokens": np.arange(first, first + n)}

    # Slots used: 4, 4, 2, 7, 1 on rows of 8 with 2 open rows. A and B share row 0, C opens row 1,
    # D fits neither so both rows are emitted and D starts a new window; E joins D.
    rows = pack_examples([ex(5, 10), ex(5, 20), ex(3, 30), ex(8, 40), ex(2, 50)], 8, num_bins=2)
    assert [r["segment_ids"].tolist() for r in rows] == [
        [1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 2]]
    assert rows[0]["inputs"].tolist() == [10, 11, 12, 13, 20, 21, 22, 23]
    assert rows[0]["targets"].tolist() == [11, 12, 13, 14, 21, 22, 23, 24]
    assert rows[0]["positions"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert rows[2]["weights"].tolist() == [1.0] * 8  # no weights given: every prediction counts


def test_truncation_dropping_and_errors():
    seq_len = 8
    examples = [{"tokens": np.arange(20)}, {"tokens": [5]}, {"tokens": []}, {"tokens": np.arange(9)}]
    stats = PackStats()
    rows = pack_examples(examples, seq_len, stats=stats)
    assert (stats.examples, stats.truncated, stats.dropped, stats.rows) == (2, 1, 2, 2)
    # Truncation keeps the first seq_len + 1 tokens: seq_len predictions.
    assert rows[0]["inputs"].tolist() == list(range(8)) and rows[0]["targets"].tolist() == list(range(1, 9))
    assert stats.slots == 16 and stats.padding_fraction == 0.0

    with pytest.raises(ValueError, match=r"example 0: 20 tokens, but rows of seq_len=8 hold at most 9"):
        pack_examples(examples, seq_len, overflow="error")
    with pytest.raises(ValueError, match=r"example 1: 'weights' has shape \(2,\) but 'tokens' has \(3,\)"):
        pack_examples([{"tokens": [1, 2]}, {"tokens": [1, 2, 3], "weights": [0, 1]}], seq_len)
    with pytest.raises(ValueError, match=r"example 0: 'tokens' must be a 1-D sequence of integer ids"):
        pack_examples([{"tokens": [1.5, 2.0]}], seq_len)
    with pytest.raises(ValueError, match=r"example 0: expected a mapping with 'tokens'"):
        pack_examples([[1, 2, 3]], seq_len)


def _assert_same_rows(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for name in x:
            assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), name


def test_grain_pipeline_gives_the_same_rows_deterministically():
    examples = _examples(80, max_len=40, seed=1)
    expected = pack_examples(examples, 32, num_bins=3)
    stats = PackStats()
    rows = list(pack_dataset(grain.MapDataset.source(examples), 32, num_bins=3, stats=stats))
    _assert_same_rows(rows, expected)
    _assert_same_rows(pack_examples(examples, 32, num_bins=3), expected)
    assert stats.rows == len(rows) and stats.examples == 80 and stats.truncated > 0


@pytest.mark.parametrize("shuffle_bins", [False, True])
def test_grain_iterator_resumes_exactly_from_a_saved_state(shuffle_bins):
    examples = _examples(60, max_len=30, seed=2)

    def pipeline():  # rebuilt from scratch, as after a restart
        source = grain.MapDataset.source(examples).shuffle(seed=3)
        return pack_dataset(source, 32, num_bins=4, shuffle_bins=shuffle_bins, seed=5)

    full = list(pipeline())
    assert len(full) > 12
    for cut in (0, 1, 3, 4, 7, len(full) - 1, len(full)):  # inside a window and at its edges
        it = iter(pipeline())
        head = [next(it) for _ in range(cut)]
        state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
        resumed = iter(pipeline())
        resumed.set_state(state)
        _assert_same_rows(head + list(resumed), full)


# --- packing isolation through the real model -----------------------------------------------

SEQ_LEN = 32


@pytest.fixture(scope="module")
def nll_fn():
    cfg = get_preset("tiny", initializer_range=0.2)  # large enough init that logits depend on context
    mesh = mesh_lib.make_mesh("dp:1,fsdp:8,tp:1")
    params = models.init_params(cfg, mesh, seed=0)

    @jax.jit
    def nll(params, batch):
        logits = Transformer(cfg).apply({"params": params}, batch["inputs"], positions=batch["positions"],
                                        segment_ids=batch["segment_ids"])
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]

    def run(rows):
        rows = list(rows)
        empty = {name: np.zeros(SEQ_LEN, DTYPES[name]) for name in ROW_FIELDS}
        rows += [empty] * (-len(rows) % 8)  # the batch is sharded 8 ways
        batch = {name: np.stack([r[name] for r in rows]) for name in ROW_FIELDS}
        with mesh_lib.use(mesh):
            return np.asarray(nll(params, batch))

    return run


def _per_example_nll(rows, nll):
    """Per-token NLL of each packed example, keyed by its tokens, and where it sat."""
    return {tuple(tokens): (nll[r, start:start + len(tokens) - 1], (r, start))
            for r, start, tokens, _, _ in _segments(rows)}


def test_changing_one_packed_example_leaves_the_others_losses_unchanged(nll_fn):
    examples = _examples(14, min_len=3, max_len=20, seed=4)
    rows = pack_examples(examples, SEQ_LEN, num_bins=4)
    base = _per_example_nll(rows, nll_fn(rows))

    # Each example alone in its own row gives the same losses as packed.
    alone = [pack_examples([ex], SEQ_LEN)[0] for ex in examples]
    alone_nll = nll_fn(alone)
    for i, ex in enumerate(examples):
        n = len(ex["tokens"])
        np.testing.assert_allclose(base[tuple(ex["tokens"])][0], alone_nll[i, :n - 1], atol=1e-5, rtol=0)

    # Pick an example that shares its row with others, and change one of its middle tokens.
    k = next(i for i, ex in enumerate(examples)
             if np.max(rows[base[tuple(ex["tokens"])][1][0]]["segment_ids"]) >= 2)
    changed = [dict(ex) for ex in examples]
    tokens = changed[k]["tokens"].copy()
    middle = len(tokens) // 2
    tokens[middle] = (tokens[middle] + 1) % 256
    changed[k]["tokens"] = tokens

    for variant in ("same length", "longer"):
        if variant == "longer":  # now the layout shifts too: others move to other rows/slots
            changed[k]["tokens"] = np.concatenate([tokens, np.arange(1, 12)])
            changed[k]["weights"] = np.ones(len(changed[k]["tokens"]), np.float32)
        new_rows = pack_examples(changed, SEQ_LEN, num_bins=4)
        new = _per_example_nll(new_rows, nll_fn(new_rows))
        moved = 0
        for i, ex in enumerate(examples):
            if i == k:
                continue
            key = tuple(ex["tokens"])
            np.testing.assert_allclose(new[key][0], base[key][0], atol=1e-5, rtol=0, err_msg=variant)
            moved += new[key][1] != base[key][1]
        assert (moved > 0) == (variant == "longer")
        new_k = new[tuple(changed[k]["tokens"])][0]
        old_k = base[tuple(examples[k]["tokens"])][0]
        # The changed example's own losses do change from the changed token on (its target is
        # at slot middle - 1), and not before it.
        np.testing.assert_allclose(new_k[:middle - 1], old_k[:middle - 1], atol=1e-5, rtol=0)
        assert np.max(np.abs(new_k[middle - 1:len(old_k)] - old_k[middle - 1:])) > 1e-3


# --- multi-part examples and extra per-token fields --------------------------------------------


def _multi_part_examples(count, seed, max_parts=3, max_len=12, vocab=256):
    """Mixed single- and multi-part examples; some parts carry ul_weights, some do not."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        parts = []
        for _ in range(int(rng.integers(1, max_parts + 1))):
            n = int(rng.integers(2, max_len + 1))
            part = {"tokens": rng.integers(1, vocab, n), "weights": rng.random(n).astype(np.float32)}
            if rng.random() < 0.5:
                part["ul_weights"] = rng.random(n).astype(np.float32)
            parts.append(part)
        out.append(parts[0] if len(parts) == 1 and i % 2 else {"parts": parts})
    return out


def test_parts_of_an_example_are_consecutive_segments_of_one_row_each_shifted_on_its_own():
    a = {"tokens": [10, 11, 12, 13], "weights": [0, 0, 1, 1], "ul_weights": [0, 1, 1, 0]}
    b = {"tokens": [20, 21, 22]}
    single = {"tokens": [30, 31, 32]}
    rows = pack_examples([single, {"parts": [a, b]}, {"parts": [b]}], 12, fields=("ul_weights",))
    assert len(rows) == 1 and set(rows[0]) == {*ROW_FIELDS, "ul_weights"}
    row = rows[0]
    assert row["segment_ids"].tolist() == [1, 1, 2, 2, 2, 3, 3, 4, 4, 0, 0, 0]
    assert row["positions"].tolist() == [0, 1, 0, 1, 2, 0, 1, 0, 1, 0, 0, 0]
    assert row["inputs"].tolist() == [30, 31, 10, 11, 12, 20, 21, 20, 21, 0, 0, 0]
    # Part a's last target is its own last token (13), never b's first token (20).
    assert row["targets"].tolist() == [31, 32, 11, 12, 13, 21, 22, 21, 22, 0, 0, 0]
    assert row["weights"].tolist() == [1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    # ul_weights shift like weights; 0 where a part lacks them and on padding.
    assert row["ul_weights"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert row["ul_weights"].dtype == np.float32
    # Without fields the extra per-token field is not carried.
    assert set(pack_examples([{"parts": [a, b]}], 12)[0]) == set(ROW_FIELDS)


def test_parts_stay_together_when_the_row_fills_up():
    def ex(n, first):
        return {"tokens": np.arange(first, first + n)}

    # Rows of 8, one open row: 5 slots, then a pair needing 2 + 3 slots does not fit beside it and
    # goes, whole, into the next row.
    rows = pack_examples([ex(6, 10), {"parts": [ex(3, 20), ex(4, 30)]}], 8, num_bins=1)
    assert [r["segment_ids"].tolist() for r in rows] == [[1] * 5 + [0] * 3, [1, 1, 2, 2, 2, 0, 0, 0]]


def test_multi_part_overflow_water_fills_or_raises():
    seq_len = 12
    parts = [{"tokens": np.arange(1, 12)}, {"tokens": np.arange(20, 24)}, {"tokens": np.arange(40, 47)}]
    # 10 + 3 + 6 = 19 slots > 12: the largest cap c with min(10, c) + min(3, c) + min(6, c) <= 12 is 4.
    stats = PackStats()
    (row,) = pack_examples([{"parts": parts}], seq_len, stats=stats)
    assert stats.truncated == 1 and stats.examples == 1
    assert row["segment_ids"].tolist() == [1] * 4 + [2] * 3 + [3] * 4 + [0]
    assert row["inputs"].tolist() == [1, 2, 3, 4, 20, 21, 22, 40, 41, 42, 43, 0]
    assert row["targets"].tolist() == [2, 3, 4, 5, 21, 22, 23, 41, 42, 43, 44, 0]
    with pytest.raises(ValueError, match=r"example 0: its 3 parts \(22 tokens\) need 19 slots, but rows of "
                                         r"seq_len=12 have 12 \(overflow='error'"):
        pack_examples([{"parts": parts}], seq_len, overflow="error")
    # One part is the single-part rule: keep the first seq_len + 1 tokens.
    (one,) = pack_examples([{"parts": parts[:1]}], 8)
    np.testing.assert_array_equal(one["inputs"], np.arange(1, 9))
    with pytest.raises(ValueError, match=r"3 parts cannot share a row of seq_len=2"):
        pack_examples([{"parts": parts}], 2)


def test_multi_part_dropping_and_errors():
    stats = PackStats()
    ok = {"tokens": [1, 2, 3]}
    rows = pack_examples([{"parts": [ok, {"tokens": [5]}]}, {"parts": [ok, ok]}], 8, stats=stats)
    # A part predicting nothing drops its whole example, so packed examples keep all their parts.
    assert (stats.examples, stats.dropped) == (1, 1)
    assert rows[0]["segment_ids"].tolist() == [1, 1, 2, 2, 0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"example 1 part 1: 'ul_weights' has shape \(2,\) but 'tokens' has"):
        pack_examples([ok, {"parts": [ok, {"tokens": [1, 2, 3], "ul_weights": [0, 1]}]}], 8,
                      fields=("ul_weights",))
    with pytest.raises(ValueError, match=r"example 0 part 0: expected a mapping with 'tokens'"):
        pack_examples([{"parts": [[1, 2, 3]]}], 8)
    with pytest.raises(ValueError, match=r"example 0: 'parts' must be a non-empty list"):
        pack_examples([{"parts": []}], 8)
    with pytest.raises(ValueError, match=r"example 0: has both 'tokens' and 'parts'"):
        pack_examples([{"tokens": [1, 2], "parts": [ok]}], 8)
    with pytest.raises(ValueError, match=r"example 0: 'ul_weights' contains NaN"):
        pack_examples([{"tokens": [1, 2], "ul_weights": [0, np.nan]}], 8, fields=("ul_weights",))
    for bad in (("weights",), ("ul_weights", "ul_weights"), "ul_weights"):
        with pytest.raises(ValueError, match=r"fields"):
            pack_examples([ok], 8, fields=bad)


@pytest.mark.parametrize("overflow", ["truncate", "error"])
def test_grain_pipeline_gives_the_same_rows_with_parts_and_fields(overflow):
    # With "error" every example fits: 3 parts of at most 8 slots.
    examples = _multi_part_examples(70, seed=6, max_len=9 if overflow == "error" else 20)
    expected = pack_examples(examples, 24, num_bins=3, overflow=overflow, fields=("ul_weights",))
    assert any(r["segment_ids"].max() > 3 for r in expected)
    stats = PackStats()
    rows = list(pack_dataset(grain.MapDataset.source(examples), 24, num_bins=3, overflow=overflow,
                             fields=("ul_weights",), stats=stats))
    _assert_same_rows(rows, expected)
    assert stats.rows == len(rows) and stats.examples == 70
    assert (stats.truncated > 0) == (overflow == "truncate")
    # Every part of every example is in the rows, intact, as consecutive segments.
    found = _segments(rows)
    parts = [ex["parts"] if "parts" in ex else [ex] for ex in examples]
    assert len(found) == sum(len(p) for p in parts)
    if overflow == "error":
        flat = [p for ps in parts for p in ps]
        by_tokens = {tuple(tokens): (r, start) for r, start, tokens, _, _ in found}
        for ps in parts:
            places = [by_tokens[tuple(p["tokens"])] for p in ps]
            for k in range(len(ps) - 1):  # same row, each part right after the one before
                assert places[k + 1] == (places[k][0], places[k][1] + len(ps[k]["tokens"]) - 1)
        assert len(by_tokens) == len(flat)


def test_parts_do_not_see_each_other_through_the_model(nll_fn):
    examples = _multi_part_examples(10, seed=7, max_len=14)
    multi = [ex for ex in examples if "parts" in ex and len(ex["parts"]) > 1]
    assert multi
    rows = pack_examples(multi, SEQ_LEN, num_bins=2)
    packed = _per_example_nll(rows, nll_fn(rows))
    # Each part alone in a row has exactly the per-token losses it has next to its sibling parts.
    alone_examples = [part for ex in multi for part in ex["parts"]]
    alone = [pack_examples([part], SEQ_LEN)[0] for part in alone_examples]
    alone_nll = nll_fn(alone)
    for i, part in enumerate(alone_examples):
        n = len(part["tokens"])
        np.testing.assert_allclose(packed[tuple(part["tokens"])][0], alone_nll[i, :n - 1], atol=1e-5, rtol=0)



def _tally_examples():
    """By hand, on rows of seq_len = 8: A (20 tokens, weight on its last 10) keeps its first 9 tokens,
    so it loses 11 of its 19 predictions and all 10 weighted ones; B and D predict nothing (dropped);
    C (9 tokens, all weighted) just fits; E's parts of 11, 4 and 7 tokens (10 + 3 + 6 = 19 weighted
    predictions) are water-filled to a cap of 2 slots each (3 * 2 <= 8 < 3 * 3): 6 kept, 13 cut."""
    a = {"tokens": np.arange(20), "weights": np.r_[np.zeros(10), np.ones(10)]}
    c = {"tokens": np.arange(9), "weights": np.ones(9)}
    e = {"parts": [{"tokens": np.arange(1, 12)}, {"tokens": np.arange(20, 24)},
                   {"tokens": np.arange(40, 47)}]}
    return [a, {"tokens": [5]}, c, {"tokens": []}, e]


TALLY = {"seq_len": 8, "examples": 5, "examples_truncated": 2, "tokens": 19 + 8 + 19,
         "tokens_cut": 11 + 13, "weighted_tokens": 10 + 8 + 19, "weighted_tokens_cut": 10 + 13,
         "weighted_tokens_kept": 1 - 23 / 37}


def test_truncation_tally_counts_examples_tokens_and_weighted_tokens():
    stats = PackStats()
    with pytest.warns(TruncationWarning):  # 62% of the loss weight is cut
        pack_examples(_tally_examples(), 8, stats=stats)
    assert (stats.examples, stats.dropped, stats.truncated) == (3, 2, 2)
    assert stats.truncation_stats() == pytest.approx(TALLY)
    # The grain packer counts the same, and both accumulate over calls.
    grain_stats = PackStats()
    list(pack_dataset(grain.MapDataset.source(_tally_examples()), 8, stats=grain_stats))
    assert grain_stats.truncation_stats() == pytest.approx(TALLY)
    with pytest.warns(TruncationWarning):
        pack_examples(_tally_examples(), 8, stats=stats)
    twice = {k: v if k in ("seq_len", "weighted_tokens_kept") else 2 * v for k, v in TALLY.items()}
    assert stats.truncation_stats() == pytest.approx(twice)
    assert PackStats().truncation_stats()["weighted_tokens_kept"] == 1.0  # nothing seen: nothing lost


def test_truncation_warns_above_the_threshold_only(caplog):
    assert TRUNCATION_WARN_FRACTION == 0.10
    # 1 of 10 weighted predictions cut: exactly 10%, not more. Logged, no warning.
    stats = PackStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.INFO, logger="jaxalign.data.packing"):
            pack_examples([{"tokens": np.arange(11)}], 9, stats=stats)
    assert (stats.weighted_tokens, stats.weighted_tokens_cut, stats.weighted_tokens_kept) == (10, 1, 0.9)
    assert ("packing: 1 of 1 examples cut to seq_len=9 (1 of 10 predicted tokens); 90.0% of the weighted "
            "(loss) tokens kept") in caplog.text
    # 2 of 11 cut (18%): a warning naming seq_len and what to change.
    with pytest.warns(TruncationWarning, match=r"packing: truncation to seq_len=9 cut 18\.2% of the weighted "
                                               r"\(loss\) tokens, more than 10%.*raise seq_len.*tokenizer"):
        pack_examples([{"tokens": np.arange(12)}], 9)
    # Unweighted (prompt) tokens cut do not count: 20 prompt tokens, 10 weighted, 1 of those cut.
    prompt_cut = {"tokens": np.arange(31), "weights": np.r_[np.zeros(21), np.ones(10)]}
    stats = PackStats()
    list(pack_dataset(grain.MapDataset.source([prompt_cut]), 29, stats=stats))
    assert (stats.truncated, stats.tokens_cut, stats.weighted_tokens_kept) == (1, 1, 0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stats.report("feedback")["weighted_tokens_kept"] == 0.9
    with pytest.warns(TruncationWarning, match=r"packing \(feedback\): truncation to seq_len=29 cut 10\.0%"):
        stats.report("feedback", threshold=0.05)
