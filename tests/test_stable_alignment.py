"""Stable Alignment: the loss against a plain-Python hand computation (mean and max), K = 1 as SFT,
invalid entries ignored, the packed-row loss against per-response scores of a tiny model whatever the
batch composition, the response subset, the registry's group objectives (sft best/all) and the
report's group ranking."""

import math

import jax
import numpy as np
import pytest

from jaxalign import api, models
from jaxalign import mesh as mesh_lib
from jaxalign.data import examples as examples_lib
from jaxalign.data.packing import pack_examples
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.eval import report as report_lib
from jaxalign.forward import sequence_logprobs
from jaxalign.objectives import lm, registry
from jaxalign.objectives import stable_alignment as sa
from jaxalign.train.step import make_eval_step

MESH = "dp:2,fsdp:2,tp:2"
CFG = models.get_preset("tiny", initializer_range=0.2)  # a large init spreads the NLLs apart
WORDS = ("the quick brown fox jumps over the lazy dog a helpful reply is clear honest and kind "
         "an unhelpful reply is vague or rude question what is two plus two answer four").split()


def _hand_loss(nll, ratings, valid, margin, lam, scale, reduce):
    """The paper's formula with loops, float64, over groups with a valid entry."""
    losses, penalties = [], []
    for row_nll, row_s, row_v in zip(nll.tolist(), ratings.tolist(), valid.tolist(), strict=True):
        entries = [(x, s) for x, s, v in zip(row_nll, row_s, row_v, strict=True) if v]
        if not entries:
            continue
        b = max(range(len(entries)), key=lambda i: (entries[i][1], -i))  # the first of equal maxima
        lb, sb = entries[b]
        deltas = [lb - x + margin * (sb - s) / scale for i, (x, s) in enumerate(entries) if i != b]
        agg = (sum(deltas) / len(deltas) if reduce == "mean" else max(deltas)) if deltas else 0.0
        penalties.append(max(0.0, agg))
        losses.append(lb + lam * penalties[-1])
    return sum(losses) / len(losses), sum(penalties) / len(penalties), len(losses)


def _random_groups(seed, groups=9, k=4):
    rng = np.random.default_rng(seed)
    nll = rng.uniform(0.2, 4.0, (groups, k)).astype(np.float32)
    ratings = rng.integers(1, 8, (groups, k)).astype(np.float32)  # 1..7: ties happen
    valid = rng.random((groups, k)) < 0.7
    valid[0] = [True, False, False, False]  # one response: no penalty
    valid[1] = False  # no response: not counted
    valid[2] = True
    ratings[2] = [5, 5, 2, 5]  # a tie for the best: the first wins
    return nll, ratings, valid


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_loss_matches_a_hand_computation(reduce):
    nll, ratings, valid = _random_groups(0)
    for margin, lam in ((1.0, 0.5), (10.0, 0.2), (0.0, 1.0)):
        loss, metrics = sa.stable_alignment_loss(nll, ratings, valid, margin, lam, 7.0, reduce)
        want, penalty, count = _hand_loss(nll, ratings, valid, margin, lam, 7.0, reduce)
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        np.testing.assert_allclose(metrics["penalty"], penalty, rtol=1e-5, atol=1e-7)
        assert metrics["loss_weight"] == metrics["num_groups"] == count == 8
        assert metrics["num_responses"] == valid.sum()
    assert metrics["penalty"] > 0  # the seed gives violated margins, so the hinge is exercised


def test_the_best_of_tied_ratings_is_the_first_and_rank_metrics_count_pairs():
    nll = np.array([[1.0, 0.5, 2.0], [1.0, 3.0, 2.0]], np.float32)
    ratings = np.array([[6, 6, 1], [7, 2, 3]], np.float32)
    valid = np.ones((2, 3), bool)
    loss, metrics = sa.stable_alignment_loss(nll, ratings, valid, margin=1.0, lam=1.0, rating_scale=7.0)
    # Group 0: b = 0 (not 1, the likelier tie): deltas 1 - 0.5 + 0 = 0.5 and 1 - 2 + 5/7.
    group0 = 1.0 + max(0.0, (0.5 + (-1 + 5 / 7)) / 2)
    group1 = 1.0 + max(0.0, ((1 - 3 + 5 / 7) + (1 - 2 + 4 / 7)) / 2)  # both ranked right: hinge at 0
    np.testing.assert_allclose(loss, (group0 + group1) / 2, rtol=1e-6)
    assert metrics["nll_best"] == 1.0
    assert (metrics["num_pairs"], metrics["num_pairs_ranked"]) == (4, 3)
    np.testing.assert_allclose(metrics["rank_accuracy"], (0.5 + 1.0) / 2)


def test_k1_is_sft_on_each_response():
    nll = np.array([[1.5], [0.25], [3.0]], np.float32)
    ratings = np.array([[1], [7], [4]], np.float32)
    loss, metrics = sa.stable_alignment_loss(nll, ratings, np.ones((3, 1), bool), 10.0, 0.9, 7.0, "max")
    np.testing.assert_allclose(loss, nll.mean(), rtol=1e-6)
    assert metrics["penalty"] == 0 and metrics["num_pairs"] == 0 and metrics["rank_accuracy"] == 1


def _loss_of(nll, ratings, valid, reduce="mean"):
    return sa.stable_alignment_loss(nll, ratings, valid, 1.0, 0.5, 7.0, reduce)


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_invalid_entries_change_nothing_and_get_no_gradient(reduce):
    nll, ratings, valid = _random_groups(1)
    loss, metrics = _loss_of(nll, ratings, valid, reduce)
    junk_nll, junk_ratings = nll.copy(), ratings.copy()
    junk_nll[~valid] = np.tile([np.nan, np.inf, -np.inf, -50.0], 9 * 4)[: (~valid).sum()]
    junk_ratings[~valid] = np.tile([np.nan, 1e9, -np.inf], 9 * 4)[: (~valid).sum()]
    junk_loss, junk_metrics = _loss_of(junk_nll, junk_ratings, valid, reduce)
    assert float(junk_loss) == float(loss)
    assert {k: float(v) for k, v in junk_metrics.items()} == {k: float(v) for k, v in metrics.items()}
    grad = np.asarray(jax.grad(lambda x: _loss_of(x, junk_ratings, valid, reduce)[0])(junk_nll))
    assert np.all(np.isfinite(grad)) and np.all(grad[~valid] == 0)
    assert np.all(grad[valid].sum() > 0)  # the best responses are pulled up


def test_no_valid_group_gives_zero_loss_and_weight():
    nll = np.full((2, 3), np.nan, np.float32)
    loss, metrics = _loss_of(nll, nll, np.zeros((2, 3), bool))
    assert float(loss) == 0.0 and float(metrics["loss_weight"]) == 0.0
    grad = jax.grad(lambda x: _loss_of(x, nll, np.zeros((2, 3), bool))[0])(nll)
    assert np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize("kwargs,message", [
    ({"reduce": "sum"}, r"reduce='sum'; choose one of \['mean', 'max'\]"),
    ({"rating_scale": 0.0}, r"rating_scale=0.0 must be a finite number > 0"),
    ({"lam": -0.1}, r"lam=-0.1 must be a finite number >= 0"),
    ({"margin": float("nan")}, r"margin=nan must be a finite number >= 0"),
    ({"group_size": 0}, r"group_size=0 must be a positive integer"),
])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sa.make_loss_fn(**kwargs)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match=r"one \[groups, K\] shape"):
        sa.stable_alignment_loss(np.zeros((2, 3)), np.zeros((2, 2)), np.ones((2, 3), bool))


# --------------------------------------------------------------------------- data


def test_subset_keeps_the_best_and_is_deterministic_per_record():
    ratings = [2, 6, 3, 6, 1, 4, 5]
    subsets = [sa.select_responses(ratings, 3, seed=0, record_index=i) for i in range(40)]
    assert all(len(s) == 3 and s == sorted(s) for s in subsets)
    assert all(1 in s for s in subsets)  # the first of the two 6s is the best, always kept
    assert subsets == [sa.select_responses(ratings, 3, seed=0, record_index=i) for i in range(40)]
    assert len({tuple(s) for s in subsets}) > 5  # the others are drawn, not fixed
    assert subsets != [sa.select_responses(ratings, 3, seed=1, record_index=i) for i in range(40)]
    assert sa.select_responses([1, 2], 3, 0, 0) == [0, 1]
    assert sa.select_responses(ratings, 1, 0, 0) == [1]


def _group_records(n=6, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        size = int(rng.integers(1, 6))
        prompt = " ".join(rng.choice(WORDS, int(rng.integers(1, 6))))
        responses = [" ".join(rng.choice(WORDS, int(rng.integers(1, 9)))) for _ in range(size)]
        ratings = [float(r) for r in rng.integers(1, 8, size)]
        # Distinct fractions tag each group, so a group found in packed rows tells which record it is.
        ratings = [r + 0.01 * i for r in ratings]
        records.append({"prompt": prompt, "responses": responses, "ratings": ratings})
    return records


def test_group_examples_carry_rating_and_index_on_every_token():
    tok = demo_tokenizer()
    objective = registry.make(registry.default_config("stable_alignment"), tok, schema="group")
    assert objective.fields == sa.FIELDS and objective.fanout == 1
    record = {"prompt": "question", "responses": ["four", "five", "a dog", "blue"], "ratings": [7, 1, 3, 7]}
    example = objective.source([record])[0]
    kept = sa.select_responses(record["ratings"], 3, 0, 0)
    assert len(example["parts"]) == 3 and 0 in kept
    prompt = tok.encode(examples_lib.format_prompt("question"), add_bos=True)
    for j, (part, i) in enumerate(zip(example["parts"], kept, strict=True)):
        want = examples_lib.sft_example(prompt, tok.encode(record["responses"][i]), tok.eos_id)
        np.testing.assert_array_equal(part["tokens"], want["tokens"])
        np.testing.assert_array_equal(part["weights"], want["weights"])
        assert part["tokens"][-1] == tok.eos_id
        assert np.all(part["sa_index"] == j) and np.all(part["sa_rating"] == record["ratings"][i])


@pytest.fixture(scope="module")
def model():
    mesh = mesh_lib.make_mesh(MESH)
    return mesh, models.init_params(CFG, mesh, seed=0), demo_tokenizer()


def _rows(examples, seq_len, multiple=4):
    rows = pack_examples(examples, seq_len, fields=sa.FIELDS, num_bins=4)
    rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * (-len(rows) % multiple)  # empty rows
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _reference(model, records, objective, reduce):
    """Per record (nll, ratings) of its kept responses scored one by one, and the hand loss."""
    mesh, params, tok = model
    groups = []
    for index, record in enumerate(records):
        kept = sa.select_responses(record["ratings"], 3, 0, index)
        examples = [examples_lib.prompted_example(tok, record["prompt"], record["responses"][i])
                    for i in kept]
        scores = sequence_logprobs(params, CFG, mesh, examples)
        groups.append((-scores.logp / scores.num_tokens, [record["ratings"][i] for i in kept]))
    k = 3
    nll = np.zeros((len(groups), k))
    ratings, valid = np.zeros_like(nll), np.zeros_like(nll, bool)
    for g, (values, scores) in enumerate(groups):
        nll[g, : len(values)], ratings[g, : len(values)], valid[g, : len(values)] = values, scores, True
    return groups, _hand_loss(nll, ratings, valid, 1.0, 0.5, 7.0, reduce)[0]


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_packed_rows_give_the_direct_loss_whatever_the_batch(model, reduce):
    mesh, params, tok = model
    records = _group_records(12)
    cfg = registry.default_config("stable_alignment")
    cfg.reduce = reduce
    objective = registry.make(cfg, tok, schema="group")
    examples = [objective.source(records)[i] for i in range(len(records))]
    groups, want = _reference(model, records, objective, reduce)

    evaluate = make_eval_step(CFG, mesh, objective.loss_fn)
    halves = make_eval_step(CFG, mesh, objective.loss_fn, microbatches=2)
    # No group is cut (seq_len >= every group), and each batch packs them differently.
    batches = [_rows(examples[::-1], 160), _rows(examples, 128), _rows(examples[5:] + examples[:5], 256)]
    # (max: one batch, to keep the test short; the composition cases do not depend on the reduction)
    for batch in batches if reduce == "mean" else batches[:1]:
        for step in (evaluate, halves) if reduce == "mean" else (evaluate,):
            metrics = step(params, batch)
            np.testing.assert_allclose(metrics["loss"], want, rtol=1e-4)
            assert metrics["num_groups"] == len(records)
    # Per group: every group found in the rows has the NLLs its responses have alone.
    forward = jax.jit(lambda p, b: models.Transformer(CFG).apply(
        {"params": p}, b["inputs"], positions=b["positions"], segment_ids=b["segment_ids"]))
    with mesh_lib.use(mesh):
        logits = forward(params, batches[0])
    nll, ratings, valid = (np.asarray(x) for x in sa.group_arrays(logits, batches[0], 3))
    found = np.flatnonzero(valid.any(1))
    assert len(found) == len(records)
    for g in found:
        record = int(round(ratings[g, 0] % 1 * 100))  # the tag of _group_records
        values, scores = groups[record]
        np.testing.assert_allclose(nll[g, valid[g]], values, rtol=1e-4)
        np.testing.assert_allclose(ratings[g, valid[g]], scores, rtol=1e-6)


def test_group_size_one_in_rows_is_per_sequence_sft(model):
    mesh, params, tok = model
    records = _group_records(8, seed=3)
    cfg = registry.default_config("stable_alignment")
    cfg.group_size = 1
    objective = registry.make(cfg, tok, schema="group")
    batch = _rows([objective.source(records)[i] for i in range(len(records))], 64)
    got = make_eval_step(CFG, mesh, objective.loss_fn)(params, batch)
    sft = make_eval_step(CFG, mesh, lm.make_loss_fn("sequence"))(params, batch)
    np.testing.assert_allclose(got["loss"], sft["loss"], rtol=1e-5)
    assert got["num_groups"] == sft["num_sequences"] == len(records)


def test_rows_without_the_fields_are_an_error():
    batch = {k: np.zeros((1, 8), np.int32) for k in ("targets", "weights", "segment_ids")}
    with pytest.raises(ValueError, match=r"fields=\('sa_rating', 'sa_index'\)"):
        sa.loss(np.zeros((1, 8, 5), np.float32), batch)


def test_sft_best_and_all_on_group_records():
    tok = demo_tokenizer()
    records = [{"prompt": "question", "responses": ["four", "blue", "a dog"], "ratings": [3, 7, 7]},
               {"prompt": "", "responses": ["kind"], "ratings": [1]},
               {"prompt": "name", "responses": ["red", "fox"], "ratings": [2.5, 1]}]
    best = registry.make(registry.default_config("sft"), tok, schema="group").source(records)
    assert len(best) == 3
    for record, example in zip(records, best, strict=True):
        chosen = record["responses"][examples_lib.best_response(record["ratings"])]
        want = examples_lib.prompted_example(tok, record["prompt"], chosen)
        np.testing.assert_array_equal(example["tokens"], want["tokens"])
    assert examples_lib.best_response(records[0]["ratings"]) == 1  # the first of the two 7s
    cfg = registry.default_config("sft")
    cfg.responses = "all"
    every = registry.make(cfg, tok, schema="group").source(records)
    assert len(every) == 6
    pairs = [(r["prompt"], y) for r in records for y in r["responses"]]
    for i, (prompt, response) in enumerate(pairs):
        want = examples_lib.prompted_example(tok, prompt, response)
        np.testing.assert_array_equal(every[i]["tokens"], want["tokens"])
    assert [every.locate(i) for i in (2, 3, 4, 5)] == [(0, 2), (1, 0), (2, 0), (2, 1)]
    with pytest.raises(IndexError):
        every[6]


def test_group_records_from_tfds_read_as_bytes_and_arrays():
    record = {"prompt": b"q", "responses": np.array([b"four", b"fox"], object),
              "ratings": np.array([1.0, 6.0])}
    assert examples_lib.group_fields(record) == ("q", ["four", "fox"], [1.0, 6.0])
    tok = demo_tokenizer()
    np.testing.assert_array_equal(examples_lib.record_to_example(record, tok, "group")["tokens"],
                                  examples_lib.prompted_example(tok, "q", "fox")["tokens"])


@pytest.mark.parametrize("responses,ratings,message", [
    ([], [], "field 'responses' must hold at least one value"),
    (["a", " "], [1, 2], r"field 'responses'\[1\] must not be empty"),
    (["a"], [True], r"field 'ratings'\[0\] must be a number, got bool"),
    (["a"], [math.nan], r"field 'ratings'\[0\] must be finite, got nan"),
    (["a", "b"], [1], "field 'ratings' has 1 values but 'responses' has 2"),
    ("a", [1], "field 'responses' must be a list, got str"),
])
def test_bad_group_records_name_the_record_and_field(responses, ratings, message):
    record = {"prompt": "p", "responses": responses, "ratings": ratings}
    tok = demo_tokenizer()
    source = registry.make(registry.default_config("stable_alignment"), tok, schema="group").source(
        [{"prompt": "p", "responses": ["a"], "ratings": [1]}, record])
    with pytest.raises(ValueError, match=f"record 1: {message}"):
        source[1]


@pytest.mark.parametrize("name,schema,options,message", [
    ("stable_alignment", "preference", {}, "'stable_alignment' needs group records"),
    ("dpo", "group", {}, "group records .* train only with 'stable_alignment' or its baselines 'sft'"),
    ("reward", "group", {}, "group records"),
    ("sft", "preference", {"responses": "all"}, "use objective 'sft_pos_neg'"),
    ("sft", "text", {"responses": "all"}, "needs group records"),
    ("sft", "group", {"responses": "some"}, r"responses='some'; choose one of \('best', 'all'\)"),
    ("stable_alignment", "group", {"reduce": "median"}, "reduce='median'"),
    ("stable_alignment", "group", {"beta": 0.1}, r"unknown key\(s\) \['beta'\]"),
])
def test_objective_and_schema_errors(name, schema, options, message):
    cfg = registry.default_config(name)
    for key, value in options.items():
        if key in cfg:
            setattr(cfg, key, value)
        else:
            cfg.unlock()
            cfg[key] = value
    with pytest.raises(ValueError, match=message):
        registry.make(cfg, demo_tokenizer(), schema=schema)


def test_prompt_template_of_a_saved_run():
    template = examples_lib.PROMPT_TEMPLATE
    assert registry.prompt_template({"name": "stable_alignment", "margin": 10.0}) == template
    assert registry.prompt_template({"name": "sft", "normalization": "token"}) == template


def test_group_ranking_counts_rated_pairs(model):
    mesh, params, tok = model
    llm = api.LM(CFG, params, mesh, tok)
    groups = [("question", ["four", "blue fox", "a lazy dog"], [7, 1, 4]), ("name", ["red"], [3]),
              ("", ["kind", "rude"], [2, 2]), ("answer", ["two", "four"], [1, 5])]
    out = report_lib.group_ranking(llm, groups)
    examples = [report_lib.response_example(tok, examples_lib.format_prompt(p), y)
                for p, ys, _ in groups for y in ys]
    scores = sequence_logprobs(params, CFG, mesh, examples)
    nll = -scores.logp / scores.num_tokens
    first, last = nll[:3], nll[6:]
    wins = [first[0] < first[1], first[0] < first[2], first[2] < first[1], last[1] < last[0]]
    assert out["n_pairs"] == 4 and out["n_groups"] == 2  # single and tied groups have no pair
    np.testing.assert_allclose(out["accuracy"], np.mean(wins))
    best_lowest = [first[0] < min(first[1], first[2]), last[1] < last[0]]
    np.testing.assert_allclose(out["best_lowest"], np.mean(best_lowest))
