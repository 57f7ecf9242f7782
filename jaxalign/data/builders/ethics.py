"""TFDS builder for the commonsense-morality subset of ETHICS (Hendrycks et al. 2021, arXiv 2008.02275).

Each example is a first-person scenario (a sentence written by a crowd worker, or a longer Reddit
AITA post) with ETHICS' label 1 if the narrator's action is clearly morally wrong, 0 if it is not.
There is no pair of texts, so records are labelled texts for a reward model (classifier) trained
with cross-entropy, in the labelled schema of feedback_common:

    {"prompt": "", "text": input (stripped), "label": 1 - ETHICS label, "id": "<file>:<line>",
     "task": "ethics_commonsense"}

The label is FLIPPED: across jaxalign's value datasets label 1 means aligned (acceptable) and 0
unaligned, so an ETHICS "1" (wrong) is stored as 0 and an ETHICS "0" (not wrong) as 1. The prompt
is empty: the scenario is the whole text judged.

Layout: the ``commonsense`` directory of the ETHICS release (or the release's root, which holds
it) with CSV files whose header is ``label,input,is_short,edited``; ``input`` is quoted where it
holds commas, quotes or line breaks (the long posts do). Files and splits: ``cm_train.csv`` ->
train, ``cm_test.csv`` -> test, ``cm_test_hard.csv`` -> test_hard (adversarially filtered; read
when present). ``cm_ambig.csv`` (ambiguous scenarios, no labels) is not read.

Skips: ``bad_label`` (a label other than 0 or 1), ``missing_field`` (an empty label),
``empty_field`` (an empty input), ``bad_csv``/``bad_utf8`` (see `feedback_common.read_csv`),
``duplicate`` (the same text and label as an earlier record of the split).
"""

from __future__ import annotations

from pathlib import Path

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders.feedback_common import Record, Skip, SourceFile

SUBDIR = "commonsense"
FILES = {"train": "cm_train.csv", "test": "cm_test.csv", "test_hard": "cm_test_hard.csv"}
OPTIONAL = ("test_hard",)
COLUMNS = ("label", "input")


def parse_row(row: dict[str, str]) -> Record:
    """One row of a cm_*.csv file -> {"prompt": "", "text", "label" (1 = not wrong)}; raises Skip."""
    label = row["label"].strip()
    if not label:
        raise Skip("missing_field", "no 'label'")
    if label not in ("0", "1"):
        raise Skip("bad_label", f"label {label!r} is not 0 or 1")
    return common.make_labelled("", row["input"], 1 - int(label))


def source_files(source_dir: Path) -> list[SourceFile]:
    """cm_train.csv and cm_test.csv (and cm_test_hard.csv if there) of the commonsense directory."""
    common.require_dir(source_dir, "the ETHICS commonsense directory or the ETHICS release holding it")
    directory = source_dir / SUBDIR if (source_dir / SUBDIR).is_dir() else source_dir
    files = []
    for split, name in FILES.items():
        if split in OPTIONAL and not (directory / name).is_file():
            continue
        path = common.one_of(directory, (name,), "ETHICS commonsense, e.g. ethics/commonsense")
        files.append(SourceFile(path, path.relative_to(source_dir).as_posix(), split))
    return files


class EthicsCommonsense(common.FeedbackBuilder):
    """ETHICS commonsense scenarios labelled 1 = acceptable (ETHICS 0), 0 = wrong (ETHICS 1)."""

    name = "ethics_commonsense"
    TASK = "ethics_commonsense"
    SPLITS = tuple(FILES)
    SCHEMA = "labelled"
    RECORD_FEATURES = common.LABELLED_FEATURES
    DESCRIPTION = ("ETHICS commonsense morality (Hendrycks et al. 2021): first-person scenarios labelled "
                   "1 = aligned (ETHICS label 0, not wrong) or 0 = unaligned (ETHICS label 1, wrong).")
    HOMEPAGE = "https://github.com/hendrycks/ethics"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download and unpack the ETHICS release, then pass its commonsense directory (or the release's
    root, ethics/) as the source:
        curl -O https://people.eecs.berkeley.edu/~hendrycks/ethics.tar
        tar xf ethics.tar        # ethics/commonsense/cm_train.csv, cm_test.csv, cm_test_hard.csv
    (linked from https://github.com/hendrycks/ethics). cm_ambig.csv is not read.
    """
    RELEASE_NOTES = {
        "1.0.0": "prompt (empty), text, label (1 = aligned, i.e. ETHICS label 0), id, task.",
    }

    source_files = staticmethod(source_files)
    parse_line = staticmethod(parse_row)
    read_items = staticmethod(common.csv_reader(COLUMNS))
