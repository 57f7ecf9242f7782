"""`jaxalign export`: any kept step of a train workdir to HF (logits parity with transformers) or
to a params-only jaxalign model directory (reloads and generates), streamed leaf by leaf."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

import jaxalign
from jaxalign import api, cli, export, modeldir, models
from jaxalign import config as config_lib
from jaxalign import mesh as mesh_lib
from jaxalign import workdir as workdir_lib
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.models import get_preset
from jaxalign.objectives import registry
from jaxalign.train import loop, optim
from jaxalign.train import state as state_lib
from jaxalign.train.checkpointer import Checkpointer

DEFAULT = Path(__file__).resolve().parents[1] / "experiments" / "default.py"
TINY = ["--config.model.preset=tiny", "--config.model.initializer_range=0.2",
        "--config.mesh=dp:1,fsdp:-1,tp:1"]
TOKENS = np.random.default_rng(0).integers(3, 200, (2, 10))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A train workdir with steps 1 and 2 kept, built directly (no training): step 2's params
    differ from step 1's, so exporting the wrong step shows in the logits."""
    workdir = tmp_path_factory.mktemp("run")
    config = config_lib.load_config(DEFAULT, TINY)
    resolved = json.loads(config_lib.to_json(config))
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2))
    tok = demo_tokenizer()
    tok.save_pretrained(workdir / "tokenizer")
    cfg = loop.model_config(config, tok.vocab_size)
    # What the trainer writes when a run starts: the model and how it is prompted.
    workdir_lib.write_description(workdir, cfg, registry.prompt_template(config.objective),
                                  config.objective.to_dict())
    tx, _ = optim.make_optimizer(config.optimizer)
    mesh = mesh_lib.make_mesh(config.mesh)
    state = state_lib.init_train_state(cfg, tx, mesh, 0)
    params = {}
    with Checkpointer(workdir / "checkpoints", keep=2) as ckpt:
        for step in (1, 2):
            state = state.replace(params=jax.tree.map(lambda x: x * 1.1, state.params))
            params[step] = jax.tree.map(np.asarray, state.params)
            ckpt.save(step, state, {}, resolved, force=True)
    return workdir, cfg, mesh, params


def _ours(cfg, mesh, params):
    return api.LM(cfg, params, mesh).logits(TOKENS)


@pytest.mark.parametrize("step", [1, None])
def test_hf_export_matches_transformers(workdir, tmp_path, step):
    path, cfg, mesh, params = workdir
    out = export.export(path, tmp_path / "hf", step=step)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(torch.as_tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(theirs, _ours(cfg, mesh, params[step or 2]), atol=1e-4, rtol=1e-4)
    assert not np.allclose(theirs, _ours(cfg, mesh, params[1 if step is None else 2]), atol=1e-2)
    assert (out / "tokenizer.model").is_file() or (out / "tokenizer.json").is_file()
    card = (out / "README.md").read_text()
    assert f"- step: {step or 2}" in card and "- objective: sft" in card and "## Training config" in card
    assert f"num_hidden_layers={cfg.num_hidden_layers}" in card and '"total_steps"' in card


def test_orbax_export_reloads_and_generates(workdir, tmp_path, capsys):
    path, cfg, mesh, params = workdir
    out = tmp_path / "model"
    assert cli.main(["export", "--checkpoint", str(path), "--step", "1", "--out", str(out),
                     "--format", "orbax"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "jaxalign_model.json", "params", "tokenizer"]
    lm = jaxalign.load(out)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, lm.params), params[1])
    np.testing.assert_allclose(lm.logits(TOKENS), _ours(cfg, mesh, params[1]), atol=1e-4)
    # Prompted as the run trained: the objective's template travels with the model.
    assert lm.prompt_template == jaxalign.load(path).prompt_template != "{prompt}"
    card = (out / "README.md").read_text()
    assert "- step: 1" in card and "- format: orbax (float32)" in card and "jaxalign.load(DIR)" in card
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    assert "'hello' ->" in capsys.readouterr().out


def test_bfloat16_halves_the_bytes(workdir, tmp_path):
    path = workdir[0]
    size = lambda d: sum(os.path.getsize(f) for f in d.glob("*.safetensors"))  # noqa: E731
    f32 = export.export(path, tmp_path / "f32")
    bf16 = export.export(path, tmp_path / "bf16", dtype="bfloat16")
    assert abs(size(bf16) / size(f32) - 0.5) < 0.01
    assert json.loads((bf16 / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model = export.export(path, tmp_path / "m", fmt="orbax", dtype="bfloat16")
    assert jaxalign.load(model).cfg.param_dtype == "bfloat16"


def test_errors_leave_things_untouched(workdir, tmp_path, capsys):
    path = workdir[0]
    assert cli.main(["export", "--checkpoint", str(path), "--step", "7", "--out", str(tmp_path / "x")]) != 0
    assert "kept steps: [1, 2]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["export", "--checkpoint", str(path), "--out", str(out)]) != 0
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    with pytest.raises(FileNotFoundError, match="neither a train workdir"):
        export.export(tmp_path, tmp_path / "y")
    model = export.export(path, tmp_path / "model", fmt="orbax")
    with pytest.raises(ValueError, match="--step is for train workdirs"):
        export.export(model, tmp_path / "z", step=1)


@pytest.mark.parametrize("fmt", ["hf", "orbax"])
def test_export_is_streamed(tmp_path, fmt):
    """Peak traced host allocation stays near one parameter plus one shard, far below the model.

    The model has ~57 MB of float32 params: 10 unscanned layers of ~4 MB and an embedding and
    lm_head of 8 MB each, the largest leaves. The streamed export holds the leaf being converted
    (8 MB), its converted copy (8 MB) and the shard being filled (max_shard_bytes = one leaf,
    plus at most one more leaf: 16 MB): about 32 MB in the worst case, against the whole model
    (57 MB, twice that with the converted copies) for gathering everything first.
    """
    tok = demo_tokenizer()
    # Unscanned for HF, whose shards collect a stacked leaf's layers; scanned for orbax, so that
    # its partial saves (one per leaf, a fraction of a second each) stay few.
    cfg = get_preset("tiny", vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=10,
                     scan_layers=fmt == "orbax")
    rng = np.random.default_rng(0)  # host arrays: quicker than initialising on the devices
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32) * 0.02, models.param_shapes(cfg))
    modeldir.save_model(tmp_path / "model", params, cfg, tok)
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    largest = max(x.nbytes for x in jax.tree.leaves(params))
    del params
    assert total > 40e6 and largest * 5 < total
    tracemalloc.start()
    try:
        out = export.export(tmp_path / "model", tmp_path / fmt, fmt=fmt, max_shard_bytes=largest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.6 * total, (peak, total)
    if fmt == "hf":
        assert len(list(out.glob("*.safetensors"))) > 1
        model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        assert model.config.vocab_size == 8192
    else:
        assert jaxalign.load(out).cfg == cfg


def test_an_output_that_is_contains_or_lies_in_the_source_is_refused(workdir, tmp_path, capsys):
    """--overwrite or not: writing there would delete what is being read."""
    runs = tmp_path / "runs"
    source = runs / "w"
    shutil.copytree(workdir[0], source)
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    for out, relation in ((source, "is"), (runs, "contains"), (source / "hf", "lies inside")):
        argv = ["export", "--checkpoint", str(source), "--out", str(out), "--overwrite"]
        assert cli.main(argv) == 2
        assert f"{relation} the source" in capsys.readouterr().err
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before
    # import-hf reading an HF directory and writing over it
    hf_dir = export.export(source, tmp_path / "hf")
    files = sorted(p.name for p in hf_dir.iterdir())
    assert cli.main(["import-hf", "--from", str(hf_dir), "--out", str(hf_dir), "--overwrite"]) == 2
    assert "is the source" in capsys.readouterr().err
    assert sorted(p.name for p in hf_dir.iterdir()) == files
