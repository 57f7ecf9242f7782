"""Attention backends (jaxalign.models.attention) against the "xla" reference.

"chunked" runs everywhere, "splash" runs in Pallas interpret mode on CPU; "cudnn" needs a GPU and
is only checked through the rule "auto" applies.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.models import Transformer, get_preset, init_cache, llama
from jaxalign.models import attention as attn

TOL = dict(rtol=1e-5, atol=1e-5)


def _qkv(b, length, kv_len, heads, kv_heads, dim=8, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (b, length, heads, dim)),
        jax.random.normal(kk, (b, kv_len, kv_heads, dim)),
        jax.random.normal(kv, (b, kv_len, kv_heads, dim)),
    )


def _self_mask(segments, extra=None):
    index = jnp.arange(segments.shape[1])
    return llama.attention_mask(index, index, segments, segments, extra)


def _segments(*rows):
    return jnp.asarray([sum(([seg] * n for seg, n in row), []) for row in rows], jnp.int32)


def _values_and_grads(impl, q, k, v, mask, **kwargs):
    # A fixed random cotangent, so every output element matters in the gradient.
    weights = jax.random.normal(jax.random.key(7), q.shape)

    def loss(q, k, v):
        out = attn.dot_product_attention(q, k, v, mask, impl, **kwargs)
        return (out * weights).sum(), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def _assert_same(impl, q, k, v, mask, **kwargs):
    out, grads = _values_and_grads(impl, q, k, v, mask, **kwargs)
    ref_out, ref_grads = _values_and_grads("xla", q, k, v, mask)
    np.testing.assert_allclose(out, ref_out, **TOL)
    for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(g, ref, **TOL, err_msg=f"d{name}")
    return out


def _causal_cases():
    left_pad = _segments([(0, 7), (1, 33)], [(1, 40)])
    packed = _segments([(1, 13), (2, 20), (3, 7)], [(1, 25), (2, 15)])
    extra = jax.random.bernoulli(jax.random.key(3), 0.6, (2, 40, 40)) | jnp.eye(40, dtype=bool)
    return {
        "causal": _self_mask(jnp.ones((2, 40), jnp.int32)),
        "packed": _self_mask(packed),
        "left_padding": _self_mask(left_pad),
        "extra_mask": _self_mask(packed, extra),
    }


@pytest.mark.parametrize("case,heads,kv_heads", [
    ("causal", 4, 2), ("packed", 4, 2), ("packed", 4, 4), ("left_padding", 4, 2), ("extra_mask", 4, 2),
])
def test_chunked_equals_xla(case, heads, kv_heads):
    # Length 40 in chunks of at most 16: three chunks of 14 (padded by 2), several skipped.
    q, k, v = _qkv(2, 40, 40, heads, kv_heads)
    _assert_same("chunked", q, k, v, _causal_cases()[case], chunk_size=16)


@pytest.mark.parametrize("new_tokens", [1, 5])
def test_chunked_equals_xla_when_decoding_over_a_cache(new_tokens):
    # A 24-slot cache holding 10 tokens (row 0 left-padded by 3) plus this call's new ones; the
    # unwritten slots have segment 0 but lie in the future, so causality hides them.
    cache_len, start = 24, 10
    q, k, v = _qkv(2, new_tokens, cache_len, 4, 2, seed=1)
    k_segments = _segments([(0, 3), (1, start + new_tokens - 3), (0, cache_len - start - new_tokens)],
                           [(1, start + new_tokens), (0, cache_len - start - new_tokens)])
    q_index = start + jnp.arange(new_tokens)
    mask = llama.attention_mask(q_index, jnp.arange(cache_len), k_segments[:, start:start + new_tokens],
                                k_segments, None)
    _assert_same("chunked", q, k, v, mask, chunk_size=8)


def test_fully_masked_rows_average_like_xla_without_nan():
    q, k, v = _qkv(2, 20, 20, 4, 2)
    mask = _self_mask(jnp.ones((2, 20), jnp.int32))
    mask = mask.at[0, 0, 5].set(False).at[1, 0, :3].set(False)  # rows that see nothing
    out = _assert_same("chunked", q, k, v, mask, chunk_size=8)
    mean_v = np.asarray(v[0]).mean(0)  # [K, d]: the row attends uniformly to every key
    np.testing.assert_allclose(out[0, 5].reshape(2, 2, -1), np.repeat(mean_v[:, None], 2, 1), **TOL)


def test_chunked_in_bfloat16_stays_close_to_xla():
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(2, 40, 40, 4, 2))
    mask = _causal_cases()["packed"]
    (out, grads), (ref, ref_grads) = (_values_and_grads(impl, q, k, v, mask, chunk_size=16)
                                      for impl in ("chunked", "xla"))
    assert out.dtype == jnp.bfloat16
    for x, y in zip((out, *grads), (ref, *ref_grads), strict=True):
        x, y = np.float32(x), np.float32(y)
        np.testing.assert_allclose(x, y, rtol=0, atol=0.05 * np.abs(y).max())


def test_chunk_size_larger_than_the_sequence():
    q, k, v = _qkv(1, 9, 9, 2, 1)
    _assert_same("chunked", q, k, v, _self_mask(jnp.ones((1, 9), jnp.int32)))  # default 512


def test_chunked_memory_stays_below_the_score_matrix():
    b, length, heads, dim = 1, 2048, 2, 16
    q = jax.ShapeDtypeStruct((b, length, heads, dim), jnp.float32)
    mask = jax.ShapeDtypeStruct((b, 1, length, length), jnp.bool_)
    scores = b * heads * length * length * 4

    def temp_bytes(impl, grad):
        f = lambda q, k, v, m: attn.dot_product_attention(q, k, v, m, impl).sum()  # noqa: E731
        f = jax.grad(f, (0, 1, 2)) if grad else f
        return jax.jit(f).lower(q, q, q, mask).compile().memory_analysis().temp_size_in_bytes

    for grad in (False, True):
        assert temp_bytes("xla", grad) > scores
        assert temp_bytes("chunked", grad) < scores / 2


def test_auto_rule():
    def shapes(length, kv_len, dtype=jnp.float32, dim=64):
        return (jax.ShapeDtypeStruct((2, length, 4, dim), dtype),
                jax.ShapeDtypeStruct((2, kv_len, 2, dim), dtype))

    segments = jnp.ones((2, 256), jnp.int32)
    assert attn.auto_impl(*shapes(256, 256), None, platform="cpu") == "xla"
    assert attn.auto_impl(*shapes(1, 512), None, platform="cpu") == "xla"
    assert attn.auto_impl(*shapes(1, 4096), None, platform="cpu") == "chunked"  # decoding a long cache
    assert attn.auto_impl(*shapes(4096, 4096), segments, platform="cpu") == "chunked"
    assert attn.auto_impl(*shapes(256, 256), segments, platform="tpu") == "splash"
    assert attn.auto_impl(*shapes(256, 256), None, platform="tpu") == "xla"  # extra mask or cache
    assert attn.auto_impl(*shapes(256, 256, jnp.bfloat16), None, platform="gpu") == "cudnn"
    assert attn.auto_impl(*shapes(256, 256), None, platform="gpu") == "xla"  # cuDNN needs 16 bits
    assert attn.auto_impl(*shapes(256, 256, jnp.bfloat16, dim=256), None, platform="gpu") == "xla"
    assert attn.auto_impl(*shapes(1, 256, jnp.bfloat16), None, platform="gpu") == "xla"


def test_auto_on_cpu_gives_the_reference_result():
    q, k, v = _qkv(2, 40, 40, 4, 2)
    mask = _causal_cases()["packed"]
    _assert_same("auto", q, k, v, mask)
    long_q, long_k, long_v = _qkv(1, 600, 600, 2, 1, seed=2)
    segments = jnp.ones((1, 600), jnp.int32)
    assert attn.auto_impl(long_q, long_k, segments) == "chunked"
    out = attn.dot_product_attention(long_q, long_k, long_v, _self_mask(segments), "auto")
    ref = attn.dot_product_attention(long_q, long_k, long_v, _self_mask(segments), "xla")
    np.testing.assert_allclose(out, ref, **TOL)


def test_unknown_impl_and_splash_without_segments_are_clear_errors():
    q, k, v = _qkv(1, 8, 8, 2, 2)
    mask = _self_mask(jnp.ones((1, 8), jnp.int32))
    with pytest.raises(ValueError, match="model.attention_impl='flash'"):
        attn.dot_product_attention(q, k, v, mask, "flash")
    with pytest.raises(ValueError, match="model.attention_impl='flash'"):
        get_preset("tiny", attention_impl="flash")
    with pytest.raises(ValueError, match="needs a plain causal mask with segment ids"):
        attn.dot_product_attention(q, k, v, mask, "splash")
    assert llama.dot_product_attention is attn.dot_product_attention


@pytest.mark.parametrize("heads,kv_heads,length", [(2, 1, 100), (4, 2, 128)])
def test_splash_in_interpret_mode_equals_xla(heads, kv_heads, length):
    q, k, v = _qkv(2, length, length, heads, kv_heads, seed=4)
    segments = _segments([(0, 9), (1, 30), (2, length - 39)], [(1, length)])
    _assert_same("splash", q, k, v, _self_mask(segments), segment_ids=segments)


@pytest.mark.parametrize("spec,kv_heads", [("dp:2,fsdp:2,tp:2", 2), ("dp:1,fsdp:4,tp:2", 1)])
def test_splash_under_a_mesh_runs_per_shard(spec, kv_heads):
    # kv_heads=1 on tp=2: the query heads are split but the single KV head is not, so splash
    # repeats k and v per query head before the shard_map.
    mesh = mesh_lib.make_mesh(spec)
    q, k, v = _qkv(4, 128, 128, 2, kv_heads, seed=5)
    segments = jnp.tile(_segments([(0, 20), (1, 60), (2, 48)]), (4, 1))
    mask = _self_mask(segments)
    with mesh_lib.use(mesh):
        out = jax.jit(lambda q, k, v, s: attn.dot_product_attention(q, k, v, mask, "splash", segment_ids=s))(
            q, k, v, segments)
    np.testing.assert_allclose(out, attn.xla_attention(q, k, v, mask), **TOL)


def _model_loss(cfg, params, tokens, **kwargs):
    def loss(p):
        logits = Transformer(cfg).apply({"params": p}, tokens, **kwargs)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def test_whole_model_chunked_equals_xla(monkeypatch):
    monkeypatch.setattr(attn, "CHUNK_SIZE", 8)  # 24 tokens: three query and key chunks
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    cfg = get_preset("tiny", initializer_range=0.2)
    params = models.init_params(cfg, mesh)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 24)), jnp.int32)
    segments = _segments(*[[(0, 3), (1, 12), (2, 9)]] * 2, *[[(1, 24)]] * 2)
    positions = jnp.maximum(jnp.arange(24) - jnp.asarray([3, 3, 0, 0])[:, None], 0)
    extra = jax.random.bernoulli(jax.random.key(1), 0.7, (4, 24, 24)) | jnp.eye(24, dtype=bool)
    kwargs = dict(positions=positions, segment_ids=segments, extra_mask=extra)
    with mesh_lib.use(mesh):
        (_, ref_logits), ref_grads = _model_loss(cfg, params, tokens, **kwargs)
        (_, logits), grads = _model_loss(cfg.replace(attention_impl="chunked"), params, tokens, **kwargs)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5 * np.abs(ref_logits).max())
    for (path, g), ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads),
                              strict=True):
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=str(path))


def test_whole_model_chunked_decoding_equals_xla(monkeypatch):
    monkeypatch.setattr(attn, "CHUNK_SIZE", 8)
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    cfg = get_preset("tiny", initializer_range=0.2)
    params = models.init_params(cfg, mesh)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 12)), jnp.int32)

    def decode(impl):
        step = jax.jit(lambda p, t, c: Transformer(cfg.replace(attention_impl=impl)).apply(
            {"params": p}, t, cache=c))
        with mesh_lib.use(mesh):
            logits, cache = step(params, tokens[:, :9], init_cache(cfg, 2, 20))
            pieces = [logits]
            for i in range(9, 12):
                logits, cache = step(params, tokens[:, i:i + 1], cache)
                pieces.append(logits)
        return np.concatenate(pieces, 1)

    ref = decode("xla")
    np.testing.assert_allclose(decode("chunked"), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_whole_model_chunked_training_memory_does_not_grow_like_the_scores(monkeypatch):
    # A training step of the whole model with its layers under a scan, where the mask is the same
    # for every layer: JAX once hoisted each block's mask and -inf fill out of the layer loop, as
    # large as the score matrix (see attention._tie). Doubling the heads at the same width
    # (head_dim halves) leaves every activation the same size except attention's per-head ones.
    # "xla" then holds at least the added heads' float32 scores, b * 4 * l * l * 4 bytes; "chunked"
    # only a few more [b, H, c, c] float32 blocks and a few float32 numbers per row and head. With
    # c = l / 8 a block is 1/64 of the scores, so a quarter of theirs is room for 16 blocks.
    monkeypatch.setattr(attn, "CHUNK_SIZE", 128)
    b, length = 1, 1024
    batch = jax.ShapeDtypeStruct((b, length), jnp.int32)

    def temp_bytes(impl, heads):
        cfg = get_preset("tiny", num_attention_heads=heads, num_key_value_heads=heads // 2,
                         scan_layers=True, remat="none", attention_impl=impl)

        def loss(params, tokens, segments):
            logits = Transformer(cfg).apply({"params": params}, tokens, segment_ids=segments)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

        lowered = jax.jit(jax.value_and_grad(loss)).lower(models.param_shapes(cfg), batch, batch)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    added_scores = b * 4 * length * length * 4
    growth = {impl: temp_bytes(impl, 8) - temp_bytes(impl, 4) for impl in ("xla", "chunked")}
    assert growth["xla"] > added_scores
    assert growth["chunked"] < added_scores / 4


@pytest.mark.parametrize("scan,remat", [(True, "none"), (False, "full")])
def test_whole_model_splash_equals_xla(scan, remat):
    # The model hands segment ids to attention when the mask is plain causal + segments (training
    # without an extra mask), which is what the splash kernel takes.
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    cfg = get_preset("tiny", initializer_range=0.2, scan_layers=scan, remat=remat)
    params = models.init_params(cfg, mesh)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 24)), jnp.int32)
    segments = jnp.asarray([[0] * 3 + [1] * 12 + [2] * 9] * 2 + [[1] * 24] * 2, jnp.int32)

    def run(impl):
        model = Transformer(cfg.replace(attention_impl=impl))

        def loss(p):
            logits = model.apply({"params": p}, tokens, segment_ids=segments)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

        with mesh_lib.use(mesh):
            return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, ref), grads_ref = run("xla")
    (_, out), grads = run("splash")
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_splash_model_refuses_an_extra_mask_and_a_cache():
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    cfg = get_preset("tiny", initializer_range=0.2, attention_impl="splash")
    params = models.init_params(cfg, mesh)
    tokens = jnp.zeros((2, 8), jnp.int32)
    model = Transformer(cfg)
    with mesh_lib.use(mesh), pytest.raises(ValueError, match="segment ids"):
        model.apply({"params": params}, tokens, extra_mask=jnp.ones((2, 8, 8), bool))
    with mesh_lib.use(mesh), pytest.raises(ValueError, match="segment ids"):
        model.apply({"params": params}, tokens, cache=init_cache(cfg, 2, 16))
