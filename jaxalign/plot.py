"""`jaxalign plot`: the curves of one or several runs' `metrics.jsonl`, drawn to a PNG.

    from jaxalign import plot
    plot.plot_runs(["workdirs/sft", "workdirs/coh"], "curves.png", metrics=["loss", "feedback/loss"])

One subplot per metric, one line per run (labelled by its workdir's name), x = step (or any other
numeric key). Without `metrics`, every key present in any run whose last name (after a stream
prefix such as `feedback/`) is one of `DEFAULT_METRICS` or ends in `loss` is drawn: losses,
accuracy, reward, kl, task_score, grad_norm, lr, mfu, tokens_per_s. Workdirs and the output may be
`gs://` URLs (`jaxalign.paths`). It only reads files: no JAX, no trainer.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from etils import epath

from jaxalign import paths
from jaxalign import workdir as workdir_lib

log = logging.getLogger(__name__)

METRICS_FILE = workdir_lib.METRICS
# The default subplots, in this order (a stream's `feedback/loss` follows `loss`).
DEFAULT_METRICS = ("loss", "accuracy", "reward", "kl", "task_score", "grad_norm", "lr", "mfu", "tokens_per_s")
_COLUMNS = 3  # subplots per row

Run = tuple[str, list[dict[str, Any]]]  # (label, the rows of metrics.jsonl)


def read_metrics(workdir: paths.PathLike) -> list[dict[str, Any]]:
    """The rows of `<workdir>/metrics.jsonl`, as the trainer reads them on resume: a torn last line
    (a crash or a full disk) is dropped with a warning; a bad line before others is an error naming
    file and line."""
    root = paths.path(workdir)
    if not root.exists():
        raise FileNotFoundError(f"{workdir}: no such workdir")
    if not root.is_dir():
        raise NotADirectoryError(f"{workdir}: not a directory (pass a train workdir, which holds "
                                 f"{METRICS_FILE})")
    file = root / METRICS_FILE
    if not file.exists():
        raise FileNotFoundError(f"{workdir} holds no {METRICS_FILE} (not a train workdir, or it has "
                                f"not logged a step yet)")
    rows = [row for _, row in workdir_lib.metrics_lines(file)]
    if not rows:
        log.warning("%s holds no metrics lines yet", file)
    return rows


def load_runs(workdirs: Sequence[paths.PathLike]) -> list[Run]:
    """Each workdir's label and rows. The label is the workdir's name, or as many of its last
    components as tell it apart from the others (`seed0/run`, `seed1/run`)."""
    if not workdirs:
        raise ValueError("no workdir to plot")
    return list(zip(_labels(workdirs), [read_metrics(w) for w in workdirs], strict=True))


def _labels(workdirs: Sequence[paths.PathLike]) -> list[str]:
    parts = [[p for p in str(paths.path(w)).rstrip("/").split("/") if p] for w in workdirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [os.fspath(w) for w in workdirs]  # the same workdir twice: label them as given


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_keys(runs: Sequence[Run]) -> list[str]:
    """Every key with a number in some row of some run, in order of first appearance."""
    keys: dict[str, None] = {}
    for _, rows in runs:
        for row in rows:
            keys.update((k, None) for k, v in row.items() if _is_number(v))
    return list(keys)


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """The metrics drawn when none are named: keys whose last name is in `DEFAULT_METRICS` or ends
    in `loss` (not bookkeeping: step, step_s, tokens, loss_tokens, data_fraction, ...), grouped
    in the order of `DEFAULT_METRICS`, the combined metric before its streams'."""
    def rank(key: str) -> tuple[int, int, str] | None:
        base = key.rsplit("/", 1)[-1]
        if base in DEFAULT_METRICS:
            group = DEFAULT_METRICS.index(base)
        elif base.endswith("loss"):
            group = 0  # another loss (a method's own term): beside the losses
        else:
            return None
        return group, "/" in key, key

    ranked = [(rank(k), k) for k in numeric_keys(runs)]
    return [k for r, k in sorted((r, k) for r, k in ranked if r is not None)]


def figure(runs: Sequence[Run], metrics: Sequence[str] | None = None, x: str = "step") -> Any:
    """The matplotlib Figure: one subplot per metric (its title the metric's key), one line per run.
    Unknown metric or x keys are errors listing the available ones."""
    import matplotlib

    matplotlib.use("Agg")  # no display; a no-op when Agg is already chosen
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    available = numeric_keys(runs)
    if x not in available:
        raise ValueError(f"--x {x!r} is in no run's {METRICS_FILE}; "
                         f"available: {', '.join(available) or 'none'}")
    metrics = list(metrics) if metrics is not None else default_metrics(runs)
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: not a number in any run's {METRICS_FILE}; "
                         f"available: {', '.join(k for k in available if k != x)}")
    if not metrics:
        raise ValueError(f"nothing to plot: no default metric in {METRICS_FILE} (available: "
                         f"{', '.join(available)}); name some with --metrics")
    columns = min(_COLUMNS, len(metrics))
    grid_rows = math.ceil(len(metrics) / columns)
    fig = Figure(figsize=(4.6 * columns, 3.2 * grid_rows + 0.5), dpi=100, layout="constrained")
    axes = fig.subplots(grid_rows, columns, squeeze=False).ravel()
    colours = matplotlib.colormaps["tab10"].colors
    handles = {}
    for ax, metric in zip(axes, metrics, strict=False):
        for index, (label, rows) in enumerate(runs):
            points = [(row[x], row[metric]) for row in rows
                      if _is_number(row.get(x)) and _is_number(row.get(metric))]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            (line,) = ax.plot(xs, ys, color=colours[index % len(colours)], label=label, linewidth=1.4,
                              marker="o" if len(points) == 1 else None, markersize=4)
            handles.setdefault(label, line)
        ax.set_title(metric)
        ax.set_xlabel(x)
        if x == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    ordered = [handles[label] for label, _ in runs if label in handles]
    fig.legend(handles=ordered, labels=[h.get_label() for h in ordered], loc="outside upper center",
               ncols=min(len(ordered), 4) or 1, frameon=False)
    return fig


def titles(fig: Any) -> list[str]:
    """The titles of a figure's visible subplots: the metrics it draws, in order."""
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def plot_runs(workdirs: Sequence[paths.PathLike], out: paths.PathLike, metrics: Sequence[str] | None = None,
              x: str = "step") -> epath.Path:
    """Draws the runs' metrics to the PNG `out` and returns its path. `out` is written atomically (a
    reader sees the old file or the new one) and must be a `*.png` file, not a directory, so it is
    never an input (a workdir or its metrics.jsonl); it may lie inside a workdir."""
    target = paths.path(out)
    if target.suffix.lower() != ".png" or target.is_dir():
        raise ValueError(f"--out {out}: name a .png file (not a directory, not a run's {METRICS_FILE})")
    fig = figure(load_runs(workdirs), metrics, x)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    paths.write_atomic(target, buffer.getvalue())
    return target
