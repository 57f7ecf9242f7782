"""A jaxalign model directory: model config + parameters (orbax) + optional tokenizer.

    DIR/jaxalign_model.json   {"format": "jaxalign-model", "version": 1, "model": {...}}
    DIR/params/               orbax StandardCheckpointer tree of the parameters
    DIR/tokenizer/            files the Tokenizer wrote (optional)

This is what `jaxalign import-hf` writes and `jaxalign.load` reads. Parameters are restored
straight onto the target mesh's shardings, so the mesh used to save and to load may differ.
DIR may be a local path or a URL (``gs://bucket/model``; `jaxalign.paths`).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh

from jaxalign import models, paths
from jaxalign.models.config import ModelConfig

MODEL_FILE = "jaxalign_model.json"
FORMAT = "jaxalign-model"
DEFAULT_TEMPLATE = "{prompt}"  # a plain LM: the prompt as given


class CheckpointMismatchError(ValueError):
    """A saved tree does not fit the configured model."""


def is_model_dir(path: str | os.PathLike) -> bool:
    return (paths.path(path) / MODEL_FILE).is_file()


def check_apart(out: str | os.PathLike, sources: Sequence[str | os.PathLike]) -> None:
    """Refuses an output directory that is, contains or lies inside a source, whatever `overwrite`
    says: replacing it would delete what is being read (a run's checkpoints, an HF model)."""
    target = paths.real(out)  # URLs compare as written: a bucket has no links to resolve
    for source in sources:
        src = paths.real(source)
        relation = ("is" if target == src else "contains" if target in src.parents
                    else "lies inside" if src in target.parents else None)
        if relation:
            raise ValueError(f"--out {out}: {relation} the source {source}; write to a directory apart "
                             "from it (nothing was changed)")


@contextlib.contextmanager
def staged_directory(
    out: str | os.PathLike, overwrite: bool = False, *, writer: bool = True, tmp_name: str | None = None,
    marker: str = MODEL_FILE,
) -> Iterator[epath.Path]:
    """Yields a fresh sibling directory to fill; when the block succeeds it takes `out`'s place.

    A non-empty `out` is refused unless `overwrite`. The old directory is moved aside before the
    new one takes its place and removed only after, so at every moment one complete version exists;
    a failing block removes the temporary directory and leaves `out` as it was. Processes other than
    the `writer` get the path but create, move and remove nothing (pass the same `tmp_name` on
    every process when they all write into it, as orbax does).

    Locally the moves are renames. A bucket has no rename: objects are copied one by one, so
    `marker`, the file whose presence says the directory is complete (MODEL_FILE, or config.json
    of an HF directory), is copied last into `out` and deleted first from the old one: a reader
    that checks for it never takes a half-copied directory for a complete one.
    """
    out = paths.path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to "
                              "replace it")
    tmp = out.with_name(tmp_name or f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    if writer:
        paths.rmtree(tmp)  # left by an earlier crash
        if not paths.is_url(out):  # a bucket's prefixes need no creating
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()  # not tempfile.mkdtemp: its 0o700 mode would stick to the result
    try:
        yield tmp
    except BaseException:
        if writer:
            with contextlib.suppress(OSError):
                paths.rmtree(tmp)
        raise
    if writer:
        old = out.with_name(f".{out.name}.old-{os.getpid()}") if out.exists() else None
        if old is not None:
            _move_aside(out, old, marker)
        paths.move_tree(tmp, out, last=[marker])
        if old is not None:
            paths.rmtree(old)


def _move_aside(out: epath.Path, old: epath.Path, marker: str) -> None:
    """Moves the complete directory `out` to `old`. On a bucket its marker goes first and comes back
    last, so no reader takes `out` for complete while its objects are copied away one by one."""
    if not paths.is_url(out) or not (out / marker).is_file():
        paths.move_tree(out, old)
        return
    content = (out / marker).read_bytes()
    (out / marker).unlink()
    paths.move_tree(out, old)
    (old / marker).write_bytes(content)


def save_model(
    path: str | os.PathLike, params: Any, cfg: ModelConfig, tokenizer: Any = None,
    overwrite: bool = False, prompt_template: str = DEFAULT_TEMPLATE,
) -> epath.Path:
    """Writes a model directory (local or a URL) through `staged_directory`, so a crash or an
    existing directory never leaves a half-written or clobbered model behind."""
    path = paths.path(path)
    writer = jax.process_index() == 0
    # Every process writes its shards of the params into the same temporary directory.
    with staged_directory(path, overwrite, writer=writer, tmp_name=f".{path.name}.tmp") as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "params", params)
        checkpointer.wait_until_finished()
        if writer:
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / "tokenizer")
            write_model_file(tmp, cfg, prompt_template)
    return path


def write_model_file(path: str | os.PathLike, cfg: ModelConfig, prompt_template: str = DEFAULT_TEMPLATE,
                     objective: dict[str, Any] | None = None) -> None:
    """The model's description: its config, how it is prompted and (when trained here) the objective
    section it answers as."""
    meta = {"format": FORMAT, "version": 1, "model": cfg.to_dict(), "prompt_template": prompt_template}
    if objective is not None:
        meta["objective"] = objective
    (paths.path(path) / MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_prompt_template(path: str | os.PathLike) -> str:
    """How the model was trained to be prompted ("{prompt}" for directories written before it was kept)."""
    return json.loads((paths.path(path) / MODEL_FILE).read_text()).get("prompt_template", DEFAULT_TEMPLATE)


def load_objective(path: str | os.PathLike) -> dict[str, Any]:
    """The objective section the model was trained with; plain SFT's for a model of unknown training."""
    return json.loads((paths.path(path) / MODEL_FILE).read_text()).get("objective", {"name": "sft"})


def load_config(path: str | os.PathLike, **overrides: Any) -> ModelConfig:
    meta_file = paths.path(path) / MODEL_FILE
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: not a jaxalign model file (format={meta.get('format')!r})")
    return models.from_dict({**meta["model"], **overrides}, source=str(meta_file))


def restore_params(path: str | os.PathLike, cfg: ModelConfig, mesh: Mesh) -> Any:
    """Restores parameters onto `mesh`; a tree that does not fit `cfg` is a clear error."""
    params_dir = paths.path(path) / "params"
    target = abstract_params(cfg, mesh)
    checkpointer = ocp.StandardCheckpointer()
    saved = checkpointer.metadata(params_dir).item_metadata.tree
    check_tree_fits(saved, target, str(params_dir))
    return checkpointer.restore(params_dir, target)


def abstract_params(cfg: ModelConfig, mesh: Mesh) -> Any:
    """ShapeDtypeStructs carrying the target shardings (what orbax restores into)."""
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        models.param_shapes(cfg), models.param_shardings(cfg, mesh),
    )


def check_tree_fits(saved: Any, target: Any, where: str) -> None:
    """Names every missing, unexpected or wrongly shaped entry in one error."""
    saved_flat = _flatten(saved)
    target_flat = _flatten(target)
    problems = []
    for key in sorted(set(target_flat) - set(saved_flat)):
        problems.append(f"missing {key} {tuple(target_flat[key].shape)}")
    for key in sorted(set(saved_flat) - set(target_flat)):
        problems.append(f"unexpected {key}")
    for key in sorted(set(saved_flat) & set(target_flat)):
        got, want = tuple(saved_flat[key].shape), tuple(target_flat[key].shape)
        if got != want:
            problems.append(f"{key}: saved shape {got}, model expects {want}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} in all)" if len(problems) > 10 else "")
        raise CheckpointMismatchError(f"{where} does not fit the configured model: {shown}")


def _flatten(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return {"/".join(key_name(k) for k in path): leaf for path, leaf in leaves}


def key_name(key: Any) -> str:
    """The name of one entry of a jax tree path (dict key, attribute or index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)
