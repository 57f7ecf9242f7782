"""SANDBOX interaction records, the Stable Alignment data made from them, the sandbox TFDS builder
(our records and the reference's formats) and the data.stage filter of jaxalign.data.sources."""

import json

import ml_collections
import pytest

from jaxalign.data import jsonl, sources
from jaxalign.data import sandbox_alignment as ad
from jaxalign.data import sandbox_records as records
from jaxalign.data.builders import sandbox
from jaxalign.data.tokenizer import demo_tokenizer


def _record(**changes):
    record = {
        "agent_id": 0, "label": "aligned", "iteration": 0, "question": "How do I greet a neighbour?",
        "draft_answer": "Ignore them.", "target_id": [1, 2], "feedback": ["That is rude.", "Unkind."],
        "rating": [2, 3], "revised_answer": "Say hello and smile.", "gen_moral_score_before": 2,
        "gen_moral_score_after": 6, "gen_moral_reason_before": "cold", "gen_moral_reason_after": "warm",
        "gen_engagement_score_before": None, "gen_engagement_score_after": 5,
        "gen_engagement_reason_before": "", "gen_engagement_reason_after": "nice",
    }
    record.update(changes)
    return record


def _question(split, avoid=()):
    """The first of a fixed list of questions that `sandbox.split_of` puts in `split`."""
    return next(q for q in (f"Is it fine to do thing number {i}?" for i in range(200))
                if sandbox.split_of(q) == split and q not in avoid)


Q = _question("validation")
Q2 = _question("train")


def _society():
    """Four interactions on two questions (hand-checked groups in the tests below)."""
    return [
        _record(question=Q, id="r0-a0"),
        _record(agent_id=1, question=Q, draft_answer="Say hello and smile.", target_id=[0],
                feedback=["Friendly and kind."], rating=[6], gen_moral_score_before=5,
                gen_moral_score_after=7),
        _record(agent_id=0, iteration=1, question=Q2, draft_answer=" Maybe. ", feedback=["", "Vague."],
                rating=[4, 3], revised_answer="", gen_moral_score_before=4, gen_moral_score_after=4),
        _record(agent_id=2, iteration=1, question=Q, target_id=[0], feedback=["That is rude."], rating=[4],
                revised_answer="Ignore them.", gen_moral_score_before=2, gen_moral_score_after=2),
    ]


def _by_prompt(groups):
    return {(g.get("stage", ""), g["prompt"]): (g["responses"], g["ratings"]) for g in groups}


# --------------------------------------------------------------------------- records

def test_records_round_trip_in_field_order(tmp_path):
    path = tmp_path / "records.jsonl"
    society = _society() + [_record(question="¿Qué tal? 你好", feedback=["ünïcode"], rating=[7],
                                    target_id=[3])]
    assert records.append_records(path, society[:2]) == 2
    assert records.append_records(path, society[2:]) == 3  # appends
    assert list(records.read_records(path)) == society
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert list(json.loads(first)) == list(records.RECORD_FIELDS) + ["id"]
    assert "你好" in path.read_text(encoding="utf-8")  # written as is, not \u-escaped


@pytest.mark.parametrize("changes, field, reason, message", [
    ({"rating": [2, 9]}, "rating", "out_of_range", "field 'rating' item 1 must be an integer in 1..7, got 9"),
    ({"rating": [2]}, "rating", "length_mismatch", "the peer lists must have equal lengths"),
    ({"gen_moral_score_after": 5.0}, "gen_moral_score_after", "wrong_type",
     "must be an integer in 1..7, got float"),
    ({"gen_moral_score_before": "5"}, "gen_moral_score_before", "wrong_type", "got string"),
    ({"gen_moral_score_before": -1}, "gen_moral_score_before", "out_of_range", "got -1"),
    ({"gen_engagement_score_after": 0}, "gen_engagement_score_after", "out_of_range", "got 0"),
    ({"agent_id": True}, "agent_id", "wrong_type", "got bool"),
    ({"question": "  "}, "question", "empty_field", "must not be empty"),
    ({"feedback": ["ok", 3]}, "feedback", "wrong_type", "field 'feedback' item 1 must be a string"),
    ({"target_id": [1, -2]}, "target_id", "out_of_range", "item 1 must be an integer >= 0"),
    ({"revised_answer": "\ud800"}, "revised_answer", "bad_text", "unpaired surrogate"),
    ({"ratings": [1]}, "ratings", "unknown_field", "unknown field 'ratings'"),
])
def test_record_errors_name_path_line_and_field(tmp_path, changes, field, reason, message):
    path = tmp_path / "records.jsonl"
    good = json.dumps(_record())
    bad = _record(**changes)
    # A BOM on line 1 and a blank line 2 are fine; the bad record is on line 3.
    path.write_bytes(("\ufeff" + good + "\n\n" + json.dumps(bad) + "\n").encode("utf-8", "surrogatepass"))
    with pytest.raises(records.InteractionError) as info:
        list(records.read_records(path))
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)
    assert (info.value.field, info.value.reason, info.value.line) == (field, reason, 3)
    assert isinstance(info.value, jsonl.RecordError) and isinstance(info.value, ValueError)


def test_record_errors_missing_field_json_and_utf8(tmp_path):
    record = _record()
    del record["feedback"]
    cases = {
        json.dumps(record).encode(): ("missing field 'feedback'", "missing_field"),
        b'{"agent_id": 0, "agent_id": 1}': ("field 'agent_id' appears twice", "duplicate_field"),
        b'{"agent_id": 0,': ("invalid JSON", "bad_json"),
        b"[1, 2]": ("a record must be a JSON object, got array", "not_object"),
        json.dumps(_record()).encode()[:-2] + b"\xff}": ("not valid UTF-8", "bad_utf8"),
    }
    for line, (message, reason) in cases.items():
        path = tmp_path / "r.jsonl"
        path.write_bytes(line + b"\n")
        with pytest.raises(records.InteractionError, match=f"^{path}:1: .*{message}") as info:
            list(records.read_records(path))
        assert info.value.reason == reason


def test_append_checks_every_record_before_writing(tmp_path):
    path = tmp_path / "records.jsonl"
    records.append_records(path, [_record()])
    before = path.read_bytes()
    with pytest.raises(records.InteractionError, match=r"^record 1: field 'rating' item 0"):
        records.append_records(path, [_record(), _record(rating=[8, 1])])
    assert path.read_bytes() == before
    line = records.format_record(_record())
    assert line.endswith("}\n") and line.count("\n") == 1


# --------------------------------------------------------------------------- alignment data

def test_imitation_groups_per_question_with_mean_of_repeated_responses():
    groups = ad.imitation_groups(_society())
    assert [g["prompt"] for g in groups] == [Q, Q2]  # order of first appearance
    # "Say hello and smile." is agent 0's revision (6), agent 1's draft (5) and revision (7): mean 6.
    # "Ignore them." is rated 2 as agent 0's and agent 2's draft and agent 2's unchanged revision.
    assert groups[0]["responses"] == ["Ignore them.", "Say hello and smile."]
    assert groups[0]["ratings"] == [2.0, 6.0]
    # Q2: the draft is stripped; the empty revision is no response.
    assert (groups[1]["responses"], groups[1]["ratings"]) == (["Maybe."], [4.0])
    assert all(g["stage"] == "imitation" and g["id"] == ad.group_id("imitation", g["prompt"]) for g in groups)


def test_self_critic_groups_pair_each_reason_with_its_rating():
    groups = _by_prompt(ad.self_critic_groups(_society()))
    prompt = ad.self_critic_prompt(Q, "Ignore them.")
    assert "Comment on how well this answer is aligned with shared social values." in prompt
    # Agent 0's peers said "That is rude." (2) and "Unkind." (3); agent 2's peer "That is rude." (4).
    assert groups["self_critic", prompt] == (["That is rude.", "Unkind."], [3.0, 3.0])
    assert groups["self_critic", ad.self_critic_prompt(Q, "Say hello and smile.")] == (
        ["Friendly and kind."], [6.0])
    # The prompt keeps the draft verbatim; an empty reason is no response.
    assert groups["self_critic", ad.self_critic_prompt(Q2, " Maybe. ")] == (["Vague."], [3.0])
    assert len(groups) == 3


@pytest.mark.parametrize("before, after, kept", [
    (2, 6, True), (3, 5, True), (5, 5, False), (6, 5, False), (2, 4, False), (1, 3, False), (6, 7, True),
])
def test_realignment_only_where_the_revision_improved_above_the_middle(before, after, kept):
    record = _record(gen_moral_score_before=before, gen_moral_score_after=after)
    groups = ad.realignment_groups([record])
    assert len(groups) == int(kept)
    if kept:
        (group,) = groups
        assert group["prompt"] == ad.realignment_prompt(record["question"], "Ignore them.")
        assert group["ratings"] == [float(after)]
        (response,) = group["responses"]
        assert response == "That is rude.\nUnkind.\nHere is the revised response:\nSay hello and smile."
        assert ad.split_realignment(response) == ("That is rude.\nUnkind.", "Say hello and smile.")


def test_realignment_needs_a_reason_and_a_revision():
    assert ad.realignment_groups([_record(feedback=["", " "], rating=[5, 6])]) == []
    assert ad.realignment_groups([_record(revised_answer="  ")]) == []
    assert ad.realignment_groups([_record(feedback=[], rating=[], target_id=[])]) == []
    assert ad.split_realignment("no marker here") is None


def test_alignment_groups_order_ids_and_output_are_deterministic(tmp_path):
    society = _society()
    groups = ad.alignment_groups(society)
    assert [g["stage"] for g in groups] == ["imitation"] * 2 + ["self_critic"] * 3 + ["realignment"] * 2
    assert ad.alignment_groups(society, stages=("realignment", "imitation")) == [
        g for g in groups if g["stage"] in ("imitation", "realignment")]
    # A group's id depends on its stage and prompt only: more records do not renumber the others.
    more = ad.alignment_groups(society + [_record(question="Another question?")])
    assert {g["id"] for g in groups} <= {g["id"] for g in more}
    assert len({g["id"] for g in groups}) == len(groups)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert ad.write_groups(groups, first) == len(groups)
    ad.write_groups(ad.alignment_groups(society), second)
    assert first.read_bytes() == second.read_bytes()
    assert [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()] == groups
    with pytest.raises(ValueError, match="unknown stage.*'sft'"):
        ad.alignment_groups(society, stages=("imitation", "sft"))
    with pytest.raises(records.InteractionError, match=r"^record 1 \(id 'x'\): field 'rating' item 0"):
        ad.alignment_groups([_record(), _record(id="x", rating=[0, 1])])


def test_merge_groups_merges_the_same_prompt():
    merged = ad.merge_groups([
        {"prompt": "q", "responses": ["A", "B"], "ratings": [7, 3]},
        {"prompt": "p", "responses": ["X"], "ratings": [1]},
        {"prompt": "q", "responses": [" A ", "C"], "ratings": [5, 1]},
    ])
    assert [(g["prompt"], g["responses"], g["ratings"]) for g in merged] == [
        ("q", ["A", "B", "C"], [6.0, 3.0, 1.0]), ("p", ["X"], [1.0])]
    assert all("stage" not in g for g in merged)


# --------------------------------------------------------------------------- the builder

def _reference_row(**changes):
    """An interaction as the reference's Agent.save_ext_memory writes it (pandas to_json)."""
    row = {
        "agent_id": 3, "label": "bad", "iteration": 0, "question": Q2, "draft_answer": "Sure, steal it.",
        "target_id": [4, 5, 6], "feedback": ["garbage", "Fine.", "Encourages theft."],
        "rating": ["8", "5", "2"],  # sorted by rating, "8" = the peer's rating did not parse
        "revised_answer": "Ask politely and repay.", "gen_moral_score_before": 1.0,
        "gen_moral_score_after": 6.0, "gen_moral_reason_before": "theft", "gen_moral_reason_after": "fair",
        "gen_engagement_score_before": 3.0, "gen_engagement_score_after": -1.0,
        "gen_engagement_reason_before": "", "gen_engagement_reason_after": "",
        "cls_moral_score_before": 0, "cls_moral_score_after": 0,
    }
    row.update(changes)
    return row


RELEASED = [
    {"query": "Q3: may I?", "responses": ["A", "B"], "scores": [7, 3]},
    {"query": "Q3: may I?", "responses": ["A", "C"], "scores": [5, "1"]},
    {"query": "Q4: should I?", "responses": [" ", "D"], "scores": [2, 6.0]},
]


def _source(tmp_path):
    source = tmp_path / "source"
    lines = [json.dumps(r) for r in _society()]
    lines.insert(2, json.dumps(_record(rating=[9, 1])))  # malformed
    lines.insert(1, "")  # a blank line is no record (but counts: the malformed line is line 4)
    (source / "world_1" / "external_memory").mkdir(parents=True)
    (source / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    memory = [_reference_row(), _reference_row(gen_moral_score_after=-1.0, draft_answer="Other.")]
    (source / "world_1" / "external_memory" / "agent_3.jsonl").write_text(json.dumps(memory, indent=2))
    (source / "sandbox_v1.json").write_text(json.dumps(RELEASED))
    # A simulation's run directory also holds these; they are no records files and are not read.
    (source / "config.json").write_text(json.dumps({"rounds": 2}, indent=2))
    (source / "tfds" / "sandbox").mkdir(parents=True)
    (source / "tfds" / "sandbox" / "other.jsonl").write_text("not JSON\n")
    return source


def _all(source):
    return [sandbox.decode_record(source[i]) for i in range(len(source))]


def _question_of(group):
    for question in (Q, Q2, "Q3: may I?", "Q4: should I?"):
        if group["prompt"] == question or f"Question: {question}\n" in group["prompt"]:
            return question
    raise AssertionError(group["prompt"])


def test_builder_reads_ours_and_the_reference_formats(tmp_path):
    source = _source(tmp_path)
    splits = sandbox.prepare(source, tmp_path / "tfds")
    decoded = {split: _all(s) for split, s in splits.items()}
    for split, groups in decoded.items():  # every group of a question in its question's split
        assert all(sandbox.split_of(_question_of(g)) == split for g in groups)
    groups = _by_prompt(g for gs in decoded.values() for g in gs)
    # imitation Q, Q2; released Q3, Q4; self-critic 3 of ours + 1 reference; realignment 2 + 1.
    assert len(groups) == 11
    assert groups["imitation", Q2] == (
        ["Maybe.", "Sure, steal it.", "Ask politely and repay."], [4.0, 1.0, 6.0])
    # The reference's unparseable peer rating ("8") is dropped with its feedback.
    assert groups["self_critic", ad.self_critic_prompt(Q2, "Sure, steal it.")] == (
        ["Fine.", "Encourages theft."], [5.0, 2.0])
    assert groups["realignment", ad.realignment_prompt(Q2, "Sure, steal it.")] == (
        ["Fine.\nEncourages theft.\nHere is the revised response:\nAsk politely and repay."], [6.0])
    # Released groups: no stage, rows of one query merged, empty responses left out.
    assert groups["", "Q3: may I?"] == (["A", "B", "C"], [6.0, 3.0, 1.0])
    assert groups["", "Q4: should I?"] == (["D"], [6.0])
    one = decoded["train"][0]
    assert isinstance(one["prompt"], str) and all(isinstance(r, str) for r in one["responses"])
    assert all(type(s) is float for s in one["ratings"])
    report = sandbox.build_report(tmp_path / "tfds")
    assert report["malformed"] == {"out_of_range": 1} and report["skipped"] == {"unscored": 1}
    assert report["dropped_peer_ratings"] == 1
    example = report["skip_examples"]["out_of_range"][0]
    assert example.startswith("records.jsonl:4: out_of_range: field 'rating'")
    assert sum(report["records"].values()) == 11
    assert report["interactions"] == {"train": 2, "validation": 3}

    # A changed source is rebuilt; scanning is deterministic.
    with open(source / "records.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(_record(question=Q2, draft_answer="No.", revised_answer="No.", feedback=[],
                                   rating=[], target_id=[])) + "\n")
    rebuilt = sandbox.prepare(source, tmp_path / "tfds")
    assert sum(len(s) for s in rebuilt.values()) == 11  # "No." joins Q2's imitation group
    assert "No." in _by_prompt(_all(rebuilt["train"]))["imitation", Q2][0]
    files = sandbox.source_files(source)
    assert [f.name for f in files] == [
        "records.jsonl", "sandbox_v1.json", "world_1/external_memory/agent_3.jsonl"]
    assert sandbox.scan(files)[1] == sandbox.scan(files)[1]


def test_builder_errors_name_the_file(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    with pytest.raises(FileNotFoundError, match="no records file"):
        sandbox.source_files(source)
    (source / "a.jsonl").write_text(json.dumps(_record(rating=[0, 1])) + "\n")
    with pytest.raises(ValueError, match=r"a\.jsonl: not one usable SANDBOX record "
                                         r"\(out_of_range 1; first: a\.jsonl:1"):
        sandbox.scan(sandbox.source_files(source))
    (source / "a.jsonl").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 3\n")
    with pytest.raises(ValueError, match=r"a\.jsonl: a Git LFS pointer"):
        sandbox.scan(sandbox.source_files(source))
    (source / "a.jsonl").write_text('[{"query": "q", "responses": ["r"], "scores": [1]},\n  {"query": }]')
    with pytest.raises(ValueError, match=r"a\.jsonl:2:13: invalid JSON: Expecting value"):
        sandbox.scan(sandbox.source_files(source))


# --------------------------------------------------------------------------- sources: data.stage

def _data_config(**changes):
    cfg = sources.default_data_config()
    cfg.update({"task": "", **changes})
    return cfg


def test_sources_sandbox_dataset_and_stage_filter(tmp_path):
    source = _source(tmp_path)
    tok = demo_tokenizer()
    cfg = _data_config(dataset="sandbox", source_dir=str(source), tfds_dir=str(tmp_path / "tfds"),
                       stage="realignment")
    data = sources.build(cfg, tmp_path / "work", seed=0, tokenizer=tok)
    assert data.schema == "group" and data.eval_split == "validation"
    train = [data.train[i] for i in range(len(data.train))]
    # Realignment: Q2's (train) from the reference row; Q's two (validation) from ours.
    assert [g["prompt"] for g in train] == [ad.realignment_prompt(Q2, "Sure, steal it.")]
    assert [g["stage"] for g in data.eval] == ["realignment", "realignment"]
    same = {"dataset": "sandbox", "source_dir": str(source), "tfds_dir": str(tmp_path / "tfds")}
    everything = sources.build(_data_config(**same), tmp_path / "work2", 0, tokenizer=tok)
    two = sources.build(_data_config(**same, stage=" imitation , self_critic"), tmp_path / "work3", 0,
                        tokenizer=tok)
    all_train = [everything.train[i] for i in range(len(everything.train))]
    assert [two.train[i] for i in range(len(two.train))] == [
        g for g in all_train if g.get("stage") in ("imitation", "self_critic")]
    # Released groups (no stage) come only without a stage filter.
    assert any("stage" not in g for g in all_train + everything.eval)
    assert all("stage" in g for g in two.eval)


@pytest.mark.parametrize("stage, message", [
    ("imitation,sft", r"config\.data\.stage='imitation,sft': unknown stage\(s\) 'sft'"),
    ("imitation,", r"config\.data\.stage='imitation,': an empty stage name"),
])
def test_sources_stage_errors_name_the_key(tmp_path, stage, message):
    cfg = _data_config(dataset="sandbox", source_dir=str(tmp_path), stage=stage)
    with pytest.raises(ValueError, match=message):
        sources.build(cfg, tmp_path, seed=0, tokenizer=demo_tokenizer())


def test_sources_stage_needs_group_records(tmp_path):
    path = tmp_path / "pref.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    cfg = _data_config(jsonl=str(path), schema="preference", stage="imitation")
    with pytest.raises(ValueError, match="config.data.stage selects group records"):
        sources.build(cfg, tmp_path, seed=0, tokenizer=demo_tokenizer())
    task_cfg = ml_collections.ConfigDict({**sources.default_data_config().to_dict(), "stage": "imitation"})
    with pytest.raises(ValueError, match="config.data.stage='imitation' selects group records; data.task"):
        sources.build(task_cfg, tmp_path, seed=0, tokenizer=demo_tokenizer())


def test_sources_stage_filter_on_group_jsonl(tmp_path):
    path = tmp_path / "groups.jsonl"
    groups = ad.alignment_groups(_society())
    ad.write_groups(groups, path)
    assert ad.STAGES == jsonl.GROUP_STAGES
    assert list(jsonl.read_records(path, "group")) == groups  # write_groups writes the "group" schema
    cfg = _data_config(jsonl=str(path), schema="group", stage="self_critic")
    data = sources.build(cfg, tmp_path, seed=0, tokenizer=demo_tokenizer())
    assert list(data.train) == [g for g in groups if g["stage"] == "self_critic"]
    assert data.schema == "group"


def test_tokenizer_corpus_includes_the_responses():
    group = {"prompt": "p?", "responses": ["first answer", b"second answer"], "ratings": [1.0, 2.0],
             "stage": "imitation"}
    corpus = sources._corpus(None, [group], None, 0)
    assert {"p?", "first answer", "second answer", "imitation"} <= set(corpus)
