"""How many SANDBOX interactions per second, and what batching the agents' generation buys.

    python experiments/bench_sandbox.py [--agents 4,16,64] [--preset tiny] [--max-new-tokens 32] [--json]

One interaction is one agent's round: a draft, `raters` peer ratings, a revision (2 + raters
generations) and the observer's scores (the task's ground truth here, so the figure is the
agents' cost). For each society size it runs 3 warm-up rounds (compilation) and `rounds` timed
rounds twice: every step's prompts to a model in one generate call (``sampling.batch_size = 0``,
the default), and one prompt per call (``batch_size = 1``, how an agent loop without batching
runs). The model is a randomly initialised `preset` with the bundled demo tokenizer: it rarely
emits EOS, so every generation runs the full `max_new_tokens` and the timing is the worst case
of a given length. Generated tokens per second are reported beside interactions per second.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import jax

from jaxalign import api
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.methods.sandbox import simulation
from jaxalign.models import get_preset

# Prompts grow while memories fill (recall = 2 pairs from the third round on), and a new prompt
# length bucket compiles anew: warm-up rounds compile them all before anything is timed.
WARMUP = 3


def measure(model_dir: str, agents: int, batch_size: int, rounds: int, max_new_tokens: int,
            workdir: Path) -> dict[str, float]:
    config = simulation.default_config()
    config.agents.models, config.agents.num_agents = model_dir, agents
    config.agents.grid_size = max(2, int(agents**0.5 + 0.999))
    config.observer.kind, config.memory.embedding = "task", "ngram"
    config.sampling.max_new_tokens, config.sampling.batch_size = max_new_tokens, batch_size
    config.rounds = WARMUP
    run_dir = workdir / f"a{agents}-b{batch_size}"
    warm = simulation.run(config, run_dir, progress=False)  # compiles every bucket this size needs
    config.rounds = WARMUP + rounds
    summary = simulation.run(config, run_dir, progress=False)
    seconds = summary["seconds"]  # the rounds only, not loading the model or replaying memories
    return {"agents": agents, "batch_size": batch_size,
            "interactions_per_s": rounds * agents / seconds, "seconds_per_round": seconds / rounds,
            "generated_tokens_per_s": (summary["generated_tokens"] - warm["generated_tokens"]) / seconds,
            "generate_calls_per_round": (summary["generate_calls"] - warm["generate_calls"]) / rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="4,16,64")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tokenizer = demo_tokenizer()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "agent")
        cfg = get_preset(args.preset, vocab_size=tokenizer.vocab_size)
        api.init(cfg, tokenizer=tokenizer).save(model_dir)
        for agents in (int(a) for a in args.agents.split(",")):
            for batch_size in (0, 1):
                row = measure(model_dir, agents, batch_size, args.rounds, args.max_new_tokens, Path(tmp))
                rows.append(row)
                if not args.json:
                    r = rows[-1]
                    mode = "batched" if batch_size == 0 else "one prompt per call"
                    print(f"{agents:4d} agents, {mode:20s}: {r['interactions_per_s']:7.2f} interactions/s "
                          f"({r['seconds_per_round']:.2f} s/round, "
                          f"{r['generated_tokens_per_s']:.0f} gen tok/s)",
                          flush=True)
    info = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(), "preset": args.preset,
            "max_new_tokens": args.max_new_tokens, "machine": platform.machine(), "rows": rows}
    if args.json:
        print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
