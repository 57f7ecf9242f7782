"""Scaling on paper: step time, communication and MFU for 7B/13B/70B on TPU v4/v5p pods and H100s.

    python experiments/scaling.py        # prints the markdown tables of experiments/scaling.md

A roofline model, not a measurement. Per train step, per device:

    compute = tokens/device * hardware FLOPs/token / (peak * efficiency)
    fsdp    = 3 passes over the bfloat16 params (gather for the forward pass, gather again for the
              backward pass, reduce-scatter the grads), each bytes * (n-1)/n / collective bandwidth
    tp      = all-reduces of the [rows, seq, d_model] bfloat16 activations, 5 per layer with full remat
    dp      = all-reduce of the bfloat16 grad shard across data-parallel replicas (HSDP meshes only)
    step    = max(compute, fsdp + dp) + tp   XLA overlaps the weight collectives with compute
            = compute + fsdp + dp + tp       it does not (the upper bound)

MFU counts model FLOPs (jaxalign.train.metrics.flops_per_token: 6N + causal attention), so full remat, which
makes the hardware run the forward pass twice (8N), caps MFU at 75% of the efficiency. `efficiency`
is not guessed: it is what MaxText's published run on that chip implies (MAXTEXT_RUNS, CALIBRATION).
Memory and the largest batch come from jaxalign.plan. experiments/scaling.md gives every source.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

from jaxalign import plan
from jaxalign.bench import flops_per_token
from jaxalign.models import ModelConfig, get_preset

SEQ_LEN = 2048
GLOBAL_BATCH_TOKENS = 4 * 2**20  # Llama 2's batch: the batch is capped here, not only by memory
BF16 = 2  # bytes per param on the wire: XLA converts the f32 params to bf16 before gathering them
HEADROOM = 0.9  # plan to 90% of HBM: XLA's buffers fragment, and jaxalign.plan is an estimate
GiB = 2**30
MODELS = ("7b", "13b", "70b")


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    memory_key: str  # key of jaxalign.plan.DEVICES
    peak_flops: float  # dense bfloat16 FLOP/s per chip
    link_bytes_per_s: float  # TPU: one ICI link, both directions; GPU: NVLink egress per GPU
    counts: tuple[int, ...]  # chip counts the tables cover
    node_size: int = 0  # GPUs per NVLink domain; 0 for a TPU slice (one ICI torus)
    nic_bytes_per_s: float = 0.0  # GPU: scale-out (InfiniBand) bandwidth per GPU, each direction
    dcn_bytes_per_s: float = 6.25e9  # TPU: data-center network per chip, between slices (50 Gb/s)
    platform: str = "tpu"  # for jaxalign.plan: attention_impl="auto" picks splash (TPU) or cuDNN (GPU)

    @property
    def hbm_bytes(self) -> int:
        return plan.DEVICES[self.memory_key]


HARDWARE = {
    "v4": Chip("TPU v4", "tpu-v4", 275e12, link_bytes_per_s=9e10, counts=(64, 128, 256, 512)),
    "v5p": Chip("TPU v5p", "tpu-v5p", 459e12, link_bytes_per_s=2e11, counts=(64, 128, 256, 512)),
    "h100": Chip("H100 SXM", "h100", 989e12, link_bytes_per_s=450e9, counts=(8, 16, 32, 64), node_size=8,
                 nic_bytes_per_s=50e9, platform="gpu"),
}
# Google Cloud's A3 (High) VM, where MaxText measured its H100 runs: 8 H100s on NVLink but, we assume,
# 800 Gb/s of GPU-to-GPU network per VM (Google lists up to 1,000 Gb/s in all), a quarter of a DGX's.
HARDWARE["a3"] = dataclasses.replace(HARDWARE["h100"], name="H100 (A3 VM)", nic_bytes_per_s=12.5e9, counts=())


def config(name: str, remat: str = "full", **overrides: object) -> ModelConfig:
    """A preset as the tables run it: bfloat16 compute, float32 params, attention_impl="auto" (a flash
    kernel on TPU and GPU: it skips the masked half of causal attention and keeps no score matrix)."""
    settings = dict(dtype="bfloat16", param_dtype="float32", remat=remat, attention_impl="auto")
    return get_preset(name, **{**settings, **overrides})


# ---------------------------------------------------------------------------------------------
# Compute


def hardware_flops_per_token(cfg: ModelConfig, seq_len: int, policy: str = "") -> float:
    """FLOPs the chip executes per token: the model FLOPs, the attention the kernel does not skip, and
    the forward work the remat policy recomputes. `policy` defaults to cfg.remat; MaxText's policies
    ("minimal" = our save_dots, "minimal_flash", "save_dot_except_mlpwi") serve the comparison."""
    flops = flops_per_token(cfg, seq_len)
    attention = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.dims_per_head * seq_len
    if cfg.attention_impl in ("xla", "dot_product"):  # the masked half of the scores is computed too
        flops, attention = flops + attention, 2 * attention
    blocks_forward = (flops - 6 * cfg.vocab_size * cfg.hidden_size) / 3  # lm_head is outside the remat
    mlp_in_forward = 4 * cfg.hidden_size * cfg.intermediate_size * cfg.num_hidden_layers  # gate + up
    recompute = {
        "none": 0.0,
        "minimal_flash": 0.0,  # every projection and the attention output saved
        "save_dots": attention / 3,  # dots with batch dims (the attention core) are recomputed
        "minimal": attention / 3,
        "save_dot_except_mlpwi": attention / 3 + mlp_in_forward,
        "full": blocks_forward,
    }[policy or cfg.remat]
    return flops + recompute


def compute_seconds(cfg: ModelConfig, chip_key: str, tokens_per_device: float, seq_len: int,
                    policy: str = "") -> float:
    chip = HARDWARE[chip_key]
    flops = hardware_flops_per_token(cfg, seq_len, policy) * tokens_per_device
    return flops / (chip.peak_flops * EFFICIENCY[chip_key])


# ---------------------------------------------------------------------------------------------
# Communication


def gather_seconds(chip: Chip, nbytes: float, n: int, *, torus_dims: int = 1, per_node: int = 1) -> float:
    """All-gather (or reduce-scatter) over `n` devices of an array that is `nbytes` once gathered.

    TPU: bidirectional rings on each torus dimension the mesh axis spans; the dimensions add their
    bandwidth. GPU: a ring over NVLink inside the node and one across nodes, with `per_node` devices of
    the group in each node sharing their NICs; the slower level sets the time.
    """
    if n == 1:
        return 0.0
    if chip.node_size == 0:
        return nbytes * (n - 1) / n / (chip.link_bytes_per_s * torus_dims)
    inside = min(n, per_node)
    nodes = n // inside
    t_node = nbytes * (inside - 1) / inside / chip.link_bytes_per_s
    t_net = nbytes * (nodes - 1) / nodes / (inside * chip.nic_bytes_per_s)
    return max(t_node, t_net)


def fsdp_seconds(cfg: ModelConfig, chip: Chip, mesh: dict[str, int]) -> float:
    """Gather the params for the forward pass, again for the backward pass (the scanned, rematerialised
    layer gathers its weights anew), reduce-scatter the grads: 3 passes over the tp shard, in bf16."""
    nbytes = BF16 * cfg.num_params() / mesh["tp"]
    torus_dims = 3 if mesh["tp"] == 1 else 2  # tp takes one torus dimension, fsdp the other two
    # Devices are laid out dp, fsdp, tp (tp innermost): a node holds node_size / tp of an fsdp group.
    per_node = min(mesh["fsdp"], max(1, chip.node_size // mesh["tp"]))
    return 3 * gather_seconds(chip, nbytes, mesh["fsdp"], torus_dims=torus_dims, per_node=per_node)


def dp_seconds(cfg: ModelConfig, chip: Chip, mesh: dict[str, int]) -> float:
    """All-reduce (reduce-scatter + all-gather) of this device's bf16 grad shard across dp: one device
    per node over the NICs (GPU), one chip per slice over the data-center network (TPU multislice)."""
    nbytes = BF16 * cfg.num_params() / (mesh["tp"] * mesh["fsdp"])
    if chip.node_size == 0:
        return 2 * nbytes * (mesh["dp"] - 1) / mesh["dp"] / chip.dcn_bytes_per_s
    return 2 * gather_seconds(chip, nbytes, mesh["dp"])


def tp_seconds(cfg: ModelConfig, chip: Chip, mesh: dict[str, int], rows: int, seq_len: int) -> float:
    """Megatron-style TP: the attention and MLP outputs are partial sums over tp, so the forward pass
    all-reduces [rows, seq, d_model] twice per layer and the backward pass twice (the input grads of
    the q/k/v and gate/up projections); full remat adds one, for the attention output (the recomputed
    MLP output is dead). 5 per layer is what XLA compiled for jaxalign's 7B on a v4 topology."""
    if mesh["tp"] == 1:
        return 0.0
    nbytes = BF16 * rows * seq_len * cfg.hidden_size
    per_layer = 5 if cfg.remat == "full" else 4
    all_reduce = 2 * gather_seconds(chip, nbytes, mesh["tp"], per_node=mesh["tp"])
    return cfg.num_hidden_layers * per_layer * all_reduce


# ---------------------------------------------------------------------------------------------
# One configuration


@dataclasses.dataclass(frozen=True)
class Prediction:
    model: str
    chip: str
    chips: int
    mesh: dict[str, int]
    remat: str
    seq_len: int
    memory_bytes: int  # per device at the batch used (jaxalign.plan)
    max_rows: int  # largest batch per data-parallel shard that fits (rows of seq_len tokens)
    rows: int  # batch used per data-parallel shard
    compute_s: float
    fsdp_s: float
    dp_s: float
    tp_s: float
    model_flops: float  # per step, all chips

    @property
    def step_s(self) -> float:  # the weight collectives hidden behind compute, the TP all-reduces not
        return max(self.compute_s, self.fsdp_s + self.dp_s) + self.tp_s

    @property
    def step_no_overlap_s(self) -> float:
        return self.compute_s + self.fsdp_s + self.dp_s + self.tp_s

    @property
    def rows_to_hide_comm(self) -> float:
        """Rows per shard at which compute just covers the weight collectives."""
        return self.rows * (self.fsdp_s + self.dp_s) / self.compute_s

    @property
    def global_tokens(self) -> int:
        return self.rows * self.mesh["dp"] * self.mesh["fsdp"] * self.seq_len

    def mfu(self, overlap: bool = True) -> float:
        step = self.step_s if overlap else self.step_no_overlap_s
        return self.model_flops / (step * self.chips * HARDWARE[self.chip].peak_flops)

    def tokens_per_chip(self) -> float:
        return self.global_tokens / self.step_s / self.chips


def predict(cfg: ModelConfig, name: str, chip_key: str, chips: int, mesh: dict[str, int], *,
            seq_len: int = SEQ_LEN, rows: int | None = None, policy: str = "") -> Prediction | None:
    """The step on `chips` chips with this mesh, at `rows` per data-parallel shard or else at the
    largest batch that fits and stays under GLOBAL_BATCH_TOKENS; None if one row does not fit."""
    chip = HARDWARE[chip_key]
    shards = mesh["dp"] * mesh["fsdp"]
    budget = int(HEADROOM * chip.hbm_bytes)
    max_rows = plan.largest_batch(cfg, mesh, seq_len, budget, platform=chip.platform) // shards
    if max_rows < 1:
        return None
    if rows is None:
        rows = min(max_rows, max(1, GLOBAL_BATCH_TOKENS // (seq_len * shards)))
    return Prediction(
        model=name, chip=chip_key, chips=chips, mesh=mesh, remat=cfg.remat, seq_len=seq_len,
        memory_bytes=plan.estimate(cfg, mesh, rows * shards, seq_len, platform=chip.platform).total,
        max_rows=max_rows, rows=rows,
        compute_s=compute_seconds(cfg, chip_key, rows * seq_len / mesh["tp"], seq_len, policy),
        fsdp_s=fsdp_seconds(cfg, chip, mesh), dp_s=dp_seconds(cfg, chip, mesh),
        tp_s=tp_seconds(cfg, chip, mesh, rows, seq_len),
        model_flops=flops_per_token(cfg, seq_len) * rows * shards * seq_len,
    )


def candidate_meshes(cfg: ModelConfig, chip: Chip, chips: int) -> Iterator[dict[str, int]]:
    """fsdp over everything; fsdp x tp (tp 4 or 8: one torus dimension, or inside a node); on GPUs
    also HSDP (fsdp inside the node, pure data parallelism across nodes)."""
    yield {"dp": 1, "fsdp": chips, "tp": 1}
    for tp in (4, 8):
        if cfg.num_attention_heads % tp == 0 and cfg.kv_heads % tp == 0 and chips > tp:
            yield {"dp": 1, "fsdp": chips // tp, "tp": tp}
    if chip.node_size and chips > chip.node_size:
        yield {"dp": chips // chip.node_size, "fsdp": chip.node_size, "tp": 1}


def best(name: str, chip_key: str, chips: int, remats: tuple[str, ...] = ("full",)) -> Prediction | None:
    """The (remat, mesh) with the highest predicted MFU; ties go to the first, i.e. the simplest."""
    found = []
    for remat in remats:
        cfg = config(name, remat)
        for mesh in candidate_meshes(cfg, HARDWARE[chip_key], chips):
            if p := predict(cfg, name, chip_key, chips, mesh):
                found.append(p)
    return max(found, key=lambda p: round(p.mfu(), 3), default=None)


# ---------------------------------------------------------------------------------------------
# Calibration: MaxText's published runs, with the shapes and settings of their config files


@dataclasses.dataclass(frozen=True)
class MaxTextRun:
    label: str
    chip: str
    preset: str
    overrides: dict[str, int]
    mesh: dict[str, int]
    rows: int  # their per_device_batch_size
    seq_len: int
    policy: str  # their remat_policy
    mfu: float  # as published
    unhalved_attention: bool  # published before MaxText halved the causal attention FLOPs

    @property
    def chips(self) -> int:
        return math.prod(self.mesh.values())

    def config(self) -> ModelConfig:
        remat = "full" if self.policy == "full" else "save_dots"  # for memory only; FLOPs use `policy`
        return config(self.preset, remat, **self.overrides)

    def mfu_our_convention(self) -> float:
        cfg = self.config()
        ours = flops_per_token(cfg, self.seq_len)
        attention = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.dims_per_head * self.seq_len
        return self.mfu * ours / (ours + attention) if self.unhalved_attention else self.mfu

    def implied_efficiency(self) -> float:
        """The efficiency at which our compute term reproduces the measured MFU (no exposed comm)."""
        cfg = self.config()
        hardware = hardware_flops_per_token(cfg, self.seq_len, self.policy)
        return self.mfu_our_convention() * hardware / flops_per_token(cfg, self.seq_len)

    def predict(self) -> Prediction | None:
        return predict(self.config(), self.label, self.chip, self.chips, self.mesh, seq_len=self.seq_len,
                       rows=self.rows, policy=self.policy)


def _fsdp(n: int, dp: int = 1) -> dict[str, int]:
    return {"dp": dp, "fsdp": n, "tp": 1}


_22B = dict(hidden_size=6144, intermediate_size=24576, num_hidden_layers=48, num_attention_heads=24)
_52B = dict(hidden_size=12288, intermediate_size=49152, num_hidden_layers=32, num_attention_heads=32)
MAXTEXT_RUNS = (
    MaxTextRun("22B, 1 x v4-128", "v4", "7b", _22B, _fsdp(64), 13, 2048, "full", 0.567, True),
    MaxTextRun("52B, 1 x v4-384", "v4", "7b", _52B, _fsdp(192), 7, 2048, "full", 0.560, True),
    MaxTextRun("Llama2-70B, v5p 512 chips", "v5p", "70b", {}, _fsdp(512), 4, 4096, "save_dot_except_mlpwi",
               0.654, False),
    MaxTextRun("Llama2-7B, 1 x A3 (8 H100)", "a3", "7b", {}, _fsdp(8), 4, 4096, "minimal_flash",
               492 / 989, True),
    MaxTextRun("Llama2-7B, 2 x A3 (16 H100)", "a3", "7b", {}, _fsdp(8, 2), 4, 4096, "minimal_flash",
               422 / 989, True),
    MaxTextRun("Llama2-7B, 8 x A3 (64 H100)", "a3", "7b", {}, _fsdp(8, 8), 4, 4096, "minimal_flash",
               409 / 989, True),
    MaxTextRun("Llama2-7B, 16 x A3 (128 H100)", "a3", "7b", {}, _fsdp(8, 16), 4, 4096, "minimal_flash",
               375 / 989, True),
)
# The run each chip's efficiency comes from: the smallest one, least touched by communication.
CALIBRATION = {"v4": MAXTEXT_RUNS[0], "v5p": MAXTEXT_RUNS[2], "h100": MAXTEXT_RUNS[3], "a3": MAXTEXT_RUNS[3]}
EFFICIENCY = {chip: run.implied_efficiency() for chip, run in CALIBRATION.items()}


# ---------------------------------------------------------------------------------------------
# Tables (markdown)


def mesh_str(mesh: dict[str, int]) -> str:
    return ",".join(f"{axis}:{size}" for axis, size in mesh.items() if size > 1 or axis == "fsdp")


HEADER = ("| model | chips | mesh | GiB/device | max rows | rows | batch (M tok) | compute ms | fsdp ms | "
          "tp+dp ms | step ms | rows to hide comm | MFU | MFU, no overlap | tok/s/chip |\n"
          + "|---" * 15 + "|")


def row(p: Prediction, label: str = "") -> str:
    return (f"| {label or p.model} | {p.chips} | `{mesh_str(p.mesh)}` | {p.memory_bytes / GiB:.1f} | "
            f"{p.max_rows} | {p.rows} | {p.global_tokens / 2**20:.1f} | {p.compute_s * 1e3:,.0f} | "
            f"{p.fsdp_s * 1e3:,.0f} | {(p.tp_s + p.dp_s) * 1e3:,.0f} | {p.step_s * 1e3:,.0f} | "
            f"{p.rows_to_hide_comm:.2f} | {p.mfu():.1%} | {p.mfu(overlap=False):.1%} | "
            f"{p.tokens_per_chip():,.0f} |")


def no_fit(label: str, chips: int, mesh: str = "") -> str:
    return f"| {label} | {chips} | {mesh} does not fit |" + " |" * 12


def hardware_table() -> str:
    lines = ["| chip | peak bf16 TFLOP/s | HBM GiB | efficiency (from) | collective bandwidth |",
             "|---|---|---|---|---|"]
    for key, chip in HARDWARE.items():
        if chip.node_size:
            links = (f"NVLink {chip.link_bytes_per_s / 1e9:.0f} GB/s per GPU in a node of {chip.node_size}; "
                     f"InfiniBand {chip.nic_bytes_per_s / 1e9:.0f} GB/s per GPU across nodes")
        else:
            links = f"ICI {chip.link_bytes_per_s / 1e9:.0f} GB/s per link (both ways) per torus dimension"
        lines.append(f"| {chip.name} | {chip.peak_flops / 1e12:.0f} | {chip.hbm_bytes / GiB:.0f} | "
                     f"{EFFICIENCY[key]:.3f} ({CALIBRATION[key].label}) | {links} |")
    return "\n".join(lines)


def scaling_tables() -> str:
    out = []
    for key, chip in HARDWARE.items():
        if not chip.counts:
            continue
        out += [f"\n### {chip.name}\n", HEADER]
        for name in MODELS:
            for chips in chip.counts:
                p = best(name, key, chips)
                out.append(row(p) if p else no_fit(name, chips))
    return "\n".join(out)


def alternatives_table() -> str:
    """Every candidate mesh for a few cases, to show why the chosen one wins."""
    out = [HEADER]
    for name, key, chips in (("70b", "v4", 128), ("70b", "v5p", 128), ("70b", "h100", 64),
                             ("7b", "h100", 64)):
        cfg, label = config(name), f"{name} {key}"
        for mesh in candidate_meshes(cfg, HARDWARE[key], chips):
            p = predict(cfg, name, key, chips, mesh)
            out.append(row(p, label) if p else no_fit(label, chips, f"`{mesh_str(mesh)}`"))
    return "\n".join(out)


def remat_table() -> str:
    """full vs save_dots on the same mesh: save_dots keeps every projection's output, so the forward
    pass is not recomputed (MFU cap = efficiency) but far more activations stay in memory."""
    out = ["| model | chip | chips | mesh | remat | GiB/device | max rows | rows | MFU | tok/s/chip |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name, key, chips in (("7b", "v4", 256), ("7b", "v5p", 64), ("13b", "v5p", 128), ("70b", "v5p", 256),
                             ("7b", "h100", 64), ("70b", "h100", 64)):
        mesh = best(name, key, chips).mesh
        for remat in ("full", "save_dots"):
            p = predict(config(name, remat), name, key, chips, mesh)
            head = f"| {name} | {key} | {chips} | `{mesh_str(mesh)}` | {remat} |"
            out.append(head + (f" {p.memory_bytes / GiB:.1f} | {p.max_rows} | {p.rows} | {p.mfu():.1%} | "
                               f"{p.tokens_per_chip():,.0f} |" if p else " does not fit | | | | |"))
    return "\n".join(out)


def span(values: list[str]) -> str:
    """'a' if every value prints the same, else 'first-last'."""
    return values[0] if len(set(values)) == 1 else f"{values[0]}-{values[-1]}"


def summary_table() -> str:
    """The best (remat, mesh) for each model and chip, over the chip counts of the tables."""
    out = ["| model | chip | chips | remat | mesh | predicted MFU | tok/s/chip |",
           "|---|---|---|---|---|---|---|"]
    for name in MODELS:
        for key, chip in HARDWARE.items():
            found = [p for chips in chip.counts if (p := best(name, key, chips, ("full", "save_dots")))]
            if not found:
                continue
            remats = span([p.remat for p in found])
            meshes = ("fsdp over all chips" if all(p.mesh["fsdp"] == p.chips for p in found)
                      else ", ".join(f"{p.chips}: `{mesh_str(p.mesh)}`" for p in found))
            out.append(f"| {name} | {chip.name} | {found[0].chips}-{found[-1].chips} | {remats} | {meshes} | "
                       f"{span([f'{p.mfu():.0%}' for p in found])} | "
                       f"{span([f'{round(p.tokens_per_chip(), -1):,.0f}' for p in found])} |")
    return "\n".join(out)


def multislice_table() -> str:
    """Two or four TPU slices joined by the data-center network: fsdp inside each slice, dp across."""
    out = [HEADER.replace("| model |", "| model, slices |", 1)]
    for name, key, per_slice in (("7b", "v5p", 256), ("70b", "v5p", 256), ("70b", "v4", 256)):
        cfg = config(name)
        for slices in (2, 4):
            mesh = {"dp": slices, "fsdp": per_slice, "tp": 1}
            p = predict(cfg, name, key, slices * per_slice, mesh)
            label = f"{name} {key}, {slices} x {per_slice}"
            out.append(row(p, label) if p else no_fit(label, slices * per_slice))
    return "\n".join(out)


def sensitivity_table() -> str:
    """How the predicted MFU moves when one assumption is off."""
    out = ["| model | chip | chips | mesh | base | collectives x2 | collectives x2, no overlap | "
           "efficiency x 0.9 |", "|---|---|---|---|---|---|---|---|"]
    for name, key, chips in (("7b", "v4", 512), ("70b", "v4", 512), ("70b", "v5p", 512), ("7b", "h100", 64),
                             ("70b", "h100", 64)):
        p = best(name, key, chips)
        slow_comm = dataclasses.replace(p, fsdp_s=2 * p.fsdp_s, dp_s=2 * p.dp_s, tp_s=2 * p.tp_s)
        slow_math = dataclasses.replace(p, compute_s=p.compute_s / 0.9)
        out.append(f"| {name} | {key} | {chips} | `{mesh_str(p.mesh)}` | {p.mfu():.1%} | "
                   f"{slow_comm.mfu():.1%} | {slow_comm.mfu(overlap=False):.1%} | {slow_math.mfu():.1%} |")
    return "\n".join(out)


def maxtext_table() -> str:
    out = ["| MaxText run | mesh | rows, seq | remat | MFU published | on our convention | implied "
           "efficiency | predicted MFU | no overlap |", "|---|---|---|---|---|---|---|---|---|"]
    for run in MAXTEXT_RUNS:
        p = run.predict()
        role = " (calibration)" if run in CALIBRATION.values() else ""
        predicted = f"{p.mfu():.1%}{role} | {p.mfu(overlap=False):.1%}" if p else "does not fit (plan) |"
        out.append(f"| {run.label} | `{mesh_str(run.mesh)}` | {run.rows}, {run.seq_len} | {run.policy} | "
                   f"{run.mfu:.1%} | {run.mfu_our_convention():.1%} | {run.implied_efficiency():.3f} | "
                   f"{predicted} |")
    return "\n".join(out)


def main() -> None:
    sections = [
        ("Hardware figures used", hardware_table()),
        ("Against MaxText's published runs", maxtext_table()),
        (f"Best mesh per configuration (seq {SEQ_LEN}, bf16 compute, f32 params, remat full, "
         f"batch <= {GLOBAL_BATCH_TOKENS // 2**20}M tokens)", scaling_tables()),
        ("Every candidate mesh, for a few cases", alternatives_table()),
        ("Remat: full vs save_dots", remat_table()),
        ("Multislice: data parallelism over the data-center network", multislice_table()),
        ("What to pick", summary_table()),
        ("Sensitivity of the predicted MFU", sensitivity_table()),
    ]
    for title, body in sections:
        print(f"\n## {title}\n\n{body}")


if __name__ == "__main__":
    main()
