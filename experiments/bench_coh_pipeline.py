"""Is the Chain of Hindsight input pipeline fast enough to keep the train step busy?

    python experiments/bench_coh_pipeline.py [--task harmless] [--preset small] [--seq-len 128]

Measures, in one process, examples per second of
  pipeline   records -> CoH sequences (tokenized, all four variants) -> packed rows -> batches,
             the trainer's own `make_batches` with its read threads (no model);
  train      the jitted train step on those batches (steady state, after compilation);
and prints both as JSON. The pipeline must be the faster one by a wide margin: its work runs on a
thread while the step runs, so only a pipeline slower than the step would cost time.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.data import pipeline, synthetic
from jaxalign.data.tokenizer import train_sentencepiece
from jaxalign.objectives import registry
from jaxalign.train import optim
from jaxalign.train import state as state_lib
from jaxalign.train import step as step_lib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="harmless", choices=sorted(synthetic.TASKS))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=200, help="batches timed through the pipeline")
    parser.add_argument("--steps", type=int, default=10, help="train steps timed")
    args = parser.parse_args()

    task = synthetic.get_task(args.task)
    records = synthetic.to_records(synthetic.make_split(task, "train", 4000, seed=0))
    tokenizer = train_sentencepiece(task.corpus(0, 2000), vocab_size=384)
    objective = registry.make(registry.default_config("coh"), tokenizer)

    def batches(prefetch: int):
        return pipeline.make_batches(objective.source(records), seq_len=args.seq_len,
                                     batch_size=args.batch_size, seed=0, prefetch=prefetch)

    it = batches(prefetch=0)
    next(it)  # thread start-up
    segments, t0 = 0, time.perf_counter()
    for _ in range(args.batches):
        segments += int(np.count_nonzero(np.diff(next(it)["segment_ids"], axis=1, prepend=0) > 0))
    pipeline_s = time.perf_counter() - t0

    mesh = mesh_lib.make_mesh("dp:1,fsdp:-1,tp:1")
    cfg = models.get_preset(args.preset, vocab_size=tokenizer.vocab_size)
    opt = optim.default_optimizer_config()
    opt.total_steps = 1000
    tx, _ = optim.make_optimizer(opt)
    state = state_lib.init_train_state(cfg, tx, mesh, seed=0)
    train = step_lib.make_train_step(cfg, tx, mesh, loss_fn=objective.loss_fn,
                                     batch_transform=objective.batch_transform)
    it = batches(prefetch=2)
    state, metrics = train(state, next(it))
    jax.block_until_ready(metrics)
    step_segments, t0 = 0, time.perf_counter()
    for _ in range(args.steps):
        batch = next(it)
        step_segments += int(np.count_nonzero(np.diff(batch["segment_ids"], axis=1, prepend=0) > 0))
        state, metrics = train(state, batch)
    jax.block_until_ready(metrics)
    train_s = time.perf_counter() - t0

    result = {
        "task": args.task, "preset": args.preset, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "pipeline_examples_per_s": segments / pipeline_s,
        "train_examples_per_s": step_segments / train_s,
        "train_step_s": train_s / args.steps,
    }
    result["pipeline_over_train"] = result["pipeline_examples_per_s"] / result["train_examples_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
