"""Training checkpoints: the full train state, the data-iterator state and the resolved config.

`Checkpointer` writes ``<workdir>/checkpoints/<step>/{state,data,config}`` with orbax, async and
atomic (a killed save leaves the previous step the latest), and restores onto any mesh after
checking the saved tree against the target. This is the *training* format; ``jaxalign.modeldir``
holds the params-only model directory.

Details: docs/training.md#run-checkpoints-jaxaligntraincheckpointer
"""

from __future__ import annotations

import json
import logging
import operator
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxalign import paths
from jaxalign.modeldir import CheckpointMismatchError, _flatten, check_tree_fits

log = logging.getLogger(__name__)

__all__ = ["CheckpointMismatchError", "Checkpointer"]

STATE, DATA, CONFIG = "state", "data", "config"


class Checkpointer:
    """Saves and restores training checkpoints in `directory` (see docs/training.md).

    keep: how many of the most recent checkpoints to keep (None: all).
    save_every: ``save`` without ``force`` saves at multiples of this step count (None: only
        forced saves).
    async_save: write in a background thread; ``save`` returns once arrays are off the devices.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int | None = 3,
        save_every: int | None = None,
        async_save: bool = True,
    ) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"Checkpointer: keep={keep!r} must be a positive integer or None")
        if save_every is not None and (
            isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1
        ):
            raise ValueError(f"Checkpointer: save_every={save_every!r} must be a positive integer or None")
        self.directory = paths.path(directory)  # orbax needs absolute paths (or URLs)
        self.keep = keep
        self.save_every = save_every
        self.async_save = async_save
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            # Informational: `save` decides itself and calls orbax with force=True, because
            # orbax's default policy also saves the first step it is offered.
            save_interval_steps=save_every or 1,
            enable_async_checkpointing=async_save,
            create=True,
            # Removes `<step>.orbax-checkpoint-tmp` left by a process killed mid-save.
            cleanup_tmp_directories=True,
        )
        # Handlers are named up front so that a reopened directory can be read (metadata and
        # restore) before anything is saved in this process.
        handlers = {
            STATE: ocp.StandardCheckpointHandler(),
            DATA: ocp.JsonCheckpointHandler(),
            CONFIG: ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._closed = False
        _close_before_thread_shutdown(self)

    # -- queries ---------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest saved step, or None when the directory holds no checkpoint."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    # -- save ------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        data_state: Mapping[str, Any],
        config: Mapping[str, Any],
        force: bool = False,
    ) -> bool:
        """Saves `state` (a pytree of arrays), the data-iterator state and the resolved config as
        `step` when `force` or `step` is a multiple of ``save_every``; returns whether it saved.

        With async saves this returns once the arrays are copied off the devices.
        """
        self._check_open()
        step = _as_step(step)
        if not force and not (self.save_every and step % self.save_every == 0):
            return False
        if step in self._manager.all_steps():
            log.info("checkpoint for step %d already in %s; not saving it again", step, self.directory)
            return False
        data_state = _json_item("data_state", data_state)
        config = _json_item("config", config)
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.StandardSave(state),
                DATA: ocp.args.JsonSave(data_state),
                CONFIG: ocp.args.JsonSave(config),
            }
        )
        saved = self._manager.save(step, args=args, force=True)
        if saved:
            log.info("saving checkpoint for step %d to %s", step, self.directory)
        return bool(saved)

    # -- restore ---------------------------------------------------------------------------

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        """Restores `step` (default: the latest) onto the shardings in `abstract_state`.

        `abstract_state` is the target tree: ShapeDtypeStructs carrying a ``.sharding`` (or
        concrete jax arrays, whose sharding is used). Returns (state, data_state, config).
        Raises FileNotFoundError when there is no such checkpoint and CheckpointMismatchError
        when the saved tree does not fit `abstract_state`.
        """
        self._check_open()
        self.wait()  # a save still in flight in this process must be committed before reading
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
            step = steps[-1]
        step = _as_step(step)
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; saved steps: {steps or 'none'}"
            )
        target = _restore_target(abstract_state)
        where = f"checkpoint {self.directory / str(step)}"
        saved = self._manager.item_metadata(step)[STATE]
        if saved is None or getattr(saved, "tree", None) is None:
            raise CheckpointMismatchError(f"{where} has no readable '{STATE}' item")
        comparable = jax.tree.map(_as_stored, target)
        # The parameters first: when the model differs, their names say what differs (the
        # optimizer state repeats every problem under opt_state/... and would crowd them out).
        saved_params, target_params = _params(saved.tree), _params(comparable)
        if saved_params is not None and target_params is not None:
            _check_fits(saved_params, target_params, f"{where} (params)")
        _check_fits(saved.tree, comparable, where)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    STATE: ocp.args.StandardRestore(target),
                    DATA: ocp.args.JsonRestore(),
                    CONFIG: ocp.args.JsonRestore(),
                }
            ),
        )
        return restored[STATE], dict(restored[DATA] or {}), dict(restored[CONFIG] or {})

    def set_aside(self, step: int, label: str) -> str:
        """Moves `step` out of the saved steps to ``<label>-<step>`` beside them (kept, never
        deleted: a diverged or unreadable checkpoint may still be worth a look); returns its path."""
        self._check_open()
        self.wait()
        target = self.directory / f"{label}-{step}"
        if jax.process_index() == 0:
            paths.rmtree(target)
            paths.move_tree(self.directory / str(step), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxalign set_aside {step}")
        self._manager.reload()  # forget the step orbax had listed
        return str(target)

    # -- lifecycle -------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until every pending save is committed (renamed into place); re-raises an
        error a background save hit."""
        if not self._closed:
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager; further calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"Checkpointer for {self.directory} is closed")


def _close_before_thread_shutdown(checkpointer: Checkpointer) -> None:
    """Makes interpreter exit commit pending async saves.

    `atexit` hooks run too late: by then concurrent.futures has stopped accepting work and
    orbax's commit fails. threading's own exit hooks run earlier, newest first, so one
    registered now (after concurrent.futures registered its own on import) runs before it.
    It holds only a weak reference, so a dropped Checkpointer is not kept alive.
    """
    ref = weakref.ref(checkpointer)

    def hook() -> None:
        ckpt = ref()
        if ckpt is not None:
            ckpt.close()

    register = getattr(threading, "_register_atexit", None)
    if register is None:  # not CPython's threading: best effort
        import atexit

        atexit.register(hook)
    else:
        register(hook)


def _as_step(step: Any) -> int:
    try:
        value = operator.index(step)  # int, numpy and 0-d jax integers; not floats or bools
    except TypeError:
        value = None
    if value is None or isinstance(step, bool) or value < 0:
        raise ValueError(f"checkpoint step must be a non-negative integer, got {step!r}")
    return value


def _json_item(name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise TypeError(f"Checkpointer.save: {name} must be a dict, got {type(value).__name__}")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"Checkpointer.save: {name} is not JSON-serialisable: {e}") from None
    return dict(value)


def _restore_target(abstract_state: Any) -> Any:
    """ShapeDtypeStructs with shardings; a leaf without one is an error naming it."""

    def one(path, leaf):
        sharding = getattr(leaf, "sharding", None)
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype") or sharding is None:
            raise ValueError(
                f"Checkpointer.restore: leaf {jax.tree_util.keystr(path)} of abstract_state is "
                f"{type(leaf).__name__} without a sharding; pass jax.ShapeDtypeStruct(shape, dtype, "
                "sharding=...) leaves (e.g. from abstract_train_state)"
            )
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def _params(tree: Any) -> Any:
    """The ``params`` sub-tree of a train state (dataclass field or dict key), if it has one."""
    if isinstance(tree, Mapping):
        return tree.get("params")
    return getattr(tree, "params", None)


def _is_key(leaf: Any) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _as_stored(leaf: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    """How orbax records a leaf: a typed PRNG key as its uint32 key data."""
    return jax.eval_shape(jax.random.key_data, leaf) if _is_key(leaf) else leaf


def _check_fits(saved: Any, target: Any, where: str) -> None:
    """Names missing, unexpected, wrongly shaped and wrongly typed leaves. Shapes and names are
    `check_tree_fits`'s; dtypes are checked here because orbax would cast silently, and resuming
    a run in another dtype is a different model."""
    check_tree_fits(saved, target, where)
    saved_flat, target_flat = _flatten(saved), _flatten(target)
    problems = [
        f"{key}: saved dtype {saved_flat[key].dtype}, model expects {target_flat[key].dtype}"
        for key in sorted(set(saved_flat) & set(target_flat))
        if jnp.dtype(saved_flat[key].dtype) != jnp.dtype(target_flat[key].dtype)
    ]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} in all)" if len(problems) > 10 else "")
        raise CheckpointMismatchError(f"{where} does not fit the configured model: {shown}")
