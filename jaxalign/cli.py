"""`jaxalign <command>`: a thin layer that parses flags and calls the library.

Bad input (a mesh spec, a checkpoint, a config key, a path) ends with one line on stderr,
`jaxalign: error: ...`, and exit code 2; nothing already saved is touched.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError)


class _OldName(argparse.Action):
    """A flag's former name: still taken, hidden from --help, with a one-line note on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"jaxalign: note: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


class _HelpWithKeys(argparse.Action):
    """-h/--help that ends with the top-level keys of a default config. They are read only when help
    is asked for, since the default configs import JAX and `jaxalign --help` must answer without it."""

    def __init__(self, option_strings: list[str], dest: str, default_config: str, **kwargs: Any):
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="show this help message and exit")
        self.default_config = default_config

    def __call__(self, parser, namespace, values, option_string=None):
        module, _, name = self.default_config.rpartition(".")
        keys = ", ".join(sorted(getattr(importlib.import_module(module), name)().keys()))
        parser.epilog += f"\n\ntop-level keys of {self.default_config}():\n" + textwrap.fill(
            keys, width=96, initial_indent="  ", subsequent_indent="  ")
        parser.print_help()
        parser.exit()


def _config_command(commands: Any, name: str, help: str, default_config: str, example: str) -> Any:
    """A command that reads a config file and takes --config.KEY=VALUE overrides (explained by its
    --help, with `example` and the keys of `default_config`, the config such files start from)."""
    command = commands.add_parser(name, help=help, add_help=False, description=help,
                                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
        "--config.KEY=VALUE, after the flags and repeatable, sets a key of the config file: a dotted\n"
        "KEY reaches into a section (--config.optimizer.peak_lr=3e-4); VALUE is a Python literal where\n"
        "it parses (3, 1e-4, True), else a string. The key must exist (a typo is an error naming it),\n"
        "except under model, which takes any ModelConfig field. --config FILE.py:ARG calls the file's\n"
        f'get_config("ARG") instead of get_config(). For example:\n\n  {example}'))
    command.add_argument("-h", "--help", action=_HelpWithKeys, default_config=default_config)
    return command


def _add_mesh(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mesh", default="dp:1,fsdp:-1,tp:1",
                        help='device mesh, e.g. "dp:2,fsdp:-1,tp:1" or "2,-1,1"')


def _add_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compilation-cache", default=None, metavar="DIR",
                        help="JAX's persistent compilation cache, so reruns do not compile again; 'off' "
                             "to disable (default: $JAXALIGN_COMPILATION_CACHE or ~/.cache/jaxalign/xla)")


def _add_guided(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guided", action="store_true",
                        help="guided response generation (Mistake Analysis): add a harmlessness hint "
                             "on the line after each prompt")
    parser.add_argument("--hint",
                        help="the hint --guided adds (default: jaxalign.data.mistake_prompts.GUIDED_HINT)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxalign", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one 'jaxalign: error:' line")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_eval(commands)
    _add_generate(commands)
    _add_import_hf(commands)
    _add_export(commands)
    _add_pipeline(commands, "sandbox", "run (or resume) a SANDBOX simulation: records.jsonl",
                  "jaxalign.methods.sandbox.simulation.default_config", "records, progress and config",
                  "jaxalign sandbox --config experiments/sandbox_synthetic.py --config.rounds=5 "
                  "--config.agents.num_agents=9")
    _add_pipeline(commands, "mistakes", "run (or resume) the Mistake Analysis pipeline: mix.jsonl",
                  "jaxalign.methods.mistakes.default_config", "every stage's records, config and summary",
                  "jaxalign mistakes --config experiments/mistake_analysis_synthetic.py:pipeline \\\n"
                  "      --config.pairs.num=64")
    _add_plan(commands)
    _add_plot(commands)
    # bench parses its own flags (jaxalign.bench.main), so they are passed through unparsed.
    commands.add_parser("bench", help="speed of training, forward and generation", add_help=False)
    return parser


def _add_train(commands: Any) -> None:
    train = _config_command(commands, "train", "train (or resume) from a config file",
                            "jaxalign.train.defaults.default_train_config",
                            "jaxalign train --config experiments/coh_synthetic.py:dpo "
                            "--config.total_steps=500 \\\n      --config.model.remat=full")
    train.add_argument("--config", required=True,
                       help="experiments/<name>.py with get_config(), or FILE.py:ARG for get_config(\"ARG\")")
    train.add_argument("--workdir", default=None,
                       help="checkpoints, metrics and samples; re-running resumes (default: "
                            "workdirs/<config name>)")
    train.add_argument("--coordinator", help="host:port of process 0, for a multi-host run JAX does not "
                                             "detect itself (Cloud TPU, SLURM, Open MPI need no flags); "
                                             "$JAXALIGN_COORDINATOR")
    train.add_argument("--num-processes", type=int,
                       help="how many processes take part (with --coordinator; $JAXALIGN_NUM_PROCESSES)")
    train.add_argument("--process-id", type=int,
                       help="this process's index, 0 to --num-processes - 1 (with --coordinator; "
                            "$JAXALIGN_PROCESS_ID)")
    _add_cache(train)


def _add_eval(commands: Any) -> None:
    ev = commands.add_parser("eval", help="evaluate a model on its config's held-out data (JSON report)")
    ev.add_argument("--config", help="the experiment config (its data and objective); not with --harness")
    ev.add_argument("--checkpoint", required=True, help="a train workdir, jaxalign model or HF directory")
    ev.add_argument("--out", help="report path (default: <checkpoint>/eval.json, or harness.json)")
    ev.add_argument("--num-eval", type=int, help="held-out records (default: config.data.num_eval)")
    ev.add_argument("--max-new-tokens", type=int,
                    help="tokens to generate per prompt (default: config.max_new_tokens; each --harness "
                         "task's own)")
    ev.add_argument("--temperature", type=float, default=0.0,
                    help="sampling temperature; 0: greedy (default)")
    ev.add_argument("--seed", type=int, default=0, help="random seed of sampling (default 0)")
    ev.add_argument("--safety-judge", help="a safety classifier (experiments/safety_judge.py): report its "
                                           "harmless rate of the generations")
    ev.add_argument("--harness", metavar="TASK[,TASK...]",
                    help="instead of --config: EleutherAI lm-eval tasks (e.g. hellaswag,arc_easy) on the "
                         "model's mesh; writes lm-eval's results JSON (pip install 'jaxalign[harness]')")
    ev.add_argument("--harness-limit", type=float, metavar="N",
                    help="at most N examples per --harness task (below 1: that fraction of each)")
    ev.add_argument("--harness-fewshot", type=int, metavar="N",
                    help="few-shot examples per --harness prompt (default: each task's own, else 0)")
    ev.add_argument("--harness-tasks-dir", metavar="DIR",
                    help="a directory of your own lm-eval task YAMLs that --harness may name")
    _add_guided(ev)
    _add_mesh(ev)
    _add_cache(ev)


def _add_generate(commands: Any) -> None:
    gen = commands.add_parser("generate", help="continue prompts with a model")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a train workdir, jaxalign model directory, Hugging Face "
                                             "directory or Hub id (org/name[@revision])")
    source.add_argument("--preset", help="a randomly initialised preset (e.g. tiny), for smoke tests")
    gen.add_argument("--tokenizer", metavar="PATH",
                     help="a tokenizer.json, a sentencepiece .model or a directory holding one, in place "
                          "of the model's own (a Hugging Face export may have none)")
    prompts = gen.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", help="a text prompt; repeat for a batch")
    prompts.add_argument("--prompt-ids", action="append", metavar="IDS",
                         help='a prompt of comma-separated token ids, e.g. "1,306,4966", answered with '
                              "ids (no tokenizer needed); repeat for a batch")
    gen.add_argument("--max-new-tokens", type=int, default=32,
                     help="tokens to generate per prompt (default 32)")
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="sampling temperature; 0: greedy (default)")
    gen.add_argument("--top-k", type=int, default=0,
                     help="sample among the k most likely tokens only; 0: no limit (default)")
    gen.add_argument("--top-p", type=float, default=1.0,
                     help="nucleus sampling: the most likely tokens up to probability p; 1: all (default)")
    gen.add_argument("--seed", type=int, default=0, help="random seed of sampling (default 0)")
    _add_guided(gen)
    _add_mesh(gen)
    _add_cache(gen)


def _add_import_hf(commands: Any) -> None:
    imp = commands.add_parser("import-hf", help="convert a Hugging Face checkpoint to jaxalign")
    imp.add_argument("--from", dest="source", required=True,
                     help="a Hugging Face LLaMA-family directory (config.json + safetensors) or Hub id "
                          "(org/name[@revision])")
    imp.add_argument("--out", required=True, help="the jaxalign model directory to write")
    imp.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    _add_mesh(imp)


def _add_export(commands: Any) -> None:
    exp = commands.add_parser("export", help="write a Hugging Face checkpoint (or a params-only jaxalign "
                                               "model directory) from a train workdir or model directory")
    exp.add_argument("--checkpoint", required=True, help="a train workdir or a jaxalign model directory")
    exp.add_argument("--step", type=int, default=None,
                     help="a kept step of the workdir (default: the latest)")
    exp.add_argument("--out", required=True, help="the directory to write")
    exp.add_argument("--format", dest="fmt", choices=["hf", "orbax", "peft"], default="hf",
                     help="hf: config.json + safetensors; orbax: a jaxalign model directory (params only); "
                          "a LoRA run's are merged. peft: a LoRA run's adapters alone, PEFT's layout")
    exp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                     help="the weights' dtype in --out (default: the model's param_dtype)")
    exp.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")


def _add_pipeline(commands: Any, name: str, help: str, default_config: str, writes: str,
                  example: str) -> None:
    """`sandbox` and `mistakes`: a config of the method's own and a resumable workdir."""
    command = _config_command(commands, name, help, default_config, example)
    command.add_argument("--config", required=True,
                         help=f"a config whose get_config() is a {name} config ({default_config})")
    command.add_argument("--workdir", default=None,
                         help=f"{writes}; re-running resumes (default: workdirs/<config name>)")
    _add_cache(command)


def _add_plan(commands: Any) -> None:
    plan = commands.add_parser("plan", help="per-device memory of a config's train step and the largest "
                                            "batch that fits a device (jaxalign.plan)")
    plan.add_argument("--config", required=True,
                      help="experiments/<name>.py with get_config(); --config.KEY=VALUE overrides as in "
                           "train")
    plan.add_argument("--device", help="tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e, a100, a100-40gb, h100 or h200")
    plan.add_argument("--device-bytes", type=int, help="device memory in bytes (instead of --device's)")
    plan.add_argument("--mesh", help='the mesh to plan for, every size given, e.g. "dp:1,fsdp:256,tp:1" '
                                     "(default: config.mesh on this machine's devices)")
    plan.add_argument("--mesh-shape", dest="mesh", action=_OldName, new="--mesh")
    plan.add_argument("--lora-rank", type=int,
                      help="plan a LoRA step of this rank (default: the config's lora)")
    plan.add_argument("--lora-base-dtype", choices=["float32", "bfloat16", "int8", "int4"],
                      help="the frozen base's dtype with --lora-rank (int8, int4: QLoRA)")
    plan.add_argument("--check", action="store_true",
                      help="also compile the real train step here and print XLA's figures beside")
    plan.add_argument("--json", action="store_true", help="print one JSON object")


def _add_plot(commands: Any) -> None:
    plot = commands.add_parser("plot", help="draw runs' metrics.jsonl curves to a PNG (jaxalign.plot)")
    plot.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="train workdirs holding metrics.jsonl; each is one line, labelled by its name")
    plot.add_argument("--out", required=True, metavar="FILE.png",
                      help="the PNG to write (replaced atomically if it exists)")
    plot.add_argument("--metrics", default=None,
                      help="comma-separated keys, one subplot each, e.g. loss,feedback/loss,reward "
                           "(default: those present of the losses, accuracy, reward, kl, task_score, "
                           "grad_norm, lr, mfu, tokens_per_s)")
    plot.add_argument("--x", default="step", help="the key on the x axis (default: step)")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Quiet libraries' chatter ("Unable to initialize backend 'tpu'", orbax's per-save lines).
    for name in ("jax", "absl", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("train", "eval", "sandbox", "mistakes", "plan"):
        # --config.key=value overrides are applied by jaxalign.config.load_config.
        args.overrides = [e for e in extra if e.startswith("--config.")]
        extra = [e for e in extra if not e.startswith("--config.")]
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.bench_args = extra
    try:
        return _run(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"jaxalign: error: {message}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "plot":  # reads files only: no JAX
        return _plot(args)
    # Imported here so `jaxalign --help` answers without initialising JAX.
    from jaxalign import api
    from jaxalign import mesh as mesh_lib

    if hasattr(args, "compilation_cache"):
        cache = args.compilation_cache
        mesh_lib.use_compilation_cache(mesh_lib.default_compilation_cache() if cache is None else cache)

    if args.command == "train":
        return _train(args)
    if args.command == "eval":
        return _eval(args)
    if args.command in ("sandbox", "mistakes"):
        return _pipeline(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "import-hf":
        from jaxalign import modeldir

        modeldir.check_apart(args.out, [args.source])
        lm = api.load(args.source, mesh=args.mesh)
        out = lm.save(args.out, overwrite=args.overwrite)
        print(f"wrote {out} ({lm.cfg.num_params():,} parameters)")
        if lm.tokenizer is None:
            print(f"jaxalign: warning: {args.source} holds no tokenizer (tokenizer.json or tokenizer.model), "
                  f"so {out} has none: text prompts (generate --prompt, eval) will be refused (generate "
                  f"takes --tokenizer PATH or --prompt-ids); copy the tokenizer files into {args.source} "
                  "and import again", file=sys.stderr)
        return 0
    if args.command == "export":
        return _export(args)
    if args.command == "plan":
        from jaxalign import plan

        return plan.run_cli(args)
    if args.command == "bench":
        from jaxalign import bench

        return bench.main(args.bench_args)
    raise AssertionError(args.command)


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import jax

    from jaxalign import config as config_lib
    from jaxalign import mesh as mesh_lib
    from jaxalign import runner
    from jaxalign.train import run

    mesh_lib.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if jax.process_index() != 0:
        # Every process runs the same loop: only process 0 reports; the others say only what goes wrong.
        logging.getLogger().setLevel(logging.WARNING)
    config = config_lib.load_config(args.config, args.overrides)
    workdir = args.workdir or str(Path("workdirs") / Path(args.config).stem)
    try:
        summary = runner.train(config, workdir)
    except run.NonFiniteLossError as e:
        print(f"jaxalign: error: {e}", file=sys.stderr)
        return 1
    if jax.process_index() != 0:
        return 0
    print(f"{summary['status']} at step {summary['step']}; workdir {summary['workdir']}")
    for row in summary.get("samples", []):
        score = f"  [score {row['score']:.2f}]" if "score" in row else ""
        print(f"  {row['prompt']!r} -> {row['response']!r}{score}")
    if "score" in summary:
        print(f"mean task score on {len(summary['samples'])} held-out prompts: {summary['score']:.3f}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from jaxalign import api
    from jaxalign.data.tokenizer import Tokenizer, demo_tokenizer
    from jaxalign.models import get_preset

    tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else None
    if args.checkpoint:
        lm = api.load(args.checkpoint, mesh=args.mesh)
        if tokenizer is not None:
            if tokenizer.vocab_size > lm.cfg.vocab_size:
                raise ValueError(f"--tokenizer {args.tokenizer}: {tokenizer.vocab_size} token ids, more than "
                                 f"the model's {lm.cfg.vocab_size}")
            lm.tokenizer = tokenizer
    else:
        # A random model sized to the tokenizer (the bundled demo one by default), so every id decodes.
        tokenizer = tokenizer or demo_tokenizer()
        cfg = get_preset(args.preset, vocab_size=tokenizer.vocab_size)
        lm = api.init(cfg, mesh=args.mesh, tokenizer=tokenizer)
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed)
    if args.prompt_ids:
        if _hint(args):
            raise ValueError("--guided adds its hint to text: use it with --prompt, not --prompt-ids")
        prompts = [_token_ids(text, lm.cfg.vocab_size) for text in args.prompt_ids]
        for prompt, ids in zip(prompts, lm.generate(prompts, **sampling), strict=True):
            print(f"{prompt} -> {ids}")
        return 0
    if lm.tokenizer is None:
        raise ValueError(f"{args.checkpoint} has no tokenizer (tokenizer.json or tokenizer.model) to "
                         "encode --prompt: give one with --tokenizer PATH, or prompt with token ids: "
                         "--prompt-ids 1,2,3")
    outputs = lm.generate(_hinted(args, args.prompt), **sampling)
    for prompt, text in zip(args.prompt, outputs, strict=True):
        print(f"{prompt!r} -> {text!r}")
    return 0


def _token_ids(text: str, vocab_size: int) -> list[int]:
    """A --prompt-ids value ("1,306,4966") as ids, each checked to be in the model's vocabulary."""
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--prompt-ids {text!r}: not comma-separated token ids, e.g. 1,306,4966") from None
    outside = [i for i in ids if not 0 <= i < vocab_size]
    if outside:
        raise ValueError(f"--prompt-ids {text!r}: {outside} outside the model's vocabulary "
                         f"(0 to {vocab_size - 1})")
    return ids


def _export(args: argparse.Namespace) -> int:
    from jaxalign import export

    out = export.export(args.checkpoint, args.out, step=args.step, fmt=args.fmt, dtype=args.dtype,
                        overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from jaxalign import plot

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics is not None else None
    out = plot.plot_runs(args.workdirs, args.out, metrics=metrics, x=args.x)
    print(f"wrote {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from jaxalign import config as config_lib
    from jaxalign import paths
    from jaxalign.eval import report as report_lib

    if args.harness:
        return _harness(args)
    if not args.config:
        raise ValueError("eval needs --config (held-out data of a run) or --harness TASKS (lm-eval)")
    config = config_lib.load_config(args.config, args.overrides)
    report = report_lib.evaluate(config, args.checkpoint, mesh=args.mesh, num_eval=args.num_eval,
                                 max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 seed=args.seed, hint=_hint(args), safety_judge=args.safety_judge)
    out = report_lib.write(report, args.out or paths.path(args.checkpoint) / "eval.json")
    summary = {k: report[k] for k in ("preference", "feedback", "rouge", "task", "safety", "truncation")
               if k in report}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


def _harness(args: argparse.Namespace) -> int:
    """`eval --harness`: lm-eval's tasks on the model (jaxalign.eval.harness)."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ValueError("--harness needs lm-eval: pip install 'jaxalign[harness]'")
    import jax

    from jaxalign import api, paths
    from jaxalign.eval import harness, truncation

    clash = [flag for flag, value in (("--config", args.config), ("--num-eval", args.num_eval),
                                      ("--safety-judge", args.safety_judge), ("--guided", args.guided),
                                      ("--hint", args.hint), ("--config.*", args.overrides)) if value]
    if clash:
        raise ValueError(f"--harness runs lm-eval's tasks; {', '.join(clash)} belong to eval --config")
    gen_kwargs = {}  # overrides of the generate_until tasks' own generation_kwargs
    if args.max_new_tokens is not None:
        gen_kwargs["max_gen_toks"] = args.max_new_tokens
    if args.temperature:
        gen_kwargs.update(do_sample=True, temperature=args.temperature)
    lm = api.load(args.checkpoint, mesh=args.mesh)
    max_len, source = truncation.max_len_of(args.checkpoint, lm.cfg)
    model = harness.HarnessLM(lm, max_len=max_len, max_len_from=source, seed=args.seed)
    results = harness.evaluate(model, args.harness.split(","), limit=args.harness_limit,
                               num_fewshot=args.harness_fewshot, tasks_dir=args.harness_tasks_dir,
                               gen_kwargs=gen_kwargs, seed=args.seed)
    if jax.process_index() != 0:
        return 0
    out = paths.path(args.out) if args.out else paths.path(args.checkpoint) / "harness.json"
    paths.write_atomic(out, harness.to_json(results))
    print(harness.table(results))
    print(f"wrote {out}")
    return 0


def _hint(args: argparse.Namespace) -> str:
    """The hint of guided response generation ("" without --guided)."""
    if args.hint and not args.guided:
        raise ValueError("--hint is the text --guided adds; pass --guided too")
    if not args.guided:
        return ""
    from jaxalign.data import mistake_prompts

    return args.hint or mistake_prompts.GUIDED_HINT


def _hinted(args: argparse.Namespace, prompts: list[str]) -> list[str]:
    from jaxalign.data import mistake_prompts

    hint = _hint(args)
    return [mistake_prompts.guided_prompt(p, hint) for p in prompts] if hint else prompts


def _pipeline(args: argparse.Namespace) -> int:
    """`sandbox` and `mistakes`: a config, a workdir, a resumable run that writes records."""
    from pathlib import Path

    from jaxalign import config as config_lib

    config = config_lib.load_config(args.config, args.overrides)
    workdir = args.workdir or str(Path("workdirs") / Path(args.config.split(".py:")[0]).stem)
    if args.command == "sandbox":
        from jaxalign.methods.sandbox import simulation

        summary = simulation.run(config, workdir)
    else:
        from jaxalign.methods import mistakes

        summary = mistakes.run(config, workdir)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
