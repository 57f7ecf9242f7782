"""The CLI's persistent compilation cache: a rerun loads what the first run compiled."""

import os
import subprocess
import sys

import pytest


def _generate(cache: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JAXALIGN_COMPILATION_CACHE"}
    argv = [sys.executable, "-m", "jaxalign.cli", "generate", "--preset", "tiny", "--prompt", "Hello",
            "--max-new-tokens", "4", "--compilation-cache", cache]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def _entries(directory) -> dict[str, int]:
    """Each cached program and when it was written (a miss compiles and writes its entry again)."""
    if not os.path.isdir(directory):
        return {}
    return {name: os.stat(os.path.join(directory, name)).st_mtime_ns for name in os.listdir(directory)}


@pytest.mark.parametrize("setting", ["dir", "off"])
def test_rerun_hits_the_cache(tmp_path, setting):
    cache = str(tmp_path / "xla") if setting == "dir" else "off"
    first = _generate(cache)
    written = _entries(tmp_path / "xla")
    if setting == "off":
        assert written == {}
        return
    assert written, "the first run compiled and cached nothing"
    second = _generate(cache)
    assert _entries(tmp_path / "xla") == written  # nothing compiled again: every program was a hit
    assert second.stdout == first.stdout
