"""The training loop: one readable function, `train(config, workdir)`.

Re-running the same command in the same workdir resumes from the latest checkpoint, data
order included: the data iterator's state is saved with the model, and every random draw is a
function of (seed, step). SIGTERM (TPU preemption) and Ctrl-C save a checkpoint and return; a NaN
or Inf loss stops the run before anything non-finite is saved, and sets aside the checkpoint whose
parameters gave it (docs/training.md, robustness).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from jaxalign import api, modeldir, models
from jaxalign import lora as lora_lib
from jaxalign import workdir as workdir_lib
from jaxalign.data import examples, hosts, packing, pipeline, sources
from jaxalign.models import reward as reward_model
from jaxalign.objectives import lm, registry
from jaxalign.train import metrics as metrics_lib
from jaxalign.train import optim
from jaxalign.train import run as run_lib
from jaxalign.train import state as state_lib
from jaxalign.train import step as step_lib

log = logging.getLogger(__name__)


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> models.ModelConfig:
    if "preset" not in config.model:  # a complete model config, as an RL workdir records its policy's
        return models.from_dict(config.model.to_dict(), source=f"{config.get('init_from', '')} model")
    overrides = {k: v for k, v in config.model.to_dict().items() if k != "preset"}
    overrides.setdefault("vocab_size", vocab_size)
    overrides.setdefault("head", registry.head(config.get("objective", {})))  # a reward model: "score"
    return models.get_preset(config.model.preset, **overrides)


def train(config: ml_collections.ConfigDict, workdir: str | epath.PathLike) -> dict[str, Any]:
    """Trains (or resumes) and returns a summary: final step, last loss, samples and score.

    ``config.init_from`` (optional) starts from a trained model (a train workdir, a jaxalign model
    directory or a Hugging Face directory) instead of random parameters, and uses its tokenizer;
    ``config.pretrain`` (optional, `sources.default_pretrain_config`) adds the plain-text stream.
    The reference model of DPO is the initial model: `init_from`, or the seed's initialisation.
    RL refinement (`registry.is_rl`) has a loop of its own, `jaxalign.methods.rl.train`.
    """
    if registry.is_rl(config.get("objective", {})):
        raise ValueError("config.objective.name='rl' is trained by jaxalign.methods.rl.train "
                         "(`jaxalign train` dispatches there)")
    # Every error a config can show without data, before the workdir or a tokenizer is written (the
    # model section's with a stand-in vocabulary: the real one is not known yet).
    run_lib.check_context(model_config(config, vocab_size=256), config.seq_len)
    lora = lora_lib.from_config(config.get("lora"))  # LoRA / QLoRA: docs/training.md#lora-and-qlora
    if lora is not None:
        lora_lib.targets(model_config(config, vocab_size=256), lora)  # a pattern matching nothing
    registry.check(config.get("objective", {}))
    sources.check(run_lib.data_config(config), config.get("pretrain"))
    if config.data.get("prompt_template"):  # the model's own chat template
        registry.check_chat_template(config.get("objective", {}))
    optim.make_optimizer(config.optimizer)
    with run_lib.Run(config, workdir) as run:
        log.info("reading the data and its tokenizer (a new data set is built once)...")
        data = _build_data(run_lib.data_config(config), run.workdir, config)
        vocab = data.tokenizer.vocab_size
        objective = registry.make(config.objective, data.tokenizer, seed=config.seed, schema=data.schema)
        if data.tokenizer.vocab_size != vocab and jax.process_index() == 0:  # the objective's markers: keep
            data.tokenizer.save_pretrained(run.workdir / workdir_lib.TOKENIZER)
        if objective.head != "lm" and data.pretrain is not None:
            raise ValueError(f"config.pretrain.weight > 0 trains language modelling, which a "
                             f"{objective.name!r} model (a scalar head) cannot do; set pretrain.weight = 0")
        cfg = model_config(config, data.tokenizer.vocab_size)
        if cfg.vocab_size < data.tokenizer.vocab_size:
            raise ValueError(f"config.model.vocab_size={cfg.vocab_size} is smaller than the "
                             f"tokenizer's {data.tokenizer.vocab_size}")
        tx, schedule = optim.make_optimizer(config.optimizer)
        batches, pack_stats = _batches(config, data, objective, run.mesh)
        run.describe(cfg, objective.prompt_template, config.objective.to_dict())
        log.info("the model: the latest checkpoint if there is one, else %s...",
                 f"init_from={config.init_from}" if config.get("init_from") else "a random initialisation")
        streams = _streams(config, objective)
        if lora is None:
            state, reference = _start(run, cfg, tx, batches, objective.reference)
            train_step = step_lib.make_train_step(cfg, tx, run.mesh, streams=streams, schedule=schedule,
                                                  reference_params=reference)
            saved_config = run.resolved
        else:
            state, base, base_ref = _start_lora(run, cfg, tx, batches, lora)
            train_step = step_lib.make_train_step(cfg, tx, run.mesh, streams=streams, schedule=schedule,
                                                  lora=lora, base_params=base)
            saved_config = {**run.resolved, "lora_base": base_ref}
        state, status = _loop(run, config, cfg, state, train_step, batches, pack_stats, saved_config)
    summary = {"status": status, "step": int(state.step), "workdir": str(run.workdir)}
    if any(stats.examples + stats.dropped for stats in pack_stats.values()):
        summary["truncation"] = {name or step_lib.SINGLE: stats.truncation_stats()
                                 for name, stats in pack_stats.items()}
    if status == "done" and config.num_samples > 0 and data.eval_prompts and objective.head == "lm":
        params = state.params if lora is None else lora_lib.merge(base, state.params, cfg, lora, run.mesh)
        summary.update(run_lib.write_samples(config, cfg, params, run.mesh, data, objective, run.workdir))
    return summary


def _start(run: run_lib.Run, cfg: models.ModelConfig, tx: Any, batches: Any, with_reference: bool):
    """The train state (restored, or initialised from `init_from` or the seed) and, for objectives that
    need one, the frozen reference parameters: the initial model's."""
    config = run.config
    restored = run.restore(cfg, tx)
    initial = None
    if restored is None or with_reference:
        initial = _initial_params(config.get("init_from", ""), cfg, run.mesh, config.seed)
    reference = jax.tree.map(jnp.copy, initial) if with_reference else None
    if restored is not None:
        state, data_state = restored
        batches.set_state(data_state)
    else:
        state = state_lib.init_train_state(cfg, tx, run.mesh, config.seed, params=initial)
    return state, reference


def _start_lora(run: run_lib.Run, cfg: models.ModelConfig, tx: Any, batches: Any, lora: lora_lib.LoraConfig):
    """LoRA: the frozen base (`init_from` or the seed's initialisation, cast or quantised), the
    reference to it a checkpoint records (init_from and `jaxalign.lora.fingerprint`; a checkpoint of
    adapters trained on another base is refused) and the adapters' train state, restored or fresh."""
    config = run.config
    initial = _initial_params(config.get("init_from", ""), cfg, run.mesh, config.seed)
    base = lora_lib.prepare_base(initial, cfg, lora, run.mesh)
    base_ref = {"init_from": config.get("init_from", ""), **lora_lib.fingerprint(base)}

    def check(saved: dict[str, Any]) -> None:
        lora_lib.check_fingerprint(saved.get("lora_base"), base_ref, f"workdir {run.workdir}")

    restored = run.restore(cfg, tx, lora, check)
    if restored is not None:
        state, data_state = restored
        batches.set_state(data_state)
    else:
        state = state_lib.init_train_state(cfg, tx, run.mesh, config.seed, lora=lora)
    return state, base, base_ref


def _loop(run: run_lib.Run, config: ml_collections.ConfigDict, cfg: models.ModelConfig, state: Any,
          train_step: Any, batches: Any, pack_stats: dict[str, packing.PackStats],
          saved_config: dict[str, Any] | None = None) -> tuple[Any, str]:
    """Steps until `total_steps` (or SIGTERM: saved, "preempted"); logs and saves as configured.

    After TRUNCATION_REPORT_STEPS steps (or at the last) each stream's packing says what truncation
    to seq_len cut (one log line; a warning above packing.TRUNCATION_WARN_FRACTION) and the next
    metrics line carries its kept share of the loss-weighted tokens (`weighted_tokens_kept`, with two
    streams `feedback/weighted_tokens_kept` and `pretrain/...`)."""
    writer = run.metrics(int(state.step))
    flops = metrics_lib.flops_per_token(cfg, config.seq_len)
    peak = metrics_lib.device_peak_flops() or metrics_lib.matmul_peak_flops(1024, "float32")
    peak *= 1 if jax.devices()[0].platform == "cpu" else jax.device_count()
    preemption = _Preemption()
    window = _Window()
    first = int(state.step) + 1
    unverified = None  # a checkpoint whose parameters have not yet given a loss
    empty = 0  # of the first steps, how many in a row had no loss token
    report_step = min(first + TRUNCATION_REPORT_STEPS - 1, config.total_steps)
    if first <= config.total_steps:
        log.info("compiling the train step (the first step takes longer)...")
    data_metrics: dict[str, float] = {}  # packing's truncation figures, for the next metrics line
    try:
        for step in range(first, config.total_steps + 1):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            state, metrics = train_step(state, batch)
            preempted = preemption.reached(step)  # every process asks at every step
            due_log = step % config.log_every == 0 or step == config.total_steps
            due_save = step % config.checkpoint_every == 0 or step == config.total_steps
            early = step < first + EMPTY_STEPS
            if due_log or due_save or preempted or early or unverified is not None:
                # Fetching the metrics waits for the step; only these steps pay that.
                metrics = jax.device_get(metrics)
                _check_finite(run, metrics, step, unverified)
                unverified = None
                empty = empty + 1 if early and float(metrics["loss_tokens"]) == 0 else 0
                if empty == min(EMPTY_STEPS, config.total_steps - first + 1):
                    run_lib.check_loss_tokens(metrics, step)
            window.add(t1 - t0, time.perf_counter() - t0, metrics["loss_tokens"])
            writer.advance()
            if step == report_step:
                data_metrics = _report_packing(pack_stats)
            if due_log:
                summary = window.summary(flops, peak, config)
                if summary["mfu"] > 1 and jax.devices()[0].platform == "cpu":
                    # The CPU peak is a measurement: one taken while the machine was busy is too low.
                    peak = max(peak, metrics_lib.matmul_peak_flops(1024, "float32"))
                    log.warning("MFU over 100%%: the CPU peak measured at the start was low (a busy "
                                "machine); measured again: %.3g FLOP/s", peak)
                    summary = window.summary(flops, peak, config)
                writer.write(step, {**metrics, **summary, **data_metrics})
                data_metrics = {}
                window = _Window()
            if due_save or preempted:
                if not _all_finite(state.params):
                    raise run_lib.NonFiniteLossError(f"the parameters after step {step} are not finite; "
                                                     "not saved. Lower the learning rate or check the data")
                run.checkpointer.save(step, state, batches.get_state(),
                                      run.resolved if saved_config is None else saved_config, force=True)
                writer.flush()
                unverified = step
            if preempted:
                log.warning("%s: saved step %d, stopping", preemption.cause, step)
                return state, "preempted"
    finally:
        preemption.close()
    return state, "done"


def _build_data(data_cfg: ml_collections.ConfigDict, workdir: epath.Path,
                config: ml_collections.ConfigDict) -> sources.Data:
    """`sources.build`, on process 0 first: it may train and save the workdir's tokenizer, which the
    other processes then load instead of racing to write the same files (a shared workdir)."""
    if jax.process_count() == 1:
        return sources.build(data_cfg, workdir, config.seed, config.get("pretrain"))
    from jax.experimental import multihost_utils

    data = None
    if jax.process_index() == 0:
        data = sources.build(data_cfg, workdir, config.seed, config.get("pretrain"))
    multihost_utils.sync_global_devices("jaxalign: data built on process 0")
    if data is None:
        data = sources.build(data_cfg, workdir, config.seed, config.get("pretrain"))
    return data


def _batches(config: ml_collections.ConfigDict, data: sources.Data, objective: registry.Objective, mesh):
    """The objective's batches, and the pretraining text's as a second stream when it is on; each
    process gets its rows of the global batch as `config.data.sharding` says (data/hosts.py).
    Also each stream's packing counts ({stream: PackStats}; "" when there is one stream), which this
    process's pipelines fill as they pack."""
    sharding = config.data.get("sharding", "process")
    stats = packing.PackStats()

    def main(batch_size: int, index: int, count: int):
        return pipeline.make_batches(
            objective.source(data.train), seq_len=config.seq_len, batch_size=batch_size,
            seed=config.seed, fields=objective.fields, process_index=index, process_count=count,
            stats=stats)

    feedback = hosts.ProcessBatches(main, config.batch_size, mesh, sharding)
    if data.pretrain is None:
        return feedback, {"": stats}
    texts = registry.ExpandedSource(
        data.pretrain, 1, lambda record, j, i: examples.record_to_example(record, data.tokenizer, "text"))
    text_stats = packing.PackStats()

    def pretrain(batch_size: int, index: int, count: int):
        return pipeline.make_batches(texts, seq_len=config.seq_len, batch_size=batch_size,
                                     seed=config.seed + 1, process_index=index, process_count=count,
                                     stats=text_stats)

    text = hosts.ProcessBatches(pretrain, config.pretrain.batch_size, mesh, sharding)
    streams = _StreamBatches({"feedback": feedback, "pretrain": text})
    return streams, {"feedback": stats, "pretrain": text_stats}


TRUNCATION_REPORT_STEPS = 8  # packing's truncation is reported once this many steps have run (or at the end)


def _report_packing(pack_stats: dict[str, packing.PackStats]) -> dict[str, float]:
    """Each stream's truncation report (logged; a warning above packing.TRUNCATION_WARN_FRACTION),
    as metrics: the kept share of the loss-weighted tokens and the share of examples cut, 0-1."""
    out = {}
    for name, stats in pack_stats.items():
        numbers = stats.report(name)
        prefix = f"{name}/" if name else ""  # stream prefixes as the step's metrics have them
        out[prefix + "weighted_tokens_kept"] = numbers["weighted_tokens_kept"]
        cut = numbers["examples_truncated"] / max(numbers["examples"], 1)
        out[prefix + "examples_truncated_fraction"] = cut
    return out


def _streams(config: ml_collections.ConfigDict, objective: registry.Objective) -> dict[str, step_lib.Stream]:
    main = step_lib.Stream(objective.loss_fn, 1.0, config.microbatches, objective.batch_transform,
                           objective.reference)
    pretrain = config.get("pretrain")
    if pretrain is None or not pretrain.weight:
        return {step_lib.SINGLE: main}
    # Plain text is weighted per token, as language-model pretraining is.
    text = step_lib.Stream(lm.loss, float(pretrain.weight), pretrain.microbatches,
                           objective.pretrain_transform)
    return {"feedback": main, "pretrain": text}


class _StreamBatches:
    """Several checkpointable batch iterators as one: next() gives {stream: batch}, one state."""

    def __init__(self, iterators: dict[str, Any]) -> None:
        self.iterators = iterators

    def __next__(self) -> dict[str, Any]:
        return {name: next(it) for name, it in self.iterators.items()}

    def get_state(self) -> dict[str, Any]:
        return {name: it.get_state() for name, it in self.iterators.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        if sorted(state) != sorted(self.iterators):
            raise ValueError(f"the checkpoint's data state has streams {sorted(state)}, this run "
                             f"{sorted(self.iterators)}: was config.pretrain changed?")
        for name, it in self.iterators.items():
            it.set_state(state[name])


def _initial_params(init_from: str, cfg: models.ModelConfig, mesh, seed: int) -> Any:
    """The starting parameters: those of `init_from` (checked against the config), else random."""
    if not init_from:
        return models.init_params(cfg, mesh, seed)
    loaded = api.load(init_from, mesh)
    params = loaded.params
    if loaded.cfg.vocab_size < cfg.vocab_size and loaded.cfg.head == "lm":
        params = _grow_vocab(params, cfg.vocab_size)  # the objective added marker tokens
    if cfg.head == "score" and loaded.cfg.head == "lm":
        params = reward_model.score_params_from_lm(params, cfg, mesh, seed)  # a reward model from an LM
    want = jax.tree.map(lambda s: s.shape, models.param_shapes(cfg))
    got = jax.tree.map(lambda a: a.shape, params)
    if want != got:
        raise modeldir.CheckpointMismatchError(
            f"config.init_from={init_from!r}: its parameters do not fit config.model "
            f"(the model there is {loaded.cfg.num_hidden_layers} layers of width {loaded.cfg.hidden_size}, "
            f"vocabulary {loaded.cfg.vocab_size}; this config asks for {cfg.num_hidden_layers}, "
            f"{cfg.hidden_size}, {cfg.vocab_size})"
        )
    params = jax.device_put(params, models.param_shardings(cfg, mesh))
    return jax.tree.map(lambda a, s: a.astype(s.dtype), params, models.param_shapes(cfg))


def _grow_vocab(params: Any, vocab_size: int) -> Any:
    """New token rows (the objective's markers) start at the mean embedding / output column, as
    transformers' resize_token_embeddings does, so they begin as an average token, not noise."""
    def grow(x: jax.Array, axis: int) -> jax.Array:
        extra = vocab_size - x.shape[axis]
        mean = jnp.mean(x, axis=axis, keepdims=True)
        return jnp.concatenate([x, jnp.repeat(mean, extra, axis=axis)], axis=axis)

    params = dict(params)
    params["embed_tokens"] = {"embedding": grow(params["embed_tokens"]["embedding"], 0)}
    if "lm_head" in params:
        params["lm_head"] = {"kernel": grow(params["lm_head"]["kernel"], 1)}
    return params


EMPTY_STEPS = 3  # a run whose first steps all lack loss tokens stops (run_lib.check_loss_tokens)


def _check_finite(run: run_lib.Run, metrics: dict[str, Any], step: int, unverified: int | None) -> None:
    """A non-finite loss stops the run; the checkpoint saved just before, whose parameters gave it, is
    set aside, so that the advice to rerun resumes from good weights."""
    if not math.isfinite(float(metrics["loss"])):
        discarded = run.discard_diverged(unverified) if unverified is not None else ""
        run_lib.check_finite(metrics, step, discarded)


@jax.jit
def _all_finite(params: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


class _Preemption:
    """Whether to save and stop at a step. One process: SIGTERM reached it. Several: the step JAX's
    preemption sync point picked for all of them once SIGTERM reached any one (a local flag would
    stop one host at one step and leave the others waiting for it in a collective)."""

    def __init__(self) -> None:
        self.shared = jax.process_count() > 1
        self.flag = False
        self.cause = "SIGTERM"
        # With several processes JAX's own SIGTERM notifier must keep the signal: no handler here.
        self.previous = None if self.shared else signal.signal(signal.SIGTERM, self._handle)
        # Ctrl-C saves like SIGTERM; a second Ctrl-C aborts at once (KeyboardInterrupt).
        self.previous_int = None if self.shared else signal.signal(signal.SIGINT, self._interrupt)

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True

    def _interrupt(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag, self.cause = True, "Ctrl-C"
        log.warning("Ctrl-C: saving at the end of this step, then stopping (Ctrl-C again aborts)")

    def reached(self, step: int) -> bool:
        if self.shared:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.flag

    def close(self) -> None:
        if not self.shared:
            signal.signal(signal.SIGTERM, self.previous)
            signal.signal(signal.SIGINT, self.previous_int)


class _Window:
    """Times since the last log: how long the input pipeline and the whole step took."""

    def __init__(self) -> None:
        self.data_s = self.total_s = 0.0
        self.steps = 0
        self.tokens: list[Any] = []  # each step's loss-token count, fetched only at the log step

    def add(self, data_s: float, total_s: float, tokens: Any) -> None:
        self.data_s += data_s
        self.total_s += total_s
        self.tokens.append(tokens)
        self.steps += 1

    def summary(self, flops_per_token: float, peak: float, config) -> dict[str, float]:
        step_s = self.total_s / max(self.steps, 1)
        # MFU counts every position of the row (the model computes them all), padding included,
        # over all streams.
        pretrain = config.get("pretrain")
        rows = config.batch_size + (pretrain.batch_size if pretrain is not None and pretrain.weight else 0)
        tokens_per_s = rows * config.seq_len / step_s
        return {
            "step_s": step_s,
            "data_fraction": self.data_s / max(self.total_s, 1e-9),
            "tokens_per_s": tokens_per_s,
            "loss_tokens_per_s": float(sum(jax.device_get(self.tokens))) / max(self.total_s, 1e-9),
            "mfu": flops_per_token * tokens_per_s / peak,
        }
