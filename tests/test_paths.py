"""jaxalign.paths on a local disk and on a bucket of a real GCS server (the emulator)."""

import pytest

from jaxalign import paths


def test_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(paths.path("runs/a")) == str(tmp_path / "runs" / "a")
    assert str(paths.path("gs://b/runs/a")) == "gs://b/runs/a"
    assert paths.is_url("gs://b/x") and paths.is_url("s3://b") and not paths.is_url("gs:/b")


@pytest.fixture(params=["local", "bucket"])
def root(request, tmp_path):
    return request.getfixturevalue("bucket") if request.param == "bucket" else tmp_path


def test_write_append_truncate(root):
    f = root / "d" / "log.jsonl"
    if not paths.is_url(f):
        f.parent.mkdir()
    paths.append(f, b"one\n")
    paths.append(f, b"two\n")
    assert f.read_bytes() == b"one\ntwo\n"
    paths.truncate(f, 4)
    assert f.read_bytes() == b"one\n"
    paths.write_atomic(f, "new")
    assert f.read_text() == "new"
    assert [p.name for p in f.parent.iterdir()] == ["log.jsonl"]  # no temporary file left


def test_move_tree_and_local_copy(root):
    src = root / "tmp"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.bin").write_bytes(b"a")
    (src / "marker.json").write_text("{}")
    paths.move_tree(src, root / "out", last=["marker.json"])
    assert not src.exists()
    assert (root / "out" / "sub" / "a.bin").read_bytes() == b"a"
    with paths.local_copy(root / "out") as local:
        assert not paths.is_url(local)
        assert (local / "sub" / "a.bin").read_bytes() == b"a" and (local / "marker.json").exists()
    paths.rmtree(root / "out")
    assert not (root / "out").exists()


def test_create_exclusive(root):
    f = root / "lock"
    assert paths.create_exclusive(f, "first")
    assert not paths.create_exclusive(f, "second")
    assert f.read_text() == "first"
