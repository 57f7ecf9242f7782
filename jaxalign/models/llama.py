"""The LLaMA-family decoder in Flax (LLaMA 1/2/3, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text).

One module per concept, each short: RMSNorm, rotary embeddings, attention (GQA, optional
biases, q/k norms, soft-capping, sliding window, KV cache), SwiGLU/GeGLU MLP, the block, and the
stack (scanned or unrolled). Every parameter and the main activations carry logical axis names;
jaxalign.mesh.LOGICAL_RULES maps them to the mesh.

Local and global layers. A model with sliding-window layers (cfg.local_layers) gets two masks, the
full one and the windowed one, and each layer picks its own with a per-layer flag (and, for Gemma 3,
its own RoPE base). Under scan_layers the flags are a scanned [layers] input, so one scanned block
serves both kinds; unrolled layers get them as Python booleans. The KV cache is the same for both
kinds: every slot is kept and a sliding layer's mask hides the slots outside its window (no ring
buffer).

Masks. Attention combines (a) causality by position in the row (or in the KV cache),
(b) equal segment ids, so packed examples never see each other and left-padding (segment 0)
is invisible to real tokens, and (c) an optional extra boolean mask [batch, q_len, k_len], which
Chain of Hindsight's random past-token masking uses during training.

Heads. With ``cfg.head == "score"`` the stack ends in a [hidden, num_labels] projection named
``score`` instead of the unembedding (a reward model; see jaxalign.models.config). It is computed
in float32 whatever the compute dtype: it costs nothing next to the stack, and rewards are used
through their differences, which low precision would blur. A score model is never decoded, so it
takes no KV cache.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import mesh as mesh_lib
from jaxalign.models.attention import dot_product_attention
from jaxalign.models.config import ModelConfig

Array = jax.Array
Cache = dict[str, Array]

_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "save_dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _init(cfg: ModelConfig, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), names)


def _constrain(x: Array, names: tuple[str, ...]) -> Array:
    """Constrains an activation by its logical names, leaving out a mesh axis its dimension does not
    divide. flax's with_logical_constraint would split, e.g., a 2-row microbatch over dp*fsdp = 4, and
    XLA then computes wrong (with 1 row: NaN) gradients when tp > 1 as well."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, mesh_lib.logical_to_spec(names, x.shape, mesh))


class RMSNorm(nn.Module):
    eps: float
    param_dtype: Any = jnp.float32
    unit_offset: bool = False  # Gemma: scale by (1 + weight), the weight starting at 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.zeros if self.unit_offset else nn.initializers.ones
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(init, ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale32 = scale.astype(jnp.float32)
        return (y * (1.0 + scale32 if self.unit_offset else scale32)).astype(x.dtype)


def _norm(cfg: ModelConfig, name: str) -> RMSNorm:
    return RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, cfg.norm_unit_offset, name=name)


def _select(flag: Any, local: Any, full: Any) -> Any:
    """`local` where the layer is a sliding one: a Python bool (unrolled) or a traced one (scan)."""
    if isinstance(flag, (bool, np.bool_)):
        return local if flag else full
    return jnp.where(flag, local, full)


def _softcap(x: Array, cap: float | None) -> Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


def rope_inv_frequencies(cfg: ModelConfig, local: bool = False) -> np.ndarray:
    """Inverse RoPE frequencies [head_dim // 2], including linear and Llama-3 scaling. `local`:
    those of the sliding layers, plain RoPE with base cfg.local_rope_theta when that is set."""
    dim = cfg.dims_per_head
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    local = local and cfg.local_rope_theta is not None
    theta = cfg.local_rope_theta if local else cfg.rope_theta
    inv_freq = (1.0 / np.power(np.float32(theta), exponents)).astype(np.float32)
    scaling = None if local else cfg.rope_scaling
    if not scaling:
        return inv_freq
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type == "default":
        return inv_freq
    factor = float(scaling["factor"])
    if rope_type == "linear":
        return (inv_freq / factor).astype(np.float32)
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between
    # interpolated smoothly (Llama 3.1 technical report; same formula as HF transformers).
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotates x [batch, len, heads, head_dim] by position (HF's rotate-half layout)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [b, l, d/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention_mask(
    q_index: Array, k_index: Array, q_segments: Array, k_segments: Array, extra: Array | None,
    window: int | None = None,
) -> Array:
    """Boolean [batch, 1, q_len, k_len]: causal by index, same segment, and the extra mask; with a
    `window`, only the last `window` keys up to the query (itself included), as HF's
    sliding_window_overlay: k_index > q_index - window."""
    causal = k_index[None, None, :] <= q_index[None, :, None]
    if window is not None:
        causal = causal & (k_index[None, None, :] > q_index[None, :, None] - window)
    same = q_segments[:, :, None] == k_segments[:, None, :]
    mask = causal & same
    if extra is not None:
        mask = mask & extra.astype(bool)
    return mask[:, None, :, :]


class Projection(nn.Module):
    """A linear map contracting the last `in_dims` axes of x into `features` axes.

    Written out rather than nn.DenseGeneral because DenseGeneral initialises a flattened 2-D
    kernel, which breaks the logical axis names of a 3-D [embed, heads, head_dim] kernel.
    """

    features: tuple[int, ...]
    names: tuple[str | None, ...]  # logical names of the kernel's axes, inputs first (None: replicated)
    cfg: ModelConfig
    in_dims: int = 1
    use_bias: bool = False
    dtype: str | None = None  # compute dtype; None: cfg.dtype

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        dtype = self.dtype or cfg.dtype
        in_shape = x.shape[-self.in_dims:]
        kernel = self.param("kernel", _init(cfg, self.names), (*in_shape, *self.features),
                            cfg.param_dtype)
        contract = tuple(range(x.ndim - self.in_dims, x.ndim)), tuple(range(self.in_dims))
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (contract, ((), ())))
        if self.use_bias:
            bias_names = self.names[self.in_dims:]
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_names),
                              self.features, cfg.param_dtype)
            y = y + bias.astype(dtype)
        return y


# KV cache layouts, as permutations of [b, s, K, d]: keys head-major [b, K, s, d], values
# [b, K, d, s], the operand layouts of the score and value matmuls, so a decode step reads the
# cache as it lies instead of transposing all of it (a fifth of a CPU decode step in [b, s, K, d]).
_CACHE_PERM = {"k": (0, 2, 1, 3), "v": (0, 2, 3, 1)}


def _cache_write(cache: Array, x: Array, name: str, index: Array) -> Array:
    """Writes x [b, l, K, d] at slots [index, index + l) of one layer's cache."""
    perm = _CACHE_PERM[name]
    start = [0, 0, 0, 0]
    start[perm.index(1)] = index
    return jax.lax.dynamic_update_slice(cache, x.transpose(perm).astype(cache.dtype), tuple(start))


def _cache_read(cache: Array, name: str, dtype: Any) -> Array:
    """One layer's keys or values as [b, s, K, d]."""
    return cache.transpose(np.argsort(_CACHE_PERM[name])).astype(dtype)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        mask: Array,
        layer_cache: Cache | None = None,
        cache_index: Array | None = None,
        segment_ids: Array | None = None,
        is_local: Any = False,
    ) -> tuple[Array, Cache | None]:
        cfg = self.cfg
        heads, kv_heads, dim = cfg.num_attention_heads, cfg.kv_heads, cfg.dims_per_head
        bias = cfg.attention_bias
        q = Projection((heads, dim), ("embed", "heads", "head_dim"), cfg, use_bias=bias,
                       name="q_proj")(x)
        k = Projection((kv_heads, dim), ("embed", "kv_heads", "head_dim"), cfg, use_bias=bias,
                       name="k_proj")(x)
        v = Projection((kv_heads, dim), ("embed", "kv_heads", "head_dim"), cfg, use_bias=bias,
                       name="v_proj")(x)
        q = _constrain(q, ("batch", "length", "act_heads", "head_dim"))
        k = _constrain(k, ("batch", "length", "act_kv_heads", "head_dim"))
        v = _constrain(v, ("batch", "length", "act_kv_heads", "head_dim"))
        if cfg.qk_norm:  # per head, over head_dim (Qwen3, Gemma 3)
            q, k = _norm(cfg, "q_norm")(q), _norm(cfg, "k_norm")(k)

        inv_freq = rope_inv_frequencies(cfg)
        if cfg.local_rope_theta is not None:
            inv_freq = _select(is_local, rope_inv_frequencies(cfg, local=True), inv_freq)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)

        new_cache = None
        if layer_cache is not None:
            # Write this call's keys/values at [cache_index, cache_index + len) and attend over
            # the whole cache; the mask hides slots not yet written.
            k_all = _cache_write(layer_cache["k"], k, "k", cache_index)
            v_all = _cache_write(layer_cache["v"], v, "v", cache_index)
            new_cache = {"k": k_all, "v": v_all}
            k, v = _cache_read(k_all, "k", q.dtype), _cache_read(v_all, "v", q.dtype)

        scale = None if cfg.query_pre_attn_scalar is None else float(cfg.query_pre_attn_scalar) ** -0.5
        out = dot_product_attention(q, k, v, mask, cfg.attention_impl, segment_ids=segment_ids,
                                    scale=scale, softcap=cfg.attn_logit_softcapping)
        out = _constrain(out, ("batch", "length", "act_heads", "head_dim"))
        out = Projection((cfg.hidden_size,), ("heads", "head_dim", "embed"), cfg, in_dims=2,
                         use_bias=cfg.attention_out_bias, name="o_proj")(out)
        return out, new_cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, width = self.cfg, (self.cfg.intermediate_size,)
        gate = Projection(width, ("embed", "mlp"), cfg, name="gate_proj")(x)
        up = Projection(width, ("embed", "mlp"), cfg, name="up_proj")(x)
        act = nn.silu(gate) if cfg.hidden_act == "silu" else nn.gelu(gate, approximate=True)
        hidden = _constrain(act * up, ("batch", "length", "act_mlp"))
        return Projection((cfg.hidden_size,), ("mlp", "embed"), cfg, name="down_proj")(hidden)


class Block(nn.Module):
    """Pre-norm residual block (Gemma: "sandwich" norms, also after attention and the MLP).
    Signature fits nn.scan: (carry, *broadcast, scanned cache, *broadcast, scanned flag).

    `masks` is (full, local): the local (sliding-window) mask is None when no layer needs one;
    `is_local` says which this layer takes (see the module docstring)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        positions: Array,
        masks: tuple[Array, Array | None],
        layer_cache: Cache | None,
        cache_index: Array | None,
        segment_ids: Array | None = None,
        is_local: Any = False,
    ) -> tuple[Array, Cache | None]:
        cfg = self.cfg
        kinds = set(cfg.local_layers)
        if len(kinds) == 1:  # one kind of layer: decided here, statically
            is_local = kinds.pop()
        full, local = masks
        mask = full if local is None else _select(is_local, local, full)
        attn_out, new_cache = Attention(cfg, name="self_attn")(
            _norm(cfg, "input_layernorm")(x), positions, mask, layer_cache, cache_index, segment_ids,
            is_local,
        )
        if cfg.sandwich_norms:
            attn_out = _norm(cfg, "post_attention_layernorm")(attn_out)
            x = _constrain(x + attn_out, ("batch", "length", "act_embed"))
            mlp_out = MLP(cfg, name="mlp")(_norm(cfg, "pre_feedforward_layernorm")(x))
            x = x + _norm(cfg, "post_feedforward_layernorm")(mlp_out)
        else:
            x = _constrain(x + attn_out, ("batch", "length", "act_embed"))
            x = x + MLP(cfg, name="mlp")(_norm(cfg, "post_attention_layernorm")(x))
        return _constrain(x, ("batch", "length", "act_embed")), new_cache


def _block_class(cfg: ModelConfig) -> type[nn.Module]:
    if cfg.remat == "none":
        return Block
    return nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)


class Transformer(nn.Module):
    """Decoder-only LM. `__call__` returns float32 logits [b, l, vocab] (head="score": float32 scores
    [b, l, num_labels], and no cache); `hidden` the final normed states.

    Args of both: tokens [b, l] int; positions [b, l] (default: 0.. per row, continued from the
    cache index when decoding); segment_ids [b, l] (default all 1; 0 marks padding); extra_mask
    [b, l, l] bool (training only); cache from `init_cache` for incremental decoding, in which
    case the updated cache is returned as well.
    """

    cfg: ModelConfig

    def setup(self) -> None:
        cfg = self.cfg
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            embedding_init=_init(cfg, ("vocab", "embed")),
        )
        block = _block_class(cfg)
        if cfg.scan_layers:
            self.layers = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast, 0),
                length=cfg.num_hidden_layers,
                unroll=min(cfg.scan_unroll, cfg.num_hidden_layers),
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg)
        else:
            self.layers = [block(cfg) for _ in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, cfg.norm_unit_offset)
        if cfg.head == "score":
            # num_labels is tiny: only the hidden axis is sharded (over fsdp, like every "embed").
            self.score = Projection((cfg.num_labels,), ("embed", None), cfg, dtype="float32")
        elif not cfg.tie_word_embeddings:
            self.lm_head = Projection((cfg.vocab_size,), ("embed", "vocab"), cfg)

    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        extra_mask: Array | None = None,
        cache: Cache | None = None,
    ) -> Array | tuple[Array, Cache]:
        if self.cfg.head == "score":
            if cache is not None:
                raise ValueError("a score model (head='score') is not decoded: call it without a KV cache")
            x, _ = self.hidden(tokens, positions, segment_ids, extra_mask)
            return _constrain(self.score(x).astype(jnp.float32), ("batch", "length", None))
        x, new_cache = self.hidden(tokens, positions, segment_ids, extra_mask, cache)
        if self.cfg.tie_word_embeddings:
            logits = self.embed_tokens.attend(x)
        else:
            logits = self.lm_head(x)
        logits = _softcap(logits.astype(jnp.float32), self.cfg.final_logit_softcapping)
        logits = _constrain(logits, ("batch", "length", "act_vocab"))
        return logits if cache is None else (logits, new_cache)

    def hidden(
        self,
        tokens: Array,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        extra_mask: Array | None = None,
        cache: Cache | None = None,
    ) -> tuple[Array, Cache | None]:
        cfg = self.cfg
        batch, length = tokens.shape
        start = jnp.zeros((), jnp.int32) if cache is None else cache["index"]
        q_index = start + jnp.arange(length, dtype=jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(q_index, (batch, length))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if cache is None:
            k_index, k_segments, layer_caches = q_index, segment_ids, None
        else:
            k_segments = jax.lax.dynamic_update_slice(
                cache["segment_ids"], segment_ids.astype(jnp.int32), (0, start)
            )
            k_index = jnp.arange(k_segments.shape[1], dtype=jnp.int32)
            layer_caches = {"k": cache["k"], "v": cache["v"]}
        full = attention_mask(q_index, k_index, segment_ids, k_segments, extra_mask)
        # A window at least as long as the keys hides nothing: sliding layers then share the full mask.
        window = cfg.sliding_window if any(cfg.local_layers) else None
        local = None
        if window is not None and window < k_index.shape[0]:
            local = attention_mask(q_index, k_index, segment_ids, k_segments, extra_mask, window)
        masks = (full, local)
        # The mask is plain causal + segments (what "splash" needs) only without a cache, extra mask
        # or window.
        plain_segments = segment_ids if cache is None and extra_mask is None and local is None else None

        # Gather the table's FSDP shards first (as FSDP does for every weight) so the lookup
        # is a vocab-parallel gather; XLA otherwise replicates the whole table to reshard.
        table = _constrain(self.embed_tokens.embedding, ("vocab", None))
        x = jnp.take(table, tokens.astype(jnp.int32), axis=0).astype(cfg.dtype)
        if cfg.scale_embeddings:  # Gemma: sqrt(hidden) rounded to the compute dtype, as HF does
            x = x * jnp.asarray(cfg.hidden_size**0.5, cfg.dtype)
        x = _constrain(x, ("batch", "length", "act_embed"))
        if cfg.scan_layers:
            flags = jnp.asarray(cfg.local_layers, bool)
            x, new_layer_caches = self.layers(x, positions, masks, layer_caches, start, plain_segments,
                                              flags)
        else:
            outs = []
            for i, layer in enumerate(self.layers):
                layer_cache = None if layer_caches is None else {n: c[i] for n, c in layer_caches.items()}
                x, out = layer(x, positions, masks, layer_cache, start, plain_segments,
                               cfg.local_layers[i])
                outs.append(out)
            new_layer_caches = None if cache is None else {n: tuple(o[n] for o in outs) for n in ("k", "v")}
        x = self.norm(x)
        new_cache = None
        if cache is not None:
            new_cache = {**new_layer_caches, "segment_ids": k_segments, "index": start + length}
        return x, new_cache


CACHE_AXES = {
    "k": ("layers", "batch", "act_kv_heads", "kv_length", "head_dim"),
    "v": ("layers", "batch", "act_kv_heads", "head_dim", "kv_length"),
    "segment_ids": ("batch", "kv_length"),
    "index": (),
}


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
    """An empty KV cache for `batch` rows of up to `max_len` tokens (prompt + generation).

    "k" is [layers, b, K, max_len, d] and "v" [layers, b, K, d, max_len] (see _CACHE_PERM); with
    unrolled layers (scan_layers=False) a tuple of one such array per layer instead, so that a
    decode step reads and writes each layer's cache where it lies (slicing a layer out of a stacked
    carry copies it, on CPU an eighth of a decode step).
    """
    dtype = dtype or cfg.dtype
    bskd = (batch, max_len, cfg.kv_heads, cfg.dims_per_head)
    shape = {name: tuple(bskd[i] for i in perm) for name, perm in _CACHE_PERM.items()}
    layers = range(cfg.num_hidden_layers)
    if cfg.scan_layers:
        kv = {name: jnp.zeros((len(layers), *s), dtype) for name, s in shape.items()}
    else:
        kv = {name: tuple(jnp.zeros(s, dtype) for _ in layers) for name, s in shape.items()}
    return {
        **kv,
        "segment_ids": jnp.zeros((batch, max_len), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }
