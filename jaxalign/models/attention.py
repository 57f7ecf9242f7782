"""Attention backends: one function, several ways of computing it.

`dot_product_attention(..., impl)` computes, per head, ``softmax(q k^T / sqrt(d) masked) v`` with a
float32 softmax, for q [b, l, H, d], k/v [b, s, K, d] (grouped-query attention: H a multiple of K)
and a boolean mask [b, 1, l, s] (True: attend), by "xla" (the reference), "dot_product", "cudnn",
"chunked" (flash attention in plain JAX), "splash" (the TPU Pallas kernel) or "auto" (chosen per
platform at trace time, and logged): one function so that the model never depends on the
platform. `segment_ids` [b, l] is the caller's promise that the mask is exactly causal
self-attention within equal segment ids; pass None whenever it is anything else (an extra mask, a
KV cache), and "splash" then raises while "auto" does not choose it. Each backend, the promise and
fully masked rows are described in docs/models.md.

`scale` replaces 1/sqrt(d) (Gemma's query_pre_attn_scalar) and `softcap` caps the scaled scores to
``softcap * tanh(scores / softcap)`` before the mask (Gemma 2's attn_logit_softcapping). jax.nn's
"dot_product"/"cudnn" cannot soft-cap: they raise, and "auto" does not choose cuDNN then.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from jaxalign import mesh as mesh_lib
from jaxalign.models.config import ATTENTION_IMPLS

Array = jax.Array
log = logging.getLogger(__name__)

CHUNK_SIZE = 512  # query and key chunk of "chunked": [b, H, 512, 512] float32 scores at a time
# "auto" uses "chunked" rather than "xla" above this many keys. Measured on 2 CPU cores (float32,
# 8 heads, d=32, fwd+bwd): xla is faster up to 512 keys (b=8, l=256: 127 vs 183 ms), chunked from
# 1024 (745 vs 1197 ms; 3.4x at 2048 and 6.6x at 8192 with b=1), and decoding over a cache of
# 1024+ slots is faster chunked too (it skips the unwritten ones).
AUTO_CHUNKED_ABOVE = 512
_SPLASH_BLOCKS = (512, 256, 128)  # splash tile sizes, largest that divides the (padded) length
_LANES = 128  # splash pads the length to a multiple of the TPU lane width


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array,
    impl: str,
    *,
    segment_ids: Array | None = None,
    chunk_size: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> Array:
    """Attention output [b, l, H, d] in q's dtype (module docstring for `impl` and `segment_ids`).

    q [b, l, H, d]; k, v [b, s, K, d]; mask [b, 1, l, s] bool; segment_ids [b, l] or None;
    chunk_size: the query/key chunk of "chunked" (None: CHUNK_SIZE); scale: the score scale
    (None: 1/sqrt(d)); softcap: soft-capping of the scaled scores (None: off).
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl={impl!r}; choose one of {ATTENTION_IMPLS}")
    if impl == "auto":
        impl = auto_impl(q, k, segment_ids, softcap=softcap)
        _log_choice(impl, q.shape, k.shape, jax.default_backend())
    if impl == "xla":
        return xla_attention(q, k, v, mask, scale=scale, softcap=softcap)
    if impl in ("dot_product", "cudnn"):
        if softcap is not None:
            raise ValueError(f"model.attention_impl={impl!r} cannot soft-cap attention logits "
                             "(attn_logit_softcapping); use 'xla', 'chunked', 'splash' or 'auto'")
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, scale=scale, implementation="cudnn" if impl == "cudnn" else None
        )
    if impl == "chunked":
        return chunked_attention(q, k, v, mask, chunk_size=CHUNK_SIZE if chunk_size is None else chunk_size,
                                 scale=scale, softcap=softcap)
    if segment_ids is None:
        raise ValueError(
            "model.attention_impl='splash' needs a plain causal mask with segment ids: it cannot "
            "take an extra attention mask (Chain of Hindsight) or attend over a KV cache "
            "(decoding); use attention_impl='auto', which falls back to 'xla'/'chunked' there"
        )
    return splash_attention(q, k, v, segment_ids, scale=scale, softcap=softcap)


def _scale(dim: int, scale: float | None) -> np.float32:
    return np.float32(1.0 / np.sqrt(dim) if scale is None else scale)


def xla_attention(q: Array, k: Array, v: Array, mask: Array, *, scale: float | None = None,
                  softcap: float | None = None) -> Array:
    """The reference: whole score matrix, float32 softmax, finfo.min at masked entries."""
    b, length, heads, dim = q.shape
    kv_heads = k.shape[2]
    # Head-major operands [b, K, g, l, d] and [b, K, s, d]: the score matrix [b, K, g, l, s] is
    # then the matmul's own output and the probabilities its direct input, so no score-sized
    # tensor is transposed, forward or backward (on CPU attention fwd+bwd ran 20% faster).
    q = q.reshape(b, length, kv_heads, heads // kv_heads, dim).transpose(0, 2, 3, 1, 4)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkgld,bksd->bkgls", q, k, preferred_element_type=jnp.float32)
    if scale is None:
        scores = scores / np.sqrt(dim).astype(np.float32)
    else:
        scores = scores * _scale(dim, scale)
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgls,bksd->bkgld", probs, v).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, length, heads, dim)


# --------------------------------------------------------------------------- auto


def auto_impl(q: Array, k: Array, segment_ids: Array | None, platform: str | None = None,
              softcap: float | None = None) -> str:
    """The backend "auto" uses for these shapes on `platform` (default: jax.default_backend())."""
    platform = platform or jax.default_backend()
    if platform == "tpu" and segment_ids is not None:
        return "splash"
    if platform == "gpu" and softcap is None and cudnn_supported(q, k):
        return "cudnn"
    return "chunked" if k.shape[1] > AUTO_CHUNKED_ABOVE else "xla"


@functools.cache
def _log_choice(impl: str, q_shape: tuple[int, ...], k_shape: tuple[int, ...], platform: str) -> None:
    # Once per distinct choice: unrolled layers trace the same attention many times.
    log.info("attention_impl='auto' chose %r for q %s, k %s on %s", impl, q_shape, k_shape, platform)


def cudnn_supported(q: Array, k: Array) -> bool:
    """cuDNN flash attention's constraints as jax 0.10 checks them (fused_attention_stablehlo):
    float16/bfloat16, head_dim a multiple of 8 and at most 128 (256 needs Hopper; not assumed), and
    even lengths, which a bias (our mask) needs in training. Decoding (l != s) stays on XLA: one new
    token's scores are small, and cuDNN with a bias over a cache is untested here."""
    length, dim = q.shape[1], q.shape[3]
    return (
        q.dtype in (jnp.bfloat16, jnp.float16)
        and dim % 8 == 0
        and dim <= 128
        and length == k.shape[1]
        and length % 2 == 0
    )


# --------------------------------------------------------------------------- chunked


def chunked_attention(q: Array, k: Array, v: Array, mask: Array, *, chunk_size: int = CHUNK_SIZE,
                      scale: float | None = None, softcap: float | None = None) -> Array:
    """Flash attention in plain JAX: memory O(chunk^2) per head in the forward and backward pass.

    Lengths that are not a multiple of the chunk are split into equal chunks of at most
    `chunk_size` and padded by less than one chunk (padded keys are masked, padded queries dropped).

    The backward pass is a custom VJP (FlashAttention-2, Dao 2023) rather than jax.checkpoint
    around an autodiffed loop: it needs only the output and two float32 numbers per query (the
    row's running max and softmax denominator), recomputes each score chunk once, and avoids
    differentiating the online-softmax rescaling, which would save a carry per key chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be positive")
    b, length, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    mask = jnp.broadcast_to(mask, (b, 1, length, kv_len))[:, 0]
    q_chunk, q_pad = _split(length, chunk_size)
    k_chunk, k_pad = _split(kv_len, chunk_size)
    q5 = q.reshape(b, length, kv_heads, heads // kv_heads, dim)
    q5 = jnp.pad(q5, ((0, 0), (0, q_pad), (0, 0), (0, 0), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, k_pad), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, k_pad), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, q_pad), (0, k_pad)))
    out = _flash(q5, k, v, mask, q_chunk, k_chunk, kv_len, (scale, softcap))
    return out[:, :length].reshape(b, length, heads, dim)


def _split(length: int, chunk_size: int) -> tuple[int, int]:
    """(chunk, padding): equal chunks of at most chunk_size covering length with least padding."""
    n = -(-length // chunk_size)
    chunk = -(-length // n)
    return chunk, n * chunk - length


def _scores(q_blk: Array, k_blk: Array, mask_blk: Array, opts: tuple = (None, None)) -> Array:
    """Scaled (and soft-capped) float32 scores [b, K, G, cq, ck], -inf where masked.
    opts: (scale, softcap), see dot_product_attention."""
    scale, softcap = opts
    s = jnp.einsum("bqkgd,bskd->bkgqs", q_blk, k_blk, preferred_element_type=jnp.float32)
    if scale is None:
        s = s / np.sqrt(q_blk.shape[-1]).astype(np.float32)
    else:
        s = s * _scale(q_blk.shape[-1], scale)
    if softcap is not None:
        s = softcap * jnp.tanh(s / softcap)
    return jnp.where(mask_blk[:, None, None], s, -jnp.inf)


def _block(x: Array, i: Array, size: int, axis: int) -> Array:
    return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis)


def _tie(q: Array, mask: Array) -> tuple[Array, Array]:
    """q and mask through one optimization barrier, so everything the loops derive from the mask
    depends on q as well.

    Inside a model the mask is the same for every layer, so under the layer scan's linearization
    JAX hoists whatever depends on the mask alone out of the layer loop (_scan_known_hoisting,
    recursively into these loops). That is each block pair's mask and its -inf fill: residuals
    stacked over all [nq, nk] blocks, as large as the float32 score matrix this function exists to
    avoid. Tied to q, which changes from layer to layer, nothing block-shaped is loop-invariant
    (for XLA's loop-invariant code motion either). The values are unchanged.
    """
    return jax.lax.optimization_barrier((q, mask))


def _forward(q, k, v, mask, q_chunk, k_chunk, opts=(None, None)):
    """Online softmax. Returns the unnormalised output, the row max and the softmax denominator,
    stacked per query chunk: acc [nq, b, K, G, cq, d], m and denom [nq, b, K, G, cq]."""
    b, _, kv_heads, groups, dim = q.shape
    nk = k.shape[1] // k_chunk
    q, mask = _tie(q, mask)

    def q_step(i):
        q_blk, mask_i = _block(q, i, q_chunk, 1), _block(mask, i, q_chunk, 1)

        def kv_step(carry, j):
            mask_blk = _block(mask_i, j, k_chunk, 2)

            def update(carry):
                m, denom, acc = carry
                s = _scores(q_blk, _block(k, j, k_chunk, 1), mask_blk, opts)
                m_new = jnp.maximum(m, s.max(-1))
                m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows that saw no key yet
                p = jnp.exp(s - m_safe[..., None])
                scale = jnp.exp(m - m_safe)
                v_blk = _block(v, j, k_chunk, 1)
                pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), v_blk,
                                preferred_element_type=jnp.float32)
                return m_new, denom * scale + p.sum(-1), acc * scale[..., None] + pv

            return jax.lax.cond(mask_blk.any(), update, lambda c: c, carry), None

        shape = (b, kv_heads, groups, q_chunk)
        init = (jnp.full(shape, -jnp.inf), jnp.zeros(shape), jnp.zeros((*shape, dim)))
        (m, denom, acc), _ = jax.lax.scan(kv_step, init, jnp.arange(nk))
        return acc, m, denom

    return jax.lax.map(q_step, jnp.arange(q.shape[1] // q_chunk))


def _to_rows(x: Array) -> Array:
    """[nq, b, K, G, cq, ...] -> [b, nq * cq, K, G, ...] (the q5 layout)."""
    x = jnp.moveaxis(x, 4, 2)  # [nq, b, cq, K, G, ...]
    x = jnp.moveaxis(x, 0, 1)  # [b, nq, cq, K, G, ...]
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _uniform_average(v: Array, kv_len: int) -> Array:
    """What "xla" gives a fully masked row: the mean of v over the real keys, [b, 1, K, 1, d]."""
    return v[:, :kv_len].astype(jnp.float32).mean(1)[:, None, :, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, mask, q_chunk, k_chunk, kv_len, opts):
    return _flash_fwd(q, k, v, mask, q_chunk, k_chunk, kv_len, opts)[0]


def _flash_fwd(q, k, v, mask, q_chunk, k_chunk, kv_len, opts):
    acc, m, denom = (_to_rows(x) for x in _forward(q, k, v, mask, q_chunk, k_chunk, opts))
    seen = (denom > 0)[..., None]  # False: a fully masked row
    out = jnp.where(seen, acc / jnp.where(seen, denom[..., None], 1.0), _uniform_average(v, kv_len))
    out = out.astype(q.dtype)
    return out, (q, k, v, mask, out, m, denom)


def _flash_bwd(q_chunk, k_chunk, kv_len, opts, res, d_out):
    q, k, v, mask, out, m, denom = res
    q, mask = _tie(q, mask)  # first-order training does not need it here; a differentiated bwd would
    b, _, kv_heads, _, dim = q.shape
    nq, nk = q.shape[1] // q_chunk, k.shape[1] // k_chunk
    # Softmax gradient: ds = p * (dp - rowsum(d_out * out)); fully masked rows have p = 0 here
    # and get their (dq = dk = 0, dv = mean) gradient from the uniform term at the end.
    delta = jnp.einsum("blkgd,blkgd->blkg", d_out.astype(jnp.float32), out.astype(jnp.float32))
    m = jnp.where(m == -jnp.inf, 0.0, m)
    inv_denom = 1.0 / jnp.where(denom > 0, denom, 1.0)
    inv_sqrt_d = _scale(dim, opts[0])  # d score / d (q . k)
    softcap = opts[1]
    kv_rows = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, -1, kv_heads, dim)  # noqa: E731

    def q_step(dkv, i):
        q_blk, mask_i, do_blk = (_block(x, i, q_chunk, 1) for x in (q, mask, d_out))
        # Per-row statistics [b, L, K, G] -> this chunk's [b, K, G, cq], the layout of the scores.
        m_i, inv_denom_i, delta_i = (
            _block(x, i, q_chunk, 1).transpose(0, 2, 3, 1) for x in (m, inv_denom, delta)
        )

        def kv_step(dq, j):
            mask_blk = _block(mask_i, j, k_chunk, 2)
            zeros = jnp.zeros((b, k_chunk, kv_heads, dim), jnp.float32)

            def grads(dq):
                k_blk, v_blk = _block(k, j, k_chunk, 1), _block(v, j, k_chunk, 1)
                s = _scores(q_blk, k_blk, mask_blk, opts)
                p = jnp.exp(s - m_i[..., None]) * inv_denom_i[..., None]  # [b, K, G, cq, ck]
                dv = jnp.einsum("bkgqs,bqkgd->bskd", p.astype(d_out.dtype), do_blk,
                                preferred_element_type=jnp.float32)
                dp = jnp.einsum("bqkgd,bskd->bkgqs", do_blk, v_blk, preferred_element_type=jnp.float32)
                ds = p * (dp - delta_i[..., None]) * inv_sqrt_d
                if softcap is not None:  # d(c tanh(x / c)) = 1 - tanh^2; s is 0-weighted (-inf) where masked
                    ds = ds * (1.0 - jnp.square(jnp.where(p > 0, s, 0.0) / softcap))
                ds = ds.astype(q.dtype)
                dq = dq + jnp.einsum("bkgqs,bskd->bqkgd", ds, k_blk, preferred_element_type=jnp.float32)
                dk = jnp.einsum("bkgqs,bqkgd->bskd", ds, q_blk, preferred_element_type=jnp.float32)
                return dq, (dk, dv)

            return jax.lax.cond(mask_blk.any(), grads, lambda dq: (dq, (zeros, zeros)), dq)

        dq, (dk, dv) = jax.lax.scan(kv_step, jnp.zeros(q_blk.shape, jnp.float32), jnp.arange(nk))
        dk_all, dv_all = dkv
        return (dk_all + kv_rows(dk), dv_all + kv_rows(dv)), dq

    zeros = jnp.zeros(k.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(q_step, (zeros, zeros), jnp.arange(nq))
    dq = jnp.moveaxis(dq, 0, 1).reshape(q.shape)
    # Fully masked rows output the mean of v: each real key gets 1/kv_len of their d_out.
    unseen = (denom == 0)[..., None]  # [b, L, K, G, 1]
    d_mean = jnp.where(unseen, d_out.astype(jnp.float32), 0.0).sum((1, 3)) / kv_len  # [b, K, d]
    real = (jnp.arange(k.shape[1]) < kv_len)[None, :, None, None]
    dv = dv + jnp.where(real, d_mean[:, None], 0.0)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


# --------------------------------------------------------------------------- splash


def splash_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, *, interpret: bool | None = None,
    scale: float | None = None, softcap: float | None = None,
) -> Array:
    """Causal self-attention within segments with the Pallas splash kernel.

    q [b, l, H, d], k/v [b, l, K, d], segment_ids [b, l]. The length is padded to a multiple of 128
    with a segment of its own (-1), which real tokens never see. Under a mesh the kernel runs per
    shard (shard_map: batch over dp/fsdp, heads over tp, the length whole); when tp splits the query
    heads but not the KV heads, k and v are repeated to one per query head first.
    `interpret`: None runs the compiled kernel on TPU and Pallas interpret mode elsewhere.
    """
    b, length, heads, dim = q.shape
    if k.shape[1] != length or segment_ids.shape != (b, length):
        raise ValueError(
            f"splash attention is self-attention: q {q.shape}, k {k.shape} and segment_ids "
            f"{segment_ids.shape} must share [batch, length]"
        )
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    kernel = functools.partial(_splash_local, interpret=interpret, scale=scale, softcap=softcap)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, segment_ids)
    spec = lambda names, x: mesh_lib.logical_to_spec(names, x.shape, mesh)  # noqa: E731
    q_spec = spec(("batch", None, "act_heads", None), q)
    kv_spec = spec(("batch", None, "act_kv_heads", None), k)
    if q_spec[2] != kv_spec[2]:
        k, v = (jnp.repeat(x, heads // k.shape[2], axis=2) for x in (k, v))
        kv_spec = q_spec
    seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
    sharded = jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                            out_specs=q_spec, check_vma=False)
    return sharded(q, k, v, segment_ids)


def _splash_local(q: Array, k: Array, v: Array, segment_ids: Array, *, interpret: bool,
                  scale: float | None = None, softcap: float | None = None) -> Array:
    _, length, heads, dim = q.shape
    pad = -length % _LANES
    padded = length + pad
    # The kernel does not scale the scores; it takes [heads, length, d] per example.
    if scale is None:
        q = (q / np.sqrt(dim).astype(np.float32)).astype(q.dtype)
    else:
        q = (q * _scale(dim, scale)).astype(q.dtype)
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3) for x in (q, k, v))
    segment_ids = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=-1)
    kernel = _splash_kernel(heads, padded, interpret, softcap)
    out = jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(segment_ids, segment_ids))
    return out.transpose(0, 2, 1, 3)[:, :length].astype(q.dtype)


def _splash_kernel(heads: int, length: int, interpret: bool, softcap: float | None = None):
    """A causal splash kernel for [heads, length, d] (GQA: K heads dividing `heads`).

    Built per trace, not cached: the kernel holds its block tables as jax arrays, which would leak
    from one trace (e.g. a shard_map body) into the next."""
    block = next(size for size in _SPLASH_BLOCKS if length % size == 0)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    mask = splash.MultiHeadMask([splash.CausalMask((length, length)) for _ in range(heads)])
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  attn_logits_soft_cap=softcap, interpret=interpret)


__all__ = [
    "AUTO_CHUNKED_ABOVE", "CHUNK_SIZE", "auto_impl", "chunked_attention", "cudnn_supported",
    "dot_product_attention", "splash_attention", "xla_attention",
]
