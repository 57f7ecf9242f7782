"""Every objective of the registry through `loop.train` on tiny configs of experiments/coh_synthetic.py
(Stable Alignment, which needs group records, on a group jsonl file instead of the synthetic task):
finite losses and each objective's metrics, exact resume with the pretraining stream on, DPO started
from an SFT run (`init_from`: the reference is that model), clear errors for a model that does not
fit `init_from` and for an option the objective does not have, and `jaxalign eval` on group records."""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxalign
from jaxalign import config as config_lib
from jaxalign import modeldir
from jaxalign.data.tokenizer import train_sentencepiece
from jaxalign.eval import report as report_lib
from jaxalign.objectives import registry
from jaxalign.train import loop
from jaxalign.train.checkpointer import Checkpointer

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "coh_synthetic.py"
MESH = "dp:2,fsdp:4,tp:1"
TINY = [
    "--config.model.preset=tiny", "--config.total_steps=4", "--config.batch_size=8", "--config.seq_len=64",
    "--config.data.num_train=64", "--config.data.num_eval=4", "--config.data.vocab_size=320",
    "--config.pretrain.batch_size=8", "--config.pretrain.num_texts=64", f"--config.mesh={MESH}",
    "--config.num_samples=2", "--config.max_new_tokens=8", "--config.log_every=1",
    "--config.checkpoint_every=100", "--config.optimizer.warmup_steps=0",
    "--config.optimizer.schedule=constant", "--config.optimizer.peak_lr=3e-3",
]
# The CoH experiment trains with its plain-text stream; DPO with it too, to cover a reference
# stream beside a plain one; the other objectives without.
WITH_PRETRAIN = ("coh", "dpo")
EXPECTED = {  # metrics each objective must report (under "feedback/" with the pretraining stream)
    "sft": ("accuracy", "loss_weight"),
    "sft_pos_neg": ("accuracy", "loss_weight"),
    "unlikelihood": ("nll", "unlikelihood", "num_ul_tokens", "loss_weight"),
    "dpo": ("accuracy", "num_pairs", "reward_margin", "reward_chosen", "reward_rejected", "logp_chosen"),
    "coh": ("accuracy", "num_sequences", "loss_weight"),
    "edit_chain": ("accuracy", "num_sequences", "loss_weight"),
    "reward": ("accuracy", "num_pairs", "reward_margin", "reward_chosen", "reward_rejected"),
    "stable_alignment": ("num_groups", "nll_best", "penalty", "rank_accuracy", "num_pairs", "loss_weight"),
}
# Objectives trained on group records (a jsonl file, see `group_data`), not on the synthetic task.
GROUP = ("stable_alignment",)
GROUP_MESH = "dp:1,fsdp:-1,tp:1"
WORDS = ("the kind answer is honest clear and helpful a rude reply is vague wrong or unkind "
         "please say what two plus two is four five blue fox dog").split()


def _config(objective, *overrides):
    pretrain = [] if objective in WITH_PRETRAIN else ["--config.pretrain.weight=0"]
    return config_lib.load_config(f"{EXPERIMENT}:{objective}", [*TINY, *pretrain, *overrides])


def _metrics(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines)}


def _losses(workdir):
    """Every loss-like value of every logged step (no timings)."""
    return {step: {k: v for k, v in row.items() if k.endswith(("loss", "reward_margin")) or k == "grad_norm"}
            for step, row in _metrics(workdir).items()}


def _params(workdir):
    return jax.device_get(jaxalign.load(workdir, mesh=MESH).params)


@pytest.fixture(scope="module")
def group_data(tmp_path_factory):
    """A group jsonl file (1 to 5 rated responses per prompt) and a tokenizer trained on its text."""
    root = tmp_path_factory.mktemp("group_data")
    rng = np.random.default_rng(0)
    records = []
    for i in range(48):
        size = int(rng.integers(1, 6))
        responses = [" ".join(rng.choice(WORDS, int(rng.integers(2, 8)))) for _ in range(size)]
        records.append({"prompt": " ".join(rng.choice(WORDS, 4)), "responses": responses,
                        "ratings": [int(r) for r in rng.integers(1, 8, size)], "id": i})
    path = root / "groups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    texts = [r["prompt"] for r in records] + [y for r in records for y in r["responses"]]
    tokenizer = train_sentencepiece(texts, vocab_size=320)
    tokenizer.save_pretrained(root / "tokenizer")
    return path, root / "tokenizer"


def _group_config(objective, group_data, *overrides):
    path, tokenizer = group_data
    config = _config(objective, "--config.seq_len=128", f"--config.mesh={GROUP_MESH}", *overrides)
    config.data.task = ""
    config.data.jsonl, config.data.schema, config.data.tokenizer = str(path), "group", str(tokenizer)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, group_data):
    """objective -> (summary, workdir) of a 4-step run, trained on first use."""
    done = {}

    def get(objective):
        if objective not in done:
            workdir = tmp_path_factory.mktemp(objective)
            config = _group_config(objective, group_data) if objective in GROUP else _config(objective)
            done[objective] = loop.train(config, workdir), workdir
        return done[objective]

    return get


def test_the_objectives_are_the_ones_tested():
    assert set(EXPECTED) == set(registry.OBJECTIVES)


@pytest.mark.parametrize("objective", list(registry.OBJECTIVES))
def test_objective_trains_with_its_metrics(runs, objective):
    summary, workdir = runs(objective)
    assert summary["status"] == "done" and summary["step"] == 4
    if objective == "reward":  # a scalar head scores texts; it does not generate
        assert "samples" not in summary
    elif objective in GROUP:  # user records: samples, but no ground-truth judge to score them
        assert len(summary["samples"]) == 2 and "score" not in summary
    else:
        assert len(summary["samples"]) == 2 and 0.0 <= summary["score"] <= 1.0
    metrics = _metrics(workdir)
    assert sorted(metrics) == [1, 2, 3, 4]
    streams = objective in WITH_PRETRAIN
    prefix = "feedback/" if streams else ""
    for step, row in metrics.items():
        missing = [prefix + k for k in EXPECTED[objective] if prefix + k not in row]
        assert not missing, f"step {step}: {missing} not in {sorted(row)}"
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
        assert row[prefix + "loss_weight" if objective != "dpo" else prefix + "num_pairs"] > 0
        if streams:
            assert row["pretrain/loss"] > 0 and row["pretrain/loss_weight"] > 0
            assert row["loss"] == pytest.approx(row["feedback/loss"] + 1.5 * row["pretrain/loss"], rel=1e-5)
        else:
            assert not any("/" in k for k in row), sorted(row)
    if objective == "unlikelihood":
        assert all(row["num_ul_tokens"] > 0 and row["unlikelihood"] > 0 for row in metrics.values())
    if objective == "stable_alignment":
        assert all(row["num_groups"] > 0 and row["num_pairs"] > 0 for row in metrics.values())
        assert all(0 <= row["rank_accuracy"] <= 1 and row["penalty"] >= 0 for row in metrics.values())
    if objective == "dpo":
        # The reference is the initial policy: at step 1 every reward is 0 and the loss is log 2.
        first = metrics[1]
        assert first["feedback/loss"] == pytest.approx(math.log(2), rel=1e-5)
        assert first["feedback/reward_margin"] == pytest.approx(0, abs=1e-5)
        assert metrics[4]["feedback/reward_margin"] != 0  # the policy moved; the reference did not


@pytest.mark.parametrize("objective", ["coh", "dpo"])
def test_resume_with_the_pretraining_stream_is_exact(runs, tmp_path, objective):
    # coh: FCM masks drawn per step; dpo: the reference must again be the initial model, not the
    # restored one. Both with two streams, whose data states are checkpointed together.
    _, uninterrupted = runs(objective)  # 4 steps
    summary = loop.train(_config(objective, "--config.total_steps=2", "--config.num_samples=0"), tmp_path)
    assert summary["step"] == 2 and Checkpointer(tmp_path / "checkpoints").latest_step() == 2
    summary = loop.train(_config(objective, "--config.num_samples=0"), tmp_path)
    assert summary["step"] == 4
    assert _losses(tmp_path) == _losses(uninterrupted)  # bitwise, both streams' data order included
    jax.tree.map(np.testing.assert_array_equal, _params(tmp_path), _params(uninterrupted))


def test_dpo_from_an_sft_run(runs, tmp_path, monkeypatch):
    _, sft = runs("sft")
    sft_params = _params(sft)
    sft_steps = Checkpointer(sft / "checkpoints").all_steps()
    dpo = ["--config.pretrain.weight=0", f"--config.init_from={sft}", "--config.total_steps=2",
           "--config.num_samples=0"]

    # A model of another size does not load, and leaves both workdirs usable.
    with pytest.raises(modeldir.CheckpointMismatchError, match=r"init_from=.*do not fit config.model"):
        loop.train(_config("dpo", *dpo, "--config.model.num_hidden_layers=1"), tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").latest_step() is None

    initial, original = [], loop._initial_params

    def record(*args):
        params = original(*args)
        initial.append(jax.device_get(params))  # before the new state takes (donates) them
        return params

    monkeypatch.setattr(loop, "_initial_params", record)
    summary = loop.train(_config("dpo", *dpo), tmp_path)
    assert summary["status"] == "done" and summary["step"] == 2
    # It started from the SFT model, and that model is the reference: at step 1 the policy equals
    # the reference, so every reward is 0 and the DPO loss is log 2.
    jax.tree.map(np.testing.assert_array_equal, initial[0], sft_params)
    first, second = _metrics(tmp_path)[1], _metrics(tmp_path)[2]
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-6)
    for key in ("reward_chosen", "reward_rejected", "reward_margin"):
        assert first[key] == pytest.approx(0, abs=1e-6), key
    assert first["num_pairs"] > 0  # (accuracy counts margins > 0: at step 1 those are rounding noise)
    assert second["reward_margin"] != 0 and second["loss"] != pytest.approx(math.log(2), rel=1e-6)
    # The SFT run is untouched.
    assert Checkpointer(sft / "checkpoints").all_steps() == sft_steps
    jax.tree.map(np.testing.assert_array_equal, _params(sft), sft_params)


def test_an_option_of_another_objective_is_an_error_naming_it(tmp_path):
    config = _config("coh")
    config.objective.beta = 0.1  # a DPO option
    with pytest.raises(config_lib.ConfigError, match=r"unknown key\(s\) \['beta'\] in config.objective"):
        loop.train(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # stopped before anything was trained or saved


def test_eval_report_on_group_records(runs, group_data):
    summary, workdir = runs("stable_alignment")
    config = _group_config("stable_alignment", group_data)
    report = report_lib.evaluate(config, workdir, mesh=GROUP_MESH, max_new_tokens=8)
    assert report["objective"] == "stable_alignment" and report["num_eval"] == 4
    assert report["eval_split"] == "train" and "warning" in report  # data.jsonl has no held-out split
    assert "preference" not in report
    ranking = report["group_ranking"]
    records = [json.loads(line) for line in group_data[0].read_text().splitlines()[:4]]
    pairs = sum(int(np.sum(np.subtract.outer(r["ratings"], r["ratings"]) > 0)) for r in records)
    assert ranking["n_pairs"] == pairs > 0 and 0 <= ranking["accuracy"] <= 1
    assert 0 <= report["rouge"]["avg"] <= 100 and len(report["samples"]) == 4
    # Every metric section names its scale; ROUGE's differs from the fractions beside it.
    metric_sections = {"group_ranking", "rouge", "truncation"} | ({"task"} & report.keys())
    assert set(report["scales"]) == metric_sections and "0-100" in report["scales"]["rouge"]
