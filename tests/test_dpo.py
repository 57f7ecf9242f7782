"""DPO: the pair builder, pairing by segment in packed rows, hand-checked loss and metrics, saturation,
label smoothing, exact accumulation over row splits, empty batches and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.data.packing import pack_examples
from jaxalign.objectives import dpo

V = 7
_loss = jax.jit(dpo.loss, static_argnames=("beta", "label_smoothing"))
_grad = jax.jit(jax.grad(lambda z, b, beta, label_smoothing: dpo.loss(z, b, beta=beta,
                                                                       label_smoothing=label_smoothing)[0]),
                static_argnames=("beta", "label_smoothing"))


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _handmade_batch(seed=0):
    """Two rows of 12 slots. Row 0: pairs (1, 2), (3, 4) and (5, 6) whose rejected has no weight;
    row 1: pair (1, 2) and a lone segment 3. Both rows end in padding."""
    segment_ids = np.array([[1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 0, 0],
                            [1, 1, 2, 2, 2, 3, 3, 3, 3, 0, 0, 0]], np.int32)
    weights = np.array([[0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0],
                        [1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]], np.float32)
    rng = np.random.default_rng(seed)
    positions = np.zeros_like(segment_ids)
    for r in range(2):
        for s in range(1, segment_ids[r].max() + 1):
            idx = np.flatnonzero(segment_ids[r] == s)
            positions[r, idx] = np.arange(idx.size)
    batch = {
        "inputs": rng.integers(0, V, (2, 12)).astype(np.int32),
        "targets": rng.integers(0, V, (2, 12)).astype(np.int32),
        "weights": weights,
        "segment_ids": segment_ids,
        "positions": positions,
        "ref_logps": -rng.uniform(0.5, 3.0, (2, 12)).astype(np.float32),
    }
    logits = rng.normal(0, 2.0, (2, 12, V)).astype(np.float32)
    return logits, batch


def _reference_pairs(logits, batch, beta):
    """Per counted pair (policy chosen, policy rejected, reward chosen, reward rejected), by loops."""
    logp = np.take_along_axis(_log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
    out = []
    for r in range(logits.shape[0]):
        seg, w = batch["segment_ids"][r], batch["weights"][r].astype(np.float64)
        for j in range(1, seg.max() // 2 + 1):
            c, rej = seg == 2 * j - 1, seg == 2 * j
            if w[c].sum() <= 0 or w[rej].sum() <= 0:
                continue
            pi_c, pi_r = (w * logp[r])[c].sum(), (w * logp[r])[rej].sum()
            ref_c, ref_r = (w * batch["ref_logps"][r])[c].sum(), (w * batch["ref_logps"][r])[rej].sum()
            out.append((pi_c, pi_r, beta * (pi_c - ref_c), beta * (pi_r - ref_r)))
    return np.array(out)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_loss_and_metrics_match_a_hand_computation(label_smoothing):
    beta = 0.5
    logits, batch = _handmade_batch()
    loss, metrics = _loss(logits, batch, beta=beta, label_smoothing=label_smoothing)

    pairs = _reference_pairs(logits, batch, beta)
    assert len(pairs) == 3  # (5, 6) has an unweighted rejected, row 1's segment 3 no partner
    pi_c, pi_r, r_c, r_r = pairs.T
    h = r_c - r_r
    losses = -(1 - label_smoothing) * _log_sigmoid(h) - label_smoothing * _log_sigmoid(-h)
    np.testing.assert_allclose(loss, losses.mean(), rtol=1e-5)
    expected = {"loss_weight": 3, "num_pairs": 3, "accuracy": np.mean(h > 0), "reward_margin": h.mean(),
                "reward_chosen": r_c.mean(), "reward_rejected": r_r.mean(), "logp_chosen": pi_c.mean(),
                "logp_rejected": pi_r.mean()}
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert 0 < metrics["accuracy"] < 1  # the seed gives pairs on both sides


def test_uncounted_segments_get_no_gradient():
    logits, batch = _handmade_batch()
    grad = np.asarray(_grad(logits, batch, beta=0.5, label_smoothing=0.0))
    counted = np.zeros((2, 12), bool)
    counted[0, :8] = True  # pairs (1, 2) and (3, 4) of row 0
    counted[1, :5] = True  # pair (1, 2) of row 1
    trained = counted & (batch["weights"] > 0)
    assert np.all(np.abs(grad[trained]).sum(-1) > 0)
    assert np.all(grad[~trained] == 0)


def test_gradient_vanishes_once_the_margin_is_huge_unless_labels_are_smoothed():
    logits, batch = _handmade_batch()
    # A reference that finds every chosen response astronomically unlikely: r_chosen - r_rejected is
    # about beta * 1000 per chosen token.
    chosen = (batch["segment_ids"] % 2 == 1) & (batch["segment_ids"] > 0)
    batch["ref_logps"] = np.where(chosen, -1000.0, batch["ref_logps"]).astype(np.float32)
    loss, metrics = _loss(logits, batch, beta=0.5, label_smoothing=0.0)
    assert float(loss) < 1e-30 and float(metrics["accuracy"]) == 1.0
    assert np.max(np.abs(_grad(logits, batch, beta=0.5, label_smoothing=0.0))) < 1e-30
    # Conservative DPO keeps a pull back (eps * sigmoid(h) ~ eps) instead of pushing h to infinity.
    smoothed = np.asarray(_grad(logits, batch, beta=0.5, label_smoothing=0.1))
    assert np.all(np.isfinite(smoothed)) and np.max(np.abs(smoothed)) > 1e-3


def _packed_pairs(count, seq_len, seed):
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        prompt, chosen, rejected = (rng.integers(1, V, int(rng.integers(lo, hi))) for lo, hi in
                                    ((1, 5), (1, 6), (0, 6)))
        examples.append(dpo.pair_example(prompt, chosen, rejected, eos_id=0))
    return examples, pack_examples(examples, seq_len, num_bins=4)


def test_pair_example_and_pairing_of_packed_rows():
    example = dpo.pair_example([5, 6], [1, 2, 3], [4], eos_id=0)
    chosen, rejected = example["parts"]
    assert chosen["tokens"].tolist() == [5, 6, 1, 2, 3, 0]
    assert chosen["weights"].tolist() == [0, 0, 1, 1, 1, 1]
    assert rejected["tokens"].tolist() == [5, 6, 4, 0]
    assert rejected["weights"].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="eos_id must be an integer"):
        dpo.pair_example([5], [1], [2], eos_id=None)

    # With context-free logits (a table lookup of the input token) each pair's terms can be computed
    # from the example alone; the loss over packed rows must pair segments 2j - 1 and 2j as packed.
    examples, rows = _packed_pairs(30, 32, seed=1)
    assert max(int(r["segment_ids"].max()) for r in rows) >= 6  # several pairs share rows
    assert all(int(r["segment_ids"].max()) % 2 == 0 for r in rows)
    rng = np.random.default_rng(2)
    table, ref_table = rng.normal(0, 1.5, (2, V, V)).astype(np.float32)
    batch = {name: np.stack([r[name] for r in rows]) for name in rows[0]}
    logits = table[batch["inputs"]]
    ref = _log_softmax(ref_table[batch["inputs"]])
    batch["ref_logps"] = np.take_along_axis(ref, batch["targets"][..., None], -1)[..., 0].astype(np.float32)
    loss, metrics = _loss(logits, batch, beta=0.3, label_smoothing=0.0)

    def seq_logp(table, part):
        t, w = part["tokens"], part["weights"]
        return sum(w[i] * _log_softmax(table[t[i - 1]])[t[i]] for i in range(1, len(t)))

    margins = np.array([
        0.3 * ((seq_logp(table, c) - seq_logp(ref_table, c)) - (seq_logp(table, r) - seq_logp(ref_table, r)))
        for c, r in (ex["parts"] for ex in examples)
    ])
    assert float(metrics["num_pairs"]) == len(examples)
    np.testing.assert_allclose(loss, -_log_sigmoid(margins).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_margin"], margins.mean(), rtol=1e-4, atol=1e-6)


def test_accumulation_over_row_splits_is_exact():
    examples, rows = _packed_pairs(40, 24, seed=3)
    rows = rows[:3] + pack_examples(examples[:1], 24)  # the last row holds a single pair
    batch = {name: np.stack([r[name] for r in rows]) for name in rows[0]}
    rng = np.random.default_rng(4)
    batch["ref_logps"] = -rng.uniform(0.1, 3.0, batch["targets"].shape).astype(np.float32)
    logits = rng.normal(0, 2.0, (*batch["targets"].shape, V)).astype(np.float32)
    loss, metrics = _loss(logits, batch, beta=0.2, label_smoothing=0.1)
    grad = np.asarray(_grad(logits, batch, beta=0.2, label_smoothing=0.1))

    # As the train step splits: microbatch k holds rows k, k + 2; each contributes loss * loss_weight.
    splits = [[0, 2], [1, 3]]
    parts = [_loss(logits[s], {n: x[s] for n, x in batch.items()}, beta=0.2, label_smoothing=0.1)
             for s in splits]
    weights = np.array([float(m["loss_weight"]) for _, m in parts])
    assert np.all(weights > 0) and weights.sum() == float(metrics["num_pairs"])
    assert weights[0] != weights[1]  # unequal splits: a mean of means would be wrong
    combined = sum(float(value) * w for (value, _), w in zip(parts, weights, strict=True)) / weights.sum()
    np.testing.assert_allclose(combined, loss, rtol=1e-6)
    for name in ("accuracy", "reward_margin", "reward_chosen"):
        combined = sum(float(m[name]) * w for (_, m), w in zip(parts, weights, strict=True)) / weights.sum()
        np.testing.assert_allclose(combined, metrics[name], rtol=1e-5, atol=1e-7, err_msg=name)
    # Gradients: d(loss_k * w_k / sum w) for each split's rows is the whole batch's gradient there.
    for s, w in zip(splits, weights, strict=True):
        rows_s = {n: x[s] for n, x in batch.items()}
        part = np.asarray(_grad(logits[s], rows_s, beta=0.2, label_smoothing=0.1))
        np.testing.assert_allclose(part * w / weights.sum(), grad[s], rtol=1e-5, atol=1e-8)


def test_a_batch_without_pairs_gives_zero_loss_and_gradient():
    logits, batch = _handmade_batch()
    batch = {**batch, "weights": np.zeros_like(batch["weights"]),
             "segment_ids": np.zeros_like(batch["segment_ids"])}
    loss, metrics = _loss(logits, batch, beta=0.1, label_smoothing=0.0)
    assert float(loss) == 0.0 and float(metrics["loss_weight"]) == 0.0
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert np.all(np.asarray(_grad(logits, batch, beta=0.1, label_smoothing=0.0)) == 0)


def test_bad_input_is_rejected():
    logits, batch = _handmade_batch()
    del batch["ref_logps"]
    with pytest.raises(ValueError, match=r"dpo.loss needs batch\['ref_logps'\]"):
        dpo.loss(jnp.asarray(logits), batch)
    with pytest.raises(ValueError, match="beta=0.0 must be positive"):
        dpo.make_loss_fn(beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing=0.5 must be in"):
        dpo.make_loss_fn(label_smoothing=0.5)
