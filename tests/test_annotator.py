"""The simulated annotator (jaxalign.data.annotator): measured noise matches the configured noise within
binomial error, draws are a function of (seed, key) alone, and bad parameters are clear errors."""

import json
import math

import numpy as np
import pytest

from jaxalign.data.annotator import Annotator

N = 20_000


def _pairs(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(n), rng.random(n)


def _within(measured, p, n, sigmas=3.0):
    """|measured - p| within `sigmas` binomial standard errors of n draws at rate p."""
    return abs(measured - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_flip_rate_alone_is_measured_within_binomial_error():
    a, b = _pairs()
    for flip in (0.1, 0.25):
        annotator = Annotator(temperature=0.0, flip_rate=flip, seed=1)
        out = Annotator.disagreement(a, b, annotator.label_pairs(a, b, range(N)), close=0.1)
        assert out["n"] == N and _within(out["rate"], flip, N), out
        assert _within(out["close_rate"], flip, out["n_close"]), out  # flips do not care about the gap


def test_temperature_adds_disagreement_on_close_pairs():
    a, b = _pairs(seed=2)
    annotator = Annotator(temperature=0.1, flip_rate=0.05, seed=3)
    labels = annotator.label_pairs(a, b, [f"pair-{i}" for i in range(N)])
    out = Annotator.disagreement(a, b, labels, close=0.1)
    expected_close = annotator.expected_disagreement(a, b, close=0.1)
    expected = annotator.expected_disagreement(a, b)
    assert _within(out["close_rate"], expected_close, out["n_close"]), (out, expected_close)
    assert _within(out["rate"], expected, out["n"]), (out, expected)
    assert out["close_rate"] > out["rate"] > 0.05  # noisier where the rewards are close


def test_calibrate_hits_the_target_on_close_pairs():
    a, b = _pairs(seed=4)
    annotator = Annotator.calibrate(a, b, target=0.275, close=0.1, flip_rate=0.05, seed=5)
    assert annotator.flip_rate == 0.05 and annotator.seed == 5 and annotator.temperature > 0
    assert annotator.expected_disagreement(a, b, close=0.1) == pytest.approx(0.275, abs=1e-3)
    out = Annotator.disagreement(a, b, annotator.label_pairs(a, b, range(N)), close=0.1)
    assert 0.20 <= out["close_rate"] <= 0.35 and _within(out["close_rate"], 0.275, out["n_close"]), out
    assert Annotator.calibrate(a, b, target=0.05, flip_rate=0.05).temperature == 0.0
    with pytest.raises(ValueError, match="target"):
        Annotator.calibrate(a, b, target=0.02, flip_rate=0.05)
    with pytest.raises(ValueError, match="target"):
        Annotator.calibrate(a, b, target=0.5)
    with pytest.raises(ValueError, match="close"):
        Annotator.calibrate([0.1, 0.5], [0.9, 0.1], close=0.1)


def test_labels_are_seeded_and_independent_of_order_and_batching():
    a, b = _pairs(2000, seed=6)
    keys = [f"record-{i}" for i in range(2000)]
    annotator = Annotator(temperature=0.2, flip_rate=0.1, seed=7)
    labels = annotator.label_pairs(a, b, keys)
    np.testing.assert_array_equal(labels, Annotator(0.2, 0.1, 7).label_pairs(a, b, keys))
    order = np.random.default_rng(0).permutation(2000)
    np.testing.assert_array_equal(annotator.label_pairs(a[order], b[order], [keys[i] for i in order]),
                                  labels[order])
    halves = [annotator.label_pairs(a[s], b[s], keys[s]) for s in (slice(0, 700), slice(700, None))]
    np.testing.assert_array_equal(np.concatenate(halves), labels)
    assert [annotator.prefer(a[i], b[i], keys[i]) for i in range(50)] == labels[:50].tolist()
    assert (Annotator(0.2, 0.1, seed=8).label_pairs(a, b, keys) != labels).mean() > 0.05
    ratings = annotator.ratings(a, keys)
    np.testing.assert_array_equal(annotator.ratings(a[order], [keys[i] for i in order]), ratings[order])
    assert annotator.rate(float(a[3]), keys[3]) == ratings[3]
    # int keys (record indices) and str keys are separate keys.
    assert annotator.label_pairs(a[:200], b[:200], range(200)).tolist() != labels[:200].tolist()


def test_zero_temperature_without_flips_gives_the_true_order():
    a, b = _pairs(5000, seed=9)
    for temperature in (0.0, 1e-9):
        labels = Annotator(temperature, 0.0, seed=1).label_pairs(a, b, range(5000))
        np.testing.assert_array_equal(labels, a > b)
        assert Annotator.disagreement(a, b, labels)["rate"] == 0.0
    # A tie has no true order: a coin flip, left out of the disagreement.
    ties = Annotator(0.0).label_pairs(np.full(4000, 0.5), np.full(4000, 0.5), range(4000))
    assert _within(ties.mean(), 0.5, 4000)
    assert Annotator.disagreement([0.5, 0.7], [0.5, 0.2], np.array([False, True]))["n"] == 1


def test_ratings_are_on_the_scale_and_rise_with_the_reward():
    annotator = Annotator(0.1, seed=2, rating_noise=1.0)
    levels = np.linspace(0.0, 1.0, 11)
    means = []
    for j, reward in enumerate(levels):
        keys = [f"{j}-{i}" for i in range(1500)]
        ratings = annotator.ratings(np.full(1500, reward), keys)
        assert ratings.dtype.kind == "i" and ratings.min() >= 1 and ratings.max() <= 7
        means.append(ratings.mean())
    assert np.all(np.diff(means) > 0), means
    exact = Annotator(0.1, rating_noise=0.0)
    assert [exact.rate(r, i) for i, r in enumerate(levels)] == [round(1 + 6 * r) for r in levels]
    assert exact.rate(1.0, 0, scale=(1, 10)) == 10 and exact.rate(0.0, 0, scale=(1, 10)) == 1
    assert exact.rate(1.7, 0) == 7 and exact.rate(-0.5, 0) == 1  # clipped to the scale
    with pytest.raises(ValueError, match="scale"):
        exact.rate(0.5, 0, scale=(7, 1))


def test_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="temperature"):
        Annotator(temperature=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        Annotator(temperature=math.nan)
    for flip in (-0.01, 0.51, math.nan):
        with pytest.raises(ValueError, match="flip_rate"):
            Annotator(temperature=0.1, flip_rate=flip)
    with pytest.raises(ValueError, match="seed"):
        Annotator(0.1, seed=-1)
    with pytest.raises(ValueError, match="rating_noise"):
        Annotator(0.1, rating_noise=-1.0)
    annotator = Annotator(0.1)
    with pytest.raises(ValueError, match=">= 0"):
        annotator.prefer(0.1, 0.2, -3)
    with pytest.raises(TypeError, match="key"):
        annotator.prefer(0.1, 0.2, 1.5)
    with pytest.raises(ValueError, match="one length"):
        annotator.label_pairs([0.1, 0.2], [0.3, 0.4], [0])
    with pytest.raises(ValueError, match="distinct"):
        annotator.label_pairs([0.1, 0.2], [0.3, 0.4], [0, 0])
    with pytest.raises(ValueError, match="finite"):
        annotator.label_pairs([0.1, math.nan], [0.3, 0.4], [0, 1])
    with pytest.raises(ValueError, match="bool"):
        Annotator.disagreement([0.1], [0.2], [1])


def test_card_describes_the_noise():
    card = Annotator(0.05, 0.1, seed=3, rating_noise=0.7).card()
    assert {"temperature": 0.05, "flip_rate": 0.1, "rating_noise": 0.7, "seed": 3}.items() <= card.items()
    assert json.loads(json.dumps(card)) == card
