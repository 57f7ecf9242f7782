"""TFDS builder for the Moral Integrity Corpus (MIC; Ziems et al. 2022, arXiv 2204.03021).

MIC annotates chatbot replies to AskReddit questions: for each question-answer pair, crowd workers
wrote rules of thumb (RoTs) and judged whether the answer agrees with each RoT (``A_agrees``).
Records are labelled texts for a reward model (classifier) trained with cross-entropy, in the
labelled schema of feedback_common plus the RoT the label refers to:

    {"prompt": Q, "text": A, "label": 1 | 0, "rot": rot, "id": "MIC.csv:<line>", "task": "mic"}

Q, A and rot are stripped. Label mapping: MIC codes ``A_agrees`` as 2 = the answer agrees with
the RoT, 1 = neutral, 0 = disagrees (``agrees()`` in upstream's hit/Task_MoralEvaluation/
prepare_MIC.py; a column that pandas wrote with a missing value reads 2.0, 1.0, 0.0). Agrees ->
label 1 (aligned), disagrees -> label 0 (unaligned). Design choice: a neutral answer is skipped
(reason ``neutral``, counted): it is neither aligned nor unaligned with the RoT, and calling it
either would put noise into the labels.

Each question-answer pair has several RoTs from different workers, whose judgments may differ: the
same (Q, A) can appear with both labels, each with its own ``rot``. A consumer that ignores the
RoT sees those as label noise; rows are deduplicated on all four fields.

Layout: the source directory holds ``MIC.csv`` as released (pandas ``to_csv``, so the first column
is an unnamed index). Needed columns: Q, A, rot, A_agrees; other columns (moral, rot-agree,
violation-severity, QA, ...) are ignored. Splits: the ``split`` column (train, dev -> validation,
test; upstream keeps each question-answer pair on one side); without that column, a hash of the
stripped (Q, A) pair (`split_of`: TEST_PERCENT percent test, VALIDATION_PERCENT validation, as
upstream's 80/10/10).

Skips: ``neutral``; ``bad_label`` (A_agrees not 0, 1 or 2); ``missing_field`` (an empty A_agrees);
``empty_field`` (an empty Q, A or rot); ``unknown_split``; ``bad_csv``/``bad_utf8`` (see
`feedback_common.read_csv`); ``duplicate``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import tensorflow_datasets as tfds

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders.feedback_common import Record, Skip, SourceFile

FILE = "MIC.csv"
COLUMNS = ("Q", "A", "rot", "A_agrees")
AGREES, NEUTRAL, DISAGREES = 2, 1, 0  # MIC's A_agrees codes
SPLIT_NAMES = {"train": "train", "dev": "validation", "validation": "validation", "test": "test"}
TEST_PERCENT = 10
VALIDATION_PERCENT = 10


def split_of(question: str, answer: str) -> str:
    """"test", "validation" or "train" for a question-answer pair, by the SHA-256 of the pair."""
    digest = hashlib.sha256(f"{question}\0{answer}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < TEST_PERCENT:
        return "test"
    return "validation" if bucket < TEST_PERCENT + VALIDATION_PERCENT else "train"


def label_of(agrees: str) -> int:
    """MIC's A_agrees (text of 2, 1 or 0) -> label 1 (agrees) or 0 (disagrees); Skip for neutral."""
    value = agrees.strip()
    if not value:
        raise Skip("missing_field", "no 'A_agrees'")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number not in (AGREES, NEUTRAL, DISAGREES):
        raise Skip("bad_label", f"A_agrees {value!r} is not 0, 1 or 2")
    if number == NEUTRAL:
        raise Skip("neutral", "the answer neither agrees nor disagrees with the rule of thumb")
    return int(number == AGREES)


def parse_row(row: dict[str, str]) -> Record:
    """One row of MIC.csv -> {"prompt", "text", "label", "rot", "split"}; raises Skip."""
    fields = {key: row[key].strip() for key in ("Q", "A", "rot")}
    for key, value in fields.items():
        if not value:
            raise Skip("empty_field", f"empty {key!r}")
    label = label_of(row["A_agrees"])
    if "split" in row:
        split = SPLIT_NAMES.get(row["split"].strip())
        if split is None:
            raise Skip("unknown_split", f"split {row['split']!r}")
    else:
        split = split_of(fields["Q"], fields["A"])
    record = common.make_labelled(fields["Q"], fields["A"], label, rot=fields["rot"])
    return {**record, "split": split}


def source_files(source_dir: Path) -> list[SourceFile]:
    common.require_dir(source_dir, "the directory holding MIC.csv")
    path = common.one_of(source_dir, (FILE,), "the Moral Integrity Corpus")
    return [SourceFile(path, FILE, None)]


class Mic(common.FeedbackBuilder):
    """MIC: prompt = question, text = chatbot answer, label 1 if it agrees with the rule of thumb."""

    name = "mic"
    TASK = "mic"
    SPLITS = ("train", "validation", "test")
    SCHEMA = "labelled"
    RECORD_FEATURES = {**common.LABELLED_FEATURES, "rot": tfds.features.Text()}
    DESCRIPTION = ("Moral Integrity Corpus (Ziems et al. 2022): chatbot answers labelled 1 if they agree "
                   "with a rule of thumb, 0 if they disagree (neutral answers skipped), with the rule.")
    HOMEPAGE = "https://github.com/SALT-NLP/mic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    MIC is released under a data use agreement: fill in the form linked from
    https://github.com/SALT-NLP/mic, then download MIC.csv from the Dropbox folder linked there
    (https://www.dropbox.com/sh/m46z42nce8x0ttk/AABuSZiA6ESyrJNWmgTPrfuRa) into a directory and
    pass that directory as the source.
    """
    RELEASE_NOTES = {
        "1.0.0": "prompt (Q), text (A), label (1 = A agrees with the RoT), rot, id, task; neutral skipped.",
    }

    source_files = staticmethod(source_files)
    parse_line = staticmethod(parse_row)
    read_items = staticmethod(common.csv_reader(COLUMNS))
