"""The Colab quickstart notebook, executed top to bottom on CPU as a user would run it."""

import json
import math
import os
import re
import sys
from pathlib import Path

import ipykernel  # noqa: F401  (the test extra installs nbclient, nbformat and ipykernel: no skip)
import nbclient
import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "colab_quickstart.ipynb"
TIMEOUT_S = 300  # per cell; the whole notebook takes about a minute on 2 cores


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert re.search(r"^STEPS = \d+", code[0].source, re.M), "the first cell sets STEPS"


def _kernel(tmp_path: Path) -> tuple[str, object]:
    """A kernelspec for this interpreter, so the kernel sees the same venv whatever is on PATH."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    name = "jaxalign-test"
    write_kernel_spec(tmp_path / "kernels" / name)
    kernel_json = json.loads((tmp_path / "kernels" / name / "kernel.json").read_text())
    assert kernel_json["argv"][0] == sys.executable
    return name, KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_notebook_trains_generates_and_exports(tmp_path):
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(NOTEBOOK, as_version=4)
    steps = int(re.search(r"^STEPS = (\d+)", nb.cells[1].source, re.M).group(1))
    run_dir = tmp_path / "run"  # a fresh directory: the notebook finds jaxalign through its import
    run_dir.mkdir()
    name, spec_manager = _kernel(tmp_path)
    env = dict(os.environ)
    # Several virtual devices, so the mesh the notebook picks really shards (conftest sets it for
    # this process; set here too so the test stands alone).
    if "xla_force_host_platform_device_count" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    km = KernelManager(kernel_name=name, kernel_spec_manager=spec_manager)
    client = nbclient.NotebookClient(nb, km=km, kernel_name=name, timeout=TIMEOUT_S,
                                     resources={"metadata": {"path": str(run_dir)}})
    client.execute(env=env)

    out = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert re.search(r"\d+ x cpu", out) and "'fsdp': 8" in out
    match = re.search(rf"done at step {steps}, loss (\S+)", out)
    assert match and math.isfinite(float(match.group(1))), out
    generated = re.findall(r"\n  -> (.*)", out)  # each a repr()'d string
    assert len(generated) == 2 and any(g not in ("''", '""') for g in generated), out

    export = run_dir / "workdirs" / "colab_coh-hf" / f"step_{steps}"
    assert {"config.json", "model.safetensors"} <= {p.name for p in export.iterdir()}
    assert json.loads((export / "config.json").read_text())["num_hidden_layers"] == 2
