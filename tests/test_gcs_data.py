"""Data in a bucket (a real GCS server on localhost, tests/conftest.py): upstream files read and TFDS
builds made from and into ``gs://``, data.jsonl and pretrain.jsonl, tokenizers, SANDBOX records and
a simulation's run directory, Mistake Analysis journals; each gives what a local disk gives."""

import gzip
import json
import lzma
import os
import re
import sys
from pathlib import Path

import pytest
from test_feedback_builders import _all, _hh_source
from test_mistake_analysis import OUTPUTS, Script
from test_mistake_analysis import _config as mistakes_config
from test_sandbox import _config as sandbox_config
from test_sandbox_data import _data_config, _society, _source
from test_tokenizer import TEXTS, _tokenizers_bpe

from jaxalign import api, paths
from jaxalign.data import jsonl, sources
from jaxalign.data import sandbox_alignment as ad
from jaxalign.data import sandbox_records as records
from jaxalign.data.builders import feedback_common, hh_red_team, reading, sandbox
from jaxalign.data.builders.feedback import prepare, skip_report
from jaxalign.data.journal import Journal
from jaxalign.data.tokenizer import Tokenizer, demo_tokenizer
from jaxalign.methods import mistakes as ma
from jaxalign.methods.sandbox import simulation
from jaxalign.models import get_preset

REPO = Path(__file__).resolve().parents[1]
MESH = "dp:2,fsdp:4,tp:1"


@pytest.fixture(autouse=True)
def _in_a_bucket(gcs_emulator, tmp_path, monkeypatch):
    """array_record reads gs:// itself (google-cloud-cpp), which goes to the emulator only when told;
    without this it would look for the real GCS, out of reach here. A path that lost its scheme
    would become a local `gs:` directory: there must be none after the test."""
    monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", os.environ["STORAGE_EMULATOR_HOST"])
    monkeypatch.chdir(tmp_path)
    yield
    assert not list(tmp_path.rglob("gs:")) and not (REPO / "gs:").exists()


def _names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- upstream files, TFDS builds


def test_upstream_files_stream_from_a_bucket_as_from_a_disk(bucket, tmp_path):
    data = b'{"a": 1}\n\n\xff not UTF-8\n{"b": "\xc3\xa9"}\n'
    files = {"x.jsonl": data, "x.jsonl.gz": gzip.compress(data), "x.jsonl.xz": lzma.compress(data),
             "x.csv": b'prompt,text\n"a, ""b""\nc",x\nonly one field\n',
             "array.jsonl.gz": gzip.compress(b'[{"transcript": "t"},\n 3]')}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        (bucket / name).write_bytes(content)

    def shown(items):  # a Skip is an exception: compare its text
        return [(n, str(x) if isinstance(x, reading.Skip) else x) for n, x in items]

    for name in ("x.jsonl", "x.jsonl.gz", "x.jsonl.xz"):
        assert shown(reading.read_lines(bucket / name)) == shown(reading.read_lines(tmp_path / name)) == [
            (1, '{"a": 1}'), (3, "bad_utf8: byte 1 is not UTF-8"), (4, '{"b": "é"}')]
    assert shown(reading.read_csv(bucket / "x.csv", ["prompt"])) == shown(
        reading.read_csv(tmp_path / "x.csv", ["prompt"])) == [
        (2, {"prompt": 'a, "b"\nc', "text": "x"}), (4, "bad_csv: 1 fields, the header has 2")]
    assert list(hh_red_team.read_objects(bucket / "array.jsonl.gz")) == [(1, {"transcript": "t"}), (2, 3)]
    (bucket / "lfs.jsonl.gz").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ValueError, match=re.escape(f"{bucket}/lfs.jsonl.gz: unreadable") + ".*Git LFS"):
        list(reading.read_lines(bucket / "lfs.jsonl.gz"))


def test_feedback_build_reads_its_source_from_and_lands_in_a_bucket(bucket, tmp_path, monkeypatch):
    _hh_source(tmp_path / "hh-rlhf")
    source, build = bucket / "hh-rlhf", bucket / "tfds"
    paths.copy_tree(tmp_path / "hh-rlhf", source)
    local = prepare("hh_rlhf", tmp_path / "hh-rlhf", tmp_path / "tfds")
    remote = prepare("hh_rlhf", source, build)
    assert "tensorflow" not in sys.modules
    assert {s: _all(d) for s, d in remote.items()} == {s: _all(d) for s, d in local.items()}
    assert skip_report("hh_rlhf", build) == skip_report("hh_rlhf", tmp_path / "tfds")
    version = build / "hh_rlhf" / "1.0.0"  # the local build's files, copied up
    assert _names(version) == _names(tmp_path / "tfds" / "hh_rlhf" / "1.0.0")
    assert _names(build) == ["hh_rlhf"]

    with monkeypatch.context() as patch:  # unchanged source files: the build in the bucket is reused
        patch.setattr(feedback_common, "build", lambda *args: pytest.fail("rebuilt an unchanged build"))
        assert len(prepare("hh_rlhf", source, build)["test"]) == 2
    (source / "helpful-base" / "test.jsonl.gz").write_bytes(
        gzip.compress(json.dumps({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.",
                                  "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}).encode() + b"\n"))
    rebuilt = _all(prepare("hh_rlhf", source, build)["test"])
    assert [r["chosen"] for r in rebuilt] == ["No.", "Hello."]
    assert _names(version) == _names(tmp_path / "tfds" / "hh_rlhf" / "1.0.0")  # replaced, not added to


# --------------------------------------------------------------------------- data.jsonl, pretrain, tokenizers


def test_data_and_pretrain_jsonl_and_the_workdir_tokenizer_in_a_bucket(bucket, tmp_path):
    pairs = [{"prompt": f"Question {i}?", "chosen": f"A kind answer {i}.", "rejected": f"No {i}."}
             for i in range(12)]
    texts = [{"text": f"Some plain text number {i}."} for i in range(5)]
    for root in (tmp_path, bucket):
        (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
        (root / "pretrain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts))

    def build(root):
        data_cfg = _data_config(jsonl=str(root / "data.jsonl"), vocab_size=300)
        pretrain_cfg = sources.default_pretrain_config()
        pretrain_cfg.update(weight=0.5, jsonl=str(root / "pretrain.jsonl"))
        return sources.build(data_cfg, root / "run", seed=0, pretrain_cfg=pretrain_cfg)

    local, remote = build(tmp_path), build(bucket)
    assert remote.train == local.train == pairs and remote.pretrain == local.pretrain == texts
    saved = bucket / "run" / "tokenizer"  # trained on the data and saved in the workdir, as locally
    assert _names(saved) == _names(tmp_path / "run" / "tokenizer")
    for name in _names(saved):
        assert (saved / name).read_bytes() == (tmp_path / "run" / "tokenizer" / name).read_bytes()
    again = build(bucket)  # a resumed run loads the workdir's tokenizer
    assert [again.tokenizer.encode(t) for t in TEXTS] == [local.tokenizer.encode(t) for t in TEXTS]

    bad = bucket / "bad.jsonl"
    bad.write_text(json.dumps(pairs[0]) + '\n{"prompt": "p", "chosen": 3, "rejected": "r"}\n')
    with pytest.raises(jsonl.RecordError, match=re.escape(f"{bad}:2: field 'chosen' must be a string")):
        list(jsonl.read_records(bad, "preference"))


def test_tokenizers_save_to_and_load_from_a_bucket(bucket, tmp_path):
    for name, tok in (("sp", demo_tokenizer()), ("hf", _tokenizers_bpe())):
        out = tok.save_pretrained(bucket / name)
        assert str(out) == f"{bucket}/{name}"
        tok.save_pretrained(tmp_path / name)
        assert _names(out) == _names(tmp_path / name)
        for file in _names(out):
            assert (out / file).read_bytes() == (tmp_path / name / file).read_bytes(), file
        loaded = Tokenizer.load(out)
        assert type(loaded) is type(tok)
        assert [loaded.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
    one_file = Tokenizer.load(bucket / "sp" / "tokenizer.model")  # a file, by its URL
    assert one_file.encode(TEXTS[0]) == demo_tokenizer().encode(TEXTS[0])
    with pytest.raises(FileNotFoundError, match=re.escape(f"{bucket}/nope: no such file")):
        Tokenizer.load(bucket / "nope")


# --------------------------------------------------------------------------- SANDBOX


def test_sandbox_records_groups_and_build_in_a_bucket(bucket, tmp_path):
    path, society = bucket / "records.jsonl", _society()
    assert records.append_records(path, society[:2]) == 2 and records.append_records(path, society[2:]) == 2
    assert list(records.read_records(path)) == society
    paths.append(path, records.format_record(society[0]).encode()[:30])  # a torn last line
    with pytest.raises(records.InteractionError, match=re.escape(f"{path}:5: invalid JSON")):
        list(records.read_records(path))
    groups = ad.alignment_groups(society)
    assert ad.write_groups(groups, bucket / "alignment.jsonl") == len(groups)
    ad.write_groups(groups, tmp_path / "a.jsonl")
    assert (bucket / "alignment.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()
    assert _names(bucket) == ["alignment.jsonl", "records.jsonl"]  # no temporary object left

    local_source = _source(tmp_path)
    paths.copy_tree(local_source, bucket / "source")
    remote = sandbox.prepare(bucket / "source", bucket / "tfds")
    local = sandbox.prepare(local_source, tmp_path / "tfds")
    assert {s: [sandbox.decode_record(d[i]) for i in range(len(d))] for s, d in remote.items()} == \
        {s: [sandbox.decode_record(d[i]) for i in range(len(d))] for s, d in local.items()}
    assert sandbox.build_report(bucket / "tfds") == sandbox.build_report(tmp_path / "tfds")
    # data.stage through sources.build: the build goes to the workdir's tfds/, in the bucket.
    tok = demo_tokenizer()
    stage = {"dataset": "sandbox", "stage": "realignment"}
    data = sources.build(_data_config(source_dir=str(bucket / "source"), **stage), bucket / "work", 0,
                         tokenizer=tok)
    expected = sources.build(_data_config(source_dir=str(local_source), **stage), tmp_path / "work", 0,
                             tokenizer=tok)
    assert (bucket / "work" / "tfds" / "sandbox" / "1.0.0" / "dataset_info.json").is_file()
    assert [data.train[i] for i in range(len(data.train))] == \
        [expected.train[i] for i in range(len(expected.train))]
    assert data.eval == expected.eval and len(data.eval) == 2


@pytest.fixture(scope="module")
def model(tmp_path_factory, devices) -> str:
    """A random tiny model with the demo tokenizer, on the local disk (the workdirs are in the bucket)."""
    tok = demo_tokenizer()
    path = tmp_path_factory.mktemp("gcs_model") / "model"
    api.init(get_preset("tiny", vocab_size=tok.vocab_size), MESH, tokenizer=tok).save(path)
    return str(path)


def test_sandbox_run_in_a_bucket_drops_a_torn_round_and_resumes_to_the_local_bytes(model, bucket, tmp_path,
                                                                                   monkeypatch):
    config = sandbox_config(model, agents__num_agents=2, agents__grid_size=2, questions__num=2,
                            sampling__max_new_tokens=4)
    config.rounds = 2
    simulation.run(config, tmp_path / "whole", progress=False)
    commit, workdir = simulation._commit, bucket / "run"

    def crash_after_writing(workdir, society, new, rounds_done):
        if rounds_done == 2:  # the round's records and a torn line are in the bucket, its progress is not
            paths.append(workdir / simulation.RECORDS, records.format_record(new[0]).encode()[:40])
            raise KeyboardInterrupt
        commit(workdir, society, new, rounds_done)

    monkeypatch.setattr(simulation, "_commit", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        simulation.run(config, workdir, progress=False)
    monkeypatch.setattr(simulation, "_commit", commit)
    assert json.loads((workdir / simulation.PROGRESS).read_text())["rounds_done"] == 1
    summary = simulation.run(config, workdir, progress=False)
    assert summary["rounds_played"] == 1 and summary["workdir"] == str(workdir)
    whole = (tmp_path / "whole" / simulation.RECORDS).read_bytes()
    assert (workdir / simulation.RECORDS).read_bytes() == whole
    assert _names(workdir) == [simulation.CONFIG, simulation.PROGRESS, simulation.RECORDS]


# --------------------------------------------------------------------------- Mistake Analysis


def test_journal_in_a_bucket_drops_a_torn_chunk(bucket):
    journal = Journal(bucket / "stage.jsonl")
    assert journal.chunks_done == 0 and (bucket / "stage.jsonl").read_bytes() == b""
    journal.commit([{"id": 0, "text": "caf\u00e9"}])
    good = (bucket / "stage.jsonl").read_bytes()
    assert json.loads(journal.progress_path.read_text()) == {"chunks": 1, "bytes": len(good)}
    paths.append(journal.path, b'{"id": 1}\n{"id": 2, "te\xff')  # a whole line and a torn one
    reopened = Journal(bucket / "stage.jsonl")
    assert reopened.chunks_done == 1 and (bucket / "stage.jsonl").read_bytes() == good
    reopened.commit([{"id": 1}])
    assert Journal(bucket / "stage.jsonl").records() == [{"id": 0, "text": "café"}, {"id": 1}]
    assert _names(bucket) == ["stage.jsonl", "stage.progress.json"]


def test_mistakes_run_in_a_bucket_resumes_to_the_local_bytes(model, bucket, tmp_path, monkeypatch):
    """Instructions from a data.jsonl in the bucket; the run dies with half a chunk written and resumes."""
    instructions = ma.load_instructions(mistakes_config(model), tmp_path, None)
    for root in (tmp_path, bucket):
        (root / "instructions.jsonl").write_text("".join(json.dumps({"text": x}) + "\n"
                                                         for x in instructions))
    Script(instructions).install(monkeypatch)

    def config(root):
        return mistakes_config(model, instructions__task="",
                               instructions__jsonl=str(root / "instructions.jsonl"))

    ma.run(config(tmp_path), tmp_path / "whole", progress=False)
    workdir, real, count = bucket / "run", Journal.commit, [0]

    def commit(journal, rows):  # the third commit (induce's last chunk) dies half-way
        count[0] += 1
        if count[0] == 3:
            line = json.dumps(rows[0]).encode()
            paths.append(journal.path, line[: len(line) // 2])
            raise KeyboardInterrupt
        real(journal, rows)

    with monkeypatch.context() as patch:
        patch.setattr(Journal, "commit", commit)
        with pytest.raises(KeyboardInterrupt):
            ma.run(config(bucket), workdir, progress=False)
    progress = json.loads((workdir / "induced.progress.json").read_text())
    assert progress["chunks"] == 2 and (workdir / "induced.jsonl").stat().length > progress["bytes"]
    summary = ma.run(config(bucket), workdir, progress=False)
    assert summary["workdir"] == str(workdir)
    for name in OUTPUTS:
        assert (workdir / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not [p.name for p in workdir.iterdir() if "tmp" in p.name]
