"""RL refinement: `train(config, workdir)` for ``config.objective.name == "rl"``.

A trained model is fine-tuned by policy gradient against a reward model trained here
(``config.objective.reward_model``) or a Python reward function (``config.objective.reward_fn``:
"task", a synthetic task's ground truth, or "module.path:function"): each step samples responses
with the KV-cache sampler, scores them, and updates with the same train step as every objective;
only the scoring differs between the two. Rollouts are a function of (seed, step), so a resumed run
continues exactly, and the ground-truth ``task_score`` logged beside the reward shows reward hacking
on synthetic tasks.

Details: docs/methods.md#rl-refinement-jaxalignmethodsrl
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from jaxalign import api, forward, modeldir, sample
from jaxalign import config as config_lib
from jaxalign import lora as lora_lib
from jaxalign import workdir as workdir_lib
from jaxalign.data import sources, synthetic
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.models import ModelConfig
from jaxalign.objectives import policy_gradient, registry
from jaxalign.objectives.policy_gradient import DEFAULTS
from jaxalign.train import optim
from jaxalign.train import run as run_lib
from jaxalign.train import state as state_lib
from jaxalign.train import step as step_lib

log = logging.getLogger(__name__)

# A Python reward: (prompts, responses) -> one finite float per response, as `reward_function` makes
# it from config.objective.reward_fn.
RewardFn = Callable[[list[str], list[str]], np.ndarray]
TASK_REWARD = "task"  # reward_fn="task": the synthetic task's ground-truth score


@dataclasses.dataclass(frozen=True)
class Rollout:
    batch: dict[str, np.ndarray]  # packed-row layout + "advantages", "old_logps"
    stats: dict[str, float]
    responses: list[str]


def train(config: ml_collections.ConfigDict, workdir: str | epath.PathLike) -> dict[str, Any]:
    """Refines ``config.init_from`` against ``config.objective.reward_model`` or ``reward_fn``; resumes
    like `loop.train`."""
    opts = _options(config)
    lora = lora_lib.from_config(config.get("lora"))  # LoRA adapters on the policy: docs/training.md
    with run_lib.Run(config, workdir) as run:
        data = sources.build(run_lib.data_config(config), run.workdir, config.seed)
        if data.schema != "preference":
            raise ValueError("RL draws its prompts from preference records; config.data gives "
                             f"{data.schema!r} records")
        section = policy_objective(config.init_from)
        policy = registry.make(section, data.tokenizer, seed=config.seed, schema=data.schema)
        start = api.load(config.init_from, run.mesh)  # the policy's own model config; config.model is unused
        cfg, reference = start.cfg, start.params
        if cfg.head != "lm":
            raise ValueError(f"config.init_from={config.init_from!r} is a reward model, not a policy")
        run_lib.check_context(cfg, config.seq_len)
        reward = (_reward_model(opts["reward_model"], run.mesh) if opts["reward_model"]
                  else reward_function(opts["reward_fn"], data.task))
        tx, schedule = optim.make_optimizer(config.optimizer)
        # The model trained is the policy's, whatever config.model says: record it, so that loading or
        # exporting this workdir builds the right shapes (an HF policy is no preset).
        run.resolved["model"] = cfg.to_dict()
        run.describe(cfg, policy.prompt_template, section.to_dict())
        stream = step_lib.Stream(policy_gradient.make_loss_fn(opts["clip"]), 1.0, config.microbatches)
        streams = {step_lib.SINGLE: stream}
        if lora is None:
            restored = run.restore(cfg, tx)
            if restored is not None:
                state = restored[0]
            else:
                params = jax.tree.map(jnp.copy, reference)  # the step donates the state; the reference stays
                state = state_lib.init_train_state(cfg, tx, run.mesh, config.seed, params=params)
            train_step = step_lib.make_train_step(cfg, tx, run.mesh, streams=streams, schedule=schedule)
            policy_params, saved = (lambda params: params), run.resolved
        else:
            state, base, saved = _start_lora(run, config, cfg, tx, reference, lora)
            train_step = step_lib.make_train_step(cfg, tx, run.mesh, streams=streams, schedule=schedule,
                                                  lora=lora, base_params=base)
            # Rollouts sample and score with the merged policy; the KL reference is the base with the
            # adapters off (merged with zero adapters: the base as the policy sees it, cast or quantised).
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            reference = lora_lib.merge(base, zeros, cfg, lora, run.mesh)
            policy_params = functools.partial(lora_lib.merge, base, cfg=cfg, lcfg=lora, mesh=run.mesh)
        context = _Context(cfg, run.mesh, data, policy, reward, reference, opts, policy_params)
        state = _loop(run, config, context, state, train_step, saved)
    summary = {"status": "done", "step": int(state.step), "workdir": str(run.workdir)}
    if config.num_samples > 0 and data.eval_prompts:
        summary.update(run_lib.write_samples(config, cfg, context.policy_params(state.params), run.mesh, data,
                                             policy, run.workdir))
    return summary


def _start_lora(run: run_lib.Run, config: ml_collections.ConfigDict, cfg: ModelConfig, tx: Any,
                initial: Any, lora: lora_lib.LoraConfig) -> tuple[Any, Any, dict[str, Any]]:
    """LoRA RL, as `loop._start_lora`: the frozen base made from the policy (`init_from`), the
    adapters' state (restored, or fresh: zero updates, so the first rollout is the policy's own) and
    the config a checkpoint records (with the base's reference, so export rebuilds and checks it)."""
    base = lora_lib.prepare_base(initial, cfg, lora, run.mesh)
    base_ref = {"init_from": config.init_from, **lora_lib.fingerprint(base)}

    def check(saved: dict[str, Any]) -> None:
        lora_lib.check_fingerprint(saved.get("lora_base"), base_ref, f"workdir {run.workdir}")

    restored = run.restore(cfg, tx, lora, check)
    state = restored[0] if restored is not None else state_lib.init_train_state(
        cfg, tx, run.mesh, config.seed, lora=lora)
    return state, base, {**run.resolved, "lora_base": base_ref}


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every rollout of a run reads."""

    cfg: ModelConfig
    mesh: Mesh
    data: sources.Data
    policy: registry.Objective
    reward: api.LM | RewardFn  # a reward model, or a checked function (`reward_function`)
    reference: Any
    opts: Mapping[str, Any]
    policy_params: Callable[[Any], Any]  # the train state's params -> the policy's full parameters


def _loop(run: run_lib.Run, config: ml_collections.ConfigDict, ctx: _Context, state: Any,
          train_step: Any, saved_config: dict[str, Any]) -> Any:
    """Rollout, then `updates_per_rollout` steps on it, until `total_steps`; logs and saves as configured."""
    opts, k = ctx.opts, ctx.opts["samples_per_prompt"]
    writer = run.metrics(int(state.step))
    for step in range(int(state.step) + 1, config.total_steps + 1):
        records = prompt_records(ctx.data.train, step, config.batch_size // k, config.seed)
        out = rollout(ctx.policy_params(state.params), ctx.reference, ctx.cfg, ctx.mesh, ctx.data.tokenizer,
                      ctx.policy, ctx.reward, records, opts=opts, seq_len=config.seq_len,
                      max_new_tokens=config.max_new_tokens, seed=config.seed * 1_000_003 + step,
                      task=ctx.data.task)
        t0 = time.perf_counter()
        for _ in range(opts["updates_per_rollout"]):
            state, metrics = train_step(state, out.batch)
        metrics = jax.device_get(metrics)
        run_lib.check_finite(metrics, step)
        seconds = time.perf_counter() - t0
        rows = out.batch["inputs"].size * opts["updates_per_rollout"]
        writer.advance()
        if step % config.log_every == 0 or step == config.total_steps:
            writer.write(step, {**metrics, **out.stats, "train_tokens_per_s": rows / seconds})
        if step % config.checkpoint_every == 0 or step == config.total_steps:
            run.checkpointer.save(step, state, {"step": step}, saved_config, force=True)
            writer.flush()
    return state


def _reward_model(path: str, mesh: Mesh) -> api.LM:
    rm = api.load(path, mesh)
    if rm.cfg.head != "score" or rm.tokenizer is None:
        raise ValueError(f"config.objective.reward_model={path!r} is not a reward model "
                         "with a tokenizer (train one with objective.name='reward')")
    return rm


def _options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    config_lib.check_keys(config.objective, ("name", *DEFAULTS), "config.objective (name='rl')")
    opts = {**DEFAULTS, **{k: v for k, v in config.objective.items() if k != "name"}}
    if not config.get("init_from"):
        raise ValueError("RL refines a trained model: set config.init_from (an SFT or edit-chain workdir)")
    model, fn = opts["reward_model"], opts["reward_fn"]
    if not isinstance(model, str) or not isinstance(fn, str):
        raise ValueError(f"config.objective.reward_model={model!r} and reward_fn={fn!r} must be strings")
    if bool(model) == bool(fn):
        raise ValueError("RL needs exactly one reward: config.objective.reward_model (a workdir trained with "
                         "objective.name='reward') or config.objective.reward_fn ('task' for a synthetic "
                         "task's ground truth, or 'module.path:function'); "
                         + (f"both are set (reward_model={model!r}, reward_fn={fn!r})" if model else
                            "neither is set"))
    if fn and fn != TASK_REWARD:
        _import_function(fn)  # a bad path fails now, before any data or model is loaded
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


def reward_function(spec: str, task: synthetic.Task | None = None) -> RewardFn:
    """``config.objective.reward_fn`` as a rollout's scorer: "task" scores each (prompt, response) with
    `task.score` (the synthetic task's ground truth), "module.path:function" calls the function
    (imported with importlib) as ``function(prompts, responses)``. Prompts are the records' prompts
    (without the policy's template), responses what the policy's objective reads back (an edit chain's
    aligned text), as a reward model sees them. The result is checked on every call: one finite float
    per response, or a ValueError naming the function."""
    name = f"config.objective.reward_fn={spec!r}"
    if spec == TASK_REWARD:
        if task is None:
            raise ValueError(f"{name} scores with a synthetic task's ground truth, but config.data is no "
                             "synthetic task; set data.task, or name a function 'module.path:function'")

        def function(prompts: list[str], responses: list[str]) -> list[float]:
            return [task.score(p, r) for p, r in zip(prompts, responses, strict=True)]
    else:
        function = _import_function(spec)

    def checked(prompts: list[str], responses: list[str]) -> np.ndarray:
        out = function(list(prompts), list(responses))
        try:
            rewards = np.asarray(out, np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} returned {type(out).__name__} {out!r:.200}, not a sequence of floats "
                             "(one per response)") from error
        if rewards.shape != (len(responses),):
            what = "a scalar" if rewards.ndim == 0 else f"shape {rewards.shape}"
            raise ValueError(f"{name} returned {what} for {len(responses)} responses; it must return one "
                             "float per response")
        bad = np.flatnonzero(~np.isfinite(rewards))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{name} returned a non-finite reward {rewards[i]} for response {i} "
                             f"({responses[i]!r:.200}); {bad.size} of {len(responses)} are not finite")
        return rewards

    return checked


def _import_function(spec: str) -> Callable[..., Any]:
    """The function "module.path:function" names, or a ValueError naming what is wrong with it."""
    name = f"config.objective.reward_fn={spec!r}"
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise ValueError(f"{name} must be {TASK_REWARD!r} or 'module.path:function' (e.g. "
                         "'my_rewards:length_reward'), a function (prompts, responses) -> floats")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{name}: cannot import module {module_name!r} ({type(error).__name__}: {error}); "
                         "is it on sys.path / PYTHONPATH?") from error
    function = getattr(module, attr, None)
    if function is None:
        raise ValueError(f"{name}: module {module_name!r} has no attribute {attr!r}")
    if not callable(function):
        raise ValueError(f"{name}: {module_name}.{attr} is a {type(function).__name__}, not a function")
    return function


def policy_objective(path: str | epath.PathLike) -> ml_collections.ConfigDict:
    """The objective section a policy was trained with (how it is prompted and read back), as its
    directory records it (an RL run records its policy's); plain SFT for a model of unknown training."""
    if workdir_lib.is_workdir(path):
        return ml_collections.ConfigDict(workdir_lib.objective(path))
    if modeldir.is_model_dir(path):
        return ml_collections.ConfigDict(modeldir.load_objective(path))
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
            policy: registry.Objective, reward: api.LM | RewardFn, records: Sequence[Mapping[str, Any]], *,
            opts: Mapping[str, Any], seq_len: int, max_new_tokens: int, seed: int, task=None) -> Rollout:
    """Samples, scores and packs one RL batch (docs/methods.md, steps 2 and 3); `reward` is a reward model
    or a function of (prompts, responses) (`reward_function`), the only part that differs between them."""
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
    old = forward.token_logps(params, cfg, mesh, batch)
    ref = forward.token_logps(reference, cfg, mesh, batch)
    w = batch["weights"]
    kl = np.sum(w * (old - ref), axis=1)
    coherence = np.sum(w * ref, axis=1) / np.maximum(w.sum(axis=1), 1)
    expanded = [r for r in records for _ in range(k)]
    responses = [policy.response(r, g, tokenizer) for r, g in zip(expanded, generated, strict=True)]
    contexts = [_text(r["prompt"]) for r in expanded]
    if isinstance(reward, api.LM):
        rewards = forward.score_texts(reward.params, reward.cfg, reward.mesh, reward.tokenizer, contexts,
                                      responses)
    else:
        rewards = np.asarray(reward(contexts, responses), np.float64)
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


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


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
