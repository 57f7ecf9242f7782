"""CoH's official format against golden renderings of the reference code (tests/data/coh_reference).

golden.json was made by running the reference's own formatting functions (pack_hf.py, TextProcessor)
on the committed HH-RLHF slice and WebGPT / summarize inputs in the layouts the reference loads. Here
the same upstream lines go through jaxalign's builders (`parse_line`) and `objective.format =
"official"`; the pieces must equal the golden segments text for text and weight for weight, and the
examples token for token (each segment encoded on its own, as the reference does).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxalign.data.builders import hh_rlhf, summarize_feedback, webgpt
from jaxalign.data.builders.reading import Skip
from jaxalign.data.tokenizer import train_sentencepiece
from jaxalign.objectives import coh, coh_official

REPO = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / "tests" / "data" / "coh_reference"
ENTRIES = [e for e in json.loads((GOLDEN_DIR / "golden.json").read_text())["entries"]]
PARSERS = {"hh_rlhf": (hh_rlhf.parse_line, "dialogue"), "webgpt": (webgpt.parse_line, "webgpt"),
           "summarize_feedback": (summarize_feedback.parse_line, "summary")}
EOS = "<|eos|>"


def _line(path: str, number: int) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(REPO / path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()[number - 1]


def _record(entry: dict) -> dict:
    parse, task = PARSERS[entry["source"]]
    line = _line(entry["file"], entry["line"])
    try:
        return {**parse(line), "task": task}
    except Skip as e:
        if entry["source"] != "hh_rlhf" or not str(e).startswith("empty_field"):
            raise
    # The builder skips a dialogue whose final reply is empty (HH line 87); the reference trains on
    # it (an empty weighted field). That is a data choice, not a rendering one: render it anyway.
    texts = json.loads(line)
    (prompt, chosen), (_, rejected) = (hh_rlhf.split_dialogue(texts[k]) for k in ("chosen", "rejected"))
    return {"prompt": prompt, "chosen": chosen.strip(), "rejected": rejected.strip(), "task": task}


def _format(entry: dict) -> coh.CoHFormat:
    wanted = entry["include_feedback"].split(",")
    markers = entry["markers"]
    aux = "aux" in wanted
    return coh.CoHFormat(markers["user"], "A helpful answer:" if aux else markers["gpt"],
                         "An unhelpful answer:" if aux else markers["gpt_bad"],
                         tuple(v for v in wanted if v != "aux"), aux, "official")


def _replay(entry: dict):
    """The draws the reference made for this output record, in order (golden `random_choices`)."""
    draws = iter(entry["random_choices"])

    def choose(pool):
        draw = next(draws)
        assert pool[draw["index"]] == draw["text"]
        return draw["text"]

    return choose


def _golden(entry: dict, eos: int) -> list[tuple[str | int, float]]:
    return [(eos if text == EOS else text, float(weight)) for text, weight in entry["segments"]]


RENDERED = [e for e in ENTRIES if e["segments"] is not None]


def test_golden_covers_every_source_and_variant():
    covered = {(e["source"], e["variant"], "aux" in e["include_feedback"]) for e in RENDERED}
    for source in PARSERS:
        for variant in ("p", "n", "pn", "np"):
            assert (source, variant, False) in covered and (source, variant, True) in covered
    assert max(e["pack_hf_record"]["fields"].count("<|eos|>") for e in RENDERED if e["variant"] == "pn") >= 10


def test_phrase_tables_are_the_references():
    sys.path.insert(0, str(GOLDEN_DIR))
    try:
        import make_golden  # the reference's pack_hf.py constants, copied verbatim
    finally:
        sys.path.remove(str(GOLDEN_DIR))
    assert coh_official.DIALOGUE == make_golden.DIALOGUE
    assert coh_official.WEBGPT == make_golden.WEBGPT
    assert coh_official.SUMMARY == make_golden.SUMMARY


@pytest.mark.parametrize("entry", RENDERED, ids=lambda e: f"{e['source']}:{e['line']}:{e['output_index']}")
def test_official_pieces_equal_the_references(entry):
    record, fmt = _record(entry), _format(entry)
    example = fmt.examples(record)[entry["output_index"]]  # the reference's output order
    assert example == (entry["variant"], entry["markers"]["gpt"], entry["markers"]["gpt_bad"])
    pieces = coh_official.pieces(record, *example, fmt.user_marker, -1, _replay(entry))
    assert pieces == _golden(entry, -1)


@pytest.fixture(scope="module")
def tokenizer():
    texts = [text for e in RENDERED for text, _ in e["segments"] if text != EOS]
    return train_sentencepiece(texts, vocab_size=600, add_dummy_prefix=True)  # LLaMA's dummy prefix


@pytest.mark.parametrize("entry", RENDERED, ids=lambda e: f"{e['source']}:{e['line']}:{e['output_index']}")
def test_official_examples_equal_the_references_token_for_token(entry, tokenizer, monkeypatch):
    monkeypatch.setattr(coh, "chooser", lambda seed, index, j: _replay(entry))
    example = coh.make_example(_record(entry), entry["output_index"], tokenizer, _format(entry))
    ids, weights = [], []
    for value, weight in _golden(entry, tokenizer.eos_id):
        piece = [value] if isinstance(value, int) else tokenizer.encode(value)  # no BOS: none per record
        ids += piece
        weights += [weight] * len(piece)
    np.testing.assert_array_equal(example["tokens"], ids)
    np.testing.assert_array_equal(example["weights"], weights)


def test_webgpt_tie_is_skipped_as_the_reference_skips_it():
    (tie,) = [e for e in ENTRIES if e["segments"] is None]
    with pytest.raises(Exception, match="tie"):
        _record(tie)


def test_official_counts_examples_per_task_and_seeds_its_draws(tokenizer):
    records = {source: _record(next(e for e in RENDERED if e["source"] == source)) for source in PARSERS}
    fmt = coh.CoHFormat(aux_phrases=True, style="official")
    assert [len(fmt.examples(r)) for r in records.values()] == [48, 24, 24]  # 12 or 6 pairs x 4 variants
    order = [v for v, _, _ in coh.CoHFormat(style="official").examples(records["hh_rlhf"])]
    assert order == ["p", "n", "np", "pn"]  # np before pn for dialogues, as pack_hf appends them
    tok = tokenizer
    summary = records["summarize_feedback"]
    draw = lambda seed: tuple(coh.make_example(summary, 0, tok, fmt, seed=seed, record_index=5)["tokens"])  # noqa: E731
    assert draw(3) == draw(3)  # fixed for a seed
    assert len({draw(seed) for seed in range(8)}) > 1  # a task sentence drawn per example
    with pytest.raises(ValueError, match="official.*task"):
        coh.make_example({"prompt": "p", "chosen": "a", "rejected": "b", "task": "sort"}, 0, tok, fmt)
    no_raw = {k: v for k, v in summary.items() if k != "reference"}
    with pytest.raises(ValueError, match="'reference' field"):
        coh.make_example(no_raw, 0, tok, fmt)
    with pytest.raises(ValueError, match="no 'compare'"):
        coh.CoHFormat(variants=("p", "compare"), style="official")
