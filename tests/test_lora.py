"""LoRA / QLoRA (jaxalign.lora): the reference of LoRA-DPO is the base, training changes only the
adapters, QLoRA trains, resume is exact, and both exports (merged HF; adapters in PEFT's layout,
loaded by peft onto the HF base) give the logits of the merged JAX model."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign import config as config_lib
from jaxalign import export as export_lib
from jaxalign import hf, logprobs, lora, models
from jaxalign import mesh as mesh_lib
from jaxalign.train import loop
from jaxalign.train import state as state_lib
from jaxalign.train import step as step_lib
from jaxalign.train.checkpointer import Checkpointer

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "coh_synthetic.py"
MESH = "dp:2,fsdp:2,tp:2"
TINY = [
    "--config.model.preset=tiny", "--config.batch_size=8", "--config.seq_len=128",
    "--config.data.num_train=64", "--config.data.num_eval=4", "--config.data.vocab_size=320",
    "--config.pretrain.weight=0", f"--config.mesh={MESH}", "--config.num_samples=0",
    "--config.log_every=1", "--config.checkpoint_every=2", "--config.optimizer.warmup_steps=0",
    "--config.optimizer.schedule=constant", "--config.optimizer.peak_lr=3e-3",
]
LORA = lora.LoraConfig(rank=4, alpha=8.0)


def _config(*overrides, base_dtype="float32"):
    config = config_lib.load_config(f"{EXPERIMENT}:dpo", [*TINY, *overrides])
    config.lora = lora.default_config()
    config.lora.update(rank=4, alpha=8.0, base_dtype=base_dtype)
    return config


def _rows(workdir):
    keep = ("loss", "loss_weight", "reward_margin", "grad_norm")
    return {r["step"]: {k: v for k, v in r.items() if k.endswith(keep)}
            for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())}


def _batch(cfg, rows=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, cfg.vocab_size, (rows, length + 1))
    return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
            "weights": np.ones((rows, length), np.float32), "segment_ids": np.ones((rows, length), np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1))}


def _probe(logits, batch):
    """A loss that reports the reference log-probs it was given (and trains on plain NLL)."""
    nll = -jnp.sum(logprobs.token_logps(logits, batch["targets"]) * batch["weights"])
    weight = jnp.sum(batch["weights"])
    ref = jnp.sum(batch["ref_logps"] * batch["weights"]) / weight
    return nll / weight, {"loss_weight": weight, "ref": ref}


@pytest.fixture(scope="module")
def setup():
    cfg = models.get_preset("tiny", vocab_size=128)
    mesh = mesh_lib.make_mesh(MESH)
    params = models.init_params(cfg, mesh, 0)
    return cfg, mesh, params


def test_dpo_reference_is_the_base_and_training_changes_only_adapters(setup):
    cfg, mesh, params = setup
    host = jax.device_get(params)
    base = lora.prepare_base(jax.tree.map(jnp.copy, params), cfg, LORA, mesh)
    tx = optax.adam(1e-2)
    state = state_lib.init_train_state(cfg, tx, mesh, 0, lora=LORA)
    # Only adapters are trained and only they have optimizer state.
    names = {p[-1].key for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert names == {"lora_a", "lora_b"}
    adapter_sizes = sorted(x.size for x in jax.tree.leaves(state.params))
    mu_sizes = sorted(x.size for x in jax.tree.leaves(state.opt_state[0].mu))
    assert mu_sizes == adapter_sizes
    batch = _batch(cfg)
    step = step_lib.make_train_step(cfg, tx, mesh, streams={"main": step_lib.Stream(_probe, reference=True)},
                                    lora=LORA, base_params=base)
    expected = logprobs.token_logps(models.Transformer(cfg).apply({"params": params}, batch["inputs"]),
                                    batch["targets"]).mean()
    before = jax.device_get(state.params)
    for _ in range(2):  # after the first step the adapters differ from zero: the reference must not
        state, metrics = step(state, batch)
        np.testing.assert_allclose(float(metrics["ref"]), float(expected), rtol=1e-6)
    after = jax.device_get(state.params)
    assert all(np.any(a != b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(base), host)  # the base is untouched
    with pytest.raises(ValueError, match="reference is its base"):
        step_lib.make_train_step(cfg, tx, mesh, lora=LORA, base_params=base, reference_params=params)


@pytest.mark.parametrize("base_dtype", ["int8"])  # int4 takes the same path (values int4, qmax 7)
def test_qlora_trains_a_step(setup, base_dtype):
    cfg, mesh, params = setup
    lcfg = lora.LoraConfig(rank=4, alpha=8.0, base_dtype=base_dtype)
    base = lora.prepare_base(jax.tree.map(jnp.copy, params), cfg, lcfg, mesh)
    kernel = base["layers"]["mlp"]["up_proj"]["kernel"]
    assert isinstance(kernel, lora.Quantized) and kernel.values.dtype == jnp.dtype(base_dtype)
    tx = optax.adam(1e-2)
    state = state_lib.init_train_state(cfg, tx, mesh, 0, lora=lcfg)
    step = step_lib.make_train_step(cfg, tx, mesh, lora=lcfg, base_params=base)
    state, first = step(state, _batch(cfg))
    state, second = step(state, _batch(cfg))
    assert np.isfinite(float(first["loss"])) and float(second["loss"]) < float(first["loss"])


def test_bad_config_is_one_clear_error(setup):
    cfg = setup[0]
    with pytest.raises(ValueError, match=r"'attn/nope' matches no kernel"):
        lora.targets(cfg, lora.LoraConfig(rank=2, targets=(r"layers/self_attn/q_proj", "attn/nope")))
    with pytest.raises(ValueError, match=r"lora.base_dtype='fp8'"):
        lora.from_config({"rank": 2, "base_dtype": "fp8"})
    with pytest.raises(ValueError, match=r"unknown keys \['dropout'\]"):
        lora.from_config({"rank": 2, "dropout": 0.1})
    assert lora.from_config({"rank": 0}) is None and lora.from_config(None) is None
    score = models.get_preset("tiny", vocab_size=128, head="score", num_labels=1)
    with pytest.raises(ValueError, match="add 'score' to the targets"):
        lora.targets(score, LORA)
    targets = lora.targets(score, lora.LoraConfig(rank=2, targets=(*lora.DEFAULT_TARGETS, "score")))
    assert targets[-1].path == ("score", "kernel")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """An uninterrupted 4-step LoRA-DPO run."""
    workdir = tmp_path_factory.mktemp("lora_run")
    assert loop.train(_config("--config.total_steps=4"), workdir)["status"] == "done"
    return workdir


def test_resume_is_exact(lora_run, tmp_path):
    loop.train(_config("--config.total_steps=2"), tmp_path)
    loop.train(_config("--config.total_steps=4"), tmp_path)
    assert _rows(tmp_path) == _rows(lora_run)
    # A checkpoint holds the adapters, their optimizer state and a reference to the base.
    saved = json.loads((tmp_path / "checkpoints" / "4" / "config" / "metadata").read_text())
    assert set(saved["lora_base"]) == {"init_from", "leaves", "elements", "sha256"}
    # Adapters recorded as trained on another base (say init_from's files changed) are refused.
    saved["lora_base"]["sha256"] = "0" * 64
    (tmp_path / "checkpoints" / "4" / "config" / "metadata").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="trained on another base"):
        loop.train(_config("--config.total_steps=6"), tmp_path)
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 4


def _merged(workdir):
    source = export_lib.Source(workdir)
    base, adapters, mesh = source.lora_parts()
    return source.cfg, lora.merge(base, adapters, source.cfg, source.lora, mesh), adapters


def test_merged_hf_export_and_peft_adapters_give_the_merged_logits(lora_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg, merged, _ = _merged(lora_run)
    tokens = np.array([[5, 17, 33, 2, 9, 41, 7, 12]], np.int32)
    want = np.asarray(models.Transformer(cfg).apply({"params": merged}, tokens))

    export_lib.export(lora_run, tmp_path / "merged", fmt="hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        got = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)

    # PEFT: the adapters alone, onto the base as an HF checkpoint (the run's base: the seed's init).
    export_lib.export(lora_run, tmp_path / "adapters", fmt="peft")
    assert {p.name for p in (tmp_path / "adapters").iterdir()} >= {"adapter_config.json",
                                                                   "adapter_model.safetensors"}
    mesh = mesh_lib.make_mesh(MESH)
    base = loop._initial_params("", cfg, mesh, 0)
    hf.export_checkpoint(base, cfg, tmp_path / "base")
    base_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    with_adapters = peft.PeftModel.from_pretrained(base_model, tmp_path / "adapters")
    with torch.no_grad():
        got = with_adapters(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="is a LoRA run"):
        import jaxalign

        jaxalign.load(lora_run, mesh=MESH)


def test_plan_counts_the_base_in_its_dtype_and_the_adapters_state():
    from jaxalign import plan

    cfg = models.get_preset("tiny", vocab_size=128)
    full = plan.estimate(cfg, {"fsdp": 1}, 4, 32)
    runs = {d: plan.estimate(cfg, {"fsdp": 1}, 4, 32, lora=lora.LoraConfig(rank=4, base_dtype=d))
            for d in ("float32", "bfloat16", "int8", "int4")}
    adapters = sum(x.size for x in jax.tree.leaves(lora.adapter_shapes(cfg, LORA)))
    for run in runs.values():
        assert run.grads == 4 * adapters and run.opt_state < full.opt_state / 10
        assert run.activations == full.activations
    params = [runs[d].params for d in ("float32", "bfloat16", "int8", "int4")]
    assert params == sorted(params, reverse=True) and params[0] == full.params + 4 * adapters
