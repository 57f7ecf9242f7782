"""Experiment configs: Python files whose `get_config()` returns an ml_collections.ConfigDict.

    jaxalign train --config experiments/default.py --config.total_steps=500 --config.model.preset=tiny

Overrides must name an existing key (a typo is an error that names it), except under
`model`, where any ModelConfig field may be added (`--config.model.remat=full`; the model
config then rejects unknown fields by name). Values are parsed as
Python literals where they parse (`3`, `1e-4`, `True`, `"dp:2,fsdp:-1,tp:1"`), else taken as
strings; ConfigDict's type checking then rejects a value of the wrong type.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file or key."""


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path`'s get_config() and applies `--config.key=value` style overrides.

    ``file.py:arg`` calls ``get_config("arg")`` (as big_vision does), e.g.
    ``experiments/coh_synthetic.py:dpo`` for the same experiment with another objective.
    """
    raw, arg = str(path), ""
    if ".py:" in raw:
        raw, arg = raw.split(".py:", 1)
        raw += ".py"
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"jaxalign_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config() function")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: get_config({arg!r}): {e}") from e
    for override in overrides:
        apply_override(config, override, source=str(path))
    return config


def apply_override(config: ml_collections.ConfigDict, override: str, source: str = "config") -> None:
    """Applies one `config.a.b=value` (leading dashes and the `config.` prefix optional)."""
    key, sep, raw = override.lstrip("-").partition("=")
    if not sep:
        raise ConfigError(f"override {override!r} needs the form --config.key=value")
    key = key.removeprefix("config.")
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise ConfigError(f"{source}: unknown config key {'.'.join(parents[: i + 1])!r}")
        node = node[name]
    if leaf not in node and parents != ["model"]:
        known = ", ".join(sorted(node.keys()))
        raise ConfigError(f"{source}: unknown config key {key!r} (known here: {known})")
    # A string field takes the text as it is ("3,-1,1" is a mesh spec, not a tuple).
    value = raw if leaf in node and isinstance(node[leaf], str) else parse_value(raw)
    try:
        node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"{source}: config key {key!r}: {e}") from None


def parse_value(raw: str) -> Any:
    """A command-line value: a Python literal where it parses (3, 1e-4, True), else the string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON (references resolved), for the workdir and checkpoints."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def check_keys(section: Any, allowed: Sequence[str], where: str) -> None:
    """Raises ConfigError naming keys of `section` that are not in `allowed`."""
    unknown = sorted(set(section.keys()) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: dotted keys, as overrides spell them."""
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def check_same(saved: dict[str, Any], current: dict[str, Any], where: str,
               may_change: Sequence[str] = ()) -> None:
    """Raises ConfigError naming every key that differs between a run's saved config and the one it is
    resumed with, except `may_change`: a resumed run must not mix the outputs of two configs."""
    before, after = flatten(saved), flatten(current)
    changed = sorted(k for k in before.keys() | after.keys()
                     if k not in may_change and before.get(k) != after.get(k))
    if changed:
        allowed = f"only {', '.join(may_change)} may change when resuming" if may_change else \
            "nothing may change when resuming"
        raise ConfigError(f"{where} holds a run of another config (changed: {', '.join(changed)}); "
                          f"{allowed}. Use a new workdir.")
