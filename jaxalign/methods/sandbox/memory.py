"""Agent memory: past (question, answer) pairs, recalled by embedding similarity of the questions.

    embed = ModelEmbedder(lm)                 # or NgramEmbedder()
    memory = Memory(embed, capacity=64)
    memory.add("How do I fix a bike?", "Sure! Step 1: ...")
    memory.recall(["How do I paint a bike?"], k=2)      # per query: the k most similar pairs

Design choice (the paper retrieves with an external embedding API, which we cannot call): the
default embedding is the agent model's own final hidden states, mean-pooled over the question's
tokens and L2-normalised (`ModelEmbedder`). It needs no second model and no download, uses the
tokenizer the agent already has, and works for any jaxalign or imported Hugging Face model; on a
large pretrained model these states separate topics well. A small model trained from scratch has
poor sentence embeddings, so `NgramEmbedder` (hashed word and character-trigram counts) is the
choice for miniature societies: deterministic, model-free, and lexical similarity is what matters
for "have I answered a question like this before". Both return float32 [n, dim] unit rows, so the
similarity is a dot product.

Memories are rebuilt from the simulation's records on resume (`Memory.add` in record order), so
the memory itself is never saved: it is a function of what was recorded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from jaxalign import forward

_TOKEN = re.compile(r"[a-z0-9']+")


class Embedder(Protocol):
    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...  # [n, dim] float32, unit rows


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class NgramEmbedder:
    """Hashed counts of words and character trigrams (of each word padded by spaces)."""

    def __init__(self, dim: int = 1024) -> None:
        self.dim = dim

    def _features(self, text: str) -> list[str]:
        words = _TOKEN.findall(text.lower())
        grams = [w[i : i + 3] for w in (f" {w} " for w in words) for i in range(len(w) - 2)]
        return [f"w:{w}" for w in words] + [f"c:{g}" for g in grams]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                # A stable hash (Python's hash() is salted per process): memories must recall alike
                # after a restart.
                out[row, int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                    % self.dim] += 1.0
        return _unit(out)


class ModelEmbedder:
    """Mean-pooled final hidden states of a jaxalign model (`jaxalign.api.LM` with a tokenizer)."""

    def __init__(self, lm: Any, max_len: int = 128) -> None:
        if lm.tokenizer is None:
            raise ValueError("ModelEmbedder needs a model with a tokenizer")
        self.lm, self.max_len = lm, max_len

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.lm.cfg.hidden_size), np.float32)
        ids = [self.lm.tokenizer.encode(t)[: self.max_len] or [self.lm.tokenizer.eos_id] for t in texts]
        length = max(16, 1 << (max(len(x) for x in ids) - 1).bit_length())  # few compiled shapes
        data_parallel = self.lm.mesh.shape["dp"] * self.lm.mesh.shape["fsdp"]
        rows = -(-len(ids) // data_parallel) * data_parallel
        tokens = np.zeros((rows, length), np.int32)
        segments = np.zeros((rows, length), np.int32)
        for r, row in enumerate(ids):
            tokens[r, : len(row)], segments[r, : len(row)] = row, 1
        pooled = forward.run(self.lm.params, self.lm.cfg, self.lm.mesh, "pooled_hidden",
                             {"inputs": tokens, "segment_ids": segments})
        return _unit(pooled[: len(texts)])


class Memory:
    """One agent's (question, answer) pairs; the oldest are forgotten beyond `capacity`."""

    def __init__(self, embed: Embedder, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"memory capacity={capacity} must be >= 1")
        self.embed, self.capacity = embed, capacity
        self.pairs: list[tuple[str, str]] = []
        self._keys: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, question: str, answer: str, key: np.ndarray | None = None) -> None:
        """Remembers a pair; `key` is the question's embedding when the caller has it already."""
        self.pairs.append((question, answer))
        self._keys.append(self.embed([question])[0] if key is None else key)
        if len(self.pairs) > self.capacity:
            del self.pairs[0], self._keys[0]

    def recall(self, queries: Sequence[str], k: int,
               keys: np.ndarray | None = None) -> list[list[tuple[str, str]]]:
        """For each query, up to k remembered pairs, most similar question first (ties: newest)."""
        if k <= 0 or not self.pairs:
            return [[] for _ in queries]
        keys = self.embed(queries) if keys is None else keys
        similarity = keys @ np.stack(self._keys).T  # [queries, memories]
        out = []
        for row in similarity:
            # Newest first among equals: a stable sort of the reversed list.
            order = np.argsort(-row[::-1], kind="stable")[:k]
            out.append([self.pairs[len(self.pairs) - 1 - int(i)] for i in order])
        return out
