"""`jaxalign eval --harness`: lm-eval's LM interface over a sharded jaxalign model
(jaxalign.eval.harness), checked against the model's own logits, and the CLI on local task YAMLs."""

import dataclasses
import json

import numpy as np
import pytest
import tokenizers
from lm_eval import utils as lm_utils
from lm_eval.api.instance import Instance

import jaxalign
from jaxalign import cli, sample
from jaxalign.data.tokenizer import HFTokenizer, demo_tokenizer
from jaxalign.eval import harness
from jaxalign.models import get_preset


@pytest.fixture(scope="module")
def lm():
    tok = demo_tokenizer()
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, initializer_range=0.2, max_position_embeddings=128)
    return jaxalign.init(cfg, mesh="dp:2,fsdp:2,tp:2", seed=3, tokenizer=tok)


@pytest.fixture(scope="module")
def model(lm):
    return harness.HarnessLM(lm)  # batch_size 16 as the CLI has it: the same shapes, compiled once


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def _reference(lm, sequences):
    """For each (ids, num_scored): log p of the last num_scored ids given those before, and whether
    each is the argmax; from the model's unpacked logits on the host in float64. Rows are padded on
    the right to one shape (causal: padding after a token does not change its logits)."""
    rows = np.zeros((8, lm.cfg.max_position_embeddings), np.int32)
    for row, (ids, _) in zip(rows, sequences, strict=False):
        row[:len(ids)] = ids
    logits = lm.logits(rows).astype(np.float64)
    out = []
    for row_logits, (ids, num_scored) in zip(logits, sequences, strict=False):
        logps = row_logits - np.logaddexp.reduce(row_logits, axis=-1, keepdims=True)
        positions = np.arange(len(ids) - num_scored, len(ids))
        targets = np.asarray(ids)[positions]
        out.append((logps[positions - 1, targets].sum(),
                    bool((row_logits[positions - 1].argmax(-1) == targets).all())))
    assert len(sequences) <= len(rows)
    return out


def test_loglikelihood_splits_like_hflm_and_matches_the_models_logits(lm, model):
    tok = lm.tokenizer
    pairs = [("Question: what is two plus two? Answer:", " four"),
             ("The quick brown fox", " jumps over the lazy dog."),
             ("A helpful reply is ", "clear, honest and kind."),  # its trailing space moves on
             ("", "Stable alignment")]  # empty context: BOS conditions the continuation
    results = model.loglikelihood(_requests("loglikelihood", pairs))
    sequences = []
    for context, continuation in pairs:
        if context:  # the whole text encoded, the context's ids cut off its front
            whole = tok.encode(context + continuation, add_bos=True)
            sequences.append((whole, len(whole) - len(tok.encode(context.rstrip(), add_bos=True))))
        else:
            sequences.append(([tok.bos_id] + tok.encode(continuation), len(tok.encode(continuation))))
    # "A helpful reply is " + "clear..." scores " clear...", as lm-eval's HFLM splits it.
    assert sequences[2][1] == len(tok.encode(" clear, honest and kind."))
    for (logp, greedy), (expected, expected_greedy) in zip(results, _reference(lm, sequences), strict=True):
        np.testing.assert_allclose(logp, expected, atol=1e-5, rtol=0)
        assert greedy == expected_greedy


def test_is_greedy_and_the_samplers_own_logprobs(lm, model):
    context = lm.tokenizer.encode("Question: name a colour. Answer:", add_bos=True)
    out = sample.generate_arrays(lm.params, lm.cfg, [context], mesh=lm.mesh, max_new_tokens=5, eos_id=-1)
    greedy = out.tokens[0].tolist()
    other = greedy[:-1] + [(greedy[-1] + 1) % lm.cfg.vocab_size]
    (logp, is_greedy), (other_logp, other_greedy) = model._loglikelihood_tokens(
        [(None, context, greedy), (None, context, other)])
    assert is_greedy and not other_greedy
    np.testing.assert_allclose(logp, out.logprobs[0].sum(), atol=1e-4)
    np.testing.assert_allclose(other_logp, _reference(lm, [(context + other, 5)])[0][0], atol=1e-5)
    assert other_logp < logp


def test_loglikelihood_rolling_windows_over_max_len(lm):
    text = "Chain of hindsight turns feedback into text: a good answer, then a worse one, each labelled."
    ids = lm.tokenizer.encode(text)
    assert len(ids) > 40
    whole = harness.HarnessLM(lm).loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,), ("",)]))
    [(full, _)] = _reference(lm, [([lm.tokenizer.bos_id] + ids, len(ids))])
    np.testing.assert_allclose(whole[0], full, atol=1e-5)
    assert whole[1] == 0.0
    [windowed] = harness.HarnessLM(lm, max_len=16).loglikelihood_rolling(
        _requests("loglikelihood_rolling", [(text,)]))
    windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
        ids, prefix_token=lm.tokenizer.bos_id, max_seq_len=16, context_len=1)]
    assert len(windows) >= 3 and sum(len(pred) for _, pred in windows) == len(ids)
    assert all(len(ctx) + len(pred) <= 17 for ctx, pred in windows)
    expected = sum(logp for logp, _ in _reference(lm, [(ctx + pred, len(pred)) for ctx, pred in windows]))
    np.testing.assert_allclose(windowed, expected, atol=1e-4)
    assert abs(windowed - whole[0]) > 1e-3  # less context, another number


def test_a_long_context_loses_its_start_after_bos(lm):
    model, tok = harness.HarnessLM(lm, max_len=16), lm.tokenizer
    context = "The quick brown fox jumps over the lazy dog. Question: name a colour. Answer:"
    continuation = " blue"
    [(logp, _)] = model.loglikelihood(_requests("loglikelihood", [(context, continuation)]))
    whole = tok.encode(context + continuation, add_bos=True)
    num_scored = len(whole) - len(tok.encode(context, add_bos=True))
    kept = whole[:1] + whole[len(whole) - 16:]  # BOS, then the last 16 tokens: 16 predictions
    [(expected, _)] = _reference(lm, [(kept, num_scored)])
    np.testing.assert_allclose(logp, expected, atol=1e-5)
    assert model.truncation.section()["scored"] == {"examples": 1, "truncated": 1}
    with pytest.raises(ValueError, match="continuation has 17 tokens"):
        model._loglikelihood_tokens([(None, [tok.bos_id], list(range(3, 20)))])


def test_generate_until_stops_at_until_and_batches(lm):
    tok, model = lm.tokenizer, harness.HarnessLM(lm, batch_size=4)  # 5 prompts: batches of 4 and 1
    prompts = ["The quick brown fox", "Question: what is two plus two? Answer:", "A", "Mistake analysis asks",
               "Digits and signs: 0 1 2"]
    ids = [tok.encode(p, add_bos=True) for p in prompts]  # all in one shape: 4 rows of 16 + 16 slots
    full = [tok.decode(row[:-1] if row[-1] == tok.eos_id else row)
            for row in lm.generate(ids[:4], max_new_tokens=12) + lm.generate(ids[4:], max_new_tokens=12)]
    stop = full[0][len(full[0]) // 2]
    kwargs = {"until": [stop], "max_gen_toks": 12, "do_sample": False}
    requests = [(p, kwargs) for p in prompts] + [(prompts[1], {"until": [], "max_gen_toks": 3})]
    texts = model.generate_until(_requests("generate_until", requests))
    assert texts[:5] == [f.split(stop)[0] for f in full]
    assert len(texts[0]) < len(full[0])
    three = lm.generate([tok.encode(prompts[1], add_bos=True)], max_new_tokens=3)[0]
    assert texts[5] == tok.decode(three)
    with pytest.raises(ValueError, match="not supported by jaxalign's sampler"):
        model.generate_until(_requests("generate_until", [(prompts[0], {"until": [], "num_beams": 4})]))


def test_a_tokenizer_json_works_as_the_demo_tokenizer_does(lm):
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer, bpe.decoder = tokenizers.pre_tokenizers.Metaspace(), tokenizers.decoders.Metaspace()
    bpe.train_from_iterator(["The quick brown fox jumps over the lazy dog.", "Question: name a colour."],
                            tokenizers.trainers.BpeTrainer(vocab_size=120, show_progress=False,
                                                           special_tokens=["<unk>", "<s>", "</s>"]))
    tok = HFTokenizer(bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert (tok.bos_id, tok.eos_id) == (lm.cfg.bos_token_id, lm.cfg.eos_token_id)
    model = harness.HarnessLM(dataclasses.replace(lm, tokenizer=tok))
    context, continuation = "The quick brown fox", " jumps over the lazy dog."
    [(logp, _)] = model.loglikelihood(_requests("loglikelihood", [(context, continuation)]))
    whole = tok.encode(context + continuation, add_bos=True)
    [(expected, _)] = _reference(lm, [(whole, len(whole) - len(tok.encode(context, add_bos=True)))])
    np.testing.assert_allclose(logp, expected, atol=1e-5)
    request = (context, {"until": ["."], "max_gen_toks": 8})
    [text] = model.generate_until(_requests("generate_until", [request]))
    [ids] = lm.generate([tok.encode(context, add_bos=True)], max_new_tokens=8)
    # The random model's 256 ids outnumber the tokenizer's: those past it are left out, and counted.
    known = [i for i in ids if i < tok.vocab_size and i != tok.eos_id]
    assert text == tok.decode(known).split(".")[0]
    assert model.unknown_generated == sum(i >= tok.vocab_size for i in ids)


CHOICE_DOCS = [{"question": "what is two plus two?", "choices": ["four", "blue", "fox"], "answer": 0},
               {"question": "name a colour.", "choices": ["four", "blue"], "answer": 1},
               {"question": "who jumps over the dog?", "choices": ["the fox", "the dog"], "answer": 0}]
TASKS = {
    "jx_choice": """
output_type: multiple_choice
doc_to_text: "Question: {{question}} Answer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
""",
    "jx_gen": """
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{choices[answer]}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
    "jx_text": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{question}}"
metric_list:
  - metric: word_perplexity
""",
}


def _write_tasks(root):
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in CHOICE_DOCS))
    for name, body in TASKS.items():
        # A local JSON Lines dataset: `datasets` reads it without the network (HF_HUB_OFFLINE=1).
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {root / 'hf_cache'}\ntest_split: test\n" + body)
    return root


def test_cli_runs_local_tasks_end_to_end(lm, model, tmp_path, capsys):
    tasks = _write_tasks(tmp_path)
    checkpoint = lm.save(tmp_path / "model")
    out = tmp_path / "harness.json"
    assert cli.main(["eval", "--checkpoint", str(checkpoint), "--harness", "jx_choice,jx_gen,jx_text",
                     "--harness-tasks-dir", str(tasks), "--out", str(out), "--mesh", "dp:2,fsdp:2,tp:2",
                     "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "jx_choice" in printed and f"wrote {out}" in printed
    written = json.loads(out.read_text())
    results = written["results"]
    assert written["configs"]["jx_gen"]["generation_kwargs"]["max_gen_toks"] == 4  # --max-new-tokens
    # The accuracy is the share of questions whose answer has the highest log-likelihood.
    right = 0
    for doc in CHOICE_DOCS:
        context = f"Question: {doc['question']} Answer:"
        scores = model.loglikelihood(_requests("loglikelihood", [(context, " " + c) for c in doc["choices"]]))
        right += int(np.argmax([logp for logp, _ in scores])) == doc["answer"]
    assert results["jx_choice"]["acc,none"] == pytest.approx(right / len(CHOICE_DOCS))
    assert 0.0 <= results["jx_gen"]["exact_match,none"] <= 1.0
    assert np.isfinite(results["jx_text"]["word_perplexity,none"])
    assert written["jaxalign"]["truncation"]["truncated"] == 0


def test_cli_harness_errors(tmp_path, capsys):
    checkpoint = str(tmp_path)  # each is refused before a model is loaded
    assert cli.main(["eval", "--checkpoint", checkpoint]) == 2
    assert "--config" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", checkpoint, "--harness", "x", "--num-eval", "3"]) == 2
    assert "--num-eval belong to eval --config" in capsys.readouterr().err
