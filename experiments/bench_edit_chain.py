"""How fast are Second Thoughts edit chains computed and serialised (one process, one thread)?

    python experiments/bench_edit_chain.py [--length 128] [--vocab 32000] [--edit-rate 0.1] [--json]

Pairs: a random source of `length` token ids from `vocab`, and a target made from it by
``edit_rate * length`` random single-token insertions, deletions and replacements. Measures pairs
per second of
  compute_chain   with the default costs (rapidfuzz Indel), the target being >= 10,000/s, and with
                  every other setting of AUGMENT_COSTS (rapidfuzz Levenshtein or the numpy DP);
  augmented       all of AUGMENT_COSTS' distinct chains of a pair;
  serialize       a default chain -> token ids (positions tokenized by a small sentencepiece model);
  deserialize     and back, checking the old tokens against the source.
Each rate is the best of `repeats` timed passes over the pairs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import numpy as np

from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.objectives import edits


def make_pairs(count: int, length: int, vocab: int, edit_rate: float, seed: int, low: int = 0
               ) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        src = rng.integers(low, vocab, length).tolist()
        tgt = list(src)
        for _ in range(round(edit_rate * length)):
            op, where, token = rng.integers(3), int(rng.integers(len(tgt) + 1)), int(rng.integers(low, vocab))
            if op == 0:
                tgt.insert(where, token)
            elif where < len(tgt):
                if op == 1:
                    del tgt[where]
                else:
                    tgt[where] = token
        pairs.append((src, tgt))
    return pairs


def rate(fn: Callable[[], object], items: int, repeats: int) -> float:
    """Items per second of the fastest of `repeats` calls of `fn` (each handling `items` items)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return items / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=128, help="source tokens per pair")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--edit-rate", type=float, default=0.1, help="random token edits per source token")
    parser.add_argument("--pairs", type=int, default=2000, help="pairs per timed pass (fast paths)")
    parser.add_argument("--dp-pairs", type=int, default=200, help="pairs per timed pass (numpy DP settings)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    pairs = make_pairs(args.pairs, args.length, args.vocab, args.edit_rate, args.seed)
    result: dict[str, object] = {
        "length": args.length, "vocab": args.vocab, "edit_rate": args.edit_rate, "pairs": args.pairs,
        "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
    }
    chains = [edits.compute_chain(s, t) for s, t in pairs]
    result["edits_per_chain"] = float(np.mean([len(c) for c in chains]))
    result["compute_chain_per_s"] = rate(lambda: [edits.compute_chain(s, t) for s, t in pairs], len(pairs),
                                         args.repeats)
    for costs in edits.AUGMENT_COSTS[1:]:
        fast = not costs.substitutes or costs.insert == costs.delete == costs.replace
        some = pairs if fast else pairs[:args.dp_pairs]
        name = f"compute_chain_{costs.insert:g}_{costs.delete:g}_{costs.replace:g}_per_s"
        result[name] = rate(lambda c=costs, p=some: [edits.compute_chain(s, t, c) for s, t in p], len(some),
                            args.repeats)
    some = pairs[:args.dp_pairs]
    result["augmented_chains_per_pair"] = float(np.mean([len(edits.augmented_chains(s, t)) for s, t in some]))
    result["augmented_pairs_per_s"] = rate(lambda: [edits.augmented_chains(s, t) for s, t in some], len(some),
                                           args.repeats)

    tok = demo_tokenizer()
    base = tok.vocab_size  # ids below this are ordinary pieces; the markers come after
    fmt = edits.add_markers(tok)
    text_pairs = make_pairs(args.pairs, args.length, base, args.edit_rate, args.seed + 1, low=4)
    text_chains = [edits.compute_chain(s, t) for s, t in text_pairs]
    serialized = [edits.serialize(c, s, tok, fmt) for c, (s, _) in zip(text_chains, text_pairs, strict=True)]
    assert all(edits.deserialize(ids, s, tok, fmt) == c
               for ids, c, (s, _) in zip(serialized, text_chains, text_pairs, strict=True))
    result["serialized_tokens_per_chain"] = float(np.mean([len(ids) for ids in serialized]))
    sources = [s for s, _ in text_pairs]
    result["serialize_per_s"] = rate(
        lambda: [edits.serialize(c, s, tok, fmt) for c, s in zip(text_chains, sources, strict=True)],
        len(sources), args.repeats)
    result["deserialize_per_s"] = rate(
        lambda: [edits.deserialize(ids, s, tok, fmt) for ids, s in zip(serialized, sources, strict=True)],
        len(sources), args.repeats)
    result["meets_10k_target"] = result["compute_chain_per_s"] >= 10_000

    if args.json:
        print(json.dumps(result, indent=2))
        return
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:,.1f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
