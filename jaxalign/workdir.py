"""The layout of a `jaxalign train` run directory, and reading a model out of one.

    WORKDIR/config.json          the resolved run config
    WORKDIR/jaxalign_model.json  the model config, its prompt template and the objective it answers as
                                 (`jaxalign.modeldir.write_model_file`, written when the run starts)
    WORKDIR/tokenizer/           the run's tokenizer
    WORKDIR/checkpoints/<step>/  orbax steps (`jaxalign.train.checkpointer`): state/, data/, config/
    WORKDIR/wandb_run.json       the Weights & Biases run id a resumed run continues, when W&B is on
                                 (`jaxalign.train.metrics`)

Readers (the notebook API, export, eval) restore the parameters alone, a partial restore of
``state/params``, so no optimizer is built and its state is never read.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh

from jaxalign import modeldir, paths
from jaxalign.models.config import ModelConfig

CHECKPOINTS, CONFIG, TOKENIZER, SAMPLES = "checkpoints", "config.json", "tokenizer", "samples.jsonl"
METRICS = "metrics.jsonl"
WANDB_RUN = "wandb_run.json"
log = logging.getLogger(__name__)
STATE = "state"  # the train state's item in a checkpoint step; its params are under "params"


def is_workdir(path: str | os.PathLike) -> bool:
    path = paths.path(path)
    return (path / CHECKPOINTS).is_dir() and (path / CONFIG).is_file()


def metrics_lines(file: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """The (line, object) pairs of a metrics.jsonl. A torn last line (what a crash or a full disk
    leaves) is skipped with a warning; a bad line before others is an error naming file and line,
    since lines after it could not have been written after it."""
    file = paths.path(file)
    lines = file.read_text().split("\n")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if any(rest.strip() for rest in lines[number:]):
                raise ValueError(f"{file}:{number}: not a JSON line ({e}); fix or delete the line") from None
            log.warning("%s:%d: skipping a torn last line (%d bytes)", file, number, len(line))
            continue
        if not isinstance(row, dict):
            raise ValueError(f"{file}:{number}: not a JSON object")
        out.append((line, row))
    return out


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((paths.path(path) / CONFIG).read_text())


def write_description(path: str | os.PathLike, cfg: ModelConfig, prompt_template: str,
                      objective: dict[str, Any]) -> None:
    """What a reader needs to rebuild and prompt the model without asking the objective."""
    modeldir.write_model_file(paths.path(path), cfg, prompt_template, objective=objective)


def _description(path: epath.Path) -> epath.Path:
    if not modeldir.is_model_dir(path):
        raise FileNotFoundError(
            f"{path / modeldir.MODEL_FILE}: missing; this workdir was trained before jaxalign recorded its "
            "model there. Re-run the same `jaxalign train` command on it once (it resumes at its last step, "
            "trains no more and writes the file)")
    return path


def model_config(path: str | os.PathLike, **overrides: Any) -> ModelConfig:
    return modeldir.load_config(_description(paths.path(path)), **overrides)


def prompt_template(path: str | os.PathLike) -> str:
    return modeldir.load_prompt_template(_description(paths.path(path)))


def objective(path: str | os.PathLike) -> dict[str, Any]:
    """The objective section the model answers as (an RL run's: its policy's)."""
    return modeldir.load_objective(_description(paths.path(path)))


def tokenizer_dir(path: str | os.PathLike) -> epath.Path:
    """Where the tokenizer of a workdir, model directory or HF directory lies."""
    path = paths.path(path)
    for candidate in (path / TOKENIZER, path):
        if (candidate / "tokenizer.model").is_file() or (candidate / "tokenizer.json").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no tokenizer found there")


def committed_steps(path: str | os.PathLike) -> list[int]:
    """The steps whose save completed: orbax renames a step's directory to its number once written
    (on a bucket, where nothing renames, it writes ``commit_success.txt`` into it last). Read from the
    listing, not through a Checkpointer, which would delete the temporary directory of a save still
    in flight (the run may be training)."""
    root = paths.path(path) / CHECKPOINTS
    return sorted(int(d.name) for d in root.iterdir()
                  if d.name.isdigit() and ocp.path.step.is_path_finalized(d) and (d / STATE).is_dir())


def state_dir(path: str | os.PathLike, step: int | None = None) -> tuple[epath.Path, int]:
    """The train-state tree of `step` (default: the latest) and that step."""
    steps = committed_steps(path)
    root = paths.path(path) / CHECKPOINTS
    if not steps:
        raise FileNotFoundError(f"{root}: no checkpoint")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ValueError(f"step {step}: no such checkpoint in {root}; kept steps: {steps}")
    return root / str(step) / STATE, step


def restore_params(path: str | os.PathLike, cfg: ModelConfig, mesh: Mesh, step: int | None = None) -> Any:
    """The parameters of `step` (default: the latest) onto `mesh`, checked against `cfg` first."""
    if (read_config(path).get("lora") or {}).get("rank"):
        raise ValueError(f"{path} is a LoRA run: its checkpoints hold adapters and a reference to the base, "
                         f"not the model; `jaxalign export --checkpoint {path} --out DIR` writes the merged "
                         "model, which loads (docs/training.md#lora-and-qlora)")
    tree, _ = state_dir(path, step)
    target = {"params": modeldir.abstract_params(cfg, mesh)}
    saved = pytree_call("metadata", tree).tree
    modeldir.check_tree_fits(saved.get("params", {}), target["params"], f"{tree} (params)")
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    restored = pytree_call("restore", tree, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
    return restored["params"]


def pytree_call(method: str, directory: epath.Path, **kwargs: Any) -> Any:
    """A pytree handler's metadata/restore. The handler, not a Checkpointer: a train step's state/
    item has no checkpoint-level metadata file of its own, which a Checkpointer warns about."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return getattr(handler, method)(epath.Path(directory), **kwargs)
    finally:
        handler.close()
