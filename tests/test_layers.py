"""The layer contract (pyproject.toml, docs/architecture.md) holds, and it would catch an upward import."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the tree's jaxalign, not the installed one
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), str(tree / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "jaxalign", tree / "jaxalign", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    return tree


def test_layers_kept(tmp_path):
    result = _lint_imports(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "jaxalign layers KEPT" in result.stdout


def test_upward_import_breaks_the_contract(tmp_path):
    tree = _copy(tmp_path)
    low = tree / "jaxalign" / "models" / "config.py"
    # Lazy, inside a function: lazy imports count too.
    low.write_text(low.read_text() + "\n\ndef _upward():\n    from jaxalign.train import loop  # noqa\n")
    result = _lint_imports(tree)
    assert result.returncode != 0
    assert "jaxalign.models.config -> jaxalign.train.loop" in result.stdout
