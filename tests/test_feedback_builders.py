"""The HH-RLHF, WebGPT and summarize-from-feedback builders on small files in the upstream formats."""

import gzip
import json
import sys

import pytest

from jaxalign.data.builders import feedback, hh_rlhf, summarize_feedback, webgpt
from jaxalign.data.builders.feedback import Skip, decode_record, prepare, skip_report


def _reason(parse_line, line):
    """The skip reason of a line, or None if it parses."""
    try:
        parse_line(line)
    except Skip as skip:
        return skip.reason
    return None


def _write(path, lines, compress=False):
    """Writes text lines (str) or raw lines (bytes), gzipped for a .gz name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _all(source):
    return [decode_record(source[i]) for i in range(len(source))]


# --------------------------------------------------------------------------- HH-RLHF

CONTEXT = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a colour."


def _hh(chosen, rejected, context=CONTEXT):
    return json.dumps({"chosen": f"{context}\n\nAssistant: {chosen}",
                       "rejected": f"{context}\n\nAssistant: {rejected}"})


HH_TRAIN = [
    _hh("Blue, like the sky.", "No."),                                   # 1 record
    _hh("Same answer", "Same answer "),                                  # 2 tie (after stripping)
    '{"chosen": "\\n\\nHuman: hi',                                        # 3 bad_json
    "",                                                                  # 4 blank: not counted
    json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"}),  # 5
    json.dumps({"chosen": "\n\nHuman: no reply", "rejected": "\n\nHuman: no reply"}),  # 6 unparsable
    _hh("Blue, like the sky.", "No."),                                   # 7 duplicate of 1
    json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: x"}),              # 8 missing_field
    json.dumps({"chosen": 3, "rejected": "x"}),                          # 9 wrong_type
    _hh("ok\n\nHuman: and then?", "fine"),                               # 10 unparsable (ends with Human)
    _hh("   ", "Something"),                                             # 11 empty_field
    json.dumps([_hh("a", "b")]),                                         # 12 wrong_type (an array)
    _hh("\ud800", "ok"),                                                  # 13 bad_text (lone surrogate)
    b'{"chosen": "\xff"}',                                               # 14 bad_utf8
    _hh("Green.", "I will not say.", context="\n\nHuman: Another colour?"),  # 15 record
]


def _hh_source(root):
    _write(root / "helpful-base" / "train.jsonl.gz", HH_TRAIN)
    _write(root / "helpful-base" / "test.jsonl.gz", [_hh("Red.", "Meh.")])
    _write(root / "harmless-base" / "train.jsonl", [_hh("I can't help with that.", "Sure, here is how.")])
    _write(root / "harmless-base" / "test.jsonl.gz", [_hh("No.", "Yes."), _hh("x", "x")])
    _write(root / "red-team-attempts" / "red_team_attempts.jsonl.gz", ["[not read]"])


def _hh_record(chosen, rejected, ident, context=CONTEXT):
    return {"prompt": f"{context}\n\nAssistant:", "chosen": chosen, "rejected": rejected, "id": ident,
            "task": "dialogue"}


def test_hh_parse_line():
    assert hh_rlhf.parse_line(HH_TRAIN[0]) == {
        "prompt": CONTEXT + "\n\nAssistant:", "chosen": "Blue, like the sky.", "rejected": "No."}
    reasons = [_reason(hh_rlhf.parse_line, line) for line in HH_TRAIN[1:13] if line]
    assert reasons == ["tie", "bad_json", "prompt_mismatch", "unparsable_dialogue", None, "missing_field",
                       "wrong_type", "unparsable_dialogue", "empty_field", "wrong_type", "bad_text"]
    assert hh_rlhf.split_dialogue("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:  d ") == (
        "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", "  d ")


def test_hh_rlhf_build_counts_skips_and_rebuilds(tmp_path):
    src, data = tmp_path / "hh-rlhf", tmp_path / "tfds"
    _hh_source(src)
    sources = prepare("hh_rlhf", src, data)
    assert "tensorflow" not in sys.modules  # built and read by tfds + array_record alone
    assert set(sources) == {"train", "test"}
    assert _all(sources["train"]) == [  # subsets in name order, then file order
        _hh_record("I can't help with that.", "Sure, here is how.", "harmless-base/train.jsonl:1"),
        _hh_record("Blue, like the sky.", "No.", "helpful-base/train.jsonl.gz:1"),
        _hh_record("Green.", "I will not say.", "helpful-base/train.jsonl.gz:15",
                   context="\n\nHuman: Another colour?"),
    ]
    assert _all(sources["test"]) == [
        _hh_record("No.", "Yes.", "harmless-base/test.jsonl.gz:1"),
        _hh_record("Red.", "Meh.", "helpful-base/test.jsonl.gz:1"),
    ]
    report = skip_report("hh_rlhf", data)
    assert report["records"] == {"test": 2, "train": 3}
    assert report["skipped"] == {"tie": 2, "duplicate": 1}
    assert report["malformed"] == {"bad_utf8": 1, "bad_json": 1, "wrong_type": 2, "missing_field": 1,
                                   "empty_field": 1, "bad_text": 1, "unparsable_dialogue": 2,
                                   "prompt_mismatch": 1}
    assert report["skipped_by_file"] == {
        "harmless-base/test.jsonl.gz": {"tie": 1},
        "helpful-base/train.jsonl.gz": {
            "bad_json": 1, "bad_text": 1, "bad_utf8": 1, "duplicate": 1, "empty_field": 1, "missing_field": 1,
            "prompt_mismatch": 1, "tie": 1, "unparsable_dialogue": 2, "wrong_type": 2},
    }
    assert report["skip_examples"]["unparsable_dialogue"] == [
        "helpful-base/train.jsonl.gz:6: unparsable_dialogue: no '\\n\\nAssistant:' turn",
        "helpful-base/train.jsonl.gz:10: unparsable_dialogue: "
        "the last Assistant turn is followed by a Human turn",
    ]
    assert report["skip_examples"]["duplicate"] == [
        "helpful-base/train.jsonl.gz:7: duplicate: the same comparison as an earlier train record"]

    # Unchanged files reuse the build; an edited file rebuilds it.
    version_dir = data / "hh_rlhf" / "1.0.0"
    built = sorted(p.stat().st_mtime_ns for p in version_dir.iterdir())
    assert len(prepare("hh_rlhf", src, data)["train"]) == 3
    assert sorted(p.stat().st_mtime_ns for p in version_dir.iterdir()) == built
    _write(src / "harmless-base" / "train.jsonl", [_hh("Nope.", "Okay!"), _hh("A", "B")])
    assert [r["chosen"] for r in _all(prepare("hh_rlhf", src, data)["train"])] == [
        "Nope.", "A", "Blue, like the sky.", "Green."]
    assert skip_report("hh_rlhf", data)["records"] == {"test": 2, "train": 4}

    # An edited file without one usable record: a clear error, and the last build intact.
    _write(src / "harmless-base" / "train.jsonl", ["{oops", _hh("same", "same")])
    message = (r"harmless-base/train\.jsonl: not one usable hh_rlhf record "
               r"\(bad_json 1, tie 1; first: harmless-base/train\.jsonl:1: bad_json")
    with pytest.raises(ValueError, match=message):
        prepare("hh_rlhf", src, data)
    assert skip_report("hh_rlhf", data)["records"] == {"test": 2, "train": 4}


def test_hh_rlhf_missing_and_unreadable_files(tmp_path):
    data = tmp_path / "tfds"
    with pytest.raises(FileNotFoundError, match="no such directory"):
        prepare("hh_rlhf", tmp_path / "nowhere", data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no train.jsonl.gz or test.jsonl.gz here or in a subdir"):
        prepare("hh_rlhf", tmp_path / "empty", data)
    subset = tmp_path / "one" / "helpful-base"
    _write(subset / "train.jsonl.gz", [_hh("a", "b")])
    with pytest.raises(FileNotFoundError, match=r"helpful-base: no test\.jsonl\.gz or test\.jsonl"):
        prepare("hh_rlhf", tmp_path / "one", data)
    # A Git LFS pointer instead of the data (a clone without git-lfs).
    (subset / "test.jsonl.gz").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    with pytest.raises(ValueError, match=r"test\.jsonl\.gz: unreadable at line 1: .*git lfs pull"):
        prepare("hh_rlhf", tmp_path / "one", data)
    # A subset directory is a source by itself.
    _write(subset / "test.jsonl.gz", [_hh("c", "d")])
    assert _all(prepare("hh_rlhf", subset, data)["test"]) == [_hh_record("c", "d", "test.jsonl.gz:1")]
    with pytest.raises(ValueError, match="unknown feedback dataset 'hh'"):
        prepare("hh", subset, data)


# --------------------------------------------------------------------------- WebGPT

def _question(split, start=0):
    """A question text that webgpt.split_of puts in `split`."""
    return next(q for i in range(start, 1000) if webgpt.split_of(q := f"Why is question {i} asked?") == split)


Q_TRAIN, Q_TRAIN_2, Q_VALID = _question("train"), _question("train", 500), _question("validation")


def _answer(question, answer, score):
    return {"question": {"dataset": "eli5", "id": "q1", "full_text": question},
            "quotes": [{"title": "Page (example.com)", "extract": "A quote."}], "answer": answer,
            "tokens": {"prefix": [1, 2], "completion": [3]}, "score": score}


def _raw(question, answer_0, score_0, answer_1, score_1, question_1=None):
    answers = [_answer(question, answer_0, score_0), _answer(question_1 or question, answer_1, score_1)]
    return json.dumps(answers)


def _flat(question, answer_0, score_0, answer_1, score_1):
    row = {"question": {"dataset": "eli5", "id": "q2", "full_text": question}}
    for i, (answer, score) in enumerate([(answer_0, score_0), (answer_1, score_1)]):
        row |= {f"quotes_{i}": {"title": ["t"], "extract": ["e"]}, f"answer_{i}": answer,
                f"tokens_{i}": {"prefix": [1], "completion": [2]}, f"score_{i}": score}
    return json.dumps(row)


WEBGPT_LINES = [
    _raw(Q_TRAIN + " ", " Because of [1]. ", 0.5, "No idea.", -0.5),    # 1 record, answer 0 chosen
    _raw(Q_TRAIN, "One.", 0.0, "Two.", 0.0),                            # 2 tie (equal scores)
    _raw(Q_TRAIN_2, "Worse.", -1.0, "Better.", 1.0),                    # 3 record, answer 1 chosen
    _flat(Q_VALID, "Flat better.", 0.75, "Flat worse.", -0.75),         # 4 record, HF layout, validation
    _raw(Q_TRAIN, "a", 1.0, "b", -1.0, question_1="Another question?"),  # 5 question_mismatch
    json.dumps([_answer(Q_TRAIN, "a", 1.0)] * 3),                       # 6 wrong_type (3 answers)
    _raw(Q_TRAIN, "a", True, "b", False),                               # 7 wrong_type (boolean score)
    json.dumps([{"question": {"full_text": Q_TRAIN}, "score": 1.0}, _answer(Q_TRAIN, "b", -1.0)]),  # 8
    _flat(Q_TRAIN, "Same.", 0.5, "Same.", -0.5),                        # 9 tie (identical answers)
    '"just a string"',                                                  # 10 wrong_type
]


def _without_reference(records):
    return [{k: v for k, v in r.items() if k != "reference"} for r in records]


def test_webgpt_parse_line_and_build(tmp_path):
    record = webgpt.parse_line(WEBGPT_LINES[0])
    assert json.loads(record.pop("reference")) == {  # raw, unstripped fields for CoH's official format
        "question": Q_TRAIN + " ", "answers": [" Because of [1]. ", "No idea."],
        "quotes": [[["Page (example.com)", "A quote."]], [["Page (example.com)", "A quote."]]]}
    assert record == {"prompt": Q_TRAIN, "chosen": "Because of [1].", "rejected": "No idea.",
                      "split": "train"}
    flat = json.loads(webgpt.parse_line(WEBGPT_LINES[3])["reference"])
    assert flat["quotes"] == [[["t", "e"]], [["t", "e"]]]
    assert webgpt.parse_line(WEBGPT_LINES[3])["split"] == "validation"
    assert [_reason(webgpt.parse_line, line) for line in WEBGPT_LINES] == [
        None, "tie", None, None, "question_mismatch", "wrong_type", "wrong_type", "missing_field", "tie",
        "wrong_type"]

    src = tmp_path / "webgpt"
    _write(src / "comparisons.jsonl", WEBGPT_LINES)
    sources = prepare("webgpt", src, tmp_path / "tfds")
    assert _without_reference(_all(sources["train"])) == [
        {"prompt": Q_TRAIN, "chosen": "Because of [1].", "rejected": "No idea.", "id": "comparisons.jsonl:1",
         "task": "webgpt"},
        {"prompt": Q_TRAIN_2, "chosen": "Better.", "rejected": "Worse.", "id": "comparisons.jsonl:3",
         "task": "webgpt"},
    ]
    assert _without_reference(_all(sources["validation"])) == [
        {"prompt": Q_VALID, "chosen": "Flat better.", "rejected": "Flat worse.", "id": "comparisons.jsonl:4",
         "task": "webgpt"}]
    report = skip_report("webgpt", tmp_path / "tfds")
    assert report["records"] == {"train": 2, "validation": 1}
    assert report["skipped"] == {"tie": 2}
    assert report["malformed"] == {"wrong_type": 3, "missing_field": 1, "question_mismatch": 1}
    assert report["skip_examples"]["tie"] == ["comparisons.jsonl:2: tie: equal scores (0)",
                                              "comparisons.jsonl:9: tie: identical responses"]
    assert report["skip_examples"]["missing_field"] == ["comparisons.jsonl:8: missing_field: no '[0].answer'"]

    with pytest.raises(FileNotFoundError, match=r"no comparisons\.jsonl"):
        prepare("webgpt", tmp_path, tmp_path / "tfds2")


def test_webgpt_without_validation_questions_has_train_only(tmp_path):
    _write(tmp_path / "src" / "comparisons.jsonl", [_raw(Q_TRAIN, "a", 1.0, "b", -1.0)])
    assert set(prepare("webgpt", tmp_path / "src", tmp_path / "tfds")) == {"train"}


# --------------------------------------------------------------------------- summarize from feedback

POST = {"id": "t3_abc", "subreddit": "relationships", "title": "My [24F] question",
        "post": "Long post.\nSecond line."}
ARTICLE = {"id": "cnn-1", "article": "(CNN) Something happened.", "site": "cnn"}


def _comparison(info, texts, choice, split):
    summaries = [{"text": t, "policy": "sup2", "note": None} for t in texts]
    return json.dumps({"info": info, "summaries": summaries, "choice": choice, "worker": "w1",
                       "batch": "batch3", "split": split, "extra": {}})


TLDR_PROMPT = ("SUBREDDIT: r/relationships\n\nTITLE: My [24F] question\n\nPOST: Long post.\nSecond line."
               "\n\nTL;DR:")
SUMMARY_BATCH = [
    _comparison(POST, [" She asked a question.", " Nothing."], 0, "train"),     # 1 record
    _comparison(POST, [" Worse one.", " Better one."], 1, "valid1"),            # 2 record, validation
    _comparison(POST, [" a", " b"], 2, "train"),                                # 3 bad_choice
    _comparison(POST, [" a", " b"], True, "train"),                             # 4 wrong_type (a boolean)
    _comparison(POST, [" a", " b"], 0, "test"),                                 # 5 unknown_split
    _comparison({"id": "x"}, [" a", " b"], 0, "train"),                         # 6 missing_field
    _comparison(POST, [" Same.", "Same. "], 0, "train"),                        # 7 tie
    _comparison(POST, [" a"], 0, "train"),                                      # 8 wrong_type (one summary)
    _comparison(POST, [" She asked a question.", " Nothing."], 0, "train"),     # 9 duplicate of 1
    _comparison(POST, [" She asked a question.", " Nothing."], 0, "valid2"),    # 10 record (other split)
]


def test_summarize_parse_line_and_build(tmp_path):
    record = summarize_feedback.parse_line(SUMMARY_BATCH[0])
    assert json.loads(record.pop("reference")) == {  # raw fields for CoH's official format
        "post": "Long post.\nSecond line.", "answers": [" She asked a question.", " Nothing."]}
    assert record == {
        "prompt": TLDR_PROMPT, "chosen": "She asked a question.", "rejected": "Nothing.", "split": "train"}
    article = summarize_feedback.parse_line(_comparison(ARTICLE, [" x", " y"], 1, "valid2"))
    assert json.loads(article.pop("reference")) == {"post": None, "answers": [" y", " x"]}
    assert article == {
        "prompt": "Article:\n(CNN) Something happened.\n\nTL;DR:\n", "chosen": "y", "rejected": "x",
        "split": "validation"}
    assert [_reason(summarize_feedback.parse_line, line) for line in SUMMARY_BATCH[:8]] == [
        None, None, "bad_choice", "wrong_type", "unknown_split", "missing_field", "tie", "wrong_type"]

    root = tmp_path / "dataset"
    _write(root / "comparisons" / "batch3.json", SUMMARY_BATCH)
    _write(root / "comparisons" / "batch0_cnndm.json", [_comparison(ARTICLE, [" x", " y"], 1, "valid2")])
    _write(root / "axis_evals" / "cnndm1.json", ["not read"])
    sources = prepare("summarize_feedback", root, tmp_path / "tfds")
    record = {"prompt": TLDR_PROMPT, "chosen": "She asked a question.", "rejected": "Nothing.",
              "task": "summary"}
    train = _without_reference(_all(sources["train"]))
    assert train == [{**record, "id": "comparisons/batch3.json:1"}]
    # files by name: batch0_cnndm.json before batch3.json
    assert _without_reference(_all(sources["validation"])) == [
        {"prompt": "Article:\n(CNN) Something happened.\n\nTL;DR:\n", "chosen": "y", "rejected": "x",
         "id": "comparisons/batch0_cnndm.json:1", "task": "summary"},
        {**record, "chosen": "Better one.", "rejected": "Worse one.", "id": "comparisons/batch3.json:2"},
        {**record, "id": "comparisons/batch3.json:10"},
    ]
    report = skip_report("summarize_feedback", tmp_path / "tfds")
    assert report["records"] == {"train": 1, "validation": 3}
    assert report["skipped"] == {"tie": 1, "duplicate": 1}
    assert report["malformed"] == {"wrong_type": 2, "missing_field": 1, "bad_choice": 1, "unknown_split": 1}
    assert report["skipped_by_file"] == {"comparisons/batch3.json": {
        "bad_choice": 1, "duplicate": 1, "missing_field": 1, "tie": 1, "unknown_split": 1, "wrong_type": 2}}

    # The comparisons directory itself is a source too; one without *.json files is an error.
    assert len(prepare("summarize_feedback", root / "comparisons", tmp_path / "tfds2")["validation"]) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no \*\.json comparisons files"):
        prepare("summarize_feedback", tmp_path / "empty", tmp_path / "tfds3")


def test_skip_report_needs_a_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="no build of webgpt"):
        skip_report("webgpt", tmp_path)
    assert set(feedback.BUILDERS) == {"hh_rlhf", "webgpt", "summarize_feedback"}


def test_a_local_build_prints_no_download_banner(tmp_path, capsys):
    _hh_source(tmp_path / "src")
    prepare("hh_rlhf", tmp_path / "src", tmp_path / "tfds")
    out = capsys.readouterr()
    assert "Downloading" not in out.out + out.err and "downloaded" not in out.out + out.err
