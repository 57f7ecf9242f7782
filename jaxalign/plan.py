"""Memory planner: the per-device bytes of one training step, and the largest batch that fits.

    plan = estimate(get_preset("7b", dtype="bfloat16", remat="full"), {"fsdp": 64}, batch=256, seq_len=2048)
    plan.total / 2**30                                        # GiB per device
    largest_batch(cfg, {"fsdp": 64}, 2048, DEVICES["tpu-v4"])  # global rows
    jaxalign plan --config experiments/default.py --device tpu-v4 --mesh dp:1,fsdp:64,tp:1

The model is analytic, so that a pod can be planned from a laptop: nothing is compiled and no mesh
is built. It is a sum of named terms (params, opt_state, grads, inputs, and the larger of
activations and the optimizer update), each the size of tensors the real train step
(`jaxalign.train.step`) holds, sharded by the real rules (`jaxalign.mesh.LOGICAL_RULES`) on a
`jax.sharding.AbstractMesh`; `xla_memory` compiles the real step and reads XLA's own figures to
check it. Every term, the activation model per remat policy, the measured error against XLA and
the backend behaviour it does not follow are in docs/performance.md.

LoRA / QLoRA (``lora=``, a ``jaxalign.lora.LoraConfig``): params are the frozen base in its dtype
(int4 counted packed, half a byte, as TPUs and GPUs store it) plus the adapters; the optimizer
state, gradients and update are the adapters' alone; activations are those of full fine-tuning
(the merged kernel of one layer and its gradient are what a full step's layer holds too).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from jaxalign import lora as lora_lib
from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.models import ModelConfig
from jaxalign.train import optim
from jaxalign.train import state as state_lib

GiB = 2**30

# HBM per chip: Google's GiB for TPUs, NVIDIA's nominal sizes for GPUs (an "80 GB" H100 shows
# 79.6 GiB in nvidia-smi, a "141 GB" H200 140 GiB). Less is usable (module docstring).
DEVICES: dict[str, int] = {
    "tpu-v4": 32 * GiB,
    "tpu-v5e": 16 * GiB,
    "tpu-v5p": 95 * GiB,
    "tpu-v6e": 32 * GiB,
    "a100-40gb": 40 * GiB,
    "a100": 80 * GiB,
    "h100": 80 * GiB,
    "h200": 141 * 10**9,
}

FIELDS = ("params", "opt_state", "grads", "activations", "inputs", "update", "total")


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one train step (module docstring for every term)."""

    params: int
    opt_state: int
    grads: int
    activations: int  # peak of forward + backward: stack + invariants + max(layer_backward, head)
    total: int  # params + opt_state + grads + inputs + max(activations, update)
    inputs: int  # the batch arrays
    update: int  # optimizer-update temporaries (after the backward)
    rows_per_device: int  # batch rows per device per microbatch
    terms: Mapping[str, int]  # the activation terms: saved_per_layer, stack, invariants, ...

    @property
    def dominant(self) -> str:
        """The largest of params, opt_state, grads and activations."""
        return max(("params", "opt_state", "grads", "activations"), key=lambda k: getattr(self, k))

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in FIELDS}, "rows_per_device": self.rows_per_device,
                "dominant": self.dominant, "terms": dict(self.terms)}


def abstract_mesh(mesh_shape: Mapping[str, int]) -> AbstractMesh:
    """An AbstractMesh of the dp/fsdp/tp sizes in `mesh_shape` (missing axes: 1); no devices needed."""
    unknown = sorted(set(mesh_shape) - set(mesh_lib.AXES))
    if unknown:
        raise ValueError(f"mesh_shape: unknown axes {unknown}; axes are {list(mesh_lib.AXES)}")
    sizes = {name: mesh_shape.get(name, 1) for name in mesh_lib.AXES}
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"mesh_shape[{name!r}]={size!r} must be a positive integer")
    return AbstractMesh(tuple(int(sizes[n]) for n in mesh_lib.AXES), mesh_lib.AXES,
                        axis_types=(AxisType.Auto,) * len(mesh_lib.AXES))


def _local(names: tuple[str | None, ...], shape: tuple[int, ...], mesh: AbstractMesh) -> int:
    """Elements of one device's shard of an array with these logical names."""
    spec = tuple(mesh_lib.logical_to_spec(names, shape, mesh))
    spec += (None,) * (len(shape) - len(spec))
    total = 1
    for dim, axes in zip(shape, spec, strict=True):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        total *= dim // math.prod(mesh.shape[a] for a in axes)
    return total


def _shard_bytes(tree: Any) -> int:
    # int4 is counted packed (two per byte), as TPUs and GPUs store it
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * (0.5 if x.dtype == np.dtype("int4") else
                                                              np.dtype(x.dtype).itemsize)
               for x in jax.tree.leaves(tree))


def _base_bytes(cfg: ModelConfig, lora: lora_lib.LoraConfig, mesh: AbstractMesh) -> int:
    """Per-device bytes of a LoRA run's frozen base (its dtype; QLoRA's kernels quantised)."""
    shapes = lora_lib.base_shapes(cfg, lora)
    shardings = lora_lib.base_shardings(cfg, lora, mesh)
    return int(_shard_bytes(jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                         shapes, shardings)))


def _optimizer():
    config = optim.default_optimizer_config()
    config.total_steps = 1  # the state's structure does not depend on the schedule
    return optim.make_optimizer(config)


@functools.lru_cache(maxsize=128)
def _state(cfg: ModelConfig, sizes: tuple[int, ...],
           lora: lora_lib.LoraConfig | None = None) -> dict[str, int]:
    """Train-state bytes per device and per-layer weight sizes; cached (tracing takes ~0.5 s)."""
    mesh = abstract_mesh(dict(zip(mesh_lib.AXES, sizes, strict=True)))
    # The parameters do not depend on the attention backend; "xla" traces anywhere (splash needs
    # segment ids, cudnn a GPU).
    cfg = cfg.replace(attention_impl="xla")
    state = state_lib.abstract_train_state(cfg, _optimizer()[0], mesh, lora)
    # Element counts per device of one layer's weights as stored (sharded) and as its matmuls see
    # them (gathered over fsdp and dp, still split over tp), and of the output projection.
    tp_only = abstract_mesh({"tp": mesh.shape["tp"]})
    stored = gathered = head = 0
    leaves = jax.tree_util.tree_flatten_with_path(
        models.abstract_params(cfg), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    for path, leaf in leaves:
        top = str(getattr(path[0], "key", path[0]))
        if top.startswith("layers"):  # "layers" (scanned) or "layers_0", "layers_1", ...
            stored += _local(leaf.names, leaf.value.shape, mesh)
            gathered += _local(leaf.names, leaf.value.shape, tp_only)
        elif top in ("lm_head", "score") or (top == "embed_tokens" and cfg.tie_word_embeddings):
            head += _local(leaf.names, leaf.value.shape, tp_only)
    params = jax.tree.leaves(state.params)
    return {
        "params": int(_shard_bytes(params)) + (0 if lora is None else _base_bytes(cfg, lora, mesh)),
        "param_elements": sum(math.prod(x.sharding.shard_shape(x.shape)) for x in params),
        "opt_state": _shard_bytes((state.opt_state, state.step, state.rng)),
        "layer_weights_local": stored // cfg.num_hidden_layers,
        "layer_weights": gathered // cfg.num_hidden_layers,
        "head_weights": head,
    }


def _attention_kind(cfg: ModelConfig, rows: int, seq_len: int, platform: str | None) -> str:
    """"scores" (the whole score matrix), "chunked" or "flash" (a fused kernel)."""
    impl = cfg.attention_impl
    if impl == "auto":
        from jaxalign.models import attention

        # Training passes segment ids (a plain causal mask), so TPU may choose splash.
        q = jax.ShapeDtypeStruct((rows, seq_len, cfg.num_attention_heads, cfg.dims_per_head), cfg.dtype)
        k = jax.ShapeDtypeStruct((rows, seq_len, cfg.kv_heads, cfg.dims_per_head), cfg.dtype)
        impl = attention.auto_impl(q, k, jax.ShapeDtypeStruct((rows, seq_len), np.int32), platform)
    if impl in ("xla", "dot_product"):
        return "scores"
    return "chunked" if impl == "chunked" else "flash"


def estimate(cfg: ModelConfig, mesh_shape: Mapping[str, int], batch: int, seq_len: int, *,
             microbatches: int = 1, platform: str | None = None,
             lora: lora_lib.LoraConfig | None = None) -> MemoryPlan:
    """Bytes per device of one train step of `cfg` on a mesh of `mesh_shape` ({"dp", "fsdp", "tp"}
    sizes) with `batch` rows (the global batch) of `seq_len` tokens; see the module docstring.

    `platform` ("tpu", "gpu", "cpu"; default: this machine's) only matters for
    attention_impl="auto", which chooses its backend by platform. With `lora`, a LoRA / QLoRA step
    (module docstring).
    """
    for name, value in (("batch", batch), ("seq_len", seq_len), ("microbatches", microbatches)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if batch % microbatches:
        raise ValueError(f"batch={batch} is not a multiple of microbatches={microbatches}")
    mesh = abstract_mesh(mesh_shape)
    state = _state(cfg, tuple(mesh.shape[a] for a in mesh_lib.AXES), lora)
    rows = _local(("batch",), (batch // microbatches,), mesh)
    terms = _activations(cfg, mesh, state, rows, seq_len, _attention_kind(cfg, rows, seq_len, platform))
    activations = terms["stack"] + terms["invariants"] + max(terms["layer_backward"], terms["head"])
    grads = state["param_elements"] * 4 * (2 if microbatches > 1 else 1)
    update = state["param_elements"] * 4
    inputs = 5 * _local(("batch",), (batch,), mesh) * seq_len * 4
    total = state["params"] + state["opt_state"] + grads + inputs + max(activations, update)
    return MemoryPlan(params=state["params"], opt_state=state["opt_state"], grads=grads,
                      activations=activations, total=total, inputs=inputs, update=update,
                      rows_per_device=rows, terms=terms)


def _activations(cfg: ModelConfig, mesh: AbstractMesh, state: dict[str, int], rows: int, length: int,
                 attention: str) -> dict[str, int]:
    """The activation terms of the module docstring, in bytes per device."""
    c = np.dtype(cfg.dtype).itemsize
    p = np.dtype(cfg.param_dtype).itemsize
    h, d, n = cfg.hidden_size, cfg.dims_per_head, rows * length
    heads = _local(("act_heads",), (cfg.num_attention_heads,), mesh)
    kv = _local(("act_kv_heads",), (cfg.kv_heads,), mesh)
    mlp = _local(("act_mlp",), (cfg.intermediate_size,), mesh)
    if cfg.head == "score":
        logit_cols = cfg.num_labels
    else:
        logit_cols = _local(("act_vocab",), (cfg.vocab_size,), mesh)
    vocab_rows = _local(("vocab",), (cfg.vocab_size,), mesh)  # the gathered embedding table
    hd, kvd = heads * d, kv * d
    row_stats = 2 * rows * heads * length * 4
    scores = rows * heads * length * length if attention == "scores" else 0

    norm = n * h * (8 + c) + 2 * n * 4
    attn_res = norm + n * (2 * hd + 2 * kvd) * c + scores * (4 + c) + row_stats
    mlp_res = norm + 6 * n * mlp * c
    weight_copy = state["layer_weights_local"] * c if c != p else 0
    # What the backward of one layer materialises beside the stack: its attention-side tensors
    # while the attention is differentiated, its MLP-side ones (after the MLP input, which under
    # remat "full" needs the attention recomputed first) while the MLP is.
    attn_operands = n * (h + 2 * hd + 2 * kvd) * c + scores * c  # norm out, q, k, v, out, probs
    mlp_operands = n * (h + mlp) * c  # norm out, gate*up
    if cfg.remat == "none":
        saved = attn_res + mlp_res + weight_copy
        attn_side, mlp_side = (attn_operands, mlp_operands) if cfg.scan_layers else (0, 0)
    elif cfg.remat == "save_dots":
        saved = n * (2 * h + hd + 2 * kvd + 2 * mlp) * c
        attn_side, mlp_side = attn_res, mlp_res
    else:
        saved = n * h * c
        attn_side, mlp_side = attn_res, attn_res + mlp_res
    if attention == "scores":
        score_grads = scores * (c + 4)
    else:
        score_grads = n * (hd + 2 * kvd) * 4
        if attention == "chunked":
            from jaxalign.models import attention as attention_lib

            block = min(length, attention_lib.CHUNK_SIZE)
            score_grads += 4 * rows * heads * block * block * 4
    mlp_grads = 3 * n * mlp * c
    weights = 2 * c * state["layer_weights"]
    layer_backward = weights + max(attn_side + score_grads, mlp_side + mlp_grads)

    mask = scores if cfg.remat == "none" and scores else rows * length * length  # bool
    invariants = 4 * n * d * 4 + mask
    logits = n * logit_cols * (12 + (2 * c if c != 4 else 0))
    head = norm + logits + 2 * c * state["head_weights"] + vocab_rows * h * 4
    return {
        "saved_per_layer": saved,
        "stack": cfg.num_hidden_layers * saved,
        "invariants": invariants,
        "layer_backward": layer_backward,
        "layer_weights": weights,
        "attention_backward": attn_side + score_grads,
        "mlp_backward": mlp_side + mlp_grads,
        "head": head,
        "logits": logits,
    }


def largest_batch(cfg: ModelConfig, mesh_shape: Mapping[str, int], seq_len: int, device_bytes: int, *,
                  microbatches: int = 1, platform: str | None = None,
                  lora: lora_lib.LoraConfig | None = None) -> int:
    """The largest global batch whose `estimate(...).total` fits in `device_bytes`; 0 if none does.

    The batch is a multiple of dp * fsdp * microbatches, so every microbatch splits evenly over the
    data-parallel devices (a batch those do not divide is replicated, not sharded).
    """
    mesh = abstract_mesh(mesh_shape)
    unit = mesh.shape["dp"] * mesh.shape["fsdp"] * microbatches

    def fits(k: int) -> bool:
        return estimate(cfg, mesh_shape, k * unit, seq_len, microbatches=microbatches,
                        platform=platform, lora=lora).total <= device_bytes

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):  # the total grows linearly in the batch, so this ends
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low * unit


def xla_memory(cfg: ModelConfig, mesh: jax.sharding.Mesh, batch: int, seq_len: int,
               microbatches: int = 1, lora: lora_lib.LoraConfig | None = None) -> dict[str, int]:
    """XLA's own per-device figures for the real train step of `cfg` on `mesh` (compiled, not run).

    The step is `jaxalign.train.step.make_train_step` with the default AdamW of
    `jaxalign.train.optim`, on an abstract train state (nothing is allocated) and a batch of zeros.
    Returns `memory_analysis()`'s arguments, outputs, aliased (outputs reusing donated argument
    buffers) and temps, and peak = arguments + temps + outputs - aliased (module docstring).
    Compiling takes seconds for small models: meant for configs that fit this machine.
    """
    from jaxalign.train import step as step_lib

    tx, schedule = _optimizer()
    state = state_lib.abstract_train_state(cfg, tx, mesh, lora)
    base = None
    if lora is not None:  # the frozen base, abstract too
        base = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            lora_lib.base_shapes(cfg, lora), lora_lib.base_shardings(cfg, lora, mesh))
    step = step_lib.make_train_step(cfg, tx, mesh, microbatches=microbatches, schedule=schedule,
                                    lora=lora, base_params=base)
    tokens = np.zeros((batch, seq_len), np.int32)
    rows = {"inputs": tokens, "targets": tokens, "weights": np.ones((batch, seq_len), np.float32),
            "segment_ids": np.ones_like(tokens),
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape)}
    stats = step.lower(state, rows).compile().memory_analysis()
    out = {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "aliased": int(stats.alias_size_in_bytes),
        "temps": int(stats.temp_size_in_bytes),
    }
    out["peak"] = out["arguments"] + out["temps"] + out["outputs"] - out["aliased"]
    return out


# --------------------------------------------------------------------------------------------
# `jaxalign plan` and the reference table


def platform_of(device: str) -> str:
    """The jax platform of a DEVICES name: "tpu" or "gpu"."""
    return "tpu" if device.startswith("tpu") else "gpu"


def parse_mesh_shape(spec: str) -> dict[str, int]:
    """``"dp:1,fsdp:256,tp:1"`` (or ``"1,256,1"``) with every size given, for a mesh not at hand."""
    sizes = [part.rpartition(":")[2].strip() for part in spec.split(",") if part.strip()]
    if "-1" in sizes:
        raise ValueError(f"--mesh {spec!r}: give every axis size (no -1): it describes the mesh "
                         "to plan for, not this machine's devices")
    # The product of the sizes as the device count makes parse_mesh_spec check only the syntax.
    count = math.prod(int(size) for size in sizes if size.lstrip("-").isdigit() and int(size) > 0)
    return mesh_lib.parse_mesh_spec(spec, count)


def model_config(config: Any) -> ModelConfig:
    """The ModelConfig a train run of `config` uses, with config.model.vocab_size if set, else the
    preset's (training takes the tokenizer's; building the data to learn it would be slow)."""
    from jaxalign.train import loop

    vocab = config.model.get("vocab_size") or models.get_preset(config.model.preset).vocab_size
    return loop.model_config(config, vocab)


def run_cli(args: argparse.Namespace) -> int:
    """`jaxalign plan` (flags in jaxalign.cli): the table, or one JSON object with --json."""
    from jaxalign import config as config_lib

    config = config_lib.load_config(args.config, args.overrides)
    missing = [key for key in ("batch_size", "seq_len", "mesh", "model") if key not in config]
    if missing:
        raise ValueError(f"{args.config} has no {missing}: jaxalign plan reads a train config "
                         "(batch_size, seq_len, mesh, model)")
    if args.device_bytes is not None and args.device_bytes < 1:
        raise ValueError(f"--device-bytes {args.device_bytes} must be positive")
    cfg = model_config(config)
    lora = lora_lib.from_config(config.get("lora"))
    if getattr(args, "lora_rank", None) is not None:  # --lora-rank / --lora-base-dtype
        section = lora_lib.default_config().to_dict() if lora is None else lora_lib.describe(lora)
        section.update(rank=args.lora_rank)
        if getattr(args, "lora_base_dtype", None):
            section.update(base_dtype=args.lora_base_dtype)
        lora = lora_lib.from_config(section)
    elif getattr(args, "lora_base_dtype", None):
        raise ValueError("--lora-base-dtype needs --lora-rank (or a config with a lora section)")
    if lora is not None:
        lora_lib.targets(cfg, lora)  # a pattern matching nothing
    batch, seq_len, microbatches = config.batch_size, config.seq_len, config.get("microbatches", 1)
    if args.mesh:
        mesh_shape = parse_mesh_shape(args.mesh)
    else:
        mesh_shape = mesh_lib.parse_mesh_spec(config.mesh, jax.device_count())
    if args.device is not None and args.device not in DEVICES:
        raise ValueError(f"--device {args.device!r} is unknown; choose one of {sorted(DEVICES)} "
                         "or give --device-bytes")
    platform = platform_of(args.device) if args.device else None
    device_bytes = args.device_bytes or (DEVICES[args.device] if args.device else _local_memory())
    result = estimate(cfg, mesh_shape, batch, seq_len, microbatches=microbatches, platform=platform,
                      lora=lora)
    report: dict[str, Any] = {
        "config": args.config, "mesh_shape": mesh_shape, "batch_size": batch, "seq_len": seq_len,
        "microbatches": microbatches, "num_params": cfg.num_params(), **result.to_dict(),
        "device": args.device, "device_bytes": device_bytes, "largest_batch": None,
        "lora": None if lora is None else lora_lib.describe(lora),
    }
    if device_bytes:
        report["largest_batch"] = largest_batch(cfg, mesh_shape, seq_len, device_bytes,
                                                microbatches=microbatches, platform=platform, lora=lora)
    if args.check:
        local = mesh_lib.parse_mesh_spec(config.mesh, jax.device_count())
        if mesh_shape != local:
            raise ValueError(f"--check compiles on this machine's mesh {local}; --mesh {mesh_shape} "
                             "differs (drop --check or --mesh)")
        report["xla"] = xla_memory(cfg, mesh_lib.make_mesh(config.mesh), batch, seq_len, microbatches, lora)
    print(json.dumps(report, indent=2) if args.json else format_report(report, cfg))
    return 0


def _local_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def format_report(report: dict[str, Any], cfg: ModelConfig) -> str:
    """The text `jaxalign plan` prints: one row per term, XLA's figures beside with --check."""
    scale, unit = (GiB, "GiB") if report["total"] >= GiB else (2**20, "MiB")
    mesh = ", ".join(f"{k}={v}" for k, v in report["mesh_shape"].items())
    shards = report["mesh_shape"]["dp"] * report["mesh_shape"]["fsdp"]
    xla = report.get("xla")
    lines = [
        f"{report['config']}: {report['num_params'] / 1e6:,.1f}M parameters ({cfg.param_dtype}), "
        f"compute {cfg.dtype}, remat {cfg.remat}, attention {cfg.attention_impl}",
        f"mesh {mesh}; batch {report['batch_size']} x {report['seq_len']} tokens, microbatches "
        f"{report['microbatches']}: {report['rows_per_device']} row(s) per device per microbatch",
    ]
    if report.get("lora"):
        lo = report["lora"]
        lines.append(f"LoRA rank {lo['rank']} (alpha {lo['alpha']}) on a {lo['base_dtype']} base: "
                     "parameters = base + adapters; optimizer state and gradients: the adapters'")
    if report["rows_per_device"] * shards * report["microbatches"] != report["batch_size"]:
        lines.append(f"  note: dp * fsdp = {shards} does not divide the batch, so rows are replicated")
    lines.append(f"{'per device':18s}{unit:>10s}" + (f"{'XLA ' + unit:>12s}" if xla else ""))
    for label, key in (("parameters", "params"), ("optimizer state", "opt_state"), ("gradients", "grads"),
                       ("activations", "activations"), ("batch", "inputs"), ("total", "total")):
        line = f"  {label:16s}{report[key] / scale:10.3f}"
        if xla and key == "total":
            line += f"{xla['peak'] / scale:12.3f}  (arguments + temps + outputs - aliased)"
        lines.append(line)
    if xla:
        state = report["params"] + report["opt_state"] + report["inputs"]
        lines.append(f"  {'state + batch':16s}{state / scale:10.3f}{xla['arguments'] / scale:12.3f}"
                     "  (arguments)")
        lines.append(f"  estimate / XLA peak: {report['total'] / xla['peak']:.3f}")
    lines.append(f"  largest term: {report['dominant']}")
    if report["largest_batch"] is None:
        lines.append("largest batch: give --device or --device-bytes")
    else:
        lines.append(f"largest batch on {report['device'] or 'this device'} "
                     f"({report['device_bytes'] / GiB:.1f} GiB): {report['largest_batch']} "
                     f"({report['largest_batch'] // shards} per data-parallel device)")
    return "\n".join(lines)


REFERENCE = (  # (model, device, mesh)
    ("7b", "tpu-v4", {"fsdp": 64}),
    ("7b", "tpu-v4", {"fsdp": 256}),
    ("7b", "tpu-v5p", {"fsdp": 64}),
    ("7b", "h100", {"fsdp": 8}),
    ("13b", "tpu-v4", {"fsdp": 128}),
    ("13b", "tpu-v5p", {"fsdp": 64}),
    ("13b", "h100", {"fsdp": 8}),
    ("70b", "tpu-v4", {"fsdp": 256}),
    ("70b", "tpu-v5p", {"fsdp": 128}),
    ("70b", "h100", {"fsdp": 8}),
)


def reference_table(seq_len: int = 2048) -> str:
    """The module docstring's table: bfloat16 compute, float32 params, remat full (markdown)."""
    lines = ["| model | device | mesh | state GiB | act. GiB/row | largest batch: xla | flash |",
             "|---|---|---|---|---|---|---|"]
    for name, device, mesh_shape in REFERENCE:
        cfg = models.get_preset(name, dtype="bfloat16", param_dtype="float32", remat="full")
        shards = mesh_shape.get("dp", 1) * mesh_shape["fsdp"]
        one = estimate(cfg, mesh_shape, shards, seq_len)
        state = one.params + one.opt_state + one.grads
        cells = []
        for impl in ("xla", "auto"):
            largest = largest_batch(cfg.replace(attention_impl=impl), mesh_shape, seq_len, DEVICES[device],
                                    platform=platform_of(device))
            cells.append(f"{largest} ({largest // shards})")
        mesh = ",".join(f"{k}:{v}" for k, v in mesh_shape.items())
        lines.append(f"| {name} | {device} | {mesh} | {state / GiB:.1f} | {one.activations / GiB:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


LORA_REFERENCE = (  # (model, device, mesh)
    ("llama3-8b", "tpu-v5e", {"fsdp": 8}),
    ("llama3-8b", "h100", {"fsdp": 1}),
)


def lora_table(seq_len: int = 2048, rank: int = 16) -> str:
    """Full fine-tuning vs LoRA (bfloat16 base) vs QLoRA (int8, int4 bases) of llama3-8b, rank `rank` on
    every attention and MLP projection, bfloat16 compute, remat full (markdown, GiB per device)."""
    lines = ["| model | device | mesh | method | params | opt. state | grads | state total "
             "| act. / row | largest batch (per device) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, device, mesh_shape in LORA_REFERENCE:
        shards = mesh_shape.get("dp", 1) * mesh_shape["fsdp"]
        methods = (("full (f32 params)", "float32", None), ("full (bf16 params)", "bfloat16", None),
                   ("LoRA (bf16 base)", "float32", "bfloat16"), ("QLoRA (int8 base)", "float32", "int8"),
                   ("QLoRA (int4 base)", "float32", "int4"))
        for label, param_dtype, base in methods:
            cfg = models.get_preset(name, dtype="bfloat16", param_dtype=param_dtype, remat="full")
            lcfg = None if base is None else lora_lib.LoraConfig(rank=rank, alpha=2.0 * rank, base_dtype=base)
            one = estimate(cfg, mesh_shape, shards, seq_len, lora=lcfg, platform=platform_of(device))
            largest = largest_batch(cfg, mesh_shape, seq_len, DEVICES[device], platform=platform_of(device),
                                    lora=lcfg)
            state = one.params + one.opt_state + one.grads
            mesh = ",".join(f"{k}:{v}" for k, v in mesh_shape.items())
            lines.append(f"| {name} | {device} | {mesh} | {label} | {one.params / GiB:.2f} | "
                         f"{one.opt_state / GiB:.2f} | {one.grads / GiB:.2f} | {state / GiB:.2f} | "
                         f"{one.activations / GiB:.2f} | {largest} ({largest // shards}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_table())
