"""Batched, jit-compiled autoregressive generation with the model's KV cache.

    sample.generate(params, cfg, [[1, 5, 9], [1, 7]], mesh=mesh, max_new_tokens=32, top_p=0.9)

Layout. Prompts of different lengths are *left*-padded to one length P, so every row's last
prompt token sits in the same slot and all rows write the KV cache at one shared index. Pads
carry segment id 0 and real tokens segment 1, and positions count 0.. from each row's first
real token: the model then never lets a real token see a pad, so each row computes exactly what
it would alone. The whole padded prompt is prefilled in one call; then a `jax.lax.while_loop`
decodes one token per step until every row has emitted EOS or `max_new_tokens` is reached.

Bucketing. P and the generation length G are rounded up to a power of two (at least 16), and
the batch up to a multiple of the data-parallel size (dp * fsdp) with dummy rows that are
dropped on output. The step count and EOS are runtime values, so calls that land in the same
(batch, P, G) bucket reuse one compiled program; the cache holds P + G slots.

Randomness. Step i of row r draws from fold_in(fold_in(key(seed), i), r), so a row's samples do
not depend on the mesh or on how many dummy rows were added.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.models import ModelConfig, Transformer, init_cache

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Generation:
    """What `generate_arrays` returns; row r is valid in [:lengths[r]], zero after."""

    tokens: np.ndarray  # [n, max_new_tokens] int32 generated ids (prompt excluded)
    logprobs: np.ndarray  # [n, max_new_tokens] float32 log p(token | prefix), raw model (T=1, unfiltered)
    lengths: np.ndarray  # [n] int32, counting the EOS when one was emitted


def generate(params: Any, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *, mesh: Mesh,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0, eos_id: int | None = None, use_cache: bool = True) -> list[list[int]]:
    """Generated ids per prompt (not the prompt), ending at and including the first EOS.

    temperature 0 is greedy; otherwise samples softmax(logits / temperature) after top-k (0 =
    off) and nucleus top-p (1.0 = off) filtering. eos_id None means cfg.eos_token_id; if both are
    None no row stops early. use_cache=False recomputes the whole sequence each step (the
    reference the cache is tested and benchmarked against).
    """
    out = generate_arrays(params, cfg, prompts, mesh=mesh, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                          eos_id=eos_id, use_cache=use_cache)
    return [row[:n].tolist() for row, n in zip(out.tokens, out.lengths, strict=True)]


def keep_end(ids: Sequence[int], budget: int, bos_id: int | None) -> list[int]:
    """A prompt cut to at most `budget` ids by dropping the start of its text: a leading BOS stays,
    then the end (the part nearest the reply), so that prompt and generation fit the context."""
    ids = list(ids)
    if len(ids) <= budget:
        return ids
    if budget < 1:
        raise ValueError(f"no room for a prompt in {budget} positions")
    head = int(bos_id is not None and budget > 1 and ids[0] == bos_id)
    return ids[:head] + ids[len(ids) - (budget - head):]


def generate_arrays(params: Any, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *, mesh: Mesh,
                    max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                    seed: int = 0, eos_id: int | None = None, use_cache: bool = True) -> Generation:
    """Like `generate`, but as arrays with the log-probability of every generated token (RL)."""
    _check_args(cfg, prompts, max_new_tokens, temperature, top_k, top_p)
    n = len(prompts)
    if max_new_tokens == 0:
        return Generation(np.zeros((n, 0), np.int32), np.zeros((n, 0), np.float32), np.zeros(n, np.int32))
    eos = cfg.eos_token_id if eos_id is None else eos_id
    data_parallel = mesh.shape["dp"] * mesh.shape["fsdp"]
    batch = -(-n // data_parallel) * data_parallel
    prompt_len, gen_len = _bucket(max(len(p) for p in prompts)), _bucket(max_new_tokens)

    tokens = np.zeros((batch, prompt_len), np.int32)
    pad = np.full((batch,), prompt_len, np.int32)  # dummy rows: all padding
    for r, prompt in enumerate(prompts):
        pad[r] = prompt_len - len(prompt)
        tokens[r, pad[r]:] = prompt

    top_k = 0 if top_k >= cfg.vocab_size else top_k
    flags = _Flags(batch, prompt_len, gen_len, use_cache, greedy=temperature == 0.0, top_k=top_k,
                   use_top_p=top_p < 1.0)
    fn = _compiled(cfg, mesh, flags)
    with mesh_lib.use(mesh):
        sharded = [_put(x, mesh) for x in (tokens, pad)]
        scalars = (max_new_tokens, -1 if eos is None else eos, n, seed)
        out_tokens, logprobs, lengths = fn(params, *sharded, *map(np.int32, scalars),
                                           np.float32(temperature or 1.0), np.float32(top_p))
    return Generation(np.asarray(out_tokens)[:n, :max_new_tokens],
                      np.asarray(logprobs)[:n, :max_new_tokens], np.asarray(lengths)[:n])


def derive_seed(*keys: int) -> int:
    """A sampling seed that is a function of `keys` (e.g. run seed, round, step): a pipeline that
    seeds each generate call this way writes the same outputs when interrupted and resumed."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] & 0x7FFFFFFF)


def filter_logits(logits: jax.Array, top_k: int, top_p: jax.Array | None) -> jax.Array:
    """Sets logits outside the top-k and outside the top-p nucleus to -inf ([..., vocab])."""
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # Keep a token while the mass of the tokens ranked above it is below top_p; the most
        # likely token always stays, so a tiny top_p is greedy rather than empty.
        keep = (jnp.cumsum(probs, axis=-1) - probs < top_p).at[..., 0].set(True)
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


@dataclasses.dataclass(frozen=True)
class _Flags:
    """Everything that changes the compiled program (shapes and Python-level branches)."""

    batch: int
    prompt_len: int
    gen_len: int
    use_cache: bool
    greedy: bool
    top_k: int
    use_top_p: bool


def _bucket(n: int) -> int:
    return max(MIN_BUCKET, 1 << (n - 1).bit_length())


def _check_args(cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                temperature: float, top_k: int, top_p: float) -> None:
    if not prompts:
        raise ValueError("generate: prompts is empty")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"generate: prompt {i} is empty; give it at least one token (e.g. BOS)")
        bad = [t for t in prompt if not 0 <= int(t) < cfg.vocab_size]
        if bad:
            raise ValueError(f"generate: prompt {i} has token ids {bad[:5]} outside the vocabulary "
                             f"[0, {cfg.vocab_size})")
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be >= 0")
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    if len(prompts[longest]) + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(f"generate: prompt {longest} has {len(prompts[longest])} tokens; with "
                         f"max_new_tokens={max_new_tokens} that passes the model's context of "
                         f"{cfg.max_position_embeddings} positions (max_position_embeddings); shorten the "
                         "prompt or lower max_new_tokens")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: need temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got "
                         f"temperature={temperature}, top_k={top_k}, top_p={top_p}")


def _put(x: np.ndarray, mesh: Mesh) -> jax.Array:
    # make_array_from_callback works on one host and on many (each feeds its own shards).
    sharding = _batch_sharding(x.shape, mesh)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _batch_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    return mesh_lib.logical_sharding(("batch", "length")[: len(shape)], shape, mesh)


@functools.lru_cache(maxsize=64)
def _compiled(cfg: ModelConfig, mesh: Mesh, flags: _Flags):
    """The jitted prefill + decode loop for one bucket (cached so a repeat call does not retrace)."""
    batch, total = flags.batch, flags.prompt_len + flags.gen_len
    scalar = NamedSharding(mesh, PartitionSpec())
    in_shardings = (models.param_shardings(cfg, mesh), _batch_sharding((batch, flags.prompt_len), mesh),
                    _batch_sharding((batch,), mesh)) + (scalar,) * 6
    # Outputs are small; replicating them lets every host read them with np.asarray.
    fn = functools.partial(_generate_loop, cfg=cfg, flags=flags,
                           cache_sharding=models.cache_shardings(_decode_config(cfg), mesh, batch, total))
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=(scalar, scalar, scalar))


def unstack_layers(cfg: ModelConfig, params: Any) -> tuple[ModelConfig, Any]:
    """The same model with one parameter subtree per layer (`scan_layers=False`).

    Inside the decode loop a scanned stack would slice every layer's weights out of the stacked
    arrays on every step (XLA does not hoist the copies out of the while loop): on CPU that was
    a third of a decode step. Slicing once per call, before the loop, removes it. It is done on
    CPU only: the copy holds a second set of weights for the call, which a large model on an
    accelerator may not have room for, for a gain not measured there.
    """
    decode_cfg = _decode_config(cfg)
    if decode_cfg.scan_layers == cfg.scan_layers:
        return cfg, params
    stacked = params["layers"]
    layers = {f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], stacked)
              for i in range(cfg.num_hidden_layers)}
    rest = {k: v for k, v in params.items() if k != "layers"}
    return decode_cfg, {**rest, **layers}


def _decode_config(cfg: ModelConfig) -> ModelConfig:
    """The model config generation runs: unrolled layers on CPU (see unstack_layers)."""
    return dataclasses.replace(cfg, scan_layers=cfg.scan_layers and jax.default_backend() != "cpu")


def _generate_loop(params, prompt, pad, max_new, eos, num_real, seed, temperature, top_p, *,
                   cfg: ModelConfig, flags: _Flags, cache_sharding):
    cfg, params = unstack_layers(cfg, params)
    model = Transformer(cfg)
    batch, prompt_len, gen_len = flags.batch, flags.prompt_len, flags.gen_len
    slots = jnp.arange(prompt_len + gen_len, dtype=jnp.int32)
    segments = (slots[None, :] >= pad[:, None]).astype(jnp.int32)
    positions = jnp.maximum(slots[None, :] - pad[:, None], 0)
    # One buffer holds prompt and generation; the no-cache path runs the model over all of it
    # (causality hides the not-yet-written slots, which hold token 0).
    seqs = jnp.concatenate([prompt, jnp.zeros((batch, gen_len), jnp.int32)], axis=1)
    rows = jnp.arange(batch, dtype=jnp.int32)
    key = jax.random.key(seed)

    def run(seqs, cache, i, prefill=False):
        """Logits [batch, vocab] predicting generated token i (slot prompt_len + i)."""
        if not flags.use_cache:
            logits = model.apply({"params": params}, seqs, positions, segments)
            return jax.lax.dynamic_index_in_dim(logits, prompt_len + i - 1, axis=1, keepdims=False), None
        # Prefill feeds the whole padded prompt; a decode step feeds only the previous token.
        start, length = (0, prompt_len) if prefill else (prompt_len + i - 1, 1)
        window = lambda x: jax.lax.dynamic_slice_in_dim(x, start, length, axis=1)
        logits, cache = model.apply({"params": params}, window(seqs), window(positions),
                                    window(segments), cache=cache)
        return logits[:, -1], cache

    def emit(i, seqs, logprobs, lengths, done, logits):
        """Chooses token i for every row and records it; finished rows get 0."""
        all_logprobs = jax.nn.log_softmax(logits, axis=-1)
        if flags.greedy:
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            scaled = filter_logits(logits / temperature, flags.top_k, top_p if flags.use_top_p else None)
            keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, i), rows)
            token = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
        token = jnp.where(done, 0, token)
        logprob = jnp.where(done, 0.0, jnp.take_along_axis(all_logprobs, token[:, None], -1)[:, 0])
        seqs = jax.lax.dynamic_update_index_in_dim(seqs, token, prompt_len + i, axis=1)
        logprobs = jax.lax.dynamic_update_index_in_dim(logprobs, logprob, i, axis=1)
        lengths = jnp.where(done, lengths, i + 1)
        return seqs, logprobs, lengths, done | (token == eos)

    cache = None
    if flags.use_cache:
        cache = jax.lax.with_sharding_constraint(init_cache(cfg, batch, prompt_len + gen_len),
                                                 cache_sharding)
    zero = jnp.zeros((), jnp.int32)
    logits, cache = run(seqs, cache, zero, prefill=True)
    state = emit(zero, seqs, jnp.zeros((batch, gen_len), jnp.float32), jnp.zeros((batch,), jnp.int32),
                 rows >= num_real, logits)  # dummy rows start out finished

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < max_new) & ~jnp.all(done)

    def body(carry):
        i, seqs, logprobs, lengths, done, cache = carry
        logits, cache = run(seqs, cache, i)
        return (i + 1, *emit(i, seqs, logprobs, lengths, done, logits), cache)

    _, seqs, logprobs, lengths, _, _ = jax.lax.while_loop(cond, body, (zero + 1, *state, cache))
    return seqs[:, prompt_len:], logprobs, lengths
