"""Dialogues rendered turn by turn (jaxalign/data/dialogue.py), the same in every objective, in
evaluation and in generation, on real HH-RLHF records (the committed slice)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from jaxalign.data import dialogue, examples
from jaxalign.data.builders import hh_rlhf
from jaxalign.data.tokenizer import train_sentencepiece
from jaxalign.objectives import coh, registry

SLICE = Path(__file__).parent / "data" / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"
TRANSCRIPT = ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."
              "\n\nAssistant:")


def _hh_records(n: int = 40) -> list[dict]:
    with gzip.open(SLICE, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()[:n]
    records = []
    for line in lines:
        try:
            records.append({**hh_rlhf.parse_line(line), "task": "dialogue"})
        except hh_rlhf.Skip:
            continue
    return records


@pytest.fixture(scope="module")
def tok():
    texts = [r[k] for r in _hh_records() for k in ("prompt", "chosen", "rejected")]
    return train_sentencepiece(texts + ["User: Assistant: A helpful answer: An unhelpful answer:"], 500)


def test_turns_of_a_transcript_and_of_plain_text():
    assert dialogue.turns(TRANSCRIPT) == ([("Hi there", "Hello! How can I help?")], "Tell me a joke.")
    assert dialogue.turns("\n\nHuman: Only one\n\nAssistant:") == ([], "Only one")
    assert dialogue.turns("What is 2+2?") is None
    assert dialogue.turns("\n\nHuman: no reply marker at the end") is None
    two_humans = "\n\nHuman: a\n\nHuman: b\n\nAssistant: c\n\nHuman: d\n\nAssistant:"
    assert dialogue.turns(two_humans) == ([("a\n b", "c")], "d")


def test_render_marks_each_role_once():
    assert dialogue.render("{prompt}\n", TRANSCRIPT) == (
        "User: Hi there\nAssistant: Hello! How can I help?\nUser: Tell me a joke.\nAssistant: ")
    assert dialogue.render("User: {prompt}\nA helpful answer: ", TRANSCRIPT) == (
        "User: Hi there\nAssistant: Hello! How can I help?\nUser: Tell me a joke.\nA helpful answer: ")
    assert dialogue.render("User: {prompt} A helpful answer:", TRANSCRIPT) == (  # the reference's form
        "User: Hi there A helpful answer: Hello! How can I help? User: Tell me a joke. A helpful answer:")
    assert dialogue.render("Q: {prompt}\n", "plain") == "Q: plain\n"
    assert dialogue.render("{{x}} {prompt}\n", "\n\nHuman: a\n\nAssistant:") == "{x} a\nAssistant: "
    with pytest.raises(ValueError, match="exactly once"):
        dialogue.render("no slot", TRANSCRIPT)


def test_real_hh_records_have_no_doubled_role_markers(tok):
    fmt = coh.CoHFormat()
    for record in _hh_records():
        for text in (fmt.context(record["prompt"]), examples.format_prompt(record["prompt"])):
            assert "\n\nHuman:" not in text and "\n\nAssistant:" not in text and "User: User:" not in text
            assert text.count("User: ") == len(dialogue.turns(record["prompt"])[0]) + 1


def _weighted_text(example, tok) -> str:
    return tok.decode([t for t, w in zip(example["tokens"], example["weights"], strict=True) if w > 0])


def test_jaxalign_coh_trains_only_the_final_replies(tok):
    fmt = coh.CoHFormat()
    record = next(r for r in _hh_records() if len(dialogue.turns(r["prompt"])[0]) >= 2)
    earlier = dialogue.turns(record["prompt"])[0]
    pn = coh.make_example(record, "pn", tok, fmt)
    weighted = _weighted_text(pn, tok)
    assert record["chosen"][:20] in weighted and record["rejected"][:20] in weighted
    assert not any(a[:20] in weighted for _, a in earlier if a)  # shared turns are context only
    official = coh.make_example(record, "pn", tok, coh.CoHFormat(style="official"))
    assert sum(official["weights"]) > sum(pn["weights"])  # the reference weights every turn, twice


@pytest.mark.parametrize("objective", ["sft", "dpo", "unlikelihood", "coh"])
def test_every_objective_prompts_generation_as_it_trained(tok, objective):
    """The ids generation is prompted with are the unweighted prefix of the trained example."""
    cfg = ml_collections.ConfigDict(registry.default_config(objective))
    made = registry.make(cfg, tok, seed=0)
    for record in _hh_records(12):
        trained = made.source([record])[0]
        trained = trained["parts"][0] if "parts" in trained else trained  # a pair: its chosen part
        prompt = tok.encode(made.prompt(record), add_bos=tok.bos_id is not None)
        np.testing.assert_array_equal(trained["tokens"][: len(prompt)], prompt)
        assert not trained["weights"][: len(prompt)].any() and trained["weights"][len(prompt)] > 0


def test_official_format_defaults_to_the_references_loss_and_fcm(tok):
    official = registry.make(ml_collections.ConfigDict({**registry.default_config("coh"),
                                                        "format": "official"}), tok)
    ours = registry.make(registry.default_config("coh"), tok)
    assert official.pretrain_transform is not None and ours.pretrain_transform is None
    assert official.prompt_template == "User: {prompt} A helpful answer:"
    # Two examples in one row, with 1 and 2 weighted tokens: per row (Σ/3) is not per example.
    batch = {"targets": np.array([[1, 2, 3, 4]]), "weights": np.array([[0, 1, 1, 1.0]]),
             "segment_ids": np.array([[1, 1, 2, 2]]), "positions": np.array([[0, 1, 0, 1]])}
    logits = np.log(np.array([[[0.1, 0.2, 0.3, 0.2, 0.2], [0.1, 0.1, 0.6, 0.1, 0.1],
                               [0.2, 0.2, 0.2, 0.3, 0.1], [0.3, 0.3, 0.2, 0.1, 0.1]]]))
    row, _ = official.loss_fn(logits, batch)
    sequence, _ = ours.loss_fn(logits, batch)
    assert float(row) != pytest.approx(float(sequence))
    with pytest.raises(ValueError, match="objective.format='nope'"):
        registry.make(ml_collections.ConfigDict({**registry.default_config("coh"), "format": "nope"}), tok)


def test_sft_and_eval_prompt_for_a_dialogue_file(tok):
    record = json.loads(gzip.open(SLICE, "rt").readline())
    prompt, _ = hh_rlhf.split_dialogue(record["chosen"])
    assert examples.format_prompt(prompt).endswith("\nAssistant: ")
    assert examples.format_prompt("plain question") == "plain question\n"  # single-turn stays as it was


def test_fcm_pretrain_reaches_the_pretraining_stream(tok):
    from jaxalign.train import loop

    config = ml_collections.ConfigDict({"microbatches": 1, "pretrain": {"weight": 0.5, "microbatches": 1}})
    for fmt, masked in (("official", True), ("jaxalign", False)):
        objective = ml_collections.ConfigDict({**registry.default_config("coh"), "format": fmt})
        made = registry.make(objective, tok)
        streams = loop._streams(config, made)
        assert streams["feedback"].batch_transform is made.batch_transform is not None
        assert (streams["pretrain"].batch_transform is not None) == masked


def test_a_coh_run_saved_before_the_format_option_resumes():
    """config.json of a CoH run saved with normalization="sequence" and without format/fcm_pretrain
    is the same run as today's defaults (None: the jaxalign format's own); the official format is not."""
    from jaxalign import config as config_lib
    from jaxalign.train import run as run_lib

    current = {"seed": 0, "objective": dict(registry.default_config("coh"))}
    old = {"seed": 0, "objective": {**current["objective"], "normalization": "sequence"}}
    del old["objective"]["format"], old["objective"]["fcm_pretrain"]
    config_lib.check_same(run_lib.comparable(old), run_lib.comparable(current), "w")
    official = {"seed": 0, "objective": {**current["objective"], "format": "official"}}
    with pytest.raises(config_lib.ConfigError, match="objective.fcm_pretrain, objective.format, "
                                                     "objective.normalization"):
        config_lib.check_same(run_lib.comparable(old), run_lib.comparable(official), "w")
