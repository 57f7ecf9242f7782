"""The Moral Stories, ETHICS (commonsense) and MIC builders on small files in the upstream formats."""

import json
import sys

import pytest

from jaxalign.data.builders import ethics, mic, moral_stories, reading, values
from jaxalign.data.builders.values import Skip, decode_record, prepare, skip_report


def _reason(parse, item):
    """The skip reason of a line or row, or None if it parses."""
    try:
        parse(item)
    except Skip as skip:
        return skip.reason
    return None


def _write(path, content):
    """Writes str (as UTF-8) or bytes exactly as given: CSV fixtures hold their own line breaks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def _lines(lines):
    return "".join(line + "\n" for line in lines)


def _all(source):
    return [decode_record(source[i]) for i in range(len(source))]


def _mtimes(directory):
    return sorted(p.stat().st_mtime_ns for p in directory.iterdir())


# --------------------------------------------------------------------------- Moral Stories

def _story_id(split, start=0):
    """A story ID that moral_stories.split_of puts in `split`."""
    ids = (f"3OJSZ2ATDTUMG7NGR{i:05d}" for i in range(start, 1000))
    return next(s for s in ids if moral_stories.split_of(s) == split)


ID_TRAIN, ID_VALID, ID_TEST = _story_id("train"), _story_id("validation"), _story_id("test")


def _story(story_id, norm="It's kind to wait for people.", moral="Josh waits until Penelope comes out.",
           immoral="Josh drives away.", key="ID", **fields):
    story = {key: story_id, "norm": norm,
             "situation": "Josh drives Penelope to work every day, but she is late.",
             "intention": "Josh needs to get to work.", "moral_action": moral,
             "moral_consequence": "Penelope thanks Josh.", "immoral_action": immoral,
             "immoral_consequence": "Penelope misses her ride."}
    return json.dumps({**story, **fields})


def _prompt(norm="It's kind to wait for people."):
    return (f"Norm: {norm}\nSituation: Josh drives Penelope to work every day, but she is late.\n"
            "Intention: Josh needs to get to work.")


def _pair(chosen, rejected, ident, norm="It's kind to wait for people."):
    return {"prompt": _prompt(norm), "chosen": chosen, "rejected": rejected, "id": ident,
            "task": "moral_stories"}


ONE_ACTION = json.dumps({"qID": "X1", "norm": "n", "situation": "s", "intention": "i", "moral_action": "m",
                         "label": "1"})
STORIES = [
    _story(ID_TRAIN, moral=" Josh waits.  "),                            # 1 train (actions stripped)
    _story(ID_VALID, norm="It's good to be patient."),                   # 2 validation
    _story(ID_TEST, key="qID"),                                          # 3 test (the ID called qID)
    '{"ID": "x", "norm": ',                                              # 4 bad_json
    ONE_ACTION,                                                          # 5 missing_field (one action)
    _story(ID_TRAIN, moral="Same.", immoral="Same."),                    # 6 tie
    _story(ID_TRAIN, norm="  "),                                         # 7 empty_field
    _story(ID_TRAIN, moral=" Josh waits."),                              # 8 duplicate of 1
    json.dumps([_story(ID_TRAIN)]),                                      # 9 wrong_type (an array)
    json.dumps({"norm": "n", "situation": "s", "intention": "i", "moral_action": "m", "immoral_action": "x"}),
]


def test_moral_stories_parse_line():
    assert moral_stories.parse_line(STORIES[0]) == {
        "prompt": _prompt(), "chosen": "Josh waits.", "rejected": "Josh drives away.", "split": "train"}
    assert [_reason(moral_stories.parse_line, line) for line in STORIES] == [
        None, None, None, "bad_json", "missing_field", "tie", "empty_field", None, "wrong_type",
        "missing_field"]
    with pytest.raises(Skip, match="no 'immoral_action': a line with one action"):
        moral_stories.parse_line(ONE_ACTION)


def test_moral_stories_full_file_hash_split(tmp_path):
    src, data = tmp_path / "moral_stories", tmp_path / "tfds"
    _write(src / "moral_stories_full.jsonl", _lines(STORIES))
    sources = prepare("moral_stories", src, data)
    assert "tensorflow" not in sys.modules  # built and read by tfds + array_record alone
    assert values.schema("moral_stories") == "preference"
    assert _all(sources["train"]) == [_pair("Josh waits.", "Josh drives away.", "moral_stories_full.jsonl:1")]
    assert _all(sources["validation"]) == [
        _pair("Josh waits until Penelope comes out.", "Josh drives away.", "moral_stories_full.jsonl:2",
              norm="It's good to be patient.")]
    assert _all(sources["test"]) == [
        _pair("Josh waits until Penelope comes out.", "Josh drives away.", "moral_stories_full.jsonl:3")]
    report = skip_report("moral_stories", data)
    assert report["records"] == {"train": 1, "validation": 1, "test": 1}
    assert report["skipped"] == {"tie": 1, "duplicate": 1}
    assert report["malformed"] == {"bad_json": 1, "wrong_type": 1, "missing_field": 2, "empty_field": 1}
    assert report["skip_examples"]["missing_field"] == [
        "moral_stories_full.jsonl:5: missing_field: no 'immoral_action': a line with one action "
        "(a classification or action generation split); use moral_stories_full.jsonl or a norm generation "
        "split",
        "moral_stories_full.jsonl:10: missing_field: no 'ID'",
    ]


def test_moral_stories_split_directory(tmp_path):
    # A norm generation split (both actions on a line; the ID is qID + "1") wins over the full file.
    src = tmp_path / "norm|actions+context" / "norm_distance"
    _write(src / "train.jsonl", _lines([_story("A1", key="qID", label="1"),
                                        _story("B1", key="qID", moral="Josh waits.", label="1")]))
    _write(src / "dev.jsonl", _lines([_story("C1", key="qID", label="1")]))
    _write(src / "test.jsonl", _lines([_story("D1", key="qID", immoral="Josh leaves.", label="1")]))
    _write(src / "moral_stories_full.jsonl", "not read\n")
    sources = prepare("moral_stories", src, tmp_path / "tfds")
    moral = "Josh waits until Penelope comes out."
    assert _all(sources["train"]) == [_pair(moral, "Josh drives away.", "train.jsonl:1"),
                                      _pair("Josh waits.", "Josh drives away.", "train.jsonl:2")]
    assert _all(sources["validation"]) == [_pair(moral, "Josh drives away.", "dev.jsonl:1")]
    assert _all(sources["test"]) == [_pair(moral, "Josh leaves.", "test.jsonl:1")]

    # A classification split has one action per line: no record, and the error says why.
    cls_dir = tmp_path / "classification"
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl"):
        _write(cls_dir / name, _lines([ONE_ACTION, ONE_ACTION.replace('"moral_action"', '"immoral_action"')]))
    message = (r"train\.jsonl: not one usable moral_stories record \(missing_field 2; "
               r"first: train\.jsonl:1: missing_field: no 'immoral_action'")
    with pytest.raises(ValueError, match=message):
        prepare("moral_stories", cls_dir, tmp_path / "tfds2")
    (cls_dir / "dev.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"classification: no dev\.jsonl"):
        prepare("moral_stories", cls_dir, tmp_path / "tfds2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no train\.jsonl, dev\.jsonl, test\.jsonl or moral_stories"):
        prepare("moral_stories", tmp_path / "empty", tmp_path / "tfds2")


# --------------------------------------------------------------------------- ETHICS commonsense

ETHICS_HEADER = b"label,input,is_short,edited\n"
HELPED = b"0,I helped my neighbour carry her groceries.,True,False\n"
CM_TRAIN = ETHICS_HEADER + b"".join([
    b'1,"I told my friend, ""you\'re fat"", at dinner.\nThen I laughed.",False,False\n',  # 2-3 (label 0)
    HELPED,                                             # 4 record (label 1)
    b"2,I ate a sandwich.,True,False\n",                # 5 bad_label
    b",I walked the dog.,True,False\n",                 # 6 missing_field
    b"0,too,many,fields,here\n",                        # 7 bad_csv
    b"\n",                                              # 8 blank: not counted
    b'0,"I said ""hi"""oops,True,False\n',              # 9 bad_csv (stray quote)
    b"0,I sang \xff loudly.,True,False\n",              # 10 bad_utf8
    HELPED,                                             # 11 duplicate of 4
    b"0,   ,True,False\n",                              # 12 empty_field
    b"0,  I planted a tree.  ,False,True\n",            # 13 record (stripped)
])


def _ethics(text, label, ident):
    return {"prompt": "", "text": text, "label": label, "id": ident, "task": "ethics_commonsense"}


def test_ethics_parse_row_flips_the_label():
    assert ethics.parse_row({"label": "1", "input": " I stole a car. "}) == {
        "prompt": "", "text": "I stole a car.", "label": 0}
    assert ethics.parse_row({"label": "0", "input": "I fed the cat."})["label"] == 1
    rows = [{"label": label, "input": text}
            for label, text in [("1", "x"), ("-1", "x"), (" ", "x"), ("0", "")]]
    reasons = [None, "bad_label", "missing_field", "empty_field"]
    assert [_reason(ethics.parse_row, row) for row in rows] == reasons


def test_ethics_build_reads_quoted_csv_and_counts_skips(tmp_path):
    root, data = tmp_path / "ethics", tmp_path / "tfds"
    _write(root / "commonsense" / "cm_train.csv", CM_TRAIN)
    _write(root / "commonsense" / "cm_test.csv", ETHICS_HEADER + b"0,I smiled at a stranger.,True,False\n"
                                                                 b"1,I kicked a stranger.,True,False\n")
    _write(root / "commonsense" / "cm_test_hard.csv",
           ETHICS_HEADER + b"1,I took the last cookie.,True,True\n")
    _write(root / "commonsense" / "cm_ambig.csv", "not,read\n\"unbalanced\n")
    _write(root / "deontology" / "deontology_train.csv", "not read\n")
    sources = prepare("ethics_commonsense", root, data)  # the release's root holds commonsense/
    assert values.schema("ethics_commonsense") == "labelled"
    assert set(sources) == {"train", "test", "test_hard"}
    assert _all(sources["train"]) == [
        _ethics("I told my friend, \"you're fat\", at dinner.\nThen I laughed.", 0,
                "commonsense/cm_train.csv:2"),
        _ethics("I helped my neighbour carry her groceries.", 1, "commonsense/cm_train.csv:4"),
        _ethics("I planted a tree.", 1, "commonsense/cm_train.csv:13"),
    ]
    assert _all(sources["test"]) == [_ethics("I smiled at a stranger.", 1, "commonsense/cm_test.csv:2"),
                                     _ethics("I kicked a stranger.", 0, "commonsense/cm_test.csv:3")]
    assert _all(sources["test_hard"]) == [
        _ethics("I took the last cookie.", 0, "commonsense/cm_test_hard.csv:2")]
    report = skip_report("ethics_commonsense", data)
    assert report["records"] == {"train": 3, "test": 2, "test_hard": 1}
    assert report["skipped"] == {"duplicate": 1}
    assert report["malformed"] == {"bad_utf8": 1, "missing_field": 1, "empty_field": 1, "bad_csv": 2,
                                   "bad_label": 1}
    assert report["skip_examples"]["bad_csv"] == [
        "commonsense/cm_train.csv:7: bad_csv: 5 fields, the header has 4",
        "commonsense/cm_train.csv:9: bad_csv: ',' expected after '\"'",
    ]
    assert report["skip_examples"]["bad_utf8"] == [
        "commonsense/cm_train.csv:10: bad_utf8: a byte that is not UTF-8"]

    # The commonsense directory is a source by itself; cm_test_hard.csv may be absent.
    (root / "commonsense" / "cm_test_hard.csv").unlink()
    assert set(prepare("ethics_commonsense", root / "commonsense", tmp_path / "tfds2")) == {"train", "test"}


def test_ethics_missing_file_and_column(tmp_path):
    directory = tmp_path / "commonsense"
    _write(directory / "cm_train.csv", ETHICS_HEADER + b"0,I fed the cat.,True,False\n")
    with pytest.raises(FileNotFoundError, match=r"commonsense: no cm_test\.csv"):
        prepare("ethics_commonsense", directory, tmp_path / "tfds")
    _write(directory / "cm_test.csv", b"label,text\n0,I fed the cat.\n")
    message = r"cm_test\.csv: no column 'input' in the CSV header \(it has 'label', 'text'\)"
    with pytest.raises(ValueError, match=message):
        prepare("ethics_commonsense", directory, tmp_path / "tfds")


# --------------------------------------------------------------------------- MIC

MIC_HEADER = ",Q,A,rot,moral,A_agrees,rot-agree,violation-severity,QA,split\n"
LIE_Q, LIE_A = "Is it okay to lie to my boss?", "No, honesty matters; lying\nbreaks \"trust\"."
LIE = f'{LIE_Q},"No, honesty matters; lying\nbreaks ""trust"".",'  # Q and A as a CSV row holds them
TIP = "Should I tip?,No.,You should tip servers.,fairness"
MIC_ROWS = [
    f"0,{LIE}It is wrong to lie.,fairness|care,2,4,3,qa,train\n",   # 2-3 train
    f'1,{LIE_Q},"Sure, just don\'t get caught.",It is wrong to lie.,fairness,0,4,3,qa,dev\n',  # 4 validation
    "2,Should I tip?,Maybe.,You should tip servers.,fairness,1,3,2,qa,train\n",          # 5 neutral
    "3, Should I tip? ,Always tip well.,You should tip servers.,care,2.0,3,2,qa,test\n",  # 6 test
    "4,Should I tip?,No.,,fairness,0,3,2,qa,train\n",                                    # 7 empty_field (rot)
    f"5,{TIP},,3,2,qa,train\n",                                                          # 8 missing_field
    f"6,{TIP},3,3,2,qa,train\n",                                                         # 9 bad_label
    f"7,{TIP},0,3,2,qa,holdout\n",                                                       # 10 unknown_split
    f"8,{LIE}It is wrong to lie.,care,2,4,3,qa,train\n",            # 11-12 duplicate (same Q, A, rot, label)
    f"9,{LIE}Honesty is important.,care,0,4,3,qa,train\n",          # 13-14 another RoT, another label: kept
]


def _mic(prompt, text, label, rot, ident):
    return {"prompt": prompt, "text": text, "label": label, "rot": rot, "id": ident, "task": "mic"}


def test_mic_label_of():
    assert [mic.label_of(v) for v in ("2", "0", "2.0", " 0.0 ")] == [1, 0, 1, 0]
    assert [_reason(mic.label_of, v) for v in ("1", "1.0", "", "-1", "3", "agrees", "nan")] == [
        "neutral", "neutral", "missing_field", "bad_label", "bad_label", "bad_label", "bad_label"]


def test_mic_build_rebuilds_on_change(tmp_path):
    src, data = tmp_path / "mic", tmp_path / "tfds"
    _write(src / "MIC.csv", MIC_HEADER + "".join(MIC_ROWS))
    sources = prepare("mic", src, data)
    assert _all(sources["train"]) == [_mic(LIE_Q, LIE_A, 1, "It is wrong to lie.", "MIC.csv:2"),
                                      _mic(LIE_Q, LIE_A, 0, "Honesty is important.", "MIC.csv:13")]
    assert _all(sources["validation"]) == [
        _mic(LIE_Q, "Sure, just don't get caught.", 0, "It is wrong to lie.", "MIC.csv:4")]
    assert _all(sources["test"]) == [_mic("Should I tip?", "Always tip well.", 1, "You should tip servers.",
                                          "MIC.csv:6")]
    report = skip_report("mic", data)
    assert report["records"] == {"train": 2, "validation": 1, "test": 1}
    assert report["skipped"] == {"neutral": 1, "duplicate": 1}
    assert report["malformed"] == {"empty_field": 1, "missing_field": 1, "bad_label": 1, "unknown_split": 1}
    assert report["skip_examples"]["unknown_split"] == ["MIC.csv:10: unknown_split: split 'holdout'"]
    assert report["skip_examples"]["duplicate"] == [
        "MIC.csv:11: duplicate: the same record as an earlier train record"]

    # Unchanged files reuse the build; an edited file rebuilds it.
    version_dir = data / "mic" / "1.0.0"
    built = _mtimes(version_dir)
    assert len(prepare("mic", src, data)["train"]) == 2
    assert _mtimes(version_dir) == built
    _write(src / "MIC.csv", MIC_HEADER + "".join(MIC_ROWS[2:4]))
    assert set(prepare("mic", src, data)) == {"test"}
    assert skip_report("mic", data)["records"] == {"test": 1}

    # New files without one usable record, or without a needed column: an error, the last build intact.
    _write(src / "MIC.csv", MIC_HEADER + MIC_ROWS[2])
    message = r"MIC\.csv: not one usable mic record \(neutral 1; first: MIC\.csv:2: neutral: the answer"
    with pytest.raises(ValueError, match=message):
        prepare("mic", src, data)
    _write(src / "MIC.csv", "Q,A,rot\nWhy?,Because.,Explain.\n")
    with pytest.raises(ValueError, match=r"MIC\.csv: no column 'A_agrees' in the CSV header"):
        prepare("mic", src, data)
    assert skip_report("mic", data)["records"] == {"test": 1}


def test_mic_without_split_column_splits_by_question_and_answer(tmp_path):
    pairs = [(f"Question {i}?", f"Answer {i}.") for i in range(40)]
    rows = "".join(f"{q},{a},Be honest.,{2 * (i % 2)}\n" for i, (q, a) in enumerate(pairs))
    _write(tmp_path / "src" / "MIC.csv", "Q,A,rot,A_agrees\n" + rows)
    sources = prepare("mic", tmp_path / "src", tmp_path / "tfds")
    got = {(r["prompt"], r["text"]): (split, r["label"]) for split, s in sources.items() for r in _all(s)}
    assert got == {pair: (mic.split_of(*pair), i % 2) for i, pair in enumerate(pairs)}
    assert set(sources) == {"train", "validation", "test"}  # 40 pairs reach every split


# --------------------------------------------------------------------------- the registry

def test_registry_and_errors(tmp_path):
    assert set(values.BUILDERS) == {"moral_stories", "ethics_commonsense", "mic"}
    assert {name: values.schema(name) for name in values.BUILDERS} == {
        "moral_stories": "preference", "ethics_commonsense": "labelled", "mic": "labelled"}
    with pytest.raises(ValueError, match="unknown value dataset 'ethics'"):
        prepare("ethics", tmp_path, tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="no build of mic"):
        skip_report("mic", tmp_path)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        prepare("mic", tmp_path / "nowhere", tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match=r"no MIC\.csv"):
        prepare("mic", tmp_path, tmp_path / "tfds")
    # An empty CSV file (not even a header) has no rows.
    _write(tmp_path / "empty.csv", "")
    assert list(reading.read_csv(tmp_path / "empty.csv", ["a"])) == []
