"""Second Thoughts end to end on tiny models: the edit-chain objective in the registry, a run started
from a plain LM (its vocabulary grows by the chain markers), a reward model started from the same LM,
and RL refinement of the edit-chain model against that reward model, resumed exactly."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxalign
from jaxalign import config as config_lib
from jaxalign import export, runner
from jaxalign.data import synthetic
from jaxalign.data.tokenizer import train_sentencepiece
from jaxalign.eval import report as report_lib
from jaxalign.methods import rl as rl_loop
from jaxalign.objectives import edit_chain, edits, registry

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "edit_chain_synthetic.py"
MESH = "dp:2,fsdp:4,tp:1"
TINY = [
    "--config.model.preset=tiny", "--config.total_steps=3", "--config.batch_size=8", "--config.seq_len=192",
    "--config.data.num_train=64", "--config.data.num_eval=4", "--config.data.vocab_size=512",
    f"--config.mesh={MESH}", "--config.num_samples=2", "--config.max_new_tokens=8", "--config.log_every=1",
    "--config.checkpoint_every=100", "--config.optimizer.warmup_steps=0",
    "--config.optimizer.schedule=constant", "--config.optimizer.peak_lr=3e-3",
]


def _config(variant, *overrides):
    return config_lib.load_config(f"{EXPERIMENT}:{variant}", [*TINY, *overrides])


def _metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def detox_tokenizer():
    return train_sentencepiece(synthetic.get_task("detox").corpus(0, 500), vocab_size=512)


def test_registry_edit_chain_examples_prompt_and_response(detox_tokenizer):
    tok = detox_tokenizer
    before = tok.vocab_size
    record = synthetic.to_records(synthetic.make_split(synthetic.get_task("detox"), "train", 1, seed=0))[0]
    objective = registry.make(registry.default_config("edit_chain"), tok)
    assert tok.vocab_size == before + len(edits.MARKERS) and objective.fanout == 1
    fmt = edits.add_markers(tok)
    example = objective.source([record])[0]
    np.testing.assert_array_equal(example["tokens"], edit_chain.make_example(
        record["prompt"], record["rejected"], record["chosen"], tok, fmt)["tokens"])
    # The generation prompt is the trained prefix, token for token; the response is the aligned text.
    prompt = tok.encode(objective.prompt(record), add_bos=True)
    np.testing.assert_array_equal(example["tokens"][: len(prompt)], prompt)
    assert example["weights"][: len(prompt)].sum() == 0 and example["weights"][len(prompt):].all()
    generated = example["tokens"][len(prompt):].tolist()
    assert objective.response(record, generated, tok) == record["chosen"]
    assert registry.prompt_template(registry.default_config("edit_chain")).format(
        prompt=f"{record['prompt']}\n{record['rejected']}") == objective.prompt(record)

    cfg = registry.default_config("edit_chain")
    cfg.augment = True
    augmented = registry.make(cfg, tok)
    assert augmented.fanout == len(edits.AUGMENT_COSTS)
    cfg = registry.default_config("edit_chain")
    cfg.chain, cfg.loss_on = False, "aligned"
    rewrite = registry.make(cfg, tok)
    tokens = rewrite.source([record])[0]["tokens"].tolist()
    assert fmt.chain not in tokens and fmt.insert not in tokens and fmt.replace not in tokens
    assert rewrite.response(record, tokens[len(prompt):], tok) == record["chosen"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A plain SFT model, then an edit-chain model and a reward model both started from it."""
    root = tmp_path_factory.mktemp("second_thoughts")
    base, chain, rm = root / "base", root / "edit_chain", root / "reward"
    runner.train(_config("sft"), base)
    summaries = {
        "edit_chain": runner.train(_config("edit_chain", f"--config.init_from={base}"), chain),
        "reward": runner.train(_config("reward", f"--config.init_from={base}", "--config.total_steps=12"),
                               rm),
    }
    return {"base": base, "edit_chain": chain, "reward": rm, "summaries": summaries}


def test_edit_chain_run_from_a_plain_model(runs):
    base, chain = jaxalign.load(runs["base"], mesh=MESH), jaxalign.load(runs["edit_chain"], mesh=MESH)
    grown = chain.tokenizer.vocab_size - base.tokenizer.vocab_size
    assert grown == len(edits.MARKERS) and chain.cfg.vocab_size == chain.tokenizer.vocab_size
    assert chain.tokenizer.token_to_id("<|chain|>") is not None
    assert chain.prompt_template.endswith("<|unaligned|>")
    metrics = _metrics(runs["edit_chain"])
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(np.isfinite(m["loss"]) for m in metrics)
    summary = runs["summaries"]["edit_chain"]
    assert len(summary["samples"]) == 2 and 0.0 <= summary["score"] <= 1.0
    report = report_lib.evaluate(_config("edit_chain"), runs["edit_chain"], mesh=MESH, max_new_tokens=16)
    assert "preference" not in report  # it answers a draft, so there is no prompt-only likelihood to compare
    chain = report["edit_chain"]
    assert chain["n"] == 4 and chain["agrees"] <= chain["parsed"] and 0 <= chain["applied_score"] <= 1
    assert 0.0 <= report["task"]["score"] <= 1.0


def test_reward_model_trains_and_reports_accuracy(runs):
    rm = jaxalign.load(runs["reward"], mesh=MESH)
    assert rm.cfg.head == "score" and "lm_head" not in rm.params
    metrics = _metrics(runs["reward"])
    assert {"accuracy", "num_pairs", "reward_margin"} <= set(metrics[-1])
    losses = [m["loss"] for m in metrics]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    config = _config("reward", "--config.data.num_eval=32")
    report = report_lib.evaluate(config, runs["reward"], mesh=MESH)
    # Drafts carry toxic words the aligned replies never have: a few steps rank held-out pairs.
    assert report["reward"]["n"] == 32 and report["reward"]["accuracy"] >= 0.9
    assert "task" not in report  # a reward model does not generate


def test_rl_run_logs_and_resumes_exactly(runs, tmp_path):
    rl = ["--config.objective.samples_per_prompt=2", f"--config.init_from={runs['edit_chain']}",
          f"--config.objective.reward_model={runs['reward']}", "--config.batch_size=8",
          "--config.optimizer.peak_lr=1e-3", "--config.log_every=1", "--config.optimizer.warmup_steps=0"]
    straight = tmp_path / "straight"
    # config.model is not what RL trains (the policy is): a different preset changes nothing.
    other_model = "--config.model.preset=small"
    summary = runner.train(_config("rl", *rl, "--config.total_steps=3", other_model), straight)
    assert summary["step"] == 3 and len(summary["samples"]) == 2
    metrics = _metrics(straight)
    for key in ("reward", "kl", "entropy", "return", "task_score", "rollout_tokens_per_s",
                "train_tokens_per_s"):
        assert all(np.isfinite(m[key]) for m in metrics), key
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # step 1 samples from the reference itself
    # Evaluated as the policy it refined: an edit-chain model, shown the draft.
    report = report_lib.evaluate(_config("rl"), straight, mesh=MESH, max_new_tokens=16)
    assert report["objective"] == "rl" and report["prompt_template"].endswith("<|unaligned|>")
    assert "edit_chain" in report

    # The refined policy exports like any run: an HF directory with the logits of the workdir.
    out = export.export(straight, tmp_path / "hf")
    policy, exported = jaxalign.load(straight, mesh=MESH), jaxalign.load(out, mesh=MESH)
    tokens = np.random.default_rng(0).integers(3, policy.cfg.vocab_size, (2, 12))
    np.testing.assert_allclose(exported.logits(tokens), policy.logits(tokens), rtol=1e-5, atol=1e-5)
    assert "- objective: rl" in (out / "README.md").read_text()
    # A model directory keeps the template the policy was trained with (the edit chain's draft).
    model_dir = export.export(straight, tmp_path / "model", fmt="orbax")
    assert jaxalign.load(model_dir, mesh=MESH).prompt_template == policy.prompt_template
    assert policy.prompt_template.endswith("<|unaligned|>")

    resumed = tmp_path / "resumed"
    runner.train(_config("rl", *rl, "--config.total_steps=2", "--config.checkpoint_every=1"), resumed)
    runner.train(_config("rl", *rl, "--config.total_steps=3", "--config.checkpoint_every=1"), resumed)
    assert _metrics(resumed)[-1]["reward"] == pytest.approx(metrics[-1]["reward"], rel=1e-5)
    want, got = (jax.device_get(jaxalign.load(d, mesh=MESH).params) for d in (straight, resumed))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), want, got)


def test_rl_errors_are_clear(runs, tmp_path):
    with pytest.raises(ValueError, match="reward_model"):
        runner.train(_config("rl", f"--config.init_from={runs['edit_chain']}"), tmp_path / "a")
    with pytest.raises(ValueError, match="samples_per_prompt"):
        runner.train(_config("rl", f"--config.init_from={runs['edit_chain']}",
                           "--config.objective.samples_per_prompt=1",
                           f"--config.objective.reward_model={runs['reward']}"), tmp_path / "b")
    with pytest.raises(ValueError, match="not a reward model"):
        runner.train(_config("rl", f"--config.init_from={runs['edit_chain']}",
                           f"--config.objective.reward_model={runs['base']}"), tmp_path / "c")


def test_rl_raises_the_reward(runs, tmp_path):
    """A model trained on aligned and unaligned replies alike, refined against the reward model: the
    reward of its samples on fixed held-out prompts rises (here by exploiting the small reward model,
    which the ground-truth judge does not share: the task_score metric is how a run shows that)."""
    mix = tmp_path / "mix"
    config = _config("sft", "--config.total_steps=40", f"--config.data.tokenizer={runs['base']}/tokenizer")
    config.objective = registry.default_config("sft_pos_neg")  # sft's keys are not all sft_pos_neg's
    runner.train(config, mix)
    refined = tmp_path / "refined"
    runner.train(_config("rl", f"--config.init_from={mix}",
                         f"--config.objective.reward_model={runs['reward']}",
                       "--config.batch_size=16", "--config.objective.samples_per_prompt=4",
                       "--config.objective.kl_coef=0", "--config.total_steps=16", "--config.num_samples=0",
                       "--config.max_new_tokens=12"), refined)
    records = synthetic.to_records(synthetic.make_split(synthetic.get_task("detox"), "eval", 16, seed=0))
    rm = jaxalign.load(runs["reward"], mesh=MESH)
    opts = {**rl_loop.DEFAULTS, "samples_per_prompt": 4}

    def mean_reward(workdir):
        lm = jaxalign.load(workdir, mesh=MESH)
        policy = registry.make(registry.default_config("sft"), lm.tokenizer)
        out = rl_loop.rollout(lm.params, lm.params, lm.cfg, lm.mesh, lm.tokenizer, policy, rm, records,
                              opts=opts, seq_len=192, max_new_tokens=12, seed=123)
        return out.stats["reward"]

    before, after = mean_reward(mix), mean_reward(refined)
    assert after > before + 0.3, (before, after)


def test_revise_lists_edits_and_applies_accepted_ones(runs):
    lm = jaxalign.load(runs["edit_chain"], mesh=MESH)
    record = synthetic.to_records(synthetic.make_split(synthetic.get_task("detox"), "eval", 1, seed=0))[0]
    revision = edit_chain.revise(lm, record["prompt"], record["rejected"], max_new_tokens=16)
    src = lm.tokenizer.encode(record["rejected"])
    assert revision.src == src and "chain and target" in revision.describe(lm.tokenizer)
    if revision.chain is not None:  # a 3-step model may not write a parseable chain; when it does:
        assert revision.accept([]) == src
        assert revision.accept(range(len(revision.chain))) == revision.applied
    else:
        assert revision.parse_error and not revision.agrees
    with pytest.raises(ValueError, match="lacks the chain markers"):
        edit_chain.revise(jaxalign.load(runs["base"], mesh=MESH), record["prompt"], record["rejected"])
