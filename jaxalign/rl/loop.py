"""RL refinement: `train(config, workdir)` for ``config.objective.name == "rl"``.

    jaxalign train --config experiments/edit_chain_synthetic.py:rl \\
        --config.init_from=workdirs/edit_chain --config.objective.reward_model=workdirs/reward

A trained model (``config.init_from``: an SFT, edit-chain or CoH workdir, or a model directory) is
fine-tuned by policy gradient (`jaxalign.rl.policy_gradient`) against a reward model trained in
this codebase (``objective.reward_model``: a workdir of ``objective.name = "reward"``). Each step:

1. takes ``batch_size / samples_per_prompt`` prompts from the training records (a fixed
   permutation per epoch drawn from the seed, so step s always sees the same prompts);
2. samples ``samples_per_prompt`` responses to each with the KV-cache sampler, prompted as the
   policy was trained (`registry.Objective.prompt`: an edit-chain model sees the unaligned draft);
3. scores each response (the aligned text of an edit chain, `Objective.response`) with the reward
   model, and computes the per-token log-probabilities of the sampled tokens under the policy and
   the frozen reference (the initial policy) in one forward each;
4. forms the returns and leave-one-out advantages and takes ``updates_per_rollout`` optimiser steps
   on the rollout with the train step of every other objective (sharded, accumulated, donated).

Rollouts are a function of (seed, step), so a resumed run continues exactly as an uninterrupted one
would, and the optimizer state is checkpointed like any training run. Logged per step: ``reward``
(the reward model's mean), ``kl`` (mean sampled KL to the reference, summed over a response),
``entropy``, ``return``, ``response_tokens``, ``rollout_tokens_per_s`` (generated tokens per second
of sampling), ``train_tokens_per_s`` (row tokens per second of the updates) and, on a synthetic task,
``task_score``: the ground-truth judge of the same responses, which is how reward hacking shows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign import api, sample
from jaxalign import config as config_lib
from jaxalign import mesh as mesh_lib
from jaxalign.data import sources
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.eval import scoring
from jaxalign.models import ModelConfig, Transformer
from jaxalign.objectives import lm, registry
from jaxalign.rl import policy_gradient, reward
from jaxalign.train import loop, optim
from jaxalign.train import state as state_lib
from jaxalign.train import step as step_lib
from jaxalign.train.checkpointing import Checkpointer
from jaxalign.train.metrics import MetricsWriter

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "reward_model": "",  # a reward-model workdir or model directory (head "score")
    "samples_per_prompt": 4,  # k >= 2: the leave-one-out baseline needs other samples
    "kl_coef": 0.05,
    "coherence_coef": 0.0,
    "clip": 0.0,  # PPO ratio clipping; 0 = plain REINFORCE
    "updates_per_rollout": 1,
    "temperature": 1.0,
    "top_p": 1.0,
}


def default_config() -> ml_collections.ConfigDict:
    """The objective section of an RL run."""
    return ml_collections.ConfigDict({"name": "rl", **DEFAULTS})


@dataclasses.dataclass(frozen=True)
class Rollout:
    batch: dict[str, np.ndarray]  # packed-row layout + "advantages", "old_logps"
    stats: dict[str, float]
    responses: list[str]


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Refines ``config.init_from`` against ``config.objective.reward_model``; resumes like `loop.train`."""
    config_lib.check_keys(config, loop.TOP_KEYS, "the config")
    opts = _options(config)
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh_lib.make_mesh(config.mesh)
    init_from = Path(config.init_from)
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.tokenizer = data_cfg.tokenizer or str(loop._tokenizer_dir(init_from))
    data = sources.build(data_cfg, workdir, config.seed)
    if data.schema != "preference":
        raise ValueError(f"RL draws its prompts from preference records; config.data gives {data.schema!r} "
                         "records")
    policy = registry.make(policy_objective(init_from), data.tokenizer, seed=config.seed, schema=data.schema)
    start = api.load(init_from, mesh)  # the policy's own model config; config.model is not used
    cfg, reference = start.cfg, start.params
    if cfg.head != "lm":
        raise ValueError(f"config.init_from={str(init_from)!r} is a reward model, not a policy")
    rm = api.load(opts["reward_model"], mesh)
    if rm.cfg.head != "score" or rm.tokenizer is None:
        raise ValueError(f"config.objective.reward_model={opts['reward_model']!r} is not a reward model "
                         "with a tokenizer (train one with objective.name='reward')")

    tx, schedule = optim.make_optimizer(config.optimizer)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints,
                                save_every=config.checkpoint_every)
    resolved = json.loads(config_lib.to_json(config))
    # The model trained is the policy's, whatever config.model says: record it, so that loading or
    # exporting this workdir builds the right shapes (an HF policy is no preset).
    resolved["model"] = cfg.to_dict()
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    if checkpointer.latest_step() is not None:
        state, _, _ = checkpointer.restore(state_lib.abstract_train_state(cfg, tx, mesh))
        log.info("resumed RL from step %d in %s", int(state.step), workdir)
    else:
        params = jax.tree.map(jnp.copy, reference)  # the step donates the state; the reference stays
        state = state_lib.init_train_state(cfg, tx, mesh, config.seed, params=params)
    stream = step_lib.Stream(policy_gradient.make_loss_fn(opts["clip"]), 1.0, config.microbatches)
    train_step = step_lib.make_train_step(cfg, tx, mesh, streams={step_lib.SINGLE: stream}, schedule=schedule)

    k = opts["samples_per_prompt"]
    writer = MetricsWriter(workdir, config.total_steps, int(state.step))
    try:
        for step in range(int(state.step) + 1, config.total_steps + 1):
            records = prompt_records(data.train, step, config.batch_size // k, config.seed)
            out = rollout(state.params, reference, cfg, mesh, data.tokenizer, policy, rm, records, opts=opts,
                          seq_len=config.seq_len, max_new_tokens=config.max_new_tokens,
                          seed=config.seed * 1_000_003 + step, task=data.task)
            t0 = time.perf_counter()
            for _ in range(opts["updates_per_rollout"]):
                state, metrics = train_step(state, out.batch)
            metrics = jax.device_get(metrics)
            loop._check_finite(metrics, step)
            seconds = time.perf_counter() - t0
            rows = out.batch["inputs"].size * opts["updates_per_rollout"]
            writer.advance()
            if step % config.log_every == 0 or step == config.total_steps:
                writer.write(step, {**metrics, **out.stats, "train_tokens_per_s": rows / seconds})
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                checkpointer.save(step, state, {"step": step}, resolved, force=True)
    finally:
        checkpointer.wait()
        checkpointer.close()
        writer.close()
    summary = {"status": "done", "step": int(state.step), "workdir": str(workdir)}
    if config.num_samples > 0 and data.eval_prompts:
        summary.update(loop._samples(config, cfg, state.params, mesh, data, policy, workdir))
    return summary


def _options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    config_lib.check_keys(config.objective, ("name", *DEFAULTS), "config.objective (name='rl')")
    opts = {**DEFAULTS, **{k: v for k, v in config.objective.items() if k != "name"}}
    if not config.get("init_from"):
        raise ValueError("RL refines a trained model: set config.init_from (an SFT or edit-chain workdir)")
    if not opts["reward_model"]:
        raise ValueError("RL needs config.objective.reward_model (a workdir trained with "
                         "objective.name='reward')")
    k = opts["samples_per_prompt"]
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"config.objective.samples_per_prompt={k!r} must be an integer >= 2 "
                         "(the leave-one-out baseline needs other samples)")
    if config.batch_size % k:
        raise ValueError(f"config.batch_size={config.batch_size} (rollouts per step) must be a multiple of "
                         f"objective.samples_per_prompt={k}")
    if opts["updates_per_rollout"] < 1:
        raise ValueError(f"config.objective.updates_per_rollout={opts['updates_per_rollout']} must be >= 1")
    pretrain = config.get("pretrain")
    if pretrain is not None and pretrain.get("weight"):
        raise ValueError("config.pretrain is not supported by RL runs; set pretrain.weight = 0")
    return opts


def policy_objective(workdir: str | Path) -> ml_collections.ConfigDict:
    """The objective section a policy was trained with (how it is prompted and read back), through
    any RL runs on top of it; plain SFT for a model directory without a training config."""
    init_from = Path(workdir)
    path = init_from / "config.json"
    if (init_from / "checkpoints").is_dir() and path.is_file():
        section = json.loads(path.read_text()).get("objective", {})
        if section.get("name") == "rl":  # RL on top of RL: prompted as the first policy was
            return policy_objective(Path(json.loads(path.read_text())["init_from"]))
        return ml_collections.ConfigDict(section)
    return registry.default_config("sft")


def prompt_records(records: Sequence[Mapping[str, Any]], step: int, n: int,
                   seed: int) -> list[Mapping[str, Any]]:
    """The n records of `step` (1-based): consecutive slices of a per-epoch permutation of `records`."""
    out = []
    for index in range((step - 1) * n, step * n):
        epoch, i = divmod(index, len(records))
        order = np.random.default_rng([seed, epoch]).permutation(len(records))
        out.append(records[int(order[i])])
    return out


def rollout(params: Any, reference: Any, cfg: ModelConfig, mesh: Mesh, tokenizer: Tokenizer,
            policy: registry.Objective, rm: api.LM, records: Sequence[Mapping[str, Any]], *,
            opts: Mapping[str, Any], seq_len: int, max_new_tokens: int, seed: int, task=None) -> Rollout:
    """Samples, scores and packs one RL batch (module docstring, steps 2 and 3)."""
    k = opts["samples_per_prompt"]
    add_bos = tokenizer.bos_id is not None
    prompts = [tokenizer.encode(policy.prompt(r), add_bos=add_bos) for r in records]
    t0 = time.perf_counter()
    gen = sample.generate_arrays(params, cfg, [p for p in prompts for _ in range(k)], mesh=mesh,
                                 max_new_tokens=max_new_tokens, temperature=opts["temperature"],
                                 top_p=opts["top_p"], seed=seed, eos_id=tokenizer.eos_id)
    sampling_s = time.perf_counter() - t0
    generated = [row[:n].tolist() for row, n in zip(gen.tokens, gen.lengths, strict=True)]
    batch = rows([p for p in prompts for _ in range(k)], generated, seq_len)
    old = token_logps(params, cfg, mesh, batch)
    ref = token_logps(reference, cfg, mesh, batch)
    w = batch["weights"]
    kl = np.sum(w * (old - ref), axis=1)
    coherence = np.sum(w * ref, axis=1) / np.maximum(w.sum(axis=1), 1)
    expanded = [r for r in records for _ in range(k)]
    responses = [policy.response(r, g, tokenizer) for r, g in zip(expanded, generated, strict=True)]
    contexts = [r["prompt"] for r in expanded]
    rewards = reward.score_texts(rm.params, rm.cfg, rm.mesh, rm.tokenizer, contexts, responses)
    returns = rewards + opts["coherence_coef"] * coherence - opts["kl_coef"] * kl
    advantages = policy_gradient.leave_one_out(returns.reshape(-1, k)).reshape(-1)
    batch["advantages"] = (w > 0) * advantages[:, None].astype(np.float32)
    batch["old_logps"] = old
    stats = {
        "reward": float(np.mean(rewards)), "kl": float(np.mean(kl)), "coherence": float(np.mean(coherence)),
        "return": float(np.mean(returns)), "response_tokens": float(np.mean(gen.lengths)),
        "rollout_tokens_per_s": float(np.sum(gen.lengths) / sampling_s),
    }
    if task is not None:
        scores = [task.score(c, r) for c, r in zip(contexts, responses, strict=True)]
        stats["task_score"] = float(np.mean(scores))
    return Rollout(batch, stats, responses)


_INT_KEYS = ("inputs", "targets", "segment_ids", "positions")


def rows(prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]],
         seq_len: int) -> dict[str, np.ndarray]:
    """One sample per row in packing.py's layout, weighted on the generated tokens only."""
    n = len(prompts)
    batch = {key: np.zeros((n, seq_len), np.int32) for key in _INT_KEYS}
    batch["weights"] = np.zeros((n, seq_len), np.float32)
    for r, (prompt, response) in enumerate(zip(prompts, generated, strict=True)):
        tokens = np.asarray([*prompt, *response], np.int32)
        length = len(tokens) - 1
        if length > seq_len:
            raise ValueError(f"a rollout of {len(prompt)} prompt + {len(response)} generated tokens does not "
                             f"fit config.seq_len={seq_len}; raise seq_len or lower max_new_tokens")
        batch["inputs"][r, :length] = tokens[:-1]
        batch["targets"][r, :length] = tokens[1:]
        batch["segment_ids"][r, :length] = 1
        batch["positions"][r, :length] = np.arange(length)
        batch["weights"][r, len(prompt) - 1:length] = 1.0
    return batch


def token_logps(params: Any, cfg: ModelConfig, mesh: Mesh, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """log p(targets) per position [rows, seq_len] (float32, 0 where the weight is 0)."""
    keys = ("inputs", "targets", "weights", "segment_ids", "positions")
    with mesh_lib.use(mesh):
        placed = {key: scoring.put_rows(np.asarray(batch[key]), mesh) for key in keys}
        return np.asarray(_logps_fn(cfg, mesh)(params, placed))


@functools.lru_cache(maxsize=16)
def _logps_fn(cfg: ModelConfig, mesh: Mesh):
    model = Transformer(cfg)

    def fn(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
        logits = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                             segment_ids=batch["segment_ids"])
        return jnp.where(batch["weights"] > 0, lm.token_logps(logits, batch["targets"]), 0.0)

    return jax.jit(fn, out_shardings=NamedSharding(mesh, PartitionSpec()))
