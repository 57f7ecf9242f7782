"""TFDS builder for the Moral Integrity Corpus (MIC; Ziems et al. 2022, arXiv 2204.03021).

Reads ``MIC.csv`` into labelled records (a chatbot answer to an AskReddit question, label 1 if it
agrees with a rule of thumb, 0 if it disagrees, the rule of thumb kept as ``rot``) for a reward
model trained with cross-entropy; neutral answers are skipped rather than forced into either label.

Details: docs/data.md#moral-integrity-corpus-micpy
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders import reading
from jaxalign.data.builders.reading import Record, Skip, SourceFile
from jaxalign.data.splits import hash_split

FILE = "MIC.csv"
COLUMNS = ("Q", "A", "rot", "A_agrees")
AGREES, NEUTRAL, DISAGREES = 2, 1, 0  # MIC's A_agrees codes
SPLIT_NAMES = {"train": "train", "dev": "validation", "validation": "validation", "test": "test"}
TEST_PERCENT = 10
VALIDATION_PERCENT = 10


def split_of(question: str, answer: str) -> str:
    """"test", "validation" or "train" for a question-answer pair, by the SHA-256 of the pair."""
    return hash_split(f"{question}\0{answer}", {"test": TEST_PERCENT, "validation": VALIDATION_PERCENT})


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
    record = reading.make_labelled(fields["Q"], fields["A"], label, rot=fields["rot"])
    return {**record, "split": split}


def source_files(source_dir: epath.Path) -> list[SourceFile]:
    reading.require_dir(source_dir, "the directory holding MIC.csv")
    path = reading.one_of(source_dir, (FILE,), "the Moral Integrity Corpus")
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
    read_items = staticmethod(reading.csv_reader(COLUMNS))
