"""Model configuration and presets for the LLaMA-family decoder.

Field names follow Hugging Face's LlamaConfig where one exists, so conversion is a rename-free
copy and a researcher reading either file recognises the other.

Heads. ``head="lm"`` is the language model (logits over the vocabulary). ``head="score"`` replaces
the unembedding with a bias-free [hidden, num_labels] projection named ``score``, as Hugging Face's
LlamaForSequenceClassification does: a reward model reads its scalar off the final hidden state of
one position. The backbone is the same, so an LM's parameters initialise a score model's backbone.
There is nothing to tie in a score model, so ``tie_word_embeddings`` must be False there (an error,
not a silently ignored flag: a tied LM becomes a score model with ``tie_word_embeddings=False``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

REMAT_POLICIES = ("none", "full", "save_dots")
# Backends in jaxalign.models.attention; "auto" picks one per platform at trace time.
ATTENTION_IMPLS = ("xla", "dot_product", "cudnn", "chunked", "splash", "auto")
ROPE_TYPES = ("default", "linear", "llama3")
HEADS = ("lm", "score")
HIDDEN_ACTS = ("silu", "gelu_tanh")  # SwiGLU (LLaMA, Qwen, Mistral); GeGLU with tanh GELU (Gemma)
LAYER_TYPES = ("full_attention", "sliding_attention")  # HF's names, per layer


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (no GQA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None or {"rope_type": "linear"|"llama3", "factor": ..., and for llama3 "low_freq_factor",
    # "high_freq_factor", "original_max_position_embeddings"} as in HF config.json.
    rope_scaling: Mapping[str, Any] | None = None
    max_position_embeddings: int = 4096
    attention_bias: bool = False  # biases on q, k, v (Qwen2, LLaMA with attention_bias)
    attention_out_bias: bool = False  # bias on the output projection (LLaMA attention_bias)
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    eos_token_ids: tuple[int, ...] | None = None  # every stop id when HF lists several (Llama 3.1)
    pad_token_id: int | None = None
    head: str = "lm"  # "lm": logits over the vocabulary; "score": num_labels scores (reward model)
    num_labels: int = 1  # outputs of the score head (HF's num_labels); must stay 1 for head="lm"
    # Execution options: they change speed and memory, never the function computed.
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of matmuls; norms, softmax and logits stay float32
    scan_layers: bool = True
    # Layers per scan iteration (scan_layers only). num_hidden_layers unrolls the whole stack while
    # keeping the stacked [layers, ...] parameters, so checkpoints do not change: on CPU that is
    # 10-20% faster for small models (no per-iteration stacking of saved activations); on
    # accelerators keep 1, as compile time grows with the unrolled code.
    scan_unroll: int = 1
    remat: str = "none"
    attention_impl: str = "xla"
    # Family features (Qwen3, Mistral sliding window, Gemma 2/3). Every default is off, so a config
    # without these keys (an older model directory) computes exactly what it did before.
    hidden_act: str = "silu"  # the MLP's gate activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    qk_norm: bool = False  # RMSNorm over head_dim of q and k before RoPE (Qwen3, Gemma 3)
    norm_unit_offset: bool = False  # RMSNorms scale by (1 + weight), weights start at 0 (Gemma)
    sandwich_norms: bool = False  # norms after attention and after the MLP as well (Gemma 2/3)
    scale_embeddings: bool = False  # embeddings times sqrt(hidden_size), in the compute dtype (Gemma)
    query_pre_attn_scalar: float | None = None  # scores scaled by this ** -0.5 (None: head_dim)
    attn_logit_softcapping: float | None = None  # scores -> c * tanh(scores / c) (Gemma 2)
    final_logit_softcapping: float | None = None  # logits -> c * tanh(logits / c) (Gemma 2)
    # Sliding-window attention: a query sees the last `sliding_window` keys (itself included).
    # layer_types (HF's per-layer "full_attention" / "sliding_attention") says which layers;
    # None with a sliding_window means every layer (Mistral), None without one means none.
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    # RoPE base of the sliding layers, without rope_scaling (Gemma 3: 10000 locally, rope_theta
    # and rope_scaling on the global layers). None: sliding layers use the global RoPE.
    local_rope_theta: float | None = None

    def __post_init__(self) -> None:
        if self.layer_types is not None and not isinstance(self.layer_types, tuple):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))  # JSON gives a list
        if self.eos_token_ids is not None and not isinstance(self.eos_token_ids, tuple):
            object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        self._check_family()
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r}; choose one of {REMAT_POLICIES}")
        if type(self.scan_unroll) is not int or self.scan_unroll < 1:
            raise ValueError(f"model.scan_unroll={self.scan_unroll!r} must be a positive integer")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"model.attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.kv_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads or set head_dim")
        if self.dims_per_head % 2:
            raise ValueError(f"head_dim={self.dims_per_head} must be even for RoPE")
        self._check_head()
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if rope_type not in ROPE_TYPES:
                raise ValueError(
                    f"rope_scaling type {rope_type!r} is not supported; supported: {ROPE_TYPES}"
                )

    def _check_family(self) -> None:
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"model.hidden_act={self.hidden_act!r}; choose one of {HIDDEN_ACTS}")
        for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
                     "local_rope_theta"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"model.{name}={value!r} must be positive or None")
        if self.sliding_window is not None and (type(self.sliding_window) is not int
                                                or self.sliding_window < 1):
            raise ValueError(f"model.sliding_window={self.sliding_window!r} must be a positive integer")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(f"model.layer_types has {len(self.layer_types)} entries for "
                                 f"num_hidden_layers={self.num_hidden_layers}")
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad:
                raise ValueError(f"model.layer_types has {bad}; each entry is one of {LAYER_TYPES}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("model.layer_types has sliding_attention layers but sliding_window is None")
        if self.local_rope_theta is not None and not any(self.local_layers):
            raise ValueError("model.local_rope_theta is set but no layer uses sliding-window attention")

    @property
    def local_layers(self) -> tuple[bool, ...]:
        """Per layer: does it attend within the sliding window?"""
        if self.sliding_window is None:
            return (False,) * self.num_hidden_layers
        if self.layer_types is None:
            return (True,) * self.num_hidden_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    def _check_head(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"model.head={self.head!r}; choose one of {HEADS}")
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise ValueError(f"model.num_labels={self.num_labels!r} must be a positive integer")
        if self.head == "lm" and self.num_labels != 1:
            raise ValueError(f"model.num_labels={self.num_labels} is only meaningful with head='score'")
        if self.head == "score" and self.tie_word_embeddings:
            raise ValueError("model.head='score' has no output embedding to tie: set "
                             "tie_word_embeddings=False (the input embedding is kept either way)")

    def __hash__(self) -> int:
        # rope_scaling is a dict, so the generated hash would fail; configs key jit caches.
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dims_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def replace(self, **changes: Any) -> ModelConfig:
        return from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["rope_scaling"] is not None:
            d["rope_scaling"] = dict(d["rope_scaling"])
        if d["layer_types"] is not None:  # a JSON list, as a model directory stores it
            d["layer_types"] = list(d["layer_types"])
        return d

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count (analytic; matches the initialised tree).

        `include_embeddings` covers the input table and, for head="lm", the unembedding (its own
        lm_head or the tied table); the small score head is always counted.
        """
        h, i, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        q = self.num_attention_heads * self.dims_per_head
        kv = self.kv_heads * self.dims_per_head
        attn = h * q + 2 * h * kv + q * h
        attn += (q + 2 * kv) * self.attention_bias + h * self.attention_out_bias
        attn += 2 * self.dims_per_head * self.qk_norm
        per_layer = attn + 3 * h * i + (4 if self.sandwich_norms else 2) * h
        total = L * per_layer + h
        if self.head == "score":
            return total + h * self.num_labels + (self.vocab_size * h if include_embeddings else 0)
        if include_embeddings:
            total += self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return total


def from_dict(values: Mapping[str, Any], source: str = "model config") -> ModelConfig:
    """Builds a ModelConfig, rejecting unknown keys by name."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return ModelConfig(**dict(values))


_LLAMA2 = dict(vocab_size=32000, rms_norm_eps=1e-5, max_position_embeddings=4096)
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

_QWEN3 = dict(vocab_size=151936, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
              max_position_embeddings=40960, qk_norm=True, bos_token_id=151643, eos_token_id=151645)
_GEMMA = dict(hidden_act="gelu_tanh", norm_unit_offset=True, sandwich_norms=True, scale_embeddings=True,
              head_dim=256, query_pre_attn_scalar=256.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
              bos_token_id=2, eos_token_id=1, pad_token_id=0)


def _layer_types(num_layers: int, every: int) -> tuple[str, ...]:
    """Sliding layers with a global one every `every` layers (transformers' Gemma default)."""
    return tuple("sliding_attention" if (i + 1) % every else "full_attention" for i in range(num_layers))


def _gemma3(num_layers: int, **shape: Any) -> dict[str, Any]:
    return dict(_GEMMA, qk_norm=True, num_hidden_layers=num_layers, layer_types=_layer_types(num_layers, 6),
                rope_theta=1e6, local_rope_theta=10000.0, **shape)


PRESETS: dict[str, dict[str, Any]] = {
    # Tests: small enough for an 8-device CPU mesh in milliseconds.
    "tiny": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    ),
    # The embedded default and CPU benchmarks (about 3.4M parameters).
    "small": dict(
        vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
    ),
    # Llama-3.2-1B shape: the GPU benchmark model.
    "1b": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
        rope_scaling={**_LLAMA3_ROPE, "factor": 32.0}, max_position_embeddings=131072,
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
    ),
    "7b": dict(
        _LLAMA2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32,
    ),
    "13b": dict(
        _LLAMA2, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
        num_attention_heads=40,
    ),
    "70b": dict(
        _LLAMA2, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8,
    ),
    # Llama-3-8B shape (GQA, 128k vocabulary).
    "llama3-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
        max_position_embeddings=8192, bos_token_id=128000, eos_token_id=128001,
    ),
    # Qwen3 dense shapes (Qwen/Qwen3-*/config.json): q/k norms, head_dim 128 apart from hidden/heads.
    "qwen3-0.6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-1.7b": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, tie_word_embeddings=True),
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32),
    # google/gemma-2-2b: local/global every other layer (4096-token window), soft-capping.
    "gemma2-2b": dict(
        _GEMMA, vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=8192,
        sliding_window=4096, layer_types=_layer_types(26, 2), attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    ),
    # google/gemma-3-1b-pt and the text model of gemma-3-4b-pt: 5 local : 1 global layers, local
    # RoPE base 10000, global 1e6 (linearly scaled by 8 in 4b).
    "gemma3-1b": _gemma3(26, vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32768,
                         sliding_window=512),
    "gemma3-4b": _gemma3(34, vocab_size=262208, hidden_size=2560, intermediate_size=10240,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=131072,
                         sliding_window=1024, rope_scaling={"rope_type": "linear", "factor": 8.0}),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return from_dict({**PRESETS[name], **overrides}, source=f"preset {name!r}")
