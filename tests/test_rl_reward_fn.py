"""RL refinement against a Python reward ("verifiable rewards", config.objective.reward_fn): the synthetic
task's ground truth ("task") or a "module.path:function", on a tiny SFT policy (as in
tests/test_second_thoughts.py); the logged reward is what the function returned for the sampled
responses, and bad settings and bad return values are clear errors."""

import importlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxalign import config as config_lib
from jaxalign import runner
from jaxalign.data import synthetic
from jaxalign.methods import rl

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "edit_chain_synthetic.py"
MESH = "dp:2,fsdp:4,tp:1"
TINY = [  # tests/test_second_thoughts.py's tiny detox runs
    "--config.model.preset=tiny", "--config.total_steps=3", "--config.batch_size=8", "--config.seq_len=192",
    "--config.data.num_train=64", "--config.data.num_eval=4", "--config.data.vocab_size=512",
    f"--config.mesh={MESH}", "--config.num_samples=0", "--config.max_new_tokens=8", "--config.log_every=1",
    "--config.checkpoint_every=100", "--config.optimizer.warmup_steps=0",
    "--config.optimizer.schedule=constant", "--config.optimizer.peak_lr=3e-3",
]
RL = ["--config.total_steps=2", "--config.batch_size=4", "--config.objective.samples_per_prompt=2",
      "--config.optimizer.peak_lr=1e-3"]
MODULE = "jaxalign_test_rl_rewards"
REWARDS = '''
CALLS = []
NOT_A_FUNCTION = 3


def length_reward(prompts, responses):
    out = [len(r) / 10.0 for r in responses]
    CALLS.append((list(prompts), list(responses), out))
    return out


def wrong_length(prompts, responses):
    return [0.0]


def scalar(prompts, responses):
    return 1.0


def not_finite(prompts, responses):
    return [0.0] * (len(responses) - 1) + [float("nan")]


def not_numbers(prompts, responses):
    return ["high"] * len(responses)
'''


def _config(variant, *overrides):
    return config_lib.load_config(f"{EXPERIMENT}:{variant}", [*TINY, *overrides])


def _metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny SFT policy on detox (3 steps: what it says does not matter, only that it samples)."""
    workdir = tmp_path_factory.mktemp("rl_reward_fn") / "sft"
    runner.train(_config("sft"), workdir)
    return workdir


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    """A module of reward functions on sys.path, as a user's would be."""
    root = tmp_path_factory.mktemp("rewards_module")
    (root / f"{MODULE}.py").write_text(textwrap.dedent(REWARDS))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        yield importlib.import_module(MODULE)
        sys.modules.pop(MODULE, None)


def test_task_reward_is_the_ground_truth(policy, tmp_path):
    workdir = tmp_path / "rl_task"
    summary = runner.train(_config("rl", *RL, f"--config.init_from={policy}",
                                   "--config.objective.reward_fn=task"), workdir)
    assert summary["step"] == 2
    metrics = _metrics(workdir)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:  # the reward is the task's score of the same responses
        assert np.isfinite(m["reward"]) and m["reward"] == pytest.approx(m["task_score"], abs=1e-9)
        assert np.isfinite(m["loss"]) and np.isfinite(m["kl"])


def test_module_function_reward_is_logged(policy, rewards, tmp_path):
    rewards.CALLS.clear()
    workdir = tmp_path / "rl_fn"
    runner.train(_config("rl", *RL, f"--config.init_from={policy}",
                         f"--config.objective.reward_fn={MODULE}:length_reward"), workdir)
    metrics = _metrics(workdir)
    assert len(rewards.CALLS) == len(metrics) == 2  # one call per rollout, the whole batch at once
    task = synthetic.get_task("detox")
    for m, (prompts, responses, out) in zip(metrics, rewards.CALLS, strict=True):
        assert len(prompts) == len(responses) == 4 and all(isinstance(t, str) for t in prompts + responses)
        assert prompts[0] == prompts[1] and prompts[2] == prompts[3]  # samples_per_prompt=2 per prompt
        assert m["reward"] == pytest.approx(np.mean(out), rel=1e-9)
        # The function saw the records' prompts and the very responses the task judged.
        scores = [task.score(p, r) for p, r in zip(prompts, responses, strict=True)]
        assert m["task_score"] == pytest.approx(np.mean(scores))


def test_bad_return_values_are_errors_naming_the_function(rewards):
    prompts, responses = ["a", "a", "b", "b"], ["x", "yy", "", "zzz"]
    np.testing.assert_allclose(rl.reward_function(f"{MODULE}:length_reward")(prompts, responses),
                               [0.1, 0.2, 0.0, 0.3])
    for name, match in [("wrong_length", r"shape \(1,\) for 4 responses"), ("scalar", "a scalar"),
                        ("not_finite", "non-finite reward nan for response 3"),
                        ("not_numbers", "not a sequence of floats")]:
        with pytest.raises(ValueError, match=match) as error:
            rl.reward_function(f"{MODULE}:{name}")(prompts, responses)
        assert f"reward_fn='{MODULE}:{name}'" in str(error.value)
    task = synthetic.get_task("detox")
    record = synthetic.to_records(synthetic.make_split(task, "eval", 1, seed=0))[0]
    got = rl.reward_function("task", task)([record["prompt"]] * 2, [record["chosen"], record["rejected"]])
    np.testing.assert_allclose(got, [task.score(record["prompt"], record["chosen"]),
                                     task.score(record["prompt"], record["rejected"])])
    with pytest.raises(ValueError, match="no synthetic task"):
        rl.reward_function("task", None)


def test_reward_settings_are_clear_errors(rewards, tmp_path):
    base = ["--config.init_from=unused"]  # the reward is checked before anything is loaded
    cases = [
        ([], "exactly one reward.*neither is set"),
        (["--config.objective.reward_model=workdirs/rm", "--config.objective.reward_fn=task"],
         "exactly one reward.*both are set"),
        (["--config.objective.reward_fn=no_colon"], "must be 'task' or 'module.path:function'"),
        (["--config.objective.reward_fn=jaxalign_no_such_module:f"], "cannot import module"),
        ([f"--config.objective.reward_fn={MODULE}:missing"], "has no attribute 'missing'"),
        ([f"--config.objective.reward_fn={MODULE}:NOT_A_FUNCTION"], "is a int, not a function"),
    ]
    for i, (overrides, match) in enumerate(cases):
        with pytest.raises(ValueError, match=match):
            runner.train(_config("rl", *base, *overrides), tmp_path / str(i))
        assert not (tmp_path / str(i)).exists()  # nothing was started


def test_lora_rl_trains_adapters_on_the_policy(policy, rewards, tmp_path):
    """config.lora on an RL run: the state holds adapters, the first rollout is the policy's own (B = 0,
    so KL to the reference, the base with adapters off, is exactly 0), and the checkpoint exports merged."""
    import jax

    from jaxalign import export, lora

    # A reward that differs between samples (their length): advantages, so updates, are not zero.
    config = _config("rl", *RL, f"--config.init_from={policy}",
                     f"--config.objective.reward_fn={MODULE}:length_reward")
    config.lora = lora.default_config()
    config.lora.update(rank=4, alpha=8.0)
    workdir = tmp_path / "rl_lora"
    assert runner.train(config, workdir)["step"] == 2
    metrics = _metrics(workdir)
    assert metrics[0]["kl"] == 0.0 and all(np.isfinite(m["loss"]) for m in metrics)
    base, adapters, _ = export.Source(workdir).lora_parts()
    leaves = {path: leaf for path, leaf in jax.tree_util.tree_leaves_with_path(adapters)}
    assert {getattr(path[-1], "key", None) for path in leaves} == {"lora_a", "lora_b"}
    b = [leaf for path, leaf in leaves.items() if path[-1].key == "lora_b"]
    assert max(float(np.abs(np.asarray(x)).max()) for x in b) > 0  # B starts at 0: trained
    out = export.export(workdir, tmp_path / "merged", fmt="orbax")
    merged = jax.tree.leaves(jaxalign_load(out).params)
    start = jax.tree.leaves(jaxalign_load(policy).params)
    assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(merged, start, strict=True))


def jaxalign_load(path):
    from jaxalign import api

    return api.load(path, mesh=MESH)
