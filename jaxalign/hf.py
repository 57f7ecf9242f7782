"""Hugging Face interop for LLaMA-family checkpoints: config.json + safetensors, in and out.

Families: LLaMA 1-3, Mistral (sliding window too), Qwen2 and Qwen3 (with use_sliding_window /
max_window_layers / layer_types), Gemma 2 and Gemma 3 text (Gemma3ForCausalLM, and the text model of
Gemma3ForConditionalGeneration checkpoints). Export picks the
architecture from the features of the ModelConfig (`_family`): Gemma norms and q/k norms give
Gemma 3, Gemma norms alone Gemma 2, q/k norms alone Qwen3, q/k/v biases Qwen2, a sliding window on
every layer Mistral, otherwise LLaMA.

Import builds every parameter directly in its shards: each device's callback reads only its own
slice from the memory-mapped safetensors files (one layer at a time for scanned layers), so a
70B checkpoint is never whole in one host's memory. Export gathers one tensor at a time to the host
and writes safetensors shards of at most `max_shard_bytes`, into a temporary directory that takes
the output's place at the end (`modeldir.staged_directory`), so a crash never leaves half a
checkpoint.

Directories may be local or URLs (``gs://``; `jaxalign.paths`). safetensors memory-maps local files
only, so import from a bucket first downloads each file to a temporary local directory (every host
its own copy: local disk for the whole checkpoint, not memory); export serializes each shard in
memory and uploads it whole.

`tensor_table` is the one place that names HF tensors and says how their layout maps to ours.

Score models (``head="score"``, reward models) are ``*ForSequenceClassification`` checkpoints: the
same backbone tensors, and ``score.weight`` [num_labels, hidden] in place of ``lm_head.weight``.
Hugging Face pools the score of the rightmost token that is not ``pad_token_id``; jaxalign's reward
models read the score at the last *response* token (whose target is the EOS; jaxalign.objectives.reward).
So in transformers feed prompt + response without the EOS, or set ``pad_token_id`` to the EOS id
(then a trailing EOS and right padding are both skipped), to get the reward jaxalign computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open

from jaxalign import models, paths
from jaxalign.modeldir import staged_directory
from jaxalign.models.config import ModelConfig

SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
CONFIG_FILE = "config.json"  # written last: an HF directory without it is not (yet) one
# HF architecture -> (family, head).
_ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", "lm"),
    "MistralForCausalLM": ("mistral", "lm"),
    "Qwen2ForCausalLM": ("qwen2", "lm"),
    "Qwen3ForCausalLM": ("qwen3", "lm"),
    "Gemma2ForCausalLM": ("gemma2", "lm"),
    "Gemma3ForCausalLM": ("gemma3_text", "lm"),
    # Gemma 3's multimodal checkpoints (4b and up): the text model only (see _MULTIMODAL).
    "Gemma3ForConditionalGeneration": ("gemma3_text", "lm"),
    "LlamaForSequenceClassification": ("llama", "score"),
    "MistralForSequenceClassification": ("mistral", "score"),
    "Qwen2ForSequenceClassification": ("qwen2", "score"),
    "Qwen3ForSequenceClassification": ("qwen3", "score"),
}
_CLASS_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3",
                "gemma2": "Gemma2", "gemma3_text": "Gemma3"}
_GEMMA = ("gemma2", "gemma3_text")
# Multimodal architectures read as their text model: config.json's text_config, the language
# model's tensors under a prefix, and the other towers' tensors left unread. Export writes the
# text model (Gemma3ForCausalLM).
_MULTIMODAL = {
    "Gemma3ForConditionalGeneration": ("language_model.", ("vision_tower.", "multi_modal_projector.")),
}


def _text_config(d: Mapping[str, Any]) -> tuple[dict[str, Any], str, tuple[str, ...]]:
    """(config, tensor name prefix, ignored tensor prefixes): a multimodal config's text model."""
    archs = d.get("architectures") or []
    if len(archs) != 1 or archs[0] not in _MULTIMODAL:
        return dict(d), "", ()
    prefix, ignored = _MULTIMODAL[archs[0]]
    text = dict(d.get("text_config") or {})
    # The top level holds tie_word_embeddings (and, in older files, the token ids) for the whole model.
    for key in ("tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        if key not in text and key in d:
            text[key] = d[key]
    return {**text, "architectures": archs}, prefix, ignored
_IGNORED_SUFFIX = "rotary_emb.inv_freq"  # a buffer old transformers saved; recomputed from config


class HFCheckpointError(ValueError):
    """A Hugging Face config or checkpoint that jaxalign cannot read faithfully."""


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One HF tensor. Our axes, grouped, give the HF axes: a group of two is a flattened
    (heads, head_dim). Our axis j is axis perm[j] of the HF tensor with its groups split."""

    name: str  # "{i}" stands for the layer index
    groups: tuple[tuple[int, ...], ...]
    perm: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(math.prod(g) for g in self.groups)

    @property
    def our_shape(self) -> tuple[int, ...]:
        split = [n for g in self.groups for n in g]
        return tuple(split[p] for p in self.perm)


def tensor_table(cfg: ModelConfig) -> dict[tuple[str, ...], _Tensor]:
    """Our parameter path ("layers", ... for entries of every layer) -> HF tensor and layout."""
    h, m, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = (cfg.num_attention_heads, cfg.dims_per_head), (cfg.kv_heads, cfg.dims_per_head)
    vec = lambda name, n: _Tensor(name, ((n,),), (0,))  # noqa: E731
    linear = lambda name, n_in, n_out: _Tensor(name, ((n_out,), (n_in,)), (1, 0))  # noqa: E731
    L, A = "model.layers.{i}.", "model.layers.{i}.self_attn."  # noqa: N806
    table: dict[tuple[str, ...], _Tensor] = {
        ("embed_tokens", "embedding"): _Tensor("model.embed_tokens.weight", ((v,), (h,)), (0, 1)),
        ("norm", "scale"): vec("model.norm.weight", h),
        ("layers", "input_layernorm", "scale"): vec(L + "input_layernorm.weight", h),
        ("layers", "post_attention_layernorm", "scale"): vec(L + "post_attention_layernorm.weight", h),
        # Linear weights are [out, in]; q/k/v's out is (heads, head_dim) flat, o's in likewise.
        ("layers", "self_attn", "q_proj", "kernel"): _Tensor(A + "q_proj.weight", (q, (h,)), (2, 0, 1)),
        ("layers", "self_attn", "k_proj", "kernel"): _Tensor(A + "k_proj.weight", (kv, (h,)), (2, 0, 1)),
        ("layers", "self_attn", "v_proj", "kernel"): _Tensor(A + "v_proj.weight", (kv, (h,)), (2, 0, 1)),
        ("layers", "self_attn", "o_proj", "kernel"): _Tensor(A + "o_proj.weight", ((h,), q), (1, 2, 0)),
        ("layers", "mlp", "gate_proj", "kernel"): linear(L + "mlp.gate_proj.weight", h, m),
        ("layers", "mlp", "up_proj", "kernel"): linear(L + "mlp.up_proj.weight", h, m),
        ("layers", "mlp", "down_proj", "kernel"): linear(L + "mlp.down_proj.weight", m, h),
    }
    if cfg.attention_bias:
        for proj, shape in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            table["layers", "self_attn", proj, "bias"] = _Tensor(A + f"{proj}.bias", (shape,), (0, 1))
    if cfg.attention_out_bias:
        table["layers", "self_attn", "o_proj", "bias"] = vec(A + "o_proj.bias", h)
    if cfg.qk_norm:
        for norm in ("q_norm", "k_norm"):
            table["layers", "self_attn", norm, "scale"] = vec(A + f"{norm}.weight", cfg.dims_per_head)
    if cfg.sandwich_norms:  # Gemma: post_attention_layernorm follows attention; these surround the MLP
        for norm in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
            table["layers", norm, "scale"] = vec(L + f"{norm}.weight", h)
    if cfg.head == "score":
        table["score", "kernel"] = linear("score.weight", h, cfg.num_labels)
    elif not cfg.tie_word_embeddings:
        table["lm_head", "kernel"] = linear("lm_head.weight", h, v)
    return table


# ---------------------------------------------------------------------------------- config


def config_from_hf(source: Mapping[str, Any] | str | os.PathLike) -> ModelConfig:
    """A ModelConfig from an HF config.json (a dict, the file, or its directory).

    A ``*ForSequenceClassification`` architecture gives ``head="score"`` with HF's num_labels (the
    size of id2label; 2, HF's default, when the file has neither). A file without architectures
    is read as the causal LM of its model_type.
    """
    d, where = _read_config(source)
    d = _text_config(d)[0]
    causal = [a for a, kind in _ARCHITECTURES.items() if kind == (d.get("model_type"), "lm")]
    archs = d.get("architectures") or causal
    if len(archs) != 1 or archs[0] not in _ARCHITECTURES:
        raise HFCheckpointError(
            f"{where}: architectures={archs} is not supported; supported: {list(_ARCHITECTURES)}")
    family, head = _ARCHITECTURES[archs[0]]

    _check_supported(d, where, family)
    max_pos = d.get("max_position_embeddings", 4096)
    gemma = family in _GEMMA
    local_types = _local_layers(d, family)
    window = d.get("sliding_window") if any(local_types) else None
    local_theta = None
    if family == "gemma3_text":
        rope, scaling, local_theta = _gemma3_rope(d, where, max_pos)
    else:
        rope, scaling = _rope(d, where, max_pos)

    heads, hidden = d["num_attention_heads"], d["hidden_size"]
    head_dim = d.get("head_dim")
    eos = d.get("eos_token_id")
    eos_list = list(eos) if isinstance(eos, list) else None
    values = dict(
        vocab_size=d["vocab_size"], hidden_size=hidden, intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=d.get("num_key_value_heads") or heads,
        head_dim=None if head_dim in (None, hidden // heads) else head_dim,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
        rope_scaling=scaling, max_position_embeddings=max_pos,
        # LLaMA, Qwen3 and Gemma's attention_bias puts biases on q, k, v and o; Qwen2 has them on
        # q, k, v only.
        attention_bias=family == "qwen2" or bool(d.get("attention_bias", False)),
        attention_out_bias=family != "qwen2" and bool(d.get("attention_bias", False)),
        # A classifier has no output embedding: HF ties nothing whatever the flag says. Gemma ties
        # by default.
        tie_word_embeddings=head == "lm" and bool(d.get("tie_word_embeddings", gemma)),
        initializer_range=d.get("initializer_range", 0.02),
        bos_token_id=d.get("bos_token_id"), eos_token_id=eos_list[0] if eos_list else eos,
        pad_token_id=d.get("pad_token_id"),
    )
    if eos_list:  # all stop ids, kept for generation_config.json
        values["eos_token_ids"] = tuple(eos_list)
    if any(local_types):
        values["sliding_window"] = int(window)
        if not all(local_types):
            values["layer_types"] = tuple("sliding_attention" if t else "full_attention" for t in local_types)
    values["local_rope_theta"] = local_theta
    if family in ("qwen3", "gemma3_text"):
        values["qk_norm"] = True
    if gemma:
        values.update(
            hidden_act="gelu_tanh", norm_unit_offset=True, sandwich_norms=True, scale_embeddings=True,
            query_pre_attn_scalar=float(d.get("query_pre_attn_scalar", 256)),
            attn_logit_softcapping=_float_or_none(
                d.get("attn_logit_softcapping", 50.0 if family == "gemma2" else None)),
            final_logit_softcapping=_float_or_none(
                d.get("final_logit_softcapping", 30.0 if family == "gemma2" else None)),
        )
    if head == "score":
        values.update(head="score", num_labels=_num_labels(d, where))
    return models.from_dict(values, source=where)


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def _local_layers(d: Mapping[str, Any], family: str) -> list[bool]:
    """Per layer: sliding-window attention? As transformers decides it for each family."""
    n = d["num_hidden_layers"]
    if family == "mistral":
        return [d.get("sliding_window") is not None] * n
    if family in ("qwen2", "qwen3") and not (d.get("use_sliding_window") and d.get("sliding_window")):
        return [False] * n  # transformers sets sliding_window to None then: every layer is full
    if d.get("layer_types"):
        return [t == "sliding_attention" for t in d["layer_types"]]
    if family in ("qwen2", "qwen3"):
        return [i >= d.get("max_window_layers", 28) for i in range(n)]
    if family == "gemma2":
        return [bool((i + 1) % 2) for i in range(n)]
    if family == "gemma3_text":
        pattern = d.get("sliding_window_pattern", 6)
        return [bool((i + 1) % pattern) for i in range(n)]
    return [False] * n


def _check_supported(d: Mapping[str, Any], where: str, family: str) -> None:
    """One clear error for a feature of the HF config that jaxalign's decoder does not have."""
    def reject(field: str, why: str) -> None:
        raise HFCheckpointError(f"{where}: {field}={d.get(field)!r} is not supported ({why})")

    if family in _GEMMA:
        act_field = "hidden_activation" if "hidden_activation" in d else "hidden_act"
        if d.get(act_field, "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
            reject(act_field, "jaxalign's Gemma MLP is GeGLU with the tanh GELU")
        if d.get("use_bidirectional_attention"):
            reject("use_bidirectional_attention", "jaxalign's decoder is causal")
    elif d.get("hidden_act", "silu") not in ("silu", "swish"):
        reject("hidden_act", "jaxalign's MLP is SwiGLU")
    if d.get("mlp_bias"):
        reject("mlp_bias", "jaxalign's MLP has no biases")
    if family == "llama" and d.get("sliding_window") is not None:
        reject("sliding_window", "LLaMA has no sliding-window attention")
    if family != "mistral":  # transformers' Mistral ignores layer_types (with a warning)
        for t in d.get("layer_types") or []:
            if t not in ("full_attention", "sliding_attention"):
                reject("layer_types", f"layer type {t!r}; supported: full_attention, sliding_attention")
        if d.get("layer_types") and len(d["layer_types"]) != d.get("num_hidden_layers"):
            reject("layer_types", "one entry per layer is needed")
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads"):
        if field not in d:
            raise HFCheckpointError(f"{where}: required field {field!r} is missing")
    if any(_local_layers(d, family)):
        window = d.get("sliding_window")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            reject("sliding_window", "sliding layers need a positive integer window")


def _rope(d: Mapping[str, Any], where: str, max_pos: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The config's rope parameters and jaxalign's rope_scaling for them (None: plain RoPE)."""
    # transformers 5 keeps rope_theta inside rope_parameters; older files have rope_scaling.
    rope_field = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
    rope = dict(d.get(rope_field) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFCheckpointError(f"{where}: {rope_field}.partial_rotary_factor must be 1.0")
    if rope_type == "default":
        scaling = None
    elif rope_type == "linear":
        scaling = {"rope_type": "linear", "factor": float(rope["factor"])}
    elif rope_type == "llama3":
        scaling = {"rope_type": "llama3", "factor": float(rope["factor"]),
                   "low_freq_factor": float(rope["low_freq_factor"]),
                   "high_freq_factor": float(rope["high_freq_factor"]),
                   "original_max_position_embeddings":
                       int(rope.get("original_max_position_embeddings", max_pos))}
    else:
        raise HFCheckpointError(f"{where}: {rope_field} rope type {rope_type!r} is not supported; "
                                "supported: default, linear, llama3")
    return rope, scaling


def _gemma3_rope(d: Mapping[str, Any], where: str, max_pos: int
                 ) -> tuple[dict[str, Any], dict[str, Any] | None, float | None]:
    """Gemma 3's two RoPEs: the global one (rope_theta + scaling) and the sliding layers' plain one.
    transformers 5 writes rope_parameters per layer type; older files have rope_theta,
    rope_scaling and rope_local_base_freq."""
    params = d.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        full = dict(params.get("full_attention") or {"rope_type": "default"})
        full.setdefault("rope_theta", 1_000_000.0)
        local = dict(params.get("sliding_attention") or {"rope_type": "default"})
        local.setdefault("rope_theta", 10_000.0)
    else:
        full = {**(d.get("rope_scaling") or {}), "rope_theta": d.get("rope_theta", 1_000_000.0)}
        local = {"rope_type": "default", "rope_theta": d.get("rope_local_base_freq", 10_000.0)}
    local_type = local.get("rope_type", local.get("type", "default"))
    if local_type != "default":
        raise HFCheckpointError(f"{where}: rope_parameters.sliding_attention rope type {local_type!r} "
                                "is not supported; the sliding layers' RoPE must be 'default'")
    _, scaling = _rope({"rope_parameters": full}, where, max_pos)
    local_theta = float(local["rope_theta"])
    if scaling is None and local_theta == float(full["rope_theta"]):
        local_theta = None  # one RoPE for every layer
    if not any(_local_layers(d, "gemma3_text")):
        local_theta = None
    return full, scaling, local_theta


def _num_labels(d: Mapping[str, Any], where: str) -> int:
    """HF's num_labels: len(id2label) (what save_pretrained writes), else "num_labels", else 2."""
    n = len(d["id2label"]) if d.get("id2label") else d.get("num_labels", 2)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise HFCheckpointError(f"{where}: num_labels={n!r} must be a positive integer")
    return n


def _family(cfg: ModelConfig) -> str:
    """The HF family whose architecture computes what `cfg` computes (an error when none does)."""
    def no(why: str) -> HFCheckpointError:
        return HFCheckpointError(f"no Hugging Face architecture has {why}")

    if cfg.attention_out_bias and not cfg.attention_bias:
        raise no("an o_proj bias without q/k/v biases")
    gemma = (cfg.hidden_act == "gelu_tanh", cfg.norm_unit_offset, cfg.sandwich_norms, cfg.scale_embeddings,
             cfg.query_pre_attn_scalar is not None)
    if any(gemma):
        if not all(gemma):
            raise no("only some of Gemma's features (hidden_act='gelu_tanh', norm_unit_offset, "
                     "sandwich_norms, scale_embeddings, query_pre_attn_scalar): set all or none")
        if cfg.attention_bias != cfg.attention_out_bias:
            raise no("Gemma with q/k/v biases but no o_proj bias")
        family = "gemma3_text" if cfg.qk_norm else "gemma2"
        if family == "gemma2" and cfg.local_rope_theta is not None:
            raise no("Gemma 2 with local_rope_theta (a second RoPE is Gemma 3's)")
        return family
    if cfg.attn_logit_softcapping is not None or cfg.final_logit_softcapping is not None:
        raise no("soft-capping outside Gemma")
    if cfg.local_rope_theta is not None:
        raise no("local_rope_theta outside Gemma 3")
    if cfg.qk_norm:
        if cfg.attention_bias != cfg.attention_out_bias:
            raise no("Qwen3 (q/k norms) with q/k/v biases but no o_proj bias")
        return "qwen3"
    if cfg.attention_bias and not cfg.attention_out_bias:
        return "qwen2"
    if any(cfg.local_layers):
        if cfg.attention_bias or not all(cfg.local_layers):
            raise no("sliding-window layers here: Mistral slides on every layer and has no biases; "
                     "Qwen2 (q/k/v biases) and Qwen3 (qk_norm) may mix layer types")
        return "mistral"
    return "llama"


def _int_if_whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json we export: the architecture of `_family` (``*ForSequenceClassification``
    with id2label/label2id for head="score")."""
    family = _family(cfg)
    if cfg.head == "score" and family not in ("llama", "mistral", "qwen2", "qwen3"):
        raise HFCheckpointError(f"a score model (head='score') of family {family!r} is not exported")
    scaling = dict(cfg.rope_scaling or {})
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
    eos = list(cfg.eos_token_ids or []) or cfg.eos_token_id
    suffix = "ForSequenceClassification" if cfg.head == "score" else "ForCausalLM"
    out = {
        "architectures": [_CLASS_NAMES[family] + suffix],
        "model_type": family,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.dims_per_head, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        # transformers 5 reads rope_parameters; rope_theta + rope_scaling serve older versions.
        "rope_parameters": {"rope_type": rope_type, "rope_theta": cfg.rope_theta, **scaling},
        "rope_theta": cfg.rope_theta,
        "rope_scaling": {"rope_type": rope_type, **scaling} if scaling else None,
        "tie_word_embeddings": cfg.tie_word_embeddings, "initializer_range": cfg.initializer_range,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": eos, "pad_token_id": cfg.pad_token_id,
        "attention_dropout": 0.0, "use_cache": True,
    }
    layer_types = ["sliding_attention" if local else "full_attention" for local in cfg.local_layers]
    if family in ("qwen2", "qwen3"):
        sliding = any(cfg.local_layers)
        out.update(use_sliding_window=sliding, sliding_window=cfg.sliding_window if sliding else None,
                   max_window_layers=cfg.local_layers.index(True) if sliding else cfg.num_hidden_layers,
                   layer_types=layer_types)
        # max_window_layers is what older transformers read; layer_types is exact either way.
    if family != "qwen2":
        out.update(attention_bias=cfg.attention_bias, mlp_bias=False)
    if family == "mistral":
        out["sliding_window"] = cfg.sliding_window
    if family in _GEMMA:
        del out["hidden_act"]
        out.update(
            hidden_activation="gelu_pytorch_tanh",
            # an int where it is one: transformers 5's config class checks the type
            query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar),
            # transformers builds a sliding mask even when no layer uses it: it needs some window.
            sliding_window=cfg.sliding_window or cfg.max_position_embeddings, layer_types=layer_types,
            attn_logit_softcapping=cfg.attn_logit_softcapping,
            final_logit_softcapping=cfg.final_logit_softcapping,
        )
    if family == "gemma3_text":
        full = {"rope_type": rope_type, "rope_theta": cfg.rope_theta, **scaling}
        local = full if cfg.local_rope_theta is None else {"rope_type": "default",
                                                           "rope_theta": cfg.local_rope_theta}
        out["rope_parameters"] = {"full_attention": full, "sliding_attention": local}
        out["rope_local_base_freq"] = local["rope_theta"]
    if cfg.head == "score":  # HF derives num_labels from id2label, which save_pretrained writes
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return out


def _read_config(source: Mapping[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str]:
    if isinstance(source, Mapping):
        return dict(source), "HF config"
    path = paths.path(source)
    path = path / CONFIG_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no Hugging Face config.json")
    return json.loads(path.read_text()), str(path)


# ---------------------------------------------------------------------------------- import


def _read_slice(handle: Any, name: str, index: tuple[slice, ...]) -> np.ndarray:
    """The one place that reads tensor data: only `index` of tensor `name` (tests wrap it)."""
    return handle.get_slice(name)[index]


def _read_block(handle: Any, t: _Tensor, layer: int, index: tuple[slice, ...]) -> np.ndarray:
    """Our-layout block `index` of tensor t, reading the HF rows it needs and no more."""
    u = [slice(None)] * len(t.perm)  # our index, expressed over the split HF axes
    for ours, s in zip(t.perm, index, strict=True):
        u[ours] = s
    hf_index, block_shape, inner, k = [], [], [], 0
    for group in t.groups:
        # Outer axis of a group slices the flattened HF axis; inner axes are read whole, then cut.
        stride = math.prod(group[1:])
        hf_index.append(slice(u[k].start * stride, u[k].stop * stride))
        block_shape += [u[k].stop - u[k].start, *group[1:]]
        inner += [slice(None), *u[k + 1:k + len(group)]]
        k += len(group)
    block = _read_slice(handle, t.name.format(i=layer), tuple(hf_index))
    return np.asarray(block).reshape(block_shape)[tuple(inner)].transpose(t.perm)


def import_checkpoint(
    path: str | os.PathLike, mesh: Mesh, **config_overrides: Any
) -> tuple[ModelConfig, Any]:
    """Reads an HF directory (config.json + safetensors) straight into sharded parameters."""
    path = paths.path(path)
    cfg = config_from_hf(path)
    cfg = cfg.replace(**config_overrides) if config_overrides else cfg
    _, prefix, ignored = _text_config(_read_config(path)[0])
    table = {key: dataclasses.replace(t, name=prefix + t.name) for key, t in tensor_table(cfg).items()}
    shardings = models.param_shardings(cfg, mesh)
    dtype = jnp.dtype(cfg.param_dtype)
    with contextlib.ExitStack() as stack:
        where, handles = _open_tensors(path, stack)
        expected = {t.name.format(i=i): t for key, t in table.items()
                    for i in (range(cfg.num_hidden_layers) if key[0] == "layers" else [0])}
        _check_tensors(path, expected, {n: f for n, f in where.items() if not n.startswith(ignored)},
                       handles)

        def build(key_path: tuple[Any, ...], sharding: Any) -> jax.Array:
            keys = tuple(k.key for k in key_path)
            stacked = keys[0] == "layers"  # scanned: a leading [num_layers] axis
            layer = int(keys[0][len("layers_"):]) if keys[0].startswith("layers_") else 0
            t = table[("layers", *keys[1:])] if keys[0].startswith("layers") else table[keys]
            shape = (cfg.num_hidden_layers, *t.our_shape) if stacked else t.our_shape

            def read(i: int, index: tuple[slice, ...]) -> np.ndarray:
                return _read_block(handles[where[t.name.format(i=i)]], t, i, index)

            def callback(index: tuple[slice, ...]) -> np.ndarray:
                index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape, strict=True))
                if stacked:  # layer by layer, so only this device's slice of each layer is read
                    layers = range(index[0].start, index[0].stop)
                    return np.stack([read(i, index[1:]) for i in layers]).astype(dtype)
                return read(layer, index).astype(dtype)

            return jax.make_array_from_callback(shape, sharding, callback)

        params = jax.tree_util.tree_map_with_path(build, shardings)
    return cfg, params


def _open_tensors(path: epath.Path, stack: contextlib.ExitStack) -> tuple[dict[str, str], dict[str, Any]]:
    """Tensor name -> the file holding it, from the files' own headers (and the index, if any), and
    an open handle of each file, closed with `stack` (a bucket's file is read from a local copy)."""
    index = json.loads((path / INDEX_FILE).read_text())["weight_map"] if (path / INDEX_FILE).is_file() else {}
    files = sorted(set(index.values())) if index else [SINGLE_FILE]
    where, handles = {}, {}
    for f in files:
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path}: no {f} (only safetensors checkpoints are read)")
        local = stack.enter_context(paths.local_copy(path / f))
        try:
            handles[f] = stack.enter_context(safe_open(local, framework="numpy"))
        except SafetensorError as e:  # truncated or not safetensors at all
            raise HFCheckpointError(f"{path / f}: not a readable safetensors file ({e})") from None
        where.update((name, f) for name in handles[f].keys())  # noqa: SIM118 (not a dict)
    for name, f in index.items():
        if where.get(name) != f:
            raise HFCheckpointError(f"{path / INDEX_FILE} maps tensor {name!r} to {f}, which lacks it")
    return where, handles


def _check_tensors(path: epath.Path, expected: dict[str, _Tensor], where: dict[str, str],
                   handles: dict) -> None:
    for name, t in expected.items():
        if name not in where:
            raise HFCheckpointError(f"{path}: tensor {name!r} is missing from the checkpoint")
        shape = tuple(handles[where[name]].get_slice(name).get_shape())
        if shape != t.shape:
            raise HFCheckpointError(
                f"{path / where[name]}: tensor {name!r} has shape {list(shape)}, but config.json "
                f"implies {list(t.shape)}"
            )
    for name, f in where.items():
        if name not in expected and not name.endswith(_IGNORED_SUFFIX):
            hint = ""
            if name == "lm_head.weight" and "score.weight" in expected:
                hint = " (a score model has no lm_head: is this a causal LM checkpoint?)"
            elif name == "lm_head.weight":
                hint = " (config.json says tie_word_embeddings=true)"
            raise HFCheckpointError(f"{path / f}: unexpected tensor {name!r}{hint}")


# ---------------------------------------------------------------------------------- export


def export_checkpoint(
    params: Any, cfg: ModelConfig, out_dir: str | os.PathLike, tokenizer: Any = None,
    max_shard_bytes: int = 2**30, dtype: str | None = None, overwrite: bool = False,
    chat_template: str | None = None,
) -> epath.Path:
    """Writes an HF directory that transformers.AutoModelForCausalLM.from_pretrained loads
    (AutoModelForSequenceClassification for a score model). `chat_template` (Jinja; callers make
    it with `jaxalign.data.dialogue.chat_template`) is saved with the tokenizer.

    Every process must call this (the gathers are collective); only process 0 writes. A
    non-empty `out_dir` (local or a URL) is replaced only with overwrite=True, and only once the
    new checkpoint is complete: files go to a temporary sibling directory that takes its place at
    the end (`modeldir.staged_directory`), config.json last.
    """
    out = paths.path(out_dir)
    np_dtype = jnp.dtype(dtype or cfg.param_dtype)
    shards = _plan_shards(cfg, np_dtype.itemsize, max_shard_bytes)
    files = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    writer = jax.process_index() == 0
    with staged_directory(out, overwrite, writer=writer, marker=CONFIG_FILE) as tmp:
        weight_map, total = {}, 0
        for file, shard in zip(files, shards, strict=True):
            tensors = {}  # at most one shard (max_shard_bytes) on the host at a time
            for name, t, key, layer in shard:
                ours = _to_host(_get(params, key, layer, cfg.scan_layers))
                hf = np.transpose(ours, np.argsort(t.perm)).reshape(t.shape)  # inverse of import
                tensors[name] = np.ascontiguousarray(hf.astype(np_dtype))
                weight_map[name], total = file, total + tensors[name].nbytes
            if writer:
                save_safetensors(tensors, tmp / file)
        if writer:
            write_metadata(tmp, cfg, np_dtype, tokenizer, {"total_size": total}, weight_map, len(files),
                           chat_template)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jaxalign.hf.export_checkpoint")
    return out


def _plan_shards(cfg: ModelConfig, itemsize: int, max_bytes: int) -> list[list[tuple]]:
    """(name, tensor, param key, layer) in HF's order, cut into files of at most max_bytes
    (a single larger tensor gets a file of its own). Planned from shapes alone, so file names
    can say "of N" before anything is gathered."""
    entries = [(t.name.format(i=i), t, key, i) for key, t in tensor_table(cfg).items()
               for i in (range(cfg.num_hidden_layers) if key[0] == "layers" else [0])]
    layer_of = lambda name: int(name.split(".")[2]) if name.startswith("model.layers.") else -1  # noqa: E731
    entries.sort(key=lambda e: ("embed_tokens" not in e[0], layer_of(e[0]) == -1, layer_of(e[0]), e[0]))
    shards: list[list[tuple]] = [[]]
    size = 0
    for entry in entries:
        nbytes = math.prod(entry[1].shape) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def save_safetensors(tensors: dict[str, np.ndarray], path: epath.Path) -> None:
    """One safetensors file; on a bucket it is serialized in memory and uploaded as one object."""
    metadata = {"format": "pt"}  # what transformers expects of a torch checkpoint
    if paths.is_url(path):
        path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))
    else:
        safetensors.numpy.save_file(tensors, str(path), metadata=metadata)


def write_metadata(
    tmp: epath.Path, cfg: ModelConfig, np_dtype: Any, tokenizer: Any, metadata: dict, weight_map: dict,
    num_files: int, chat_template: str | None = None,
) -> None:
    """Everything of an HF directory but the tensors: the shard index (when sharded), config.json,
    generation_config.json and the tokenizer (with `chat_template`, if any), written into `tmp`."""
    if num_files > 1:
        _write_json(tmp / INDEX_FILE, {"metadata": metadata, "weight_map": weight_map})
    config = config_to_hf(cfg)
    config.update(dtype=np_dtype.name, torch_dtype=np_dtype.name)  # transformers 5 and 4
    _write_json(tmp / CONFIG_FILE, config)
    if cfg.head == "lm":  # a classifier generates nothing
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        _write_json(tmp / "generation_config.json", generation)
    if tokenizer is not None and chat_template is not None:
        tokenizer.save_pretrained(tmp, chat_template=chat_template)
    elif tokenizer is not None:
        tokenizer.save_pretrained(tmp)


def _get(params: Any, key: tuple[str, ...], layer: int, scanned: bool) -> jax.Array:
    """Our parameter for table key `key` (one layer of it for per-layer keys)."""
    per_layer = key[0] == "layers"
    node = params[f"layers_{layer}" if per_layer and not scanned else key[0]]
    for k in key[1:]:
        node = node[k]
    return node[layer] if per_layer and scanned else node


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _write_json(path: epath.Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
