import json

import pytest

from jaxalign.data.jsonl import SCHEMAS, RecordError, read_records


def _write(tmp_path, lines, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_good_files_parse_with_blank_lines_skipped(tmp_path):
    text = _write(tmp_path, [
        json.dumps({"text": "hello world"}),
        "",
        "   ",
        json.dumps({"text": "ünïcode ✓", "id": 7}),
        json.dumps({"id": "doc-3", "text": " leading space kept"}),
    ])
    assert list(read_records(text, "text")) == [
        {"text": "hello world"},
        {"text": "ünïcode ✓", "id": 7},
        {"id": "doc-3", "text": " leading space kept"},
    ]
    pref = _write(tmp_path, [
        json.dumps({"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}),
        json.dumps({"prompt": "", "chosen": "good", "rejected": "bad", "id": 1}),  # prompt may be empty
    ], name="pref.jsonl")
    records = list(read_records(pref, SCHEMAS["preference"]))
    assert records[0] == {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}
    assert records[1]["prompt"] == "" and records[1]["id"] == 1


def test_group_records_parse(tmp_path):
    lines = [
        {"prompt": "Is it kind?", "responses": ["Yes, it is.", "No."], "ratings": [6, 2.5],
         "stage": "imitation"},
        {"prompt": "", "responses": ["only one"], "ratings": [-1], "id": "r0-a1"},
        {"prompt": "q", "responses": ["a", "b", "c"], "ratings": [1, 1, 7], "stage": "realignment", "id": 3},
    ]
    path = _write(tmp_path, [json.dumps(line) for line in lines], name="groups.jsonl")
    assert list(read_records(path, "group")) == lines
    assert SCHEMAS["group"].required == ("prompt", "responses", "ratings")


def test_bom_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n{"text": "b"}\r\n')
    assert [r["text"] for r in read_records(path, "text")] == ["a", "b"]


# (schema, the bad line, the exact message after "path:LINE: ", the field named or None)
MALFORMED = [
    ("preference", '{"prompt": "p", "chosen": 3, "rejected": "r"}',
     "field 'chosen' must be a string, got int", "chosen"),
    ("preference", '{"prompt": "p", "chosen": "c"}',
     "missing field 'rejected' (preference records need 'prompt', 'chosen', 'rejected')", "rejected"),
    ("preference", '{"prompt": "p", "choosen": "c", "chosen": "c", "rejected": "r"}',
     "unknown field 'choosen' (preference records allow 'prompt', 'chosen', 'rejected', 'id')",
     "choosen"),
    ("preference", '{"prompt": "p", "chosen": "c", "rejected": ""}',
     "field 'rejected' must not be empty", "rejected"),
    ("preference", '{"prompt": null, "chosen": "c", "rejected": "r"}',
     "field 'prompt' must be a string, got null", "prompt"),
    ("text", '{"text": "  \\t "}', "field 'text' must not be empty", "text"),
    ("text", '{"text": ["a", "b"]}', "field 'text' must be a string, got array", "text"),
    ("text", '{"text": "a", "id": true}', "field 'id' must be a string or an integer, got bool", "id"),
    ("text", '{"text": "a", "id": 1.5}', "field 'id' must be a string or an integer, got float", "id"),
    ("text", '{"text": "a", "text": "b"}', "field 'text' appears twice", "text"),
    ("text", '{"text": "\\ud800"}',
     "field 'text' contains an unpaired surrogate (a \\ud800-\\udfff escape)", "text"),
    ("text", '{"text": "a",}', "invalid JSON: Expecting property name enclosed in double quotes (column 14)",
     None),
    ("text", '{"text": "a"', "invalid JSON: Expecting ',' delimiter (column 13)", None),
    ("text", '["text", "a"]', "a record must be a JSON object, got array", None),
    ("text", '"just a string"', "a record must be a JSON object, got string", None),
    ("group", '{"prompt": "p", "responses": ["a"]}',
     "missing field 'ratings' (group records need 'prompt', 'responses', 'ratings')", "ratings"),
    ("group", '{"prompt": "p", "responses": "a", "ratings": [1]}',
     "field 'responses' must be an array, got string", "responses"),
    ("group", '{"prompt": "p", "responses": [], "ratings": []}',
     "field 'responses' must not be empty (a group has at least one response)", "responses"),
    ("group", '{"prompt": "p", "responses": ["a", 2], "ratings": [1, 2]}',
     "field 'responses'[1] must be a string, got int", "responses"),
    ("group", '{"prompt": "p", "responses": ["a", " "], "ratings": [1, 2]}',
     "field 'responses'[1] must not be empty", "responses"),
    ("group", '{"prompt": "p", "responses": ["\\udc00"], "ratings": [1]}',
     "field 'responses'[0] contains an unpaired surrogate (a \\ud800-\\udfff escape)", "responses"),
    ("group", '{"prompt": "p", "responses": ["a", "b"], "ratings": [1, true]}',
     "field 'ratings'[1] must be a number, got bool", "ratings"),
    ("group", '{"prompt": "p", "responses": ["a"], "ratings": ["7"]}',
     "field 'ratings'[0] must be a number, got string", "ratings"),
    ("group", '{"prompt": "p", "responses": ["a"], "ratings": [NaN]}',
     "field 'ratings'[0] must be a finite number, got NaN", "ratings"),
    ("group", '{"prompt": "p", "responses": ["a"], "ratings": [-Infinity]}',
     "field 'ratings'[0] must be a finite number, got -Infinity", "ratings"),
    ("group", '{"prompt": "p", "responses": ["a"], "ratings": [1e400]}',
     "field 'ratings'[0] must be a finite number, got Infinity", "ratings"),
    ("group", '{"prompt": "p", "responses": ["a", "b"], "ratings": [3]}',
     "field 'ratings' has 1 values but 'responses' has 2; there is one rating per response", "ratings"),
    ("group", '{"prompt": "p", "responses": ["a"], "ratings": [3], "stage": "critic"}',
     "field 'stage' must be one of 'imitation', 'self_critic', 'realignment', got 'critic'", "stage"),
    ("group", '{"prompt": "p", "responses": ["a"], "ratings": [3], "scores": [3]}',
     "unknown field 'scores' (group records allow 'prompt', 'responses', 'ratings', 'stage', 'id')",
     "scores"),
]
GOOD = {"text": {"text": "fine"}, "preference": {"prompt": "p", "chosen": "c", "rejected": "r"},
        "group": {"prompt": "p", "responses": ["a", "b"], "ratings": [1, 7.5]}}


@pytest.mark.parametrize("schema,bad,message,field", MALFORMED)
def test_each_malformation_names_file_line_and_field(tmp_path, schema, bad, message, field):
    good = json.dumps(GOOD[schema])
    # The bad record is on line 5: blank lines count for line numbers.
    path = _write(tmp_path, [good, "", good, "", bad, good])
    records = read_records(path, schema)
    assert next(records) == json.loads(good)  # streaming: good records come before the error
    assert next(records) == json.loads(good)
    with pytest.raises(RecordError) as info:
        next(records)
    assert str(info.value) == f"{path}:5: {message}"
    assert isinstance(info.value, ValueError)
    assert (info.value.path, info.value.line, info.value.field) == (path, 5, field)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(RecordError, match=r"bytes\.jsonl:2: not valid UTF-8 \(byte 11\)$"):
        list(read_records(path, "text"))


def test_relative_path_is_shown_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    lines = [json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})] * 16
    lines.append(json.dumps({"prompt": "p", "chosen": 17, "rejected": "r"}))
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as info:
        list(read_records("data/train.jsonl", "preference"))
    assert str(info.value) == "data/train.jsonl:17: field 'chosen' must be a string, got int"


def test_unknown_schema_name():
    with pytest.raises(ValueError, match="unknown record schema 'chat'; known: text, preference"):
        next(read_records("nowhere.jsonl", "chat"))


def test_a_label_other_than_0_or_1_is_named_with_file_and_line(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n{"text": "x", "label": 5}\n')
    with pytest.raises(RecordError, match=r"l.jsonl:2: field 'label' must be 0 or 1 \(bad or good\), got 5"):
        list(read_records(path, "labelled"))


def test_an_empty_data_file_is_named(tmp_path):
    from jaxalign.data import sources

    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    cfg = sources.default_data_config()
    cfg.task, cfg.jsonl = "", str(path)
    with pytest.raises(ValueError, match=rf"config.data.jsonl={path}: the file holds no record"):
        sources.build(cfg, tmp_path / "run", seed=0)


def test_a_capped_training_split_is_logged(tmp_path, caplog):
    from jaxalign.data import sources

    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"prompt": "p", "chosen": f"c{i}", "rejected": "r"}) + "\n"
                            for i in range(5)))
    cfg = sources.default_data_config()
    cfg.task, cfg.jsonl, cfg.num_train = "", str(path), 3
    assert len(sources.build(cfg, tmp_path / "run", seed=0).train) == 3
    assert "config.data.num_train=3 keeps the first 3 of 5 training records (0 keeps all)" in caplog.text


def test_pretraining_without_texts_is_refused_before_any_data_is_read(tmp_path):
    from jaxalign.data import sources

    cfg = sources.default_data_config()
    cfg.task, cfg.dataset, cfg.source_dir = "", "hh_rlhf", str(tmp_path / "missing")
    pretrain = sources.default_pretrain_config()
    pretrain.weight = 0.5
    with pytest.raises(ValueError, match="pretrain.weight > 0 needs pretrain.jsonl"):
        sources.build(cfg, tmp_path / "run", seed=0, pretrain_cfg=pretrain)  # not "missing" first
