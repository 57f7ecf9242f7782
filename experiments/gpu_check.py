"""First numbers on an accelerator (issue #25): one command, one JSON, one short table.

    python experiments/gpu_check.py --out DIR            # the full check, on whatever JAX finds
    python experiments/gpu_check.py --out DIR --smoke    # a tiny CPU rehearsal (~90 s of CPU time)

Writes DIR/gpu_check.json (every section: its figures, or "skipped" and why, or the error),
DIR/gpu_check.md (a short table) and DIR/gpu_check.log (every section's output), and exits 1 if a
section failed or ran out of time. Sections, in order:

- env        device kind, jax / jaxlib / cuDNN / CUDA versions, the measured bf16 matmul peak
             (jaxalign.train.metrics.matmul_peak_flops, 8192^2) beside the vendor's figure.
- attention  every available backend of jaxalign.models.attention against the reference ("xla" in
             float32), values and gradients, on causal, segment-id and segment-id + FCM (Chain of
             Hindsight's random mask) masks, 1b shape at 2048 tokens, bfloat16, with the tolerance
             ATTENTION_TOL; "cudnn" is "skipped: no GPU" elsewhere. Also fwd+bwd times.
- bench      `jaxalign bench --json` in its accelerator configuration (1b, bfloat16, 8 x 2048,
             remat save_dots, attention auto; --steps 3), through jaxalign.bench.run, without the
             PyTorch phase (its own section) and the input pipeline (grain is not on the GPU image).
- torch      the same model in transformers on PyTorch (jaxalign.bench.bench_torch: train step,
             forward, generate; transformers' default attention, recorded), in a process of its
             own so that it has the GPU's memory to itself; its figures go through bench's own
             result code next to the bench section's. If the train step runs out of memory at 8
             rows it is retried with fewer (recorded as torch_batch). "skipped" without torch.
- plan       what `jaxalign plan --check` reports for that configuration: jaxalign.plan.estimate
             and largest_batch beside xla_memory (XLA's compiled memory analysis of the real step).
- coh        one Chain of Hindsight train step of the 1b shape (4 feedback rows with FCM and the
             sequence-normalised loss + 4 pretraining rows at weight 1.5, 2048 tokens each, packed
             as 4 sequences of 512), timed
             as bench times its step, with MFU as bench computes it (flops_per_token x tokens/s /
             the matmul peak measured in the same process).
- dpo        one DPO train step of the 1b shape (4 rows x 2048 tokens, each 2 packed pairs of
             512-token sequences, the frozen reference model's forward in the step); model FLOPs =
             the policy's train step + the reference's forward.

Each section runs in its own process (GPU memory is returned between sections, a crash or a hang
loses one section) with a timeout, within --budget seconds for the whole run; attention and plan
run side by side (GROUPS), the rest one at a time. The script imports
only jaxalign.bench / plan / models / train.{metrics,optim,state,step} / objectives.{lm,coh,dpo}:
not jaxalign.train.loop, jaxalign.data.pipeline or jaxalign.objectives.registry, which import
grain, rapidfuzz, array_record and portpicker (not on the GPU image), and nothing imports
tensorflow_datasets or gcsfs. jaxalign needs ml_collections, which the GPU image lacks: carry its
wheel (docs/performance.md#gpu-check).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform as platform_lib
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # jaxalign from this checkout, installed or not
    sys.path.insert(0, str(ROOT))

SECTIONS = ("env", "attention", "bench", "torch", "plan", "coh", "dpo")
# Sections in one group run at the same time. attention and plan time nothing that is reported as a
# speed (attention's fwd+bwd times are indicative) and plan only compiles, so they share the device;
# everything else has it to itself.
GROUPS = (("env",), ("attention", "plan"), ("bench",), ("torch",), ("coh",), ("dpo",))
# Per-section timeouts (seconds): a full run on one H100 is estimated at 7-9 minutes (docs).
TIMEOUTS = {"env": 120, "attention": 180, "bench": 360, "torch": 300, "plan": 240, "coh": 240, "dpo": 240}
SMOKE_TIMEOUT = 300  # a loaded 2-core CI machine: the smoke's bench section took 50 s at load 10
DEFAULT_BUDGET = 540  # the whole run, full mode; each section gets at most what is left
SMOKE_BUDGET = 900
# Modules jaxalign must not need here: the GPU image has none of them.
AVOIDED = ("tensorflow_datasets", "gcsfs", "tensorflow", "grain", "rapidfuzz", "array_record", "portpicker")
# Attention: max |x - ref| / max |ref| per output and gradient, ref = "xla" in float32. bfloat16 inputs
# give ~4e-3 on every backend on CPU (xla, dot_product, chunked; 1b shape, 2048 tokens), so 2e-2
# passes bfloat16 rounding with room and fails a wrong mask or a wrong gradient (errors of O(1)).
ATTENTION_TOL = 2e-2

# The two modes' shapes. "full" is `jaxalign bench`'s accelerator configuration.
FULL = dict(
    preset="1b", dtype="bfloat16", batch=8, seq_len=2048, steps=3, matmul_n=8192,
    gen=("--gen-batch", "16", "--gen-prompt-len", "128", "--gen-new-tokens", "128"),
    model=("remat=save_dots", "attention_impl=auto"),
    attention=dict(batch=2, length=2048, heads=32, kv_heads=8, head_dim=64, repeats=5),
    coh_rows=(4, 4), dpo_rows=4, segment=512, step_repeats=3,
)
SMOKE = dict(
    preset="tiny", dtype="float32", batch=8, seq_len=64, steps=1, matmul_n=256,
    gen=("--gen-batch", "8", "--gen-prompt-len", "8", "--gen-new-tokens", "4"),
    model=("remat=save_dots", "attention_impl=auto"),
    attention=dict(batch=2, length=128, heads=4, kv_heads=2, head_dim=16, repeats=1),
    coh_rows=(8, 8), dpo_rows=8, segment=16, step_repeats=1,
)


class Skip(Exception):
    """A section that cannot run here, for a stated reason (not a failure)."""


def _log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def _plain(x: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to strings."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_plain(obj), indent=2) + "\n")
    tmp.replace(path)


# =============================================================================================
# Sections (each runs in a child process: `--section NAME`)


@dataclasses.dataclass
class Context:
    smoke: bool
    shapes: dict[str, Any]
    work: Path  # the parent's scratch directory: earlier sections' results are read from here

    def earlier(self, name: str) -> dict[str, Any] | None:
        path = self.work / f"{name}.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return data.get("result") if data.get("status") == "ok" else None


def _cuda_versions() -> dict[str, Any]:
    """cuDNN and CUDA runtime versions as JAX's CUDA plugin reports them (None without one)."""
    out: dict[str, Any] = {"cudnn_version": None, "cuda_runtime_version": None, "cuda_plugin": None}
    try:
        from jax._src.lib import cuda_versions  # the jax-cuda plugin's _versions module, or None
    except ImportError:
        return out
    if cuda_versions is None:
        return out
    out["cuda_plugin"] = getattr(cuda_versions, "__name__", None)
    for key, fn in (("cudnn_version", "cudnn_get_version"),
                    ("cuda_runtime_version", "cuda_runtime_get_version")):
        try:
            out[key] = int(getattr(cuda_versions, fn)())
        except Exception as e:  # noqa: BLE001 (a version we cannot read is recorded, not fatal)
            out[key] = f"unavailable: {type(e).__name__}: {e}"
    return out


def _nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _found(module: str) -> bool | str:
    """Whether `module` could be imported (without importing it); "blocked" if sys.modules holds None."""
    if module in sys.modules and sys.modules[module] is None:
        return "blocked"
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError) as e:
        return f"blocked: {type(e).__name__}"


def section_env(ctx: Context) -> dict[str, Any]:
    import jax
    import jaxlib

    from jaxalign.train.metrics import device_peak_flops, matmul_peak_flops

    device = jax.devices()[0]
    n, dtype = ctx.shapes["matmul_n"], "bfloat16"
    peak = matmul_peak_flops(n, dtype)
    vendor = device_peak_flops(device)
    stats = device.memory_stats() or {}
    return {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jaxlib, "__version__", None),
        **_cuda_versions(),
        "python": platform_lib.python_version(),
        "nvidia_smi": _nvidia_smi() if device.platform == "gpu" else None,
        "memory_bytes_limit": stats.get("bytes_limit"),
        "matmul_peak_flops": peak,
        "matmul_n": n,
        "matmul_dtype": dtype,
        "vendor_peak_flops": vendor,
        "matmul_vs_vendor": None if vendor is None else peak / vendor,
        "modules_found": {m: _found(m) for m in ("ml_collections", "torch", "transformers", *AVOIDED)},
        "environment": {k: os.environ.get(k) for k in (
            "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS", "JAX_PLATFORMS")},
    }


def _attention_inputs(shape: dict[str, int]):
    """q, k, v, the output cotangent (float32) and the three masks' (mask, segment_ids) pairs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxalign.models.llama import attention_mask

    b, length, heads, kv, dim = (shape[k] for k in ("batch", "length", "heads", "kv_heads", "head_dim"))
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (b, length, heads, dim), jnp.float32)
    k = jax.random.normal(keys[1], (b, length, kv, dim), jnp.float32)
    v = jax.random.normal(keys[2], (b, length, kv, dim), jnp.float32)
    cot = jax.random.normal(keys[3], (b, length, heads, dim), jnp.float32)
    # Segments as packing lays them out: uneven lengths, different per row, padding (0) at the end.
    fractions = [(0.30, 0.45, 0.23), (0.10, 0.50, 0.38)]
    rows = []
    for row in range(b):
        cuts = np.cumsum([int(f * length) for f in fractions[row % 2]])
        ids = np.zeros(length, np.int32)
        start = 0
        for segment, end in enumerate(cuts, start=1):
            ids[start:end] = segment
            start = end
        rows.append(ids)
    segments = jnp.asarray(np.stack(rows))
    index = jnp.arange(length)
    ones = jnp.ones((b, length), jnp.int32)
    # FCM as Chain of Hindsight trains: strictly-past keys dropped at random (5%); an extra mask, so
    # segment_ids is None (the model's promise is broken) and "auto" cannot take splash.
    drop = jax.random.uniform(keys[4], (b, length, length)) < 0.05
    extra = ~(drop & (index[None, :] < index[:, None])[None])
    masks = {
        "causal": (attention_mask(index, index, ones, ones, None), ones),
        "segments": (attention_mask(index, index, segments, segments, None), segments),
        "segments_fcm": (attention_mask(index, index, segments, segments, extra), None),
    }
    return q, k, v, cot, masks


def section_attention(ctx: Context) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxalign.models import attention as attn
    from jaxalign.train.metrics import median_time

    shape = ctx.shapes["attention"]
    platform = jax.default_backend()
    q, k, v, cot, masks = _attention_inputs(shape)
    dtype = jnp.bfloat16

    compiled: dict[tuple[str, Any], Any] = {}

    def make(impl: str, dt: Any):
        # One jitted function per backend and dtype: masks and segment ids are arguments, so the
        # causal and segment-id cases share a compilation.
        if (impl, dt) in compiled:
            return compiled[impl, dt]

        def fwd(q, k, v, mask, segs, cot):
            out = attn.dot_product_attention(q.astype(dt), k.astype(dt), v.astype(dt), mask, impl,
                                             segment_ids=segs)
            return jnp.sum(out.astype(jnp.float32) * cot), out

        def run(q, k, v, mask, segs, cot):
            grad_fn = jax.value_and_grad(fwd, argnums=(0, 1, 2), has_aux=True)
            (_, out), grads = grad_fn(q, k, v, mask, segs, cot)
            return out, grads

        compiled[impl, dt] = jax.jit(run)
        return compiled[impl, dt]

    def rel_err(x: Any, ref: Any) -> float:
        x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
        return float(np.max(np.abs(x - ref)) / max(float(np.max(np.abs(ref))), 1e-30))

    impls = ["xla", "dot_product", "chunked", "cudnn"] + (["splash"] if platform == "tpu" else [])
    cases: dict[str, Any] = {}
    for case, (mask, segs) in masks.items():
        _log(f"attention: {case}")
        ref_out, ref_grads = make("xla", jnp.float32)(q, k, v, mask, segs, cot)
        entry: dict[str, Any] = {"auto_chooses": attn.auto_impl(q.astype(dtype), k.astype(dtype), segs)}
        for impl in impls:
            if impl == "cudnn" and platform != "gpu":
                entry[impl] = {"skipped": f"no GPU (platform {platform})"}
                continue
            if impl == "cudnn" and not attn.cudnn_supported(q.astype(dtype), k.astype(dtype)):
                entry[impl] = {"skipped": "cudnn_supported() is False for these shapes"}
                continue
            if impl == "splash" and segs is None:
                entry[impl] = {"skipped": "splash takes no extra mask"}
                continue
            try:
                fn = make(impl, dtype)
                out, grads = fn(q, k, v, mask, segs, cot)
                errors = {"out": rel_err(out, ref_out),
                          **{name: rel_err(g, r) for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads,
                                                                      strict=True)}}
                args = (q, k, v, mask, segs, cot)
                seconds = median_time(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)),
                                      shape["repeats"])
                entry[impl] = {"rel_err": errors, "max_rel_err": max(errors.values()),
                               "pass": max(errors.values()) <= ATTENTION_TOL, "fwd_bwd_s": seconds}
            except Exception as e:  # noqa: BLE001 (one backend failing is a result, the others still run)
                entry[impl] = {"error": f"{type(e).__name__}: {e}"[:2000], "pass": False}
        cases[case] = entry
    failed = [f"{case}/{impl}" for case, entry in cases.items() for impl, r in entry.items()
              if isinstance(r, dict) and r.get("pass") is False]
    result = {
        "platform": platform,
        "shape": {**{k: shape[k] for k in ("batch", "length", "heads", "kv_heads", "head_dim")},
                  "dtype": "bfloat16"},
        "reference": "xla in float32 (inputs upcast)",
        "metric": "max|x - ref| / max|ref| over the output and each of dq, dk, dv",
        "tolerance": ATTENTION_TOL,
        "cases": cases,
        "failed": failed,
    }
    if failed:
        raise SectionFailed(f"attention out of tolerance or failing: {failed}", result)
    return result


class SectionFailed(Exception):
    """A section that ran and produced figures that fail its check (kept in the JSON)."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


def _bench_argv(ctx: Context, torch: bool) -> list[str]:
    s = ctx.shapes
    argv = ["--json", "--preset", s["preset"], "--dtype", s["dtype"], "--batch", str(s["batch"]),
            "--seq-len", str(s["seq_len"]), "--steps", str(s["steps"]), *s["gen"], "--no-pipeline"]
    for override in s["model"]:
        argv += ["--model", override]
    return argv if torch else [*argv, "--no-torch"]


def _bench_args(ctx: Context, argv: list[str]) -> argparse.Namespace:
    """bench's flags; and the matmul size, which bench takes from its platform defaults unless the
    namespace names one (no flag): 8192 as bench's accelerator default, 256 on --smoke (bench's CPU
    2048^2 float32 matmul alone took seconds of the smoke run)."""
    from jaxalign import bench

    args = bench._parser().parse_args(argv)
    args.matmul_n = ctx.shapes["matmul_n"]
    return args


def section_bench(ctx: Context) -> dict[str, Any]:
    from jaxalign import bench

    argv = _bench_argv(ctx, torch=False)
    args = _bench_args(ctx, argv)
    with contextlib.redirect_stdout(sys.stderr):
        result = bench.run(args)
    return {"argv": ["jaxalign", "bench", *argv], **result}


def _is_oom(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return "out of memory" in text or "outofmemory" in text


def section_torch(ctx: Context) -> dict[str, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise Skip(f"torch not installed ({e})") from e
    import gc

    from jaxalign import bench, models

    argv = _bench_argv(ctx, torch=True)
    s = bench._setup(_bench_args(ctx, argv))
    # Which attention transformers picks by default (bench_torch does not choose): a tiny model of
    # the same family, built the same way, tells.
    tiny = transformers.AutoModelForCausalLM.from_config(bench._hf_config(models.get_preset("tiny")))
    attn_impl = getattr(tiny.config, "_attn_implementation", None)
    del tiny
    notes: list[str] = []
    rows = s.pick["batch"]
    timings: dict[str, Any] | None = None
    errors: list[str] = []
    while rows >= 1:
        _log(f"torch: {rows} x {s.pick['seq_len']} (transformers attention {attn_impl})")
        try:
            timings = bench.bench_torch(s.cfg, s.tokens[:rows], s.prompts, s.pick["gen_new_tokens"],
                                        s.args.steps, bf16=s.pick["dtype"] == "bfloat16", notes=notes)
            break
        except RuntimeError as e:
            errors.append(f"{rows} rows: {type(e).__name__}: {str(e).splitlines()[0][:500]}")
            if not _is_oom(e) or rows == 1:
                raise
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows //= 2
    assert timings is not None
    if rows != s.pick["batch"]:
        notes.append(f"torch train/forward ran out of memory at {s.pick['batch']} rows; measured at {rows} "
                     f"rows (generation unchanged): {errors}")
    jax_result = ctx.earlier("bench")
    t = {**timings, "torch_version": torch.__version__, "transformers_version": transformers.__version__}
    # bench's own result code turns timings into tokens/s and MFU; the jaxalign slots are filled
    # with the torch timings only to satisfy it, and only its torch_* figures are kept.
    for jax_key, torch_key in (("train_step_s", "torch_train_step_s"), ("forward_s", "torch_forward_s"),
                               ("generate_s", "torch_generate_s"),
                               ("generate_prefill_s", "torch_generate_prefill_s"),
                               ("generate_nocache_s", "torch_generate_s")):
        t[jax_key] = timings[torch_key]
    t.update(train_loss=None, input_step_s=None, input_loop_step_s=None, input_wait_fraction=None,
             input_overhead_fraction=None)
    if jax_result is not None:
        peaks = (jax_result["matmul_peak_flops_start"], jax_result["matmul_peak_flops_end"])
        peak_source = "the bench section's matmul peak"
    else:
        from jaxalign.train.metrics import matmul_peak_flops

        peak = matmul_peak_flops(s.pick["matmul_n"], s.matmul_dtype)
        peaks, peak_source = (peak, peak), "measured here (the bench section has no result)"
    setup = dataclasses.replace(s, pick={**s.pick, "batch": rows})
    full = bench._results(setup, t, peaks, notes)
    out = {k: v for k, v in full.items() if k.startswith("torch_")}
    out.update(torch_batch=rows, torch_attn_implementation=attn_impl,
               transformers_version=transformers.__version__, torch_cuda=torch.cuda.is_available(),
               peak_source=peak_source, notes=full["notes"], flash_attn_installed=_found("flash_attn"),
               argv=["jaxalign", "bench", *argv])
    if jax_result is not None:
        for phase in ("train", "forward", "generate"):
            out[f"{phase}_vs_torch"] = bench._ratio(jax_result.get(f"{phase}_tokens_per_s"),
                                                    out.get(f"torch_{phase}_tokens_per_s"))
    return out


def section_plan(ctx: Context) -> dict[str, Any]:
    import jax

    from jaxalign import mesh as mesh_lib
    from jaxalign import models, plan

    s = ctx.shapes
    spec = "dp:1,fsdp:-1,tp:1"  # bench's mesh
    cfg = models.get_preset(s["preset"], dtype=s["dtype"], **dict(o.split("=", 1) for o in s["model"]))
    mesh_shape = mesh_lib.parse_mesh_spec(spec, jax.device_count())
    batch, seq_len = s["batch"], s["seq_len"]
    estimate = plan.estimate(cfg, mesh_shape, batch, seq_len)
    device_bytes = plan._local_memory()
    report: dict[str, Any] = {
        "config": f"jaxalign bench accelerator config: preset {s['preset']}, {s['dtype']}, "
                  f"remat {cfg.remat}, attention {cfg.attention_impl}",
        "mesh_shape": mesh_shape, "batch_size": batch, "seq_len": seq_len, "microbatches": 1,
        "num_params": cfg.num_params(), **estimate.to_dict(),
        "device_bytes": device_bytes,
        "largest_batch": (None if not device_bytes
                          else plan.largest_batch(cfg, mesh_shape, seq_len, device_bytes)),
    }
    kind = jax.devices()[0].device_kind.lower()
    named = next((name for name in ("h200", "h100", "a100") if name in kind), None)
    if named:
        report["named_device"] = named
        report["largest_batch_named_device"] = plan.largest_batch(cfg, mesh_shape, seq_len,
                                                                  plan.DEVICES[named])
    _log("plan: compiling the real train step for XLA's memory analysis")
    report["xla"] = plan.xla_memory(cfg, mesh_lib.make_mesh(spec), batch, seq_len)
    report["estimate_over_xla_peak"] = report["total"] / report["xla"]["peak"]
    report["state_estimate_over_xla_arguments"] = (
        (report["params"] + report["opt_state"] + report["inputs"]) / report["xla"]["arguments"])
    report["text"] = plan.format_report(report, cfg)
    return report


def _packed_rows(rng: Any, rows: int, seq_len: int, vocab: int, segment: int, prompt_fraction: float,
                 loss_everywhere: bool = False) -> dict[str, Any]:
    """Packed rows as jaxalign.data.packing lays them out: segments of `segment` tokens with their
    own positions, the first `prompt_fraction` of each weighted 0 (all 1 if loss_everywhere)."""
    import numpy as np

    per_row = seq_len // segment
    tokens = rng.integers(3, vocab, size=(rows, per_row, segment + 1), dtype=np.int32)
    inputs = tokens[:, :, :-1].reshape(rows, seq_len)
    targets = tokens[:, :, 1:].reshape(rows, seq_len)
    segment_ids = np.repeat(np.arange(1, per_row + 1, dtype=np.int32), segment)[None].repeat(rows, 0)
    positions = np.tile(np.arange(segment, dtype=np.int32), per_row)[None].repeat(rows, 0)
    weights = np.ones((rows, seq_len), np.float32)
    if not loss_everywhere:
        weights[positions < int(prompt_fraction * segment)] = 0.0
    return {"inputs": inputs, "targets": targets, "weights": weights, "segment_ids": segment_ids,
            "positions": positions}


def _time_step(ctx: Context, cfg: Any, streams: dict[str, Any], batch: dict[str, Any], reference: bool,
               flops_per_token: float, tokens: int) -> dict[str, Any]:
    """bench.bench_train's timing of jaxalign.train.step with `streams` (a median after a warm-up),
    and MFU as bench computes it, against the matmul peak measured in this process."""
    import jax
    import jax.numpy as jnp

    from jaxalign import mesh as mesh_lib
    from jaxalign.train import optim
    from jaxalign.train import state as state_lib
    from jaxalign.train import step as step_lib
    from jaxalign.train.metrics import device_peak_flops, matmul_peak_flops, median_time

    mesh = mesh_lib.make_mesh("dp:1,fsdp:-1,tp:1")
    opt_cfg = optim.default_optimizer_config()
    opt_cfg.total_steps = 1000
    tx, schedule = optim.make_optimizer(opt_cfg)
    state = state_lib.init_train_state(cfg, tx, mesh, seed=0)
    ref_params = jax.tree.map(jnp.copy, state.params) if reference else None  # as the trainer's _start
    train_step = step_lib.make_train_step(cfg, tx, mesh, streams=streams, schedule=schedule,
                                          reference_params=ref_params)
    placed = jax.device_put(batch, train_step.batch_shardings(batch))
    box = {"state": state}
    del state

    def run() -> None:
        box["state"], box["metrics"] = train_step(box["state"], placed)
        jax.block_until_ready(box["metrics"])

    start = time.perf_counter()
    run()
    first_s = time.perf_counter() - start  # compile + one step
    seconds = median_time(run, ctx.shapes["step_repeats"])
    metrics = {k: float(v) for k, v in box["metrics"].items()}
    box.clear()  # the train state's memory, before the matmul below
    placed = ref_params = None
    peak = matmul_peak_flops(ctx.shapes["matmul_n"], "bfloat16" if cfg.dtype == "bfloat16" else "float32")
    vendor = device_peak_flops()
    tps = tokens / seconds
    # MFU as bench._results: model FLOPs per token x tokens/s / peak (the device count's peak off CPU).
    peak_total = peak * (1 if jax.default_backend() == "cpu" else mesh.devices.size)
    return {
        "step_s": seconds, "first_call_s": first_s, "tokens_per_step": tokens, "tokens_per_s": tps,
        "flops_per_token": flops_per_token, "matmul_peak_flops": peak,
        "mfu": flops_per_token * tps / peak_total,
        "mfu_vendor_peak": None if vendor is None else flops_per_token * tps / (vendor * mesh.devices.size),
        "metrics": metrics, "loss_finite": math.isfinite(metrics["loss"]),
        "num_params": cfg.num_params(), "remat": cfg.remat, "attention_impl": cfg.attention_impl,
        "dtype": cfg.dtype,
    }


def _step_cfg(ctx: Context):
    from jaxalign import models

    s = ctx.shapes
    return models.get_preset(s["preset"], dtype=s["dtype"], **dict(o.split("=", 1) for o in s["model"]))


def section_coh(ctx: Context) -> dict[str, Any]:
    import numpy as np

    from jaxalign.objectives import coh, lm
    from jaxalign.train import step as step_lib
    from jaxalign.train.metrics import flops_per_token

    s, cfg = ctx.shapes, _step_cfg(ctx)
    opts = coh.resolve(coh.DEFAULTS)  # the objective's defaults: sequence normalisation, FCM 0-0.05
    fcm = coh.fcm_transform(float(opts["fcm_min"]), float(opts["fcm_max"]))
    feedback_rows, pretrain_rows = s["coh_rows"]
    pretrain_weight = 1.5  # experiments/coh_paper.py's lambda
    # The trainer's two streams (jaxalign.train.loop._streams): the objective's loss and FCM, and
    # plain text weighted per token.
    streams = {"feedback": step_lib.Stream(lm.make_loss_fn(opts["normalization"]), 1.0, 1, fcm),
               "pretrain": step_lib.Stream(lm.loss, pretrain_weight, 1, None)}
    rng = np.random.default_rng(0)
    batch = {"feedback": _packed_rows(rng, feedback_rows, s["seq_len"], cfg.vocab_size, s["segment"], 0.5),
             "pretrain": _packed_rows(rng, pretrain_rows, s["seq_len"], cfg.vocab_size, s["segment"], 0.0,
                                      loss_everywhere=True)}
    tokens = (feedback_rows + pretrain_rows) * s["seq_len"]
    _log(f"coh: {feedback_rows} feedback + {pretrain_rows} pretraining rows x {s['seq_len']}")
    result = _time_step(ctx, cfg, streams, batch, False, flops_per_token(cfg, s["seq_len"]), tokens)
    result.update(feedback_rows=feedback_rows, pretrain_rows=pretrain_rows, seq_len=s["seq_len"],
                  pretrain_weight=pretrain_weight, normalization=opts["normalization"],
                  fcm=[float(opts["fcm_min"]), float(opts["fcm_max"])], segment_tokens=s["segment"])
    if not result["loss_finite"]:
        raise SectionFailed("coh: the loss is not finite", result)
    return result


def section_dpo(ctx: Context) -> dict[str, Any]:
    import numpy as np

    from jaxalign.objectives import dpo
    from jaxalign.train import step as step_lib
    from jaxalign.train.metrics import flops_per_token

    s, cfg = ctx.shapes, _step_cfg(ctx)
    rows = s["dpo_rows"]
    # One stream, the reference model's log-probs given to the loss (loop._streams for DPO).
    streams = {step_lib.SINGLE: step_lib.Stream(dpo.make_loss_fn(**dpo.DEFAULTS), reference=True)}
    rng = np.random.default_rng(0)
    # Segments 2j - 1 / 2j are pair j's chosen / rejected (dpo.pair_example packed): prompt then response.
    batch = {step_lib.SINGLE: _packed_rows(rng, rows, s["seq_len"], cfg.vocab_size, s["segment"], 0.5)}
    flops = flops_per_token(cfg, s["seq_len"]) + flops_per_token(cfg, s["seq_len"], training=False)
    _log(f"dpo: {rows} rows x {s['seq_len']}, {s['seq_len'] // s['segment'] // 2} pairs per row")
    result = _time_step(ctx, cfg, streams, batch, True, flops, rows * s["seq_len"])
    result.update(rows=rows, seq_len=s["seq_len"], pairs_per_row=s["seq_len"] // s["segment"] // 2,
                  flops_note="per token: the policy's train step (6N + attention) + the reference's "
                             "forward (2N + attention)",
                  **{f"dpo_{k}": v for k, v in dpo.DEFAULTS.items()})
    if not result["loss_finite"]:
        raise SectionFailed("dpo: the loss is not finite", result)
    return result


RUNNERS = {"env": section_env, "attention": section_attention, "bench": section_bench, "torch": section_torch,
           "plan": section_plan, "coh": section_coh, "dpo": section_dpo}


def run_section(name: str, smoke: bool, work: Path) -> int:
    """The child: one section, its outcome written to work/NAME.json."""
    ctx = Context(smoke, SMOKE if smoke else FULL, work)
    start = time.perf_counter()
    outcome: dict[str, Any]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = RUNNERS[name](ctx)
        outcome = {"status": "ok", "result": result}
    except Skip as e:
        outcome = {"status": "skipped", "reason": str(e)}
    except SectionFailed as e:
        outcome = {"status": "failed", "error": str(e), "result": e.result}
    except BaseException as e:  # noqa: BLE001 (everything goes into the JSON)
        traceback.print_exc()
        outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:4000],
                   "traceback": traceback.format_exc()[-4000:]}
    outcome["wall_s"] = time.perf_counter() - start
    outcome["avoided_modules_imported"] = sorted(m for m in AVOIDED if sys.modules.get(m) is not None)
    _write_json(work / f"{name}.json", outcome)
    return 0


# =============================================================================================
# The parent: one child per section, the JSON and the table


def _child_env(name: str, smoke: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if smoke:
        env.setdefault("JAX_PLATFORMS", "cpu")
    # No persistent compilation cache: on CPU with virtual devices, executables loaded from it
    # deadlocked in their collectives (XLA's rendezvous timeout), and little is shared anyway.
    # A section may take 95% of the accelerator's memory (JAX's default 75% is less than the 63.5 GiB
    # jaxalign plan gives the bench step on one 80 GB H100) ...
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    # ... and reserves it up front only in the sections that need most of it: beside PyTorch (torch)
    # or another section (attention, plan) it must not, and env needs none.
    if name not in ("bench", "coh", "dpo"):
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def _start_child(name: str, smoke: bool, work: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--work", str(work)]
    if smoke:
        cmd.append("--smoke")
    with open(work / f"{name}.log", "w") as out:
        out.write(f"===== section {name}: {' '.join(cmd)}\n")
        out.flush()
        # A process group of its own (not a session: what kills this run kills it too), so that a
        # timeout kills the child and anything it started.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_child_env(name, smoke),
                                preexec_fn=os.setpgrp)
    _CHILDREN.add(proc.pid)
    return proc


_CHILDREN: set[int] = set()  # process groups of the running sections


def _kill_children(signum: int | None = None, frame: Any = None) -> None:
    """Kills every running section (on SIGTERM / SIGINT of this process, and at exit)."""
    for pid in list(_CHILDREN):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _CHILDREN.discard(pid)
    if signum is not None:
        sys.exit(128 + signum)


def _wait_children(running: dict[str, tuple[subprocess.Popen, float, float]],
                   ) -> dict[str, tuple[int | None, float]]:
    """Waits for every child, killing one past its `started + timeout`; {name: (exit code or None
    if killed, seconds it ran)}."""
    done: dict[str, tuple[int | None, float]] = {}
    while len(done) < len(running):
        for name, (proc, started, timeout) in running.items():
            if name in done:
                continue
            code = proc.poll()
            now = time.perf_counter()
            if code is not None:
                done[name] = (code, now - started)
            elif now > started + timeout:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group
                proc.wait()
                done[name] = (None, now - started)
            if name in done:
                _CHILDREN.discard(proc.pid)
        time.sleep(0.1)
    return done


def _outcome(name: str, code: int | None, wall: float, timeout: float, work: Path,
             log: Any) -> dict[str, Any]:
    """A finished child's outcome: its JSON, or why there is none."""
    text = (work / f"{name}.log").read_text(errors="replace")
    log.write(f"\n{text}")
    log.flush()
    result_path = work / f"{name}.json"
    if result_path.exists():
        outcome = json.loads(result_path.read_text())
    elif code is None:
        outcome = {"status": "timeout", "error": f"no result after {timeout:.0f} s (killed)"}
    else:
        outcome = {"status": "failed",
                   "error": f"the section's process exited with code {code} and no result"}
    if outcome["status"] in ("failed", "timeout"):
        outcome["log_tail"] = text[-3000:]
    outcome["process_wall_s"] = wall
    outcome["timeout_s"] = timeout
    return outcome


def _fmt(x: Any, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g} {prefix}{unit}".rstrip()
    return f"{x:.{digits}g} {unit}".rstrip()


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, int | float) else f"{100 * x:.1f}%"


def _summary(name: str, r: dict[str, Any]) -> str:
    """One cell of figures per section (the JSON has the rest)."""
    if name == "env":
        cudnn = r.get("cudnn_version")
        return (f"{r['device_kind']} x{r['device_count']}; jax {r['jax_version']}, jaxlib "
                f"{r['jaxlib_version']}, cuDNN {cudnn if cudnn is not None else '-'}; {r['matmul_dtype']} "
                f"matmul {r['matmul_n']}^2: {_fmt(r['matmul_peak_flops'], 'FLOP/s')} "
                f"({_pct(r.get('matmul_vs_vendor'))} of the vendor's peak)")
    if name == "attention":
        cells = []
        for case, entry in r["cases"].items():
            parts = []
            for impl, v in entry.items():
                if impl == "auto_chooses":
                    continue
                if "skipped" in v:
                    parts.append(f"{impl} skipped ({v['skipped']})")
                elif "error" in v:
                    parts.append(f"{impl} ERROR")
                else:
                    parts.append(f"{impl} {v['max_rel_err']:.1e} {'ok' if v['pass'] else 'FAIL'} "
                                 f"{1e3 * v['fwd_bwd_s']:.1f} ms")
            cells.append(f"{case} (auto: {entry['auto_chooses']}): " + ", ".join(parts))
        return f"max rel. error vs xla float32 (tol {r['tolerance']}), fwd+bwd time: " + "; ".join(cells)
    if name == "bench":
        c = r["bench_config"]
        return (f"{c['preset']} {c['dtype']} {c['batch']} x {c['seq_len']}, {c['remat']}, "
                f"{c['attention_impl']}: train {_fmt(r['train_tokens_per_s'])} tok/s (MFU "
                f"{_pct(r['train_mfu'])}), forward {_fmt(r['forward_tokens_per_s'])} tok/s (MFU "
                f"{_pct(r['forward_mfu'])}), generate {_fmt(r['generate_tokens_per_s'])} tok/s (decode "
                f"step {_fmt(r['generate_decode_step_s'], 's')}), no cache "
                f"{_fmt(r['generate_nocache_tokens_per_s'])} tok/s")
    if name == "torch":
        return (f"torch {r.get('torch_version')} ({r.get('torch_attn_implementation')}, "
                f"{r['torch_batch']} rows): train {_fmt(r.get('torch_train_tokens_per_s'))} tok/s (MFU "
                f"{_pct(r.get('torch_train_mfu'))}), generate {_fmt(r.get('torch_generate_tokens_per_s'))} "
                f"tok/s; jaxalign/torch: train {_fmt(r.get('train_vs_torch'))}x, forward "
                f"{_fmt(r.get('forward_vs_torch'))}x, generate {_fmt(r.get('generate_vs_torch'))}x")
    if name == "plan":
        scale, unit = (2**30, "GiB") if r["total"] >= 2**30 else (2**20, "MiB")
        return (f"estimate {r['total'] / scale:.2f} {unit} vs XLA peak {r['xla']['peak'] / scale:.2f} {unit} "
                f"(x{r['estimate_over_xla_peak']:.3f}); largest batch here: {r['largest_batch']}")
    if name in ("coh", "dpo"):
        return (f"step {_fmt(r['step_s'], 's')}, {_fmt(r['tokens_per_s'])} tok/s, MFU {_pct(r['mfu'])} "
                f"(vendor peak: {_pct(r['mfu_vendor_peak'])}), loss {r['metrics']['loss']:.3f}")
    return ""


def write_table(report: dict[str, Any]) -> str:
    lines = [f"# gpu_check ({report['mode']}): {report.get('device_kind') or '?'}", "",
             f"{report['started']}, {report['wall_s']:.0f} s; JSON: gpu_check.json", "",
             "| section | status | s | figures |", "| --- | --- | --- | --- |"]
    for name, section in report["sections"].items():
        status = section["status"]
        if status == "ok":
            try:
                cell = _summary(name, section["result"])
            except (KeyError, TypeError, ValueError) as e:
                cell = f"(see JSON; summary failed: {type(e).__name__}: {e})"
        elif status == "skipped":
            cell = f"skipped: {section['reason']}"
        else:
            cell = section.get("error", "")
        cell = cell.replace("|", "/").replace("\n", " ")[:900]
        lines.append(f"| {name} | {status} | {section.get('process_wall_s', 0):.0f} | {cell} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="directory for gpu_check.json, gpu_check.md and gpu_check.log")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: a rehearsal of the full run")
    p.add_argument("--only", help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    p.add_argument("--budget", type=float, help=f"seconds for the whole run (default {DEFAULT_BUDGET}, "
                                                f"smoke {SMOKE_BUDGET}); a section gets at most what is left")
    p.add_argument("--timeout", type=float, help="cap on every section's timeout, seconds "
                                                 f"(default per section: {TIMEOUTS}; smoke {SMOKE_TIMEOUT})")
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # internal: the child
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.section:
        return run_section(args.section, args.smoke, Path(args.work))
    if not args.out:
        p.error("--out DIR is required")
    names = SECTIONS if not args.only else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        p.error(f"--only: unknown sections {unknown}; sections are {list(SECTIONS)}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (SMOKE_BUDGET if args.smoke else DEFAULT_BUDGET)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _kill_children)
    if importlib.util.find_spec("ml_collections") is None:
        _log("ml_collections is not installed: every section but env will fail (jaxalign.train imports "
             "it); carry its wheel (docs/performance.md#gpu-check)")
    start = time.perf_counter()
    report: dict[str, Any] = {
        "issue": 25, "mode": "smoke" if args.smoke else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_s": budget,
        "command": [Path(sys.executable).name, *sys.argv] if argv is None else ["gpu_check.py", *argv],
        "attention_tolerance": ATTENTION_TOL, "sections": {}, "wall_s": 0.0,
    }
    json_path, md_path = out / "gpu_check.json", out / "gpu_check.md"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp, open(out / "gpu_check.log", "w") as log:
        work = Path(tmp)
        for group in GROUPS:
            group = tuple(name for name in group if name in names)
            if not group:
                continue
            left = budget - (time.perf_counter() - start)
            running = {}
            for name in group:
                limit = min(SMOKE_TIMEOUT if args.smoke else TIMEOUTS[name], args.timeout or math.inf, left)
                if limit < 10:
                    report["sections"][name] = {
                        "status": "timeout", "error": f"not started: the --budget of {budget:.0f} s is spent"}
                    continue
                _log(f"[{name}] starting (timeout {limit:.0f} s)")
                running[name] = (_start_child(name, args.smoke, work), time.perf_counter(), limit)
            for name, (code, wall) in _wait_children(running).items():
                report["sections"][name] = _outcome(name, code, wall, running[name][2], work, log)
            for name in group:
                outcome = report["sections"][name]
                if name == "env" and outcome["status"] == "ok":
                    report["device_kind"] = outcome["result"]["device_kind"]
                why = outcome.get("error") or outcome.get("reason")
                why = f": {why}" if why else ""
                _log(f"[{name}] {outcome['status']} in {outcome.get('process_wall_s', 0):.0f} s{why}")
            report["wall_s"] = time.perf_counter() - start
            _write_json(json_path, report)  # after every group: a run killed later keeps these
    report["sections"] = {name: report["sections"][name] for name in SECTIONS if name in report["sections"]}
    failed = [n for n, s in report["sections"].items() if s["status"] in ("failed", "timeout")]
    report.update(failed=failed, ok=not failed, wall_s=time.perf_counter() - start)
    _write_json(json_path, report)
    table = write_table(report)
    md_path.write_text(table)
    print(table, flush=True)
    print(f"gpu_check: wrote {json_path} and {md_path}" + (f"; FAILED: {failed}" if failed else ""),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
