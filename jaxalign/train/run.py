"""A run directory opened for training: what the supervised trainer (`train.loop`) and RL refinement
(`jaxalign.methods.rl`) share.

    with Run(config, workdir) as run:             # checks the keys, opens the checkpointer
        run.describe(cfg, template, objective)    # config.json + jaxalign_model.json (process 0)
        restored = run.restore(cfg, tx)           # (state, data_state), or None for a fresh run
        writer = run.metrics(start_step)
        ... run.checkpointer.save(...); check_finite(metrics, step)
    summary.update(write_samples(...))

The layout is `jaxalign.workdir`'s. Leaving the block waits for pending saves, then closes the
checkpointer and the metrics writer.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from jaxalign import config as config_lib
from jaxalign import hub, models, paths, sample
from jaxalign import mesh as mesh_lib
from jaxalign import workdir as workdir_lib
from jaxalign.data import sources
from jaxalign.objectives import registry
from jaxalign.train import state as state_lib
from jaxalign.train.checkpointer import Checkpointer, CheckpointMismatchError
from jaxalign.train.defaults import TOP_KEYS
from jaxalign.train.lock import WorkdirLock
from jaxalign.train.metrics import MetricsWriter, wandb_config

log = logging.getLogger(__name__)


# What a resumed run may change: how long it runs (the schedule follows total_steps, as it does in a
# fresh run of that length), its peak learning rate and gradient clipping (what one changes after a
# divergence), how it logs and saves, its device mesh, and the samples written at the end.
RESUMABLE_CHANGES = ("total_steps", "optimizer.total_steps", "optimizer.peak_lr", "optimizer.grad_clip_norm",
                     "checkpoint_every", "keep_checkpoints", "log_every", "num_samples", "max_new_tokens",
                     "mesh", *(f"logging.wandb.{k}" for k in ("project", "entity", "name", "tags", "mode")))
# Keys added to a section after runs were saved without them, and the value such a run trained with:
# a saved config that lacks one is read with it, so that a workdir of an older version resumes.
ADDED_KEYS = {"optimizer": {"warmup_fraction": 0.0}, "pretrain": {"from_train": False}}


def comparable(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config as a resumed run compares it: keys added since (`ADDED_KEYS`) filled in, and
    the data and objective sections with their defaults spelt out (`sources.effective`,
    `registry.resolved`), so that two spellings of the same run (the older defaults data.task="sort",
    data.num_train=4000 and today's unset task and 0; CoH's normalization "sequence" and today's None)
    agree."""
    out = dict(resolved)
    for section, added in ADDED_KEYS.items():
        if isinstance(out.get(section), Mapping):
            out[section] = {**added, **out[section]}
    if isinstance(out.get("data"), Mapping):
        out["data"] = sources.effective(out["data"])
    if isinstance(out.get("objective"), Mapping):
        out["objective"] = registry.resolved(out["objective"])
    return out


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left as it was."""


class Run:
    """A workdir, its mesh, checkpointer and resolved config (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | epath.PathLike) -> None:
        config_lib.check_keys(config, TOP_KEYS, "the config")
        check_counts(config)  # before anything is written
        self.wandb = wandb_config(config.get("logging"))  # a missing wandb package too
        self.config = config
        self.mesh: Mesh = mesh_lib.make_mesh(config.mesh)
        self.workdir = paths.path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.resolved: dict[str, Any] = json.loads(config_lib.to_json(config))
        self._checkpointer: Checkpointer | None = None
        self._writer: MetricsWriter | None = None
        self._lock = WorkdirLock(self.workdir)
        self._lock.acquire()  # last: nothing above needs undoing when another run holds the workdir

    @property
    def checkpointer(self) -> Checkpointer:
        """Opened on first use, so that a run stopped by bad data or config leaves no checkpoints/."""
        if self._checkpointer is None:
            self._checkpointer = Checkpointer(self.workdir / workdir_lib.CHECKPOINTS,
                                              keep=self.config.keep_checkpoints,
                                              save_every=self.config.checkpoint_every)
        return self._checkpointer

    def describe(self, cfg: models.ModelConfig, prompt_template: str, objective: Mapping[str, Any]) -> None:
        """Writes the resolved config and the model's description (shape, prompt template, the objective
        it answers as), so readers rebuild and prompt the model without asking the objective. A workdir
        with checkpoints must hold a run of the same config (see `RESUMABLE_CHANGES`)."""
        if workdir_lib.is_workdir(self.workdir) and workdir_lib.committed_steps(self.workdir):
            saved = workdir_lib.read_config(self.workdir)
            config_lib.check_same(comparable(saved), comparable(self.resolved), f"workdir {self.workdir}",
                                  RESUMABLE_CHANGES)
        if jax.process_index() == 0:
            paths.write_atomic(self.workdir / workdir_lib.CONFIG, json.dumps(self.resolved, indent=2) + "\n")
            workdir_lib.write_description(self.workdir, cfg, prompt_template, dict(objective))

    def restore(self, cfg: models.ModelConfig, tx: Any, lora: Any = None,
                check: Any = None) -> tuple[Any, dict[str, Any]] | None:
        """The latest readable checkpoint's (train state, data state), or None when there is none yet.
        An unreadable one (a truncated file) is set aside with a warning and the one before it tried.
        With `lora` the state holds adapters; `check(saved_config)` may refuse a checkpoint (raises)."""
        target = state_lib.abstract_train_state(cfg, tx, self.mesh, lora)
        for step in reversed(self.checkpointer.all_steps()):
            try:
                state, data_state, saved = self.checkpointer.restore(target, step)
            except CheckpointMismatchError:
                raise  # another model or optimizer: no older step would fit either
            except Exception as e:  # noqa: BLE001 (tensorstore and orbax raise many types for bad bytes)
                where = self.checkpointer.set_aside(step, "unreadable")
                reason = str(e).splitlines()[0].split(" See full TensorStore details")[0][:300]
                log.warning("checkpoint %d in %s is unreadable (%s: %s); moved it to %s and trying the one "
                            "before", step, self.checkpointer.directory, type(e).__name__, reason, where)
                continue
            if check is not None:
                check(saved)
            log.info("resumed from step %d in %s", int(state.step), self.workdir)
            return state, data_state
        return None

    def discard_diverged(self, step: int) -> str:
        """Sets aside checkpoint `step`, whose parameters gave a non-finite loss; returns a sentence
        naming the checkpoint a rerun resumes from."""
        where = self.checkpointer.set_aside(step, "diverged")
        steps = self.checkpointer.all_steps()
        resume = f"step {steps[-1]}" if steps else "none (a rerun starts afresh)"
        return (f"checkpoint {step} gives that loss, so it was moved to {where}; the rerun resumes "
                f"from {resume}")

    def metrics(self, start: int) -> MetricsWriter:
        self._writer = MetricsWriter(self.workdir, self.config.total_steps, start, wandb=self.wandb,
                                     run_config=self.resolved)
        return self._writer

    def close(self) -> None:
        try:
            if self._checkpointer is not None:
                self._checkpointer.wait()
                self._checkpointer.close()
            if self._writer is not None:
                self._writer.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Counts a run divides by or steps through: each must be a positive integer.
POSITIVE_KEYS = ("total_steps", "batch_size", "seq_len", "microbatches", "checkpoint_every", "log_every",
                 "keep_checkpoints")


def check_counts(config: ml_collections.ConfigDict) -> None:
    """One clear error for a count that would divide by zero or loop on nothing, naming the key."""
    for key in POSITIVE_KEYS:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{key}={value!r} must be a positive integer")


def check_context(cfg: models.ModelConfig, seq_len: int) -> None:
    """A row longer than the model's context would train positions it was never meant to see."""
    if seq_len > cfg.max_position_embeddings:
        raise ValueError(f"config.seq_len={seq_len} is longer than the model's context of "
                         f"{cfg.max_position_embeddings} positions (model.max_position_embeddings)")


def data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.data`, with `init_from`'s tokenizer when the config names none."""
    init_from = config.get("init_from", "")
    if not init_from or config.data.tokenizer:
        return config.data
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    try:
        data_cfg.tokenizer = str(workdir_lib.tokenizer_dir(hub.resolve(init_from)))  # a Hub id too
    except FileNotFoundError:
        raise FileNotFoundError(f"config.init_from={str(init_from)!r}: no tokenizer found there") from None
    return data_cfg


def check_finite(metrics: Mapping[str, Any], step: int, discarded: str = "") -> None:
    """`discarded`: what was done with a checkpoint of the parameters that gave this loss."""
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        saved = discarded or "the last good checkpoint is untouched"
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}; stopped before saving it; {saved}. Lower the learning "
            "rate or check the data, then re-run to resume.")


def check_loss_tokens(metrics: Mapping[str, Any], step: int) -> None:
    """Steps without a token to learn from train nothing, yet log loss 0 and run to the end."""
    if float(metrics["loss_tokens"]) == 0:
        raise ValueError(
            f"step {step} has no token with a loss weight: every response in its batch was cut off "
            "(the prompts fill config.seq_len) or is empty. Raise config.seq_len, shorten the prompts "
            "or drop the empty responses")


def write_samples(config: ml_collections.ConfigDict, cfg: models.ModelConfig, params: Any, mesh: Mesh,
                  data: sources.Data, objective: registry.Objective, workdir: epath.Path) -> dict[str, Any]:
    """Greedy generations for the first eval records, prompted and read back as the objective trained
    them (CoH's positive marker, an edit chain's draft and chain), scored when the task has a judge."""
    records = [r for r in data.eval if "prompt" in r][: config.num_samples]
    tok = data.tokenizer
    ids = [tok.encode(objective.prompt(r), add_bos=tok.bos_id is not None) for r in records]
    # A long dialogue keeps its end, as `jaxalign eval` cuts it: prompt + reply within seq_len.
    budget = min(config.seq_len, cfg.max_position_embeddings) - config.max_new_tokens
    if budget <= 0:
        log.warning("no samples: max_new_tokens=%d leaves no room for a prompt in seq_len=%d",
                    config.max_new_tokens, config.seq_len)
        return {}
    cut = [sample.keep_end(p, budget, tok.bos_id) for p in ids]
    shortened = sum(len(c) < len(p) for c, p in zip(cut, ids, strict=True))
    if shortened:
        log.info("samples: %d of %d prompts lost their start to fit seq_len=%d with max_new_tokens=%d",
                 shortened, len(ids), config.seq_len, config.max_new_tokens)
    ids = cut
    out = sample.generate(params, cfg, ids, mesh=mesh, max_new_tokens=config.max_new_tokens,
                          eos_id=tok.eos_id)
    prompts = [r["prompt"] for r in records]
    responses = [objective.response(r, row, tok) for r, row in zip(records, out, strict=True)]
    rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
    result: dict[str, Any] = {"samples": rows}
    if data.task is not None:
        scores = [data.task.score(p, r) for p, r in zip(prompts, responses, strict=True)]
        for row, score in zip(rows, scores, strict=True):
            row["score"] = score
        result["score"] = float(np.mean(scores))
    if jax.process_index() == 0:
        paths.write_atomic(workdir / workdir_lib.SAMPLES, "".join(json.dumps(row) + "\n" for row in rows))
    return result
