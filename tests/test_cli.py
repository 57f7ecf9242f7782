"""The command line explains itself: help on every flag, the config overrides, one name per concept."""

import argparse
import subprocess
import sys

import pytest

from jaxalign import bench, cli


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _parsers():
    parser = cli._parser()
    yield "jaxalign", parser
    yield from _subparsers(parser).choices.items()
    yield "bench (its own parser)", bench._parser()


def test_every_flag_and_command_has_help():
    missing = []
    for name, parser in _parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"jaxalign {a.dest}" for a in action._choices_actions
                            if not (a.help or "").strip()]
            elif action.help == argparse.SUPPRESS:  # only a former name is hidden
                assert type(action).__name__ == "_OldName", (name, action.option_strings)
            elif not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"flags without help: {missing}"


@pytest.mark.parametrize("command, example, keys", [
    ("train", "experiments/coh_synthetic.py:dpo --config.total_steps=500",
     ["batch_size", "objective", "optimizer", "total_steps"]),
    ("sandbox", "experiments/sandbox_synthetic.py --config.rounds=5", ["agents", "rounds", "sampling"]),
    ("mistakes", "experiments/mistake_analysis_synthetic.py:pipeline", ["induce", "pairs", "revise"]),
])
def test_config_commands_explain_overrides_and_list_the_default_keys(command, example, keys, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--config.KEY=VALUE" in out and "--config FILE.py:ARG" in out and 'get_config("ARG")' in out
    assert f"jaxalign {command} --config {example}" in out
    listed = out.split("():\n")[-1]
    assert all(f"{key}," in listed or listed.rstrip().endswith(key) for key in keys), listed


def test_top_level_help_does_not_import_jax():
    code = "import sys; from jaxalign import cli; cli._parser().format_help(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_plan_takes_mesh_and_its_former_name_with_a_note(capsys):
    args = cli._parser().parse_args(["plan", "--config", "c.py", "--mesh", "dp:1,fsdp:256,tp:1"])
    assert args.mesh == "dp:1,fsdp:256,tp:1"
    assert capsys.readouterr().err == ""
    args = cli._parser().parse_args(["plan", "--config", "c.py", "--mesh-shape", "1,64,1"])
    assert args.mesh == "1,64,1"
    assert capsys.readouterr().err == "jaxalign: note: --mesh-shape is now --mesh\n"
    assert cli._parser().parse_args(["plan", "--config", "c.py"]).mesh is None  # config.mesh
    assert "--mesh-shape" not in _subparsers(cli._parser()).choices["plan"].format_help()
