"""Reward models: the score head (config, shapes, sharding, no cache), where a segment's reward is read,
both losses against hand computations, a short Bradley-Terry training run, scoring of rows and texts on
an 8-device mesh, starting from an LM, and the Hugging Face round trip checked against transformers'
LlamaForSequenceClassification."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxalign import forward, hf, models
from jaxalign import mesh as mesh_lib
from jaxalign.data.examples import format_prompt, sft_example
from jaxalign.data.packing import pack_examples
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.models import Transformer
from jaxalign.models import reward as reward_model
from jaxalign.objectives import dpo, reward
from jaxalign.train import state as state_lib
from jaxalign.train import step as step_lib
from jaxalign.train.optim import make_optimizer

_bt = jax.jit(reward.bradley_terry_loss, static_argnames=("center_coef",))
_ce = jax.jit(reward.cross_entropy_loss)


def _score_cfg(**overrides):
    return models.get_preset("tiny", head="score", **overrides)


@pytest.fixture(scope="module")
def mesh222(devices):
    return mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")


@pytest.fixture(scope="module")
def scorer(mesh222):
    """{num_labels: (cfg, params)}: tiny score models on mesh222, initialised once for the module."""
    out = {}
    for num_labels in (1, 2):
        cfg = _score_cfg(num_labels=num_labels, initializer_range=0.2)
        out[num_labels] = cfg, models.init_params(cfg, mesh222, seed=num_labels)
    return out


def _apply(cfg, params, mesh, tokens, **kwargs):
    with mesh_lib.use(mesh):
        out = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t, **kwargs))(params, tokens)
    return np.asarray(out)


def _hidden(cfg, params, mesh, tokens):
    with mesh_lib.use(mesh):
        fn = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t, method="hidden")[0])
        return np.asarray(fn(params, tokens))


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


# ------------------------------------------------------------------------------- config and model


def test_config_head_is_validated_and_round_trips():
    cfg = _score_cfg(num_labels=3)
    assert models.from_dict(cfg.to_dict()) == cfg and hash(models.from_dict(cfg.to_dict())) == hash(cfg)
    assert models.get_preset("tiny").head == "lm"
    for bad, match in [
        (dict(head="value"), "head"), (dict(head="score", num_labels=0), "num_labels"),
        (dict(head="score", num_labels=True), "num_labels"), (dict(num_labels=2), "only meaningful"),
        (dict(head="score", tie_word_embeddings=True), "tie_word_embeddings=False"),
    ]:
        with pytest.raises(ValueError, match=match):
            models.get_preset("tiny", **bad)
    tied = models.get_preset("tiny", tie_word_embeddings=True)
    assert reward_model.score_config(tied) == tied.replace(head="score", tie_word_embeddings=False)


@pytest.mark.parametrize("num_labels, scan", [(1, True), (3, False)])
def test_param_count_and_tree_of_a_score_model(num_labels, scan):
    cfg = _score_cfg(num_labels=num_labels, scan_layers=scan)
    shapes = models.param_shapes(cfg)
    assert "lm_head" not in shapes and shapes["score"]["kernel"].shape == (64, num_labels)
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == cfg.num_params()
    lm_cfg = models.get_preset("tiny", scan_layers=scan)
    # Without embeddings: the backbone, plus the score head instead of nothing.
    backbone = lm_cfg.num_params(include_embeddings=False)
    assert cfg.num_params(include_embeddings=False) == backbone + 64 * num_labels


def test_score_model_outputs_float32_scores_of_the_final_hidden_state(mesh222, scorer):
    cfg, params = scorer[2]
    assert params["score"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    tokens = np.random.default_rng(0).integers(0, 256, (4, 12)).astype(np.int32)
    scores = _apply(cfg, params, mesh222, tokens)
    assert scores.shape == (4, 12, 2) and scores.dtype == np.float32
    hidden = _hidden(cfg, params, mesh222, tokens)
    np.testing.assert_allclose(scores, hidden @ np.asarray(params["score"]["kernel"]), rtol=1e-5, atol=1e-5)
    # The same function on another mesh.
    mesh8 = mesh_lib.make_mesh("dp:1,fsdp:8,tp:1")
    other = _apply(cfg, jax.device_put(params, models.param_shardings(cfg, mesh8)), mesh8, tokens)
    np.testing.assert_allclose(other, scores, rtol=1e-5, atol=1e-5)
    # bf16 compute: the scores still come out float32, near the float32 model's.
    low = _apply(cfg.replace(dtype="bfloat16"), params, mesh222, tokens)
    assert low.dtype == np.float32
    np.testing.assert_allclose(low, scores, atol=0.1 * np.abs(scores).max())
    with pytest.raises(ValueError, match="without a KV cache"):
        Transformer(cfg).apply({"params": params}, tokens[:, :1], cache=models.init_cache(cfg, 4, 16))


# ------------------------------------------------------------------------------- reward positions


def _handmade(seed=0):
    """Two rows of 12 slots. Row 0: pairs (1, 2) and (3, 4), then segment 5 (weights with a gap) and
    6 (no weight); row 1: pair (1, 2) whose rejected has no weight, then a lone segment 3. Padding ends
    both rows."""
    segment_ids = np.array([[1, 1, 2, 2, 3, 3, 4, 5, 5, 5, 6, 0],
                            [1, 1, 1, 2, 2, 3, 3, 3, 0, 0, 0, 0]], np.int32)
    weights = np.array([[0, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0],
                        [0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0]], np.float32)
    rng = np.random.default_rng(seed)
    batch = {
        "inputs": rng.integers(0, 9, (2, 12)).astype(np.int32),
        "targets": rng.integers(0, 9, (2, 12)).astype(np.int32),
        "weights": weights, "segment_ids": segment_ids,
        "positions": np.zeros((2, 12), np.int32),
        "labels": rng.integers(0, 2, (2, 12)).astype(np.float32),
    }
    return rng.normal(0, 2.0, (2, 12, 1)).astype(np.float32), batch


def _reference_rewards(scores, batch):
    """{(row, segment): (reward, label)} for every segment with a weighted position, by loops."""
    out = {}
    for r in range(scores.shape[0]):
        for s in range(1, batch["segment_ids"][r].max() + 1):
            idx = np.flatnonzero((batch["segment_ids"][r] == s) & (batch["weights"][r] > 0))
            if idx.size:
                out[r, s] = (float(scores[r, idx[-1], 0]), float(batch["labels"][r, idx[-1]]))
    return out


def test_last_token_mask_marks_the_last_weighted_position_of_each_segment():
    scores, batch = _handmade()
    mask = np.asarray(forward.last_token_mask(batch))
    expected = np.zeros((2, 12), np.float32)
    expected[0, [1, 3, 5, 6, 9]] = 1  # segment 5's gap does not give it two reward positions
    expected[1, [2, 7]] = 1
    np.testing.assert_array_equal(mask, expected)
    rewards = np.asarray(reward.segment_rewards(jnp.asarray(scores), batch))
    assert rewards.shape == (2, 13)
    want = np.zeros((2, 13), np.float32)
    for (r, s), (value, _) in _reference_rewards(scores, batch).items():
        want[r, s] = value
    np.testing.assert_array_equal(rewards, want)


def test_reward_of_an_sft_example_is_read_where_the_last_response_token_is_the_input():
    rows = pack_examples([sft_example([1, 7, 8], [20, 21, 22], 2), sft_example([1, 9], [30], 2)], 16)
    assert len(rows) == 1
    row = rows[0]
    mask = np.asarray(forward.last_token_mask({k: v[None] for k, v in row.items()}))[0]
    assert row["inputs"][mask > 0].tolist() == [22, 30] and row["targets"][mask > 0].tolist() == [2, 2]


# ------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("center_coef", [0.0, 0.1])
def test_bradley_terry_loss_matches_a_hand_computation(center_coef):
    scores, batch = _handmade()
    loss, metrics = _bt(scores, batch, center_coef=center_coef)
    ref = _reference_rewards(scores, batch)
    pairs = [(ref[r, 2 * j - 1][0], ref[r, 2 * j][0]) for r in range(2) for j in range(1, 7)
             if (r, 2 * j - 1) in ref and (r, 2 * j) in ref]
    assert len(pairs) == 2  # row 0's (1, 2), (3, 4); (5, 6) and row 1's (1, 2) lack a rejected reward
    c, rej = np.array(pairs).T
    losses = -_log_sigmoid(c - rej) + center_coef * (c + rej) ** 2
    np.testing.assert_allclose(float(loss), losses.mean(), rtol=1e-6)
    assert float(metrics["loss_weight"]) == float(metrics["num_pairs"]) == 2
    np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(c > rej))
    for name, value in [("reward_margin", c - rej), ("reward_chosen", c), ("reward_rejected", rej)]:
        np.testing.assert_allclose(float(metrics[name]), value.mean(), rtol=1e-6)


def test_bradley_terry_gradient_reaches_only_the_reward_positions_of_counted_pairs():
    scores, batch = _handmade()
    grad = jax.grad(lambda s: reward.bradley_terry_loss(s, batch, center_coef=0.1)[0])(scores)
    grad = np.asarray(grad)[..., 0]
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(np.flatnonzero(grad[0]), [1, 3, 5, 6])
    assert not grad[1].any()
    # d/dr_c of -log s(r_c - r_r) + k (r_c + r_r)^2, for pair (1, 2) of row 0.
    margin, total = scores[0, 1, 0] - scores[0, 3, 0], scores[0, 1, 0] + scores[0, 3, 0]
    expected = (-(1 - 1 / (1 + math.exp(-margin))) + 0.2 * total) / 2
    np.testing.assert_allclose(grad[0, 1], expected, rtol=1e-5)


def test_cross_entropy_loss_matches_a_hand_computation():
    scores, batch = _handmade()
    loss, metrics = _ce(scores, batch)
    ref = np.array(list(_reference_rewards(scores, batch).values()))
    assert len(ref) == 7  # row 0's segments 1-5 and row 1's 1 and 3 have a weighted position
    r, y = ref.T
    bce = -y * _log_sigmoid(r) - (1 - y) * _log_sigmoid(-r)
    np.testing.assert_allclose(float(loss), bce.mean(), rtol=1e-6)
    assert float(metrics["loss_weight"]) == float(metrics["num_examples"]) == 7
    assert float(metrics["num_positive"]) == np.sum(y >= 0.5)
    np.testing.assert_allclose(float(metrics["accuracy"]), np.mean((r > 0) == (y >= 0.5)), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["reward_positive"]), r[y >= 0.5].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["reward_negative"]), r[y < 0.5].mean(), rtol=1e-6)
    grad = np.asarray(jax.grad(lambda s: reward.cross_entropy_loss(s, batch)[0])(scores))
    assert np.all(np.isfinite(grad)) and np.count_nonzero(grad) == 7


def test_losses_accumulate_exactly_over_row_splits():
    """loss * loss_weight adds up over rows, which is what the train step's accumulation relies on."""
    scores, batch = _handmade()
    rows = [({k: v[i:i + 1] for k, v in batch.items()}, scores[i:i + 1]) for i in range(2)]
    for fn in (_bt, _ce):
        loss, metrics = fn(scores, batch)
        parts = [fn(s, b) for b, s in rows]
        total = sum(float(part) * float(m["loss_weight"]) for part, m in parts)
        np.testing.assert_allclose(float(loss) * float(metrics["loss_weight"]), total, rtol=1e-6)


def test_empty_batch_and_bad_input():
    scores, batch = _handmade()
    empty = {**batch, "weights": np.zeros_like(batch["weights"])}
    for fn in (_bt, _ce):
        loss, metrics = fn(scores, empty)
        assert float(loss) == 0 and float(metrics["loss_weight"]) == 0
    with pytest.raises(ValueError, match=r"\[batch, length, 1\]"):
        reward.bradley_terry_loss(np.zeros((2, 12, 5), np.float32), batch)
    with pytest.raises(ValueError, match="fields=\\('labels',\\)"):
        reward.cross_entropy_loss(scores, {k: v for k, v in batch.items() if k != "labels"})
    with pytest.raises(ValueError, match="center_coef"):
        reward.make_loss_fn("bradley_terry", center_coef=-1.0)
    with pytest.raises(ValueError, match="unknown reward loss"):
        reward.make_loss_fn("hinge")


# ------------------------------------------------------------------------------- examples


def test_examples_pack_with_their_labels_and_pairs():
    assert reward.pair_example([1, 5], [6, 7], [8], 2)["parts"][1]["tokens"].tolist() == [1, 5, 8, 2]
    pair = reward.pair_example([1, 5], [6, 7], [8], 2)
    same = dpo.pair_example([1, 5], [6, 7], [8], 2)
    for a, b in zip(pair["parts"], same["parts"], strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in ("tokens", "weights"))
    good, bad = reward.labelled_example([1, 5], [6, 7], 1, 2), reward.labelled_example([1], [9, 9, 9], 0.0, 2)
    assert good["labels"].tolist() == [1.0] * 5 and good["tokens"].tolist() == [1, 5, 6, 7, 2]
    (row,) = pack_examples([good, bad], 16, fields=("labels",))
    batch = {k: v[None] for k, v in row.items()}
    mask = np.asarray(forward.last_token_mask(batch))[0] > 0
    assert row["labels"][mask].tolist() == [1.0, 0.0]
    for label in (1.5, -0.1, "1", None):
        with pytest.raises(ValueError, match="label"):
            reward.labelled_example([1], [2], label, 2)


# ------------------------------------------------------------------------------- training


GOOD, BAD, EOS = 5, 6, 2
TRAIN_CFG = models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                               head="score")


def _toy_pairs(rng, n):
    """Chosen responses hold the token GOOD, rejected ones BAD, each at a random place other than the
    end: the reward position never sees the marker as its own input, so the model must attend back."""
    def response(mark):
        r = list(rng.integers(10, 64, rng.integers(2, 6)))
        r.insert(rng.integers(0, len(r)), mark)
        return r

    prompts = [[1, *rng.integers(10, 64, rng.integers(2, 5))] for _ in range(n)]
    return [reward.pair_example(prompt, response(GOOD), response(BAD), EOS) for prompt in prompts]


def _rows(examples, num_rows=8, seq_len=64):
    """Exactly num_rows packed rows: pairs that do not fit are left out, missing rows are padding."""
    rows = pack_examples(examples, seq_len, num_bins=num_rows)[:num_rows]
    rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * (num_rows - len(rows))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_bradley_terry_training_separates_a_toy_preference_task(devices):
    mesh = mesh_lib.make_mesh("dp:2,fsdp:4,tp:1")
    rng = np.random.default_rng(0)
    tx, _ = make_optimizer({"peak_lr": 3e-3, "total_steps": 20, "schedule": "constant", "warmup_steps": 0,
                            "weight_decay": 0.0})
    state = state_lib.init_train_state(TRAIN_CFG, tx, mesh, seed=0)
    train = step_lib.make_train_step(TRAIN_CFG, tx, mesh, loss_fn=reward.make_loss_fn("bradley_terry"),
                                     microbatches=2)
    evaluate = step_lib.make_eval_step(TRAIN_CFG, mesh, loss_fn=reward.bradley_terry_loss)
    held_out = _rows(_toy_pairs(np.random.default_rng(1), 32))
    before = evaluate(state.params, held_out)
    assert float(before["num_pairs"]) >= 20
    assert float(before["loss"]) == pytest.approx(math.log(2), abs=0.05)  # small init: rewards near 0
    for _ in range(20):
        state, metrics = train(state, _rows(_toy_pairs(rng, 24)))
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    after = evaluate(state.params, held_out)
    assert float(after["accuracy"]) > 0.9 and float(after["loss"]) < 0.3, after
    assert float(after["reward_margin"]) > 1.0


# ------------------------------------------------------------------------------- scoring


def _direct_rewards(cfg, params, mesh, rows):
    scores = _apply(cfg, params, mesh, rows["inputs"], positions=rows["positions"],
                    segment_ids=rows["segment_ids"])
    last = [np.flatnonzero(w > 0)[-1] for w in rows["weights"]]
    return scores[np.arange(len(last)), last]


def test_score_rows_equals_the_model_at_the_last_response_token(mesh222, scorer):
    cfg, params = scorer[1]
    rng = np.random.default_rng(0)
    prompts = [[1, *rng.integers(3, 256, rng.integers(1, 6))] for _ in range(5)]
    examples = [sft_example(prompt, rng.integers(3, 256, rng.integers(1, 9)), 2) for prompt in prompts]
    rows = forward.unpacked_rows(examples)
    assert rows["inputs"].shape == (5, 16) and rows["segment_ids"].max() == 1
    expected = _direct_rewards(cfg, params, mesh222, rows)[:, 0]
    for batch_size in (None, 3):  # all at once (padded to 8 rows) and in chunks of 4 (dp * fsdp)
        got = forward.score_rows(params, cfg, mesh222, rows, batch_size=batch_size)
        assert got.shape == (5,) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    empty = {k: np.concatenate([v, np.zeros_like(v[:1])]) for k, v in rows.items()}
    assert np.isnan(forward.score_rows(params, cfg, mesh222, empty)[-1])
    two, params2 = scorer[2]
    np.testing.assert_allclose(forward.score_rows(params2, two, mesh222, rows),
                               _direct_rewards(two, params2, mesh222, rows), rtol=1e-5, atol=1e-5)


def test_score_rows_rejects_packed_rows_and_lm_models(mesh222, scorer):
    cfg, params = scorer[1]
    (row,) = pack_examples([sft_example([1], [5, 6], 2), sft_example([1], [7], 2)], 16)
    with pytest.raises(ValueError, match=r"row 0 holds segments \[1, 2\]"):
        forward.score_rows(params, cfg, mesh222, {k: v[None] for k, v in row.items()})
    with pytest.raises(ValueError, match="head='score'"):
        forward.score_rows(params, models.get_preset("tiny"), mesh222, {k: v[None] for k, v in row.items()})
    with pytest.raises(ValueError, match="example 1: 40 tokens"):
        forward.unpacked_rows([sft_example([1], [5], 2), sft_example([1], list(range(3, 41)), 2)], seq_len=16)


def test_score_texts_scores_prompt_and_response_as_sft_builds_them(mesh222, scorer):
    cfg, params = scorer[1]
    tok = demo_tokenizer()
    prompts, responses = ["What is the answer?", "Say hello."], ["It is 42.", "hello world"]
    got = forward.score_texts(params, cfg, mesh222, tok, prompts, responses, batch_size=4)
    examples = [sft_example(tok.encode(format_prompt(p), add_bos=True), tok.encode(r), tok.eos_id)
                for p, r in zip(prompts, responses, strict=True)]
    expected = _direct_rewards(cfg, params, mesh222, forward.unpacked_rows(examples))[:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got[0] != got[1]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        forward.score_texts(params, cfg, mesh222, tok, prompts, responses[:1])


def test_score_params_from_lm_copies_the_backbone_and_initialises_the_head(mesh222):
    lm_cfg = models.get_preset("tiny", tie_word_embeddings=True, initializer_range=0.2)
    lm_params = models.init_params(lm_cfg, mesh222, seed=0)
    cfg = reward_model.score_config(lm_cfg)
    params = reward_model.score_params_from_lm(lm_params, cfg, mesh222, seed=7)
    assert set(params) == set(models.param_shapes(cfg))
    shardings = models.param_shardings(cfg, mesh222)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True):
        assert got.sharding.is_equivalent_to(want, got.ndim)
    fresh = models.init_params(cfg, mesh222, seed=7)
    np.testing.assert_array_equal(params["score"]["kernel"], fresh["score"]["kernel"])
    tokens = np.random.default_rng(0).integers(0, 256, (4, 10)).astype(np.int32)
    want = _hidden(lm_cfg, lm_params, mesh222, tokens)
    np.testing.assert_array_equal(_hidden(cfg, params, mesh222, tokens), want)
    with pytest.raises(ValueError, match="head='score'"):
        reward_model.score_params_from_lm(lm_params, lm_cfg, mesh222)
    with pytest.raises(ValueError, match="has shape"):
        reward_model.score_params_from_lm(lm_params, cfg.replace(hidden_size=32), mesh222)
    with pytest.raises(ValueError, match="lack 'layers_0'"):
        reward_model.score_params_from_lm(lm_params, cfg.replace(scan_layers=False), mesh222)


# ------------------------------------------------------------------------------- Hugging Face


def _scaled(params, seed=0):
    """Weights scaled up (std 0.3) so a layout mistake moves the scores far beyond the tolerance."""
    rng = np.random.default_rng(seed)

    def one(path, x):
        noise = rng.standard_normal(x.shape).astype(np.float32)
        scaled = 1.0 + 0.2 * noise if jax.tree_util.keystr(path).endswith("['scale']") else 0.3 * noise
        return jax.device_put(scaled, x.sharding)

    return jax.tree_util.tree_map_with_path(one, params)


def test_export_matches_transformers_sequence_classification_and_imports_back(tmp_path, mesh222):
    """Two labels, so a transposed [num_labels, hidden] score.weight cannot pass (one label is checked
    against transformers below)."""
    num_labels = 2
    cfg = _score_cfg(num_labels=num_labels, pad_token_id=0)
    params = _scaled(models.init_params(cfg, mesh222))
    out = hf.export_checkpoint(params, cfg, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert len(config["id2label"]) == num_labels
    assert not (out / "generation_config.json").exists()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == num_labels

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 256, (3, 20)).astype(np.int32)  # no pad id 0: HF pools the last token
    with torch.no_grad():
        theirs = model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    ours_all = _apply(cfg, params, mesh222, tokens)
    ours = ours_all[:, -1]
    assert theirs.shape == ours.shape == (3, num_labels) and np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())

    cfg2, params2 = hf.import_checkpoint(out, mesh222)
    assert cfg2 == cfg
    np.testing.assert_array_equal(_apply(cfg2, params2, mesh222, tokens), ours_all)


def test_transformers_with_eos_as_pad_reads_our_reward_position(tmp_path, mesh222):
    """The documented recipe: pad_token_id = EOS makes HF pool prompt + response + EOS (right-padded)
    at the last response token, which is where score_rows reads the reward."""
    cfg = _score_cfg(pad_token_id=2)
    params = _scaled(models.init_params(cfg, mesh222), seed=1)
    out = hf.export_checkpoint(params, cfg, tmp_path / "hf")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    rng = np.random.default_rng(2)
    examples = [sft_example([1, *rng.integers(3, 256, 4)], rng.integers(3, 256, n), 2) for n in (3, 7)]
    ours = forward.score_rows(params, cfg, mesh222, forward.unpacked_rows(examples))
    width = max(len(e["tokens"]) for e in examples)
    pad = [width - len(e["tokens"]) for e in examples]
    padded = np.array([np.pad(e["tokens"], (0, n), constant_values=2)
                       for e, n in zip(examples, pad, strict=True)])
    attention = torch.as_tensor((np.arange(width)[None] < width - np.array(pad)[:, None]).astype(np.int64))
    with torch.no_grad():
        theirs = model(torch.as_tensor(padded, dtype=torch.long), attention_mask=attention).logits
    np.testing.assert_allclose(ours, theirs.numpy()[:, 0], rtol=0, atol=1e-4 * np.abs(theirs.numpy()).max())


def test_config_from_hf_reads_sequence_classification():
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4)
    cfg = hf.config_from_hf({"architectures": ["Qwen2ForSequenceClassification"], **base,
                             "id2label": {"0": "a", "1": "b", "2": "c"}, "tie_word_embeddings": True})
    assert (cfg.head, cfg.num_labels, cfg.attention_bias) == ("score", 3, True)
    assert not cfg.tie_word_embeddings  # nothing to tie in a classifier
    assert hf.config_from_hf({"architectures": ["LlamaForSequenceClassification"], **base}).num_labels == 2
    assert hf.config_from_hf(hf.config_to_hf(_score_cfg(num_labels=4))) == _score_cfg(num_labels=4)
    assert hf.config_from_hf({"model_type": "llama", **base}).head == "lm"
    with pytest.raises(hf.HFCheckpointError, match="num_labels"):
        hf.config_from_hf({"architectures": ["LlamaForSequenceClassification"], **base, "num_labels": 0})


def test_an_lm_checkpoint_is_not_read_as_a_score_model(tmp_path, mesh222):
    cfg = models.get_preset("tiny")
    out = hf.export_checkpoint(models.init_params(cfg, mesh222), cfg, tmp_path / "hf")
    with pytest.raises(hf.HFCheckpointError, match="'score.weight' is missing"):
        hf.import_checkpoint(out, mesh222, head="score")
