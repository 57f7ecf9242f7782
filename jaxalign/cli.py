"""`jaxalign <command>`: a thin layer that parses flags and calls the library.

Bad input (a mesh spec, a checkpoint, a config key, a path) ends with one line on stderr,
`jaxalign: error: ...`, and exit code 2; nothing already saved is touched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError)


def _add_mesh(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mesh", default="dp:1,fsdp:-1,tp:1",
                        help='device mesh, e.g. "dp:2,fsdp:-1,tp:1" or "2,-1,1"')


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxalign", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="continue prompts with a model")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a jaxalign model directory or a Hugging Face directory")
    source.add_argument("--preset", help="a randomly initialised preset (e.g. tiny), for smoke tests")
    gen.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    _add_mesh(gen)

    imp = commands.add_parser("import-hf", help="convert a Hugging Face checkpoint to jaxalign")
    imp.add_argument("--from", dest="source", required=True)
    imp.add_argument("--out", required=True)
    imp.add_argument("--overwrite", action="store_true")
    _add_mesh(imp)

    exp = commands.add_parser("export", help="write a Hugging Face checkpoint")
    exp.add_argument("--checkpoint", required=True, help="a jaxalign model directory")
    exp.add_argument("--out", required=True)
    exp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    exp.add_argument("--overwrite", action="store_true")
    _add_mesh(exp)

    # bench parses its own flags (jaxalign.bench.main), so they are passed through unparsed.
    commands.add_parser("bench", help="speed of training, forward and generation", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)  # e.g. "Unable to initialize backend 'tpu'"
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.bench_args = extra
    try:
        return _run(args)
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"jaxalign: error: {message}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    # Imported here so `jaxalign --help` answers without initialising JAX.
    from jaxalign import api
    from jaxalign.data.tokenizer import demo_tokenizer
    from jaxalign.models import get_preset

    if args.command == "generate":
        if args.checkpoint:
            lm = api.load(args.checkpoint, mesh=args.mesh)
        else:
            # A random model sized to the bundled demo tokenizer, so every id decodes.
            tokenizer = demo_tokenizer()
            cfg = get_preset(args.preset, vocab_size=tokenizer.vocab_size)
            lm = api.init(cfg, mesh=args.mesh, tokenizer=tokenizer)
        outputs = lm.generate(
            args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        )
        for prompt, text in zip(args.prompt, outputs, strict=True):
            print(f"{prompt}{text}")
        return 0
    if args.command == "import-hf":
        lm = api.load(args.source, mesh=args.mesh)
        out = lm.save(args.out, overwrite=args.overwrite)
        print(f"wrote {out} ({lm.cfg.num_params():,} parameters)")
        return 0
    if args.command == "export":
        lm = api.load(args.checkpoint, mesh=args.mesh)
        out = lm.save_hf(args.out, dtype=args.dtype, overwrite=args.overwrite)
        print(f"wrote {out}")
        return 0
    if args.command == "bench":
        from jaxalign import bench

        return bench.main(args.bench_args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
