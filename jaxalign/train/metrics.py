"""Training metrics: `<workdir>/metrics.jsonl`, TensorBoard events, a tqdm progress bar and, when
`config.logging.wandb.project` is set, a Weights & Biases run.

metrics.jsonl holds one JSON object per logged step with at least `step` and `loss`. A resumed
run first drops the lines past the step it resumes from, so the file always reads as one
uninterrupted run.

In a bucket an append rewrites the whole object, and one object takes about one write a second, so
there lines are buffered and written every `BUCKET_FLUSH_SECONDS`, at each checkpoint (`flush`) and
at the end; a crash loses at most the lines after the last checkpoint, which the resumed run
writes again anyway. TensorBoard's event file is written in a local directory and copied to the
bucket at the same moments (tensorboardX's own gs:// writer uploads again from its finaliser, at
interpreter exit, with two minutes of retries when the bucket cannot be reached).

Weights & Biases (optional, ``pip install 'jaxalign[wandb]'``): every line of metrics.jsonl is
logged to W&B at the same step, by process 0 only, with the resolved run config attached. The
run's id is kept in ``<workdir>/wandb_run.json`` (`workdir.WANDB_RUN`), so a resumed run continues
the same W&B run (``resume="allow"``). W&B accepts only increasing steps and keeps what it was
sent: the steps a previous attempt already logged (up to ``logged_through`` in that file, which is
written at every checkpoint and at the end, or W&B's own step when its server tells) are not sent
again, and a warning says so; metrics.jsonl holds the rerun's values of those steps.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import statistics
import string
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import tqdm
from etils import epath

from jaxalign import config as config_lib
from jaxalign import paths
from jaxalign import workdir as workdir_lib
from jaxalign.models import ModelConfig

log = logging.getLogger(__name__)
BUCKET_FLUSH_SECONDS = 30.0

# Dense peak FLOP/s per chip for MFU (bf16 unless noted), from the vendors' data sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    """The accelerator's peak, or None on CPU (where a measured matmul stands in)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if device.device_kind.startswith(name):
            return flops
    return None


def progress_postfix(values: dict[str, Any]) -> dict[str, str]:
    """What the progress bar shows of a step's metrics: MFU in percent (metrics.jsonl keeps the fraction)."""
    shown = {k: f"{values[k]:.4g}" for k in ("loss", "lr", "tokens_per_s") if k in values}
    if "mfu" in values:
        shown["mfu"] = f"{100 * values['mfu']:.1f}%"
    return shown


WANDB_DEFAULTS = {"project": None, "entity": None, "name": None, "tags": (), "mode": "online"}
WANDB_MODES = ("online", "offline")
WANDB_INSTALL = "pip install 'jaxalign[wandb]'"


def wandb_config(logging_cfg: Any) -> dict[str, Any] | None:
    """The checked ``config.logging.wandb`` section with its defaults, or None when W&B is off (no
    section, or ``project`` unset). Unknown keys, a bad mode and a missing ``wandb`` package are
    errors naming the key, raised before a run writes anything."""
    if logging_cfg is None:
        return None
    config_lib.check_keys(logging_cfg, ("wandb",), "config.logging")
    section = logging_cfg.get("wandb")
    if section is None:
        return None
    config_lib.check_keys(section, tuple(WANDB_DEFAULTS), "config.logging.wandb")
    opts = {**WANDB_DEFAULTS, **{k: v for k, v in section.items()}}
    if not opts["project"]:
        return None
    if not isinstance(opts["project"], str):
        raise ValueError(f"config.logging.wandb.project={opts['project']!r} must be a string")
    if opts["mode"] not in WANDB_MODES:
        raise ValueError(f"config.logging.wandb.mode={opts['mode']!r}; choose one of {list(WANDB_MODES)}")
    tags = opts["tags"]
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"config.logging.wandb.tags={tags!r} must be a list of strings")
    opts["tags"] = list(tags)
    _import_wandb(opts["project"])
    return opts


def _import_wandb(project: str) -> Any:
    try:
        import wandb
    except ImportError:
        raise ImportError(f"config.logging.wandb.project={project!r} logs to Weights & Biases, which needs "
                          f"the wandb package: {WANDB_INSTALL}") from None
    return wandb


def _new_run_id() -> str:
    """A W&B run id as W&B makes them: 8 characters of a-z and 0-9."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class MetricsWriter:
    """Writes every logged step to JSONL, TensorBoard and (`wandb`, see `wandb_config`) Weights &
    Biases; only process 0 writes. `run_config`: the resolved config W&B attaches to the run."""

    def __init__(self, workdir: str | epath.PathLike, total_steps: int, start_step: int = 0,
                 wandb: dict[str, Any] | None = None, run_config: dict[str, Any] | None = None):
        self.path = paths.path(workdir) / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        self._pending: list[str] = []
        self._flushed = time.monotonic()
        self._buffered = paths.is_url(self.path)
        self.wandb: Any = None  # the W&B run (process 0, when configured)
        if not self.enabled:
            return
        _truncate_after(self.path, start_step)
        if wandb is not None:
            self._start_wandb(paths.path(workdir), wandb, run_config or {}, start_step)
        self.tb_dir = paths.path(workdir) / "tensorboard"
        self._tb_local = tempfile.TemporaryDirectory(prefix="jaxalign-tb-") if self._buffered else None
        self.tb = _summary_writer(self._tb_local.name if self._tb_local else self.tb_dir)
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                             dynamic_ncols=True)

    def advance(self, steps: int = 1) -> None:
        if self.enabled:
            self.bar.update(steps)

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        values = {f"{prefix}{k}": _plain(v) for k, v in metrics.items()}
        self._pending.append(json.dumps({"step": step, **values}) + "\n")
        if not self._buffered or time.monotonic() - self._flushed > BUCKET_FLUSH_SECONDS:
            self.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        if not prefix:
            self.bar.set_postfix(progress_postfix(values), refresh=False)
        if self.wandb is not None:
            self._log_wandb(step, values)

    def _start_wandb(self, workdir: epath.Path, opts: dict[str, Any], run_config: dict[str, Any],
                     start_step: int) -> None:
        """Starts (or resumes: the id in `workdir.WANDB_RUN`) the W&B run; records its id first."""
        wandb = _import_wandb(opts["project"])
        self._wandb_file = workdir / workdir_lib.WANDB_RUN
        saved = json.loads(self._wandb_file.read_text()) if self._wandb_file.exists() else {}
        run_id = saved.get("id") or _new_run_id()
        self._wandb_logged = int(saved.get("logged_through", -1))
        self._wandb_id = run_id
        self._write_wandb_file()  # before W&B starts: a crash now still resumes this id
        self.wandb = wandb.init(
            project=opts["project"], entity=opts["entity"], name=opts["name"], tags=opts["tags"],
            mode=opts["mode"], id=run_id, resume="allow", config=run_config, allow_val_change=True)
        # An online resume knows the run's next step from the server; offline, the file's record.
        self._wandb_floor = max(int(self.wandb.step or 0), self._wandb_logged + 1)
        if self._wandb_floor > start_step + 1:
            log.warning("W&B run %s already holds steps up to %d from an earlier attempt; this run resumes "
                        "at step %d and logs to W&B from step %d on (W&B keeps the first values; "
                        "metrics.jsonl has this run's)", run_id, self._wandb_floor - 1, start_step,
                        self._wandb_floor)

    def _log_wandb(self, step: int, values: dict[str, Any]) -> None:
        if step < self._wandb_floor:
            return
        self.wandb.log(values, step=step)
        self._wandb_logged = step

    def _write_wandb_file(self) -> None:
        record = {"id": self._wandb_id, "logged_through": self._wandb_logged}
        paths.write_atomic(self._wandb_file, json.dumps(record) + "\n")

    def flush(self) -> None:
        """Writes the buffered lines (a checkpoint was saved: they must outlive a crash)."""
        if self.enabled and self._pending:
            paths.append(self.path, "".join(self._pending).encode("utf-8"))
            self._pending.clear()
        if self.wandb is not None:
            self._write_wandb_file()
        if self.enabled and self._tb_local is not None:
            self.tb.flush()
            for event_file in epath.Path(self._tb_local.name).glob("events.*"):
                paths.write_atomic(self.tb_dir / event_file.name, event_file.read_bytes())
        self._flushed = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.flush()
            if self.wandb is not None:
                self.wandb.finish()
                self.wandb = None
            if self._tb_local is not None:
                self._tb_local.cleanup()
            self.bar.close()


def _plain(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _truncate_after(path: epath.Path, step: int) -> None:
    """Keeps the lines of steps up to `step` (a resumed run rewrites what follows). A torn last line
    (what a crash or a full disk leaves) is dropped with a warning; a bad line elsewhere is an error
    naming file and line, since lines before it could not have been written after it."""
    if not path.exists():
        return
    kept = [line for line, row in workdir_lib.metrics_lines(path) if row["step"] <= step]
    # Atomic: a crash here leaves the old file or the new one, never half of one.
    paths.write_atomic(path, "".join(line + "\n" for line in kept))


def _summary_writer(directory: str | epath.Path) -> Any:
    """tensorboardX's SummaryWriter. tensorboardX imports torch whenever it is installed, only to
    accept torch tensors (about 1.7 s of every start); the import is hidden from it unless torch is
    loaded already, so a run of jaxalign never pays for PyTorch."""
    import sys

    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter(str(directory))


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token (architecture.md): 6 N + 12 L H Dh S / 2 for a training step.

    N counts every weight except the input embedding table; the unembedding (lm_head, or the
    tied table) is counted once. The attention term is causal, so halved, as MaxText reports.
    With training=False it is the forward pass alone, a third: 2 N + 4 L H Dh S / 2.
    """
    n = cfg.num_params(include_embeddings=False) + cfg.vocab_size * cfg.hidden_size
    attention = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.dims_per_head * seq_len / 2
    total = 6 * n + attention
    return float(total if training else total / 3)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls after one warm-up; fn must block."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_flops(n: int, dtype: str, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul on the first device: 2 n^3 / the fastest of `repeats` runs (a peak:
    the median would count a moment the machine was busy elsewhere against it)."""
    device = jax.devices()[0]
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (jax.device_put(jax.random.normal(k, (n, n), dtype), device) for k in keys)
    matmul = jax.jit(jnp.matmul)
    # A small matmul on a GPU finishes in about a millisecond, so dispatch several back to back
    # and divide; on CPU one call is already long enough.
    inner = 1 if device.platform == "cpu" else 10

    def run() -> None:
        out = None
        for _ in range(inner):
            out = matmul(a, b)
        out.block_until_ready()

    run()  # warm-up: compiles
    times = []
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 2 * n**3 * inner / min(times)
