"""Hub ids as model paths (jaxalign/hub.py), offline: the tests lay out a Hugging Face Hub cache
(models--org--name/{refs,snapshots}) holding a tiny exported checkpoint, as snapshot_download leaves
it, and HF_HUB_OFFLINE=1 (tests/conftest.py) keeps every read in that cache."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
from huggingface_hub import constants

import jaxalign
from jaxalign import hub
from jaxalign.data.tokenizer import demo_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hub cache holding org/tiny at `main` and at tag `v1` (the same snapshot)."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE
    lm = jaxalign.init("tiny", mesh="dp:1,fsdp:-1,tp:1", seed=3, tokenizer=demo_tokenizer())
    export = lm.save_hf(tmp_path / "export")
    repo = cache / "models--org--tiny"
    shutil.copytree(export, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    for ref in ("main", "v1"):
        (repo / "refs" / ref).write_text(COMMIT)
    return lm


def test_a_hub_id_loads_from_the_cache(hub_cache):
    for name in ("org/tiny", "org/tiny@v1", f"org/tiny@{COMMIT}"):
        lm = jaxalign.load(name)
        assert lm.cfg.num_hidden_layers == hub_cache.cfg.num_hidden_layers and lm.tokenizer is not None
        for got, want in zip(jax.tree.leaves(lm.params), jax.tree.leaves(hub_cache.params), strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_missing_paths_and_ids_say_what_is_missing(hub_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        jaxalign.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"org/other: no such local path, and fetching it as a "
                                                r"Hugging Face Hub model failed \(HF_HUB_OFFLINE"):
        jaxalign.load("org/other")
    with pytest.raises(FileNotFoundError, match="org/tiny@v2: no such local path"):
        jaxalign.load("org/tiny@v2")


def test_local_directories_and_urls_win_over_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "tiny").mkdir(parents=True)
    assert hub.resolve("org/tiny") == "org/tiny"  # an existing local directory is never fetched
    assert hub.resolve("gs://bucket/model") == "gs://bucket/model"
    assert hub.is_hub_id("meta-llama/Llama-3.2-1B@main") and not hub.is_hub_id("./a/b")
    assert not hub.is_hub_id("/abs/path") and not hub.is_hub_id("a/b/c")
