"""Cold vs warm start of the CLI: the persistent compilation cache's effect.

    python experiments/bench_startup.py --repeats 3 [--out experiments/results/startup.md]

For each command, `repeats` cold runs (each with an empty cache directory) and `repeats` warm runs
(a cache the command filled once before) are timed from process start:
- train: `jaxalign train` of experiments/default.py on the tiny preset, until the first step's line
  lands in metrics.jsonl (time to the first train step; the process is then left to finish);
- generate: `jaxalign generate --preset tiny`, 8 new tokens, the whole process (time to the tokens).
Prints a Markdown table of medians; the warm/cold ratio is the goal's measure (< 0.25).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = ["train", "--config", str(HERE / "default.py"), "--config.model.preset=tiny",
         "--config.total_steps=2", "--config.log_every=1", "--config.checkpoint_every=2",
         "--config.num_samples=0", "--config.optimizer.warmup_steps=0"]
GENERATE = ["generate", "--preset", "tiny", "--prompt", "Sort ascending: 7 2 9 4", "--max-new-tokens", "8"]


def _command(args: list[str], cache: str) -> list[str]:
    return [sys.executable, "-m", "jaxalign.cli", *args, "--compilation-cache", cache]


def time_train(cache: str, workdir: Path) -> float:
    """Seconds from process start to the first line of metrics.jsonl."""
    start = time.perf_counter()
    proc = subprocess.Popen(_command([*TRAIN, "--workdir", str(workdir)], cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().strip()):
        if proc.poll() is not None:
            raise RuntimeError(f"train exited with {proc.returncode} before its first step")
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if proc.wait() != 0:
        raise RuntimeError(f"train exited with {proc.returncode}")
    return seconds


def time_generate(cache: str) -> float:
    start = time.perf_counter()
    subprocess.run(_command(GENERATE, cache), check=True, capture_output=True)
    return time.perf_counter() - start


def measure(repeats: int, root: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in ("train", "generate"):
        def run(cache: str, tag: str, i: int, name: str = name) -> float:
            if name == "train":
                return time_train(cache, root / f"{name}-{tag}-{i}")
            return time_generate(cache)

        cold = [run(str(root / f"cold-{name}-{i}"), "cold", i) for i in range(repeats)]
        warm_cache = str(root / f"warm-{name}")
        run(warm_cache, "fill", 0)
        warm = [run(warm_cache, "warm", i) for i in range(repeats)]
        out[name] = {"cold": statistics.median(cold), "warm": statistics.median(warm)}
    return out


def table(results: dict[str, dict[str, float]], repeats: int) -> str:
    rows = ["| command (tiny preset, CPU) | cold (s) | warm (s) | warm / cold |", "| --- | --- | --- | --- |"]
    what = {"train": "`jaxalign train`: to the first train step", "generate": "`jaxalign generate`: 8 tokens"}
    for name, r in results.items():
        rows.append(f"| {what[name]} | {r['cold']:.1f} | {r['warm']:.1f} | {r['warm'] / r['cold']:.2f} |")
    return "\n".join(rows) + f"\n\nMedians of {repeats} runs each; cpu_count={os.cpu_count()}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        text = table(measure(args.repeats, Path(root)), args.repeats)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
