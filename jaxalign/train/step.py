"""The jit-compiled train and eval steps.

    step = make_train_step(model_cfg, tx, mesh, microbatches=2, schedule=schedule)
    state, metrics = step(state, batch)          # batch: dict of numpy [batch, seq_len] arrays
    evaluate = make_eval_step(model_cfg, mesh)
    metrics = evaluate(state.params, batch)

Both return callables that enter the mesh themselves, put this process's share of the batch onto
the mesh and compile once per batch shape; the train step donates the state (do not touch the
state passed in after the call). The train step accumulates microbatches with one normaliser for
the whole batch, draws its randomness as a pure function of (seed, step) so that a resumed run
draws what an uninterrupted one would, trains several streams each with its own exact normaliser
(Chain of Hindsight's pretraining mix), gives a ``reference=True`` stream the frozen reference
model's log-probabilities (DPO), and keeps logits, losses and gradients in float32. How each of
these works: docs/training.md.

LoRA (``lora=``, a ``jaxalign.lora.LoraConfig``): the state's params are the adapters, the frozen
base (``base_params``, from ``jaxalign.lora.prepare_base``) is the step's third argument, and the
model computes with the merged kernels; a reference stream's log-probabilities are the base's (the
adapters left out), so DPO keeps no second copy of the weights.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign import logprobs
from jaxalign import lora as lora_lib
from jaxalign import mesh as mesh_lib
from jaxalign.models import ModelConfig, Transformer, param_shardings
from jaxalign.objectives import lm
from jaxalign.train.state import TrainState, step_rng, train_state_shardings, trained_shardings

Array = jax.Array
Batch = dict[str, Any]
BatchTransform = Callable[[Batch, Array], Batch]
Metrics = dict[str, Array]

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
BATCH_AXES = ("batch", "length")  # logical names of the leading axes of every batch array
SINGLE = "main"  # the name of the only stream of a step made without `streams`


@dataclasses.dataclass(frozen=True)
class Stream:
    """One source of rows in a train step: its loss, its weight in the total, its options."""

    loss_fn: lm.LossFn = lm.loss
    weight: float = 1.0
    microbatches: int = 1
    batch_transform: BatchTransform | None = None
    reference: bool = False  # the loss reads batch["ref_logps"] from the reference model


# ---------------------------------------------------------------------------------------------
# Pieces shared by both steps (all run inside jit)


def _forward(model: Transformer, params: Any, batch: Batch) -> Array:
    return model.apply(
        {"params": params}, batch["inputs"], positions=batch["positions"],
        segment_ids=batch["segment_ids"], extra_mask=batch.get("extra_mask"),
    )


def _is_count(name: str) -> bool:
    return name == "loss_weight" or name.startswith("num_")


def _loss_sums(loss_fn: lm.LossFn, logits: Array, batch: Batch) -> tuple[Array, Metrics]:
    """The un-normalised loss (loss * loss_weight) and metrics made additive over microbatches."""
    loss, metrics = loss_fn(logits, batch)
    if "loss_weight" not in metrics:
        raise ValueError(
            f"loss_fn {getattr(loss_fn, '__name__', loss_fn)!r} must report metrics['loss_weight'], "
            f"the normaliser of its loss (see jaxalign.objectives); it reported {sorted(metrics)}"
        )
    weight = jax.lax.stop_gradient(jnp.asarray(metrics["loss_weight"], jnp.float32))
    sums = {
        name: jnp.asarray(value, jnp.float32) * (1.0 if _is_count(name) else weight)
        for name, value in metrics.items()
    }
    return jnp.asarray(loss, jnp.float32) * weight, sums


def _finish(total: dict[str, Any]) -> Metrics:
    """Metrics from the sums over microbatches: every mean divided once by the total loss weight."""
    sums, weight = total["metrics"], total["metrics"]["loss_weight"]
    means = {name: value if _is_count(name) else logprobs.safe_div(value, weight)
             for name, value in sums.items()}
    return {**means, "loss": logprobs.safe_div(total["loss"], weight), "tokens": total["tokens"]}


def _split(batch: Batch, microbatches: int, mesh: Mesh) -> Batch:
    """[B, ...] leaves -> [m, B/m, ...], microbatch k holding rows k, k + m, ... (module doc)."""

    def one(x: Array) -> Array:
        x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)
        names = (None, *BATCH_AXES)[: x.ndim]
        sharding = mesh_lib.logical_sharding(names, x.shape[: len(names)], mesh)
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree.map(one, batch)


def _accumulate(fn: Callable[[Batch, Array], Any], batch: Batch, microbatches: int, mesh: Mesh) -> Any:
    """Sum of ``fn(microbatch, index)`` (a tree of arrays) over the microbatches of `batch`."""
    if microbatches == 1:
        return fn(batch, jnp.zeros((), jnp.int32))
    micro = _split(batch, microbatches, mesh)
    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(fn, first, jnp.zeros((), jnp.int32))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(carry: Any, xs: tuple[Batch, Array]) -> tuple[Any, None]:
        return jax.tree.map(jnp.add, carry, fn(*xs)), None

    total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(microbatches, dtype=jnp.int32)))
    return total


def _tokens(batch: Batch) -> Array:
    return jnp.sum(batch["weights"].astype(jnp.float32))


# ---------------------------------------------------------------------------------------------
# The callable the factories return


class MeshStep:
    """A jitted step bound to its mesh: ``step(first, batch)`` with `first` the train state (train
    step) or the parameters (eval step).

    Per call it checks the batch, places it on the mesh and runs the executable for the batch's
    shapes inside ``jaxalign.mesh.use(mesh)``; ``lower(first, batch)`` gives the lowered
    computation (for cost analysis or to inspect the HLO).
    """

    def __init__(
        self, fn: Callable[..., Any], mesh: Mesh, first_shardings: Any, *, microbatches: dict[str, int],
        donate: bool, frozen: Any = None, frozen_shardings: Any = None,
    ) -> None:
        self.mesh = mesh
        self.microbatches = microbatches  # per stream
        self.stream_names = tuple(microbatches)
        self.frozen = frozen
        self._frozen_shardings = frozen_shardings
        self._fn = fn
        self._first_shardings = first_shardings
        self._donate = donate
        self._jitted: dict[Any, Any] = {}  # batch layout -> jax.jit object

    def __call__(self, first: Any, batch: Batch) -> Any:
        jitted, batch = self._prepare(batch)
        if self._donate and self.frozen is not None:
            # Donating an array that is also the frozen argument crashes the runtime (on CPU a segfault).
            frozen = {id(x) for x in jax.tree.leaves(self.frozen)}
            if any(id(x) in frozen for x in jax.tree.leaves(first)):
                raise ValueError("reference_params share arrays with the train state, which the step "
                                 "donates; pass a copy, e.g. jax.tree.map(jnp.copy, state.params)")
        with mesh_lib.use(self.mesh):
            return jitted(first, batch, self.frozen)

    def lower(self, first: Any, batch: Batch) -> jax.stages.Lowered:
        jitted, batch = self._prepare(batch)
        with mesh_lib.use(self.mesh):
            return jitted.lower(first, batch, self.frozen)

    def batch_shardings(self, batch: Batch) -> Any:
        """The NamedSharding of each batch leaf, for a batch of these (process-local) shapes."""
        return jax.tree.map(lambda x: self._sharding(self._global_shape(x)), self._streams(batch))

    def _streams(self, batch: Batch) -> dict[str, Batch]:
        """{stream: rows}: a flat batch is the rows of the single stream."""
        if self.stream_names == (SINGLE,) and SINGLE not in batch:
            return {SINGLE: dict(batch)}
        unknown = sorted(set(batch) - set(self.stream_names))
        missing = [name for name in self.stream_names if name not in batch]
        if unknown or missing:
            raise ValueError(
                f"this step trains on streams {list(self.stream_names)}; the batch has {sorted(batch)}"
                + (f" (missing {missing})" if missing else "")
            )
        return {name: dict(batch[name]) for name in self.stream_names}

    def _global_shape(self, x: Any) -> tuple[int, ...]:
        if isinstance(x, jax.Array):
            return tuple(x.shape)
        shape = np.shape(x)
        return (global_rows(shape[0], self.mesh), *shape[1:])

    def _sharding(self, shape: tuple[int, ...]) -> NamedSharding:
        names = BATCH_AXES[: len(shape)]
        return mesh_lib.logical_sharding(names, shape[: len(names)], self.mesh)

    def _prepare(self, batch: Batch) -> tuple[Any, dict[str, Batch]]:
        streams = self._streams(batch)
        for name, rows in streams.items():
            where = "batch" if len(streams) == 1 else f"batch[{name!r}]"
            _check_batch(rows, self.microbatches[name], self._global_shape, where)
        shardings = self.batch_shardings(batch)
        placed = jax.tree.map(self._place, streams, shardings)
        key = tuple(sorted(
            (s, n, x.shape, str(x.dtype)) for s, rows in placed.items() for n, x in rows.items()
        ))
        if key not in self._jitted:
            replicated = NamedSharding(self.mesh, PartitionSpec())
            out_shardings = (self._first_shardings, replicated) if self._donate else replicated
            self._jitted[key] = jax.jit(
                self._fn,
                in_shardings=(self._first_shardings, shardings, self._frozen_shardings),
                out_shardings=out_shardings,
                donate_argnums=(0,) if self._donate else (),
            )
        return self._jitted[key], placed

    def _place(self, x: Any, sharding: NamedSharding) -> jax.Array:
        if isinstance(x, jax.Array):
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, self._global_shape(x))


@functools.lru_cache(maxsize=64)  # asked for every batch leaf of every step
def global_rows(local_rows: int, mesh: Mesh) -> int:
    """The global batch of which this process holds `local_rows` rows (a numpy batch is the rows
    its devices hold): local_rows times the number of process groups that hold different rows --
    every process when the batch is split over all devices, 1 when it is replicated across
    processes (say a mesh of tensor parallelism alone)."""
    count = jax.process_count()
    if count == 1:
        return local_rows
    # Largest first: a smaller guess can look consistent only because its batch does not divide
    # the data axes, which replicates it.
    for groups in (g for g in range(count, 0, -1) if count % g == 0):
        total = local_rows * groups
        if len(mesh_lib.process_batch_rows(total, mesh)) == local_rows:
            return total
    raise ValueError(f"a batch of {local_rows} rows on process {jax.process_index()} is not this "
                     f"process's share of any global batch on mesh {dict(mesh.shape)}")


def _check_batch(
    batch: Batch, microbatches: int, global_shape: Callable[[Any], tuple[int, ...]], where: str = "batch"
) -> None:
    missing = [name for name in BATCH_KEYS if name not in batch]
    if missing:
        raise ValueError(
            f"{where} is missing {missing}; a batch has {list(BATCH_KEYS)} (jaxalign.data.packing), "
            f"got {sorted(batch)}"
        )
    rows, length = np.shape(batch["inputs"])[:2] if np.ndim(batch["inputs"]) == 2 else (None, None)
    if rows is None:
        raise ValueError(f"{where}['inputs'] must be [batch, seq_len], got shape {np.shape(batch['inputs'])}")
    for name, x in batch.items():
        shape = np.shape(x)
        if shape[:2] != (rows, length):
            raise ValueError(
                f"{where}[{name!r}] has shape {shape}, but {where}['inputs'] is {(rows, length)}: every "
                "batch array starts with [batch, seq_len]"
            )
    global_rows = global_shape(batch["inputs"])[0]
    if global_rows % microbatches:
        raise ValueError(
            f"{where}: {global_rows} rows do not split into microbatches={microbatches}; "
            "the batch size must be a multiple of the number of microbatches"
        )


def _check_microbatches(microbatches: int) -> int:
    if isinstance(microbatches, bool) or not isinstance(microbatches, int | np.integer) or microbatches < 1:
        raise ValueError(f"microbatches={microbatches!r} must be a positive integer")
    return int(microbatches)


# ---------------------------------------------------------------------------------------------
# The steps


def make_train_step(
    model_cfg: ModelConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    microbatches: int = 1,
    loss_fn: lm.LossFn = lm.loss,
    schedule: optax.Schedule | None = None,
    batch_transform: BatchTransform | None = None,
    streams: dict[str, Stream] | None = None,
    reference_params: Any = None,
    lora: lora_lib.LoraConfig | None = None,
    base_params: Any = None,
) -> MeshStep:
    """``step(state, batch) -> (new_state, metrics)``: one optimiser update on `batch`.

    Without `streams` the step trains on one stream of rows with `loss_fn`, `microbatches` and
    `batch_transform`; with `streams` (see the module docstring) those three must be left at their
    defaults and the batch is ``{stream name: rows}``. `reference_params` (parameters of the same
    model config, e.g. the initial policy) are required by streams with ``reference=True``. With `lora`
    the state trains adapters on the frozen `base_params` (required), which are also the reference.

    Metrics (float32 scalars, replicated): ``loss`` (the weighted sum over streams), ``grad_norm``
    (global norm of the combined gradient, before clipping), ``tokens`` (sum of loss weights), ``lr``
    (``schedule(state.step)``, the rate of this update; only with `schedule`) and every metric of
    each stream's loss, combined over microbatches as `jaxalign.objectives` describes (prefixed
    with ``"<stream>/"`` when there are several streams). A stream with no loss weight contributes
    loss 0 and zero gradients.
    """
    streams = _resolve_streams(streams, loss_fn, microbatches, batch_transform)
    _check_lora(lora, base_params, reference_params)
    if any(s.reference for s in streams.values()) and reference_params is None and lora is None:
        raise ValueError("a stream with reference=True needs reference_params (the frozen reference model)")
    model = Transformer(model_cfg)
    shardings = train_state_shardings(model_cfg, tx, mesh, lora)

    def train_step(state: TrainState, batch: dict[str, Batch], frozen: Any) -> tuple[TrainState, Metrics]:
        full, reference = _views(model_cfg, lora, frozen)
        rng = step_rng(state)
        grads32, metrics = None, {}
        loss = tokens = jnp.zeros((), jnp.float32)
        for index, (name, stream) in enumerate(streams.items()):
            # Stream 0 uses the step key itself, so a single stream draws what it always drew.
            key = rng if index == 0 else jax.random.fold_in(rng, 1_000_003 + index)
            total = _stream_sums(model, shardings, mesh, stream, state.params, batch[name], reference, key,
                                 full)
            scale = stream.weight / jnp.where(total["metrics"]["loss_weight"] > 0,
                                              total["metrics"]["loss_weight"], 1.0)
            scaled = jax.tree.map(lambda g, scale=scale: g * scale, total["grads"])
            grads32 = scaled if grads32 is None else jax.tree.map(jnp.add, grads32, scaled)
            finished = _finish(total)
            loss += stream.weight * finished["loss"]
            tokens += finished["tokens"]
            prefix = "" if len(streams) == 1 else f"{name}/"
            kept = {k: v for k, v in finished.items() if prefix or k not in ("loss", "tokens")}
            metrics.update({prefix + k: v for k, v in kept.items()})
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads32, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
        )
        metrics.update({"loss": loss, "tokens": tokens, "grad_norm": optax.tree.norm(grads32)})
        # Tokens with a loss weight, over the global batch of every stream (the throughput metric).
        metrics["loss_tokens"] = sum(jnp.sum(batch[name]["weights"] > 0, dtype=jnp.float32)
                                     for name in streams)
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    frozen, frozen_shardings = _frozen(model_cfg, mesh, lora, base_params, reference_params, shardings.params)
    return MeshStep(train_step, mesh, shardings, microbatches={n: s.microbatches for n, s in streams.items()},
                    donate=True, frozen=frozen, frozen_shardings=frozen_shardings)


def _check_lora(lora: lora_lib.LoraConfig | None, base_params: Any, reference_params: Any) -> None:
    if lora is None and base_params is not None:
        raise ValueError("base_params is the frozen base of a LoRA step; pass lora= as well")
    if lora is not None and base_params is None:
        raise ValueError("a LoRA step needs base_params (jaxalign.lora.prepare_base)")
    if lora is not None and reference_params is not None:
        raise ValueError("a LoRA step's reference is its base with the adapters left out; "
                         "do not pass reference_params")


def _frozen(model_cfg: ModelConfig, mesh: Mesh, lora: lora_lib.LoraConfig | None, base_params: Any,
            reference_params: Any, param_shardings_: Any) -> tuple[Any, Any]:
    """The step's third argument and its shardings: the LoRA base, or the reference parameters."""
    if lora is not None:
        return base_params, lora_lib.base_shardings(model_cfg, lora, mesh)
    return reference_params, None if reference_params is None else param_shardings_


def _views(model_cfg: ModelConfig, lora: lora_lib.LoraConfig | None,
           frozen: Any) -> tuple[Callable[[Any], Any], Any]:
    """(trained -> the parameters the model runs with, the reference parameters), inside jit."""
    if lora is None:
        return (lambda p: p), frozen
    return (lambda p: lora_lib.with_adapters(frozen, p, model_cfg, lora)), frozen


def _stream_sums(model: Transformer, shardings: Any, mesh: Mesh, stream: Stream, params: Any, rows: Batch,
                 reference: Any, rng: Array, full: Callable[[Any], Any] = lambda p: p) -> dict[str, Any]:
    """One stream's loss and metric sums and summed float32 gradients over its microbatches; `full`
    makes the model's parameters from the trained ones (LoRA: the adapters on the base)."""
    def micro(mb: Batch, index: Array) -> dict[str, Any]:
        if stream.batch_transform is not None:
            mb = stream.batch_transform(mb, jax.random.fold_in(rng, index))
        if stream.reference:
            ref_logits = jax.lax.stop_gradient(_forward(model, reference, mb))
            mb = {**mb, "ref_logps": logprobs.token_logps(ref_logits, mb["targets"])}

        def scaled_loss(p: Any) -> tuple[Array, Metrics]:
            return _loss_sums(stream.loss_fn, _forward(model, full(p), mb), mb)

        (loss_sum, sums), grads = jax.value_and_grad(scaled_loss, has_aux=True)(params)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        # Keep the accumulated gradient in the parameters' (FSDP) shards, not replicated.
        grads = jax.lax.with_sharding_constraint(grads, shardings.params)
        return {"grads": grads, "loss": loss_sum, "metrics": sums, "tokens": _tokens(mb)}

    return _accumulate(micro, rows, stream.microbatches, mesh)


def _resolve_streams(
    streams: dict[str, Stream] | None, loss_fn: lm.LossFn, microbatches: int,
    batch_transform: BatchTransform | None,
) -> dict[str, Stream]:
    if streams is None:
        return {SINGLE: Stream(loss_fn, 1.0, _check_microbatches(microbatches), batch_transform)}
    if loss_fn is not lm.loss or microbatches != 1 or batch_transform is not None:
        raise ValueError("with streams=..., give loss_fn, microbatches and batch_transform per Stream")
    if not streams:
        raise ValueError("streams must name at least one stream")
    for name, stream in streams.items():
        _check_microbatches(stream.microbatches)
        if not isinstance(stream.weight, int | float) or not stream.weight >= 0:
            raise ValueError(f"stream {name!r}: weight={stream.weight!r} must be a number >= 0")
    return dict(streams)


def make_eval_step(
    model_cfg: ModelConfig, mesh: Mesh, loss_fn: lm.LossFn = lm.loss, *, microbatches: int = 1,
    reference_params: Any = None, lora: lora_lib.LoraConfig | None = None, base_params: Any = None,
    reference: bool = False,
) -> MeshStep:
    """``evaluate(params, batch) -> metrics``: ``loss``, ``tokens`` and `loss_fn`'s metrics.

    Deterministic (no randomness, no batch transform) and computed exactly as the train step
    computes its loss, so on the same parameters and batch the two agree. `microbatches` bounds
    memory as in training and does not change the result. With `reference_params` the loss gets
    ``batch["ref_logps"]`` as in training. With `lora` it evaluates adapters (`params`) on
    `base_params`; `reference=True` then gives the loss the base's log-probabilities.
    """
    microbatches = _check_microbatches(microbatches)
    _check_lora(lora, base_params, reference_params)
    model = Transformer(model_cfg)
    with_reference = reference_params is not None or (lora is not None and reference)

    def eval_step(params: Any, batch: dict[str, Batch], frozen: Any) -> Metrics:
        full, ref_params = _views(model_cfg, lora, frozen)

        def micro(mb: Batch, index: Array) -> dict[str, Any]:
            if with_reference:
                mb = {**mb, "ref_logps": logprobs.token_logps(_forward(model, ref_params, mb), mb["targets"])}
            loss_sum, sums = _loss_sums(loss_fn, _forward(model, full(params), mb), mb)
            return {"loss": loss_sum, "metrics": sums, "tokens": _tokens(mb)}

        return _finish(_accumulate(micro, batch[SINGLE], microbatches, mesh))

    shardings = trained_shardings(model_cfg, mesh, lora)
    frozen, frozen_shardings = _frozen(model_cfg, mesh, lora, base_params, reference_params,
                                       param_shardings(model_cfg, mesh))
    return MeshStep(eval_step, mesh, shardings, microbatches={SINGLE: microbatches}, donate=False,
                    frozen=frozen, frozen_shardings=frozen_shardings)
