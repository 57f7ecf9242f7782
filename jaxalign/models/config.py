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

    def __post_init__(self) -> None:
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
        per_layer = attn + 3 * h * i + 2 * h
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
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return from_dict({**PRESETS[name], **overrides}, source=f"preset {name!r}")
