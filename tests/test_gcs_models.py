"""Model directories in a bucket: export, load, save, import-hf and eval reports with gs:// URLs, on a
real GCS server (the emulator of tests/conftest.py)."""

import dataclasses
import json
import os
from pathlib import Path

import fsspec.core
import jax
import numpy as np
import pytest

import jaxalign
from jaxalign import cli, hf, modeldir, paths
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.models import get_preset

TOKENS = np.random.default_rng(0).integers(3, 200, (2, 10))
MESH = "dp:1,fsdp:-1,tp:1"
DEFAULT = Path(__file__).resolve().parents[1] / "experiments" / "default.py"


@pytest.fixture(scope="module")
def lm():
    tok = demo_tokenizer()
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, initializer_range=0.2)
    return jaxalign.init(cfg, mesh=MESH, seed=3, tokenizer=tok)


@pytest.fixture(autouse=True)
def cwd(tmp_path, monkeypatch):
    """Each test runs in an empty directory: a URL mistaken for a local path would make ``gs:`` there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert os.listdir(cwd) == []


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def _files(directory):
    return {os.path.relpath(str(f), str(directory)) for f in paths._files(directory)}


def test_export_to_a_bucket_and_load_from_it(lm, bucket, tmp_path):
    lm.save(tmp_path / "m")
    model, hf_dir = bucket / "model", bucket / "hf"
    assert cli.main(["export", "--checkpoint", str(tmp_path / "m"), "--out", str(model),
                     "--format", "orbax"]) == 0
    assert _names(model) == ["README.md", "jaxalign_model.json", "params", "tokenizer"]
    again = jaxalign.load(str(model), mesh="1,-1,1")
    np.testing.assert_allclose(again.logits(TOKENS), lm.logits(TOKENS), atol=1e-5)
    assert again.tokenizer.encode("hello there") == lm.tokenizer.encode("hello there")
    # From the bucket to the bucket, as Hugging Face safetensors.
    assert cli.main(["export", "--checkpoint", str(model), "--out", str(hf_dir)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.model", "README.md"} <= set(_names(hf_dir))
    np.testing.assert_allclose(jaxalign.load(hf_dir, mesh=MESH).logits(TOKENS), lm.logits(TOKENS), atol=1e-5)
    assert _names(bucket) == ["hf", "model"]  # no temporary prefix left


def test_save_hf_and_import_hf_through_the_bucket(lm, bucket, capsys):
    hf_dir = lm.save_hf(str(bucket / "hf"))
    assert paths.is_url(hf_dir)
    assert json.loads((hf_dir / "config.json").read_text())["pad_token_id"] == lm.tokenizer.pad_id
    assert cli.main(["import-hf", "--from", str(hf_dir), "--out", str(bucket / "jx"), "--mesh", MESH]) == 0
    assert f"wrote {bucket / 'jx'}" in capsys.readouterr().out
    assert modeldir.is_model_dir(bucket / "jx")
    again = jaxalign.load(bucket / "jx", mesh=MESH)
    np.testing.assert_allclose(again.logits(TOKENS), lm.logits(TOKENS), atol=1e-5)
    assert again.tokenizer.encode("hello there") == lm.tokenizer.encode("hello there")


def test_sharded_hf_checkpoint_in_a_bucket(lm, bucket):
    out = hf.export_checkpoint(lm.params, lm.cfg, bucket / "hf", max_shard_bytes=100_000)
    assert hf.INDEX_FILE in _names(out) and len(list(out.glob("*.safetensors"))) > 1
    cfg, params = hf.import_checkpoint(out, lm.mesh)
    assert cfg == lm.cfg
    jax.tree.map(np.testing.assert_array_equal, params, lm.params)


def test_overlapping_urls_are_refused(bucket, capsys):
    run = str(bucket / "run")
    for out, relation in ((run, "is"), (str(bucket), "contains"), (f"{run}/export", "lies inside"),
                          (f"{run}/", "is")):
        with pytest.raises(ValueError, match=f"{relation} the source"):
            modeldir.check_apart(out, [run])
    modeldir.check_apart(f"{run}-2", [run])  # a sibling whose name starts alike
    modeldir.check_apart(run, ["run"])  # a local path is never a URL
    assert cli.main(["import-hf", "--from", run, "--out", f"{run}/export", "--overwrite"]) == 2
    assert "lies inside the source" in capsys.readouterr().err


def test_overwrite_in_a_bucket_keeps_one_complete_version(lm, bucket, monkeypatch):
    out = bucket / "m"
    lm.save(out)
    with pytest.raises(FileExistsError, match="not empty"):
        lm.save(out)
    with pytest.raises(RuntimeError, match="crash"):
        with modeldir.staged_directory(out, overwrite=True) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("crash while writing")
    assert _names(bucket) == ["m"] and jaxalign.load(out, mesh=MESH).cfg == lm.cfg

    # A reader that looks in `out` after every object copied: whenever the marker is there, so is
    # every other file of one version.
    seen = []
    fs = fsspec.core.url_to_fs(str(out))[0]  # the cached instance jaxalign.paths copies with
    copy = fs.copy

    def watched_copy(src, dst, *args, **kwargs):
        result = copy(src, dst, *args, **kwargs)
        if (out / modeldir.MODEL_FILE).is_file():
            seen.append(_files(out))
        return result

    monkeypatch.setattr(fs, "copy", watched_copy)
    v2 = dataclasses.replace(lm, params=jax.tree.map(lambda x: x * 2, lm.params))
    v2.save(out, overwrite=True)
    monkeypatch.undo()
    assert seen and all(files == _files(out) for files in seen)  # the new version, complete
    np.testing.assert_allclose(jaxalign.load(out, mesh=MESH).logits(TOKENS), v2.logits(TOKENS), atol=1e-5)
    assert _names(bucket) == ["m"]  # neither the old version nor the temporary one is left


def test_eval_report_into_a_bucket(lm, bucket, capsys):
    lm.save(bucket / "m")
    report = bucket / "reports" / "eval.json"
    assert cli.main(["eval", "--config", str(DEFAULT), "--checkpoint", str(bucket / "m"), "--out",
                     str(report), "--mesh", MESH, "--num-eval", "2", "--max-new-tokens", "2"]) == 0
    assert f"wrote {report}" in capsys.readouterr().out
    written = json.loads(report.read_text())
    assert written["checkpoint"] == str(bucket / "m") and written["num_eval"] == 2
    assert _names(report.parent) == ["eval.json"]
