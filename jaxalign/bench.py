"""`jaxalign bench`: training, forward and generation speed, next to the same model in PyTorch.

Measures, in one process on the devices present, a matmul peak, the trainer's train step (tokens/s
and MFU against that peak), the forward pass, generation with and without the KV cache (prefill and
decode apart) and the input pipeline, then the same model in Hugging Face transformers on PyTorch,
so that speed is reported as ratios a reader can check; every timing is a median after a warm-up.
`jaxalign bench --json` prints one object.

Details: docs/performance.md#how-each-figure-is-measured
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.config import parse_value
from jaxalign.models import ModelConfig, Transformer
from jaxalign.train.metrics import flops_per_token, matmul_peak_flops, median_time

REQUIRED_KEYS = (
    "matmul_peak_flops", "train_tokens_per_s", "train_mfu", "torch_train_tokens_per_s",
    "generate_tokens_per_s", "generate_nocache_tokens_per_s", "torch_generate_tokens_per_s",
    "forward_tokens_per_s", "torch_forward_tokens_per_s", "device_kind", "bench_config",
    "jax_version", "torch_version",
)

# The documented bench configs, per platform (any flag overrides its part).
# CPU: the embedded default's "small" preset; each phase takes a few seconds on 2 cores. The layer
# scan is unrolled (model.scan_unroll), the fastest CPU setting, with the same parameters.
# Accelerators: the Llama-3.2-1B shape at 2048 tokens in bfloat16, the GPU target; remat
# save_dots and attention "auto" (cuDNN flash attention on GPU, splash on TPU) fit 8 x 2048 tokens
# in 80 GB (`jaxalign plan`: 63.5 GB).
_DEFAULTS = {
    "cpu": dict(preset="small", batch=8, seq_len=256, gen_batch=8, gen_prompt_len=64, gen_new_tokens=32,
                dtype="float32", matmul_n=2048, model={"scan_unroll": 4}),
    "accel": dict(preset="1b", batch=8, seq_len=2048, gen_batch=16, gen_prompt_len=128,
                  gen_new_tokens=128, dtype="bfloat16", matmul_n=8192,
                  model={"remat": "save_dots", "attention_impl": "auto"}),
}


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# JAX: train step, forward, generation


def _lm_batch(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The trainer's batch layout for next-token prediction on `tokens` [batch, seq + 1]."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions = np.broadcast_to(np.arange(inputs.shape[1], dtype=np.int32), inputs.shape)
    return {"inputs": inputs, "targets": targets, "weights": np.ones(inputs.shape, np.float32),
            "segment_ids": np.ones(inputs.shape, np.int32), "positions": positions.copy()}


def _train_setup(cfg: ModelConfig, mesh: jax.sharding.Mesh, microbatches: int, lora: Any = None):
    """The trainer's own step and state: AdamW with clipping and schedule, lm.loss, donated state;
    with `lora` (a jaxalign.lora.LoraConfig) the adapters' state on the seed's base."""
    from jaxalign import lora as lora_lib
    from jaxalign.train import optim
    from jaxalign.train import state as state_lib
    from jaxalign.train import step as step_lib

    opt_cfg = optim.default_optimizer_config()
    opt_cfg.total_steps = 1000
    tx, schedule = optim.make_optimizer(opt_cfg)
    base = None if lora is None else lora_lib.prepare_base(models.init_params(cfg, mesh, 0), cfg, lora, mesh)
    step = step_lib.make_train_step(cfg, tx, mesh, microbatches=microbatches, schedule=schedule,
                                    lora=lora, base_params=base)
    return step, state_lib.init_train_state(cfg, tx, mesh, seed=0, lora=lora)


def bench_train(cfg: ModelConfig, mesh: jax.sharding.Mesh, tokens: np.ndarray, steps: int,
                microbatches: int = 1, lora: Any = None):
    """Seconds per step of jaxalign.train.step (the step every objective trains with) on `tokens`
    [batch, seq + 1], the batch already on the devices; returns (seconds, loss, state). With
    `lora`, the LoRA step (the state's params are then the adapters)."""
    train_step, state = _train_setup(cfg, mesh, microbatches, lora)
    rows = _lm_batch(tokens)
    (shardings,) = train_step.batch_shardings(rows).values()  # the single stream's
    batch = jax.device_put(rows, shardings)
    box = {"state": state}

    def run() -> None:
        box["state"], box["metrics"] = train_step(box["state"], batch)
        jax.block_until_ready(box["metrics"])

    seconds = median_time(run, steps)
    return seconds, float(box["metrics"]["loss"]), box["state"]


def bench_input_pipeline(cfg: ModelConfig, mesh: jax.sharding.Mesh, batch: int, seq_len: int,
                         steps: int) -> dict[str, float]:
    """The real input pipeline feeding the train step as the train loop does.

    Data: the embedded default's bundled sort task, tokenized and packed by jaxalign.data.pipeline
    (the model takes the tokenizer's vocabulary, as in training). Measured: the step on one batch
    already on the devices; the loop ``batch = next(batches); state = step(state, batch)``, whose
    next() overlaps the previous step's compute; the time spent inside next() as a fraction of the
    loop, and the loop's extra time over the pre-placed step as a fraction of the loop.
    """
    import tempfile

    from jaxalign.data import pipeline, sources
    from jaxalign.objectives import registry

    with tempfile.TemporaryDirectory() as workdir:
        data_cfg = sources.default_data_config()
        data_cfg.num_train = 1000
        data = sources.build(data_cfg, Path(workdir), seed=0)
    objective = registry.make(ml_collections.ConfigDict({"name": "sft"}), data.tokenizer)
    batches = pipeline.make_batches(objective.source(data.train), seq_len=seq_len, batch_size=batch,
                                    seed=0, fields=objective.fields)
    cfg = cfg.replace(vocab_size=data.tokenizer.vocab_size)
    train_step, state = _train_setup(cfg, mesh, 1)
    rows = next(batches)
    (shardings,) = train_step.batch_shardings(rows).values()
    placed = jax.device_put(rows, shardings)
    box = {"state": state}

    def fixed() -> None:
        box["state"], metrics = train_step(box["state"], placed)
        jax.block_until_ready(metrics)

    step_s = median_time(fixed, steps)
    state, wait = box["state"], 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        rows = next(batches)
        wait += time.perf_counter() - t0
        state, metrics = train_step(state, rows)
    jax.block_until_ready(metrics)
    loop_s = (time.perf_counter() - start) / steps
    return {"input_step_s": step_s, "input_loop_step_s": loop_s,
            "input_wait_fraction": wait / steps / loop_s,
            "input_overhead_fraction": max(0.0, (loop_s - step_s) / loop_s)}


def bench_forward(cfg: ModelConfig, mesh: jax.sharding.Mesh, params: Any, tokens: np.ndarray,
                  steps: int) -> float:
    """Median seconds of one jitted forward pass (float32 logits) over `tokens` [batch, seq]."""
    token_sh = mesh_lib.logical_sharding(("batch", "length"), tokens.shape, mesh)
    forward = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t),
                      in_shardings=(models.param_shardings(cfg, mesh), token_sh))
    with mesh_lib.use(mesh):
        batch = jax.device_put(tokens, token_sh)
        return median_time(lambda: forward(params, batch).block_until_ready(), steps)


def bench_generate(cfg: ModelConfig, mesh: jax.sharding.Mesh, params: Any, prompts: list[list[int]],
                   new_tokens: int, steps: int, use_cache: bool) -> float:
    """Median seconds of one greedy generate call producing `new_tokens` for every prompt."""
    from jaxalign import sample  # written alongside; imported late so the FLOPs helper stands alone

    def run() -> None:
        out = sample.generate(params, cfg, prompts, mesh=mesh, max_new_tokens=new_tokens,
                              temperature=0.0, eos_id=-1, use_cache=use_cache)
        lengths = {len(row) for row in out}
        if lengths != {new_tokens}:
            raise RuntimeError(f"generate returned rows of lengths {sorted(lengths)}, "
                               f"expected all {new_tokens} (eos_id=-1 must never stop a row)")

    return median_time(run, steps)


# ---------------------------------------------------------------------------------------------
# PyTorch / Hugging Face


def _hf_config(cfg: ModelConfig):
    """The transformers config of the same model, through the exporter's own mapping."""
    import transformers

    from jaxalign.hf import config_to_hf

    hf_cfg = dict(config_to_hf(cfg))  # a config.json dict
    return transformers.AutoConfig.for_model(hf_cfg.pop("model_type"), **hf_cfg)


def bench_torch(cfg: ModelConfig, tokens: np.ndarray, prompts: np.ndarray, new_tokens: int,
                steps: int, bf16: bool, notes: list[str]) -> dict[str, float | None]:
    """Train step, forward and generate times of the same model in transformers on PyTorch."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and jax.devices()[0].platform == "gpu" else "cpu"

    # Same mixed precision as the JAX side: float32 weights, bfloat16 matmuls on accelerators.
    def autocast() -> contextlib.AbstractContextManager:
        if bf16 and device == "cuda":
            return torch.autocast(device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    model = transformers.AutoModelForCausalLM.from_config(_hf_config(cfg)).float().to(device)
    model.generation_config.eos_token_id = None  # every row runs the full length
    model.generation_config.pad_token_id = 0

    def timed(fn: Callable[[], Any]) -> float:
        def run() -> None:
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
        return median_time(run, steps)

    batch = torch.as_tensor(tokens, dtype=torch.long, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def train_step() -> None:
        with autocast():
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    out: dict[str, float | None] = {"torch_train_step_s": timed(train_step)}
    model.eval()

    def forward() -> None:
        with torch.no_grad(), autocast():
            _ = model(input_ids=batch[:, :-1]).logits

    out["torch_forward_s"] = timed(forward)

    prompt_ids = torch.as_tensor(prompts, dtype=torch.long, device=device)
    mask = torch.ones_like(prompt_ids)

    def generate(n: int) -> None:
        with torch.no_grad(), autocast():
            result = model.generate(input_ids=prompt_ids, attention_mask=mask, max_new_tokens=n,
                                    do_sample=False, use_cache=True)
        if result.shape[1] != prompt_ids.shape[1] + n:
            raise RuntimeError(f"torch generate stopped early: {result.shape[1] - prompt_ids.shape[1]} "
                               f"of {n} new tokens")

    out["torch_generate_s"] = timed(lambda: generate(new_tokens))
    out["torch_generate_prefill_s"] = timed(lambda: generate(1)) if new_tokens > 1 else None
    return out


# ---------------------------------------------------------------------------------------------
# The run


class _OldName(argparse.Action):
    """A flag's former name: still taken, hidden from --help, with a one-line note on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        _log(f"note: {option_string} is now {self.new}")
        setattr(namespace, self.dest, values)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxalign bench", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--preset",
                   help="model preset (jaxalign.models.PRESETS); default small on CPU, 1b elsewhere")
    # The former name of --preset: every other command's --config is a config file.
    p.add_argument("--config", dest="preset", action=_OldName, new="--preset")
    p.add_argument("--batch", type=int, help="train/forward batch (default 8)")
    p.add_argument("--seq-len", type=int, help="train/forward tokens per row (256 CPU, 2048 GPU)")
    p.add_argument("--steps", type=int, default=10, help="timed repeats per phase (median)")
    p.add_argument("--mesh", default="dp:1,fsdp:-1,tp:1", help="device mesh spec")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="compute dtype (default float32 on CPU, bfloat16 on accelerators)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--no-pipeline", action="store_true", help="skip the input-pipeline phase")
    p.add_argument("--microbatches", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--lora-rank", type=int, help="also time a LoRA train step of this rank on the same "
                   "model and batch (every attention and MLP projection)")
    p.add_argument("--lora-base-dtype", default="float32", choices=["float32", "bfloat16", "int8", "int4"],
                   help="the LoRA step's frozen base (int8, int4: QLoRA)")
    p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="a ModelConfig override, e.g. --model remat=full --model attention_impl=auto")
    p.add_argument("--gen-batch", type=int, help="generation batch (8 CPU, 16 GPU)")
    p.add_argument("--gen-prompt-len", type=int, help="prompt tokens per row (64 CPU, 128 GPU)")
    p.add_argument("--gen-new-tokens", type=int, help="new tokens per row (32 CPU, 128 GPU)")
    return p


def _model_overrides(items: Sequence[str]) -> dict[str, Any]:
    """--model KEY=VALUE flags as ModelConfig overrides (values parsed as in config overrides)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bench: --model {item!r} is not KEY=VALUE")
        out[key] = parse_value(raw)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What every phase reads: the resolved sizes, the model, the mesh and the random inputs."""

    args: argparse.Namespace
    platform: str
    pick: dict[str, Any]
    cfg: ModelConfig
    mesh: jax.sharding.Mesh
    tokens: np.ndarray  # [batch, seq_len + 1]
    prompts: np.ndarray  # [gen_batch, gen_prompt_len]

    @property
    def matmul_dtype(self) -> str:
        return "float32" if self.pick["dtype"] == "float32" else "bfloat16"


def _setup(args: argparse.Namespace) -> _Setup:
    """Flags over the platform's documented defaults, checked; the model; random token ids."""
    platform = jax.devices()[0].platform
    defaults = _DEFAULTS["cpu" if platform == "cpu" else "accel"]
    pick = {k: getattr(args, k, None) if getattr(args, k, None) is not None else v
            for k, v in defaults.items() if k != "model"}
    for name, value in [("batch", pick["batch"]), ("seq-len", pick["seq_len"]), ("steps", args.steps),
                        ("gen-batch", pick["gen_batch"]), ("gen-prompt-len", pick["gen_prompt_len"]),
                        ("gen-new-tokens", pick["gen_new_tokens"])]:
        if value < 1:
            raise ValueError(f"bench: --{name} must be positive, got {value}")
    cfg = models.get_preset(pick["preset"], **{"dtype": pick["dtype"], **defaults["model"],
                                               **_model_overrides(args.model)})
    rng = np.random.default_rng(0)
    # Ids from 3 up avoid pad/bos/eos, so nothing special happens to any token.
    ids = lambda *shape: rng.integers(3, cfg.vocab_size, size=shape, dtype=np.int32)  # noqa: E731
    tokens = ids(pick["batch"], pick["seq_len"] + 1)
    prompts = ids(pick["gen_batch"], pick["gen_prompt_len"])
    return _Setup(args, platform, pick, cfg, mesh_lib.make_mesh(args.mesh), tokens, prompts)


def _jax_phases(s: _Setup) -> dict[str, Any]:
    """The train step, the forward pass and generation (with and without the KV cache)."""
    steps, new_tokens = s.args.steps, s.pick["gen_new_tokens"]
    _log(f"train step: batch {s.pick['batch']} x {s.pick['seq_len']}")
    train_s, loss, state = bench_train(s.cfg, s.mesh, s.tokens, steps, s.args.microbatches)
    params = state.params
    del state
    _log("forward")
    forward_s = bench_forward(s.cfg, s.mesh, params, s.tokens[:, :-1], steps)
    _log(f"generate: {s.pick['gen_batch']} prompts x {s.pick['gen_prompt_len']} tokens, {new_tokens} new")
    prompt_list = s.prompts.tolist()
    gen_s = bench_generate(s.cfg, s.mesh, params, prompt_list, new_tokens, steps, use_cache=True)
    prefill_s = (bench_generate(s.cfg, s.mesh, params, prompt_list, 1, steps, use_cache=True)
                 if new_tokens > 1 else None)
    _log("generate without KV cache")
    nocache_s = bench_generate(s.cfg, s.mesh, params, prompt_list, new_tokens, steps, use_cache=False)
    out = {"train_step_s": train_s, "train_loss": loss, "forward_s": forward_s, "generate_s": gen_s,
           "generate_prefill_s": prefill_s, "generate_nocache_s": nocache_s}
    if getattr(s.args, "lora_rank", None):
        from jaxalign import lora as lora_lib

        lcfg = lora_lib.from_config({"rank": s.args.lora_rank, "alpha": 2.0 * s.args.lora_rank,
                                     "base_dtype": s.args.lora_base_dtype})
        _log(f"LoRA train step: rank {s.args.lora_rank}, {s.args.lora_base_dtype} base")
        lora_s, lora_loss, _ = bench_train(s.cfg, s.mesh, s.tokens, steps, s.args.microbatches, lora=lcfg)
        out.update(lora_train_step_s=lora_s, lora_train_loss=lora_loss)
    return out


def _pipeline_phase(s: _Setup, notes: list[str]) -> dict[str, Any]:
    """The train step fed by the real input pipeline (skipped with --no-pipeline)."""
    if s.args.no_pipeline:
        notes.append("input pipeline skipped: --no-pipeline")
        return dict.fromkeys(["input_step_s", "input_loop_step_s", "input_wait_fraction",
                              "input_overhead_fraction"])
    _log("train step fed by the input pipeline")
    return bench_input_pipeline(s.cfg, s.mesh, s.pick["batch"], s.pick["seq_len"], s.args.steps)


def _torch_phase(s: _Setup, notes: list[str]) -> dict[str, Any]:
    """The same work in PyTorch/transformers, when installed (a failure is noted, not fatal)."""
    out: dict[str, Any] = dict.fromkeys(["torch_train_step_s", "torch_forward_s", "torch_generate_s",
                                         "torch_generate_prefill_s", "torch_version", "transformers_version"])
    if s.args.no_torch:
        notes.append("torch skipped: --no-torch")
        return out
    try:
        import torch
        import transformers
    except ImportError as e:
        notes.append(f"torch skipped: {e}")
        return out
    out.update(torch_version=torch.__version__, transformers_version=transformers.__version__)
    _log(f"torch {torch.__version__} / transformers {transformers.__version__}")
    try:
        out.update(bench_torch(s.cfg, s.tokens, s.prompts, s.pick["gen_new_tokens"], s.args.steps,
                               bf16=s.pick["dtype"] == "bfloat16", notes=notes))
    except RuntimeError as e:  # e.g. CUDA out of memory: the jaxalign figures still stand
        notes.append(f"torch failed: {type(e).__name__}: {str(e).splitlines()[0]}")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every phase and returns the flat result dict (see REQUIRED_KEYS)."""
    start = time.perf_counter()
    # Other work on the host skews every timing; the 1-minute load goes into the result as a hint
    # (it also counts work that just finished, such as a previous bench).
    load_start = os.getloadavg()[0]
    s = _setup(args)
    notes: list[str] = []
    _log(f"{s.platform} x{s.mesh.devices.size}, preset {s.pick['preset']} ({s.cfg.num_params():,} params), "
         f"matmul {s.pick['matmul_n']}^2 {s.matmul_dtype}")
    peak_start = matmul_peak_flops(s.pick["matmul_n"], s.matmul_dtype)
    timings = {**_jax_phases(s), **_pipeline_phase(s, notes), **_torch_phase(s, notes)}
    _log("matmul peak, again")
    peak_end = matmul_peak_flops(s.pick["matmul_n"], s.matmul_dtype)
    peak = max(peak_start, peak_end)
    if min(peak_start, peak_end) < 0.8 * peak:
        notes.append(f"matmul peak changed during the run ({peak_start / 1e9:.1f} -> "
                     f"{peak_end / 1e9:.1f} GFLOP/s): the machine was busy, timings are noisy")
    result = _results(s, timings, (peak_start, peak_end), notes)
    return {**result, "load_avg_start": load_start, "bench_wall_s": time.perf_counter() - start}


def _bench_config(s: _Setup, train_flops: float, forward_flops: float) -> dict[str, Any]:
    """What was measured: sizes, model execution options and the mesh."""
    cfg = s.cfg
    return {
        "preset": s.pick["preset"], "batch": s.pick["batch"], "seq_len": s.pick["seq_len"],
        "dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "mesh": s.args.mesh,
        "mesh_shape": dict(s.mesh.shape), "steps": s.args.steps, "microbatches": s.args.microbatches,
        "remat": cfg.remat, "scan_layers": cfg.scan_layers, "attention_impl": cfg.attention_impl,
        "gen_batch": s.pick["gen_batch"], "gen_prompt_len": s.pick["gen_prompt_len"],
        "gen_new_tokens": s.pick["gen_new_tokens"], "num_params": cfg.num_params(),
        "flops_per_token_train": train_flops, "flops_per_token_forward": forward_flops,
    }


def _results(s: _Setup, t: dict[str, Any], peaks: tuple[float, float], notes: list[str]) -> dict[str, Any]:
    """The flat result dict: throughputs, MFU and ratios to PyTorch from the phases' timings."""
    batch, seq_len = s.pick["batch"], s.pick["seq_len"]
    gen_batch, new_tokens = s.pick["gen_batch"], s.pick["gen_new_tokens"]
    cfg, num_devices = s.cfg, s.mesh.devices.size
    peak = max(peaks)
    # Virtual CPU devices share the host's cores; real accelerators each bring their own peak.
    peak_total = peak * (1 if s.platform == "cpu" else num_devices)
    train_flops = flops_per_token(cfg, seq_len)
    forward_flops = flops_per_token(cfg, seq_len, training=False)

    def per_s(tokens_per_call: int, seconds: float | None) -> float | None:
        return None if seconds is None else tokens_per_call / seconds

    def decode_step(total: float | None, prefill: float | None) -> float | None:
        return None if total is None or prefill is None else (total - prefill) / (new_tokens - 1)

    train_tps = batch * seq_len / t["train_step_s"]
    forward_tps = batch * seq_len / t["forward_s"]
    gen_tps = gen_batch * new_tokens / t["generate_s"]
    torch_train_tps = per_s(batch * seq_len, t["torch_train_step_s"])
    torch_forward_tps = per_s(batch * seq_len, t["torch_forward_s"])
    torch_gen_tps = per_s(gen_batch * new_tokens, t["torch_generate_s"])
    decode_s = decode_step(t["generate_s"], t["generate_prefill_s"])
    torch_decode_s = decode_step(t["torch_generate_s"], t["torch_generate_prefill_s"])
    decode_steps = {"generate_decode_step_s": decode_s, "torch_generate_decode_step_s": torch_decode_s}
    for name, value in decode_steps.items():
        if value is not None and value <= 0:
            notes.append(f"{name} = {value:.2e} <= 0: the prefill alone timed slower than the whole "
                         "call (a busy machine, or too few --gen-new-tokens to tell them apart)")
    mfu = lambda flops, tps: None if tps is None else flops * tps / peak_total  # noqa: E731
    return {
        "device_kind": jax.devices()[0].device_kind,
        "platform": s.platform,
        "num_devices": num_devices,
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "torch_version": t["torch_version"],
        "transformers_version": t["transformers_version"],
        "bench_config": _bench_config(s, train_flops, forward_flops),
        "matmul_peak_flops": peak,
        "matmul_peak_flops_start": peaks[0],
        "matmul_peak_flops_end": peaks[1],
        "matmul_size": s.pick["matmul_n"],
        "matmul_dtype": s.matmul_dtype,
        "peak_flops_total": peak_total,
        "train_step_s": t["train_step_s"],
        "train_tokens_per_s": train_tps,
        "train_mfu": mfu(train_flops, train_tps),
        "train_loss": t["train_loss"],
        **({"lora_train_step_s": t["lora_train_step_s"], "lora_train_loss": t["lora_train_loss"],
            "lora_train_tokens_per_s": batch * seq_len / t["lora_train_step_s"],
            "lora_vs_full_train": t["train_step_s"] / t["lora_train_step_s"],
            "lora": {"rank": s.args.lora_rank, "base_dtype": s.args.lora_base_dtype}}
           if "lora_train_step_s" in t else {}),
        "forward_s": t["forward_s"],
        "forward_tokens_per_s": forward_tps,
        "forward_mfu": mfu(forward_flops, forward_tps),
        "generate_s": t["generate_s"],
        "generate_tokens_per_s": gen_tps,
        "generate_prefill_s": t["generate_prefill_s"],
        "generate_decode_step_s": decode_s,
        "generate_decode_tokens_per_s": per_s(gen_batch, decode_s),
        "generate_nocache_s": t["generate_nocache_s"],
        "generate_nocache_tokens_per_s": gen_batch * new_tokens / t["generate_nocache_s"],
        "generate_cache_speedup": t["generate_nocache_s"] / t["generate_s"],
        "torch_train_step_s": t["torch_train_step_s"],
        "torch_train_tokens_per_s": torch_train_tps,
        "torch_train_mfu": mfu(train_flops, torch_train_tps),
        "torch_forward_s": t["torch_forward_s"],
        "torch_forward_tokens_per_s": torch_forward_tps,
        "torch_forward_mfu": mfu(forward_flops, torch_forward_tps),
        "torch_generate_s": t["torch_generate_s"],
        "torch_generate_tokens_per_s": torch_gen_tps,
        "torch_generate_prefill_s": t["torch_generate_prefill_s"],
        "torch_generate_decode_step_s": torch_decode_s,
        "torch_generate_decode_tokens_per_s": per_s(gen_batch, torch_decode_s),
        "train_vs_torch": _ratio(train_tps, torch_train_tps),
        "forward_vs_torch": _ratio(forward_tps, torch_forward_tps),
        "generate_vs_torch": _ratio(gen_tps, torch_gen_tps),
        **{k: t[k] for k in ("input_step_s", "input_loop_step_s", "input_wait_fraction",
                             "input_overhead_fraction")},
        "notes": notes,
    }


def format_table(r: dict[str, Any]) -> str:
    """A human-readable summary of run()'s result."""
    def num(x: float | None, unit: str = "") -> str:
        if x is None:
            return "-"
        for scale, prefix in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]:
            if abs(x) >= scale:
                return f"{x / scale:.2f} {prefix}{unit}"
        return f"{x:.3g} {unit}".rstrip()

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    c = r["bench_config"]
    rows = [
        ("train tokens/s", num(r["train_tokens_per_s"]), num(r["torch_train_tokens_per_s"]),
         r["train_vs_torch"]),
        ("train MFU", pct(r["train_mfu"]), pct(r["torch_train_mfu"]), None),
        ("forward tokens/s", num(r["forward_tokens_per_s"]), num(r["torch_forward_tokens_per_s"]),
         r["forward_vs_torch"]),
        ("forward MFU", pct(r["forward_mfu"]), pct(r["torch_forward_mfu"]), None),
        ("generate tokens/s (KV cache)", num(r["generate_tokens_per_s"]),
         num(r["torch_generate_tokens_per_s"]), r["generate_vs_torch"]),
        ("generate tokens/s (no cache)", num(r["generate_nocache_tokens_per_s"]), "-", None),
        ("prefill s", num(r["generate_prefill_s"], "s"), num(r["torch_generate_prefill_s"], "s"), None),
        ("decode s/step", num(r["generate_decode_step_s"], "s"),
         num(r["torch_generate_decode_step_s"], "s"), None),
    ]
    lines = [
        f"jaxalign bench: {r['device_kind']} x{r['num_devices']} ({r['platform']}), "
        f"jax {r['jax_version']}, torch {r['torch_version'] or '-'}",
        f"model {c['preset']} ({c['num_params']:,} params, {c['dtype']}), mesh {c['mesh']}; "
        f"train/forward {c['batch']} x {c['seq_len']}; generate {c['gen_batch']} x "
        f"({c['gen_prompt_len']} + {c['gen_new_tokens']}); median of {c['steps']}",
        f"matmul peak {num(r['matmul_peak_flops'], 'FLOP/s')} ({r['matmul_size']}^2 "
        f"{r['matmul_dtype']}); train step {r['train_step_s']:.3f} s"
        + (f"; LoRA (rank {r['lora']['rank']}, {r['lora']['base_dtype']} base) step "
           f"{r['lora_train_step_s']:.3f} s ({r['lora_vs_full_train']:.2f}x the full step's speed)"
           if "lora_train_step_s" in r else ""),
        "",
        f"{'':30} {'jaxalign':>14} {'torch':>14} {'jax/torch':>10}",
    ]
    for name, jax_value, torch_value, ratio in rows:
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"{name:30} {jax_value:>14} {torch_value:>14} {ratio_text:>10}")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`jaxalign bench`: prints a table, or with --json exactly one JSON object on stdout."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    # On a GPU JAX would otherwise reserve 75% of its memory at start-up, leaving PyTorch, measured in
    # the same process, too little. Only effective before JAX first touches its backend.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # Anything a library prints while measuring goes to stderr, so --json output stays parseable.
    with contextlib.redirect_stdout(sys.stderr):
        result = run(args)
    print(json.dumps(result, indent=2) if args.json else format_table(result), flush=True)
    return 0
