"""Hugging Face interop: logits parity with transformers both ways, sharded slice-wise import,
greedy generation parity, and clear errors for checkpoints jaxalign cannot read faithfully.

The torch models get weights far larger than HF's init (std 0.3, not 0.02) so attention is
peaked and a RoPE or layout mistake moves the logits by much more than the tolerance; the
negative control below proves it.
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from jaxalign import hf, models
from jaxalign import mesh as mesh_lib
from jaxalign.models import Transformer

BASE = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
    bos_token_id=1, eos_token_id=2,
)
HF_CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
}
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10000.0}
# name: (architecture, HF config overrides, scan_layers)
CASES = {
    "llama_gqa": ("llama", {}, True),
    "llama_tied_odd_vocab": ("llama", dict(vocab_size=251, tie_word_embeddings=True), False),
    "qwen2_qkv_bias": ("qwen2", {}, True),
    "qwen2_tied_head_dim": ("qwen2", dict(head_dim=32, tie_word_embeddings=True), False),
    "llama_attention_bias_mha": ("llama", dict(attention_bias=True, num_key_value_heads=4), False),
    # positions up to 48 run far past original_max_position_embeddings=16
    "llama3_rope_head_dim": ("llama", dict(rope_parameters=LLAMA3_ROPE, head_dim=32), True),
    "linear_rope": ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 3.0,
                                                   "rope_theta": 500000.0}), True),
    "mistral": ("mistral", dict(sliding_window=None, head_dim=8, num_attention_heads=8), False),
}
LENGTH = 48


def _hf_model(arch: str, **overrides):
    config_cls, model_cls = HF_CLASSES[arch]
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**BASE, **overrides})).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))  # not all ones, so a missed scale shows
            else:
                p.normal_(0.0, 0.3)
    return model


def _save_hf(model, path):
    model.save_pretrained(path)
    return path


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def _jax_logits(cfg, params, mesh, tokens: np.ndarray) -> np.ndarray:
    with mesh_lib.use(mesh):
        fn = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))
        return np.asarray(fn(params, jnp.asarray(tokens, jnp.int32)))


def _tokens(vocab: int, batch: int = 2, length: int = LENGTH, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    scale = np.abs(theirs).max()
    assert scale > 1.0, "weights too small for a sensitive test"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def mesh8(devices):
    return mesh_lib.make_mesh("dp:1,fsdp:8,tp:1")


@pytest.fixture(scope="module")
def mesh222(devices):
    return mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A saved GQA LLaMA and its torch model (shared by the mesh, slice and error tests)."""
    model = _hf_model("llama")
    return model, _save_hf(model, tmp_path_factory.mktemp("llama"))


# ------------------------------------------------------------------------------- import parity


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_transformers(case, tmp_path, mesh222):
    arch, overrides, scan = CASES[case]
    model = _hf_model(arch, **overrides)
    _save_hf(model, tmp_path)
    cfg, params = hf.import_checkpoint(tmp_path, mesh222, scan_layers=scan)
    assert cfg.scan_layers is scan
    tokens = _tokens(cfg.vocab_size)
    _assert_close(_jax_logits(cfg, params, mesh222, tokens), _hf_logits(model, tokens))


def test_wrong_rope_theta_is_detected(tmp_path, mesh8):
    """Negative control: the parity test is sensitive to RoPE, not just to the weights."""
    model = _hf_model("llama", rope_parameters=LLAMA3_ROPE, head_dim=32)
    _save_hf(model, tmp_path)
    tokens = _tokens(BASE["vocab_size"])
    theirs = _hf_logits(model, tokens)
    cfg, params = hf.import_checkpoint(tmp_path, mesh8, rope_theta=20000.0)
    diff = np.abs(_jax_logits(cfg, params, mesh8, tokens) - theirs).max()
    assert diff > 100 * 1e-4 * np.abs(theirs).max()


# ------------------------------------------------------------------------------- meshes, slices


def test_import_onto_different_meshes(llama, mesh8, mesh222):
    model, path = llama
    tokens = _tokens(BASE["vocab_size"])
    logits = []
    for mesh in (mesh8, mesh222):
        cfg, params = hf.import_checkpoint(path, mesh)
        expected = models.param_shardings(cfg, mesh)
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
            assert got.sharding == want
        logits.append(_jax_logits(cfg, params, mesh, tokens))
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5 * np.abs(logits[0]).max())
    _assert_close(logits[0], _hf_logits(model, tokens))


def test_import_reads_only_slices(llama, mesh8, monkeypatch):
    """On fsdp:8 every weight with a model dimension is read in eighths, never whole."""
    _, path = llama
    reads = []
    real = hf._read_slice

    def recording(handle, name, index):
        block = real(handle, name, index)
        reads.append((name, block.size, int(np.prod(handle.get_slice(name).get_shape()))))
        return block

    monkeypatch.setattr(hf, "_read_slice", recording)
    cfg, params = hf.import_checkpoint(path, mesh8)
    sharded = [r for r in reads if not r[0].endswith("norm.weight")]
    assert {name for name, _, _ in sharded} == {
        n for n in safe_open(path / "model.safetensors", "numpy").keys() if not n.endswith("norm.weight")
    }
    for name, size, full in sharded:
        assert size * 8 == full, f"{name}: read {size} of {full} elements"


# ------------------------------------------------------------------------------- export


def _scaled_params(cfg, mesh, seed=0):
    """init_params, then weights scaled up to std ~0.3 and norm scales jittered around 1."""
    params = models.init_params(cfg, mesh, seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    out = []
    for (path, x), key in zip(leaves, keys, strict=True):
        noise = jax.random.normal(key, x.shape, x.dtype)
        if jax.tree_util.keystr(path).endswith("['scale']"):
            out.append(1.0 + 0.2 * noise)
        else:
            out.append(0.3 * noise)
    return jax.tree_util.tree_unflatten(treedef, [jax.device_put(y, x.sharding) for y, (_, x) in
                                                  zip(out, leaves, strict=True)])


EXPORT_CASES = {
    # name: (jaxalign config overrides, export dtype)
    "llama3_gqa_scan": (dict(rope_scaling={k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"},
                             head_dim=32), None),
    "qwen2_tied_unrolled": (dict(attention_bias=True, tie_word_embeddings=True, vocab_size=251,
                                 scan_layers=False), None),
    "llama_bias_bf16": (dict(attention_bias=True, attention_out_bias=True, num_key_value_heads=4,
                             rope_scaling={"rope_type": "linear", "factor": 2.0}), "bfloat16"),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_round_trip(case, tmp_path, mesh222):
    overrides, dtype = EXPORT_CASES[case]
    cfg = models.get_preset("tiny", **overrides)
    params = _scaled_params(cfg, mesh222)
    out = hf.export_checkpoint(params, cfg, tmp_path / "hf", max_shard_bytes=60_000, dtype=dtype)

    index = json.loads((out / hf.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files[0].startswith("model-00001-of-")
    assert all((out / f).is_file() for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name != "hf"], "temporary directories left behind"
    with safe_open(out / files[0], "numpy") as f:
        assert f.get_slice(next(iter(f.keys()))).get_dtype() == ("BF16" if dtype else "F32")

    hf_config = transformers.AutoConfig.from_pretrained(out)
    expected_arch = "Qwen2ForCausalLM" if case.startswith("qwen2") else "LlamaForCausalLM"
    assert hf_config.architectures == [expected_arch]
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert (gen.bos_token_id, gen.eos_token_id) == (cfg.bos_token_id, cfg.eos_token_id)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()

    if dtype:  # compare against the parameters as written
        params = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
    tokens = _tokens(cfg.vocab_size)
    ours = _jax_logits(cfg, params, mesh222, tokens)
    _assert_close(ours, _hf_logits(model, tokens))

    # ... and back: import gives the same config (up to dtype) and the same logits.
    cfg2, params2 = hf.import_checkpoint(out, mesh222, scan_layers=cfg.scan_layers)
    assert cfg2 == cfg
    np.testing.assert_array_equal(_jax_logits(cfg2, params2, mesh222, tokens), ours)


def test_export_never_clobbers(tmp_path, mesh8):
    cfg = models.get_preset("tiny")
    params = models.init_params(cfg, mesh8)
    out = hf.export_checkpoint(params, cfg, tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and not (out / hf.INDEX_FILE).exists()
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hf.export_checkpoint(models.init_params(cfg, mesh8, seed=1), cfg, out)
    assert (out / "model.safetensors").read_bytes() == before
    hf.export_checkpoint(models.init_params(cfg, mesh8, seed=1), cfg, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


class _FakeTokenizer:
    def save_pretrained(self, path):
        (path / "tokenizer.json").write_text("{}")


def test_export_saves_tokenizer(tmp_path, mesh8):
    cfg = models.get_preset("tiny")
    out = hf.export_checkpoint(models.init_params(cfg, mesh8), cfg, tmp_path / "hf",
                               tokenizer=_FakeTokenizer())
    assert (out / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------- generation


def test_greedy_generation_matches_transformers(llama, mesh222):
    from jaxalign import sample

    model, path = llama
    cfg, params = hf.import_checkpoint(path, mesh222)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, cfg.vocab_size, n).tolist() for n in (7, 13)]
    ours = sample.generate(params, cfg, prompts, mesh=mesh222, max_new_tokens=12, temperature=0.0,
                           eos_id=None)
    for prompt, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            full = model.generate(
                torch.tensor([prompt]), do_sample=False, max_new_tokens=12, min_new_tokens=12,
                eos_token_id=None, pad_token_id=0,
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            )
        assert got == full[0, len(prompt):].tolist()


# ------------------------------------------------------------------------------- config and errors


@pytest.mark.parametrize("overrides", [
    {}, dict(tie_word_embeddings=True, head_dim=32), dict(attention_bias=True),
    dict(attention_bias=True, attention_out_bias=True, rope_scaling={"rope_type": "linear", "factor": 4.0}),
    dict(rope_scaling={k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}, rope_theta=5e5),
])
def test_config_round_trip(overrides):
    cfg = models.get_preset("tiny", **overrides)
    assert hf.config_from_hf(hf.config_to_hf(cfg)) == cfg


def test_config_legacy_fields_and_eos_list(tmp_path):
    legacy = {
        "architectures": ["LlamaForCausalLM"], **BASE, "rope_theta": 500000.0,
        "rope_scaling": {"type": "linear", "factor": 2.0}, "eos_token_id": [7, 9],
    }
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    cfg = hf.config_from_hf(tmp_path)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert cfg.eos_token_id == 7
    qwen = hf.config_from_hf({"architectures": ["Qwen2ForCausalLM"], **BASE, "sliding_window": 4096,
                              "use_sliding_window": False})
    assert qwen.attention_bias and not qwen.attention_out_bias


@pytest.mark.parametrize("change, field", [
    ({"architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"sliding_window": 64}, "sliding_window"),  # LLaMA has none (Mistral's: test_hf_families.py)
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "yarn"),
])
def test_config_rejects_unsupported(change, field):
    with pytest.raises(hf.HFCheckpointError, match=field):
        hf.config_from_hf({"architectures": ["LlamaForCausalLM"], **BASE, **change})


def _edit_checkpoint(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update({"model.layers.1.mlp.up_proj.weight": np.zeros((128, 63), np.float32)}),
     r"model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has shape \[128, 63\]"),
    (lambda t: t.pop("model.layers.0.self_attn.k_proj.weight"),
     "'model.layers.0.self_attn.k_proj.weight' is missing"),
    (lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": np.ones(16, np.float32)}),
     "model.safetensors: unexpected tensor 'model.layers.0.self_attn.q_norm.weight'"),
])
def test_checkpoint_errors_name_the_tensor(llama, tmp_path, mesh8, edit, message):
    bad = _edit_checkpoint(llama[1], tmp_path / "bad", edit)
    with pytest.raises(hf.HFCheckpointError, match=message):
        hf.import_checkpoint(bad, mesh8)


def test_rotary_buffer_is_ignored_and_tied_head_is_rejected(llama, tmp_path, mesh8):
    ok = _edit_checkpoint(llama[1], tmp_path / "ok", lambda t: t.update(
        {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}))
    hf.import_checkpoint(ok, mesh8)
    with pytest.raises(hf.HFCheckpointError, match="'lm_head.weight'.*tie_word_embeddings"):
        hf.import_checkpoint(ok, mesh8, tie_word_embeddings=True)
    empty = tmp_path / "no_weights"
    empty.mkdir()
    shutil.copy(ok / "config.json", empty / "config.json")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        hf.import_checkpoint(empty, mesh8)
