import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.models import Transformer, get_preset, init_cache
from jaxalign.models.llama import rope_inv_frequencies

MESHES = ["dp:1,fsdp:8,tp:1", "dp:2,fsdp:2,tp:2", "dp:1,fsdp:2,tp:4", "dp:8,fsdp:1,tp:1"]


def _cfg(**overrides):
    return get_preset("tiny", initializer_range=0.2, **overrides)


def _forward(cfg, params, mesh, tokens, **kwargs):
    with mesh_lib.use(mesh):
        return jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t, **kwargs))(params, tokens)


def _tokens(batch=8, length=16, vocab=256, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, length)), jnp.int32)


@pytest.mark.parametrize("scan", [True, False])
def test_same_logits_on_every_mesh_and_params_sharded_by_the_rules(scan):
    cfg = _cfg(scan_layers=scan)
    reference = None
    tokens = _tokens()
    for spec in MESHES:
        mesh = mesh_lib.make_mesh(spec)
        params = models.init_params(cfg, mesh, seed=0)
        expected = models.param_shardings(cfg, mesh)
        for (path, p), e in zip(
            jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(expected), strict=True
        ):
            assert p.sharding.is_equivalent_to(e, p.ndim), (spec, path)
        logits = np.asarray(_forward(cfg, params, mesh, tokens))
        if reference is None:
            reference = logits
        np.testing.assert_allclose(logits, reference, atol=1e-4 * np.abs(reference).max(), rtol=0)


def test_parameters_really_are_sharded():
    cfg = _cfg()
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    params = models.init_params(cfg, mesh)
    q = params["layers"]["self_attn"]["q_proj"]["kernel"]  # [layers, embed, heads, head_dim]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tp", None)
    assert q.addressable_shards[0].data.shape == (2, 32, 2, 16)
    emb = params["embed_tokens"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tp", "fsdp")
    assert params["norm"]["scale"].sharding.is_fully_replicated


def test_param_count_matches_the_tree():
    for cfg in [_cfg(), _cfg(tie_word_embeddings=True, attention_bias=True, attention_out_bias=True)]:
        shapes = jax.tree.leaves(models.abstract_params(cfg))
        assert sum(int(np.prod(s.shape)) for s in shapes) == cfg.num_params()


def test_scan_and_unrolled_layers_compute_the_same_function():
    mesh = mesh_lib.make_mesh("dp:1,fsdp:8,tp:1")
    scanned = models.init_params(_cfg(), mesh)
    unrolled = {k: v for k, v in scanned.items() if k != "layers"}
    for i in range(2):
        unrolled[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], scanned["layers"])
    tokens = _tokens()
    a = _forward(_cfg(), scanned, mesh, tokens)
    b = _forward(_cfg(scan_layers=False), unrolled, mesh, tokens)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_unroll_keeps_parameters_and_results(remat):
    mesh = mesh_lib.make_mesh("dp:1,fsdp:8,tp:1")
    params = models.init_params(_cfg(), mesh)
    tokens = _tokens()
    unrolled = _cfg(scan_unroll=2, remat=remat)
    assert jax.tree.map(jnp.shape, models.param_shapes(unrolled)) == jax.tree.map(jnp.shape, params)

    def loss(cfg):
        def f(p):
            return jax.nn.log_softmax(Transformer(cfg).apply({"params": p}, tokens)).mean()

        with mesh_lib.use(mesh):
            return jax.jit(jax.value_and_grad(f))(params)

    (l0, g0), (l1, g1) = loss(_cfg(remat=remat)), loss(unrolled)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)
    with pytest.raises(ValueError, match="scan_unroll"):
        _cfg(scan_unroll=0)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_changes_memory_not_results(remat):
    mesh = mesh_lib.make_mesh("dp:1,fsdp:8,tp:1")
    params = models.init_params(_cfg(), mesh)
    tokens = _tokens()

    def loss(cfg):
        def f(p):
            logits = Transformer(cfg).apply({"params": p}, tokens)
            return jax.nn.log_softmax(logits).mean()

        with mesh_lib.use(mesh):
            return jax.jit(jax.value_and_grad(f))(params)

    (l0, g0), (l1, g1) = loss(_cfg()), loss(_cfg(remat=remat))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


def test_dot_product_attention_backend_matches_xla():
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    params = models.init_params(_cfg(), mesh)
    tokens = _tokens()
    a = _forward(_cfg(), params, mesh, tokens)
    b = _forward(_cfg(attention_impl="dot_product"), params, mesh, tokens)
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())


@pytest.mark.parametrize("scan", [True, False])
def test_kv_cache_decoding_equals_full_forward(scan):
    # Scanned layers carry a stacked cache; unrolled ones a tuple of per-layer arrays.
    cfg = _cfg(scan_layers=scan)
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    params = models.init_params(cfg, mesh)
    tokens = _tokens(length=12)
    full = _forward(cfg, params, mesh, tokens)
    step = jax.jit(lambda p, t, c: Transformer(cfg).apply({"params": p}, t, cache=c))
    with mesh_lib.use(mesh):
        cache = init_cache(cfg, 8, 16)
        first, cache = step(params, tokens[:, :7], cache)
        pieces = [first]
        for i in range(7, 12):
            logits, cache = step(params, tokens[:, i : i + 1], cache)
            pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-4 * np.abs(full).max())
    assert int(cache["index"]) == 12
    # Keys head-major [L, b, K, s, d], values [L, b, K, d, s] (unrolled: a tuple of L such arrays):
    # the slots written are the 12 first.
    if not scan:
        assert type(cache["k"]) is tuple and len(cache["k"]) == 2
    k, v = np.asarray(cache["k"]), np.asarray(cache["v"])
    assert k.shape == (2, 8, 2, 16, 16) and v.shape == (2, 8, 2, 16, 16)
    assert np.all(k[:, :, :, 12:] == 0) and np.any(k[:, :, :, 11] != 0)
    assert np.all(v[..., 12:] == 0) and np.any(v[..., 11] != 0)


def test_packed_segments_do_not_see_each_other():
    cfg = _cfg()
    mesh = mesh_lib.make_mesh("dp:1,fsdp:8,tp:1")
    params = models.init_params(cfg, mesh)
    a, b = _tokens(1, 6, seed=1), _tokens(1, 10, seed=2)
    packed = jnp.concatenate([a, b], 1)
    segments = jnp.asarray([[1] * 6 + [2] * 10])
    positions = jnp.asarray([list(range(6)) + list(range(10))])
    batch = lambda x: jnp.tile(x, (8, 1))  # noqa: E731 - batch must divide the 8-way data axis
    out = _forward(cfg, params, mesh, batch(packed), positions=batch(positions), segment_ids=batch(segments))
    alone_a = _forward(cfg, params, mesh, batch(a))
    alone_b = _forward(cfg, params, mesh, batch(b))
    np.testing.assert_allclose(out[:, :6], alone_a, atol=1e-4 * np.abs(alone_a).max())
    np.testing.assert_allclose(out[:, 6:], alone_b, atol=1e-4 * np.abs(alone_b).max())


def test_extra_mask_hides_keys():
    cfg = _cfg()
    mesh = mesh_lib.make_mesh("dp:1,fsdp:8,tp:1")
    params = models.init_params(cfg, mesh)
    tokens = _tokens(length=8)
    keep = np.ones((8, 8, 8), bool)
    keep[:, 5, 2] = False  # query 5 may not see key 2
    masked = _forward(cfg, params, mesh, tokens, extra_mask=jnp.asarray(keep))
    plain = _forward(cfg, params, mesh, tokens)
    np.testing.assert_allclose(masked[:, :5], plain[:, :5], atol=1e-5)  # earlier rows untouched
    assert np.abs(masked[:, 5] - plain[:, 5]).max() > 1e-2


def test_llama3_rope_scaling_matches_reference_formula():
    cfg = _cfg(
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    )
    inv = rope_inv_frequencies(cfg)
    base = rope_inv_frequencies(_cfg(rope_theta=500000.0))
    wavelen = 2 * np.pi / base
    np.testing.assert_allclose(inv[wavelen < 16], base[wavelen < 16])  # high frequencies kept
    np.testing.assert_allclose(inv[wavelen > 64], base[wavelen > 64] / 8)  # low ones scaled
    mid = (wavelen >= 16) & (wavelen <= 64)
    assert np.all((inv[mid] <= base[mid]) & (inv[mid] >= base[mid] / 8))


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['hiden_size'\]"):
        get_preset("tiny", hiden_size=3)
    with pytest.raises(ValueError, match="remat"):
        get_preset("tiny", remat="sometimes")
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        get_preset("tiny", rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads"):
        get_preset("tiny", num_key_value_heads=3)


def test_presets_have_the_advertised_sizes():
    assert 6.5e9 < get_preset("7b").num_params() < 6.9e9
    assert 12.8e9 < get_preset("13b").num_params() < 13.2e9
    assert 68e9 < get_preset("70b").num_params() < 70e9
    assert 1.1e9 < get_preset("1b").num_params() < 1.4e9
