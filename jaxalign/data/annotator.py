"""A seeded simulated annotator over a true reward: noisy preference labels and ratings.

A test bed where alignment methods can win needs labels that are wrong the way human labels are:
pairs whose true rewards are close get labelled at random more often than clearly different ones
(a Bradley-Terry labeller with a temperature), and a careless labeller sometimes ticks the wrong box
whatever the pair (a flip rate). The true reward stays known, so how far a method trained on the noisy
labels gets is measured against the truth (a synthetic task's `score`).

    annotator = Annotator(temperature=0.1, flip_rate=0.05, seed=0)
    labels = annotator.label_pairs(rewards_a, rewards_b, keys)       # True: a preferred
    annotator.disagreement(rewards_a, rewards_b, labels, close=0.1)  # how noisy they came out
    annotator.rate(0.8, key="record-17")                             # a 1-7 rating, for Stable Alignment
    annotator.card()                                                 # the noise, for a data card

The label model: P(a preferred) = sigmoid((r_a - r_b) / temperature) (temperature 0: the true order,
a tie a coin flip), then the label is flipped with probability `flip_rate`. So a pair disagrees
with the true order with probability flip_rate + (1 - 2 flip_rate) (1 - sigmoid(|r_a - r_b| / T)):
`flip_rate` on clear pairs, up to 1/2 on ties.

Every draw is seeded by (seed, what is drawn, the key) alone -- `numpy.random.default_rng([seed,
purpose, kind, key])`, an int key as itself, a str key by its BLAKE2b digest (not Python's salted
`hash`) -- so a record's label does not depend on the order, batching or process it was labelled in,
and a preference and a rating of the same key are independent draws.

Choosing the noise: `flip_rate` alone makes every pair disagree at that rate; the temperature
concentrates disagreement on close pairs, as real annotators' does. For a test bed, 20-35% of the
labels of close pairs (|r_a - r_b| <= close) disagreeing with the true order is about what human
preference data sets show (inter-annotator agreement of 63-77% in Anthropic HH, WebGPT and
summarize-from-feedback); `Annotator.calibrate` picks the temperature that gives a target
(default 0.275) on the pairs at hand for a given flip rate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

Key = int | str
# What a draw is for: the preference and the rating of one key are independent streams.
_PREFER, _RATE = 0, 1
# Tolerance of the calibration's bisection on the expected disagreement.
_CALIBRATE_TOL = 1e-4


def _key_words(key: Key) -> tuple[int, int]:
    """A key as SeedSequence entropy: (0, the int) or (1, the BLAKE2b digest of the UTF-8 str)."""
    if isinstance(key, bool) or not isinstance(key, int | np.integer | str):
        raise TypeError(f"an annotator key is an int >= 0 or a str (a record index or id), got "
                        f"{type(key).__name__} {key!r}")
    if isinstance(key, str):
        return 1, int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest(), "little")
    if key < 0:
        raise ValueError(f"an int annotator key must be >= 0 (a record index), got {key}")
    return 0, int(key)


def _rewards(values: Any, name: str) -> np.ndarray:
    out = np.asarray(values, np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite, got {values!r}")
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


@dataclasses.dataclass(frozen=True)
class Annotator:
    """A simulated labeller over a true reward (see the module docstring for the noise model).

    temperature   Bradley-Terry temperature, >= 0, in reward units: 0 labels by the true order;
                  about the reward gap below which a pair is a toss-up.
    flip_rate     probability in [0, 0.5] that a label is flipped after the draw (a careless click);
                  above 0.5 the labeller would be adversarial, not noisy.
    seed          int >= 0; with a record's key it fixes every draw.
    rating_noise  standard deviation, >= 0, of the Gaussian noise of a rating, in scale points.
    """

    temperature: float
    flip_rate: float = 0.0
    seed: int = 0
    rating_noise: float = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, numbers.Real) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"Annotator: temperature={self.temperature!r} must be a finite number >= 0 "
                             "(0 labels by the true order)")
        if not (isinstance(self.flip_rate, numbers.Real) and 0.0 <= self.flip_rate <= 0.5):
            raise ValueError(f"Annotator: flip_rate={self.flip_rate!r} must be in [0, 0.5] (the chance a "
                             "label is flipped; above 0.5 the labeller is adversarial)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"Annotator: seed={self.seed!r} must be an int >= 0")
        if not (isinstance(self.rating_noise, numbers.Real) and math.isfinite(self.rating_noise)
                and self.rating_noise >= 0):
            raise ValueError(f"Annotator: rating_noise={self.rating_noise!r} must be a finite number >= 0")

    def _rng(self, purpose: int, key: Key) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), purpose, *_key_words(key)])

    def bt_probability(self, reward_a: Any, reward_b: Any) -> np.ndarray:
        """The Bradley-Terry P(a preferred) = sigmoid((r_a - r_b) / temperature), before any flip
        (temperature 0: 1, 0, or 1/2 for a tie). Elementwise over arrays."""
        diff = _rewards(reward_a, "reward_a") - _rewards(reward_b, "reward_b")
        if self.temperature == 0:
            return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
        return _sigmoid(diff / self.temperature)

    def probability(self, reward_a: Any, reward_b: Any) -> np.ndarray:
        """P(the label says a is preferred), flips included: f + (1 - 2 f) P_BT(a)."""
        f = self.flip_rate
        return f + (1.0 - 2.0 * f) * self.bt_probability(reward_a, reward_b)

    def prefer(self, reward_a: float, reward_b: float, key: Key) -> bool:
        """One label, True when a is preferred: a Bradley-Terry draw, then a flip with `flip_rate`.
        `key` (a record index or id) seeds the draw, so the label is the same in any order or batch."""
        u_bt, u_flip = self._rng(_PREFER, key).random(2)
        label = bool(u_bt < float(self.bt_probability(reward_a, reward_b)))
        return label != bool(u_flip < self.flip_rate)

    def label_pairs(self, rewards_a: Sequence[float] | np.ndarray, rewards_b: Sequence[float] | np.ndarray,
                    keys: Sequence[Key]) -> np.ndarray:
        """`prefer` over many pairs: a bool array, True where a is preferred; element i equals
        ``prefer(rewards_a[i], rewards_b[i], keys[i])``."""
        p = self.bt_probability(rewards_a, rewards_b)
        if p.ndim != 1 or len(keys) != p.shape[0]:
            raise ValueError(f"label_pairs needs 1-d rewards_a, rewards_b and keys of one length, got "
                             f"rewards of shape {p.shape} and {len(keys)} keys")
        if len(set(keys)) != len(keys):
            raise ValueError("label_pairs: keys must be distinct (a repeated key repeats its draws)")
        u = np.array([self._rng(_PREFER, k).random(2) for k in keys], np.float64).reshape(-1, 2)
        return (u[:, 0] < p) != (u[:, 1] < self.flip_rate)

    def expected_disagreement(self, rewards_a: Sequence[float] | np.ndarray,
                              rewards_b: Sequence[float] | np.ndarray, *,
                              close: float | None = None) -> float:
        """The expected fraction of labels that disagree with the true order, over the pairs that are
        not ties (and, with `close`, have |r_a - r_b| <= close); nan when there are none."""
        a, b = _rewards(rewards_a, "rewards_a"), _rewards(rewards_b, "rewards_b")
        gap = np.abs(a - b)
        keep = (gap > 0) & (gap <= close if close is not None else True)
        if not keep.any():
            return math.nan
        return float(np.mean(1.0 - self.probability(gap[keep], 0.0)))

    @staticmethod
    def disagreement(rewards_a: Sequence[float] | np.ndarray, rewards_b: Sequence[float] | np.ndarray,
                     labels: Sequence[bool] | np.ndarray, *, close: float = 0.1) -> dict[str, float]:
        """How often `labels` (True: a preferred) disagree with the true order of the rewards.

        Ties (r_a == r_b) have no true order and are left out. Returns ``rate`` and ``n`` over all the
        other pairs, and ``close_rate`` and ``n_close`` over those with |r_a - r_b| <= `close` (the
        ambiguous ones, where human labellers disagree most), rates nan when n is 0, and ``close``.
        """
        a, b = _rewards(rewards_a, "rewards_a"), _rewards(rewards_b, "rewards_b")
        labels = np.asarray(labels)
        if labels.dtype != bool or not (a.shape == b.shape == labels.shape) or labels.ndim != 1:
            raise ValueError(f"disagreement needs 1-d rewards_a, rewards_b and bool labels of one length, "
                             f"got shapes {a.shape}, {b.shape} and {labels.shape} ({labels.dtype})")
        if not close >= 0:
            raise ValueError(f"disagreement: close={close!r} must be >= 0")
        gap = np.abs(a - b)
        wrong = labels != (a > b)
        ordered = gap > 0
        near = ordered & (gap <= close)
        n, n_close = int(ordered.sum()), int(near.sum())
        return {
            "rate": float(wrong[ordered].mean()) if n else math.nan, "n": n,
            "close_rate": float(wrong[near].mean()) if n_close else math.nan, "n_close": n_close,
            "close": float(close),
        }

    @classmethod
    def calibrate(cls, rewards_a: Sequence[float] | np.ndarray, rewards_b: Sequence[float] | np.ndarray, *,
                  target: float = 0.275, close: float = 0.1, flip_rate: float = 0.05, seed: int = 0,
                  rating_noise: float = 0.5) -> Annotator:
        """The annotator with `flip_rate` whose temperature makes the *expected* disagreement on the
        close pairs of (rewards_a, rewards_b) equal `target` (default 0.275, the middle of the 20-35%
        that human preference data show). It rises with the temperature from `flip_rate` (T = 0) to
        1/2, so `target` must lie in [flip_rate, 0.5); found by bisection on log T."""
        probe = cls(0.0, flip_rate, seed, rating_noise)
        floor = probe.expected_disagreement(rewards_a, rewards_b, close=close)
        if math.isnan(floor):
            raise ValueError(f"calibrate: no pair has 0 < |r_a - r_b| <= close={close}; raise close")
        if not floor - _CALIBRATE_TOL <= target < 0.5:
            raise ValueError(f"calibrate: target={target!r} must be in [flip_rate={flip_rate}, 0.5): the "
                             "temperature can only add disagreement to the flips, and at most up to a "
                             "coin flip")
        if target <= floor + _CALIBRATE_TOL:
            return probe
        lo, hi = -12.0, 0.0  # log10 T
        while cls(10.0**hi, flip_rate).expected_disagreement(rewards_a, rewards_b, close=close) < target:
            lo, hi = hi, hi + 2.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            got = cls(10.0**mid, flip_rate).expected_disagreement(rewards_a, rewards_b, close=close)
            if abs(got - target) < _CALIBRATE_TOL:
                break
            lo, hi = (mid, hi) if got < target else (lo, mid)
        return cls(10.0**mid, flip_rate, seed, rating_noise)

    def rate(self, reward: float, key: Key, scale: tuple[int, int] = (1, 7)) -> int:
        """A noisy rating on the integer scale (lo, hi) (Stable Alignment's 1-7 by default):
        round(lo + (hi - lo) * reward + N(0, rating_noise)) clipped to the scale, for a reward in
        [0, 1]. Its expectation rises with the reward; `key` seeds the noise as in `prefer`."""
        lo, hi = scale
        if not (isinstance(lo, int) and isinstance(hi, int) and lo < hi):
            raise ValueError(f"rate: scale={scale!r} must be two ints lo < hi")
        reward = float(_rewards(reward, "reward"))
        noise = self._rng(_RATE, key).normal(0.0, self.rating_noise) if self.rating_noise > 0 else 0.0
        return int(np.clip(np.rint(lo + (hi - lo) * reward + noise), lo, hi))

    def ratings(self, rewards: Sequence[float] | np.ndarray, keys: Sequence[Key],
                scale: tuple[int, int] = (1, 7)) -> np.ndarray:
        """`rate` over many rewards: an int array, element i ``rate(rewards[i], keys[i], scale)``."""
        rewards = _rewards(rewards, "rewards")
        if rewards.ndim != 1 or len(keys) != rewards.shape[0]:
            raise ValueError(f"ratings needs 1-d rewards and keys of one length, got {rewards.shape} "
                             f"and {len(keys)} keys")
        return np.array([self.rate(r, k, scale) for r, k in zip(rewards.tolist(), keys, strict=True)],
                        np.int64)

    def card(self) -> dict[str, Any]:
        """The noise, for a data card: what was drawn and how, so the labels can be regenerated."""
        return {
            "annotator": "simulated Bradley-Terry with flips (jaxalign.data.annotator)",
            "preference": "P(a) = flip_rate + (1 - 2 flip_rate) * sigmoid((r_a - r_b) / temperature)",
            "rating": "clip(round(lo + (hi - lo) * reward + N(0, rating_noise)), lo, hi)",
            "temperature": float(self.temperature), "flip_rate": float(self.flip_rate),
            "rating_noise": float(self.rating_noise), "seed": int(self.seed),
            "draws": "numpy default_rng([seed, purpose, kind, key]); str keys by BLAKE2b-128",
        }
