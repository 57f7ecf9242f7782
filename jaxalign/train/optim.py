"""The optimiser: AdamW with a weight-decay mask, global-norm clipping and learning-rate schedules.

Everything is configured by one flat ``optimizer`` section (`default_optimizer_config`), so
``--config.optimizer.peak_lr=1e-3`` works from the CLI and errors name ``optimizer.<key>``.
Schedules (constant, linear, warmup_cosine, wsd) take the optax step count, and warm up for
``warmup_steps`` or for ``warmup_fraction`` of ``total_steps``; weight decay applies
to weight matrices only, decided by parameter name (scanned layers give a norm scale a layer
axis); gradients are accumulated by the train step, not here, so that the optimizer state, the
step count and the schedule count real updates. The schedules and the decay mask in detail:
docs/training.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import config_dict

PREFIX = "optimizer"
SCHEDULES = ("constant", "linear", "warmup_cosine", "wsd")
OPTIMIZERS = ("adamw",)
WSD_DEFAULT_DECAY_FRACTION = 0.2

# Parameter leaf name -> decayed? (None: follow `decay_embeddings`). Extend this table when a
# module with new parameter names appears; unknown names are an error rather than a silent guess.
DECAY_RULES: dict[str, bool | None] = {
    "kernel": True,
    "lora_a": True,  # LoRA adapters (jaxalign.lora): decayed like the kernels they adapt
    "lora_b": True,
    "embedding": None,
    "scale": False,
    "bias": False,
}


def default_optimizer_config() -> ml_collections.ConfigDict:
    """The ``optimizer`` config section with its defaults.

    ``total_steps`` is a typed placeholder: link it to the top-level value in an experiment file
    (``config.optimizer.total_steps = config.get_ref("total_steps")``) or set it directly.
    """
    return ml_collections.ConfigDict(
        {
            "name": "adamw",
            "peak_lr": 3e-4,
            "b1": 0.9,
            "b2": 0.95,
            "eps": 1e-8,
            "weight_decay": 0.1,
            "decay_embeddings": False,
            "grad_clip_norm": 1.0,  # 0 or None: no clipping
            "schedule": "warmup_cosine",
            "warmup_steps": 0,
            # Warmup as a share of total_steps (0: unused), so that it follows a change of total_steps.
            "warmup_fraction": 0.0,
            "decay_steps": config_dict.placeholder(int),  # wsd only
            "end_lr_ratio": 0.1,
            "total_steps": config_dict.placeholder(int),
        }
    )


def make_schedule(
    kind: str,
    *,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    end_lr_ratio: float = 0.0,
) -> optax.Schedule:
    """A learning-rate schedule of `kind` (see the module docstring) built from optax pieces."""
    if kind not in SCHEDULES:
        raise ValueError(f"{PREFIX}.schedule={kind!r} is unknown; choose one of {list(SCHEDULES)}")
    peak_lr = _number("peak_lr", peak_lr, minimum=0.0)
    end_lr_ratio = _number("end_lr_ratio", end_lr_ratio, minimum=0.0, maximum=1.0)
    total_steps = _integer("total_steps", total_steps, minimum=1)
    warmup_steps = _integer("warmup_steps", warmup_steps, minimum=0)
    if warmup_steps > total_steps:
        raise ValueError(
            f"{PREFIX}.warmup_steps={warmup_steps} exceeds {PREFIX}.total_steps={total_steps}"
        )
    if kind != "wsd" and decay_steps is not None:
        raise ValueError(
            f"{PREFIX}.decay_steps={decay_steps} only applies to schedule='wsd'; "
            f"schedule={kind!r} decays over total_steps - warmup_steps"
        )
    end_lr = peak_lr * end_lr_ratio
    decay_len = total_steps - warmup_steps
    warmup = (warmup_steps, optax.linear_schedule(0.0, peak_lr, warmup_steps))

    if kind == "constant":
        pieces = [warmup, (1, optax.constant_schedule(peak_lr))]
    elif kind == "linear":
        pieces = [warmup, (decay_len, optax.linear_schedule(peak_lr, end_lr, decay_len))]
    elif kind == "warmup_cosine":
        # cosine_decay_schedule rejects a zero length, so an empty decay phase is left out below.
        cosine = optax.cosine_decay_schedule(peak_lr, max(decay_len, 1), alpha=end_lr_ratio)
        pieces = [warmup, (decay_len, cosine)]
    else:  # wsd
        explicit = decay_steps is not None
        if not explicit:
            decay_steps = max(1, round(WSD_DEFAULT_DECAY_FRACTION * total_steps))
        decay_steps = _integer("decay_steps", decay_steps, minimum=0)
        if decay_steps > decay_len:
            what = "" if explicit else f" (the default, {WSD_DEFAULT_DECAY_FRACTION:.0%} of total_steps)"
            raise ValueError(
                f"{PREFIX}.decay_steps={decay_steps}{what} exceeds {PREFIX}.total_steps - "
                f"{PREFIX}.warmup_steps = {total_steps} - {warmup_steps} = {decay_len}"
            )
        pieces = [
            warmup,
            (decay_len - decay_steps, optax.constant_schedule(peak_lr)),
            (decay_steps, optax.linear_schedule(peak_lr, end_lr, decay_steps)),
        ]
    joined = _join([p for p in pieces if p[0] > 0], fallback=peak_lr)
    # XLA may compute optax's count / steps as count * (1 / steps), which lands a decay to 0 at
    # -1.5e-8 rather than 0: a negative learning rate would step uphill, so clip to the range.
    return lambda step: jnp.clip(joined(step), 0.0, peak_lr)


def _join(pieces: list[tuple[int, optax.Schedule]], fallback: float) -> optax.Schedule:
    """Runs each (length, schedule) piece in turn; the last one holds its final value for ever."""
    if not pieces:
        return optax.constant_schedule(fallback)
    if len(pieces) == 1:
        return pieces[0][1]
    boundaries = np.cumsum([length for length, _ in pieces[:-1]]).tolist()
    return optax.join_schedules([schedule for _, schedule in pieces], boundaries)


def weight_decay_mask(params: Any, decay_embeddings: bool) -> Any:
    """A tree of bools like `params`: True where AdamW's weight decay applies (see module doc).

    Only the parameter paths are read, so abstract trees (ShapeDtypeStructs) work as well.
    """

    def one(path, _leaf) -> bool:
        name = _key_name(path[-1]) if path else None
        if name not in DECAY_RULES:
            raise ValueError(
                f"weight_decay_mask: parameter {jax.tree_util.keystr(path)!r} has leaf name "
                f"{name!r}, which has no rule; known names: {sorted(DECAY_RULES)} "
                "(extend jaxalign.train.optim.DECAY_RULES)"
            )
        rule = DECAY_RULES[name]
        return bool(decay_embeddings) if rule is None else rule

    return jax.tree_util.tree_map_with_path(one, params)


def _key_name(key: Any) -> str | None:
    for attr in ("key", "name"):  # DictKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return None


def make_optimizer(
    cfg: Mapping[str, Any] | ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """clip_by_global_norm -> adamw(schedule, mask=weight_decay_mask), and the schedule.

    `cfg` is the ``optimizer`` section (a ConfigDict or a plain mapping); missing keys take the
    defaults of `default_optimizer_config`, unknown keys are an error. The schedule is returned as
    well so the train step can log the learning rate as ``schedule(step)``.
    """
    defaults = default_optimizer_config()
    given = dict(cfg.items()) if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    unknown = sorted(set(given) - set(defaults.keys()))
    if unknown:
        raise ValueError(
            f"unknown {PREFIX} keys {[f'{PREFIX}.{k}' for k in unknown]}; "
            f"known keys: {sorted(defaults.keys())}"
        )
    c = {**dict(defaults.items()), **given}
    if c["name"] not in OPTIMIZERS:
        raise ValueError(f"{PREFIX}.name={c['name']!r} is unknown; choose one of {list(OPTIMIZERS)}")
    if c["total_steps"] is None:
        raise ValueError(
            f"{PREFIX}.total_steps is not set; link it to the run's total_steps "
            "(config.optimizer.total_steps = config.get_ref('total_steps'))"
        )
    b1 = _number("b1", c["b1"], minimum=0.0, maximum=1.0, open_max=True)
    b2 = _number("b2", c["b2"], minimum=0.0, maximum=1.0, open_max=True)
    eps = _number("eps", c["eps"], minimum=0.0)
    weight_decay = _number("weight_decay", c["weight_decay"], minimum=0.0)
    clip = 0.0 if c["grad_clip_norm"] is None else _number("grad_clip_norm", c["grad_clip_norm"], minimum=0.0)
    decay_embeddings = c["decay_embeddings"]
    if not isinstance(decay_embeddings, bool):
        raise ValueError(f"{PREFIX}.decay_embeddings={decay_embeddings!r} must be True or False")

    schedule = make_schedule(
        c["schedule"],
        peak_lr=c["peak_lr"],
        total_steps=c["total_steps"],
        warmup_steps=warmup_steps(c),
        decay_steps=c["decay_steps"],
        end_lr_ratio=c["end_lr_ratio"],
    )
    # identity() when clipping is off keeps the state tree the same shape (both are EmptyState),
    # so a checkpoint restores whichever way grad_clip_norm is set.
    clipper = optax.clip_by_global_norm(clip) if clip > 0 else optax.identity()
    adamw = optax.adamw(
        schedule,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=lambda params: weight_decay_mask(params, decay_embeddings),
    )
    return optax.chain(clipper, adamw), schedule


def warmup_steps(cfg: Mapping[str, Any]) -> int:
    """The warmup length of an ``optimizer`` section: ``warmup_steps``, or ``warmup_fraction`` of
    ``total_steps`` rounded to a step (Python's round: halves to even). Setting both is an error."""
    steps, fraction = cfg.get("warmup_steps", 0), cfg.get("warmup_fraction", 0.0)
    fraction = _number("warmup_fraction", 0.0 if fraction is None else fraction, minimum=0.0, maximum=1.0,
                       open_max=True)
    if not fraction:
        return steps
    if steps:
        raise ValueError(f"{PREFIX}.warmup_steps={steps} and {PREFIX}.warmup_fraction={fraction} both set "
                         f"the warmup; set the other one to 0")
    total = _integer("total_steps", cfg.get("total_steps"), minimum=1)
    return round(fraction * total)


def opt_state_shardings(
    tx: optax.GradientTransformation, params_shapes: Any, param_shardings: Any, mesh: Mesh
) -> Any:
    """NamedShardings for ``tx.init(params)``: every copy of the parameter tree inside the state
    (Adam's mu and nu) is sharded like the parameters; everything else (the step count) is
    replicated. Use as ``jax.jit(tx.init, out_shardings=...)`` and for checkpoint restore targets.

    ``jax.eval_shape(tx.init, ...)`` drops shardings, hence the rebuild: a sub-tree of the state
    whose tree structure equals the parameters' takes `param_shardings` leaf by leaf (a leaf whose
    shape differs from its parameter's, as in factored optimisers, is replicated instead).
    """
    params_def = jax.tree.structure(params_shapes)
    if jax.tree.structure(param_shardings) != params_def:
        raise ValueError("opt_state_shardings: param_shardings does not have the structure of params_shapes")
    abstract_state = jax.eval_shape(tx.init, params_shapes)
    replicated = NamedSharding(mesh, PartitionSpec())

    def like_params(node) -> bool:
        return jax.tree.structure(node) == params_def

    def one(node):
        if not like_params(node):
            return replicated
        return jax.tree.map(
            lambda state_leaf, param, sharding: sharding
            if tuple(state_leaf.shape) == tuple(param.shape) else replicated,
            node, params_shapes, param_shardings,
        )

    return jax.tree.map(one, abstract_state, is_leaf=like_params)


def _number(
    key: str, value: Any, *, minimum: float, maximum: float = math.inf, open_max: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{PREFIX}.{key}={value!r} must be a number")
    too_big = value >= maximum if open_max else value > maximum
    if value < minimum or too_big or math.isnan(value):
        upper = "" if maximum == math.inf else f" and {'<' if open_max else '<='} {maximum}"
        raise ValueError(f"{PREFIX}.{key}={value!r} must be >= {minimum}{upper}")
    return float(value)


def _integer(key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{PREFIX}.{key}={value!r} must be an integer")
    if value < minimum:
        raise ValueError(f"{PREFIX}.{key}={value} must be >= {minimum}")
    return int(value)
