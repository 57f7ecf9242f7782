"""jaxalign.data.sources on the real-data path (issue #21): a dataset or jsonl is enough without
blanking data.task, num_train 0 keeps every record (the synthetic default unchanged), pretraining
text from the training records (pretrain.from_train), the warning for a small tokenizer trained on
real text, and resuming a run saved with the older defaults."""

import gzip
import json
import logging
import shutil
from pathlib import Path

import ml_collections
import pytest

from jaxalign import config as config_lib
from jaxalign.data import dialogue, sources, synthetic
from jaxalign.data.builders import hh_rlhf
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.train import run as run_lib
from jaxalign.train.defaults import default_train_config

SLICE = Path(__file__).resolve().parent / "data" / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"


def _pairs(path, n):
    path.write_text("".join(json.dumps({"prompt": f"Q{i}:", "chosen": f"good {i}", "rejected": f"bad {i}"})
                            + "\n" for i in range(n)))
    return str(path)


@pytest.fixture(scope="module")
def hh(tmp_path_factory):
    """An hh_rlhf source from the committed slice (its test file as both splits, as the slice's
    README says) and a tfds directory the tests share, so the dataset is built once."""
    root = tmp_path_factory.mktemp("hh")
    subset = root / "source" / "harmless-base"
    subset.mkdir(parents=True)
    for split in ("train", "test"):
        shutil.copy(SLICE, subset / f"{split}.jsonl.gz")
    return {"dataset": "hh_rlhf", "source_dir": str(root / "source"), "tfds_dir": str(root / "tfds")}


def _data(**changes):
    cfg = sources.default_data_config()
    cfg.update(changes)
    return cfg


# --------------------------------------------------------------------------- data.task, num_train


def test_the_default_is_the_sort_task_with_4000_examples_as_before(tmp_path):
    data = sources.build(sources.default_data_config(), tmp_path, seed=3, tokenizer=demo_tokenizer())
    assert data.task.name == "sort" and len(data.train) == sources.SYNTHETIC_NUM_TRAIN == 4000
    sort = synthetic.get_task("sort")
    assert data.train == synthetic.to_records(synthetic.make_split(sort, "train", 4000, 3))
    assert len(sources.build(_data(num_train=10), tmp_path, 3, tokenizer=demo_tokenizer()).train) == 10
    harmless = sources.build(_data(task="harmless"), tmp_path, 3, tokenizer=demo_tokenizer())
    assert harmless.task.name == "harmless" and len(harmless.train) == 4000


def test_a_jsonl_needs_no_blank_task_and_keeps_every_record(tmp_path, caplog):
    cfg = _data(jsonl=_pairs(tmp_path / "p.jsonl", 4500))
    data = sources.build(cfg, tmp_path / "run", seed=0, tokenizer=demo_tokenizer())
    assert data.task is None and len(data.train) == 4500  # no silent cap at 4000
    assert "keeps the first" not in caplog.text


def test_a_dataset_needs_no_blank_task(hh, tmp_path):
    data = sources.build(_data(**hh), tmp_path, seed=0, tokenizer=demo_tokenizer())
    assert data.task is None and data.schema == "preference" and len(data.train) == 299  # line 87: skipped


def test_a_blank_task_without_another_source_is_an_error(tmp_path):
    """task "" (a config whose data.jsonl is to be given on the command line) is no synthetic task:
    forgetting the file must not train on the default one."""
    assert sources.default_data_config().task is None
    with pytest.raises(ValueError, match=r"config\.data: no training records: set data\.jsonl or "
                                         r"data\.dataset \(data\.task='' turns the bundled 'sort' task "
                                         r"off\)"):
        sources.build(_data(task=""), tmp_path, seed=0, tokenizer=demo_tokenizer())
    config = config_lib.load_config(Path(__file__).resolve().parents[1] / "experiments" / "default.py",
                                    ["--config.data.task=polite"])
    assert config.data.task == "polite"
    with pytest.raises(config_lib.ConfigError, match="data.task"):
        config_lib.load_config(Path(__file__).resolve().parents[1] / "experiments" / "default.py",
                               ["--config.data.task=3"])


@pytest.mark.parametrize("source", ["jsonl", "dataset"])
def test_an_explicit_task_beside_another_source_names_both_keys(tmp_path, source):
    value = _pairs(tmp_path / "p.jsonl", 2) if source == "jsonl" else "hh_rlhf"
    cfg = _data(task="sort", **{source: value})
    with pytest.raises(ValueError, match=rf"data\.task='sort' and data\.{source}=.* both give the "
                                         r"training records; set only one of data\.task, data\.jsonl and "
                                         r"data\.dataset"):
        sources.build(cfg, tmp_path, seed=0, tokenizer=demo_tokenizer())


def test_effective_spells_out_the_defaults():
    old = {**sources.default_data_config().to_dict(), "task": "sort", "num_train": 4000}
    assert sources.effective(sources.default_data_config()) == sources.effective(old) == old
    assert sources.effective(_data(task="polite", num_train=0))["num_train"] == 4000
    jsonl = sources.effective(_data(jsonl="t.jsonl"))
    assert jsonl["task"] == "" and jsonl["num_train"] == 0
    assert sources.effective(_data(jsonl="t.jsonl", task="")) == jsonl  # the older configs' spelling


def test_a_run_saved_with_the_older_defaults_resumes():
    """config.json of a run of default.py saved before data.task="" / num_train=0 and the keys
    optimizer.warmup_fraction and pretrain.from_train: the same run, so it may resume; a dataset run
    whose num_train was capped at the old 4000 trained on other data, and is refused."""
    current = json.loads(config_lib.to_json(default_train_config()))
    current["pretrain"] = sources.default_pretrain_config().to_dict()
    old = json.loads(json.dumps(current))
    old["data"].update(task="sort", num_train=4000)
    del old["optimizer"]["warmup_fraction"], old["pretrain"]["from_train"]
    config_lib.check_same(run_lib.comparable(old), run_lib.comparable(current), "w",
                          run_lib.RESUMABLE_CHANGES)
    old["data"].update(task="", dataset="hh_rlhf")
    current["data"].update(dataset="hh_rlhf")
    with pytest.raises(config_lib.ConfigError, match=r"changed: data\.num_train\)"):
        config_lib.check_same(run_lib.comparable(old), run_lib.comparable(current), "w")


# --------------------------------------------------------------------------- pretrain.from_train


def _pretrain(**changes):
    cfg = sources.default_pretrain_config()
    cfg.update({"weight": 0.5, **changes})
    return cfg


def test_pretraining_text_from_the_training_dialogues(hh, tmp_path):
    data = sources.build(_data(**hh), tmp_path, seed=0, pretrain_cfg=_pretrain(from_train=True),
                         tokenizer=demo_tokenizer())
    assert len(data.pretrain) == len(data.train)
    # The chosen dialogue, rendered turn by turn as every objective renders it (data.md#dialogues).
    first = json.loads(gzip.decompress(SLICE.read_bytes()).decode("utf-8").splitlines()[0])
    prompt, reply = hh_rlhf.split_dialogue(first["chosen"])
    assert data.pretrain[0] == {"text": dialogue.render("{prompt}\n", prompt) + reply.strip()}
    assert data.pretrain[0]["text"].startswith("User: ") and "\nAssistant: " in data.pretrain[0]["text"]
    assert "Human:" not in data.pretrain[0]["text"]


def test_pretraining_text_from_jsonl_records_is_lazy_and_capped_with_the_records(tmp_path):
    cfg = _data(jsonl=_pairs(tmp_path / "p.jsonl", 5), num_train=3)
    data = sources.build(cfg, tmp_path / "run", seed=0, pretrain_cfg=_pretrain(from_train=True))
    assert [data.pretrain[i] for i in range(len(data.pretrain))] == [
        {"text": "Q0:\ngood 0"}, {"text": "Q1:\ngood 1"}, {"text": "Q2:\ngood 2"}]
    assert sources.train_text({"prompt": "Say hi", "chosen": "hi"}) == "Say hi\nhi"
    assert sources.train_text({"prompt": "", "chosen": b" hi "}) == "hi"


def test_pretraining_without_a_text_source_is_still_refused_up_front(tmp_path):
    cfg = _data(dataset="hh_rlhf", source_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"pretrain\.weight > 0 needs pretrain\.jsonl \(text records\), or "
                                         r"pretrain\.from_train=True"):
        sources.build(cfg, tmp_path / "run", seed=0, pretrain_cfg=_pretrain())  # not "missing" first
    with pytest.raises(ValueError, match=r"pretrain\.jsonl='t\.jsonl' and pretrain\.from_train=True both"):
        sources.build(cfg, tmp_path / "run", seed=0, pretrain_cfg=_pretrain(jsonl="t.jsonl", from_train=True))
    groups = tmp_path / "g.jsonl"
    groups.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ratings": [1, 2]}) + "\n")
    with pytest.raises(ValueError, match=r"from_train=True needs preference records .* 'group' records"):
        sources.build(_data(jsonl=str(groups), schema="group"), tmp_path / "run", seed=0,
                      pretrain_cfg=_pretrain(from_train=True), tokenizer=demo_tokenizer())


def test_the_default_of_from_train_changes_nothing(tmp_path):
    """Off by default: a synthetic task still pretrains on its own texts."""
    data = sources.build(_data(num_train=8), tmp_path, seed=0, pretrain_cfg=_pretrain(num_texts=6),
                         tokenizer=demo_tokenizer())
    assert data.pretrain == sources.synthetic_pretraining_texts(data.task, 0, 6)


# --------------------------------------------------------------------------- the tokenizer's size


def test_a_small_tokenizer_trained_on_a_dataset_is_warned_about(hh, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="jaxalign.data.sources"):
        sources.build(_data(**hh), tmp_path / "small", seed=0)
    [warning] = [r.getMessage() for r in caplog.records if "vocab_size" in r.getMessage()]
    assert "config.data.vocab_size=384 trained a tokenizer of 384 pieces on data.dataset='hh_rlhf'" in warning
    assert "(median of 200 training records)" in warning and "--config.data.vocab_size=8000" in warning
    median = int(warning.split("take ")[1].split(" tokens")[0])
    assert 250 < median < 500  # the slice's dialogues at 384 pieces (about 3x their length at 8000)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxalign.data.sources"):
        sources.build(_data(**hh, vocab_size=4000), tmp_path / "large", seed=0)
        sources.build(sources.default_data_config(), tmp_path / "synthetic", seed=0)  # the default's task
        sources.build(_data(**hh), tmp_path / "given", seed=0, tokenizer=demo_tokenizer())  # not trained
    assert "vocab_size" not in caplog.text


def test_ml_collections_sections_and_dicts_agree():
    section = ml_collections.ConfigDict({**sources.default_data_config().to_dict(), "jsonl": "x"})
    assert sources.synthetic_task(section) == sources.synthetic_task(section.to_dict()) == ""
    assert sources.synthetic_task(sources.default_data_config()) == sources.DEFAULT_TASK


@pytest.mark.parametrize("change, message", [
    ({"objective": {"name": "coh", "format": "paper"}}, "objective.format='paper'"),
    ({"objective": {"name": "sft", "alpha": 1.0}}, r"unknown key\(s\) \['alpha'\]"),
    ({"data": {"task": "harmless", "dataset": "hh_rlhf"}}, "both give the training records"),
    ({"optimizer": {"warmup_steps": 5, "warmup_fraction": 0.1}}, "warmup"),
])
def test_a_bad_config_writes_nothing(tmp_path, change, message):
    """Checks that need no data run before the workdir (and its tokenizer) is written."""
    from jaxalign.train import loop

    config = default_train_config()
    for section, values in change.items():
        if section == "objective":
            config.objective = ml_collections.ConfigDict(values)
        else:
            config[section].update(values)
    with pytest.raises(ValueError, match=message):
        loop.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
