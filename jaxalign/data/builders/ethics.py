"""TFDS builder for the commonsense-morality subset of ETHICS (Hendrycks et al. 2021, arXiv 2008.02275).

Reads the release's ``commonsense/cm_*.csv`` files into labelled records (a scenario judged
acceptable or not) for a reward model trained with cross-entropy; ETHICS' label (1 = wrong) is
flipped so that label 1 means aligned, as in every value dataset here.

Details: docs/data.md#ethics-commonsense-morality-ethicspy
"""

from __future__ import annotations

from etils import epath

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders import reading
from jaxalign.data.builders.reading import Record, Skip, SourceFile

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
    return reading.make_labelled("", row["input"], 1 - int(label))


def source_files(source_dir: epath.Path) -> list[SourceFile]:
    """cm_train.csv and cm_test.csv (and cm_test_hard.csv if there) of the commonsense directory."""
    reading.require_dir(source_dir, "the ETHICS commonsense directory or the ETHICS release holding it")
    directory = source_dir / SUBDIR if (source_dir / SUBDIR).is_dir() else source_dir
    files = []
    for split, name in FILES.items():
        if split in OPTIONAL and not (directory / name).is_file():
            continue
        path = reading.one_of(directory, (name,), "ETHICS commonsense, e.g. ethics/commonsense")
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
    read_items = staticmethod(reading.csv_reader(COLUMNS))
