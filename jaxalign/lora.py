"""LoRA and QLoRA: low-rank adapters on a frozen base, by reparametrising the kernels.

A LoRA run trains, for each target projection with kernel ``W`` (``[*in, *out]``, plus a leading
layer axis when layers are scanned), two small matrices ``A [in, r]`` and ``B [r, out]`` (``in`` and
``out`` the flattened input and output axes) and computes with

    W' = W + (alpha / r) * (A @ B).reshape(W.shape)

``A`` starts uniform in ``+-1/sqrt(in)`` (PEFT's default), ``B`` at zero, so step 0 is the base
model. The base ``W`` is frozen and held outside the train state: in float32 or bfloat16, or, for
QLoRA, quantised to int8 or int4 with one float32 scale per output channel of each layer
(symmetric absmax) and dequantised on the fly.

How it reaches the model without changing it. The model's projections (``jaxalign.models.llama``)
compute ``dot_general(x, kernel.astype(dtype))``. A target kernel's leaf in the parameter tree
handed to ``Transformer.apply`` is a `LoraKernel` (base, A, B) whose ``astype`` returns the merged
kernel above; a quantised base is a `Quantized` (values, scales) whose ``astype`` dequantises. Both
are pytrees whose leaves carry the layer axis first, so ``nn.scan`` slices them per layer like any
parameter: the merge and the dequantisation happen inside the scanned block, one layer at a time.
The gradient reaches only A and B (the base is an argument the step does not differentiate); its
cost is one layer's ``[in, out]`` weight-gradient at a time, as in full fine-tuning, since the
merged kernel is what the matmul sees.

Why not qwix (which Tunix uses): its LoRA does fit this model (tried: it intercepts the
projections' ``dot_general``, finds the kernel and adds ``(x @ A) @ B``, with nn.scan and the
logical axis names), but its QLoRA does not: the quantised kernel it puts in the tree is a
``WithAux[QArray]`` whose ``astype`` (which every projection here calls) raises ``Unsupported type:
QArray``, and its quantisation of a scanned kernel shares one scale across all layers. One
mechanism for both, with the adapters a tree of their own (the optimiser, checkpoints and exports
see only them; DPO's reference is the base with the adapters left out, not a second copy), is the
reparametrisation here. See docs/training.md#lora-and-qlora.

Targets are regular expressions matched in full against a kernel's module path, ``/``-joined:
``layers/self_attn/q_proj`` (scanned layers) or ``layers_3/mlp/up_proj`` (unrolled); the default is
every attention and MLP projection. A pattern that matches no kernel is an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.models import ModelConfig

Array = jax.Array
Path = tuple[str, ...]

DEFAULT_TARGETS = (r"layers(_\d+)?/self_attn/(q|k|v|o)_proj", r"layers(_\d+)?/mlp/(gate|up|down)_proj")
BASE_DTYPES = ("float32", "bfloat16", "int8", "int4")
_QMAX = {"int8": 127, "int4": 7}
# fold_in constant of the adapters' initialisation (the model uses key(seed), training RNG_STREAM = 1)
INIT_STREAM = 2
PREFIX = "lora"


def default_config() -> ml_collections.ConfigDict:
    """The `lora` section of a train config; rank 0 (the default) is off."""
    return ml_collections.ConfigDict({
        "rank": 0, "alpha": 16.0, "targets": list(DEFAULT_TARGETS), "base_dtype": "float32",
    })


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    base_dtype: str = "float32"

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    @property
    def quantized(self) -> bool:
        return self.base_dtype in _QMAX


def from_config(section: Any) -> LoraConfig | None:
    """The LoRA of a config's `lora` section (a mapping or ConfigDict), None when absent or rank 0."""
    if section is None:
        return None
    d = dict(section.to_dict() if isinstance(section, ml_collections.ConfigDict) else section)
    unknown = sorted(set(d) - set(default_config()))
    if unknown:
        raise ValueError(f"{PREFIX}: unknown keys {unknown}; a lora section has {sorted(default_config())}")
    d = {**default_config().to_dict(), **d}
    rank, alpha, targets, base_dtype = d["rank"], d["alpha"], d["targets"], d["base_dtype"]
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 0:
        raise ValueError(f"{PREFIX}.rank={rank!r} must be an integer >= 0 (0: LoRA off)")
    if rank == 0:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"{PREFIX}.alpha={alpha!r} must be a number > 0")
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets or \
            not all(isinstance(t, str) for t in targets):
        raise ValueError(f"{PREFIX}.targets={targets!r} must be a non-empty list of regular expressions")
    for t in targets:
        try:
            re.compile(t)
        except re.error as e:
            raise ValueError(f"{PREFIX}.targets: {t!r} is not a regular expression ({e})") from None
    if base_dtype not in BASE_DTYPES:
        raise ValueError(f"{PREFIX}.base_dtype={base_dtype!r} must be one of {list(BASE_DTYPES)}")
    return LoraConfig(int(rank), float(alpha), tuple(targets), base_dtype)


# --------------------------------------------------------------------------------- the leaves


@flax.struct.dataclass
class Quantized:
    """A kernel kept as int8/int4 values and float32 scales (one per output channel of each
    layer: the kernel's shape with its input axes 1). ``astype`` dequantises."""

    values: Array
    scales: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def ndim(self) -> int:
        return self.values.ndim

    def astype(self, dtype: Any) -> Array:
        return (self.values.astype(jnp.float32) * self.scales).astype(dtype)


@flax.struct.dataclass
class LoraKernel:
    """A target kernel as the model sees it during LoRA training: ``astype`` merges (module doc).
    The base comes first, so flax's shape check of a parameter compares the kernel's shape."""

    base: Any  # Array or Quantized
    a: Array
    b: Array
    scale: float = flax.struct.field(pytree_node=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.base.shape

    @property
    def ndim(self) -> int:
        return len(self.base.shape)

    def astype(self, dtype: Any) -> Array:
        w = self.base.astype(dtype)
        delta = jnp.matmul(self.a.astype(dtype), self.b.astype(dtype)) * jnp.asarray(self.scale, dtype)
        return w + delta.reshape(w.shape)


# --------------------------------------------------------------------------------- targets


@dataclasses.dataclass(frozen=True)
class Target:
    """One adapted kernel: its parameter path, shape, logical names and where its input axes end."""

    path: Path  # ("layers", "self_attn", "q_proj", "kernel")
    shape: tuple[int, ...]
    names: tuple[str | None, ...]
    layered: bool  # a leading layer axis (scanned layers)
    in_dims: int

    @property
    def module(self) -> str:
        return "/".join(self.path[:-1])

    def _split(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        lead = self.shape[:1] if self.layered else ()
        rest = self.shape[len(lead):]
        return lead, rest[: self.in_dims], rest[self.in_dims:]

    @property
    def in_features(self) -> int:
        return math.prod(self._split()[1])

    @property
    def out_features(self) -> int:
        return math.prod(self._split()[2])

    def adapter_names(self) -> tuple[tuple[str | None, ...], tuple[str | None, ...]]:
        """Logical names of A and B: the first name of the flattened input (output) axes, so an
        adapter shards along the same mesh axis as its kernel's matching axis."""
        lead = self.names[:1] if self.layered else ()
        rest = self.names[len(lead):]
        return (*lead, rest[0], None), (*lead, None, rest[self.in_dims])


def _in_dims(names: tuple[str | None, ...]) -> int:
    # Projections take their inputs first: one axis, or (heads, head_dim) for the output projection.
    return 2 if tuple(names[:2]) == ("heads", "head_dim") else 1


def targets(cfg: ModelConfig, lcfg: LoraConfig) -> list[Target]:
    """The kernels `lcfg.targets` selects, in parameter-tree order; a pattern matching none is an error."""
    flat = jax.tree_util.tree_flatten_with_path(
        models.abstract_params(cfg), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    kernels = []
    for key_path, leaf in flat:
        path = tuple(str(getattr(k, "key", k)) for k in key_path)
        if path[-1] == "kernel":
            kernels.append((path, leaf))
    modules = ["/".join(p[:-1]) for p, _ in kernels]
    for pattern in lcfg.targets:
        if not any(re.fullmatch(pattern, m) for m in modules):
            raise ValueError(f"{PREFIX}.targets: {pattern!r} matches no kernel; the model's kernels are "
                             f"{modules} (matched in full)")
    if cfg.head == "score" and not any(re.fullmatch(p, "score") for p in lcfg.targets):
        raise ValueError(f"{PREFIX}.targets: a reward model's score head starts untrained; add 'score' to "
                         "the targets so that LoRA trains it (a rank-r update of the [hidden, labels] head)")
    out = []
    for (path, leaf), module in zip(kernels, modules, strict=True):
        if any(re.fullmatch(p, module) for p in lcfg.targets):
            names = tuple(leaf.names)
            layered = names[0] == "layers"
            out.append(Target(path, tuple(leaf.value.shape), names, layered,
                              _in_dims(names[1:] if layered else names)))
    return out


def _get(tree: Any, path: Path) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _replace(tree: Any, values: dict[Path, Any]) -> Any:
    """A copy of the nested-dict `tree` with the leaves at `values`' paths replaced."""
    out = dict(tree)
    by_head: dict[str, dict[Path, Any]] = {}
    for path, v in values.items():
        if len(path) == 1:
            out[path[0]] = v
        else:
            by_head.setdefault(path[0], {})[path[1:]] = v
    for head, sub in by_head.items():
        out[head] = _replace(tree[head], sub)
    return out


def _adapter_path(t: Target) -> Path:
    return t.path[:-1]  # the module: {"lora_a", "lora_b"} under it


# --------------------------------------------------------------------------------- adapters


def adapter_shapes(cfg: ModelConfig, lcfg: LoraConfig) -> Any:
    """The adapter tree as ShapeDtypeStructs: {module path...: {"lora_a", "lora_b"}}, float32."""
    tree: dict[str, Any] = {}
    for t in targets(cfg, lcfg):
        lead = t.shape[:1] if t.layered else ()
        leaves = {"lora_a": jax.ShapeDtypeStruct((*lead, t.in_features, lcfg.rank), jnp.float32),
                  "lora_b": jax.ShapeDtypeStruct((*lead, lcfg.rank, t.out_features), jnp.float32)}
        tree = _merge_in(tree, _adapter_path(t), leaves)
    return tree


def _merge_in(tree: dict, path: Path, leaves: dict) -> dict:
    node = tree
    for k in path:
        node = node.setdefault(k, {})
    node.update(leaves)
    return tree


def adapter_shardings(cfg: ModelConfig, lcfg: LoraConfig, mesh: Mesh) -> Any:
    """NamedSharding per adapter leaf, by the mesh's logical rules (see `Target.adapter_names`)."""
    tree: dict[str, Any] = {}
    for t in targets(cfg, lcfg):
        a_names, b_names = t.adapter_names()
        lead = t.shape[:1] if t.layered else ()
        a = mesh_lib.logical_sharding(a_names, (*lead, t.in_features, lcfg.rank), mesh)
        b = mesh_lib.logical_sharding(b_names, (*lead, lcfg.rank, t.out_features), mesh)
        tree = _merge_in(tree, _adapter_path(t), {"lora_a": a, "lora_b": b})
    return tree


def init_adapters(cfg: ModelConfig, lcfg: LoraConfig, mesh: Mesh, seed: int) -> Any:
    """Fresh adapters, created in their shards: A uniform in +-1/sqrt(in), B zero."""
    ts = targets(cfg, lcfg)

    def init(key: Array) -> Any:
        tree: dict[str, Any] = {}
        for i, t in enumerate(ts):
            lead = t.shape[:1] if t.layered else ()
            bound = 1.0 / math.sqrt(t.in_features)
            a = jax.random.uniform(jax.random.fold_in(key, i), (*lead, t.in_features, lcfg.rank),
                                   jnp.float32, -bound, bound)
            b = jnp.zeros((*lead, lcfg.rank, t.out_features), jnp.float32)
            tree = _merge_in(tree, _adapter_path(t), {"lora_a": a, "lora_b": b})
        return tree

    key = jax.random.fold_in(jax.random.key(seed), INIT_STREAM)
    with mesh_lib.use(mesh):
        return jax.jit(init, out_shardings=adapter_shardings(cfg, lcfg, mesh))(key)


def adapter_items(cfg: ModelConfig, lcfg: LoraConfig, adapters: Any) -> list[tuple[Target, Array, Array]]:
    """(target, A, B) for every target, A [(L,) in, r], B [(L,) r, out]."""
    out = []
    for t in targets(cfg, lcfg):
        node = _get(adapters, _adapter_path(t))
        out.append((t, node["lora_a"], node["lora_b"]))
    return out


# --------------------------------------------------------------------------------- the base


def _float_dtype(lcfg: LoraConfig, cfg: ModelConfig) -> Any:
    """The dtype of the base's float parameters: base_dtype, or bfloat16 beside an int base."""
    return jnp.bfloat16 if lcfg.quantized else jnp.dtype(lcfg.base_dtype)


def quantize(w: Array, t: Target, qtype: str) -> Quantized:
    """Symmetric absmax quantisation, one scale per output channel (and layer)."""
    lead = 1 if t.layered else 0
    in_axes = tuple(range(lead, lead + t.in_dims))
    w32 = w.astype(jnp.float32)
    scales = jnp.max(jnp.abs(w32), axis=in_axes, keepdims=True) / _QMAX[qtype]
    scales = jnp.where(scales > 0, scales, 1.0)
    values = jnp.clip(jnp.round(w32 / scales), -_QMAX[qtype], _QMAX[qtype]).astype(jnp.dtype(qtype))
    return Quantized(values, scales)


def _scale_shape(t: Target) -> tuple[int, ...]:
    lead = 1 if t.layered else 0
    return tuple(1 if lead <= i < lead + t.in_dims else n for i, n in enumerate(t.shape))


def base_shardings(cfg: ModelConfig, lcfg: LoraConfig, mesh: Mesh) -> Any:
    """NamedShardings of the frozen base: the parameters' (FSDP) shardings; a quantised kernel's
    values like the kernel and its scales by the kernel's names with the input axes left out."""
    shardings = models.param_shardings(cfg, mesh)
    if not lcfg.quantized:
        return shardings
    replaced = {}
    for t in targets(cfg, lcfg):
        lead = 1 if t.layered else 0
        names = tuple(None if lead <= i < lead + t.in_dims else n for i, n in enumerate(t.names))
        replaced[t.path] = Quantized(_get(shardings, t.path),
                                     mesh_lib.logical_sharding(names, _scale_shape(t), mesh))
    return _replace(shardings, replaced)


def base_shapes(cfg: ModelConfig, lcfg: LoraConfig) -> Any:
    """The frozen base as ShapeDtypeStructs (for memory plans)."""
    fdt = _float_dtype(lcfg, cfg)
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, fdt), models.param_shapes(cfg))
    if not lcfg.quantized:
        return shapes
    return _replace(shapes, {t.path: Quantized(jax.ShapeDtypeStruct(t.shape, jnp.dtype(lcfg.base_dtype)),
                                               jax.ShapeDtypeStruct(_scale_shape(t), jnp.float32))
                             for t in targets(cfg, lcfg)})


def prepare_base(params: Any, cfg: ModelConfig, lcfg: LoraConfig, mesh: Mesh) -> Any:
    """The frozen base from full parameters (on `mesh`; they are donated): float parameters cast to
    the base's dtype, target kernels quantised for QLoRA."""
    ts = targets(cfg, lcfg)
    fdt = _float_dtype(lcfg, cfg)

    def prepare(p: Any) -> Any:
        cast = jax.tree.map(lambda x: x.astype(fdt), p)
        if not lcfg.quantized:
            return cast
        return _replace(cast, {t.path: quantize(_get(p, t.path), t, lcfg.base_dtype) for t in ts})

    shardings = base_shardings(cfg, lcfg, mesh)
    with mesh_lib.use(mesh):
        return jax.jit(prepare, out_shardings=shardings, donate_argnums=0)(params)


def with_adapters(base: Any, adapters: Any, cfg: ModelConfig, lcfg: LoraConfig) -> Any:
    """The parameter tree to hand the model: each target kernel a `LoraKernel` (inside jit)."""
    return _replace(base, {t.path: LoraKernel(_get(base, t.path), a, b, lcfg.scale)
                           for t, a, b in adapter_items(cfg, lcfg, adapters)})


def merge(base: Any, adapters: Any, cfg: ModelConfig, lcfg: LoraConfig, mesh: Mesh) -> Any:
    """Full parameters in ``cfg.param_dtype`` with the adapters merged in (export, samples, eval);
    the merge is computed in float32."""
    dtype = jnp.dtype(cfg.param_dtype)

    def run(base: Any, adapters: Any) -> Any:
        full = with_adapters(base, adapters, cfg, lcfg)

        def one(leaf: Any) -> Array:
            if isinstance(leaf, LoraKernel | Quantized):
                return leaf.astype(jnp.float32).astype(dtype)
            return leaf.astype(dtype)

        return jax.tree.map(one, full, is_leaf=lambda x: isinstance(x, LoraKernel | Quantized))

    with mesh_lib.use(mesh):
        return jax.jit(run, out_shardings=models.param_shardings(cfg, mesh))(base, adapters)


def _leaf_digest(x: Array) -> Array:
    """Two uint32 sums of a leaf's bit patterns (plain, and weighted by position), modulo 2**32:
    integer sums do not depend on the order of the reduction, so neither on the mesh."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{x.dtype.itemsize * 8}")).astype(jnp.uint32)
    else:
        bits = x.astype(jnp.int32).astype(jnp.uint32)
    weight = jnp.ones(x.shape, jnp.uint32)
    for d, prime in zip(range(x.ndim), (1_000_003, 998_244_353, 2_654_435_761, 40_503, 65_537), strict=False):
        weight = weight + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(prime)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32)])


def fingerprint(base: Any) -> dict[str, Any]:
    """What a checkpoint records of its base: leaf count, element count and a SHA-256 of every leaf's
    path, shape, dtype and two sums of its bits (`_leaf_digest`, computed on the devices, the same
    on any mesh; a different base gives a different digest in practice, at the cost of one pass over
    the weights)."""
    flat = jax.tree_util.tree_flatten_with_path(base)[0]
    sums = jax.device_get(jax.jit(lambda xs: [_leaf_digest(x) for x in xs])([x for _, x in flat]))
    digest = hashlib.sha256()
    for (path, x), s in zip(flat, sums, strict=True):
        digest.update(json.dumps([jax.tree_util.keystr(path), list(x.shape), str(x.dtype),
                                  [int(v) for v in s]]).encode())
    return {"leaves": len(flat), "elements": int(sum(x.size for _, x in flat)), "sha256": digest.hexdigest()}


def check_fingerprint(saved: Mapping[str, Any] | None, current: Mapping[str, Any], where: str) -> None:
    if saved is None:
        raise ValueError(f"{where}: the checkpoint records no LoRA base (lora_base); it was not saved by a "
                         "LoRA run of this config")
    if dict(saved) != dict(current):
        raise ValueError(f"{where}: the checkpoint's adapters were trained on another base "
                         f"(saved {dict(saved)}, now {dict(current)}); check config.init_from")


# --------------------------------------------------------------------------------- PEFT


def peft_tensors(
    cfg: ModelConfig, lcfg: LoraConfig, adapters: Any, hf_names: Mapping[Path, str]
) -> dict[str, np.ndarray]:
    """The adapters in PEFT's layout: ``base_model.model.<module>.lora_A.weight`` [r, in] and
    ``lora_B.weight`` [out, r], float32. `hf_names` maps a kernel path to its HF tensor name
    (``model.layers.{i}.self_attn.q_proj.weight``; jaxalign.hf.tensor_table). An HF Linear weight is
    ``kernel.reshape(in, out).T``, so PEFT's ``B @ A`` is our ``(A @ B).T`` with the same scale."""
    out = {}
    for t, a, b in adapter_items(cfg, lcfg, adapters):
        a, b = np.asarray(jax.device_get(a)), np.asarray(jax.device_get(b))
        key = ("layers", *t.path[1:]) if t.path[0].startswith("layers_") else t.path
        if key not in hf_names:
            raise ValueError(f"{t.module}: no Hugging Face name for this kernel, so no PEFT adapter")
        layers = range(t.shape[0]) if t.layered else [int(t.path[0].split("_")[1])] if \
            t.path[0].startswith("layers_") else [None]
        for j, i in enumerate(layers):
            name = hf_names[key].format(i=i).removesuffix(".weight")
            aj, bj = (a[j], b[j]) if t.layered else (a, b)
            out[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(aj.T, np.float32)
            out[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(bj.T, np.float32)
    return out


def peft_config(
    lcfg: LoraConfig, modules: Sequence[str], base_model: str, head: str = "lm"
) -> dict[str, Any]:
    """adapter_config.json for `modules` (HF module names, e.g. model.layers.0.self_attn.q_proj)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM" if head == "lm" else "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "r": lcfg.rank, "lora_alpha": lcfg.alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted(modules), "fan_in_fan_out": False, "use_rslora": False,
        "use_dora": False, "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
    }


def describe(lcfg: LoraConfig) -> dict[str, Any]:
    return dataclasses.asdict(lcfg) | {"targets": list(lcfg.targets)}


__all__ = [
    "BASE_DTYPES", "DEFAULT_TARGETS", "LoraConfig", "LoraKernel", "Quantized", "Target", "adapter_items",
    "adapter_shapes", "adapter_shardings", "base_shapes", "base_shardings", "check_fingerprint",
    "default_config",
    "fingerprint", "from_config", "init_adapters", "merge", "peft_config", "peft_tensors", "prepare_base",
    "quantize", "targets", "with_adapters",
]
