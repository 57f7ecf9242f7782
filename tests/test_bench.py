"""jaxalign.bench: the FLOPs formula by hand, and one tiny end-to-end run (no timing asserts)."""

import json
import math

import jax
import pytest

from jaxalign import bench, models
from jaxalign.train import metrics


def test_flops_per_token_by_hand():
    cfg = models.get_preset("tiny")  # vocab 256, hidden 64, mlp 128, 2 layers, 4 heads, 2 KV, dim 16
    per_layer = (
        64 * 4 * 16  # q_proj
        + 2 * 64 * 2 * 16  # k_proj, v_proj
        + 4 * 16 * 64  # o_proj
        + 3 * 64 * 128  # gate, up, down
        + 2 * 64  # two RMSNorm scales
    )
    n = 2 * per_layer + 64 + 256 * 64  # layers, final norm, lm_head; the input table is left out
    assert n == 90432
    attention = 12 * 2 * 4 * 16 * 128 / 2
    assert metrics.flops_per_token(cfg, 128) == 6 * n + attention == 640896
    assert metrics.flops_per_token(cfg, 128, training=False) == 2 * n + attention / 3


@pytest.mark.parametrize("tied", [False, True])
def test_flops_count_every_weight_but_the_input_table(tied):
    # Against the real parameter tree: every weight except the input embedding table, with the
    # unembedding counted once whether it is its own lm_head or the tied table.
    cfg = models.get_preset("tiny", tie_word_embeddings=tied, attention_bias=True)
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(models.param_shapes(cfg)))
    n = total - (0 if tied else cfg.vocab_size * cfg.hidden_size)
    attention_fwd = 4 * 2 * 4 * 16 * 64 / 2  # forward third of 12 L H Dh S / 2 at S = 64
    assert metrics.flops_per_token(cfg, 64, training=False) == 2 * n + attention_fwd


def test_bad_flag_is_named():
    with pytest.raises(ValueError, match="--gen-new-tokens"):
        bench.main(["--preset", "tiny", "--gen-new-tokens", "0"])


def test_bad_model_override_is_named():
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        bench.main(["--preset", "tiny", "--model", "remat"])
    with pytest.raises(ValueError, match="unknown key.*'remats'"):
        bench.main(["--preset", "tiny", "--model", "remats=full"])


def test_preset_flag_and_its_former_name(capsys):
    assert bench._parser().parse_args(["--preset", "tiny"]).preset == "tiny"
    assert capsys.readouterr().err == ""
    assert bench._parser().parse_args(["--config", "tiny"]).preset == "tiny"  # every other --config is a file
    assert capsys.readouterr().err == "bench: note: --config is now --preset\n"
    assert "--config" not in bench._parser().format_help()


def test_tiny_run_prints_one_json_object(capsys):
    code = bench.main([
        "--json", "--preset", "tiny", "--batch", "8", "--seq-len", "32", "--steps", "2",
        "--gen-batch", "2", "--gen-prompt-len", "8", "--gen-new-tokens", "4", "--model", "remat=full",
    ])
    assert code == 0
    result = json.loads(capsys.readouterr().out)  # the whole of stdout is one object
    for key in bench.REQUIRED_KEYS:
        assert result[key] is not None, key
    for key in [k for k in bench.REQUIRED_KEYS if k.endswith(("_per_s", "_flops", "_mfu"))]:
        assert result[key] > 0, key
    for key in ["generate_prefill_s", "torch_generate_prefill_s"]:
        assert result[key] > 0, key
    # A decode step is a difference of two timings: on a busy machine it can come out <= 0, which
    # the run then says in a note rather than hiding.
    for key in ["generate_decode_step_s", "torch_generate_decode_step_s"]:
        assert math.isfinite(result[key]), key
        assert result[key] > 0 or any(key in note for note in result["notes"]), key
    # The input pipeline phase: the loop's time splits into waiting for data and the rest.
    assert 0 <= result["input_wait_fraction"] < 1 and 0 <= result["input_overhead_fraction"] < 1
    assert result["input_step_s"] > 0 and result["input_loop_step_s"] > 0
    config = result["bench_config"]
    assert (config["preset"], config["batch"], config["seq_len"]) == ("tiny", 8, 32)
    assert config["remat"] == "full" and config["microbatches"] == 1
    assert config["dtype"] == "float32" and config["mesh_shape"] == {"dp": 1, "fsdp": 8, "tp": 1}
    assert config["flops_per_token_train"] == metrics.flops_per_token(models.get_preset("tiny"), 32)
    # MFU is exactly the documented ratio; random tokens give a loss near ln(vocab).
    assert result["train_mfu"] == pytest.approx(
        config["flops_per_token_train"] * result["train_tokens_per_s"] / result["peak_flops_total"])
    assert result["matmul_peak_flops"] == max(result["matmul_peak_flops_start"],
                                              result["matmul_peak_flops_end"])
    assert abs(result["train_loss"] - math.log(256)) < 0.5
    assert result["train_vs_torch"] == pytest.approx(
        result["train_tokens_per_s"] / result["torch_train_tokens_per_s"])
    table = bench.format_table(result)
    assert "train tokens/s" in table and "generate tokens/s (no cache)" in table
