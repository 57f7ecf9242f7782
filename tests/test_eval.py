import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from rouge_score import rouge_scorer

from jaxalign import api, models, sample
from jaxalign import config as config_lib
from jaxalign import mesh as mesh_lib
from jaxalign.data.packing import PackStats, TruncationWarning
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.eval import compare, preference_accuracy, rouge, sequence_logprobs
from jaxalign.eval import report as report_lib
from jaxalign.eval.truncation import Truncation, keep_prompt_end, max_len_of
from jaxalign.models import Transformer, get_preset

# A large init spreads the log-probabilities, so a wrong token or position shows.
CFG = get_preset("tiny", initializer_range=0.2)
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
WIDTH = 40  # reference forward: one example per row, right-padded (causality hides the padding)


@pytest.fixture(scope="module")
def setup():
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    return mesh, models.init_params(CFG, mesh, seed=0)


def _examples(seed=0, n=14):
    rng = np.random.default_rng(seed)
    lengths = [0, 1, 2, 33, *rng.integers(2, 30, n - 4)]
    examples = []
    for length in lengths:
        weights = rng.choice([0.0, 0.5, 1.0, 2.0], size=length).astype(np.float32)
        tokens = rng.integers(0, CFG.vocab_size, length, dtype=np.int32)
        examples.append({"tokens": tokens, "weights": weights})
    examples.append({"tokens": [1, 5, 9, 4]})  # no weights: 1 on every predicted token
    return examples


@functools.lru_cache
def _forward(mesh):
    return jax.jit(lambda p, t: Transformer(CFG).apply({"params": p}, t))


def _reference(setup, examples):
    """Each example alone in an unpacked row, log-softmax in float64 numpy."""
    mesh, params = setup
    logp, counts = [], []
    for ex in examples:
        tokens = np.asarray(ex["tokens"], np.int32)
        weights = np.asarray(ex.get("weights", np.ones(len(tokens))), np.float64)
        if len(tokens) < 2:
            logp.append(0.0)
            counts.append(0.0)
            continue
        row = np.zeros((1, WIDTH), np.int32)
        row[0, : len(tokens) - 1] = tokens[:-1]
        with mesh_lib.use(mesh):
            logits = np.asarray(_forward(mesh)(params, row), np.float64)[0, : len(tokens) - 1]
        shifted = logits - logits.max(-1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        picked = log_softmax[np.arange(len(tokens) - 1), tokens[1:]]
        logp.append(float(np.sum(weights[1:] * picked)))
        counts.append(float(weights[1:].sum()))
    return np.array(logp), np.array(counts)


# (None, 4): 5 rows of 32 slots, so two batches of 4 rows (dp * fsdp = 4), the last padded with
# 3 empty rows. (40, 64): 4 rows, one batch.
@pytest.mark.parametrize("seq_len,batch_size", [(None, 4), (40, 64)])
def test_packed_scores_equal_one_example_at_a_time(setup, seq_len, batch_size):
    mesh, params = setup
    examples = _examples()
    stats = PackStats()
    scores = sequence_logprobs(params, CFG, mesh, examples, seq_len=seq_len, batch_size=batch_size,
                               stats=stats)
    expected_logp, expected_counts = _reference(setup, examples)
    assert scores.logp.dtype == np.float64 and scores.logp.shape == (len(examples),)
    np.testing.assert_allclose(scores.logp, expected_logp, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(scores.num_tokens, expected_counts)
    assert stats.rows < stats.examples  # several examples share a row
    assert np.all(expected_logp[expected_counts > 0] < 0)  # the comparison is not of zeros


def test_order_of_examples_does_not_matter(setup):
    mesh, params = setup
    examples = _examples(seed=1)
    forward = sequence_logprobs(params, CFG, mesh, examples, seq_len=40, batch_size=2)
    backward = sequence_logprobs(params, CFG, mesh, examples[::-1], seq_len=40, batch_size=2)
    np.testing.assert_allclose(backward.logp[::-1], forward.logp, rtol=1e-6, atol=1e-4)


def test_too_long_example_is_an_error_naming_it_unless_truncating(setup):
    mesh, params = setup
    examples = _examples()  # example 3 has 33 tokens
    with pytest.raises(ValueError, match=r"example 3: 33 tokens, but seq_len=16"):
        sequence_logprobs(params, CFG, mesh, examples, seq_len=16)
    truncated = sequence_logprobs(params, CFG, mesh, examples[3:4], seq_len=16, overflow="truncate")
    cut = {name: np.asarray(x)[:17] for name, x in examples[3].items()}
    np.testing.assert_allclose(truncated.logp, _reference(setup, [cut])[0], rtol=1e-6, atol=1e-4)


def test_examples_predicting_nothing_score_zero(setup):
    mesh, params = setup
    scores = sequence_logprobs(params, CFG, mesh, [{"tokens": []}, {"tokens": [3]}])
    assert scores.logp.tolist() == [0.0, 0.0] and scores.num_tokens.tolist() == [0.0, 0.0]
    assert sequence_logprobs(params, CFG, mesh, []).logp.shape == (0,)
    with pytest.raises(ValueError, match="example 1: 'weights' has shape"):
        sequence_logprobs(params, CFG, mesh, [{"tokens": [1, 2]}, {"tokens": [1, 2], "weights": [1.0]}])
    with pytest.raises(ValueError, match="example 0: has 'parts'"):
        sequence_logprobs(params, CFG, mesh, [{"parts": [{"tokens": [1, 2]}, {"tokens": [3, 4]}]}])


def test_preference_accuracy_counts_ties_as_half():
    out = preference_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0])
    assert out == {"accuracy": 0.625, "margin": 0.25, "n": 4}
    with pytest.raises(ValueError, match="equal length"):
        preference_accuracy([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        preference_accuracy([], [])
    with pytest.raises(ValueError, match="pair 1 has a non-finite score"):
        preference_accuracy([1.0, np.nan], [0.0, 0.0])


def test_compare_is_preference_accuracy_of_the_sequence_scores(setup):
    mesh, params = setup
    examples = [ex for ex in _examples(seed=2) if np.sum(np.asarray(ex.get("weights", [0, 1]))[1:]) > 0]
    chosen, rejected = examples[:5], examples[5:10]
    scores = sequence_logprobs(params, CFG, mesh, chosen + rejected)
    c, r = slice(0, 5), slice(5, 10)
    assert compare(params, CFG, mesh, chosen, rejected) == pytest.approx(
        preference_accuracy(scores.logp[c], scores.logp[r]))
    mean = scores.logp / scores.num_tokens
    assert compare(params, CFG, mesh, chosen, rejected, normalize="mean") == pytest.approx(
        preference_accuracy(mean[c], mean[r]))


def test_compare_prefers_the_models_own_greedy_continuation(setup):
    mesh, params = setup
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, CFG.vocab_size, 6).tolist() for _ in range(4)]
    greedy = sample.generate(params, CFG, prompts, mesh=mesh, max_new_tokens=8, eos_id=-1)
    weights = np.array([0.0] * 6 + [1.0] * 8, np.float32)  # loss on the continuation only
    chosen = [{"tokens": p + g, "weights": weights} for p, g in zip(prompts, greedy, strict=True)]
    rejected = [{"tokens": p + rng.integers(3, CFG.vocab_size, 8).tolist(), "weights": weights}
                for p in prompts]
    for normalize in ("sum", "mean"):
        out = compare(params, CFG, mesh, chosen, rejected, normalize=normalize)
        assert out["accuracy"] == 1.0 and out["margin"] > 0 and out["n"] == 4
    assert compare(params, CFG, mesh, rejected, chosen)["accuracy"] == 0.0


def test_compare_rejects_bad_pairs(setup):
    mesh, params = setup
    ok = {"tokens": [1, 2, 3]}
    with pytest.raises(ValueError, match="2 chosen but 1 rejected"):
        compare(params, CFG, mesh, [ok, ok], [ok])
    with pytest.raises(ValueError, match="pair 1: the rejected example has no weighted token"):
        compare(params, CFG, mesh, [ok, ok], [ok, {"tokens": [1, 2, 3], "weights": [1, 0, 0]}])
    with pytest.raises(ValueError, match="normalize='max'"):
        compare(params, CFG, mesh, [ok], [ok], normalize="max")


def test_rouge_hand_checked_values():
    same = rouge(["The cat sat on the mat."], ["the cat sat on the mat"])
    assert same == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0, "avg": 100.0}
    assert rouge(["dogs bark loudly"], ["the cat sat"]) == {
        "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0, "avg": 0.0}
    # 3 of 6 reference unigrams (P 1, R 1/2: F 2/3); 2 of 5 bigrams (P 1, R 2/5: F 4/7); LCS 3.
    out = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert out["rouge1"] == pytest.approx(200 / 3) and out["rougeL"] == pytest.approx(200 / 3)
    assert out["rouge2"] == pytest.approx(400 / 7)
    assert out["avg"] == pytest.approx((200 / 3 + 400 / 7 + 200 / 3) / 3)
    assert rouge(["cats running"], ["cat runs"])["rouge1"] == 100.0  # Porter stemming is on
    # The mean over examples: one perfect pair and one disjoint pair.
    assert rouge(["a b", "c d"], ["a b", "e f"])["rouge1"] == pytest.approx(50.0)


def test_rouge_equals_rouge_score_directly():
    predictions = ["the quick brown fox\njumps over the dog", "a summary of the post", ""]
    references = ["a quick brown fox jumped\nover the lazy dog", "the post, summarised", "nothing"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
    out = rouge(predictions, references)
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert out[name] == pytest.approx(100 * np.mean([d[name].fmeasure for d in direct]))
    # Lines are sentences for the summary-level LCS: reordered sentences still match in full.
    reordered = rouge(["b c\na"], ["a\nb c"])
    assert reordered["rougeLsum"] == 100.0 and reordered["rougeL"] == pytest.approx(200 / 3)


def test_rouge_rejects_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        rouge([], [])
    with pytest.raises(ValueError, match="reference 1 is a NoneType"):
        rouge(["a", "b"], ["a", None])


# ------------------------------------------------------------------------ truncation in jaxalign eval


def test_keep_prompt_end_keeps_bos_the_end_of_the_prompt_and_the_response():
    prompt, response = [1, *range(10, 20)], [20, 21, 22, 23]  # BOS = 1, then 10 prompt tokens
    example = {"tokens": np.array(prompt + response), "weights": np.r_[np.zeros(11), np.ones(4)]}
    cut, n = keep_prompt_end(example, 8, bos_id=1)
    assert cut["tokens"].tolist() == [1, 17, 18, 19, 20, 21, 22, 23] and n == 7
    assert cut["weights"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # A response that alone does not fit keeps BOS and the last prompt token, and loses its own end.
    cut, n = keep_prompt_end(example, 4, bos_id=1)
    assert cut["tokens"].tolist() == [1, 19, 20, 21] and n == 11
    assert keep_prompt_end(example, 15, bos_id=1) == (example, 0)  # fits: untouched
    cut, _ = keep_prompt_end(example, 8)  # no BOS named: the prompt's end only
    assert cut["tokens"].tolist() == [16, 17, 18, 19, 20, 21, 22, 23]

    truncation = Truncation(7, "test", bos_id=1)  # 7 positions: 8 scored tokens, or 7 - 3 prompt ids
    truncation.scored_examples([example, {"tokens": np.arange(8), "weights": np.ones(8)}])
    assert truncation.prompt_ids([prompt, [1, 5]], max_new_tokens=3) == [[1, 17, 18, 19], [1, 5]]
    assert truncation.section() == {
        "max_len": 7, "max_len_from": "test", "examples": 4, "truncated": 2, "tokens_cut": 7 + 7,
        "scored": {"examples": 2, "truncated": 1}, "generation_prompts": {"examples": 2, "truncated": 1}}
    with pytest.raises(ValueError, match="max_new_tokens=7 leaves no room for a prompt in max_len=7"):
        truncation.prompt_ids([prompt], max_new_tokens=7)


def test_compare_with_max_len_scores_the_cut_examples(setup):
    mesh, params = setup
    rng = np.random.default_rng(3)
    pairs = [{"tokens": rng.integers(3, 200, n), "weights": np.r_[np.zeros(n - 4), np.ones(4)]}
             for n in (30, 12, 40, 9)]
    cut = [keep_prompt_end(ex, 21)[0] for ex in pairs]
    got = compare(params, CFG, mesh, pairs[:2], pairs[2:], max_len=20)
    assert got == pytest.approx({**compare(params, CFG, mesh, cut[:2], cut[2:]), "truncated": 2})


def test_max_len_is_the_train_seq_len_else_the_models_context(tmp_path):
    cfg = get_preset("tiny", max_position_embeddings=128)
    assert max_len_of(tmp_path, cfg) == (128, "max_position_embeddings")  # a model directory
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"seq_len": 96}))
    assert max_len_of(tmp_path, cfg) == (96, "seq_len in config.json")
    (tmp_path / "config.json").write_text(json.dumps({"seq_len": 512}))
    assert max_len_of(tmp_path, cfg)[0] == 128  # never past the model's context


def test_eval_cuts_long_prompts_to_the_context_keeping_their_end_and_reports_it(tmp_path, monkeypatch):
    """A model directory (no train seq_len): every sequence is cut to its 64 positions. Two of four
    held-out records have prompts of ~110 tokens: their chosen and rejected scores and their
    generation prompts are cut, keeping BOS, the end of the prompt and the whole response."""
    tok = demo_tokenizer()
    lm = api.init(get_preset("tiny", max_position_embeddings=64), "dp:1,fsdp:-1,tp:1", tokenizer=tok)
    model = lm.save(tmp_path / "model")
    long = "The quick brown fox jumps over the lazy dog. " * 4 + "Question: name a colour."
    records = [{"prompt": p, "chosen": "blue.", "rejected": "four."}
               for p in (long, "Question: name a colour.", long, "Answer: four.")]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = config_lib.load_config(f"{EXPERIMENTS / 'coh_synthetic.py'}:sft", ["--config.pretrain.weight=0"])
    config.data.task, config.data.jsonl, config.data.schema = "", str(data), "preference"
    config.data.num_eval = 4

    scored, prompts = [], []
    score, generate = report_lib.sequence_logprobs, report_lib.sample.generate

    def spy_score(params, cfg, mesh, examples, **kw):
        scored.extend(examples)
        return score(params, cfg, mesh, examples, **kw)

    def spy_generate(params, cfg, ids, **kw):
        prompts.extend(ids)
        return generate(params, cfg, ids, **kw)

    monkeypatch.setattr(report_lib, "sequence_logprobs", spy_score)
    monkeypatch.setattr(report_lib.sample, "generate", spy_generate)
    with pytest.warns(TruncationWarning, match=r"eval: 6 of 12 .*max_len=64 positions \(max_position_emb"):
        report = report_lib.evaluate(config, model, mesh="dp:1,fsdp:-1,tp:1", max_new_tokens=4)

    section = report["truncation"]
    assert {k: section[k] for k in ("max_len", "max_len_from", "examples", "truncated")} == {
        "max_len": 64, "max_len_from": "max_position_embeddings", "examples": 12, "truncated": 6}
    assert section["scored"] == {"examples": 8, "truncated": 4}  # chosen and rejected of two records
    assert section["generation_prompts"] == {"examples": 4, "truncated": 2}
    assert "truncation" in report["scales"] and set(report["scales"]) <= set(report)
    # What the model saw: nothing longer than its context; the long prompts keep BOS and their end.
    assert len(scored) == 8 and max(len(ex["tokens"]) for ex in scored) == 64 + 1
    responses = {float(np.sum(ex["weights"])) for ex in scored}
    assert responses == {len(tok.encode(y)) + 1.0 for y in ("blue.", "four.")}  # responses whole, + EOS
    assert len(prompts) == 4 and max(len(ids) for ids in prompts) == 64 - 4
    for ids in (prompts[0], prompts[2]):
        text = tok.decode(ids)
        assert ids[0] == tok.bos_id and "name a colour" in text and text.count("fox") < 4
    assert json.loads(json.dumps(report))["truncation"] == section
