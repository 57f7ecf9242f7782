"""experiments/gpu_check.py (issue #25): its CPU rehearsal (--smoke) writes every section, and runs
with tensorflow_datasets and gcsfs made unimportable, as on the GPU image."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "gpu_check.py"
SECTIONS = ("env", "attention", "bench", "torch", "plan", "coh", "dpo")
BLOCKED = ("tensorflow_datasets", "gcsfs")
# A sitecustomize every process of the run (the script and each section's child) imports first:
# None in sys.modules makes `import tensorflow_datasets` raise ImportError, as if not installed.
BLOCKER = textwrap.dedent(f"""
    import sys
    for name in {BLOCKED!r}:
        sys.modules[name] = None
""")


def _smoke(tmp_path: Path, block: bool) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    env = dict(os.environ)
    # The 8 virtual CPU devices of tests/conftest.py, so every section runs sharded.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    for key in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                "JAX_COMPILATION_CACHE_DIR"):
        env.pop(key, None)
    if block:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(BLOCKER)
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    return proc, out


def _has_numbers(x) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int | float):
        return True
    if isinstance(x, dict):
        return any(_has_numbers(v) for v in x.values())
    if isinstance(x, list):
        return any(_has_numbers(v) for v in x)
    return False


def _check_report(proc: subprocess.CompletedProcess, out: Path) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"wrote {out / 'gpu_check.json'}" in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "smoke" and report["ok"] and report["failed"] == []
    assert list(report["sections"]) == list(SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] in ("ok", "skipped"), (name, section)
        if section["status"] == "skipped":
            assert section["reason"], name
        else:
            assert _has_numbers(section["result"]), name
        assert not set(section["avoided_modules_imported"]) & set(BLOCKED), (name, section)
    sections = {name: s.get("result") for name, s in report["sections"].items()}

    env = sections["env"]
    assert env["device_kind"] and env["jax_version"] and env["jaxlib_version"]
    assert "cudnn_version" in env and env["matmul_peak_flops"] > 0

    attention = sections["attention"]
    assert attention["tolerance"] == 2e-2 and attention["failed"] == []
    for case in ("causal", "segments", "segments_fcm"):
        entry = attention["cases"][case]
        assert entry["cudnn"] == {"skipped": "no GPU (platform cpu)"}  # honest, not a comparison
        for impl in ("xla", "dot_product", "chunked"):
            assert entry[impl]["pass"] and entry[impl]["max_rel_err"] < 2e-2, (case, impl)

    bench = sections["bench"]
    assert bench["bench_config"]["preset"] == "tiny" and bench["train_mfu"] > 0
    assert bench["bench_config"]["remat"] == "save_dots" and bench["bench_config"]["attention_impl"] == "auto"

    if report["sections"]["torch"]["status"] == "ok":
        torch = sections["torch"]
        assert torch["torch_train_tokens_per_s"] > 0 and torch["torch_generate_tokens_per_s"] > 0
        assert torch["train_vs_torch"] > 0 and torch["torch_attn_implementation"]
    else:
        assert "torch not installed" in report["sections"]["torch"]["reason"]

    plan = sections["plan"]
    assert plan["total"] > 0 and plan["xla"]["peak"] > 0 and 0.5 < plan["estimate_over_xla_peak"] < 2

    for name in ("coh", "dpo"):
        step = sections[name]
        assert step["loss_finite"] and step["step_s"] > 0 and 0 < step["mfu"], name
    assert sections["coh"]["feedback_rows"] and sections["coh"]["pretrain_rows"]
    assert "accuracy" in sections["dpo"]["metrics"]

    table = (out / "gpu_check.md").read_text()
    for name in SECTIONS:
        assert f"| {name} | " in table
    assert (out / "gpu_check.log").stat().st_size > 0
    return report


def test_smoke_writes_every_section_without_tensorflow_datasets_and_gcsfs(tmp_path):
    """One rehearsal (it compiles ~25 programs, minutes on 2 cores), with the GPU image's missing
    modules blocked: every section must run without them."""
    proc, out = _smoke(tmp_path, block=True)
    report = _check_report(proc, out)
    found = report["sections"]["env"]["result"]["modules_found"]
    for name in BLOCKED:  # the blocker was in force in the sections' processes
        assert found[name] == "blocked", found
