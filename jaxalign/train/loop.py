"""The training loop: one readable function, `train(config, workdir)`.

Re-running the same command in the same workdir resumes from the latest checkpoint, data
order included: the data iterator's state is saved with the model, and every random draw is a
function of (seed, step). SIGTERM (TPU preemption) saves a checkpoint and returns; a NaN or
Inf loss stops the run before anything non-finite is saved.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxalign import bench, models, sample
from jaxalign import config as config_lib
from jaxalign import mesh as mesh_lib
from jaxalign.data import pipeline, sources
from jaxalign.objectives import lm
from jaxalign.train import optim
from jaxalign.train import state as state_lib
from jaxalign.train import step as step_lib
from jaxalign.train.checkpointing import Checkpointer
from jaxalign.train.metrics import MetricsWriter, device_peak_flops

log = logging.getLogger(__name__)

TOP_KEYS = (
    "seed", "total_steps", "batch_size", "seq_len", "mesh", "model", "objective", "data",
    "optimizer", "microbatches", "checkpoint_every", "keep_checkpoints", "log_every",
    "num_samples", "max_new_tokens",
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left as it was."""


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> models.ModelConfig:
    overrides = {k: v for k, v in config.model.to_dict().items() if k != "preset"}
    overrides.setdefault("vocab_size", vocab_size)
    return models.get_preset(config.model.preset, **overrides)


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (or resumes) and returns a summary: final step, last loss, samples and score."""
    config_lib.check_keys(config, TOP_KEYS, "the config")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh_lib.make_mesh(config.mesh)
    data = sources.build(config.data, workdir, config.seed)
    cfg = model_config(config, data.tokenizer.vocab_size)
    if cfg.vocab_size < data.tokenizer.vocab_size:
        raise ValueError(f"config.model.vocab_size={cfg.vocab_size} is smaller than the "
                         f"tokenizer's {data.tokenizer.vocab_size}")
    tx, schedule = optim.make_optimizer(config.optimizer)
    loss_fn = _loss_fn(config.objective)
    batches = pipeline.make_batches(
        data.train, seq_len=config.seq_len, batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
    )
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints,
                                save_every=config.checkpoint_every)
    resolved = json.loads(config_lib.to_json(config))
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    if checkpointer.latest_step() is not None:
        abstract = state_lib.abstract_train_state(cfg, tx, mesh)
        state, data_state, _ = checkpointer.restore(abstract)
        batches.set_state(data_state)
        log.info("resumed from step %d in %s", int(state.step), workdir)
    else:
        state = state_lib.init_train_state(cfg, tx, mesh, config.seed)
    train_step = step_lib.make_train_step(cfg, tx, mesh, microbatches=config.microbatches,
                                          loss_fn=loss_fn, schedule=schedule)

    start = int(state.step)
    writer = MetricsWriter(workdir, config.total_steps, start)
    flops = bench.flops_per_token(cfg, config.seq_len)
    peak = device_peak_flops() or bench.matmul_peak_flops(1024, "float32")
    peak *= 1 if jax.devices()[0].platform == "cpu" else jax.device_count()
    preempted = _sigterm_flag()
    window = _Window()
    status = "done"
    try:
        for step in range(start + 1, config.total_steps + 1):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            state, metrics = train_step(state, batch)
            due_log = step % config.log_every == 0 or step == config.total_steps
            due_save = step % config.checkpoint_every == 0 or step == config.total_steps
            if due_log or due_save or preempted["flag"]:
                # Fetching the metrics waits for the step; only log and save steps pay that.
                metrics = jax.device_get(metrics)
                _check_finite(metrics, step)
            window.add(t1 - t0, time.perf_counter() - t0, float(np.sum(batch["weights"] > 0)))
            writer.advance()
            if due_log:
                writer.write(step, {**metrics, **window.summary(flops, peak, config)})
                window = _Window()
            if due_save or preempted["flag"]:
                checkpointer.save(step, state, batches.get_state(), resolved, force=True)
            if preempted["flag"]:
                status = "preempted"
                log.warning("SIGTERM: saved step %d, stopping", step)
                break
    finally:
        checkpointer.wait()
        checkpointer.close()
        writer.close()
        signal.signal(signal.SIGTERM, preempted["previous"])

    summary = {"status": status, "step": int(state.step), "workdir": str(workdir)}
    if status == "done" and config.num_samples > 0 and data.eval_prompts:
        summary.update(_samples(config, cfg, state.params, mesh, data, workdir))
    return summary


def _loss_fn(objective: ml_collections.ConfigDict):
    config_lib.check_keys(objective, ("name", "normalization"), "config.objective")
    if objective.name != "sft":
        raise ValueError(f"config.objective.name={objective.name!r}: only 'sft' exists so far")
    return lambda logits, batch: lm.loss(logits, batch, normalization=objective.normalization)


def _check_finite(metrics: dict[str, Any], step: int) -> None:
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}; stopped before saving it. The last good checkpoint "
            "is untouched; lower the learning rate or check the data, then re-run to resume."
        )


def _sigterm_flag() -> dict[str, Any]:
    flag: dict[str, Any] = {"flag": False}

    def handler(signum, frame):
        flag["flag"] = True

    flag["previous"] = signal.signal(signal.SIGTERM, handler)
    return flag


class _Window:
    """Times since the last log: how long the input pipeline and the whole step took."""

    def __init__(self) -> None:
        self.data_s = self.total_s = self.tokens = 0.0
        self.steps = 0

    def add(self, data_s: float, total_s: float, tokens: float) -> None:
        self.data_s += data_s
        self.total_s += total_s
        self.tokens += tokens
        self.steps += 1

    def summary(self, flops_per_token: float, peak: float, config) -> dict[str, float]:
        step_s = self.total_s / max(self.steps, 1)
        # MFU counts every position of the row (the model computes them all), padding included.
        tokens_per_s = config.batch_size * config.seq_len / step_s
        return {
            "step_s": step_s,
            "data_fraction": self.data_s / max(self.total_s, 1e-9),
            "tokens_per_s": tokens_per_s,
            "loss_tokens_per_s": self.tokens / max(self.total_s, 1e-9),
            "mfu": flops_per_token * tokens_per_s / peak,
        }


def _samples(config, cfg, params, mesh, data: sources.Data, workdir: Path) -> dict[str, Any]:
    """Greedy generations for the first eval prompts, scored when the task has a judge."""
    prompts = data.eval_prompts[: config.num_samples]
    tok = data.tokenizer
    ids = [tok.encode(pipeline.format_prompt(p), add_bos=True) for p in prompts]
    out = sample.generate(params, cfg, ids, mesh=mesh, max_new_tokens=config.max_new_tokens,
                          eos_id=tok.eos_id)
    responses = [tok.decode(row).strip() for row in out]
    rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
    result: dict[str, Any] = {"samples": rows}
    if data.task is not None:
        scores = [data.task.score(p, r) for p, r in zip(prompts, responses, strict=True)]
        for row, score in zip(rows, scores, strict=True):
            row["score"] = score
        result["score"] = float(np.mean(scores))
    if jax.process_index() == 0:
        with (workdir / "samples.jsonl").open("w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return result
