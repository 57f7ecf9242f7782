"""A tiny Chain of Hindsight run end to end through the command line: train, eval, generate."""

import json

import jaxalign
from jaxalign import cli
from jaxalign.objectives import coh

TINY = [
    "--config.model.preset=tiny", "--config.total_steps=4", "--config.optimizer.warmup_steps=1",
    "--config.seq_len=96", "--config.batch_size=8",
    "--config.pretrain.batch_size=8", "--config.data.num_train=48", "--config.data.num_eval=8",
    "--config.data.vocab_size=320", "--config.log_every=2", "--config.checkpoint_every=2",
    "--config.num_samples=2", "--config.max_new_tokens=6", "--config.mesh=dp:2,fsdp:4,tp:1",
]


def test_coh_train_eval_generate_through_the_cli(tmp_path, capsys):
    workdir = tmp_path / "coh"
    args = ["--config", "experiments/coh_synthetic.py", *TINY]
    assert cli.main(["train", *args, "--workdir", str(workdir)]) == 0
    assert "done at step 4" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {"feedback/loss", "pretrain/loss", "feedback/num_sequences"} <= set(metrics[-1])
    config = json.loads((workdir / "config.json").read_text())
    assert config["objective"]["name"] == "coh" and config["pretrain"]["weight"] == 1.5

    assert cli.main(["eval", *args, "--checkpoint", str(workdir), "--mesh", "dp:2,fsdp:4,tp:1"]) == 0
    report = json.loads((workdir / "eval.json").read_text())
    assert report["objective"] == "coh" and report["num_eval"] == 8
    assert report["prompt_template"] == coh.CoHFormat().prompt_template()
    assert set(report) >= {"preference", "feedback", "rouge", "task", "samples"}
    assert 0.0 <= report["preference"]["sum"]["accuracy"] <= 1.0 and report["feedback"]["n"] == 16
    # Each section names its scale; sequences are cut to the run's seq_len (CoH's with both feedback
    # markers are long enough that some are).
    assert set(report["scales"]) == {"preference", "feedback", "rouge", "task", "truncation"}
    cut = report["truncation"]
    assert (cut["max_len"], cut["max_len_from"]) == (96, "seq_len in config.json")

    lm = jaxalign.load(workdir, mesh="dp:2,fsdp:4,tp:1")
    assert lm.prompt_template == "User: {prompt}\nA helpful answer: "
    assert cli.main(["generate", "--checkpoint", str(workdir), "--prompt", "Tell me how to fix a boat.",
                     "--max-new-tokens", "4", "--mesh", "dp:2,fsdp:4,tp:1"]) == 0


def test_unknown_objective_key_is_one_clear_error(tmp_path, capsys):
    code = cli.main(["train", "--config", "experiments/coh_synthetic.py", *TINY,
                     "--config.objective.beta=0.1", "--workdir", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "beta" in err and err.startswith("jaxalign: error:")
