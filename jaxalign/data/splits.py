"""Held-out splits by a hash of a record's key, shared by the synthetic tasks and the dataset builders.

A record's split depends on its key alone (a prompt, a question, a story ID), not on a seed or on
which other records are read, so every record with that key (every variant of a prompt, every group
of a question) lands in the same split, in every run and on every host.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def hash_percentile(key: str) -> int:
    """0..99: the first 8 bytes of the SHA-256 of `key` (UTF-8), big-endian, mod 100."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100


def hash_split(key: str, percents: Mapping[str, int], rest: str = "train") -> str:
    """The split of `key`: the splits of `percents` take that many percent each, in their order (the
    first the lowest percentiles); the keys left over go to `rest`.

    ``hash_split(story_id, {"test": 8, "validation": 8})`` puts 8% in test, 8% in validation and
    the other 84% in train.
    """
    percentile, bound = hash_percentile(key), 0
    for split, percent in percents.items():
        bound += percent
        if percentile < bound:
            return split
    return rest
