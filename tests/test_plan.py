"""The memory planner: its estimate against XLA's compiled memory analysis, and its arithmetic."""

import json

import pytest

from jaxalign import cli, plan
from jaxalign import mesh as mesh_lib
from jaxalign.models import get_preset

# Two configs whose activations dominate the step, as a real run's do: remat "none" on an 8-way
# fsdp mesh (the whole score matrix of every layer saved), and remat "full" with tensor parallelism.
XLA_CASES = [
    ("dp:1,fsdp:8,tp:1", dict(remat="none"), 8, 256),
    ("dp:1,fsdp:4,tp:2", dict(remat="full"), 16, 128),
]


@pytest.mark.parametrize("spec, overrides, batch, seq_len", XLA_CASES)
def test_estimate_within_10_percent_of_xla(devices, spec, overrides, batch, seq_len):
    cfg = get_preset("tiny", **overrides)
    mesh = mesh_lib.make_mesh(spec, devices)
    xla = plan.xla_memory(cfg, mesh, batch, seq_len)
    estimate = plan.estimate(cfg, mesh_lib.parse_mesh_spec(spec, len(devices)), batch, seq_len)

    assert estimate.activations > 0.5 * estimate.total  # the check is about activations, not weights
    # The arguments are the train state (donated, so aliased by the outputs) and the batch.
    assert estimate.params + estimate.opt_state + estimate.inputs == pytest.approx(xla["arguments"], rel=1e-3)
    assert xla["aliased"] <= xla["outputs"] <= xla["arguments"]
    assert estimate.total == pytest.approx(xla["peak"], rel=0.10)


def test_fsdp_divides_the_state_and_tp_divides_heads_and_vocab():
    cfg = get_preset("tiny", remat="none")
    one = plan.estimate(cfg, {}, batch=8, seq_len=512)
    fsdp = plan.estimate(cfg, {"fsdp": 8}, batch=8, seq_len=512)
    # Norm scales are replicated (2% of the tiny model), so the shards are a little over an eighth.
    for field in ("params", "opt_state", "grads"):
        assert getattr(one, field) / 8 <= getattr(fsdp, field) <= getattr(one, field) / 8 * 1.03
    assert (one.rows_per_device, fsdp.rows_per_device) == (8, 1)
    # tp=2 splits tiny's 4 heads and 2 KV heads, whose scores dominate at 512 tokens, and the vocabulary.
    tp = plan.estimate(cfg, {"tp": 2}, batch=8, seq_len=512)
    assert tp.rows_per_device == 8
    assert tp.terms["attention_backward"] < 0.6 * one.terms["attention_backward"]
    assert tp.terms["logits"] * 2 == one.terms["logits"]


def test_dtypes_follow_the_trainer():
    f32 = plan.estimate(get_preset("tiny"), {}, batch=2, seq_len=16)
    bf16 = plan.estimate(get_preset("tiny", param_dtype="bfloat16"), {}, batch=2, seq_len=16)
    assert bf16.params * 2 == f32.params
    assert bf16.grads == f32.grads  # gradients are float32 whatever the parameters' dtype
    assert bf16.opt_state < f32.opt_state  # optax keeps mu and nu in the parameters' dtype
    assert f32.grads == f32.params  # float32 params: one float32 gradient per parameter


def test_remat_and_microbatches_trade_memory():
    def activations(**overrides):
        return plan.estimate(get_preset("tiny", **overrides), {}, batch=8, seq_len=128).activations

    assert activations(remat="full") < activations(remat="save_dots") < activations(remat="none")
    assert activations(attention_impl="chunked") < activations()
    cfg = get_preset("tiny")
    whole = plan.estimate(cfg, {}, batch=8, seq_len=128)
    split = plan.estimate(cfg, {}, batch=8, seq_len=128, microbatches=2)
    assert split.terms["stack"] * 2 == whole.terms["stack"]
    assert split.grads == 2 * whole.grads  # the accumulator and the microbatch's gradient


def test_plans_a_pod_without_its_devices():
    cfg = get_preset("70b", dtype="bfloat16", remat="full")
    result = plan.estimate(cfg, {"dp": 1, "fsdp": 256, "tp": 1}, batch=256, seq_len=2048)
    assert result.rows_per_device == 1
    assert result.params == pytest.approx(cfg.num_params() * 4 / 256, rel=0.01)
    assert result.total < plan.DEVICES["tpu-v4"]


def test_largest_batch_fits_and_one_more_step_does_not():
    cfg = get_preset("tiny", remat="full")
    mesh_shape = {"dp": 2, "fsdp": 4, "tp": 1}
    budgets = [2**20 * k for k in (4, 8, 16, 64)]
    sizes = [plan.largest_batch(cfg, mesh_shape, 128, budget, microbatches=2) for budget in budgets]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0] > 0
    for size, budget in zip(sizes, budgets, strict=True):
        assert size % (2 * 4 * 2) == 0
        assert plan.estimate(cfg, mesh_shape, size, 128, microbatches=2).total <= budget
        assert plan.estimate(cfg, mesh_shape, size + 16, 128, microbatches=2).total > budget
    state_only = plan.estimate(cfg, mesh_shape, 16, 128, microbatches=2)
    assert plan.largest_batch(cfg, mesh_shape, 128, state_only.params, microbatches=2) == 0


def test_bad_input_names_the_value():
    cfg = get_preset("tiny")
    with pytest.raises(ValueError, match="unknown axes"):
        plan.estimate(cfg, {"data": 2}, batch=8, seq_len=16)
    with pytest.raises(ValueError, match="microbatches"):
        plan.estimate(cfg, {}, batch=6, seq_len=16, microbatches=4)
    with pytest.raises(ValueError, match="no -1"):
        plan.parse_mesh_shape("dp:1,fsdp:-1,tp:1")
    assert plan.parse_mesh_shape("1,256,2") == {"dp": 1, "fsdp": 256, "tp": 2}


CONFIG = """
import ml_collections

def get_config():
    return ml_collections.ConfigDict(dict(
        batch_size=8, seq_len=32, microbatches=1, mesh="dp:1,fsdp:-1,tp:1",
        model=ml_collections.ConfigDict(dict(preset="tiny", remat="full")),
    ))
"""


def _plan_json(capsys, *args):
    assert cli.main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_plans_a_pod_and_checks_against_xla(devices, tmp_path, capsys):
    path = tmp_path / "tiny_plan.py"
    path.write_text(CONFIG)
    pod = _plan_json(capsys, "--config", str(path), "--device", "tpu-v4",
                     "--mesh", "dp:1,fsdp:256,tp:1",
                     "--config.model.remat=none", "--config.batch_size=512")
    for key in ("params", "opt_state", "grads", "activations", "total", "largest_batch", "mesh_shape",
                "rows_per_device", "terms", "device_bytes"):
        assert key in pod
    assert pod["mesh_shape"] == {"dp": 1, "fsdp": 256, "tp": 1} and pod["rows_per_device"] == 2
    assert pod["device_bytes"] == plan.DEVICES["tpu-v4"] and pod["largest_batch"] % 256 == 0

    local = _plan_json(capsys, "--config", str(path), "--check")
    assert local["mesh_shape"]["fsdp"] == len(devices) and local["largest_batch"] is None
    assert set(local["xla"]) == {"arguments", "outputs", "aliased", "temps", "peak"}
    assert local["params"] + local["opt_state"] + local["inputs"] == pytest.approx(local["xla"]["arguments"],
                                                                                   rel=1e-3)

    assert cli.main(["plan", "--config", str(path), "--config.bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
