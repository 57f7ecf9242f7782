"""Model families beyond LLaMA: Qwen3, Mistral with a sliding window, Gemma 2 and Gemma 3 (text).

Each case starts from transformers' own randomly initialised tiny model (weights then scaled up, as
in test_hf.py, so a layout, norm or RoPE mistake moves the logits far past the tolerance), saved
with save_pretrained. jaxalign imports it and must give the same logits (within 1e-4 of the largest
logit), export it back to a directory transformers loads with the same logits, and generate greedily
token for token what transformers' generate does. Sequences run past the sliding window, so the
window is tested in scoring, in the prefill and in the KV cache while decoding. Qwen3 and Gemma 2 run
with scan_layers (Qwen3 with remat too), their local and global layers in one scanned block; Gemma 3
and Mistral unrolled.
"""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxalign import hf, models, sample
from jaxalign import mesh as mesh_lib
from jaxalign.models import Transformer
from jaxalign.models import attention as attn

BASE = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
WINDOW = 8
LENGTH = 40  # five windows
# name: (config class, model class, HF config overrides, jaxalign execution options)
CASES = {
    # Qwen3 (head_dim 24, not hidden / heads = 16), its full layer 0 and sliding layers from
    # max_window_layers=1 on, scanned with remat: both kinds of layer in one scanned block.
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(head_dim=24, num_hidden_layers=3, use_sliding_window=True, sliding_window=WINDOW,
                   max_window_layers=1), dict(scan_layers=True, remat="full")),
    "mistral_sliding": (transformers.MistralConfig, transformers.MistralForCausalLM,
                        dict(sliding_window=WINDOW, head_dim=16), dict(scan_layers=False)),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               dict(head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24,
                    attn_logit_softcapping=20.0, final_logit_softcapping=15.0), dict(scan_layers=True)),
    # Three layers with both kinds (local, local, global): Gemma 3's 5:1 pattern in small, with a
    # local RoPE base apart from the global one, which is linearly scaled.
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
               dict(head_dim=16, num_hidden_layers=3, sliding_window=WINDOW, query_pre_attn_scalar=16,
                    layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                        "rope_theta": 1_000_000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
               dict(scan_layers=False)),
}
ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "mistral_sliding": "MistralForCausalLM",
                 "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


def _hf_model(case: str, **changes):
    config_cls, model_cls, overrides, _ = CASES[case]
    config = config_cls(**{**BASE, **overrides, **changes})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = model_cls(config).float().eval()
    gemma = case.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # Gemma scales by (1 + weight)
                p.copy_((0.0 if gemma else 1.0) + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    return model


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


@functools.cache
def _forward(cfg):
    return jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))


def _jax_logits(cfg, params, mesh, tokens: np.ndarray) -> np.ndarray:
    with mesh_lib.use(mesh):
        return np.asarray(_forward(cfg)(params, jnp.asarray(tokens, jnp.int32)))


def _tokens(vocab: int, batch: int = 2, length: int = LENGTH, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, (batch, length)).astype(np.int32)


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> float:
    scale = np.abs(theirs).max()
    assert scale > 1.0, "weights too small for a sensitive test"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * scale)
    return float(np.abs(ours - theirs).max() / scale)


@pytest.fixture(scope="module")
def mesh(devices):
    return mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")


@pytest.mark.parametrize("case", list(CASES))
def test_family_import_export_generate(case, tmp_path, mesh):
    model = _hf_model(case)
    model.save_pretrained(tmp_path / "hf")
    options = CASES[case][3]
    cfg, params = hf.import_checkpoint(tmp_path / "hf", mesh, **options)
    tokens = _tokens(cfg.vocab_size)
    theirs = _hf_logits(model, tokens)
    ours = _jax_logits(cfg, params, mesh, tokens)
    _assert_close(ours, theirs)
    if any(cfg.local_layers):  # the window matters: with one covering the sequence the logits differ
        wide = _hf_model(case, sliding_window=LENGTH)
        wide.load_state_dict(model.state_dict())
        assert np.abs(_hf_logits(wide, tokens) - theirs).max() > 1e-2 * np.abs(theirs).max()

    # Export: transformers reads the same architecture and computes the same logits; import gives
    # back the same config and logits.
    out = hf.export_checkpoint(params, cfg, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["architectures"] == [ARCHITECTURES[case]]
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    _assert_close(_hf_logits(back, tokens), theirs)
    cfg2, params2 = hf.import_checkpoint(out, mesh, **options)
    assert cfg2 == cfg
    np.testing.assert_array_equal(_jax_logits(cfg2, params2, mesh, tokens), ours)

    # Greedy generation past the window, token for token (prompts of different lengths share a batch).
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, cfg.vocab_size, n).tolist() for n in (5, 11)]
    new = 14
    got = sample.generate(params, cfg, prompts, mesh=mesh, max_new_tokens=new, temperature=0.0, eos_id=None)
    for prompt, row in zip(prompts, got, strict=True):
        with torch.no_grad():
            full = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=new,
                                  min_new_tokens=new, eos_token_id=None, pad_token_id=0,
                                  attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        assert row == full[0, len(prompt):].tolist()


def test_gemma3_multimodal_checkpoint_imports_its_text_model(tmp_path, mesh):
    """Gemma 3 4b and up are Gemma3ForConditionalGeneration: the text model is read, the vision tower
    is not, and the logits of a text-only input are transformers'."""
    text = {**BASE, **CASES["gemma3"][2]}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name:
                p.copy_((0.2 if name.endswith("norm.weight") else 0.3) * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    cfg, params = hf.import_checkpoint(tmp_path, mesh, scan_layers=False)
    assert cfg.num_hidden_layers == 3 and cfg.local_rope_theta == 10_000.0
    tokens = _tokens(cfg.vocab_size)
    _assert_close(_jax_logits(cfg, params, mesh, tokens), _hf_logits(model, tokens))


def _gemma3_like() -> dict:
    return dict(num_hidden_layers=3, head_dim=16, hidden_act="gelu_tanh", qk_norm=True, norm_unit_offset=True,
                sandwich_norms=True, scale_embeddings=True, query_pre_attn_scalar=16.0,
                sliding_window=WINDOW,
                layer_types=("sliding_attention", "full_attention", "sliding_attention"),
                local_rope_theta=10_000.0, rope_theta=1e6, tie_word_embeddings=True,
                attn_logit_softcapping=20.0, final_logit_softcapping=15.0)


def test_chunked_matches_xla_with_scale_and_softcap():
    """The flash backend's scale and soft-capping, values and gradients, against the reference."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 20, 4, 8)) * 2, jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 20, 2, 8)) * 2, jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 20, 2, 8)), jnp.float32)
    idx = jnp.arange(20)
    mask = ((idx[None, :] <= idx[:, None]) & (idx[None, :] > idx[:, None] - 6))[None, None]
    mask = jnp.broadcast_to(mask, (2, 1, 20, 20))

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v) * jnp.arange(8.0)).sum()

    xla = lambda q, k, v: attn.xla_attention(q, k, v, mask, scale=0.2, softcap=5.0)  # noqa: E731
    chunked = lambda q, k, v: attn.chunked_attention(q, k, v, mask, chunk_size=8, scale=0.2,  # noqa: E731
                                                     softcap=5.0)
    np.testing.assert_allclose(jax.jit(chunked)(q, k, v), xla(q, k, v), atol=1e-5)
    grads = [jax.jit(jax.grad(loss(fn), (0, 1, 2)))(q, k, v) for fn in (chunked, xla)]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_old_config_keys_load_and_compute_as_before(mesh):
    """A model directory's config without the new keys loads with every family feature off."""
    old = {k: v for k, v in models.get_preset("tiny").to_dict().items()
           if k not in ("hidden_act", "qk_norm", "norm_unit_offset", "sandwich_norms", "scale_embeddings",
                        "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
                        "sliding_window", "layer_types", "local_rope_theta")}
    cfg = models.from_dict(old)
    assert cfg == models.get_preset("tiny") and not any(cfg.local_layers)
    leaves = jax.tree_util.tree_leaves_with_path(models.param_shapes(cfg))
    names = {jax.tree_util.keystr(p) for p, _ in leaves}
    assert not [n for n in names if "q_norm" in n or "feedforward" in n]


def test_new_parameters_are_counted_and_named():
    """num_params counts q/k norms and Gemma's extra norms; every parameter has logical axis names."""
    cfg = models.get_preset("tiny", **_gemma3_like())
    shapes = jax.tree.leaves(models.param_shapes(cfg))
    assert cfg.num_params() == sum(int(np.prod(s.shape)) for s in shapes)
    boxed = jax.tree.leaves(models.abstract_params(cfg), is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert len(boxed) == len(shapes)
    assert all(isinstance(b, nn.Partitioned) and len(b.names) == b.value.ndim for b in boxed)


@pytest.mark.parametrize("change, field", [
    ({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
      "use_bidirectional_attention": True},
     "use_bidirectional_attention"),
    ({"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_activation": "relu"},
     "hidden_activation"),
    ({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "sliding_window": 8,
      "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                          "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}},
     "sliding_attention"),
    ({"architectures": ["Qwen3ForCausalLM"], "layer_types": ["full_attention", "chunked_attention"]},
     "layer_types"),
    ({"architectures": ["MistralForCausalLM"], "sliding_window": 0}, "sliding_window"),
])
def test_unsupported_family_features_are_named(change, field):
    with pytest.raises(hf.HFCheckpointError, match=field):
        hf.config_from_hf({**BASE, **change})


@pytest.mark.parametrize("preset, params_b", [
    ("qwen3-0.6b", 0.596), ("qwen3-1.7b", 1.72), ("qwen3-4b", 4.02), ("qwen3-8b", 8.19),
    ("gemma2-2b", 2.61), ("gemma3-1b", 1.0), ("gemma3-4b", 3.88),
])
def test_family_presets(preset, params_b):
    cfg = models.get_preset(preset)
    assert abs(cfg.num_params() / 1e9 - params_b) / params_b < 0.02, cfg.num_params()
    hf.config_to_hf(cfg)  # each preset has an HF architecture
