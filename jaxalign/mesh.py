"""The device mesh: axis names, spec strings, logical-axis rules and multi-host start-up.

Every array in jaxalign is described by *logical* axis names ("embed", "heads", "batch", ...).
`LOGICAL_RULES` below is the one place that maps them onto the three mesh axes:

    dp    pure data parallelism (parameters replicated)
    fsdp  data parallelism with parameters, gradients and optimizer state sharded (ZeRO-3)
    tp    tensor parallelism over heads, MLP width and vocabulary

A mesh is written as a spec string, either named (``"dp:2,fsdp:-1,tp:1"``) or EasyLM-style
positional (``"2,-1,1"``); ``-1`` takes the devices the other axes leave.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

AXES = ("dp", "fsdp", "tp")

# Logical axis -> mesh axes. Parameters: "embed" is the FSDP axis, the wide dimensions go to tp.
# Activations carry separate names (prefixed "act_") so that, e.g., the residual stream's model
# dimension stays unsharded while the same dimension of a weight matrix is FSDP-sharded.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tp"),
    ("embed", "fsdp"),
    ("mlp", "tp"),
    ("heads", "tp"),
    ("kv_heads", "tp"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # activations
    ("batch", ("dp", "fsdp")),
    ("length", None),
    ("kv_length", None),
    ("act_embed", None),
    ("act_mlp", "tp"),
    ("act_heads", "tp"),
    ("act_kv_heads", "tp"),
    ("act_vocab", "tp"),
)


class MeshSpecError(ValueError):
    """A mesh spec that cannot be parsed or does not fit the available devices."""


def parse_mesh_spec(spec: str, num_devices: int) -> dict[str, int]:
    """Parses ``"dp:2,fsdp:-1,tp:1"`` or ``"2,-1,1"`` into concrete axis sizes.

    Raises MeshSpecError when the spec is malformed or its sizes do not multiply to
    ``num_devices``.
    """
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    sizes: dict[str, int] = {}
    if parts and all(":" in p for p in parts):
        for part in parts:
            name, _, value = part.partition(":")
            name = name.strip()
            if name not in AXES:
                raise MeshSpecError(f"mesh spec {spec!r}: unknown axis {name!r}; axes are {AXES}")
            if name in sizes:
                raise MeshSpecError(f"mesh spec {spec!r}: axis {name!r} given twice")
            sizes[name] = _parse_size(spec, value)
    elif parts and not any(":" in p for p in parts):
        if len(parts) != len(AXES):
            raise MeshSpecError(
                f"mesh spec {spec!r}: positional form needs {len(AXES)} sizes (dp,fsdp,tp)"
            )
        sizes = {name: _parse_size(spec, value) for name, value in zip(AXES, parts, strict=True)}
    else:
        raise MeshSpecError(
            f"mesh spec {spec!r}: use 'dp:1,fsdp:-1,tp:1' or '1,-1,1', not a mix of both"
        )
    for name in AXES:
        sizes.setdefault(name, 1)

    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise MeshSpecError(f"mesh spec {spec!r}: only one axis may be -1, got {free}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise MeshSpecError(
                f"mesh spec {spec!r}: fixed axes multiply to {fixed}, which does not divide "
                f"the {num_devices} available devices"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshSpecError(
            f"mesh spec {spec!r} needs {fixed} devices but {num_devices} are available"
        )
    return {name: sizes[name] for name in AXES}


def _parse_size(spec: str, value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise MeshSpecError(f"mesh spec {spec!r}: {value!r} is not an integer") from None
    if size == 0 or size < -1:
        raise MeshSpecError(f"mesh spec {spec!r}: axis size must be positive or -1, got {size}")
    return size


def make_mesh(spec: str = "dp:1,fsdp:-1,tp:1", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh with Auto axes (flax.linen logical constraints need Auto, not Explicit)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes[name] for name in AXES)
    try:
        # Topology-aware placement on TPU/GPU: tp on the fastest links.
        device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec by LOGICAL_RULES.

    With ``shape`` and ``mesh`` given, a mesh axis is left out for a dimension it does not
    divide (e.g. 2 KV heads on tp=4): that dimension is replicated over that axis instead,
    because jax cannot place an unevenly sharded array. Each mesh axis is used at most once.
    """
    rules = dict(LOGICAL_RULES)
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule in jaxalign.mesh.LOGICAL_RULES")
        target = rules[name]
        axes = () if target is None else (target,) if isinstance(target, str) else target
        kept = []
        dim = None if shape is None else shape[i]
        for axis in axes:
            if axis in used:
                continue
            if mesh is not None and dim is not None:
                size = mesh.shape[axis]
                if dim % (size * math.prod(mesh.shape[a] for a in kept)):
                    continue
            kept.append(axis)
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def logical_sharding(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def process_batch_rows(global_batch: int, mesh: Mesh) -> np.ndarray:
    """The rows of a global batch this process's devices hold, in the order
    `jax.make_array_from_process_local_data` reads a process's rows."""
    sharding = logical_sharding(("batch",), (global_batch,), mesh)
    slices = {index[0].indices(global_batch)
              for index in sharding.addressable_devices_indices_map((global_batch,)).values()}
    return np.concatenate([np.arange(*s) for s in sorted(slices)])


@contextlib.contextmanager
def use(mesh: Mesh) -> Iterator[Mesh]:
    """Makes `mesh` current and the logical rules active: wrap every jit that runs the model."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        yield mesh


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Starts JAX's multi-host runtime when more than one process takes part.

    Clusters JAX detects itself (`detected_cluster`: Cloud TPU VMs and GKE, SLURM, Open MPI,
    Kubernetes) start with ``jax.distributed.initialize()`` and no arguments, so JAX reads their
    coordinator, process count and id; elsewhere pass an explicit coordinator ``host:port``, process
    count and id (also read from JAXALIGN_COORDINATOR / JAXALIGN_NUM_PROCESSES / JAXALIGN_PROCESS_ID).
    """
    coordinator = coordinator or os.environ.get("JAXALIGN_COORDINATOR")
    if num_processes is None and "JAXALIGN_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAXALIGN_NUM_PROCESSES"])
    if process_id is None and "JAXALIGN_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAXALIGN_PROCESS_ID"])
    if coordinator:
        if num_processes is None or process_id is None:
            raise ValueError("an explicit coordinator needs num_processes and process_id as well")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif detected_cluster() is not None:
        jax.distributed.initialize()
    else:
        return
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )


def default_compilation_cache() -> str:
    """$JAXALIGN_COMPILATION_CACHE, else JAX's own $JAX_COMPILATION_CACHE_DIR, else the user's cache
    directory ($XDG_CACHE_HOME or ~/.cache)."""
    for name in ("JAXALIGN_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        if name in os.environ:
            return os.environ[name]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "jaxalign", "xla")


def use_compilation_cache(directory: str | None) -> str | None:
    """Keeps every compiled program in JAX's persistent cache at `directory`, so a rerun or a resumed
    run loads its train step and sampler instead of compiling them again. "" or "off": no cache.
    Returns the directory in use (None when off)."""
    if not directory or directory == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    # Cache everything: on CPU a tiny model's programs compile in well under JAX's 1 s default.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def detected_cluster() -> str | None:
    """The name of the cluster environment JAX's own detection recognises here, or None.

    JAX offers no public way to ask: ``jax.distributed.initialize()`` with nothing detected raises the
    same ValueError as a broken set-up. So its detectors are asked directly, as
    ``ClusterEnv.auto_detect_unset_distributed_params`` does (opt-in ones, e.g. mpi4py, excluded)."""
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.__name__
    return None


def tree_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a tree of flax LogicallyPartitioned leaves (abstract or concrete).

    Leaves without logical names (plain arrays, scalars) are replicated.
    """
    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return logical_sharding(leaf.names, leaf.value.shape, mesh)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
