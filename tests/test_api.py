"""The notebook API and the CLI, end to end on tiny models."""

import json

import numpy as np
import pytest

import jaxalign
from jaxalign import cli, modeldir
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.models import get_preset

TOKENS = np.random.default_rng(0).integers(3, 200, (8, 12))


@pytest.fixture(scope="module")
def lm():
    tok = demo_tokenizer()
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, initializer_range=0.2)
    return jaxalign.init(cfg, mesh="dp:2,fsdp:2,tp:2", seed=3, tokenizer=tok)


def test_logits_and_generate(lm):
    logits = lm.logits(TOKENS)
    assert isinstance(logits, np.ndarray) and logits.shape == (8, 12, lm.cfg.vocab_size)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    texts = lm.generate(["hello there", "a"], max_new_tokens=6, seed=1)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    ids = lm.generate([[1, 5, 6], [1, 7]], max_new_tokens=5)
    assert len(ids) == 2 and all(1 <= len(r) <= 5 for r in ids)  # shorter only if EOS came
    assert all(0 <= t < lm.cfg.vocab_size for r in ids for t in r)
    assert lm.generate(["hello there"], max_new_tokens=6, seed=1) == texts[:1]
    with pytest.raises(ValueError, match="must be \\[batch, len\\]"):
        lm.logits([1, 2, 3])


def test_save_and_load_on_another_mesh(lm, tmp_path):
    lm.save(tmp_path / "m")
    again = jaxalign.load(tmp_path / "m", mesh="1,-1,1")
    assert again.cfg == lm.cfg
    assert dict(again.mesh.shape) == {"dp": 1, "fsdp": 8, "tp": 1}
    np.testing.assert_allclose(again.logits(TOKENS), lm.logits(TOKENS), atol=1e-5)
    assert again.tokenizer.encode("hello there") == lm.tokenizer.encode("hello there")
    # Nothing saved is overwritten by accident.
    with pytest.raises(FileExistsError, match="not empty"):
        lm.save(tmp_path / "m")


def test_save_hf_and_load_back(lm, tmp_path):
    out = lm.save_hf(tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["pad_token_id"] == lm.tokenizer.pad_id
    again = jaxalign.load(out, mesh="dp:1,fsdp:2,tp:4")
    np.testing.assert_allclose(again.logits(TOKENS), lm.logits(TOKENS), atol=1e-4)
    assert again.generate(["hello"], max_new_tokens=4) == lm.generate(["hello"], max_new_tokens=4)


def test_load_errors(lm, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a jaxalign model directory"):
        jaxalign.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        jaxalign.load(tmp_path / "missing")
    lm.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / modeldir.MODEL_FILE).read_text())
    meta["model"]["hidden_size"] = 32
    (tmp_path / "m" / modeldir.MODEL_FILE).write_text(json.dumps(meta))
    with pytest.raises(modeldir.CheckpointMismatchError, match="embed_tokens/embedding: saved shape"):
        jaxalign.load(tmp_path / "m")
    tiny = jaxalign.init("tiny", mesh="dp:1,fsdp:-1,tp:1")  # the demo tokenizer: text prompts work
    assert isinstance(tiny.generate(["hi"], max_new_tokens=2)[0], str)
    with pytest.raises(ValueError, match="text prompts need a tokenizer"):
        jaxalign.init(get_preset("tiny", vocab_size=300), mesh="dp:1,fsdp:-1,tp:1").generate(["hi"])
    assert {"LM", "init", "load"} <= set(dir(jaxalign))  # tab completion sees the lazy names


def test_cli_generate_import_export(lm, tmp_path, capsys):
    assert cli.main(["generate", "--preset", "tiny", "--prompt", "hi", "--prompt", "yo",
                     "--max-new-tokens", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("'hi' -> ") and lines[1].startswith("'yo' -> ")

    lm.save_hf(tmp_path / "hf")
    assert cli.main(["import-hf", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "jx")]) == 0
    assert modeldir.is_model_dir(tmp_path / "jx")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "jx"), "--out", str(tmp_path / "hf2"),
                     "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert cli.main(["generate", "--checkpoint", str(tmp_path / "jx"), "--prompt", "hello",
                     "--max-new-tokens", "4"]) == 0
    capsys.readouterr()

    # An existing output is refused with one line and exit code 2, and left as it was.
    before = sorted(p.name for p in (tmp_path / "jx").rglob("*"))
    assert cli.main(["import-hf", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "jx")]) == 2
    assert "jaxalign: error:" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "jx").rglob("*")) == before


def test_cli_generate_without_a_tokenizer(tmp_path, capsys):
    """An HF export without tokenizer files: text prompts are refused naming both ways out, token-id
    prompts are answered with ids, and --tokenizer gives it one."""
    bare = jaxalign.init(get_preset("tiny", vocab_size=300), mesh="dp:1,fsdp:-1,tp:1", seed=1)
    bare.save_hf(tmp_path / "hf")
    hf = str(tmp_path / "hf")
    assert cli.main(["generate", "--checkpoint", hf, "--prompt", "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxalign: error:") and "\n" not in err
    assert "--tokenizer PATH" in err and "--prompt-ids" in err

    assert cli.main(["generate", "--checkpoint", hf, "--prompt-ids", "1,5,6", "--prompt-ids", "1, 7",
                     "--max-new-tokens", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = bare.generate([[1, 5, 6], [1, 7]], max_new_tokens=3)
    assert lines == [f"[1, 5, 6] -> {expected[0]}", f"[1, 7] -> {expected[1]}"]

    demo_tokenizer().save_pretrained(tmp_path / "tok")
    assert cli.main(["generate", "--checkpoint", hf, "--tokenizer", str(tmp_path / "tok"),
                     "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("'hello' -> ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--preset", "tiny", "--prompt", "x", "--mesh", "3,-1,1"], "does not divide"),
        (["generate", "--preset", "tiny", "--prompt-ids", "1,x"], "not comma-separated token ids"),
        (["generate", "--preset", "tiny", "--prompt-ids", "1,256"], "[256] outside the model's vocabulary"),
        (["generate", "--preset", "tiny", "--prompt-ids", "1", "--guided"], "use it with --prompt"),
        (["generate", "--preset", "tiny", "--prompt", "x", "--tokenizer", "/nonexistent"], "/nonexistent"),
        (["generate", "--preset", "huge", "--prompt", "x"], "unknown model preset 'huge'"),
        (["generate", "--checkpoint", "/nonexistent", "--prompt", "x"], "/nonexistent: no such file"),
    ],
)
def test_cli_bad_input_is_one_clear_error(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("jaxalign: error:") and message in err[-1]


def test_staged_directory_never_loses_what_was_saved(tmp_path):
    out = tmp_path / "model"
    with modeldir.staged_directory(out) as tmp:
        (tmp / "weights").write_text("v1")
    assert (out / "weights").read_text() == "v1"
    with pytest.raises(FileExistsError, match="not empty"):
        with modeldir.staged_directory(out):
            pass
    with pytest.raises(RuntimeError, match="crash"):
        with modeldir.staged_directory(out, overwrite=True) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("crash while writing")
    assert (out / "weights").read_text() == "v1"  # the old version survives a failed write
    with modeldir.staged_directory(out, overwrite=True) as tmp:
        (tmp / "weights").write_text("v2")
    assert (out / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no tmp or old dirs left

