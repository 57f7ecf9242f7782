import functools

import jax
import numpy as np
import pytest

from jaxalign import mesh as mesh_lib
from jaxalign import models, sample
from jaxalign.models import Transformer, get_preset

# A large init makes logits peaked, so greedy paths have no near-ties between meshes/paths.
CFG = get_preset("tiny", initializer_range=0.2)
MESH = "dp:2,fsdp:2,tp:2"
PROMPTS = [[1, 5, 9, 33, 70], [1, 7], [3, 4, 5, 6, 7, 8, 9, 10, 11]]
NEW = 12


@pytest.fixture(scope="module")
def setup():
    mesh = mesh_lib.make_mesh(MESH)
    return mesh, models.init_params(CFG, mesh, seed=0)


def _gen(setup, prompts=PROMPTS, **kwargs):
    mesh, params = setup
    kwargs = {"max_new_tokens": NEW, "eos_id": -1, **kwargs}
    return sample.generate(params, CFG, prompts, mesh=mesh, **kwargs)


@functools.lru_cache
def _forward(mesh):
    return jax.jit(lambda p, t: Transformer(CFG).apply({"params": p}, t))


def _logits(setup, seq, width=32):
    """Full-forward logits for one unpadded sequence (padded at the right: causality hides it)."""
    mesh, params = setup
    tokens = np.zeros((1, width), np.int32)
    tokens[0, : len(seq)] = seq
    with mesh_lib.use(mesh):
        return np.asarray(_forward(mesh)(params, tokens))[0, : len(seq)]


def test_kv_cache_generation_equals_full_recomputation(setup):
    cached = _gen(setup, use_cache=True)
    assert [len(row) for row in cached] == [NEW] * len(PROMPTS)
    assert cached == _gen(setup, use_cache=False)


def test_greedy_equals_a_manual_argmax_loop_over_the_full_forward(setup):
    for prompt, row in zip(PROMPTS, _gen(setup, max_new_tokens=8), strict=True):
        seq = list(prompt)
        for _ in range(8):
            seq.append(int(np.argmax(_logits(setup, seq)[-1])))
        assert row == seq[len(prompt):]


def test_unstacked_layers_compute_the_scanned_model(setup):
    mesh, params = setup
    cfg, unstacked = sample.unstack_layers(CFG, params)
    assert not cfg.scan_layers and "layers" not in unstacked
    tokens = np.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 16)), np.int32)
    with mesh_lib.use(mesh):
        scanned = np.asarray(_forward(mesh)(params, tokens))
        unrolled_forward = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))
        unrolled = np.asarray(unrolled_forward(unstacked, tokens))
    np.testing.assert_allclose(unrolled, scanned, atol=1e-5 * np.abs(scanned).max())


def test_mixed_length_batch_equals_one_by_one(setup):
    # The 20-token prompt lifts the batch into the 32-slot bucket, so the short rows get 16
    # more pads than when they run alone.
    prompts = [*PROMPTS, list(range(20, 40))]
    together = _gen(setup, prompts)
    assert together == [_gen(setup, [p])[0] for p in prompts]
    assert len({tuple(r) for r in together}) == len(prompts)  # rows really differ


def test_logprobs_are_the_model_log_softmax_of_the_chosen_tokens(setup):
    mesh, params = setup
    out = sample.generate_arrays(params, CFG, PROMPTS[:2], mesh=mesh, max_new_tokens=6, eos_id=-1,
                                 temperature=1.0, seed=5)
    assert out.tokens.shape == out.logprobs.shape == (2, 6) and list(out.lengths) == [6, 6]
    for prompt, toks, lps in zip(PROMPTS, out.tokens, out.logprobs, strict=False):
        logits = _logits(setup, list(prompt) + toks.tolist())[len(prompt) - 1 : -1]
        expected = jax.nn.log_softmax(logits, axis=-1)[np.arange(6), toks]
        np.testing.assert_allclose(lps, expected, atol=1e-4)


def test_stops_at_eos_and_respects_max_new_tokens(setup):
    mesh, params = setup
    full = _gen(setup)
    row = full[0]
    k = next(i for i in range(2, NEW) if row[i] not in row[:i])  # first fresh token after step 2
    eos = row[k]
    stopped = _gen(setup, eos_id=eos)
    assert stopped[0] == row[: k + 1]
    for other, ref in zip(stopped[1:], full[1:], strict=True):  # other rows stop at their own EOS
        assert other == (ref[: ref.index(eos) + 1] if eos in ref else ref)
    # eos_id=None falls back to the config's EOS.
    cfg_eos = CFG.replace(eos_token_id=eos)
    assert sample.generate(params, cfg_eos, PROMPTS[:1], mesh=mesh, max_new_tokens=NEW)[0] == row[: k + 1]
    arrays = sample.generate_arrays(params, CFG, PROMPTS[:1], mesh=mesh, max_new_tokens=NEW, eos_id=eos)
    assert arrays.lengths[0] == k + 1 and not arrays.tokens[0, k + 1 :].any()
    assert [len(r) for r in _gen(setup, max_new_tokens=3)] == [3, 3, 3]
    assert _gen(setup, max_new_tokens=0) == [[], [], []]


def test_sampling_is_deterministic_per_seed(setup):
    a = _gen(setup, temperature=1.0, seed=1)
    assert a == _gen(setup, temperature=1.0, seed=1)
    assert a != _gen(setup, temperature=1.0, seed=2)
    assert a != _gen(setup)  # really sampled, not greedy
    assert a == _gen(setup, temperature=1.0, seed=1, use_cache=False)
    # A row's samples do not depend on what else is in the batch.
    assert _gen(setup, PROMPTS[:1], temperature=1.0, seed=1)[0] == a[0]


def test_top_k_1_and_tiny_top_p_are_greedy(setup):
    greedy = _gen(setup)
    assert _gen(setup, temperature=1.0, top_k=1, seed=3) == greedy
    assert _gen(setup, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_filter_logits_keeps_the_nucleus():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
    assert kept(sample.filter_logits(logits, 0, 0.7)) == [True, True, False, False]
    assert kept(sample.filter_logits(logits, 0, 0.85)) == [True, True, True, False]
    assert kept(sample.filter_logits(logits, 2, None)) == [True, True, False, False]
    assert kept(sample.filter_logits(logits, 3, 0.5)) == [True, False, False, False]


def test_same_greedy_output_on_another_mesh(setup):
    mesh = mesh_lib.make_mesh("dp:1,fsdp:1,tp:8")
    params = jax.device_put(setup[1], models.param_shardings(CFG, mesh))
    assert sample.generate(params, CFG, PROMPTS, mesh=mesh, max_new_tokens=NEW, eos_id=-1) == _gen(setup)


def test_calls_in_one_bucket_compile_once(setup, monkeypatch):
    traces = []
    loop = sample._generate_loop
    monkeypatch.setattr(sample, "_generate_loop", lambda *a, **k: traces.append(1) or loop(*a, **k))
    sample._compiled.cache_clear()
    _gen(setup, [[1, 2, 3]], max_new_tokens=5)
    _gen(setup, [[1, 2, 3, 4, 5, 6, 7], [9]], max_new_tokens=9, eos_id=3)  # same (4, 16, 16) bucket
    assert len(traces) == 1


def test_bad_input_is_named(setup):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        _gen(setup, [[1], []])
    with pytest.raises(ValueError, match=r"prompt 0 has token ids \[256\]"):
        _gen(setup, [[1, 256]])
    with pytest.raises(ValueError, match="top_p"):
        _gen(setup, top_p=0.0)
    # The tiny preset has 512 positions: 510 prompt tokens + 3 new ones do not fit, + 2 do.
    with pytest.raises(ValueError, match=r"prompt 1 has 510 tokens; with max_new_tokens=3 that passes the "
                                         r"model's context of 512 positions"):
        _gen(setup, [[1], [1] * 510], max_new_tokens=3)
