"""SFT + unlikelihood: example builders, packing with ul_weights, hand-checked loss in both
normalisations, stability as p -> 1, equality with lm.loss without negatives, exact accumulation."""

import functools

import jax
import numpy as np
import pytest

from jaxalign.data.packing import pack_examples
from jaxalign.objectives import lm, unlikelihood

V = 11
_loss = jax.jit(unlikelihood.loss, static_argnames=("alpha", "normalization"))


@functools.partial(jax.jit, static_argnames=("alpha", "normalization"))
def _grad(logits, batch, alpha, normalization):
    def value(z):
        return unlikelihood.loss(z, batch, alpha=alpha, normalization=normalization)[0]

    return jax.grad(value)(logits)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _batch(seed=0, seq_len=24, count=12):
    """Rows packing positive and negative examples (and padding), with random logits."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(count):
        prompt = rng.integers(1, V, int(rng.integers(1, 5)))
        response = rng.integers(1, V, int(rng.integers(1, 7)))
        build = unlikelihood.positive_example if i % 3 else unlikelihood.negative_example
        examples.append(build(prompt, response, 0))
    rows = pack_examples(examples, seq_len, num_bins=2, fields=("ul_weights",))
    batch = {name: np.stack([r[name] for r in rows]) for name in rows[0]}
    logits = rng.normal(0, 2.0, (*batch["targets"].shape, V)).astype(np.float32)
    return logits, batch


def _expected(logits, batch, alpha, normalization):
    """(loss, nll term, ul term, loss_weight) by loops in float64."""
    logp = np.take_along_axis(_log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
    nll, ul = -logp, -np.log1p(-np.exp(logp))
    w, u = batch["weights"].astype(np.float64), batch["ul_weights"].astype(np.float64)
    if normalization == "token":
        total = w.sum() + u.sum()
        a, b = (w * nll).sum() / total, (u * ul).sum() / total
        return a + alpha * b, a, b, total
    terms = []
    for r in range(w.shape[0]):
        seg = batch["segment_ids"][r]
        seg = seg if normalization == "sequence" else np.ones_like(seg)  # "row": one sequence per row
        for s in range(1, seg.max() + 1):
            m = seg == s
            n = w[r][m].sum() + u[r][m].sum()
            if n > 0:
                terms.append(((w[r] * nll[r])[m].sum() / n, (u[r] * ul[r])[m].sum() / n))
    a, b = np.array(terms).T
    return a.mean() + alpha * b.mean(), a.mean(), b.mean(), len(terms)


def test_builders_and_packing_carry_ul_weights():
    pos = unlikelihood.positive_example([5, 6], [1, 2], 0)
    neg = unlikelihood.negative_example([5, 6], [3, 4], 0)
    assert pos["tokens"].tolist() == [5, 6, 1, 2, 0] and pos["weights"].tolist() == [0, 0, 1, 1, 1]
    assert pos["ul_weights"].tolist() == [0] * 5
    assert neg["tokens"].tolist() == [5, 6, 3, 4, 0] and neg["weights"].tolist() == [0] * 5
    assert neg["ul_weights"].tolist() == [0, 0, 1, 1, 0]  # the EOS is not pushed down by default
    assert unlikelihood.negative_example([5], [3], 0, ul_on_eos=True)["ul_weights"].tolist() == [0, 1, 1]
    (row,) = pack_examples([pos, neg], 10, fields=("ul_weights",))
    assert row["weights"].tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert row["ul_weights"].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]


@pytest.mark.parametrize("normalization", ["token", "sequence", "row"])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_loss_matches_a_hand_computation(normalization, alpha):
    logits, batch = _batch()
    assert batch["ul_weights"].sum() > 0 and batch["weights"].sum() > 0
    loss, metrics = _loss(logits, batch, alpha=alpha, normalization=normalization)
    want, nll, ul, weight = _expected(logits, batch, alpha, normalization)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll"], nll, rtol=1e-5)
    np.testing.assert_allclose(metrics["unlikelihood"], ul, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_weight"], weight, rtol=1e-6)
    assert float(metrics["num_ul_tokens"]) == batch["ul_weights"].sum()
    if normalization == "sequence":
        assert float(metrics["num_sequences"]) == weight


def test_unlikelihood_is_stable_when_p_is_one():
    # The target's logit far above the rest: p(target) rounds to 1 in float32 (and even in float64).
    targets = np.array([[3, 3]], np.int32)
    logits = np.zeros((1, 2, V), np.float32)
    logits[0, 0, 3], logits[0, 1, 3] = 30.0, 200.0
    batch = {"targets": targets, "weights": np.zeros((1, 2), np.float32),
             "ul_weights": np.ones((1, 2), np.float32), "segment_ids": np.ones((1, 2), np.int32)}
    loss, metrics = _loss(logits, batch, alpha=1.0, normalization="token")
    # -log(1 - p) = logsumexp(all) - logsumexp(others) = log(1 + exp(gap) / (V - 1)) exactly.
    per_token = [np.logaddexp(0.0, gap - np.log(V - 1)) for gap in (30.0, 200.0)]
    np.testing.assert_allclose(metrics["unlikelihood"], np.mean(per_token), rtol=1e-6)
    np.testing.assert_allclose(loss, np.mean(per_token), rtol=1e-6)
    grad = np.asarray(_grad(logits, batch, 1.0, "token"))
    assert np.all(np.isfinite(grad))
    # d(-log(1 - p))/d(target logit) = p: bounded, here 1 (times the 1/2 of the mean).
    np.testing.assert_allclose(grad[0, :, 3], [0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(grad[0].sum(-1), 0.0, atol=1e-6)  # a softmax gradient sums to 0


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_without_negatives_it_is_the_lm_loss(normalization):
    logits, batch = _batch(seed=1)
    batch["ul_weights"] = np.zeros_like(batch["ul_weights"])
    loss, metrics = _loss(logits, batch, alpha=1.0, normalization=normalization)
    lm_loss, lm_metrics = lm.loss(logits, batch, normalization)
    np.testing.assert_allclose(loss, lm_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_weight"], lm_metrics["loss_weight"])
    assert float(metrics["unlikelihood"]) == 0.0 and float(metrics["num_ul_tokens"]) == 0.0
    lm_grad = jax.grad(lambda z: lm.loss(z, batch, normalization)[0])(logits)
    np.testing.assert_allclose(_grad(logits, batch, 1.0, normalization), lm_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_accumulation_over_row_splits_is_exact(normalization):
    logits, batch = _batch(seed=2, count=20)
    rows = batch["targets"].shape[0] // 2 * 2
    logits, batch = logits[:rows], {n: x[:rows] for n, x in batch.items()}
    loss, metrics = _loss(logits, batch, alpha=0.7, normalization=normalization)
    grad = np.asarray(_grad(logits, batch, 0.7, normalization))
    splits = [np.arange(0, rows, 2), np.arange(1, rows, 2)]  # as the train step splits, m = 2
    parts = [(_loss(logits[s], {n: x[s] for n, x in batch.items()}, alpha=0.7, normalization=normalization),
              s) for s in splits]
    weights = np.array([float(m["loss_weight"]) for (_, m), _ in parts])
    assert weights[0] != weights[1]
    total = weights.sum()
    np.testing.assert_allclose(total, metrics["loss_weight"], rtol=1e-6)
    for name in ("nll", "unlikelihood"):
        combined = sum(float(m[name]) * w for ((_, m), _), w in zip(parts, weights, strict=True)) / total
        np.testing.assert_allclose(combined, metrics[name], rtol=1e-5, err_msg=name)
    combined = sum(float(value) * w for ((value, _), _), w in zip(parts, weights, strict=True)) / total
    np.testing.assert_allclose(combined, loss, rtol=1e-5)
    for s, w in zip(splits, weights, strict=True):
        part = np.asarray(_grad(logits[s], {n: x[s] for n, x in batch.items()}, 0.7, normalization))
        np.testing.assert_allclose(part * w / total, grad[s], rtol=1e-4, atol=1e-8)


def test_bad_input_is_rejected():
    logits, batch = _batch()
    del batch["ul_weights"]
    with pytest.raises(ValueError, match=r"needs batch\['ul_weights'\] \(pack with fields"):
        unlikelihood.loss(logits, batch)
    with pytest.raises(ValueError, match="normalization='mean'"):
        unlikelihood.make_loss_fn(normalization="mean")
    with pytest.raises(ValueError, match="alpha=-1.0 must be >= 0"):
        unlikelihood.make_loss_fn(alpha=-1.0)
