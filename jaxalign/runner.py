"""One entry point for a train config: the supervised trainer (`jaxalign.train.loop`), or RL
refinement (`jaxalign.methods.rl`) when the objective is RL. The CLI's `train` and notebooks use it."""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from jaxalign.objectives import registry


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains (or resumes) `config` in `workdir`; returns the trainer's summary."""
    if registry.is_rl(config.get("objective", {})):
        from jaxalign.methods import rl

        return rl.train(config, workdir)
    from jaxalign.train import loop

    return loop.train(config, workdir)
